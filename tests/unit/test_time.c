/* Unit tests for moat_time_parse_rfc3339 (lib/common.c), with the
 * formatter moat_time_rfc3339 as its inverse. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

/* 2026-11-21T19:03:30.123Z */
#define T_2026 INT64_C(1795287810123)

static int64_t parse_ok(const char *s)
{
    int64_t ms = 0;
    int rc = moat_time_parse_rfc3339(s, &ms);
    if (rc != MOAT_OK)
        fail_msg("\"%s\" refused", s);
    return ms;
}

static void test_utc(void **state)
{
    assert_int_equal(parse_ok("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(parse_ok("2026-11-21T19:03:30.123Z"), T_2026);
    /* RFC 3339 5.6: "t", "z" and a space (its NOTE) are accepted. */
    assert_int_equal(parse_ok("2026-11-21t19:03:30.123z"), T_2026);
    assert_int_equal(parse_ok("2026-11-21 19:03:30.123Z"), T_2026);
    assert_int_equal(parse_ok("1969-12-31T23:59:59.999Z"), -1);
}

static void test_offsets(void **state)
{
    assert_int_equal(parse_ok("2026-11-21T20:03:30.123+01:00"), T_2026);
    assert_int_equal(parse_ok("2026-11-21T14:03:30.123-05:00"), T_2026);
    assert_int_equal(parse_ok("2026-11-22T00:33:30.123+05:30"), T_2026);
    assert_int_equal(parse_ok("2026-11-21T19:03:30.123+00:00"), T_2026);
    assert_int_equal(parse_ok("2026-11-21T19:03:30.123-00:00"), T_2026);
    /* An offset that moves the day back over a year boundary. */
    assert_int_equal(parse_ok("1969-12-31T19:00:00-05:00"), 0);
}

static void test_fractions(void **state)
{
    const int64_t base = T_2026 - 123;
    assert_int_equal(parse_ok("2026-11-21T19:03:30Z"), base);
    assert_int_equal(parse_ok("2026-11-21T19:03:30.1Z"), base + 100);
    assert_int_equal(parse_ok("2026-11-21T19:03:30.12Z"), base + 120);
    assert_int_equal(parse_ok("2026-11-21T19:03:30.000Z"), base);
    /* More than ms: truncated, never rounded up into the next second. */
    assert_int_equal(parse_ok("2026-11-21T19:03:30.999999999Z"), base + 999);
    assert_int_equal(parse_ok("2026-11-21T19:03:30.123456+01:00"),
                     T_2026 - 3600 * 1000);
}

static void test_leap_days(void **state)
{
    assert_int_equal(parse_ok("2024-02-29T12:00:00Z"), INT64_C(1709208000000));
    assert_int_equal(parse_ok("2000-02-29T00:00:00Z"), INT64_C(951782400000));
    /* The day after a leap day is one day later. */
    assert_int_equal(parse_ok("2024-03-01T12:00:00Z") -
                         parse_ok("2024-02-29T12:00:00Z"),
                     86400 * 1000);
    /* A leap second reads as the next minute's first second. */
    assert_int_equal(parse_ok("2016-12-31T23:59:60Z"),
                     parse_ok("2017-01-01T00:00:00Z"));
    int64_t ms = 42;
    /* Not leap years: 2023, and 1900 (a century not divisible by 400). */
    assert_int_equal(moat_time_parse_rfc3339("2023-02-29T00:00:00Z", &ms),
                     MOAT_EINVAL);
    assert_int_equal(moat_time_parse_rfc3339("1900-02-29T00:00:00Z", &ms),
                     MOAT_EINVAL);
    assert_int_equal(moat_time_parse_rfc3339("2024-02-30T00:00:00Z", &ms),
                     MOAT_EINVAL);
    assert_int_equal(moat_time_parse_rfc3339("2026-04-31T00:00:00Z", &ms),
                     MOAT_EINVAL);
    assert_int_equal(ms, 42);
}

static void test_bad_input(void **state)
{
    static const char *const bad[] = {
        "",
        "2026-11-21",
        "2026-11-21T19:03:30",       /* no zone */
        "2026-11-21T19:03Z",         /* no seconds */
        "2026-11-21T19:03:30.Z",     /* a point without digits */
        "2026-11-21T19:03:30Zjunk",  /* trailing junk */
        "2026-11-21T19:03:30+0100",  /* offset without a colon */
        "2026-11-21T19:03:30+01",    /* offset without minutes */
        "2026-11-21T19:03:30+24:00", /* offset hour out of range */
        "2026-11-21T19:03:30+01:60", /* offset minute out of range */
        "2026-1-21T19:03:30Z",       /* one-digit month */
        "26-11-21T19:03:30Z",        /* two-digit year */
        "2026-00-21T19:03:30Z",
        "2026-13-21T19:03:30Z",
        "2026-11-00T19:03:30Z",
        "2026-11-21T24:00:00Z",
        "2026-11-21T19:60:30Z",
        "2026-11-21T19:03:61Z",
        "2026-11-21X19:03:30Z",
        "2026/11/21T19:03:30Z",
        "+2026-11-21T19:03:30Z",
        " 2026-11-21T19:03:30Z",
        "2026-11-21T19:03:30 Z",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        int64_t ms = 42;
        if (moat_time_parse_rfc3339(bad[i], &ms) != MOAT_EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_int_equal(ms, 42);
    }
    int64_t ms = 42;
    assert_int_equal(moat_time_parse_rfc3339(NULL, &ms), MOAT_EINVAL);
    assert_int_equal(ms, 42);
}

/* What moat_time_rfc3339 writes reads back to the same ms. */
static void test_round_trip(void **state)
{
    const int64_t times[] = {0,
                             1,
                             999,
                             T_2026,
                             INT64_C(951782400000),
                             INT64_C(253402300799999)}; /* 9999-12-31 */
    for (size_t i = 0; i < MOAT_ARRAY_LEN(times); i++) {
        char text[25];
        moat_time_rfc3339(times[i], text);
        assert_int_equal(parse_ok(text), times[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utc),       cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_fractions), cmocka_unit_test(test_leap_days),
        cmocka_unit_test(test_bad_input), cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
