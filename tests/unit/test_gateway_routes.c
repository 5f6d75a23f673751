/*
 * Unit tests for services/gateway/routes.c: MOAT_GATEWAY_ROUTES and
 * MOAT_GATEWAY_PUBLIC parsing, upstream URLs, Location rewriting, public
 * allow-list matching and Bearer header parsing. routes.c is pure (no I/O), and
 * the unit tests link libmoat only, so the file is compiled into this test.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../services/gateway/routes.c"

#define SPEC                                                                   \
    " /api/v1/products = catalog @ http://127.0.0.1:8081/v1/products/ ,"       \
    "/api/v1/orders=orders@https://Orders.internal/v1/orders,"                 \
    "/root=a-very-long-service-name-of-32c@http://[::1]:9000"

static void parse_ok(struct gw_route **routes, size_t *n)
{
    char err[256] = "";
    int rc = gw_routes_parse(SPEC, routes, n, err, sizeof(err));
    assert_string_equal(err, "");
    assert_int_equal(rc, MOAT_OK);
    assert_int_equal(*n, 3);
}

static void test_parse_valid(void **state)
{
    struct gw_route *r = NULL;
    size_t n = 0;
    parse_ok(&r, &n);

    assert_string_equal(r[0].prefix, "/api/v1/products");
    assert_string_equal(r[0].service, "catalog");
    assert_string_equal(r[1].service, "orders");
    assert_string_equal(r[2].service, "a-very-long-service-name-of-32c");
    assert_int_equal(r[0].prefix_segs, 3);
    assert_string_equal(r[0].pattern_rest, "/api/v1/products/{rest*}");
    assert_string_equal(r[0].origin, "http://127.0.0.1:8081");
    assert_string_equal(r[0].base_path, "/v1/products"); /* final / gone */
    assert_string_equal(r[0].base_url, "http://127.0.0.1:8081/v1/products");

    assert_string_equal(r[1].origin, "https://Orders.internal");
    assert_string_equal(r[1].base_url, "https://Orders.internal/v1/orders");

    assert_int_equal(r[2].prefix_segs, 1);
    assert_string_equal(r[2].origin, "http://[::1]:9000");
    assert_string_equal(r[2].base_path, "");
    gw_routes_free(r, n);
}

/* "URL|URL": the instances of one upstream, same path. */
static void test_parse_instances(void **state)
{
    MOAT_UNUSED(state);
    struct gw_route *r = NULL;
    size_t n = 0;
    char err[256];
    assert_int_equal(gw_routes_parse("/api/v1/products=catalog@http://"
                                     "127.0.0.1:8081/v1/products|http://"
                                     "127.0.0.1:8091/v1/products",
                                     &r, &n, err, sizeof(err)),
                     MOAT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(r[0].norigins, 2);
    assert_string_equal(r[0].origins[0], "http://127.0.0.1:8081");
    assert_string_equal(r[0].origins[1], "http://127.0.0.1:8091");
    assert_string_equal(r[0].base_url, "http://127.0.0.1:8081/v1/products");
    gw_routes_add_v2(&r, &n);
    assert_int_equal(n, 2);
    assert_int_equal(r[1].norigins, 2);
    assert_string_equal(r[1].origins[1], "http://127.0.0.1:8091");
    gw_routes_free(r, n);

    assert_int_equal(gw_routes_parse("/a=catalog@http://h:1/x|http://h:2/y", &r,
                                     &n, err, sizeof(err)),
                     MOAT_EINVAL);
    assert_non_null(strstr(err, "another path than the first instance"));
    assert_int_equal(gw_routes_parse("/a=catalog@http://h:1/x|ftp://h:2/x", &r,
                                     &n, err, sizeof(err)),
                     MOAT_EINVAL);
}

static void test_parse_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        ",",
        "/a=svc@http://x,",
        "/a",
        "=svc@http://x",
        "a=svc@http://x",
        "/=svc@http://x",
        "/a/=svc@http://x",
        "/a//b=svc@http://x",
        "/a/../b=svc@http://x",
        "/a/./b=svc@http://x",
        "/a b=svc@http://x",
        "/a/{id*}=svc@http://x",
        "/a/{id}x=svc@http://x",
        "/a/%41=svc@http://x",
        "/a=svc@",
        "/a=svc@x",
        "/a=svc@127.0.0.1:8081/v1",
        "/a=svc@ftp://x/",
        "/a=svc@file:///etc/passwd",
        "/a=svc@http://",
        "/a=svc@http://u:p@x/",
        "/a=svc@http://x/?q=1",
        "/a=svc@http://x/#f",
        "/a=svc@http://x/ y",
        "/a=svc@http://x,/a=svc@http://y",
        "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17=svc@http://x",
        /* The service name: required, [a-z][a-z0-9-]{0,31}. */
        "/a=http://x",
        "/a=@http://x",
        "/a=Catalog@http://x",
        "/a=1cat@http://x",
        "/a=cat_x@http://x",
        "/a=cat x@http://x",
        "/a=abcdefghijabcdefghijabcdefghijabc@http://x",
        "/a=svc@",
        "/a=svc@@http://x",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        struct gw_route *r = (struct gw_route *)&r; /* must stay untouched */
        size_t n = 42;
        char err[256] = "";
        int rc = gw_routes_parse(bad[i], &r, &n, err, sizeof(err));
        if (rc != MOAT_EINVAL)
            fail_msg("accepted bad spec '%s'", bad[i]);
        assert_true(strlen(err) > 0);
        assert_ptr_equal(r, (struct gw_route *)&r);
        assert_int_equal(n, 42);
    }
}

