/*
 * test_readmodel.c - the order history read model (docs/readmodel.md) end
 * to end: moat-catalog, moat-inventory, moat-payprovider, moat-payments,
 * moat-orders, moat-notifications and moat-readmodel as processes.
 *
 * A randomised workload (orders from three customers, paid or declined
 * cards, customer cancels before and after confirmation, orders running
 * out of stock, a price change and a rename in catalog halfway, a product
 * deleted at the end) runs until every saga is final and every email is
 * sent. Then the read model, once caught up with the four feeds, must
 * equal a recomputation from the sources' own APIs; a real replay from
 * sequence 0 must rebuild the same view, and replay?verify=1 must find it
 * identical. Authorisation and bad parameters too.
 *
 * MOAT_TEST_SEED repeats a run's random choices; MOAT_RM_TEST_ORDERS
 * changes the number of orders (default 40).
 */
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define MERCHANT_KEY "moat-shop-key-0123456789abcdef"
#define CONTROL_KEY  "control-key-0123456789abcdef"
#define NCUSTOMERS   3
#define NPRODUCTS    3
#define WAIT_MS      60000
#define PAGE_LIMIT   7 /* pages of the history while comparing */

static const char *const customers[NCUSTOMERS] = {
    "usr_01J00000000000000000000RMA",
    "usr_01J00000000000000000000RMB",
    "usr_01J00000000000000000000RMC",
};

/* SKU, name, price (EUR cents), units on hand. RM-LOW runs out. */
static const struct {
    const char *sku, *name;
    int price, stock;
} catalog_seed[NPRODUCTS] = {
    {"RM-MUG", "Readmodel mug", 1250, 500},
    {"RM-TEE", "Readmodel tee", 2000, 500},
    {"RM-LOW", "Readmodel rarity", 9900, 6},
};

static struct {
    char *tmp;
    struct h_service cat, ord, inv, pay, pp, notif, rm;
    struct h_feed *users;
    char env[24][256];
    char products[NPRODUCTS][64];
    unsigned seed;
    /* Lines seen in the read model paid at another price than now, and of
     * a deleted product (proof the workload changed catalog under them). */
    size_t repriced_lines, deleted_lines;
    char consumer_state[2048]; /* the consumer state last seen, for messages */
} F;

/* GET url with a token for aud (user and role may be NULL), expecting
 * status; the JSON body (new reference). */
static json_t *get_as(const char *url, const char *aud, const char *user,
                      const char *role, long status)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token(aud, user, role), NULL};
    h_http(&r, "GET", url, hdrs, NULL, 0);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    return j;
}

static json_t *get_json(const char *url, const char *aud)
{
    return get_as(url, aud, NULL, NULL, 200);
}

static void assert_json_equal(const json_t *want, const json_t *got)
{
    if (!json_equal(want, got)) {
        char *a = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
        char *b = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        print_error("expected %.4000s\n     got %.4000s\n", a, b);
        free(a);
        free(b);
        fail();
    }
}

/* ---- catalog and orders ---- */

static json_t *cat_get(const char *id, long *status)
{
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/v1/products/%s", F.cat.url, id), NULL, NULL, 0);
    *status = r.status;
    json_t *j = r.status == 200 ? h_resp_json(&r) : NULL;
    h_resp_release(&r);
    return j;
}

static void cat_patch(const char *id, const char *patch)
{
    long st;
    json_t *p = cat_get(id, &st);
    assert_int_equal(st, 200);
    const char *hdrs[] = {
        h_fmt("If-Match: \"v%lld\"", (long long)h_jint(p, "version")), NULL};
    json_decref(p);
    struct h_resp r;
    h_send_json(&r, "PATCH", h_fmt("%s/v1/products/%s", F.cat.url, id), patch,
                hdrs);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

/* Place an order for customer; *out gets its id ("" when orders refused
 * it, e.g. a product deleted meanwhile). */
static void place(const char *customer, const char *lines, const char *card,
                  int n, char out[64])
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", customer, "customer"),
                          h_fmt("Idempotency-Key: rm-%u-%d", F.seed, n), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/orders", F.ord.url),
                h_fmt("{\"lines\": %s, \"card_token\": \"%s\"}", lines, card),
                hdrs);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(out, 64, "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
}

