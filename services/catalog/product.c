/* product.c - catalog's product document model (see product.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/id.h"
#include "moat/buf.h"
#include "product.h"

void cat_product_release(struct cat_product *p)
{
    json_decref(p->doc);
    p->doc = NULL;
}

/* --- ids --- */

/* Ids come from the runtime (moat/id.h); the prefix is this service's. */
void cat_id_new(char out[CAT_ID_LEN + 1])
{
    moat_id_new(CAT_ID_PREFIX, out, CAT_ID_LEN + 1);
}

bool cat_id_valid(const char *s)
{
    return s && moat_id_valid(s, CAT_ID_PREFIX);
}

/* --- sku and currency --- */

bool cat_sku_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > CAT_SKU_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/*
 * Active ISO 4217 codes of circulating currencies (list one, 2025), sorted
 * for bsearch. Fund codes (BOV, CLF, USN ...), precious metals, the SDR
 * and the testing/"no currency" codes XTS/XXX are left out on purpose: a
 * product price is never denominated in them. Withdrawn codes (HRK, SLL,
 * ZWL, CUC) are refused so old data does not creep in.
 */
static const char currencies[][CAT_CURRENCY_LEN + 1] = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM",
    "BBD", "BDT", "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN",
    "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD",
    "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL",
    "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY",
    "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
    "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK",
    "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP",
    "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT",
    "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER",
    "ZAR", "ZMW", "ZWG",
};

static int currency_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

bool cat_currency_valid(const char *code)
{
    if (strlen(code) != CAT_CURRENCY_LEN)
        return false;
    return bsearch(code, currencies, MOAT_ARRAY_LEN(currencies),
                   sizeof(currencies[0]), currency_cmp) != NULL;
}

/* --- validation --- */

static const char *const readonly_keys[] = {"id", "version", "created_at",
                                            "updated_at", NULL};
static const char *const doc_keys[] = {
    "sku", "name",    "description", "price",      "attributes",
    "id",  "version", "created_at",  "updated_at", NULL};
static const char *const price_keys[] = {"amount", "currency", NULL};

/* The current value of read-only member key, as the client sees it. */
static json_t *readonly_value(const struct cat_product *p, const char *key)
{
    if (strcmp(key, "id") == 0)
        return json_string(p->id);
    if (strcmp(key, "version") == 0)
        return json_integer(p->version);
    if (strcmp(key, "created_at") == 0)
        return json_integer(p->created_ms / 1000);
    return json_integer(p->updated_ms / 1000);
}

static void check_readonly(json_t *obj, const struct cat_product *current,
                           struct moat_validation *v)
{
    for (const char *const *k = readonly_keys; *k; k++) {
        json_t *given = json_object_get(obj, *k);
        if (!given)
            continue;
        char ptr[64];
        moat_json_pointer(ptr, sizeof(ptr), "", *k);
        if (!current) {
            moat_validation_add(v, ptr, "is read-only: the server assigns it");
            continue;
        }
        json_t *cur = readonly_value(current, *k);
        if (!json_equal(given, cur))
            moat_validation_add(v, ptr, "is read-only and cannot be changed");
        json_decref(cur);
    }
}

/* Nesting depth of containers: 0 for a scalar, 1 for [] or {}, ... */
static size_t depth(json_t *j, size_t limit)
{
    size_t max = 0;
    if (json_is_object(j)) {
        const char *k;
        json_t *m;
        json_object_foreach(j, k, m)
        {
            size_t d = depth(m, limit);
            if (d > max)
                max = d;
            if (max > limit) /* deep enough to fail; stop walking */
                break;
        }
        return max + 1;
    }
    if (json_is_array(j)) {
        size_t i;
        json_t *m;
        json_array_foreach(j, i, m)
        {
            size_t d = depth(m, limit);
            if (d > max)
                max = d;
            if (max > limit)
                break;
        }
        return max + 1;
    }
    return 0;
}

static void check_attributes(json_t *attrs, struct moat_validation *v)
{
    if (json_object_size(attrs) > CAT_ATTR_MAX_KEYS)
        moat_validation_add(v, "/attributes",
                            "must have at most %d members, not %zu",
                            CAT_ATTR_MAX_KEYS, json_object_size(attrs));
    const char *key;
    json_t *val;
    json_object_foreach(attrs, key, val)
    {
        char ptr[300];
        moat_json_pointer(ptr, sizeof(ptr), "/attributes", key);
        size_t n = moat_utf8_len(key);
        if (n < 1 || n > CAT_ATTR_KEY_MAX)
            moat_validation_add(v, ptr,
                                "attribute names must be 1 to %d characters "
                                "long, not %zu",
                                CAT_ATTR_KEY_MAX, n);
        else if (depth(val, CAT_ATTR_MAX_DEPTH) > CAT_ATTR_MAX_DEPTH)
            moat_validation_add(v, ptr,
                                "nests arrays and objects deeper than %d "
                                "levels",
                                CAT_ATTR_MAX_DEPTH);
    }
    /* json_dumpb with no buffer only measures. */
    size_t size = json_dumpb(attrs, NULL, 0, JSON_COMPACT);
    if (size > CAT_ATTR_MAX_BYTES)
        moat_validation_add(v, "/attributes",
                            "is %zu bytes as compact JSON; the limit is %u",
                            size, CAT_ATTR_MAX_BYTES);
}

