/* orders.c - orders's event contract: contracts/orders.h. */
#include "moat/common.h"

#include "contract.h"
#include "orders.h"

static const struct contract_event events[] = {
    {ORDERS_ORDER_PLACED, ORDERS_ORDER_SCHEMA, NULL},
    {ORDERS_ORDER_CONFIRMED, ORDERS_ORDER_SCHEMA, NULL},
    {ORDERS_ORDER_CANCELLED, ORDERS_ORDER_SCHEMA, NULL},
    {ORDERS_RESERVE_STOCK, ORDERS_COMMAND_SCHEMA, NULL},
    {ORDERS_RELEASE_STOCK, ORDERS_COMMAND_SCHEMA, NULL},
    {ORDERS_COMMIT_STOCK, ORDERS_COMMAND_SCHEMA, NULL},
    {ORDERS_AUTHORIZE_PAYMENT, ORDERS_COMMAND_SCHEMA, NULL},
    {ORDERS_CAPTURE_PAYMENT, ORDERS_COMMAND_SCHEMA, NULL},
    {ORDERS_VOID_PAYMENT, ORDERS_COMMAND_SCHEMA, NULL},
    {ORDERS_REFUND_PAYMENT, ORDERS_COMMAND_SCHEMA, NULL},
};

int orders_upcast(const char *type, int version, json_t *data, json_t **out,
                  const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int orders_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
