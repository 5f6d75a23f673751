/*
 * test_inventory.c - the inventory service end to end: moat-inventory as a
 * real process on a free loopback port, called directly with service
 * tokens acting for an administrator. Setting and adjusting stock, strict
 * validation, no stock below zero, StockChanged events on its feed in
 * commit order, data and sequence numbers surviving a restart, and the
 * modes of its LMDB files. Reservations (the order saga's stock step),
 * called as a service acting for nobody: all lines or none, idempotency by
 * order id, release/commit transitions, the tombstone that refuses a late
 * reserve, the per-customer cap, and the per-SKU invariants after a
 * random sequence checked against a model.
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

/* ---- reservations ---- */

/* The max open reservations per customer the fixture runs with (the
 * default of MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER). */
#define MAX_OPEN 5

/* The caller of the saga's steps: a service acting for nobody. */
static const char *const *as_service(void)
{
    static const char *hdr[2];
    hdr[0] = h_service_token("inventory", NULL, NULL);
    hdr[1] = NULL;
    return hdr;
}

/* POST /v1/reservations; asserts the status, returns the body. */
static json_t *reserve(const char *order, const char *customer,
                       const char *lines, long status)
{
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/reservations", F.inv.url),
                h_fmt("{\"order_id\": \"%s\", \"customer_id\": \"%s\", "
                      "\"lines\": %s}",
                      order, customer, lines),
                as_service());
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* POST /v1/reservations/{order}/{action}; asserts the status. */
static json_t *res_action(const char *order, const char *action, long status)
{
    struct h_resp r;
    h_http(&r, "POST",
           h_fmt("%s/v1/reservations/%s/%s", F.inv.url, order, action),
           as_service(), NULL, 0);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static json_t *get_reservation(const char *order, long status)
{
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/v1/reservations/%s", F.inv.url, order),
           as_service(), NULL, 0);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* Asserts on_hand, reserved and sold of sku. */
static void assert_stock(const char *sku, int64_t on_hand, int64_t reserved,
                         int64_t sold)
{
    json_t *s = get_stock(sku, 200);
    if (jint(s, "on_hand") != on_hand || jint(s, "reserved") != reserved ||
        jint(s, "sold") != sold)
        fail_msg("%s: on_hand %lld reserved %lld sold %lld, want %lld %lld "
                 "%lld",
                 sku, (long long)jint(s, "on_hand"),
                 (long long)jint(s, "reserved"), (long long)jint(s, "sold"),
                 (long long)on_hand, (long long)reserved, (long long)sold);
    assert_int_equal(jint(s, "available"), on_hand - reserved);
    json_decref(s);
}

/* A copy of unique(prefix) that outlives the pool. */
static void unique_into(char out[48], const char *prefix)
{
    snprintf(out, 48, "%s", unique(prefix));
}

static void test_reserve_all_or_none(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    char a[48], b[48], order[48], cust[48];
    unique_into(a, "RA");
    unique_into(b, "RB");
    unique_into(order, "ord");
    unique_into(cust, "cus");
    json_decref(set_stock(a, 5, 201));
    json_decref(set_stock(b, 1, 201));

    /* One short line: 409 listing it, and nothing held anywhere. */
    json_t *p = reserve(
        order, cust,
        h_fmt("[{\"sku\": \"%s\", \"quantity\": 3}, {\"sku\": \"%s\", "
              "\"quantity\": 2}, {\"sku\": \"NOPE-%s\", \"quantity\": 1}]",
              a, b, a),
        409);
    json_t *sh = json_object_get(p, "short");
    assert_int_equal(json_array_size(sh), 2);
    assert_string_equal(jstr(json_array_get(sh, 0), "sku"),
                        h_fmt("NOPE-%s", a));
    assert_int_equal(jint(json_array_get(sh, 0), "available"), 0);
    assert_string_equal(jstr(json_array_get(sh, 1), "sku"), b);
    assert_int_equal(jint(json_array_get(sh, 1), "available"), 1);
    assert_int_equal(jint(json_array_get(sh, 1), "requested"), 2);
    json_decref(p);
    assert_stock(a, 5, 0, 0);
    assert_stock(b, 1, 0, 0);
    json_decref(get_reservation(order, 404));

    /* All lines fit: 201, every SKU holds its units. */
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/reservations", F.inv.url),
                h_fmt("{\"order_id\": \"%s\", \"customer_id\": \"%s\", "
                      "\"lines\": [{\"sku\": \"%s\", \"quantity\": 3}, "
                      "{\"sku\": \"%s\", \"quantity\": 1}]}",
                      order, cust, a, b),
                as_service());
    h_assert_status(&r, 201);
    assert_string_equal(h_resp_header(&r, "Location"),
                        h_fmt("/v1/reservations/%s", order));
    json_t *res = h_resp_json(&r);
    h_resp_release(&r);
    assert_string_equal(jstr(res, "state"), "held");
    assert_string_equal(jstr(res, "customer_id"), cust);
    assert_int_equal(jint(res, "version"), 1);
    json_decref(res);
    assert_stock(a, 5, 3, 0);
    assert_stock(b, 1, 1, 0);

    /* The same request again (lines in another order): 200, unchanged. */
    json_t *again =
        reserve(order, cust,
                h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}, {\"sku\": \"%s\", "
                      "\"quantity\": 3}]",
                      b, a),
                200);
    assert_string_equal(jstr(again, "state"), "held");
    assert_int_equal(jint(again, "version"), 1);
    json_decref(again);
    assert_stock(a, 5, 3, 0);
    /* Other lines, or another customer, under the same order: 409. */
    p = reserve(order, cust, h_fmt("[{\"sku\": \"%s\", \"quantity\": 2}]", a),
                409);
    assert_string_equal(jstr(json_object_get(p, "reservation"), "state"),
                        "held");
    json_decref(p);
    json_decref(reserve(order, "someone-else",
                        h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}, "
                              "{\"sku\": \"%s\", \"quantity\": 3}]",
                              b, a),
                        409));
    assert_stock(a, 5, 3, 0);

    /* Held units are not available to administrators either. */
    json_decref(adjust(a, -3, "shrinkage", 409));
    json_decref(set_stock(a, 2, 409));

    /* Strict input. */
    char other[48];
    unique_into(other, "ord");
    static const struct {
        const char *lines;
        const char *pointer;
    } bad[] = {
        {"[]", "/lines"},
        {"[{\"sku\": \"X\", \"quantity\": 0}]", "/lines/0/quantity"},
        {"[{\"sku\": \"X\", \"quantity\": 10001}]", "/lines/0/quantity"},
        {"[{\"sku\": \"X y\", \"quantity\": 1}]", "/lines/0/sku"},
        {"[{\"sku\": \"X\", \"quantity\": 1, \"note\": 1}]", "/lines/0/note"},
        {"[{\"sku\": \"X\", \"quantity\": 1}, {\"sku\": \"X\", \"quantity\": "
         "2}]",
         "/lines/1/sku"},
        {"[7]", "/lines/0"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        h_send_json(&r, "POST", h_fmt("%s/v1/reservations", F.inv.url),
                    h_fmt("{\"order_id\": \"%s\", \"customer_id\": \"c\", "
                          "\"lines\": %s}",
                          other, bad[i].lines),
                    as_service());
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", bad[i].pointer);
        h_resp_release(&r);
    }
    char many[51 * 40 + 8] = "[";
    for (int i = 0; i < 51; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many),
                 "%s{\"sku\": \"S%d\", \"quantity\": 1}", i ? "," : "", i);
    snprintf(many + strlen(many), sizeof(many) - strlen(many), "]");
    h_send_json(&r, "POST", h_fmt("%s/v1/reservations", F.inv.url),
                h_fmt("{\"order_id\": \"%s\", \"customer_id\": \"c\", "
                      "\"lines\": %s}",
                      other, many),
                as_service());
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/lines");
    h_resp_release(&r);
    h_send_json(&r, "POST", h_fmt("%s/v1/reservations", F.inv.url),
                "{\"customer_id\": \"c/d\", \"lines\": [], \"x\": 1}",
                as_service());
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/order_id");
    h_assert_problem_error(&r, "pointer", "/customer_id");
    h_assert_problem_error(&r, "pointer", "/x");
    h_resp_release(&r);
    json_decref(get_reservation(other, 404));
}

