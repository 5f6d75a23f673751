/*
 * saga.c - payments as a participant of the order saga (docs/saga.md):
 * orders' commands in, the provider's outcomes out as replies in our own
 * outbox, with exactly-once effects and never a second charge.
 *
 * Two halves, both on the loop thread:
 *
 * APPLY (saga_apply, the consumer's handler). Runs inside the libmoat
 * consumer's transaction on payments.db, together with our cursor on
 * orders' feed, and touches nothing but the database. Each command becomes
 * a row of payment_commands, unique per (order, command), so a redelivered
 * or repeated command changes nothing. AuthorizePayment creates the
 * payment (pending, the card token sealed for its row); Capture, Void and
 * Refund queue behind it. Commands that need no provider call because
 * there is no payment (a void or refund before any authorization: the
 * order's tombstone; a capture of nothing; an authorization after the
 * tombstone; a malformed authorization) are answered right there, reply
 * and all, in the same transaction.
 *
 * WORK (round). The head of each payment's queue is carried out: from the
 * payment's state alone when that decides it (a void of a declined
 * payment, a capture of a voided one...), else by a provider call
 * (provider.c: Idempotency-Key "<payment id>:<op>"), at most
 * SAGA_MAX_INFLIGHT at once across payments and one at a time per
 * payment. A round runs when a command was applied, when calls came back
 * and when a backoff ends. It records every outcome that came back since
 * the last round (state change + reply + the command closed, each in a
 * savepoint of its own) and counts the attempts of the calls it is about
 * to make, all in ONE transaction: one fsync per round, however many
 * payments moved. Only after the commit are the new calls sent, so a call
 * is never out before its attempt is on disk, and an outcome is never
 * replied before it is.
 *
 * Crash safety: a command stays queued until its outcome commits. After a
 * crash the next start calls the provider again with the same key, and the
 * provider replays what it did. An unavailable provider (transport error,
 * timeout, 5xx, 429, "in progress", an answer we cannot use) is retried
 * with backoff (SAGA_BACKOFF_MIN_MS doubling to SAGA_BACKOFF_MAX_MS)
 * forever: orders owns the deadline. The first failure of a payment
 * publishes PaymentProviderUnavailable, once.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/orders.h"
#include "contracts/payments.h"
#include "moat/events.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/metrics.h"
#include "payments.h"

#define SAGA_MAX_INFLIGHT   64   /* provider calls out at once */
#define SAGA_BACKOFF_MIN_MS 200  /* after a payment's first failed call */
#define SAGA_BACKOFF_MAX_MS 5000 /* the longest wait between two calls */
/* A command behind a payment decided elsewhere (an HTTP authorization). */
#define SAGA_WAIT_MS 1000
/* Look at the queue at least this often. */
#define SAGA_IDLE_POLL_MS 1000
/* After a failed round transaction. */
#define SAGA_DB_RETRY_MS 100
/* Ready commands left behind: every slot taken (a call coming back wakes
 * us sooner) or the payment busy with an HTTP call. */
#define SAGA_BLOCKED_MS 50
/* Decide-locally passes per round. */
#define SAGA_PASSES     8
#define AMOUNT_MAX      99999999
#define CARD_TOKEN_MAX  64
#define CUSTOMER_ID_MAX 64
#define FEED_SOURCE     "orders"
/* Per-call bound of the feed client: above the longest long poll. */

static const char *const command_types[] = {
    ORDERS_AUTHORIZE_PAYMENT, ORDERS_CAPTURE_PAYMENT, ORDERS_VOID_PAYMENT,
    ORDERS_REFUND_PAYMENT, NULL};

/* One command at the provider, then waiting to be recorded. */
struct scall {
    struct pay_saga *sg;
    struct scall *next;
    struct pay_command cmd;
    struct pay_payment p; /* the payment as the call was decided; owned */
    enum pay_op op;       /* what the provider is asked */
    char busy[PAY_ID_MAX + 8];
    char *card_token; /* authorize only, until sent; a secret */
    bool created;     /* the first call of a new payment: audit it */
    struct moat_trace trace;
    struct pay_outcome o; /* once back; its sealed ids stolen */
};

/* An audit record to append once its round has committed. */
struct saudit {
    struct saudit *next;
    const char *action;   /* static */
    struct pay_payment p; /* owned */
};

struct pay_saga {
    struct pay_service *ps;
    struct moat_consumer *consumer; /* owned */
    struct event *wake;             /* a round on the next loop turn */
    struct event *timer;            /* a round when a backoff ends */
    struct scall *out;              /* calls at the provider */
    size_t nout;
    struct scall *back; /* calls back, to be recorded by the next round */
    struct saudit *audits;
    bool stopping;
    /* metrics */
    struct moat_metric_series *m_status[PAY_NSTATUS];
    struct moat_metric_series *m_queued, *m_oldest, *m_inflight;
    struct moat_metric_family *f_failures;
    struct moat_metric_series *m_rounds, *m_outcomes;
};

/* ---- small helpers ---- */

