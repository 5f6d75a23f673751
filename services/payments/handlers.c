/*
 * handlers.c - the payments HTTP API (callers need a service token) and
 * the calls it makes to the card processor.
 *
 *   POST /v1/payments                 authorize (Idempotency-Key required)
 *   POST /v1/payments/{id}/capture    authorized -> captured
 *   POST /v1/payments/{id}/void       authorized -> voided
 *   POST /v1/payments/{id}/refund     captured   -> refunded (in full)
 *   GET  /v1/payments/{id}
 *   GET  /v1/payments?order_id=       the payments of an order
 *   GET  /v1/payments?after=&limit=   every payment in id order (auditor)
 *   GET  /v1/payments/summary         totals per currency and status
 *
 * Never a second charge: every provider call (provider.c) carries an
 * Idempotency-Key derived from the payment id ("<id>:authorize",
 * "<id>:capture"...), so a retry after a timeout or an outage, even after
 * our own restart, gets the provider's stored outcome instead of a new
 * operation. Our own Idempotency-Key (the caller's) maps to the payment
 * id, so a caller's retry resumes the same payment.
 *
 * The card token lives only in the request being served and in the
 * provider call's body; it is never logged or stored. The idempotency
 * fingerprint is a keyed hash (the keyring's blind index) of the body.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/payments.h"
#include "moat/audit.h"
#include "moat/auth.h"
#include "moat/crypto.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "payments.h"

#define AMOUNT_MAX      99999999 /* the provider's per-operation cap */
#define CARD_TOKEN_MAX  64
#define RETRY_AFTER_S   "1"
#define FINGERPRINT_CTX "payments.idempotency"
#define PROBLEM_STATE   "urn:moat:problem:payment-state"
#define PROBLEM_IDEM    "urn:moat:problem:idempotency-key-"
#define LIST_DEFAULT    100
#define LIST_MAX        1000

struct op_def {
    const char *from;   /* required current status */
    const char *to;     /* status after success (authorize: decided) */
    const char *event;  /* event type on success */
    const char *action; /* audit action on success */
};

static const struct op_def ops[] = {
    [PAY_OP_AUTHORIZE] = {"pending", NULL, NULL, NULL},
    [PAY_OP_CAPTURE] = {"authorized", "captured", PAYMENTS_PAYMENT_CAPTURED,
                        "payment.captured"},
    [PAY_OP_VOID] = {"authorized", "voided", PAYMENTS_PAYMENT_VOIDED,
                     "payment.voided"},
    [PAY_OP_REFUND] = {"captured", "refunded", PAYMENTS_PAYMENT_REFUNDED,
                       "payment.refunded"},
};

/* One operation waiting for the provider. */
struct call {
    struct pay_service *ps;
    struct moat_req *req;
    struct moat_trace trace; /* a copy: the request is gone after reply */
    enum pay_op op;
    struct pay_payment p; /* snapshot taken before the call; owned */
    char caller[PAY_CALLER_MAX];
    char *idem_key; /* the caller's key (authorize only); owned */
    char *busy_key; /* our entry in ps->busy; owned */
};

static void call_free(struct call *c)
{
    pay_busy_drop(c->ps, c->busy_key);
    free(c->busy_key);
    free(c->idem_key);
    pay_payment_release(&c->p);
    free(c);
}

/* ---- JSON and problems ---- */

static json_t *payment_json(const struct pay_payment *p)
{
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:I, s:s, s:s, s:I, s:I, s:s, s:I, s:I}", "id", p->id,
        "object", "payment", "order_id", p->order_id, "amount",
        (json_int_t)p->amount, "currency", p->currency, "status", p->status,
        "attempts", (json_int_t)p->attempts, "version", (json_int_t)p->version,
        "created_by", p->created_by, "created_at",
        (json_int_t)(p->created_ms / 1000), "updated_at",
        (json_int_t)(p->updated_ms / 1000));
    if (p->decline_code[0])
        json_object_set_new(j, "decline_code", json_string(p->decline_code));
    return j;
}

/* Event data: what consumers need, and no card or provider secrets. The
 * same shape as the saga's replies (saga.c), whose subject is the order
 * too. */