static void test_release_and_commit(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    char sku[48], o1[48], o2[48], cust[48];
    unique_into(sku, "RC");
    unique_into(o1, "ord");
    unique_into(o2, "ord");
    unique_into(cust, "cus");
    json_decref(set_stock(sku, 10, 201));
    char l4[128];
    snprintf(l4, sizeof(l4), "[{\"sku\": \"%s\", \"quantity\": 4}]", sku);
    json_decref(reserve(o1, cust, l4, 201));
    json_decref(reserve(o2, cust, l4, 201));
    assert_stock(sku, 10, 8, 0);

    /* Commit: the units leave on_hand and reserved, and count as sold. */
    json_t *c = res_action(o1, "commit", 200);
    assert_string_equal(jstr(c, "state"), "committed");
    assert_int_equal(jint(c, "version"), 2);
    json_decref(c);
    assert_stock(sku, 6, 4, 4);
    c = res_action(o1, "commit", 200); /* idempotent: nothing moves */
    assert_int_equal(jint(c, "version"), 2);
    json_decref(c);
    assert_stock(sku, 6, 4, 4);
    c = res_action(o1, "release", 409);
    assert_string_equal(jstr(json_object_get(c, "reservation"), "state"),
                        "committed");
    json_decref(c);
    /* A repeat of the committed reserve still answers 200, unchanged. */
    json_decref(reserve(o1, cust, l4, 200));
    assert_stock(sku, 6, 4, 4);

    /* Release: the units are available again. */
    c = res_action(o2, "release", 200);
    assert_string_equal(jstr(c, "state"), "released");
    json_decref(c);
    assert_stock(sku, 6, 0, 4);
    c = res_action(o2, "release", 200);
    assert_string_equal(jstr(c, "state"), "released");
    assert_int_equal(jint(c, "version"), 2);
    json_decref(c);
    json_decref(res_action(o2, "commit", 409));
    assert_stock(sku, 6, 0, 4);
    json_t *g = get_reservation(o2, 200);
    assert_string_equal(jstr(g, "state"), "released");
    assert_int_equal(json_array_size(json_object_get(g, "lines")), 1);
    json_decref(g);

    /* Commit of an order never reserved: 404 (nothing to sell). */
    json_decref(res_action(unique("ord"), "commit", 404));
    json_decref(get_reservation("bad%20id", 404));
    /* The commit is in the adjustment log's on_hand history: an
     * administrator's next adjustment starts from 6. */
    json_t *a = adjust(sku, 1, "received", 201);
    assert_int_equal(jint(json_object_get(a, "stock"), "on_hand"), 7);
    json_decref(a);
}

