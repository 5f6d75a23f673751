/*
 * test_payments_saga.c - payments as a participant of the order saga
 * (docs/saga.md): orders' commands in from a test feed standing in for
 * orders (h_feed), the real moat-payments and moat-payprovider processes
 * on loopback, the replies read from payments' own feed.
 *
 * What is proven here: AuthorizePayment -> PaymentAuthorized, then
 * CapturePayment -> PaymentCaptured; a declined card -> PaymentDeclined
 * and a void of it answered without the provider; a provider outage ->
 * PaymentProviderUnavailable once, then PaymentAuthorized on recovery with
 * one authorization at the provider; a void queued behind a slow
 * authorization voids it; a void before any authorization leaves a
 * tombstone that refuses the later authorization without a provider call;
 * refund after capture; duplicate commands change nothing; SIGKILL while
 * calls are out, then a restart: every payment ends decided, once, and the
 * provider's ledger shows no second charge; the auditor's listing and the
 * metrics; on PostgreSQL (MOAT_TEST_ENGINE=postgres), a database restart
 * under it loses no command and charges nothing twice.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_payments_saga test_crash_while_calls_are_out
 */
#include "moat/common.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pg_fixture.h"

#define MERCHANT_KEY "moat-shop-key-0123456789abcdef"
#define CONTROL_KEY  "control-key-0123456789abcdef"
#define PP_AUTH      "Authorization: Bearer " MERCHANT_KEY
#define PP_CONTROL   "Authorization: Bearer " CONTROL_KEY
#define WAIT_MS      10000 /* for one reply, scaled */
#define CRASH_ORDERS 24

#define DEFAULT_KNOBS                                                          \
    "{\"latency_ms\":5,\"latency_jitter_ms\":0,\"decline_rate\":0,"            \
    "\"outage\":false,\"outage_status\":503,\"seed\":7}"

static struct {
    char *tmp;
    char *pay_data;
    struct h_feed *orders;
    struct h_service pp;
    struct h_service pay;
    char provider_url_env[128];
    char orders_url_env[128];
    json_t *events; /* every event of payments' feed read so far */
    int64_t after;  /* the last one's seq */
} F;

/* ---- helpers ---- */

#define UNIQUE_POOL 256
static const char *unique(const char *prefix)
{
    static char pool[UNIQUE_POOL][48];
    static unsigned next;
    unsigned char rnd[4];
    char hex[9];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(hex, rnd, sizeof(rnd));
    char *out = pool[next++ % UNIQUE_POOL];
    snprintf(out, sizeof(pool[0]), "%s_%s", prefix, hex);
    return out;
}

static json_t *json_of(const struct h_resp *r)
{
    json_t *j = h_resp_json(r);
    assert_non_null(j);
    return j;
}

static const char *str(const json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    assert_non_null(s);
    return s;
}

