/*
 * status.c - `moat status` and `moat down`: what a running deployment looks
 * like from outside, and how to stop it.
 *
 * Both read the deployment file (for var_dir and the services) and the
 * supervisor's state file; status then asks every service itself
 * (/healthz, /readyz) rather than trusting the state file, so it also tells
 * the truth when the supervisor is gone.
 */
#include "moat/common.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "pgcluster.h"

#define DOWN_GRACE_MS        5000  /* beyond the supervisor's stop bound */
#define DOWN_DEFAULT_WAIT_MS 30000 /* when the state file has no bound */
#define DOWN_POLL_MS         100

struct health {
    long healthz; /* HTTP status, 0 = no answer */
    long readyz;
    const char *word; /* "ready", "not-ready", "unhealthy", "down" */
};

static void check_health(const struct deploy *d,
                         const struct deploy_service *svc, struct health *h)
{
    if (svc->pg_cluster) {
        /* No HTTP: whether it accepts connections on its address. */
        enum cli_pg_health ph = cli_pg_ping(d);
        h->healthz = h->readyz = 0;
        h->word = ph == CLI_PG_READY      ? "ready"
                  : ph == CLI_PG_STARTING ? "not-ready"
                                          : "down";
        return;
    }
    char *base = deploy_base_url(svc);
    char *url = moat_xasprintf("%s/healthz", base);
    if (cli_probe(url, CLI_PROBE_TIMEOUT_MS, &h->healthz) != MOAT_OK)
        h->healthz = 0;
    free(url);
    /* The broker has no /readyz: its /healthz says JetStream is up. */
    url = moat_xasprintf("%s%s", base,
                         svc->ready_path ? svc->ready_path : "/readyz");
    if (cli_probe(url, CLI_PROBE_TIMEOUT_MS, &h->readyz) != MOAT_OK)
        h->readyz = 0;
    free(url);
    free(base);
    if (h->readyz == 200)
        h->word = "ready";
    else if (h->healthz == 200)
        h->word = "not-ready"; /* alive, but e.g. its database is not */
    else if (h->healthz || h->readyz)
        h->word = "unhealthy";
    else
        h->word = "down";
}

/* Value of a sample line "name{labels} value" in Prometheus text. */
static bool metric_line(const char *line, const char *name, char *label,
                        size_t label_len, double *value)
{
    size_t n = strlen(name);
    if (strncmp(line, name, n) != 0 || (line[n] != ' ' && line[n] != '{'))
        return false;
    const char *p = line + n;
    label[0] = '\0';
    if (*p == '{') {
        /* Only the first label's value matters here (source="catalog"). */
        const char *q = strchr(p, '"');
        const char *e = q ? strchr(q + 1, '"') : NULL;
        if (!q || !e)
            return false;
        snprintf(label, label_len, "%.*s", (int)(e - q - 1), q + 1);
        p = strchr(e, '}');
        if (!p)
            return false;
        p++;
    }
    char *end = NULL;
    *value = strtod(p, &end);
    return end != p;
}

/*
 * A gateway's read cache (docs/gateway.md): lookups by result and, per
 * source, whether its invalidations are applied up to the head, from one
 * /metrics line into cache {"hit": n, ..., "synced": {"catalog": 1}}.
 */
static void cache_line(const char *line, json_t *cache)
{
    char label[64];
    double v;
    if (metric_line(line, "moat_gateway_cache_requests_total", label,
                    sizeof(label), &v))
        json_object_set_new(cache, label, json_real(v));
    else if (metric_line(line, "moat_gateway_cache_synced", label,
                         sizeof(label), &v)) {
        if (!json_object_get(cache, "synced"))
            json_object_set_new(cache, "synced", json_object());
        json_object_set_new(json_object_get(cache, "synced"), label,
                            json_boolean(v == 1));
    }
}

/*
 * Event backbone figures from a service's /metrics (read as the operator:
 * it is for operators and known peers): its outbox backlog and, per source
 * it consumes, lag and dead letters; for a gateway with Redis, its read
 * cache. NULL when the service has none of these.
 */
