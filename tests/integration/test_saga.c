/*
 * test_saga.c - the CreateOrder saga end to end with every participant
 * real: moat-catalog, moat-orders, moat-inventory, moat-payments,
 * moat-payprovider and moat-notifications as processes, talking only
 * through their APIs and feeds (docs/saga.md). Each scenario of the issue
 * ends in the right final state with the right compensations, checked in
 * every service that holds a piece of it: the order, the payment, the
 * reservation and stock, the notifications.
 */
#include "moat/common.h"

#include <dirent.h>
#include <string.h>

#include "harness.h"

#define ALICE   "usr_01J0000000000000000000SAGA"
#define INITIAL 100

/* The saga's step deadline, scaled: long enough for every order that
 * should be confirmed; the deadline tests outlast it on purpose (an outage,
 * a provider latency of 1.5 deadlines). */
#define STEP_TIMEOUT_MS 3000

/* The deployment file: moat.json, or its JetStream variant
 * (test_saga_jetstream.c includes this file with its own). */
#ifndef SAGA_DEPLOYMENT
#define SAGA_DEPLOYMENT(tmp) (MOAT_SOURCE_DIR "/moat.json")
#endif

static struct {
    char *tmp;
    struct h_deployment dep; /* moat.json: the real wiring */
    struct h_service *cat, *ord, *inv, *pay, *pp, *notif;
    struct h_feed *users;
    char env[8][256];
    char product[64];
} F;

/* ---- calls ---- */

static json_t *get_json(const char *url, const char *aud)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token(aud, NULL, NULL), NULL};
    h_http(&r, "GET", url, hdrs, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static void provider_control(const char *json)
{
    struct h_resp r;
    const char *hdrs[] = {
        h_fmt("Authorization: Bearer %s",
              h_deployment_secret("MOAT_PAYPROVIDER_CONTROL_KEY")),
        NULL};
    h_send_json(&r, "POST", h_fmt("%s/_control", F.pp->url), json, hdrs);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static void place(const char *key, int qty, const char *card, char out[64])
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", ALICE, "customer"),
                          h_fmt("Idempotency-Key: %s", key), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/orders", F.ord->url),
                h_fmt("{\"lines\": [{\"product_id\": \"%s\", \"quantity\": "
                      "%d}], \"card_token\": \"%s\"}",
                      F.product, qty, card),
                hdrs);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(out, 64, "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
}

/* The order's step is step (o: the order last read, replaced). */
static bool at_step(json_t **o, const char *id, const char *step)
{
    json_decref(*o);
    *o = get_json(h_fmt("%s/v1/orders/%s", F.ord->url, id), "orders");
    return strcmp(h_jstr(*o, "step"), step) == 0;
}

/* Wait until the order's saga is in step; returns the order. */
static json_t *wait_step(const char *id, const char *step)
{
    json_t *o = NULL;
    H_WAIT_UNTIL(at_step(&o, id, step), H_WAIT_MS, "order %s at step %s", id,
                 step);
    return o;
}

static json_t *wait_final(const char *id)
{
    return wait_step(id, "done");
}

static void assert_order(json_t *o, const char *status, const char *reason)
{
    assert_string_equal(h_jstr(o, "status"), status);
    if (reason)
        assert_string_equal(h_jstr(o, "cancel_reason"), reason);
}

/* The order's payment status ("" when payments has none). */
static const char *payment_status(const char *id, json_int_t *amount)
{
    static char out[32];
    json_t *j = get_json(h_fmt("%s/v1/payments?order_id=%s", F.pay->url, id),
                         "payments");
    json_t *p = json_array_get(json_object_get(j, "items"), 0);
    snprintf(out, sizeof(out), "%s", p ? h_jstr(p, "status") : "");
    if (amount)
        *amount = p ? h_jint(p, "amount") : 0;
    json_decref(j);
    return out;
}

static const char *reservation_state(const char *id)
{
    static char out[32];
    struct h_resp r;
    const char *hdrs[] = {h_service_token("inventory", NULL, NULL), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/reservations/%s", F.inv->url, id), hdrs,
           NULL, 0);
    json_t *j = h_resp_json(&r);
    snprintf(out, sizeof(out), "%s", r.status == 200 ? h_jstr(j, "state") : "");
    json_decref(j);
    h_resp_release(&r);
    return out;
}

/* on_hand, reserved and sold of the test SKU. */
static void stock(json_int_t *on_hand, json_int_t *reserved, json_int_t *sold)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("inventory", "usr_admin", "admin"),
                          NULL};
    h_http(&r, "GET", h_fmt("%s/v1/stock/SAGA-1", F.inv->url), hdrs, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    *on_hand = h_jint(j, "on_hand");
    *reserved = h_jint(j, "reserved");
    *sold = h_jint(j, "sold");
    json_decref(j);
    h_resp_release(&r);
}

/* The kinds of the order's notifications, in order, joined by ','; waits
 * (bounded) until there are want of them. */
/* The kinds of the order's notifications, joined by ','; true when there
 * are at least want of them. */
