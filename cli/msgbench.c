/*
 * msgbench.c - `moat social msgbench`: messages sent per second and the
 * latency of live delivery to members waiting in long polls, through the
 * gateway as a client would (project issue #12's messaging benchmark).
 *
 * 1. Logs in conversations x members seeded users (<var_dir>/
 *    social-seed.json from `moat social seed`; without one it registers
 *    the accounts seed would, social-<seed>-<n>@moat.local).
 * 2. Creates the group conversations (new ones on every run) and parks one
 *    long poll per member (GET .../messages?after=CURSOR&wait=W), a batch
 *    at a time, until messaging's moat_messaging_parked_polls gauge shows
 *    them all: the gateway then holds one pooled connection per poll.
 * 3. Open loop: messages are due at --rate per second, round robin over
 *    the conversations, each from a random member with an
 *    Idempotency-Key. A member whose poll answers polls again at once
 *    from its new cursor.
 * 4. Each message's text names it, so every delivery (a poll answer
 *    carrying it, to a member other than its sender) is timed from the
 *    message's due time and from the client seeing its 201. The second can
 *    be negative: messaging answers the parked polls before it replies to
 *    the sender.
 * 5. After the run, waits (at most TAIL_MS) until every member has seen
 *    its conversation's last acknowledged message, then reads analytics'
 *    moat_analytics_apply_lag_seconds{source="messaging"} histogram again
 *    once it has counted them: the lag percentiles are over the
 *    difference of the buckets, as the upper bound of the bucket that
 *    holds each quantile.
 *
 * One thread and one fetcher (fetch.h): a slot per member for its poll,
 * SEND_PARALLEL more for sends (beyond, sends wait in the fetcher and
 * their latency still counts from the due time).
 */
#include "moat/common.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "benchstat.h"
#include "cli.h"
#include "drill.h"
#include "fetch.h"
#include "social.h"

#define CMD             "social msgbench"
#define SEND_PARALLEL   512
#define SEND_TIMEOUT    10000 /* ms */
#define POLL_SLACK_MS   5000  /* a poll's timeout beyond its wait */
#define POLL_LIMIT      100   /* messaging's largest page */
#define POLL_BACKOFF    100   /* ms before polling again after an error */
#define RAMP_BATCH      64    /* polls parked at once while warming up */
#define RAMP_TIMEOUT    10000 /* ms for a batch to show in the gauge */
#define TAIL_MS         15000
#define LAG_WAIT_MS     10000
#define SAMPLE_MS       500
#define CREATE_PARALLEL 8
#define MAX_MEMBERS     100 /* messaging's group cap */
#define MAX_BUCKETS     32
#define TEXT_PREFIX     "msgbench "

struct mb;

struct member {
    struct mb *m;
    uint32_t acct, conv;
    int64_t cursor;  /* last seq seen */
    bool polling;    /* a poll is in flight */
    double retry_at; /* poll again at (after an error); 0: not waiting */
};

struct conv {
    char *id;
    uint32_t first, n; /* its members: mb.mem[first .. first + n) */
    int64_t acked_seq; /* highest seq acknowledged to a sender */
};

struct msg {
    double due, acked; /* ms; acked 0 until the 201 */
    uint32_t sender;   /* member index */
};

struct delivery {
    uint32_t msg;
    double t;
};

struct errs {
    size_t e429, e5xx, e4xx, etransport;
};

struct mb {
    struct social s; /* first: a struct call's s is this */
    const struct deploy *d;
    struct member *mem;
    uint32_t nmem;
    struct conv *conv;
    uint32_t nconv, per_conv;
    unsigned wait_s;
    struct msg *msg;
    size_t nmsg, msg_cap;
    struct delivery *dl;
    size_t ndl, dl_cap;
    size_t sent, acked, dup, foreign, before_ack, polls, polls_empty;
    size_t pending_sends, retrying, missing;
    struct errs send_err, poll_err;
    double *send_lat;
    struct social_rng rng;
    bool polling;                   /* re-poll after an answer */
    char *msg_metrics, *an_metrics; /* /metrics URLs, NULL when absent */
};

static void *grow(void *p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return p;
    *cap = *cap ? *cap * 2 : 4096;
    p = realloc(p, *cap * size);
    if (!p)
        moat_die("out of memory");
    return p;
}

