/*
 * chaos.c - `moat chaos`: a drill against a running deployment.
 *
 * For --duration seconds it places orders through the gateway at --rate
 * per second (as drill customers, shop.h), while every --kill-interval-ms
 * (drawn from [0.5, 1.5] times it) it picks a random ready service from
 * the supervisor's state file and either SIGKILLs it (the supervisor
 * restarts it) or SIGSTOPs it for 0.3 to 3 s and SIGCONTs it. The payment
 * provider is spared unless --include-provider: it stands for the outside
 * world, and its outages are drilled through its own /_control. With
 * --include-infra every third fault SIGKILLs one of the servers moat up
 * runs beside the services (the nats-server broker, PostgreSQL, Redis), in
 * turn: the supervisor restarts it and the services must ride it out.
 *
 * An order whose POST got no definite answer (no answer, 502/503/504, 409
 * "in progress", 429) is sent again with the same Idempotency-Key and
 * body, as a real client would, so a POST that did create the order is
 * answered with that order rather than placing a second one.
 *
 * Then it settles: every paused service is resumed, retries finish, and
 * it waits (at most --settle seconds) until orders has no pending order
 * and every consumer has caught up with its sources. Last, it runs the
 * audit (audit.c) and exits with its status: 0 clean, 1 violations, 2 a
 * service unreachable.
 *
 * The supervisor is found through its state file (cli.h), like `moat
 * status` does; chaos never signals the supervisor itself.
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

#include "moat/buf.h"

#include "cli.h"
#include "drill.h"
#include "fetch.h"
#include "shop.h"

#define ORDER_TIMEOUT_MS 5000
#define RETRY_DELAY_MS   400
#define MAX_ORDER_TRIES  40 /* ~16 s of retries for one order */
#define PAUSE_MIN_MS     300
#define PAUSE_MAX_MS     3000
#define SETTLE_POLL_MS   500
#define DRAIN_MAX_MS     30000 /* retries still running after the chaos */
#define CUSTOMERS        20
#define MAX_STOPPED      16
#define DECLINE_SHARE    0.05
#define CHAOS_PARALLEL   64

struct attempt {
    struct chaos *c;
    char *key;  /* Idempotency-Key */
    char *body; /* the order */
    size_t customer;
    unsigned tries;
    uint64_t due; /* monotonic ms of the next try, when waiting */
    struct attempt *next;
};

struct stopped {
    pid_t pid;
    char name[DEPLOY_NAME_MAX + 1];
    uint64_t resume_at;
};

struct chaos {
    const struct deploy *d;
    struct shop shop;
    struct cli_fetcher *f;
    struct cli_optokens *tok;
    const struct deploy_service *orders;
    const struct deploy_service *provider; /* spared, or NULL */
    bool include_provider;
    bool include_infra;      /* the broker, PostgreSQL and Redis too */
    bool cancelling;         /* the fetcher is being freed */
    struct attempt *waiting; /* retries not yet due */
    struct stopped stopped[MAX_STOPPED];
    size_t nstopped;
    json_t *accepted_ids; /* order id -> true */
    unsigned long placed, accepted, replayed, rejected, gave_up, retries;
    unsigned long kills, pauses;
    unsigned long strikes;    /* faults attempted */
    unsigned long next_infra; /* the built-in server struck next */
    json_t *per_service;      /* name -> {"kill": n, "stop": n} */
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    MOAT_UNUSED(sig);
    interrupted = 1;
}

static void attempt_free(struct attempt *a)
{
    free(a->key);
    free(a->body);
    free(a);
}

static void send_attempt(struct chaos *c, struct attempt *a);

