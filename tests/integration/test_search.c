/*
 * test_search.c - the search service end to end: moat-catalog, moat-search
 * and moat-gateway as real processes on free loopback ports. Products are
 * written to catalog directly (an admin's service token); search builds
 * its index only from catalog's event feed, so every assertion about
 * search first waits (with a deadline) for the change to arrive.
 *
 * Covered: the index follows creates, updates, price changes and deletes;
 * bm25 ranking and prefix matching; filters, pages and 400 problems; the
 * public route through the gateway; both event data schemas (catalog
 * restarted with MOAT_CATALOG_EVENT_SCHEMA=1, then back to 2); a poison
 * event dead-lettered after 3 attempts, blocking only its product, then
 * redriven in order; a consumer that was down catching up; a re-delivered
 * stretch of the feed changing nothing; replay and replay --verify.
 *
 * The processes are shared by the tests of the group (started in the
 * group setup, stopped in the teardown, which requires exit status 0).
 * Each test works on products named with a word of its own, so tests do
 * not depend on each other's data. Run one test alone:
 *     tests/it_test_search test_poison
 */
#include "moat/common.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "moat/auth.h"
#include "moat/buf.h"

#define WAIT_MS 15000 /* for a change to reach the index, scaled */

static struct {
    char *tmp;
    char *cat_data, *search_data;
    char catalog_url_env[96];
    char routes_env[320];
    struct h_service cat, search, gw;
} F;

/* ---- processes ---- */

/* SIGTERM svc (it must exit 0), then start it again on its port. */
static void restart(struct h_service *svc, const char *const *extra_env)
{
    assert_int_equal(h_service_stop(svc), 0);
    assert_int_equal(h_service_restart(svc, extra_env), 0);
}

/* search's environment: where catalog's feed is. */
static const char *const *search_env(void)
{
    static const char *env[2];
    env[0] = F.catalog_url_env;
    return env;
}

/* ---- HTTP ---- */

static void req(struct h_resp *r, const char *method, const char *url,
                const char *const *headers, const char *body)
{
    if (body)
        h_send_json(r, method, url, body, headers);
    else
        h_http(r, method, url, headers, NULL, 0);
}

/* GET url, assert 200 and return the JSON body. */
static json_t *get_json(const char *url)
{
    struct h_resp r;
    req(&r, "GET", url, NULL, NULL);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    return j;
}

static json_t *post_json(const char *url, long status)
{
    struct h_resp r;
    req(&r, "POST", url, NULL, NULL);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    return j;
}

/* A word of its own for a test: "w" + 8 hex digits. */
static void unique_word(char out[16])
{
    unsigned char rnd[4];
    char hex[9];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(hex, rnd, sizeof(rnd));
    snprintf(out, 16, "w%s", hex);
}

/* ---- catalog writes ---- */

static json_t *cat_create(const char *sku, const char *name, const char *desc,
                          long amount, const char *currency)
{
    json_t *doc =
        json_pack("{s:s, s:s, s:s, s:{s:i, s:s}, s:{s:s}}", "sku", sku, "name",
                  name, "description", desc, "price", "amount", (int)amount,
                  "currency", currency, "attributes", "color", "black");
    char *body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    struct h_resp r;
    req(&r, "POST", h_fmt("%s/v1/products", F.cat.url), NULL, body);
    free(body);
    h_assert_status(&r, 201);
    json_t *p = h_resp_json(&r);
    h_resp_release(&r);
    assert_non_null(p);
    return p;
}

/* Merge-patch p (replaced by the new state) with patch. */
static void cat_patch(json_t **p, const char *patch)
{
    char if_match[48];
    snprintf(if_match, sizeof(if_match), "If-Match: \"v%lld\"",
             (long long)h_jint(*p, "version"));
    const char *headers[] = {if_match, NULL};
    struct h_resp r;
    req(&r, "PATCH", h_fmt("%s/v1/products/%s", F.cat.url, h_jstr(*p, "id")),
        headers, patch);
    h_assert_status(&r, 200);
    json_decref(*p);
    *p = h_resp_json(&r);
    assert_non_null(*p);
    h_resp_release(&r);
}

static void cat_delete(const json_t *p)
{
    struct h_resp r;
    req(&r, "DELETE", h_fmt("%s/v1/products/%s", F.cat.url, h_jstr(p, "id")),
        NULL, NULL);
    h_assert_status(&r, 204);
    h_resp_release(&r);
}

