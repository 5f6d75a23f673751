/* contract.c - the upcasting loop every event contract shares. */
#include "moat/common.h"

#include <string.h>

#include "contract.h"

static const struct contract_event *find(const struct contract_event *events,
                                         size_t n, const char *type)
{
    for (size_t i = 0; type && i < n; i++)
        if (strcmp(events[i].type, type) == 0)
            return &events[i];
    return NULL;
}

int contract_schema(const struct contract_event *events, size_t n,
                    const char *type)
{
    const struct contract_event *e = find(events, n, type);
    return e ? e->schema : 0;
}

int contract_upcast(const struct contract_event *events, size_t n,
                    const char *type, int version, json_t *data, json_t **out,
                    const char **why)
{
    *out = NULL;
    const struct contract_event *e = find(events, n, type);
    if (!e) {
        *why = "not an event type of this producer's contract";
        return MOAT_ENOTFOUND;
    }
    if (!json_is_object(data)) {
        *why = "event data is not an object";
        return MOAT_EINVAL;
    }
    if (version < 1 || version > e->schema) {
        *why = "unsupported event schema version (the consumer is older "
               "than its producer: upgrade it, then redrive)";
        return MOAT_EUNSUPPORTED;
    }
    json_t *cur = json_incref(data);
    for (int v = version; v < e->schema; v++) {
        json_t *next = e->step ? e->step(v, cur) : NULL;
        json_decref(cur);
        if (!json_is_object(next)) {
            json_decref(next);
            *why = "unsupported event schema version (no upcaster from it)";
            return MOAT_EUNSUPPORTED;
        }
        cur = next;
    }
    *out = cur;
    return MOAT_OK;
}
