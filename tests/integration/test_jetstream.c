/*
 * The shop on NATS JetStream (moat/jetstream.h): the repository's own
 * moat.json, moved to free ports and given "transport": "jetstream", runs
 * under `moat up`, which starts and supervises nats-server beside the
 * services. Orders placed through the gateway (`moat chaos` without
 * faults) complete and the audit finds 0 violations, with the events
 * really travelling through the streams. Then JetStream's storage is
 * wiped in the middle of a run (nats-server SIGKILLed, its store
 * directory deleted, the supervisor restarting it): the relays republish
 * from their outboxes, the run ends with 0 violations, every consumer
 * caught up, and each consumer's rebuild from its sources (`moat events
 * replay --verify`) identical to its live view.
 */
#include "moat/common.h"

#include "jetstream_fixture.h"

#define RUN_SECONDS 12
#define RUN_RATE    6
#define MIN_ORDERS  40

static int setup(void **state)
{
    MOAT_UNUSED(state);
    return js_setup("jetstream");
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    return js_teardown();
}

static void test_saga_on_jetstream(void **state)
{
    MOAT_UNUSED(state);
    js_up("jetstream");
    /* moat status shows the broker's health beside the services'. */
    struct moat_buf out = MOAT_BUF_INIT;
    assert_int_equal(
        js_run(h_fmt("%s/moat status -f %s --json", MOAT_BIN_DIR, dep.file),
               &out),
        0);
    json_t *st = json_loads(moat_buf_str(&out), 0, NULL);
    assert_non_null(st);
    bool seen = false;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        if (strcmp(h_jstr(s, "name"), "nats") == 0) {
            assert_string_equal(h_jstr(s, "health"), "ready");
            seen = true;
        }
    }
    assert_true(seen);
    json_decref(st);
    moat_buf_release(&out);
    /* The same as a table, the broker last. */
    assert_int_equal(
        js_run(h_fmt("%s/moat status -f %s", MOAT_BIN_DIR, dep.file), &out), 0);
    assert_non_null(strstr(moat_buf_str(&out), "\nnats "));
    moat_buf_release(&out);

    int rc = js_finish(js_chaos(RUN_SECONDS, RUN_RATE, 0), &out);
    const char *text = moat_buf_str(&out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(text, "result: 0 violations"));
    long n = js_accepted(text);
    fprintf(stderr, "accepted orders: %ld\n", n);
    assert_true(n >= MIN_ORDERS);
    moat_buf_release(&out);
    /* The events went through the streams. */
    json_int_t streams = 0, messages = 0;
    assert_true(js_jsz(&streams, &messages));
    fprintf(stderr, "jetstream: %lld streams, %lld messages\n",
            (long long)streams, (long long)messages);
    assert_true(streams >= 4); /* catalog, orders, inventory, payments... */
    assert_true(messages >= n);
    /* ...and the consumers read them through durable pull consumers. */
    struct h_resp r;
    h_get(&r, h_fmt("%s/jsz", dep.monitor));
    json_t *j = h_resp_json(&r);
    fprintf(stderr, "jetstream: %lld durable consumers\n",
            (long long)json_integer_value(json_object_get(j, "consumers")));
    assert_true(json_integer_value(json_object_get(j, "consumers")) >= 8);
    json_decref(j);
    h_resp_release(&r);
}

struct wipe {
    json_int_t floor; /* messages before the run */
};

static bool run_under_way(void *arg)
{
    struct wipe *w = arg;
    json_int_t streams, messages;
    return js_jsz(&streams, &messages) && messages >= w->floor + 30;
}

static void test_wipe_storage_mid_run(void **state)
{
    MOAT_UNUSED(state);
    if (dep.up_pid <= 0)
        skip(); /* the first test did not start the deployment */
    struct wipe w = {0};
    json_int_t streams;
    assert_true(js_jsz(&streams, &w.floor));
    FILE *p = js_chaos(RUN_SECONDS + 4, RUN_RATE, 0);
    assert_true(h_wait_until(run_under_way, &w, 30000));

    pid_t pid = js_nats_pid();
    assert_true(pid > 0);
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* Not h_rmtree, which MOAT_TEST_KEEP=1 turns off. */
    assert_int_equal(system(h_fmt("rm -rf '%s/var/nats/jetstream'", dep.dir)),
                     0);
    fprintf(stderr, "wiped JetStream's storage (nats-server pid %d)\n",
            (int)pid);
    assert_true(h_wait_until(js_broker_back, &pid, 30000));

    struct moat_buf out = MOAT_BUF_INIT;
    int st = js_finish(p, &out);
    const char *text = moat_buf_str(&out);
    assert_int_equal(st, 0);
    assert_non_null(strstr(text, "result: 0 violations"));
    assert_true(js_accepted(text) >= MIN_ORDERS);
    moat_buf_release(&out);

    /* The relays republished: the streams are back. */
    json_int_t messages;
    assert_true(js_jsz(&streams, &messages));
    assert_true(streams >= 4);
    /* Every consumer's view equals a rebuild from its sources. */
    static const char *const consumers[] = {"orders", "inventory", "payments",
                                            "notifications", "search"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(consumers); i++) {
        int rc = js_run(h_fmt("%s/moat events replay --verify %s -f %s "
                              "2>&1",
                              MOAT_BIN_DIR, consumers[i], dep.file),
                        &out);
        const char *t = moat_buf_str(&out);
        if (strstr(t, "501") || strstr(t, "not support")) {
            fprintf(stderr, "%s: no verification, skipped\n", consumers[i]);
        } else {
            assert_int_equal(rc, 0);
        }
        moat_buf_release(&out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_saga_on_jetstream),
        cmocka_unit_test(test_wipe_storage_mid_run),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
