/* profiles.c - profiles's event contract: contracts/profiles.h. */
#include "moat/common.h"

#include "contract.h"
#include "profiles.h"

static const struct contract_event events[] = {
    {PROFILES_PROFILE_UPDATED, PROFILES_PROFILE_SCHEMA, NULL},
};

int profiles_upcast(const char *type, int version, json_t *data, json_t **out,
                    const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int profiles_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
