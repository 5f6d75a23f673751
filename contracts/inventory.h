/*
 * contracts/inventory.h - the events inventory publishes on its feed (source
 * "inventory", subject = SKU (StockChanged) or order id (the others)). Owned
 * by inventory; consumed by orders (the saga), reporting. What a contract
 * module is, why linking it keeps Database per Service, and how a version is
 * added: contracts/contract.h and docs/events.md.
 *
 * Events (docs/inventory.md, docs/saga.md), schema 1:
 *   StockChanged    {sku, on_hand, reserved, available, sold, version,
 *                    delta, kind, reason, order_id?}
 *   StockReserved, StockCommitted, StockReleased
 *                   {order_id, customer_id (null for a tombstone), lines,
 *                    state, version}; StockReleased adds {returned,
 *                    tombstone}
 *   StockReservationFailed {order_id, ..., shortages?: [{sku, requested,
 *                    available}], detail?}
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_INVENTORY_H
#define MOAT_CONTRACTS_INVENTORY_H

#include <jansson.h>

#define INVENTORY_STOCK_CHANGED            "StockChanged"
#define INVENTORY_STOCK_RESERVED           "StockReserved"
#define INVENTORY_STOCK_RESERVATION_FAILED "StockReservationFailed"
#define INVENTORY_STOCK_RELEASED           "StockReleased"
#define INVENTORY_STOCK_COMMITTED          "StockCommitted"

/* Data schema versions (the current ones): StockChanged's, and that of
 * StockReserved, StockReservationFailed, StockReleased and StockCommitted. */
#define INVENTORY_STOCK_CHANGED_SCHEMA 1
#define INVENTORY_RESERVATION_SCHEMA   1

/*
 * The current-shape data of an event of inventory (contract_upcast: data is
 * borrowed, *out a new reference; MOAT_EINVAL, MOAT_EUNSUPPORTED or
 * MOAT_ENOTFOUND with *why set).
 */
int inventory_upcast(const char *type, int version, json_t *data, json_t **out,
                     const char **why);
/* The current schema version of an event type of inventory; 0 when not one. */
int inventory_schema(const char *type);

#endif
