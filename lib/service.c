/*
 * service.c - the life of a service process (see moat/service.h):
 * configure, create the data directory, init, confine, serve, drain, exit.
 */
#include "moat/common.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <sodium.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/backup.h"
#include "moat/buf.h"
#include "moat/config.h"
#include "moat/http_client.h"
#include "moat/jetstream.h"
#include "moat/log.h"
#include "moat/sandbox.h"
#include "moat/service.h"
#include "moat/tls.h"

struct runtime {
    struct moat_service *svc;
    struct event *sigterm;
    struct event *sigint;
    struct event *drain_deadline;
    int64_t started_wall_ms;
    struct moat_metric_family *m_auth_rejected; /* {reason} */
    bool tls; /* mutual TLS: the client certificate must match the token */
    bool initialised;
    bool stopping;
    struct moat_metric_series *m_rss, *m_cpu, *m_start, *m_fds, *m_up;
};

int moat_service_config_load(struct moat_service_config *cfg,
                             const struct moat_service_def *def)
{
    int rc = MOAT_OK;
    int64_t v;
    memset(cfg, 0, sizeof(*cfg));
    cfg->name = moat_env_str("MOAT_SERVICE_NAME", def->name);

    char deflisten[32];
    snprintf(deflisten, sizeof(deflisten), "127.0.0.1:%u",
             (unsigned)def->default_port);
    const char *listen = moat_env_str("MOAT_LISTEN", deflisten);
    if (moat_parse_hostport(listen, cfg->host, sizeof(cfg->host), &cfg->port,
                            true) != MOAT_OK) {
        fprintf(stderr, "config: MOAT_LISTEN='%s' is not host:port\n", listen);
        rc = MOAT_EINVAL;
    }
    if (def->needs_data_dir) {
        cfg->data_dir = moat_env_str("MOAT_DATA_DIR", NULL);
        if (!cfg->data_dir) {
            static char fallback[128];
            snprintf(fallback, sizeof(fallback), "var/%s", def->name);
            cfg->data_dir = fallback;
        }
        /* A libpq connection string: the store is that PostgreSQL
         * database instead of a SQLite file (moat up sets it for
         * "engine": "postgres"). Never logged: it may hold a password. */
        cfg->db_dsn = moat_env_str("MOAT_DB_DSN", NULL);
        if (cfg->db_dsn && !*cfg->db_dsn)
            cfg->db_dsn = NULL;
    }

    if (moat_env_int("MOAT_MAX_BODY_BYTES", MOAT_HTTP_DEFAULT_MAX_BODY, 1024,
                     (int64_t)1 << 30, &v) != MOAT_OK)
        rc = MOAT_EINVAL;
    cfg->limits.max_body_bytes = (size_t)v;
    if (moat_env_int("MOAT_MAX_HEADER_BYTES", MOAT_HTTP_DEFAULT_MAX_HEADER,
                     1024, 1 << 20, &v) != MOAT_OK)
        rc = MOAT_EINVAL;
    cfg->limits.max_header_bytes = (size_t)v;
    if (moat_env_int("MOAT_MAX_CONNECTIONS", MOAT_HTTP_DEFAULT_MAX_CONNECTIONS,
                     1, 100000, &v) != MOAT_OK)
        rc = MOAT_EINVAL;
    cfg->limits.max_connections = (unsigned)v;
    if (moat_env_int("MOAT_IO_TIMEOUT_MS", MOAT_HTTP_DEFAULT_IO_TIMEOUT_MS, 100,
                     3600000, &v) != MOAT_OK)
        rc = MOAT_EINVAL;
    cfg->limits.io_timeout_ms = (unsigned)v;
    if (moat_env_int("MOAT_HEADER_TIMEOUT_MS",
                     MOAT_HTTP_DEFAULT_HEADER_TIMEOUT_MS, 100, 3600000,
                     &v) != MOAT_OK)
        rc = MOAT_EINVAL;
    cfg->limits.header_timeout_ms = (unsigned)v;
    if (moat_env_int("MOAT_DRAIN_TIMEOUT_MS", 10000, 0, 600000, &v) != MOAT_OK)
        rc = MOAT_EINVAL;
    cfg->drain_timeout_ms = (unsigned)v;
    if (moat_env_bool("MOAT_ACCESS_LOG", true, &cfg->access_log) != MOAT_OK)
        rc = MOAT_EINVAL;
    if (moat_env_bool("MOAT_SANDBOX", true, &cfg->sandbox) != MOAT_OK)
        rc = MOAT_EINVAL;
    if (moat_env_bool("MOAT_INSECURE_NO_AUTH", false, &cfg->insecure_no_auth) !=
        MOAT_OK)
        rc = MOAT_EINVAL;
    cfg->operators = moat_env_str("MOAT_OPERATORS", "operator");
    return rc;
}