json_t *pay_event_json(const struct pay_payment *p)
{
    json_t *j =
        json_pack("{s:s, s:s, s:I, s:s, s:s}", "payment_id", p->id, "order_id",
                  p->order_id, "amount", (json_int_t)p->amount, "currency",
                  p->currency, "status", p->status);
    if (p->decline_code[0])
        json_object_set_new(j, "decline_code", json_string(p->decline_code));
    return j;
}

static void reply_state_conflict(struct moat_req *req,
                                 const struct pay_payment *p, const char *op)
{
    char detail[160];
    snprintf(detail, sizeof(detail), "cannot %s a payment that is %s", op,
             p->status);
    json_t *pr = moat_problem_typed(409, PROBLEM_STATE, detail);
    json_object_set_new(pr, "payment_id", json_string(p->id));
    json_object_set_new(pr, "payment_status", json_string(p->status));
    moat_req_reply_problem_json(req, pr);
}

/* 503 with Retry-After: the caller retries (with the same Idempotency-Key
 * for an authorization) and the operation resumes where it stopped. */
static void reply_unavailable(struct moat_req *req, const struct pay_payment *p,
                              const char *detail)
{
    json_t *pr = moat_problem_new(503, detail);
    if (p) {
        json_object_set_new(pr, "payment_id", json_string(p->id));
        json_object_set_new(pr, "payment_status", json_string(p->status));
    }
    moat_req_set_header(req, "Retry-After", RETRY_AFTER_S);
    moat_req_reply_problem_json(req, pr);
}

/* One audit record per state change; actor is the calling service. A
 * failed append is logged, not fatal: the database is the record of what
 * happened, the audit log its tamper evidence (moat/audit.h). */
void pay_audit(struct pay_service *ps, const char *action, const char *caller,
               const struct pay_payment *p)
{
    json_t *d = json_pack("{s:s, s:I, s:s, s:s}", "order_id", p->order_id,
                          "amount", (json_int_t)p->amount, "currency",
                          p->currency, "status", p->status);
    if (p->decline_code[0])
        json_object_set_new(d, "decline_code", json_string(p->decline_code));
    int rc = moat_audit_append(ps->audit, action, caller, p->id, "ok", d);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot append to the audit log",
                 "{s:s, s:s, s:s}", "action", action, "payment", p->id, "error",
                 moat_strerror(rc));
    json_decref(d);
}

/* ---- input checks ---- */

/* ---- calling the provider ---- */

static void on_outcome(struct pay_outcome *o, void *arg);

/*
 * Count the attempt (committed before the call: a crash while it is out
 * still shows that the provider may have seen this payment), then call
 * the provider (provider.c). On failure replies itself and frees c.
 */
static void provider_send(struct call *c, const char *card_token)
{
    struct pay_service *ps = c->ps;
    int rc = pay_store_count_attempt(ps->store, c->p.id);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(c->req, rc, "payments", "serve the request");
        call_free(c);
        return;
    }
    c->p.attempts++;
    rc = pay_provider_call(ps, c->op, &c->p, card_token, &c->trace, on_outcome,
                           c);
    if (rc == MOAT_EPRECOND) {
        moat_req_reply_problem(c->req, 500, "cannot read the payment's record");
        call_free(c);
    } else if (rc != MOAT_OK) {
        reply_unavailable(c->req, &c->p, "cannot call the payment provider");
        call_free(c);
    }
}

