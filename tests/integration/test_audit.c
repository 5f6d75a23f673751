/*
 * test_audit.c - `moat audit` proven able to fail.
 *
 * The chaos drills pass on "0 violations"; this test shows that the
 * auditor does see each broken promise it claims to check. The order saga
 * runs with every participant real (catalog, orders, inventory, payments,
 * the payment provider and notifications, as in test_saga.c); a small
 * deployment file names them so that `moat audit --json` reads them
 * through their APIs as the operator. A clean shop must audit to 0
 * violations first; then each step breaks one invariant in the owning
 * service's own store through its test hook (POST /v1/test/..., compiled
 * only with MOAT_TEST_HOOKS, as a bug would: no event, no log entry) and
 * the next audit must report that invariant by name, for the order (or
 * SKU) broken, as a violation the previous audit did not have.
 */
#include "moat/common.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"
#include "moat/buf.h"

#define MERCHANT_KEY "moat-shop-key-0123456789abcdef"
#define CONTROL_KEY  "control-key-0123456789abcdef"
#define ALICE        "usr_01J0000000000000000000AUDT"
#define SKU          "AUD-1"
#define PRICE        1500
#define CONFIRMED    14 /* orders placed to be confirmed */
/* Twice the usual bound: a whole saga over six services. */
#define SAGA_WAIT_MS (2 * H_WAIT_MS)

static struct {
    char *tmp;
    struct h_service cat, ord, inv, pay, pp, notif;
    struct h_feed *users;
    uint16_t ord_port;
    char env[24][1024];
    char deploy[512];
    char product[64];
    char conf[CONFIRMED][64]; /* confirmed orders */
    char declined[2][64];     /* cancelled, payment declined */
    char refunded[64];        /* cancelled by the customer after capture */
    json_t *seen;             /* "kind order sku" of the last audit */
} F;

/* ---- calls ---- */

/* h_get_json as an administrator of service aud. */
static json_t *get_json(const char *url, const char *aud)
{
    const char *hdrs[] = {h_service_token(aud, "usr_admin", "admin"), NULL};
    return h_get_json(url, hdrs);
}

/* A test hook: POST json to svc's path as an administrator. */
static void hook(const struct h_service *svc, const char *path,
                 const char *json)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token(svc->name, "usr_admin", "admin"),
                          NULL};
    h_send_json(&r, "POST", h_fmt("%s%s", svc->url, path), json, hdrs);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static void place(const char *key, int qty, const char *card, char out[64])
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", ALICE, "customer"),
                          h_fmt("Idempotency-Key: %s", key), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/orders", F.ord.url),
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

/* Is order id's saga done? step and status (16 bytes each): as read. */
static bool order_done(const char *id, char *step, char *status)
{
    json_t *o = get_json(h_fmt("%s/v1/orders/%s", F.ord.url, id), "orders");
    snprintf(step, 16, "%s", h_jstr(o, "step"));
    snprintf(status, 16, "%s", h_jstr(o, "status"));
    json_decref(o);
    return strcmp(step, "done") == 0;
}

/* Wait until the order's saga is done; returns its status. */
static const char *wait_final(const char *id)
{
    static char status[16];
    char step[16] = "";
    H_WAIT_UNTIL(order_done(id, step, status), SAGA_WAIT_MS,
                 "order %s to finish (last: step %s, status %s)", id, step,
                 status);
    return status;
}

/* The order's one payment id (payments' list). */
static const char *payment_of(const char *order_id)
{
    static char id[64];
    json_t *j = get_json(
        h_fmt("%s/v1/payments?order_id=%s", F.pay.url, order_id), "payments");
    json_t *p = json_array_get(json_object_get(j, "items"), 0);
    assert_non_null(p);
    snprintf(id, sizeof(id), "%s", h_jstr(p, "id"));
    json_decref(j);
    return id;
}

