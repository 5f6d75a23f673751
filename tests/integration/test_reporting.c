/*
 * test_reporting.c - the reporting warehouse end to end: moat-catalog,
 * moat-inventory, moat-payprovider, moat-payments, moat-orders,
 * moat-notifications and moat-reporting as processes. A workload of 30
 * orders (confirmed, declined, out of stock, and confirmed then cancelled
 * by the customer, i.e. refunded) runs through the saga; once every order
 * is final and reporting has caught up with its four feeds, each report
 * must equal what the orders and payments APIs say, computed here
 * independently. Also: CSV, the product reload from catalog's API, no raw
 * customer id anywhere in reporting's files, bad parameters, access, and
 * replay (verify identical, and a full rebuild giving the same reports).
 */
#include "moat/common.h"

#include <dirent.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MERCHANT_KEY  "moat-shop-key-0123456789abcdef"
#define CONTROL_KEY   "control-key-0123456789abcdef"
#define PSEUDONYM_KEY "reporting-test-pseudonym-key-0123456789"
#define ALICE         "usr_01J000000000000000REPALICE"
#define BOB           "usr_01J0000000000000000REPBOB0"
#define STOCK_AB      200
#define STOCK_C       5
#define NPRODUCTS     3
#define WAIT_MS       60000 /* for the saga or the consumer, scaled */

static struct {
    char *tmp;
    struct h_service cat, ord, inv, pay, pp, notif, rep;
    struct h_feed *users;
    uint16_t ord_port;
    char env[24][256];
    char product[NPRODUCTS][64];
} F;

static const char *const skus[NPRODUCTS] = {"REP-A", "REP-B", "REP-C"};
/* A name with a comma and quotes: CSV must quote it (RFC 4180). */
static const char *const names[NPRODUCTS] = {"Mug, \\\"large\\\"", "Teapot",
                                             "Rare vase"};
static const int prices[NPRODUCTS] = {1000, 2500, 700};

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

/* A report as JSON (reporting's auto header carries the token). */
static json_t *report(const char *name_query)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/reports/%s", F.rep.url, name_query));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    assert_non_null(j);
    return j;
}

static void place(const char *user, const char *key, const char *lines,
                  const char *card, char out[64])
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", user, "customer"),
                          h_fmt("Idempotency-Key: %s", key), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/orders", F.ord.url),
                h_fmt("{\"lines\": [%s], \"card_token\": \"%s\"}", lines, card),
                hdrs);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(out, 64, "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
}

static const char *line(int product, int qty)
{
    return h_fmt("{\"product_id\": \"%s\", \"quantity\": %d}",
                 F.product[product], qty);
}

/* The order is done (o: the order last read, replaced). */
static bool order_done(json_t **o, const char *id)
{
    json_decref(*o);
    *o = get_json(h_fmt("%s/v1/orders/%s", F.ord.url, id), "orders");
    return strcmp(h_jstr(*o, "step"), "done") == 0;
}

static json_t *wait_final(const char *id)
{
    json_t *o = NULL;
    H_WAIT_UNTIL(order_done(&o, id), WAIT_MS, "order %s to finish", id);
    return o;
}

static void cancel(const char *user, const char *id)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", user, "customer"), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/orders/%s/cancel", F.ord.url, id), hdrs,
           NULL, 0);
    h_assert_status(&r, 202);
    h_resp_release(&r);
}

/* Until reporting's four sources are at their heads. */
/* Reporting's consumer is at the head of its four sources. */
static bool caught_up(void)
{
    json_t *c = get_json(h_fmt("%s/v1/admin/consumer", F.rep.url), "reporting");
    json_t *sources = json_object_get(c, "sources");
    bool done = json_array_size(sources) == 4 &&
                !json_is_true(json_object_get(c, "paused"));
    size_t k;
    json_t *s;
    json_array_foreach(sources, k, s)
    {
        if (h_jint(s, "lag_events") != 0 ||
            h_jint(s, "cursor") != h_jint(s, "head") || h_jint(s, "head") <= 0)
            done = false;
        json_t *dead = json_object_get(s, "dead_letters");
        assert_int_equal(h_jint(dead, "failed"), 0);
    }
    json_decref(c);
    return done;
}

static void wait_caught_up(void)
{
    H_WAIT_UNTIL(caught_up(), WAIT_MS, "reporting to catch up");
}

