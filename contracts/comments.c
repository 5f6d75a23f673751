/* comments.c - comments's event contract: contracts/comments.h. */
#include "moat/common.h"

#include "comments.h"
#include "contract.h"

static const struct contract_event events[] = {
    {COMMENTS_COMMENT_POSTED, COMMENTS_COMMENT_SCHEMA, NULL},
    {COMMENTS_COMMENT_APPROVED, COMMENTS_COMMENT_SCHEMA, NULL},
    {COMMENTS_COMMENT_REJECTED, COMMENTS_COMMENT_SCHEMA, NULL},
    {COMMENTS_COMMENT_REMOVED, COMMENTS_COMMENT_SCHEMA, NULL},
};

int comments_upcast(const char *type, int version, json_t *data, json_t **out,
                    const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int comments_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