static void cancel(const char *customer, const char *id)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", customer, "customer"),
                          NULL};
    h_http(&r, "POST", h_fmt("%s/v1/orders/%s/cancel", F.ord.url, id), hdrs,
           NULL, 0);
    if (r.status != 200 && r.status != 202)
        h_assert_status(&r, 202);
    h_resp_release(&r);
}

/* Wait (bounded) until the order's saga is done; returns the order. */
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

/* Wait until every notification is delivered (its NotificationSent is
 * then in notifications' feed) and notifications has read all of orders'
 * feed. */
static void wait_notifications_sent(void)
{
    H_WAIT_UNTIL(h_metric(F.notif.url,
                          "moat_consumer_lag_events{source=\"orders\"}") == 0 &&
                     h_metric(F.notif.url, "notifications_undelivered") == 0,
                 WAIT_MS, "notifications to deliver everything");
}

/* ---- the read model ---- */

/* Wait until the read model's cursor on every source is the source's
 * head and its lag gauges say 0. */
/* The read model is at the head of its four sources. */
static bool caught_up(void)
{
    const struct {
        const char *name;
        const struct h_service *svc;
    } srcs[] = {
        {"orders", &F.ord},
        {"catalog", &F.cat},
        {"payments", &F.pay},
        {"notifications", &F.notif},
    };
    json_t *st = get_json(h_fmt("%s/v1/admin/consumer", F.rm.url), "readmodel");
    json_t *list = json_object_get(st, "sources");
    bool done = json_array_size(list) == MOAT_ARRAY_LEN(srcs) &&
                !json_is_true(json_object_get(st, "paused"));
    for (size_t i = 0; done && i < MOAT_ARRAY_LEN(srcs); i++) {
        double head = h_metric(srcs[i].svc->url, "moat_outbox_head_seq");
        json_t *src = NULL;
        size_t k;
        json_t *s;
        json_array_foreach(list, k, s)
        {
            if (strcmp(h_jstr(s, "source"), srcs[i].name) == 0)
                src = s;
        }
        done =
            src && (double)h_jint(src, "cursor") == head &&
            h_jint(src, "lag_events") == 0 &&
            h_metric(F.rm.url, h_fmt("moat_consumer_lag_events{source=\"%s\"}",
                                     srcs[i].name)) == 0;
    }
    if (!done) {
        char *t = json_dumps(st, JSON_COMPACT);
        snprintf(F.consumer_state, sizeof(F.consumer_state), "%s", t);
        free(t);
    }
    json_decref(st);
    return done;
}

static void wait_caught_up(void)
{
    H_WAIT_UNTIL(caught_up(), WAIT_MS, "the read model to catch up (%s)",
                 F.consumer_state);
}

/* customer's whole history from the read model, page by page, as the
 * customer themself; placed_at moved into placed (an object by order id)
 * since orders' own time may differ by a second. */
static json_t *history(const char *customer, json_t *placed)
{
    json_t *all = json_array();
    char after[64] = "";
    for (int pages = 0;; pages++) {
        assert_true(pages < 1000);
        json_t *page = get_as(h_fmt("%s/v1/customers/%s/orders?limit=%d%s%s",
                                    F.rm.url, customer, PAGE_LIMIT,
                                    after[0] ? "&after=" : "", after),
                              "readmodel", customer, "customer", 200);
        json_t *orders = json_object_get(page, "orders");
        assert_true(json_array_size(orders) <= PAGE_LIMIT);
        size_t i;
        json_t *o;
        json_array_foreach(orders, i, o)
        {
            size_t k;
            json_t *l;
            json_array_foreach(json_object_get(o, "lines"), k, l)
            {
                json_t *now = json_object_get(l, "current_price");
                if (json_is_null(now))
                    F.deleted_lines++;
                else if (h_jint(l, "unit_price_paid") !=
                         json_integer_value(now))
                    F.repriced_lines++;
            }
            json_object_set(placed, h_jstr(o, "order_id"),
                            json_object_get(o, "placed_at"));
            json_object_del(o, "placed_at");
            json_array_append(all, o);
        }
        json_t *next = json_object_get(page, "next_after");
        if (json_is_string(next)) {
            assert_int_equal(json_array_size(orders), PAGE_LIMIT);
            snprintf(after, sizeof(after), "%s", json_string_value(next));
            json_decref(page);
            continue;
        }
        assert_true(json_is_null(next));
        json_decref(page);
        return all;
    }
}

