/*
 * handlers.c - the payments HTTP API (callers need a service token) and
 * the calls it makes to the card processor.
 *
 *   POST /v1/payments                 authorize (Idempotency-Key required)
 *   POST /v1/payments/{id}/capture    authorized -> captured
 *   POST /v1/payments/{id}/void       authorized -> voided
 *   POST /v1/payments/{id}/refund     captured   -> refunded (in full)
 *   GET  /v1/payments/{id}
 *   GET  /v1/payments?order_id=
 *   GET  /v1/payments/summary         totals per currency and status
 *
 * Never a second charge: every provider call carries an Idempotency-Key
 * derived from the payment id ("<id>:authorize", "<id>:capture"...), so a
 * retry after a timeout or an outage, even after our own restart, gets the
 * provider's stored outcome instead of a new operation. Our own
 * Idempotency-Key (the caller's) maps to the payment id, so a caller's
 * retry resumes the same payment.
 *
 * The card token lives only in the request being served and in the
 * provider call's body; it is never logged or stored. The idempotency
 * fingerprint is a keyed hash (the keyring's blind index) of the body.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/audit.h"
#include "moat/auth.h"
#include "moat/crypto.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "payments.h"

#define AMOUNT_MAX       99999999 /* the provider's per-operation cap */
#define CARD_TOKEN_MAX   64
#define PROVIDER_ID_MAX  64
#define RETRY_AFTER_S    "1"
#define FINGERPRINT_CTX  "payments.idempotency"
#define AD_AUTH_ID       "payments.provider_auth_id:"
#define AD_CAPTURE_ID    "payments.provider_capture_id:"
#define PROBLEM_STATE    "urn:moat:problem:payment-state"
#define PROBLEM_IDEM     "urn:moat:problem:idempotency-key-"
#define PROVIDER_PROBLEM "urn:payprovider:problem:"
#define DECLINE_REJECTED "provider_rejected"

enum pay_op { OP_AUTHORIZE, OP_CAPTURE, OP_VOID, OP_REFUND };

struct op_def {
    const char *name;   /* path segment and provider key suffix */
    const char *from;   /* required current status */
    const char *to;     /* status after success (authorize: decided) */
    const char *event;  /* event type on success */
    const char *action; /* audit action on success */
    int provider_ok;    /* the provider's success status */
};

