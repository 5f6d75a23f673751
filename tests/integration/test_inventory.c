/*
 * test_inventory.c - the inventory service end to end: moat-inventory as a
 * real process on a free loopback port, called directly with service
 * tokens acting for an administrator. Setting and adjusting stock, strict
 * validation, no stock below zero, StockChanged events on its feed in
 * commit order, data and sequence numbers surviving a restart, and the
 * modes of its LMDB files.
 *
 * One process serves the whole group (the restart test replaces it);
 * tests never depend on each other's data: each uses SKUs of its own.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_inventory test_adjust
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"

static struct {
    char *tmp;      /* temporary directory of the run (owned) */
    char *inv_data; /* inventory's data directory inside tmp (owned) */
    struct h_service inv;
} F;

/* ---- helpers ---- */

/* "<prefix>-<8 hex>": SKUs of a test's own, in a pool apart from h_fmt's. */
#define UNIQUE_POOL 64
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

/* Act as an administrator for the next requests (service tokens live
 * 60 s, so each test takes a fresh one). */
static void as_admin(void)
{
    h_auto_header(F.inv.url,
                  h_service_token("inventory", "usr_admin", "admin"));
}

static const char *stock_url(const char *sku)
{
    return h_fmt("%s/v1/stock/%s", F.inv.url, sku);
}

static const char *adjust_url(const char *sku)
{
    return h_fmt("%s/v1/stock/%s/adjustments", F.inv.url, sku);
}

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

/* PUT {on_hand}; asserts the status and returns the body (caller frees). */
static json_t *set_stock(const char *sku, int64_t on_hand, long status)
{
    struct h_resp r;
    h_send_json(&r, "PUT", stock_url(sku),
                h_fmt("{\"on_hand\": %lld}", (long long)on_hand), NULL);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* POST an adjustment; asserts the status and returns the body. */
static json_t *adjust(const char *sku, int64_t delta, const char *reason,
                      long status)
{
    struct h_resp r;
    h_send_json(&r, "POST", adjust_url(sku),
                h_fmt("{\"delta\": %lld, \"reason\": \"%s\"}", (long long)delta,
                      reason),
                NULL);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static json_t *get_stock(const char *sku, long status)
{
    struct h_resp r;
    h_get(&r, stock_url(sku));
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* The feed's head: the newest sequence number so far. */
static int64_t feed_head(void)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/events?limit=1", F.inv.url));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    int64_t head = jint(j, "head");
    json_decref(j);
    h_resp_release(&r);
    return head;
}

/* The events after `after` (caller frees the array). */
static json_t *feed_after(int64_t after)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/events?after=%lld&limit=1000", F.inv.url,
                    (long long)after));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    json_t *events = json_incref(json_object_get(j, "events"));
    assert_true(json_is_array(events));
    json_decref(j);
    h_resp_release(&r);
    return events;
}

static int start_inventory(void)
{
    if (h_service_start(&F.inv, "inventory", F.tmp, F.inv_data, NULL) != 0)
        return -1;
    as_admin();
    return 0;
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("inventory");
    F.inv_data = moat_xasprintf("%s/inventory-data", F.tmp);
    return start_inventory();
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.inv);
    if (rc != 0)
        print_error("inventory must exit 0 on SIGTERM, got %d (see the log "
                    "above)\n",
                    rc);
    h_service_release(&F.inv);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.inv_data);
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_set_and_get(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    const char *sku = unique("SET");
    json_decref(get_stock(sku, 404));

    struct h_resp r;
    h_send_json(&r, "PUT", stock_url(sku), "{\"on_hand\": 10}", NULL);
    h_assert_status(&r, 201);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    assert_string_equal(h_resp_header(&r, "Location"),
                        h_fmt("/v1/stock/%s", sku));
    json_t *s = h_resp_json(&r);
    assert_string_equal(jstr(s, "sku"), sku);
    assert_int_equal(jint(s, "on_hand"), 10);
    assert_int_equal(jint(s, "reserved"), 0);
    assert_int_equal(jint(s, "available"), 10);
    assert_int_equal(jint(s, "sold"), 0);
    assert_int_equal(jint(s, "version"), 1);
    assert_true(jint(s, "created_at") > 1700000000);
    json_decref(s);
    h_resp_release(&r);

    s = get_stock(sku, 200);
    assert_int_equal(jint(s, "on_hand"), 10);
    json_decref(s);

    /* The same count again changes nothing, not even the version. */
    s = set_stock(sku, 10, 200);
    assert_int_equal(jint(s, "version"), 1);
    json_decref(s);
    s = set_stock(sku, 15, 200);
    assert_int_equal(jint(s, "on_hand"), 15);
    assert_int_equal(jint(s, "version"), 2);
    json_decref(s);

    /* If-Match: the current tag goes through, a stale one is 412. */
    const char *stale[] = {"If-Match: \"v1\"", NULL};
    h_send_json(&r, "PUT", stock_url(sku), "{\"on_hand\": 1}", stale);
    h_assert_problem(&r, 412);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    h_resp_release(&r);
    const char *fresh[] = {"If-Match: \"v2\"", NULL};
    h_send_json(&r, "PUT", stock_url(sku),
                "{\"on_hand\": 1, \"reason\": \"cycle count\"}", fresh);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    s = get_stock(sku, 200);
    assert_int_equal(jint(s, "on_hand"), 1);
    json_decref(s);
}

