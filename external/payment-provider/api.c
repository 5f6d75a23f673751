/*
 * api.c - the provider's merchant API (/v1): authentication by API key,
 * Idempotency-Key handling, simulated latency and outages, and the
 * payment operations themselves. The SQL is in ledger.c; the client's
 * guide is docs/payment-provider.md.
 *
 * The life of a POST:
 *  1. gate(): an outage answers first (503, 500, or no answer at all),
 *     then the API key names the merchant (401 otherwise).
 *  2. The Idempotency-Key (400 without one) and the body (415/400) give
 *     the request's fingerprint: method, path and the body with its keys
 *     sorted, so a retry that reorders the JSON is still the same request.
 *  3. A stored response for the merchant's key is replayed (same status,
 *     body and Location, plus Idempotent-Replayed: true) when the
 *     fingerprint matches, else 422. A request with the key still held
 *     (below) gets 409, or 422 when its body differs.
 *  4. The body is validated (422 with every bad field). Validation
 *     failures are not stored: the operation never started, so the key
 *     stays free for a corrected request.
 *  5. The request is held on a timer for the simulated latency: this is
 *     what makes "in progress" real. When the timer fires the operation
 *     runs in one transaction together with its ledger rows and the
 *     idempotency record of its response, whatever the outcome (201, or a
 *     404/409/422 about the payment's state), and then the reply is sent.
 *
 * "In progress" lives only in memory, on purpose: an operation's effect
 * and its record commit together at the end, so a crash while a request
 * is held leaves nothing behind, and the client's retry simply runs it.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "payprovider.h"

#define PROBLEM_NS        "urn:payprovider:problem:"
#define AUTH_PREFIX       "auth_"
#define CAPTURE_PREFIX    "cap_"
#define REFUND_PREFIX     "ref_"
#define DECLINE_TEST_CARD "tok_decline"
#define APPROVE_TEST_CARD "tok_ok"
#define LOCATION_MAX      (PP_ID_MAX + 32)

enum op {
    OP_AUTHORIZE,
    OP_CAPTURE,
    OP_VOID,
    OP_REFUND,
    OP_OUTAGE, /* held by a "timeout" outage: no operation behind it */
};

static const char *const op_names[] = {
    [OP_AUTHORIZE] = "authorize", [OP_CAPTURE] = "capture", [OP_VOID] = "void",
    [OP_REFUND] = "refund",       [OP_OUTAGE] = "outage",
};

/* A request waiting on a timer: latency before its operation runs, or a
 * "timeout" outage that never answers. */
struct pp_held {
    struct pp_service *pp;
    struct moat_req *req; /* answered exactly once, then forgotten */
    struct event *timer;  /* owned */
    enum op op;
    const struct pp_merchant *merchant; /* into pp->cfg; NULL for outages */
    char key[PP_IDEM_KEY_MAX + 1];
    char fingerprint[PP_FINGERPRINT_LEN + 1];
    char target[PP_ID_MAX]; /* {id} of the path; "" when malformed */
    json_t *input;          /* the validated body; owned */
    struct pp_held *prev, *next;
};

/* The result of an operation, stored for replays before it is sent. */
struct outcome {
    int status;
    json_t *body; /* owned: a representation or a problem */
    bool problem;
    char location[LOCATION_MAX]; /* "" for none */
};

/*
 * Active ISO 4217 codes of circulating currencies (list one, 2025), sorted
 * for bsearch: the currencies moat's catalog prices products in, so every
 * order moat can take is one this processor can charge.
 */
static const char currencies[][4] = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM",
    "BBD", "BDT", "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN",
    "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD",
    "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL",
    "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY",
    "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
    "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK",
    "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP",
    "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT",
    "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER",
    "ZAR", "ZMW", "ZWG",
};

static int currency_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static bool currency_valid(const char *code)
{
    return strlen(code) == 3 &&
           bsearch(code, currencies, MOAT_ARRAY_LEN(currencies),
                   sizeof(currencies[0]), currency_cmp) != NULL;
}

/* ---- metrics ---- */

static void count_idempotency(struct pp_service *pp, const char *result)
{
    const char *labels[] = {result};
    moat_metric_add(moat_metric_series(pp->m_idempotency, labels), 1);
}

static void count_operation(struct pp_service *pp, enum op op, int status)
{
    char st[8];
    snprintf(st, sizeof(st), "%d", status);
    const char *labels[] = {op_names[op], st};
    moat_metric_add(moat_metric_series(pp->m_operations, labels), 1);
}

/* ---- replies ---- */

