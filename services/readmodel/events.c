/*
 * events.c - the four feeds' events as the read model applies them.
 *
 * Each producer's event contract (type names, schema versions and the
 * upcasters that turn any older version's data into the current shape) is
 * contracts/<producer>.h, shared with the producer and the other
 * consumers; the data schemas are documented there. The apply functions
 * here see the current schema only. An unknown (newer) version is refused,
 * so the event is parked as a dead letter until the read model is rebuilt
 * with the newer contract and redriven. Not subscribed:
 * PaymentProviderUnavailable (it carries no status, and the payment's next
 * event says where it stands).
 *
 * Handlers are deterministic (replay runs them again on a scratch copy and
 * compares): everything they store comes from the event.
 */
#include "moat/common.h"

#include "moat/id.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/catalog.h"
#include "contracts/notifications.h"
#include "contracts/orders.h"
#include "contracts/payments.h"
#include "moat/log.h"
#include "readmodel.h"
#include "store.h"

/* Caps well above the producers' own, so that a producer change does not
 * stop the view; anything larger is a broken event. */
#define LINES_MAX    100
#define TEXT_MAX     4096 /* a product name or SKU, in bytes */
#define WORD_MAX     64   /* a status, kind or reason */
#define QUANTITY_MAX 1000000
#define AMOUNT_MAX   1000000000000000LL

const char *const rm_orders_event_types[] = {
    ORDERS_ORDER_PLACED,
    ORDERS_ORDER_CONFIRMED,
    ORDERS_ORDER_CANCELLED,
    NULL,
};
const char *const rm_catalog_event_types[] = {
    CATALOG_PRODUCT_CREATED,
    CATALOG_PRODUCT_UPDATED,
    CATALOG_PRICE_CHANGED,
    CATALOG_PRODUCT_DELETED,
    NULL,
};
const char *const rm_payments_event_types[] = {
    PAYMENTS_PAYMENT_AUTHORIZED,
    PAYMENTS_PAYMENT_DECLINED,
    PAYMENTS_PAYMENT_CAPTURED,
    PAYMENTS_PAYMENT_CAPTURE_FAILED,
    PAYMENTS_PAYMENT_VOIDED,
    PAYMENTS_PAYMENT_REFUNDED,
    NULL,
};
const char *const rm_notifications_event_types[] = {
    NOTIFICATIONS_NOTIFICATION_SENT,
    NULL,
};

/* ---- validation helpers ---- */

/* Ids as moat services make them, loosely: 1..64 of [A-Za-z0-9_-]. */
static bool key_valid(const char *s)
{
    return moat_ref_valid(s, RM_KEY_MAX);
}

/* A string member of 1..max bytes, or NULL. */
static const char *get_str(json_t *obj, const char *key, size_t max)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > max)
        return NULL;
    return json_string_value(v);
}

/* An integer member in [min, max]. */
static bool get_int(json_t *obj, const char *key, int64_t min, int64_t max,
                    int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < min ||
        json_integer_value(v) > max)
        return false;
    *out = json_integer_value(v);
    return true;
}

static bool currency_valid(const char *c)
{
    return c && strlen(c) == 3 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' &&
           c[1] <= 'Z' && c[2] >= 'A' && c[2] <= 'Z';
}

/* data.<key> must name the event's subject. */
static const char *subject_id(const struct moat_event *ev, const char *key,
                              bool required, const char **why)
{
    json_t *id = json_object_get(ev->data, key);
    if (!ev->subject || !key_valid(ev->subject)) {
        *why = "event subject is not an id";
        return NULL;
    }
    if ((required || id) && (!json_is_string(id) ||
                             strcmp(json_string_value(id), ev->subject) != 0)) {
        *why = "the id in the data does not match the event subject";
        return NULL;
    }
    return ev->subject;
}

/* ---- dispatch ---- */

/* A producer's upcaster (contracts/<producer>.h). */
typedef int (*upcast_fn)(const char *type, int version, json_t *data,
                         json_t **out, const char **why);
typedef int (*apply_fn)(struct moat_db *db, const struct moat_event *ev,
                        json_t *data, const char **why);

struct event_kind {
    const char *type;
    apply_fn apply;
};

static int dispatch(upcast_fn upcast, const struct event_kind *kinds, size_t n,
                    struct moat_db *db, const struct moat_event *ev,
                    const char **why)
{
    const struct event_kind *k = NULL;
    for (size_t i = 0; i < n && !k; i++)
        if (strcmp(ev->type, kinds[i].type) == 0)
            k = &kinds[i];
    if (!k)
        return MOAT_OK; /* not ours (the subscription filters already) */
    json_t *data = NULL;
    int rc = upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc == MOAT_OK)
        rc = k->apply(db, ev, data, why);
    json_decref(data);
    return rc;
}

/* ---- orders ---- */

/* The lines as the view keeps them: exactly these members, in this order,
 * validated (a new reference, or NULL with *why set). */
