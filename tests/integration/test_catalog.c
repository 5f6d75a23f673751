/*
 * test_catalog.c - the catalog service end to end: moat-catalog and
 * moat-gateway as real processes on free loopback ports, every endpoint
 * exercised through the gateway (/api/v1/products -> catalog /v1/products)
 * and the basics directly against catalog.
 *
 * The two processes are shared by all tests of the group (started in the
 * group setup, stopped in the teardown, which requires exit status 0: under
 * ASan a leak fails the run). Tests never depend on each other's data:
 * each works on SKUs and an attribute "suite" value of its own.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_catalog test_patch
 */
#include "moat/common.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "pg_fixture.h"
#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/sandbox.h"

static struct {
    char *tmp;      /* temporary directory of the run (owned) */
    char *cat_data; /* catalog's data directory inside tmp (owned) */
    char routes_env[160];
    struct h_service cat;
    struct h_service gw;
} F;

/* ---- helpers ---- */

/*
 * A fresh token for SKUs and tags: "<prefix>-<8 hex>". Kept in a pool of
 * its own, apart from h_fmt's, so a test can hold on to the few it makes
 * (far fewer than UNIQUE_POOL) while formatting URLs.
 */
#define UNIQUE_POOL 256
static const char *unique(const char *prefix)
{
    static char pool[UNIQUE_POOL][48];
    static unsigned next;
    unsigned char rnd[4];
    char hex[9];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(hex, rnd, sizeof(rnd));
    char *out = pool[next++ % UNIQUE_POOL];
    snprintf(out, sizeof(pool[0]), "%s-%s", prefix, hex);
    return out;
}

/* URL through the gateway: path after /api/v1. */
static const char *gw_url(const char *path)
{
    return h_fmt("%s/api/v1%s", F.gw.url, path);
}

static const char *gw_product(const json_t *p)
{
    return h_fmt("%s/api/v1/products/%s", F.gw.url,
                 json_string_value(json_object_get(p, "id")));
}

/* Serialise j (borrowed); caller frees. */
static char *dump(const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    assert_non_null(s);
    return s;
}

/* A valid product document tagged with suite (both borrowed). */
static json_t *doc_new(const char *sku, const char *suite)
{
    json_t *d = json_pack("{s:s, s:s, s:s, s:{s:I, s:s}, s:{s:s, s:s}}", "sku",
                          sku, "name", "Test product", "description",
                          "A product for the integration tests", "price",
                          "amount", (json_int_t)1999, "currency", "EUR",
                          "attributes", "suite", suite, "color", "red");
    assert_non_null(d);
    return d;
}

/* POST doc to url; asserts 201 and returns the created product. */
static json_t *create_at(const char *url, json_t *doc)
{
    char *body = dump(doc);
    struct h_resp r;
    h_send_json(&r, "POST", url, body, NULL);
    free(body);
    h_assert_status(&r, 201);
    json_t *p = h_resp_json(&r);
    assert_true(json_is_object(p));
    h_resp_release(&r);
    return p;
}

static json_t *create(json_t *doc)
{
    return create_at(gw_url("/products"), doc);
}

/* Create a tagged product with a fresh SKU through the gateway. */
static json_t *create_simple(const char *suite)
{
    json_t *doc = doc_new(unique("SKU"), suite);
    json_t *p = create(doc);
    json_decref(doc);
    return p;
}

/*
 * The entity tag a representation must carry, and the If-Match header
 * for it, into the caller's buffer: header lists outlive h_fmt's pool.
 */
#define ETAG_MAX     32
#define IF_MATCH_MAX 48
static const char *etag_of(const json_t *p, char out[ETAG_MAX])
{
    snprintf(out, ETAG_MAX, "\"v%lld\"",
             (long long)json_integer_value(json_object_get(p, "version")));
    return out;
}

static const char *if_match(const json_t *p, char out[IF_MATCH_MAX])
{
    char etag[ETAG_MAX];
    snprintf(out, IF_MATCH_MAX, "If-Match: %s", etag_of(p, etag));
    return out;
}

/* GET the product through the gateway; asserts 200 and returns it. */
static json_t *fetch(const json_t *p)
{
    struct h_resp r;
    h_get(&r, gw_product(p));
    h_assert_status(&r, 200);
    json_t *got = h_resp_json(&r);
    assert_non_null(got);
    h_resp_release(&r);
    return got;
}

static void assert_json_equal(const json_t *want, const json_t *got)
{
    if (!json_equal(want, got)) {
        char *a = dump(want), *b = dump(got);
        print_error("expected %s\n     got %s\n", a, b);
        free(a);
        free(b);
        fail();
    }
}

/*
 * After a bad request: both processes still run, and the product (if any)
 * is exactly as before.
 */
static void assert_intact(const json_t *before)
{
    assert_true(h_service_alive(&F.cat));
    assert_true(h_service_alive(&F.gw));
    struct h_resp r;
    h_get(&r, h_fmt("%s/healthz", F.cat.url));
    h_assert_status(&r, 200);
    h_resp_release(&r);
    if (before) {
        json_t *now = fetch(before);
        assert_json_equal(before, now);
        json_decref(now);
    }
}

/* Follow every page of a list query (path after /api/v1, with "?"),
 * returning all items in order. */
static json_t *list_all(const char *query, size_t limit)
{
    json_t *all = json_array();
    char *cursor = NULL;
    for (int pages = 0; pages < 1000; pages++) {
        const char *url =
            cursor ? gw_url(h_fmt("/products?%s&limit=%zu&cursor=%s", query,
                                  limit, cursor))
                   : gw_url(h_fmt("/products?%s&limit=%zu", query, limit));
        struct h_resp r;
        h_get(&r, url);
        h_assert_status(&r, 200);
        json_t *page = h_resp_json(&r);
        h_resp_release(&r);
        json_t *items = json_object_get(page, "items");
        assert_true(json_is_array(items));
        assert_true(json_array_size(items) <= limit);
        json_array_extend(all, items);
        json_t *next = json_object_get(page, "next_cursor");
        free(cursor);
        cursor = NULL;
        if (json_is_string(next))
            cursor = moat_xstrdup(json_string_value(next));
        else
            assert_true(json_is_null(next));
        json_decref(page);
        if (!cursor)
            return all;
    }
    fail_msg("list query %s did not end", query);
    return NULL;
}

/* Number of products a list query finds (all pages). */
static size_t count(const char *query)
{
    json_t *all = list_all(query, 100);
    size_t n = json_array_size(all);
    json_decref(all);
    return n;
}