static void on_order(const struct cli_fetch_result *r, void *arg)
{
    struct attempt *a = arg;
    struct chaos *c = a->c;
    if (c->cancelling) {
        attempt_free(a);
        return;
    }
    bool again = r->err != MOAT_OK || r->status == 409 || r->status == 429 ||
                 r->status == 502 || r->status == 503 || r->status == 504;
    if (r->status == 201) {
        c->accepted++;
        json_t *o = json_loadb(r->body, r->body_len, 0, NULL);
        const char *id = json_string_value(json_object_get(o, "id"));
        if (id) {
            if (json_object_get(c->accepted_ids, id))
                c->replayed++; /* a retry answered with the same order */
            json_object_set_new(c->accepted_ids, id, json_true());
        }
        json_decref(o);
        attempt_free(a);
        return;
    }
    if (again && a->tries < MAX_ORDER_TRIES) {
        c->retries++;
        a->due = moat_mono_ms() + RETRY_DELAY_MS;
        a->next = c->waiting;
        c->waiting = a;
        return;
    }
    if (again)
        c->gave_up++;
    else
        c->rejected++;
    if (!again && c->rejected <= 5)
        fprintf(stderr, "moat chaos: order refused with HTTP %ld: %.200s\n",
                r->status, r->body);
    attempt_free(a);
}

static void send_attempt(struct chaos *c, struct attempt *a)
{
    a->tries++;
    const struct shop_customer *cu = &c->shop.customers[a->customer];
    char *key = moat_xasprintf("Idempotency-Key: %s", a->key);
    const char *hdrs[] = {cu->auth, key, NULL};
    char *url = moat_xasprintf("%s/api/v1/orders", c->shop.gw_url);
    cli_fetch(c->f, "POST", url, hdrs, a->body, ORDER_TIMEOUT_MS, on_order, a);
    free(url);
    free(key);
}

static void place(struct chaos *c, const char *run_id)
{
    struct attempt *a = moat_xcalloc(1, sizeof(*a));
    a->c = c;
    a->key = moat_xasprintf("chaos-%s-%lu", run_id, c->placed);
    a->body = shop_order_body(&c->shop, DECLINE_SHARE);
    a->customer = (size_t)shop_rand(&c->shop, c->shop.ncustomers);
    c->placed++;
    send_attempt(c, a);
}

static void send_due(struct chaos *c, uint64_t now)
{
    struct attempt **pp = &c->waiting;
    while (*pp) {
        struct attempt *a = *pp;
        if (a->due <= now) {
            *pp = a->next;
            a->next = NULL;
            send_attempt(c, a);
        } else {
            pp = &a->next;
        }
    }
}

/* ---- faults ---- */

static void count_fault(struct chaos *c, const char *name, const char *what)
{
    json_t *s = json_object_get(c->per_service, name);
    if (!s) {
        s = json_object();
        json_object_set_new(c->per_service, name, s);
    }
    json_object_set_new(
        s, what,
        json_integer(json_integer_value(json_object_get(s, what)) + 1));
}

static bool is_stopped(const struct chaos *c, const char *name)
{
    for (size_t i = 0; i < c->nstopped; i++)
        if (strcmp(c->stopped[i].name, name) == 0)
            return true;
    return false;
}

static void resume_due(struct chaos *c, uint64_t now, bool all)
{
    for (size_t i = 0; i < c->nstopped;) {
        struct stopped *s = &c->stopped[i];
        if (all || now >= s->resume_at) {
            kill(s->pid, SIGCONT);
            c->stopped[i] = c->stopped[--c->nstopped];
        } else {
            i++;
        }
    }
}

