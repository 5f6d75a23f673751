/*
 * saga.c - the CreateOrder saga, orchestrated (docs/saga.md).
 *
 * Every transition runs inside one transaction on orders' database: the
 * order's new state and the commands or events it sends are committed
 * together (transactional outbox), so a crash either loses the whole step
 * or none of it. Replies arrive through the libmoat consumer, whose cursor
 * commits in the same transaction, and every reply is checked against the
 * step the saga is in: a duplicate or a late reply changes nothing it
 * should not.
 *
 * Compensation rule (one place, compensate()): release the stock if a
 * ReserveStock went out and did not fail; refund the payment if a capture
 * went out and did not fail, else void it if an authorization went out and
 * was not declined. The participants apply one order's commands in the
 * order orders sent them, so a compensation always finds the step it
 * undoes (or leaves a tombstone that refuses a late one).
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <string.h>

#include "contracts/inventory.h"
#include "contracts/orders.h"
#include "contracts/payments.h"
#include "moat/audit.h"
#include "moat/log.h"
#include "moat/trace.h"
#include "orders.h"

#define SWEEP_INTERVAL_MS 200
#define SWEEP_BATCH       200

const char *const ord_inventory_replies[] = {
    INVENTORY_STOCK_RESERVED, INVENTORY_STOCK_RESERVATION_FAILED,
    INVENTORY_STOCK_RELEASED, INVENTORY_STOCK_COMMITTED, NULL};
const char *const ord_payments_replies[] = {
    PAYMENTS_PAYMENT_AUTHORIZED,
    PAYMENTS_PAYMENT_DECLINED,
    PAYMENTS_PAYMENT_PROVIDER_UNAVAILABLE,
    PAYMENTS_PAYMENT_CAPTURED,
    PAYMENTS_PAYMENT_CAPTURE_FAILED,
    PAYMENTS_PAYMENT_VOIDED,
    PAYMENTS_PAYMENT_REFUNDED,
    NULL};

/* ---- sending ---- */

static json_t *lines_for_stock(const struct ord_order *o)
{
    json_t *a = json_array();
    for (size_t i = 0; i < o->nlines; i++)
        json_array_append_new(a, json_pack("{s:s, s:I}", "sku", o->lines[i].sku,
                                           "quantity",
                                           (json_int_t)o->lines[i].quantity));
    return a;
}

static json_t *lines_for_event(const struct ord_order *o)
{
    json_t *a = json_array();
    for (size_t i = 0; i < o->nlines; i++) {
        const struct ord_line *l = &o->lines[i];
        json_array_append_new(
            a, json_pack("{s:s, s:s, s:s, s:I, s:I}", "product_id",
                         l->product_id, "sku", l->sku, "name", l->name,
                         "unit_price", (json_int_t)l->unit_price, "quantity",
                         (json_int_t)l->quantity));
    }
    return a;
}

/* Append type with data (stolen) for o. */
static int emit(struct ord_service *os, const char *type,
                const struct ord_order *o, json_t *data)
{
    if (!data)
        return MOAT_EINVAL;
    json_object_set_new(data, "order_id", json_string(o->id));
    int rc = moat_outbox_append(os->outbox, type, o->id, orders_schema(type),
                                data, NULL);
    json_decref(data);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot append to the outbox", "{s:s, s:s}",
                 "type", type, "error", moat_strerror(rc));
    return rc;
}

/* The order event of o's status (OrderConfirmed / OrderCancelled). */
static int send_order_event(struct ord_service *os, const struct ord_order *o)
{
    json_t *d = json_pack("{s:s, s:s, s:I, s:s, s:I}", "customer_id",
                          o->customer_id, "status", o->status, "total",
                          (json_int_t)o->total, "currency", o->currency,
                          "version", (json_int_t)o->version + 1);
    if (strcmp(o->status, "confirmed") == 0) {
        json_object_set_new(d, "payment_id", json_string(o->payment_id));
        return emit(os, ORDERS_ORDER_CONFIRMED, o, d);
    }
    json_object_set_new(d, "reason", json_string(o->cancel_reason));
    return emit(os, ORDERS_ORDER_CANCELLED, o, d);
}