static void test_release_before_reserve(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    char sku[48], order[48], cust[48];
    unique_into(sku, "TOMB");
    unique_into(order, "ord");
    unique_into(cust, "cus");
    json_decref(set_stock(sku, 3, 201));

    /* The saga compensated before its reserve command arrived. */
    json_t *rel = res_action(order, "release", 200);
    assert_string_equal(jstr(rel, "state"), "absent");
    assert_true(json_is_null(json_object_get(rel, "customer_id")));
    json_decref(rel);
    /* The late reserve must not hold stock nobody will ever release. */
    json_t *p = reserve(
        order, cust, h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}]", sku), 409);
    assert_non_null(strstr(jstr(p, "detail"), "order already released"));
    json_decref(p);
    assert_stock(sku, 3, 0, 0);
    rel = res_action(order, "release", 200);
    assert_string_equal(jstr(rel, "state"), "absent");
    json_decref(rel);
    json_decref(res_action(order, "commit", 409));
    json_t *g = get_reservation(order, 200);
    assert_string_equal(jstr(g, "state"), "absent");
    json_decref(g);

    /* The same holds after an ordinary release. */
    char o2[48];
    unique_into(o2, "ord");
    const char *l1 = h_fmt("[{\"sku\": \"%s\", \"quantity\": 1}]", sku);
    char lines[128];
    snprintf(lines, sizeof(lines), "%s", l1);
    json_decref(reserve(o2, cust, lines, 201));
    json_decref(res_action(o2, "release", 200));
    json_decref(reserve(o2, cust, lines, 409));
    assert_stock(sku, 3, 0, 0);
}

