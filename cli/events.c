/*
 * events.c - `moat events status|dead-letters|redrive|replay` (see
 * events.h): the consumers' admin routes (GET /v1/admin/consumer, GET
 * /v1/admin/dead-letters, POST /v1/admin/dead-letters/redrive, POST
 * /v1/admin/replay) called as the operator, and their answers printed for
 * people (or passed through with --json).
 *
 * Which services consume events is not in the deployment file: status asks
 * every service with a database, and one that answers 404 has no consumer.
 */
#include "moat/common.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moat/buf.h"

#include "cli.h"
#include "events.h"

#define STATUS_TIMEOUT_MS   3000
#define ADMIN_TIMEOUT_MS    30000
#define VERIFY_TIMEOUT_MS   (10L * 60 * 1000) /* a rebuild reads it all */
#define REPLAY_DEFAULT_WAIT 600               /* seconds */
#define REPLAY_POLL_MS      250
#define RESPONSE_MAX        (16u << 20)
#define DEAD_LIST_MAX       1000
#define ERROR_COLUMN_MAX    60

/* ---- HTTP as the operator ---- */

struct reply {
    long status;  /* 0 when the service did not answer */
    json_t *body; /* parsed JSON body, NULL when none */
    char err[64]; /* why there is no answer */
};

/*
 * method path_query on svc as the operator (cli_operator_call prints why
 * a call got no answer). Fills r in every case; r->status 0 = no answer.
 */
static void call(const struct deploy *d, const struct deploy_service *svc,
                 const char *method, const char *path_query, long timeout_ms,
                 struct reply *r)
{
    char *body = NULL;
    memset(r, 0, sizeof(*r));
    int rc = cli_operator_call(d, svc, method, path_query, NULL, timeout_ms,
                               &r->status, &body);
    if (rc == MOAT_OK)
        r->body = json_loads(body ? body : "", 0, NULL);
    else
        snprintf(r->err, sizeof(r->err), "%s",
                 rc == MOAT_ETIMEDOUT ? "timed out"
                 : rc == MOAT_EINVAL  ? "no operator key"
                                      : "no answer");
    free(body);
}

static void reply_release(struct reply *r)
{
    json_decref(r->body);
    r->body = NULL;
}

/* "detail" of a problem body, or the status phrase. */
static const char *problem_detail(const struct reply *r)
{
    const char *d = json_string_value(json_object_get(r->body, "detail"));
    return d ? d : "no details";
}

/* Report a call that did not get 2xx; returns CLI_EXIT_FAIL. */
static int call_failed(const struct deploy_service *svc, const char *what,
                       const struct reply *r)
{
    if (r->status == 0)
        cli_error("%s: cannot reach %s at %s:%u (%s)", svc->name, what,
                  deploy_connect_host(svc), (unsigned)svc->port, r->err);
    else if (r->status == 401)
        cli_error("%s: the service refused the operator's token (%s); was "
                  "it started by this deployment's 'moat up'?",
                  svc->name, problem_detail(r));
    else if (r->status == 404)
        cli_error("%s: has no event consumer", svc->name);
    else
        cli_error("%s: %s answered %ld: %s", svc->name, what, r->status,
                  problem_detail(r));
    return CLI_EXIT_FAIL;
}

/* Percent-encode s for a query value. Caller frees. */
static char *query_escape(const char *s)
{
    struct moat_buf b = MOAT_BUF_INIT;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
            (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
            *p == '~')
            moat_buf_addch(&b, (char)*p);
        else
            moat_buf_printf(&b, "%%%02X", *p);
    }
    return moat_buf_detach(&b, NULL);
}

/* Append "&name=value" (or "?name=value" first) when value is set. */
static void add_query(struct moat_buf *q, const char *name, const char *value)
{
    if (!value)
        return;
    char *v = query_escape(value);
    moat_buf_printf(q, "%c%s=%s", strchr(moat_buf_str(q), '?') ? '&' : '?',
                    name, v);
    free(v);
}

