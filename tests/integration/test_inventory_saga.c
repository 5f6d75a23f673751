/*
 * test_inventory_saga.c - inventory as a participant of the order saga
 * (docs/saga.md): moat-inventory as a real process consuming the
 * commands of a test feed standing in for orders (h_feed_*), and its
 * replies read back from its own feed. Reserve, out of stock, the
 * per-customer cap, release of a committed order (a return), a late
 * reserve after its release, duplicate and malformed commands, exactly
 * once across a SIGKILL, the audit listings and the consumer's status.
 *
 * One inventory process and one feed serve the whole group (the crash
 * test replaces the process); each test uses orders and SKUs of its own.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_inventory_saga test_reserve_replies
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static struct {
    char *tmp;      /* temporary directory of the run (owned) */
    char *inv_data; /* inventory's data directory inside tmp (owned) */
    struct h_feed *orders;
    struct h_service inv;
    const char *env[3]; /* inventory's extra environment */
    char orders_env[128];
} F;

/* ---- helpers ---- */

#define UNIQUE_POOL 64
/* "<prefix>-<8 hex>": ids of a test's own. */
static const char *unique(const char *prefix)
{
    static char pool[UNIQUE_POOL][48];
    static unsigned next;
    unsigned char rnd[4];
    char hex[9];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(hex, rnd, sizeof(rnd));
    char *out = pool[next++ % UNIQUE_POOL];
    snprintf(out, sizeof(pool[0]), "%s-%s", prefix, hex);
    return out;
}

static void unique_into(char out[48], const char *prefix)
{
    snprintf(out, 48, "%s", unique(prefix));
}

/* Strict, unlike h_jint and h_jstr: a member missing or of another type
 * fails the test, and the tests rely on that (the types of every answer's
 * members are part of what they check). */
static int64_t jint(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", key);
    return json_integer_value(v);
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s)
        fail_msg("\"%s\" is not a string", key);
    return s;
}

static bool jtrue(const json_t *o, const char *key)
{
    return json_is_true(json_object_get(o, key));
}