/* Send body as method to url with the given headers; expect a problem. */
static void expect_problem(const char *method, const char *url,
                           const char *const *headers, const char *body,
                           long status)
{
    struct h_resp r;
    h_http(&r, method, url, headers, body, body ? strlen(body) : 0);
    h_assert_problem(&r, status);
    h_resp_release(&r);
}

/* POST/PUT a JSON body and expect 422 naming every pointer in want. */
static void expect_422(const char *method, const char *url,
                       const char *const *headers, const char *json,
                       const char *const *want)
{
    struct h_resp r;
    h_send_json(&r, method, url, json, headers);
    h_assert_problem(&r, 422);
    for (const char *const *p = want; *p; p++)
        h_assert_problem_error(&r, "pointer", *p);
    h_resp_release(&r);
}

/* GET a list query and expect 400 naming the parameter. */
static void expect_400_param(const char *query, const char *param)
{
    struct h_resp r;
    h_get(&r, gw_url(h_fmt("/products?%s", query)));
    h_assert_problem(&r, 400);
    h_assert_problem_error(&r, "parameter", param);
    h_resp_release(&r);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("catalog");
    F.cat_data = moat_xasprintf("%s/catalog-data", F.tmp);
    if (h_service_start(&F.cat, "catalog", F.tmp, F.cat_data, NULL) != 0)
        return -1;
    snprintf(F.routes_env, sizeof(F.routes_env),
             "MOAT_GATEWAY_ROUTES=/api/v1/products=catalog@%s/v1/products",
             F.cat.url);
    const char *gw_env[] = {F.routes_env,
                            "MOAT_GATEWAY_PUBLIC=GET /api/v1/products", NULL};
    if (h_service_start(&F.gw, "gateway", F.tmp, NULL, gw_env) != 0)
        return -1;
    /* Writes are for administrators: the suite acts as one, through the
     * gateway (end-user JWT) and directly (service token). */
    h_auto_header(F.gw.url, h_user_token("usr_admin", "admin", 3600));
    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    /* Gateway first: it must not see catalog vanish under a request. */
    int gw_rc = h_service_stop(&F.gw);
    int cat_rc = h_service_stop(&F.cat);
    if (gw_rc != 0 || cat_rc != 0)
        print_error("services must exit 0 on SIGTERM: gateway %d, catalog "
                    "%d (see the logs above)\n",
                    gw_rc, cat_rc);
    h_service_release(&F.gw);
    h_service_release(&F.cat);
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.cat_data);
    return gw_rc == 0 && cat_rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void check_new_product(const json_t *p, const json_t *doc)
{
    const char *id = json_string_value(json_object_get(p, "id"));
    assert_non_null(id);
    assert_int_equal(strlen(id), 31);
    assert_memory_equal(id, "prod_", 5);
    assert_int_equal(strspn(id + 5, "0123456789ABCDEFGHJKMNPQRSTVWXYZ"), 26);
    assert_int_equal(json_integer_value(json_object_get(p, "version")), 1);
    json_t *c = json_object_get(p, "created_at");
    assert_true(json_is_integer(c));
    int64_t now = moat_wall_ms() / 1000;
    assert_true(json_integer_value(c) >= now - 60);
    assert_true(json_integer_value(c) <= now + 1);
    assert_true(json_equal(c, json_object_get(p, "updated_at")));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)doc, key, val)
    {
        assert_json_equal(val, json_object_get(p, key));
    }
}

static void test_create_get_direct(void **state)
{
    MOAT_UNUSED(state);
    json_t *doc = doc_new(unique("DIRECT"), unique("direct"));
    char *body = dump(doc);
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat.url), body, NULL);
    free(body);
    h_assert_status(&r, 201);
    json_t *p = h_resp_json(&r);
    check_new_product(p, doc);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    const char *loc = h_resp_header(&r, "Location");
    assert_non_null(loc);
    assert_string_equal(
        loc,
        h_fmt("/v1/products/%s", json_string_value(json_object_get(p, "id"))));
    assert_non_null(
        strstr(h_resp_header(&r, "Content-Type"), "application/json"));
    char *location = moat_xstrdup(loc);
    h_resp_release(&r);

    h_get(&r, h_fmt("%s%s", F.cat.url, location));
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    json_t *got = h_resp_json(&r);
    assert_json_equal(p, got);
    json_decref(got);
    h_resp_release(&r);

    /* HEAD: same headers, no body. */
    h_http(&r, "HEAD", h_fmt("%s%s", F.cat.url, location), NULL, NULL, 0);
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    assert_int_equal(r.body_len, 0);
    h_resp_release(&r);

    /* The same product is visible through the gateway. */
    got = fetch(p);
    assert_json_equal(p, got);
    json_decref(got);

    free(location);
    json_decref(p);
    json_decref(doc);
}

static void test_create_get_gateway(void **state)
{
    MOAT_UNUSED(state);
    json_t *doc = doc_new(unique("GW"), unique("gw"));
    /* Flexible attributes: any JSON, nested up to the limit. */
    json_object_set_new(json_object_get(doc, "attributes"), "dims",
                        json_pack("{s:{s:[i,i,i]}, s:b, s:n, s:f}", "cm", "whd",
                                  10, 20, 30, "fragile", 1, "note", "weight",
                                  1.25));
    char *body = dump(doc);
    struct h_resp r;
    h_send_json(&r, "POST", gw_url("/products"), body, NULL);
    free(body);
    h_assert_status(&r, 201);
    json_t *p = h_resp_json(&r);
    check_new_product(p, doc);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    /* The gateway maps the Location to its public path. */
    assert_string_equal(h_resp_header(&r, "Location"),
                        h_fmt("/api/v1/products/%s",
                              json_string_value(json_object_get(p, "id"))));
    h_resp_release(&r);

    h_get(&r, gw_product(p));
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    json_t *got = h_resp_json(&r);
    assert_json_equal(p, got);
    json_decref(got);
    h_resp_release(&r);

    h_http(&r, "HEAD", gw_product(p), NULL, NULL, 0);
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    assert_int_equal(r.body_len, 0);
    h_resp_release(&r);

    /* A product without optional members gets empty attributes. */
    json_t *min =
        json_pack("{s:s, s:s, s:{s:i, s:s}}", "sku", unique("MIN"), "name",
                  "Ünïcödé name", "price", "amount", 0, "currency", "JPY");
    json_t *pm = create(min);
    assert_true(json_is_object(json_object_get(pm, "attributes")));
    assert_int_equal(json_object_size(json_object_get(pm, "attributes")), 0);
    assert_null(json_object_get(pm, "description"));
    json_decref(pm);
    json_decref(min);

    json_decref(p);
    json_decref(doc);
}

