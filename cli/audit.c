/*
 * audit.c - `moat audit`: check the order saga's promises across services.
 *
 * The auditor reads every service through its API, as the operator (the
 * payment provider as payments' merchant), never a database file: what it
 * sees is what the services would tell anyone. It gathers, with many
 * requests in flight at once (fetch.h):
 *
 *   orders         GET /v1/orders (paged): every order, its status, step,
 *                  lines, total, deadline and trace id
 *   inventory      GET /v1/stock, /v1/reservations, /v1/adjustments (paged;
 *                  without the reservation list, GET /v1/reservations/{id}
 *                  per order)
 *   payments       GET /v1/payments?order_id= per final order, and
 *                  GET /v1/payments/summary
 *   notifications  GET /v1/notifications (paged)
 *   provider       GET /v1/ledger/summary
 *
 * and checks (each failure is a violation naming the order and its trace):
 *
 *   confirmed  exactly one captured payment, amount = total, nothing else
 *              live; a committed reservation with the order's lines
 *   cancelled  no payment left captured, authorized or pending (refunded,
 *              voided, declined, failed or none); no reservation held or
 *              committed
 *   pending    reserving/authorizing no later than deadline_at (+ slack);
 *              any other step, or a timed one without a deadline, not
 *              unchanged for longer than the grace
 *   notices    exactly one "placed" per order, one "confirmed" per
 *              confirmed order, one "cancelled" per cancelled order (a
 *              refunded order may have had its "confirmed"), no others
 *   per SKU    reserved = held reservation lines, sold = committed lines,
 *              0 <= reserved <= on_hand, on_hand + sold = the adjustment
 *              log's set/adjustment deltas
 *   ledger     payments' summary = the provider's, per currency
 *   unknown    no held or committed reservation of an order orders does
 *              not know (lost by a restore: moat reconcile repairs it)
 *
 * The checks assume a quiet deployment (no order in flight): under traffic
 * the per-SKU sums read at different moments may differ for a moment.
 */
#include "moat/common.h"

#include <getopt.h>
#include <jansson.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moat/buf.h"

#include "cli.h"
#include "drill.h"
#include "fetch.h"
#include "secrets.h"

#define PAGE_LIMIT       500 /* orders and inventory lists */
#define PAGE_LIMIT_SMALL 100 /* when a list refuses PAGE_LIMIT */
#define CALL_TIMEOUT_MS  10000
#define MAX_TRIES        5   /* per call, for 5xx and transport errors */
#define RETRY_PAUSE_MS   500 /* between rounds of retries */

/* ---- gathering ---- */

struct audit;

struct pager {
    const char *what; /* "orders", "stock"... for messages */
    const struct deploy_service *svc;
    const char *base; /* "/v1/orders" */
    unsigned limit;
    bool optional;     /* a 404 means the service has no such list */
    bool missing;      /* it answered 404 */
    char *cursor_name; /* "after" or "cursor"; NULL on the first page */
    char *cursor;      /* NULL on the first page */
    size_t pages, items;
    void (*item)(struct audit *a, json_t *item);
};

enum req_kind {
    RQ_PAGE,
    RQ_PAYMENTS,
    RQ_RESERVATION,
    RQ_PAY_SUMMARY,
    RQ_PROV_SUMMARY,
};

struct req {
    struct audit *a;
    enum req_kind kind;
    const struct deploy_service *svc; /* NULL: the payment provider */
    char *path;                       /* path and query */
    size_t idx;                       /* order index */
    struct pager *pg;
    unsigned tries;
};

struct audit {
    const struct deploy *d;
    const struct cli_audit_opts *o;
    struct cli_optokens *tok;
    struct cli_fetcher *f;
    const struct deploy_service *orders_svc, *payments, *inventory,
        *notifications;
    char *provider_url, *provider_key, *provider_auth;

    struct pager pg_orders, pg_stock, pg_res, pg_adj, pg_notes;
    json_t *orders;       /* array of order documents */
    json_t *stock;        /* sku -> stock document */
    json_t *reservations; /* order_id -> reservation */
    json_t *adjusted;     /* sku -> sum of set/adjustment deltas */
    json_t **payments_of; /* per order: payments' items, or NULL */
    json_t *notes;        /* order_id -> its notifications (array) */
    json_t *pay_summary, *prov_summary;

    bool cancelling;    /* the fetcher is being freed */
    struct req **retry; /* to send again after a pause */
    size_t nretry, cap_retry;
    unsigned unreachable;
    char unreachable_what[256];

    json_t *violations;
    size_t nviolations;
    size_t printed;
    unsigned reservation_gets, payment_gets;
};

static void violation(struct audit *a, const char *kind, json_t *order,
                      const char *sku, const char *fmt, ...) MOAT_PRINTF(5, 6);

static void violation(struct audit *a, const char *kind, json_t *order,
                      const char *sku, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    const char *oid = json_string_value(json_object_get(order, "id"));
    const char *trace = json_string_value(json_object_get(order, "trace_id"));
    a->nviolations++;
    json_t *v = json_pack("{s:s, s:s}", "kind", kind, "detail", detail);
    if (oid)
        json_object_set_new(v, "order_id", json_string(oid));
    if (trace)
        json_object_set_new(v, "trace_id", json_string(trace));
    if (sku)
        json_object_set_new(v, "sku", json_string(sku));
    json_array_append_new(a->violations, v);
    if (a->o->json)
        return;
    if (a->o->max_print && a->printed >= a->o->max_print)
        return;
    a->printed++;
    printf("VIOLATION %-22s", kind);
    if (oid)
        printf(" order %s trace %s", oid, trace ? trace : "-");
    if (sku)
        printf(" sku %s", sku);
    printf(": %s\n", detail);
}

