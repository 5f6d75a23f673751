/*
 * provider.c - every call payments makes to the card processor
 * (docs/payment-provider.md), shared by the HTTP API (handlers.c) and the
 * saga's worker (saga.c), and the busy list that keeps those two from
 * running two operations on one payment at once.
 *
 * Never a second charge: every call carries the Idempotency-Key
 * "<payment id>:<op>", so a retry after a timeout, an outage or our own
 * restart gets the provider's stored outcome instead of a new operation.
 * The provider's ids are sealed here, bound to the payment's row, before
 * the caller sees them; the card token lives only in the call's body,
 * which is wiped once sent.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/crypto.h"
#include "moat/log.h"
#include "payments.h"

#define PROVIDER_ID_MAX  64
#define PROVIDER_PROBLEM "urn:payprovider:problem:"
#define DECLINE_REJECTED "provider_rejected"

struct op_def {
    const char *name; /* path segment and provider key suffix */
    int provider_ok;  /* the provider's success status */
};

static const struct op_def ops[] = {
    [PAY_OP_AUTHORIZE] = {"authorize", 201},
    [PAY_OP_CAPTURE] = {"capture", 200},
    [PAY_OP_VOID] = {"void", 200},
    [PAY_OP_REFUND] = {"refund", 201},
};

const char *pay_op_name(enum pay_op op)
{
    return ops[op].name;
}

/* ---- the busy list ---- */

static bool busy_at(const struct pay_service *ps, const char *key, size_t *at)
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

bool pay_busy_find(const struct pay_service *ps, const char *key)
{
    return busy_at(ps, key, NULL);
}

bool pay_busy_take(struct pay_service *ps, const char *key)
{
    if (busy_at(ps, key, NULL))
        return false;
    if (ps->nbusy == ps->busy_cap) {
        ps->busy_cap = ps->busy_cap ? 2 * ps->busy_cap : 16;
        ps->busy = moat_xrealloc(ps->busy, ps->busy_cap * sizeof(ps->busy[0]));
    }
    ps->busy[ps->nbusy++] = moat_xstrdup(key);
    return true;
}

void pay_busy_drop(struct pay_service *ps, const char *key)
{
    size_t at;
    if (!key || !busy_at(ps, key, &at))
        return;
    free(ps->busy[at]);
    ps->busy[at] = ps->busy[--ps->nbusy];
}

/* ---- small checks and sealing ---- */

bool pay_charset_ok(const char *s, size_t max, const char *extra)
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

bool pay_currency_ok(const char *s)
{
    return strlen(s) == 3 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' &&
           s[1] <= 'Z' && s[2] >= 'A' && s[2] <= 'Z';
}

/* Provider ids go into URL paths: accept only their plain alphabet. */
static bool provider_id_ok(const char *s)
{
    return s && pay_charset_ok(s, PROVIDER_ID_MAX, "_");
}

char *pay_seal(struct pay_service *ps, const char *ad_prefix,
               const char *pay_id, const char *value)
{
    char *ad = moat_xasprintf("%s%s", ad_prefix, pay_id);
    char *out = NULL;
    int rc = moat_seal(ps->kr, ad, value, strlen(value), &out);
    free(ad);
    return rc == MOAT_OK ? out : NULL;
}

char *pay_unseal(struct pay_service *ps, const char *ad_prefix,
                 const char *pay_id, const char *sealed)
{
    char *ad = moat_xasprintf("%s%s", ad_prefix, pay_id);
    char *out = NULL;
    if (!sealed || moat_open(ps->kr, ad, sealed, &out, NULL) != MOAT_OK)
        out = NULL;
    free(ad);
    return out;
}

/* ---- one call ---- */

struct pcall {
    struct pay_service *ps;
    enum pay_op op;
    char pay_id[PAY_ID_MAX];
    int64_t attempts; /* for the log */
    struct moat_trace trace;
    pay_provider_cb cb;
    void *arg;
};

/* True for answers that say "not now" rather than "no": retry later. */
static bool provider_transient(const struct moat_http_response *r, json_t *body)
{
    if (r->err != MOAT_OK || r->status >= 500 || r->status == 429)
        return true;
    const char *type = json_string_value(json_object_get(body, "type"));
    return r->status == 409 && type &&
           strcmp(type, PROVIDER_PROBLEM "idempotency-key-in-progress") == 0;
}

static void authorize_result(struct pcall *pc,
                             const struct moat_http_response *r, json_t *body,
                             struct pay_outcome *o)
{
    const char *id = json_string_value(json_object_get(body, "id"));
    const char *st = json_string_value(json_object_get(body, "status"));
    const char *code = json_string_value(json_object_get(body, "decline_code"));