/* The same history recomputed from the sources' APIs; created_at of each
 * order into created. */
static json_t *recompute(const char *customer, json_t *created)
{
    json_t *all = json_array();
    json_t *list = get_json(
        h_fmt("%s/v1/orders?customer_id=%s&limit=500", F.ord.url, customer),
        "orders");
    assert_true(json_is_null(json_object_get(list, "next_after")));
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(list, "orders"), i, o)
    {
        assert_string_equal(h_jstr(o, "customer_id"), customer);
        const char *id = h_jstr(o, "id");
        json_object_set(created, id, json_object_get(o, "created_at"));

        json_t *lines = json_array();
        size_t k;
        json_t *l;
        json_array_foreach(json_object_get(o, "lines"), k, l)
        {
            long st;
            json_t *p = cat_get(h_jstr(l, "product_id"), &st);
            assert_true(st == 200 || st == 404);
            json_t *price = json_object_get(p, "price");
            json_array_append_new(
                lines,
                json_pack(
                    "{s:s, s:s, s:s, s:o, s:I, s:o, s:o, s:I}", "product_id",
                    h_jstr(l, "product_id"), "sku", h_jstr(l, "sku"), "name",
                    h_jstr(l, "name"), "current_name",
                    p ? json_string(h_jstr(p, "name")) : json_null(),
                    "unit_price_paid", h_jint(l, "unit_price"), "current_price",
                    p ? json_integer(h_jint(price, "amount")) : json_null(),
                    "current_currency",
                    p ? json_string(h_jstr(price, "currency")) : json_null(),
                    "quantity", h_jint(l, "quantity")));
            json_decref(p);
        }

        json_t *pays = get_json(
            h_fmt("%s/v1/payments?order_id=%s", F.pay.url, id), "payments");
        json_t *items = json_object_get(pays, "items");
        json_t *last = json_array_get(items, json_array_size(items) - 1);
        json_t *payment =
            last ? json_pack("{s:s, s:s}", "payment_id", h_jstr(last, "id"),
                             "status", h_jstr(last, "status"))
                 : json_null();
        json_decref(pays);

        json_t *ntfs =
            get_json(h_fmt("%s/v1/notifications?order_id=%s", F.notif.url, id),
                     "notifications");
        json_t *sent = json_array();
        json_t *n;
        json_array_foreach(json_object_get(ntfs, "notifications"), k, n)
        {
            json_t *at = json_object_get(n, "delivered_at");
            if (json_is_integer(at))
                json_array_append_new(
                    sent,
                    json_pack("{s:s, s:s, s:O}", "kind", h_jstr(n, "kind"),
                              "status", h_jstr(n, "status"), "sent_at", at));
        }
        json_decref(ntfs);

        json_array_append_new(
            all, json_pack("{s:s, s:s, s:O, s:I, s:s, s:o, s:o, s:o}",
                           "order_id", id, "status", h_jstr(o, "status"),
                           "cancel_reason", json_object_get(o, "cancel_reason"),
                           "total", h_jint(o, "total"), "currency",
                           h_jstr(o, "currency"), "lines", lines, "payment",
                           payment, "notifications", sent));
    }
    json_decref(list);
    return all;
}

/* Read model == recomputation, for every customer; returns the number of
 * orders compared. */
static size_t assert_view_matches_sources(void)
{
    size_t total = 0;
    for (size_t c = 0; c < NCUSTOMERS; c++) {
        json_t *placed = json_object(), *created = json_object();
        json_t *got = history(customers[c], placed);
        json_t *want = recompute(customers[c], created);
        assert_json_equal(want, got);
        /* placed_at is the OrderPlaced event's time, created_at orders'
         * own clock read in the same transaction: the same second, or the
         * next one when a second ended in between. */
        const char *id;
        json_t *v;
        json_object_foreach(created, id, v)
        {
            json_int_t p = json_integer_value(json_object_get(placed, id));
            json_int_t want_s = json_integer_value(v);
            if (p < want_s || p > want_s + 1)
                fail_msg("order %s: placed_at %lld, orders' created_at %lld",
                         id, (long long)p, (long long)want_s);
        }
        total += json_array_size(got);
        json_decref(placed);
        json_decref(created);
        json_decref(got);
        json_decref(want);
    }
    return total;
}