static void test_adjust(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    const char *sku = unique("ADJ");
    json_decref(set_stock(sku, 10, 201));

    json_t *a = adjust(sku, -3, "damaged in transit", 201);
    json_t *adj = json_object_get(a, "adjustment");
    assert_true(jint(adj, "id") >= 1);
    assert_int_equal(jint(adj, "delta"), -3);
    assert_string_equal(jstr(adj, "reason"), "damaged in transit");
    json_t *st = json_object_get(a, "stock");
    assert_int_equal(jint(st, "on_hand"), 7);
    assert_int_equal(jint(st, "version"), 2);
    int64_t first_id = jint(adj, "id");
    json_decref(a);

    a = adjust(sku, 5, "received", 201);
    assert_int_equal(jint(json_object_get(a, "adjustment"), "id"),
                     first_id + 1);
    json_decref(a);
    json_t *s = get_stock(sku, 200);
    assert_int_equal(jint(s, "on_hand"), 12);
    assert_int_equal(jint(s, "available"), 12);
    assert_int_equal(jint(s, "version"), 3);
    json_decref(s);

    /* Only existing SKUs are adjusted: PUT creates them. */
    json_decref(adjust(unique("NONE"), 1, "received", 404));
}

static void test_no_negative_stock(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    const char *sku = unique("NEG");
    json_decref(set_stock(sku, 2, 201));

    json_t *p = adjust(sku, -3, "shrinkage", 409);
    assert_int_equal(jint(p, "available"), 2);
    assert_string_equal(jstr(p, "sku"), sku);
    json_decref(p);
    json_t *s = get_stock(sku, 200);
    assert_int_equal(jint(s, "on_hand"), 2);
    assert_int_equal(jint(s, "version"), 1);
    json_decref(s);

    p = adjust(sku, -2, "shrinkage", 201);
    assert_int_equal(jint(json_object_get(p, "stock"), "available"), 0);
    json_decref(p);
    json_decref(adjust(sku, -1, "shrinkage", 409));
    /* Nor by a huge adjustment that would wrap around. */
    json_decref(adjust(sku, -1000000000000, "shrinkage", 409));
    json_decref(adjust(sku, 1000000000000, "received", 201));
    json_decref(adjust(sku, 1, "received", 409)); /* above the cap */

    /* A negative count is invalid input, not a conflict. */
    struct h_resp r;
    h_send_json(&r, "PUT", stock_url(sku), "{\"on_hand\": -1}", NULL);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/on_hand");
    h_resp_release(&r);
}

