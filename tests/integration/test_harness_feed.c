/*
 * test_harness_feed.c - the harness's test event feed (h_feed_*) serves
 * what the test publishes, in order, like a service's own feed.
 */
#include "harness.h"

static void test_feed_serves_published_events(void **state)
{
    (void)state;
    char *tmp = h_tmpdir_new("feed");
    struct h_feed *f = h_feed_start("orders", tmp);
    int64_t s1 =
        h_feed_publish(f, "ReserveStock", "ord_1", "{\"order_id\": \"ord_1\"}");
    int64_t s2 = h_feed_publish(f, "ReleaseStock", "ord_1",
                                "{\"order_id\": \"ord_1\", \"reason\": \"x\"}");
    assert_int_equal(s1, 1);
    assert_int_equal(s2, 2);

    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/events?after=0", h_feed_url(f)));
    h_assert_status(&r, 200);
    json_t *body = h_resp_json(&r);
    json_t *evs = json_object_get(body, "events");
    assert_int_equal(json_array_size(evs), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(evs, 1), "type")),
        "ReleaseStock");
    assert_string_equal(json_string_value(json_object_get(body, "source")),
                        "orders");
    json_decref(body);
    h_resp_release(&r);

    h_feed_stop(f);
    h_rmtree(tmp);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_feed_serves_published_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