static json_t *get_json(const char *url, long status)
{
    struct h_resp r;
    h_get(&r, url);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static void set_stock(const char *sku, int64_t on_hand)
{
    struct h_resp r;
    h_send_json(&r, "PUT", h_fmt("%s/v1/stock/%s", F.inv.url, sku),
                h_fmt("{\"on_hand\": %lld}", (long long)on_hand), NULL);
    if (r.status != 200 && r.status != 201)
        h_assert_status(&r, 201);
    h_resp_release(&r);
}

static void assert_stock(const char *sku, int64_t on_hand, int64_t reserved,
                         int64_t sold)
{
    json_t *s = get_json(h_fmt("%s/v1/stock/%s", F.inv.url, sku), 200);
    if (jint(s, "on_hand") != on_hand || jint(s, "reserved") != reserved ||
        jint(s, "sold") != sold)
        fail_msg("%s: on_hand %lld reserved %lld sold %lld, want %lld %lld "
                 "%lld",
                 sku, (long long)jint(s, "on_hand"),
                 (long long)jint(s, "reserved"), (long long)jint(s, "sold"),
                 (long long)on_hand, (long long)reserved, (long long)sold);
    json_decref(s);
}

static int64_t publish_reserve(const char *order, const char *customer,
                               const char *lines)
{
    return h_feed_publish(F.orders, "ReserveStock", order,
                          h_fmt("{\"order_id\": \"%s\", \"customer_id\": "
                                "\"%s\", \"lines\": %s}",
                                order, customer, lines));
}

static int64_t publish_release(const char *order)
{
    return h_feed_publish(
        F.orders, "ReleaseStock", order,
        h_fmt("{\"order_id\": \"%s\", \"reason\": \"payment_declined\"}",
              order));
}

static int64_t publish_commit(const char *order)
{
    return h_feed_publish(F.orders, "CommitStock", order,
                          h_fmt("{\"order_id\": \"%s\"}", order));
}

/* inventory's consumer status for orders (caller frees). */
static json_t *consumer_source(void)
{
    json_t *j = get_json(h_fmt("%s/v1/admin/consumer", F.inv.url), 200);
    json_t *src = json_array_get(json_object_get(j, "sources"), 0);
    if (!src)
        fail_msg("no source in /v1/admin/consumer");
    json_incref(src);
    json_decref(j);
    return src;
}

/* Inventory's cursor on orders. */
static int64_t cursor_now(void)
{
    json_t *src = consumer_source();
    int64_t cursor = jint(src, "cursor");
    json_decref(src);
    return cursor;
}

/* Wait until inventory's cursor on orders reaches seq. */
static void wait_applied(int64_t seq)
{
    H_WAIT_UNTIL(cursor_now() >= seq, H_WAIT_MS,
                 "inventory's cursor (%lld) to reach %lld",
                 (long long)cursor_now(), (long long)seq);
}

/* The consumer's state for orders is s. */
static bool consumer_state_is(const char *s)
{
    json_t *src = consumer_source();
    bool is = strcmp(jstr(src, "state"), s) == 0;
    json_decref(src);
    return is;
}

/* Every event of inventory's feed (caller frees the array). */
static json_t *all_events(void)
{
    json_t *all = json_array();
    int64_t after = 0;
    for (;;) {
        json_t *j = get_json(h_fmt("%s/v1/events?after=%lld&limit=1000",
                                   F.inv.url, (long long)after),
                             200);
        json_t *evs = json_object_get(j, "events");
        size_t n = json_array_size(evs);
        json_array_extend(all, evs);
        after = jint(j, "next_after");
        json_decref(j);
        if (n == 0)
            return all;
    }
}

/* The events of subject (an order) of type (NULL: all types). */
static json_t *events_of(json_t *all, const char *subject, const char *type)
{
    json_t *out = json_array();
    size_t i;
    json_t *ev;
    json_array_foreach(all, i, ev)
    {
        if (strcmp(jstr(ev, "subject"), subject) == 0 &&
            (!type || strcmp(jstr(ev, "type"), type) == 0))
            json_array_append(out, ev);
    }
    return out;
}

/* The data of the only reply of order of type; fails when there is not
 * exactly one. Caller frees. */
static json_t *the_reply(const char *order, const char *type)
{
    json_t *all = all_events();
    json_t *evs = events_of(all, order, type);
    if (json_array_size(evs) != 1)
        fail_msg("%zu %s events for %s, want 1", json_array_size(evs), type,
                 order);
    json_t *data = json_incref(json_object_get(json_array_get(evs, 0), "data"));
    json_decref(evs);
    json_decref(all);
    return data;
}

/* The number of inventory events about order (every type). */
static size_t count_events(const char *order, const char *type)
{
    json_t *all = all_events();
    json_t *evs = events_of(all, order, type);
    size_t n = json_array_size(evs);
    json_decref(evs);
    json_decref(all);
    return n;
}

static const char *inv_env(void)
{
    return F.orders_env;
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("inventory-saga");
    F.inv_data = moat_xasprintf("%s/inventory-data", F.tmp);
    F.orders = h_feed_start("orders", F.tmp);
    snprintf(F.orders_env, sizeof(F.orders_env), "MOAT_INVENTORY_ORDERS_URL=%s",
             h_feed_url(F.orders));
    F.env[0] = inv_env();
    F.env[1] = NULL;
    if (h_service_start(&F.inv, "inventory", F.tmp, F.inv_data, F.env) != 0)
        return -1;
    h_auto_service_token(F.inv.url, "inventory", "usr_admin", "admin");
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.inv);
    if (rc != 0)
        print_error("inventory must exit 0 on SIGTERM, got %d\n", rc);
    h_service_release(&F.inv);
    h_feed_stop(F.orders);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.inv_data);
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_reserve_replies(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], order[48];
    unique_into(sku, "MUG");
    unique_into(order, "ord");
    set_stock(sku, 10);
    wait_applied(publish_reserve(
        order, "usr_1", h_fmt("[{\"sku\": \"%s\", \"quantity\": 3}]", sku)));

    json_t *d = the_reply(order, "StockReserved");
    assert_string_equal(jstr(d, "order_id"), order);
    assert_string_equal(jstr(d, "customer_id"), "usr_1");
    assert_string_equal(jstr(d, "state"), "held");
    assert_int_equal(json_array_size(json_object_get(d, "lines")), 1);
    json_decref(d);
    assert_int_equal(count_events(order, "StockReservationFailed"), 0);
    assert_stock(sku, 10, 3, 0);

    /* The same reservation asked again: nothing new. */
    wait_applied(publish_reserve(
        order, "usr_1", h_fmt("[{\"sku\": \"%s\", \"quantity\": 3}]", sku)));
    assert_int_equal(count_events(order, NULL), 1);
    assert_stock(sku, 10, 3, 0);

    /* Other lines for the same order: refused as a mismatch. */
    wait_applied(publish_reserve(
        order, "usr_1", h_fmt("[{\"sku\": \"%s\", \"quantity\": 4}]", sku)));
    d = the_reply(order, "StockReservationFailed");
    assert_string_equal(jstr(d, "reason"), "mismatch");
    json_decref(d);

    /* An ordinary release: held units back, no return, no tombstone. */
    wait_applied(publish_release(order));
    d = the_reply(order, "StockReleased");
    assert_string_equal(jstr(d, "state"), "released");
    assert_false(jtrue(d, "returned"));
    assert_false(jtrue(d, "tombstone"));
    json_decref(d);
    assert_stock(sku, 10, 0, 0);
}