static void scall_free(struct scall *c)
{
    if (!c)
        return;
    moat_free_secret(c->card_token);
    moat_free_secret(c->o.auth_id_enc);
    moat_free_secret(c->o.capture_id_enc);
    pay_payment_release(&c->p);
    free(c);
}

static void wake(struct pay_saga *sg)
{
    const struct timeval now = {0, 0};
    if (!sg->stopping && !evtimer_pending(sg->wake, NULL))
        evtimer_add(sg->wake, &now);
}

static void audit_later(struct pay_saga *sg, const char *action,
                        const struct pay_payment *p)
{
    struct saudit *a = moat_xcalloc(1, sizeof(*a));
    a->action = action;
    a->p = *p;
    a->p.auth_id_enc = NULL; /* the record needs neither */
    a->p.capture_id_enc = NULL;
    a->next = sg->audits;
    sg->audits = a;
}

static void audits_drop(struct pay_saga *sg, bool append)
{
    /* Oldest first: the list was built newest first. */
    struct saudit *rev = NULL;
    while (sg->audits) {
        struct saudit *a = sg->audits;
        sg->audits = a->next;
        a->next = rev;
        rev = a;
    }
    while (rev) {
        struct saudit *a = rev;
        rev = a->next;
        if (append)
            pay_audit(sg->ps, a->action, a->p.created_by, &a->p);
        free(a);
    }
}

static int64_t backoff_ms(int64_t failures)
{
    int64_t ms = SAGA_BACKOFF_MIN_MS;
    for (int64_t i = 1; i < failures && ms < SAGA_BACKOFF_MAX_MS; i++)
        ms *= 2;
    return ms < SAGA_BACKOFF_MAX_MS ? ms : SAGA_BACKOFF_MAX_MS;
}

/* A reply about an order that has no payment: payment_id null. */
static json_t *no_payment_json(const char *order_id)
{
    return json_pack("{s:s, s:n}", "order_id", order_id, "payment_id");
}

/* ---- APPLY: orders' commands, in the consumer's transaction ---- */

/* Answer a command at once: its row (done) and its reply. data is
 * stolen. */
static int answer_now(struct pay_store *st, const struct moat_event *ev,
                      const char *order_id, const char *command,
                      const char *reply, json_t *data)
{
    const struct pay_command_new c = {
        .order_id = order_id,
        .command = command,
        .state = "done",
        .reason = json_string_value(json_object_get(ev->data, "reason")),
        .feed_seq = ev->seq,
        .traceparent = ev->traceparent[0] ? ev->traceparent : NULL,
        .reply = reply,
        .now_ms = moat_wall_ms(),
    };
    int rc = pay_store_command_add(st, &c);
    if (rc == MOAT_OK)
        rc = pay_store_event(st, reply, order_id, data);
    json_decref(data);
    return rc;
}

static int queue(struct pay_store *st, const struct moat_event *ev,
                 const char *order_id, const char *command,
                 const char *payment_id, int64_t amount)
{
    const struct pay_command_new c = {
        .order_id = order_id,
        .command = command,
        .payment_id = payment_id,
        .state = "queued",
        .amount = amount,
        .reason = json_string_value(json_object_get(ev->data, "reason")),
        .feed_seq = ev->seq,
        .traceparent = ev->traceparent[0] ? ev->traceparent : NULL,
        .now_ms = moat_wall_ms(),
    };
    return pay_store_command_add(st, &c);
}

static int declined_now(struct pay_store *st, const struct moat_event *ev,
                        const char *order_id, const char *code)
{
    json_t *d = no_payment_json(order_id);
    json_object_set_new(d, "decline_code", json_string(code));
    return answer_now(st, ev, order_id, "authorize", PAYMENTS_PAYMENT_DECLINED,
                      d);
}