static void set_step(struct ord_service *os, struct ord_order *o,
                     const char *step, bool with_deadline)
{
    snprintf(o->step, sizeof(o->step), "%s", step);
    o->deadline_ms = with_deadline ? moat_wall_ms() + os->step_timeout_ms : 0;
}

static void observe_done(struct ord_service *os, const struct ord_order *o)
{
    const char *outcome[] = {o->status};
    moat_metric_add(moat_metric_series(os->outcomes, outcome), 1);
    moat_metric_observe(os->saga_seconds,
                        (double)(o->completed_ms - o->created_ms) / 1000.0);
}

/* An order's state change in the audit log (moat/audit.h): by the saga
 * (r NULL) or by the request r. */
void ord_audit(struct ord_service *os, struct moat_req *r,
               const struct ord_order *o, const char *action)
{
    json_t *d = json_pack("{s:s, s:s, s:s, s:s, s:I, s:s}", "customer_id",
                          o->customer_id, "status", o->status, "step", o->step,
                          "reason", o->cancel_reason, "total",
                          (json_int_t)o->total, "currency", o->currency);
    moat_audit_req(os->audit, r, action, o->id, "ok", d);
    json_decref(d);
}

/* Final: status (confirmed / cancelled), step done, its order event. */
static int finish(struct ord_service *os, struct ord_order *o,
                  const char *status)
{
    snprintf(o->status, sizeof(o->status), "%s", status);
    set_step(os, o, "done", false);
    o->completed_ms = moat_wall_ms();
    int rc = send_order_event(os, o);
    if (rc == MOAT_OK)
        rc = ord_order_update(os->db, o);
    if (rc == MOAT_OK) {
        observe_done(os, o);
        ord_audit(os, NULL, o, "order.finished");
        moat_log(MOAT_LOG_INFO, "order saga finished", "{s:s, s:s, s:s}",
                 "order", o->id, "status", o->status, "reason",
                 o->cancel_reason);
    }
    return rc;
}

/* Enter compensating for reason, sending what undoes what was done. */
static int compensate(struct ord_service *os, struct ord_order *o,
                      const char *reason)
{
    int rc = MOAT_OK;
    snprintf(o->cancel_reason, sizeof(o->cancel_reason), "%s", reason);
    set_step(os, o, "compensating", false);
    o->card_token[0] = '\0';
    o->pending_comp = 0;
    if ((o->flags & ORD_F_SENT_RESERVE) && !(o->flags & ORD_F_RESERVE_FAILED) &&
        !(o->flags & ORD_F_SENT_RELEASE)) {
        rc = emit(os, ORDERS_RELEASE_STOCK, o,
                  json_pack("{s:s}", "reason", reason));
        o->flags |= ORD_F_SENT_RELEASE;
        o->pending_comp |= ORD_COMP_STOCK;
    }
    if (rc == MOAT_OK && (o->flags & ORD_F_SENT_AUTHORIZE) &&
        !(o->flags & ORD_F_DECLINED)) {
        bool captured = (o->flags & ORD_F_SENT_CAPTURE) &&
                        !(o->flags & ORD_F_CAPTURE_FAILED);
        if (captured && !(o->flags & ORD_F_SENT_REFUND)) {
            rc = emit(os, ORDERS_REFUND_PAYMENT, o,
                      json_pack("{s:s}", "reason", reason));
            o->flags |= ORD_F_SENT_REFUND;
            o->pending_comp |= ORD_COMP_PAYMENT;
        } else if (!captured && !(o->flags & ORD_F_SENT_VOID)) {
            rc = emit(os, ORDERS_VOID_PAYMENT, o,
                      json_pack("{s:s}", "reason", reason));
            o->flags |= ORD_F_SENT_VOID;
            o->pending_comp |= ORD_COMP_PAYMENT;
        }
    }
    if (rc != MOAT_OK)
        return rc;
    moat_log(MOAT_LOG_INFO, "order saga compensating", "{s:s, s:s}", "order",
             o->id, "reason", reason);
    if (!o->pending_comp)
        return finish(os, o, "cancelled");
    return ord_order_update(os->db, o);
}