static json_t *order_lines(json_t *lines, const char **why)
{
    if (!json_is_array(lines) || json_array_size(lines) == 0 ||
        json_array_size(lines) > LINES_MAX) {
        *why = "data.lines is not an array of 1 to 100 lines";
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    json_t *l;
    json_array_foreach(lines, i, l)
    {
        const char *product_id = get_str(l, "product_id", RM_KEY_MAX);
        const char *sku = get_str(l, "sku", TEXT_MAX);
        const char *name = get_str(l, "name", TEXT_MAX);
        int64_t unit_price, quantity;
        if (!key_valid(product_id) || !sku || !name ||
            !get_int(l, "unit_price", 0, AMOUNT_MAX, &unit_price) ||
            !get_int(l, "quantity", 1, QUANTITY_MAX, &quantity)) {
            *why = "a line lacks product_id, sku, name, unit_price or "
                   "quantity";
            json_decref(out);
            return NULL;
        }
        json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:I, s:I}",
                                             "product_id", product_id, "sku",
                                             sku, "name", name, "unit_price",
                                             (json_int_t)unit_price, "quantity",
                                             (json_int_t)quantity));
    }
    return out;
}

static int apply_placed(struct moat_db *db, const struct moat_event *ev,
                        json_t *data, const char **why)
{
    struct rm_order o = {.seq = ev->seq};
    o.order_id = subject_id(ev, "order_id", true, why);
    if (!o.order_id)
        return MOAT_EINVAL;
    o.customer_id = get_str(data, "customer_id", RM_KEY_MAX);
    o.currency = get_str(data, "currency", 3);
    if (!key_valid(o.customer_id) || !currency_valid(o.currency) ||
        !get_int(data, "total", 0, AMOUNT_MAX, &o.total)) {
        *why = "data.customer_id, total or currency missing or malformed";
        return MOAT_EINVAL;
    }
    if (moat_time_parse_rfc3339(ev->time, &o.placed_ms) != MOAT_OK ||
        o.placed_ms < 0) {
        *why = "the event's time is not an RFC 3339 time";
        return MOAT_EINVAL;
    }
    json_t *lines = order_lines(json_object_get(data, "lines"), why);
    if (!lines)
        return MOAT_EINVAL;
    char *text = json_dumps(lines, JSON_COMPACT);
    json_decref(lines);
    if (!text)
        moat_die("cannot serialise an order's lines");
    o.lines = text;
    bool applied = false;
    int rc = rm_store_order_place(db, &o, &applied);
    free(text);
    return rc;
}

static int apply_status(struct moat_db *db, const struct moat_event *ev,
                        const char *status, const char *reason,
                        const char **why)
{
    const char *order_id = subject_id(ev, "order_id", true, why);
    if (!order_id)
        return MOAT_EINVAL;
    json_t *st = json_object_get(ev->data, "status");
    if (st &&
        (!json_is_string(st) || strcmp(json_string_value(st), status) != 0)) {
        *why = "data.status does not match the event type";
        return MOAT_EINVAL;
    }
    bool applied = false;
    int rc =
        rm_store_order_status(db, order_id, status, reason, ev->seq, &applied);
    if (rc == MOAT_ENOTFOUND)
        *why = "a status change of an order never placed in this view";
    return rc;
}

static int apply_confirmed(struct moat_db *db, const struct moat_event *ev,
                           json_t *data, const char **why)
{
    MOAT_UNUSED(data);
    return apply_status(db, ev, "confirmed", NULL, why);
}

static int apply_cancelled(struct moat_db *db, const struct moat_event *ev,
                           json_t *data, const char **why)
{
    json_t *r = json_object_get(data, "reason");
    if (r && !json_is_null(r) &&
        (!json_is_string(r) || json_string_length(r) > WORD_MAX)) {
        *why = "data.reason is not a short string";
        return MOAT_EINVAL;
    }
    return apply_status(db, ev, "cancelled", json_string_value(r), why);
}

static const struct event_kind order_kinds[] = {
    {ORDERS_ORDER_PLACED, apply_placed},
    {ORDERS_ORDER_CONFIRMED, apply_confirmed},
    {ORDERS_ORDER_CANCELLED, apply_cancelled},
};

int rm_apply_orders(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(orders_upcast, order_kinds, MOAT_ARRAY_LEN(order_kinds), db,
                    ev, why);
}

/* ---- catalog ---- */

/* A price {amount: integer >= 0, currency: ISO 4217}. */
static bool get_price(json_t *price, int64_t *amount, const char **currency)
{
    *currency = json_string_value(json_object_get(price, "currency"));
    return get_int(price, "amount", 0, AMOUNT_MAX, amount) &&
           currency_valid(*currency);
}