static void test_validation(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    const char *sku = unique("VAL");
    json_decref(set_stock(sku, 5, 201));
    struct h_resp r;

    static const struct {
        const char *body;
        const char *pointer;
    } puts[] = {
        {"{}", "/on_hand"},
        {"{\"on_hand\": \"7\"}", "/on_hand"},
        {"{\"on_hand\": 1.5}", "/on_hand"},
        {"{\"on_hand\": 1000000000001}", "/on_hand"},
        {"{\"on_hand\": 1, \"colour\": \"red\"}", "/colour"},
        {"{\"on_hand\": 1, \"reason\": \"\"}", "/reason"},
        {"[1]", ""},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(puts); i++) {
        h_send_json(&r, "PUT", stock_url(sku), puts[i].body, NULL);
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", puts[i].pointer);
        h_resp_release(&r);
    }
    static const struct {
        const char *body;
        const char *pointer;
    } adjs[] = {
        {"{\"delta\": 0, \"reason\": \"x\"}", "/delta"},
        {"{\"delta\": 1}", "/reason"},
        {"{\"delta\": \"1\", \"reason\": \"x\"}", "/delta"},
        {"{\"reason\": \"x\"}", "/delta"},
        {"{\"delta\": 1, \"reason\": \"x\", \"by\": \"me\"}", "/by"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(adjs); i++) {
        h_send_json(&r, "POST", adjust_url(sku), adjs[i].body, NULL);
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", adjs[i].pointer);
        h_resp_release(&r);
    }
    /* Nothing above changed the stock. */
    json_t *s = get_stock(sku, 200);
    assert_int_equal(jint(s, "version"), 1);
    json_decref(s);

    /* Malformed JSON, wrong media type. */
    h_send_json(&r, "PUT", stock_url(sku), "{\"on_hand\": ", NULL);
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    const char *text[] = {"Content-Type: text/plain", NULL};
    h_http(&r, "PUT", stock_url(sku), text, "{}", 2);
    h_assert_problem(&r, 415);
    h_resp_release(&r);

    /* A SKU that cannot exist: 422 for PUT (it would create it), 404 to
     * read or adjust. */
    h_send_json(&r, "PUT", stock_url("bad%20sku"), "{\"on_hand\": 1}", NULL);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "parameter", "sku");
    h_resp_release(&r);
    json_decref(get_stock("bad%20sku", 404));
    char long_sku[70];
    memset(long_sku, 'A', 65);
    long_sku[65] = '\0';
    json_decref(get_stock(long_sku, 404));
    json_decref(adjust("bad%21", 1, "x", 404));

    /* The list's query string is checked as strictly. */
    static const struct {
        const char *query;
        const char *param;
    } qs[] = {
        {"limit=0", "limit"},     {"limit=101", "limit"},
        {"limit=x", "limit"},     {"limit=1&limit=2", "limit"},
        {"cursor=zz", "cursor"},  {"cursor=", "cursor"},
        {"colour=red", "colour"}, {"junk", NULL},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(qs); i++) {
        h_get(&r, h_fmt("%s/v1/stock?%s", F.inv.url, qs[i].query));
        h_assert_problem(&r, 400);
        if (qs[i].param)
            h_assert_problem_error(&r, "parameter", qs[i].param);
        h_resp_release(&r);
    }
}

