/*
 * handlers.c - catalog's HTTP API (/v1/products): decoding, validation,
 * preconditions and status codes. The JSON document rules live in
 * product.c, the SQL in store.c; docs/api.md describes the API for clients.
 */
#include "moat/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "catalog.h"
#include "moat/auth.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "product.h"
#include "store.h"

#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX     100
#define LIST_MAX_ATTR      16 /* attr.<key> filters in one query */
#define ATTR_PREFIX        "attr."
#define ATTR_PREFIX_LEN    5
#define CURSOR_HEX_LEN     (2 * CAT_ID_LEN)

/* Media types PATCH accepts (RFC 7396 first); also sent as Accept-Patch. */
#define ACCEPT_PATCH "application/merge-patch+json, application/json"

/* ---- small helpers ---- */

/* True when s is valid UTF-8 (jansson refuses to build a string otherwise). */
static bool utf8_valid(const char *s)
{
    json_t *j = json_string(s);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

/* Compare the media type of a Content-Type value (parameters ignored). */
static bool media_type_is(const char *ct, const char *want)
{
    size_t n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return n == strlen(want) && strncasecmp(ct, want, n) == 0;
}

/*
 * Whether an If-Match / If-None-Match list matches etag. If-Match uses the
 * strong comparison (a weak tag never matches), If-None-Match the weak one
 * (RFC 9110 section 8.8.3.2). A malformed list matches nothing.
 */
static bool etag_list_matches(const char *list, const char *etag, bool weak)
{
    size_t etag_len = strlen(etag);
    const char *p = list;
    for (;;) {
        p += strspn(p, " \t,");
        if (*p == '\0')
            return false;
        if (*p == '*')
            return true;
        bool is_weak = false;
        if (p[0] == 'W' && p[1] == '/') {
            is_weak = true;
            p += 2;
        }
        if (*p != '"')
            return false;
        const char *end = strchr(p + 1, '"');
        if (!end)
            return false;
        size_t len = (size_t)(end - p) + 1;
        if ((weak || !is_weak) && len == etag_len && memcmp(p, etag, len) == 0)
            return true;
        p = end + 1;
    }
}

static void reply_not_found(struct moat_req *r, const char *id)
{
    /* Echo the id only when it has the shape of one: anything else came
     * straight from the client and may not even be valid UTF-8. */
    if (cat_id_valid(id))
        moat_req_reply_problem(r, 404, "there is no product with id \"%s\"",
                               id);
    else
        moat_req_reply_problem(r, 404,
                               "there is no product with this id "
                               "(product ids look like \"prod_...\")");
}

static void reply_conflict_sku(struct moat_req *r, json_t *doc)
{
    const char *sku = json_string_value(json_object_get(doc, "sku"));
    char detail[160];
    snprintf(detail, sizeof(detail), "another product already has sku \"%s\"",
             sku ? sku : "");
    json_t *p = moat_problem_new(409, detail);
    json_object_set_new(p, "sku", json_string(sku ? sku : ""));
    moat_req_reply_problem_json(r, p);
}

static void reply_stale(struct moat_req *r, const struct cat_product *cur)
{
    char etag[CAT_ETAG_MAX];
    cat_etag(cur, etag);
    moat_req_set_header(r, "ETag", etag);
    json_t *p = moat_problem_new(
        412, "If-Match does not match the product's current ETag; fetch the "
             "product again, reapply the change and retry");
    json_object_set_new(p, "current_etag", json_string(etag));
    moat_req_reply_problem_json(r, p);
}

static void reply_product(struct moat_req *r, int status,
                          const struct cat_product *p)
{
    char etag[CAT_ETAG_MAX];
    cat_etag(p, etag);
    moat_req_set_header(r, "ETag", etag);
    if (status == 201) {
        /* An absolute path: the gateway rewrites /v1/products/... to
         * its public prefix, as a reverse proxy does. */
        char location[CAT_ID_LEN + 16];
        snprintf(location, sizeof(location), "/v1/products/%s", p->id);
        moat_req_set_header(r, "Location", location);
    }
    moat_req_reply_json(r, status, cat_product_json_v1(p));
}

/*
 * The If-Match check shared by PUT, PATCH (required) and DELETE
 * (optional). Returns true when the request may go on; otherwise it has
 * replied 428 or 412.
 */
static bool check_if_match(struct moat_req *r, const struct cat_product *cur,
                           bool required)
{
    const char *h = moat_req_header(r, "If-Match");
    if (!h) {
        if (!required)
            return true;
        moat_req_reply_problem(r, 428,
                               "%s needs an If-Match header with the "
                               "product's current ETag (from GET), so that "
                               "concurrent changes are not overwritten",
                               moat_method_name(moat_req_method(r)));
        return false;
    }
    char etag[CAT_ETAG_MAX];
    cat_etag(cur, etag);
    if (etag_list_matches(h, etag, false))
        return true;
    reply_stale(r, cur);
    return false;
}

/* Load {id} or reply 404 / 5xx. Returns true with *p filled. */
static bool load_product(struct moat_req *r, struct cat_service *cat,
                         struct cat_product *p)
{
    const char *id = moat_req_param(r, "id");
    if (!id || !cat_id_valid(id)) {
        reply_not_found(r, id ? id : "");
        return false;
    }
    int rc = cat_store_get(cat->store, id, p);
    if (rc == MOAT_ENOTFOUND) {
        reply_not_found(r, id);
        return false;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "catalog", "read the product");
        return false;
    }
    return true;
}