static json_int_t num(const json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static void control(const char *json)
{
    struct h_resp r;
    const char *headers[] = {PP_CONTROL, NULL};
    h_send_json(&r, "POST", h_fmt("%s/_control", F.pp.url), json, headers);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static int reset(void **state)
{
    MOAT_UNUSED(state);
    control(DEFAULT_KNOBS);
    return 0;
}

static void pp_get(struct h_resp *r, const char *path)
{
    const char *headers[] = {PP_AUTH, NULL};
    h_http(r, "GET", h_fmt("%s%s", F.pp.url, path), headers, NULL, 0);
}

/* The provider's authorizations for order (new reference). */
static json_t *provider_auths(const char *order)
{
    struct h_resp r;
    pp_get(&r, h_fmt("/v1/authorizations?reference=%s", order));
    h_assert_status(&r, 200);
    json_t *j = json_of(&r);
    h_resp_release(&r);
    json_t *items = json_incref(json_object_get(j, "items"));
    json_decref(j);
    assert_true(json_is_array(items));
    return items;
}

/* The provider ledger's figure what in currency; the ledger must be
 * consistent. */
static json_int_t provider_count(const char *currency, const char *what)
{
    struct h_resp r;
    pp_get(&r, "/v1/ledger/summary");
    h_assert_status(&r, 200);
    json_t *j = json_of(&r);
    h_resp_release(&r);
    assert_true(json_is_true(json_object_get(j, "consistent")));
    json_t *c = json_object_get(json_object_get(j, "currencies"), currency);
    json_int_t n = c ? json_integer_value(json_object_get(c, what)) : 0;
    json_decref(j);
    return n;
}

static void publish_authorize(const char *order, json_int_t amount,
                              const char *currency, const char *card)
{
    h_feed_publish(F.orders, "AuthorizePayment", order,
                   h_fmt("{\"order_id\":\"%s\",\"customer_id\":\"usr_1\","
                         "\"amount\":%lld,\"currency\":\"%s\","
                         "\"card_token\":\"%s\"}",
                         order, (long long)amount, currency, card));
}

static void publish_capture(const char *order, json_int_t amount)
{
    h_feed_publish(F.orders, "CapturePayment", order,
                   h_fmt("{\"order_id\":\"%s\",\"amount\":%lld}", order,
                         (long long)amount));
}

static void publish_simple(const char *type, const char *order)
{
    h_feed_publish(F.orders, type, order,
                   h_fmt("{\"order_id\":\"%s\",\"reason\":\"test\"}", order));
}

/* Read what payments' feed has added since the last call. */
static void refresh_events(void)
{
    for (;;) {
        struct h_resp r;
        h_get(&r, h_fmt("%s/v1/events?after=%lld&limit=1000", F.pay.url,
                        (long long)F.after));
        if (r.status == 0) { /* payments is restarting */
            h_resp_release(&r);
            return;
        }
        h_assert_status(&r, 200);
        json_t *page = json_of(&r);
        h_resp_release(&r);
        json_t *events = json_object_get(page, "events");
        size_t i;
        json_t *e;
        json_array_foreach(events, i, e)
        {
            json_array_append(F.events, e);
        }
        F.after = num(page, "next_after");
        bool more = json_array_size(events) > 0 && F.after < num(page, "head");
        json_decref(page);
        if (!more)
            return;
    }
}

/* How many events of type about order payments has published. */
static size_t count_events(const char *type, const char *order)
{
    size_t n = 0, i;
    json_t *e;
    refresh_events();
    json_array_foreach(F.events, i, e)
    {
        if (strcmp(str(e, "type"), type) == 0 &&
            strcmp(str(e, "subject"), order) == 0) {
            /* Replies carry ids, never card tokens (docs/saga.md). */
            json_t *d = json_object_get(e, "data");
            assert_string_equal(str(d, "order_id"), order);
            assert_null(json_object_get(d, "card_token"));
            n++;
        }
    }
    return n;
}

/* The first event of type about order (borrowed from F.events), waiting
 * up to WAIT_MS for it; fails the test when it does not come. */
/* The data of the first event of type for order in payments' feed, or
 * NULL (borrowed from F.events). */
static json_t *find_event(const char *type, const char *order)
{
    refresh_events();
    size_t i;
    json_t *e;
    json_array_foreach(F.events, i, e)
    {
        if (strcmp(str(e, "type"), type) == 0 &&
            strcmp(str(e, "subject"), order) == 0)
            return json_object_get(e, "data");
    }
    return NULL;
}

static json_t *wait_event(const char *type, const char *order)
{
    json_t *data = NULL;
    H_WAIT_UNTIL((data = find_event(type, order)) != NULL, WAIT_MS,
                 "a %s event for %s", type, order);
    return data;
}

/* Position of the first event of type about order in the feed. */
static size_t event_index(const char *type, const char *order)
{
    size_t i;
    json_t *e;
    json_array_foreach(F.events, i, e)
    {
        if (strcmp(str(e, "type"), type) == 0 &&
            strcmp(str(e, "subject"), order) == 0)
            return i;
    }
    fail_msg("no %s for %s", type, order);
    return 0;
}

/* The order's payment as payments' API shows it (new reference). */
static json_t *payment_of(const char *order)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/payments?order_id=%s", F.pay.url, order));
    h_assert_status(&r, 200);
    json_t *j = json_of(&r);
    h_resp_release(&r);
    json_t *items = json_object_get(j, "items");
    assert_int_equal(json_array_size(items), 1);
    json_t *p = json_incref(json_array_get(items, 0));
    json_decref(j);
    return p;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *data = moat_xmalloc(1);
    size_t n = 0;
    if (f) {
        char chunk[65536];
        size_t got;
        while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
            data = moat_xrealloc(data, n + got + 1);
            memcpy(data + n, chunk, got);
            n += got;
        }
        fclose(f);
    }
    *len = n;
    return data;
}