static const struct op_def ops[] = {
    [OP_AUTHORIZE] = {"authorize", "pending", NULL, NULL, NULL, 201},
    [OP_CAPTURE] = {"capture", "authorized", "captured", "PaymentCaptured",
                    "payment.captured", 200},
    [OP_VOID] = {"void", "authorized", "voided", "PaymentVoided",
                 "payment.voided", 200},
    [OP_REFUND] = {"refund", "captured", "refunded", "PaymentRefunded",
                   "payment.refunded", 201},
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

/* ---- the busy list ---- */

static bool busy_find(const struct pay_service *ps, const char *key, size_t *at)
{
    for (size_t i = 0; i < ps->nbusy; i++) {
        if (strcmp(ps->busy[i], key) == 0) {
            if (at)
                *at = i;
            return true;
        }
    }
    return false;
}

/* Takes key into the list unless it is there already (then false). */
static bool busy_take(struct pay_service *ps, const char *key)
{
    if (busy_find(ps, key, NULL))
        return false;
    if (ps->nbusy == ps->busy_cap) {
        ps->busy_cap = ps->busy_cap ? 2 * ps->busy_cap : 16;
        ps->busy = moat_xrealloc(ps->busy, ps->busy_cap * sizeof(ps->busy[0]));
    }
    ps->busy[ps->nbusy++] = moat_xstrdup(key);
    return true;
}

static void busy_drop(struct pay_service *ps, const char *key)
{
    size_t at;
    if (!key || !busy_find(ps, key, &at))
        return;
    free(ps->busy[at]);
    ps->busy[at] = ps->busy[--ps->nbusy];
}

static void call_free(struct call *c)
{
    busy_drop(c->ps, c->busy_key);
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

/* Event data: what consumers need, and no card or provider secrets. */
static json_t *event_json(const struct pay_payment *p)
{
    json_t *j =
        json_pack("{s:s, s:s, s:I, s:s, s:s}", "payment_id", p->id, "order_id",
                  p->order_id, "amount", (json_int_t)p->amount, "currency",
                  p->currency, "status", p->status);
    if (p->decline_code[0])
        json_object_set_new(j, "decline_code", json_string(p->decline_code));
    return j;
}

static json_t *problem_typed(int status, const char *type, const char *detail)
{
    json_t *pr = moat_problem_new(status, detail);
    json_object_set_new(pr, "type", json_string(type));
    return pr;
}

static void reply_state_conflict(struct moat_req *req,
                                 const struct pay_payment *p, const char *op)
{
    char detail[160];
    snprintf(detail, sizeof(detail), "cannot %s a payment that is %s", op,
             p->status);
    json_t *pr = problem_typed(409, PROBLEM_STATE, detail);
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

static void reply_db_error(struct moat_req *req, int rc)
{
    if (rc == MOAT_EBUSY) {
        reply_unavailable(req, NULL, "the payments database is busy");
        return;
    }
    moat_req_reply_problem(req, 500, "the payments database failed");
}

/* One audit record per state change; actor is the calling service. A
 * failed append is logged, not fatal: the database is the record of what
 * happened, the audit log its tamper evidence (moat/audit.h). */
static void audit(struct pay_service *ps, const char *action,
                  const char *caller, const struct pay_payment *p)
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

static bool charset_ok(const char *s, size_t max, const char *extra)
{
    size_t n = strlen(s);
    if (n < 1 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || strchr(extra, ch)))
            return false;
    }
    return true;
}

static bool currency_ok(const char *s)
{
    return strlen(s) == 3 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' &&
           s[1] <= 'Z' && s[2] >= 'A' && s[2] <= 'Z';
}

/*
 * The caller's Idempotency-Key: 1..255 visible ASCII characters, bare or
 * as a structured-field string ("...", the IETF draft's form) - the same
 * rule as the provider's. Copies it into out; false when malformed.
 */
static bool idem_key_parse(const char *h, char out[PAY_IDEM_KEY_MAX + 1])
{
    size_t n = strlen(h);
    if (n >= 2 && h[0] == '"' && h[n - 1] == '"') {
        h++;
        n -= 2;
    }
    if (n < 1 || n > PAY_IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (h[i] <= ' ' || h[i] > '~' || h[i] == '"')
            return false;
    memcpy(out, h, n);
    out[n] = '\0';
    return true;
}

/* Provider ids go into URL paths: accept only their plain alphabet. */
static bool provider_id_ok(const char *s)
{
    return s && charset_ok(s, PROVIDER_ID_MAX, "_");
}

/* ---- calling the provider ---- */

static void on_provider(const struct moat_http_response *resp, void *arg);

/*
 * Count the attempt, then send method path body to the provider with the
 * deterministic key "<payment id>:<op>". On failure replies itself and
 * frees c.
 */
static void provider_send(struct call *c, const char *path, const char *body)
{
    struct pay_service *ps = c->ps;
    char *auth = moat_xasprintf("Bearer %s", ps->cfg.provider_key);
    char *key = moat_xasprintf("%s:%s", c->p.id, ops[c->op].name);
    char *url = moat_xasprintf("%s%s", ps->cfg.provider_url, path);
    const struct moat_http_header headers[] = {
        {"Authorization", auth},
        {"Idempotency-Key", key},
        {"Content-Type", "application/json"},
    };
    struct moat_http_call call = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .nheaders = MOAT_ARRAY_LEN(headers),
        .body = body,
        .body_len = strlen(body),
        .timeout_ms = ps->cfg.provider_timeout_ms,
        .trace = &c->trace,
    };

    /* Committed before the call: a crash while it is out still shows
     * that the provider may have seen this payment. */
    int rc = pay_store_count_attempt(ps->store, c->p.id);
    if (rc != MOAT_OK) {
        reply_db_error(c->req, rc);
        call_free(c);
        goto cleanup;
    }
    c->p.attempts++;
    rc = moat_http_client_send(ps->client, &call, on_provider, c);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot call the payment provider",
                 "{s:s, s:s}", "payment", c->p.id, "error", moat_strerror(rc));
        reply_unavailable(c->req, &c->p, "cannot call the payment provider");
        call_free(c);
    }