MOAT_PRINTF(4, 5)
static json_t *problem_new(int status, const char *type, const char *title,
                           const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_t *p = moat_problem_new(status, detail);
    if (type)
        json_object_set_new(p, "type", json_string(type));
    if (title)
        json_object_set_new(p, "title", json_string(title));
    return p;
}

static void reply_not_found(struct moat_req *r, const char *what)
{
    moat_req_reply_problem(r, 404, "there is no %s with this id", what);
}

/* ---- held requests ---- */

static void held_unlink(struct pp_held *h)
{
    struct pp_service *pp = h->pp;
    if (h->prev)
        h->prev->next = h->next;
    else
        pp->held = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->prev = h->next = NULL;
    pp->nheld--;
    moat_metric_set(pp->m_held, (double)pp->nheld);
}

static void held_free(struct pp_held *h)
{
    if (h->timer)
        event_free(h->timer);
    json_decref(h->input);
    free(h);
}

/* The request held under the merchant's key, if any. A list walk: at
 * most PP_MAX_HELD entries, in a test double. */
static struct pp_held *held_find(struct pp_service *pp,
                                 const struct pp_merchant *m, const char *key)
{
    for (struct pp_held *h = pp->held; h; h = h->next)
        if (h->merchant == m && strcmp(h->key, key) == 0)
            return h;
    return NULL;
}

static void on_held_timer(evutil_socket_t fd, short what, void *arg);

/* Hold r for delay_ms; takes input. */
static void held_start(struct pp_service *pp, struct moat_req *r, enum op op,
                       const struct pp_merchant *m, const char *key,
                       const char *fingerprint, json_t *input,
                       unsigned delay_ms)
{
    struct pp_held *h = moat_xcalloc(1, sizeof(*h));
    h->pp = pp;
    h->req = r;
    h->op = op;
    h->merchant = m;
    h->input = input;
    if (key)
        snprintf(h->key, sizeof(h->key), "%s", key);
    if (fingerprint)
        snprintf(h->fingerprint, sizeof(h->fingerprint), "%s", fingerprint);
    const char *id = moat_req_param(r, "id");
    const char *prefix = op == OP_REFUND ? CAPTURE_PREFIX : AUTH_PREFIX;
    if (id && moat_id_valid(id, prefix))
        snprintf(h->target, sizeof(h->target), "%s", id);
    h->timer = evtimer_new(pp->base, on_held_timer, h);
    if (!h->timer)
        moat_die("evtimer_new failed");
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(h->timer, &tv);
    h->next = pp->held;
    if (pp->held)
        pp->held->prev = h;
    pp->held = h;
    pp->nheld++;
    moat_metric_set(pp->m_held, (double)pp->nheld);
}

/* ---- representations ---- */

static json_t *capture_json(const struct pp_authorization *a)
{
    if (a->status != PP_CAPTURED)
        return json_null();
    return json_pack("{s:s, s:I, s:I, s:I}", "id", a->capture_id, "amount",
                     (json_int_t)a->captured_amount, "refunded_amount",
                     (json_int_t)a->refunded_amount, "captured_at",
                     (json_int_t)(a->captured_ms / 1000));
}

static json_t *auth_json(const struct pp_authorization *a,
                         const struct pp_refund *refunds, size_t nrefunds)
{
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(a->id));
    json_object_set_new(j, "object", json_string("authorization"));
    json_object_set_new(j, "status",
                        json_string(pp_auth_status_name(a->status)));
    if (a->status == PP_DECLINED)
        json_object_set_new(j, "decline_code", json_string(a->decline_code));
    json_object_set_new(j, "amount", json_integer(a->amount));
    json_object_set_new(j, "currency", json_string(a->currency));
    json_object_set_new(j, "reference", json_string(a->reference));
    json_object_set_new(j, "captured_amount", json_integer(a->captured_amount));
    json_object_set_new(j, "refunded_amount", json_integer(a->refunded_amount));
    json_object_set_new(j, "capture", capture_json(a));
    json_t *list = json_array();
    for (size_t i = 0; i < nrefunds; i++)
        json_array_append_new(
            list, json_pack("{s:s, s:I, s:I}", "id", refunds[i].id, "amount",
                            (json_int_t)refunds[i].amount, "created_at",
                            (json_int_t)(refunds[i].created_ms / 1000)));
    json_object_set_new(j, "refunds", list);
    json_object_set_new(j, "created_at", json_integer(a->created_ms / 1000));
    json_object_set_new(j, "updated_at", json_integer(a->updated_ms / 1000));
    if (a->status == PP_VOIDED)
        json_object_set_new(j, "voided_at", json_integer(a->voided_ms / 1000));
    return j;
}