/* Apply the decided transition, audit it, and answer with the payment. */
static void finish_transition(struct call *c, const char *to,
                              const char *decline_code, const char *auth_enc,
                              const char *capture_enc, const char *event,
                              const char *action, int status)
{
    struct pay_service *ps = c->ps;
    struct pay_payment *p = &c->p;
    char *stored = NULL;
    json_t *data = NULL;
    json_t *body = NULL;

    snprintf(p->status, sizeof(p->status), "%s", to);
    if (decline_code)
        snprintf(p->decline_code, sizeof(p->decline_code), "%s", decline_code);
    p->version++;
    p->updated_ms = moat_wall_ms();

    struct pay_transition t = {
        .id = p->id,
        .from = ops[c->op].from,
        .to = to,
        .auth_id_enc = auth_enc,
        .capture_id_enc = capture_enc,
        .decline_code = decline_code,
        .now_ms = p->updated_ms,
        .event_type = event,
        .subject = p->order_id,
    };
    if (event) {
        data = pay_event_json(p);
        t.event_data = data;
    }
    if (status >= 400) {
        char detail[160];
        snprintf(detail, sizeof(detail),
                 "the payment provider refused the payment (%s)",
                 p->decline_code);
        body = moat_problem_new(status, detail);
        json_object_set_new(body, "payment_id", json_string(p->id));
        json_object_set_new(body, "payment_status", json_string(p->status));
    } else {
        body = payment_json(p);
    }
    if (c->idem_key) {
        stored = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        if (!stored)
            moat_die("cannot serialise a payment");
        t.idem_caller = c->caller;
        t.idem_key = c->idem_key;
        t.idem_status = status;
        t.idem_response = stored;
    }

    int rc = pay_store_transition(ps->store, &t);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot record a payment state change",
                 "{s:s, s:s, s:s}", "payment", p->id, "to", to, "error",
                 moat_strerror(rc));
        /* The provider's outcome is safe with it: the caller's retry asks
         * again under the same provider key and gets it replayed. */
        reply_unavailable(c->req, NULL, "cannot record the payment outcome");
        goto cleanup;
    }
    pay_audit(ps, action, c->caller, p);
    if (stored) {
        /* The very bytes a replay will send, so the first answer and
         * every replay agree byte for byte. */
        moat_req_reply(c->req, status,
                       status >= 400 ? "application/problem+json"
                                     : "application/json",
                       stored, strlen(stored));
    } else {
        moat_req_reply_json(c->req, status, body);
        body = NULL;
    }

cleanup:
    json_decref(body);
    json_decref(data);
    free(stored);
}

/* The provider's answer, as an HTTP answer and (when decided) a state
 * change. */
static void on_outcome(struct pay_outcome *o, void *arg)
{
    struct call *c = arg;
    const struct op_def *d = &ops[c->op];

    switch (o->result) {
    case PAY_TRANSIENT:
        reply_unavailable(c->req, &c->p,
                          c->op == PAY_OP_AUTHORIZE
                              ? "the payment provider is unavailable; retry "
                                "with the same Idempotency-Key"
                              : "the payment provider is unavailable");
        break;
    case PAY_AUTHORIZED:
        finish_transition(c, "authorized", NULL, o->auth_id_enc, NULL,
                          PAYMENTS_PAYMENT_AUTHORIZED, "payment.authorized",
                          201);
        break;
    case PAY_DECLINED:
        finish_transition(c, "declined", o->decline_code, o->auth_id_enc, NULL,
                          PAYMENTS_PAYMENT_DECLINED, "payment.declined", 201);
        break;
    case PAY_REJECTED:
        finish_transition(c, "failed", o->decline_code, NULL, NULL, NULL,
                          "payment.failed", 422);
        break;
    case PAY_DONE:
        finish_transition(c, d->to, NULL, NULL, o->capture_id_enc, d->event,
                          d->action, 200);
        break;
    case PAY_REFUSED:
        /* Our books and the provider's disagree (or we are misconfigured):
         * nothing changes here, and an operator must look. */
        moat_req_reply_problem(c->req, 502,
                               "the payment provider refused to %s the payment",
                               pay_op_name(c->op));
        break;
    case PAY_BAD_ANSWER:
        moat_req_reply_problem(c->req, 502,
                               "unexpected answer from the payment provider");
        break;
    case PAY_INTERNAL:
        moat_req_reply_problem(c->req, 500, "cannot seal the provider id");
        break;
    }
    call_free(c);
}

/* ---- POST /v1/payments ---- */

/* A keyed hash of the canonical body: the same request sorts the same, and
 * the card token cannot be recovered from what is stored. */
static void fingerprint(struct pay_service *ps, json_t *body,
                        char out[MOAT_BLIND_INDEX_HEX + 1])
{
    char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (!canon)
        moat_die("cannot serialise a request body");
    moat_blind_index(ps->kr, FINGERPRINT_CTX, canon, out);
    moat_free_secret(canon); /* it holds the card token */
}

