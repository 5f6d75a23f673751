/*
 * events.c - catalog's events as search applies them.
 *
 * Catalog's event contract (type names, schema versions and the upcaster
 * that turns any older version's data into the current shape) is
 * contracts/catalog.h, shared with catalog and the other consumers. The
 * apply functions here see the current schema only. An unknown (newer)
 * version is refused, so the event is parked as a dead letter until search
 * is rebuilt with the newer contract and it is redriven.
 *
 * Handlers are deterministic (replay runs them again on a scratch copy and
 * compares): everything they store comes from the event, except the
 * applied time, which the comparison ignores.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/catalog.h"
#include "moat/buf.h"
#include "moat/log.h"
#include "search.h"
#include "store.h"

/* Text limits well above catalog's own, so a catalog change does not stop
 * the index; anything larger is a broken event, not a product. */
#define FIELD_MAX      (64u << 10)
#define ATTR_TEXT_MAX  (64u << 10)
#define ATTR_MAX_DEPTH 8
#define POISON_PREFIX  "POISON-"

const char *const srch_catalog_event_types[] = {
    CATALOG_PRODUCT_CREATED,
    CATALOG_PRODUCT_UPDATED,
    CATALOG_PRICE_CHANGED,
    CATALOG_PRODUCT_DELETED,
    NULL,
};

/* ---- helpers ---- */

/* An optional string member of at most FIELD_MAX bytes; def when absent. */
static bool get_text(json_t *obj, const char *key, bool required,
                     const char *def, const char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return !required;
    }
    if (!json_is_string(v) || json_string_length(v) > FIELD_MAX)
        return false;
    *out = json_string_value(v);
    return true;
}

/*
 * Attribute keys and scalar values as words for the index ("color blue
 * size 42"), nested values flattened. Deterministic: jansson iterates
 * objects in insertion order, which is the order in the event.
 */
static void attributes_text(json_t *v, int depth, struct moat_buf *out)
{
    if (depth > ATTR_MAX_DEPTH || out->len > ATTR_TEXT_MAX)
        return;
    const char *key;
    json_t *item;
    size_t i;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        json_object_foreach(v, key, item)
        {
            if (out->len)
                moat_buf_addch(out, ' ');
            moat_buf_addstr(out, key);
            attributes_text(item, depth + 1, out);
        }
        break;
    case JSON_ARRAY:
        json_array_foreach(v, i, item)
        {
            attributes_text(item, depth + 1, out);
        }
        break;
    case JSON_STRING:
        if (out->len)
            moat_buf_addch(out, ' ');
        moat_buf_add(out, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        moat_buf_printf(out, "%s%lld", out->len ? " " : "",
                        (long long)json_integer_value(v));
        break;
    case JSON_REAL:
        moat_buf_printf(out, "%s%.17g", out->len ? " " : "",
                        json_real_value(v));
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        moat_buf_printf(out, "%s%s", out->len ? " " : "",
                        json_is_true(v) ? "true" : "false");
        break;
    case JSON_NULL:
        break;
    }
}

/* The event's time in ms since the epoch; 0 when it is not RFC 3339 (the
 * lag report then ignores it). */
static int64_t event_time_ms(const struct moat_event *ev)
{
    int64_t ms;
    return moat_time_parse_rfc3339(ev->time, &ms) == MOAT_OK ? ms : 0;
}

/* The product's id: data.id when present must name the event's subject. */
static const char *event_product_id(const struct moat_event *ev, json_t *doc,
                                    const char **why)
{
    json_t *id = json_object_get(doc, "id");
    if (id && (!json_is_string(id) ||
               strcmp(json_string_value(id), ev->subject) != 0)) {
        *why = "data.id does not match the event subject";
        return NULL;
    }
    if (!ev->subject || !ev->subject[0]) {
        *why = "event has no subject";
        return NULL;
    }
    return ev->subject;
}

