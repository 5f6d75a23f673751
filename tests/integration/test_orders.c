/*
 * test_orders.c - the orders service as the saga's orchestrator, on its
 * own: real moat-catalog and moat-orders processes, with the participants
 * (inventory, payments) and users played by test feeds (harness h_feed_*)
 * so each reply - including late, duplicate and missing ones - arrives
 * exactly when the test says. test_saga.c runs the real participants.
 */
#include "moat/common.h"

#include "harness.h"
#include "pg_fixture.h"
#include "moat/buf.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static struct {
    char *tmp;
    struct h_service cat, ord;
    struct h_feed *inv, *pay, *users;
    char env[6][256];
    char product[64], product2[64];
} F;

#define ALICE "usr_01J00000000000000000000ALI"
#define BOB   "usr_01J00000000000000000000B0B"

static const char *as_user(const char *user)
{
    return h_service_token("orders", user, "customer");
}

/* POST /v1/orders for user with key and body; returns the response. */
static void place(struct h_resp *r, const char *user, const char *key,
                  const char *body)
{
    const char *hdrs[] = {as_user(user),
                          key ? h_fmt("Idempotency-Key: %s", key) : NULL, NULL};
    h_send_json(r, "POST", h_fmt("%s/v1/orders", F.ord.url), body, hdrs);
}

static const char *order_body(const char *product, int qty, const char *card)
{
    return h_fmt("{\"lines\": [{\"product_id\": \"%s\", \"quantity\": %d}], "
                 "\"card_token\": \"%s\"}",
                 product, qty, card);
}

/* Place an order (201) and copy its id. */
static void place_ok(const char *user, const char *key, const char *card,
                     char out[64])
{
    struct h_resp r;
    place(&r, user, key, order_body(F.product, 2, card));
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(out, 64, "%s", json_string_value(json_object_get(j, "id")));
    assert_string_equal(json_string_value(json_object_get(j, "status")),
                        "pending");
    assert_int_equal(json_integer_value(json_object_get(j, "total")), 2400);
    json_decref(j);
    h_resp_release(&r);
}

static json_t *get_order(const char *id)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", NULL, NULL), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/orders/%s", F.ord.url, id), hdrs, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* The order's step is step (o holds the order last read, replaced). */
static bool at_step(json_t **o, const char *id, const char *step)
{
    json_decref(*o);
    *o = get_order(id);
    return strcmp(h_jstr(*o, "step"), step) == 0;
}

/* Wait until the order's step is step; returns the order. */
static json_t *wait_step(const char *id, const char *step)
{
    json_t *o = NULL;
    H_WAIT_UNTIL(at_step(&o, id, step), H_WAIT_MS, "order %s at step %s", id,
                 step);
    return o;
}

/* The types orders published for subject id, in feed order, joined by
 * ','. */
static const char *types_for(const char *id)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", NULL, NULL), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/events?after=0&limit=1000", F.ord.url), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    static char out[1024];
    out[0] = '\0';
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, "events"), i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "subject")), id) != 0)
            continue;
        size_t len = strlen(out);
        snprintf(out + len, sizeof(out) - len, "%s%s", len ? "," : "",
                 json_string_value(json_object_get(e, "type")));
    }
    json_decref(j);
    h_resp_release(&r);
    return out;
}

/* The data of the last event of type for subject id (new reference). */
static json_t *event_data(const char *id, const char *type)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", NULL, NULL), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/events?after=0&limit=1000", F.ord.url), hdrs,
           NULL, 0);
    json_t *j = h_resp_json(&r);
    json_t *found = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, "events"), i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "subject")), id) == 0 &&
            strcmp(json_string_value(json_object_get(e, "type")), type) == 0) {
            json_decref(found);
            found = json_incref(json_object_get(e, "data"));
        }
    }
    json_decref(j);
    h_resp_release(&r);
    if (!found)
        fail_msg("no %s for %s", type, id);
    return found;
}

static void reply(struct h_feed *f, const char *type, const char *id,
                  const char *extra)
{
    h_feed_publish(f, type, id,
                   h_fmt("{\"order_id\": \"%s\"%s%s}", id, extra ? ", " : "",
                         extra ? extra : ""));
}