static json_t *events_of(const struct deploy *d,
                         const struct deploy_service *svc)
{
    char *base = deploy_base_url(svc);
    char *url = moat_xasprintf("%s/metrics", base);
    char *auth = cli_operator_header(d, svc->name);
    long status = 0;
    char *body = NULL;
    json_t *out = NULL;
    if (!auth ||
        cli_http("GET", url, auth, NULL, CLI_PROBE_TIMEOUT_MS, &status,
                 &body) != MOAT_OK ||
        status != 200)
        goto done;
    json_t *outbox = json_object(), *consumers = json_object(),
           *cache = json_object();
    static const struct {
        const char *metric, *key;
        bool per_source;
    } wanted[] = {
        {"moat_outbox_events", "events", false},
        {"moat_outbox_oldest_age_seconds", "oldest_age_s", false},
        {"moat_outbox_head_seq", "head", false},
        {"moat_consumer_lag_events", "lag_events", true},
        {"moat_consumer_lag_seconds", "lag_seconds", true},
        {"moat_consumer_dead_letters", "dead_letters", true},
        {"moat_consumer_failures_total", "failures", true},
    };
    char *save = NULL;
    for (char *line = strtok_r(body, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#')
            continue;
        cache_line(line, cache);
        for (size_t i = 0; i < MOAT_ARRAY_LEN(wanted); i++) {
            char label[64];
            double v;
            if (!metric_line(line, wanted[i].metric, label, sizeof(label), &v))
                continue;
            json_t *dst = outbox;
            if (wanted[i].per_source) {
                dst = json_object_get(consumers, label);
                if (!dst) {
                    dst = json_object();
                    json_object_set_new(consumers, label, dst);
                }
            }
            json_object_set_new(dst, wanted[i].key, json_real(v));
        }
    }
    if (json_object_size(outbox) || json_object_size(consumers) ||
        json_object_size(cache)) {
        out = json_object();
        if (json_object_size(outbox))
            json_object_set(out, "outbox", outbox);
        if (json_object_size(consumers))
            json_object_set(out, "consumers", consumers);
        if (json_object_size(cache))
            json_object_set(out, "cache", cache);
    }
    json_decref(outbox);
    json_decref(consumers);
    json_decref(cache);
done:
    free(body);
    free(url);
    free(auth);
    free(base);
    return out;
}

static double num(json_t *o, const char *key)
{
    return json_number_value(json_object_get(o, key));
}

static void print_events(json_t *services)
{
    bool header = false;
    size_t i;
    json_t *s;
    json_array_foreach(services, i, s)
    {
        json_t *ev = json_object_get(s, "events");
        if (!ev)
            continue;
        if (!header) {
            printf("\nEVENTS\n");
            header = true;
        }
        const char *name = json_string_value(json_object_get(s, "name"));
        json_t *ob = json_object_get(ev, "outbox");
        if (ob)
            printf("  %-14s outbox: %.0f events retained, head %.0f, oldest "
                   "%.1f s\n",
                   name, num(ob, "events"), num(ob, "head"),
                   num(ob, "oldest_age_s"));
        const char *src;
        json_t *c;
        json_object_foreach(json_object_get(ev, "consumers"), src, c)
        {
            printf("  %-14s from %-10s lag %.0f events (%.1f s), dead "
                   "letters %.0f, handler failures %.0f\n",
                   name, src, num(c, "lag_events"), num(c, "lag_seconds"),
                   num(c, "dead_letters"), num(c, "failures"));
        }
        json_t *cache = json_object_get(ev, "cache");
        if (cache) {
            printf("  %-14s cache: %.0f hits, %.0f misses, %.0f bypassed, "
                   "%.0f errors; in sync with",
                   name, num(cache, "hit"), num(cache, "miss"),
                   num(cache, "bypass"), num(cache, "error"));
            json_t *in;
            int n = 0;
            json_object_foreach(json_object_get(cache, "synced"), src, in)
            {
                if (json_is_true(in))
                    printf("%s %s", n++ ? "," : "", src);
            }
            printf("%s\n", n ? "" : " nothing (reads go to the services)");
        }
    }
}

/* A new reference to v, or JSON null when v is NULL (for json_pack "o"). */
static json_t *or_null(json_t *v)
{
    return v ? json_incref(v) : json_null();
}

/* The entry for instance inst (0-based) of name in the state file's
 * services, or NULL. Borrowed. */
static json_t *state_service(json_t *state, const char *name, size_t inst)
{
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(state, "services"), i, svc)
    {
        const char *n = json_string_value(json_object_get(svc, "name"));
        json_int_t k = json_integer_value(json_object_get(svc, "instance"));
        if (n && strcmp(n, name) == 0 && (k ? (size_t)k - 1 : 0) == inst)
            return svc;
    }
    return NULL;
}

static int parse_file_option(const char *cmd, int argc, char **argv,
                             const char **file, bool *json)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        if (c == 'f')
            *file = optarg;
        else if (c == 'j' && json)
            *json = true;
        else
            return cli_option_error(cmd, c == 'j' ? '?' : c, argv);
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    return CLI_EXIT_OK;
}