/* ---- search reads ---- */

/* GET /v1/search?<query> (200 asserted). */
static json_t *search(const char *query)
{
    return get_json(h_fmt("%s/v1/search?%s", F.search.url, query));
}

static size_t search_count(const char *query)
{
    json_t *res = search(query);
    size_t n = json_array_size(json_object_get(res, "items"));
    json_decref(res);
    return n;
}

/* The indexed document of id, or NULL when search answers 404. */
static json_t *indexed(const char *id)
{
    struct h_resp r;
    req(&r, "GET", h_fmt("%s/v1/search/products/%s", F.search.url, id), NULL,
        NULL);
    json_t *doc = NULL;
    if (r.status == 200)
        doc = h_resp_json(&r);
    else
        h_assert_problem(&r, 404);
    h_resp_release(&r);
    return doc;
}

/* Wait until id is indexed with member key equal to the string want (or
 * the integer version when want is NULL); returns the document. */
/* Product id is indexed with key = want (or, want NULL, at version);
 * *doc: the document last read, replaced. */
static bool is_indexed(json_t **doc, const char *id, const char *key,
                       const char *want, json_int_t version)
{
    json_decref(*doc);
    *doc = indexed(id);
    return *doc && (want ? strcmp(h_jstr(*doc, key), want) == 0
                         : h_jint(*doc, "version") == version);
}

static json_t *wait_indexed(const char *id, const char *key, const char *want,
                            json_int_t version)
{
    json_t *doc = NULL;
    H_WAIT_UNTIL(is_indexed(&doc, id, key, want, version), WAIT_MS,
                 "product %s indexed with %s = %s", id, want ? key : "version",
                 want ? want : h_fmt("%lld", (long long)version));
    return doc;
}

/* True when product id is not indexed. */
static bool not_indexed(const char *id)
{
    json_t *doc = indexed(id);
    json_decref(doc);
    return doc == NULL;
}

static void wait_gone(const char *id)
{
    H_WAIT_UNTIL(not_indexed(id), WAIT_MS, "product %s to leave the index", id);
}

static int64_t catalog_head(void)
{
    return (int64_t)h_metric(F.cat.url, "moat_outbox_head_seq");
}

/* search's consumer status for source catalog (new reference). */
static json_t *consumer_source(void)
{
    json_t *st = get_json(h_fmt("%s/v1/admin/consumer", F.search.url));
    json_t *src =
        json_incref(json_array_get(json_object_get(st, "sources"), 0));
    json_decref(st);
    assert_non_null(src);
    assert_string_equal(h_jstr(src, "source"), "catalog");
    return src;
}

/* Wait until search's cursor is catalog's head and the lag gauge is 0. */
/* Search's cursor is at catalog's head (*head: the head last read). */
static bool caught_up(int64_t *head)
{
    *head = catalog_head();
    json_t *src = consumer_source();
    bool done = h_jint(src, "cursor") == *head &&
                h_jint(src, "lag_events") == 0 &&
                h_metric(F.search.url,
                         "moat_consumer_lag_events{source=\"catalog\"}") == 0;
    json_decref(src);
    return done;
}

static void wait_caught_up(void)
{
    int64_t head = 0;
    H_WAIT_UNTIL(caught_up(&head), WAIT_MS,
                 "search to catch up with catalog's head %lld",
                 (long long)head);
}

/* Every indexed document, by id, without the time it was applied. */
static json_t *snapshot(void)
{
    json_t *all = json_object();
    char *cursor = NULL;
    for (;;) {
        json_t *page =
            search(cursor ? h_fmt("limit=100&cursor=%s", cursor) : "limit=100");
        free(cursor);
        cursor = NULL;
        size_t i;
        json_t *item;
        json_array_foreach(json_object_get(page, "items"), i, item)
        {
            json_t *doc = indexed(h_jstr(item, "id"));
            assert_non_null(doc);
            json_object_del(json_object_get(doc, "indexed"), "applied_at");
            json_object_set_new(all, h_jstr(item, "id"), doc);
        }
        json_t *next = json_object_get(page, "next_cursor");
        if (json_is_string(next))
            cursor = moat_xstrdup(json_string_value(next));
        json_decref(page);
        if (!cursor)
            return all;
    }
}

static void assert_json_equal(const json_t *want, const json_t *got)
{
    if (!json_equal(want, got)) {
        char *a = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
        char *b = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        print_error("expected %.2000s\n     got %.2000s\n", a, b);
        free(a);
        free(b);
        fail();
    }
}

