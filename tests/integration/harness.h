/*
 * harness.h - integration tests with real service processes on loopback.
 *
 * A test makes a temporary directory, starts service binaries from
 * MOAT_BIN_DIR on free 127.0.0.1 ports (each with its own data directory
 * and log file inside the temporary directory), talks to them over HTTP
 * with a blocking libcurl client and stops them with SIGTERM, checking that
 * they exit 0 (under ASan a leak makes the exit code non-zero).
 *
 * Cleanup never depends on the test passing: every child gets
 * PR_SET_PDEATHSIG(SIGKILL), so it dies with the test process even if that
 * crashes or is killed by a ctest timeout, and h_kill_all() (also run at
 * exit) kills whatever is still running. That makes every test runnable on
 * its own under gdb or valgrind.
 *
 * Every timeout and sleep is multiplied by one factor, $MOAT_TEST_TIMEOUT_MULT
 * (or $MOAT_TEST_TIMEOUT_MULTIPLIER), default H_DEFAULT_TIMEOUT_MULT: a
 * slow machine or a sanitizer build raises it, never a test. Tests wait on
 * conditions (H_WAIT_UNTIL), not on clocks. $MOAT_TEST_KEEP=1 keeps the
 * temporary directories (logs, databases) for a post-mortem.
 *
 * Ownership: strings inside struct h_service and struct h_resp belong to
 * the struct and are freed by h_service_release() / h_resp_release().
 * Functions returning char * return memory the caller frees with free().
 */
#ifndef MOAT_TEST_HARNESS_H
#define MOAT_TEST_HARNESS_H

/* cmocka needs these before its own header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

/* ---- time and files ---- */

/*
 * Chosen so that the suite passes on 2 cores with `stress --cpu 2` running
 * beside it (every wait is an upper bound: a larger factor costs time only
 * when something is already wrong).
 */
#define H_DEFAULT_TIMEOUT_MULT 4.0

/* $MOAT_TEST_TIMEOUT_MULT or $MOAT_TEST_TIMEOUT_MULTIPLIER (a positive
 * number), default H_DEFAULT_TIMEOUT_MULT. */
double h_timeout_mult(void);
/* ms scaled by the multiplier. */
unsigned h_scaled_ms(unsigned ms);
/* Sleep ms, NOT scaled. Tests do not sleep to let something happen (they
 * wait for it with H_WAIT_UNTIL); a sleep only paces a loop or proves that
 * something does NOT happen within a window, said in a comment. */
void h_sleep_ms(unsigned ms);

/* ---- waiting on conditions ---- */

/* The usual bound of a wait, before scaling. */
#define H_WAIT_MS 15000

/*
 * Poll cond(arg) (first at once, then every 1..50 ms, backing off) until it
 * returns true or timeout_ms (scaled) has passed. Returns whether it held.
 */
bool h_wait_until(bool (*cond)(void *arg), void *arg, unsigned timeout_ms);

/*
 * Re-evaluate expr until it is true; after timeout_ms (scaled) fail the
 * test with "timed out after N ms waiting for <what>", where what is a
 * printf format with arguments, plus expr's text and the logs of every
 * running service. expr may have side effects (it runs once per poll):
 *
 *   H_WAIT_UNTIL(strcmp(order_step(id), "done") == 0, H_WAIT_MS,
 *                "order %s to finish", id);
 */
#define H_WAIT_UNTIL(expr, timeout_ms, ...)                                    \
    do {                                                                       \
        struct h_waiter h_w_;                                                  \
        h_wait_begin(&h_w_, (timeout_ms));                                     \
        while (!(expr))                                                        \
            if (!h_wait_next(&h_w_))                                           \
                h_wait_fail_(&h_w_, __FILE__, __LINE__, #expr, __VA_ARGS__);   \
    } while (0)

/* The state of one H_WAIT_UNTIL (for code that needs its own loop). */
struct h_waiter {
    uint64_t start_ms, deadline_ms;
    unsigned pause_ms, polls;
};
void h_wait_begin(struct h_waiter *w, unsigned timeout_ms);
/* After a false poll: false once the deadline has passed, else pause
 * (backing off) and return true. */
bool h_wait_next(struct h_waiter *w);
void h_wait_fail_(const struct h_waiter *w, const char *file, int line,
                  const char *expr, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 5, 6)));

/*
 * A free TCP port on 127.0.0.1, below the kernel's ephemeral range (no
 * outgoing connection can hold it) and never the same one twice in a test
 * process. Another process could still take it before the service binds:
 * only for
 * services that must know each other's URL before either starts (a cycle
 * such as orders <-> inventory); h_service_start otherwise lets the
 * service bind port 0 itself and reads the port back. Aborts the test on
 * failure.
 */