static void assert_final(const char *id, const char *status, const char *reason)
{
    json_t *o = wait_step(id, "done");
    assert_string_equal(json_string_value(json_object_get(o, "status")),
                        status);
    if (reason)
        assert_string_equal(
            json_string_value(json_object_get(o, "cancel_reason")), reason);
    else
        assert_true(json_is_null(json_object_get(o, "cancel_reason")));
    json_decref(o);
}

/* ---- fixture ---- */

/*
 * The saga's step deadline (MOAT_ORDERS_STEP_TIMEOUT_MS). Tests that expect
 * an order to be confirmed get a long one, scaled like every wait, so a
 * loaded machine cannot make it pass; the deadline test restarts orders
 * with a short one on purpose (STEP_TIMEOUT_SHORT_MS, not scaled: it is
 * what is tested, and the wait for it is scaled).
 */
#define STEP_TIMEOUT_MS       15000
#define STEP_TIMEOUT_SHORT_MS 1500

static const char *const *orders_env_with(unsigned step_timeout_ms)
{
    snprintf(F.env[0], sizeof(F.env[0]), "MOAT_ORDERS_CATALOG_URL=%s",
             F.cat.url);
    snprintf(F.env[1], sizeof(F.env[1]), "MOAT_ORDERS_INVENTORY_URL=%s",
             h_feed_url(F.inv));
    snprintf(F.env[2], sizeof(F.env[2]), "MOAT_ORDERS_PAYMENTS_URL=%s",
             h_feed_url(F.pay));
    snprintf(F.env[3], sizeof(F.env[3]), "MOAT_ORDERS_USERS_URL=%s",
             h_feed_url(F.users));
    snprintf(F.env[4], sizeof(F.env[4]), "MOAT_ORDERS_STEP_TIMEOUT_MS=%u",
             step_timeout_ms);
    static const char *env[6];
    for (int i = 0; i < 5; i++)
        env[i] = F.env[i];
    env[5] = NULL;
    return env;
}

static const char *const *orders_env(void)
{
    return orders_env_with(h_scaled_ms(STEP_TIMEOUT_MS));
}