static void assert_verify_identical(void)
{
    json_t *v =
        post_json(h_fmt("%s/v1/admin/replay?verify=1", F.search.url), 200);
    if (!json_is_true(json_object_get(v, "identical"))) {
        char *t = json_dumps(v, JSON_INDENT(2));
        print_error("replay verification found differences: %s\n", t);
        free(t);
        fail();
    }
    assert_int_equal(json_array_size(json_object_get(v, "differences")), 0);
    json_decref(v);
}

/*
 * The poison rule's cure lives in search's memory (a fixed build, as far as
 * the test is concerned): a restarted search needs it again, or replays
 * would park the poison products of test_poison once more.
 */
static void heal(void)
{
    json_decref(post_json(h_fmt("%s/_test/heal", F.search.url), 200));
}

static void applications(json_int_t *events, json_int_t *max)
{
    json_t *a = get_json(h_fmt("%s/_test/applications", F.search.url));
    *events = h_jint(a, "events");
    *max = h_jint(a, "max_applications");
    json_decref(a);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("search");
    F.cat_data = moat_xasprintf("%s/catalog-data", F.tmp);
    F.search_data = moat_xasprintf("%s/search-data", F.tmp);
    if (h_service_start(&F.cat, "catalog", F.tmp, F.cat_data, NULL) != 0)
        return -1;
    snprintf(F.catalog_url_env, sizeof(F.catalog_url_env),
             "MOAT_SEARCH_CATALOG_URL=%s", F.cat.url);
    if (h_service_start(&F.search, "search", F.tmp, F.search_data,
                        search_env()) != 0)
        return -1;
    snprintf(F.routes_env, sizeof(F.routes_env),
             "MOAT_GATEWAY_ROUTES=/api/v1/products=catalog@%s/v1/products,"
             "/api/v1/search=search@%s/v1/search",
             F.cat.url, F.search.url);
    const char *gw_env[] = {
        F.routes_env,
        "MOAT_GATEWAY_PUBLIC=GET /api/v1/products,GET /api/v1/search", NULL};
    if (h_service_start(&F.gw, "gateway", F.tmp, NULL, gw_env) != 0)
        return -1;
    /* Admin on catalog, plain service on search; kept fresh by the
     * harness for as long as the suite runs. */
    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    h_auto_service_token(F.search.url, "search", NULL, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int gw_rc = h_service_stop(&F.gw);
    int search_rc = h_service_stop(&F.search);
    int cat_rc = h_service_stop(&F.cat);
    if (gw_rc || search_rc || cat_rc)
        print_error("services must exit 0 on SIGTERM: gateway %d, search %d, "
                    "catalog %d (see the logs above)\n",
                    gw_rc, search_rc, cat_rc);
    h_service_release(&F.gw);
    h_service_release(&F.search);
    h_service_release(&F.cat);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.cat_data);
    free(F.search_data);
    return gw_rc == 0 && search_rc == 0 && cat_rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_index_follows_catalog(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    json_t *p = cat_create(h_fmt("KET-%s", w), h_fmt("Kettle %s", w),
                           "Brushed steel, 1.7 litres", 2599, "EUR");
    char id[64]; /* a copy: cat_patch replaces p */
    snprintf(id, sizeof(id), "%s", h_jstr(p, "id"));

    json_t *doc = wait_indexed(id, NULL, NULL, 1);
    assert_string_equal(h_jstr(doc, "sku"), h_jstr(p, "sku"));
    assert_string_equal(h_jstr(doc, "name"), h_jstr(p, "name"));
    assert_json_equal(json_object_get(p, "price"),
                      json_object_get(doc, "price"));
    assert_int_equal(h_jint(json_object_get(doc, "indexed"), "version"), 1);
    json_decref(doc);

    json_t *res = search(h_fmt("q=%s", w));
    json_t *items = json_object_get(res, "items");
    assert_int_equal(json_array_size(items), 1);
    json_t *hit = json_array_get(items, 0);
    assert_string_equal(h_jstr(hit, "id"), id);
    assert_string_equal(h_jstr(hit, "sku"), h_jstr(p, "sku"));
    assert_string_equal(h_jstr(hit, "name"), h_jstr(p, "name"));
    assert_json_equal(json_object_get(p, "price"),
                      json_object_get(hit, "price"));
    assert_true(json_real_value(json_object_get(hit, "score")) > 0);
    assert_true(json_is_null(json_object_get(res, "next_cursor")));
    json_decref(res);

    /* Words of the description and the attributes are searchable. */
    assert_int_equal(search_count(h_fmt("q=brushed+%s", w)), 1);
    assert_int_equal(search_count(h_fmt("q=black+%s", w)), 1);

    /* A rename: the old name no longer matches, the new one does. */
    cat_patch(&p, h_fmt("{\"name\": \"Teapot %s\"}", w));
    json_decref(wait_indexed(id, NULL, NULL, 2));
    assert_int_equal(search_count(h_fmt("q=kettle+%s", w)), 0);
    assert_int_equal(search_count(h_fmt("q=teapot+%s", w)), 1);

    /* A price change (ProductUpdated and PriceChanged) shows in the hit. */
    cat_patch(&p, "{\"price\": {\"amount\": 1999, \"currency\": \"EUR\"}}");
    json_decref(wait_indexed(id, NULL, NULL, 3));
    res = search(h_fmt("q=%s", w));
    hit = json_array_get(json_object_get(res, "items"), 0);
    assert_int_equal(h_jint(json_object_get(hit, "price"), "amount"), 1999);
    json_decref(res);

    cat_delete(p);
    wait_gone(id);
    assert_int_equal(search_count(h_fmt("q=%s", w)), 0);
    json_decref(p);
}

static void test_ranking_and_prefix(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    json_t *mug =
        cat_create(h_fmt("MUG-%s", w), h_fmt("Blue ceramic mug %s", w),
                   "For coffee", 1250, "EUR");
    json_t *plate = cat_create(h_fmt("PLT-%s", w), h_fmt("Plate %s", w),
                               "Matches the mug of the same set", 900, "EUR");
    json_t *tea = cat_create(h_fmt("TEA-%s", w), h_fmt("Mugwort tea %s", w),
                             "Herbal", 450, "EUR");
    json_t *creme = cat_create(h_fmt("CRB-%s", w), h_fmt("Crème brûlée %s", w),
                               "Dessert", 700, "EUR");
    json_t *all[] = {mug, plate, tea, creme};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++)
        json_decref(wait_indexed(h_jstr(all[i], "id"), NULL, NULL, 1));

    /* "mug" is a prefix: mug and mugwort in names, mug in a description.
     * A hit in the name outranks one in the description. */
    json_t *res = search(h_fmt("q=mug+%s", w));
    json_t *items = json_object_get(res, "items");
    assert_int_equal(json_array_size(items), 3);
    assert_string_equal(h_jstr(json_array_get(items, 2), "id"),
                        h_jstr(plate, "id"));
    for (size_t i = 1; i < 3; i++)
        assert_true(json_real_value(json_object_get(
                        json_array_get(items, i - 1), "score")) >=
                    json_real_value(
                        json_object_get(json_array_get(items, i), "score")));
    json_decref(res);

    /* Prefixes, several words (all must match), case, diacritics. */
    res = search(h_fmt("q=cera+%s", w));
    assert_int_equal(json_array_size(json_object_get(res, "items")), 1);
    assert_string_equal(
        h_jstr(json_array_get(json_object_get(res, "items"), 0), "id"),
        h_jstr(mug, "id"));
    json_decref(res);
    assert_int_equal(search_count(h_fmt("q=mugw+%s", w)), 1);
    assert_int_equal(search_count(h_fmt("q=blue+mug+%s", w)), 1);
    assert_int_equal(search_count(h_fmt("q=MUG+%s", w)), 3);
    assert_int_equal(search_count(h_fmt("q=creme+brulee+%s", w)), 1);
    assert_int_equal(search_count(h_fmt("q=%s+nosuchword", w)), 0);
    /* The SKU is indexed too: "MUG-<w>" is the words "mug" and w. */
    assert_int_equal(search_count(h_fmt("q=MUG-%s", w)), 3);

    /* Nothing typed is FTS5 syntax: no query can fail or reach another
     * column. Each is answered 200. */
    static const char *const hostile[] = {
        "%22",           "mug%22+OR+%22x", "mug+AND",
        "name%3Amug",    "NEAR(mug+w)",    "*",
        "%5Emug",        "mug)",           "(",
        "-mug",          "mug+NOT",        "%27%3B+DROP+TABLE",
        "%7B+sku+%7D",   "mug*+OR+*",      "a%2Bb",
        "%C3%A9t%C3%A9",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(hostile); i++) {
        json_t *r = search(h_fmt("q=%s", hostile[i]));
        assert_true(json_is_array(json_object_get(r, "items")));
        json_decref(r);
    }
    /* Only separators: no word, nothing matches. A blank q is no q. */
    assert_int_equal(search_count("q=--%22%22"), 0);
    assert_int_equal(search_count("q=&limit=3"), 3);
    assert_int_equal(search_count("q=+&limit=3"), 3);

    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++)
        json_decref(all[i]);
}

