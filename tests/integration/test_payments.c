/*
 * test_payments.c - the payments service end to end, against the real
 * card-processor stand-in (moat-payprovider), both as processes on
 * loopback.
 *
 * What is proven here: authorize (authorized and declined), capture, void
 * and refund with the state machine enforced (409 otherwise); the
 * caller's Idempotency-Key (replay byte for byte, 422 for another body,
 * 400 without one, one payment per order); a provider outage and a
 * provider slower than our timeout both answered 503 + Retry-After, then
 * completed by a retry with the same key as the same payment, with
 * exactly one authorization at the provider; no card token and no
 * plaintext provider id anywhere in payments' database files; the events
 * in the feed; the per-currency summary; service-token enforcement; and a
 * restart that keeps everything.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_payments test_outage_then_recovery
 */
#include "moat/common.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MERCHANT_KEY "moat-shop-key-0123456789abcdef"
#define CONTROL_KEY  "control-key-0123456789abcdef"
#define PP_AUTH      "Authorization: Bearer " MERCHANT_KEY
#define PP_CONTROL   "Authorization: Bearer " CONTROL_KEY
#define TIMEOUT_MS   1000 /* payments' provider timeout in this test */

#define DEFAULT_KNOBS                                                          \
    "{\"latency_ms\":5,\"latency_jitter_ms\":0,\"decline_rate\":0,"            \
    "\"outage\":false,\"outage_status\":503,\"seed\":7}"

static struct {
    char *tmp;
    char *pay_data;
    struct h_service pp;
    struct h_service pay;
    char provider_url_env[128];
} F;

/* ---- helpers ---- */

/* A fresh "<prefix>_<8 hex>", kept in a pool of its own. */
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

/* POST to payments with a fresh service token (tokens live 60 s, longer
 * than some runs of this file) and an Idempotency-Key (NULL: none). */
static void pay_post(struct h_resp *r, const char *path, const char *key,
                     const char *json)
{
    const char *headers[3] = {h_service_token("payments", NULL, NULL), NULL,
                              NULL};
    if (key)
        headers[1] = h_fmt("Idempotency-Key: %s", key);
    h_send_json(r, "POST", h_fmt("%s%s", F.pay.url, path), json ? json : "{}",
                headers);
}

static void pay_get(struct h_resp *r, const char *path)
{
    const char *headers[] = {h_service_token("payments", NULL, NULL), NULL};
    h_http(r, "GET", h_fmt("%s%s", F.pay.url, path), headers, NULL, 0);
}

static void pp_get(struct h_resp *r, const char *path)
{
    const char *headers[] = {PP_AUTH, NULL};
    h_http(r, "GET", h_fmt("%s%s", F.pp.url, path), headers, NULL, 0);
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

/* A payment request body, from a pool of its own: tests keep one across
 * many calls, longer than h_fmt's rotating buffers last. */
static const char *pay_body(const char *order, json_int_t amount,
                            const char *currency, const char *card)
{
    static char pool[UNIQUE_POOL][256];
    static unsigned next;
    char *out = pool[next++ % UNIQUE_POOL];
    snprintf(out, sizeof(pool[0]),
             "{\"order_id\":\"%s\",\"amount\":%lld,\"currency\":\"%s\","
             "\"card_token\":\"%s\"}",
             order, (long long)amount, currency, card);
    return out;
}

/* Authorize and expect 201 with status want; returns the payment (caller
 * decrefs). */
static json_t *authorize(const char *order, json_int_t amount,
                         const char *currency, const char *card,
                         const char *want)
{
    struct h_resp r;
    pay_post(&r, "/v1/payments", unique("key"),
             pay_body(order, amount, currency, card));
    h_assert_status(&r, 201);
    json_t *p = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(p, "status"), want);
    assert_string_equal(str(p, "order_id"), order);
    assert_int_equal(num(p, "amount"), amount);
    return p;
}

/* POST /v1/payments/<id>/<op>: expect status; returns the body as JSON. */
static json_t *operation(const char *id, const char *op, long status)
{
    struct h_resp r;
    pay_post(&r, h_fmt("/v1/payments/%s/%s", id, op), NULL, NULL);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = json_of(&r);
    h_resp_release(&r);
    return j;
}

static void expect_conflict(const char *id, const char *op, const char *status)
{
    json_t *pr = operation(id, op, 409);
    assert_string_equal(str(pr, "payment_status"), status);
    json_decref(pr);
}

/* The provider's authorizations for reference order (new reference). */
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