static int apply_authorize(struct pay_saga *sg, const struct moat_event *ev,
                           const char *order_id, const char **why)
{
    struct pay_service *ps = sg->ps;
    struct pay_store *st = ps->store;
    json_t *d = ev->data;
    const char *currency = json_string_value(json_object_get(d, "currency"));
    const char *card = json_string_value(json_object_get(d, "card_token"));
    const char *customer = json_string_value(json_object_get(d, "customer_id"));
    json_t *amount_j = json_object_get(d, "amount");
    json_int_t amount = json_integer_value(amount_j);
    struct pay_payment p = {0};
    bool cancelled;
    char *sealed = NULL;

    int rc = pay_store_tombstoned(st, order_id, &cancelled);
    if (rc != MOAT_OK)
        return rc;
    if (cancelled) /* voided before it was authorized: never charge it */
        return declined_now(st, ev, order_id, "cancelled");
    if (!json_is_integer(amount_j) || amount < 1 || amount > AMOUNT_MAX ||
        !currency || !pay_currency_ok(currency) || !card ||
        !pay_charset_ok(card, CARD_TOKEN_MAX, "_-") ||
        (customer && !pay_charset_ok(customer, CUSTOMER_ID_MAX, "_-.:")))
        return declined_now(st, ev, order_id, "invalid");

    rc = pay_store_order_payment(st, order_id, &p);
    if (rc == MOAT_OK) {
        bool live = strcmp(p.status, "failed") != 0;
        pay_payment_release(&p);
        /* Paid through the HTTP API already: never a second charge. */
        if (live)
            return declined_now(st, ev, order_id, "order_has_payment");
    } else if (rc != MOAT_ENOTFOUND) {
        return rc;
    }

    memset(&p, 0, sizeof(p));
    /* The same command always makes the same payment id, so the provider
     * idempotency keys (<payment id>:<op>) are the same too: a payments
     * restored from a backup that applies this command again gets the
     * provider's first answer back, never a second charge. */
    moat_id_derive("pay_", ev->time_ms ? ev->time_ms : moat_wall_ms(), ev->id,
                   strlen(ev->id), p.id, sizeof(p.id));
    snprintf(p.order_id, sizeof(p.order_id), "%s", order_id);
    p.amount = amount;
    snprintf(p.currency, sizeof(p.currency), "%s", currency);
    snprintf(p.status, sizeof(p.status), "pending");
    snprintf(p.created_by, sizeof(p.created_by), "%s", ev->source);
    p.version = 1;
    p.created_ms = p.updated_ms = moat_wall_ms();
    sealed = pay_seal(ps, PAY_AD_CARD_TOKEN, p.id, card);
    if (!sealed) {
        *why = "cannot seal the card token";
        return MOAT_EIO;
    }
    rc = pay_store_saga_create(st, &p, customer, sealed);
    if (rc == MOAT_OK)
        rc = queue(st, ev, order_id, "authorize", p.id, 0);
    free(sealed);
    return rc;
}

static int apply_capture(struct pay_saga *sg, const struct moat_event *ev,
                         const char *order_id)
{
    struct pay_store *st = sg->ps->store;
    json_t *amount_j = json_object_get(ev->data, "amount");
    json_int_t amount = json_integer_value(amount_j);
    struct pay_payment p;
    int rc = pay_store_order_payment(st, order_id, &p);
    if (rc == MOAT_ENOTFOUND) {
        json_t *d = no_payment_json(order_id);
        json_object_set_new(d, "error", json_string("no_payment"));
        return answer_now(st, ev, order_id, "capture",
                          PAYMENTS_PAYMENT_CAPTURE_FAILED, d);
    }
    if (rc != MOAT_OK)
        return rc;
    if (amount_j &&
        (!json_is_integer(amount_j) || amount < 1 || amount > AMOUNT_MAX)) {
        json_t *d = no_payment_json(order_id);
        json_object_set_new(d, "payment_id", json_string(p.id));
        json_object_set_new(d, "error", json_string("invalid"));
        pay_payment_release(&p);
        return answer_now(st, ev, order_id, "capture",
                          PAYMENTS_PAYMENT_CAPTURE_FAILED, d);
    }
    rc = queue(st, ev, order_id, "capture", p.id, amount_j ? amount : 0);
    pay_payment_release(&p);
    return rc;
}

/* VoidPayment and RefundPayment: give the money back, whatever it is. */
static int apply_compensate(struct pay_saga *sg, const struct moat_event *ev,
                            const char *order_id, const char *command)
{
    struct pay_store *st = sg->ps->store;
    struct pay_payment p;
    int rc = pay_store_order_payment(st, order_id, &p);
    if (rc == MOAT_ENOTFOUND) {
        /* The order's tombstone: a later authorization is refused. */
        json_t *d = no_payment_json(order_id);
        json_object_set_new(d, "status", json_string("voided"));
        return answer_now(st, ev, order_id, command, PAYMENTS_PAYMENT_VOIDED,
                          d);
    }
    if (rc != MOAT_OK)
        return rc;
    rc = queue(st, ev, order_id, command, p.id, 0);
    pay_payment_release(&p);
    return rc;
}

/* A command, its data in the current schema. */
static int apply_command(struct moat_db *db, const struct moat_event *ev,
                         void *arg, const char **why)
{
    MOAT_UNUSED(db); /* the store's own connection: the same database */
    struct pay_saga *sg = arg;
    const char *order_id =
        json_string_value(json_object_get(ev->data, "order_id"));
    const char *command =
        strcmp(ev->type, ORDERS_AUTHORIZE_PAYMENT) == 0 ? "authorize"
        : strcmp(ev->type, ORDERS_CAPTURE_PAYMENT) == 0 ? "capture"
        : strcmp(ev->type, ORDERS_VOID_PAYMENT) == 0    ? "void"
        : strcmp(ev->type, ORDERS_REFUND_PAYMENT) == 0  ? "refund"
                                                        : NULL;
    bool seen;
    int rc;

    if (!command) /* not subscribed; cannot happen */
        return MOAT_OK;
    if (!order_id || !pay_charset_ok(order_id, PAY_ORDER_ID_MAX, "_-.:")) {
        /* Nothing to reply to: park it for an operator. */
        *why = "the command has no valid order_id";
        return MOAT_EINVAL;
    }
    rc = pay_store_command_find(sg->ps->store, order_id, command, &seen);
    if (rc != MOAT_OK || seen) /* the same command again: nothing new */
        return rc;
    if (strcmp(command, "authorize") == 0)
        rc = apply_authorize(sg, ev, order_id, why);
    else if (strcmp(command, "capture") == 0)
        rc = apply_capture(sg, ev, order_id);
    else
        rc = apply_compensate(sg, ev, order_id, command);
    if (rc == MOAT_OK)
        wake(sg); /* runs after the consumer's commit, on the next turn */
    return rc;
}