static void test_customer_cap(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    char sku[48], cust[48], orders[MAX_OPEN + 1][48];
    unique_into(sku, "CAP");
    unique_into(cust, "cus");
    json_decref(set_stock(sku, 100, 201));
    char lines[128];
    snprintf(lines, sizeof(lines), "[{\"sku\": \"%s\", \"quantity\": 1}]", sku);
    for (int i = 0; i <= MAX_OPEN; i++)
        unique_into(orders[i], "ord");
    for (int i = 0; i < MAX_OPEN; i++)
        json_decref(reserve(orders[i], cust, lines, 201));
    json_t *p = reserve(orders[MAX_OPEN], cust, lines, 429);
    assert_int_equal(jint(p, "max_open"), MAX_OPEN);
    json_decref(p);
    /* A repeat is not a new hold; another customer is not capped. */
    json_decref(reserve(orders[0], cust, lines, 200));
    char o[48];
    unique_into(o, "ord");
    json_decref(reserve(o, "another-customer", lines, 201));
    /* Committing or releasing one frees a slot. */
    json_decref(res_action(orders[0], "commit", 200));
    json_decref(reserve(orders[MAX_OPEN], cust, lines, 201));
    unique_into(o, "ord");
    json_decref(reserve(o, cust, lines, 429));
    json_decref(res_action(orders[1], "release", 200));
    json_decref(reserve(o, cust, lines, 201));
    assert_stock(sku, 99, MAX_OPEN + 1, 1);
}

/* ---- randomized: the per-SKU invariants against a model ---- */

#define RND_SKUS      4
#define RND_CUSTOMERS 4
#define RND_OPS       200
#define RND_INITIAL   40

enum m_state { M_NONE, M_HELD, M_RELEASED, M_COMMITTED, M_TOMBSTONE };

struct m_order {
    char id[48];
    int customer;
    int nlines;
    int sku[3];
    int64_t q[3];
    enum m_state state;
};

struct model {
    char sku[RND_SKUS][48];
    int64_t on_hand[RND_SKUS], reserved[RND_SKUS], sold[RND_SKUS];
    int64_t adjusted[RND_SKUS]; /* sum of the accepted adjustments */
    struct m_order orders[RND_OPS];
    int norders;
};

/* xorshift64: the seed is printed, so a failure replays exactly. */
static uint64_t rnd_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static int rnd_below(uint64_t *x, int n)
{
    return (int)(rnd_next(x) % (uint64_t)n);
}

static int m_held_by(const struct model *m, int customer)
{
    int n = 0;
    for (int i = 0; i < m->norders; i++)
        n += m->orders[i].customer == customer && m->orders[i].state == M_HELD;
    return n;
}

static const char *m_lines(const struct m_order *o, const struct model *m)
{
    char buf[512] = "[";
    for (int i = 0; i < o->nlines; i++)
        snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf),
                 "%s{\"sku\": \"%s\", \"quantity\": %lld}", i ? ", " : "",
                 m->sku[o->sku[i]], (long long)o->q[i]);
    return h_fmt("%s]", buf);
}

static void m_reserve(struct model *m, struct m_order *o)
{
    const char *customer = h_fmt("rnd-customer-%d-%s", o->customer, m->sku[0]);
    long want;
    if (o->state == M_HELD || o->state == M_COMMITTED) {
        want = 200;
    } else if (o->state != M_NONE) {
        want = 409; /* released or tombstone: a late reserve */
    } else if (m_held_by(m, o->customer) >= MAX_OPEN) {
        want = 429;
    } else {
        want = 201;
        for (int i = 0; i < o->nlines; i++)
            if (m->on_hand[o->sku[i]] - m->reserved[o->sku[i]] < o->q[i])
                want = 409;
    }
    char c[96];
    snprintf(c, sizeof(c), "%s", customer);
    json_decref(reserve(o->id, c, m_lines(o, m), want));
    if (want == 201) {
        o->state = M_HELD;
        for (int i = 0; i < o->nlines; i++)
            m->reserved[o->sku[i]] += o->q[i];
    }
}

static void m_finish(struct model *m, struct m_order *o, bool commit)
{
    long want = 200;
    enum m_state to = commit ? M_COMMITTED : M_RELEASED;
    if (o->state == M_NONE)
        want = commit ? 404 : 200;
    else if (o->state == M_TOMBSTONE)
        want = commit ? 409 : 200;
    else if (o->state != M_HELD && o->state != to)
        want = 409;
    json_decref(res_action(o->id, commit ? "commit" : "release", want));
    if (o->state == M_NONE && !commit)
        o->state = M_TOMBSTONE;
    if (o->state != M_HELD || want != 200)
        return;
    for (int i = 0; i < o->nlines; i++) {
        m->reserved[o->sku[i]] -= o->q[i];
        if (commit) {
            m->on_hand[o->sku[i]] -= o->q[i];
            m->sold[o->sku[i]] += o->q[i];
        }
    }
    o->state = to;
}