static void assert_verify_identical(void)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("readmodel", NULL, NULL), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/admin/replay?verify=1", F.rm.url), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    json_t *v = h_resp_json(&r);
    h_resp_release(&r);
    if (!json_is_true(json_object_get(v, "identical"))) {
        char *t = json_dumps(v, JSON_INDENT(2));
        print_error("replay verification found differences: %s\n", t);
        free(t);
        fail();
    }
    assert_int_equal(json_array_size(json_object_get(v, "differences")), 0);
    assert_true(h_jint(v, "events") > 0);
    json_decref(v);
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

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    const char *seed = getenv("MOAT_TEST_SEED");
    F.seed = seed ? (unsigned)strtoul(seed, NULL, 10)
                  : (unsigned)time(NULL) ^ (unsigned)getpid();
    print_message("MOAT_TEST_SEED=%u\n", F.seed);
    srand(F.seed);

    F.tmp = h_tmpdir_new("readmodel");
    F.users = h_feed_start("users", F.tmp);
    uint16_t ord_port = h_free_port();
    char ord_url[64];
    snprintf(ord_url, sizeof(ord_url), "http://127.0.0.1:%u",
             (unsigned)ord_port);

    if (h_service_start(&F.cat, "catalog", F.tmp,
                        h_fmt("%s/catalog-data", F.tmp), NULL) != 0)
        return -1;
    snprintf(F.env[0], 256, "MOAT_INVENTORY_ORDERS_URL=%s", ord_url);
    if (h_service_start(&F.inv, "inventory", F.tmp,
                        h_fmt("%s/inventory-data", F.tmp), env_list(0, 1)) != 0)
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
    snprintf(F.env[8], 256, "MOAT_LISTEN=127.0.0.1:%u", (unsigned)ord_port);
    snprintf(F.env[9], 256, "MOAT_ORDERS_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[10], 256, "MOAT_ORDERS_INVENTORY_URL=%s", F.inv.url);
    snprintf(F.env[11], 256, "MOAT_ORDERS_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[12], 256, "MOAT_ORDERS_USERS_URL=%s", h_feed_url(F.users));
    /* Long enough never to expire under a sanitizer: every order must end
     * by its own outcome, not a deadline. */
    snprintf(F.env[13], 256, "MOAT_ORDERS_STEP_TIMEOUT_MS=%u",
             h_scaled_ms(30000));
    if (h_service_start(&F.ord, "orders", F.tmp, h_fmt("%s/orders-data", F.tmp),
                        env_list(8, 6)) != 0)
        return -1;
    snprintf(F.env[14], 256, "MOAT_NOTIFICATIONS_ORDERS_URL=%s", F.ord.url);
    if (h_service_start(&F.notif, "notifications", F.tmp,
                        h_fmt("%s/notifications-data", F.tmp),
                        env_list(14, 1)) != 0)
        return -1;
    snprintf(F.env[15], 256, "MOAT_READMODEL_ORDERS_URL=%s", F.ord.url);
    snprintf(F.env[16], 256, "MOAT_READMODEL_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[17], 256, "MOAT_READMODEL_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[18], 256, "MOAT_READMODEL_NOTIFICATIONS_URL=%s",
             F.notif.url);
    if (h_service_start(&F.rm, "readmodel", F.tmp,
                        h_fmt("%s/readmodel-data", F.tmp),
                        env_list(15, 4)) != 0)
        return -1;

    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    h_auto_service_token(F.rm.url, "readmodel", NULL, NULL);
    const char *admin[] = {h_service_token("inventory", "usr_admin", "admin"),
                           NULL};
    for (size_t i = 0; i < NPRODUCTS; i++) {
        struct h_resp r;
        h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat.url),
                    h_fmt("{\"sku\": \"%s\", \"name\": \"%s\", \"price\": "
                          "{\"amount\": %d, \"currency\": \"EUR\"}}",
                          catalog_seed[i].sku, catalog_seed[i].name,
                          catalog_seed[i].price),
                    NULL);
        h_assert_status(&r, 201);
        json_t *j = h_resp_json(&r);
        snprintf(F.products[i], sizeof(F.products[i]), "%s", h_jstr(j, "id"));
        json_decref(j);
        h_resp_release(&r);
        h_send_json(&r, "PUT",
                    h_fmt("%s/v1/stock/%s", F.inv.url, catalog_seed[i].sku),
                    h_fmt("{\"on_hand\": %d, \"reason\": \"initial\"}",
                          catalog_seed[i].stock),
                    admin);
        h_assert_status(&r, 201);
        h_resp_release(&r);
    }
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    struct h_service *all[] = {&F.rm, &F.notif, &F.ord, &F.pay,
                               &F.pp, &F.inv,   &F.cat};
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

