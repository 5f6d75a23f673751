/*
 * test_tls.c - TLS on every hop (moat/tls.h, docs/security.md): catalog
 * and the gateway as real processes serving HTTPS from a test CA
 * (h_tls_enable). Catalog knows two callers only, the gateway and the
 * test process ("test"); every refusal below is checked against it.
 *
 * The full saga over mutual TLS is test_saga (moat.json has "tls": true).
 *
 * Run one test alone:
 *     tests/it_test_tls test_expired_certificate
 */
#include "moat/common.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "moat/auth.h"
#include "moat/tls.h"

static struct {
    char *tmp;
    char *cat_data;
    char peers_env[512];
    char routes_env[160];
    struct h_service cat;
    struct h_service gw;
} F;

/*
 * GET url presenting cert/key (both NULL: no client certificate) and
 * trusting ca only, with an optional header line. The HTTP status, or 0
 * when there was no answer (refused handshake, closed connection).
 */
static long call_as(const char *url, const char *cert, const char *key,
                    const char *ca, const char *header)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *h = header ? curl_slist_append(NULL, header) : NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)h_scaled_ms(H_HTTP_TIMEOUT));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOBODY, 0L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fwrite);
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, devnull);
    if (cert) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, key);
    }
    if (ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    fclose(devnull);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static const char *cat_url(const char *path)
{
    return h_fmt("%s%s", F.cat.url, path);
}

/* A certificate for name from the test CA, made once; returns its path
 * (the key beside it, .key). */
static const char *cert_of(const char *name)
{
    const char *cert = h_tls_path(name, "crt");
    const char *key = h_tls_path(name, "key");
    h_tls_issue(name, -300, 30, cert, key);
    return h_tls_path(name, "crt");
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("tls");
    F.cat_data = moat_xasprintf("%s/catalog-data", F.tmp);
    h_tls_enable(F.tmp);
    snprintf(F.peers_env, sizeof(F.peers_env),
             "MOAT_PEER_KEYS=gateway:%s,test:%s",
             h_test_pair_key("gateway", "catalog"),
             h_test_pair_key("test", "catalog"));
    const char *cat_env[] = {F.peers_env, NULL};
    if (h_service_start(&F.cat, "catalog", F.tmp, F.cat_data, cat_env) != 0)
        return -1;
    snprintf(F.routes_env, sizeof(F.routes_env),
             "MOAT_GATEWAY_ROUTES=/api/v1/products=catalog@%s/v1/products",
             F.cat.url);
    const char *gw_env[] = {F.routes_env,
                            "MOAT_GATEWAY_PUBLIC=GET /api/v1/products", NULL};
    if (h_service_start(&F.gw, "gateway", F.tmp, NULL, gw_env) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int gw_rc = h_service_stop(&F.gw);
    int cat_rc = h_service_stop(&F.cat);
    h_service_release(&F.gw);
    h_service_release(&F.cat);
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.cat_data);
    return gw_rc == 0 && cat_rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

/* Both services serve HTTPS, and calls across the gateway work. */
static void test_https_works(void **state)
{
    MOAT_UNUSED(state);
    assert_true(strncmp(F.cat.url, "https://", 8) == 0);
    struct h_resp r;
    h_http(&r, "GET", cat_url("/v1/products"),
           (const char *const[]){h_service_token("catalog", NULL, NULL), NULL},
           NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    /* gateway -> catalog over mutual TLS */
    h_get(&r, h_fmt("%s/api/v1/products", F.gw.url));
    h_assert_status(&r, 200);
    h_resp_release(&r);
    /* The gateway faces the public: no client certificate needed. */
    assert_int_equal(call_as(h_fmt("%s/api/v1/products", F.gw.url), NULL, NULL,
                             h_tls_path("ca", "crt"), NULL),
                     200);
}

/* Plain HTTP to a TLS port gets no answer: the connection is closed. */
static void test_plain_http_refused(void **state)
{
    MOAT_UNUSED(state);
    const struct h_service *svcs[] = {&F.cat, &F.gw};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(svcs); i++) {
        struct h_resp r;
        h_get(&r,
              h_fmt("http://127.0.0.1:%u/healthz", (unsigned)svcs[i]->port));
        assert_int_equal(r.status, 0);
        h_resp_release(&r);
    }
}

/* Without a client certificate a service refuses the handshake. */
static void test_client_certificate_required(void **state)
{
    MOAT_UNUSED(state);
    assert_int_equal(
        call_as(cat_url("/healthz"), NULL, NULL, h_tls_path("ca", "crt"), NULL),
        0);
    /* The operator (the moat CLI) is always a known caller. */
    const char *op = cert_of("operator");
    assert_int_equal(call_as(cat_url("/healthz"), op,
                             h_tls_path("operator", "key"),
                             h_tls_path("ca", "crt"), NULL),
                     200);
}

/* A certificate of the same CA naming a service that does not call
 * catalog: the handshake fails. */
static void test_unknown_caller_refused(void **state)
{
    MOAT_UNUSED(state);
    const char *cert = cert_of("search");
    assert_int_equal(call_as(cat_url("/v1/products"), cert,
                             h_tls_path("search", "key"),
                             h_tls_path("ca", "crt"),
                             h_service_token("catalog", NULL, NULL)),
                     0);
}

/* A known caller's certificate with another caller's token: 403. Its own
 * token: 200. */
static void test_certificate_must_match_token(void **state)
{
    MOAT_UNUSED(state);
    const char *cert = cert_of("gateway");
    const char *key = h_tls_path("gateway", "key");
    const char *ca = h_tls_path("ca", "crt");
    assert_int_equal(call_as(cat_url("/v1/products"), cert, key, ca,
                             h_service_token("catalog", NULL, NULL)),
                     403);

    setenv("MOAT_SERVICE_KEY", h_test_service_key("gateway"), 1);
    setenv("MOAT_PEER_KEYS", "", 1);
    struct moat_auth *a = NULL;
    assert_int_equal(moat_auth_load(&a, "gateway"), MOAT_OK);
    unsetenv("MOAT_SERVICE_KEY");
    unsetenv("MOAT_PEER_KEYS");
    char *tok = NULL;
    assert_int_equal(moat_auth_token(a, "catalog", NULL, &tok), MOAT_OK);
    char *line = moat_xasprintf("%s: %s", MOAT_SERVICE_TOKEN_HEADER, tok);
    assert_int_equal(call_as(cat_url("/v1/products"),
                             h_tls_path("gateway", "crt"), key, ca, line),
                     200);
    free(line);
    free(tok);
    moat_auth_free(a);
}

/* An expired certificate of a known caller is refused. */
static void test_expired_certificate(void **state)
{
    MOAT_UNUSED(state);
    const char *cert = moat_xstrdup(h_tls_path("test-expired", "crt"));
    const char *key = moat_xstrdup(h_tls_path("test-expired", "key"));
    /* "test", valid from two days ago for one day. */
    h_tls_issue("test", -2 * 86400, 1, cert, key);
    assert_int_equal(
        call_as(cat_url("/healthz"), cert, key, h_tls_path("ca", "crt"), NULL),
        0);
    free((char *)cert);
    free((char *)key);
}

/* A certificate naming a known caller, from another CA: refused. */
static void test_foreign_ca_certificate(void **state)
{
    MOAT_UNUSED(state);
    char *ca_cert = NULL, *ca_key = NULL, *cert = NULL, *key = NULL;
    assert_int_equal(moat_tls_make_ca("foreign", 30, &ca_cert, &ca_key),
                     MOAT_OK);
    assert_int_equal(
        moat_tls_make_cert(ca_cert, ca_key, "test", -300, 30, &cert, &key),
        MOAT_OK);
    char *cp = moat_xasprintf("%s/foreign.crt", F.tmp);
    char *kp = moat_xasprintf("%s/foreign.key", F.tmp);
    char *cap = moat_xasprintf("%s/foreign-ca.crt", F.tmp);
    assert_int_equal(moat_tls_write_pem(cp, cert), MOAT_OK);
    assert_int_equal(moat_tls_write_pem(kp, key), MOAT_OK);
    assert_int_equal(moat_tls_write_pem(cap, ca_cert), MOAT_OK);
    assert_int_equal(
        call_as(cat_url("/healthz"), cp, kp, h_tls_path("ca", "crt"), NULL), 0);
    /* Nor does a client that trusts only the foreign CA accept the
     * service's certificate. */
    assert_int_equal(call_as(cat_url("/healthz"), cp, kp, cap, NULL), 0);
    free(cp);
    free(kp);
    free(cap);
    free(ca_cert);
    free(ca_key);
    free(cert);
    free(key);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_https_works),
        cmocka_unit_test(test_plain_http_refused),
        cmocka_unit_test(test_client_certificate_required),
        cmocka_unit_test(test_unknown_caller_refused),
        cmocka_unit_test(test_certificate_must_match_token),
        cmocka_unit_test(test_expired_certificate),
        cmocka_unit_test(test_foreign_ca_certificate),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("tls", tests, group_setup,
                                       group_teardown);
}