static int saga_apply(struct moat_db *db, const struct moat_event *ev,
                      void *arg, const char **why)
{
    /* The command's data in its current schema, by orders' contract; a
     * newer version is refused (parked until payments is upgraded). */
    struct moat_event cur = *ev;
    cur.data = NULL;
    int rc =
        orders_upcast(ev->type, ev->schema_version, ev->data, &cur.data, why);
    if (rc == MOAT_OK)
        rc = apply_command(db, &cur, arg, why);
    json_decref(cur.data);
    return rc;
}

/* ---- WORK: outcomes recorded, next calls decided, one transaction ---- */

/*
 * A reply for the payment p as it is now, and the command closed; with a
 * state change when to is set. All inside a savepoint the caller opened.
 */
struct step {
    const struct pay_command *cmd;
    struct pay_payment *p; /* updated in place on a state change */
    const char *to;        /* NULL: no state change */
    const char *auth_enc, *capture_enc, *decline_code;
    bool wipe_card;
    const char *action;       /* audit action with the state change */
    const char *reply;        /* NULL: none (the command failed) */
    const char *reply_status; /* overrides the payment's status */
    const char *error;        /* into the reply as "error" */
    const char *state;        /* "done" (default) or "failed" */
};

static int record_step(struct pay_saga *sg, struct step *s, int64_t now)
{
    struct pay_store *st = sg->ps->store;
    struct pay_payment *p = s->p;
    json_t *data = NULL;
    char from[PAY_STATUS_MAX];
    int rc;

    snprintf(from, sizeof(from), "%s", p->status);
    if (s->to) {
        snprintf(p->status, sizeof(p->status), "%s", s->to);
        if (s->decline_code)
            snprintf(p->decline_code, sizeof(p->decline_code), "%s",
                     s->decline_code);
        p->version++;
        p->updated_ms = now;
    }
    if (s->reply) {
        data = pay_event_json(p);
        if (s->reply_status)
            json_object_set_new(data, "status", json_string(s->reply_status));
        if (s->error)
            json_object_set_new(data, "error", json_string(s->error));
    }
    if (s->to) {
        const struct pay_transition t = {
            .id = p->id,
            .from = from,
            .to = s->to,
            .auth_id_enc = s->auth_enc,
            .capture_id_enc = s->capture_enc,
            .decline_code = s->decline_code,
            .wipe_card_token = s->wipe_card,
            .now_ms = now,
            .event_type = s->reply,
            .subject = p->order_id,
            .event_data = data,
        };
        rc = pay_store_apply(st, &t);
    } else {
        rc = s->reply ? pay_store_event(st, s->reply, p->order_id, data)
                      : MOAT_OK;
    }
    if (rc == MOAT_OK)
        rc =
            pay_store_command_done(st, s->cmd->id, s->state ? s->state : "done",
                                   s->reply, s->error, now);
    json_decref(data);
    if (rc == MOAT_OK && s->to)
        audit_later(sg, s->action, p);
    if (rc == MOAT_OK)
        moat_metric_add(sg->m_outcomes, 1);
    return rc;
}

/* The provider could not answer: try again later; the first time for
 * this payment, tell orders. "Still in progress" (our own earlier call,
 * e.g. from before a restart, is being worked on) is no outage: retried
 * as soon as the provider has had time, and not reported. */
static int record_unavailable(struct pay_saga *sg, const struct scall *c,
                              int64_t now)
{
    struct pay_store *st = sg->ps->store;
    const char *labels[] = {pay_op_name(c->op)};
    bool first = false;
    if (c->o.in_progress)
        return pay_store_command_retry(st, c->cmd.id, now + SAGA_BACKOFF_MIN_MS,
                                       c->o.error);
    moat_metric_add(moat_metric_series(sg->f_failures, labels), 1);
    int rc = pay_store_command_retry(
        st, c->cmd.id, now + backoff_ms(c->cmd.attempts + 1), c->o.error);
    if (rc == MOAT_OK)
        rc = pay_store_mark_unavailable(st, c->p.id, &first);
    if (rc == MOAT_OK && first) {
        json_t *d = json_pack("{s:s, s:s, s:I, s:s}", "order_id", c->p.order_id,
                              "payment_id", c->p.id, "attempts",
                              (json_int_t)c->p.attempts, "error", c->o.error);
        rc = pay_store_event(st, PAYMENTS_PAYMENT_PROVIDER_UNAVAILABLE,
                             c->p.order_id, d);
        json_decref(d);
    }
    return rc;
}