json_t *cat_doc_validate(json_t *body, const struct cat_product *current,
                         struct moat_validation *v)
{
    if (!json_is_object(body)) {
        moat_validation_add(v, "", "must be a JSON object, not %s",
                            moat_json_type_name(body));
        return NULL;
    }
    check_readonly(body, current, v);
    moat_v_known_keys(v, body, "", doc_keys);

    const char *sku = NULL, *name = NULL, *description = NULL;
    if (moat_v_string(v, body, "", "sku", true, 1, CAT_SKU_MAX, &sku) &&
        !cat_sku_valid(sku)) {
        moat_validation_add(v, "/sku",
                            "may contain only letters A-Z and a-z, digits "
                            "and . _ -");
        sku = NULL;
    }
    moat_v_string(v, body, "", "name", true, 1, CAT_NAME_MAX, &name);
    moat_v_string(v, body, "", "description", false, 0, CAT_DESCRIPTION_MAX,
                  &description);

    json_t *price = NULL;
    int64_t amount = 0;
    const char *currency = NULL;
    if (moat_v_object(v, body, "", "price", true, &price)) {
        moat_v_known_keys(v, price, "/price", price_keys);
        moat_v_int(v, price, "/price", "amount", true, 0, CAT_AMOUNT_MAX,
                   &amount);
        if (moat_v_string(v, price, "/price", "currency", true,
                          CAT_CURRENCY_LEN, CAT_CURRENCY_LEN, &currency) &&
            !cat_currency_valid(currency)) {
            moat_validation_add(v, "/price/currency",
                                "must be an active ISO 4217 currency code in "
                                "upper case, e.g. \"EUR\"");
        }
    }

    json_t *attrs = NULL;
    if (moat_v_object(v, body, "", "attributes", false, &attrs))
        check_attributes(attrs, v);

    if (!moat_validation_ok(v))
        return NULL;

    /* Normalised member order keeps stored documents easy to read. */
    json_t *doc = json_object();
    json_object_set_new(doc, "sku", json_string(sku));
    json_object_set_new(doc, "name", json_string(name));
    if (description)
        json_object_set_new(doc, "description", json_string(description));
    json_object_set_new(doc, "price",
                        json_pack("{s:I, s:s}", "amount", (json_int_t)amount,
                                  "currency", currency));
    json_object_set_new(doc, "attributes",
                        attrs ? json_deep_copy(attrs) : json_object());
    return doc;
}

json_t *cat_patch_strip_readonly(json_t *patch,
                                 const struct cat_product *current,
                                 struct moat_validation *v)
{
    json_t *out = json_copy(patch);
    for (const char *const *k = readonly_keys; *k; k++) {
        json_t *given = json_object_get(patch, *k);
        if (!given)
            continue;
        json_t *cur = readonly_value(current, *k);
        if (!json_equal(given, cur)) {
            char ptr[64];
            moat_json_pointer(ptr, sizeof(ptr), "", *k);
            moat_validation_add(v, ptr, "is read-only and cannot be changed");
        }
        json_decref(cur);
        json_object_del(out, *k);
    }
    return out;
}

json_t *cat_merge_patch(json_t *target, json_t *patch)
{
    if (!json_is_object(patch)) {
        json_decref(target);
        return json_deep_copy(patch);
    }
    if (!json_is_object(target)) {
        json_decref(target);
        target = json_object();
    }
    const char *key;
    json_t *val;
    json_object_foreach(patch, key, val)
    {
        if (json_is_null(val)) {
            json_object_del(target, key);
            continue;
        }
        /* The recursion consumes its own reference to the old member. */
        json_t *old = json_incref(json_object_get(target, key));
        json_object_set_new(target, key, cat_merge_patch(old, val));
    }
    return target;
}

json_t *cat_product_json_v1(const struct cat_product *p)
{
    json_t *out = json_object();
    json_object_set_new(out, "id", json_string(p->id));
    /* Members are shared with p->doc, not copied: out is only serialised. */
    const char *key;
    json_t *val;
    json_object_foreach(p->doc, key, val)
    {
        json_object_set(out, key, val);
    }
    json_object_set_new(out, "version", json_integer(p->version));
    json_object_set_new(out, "created_at", json_integer(p->created_ms / 1000));
    json_object_set_new(out, "updated_at", json_integer(p->updated_ms / 1000));
    return out;
}

json_t *cat_product_event_data(const struct cat_product *p, int version)
{
    if (version != CAT_EVENT_SCHEMA_FLAT)
        return cat_product_json_v1(p);
    json_t *price = json_object_get(p->doc, "price");
    json_t *out = json_object();
    json_object_set_new(out, "id", json_string(p->id));
    json_object_set(out, "sku", json_object_get(p->doc, "sku"));
    json_object_set(out, "name", json_object_get(p->doc, "name"));
    json_t *description = json_object_get(p->doc, "description");
    if (description)
        json_object_set(out, "description", description);
    json_object_set(out, "price_amount", json_object_get(price, "amount"));
    json_object_set(out, "currency", json_object_get(price, "currency"));
    json_object_set(out, "attributes", json_object_get(p->doc, "attributes"));
    return out;
}

void cat_etag(const struct cat_product *p, char out[CAT_ETAG_MAX])
{
    snprintf(out, CAT_ETAG_MAX, "\"v%lld\"", (long long)p->version);
}
