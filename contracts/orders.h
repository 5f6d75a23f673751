/*
 * contracts/orders.h - the events orders publishes on its feed (source
 * "orders", subject = order id). Owned by orders; consumed by notifications,
 * readmodel, reporting (its events); inventory and payments (its commands).
 * What a contract module is, why linking it keeps Database per Service, and
 * how a version is added: contracts/contract.h and docs/events.md.
 *
 * Events (docs/saga.md), schema 1:
 *   OrderPlaced     {order_id, customer_id, status, total, currency,
 *                    lines: [{product_id, sku, name, unit_price,
 *                    quantity}], version}
 *   OrderConfirmed  {order_id, customer_id, status, total, currency,
 *                    payment_id, version}
 *   OrderCancelled  {order_id, customer_id, status, reason, total,
 *                    currency, version}
 * Commands of the order saga (docs/saga.md), schema 1, on the same feed:
 *   to inventory    ReserveStock {customer_id, lines: [{sku, quantity}]},
 *                   ReleaseStock {reason}, CommitStock {}
 *   to payments     AuthorizePayment {customer_id, amount, currency,
 *                   card_token}, CapturePayment {amount},
 *                   VoidPayment {reason}, RefundPayment {reason}
 * (order_id is added to the data of every one of them.)
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_ORDERS_H
#define MOAT_CONTRACTS_ORDERS_H

#include <jansson.h>

#define ORDERS_ORDER_PLACED      "OrderPlaced"
#define ORDERS_ORDER_CONFIRMED   "OrderConfirmed"
#define ORDERS_ORDER_CANCELLED   "OrderCancelled"
#define ORDERS_RESERVE_STOCK     "ReserveStock"
#define ORDERS_RELEASE_STOCK     "ReleaseStock"
#define ORDERS_COMMIT_STOCK      "CommitStock"
#define ORDERS_AUTHORIZE_PAYMENT "AuthorizePayment"
#define ORDERS_CAPTURE_PAYMENT   "CapturePayment"
#define ORDERS_VOID_PAYMENT      "VoidPayment"
#define ORDERS_REFUND_PAYMENT    "RefundPayment"

/* Data schema versions (the current ones). */
#define ORDERS_ORDER_SCHEMA                                                    \
    1                           /* OrderPlaced, OrderConfirmed, OrderCancelled \
                                 */
#define ORDERS_COMMAND_SCHEMA 1 /* the saga's commands */

/*
 * The current-shape data of an event of orders (contract_upcast: data is
 * borrowed, *out a new reference; MOAT_EINVAL, MOAT_EUNSUPPORTED or
 * MOAT_ENOTFOUND with *why set).
 */
int orders_upcast(const char *type, int version, json_t *data, json_t **out,
                  const char **why);
/* The current schema version of an event type of orders; 0 when not one. */
int orders_schema(const char *type);

#endif
