/* Unit tests for lib/tls.c: issuing certificates, loading an identity,
 * server contexts. The handshakes themselves are it_test_tls. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "moat/tls.h"

struct fixture {
    char dir[64];
    char *ca_cert, *ca_key;
};

static int setup(void **state)
{
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-unit-tls-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(moat_tls_make_ca("unit", 30, &f->ca_cert, &f->ca_key),
                     MOAT_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    moat_tls_unload();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f->ca_cert);
    free(f->ca_key);
    free(f);
    return 0;
}

/* Write cert and key of name under f->dir; returns the paths in cp, kp. */
static void issue(struct fixture *f, const char *name, char cp[128],
                  char kp[128])
{
    char *cert = NULL, *key = NULL;
    assert_int_equal(
        moat_tls_make_cert(f->ca_cert, f->ca_key, name, -60, 30, &cert, &key),
        MOAT_OK);
    snprintf(cp, 128, "%s/%s.crt", f->dir, name);
    snprintf(kp, 128, "%s/%s.key", f->dir, name);
    assert_int_equal(moat_tls_write_pem(cp, cert), MOAT_OK);
    assert_int_equal(moat_tls_write_pem(kp, key), MOAT_OK);
    free(cert);
    free(key);
}

static void test_certificate_names_the_service(void **state)
{
    struct fixture *f = *state;
    char cp[128], kp[128];
    issue(f, "orders", cp, kp);
    struct stat st;
    assert_int_equal(stat(kp, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    FILE *in = fopen(cp, "r");
    assert_non_null(in);
    X509 *x = PEM_read_X509(in, NULL, NULL, NULL);
    fclose(in);
    assert_non_null(x);
    char cn[64];
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x),
                                          NID_commonName, cn, sizeof(cn)) > 0);
    assert_string_equal(cn, "orders");
    assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_host(x, "orders", 0, 0, NULL), 1);
    X509_free(x);
}

static void test_bad_names_refused(void **state)
{
    struct fixture *f = *state;
    const char *bad[] = {"",    "Orders",
                         "1x",  "a/b",
                         "x y", "a-very-long-name-beyond-thirty-two-chars"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        char *cert = NULL, *key = NULL;
        assert_int_equal(moat_tls_make_cert(f->ca_cert, f->ca_key, bad[i], 0, 1,
                                            &cert, &key),
                         MOAT_EINVAL);
        assert_null(cert);
        assert_null(key);
    }
}

static void test_load_identity(void **state)
{
    struct fixture *f = *state;
    char cp[128], kp[128], cp2[128], kp2[128], ca[128];
    issue(f, "catalog", cp, kp);
    issue(f, "search", cp2, kp2);
    snprintf(ca, sizeof(ca), "%s/ca.crt", f->dir);
    assert_int_equal(moat_tls_write_pem(ca, f->ca_cert), MOAT_OK);

    assert_false(moat_tls_enabled());
    assert_null(moat_tls_server_ctx(NULL));
    /* A key of another certificate, a missing file. */
    assert_int_equal(moat_tls_load(cp, kp2, ca), MOAT_EIO);
    assert_false(moat_tls_enabled());
    assert_int_equal(moat_tls_load(cp, "/nonexistent/key", ca), MOAT_EIO);
    assert_int_equal(moat_tls_load(cp, kp, ca), MOAT_OK);
    assert_true(moat_tls_enabled());

    const char *allowed[] = {"gateway", "operator", NULL};
    SSL_CTX *ctx = moat_tls_server_ctx(allowed);
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx),
                     SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    SSL_CTX_free(ctx);
    ctx = moat_tls_server_ctx(NULL); /* the gateway: no client cert */
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
    SSL_CTX_free(ctx);
}

static void test_load_env(void **state)
{
    MOAT_UNUSED(state);
    unsetenv("MOAT_TLS_CERT");
    unsetenv("MOAT_TLS_KEY");
    unsetenv("MOAT_TLS_CA");
    assert_int_equal(moat_tls_load_env(), MOAT_ENOTFOUND);
    setenv("MOAT_TLS_CERT", "/x.crt", 1);
    assert_int_equal(moat_tls_load_env(), MOAT_EINVAL);
    unsetenv("MOAT_TLS_CERT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_certificate_names_the_service,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_names_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_load_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_env, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