static void count_err(struct errs *e, const struct cli_fetch_result *r)
{
    if (r->err != MOAT_OK)
        e->etransport++;
    else if (r->status == 429)
        e->e429++;
    else if (r->status >= 500)
        e->e5xx++;
    else
        e->e4xx++;
}

static size_t errs_total(const struct errs *e)
{
    return e->e429 + e->e5xx + e->e4xx + e->etransport;
}

static json_t *errs_json(const struct errs *e)
{
    return json_pack(
        "{s:I, s:I, s:I, s:I, s:I}", "total", (json_int_t)errs_total(e),
        "rate_limited", (json_int_t)e->e429, "server", (json_int_t)e->e5xx,
        "client", (json_int_t)e->e4xx, "transport", (json_int_t)e->etransport);
}

/* ---- /metrics ---- */

/* The value of the sample `series` (name and labels, exactly) in a
 * Prometheus text page; -1 when absent. */
static double metric_value(const char *page, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

/* GET url, name's /metrics, as the operator (it is not open). */
static char *metrics_get(const struct mb *m, const char *url, const char *name)
{
    long st = 0;
    char *body = NULL;
    char *auth = url ? cli_operator_header(m->d, name) : NULL;
    int rc =
        auth ? cli_http("GET", url, auth, NULL, 2000, &st, &body) : MOAT_EIO;
    free(auth);
    if (rc != MOAT_OK || st != 200) {
        free(body);
        return NULL;
    }
    return body;
}

static double parked_polls(const struct mb *m)
{
    char *page = metrics_get(m, m->msg_metrics, "messaging");
    double v = page ? metric_value(page, "moat_messaging_parked_polls") : -1;
    free(page);
    return v;
}

/* moat_analytics_apply_lag_seconds{source="messaging"}: cumulative bucket
 * counts in page order (le ascending, +Inf last). */
struct lag_hist {
    double le[MAX_BUCKETS]; /* seconds; INFINITY for +Inf */
    double count[MAX_BUCKETS];
    size_t n;
};

#define LAG_SERIES                                                             \
    "moat_analytics_apply_lag_seconds_bucket{source=\"messaging\",le=\""

static bool lag_read(const struct mb *m, struct lag_hist *h)
{
    memset(h, 0, sizeof(*h));
    char *page = metrics_get(m, m->an_metrics, "analytics");
    if (!page)
        return false;
    size_t n = strlen(LAG_SERIES);
    for (const char *p = page; p && *p && h->n < MAX_BUCKETS;
         p = strchr(p, '\n'), p = p ? p + 1 : p) {
        if (strncmp(p, LAG_SERIES, n) != 0)
            continue;
        h->le[h->n] =
            strncmp(p + n, "+Inf", 4) == 0 ? INFINITY : strtod(p + n, NULL);
        const char *sp = strchr(p + n, ' ');
        h->count[h->n++] = sp ? strtod(sp + 1, NULL) : 0;
    }
    free(page);
    return true;
}

/* Events observed between before and after (the +Inf bucket). */
static double lag_count(const struct lag_hist *b, const struct lag_hist *a)
{
    if (!a->n)
        return 0;
    return a->count[a->n - 1] - (b->n == a->n ? b->count[b->n - 1] : 0);
}

/* The upper bound (ms) of the bucket holding quantile q of after - before;
 * NULL (JSON null) when it lies beyond the last finite bound. */
static json_t *lag_quantile(const struct lag_hist *b, const struct lag_hist *a,
                            double q)
{
    double total = lag_count(b, a);
    if (total <= 0)
        return json_null();
    double rank = ceil(q * total);
    for (size_t i = 0; i < a->n; i++) {
        double c = a->count[i] - (b->n == a->n ? b->count[i] : 0);
        if (c >= rank)
            return isinf(a->le[i]) ? json_null() : json_real(a->le[i] * 1000);
    }
    return json_null();
}

/* Share of after - before at most `le` seconds (a bucket bound). */
static double lag_within(const struct lag_hist *b, const struct lag_hist *a,
                         double le)
{
    double total = lag_count(b, a);
    for (size_t i = 0; total > 0 && i < a->n; i++)
        if (fabs(a->le[i] - le) < 1e-9)
            return (a->count[i] - (b->n == a->n ? b->count[i] : 0)) / total;
    return 0;
}

/* ---- polls ---- */

static void on_poll(const struct cli_fetch_result *r, void *arg);

static void poll_send(struct member *me)
{
    struct mb *m = me->m;
    char *url = moat_xasprintf(
        "%s/api/v1/conversations/%s/messages?after=%lld&wait=%u&limit=%d",
        m->s.gw, m->conv[me->conv].id, (long long)me->cursor, m->wait_s,
        POLL_LIMIT);
    const char *hdrs[] = {m->s.acct[me->acct].auth, NULL};
    me->polling = true;
    me->retry_at = 0;
    cli_fetch(m->s.f, "GET", url, hdrs, NULL,
              (long)m->wait_s * 1000 + POLL_SLACK_MS, on_poll, me);
    free(url);
}

/* One message of a poll's page, received by member me at t. */
static void delivered(struct mb *m, struct member *me, json_t *item, double t)
{
    json_int_t seq = json_integer_value(json_object_get(item, "seq"));
    const char *text = json_string_value(json_object_get(item, "text"));
    if (seq <= me->cursor) {
        m->dup++;
        return;
    }
    me->cursor = seq;
    char *end = NULL;
    unsigned long long k = 0;
    if (text && strncmp(text, TEXT_PREFIX, strlen(TEXT_PREFIX)) == 0)
        k = strtoull(text + strlen(TEXT_PREFIX), &end, 10);
    if (!end || *end || k >= m->nmsg) {
        m->foreign++;
        return;
    }
    if (m->msg[k].sender == (uint32_t)(me - m->mem))
        return; /* the sender's own message: it has its 201 */
    if (!m->msg[k].acked)
        m->before_ack++; /* the client has not seen the 201 yet */
    m->dl = grow(m->dl, &m->dl_cap, m->ndl, sizeof(*m->dl));
    m->dl[m->ndl++] = (struct delivery){.msg = (uint32_t)k, .t = t};
}

static void on_poll(const struct cli_fetch_result *r, void *arg)
{
    struct member *me = arg;
    if (r->err == MOAT_ECANCELLED)
        return;
    struct mb *m = me->m;
    double t = bench_now_ms();
    me->polling = false;
    m->polls++;
    json_t *page = NULL;
    if (r->err == MOAT_OK && r->status == 200)
        page = json_loadb(r->body, r->body_len, 0, NULL);
    json_t *items = json_object_get(page, "items");
    if (!json_is_array(items)) {
        count_err(&m->poll_err, r);
        me->retry_at = t + POLL_BACKOFF;
        m->retrying++;
        json_decref(page);
        return;
    }
    if (!json_array_size(items))
        m->polls_empty++;
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) delivered(m, me, item, t);
    json_decref(page);
    if (m->polling)
        poll_send(me);
}