static void strike(struct chaos *c)
{
    json_t *st = cli_running_state(c->d);
    if (!st)
        return;
    const struct deploy_service *pick[DEPLOY_MAX_SERVICES + 8];
    pid_t pids[DEPLOY_MAX_SERVICES + 8];
    bool is_infra[DEPLOY_MAX_SERVICES + 8];
    size_t n = 0, nsvc = c->d->nservices;
    size_t ninfra = c->include_infra ? deploy_nbuiltin(c->d) : 0;
    for (size_t i = 0; i < nsvc + ninfra && n < MOAT_ARRAY_LEN(pick); i++) {
        const struct deploy_service *svc =
            i < nsvc ? &c->d->services[i] : deploy_builtin(c->d, i - nsvc);
        const char *status = NULL;
        pid_t pid = cli_state_pid(st, svc->name, &status);
        if (pid <= 1 || !status || strcmp(status, "ready") != 0)
            continue;
        if (svc == c->provider && !c->include_provider)
            continue;
        if (is_stopped(c, svc->name))
            continue;
        pick[n] = svc;
        is_infra[n] = i >= nsvc;
        pids[n++] = pid;
    }
    json_decref(st);
    /* With --include-infra every third fault SIGKILLs a built-in server,
     * each in turn, so that every one of them is struck in a drill; the
     * others go to the services. */
    size_t ninf = 0, nplain = 0;
    for (size_t i = 0; i < n; i++)
        ninf += is_infra[i];
    nplain = n - ninf;
    bool want_infra = ninf && (++c->strikes % 3 == 0 || nplain == 0);
    if (n == 0 || (!want_infra && nplain == 0))
        return;
    size_t r = want_infra ? (size_t)(c->next_infra++ % ninf)
                          : (size_t)shop_rand(&c->shop, nplain);
    size_t k = 0;
    for (; k < n; k++)
        if (is_infra[k] == want_infra && r-- == 0)
            break;
    bool pause = !is_infra[k] && shop_rand(&c->shop, 10) < 4 &&
                 c->nstopped < MAX_STOPPED;
    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    if (pause) {
        unsigned ms = PAUSE_MIN_MS + (unsigned)shop_rand(
                                         &c->shop, PAUSE_MAX_MS - PAUSE_MIN_MS);
        if (kill(pids[k], SIGSTOP) < 0)
            return;
        struct stopped *s = &c->stopped[c->nstopped++];
        s->pid = pids[k];
        snprintf(s->name, sizeof(s->name), "%s", pick[k]->name);
        s->resume_at = moat_mono_ms() + ms;
        c->pauses++;
        count_fault(c, pick[k]->name, "stop");
        printf("%s chaos: SIGSTOP %s (pid %d) for %u ms\n", ts, pick[k]->name,
               (int)pids[k], ms);
    } else {
        if (kill(pids[k], SIGKILL) < 0)
            return;
        c->kills++;
        count_fault(c, pick[k]->name, "kill");
        printf("%s chaos: SIGKILL %s (pid %d)\n", ts, pick[k]->name,
               (int)pids[k]);
    }
    fflush(stdout);
}

/* ---- settling ---- */

/* A blocking GET as the operator; the parsed body or NULL. */
static json_t *op_get(struct chaos *c, const struct deploy_service *svc,
                      const char *path, long *status)
{
    const char *auth = cli_optokens_get(c->tok, svc->name);
    char *base = deploy_base_url(svc);
    char *url = moat_xasprintf("%s%s", base, path);
    char *body = NULL;
    *status = 0;
    int rc = cli_http("GET", url, auth, NULL, 5000, status, &body);
    json_t *j = rc == MOAT_OK ? json_loads(body, 0, NULL) : NULL;
    free(body);
    free(url);
    free(base);
    return j;
}

/* Whether orders has no pending order. */
static bool none_pending(struct chaos *c, unsigned long *pending)
{
    long st;
    json_t *j =
        op_get(c, c->orders, "/v1/orders?status=pending&limit=500", &st);
    json_t *list = json_object_get(j, "orders");
    bool done = st == 200 && json_is_array(list) && json_array_size(list) == 0;
    *pending = json_array_size(list);
    json_decref(j);
    return done;
}