/* Every order (paged), as orders' API lists them. */
static json_t *all_orders(void)
{
    json_t *all = json_array();
    char after[64] = "";
    for (;;) {
        json_t *page = get_json(h_fmt("%s/v1/orders?limit=7%s%s", F.ord.url,
                                      after[0] ? "&after=" : "", after),
                                "orders");
        json_array_extend(all, json_object_get(page, "orders"));
        json_t *next = json_object_get(page, "next_after");
        bool more = json_is_string(next);
        if (more)
            snprintf(after, sizeof(after), "%s", json_string_value(next));
        json_decref(page);
        if (!more)
            break;
    }
    return all;
}

/* Every payment (paged), as payments' API lists them. */
static json_t *all_payments(void)
{
    json_t *all = json_array();
    char after[64] = "";
    for (;;) {
        json_t *page =
            get_json(h_fmt("%s/v1/payments?after=%s&limit=5", F.pay.url, after),
                     "payments");
        json_array_extend(all, json_object_get(page, "payments"));
        json_t *next = json_object_get(page, "next_after");
        bool more = json_is_string(next);
        if (more)
            snprintf(after, sizeof(after), "%s", json_string_value(next));
        json_decref(page);
        if (!more)
            break;
    }
    return all;
}

/* ---- fixture ---- */

static const char *const *env_list(size_t from, size_t n)
{
    static const char *list[8];
    for (size_t i = 0; i < n; i++)
        list[i] = F.env[from + i];
    list[n] = NULL;
    return list;
}

static int start_reporting(void)
{
    snprintf(F.env[15], 256, "MOAT_REPORTING_ORDERS_URL=%s", F.ord.url);
    snprintf(F.env[16], 256, "MOAT_REPORTING_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[17], 256, "MOAT_REPORTING_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[18], 256, "MOAT_REPORTING_INVENTORY_URL=%s", F.inv.url);
    snprintf(F.env[19], 256, "MOAT_REPORTING_PSEUDONYM_KEY=%s", PSEUDONYM_KEY);
    return h_service_start(&F.rep, "reporting", F.tmp,
                           h_fmt("%s/reporting-data", F.tmp), env_list(15, 5));
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("reporting");
    F.users = h_feed_start("users", F.tmp);
    F.ord_port = h_free_port();
    char ord_url[64];
    snprintf(ord_url, sizeof(ord_url), "http://127.0.0.1:%u",
             (unsigned)F.ord_port);

    if (h_service_start(&F.cat, "catalog", F.tmp,
                        h_fmt("%s/catalog-data", F.tmp), NULL) != 0)
        return -1;
    /* Customers here place many orders at once: no open reservation
     * limit gets in the way. */
    snprintf(F.env[20], 256, "MOAT_INVENTORY_ORDERS_URL=%s", ord_url);
    snprintf(F.env[21], 256, "MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER=1000");
    if (h_service_start(&F.inv, "inventory", F.tmp,
                        h_fmt("%s/inventory-data", F.tmp),
                        env_list(20, 2)) != 0)
        return -1;
    snprintf(F.env[1], 256, "MOAT_PAYPROVIDER_API_KEYS=moat-shop:%s",
             MERCHANT_KEY);
    snprintf(F.env[2], 256, "MOAT_PAYPROVIDER_CONTROL_KEY=%s", CONTROL_KEY);
    snprintf(F.env[3], 256, "MOAT_PAYPROVIDER_LATENCY_MS=2");
    if (h_service_start(&F.pp, "payprovider", F.tmp,
                        h_fmt("%s/payprovider-data", F.tmp),
                        env_list(1, 3)) != 0)
        return -1;
    snprintf(F.env[4], 256, "MOAT_PAYMENTS_PROVIDER_URL=%s", F.pp.url);
    snprintf(F.env[5], 256, "MOAT_PAYMENTS_PROVIDER_KEY=%s", MERCHANT_KEY);
    snprintf(F.env[6], 256, "MOAT_PAYMENTS_ORDERS_URL=%s", ord_url);
    snprintf(F.env[7], 256, "MOAT_PAYMENTS_PROVIDER_TIMEOUT_MS=%u",
             h_scaled_ms(8000));
    if (h_service_start(&F.pay, "payments", F.tmp,
                        h_fmt("%s/payments-data", F.tmp), env_list(4, 4)) != 0)
        return -1;
    snprintf(F.env[8], 256, "MOAT_LISTEN=127.0.0.1:%u", (unsigned)F.ord_port);
    snprintf(F.env[9], 256, "MOAT_ORDERS_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[10], 256, "MOAT_ORDERS_INVENTORY_URL=%s", F.inv.url);
    snprintf(F.env[11], 256, "MOAT_ORDERS_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[12], 256, "MOAT_ORDERS_USERS_URL=%s", h_feed_url(F.users));
    snprintf(F.env[13], 256, "MOAT_ORDERS_STEP_TIMEOUT_MS=%u",
             h_scaled_ms(10000));
    if (h_service_start(&F.ord, "orders", F.tmp, h_fmt("%s/orders-data", F.tmp),
                        env_list(8, 6)) != 0)
        return -1;
    snprintf(F.env[14], 256, "MOAT_NOTIFICATIONS_ORDERS_URL=%s", F.ord.url);
    if (h_service_start(&F.notif, "notifications", F.tmp,
                        h_fmt("%s/notifications-data", F.tmp),
                        env_list(14, 1)) != 0)
        return -1;
    if (start_reporting() != 0)
        return -1;
    h_auto_service_token(F.rep.url, "reporting", NULL, NULL);

    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    const char *admin[] = {h_service_token("inventory", "usr_admin", "admin"),
                           NULL};
    for (int p = 0; p < NPRODUCTS; p++) {
        struct h_resp r;
        h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat.url),
                    h_fmt("{\"sku\": \"%s\", \"name\": \"%s\", \"price\": "
                          "{\"amount\": %d, \"currency\": \"EUR\"}}",
                          skus[p], names[p], prices[p]),
                    NULL);
        h_assert_status(&r, 201);
        json_t *j = h_resp_json(&r);
        snprintf(F.product[p], sizeof(F.product[p]), "%s", h_jstr(j, "id"));
        json_decref(j);
        h_resp_release(&r);
        h_send_json(&r, "PUT", h_fmt("%s/v1/stock/%s", F.inv.url, skus[p]),
                    h_fmt("{\"on_hand\": %d, \"reason\": \"initial\"}",
                          p == 2 ? STOCK_C : STOCK_AB),
                    admin);
        h_assert_status(&r, 201);
        h_resp_release(&r);
    }
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    struct h_service *all[] = {&F.rep, &F.notif, &F.ord, &F.pay,
                               &F.pp,  &F.inv,   &F.cat};
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
    h_rmtree(F.tmp);
    free(F.tmp);
    return bad ? -1 : 0;
}