uint16_t h_free_port(void);

/* mkdtemp "<$TMPDIR or /tmp>/moat-it-<tag>-XXXXXX" (mode 0700); caller
 * frees the string and removes the tree with h_rmtree(). */
char *h_tmpdir_new(const char *tag);
/* Remove path recursively (no-op if $MOAT_TEST_KEEP=1). */
void h_rmtree(const char *path);
/* Create path containing text (mode 0600); aborts the test on failure. */
void h_write_file(const char *path, const char *text);
/* Run cmd with sh -c, stdout (and whatever cmd redirects to it) read to
 * the end; *exit_status gets its exit code (128 + signal when killed).
 * Returns the output; caller frees. */
char *h_run_capture(const char *cmd, int *exit_status);

/* ---- service processes ---- */

struct h_service {
    char name[32];   /* "catalog": runs MOAT_BIN_DIR/moat-catalog */
    pid_t pid;       /* > 0 while the child runs and is not reaped */
    uint16_t port;   /* listening port */
    char url[64];    /* "http://127.0.0.1:<port>" (https with TLS) */
    char *data_dir;  /* owned; NULL for a service without one */
    char *log_path;  /* owned; stdout + stderr of the child */
    int exit_status; /* after stop: exit code, 128 + signal, -1 unknown */
};

/*
 * Start MOAT_BIN_DIR/moat-<name> with MOAT_LISTEN=127.0.0.1:0, read the
 * port it bound back from its "service started" log line (lib/service.c),
 * and wait (up to 10 s, scaled) until GET /readyz answers 200. The child
 * inherits the test's environment plus MOAT_SERVICE_NAME, MOAT_LISTEN,
 * MOAT_DATA_DIR (when data_dir is not NULL; the service creates it) and
 * extra_env, a NULL-terminated list of "NAME=value" (may be NULL), which wins
 * over everything else; a "MOAT_LISTEN=127.0.0.1:<port>" in it fixes the port
 * (from h_free_port(), for services that must know each other's URL
 * before either starts). The log goes to <tmpdir>/<name>.log.
 *
 * Returns 0 when ready; otherwise prints the log tail, kills the child and
 * returns -1. svc is zeroed first; release it with h_service_release().
 */
int h_service_start(struct h_service *svc, const char *name, const char *tmpdir,
                    const char *data_dir, const char *const *extra_env);
/*
 * Start svc again on the SAME port, data directory and log (after a kill or
 * stop; a running one is killed first), as a supervisor would: peers that
 * know its URL keep working. Retries while the port is still held. Returns
 * 0 when ready, -1 after printing the log tail.
 */
int h_service_restart(struct h_service *svc, const char *const *extra_env);
/* True while the child process exists and has not exited. */
bool h_service_alive(struct h_service *svc);
/*
 * SIGTERM, then wait up to 15 s (scaled) for the exit; SIGKILL after that.
 * Returns the exit status as in svc->exit_status (0 = clean exit) and
 * prints the log tail when it is not 0.
 */
int h_service_stop(struct h_service *svc);
/* SIGKILL and reap (a crash, as far as the service can tell). */
void h_service_kill(struct h_service *svc);
/* Kill the child if it still runs and free the strings. Idempotent. */
void h_service_release(struct h_service *svc);
/* Print the last max_lines lines of the service log to stderr. */
void h_service_print_log(const struct h_service *svc, size_t max_lines);
/* SIGKILL every started child that is still running. */
void h_kill_all(void);

/*
 * Under MOAT_TEST_ENGINE=postgres (tests/pg_fixture.h): the DSN the
 * services started with data_dir got as MOAT_DB_DSN (owned by the
 * fixture), or NULL when the test runs on SQLite or none started yet.
 */
const char *h_store_dsn(const char *data_dir);
/*
 * Every row of every table of that PostgreSQL store as text (one line per
 * row, PostgreSQL's row literal), for tests that check what is at rest;
 * the caller frees it. NULL when h_store_dsn(data_dir) is (the store is
 * the SQLite file in data_dir: read the files).
 */
char *h_store_text(const char *data_dir);

/* ---- HTTP ---- */

#define H_MAX_HEADERS  64
#define H_MAX_BODY     (8u << 20) /* response bodies beyond are cut */
#define H_HTTP_TIMEOUT 10000      /* ms per request, scaled */