/* What a call that came back changes. */
static int record_call(struct pay_saga *sg, struct scall *c, int64_t now)
{
    struct pay_outcome *o = &c->o;
    struct step s = {.cmd = &c->cmd, .p = &c->p};

    switch (o->result) {
    case PAY_TRANSIENT:
    case PAY_BAD_ANSWER:
    case PAY_INTERNAL:
        return record_unavailable(sg, c, now);
    case PAY_AUTHORIZED:
        s.to = "authorized";
        s.auth_enc = o->auth_id_enc;
        s.wipe_card = true;
        s.action = "payment.authorized";
        s.reply = PAYMENTS_PAYMENT_AUTHORIZED;
        break;
    case PAY_DECLINED:
    case PAY_REJECTED:
        s.to = o->result == PAY_DECLINED ? "declined" : "failed";
        s.auth_enc = o->auth_id_enc;
        s.decline_code = o->decline_code;
        s.wipe_card = true;
        s.action =
            o->result == PAY_DECLINED ? "payment.declined" : "payment.failed";
        s.reply = PAYMENTS_PAYMENT_DECLINED;
        break;
    case PAY_DONE:
        s.to = c->op == PAY_OP_CAPTURE ? "captured"
               : c->op == PAY_OP_VOID  ? "voided"
                                       : "refunded";
        s.capture_enc = o->capture_id_enc;
        s.action = c->op == PAY_OP_CAPTURE ? "payment.captured"
                   : c->op == PAY_OP_VOID  ? "payment.voided"
                                           : "payment.refunded";
        s.reply = c->op == PAY_OP_CAPTURE ? PAYMENTS_PAYMENT_CAPTURED
                  : c->op == PAY_OP_VOID  ? PAYMENTS_PAYMENT_VOIDED
                                          : PAYMENTS_PAYMENT_REFUNDED;
        break;
    case PAY_REFUSED:
        if (c->op == PAY_OP_CAPTURE) {
            s.reply = PAYMENTS_PAYMENT_CAPTURE_FAILED;
            s.error = o->error;
        } else {
            /* The provider will not give the money back although our
             * books say it holds it: an operator must look. */
            moat_log(MOAT_LOG_ERROR, "saga command failed at the provider",
                     "{s:s, s:s, s:s, s:s}", "payment", c->p.id, "order",
                     c->p.order_id, "operation", pay_op_name(c->op), "error",
                     o->error);
            s.state = "failed";
            s.error = o->error;
        }
        break;
    }
    return record_step(sg, &s, now);
}

enum decision { D_LOCAL, D_CALL, D_WAIT, D_SKIP };

/*
 * Decide the command cmd at the head of its payment's queue from the
 * payment's state: record it at once (D_LOCAL), or fill *call for the
 * provider (D_CALL; the attempt is counted), or wait (D_WAIT).
 */
static enum decision decide(struct pay_saga *sg, const struct pay_command *cmd,
                            int64_t now, struct scall **call, int *rc)
{
    struct pay_service *ps = sg->ps;
    struct pay_store *st = ps->store;
    struct pay_payment p;
    struct step s = {.cmd = cmd, .p = &p};
    enum pay_op op = PAY_OP_AUTHORIZE;
    enum decision d = D_LOCAL;
    char *card = NULL;

    *rc = pay_store_get(st, cmd->payment_id, &p);
    if (*rc != MOAT_OK)
        return D_SKIP;
    const char *status = p.status;
    bool pending = strcmp(status, "pending") == 0;
    bool authorized = strcmp(status, "authorized") == 0;
    bool captured = strcmp(status, "captured") == 0;
    bool refunded = strcmp(status, "refunded") == 0;
    bool voided = strcmp(status, "voided") == 0;

    if (strcmp(cmd->command, "authorize") == 0) {
        if (pending) {
            char *enc = NULL;
            *rc = pay_store_card_token(st, p.id, &enc);
            card = *rc == MOAT_OK ? pay_unseal(ps, PAY_AD_CARD_TOKEN, p.id, enc)
                                  : NULL;
            free(enc);
            if (*rc != MOAT_OK) {
                d = D_SKIP;
            } else if (card) {
                d = D_CALL;
                op = PAY_OP_AUTHORIZE;
            } else {
                moat_log(MOAT_LOG_ERROR, "cannot open a saga card token",
                         "{s:s}", "payment", p.id);
                s.to = "failed";
                s.decline_code = "card_token_unreadable";
                s.action = "payment.failed";
                s.reply = PAYMENTS_PAYMENT_DECLINED;
            }
        } else if (strcmp(status, "declined") == 0 ||
                   strcmp(status, "failed") == 0) {
            s.reply = PAYMENTS_PAYMENT_DECLINED;
        } else {
            s.reply =
                PAYMENTS_PAYMENT_AUTHORIZED; /* it was, whatever came after */
        }
    } else if (strcmp(cmd->command, "capture") == 0) {
        if (pending) {
            d = D_WAIT;
        } else if (authorized && cmd->amount && cmd->amount != p.amount) {
            s.reply = PAYMENTS_PAYMENT_CAPTURE_FAILED;
            s.error = "amount_mismatch";
        } else if (authorized) {
            d = D_CALL;
            op = PAY_OP_CAPTURE;
        } else if (captured || refunded) {
            s.reply = PAYMENTS_PAYMENT_CAPTURED;
        } else {
            s.reply = PAYMENTS_PAYMENT_CAPTURE_FAILED;
            s.error = voided ? "payment_voided" : "payment_declined";
        }
    } else { /* void, refund: give back whatever is held */
        if (pending) {
            d = D_WAIT;
        } else if (authorized) {
            d = D_CALL;
            op = PAY_OP_VOID;
        } else if (captured) {
            d = D_CALL;
            op = PAY_OP_REFUND;
        } else if (refunded) {
            s.reply = PAYMENTS_PAYMENT_REFUNDED;
        } else {
            s.reply = PAYMENTS_PAYMENT_VOIDED;
            s.reply_status = voided ? "voided" : "declined";
        }
    }

    if (d == D_LOCAL) {
        *rc = record_step(sg, &s, now);
    } else if (d == D_WAIT) {
        *rc = pay_store_command_retry(st, cmd->id, now + SAGA_WAIT_MS,
                                      "waiting for the payment to be decided");
    } else if (d == D_CALL) {
        *rc = pay_store_count_attempt(st, p.id);
        if (*rc == MOAT_OK) {
            struct scall *c = moat_xcalloc(1, sizeof(*c));
            c->sg = sg;
            c->cmd = *cmd;
            c->p = p;
            c->p.attempts++;
            c->op = op;
            c->card_token = card;
            c->created = op == PAY_OP_AUTHORIZE && p.attempts == 0;
            card = NULL;
            snprintf(c->busy, sizeof(c->busy), "pay:%s", p.id);
            moat_trace_start(
                &c->trace, cmd->traceparent[0] ? cmd->traceparent : NULL, NULL);
            memset(&p, 0, sizeof(p)); /* its strings moved to c */
            *call = c;
        }
    }
    moat_free_secret(card);
    pay_payment_release(&p);
    return d;
}