int cli_cmd_status(int argc, char **argv)
{
    const char *file = NULL;
    bool as_json = false;
    int ret = parse_file_option("status", argc, argv, &file, &as_json);
    if (ret != CLI_EXIT_OK)
        return ret;

    ret = CLI_EXIT_FAIL;
    json_t *state = NULL, *out = NULL;
    char *state_path = NULL, *lock_path = NULL;
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        goto cleanup;
    state_path = cli_state_path(d);
    lock_path = cli_lock_path(d);
    state = json_load_file(state_path, 0, NULL);
    bool running = cli_supervisor_running(lock_path);
    json_int_t sup_pid =
        running ? json_integer_value(json_object_get(state, "pid")) : 0;

    out = json_pack("{s:s, s:{s:b, s:o, s:o}}", "deployment", d->name,
                    "supervisor", "running", running, "pid",
                    sup_pid ? json_integer(sup_pid) : json_null(), "status",
                    or_null(json_object_get(state, "status")));
    json_t *services = json_array();
    json_object_set_new(out, "services", services);
    bool all_ready = true;
    /* The services, then the cluster, the broker and Redis moat up runs. */
    /* Each instance of a service with several is a row of its own,
     * "catalog#2", with the service seen at that instance's address. */
    size_t nsvc = deploy_nprocs(d);
    const struct deploy_service **rows =
        moat_xcalloc(nsvc * DEPLOY_MAX_INSTANCES, sizeof(*rows));
    struct deploy_service *views =
        moat_xcalloc(nsvc * DEPLOY_MAX_INSTANCES, sizeof(*views));
    bool *builtin = moat_xcalloc(nsvc * DEPLOY_MAX_INSTANCES, sizeof(bool));
    size_t nrows = 0;
    for (size_t i = 0; i < nsvc; i++) {
        const struct deploy_service *s0 = deploy_proc(d, i);
        for (size_t k = 0; k < (s0->ninstances ? s0->ninstances : 1); k++) {
            struct deploy_service *v = &views[nrows];
            *v = *s0;
            if (s0->ninstances > 1) {
                v->listen = s0->inst[k].listen;
                memcpy(v->host, s0->inst[k].host, sizeof(v->host));
                v->port = s0->inst[k].port;
            }
            v->ninstances = k; /* here: which instance */
            builtin[nrows] = i >= d->nservices;
            rows[nrows++] = v;
        }
    }
    for (size_t i = 0; i < nrows; i++) {
        const struct deploy_service *svc = rows[i];
        json_t *st = state_service(state, svc->name, svc->ninstances);
        struct health h;
        check_health(d, svc, &h);
        all_ready = all_ready && strcmp(h.word, "ready") == 0;
        /* Pids of a supervisor that is gone are stale; do not show them. */
        json_int_t pid =
            running ? json_integer_value(json_object_get(st, "pid")) : 0;
        json_array_append_new(
            services,
            json_pack(
                "{s:s, s:o, s:s, s:i, s:s, s:o, s:o, s:s, s:o, s:I, "
                "s:s, s:I, s:o}",
                "name",
                json_string_value(json_object_get(st, "label")) ?: svc->name,
                "pid", pid ? json_integer(pid) : json_null(), "listen",
                svc->listen, "port", (int)svc->port, "health", h.word,
                "healthz", h.healthz ? json_integer(h.healthz) : json_null(),
                "readyz", h.readyz ? json_integer(h.readyz) : json_null(),
                "engine", deploy_engine_name(svc->engine), "db",
                svc->db ? json_string(svc->db) : json_null(), "db_bytes",
                (json_int_t)cli_db_size(svc->db), "data_dir", svc->data_dir,
                "restarts", json_integer_value(json_object_get(st, "restarts")),
                "status", or_null(json_object_get(st, "status"))));
        json_t *dsn = json_object_get(st, "dsn");
        if (dsn)
            json_object_set(
                json_array_get(services, json_array_size(services) - 1), "dsn",
                dsn);
        if (h.healthz == 200 && !builtin[i]) {
            json_t *ev = events_of(d, svc);
            if (ev)
                json_object_set_new(
                    json_array_get(services, json_array_size(services) - 1),
                    "events", ev);
        }
    }
    json_object_set_new(out, "ready", json_boolean(all_ready));

    if (as_json) {
        char *text = json_dumps(out, JSON_INDENT(2));
        puts(text);
        free(text);
    } else {
        char rel[4096];
        if (running)
            printf("deployment \"%s\": supervisor pid %lld, %s\n", d->name,
                   (long long)sup_pid,
                   json_is_string(json_object_get(state, "status"))
                       ? json_string_value(json_object_get(state, "status"))
                       : "running");
        else
            printf("deployment \"%s\": no supervisor running (start it with "
                   "'moat up')\n",
                   d->name);
        printf("%-16s %-8s %-6s %-10s %-8s %-32s %-8s %s\n", "SERVICE", "PID",
               "PORT", "HEALTH", "ENGINE", "DB", "SIZE", "RESTARTS");
        size_t i;
        json_t *s;
        json_array_foreach(services, i, s)
        {
            const struct deploy_service *svc = rows[i];
            json_int_t pid = json_integer_value(json_object_get(s, "pid"));
            char pidtxt[24] = "-";
            if (pid)
                snprintf(pidtxt, sizeof(pidtxt), "%lld", (long long)pid);
            char size[16] = "-";
            /* A PostgreSQL service's database: its name on the server. */
            char pg_db[DEPLOY_NAME_MAX + 16] = "-";
            if (svc->engine == DEPLOY_ENGINE_POSTGRES) {
                char *id = cli_pg_ident(svc->name);
                snprintf(pg_db, sizeof(pg_db), "%s%s", svc->dsn ? "" : id,
                         svc->dsn ? "(dsn)" : "@postgres");
                free(id);
            }
            if (svc->db)
                cli_human_size(cli_db_size(svc->db), size, sizeof(size));
            printf(
                "%-16s %-8s %-6u %-10s %-8s %-32s %-8s %lld\n",
                json_string_value(json_object_get(s, "name")), pidtxt,
                (unsigned)svc->port,
                json_string_value(json_object_get(s, "health")),
                deploy_engine_name(svc->engine),
                svc->db ? cli_display_path(svc->db, rel, sizeof(rel))
                : svc->engine == DEPLOY_ENGINE_POSTGRES ? pg_db
                                                        : "-",
                size,
                (long long)json_integer_value(json_object_get(s, "restarts")));
        }
        print_events(services);
    }
    free(rows);
    free(views);
    free(builtin);
    ret = all_ready ? CLI_EXIT_OK : CLI_EXIT_FAIL;

cleanup:
    json_decref(out);
    json_decref(state);
    free(state_path);
    free(lock_path);
    deploy_free(d);
    return ret;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

int cli_cmd_down(int argc, char **argv)
{
    const char *file = NULL;
    int ret = parse_file_option("down", argc, argv, &file, NULL);
    if (ret != CLI_EXIT_OK)
        return ret;

    ret = CLI_EXIT_FAIL;
    json_t *state = NULL;
    char *state_path = NULL, *lock_path = NULL;
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        goto cleanup;
    state_path = cli_state_path(d);
    lock_path = cli_lock_path(d);

    /* The lock, not the pid, says whether a supervisor runs: a pid in an
     * old state file may belong to an unrelated process by now. */
    if (!cli_supervisor_running(lock_path)) {
        printf("moat: no supervisor is running for deployment \"%s\"\n",
               d->name);
        ret = CLI_EXIT_OK;
        goto cleanup;
    }
    json_error_t jerr;
    state = json_load_file(state_path, 0, &jerr);
    json_int_t pid = json_integer_value(json_object_get(state, "pid"));
    if (pid <= 1) {
        cli_error("a supervisor holds %s but %s has no pid: %s", lock_path,
                  state_path, state ? "field \"pid\" missing" : jerr.text);
        goto cleanup;
    }
    json_int_t bound =
        json_integer_value(json_object_get(state, "stop_timeout_ms"));
    uint64_t wait_ms =
        (bound > 0 ? (uint64_t)bound : DOWN_DEFAULT_WAIT_MS) + DOWN_GRACE_MS;

    if (kill((pid_t)pid, SIGTERM) < 0) {
        cli_error("cannot signal supervisor pid %lld: %s", (long long)pid,
                  strerror(errno));
        goto cleanup;
    }
    printf("moat: stopping supervisor pid %lld of deployment \"%s\"...\n",
           (long long)pid, d->name);
    fflush(stdout);
    uint64_t start = moat_mono_ms();
    while (cli_supervisor_running(lock_path)) {
        if (moat_mono_ms() - start >= wait_ms) {
            cli_error("supervisor pid %lld still running after %.1f s; see "
                      "'moat logs moat'",
                      (long long)pid, (double)wait_ms / 1000.0);
            goto cleanup;
        }
        sleep_ms(DOWN_POLL_MS);
    }
    printf("moat: stopped after %.1f s\n",
           (double)(moat_mono_ms() - start) / 1000.0);
    ret = CLI_EXIT_OK;

cleanup:
    json_decref(state);
    free(state_path);
    free(lock_path);
    deploy_free(d);
    return ret;
}