static void test_get_conditional(void **state)
{
    MOAT_UNUSED(state);
    json_t *p = create_simple(unique("cond"));
    char etag_buf[ETAG_MAX];
    const char *etag = etag_of(p, etag_buf);
    const char *variants[] = {etag, h_fmt("W/%s", etag),
                              h_fmt("\"v999\", %s", etag), "*"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(variants); i++) {
        const char *hdr[] = {h_fmt("If-None-Match: %s", variants[i]), NULL};
        struct h_resp r;
        h_http(&r, "GET", gw_product(p), hdr, NULL, 0);
        h_assert_status(&r, 304);
        assert_int_equal(r.body_len, 0);
        assert_string_equal(h_resp_header(&r, "ETag"), etag);
        h_resp_release(&r);
    }
    const char *stale[] = {"If-None-Match: \"v999\"", NULL};
    struct h_resp r;
    h_http(&r, "GET", gw_product(p), stale, NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    json_decref(p);
}

static void test_list_pagination(void **state)
{
    MOAT_UNUSED(state);
    char im_third[IF_MATCH_MAX];
    const char *suite = unique("page");
    char *query = moat_xasprintf("attr.suite=%s", suite);
    json_t *made = json_array();
    for (int i = 0; i < 7; i++)
        json_array_append_new(made, create_simple(suite));

    /* Default page size and shape. */
    struct h_resp r;
    h_get(&r, gw_url(h_fmt("/products?%s", query)));
    h_assert_status(&r, 200);
    json_t *page = h_resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 7);
    assert_true(json_is_null(json_object_get(page, "next_cursor")));
    json_decref(page);
    h_resp_release(&r);

    /* Pages of 3, 3, 1 in id (creation) order, equal to what was made. */
    for (size_t limit = 1; limit <= 7; limit += 2) {
        json_t *all = list_all(query, limit);
        assert_json_equal(made, all);
        json_decref(all);
    }
    h_get(&r, gw_url(h_fmt("/products?%s&limit=3", query)));
    page = h_resp_json(&r);
    const char *cursor =
        json_string_value(json_object_get(page, "next_cursor"));
    assert_non_null(cursor);
    h_resp_release(&r);

    /* The cursor survives the deletion of the page's last item. */
    json_t *third = json_array_get(made, 2);
    const char *hdr[] = {if_match(third, im_third), NULL};
    h_http(&r, "DELETE", gw_product(third), hdr, NULL, 0);
    h_assert_status(&r, 204);
    h_resp_release(&r);
    h_get(&r, gw_url(h_fmt("/products?%s&limit=10&cursor=%s", query, cursor)));
    h_assert_status(&r, 200);
    json_t *rest = h_resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(rest, "items")), 4);
    assert_json_equal(json_array_get(made, 3),
                      json_array_get(json_object_get(rest, "items"), 0));
    json_decref(rest);
    h_resp_release(&r);
    json_decref(page);

    /* Bad paging parameters. */
    expect_400_param("cursor=abc", "cursor");
    expect_400_param("cursor=7072", "cursor");
    expect_400_param("limit=0", "limit");
    expect_400_param("limit=101", "limit");
    expect_400_param("limit=ten", "limit");
    expect_400_param("limit=5&limit=6", "limit");

    free(query);
    json_decref(made);
}

static void test_list_filters(void **state)
{
    MOAT_UNUSED(state);
    const char *suite = unique("filter");
    const char *sku_a = unique("FA");
    struct {
        const char *sku, *name, *currency, *color;
        json_int_t amount;
    } rows[] = {
        {sku_a, "Red Cotton Shirt", "EUR", "red", 1500},
        {unique("FB"), "100% Cotton_Shirt", "EUR", "blue", 2500},
        {unique("FC"), "Blue Jeans", "USD", "blue", 5000},
        {unique("FD"), "Wool Hat", "USD", "red", 700},
        {unique("FE"), "Leather Belt", "GBP", "brown", 0},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(rows); i++) {
        json_t *doc = json_pack(
            "{s:s, s:s, s:{s:I, s:s}, s:{s:s, s:s, s:s, s:i}}", "sku",
            rows[i].sku, "name", rows[i].name, "price", "amount",
            rows[i].amount, "currency", rows[i].currency, "attributes", "suite",
            suite, "color", rows[i].color, "size.eu", "42", "n", (int)i);
        json_decref(create(doc));
        json_decref(doc);
    }
    const char *base = h_fmt("attr.suite=%s", suite);
    char *b = moat_xstrdup(base);

    assert_int_equal(count(b), 5);
    assert_int_equal(count(h_fmt("%s&sku=%s", b, sku_a)), 1);
    assert_int_equal(count(h_fmt("sku=%s", sku_a)), 1);
    assert_int_equal(count(h_fmt("%s&currency=EUR", b)), 2);
    assert_int_equal(count(h_fmt("%s&currency=USD", b)), 2);
    assert_int_equal(count(h_fmt("%s&currency=JPY", b)), 0);
    assert_int_equal(count(h_fmt("%s&min_price=1500", b)), 3);
    assert_int_equal(count(h_fmt("%s&max_price=1500", b)), 3);
    assert_int_equal(count(h_fmt("%s&min_price=700&max_price=2500", b)), 3);
    assert_int_equal(count(h_fmt("%s&min_price=0&max_price=0", b)), 1);
    /* q: case-insensitive substring; LIKE wildcards are literal. */
    assert_int_equal(count(h_fmt("%s&q=cotton", b)), 2);
    assert_int_equal(count(h_fmt("%s&q=COTTON%%20SHIRT", b)), 1);
    assert_int_equal(count(h_fmt("%s&q=%%25", b)), 1);
    assert_int_equal(count(h_fmt("%s&q=n_s", b)), 1);
    assert_int_equal(count(h_fmt("%s&q=_", b)), 1);
    assert_int_equal(count(h_fmt("%s&q=jeans", b)), 1);
    /* attr.<key>: string equality, several at once, dotted names. */
    assert_int_equal(count(h_fmt("%s&attr.color=red", b)), 2);
    assert_int_equal(count(h_fmt("%s&attr.color=red&currency=USD", b)), 1);
    assert_int_equal(count(h_fmt("%s&attr.size.eu=42", b)), 5);
    assert_int_equal(count(h_fmt("%s&attr.size.eu=43", b)), 0);
    assert_int_equal(count(h_fmt("%s&attr.color=Red", b)), 0);
    assert_int_equal(count(h_fmt("%s&attr.nope=red", b)), 0);
    /* A number attribute is not equal to its text. */
    assert_int_equal(count(h_fmt("%s&attr.n=1", b)), 0);
    assert_int_equal(
        count(
            h_fmt("%s&currency=EUR&min_price=2000&q=shirt&attr.color=blue", b)),
        1);

    /* Invalid parameters: 400 naming each. */
    expect_400_param("currency=eur", "currency");
    expect_400_param("currency=XXX", "currency");
    expect_400_param("min_price=-1", "min_price");
    expect_400_param("max_price=1.5", "max_price");
    expect_400_param("max_price=1000000000001", "max_price");
    expect_400_param("min_price=10&max_price=5", "min_price");
    expect_400_param("sku=has%20space", "sku");
    expect_400_param("q=", "q");
    expect_400_param("attr.=x", "attr.");
    expect_400_param("colour=red", "colour");
    /* A parameter without "=" must not make the filters vanish. */
    struct h_resp mal;
    h_get(&mal, gw_url(h_fmt("/products?%s&junk", b)));
    h_assert_problem(&mal, 400);
    h_resp_release(&mal);
    struct h_resp r;
    h_get(&r, gw_url("/products?limit=0&colour=red&currency=eur"));
    h_assert_problem(&r, 400);
    h_assert_problem_error(&r, "parameter", "limit");
    h_assert_problem_error(&r, "parameter", "colour");
    h_assert_problem_error(&r, "parameter", "currency");
    h_resp_release(&r);

    assert_int_equal(count(b), 5);
    assert_intact(NULL);
    free(b);
}