static void create_product(const char *sku, const char *currency, char out[64])
{
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat.url),
                h_fmt("{\"sku\": \"%s\", \"name\": \"Mug %s\", \"price\": "
                      "{\"amount\": 1200, \"currency\": \"%s\"}}",
                      sku, sku, currency),
                NULL);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(out, 64, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    h_resp_release(&r);
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("orders");
    F.inv = h_feed_start("inventory", F.tmp);
    F.pay = h_feed_start("payments", F.tmp);
    F.users = h_feed_start("users", F.tmp);
    if (h_service_start(&F.cat, "catalog", F.tmp,
                        h_fmt("%s/catalog-data", F.tmp), NULL) != 0)
        return -1;
    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    if (h_service_start(&F.ord, "orders", F.tmp, h_fmt("%s/orders-data", F.tmp),
                        orders_env()) != 0)
        return -1;
    create_product("MUG-1", "EUR", F.product);
    create_product("MUG-USD", "USD", F.product2);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int ord_rc = h_service_stop(&F.ord);
    int cat_rc = h_service_stop(&F.cat);
    h_service_release(&F.ord);
    h_service_release(&F.cat);
    h_feed_stop(F.inv);
    h_feed_stop(F.pay);
    h_feed_stop(F.users);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    if (ord_rc || cat_rc)
        print_error("services must exit 0 on SIGTERM: orders %d, catalog %d\n",
                    ord_rc, cat_rc);
    return ord_rc == 0 && cat_rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_happy_path(void **state)
{
    MOAT_UNUSED(state);
    char id[64];
    place_ok(ALICE, "happy-1", "tok_ok", id);
    assert_string_equal(types_for(id), "OrderPlaced,ReserveStock");
    json_t *d = event_data(id, "ReserveStock");
    json_t *line = json_array_get(json_object_get(d, "lines"), 0);
    assert_string_equal(json_string_value(json_object_get(line, "sku")),
                        "MUG-1");
    assert_int_equal(json_integer_value(json_object_get(line, "quantity")), 2);
    json_decref(d);

    reply(F.inv, "StockReserved", id, NULL);
    json_decref(wait_step(id, "authorizing"));
    d = event_data(id, "AuthorizePayment");
    assert_int_equal(json_integer_value(json_object_get(d, "amount")), 2400);
    assert_string_equal(json_string_value(json_object_get(d, "currency")),
                        "EUR");
    assert_string_equal(json_string_value(json_object_get(d, "card_token")),
                        "tok_ok");
    json_decref(d);

    reply(F.pay, "PaymentAuthorized", id, "\"payment_id\": \"pay_1\"");
    json_decref(wait_step(id, "confirming"));
    reply(F.pay, "PaymentCaptured", id, "\"payment_id\": \"pay_1\"");
    reply(F.inv, "StockCommitted", id, NULL);
    /* Duplicates change nothing. */
    reply(F.pay, "PaymentCaptured", id, "\"payment_id\": \"pay_1\"");
    assert_final(id, "confirmed", NULL);
    assert_string_equal(types_for(id),
                        "OrderPlaced,ReserveStock,AuthorizePayment,"
                        "CapturePayment,CommitStock,OrderConfirmed");
    json_t *o = get_order(id);
    assert_string_equal(json_string_value(json_object_get(o, "payment_id")),
                        "pay_1");
    assert_int_equal(strlen(json_string_value(json_object_get(o, "trace_id"))),
                     32);
    json_decref(o);
}

static void test_out_of_stock(void **state)
{
    MOAT_UNUSED(state);
    char id[64];
    place_ok(ALICE, "oos-1", "tok_ok", id);
    reply(F.inv, "StockReservationFailed", id, "\"reason\": \"out_of_stock\"");
    assert_final(id, "cancelled", "out_of_stock");
    /* Nothing held, so nothing to release or void. */
    assert_string_equal(types_for(id),
                        "OrderPlaced,ReserveStock,OrderCancelled");
}

static void test_declined(void **state)
{
    MOAT_UNUSED(state);
    char id[64];
    place_ok(ALICE, "decl-1", "tok_decline", id);
    reply(F.inv, "StockReserved", id, NULL);
    json_decref(wait_step(id, "authorizing"));
    reply(
        F.pay, "PaymentDeclined", id,
        "\"payment_id\": \"pay_2\", \"decline_code\": \"insufficient_funds\"");
    json_decref(wait_step(id, "compensating"));
    assert_string_equal(types_for(id), "OrderPlaced,ReserveStock,"
                                       "AuthorizePayment,ReleaseStock");
    reply(F.inv, "StockReleased", id, NULL);
    assert_final(id, "cancelled", "payment_declined");
}

/* No reply to the authorization before the deadline: void and release;
 * the authorization that comes late moves nothing. */
static void test_deadline_and_late_reply(void **state)
{
    MOAT_UNUSED(state);
    /* Orders with a short deadline, on purpose: it is what is tested. */
    assert_int_equal(h_service_stop(&F.ord), 0);
    assert_int_equal(
        h_service_restart(&F.ord, orders_env_with(STEP_TIMEOUT_SHORT_MS)), 0);
    char id[64];
    place_ok(ALICE, "late-1", "tok_ok", id);
    reply(F.inv, "StockReserved", id, NULL);
    json_decref(wait_step(id, "authorizing")); /* as test_customer_cancel */
    reply(F.pay, "PaymentProviderUnavailable", id,
          "\"payment_id\": \"pay_3\", \"attempts\": 1, \"error\": \"x\"");
    json_t *o = wait_step(id, "compensating");
    assert_string_equal(json_string_value(json_object_get(o, "cancel_reason")),
                        "provider_unavailable");
    json_decref(o);
    assert_string_equal(types_for(id),
                        "OrderPlaced,ReserveStock,AuthorizePayment,"
                        "ReleaseStock,VoidPayment");
    reply(F.pay, "PaymentAuthorized", id, "\"payment_id\": \"pay_3\"");
    reply(F.inv, "StockReleased", id, NULL);
    reply(F.pay, "PaymentVoided", id, "\"payment_id\": \"pay_3\"");
    assert_final(id, "cancelled", "provider_unavailable");
    /* The late authorization sent no capture. */
    assert_string_equal(types_for(id),
                        "OrderPlaced,ReserveStock,AuthorizePayment,"
                        "ReleaseStock,VoidPayment,OrderCancelled");

    /* Inventory silent: the reservation's deadline. */
    place_ok(ALICE, "late-2", "tok_ok", id);
    json_decref(wait_step(id, "compensating"));
    reply(F.inv, "StockReleased", id, "\"tombstone\": true");
    assert_final(id, "cancelled", "deadline_exceeded");
    /* Back to the long deadline for the tests that expect confirmed. */
    assert_int_equal(h_service_stop(&F.ord), 0);
    assert_int_equal(h_service_restart(&F.ord, orders_env()), 0);
}

static void test_customer_cancel(void **state)
{
    MOAT_UNUSED(state);
    char id[64];
    place_ok(ALICE, "cancel-1", "tok_ok", id);
    /* Each reply once its command is out, as the participants would: the
     * two feeds are pulled independently, so a PaymentAuthorized
     * published together with the StockReserved may be applied first,
     * while the saga still reserves, and is then rightly ignored as
     * unexpected; the saga then waits for its deadline (this was the
     * suite's flaky test on a loaded machine). */
    reply(F.inv, "StockReserved", id, NULL);
    json_decref(wait_step(id, "authorizing"));
    reply(F.pay, "PaymentAuthorized", id, "\"payment_id\": \"pay_4\"");
    json_decref(wait_step(id, "confirming"));
    reply(F.pay, "PaymentCaptured", id, "\"payment_id\": \"pay_4\"");
    reply(F.inv, "StockCommitted", id, NULL);
    assert_final(id, "confirmed", NULL);

    /* Someone else's order does not exist for them. */
    struct h_resp r;
    const char *bob[] = {as_user(BOB), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/orders/%s/cancel", F.ord.url, id), bob,
           NULL, 0);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/v1/orders/%s", F.ord.url, id), bob, NULL, 0);
    h_assert_problem(&r, 404);
    h_resp_release(&r);

    const char *alice[] = {as_user(ALICE), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/orders/%s/cancel", F.ord.url, id), alice,
           NULL, 0);
    h_assert_status(&r, 202);
    h_resp_release(&r);
    h_http(&r, "POST", h_fmt("%s/v1/orders/%s/cancel", F.ord.url, id), alice,
           NULL, 0);
    h_assert_status(&r, 200); /* already compensating */
    h_resp_release(&r);
    assert_string_equal(types_for(id),
                        "OrderPlaced,ReserveStock,AuthorizePayment,"
                        "CapturePayment,CommitStock,OrderConfirmed,"
                        "ReleaseStock,RefundPayment");
    reply(F.pay, "PaymentRefunded", id, "\"payment_id\": \"pay_4\"");
    reply(F.inv, "StockReleased", id, "\"returned\": true");
    assert_final(id, "cancelled", "customer_cancelled");

    /* A customer lists only their own orders. */
    bob[0] = as_user(BOB);
    h_http(&r, "GET", h_fmt("%s/v1/orders?customer_id=%s", F.ord.url, ALICE),
           bob, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "orders")), 0);
    json_decref(j);
    h_resp_release(&r);
}