/* Whether every consumer of the deployment has caught up. */
static bool consumers_caught_up(struct chaos *c)
{
    for (size_t i = 0; i < c->d->nservices; i++) {
        const struct deploy_service *svc = &c->d->services[i];
        if (svc->engine == DEPLOY_ENGINE_NONE || svc == c->provider)
            continue;
        long st;
        json_t *j = op_get(c, svc, "/v1/admin/consumer", &st);
        bool ok = st == 404;
        if (st == 200) {
            ok = true;
            size_t k;
            json_t *src;
            json_array_foreach(json_object_get(j, "sources"), k, src)
            {
                if (json_integer_value(json_object_get(src, "lag_events")))
                    ok = false;
                /* The lag is measured against the head the consumer saw
                 * last: ask the source itself whether more follows. */
                const char *name =
                    json_string_value(json_object_get(src, "source"));
                const struct deploy_service *from =
                    name ? deploy_find(c->d, name) : NULL;
                if (!ok || !from)
                    continue;
                char *path =
                    moat_xasprintf("/v1/events?after=%lld&limit=1&wait=0",
                                   (long long)json_integer_value(
                                       json_object_get(src, "cursor")));
                long fst;
                json_t *feed = op_get(c, from, path, &fst);
                free(path);
                if (fst != 200 ||
                    json_array_size(json_object_get(feed, "events")) > 0)
                    ok = false;
                json_decref(feed);
            }
        }
        json_decref(j);
        if (!ok)
            return false;
    }
    return true;
}

/* Our accepted orders by status, from orders' list. */
static void count_ours(struct chaos *c, json_t *by_status)
{
    char *after = NULL;
    for (;;) {
        char *path =
            after ? moat_xasprintf("/v1/orders?limit=500&after=%s", after)
                  : moat_xstrdup("/v1/orders?limit=500");
        long st;
        json_t *j = op_get(c, c->orders, path, &st);
        free(path);
        size_t i;
        json_t *o;
        json_array_foreach(json_object_get(j, "orders"), i, o)
        {
            const char *id = json_string_value(json_object_get(o, "id"));
            const char *s = json_string_value(json_object_get(o, "status"));
            if (id && s && json_object_get(c->accepted_ids, id))
                json_object_set_new(
                    by_status, s,
                    json_integer(
                        json_integer_value(json_object_get(by_status, s)) + 1));
        }
        const char *next = json_string_value(json_object_get(j, "next_after"));
        free(after);
        after = next && st == 200 ? moat_xstrdup(next) : NULL;
        json_decref(j);
        if (!after)
            break;
    }
}