/* mkdir -p with mode 0700 for every directory it creates; an existing
 * data directory is tightened to 0700. */
static int make_data_dir(const char *path)
{
    char *p = moat_xstrdup(path);
    int rc = MOAT_OK;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            rc = MOAT_EIO;
            goto out;
        }
        *s = '/';
    }
    if (mkdir(p, 0700) != 0 && errno != EEXIST) {
        rc = MOAT_EIO;
        goto out;
    }
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = MOAT_EIO;
        goto out;
    }
    if ((st.st_mode & 0777) != 0700 && chmod(p, 0700) != 0)
        rc = MOAT_EIO;
out:
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot create data directory", "{s:s, s:s}",
                 "path", path, "error", strerror(errno));
    free(p);
    return rc;
}

/*
 * Use the hard limit on file descriptors: the soft default (often 1024)
 * is the connection cap itself, so a flood of slow clients would exhaust
 * descriptors before the cap pauses accepting. Warn when even the hard
 * limit leaves no room beyond max_connections.
 */
static void raise_fd_limit(unsigned max_connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < max_connections + 256)
        moat_log(MOAT_LOG_WARN,
                 "file descriptor limit barely above max_connections",
                 "{s:I, s:I}", "nofile", (json_int_t)rl.rlim_cur,
                 "max_connections", (json_int_t)max_connections);
}

/* ---- feeds ---- */

int moat_service_subscribe(struct moat_service *svc, struct moat_consumer *c,
                           const char *source, const char *url,
                           const char *const *types,
                           moat_event_handler_fn handler, void *arg)
{
    if (!moat_url_valid(url)) {
        moat_log(MOAT_LOG_ERROR, "a feed URL is not an http(s):// URL",
                 "{s:s, s:s}", "source", source, "url", url ? url : "");
        return MOAT_EINVAL;
    }
    if (!svc->feeds) {
        const struct moat_http_client_options opts = {
            .timeout_ms = MOAT_FEED_CLIENT_TIMEOUT_MS};
        int rc = moat_http_client_new(&svc->feeds, svc->base, &opts);
        if (rc != MOAT_OK)
            return rc;
    }
    struct moat_event_source *src =
        moat_feed_source_new(source, url, svc->feeds, svc->auth);
    if (!src)
        return MOAT_EINVAL;
    char *epochs = moat_epoch_dir(svc);
    moat_feed_source_set_epoch_dir(src, epochs);
    free(epochs);
    const struct moat_subscription sub = {
        .source = src, .types = types, .handler = handler, .arg = arg};
    int rc = moat_consumer_subscribe(c, &sub);
    if (rc != MOAT_OK)
        src->ops->free(src); /* not taken: the consumer refused it */
    return rc;
}

/* ---- built-in endpoints ---- */

