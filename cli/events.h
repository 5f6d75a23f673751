/*
 * cli/events.h - `moat events`: look at and operate the event consumers of
 * a running deployment through their admin routes (moat/events.h), as the
 * operator: every call carries a service token signed with the
 * deployment's operator key (cli_operator_header, cli.h).
 *
 *   moat events status [--file F] [--json]
 *   moat events dead-letters SERVICE [--source S] [--subject X]
 *                            [--limit N] [--file F] [--json]
 *   moat events redrive SERVICE [--source S] [--subject X] [--file F]
 *   moat events replay SERVICE [--verify] [--timeout S] [--file F]
 *
 * Exit status: 0 success; 1 failure, including "not what you want to see"
 * (status: a consumer down, lagging behind a stopped source or holding
 * dead letters; redrive: an event failed again; replay --verify: the
 * rebuilt view differs); 2 usage error.
 */
#ifndef MOAT_CLI_EVENTS_H
#define MOAT_CLI_EVENTS_H

/* argv[0] is "events"; returns the process exit code. */
int cli_cmd_events(int argc, char **argv);

#endif /* MOAT_CLI_EVENTS_H */