/* Members whose poll failed a while ago poll again. */
static void poll_retries(struct mb *m, double t)
{
    for (uint32_t i = 0; m->retrying && i < m->nmem; i++) {
        struct member *me = &m->mem[i];
        if (me->retry_at && me->retry_at <= t) {
            m->retrying--;
            if (m->polling)
                poll_send(me);
            else
                me->retry_at = 0;
        }
    }
}

/* ---- sends ---- */

struct sendreq {
    struct mb *m;
    uint32_t k;
};

static void on_send(const struct cli_fetch_result *r, void *arg)
{
    struct sendreq *q = arg;
    struct mb *m = q->m;
    uint32_t k = q->k;
    free(q);
    if (r->err == MOAT_ECANCELLED)
        return;
    m->pending_sends--;
    double t = bench_now_ms();
    json_t *res = r->err == MOAT_OK && r->status == 201
                      ? json_loadb(r->body, r->body_len, 0, NULL)
                      : NULL;
    json_int_t seq = json_integer_value(json_object_get(res, "seq"));
    json_decref(res);
    if (seq <= 0) {
        count_err(&m->send_err, r);
        return;
    }
    struct msg *g = &m->msg[k];
    g->acked = t;
    m->send_lat[m->acked++] = t - g->due;
    struct conv *c = &m->conv[m->mem[g->sender].conv];
    if (seq > c->acked_seq)
        c->acked_seq = seq;
}