struct h_header {
    char *name; /* owned, as received */
    char *value;
};

struct h_resp {
    long status; /* HTTP status, 0 on a transport error */
    char *body;  /* owned, NUL-terminated, "" when empty */
    size_t body_len;
    bool truncated;                         /* the body exceeded H_MAX_BODY */
    struct h_header headers[H_MAX_HEADERS]; /* of the final response */
    size_t nheaders;
    double elapsed_ms;
    char what[160];                 /* "POST http://..." for messages */
    char err[CURL_ERROR_SIZE + 64]; /* transport error text, status 0 */
};

/*
 * Blocking request. headers is a NULL-terminated list of "Name: value"
 * (may be NULL); body may be NULL. Without a Content-Type in headers a
 * body is sent without one (curl's form default is suppressed). Always
 * fills *out (status 0 on transport errors); release with h_resp_release().
 */
void h_http(struct h_resp *out, const char *method, const char *url,
            const char *const *headers, const void *body, size_t body_len);
/* Shorthand: GET without extra headers. */
void h_get(struct h_resp *out, const char *url);
/* Shorthand: a JSON body (Content-Type: application/json) plus headers. */
void h_send_json(struct h_resp *out, const char *method, const char *url,
                 const char *json, const char *const *headers);
void h_resp_release(struct h_resp *r);
/* Header value by case-insensitive name; NULL if absent. */
const char *h_resp_header(const struct h_resp *r, const char *name);
/* Body parsed as JSON (new reference), or NULL if it is not JSON. */
json_t *h_resp_json(const struct h_resp *r);

/* ---- JSON and metrics ---- */

/* o[key] as a string, "" when absent or not a string (borrowed from o). */
const char *h_jstr(const json_t *o, const char *key);
/* o[key] as an integer, 0 when absent. */
json_int_t h_jint(const json_t *o, const char *key);
/* GET url (200 expected, else the test fails) as JSON: a new reference.
 * headers as for h_http (may be NULL). */
json_t *h_get_json(const char *url, const char *const *headers);
/*
 * The value of one sample of base_url/metrics (Prometheus text), named
 * exactly as written, labels included: "moat_http_requests_total{...}".
 * -1 when the sample is absent or /metrics does not answer 200. Sent with
 * h_metrics_token(base_url): /metrics is for operators and known peers.
 */
double h_metric(const char *base_url, const char *series);
/* The service-token line (as h_service_token) for GET base_url/metrics of
 * a service the harness started; NULL for anything else. */
const char *h_metrics_token(const char *base_url);
/* GET base_url/metrics with h_metrics_token(base_url). */
void h_get_metrics(struct h_resp *out, const char *base_url);
/* The value of the sample named series (name and labels, as written) in
 * Prometheus text (may be NULL), or absent when there is none. */
double h_metric_sample(const char *text, const char *series, double absent);

/*
 * printf into one of 16 rotating static buffers of 4 KiB: handy for URLs
 * in test code ("h_fmt("%s/v1/products/%s", svc.url, id)"). Not for
 * anything kept across 16 later calls.
 */
const char *h_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- identities: the fixed test keyset ----
 *
 * Every service started by h_service_start gets MOAT_SERVICE_KEY derived
 * from its name, MOAT_PEER_KEYS naming every known service plus the peer
 * "test" (the test process itself), and MOAT_JWT_SECRET; extra_env can
 * override each. Keys are SHA-256("moat-test-...:" name): fixed, so a test
 * can sign what the services will accept - and never used outside tests.
 */

/* Base64 service key of name (valid until 16 later h_fmt-style calls). */
const char *h_test_service_key(const char *name);
/* Base64 pair key caller uses towards callee (moat_auth_pair_key). */
const char *h_test_pair_key(const char *caller, const char *callee);
/* Base64 end-user JWT secret shared by users and gateway in tests. */
const char *h_test_jwt_secret(void);
/*
 * A "Moat-Service-Token: <token>" header line from the peer "test" to
 * service aud, acting for user_id with role (both may be NULL), for calling
 * a service directly. Rotating static buffer, like h_fmt.
 */
const char *h_service_token(const char *aud, const char *user_id,
                            const char *role);
/* The same from peer caller (any of the known services) to aud, acting for
 * no user: to show what another service may not do. */
const char *h_peer_token(const char *caller, const char *aud);
/*
 * An "Authorization: Bearer <jwt>" line as the users service would issue:
 * iss "moat-users", aud "moat", sub user_id, role, exp now + ttl_s (negative
 * for an expired token). Rotating static buffer.
 */
