/*
 * cli/audit_log.h - `moat audit-log`: offline checks of a service's
 * hash-chained audit log (moat/audit.h).
 */
#ifndef MOAT_CLI_AUDIT_LOG_H
#define MOAT_CLI_AUDIT_LOG_H

/*
 * moat audit-log verify SERVICE [-f|--file DEPLOY]
 * moat audit-log verify --path FILE
 *
 * argv[0] is "audit-log". Returns CLI_EXIT_OK when the log is intact,
 * CLI_EXIT_FAIL when it is tampered with, missing or unreadable,
 * CLI_EXIT_USAGE for bad arguments or an unknown service.
 */
int cli_cmd_audit_log(int argc, char **argv);

#endif /* MOAT_CLI_AUDIT_LOG_H */