static bool validate_create(struct moat_req *req, json_t *body)
{
    static const char *const known[] = {"order_id", "amount", "currency",
                                        "card_token", NULL};
    struct moat_validation v;
    const char *s;
    int64_t amount;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", known);
    if (moat_v_string(&v, body, "", "order_id", true, 1, PAY_ORDER_ID_MAX,
                      &s) &&
        !pay_charset_ok(s, PAY_ORDER_ID_MAX, "_-.:"))
        moat_validation_add(&v, "/order_id",
                            "must be letters, digits, '_', '-', '.' or ':'");
    moat_v_int(&v, body, "", "amount", true, 1, AMOUNT_MAX, &amount);
    if (moat_v_string(&v, body, "", "currency", true, 3, 3, &s) &&
        !pay_currency_ok(s))
        moat_validation_add(&v, "/currency",
                            "must be an ISO 4217 code in upper case");
    if (moat_v_string(&v, body, "", "card_token", true, 1, CARD_TOKEN_MAX,
                      &s) &&
        !pay_charset_ok(s, CARD_TOKEN_MAX, "_-"))
        moat_validation_add(&v, "/card_token",
                            "must be letters, digits, '_' or '-'");
    if (moat_validation_ok(&v)) {
        moat_validation_release(&v);
        return true;
    }
    moat_req_reply_problem_json(
        req, moat_validation_problem(&v, "the payment is invalid"));
    moat_validation_release(&v);
    return false;
}

/* Replay a completed request's stored answer, byte for byte. */
static void replay(struct moat_req *req, const struct pay_idem *idem)
{
    moat_req_set_header(req, "Idempotent-Replayed", "true");
    moat_req_reply(req, idem->status,
                   idem->status >= 400 ? "application/problem+json"
                                       : "application/json",
                   idem->response, strlen(idem->response));
}

static void h_create(struct moat_req *req, void *arg)
{
    struct pay_service *ps = arg;
    const struct moat_principal *who = moat_req_principal(req);
    const char *h = moat_req_header(req, "Idempotency-Key");
    char key[PAY_IDEM_KEY_MAX + 1];
    char fp[MOAT_BLIND_INDEX_HEX + 1];
    char existing[PAY_ID_MAX];
    struct pay_idem idem = {0};
    struct call *c = NULL;
    json_t *body = NULL;
    char *busy = NULL;
    int rc;

    if (!h || !moat_idem_key_parse(h, key)) {
        json_t *pr = moat_problem_typed(
            400, PROBLEM_IDEM "missing",
            h ? "the Idempotency-Key must be 1 to 255 visible ASCII "
                "characters"
              : "an Idempotency-Key header is required");
        moat_req_reply_problem_json(req, pr);
        goto cleanup;
    }
    if (moat_req_json(req, &body) != MOAT_OK)
        goto cleanup; /* replied */
    if (!json_is_object(body)) {
        moat_req_reply_problem(req, 422, "the body must be a JSON object");
        goto cleanup;
    }
    if (!validate_create(req, body))
        goto cleanup;
    fingerprint(ps, body, fp);

    busy = moat_xasprintf("idem:%s:%s", who->service, key);
    if (pay_busy_find(ps, busy)) {
        moat_req_set_header(req, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            req, moat_problem_typed(409, PROBLEM_IDEM "in-progress",
                                    "a request with this Idempotency-Key is "
                                    "still in progress"));
        goto cleanup;
    }

    c = moat_xcalloc(1, sizeof(*c));
    c->ps = ps;
    c->req = req;
    c->trace = *moat_req_trace(req);
    c->op = PAY_OP_AUTHORIZE;
    snprintf(c->caller, sizeof(c->caller), "%s", who->service);
    c->idem_key = moat_xstrdup(key);

    rc = pay_store_idem_get(ps->store, who->service, key, &idem);
    if (rc == MOAT_OK) {
        if (moat_memeq(idem.fingerprint, fp, MOAT_BLIND_INDEX_HEX) != MOAT_OK) {
            moat_req_reply_problem_json(
                req, moat_problem_typed(422, PROBLEM_IDEM "reused",
                                        "this Idempotency-Key was used for "
                                        "another request"));
            goto cleanup;
        }
        if (idem.response) {
            replay(req, &idem);
            goto cleanup;
        }
        /* An earlier attempt stopped at the provider: resume it. */
        rc = pay_store_get(ps->store, idem.payment_id, &c->p);
        if (rc != MOAT_OK) {
            moat_req_reply_store_error(req, rc, "payments",
                                       "serve the request");
            goto cleanup;
        }
        if (strcmp(c->p.status, "pending") != 0) {
            moat_req_reply_json(req, 201, payment_json(&c->p));
            goto cleanup;
        }
    } else if (rc == MOAT_ENOTFOUND) {
        struct pay_payment *p = &c->p;
        moat_id_new("pay_", p->id, sizeof(p->id));
        snprintf(p->order_id, sizeof(p->order_id), "%s",
                 json_string_value(json_object_get(body, "order_id")));
        p->amount = json_integer_value(json_object_get(body, "amount"));
        snprintf(p->currency, sizeof(p->currency), "%s",
                 json_string_value(json_object_get(body, "currency")));
        snprintf(p->status, sizeof(p->status), "pending");
        snprintf(p->created_by, sizeof(p->created_by), "%s", who->service);
        p->version = 1;
        p->created_ms = p->updated_ms = moat_wall_ms();
        rc = pay_store_create(ps->store, p, who->service, key, fp, existing);
        if (rc == MOAT_ECONFLICT) {
            json_t *pr = moat_problem_typed(409, PROBLEM_STATE,
                                            "the order already has a payment");
            if (existing[0])
                json_object_set_new(pr, "payment_id", json_string(existing));
            moat_req_reply_problem_json(req, pr);
            goto cleanup;
        }
        if (rc != MOAT_OK) {
            moat_req_reply_store_error(req, rc, "payments",
                                       "serve the request");
            goto cleanup;
        }
        pay_audit(ps, "payment.created", c->caller, p);
    } else {
        moat_req_reply_store_error(req, rc, "payments", "serve the request");
        goto cleanup;
    }

    pay_busy_take(ps, busy);
    c->busy_key = busy;
    busy = NULL;
    provider_send(c, json_string_value(json_object_get(body, "card_token")));
    c = NULL; /* provider_send owns it now */

cleanup:
    if (c)
        call_free(c);
    pay_idem_release(&idem);
    json_decref(body);
    free(busy);
}

