/*
 * events.c - the events reporting loads into its warehouse, one handler
 * per source. Each producer's event contract (type names, schema versions
 * and the upcasters that turn any older version's data into the current
 * shape) is contracts/<producer>.h, shared with the producer and the
 * other consumers; the data schemas are documented there. Every event is
 * upcast by its producer's contract first, so the apply functions here see
 * the current schema only. An unknown (newer) version is refused, so the
 * event is parked as a dead letter until reporting is rebuilt with the
 * newer contract and it is redriven. Read here:
 *
 *   orders     OrderPlaced, OrderConfirmed, OrderCancelled
 *   payments   PaymentAuthorized, PaymentDeclined, PaymentCaptured,
 *              PaymentVoided, PaymentRefunded
 *   catalog    ProductCreated, ProductUpdated, PriceChanged,
 *              ProductDeleted
 *   inventory  StockChanged, StockCommitted
 *
 * Privacy: a customer id is turned into its keyed pseudonym here, and
 * nothing else of it is stored. Names and emails never travel in events.
 *
 * Handlers are deterministic: the date of a fact is the UTC day of the
 * event's time (the producer's commit), never the time of applying it.
 */
#include "moat/common.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/catalog.h"
#include "contracts/inventory.h"
#include "contracts/orders.h"
#include "contracts/payments.h"
#include "moat/log.h"
#include "reporting.h"
#include "store.h"

#define TEXT_MAX   (64u << 10) /* any larger field is a broken event */
#define LINES_MAX  1000
#define AMOUNT_MAX 1000000000000LL /* 10^12 minor units */

const char *const rep_orders_event_types[] = {
    ORDERS_ORDER_PLACED,
    ORDERS_ORDER_CONFIRMED,
    ORDERS_ORDER_CANCELLED,
    NULL,
};
const char *const rep_payments_event_types[] = {
    PAYMENTS_PAYMENT_AUTHORIZED, PAYMENTS_PAYMENT_DECLINED,
    PAYMENTS_PAYMENT_CAPTURED,   PAYMENTS_PAYMENT_VOIDED,
    PAYMENTS_PAYMENT_REFUNDED,   NULL,
};
const char *const rep_catalog_event_types[] = {
    CATALOG_PRODUCT_CREATED,
    CATALOG_PRODUCT_UPDATED,
    CATALOG_PRICE_CHANGED,
    CATALOG_PRODUCT_DELETED,
    NULL,
};
const char *const rep_inventory_event_types[] = {
    INVENTORY_STOCK_CHANGED,
    INVENTORY_STOCK_COMMITTED,
    NULL,
};

void rep_pseudonym(const struct rep_service *s, const char *customer_id,
                   char out[65])
{
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, s->pseudonym_key, s->pseudonym_key_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)customer_id,
                                  strlen(customer_id));
    crypto_auth_hmacsha256_final(&st, mac);
    moat_hex(out, mac, sizeof(mac));
    out[64] = '\0';
    sodium_memzero(&st, sizeof(st));
}

/* ---- helpers ---- */

/* A producer's upcaster (contracts/<producer>.h). */
typedef int (*upcast_fn)(const char *type, int version, json_t *data,
                         json_t **out, const char **why);
typedef int (*apply_fn)(struct moat_db *db, const struct moat_event *ev,
                        void *arg, const char **why);

/* apply on ev with its data upcast to the current schema by upcast. */
static int apply_current(upcast_fn upcast, apply_fn apply, struct moat_db *db,
                         const struct moat_event *ev, void *arg,
                         const char **why)
{
    struct moat_event cur = *ev;
    cur.data = NULL;
    int rc = upcast(ev->type, ev->schema_version, ev->data, &cur.data, why);
    if (rc == MOAT_OK)
        rc = apply(db, &cur, arg, why);
    json_decref(cur.data);
    return rc;
}

/* YYYYMMDD of the UTC day of ms since the epoch (ms >= 0). */
static int64_t date_key_of(int64_t ms)
{
    int64_t z = ms / 86400000 + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    return y * 10000 + m * 100 + d;
}

/* The event's time and its day (registered in dim_date). */
static int event_when(struct moat_db *db, const struct moat_event *ev,
                      int64_t *at_ms, int64_t *date_key, const char **why)
{
    /* date_key_of needs a time after the epoch. */
    if (moat_time_parse_rfc3339(ev->time, at_ms) != MOAT_OK || *at_ms < 0) {
        *why = "event time is not RFC 3339";
        return MOAT_EINVAL;
    }
    *date_key = date_key_of(*at_ms);
    return rep_store_date(db, *date_key);
}