/* ---- the workload: 30 orders ---- */

static void test_workload(void **state)
{
    MOAT_UNUSED(state);
    char ids[30][64];
    int n = 0;
    const char *users[] = {ALICE, BOB};
    /* 14 confirmed, some with two lines. */
    for (int i = 0; i < 14; i++) {
        const char *lines =
            i % 3 == 0   ? h_fmt("%s, %s", line(0, 1 + i % 4), line(1, 1))
            : i % 3 == 1 ? line(0, 2)
                         : line(1, 1 + i % 2);
        place(users[i % 2], h_fmt("ok-%d", i), lines, "tok_ok", ids[n++]);
    }
    /* 6 declined. */
    for (int i = 0; i < 6; i++)
        place(users[i % 2], h_fmt("decline-%d", i), line(i % 2, 1),
              "tok_decline", ids[n++]);
    /* 4 out of stock. */
    for (int i = 0; i < 4; i++)
        place(users[i % 2], h_fmt("oos-%d", i), line(2, STOCK_C + 10), "tok_ok",
              ids[n++]);
    /* 6 confirmed, then cancelled by the customer: refunded. */
    int first_cancel = n;
    for (int i = 0; i < 6; i++)
        place(users[i % 2], h_fmt("cancel-%d", i),
              i % 2 ? line(0, 1) : h_fmt("%s, %s", line(1, 2), line(2, 1)),
              "tok_ok", ids[n++]);
    for (int i = 0; i < n; i++)
        json_decref(wait_final(ids[i]));
    for (int i = first_cancel; i < n; i++)
        cancel(users[(i - first_cancel) % 2], ids[i]);
    for (int i = first_cancel; i < n; i++) {
        json_t *o = wait_final(ids[i]);
        assert_string_equal(h_jstr(o, "status"), "cancelled");
        json_decref(o);
    }
    wait_caught_up();
}

/* ---- reports against the services' own APIs ---- */