/* True when needle occurs in any file of payments' data directory, or in
 * any row of its PostgreSQL database when it has one. */
static bool in_data_dir(const char *needle)
{
    DIR *d = opendir(F.pay_data);
    struct dirent *e;
    char *rows = h_store_text(F.pay_data);
    bool found = rows && strstr(rows, needle);
    free(rows);
    size_t k = strlen(needle);
    assert_non_null(d);
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        size_t n;
        char *path = moat_xasprintf("%s/%s", F.pay_data, e->d_name);
        char *bytes = slurp(path, &n);
        for (size_t i = 0; !found && k <= n && i <= n - k; i++)
            found = memcmp(bytes + i, needle, k) == 0;
        free(bytes);
        free(path);
    }
    closedir(d);
    return found;
}

static int start_payments(void)
{
    const char *env[] = {F.provider_url_env, F.orders_url_env,
                         "MOAT_PAYMENTS_PROVIDER_KEY=" MERCHANT_KEY,
                         "MOAT_PAYMENTS_PROVIDER_TIMEOUT_MS=1000", NULL};
    return h_service_start(&F.pay, "payments", F.tmp, F.pay_data, env);
}

/* ---- tests ---- */

static void test_authorize_then_capture(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    /* An ordinary card (authorized at decline rate 0) found nowhere else,
     * to look for at rest afterwards. */
    char card[40];
    snprintf(card, sizeof(card), "tok_%s", unique("secret"));
    publish_authorize(order, 1500, "EUR", card);
    json_t *a = wait_event("PaymentAuthorized", order);
    assert_int_equal(strncmp(str(a, "payment_id"), "pay_", 4), 0);
    assert_int_equal(num(a, "amount"), 1500);
    assert_string_equal(str(a, "currency"), "EUR");
    assert_string_equal(str(a, "status"), "authorized");
    char pay_id[64];
    snprintf(pay_id, sizeof(pay_id), "%s", str(a, "payment_id"));

    publish_capture(order, 1500);
    json_t *c = wait_event("PaymentCaptured", order);
    assert_string_equal(str(c, "payment_id"), pay_id);
    assert_int_equal(num(c, "amount"), 1500);
    assert_string_equal(str(c, "currency"), "EUR");

    json_t *p = payment_of(order);
    assert_string_equal(str(p, "id"), pay_id);
    assert_string_equal(str(p, "status"), "captured");
    assert_string_equal(str(p, "created_by"), "orders");
    json_decref(p);

    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    assert_string_equal(str(json_array_get(auths, 0), "status"), "captured");
    json_decref(auths);

    /* The card token was sealed while it was needed, and is gone now. */
    assert_false(in_data_dir(card));
}

static void test_declined(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    publish_authorize(order, 990, "EUR", "tok_decline");
    json_t *d = wait_event("PaymentDeclined", order);
    assert_string_equal(str(d, "decline_code"), "insufficient_funds");
    assert_int_equal(strncmp(str(d, "payment_id"), "pay_", 4), 0);

    /* Nothing to void: answered from our books, status "declined". */
    publish_simple("VoidPayment", order);
    json_t *v = wait_event("PaymentVoided", order);
    assert_string_equal(str(v, "status"), "declined");
    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    assert_string_equal(str(json_array_get(auths, 0), "status"), "declined");
    json_decref(auths);
    assert_int_equal(count_events("PaymentAuthorized", order), 0);
}