static void issue(struct audit *a, struct req *q);

static struct req *req_new(struct audit *a, enum req_kind kind,
                           const struct deploy_service *svc, char *path)
{
    struct req *q = moat_xcalloc(1, sizeof(*q));
    q->a = a;
    q->kind = kind;
    q->svc = svc;
    q->path = path;
    return q;
}

static void req_free(struct req *q)
{
    free(q->path);
    free(q);
}

static void unreachable(struct audit *a, struct req *q, const char *why)
{
    a->unreachable++;
    if (!a->unreachable_what[0])
        snprintf(a->unreachable_what, sizeof(a->unreachable_what),
                 "%s GET %s: %s", q->svc ? q->svc->name : "payment provider",
                 q->path, why);
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_int_t jint(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* The first array among a list answer's usual member names. */
static json_t *list_items(json_t *body)
{
    static const char *const names[] = {"items",         "orders",
                                        "reservations",  "adjustments",
                                        "notifications", "stock"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(names); i++) {
        json_t *v = json_object_get(body, names[i]);
        if (json_is_array(v))
            return v;
    }
    return NULL;
}

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

static char *page_path(const struct pager *pg)
{
    if (!pg->cursor)
        return moat_xasprintf("%s?limit=%u", pg->base, pg->limit);
    char *c = query_escape(pg->cursor);
    char *p = moat_xasprintf("%s?limit=%u&%s=%s", pg->base, pg->limit,
                             pg->cursor_name, c);
    free(c);
    return p;
}

/* One page came: take its items, ask for the next. Returns false when the
 * answer was not a list. */
static bool page_done(struct audit *a, struct req *q, json_t *body)
{
    struct pager *pg = q->pg;
    json_t *items = list_items(body);
    if (!items)
        return false;
    pg->pages++;
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        pg->items++;
        pg->item(a, it);
    }
    json_t *next = json_object_get(body, "next_cursor");
    const char *name = "cursor";
    if (!next || json_is_null(next)) {
        next = json_object_get(body, "next_after");
        name = "after";
    }
    char *val = NULL;
    if (json_is_string(next) && *json_string_value(next))
        val = moat_xstrdup(json_string_value(next));
    else if (json_is_integer(next) && json_array_size(items) > 0)
        val = moat_xasprintf("%lld", (long long)json_integer_value(next));
    if (!val || json_array_size(items) == 0 ||
        (pg->cursor && strcmp(val, pg->cursor) == 0)) {
        free(val);
        return true; /* the last page */
    }
    free(pg->cursor);
    free(pg->cursor_name);
    pg->cursor = val;
    pg->cursor_name = moat_xstrdup(name);
    struct req *n = req_new(a, RQ_PAGE, pg->svc, page_path(pg));
    n->pg = pg;
    issue(a, n);
    return true;
}

static void on_order(struct audit *a, json_t *o)
{
    json_array_append(a->orders, o);
}

static void on_stock(struct audit *a, json_t *s)
{
    const char *sku = jstr(s, "sku");
    if (sku)
        json_object_set(a->stock, sku, s);
}

static void on_reservation(struct audit *a, json_t *r)
{
    const char *oid = jstr(r, "order_id");
    if (oid)
        json_object_set(a->reservations, oid, r);
}

static void on_adjustment(struct audit *a, json_t *adj)
{
    const char *sku = jstr(adj, "sku");
    const char *kind = jstr(adj, "kind");
    if (!sku || !kind ||
        (strcmp(kind, "set") != 0 && strcmp(kind, "adjustment") != 0))
        return;
    json_int_t sum = jint(a->adjusted, sku) + jint(adj, "delta");
    json_object_set_new(a->adjusted, sku, json_integer(sum));
}

static void on_note(struct audit *a, json_t *n)
{
    const char *oid = jstr(n, "order_id");
    if (!oid)
        return;
    json_t *list = json_object_get(a->notes, oid);
    if (!list) {
        list = json_array();
        json_object_set_new(a->notes, oid, list);
    }
    json_array_append(list, n);
}

static bool retryable(const struct cli_fetch_result *r)
{
    return r->err != MOAT_OK || r->status == 429 || r->status == 502 ||
           r->status == 503 || r->status == 504;
}

static void on_reply(const struct cli_fetch_result *r, void *arg)
{
    struct req *q = arg;
    struct audit *a = q->a;
    if (a->cancelling) {
        req_free(q);
        return;
    }
    if (retryable(r)) {
        if (++q->tries < MAX_TRIES) {
            if (a->nretry == a->cap_retry) {
                a->cap_retry = a->cap_retry ? a->cap_retry * 2 : 64;
                a->retry = realloc(a->retry, a->cap_retry * sizeof(*a->retry));
                if (!a->retry)
                    moat_die("out of memory");
            }
            a->retry[a->nretry++] = q;
            return;
        }
        char why[64];
        if (r->err != MOAT_OK)
            snprintf(why, sizeof(why), "%s", moat_strerror(r->err));
        else
            snprintf(why, sizeof(why), "HTTP %ld", r->status);
        unreachable(a, q, why);
        req_free(q);
        return;
    }
    if (r->status == 401 || r->status == 403) {
        unreachable(a, q,
                    q->svc ? "the operator's token was refused (was the "
                             "service started by this deployment's moat up?)"
                           : "the merchant key was refused");
        req_free(q);
        return;
    }
    json_t *body = json_loadb(r->body, r->body_len, 0, NULL);
    switch (q->kind) {
    case RQ_PAGE:
        if (r->status == 404 && q->pg->optional && q->pg->pages == 0) {
            q->pg->missing = true;
        } else if (r->status == 400 && q->pg->limit > PAGE_LIMIT_SMALL) {
            q->pg->limit = PAGE_LIMIT_SMALL; /* a smaller page size */
            struct req *n = req_new(a, RQ_PAGE, q->svc, page_path(q->pg));
            n->pg = q->pg;
            issue(a, n);
        } else if (r->status != 200 || !page_done(a, q, body)) {
            unreachable(a, q, "not a list answer");
        }
        break;
    case RQ_PAYMENTS:
        if (r->status == 200 && list_items(body))
            a->payments_of[q->idx] = json_incref(list_items(body));
        else
            unreachable(a, q, "unexpected answer");
        break;
    case RQ_RESERVATION:
        if (r->status == 200 && json_is_object(body))
            on_reservation(a, body);
        else if (r->status != 404)
            unreachable(a, q, "unexpected answer");
        break;
    case RQ_PAY_SUMMARY:
        if (r->status == 200 && json_is_object(body))
            a->pay_summary = json_incref(body);
        else
            unreachable(a, q, "unexpected answer");
        break;
    case RQ_PROV_SUMMARY:
        if (r->status == 200 && json_is_object(body))
            a->prov_summary = json_incref(body);
        else
            unreachable(a, q, "unexpected answer");
        break;
    }
    json_decref(body);
    req_free(q);
}

static void issue(struct audit *a, struct req *q)
{
    const char *hdrs[2] = {NULL, NULL};
    char *url;
    if (q->svc) {
        hdrs[0] = cli_optokens_get(a->tok, q->svc->name);
        char *base = deploy_base_url(q->svc);
        url = moat_xasprintf("%s%s", base, q->path);
        free(base);
    } else {
        hdrs[0] = a->provider_auth;
        url = moat_xasprintf("%s%s", a->provider_url, q->path);
    }
    cli_fetch(a->f, "GET", url, hdrs, NULL, CALL_TIMEOUT_MS, on_reply, q);
    free(url);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Run every queued call, retrying those that failed in rounds. */
static void run_all(struct audit *a)
{
    for (;;) {
        cli_fetcher_drain(a->f);
        if (a->nretry == 0)
            return;
        sleep_ms(RETRY_PAUSE_MS);
        size_t n = a->nretry;
        struct req **batch = a->retry;
        a->retry = NULL;
        a->nretry = a->cap_retry = 0;
        for (size_t i = 0; i < n; i++)
            issue(a, batch[i]);
        free(batch);
    }
}

/* ---- checks ---- */

static int line_cmp(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* "SKU-A:2,SKU-B:1": lines as a comparable text, SKUs sorted. Caller
 * frees. */
static char *lines_key(json_t *lines)
{
    size_t n = json_array_size(lines);
    char **v = moat_xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        json_t *l = json_array_get(lines, i);
        v[i] = moat_xasprintf("%s:%lld", jstr(l, "sku") ? jstr(l, "sku") : "?",
                              (long long)jint(l, "quantity"));
    }
    qsort(v, n, sizeof(*v), line_cmp);
    struct moat_buf b = MOAT_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        moat_buf_printf(&b, "%s%s", i ? "," : "", v[i]);
        free(v[i]);
    }
    free(v);
    if (!b.len)
        moat_buf_addstr(&b, "");
    return moat_buf_detach(&b, NULL);
}

/* Counts of a payment list by status. */
struct paycount {
    unsigned captured, authorized, pending, refunded, voided, declined, failed,
        other;
    json_t *captured_one; /* borrowed */
};

static void count_payments(json_t *items, struct paycount *c)
{
    memset(c, 0, sizeof(*c));
    size_t i;
    json_t *p;
    json_array_foreach(items, i, p)
    {
        const char *s = jstr(p, "status");
        s = s ? s : "";
        if (strcmp(s, "captured") == 0) {
            c->captured++;
            c->captured_one = p;
        } else if (strcmp(s, "authorized") == 0) {
            c->authorized++;
        } else if (strcmp(s, "pending") == 0) {
            c->pending++;
        } else if (strcmp(s, "refunded") == 0) {
            c->refunded++;
        } else if (strcmp(s, "voided") == 0) {
            c->voided++;
        } else if (strcmp(s, "declined") == 0) {
            c->declined++;
        } else if (strcmp(s, "failed") == 0) {
            c->failed++;
        } else {
            c->other++;
        }
    }
}

/* Which order status a notification is about, from whichever of its
 * members names it ("status": "placed", "type": "OrderPlaced"...). */
static const char *note_kind(json_t *n)
{
    static const char *const members[] = {"kind", "type", "event", "template",
                                          "status"};
    static const char *const kinds[] = {"placed", "confirmed", "cancelled"};
    for (size_t m = 0; m < MOAT_ARRAY_LEN(members); m++) {
        const char *v = jstr(n, members[m]);
        for (size_t k = 0; v && k < MOAT_ARRAY_LEN(kinds); k++)
            if (strcasestr(v, kinds[k]))
                return kinds[k];
    }
    return "unknown";
}

static void check_notes(struct audit *a, json_t *o, const char *status,
                        const struct paycount *pc)
{
    if (!a->pg_notes.svc)
        return;
    const char *oid = jstr(o, "id");
    json_t *notes = oid ? json_object_get(a->notes, oid) : NULL;
    unsigned placed = 0, confirmed = 0, cancelled = 0, unknown = 0;
    size_t i;
    json_t *n;
    json_array_foreach(notes, i, n)
    {
        const char *k = note_kind(n);
        if (strcmp(k, "placed") == 0)
            placed++;
        else if (strcmp(k, "confirmed") == 0)
            confirmed++;
        else if (strcmp(k, "cancelled") == 0)
            cancelled++;
        else
            unknown++;
    }
    bool pending = strcmp(status, "pending") == 0;
    bool conf = strcmp(status, "confirmed") == 0;
    bool canc = strcmp(status, "cancelled") == 0;
    if (placed > 1 || (!pending && placed != 1))
        violation(a, "notification-placed", o, NULL,
                  "%u \"placed\" notifications, expected 1", placed);
    if (conf && confirmed != 1)
        violation(a, "notification-confirmed", o, NULL,
                  "%u \"confirmed\" notifications for a confirmed order, "
                  "expected 1",
                  confirmed);
    if (canc && cancelled != 1)
        violation(a, "notification-cancelled", o, NULL,
                  "%u \"cancelled\" notifications for a cancelled order, "
                  "expected 1",
                  cancelled);
    /* A confirmed order that the customer cancelled was refunded: its
     * "confirmed" notice is history, not a duplicate. */
    if (canc && confirmed > (pc && pc->refunded ? 1u : 0u))
        violation(a, "notification-confirmed", o, NULL,
                  "%u \"confirmed\" notifications for a cancelled order "
                  "that %s",
                  confirmed,
                  pc && pc->refunded ? "was refunded once"
                                     : "was never captured");
    if (pending && (confirmed || cancelled))
        violation(a, "notification-early", o, NULL,
                  "a pending order has %u confirmed and %u cancelled "
                  "notifications",
                  confirmed, cancelled);
    if (unknown)
        violation(a, "notification-unknown", o, NULL,
                  "%u notifications of no known kind", unknown);
}

static void check_order(struct audit *a, json_t *o, size_t idx, time_t now)
{
    const char *status = jstr(o, "status");
    const char *step = jstr(o, "step");
    const char *oid = jstr(o, "id");
    status = status ? status : "?";
    step = step ? step : "?";
    json_t *res = oid ? json_object_get(a->reservations, oid) : NULL;
    const char *rstate = res ? jstr(res, "state") : NULL;
    json_t *pays = a->payments_of ? a->payments_of[idx] : NULL;
    struct paycount pc;
    count_payments(pays, &pc);

    if (strcmp(status, "confirmed") == 0) {
        if (pays) {
            unsigned live = pc.authorized + pc.pending + pc.refunded +
                            pc.voided + pc.declined + pc.other;
            if (pc.captured != 1)
                violation(a, "payment-not-captured", o, NULL,
                          "confirmed order has %u captured payments, "
                          "expected 1",
                          pc.captured);
            else if (jint(pc.captured_one, "amount") != jint(o, "total") ||
                     !json_equal(json_object_get(pc.captured_one, "currency"),
                                 json_object_get(o, "currency")))
                violation(a, "payment-amount", o, NULL,
                          "captured %lld %s, order total %lld %s",
                          (long long)jint(pc.captured_one, "amount"),
                          jstr(pc.captured_one, "currency")
                              ? jstr(pc.captured_one, "currency")
                              : "?",
                          (long long)jint(o, "total"),
                          jstr(o, "currency") ? jstr(o, "currency") : "?");
            else if (jstr(o, "payment_id") &&
                     strcmp(jstr(o, "payment_id"),
                            jstr(pc.captured_one, "id")
                                ? jstr(pc.captured_one, "id")
                                : "") != 0)
                violation(a, "payment-id", o, NULL,
                          "order names payment %s, the captured one is %s",
                          jstr(o, "payment_id"), jstr(pc.captured_one, "id"));
            if (live)
                violation(a, "payment-extra", o, NULL,
                          "confirmed order has %u other payments besides the "
                          "capture (not failed)",
                          live);
        }
        if (!res || !rstate || strcmp(rstate, "committed") != 0) {
            violation(a, "reservation-not-committed", o, NULL,
                      "confirmed order's reservation is %s",
                      rstate ? rstate : "missing");
        } else {
            char *want = lines_key(json_object_get(o, "lines"));
            char *got = lines_key(json_object_get(res, "lines"));
            if (strcmp(want, got) != 0)
                violation(a, "reservation-lines", o, NULL,
                          "order lines [%s], committed reservation [%s]", want,
                          got);
            free(want);
            free(got);
        }
    } else if (strcmp(status, "cancelled") == 0) {
        if (pays && (pc.captured || pc.authorized || pc.pending || pc.other))
            violation(a, "payment-not-released", o, NULL,
                      "cancelled order has payments captured %u, authorized "
                      "%u, pending %u, unknown %u (expected refunded, voided, "
                      "declined or none)",
                      pc.captured, pc.authorized, pc.pending, pc.other);
        if (rstate &&
            (strcmp(rstate, "held") == 0 || strcmp(rstate, "committed") == 0))
            violation(a, "reservation-not-released", o, NULL,
                      "cancelled order's reservation is %s", rstate);
    } else if (strcmp(status, "pending") == 0) {
        json_int_t deadline = jint(o, "deadline_at");
        json_int_t updated = jint(o, "updated_at");
        bool timed =
            strcmp(step, "reserving") == 0 || strcmp(step, "authorizing") == 0;
        /* A step with a deadline is judged by it; any other (confirming,
         * compensating, a timed step that lost its deadline, a step nobody
         * knows) by how long the order has not moved. */
        if (timed && deadline) {
            if (now > deadline + (json_int_t)a->o->slack_s)
                violation(a, "saga-stuck", o, NULL,
                          "pending in step %s %lld s past its deadline", step,
                          (long long)(now - deadline));
        } else if (now - updated > (json_int_t)a->o->grace_s) {
            violation(a, "saga-stuck", o, NULL,
                      "pending in step %s%s for %lld s (grace %u s)", step,
                      timed ? " without a deadline" : "",
                      (long long)(now - updated), a->o->grace_s);
        }
    } else {
        violation(a, "order-status", o, NULL, "unknown status \"%s\"", status);
    }
    check_notes(a, o, status, pays ? &pc : NULL);
}

static void add_lines(json_t *sums, json_t *lines)
{
    size_t i;
    json_t *l;
    json_array_foreach(lines, i, l)
    {
        const char *sku = jstr(l, "sku");
        if (sku)
            json_object_set_new(
                sums, sku, json_integer(jint(sums, sku) + jint(l, "quantity")));
    }
}

/* Per SKU: returns the number of SKUs checked. */
static size_t check_stock(struct audit *a)
{
    json_t *held = json_object(), *committed = json_object();
    const char *oid;
    json_t *r;
    json_object_foreach(a->reservations, oid, r)
    {
        const char *st = jstr(r, "state");
        if (st && strcmp(st, "held") == 0)
            add_lines(held, json_object_get(r, "lines"));
        else if (st && strcmp(st, "committed") == 0)
            add_lines(committed, json_object_get(r, "lines"));
    }
    size_t checked = 0;
    const char *sku;
    json_t *s;
    json_object_foreach(a->stock, sku, s)
    {
        checked++;
        json_int_t on_hand = jint(s, "on_hand"), reserved = jint(s, "reserved"),
                   sold = jint(s, "sold");
        if (reserved != jint(held, sku))
            violation(a, "stock-reserved", NULL, sku,
                      "reserved %lld, held reservation lines sum to %lld",
                      (long long)reserved, (long long)jint(held, sku));
        if (sold != jint(committed, sku))
            violation(a, "stock-sold", NULL, sku,
                      "sold %lld, committed reservation lines sum to %lld",
                      (long long)sold, (long long)jint(committed, sku));
        if (!(reserved >= 0 && reserved <= on_hand))
            violation(a, "stock-bounds", NULL, sku,
                      "on_hand %lld, reserved %lld: expected on_hand >= "
                      "reserved >= 0",
                      (long long)on_hand, (long long)reserved);
        if (a->pg_adj.svc && !a->pg_adj.missing &&
            on_hand + sold != jint(a->adjusted, sku))
            violation(a, "stock-ledger", NULL, sku,
                      "on_hand %lld + sold %lld != %lld set/adjusted in the "
                      "adjustment log",
                      (long long)on_hand, (long long)sold,
                      (long long)jint(a->adjusted, sku));
    }
    /* Reserved or sold units of a SKU inventory does not list. */
    json_t *sums[2] = {held, committed};
    for (size_t k = 0; k < 2; k++)
        json_object_foreach(sums[k], sku, s)
        {
            if (!json_object_get(a->stock, sku) && json_integer_value(s))
                violation(a, "stock-missing", NULL, sku,
                          "%lld units %s by reservations of a SKU with no "
                          "stock record",
                          (long long)json_integer_value(s),
                          k ? "committed" : "held");
        }
    json_decref(held);
    json_decref(committed);
    return checked;
}

/* Held or committed reservations of orders that orders does not know (an
 * orders restored from a backup lost them: moat reconcile). */
static void check_unknown_orders(struct audit *a)
{
    json_t *known = json_object();
    size_t i;
    json_t *o;
    json_array_foreach(a->orders, i, o)
    {
        if (jstr(o, "id"))
            json_object_set_new(known, jstr(o, "id"), json_true());
    }
    const char *oid;
    json_t *r;
    json_object_foreach(a->reservations, oid, r)
    {
        const char *st = jstr(r, "state");
        if (json_object_get(known, oid) || !st ||
            (strcmp(st, "held") != 0 && strcmp(st, "committed") != 0))
            continue;
        json_t *stub = json_pack("{s:s}", "id", oid);
        violation(a, "order-unknown", stub, NULL,
                  "inventory holds a %s reservation for an order orders does "
                  "not know (moat reconcile)",
                  st);
        json_decref(stub);
    }
    json_decref(known);
}

/* payments' books per currency in the provider's terms. */
static json_int_t pay_sum(json_t *cur, const char *const *statuses, size_t n,
                          const char *field)
{
    json_int_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += jint(json_object_get(cur, statuses[i]), field);
    return sum;
}

static void check_ledger(struct audit *a)
{
    static const char *const authorized[] = {"authorized", "captured", "voided",
                                             "refunded"};
    static const char *const captured[] = {"captured", "refunded"};
    static const char *const refunded[] = {"refunded"};
    static const char *const voided[] = {"voided"};
    static const char *const declined[] = {"declined"};
    static const char *const pending[] = {"pending"};
    json_t *pc = json_object_get(a->pay_summary, "currencies");
    json_t *vc = json_object_get(a->prov_summary, "currencies");
    if (json_is_false(json_object_get(a->prov_summary, "consistent")))
        violation(a, "provider-inconsistent", NULL, NULL,
                  "the provider's ledger disagrees with its own "
                  "authorizations (consistent: false)");
    json_t *currencies = json_object();
    const char *cur;
    json_t *v;
    json_object_foreach(pc, cur, v)
    {
        json_object_set_new(currencies, cur, json_true());
    }
    json_object_foreach(vc, cur, v)
    {
        json_object_set_new(currencies, cur, json_true());
    }
    json_object_foreach(currencies, cur, v)
    {
        json_t *p = json_object_get(pc, cur), *q = json_object_get(vc, cur);
        struct {
            const char *name;
            json_int_t ours, theirs;
        } f[] = {
            {"authorized", pay_sum(p, authorized, 4, "amount"),
             jint(q, "authorized")},
            {"captured", pay_sum(p, captured, 2, "amount"),
             jint(q, "captured")},
            {"refunded", pay_sum(p, refunded, 1, "amount"),
             jint(q, "refunded")},
            {"voided", pay_sum(p, voided, 1, "amount"), jint(q, "voided")},
            {"authorizations", pay_sum(p, authorized, 4, "count"),
             jint(q, "authorizations")},
            {"declines", pay_sum(p, declined, 1, "count"), jint(q, "declines")},
        };
        for (size_t i = 0; i < MOAT_ARRAY_LEN(f); i++)
            if (f[i].ours != f[i].theirs)
                violation(a, "ledger-mismatch", NULL, NULL,
                          "%s %s: payments %lld, provider %lld (payments has "
                          "%lld pending)",
                          cur, f[i].name, (long long)f[i].ours,
                          (long long)f[i].theirs,
                          (long long)pay_sum(p, pending, 1, "count"));
    }
    json_decref(currencies);
}

/* ---- the run ---- */

static void pager_init(struct pager *pg, const char *what,
                       const struct deploy_service *svc, const char *base,
                       bool optional, void (*item)(struct audit *, json_t *))
{
    *pg = (struct pager){.what = what,
                         .svc = svc,
                         .base = base,
                         .limit = PAGE_LIMIT,
                         .optional = optional,
                         .item = item};
}

static void queue_page(struct audit *a, struct pager *pg)
{
    if (!pg->svc)
        return;
    struct req *q = req_new(a, RQ_PAGE, pg->svc, page_path(pg));
    q->pg = pg;
    issue(a, q);
}

static void count_into(json_t *obj, const char *key)
{
    json_object_set_new(obj, key, json_integer(jint(obj, key) + 1));
}

static void print_counts(const char *label, json_t *obj)
{
    printf("%s", label);
    const char *k;
    json_t *v;
    bool first = true;
    json_object_foreach(obj, k, v)
    {
        printf("%s%s %lld", first ? " " : ", ", k,
               (long long)json_integer_value(v));
        first = false;
    }
    if (first)
        printf(" none");
    printf("\n");
}

/* Set a up for d and gather the lists (step 1 of an audit). Returns
 * false (after saying why, or with a.unreachable set) when something
 * could not be read. */
static bool gather_lists(struct audit *a, const struct deploy *d,
                         const struct cli_audit_opts *o)
{
    *a = (struct audit){.d = d, .o = o};
    a->orders = json_array();
    a->stock = json_object();
    a->reservations = json_object();
    a->adjusted = json_object();
    a->notes = json_object();
    a->violations = json_array();
    a->tok = cli_optokens_new(d);
    a->f = cli_fetcher_new(o->parallel ? o->parallel : CLI_AUDIT_PARALLEL);
    a->orders_svc = deploy_find(d, "orders");
    a->payments = deploy_find(d, "payments");
    a->inventory = deploy_find(d, "inventory");
    a->notifications = deploy_find(d, "notifications");
    if (!a->f)
        return false;
    if (!a->orders_svc) {
        cli_error("deployment \"%s\" has no service \"orders\": nothing to "
                  "audit",
                  d->name);
        return false;
    }
    /* Fail early and clearly when the operator has no key. */
    if (!cli_optokens_get(a->tok, "orders"))
        return false;
    if (cli_provider_of(d, &a->provider_url, &a->provider_key))
        a->provider_auth =
            moat_xasprintf("Authorization: Bearer %s", a->provider_key);

    /* 1. The lists, all services at once. */
    pager_init(&a->pg_orders, "orders", a->orders_svc, "/v1/orders", false,
               on_order);
    pager_init(&a->pg_stock, "stock", a->inventory, "/v1/stock", false,
               on_stock);
    pager_init(&a->pg_res, "reservations", a->inventory, "/v1/reservations",
               true, on_reservation);
    pager_init(&a->pg_adj, "adjustments", a->inventory, "/v1/adjustments", true,
               on_adjustment);
    queue_page(a, &a->pg_orders);
    queue_page(a, &a->pg_stock);
    queue_page(a, &a->pg_res);
    queue_page(a, &a->pg_adj);
    pager_init(&a->pg_notes, "notifications", a->notifications,
               "/v1/notifications", false, on_note);
    queue_page(a, &a->pg_notes);
    if (a->payments)
        issue(a, req_new(a, RQ_PAY_SUMMARY, a->payments,
                         moat_xstrdup("/v1/payments/summary")));
    if (a->provider_auth)
        issue(a, req_new(a, RQ_PROV_SUMMARY, NULL,
                         moat_xstrdup("/v1/ledger/summary")));
    run_all(a);
    return !a->unreachable;
}

/* Step 2 of an audit: per final order, its payments, and its reservation
 * when inventory cannot list them. */
static bool gather_per_order(struct audit *a)
{
    size_t n = json_array_size(a->orders);
    a->payments_of = moat_xcalloc(n + 1, sizeof(*a->payments_of));
    for (size_t i = 0; i < n; i++) {
        json_t *ord = json_array_get(a->orders, i);
        const char *oid = jstr(ord, "id");
        const char *st = jstr(ord, "status");
        if (!oid)
            continue;
        char *esc = query_escape(oid);
        bool final = st && strcmp(st, "pending") != 0;
        if (a->payments && final) {
            struct req *q =
                req_new(a, RQ_PAYMENTS, a->payments,
                        moat_xasprintf("/v1/payments?order_id=%s", esc));
            q->idx = i;
            issue(a, q);
            a->payment_gets++;
        }
        if (a->inventory && a->pg_res.missing && final) {
            struct req *q = req_new(a, RQ_RESERVATION, a->inventory,
                                    moat_xasprintf("/v1/reservations/%s", esc));
            q->idx = i;
            issue(a, q);
            a->reservation_gets++;
        }
        free(esc);
    }
    run_all(a);
    return !a->unreachable;
}

static void audit_release(struct audit *a);

int cli_audit_run(const struct deploy *d, const struct cli_audit_opts *o)
{
    struct audit a;
    int ret = CLI_AUDIT_UNREACHABLE;
    uint64_t t0 = moat_mono_ms();
    if (!gather_lists(&a, d, o))
        goto out;

    /* 2. Per order: its payments, and its reservation when inventory
     * cannot list them. */
    if (!gather_per_order(&a))
        goto out;
    size_t n = json_array_size(a.orders);

    /* 3. The checks. */
    time_t now = time(NULL);
    json_t *by_status = json_object(), *reasons = json_object(),
           *steps = json_object();
    for (size_t i = 0; i < n; i++) {
        json_t *ord = json_array_get(a.orders, i);
        const char *st = jstr(ord, "status");
        count_into(by_status, st ? st : "?");
        if (st && strcmp(st, "cancelled") == 0)
            count_into(reasons, jstr(ord, "cancel_reason")
                                    ? jstr(ord, "cancel_reason")
                                    : "?");
        if (st && strcmp(st, "pending") == 0)
            count_into(steps, jstr(ord, "step") ? jstr(ord, "step") : "?");
        check_order(&a, ord, i, now);
    }
    size_t skus = a.inventory ? check_stock(&a) : 0;
    check_unknown_orders(&a);
    bool ledger = a.pay_summary && a.prov_summary;
    if (ledger)
        check_ledger(&a);
    double secs = (double)(moat_mono_ms() - t0) / 1000.0;

    json_t *notes = json_array();
    if (!a.inventory)
        json_array_append_new(notes, json_string("no inventory service: "
                                                 "reservations and stock not "
                                                 "checked"));
    if (a.pg_res.missing)
        json_array_append_new(
            notes, json_string("inventory has no GET /v1/reservations list: "
                               "reservations read per final order, held ones "
                               "of unknown orders not seen"));
    if (a.inventory && a.pg_adj.missing)
        json_array_append_new(
            notes, json_string("inventory has no GET /v1/adjustments: on_hand "
                               "+ sold not checked against the log"));
    if (!a.notifications)
        json_array_append_new(
            notes, json_string("no notifications service: notifications not "
                               "checked"));
    if (!ledger)
        json_array_append_new(
            notes, json_string("no payments service or provider key: ledgers "
                               "not compared"));

    if (o->json) {
        json_t *out = json_pack(
            "{s:s, s:b, s:I, s:o, s:{s:I, s:o, s:o, s:o, s:I, s:I, s:I, s:I, "
            "s:b, s:f}, s:o}",
            "deployment", d->name, "ok", a.nviolations == 0, "violation_count",
            (json_int_t)a.nviolations, "violations", json_incref(a.violations),
            "summary", "orders", (json_int_t)n, "by_status",
            json_incref(by_status), "cancel_reasons", json_incref(reasons),
            "pending_steps", json_incref(steps), "skus", (json_int_t)skus,
            "reservations", (json_int_t)json_object_size(a.reservations),
            "payment_lookups", (json_int_t)a.payment_gets, "notifications",
            (json_int_t)a.pg_notes.items, "ledger_compared", ledger, "seconds",
            secs, "notes", json_incref(notes));
        char *text = json_dumps(out, JSON_INDENT(2));
        puts(text);
        free(text);
        json_decref(out);
    } else {
        if (a.printed < a.nviolations)
            printf("... %zu more violations (see --json)\n",
                   a.nviolations - a.printed);
        printf("audit of deployment \"%s\": %zu orders, %zu SKUs, %zu "
               "reservations, %zu notifications, %u payment lookups, "
               "ledgers %s (%.2f s)\n",
               d->name, n, skus, json_object_size(a.reservations),
               a.pg_notes.items, a.payment_gets,
               ledger ? "compared" : "not compared", secs);
        print_counts("  orders by status:", by_status);
        print_counts("  cancel reasons:", reasons);
        if (json_object_size(steps))
            print_counts("  pending by step:", steps);
        size_t i;
        json_t *v;
        json_array_foreach(notes, i, v)
        {
            printf("  note: %s\n", json_string_value(v));
        }
        printf("result: %zu violation%s\n", a.nviolations,
               a.nviolations == 1 ? "" : "s");
    }
    json_decref(notes);
    json_decref(by_status);
    json_decref(reasons);
    json_decref(steps);
    ret = a.nviolations ? CLI_AUDIT_VIOLATIONS : CLI_AUDIT_CLEAN;

out:
    if (ret == CLI_AUDIT_UNREACHABLE && a.unreachable)
        cli_error("audit incomplete: %u calls got no usable answer; first: %s",
                  a.unreachable, a.unreachable_what);
    audit_release(&a);
    return ret;
}

static void audit_release(struct audit *a)
{
    a->cancelling = true;
    cli_fetcher_free(a->f);
    for (size_t i = 0; i < a->nretry; i++)
        req_free(a->retry[i]);
    free(a->retry);
    cli_optokens_free(a->tok);
    size_t n_orders = json_array_size(a->orders);
    for (size_t i = 0; a->payments_of && i < n_orders; i++)
        json_decref(a->payments_of[i]);
    free(a->payments_of);
    json_decref(a->orders);
    json_decref(a->stock);
    json_decref(a->reservations);
    json_decref(a->adjusted);
    json_decref(a->notes);
    json_decref(a->violations);
    json_decref(a->pay_summary);
    json_decref(a->prov_summary);
    struct pager *pgs[] = {&a->pg_orders, &a->pg_stock, &a->pg_res, &a->pg_adj,
                           &a->pg_notes};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(pgs); i++) {
        free(pgs[i]->cursor);
        free(pgs[i]->cursor_name);
    }
    free(a->provider_url);
    if (a->provider_key) {
        sodium_memzero(a->provider_key, strlen(a->provider_key));
        free(a->provider_key);
    }
    if (a->provider_auth) {
        sodium_memzero(a->provider_auth, strlen(a->provider_auth));
        free(a->provider_auth);
    }
}

