/*
 * Unit tests for lib/apiversion.c and moat_time_format_rfc3339: the
 * timestamp representations of API v1 (epoch seconds) and v2 (RFC 3339).
 * The HTTP side (/v2 routing, replies, headers) is in test_http.c.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "moat/http.h"

/* What a v2 request body's time becomes: whole seconds, rounded down. */
static int moat_api_parse_rfc3339(const char *s, int64_t *unix_s)
{
    json_t *o = json_pack("{s:s}", "created_at", s);
    size_t n = moat_api_v1_from_v2(o);
    json_t *v = json_object_get(o, "created_at");
    int rc = n == 1 && json_is_integer(v) ? MOAT_OK : MOAT_EINVAL;
    if (rc == MOAT_OK)
        *unix_s = json_integer_value(v);
    json_decref(o);
    return rc;
}

static void assert_format(int64_t s, const char *want)
{
    char out[21];
    assert_int_equal(moat_time_format_rfc3339(s, out), MOAT_OK);
    assert_string_equal(out, want);
    int64_t back = 0;
    assert_int_equal(moat_api_parse_rfc3339(out, &back), MOAT_OK);
    assert_int_equal(back, s);
}

static void test_format(void **state)
{
    assert_format(0, "1970-01-01T00:00:00Z");
    assert_format(-1, "1969-12-31T23:59:59Z");
    assert_format(1796426264, "2026-12-04T23:17:44Z");
    assert_format(951782400, "2000-02-29T00:00:00Z");  /* leap day */
    assert_format(4107542400, "2100-03-01T00:00:00Z"); /* 2100: no leap */
    assert_format(MOAT_RFC3339_S_MIN, "0000-01-01T00:00:00Z");
    assert_format(MOAT_RFC3339_S_MAX, "9999-12-31T23:59:59Z");

    char out[21] = "junk";
    assert_int_equal(moat_time_format_rfc3339(MOAT_RFC3339_S_MAX + 1, out),
                     MOAT_EINVAL);
    assert_string_equal(out, "");
    assert_int_equal(moat_time_format_rfc3339(MOAT_RFC3339_S_MIN - 1, out),
                     MOAT_EINVAL);
    assert_int_equal(moat_time_format_rfc3339(INT64_MIN, out), MOAT_EINVAL);
    assert_int_equal(moat_time_format_rfc3339(INT64_MAX, out), MOAT_EINVAL);
}

static void test_parse(void **state)
{
    int64_t t = 0;
    assert_int_equal(moat_api_parse_rfc3339("2026-12-05T01:00:00+01:00", &t),
                     MOAT_OK);
    assert_int_equal(t, 1796428800);
    assert_int_equal(moat_api_parse_rfc3339("2026-12-04t19:00:00-05:00", &t),
                     MOAT_OK);
    assert_int_equal(t, 1796428800);
    /* A fraction is dropped, toward the past. */
    assert_int_equal(moat_api_parse_rfc3339("1969-12-31T23:59:59.999z", &t),
                     MOAT_OK);
    assert_int_equal(t, -1);
    const char *bad[] = {
        "",
        "2026-12-05",
        "2026-12-05T00:00:00",      /* no offset */
        "2026-13-01T00:00:00Z",     /* month */
        "2025-02-29T00:00:00Z",     /* not a leap year */
        "2026-12-05T24:00:00Z",     /* hour */
        "2026-12-05T00:00:00.Z",    /* empty fraction */
        "2026-12-05T00:00:00+0100", /* offset without colon */
        "2026-12-05T00:00:00Zjunk",
        "+2026-12-05T00:00:00Z",
        "1796428800",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        if (moat_api_parse_rfc3339(bad[i], &t) == MOAT_OK)
            fail_msg("accepted '%s'", bad[i]);
}

static void test_time_members(void **state)
{
    assert_true(moat_api_time_member("created_at"));
    assert_true(moat_api_time_member("placed_at"));
    assert_true(moat_api_time_member("at"));
    assert_false(moat_api_time_member("_at"));
    assert_false(moat_api_time_member("at_ms"));
    assert_false(moat_api_time_member("format"));
    assert_false(moat_api_time_member("since"));
    assert_false(moat_api_time_member(""));
}

static void test_round_trip(void **state)
{
    const char *v1 =
        "[{\"a\":{\"b\":[[{\"done_at\":1}]]},\"x_at\":{\"y_at\":2},"
        "\"s_at\":\"kept\",\"r_at\":2.0,\"n_at\":null,"
        "\"t_at\":true,\"huge_at\":9223372036854775807,"
        "\"neg_at\":-62167219201,\"id\":5}]";
    json_t *j = json_loads(v1, 0, NULL);
    assert_non_null(j);
    assert_int_equal(moat_api_v2_from_v1(j), 2);
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_string_equal(
        text, "[{\"a\":{\"b\":[[{\"done_at\":\"1970-01-01T00:00:01Z\"}]]},"
              "\"x_at\":{\"y_at\":\"1970-01-01T00:00:02Z\"},"
              "\"s_at\":\"kept\",\"r_at\":2.0,\"n_at\":null,"
              "\"t_at\":true,\"huge_at\":9223372036854775807,"
              "\"neg_at\":-62167219201,\"id\":5}]");
    free(text);
    /* Back: the strings it wrote become the integers again; "kept" is not
     * a time and stays. */
    assert_int_equal(moat_api_v1_from_v2(j), 2);
    text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_string_equal(text, v1);
    free(text);
    json_decref(j);

    /* Scalars and empty containers are fine. */
    json_t *n = json_integer(5);
    assert_int_equal(moat_api_v2_from_v1(n), 0);
    json_decref(n);
    assert_int_equal(moat_api_v2_from_v1(NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_time_members),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