static void test_out_of_stock(void **state)
{
    MOAT_UNUSED(state);
    char a[48], b[48], order[48];
    unique_into(a, "A");
    unique_into(b, "B");
    unique_into(order, "ord");
    set_stock(a, 2);
    set_stock(b, 100);
    wait_applied(publish_reserve(
        order, "usr_2",
        h_fmt("[{\"sku\": \"%s\", \"quantity\": 5}, {\"sku\": \"%s\", "
              "\"quantity\": 1}]",
              a, b)));
    json_t *d = the_reply(order, "StockReservationFailed");
    assert_string_equal(jstr(d, "order_id"), order);
    assert_string_equal(jstr(d, "reason"), "out_of_stock");
    json_t *sh = json_object_get(d, "shortages");
    assert_int_equal(json_array_size(sh), 1);
    assert_string_equal(jstr(json_array_get(sh, 0), "sku"), a);
    assert_int_equal(jint(json_array_get(sh, 0), "requested"), 5);
    assert_int_equal(jint(json_array_get(sh, 0), "available"), 2);
    json_decref(d);
    assert_int_equal(count_events(order, "StockReserved"), 0);
    /* All or none: b was not touched either. */
    assert_stock(a, 2, 0, 0);
    assert_stock(b, 100, 0, 0);
    json_decref(
        get_json(h_fmt("%s/v1/reservations/%s", F.inv.url, order), 404));
}

static void test_reservation_limit(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], customer[48], orders[6][48];
    unique_into(sku, "CAP");
    unique_into(customer, "usr");
    set_stock(sku, 100);
    int64_t seq = 0;
    for (int i = 0; i < 6; i++) {
        unique_into(orders[i], "ord");
        seq =
            publish_reserve(orders[i], customer,
                            h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}]", sku));
    }
    wait_applied(seq);
    for (int i = 0; i < 5; i++)
        assert_int_equal(count_events(orders[i], "StockReserved"), 1);
    json_t *d = the_reply(orders[5], "StockReservationFailed");
    assert_string_equal(jstr(d, "reason"), "reservation_limit");
    json_decref(d);
    assert_stock(sku, 100, 5, 0);
}

static void test_release_after_commit_returns(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], order[48];
    unique_into(sku, "RET");
    unique_into(order, "ord");
    set_stock(sku, 10);
    publish_reserve(order, "usr_3",
                    h_fmt("[{\"sku\": \"%s\", \"quantity\": 4}]", sku));
    wait_applied(publish_commit(order));
    json_t *d = the_reply(order, "StockCommitted");
    assert_string_equal(jstr(d, "state"), "committed");
    json_decref(d);
    assert_stock(sku, 6, 0, 4);

    /* A customer cancel of a confirmed order: the units come back. */
    wait_applied(publish_release(order));
    d = the_reply(order, "StockReleased");
    assert_string_equal(jstr(d, "state"), "released");
    assert_true(jtrue(d, "returned"));
    assert_false(jtrue(d, "tombstone"));
    json_decref(d);
    assert_stock(sku, 10, 0, 0);
    json_t *res =
        get_json(h_fmt("%s/v1/reservations/%s", F.inv.url, order), 200);
    assert_string_equal(jstr(res, "state"), "released");
    assert_true(jtrue(res, "returned"));
    json_decref(res);

    /* The log explains it: commit -4 then return +4. */
    json_t *page =
        get_json(h_fmt("%s/v1/adjustments?after=0&limit=500", F.inv.url), 200);
    json_t *next;
    json_t *kinds = json_array();
    for (;;) {
        size_t i;
        json_t *a;
        json_array_foreach(json_object_get(page, "adjustments"), i, a)
        {
            if (strcmp(jstr(a, "sku"), sku) == 0)
                json_array_append(kinds, a);
        }
        next = json_object_get(page, "next_after");
        if (json_is_null(next))
            break;
        json_t *p2 =
            get_json(h_fmt("%s/v1/adjustments?after=%lld&limit=500", F.inv.url,
                           (long long)json_integer_value(next)),
                     200);
        json_decref(page);
        page = p2;
    }
    json_decref(page);
    assert_int_equal(json_array_size(kinds), 3); /* set, commit, return */
    json_t *ret = json_array_get(kinds, 2);
    assert_string_equal(jstr(json_array_get(kinds, 1), "kind"), "commit");
    assert_string_equal(jstr(ret, "kind"), "return");
    assert_int_equal(jint(ret, "delta"), 4);
    assert_int_equal(jint(ret, "on_hand_before"), 6);
    assert_int_equal(jint(ret, "on_hand_after"), 10);
    assert_string_equal(jstr(ret, "user"), "orders");
    json_decref(kinds);

    /* Released again: nothing new; a commit now is refused silently. */
    size_t before = count_events(order, NULL);
    publish_release(order);
    wait_applied(publish_commit(order));
    assert_int_equal(count_events(order, NULL), before);
    assert_stock(sku, 10, 0, 0);
}

