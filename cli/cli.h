/*
 * cli/cli.h - what the files of the moat CLI share: the commands, and the
 * small helpers more than one command needs (finding the deployment file
 * and the service programs, probing health, reading logs and the state
 * file).
 *
 * Files under <var_dir> (var_dir from the deployment file):
 *   moat.lock    flock()ed by the running supervisor; one per var dir
 *   moat.state   JSON snapshot of the supervisor and its services, replaced
 *                atomically (write moat.state.tmp, rename) on every change
 *   log/moat.log the supervisor's own messages
 *   log/<service>.log  a service's stdout and stderr
 *
 * moat.state schema (version 1); times are RFC 3339 UTC strings:
 *   {"version": 1, "deployment": NAME, "file": ABS_PATH_OF_DEPLOYMENT,
 *    "pid": SUPERVISOR_PID, "status": "starting"|"running"|"stopping"|
 *    "stopped"|"failed", "started_at": TIME, "updated_at": TIME,
 *    "stop_timeout_ms": UPPER_BOUND_OF_A_SHUTDOWN,
 *    "services": [{"name", "pid": INT|null, "listen": "host:port",
 *      "url": "http(s)://host:port", "data_dir", "engine", "db": PATH|null,
 *      "log": PATH, "restarts": INT, "started_at": TIME|null,
 *      "status": "pending"|"starting"|"ready"|"backoff"|"stopping"|
 *                "stopped"|"failed"|"held" (moat restore: <var_dir>/hold/
 *                <name> exists; not restarted until it is removed),
 *      "last_exit": "exit status N"|"killed by signal N"|null,
 *      "dsn": MOAT_DB_DSN (only a service on the private PostgreSQL
 *             cluster, cli/pgcluster.h)}]}
 *   The cluster itself is the entry "postgres" (url postgresql://...).
 *
 * Exit codes of every command: 0 success, 1 failure, 2 usage error.
 */
#ifndef MOAT_CLI_H
#define MOAT_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "moat/common.h"

#include "deploy.h"

#define CLI_EXIT_OK    0
#define CLI_EXIT_FAIL  1
#define CLI_EXIT_USAGE 2

#define CLI_STATE_VERSION 1
/* The identity the CLI uses towards services (a peer of every service). */
#define CLI_OPERATOR         "operator"
#define CLI_PROBE_TIMEOUT_MS 300 /* per /healthz or /readyz request */

/* Commands: argv[0] is the command name; return the process exit code. */
int cli_cmd_up(int argc, char **argv);
int cli_cmd_down(int argc, char **argv);
int cli_cmd_status(int argc, char **argv);
int cli_cmd_logs(int argc, char **argv);
int cli_cmd_keys(int argc, char **argv);
int cli_cmd_audit(int argc, char **argv);  /* audit.c */
int cli_cmd_chaos(int argc, char **argv);  /* chaos.c */
int cli_cmd_bench(int argc, char **argv);  /* bench.c */
int cli_cmd_social(int argc, char **argv); /* social.c: seed, bench */
/* report.c */
int cli_cmd_report(int argc, char **argv);
int cli_cmd_new(int argc, char **argv);   /* new.c */
int cli_cmd_certs(int argc, char **argv); /* certs.c */

/* certs.c: "<var_dir>/certs/<name>.<ext>" (ext "crt" or "key"); caller
 * frees. */
char *cli_cert_path(const struct deploy *d, const char *name, const char *ext);
/* Issue what is missing under <var_dir>/certs (everything with force): the
 * CA, one certificate per service, the operator's. Prints errors; with
 * verbose also what it made. MOAT_OK or MOAT_EIO. */
int cli_certs_ensure(const struct deploy *d, bool force, bool verbose);
/* When d has "tls": load the operator's certificate as this process's TLS
 * identity (moat_tls_load), so every call the CLI makes presents it.
 * MOAT_OK (also without TLS), MOAT_ENOTFOUND before `moat certs` ran. */
int cli_tls_operator(const struct deploy *d);

