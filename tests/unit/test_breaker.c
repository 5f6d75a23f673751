/* Unit tests for lib/breaker.c: the circuit breaker's state machine, on a
 * fake clock. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "moat/breaker.h"

#define T0       1000000u /* any monotonic start */
#define COOLDOWN 2000u

/* A call let through (not the probe) that ends with ok. */
static void call(struct moat_breaker *b, uint64_t now, bool ok)
{
    bool probe = true;
    assert_true(moat_breaker_allow(b, now, &probe, NULL));
    assert_false(probe);
    moat_breaker_record(b, ok, probe, now);
}

static uint64_t refused(struct moat_breaker *b, uint64_t now)
{
    bool probe = true;
    uint64_t retry = 0;
    assert_false(moat_breaker_allow(b, now, &probe, &retry));
    assert_false(probe);
    assert_true(retry >= 1);
    return retry;
}

static void open_it(struct moat_breaker *b, uint64_t now)
{
    for (int i = 0; i < 5; i++)
        call(b, now, false);
    assert_int_equal(moat_breaker_state(b, now), MOAT_BREAKER_OPEN);
}

static void test_defaults(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 0, 0);
    assert_int_equal(b.threshold, MOAT_BREAKER_DEFAULT_THRESHOLD);
    assert_int_equal(b.cooldown_ms, MOAT_BREAKER_DEFAULT_COOLDOWN_MS);
    assert_int_equal(moat_breaker_state(&b, T0), MOAT_BREAKER_CLOSED);
    assert_string_equal(moat_breaker_state_name(MOAT_BREAKER_CLOSED), "closed");
    assert_string_equal(moat_breaker_state_name(MOAT_BREAKER_OPEN), "open");
    assert_string_equal(moat_breaker_state_name(MOAT_BREAKER_HALF_OPEN),
                        "half_open");
}

static void test_opens_after_consecutive_failures(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 5, COOLDOWN);

    for (int i = 0; i < 4; i++)
        call(&b, T0, false);
    assert_int_equal(moat_breaker_state(&b, T0), MOAT_BREAKER_CLOSED);
    /* A success in between resets the count: failures must be
     * consecutive. */
    call(&b, T0, true);
    for (int i = 0; i < 4; i++)
        call(&b, T0, false);
    assert_int_equal(moat_breaker_state(&b, T0), MOAT_BREAKER_CLOSED);
    bool probe;
    assert_true(moat_breaker_allow(&b, T0, &probe, NULL));
    assert_true(moat_breaker_record(&b, false, probe, T0)); /* opened */
    assert_int_equal(moat_breaker_state(&b, T0), MOAT_BREAKER_OPEN);
    assert_int_equal(b.opened_total, 1);
}

static void test_open_refuses_until_cooldown(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 5, COOLDOWN);
    open_it(&b, T0);

    assert_int_equal(refused(&b, T0), COOLDOWN);
    assert_int_equal(refused(&b, T0 + 500), COOLDOWN - 500);
    assert_int_equal(refused(&b, T0 + COOLDOWN - 1), 1);
    /* The gauge shows half-open once a probe may pass. */
    assert_int_equal(moat_breaker_state(&b, T0 + COOLDOWN - 1),
                     MOAT_BREAKER_OPEN);
    assert_int_equal(moat_breaker_state(&b, T0 + COOLDOWN),
                     MOAT_BREAKER_HALF_OPEN);
}

static void test_half_open_one_probe_then_closed(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 5, COOLDOWN);
    open_it(&b, T0);

    uint64_t t = T0 + COOLDOWN;
    bool probe = false;
    assert_true(moat_breaker_allow(&b, t, &probe, NULL));
    assert_true(probe);
    assert_int_equal(moat_breaker_state(&b, t), MOAT_BREAKER_HALF_OPEN);
    /* Only one call at a time while half-open. */
    refused(&b, t);
    refused(&b, t + 10);
    assert_true(moat_breaker_record(&b, true, true, t + 20));
    assert_int_equal(moat_breaker_state(&b, t + 20), MOAT_BREAKER_CLOSED);
    call(&b, t + 21, true);
    /* Closed again: the count starts from zero. */
    for (int i = 0; i < 4; i++)
        call(&b, t + 30, false);
    assert_int_equal(moat_breaker_state(&b, t + 30), MOAT_BREAKER_CLOSED);
}