static void expect_url(const struct gw_route *r, const char *target,
                       const char *want)
{
    char *got = gw_upstream_url(r, target);
    if (!want && got)
        fail_msg("'%s' forwarded as '%s', want rejected", target, got);
    if (want && !got)
        fail_msg("'%s' rejected, want '%s'", target, want);
    if (want)
        assert_string_equal(got, want);
    free(got);
}

static void test_upstream_url(void **state)
{
    struct gw_route *r = NULL;
    size_t n = 0;
    parse_ok(&r, &n);
    const struct gw_route *p = &r[0];
#define UP "http://127.0.0.1:8081/v1/products"
    expect_url(p, "/api/v1/products", UP);
    expect_url(p, "/api/v1/products/", UP "/");
    expect_url(p, "/api/v1/products?limit=5&after=%20x",
               UP "?limit=5&after=%20x");
    expect_url(p, "/api/v1/products/12?x=1", UP "/12?x=1");
    expect_url(p, "/api/v1/products/a%2Fb/c", UP "/a%2Fb/c");
    expect_url(p, "/api/v1/products/.../.well-known", UP "/.../.well-known");
    expect_url(p, "/api/v1/products?next=../../admin", UP "?next=../../admin");
    expect_url(p, "http://gw.example:8080/api/v1/products/1?q", UP "/1?q");
    /* Climbing out of the base path, raw or percent-encoded. */
    expect_url(p, "/api/v1/products/..", NULL);
    expect_url(p, "/api/v1/products/../admin", NULL);
    expect_url(p, "/api/v1/products/./x", NULL);
    expect_url(p, "/api/v1/products/a/../../x", NULL);
    expect_url(p, "/api/v1/products/%2e%2E/x", NULL);
    expect_url(p, "/api/v1/products/.%2e?x", NULL);
    /* Not URL characters. */
    expect_url(p, "/api/v1/products/a b", NULL);
    expect_url(p, "/api/v1/products/%zz", NULL);
    expect_url(p, "/api/v1/products/%4", NULL);
    expect_url(p, "/api/v1/products/<x>", NULL);
    expect_url(p, "/api/v1/products/a#frag", NULL);
    expect_url(p, "/api/v1/products/\xc3\xa9", NULL);
    expect_url(p, "/api/v1/products/a\r\nX: y", NULL);
    expect_url(p, "*", NULL);
#undef UP
    expect_url(&r[2], "/root/x/y", "http://[::1]:9000/x/y");
    expect_url(&r[2], "/root", "http://[::1]:9000");
    gw_routes_free(r, n);
}

/* A "{name}" segment matches any one segment and is carried over to the
 * upstream path wherever the upstream names it. */