/* Follow next_cursor over every page of query; returns all items. */
static json_t *all_pages(const char *query, size_t limit)
{
    json_t *out = json_array();
    char *cursor = NULL;
    for (int pages = 0; pages < 1000; pages++) {
        json_t *page = search(
            cursor ? h_fmt("%s&limit=%zu&cursor=%s", query, limit, cursor)
                   : h_fmt("%s&limit=%zu", query, limit));
        free(cursor);
        cursor = NULL;
        json_t *items = json_object_get(page, "items");
        assert_true(json_array_size(items) <= limit);
        json_array_extend(out, items);
        json_t *next = json_object_get(page, "next_cursor");
        if (json_is_string(next))
            cursor = moat_xstrdup(json_string_value(next));
        json_decref(page);
        if (!cursor)
            return out;
    }
    fail_msg("pages of %s did not end", query);
    return NULL;
}

static void assert_unique_ids(json_t *items, size_t want)
{
    json_t *seen = json_object();
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item)
    {
        assert_null(json_object_get(seen, h_jstr(item, "id")));
        json_object_set_new(seen, h_jstr(item, "id"), json_true());
    }
    assert_int_equal(json_object_size(seen), want);
    json_decref(seen);
}

static void expect_400(const char *query, const char *param)
{
    struct h_resp r;
    req(&r, "GET", h_fmt("%s/v1/search?%s", F.search.url, query), NULL, NULL);
    h_assert_problem(&r, 400);
    h_assert_problem_error(&r, "parameter", param);
    h_resp_release(&r);
}

