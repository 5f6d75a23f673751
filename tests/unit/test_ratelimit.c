/* Unit tests for lib/ratelimit.c: token buckets with LRU eviction, on a
 * fake clock. */
#include "moat/common.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "moat/ratelimit.h"

#define T0 1000000u /* any monotonic start */

static void take_ok(struct moat_ratelimit *rl, const char *key, uint64_t now)
{
    uint64_t retry = 42;
    assert_true(moat_ratelimit_take(rl, key, now, &retry));
    assert_int_equal(retry, 0);
}

static uint64_t take_refused(struct moat_ratelimit *rl, const char *key,
                             uint64_t now)
{
    uint64_t retry = 0;
    assert_false(moat_ratelimit_take(rl, key, now, &retry));
    assert_true(retry >= 1);
    return retry;
}

static void test_burst_then_refuse(void **state)
{
    struct moat_ratelimit *rl = moat_ratelimit_new(5, 1, 100);
    assert_non_null(rl);

    for (int i = 0; i < 5; i++)
        take_ok(rl, "10.0.0.1", T0);
    /* Empty: the next token is one second away at 1 token/s. */
    assert_int_equal(take_refused(rl, "10.0.0.1", T0), 1000);
    assert_int_equal(take_refused(rl, "10.0.0.1", T0 + 400), 600);
    /* Other keys have their own buckets. */
    take_ok(rl, "10.0.0.2", T0);
    /* retry_after_ms is optional. */
    assert_false(moat_ratelimit_take(rl, "10.0.0.1", T0 + 400, NULL));
    moat_ratelimit_free(rl);
}

static void test_refill_over_time(void **state)
{
    struct moat_ratelimit *rl = moat_ratelimit_new(5, 2, 100);

    for (int i = 0; i < 5; i++)
        take_ok(rl, "k", T0);
    assert_int_equal(take_refused(rl, "k", T0), 500);
    /* Exactly when promised. */
    assert_int_equal(take_refused(rl, "k", T0 + 499), 1);
    take_ok(rl, "k", T0 + 500);
    take_refused(rl, "k", T0 + 500);
    /* A long pause refills to the burst, not beyond. */
    uint64_t later = T0 + 3600 * 1000;
    for (int i = 0; i < 5; i++)
        take_ok(rl, "k", later);
    take_refused(rl, "k", later);
    /* A clock that goes backwards gives nothing. */
    take_refused(rl, "k", later - 10000);
    take_refused(rl, "k", later);
    take_ok(rl, "k", later + 500);
    moat_ratelimit_free(rl);

    /* A fractional rate rounds retry_after up, and keeps its promise. */
    rl = moat_ratelimit_new(1, 3, 10);
    take_ok(rl, "k", T0);
    uint64_t retry = take_refused(rl, "k", T0);
    assert_int_equal(retry, 334);
    take_refused(rl, "k", T0 + retry - 1);
    take_ok(rl, "k", T0 + retry);
    /* Refill of 3 tokens in exactly one second, one at a time. */
    moat_ratelimit_free(rl);
    rl = moat_ratelimit_new(3, 3, 10);
    for (int i = 0; i < 3; i++)
        take_ok(rl, "k", T0);
    take_refused(rl, "k", T0);
    for (int i = 0; i < 3; i++)
        take_ok(rl, "k", T0 + 1000);
    take_refused(rl, "k", T0 + 1000);
    moat_ratelimit_free(rl);
}

static void test_reset(void **state)
{
    struct moat_ratelimit *rl = moat_ratelimit_new(2, 0.01, 100);

    take_ok(rl, "login:alice", T0);
    take_ok(rl, "login:alice", T0);
    assert_int_equal(take_refused(rl, "login:alice", T0), 100000);
    moat_ratelimit_reset(rl, "login:alice");
    assert_int_equal(moat_ratelimit_size(rl), 0);
    take_ok(rl, "login:alice", T0);
    take_ok(rl, "login:alice", T0);
    take_refused(rl, "login:alice", T0);
    /* Resetting an unknown key is harmless. */
    moat_ratelimit_reset(rl, "login:bob");
    assert_int_equal(moat_ratelimit_size(rl), 1);
    moat_ratelimit_free(rl);
}