/* Insert o (version 1) and append its OrderPlaced. */
static int insert_placed(struct ord_service *os, const struct ord_order *o)
{
    int rc = ord_order_insert(os->db, o);
    if (rc == MOAT_OK)
        rc = emit(os, ORDERS_ORDER_PLACED, o,
                  json_pack("{s:s, s:s, s:I, s:s, s:o, s:I}", "customer_id",
                            o->customer_id, "status", "pending", "total",
                            (json_int_t)o->total, "currency", o->currency,
                            "lines", lines_for_event(o), "version",
                            (json_int_t)1));
    return rc;
}

int ord_saga_place(struct ord_service *os, struct ord_order *o)
{
    snprintf(o->status, sizeof(o->status), "pending");
    set_step(os, o, "reserving", true);
    o->flags = ORD_F_SENT_RESERVE;
    o->version = 1;
    o->created_ms = o->updated_ms = moat_wall_ms();
    int rc = insert_placed(os, o);
    if (rc == MOAT_OK)
        rc = emit(os, ORDERS_RESERVE_STOCK, o,
                  json_pack("{s:s, s:o}", "customer_id", o->customer_id,
                            "lines", lines_for_stock(o)));
    return rc;
}

int ord_saga_cancel(struct ord_service *os, struct ord_order *o, bool *changed)
{
    *changed = false;
    if (strcmp(o->step, "compensating") == 0 ||
        strcmp(o->status, "cancelled") == 0)
        return MOAT_OK;
    *changed = true;
    return compensate(os, o, "customer_cancelled");
}

/* ---- replies ---- */

static const char *jstr(json_t *data, const char *key)
{
    const char *s = json_string_value(json_object_get(data, key));
    return s ? s : "";
}

static bool step_is(const struct ord_order *o, const char *step)
{
    return strcmp(o->step, step) == 0;
}

/* A compensation's reply came: clear it, finish when none is left. */
static int comp_done(struct ord_service *os, struct ord_order *o, int64_t bit)
{
    if (!step_is(o, "compensating") || !(o->pending_comp & bit))
        return MOAT_OK; /* a duplicate, or not ours to wait for */
    o->pending_comp &= ~bit;
    if (!o->pending_comp)
        return finish(os, o, "cancelled");
    return ord_order_update(os->db, o);
}

static int on_stock_reserved(struct ord_service *os, struct ord_order *o)
{
    if (!step_is(o, "reserving"))
        return MOAT_OK; /* late: the ReleaseStock sent behind it frees it */
    json_t *d = json_pack("{s:s, s:I, s:s, s:s}", "customer_id", o->customer_id,
                          "amount", (json_int_t)o->total, "currency",
                          o->currency, "card_token", o->card_token);
    int rc = emit(os, ORDERS_AUTHORIZE_PAYMENT, o, d);
    if (rc != MOAT_OK)
        return rc;
    o->flags |= ORD_F_SENT_AUTHORIZE;
    o->card_token[0] = '\0'; /* it has left for payments: keep no copy */
    set_step(os, o, "authorizing", true);
    return ord_order_update(os->db, o);
}

static int on_reservation_failed(struct ord_service *os, struct ord_order *o,
                                 json_t *data)
{
    o->flags |= ORD_F_RESERVE_FAILED;
    if (!step_is(o, "reserving"))
        return ord_order_update(os->db, o);
    const char *why = jstr(data, "reason");
    const char *reason = strcmp(why, "out_of_stock") == 0 ? "out_of_stock"
                         : strcmp(why, "reservation_limit") == 0
                             ? "reservation_limit"
                             : "invalid_order";
    return compensate(os, o, reason);
}

static int on_authorized(struct ord_service *os, struct ord_order *o,
                         json_t *data)
{
    snprintf(o->payment_id, sizeof(o->payment_id), "%s",
             jstr(data, "payment_id"));
    if (!step_is(o, "authorizing"))
        return ord_order_update(os->db, o); /* late: a VoidPayment follows */
    int rc = emit(os, ORDERS_CAPTURE_PAYMENT, o,
                  json_pack("{s:I}", "amount", (json_int_t)o->total));
    if (rc == MOAT_OK)
        rc = emit(os, ORDERS_COMMIT_STOCK, o, json_object());
    if (rc != MOAT_OK)
        return rc;
    o->flags |= ORD_F_SENT_CAPTURE;
    set_step(os, o, "confirming", false);
    return ord_order_update(os->db, o);
}