/* ---- tests ---- */

/* The lines of a random order: one or two products, 1 to 3 units each;
 * now and then far more than there is (out of stock). */
static const char *random_lines(void)
{
    int first = rand() % NPRODUCTS;
    int qty = 1 + rand() % 3;
    if (rand() % 10 == 0)
        qty = 1000; /* the most orders take: more than there is */
    if (rand() % 3 == 0) {
        int second = (first + 1 + rand() % (NPRODUCTS - 1)) % NPRODUCTS;
        return h_fmt("[{\"product_id\": \"%s\", \"quantity\": %d}, "
                     "{\"product_id\": \"%s\", \"quantity\": %d}]",
                     F.products[first], qty, F.products[second],
                     1 + rand() % 2);
    }
    return h_fmt("[{\"product_id\": \"%s\", \"quantity\": %d}]",
                 F.products[first], qty);
}

static void test_workload_matches_sources(void **state)
{
    MOAT_UNUSED(state);
    const char *n_env = getenv("MOAT_RM_TEST_ORDERS");
    int norders = n_env ? atoi(n_env) : 40;
    if (norders < 4)
        norders = 4;
    char(*ids)[64] = moat_xcalloc((size_t)norders, sizeof(*ids));
    int *owner = moat_xcalloc((size_t)norders, sizeof(*owner));

    for (int i = 0; i < norders; i++) {
        if (i == norders / 2) {
            /* Halfway: a price change and a rename in catalog. */
            cat_patch(F.products[0], "{\"price\": {\"amount\": 1399}}");
            cat_patch(F.products[1], "{\"name\": \"Readmodel tee v2\", "
                                     "\"price\": {\"amount\": 1800}}");
        }
        owner[i] = rand() % NCUSTOMERS;
        const char *card = rand() % 5 == 0 ? "tok_decline" : "tok_ok";
        place(customers[owner[i]], random_lines(), card, i, ids[i]);
        /* Some customers change their mind at once (a pending cancel). */
        if (rand() % 8 == 0)
            cancel(customers[owner[i]], ids[i]);
        /* Sagas run concurrently in bursts of six: more at once and
         * orders' cap on a customer's open reservations cancels most. */
        if (i % 6 == 5)
            for (int k = i - 5; k <= i; k++)
                json_decref(wait_final(ids[k]));
    }
    int confirmed = 0;
    json_t *reasons = json_object();
    for (int i = 0; i < norders; i++)
        json_decref(wait_final(ids[i]));
    /* And some cancel a confirmed order (a refund). */
    for (int i = 0; i < norders; i++) {
        json_t *o =
            get_json(h_fmt("%s/v1/orders/%s", F.ord.url, ids[i]), "orders");
        if (strcmp(h_jstr(o, "status"), "confirmed") == 0 && rand() % 6 == 0)
            cancel(customers[owner[i]], ids[i]);
        json_decref(o);
    }
    for (int i = 0; i < norders; i++) {
        json_t *o = wait_final(ids[i]);
        if (strcmp(h_jstr(o, "status"), "confirmed") == 0) {
            confirmed++;
        } else {
            const char *why = h_jstr(o, "cancel_reason");
            json_object_set_new(reasons, why,
                                json_integer(h_jint(reasons, why) + 1));
        }
        json_decref(o);
    }
    /* The rarity goes out of the catalog: its lines keep the name paid,
     * with no current name or price. */
    struct h_resp r;
    h_http(&r, "DELETE", h_fmt("%s/v1/products/%s", F.cat.url, F.products[2]),
           NULL, NULL, 0);
    h_assert_status(&r, 204);
    h_resp_release(&r);
    char *why = json_dumps(reasons, JSON_COMPACT | JSON_SORT_KEYS);
    print_message("%d orders: %d confirmed, cancelled %s\n", norders, confirmed,
                  why);
    free(why);
    json_decref(reasons);

    wait_notifications_sent();
    wait_caught_up();
    size_t compared = assert_view_matches_sources();
    assert_int_equal(compared, (size_t)norders);
    print_message("lines paid at another price than now: %zu, of a deleted "
                  "product: %zu\n",
                  F.repriced_lines, F.deleted_lines);
    if (norders >= 20) {
        assert_true(F.repriced_lines > 0);
        assert_true(F.deleted_lines > 0);
    }

    /* A real replay from sequence 0 rebuilds the same view. */
    json_t *res = NULL;
    {
        const char *hdrs[] = {h_service_token("readmodel", NULL, NULL), NULL};
        h_http(&r, "POST", h_fmt("%s/v1/admin/replay", F.rm.url), hdrs, NULL,
               0);
        h_assert_status(&r, 202);
        res = h_resp_json(&r);
        h_resp_release(&r);
    }
    json_decref(res);
    wait_caught_up();
    assert_int_equal(assert_view_matches_sources(), (size_t)norders);
    assert_verify_identical();
    free(ids);
    free(owner);
}