static json_t *refund_json(const struct pp_authorization *a,
                           const struct pp_refund *r)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:I, s:o}", "id",
                     r->id, "object", "refund", "capture_id", a->capture_id,
                     "authorization_id", a->id, "amount", (json_int_t)r->amount,
                     "currency", a->currency, "reference", a->reference,
                     "created_at", (json_int_t)(r->created_ms / 1000),
                     "capture", capture_json(a));
}

/* ---- operations (run inside the ledger transaction) ---- */

MOAT_PRINTF(4, 5)
static void outcome_problem(struct outcome *o, int status, const char *type,
                            const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    o->status = status;
    o->problem = true;
    o->body = problem_new(status, type, NULL, "%s", detail);
}

static void outcome_state_conflict(struct outcome *o,
                                   const struct pp_authorization *a,
                                   const char *action)
{
    outcome_problem(o, 409, PROBLEM_NS "payment-state",
                    "the authorization is %s: only an authorized payment "
                    "can be %s",
                    pp_auth_status_name(a->status), action);
    json_object_set_new(o->body, "payment_status",
                        json_string(pp_auth_status_name(a->status)));
}

static void outcome_amount_too_big(struct outcome *o, int64_t limit,
                                   const char *what)
{
    outcome_problem(o, 422, PROBLEM_NS "amount-exceeded",
                    "the amount exceeds the %s (%lld)", what, (long long)limit);
    char detail[128];
    snprintf(detail, sizeof(detail), "must not exceed the %s (%lld)", what,
             (long long)limit);
    moat_problem_add_error(o->body, "/amount", detail);
}

/* Load the held request's authorization; a missing one is an outcome. */
static int load_target(struct pp_held *h, struct pp_authorization *a,
                       bool *found, struct outcome *o)
{
    struct pp_ledger *l = h->pp->ledger;
    const char *what = h->op == OP_REFUND ? "capture" : "authorization";
    int rc = MOAT_ENOTFOUND;
    *found = false;
    if (h->target[0])
        rc = h->op == OP_REFUND
                 ? pp_ledger_auth_by_capture(l, h->merchant->id, h->target, a)
                 : pp_ledger_auth_get(l, h->merchant->id, h->target, a);
    if (rc == MOAT_ENOTFOUND) {
        /* Echo the id only when it has the shape of one: anything else
         * came straight from the client. */
        if (h->target[0])
            outcome_problem(o, 404, NULL, "there is no %s \"%s\"", what,
                            h->target);
        else
            outcome_problem(o, 404, NULL, "there is no %s with this id", what);
        return MOAT_OK;
    }
    *found = rc == MOAT_OK;
    return rc;
}

/* The processor's answer for a card: test cards first, then the dice. */
static void decide(struct pp_service *pp, struct pp_authorization *a)
{
    a->status = PP_AUTHORIZED;
    if (strcmp(a->card_token, DECLINE_TEST_CARD) == 0) {
        a->status = PP_DECLINED;
        snprintf(a->decline_code, sizeof(a->decline_code),
                 "insufficient_funds");
    } else if (strcmp(a->card_token, APPROVE_TEST_CARD) != 0) {
        /* Always one draw per such card, whatever the rate, so the n-th
         * authorization meets the n-th number of the seeded sequence. */
        double u = pp_rng_unit(&pp->decline_rng);
        if (u < pp->knobs.decline_rate) {
            a->status = PP_DECLINED;
            snprintf(a->decline_code, sizeof(a->decline_code), "do_not_honor");
        }
    }
}

static int run_authorize(struct pp_held *h, int64_t now, struct outcome *o)
{
    struct pp_authorization a = {0};
    json_t *in = h->input;
    moat_id_new(AUTH_PREFIX, a.id, sizeof(a.id));
    snprintf(a.merchant, sizeof(a.merchant), "%s", h->merchant->id);
    snprintf(a.reference, sizeof(a.reference), "%s",
             json_string_value(json_object_get(in, "reference")));
    snprintf(a.card_token, sizeof(a.card_token), "%s",
             json_string_value(json_object_get(in, "card_token")));
    snprintf(a.currency, sizeof(a.currency), "%s",
             json_string_value(json_object_get(in, "currency")));
    a.amount = json_integer_value(json_object_get(in, "amount"));
    a.created_ms = a.updated_ms = now;
    decide(h->pp, &a);
    int rc = pp_ledger_auth_insert(h->pp->ledger, &a);
    if (rc != MOAT_OK)
        return rc;
    o->status = 201;
    o->body = auth_json(&a, NULL, 0);
    snprintf(o->location, sizeof(o->location), "/v1/authorizations/%s", a.id);
    moat_log(MOAT_LOG_INFO, "authorization", "{s:s, s:s, s:s, s:I, s:s}", "id",
             a.id, "merchant", a.merchant, "status",
             pp_auth_status_name(a.status), "amount", (json_int_t)a.amount,
             "currency", a.currency);
    return MOAT_OK;
}