/* version member, or fallback when absent. */
static bool get_version(json_t *doc, int64_t fallback, int64_t *out)
{
    json_t *v = json_object_get(doc, "version");
    if (!v) {
        *out = fallback;
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return false;
    *out = json_integer_value(v);
    return true;
}

static bool currency_valid(const char *c)
{
    return c && strlen(c) == 3 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' &&
           c[1] <= 'Z' && c[2] >= 'A' && c[2] <= 'Z';
}

/* ---- apply: current schema only ---- */

/* A price {amount: integer >= 0, currency: ISO 4217} into out params. */
static bool get_price(json_t *price, int64_t *amount, const char **currency)
{
    json_t *a = json_object_get(price, "amount");
    *currency = json_string_value(json_object_get(price, "currency"));
    if (!json_is_integer(a) || json_integer_value(a) < 0 ||
        !currency_valid(*currency))
        return false;
    *amount = json_integer_value(a);
    return true;
}

static int apply_product(struct moat_db *db, const struct moat_event *ev,
                         json_t *doc, struct srch_service *s, const char **why)
{
    const char *id = event_product_id(ev, doc, why);
    if (!id)
        return MOAT_EINVAL;
    struct srch_product p = {
        .id = id,
        .doc = doc,
        .seq = ev->seq,
        .event_time_ms = event_time_ms(ev),
    };
    if (!get_price(json_object_get(doc, "price"), &p.amount, &p.currency)) {
        *why = "price is not {amount: integer >= 0, currency: ISO 4217}";
        return MOAT_EINVAL;
    }
    if (!get_version(doc, 0, &p.version)) {
        *why = "version is not a positive integer";
        return MOAT_EINVAL;
    }
    if (!get_text(doc, "sku", true, NULL, &p.sku) || !p.sku[0] ||
        !get_text(doc, "name", true, NULL, &p.name) ||
        !get_text(doc, "description", false, "", &p.description)) {
        *why = "sku, name or description missing or not a string";
        return MOAT_EINVAL;
    }
#ifdef MOAT_TEST_HOOKS
    /* Test builds: a handler that fails deterministically for some
     * products, until POST /_test/heal "deploys the fix". */
    if (!s->poison_healed &&
        strncmp(p.sku, POISON_PREFIX, strlen(POISON_PREFIX)) == 0) {
        *why = "test hook: poison product (POST /_test/heal cures it)";
        return MOAT_EINVAL;
    }
#else
    MOAT_UNUSED(s);
#endif
    struct moat_buf attrs = MOAT_BUF_INIT;
    json_t *a = json_object_get(doc, "attributes");
    if (a)
        attributes_text(a, 0, &attrs);
    p.attributes = moat_buf_str(&attrs);
    bool applied = false;
    int rc = srch_store_upsert(db, &p, &applied);
    moat_buf_release(&attrs);
    if (rc == MOAT_OK && !applied)
        moat_log(MOAT_LOG_INFO, "older product event changes nothing",
                 "{s:s, s:I}", "id", id, "seq", (json_int_t)ev->seq);
    return rc;
}

static int apply_price(struct moat_db *db, const struct moat_event *ev,
                       json_t *data, struct srch_service *s, const char **why)
{
    MOAT_UNUSED(s);
    const char *id = event_product_id(ev, data, why);
    if (!id)
        return MOAT_EINVAL;
    int64_t amount;
    const char *currency;
    if (!get_price(json_object_get(data, "new"), &amount, &currency)) {
        *why = "new price is not {amount: integer >= 0, currency: ISO 4217}";
        return MOAT_EINVAL;
    }
    bool applied = false;
    int rc = srch_store_set_price(db, id, amount, currency, ev->seq,
                                  event_time_ms(ev), &applied);
    if (rc == MOAT_ENOTFOUND)
        *why = "price change for a product that was never indexed";
    return rc;
}

static int apply_deleted(struct moat_db *db, const struct moat_event *ev,
                         json_t *data, struct srch_service *s, const char **why)
{
    MOAT_UNUSED(s);
    const char *id = event_product_id(ev, data, why);
    if (!id)
        return MOAT_EINVAL;
    bool applied = false;
    return srch_store_delete(db, id, ev->seq, &applied);
}

/* ---- dispatch ---- */

struct event_kind {
    const char *type;
    int (*apply)(struct moat_db *db, const struct moat_event *ev, json_t *data,
                 struct srch_service *s, const char **why);
};

static const struct event_kind kinds[] = {
    {CATALOG_PRODUCT_CREATED, apply_product},
    {CATALOG_PRODUCT_UPDATED, apply_product},
    {CATALOG_PRICE_CHANGED, apply_price},
    {CATALOG_PRODUCT_DELETED, apply_deleted},
};

int srch_apply_event(struct moat_db *db, const struct moat_event *ev, void *arg,
                     const char **why)
{
    struct srch_service *s = arg;
    const struct event_kind *k = NULL;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(kinds) && !k; i++)
        if (strcmp(ev->type, kinds[i].type) == 0)
            k = &kinds[i];
    if (!k)
        return MOAT_OK; /* not ours (the subscription filters already) */

    json_t *data = NULL;
    int rc = catalog_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc == MOAT_OK)
        rc = k->apply(db, ev, data, s, why);
    json_decref(data);
#ifdef MOAT_TEST_HOOKS
    /* In the handler's transaction: counted once per committed effect. */
    if (rc == MOAT_OK)
        rc = srch_store_count_application(db, ev->source, ev->seq);
#endif
    return rc;
}
