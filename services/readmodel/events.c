/*
 * events.c - the four feeds' events as the read model applies them.
 *
 * Each event type has ONE upcaster, the only code that knows the older
 * schemas of its data, and one apply function that sees the current schema
 * only. The data schemas read here:
 *
 *   orders (docs/saga.md), schema 1, subject = order id:
 *     OrderPlaced     {order_id, customer_id, status, total, currency,
 *                      lines: [{product_id, sku, name, unit_price,
 *                      quantity}], version}
 *     OrderConfirmed  {order_id, customer_id, status, total, currency,
 *                      payment_id, version}
 *     OrderCancelled  {order_id, customer_id, status, reason, total,
 *                      currency, version}
 *   catalog (docs/events.md), subject = product id:
 *     ProductCreated, ProductUpdated
 *       2: the product document {id, sku, name, price: {amount,
 *          currency}, ...}
 *       1: flat {id, sku, name, price_amount, currency, ...}
 *     PriceChanged    1: {id, old: {amount, currency}, new: {...}}
 *     ProductDeleted  1: {id, sku}
 *   payments (docs/payments.md), schema 1, subject = order id:
 *     PaymentAuthorized, PaymentDeclined, PaymentCaptured,
 *     PaymentCaptureFailed, PaymentVoided, PaymentRefunded
 *                     {payment_id (null when the order has no payment),
 *                      order_id, amount, currency, status, ...}
 *     (PaymentProviderUnavailable is not subscribed: it carries no status,
 *     and the payment's next event says where it stands.)
 *   notifications (docs/notifications.md), schema 1, subject = order id:
 *     NotificationSent {notification_id, order_id, customer_id, kind,
 *                      status, delivered_at, fallback}
 *
 * Adding a schema means one more branch in that type's upcaster and
 * nothing else. An unknown (newer) version is refused, so the event is
 * parked as a dead letter until the read model is upgraded and redriven.
 *
 * Handlers are deterministic (replay runs them again on a scratch copy and
 * compares): everything they store comes from the event.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "readmodel.h"
#include "store.h"

#define ORDER_SCHEMA        1
#define PRODUCT_SCHEMA_FLAT 1 /* price_amount + currency at the top */
#define PRODUCT_SCHEMA      2 /* price: {amount, currency} */
#define PRICE_SCHEMA        1
#define DELETED_SCHEMA      1
#define PAYMENT_SCHEMA      1
#define NOTIFICATION_SCHEMA 1

/* Caps well above the producers' own, so that a producer change does not
 * stop the view; anything larger is a broken event. */
#define LINES_MAX    100
#define TEXT_MAX     4096 /* a product name or SKU, in bytes */
#define WORD_MAX     64   /* a status, kind or reason */
#define QUANTITY_MAX 1000000
#define AMOUNT_MAX   1000000000000000LL

const char *const rm_orders_event_types[] = {"OrderPlaced", "OrderConfirmed",
                                             "OrderCancelled", NULL};
const char *const rm_catalog_event_types[] = {
    "ProductCreated", "ProductUpdated", "PriceChanged", "ProductDeleted", NULL,
};
const char *const rm_payments_event_types[] = {
    "PaymentAuthorized",
    "PaymentDeclined",
    "PaymentCaptured",
    "PaymentCaptureFailed",
    "PaymentVoided",
    "PaymentRefunded",
    NULL,
};
const char *const rm_notifications_event_types[] = {"NotificationSent", NULL};

/* ---- validation helpers ---- */

static int unsupported(const char **why)
{
    *why = "unsupported event schema version (the read model is older than "
           "its producer: upgrade it, then redrive)";
    return MOAT_EUNSUPPORTED;
}

static bool data_object(const struct moat_event *ev, const char **why)
{
    if (json_is_object(ev->data))
        return true;
    *why = "event data is not an object";
    return false;
}