static int run_capture(struct pp_held *h, int64_t now, struct outcome *o)
{
    struct pp_authorization a;
    bool found;
    int rc = load_target(h, &a, &found, o);
    if (rc != MOAT_OK || !found)
        return rc;
    if (a.status != PP_AUTHORIZED) {
        outcome_state_conflict(o, &a, "captured");
        return MOAT_OK;
    }
    json_t *amount = json_object_get(h->input, "amount");
    int64_t value = amount ? json_integer_value(amount) : a.amount;
    if (value > a.amount) {
        outcome_amount_too_big(o, a.amount, "authorized amount");
        return MOAT_OK;
    }
    moat_id_new(CAPTURE_PREFIX, a.capture_id, sizeof(a.capture_id));
    a.status = PP_CAPTURED;
    a.captured_amount = value;
    a.captured_ms = a.updated_ms = now;
    rc = pp_ledger_capture(h->pp->ledger, &a);
    if (rc != MOAT_OK)
        return rc;
    o->status = 200;
    o->body = auth_json(&a, NULL, 0);
    moat_log(MOAT_LOG_INFO, "capture", "{s:s, s:s, s:I}", "authorization", a.id,
             "capture", a.capture_id, "amount", (json_int_t)value);
    return MOAT_OK;
}

static int run_void(struct pp_held *h, int64_t now, struct outcome *o)
{
    struct pp_authorization a;
    bool found;
    int rc = load_target(h, &a, &found, o);
    if (rc != MOAT_OK || !found)
        return rc;
    if (a.status != PP_AUTHORIZED) {
        outcome_state_conflict(o, &a, "voided");
        return MOAT_OK;
    }
    rc = pp_ledger_void(h->pp->ledger, &a, now);
    if (rc != MOAT_OK)
        return rc;
    a.status = PP_VOIDED;
    a.voided_ms = a.updated_ms = now;
    o->status = 200;
    o->body = auth_json(&a, NULL, 0);
    moat_log(MOAT_LOG_INFO, "void", "{s:s}", "authorization", a.id);
    return MOAT_OK;
}

static int run_refund(struct pp_held *h, int64_t now, struct outcome *o)
{
    struct pp_authorization a;
    bool found;
    int rc = load_target(h, &a, &found, o);
    if (rc != MOAT_OK || !found)
        return rc;
    int64_t remaining = a.captured_amount - a.refunded_amount;
    if (remaining <= 0) {
        outcome_problem(o, 409, PROBLEM_NS "payment-state",
                        "the capture is refunded in full already");
        return MOAT_OK;
    }
    json_t *amount = json_object_get(h->input, "amount");
    int64_t value = amount ? json_integer_value(amount) : remaining;
    if (value > remaining) {
        outcome_amount_too_big(o, remaining, "refundable amount");
        return MOAT_OK;
    }
    struct pp_refund r = {.amount = value, .created_ms = now};
    moat_id_new(REFUND_PREFIX, r.id, sizeof(r.id));
    rc = pp_ledger_refund(h->pp->ledger, &a, &r);
    if (rc != MOAT_OK)
        return rc;
    a.refunded_amount += value;
    a.updated_ms = now;
    o->status = 201;
    o->body = refund_json(&a, &r);
    moat_log(MOAT_LOG_INFO, "refund", "{s:s, s:s, s:I}", "capture",
             a.capture_id, "refund", r.id, "amount", (json_int_t)value);
    return MOAT_OK;
}

static int run(struct pp_held *h, int64_t now, struct outcome *o)
{
    switch (h->op) {
    case OP_AUTHORIZE:
        return run_authorize(h, now, o);
    case OP_CAPTURE:
        return run_capture(h, now, o);
    case OP_VOID:
        return run_void(h, now, o);
    case OP_REFUND:
        return run_refund(h, now, o);
    case OP_OUTAGE:
    default:
        return MOAT_EINVAL;
    }
}

/*
 * Run the held operation, store its response under the key in the same
 * transaction, and send it. Frees h.
 */