static void test_filters_and_pages(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    json_t *made[7];
    for (int i = 0; i < 7; i++) {
        made[i] = cat_create(h_fmt("FLT-%s-%d", w, i),
                             h_fmt("Widget %s %c", w, 'a' + i), "A widget",
                             100 * (i + 1), i < 5 ? "EUR" : "USD");
    }
    for (int i = 0; i < 7; i++)
        json_decref(wait_indexed(h_jstr(made[i], "id"), NULL, NULL, 1));

    assert_int_equal(search_count(h_fmt("q=%s", w)), 7);
    assert_int_equal(search_count(h_fmt("q=%s&currency=USD", w)), 2);
    assert_int_equal(search_count(h_fmt("q=%s&min_price=300&max_price=500", w)),
                     3);
    assert_int_equal(search_count(h_fmt("q=%s&currency=EUR&min_price=300", w)),
                     3);
    assert_int_equal(search_count(h_fmt("q=%s&max_price=99", w)), 0);

    /* Ranked pages: every hit exactly once. */
    json_t *items = all_pages(h_fmt("q=%s", w), 3);
    assert_unique_ids(items, 7);
    json_decref(items);

    /* Without q: everything by name, then id; pages of 2 of the USD
     * products from 600 up (this test's two, plus any other test's). */
    items = all_pages("currency=USD&min_price=600&max_price=700", 2);
    size_t i;
    json_t *item;
    const char *prev = "";
    size_t ours = 0;
    json_array_foreach(items, i, item)
    {
        assert_true(strcmp(prev, h_jstr(item, "name")) <= 0);
        prev = h_jstr(item, "name");
        assert_true(json_is_null(json_object_get(item, "score")));
        if (strstr(h_jstr(item, "name"), w))
            ours++;
    }
    assert_int_equal(ours, 2);
    json_decref(items);

    /* Invalid parameters: a 400 problem naming each. */
    expect_400("limit=0", "limit");
    expect_400("limit=101", "limit");
    expect_400("limit=x", "limit");
    expect_400("currency=eur", "currency");
    expect_400("min_price=-1", "min_price");
    expect_400("max_price=1.5", "max_price");
    expect_400("min_price=500&max_price=100", "min_price");
    expect_400("cursor=zz", "cursor");
    expect_400("cursor=", "cursor");
    expect_400("unknown=1", "unknown");
    expect_400("q=a&q=b", "q");
    expect_400(h_fmt("q=%0201d", 0), "q");
    expect_400("q=a+b+c+d+e+f+g+h+i+j+k+l+m+n+o+p+q", "q");
    expect_400("q=%FF", "q");
    /* A ranked cursor is not one for a listing by name. */
    json_t *page = search(h_fmt("q=%s&limit=1", w));
    const char *cursor = h_jstr(page, "next_cursor");
    assert_true(cursor[0] != '\0');
    expect_400(h_fmt("cursor=%s", cursor), "cursor");
    json_decref(page);

    for (int k = 0; k < 7; k++)
        json_decref(made[k]);
}