/* The id of the order's notification of kind ("order.placed"...). */
static const char *notification_of(const char *order_id, const char *kind)
{
    static char id[64];
    json_t *j = get_json(
        h_fmt("%s/v1/notifications?order_id=%s", F.notif.url, order_id),
        "notifications");
    size_t i;
    json_t *n;
    id[0] = '\0';
    json_array_foreach(json_object_get(j, "notifications"), i, n)
    {
        if (strcmp(h_jstr(n, "kind"), kind) == 0)
            snprintf(id, sizeof(id), "%s", h_jstr(n, "id"));
    }
    json_decref(j);
    if (!id[0])
        fail_msg("order %s has no %s notification", order_id, kind);
    return id;
}

/* ---- the audit ---- */

/* Run `moat audit --json`; returns its report (the exit status checked
 * against it). */
static json_t *audit(void)
{
    int st;
    char *out = h_run_capture(
        h_fmt("%s/moat audit --file %s --json 2>&1", MOAT_BIN_DIR, F.deploy),
        &st);
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    if (!j)
        fail_msg("moat audit did not answer JSON (%s):\n%s", err.text, out);
    free(out);
    /* 0 clean, 1 violations (cli.h CLI_AUDIT_*). */
    assert_int_equal(st, json_is_true(json_object_get(j, "ok")) ? 0 : 1);
    assert_int_equal(json_integer_value(json_object_get(j, "violation_count")),
                     json_array_size(json_object_get(j, "violations")));
    return j;
}

static const char *vkey(json_t *v)
{
    return h_fmt("%s %s %s", h_jstr(v, "kind"), h_jstr(v, "order_id"),
                 h_jstr(v, "sku"));
}

/*
 * Audit again and check that the violations new since the last audit
 * include every "kind order_id sku" of want (NULL-terminated; "" for a
 * member a violation of that kind has not). Prints what is new.
 */
static void expect_new(const char *what, const char *const *want)
{
    /* want may point into h_fmt's rotating buffers: keep copies. */
    json_t *wanted = json_array();
    for (const char *const *w = want; *w; w++)
        json_array_append_new(wanted, json_string(*w));
    json_t *report = audit();
    json_t *now = json_object();
    json_t *fresh = json_object();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(report, "violations"), i, v)
    {
        const char *k = vkey(v);
        json_object_set(now, k, v);
        if (!json_object_get(F.seen, k))
            json_object_set(fresh, k, v);
    }
    fprintf(stderr, "%s: %zu violations, new:\n", what, json_object_size(now));
    const char *k;
    json_object_foreach(fresh, k, v)
    {
        fprintf(stderr, "  %s (%s)\n", k, h_jstr(v, "detail"));
    }
    json_array_foreach(wanted, i, v)
    {
        const char *w = json_string_value(v);
        json_t *hit = json_object_get(fresh, w);
        if (!hit)
            fail_msg("%s: the audit did not report \"%s\"", what, w);
        /* Named by order id and its trace, or by SKU. */
        if (*h_jstr(hit, "order_id"))
            assert_true(strlen(h_jstr(hit, "trace_id")) == 32);
    }
    json_decref(F.seen);
    F.seen = now;
    json_decref(fresh);
    json_decref(wanted);
    json_decref(report);
}

/* Does a new audit say ok? *r: that audit (the previous one released). */
static bool audits_ok(json_t **r)
{
    json_decref(*r);
    *r = audit();
    return json_is_true(json_object_get(*r, "ok"));
}

/* j as compact JSON text (rotating buffer, cut at 4 KiB). */
static const char *dump_brief(const json_t *j)
{
    char *t = json_dumps(j, JSON_COMPACT);
    const char *out = h_fmt("%s", t ? t : "(none)");
    free(t);
    return out;
}

