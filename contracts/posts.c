/* posts.c - posts's event contract: contracts/posts.h. */
#include "moat/common.h"

#include "contract.h"
#include "posts.h"

static const struct contract_event events[] = {
    {POSTS_POST_CREATED, POSTS_POST_SCHEMA, NULL},
    {POSTS_POST_DELETED, POSTS_POST_SCHEMA, NULL},
};

int posts_upcast(const char *type, int version, json_t *data, json_t **out,
                 const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int posts_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