bool cli_shop_gather(const struct deploy *d, unsigned parallel,
                     struct cli_shop_view *v)
{
    struct cli_audit_opts o = {.parallel = parallel, .quiet = true};
    struct audit a;
    bool ok = gather_lists(&a, d, &o) && gather_per_order(&a);
    if (!ok && a.unreachable)
        cli_error("cannot read the shop: %u calls got no usable answer; "
                  "first: %s",
                  a.unreachable, a.unreachable_what);
    *v = (struct cli_shop_view){
        .orders = json_incref(a.orders),
        .reservations = json_incref(a.reservations),
        .notes = json_incref(a.notes),
        .reservations_listed = a.inventory && !a.pg_res.missing,
        .payments = json_object(),
    };
    for (size_t i = 0; ok && a.payments_of && i < json_array_size(a.orders);
         i++) {
        const char *oid = jstr(json_array_get(a.orders, i), "id");
        if (oid && a.payments_of[i])
            json_object_set(v->payments, oid, a.payments_of[i]);
    }
    audit_release(&a);
    return ok;
}

void cli_shop_view_release(struct cli_shop_view *v)
{
    json_decref(v->orders);
    json_decref(v->reservations);
    json_decref(v->notes);
    json_decref(v->payments);
    *v = (struct cli_shop_view){0};
}