static void test_lru_eviction(void **state)
{
    struct moat_ratelimit *rl = moat_ratelimit_new(1, 0.001, 3);

    take_ok(rl, "a", T0);
    take_ok(rl, "b", T0);
    take_ok(rl, "c", T0);
    assert_int_equal(moat_ratelimit_size(rl), 3);
    /* Touch a: b is now the least recently used. */
    take_refused(rl, "a", T0);
    take_ok(rl, "d", T0); /* evicts b */
    assert_int_equal(moat_ratelimit_size(rl), 3);
    take_refused(rl, "a", T0);
    take_refused(rl, "c", T0);
    take_refused(rl, "d", T0); /* most recent first: d, c, a */
    /* A forgotten bucket starts full (errs toward letting through). */
    take_ok(rl, "b", T0); /* evicts a: b, d, c */
    take_ok(rl, "a", T0); /* evicts c: a, b, d */
    take_ok(rl, "c", T0); /* evicts d: c, a, b */
    take_refused(rl, "b", T0);
    assert_int_equal(moat_ratelimit_size(rl), 3);
    moat_ratelimit_free(rl);
}

static void test_memory_is_bounded(void **state)
{
    enum { MAX = 1000, KEYS = 100000 };
    struct moat_ratelimit *rl = moat_ratelimit_new(1, 1, MAX);
    char key[32];

    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof(key), "198.51.%d.%d", i / 256, i % 256);
        take_ok(rl, key, T0);
        assert_true(moat_ratelimit_size(rl) <= MAX);
    }
    assert_int_equal(moat_ratelimit_size(rl), MAX);
    /* The most recent MAX keys are still remembered, older ones are not. */
    snprintf(key, sizeof(key), "198.51.%d.%d", (KEYS - 1) / 256,
             (KEYS - 1) % 256);
    take_refused(rl, key, T0);
    take_ok(rl, "198.51.0.0", T0);
    moat_ratelimit_free(rl);
}

static void test_long_keys(void **state)
{
    struct moat_ratelimit *rl = moat_ratelimit_new(1, 1, 100);
    char a[300], b[300], c[129];

    memset(a, 'x', sizeof(a) - 1);
    a[sizeof(a) - 1] = '\0';
    memcpy(b, a, sizeof(b));
    b[sizeof(b) - 2] = 'y';
    memset(c, 'x', sizeof(c) - 1);
    c[sizeof(c) - 1] = '\0';

    /* Distinct long keys stay distinct; the same long key is one bucket. */
    take_ok(rl, a, T0);
    take_ok(rl, b, T0);
    take_ok(rl, c, T0);
    take_refused(rl, a, T0);
    take_refused(rl, b, T0);
    take_refused(rl, c, T0);
    moat_ratelimit_reset(rl, a);
    take_ok(rl, a, T0);
    take_ok(rl, "", T0);
    take_refused(rl, NULL, T0); /* NULL is the empty key */
    moat_ratelimit_free(rl);
}

static void test_bad_parameters(void **state)
{
    assert_null(moat_ratelimit_new(0, 1, 10));
    assert_null(moat_ratelimit_new(0.5, 1, 10));
    assert_null(moat_ratelimit_new(1, 0, 10));
    assert_null(moat_ratelimit_new(1, -1, 10));
    assert_null(moat_ratelimit_new(NAN, 1, 10));
    assert_null(moat_ratelimit_new(1, INFINITY, 10));
    assert_null(moat_ratelimit_new(1, 1, 0));
    moat_ratelimit_free(NULL);

    /* A tiny rate gives a huge but well-defined wait. */
    struct moat_ratelimit *rl = moat_ratelimit_new(1, 1e-300, 1);
    take_ok(rl, "k", T0);
    assert_true(take_refused(rl, "k", T0) >= (uint64_t)INT64_MAX / 2);
    moat_ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refuse),
        cmocka_unit_test(test_refill_over_time),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_memory_is_bounded),
        cmocka_unit_test(test_long_keys),
        cmocka_unit_test(test_bad_parameters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