static void held_execute(struct pp_held *h)
{
    struct pp_service *pp = h->pp;
    struct moat_req *r = h->req;
    struct outcome o = {0};
    struct pp_idem_record rec = {0};
    int64_t now = moat_wall_ms();

    held_unlink(h);
    moat_log_set_trace(moat_req_trace(r));
    int rc = pp_ledger_begin(pp->ledger);
    if (rc != MOAT_OK)
        goto fault;
    rc = run(h, now, &o);
    if (rc != MOAT_OK)
        goto fault;
    if (o.problem) {
        /* What moat_req_reply_problem_json() would add, added before
         * storing so that a replay sends the very same bytes. */
        json_object_set_new(o.body, "instance", json_string(moat_req_path(r)));
        json_object_set_new(o.body, "request_id",
                            json_string(moat_req_trace(r)->request_id));
    }
    rec.body = json_dumps(o.body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!rec.body)
        moat_die("cannot serialise a response");
    rec.status = o.status;
    rec.content_type = moat_xstrdup(o.problem ? "application/problem+json"
                                              : "application/json");
    rec.location = o.location[0] ? moat_xstrdup(o.location) : NULL;
    rec.created_ms = now;
    memcpy(rec.fingerprint, h->fingerprint, sizeof(rec.fingerprint));
    rc = pp_ledger_idem_put(pp->ledger, h->merchant->id, h->key, &rec);
    if (rc == MOAT_OK)
        rc = pp_ledger_commit(pp->ledger);
    if (rc != MOAT_OK)
        goto fault;
    count_operation(pp, h->op, o.status);
    if (rec.location)
        moat_req_set_header(r, "Location", rec.location);
    moat_req_reply(r, o.status, rec.content_type, rec.body, strlen(rec.body));
    goto cleanup;

fault:
    /* Nothing was recorded, not even the key: the retry runs afresh. */
    pp_ledger_rollback(pp->ledger);
    count_operation(pp, h->op, rc == MOAT_EBUSY ? 503 : 500);
    moat_req_reply_store_error(r, rc, "ledger", "serve the request");

cleanup:
    moat_log_set_trace(NULL);
    pp_idem_record_release(&rec);
    json_decref(o.body);
    held_free(h);
}

/* A "timeout" outage ends: the client has long given up, or we stop. */
static void held_outage_end(struct pp_held *h, const char *why)
{
    struct moat_req *r = h->req;
    held_unlink(h);
    moat_req_set_header(r, "Retry-After", "1");
    moat_req_reply_problem_json(
        r, problem_new(503, PROBLEM_NS "provider-outage", NULL,
                       "the payment provider did not answer (simulated "
                       "timeout outage): %s",
                       why));
    held_free(h);
}

static void on_held_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pp_held *h = arg;
    if (h->op == OP_OUTAGE)
        held_outage_end(h, "the request was held for the longest time a "
                           "client may wait");
    else
        held_execute(h);
}

void pp_api_flush(struct pp_service *pp)
{
    /* Latency holds complete as they would have: their clients are
     * waiting for the outcome, and it is only a timer early. */
    while (pp->held) {
        struct pp_held *h = pp->held;
        evtimer_del(h->timer);
        if (h->op == OP_OUTAGE)
            held_outage_end(h, "the provider is shutting down");
        else
            held_execute(h);
    }
}

void pp_api_end_outage_holds(struct pp_service *pp)
{
    struct pp_held *h = pp->held, *next;
    for (; h; h = next) {
        next = h->next;
        if (h->op == OP_OUTAGE) {
            evtimer_del(h->timer);
            held_outage_end(h, "the outage is over; retry");
        }
    }
}

static void on_drain(void *arg)
{
    pp_api_flush(arg);
}

/* ---- the gate: outage, then the merchant's API key ---- */

static bool hold_capacity(struct pp_service *pp, struct moat_req *r)
{
    if (pp->nheld < PP_MAX_HELD)
        return true;
    moat_req_set_header(r, "Retry-After", "1");
    moat_req_reply_problem(r, 503,
                           "the payment provider is overloaded (%d requests "
                           "in progress); retry",
                           PP_MAX_HELD);
    return false;
}

static void reply_outage(struct pp_service *pp, struct moat_req *r)
{
    switch (pp->knobs.outage_mode) {
    case PP_OUTAGE_TIMEOUT:
        if (hold_capacity(pp, r))
            held_start(pp, r, OP_OUTAGE, NULL, NULL, NULL, NULL,
                       PP_TIMEOUT_HOLD_MS);
        return;
    case PP_OUTAGE_500:
        moat_req_reply_problem_json(
            r, problem_new(500, PROBLEM_NS "provider-outage", NULL,
                           "the payment provider failed (simulated "
                           "outage)"));
        return;
    case PP_OUTAGE_503:
    default:
        moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem_json(
            r, problem_new(503, PROBLEM_NS "provider-outage", NULL,
                           "the payment provider is unavailable (simulated "
                           "outage)"));
        return;
    }
}