/* ---- capture, void, refund ---- */

static void h_operation(struct moat_req *req, struct pay_service *ps,
                        enum pay_op op)
{
    const char *id = moat_req_param(req, "id");
    const struct op_def *d = &ops[op];
    struct call *c = NULL;
    char *busy = NULL;

    if (!moat_id_valid(id, "pay_")) {
        moat_req_reply_problem(req, 404, "no payment with this id");
        goto cleanup;
    }
    /* Taken by an HTTP operation or by the saga's worker. */
    busy = moat_xasprintf("pay:%s", id);
    if (pay_busy_find(ps, busy)) {
        moat_req_set_header(req, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            req, moat_problem_typed(409, PROBLEM_STATE,
                                    "another operation on this payment is in "
                                    "progress"));
        goto cleanup;
    }
    c = moat_xcalloc(1, sizeof(*c));
    c->ps = ps;
    c->req = req;
    c->trace = *moat_req_trace(req);
    c->op = op;
    snprintf(c->caller, sizeof(c->caller), "%s",
             moat_req_principal(req)->service);
    int rc = pay_store_get(ps->store, id, &c->p);
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(req, 404, "no payment %s", id);
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "payments", "serve the request");
        goto cleanup;
    }
    if (strcmp(c->p.status, d->from) != 0) {
        reply_state_conflict(req, &c->p, pay_op_name(op));
        goto cleanup;
    }
    pay_busy_take(ps, busy);
    c->busy_key = busy;
    busy = NULL;
    provider_send(c, NULL);
    c = NULL;

cleanup:
    if (c)
        call_free(c);
    free(busy);
}

static void h_capture(struct moat_req *req, void *arg)
{
    h_operation(req, arg, PAY_OP_CAPTURE);
}

static void h_void(struct moat_req *req, void *arg)
{
    h_operation(req, arg, PAY_OP_VOID);
}

static void h_refund(struct moat_req *req, void *arg)
{
    h_operation(req, arg, PAY_OP_REFUND);
}

/* ---- reads ---- */

static void h_get(struct moat_req *req, void *arg)
{
    struct pay_service *ps = arg;
    const char *id = moat_req_param(req, "id");
    struct pay_payment p;
    int rc = moat_id_valid(id, "pay_") ? pay_store_get(ps->store, id, &p)
                                       : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(req, 404, "no payment %s", id);
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "payments", "serve the request");
        return;
    }
    moat_req_reply_json(req, 200, payment_json(&p));
    pay_payment_release(&p);
}

static void add_item(const struct pay_payment *p, void *arg)
{
    json_array_append_new(arg, payment_json(p));
}