static void handle_healthz(struct moat_req *req, void *arg)
{
    struct runtime *rt = arg;
    moat_req_reply_json(
        req, 200,
        json_pack("{s:s, s:s, s:I}", "status", "ok", "service",
                  rt->svc->cfg.name, "uptime_s",
                  (json_int_t)((moat_wall_ms() - rt->started_wall_ms) / 1000)));
}

static void handle_readyz(struct moat_req *req, void *arg)
{
    struct runtime *rt = arg;
    const char *why = NULL;
    bool ready = rt->initialised && !rt->stopping;
    if (!rt->initialised)
        why = "initialising";
    else if (rt->stopping)
        why = "shutting down";
    else if (rt->svc->def->ready && !rt->svc->def->ready(rt->svc, &why))
        ready = false;
    if (ready) {
        moat_req_reply_json(req, 200,
                            json_pack("{s:s, s:s}", "status", "ready",
                                      "service", rt->svc->cfg.name));
    } else {
        moat_req_set_header(req, "Retry-After", "1");
        moat_req_reply_problem(req, 503, "not ready: %s",
                               why ? why : "unknown");
    }
}

static long read_rss_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * sysconf(_SC_PAGESIZE);
}

static void collect_process(struct moat_metrics *m, void *arg)
{
    struct runtime *rt = arg;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    moat_metric_set(rt->m_cpu, cpu);
    moat_metric_set(rt->m_rss, (double)read_rss_bytes());
    int fds = 0;
    for (int fd = 0; fd < 4096; fd++)
        if (fcntl(fd, F_GETFD) != -1)
            fds++;
    moat_metric_set(rt->m_fds, fds);
}

static bool service_token_guard(struct moat_req *req, void *arg);

/* Operators and known peers only (any valid service token): the figures
 * tell an attacker what runs and how busy it is. Open where the service
 * has no identity (MOAT_INSECURE_NO_AUTH, an external stand-in). */
static void handle_metrics(struct moat_req *req, void *arg)
{
    struct runtime *rt = arg;
    if (rt->svc->auth && !service_token_guard(req, rt))
        return;
    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(rt->svc->metrics, &out);
    moat_req_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8",
                   moat_buf_str(&out), out.len);
    moat_buf_release(&out);
}

/* GET /v1/admin/spans?trace_id=&limit=: the span ring (moat/trace.h) as
 * OTLP/JSON, for the operator (a guarded route like every admin route). */
static void handle_spans(struct moat_req *req, void *arg)
{
    struct runtime *rt = arg;
    /* An open route checked here, so that the gateway (whose guard wants
     * an end user) serves its spans to the operator too. */
    const char *token = moat_req_header(req, MOAT_SERVICE_TOKEN_HEADER);
    struct moat_principal p;
    const char *why = "missing " MOAT_SERVICE_TOKEN_HEADER " header";
    bool ok = rt->svc->auth && token &&
              moat_auth_verify(rt->svc->auth, token, &p, &why) == MOAT_OK;
    if (ok && strcmp(p.service, "operator") != 0) {
        ok = false;
        why = "not the operator";
    }
    if (!ok) {
        moat_req_set_header(req, "WWW-Authenticate", "MoatService");
        moat_req_reply_problem(
            req, 401, "the operator's service token is required: %s", why);
        return;
    }
    const char *trace_id = moat_req_query(req, "trace_id");
    const char *lim = moat_req_query(req, "limit");
    long limit = lim ? strtol(lim, NULL, 10) : 500;
    if (trace_id && trace_id[0] && strlen(trace_id) != 32) {
        moat_req_reply_problem(req, 400, "trace_id must be 32 hex digits");
        return;
    }
    if (limit < 1 || limit > MOAT_SPAN_RING) {
        moat_req_reply_problem(req, 400, "limit must be 1..%d", MOAT_SPAN_RING);
        return;
    }
    json_t *rs = moat_spans_export(rt->svc->cfg.name, trace_id, (size_t)limit);
    moat_req_reply_json(req, 200, json_pack("{s:[o]}", "resourceSpans", rs));
}