static int on_declined(struct ord_service *os, struct ord_order *o,
                       json_t *data)
{
    o->flags |= ORD_F_DECLINED;
    if (!o->payment_id[0])
        snprintf(o->payment_id, sizeof(o->payment_id), "%s",
                 jstr(data, "payment_id"));
    if (!step_is(o, "authorizing"))
        return ord_order_update(os->db, o);
    return compensate(os, o, "payment_declined");
}

/* Captured and committed: confirmed. */
static int maybe_confirm(struct ord_service *os, struct ord_order *o)
{
    if (step_is(o, "confirming") && (o->flags & ORD_F_CAPTURED) &&
        (o->flags & ORD_F_COMMITTED))
        return finish(os, o, "confirmed");
    return ord_order_update(os->db, o);
}

static int apply_reply(struct ord_service *os, struct ord_order *o,
                       const char *type, json_t *data)
{
    if (strcmp(type, INVENTORY_STOCK_RESERVED) == 0)
        return on_stock_reserved(os, o);
    if (strcmp(type, INVENTORY_STOCK_RESERVATION_FAILED) == 0)
        return on_reservation_failed(os, o, data);
    if (strcmp(type, INVENTORY_STOCK_COMMITTED) == 0) {
        o->flags |= ORD_F_COMMITTED;
        return maybe_confirm(os, o);
    }
    if (strcmp(type, INVENTORY_STOCK_RELEASED) == 0)
        return comp_done(os, o, ORD_COMP_STOCK);
    if (strcmp(type, PAYMENTS_PAYMENT_AUTHORIZED) == 0)
        return on_authorized(os, o, data);
    if (strcmp(type, PAYMENTS_PAYMENT_DECLINED) == 0)
        return on_declined(os, o, data);
    if (strcmp(type, PAYMENTS_PAYMENT_PROVIDER_UNAVAILABLE) == 0) {
        if (o->flags & ORD_F_PROVIDER_DOWN)
            return MOAT_OK;
        o->flags |= ORD_F_PROVIDER_DOWN;
        return ord_order_update(os->db, o);
    }
    if (strcmp(type, PAYMENTS_PAYMENT_CAPTURED) == 0) {
        o->flags |= ORD_F_CAPTURED;
        return maybe_confirm(os, o);
    }
    if (strcmp(type, PAYMENTS_PAYMENT_CAPTURE_FAILED) == 0) {
        o->flags |= ORD_F_CAPTURE_FAILED;
        if (!step_is(o, "confirming"))
            return ord_order_update(os->db, o);
        return compensate(os, o, "capture_failed");
    }
    if (strcmp(type, PAYMENTS_PAYMENT_VOIDED) == 0 ||
        strcmp(type, PAYMENTS_PAYMENT_REFUNDED) == 0)
        return comp_done(os, o, ORD_COMP_PAYMENT);
    return MOAT_OK; /* not subscribed */
}

int ord_saga_apply(struct moat_db *db, const struct moat_event *ev, void *arg,
                   const char **why)
{
    /* db is os->db: orders is not a view, so no scratch copy is ever
     * verified, and the transitions write through os. */
    MOAT_UNUSED(db);
    struct ord_service *os = arg;
    /* The reply's data in its current schema, by its producer's contract;
     * a newer version is refused (parked until orders is upgraded). */
    json_t *data = NULL;
    int rc = inventory_schema(ev->type)
                 ? inventory_upcast(ev->type, ev->schema_version, ev->data,
                                    &data, why)
                 : payments_upcast(ev->type, ev->schema_version, ev->data,
                                   &data, why);
    if (rc != MOAT_OK)
        return rc;
    const char *order_id = jstr(data, "order_id");
    if (!order_id[0])
        order_id = ev->subject;
    struct ord_order o;
    rc = ord_order_get(os->db, order_id, false, &o);
    if (rc == MOAT_ENOTFOUND) {
        /* Not one of ours (a reply to a command sent by hand): nothing
         * to move. */
        moat_log(MOAT_LOG_WARN, "reply for an unknown order", "{s:s, s:s}",
                 "type", ev->type, "order", order_id);
        rc = MOAT_OK;
        goto out;
    }
    if (rc != MOAT_OK) {
        *why = "cannot load the order";
        goto out;
    }
    /* The lines are needed only by the commands sent on a reply that
     * moves the saga forward (none of today's replies needs them). */
    rc = apply_reply(os, &o, ev->type, data);
    ord_order_release(&o);
    if (rc != MOAT_OK)
        *why = "cannot apply the reply";
out:
    json_decref(data);
    return rc;
}