/* The provider ledger's count of authorizations in currency. */
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

/* Whole file, or an empty buffer when it does not exist; caller frees. */
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

static bool contains(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; k <= n && i <= n - k; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return true;
    return false;
}

/* True when needle occurs in any file of payments' data directory
 * (payments.db, its WAL and shm, the audit log, the keys), or in any row
 * of its PostgreSQL database when it has one. */
static bool in_data_dir(const char *needle)
{
    DIR *d = opendir(F.pay_data);
    struct dirent *e;
    char *rows = h_store_text(F.pay_data);
    bool found = rows && strstr(rows, needle);
    free(rows);
    assert_non_null(d);
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        size_t n;
        char *path = moat_xasprintf("%s/%s", F.pay_data, e->d_name);
        char *bytes = slurp(path, &n);
        found = contains(bytes, n, needle);
        free(bytes);
        free(path);
    }
    closedir(d);
    return found;
}

static int start_payments(void)
{
    const char *env[] = {F.provider_url_env,
                         "MOAT_PAYMENTS_PROVIDER_KEY=" MERCHANT_KEY,
                         "MOAT_PAYMENTS_PROVIDER_TIMEOUT_MS=1000", NULL};
    return h_service_start(&F.pay, "payments", F.tmp, F.pay_data, env);
}

/* ---- tests ---- */

static void test_authorize_ok(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    json_t *p = authorize(order, 1250, "EUR", "tok_ok", "authorized");
    const char *id = str(p, "id");
    assert_int_equal(strncmp(id, "pay_", 4), 0);
    assert_int_equal(num(p, "attempts"), 1);
    assert_string_equal(str(p, "created_by"), "test");
    assert_null(json_object_get(p, "card_token"));

    struct h_resp r;
    pay_get(&r, h_fmt("/v1/payments/%s", id));
    h_assert_status(&r, 200);
    json_t *g = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(g, "status"), "authorized");
    json_decref(g);

    pay_get(&r, h_fmt("/v1/payments?order_id=%s", order));
    h_assert_status(&r, 200);
    g = json_of(&r);
    h_resp_release(&r);
    json_t *items = json_object_get(g, "items");
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(str(json_array_get(items, 0), "id"), id);
    json_decref(g);

    /* The provider holds one authorization for the order. */
    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    assert_string_equal(str(json_array_get(auths, 0), "status"), "authorized");
    json_decref(auths);
    json_decref(p);
}

static void test_authorize_declined(void **state)
{
    MOAT_UNUSED(state);
    json_t *p = authorize(unique("ord"), 990, "EUR", "tok_decline", "declined");
    assert_string_equal(str(p, "decline_code"), "insufficient_funds");
    /* A declined payment goes nowhere. */
    expect_conflict(str(p, "id"), "capture", "declined");
    expect_conflict(str(p, "id"), "void", "declined");
    expect_conflict(str(p, "id"), "refund", "declined");
    json_decref(p);
}

static void test_capture_then_refund(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    json_t *p = authorize(order, 4000, "EUR", "tok_ok", "authorized");
    const char *id = str(p, "id");
    expect_conflict(id, "refund", "authorized");

    json_t *c = operation(id, "capture", 200);
    assert_string_equal(str(c, "status"), "captured");
    assert_int_equal(num(c, "version"), 3);
    json_decref(c);
    expect_conflict(id, "capture", "captured");
    expect_conflict(id, "void", "captured");

    c = operation(id, "refund", 200);
    assert_string_equal(str(c, "status"), "refunded");
    json_decref(c);
    expect_conflict(id, "refund", "refunded");
    expect_conflict(id, "capture", "refunded");

    json_t *auths = provider_auths(order);
    json_t *a = json_array_get(auths, 0);
    assert_int_equal(num(a, "captured_amount"), 4000);
    assert_int_equal(num(a, "refunded_amount"), 4000);
    json_decref(auths);
    json_decref(p);
}

static void test_void(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    json_t *p = authorize(order, 700, "EUR", "tok_ok", "authorized");
    const char *id = str(p, "id");
    json_t *v = operation(id, "void", 200);
    assert_string_equal(str(v, "status"), "voided");
    json_decref(v);
    expect_conflict(id, "void", "voided");
    expect_conflict(id, "capture", "voided");
    expect_conflict(id, "refund", "voided");

    json_t *auths = provider_auths(order);
    assert_string_equal(str(json_array_get(auths, 0), "status"), "voided");
    json_decref(auths);
    json_decref(p);
}