struct ready {
    struct pay_command *v;
    size_t n, cap;
};

static void collect_ready(const struct pay_command *cmd, void *arg)
{
    struct ready *r = arg;
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->v = moat_xrealloc(r->v, r->cap * sizeof(r->v[0]));
    }
    r->v[r->n++] = *cmd;
}

static void on_call_back(struct pay_outcome *o, void *arg);

/* Send the calls decided by a committed round. */
static void send_calls(struct pay_saga *sg, struct scall *list)
{
    while (list) {
        struct scall *c = list;
        list = c->next;
        c->next = sg->out;
        sg->out = c;
        sg->nout++;
        int rc = pay_provider_call(sg->ps, c->op, &c->p, c->card_token,
                                   &c->trace, on_call_back, c);
        moat_free_secret(c->card_token);
        c->card_token = NULL;
        if (rc != MOAT_OK) {
            /* As if the provider were down: backoff, and said once. */
            struct pay_outcome o = {.result = PAY_TRANSIENT};
            snprintf(o.error, sizeof(o.error), "cannot call the provider");
            on_call_back(&o, c);
        }
    }
}

/* Unlink c from the calls at the provider. */
static void out_remove(struct pay_saga *sg, struct scall *c)
{
    for (struct scall **pp = &sg->out; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            sg->nout--;
            return;
        }
}

static void on_call_back(struct pay_outcome *o, void *arg)
{
    struct scall *c = arg;
    struct pay_saga *sg = c->sg;
    out_remove(sg, c);
    if (sg->stopping) {
        /* Shutting down: the command stays queued, and the next start
         * asks the provider again under the same key. */
        pay_busy_drop(sg->ps, c->busy);
        scall_free(c);
        return;
    }
    c->o = *o;
    o->auth_id_enc = NULL; /* stolen */
    o->capture_id_enc = NULL;
    c->next = sg->back;
    sg->back = c;
    wake(sg);
}