/* Ids as moat services make them, loosely: 1..64 of [A-Za-z0-9_-]. */
static bool key_valid(const char *s)
{
    if (!s)
        return false;
    size_t len = strlen(s);
    if (len == 0 || len > RM_KEY_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
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

typedef int (*upcast_fn)(const struct moat_event *ev, json_t **out,
                         const char **why);
typedef int (*apply_fn)(struct moat_db *db, const struct moat_event *ev,
                        json_t *data, const char **why);

struct event_kind {
    const char *type;
    upcast_fn upcast;
    apply_fn apply;
};

static int dispatch(const struct event_kind *kinds, size_t n,
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
    int rc = k->upcast(ev, &data, why);
    if (rc == MOAT_OK)
        rc = k->apply(db, ev, data, why);
    json_decref(data);
    return rc;
}

/* The upcaster of a type that has had one schema so far. */
#define SINGLE_SCHEMA_UPCASTER(fn, version)                                    \
    static int fn(const struct moat_event *ev, json_t **out, const char **why) \
    {                                                                          \
        if (!data_object(ev, why))                                             \
            return MOAT_EINVAL;                                                \
        if (ev->schema_version != (version))                                   \
            return unsupported(why);                                           \
        *out = json_incref(ev->data);                                          \
        return MOAT_OK;                                                        \
    }

/* ---- orders ---- */

SINGLE_SCHEMA_UPCASTER(upcast_order, ORDER_SCHEMA)

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
    {"OrderPlaced", upcast_order, apply_placed},
    {"OrderConfirmed", upcast_order, apply_confirmed},
    {"OrderCancelled", upcast_order, apply_cancelled},
};

int rm_apply_orders(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(order_kinds, MOAT_ARRAY_LEN(order_kinds), db, ev, why);
}

/* ---- catalog ---- */

/* ProductCreated, ProductUpdated: the product document. */
static int upcast_product(const struct moat_event *ev, json_t **out,
                          const char **why)
{
    if (!data_object(ev, why))
        return MOAT_EINVAL;
    switch (ev->schema_version) {
    case PRODUCT_SCHEMA:
        *out = json_incref(ev->data);
        return MOAT_OK;
    case PRODUCT_SCHEMA_FLAT: {
        json_t *doc = json_object();
        const char *key;
        json_t *val;
        json_object_foreach(ev->data, key, val)
        {
            if (strcmp(key, "price_amount") != 0 &&
                strcmp(key, "currency") != 0)
                json_object_set(doc, key, val);
        }
        json_t *amount = json_object_get(ev->data, "price_amount");
        json_t *currency = json_object_get(ev->data, "currency");
        if (amount || currency)
            json_object_set_new(doc, "price",
                                json_pack("{s:O?, s:O?}", "amount", amount,
                                          "currency", currency));
        *out = doc;
        return MOAT_OK;
    }
    default:
        return unsupported(why);
    }
}

SINGLE_SCHEMA_UPCASTER(upcast_price, PRICE_SCHEMA)
SINGLE_SCHEMA_UPCASTER(upcast_deleted, DELETED_SCHEMA)

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
    {"ProductCreated", upcast_product, apply_product},
    {"ProductUpdated", upcast_product, apply_product},
    {"PriceChanged", upcast_price, apply_price},
    {"ProductDeleted", upcast_deleted, apply_deleted},
};

int rm_apply_catalog(struct moat_db *db, const struct moat_event *ev, void *arg,
                     const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(catalog_kinds, MOAT_ARRAY_LEN(catalog_kinds), db, ev, why);
}

/* ---- payments ---- */

SINGLE_SCHEMA_UPCASTER(upcast_payment, PAYMENT_SCHEMA)

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
    {"PaymentAuthorized", upcast_payment, apply_payment},
    {"PaymentDeclined", upcast_payment, apply_payment},
    {"PaymentCaptured", upcast_payment, apply_payment},
    {"PaymentCaptureFailed", upcast_payment, apply_payment},
    {"PaymentVoided", upcast_payment, apply_payment},
    {"PaymentRefunded", upcast_payment, apply_payment},
};

int rm_apply_payments(struct moat_db *db, const struct moat_event *ev,
                      void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(payment_kinds, MOAT_ARRAY_LEN(payment_kinds), db, ev, why);
}

/* ---- notifications ---- */

SINGLE_SCHEMA_UPCASTER(upcast_notification, NOTIFICATION_SCHEMA)

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
    {"NotificationSent", upcast_notification, apply_sent},
};

int rm_apply_notifications(struct moat_db *db, const struct moat_event *ev,
                           void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    return dispatch(notification_kinds, MOAT_ARRAY_LEN(notification_kinds), db,
                    ev, why);
}
