/* inventory.c - inventory's event contract: contracts/inventory.h. */
#include "moat/common.h"

#include "contract.h"
#include "inventory.h"

static const struct contract_event events[] = {
    {INVENTORY_STOCK_CHANGED, INVENTORY_STOCK_CHANGED_SCHEMA, NULL},
    {INVENTORY_STOCK_RESERVED, INVENTORY_RESERVATION_SCHEMA, NULL},
    {INVENTORY_STOCK_RESERVATION_FAILED, INVENTORY_RESERVATION_SCHEMA, NULL},
    {INVENTORY_STOCK_RELEASED, INVENTORY_RESERVATION_SCHEMA, NULL},
    {INVENTORY_STOCK_COMMITTED, INVENTORY_RESERVATION_SCHEMA, NULL},
};

int inventory_upcast(const char *type, int version, json_t *data, json_t **out,
                     const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int inventory_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