static void test_outage_then_recovery(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    json_int_t before = provider_count("CHF", "authorizations");
    control("{\"outage\": true, \"outage_status\": 503}");
    publish_authorize(order, 2500, "CHF", "tok_ok");
    json_t *u = wait_event("PaymentProviderUnavailable", order);
    assert_true(num(u, "attempts") >= 1);
    assert_int_equal(strncmp(str(u, "payment_id"), "pay_", 4), 0);
    assert_true(strlen(str(u, "error")) > 0);

    /* Retries go on (200 ms, 400 ms, 800 ms...), said once only: a window
     * proving that no second event comes, not a wait. */
    h_sleep_ms(1000);
    assert_int_equal(count_events("PaymentProviderUnavailable", order), 1);
    assert_int_equal(count_events("PaymentAuthorized", order), 0);
    json_t *p = payment_of(order);
    assert_string_equal(str(p, "status"), "pending");
    assert_true(num(p, "attempts") >= 2);
    json_decref(p);

    control("{\"outage\": false}");
    json_t *a = wait_event("PaymentAuthorized", order);
    assert_string_equal(str(a, "status"), "authorized");
    assert_int_equal(count_events("PaymentProviderUnavailable", order), 1);
    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    json_decref(auths);
    assert_int_equal(provider_count("CHF", "authorizations"), before + 1);
}

static void test_void_behind_slow_authorize(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    control("{\"latency_ms\": 400}");
    publish_authorize(order, 700, "EUR", "tok_ok");
    publish_simple("VoidPayment", order);
    json_t *v = wait_event("PaymentVoided", order);
    assert_string_equal(str(v, "status"), "voided");
    /* The authorization first, then the void that undoes it. */
    assert_true(event_index("PaymentAuthorized", order) <
                event_index("PaymentVoided", order));
    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    assert_string_equal(str(json_array_get(auths, 0), "status"), "voided");
    json_decref(auths);
    json_t *p = payment_of(order);
    assert_string_equal(str(p, "status"), "voided");
    json_decref(p);
}

static void test_void_before_authorize(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    publish_simple("VoidPayment", order);
    json_t *v = wait_event("PaymentVoided", order);
    assert_true(json_is_null(json_object_get(v, "payment_id")));
    assert_string_equal(str(v, "status"), "voided");

    publish_authorize(order, 1200, "EUR", "tok_ok");
    json_t *d = wait_event("PaymentDeclined", order);
    assert_string_equal(str(d, "decline_code"), "cancelled");
    assert_true(json_is_null(json_object_get(d, "payment_id")));
    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 0);
    json_decref(auths);
    assert_int_equal(count_events("PaymentAuthorized", order), 0);
}

static void test_refund_after_capture(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    publish_authorize(order, 4000, "SEK", "tok_ok");
    publish_capture(order, 4000);
    publish_simple("RefundPayment", order);
    json_t *r = wait_event("PaymentRefunded", order);
    assert_int_equal(num(r, "amount"), 4000);
    assert_string_equal(str(r, "currency"), "SEK");
    assert_true(event_index("PaymentCaptured", order) <
                event_index("PaymentRefunded", order));
    json_t *auths = provider_auths(order);
    json_t *a = json_array_get(auths, 0);
    assert_int_equal(num(a, "captured_amount"), 4000);
    assert_int_equal(num(a, "refunded_amount"), 4000);
    json_decref(auths);
}

static void test_capture_failed_and_no_payment(void **state)
{
    MOAT_UNUSED(state);
    /* A capture of more than was authorized: refused, nothing charged. */
    const char *order = unique("ord");
    publish_authorize(order, 500, "EUR", "tok_ok");
    publish_capture(order, 501);
    json_t *f = wait_event("PaymentCaptureFailed", order);
    assert_string_equal(str(f, "error"), "amount_mismatch");
    /* Then orders compensates with a refund: the hold is voided. */
    publish_simple("RefundPayment", order);
    json_t *v = wait_event("PaymentVoided", order);
    assert_string_equal(str(v, "status"), "voided");

    /* A capture of an order we never saw. */
    const char *none = unique("ord");
    publish_capture(none, 100);
    f = wait_event("PaymentCaptureFailed", none);
    assert_string_equal(str(f, "error"), "no_payment");
    assert_true(json_is_null(json_object_get(f, "payment_id")));
}