/* The calling merchant, or NULL after replying. */
static const struct pp_merchant *gate(struct moat_req *r, struct pp_service *pp)
{
    if (pp->knobs.outage) {
        reply_outage(pp, r);
        return NULL;
    }
    const char *secret = pp_bearer(moat_req_header(r, "Authorization"));
    const struct pp_merchant *m =
        secret ? pp_config_merchant(&pp->cfg, secret) : NULL;
    if (m)
        return m;
    moat_log(MOAT_LOG_WARN, "merchant authentication failed", "{s:s, s:b}",
             "peer", moat_req_peer(r), "credential", secret != NULL);
    moat_req_set_header(r, "WWW-Authenticate",
                        "Bearer realm=\"moat-payprovider\"");
    moat_req_reply_problem(r, 401,
                           "a merchant API key is required: "
                           "Authorization: Bearer <key>");
    return NULL;
}

/* ---- POST: idempotency, validation, hold ---- */

/*
 * The Idempotency-Key, as a bare token or a structured-field string
 * ("..."; escapes are not accepted). false after replying 400.
 */
static bool idempotency_key(struct moat_req *r, char out[PP_IDEM_KEY_MAX + 1])
{
    const char *v = moat_req_header(r, "Idempotency-Key");
    if (!v) {
        moat_req_reply_problem_json(
            r, problem_new(400, PROBLEM_NS "idempotency-key-missing", NULL,
                           "every POST needs an Idempotency-Key header, "
                           "unique per operation and reused for its "
                           "retries"));
        return false;
    }
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    bool ok = n >= 1 && n <= PP_IDEM_KEY_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = v[i] > ' ' && v[i] <= '~' && v[i] != '"' && v[i] != '\\';
    if (!ok) {
        moat_req_reply_problem_json(
            r, problem_new(400, PROBLEM_NS "idempotency-key-invalid", NULL,
                           "the Idempotency-Key must be 1 to %d visible "
                           "ASCII characters (optionally in double quotes)",
                           PP_IDEM_KEY_MAX));
        return false;
    }
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

/* The body as JSON; capture, void and refund may send none at all. */
static int read_body(struct moat_req *r, enum op op, json_t **out)
{
    size_t len = 0;
    moat_req_body(r, &len);
    if (len == 0 && op != OP_AUTHORIZE) {
        *out = json_object();
        return MOAT_OK;
    }
    return moat_req_json(r, out); /* replied 415 or 400 on failure */
}

/* SHA-256 of method, path and the body with sorted keys, in hex. */
static void fingerprint(struct moat_req *r, json_t *body,
                        char out[PP_FINGERPRINT_LEN + 1])
{
    crypto_hash_sha256_state st;
    uint8_t digest[crypto_hash_sha256_BYTES];
    const char *method = moat_method_name(moat_req_method(r));
    const char *path = moat_req_path(r);
    char *canon =
        json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (!canon)
        moat_die("cannot serialise a request body");
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)method, strlen(method));
    crypto_hash_sha256_update(&st, (const uint8_t *)"\n", 1);
    crypto_hash_sha256_update(&st, (const uint8_t *)path, strlen(path));
    crypto_hash_sha256_update(&st, (const uint8_t *)"\n", 1);
    crypto_hash_sha256_update(&st, (const uint8_t *)canon, strlen(canon));
    crypto_hash_sha256_final(&st, digest);
    moat_hex(out, digest, sizeof(digest));
    free(canon);
}

static void reply_key_reused(struct moat_req *r)
{
    moat_req_reply_problem_json(
        r, problem_new(422, PROBLEM_NS "idempotency-key-reused", NULL,
                       "this Idempotency-Key was used for a different "
                       "request (method, path or body); use a new key for "
                       "a new operation"));
}

static void replay(struct moat_req *r, const struct pp_idem_record *rec)
{
    moat_req_set_header(r, "Idempotent-Replayed", "true");
    if (rec->location)
        moat_req_set_header(r, "Location", rec->location);
    moat_req_reply(r, rec->status, rec->content_type, rec->body,
                   strlen(rec->body));
}

static bool token_chars_valid(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
            return false;
    return true;
}

