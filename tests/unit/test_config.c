/* Unit tests for lib/config.c and the service configuration loader. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "moat/config.h"
#include "moat/service.h"

static void test_env_int(void **state)
{
    int64_t v = 0;
    unsetenv("T_INT");
    assert_int_equal(moat_env_int("T_INT", 7, 0, 10, &v), MOAT_OK);
    assert_int_equal(v, 7);
    setenv("T_INT", "9", 1);
    assert_int_equal(moat_env_int("T_INT", 7, 0, 10, &v), MOAT_OK);
    assert_int_equal(v, 9);
    const char *bad[] = {
        "11", "-1", "abc", "5x", " 5", "+5", "99999999999999999999"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        setenv("T_INT", bad[i], 1);
        v = 42;
        assert_int_equal(moat_env_int("T_INT", 7, 0, 10, &v), MOAT_EINVAL);
        assert_int_equal(v, 42); /* untouched on error */
    }
    setenv("T_INT", "", 1); /* empty means unset */
    assert_int_equal(moat_env_int("T_INT", 7, 0, 10, &v), MOAT_OK);
    assert_int_equal(v, 7);
    unsetenv("T_INT");
}

static void test_env_bool(void **state)
{
    bool b = false;
    const char *yes[] = {"1", "true", "YES", "on"};
    const char *no[] = {"0", "false", "No", "OFF"};
    for (size_t i = 0; i < 4; i++) {
        setenv("T_BOOL", yes[i], 1);
        assert_int_equal(moat_env_bool("T_BOOL", false, &b), MOAT_OK);
        assert_true(b);
        setenv("T_BOOL", no[i], 1);
        assert_int_equal(moat_env_bool("T_BOOL", true, &b), MOAT_OK);
        assert_false(b);
    }
    setenv("T_BOOL", "maybe", 1);
    assert_int_equal(moat_env_bool("T_BOOL", true, &b), MOAT_EINVAL);
    unsetenv("T_BOOL");
    assert_int_equal(moat_env_bool("T_BOOL", true, &b), MOAT_OK);
    assert_true(b);
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* MOAT_INSTANCE_URLS: a URL naming a service's first instance maps to
 * every instance, path kept. */
static void test_instance_urls(void **state)
{
    MOAT_UNUSED(state);
    unsetenv("MOAT_INSTANCE_URLS");
    assert_null(moat_instance_urls("http://h:1"));
    setenv("MOAT_INSTANCE_URLS",
           "http://h:1|http://h:2,https://g:5|https://g:6|https://k:7", 1);
    char **v = moat_instance_urls("http://h:1/v1/x");
    assert_non_null(v);
    assert_string_equal(v[0], "http://h:1/v1/x");
    assert_string_equal(v[1], "http://h:2/v1/x");
    assert_null(v[2]);
    strv_free(v);
    v = moat_instance_urls("https://g:5");
    assert_non_null(v);
    assert_string_equal(v[2], "https://k:7");
    assert_null(v[3]);
    strv_free(v);
    assert_null(moat_instance_urls("http://h:2"));  /* not a first one */
    assert_null(moat_instance_urls("http://h:10")); /* another port */
    assert_null(moat_instance_urls("https://g:6/x"));
    unsetenv("MOAT_INSTANCE_URLS");
}

static void test_hostport(void **state)
{
    char host[64];
    uint16_t port = 0;
    assert_int_equal(
        moat_parse_hostport("127.0.0.1:8080", host, sizeof(host), &port, false),
        MOAT_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_int_equal(
        moat_parse_hostport("localhost:0", host, sizeof(host), &port, true),
        MOAT_OK);
    assert_int_equal(port, 0);
    const char *bad[] = {"8080",   ":80",      "host:",    "host:65536",
                         "host:0", "ho st:80", "host:80x", "a/b:80"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        assert_int_equal(
            moat_parse_hostport(bad[i], host, sizeof(host), &port, false),
            MOAT_EINVAL);
}

static void test_service_config(void **state)
{
    static const struct moat_service_def def = {
        .name = "widgets", .default_port = 9999, .needs_data_dir = true};
    struct moat_service_config cfg;
    unsetenv("MOAT_LISTEN");
    unsetenv("MOAT_DATA_DIR");
    unsetenv("MOAT_SERVICE_NAME");
    assert_int_equal(moat_service_config_load(&cfg, &def), MOAT_OK);
    assert_string_equal(cfg.name, "widgets");
    assert_string_equal(cfg.host, "127.0.0.1");
    assert_int_equal(cfg.port, 9999);
    assert_string_equal(cfg.data_dir, "var/widgets");
    assert_int_equal(cfg.limits.max_body_bytes, MOAT_HTTP_DEFAULT_MAX_BODY);
    assert_true(cfg.sandbox);

    setenv("MOAT_LISTEN", "127.0.0.1:0", 1);
    setenv("MOAT_DATA_DIR", "/tmp/w", 1);
    setenv("MOAT_MAX_BODY_BYTES", "2048", 1);
    assert_int_equal(moat_service_config_load(&cfg, &def), MOAT_OK);
    assert_int_equal(cfg.port, 0);
    assert_string_equal(cfg.data_dir, "/tmp/w");
    assert_int_equal(cfg.limits.max_body_bytes, 2048);

    setenv("MOAT_MAX_BODY_BYTES", "1", 1); /* below the minimum */
    assert_int_equal(moat_service_config_load(&cfg, &def), MOAT_EINVAL);
    unsetenv("MOAT_MAX_BODY_BYTES");
    setenv("MOAT_LISTEN", "nonsense", 1);
    assert_int_equal(moat_service_config_load(&cfg, &def), MOAT_EINVAL);
    unsetenv("MOAT_LISTEN");
    unsetenv("MOAT_DATA_DIR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_int),
        cmocka_unit_test(test_env_bool),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_instance_urls),
        cmocka_unit_test(test_service_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