static void m_adjust(struct model *m, uint64_t *x)
{
    int k = rnd_below(x, RND_SKUS);
    int64_t delta = rnd_below(x, 21) - 5;
    if (delta == 0)
        delta = 1;
    bool ok = m->on_hand[k] + delta - m->reserved[k] >= 0;
    json_decref(adjust(m->sku[k], delta, "random", ok ? 201 : 409));
    if (ok) {
        m->on_hand[k] += delta;
        m->adjusted[k] += delta;
    }
}

static void test_randomized_invariants(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    struct model *m = moat_xcalloc(1, sizeof(*m));
    uint64_t seed;
    moat_random_bytes(&seed, sizeof(seed));
    seed |= 1;
    print_message("randomized reservations: seed %llu\n",
                  (unsigned long long)seed);
    uint64_t x = seed;
    for (int k = 0; k < RND_SKUS; k++) {
        unique_into(m->sku[k], "RND");
        json_decref(set_stock(m->sku[k], RND_INITIAL, 201));
        m->on_hand[k] = RND_INITIAL;
    }
    for (int op = 0; op < RND_OPS; op++) {
        int kind = rnd_below(&x, 100);
        if (op % 50 == 0)
            as_admin(); /* tokens live 60 s */
        if (kind < 40 || m->norders == 0) {
            struct m_order *o = &m->orders[m->norders++];
            unique_into(o->id, "rnd");
            o->customer = rnd_below(&x, RND_CUSTOMERS);
            /* 1..3 distinct SKUs: a start and a stride. */
            o->nlines = 1 + rnd_below(&x, 3);
            int start = rnd_below(&x, RND_SKUS);
            for (int i = 0; i < o->nlines; i++) {
                o->sku[i] = (start + i) % RND_SKUS;
                o->q[i] = 1 + rnd_below(&x, 8);
            }
            /* A fifth of new orders are released before they are
             * reserved (a compensation racing its own command). */
            if (rnd_below(&x, 5) == 0)
                m_finish(m, o, false);
            m_reserve(m, o);
        } else if (kind < 50) {
            m_reserve(m, &m->orders[rnd_below(&x, m->norders)]);
        } else if (kind < 65) {
            m_finish(m, &m->orders[rnd_below(&x, m->norders)], false);
        } else if (kind < 80) {
            m_finish(m, &m->orders[rnd_below(&x, m->norders)], true);
        } else {
            m_adjust(m, &x);
        }
        assert_true(m->norders < RND_OPS);
    }

    /* Every SKU as the model says, and the invariants of store.h. */
    for (int k = 0; k < RND_SKUS; k++) {
        int64_t held = 0;
        for (int i = 0; i < m->norders; i++)
            for (int l = 0; l < m->orders[i].nlines; l++)
                if (m->orders[i].state == M_HELD && m->orders[i].sku[l] == k)
                    held += m->orders[i].q[l];
        assert_int_equal(m->reserved[k], held);
        assert_int_equal(m->on_hand[k] + m->sold[k],
                         RND_INITIAL + m->adjusted[k]);
        assert_true(m->on_hand[k] >= m->reserved[k] && m->reserved[k] >= 0);
        assert_stock(m->sku[k], m->on_hand[k], m->reserved[k], m->sold[k]);
    }
    static const char *const names[] = {[M_HELD] = "held",
                                        [M_RELEASED] = "released",
                                        [M_COMMITTED] = "committed",
                                        [M_TOMBSTONE] = "absent"};
    for (int i = 0; i < m->norders; i++) {
        const struct m_order *o = &m->orders[i];
        json_t *g = get_reservation(o->id, o->state == M_NONE ? 404 : 200);
        if (o->state != M_NONE)
            assert_string_equal(jstr(g, "state"), names[o->state]);
        json_decref(g);
    }
    free(m);
}