static void test_release_before_reserve(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], order[48];
    unique_into(sku, "LATE");
    unique_into(order, "ord");
    set_stock(sku, 5);
    wait_applied(publish_release(order));
    json_t *d = the_reply(order, "StockReleased");
    assert_string_equal(jstr(d, "state"), "absent");
    assert_true(jtrue(d, "tombstone"));
    assert_false(jtrue(d, "returned"));
    json_decref(d);

    wait_applied(publish_reserve(
        order, "usr_4", h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}]", sku)));
    d = the_reply(order, "StockReservationFailed");
    assert_string_equal(jstr(d, "reason"), "released");
    json_decref(d);
    assert_int_equal(count_events(order, "StockReserved"), 0);
    assert_stock(sku, 5, 0, 0);

    /* A second release of the tombstone writes nothing. */
    wait_applied(publish_release(order));
    assert_int_equal(count_events(order, "StockReleased"), 1);
}

static void test_duplicate_commands(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], order[48];
    unique_into(sku, "DUP");
    unique_into(order, "ord");
    set_stock(sku, 20);
    const char *lines = h_fmt("[{\"sku\": \"%s\", \"quantity\": 2}]", sku);
    char copy[256];
    snprintf(copy, sizeof(copy), "%s", lines);
    publish_reserve(order, "usr_5", copy);
    publish_reserve(order, "usr_5", copy);
    publish_commit(order);
    wait_applied(publish_commit(order));
    assert_int_equal(count_events(order, "StockReserved"), 1);
    assert_int_equal(count_events(order, "StockCommitted"), 1);
    assert_int_equal(count_events(order, "StockReservationFailed"), 0);
    assert_stock(sku, 18, 0, 2);

    /* A commit of an order never reserved: nothing, and the feed goes on. */
    char ghost[48];
    unique_into(ghost, "ord");
    wait_applied(publish_commit(ghost));
    assert_int_equal(count_events(ghost, NULL), 0);
}

static void test_malformed_does_not_block(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], bad[48], good[48], extra[48];
    unique_into(sku, "BAD");
    unique_into(bad, "ord");
    unique_into(good, "ord");
    unique_into(extra, "ord");
    set_stock(sku, 10);

    /* Bad data with an order id: answered "invalid". */
    h_feed_publish(F.orders, "ReserveStock", bad,
                   h_fmt("{\"order_id\": \"%s\", \"customer_id\": \"usr_6\", "
                         "\"lines\": [{\"sku\": \"%s\", \"quantity\": 0}]}",
                         bad, sku));
    /* Data that is not an object: answered to the subject. */
    char nodata[48];
    unique_into(nodata, "ord");
    h_feed_publish(F.orders, "ReserveStock", nodata, "[]");
    /* Nothing to answer to: skipped. */
    h_feed_publish(F.orders, "ReserveStock", "x y", "{\"lines\": 3}");
    h_feed_publish(F.orders, "ReleaseStock", "nobody", "{}");
    h_feed_publish(F.orders, "CommitStock", "nobody", "[1, 2]");
    /* Types inventory does not consume only move the cursor. */
    h_feed_publish(F.orders, "OrderPlaced", good, "{\"order_id\": \"x\"}");
    /* A member a newer orders might add is no reason to refuse. */
    publish_reserve(extra, "usr_6",
                    h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}], "
                          "\"priority\": \"high\"",
                          sku));
    wait_applied(publish_reserve(
        good, "usr_6", h_fmt("[{\"sku\": \"%s\", \"quantity\": 2}]", sku)));

    json_t *d = the_reply(bad, "StockReservationFailed");
    assert_string_equal(jstr(d, "reason"), "invalid");
    assert_non_null(strstr(jstr(d, "detail"), "/lines/0/quantity"));
    json_decref(d);
    d = the_reply(nodata, "StockReservationFailed");
    assert_string_equal(jstr(d, "reason"), "invalid");
    json_decref(d);
    assert_int_equal(count_events(good, "StockReserved"), 1);
    assert_int_equal(count_events(extra, "StockReserved"), 1);
    assert_int_equal(count_events("nobody", NULL), 0);
    assert_stock(sku, 10, 3, 0);
}