/* The audit's verdict settles once notifications have caught up. */
static void expect_clean(void)
{
    json_t *r = NULL;
    H_WAIT_UNTIL(audits_ok(&r), SAGA_WAIT_MS,
                 "a clean shop to audit to 0 violations (last audit: %s)",
                 dump_brief(r));
    json_t *sum = json_object_get(r, "summary");
    assert_int_equal(json_integer_value(json_object_get(sum, "orders")),
                     CONFIRMED + 3);
    assert_true(json_is_true(json_object_get(sum, "ledger_compared")));
    assert_int_equal(json_array_size(json_object_get(sum, "notes")), 0);
    json_decref(r);
}

/* ---- fixture ---- */

static const char *const *env_list(size_t from, size_t n)
{
    static const char *list[12];
    for (size_t i = 0; i < n; i++)
        list[i] = F.env[from + i];
    list[n] = NULL;
    return list;
}

/* MOAT_PEER_KEYS for self as the harness makes it, plus the operator (the
 * CLI's identity, whose key is in the deployment's secrets.json). */
static void peer_keys(char *out, size_t cap, const char *self)
{
    static const char *const peers[] = {
        "gateway",   "catalog",  "users",         "inventory",
        "orders",    "payments", "search",        "reporting",
        "readmodel", "test",     "notifications", "operator"};
    size_t off = (size_t)snprintf(out, cap, "MOAT_PEER_KEYS=");
    for (size_t i = 0; i < MOAT_ARRAY_LEN(peers); i++)
        off += (size_t)snprintf(out + off, cap - off, "%s%s:%s", i ? "," : "",
                                peers[i], h_test_pair_key(peers[i], self));
    assert_true(off < cap);
}

static void write_deployment(void)
{
    char var[512];
    snprintf(var, sizeof(var), "%s/var", F.tmp);
    assert_int_equal(mkdir(var, 0700), 0);
    h_write_file(h_fmt("%s/secrets.json", var),
                 h_fmt("{\"version\": 1, \"service_keys\": {\"operator\": "
                       "\"%s\"}, \"shared\": {}}",
                       h_test_service_key("operator")));
    json_t *svcs = json_array();
    const struct {
        struct h_service *s;
        const char *engine, *db;
    } all[] = {{&F.ord, "sqlite", "orders.db"},
               {&F.inv, "lmdb", "inventory.lmdb"},
               {&F.pay, "sqlite", "payments.db"},
               {&F.notif, "sqlite", "notifications.db"}};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++) {
        json_t *s = json_pack("{s:s, s:s, s:s, s:s}", "name", all[i].s->name,
                              "listen", all[i].s->url + strlen("http://"),
                              "engine", all[i].engine, "db", all[i].db);
        if (all[i].s == &F.pay)
            json_object_set_new(
                s, "env",
                json_pack("{s:s, s:s}", "MOAT_PAYMENTS_PROVIDER_URL", F.pp.url,
                          "MOAT_PAYMENTS_PROVIDER_KEY", MERCHANT_KEY));
        json_array_append_new(svcs, s);
    }
    json_t *d = json_pack("{s:s, s:s, s:o}", "name", "audit", "var_dir", var,
                          "services", svcs);
    snprintf(F.deploy, sizeof(F.deploy), "%s/moat.json", F.tmp);
    assert_int_equal(json_dump_file(d, F.deploy, JSON_INDENT(2)), 0);
    json_decref(d);
}

