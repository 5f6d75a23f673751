/* catalog.c - catalog's event contract: contracts/catalog.h. */
#include "moat/common.h"

#include <string.h>

#include "catalog.h"
#include "contract.h"

/* ProductCreated, ProductUpdated: 1 (flat price_amount + currency) -> 2
 * (price {amount, currency}). Members keep their order, price goes last. */
static json_t *product_step(int from_version, json_t *data)
{
    if (from_version != CATALOG_PRODUCT_SCHEMA_FLAT)
        return NULL;
    json_t *doc = json_object();
    const char *key;
    json_t *val;
    json_object_foreach(data, key, val)
    {
        if (strcmp(key, "price_amount") != 0 && strcmp(key, "currency") != 0)
            json_object_set(doc, key, val);
    }
    json_t *amount = json_object_get(data, "price_amount");
    json_t *currency = json_object_get(data, "currency");
    if (amount || currency)
        json_object_set_new(
            doc, "price",
            json_pack("{s:O?, s:O?}", "amount", amount, "currency", currency));
    return doc;
}

static const struct contract_event events[] = {
    {CATALOG_PRODUCT_CREATED, CATALOG_PRODUCT_SCHEMA, product_step},
    {CATALOG_PRODUCT_UPDATED, CATALOG_PRODUCT_SCHEMA, product_step},
    {CATALOG_PRICE_CHANGED, CATALOG_PRICE_CHANGED_SCHEMA, NULL},
    {CATALOG_PRODUCT_DELETED, CATALOG_PRODUCT_DELETED_SCHEMA, NULL},
};

int catalog_upcast(const char *type, int version, json_t *data, json_t **out,
                   const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int catalog_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