static void test_put(void **state)
{
    MOAT_UNUSED(state);
    char im_p[IF_MATCH_MAX], im_v2[IF_MATCH_MAX];
    json_t *p = create_simple(unique("put"));
    const char *url = gw_product(p);
    char *purl = moat_xstrdup(url);
    json_t *doc = json_pack("{s:s, s:s, s:{s:i, s:s}, s:{s:s}}", "sku",
                            json_string_value(json_object_get(p, "sku")),
                            "name", "Replaced", "price", "amount", 42,
                            "currency", "USD", "attributes", "k", "v");
    char *body = dump(doc);

    /* Without If-Match: 428; with a stale one: 412 + current ETag. */
    struct h_resp r;
    h_send_json(&r, "PUT", purl, body, NULL);
    h_assert_problem(&r, 428);
    h_resp_release(&r);
    assert_intact(p);

    const char *stale[] = {"If-Match: \"v7\"", NULL};
    h_send_json(&r, "PUT", purl, body, stale);
    h_assert_problem(&r, 412);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    h_resp_release(&r);
    const char *weak[] = {"If-Match: W/\"v1\"", NULL};
    h_send_json(&r, "PUT", purl, body, weak);
    h_assert_problem(&r, 412);
    h_resp_release(&r);
    assert_intact(p);

    /* Read-only members may not change. */
    const char *ok[] = {if_match(p, im_p), NULL};
    json_t *bad = json_deep_copy(doc);
    json_object_set_new(bad, "id",
                        json_string("prod_0000000000000000000000000"));
    json_object_set_new(bad, "version", json_integer(5));
    json_object_set_new(bad, "created_at", json_integer(1));
    char *bad_body = dump(bad);
    const char *want[] = {"/id", "/version", "/created_at", NULL};
    expect_422("PUT", purl, ok, bad_body, want);
    free(bad_body);
    json_decref(bad);
    assert_intact(p);

    /* The real replace: description and old attributes disappear. */
    h_send_json(&r, "PUT", purl, body, ok);
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    json_t *v2 = h_resp_json(&r);
    h_resp_release(&r);
    assert_int_equal(json_integer_value(json_object_get(v2, "version")), 2);
    assert_null(json_object_get(v2, "description"));
    assert_string_equal(json_string_value(json_object_get(v2, "name")),
                        "Replaced");
    assert_json_equal(json_object_get(doc, "attributes"),
                      json_object_get(v2, "attributes"));
    assert_json_equal(json_object_get(p, "id"), json_object_get(v2, "id"));
    assert_json_equal(json_object_get(p, "created_at"),
                      json_object_get(v2, "created_at"));
    json_t *got = fetch(p);
    assert_json_equal(v2, got);
    json_decref(got);

    /* The old ETag is now stale. */
    h_send_json(&r, "PUT", purl, body, ok);
    h_assert_problem(&r, 412);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    h_resp_release(&r);

    /* PUT back what GET returned (read-only members unchanged): allowed,
     * and an unchanged document keeps its version. */
    char *round = dump(v2);
    const char *ok2[] = {if_match(v2, im_v2), NULL};
    h_send_json(&r, "PUT", purl, round, ok2);
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    h_resp_release(&r);
    free(round);
    assert_intact(v2);

    /* PUT on a product that does not exist: 404. */
    h_send_json(&r, "PUT", gw_url("/products/prod_00000000000000000000000000"),
                body, ok);
    h_assert_problem(&r, 404);
    h_resp_release(&r);

    json_decref(v2);
    free(body);
    free(purl);
    json_decref(doc);
    json_decref(p);
}