static void print_json(json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2));
    if (text)
        puts(text);
    free(text);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static json_int_t jint(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static const char *jstr(json_t *o, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : def;
}

/* ---- options shared by the subcommands ---- */

struct opts {
    const char *file;
    const char *service;
    const char *source;
    const char *subject;
    int64_t limit;
    int64_t timeout_s;
    bool json;
    bool verify;
};

enum opt_flags {
    O_SERVICE = 1 << 0, /* takes SERVICE */
    O_FILTER = 1 << 1,  /* --source, --subject */
    O_LIMIT = 1 << 2,
    O_JSON = 1 << 3,
    O_VERIFY = 1 << 4, /* --verify, --timeout */
};

static int parse_opts(const char *cmd, unsigned allowed, int argc, char **argv,
                      struct opts *o)
{
    static const struct option longopts[] = {
        {"file", required_argument, NULL, 'f'},
        {"source", required_argument, NULL, 's'},
        {"subject", required_argument, NULL, 'S'},
        {"limit", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"verify", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:", longopts, NULL)) != -1) {
        unsigned need = c == 's' || c == 'S'   ? O_FILTER
                        : c == 'n'             ? O_LIMIT
                        : c == 'j'             ? O_JSON
                        : c == 'v' || c == 't' ? O_VERIFY
                                               : 0;
        if (need && !(allowed & need)) {
            const char *name = "?";
            for (const struct option *lo = longopts; lo->name; lo++)
                if (lo->val == c)
                    name = lo->name;
            return cli_usage_error(
                cmd, "option '--%s' does not apply to 'moat %s'", name, cmd);
        }
        switch (c) {
        case 'f':
            o->file = optarg;
            break;
        case 's':
            o->source = optarg;
            break;
        case 'S':
            o->subject = optarg;
            break;
        case 'n':
            if (moat_parse_i64(optarg, 1, DEAD_LIST_MAX, &o->limit) != MOAT_OK)
                return cli_usage_error(cmd, "--limit needs 1..%d, got '%s'",
                                       DEAD_LIST_MAX, optarg);
            break;
        case 't':
            if (moat_parse_i64(optarg, 1, 86400, &o->timeout_s) != MOAT_OK)
                return cli_usage_error(cmd,
                                       "--timeout needs seconds (1..86400), "
                                       "got '%s'",
                                       optarg);
            break;
        case 'j':
            o->json = true;
            break;
        case 'v':
            o->verify = true;
            break;
        default:
            return cli_option_error(cmd, c, argv);
        }
    }
    if (allowed & O_SERVICE) {
        if (optind >= argc)
            return cli_usage_error(cmd, "which service? (moat %s SERVICE)",
                                   cmd);
        o->service = argv[optind++];
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    return CLI_EXIT_OK;
}

/* The deployment's service called name, or NULL after saying so. */
static const struct deploy_service *find_service(const struct deploy *d,
                                                 const char *name)
{
    const struct deploy_service *s = deploy_find(d, name);
    if (s)
        return s;
    fprintf(stderr,
            "error: no service '%s' in deployment \"%s\"; services:", name,
            d->name);
    for (size_t i = 0; i < d->nservices; i++)
        fprintf(stderr, " %s", d->services[i].name);
    fputc('\n', stderr);
    return NULL;
}

/* ---- status ---- */

static void print_sources_header(void)
{
    printf("%-12s %-12s %-10s %-10s %-8s %-8s %-9s %-7s %-7s %s\n", "SERVICE",
           "SOURCE", "CURSOR", "HEAD", "LAG", "LAG_S", "STATE", "FAILED",
           "BLOCKED", "ERROR");
}

/* One line per source of a consumer; returns false when it needs care. */
static bool print_sources(const char *service, json_t *status)
{
    bool healthy = true;
    size_t i;
    json_t *src;
    json_array_foreach(json_object_get(status, "sources"), i, src)
    {
        json_t *dead = json_object_get(src, "dead_letters");
        json_t *head = json_object_get(src, "head");
        char headtxt[24] = "?";
        if (json_is_integer(head))
            snprintf(headtxt, sizeof(headtxt), "%lld",
                     (long long)json_integer_value(head));
        const char *state = jstr(src, "state", "?");
        json_int_t failed = jint(dead, "failed"),
                   blocked = jint(dead, "blocked");
        if (failed || blocked || strcmp(state, "backoff") == 0)
            healthy = false;
        printf("%-12s %-12s %-10lld %-10s %-8lld %-8.1f %-9s %-7lld %-7lld "
               "%.*s\n",
               service, jstr(src, "source", "?"),
               (long long)jint(src, "cursor"), headtxt,
               (long long)jint(src, "lag_events"),
               json_number_value(json_object_get(src, "lag_seconds")), state,
               (long long)failed, (long long)blocked, ERROR_COLUMN_MAX,
               jstr(src, "error", ""));
    }
    if (json_is_true(json_object_get(status, "verifying")))
        printf("%-12s (a replay verification is running)\n", service);
    return healthy;
}

static int cmd_status(int argc, char **argv)
{
    struct opts o = {0};
    int ret = parse_opts("events status", O_JSON, argc, argv, &o);
    if (ret != CLI_EXIT_OK)
        return ret;
    struct deploy *d = cli_load_deploy(o.file);
    if (!d)
        return CLI_EXIT_FAIL;

    json_t *all = json_array();
    bool healthy = true;
    size_t consumers = 0;
    if (!o.json)
        print_sources_header();
    for (size_t i = 0; i < d->nservices; i++) {
        const struct deploy_service *svc = &d->services[i];
        /* Only a service with a database can keep a cursor. */
        if (svc->engine == DEPLOY_ENGINE_NONE)
            continue;
        struct reply r;
        call(d, svc, "GET", "/v1/admin/consumer", STATUS_TIMEOUT_MS, &r);
        if (r.status == 404) {
            reply_release(&r);
            continue;
        }
        consumers++;
        if (r.status != 200) {
            healthy = false;
            const char *why = r.status ? problem_detail(&r) : r.err;
            if (o.json)
                json_array_append_new(all, json_pack("{s:s, s:n, s:s}",
                                                     "service", svc->name,
                                                     "consumer", "error", why));
            else
                printf("%-12s %-12s (%s)\n", svc->name, "-",
                       r.status ? why : "down");
            reply_release(&r);
            continue;
        }
        if (o.json)
            json_array_append_new(all, json_pack("{s:s, s:O, s:n}", "service",
                                                 svc->name, "consumer", r.body,
                                                 "error"));
        else if (!print_sources(svc->name, r.body))
            healthy = false;
        else if (json_array_size(json_object_get(r.body, "sources")) == 0)
            printf("%-12s (no subscriptions)\n", svc->name);
        reply_release(&r);
    }
    if (o.json) {
        json_t *out = json_pack("{s:s, s:o, s:b}", "deployment", d->name,
                                "consumers", all, "healthy", healthy);
        print_json(out);
        json_decref(out);
    } else {
        json_decref(all);
        if (consumers == 0)
            printf("(no service of deployment \"%s\" consumes events, or none "
                   "is running)\n",
                   d->name);
    }
    deploy_free(d);
    return healthy ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

/* ---- dead-letters ---- */

static int cmd_dead_letters(int argc, char **argv)
{
    struct opts o = {0};
    int ret =
        parse_opts("events dead-letters",
                   O_SERVICE | O_FILTER | O_LIMIT | O_JSON, argc, argv, &o);
    if (ret != CLI_EXIT_OK)
        return ret;
    ret = CLI_EXIT_FAIL;
    struct moat_buf path = MOAT_BUF_INIT;
    struct reply r = {0};
    struct deploy *d = cli_load_deploy(o.file);
    if (!d)
        goto cleanup;
    const struct deploy_service *svc = find_service(d, o.service);
    if (!svc) {
        ret = CLI_EXIT_USAGE;
        goto cleanup;
    }
    moat_buf_addstr(&path, "/v1/admin/dead-letters");
    add_query(&path, "source", o.source);
    add_query(&path, "subject", o.subject);
    if (o.limit) {
        char n[24];
        snprintf(n, sizeof(n), "%lld", (long long)o.limit);
        add_query(&path, "limit", n);
    }
    call(d, svc, "GET", moat_buf_str(&path), ADMIN_TIMEOUT_MS, &r);
    if (r.status != 200) {
        ret = call_failed(svc, "the dead letters", &r);
        goto cleanup;
    }
    if (o.json) {
        print_json(r.body);
        ret = CLI_EXIT_OK;
        goto cleanup;
    }
    json_t *list = json_object_get(r.body, "dead_letters");
    if (json_array_size(list) == 0) {
        printf("%s: no dead letters\n", svc->name);
        ret = CLI_EXIT_OK;
        goto cleanup;
    }
    printf("%-10s %-8s %-32s %-16s %-8s %-3s %-25s %s\n", "SOURCE", "SEQ",
           "SUBJECT", "TYPE", "STATE", "TRY", "PARKED_AT", "ERROR");
    size_t i;
    json_t *dl;
    json_array_foreach(list, i, dl)
    {
        printf("%-10s %-8lld %-32s %-16s %-8s %-3lld %-25s %s\n",
               jstr(dl, "source", "?"), (long long)jint(dl, "seq"),
               jstr(dl, "subject", "?"), jstr(dl, "type", "?"),
               jstr(dl, "state", "?"), (long long)jint(dl, "attempts"),
               jstr(dl, "parked_at", "?"), jstr(dl, "error", ""));
    }
    json_int_t total = jint(r.body, "total");
    if ((size_t)total > json_array_size(list))
        printf("(%zu of %lld shown; --limit for more)\n", json_array_size(list),
               (long long)total);
    printf("redrive with: moat events redrive %s [--source S] [--subject X]\n",
           svc->name);
    ret = CLI_EXIT_OK;

cleanup:
    reply_release(&r);
    moat_buf_release(&path);
    deploy_free(d);
    return ret;
}

/* ---- redrive ---- */

static int cmd_redrive(int argc, char **argv)
{
    struct opts o = {0};
    int ret = parse_opts("events redrive", O_SERVICE | O_FILTER | O_JSON, argc,
                         argv, &o);
    if (ret != CLI_EXIT_OK)
        return ret;
    ret = CLI_EXIT_FAIL;
    struct moat_buf path = MOAT_BUF_INIT;
    struct reply r = {0};
    struct deploy *d = cli_load_deploy(o.file);
    if (!d)
        goto cleanup;
    const struct deploy_service *svc = find_service(d, o.service);
    if (!svc) {
        ret = CLI_EXIT_USAGE;
        goto cleanup;
    }
    moat_buf_addstr(&path, "/v1/admin/dead-letters/redrive");
    add_query(&path, "source", o.source);
    add_query(&path, "subject", o.subject);
    call(d, svc, "POST", moat_buf_str(&path), VERIFY_TIMEOUT_MS, &r);
    if (r.status != 200) {
        ret = call_failed(svc, "the redrive", &r);
        goto cleanup;
    }
    json_t *failed = json_object_get(r.body, "failed");
    if (o.json) {
        print_json(r.body);
    } else {
        printf("%s: %lld event(s) applied, %lld still parked\n", svc->name,
               (long long)jint(r.body, "applied"),
               (long long)jint(r.body, "remaining"));
        size_t i;
        json_t *f;
        json_array_foreach(failed, i, f)
        {
            printf("  failed again: %s %s seq %lld: %s\n",
                   jstr(f, "source", "?"), jstr(f, "subject", "?"),
                   (long long)jint(f, "seq"), jstr(f, "error", ""));
        }
    }
    ret = json_array_size(failed) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;

cleanup:
    reply_release(&r);
    moat_buf_release(&path);
    deploy_free(d);
    return ret;
}

/* ---- replay ---- */

static int replay_verify(const struct deploy *d,
                         const struct deploy_service *svc, bool as_json)
{
    struct reply r;
    call(d, svc, "POST", "/v1/admin/replay?verify=1", VERIFY_TIMEOUT_MS, &r);
    if (r.status != 200) {
        int ret = call_failed(svc, "the replay verification", &r);
        reply_release(&r);
        return ret;
    }
    bool identical = json_is_true(json_object_get(r.body, "identical"));
    if (as_json) {
        print_json(r.body);
    } else {
        struct moat_buf at = MOAT_BUF_INIT;
        const char *name;
        json_t *seq;
        json_object_foreach(json_object_get(r.body, "sources"), name, seq)
        {
            moat_buf_printf(&at, "%s%s at %lld", at.len ? ", " : "", name,
                            (long long)json_integer_value(seq));
        }
        printf("%s: rebuilt the view from %lld events (%s)\n", svc->name,
               (long long)jint(r.body, "events"), moat_buf_str(&at));
        moat_buf_release(&at);
        if (identical) {
            printf("identical\n");
        } else {
            printf("differences:\n");
            size_t i;
            json_t *diff;
            json_array_foreach(json_object_get(r.body, "differences"), i, diff)
            {
                printf("  - %s\n", json_string_value(diff)
                                       ? json_string_value(diff)
                                       : "(not a string)");
            }
        }
    }
    reply_release(&r);
    return identical ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

/* True once every source has caught up with a known head. */
static bool replay_done(json_t *status)
{
    if (json_is_true(json_object_get(status, "paused")))
        return false;
    size_t i;
    json_t *src;
    json_array_foreach(json_object_get(status, "sources"), i, src)
    {
        if (!json_is_integer(json_object_get(src, "head")) ||
            jint(src, "lag_events") > 0)
            return false;
    }
    return true;
}

static int replay_full(const struct deploy *d, const struct deploy_service *svc,
                       int64_t timeout_s)
{
    struct reply r;
    call(d, svc, "POST", "/v1/admin/replay", ADMIN_TIMEOUT_MS, &r);
    if (r.status != 202 && r.status != 200) {
        int ret = call_failed(svc, "the replay", &r);
        reply_release(&r);
        return ret;
    }
    reply_release(&r);
    printf("%s: view reset; re-applying every event from sequence 0...\n",
           svc->name);
    fflush(stdout);
    uint64_t start = moat_mono_ms();
    uint64_t deadline = start + (uint64_t)timeout_s * 1000;
    for (;;) {
        sleep_ms(REPLAY_POLL_MS);
        call(d, svc, "GET", "/v1/admin/consumer", STATUS_TIMEOUT_MS, &r);
        if (r.status == 200 && replay_done(r.body)) {
            printf("%s: replayed in %.1f s:\n", svc->name,
                   (double)(moat_mono_ms() - start) / 1000.0);
            print_sources_header();
            print_sources(svc->name, r.body);
            reply_release(&r);
            return CLI_EXIT_OK;
        }
        reply_release(&r);
        if (moat_mono_ms() >= deadline) {
            cli_error("%s: the replay has not caught up after %lld s; it goes "
                      "on (see 'moat events status')",
                      svc->name, (long long)timeout_s);
            return CLI_EXIT_FAIL;
        }
    }
}

static int cmd_replay(int argc, char **argv)
{
    struct opts o = {.timeout_s = REPLAY_DEFAULT_WAIT};
    int ret = parse_opts("events replay", O_SERVICE | O_VERIFY | O_JSON, argc,
                         argv, &o);
    if (ret != CLI_EXIT_OK)
        return ret;
    struct deploy *d = cli_load_deploy(o.file);
    if (!d)
        return CLI_EXIT_FAIL;
    const struct deploy_service *svc = find_service(d, o.service);
    if (!svc)
        ret = CLI_EXIT_USAGE;
    else if (o.verify)
        ret = replay_verify(d, svc, o.json);
    else
        ret = replay_full(d, svc, o.timeout_s);
    deploy_free(d);
    return ret;
}

int cli_cmd_events(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } subs[] = {
        {"status", cmd_status},
        {"dead-letters", cmd_dead_letters},
        {"redrive", cmd_redrive},
        {"replay", cmd_replay},
    };
    if (argc < 2)
        return cli_usage_error("events", "which one? (moat events status | "
                                         "dead-letters | redrive | replay)");
    for (size_t i = 0; i < MOAT_ARRAY_LEN(subs); i++)
        if (strcmp(argv[1], subs[i].name) == 0)
            return subs[i].fn(argc - 1, argv + 1);
    return cli_usage_error("events", "unknown subcommand '%s'", argv[1]);
}
