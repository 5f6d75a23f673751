/*
 * contracts/catalog.h - the events catalog publishes on its feed
 * (source "catalog", subject = product id). Owned by catalog; consumed by
 * search, readmodel and reporting. What a contract module is, why linking
 * it keeps Database per Service, and how a version is added:
 * contracts/contract.h and docs/events.md.
 *
 *   ProductCreated, ProductUpdated
 *     2 (current): the product document {id, sku, name, description?,
 *       price: {amount, currency}, attributes, version, created_at,
 *       updated_at}
 *     1 (a catalog run with MOAT_CATALOG_EVENT_SCHEMA=1, or old events
 *       still in its feed): flat {id, sku, name, description?,
 *       price_amount, currency, attributes}, no version or times. Upcast
 *       to 2 by nesting price_amount and currency as price {amount,
 *       currency}; version and times stay absent.
 *   PriceChanged    1: {id, old: {amount, currency}, new: {...}}, emitted
 *                      with ProductUpdated when the price changed
 *   ProductDeleted  1: {id, sku}
 */
#ifndef MOAT_CONTRACTS_CATALOG_H
#define MOAT_CONTRACTS_CATALOG_H

#include <jansson.h>

#define CATALOG_PRODUCT_CREATED "ProductCreated"
#define CATALOG_PRODUCT_UPDATED "ProductUpdated"
#define CATALOG_PRICE_CHANGED   "PriceChanged"
#define CATALOG_PRODUCT_DELETED "ProductDeleted"

/* Data schema versions. ProductCreated/Updated: FLAT is the older one a
 * producer may still emit during a rolling upgrade, SCHEMA the current. */
#define CATALOG_PRODUCT_SCHEMA_FLAT    1
#define CATALOG_PRODUCT_SCHEMA         2
#define CATALOG_PRICE_CHANGED_SCHEMA   1
#define CATALOG_PRODUCT_DELETED_SCHEMA 1

/*
 * The current-shape data of an event of catalog (contract_upcast: data is
 * borrowed, *out a new reference; MOAT_EINVAL, MOAT_EUNSUPPORTED or
 * MOAT_ENOTFOUND with *why set).
 */
int catalog_upcast(const char *type, int version, json_t *data, json_t **out,
                   const char **why);
/* The current schema version of an event type of catalog; 0 when not one. */
int catalog_schema(const char *type);

#endif