    if (r->status == 400 || r->status == 422) {
        /* The provider refused the request itself (e.g. a currency it does
         * not know): final, and the order may try again with another. */
        o->result = PAY_REJECTED;
        snprintf(o->decline_code, sizeof(o->decline_code), "%s",
                 DECLINE_REJECTED);
        snprintf(o->error, sizeof(o->error), "provider rejected (%d)",
                 r->status);
        return;
    }
    if (r->status != 201 || !provider_id_ok(id) || !st ||
        (strcmp(st, "authorized") != 0 && strcmp(st, "declined") != 0)) {
        moat_log(MOAT_LOG_ERROR, "unexpected answer from the payment provider",
                 "{s:s, s:s, s:i}", "payment", pc->pay_id, "operation",
                 "authorize", "status", r->status);
        o->result = PAY_BAD_ANSWER;
        snprintf(o->error, sizeof(o->error), "unexpected answer (%d)",
                 r->status);
        return;
    }
    o->auth_id_enc = pay_seal(pc->ps, PAY_AD_AUTH_ID, pc->pay_id, id);
    if (!o->auth_id_enc) {
        moat_log(MOAT_LOG_ERROR, "cannot seal a provider id", "{s:s}",
                 "payment", pc->pay_id);
        o->result = PAY_INTERNAL;
        snprintf(o->error, sizeof(o->error), "cannot seal the provider id");
        return;
    }
    if (strcmp(st, "authorized") == 0) {
        o->result = PAY_AUTHORIZED;
        return;
    }
    o->result = PAY_DECLINED;
    snprintf(o->decline_code, sizeof(o->decline_code), "%s",
             code && pay_charset_ok(code, PAY_CODE_MAX, "_-") ? code
                                                              : "declined");
}

static void operation_result(struct pcall *pc,
                             const struct moat_http_response *r, json_t *body,
                             struct pay_outcome *o)
{
    const char *name = ops[pc->op].name;
    if (r->status != ops[pc->op].provider_ok) {
        /* Our books and the provider's disagree (or we are misconfigured):
         * the caller decides; an operator may have to look. */
        const char *type = json_string_value(json_object_get(body, "type"));
        moat_log(MOAT_LOG_ERROR, "the payment provider refused an operation",
                 "{s:s, s:s, s:i, s:s}", "payment", pc->pay_id, "operation",
                 name, "status", r->status, "type", type ? type : "");
        o->result =
            r->status >= 200 && r->status < 300 ? PAY_BAD_ANSWER : PAY_REFUSED;
        if (type &&
            strncmp(type, PROVIDER_PROBLEM, strlen(PROVIDER_PROBLEM)) == 0 &&
            pay_charset_ok(type + strlen(PROVIDER_PROBLEM), 64, "_-"))
            snprintf(o->error, sizeof(o->error), "%s",
                     type + strlen(PROVIDER_PROBLEM));
        else
            snprintf(o->error, sizeof(o->error), "provider answered %d",
                     r->status);
        return;
    }
    if (pc->op == PAY_OP_CAPTURE) {
        const char *cap = json_string_value(
            json_object_get(json_object_get(body, "capture"), "id"));
        if (!provider_id_ok(cap)) {
            o->result = PAY_BAD_ANSWER;
            snprintf(o->error, sizeof(o->error), "the capture has no id");
            return;
        }
        o->capture_id_enc =
            pay_seal(pc->ps, PAY_AD_CAPTURE_ID, pc->pay_id, cap);
        if (!o->capture_id_enc) {
            o->result = PAY_INTERNAL;
            snprintf(o->error, sizeof(o->error), "cannot seal the provider id");
            return;
        }
    }
    o->result = PAY_DONE;
}

