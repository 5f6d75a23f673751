/*
 * bench.c - `moat bench`: how many orders a running deployment takes and
 * completes, and how fast, through the gateway.
 *
 *   closed  --concurrency N workers; each places an order (POST
 *           /api/v1/orders) and, once it is accepted, waits until it is
 *           final before placing the next
 *   open    orders are due at --rate R per second whatever happens; each
 *           one's acceptance latency counts from the moment it was due
 *           (its intended send time), not from when it could be sent, so
 *           a stall shows in the percentiles instead of silently lowering
 *           the load (coordinated omission)
 *
 * Completion is learnt from orders' event feed (GET /v1/events, long
 * polled as the operator): an OrderConfirmed or OrderCancelled for the
 * order is its final status, without polling every order. Completion
 * latency is from acceptance (the POST's answer) to that event's arrival.
 *
 * While it runs it samples every service's process (pid from the
 * supervisor's state file): resident memory (max) from /proc/<pid>/status
 * and CPU time from /proc/<pid>/stat.
 *
 * The gateway limits each client address (MOAT_GATEWAY_RATE, 200/s by
 * default) and inventory each customer's open reservations (5): bench
 * spreads orders over max(20, N/4) drill customers (closed) or max(20, R/4)
 * (open, at most 200: a customer orders 4 times a second) and reports
 * 429s.
 */
#include "moat/common.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat/buf.h"

#include "benchstat.h"
#include "cli.h"
#include "drill.h"
#include "fetch.h"
#include "shop.h"

#define POST_TIMEOUT_MS    10000
#define FEED_WAIT_MS       1000
#define FEED_TIMEOUT_MS    (FEED_WAIT_MS + 5000)
#define TAIL_MAX_MS        30000 /* waiting for completions after the run */
#define SAMPLE_MS          500
#define ERROR_BACKOFF_MS   200
#define LIMITED_BACKOFF_MS 1000
#define BENCH_PARALLEL     1024

struct order {
    double due_ms;      /* intended send time (open) or send time */
    double accepted_ms; /* 0 until accepted */
    double done_ms;     /* 0 until final */
    int worker;         /* closed loop: who waits for it; -1 otherwise */
    bool confirmed;
};

struct bench {
    const struct deploy *d;
    struct shop shop;
    struct cli_fetcher *f;
    struct cli_optokens *tok;
    const struct deploy_service *orders;
    bool open;
    unsigned workers;
    double rate;
    char run_id[40];

    struct order *o; /* every order sent */
    size_t n, cap;
    json_t *by_id; /* order id -> index in o */
    json_t *early; /* order id -> completion ms seen before acceptance */
    size_t accepted, completed, confirmed, cancelled;
    size_t e429, e5xx, eother, etransport;
    double *next_send; /* closed: per worker, 0 = waiting for completion */
    bool sending;

    int64_t feed_after;
    bool feed_busy;
    unsigned feed_errors;

    struct bench_procs procs;
    struct bench_hists hops0, hops1; /* consumers' hop histograms */
    struct bench_machine m0, m1;     /* the machine at start and end */
};

/* ---- orders ---- */

struct post {
    struct bench *b;
    size_t idx;
};

static void complete(struct bench *b, size_t idx, double at, bool confirmed)
{
    struct order *o = &b->o[idx];
    if (o->done_ms)
        return;
    o->done_ms = at;
    o->confirmed = confirmed;
    b->completed++;
    if (confirmed)
        b->confirmed++;
    else
        b->cancelled++;
    if (o->worker >= 0 && b->sending)
        b->next_send[o->worker] = at; /* the worker goes on at once */
}

static void on_post(const struct cli_fetch_result *r, void *arg)
{
    struct post *p = arg;
    struct bench *b = p->b;
    size_t idx = p->idx;
    free(p);
    if (r->err == MOAT_ECANCELLED)
        return;
    struct order *o = &b->o[idx];
    double t = bench_now_ms();
    if (r->status == 201) {
        o->accepted_ms = t;
        b->accepted++;
        json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (id) {
            json_object_set_new(b->by_id, id, json_integer((json_int_t)idx));
            json_t *e = json_object_get(b->early, id);
            if (e)
                complete(b, idx, t, json_is_true(json_object_get(e, "ok")));
            const char *st = json_string_value(json_object_get(j, "status"));
            if (st && strcmp(st, "pending") != 0)
                complete(b, idx, t, strcmp(st, "confirmed") == 0);
        }
        json_decref(j);
        return;
    }
    double backoff = ERROR_BACKOFF_MS;
    if (r->err != MOAT_OK)
        b->etransport++;
    else if (r->status == 429)
        b->e429++, backoff = LIMITED_BACKOFF_MS;
    else if (r->status >= 500)
        b->e5xx++;
    else
        b->eother++;
    if (o->worker >= 0 && b->sending)
        b->next_send[o->worker] = t + backoff;
}