static void test_patch(void **state)
{
    MOAT_UNUSED(state);
    char im_p[IF_MATCH_MAX], im_v2[IF_MATCH_MAX];
    json_t *p = create_simple(unique("patch"));
    char *url = moat_xstrdup(gw_product(p));
    const char *mp = "Content-Type: application/merge-patch+json";
    const char *patch = "{\"price\":{\"amount\":2500},\"description\":null,"
                        "\"attributes\":{\"color\":null,\"size\":\"M\"}}";

    /* Content type: only merge-patch+json or json. */
    const char *text[] = {"Content-Type: text/plain", if_match(p, im_p), NULL};
    struct h_resp r;
    h_http(&r, "PATCH", url, text, patch, strlen(patch));
    h_assert_problem(&r, 415);
    h_resp_release(&r);
    /* Catalog names the accepted types (RFC 5789 section 2.2). Checked
     * directly: the gateway does not forward Accept-Patch (yet). */
    h_http(&r, "PATCH",
           h_fmt("%s/v1/products/%s", F.cat.url,
                 json_string_value(json_object_get(p, "id"))),
           text, patch, strlen(patch));
    h_assert_problem(&r, 415);
    assert_non_null(h_resp_header(&r, "Accept-Patch"));
    h_resp_release(&r);
    assert_intact(p);

    /* Preconditions. */
    const char *none[] = {mp, NULL};
    expect_problem("PATCH", url, none, patch, 428);
    const char *stale[] = {mp, "If-Match: \"v2\"", NULL};
    h_http(&r, "PATCH", url, stale, patch, strlen(patch));
    h_assert_problem(&r, 412);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    h_resp_release(&r);
    assert_intact(p);

    /* Invalid results and read-only members: 422 naming the fields. */
    const char *hdr[] = {mp, if_match(p, im_p), NULL};
    const char *bad = "{\"name\":7,\"price\":{\"currency\":\"ZZZ\"},"
                      "\"version\":null,\"id\":\"x\",\"bogus\":1}";
    h_http(&r, "PATCH", url, hdr, bad, strlen(bad));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/name");
    h_assert_problem_error(&r, "pointer", "/price/currency");
    h_assert_problem_error(&r, "pointer", "/version");
    h_assert_problem_error(&r, "pointer", "/id");
    h_assert_problem_error(&r, "pointer", "/bogus");
    h_resp_release(&r);
    const char *required = "{\"sku\":null}";
    h_http(&r, "PATCH", url, hdr, required, strlen(required));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/sku");
    h_resp_release(&r);
    h_http(&r, "PATCH", url, hdr, "[1]", 3);
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    assert_intact(p);

    /* The merge itself. */
    h_http(&r, "PATCH", url, hdr, patch, strlen(patch));
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    json_t *v2 = h_resp_json(&r);
    h_resp_release(&r);
    json_t *want = json_deep_copy(p);
    json_object_del(want, "description");
    json_object_set_new(json_object_get(want, "price"), "amount",
                        json_integer(2500));
    json_object_del(json_object_get(want, "attributes"), "color");
    json_object_set_new(json_object_get(want, "attributes"), "size",
                        json_string("M"));
    json_object_set_new(want, "version", json_integer(2));
    json_object_set(want, "updated_at", json_object_get(v2, "updated_at"));
    assert_json_equal(want, v2);
    assert_intact(v2);

    /* application/json is accepted as a merge patch too. */
    const char *json_hdr[] = {"Content-Type: application/json",
                              if_match(v2, im_v2), NULL};
    const char *rename = "{\"name\":\"Patched\"}";
    h_http(&r, "PATCH", url, json_hdr, rename, strlen(rename));
    h_assert_status(&r, 200);
    json_t *v3 = h_resp_json(&r);
    h_resp_release(&r);
    assert_string_equal(json_string_value(json_object_get(v3, "name")),
                        "Patched");
    assert_int_equal(json_integer_value(json_object_get(v3, "version")), 3);
    assert_intact(v3);

    json_decref(v3);
    json_decref(want);
    json_decref(v2);
    free(url);
    json_decref(p);
}

static void test_delete(void **state)
{
    MOAT_UNUSED(state);
    char im_p[IF_MATCH_MAX];
    const char *suite = unique("del");
    char *sq = moat_xasprintf("attr.suite=%s", suite);
    json_t *p = create_simple(suite);
    json_t *q = create_simple(suite);
    char *url = moat_xstrdup(gw_product(p));

    const char *stale[] = {"If-Match: \"v9\"", NULL};
    struct h_resp r;
    h_http(&r, "DELETE", url, stale, NULL, 0);
    h_assert_problem(&r, 412);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    h_resp_release(&r);
    assert_intact(p);

    const char *ok[] = {if_match(p, im_p), NULL};
    h_http(&r, "DELETE", url, ok, NULL, 0);
    h_assert_status(&r, 204);
    assert_int_equal(r.body_len, 0);
    h_resp_release(&r);

    h_get(&r, url);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    h_http(&r, "DELETE", url, NULL, NULL, 0);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    assert_int_equal(count(sq), 1);

    /* Without If-Match, DELETE is unconditional. */
    h_http(&r, "DELETE", gw_product(q), NULL, NULL, 0);
    h_assert_status(&r, 204);
    h_resp_release(&r);
    assert_int_equal(count(sq), 0);

    free(url);
    free(sq);
    json_decref(q);
    json_decref(p);
}

static void test_duplicate_sku(void **state)
{
    MOAT_UNUSED(state);
    char im_b[IF_MATCH_MAX];
    const char *suite = unique("dup");
    char *sku = moat_xstrdup(unique("DUP"));
    json_t *doc = doc_new(sku, suite);
    json_t *a = create(doc);

    struct h_resp r;
    char *body = dump(doc);
    h_send_json(&r, "POST", gw_url("/products"), body, NULL);
    h_assert_problem(&r, 409);
    json_t *prob = h_resp_json(&r);
    assert_string_equal(json_string_value(json_object_get(prob, "sku")), sku);
    assert_non_null(
        strstr(json_string_value(json_object_get(prob, "detail")), sku));
    json_decref(prob);
    h_resp_release(&r);
    free(body);
    assert_int_equal(count(h_fmt("sku=%s", sku)), 1);
    assert_intact(a);

    /* Taking another product's SKU by PUT or PATCH is a conflict too. */
    json_t *b = create_simple(suite);
    json_t *put = json_deep_copy(doc);
    char *put_body = dump(put);
    const char *hdr[] = {if_match(b, im_b), NULL};
    h_send_json(&r, "PUT", gw_product(b), put_body, hdr);
    h_assert_problem(&r, 409);
    h_resp_release(&r);
    const char *mp[] = {"Content-Type: application/merge-patch+json",
                        if_match(b, im_b), NULL};
    char *patch = moat_xasprintf("{\"sku\":\"%s\"}", sku);
    h_http(&r, "PATCH", gw_product(b), mp, patch, strlen(patch));
    h_assert_problem(&r, 409);
    h_resp_release(&r);
    assert_intact(a);
    assert_intact(b);

    free(patch);
    free(put_body);
    json_decref(put);
    json_decref(b);
    json_decref(a);
    json_decref(doc);
    free(sku);
}