const char *h_user_token(const char *user_id, const char *role, long ttl_s);

/*
 * Send header line ("Name: value", copied) with every request whose URL
 * starts with url_prefix, unless the request sets that header itself (an
 * explicit "Name:" with no value suppresses it). For credentials a whole
 * test uses: h_auto_header(gw.url, h_user_token("usr_a", "admin", 3600)).
 * Replaces an earlier line of the same name for the same prefix.
 */
void h_auto_header(const char *url_prefix, const char *line);
/*
 * Like h_auto_header with h_service_token(aud, user, role), but minted
 * again before the token would expire, for tests that run longer than a
 * service token lives (60 s).
 */
void h_auto_service_token(const char *url_prefix, const char *aud,
                          const char *user, const char *role);
void h_auto_headers_clear(void);

/* ---- assertions (cmocka; print the response and the logs on failure) --- */

/* Status is exactly status. */
#define h_assert_status(r, status)                                             \
    h_assert_status_((r), (status), __FILE__, __LINE__)
/*
 * An RFC 9457 problem: the status, Content-Type application/problem+json,
 * and a JSON object body with string type and title and integer status
 * equal to the HTTP status.
 */
#define h_assert_problem(r, status)                                            \
    h_assert_problem_((r), (status), __FILE__, __LINE__)
/* A problem whose "errors" has an entry with this pointer (or, for query
 * parameter errors, "parameter"). */
#define h_assert_problem_error(r, key, name)                                   \
    h_assert_problem_error_((r), (key), (name), __FILE__, __LINE__)

void h_assert_status_(const struct h_resp *r, long status, const char *file,
                      int line);
void h_assert_problem_(const struct h_resp *r, long status, const char *file,
                       int line);
void h_assert_problem_error_(const struct h_resp *r, const char *key,
                             const char *name, const char *file, int line);

/* ---- TLS (moat/tls.h) ----
 *
 * After h_tls_enable(tmpdir) every service started gets MOAT_TLS_CERT,
 * MOAT_TLS_KEY and MOAT_TLS_CA: a certificate naming it, from a test CA
 * made under <tmpdir>/certs, so it serves HTTPS with mutual TLS; service
 * URLs read https://, and h_http presents the certificate of the peer
 * "test" (every service's known caller in tests). h_deployment_start turns
 * it on for a deployment file with "tls": true. It stays on for the rest
 * of the process. The test feed (h_feed_start) stays plain HTTP.
 */
void h_tls_enable(const char *tmpdir);
bool h_tls_on(void);
/* "https" after h_tls_enable, else "http". */
const char *h_scheme(void);
/* "<tmpdir>/certs/<name>.<ext>" (rotating buffer, like h_fmt). */
const char *h_tls_path(const char *name, const char *ext);
/* Issue a certificate for name from the test CA, valid from now +
 * not_before_s for days, to cert_path and key_path (0600). */
void h_tls_issue(const char *name, int64_t not_before_s, int days,
                 const char *cert_path, const char *key_path);

/* ---- a test event feed ----
 *
 * A producer standing in for a service that is not under test (e.g.
 * "orders" while testing a saga participant): a real libmoat outbox in a
 * scratch SQLite database under tmpdir, served as GET /v1/events (events.h)
 * on a free loopback port by a moat_http_server whose loop runs in a
 * thread of the test process. No service token is checked. Events are
 * appended from the test thread; the append itself runs on the feed's
 * loop thread (the outbox is single-threaded), so a publish returns once
 * the event is committed and parked readers are woken.
 */
struct h_feed;

/* Start a feed for source name; aborts the test on failure. */
struct h_feed *h_feed_start(const char *name, const char *tmpdir);
/*
 * The same on a given port (0: any free one). A feed stopped and started
 * again with the same name, tmpdir and port is the same producer back
 * from an outage: its outbox database is kept under tmpdir, and consumers
 * that know its URL reconnect.
 */
struct h_feed *h_feed_start_at(const char *name, const char *tmpdir,
                               uint16_t port);
/* "http://127.0.0.1:<port>" (owned by f). */
const char *h_feed_url(const struct h_feed *f);
/* Append one event with data (JSON text) in its own transaction; returns
 * its seq. Aborts the test on failure. */
int64_t h_feed_publish(struct h_feed *f, const char *type, const char *subject,
                       const char *data_json);
/* Stop the loop, answer parked readers, free everything. NULL is fine. */
void h_feed_stop(struct h_feed *f);