static void send_order(struct bench *b, double due, int worker)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 1024;
        b->o = realloc(b->o, b->cap * sizeof(*b->o));
        if (!b->o)
            moat_die("out of memory");
    }
    size_t idx = b->n++;
    b->o[idx] = (struct order){.due_ms = due, .worker = worker};
    size_t cust = worker >= 0 ? (size_t)worker % b->shop.ncustomers
                              : idx % b->shop.ncustomers;
    char *body = shop_order_body(&b->shop, 0);
    char *key = moat_xasprintf("Idempotency-Key: bench-%s-%zu", b->run_id, idx);
    const char *hdrs[] = {b->shop.customers[cust].auth, key, NULL};
    char *url = moat_xasprintf("%s/api/v1/orders", b->shop.gw_url);
    struct post *p = moat_xcalloc(1, sizeof(*p));
    p->b = b;
    p->idx = idx;
    cli_fetch(b->f, "POST", url, hdrs, body, POST_TIMEOUT_MS, on_post, p);
    free(url);
    free(key);
    free(body);
}

/* ---- orders' feed ---- */

static void feed_pull(struct bench *b);

static void on_feed(const struct cli_fetch_result *r, void *arg)
{
    struct bench *b = arg;
    b->feed_busy = false;
    if (r->err == MOAT_ECANCELLED)
        return;
    double t = bench_now_ms();
    json_t *j =
        r->status == 200 ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
    if (!j) {
        b->feed_errors++;
        return;
    }
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(j, "events"), i, ev)
    {
        const char *type = json_string_value(json_object_get(ev, "type"));
        const char *id = json_string_value(json_object_get(ev, "subject"));
        if (!type || !id)
            continue;
        bool ok = strcmp(type, "OrderConfirmed") == 0;
        if (!ok && strcmp(type, "OrderCancelled") != 0)
            continue;
        json_t *idx = json_object_get(b->by_id, id);
        if (idx)
            complete(b, (size_t)json_integer_value(idx), t, ok);
        else
            json_object_set_new(b->early, id, json_pack("{s:b}", "ok", ok));
    }
    json_t *next = json_object_get(j, "next_after");
    if (json_is_integer(next))
        b->feed_after = json_integer_value(next);
    json_decref(j);
}

static void feed_pull(struct bench *b)
{
    if (b->feed_busy)
        return;
    const char *auth = cli_optokens_get(b->tok, b->orders->name);
    char *base = deploy_base_url(b->orders);
    /* Only the saga's outcomes: orders passes over its other events
     * (next_after still moves past them). */
    char *url = moat_xasprintf("%s/v1/events?after=%lld&limit=1000&wait=%d"
                               "&types=OrderConfirmed,OrderCancelled",
                               base, (long long)b->feed_after, FEED_WAIT_MS);
    const char *hdrs[] = {auth, NULL};
    b->feed_busy = true;
    cli_fetch(b->f, "GET", url, hdrs, NULL, FEED_TIMEOUT_MS, on_feed, b);
    free(url);
    free(base);
}

static int feed_head(struct bench *b)
{
    const char *auth = cli_optokens_get(b->tok, b->orders->name);
    if (!auth)
        return MOAT_EINVAL;
    char *base = deploy_base_url(b->orders);
    char *url = moat_xasprintf("%s/v1/events?after=0&limit=1", base);
    long st;
    char *body = NULL;
    int rc = cli_http("GET", url, auth, NULL, 5000, &st, &body);
    json_t *j = rc == MOAT_OK ? json_loads(body, 0, NULL) : NULL;
    json_t *head = json_object_get(j, "head");
    rc = json_is_integer(head) ? MOAT_OK : MOAT_EIO;
    if (rc == MOAT_OK)
        b->feed_after = json_integer_value(head);
    else
        cli_error("cannot read orders' event feed at %s (HTTP %ld)", url, st);
    json_decref(j);
    free(body);
    free(url);
    free(base);
    return rc;
}

/* ---- report ---- */

