/* messaging.c - messaging's event contract: contracts/messaging.h. */
#include "moat/common.h"

#include "contract.h"
#include "messaging.h"

static const struct contract_event events[] = {
    {MESSAGING_CONVERSATION_CREATED, MESSAGING_EVENT_SCHEMA, NULL},
    {MESSAGING_MESSAGE_SENT, MESSAGING_EVENT_SCHEMA, NULL},
    {MESSAGING_MESSAGE_EDITED, MESSAGING_EVENT_SCHEMA, NULL},
    {MESSAGING_MESSAGE_DELETED, MESSAGING_EVENT_SCHEMA, NULL},
    {MESSAGING_MEMBERS_CHANGED, MESSAGING_EVENT_SCHEMA, NULL},
};

int messaging_upcast(const char *type, int version, json_t *data, json_t **out,
                     const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int messaging_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