/* Print "error: <message>" to stderr. */
void cli_error(const char *fmt, ...) MOAT_PRINTF(1, 2);
/* Print "error: <message>" and a pointer to help; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) MOAT_PRINTF(2, 3);

/*
 * Report what getopt_long() (called with opterr = 0 and an optstring that
 * starts with ':') rejected: c is its '?' or ':' return. Returns
 * CLI_EXIT_USAGE.
 */
int cli_option_error(const char *cmd, int c, char **argv);

/*
 * Load the deployment file: file if not NULL, else $MOAT_DEPLOY, else
 * ./moat.json. Prints the errors and returns NULL on failure; otherwise the
 * caller frees the result with deploy_free().
 */
struct deploy *cli_load_deploy(const char *file);

/* Paths under the var dir; caller frees. name is a service or "moat". */
char *cli_state_path(const struct deploy *d);
char *cli_lock_path(const struct deploy *d);
char *cli_log_path(const struct deploy *d, const char *name);

/*
 * Absolute path of the program that runs s: "binary" when it contains a
 * '/' (absolute, or relative to the directory of the moat executable),
 * else <bin dir>/moat-<binary or name>. Caller frees.
 */
char *cli_service_program(const struct deploy_service *s);

/*
 * GET url with a total timeout. On MOAT_OK, *status is the HTTP status; on
 * failure (connection refused, timeout) returns MOAT_EIO or
 * MOAT_ETIMEDOUT. Blocking; fine in the CLI. A "redis://HOST:PORT[/...]"
 * url (the cache moat up runs) is probed with PING instead: *status 200
 * when Redis answers, 503 when it answers something else.
 */
int cli_probe(const char *url, long timeout_ms, long *status);

/*
 * Whether some process holds the supervisor lock at lock_path (taken
 * shared for an instant to find out). A missing lock file means no.
 */
bool cli_supervisor_running(const char *lock_path);

/* Sum of the sizes of db, db-wal and db-shm, or of the regular files in db
 * when it is a directory (LMDB). 0 when nothing exists. */
uint64_t cli_db_size(const char *db);

/* "12.3K", "4.0M"... into out. */
void cli_human_size(uint64_t bytes, char *out, size_t len);

/* path relative to the current directory when it lies beneath it, else
 * path itself. Returns out or path (borrowed). */
const char *cli_display_path(const char *path, char *out, size_t len);

/*
 * Offset in fd (a regular file) where its last n lines start. A final line
 * without '\n' counts as a line.
 */
off_t cli_tail_offset(int fd, unsigned n);

/* Copy the last n lines of the file at path to out, each line prefixed by
 * indent. Silently does nothing when the file cannot be read. */
void cli_print_tail(FILE *out, const char *path, unsigned n,
                    const char *indent);

/*
 * A "Moat-Service-Token: <token>" header line signed as CLI_OPERATOR with
 * the deployment's operator key (<var_dir>/secrets.json, written by moat
 * up), for calling audience's admin routes. NULL (after printing why) when
 * the deployment has never been started. Caller frees.
 */
char *cli_operator_header(const struct deploy *d, const char *audience);

#define CLI_CALL_MAX_BODY (16u << 20)
/*
 * A blocking HTTP call: header (one "Name: value" line) and json_body may
 * be NULL. MOAT_OK with *status and *body (caller frees; "" when empty)
 * when an answer came; MOAT_ETIMEDOUT or MOAT_EIO otherwise (*body still
 * set). Bodies beyond CLI_CALL_MAX_BODY abort the call.
 */
int cli_http(const char *method, const char *url, const char *header,
             const char *json_body, long timeout_ms, long *status, char **body);
/*
 * A blocking call of svc's route path (e.g. "/v1/admin/keys") as the
 * operator, with an optional JSON body. MOAT_OK with *status and *body
 * (caller frees; "" when empty) when an answer came, else an error code
 * after printing why.
 */
int cli_operator_call(const struct deploy *d, const struct deploy_service *svc,
                      const char *method, const char *path,
                      const char *json_body, long timeout_ms, long *status,
                      char **body);

#endif /* MOAT_CLI_H */
