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

static json_t *spans_of(json_t *rs)
{
    return json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0),
                           "spans");
}

/* The ring keeps the newest MOAT_SPAN_RING spans and exports them as
 * OTLP/JSON, filtered by trace and capped by limit. */
static void test_span_ring(void **state)
{
    struct moat_trace a, b;
    moat_trace_start(&a, NULL, NULL);
    moat_trace_start(&b, NULL, NULL);
    moat_span_record(&a, MOAT_SPAN_SERVER, "GET /v1/x", 1000, 250, 200, false);
    for (int i = 0; i < MOAT_SPAN_RING + 5; i++)
        moat_span_record(&b, MOAT_SPAN_CONSUMER, "consume E from s", 2000 + i,
                         1, 0, i == MOAT_SPAN_RING + 4);
    /* a's span was overwritten by b's. */
    json_t *rs = moat_spans_export("svc", a.trace_id, 10);
    assert_int_equal(json_array_size(spans_of(rs)), 0);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(
                json_array_get(json_object_get(json_object_get(rs, "resource"),
                                               "attributes"),
                               0),
                "value"),
            "stringValue")),
        "svc");
    json_decref(rs);
    rs = moat_spans_export("svc", b.trace_id, 3);
    json_t *spans = spans_of(rs);
    assert_int_equal(json_array_size(spans), 3);
    json_t *last = json_array_get(spans, 2); /* the newest, last */
    assert_string_equal(json_string_value(json_object_get(last, "traceId")),
                        b.trace_id);
    assert_int_equal(json_integer_value(json_object_get(last, "kind")), 5);
    char start[32];
    snprintf(start, sizeof(start), "%d000", 2000 + MOAT_SPAN_RING + 4);
    assert_string_equal(
        json_string_value(json_object_get(last, "startTimeUnixNano")), start);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(last, "status"), "code")),
                     2);
    json_decref(rs);
    rs = moat_spans_export("svc", NULL, MOAT_SPAN_RING * 2);
    assert_int_equal(json_array_size(spans_of(rs)), MOAT_SPAN_RING);
    json_decref(rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_validation),
        cmocka_unit_test(test_trace_continues_or_starts),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_span_ring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