#ifdef MOAT_TEST_HOOKS
/*
 * Test builds only: lets an integration test ask the running process to
 * open a path, proving what the sandbox allows. Never compiled into the
 * binaries `make up` runs.
 */
static void handle_test_open(struct moat_req *req, void *arg)
{
    const char *path = moat_req_query(req, "path");
    if (!path || path[0] != '/') {
        moat_req_reply_problem(req, 400,
                               "query parameter path must be an "
                               "absolute path");
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        moat_req_reply_json(req, 200, json_pack("{s:b}", "ok", 1));
    } else {
        int e = errno;
        moat_req_reply_json(req, 200,
                            json_pack("{s:b, s:i, s:s}", "ok", 0, "errno", e,
                                      "error", strerror(e)));
    }
}
#endif

/* ---- shutdown ---- */

static void on_drained(void *arg)
{
    struct runtime *rt = arg;
    event_base_loopbreak(rt->svc->base);
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct runtime *rt = arg;
    moat_log(MOAT_LOG_WARN, "drain deadline passed, stopping anyway", "{s:i}",
             "in_flight", (int)moat_http_in_flight(rt->svc->http));
    event_base_loopbreak(rt->svc->base);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct runtime *rt = arg;
    if (rt->stopping) {
        moat_log(MOAT_LOG_WARN, "second signal, stopping now", NULL);
        event_base_loopbreak(rt->svc->base);
        return;
    }
    rt->stopping = true;
    moat_log(MOAT_LOG_INFO, "draining", "{s:s, s:i}", "signal",
             strsignal((int)sig), "in_flight",
             (int)moat_http_in_flight(rt->svc->http));
    unsigned ms = rt->svc->cfg.drain_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    rt->drain_deadline = evtimer_new(rt->svc->base, on_drain_deadline, rt);
    evtimer_add(rt->drain_deadline, &tv);
    moat_http_drain(rt->svc->http, on_drained, rt);
}

/* name is one of the comma-separated list. */
static bool listed(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (n && len == n && strncmp(p, name, n) == 0)
            return true;
        p += len + (p[len] == ',');
    }
    return false;
}

/* Routes under /v1/admin are the operators' (MOAT_OPERATORS). */
static bool operators_only(struct moat_req *req)
{
    const char *route = moat_req_route(req);
    return strncmp(route, "/v1/admin/", 10) == 0 ||
           strcmp(route, "/v1/admin") == 0;
}

/*
 * Every guarded route, and /metrics: a valid service token from a known
 * peer; on an admin route, from an operator.
 */
static bool service_token_guard(struct moat_req *req, void *arg)
{
    struct runtime *rt = arg;
    const char *token = moat_req_header(req, MOAT_SERVICE_TOKEN_HEADER);
    struct moat_principal p;
    const char *why = "missing " MOAT_SERVICE_TOKEN_HEADER " header";
    if (token && moat_auth_verify(rt->svc->auth, token, &p, &why) == MOAT_OK) {
        char peer[MOAT_TLS_NAME_MAX + 1];
        if (rt->tls && (!moat_req_peer_service(req, peer, sizeof(peer)) ||
                        strcmp(peer, p.service) != 0)) {
            /* A known caller's certificate with another caller's token. */
            const char *labels[] = {"certificate mismatch"};
            moat_metric_add(moat_metric_series(rt->m_auth_rejected, labels), 1);
            moat_log(MOAT_LOG_WARN, "service call refused", "{s:s, s:s}",
                     "reason", "the client certificate names another service",
                     "iss", p.service);
            moat_req_reply_problem(req, 403,
                                   "the client certificate does not name "
                                   "the service the token was issued by");
            return false;
        }
        if (operators_only(req) && !listed(rt->svc->cfg.operators, p.service)) {
            const char *labels[] = {"not an operator"};
            moat_metric_add(moat_metric_series(rt->m_auth_rejected, labels), 1);
            moat_req_reply_problem(req, 403,
                                   "this route is for operators; %s is not "
                                   "one",
                                   p.service);
            return false;
        }
        moat_req_set_principal(req, &p);
        return true;
    }
    const char *labels[] = {token ? why : "missing"};
    moat_metric_add(moat_metric_series(rt->m_auth_rejected, labels), 1);
    moat_log(MOAT_LOG_WARN, "service call refused", "{s:s, s:s}", "reason", why,
             "peer", moat_req_peer(req));
    moat_req_set_header(req, "WWW-Authenticate", "MoatService");
    moat_req_reply_problem(req, 401, "service authentication failed: %s", why);
    return false;
}