static void test_authorisation(void **state)
{
    MOAT_UNUSED(state);
    const char *a = customers[0], *b = customers[1];
    const char *url_b = h_fmt("%s/v1/customers/%s/orders", F.rm.url, b);
    json_t *j;

    /* Someone else's history: 403 for a customer. */
    struct h_resp r;
    const char *as_a[] = {h_service_token("readmodel", a, "customer"), NULL};
    h_http(&r, "GET", url_b, as_a, NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    /* Their own, an admin's look, a service's look: 200. */
    json_decref(get_as(h_fmt("%s/v1/customers/%s/orders", F.rm.url, a),
                       "readmodel", a, "customer", 200));
    json_t *as_admin = get_as(url_b, "readmodel", "usr_admin", "admin", 200);
    json_t *as_service = get_as(url_b, "readmodel", NULL, NULL, 200);
    assert_json_equal(as_admin, as_service);
    json_decref(as_admin);
    json_decref(as_service);
    /* No service token at all: 401. */
    const char *none[] = {"Moat-Service-Token:", NULL};
    h_http(&r, "GET", url_b, none, NULL, 0);
    h_assert_status(&r, 401);
    h_resp_release(&r);
    /* A customer with no orders: an empty history. */
    j = get_as(h_fmt("%s/v1/customers/usr_nobody/orders", F.rm.url),
               "readmodel", "usr_nobody", "customer", 200);
    assert_int_equal(json_array_size(json_object_get(j, "orders")), 0);
    assert_true(json_is_null(json_object_get(j, "next_after")));
    json_decref(j);
}

static void test_bad_parameters(void **state)
{
    MOAT_UNUSED(state);
    static const struct {
        const char *query, *param;
    } bad[] = {
        {"limit=0", "limit"},      {"limit=101", "limit"},
        {"limit=ten", "limit"},    {"after=nope", "after"},
        {"after=ord_!!", "after"}, {"colour=blue", "colour"},
    };
    const char *base =
        h_fmt("%s/v1/customers/%s/orders", F.rm.url, customers[0]);
    char url[512];
    snprintf(url, sizeof(url), "%s", base);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        struct h_resp r;
        h_get(&r, h_fmt("%s?%s", url, bad[i].query));
        h_assert_problem(&r, 400);
        h_assert_problem_error(&r, "parameter", bad[i].param);
        h_resp_release(&r);
    }
    struct h_resp r;
    h_get(&r, h_fmt("%s?limit=5&limit=6", url));
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    /* A customer id that cannot be one. */
    h_get(&r, h_fmt("%s/v1/customers/a%%20b/orders", F.rm.url));
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    /* The page limit is honoured. */
    h_get(&r, h_fmt("%s?limit=1", url));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_true(json_array_size(json_object_get(j, "orders")) <= 1);
    json_decref(j);
    h_resp_release(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workload_matches_sources),
        cmocka_unit_test(test_authorisation),
        cmocka_unit_test(test_bad_parameters),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