cleanup:
    moat_free_secret(auth);
    free(key);
    free(url);
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
    };
    if (event) {
        data = event_json(p);
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
    audit(ps, action, c->caller, p);
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

/* Seal a provider id for its column, bound to this payment's row. */
static char *seal_id(struct pay_service *ps, const char *ad_prefix,
                     const char *pay_id, const char *value)
{
    char *ad = moat_xasprintf("%s%s", ad_prefix, pay_id);
    char *out = NULL;
    int rc = moat_seal(ps->kr, ad, value, strlen(value), &out);
    free(ad);
    return rc == MOAT_OK ? out : NULL;
}

static void authorize_done(struct call *c, const struct moat_http_response *r,
                           json_t *body)
{
    const char *id = json_string_value(json_object_get(body, "id"));
    const char *st = json_string_value(json_object_get(body, "status"));
    const char *code = json_string_value(json_object_get(body, "decline_code"));
    char *sealed = NULL;

    if (r->status == 400 || r->status == 422) {
        /* The provider refused the request itself (e.g. a currency it does
         * not know): final, and the order may try again with another. */
        finish_transition(c, "failed", DECLINE_REJECTED, NULL, NULL, NULL,
                          "payment.failed", 422);
        return;
    }
    if (r->status != 201 || !provider_id_ok(id) || !st ||
        (strcmp(st, "authorized") != 0 && strcmp(st, "declined") != 0)) {
        moat_log(MOAT_LOG_ERROR, "unexpected answer from the payment provider",
                 "{s:s, s:s, s:i}", "payment", c->p.id, "operation",
                 "authorize", "status", r->status);
        moat_req_reply_problem(c->req, 502,
                               "unexpected answer from the payment provider");
        return;
    }
    sealed = seal_id(c->ps, AD_AUTH_ID, c->p.id, id);
    if (!sealed) {
        moat_req_reply_problem(c->req, 500, "cannot seal the provider id");
        return;
    }
    if (strcmp(st, "authorized") == 0)
        finish_transition(c, "authorized", NULL, sealed, NULL,
                          "PaymentAuthorized", "payment.authorized", 201);
    else
        finish_transition(
            c, "declined",
            code && charset_ok(code, PAY_CODE_MAX, "_-") ? code : "declined",
            sealed, NULL, "PaymentDeclined", "payment.declined", 201);
    free(sealed);
}

static void operation_done(struct call *c, const struct moat_http_response *r,
                           json_t *body)
{
    const struct op_def *d = &ops[c->op];
    char *sealed = NULL;

    if (r->status != d->provider_ok) {
        /* Our books and the provider's disagree (or we are misconfigured):
         * nothing changes here, and an operator must look. */
        const char *type = json_string_value(json_object_get(body, "type"));
        moat_log(MOAT_LOG_ERROR, "the payment provider refused an operation",
                 "{s:s, s:s, s:i, s:s}", "payment", c->p.id, "operation",
                 d->name, "status", r->status, "type", type ? type : "");
        moat_req_reply_problem(c->req, 502,
                               "the payment provider refused to %s the payment",
                               d->name);
        return;
    }
    if (c->op == OP_CAPTURE) {
        const char *cap = json_string_value(
            json_object_get(json_object_get(body, "capture"), "id"));
        if (!provider_id_ok(cap)) {
            moat_req_reply_problem(c->req, 502,
                                   "the payment provider's capture has no id");
            return;
        }
        sealed = seal_id(c->ps, AD_CAPTURE_ID, c->p.id, cap);
        if (!sealed) {
            moat_req_reply_problem(c->req, 500, "cannot seal the provider id");
            return;
        }
    }
    finish_transition(c, d->to, NULL, NULL, sealed, d->event, d->action, 200);
    free(sealed);
}

/* True for answers that say "not now" rather than "no": retry later. */
static bool provider_transient(const struct moat_http_response *r, json_t *body)
{
    if (r->err != MOAT_OK || r->status >= 500 || r->status == 429)
        return true;
    const char *type = json_string_value(json_object_get(body, "type"));
    return r->status == 409 && type &&
           strcmp(type, PROVIDER_PROBLEM "idempotency-key-in-progress") == 0;
}

static void on_provider(const struct moat_http_response *resp, void *arg)
{
    struct call *c = arg;
    json_t *body = NULL;

    /* Callbacks run outside the server's handler: set the log context,
     * which the outbox and the audit log take the trace from. */
    moat_log_set_trace(&c->trace);
    if (resp->err == MOAT_OK && resp->body_len > 0)
        body = json_loadb(resp->body, resp->body_len, 0, NULL);

    if (provider_transient(resp, body)) {
        moat_log(resp->err == MOAT_ECANCELLED ? MOAT_LOG_INFO : MOAT_LOG_WARN,
                 "payment provider unavailable",
                 "{s:s, s:s, s:s, s:i, s:I, s:f}", "payment", c->p.id,
                 "operation", ops[c->op].name, "error",
                 resp->err_msg ? resp->err_msg : "", "status", resp->status,
                 "attempts", (json_int_t)c->p.attempts, "duration_ms",
                 resp->elapsed_ms);
        reply_unavailable(c->req, &c->p,
                          c->op == OP_AUTHORIZE
                              ? "the payment provider is unavailable; retry "
                                "with the same Idempotency-Key"
                              : "the payment provider is unavailable");
    } else if (c->op == OP_AUTHORIZE) {
        authorize_done(c, resp, body);
    } else {
        operation_done(c, resp, body);
    }
    json_decref(body);
    call_free(c);
    moat_log_set_trace(NULL);
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
        !charset_ok(s, PAY_ORDER_ID_MAX, "_-.:"))
        moat_validation_add(&v, "/order_id",
                            "must be letters, digits, '_', '-', '.' or ':'");
    moat_v_int(&v, body, "", "amount", true, 1, AMOUNT_MAX, &amount);
    if (moat_v_string(&v, body, "", "currency", true, 3, 3, &s) &&
        !currency_ok(s))
        moat_validation_add(&v, "/currency",
                            "must be an ISO 4217 code in upper case");
    if (moat_v_string(&v, body, "", "card_token", true, 1, CARD_TOKEN_MAX,
                      &s) &&
        !charset_ok(s, CARD_TOKEN_MAX, "_-"))
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

static void authorize_send(struct call *c, json_t *body)
{
    json_t *pb = json_pack("{s:I, s:s, s:O, s:s}", "amount",
                           (json_int_t)c->p.amount, "currency", c->p.currency,
                           "card_token", json_object_get(body, "card_token"),
                           "reference", c->p.order_id);
    char *text = json_dumps(pb, JSON_COMPACT);
    json_decref(pb);
    if (!text)
        moat_die("cannot serialise a provider request");
    provider_send(c, "/v1/authorizations", text);
    moat_free_secret(text); /* it holds the card token */
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

    if (!h || !idem_key_parse(h, key)) {
        json_t *pr = problem_typed(
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
    if (busy_find(ps, busy, NULL)) {
        moat_req_set_header(req, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            req, problem_typed(409, PROBLEM_IDEM "in-progress",
                               "a request with this Idempotency-Key is "
                               "still in progress"));
        goto cleanup;
    }

    c = moat_xcalloc(1, sizeof(*c));
    c->ps = ps;
    c->req = req;
    c->trace = *moat_req_trace(req);
    c->op = OP_AUTHORIZE;
    snprintf(c->caller, sizeof(c->caller), "%s", who->service);
    c->idem_key = moat_xstrdup(key);

    rc = pay_store_idem_get(ps->store, who->service, key, &idem);
    if (rc == MOAT_OK) {
        if (moat_memeq(idem.fingerprint, fp, MOAT_BLIND_INDEX_HEX) != MOAT_OK) {
            moat_req_reply_problem_json(
                req, problem_typed(422, PROBLEM_IDEM "reused",
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
            reply_db_error(req, rc);
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
            json_t *pr = problem_typed(409, PROBLEM_STATE,
                                       "the order already has a payment");
            if (existing[0])
                json_object_set_new(pr, "payment_id", json_string(existing));
            moat_req_reply_problem_json(req, pr);
            goto cleanup;
        }
        if (rc != MOAT_OK) {
            reply_db_error(req, rc);
            goto cleanup;
        }
        audit(ps, "payment.created", c->caller, p);
    } else {
        reply_db_error(req, rc);
        goto cleanup;
    }

    busy_take(ps, busy);
    c->busy_key = busy;
    busy = NULL;
    authorize_send(c, body);
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
    char *ad = NULL;
    char *pid = NULL;
    char *path = NULL;

    if (!moat_id_valid(id, "pay_")) {
        moat_req_reply_problem(req, 404, "no payment with this id");
        goto cleanup;
    }
    busy = moat_xasprintf("pay:%s", id);
    if (busy_find(ps, busy, NULL)) {
        moat_req_set_header(req, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            req, problem_typed(409, PROBLEM_STATE,
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
        reply_db_error(req, rc);
        goto cleanup;
    }
    if (strcmp(c->p.status, d->from) != 0) {
        reply_state_conflict(req, &c->p, d->name);
        goto cleanup;
    }

    /* A refund goes against the capture, the rest against the
     * authorization; the ids are opened only for the call's URL. */
    bool refund = op == OP_REFUND;
    const char *enc = refund ? c->p.capture_id_enc : c->p.auth_id_enc;
    ad = moat_xasprintf("%s%s", refund ? AD_CAPTURE_ID : AD_AUTH_ID, id);
    if (!enc || moat_open(ps->kr, ad, enc, &pid, NULL) != MOAT_OK ||
        !provider_id_ok(pid)) {
        moat_log(MOAT_LOG_ERROR, "cannot open a stored provider id",
                 "{s:s, s:s}", "payment", id, "column",
                 refund ? "provider_capture_id_enc" : "provider_auth_id_enc");
        moat_req_reply_problem(req, 500, "cannot read the payment's record");
        goto cleanup;
    }
    path = refund ? moat_xasprintf("/v1/captures/%s/refund", pid)
                  : moat_xasprintf("/v1/authorizations/%s/%s", pid, d->name);
    busy_take(ps, busy);
    c->busy_key = busy;
    busy = NULL;
    provider_send(c, path, "{}");
    c = NULL;

cleanup:
    if (c)
        call_free(c);
    moat_free_secret(pid);
    free(path);
    free(ad);
    free(busy);
}

static void h_capture(struct moat_req *req, void *arg)
{
    h_operation(req, arg, OP_CAPTURE);
}

static void h_void(struct moat_req *req, void *arg)
{
    h_operation(req, arg, OP_VOID);
}

static void h_refund(struct moat_req *req, void *arg)
{
    h_operation(req, arg, OP_REFUND);
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
        reply_db_error(req, rc);
        return;
    }
    moat_req_reply_json(req, 200, payment_json(&p));
    pay_payment_release(&p);
}

static void add_item(const struct pay_payment *p, void *arg)
{
    json_array_append_new(arg, payment_json(p));
}

static void h_list(struct moat_req *req, void *arg)
{
    struct pay_service *ps = arg;
    json_t *problem = NULL;
    const char *order = NULL;
    const char *k, *v;
    void *it = NULL;

    while (moat_req_query_next(req, &it, &k, &v)) {
        if (strcmp(k, "order_id") != 0)
            moat_problem_param_error(&problem, k, "unknown parameter");
        else if (order)
            moat_problem_param_error(&problem, k, "given more than once");
        else
            order = v;
    }
    if (!problem && !order)
        moat_problem_param_error(&problem, "order_id", "is required");
    else if (!problem && !charset_ok(order, PAY_ORDER_ID_MAX, "_-.:"))
        moat_problem_param_error(&problem, "order_id", "is not an order id");
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    json_t *items = json_array();
    int rc = pay_store_list_by_order(ps->store, order, add_item, items);
    if (rc != MOAT_OK) {
        json_decref(items);
        reply_db_error(req, rc);
        return;
    }
    moat_req_reply_json(req, 200, json_pack("{s:o}", "items", items));
}

static void h_summary(struct moat_req *req, void *arg)
{
    struct pay_service *ps = arg;
    char now[25];
    json_t *out = NULL;
    int rc = pay_store_summary(ps->store, &out);
    if (rc != MOAT_OK) {
        reply_db_error(req, rc);
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
    return rc;
}