static void test_malformed_json(void **state)
{
    MOAT_UNUSED(state);
    char im_p[IF_MATCH_MAX];
    json_t *p = create_simple(unique("badjson"));
    char *url = moat_xstrdup(gw_product(p));
    const char *json[] = {"Content-Type: application/json", NULL};
    const char *json_m[] = {"Content-Type: application/json", if_match(p, im_p),
                            NULL};
    const char *bodies[] = {
        "{\"sku\": \"X\", ",                  /* truncated */
        "{\"sku\": \"X\"} trailing",          /* trailing garbage */
        "{\"sku\": \"A\", \"sku\": \"B\"}",   /* duplicate key */
        "{\"name\": \"\xff\xfe\"}",           /* invalid UTF-8 */
        "{\"name\": \"nul \\u0000 inside\"}", /* NUL character */
        "",                                   /* empty body */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bodies); i++) {
        expect_problem("POST", gw_url("/products"), json, bodies[i], 400);
        expect_problem("PUT", url, json_m, bodies[i], 400);
    }
    assert_intact(p);
    free(url);
    json_decref(p);
}

static void test_validation(void **state)
{
    MOAT_UNUSED(state);
    const char *suite = unique("valid");
    char *sq = moat_xasprintf("attr.suite=%s", suite);
    const char *url = gw_url("/products");
    char *purl = moat_xstrdup(url);

    /* Missing members. */
    const char *missing[] = {"/sku", "/name", "/price", NULL};
    expect_422("POST", purl, NULL, "{}", missing);
    const char *missing_price[] = {"/price/amount", "/price/currency", NULL};
    expect_422("POST", purl, NULL,
               "{\"sku\":\"A\",\"name\":\"n\",\"price\":{}}", missing_price);
    const char *root[] = {"", NULL};
    expect_422("POST", purl, NULL, "[]", root);
    /* jansson decodes only arrays and objects at the top: a bare scalar
     * is malformed (400), an array is a validation error (422). */
    const char *json_ct[] = {"Content-Type: application/json", NULL};
    expect_problem("POST", purl, json_ct, "\"text\"", 400);

    /* Wrong types, all reported at once. */
    char *types = moat_xasprintf(
        "{\"sku\":5,\"name\":[],\"description\":false,"
        "\"price\":{\"amount\":\"12\",\"currency\":1},\"attributes\":[],"
        "\"x\":{\"suite\":\"%s\"}}",
        suite);
    const char *type_ptrs[] = {"/sku",
                               "/name",
                               "/description",
                               "/price/amount",
                               "/price/currency",
                               "/attributes",
                               "/x",
                               NULL};
    expect_422("POST", purl, NULL, types, type_ptrs);
    free(types);
    const char *price_type[] = {"/price", NULL};
    expect_422("POST", purl, NULL,
               "{\"sku\":\"A\",\"name\":\"n\",\"price\":100}", price_type);
    const char *real_amount[] = {"/price/amount", NULL};
    expect_422("POST", purl, NULL,
               "{\"sku\":\"A\",\"name\":\"n\","
               "\"price\":{\"amount\":1.5,\"currency\":\"EUR\"}}",
               real_amount);

    /* Unknown members at the root and inside price. */
    const char *unknown[] = {"/colour", "/price/tax", NULL};
    expect_422("POST", purl, NULL,
               "{\"sku\":\"A\",\"name\":\"n\",\"colour\":\"red\","
               "\"price\":{\"amount\":1,\"currency\":\"EUR\",\"tax\":2}}",
               unknown);

    /* Read-only members on create. */
    const char *ro[] = {"/id", "/version", "/created_at", "/updated_at", NULL};
    expect_422("POST", purl, NULL,
               "{\"sku\":\"A\",\"name\":\"n\",\"id\":\"prod_x\","
               "\"version\":1,\"created_at\":1,\"updated_at\":1,"
               "\"price\":{\"amount\":1,\"currency\":\"EUR\"}}",
               ro);

    /* Ranges, lengths and formats. */
    struct moat_buf name = MOAT_BUF_INIT, desc = MOAT_BUF_INIT;
    for (int i = 0; i < 201; i++)
        moat_buf_addstr(&name, "é"); /* 201 code points, 402 bytes */
    for (int i = 0; i < 4001; i++)
        moat_buf_addch(&desc, 'd');
    char *ranges = moat_xasprintf(
        "{\"sku\":\"bad sku!\",\"name\":\"%s\",\"description\":\"%s\","
        "\"price\":{\"amount\":1000000000001,\"currency\":\"eur\"}}",
        moat_buf_str(&name), moat_buf_str(&desc));
    const char *range_ptrs[] = {
        "/sku",          "/name",           "/description",
        "/price/amount", "/price/currency", NULL};
    expect_422("POST", purl, NULL, ranges, range_ptrs);
    free(ranges);
    moat_buf_release(&name);
    moat_buf_release(&desc);
    const char *more[] = {"/sku", "/name", "/price/amount", "/price/currency",
                          NULL};
    expect_422("POST", purl, NULL,
               "{\"sku\":\"\",\"name\":\"\","
               "\"price\":{\"amount\":-1,\"currency\":\"XXX\"}}",
               more);
    struct moat_buf longsku = MOAT_BUF_INIT;
    for (int i = 0; i < 65; i++)
        moat_buf_addch(&longsku, 'S');
    char *ls = moat_xasprintf("{\"sku\":\"%s\",\"name\":\"n\",\"price\":"
                              "{\"amount\":1,\"currency\":\"EUR\"}}",
                              moat_buf_str(&longsku));
    const char *sku_ptr[] = {"/sku", NULL};
    expect_422("POST", purl, NULL, ls, sku_ptr);
    free(ls);
    moat_buf_release(&longsku);

    /* Attributes: count, name length, depth, size. */
    json_t *attrs = json_object();
    for (int i = 0; i < 65; i++)
        json_object_set_new(attrs, h_fmt("k%d", i), json_integer(i));
    json_t *doc =
        json_pack("{s:s, s:s, s:{s:i, s:s}, s:o}", "sku", "A", "name", "n",
                  "price", "amount", 1, "currency", "EUR", "attributes", attrs);
    char *body = dump(doc);
    const char *attr_ptr[] = {"/attributes", NULL};
    expect_422("POST", purl, NULL, body, attr_ptr);
    free(body);
    json_decref(doc);

    struct moat_buf key = MOAT_BUF_INIT;
    for (int i = 0; i < 65; i++)
        moat_buf_addch(&key, 'k');
    char *deep = moat_xasprintf(
        "{\"sku\":\"A\",\"name\":\"n\",\"price\":{\"amount\":1,"
        "\"currency\":\"EUR\"},\"attributes\":{\"%s\":1,\"\":2,"
        "\"ok\":[[[[1]]]],\"a/b\":[[[[[1]]]]],\"c\":{\"d\":{\"e\":{\"f\":"
        "{\"g\":{\"h\":1}}}}}}}",
        moat_buf_str(&key));
    const char *deep_ptrs[] = {h_fmt("/attributes/%s", moat_buf_str(&key)),
                               "/attributes/", "/attributes/a~1b",
                               "/attributes/c", NULL};
    expect_422("POST", purl, NULL, deep, deep_ptrs);
    free(deep);
    moat_buf_release(&key);

    struct moat_buf big = MOAT_BUF_INIT;
    for (int i = 0; i < 17 * 1024; i++)
        moat_buf_addch(&big, 'b');
    char *bigdoc = moat_xasprintf(
        "{\"sku\":\"A\",\"name\":\"n\",\"price\":{\"amount\":1,"
        "\"currency\":\"EUR\"},\"attributes\":{\"blob\":\"%s\"}}",
        moat_buf_str(&big));
    expect_422("POST", purl, NULL, bigdoc, attr_ptr);
    free(bigdoc);
    moat_buf_release(&big);

    /* Nothing was created and everything still runs. */
    assert_int_equal(count(sq), 0);
    assert_int_equal(count("sku=A"), 0);
    assert_intact(NULL);
    free(purl);
    free(sq);
}

