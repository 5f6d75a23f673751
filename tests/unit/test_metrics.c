/* Unit tests for lib/metrics.c: Prometheus text exposition 0.0.4. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "moat/metrics.h"

static char *render(struct moat_metrics *m)
{
    struct moat_buf b = MOAT_BUF_INIT;
    moat_metrics_render(m, &b);
    return moat_buf_detach(&b, NULL);
}

static void test_counter_and_help(void **state)
{
    struct moat_metrics *m = moat_metrics_new();
    struct moat_metric_family *f =
        moat_metrics_family(m, MOAT_COUNTER, "moat_things_total",
                            "Things seen.", "kind,status", NULL, 0);
    assert_non_null(f);
    const char *a[] = {"x", "200"};
    const char *b[] = {"y\"\\\n", "500"};
    moat_metric_add(moat_metric_series(f, a), 1);
    moat_metric_add(moat_metric_series(f, a), 2);
    moat_metric_add(moat_metric_series(f, b), 1);
    assert_ptr_equal(moat_metric_series(f, a), moat_metric_series(f, a));
    char *out = render(m);
    assert_non_null(strstr(out, "# HELP moat_things_total Things seen.\n"
                                "# TYPE moat_things_total counter\n"));
    assert_non_null(
        strstr(out, "moat_things_total{kind=\"x\",status=\"200\"} 3\n"));
    /* Quote, backslash and newline escaped in label values. */
    assert_non_null(strstr(
        out, "moat_things_total{kind=\"y\\\"\\\\\\n\",status=\"500\"} 1\n"));
    free(out);
    moat_metrics_free(m);
}

static void test_histogram_cumulative(void **state)
{
    struct moat_metrics *m = moat_metrics_new();
    const double bounds[] = {0.1, 1, 10};
    struct moat_metric_family *f = moat_metrics_family(
        m, MOAT_HISTOGRAM, "lat_seconds", "Latency.", "route", bounds, 3);
    const char *r[] = {"/v1/x"};
    struct moat_metric_series *s = moat_metric_series(f, r);
    moat_metric_observe(s, 0.05);
    moat_metric_observe(s, 0.1); /* le is inclusive */
    moat_metric_observe(s, 5);
    moat_metric_observe(s, 50);
    char *out = render(m);
    assert_non_null(strstr(out, "# TYPE lat_seconds histogram\n"));
    assert_non_null(
        strstr(out, "lat_seconds_bucket{route=\"/v1/x\",le=\"0.1\"} 2\n"));
    assert_non_null(
        strstr(out, "lat_seconds_bucket{route=\"/v1/x\",le=\"1\"} 2\n"));
    assert_non_null(
        strstr(out, "lat_seconds_bucket{route=\"/v1/x\",le=\"10\"} 3\n"));
    assert_non_null(
        strstr(out, "lat_seconds_bucket{route=\"/v1/x\",le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(out, "lat_seconds_sum{route=\"/v1/x\"} 55.1"));
    assert_non_null(strstr(out, "lat_seconds_count{route=\"/v1/x\"} 4\n"));
    uint64_t count;
    double sum;
    moat_metric_hist(s, &count, &sum);
    assert_int_equal(count, 4);
    free(out);
    moat_metrics_free(m);
}

static void test_gauge_no_labels_sorted(void **state)
{
    struct moat_metrics *m = moat_metrics_new();
    moat_metric_set(moat_metric_single(moat_metrics_family(
                        m, MOAT_GAUGE, "zz_gauge", "Z.", NULL, NULL, 0)),
                    1.5);
    moat_metric_set(moat_metric_single(moat_metrics_family(
                        m, MOAT_GAUGE, "aa_gauge", "A.", NULL, NULL, 0)),
                    -2);
    char *out = render(m);
    char *a = strstr(out, "aa_gauge -2\n");
    char *z = strstr(out, "zz_gauge 1.5\n");
    assert_non_null(a);
    assert_non_null(z);
    assert_true(a < z);
    free(out);
    moat_metrics_free(m);
}

static void test_invalid_definitions(void **state)
{
    struct moat_metrics *m = moat_metrics_new();
    /* counters must end in _total */
    assert_null(
        moat_metrics_family(m, MOAT_COUNTER, "requests", "", NULL, NULL, 0));
    assert_null(moat_metrics_family(m, MOAT_GAUGE, "9bad", "", NULL, NULL, 0));
    assert_null(moat_metrics_family(m, MOAT_GAUGE, "ok", "", "le", NULL, 0));
    assert_non_null(moat_metrics_family(m, MOAT_GAUGE, "ok", "", "a", NULL, 0));
    /* same name, different type or labels */
    assert_null(moat_metrics_family(m, MOAT_COUNTER, "ok", "", "a", NULL, 0));
    assert_null(moat_metrics_family(m, MOAT_GAUGE, "ok", "", "b", NULL, 0));
    /* same definition returns the same family */
    assert_ptr_equal(
        moat_metrics_family(m, MOAT_GAUGE, "ok", "", "a", NULL, 0),
        moat_metrics_family(m, MOAT_GAUGE, "ok", "", "a", NULL, 0));
    moat_metrics_free(m);
}

static void test_series_cap(void **state)
{
    struct moat_metrics *m = moat_metrics_new();
    struct moat_metric_family *f =
        moat_metrics_family(m, MOAT_COUNTER, "c_total", "", "v", NULL, 0);
    char v[32];
    const char *labels[] = {v};
    for (int i = 0; i < MOAT_METRIC_MAX_SERIES + 10; i++) {
        snprintf(v, sizeof(v), "%d", i);
        moat_metric_add(moat_metric_series(f, labels), 1);
    }
    char *out = render(m);
    assert_non_null(strstr(out, "c_total{v=\"_other\"} 10\n"));
    free(out);
    moat_metrics_free(m);
}

static void collect(struct moat_metrics *m, void *arg)
{
    (*(int *)arg)++;
    moat_metric_set(moat_metric_single(moat_metrics_family(
                        m, MOAT_GAUGE, "collected", "C.", NULL, NULL, 0)),
                    *(int *)arg);
}

static void test_collector_runs_before_render(void **state)
{
    struct moat_metrics *m = moat_metrics_new();
    int calls = 0;
    moat_metrics_on_collect(m, collect, &calls);
    char *out = render(m);
    assert_int_equal(calls, 1);
    assert_non_null(strstr(out, "collected 1\n"));
    free(out);
    moat_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_help),
        cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_gauge_no_labels_sorted),
        cmocka_unit_test(test_invalid_definitions),
        cmocka_unit_test(test_series_cap),
        cmocka_unit_test(test_collector_runs_before_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