static bool has_control_chars(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

static const char *const authorize_keys[] = {"amount", "currency", "card_token",
                                             "reference", NULL};
static const char *const amount_keys[] = {"amount", NULL};
static const char *const no_keys[] = {NULL};

/* Check the body for op; false after replying 422 with every error. */
static bool validate(struct moat_req *r, enum op op, json_t *body)
{
    struct moat_validation v;
    const char *s = NULL;
    int64_t amount;

    moat_validation_init(&v);
    if (!json_is_object(body)) {
        moat_validation_add(&v, "", "must be a JSON object, not %s",
                            moat_json_type_name(body));
        goto done;
    }
    switch (op) {
    case OP_AUTHORIZE:
        moat_v_known_keys(&v, body, "", authorize_keys);
        moat_v_int(&v, body, "", "amount", true, 1, PP_AMOUNT_MAX, &amount);
        if (moat_v_string(&v, body, "", "currency", true, 3, 3, &s) &&
            !currency_valid(s))
            moat_validation_add(&v, "/currency",
                                "must be an active ISO 4217 currency code "
                                "in upper case, such as \"EUR\"");
        if (moat_v_string(&v, body, "", "card_token", true, 1,
                          PP_CARD_TOKEN_MAX, &s) &&
            !token_chars_valid(s))
            moat_validation_add(&v, "/card_token",
                                "must consist of letters, digits, '_' and "
                                "'-'");
        if (moat_v_string(&v, body, "", "reference", true, 1, PP_REFERENCE_MAX,
                          &s) &&
            has_control_chars(s))
            moat_validation_add(&v, "/reference",
                                "must not contain control characters");
        break;
    case OP_CAPTURE:
    case OP_REFUND:
        moat_v_known_keys(&v, body, "", amount_keys);
        moat_v_int(&v, body, "", "amount", false, 1, PP_AMOUNT_MAX, &amount);
        break;
    case OP_VOID:
    case OP_OUTAGE:
    default:
        moat_v_known_keys(&v, body, "", no_keys);
        break;
    }

done:
    if (moat_validation_ok(&v)) {
        moat_validation_release(&v);
        return true;
    }
    moat_req_reply_problem_json(
        r, moat_validation_problem(&v, "the request has invalid fields"));
    moat_validation_release(&v);
    return false;
}

static unsigned latency(struct pp_service *pp)
{
    unsigned ms = pp->knobs.latency_ms;
    if (pp->knobs.latency_jitter_ms)
        ms += (unsigned)(pp_rng_next(&pp->jitter_rng) %
                         ((uint64_t)pp->knobs.latency_jitter_ms + 1));
    return ms;
}

static void handle_post(struct moat_req *r, struct pp_service *pp, enum op op)
{
    json_t *body = NULL;
    struct pp_idem_record rec = {0};
    char key[PP_IDEM_KEY_MAX + 1];
    char fp[PP_FINGERPRINT_LEN + 1];

    const struct pp_merchant *m = gate(r, pp);
    if (!m)
        return;
    if (!idempotency_key(r, key) || read_body(r, op, &body) != MOAT_OK)
        goto cleanup; /* replied */
    fingerprint(r, body, fp);

    int rc =
        pp_ledger_idem_get(pp->ledger, m->id, key,
                           moat_wall_ms() - pp->cfg.idempotency_ttl_ms, &rec);
    if (rc == MOAT_OK) {
        if (strcmp(rec.fingerprint, fp) != 0) {
            count_idempotency(pp, "mismatch");
            reply_key_reused(r);
        } else {
            count_idempotency(pp, "replayed");
            replay(r, &rec);
        }
        goto cleanup;
    }
    if (rc != MOAT_ENOTFOUND) {
        moat_req_reply_store_error(r, rc, "ledger", "serve the request");
        goto cleanup;
    }
    struct pp_held *other = held_find(pp, m, key);
    if (other) {
        if (strcmp(other->fingerprint, fp) != 0) {
            count_idempotency(pp, "mismatch");
            reply_key_reused(r);
            goto cleanup;
        }
        count_idempotency(pp, "in_progress");
        moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem_json(
            r, problem_new(409, PROBLEM_NS "idempotency-key-in-progress", NULL,
                           "a request with this Idempotency-Key is still "
                           "in progress; retry after it completes"));
        goto cleanup;
    }
    if (!validate(r, op, body) || !hold_capacity(pp, r))
        goto cleanup;
    count_idempotency(pp, "new");
    held_start(pp, r, op, m, key, fp, body, latency(pp));
    body = NULL;

cleanup:
    json_decref(body);
    pp_idem_record_release(&rec);
}

static void handle_authorize(struct moat_req *r, void *arg)
{
    handle_post(r, arg, OP_AUTHORIZE);
}

static void handle_capture(struct moat_req *r, void *arg)
{
    handle_post(r, arg, OP_CAPTURE);
}

static void handle_void(struct moat_req *r, void *arg)
{
    handle_post(r, arg, OP_VOID);
}

static void handle_refund(struct moat_req *r, void *arg)
{
    handle_post(r, arg, OP_REFUND);
}

/* ---- GET ---- */

/* Send a's representation with its refunds. */
static void reply_authorization(struct moat_req *r, struct pp_service *pp,
                                const struct pp_authorization *a)
{
    struct pp_refund *refunds = NULL;
    size_t n = 0;
    int rc = pp_ledger_refunds(pp->ledger, a->id, &refunds, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "ledger", "serve the request");
        return;
    }
    moat_req_reply_json(r, 200, auth_json(a, refunds, n));
    free(refunds);
}