/* ---- deadlines ---- */

/* Compensate every overdue saga, each with its own trace, in one
 * transaction. */
static void sweep(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct ord_service *os = arg;
    char(*ids)[ORD_ID_MAX] = moat_xcalloc(SWEEP_BATCH, ORD_ID_MAX);
    size_t n = 0;
    int rc = ord_orders_overdue(os->db, moat_wall_ms(), SWEEP_BATCH, ids, &n);
    if (rc != MOAT_OK || n == 0)
        goto done;
    rc = moat_db_begin(os->db);
    if (rc != MOAT_OK)
        goto done;
    const struct moat_trace *saved = moat_log_trace();
    for (size_t i = 0; i < n && rc == MOAT_OK; i++) {
        struct ord_order o;
        rc = ord_order_get(os->db, ids[i], false, &o);
        if (rc != MOAT_OK)
            break;
        struct moat_trace t;
        moat_trace_start(&t, o.traceparent, NULL);
        moat_log_set_trace(&t);
        const char *reason = (strcmp(o.step, "authorizing") == 0 &&
                              (o.flags & ORD_F_PROVIDER_DOWN))
                                 ? "provider_unavailable"
                                 : "deadline_exceeded";
        rc = compensate(os, &o, reason);
        ord_order_release(&o);
    }
    moat_log_set_trace(saved);
    if (rc == MOAT_OK)
        rc = moat_db_commit(os->db);
    else
        moat_db_rollback(os->db);
    if (rc == MOAT_OK)
        moat_outbox_committed(os->outbox);
    else
        moat_log(MOAT_LOG_ERROR, "cannot compensate overdue sagas", "{s:s}",
                 "error", moat_strerror(rc));

done:
    free(ids);
    const struct timeval tv = {0, SWEEP_INTERVAL_MS * 1000};
    evtimer_add(os->sweep, &tv);
}

int ord_saga_start_sweeper(struct ord_service *os)
{
    os->sweep = evtimer_new(os->svc->base, sweep, os);
    const struct timeval tv = {0, SWEEP_INTERVAL_MS * 1000};
    if (!os->sweep || evtimer_add(os->sweep, &tv) != 0)
        return MOAT_EIO;
    return MOAT_OK;
}

/* ---- recovery (docs/recovery.md) ---- */

int ord_saga_recover(struct ord_service *os, struct ord_order *o,
                     const char *reservation, const char *payment)
{
    bool held = strcmp(reservation, "held") == 0;
    bool committed = strcmp(reservation, "committed") == 0;
    bool captured = strcmp(payment, "captured") == 0;
    bool live_auth =
        strcmp(payment, "authorized") == 0 || strcmp(payment, "pending") == 0;
    snprintf(o->status, sizeof(o->status), "pending");
    set_step(os, o, "recovering", false);
    /* What the participants hold says which commands once went out. */
    o->flags = ORD_F_SENT_RESERVE;
    if (!held && !committed)
        o->flags |= ORD_F_SENT_RELEASE; /* nothing (left) to release */
    if (captured)
        o->flags |= ORD_F_SENT_AUTHORIZE | ORD_F_SENT_CAPTURE;
    else if (live_auth)
        o->flags |= ORD_F_SENT_AUTHORIZE;
    o->version = 1;
    o->updated_ms = moat_wall_ms();
    if (!o->created_ms)
        o->created_ms = o->updated_ms;
    int rc = insert_placed(os, o);
    if (rc != MOAT_OK)
        return rc;
    /* Sold and paid: the order was confirmed before it was lost. */
    if (committed && captured) {
        o->flags |= ORD_F_CAPTURED | ORD_F_COMMITTED;
        return finish(os, o, "confirmed");
    }
    /* Anything short of that: undo what is held, through the saga's
     * own commands (their replies finish it as cancelled). */
    return compensate(os, o, "recovered");
}