static void test_duplicates(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    publish_authorize(order, 300, "EUR", "tok_ok");
    publish_authorize(order, 300, "EUR", "tok_ok");
    publish_capture(order, 300);
    publish_capture(order, 300);
    wait_event("PaymentCaptured", order);
    publish_authorize(order, 300, "EUR", "tok_ok"); /* late and again */
    publish_simple("RefundPayment", order);
    publish_simple("RefundPayment", order);
    wait_event("PaymentRefunded", order);
    /* A window in which no duplicate may appear, not a wait. */
    h_sleep_ms(300);
    assert_int_equal(count_events("PaymentAuthorized", order), 1);
    assert_int_equal(count_events("PaymentCaptured", order), 1);
    assert_int_equal(count_events("PaymentRefunded", order), 1);
    assert_int_equal(count_events("PaymentDeclined", order), 0);
    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    json_decref(auths);
}

static void test_invalid_authorize(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    h_feed_publish(F.orders, "AuthorizePayment", order,
                   h_fmt("{\"order_id\":\"%s\",\"amount\":-5,"
                         "\"currency\":\"EUR\",\"card_token\":\"tok_ok\"}",
                         order));
    json_t *d = wait_event("PaymentDeclined", order);
    assert_string_equal(str(d, "decline_code"), "invalid");
    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 0);
    json_decref(auths);
}

/*
 * SIGKILL payments while its calls are at a slow provider, then restart
 * it: every order ends authorized and captured, each reply once, and the
 * provider has exactly one authorization per order.
 */
static void test_crash_while_calls_are_out(void **state)
{
    MOAT_UNUSED(state);
    char orders[CRASH_ORDERS][48];
    json_int_t before = provider_count("NOK", "authorizations");
    json_int_t captured = provider_count("NOK", "captured");
    control("{\"latency_ms\": 300}");
    /* Two waves: when the kill comes, the first one's captures and the
     * second one's authorizations are held at the provider, which
     * completes them after we are gone. The pauses only shape what is in
     * flight at the kill (any moment is a valid crash point; the checks
     * below hold for all of them): nothing is waited for. */
    for (int i = 0; i < CRASH_ORDERS; i++) {
        snprintf(orders[i], sizeof(orders[i]), "%s", unique("ord"));
        publish_authorize(orders[i], 100 + i, "NOK", "tok_ok");
        publish_capture(orders[i], 100 + i);
        if (i == CRASH_ORDERS / 2 - 1)
            h_sleep_ms(450);
    }
    h_sleep_ms(150);
    h_service_kill(&F.pay);
    const char *env[] = {F.provider_url_env, F.orders_url_env,
                         "MOAT_PAYMENTS_PROVIDER_KEY=" MERCHANT_KEY,
                         "MOAT_PAYMENTS_PROVIDER_TIMEOUT_MS=1000", NULL};
    assert_int_equal(h_service_restart(&F.pay, env), 0);

    json_int_t sum = 0;
    for (int i = 0; i < CRASH_ORDERS; i++) {
        wait_event("PaymentCaptured", orders[i]);
        sum += 100 + i;
    }
    for (int i = 0; i < CRASH_ORDERS; i++) {
        assert_int_equal(count_events("PaymentAuthorized", orders[i]), 1);
        assert_int_equal(count_events("PaymentCaptured", orders[i]), 1);
        json_t *auths = provider_auths(orders[i]);
        assert_int_equal(json_array_size(auths), 1);
        json_decref(auths);
        json_t *p = payment_of(orders[i]);
        assert_string_equal(str(p, "status"), "captured");
        json_decref(p);
    }
    assert_int_equal(provider_count("NOK", "authorizations"),
                     before + CRASH_ORDERS);
    assert_int_equal(provider_count("NOK", "captured"), captured + sum);
}