static void test_admin_only(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    /* No token at all: the service guard. */
    const char *none[] = {"Moat-Service-Token:", NULL};
    h_http(&r, "GET", h_fmt("%s/v1/stock", F.inv.url), none, NULL, 0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    /* A customer, or a service acting for nobody: not an administrator. */
    const char *customer[] = {h_service_token("inventory", "usr_c", "customer"),
                              NULL};
    h_send_json(&r, "PUT", stock_url(unique("AUTH")), "{\"on_hand\": 1}",
                customer);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    const char *nobody[] = {h_service_token("inventory", NULL, NULL), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/stock", F.inv.url), nobody, NULL, 0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
}

static void test_list_pagination(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    char mine[5][48];
    for (int i = 0; i < 5; i++) {
        snprintf(mine[i], sizeof(mine[0]), "%s", unique("LIST"));
        json_decref(set_stock(mine[i], i, 201));
    }
    /* Page through everything (other tests' SKUs too): strictly
     * ascending, no repeats, and all of ours. */
    char prev[80] = "";
    int found = 0, pages = 0;
    const char *cursor = NULL;
    char cursor_buf[160];
    for (;;) {
        struct h_resp r;
        h_get(&r,
              cursor ? h_fmt("%s/v1/stock?limit=2&cursor=%s", F.inv.url, cursor)
                     : h_fmt("%s/v1/stock?limit=2", F.inv.url));
        h_assert_status(&r, 200);
        json_t *page = h_resp_json(&r);
        h_resp_release(&r);
        json_t *items = json_object_get(page, "items");
        assert_true(json_array_size(items) <= 2);
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it)
        {
            const char *sku = jstr(it, "sku");
            assert_true(strcmp(prev, sku) < 0);
            snprintf(prev, sizeof(prev), "%s", sku);
            for (int k = 0; k < 5; k++)
                if (strcmp(sku, mine[k]) == 0) {
                    found++;
                    assert_int_equal(jint(it, "on_hand"), k);
                }
        }
        pages++;
        json_t *next = json_object_get(page, "next_cursor");
        if (json_is_null(next)) {
            json_decref(page);
            break;
        }
        snprintf(cursor_buf, sizeof(cursor_buf), "%s", json_string_value(next));
        cursor = cursor_buf;
        json_decref(page);
        assert_true(pages < 1000);
    }
    assert_int_equal(found, 5);
    assert_true(pages >= 3);
}

static void test_feed_shows_stock_changes_in_order(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    const char *sku = unique("FEED");
    int64_t head = feed_head();
    json_decref(set_stock(sku, 5, 201));
    json_decref(adjust(sku, 3, "received", 201));
    json_decref(adjust(sku, -100, "too many", 409)); /* no event */
    json_decref(set_stock(sku, 8, 200));             /* unchanged: none */
    json_decref(adjust(sku, -2, "sold at the counter", 201));

    json_t *events = feed_after(head);
    /* Other tests do not run concurrently: exactly ours. */
    assert_int_equal(json_array_size(events), 3);
    static const int64_t on_hand[] = {5, 8, 6};
    static const int64_t delta[] = {5, 3, -2};
    static const char *const kind[] = {"set", "adjustment", "adjustment"};
    for (size_t i = 0; i < 3; i++) {
        json_t *ev = json_array_get(events, i);
        assert_string_equal(jstr(ev, "type"), "StockChanged");
        assert_string_equal(jstr(ev, "source"), "moat/inventory");
        assert_string_equal(jstr(ev, "subject"), sku);
        assert_string_equal(jstr(ev, "sequence"),
                            h_fmt("%lld", (long long)(head + 1 + (int64_t)i)));
        assert_int_equal(jint(ev, "dataschemaversion"), 1);
        json_t *data = json_object_get(ev, "data");
        assert_string_equal(jstr(data, "sku"), sku);
        assert_int_equal(jint(data, "on_hand"), on_hand[i]);
        assert_int_equal(jint(data, "available"), on_hand[i]);
        assert_int_equal(jint(data, "delta"), delta[i]);
        assert_int_equal(jint(data, "version"), (int64_t)i + 1);
        assert_string_equal(jstr(data, "kind"), kind[i]);
        /* The request's trace travels with the event. */
        assert_int_equal(strlen(jstr(ev, "traceparent")), 55);
    }
    assert_string_equal(
        jstr(json_object_get(json_array_get(events, 2), "data"), "reason"),
        "sold at the counter");
    json_decref(events);
    assert_int_equal(feed_head(), head + 3);
}

static void test_restart_keeps_data(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    const char *sku = unique("KEEP");
    json_decref(set_stock(sku, 40, 201));
    json_decref(adjust(sku, 2, "received", 201));
    int64_t head = feed_head();

    assert_int_equal(h_service_stop(&F.inv), 0);
    h_service_release(&F.inv);
    assert_int_equal(start_inventory(), 0);

    json_t *s = get_stock(sku, 200);
    assert_int_equal(jint(s, "on_hand"), 42);
    assert_int_equal(jint(s, "version"), 2);
    json_decref(s);
    assert_int_equal(feed_head(), head);
    /* The sequence goes on where it was, and the old events are there. */
    json_decref(adjust(sku, -1, "sold", 201));
    json_t *events = feed_after(head - 1);
    assert_int_equal(json_array_size(events), 2);
    assert_string_equal(jstr(json_array_get(events, 1), "sequence"),
                        h_fmt("%lld", (long long)(head + 1)));
    json_decref(events);

    /* A crash (SIGKILL) loses nothing committed either. */
    h_service_kill(&F.inv);
    h_service_release(&F.inv);
    assert_int_equal(start_inventory(), 0);
    s = get_stock(sku, 200);
    assert_int_equal(jint(s, "on_hand"), 41);
    json_decref(s);
    assert_int_equal(feed_head(), head + 1);
}

static void test_data_dir_permissions(void **state)
{
    MOAT_UNUSED(state);
    struct stat st;
    const char *dirs[] = {F.inv_data, h_fmt("%s/inventory.lmdb", F.inv_data)};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(dirs); i++) {
        assert_int_equal(stat(dirs[i], &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        if ((st.st_mode & 07777) != 0700)
            fail_msg("%s has mode %o, want 700", dirs[i],
                     (unsigned)(st.st_mode & 07777));
    }
    const char *files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(files); i++) {
        const char *path = h_fmt("%s/inventory.lmdb/%s", F.inv_data, files[i]);
        assert_int_equal(stat(path, &st), 0);
        if ((st.st_mode & 07777) != 0600)
            fail_msg("%s has mode %o, want 600", path,
                     (unsigned)(st.st_mode & 07777));
    }
}

static void test_metrics(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    h_get(&r, h_fmt("%s/metrics", F.inv.url));
    h_assert_status(&r, 200);
    static const char *const want[] = {
        "moat_kv_op_duration_seconds_count{op=\"commit\"}",
        "moat_kv_map_size_bytes 268435456",
        "moat_outbox_head_seq ",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++)
        if (!strstr(r.body, want[i]))
            fail_msg("\"%s\" not in /metrics", want[i]);
    h_resp_release(&r);
}

int main(int argc, char **argv)
{
    /* One test alone: pass its name (a glob). */
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_and_get),
        cmocka_unit_test(test_adjust),
        cmocka_unit_test(test_no_negative_stock),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_admin_only),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_feed_shows_stock_changes_in_order),
        cmocka_unit_test(test_restart_keeps_data),
        cmocka_unit_test(test_data_dir_permissions),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests_name("inventory", tests, group_setup,
                                       group_teardown);
}