static void handle_get(struct moat_req *r, void *arg)
{
    struct pp_service *pp = arg;
    struct pp_authorization a;
    const struct pp_merchant *m = gate(r, pp);
    if (!m)
        return;
    const char *id = moat_req_param(r, "id");
    if (!id || !moat_id_valid(id, AUTH_PREFIX)) {
        reply_not_found(r, "authorization");
        return;
    }
    int rc = pp_ledger_auth_get(pp->ledger, m->id, id, &a);
    if (rc == MOAT_ENOTFOUND)
        moat_req_reply_problem(r, 404, "there is no authorization \"%s\"", id);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "ledger", "serve the request");
    else
        reply_authorization(r, pp, &a);
}

/* true when s is valid UTF-8 (jansson refuses to build a string else). */
static bool utf8_valid(const char *s)
{
    json_t *j = json_string(s);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

static void handle_list(struct moat_req *r, void *arg)
{
    struct pp_service *pp = arg;
    struct pp_authorization *list = NULL;
    struct pp_refund *refunds = NULL;
    json_t *problem = NULL, *items = NULL;
    size_t n = 0;
    const struct pp_merchant *m = gate(r, pp);
    if (!m)
        return;

    void *iter = NULL;
    const char *k, *v;
    while (moat_req_query_next(r, &iter, &k, &v))
        if (strcmp(k, "reference") != 0)
            moat_problem_param_error(&problem, k,
                                     "unknown parameter (only reference "
                                     "is accepted)");
    const char *ref = moat_req_query(r, "reference");
    if (!ref)
        moat_problem_param_error(&problem, "reference",
                                 "required: the merchant reference to "
                                 "look up");
    else if (!utf8_valid(ref) || moat_utf8_len(ref) < 1 ||
             moat_utf8_len(ref) > PP_REFERENCE_MAX)
        moat_problem_param_error(&problem, "reference",
                                 "must be 1 to %d characters of UTF-8",
                                 PP_REFERENCE_MAX);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }

    int rc = pp_ledger_by_reference(pp->ledger, m->id, ref, &list, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "ledger", "serve the request");
        goto cleanup;
    }
    items = json_array();
    for (size_t i = 0; i < n; i++) {
        size_t nrefunds = 0;
        rc = pp_ledger_refunds(pp->ledger, list[i].id, &refunds, &nrefunds);
        if (rc != MOAT_OK) {
            moat_req_reply_store_error(r, rc, "ledger", "serve the request");
            goto cleanup;
        }
        json_array_append_new(items, auth_json(&list[i], refunds, nrefunds));
        free(refunds);
        refunds = NULL;
    }
    moat_req_reply_json(r, 200, json_pack("{s:o}", "items", items));
    items = NULL;

cleanup:
    json_decref(items);
    free(refunds);
    free(list);
}

static void handle_summary(struct moat_req *r, void *arg)
{
    struct pp_service *pp = arg;
    json_t *summary = NULL;
    const struct pp_merchant *m = gate(r, pp);
    if (!m)
        return;
    int rc = pp_ledger_summary(pp->ledger, m->id, &summary);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "ledger", "serve the request");
    else
        moat_req_reply_json(r, 200, summary);
}

/* ---- registration ---- */

int pp_api_register(struct pp_service *pp)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_POST, "/v1/authorizations", handle_authorize},
        {MOAT_GET, "/v1/authorizations", handle_list},
        {MOAT_GET, "/v1/authorizations/{id}", handle_get},
        {MOAT_POST, "/v1/authorizations/{id}/capture", handle_capture},
        {MOAT_POST, "/v1/authorizations/{id}/void", handle_void},
        {MOAT_POST, "/v1/captures/{id}/refund", handle_refund},
        {MOAT_GET, "/v1/ledger/summary", handle_summary},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(pp->http, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, pp);
        if (rc != MOAT_OK)
            return rc;
    }
    return moat_http_on_drain(pp->http, on_drain, pp);
}