static void reply_validation(struct moat_req *r, struct moat_validation *v)
{
    moat_req_reply_problem_json(
        r, moat_validation_problem(v, "the product has invalid fields"));
}

/*
 * Store doc as the new state of cur (PUT and PATCH after validation) and
 * reply. An unchanged document is not written: the version stays, and a
 * client retrying the same PUT sees the same ETag.
 */
static void replace_and_reply(struct moat_req *r, struct cat_service *cat,
                              const struct cat_product *cur, json_t *doc)
{
    if (json_equal(doc, cur->doc)) {
        reply_product(r, 200, cur);
        return;
    }
    struct cat_product updated = {0};
    int rc = cat_store_replace(cat->store, cur->id, cur->version, doc,
                               moat_wall_ms(), &updated);
    switch (rc) {
    case MOAT_OK:
        moat_log(MOAT_LOG_INFO, "product updated", "{s:s, s:I}", "id",
                 updated.id, "version", (json_int_t)updated.version);
        reply_product(r, 200, &updated);
        break;
    case MOAT_ECONFLICT:
        reply_conflict_sku(r, doc);
        break;
    case MOAT_ENOTFOUND:
        reply_not_found(r, cur->id);
        break;
    case MOAT_EPRECOND: {
        /* Changed between our read and the write: report what is there. */
        struct cat_product now = {0};
        if (cat_store_get(cat->store, cur->id, &now) == MOAT_OK)
            reply_stale(r, &now);
        else
            reply_not_found(r, cur->id);
        cat_product_release(&now);
        break;
    }
    default:
        moat_req_reply_store_error(r, rc, "catalog", "update the product");
        break;
    }
    cat_product_release(&updated);
}

/* ---- POST /v1/products ---- */

static void handle_create(struct moat_req *r, void *arg)
{
    struct cat_service *cat = arg;
    struct moat_validation v;
    struct cat_product p = {0};
    json_t *body = NULL;

    /* Catalog writes are for administrators (reads are public). */
    if (!moat_req_require_admin(r))
        return;

    moat_validation_init(&v);
    if (moat_req_json(r, &body) < 0)
        goto cleanup; /* replied 415 or 400 */

    p.doc = cat_doc_validate(body, NULL, &v);
    if (!p.doc) {
        reply_validation(r, &v);
        goto cleanup;
    }
    cat_id_new(p.id);
    p.created_ms = p.updated_ms = moat_wall_ms();

    int rc = cat_store_create(cat->store, &p);
    if (rc == MOAT_ECONFLICT) {
        reply_conflict_sku(r, p.doc);
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "catalog", "create the product");
        goto cleanup;
    }
    moat_log(MOAT_LOG_INFO, "product created", "{s:s, s:s}", "id", p.id, "sku",
             json_string_value(json_object_get(p.doc, "sku")));
    reply_product(r, 201, &p);