static void test_gateway_public(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    json_t *p = cat_create(h_fmt("GW-%s", w), h_fmt("Lamp %s", w), "Desk lamp",
                           3000, "EUR");
    json_decref(wait_indexed(h_jstr(p, "id"), NULL, NULL, 1));
    /* No end-user token: search is public for GET. */
    struct h_resp r;
    h_get(&r, h_fmt("%s/api/v1/search?q=lamp+%s", F.gw.url, w));
    h_assert_status(&r, 200);
    json_t *res = h_resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(res, "items")), 1);
    json_decref(res);
    h_resp_release(&r);
    h_get(&r, h_fmt("%s/api/v1/search/products/%s", F.gw.url, h_jstr(p, "id")));
    h_assert_status(&r, 200);
    h_resp_release(&r);
    /* Admin routes are not routed publicly. */
    h_get(&r, h_fmt("%s/api/v1/admin/consumer", F.gw.url));
    assert_true(r.status == 404 || r.status == 401);
    h_resp_release(&r);
    /* Directly, search answers only service tokens. */
    const char *none[] = {"Moat-Service-Token:", NULL};
    h_http(&r, "GET", h_fmt("%s/v1/search?q=x", F.search.url), none, NULL, 0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    json_decref(p);
}

static void test_schema_v1_and_v2(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);

    /* A catalog emitting the older, flat data schema (a rolling upgrade). */
    const char *v1_env[] = {"MOAT_CATALOG_EVENT_SCHEMA=1", NULL};
    restart(&F.cat, v1_env);
    json_t *p = cat_create(h_fmt("V1-%s", w), h_fmt("Radio %s", w), "Portable",
                           4500, "USD");
    char id[64]; /* a copy: cat_patch replaces p */
    snprintf(id, sizeof(id), "%s", h_jstr(p, "id"));
    cat_patch(&p, h_fmt("{\"name\": \"Radio mk2 %s\", \"price\": "
                        "{\"amount\": 4900, \"currency\": \"USD\"}}",
                        w));
    json_t *doc = wait_indexed(id, "name", h_fmt("Radio mk2 %s", w), 0);
    /* Upcast: the nested price, never the flat members. */
    json_t *price = json_object_get(doc, "price");
    assert_int_equal(h_jint(price, "amount"), 4900);
    assert_string_equal(h_jstr(price, "currency"), "USD");
    assert_null(json_object_get(doc, "price_amount"));
    assert_null(json_object_get(doc, "currency"));
    assert_true(json_is_null(
        json_object_get(json_object_get(doc, "indexed"), "version")));
    json_decref(doc);
    assert_int_equal(search_count(h_fmt("q=radio+%s&currency=USD", w)), 1);

    /* Back to the current schema: the same product moves on. */
    restart(&F.cat, NULL);
    cat_patch(&p, h_fmt("{\"name\": \"Radio mk3 %s\"}", w));
    doc = wait_indexed(id, NULL, NULL, 3);
    assert_string_equal(h_jstr(doc, "name"), h_fmt("Radio mk3 %s", w));
    assert_int_equal(h_jint(json_object_get(doc, "price"), "amount"), 4900);
    json_decref(doc);

    /* Rebuilt from the mixed feed, the view is the same. */
    wait_caught_up();
    assert_verify_identical();
    json_decref(p);
}

/* Dead letters of subject (new reference to the list). */
static json_t *dead_letters(const char *subject)
{
    json_t *all = get_json(
        h_fmt("%s/v1/admin/dead-letters?subject=%s", F.search.url, subject));
    json_t *list = json_incref(json_object_get(all, "dead_letters"));
    json_decref(all);
    return list;
}

/* Exactly n dead letters for subject (*list: the last read, replaced). */
static bool has_dead_letters(json_t **list, const char *subject, size_t n)
{
    json_decref(*list);
    *list = dead_letters(subject);
    return json_array_size(*list) == n;
}