static void test_revenue_matches_payments(void **state)
{
    MOAT_UNUSED(state);
    json_t *pays = all_payments();
    json_int_t captured = 0, refunded = 0;
    size_t i;
    json_t *p;
    json_array_foreach(pays, i, p)
    {
        const char *st = h_jstr(p, "status");
        if (strcmp(st, "captured") == 0 || strcmp(st, "refunded") == 0)
            captured += h_jint(p, "amount");
        if (strcmp(st, "refunded") == 0)
            refunded += h_jint(p, "amount");
    }
    json_decref(pays);
    assert_true(captured > 0);
    assert_true(refunded > 0);

    json_t *orders = all_orders();
    assert_int_equal(json_array_size(orders), 30);

    json_t *rep = report("revenue-per-day");
    json_int_t rc = 0, rr = 0, rev = 0, placed = 0;
    json_array_foreach(json_object_get(rep, "rows"), i, p)
    {
        assert_string_equal(h_jstr(p, "currency"), "EUR");
        rc += h_jint(p, "captured");
        rr += h_jint(p, "refunded");
        rev += h_jint(p, "revenue");
        placed += h_jint(p, "orders_placed");
    }
    assert_int_equal(rc, captured);
    assert_int_equal(rr, refunded);
    assert_int_equal(rev, captured - refunded);
    assert_int_equal(placed, json_array_size(orders));
    json_decref(rep);
    json_decref(orders);
}

static void test_cancellation_reasons(void **state)
{
    MOAT_UNUSED(state);
    json_t *orders = all_orders();
    json_t *want = json_object();
    size_t i;
    json_t *o;
    json_array_foreach(orders, i, o)
    {
        if (strcmp(h_jstr(o, "status"), "cancelled") != 0)
            continue;
        const char *reason = h_jstr(o, "cancel_reason");
        json_object_set_new(want, reason,
                            json_integer(h_jint(want, reason) + 1));
    }
    assert_int_equal(h_jint(want, "payment_declined"), 6);
    assert_int_equal(h_jint(want, "out_of_stock"), 4);
    assert_int_equal(h_jint(want, "customer_cancelled"), 6);
    json_t *rep = report("cancellation-reasons");
    json_t *rows = json_object_get(rep, "rows");
    assert_int_equal(json_array_size(rows), json_object_size(want));
    json_array_foreach(rows, i, o)
    {
        assert_int_equal(h_jint(o, "orders"),
                         h_jint(want, h_jstr(o, "reason")));
    }
    json_decref(rep);
    json_decref(want);
    json_decref(orders);
}

static void test_top_products(void **state)
{
    MOAT_UNUSED(state);
    json_t *orders = all_orders();
    json_int_t qty[NPRODUCTS] = {0}, revenue[NPRODUCTS] = {0};
    json_int_t sold[NPRODUCTS] = {0}, returned[NPRODUCTS] = {0};
    size_t i, k;
    json_t *o, *l;
    json_array_foreach(orders, i, o)
    {
        bool confirmed = strcmp(h_jstr(o, "status"), "confirmed") == 0;
        bool refunded =
            strcmp(h_jstr(o, "cancel_reason"), "customer_cancelled") == 0;
        json_array_foreach(json_object_get(o, "lines"), k, l)
        {
            for (int p = 0; p < NPRODUCTS; p++) {
                if (strcmp(h_jstr(l, "product_id"), F.product[p]) != 0)
                    continue;
                if (confirmed) {
                    qty[p] += h_jint(l, "quantity");
                    revenue[p] += h_jint(l, "line_total");
                }
                if (confirmed || refunded)
                    sold[p] += h_jint(l, "quantity");
                if (refunded)
                    returned[p] += h_jint(l, "quantity");
            }
        }
    }
    json_decref(orders);

    json_t *rep = report("top-products?limit=10");
    json_t *rows = json_object_get(rep, "rows");
    int found = 0;
    json_int_t prev = INT64_MAX;
    json_array_foreach(rows, i, o)
    {
        assert_true(h_jint(o, "quantity") <= prev);
        prev = h_jint(o, "quantity");
        for (int p = 0; p < NPRODUCTS; p++) {
            if (strcmp(h_jstr(o, "product_id"), F.product[p]) != 0)
                continue;
            found++;
            assert_string_equal(h_jstr(o, "sku"), skus[p]);
            assert_int_equal(h_jint(o, "quantity"), qty[p]);
            assert_int_equal(h_jint(o, "revenue"), revenue[p]);
        }
    }
    /* REP-C was never in a confirmed order (only out of stock or
     * refunded ones). */
    assert_int_equal(qty[2], 0);
    assert_int_equal(found, 2);
    json_decref(rep);
    rep = report("top-products?limit=1&by=revenue");
    assert_int_equal(json_array_size(json_object_get(rep, "rows")), 1);
    json_decref(rep);

    /* Stock: units sold (committed), returned (refunded orders), and the
     * initial stock as an adjustment. */
    rep = report("stock-turnover");
    json_array_foreach(json_object_get(rep, "rows"), i, o)
    {
        for (int p = 0; p < NPRODUCTS; p++) {
            if (strcmp(h_jstr(o, "sku"), skus[p]) != 0)
                continue;
            assert_int_equal(h_jint(o, "sold"), sold[p]);
            assert_int_equal(h_jint(o, "returned"), returned[p]);
            assert_int_equal(h_jint(o, "net_sold"), sold[p] - returned[p]);
            assert_int_equal(h_jint(o, "adjusted"),
                             p == 2 ? STOCK_C : STOCK_AB);
        }
    }
    assert_int_equal(json_array_size(json_object_get(rep, "rows")), NPRODUCTS);
    json_decref(rep);
}

