/* notifications.c - notifications's event contract: contracts/notifications.h.
 */
#include "moat/common.h"

#include "contract.h"
#include "notifications.h"

static const struct contract_event events[] = {
    {NOTIFICATIONS_NOTIFICATION_SENT, NOTIFICATIONS_SENT_SCHEMA, NULL},
};

int notifications_upcast(const char *type, int version, json_t *data,
                         json_t **out, const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int notifications_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