/*
 * MOAT_TLS_*: serve HTTPS. A service in moat's trust domain accepts only
 * client certificates naming its known callers (the names of
 * MOAT_PEER_KEYS) and the operator; the gateway, which faces the public,
 * and an external stand-in ask for none.
 */
static int setup_tls(struct runtime *rt)
{
    struct moat_service *svc = rt->svc;
    int rc = moat_tls_load_env();
    if (rc == MOAT_ENOTFOUND)
        return MOAT_OK;
    if (rc != MOAT_OK)
        return rc;
    bool mutual = !svc->def->public_api && !svc->def->external;
    char *peers = moat_xstrdup(moat_env_str("MOAT_PEER_KEYS", ""));
    size_t peers_len = strlen(peers);
    const char *allowed[66] = {"operator"};
    size_t n = 1;
    char *save = NULL;
    for (char *tok = strtok_r(peers, ",", &save); tok && n < 65;
         tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        if (colon)
            *colon = '\0';
        allowed[n++] = tok;
    }
    SSL_CTX *ctx = moat_tls_server_ctx(mutual ? allowed : NULL);
    sodium_memzero(peers, peers_len); /* holds the pair keys */
    free(peers);
    if (!ctx)
        return MOAT_EIO;
    moat_http_set_tls(svc->http, ctx);
    SSL_CTX_free(ctx);
    rt->tls = mutual && svc->auth;
    moat_log(MOAT_LOG_INFO, "serving HTTPS", "{s:s}", "clients",
             mutual ? "known callers with certificates" : "anyone");
    return MOAT_OK;
}

static void register_builtin_metrics(struct runtime *rt)
{
    struct moat_metrics *m = rt->svc->metrics;
    rt->m_rss = moat_metric_single(
        moat_metrics_family(m, MOAT_GAUGE, "process_resident_memory_bytes",
                            "Resident memory size in bytes.", NULL, NULL, 0));
    rt->m_cpu = moat_metric_single(moat_metrics_family(
        m, MOAT_COUNTER, "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.", NULL, NULL, 0));
    rt->m_start = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds.", NULL,
        NULL, 0));
    rt->m_fds = moat_metric_single(
        moat_metrics_family(m, MOAT_GAUGE, "process_open_fds",
                            "Number of open file descriptors.", NULL, NULL, 0));
    struct moat_metric_family *info = moat_metrics_family(
        m, MOAT_GAUGE, "moat_service_info",
        "Always 1; labels name the service instance.", "service", NULL, 0);
    const char *labels[] = {rt->svc->cfg.name};
    moat_metric_set(moat_metric_series(info, labels), 1);
    moat_metric_set(rt->m_start, (double)rt->started_wall_ms / 1000.0);
    moat_metrics_on_collect(m, collect_process, rt);
    rt->m_auth_rejected = moat_metrics_family(
        m, MOAT_COUNTER, "moat_auth_rejected_total",
        "Calls refused by the service-token guard, by reason.", "reason", NULL,
        0);
}