static void test_auditor_listing_and_metrics(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    char after[64] = "";
    size_t total = 0;
    for (;;) {
        h_get(&r, h_fmt("%s/v1/payments?limit=7&after=%s", F.pay.url, after));
        h_assert_status(&r, 200);
        json_t *j = json_of(&r);
        h_resp_release(&r);
        json_t *items = json_object_get(j, "payments");
        size_t i;
        json_t *p;
        json_array_foreach(items, i, p)
        {
            /* Strictly ascending ids across pages. */
            assert_true(strcmp(str(p, "id"), after) > 0);
            snprintf(after, sizeof(after), "%s", str(p, "id"));
            total++;
        }
        json_t *next = json_object_get(j, "next_after");
        bool more = json_is_string(next);
        if (more)
            assert_string_equal(json_string_value(next), after);
        json_decref(j);
        if (!more)
            break;
    }
    assert_true(total >= CRASH_ORDERS);

    h_get(&r, h_fmt("%s/v1/payments?limit=abc", F.pay.url));
    h_assert_problem_error(&r, "parameter", "limit");
    h_resp_release(&r);
    h_get(&r, h_fmt("%s/v1/payments?after=nope", F.pay.url));
    h_assert_problem_error(&r, "parameter", "after");
    h_resp_release(&r);
    h_get(&r, h_fmt("%s/v1/payments?colour=red", F.pay.url));
    h_assert_problem_error(&r, "parameter", "colour");
    h_resp_release(&r);

    h_get_metrics(&r, F.pay.url);
    h_assert_status(&r, 200);
    assert_non_null(
        strstr(r.body, "moat_payments_payments{status=\"captured\"}"));
    assert_non_null(strstr(r.body, "moat_payments_saga_commands_queued 0"));
    assert_non_null(
        strstr(r.body, "moat_payments_saga_oldest_queued_seconds 0"));
    assert_non_null(strstr(r.body, "moat_payments_provider_failures_total"));
    h_resp_release(&r);
}

/*
 * Throughput, only with MOAT_PAYMENTS_SAGA_BENCH=N (sagas): N pairs of
 * AuthorizePayment + CapturePayment published at once, timed until the
 * last payment is captured; prints sagas/s and worker transactions (one
 * fsync each) per closed command. Latency of the provider: 20 ms.
 */
static bool payments_ready(void)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/readyz", F.pay.url));
    bool ready = r.status == 200;
    h_resp_release(&r);
    return ready;
}

/*
 * On PostgreSQL: the server goes away under payments (immediate shutdown:
 * every connection cut) while commands arrive, and comes back. payments
 * says it is not ready meanwhile, reconnects by itself, and carries out
 * every command once: no lost command, no second charge.
 */
static void test_database_restart(void **state)
{
    MOAT_UNUSED(state);
    if (!h_store_dsn(F.pay_data)) {
        print_message("skipped: payments runs on SQLite here\n");
        return;
    }
    const char *first = unique("ord");
    publish_authorize(first, 1100, "EUR", "tok_ok");
    wait_event("PaymentAuthorized", first);

    h_pg_down();
    const char *second = unique("ord");
    publish_capture(first, 1100);
    publish_authorize(second, 2200, "EUR", "tok_ok");
    H_WAIT_UNTIL(!payments_ready(), H_WAIT_MS,
                 "payments to notice that its database is gone");
    assert_true(h_service_alive(&F.pay));
    h_pg_up();

    H_WAIT_UNTIL(payments_ready(), H_WAIT_MS, "payments to reconnect");
    wait_event("PaymentCaptured", first);
    wait_event("PaymentAuthorized", second);
    assert_int_equal(count_events("PaymentAuthorized", first), 1);
    assert_int_equal(count_events("PaymentCaptured", first), 1);
    assert_int_equal(count_events("PaymentAuthorized", second), 1);
    json_t *auths = provider_auths(second);
    assert_int_equal(json_array_size(auths), 1);
    json_decref(auths);
    assert_true(h_service_alive(&F.pay));
}