cleanup:
    cat_product_release(&p);
    json_decref(body);
    moat_validation_release(&v);
}

/* ---- GET /v1/products/{id} ---- */

static void handle_get(struct moat_req *r, void *arg)
{
    struct cat_service *cat = arg;
    struct cat_product p = {0};

    if (!load_product(r, cat, &p))
        return;
    char etag[CAT_ETAG_MAX];
    cat_etag(&p, etag);
    const char *inm = moat_req_header(r, "If-None-Match");
    if (inm && etag_list_matches(inm, etag, true)) {
        moat_req_set_header(r, "ETag", etag);
        moat_req_reply(r, 304, NULL, NULL, 0);
    } else {
        reply_product(r, 200, &p);
    }
    cat_product_release(&p);
}

/* ---- PUT /v1/products/{id} ---- */

static void handle_put(struct moat_req *r, void *arg)
{
    struct cat_service *cat = arg;
    struct moat_validation v;
    struct cat_product cur = {0};
    json_t *body = NULL, *doc = NULL;

    /* Catalog writes are for administrators (reads are public). */
    if (!moat_req_require_admin(r))
        return;

    moat_validation_init(&v);
    if (moat_req_json(r, &body) < 0)
        goto cleanup;
    if (!load_product(r, cat, &cur) || !check_if_match(r, &cur, true))
        goto cleanup;

    doc = cat_doc_validate(body, &cur, &v);
    if (!doc) {
        reply_validation(r, &v);
        goto cleanup;
    }
    replace_and_reply(r, cat, &cur, doc);

cleanup:
    json_decref(doc);
    json_decref(body);
    cat_product_release(&cur);
    moat_validation_release(&v);
}

/* ---- PATCH /v1/products/{id} (JSON merge patch) ---- */

static void handle_patch(struct moat_req *r, void *arg)
{
    struct cat_service *cat = arg;
    struct moat_validation v;
    struct cat_product cur = {0};
    json_t *patch = NULL, *stripped = NULL, *merged = NULL, *doc = NULL;

    /* Catalog writes are for administrators (reads are public). */
    if (!moat_req_require_admin(r))
        return;

    moat_validation_init(&v);
    const char *ct = moat_req_header(r, "Content-Type");
    if (!ct || (!media_type_is(ct, "application/merge-patch+json") &&
                !media_type_is(ct, "application/json"))) {
        moat_req_set_header(r, "Accept-Patch", ACCEPT_PATCH);
        moat_req_reply_problem(r, 415,
                               "PATCH takes a JSON merge patch (RFC 7396) "
                               "as application/merge-patch+json or "
                               "application/json");
        goto cleanup;
    }
    if (moat_req_json(r, &patch) < 0)
        goto cleanup;
    if (!load_product(r, cat, &cur) || !check_if_match(r, &cur, true))
        goto cleanup;

    if (!json_is_object(patch)) {
        /* RFC 7396 would replace the whole document with it: never valid. */
        moat_validation_add(&v, "",
                            "a merge patch for a product must be a JSON "
                            "object");
        reply_validation(r, &v);
        goto cleanup;
    }
    stripped = cat_patch_strip_readonly(patch, &cur, &v);
    merged = cat_merge_patch(json_deep_copy(cur.doc), stripped);
    doc = cat_doc_validate(merged, &cur, &v);
    if (!doc) {
        reply_validation(r, &v);
        goto cleanup;
    }
    replace_and_reply(r, cat, &cur, doc);

cleanup:
    json_decref(doc);
    json_decref(merged);
    json_decref(stripped);
    json_decref(patch);
    cat_product_release(&cur);
    moat_validation_release(&v);
}

/* ---- DELETE /v1/products/{id} ---- */