static void test_failed_probe_reopens(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 5, COOLDOWN);
    open_it(&b, T0);

    uint64_t t = T0 + COOLDOWN + 100;
    bool probe = false;
    assert_true(moat_breaker_allow(&b, t, &probe, NULL));
    assert_true(probe);
    assert_true(moat_breaker_record(&b, false, true, t + 50));
    assert_int_equal(moat_breaker_state(&b, t + 50), MOAT_BREAKER_OPEN);
    assert_int_equal(b.opened_total, 2);
    /* A new full cool-down from the probe's failure. */
    assert_int_equal(refused(&b, t + 50), COOLDOWN);
    assert_true(moat_breaker_allow(&b, t + 50 + COOLDOWN, &probe, NULL));
    assert_true(probe);
}

static void test_stale_outcomes_ignored(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 2, COOLDOWN);
    bool p1, p2, p3;
    /* Three calls out while closed; two fail and open the circuit. */
    assert_true(moat_breaker_allow(&b, T0, &p1, NULL));
    assert_true(moat_breaker_allow(&b, T0, &p2, NULL));
    assert_true(moat_breaker_allow(&b, T0, &p3, NULL));
    moat_breaker_record(&b, false, p1, T0 + 1);
    moat_breaker_record(&b, false, p2, T0 + 2);
    assert_int_equal(moat_breaker_state(&b, T0 + 2), MOAT_BREAKER_OPEN);
    /* The third, late, succeeds: no effect while open. */
    assert_false(moat_breaker_record(&b, true, p3, T0 + 3));
    assert_int_equal(moat_breaker_state(&b, T0 + 3), MOAT_BREAKER_OPEN);
    /* Half-open: a late non-probe outcome does not decide either. */
    bool probe;
    assert_true(moat_breaker_allow(&b, T0 + 2 + COOLDOWN, &probe, NULL));
    assert_true(probe);
    assert_false(moat_breaker_record(&b, true, false, T0 + 2 + COOLDOWN));
    assert_false(moat_breaker_record(&b, false, false, T0 + 2 + COOLDOWN));
    assert_int_equal(b.state, MOAT_BREAKER_HALF_OPEN);
    assert_true(moat_breaker_record(&b, true, true, T0 + 3 + COOLDOWN));
    assert_int_equal(b.state, MOAT_BREAKER_CLOSED);
}

static void test_lost_probe_replaced(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 1, COOLDOWN);
    call(&b, T0, false);
    bool probe;
    uint64_t t = T0 + COOLDOWN;
    assert_true(moat_breaker_allow(&b, t, &probe, NULL));
    assert_true(probe);
    /* Its outcome never comes; another cool-down later a new probe. */
    assert_int_equal(refused(&b, t + COOLDOWN - 1), 1);
    assert_true(moat_breaker_allow(&b, t + COOLDOWN, &probe, NULL));
    assert_true(probe);
    moat_breaker_record(&b, true, true, t + COOLDOWN);
    assert_int_equal(b.state, MOAT_BREAKER_CLOSED);
}

static void test_clock_going_back(void **state)
{
    MOAT_UNUSED(state);
    struct moat_breaker b;
    moat_breaker_init(&b, 1, COOLDOWN);
    call(&b, T0, false);
    /* A time before the opening counts as "just opened". */
    assert_int_equal(refused(&b, T0 - 100), COOLDOWN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_opens_after_consecutive_failures),
        cmocka_unit_test(test_open_refuses_until_cooldown),
        cmocka_unit_test(test_half_open_one_probe_then_closed),
        cmocka_unit_test(test_failed_probe_reopens),
        cmocka_unit_test(test_stale_outcomes_ignored),
        cmocka_unit_test(test_lost_probe_replaced),
        cmocka_unit_test(test_clock_going_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