static int apply_product(struct moat_db *db, const struct moat_event *ev,
                         json_t *doc, const char **why)
{
    const char *id = subject_id(ev, "id", false, why);
    if (!id)
        return MOAT_EINVAL;
    const char *name = get_str(doc, "name", TEXT_MAX);
    int64_t amount;
    const char *currency;
    if (!name ||
        !get_price(json_object_get(doc, "price"), &amount, &currency)) {
        *why = "name or price {amount: integer >= 0, currency: ISO 4217} "
               "missing or malformed";
        return MOAT_EINVAL;
    }
    bool applied = false;
    return rm_store_product_upsert(db, id, name, amount, currency, ev->seq,
                                   &applied);
}

static int apply_price(struct moat_db *db, const struct moat_event *ev,
                       json_t *data, const char **why)
{
    const char *id = subject_id(ev, "id", false, why);
    if (!id)
        return MOAT_EINVAL;
    int64_t amount;
    const char *currency;
    if (!get_price(json_object_get(data, "new"), &amount, &currency)) {
        *why = "new price is not {amount: integer >= 0, currency: ISO 4217}";
        return MOAT_EINVAL;
    }
    bool applied = false;
    int rc =
        rm_store_product_price(db, id, amount, currency, ev->seq, &applied);
    if (rc == MOAT_ENOTFOUND)
        *why = "price change of a product never seen";
    return rc;
}

static int apply_deleted(struct moat_db *db, const struct moat_event *ev,
                         json_t *data, const char **why)
{
    MOAT_UNUSED(data);
    const char *id = subject_id(ev, "id", false, why);
    if (!id)
        return MOAT_EINVAL;
    bool applied = false;
    return rm_store_product_delete(db, id, ev->seq, &applied);
}

static const struct event_kind catalog_kinds[] = {
    {CATALOG_PRODUCT_CREATED, apply_product},
    {CATALOG_PRODUCT_UPDATED, apply_product},
    {CATALOG_PRICE_CHANGED, apply_price},
    {CATALOG_PRODUCT_DELETED, apply_deleted},
};

int rm_apply_catalog(struct moat_db *db, const struct moat_event *ev, void *arg,
                     const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(catalog_upcast, catalog_kinds,
                    MOAT_ARRAY_LEN(catalog_kinds), db, ev, why);
}

/* ---- payments ---- */

static int apply_payment(struct moat_db *db, const struct moat_event *ev,
                         json_t *data, const char **why)
{
    const char *order_id = subject_id(ev, "order_id", true, why);
    if (!order_id)
        return MOAT_EINVAL;
    json_t *pid = json_object_get(data, "payment_id");
    if (!pid || json_is_null(pid))
        return MOAT_OK; /* the order has no payment: nothing to show */
    const char *payment_id = json_string_value(pid);
    const char *status = get_str(data, "status", WORD_MAX);
    if (!key_valid(payment_id) || !status) {
        *why = "data.payment_id is not an id or data.status not a short "
               "string";
        return MOAT_EINVAL;
    }
    bool applied = false;
    return rm_store_payment(db, order_id, payment_id, status, ev->seq,
                            &applied);
}

static const struct event_kind payment_kinds[] = {
    {PAYMENTS_PAYMENT_AUTHORIZED, apply_payment},
    {PAYMENTS_PAYMENT_DECLINED, apply_payment},
    {PAYMENTS_PAYMENT_CAPTURED, apply_payment},
    {PAYMENTS_PAYMENT_CAPTURE_FAILED, apply_payment},
    {PAYMENTS_PAYMENT_VOIDED, apply_payment},
    {PAYMENTS_PAYMENT_REFUNDED, apply_payment},
};

int rm_apply_payments(struct moat_db *db, const struct moat_event *ev,
                      void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(payments_upcast, payment_kinds,
                    MOAT_ARRAY_LEN(payment_kinds), db, ev, why);
}

/* ---- notifications ---- */

static int apply_sent(struct moat_db *db, const struct moat_event *ev,
                      json_t *data, const char **why)
{
    struct rm_notification n = {.seq = ev->seq};
    n.order_id = subject_id(ev, "order_id", true, why);
    if (!n.order_id)
        return MOAT_EINVAL;
    n.notification_id = get_str(data, "notification_id", RM_KEY_MAX);
    n.kind = get_str(data, "kind", WORD_MAX);
    n.status = get_str(data, "status", WORD_MAX);
    int64_t sent_s;
    if (!key_valid(n.notification_id) || !n.kind || !n.status ||
        !get_int(data, "delivered_at", 0, INT64_MAX / 1000, &sent_s)) {
        *why = "data.notification_id, kind, status or delivered_at missing "
               "or malformed";
        return MOAT_EINVAL;
    }
    n.sent_ms = sent_s * 1000;
    bool applied = false;
    return rm_store_notification(db, &n, &applied);
}

static const struct event_kind notification_kinds[] = {
    {NOTIFICATIONS_NOTIFICATION_SENT, apply_sent},
};

int rm_apply_notifications(struct moat_db *db, const struct moat_event *ev,
                           void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(notifications_upcast, notification_kinds,
                    MOAT_ARRAY_LEN(notification_kinds), db, ev, why);
}