int cli_cmd_chaos(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"deployment", required_argument, NULL, 'f'},
        {"duration", required_argument, NULL, 'd'},
        {"rate", required_argument, NULL, 'r'},
        {"seed", required_argument, NULL, 's'},
        {"kill-interval-ms", required_argument, NULL, 'k'},
        {"settle", required_argument, NULL, 'S'},
        {"include-provider", no_argument, NULL, 'P'},
        {"include-infra", no_argument, NULL, 'I'},
        {"setup", no_argument, NULL, 'u'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    int64_t duration = 120, rate = 10, kill_ms = 1500, settle = 120;
    int64_t seed = (int64_t)(moat_wall_ms() ^ ((uint64_t)getpid() << 20));
    bool setup = false, include_provider = false, include_infra = false;
    bool as_json = false;
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        int64_t *target = NULL, lo = 0, hi = 0;
        const char *name = NULL;
        switch (ch) {
        case 'f':
            file = optarg;
            continue;
        case 'P':
            include_provider = true;
            continue;
        case 'I':
            include_infra = true;
            continue;
        case 'u':
            setup = true;
            continue;
        case 'j':
            as_json = true;
            continue;
        case 'd':
            target = &duration, lo = 1, hi = 86400, name = "--duration";
            break;
        case 'r':
            target = &rate, lo = 1, hi = 10000, name = "--rate";
            break;
        case 's':
            target = &seed, lo = 0, hi = INT64_MAX, name = "--seed";
            break;
        case 'k':
            target = &kill_ms, lo = 0, hi = 3600000,
            name = "--kill-interval-ms";
            break;
        case 'S':
            target = &settle, lo = 1, hi = 3600, name = "--settle";
            break;
        default:
            return cli_option_error("chaos", ch, argv);
        }
        if (moat_parse_i64(optarg, lo, hi, target) != MOAT_OK)
            return cli_usage_error("chaos",
                                   "%s must be an integer from %lld "
                                   "to %lld",
                                   name, (long long)lo, (long long)hi);
    }
    if (optind < argc)
        return cli_usage_error("chaos", "unexpected argument '%s'",
                               argv[optind]);

    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    struct chaos c = {.d = d,
                      .include_provider = include_provider,
                      .include_infra = include_infra};
    int ret = CLI_EXIT_FAIL;
    c.accepted_ids = json_object();
    c.per_service = json_object();
    c.tok = cli_optokens_new(d);
    c.orders = deploy_find(d, "orders");
    char *purl = NULL, *pkey = NULL;
    if (cli_provider_of(d, &purl, &pkey))
        c.provider = cli_service_at(d, purl);
    free(purl);
    free(pkey);
    if (!c.provider)
        c.provider = deploy_find(d, "payprovider");

    json_t *st = cli_running_state(d);
    json_decref(st);
    if (!st || !c.orders) {
        if (st)
            cli_error("deployment \"%s\" has no orders service", d->name);
        goto out;
    }
    if (shop_open(&c.shop, d, (uint64_t)seed) != MOAT_OK)
        goto out;
    printf("moat chaos: seed %lld, %lld s at %lld orders/s, a fault every "
           "~%lld ms%s\n",
           (long long)seed, (long long)duration, (long long)rate,
           (long long)kill_ms,
           include_infra      ? " (broker, databases and caches included)"
           : include_provider ? " (provider included)"
                              : "");
    if (shop_products(&c.shop, setup) != MOAT_OK ||
        shop_customers(&c.shop, CUSTOMERS) != MOAT_OK)
        goto out;
    c.f = cli_fetcher_new(CHAOS_PARALLEL);
    if (!c.f)
        goto out;

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    char run_id[48];
    snprintf(run_id, sizeof(run_id), "%llx-%lld",
             (unsigned long long)moat_wall_ms(), (long long)seed);
    uint64_t t0 = moat_mono_ms();
    uint64_t end = t0 + (uint64_t)duration * 1000u;
    double interval = 1000.0 / (double)rate;
    double next_send = (double)t0;
    uint64_t next_fault = kill_ms
                              ? t0 + (uint64_t)kill_ms / 2 +
                                    shop_rand(&c.shop, (uint64_t)kill_ms + 1)
                              : UINT64_MAX;
    uint64_t next_report = t0 + 10000;
    while (!interrupted) {
        uint64_t now = moat_mono_ms();
        if (now >= end)
            break;
        while ((double)now >= next_send && now < end) {
            place(&c, run_id);
            next_send += interval;
        }
        if (now >= next_fault) {
            strike(&c);
            next_fault = now + (uint64_t)kill_ms / 2 +
                         shop_rand(&c.shop, (uint64_t)kill_ms + 1);
        }
        if (now >= next_report) {
            printf("moat chaos: %.0f s: placed %lu, accepted %lu, retries "
                   "%lu, kills %lu, pauses %lu\n",
                   (double)(now - t0) / 1000.0, c.placed, c.accepted, c.retries,
                   c.kills, c.pauses);
            fflush(stdout);
            next_report += 10000;
        }
        resume_due(&c, now, false);
        send_due(&c, now);
        shop_refresh(&c.shop);
        uint64_t wake = (uint64_t)next_send;
        if (next_fault < wake)
            wake = next_fault;
        int wait = wake > now ? (int)(wake - now) : 0;
        cli_fetcher_run(c.f, wait > 50 ? 50 : wait);
    }
    resume_due(&c, 0, true);
    printf("moat chaos: faults over after %.1f s; finishing retries\n",
           (double)(moat_mono_ms() - t0) / 1000.0);
    fflush(stdout);
    uint64_t drain_end = moat_mono_ms() + DRAIN_MAX_MS;
    while ((cli_fetcher_pending(c.f) || c.waiting) &&
           moat_mono_ms() < drain_end && !interrupted) {
        send_due(&c, moat_mono_ms());
        cli_fetcher_run(c.f, 50);
    }
    while (c.waiting) {
        struct attempt *a = c.waiting;
        c.waiting = a->next;
        c.gave_up++;
        attempt_free(a);
    }

    /* Settle: no pending order, every consumer caught up. */
    uint64_t settle_start = moat_mono_ms();
    uint64_t settle_end = settle_start + (uint64_t)settle * 1000u;
    bool settled = false;
    unsigned long pending = 0;
    while (moat_mono_ms() < settle_end && !interrupted) {
        if (none_pending(&c, &pending) && consumers_caught_up(&c)) {
            settled = true;
            break;
        }
        struct timespec ts = {0, SETTLE_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    json_t *by_status = json_object();
    count_ours(&c, by_status);
    if (as_json) {
        json_t *out = json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:I, s:I, s:o, s:b, "
            "s:f}",
            "seed", (json_int_t)seed, "placed", (json_int_t)c.placed,
            "accepted", (json_int_t)json_object_size(c.accepted_ids),
            "replayed", (json_int_t)c.replayed, "rejected",
            (json_int_t)c.rejected, "gave_up", (json_int_t)c.gave_up, "retries",
            (json_int_t)c.retries, "by_status", json_incref(by_status), "kills",
            (json_int_t)c.kills, "pauses", (json_int_t)c.pauses, "faults",
            json_incref(c.per_service), "settled", settled, "settle_seconds",
            (double)(moat_mono_ms() - settle_start) / 1000.0);
        char *text = json_dumps(out, JSON_COMPACT);
        printf("chaos: %s\n", text);
        free(text);
        json_decref(out);
    }
    printf("moat chaos: orders placed %lu, accepted %zu (%lu answered again "
           "after a retry), refused %lu, given up %lu, retries %lu\n",
           c.placed, json_object_size(c.accepted_ids), c.replayed, c.rejected,
           c.gave_up, c.retries);
    printf(
        "moat chaos: of the accepted: confirmed %lld, cancelled %lld, "
        "pending %lld\n",
        (long long)json_integer_value(json_object_get(by_status, "confirmed")),
        (long long)json_integer_value(json_object_get(by_status, "cancelled")),
        (long long)json_integer_value(json_object_get(by_status, "pending")));
    printf("moat chaos: faults: %lu SIGKILL, %lu SIGSTOP/SIGCONT;", c.kills,
           c.pauses);
    const char *name;
    json_t *v;
    json_object_foreach(c.per_service, name, v)
    {
        printf(" %s %lld/%lld", name,
               (long long)json_integer_value(json_object_get(v, "kill")),
               (long long)json_integer_value(json_object_get(v, "stop")));
    }
    printf("\n");
    if (settled)
        printf("moat chaos: settled after %.1f s; auditing\n",
               (double)(moat_mono_ms() - settle_start) / 1000.0);
    else
        printf("moat chaos: NOT settled after %lld s (%lu orders pending or "
               "consumers behind); auditing anyway\n",
               (long long)settle, pending);
    fflush(stdout);
    json_decref(by_status);
    if (interrupted) {
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    struct cli_audit_opts ao = {.grace_s = CLI_AUDIT_GRACE_S,
                                .slack_s = CLI_AUDIT_SLACK_S,
                                .parallel = CLI_AUDIT_PARALLEL,
                                .max_print = CLI_AUDIT_MAX_PRINT};
    ret = cli_audit_run(d, &ao);

out:
    resume_due(&c, 0, true);
    c.cancelling = true;
    cli_fetcher_free(c.f);
    while (c.waiting) {
        struct attempt *a = c.waiting;
        c.waiting = a->next;
        attempt_free(a);
    }
    cli_optokens_free(c.tok);
    shop_close(&c.shop);
    json_decref(c.accepted_ids);
    json_decref(c.per_service);
    deploy_free(d);
    return ret;
}