static void send_msg(struct mb *m, double due)
{
    m->msg = grow(m->msg, &m->msg_cap, m->nmsg, sizeof(*m->msg));
    uint32_t k = (uint32_t)m->nmsg++;
    struct conv *c = &m->conv[k % m->nconv];
    uint32_t sender = c->first + (uint32_t)social_rng_below(&m->rng, c->n);
    m->msg[k] = (struct msg){.due = due, .sender = sender};
    char *url =
        moat_xasprintf("%s/api/v1/conversations/%s/messages", m->s.gw, c->id);
    char *key = moat_xasprintf("Idempotency-Key: msgbench-%s-%u", c->id, k);
    char *body = moat_xasprintf("{\"text\": \"" TEXT_PREFIX "%u\"}", k);
    const char *hdrs[] = {m->s.acct[m->mem[sender].acct].auth, key, NULL};
    struct sendreq *q = moat_xcalloc(1, sizeof(*q));
    *q = (struct sendreq){.m = m, .k = k};
    m->sent++;
    m->pending_sends++;
    cli_fetch(m->s.f, "POST", url, hdrs, body, SEND_TIMEOUT, on_send, q);
    free(url);
    free(key);
    free(body);
}

/* ---- setup ---- */

static void done_conv(struct call *c, long st, json_t *res)
{
    struct mb *m = (struct mb *)c->s;
    const char *id = json_string_value(json_object_get(res, "id"));
    if (st != 201 || !id) {
        m->s.failed++;
        cli_error("creating a conversation: HTTP %ld", st);
        return;
    }
    m->conv[c->v].id = moat_xstrdup(id);
}

/* Log in (or register) the members; MOAT_OK when all could. */
static int members_login(struct mb *m, uint64_t seed)
{
    struct social *s = &m->s;
    size_t edges;
    unsigned ppu;
    s->f = cli_fetcher_new(PASSWORD_PARALLEL);
    if (!s->f)
        return MOAT_EIO;
    if (social_load_seed(s, false, 0, 0, &edges, &ppu) == MOAT_OK) {
        if (s->n < m->nmem) {
            char *path = social_seed_path(m->d);
            cli_error("%s has %u users, %u members need as many: seed more "
                      "(moat social seed --users N) or lower --conversations "
                      "or --members",
                      path, s->n, m->nmem);
            free(path);
            return MOAT_EINVAL;
        }
        for (uint32_t i = 0; i < m->nmem; i++)
            social_login(s, i);
        social_run_calls(s, "logins");
    } else {
        s->seed = seed;
        social_accounts_new(s, m->nmem);
        social_users_phase(s);
    }
    uint32_t ok = 0;
    for (uint32_t i = 0; i < m->nmem; i++)
        ok += s->acct[i].auth != NULL;
    if (ok < m->nmem) {
        cli_error("only %u of %u members could log in", ok, m->nmem);
        return MOAT_EIO;
    }
    return MOAT_OK;
}

static int conversations_create(struct mb *m)
{
    struct social *s = &m->s;
    cli_fetcher_free(s->f);
    s->f = cli_fetcher_new(CREATE_PARALLEL);
    if (!s->f)
        return MOAT_EIO;
    for (uint32_t c = 0; c < m->nconv; c++) {
        struct conv *cv = &m->conv[c];
        cv->first = c * m->per_conv;
        cv->n = m->per_conv;
        json_t *ids = json_array();
        for (uint32_t i = 1; i < cv->n; i++)
            json_array_append_new(ids, json_string(s->acct[cv->first + i].id));
        char *title = moat_xasprintf("msgbench %u", c + 1);
        json_t *doc = json_pack("{s:s, s:s, s:o}", "kind", "group", "title",
                                title, "members", ids);
        free(title);
        struct call *call = social_call_new(
            s, cv->first, "POST", moat_xstrdup("/api/v1/conversations"),
            json_dumps(doc, JSON_COMPACT), done_conv);
        call->v = c;
        social_call_send(call);
        json_decref(doc);
    }
    social_run_calls(s, "conversations");
    for (uint32_t c = 0; c < m->nconv; c++)
        if (!m->conv[c].id)
            return MOAT_EIO;
    for (uint32_t i = 0; i < m->nmem; i++)
        m->mem[i] = (struct member){
            .m = m, .acct = i, .conv = i / m->per_conv, .cursor = 0};
    return MOAT_OK;
}

/* Park every member's poll, RAMP_BATCH at a time, each batch confirmed by
 * messaging's gauge (when its /metrics answers); the number parked. */