static bool notification_kinds(const char *id, size_t want, char out[256])
{
    json_t *j =
        get_json(h_fmt("%s/v1/notifications?order_id=%s", F.notif->url, id),
                 "notifications");
    json_t *list = json_object_get(j, "notifications");
    out[0] = '\0';
    size_t k;
    json_t *n;
    json_array_foreach(list, k, n)
    {
        size_t len = strlen(out);
        snprintf(out + len, 256 - len, "%s%s", len ? "," : "",
                 h_jstr(n, "kind"));
    }
    size_t got = json_array_size(list);
    json_decref(j);
    return got >= want;
}

static const char *notifications(const char *id, size_t want)
{
    static char out[256];
    H_WAIT_UNTIL(notification_kinds(id, want, out), H_WAIT_MS,
                 "%zu notifications of order %s (have %s)", want, id, out);
    return out;
}

/* Maildir files in notifications' new/ and cur/ naming order id. */
static size_t mail_files(const char *id)
{
    size_t n = 0;
    static const char *const dirs[] = {"new", "cur"};
    for (size_t d = 0; d < 2; d++) {
        DIR *dir =
            opendir(h_fmt("%s/notifications-data/maildir/%s", F.tmp, dirs[d]));
        if (!dir)
            continue;
        struct dirent *e;
        while ((e = readdir(dir))) {
            if (e->d_name[0] == '.')
                continue;
            const char *path = h_fmt("%s/notifications-data/maildir/%s/%s",
                                     F.tmp, dirs[d], e->d_name);
            FILE *f = fopen(path, "r");
            char buf[4096];
            size_t len = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
            if (f)
                fclose(f);
            buf[len] = '\0';
            if (strstr(buf, id))
                n++;
        }
        closedir(dir);
    }
    return n;
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("saga");
    F.users = h_feed_start("users", F.tmp);
    /* The deployment's own file, users played by a feed. */
    snprintf(F.env[0], 256, "orders:MOAT_ORDERS_USERS_URL=%s",
             h_feed_url(F.users));
    snprintf(F.env[1], 256, "orders:MOAT_ORDERS_STEP_TIMEOUT_MS=%u",
             h_scaled_ms(STEP_TIMEOUT_MS));
    snprintf(F.env[2], 256, "payments:MOAT_PAYMENTS_PROVIDER_TIMEOUT_MS=%u",
             h_scaled_ms(8000));
    snprintf(F.env[3], 256, "payprovider:MOAT_PAYPROVIDER_LATENCY_MS=2");
    const char *env[] = {F.env[0], F.env[1], F.env[2], F.env[3], NULL};
    static const char *const only[] = {
        "catalog",     "inventory",     "payments", "orders",
        "payprovider", "notifications", NULL};
    if (h_deployment_start(&F.dep, SAGA_DEPLOYMENT(F.tmp), F.tmp, only, env) !=
        0)
        return -1;
    F.cat = h_deployment_service(&F.dep, "catalog");
    F.ord = h_deployment_service(&F.dep, "orders");
    F.inv = h_deployment_service(&F.dep, "inventory");
    F.pay = h_deployment_service(&F.dep, "payments");
    F.pp = h_deployment_service(&F.dep, "payprovider");
    F.notif = h_deployment_service(&F.dep, "notifications");

    h_auto_service_token(F.cat->url, "catalog", "usr_admin", "admin");
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat->url),
                "{\"sku\": \"SAGA-1\", \"name\": \"Saga mug\", \"price\": "
                "{\"amount\": 1500, \"currency\": \"EUR\"}}",
                NULL);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.product, sizeof(F.product), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    const char *admin[] = {h_service_token("inventory", "usr_admin", "admin"),
                           NULL};
    h_send_json(&r, "PUT", h_fmt("%s/v1/stock/SAGA-1", F.inv->url),
                h_fmt("{\"on_hand\": %d, \"reason\": \"initial\"}", INITIAL),
                admin);
    h_assert_status(&r, 201);
    h_resp_release(&r);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int bad = h_deployment_stop(&F.dep);
    h_feed_stop(F.users);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    return bad ? -1 : 0;
}

/* ---- scenarios ---- */

static void test_happy_path(void **state)
{
    MOAT_UNUSED(state);
    json_int_t on0, res0, sold0, on1, res1, sold1, amount;
    stock(&on0, &res0, &sold0);
    char id[64];
    place("happy", 2, "tok_ok", id);
    json_t *o = wait_final(id);
    assert_order(o, "confirmed", NULL);
    assert_int_equal(h_jint(o, "total"), 3000);
    json_decref(o);
    assert_string_equal(payment_status(id, &amount), "captured");
    assert_int_equal(amount, 3000);
    assert_string_equal(reservation_state(id), "committed");
    stock(&on1, &res1, &sold1);
    assert_int_equal(on1, on0 - 2);
    assert_int_equal(sold1, sold0 + 2);
    assert_int_equal(res1, res0);
    assert_string_equal(notifications(id, 2), "order.placed,order.confirmed");
    H_WAIT_UNTIL(mail_files(id) >= 2, H_WAIT_MS, "2 mails for order %s", id);
    assert_int_equal(mail_files(id), 2);
}