int moat_service_main(const struct moat_service_def *def, int argc, char **argv)
{
    struct moat_service svc = {.def = def};
    struct runtime rt = {.svc = &svc, .started_wall_ms = moat_wall_ms()};
    int exit_code = 1;
    bool inited = false;

    if (argc > 1 &&
        (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: %s\n\nmoat service '%s'. Configured by environment "
               "variables (MOAT_LISTEN, MOAT_DATA_DIR, ...);\nsee "
               "docs/operations.md. Normally started by `moat up`.\n",
               argv[0], def->name);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "%s: unexpected argument '%s' (try --help)\n", argv[0],
                argv[1]);
        return 2;
    }

    enum moat_log_level level = MOAT_LOG_INFO;
    const char *lv = moat_env_str("MOAT_LOG_LEVEL", "info");
    if (moat_log_level_parse(lv, &level) != MOAT_OK) {
        fprintf(stderr,
                "config: MOAT_LOG_LEVEL='%s' is not one of debug, "
                "info, warn, error\n",
                lv);
        return 2;
    }
    moat_log_init(moat_env_str("MOAT_SERVICE_NAME", def->name), level);
    if (moat_service_config_load(&svc.cfg, def) != MOAT_OK)
        return 2;
    /* "transport": "jetstream" in the deployment (moat/jetstream.h). */
    const char *nats_url = getenv("MOAT_NATS_URL");
    if (nats_url && *nats_url &&
        moat_jetstream_enable(nats_url, svc.cfg.name) != MOAT_OK) {
        fprintf(stderr, "config: MOAT_NATS_URL='%s' is not a nats:// URL\n",
                nats_url);
        return 2;
    }

    /* A peer that goes away mid-write must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(svc.cfg.limits.max_connections);

    svc.base = event_base_new();
    if (!svc.base)
        moat_die("event_base_new failed");
    svc.metrics = moat_metrics_new();
    register_builtin_metrics(&rt);
    svc.http = moat_http_server_new(svc.base, &svc.cfg.limits, svc.metrics);
    moat_http_set_access_log(svc.http, svc.cfg.access_log);
    moat_http_route_ex(svc.http, MOAT_GET | MOAT_HEAD, "/healthz",
                       handle_healthz, &rt, MOAT_ROUTE_OPEN);
    moat_http_route_ex(svc.http, MOAT_GET | MOAT_HEAD, "/readyz", handle_readyz,
                       &rt, MOAT_ROUTE_OPEN);
    moat_http_route_ex(svc.http, MOAT_GET | MOAT_HEAD, "/metrics",
                       handle_metrics, &rt, MOAT_ROUTE_OPEN);
    if (!def->external)
        moat_http_route_ex(svc.http, MOAT_GET, "/v1/admin/spans", handle_spans,
                           &rt, MOAT_ROUTE_OPEN);
#ifdef MOAT_TEST_HOOKS
    moat_http_route_ex(svc.http, MOAT_GET, "/_test/open", handle_test_open, &rt,
                       MOAT_ROUTE_OPEN);
#endif

    if (def->external) {
        /* Authenticates its own clients (e.g. merchant API keys). */
    } else if (svc.cfg.insecure_no_auth) {
        moat_log(MOAT_LOG_WARN,
                 "MOAT_INSECURE_NO_AUTH=1: accepting calls WITHOUT service "
                 "authentication (development only)",
                 NULL);
    } else {
        int arc = moat_auth_load(&svc.auth, svc.cfg.name);
        if (arc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "cannot load the service identity",
                     "{s:s, s:s}", "error", moat_strerror(arc), "hint",
                     "set MOAT_SERVICE_KEY and MOAT_PEER_KEYS (moat up does), "
                     "or MOAT_INSECURE_NO_AUTH=1 for development");
            goto out;
        }
        if (!def->public_api)
            moat_http_set_guard(svc.http, service_token_guard, &rt);
    }

    /* Before confinement: the certificate files are outside the data dir. */
    if (setup_tls(&rt) != MOAT_OK)
        goto out;

    if (svc.cfg.data_dir && make_data_dir(svc.cfg.data_dir) != MOAT_OK)
        goto out;
    if (def->init && def->init(&svc) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "service init failed", NULL);
        goto out;
    }
    inited = true;
    if (moat_backup_serve(&svc) != MOAT_OK)
        goto out;

    if (svc.cfg.sandbox) {
        bool enforced = false;
        /* The files its database connection string names (moat up's
         * MOAT_DB_DSN: a passfile, the CA), read again at every reconnect,
         * are readable beside the service's own extra paths. */
        char **dsn_files = moat_sandbox_dsn_files(getenv("MOAT_DB_DSN"));
        size_t nro = 0, ndsn = 0;
        while (def->ro_paths && def->ro_paths[nro])
            nro++;
        while (dsn_files && dsn_files[ndsn])
            ndsn++;
        const char **ro = moat_xcalloc(nro + ndsn + 1, sizeof(*ro));
        for (size_t i = 0; i < nro; i++)
            ro[i] = def->ro_paths[i];
        for (size_t i = 0; i < ndsn; i++)
            ro[nro + i] = dsn_files[i];
        int rc = moat_sandbox_confine(svc.cfg.data_dir, ro, &enforced);
        free(ro);
        for (size_t i = 0; i < ndsn; i++)
            free(dsn_files[i]);
        free(dsn_files);
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "cannot confine the process", "{s:s}",
                     "error", moat_strerror(rc));
            goto out;
        }
        if (enforced)
            moat_log(MOAT_LOG_INFO, "sandbox enforced", "{s:s, s:i}",
                     "data_dir", svc.cfg.data_dir ? svc.cfg.data_dir : "",
                     "landlock_abi", moat_sandbox_abi());
        else
            moat_log(MOAT_LOG_WARN,
                     "Landlock is not available in this kernel: running "
                     "WITHOUT filesystem confinement",
                     NULL);
    } else {
        moat_log(MOAT_LOG_WARN, "sandbox disabled by MOAT_SANDBOX=0", NULL);
    }

    if (moat_http_listen(svc.http, svc.cfg.host, svc.cfg.port,
                         &svc.bound_port) != MOAT_OK)
        goto out;
    rt.sigterm = evsignal_new(svc.base, SIGTERM, on_signal, &rt);
    rt.sigint = evsignal_new(svc.base, SIGINT, on_signal, &rt);
    evsignal_add(rt.sigterm, NULL);
    evsignal_add(rt.sigint, NULL);
    if (def->start && def->start(&svc) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "service start failed", NULL);
        goto out;
    }
    rt.initialised = true;
    moat_log(MOAT_LOG_INFO, "service started", "{s:s, s:i, s:s, s:i}", "host",
             svc.cfg.host, "port", svc.bound_port, "data_dir",
             svc.cfg.data_dir ? svc.cfg.data_dir : "", "pid", (int)getpid());

    event_base_dispatch(svc.base);
    moat_log(MOAT_LOG_INFO, "service stopped", NULL);
    exit_code = 0;

out:
    /* The service goes first: releasing it may complete requests still in
     * flight past the drain deadline (a gateway cancelling its upstream
     * calls answers them), which needs the server alive. */
    if (inited && def->release) {
        def->release(&svc);
        /* Write out the replies that release produced. */
        event_base_loop(svc.base, EVLOOP_NONBLOCK);
    }
    /* After release, which freed the consumers whose sources use it. */
    moat_http_client_free(svc.feeds);
    moat_jetstream_disable(); /* after the consumers and outboxes */
    moat_http_server_free(svc.http);
    if (rt.sigterm)
        event_free(rt.sigterm);
    if (rt.sigint)
        event_free(rt.sigint);
    if (rt.drain_deadline)
        event_free(rt.drain_deadline);
    moat_auth_free(svc.auth);
    moat_metrics_free(svc.metrics);
    event_base_free(svc.base);
    libevent_global_shutdown();
    return exit_code;
}