static void test_upstream_url_params(void **state)
{
    struct gw_route *r = NULL;
    size_t n = 0;
    char err[256] = "";
    assert_int_equal(
        gw_routes_parse("/api/v1/users/{id}/followers=connections@"
                        "http://127.0.0.1:8091/v1/users/{id}/followers,"
                        "/api/v1/a/{x}/b/{y}=posts@http://h:1/v1/{y}/z/{x}",
                        &r, &n, err, sizeof(err)),
        MOAT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(r[0].nparams, 1);
    assert_string_equal(r[0].prefix, "/api/v1/users/{id}/followers");
#define UP "http://127.0.0.1:8091/v1/users/"
    expect_url(&r[0], "/api/v1/users/u1/followers", UP "u1/followers");
    expect_url(&r[0], "/api/v1/users/u%2F1/followers?limit=2",
               UP "u%2F1/followers?limit=2");
    expect_url(&r[0], "/api/v1/users/u1/followers/x", UP "u1/followers/x");
    /* The parameter cannot climb out, nor be empty. */
    expect_url(&r[0], "/api/v1/users/../followers", NULL);
    expect_url(&r[0], "/api/v1/users/%2e%2e/followers", NULL);
    expect_url(&r[0], "/api/v1/users//followers", NULL);
#undef UP
    expect_url(&r[1], "/api/v1/a/1/b/2/c", "http://h:1/v1/2/z/1/c");
    /* Location headers of a parameterised upstream are left alone. */
    char *loc = gw_rewrite_location(&r[0], "http://127.0.0.1:8091/v1/x");
    assert_string_equal(loc, "http://127.0.0.1:8091/v1/x");
    free(loc);
    gw_routes_free(r, n);

    const char *bad[] = {
        /* The upstream names a parameter the prefix lacks. */
        "/api/v1/users/{id}=c@http://h:1/v1/{uid}",
        "/api/v1/users=c@http://h:1/v1/{id}",
        /* Not a whole segment, or a bad name. */
        "/api/v1/users/x{id}=c@http://h:1/v1",
        "/api/v1/users/{Id}=c@http://h:1/v1",
        "/api/v1/users/{}=c@http://h:1/v1",
        "/api/v1/users/{id=c@http://h:1/v1",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        r = NULL;
        n = 0;
        if (gw_routes_parse(bad[i], &r, &n, err, sizeof(err)) != MOAT_EINVAL)
            fail_msg("accepted bad spec '%s'", bad[i]);
    }
}

static void expect_loc(const struct gw_route *r, const char *loc,
                       const char *want)
{
    char *got = gw_rewrite_location(r, loc);
    assert_string_equal(got, want);
    free(got);
}

static void test_rewrite_location(void **state)
{
    struct gw_route *r = NULL;
    size_t n = 0;
    parse_ok(&r, &n);
    const struct gw_route *p = &r[0];
    expect_loc(p, "/v1/products/12", "/api/v1/products/12");
    expect_loc(p, "/v1/products", "/api/v1/products");
    expect_loc(p, "/v1/products?page=2", "/api/v1/products?page=2");
    expect_loc(p, "http://127.0.0.1:8081/v1/products/12",
               "/api/v1/products/12");
    expect_loc(p, "HTTP://127.0.0.1:8081/v1/products/12#x",
               "/api/v1/products/12#x");
    /* Not under the upstream base: left alone. */
    expect_loc(p, "/v1/productsX/1", "/v1/productsX/1");
    expect_loc(p, "/v1/orders/1", "/v1/orders/1");
    expect_loc(p, "http://other:8081/v1/products/1",
               "http://other:8081/v1/products/1");
    expect_loc(p, "http://127.0.0.1:80811/v1/products/1",
               "http://127.0.0.1:80811/v1/products/1");
    expect_loc(p, "//evil/v1/products", "//evil/v1/products");
    expect_loc(p, "12", "12");
    expect_loc(p, "", "");
    /* Upstream at the root: every absolute path is under it. */
    expect_loc(&r[2], "/x/1", "/root/x/1");
    expect_loc(&r[2], "http://[::1]:9000/x", "/root/x");
    gw_routes_free(r, n);
}

static void test_err_kind_names(void **state)
{
    assert_string_equal(gw_err_kind_name(GW_ERR_CONNECT), "connect");
    assert_string_equal(gw_err_kind_name(GW_ERR_TIMEOUT), "timeout");
    assert_string_equal(gw_err_kind_name(GW_ERR_TOO_BIG), "too_big");
    assert_string_equal(gw_err_kind_name(GW_ERR_BAD_RESPONSE), "bad_response");
    assert_string_equal(gw_err_kind_name(GW_ERR_CANCELLED), "cancelled");
    assert_string_equal(gw_err_kind_name(GW_ERR_KINDS), "unknown");
}

static void test_public_parse(void **state)
{
    struct gw_public *l = NULL;
    size_t n = 42;
    char err[256] = "";
    assert_int_equal(gw_public_parse("", &l, &n, err, sizeof(err)), MOAT_OK);
    assert_int_equal(n, 0);
    assert_null(l);
    assert_int_equal(gw_public_parse("  ", &l, &n, err, sizeof(err)), MOAT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(gw_public_parse(" GET /api/v1/products , POST /api/v1/"
                                     "users,DELETE /x",
                                     &l, &n, err, sizeof(err)),
                     MOAT_OK);
    assert_int_equal(n, 3);
    assert_string_equal(l[0].prefix, "/api/v1/products");
    assert_int_equal(l[0].methods, MOAT_GET | MOAT_HEAD);
    assert_int_equal(l[1].methods, MOAT_POST);
    assert_int_equal(l[2].methods, MOAT_DELETE);
    gw_public_free(l, n);

    static const char *const bad[] = {
        ",",           "GET /a,",  "GET",        "/a",         "get /a",
        "FETCH /a",    "* /a",     "GET /",      "GET a",      "GET /a/",
        "GET /a/../b", "GET /a b", "GET /a?x=1", "GET /a/%2e", "GET\t/a",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        l = (struct gw_public *)&l;
        n = 42;
        err[0] = '\0';
        if (gw_public_parse(bad[i], &l, &n, err, sizeof(err)) != MOAT_EINVAL)
            fail_msg("accepted bad public spec '%s'", bad[i]);
        assert_true(strlen(err) > 0);
        assert_ptr_equal(l, (struct gw_public *)&l);
        assert_int_equal(n, 42);
    }
}

static void test_public_allows(void **state)
{
    struct gw_public *l = NULL;
    size_t n = 0;
    char err[256];
    assert_int_equal(gw_public_parse("GET /api/v1/products,POST /api/v1/users,"
                                     "POST /api/v1/auth",
                                     &l, &n, err, sizeof(err)),
                     MOAT_OK);
    struct {
        enum moat_method m;
        const char *target;
        bool want;
    } cases[] = {
        {MOAT_GET, "/api/v1/products", true},
        {MOAT_GET, "/api/v1/products/", true},
        {MOAT_GET, "/api/v1/products/p1", true},
        {MOAT_GET, "/api/v1/products?limit=5", true},
        {MOAT_GET, "/api/v1/products/p1/reviews?x=/y", true},
        {MOAT_HEAD, "/api/v1/products/p1", true},
        {MOAT_GET, "http://gw:8080/api/v1/products/p1", true},
        {MOAT_POST, "/api/v1/users", true},
        {MOAT_POST, "/api/v1/auth/token", true},
        /* Other methods, neighbours, encodings: not public. */
        {MOAT_POST, "/api/v1/products", false},
        {MOAT_DELETE, "/api/v1/products/p1", false},
        {MOAT_GET, "/api/v1/users", false},
        {MOAT_GET, "/api/v1/users/u1", false},
        {MOAT_GET, "/api/v1/productsX", false},
        {MOAT_GET, "/api/v1/products-admin", false},
        {MOAT_GET, "/api/v1/product%73", false},
        {MOAT_GET, "/api/v1%2Fproducts", false},
        {MOAT_GET, "/API/v1/products", false},
        {MOAT_GET, "/api/v1", false},
        {MOAT_GET, "/", false},
        {MOAT_GET, "", false},
        {MOAT_GET, "api/v1/products", false},
        {MOAT_GET, "//api/v1/products", false},
        {MOAT_GET, "http://gw/api/v1/productsX", false},
        {MOAT_GET, "?/api/v1/products", false},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++)
        if (gw_public_allows(l, n, cases[i].m, cases[i].target) !=
            cases[i].want)
            fail_msg("%s %s: want %s", moat_method_name(cases[i].m),
                     cases[i].target, cases[i].want ? "public" : "private");
    assert_false(gw_public_allows(NULL, 0, MOAT_GET, "/api/v1/products"));
    assert_false(gw_public_allows(l, n, MOAT_GET, NULL));
    gw_public_free(l, n);

    /* A "{name}" segment stands for any one non-empty segment. */
    assert_int_equal(gw_public_parse("GET /api/v1/users/{id}/posts", &l, &n,
                                     err, sizeof(err)),
                     MOAT_OK);
    assert_true(gw_public_allows(l, n, MOAT_GET, "/api/v1/users/u1/posts"));
    assert_true(
        gw_public_allows(l, n, MOAT_GET, "/api/v1/users/u1/posts?cursor=x"));
    assert_true(gw_public_allows(l, n, MOAT_GET, "/api/v1/users/u1/posts/p"));
    assert_false(gw_public_allows(l, n, MOAT_GET, "/api/v1/users//posts"));
    assert_false(gw_public_allows(l, n, MOAT_GET, "/api/v1/users/u1/postsX"));
    assert_false(gw_public_allows(l, n, MOAT_GET, "/api/v1/users/u1"));
    assert_false(gw_public_allows(l, n, MOAT_POST, "/api/v1/users/u1/posts"));
    gw_public_free(l, n);
}

static void test_bearer_token(void **state)
{
    assert_string_equal(gw_bearer_token("Bearer abc.def.ghi"), "abc.def.ghi");
    assert_string_equal(gw_bearer_token("bearer abc"), "abc");
    assert_string_equal(gw_bearer_token("BEARER   abc"), "abc");
    assert_null(gw_bearer_token(NULL));
    assert_null(gw_bearer_token(""));
    assert_null(gw_bearer_token("Bearer"));
    assert_null(gw_bearer_token("Bearer "));
    assert_null(gw_bearer_token("Bearer a b"));
    assert_null(gw_bearer_token("Bearer abc "));
    assert_null(gw_bearer_token("Bearerabc"));
    assert_null(gw_bearer_token("Basic dXNlcjpwdw=="));
    assert_null(gw_bearer_token("Bearer\tabc"));
}

static void test_retry_after(void **state)
{
    assert_int_equal(gw_retry_after_s(0), 1);
    assert_int_equal(gw_retry_after_s(1), 1);
    assert_int_equal(gw_retry_after_s(999), 1);
    assert_int_equal(gw_retry_after_s(1000), 1);
    assert_int_equal(gw_retry_after_s(1001), 2);
    assert_int_equal(gw_retry_after_s(59999), 60);
}

static void test_v2_routes(void **state)
{
    char *p = gw_v2_path("/api/v1/products");
    assert_string_equal(p, "/api/v2/products");
    free(p);
    p = gw_v2_path("/v1x/v1");
    assert_string_equal(p, "/v1x/v2");
    free(p);
    assert_null(gw_v2_path("/api/v10/x"));
    assert_null(gw_v2_path("/root"));

    /* products and orders get twins; /root (no v1) and a v1 prefix whose
     * v2 is configured explicitly do not. */
    struct gw_route *r = NULL;
    size_t n = 0;
    char err[256] = "";
    assert_int_equal(
        gw_routes_parse(SPEC ",/api/v1/stock=inventory@http://h:1/v1/stock,"
                             "/api/v2/stock=inventory@http://h:2/v2/stock,"
                             "/api/v1/users/{id}/posts=posts@http://h:3/v1/"
                             "users/{id}/posts",
                        &r, &n, err, sizeof(err)),
        MOAT_OK);
    assert_int_equal(n, 6);
    gw_routes_add_v2(&r, &n);
    assert_int_equal(n, 9);
    assert_true(r[0].has_successor);
    assert_true(r[1].has_successor);
    assert_false(r[2].has_successor);
    assert_false(r[3].has_successor); /* /api/v2/stock exists */
    assert_false(r[4].has_successor);
    assert_true(r[5].has_successor);
    assert_string_equal(r[6].prefix, "/api/v2/products");
    assert_string_equal(r[6].service, "catalog");
    assert_string_equal(r[6].pattern_rest, "/api/v2/products/{rest*}");
    assert_string_equal(r[6].base_url, "http://127.0.0.1:8081/v2/products");
    assert_int_equal(r[6].prefix_segs, 3);
    assert_string_equal(r[7].base_url, "https://Orders.internal/v2/orders");
    assert_string_equal(r[8].prefix, "/api/v2/users/{id}/posts");
    char *url = gw_upstream_url(&r[6], "/api/v2/products/p1?x=1");
    assert_string_equal(url, "http://127.0.0.1:8081/v2/products/p1?x=1");
    free(url);
    url = gw_upstream_url(&r[8], "/api/v2/users/u1/posts");
    assert_string_equal(url, "http://h:3/v2/users/u1/posts");
    free(url);
    gw_routes_free(r, n);

    struct gw_public *l = NULL;
    assert_int_equal(
        gw_public_parse("GET /api/v1/products,GET /api/v2/products,"
                        "POST /api/v1/products,GET /health",
                        &l, &n, err, sizeof(err)),
        MOAT_OK);
    gw_public_add_v2(&l, &n);
    assert_int_equal(n, 5);
    assert_true(gw_public_allows(l, n, MOAT_POST, "/api/v2/products"));
    assert_true(gw_public_allows(l, n, MOAT_GET, "/api/v2/products/p1"));
    assert_false(gw_public_allows(l, n, MOAT_DELETE, "/api/v2/products/p1"));
    gw_public_free(l, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_instances),
        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_upstream_url),
        cmocka_unit_test(test_upstream_url_params),
        cmocka_unit_test(test_rewrite_location),
        cmocka_unit_test(test_err_kind_names),
        cmocka_unit_test(test_public_parse),
        cmocka_unit_test(test_public_allows),
        cmocka_unit_test(test_bearer_token),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_v2_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