static void handle_delete(struct moat_req *r, void *arg)
{
    struct cat_service *cat = arg;
    struct cat_product cur = {0};

    /* Catalog writes are for administrators (reads are public). */
    if (!moat_req_require_admin(r))
        return;

    if (!load_product(r, cat, &cur))
        return;
    if (!check_if_match(r, &cur, false))
        goto cleanup;
    /* Without If-Match any version goes; with it, the checked one only. */
    int64_t expect =
        moat_req_header(r, "If-Match") ? cur.version : CAT_ANY_VERSION;
    int rc = cat_store_delete(cat->store, cur.id, expect);
    switch (rc) {
    case MOAT_OK:
        moat_log(MOAT_LOG_INFO, "product deleted", "{s:s}", "id", cur.id);
        moat_req_reply(r, 204, NULL, NULL, 0);
        break;
    case MOAT_ENOTFOUND:
        reply_not_found(r, cur.id);
        break;
    case MOAT_EPRECOND:
        reply_stale(r, &cur);
        break;
    default:
        moat_req_reply_store_error(r, rc, "catalog", "delete the product");
        break;
    }

cleanup:
    cat_product_release(&cur);
}

/* ---- GET /v1/products ---- */

struct list_query {
    struct cat_filter filter;
    size_t limit;
    char after[CAT_ID_LEN + 1];
    json_t *attrs;   /* owned; filter.attrs borrows it */
    json_t *problem; /* 400 problem being built, NULL while all is well */
};

/* The cursor is opaque to clients: hex of the last id of the page. */
static void cursor_encode(const char *id, char out[CURSOR_HEX_LEN + 1])
{
    moat_hex(out, id, CAT_ID_LEN);
}

static bool cursor_decode(const char *s, char out[CAT_ID_LEN + 1])
{
    if (moat_unhex(s, out, CAT_ID_LEN) != MOAT_OK)
        return false;
    out[CAT_ID_LEN] = '\0';
    return cat_id_valid(out);
}

static void parse_amount(struct list_query *q, const char *key,
                         const char *value, bool *has, int64_t *out)
{
    if (moat_parse_i64(value, 0, CAT_AMOUNT_MAX, out) != MOAT_OK)
        moat_problem_param_error(
            &q->problem, key,
            "must be a whole number of minor units from 0 to %lld",
            (long long)CAT_AMOUNT_MAX);
    else
        *has = true;
}

static void parse_attr(struct list_query *q, const char *key, const char *value)
{
    const char *name = key + ATTR_PREFIX_LEN;
    size_t n = moat_utf8_len(name);
    if (!utf8_valid(name) || n < 1 || n > CAT_ATTR_KEY_MAX) {
        moat_problem_param_error(
            &q->problem, key,
            "needs an attribute name of 1 to %d characters after "
            "\"attr.\"",
            CAT_ATTR_KEY_MAX);
        return;
    }
    if (!utf8_valid(value)) {
        moat_problem_param_error(&q->problem, key, "must be valid UTF-8");
        return;
    }
    if (json_object_size(q->attrs) >= LIST_MAX_ATTR) {
        moat_problem_param_error(&q->problem, key,
                                 "at most %d attribute filters are allowed",
                                 LIST_MAX_ATTR);
        return;
    }
    json_object_set_new(q->attrs, name, json_string(value));
}

static void parse_param(struct list_query *q, const char *key,
                        const char *value)
{
    struct cat_filter *f = &q->filter;
    if (strcmp(key, "limit") == 0) {
        int64_t limit;
        if (moat_parse_i64(value, 1, LIST_LIMIT_MAX, &limit) != MOAT_OK)
            moat_problem_param_error(&q->problem, key,
                                     "must be an integer from 1 to %d",
                                     LIST_LIMIT_MAX);
        else
            q->limit = (size_t)limit;
    } else if (strcmp(key, "cursor") == 0) {
        if (!cursor_decode(value, q->after))
            moat_problem_param_error(
                &q->problem, key, "is not a next_cursor returned by this API");
        else
            f->after_id = q->after;
    } else if (strcmp(key, "sku") == 0) {
        if (!cat_sku_valid(value))
            moat_problem_param_error(
                &q->problem, key,
                "must be 1 to %d of the characters A-Z a-z 0-9 . _ -",
                CAT_SKU_MAX);
        else
            f->sku = value;
    } else if (strcmp(key, "currency") == 0) {
        if (!cat_currency_valid(value))
            moat_problem_param_error(
                &q->problem, key,
                "must be an active ISO 4217 currency code in upper "
                "case, e.g. EUR");
        else
            f->currency = value;
    } else if (strcmp(key, "min_price") == 0) {
        parse_amount(q, key, value, &f->has_min, &f->min_amount);
    } else if (strcmp(key, "max_price") == 0) {
        parse_amount(q, key, value, &f->has_max, &f->max_amount);
    } else if (strcmp(key, "q") == 0) {
        size_t n = moat_utf8_len(value);
        if (!utf8_valid(value) || n < 1 || n > CAT_NAME_MAX)
            moat_problem_param_error(
                &q->problem, key, "must be 1 to %d characters of valid UTF-8",
                CAT_NAME_MAX);
        else
            f->name_contains = value;
    } else if (strncmp(key, ATTR_PREFIX, ATTR_PREFIX_LEN) == 0) {
        parse_attr(q, key, value);
    } else {
        moat_problem_param_error(
            &q->problem, key,
            "is not a known parameter (limit, cursor, sku, currency, "
            "min_price, max_price, q, attr.<name>)");
    }
}

