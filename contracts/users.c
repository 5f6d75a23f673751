/* users.c - users's event contract: contracts/users.h. */
#include "moat/common.h"

#include "contract.h"
#include "users.h"

static const struct contract_event events[] = {
    {USERS_USER_REGISTERED, USERS_USER_SCHEMA, NULL},
    {USERS_USER_UPDATED, USERS_USER_SCHEMA, NULL},
    {USERS_USER_SUSPENDED, USERS_ACCESS_SCHEMA, NULL},
    {USERS_USER_RESTORED, USERS_ACCESS_SCHEMA, NULL},
    {USERS_ROLE_CHANGED, USERS_ACCESS_SCHEMA, NULL},
    {USERS_MODERATION_ACTION_REQUESTED, USERS_MODERATION_SCHEMA, NULL},
    {USERS_SESSIONS_ENDED, USERS_SESSION_SCHEMA, NULL},
};

int users_upcast(const char *type, int version, json_t *data, json_t **out,
                 const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int users_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