#define CRASH_ORDERS 200

static void test_sigkill_exactly_once(void **state)
{
    MOAT_UNUSED(state);
    char a[48], b[48], prefix[48];
    unique_into(a, "KA");
    unique_into(b, "KB");
    unique_into(prefix, "crash");
    set_stock(a, 1000);
    set_stock(b, 1000);
    int64_t want_a = 0, want_b = 0, last = 0;
    for (int i = 0; i < CRASH_ORDERS; i++) {
        int qa = 1 + i % 3;
        const char *lines =
            i % 2 ? h_fmt("[{\"sku\": \"%s\", \"quantity\": %d}, {\"sku\": "
                          "\"%s\", \"quantity\": 1}]",
                          a, qa, b)
                  : h_fmt("[{\"sku\": \"%s\", \"quantity\": %d}]", a, qa);
        char lines_copy[256];
        snprintf(lines_copy, sizeof(lines_copy), "%s", lines);
        last = publish_reserve(h_fmt("%s-%03d", prefix, i),
                               h_fmt("usr-%s-%03d", prefix, i), lines_copy);
        want_a += qa;
        want_b += i % 2;
        if (i == CRASH_ORDERS / 2)
            h_service_kill(&F.inv); /* mid-stream, wherever it is */
    }
    assert_int_equal(h_service_restart(&F.inv, F.env), 0);
    wait_applied(last);

    json_t *all = all_events();
    for (int i = 0; i < CRASH_ORDERS; i++) {
        const char *order = h_fmt("%s-%03d", prefix, i);
        json_t *evs = events_of(all, order, NULL);
        if (json_array_size(evs) != 1 ||
            strcmp(jstr(json_array_get(evs, 0), "type"), "StockReserved") != 0)
            fail_msg("%s: %zu events, want one StockReserved", order,
                     json_array_size(evs));
        json_decref(evs);
    }
    json_decref(all);
    assert_stock(a, 1000, want_a, 0);
    assert_stock(b, 1000, want_b, 0);

    json_t *src = consumer_source();
    assert_int_equal(jint(src, "lag_events"), 0);
    json_decref(src);
    struct h_resp r;
    h_get_metrics(&r, F.inv.url);
    h_assert_status(&r, 200);
    assert_non_null(
        strstr(r.body, "moat_consumer_applied_total{source=\"orders\"}"));
    assert_non_null(
        strstr(r.body, "moat_consumer_lag_events{source=\"orders\"} 0"));
    h_resp_release(&r);
}

/* Walk a listing with limit; returns every item (caller frees) and checks
 * that keys strictly increase and that next_after is the last key. */
static json_t *walk(const char *path, const char *member, const char *key,
                    int limit)
{
    json_t *items = json_array();
    char after[80] = "";
    for (int pages = 0;; pages++) {
        if (pages > 100000)
            fail_msg("%s never ends", path);
        json_t *page = get_json(h_fmt("%s%s?limit=%d%s%s", F.inv.url, path,
                                      limit, after[0] ? "&after=" : "", after),
                                200);
        json_t *list = json_object_get(page, member);
        assert_true(json_array_size(list) <= (size_t)limit);
        json_array_extend(items, list);
        json_t *next = json_object_get(page, "next_after");
        if (json_is_null(next)) {
            json_decref(page);
            break;
        }
        assert_int_equal(json_array_size(list), limit);
        json_t *last = json_object_get(json_array_get(list, limit - 1), key);
        assert_true(json_equal(last, next));
        if (json_is_string(next))
            snprintf(after, sizeof(after), "%s", json_string_value(next));
        else
            snprintf(after, sizeof(after), "%lld",
                     (long long)json_integer_value(next));
        json_decref(page);
    }
    for (size_t i = 1; i < json_array_size(items); i++) {
        json_t *p = json_object_get(json_array_get(items, i - 1), key);
        json_t *q = json_object_get(json_array_get(items, i), key);
        if (json_is_string(p))
            assert_true(strcmp(json_string_value(p), json_string_value(q)) < 0);
        else
            assert_true(json_integer_value(p) < json_integer_value(q));
    }
    return items;
}