static json_t *wait_dead_letters(const char *subject, size_t n)
{
    json_t *list = NULL;
    H_WAIT_UNTIL(has_dead_letters(&list, subject, n), WAIT_MS,
                 "%zu dead letters for %s", n, subject);
    return list;
}

static void test_poison(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    json_t *bad = cat_create(h_fmt("POISON-%s", w), h_fmt("Bad %s", w),
                             "The handler fails on it", 100, "EUR");
    char bad_id[64]; /* a copy: cat_patch replaces bad */
    snprintf(bad_id, sizeof(bad_id), "%s", h_jstr(bad, "id"));
    json_t *good = cat_create(h_fmt("GOOD-%s", w), h_fmt("Good %s", w), "Fine",
                              100, "EUR");

    /* Parked after MOAT_CONSUMER_MAX_ATTEMPTS (3) attempts ... */
    json_t *dl = wait_dead_letters(bad_id, 1);
    json_t *first = json_array_get(dl, 0);
    assert_string_equal(h_jstr(first, "state"), "failed");
    assert_string_equal(h_jstr(first, "type"), "ProductCreated");
    assert_int_equal(h_jint(first, "attempts"), 3);
    assert_non_null(strstr(h_jstr(first, "error"), "poison"));
    json_decref(dl);
    /* ... while the other product flows on. */
    json_decref(wait_indexed(h_jstr(good, "id"), NULL, NULL, 1));

    /* A later change of the poisoned product is blocked behind it. */
    cat_patch(&bad, h_fmt("{\"name\": \"Bad renamed %s\"}", w));
    dl = wait_dead_letters(bad_id, 2);
    assert_string_equal(h_jstr(json_array_get(dl, 1), "state"), "blocked");
    json_int_t blocked_seq = h_jint(json_array_get(dl, 1), "seq");
    json_decref(dl);
    cat_patch(&good, h_fmt("{\"name\": \"Good renamed %s\"}", w));
    json_decref(wait_indexed(h_jstr(good, "id"), NULL, NULL, 2));
    json_t *missing = indexed(bad_id);
    assert_null(missing);
    json_t *src = consumer_source();
    json_t *counts = json_object_get(src, "dead_letters");
    assert_true(h_jint(counts, "failed") >= 1);
    assert_true(h_jint(counts, "blocked") >= 1);
    json_decref(src);

    /* Redriven before the fix: fails again, nothing lost. */
    json_t *res = post_json(
        h_fmt("%s/v1/admin/dead-letters/redrive?source=catalog&subject=%s",
              F.search.url, bad_id),
        200);
    assert_int_equal(h_jint(res, "applied"), 0);
    assert_int_equal(json_array_size(json_object_get(res, "failed")), 1);
    json_decref(res);
    dl = dead_letters(bad_id);
    assert_int_equal(json_array_size(dl), 2);
    json_decref(dl);

    /* "Deploy the fix", redrive: both applied, in order. */
    heal();
    res = post_json(
        h_fmt("%s/v1/admin/dead-letters/redrive?source=catalog&subject=%s",
              F.search.url, bad_id),
        200);
    assert_int_equal(h_jint(res, "applied"), 2);
    assert_int_equal(json_array_size(json_object_get(res, "failed")), 0);
    json_decref(res);
    json_t *doc = indexed(bad_id);
    assert_non_null(doc);
    assert_string_equal(h_jstr(doc, "name"), h_fmt("Bad renamed %s", w));
    assert_int_equal(h_jint(json_object_get(doc, "indexed"), "seq"),
                     blocked_seq);
    json_decref(doc);
    dl = dead_letters(bad_id);
    assert_int_equal(json_array_size(dl), 0);
    json_decref(dl);
    json_decref(bad);
    json_decref(good);
}