int cli_cmd_audit(int argc, char **argv)
{
    static const struct option opts[] = {
        {"deployment", required_argument, NULL, 'f'},
        {"file", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"grace", required_argument, NULL, 'g'},
        {"parallel", required_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    struct cli_audit_opts o = {.grace_s = CLI_AUDIT_GRACE_S,
                               .slack_s = CLI_AUDIT_SLACK_S,
                               .parallel = CLI_AUDIT_PARALLEL,
                               .max_print = CLI_AUDIT_MAX_PRINT};
    const char *file = NULL;
    int c;
    int64_t v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            file = optarg;
            break;
        case 'j':
            o.json = true;
            break;
        case 'g':
        case 'p':
            if (moat_parse_i64(optarg, c == 'g' ? 0 : 1,
                               c == 'g' ? 86400 : 1024, &v) != MOAT_OK)
                return cli_usage_error("audit",
                                       "%s must be a number from %d "
                                       "to %d",
                                       c == 'g' ? "--grace" : "--parallel",
                                       c == 'g' ? 0 : 1,
                                       c == 'g' ? 86400 : 1024);
            if (c == 'g')
                o.grace_s = (unsigned)v;
            else
                o.parallel = (unsigned)v;
            break;
        default:
            return cli_option_error("audit", c, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("audit", "unexpected argument '%s'",
                               argv[optind]);
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    int rc = cli_audit_run(d, &o);
    deploy_free(d);
    return rc;
}