/* ---- a whole deployment from a deployment file ----
 *
 * The services of a deployment file (cli/deploy.h, e.g. the repository's
 * moat.json) started as h_service_start would, each with its data in
 * <tmpdir>/<name>-data, its log in <tmpdir>/<name>.log and the file's env:
 * every "http://host:port" of a started service in an env value (and the
 * gateway's routes) is rewritten to the port the service really got, and
 * of a service not started to port 1, where nothing listens.
 * Services start in file order on port 0 with the port read back; only a
 * service whose URL an earlier one needs (a cycle: inventory calls orders,
 * orders calls inventory) gets a port from h_free_port() beforehand.
 * Shared secrets ("secrets", "${secret:NAME}") get fixed test values
 * (h_deployment_secret); MOAT_JWT_SECRET and the keys stay the harness's.
 */
#define H_DEPLOY_MAX 16

struct h_deployment {
    struct deploy *d; /* the parsed file (cli/deploy.h), owned */
    struct h_service svc[H_DEPLOY_MAX];
    char **env[H_DEPLOY_MAX]; /* each one's extra environment, owned */
    size_t n;                 /* started, in start order */
    /* "transport": "jetstream" (moat/jetstream.h): the services get
     * MOAT_NATS_URL; without a "url" in the file the harness runs a
     * nats-server of its own (store in <tmpdir>/nats, log nats.log). */
    pid_t nats_pid;
    char nats_url[64];
    char nats_monitor[64]; /* http://127.0.0.1:<port> */
};

/*
 * Start the services of file named in only (NULL-terminated; NULL = all).
 * extra_env entries "NAME=value" go to every service, "service:NAME=value"
 * to that one; they win over the file. Returns 0 when all are ready; else
 * -1 (logs printed; call h_deployment_stop anyway). dep is zeroed first.
 */
int h_deployment_start(struct h_deployment *dep, const char *file,
                       const char *tmpdir, const char *const *only,
                       const char *const *extra_env);
/* The started service name; fails the test when there is none. */
struct h_service *h_deployment_service(struct h_deployment *dep,
                                       const char *name);
/* The test value of shared secret name (rotating buffer, like h_fmt). */
const char *h_deployment_secret(const char *name);
/* h_service_restart(svc) with the environment it was started with (same
 * port, data and log); svc is one of dep's. */
int h_deployment_restart(struct h_deployment *dep, struct h_service *svc);
/* Stop every service (reverse start order), release everything. Returns
 * how many did not exit 0. */
int h_deployment_stop(struct h_deployment *dep);

/*
 * For tests that run the real `moat up`: write the deployment file src to
 * dst with every service (and the Redis of a "redis" block) on a free
 * loopback port. Each listen address,
 * and every env value naming one of the file's addresses, follows; the
 * state goes to "var" beside dst; name, when not NULL, replaces the
 * deployment's name; the gateway's MOAT_GATEWAY_TIMEOUT_MS, unless the
 * file sets it, is its 2 s default scaled by MOAT_TEST_TIMEOUT_MULT (one
 * password hash on a loaded machine outlasts 2 s). gw_url (gw_len bytes)
 * receives the gateway's
 * "http://127.0.0.1:<port>" (the service with routes). Aborts the test on
 * failure.
 */
void h_deployment_write_free_ports(const char *src, const char *dst,
                                   const char *name, char *gw_url,
                                   size_t gw_len);

/*
 * For tests that run the real `moat up`: start `moat up -f file` in a
 * child (killed with the test), its output appended to dir/up.log, and
 * wait (30 s, scaled) until gw_url's /readyz answers 200. Returns the
 * supervisor's pid, or -1 when the deployment did not come up (up.log is
 * printed to stderr). h_moat_down() stops it: SIGTERM, so the supervisor
 * stops every service in order, then waits; *pid becomes 0.
 */
pid_t h_moat_up(const char *file, const char *dir, const char *gw_url);
void h_moat_down(pid_t *pid);
/* Print the file at path to stderr (a log, when a test fails). */
void h_print_file(const char *path);
/*
 * `moat chaos --file file --setup --duration seconds --rate rate` plus
 * extra (more options, may be ""; MOAT_TEST_SEED adds --seed) against the
 * deployment moat up runs from dir: its report goes to stderr (up.log too
 * when it fails), and the test fails unless the drill ends with status 0,
 * 0 violations and some faults struck. Returns the accepted orders; *text
 * (may be NULL) gets the report, caller frees.
 */
long h_chaos_drill(const char *file, const char *dir, int seconds, int rate,
                   const char *extra, char **text);

#endif /* MOAT_TEST_HARNESS_H */