static void test_catch_up_after_downtime(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    wait_caught_up();
    assert_int_equal(h_service_stop(&F.search), 0);

    /* 50 changes while search is down: 20 creates, 20 renames, 10
     * deletes. */
    json_t *made[20];
    for (int i = 0; i < 20; i++)
        made[i] = cat_create(h_fmt("UP-%s-%d", w, i), h_fmt("Down %s %d", w, i),
                             "Made while search was stopped", 100 + i, "EUR");
    for (int i = 0; i < 20; i++)
        cat_patch(&made[i], h_fmt("{\"name\": \"Back %s %d\"}", w, i));
    for (int i = 0; i < 10; i++)
        cat_delete(made[i]);

    assert_int_equal(h_service_restart(&F.search, search_env()), 0);
    heal();
    wait_caught_up();
    assert_int_equal(
        h_metric(F.search.url, "moat_consumer_lag_events{source=\"catalog\"}"),
        0);
    assert_int_equal(search_count(h_fmt("q=%s&limit=100", w)), 10);
    assert_int_equal(search_count(h_fmt("q=down+%s", w)), 0);
    for (int i = 0; i < 20; i++) {
        json_t *doc = indexed(h_jstr(made[i], "id"));
        if (i < 10) {
            assert_null(doc);
        } else {
            assert_non_null(doc);
            assert_string_equal(h_jstr(doc, "name"), h_fmt("Back %s %d", w, i));
            json_decref(doc);
        }
        json_decref(made[i]);
    }
}

/* Move search's stored cursor back to seq (search must be stopped). */
static void rewind_cursor(int64_t seq)
{
    sqlite3 *db = NULL;
    char *path = moat_xasprintf("%s/search.db", F.search_data);
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL),
                     SQLITE_OK);
    char *sql = moat_xasprintf("UPDATE moat_cursors SET after_seq = %lld "
                               "WHERE source = 'catalog'",
                               (long long)seq);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_close(db);
    free(sql);
    free(path);
}

static void test_redelivery_changes_nothing(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    /* A stretch of the feed with creates, updates and deletes. */
    json_t *made[10];
    for (int i = 0; i < 10; i++)
        made[i] = cat_create(h_fmt("DUP-%s-%d", w, i), h_fmt("Dup %s %d", w, i),
                             "Delivered twice", 500 + i, "EUR");
    for (int i = 0; i < 10; i += 2)
        cat_patch(&made[i], "{\"price\": {\"amount\": 42, \"currency\": "
                            "\"EUR\"}}");
    for (int i = 0; i < 10; i += 3)
        cat_delete(made[i]);
    wait_caught_up();
    json_t *before = snapshot();
    int64_t head = catalog_head();
    json_int_t events0, max0;
    applications(&events0, &max0);

    /* As if the cursor had been lost: the last 30 events come again. */
    assert_int_equal(h_service_stop(&F.search), 0);
    rewind_cursor(head > 30 ? head - 30 : 0);
    assert_int_equal(h_service_restart(&F.search, search_env()), 0);
    heal();
    wait_caught_up();

    json_t *after = snapshot();
    assert_json_equal(before, after);
    json_int_t events1, max1;
    applications(&events1, &max1);
    assert_int_equal(events1, events0); /* the same events... */
    assert_int_equal(max1, 2);          /* ...handled again, no effect */
    json_decref(before);
    json_decref(after);
    for (int i = 0; i < 10; i++)
        json_decref(made[i]);
}

static void test_replay(void **state)
{
    MOAT_UNUSED(state);
    char w[16];
    unique_word(w);
    json_t *p = cat_create(h_fmt("RPL-%s", w), h_fmt("Replayed %s", w),
                           "Rebuilt from the feed", 800, "EUR");
    json_decref(wait_indexed(h_jstr(p, "id"), NULL, NULL, 1));
    heal();
    wait_caught_up();
    assert_verify_identical();
    json_t *before = snapshot();

    /* Rebuild the live view from sequence 0. */
    json_t *res = post_json(h_fmt("%s/v1/admin/replay", F.search.url), 202);
    json_decref(res);
    wait_caught_up();
    json_t *after = snapshot();
    assert_json_equal(before, after);
    /* Replayed into an empty view: every event exactly once again. */
    json_int_t events, max;
    applications(&events, &max);
    assert_int_equal(max, 1);
    assert_int_equal(events, catalog_head());
    assert_verify_identical();
    json_decref(before);
    json_decref(after);
    json_decref(p);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_follows_catalog),
        cmocka_unit_test(test_ranking_and_prefix),
        cmocka_unit_test(test_filters_and_pages),
        cmocka_unit_test(test_gateway_public),
        cmocka_unit_test(test_schema_v1_and_v2),
        cmocka_unit_test(test_poison),
        cmocka_unit_test(test_catch_up_after_downtime),
        cmocka_unit_test(test_redelivery_changes_nothing),
        cmocka_unit_test(test_replay),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("search", tests, group_setup,
                                       group_teardown);
}