/*
 * GET /v1/payments?order_id=O: the order's payments, oldest first, as
 * {"items"}. GET /v1/payments?after=ID&limit=N (both optional): every
 * payment in id order, for the auditor, as {"payments", "next_after"}
 * (null once there are no more).
 */
static void h_list(struct moat_req *req, void *arg)
{
    struct pay_service *ps = arg;
    json_t *problem = NULL;
    const char *order = NULL, *after = NULL, *limit_s = NULL;
    const char *k, *v;
    void *it = NULL;
    int64_t limit = LIST_DEFAULT;

    while (moat_req_query_next(req, &it, &k, &v)) {
        const char **slot = strcmp(k, "order_id") == 0 ? &order
                            : strcmp(k, "after") == 0  ? &after
                            : strcmp(k, "limit") == 0  ? &limit_s
                                                       : NULL;
        if (!slot)
            moat_problem_param_error(&problem, k, "unknown parameter");
        else if (*slot)
            moat_problem_param_error(&problem, k, "given more than once");
        else
            *slot = v;
    }
    if (order && !pay_charset_ok(order, PAY_ORDER_ID_MAX, "_-.:"))
        moat_problem_param_error(&problem, "order_id", "is not an order id");
    if (order && (after || limit_s))
        moat_problem_param_error(&problem, after ? "after" : "limit",
                                 "cannot be combined with order_id");
    if (after && after[0] && !moat_id_valid(after, "pay_"))
        moat_problem_param_error(&problem, "after", "is not a payment id");
    if (limit_s) {
        char *end = NULL;
        long long n = strtoll(limit_s, &end, 10);
        if (!limit_s[0] || *end || limit_s[0] == '+' || limit_s[0] == '-' ||
            n < 1 || n > LIST_MAX)
            moat_problem_param_error(&problem, "limit",
                                     "must be an integer from 1 to 1000");
        else
            limit = n;
    }
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    json_t *items = json_array();
    int rc =
        order ? pay_store_list_by_order(ps->store, order, add_item, items)
              : pay_store_list(ps->store, after, (int)limit, add_item, items);
    if (rc != MOAT_OK) {
        json_decref(items);
        moat_req_reply_store_error(req, rc, "payments", "serve the request");
        return;
    }
    if (order) {
        moat_req_reply_json(req, 200, json_pack("{s:o}", "items", items));
        return;
    }
    size_t n = json_array_size(items);
    json_t *next =
        (int64_t)n == limit
            ? json_incref(json_object_get(json_array_get(items, n - 1), "id"))
            : json_null();
    moat_req_reply_json(
        req, 200,
        json_pack("{s:o, s:o}", "payments", items, "next_after", next));
}

static void h_summary(struct moat_req *req, void *arg)
{
    struct pay_service *ps = arg;
    char now[25];
    json_t *out = NULL;
    int rc = pay_store_summary(ps->store, &out);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "payments", "serve the request");
        return;
    }
    moat_time_rfc3339(moat_wall_ms(), now);
    json_object_set_new(out, "as_of", json_string(now));
    moat_req_reply_json(req, 200, out);
}

int pay_routes_register(struct pay_service *ps)
{
    struct moat_http_server *s = ps->svc->http;
    int rc = moat_http_route(s, MOAT_POST, "/v1/payments", h_create, ps);
    if (rc == MOAT_OK)
        rc = moat_http_route(s, MOAT_GET, "/v1/payments", h_list, ps);
    if (rc == MOAT_OK)
        rc =
            moat_http_route(s, MOAT_GET, "/v1/payments/summary", h_summary, ps);
    if (rc == MOAT_OK)
        rc = moat_http_route(s, MOAT_GET, "/v1/payments/{id}", h_get, ps);
    if (rc == MOAT_OK)
        rc = moat_http_route(s, MOAT_POST, "/v1/payments/{id}/capture",
                             h_capture, ps);
    if (rc == MOAT_OK)
        rc =
            moat_http_route(s, MOAT_POST, "/v1/payments/{id}/void", h_void, ps);
    if (rc == MOAT_OK)
        rc = moat_http_route(s, MOAT_POST, "/v1/payments/{id}/refund", h_refund,
                             ps);
#ifdef MOAT_TEST_HOOKS
    if (rc == MOAT_OK)
        rc = pay_test_hooks_register(ps);
#endif
    return rc;
}