static void test_out_of_stock(void **state)
{
    MOAT_UNUSED(state);
    char id[64];
    place("oos", INITIAL + 1, "tok_ok", id);
    json_t *o = wait_final(id);
    assert_order(o, "cancelled", "out_of_stock");
    json_decref(o);
    assert_string_equal(payment_status(id, NULL), "");
    assert_string_equal(notifications(id, 2), "order.placed,order.cancelled");
}

static void test_declined(void **state)
{
    MOAT_UNUSED(state);
    json_int_t on0, res0, sold0, on1, res1, sold1;
    stock(&on0, &res0, &sold0);
    char id[64];
    place("declined", 3, "tok_decline", id);
    json_t *o = wait_final(id);
    assert_order(o, "cancelled", "payment_declined");
    json_decref(o);
    assert_string_equal(payment_status(id, NULL), "declined");
    assert_string_equal(reservation_state(id), "released");
    stock(&on1, &res1, &sold1);
    assert_int_equal(on1, on0);
    assert_int_equal(res1, res0);
    assert_int_equal(sold1, sold0);
}

/* A short outage: payments retries and the order still goes through. */
static void test_outage_then_recovery(void **state)
{
    MOAT_UNUSED(state);
    provider_control("{\"outage\": true, \"outage_status\": 503}");
    char id[64];
    place("outage", 1, "tok_ok", id);
    /* A window, not a wait: the outage lasts a while (well within the
     * deadline) so that payments has to retry. */
    h_sleep_ms(h_scaled_ms(600));
    provider_control("{\"outage\": false}");
    json_t *o = wait_final(id);
    assert_order(o, "confirmed", NULL);
    json_decref(o);
    assert_string_equal(payment_status(id, NULL), "captured");
}

/* An outage longer than the step's deadline: compensated, and the
 * authorization the provider grants after recovery is voided. */
static void test_deadline_expiry(void **state)
{
    MOAT_UNUSED(state);
    provider_control("{\"outage\": true, \"outage_status\": 503}");
    char id[64];
    place("deadline", 1, "tok_ok", id);
    /* The void waits behind the authorization payments keeps retrying. */
    json_t *o = wait_step(id, "compensating");
    assert_string_equal(h_jstr(o, "cancel_reason"), "provider_unavailable");
    json_decref(o);
    provider_control("{\"outage\": false}");
    o = wait_final(id);
    assert_order(o, "cancelled", "provider_unavailable");
    json_decref(o);
    assert_string_equal(reservation_state(id), "released");
    const char *st = "";
    H_WAIT_UNTIL((st = payment_status(id, NULL),
                  strcmp(st, "voided") == 0 || strcmp(st, "declined") == 0),
                 H_WAIT_MS, "payment of %s voided or declined (is %s)", id, st);
}

/* The provider answers after the deadline: the late authorization is
 * voided, never captured. */
static void test_late_reply_after_compensation(void **state)
{
    MOAT_UNUSED(state);
    provider_control(
        h_fmt("{\"latency_ms\": %u}", h_scaled_ms(STEP_TIMEOUT_MS * 3 / 2)));
    char id[64];
    place("late", 1, "tok_ok", id);
    json_t *o = wait_final(id);
    assert_order(o, "cancelled", "deadline_exceeded");
    json_decref(o);
    provider_control("{\"latency_ms\": 2}");
    const char *st = "";
    H_WAIT_UNTIL(strcmp(st = payment_status(id, NULL), "voided") == 0,
                 H_WAIT_MS, "payment of %s voided (is %s)", id, st);
    assert_string_equal(reservation_state(id), "released");
}

static void test_customer_cancel(void **state)
{
    MOAT_UNUSED(state);
    json_int_t on0, res0, sold0, on1, res1, sold1;
    stock(&on0, &res0, &sold0);
    char id[64];
    place("cancel", 2, "tok_ok", id);
    json_decref(wait_final(id));
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", ALICE, "customer"), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/orders/%s/cancel", F.ord->url, id), hdrs,
           NULL, 0);
    h_assert_status(&r, 202);
    h_resp_release(&r);
    json_t *o = wait_final(id);
    assert_order(o, "cancelled", "customer_cancelled");
    json_decref(o);
    assert_string_equal(payment_status(id, NULL), "refunded");
    assert_string_equal(reservation_state(id), "released");
    stock(&on1, &res1, &sold1);
    assert_int_equal(on1, on0);
    assert_int_equal(sold1, sold0);
    assert_string_equal(notifications(id, 3),
                        "order.placed,order.confirmed,order.cancelled");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy_path),
        cmocka_unit_test(test_out_of_stock),
        cmocka_unit_test(test_declined),
        cmocka_unit_test(test_outage_then_recovery),
        cmocka_unit_test(test_deadline_expiry),
        cmocka_unit_test(test_late_reply_after_compensation),
        cmocka_unit_test(test_customer_cancel),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
