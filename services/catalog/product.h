/*
 * product.h - catalog's document model: product ids, the product document,
 * its validation rules, JSON merge patch and the v1 representation.
 *
 * A product is stored as two parts:
 *  - the client document (struct cat_product.doc): the members a client
 *    writes, normalised to {"sku", "name", "description"?, "price":
 *    {"amount", "currency"}, "attributes"} - this is what store.c keeps in
 *    the doc column;
 *  - server-owned metadata: id, version, created/updated times. Clients see
 *    them in every representation but can never set them.
 *
 * Nothing here touches the database or HTTP; handlers.c glues the two.
 */
#ifndef CAT_PRODUCT_H
#define CAT_PRODUCT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "contracts/catalog.h"
#include "moat/problem.h"

/* "prod_" + 26 Crockford base32 characters (48-bit ms time, 80 random). */
#define CAT_ID_PREFIX     "prod_"
#define CAT_ID_PREFIX_LEN 5
#define CAT_ID_LEN        (CAT_ID_PREFIX_LEN + 26)

/* Limits of the product document (code points unless said otherwise). */
#define CAT_SKU_MAX         64
#define CAT_NAME_MAX        200
#define CAT_DESCRIPTION_MAX 4000
#define CAT_AMOUNT_MAX      1000000000000LL /* 10^12 minor units */
#define CAT_ATTR_MAX_KEYS   64
#define CAT_ATTR_KEY_MAX    64
#define CAT_ATTR_MAX_DEPTH  4           /* nested arrays/objects in a value */
#define CAT_ATTR_MAX_BYTES  (16u << 10) /* compact JSON of "attributes" */
#define CAT_CURRENCY_LEN    3

struct cat_product {
    char id[CAT_ID_LEN + 1];
    json_t *doc;        /* owned reference: the normalised client document */
    int64_t version;    /* 1 on creation, +1 per change */
    int64_t created_ms; /* wall clock, ms since the epoch */
    int64_t updated_ms; /* wall clock, ms since the epoch */
};

/* Drop the document reference; the struct can be reused afterwards. */
void cat_product_release(struct cat_product *p);

/*
 * Generate a new product id into out. Ids sort by creation time: within
 * one millisecond (or if the clock steps back) the random part of the
 * previous id is incremented, as ULID's monotonic mode does. Not
 * thread-safe: call from the event loop thread only.
 */
void cat_id_new(char out[CAT_ID_LEN + 1]);
/* True when s has the exact shape of a product id. */
bool cat_id_valid(const char *s);

/* True when s is 1..64 of [A-Za-z0-9._-]. */
bool cat_sku_valid(const char *s);
/* True when code is an active ISO 4217 currency code (e.g. "EUR"). */
bool cat_currency_valid(const char *code);

/*
 * Validate a full client document (POST or PUT body, or the result of a
 * merge patch) and return the normalised document to store (new reference,
 * caller releases), or NULL after recording every problem in v.
 *
 * current is the stored product for a replace (PUT, PATCH) and NULL for a
 * create. Read-only members (id, version, created_at, updated_at) are
 * refused on create; on replace they may repeat their current values (so a
 * client can PUT back what it got from GET) but not change them.
 */
json_t *cat_doc_validate(json_t *body, const struct cat_product *current,
                         struct moat_validation *v);

/*
 * Check the read-only members of a merge patch against current (a change,
 * including null, is an error) and return a shallow copy of patch without
 * them (new reference). patch must be an object.
 */
json_t *cat_patch_strip_readonly(json_t *patch,
                                 const struct cat_product *current,
                                 struct moat_validation *v);

/*
 * RFC 7396 JSON merge patch: apply patch (borrowed) to target (stolen) and
 * return the result (new reference). target is modified in place when it is
 * an object, so pass a copy you own.
 */
json_t *cat_merge_patch(json_t *target, json_t *patch);

/* The v1 representation of p (new reference): times in epoch seconds. */
json_t *cat_product_json_v1(const struct cat_product *p);

/*
 * The data of a ProductCreated / ProductUpdated event (new reference).
 * Data schema version 2, the default, is the whole v1 representation
 * (cat_product_json_v1: nested "price": {"amount", "currency"}, version,
 * times). Version 1 is the older, flat shape {"id", "sku", "name",
 * "description"?, "price_amount", "currency", "attributes"}, still
 * emitted when MOAT_CATALOG_EVENT_SCHEMA=1: for a rolling upgrade where
 * consumers are older than the catalog. Consumers accept both (the
 * contract, contracts/catalog.h, upcasts 1 to 2).
 */
#define CAT_EVENT_SCHEMA_FLAT    CATALOG_PRODUCT_SCHEMA_FLAT
#define CAT_EVENT_SCHEMA_CURRENT CATALOG_PRODUCT_SCHEMA
json_t *cat_product_event_data(const struct cat_product *p, int version);

/* Strong entity tag of p's current version, quotes included: "\"v3\"". */
#define CAT_ETAG_MAX 32
void cat_etag(const struct cat_product *p, char out[CAT_ETAG_MAX]);

#endif /* CAT_PRODUCT_H */