static void report(struct bench *b, double run_s, bool as_json)
{
    double *acc = moat_xcalloc(b->n + 1, sizeof(*acc));
    double *done = moat_xcalloc(b->n + 1, sizeof(*done));
    size_t na = 0, nd = 0;
    for (size_t i = 0; i < b->n; i++) {
        const struct order *o = &b->o[i];
        if (o->accepted_ms)
            acc[na++] = o->accepted_ms - o->due_ms;
        if (o->accepted_ms && o->done_ms)
            done[nd++] = o->done_ms - o->accepted_ms;
    }
    json_t *la = bench_latency(acc, na), *ld = bench_latency(done, nd);
    free(acc);
    free(done);
    json_t *procs = bench_procs_json(&b->procs, run_s);
    json_t *totals = bench_procs_totals(&b->procs, procs, (double)b->completed);
    json_t *hops = bench_hists_json(&b->hops0, &b->hops1);
    json_t *machine = bench_machine_json(
        &b->m0, &b->m1,
        json_real_value(json_object_get(totals, "cpu_seconds")));
    json_t *out = json_pack(
        "{s:s, s:i, s:f, s:f, s:I, s:I, s:f, s:I, s:f, s:I, s:I, "
        "s:{s:I, s:I, s:I, s:I}, s:o, s:o, s:o, s:o, s:o, s:o}",
        "mode", b->open ? "open" : "closed", "concurrency", (int)b->workers,
        "rate", b->open ? b->rate : 0.0, "seconds", run_s, "sent",
        (json_int_t)b->n, "accepted", (json_int_t)b->accepted, "accepted_per_s",
        run_s > 0 ? (double)b->accepted / run_s : 0.0, "completed",
        (json_int_t)b->completed, "completed_per_s",
        run_s > 0 ? (double)b->completed / run_s : 0.0, "confirmed",
        (json_int_t)b->confirmed, "cancelled", (json_int_t)b->cancelled,
        "errors", "rate_limited", (json_int_t)b->e429, "server",
        (json_int_t)b->e5xx, "client", (json_int_t)b->eother, "transport",
        (json_int_t)b->etransport, "accept_latency_ms", la,
        "complete_latency_ms", ld, "services", procs, "per_saga", totals,
        "hops", hops, "machine", machine);
    if (as_json) {
        char *text = json_dumps(out, JSON_INDENT(2));
        puts(text);
        free(text);
    } else {
        printf("\n%s loop, %.1f s: sent %zu, accepted %zu (%.1f/s), completed "
               "%zu (%.1f/s: confirmed %zu, cancelled %zu)\n",
               b->open ? "open" : "closed", run_s, b->n, b->accepted,
               run_s > 0 ? (double)b->accepted / run_s : 0.0, b->completed,
               run_s > 0 ? (double)b->completed / run_s : 0.0, b->confirmed,
               b->cancelled);
        printf("errors: 429 %zu, 5xx %zu, other 4xx %zu, no answer %zu\n",
               b->e429, b->e5xx, b->eother, b->etransport);
        bench_latency_header("latency (ms)");
        bench_latency_print(b->open ? "accept (from due)" : "accept (POST)",
                            la);
        bench_latency_print("accept->final", ld);
        bench_procs_print(procs);
        bench_procs_totals_print(procs, totals, "completed saga");
        bench_machine_print(machine);
        bench_hists_print(hops);
    }
    json_decref(out);
}