static void on_provider(const struct moat_http_response *resp, void *arg)
{
    struct pcall *pc = arg;
    struct pay_outcome o = {.status = resp->status};
    json_t *body = NULL;

    /* Callbacks run outside the server's handler: set the log context,
     * which the outbox and the audit log take the trace from. */
    moat_log_set_trace(&pc->trace);
    if (resp->err == MOAT_OK && resp->body_len > 0)
        body = json_loadb(resp->body, resp->body_len, 0, NULL);

    if (provider_transient(resp, body)) {
        o.result = PAY_TRANSIENT;
        o.cancelled = resp->err == MOAT_ECANCELLED;
        o.in_progress = resp->err == MOAT_OK && resp->status == 409;
        if (resp->err != MOAT_OK)
            snprintf(o.error, sizeof(o.error), "%s",
                     resp->err == MOAT_ETIMEDOUT ? "timeout"
                     : resp->connect_failed      ? "unreachable"
                                                 : moat_strerror(resp->err));
        else
            snprintf(o.error, sizeof(o.error), "provider answered %d",
                     resp->status);
        moat_log(o.cancelled ? MOAT_LOG_INFO : MOAT_LOG_WARN,
                 "payment provider unavailable",
                 "{s:s, s:s, s:s, s:i, s:I, s:f}", "payment", pc->pay_id,
                 "operation", ops[pc->op].name, "error",
                 resp->err_msg ? resp->err_msg : o.error, "status",
                 resp->status, "attempts", (json_int_t)pc->attempts,
                 "duration_ms", resp->elapsed_ms);
    } else if (pc->op == PAY_OP_AUTHORIZE) {
        authorize_result(pc, resp, body, &o);
    } else {
        operation_result(pc, resp, body, &o);
    }
    json_decref(body);
    pc->cb(&o, pc->arg);
    moat_free_secret(o.auth_id_enc);
    moat_free_secret(o.capture_id_enc);
    moat_log_set_trace(NULL);
    free(pc);
}

/* The call's path: a refund goes against the capture, the rest against
 * the authorization; the ids are opened only for the URL. NULL when a
 * stored id cannot be opened (logged). */
static char *op_path(struct pay_service *ps, enum pay_op op,
                     const struct pay_payment *p)
{
    if (op == PAY_OP_AUTHORIZE)
        return moat_xstrdup("/v1/authorizations");
    bool refund = op == PAY_OP_REFUND;
    char *pid = pay_unseal(ps, refund ? PAY_AD_CAPTURE_ID : PAY_AD_AUTH_ID,
                           p->id, refund ? p->capture_id_enc : p->auth_id_enc);
    char *path = NULL;
    if (!provider_id_ok(pid)) {
        moat_log(MOAT_LOG_ERROR, "cannot open a stored provider id",
                 "{s:s, s:s}", "payment", p->id, "column",
                 refund ? "provider_capture_id_enc" : "provider_auth_id_enc");
    } else {
        path = refund ? moat_xasprintf("/v1/captures/%s/refund", pid)
                      : moat_xasprintf("/v1/authorizations/%s/%s", pid,
                                       ops[op].name);
    }
    moat_free_secret(pid);
    return path;
}

int pay_provider_call(struct pay_service *ps, enum pay_op op,
                      const struct pay_payment *p, const char *card_token,
                      const struct moat_trace *trace, pay_provider_cb cb,
                      void *arg)
{
    char *path = op_path(ps, op, p);
    if (!path)
        return MOAT_EPRECOND;
    char *body;
    if (op == PAY_OP_AUTHORIZE) {
        json_t *pb =
            json_pack("{s:I, s:s, s:s, s:s}", "amount", (json_int_t)p->amount,
                      "currency", p->currency, "card_token",
                      card_token ? card_token : "", "reference", p->order_id);
        body = pb ? json_dumps(pb, JSON_COMPACT) : NULL;
        json_decref(pb);
        if (!body)
            moat_die("cannot serialise a provider request");
    } else {
        body = moat_xstrdup("{}");
    }
    char *auth = moat_xasprintf("Bearer %s", ps->cfg.provider_key);
    char *key = moat_xasprintf("%s:%s", p->id, ops[op].name);
    char *url = moat_xasprintf("%s%s", ps->cfg.provider_url, path);
    const struct moat_http_header headers[] = {
        {"Authorization", auth},
        {"Idempotency-Key", key},
        {"Content-Type", "application/json"},
    };
    struct pcall *pc = moat_xcalloc(1, sizeof(*pc));
    pc->ps = ps;
    pc->op = op;
    snprintf(pc->pay_id, sizeof(pc->pay_id), "%s", p->id);
    pc->attempts = p->attempts;
    if (trace)
        pc->trace = *trace;
    pc->cb = cb;
    pc->arg = arg;
    struct moat_http_call call = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .nheaders = MOAT_ARRAY_LEN(headers),
        .body = body,
        .body_len = strlen(body),
        .timeout_ms = ps->cfg.provider_timeout_ms,
        .trace = trace,
    };
    int rc = moat_http_client_send(ps->client, &call, on_provider, pc);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot call the payment provider",
                 "{s:s, s:s}", "payment", p->id, "error", moat_strerror(rc));
        free(pc);
        rc = MOAT_EIO;
    }
    moat_free_secret(body); /* an authorization's holds the card token */
    moat_free_secret(auth);
    free(key);
    free(url);
    free(path);
    return rc;
}