static void test_not_found(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    pay_get(&r, "/v1/payments/pay_01M7ZVZRZKPP4AFWN8WE5GTXF4");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    pay_get(&r, "/v1/payments/nonsense");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    json_t *pr = operation("pay_01M7ZVZRZKPP4AFWN8WE5GTXF4", "capture", 404);
    json_decref(pr);
    pay_get(&r, "/v1/payments?limit=0");
    h_assert_problem_error(&r, "parameter", "limit");
    h_resp_release(&r);
    pay_get(&r, "/v1/payments?order_id=a%20b");
    h_assert_problem_error(&r, "parameter", "order_id");
    h_resp_release(&r);
}

static void test_idempotency(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    const char *key = unique("key");
    const char *body = pay_body(order, 1500, "EUR", "tok_ok");
    struct h_resp first, again;

    pay_post(&first, "/v1/payments", key, body);
    h_assert_status(&first, 201);
    /* The same request, members in another order: the same request. */
    pay_post(&again, "/v1/payments", key,
             h_fmt("{\"card_token\":\"tok_ok\",\"currency\":\"EUR\","
                   "\"amount\":1500,\"order_id\":\"%s\"}",
                   order));
    h_assert_status(&again, 201);
    assert_string_equal(first.body, again.body);
    assert_non_null(h_resp_header(&again, "Idempotent-Replayed"));
    h_resp_release(&again);
    h_resp_release(&first);

    /* Same key, another body. */
    pay_post(&again, "/v1/payments", key,
             pay_body(order, 1501, "EUR", "tok_ok"));
    h_assert_problem(&again, 422);
    h_resp_release(&again);
    /* Same key, another card: the token counts, though it is not kept. */
    pay_post(&again, "/v1/payments", key,
             pay_body(order, 1500, "EUR", "tok_other"));
    h_assert_problem(&again, 422);
    h_resp_release(&again);
    /* Another key for the same order: one payment per order. */
    pay_post(&again, "/v1/payments", unique("key"), body);
    h_assert_problem(&again, 409);
    h_resp_release(&again);
    /* No key at all. */
    pay_post(&again, "/v1/payments", NULL, body);
    h_assert_problem(&again, 400);
    h_resp_release(&again);
    /* Invalid bodies are 422 with a pointer per field. */
    pay_post(&again, "/v1/payments", unique("key"),
             "{\"order_id\":\"o 1\",\"amount\":0,\"currency\":\"eur\","
             "\"card_token\":\"x\",\"extra\":1}");
    h_assert_problem_error(&again, "pointer", "/amount");
    h_assert_problem_error(&again, "pointer", "/currency");
    h_assert_problem_error(&again, "pointer", "/order_id");
    h_assert_problem_error(&again, "pointer", "/extra");
    h_resp_release(&again);

    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    json_decref(auths);
}

/* A 503 outage, then recovery: the same payment completes, once. */
static void test_outage_then_recovery(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    const char *key = unique("key");
    const char *body = pay_body(order, 2500, "CHF", "tok_ok");
    struct h_resp r;
    json_int_t before = provider_count("CHF", "authorizations");

    control("{\"outage\": true, \"outage_status\": 503}");
    pay_post(&r, "/v1/payments", key, body);
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    json_t *pr = json_of(&r);
    h_resp_release(&r);
    char id[64];
    snprintf(id, sizeof(id), "%s", str(pr, "payment_id"));
    assert_string_equal(str(pr, "payment_status"), "pending");
    json_decref(pr);

    /* A second try during the outage: still the same payment. */
    pay_post(&r, "/v1/payments", key, body);
    h_assert_problem(&r, 503);
    pr = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(pr, "payment_id"), id);
    json_decref(pr);

    pay_get(&r, h_fmt("/v1/payments/%s", id));
    h_assert_status(&r, 200);
    pr = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(pr, "status"), "pending");
    assert_int_equal(num(pr, "attempts"), 2);
    json_decref(pr);

    control("{\"outage\": false}");
    pay_post(&r, "/v1/payments", key, body);
    h_assert_status(&r, 201);
    pr = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(pr, "id"), id);
    assert_string_equal(str(pr, "status"), "authorized");
    assert_int_equal(num(pr, "attempts"), 3);
    json_decref(pr);

    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    json_decref(auths);
    assert_int_equal(provider_count("CHF", "authorizations"), before + 1);
}

/*
 * The dangerous case: the provider is slower than our timeout, so it
 * authorizes while we answer 503. The retry must get that authorization
 * (the provider replays it under our deterministic key), not a second one.
 */