static int start(struct h_service *s, const char *name, size_t env_from,
                 size_t nenv)
{
    peer_keys(F.env[env_from + nenv], sizeof(F.env[0]), name);
    return h_service_start(s, name, F.tmp, h_fmt("%s/%s-data", F.tmp, name),
                           env_list(env_from, nenv + 1));
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("audit");
    F.users = h_feed_start("users", F.tmp);
    F.ord_port = h_free_port();
    char ord_url[64];
    snprintf(ord_url, sizeof(ord_url), "http://127.0.0.1:%u",
             (unsigned)F.ord_port);

    if (start(&F.cat, "catalog", 0, 0) != 0)
        return -1;
    snprintf(F.env[2], 256, "MOAT_INVENTORY_ORDERS_URL=%s", ord_url);
    snprintf(F.env[3], 256, "MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER=100");
    if (start(&F.inv, "inventory", 2, 2) != 0)
        return -1;
    snprintf(F.env[6], 256, "MOAT_PAYPROVIDER_API_KEYS=moat-shop:%s",
             MERCHANT_KEY);
    snprintf(F.env[7], 256, "MOAT_PAYPROVIDER_CONTROL_KEY=%s", CONTROL_KEY);
    snprintf(F.env[8], 256, "MOAT_PAYPROVIDER_LATENCY_MS=2");
    if (start(&F.pp, "payprovider", 6, 3) != 0)
        return -1;
    snprintf(F.env[10], 256, "MOAT_PAYMENTS_PROVIDER_URL=%s", F.pp.url);
    snprintf(F.env[11], 256, "MOAT_PAYMENTS_PROVIDER_KEY=%s", MERCHANT_KEY);
    snprintf(F.env[12], 256, "MOAT_PAYMENTS_ORDERS_URL=%s", ord_url);
    if (start(&F.pay, "payments", 10, 3) != 0)
        return -1;
    snprintf(F.env[14], 256, "MOAT_LISTEN=127.0.0.1:%u", (unsigned)F.ord_port);
    snprintf(F.env[15], 256, "MOAT_ORDERS_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[16], 256, "MOAT_ORDERS_INVENTORY_URL=%s", F.inv.url);
    snprintf(F.env[17], 256, "MOAT_ORDERS_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[18], 256, "MOAT_ORDERS_USERS_URL=%s", h_feed_url(F.users));
    if (start(&F.ord, "orders", 14, 5) != 0)
        return -1;
    snprintf(F.env[20], 256, "MOAT_NOTIFICATIONS_ORDERS_URL=%s", F.ord.url);
    if (start(&F.notif, "notifications", 20, 1) != 0)
        return -1;
    write_deployment();

    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat.url),
                "{\"sku\": \"" SKU "\", \"name\": \"Audit mug\", \"price\": "
                "{\"amount\": 1500, \"currency\": \"EUR\"}}",
                NULL);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.product, sizeof(F.product), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    /* AUD-1 is sold; AUD-2 .. AUD-5 only stocked, one per stock check. */
    for (int k = 1; k <= 5; k++) {
        const char *admin[] = {
            h_service_token("inventory", "usr_admin", "admin"), NULL};
        h_send_json(&r, "PUT", h_fmt("%s/v1/stock/AUD-%d", F.inv.url, k),
                    "{\"on_hand\": 100, \"reason\": \"initial\"}", admin);
        h_assert_status(&r, 201);
        h_resp_release(&r);
    }
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    struct h_service *all[] = {&F.notif, &F.ord, &F.pay, &F.pp, &F.inv, &F.cat};
    int bad = 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++) {
        if (h_service_stop(all[i]) != 0) {
            print_error("%s did not exit 0 on SIGTERM\n", all[i]->name);
            bad++;
        }
        h_service_release(all[i]);
    }
    h_feed_stop(F.users);
    h_auto_headers_clear();
    json_decref(F.seen);
    h_rmtree(F.tmp);
    free(F.tmp);
    return bad ? -1 : 0;
}

/* ---- the test ---- */

static void shop(void)
{
    for (int i = 0; i < CONFIRMED; i++)
        place(h_fmt("conf-%d", i), 2, "tok_ok", F.conf[i]);
    place("declined-0", 1, "tok_decline", F.declined[0]);
    place("declined-1", 1, "tok_decline", F.declined[1]);
    place("refunded", 1, "tok_ok", F.refunded);
    for (int i = 0; i < CONFIRMED; i++)
        assert_string_equal(wait_final(F.conf[i]), "confirmed");
    for (int i = 0; i < 2; i++)
        assert_string_equal(wait_final(F.declined[i]), "cancelled");
    assert_string_equal(wait_final(F.refunded), "confirmed");
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", ALICE, "customer"), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/orders/%s/cancel", F.ord.url, F.refunded),
           hdrs, NULL, 0);
    h_assert_status(&r, 202);
    h_resp_release(&r);
    assert_string_equal(wait_final(F.refunded), "cancelled");
}

