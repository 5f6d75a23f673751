/*
 * fuzz_product.c - catalog's document rules on arbitrary request bodies.
 *
 * The input is a request body. It is decoded as the server decodes bodies,
 * then validated as a create, and applied as a merge patch to a stored
 * product and validated as an update. Properties checked beyond "no crash,
 * no leak": a document the validator accepts is accepted again unchanged
 * (normalisation is idempotent), and never carries read-only members on
 * create.
 */
#include "moat/common.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../services/catalog/product.h"
#include "moat/problem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char base_doc[] =
    "{\"sku\":\"MUG-1\",\"name\":\"Mug\",\"price\":{\"amount\":1250,"
    "\"currency\":\"EUR\"},\"attributes\":{\"color\":\"blue\"}}";

static void check_accepted(json_t *doc, const struct cat_product *current)
{
    struct moat_validation v;
    moat_validation_init(&v);
    json_t *again = cat_doc_validate(doc, current, &v);
    if (!again || !json_equal(again, doc))
        abort(); /* an accepted document must stay accepted and unchanged */
    json_decref(again);
    moat_validation_release(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t err;
    json_t *body =
        json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &err);
    if (!body)
        return 0;

    struct moat_validation v;
    moat_validation_init(&v);
    json_t *doc = cat_doc_validate(body, NULL, &v);
    if (doc) {
        if (json_object_get(doc, "id") || json_object_get(doc, "version"))
            abort();
        check_accepted(doc, NULL);
        json_decref(doc);
    } else if (moat_validation_ok(&v)) {
        abort(); /* refused without saying why */
    }
    moat_validation_release(&v);

    if (json_is_object(body)) {
        json_t *target = json_loads(base_doc, 0, NULL);
        json_t *merged = cat_merge_patch(target, body);
        moat_validation_init(&v);
        json_t *updated = cat_doc_validate(merged, NULL, &v);
        if (updated) {
            check_accepted(updated, NULL);
            json_decref(updated);
        }
        moat_validation_release(&v);
        json_decref(merged);
    }
    json_decref(body);
    return 0;
}