static void test_timeout_then_recovery(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    const char *key = unique("key");
    const char *body = pay_body(order, 3100, "JPY", "tok_ok");
    struct h_resp r;
    json_int_t before = provider_count("JPY", "authorizations");

    control(h_fmt("{\"latency_ms\": %u}", TIMEOUT_MS * 2));
    pay_post(&r, "/v1/payments", key, body);
    h_assert_problem(&r, 503);
    json_t *pr = json_of(&r);
    h_resp_release(&r);
    char id[64];
    snprintf(id, sizeof(id), "%s", str(pr, "payment_id"));
    json_decref(pr);

    /* Let the held authorization complete at the provider. */
    H_WAIT_UNTIL(provider_count("JPY", "authorizations") > before, H_WAIT_MS,
                 "the held authorization to complete at the provider");
    control(DEFAULT_KNOBS);
    pay_post(&r, "/v1/payments", key, body);
    h_assert_status(&r, 201);
    pr = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(pr, "id"), id);
    assert_string_equal(str(pr, "status"), "authorized");
    json_decref(pr);

    json_t *auths = provider_auths(order);
    assert_int_equal(json_array_size(auths), 1);
    json_decref(auths);
    assert_int_equal(provider_count("JPY", "authorizations"), before + 1);
}

static void test_no_secrets_at_rest(void **state)
{
    MOAT_UNUSED(state);
    /* An ordinary card (authorized at decline rate 0) with a token that
     * occurs nowhere else. */
    char card[40];
    snprintf(card, sizeof(card), "tok_%s", unique("secret"));
    const char *order = unique("ord");
    json_t *p = authorize(order, 5100, "EUR", card, "authorized");
    json_t *c = operation(str(p, "id"), "capture", 200);
    json_decref(c);

    json_t *auths = provider_auths(order);
    json_t *a = json_array_get(auths, 0);
    const char *auth_id = str(a, "id");
    const char *cap_id = str(json_object_get(a, "capture"), "id");

    assert_false(in_data_dir(card));
    assert_false(in_data_dir("tok_ok"));
    assert_false(in_data_dir("tok_decline"));
    assert_false(in_data_dir(auth_id));
    assert_false(in_data_dir(cap_id));
    /* The check is not vacuous: the payment itself is there. */
    assert_true(in_data_dir(str(p, "id")));
    json_decref(auths);
    json_decref(p);
}

/* An event of type about payment_id; its subject is the order (as every
 * reply of the saga's, docs/saga.md). */
static bool has_event(json_t *events, const char *type, const char *payment_id)
{
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        json_t *d = json_object_get(e, "data");
        const char *pid = json_string_value(json_object_get(d, "payment_id"));
        if (strcmp(str(e, "type"), type) == 0 && pid &&
            strcmp(pid, payment_id) == 0) {
            assert_string_equal(str(e, "subject"), str(d, "order_id"));
            assert_null(json_object_get(d, "card_token"));
            return true;
        }
    }
    return false;
}

static void test_events(void **state)
{
    MOAT_UNUSED(state);
    json_t *ok = authorize(unique("ord"), 100, "EUR", "tok_ok", "authorized");
    json_t *no =
        authorize(unique("ord"), 100, "EUR", "tok_decline", "declined");
    json_t *vo = authorize(unique("ord"), 100, "EUR", "tok_ok", "authorized");
    json_decref(operation(str(ok, "id"), "capture", 200));
    json_decref(operation(str(ok, "id"), "refund", 200));
    json_decref(operation(str(vo, "id"), "void", 200));

    struct h_resp r;
    pay_get(&r, "/v1/events?after=0&limit=1000");
    h_assert_status(&r, 200);
    assert_null(strstr(r.body, "tok_"));
    json_t *feed = json_of(&r);
    h_resp_release(&r);
    json_t *events = json_object_get(feed, "events");
    assert_true(has_event(events, "PaymentAuthorized", str(ok, "id")));
    assert_true(has_event(events, "PaymentCaptured", str(ok, "id")));
    assert_true(has_event(events, "PaymentRefunded", str(ok, "id")));
    assert_true(has_event(events, "PaymentDeclined", str(no, "id")));
    assert_true(has_event(events, "PaymentVoided", str(vo, "id")));
    assert_false(has_event(events, "PaymentCaptured", str(vo, "id")));
    json_decref(feed);
    json_decref(ok);
    json_decref(no);
    json_decref(vo);
}