static void arm_timer(struct pay_saga *sg, int64_t now, int64_t at_ms)
{
    int64_t ms = SAGA_IDLE_POLL_MS;
    if (at_ms >= 0 && at_ms <= now)
        ms = SAGA_BLOCKED_MS; /* ready yet left: not worth spinning on */
    else if (at_ms >= 0 && at_ms - now < ms)
        ms = at_ms - now;
    const struct timeval tv = {(time_t)(ms / 1000),
                               (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(sg->timer, &tv);
}

static void round_run(struct pay_saga *sg)
{
    struct pay_service *ps = sg->ps;
    struct pay_store *st = ps->store;
    int64_t now = moat_wall_ms();
    struct scall *back = sg->back;
    struct scall *send = NULL;
    size_t nsend = 0;
    struct ready ready = {0};
    int64_t next_at = -1;
    int rc;

    if (sg->stopping)
        return;
    sg->back = NULL;
    rc = pay_store_begin(st);
    if (rc != MOAT_OK)
        goto failed;
    moat_metric_add(sg->m_rounds, 1);

    /* 1. Outcomes that came back, each all or nothing. A failed one
     * leaves its command queued: the provider replays it next time. */
    for (struct scall *c = back; c; c = c->next) {
        moat_log_set_trace(&c->trace);
        if (pay_store_savepoint(st) == MOAT_OK) {
            int r = record_call(sg, c, now);
            if (r == MOAT_OK)
                r = pay_store_savepoint_release(st);
            if (r != MOAT_OK) {
                moat_log(MOAT_LOG_ERROR, "cannot record a provider outcome",
                         "{s:s, s:s}", "payment", c->p.id, "error",
                         moat_strerror(r));
                pay_store_savepoint_undo(st);
            }
        }
        moat_log_set_trace(NULL);
        pay_busy_drop(ps, c->busy);
    }

    /* 2. The heads of the queues: decided here, or a call to make. A
     * local decision may free the next command of its payment, hence a
     * few passes. */
    for (int pass = 0; pass < SAGA_PASSES; pass++) {
        bool progressed = false;
        size_t room = SAGA_MAX_INFLIGHT - sg->nout - nsend;
        ready.n = 0;
        if (room == 0)
            break;
        rc = pay_store_commands_ready(st, now, (int)(room + sg->nout + nsend),
                                      collect_ready, &ready);
        if (rc != MOAT_OK)
            goto failed;
        for (size_t i = 0; i < ready.n && nsend + sg->nout < SAGA_MAX_INFLIGHT;
             i++) {
            const struct pay_command *cmd = &ready.v[i];
            char busy[PAY_ID_MAX + 8];
            snprintf(busy, sizeof(busy), "pay:%s", cmd->payment_id);
            if (pay_busy_find(ps, busy))
                continue; /* at the provider, ours or an HTTP caller's */
            struct moat_trace tr;
            moat_trace_start(&tr, cmd->traceparent[0] ? cmd->traceparent : NULL,
                             NULL);
            moat_log_set_trace(&tr);
            struct scall *c = NULL;
            int r = pay_store_savepoint(st);
            enum decision d = D_SKIP;
            if (r == MOAT_OK)
                d = decide(sg, cmd, now, &c, &r);
            if (r == MOAT_OK)
                r = pay_store_savepoint_release(st);
            moat_log_set_trace(NULL);
            if (r != MOAT_OK) {
                moat_log(MOAT_LOG_ERROR, "cannot carry out a saga command",
                         "{s:s, s:s, s:s}", "order", cmd->order_id, "command",
                         cmd->command, "error", moat_strerror(r));
                pay_store_savepoint_undo(st);
                scall_free(c);
                continue;
            }
            if (d == D_LOCAL)
                progressed = true;
            if (c) {
                pay_busy_take(ps, c->busy);
                c->next = send;
                send = c;
                nsend++;
            }
        }
        if (!progressed)
            break;
    }
    rc = pay_store_commands_next_at(st, &next_at);
    if (rc == MOAT_OK)
        rc = pay_store_commit(st);
    if (rc != MOAT_OK)
        goto failed;

    audits_drop(sg, true);
    for (struct scall *c = send; c; c = c->next)
        if (c->created)
            pay_audit(ps, "payment.created", c->p.created_by, &c->p);
    while (back) {
        struct scall *c = back;
        back = c->next;
        scall_free(c);
    }
    send_calls(sg, send);
    free(ready.v);
    arm_timer(sg, now, next_at);
    return;

failed:
    moat_log(MOAT_LOG_ERROR, "saga round failed", "{s:s}", "error",
             moat_strerror(rc));
    pay_store_rollback(st);
    audits_drop(sg, false);
    /* Nothing of it happened: the commands stay queued and come again. */
    while (send) {
        struct scall *c = send;
        send = c->next;
        pay_busy_drop(ps, c->busy);
        scall_free(c);
    }
    while (back) {
        struct scall *c = back;
        back = c->next;
        pay_busy_drop(ps, c->busy);
        scall_free(c);
    }
    free(ready.v);
    arm_timer(sg, now, now + SAGA_DB_RETRY_MS);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct pay_saga *sg = arg;
    evtimer_del(sg->timer);
    round_run(sg);
}

/* ---- metrics ---- */

static void collect(struct moat_metrics *m, void *arg)
{
    MOAT_UNUSED(m);
    struct pay_saga *sg = arg;
    struct pay_stats stats;
    if (pay_store_stats(sg->ps->store, &stats) != MOAT_OK)
        return;
    for (size_t i = 0; i < PAY_NSTATUS; i++)
        moat_metric_set(sg->m_status[i], (double)stats.by_status[i]);
    moat_metric_set(sg->m_queued, (double)stats.queued);
    int64_t now = moat_wall_ms();
    moat_metric_set(sg->m_oldest,
                    stats.queued && stats.oldest_queued_ms < now
                        ? (double)(now - stats.oldest_queued_ms) / 1000.0
                        : 0.0);
    moat_metric_set(sg->m_inflight, (double)sg->nout);
}

static int register_metrics(struct pay_saga *sg, struct moat_metrics *m)
{
    struct moat_metric_family *status =
        moat_metrics_family(m, MOAT_GAUGE, "moat_payments_payments",
                            "Payments by status", "status", NULL, 0);
    struct moat_metric_family *queued = moat_metrics_family(
        m, MOAT_GAUGE, "moat_payments_saga_commands_queued",
        "Orders' commands waiting to be carried out", NULL, NULL, 0);
    struct moat_metric_family *oldest = moat_metrics_family(
        m, MOAT_GAUGE, "moat_payments_saga_oldest_queued_seconds",
        "Age of the oldest queued command (0 when none)", NULL, NULL, 0);
    struct moat_metric_family *inflight = moat_metrics_family(
        m, MOAT_GAUGE, "moat_payments_saga_provider_calls_in_flight",
        "Saga calls at the provider", NULL, NULL, 0);
    sg->f_failures = moat_metrics_family(
        m, MOAT_COUNTER, "moat_payments_provider_failures_total",
        "Saga provider calls that got no usable answer (retried), by "
        "operation",
        "operation", NULL, 0);
    struct moat_metric_family *rounds = moat_metrics_family(
        m, MOAT_COUNTER, "moat_payments_saga_rounds_total",
        "Worker transactions (one fsync each)", NULL, NULL, 0);
    struct moat_metric_family *outcomes = moat_metrics_family(
        m, MOAT_COUNTER, "moat_payments_saga_outcomes_total",
        "Commands closed by the worker", NULL, NULL, 0);
    if (!status || !queued || !oldest || !inflight || !sg->f_failures ||
        !rounds || !outcomes)
        return MOAT_EINVAL;
    for (size_t i = 0; i < PAY_NSTATUS; i++) {
        const char *labels[] = {pay_status_name(i)};
        sg->m_status[i] = moat_metric_series(status, labels);
    }
    sg->m_queued = moat_metric_single(queued);
    sg->m_oldest = moat_metric_single(oldest);
    sg->m_inflight = moat_metric_single(inflight);
    sg->m_rounds = moat_metric_single(rounds);
    sg->m_outcomes = moat_metric_single(outcomes);
    moat_metrics_on_collect(m, collect, sg);
    return MOAT_OK;
}

/* ---- lifecycle ---- */

int pay_saga_new(struct pay_service *ps)
{
    struct moat_service *svc = ps->svc;
    struct pay_saga *sg = moat_xcalloc(1, sizeof(*sg));
    sg->ps = ps;

    int rc = MOAT_EIO;
    sg->wake = evtimer_new(svc->base, on_wake, sg);
    sg->timer = evtimer_new(svc->base, on_wake, sg);
    if (!sg->wake || !sg->timer)
        goto cleanup;
    rc = moat_consumer_new(&sg->consumer, svc->base, pay_store_db(ps->store),
                           svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    /* Tombstone replies are appended by the handler itself. */
    moat_consumer_set_outbox(sg->consumer, pay_store_outbox(ps->store));
    rc = moat_service_subscribe(svc, sg->consumer, FEED_SOURCE,
                                ps->cfg.orders_url, command_types, saga_apply,
                                sg);
    if (rc != MOAT_OK)
        goto cleanup;
    /* Status and dead letters; no view ops: replay is not ours to run
     * (a payment is not a view that can be rebuilt), so it answers 501. */
    rc = moat_consumer_register_admin(sg->consumer, svc->http,
                                      svc->cfg.data_dir, NULL);
    if (rc == MOAT_OK)
        rc = register_metrics(sg, svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    ps->saga = sg;
    sg = NULL;

cleanup:
    pay_saga_free(sg);
    return rc;
}

void pay_saga_start(struct pay_saga *sg)
{
    moat_log(MOAT_LOG_INFO, "consuming orders' commands", "{s:s}", "feed",
             sg->ps->cfg.orders_url);
    moat_consumer_start(sg->consumer);
    /* Commands queued before a restart (calls that were out when we
     * stopped included) go at once. */
    wake(sg);
}

void pay_saga_stop(struct pay_saga *sg)
{
    if (!sg)
        return;
    sg->stopping = true;
    evtimer_del(sg->wake);
    evtimer_del(sg->timer);
}

void pay_saga_free(struct pay_saga *sg)
{
    if (!sg)
        return;
    sg->stopping = true;
    /* moat/service.h's FREE ORDER. */
    moat_consumer_free(sg->consumer);
    /* Calls still out are cancelled by the provider client's free, which
     * the service does before this (pay_saga_stop first). */
    while (sg->out) {
        struct scall *c = sg->out;
        sg->out = c->next;
        scall_free(c);
    }
    while (sg->back) {
        struct scall *c = sg->back;
        sg->back = c->next;
        scall_free(c);
    }
    audits_drop(sg, false);
    if (sg->wake)
        event_free(sg->wake);
    if (sg->timer)
        event_free(sg->timer);
    free(sg);
}