static void parse_list_query(struct moat_req *r, struct list_query *q)
{
    void *iter = NULL;
    const char *key, *value;
    json_t *seen = json_object();
    size_t nparams = 0;

    q->limit = LIST_LIMIT_DEFAULT;
    q->attrs = json_object();
    q->filter.attrs = q->attrs;
    while (moat_req_query_next(r, &iter, &key, &value)) {
        nparams++;
        /* A repeated parameter is ambiguous (which one wins?): refuse it. */
        if (utf8_valid(key)) {
            if (json_object_get(seen, key)) {
                moat_problem_param_error(&q->problem, key,
                                         "is given more than once");
                continue;
            }
            json_object_set_new(seen, key, json_true());
        }
        parse_param(q, key, value ? value : "");
    }
    json_decref(seen);

    /*
     * evhttp drops the whole query string when one parameter is not
     * name=value ("?sku=X&junk"): answering with every product, unfiltered,
     * would be a silent lie, so a query that yields no parameter but has
     * more than separators in it is refused.
     */
    const char *target = moat_req_target(r);
    const char *qs = target ? strchr(target, '?') : NULL;
    if (nparams == 0 && qs && qs[1 + strspn(qs + 1, "&")] != '\0' &&
        !q->problem)
        q->problem = moat_problem_new(400, "the query string is malformed: "
                                           "every parameter must be "
                                           "name=value with a non-empty "
                                           "name");

    if (q->filter.has_min && q->filter.has_max &&
        q->filter.min_amount > q->filter.max_amount)
        moat_problem_param_error(&q->problem, "min_price",
                                 "must not be greater than max_price");
}

static void handle_list(struct moat_req *r, void *arg)
{
    struct cat_service *cat = arg;
    struct list_query q = {0};
    struct cat_product *items = NULL;
    size_t n = 0;

    parse_list_query(r, &q);
    if (q.problem) {
        moat_req_reply_problem_json(r, q.problem);
        q.problem = NULL;
        goto cleanup;
    }
    /* One row more than the page tells whether another page follows. */
    int rc = cat_store_list(cat->store, &q.filter, q.limit + 1, &items, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "catalog", "list the products");
        goto cleanup;
    }
    json_t *body = json_object();
    json_t *list = json_array();
    size_t shown = n > q.limit ? q.limit : n;
    for (size_t i = 0; i < shown; i++)
        json_array_append_new(list, cat_product_json_v1(&items[i]));
    json_object_set_new(body, "items", list);
    if (n > q.limit) {
        char cursor[CURSOR_HEX_LEN + 1];
        cursor_encode(items[shown - 1].id, cursor);
        json_object_set_new(body, "next_cursor", json_string(cursor));
    } else {
        json_object_set_new(body, "next_cursor", json_null());
    }
    moat_req_reply_json(r, 200, body);

cleanup:
    cat_products_free(items, n);
    json_decref(q.attrs);
}

int cat_routes_register(struct moat_http_server *server,
                        struct cat_service *cat)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/products", handle_list},
        {MOAT_POST, "/v1/products", handle_create},
        {MOAT_GET | MOAT_HEAD, "/v1/products/{id}", handle_get},
        {MOAT_PUT, "/v1/products/{id}", handle_put},
        {MOAT_PATCH, "/v1/products/{id}", handle_patch},
        {MOAT_DELETE, "/v1/products/{id}", handle_delete},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, cat);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