static void test_summary_and_auth(void **state)
{
    MOAT_UNUSED(state);
    json_t *a = authorize(unique("ord"), 111, "SEK", "tok_ok", "authorized");
    json_t *b = authorize(unique("ord"), 222, "SEK", "tok_ok", "authorized");
    json_decref(operation(str(b, "id"), "capture", 200));

    struct h_resp r;
    pay_get(&r, "/v1/payments/summary");
    h_assert_status(&r, 200);
    json_t *s = json_of(&r);
    h_resp_release(&r);
    json_t *sek = json_object_get(json_object_get(s, "currencies"), "SEK");
    json_t *auth = json_object_get(sek, "authorized");
    json_t *cap = json_object_get(sek, "captured");
    assert_int_equal(num(auth, "count"), 1);
    assert_int_equal(num(auth, "amount"), 111);
    assert_int_equal(num(cap, "count"), 1);
    assert_int_equal(num(cap, "amount"), 222);
    json_decref(s);

    /* Without a service token nothing is served. */
    h_get(&r, h_fmt("%s/v1/payments/%s", F.pay.url, str(a, "id")));
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    json_decref(a);
    json_decref(b);
}

/* Last: a clean stop (exit 0, no leaks under ASan) and a restart that
 * keeps payments, idempotency records and the audit chain. */
static void test_restart_keeps_state(void **state)
{
    MOAT_UNUSED(state);
    const char *order = unique("ord");
    const char *key = unique("key");
    const char *body = pay_body(order, 4200, "EUR", "tok_ok");
    struct h_resp r;
    pay_post(&r, "/v1/payments", key, body);
    h_assert_status(&r, 201);
    char *first = moat_xstrdup(r.body);
    json_t *p = json_of(&r);
    h_resp_release(&r);
    json_decref(operation(str(p, "id"), "capture", 200));

    assert_int_equal(h_service_stop(&F.pay), 0);
    h_service_release(&F.pay);
    assert_int_equal(start_payments(), 0);

    pay_get(&r, h_fmt("/v1/payments/%s", str(p, "id")));
    h_assert_status(&r, 200);
    json_t *g = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(g, "status"), "captured");
    json_decref(g);

    pay_post(&r, "/v1/payments", key, body);
    h_assert_status(&r, 201);
    assert_string_equal(r.body, first);
    h_resp_release(&r);

    /* Created, authorized, captured: three audit records at least. */
    char *path = moat_xasprintf("%s/audit.log", F.pay_data);
    size_t n;
    char *log = slurp(path, &n);
    assert_true(contains(log, n, "\"action\":\"payment.captured\""));
    assert_true(contains(log, n, str(p, "id")));
    free(log);
    free(path);
    free(first);
    json_decref(p);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    static const char *const pp_env[] = {
        "MOAT_PAYPROVIDER_API_KEYS=moat-shop:" MERCHANT_KEY,
        "MOAT_PAYPROVIDER_CONTROL_KEY=" CONTROL_KEY,
        "MOAT_PAYPROVIDER_LATENCY_MS=5", "MOAT_PAYPROVIDER_SEED=7", NULL};
    F.tmp = h_tmpdir_new("payments");
    char *pp_data = moat_xasprintf("%s/payprovider-data", F.tmp);
    F.pay_data = moat_xasprintf("%s/payments-data", F.tmp);
    int rc = h_service_start(&F.pp, "payprovider", F.tmp, pp_data, pp_env);
    free(pp_data);
    if (rc != 0)
        return -1;
    snprintf(F.provider_url_env, sizeof(F.provider_url_env),
             "MOAT_PAYMENTS_PROVIDER_URL=%s", F.pp.url);
    return start_payments();
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
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.pay_data);
    return rc;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_authorize_ok, reset),
        cmocka_unit_test_setup(test_authorize_declined, reset),
        cmocka_unit_test_setup(test_capture_then_refund, reset),
        cmocka_unit_test_setup(test_void, reset),
        cmocka_unit_test_setup(test_not_found, reset),
        cmocka_unit_test_setup(test_idempotency, reset),
        cmocka_unit_test_setup(test_outage_then_recovery, reset),
        cmocka_unit_test_setup(test_timeout_then_recovery, reset),
        cmocka_unit_test_setup(test_no_secrets_at_rest, reset),
        cmocka_unit_test_setup(test_events, reset),
        cmocka_unit_test_setup(test_summary_and_auth, reset),
        cmocka_unit_test_setup(test_restart_keeps_state, reset),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("payments", tests, group_setup,
                                       group_teardown);
}