static void test_content_type(void **state)
{
    MOAT_UNUSED(state);
    char im_p[IF_MATCH_MAX];
    json_t *p = create_simple(unique("ctype"));
    json_t *doc = doc_new(unique("CT"), unique("ctype"));
    char *body = dump(doc);
    char *url = moat_xstrdup(gw_product(p));

    const char *text[] = {"Content-Type: text/plain", NULL};
    const char *form[] = {"Content-Type: application/x-www-form-urlencoded",
                          NULL};
    expect_problem("POST", gw_url("/products"), text, body, 415);
    expect_problem("POST", gw_url("/products"), form, body, 415);
    expect_problem("POST", gw_url("/products"), NULL, body, 415);
    const char *put_text[] = {"Content-Type: text/plain", if_match(p, im_p),
                              NULL};
    expect_problem("PUT", url, put_text, body, 415);
    /* Direct, too. */
    expect_problem("POST", h_fmt("%s/v1/products", F.cat.url), text, body, 415);

    assert_int_equal(
        count(h_fmt("sku=%s", json_string_value(json_object_get(doc, "sku")))),
        0);
    assert_intact(p);
    free(url);
    free(body);
    json_decref(doc);
    json_decref(p);
}

static void test_body_too_large(void **state)
{
    MOAT_UNUSED(state);
    json_t *p = create_simple(unique("big"));
    const char *sku = unique("BIG");
    size_t fill = 10u << 20;
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_printf(&b,
                    "{\"sku\":\"%s\",\"name\":\"n\",\"price\":{\"amount\""
                    ":1,\"currency\":\"EUR\"},\"description\":\"",
                    sku);
    moat_buf_grow(&b, fill + 8);
    memset(b.data + b.len, 'x', fill);
    b.len += fill;
    b.data[b.len] = '\0';
    moat_buf_addstr(&b, "\"}");

    const char *json[] = {"Content-Type: application/json", NULL};
    struct h_resp r;
    h_http(&r, "POST", gw_url("/products"), json, b.data, b.len);
    h_assert_problem(&r, 413);
    h_resp_release(&r);
    /* Directly, catalog's own limit answers the same way. */
    h_http(&r, "POST", h_fmt("%s/v1/products", F.cat.url), json, b.data, b.len);
    h_assert_problem(&r, 413);
    h_resp_release(&r);
    moat_buf_release(&b);

    assert_int_equal(count(h_fmt("sku=%s", sku)), 0);
    assert_intact(p);
    json_decref(p);
}

static void test_header_too_large(void **state)
{
    MOAT_UNUSED(state);
    json_t *p = create_simple(unique("hdr"));
    /* Just over the 16 KiB default, and well over it (32 KiB), through
     * the gateway and directly: 431 either way, never a dropped
     * connection or a generic 400. */
    const size_t sizes[] = {20u << 10, 32u << 10};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(sizes); i++) {
        struct moat_buf h = MOAT_BUF_INIT;
        moat_buf_addstr(&h, "X-Big: ");
        for (size_t k = 0; k < sizes[i]; k++)
            moat_buf_addch(&h, 'h');
        const char *hdr[] = {moat_buf_str(&h), NULL};
        struct h_resp r;
        h_http(&r, "GET", gw_product(p), hdr, NULL, 0);
        h_assert_problem(&r, 431);
        h_resp_release(&r);
        h_http(&r, "GET", h_fmt("%s/v1/products", F.cat.url), hdr, NULL, 0);
        h_assert_problem(&r, 431);
        h_resp_release(&r);
        moat_buf_release(&h);
        assert_intact(p);
    }
    json_decref(p);
}

static void test_method_not_allowed(void **state)
{
    MOAT_UNUSED(state);
    json_t *p = create_simple(unique("405"));
    struct h_resp r;

    h_http(&r, "DELETE", gw_url("/products"), NULL, NULL, 0);
    h_assert_problem(&r, 405);
    const char *allow = h_resp_header(&r, "Allow");
    assert_non_null(allow);
    assert_non_null(strstr(allow, "GET"));
    assert_non_null(strstr(allow, "POST"));
    assert_null(strstr(allow, "DELETE"));
    h_resp_release(&r);

    h_http(&r, "PUT", gw_url("/products"), NULL, "{}", 2);
    h_assert_problem(&r, 405);
    h_resp_release(&r);

    h_http(&r, "POST", gw_product(p), NULL, "{}", 2);
    h_assert_problem(&r, 405);
    allow = h_resp_header(&r, "Allow");
    assert_non_null(allow);
    assert_non_null(strstr(allow, "PUT"));
    assert_non_null(strstr(allow, "PATCH"));
    assert_non_null(strstr(allow, "DELETE"));
    h_resp_release(&r);
    assert_intact(p);
    json_decref(p);
}

/* Reads are public, writes need an administrator, and catalog itself
 * accepts no call without a service token from a known peer. */