static void test_reservation_events_in_order(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    char a[48], b[48], order[48], gone[48];
    /* Named so that a sorts before b: lines are kept in SKU order. */
    unique_into(a, "EVA");
    unique_into(b, "EVB");
    unique_into(order, "ord");
    unique_into(gone, "ord");
    json_decref(set_stock(a, 5, 201));
    json_decref(set_stock(b, 5, 201));
    int64_t head = feed_head();
    json_decref(reserve(order, "cus-ev",
                        h_fmt("[{\"sku\": \"%s\", \"quantity\": 2}, "
                              "{\"sku\": \"%s\", \"quantity\": 1}]",
                              b, a),
                        201));
    json_decref(res_action(order, "commit", 200));
    json_decref(res_action(order, "commit", 200)); /* no event */
    json_decref(res_action(gone, "release", 200));

    json_t *events = feed_after(head);
    static const struct {
        const char *type;
        int subject; /* 0 order, 1 a, 2 b, 3 gone */
        const char *kind;
        int64_t delta;
    } want[] = {
        {"StockReserved", 0, NULL, 0},     {"StockChanged", 1, "reserve", 0},
        {"StockChanged", 2, "reserve", 0}, {"StockCommitted", 0, NULL, 0},
        {"StockChanged", 1, "commit", -1}, {"StockChanged", 2, "commit", -2},
        {"StockReleased", 3, NULL, 0},
    };
    const char *subjects[] = {order, a, b, gone};
    assert_int_equal(json_array_size(events), MOAT_ARRAY_LEN(want));
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++) {
        json_t *ev = json_array_get(events, i);
        json_t *data = json_object_get(ev, "data");
        assert_string_equal(jstr(ev, "type"), want[i].type);
        assert_string_equal(jstr(ev, "subject"), subjects[want[i].subject]);
        if (want[i].kind) {
            assert_string_equal(jstr(data, "kind"), want[i].kind);
            assert_int_equal(jint(data, "delta"), want[i].delta);
            assert_string_equal(jstr(data, "order_id"), order);
        } else {
            assert_string_equal(jstr(data, "order_id"),
                                subjects[want[i].subject]);
        }
    }
    json_t *d = json_object_get(json_array_get(events, 0), "data");
    assert_string_equal(jstr(d, "state"), "held");
    assert_string_equal(jstr(d, "customer_id"), "cus-ev");
    assert_int_equal(json_array_size(json_object_get(d, "lines")), 2);
    d = json_object_get(json_array_get(events, 5), "data");
    assert_int_equal(jint(d, "on_hand"), 3);
    assert_int_equal(jint(d, "reserved"), 0);
    assert_int_equal(jint(d, "sold"), 2);
    d = json_object_get(json_array_get(events, 6), "data");
    assert_string_equal(jstr(d, "state"), "absent");
    json_decref(events);
}

static void test_reservations_survive_restart(void **state)
{
    MOAT_UNUSED(state);
    as_admin();
    char sku[48], held[48], gone[48];
    unique_into(sku, "RKEEP");
    unique_into(held, "ord");
    unique_into(gone, "ord");
    json_decref(set_stock(sku, 9, 201));
    char lines[128];
    snprintf(lines, sizeof(lines), "[{\"sku\": \"%s\", \"quantity\": 4}]", sku);
    json_decref(reserve(held, "cus-keep", lines, 201));
    json_decref(res_action(gone, "release", 200));

    h_service_kill(&F.inv); /* a crash: every answered write is durable */
    h_service_release(&F.inv);
    assert_int_equal(start_inventory(), 0);

    assert_stock(sku, 9, 4, 0);
    json_t *g = get_reservation(held, 200);
    assert_string_equal(jstr(g, "state"), "held");
    json_decref(g);
    json_decref(reserve(held, "cus-keep", lines, 200));
    json_decref(reserve(gone, "cus-keep", lines, 409));
    json_decref(res_action(held, "commit", 200));
    assert_stock(sku, 5, 0, 4);
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
    h_get_metrics(&r, F.inv.url);
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
        cmocka_unit_test(test_reserve_all_or_none),
        cmocka_unit_test(test_release_and_commit),
        cmocka_unit_test(test_release_before_reserve),
        cmocka_unit_test(test_customer_cap),
        cmocka_unit_test(test_randomized_invariants),
        cmocka_unit_test(test_reservation_events_in_order),
        cmocka_unit_test(test_reservations_survive_restart),
        cmocka_unit_test(test_data_dir_permissions),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests_name("inventory", tests, group_setup,
                                       group_teardown);
}