static void test_idempotency_key(void **state)
{
    MOAT_UNUSED(state);
    char id[64];
    place_ok(BOB, "idem-1", "tok_ok", id);
    struct h_resp r;
    place(&r, BOB, "idem-1", order_body(F.product, 2, "tok_ok"));
    h_assert_status(&r, 201);
    assert_non_null(h_resp_header(&r, "Idempotent-Replayed"));
    json_t *j = h_resp_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "id")), id);
    json_decref(j);
    h_resp_release(&r);

    place(&r, BOB, "idem-1", order_body(F.product, 3, "tok_ok"));
    h_assert_problem(&r, 422);
    assert_non_null(strstr(r.body, "idempotency-key-reused"));
    h_resp_release(&r);

    /* The key is per customer. */
    char other[64];
    place_ok(ALICE, "idem-1", "tok_ok", other);
    assert_string_not_equal(id, other);

    place(&r, BOB, NULL, order_body(F.product, 1, "tok_ok"));
    h_assert_problem(&r, 400);
    h_resp_release(&r);
}

/* Same key while the first request still waits for catalog: 409. */
static void test_idempotency_key_in_progress(void **state)
{
    MOAT_UNUSED(state);
    kill(F.cat.pid, SIGSTOP);
    fflush(NULL);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        struct h_resp r;
        place(&r, BOB, "busy-1", order_body(F.product, 1, "tok_ok"));
        _exit(r.status == 201 ? 0 : 1);
    }
    /* The child's request is in orders (in flight besides our /metrics)
     * and, catalog being stopped, stays there. */
    H_WAIT_UNTIL(h_metric(F.ord.url, "moat_http_requests_in_flight") >= 2,
                 H_WAIT_MS, "the first busy-1 request in orders");
    struct h_resp r;
    place(&r, BOB, "busy-1", order_body(F.product, 1, "tok_ok"));
    h_assert_problem(&r, 409);
    assert_non_null(strstr(r.body, "idempotency-key-in-progress"));
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    kill(F.cat.pid, SIGCONT);
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* Once done, the same key replays the order. */
    place(&r, BOB, "busy-1", order_body(F.product, 1, "tok_ok"));
    h_assert_status(&r, 201);
    assert_non_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);
}