static void test_authorisation(void **state)
{
    MOAT_UNUSED(state);
    const char *sku = unique("AUTHZ");
    json_t *doc = doc_new(sku, "authz");
    char *body = dump(doc);
    json_decref(doc);
    size_t before = count(h_fmt("sku=%s", sku));
    struct h_resp r;

    const char *anon[] = {"Authorization:", NULL};
    h_get(&r, gw_url("/products?limit=1")); /* with the admin token */
    h_assert_status(&r, 200);
    h_resp_release(&r);
    h_http(&r, "GET", gw_url("/products?limit=1"), anon, NULL, 0);
    h_assert_status(&r, 200); /* public read */
    h_resp_release(&r);

    h_send_json(&r, "POST", gw_url("/products"), body, anon);
    h_assert_problem(&r, 401);
    h_resp_release(&r);

    const char *customer[] = {h_user_token("usr_cust", "customer", 600), NULL};
    h_send_json(&r, "POST", gw_url("/products"), body, customer);
    h_assert_problem(&r, 403);
    h_resp_release(&r);

    const char *expired[] = {h_user_token("usr_admin", "admin", -600), NULL};
    h_send_json(&r, "POST", gw_url("/products"), body, expired);
    h_assert_problem(&r, 401);
    h_resp_release(&r);

    /* Directly: no token, a token for another service, no user. */
    const char *none[] = {MOAT_SERVICE_TOKEN_HEADER ":", NULL};
    h_get(&r, h_fmt("%s/v1/products?limit=1", F.cat.url));
    h_assert_status(&r, 200);
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/v1/products?limit=1", F.cat.url), none, NULL,
           0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    const char *other[] = {h_service_token("users", "usr_admin", "admin"),
                           NULL};
    h_http(&r, "GET", h_fmt("%s/v1/products?limit=1", F.cat.url), other, NULL,
           0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    const char *nouser[] = {h_service_token("catalog", NULL, NULL), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat.url), body, nouser);
    h_assert_problem(&r, 401);
    h_resp_release(&r);

    /* Nothing was created by any refused request. */
    assert_int_equal(count(h_fmt("sku=%s", sku)), before);
    free(body);
}

static void test_not_found(void **state)
{
    MOAT_UNUSED(state);
    json_t *p = create_simple(unique("404"));
    const char *id = json_string_value(json_object_get(p, "id"));
    const char *paths[] = {
        "/nope",                                     /* no gateway route */
        h_fmt("/products/%s/extra", id),             /* no catalog route */
        "/products/prod_7ZZZZZZZZZZZZZZZZZZZZZZZZZ", /* no such product */
        "/products/not-an-id",                       /* not even an id */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(paths); i++) {
        struct h_resp r;
        h_get(&r, gw_url(paths[i]));
        h_assert_problem(&r, 404);
        h_resp_release(&r);
    }
    struct h_resp r;
    /* No such version (v2 exists: docs/api.md "Versions"). */
    h_get(&r, h_fmt("%s/v3/products", F.cat.url));
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    assert_intact(p);
    json_decref(p);
}

static void test_sandbox(void **state)
{
    MOAT_UNUSED(state);
#ifndef MOAT_TEST_HOOKS
    print_message("skipping: built without MOAT_TEST_HOOKS, so there is no "
                  "/_test/open to probe the sandbox with\n");
    skip();
#else
    if (moat_sandbox_abi() == 0) {
        print_message("skipping: this kernel has no Landlock, so catalog "
                      "cannot confine itself\n");
        skip();
    }
    char *inside = moat_xasprintf("%s/probe.txt", F.cat_data);
    h_write_file(inside, "mine");
    char *other = h_tmpdir_new("outside");
    char *outside = moat_xasprintf("%s/secret.txt", other);
    h_write_file(outside, "not catalog's");

    const char *paths[] = {inside, outside};
    for (size_t i = 0; i < 2; i++) {
        char *esc = curl_easy_escape(NULL, paths[i], 0);
        struct h_resp r;
        h_get(&r, h_fmt("%s/_test/open?path=%s", F.cat.url, esc));
        curl_free(esc);
        h_assert_status(&r, 200);
        json_t *j = h_resp_json(&r);
        assert_non_null(j);
        if (i == 0) {
            assert_true(json_is_true(json_object_get(j, "ok")));
        } else {
            assert_true(json_is_false(json_object_get(j, "ok")));
            assert_int_equal(json_integer_value(json_object_get(j, "errno")),
                             EACCES);
        }
        json_decref(j);
        h_resp_release(&r);
    }
    h_rmtree(other);
    free(other);
    free(outside);
    free(inside);
#endif
}

static void test_data_dir_permissions(void **state)
{
    MOAT_UNUSED(state);
    struct stat st;
    assert_int_equal(stat(F.cat_data, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0700);
    const char *files[] = {"catalog.db", "catalog.db-wal", "catalog.db-shm"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(files); i++) {
        const char *path = h_fmt("%s/%s", F.cat_data, files[i]);
        if (stat(path, &st) != 0) {
            /* The database itself must exist (on SQLite: on PostgreSQL
             * the data directory holds no database file). */
            assert_true(i != 0 || h_pg_engine());
            continue;
        }
        if ((st.st_mode & 07777) != 0600)
            fail_msg("%s has mode %o, want 600", path,
                     (unsigned)(st.st_mode & 07777));
    }
}

/*
 * On PostgreSQL only: the server is killed (immediate shutdown) and
 * restarted under a running catalog. Meanwhile requests fail with 503 and
 * readiness is withdrawn; afterwards the same process serves again, its
 * data intact, without a restart of its own.
 */
static long catalog_readyz(void)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/readyz", F.cat.url));
    long status = r.status;
    h_resp_release(&r);
    return status;
}

static void test_database_restart(void **state)
{
    MOAT_UNUSED(state);
    if (!h_pg_engine())
        skip();
    json_t *p = create_simple("pgrestart");
    struct h_resp r;

    h_pg_down();
    h_get(&r, h_fmt("%s/v1/products/%s", F.cat.url, h_jstr(p, "id")));
    h_assert_status(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    assert_int_equal(catalog_readyz(), 503);

    h_pg_up();
    H_WAIT_UNTIL(catalog_readyz() == 200, H_WAIT_MS,
                 "catalog to be ready again");
    json_t *got = fetch(p);
    assert_json_equal(p, got);
    json_decref(got);
    json_decref(create_simple("pgrestart"));
    assert_true(h_service_alive(&F.cat));
    json_decref(p);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_get_direct),
        cmocka_unit_test(test_create_get_gateway),
        cmocka_unit_test(test_get_conditional),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_list_filters),
        cmocka_unit_test(test_put),
        cmocka_unit_test(test_patch),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_duplicate_sku),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_content_type),
        cmocka_unit_test(test_body_too_large),
        cmocka_unit_test(test_header_too_large),
        cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_authorisation),
        cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_data_dir_permissions),
        cmocka_unit_test(test_database_restart),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("catalog", tests, group_setup,
                                       group_teardown);
}