static void test_throughput(void **state)
{
    MOAT_UNUSED(state);
    const char *env = getenv("MOAT_PAYMENTS_SAGA_BENCH");
    long n = env ? strtol(env, NULL, 10) : 0;
    if (n <= 0) {
        skip();
        return;
    }
    control("{\"latency_ms\": 20}");
    const char *captured = "moat_payments_payments{status=\"captured\"}";
    double base = h_metric(F.pay.url, captured);
    double rounds0 = h_metric(F.pay.url, "moat_payments_saga_rounds_total");
    double outcomes0 = h_metric(F.pay.url, "moat_payments_saga_outcomes_total");
    uint64_t t0 = moat_mono_ms();
    for (long i = 0; i < n; i++) {
        const char *order = unique("bench");
        publish_authorize(order, 100, "DKK", "tok_ok");
        publish_capture(order, 100);
    }
    uint64_t published = moat_mono_ms();
    H_WAIT_UNTIL(h_metric(F.pay.url, captured) >= base + (double)n, 600000,
                 "%ld captures", n);
    uint64_t t1 = moat_mono_ms();
    double rounds =
        h_metric(F.pay.url, "moat_payments_saga_rounds_total") - rounds0;
    double outcomes =
        h_metric(F.pay.url, "moat_payments_saga_outcomes_total") - outcomes0;
    fprintf(stderr,
            "bench: %ld sagas in %.2f s (%.0f sagas/s; publishing took "
            "%.2f s); %.0f worker transactions for %.0f outcomes (%.1f "
            "outcomes per fsync)\n",
            n, (double)(t1 - t0) / 1000.0,
            (double)n * 1000.0 / (double)(t1 - t0),
            (double)(published - t0) / 1000.0, rounds, outcomes,
            rounds > 0 ? outcomes / rounds : 0.0);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    static const char *const pp_env[] = {
        "MOAT_PAYPROVIDER_API_KEYS=moat-shop:" MERCHANT_KEY,
        "MOAT_PAYPROVIDER_CONTROL_KEY=" CONTROL_KEY,
        "MOAT_PAYPROVIDER_LATENCY_MS=5", "MOAT_PAYPROVIDER_SEED=7", NULL};
    F.tmp = h_tmpdir_new("payments-saga");
    F.events = json_array();
    char *pp_data = moat_xasprintf("%s/payprovider-data", F.tmp);
    F.pay_data = moat_xasprintf("%s/payments-data", F.tmp);
    int rc = h_service_start(&F.pp, "payprovider", F.tmp, pp_data, pp_env);
    free(pp_data);
    if (rc != 0)
        return -1;
    F.orders = h_feed_start("orders", F.tmp);
    snprintf(F.provider_url_env, sizeof(F.provider_url_env),
             "MOAT_PAYMENTS_PROVIDER_URL=%s", F.pp.url);
    snprintf(F.orders_url_env, sizeof(F.orders_url_env),
             "MOAT_PAYMENTS_ORDERS_URL=%s", h_feed_url(F.orders));
    if (start_payments() != 0)
        return -1;
    h_auto_service_token(F.pay.url, "payments", NULL, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = 0;
    if (F.pay.pid > 0 && h_service_stop(&F.pay) != 0)
        rc = -1;
    if (F.pp.pid > 0 && h_service_stop(&F.pp) != 0)
        rc = -1;
    h_service_release(&F.pay);
    h_service_release(&F.pp);
    h_feed_stop(F.orders);
    h_auto_headers_clear();
    json_decref(F.events);
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.pay_data);
    return rc;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_authorize_then_capture, reset),
        cmocka_unit_test_setup(test_declined, reset),
        cmocka_unit_test_setup(test_outage_then_recovery, reset),
        cmocka_unit_test_setup(test_void_behind_slow_authorize, reset),
        cmocka_unit_test_setup(test_void_before_authorize, reset),
        cmocka_unit_test_setup(test_refund_after_capture, reset),
        cmocka_unit_test_setup(test_capture_failed_and_no_payment, reset),
        cmocka_unit_test_setup(test_duplicates, reset),
        cmocka_unit_test_setup(test_invalid_authorize, reset),
        cmocka_unit_test_setup(test_crash_while_calls_are_out, reset),
        cmocka_unit_test_setup(test_auditor_listing_and_metrics, reset),
        cmocka_unit_test_setup(test_database_restart, reset),
        cmocka_unit_test_setup(test_throughput, reset),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("payments_saga", tests, group_setup,
                                       group_teardown);
}