static void test_bad_orders(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    static const char *const bodies[] = {
        "{}",
        "[]",
        "{\"lines\": [], \"card_token\": \"tok_ok\"}",
        "{\"lines\": [{\"product_id\": \"prod_x\", \"quantity\": 1}], "
        "\"card_token\": \"tok_ok\"}",
        "{\"lines\": [{\"product_id\": \"prod_01J000000000000000000000ZZ\", "
        "\"quantity\": 0}], \"card_token\": \"tok_ok\"}",
        "{\"lines\": [{\"product_id\": \"prod_01J000000000000000000000ZZ\", "
        "\"quantity\": 1}], \"card_token\": \"4111 1111\"}",
        "{\"lines\": [{\"product_id\": \"prod_01J000000000000000000000ZZ\", "
        "\"quantity\": 1}], \"card_token\": \"tok\", \"x\": 1}",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bodies); i++) {
        place(&r, ALICE, h_fmt("bad-%zu", i), bodies[i]);
        h_assert_problem(&r, 422);
        h_resp_release(&r);
    }
    /* A well-formed id catalog does not know. */
    place(&r, ALICE, "bad-unknown",
          order_body("prod_01J000000000000000000000ZZ", 1, "tok_ok"));
    h_assert_problem(&r, 422);
    assert_non_null(strstr(r.body, "/lines/0/product_id"));
    h_resp_release(&r);
    /* Two currencies in one order. */
    place(&r, ALICE, "bad-currency",
          h_fmt("{\"lines\": [{\"product_id\": \"%s\", \"quantity\": 1}, "
                "{\"product_id\": \"%s\", \"quantity\": 1}], "
                "\"card_token\": \"tok_ok\"}",
                F.product, F.product2));
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    /* No end user: 401. */
    const char *svc_only[] = {h_service_token("orders", NULL, NULL),
                              "Idempotency-Key: k", NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/orders", F.ord.url),
                order_body(F.product, 1, "tok_ok"), svc_only);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    /* Bad list parameters. */
    h_http(&r, "GET", h_fmt("%s/v1/orders?limit=0&status=lost", F.ord.url),
           svc_only, NULL, 0);
    h_assert_problem(&r, 400);
    h_resp_release(&r);
}

/* Killed mid-saga, orders resumes from its database and its cursors. */
static void test_crash_resume(void **state)
{
    MOAT_UNUSED(state);
    char id[64];
    place_ok(ALICE, "crash-1", "tok_ok", id);
    h_service_kill(&F.ord);
    reply(F.inv, "StockReserved", id, NULL);
    assert_int_equal(h_service_restart(&F.ord, orders_env()), 0);
    json_decref(wait_step(id, "authorizing"));
    reply(F.pay, "PaymentAuthorized", id, "\"payment_id\": \"pay_5\"");
    json_decref(wait_step(id, "confirming"));
    reply(F.pay, "PaymentCaptured", id, "\"payment_id\": \"pay_5\"");
    reply(F.inv, "StockCommitted", id, NULL);
    assert_final(id, "confirmed", NULL);
}