#define WANT(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_audit_sees_each_broken_invariant(void **state)
{
    MOAT_UNUSED(state);
    shop();
    expect_clean();
    F.seen = json_object();

    /* Money. */
    hook(&F.pay, h_fmt("/v1/test/payments/%s", payment_of(F.refunded)),
         "{\"status\": \"captured\"}");
    expect_new("a captured payment on a cancelled order",
               WANT(h_fmt("payment-not-released %s ", F.refunded),
                    "ledger-mismatch  "));
    hook(&F.pay, h_fmt("/v1/test/payments/%s", payment_of(F.conf[0])),
         "{\"status\": \"failed\"}");
    expect_new("a confirmed order without its capture",
               WANT(h_fmt("payment-not-captured %s ", F.conf[0])));
    hook(&F.pay, h_fmt("/v1/test/payments/%s", payment_of(F.conf[1])),
         "{\"status\": \"voided\"}");
    expect_new("a confirmed order whose payment was voided",
               WANT(h_fmt("payment-not-captured %s ", F.conf[1]),
                    h_fmt("payment-extra %s ", F.conf[1])));
    hook(&F.pay, h_fmt("/v1/test/payments/%s", payment_of(F.conf[2])),
         h_fmt("{\"amount\": %d}", 2 * PRICE + 1));
    expect_new("a capture off by one cent",
               WANT(h_fmt("payment-amount %s ", F.conf[2])));
    char other[64];
    snprintf(other, sizeof(other), "%s", payment_of(F.conf[4]));
    hook(&F.ord, h_fmt("/v1/test/orders/%s", F.conf[3]),
         h_fmt("{\"payment_id\": \"%s\"}", other));
    expect_new("an order naming another order's payment",
               WANT(h_fmt("payment-id %s ", F.conf[3])));

    /* Reservations. */
    hook(&F.inv, h_fmt("/v1/test/reservations/%s", F.declined[0]),
         "{\"state\": \"held\"}");
    expect_new("a held reservation on a cancelled order",
               WANT(h_fmt("reservation-not-released %s ", F.declined[0]),
                    "stock-reserved  " SKU));
    hook(&F.inv, h_fmt("/v1/test/reservations/%s", F.conf[5]),
         "{\"state\": \"released\"}");
    expect_new("a confirmed order's reservation released",
               WANT(h_fmt("reservation-not-committed %s ", F.conf[5]),
                    "stock-sold  " SKU));
    hook(&F.ord, h_fmt("/v1/test/orders/%s", F.conf[6]),
         "{\"line_quantity\": 3}");
    expect_new("order lines unlike the committed reservation",
               WANT(h_fmt("reservation-lines %s ", F.conf[6])));

    /* Stock arithmetic, one SKU per check. */
    hook(&F.inv, "/v1/test/stock/AUD-2", "{\"on_hand\": 1}");
    expect_new("on_hand off by one", WANT("stock-ledger  AUD-2"));
    hook(&F.inv, "/v1/test/stock/AUD-3", "{\"reserved\": 1}");
    expect_new("reserved off by one", WANT("stock-reserved  AUD-3"));
    hook(&F.inv, "/v1/test/stock/AUD-4", "{\"sold\": 1}");
    expect_new("sold off by one", WANT("stock-sold  AUD-4"));
    hook(&F.inv, "/v1/test/stock/AUD-5", "{\"reserved\": 101}");
    expect_new("more reserved than on hand", WANT("stock-bounds  AUD-5"));

    /* Deadlines: the sweeper stopped, as if it had died. */
    hook(&F.ord, "/v1/test/sweeper", "{\"running\": false}");
    hook(&F.ord, h_fmt("/v1/test/orders/%s", F.conf[7]),
         "{\"status\": \"pending\", \"step\": \"reserving\", "
         "\"deadline_ago_s\": 3600}");
    expect_new("a saga an hour past its deadline",
               WANT(h_fmt("saga-stuck %s ", F.conf[7])));
    hook(&F.ord, h_fmt("/v1/test/orders/%s", F.conf[8]),
         "{\"status\": \"pending\", \"step\": \"compensating\", "
         "\"updated_ago_s\": 3600}");
    expect_new("a compensation stuck for an hour",
               WANT(h_fmt("saga-stuck %s ", F.conf[8])));
    hook(&F.ord, h_fmt("/v1/test/orders/%s", F.conf[13]),
         "{\"status\": \"pending\", \"step\": \"authorizing\", "
         "\"no_deadline\": true, \"updated_ago_s\": 3600}");
    expect_new("a timed step that lost its deadline an hour ago",
               WANT(h_fmt("saga-stuck %s ", F.conf[13])));
    hook(&F.ord, h_fmt("/v1/test/orders/%s", F.conf[9]),
         "{\"status\": \"lost\"}");
    expect_new("an order in no known status",
               WANT(h_fmt("order-status %s ", F.conf[9])));

    /* Notifications. */
    hook(&F.notif,
         h_fmt("/v1/test/notifications/%s",
               notification_of(F.conf[10], "order.confirmed")),
         "{\"delete\": true}");
    expect_new("a missing notification",
               WANT(h_fmt("notification-confirmed %s ", F.conf[10])));
    hook(&F.notif,
         h_fmt("/v1/test/notifications/%s",
               notification_of(F.conf[11], "order.placed")),
         "{\"copy_status\": \"cancelled\"}");
    expect_new("a duplicated notification",
               WANT(h_fmt("notification-placed %s ", F.conf[11])));
    hook(&F.notif,
         h_fmt("/v1/test/notifications/%s",
               notification_of(F.conf[12], "order.placed")),
         "{\"kind\": \"order.shipped\"}");
    expect_new("a notification of no known kind",
               WANT(h_fmt("notification-unknown %s ", F.conf[12])));
    hook(&F.notif,
         h_fmt("/v1/test/notifications/%s",
               notification_of(F.declined[1], "order.cancelled")),
         "{\"delete\": true}");
    expect_new("a cancelled order never told",
               WANT(h_fmt("notification-cancelled %s ", F.declined[1])));
    hook(&F.ord, h_fmt("/v1/test/orders/%s", F.conf[4]),
         "{\"status\": \"pending\", \"step\": \"confirming\"}");
    expect_new("a pending order already told it was confirmed",
               WANT(h_fmt("notification-early %s ", F.conf[4])));

    /* The provider's own books. */
    struct h_resp r;
    const char *ctl[] = {"Authorization: Bearer " CONTROL_KEY, NULL};
    h_http(&r, "POST", h_fmt("%s/_test/ledger/repeat-last", F.pp.url), ctl,
           NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    expect_new("the provider wrote a ledger entry twice",
               WANT("provider-inconsistent  "));
}

/* The hooks are administrators' only, like every other back-office route. */
static void test_hooks_need_an_administrator(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *cust[] = {h_service_token("orders", ALICE, "customer"), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/test/sweeper", F.ord.url),
                "{\"running\": true}", cust);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    h_send_json(&r, "POST", h_fmt("%s/v1/test/stock/AUD-2", F.inv.url),
                "{\"on_hand\": 1}", NULL);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_audit_sees_each_broken_invariant),
        cmocka_unit_test(test_hooks_need_an_administrator),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