int cli_cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"deployment", required_argument, NULL, 'f'},
        {"mode", required_argument, NULL, 'm'},
        {"concurrency", required_argument, NULL, 'c'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"setup", no_argument, NULL, 'u'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    int64_t conc = 16, rate = 50, duration = 30;
    bool open = false, setup = false, as_json = false;
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        int64_t *target = NULL, hi = 0;
        const char *name = NULL;
        switch (ch) {
        case 'f':
            file = optarg;
            continue;
        case 'u':
            setup = true;
            continue;
        case 'j':
            as_json = true;
            continue;
        case 'm':
            if (strcmp(optarg, "open") == 0)
                open = true;
            else if (strcmp(optarg, "closed") != 0)
                return cli_usage_error("bench", "--mode must be closed or "
                                                "open");
            continue;
        case 'c':
            target = &conc, hi = 1000, name = "--concurrency";
            break;
        case 'r':
            target = &rate, hi = 100000, name = "--rate";
            break;
        case 'd':
            target = &duration, hi = 86400, name = "--duration";
            break;
        default:
            return cli_option_error("bench", ch, argv);
        }
        if (moat_parse_i64(optarg, 1, hi, target) != MOAT_OK)
            return cli_usage_error("bench",
                                   "%s must be an integer from 1 to "
                                   "%lld",
                                   name, (long long)hi);
    }
    if (optind < argc)
        return cli_usage_error("bench", "unexpected argument '%s'",
                               argv[optind]);

    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    struct bench b = {
        .d = d, .open = open, .workers = (unsigned)conc, .rate = (double)rate};
    int ret = CLI_EXIT_FAIL;
    b.by_id = json_object();
    b.early = json_object();
    b.tok = cli_optokens_new(d);
    b.orders = deploy_find(d, "orders");
    snprintf(b.run_id, sizeof(b.run_id), "%llx-%d",
             (unsigned long long)moat_wall_ms(), (int)getpid());
    json_t *st = cli_running_state(d);
    json_decref(st);
    if (!st || !b.orders)
        goto out;
    if (shop_open(&b.shop, d, moat_wall_ms()) != MOAT_OK ||
        shop_products(&b.shop, setup) != MOAT_OK)
        goto out;
    size_t ncust = open ? (size_t)(rate + 3) / 4 : (size_t)(conc + 3) / 4;
    if (ncust < 20)
        ncust = 20;
    if (shop_customers(&b.shop, ncust) != MOAT_OK || feed_head(&b) != MOAT_OK)
        goto out;
    b.f = cli_fetcher_new(BENCH_PARALLEL);
    if (!b.f)
        goto out;
    if (!as_json) {
        if (open)
            printf("moat bench: open loop at %lld orders/s for %lld s "
                   "through %s\n",
                   (long long)rate, (long long)duration, b.shop.gw_url);
        else
            printf("moat bench: closed loop, %lld workers, %lld s, through "
                   "%s\n",
                   (long long)conc, (long long)duration, b.shop.gw_url);
        fflush(stdout);
    }

    bench_hists_read(&b.hops0, d, "moat_consumer_hop_seconds", b.tok);
    bench_procs_sample(&b.procs, d);
    bench_machine_sample(&b.m0);
    double t0 = bench_now_ms();
    double end = t0 + (double)duration * 1000.0;
    b.next_send = moat_xcalloc((size_t)conc, sizeof(*b.next_send));
    for (int64_t w = 0; w < conc; w++)
        b.next_send[w] = t0;
    b.sending = true;
    double next_due = t0, next_sample = t0 + SAMPLE_MS;
    double interval = 1000.0 / (double)rate;
    for (;;) {
        double t = bench_now_ms();
        if (t >= end)
            break;
        if (open) {
            while (next_due <= t) {
                send_order(&b, next_due, -1);
                next_due += interval;
            }
        } else {
            for (int64_t w = 0; w < conc; w++) {
                if (b.next_send[w] && b.next_send[w] <= t) {
                    b.next_send[w] = 0; /* busy until its order is final */
                    send_order(&b, t, (int)w);
                }
            }
        }
        if (t >= next_sample) {
            bench_procs_sample(&b.procs, d);
            next_sample += SAMPLE_MS;
        }
        feed_pull(&b);
        double wake = open ? next_due : t + 5;
        int wait = wake > t ? (int)(wake - t) : 0;
        cli_fetcher_run(b.f, wait > 20 ? 20 : wait);
    }
    double run_end = bench_now_ms();
    b.sending = false;
    /* The tail: answers and completions of what was sent. */
    double tail_end = run_end + TAIL_MAX_MS;
    while (bench_now_ms() < tail_end) {
        bool outstanding = false;
        for (size_t i = 0; i < b.n && !outstanding; i++)
            outstanding = !b.o[i].done_ms &&
                          (b.o[i].accepted_ms || cli_fetcher_pending(b.f) > 1);
        if (!outstanding)
            break;
        feed_pull(&b);
        cli_fetcher_run(b.f, 20);
    }
    bench_procs_sample(&b.procs, d);
    bench_machine_sample(&b.m1);
    bench_hists_read(&b.hops1, d, "moat_consumer_hop_seconds", b.tok);
    report(&b, (run_end - t0) / 1000.0, as_json);
    ret = CLI_EXIT_OK;

out:
    cli_fetcher_free(b.f);
    cli_optokens_free(b.tok);
    shop_close(&b.shop);
    json_decref(b.by_id);
    json_decref(b.early);
    free(b.o);
    free(b.next_send);
    deploy_free(d);
    return ret;
}