/* The bytes of path (empty when it does not exist), as a moat_buf. */
static void read_all(const char *path, struct moat_buf *out)
{
    FILE *f = fopen(path, "rb");
    char chunk[65536];
    size_t n;
    while (f && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        moat_buf_add(out, chunk, n);
    if (f)
        fclose(f);
}

static bool on_disk(const char *needle)
{
    static const char *const files[] = {"orders.db", "orders.db-wal"};
    bool found = false;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(files); i++) {
        struct moat_buf b = MOAT_BUF_INIT;
        read_all(h_fmt("%s/orders-data/%s", F.tmp, files[i]), &b);
        found =
            found || (b.len && memmem(b.data, b.len, needle, strlen(needle)));
        moat_buf_release(&b);
    }
    return found;
}

/* A customer row of name_enc's shape: NULL (users does not know it) or
 * sealed; anything else (plain text) is -1. 1 once refreshed. */
static int legacy_row_state(void)
{
    sqlite3 *db = NULL;
    int state = -1;
    if (sqlite3_open_v2(h_fmt("%s/orders-data/orders.db", F.tmp), &db,
                        SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db,
                               "SELECT name_enc, stale FROM customers "
                               "WHERE id = 'usr_legacy'",
                               -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
            const char *name = (const char *)sqlite3_column_text(st, 0);
            bool sealed_or_null = !name || strncmp(name, "s1.", 3) == 0;
            state = !sealed_or_null ? -1 : sqlite3_column_int(st, 1) ? 0 : 1;
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return state;
}

/*
 * Migration 4 converts a database written before the customer copy was
 * sealed: the plain name and email are dropped (secure_delete overwrites
 * them), the customer is fetched again and stored sealed.
 */
static void test_customer_copy_migration(void **state)
{
    MOAT_UNUSED(state);
    /* The upgrade of a SQLite file written before sealing; a PostgreSQL
     * store was never unsealed. */
    if (h_pg_engine())
        skip();
    assert_int_equal(h_service_stop(&F.ord), 0);
    sqlite3 *db = NULL;
    assert_int_equal(
        sqlite3_open(h_fmt("%s/orders-data/orders.db", F.tmp), &db), SQLITE_OK);
    /* Back to schema 3, with a plain copy. */
    assert_int_equal(
        sqlite3_exec(db,
                     "DROP INDEX customers_key_id;"
                     "ALTER TABLE customers DROP COLUMN key_id;"
                     "ALTER TABLE customers RENAME COLUMN name_enc TO name;"
                     "ALTER TABLE customers RENAME COLUMN email_enc TO email;"
                     "DELETE FROM schema_migrations WHERE version = 4;"
                     "INSERT INTO customers (id, name, email, stale, "
                     "updated_ms) VALUES ('usr_legacy', 'Ottoline "
                     "Plainbrook', 'ottoline@legacy.example', 0, 1);",
                     NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    assert_true(on_disk("Ottoline Plainbrook"));

    assert_int_equal(h_service_restart(&F.ord, orders_env()), 0);
    H_WAIT_UNTIL(legacy_row_state() == 1, 10000,
                 "the legacy customer to be fetched again");
    assert_false(on_disk("Ottoline Plainbrook"));
    assert_false(on_disk("ottoline@legacy.example"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy_path),
        cmocka_unit_test(test_out_of_stock),
        cmocka_unit_test(test_declined),
        cmocka_unit_test(test_deadline_and_late_reply),
        cmocka_unit_test(test_customer_cancel),
        cmocka_unit_test(test_idempotency_key),
        cmocka_unit_test(test_idempotency_key_in_progress),
        cmocka_unit_test(test_bad_orders),
        cmocka_unit_test(test_crash_resume),
        cmocka_unit_test(test_customer_copy_migration),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