static void test_list_routes(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], order[48];
    unique_into(sku, "LIST");
    set_stock(sku, 50);
    for (int i = 0; i < 3; i++) {
        unique_into(order, "lst");
        publish_reserve(order, h_fmt("usr-l%d", i),
                        h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}]", sku));
    }
    wait_applied(publish_reserve(
        order, "usr-l2", h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}]", sku)));

    json_t *small = walk("/v1/reservations", "reservations", "order_id", 7);
    json_t *big = walk("/v1/reservations", "reservations", "order_id", 500);
    assert_true(json_array_size(small) >= 3);
    assert_true(json_equal(small, big));
    /* The same JSON as the single GET. */
    json_t *one =
        get_json(h_fmt("%s/v1/reservations/%s", F.inv.url, order), 200);
    bool found = false;
    size_t i;
    json_t *res;
    json_array_foreach(big, i, res)
    {
        if (strcmp(jstr(res, "order_id"), order) == 0)
            found = json_equal(res, one);
    }
    assert_true(found);
    json_decref(one);
    json_decref(small);
    json_decref(big);

    json_t *adj = walk("/v1/adjustments", "adjustments", "id", 3);
    json_t *adj_big = walk("/v1/adjustments", "adjustments", "id", 500);
    assert_true(json_equal(adj, adj_big));
    json_t *first = json_array_get(adj, 0);
    assert_int_equal(jint(first, "id"), 1);
    static const char *const keys[] = {"id",
                                       "sku",
                                       "kind",
                                       "delta",
                                       "reason",
                                       "on_hand_before",
                                       "on_hand_after",
                                       "user",
                                       "at"};
    for (size_t k = 0; k < MOAT_ARRAY_LEN(keys); k++)
        assert_non_null(json_object_get(first, keys[k]));
    assert_int_equal(json_object_size(first), MOAT_ARRAY_LEN(keys));
    json_decref(adj);
    json_decref(adj_big);

    /* A service acting for nobody may read them too; one acting for a
     * customer may not. */
    const char *svc_hdr[] = {h_service_token("inventory", NULL, NULL), NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/v1/reservations?limit=1", F.inv.url), svc_hdr,
           NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    const char *cust_hdr[] = {h_service_token("inventory", "usr_9", "customer"),
                              NULL};
    h_http(&r, "GET", h_fmt("%s/v1/adjustments", F.inv.url), cust_hdr, NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
}

static void test_list_bad_params(void **state)
{
    MOAT_UNUSED(state);
    static const struct {
        const char *query, *param;
    } res_cases[] =
        {
            {"limit=0", "limit"},         {"limit=501", "limit"},
            {"limit=abc", "limit"},       {"limit=1&limit=2", "limit"},
            {"after=a%20b", "after"},     {"after=", "after"},
            {"after=a&after=b", "after"}, {"cursor=x", "cursor"},
        },
      adj_cases[] = {
          {"after=-1", "after"},
          {"after=x", "after"},
          {"limit=1000", "limit"},
          {"sku=A", "sku"},
      };
    struct h_resp r;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(res_cases); i++) {
        h_get(&r,
              h_fmt("%s/v1/reservations?%s", F.inv.url, res_cases[i].query));
        h_assert_problem(&r, 400);
        h_assert_problem_error(&r, "parameter", res_cases[i].param);
        h_resp_release(&r);
    }
    for (size_t i = 0; i < MOAT_ARRAY_LEN(adj_cases); i++) {
        h_get(&r, h_fmt("%s/v1/adjustments?%s", F.inv.url, adj_cases[i].query));
        h_assert_problem(&r, 400);
        h_assert_problem_error(&r, "parameter", adj_cases[i].param);
        h_resp_release(&r);
    }
    h_get(&r, h_fmt("%s/v1/admin/consumer?x=1", F.inv.url));
    h_assert_problem(&r, 400);
    h_resp_release(&r);
}

static void test_consumer_status(void **state)
{
    MOAT_UNUSED(state);
    char order[48];
    unique_into(order, "ord");
    int64_t seq = publish_release(order);
    wait_applied(seq);
    json_t *j = get_json(h_fmt("%s/v1/admin/consumer", F.inv.url), 200);
    assert_false(jtrue(j, "paused"));
    assert_false(jtrue(j, "verifying"));
    json_t *src = json_array_get(json_object_get(j, "sources"), 0);
    assert_string_equal(jstr(src, "source"), "orders");
    assert_int_equal(jint(src, "cursor"), seq);
    assert_true(json_is_null(json_object_get(src, "error")));
    json_t *dl = json_object_get(src, "dead_letters");
    assert_int_equal(jint(dl, "failed"), 0);
    assert_int_equal(jint(dl, "blocked"), 0);
    const char *st = jstr(src, "state");
    assert_true(strcmp(st, "waiting") == 0 || strcmp(st, "idle") == 0);
    json_decref(j);
}

