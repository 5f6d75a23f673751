/* Unit tests for lib/trace.c: W3C traceparent and request ids. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "moat/trace.h"

#define GOOD "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static void test_traceparent_validation(void **state)
{
    assert_true(moat_traceparent_valid(GOOD));
    const char *bad[] = {
        NULL,
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        assert_false(moat_traceparent_valid(bad[i]));
}

static void test_trace_continues_or_starts(void **state)
{
    struct moat_trace t;
    moat_trace_start(&t, GOOD, "abc-1");
    assert_string_equal(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(t.parent_id, "00f067aa0ba902b7");
    assert_int_equal(t.flags, 1);
    assert_string_not_equal(t.span_id, "00f067aa0ba902b7");
    assert_string_equal(t.request_id, "abc-1");
    char out[MOAT_TRACEPARENT_LEN + 1];
    moat_trace_format(&t, out);
    assert_true(moat_traceparent_valid(out));
    assert_memory_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    assert_memory_equal(out + 36, t.span_id, 16);

    struct moat_trace u;
    moat_trace_start(&u, "garbage", "bad id!");
    assert_string_equal(u.parent_id, "");
    assert_int_equal(strlen(u.trace_id), 32);
    assert_true(moat_request_id_valid(u.request_id));
    assert_string_not_equal(u.request_id, "bad id!");
    moat_trace_format(&u, out);
    assert_true(moat_traceparent_valid(out));
    /* two fresh traces differ */
    moat_trace_start(&t, NULL, NULL);
    assert_string_not_equal(t.trace_id, u.trace_id);
}

static void test_request_id(void **state)
{
    assert_true(moat_request_id_valid("a.B_c-9"));
    char long_id[MOAT_REQUEST_ID_MAX + 2];
    memset(long_id, 'a', sizeof(long_id));
    long_id[MOAT_REQUEST_ID_MAX + 1] = '\0';
    assert_false(moat_request_id_valid(long_id));
    long_id[MOAT_REQUEST_ID_MAX] = '\0';
    assert_true(moat_request_id_valid(long_id));
    assert_false(moat_request_id_valid(""));
    assert_false(moat_request_id_valid("a b"));
    assert_false(moat_request_id_valid("a\nb"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_validation),
        cmocka_unit_test(test_trace_continues_or_starts),
        cmocka_unit_test(test_request_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
