/* connections.c - connections's event contract: contracts/connections.h. */
#include "moat/common.h"

#include "connections.h"
#include "contract.h"

static const struct contract_event events[] = {
    {CONNECTIONS_FOLLOWED, CONNECTIONS_EDGE_SCHEMA, NULL},
    {CONNECTIONS_UNFOLLOWED, CONNECTIONS_EDGE_SCHEMA, NULL},
    {CONNECTIONS_CONNECTION_REQUESTED, CONNECTIONS_EDGE_SCHEMA, NULL},
    {CONNECTIONS_CONNECTION_ACCEPTED, CONNECTIONS_EDGE_SCHEMA, NULL},
    {CONNECTIONS_CONNECTION_REMOVED, CONNECTIONS_EDGE_SCHEMA, NULL},
};

int connections_upcast(const char *type, int version, json_t *data,
                       json_t **out, const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int connections_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