static void test_saga_durations(void **state)
{
    MOAT_UNUSED(state);
    json_t *rep = report("saga-durations");
    json_t *rows = json_object_get(rep, "rows");
    assert_int_equal(json_array_size(rows), 2);
    size_t i;
    json_t *o;
    json_int_t total = 0;
    json_array_foreach(rows, i, o)
    {
        const char *st = h_jstr(o, "status");
        assert_int_equal(h_jint(o, "orders"),
                         strcmp(st, "confirmed") == 0 ? 14 : 16);
        total += h_jint(o, "orders");
        assert_true(h_jint(o, "min_ms") >= 0);
        assert_true(h_jint(o, "p50_ms") >= h_jint(o, "min_ms"));
        assert_true(h_jint(o, "p90_ms") >= h_jint(o, "p50_ms"));
        assert_true(h_jint(o, "p99_ms") >= h_jint(o, "p90_ms"));
        assert_true(h_jint(o, "max_ms") >= h_jint(o, "p99_ms"));
    }
    assert_int_equal(total, 30);
    json_decref(rep);
}

/* ---- formats and parameters ---- */

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, "\r\n")); p += 2)
        n++;
    return n;
}

static void test_csv(void **state)
{
    MOAT_UNUSED(state);
    json_t *j = report("top-products");
    size_t rows = json_array_size(json_object_get(j, "rows"));
    json_decref(j);

    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/reports/top-products?format=csv", F.rep.url));
    h_assert_status(&r, 200);
    assert_non_null(strstr(h_resp_header(&r, "Content-Type"), "text/csv"));
    assert_true(strncmp(r.body,
                        "product_id,sku,name,currency,quantity,revenue,"
                        "orders\r\n",
                        strlen("product_id,sku,name,currency,quantity,"
                               "revenue,orders\r\n")) == 0);
    assert_int_equal(count_lines(r.body), rows + 1);
    /* The name with a comma and quotes, quoted with quotes doubled. */
    assert_non_null(strstr(r.body, ",\"Mug, \"\"large\"\"\",EUR,"));
    h_resp_release(&r);

    const char *hdrs[] = {"Accept: text/csv", NULL};
    h_http(&r, "GET", h_fmt("%s/v1/reports/revenue-per-day", F.rep.url), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    assert_non_null(strstr(h_resp_header(&r, "Content-Type"), "text/csv"));
    assert_true(
        strncmp(r.body, "date,currency,captured,refunded,revenue,", 40) == 0);
    h_resp_release(&r);
    /* format=json wins over Accept. */
    h_http(&r, "GET",
           h_fmt("%s/v1/reports/revenue-per-day?format=json", F.rep.url), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    assert_non_null(
        strstr(h_resp_header(&r, "Content-Type"), "application/json"));
    h_resp_release(&r);
}

static void test_date_range(void **state)
{
    MOAT_UNUSED(state);
    json_t *j = report("revenue-per-day?from=1999-01-01&to=1999-12-31");
    assert_int_equal(json_array_size(json_object_get(j, "rows")), 0);
    assert_string_equal(h_jstr(j, "from"), "1999-01-01");
    json_decref(j);
    j = report("revenue-per-day");
    const char *day =
        h_jstr(json_array_get(json_object_get(j, "rows"), 0), "date");
    char d[16];
    snprintf(d, sizeof(d), "%s", day);
    json_decref(j);
    j = report(h_fmt("cancellation-reasons?from=%s&to=%s", d, "9999-12-31"));
    assert_true(json_array_size(json_object_get(j, "rows")) > 0);
    json_decref(j);
}

static void test_bad_params(void **state)
{
    MOAT_UNUSED(state);
    static const struct {
        const char *query;
        const char *param;
    } bad[] = {
        {"revenue-per-day?from=2024-13-01", "from"},
        {"revenue-per-day?from=2023-02-29", "from"},
        {"revenue-per-day?to=yesterday", "to"},
        {"revenue-per-day?from=2024-02-02&to=2024-02-01", "from"},
        {"revenue-per-day?colour=red", "colour"},
        {"revenue-per-day?limit=5", "limit"},
        {"top-products?limit=0", "limit"},
        {"top-products?by=price", "by"},
        {"saga-durations?format=xml", "format"},
        {"stock-turnover?from=2024-01-01&from=2024-01-02", "from"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        struct h_resp r;
        h_get(&r, h_fmt("%s/v1/reports/%s", F.rep.url, bad[i].query));
        h_assert_problem(&r, 400);
        h_assert_problem_error(&r, "parameter", bad[i].param);
        h_resp_release(&r);
    }
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/reports/profit-forecast", F.rep.url));
    h_assert_problem(&r, 404);
    h_resp_release(&r);

    /* A customer may not read reports, an admin may, nobody unsigned. */
    const char *customer[] = {h_service_token("reporting", ALICE, "customer"),
                              NULL};
    h_http(&r, "GET", h_fmt("%s/v1/reports/revenue-per-day", F.rep.url),
           customer, NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    const char *admin[] = {h_service_token("reporting", "usr_admin", "admin"),
                           NULL};
    h_http(&r, "GET", h_fmt("%s/v1/reports/revenue-per-day", F.rep.url), admin,
           NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    const char *none[] = {"Moat-Service-Token:", NULL};
    h_http(&r, "GET", h_fmt("%s/v1/reports/revenue-per-day", F.rep.url), none,
           NULL, 0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    h_http(&r, "POST", h_fmt("%s/v1/admin/etl/products", F.rep.url), customer,
           NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
}

/* ---- privacy ---- */

static bool file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t cap = 1 << 20, len = 0, nl = strlen(needle);
    char *buf = malloc(cap);
    bool found = false;
    size_t got;
    while (!found && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        found = memmem(buf, len, needle, nl) != NULL;
        if (len > nl) { /* keep the tail: a match may span reads */
            memmove(buf, buf + len - nl, nl);
            len = nl;
        }
    }
    free(buf);
    fclose(f);
    return found;
}

static void test_no_raw_customer_id(void **state)
{
    MOAT_UNUSED(state);
    const char *dir = h_fmt("%s/reporting-data", F.tmp);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(h_fmt("%s/reporting.db", dir), &db,
                                     SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT pseudonym FROM dim_customer "
                                        "ORDER BY pseudonym",
                                        -1, &st, NULL),
                     SQLITE_OK);
    /* The pseudonyms are HMAC-SHA256(key, id) of the two customers. */
    char want[2][65];
    const char *ids[] = {ALICE, BOB};
    for (int i = 0; i < 2; i++) {
        unsigned char mac[crypto_auth_hmacsha256_BYTES];
        crypto_auth_hmacsha256_state hs;
        crypto_auth_hmacsha256_init(&hs, (const unsigned char *)PSEUDONYM_KEY,
                                    strlen(PSEUDONYM_KEY));
        crypto_auth_hmacsha256_update(&hs, (const unsigned char *)ids[i],
                                      strlen(ids[i]));
        crypto_auth_hmacsha256_final(&hs, mac);
        sodium_bin2hex(want[i], sizeof(want[i]), mac, sizeof(mac));
    }
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *p = (const char *)sqlite3_column_text(st, 0);
        assert_true(strcmp(p, want[0]) == 0 || strcmp(p, want[1]) == 0);
        n++;
    }
    assert_int_equal(n, 2);
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* And the raw ids are in no file of reporting's data directory. */
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        const char *path = h_fmt("%s/%s", dir, e->d_name);
        files++;
        assert_false(file_contains(path, ALICE));
        assert_false(file_contains(path, BOB));
    }
    closedir(d);
    assert_true(files > 0);
}

/* ---- the product reload ---- */

static void test_etl_reload(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    /* Caught up: the events brought everything already. */
    h_http(&r, "POST", h_fmt("%s/v1/admin/etl/products", F.rep.url), NULL, NULL,
           0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_int_equal(h_jint(j, "seen"), NPRODUCTS);
    assert_int_equal(h_jint(j, "inserted"), 0);
    assert_int_equal(h_jint(j, "updated"), 0);
    assert_int_equal(h_jint(j, "unchanged"), NPRODUCTS);
    json_decref(j);
    h_resp_release(&r);

    /* Damage the dimension while reporting is stopped: one product gone,
     * one stale. */
    assert_int_equal(h_service_stop(&F.rep), 0);
    sqlite3 *db = NULL;
    assert_int_equal(
        sqlite3_open(h_fmt("%s/reporting-data/reporting.db", F.tmp), &db),
        SQLITE_OK);
    char *sql = sqlite3_mprintf(
        "UPDATE dim_product SET name = 'stale', price_amount = 1, "
        "version = 1 WHERE product_id = %Q; "
        "DELETE FROM dim_product WHERE product_id = %Q;",
        F.product[0], F.product[1]);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_free(sql);
    sqlite3_close(db);
    assert_int_equal(h_service_restart(&F.rep, env_list(15, 5)), 0);
    wait_caught_up();
    json_t *top = report("top-products");
    assert_int_equal(json_array_size(json_object_get(top, "rows")), 1);
    json_decref(top);

    h_http(&r, "POST", h_fmt("%s/v1/admin/etl/products", F.rep.url), NULL, NULL,
           0);
    h_assert_status(&r, 200);
    j = h_resp_json(&r);
    assert_int_equal(h_jint(j, "seen"), NPRODUCTS);
    assert_int_equal(h_jint(j, "inserted"), 1);
    assert_int_equal(h_jint(j, "updated"), 1);
    assert_int_equal(h_jint(j, "unchanged"), 1);
    json_decref(j);
    h_resp_release(&r);
    top = report("top-products");
    json_t *rows = json_object_get(top, "rows");
    assert_int_equal(json_array_size(rows), 2);
    size_t i;
    json_t *o;
    json_array_foreach(rows, i, o)
    {
        if (strcmp(h_jstr(o, "product_id"), F.product[0]) == 0)
            assert_string_equal(h_jstr(o, "name"), "Mug, \"large\"");
    }
    json_decref(top);
}

/* ---- replay ---- */

static void test_replay(void **state)
{
    MOAT_UNUSED(state);
    json_t *before = report("revenue-per-day");
    json_t *reasons = report("cancellation-reasons");
    struct h_resp r;
    h_http(&r, "POST", h_fmt("%s/v1/admin/replay?verify=1", F.rep.url), NULL,
           NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    if (!json_is_true(json_object_get(j, "identical")))
        fail_msg("replay verify differs: %s", r.body);
    json_decref(j);
    h_resp_release(&r);

    /* A full rebuild gives the same reports. */
    h_http(&r, "POST", h_fmt("%s/v1/admin/replay", F.rep.url), NULL, NULL, 0);
    h_assert_status(&r, 202);
    h_resp_release(&r);
    /* The 202 comes after the cursors were reset (lib/consumer.c): the
     * wait below cannot see the old head. */
    wait_caught_up();
    json_t *after = report("revenue-per-day");
    assert_true(json_equal(json_object_get(before, "rows"),
                           json_object_get(after, "rows")));
    json_t *reasons2 = report("cancellation-reasons");
    assert_true(json_equal(json_object_get(reasons, "rows"),
                           json_object_get(reasons2, "rows")));
    json_decref(before);
    json_decref(after);
    json_decref(reasons);
    json_decref(reasons2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workload),
        cmocka_unit_test(test_revenue_matches_payments),
        cmocka_unit_test(test_cancellation_reasons),
        cmocka_unit_test(test_top_products),
        cmocka_unit_test(test_saga_durations),
        cmocka_unit_test(test_csv),
        cmocka_unit_test(test_date_range),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_no_raw_customer_id),
        cmocka_unit_test(test_etl_reload),
        cmocka_unit_test(test_replay),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