static double polls_park(struct mb *m, double base)
{
    double parked = base;
    m->polling = true;
    for (uint32_t i = 0; i < m->nmem;) {
        uint32_t end = i + RAMP_BATCH < m->nmem ? i + RAMP_BATCH : m->nmem;
        for (; i < end; i++)
            poll_send(&m->mem[i]);
        double until = bench_now_ms() + RAMP_TIMEOUT;
        do {
            cli_fetcher_run(m->s.f, 20);
            poll_retries(m, bench_now_ms());
            parked = parked_polls(m);
        } while (parked >= 0 && parked < base + i && bench_now_ms() < until);
    }
    return parked - base;
}

/* ---- the report ---- */

static void report(struct mb *m, double run_s, double parked, double rate,
                   const struct lag_hist *lb, const struct lag_hist *la,
                   bool have_lag, json_t *procs, bool as_json)
{
    size_t expected = 0, got = 0;
    for (size_t k = 0; k < m->nmsg; k++)
        if (m->msg[k].acked)
            expected += m->conv[m->mem[m->msg[k].sender].conv].n - 1;
    double *from_due = moat_xcalloc(m->ndl + 1, sizeof(double));
    double *from_ack = moat_xcalloc(m->ndl + 1, sizeof(double));
    for (size_t i = 0; i < m->ndl; i++) {
        const struct msg *g = &m->msg[m->dl[i].msg];
        if (!g->acked)
            continue; /* its send failed (or was never answered) */
        from_due[got] = m->dl[i].t - g->due;
        from_ack[got++] = m->dl[i].t - g->acked;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double client_cpu =
        (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
        (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    json_t *lag = json_null();
    if (have_lag)
        lag = json_pack("{s:s, s:I, s:o, s:o, s:o, s:f}", "source", "messaging",
                        "count", (json_int_t)lag_count(lb, la),
                        "p50_ms_at_most", lag_quantile(lb, la, 0.50),
                        "p99_ms_at_most", lag_quantile(lb, la, 0.99),
                        "p99_9_ms_at_most", lag_quantile(lb, la, 0.999),
                        "within_100ms", lag_within(lb, la, 0.1));
    json_t *out = json_pack(
        "{s:s, s:i, s:i, s:i, s:i, s:i, s:f, s:f,"
        " s:{s:I, s:I, s:f, s:o, s:o},"
        " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o},"
        " s:{s:I, s:I, s:o}, s:o, s:f, s:o}",
        "through", "gateway", "conversations", (int)m->nconv,
        "members_per_conversation", (int)m->per_conv, "members", (int)m->nmem,
        "polls_parked_at_start", (int)parked, "wait_s", (int)m->wait_s, "rate",
        rate, "seconds", run_s, "messages", "sent", (json_int_t)m->sent, "ok",
        (json_int_t)m->acked, "ok_per_s",
        run_s > 0 ? (double)m->acked / run_s : 0.0, "errors",
        errs_json(&m->send_err), "latency_ms",
        bench_latency(m->send_lat, m->acked), "deliveries", "expected",
        (json_int_t)expected, "delivered", (json_int_t)got, "missing",
        (json_int_t)(expected > got ? expected - got : 0), "duplicates",
        (json_int_t)m->dup, "foreign", (json_int_t)m->foreign, "before_201",
        (json_int_t)m->before_ack, "latency_from_due_ms",
        bench_latency(from_due, got), "latency_from_201_ms",
        bench_latency(from_ack, got), "polls", "answered", (json_int_t)m->polls,
        "empty", (json_int_t)m->polls_empty, "errors", errs_json(&m->poll_err),
        "analytics_lag", lag, "client_cpu_seconds", client_cpu, "services",
        procs);
    m->missing = expected > got ? expected - got : 0;
    free(from_due);
    free(from_ack);
    if (as_json) {
        char *text = json_dumps(out, JSON_INDENT(2));
        puts(text);
        free(text);
        json_decref(out);
        return;
    }
    json_t *ms = json_object_get(out, "messages");
    json_t *dv = json_object_get(out, "deliveries");
    json_t *se = json_object_get(ms, "errors");
    json_t *pe = json_object_get(json_object_get(out, "polls"), "errors");
#define I(o, k) ((long long)json_integer_value(json_object_get((o), (k))))
    printf("\n%.1f s: messages sent %lld, ok %lld (%.1f/s); errors %lld "
           "(429 %lld, 5xx %lld, 4xx %lld, no reply %lld)\n",
           run_s, I(ms, "sent"), I(ms, "ok"),
           json_real_value(json_object_get(ms, "ok_per_s")), I(se, "total"),
           I(se, "rate_limited"), I(se, "server"), I(se, "client"),
           I(se, "transport"));
    printf("deliveries to waiting members: expected %lld, delivered %lld, "
           "missing %lld, duplicates %lld\n",
           I(dv, "expected"), I(dv, "delivered"), I(dv, "missing"),
           I(dv, "duplicates"));
    printf("polls answered %zu (%zu empty); poll errors %lld (429 %lld, 5xx "
           "%lld, 4xx %lld, no reply %lld)\n",
           m->polls, m->polls_empty, I(pe, "total"), I(pe, "rate_limited"),
           I(pe, "server"), I(pe, "client"), I(pe, "transport"));
#undef I
    bench_latency_header("latency (ms)");
    bench_latency_print("send (due to 201)", json_object_get(ms, "latency_ms"));
    bench_latency_print("delivery from due",
                        json_object_get(dv, "latency_from_due_ms"));
    bench_latency_print("delivery from 201",
                        json_object_get(dv, "latency_from_201_ms"));
    if (json_is_object(lag)) {
        json_t *p50 = json_object_get(lag, "p50_ms_at_most");
        json_t *p99 = json_object_get(lag, "p99_ms_at_most");
        printf("\nanalytics apply lag (messaging), %lld events: p50 <= %s%g "
               "ms, p99 <= %s%g ms, %.2f %% within 100 ms\n",
               (long long)json_integer_value(json_object_get(lag, "count")),
               json_is_null(p50) ? "(beyond the last bucket) " : "",
               json_real_value(p50),
               json_is_null(p99) ? "(beyond the last bucket) " : "",
               json_real_value(p99),
               100 * json_real_value(json_object_get(lag, "within_100ms")));
    } else {
        printf("\nanalytics apply lag: analytics' /metrics not readable\n");
    }
    printf("bench client CPU: %.1f s\n", client_cpu);
    bench_procs_print(procs);
    json_decref(out);
}

/* ---- the command ---- */

static char *metrics_url(const struct deploy *d, const char *name)
{
    const struct deploy_service *svc = deploy_find(d, name);
    if (!svc)
        return NULL;
    char *base = deploy_base_url(svc);
    char *url = moat_xasprintf("%s/metrics", base);
    free(base);
    return url;
}

int social_cmd_msgbench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"conversations", required_argument, NULL, 'C'},
        {"members", required_argument, NULL, 'M'},
        {"wait", required_argument, NULL, 'w'},
        {"seed", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    int64_t rate = 1000, duration = 30, nconv = 10, per = 50, wait = 1,
            seed = 1;
    bool as_json = false;
    int ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        int64_t *target = NULL, lo = 1, hi = 0;
        const char *name = NULL;
        switch (ch) {
        case 'f':
            file = optarg;
            continue;
        case 'j':
            as_json = true;
            continue;
        case 'r':
            target = &rate, hi = 100000, name = "--rate";
            break;
        case 'd':
            /* Access tokens live 900 s and msgbench does not refresh them. */
            target = &duration, hi = 600, name = "--duration";
            break;
        case 'C':
            target = &nconv, hi = 1000, name = "--conversations";
            break;
        case 'M':
            target = &per, lo = 2, hi = MAX_MEMBERS, name = "--members";
            break;
        case 'w':
            target = &wait, hi = 30, name = "--wait";
            break;
        case 's':
            target = &seed, hi = INT64_MAX, name = "--seed";
            break;
        default:
            return cli_option_error(CMD, ch, argv);
        }
        if (moat_parse_i64(optarg, lo, hi, target) != MOAT_OK)
            return cli_usage_error(CMD,
                                   "%s must be an integer from %lld to %lld",
                                   name, (long long)lo, (long long)hi);
    }
    if (optind < argc)
        return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (nconv * per > SOCIAL_GRAPH_MAX_USERS)
        return cli_usage_error(CMD, "--conversations x --members is at most %u",
                               (unsigned)SOCIAL_GRAPH_MAX_USERS);

    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    struct mb m = {.d = d,
                   .nconv = (uint32_t)nconv,
                   .per_conv = (uint32_t)per,
                   .nmem = (uint32_t)(nconv * per),
                   .wait_s = (unsigned)wait};
    social_rng_init(&m.rng, (uint64_t)seed);
    m.conv = moat_xcalloc(m.nconv, sizeof(*m.conv));
    m.mem = moat_xcalloc(m.nmem, sizeof(*m.mem));
    m.send_lat = moat_xcalloc((size_t)(rate * duration) + 1, sizeof(double));
    m.msg_metrics = metrics_url(d, "messaging");
    m.an_metrics = metrics_url(d, "analytics");
    int ret = CLI_EXIT_FAIL;
    json_t *st = cli_running_state(d);
    json_decref(st);
    if (!st || social_open(&m.s, d) != MOAT_OK)
        goto out;
    if (!deploy_find(d, "messaging")) {
        cli_error("deployment \"%s\" has no messaging service (use -f "
                  "deploy/social.json)",
                  d->name);
        goto out;
    }
    if (members_login(&m, (uint64_t)seed) != MOAT_OK ||
        conversations_create(&m) != MOAT_OK)
        goto out;
    cli_fetcher_free(m.s.f);
    m.s.f = cli_fetcher_new(m.nmem + SEND_PARALLEL);
    if (!m.s.f)
        goto out;
    if (!as_json) {
        printf("moat social msgbench: %u conversations x %u members, a long "
               "poll per member (wait %u s), %lld messages/s for %lld s, "
               "through %s\n",
               m.nconv, m.per_conv, m.wait_s, (long long)rate,
               (long long)duration, m.s.gw);
        fflush(stdout);
    }
    double base = parked_polls(&m);
    double parked = polls_park(&m, base > 0 ? base : 0);
    if (parked < m.nmem)
        cli_error("only %.0f of %u polls parked (moat_messaging_parked_polls); "
                  "measuring anyway",
                  parked, m.nmem);

    struct lag_hist lag0, lag1;
    bool have_lag = lag_read(&m, &lag0);
    struct bench_procs procs = {0};
    bench_procs_sample(&procs, d);
    double t0 = bench_now_ms(), end = t0 + (double)duration * 1000.0;
    double next_due = t0, next_sample = t0 + SAMPLE_MS;
    double interval = 1000.0 / (double)rate;
    for (;;) {
        double t = bench_now_ms();
        if (t >= end)
            break;
        while (next_due <= t && next_due < end) {
            send_msg(&m, next_due);
            next_due += interval;
        }
        poll_retries(&m, t);
        if (t >= next_sample) {
            bench_procs_sample(&procs, d);
            next_sample += SAMPLE_MS;
        }
        int wake = next_due > t ? (int)(next_due - t) : 0;
        cli_fetcher_run(m.s.f, wake > 20 ? 20 : wake);
    }
    double run_end = bench_now_ms();
    /* The sends' answers and the deliveries of what was acknowledged. */
    for (;;) {
        double t = bench_now_ms();
        bool behind = m.pending_sends > 0;
        for (uint32_t i = 0; !behind && i < m.nmem; i++)
            behind = m.mem[i].cursor < m.conv[m.mem[i].conv].acked_seq;
        if (!behind || t >= run_end + TAIL_MS)
            break;
        poll_retries(&m, t);
        cli_fetcher_run(m.s.f, 20);
    }
    m.polling = false;
    bench_procs_sample(&procs, d);
    double run_s = (run_end - t0) / 1000.0;
    if (have_lag) {
        double until = bench_now_ms() + LAG_WAIT_MS;
        while ((have_lag = lag_read(&m, &lag1)) &&
               lag_count(&lag0, &lag1) < (double)m.acked &&
               bench_now_ms() < until)
            cli_fetcher_run(m.s.f, 100);
    }
    report(&m, run_s, parked, (double)rate, &lag0, &lag1, have_lag,
           bench_procs_json(&procs, run_s), as_json);
    ret = errs_total(&m.send_err) || m.missing ? CLI_EXIT_FAIL : CLI_EXIT_OK;
out:
    social_free(&m.s); /* cancels the polls still parked */
    for (uint32_t c = 0; c < m.nconv; c++)
        free(m.conv[c].id);
    free(m.conv);
    free(m.mem);
    free(m.msg);
    free(m.dl);
    free(m.send_lat);
    free(m.msg_metrics);
    free(m.an_metrics);
    deploy_free(d);
    return ret;
}