/* A string member of 1..TEXT_MAX bytes (required) or absent/null (NULL). */
static bool get_text(json_t *obj, const char *key, bool required,
                     const char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = NULL;
        return !required;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > TEXT_MAX)
        return false;
    *out = json_string_value(v);
    return true;
}

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

/* data is an object whose order_id (when present) is the subject. */
static int check_data(const struct moat_event *ev, const char *id_key,
                      const char **why)
{
    if (!json_is_object(ev->data)) {
        *why = "event data is not an object";
        return MOAT_EINVAL;
    }
    if (!ev->subject || !ev->subject[0]) {
        *why = "event has no subject";
        return MOAT_EINVAL;
    }
    json_t *id = json_object_get(ev->data, id_key);
    if (id && (!json_is_string(id) ||
               strcmp(json_string_value(id), ev->subject) != 0)) {
        *why = "the data's id does not match the event subject";
        return MOAT_EINVAL;
    }
    return MOAT_OK;
}

/* ---- orders ---- */

static int apply_order_placed(struct moat_db *db, const struct moat_event *ev,
                              struct rep_service *s, const char **why)
{
    json_t *d = ev->data;
    const char *customer, *currency;
    int64_t total, version, at_ms, date_key;
    json_t *lines = json_object_get(d, "lines");
    if (!get_text(d, "customer_id", true, &customer) ||
        !get_text(d, "currency", true, &currency) ||
        !currency_valid(currency) ||
        !get_int(d, "total", 0, AMOUNT_MAX, &total) ||
        !get_int(d, "version", 1, INT64_MAX, &version) ||
        !json_is_array(lines) || json_array_size(lines) > LINES_MAX) {
        *why = "OrderPlaced needs customer_id, currency, total, version and "
               "lines";
        return MOAT_EINVAL;
    }
    int rc = event_when(db, ev, &at_ms, &date_key, why);
    if (rc != MOAT_OK)
        return rc;
    char pseudonym[65];
    rep_pseudonym(s, customer, pseudonym);
    int64_t customer_key = rep_customer_key(pseudonym);
    rc = rep_store_customer(db, pseudonym, date_key);
    if (rc != MOAT_OK)
        return rc;
    const struct rep_order o = {
        .order_id = ev->subject,
        .customer_key = customer_key,
        .date_key = date_key,
        .placed_at_ms = at_ms,
        .total = total,
        .currency = currency,
        .version = version,
    };
    bool created = false;
    rc = rep_store_order_placed(db, &o, &created);
    if (rc != MOAT_OK || !created)
        return rc;
    size_t i;
    json_t *line;
    json_array_foreach(lines, i, line)
    {
        const char *product_id, *sku, *name;
        int64_t qty, price;
        if (!get_text(line, "product_id", true, &product_id) ||
            !get_text(line, "sku", true, &sku) ||
            !get_text(line, "name", false, &name) ||
            !get_int(line, "quantity", 1, 1000000, &qty) ||
            !get_int(line, "unit_price", 0, AMOUNT_MAX, &price)) {
            *why = "an OrderPlaced line needs product_id, sku, quantity and "
                   "unit_price";
            return MOAT_EINVAL;
        }
        rc = rep_store_product_stub(db, product_id, sku, name ? name : sku);
        if (rc != MOAT_OK)
            return rc;
        const struct rep_line l = {
            .order_id = ev->subject,
            .line_no = (int64_t)i + 1,
            .date_key = date_key,
            .product_key = rep_product_key(product_id),
            .customer_key = customer_key,
            .quantity = qty,
            .unit_price = price,
            .currency = currency,
        };
        rc = rep_store_order_line(db, &l);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

static int apply_order_final(struct moat_db *db, const struct moat_event *ev,
                             const char **why)
{
    json_t *d = ev->data;
    bool confirmed = strcmp(ev->type, ORDERS_ORDER_CONFIRMED) == 0;
    const char *reason = NULL, *payment_id = NULL;
    int64_t version, at_ms, date_key;
    if (!get_int(d, "version", 1, INT64_MAX, &version) ||
        !get_text(d, "payment_id", false, &payment_id) ||
        (!confirmed && !get_text(d, "reason", false, &reason))) {
        *why = "an order's final event needs version (and a string reason, "
               "payment_id)";
        return MOAT_EINVAL;
    }
    int rc = event_when(db, ev, &at_ms, &date_key, why);
    if (rc != MOAT_OK)
        return rc;
    const struct rep_order_final f = {
        .order_id = ev->subject,
        .status = confirmed ? "confirmed" : "cancelled",
        .cancel_reason = confirmed ? NULL : (reason ? reason : "unknown"),
        .payment_id = payment_id,
        .version = version,
        .at_ms = at_ms,
        .date_key = date_key,
    };
    rc = rep_store_order_final(db, &f);
    if (rc == MOAT_ENOTFOUND)
        *why = "the order's OrderPlaced was never applied";
    return rc;
}

static int apply_orders(struct moat_db *db, const struct moat_event *ev,
                        void *arg, const char **why)
{
    int rc = check_data(ev, "order_id", why);
    if (rc != MOAT_OK)
        return rc;
    if (strcmp(ev->type, ORDERS_ORDER_PLACED) == 0)
        return apply_order_placed(db, ev, arg, why);
    if (strcmp(ev->type, ORDERS_ORDER_CONFIRMED) == 0 ||
        strcmp(ev->type, ORDERS_ORDER_CANCELLED) == 0)
        return apply_order_final(db, ev, why);
    return MOAT_OK;
}

int rep_apply_orders(struct moat_db *db, const struct moat_event *ev, void *arg,
                     const char **why)
{
    return apply_current(orders_upcast, apply_orders, db, ev, arg, why);
}

/* ---- payments ---- */

static int apply_payments(struct moat_db *db, const struct moat_event *ev,
                          void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    static const struct {
        const char *type, *kind;
    } kinds[] = {
        {PAYMENTS_PAYMENT_AUTHORIZED, "authorized"},
        {PAYMENTS_PAYMENT_DECLINED, "declined"},
        {PAYMENTS_PAYMENT_CAPTURED, "captured"},
        {PAYMENTS_PAYMENT_VOIDED, "voided"},
        {PAYMENTS_PAYMENT_REFUNDED, "refunded"},
    };
    int rc = check_data(ev, "order_id", why);
    if (rc != MOAT_OK)
        return rc;
    const char *kind = NULL;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(kinds) && !kind; i++)
        if (strcmp(ev->type, kinds[i].type) == 0)
            kind = kinds[i].kind;
    if (!kind)
        return MOAT_OK;
    json_t *d = ev->data;
    const char *payment_id, *currency, *status;
    if (!get_text(d, "payment_id", false, &payment_id) ||
        !get_text(d, "status", false, &status)) {
        *why = "payment_id and status must be strings";
        return MOAT_EINVAL;
    }
    /* No payment (a refused command answered at once), or a void that
     * found nothing to void (status "declined"): no money moved. */
    if (!payment_id || (strcmp(kind, "voided") == 0 && status &&
                        strcmp(status, "voided") != 0))
        return MOAT_OK;
    int64_t amount, at_ms, date_key;
    if (!get_int(d, "amount", 0, AMOUNT_MAX, &amount) ||
        !get_text(d, "currency", true, &currency) ||
        !currency_valid(currency)) {
        *why = "a payment event needs amount and currency";
        return MOAT_EINVAL;
    }
    rc = event_when(db, ev, &at_ms, &date_key, why);
    if (rc != MOAT_OK)
        return rc;
    const struct rep_payment p = {
        .payment_id = payment_id,
        .kind = kind,
        .order_id = ev->subject,
        .date_key = date_key,
        .at_ms = at_ms,
        .amount = amount,
        .currency = currency,
    };
    return rep_store_payment(db, &p);
}

int rep_apply_payments(struct moat_db *db, const struct moat_event *ev,
                       void *arg, const char **why)
{
    return apply_current(payments_upcast, apply_payments, db, ev, arg, why);
}

/* ---- catalog ---- */

static bool get_price(json_t *price, int64_t *amount, const char **currency)
{
    *currency = json_string_value(json_object_get(price, "currency"));
    return get_int(price, "amount", 0, AMOUNT_MAX, amount) &&
           currency_valid(*currency);
}

static int apply_product(struct moat_db *db, const struct moat_event *ev,
                         const char **why)
{
    json_t *doc = ev->data;
    int rc;
    struct rep_product p = {.product_id = ev->subject, .seq = ev->seq};
    json_t *version = json_object_get(doc, "version");
    if (!get_text(doc, "sku", true, &p.sku) ||
        !get_text(doc, "name", true, &p.name) ||
        !get_price(json_object_get(doc, "price"), &p.price_amount,
                   &p.currency) ||
        (version && !get_int(doc, "version", 1, INT64_MAX, &p.version))) {
        *why = "a product needs sku, name, price {amount, currency} and a "
               "positive version when given";
        rc = MOAT_EINVAL;
    } else {
        rc = rep_store_product_event(db, &p);
    }
    return rc;
}

static int apply_catalog(struct moat_db *db, const struct moat_event *ev,
                         void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    int rc = check_data(ev, "id", why);
    if (rc != MOAT_OK)
        return rc;
    if (strcmp(ev->type, CATALOG_PRODUCT_CREATED) == 0 ||
        strcmp(ev->type, CATALOG_PRODUCT_UPDATED) == 0)
        return apply_product(db, ev, why);
    if (strcmp(ev->type, CATALOG_PRICE_CHANGED) == 0) {
        int64_t amount;
        const char *currency;
        if (!get_price(json_object_get(ev->data, "new"), &amount, &currency)) {
            *why = "PriceChanged needs new: {amount, currency}";
            return MOAT_EINVAL;
        }
        return rep_store_product_price(db, ev->subject, amount, currency,
                                       ev->seq);
    }
    if (strcmp(ev->type, CATALOG_PRODUCT_DELETED) == 0) {
        const char *sku;
        if (!get_text(ev->data, "sku", false, &sku)) {
            *why = "ProductDeleted's sku must be a string";
            return MOAT_EINVAL;
        }
        return rep_store_product_deleted(db, ev->subject, sku, ev->seq);
    }
    return MOAT_OK;
}

int rep_apply_catalog(struct moat_db *db, const struct moat_event *ev,
                      void *arg, const char **why)
{
    return apply_current(catalog_upcast, apply_catalog, db, ev, arg, why);
}

/* ---- inventory ---- */

static int apply_inventory(struct moat_db *db, const struct moat_event *ev,
                           void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    bool stock = strcmp(ev->type, INVENTORY_STOCK_CHANGED) == 0;
    int rc = check_data(ev, stock ? "sku" : "order_id", why);
    if (rc != MOAT_OK)
        return rc;
    json_t *d = ev->data;
    int64_t at_ms, date_key;
    if (stock) {
        struct rep_stock_movement m = {.seq = ev->seq, .sku = ev->subject};
        if (!get_int(d, "delta", -AMOUNT_MAX, AMOUNT_MAX, &m.delta) ||
            !get_text(d, "kind", true, &m.kind) ||
            !get_text(d, "order_id", false, &m.order_id)) {
            *why = "StockChanged needs delta and kind";
            return MOAT_EINVAL;
        }
        rc = event_when(db, ev, &at_ms, &date_key, why);
        if (rc != MOAT_OK)
            return rc;
        m.date_key = date_key;
        return rep_store_stock_movement(db, &m);
    }
    if (strcmp(ev->type, INVENTORY_STOCK_COMMITTED) != 0)
        return MOAT_OK;
    /* customer_id is in the data too: not read, never stored. */
    json_t *lines = json_object_get(d, "lines");
    if (!json_is_array(lines) || json_array_size(lines) > LINES_MAX) {
        *why = "StockCommitted needs lines";
        return MOAT_EINVAL;
    }
    int64_t units = 0;
    size_t i;
    json_t *line;
    json_array_foreach(lines, i, line)
    {
        int64_t q;
        if (!get_int(line, "quantity", 0, 1000000, &q)) {
            *why = "a StockCommitted line needs a quantity";
            return MOAT_EINVAL;
        }
        units += q;
    }
    rc = event_when(db, ev, &at_ms, &date_key, why);
    if (rc != MOAT_OK)
        return rc;
    return rep_store_stock_commit(db, ev->subject, date_key, at_ms, units);
}

int rep_apply_inventory(struct moat_db *db, const struct moat_event *ev,
                        void *arg, const char **why)
{
    return apply_current(inventory_upcast, apply_inventory, db, ev, arg, why);
}