static json_t *post_json(const char *url, long status)
{
    struct h_resp r;
    h_http(&r, "POST", url, NULL, NULL, 0);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* The dead letters of order (caller frees the list's object). */
static json_t *dead_letters_of(const char *order)
{
    return get_json(h_fmt("%s/v1/admin/dead-letters?source=orders&subject=%s",
                          F.inv.url, order),
                    200);
}

/*
 * A command its handler cannot apply (the test build's poison hook stands
 * in for a bug) is retried, parked as a dead letter, and the order's
 * later command is parked behind it while other orders flow on; once the
 * fix is "deployed", a redrive applies both, in order, with their replies.
 */
static void test_poison_parked_and_redriven(void **state)
{
    MOAT_UNUSED(state);
#ifndef MOAT_TEST_HOOKS
    print_message("skipped: needs a MOAT_TEST_HOOKS build (poison hook)\n");
    return;
#endif
    char sku[48], poison[48], other[48];
    unique_into(sku, "P");
    unique_into(poison, "poison");
    unique_into(other, "ord");
    set_stock(sku, 10);
    const char *lines = h_fmt("[{\"sku\": \"%s\", \"quantity\": 3}]", sku);
    char lines_copy[256];
    snprintf(lines_copy, sizeof(lines_copy), "%s", lines);
    int64_t first = publish_reserve(poison, "usr_p", lines_copy);
    int64_t behind = publish_commit(poison);
    wait_applied(publish_reserve(other, "usr_o", lines_copy));

    /* The other order went through; the poisoned one is parked, its
     * commit blocked behind it. */
    json_decref(the_reply(other, "StockReserved"));
    assert_int_equal(count_events(poison, NULL), 0);
    assert_stock(sku, 10, 3, 0);
    json_t *dl = dead_letters_of(poison);
    assert_int_equal(jint(dl, "total"), 2);
    json_t *list = json_object_get(dl, "dead_letters");
    json_t *a = json_array_get(list, 0), *b = json_array_get(list, 1);
    assert_int_equal(jint(a, "seq"), first);
    assert_string_equal(jstr(a, "state"), "failed");
    assert_string_equal(jstr(a, "type"), "ReserveStock");
    assert_non_null(strstr(jstr(a, "error"), "poison"));
    assert_int_equal(jint(a, "attempts"), 3);
    assert_int_equal(jint(b, "seq"), behind);
    assert_string_equal(jstr(b, "state"), "blocked");
    json_decref(dl);
    json_t *src = consumer_source();
    json_t *counts = json_object_get(src, "dead_letters");
    assert_true(jint(counts, "failed") >= 1);
    assert_true(jint(counts, "blocked") >= 1);
    json_decref(src);

    /* Still poisoned: the redrive stops at the first, nothing changes. */
    json_t *r = post_json(
        h_fmt("%s/v1/admin/dead-letters/redrive?source=orders&subject=%s",
              F.inv.url, poison),
        200);
    assert_int_equal(jint(r, "applied"), 0);
    assert_int_equal(json_array_size(json_object_get(r, "failed")), 1);
    assert_int_equal(jint(r, "remaining"), 2);
    json_decref(r);

    /* "Deploy the fix", redrive: both applied in order, replies out. */
    json_decref(post_json(h_fmt("%s/_test/heal", F.inv.url), 200));
    r = post_json(
        h_fmt("%s/v1/admin/dead-letters/redrive?source=orders&subject=%s",
              F.inv.url, poison),
        200);
    assert_int_equal(jint(r, "applied"), 2);
    assert_int_equal(json_array_size(json_object_get(r, "failed")), 0);
    assert_int_equal(jint(r, "remaining"), 0);
    json_decref(r);
    json_decref(the_reply(poison, "StockReserved"));
    json_decref(the_reply(poison, "StockCommitted"));
    assert_stock(sku, 7, 3, 3);
    dl = dead_letters_of(poison);
    assert_int_equal(jint(dl, "total"), 0);
    json_decref(dl);
}

static json_t *verify(void)
{
    return post_json(h_fmt("%s/v1/admin/replay?verify=1", F.inv.url), 200);
}

/*
 * Replay verification rebuilds inventory's reservations from orders'
 * commands in a scratch environment and finds it identical to the live
 * one; stock raised after a command it refused is a difference it names
 * (the commands alone no longer decide the outcome). A plain replay is
 * refused: stock is inventory's own truth, not a view to reset.
 */
static void test_replay_verify(void **state)
{
    MOAT_UNUSED(state);
    char sku[48], order[48];
    unique_into(sku, "V");
    unique_into(order, "ord");
    set_stock(sku, 4);
    char lines[128];
    snprintf(lines, sizeof(lines), "[{\"sku\": \"%s\", \"quantity\": 2}]", sku);
    wait_applied(publish_reserve(order, "usr_v", lines));

    json_t *v = verify();
    if (!jtrue(v, "identical")) {
        char *t = json_dumps(v, JSON_INDENT(2));
        fail_msg("replay verification found differences: %s", t);
    }
    assert_true(jint(v, "events") >= 1);
    assert_true(jint(json_object_get(v, "sources"), "orders") >= 1);
    json_decref(v);
    json_t *st = get_json(h_fmt("%s/v1/admin/consumer", F.inv.url), 200);
    assert_false(jtrue(st, "verifying"));
    assert_false(jtrue(st, "paused"));
    json_decref(st);

    /* Refused for want of stock, then stock came: the rebuild, seeded
     * with today's stock, holds it. */
    char late[48];
    unique_into(late, "ord");
    char big[128];
    snprintf(big, sizeof(big), "[{\"sku\": \"%s\", \"quantity\": 50}]", sku);
    wait_applied(publish_reserve(late, "usr_v2", big));
    json_decref(the_reply(late, "StockReservationFailed"));
    set_stock(sku, 100);
    v = verify();
    assert_false(jtrue(v, "identical"));
    json_t *diffs = json_object_get(v, "differences");
    bool named = false;
    for (size_t i = 0; i < json_array_size(diffs); i++)
        named = named || strstr(json_string_value(json_array_get(diffs, i)),
                                late) != NULL;
    assert_true(named);
    json_decref(v);
    set_stock(sku, 4); /* what the rebuild would refuse again */

    json_decref(post_json(h_fmt("%s/v1/admin/replay", F.inv.url), 501));
}

/*
 * A fault of inventory's own store holds the feed (nothing is skipped)
 * and is shown in the status; once fixed, the commands apply. The fault
 * is a full LMDB map: a restart with a 1 MiB map filled by stock writes.
 */
static void test_store_full_holds_feed(void **state)
{
    MOAT_UNUSED(state);
    const char *small_env[] = {inv_env(), "MOAT_INVENTORY_MAPSIZE_MB=1", NULL};
    assert_int_equal(h_service_restart(&F.inv, small_env), 0);
    char reason[201];
    memset(reason, 'r', 200);
    reason[200] = '\0';
    char prefix[48];
    unique_into(prefix, "FILL");
    bool full = false;
    for (int i = 0; i < 20000 && !full; i++) {
        struct h_resp r;
        h_send_json(
            &r, "PUT", h_fmt("%s/v1/stock/%s-%05d", F.inv.url, prefix, i),
            h_fmt("{\"on_hand\": 5, \"reason\": \"%s\"}", reason), NULL);
        full = r.status == 503;
        if (!full)
            h_assert_status(&r, 201);
        h_resp_release(&r);
    }
    assert_true(full);

    char order[48];
    unique_into(order, "ord");
    int64_t seq = publish_reserve(
        order, "usr_full",
        h_fmt("[{\"sku\": \"%s-00000\", \"quantity\": 1}]", prefix));
    H_WAIT_UNTIL(consumer_state_is("backoff"), H_WAIT_MS,
                 "the consumer to report the full store");
    json_t *src = consumer_source();
    assert_non_null(strstr(jstr(src, "error"), "database"));
    assert_true(jint(src, "cursor") < seq);
    json_decref(src);

    /* A bigger map: the held command applies, once. */
    assert_int_equal(h_service_restart(&F.inv, F.env), 0);
    wait_applied(seq);
    assert_int_equal(count_events(order, "StockReserved"), 1);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_replies),
        cmocka_unit_test(test_out_of_stock),
        cmocka_unit_test(test_reservation_limit),
        cmocka_unit_test(test_release_after_commit_returns),
        cmocka_unit_test(test_release_before_reserve),
        cmocka_unit_test(test_duplicate_commands),
        cmocka_unit_test(test_malformed_does_not_block),
        cmocka_unit_test(test_poison_parked_and_redriven),
        cmocka_unit_test(test_replay_verify),
        cmocka_unit_test(test_sigkill_exactly_once),
        cmocka_unit_test(test_list_routes),
        cmocka_unit_test(test_list_bad_params),
        cmocka_unit_test(test_consumer_status),
        cmocka_unit_test(test_store_full_holds_feed),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
