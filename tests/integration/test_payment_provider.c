/*
 * test_payment_provider.c - moat-payprovider, the card-processor stand-in,
 * end to end as a real process on loopback.
 *
 * What is proven here: the authorize -> capture -> refund and authorize ->
 * void flows with the ledger invariants (captured <= authorized, refunds
 * <= captured, no void after a capture), test-card and seeded random
 * declines, Idempotency-Key semantics (replay with the same status, body
 * and an Idempotent-Replayed header; 422 for a key reused with another
 * body; 409 while the first request is still held; keys scoped per
 * merchant; expiry), simulated outages (503, 500, and a "timeout" that
 * never answers) and the recovery after them, a restart that keeps the
 * ledger and the idempotency records, a drain that completes held
 * requests, API-key authentication, and 400/415/422 for bad input.
 *
 * One shared instance serves most tests; each test gets the default knobs
 * back through /_control first (reset()) and works on its own references
 * and keys. The restart and expiry tests start instances of their own.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_payment_provider test_idempotent_replay
 */
#include "moat/common.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "harness.h"
#include "moat/buf.h"

#define KEY_A   "key-a-0123456789abcdef"
#define KEY_B   "key-b-0123456789abcdef"
#define KEY_SUM "key-s-0123456789abcdef"
#define KEY_CTL "control-0123456789abcdef"
#define AUTH_A  "Authorization: Bearer " KEY_A
#define AUTH_B  "Authorization: Bearer " KEY_B
#define AUTH_S  "Authorization: Bearer " KEY_SUM
#define AUTH_C  "Authorization: Bearer " KEY_CTL
#define SEED    7

/* The knobs every test starts from (small latency keeps the suite fast,
 * yet every POST still goes through the held path). */
#define DEFAULT_KNOBS                                                          \
    "{\"latency_ms\":5,\"latency_jitter_ms\":0,\"decline_rate\":0,"            \
    "\"outage\":false,\"outage_status\":503,\"seed\":7}"

static const char *const pp_env[] = {
    "MOAT_PAYPROVIDER_API_KEYS=shop-a:" KEY_A ",shop-b:" KEY_B
    ",shop-sum:" KEY_SUM,
    "MOAT_PAYPROVIDER_CONTROL_KEY=" KEY_CTL,
    "MOAT_PAYPROVIDER_LATENCY_MS=5",
    "MOAT_PAYPROVIDER_SEED=7",
    NULL,
};

static struct {
    char *tmp;
    char *data; /* the shared instance's data directory (owned) */
    struct h_service pp;
} F;

/* ---- helpers ---- */

/* A fresh "<prefix>-<8 hex>" from a pool of its own (see test_catalog.c). */
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
    snprintf(out, sizeof(pool[0]), "%s-%s", prefix, hex);
    return out;
}

static const char *url(const struct h_service *s, const char *path)
{
    return h_fmt("%s%s", s->url, path);
}

/* POST json to path as auth with Idempotency-Key key (NULL: none). */
static void post_at(struct h_resp *r, const struct h_service *s,
                    const char *auth, const char *path, const char *key,
                    const char *json)
{
    const char *headers[3] = {auth, NULL, NULL};
    if (key)
        headers[1] = h_fmt("Idempotency-Key: %s", key);
    h_send_json(r, "POST", url(s, path), json, headers);
}

static void post(struct h_resp *r, const char *auth, const char *path,
                 const char *key, const char *json)
{
    post_at(r, &F.pp, auth, path, key, json);
}

static void get_at(struct h_resp *r, const struct h_service *s,
                   const char *auth, const char *path)
{
    const char *headers[] = {auth, NULL};
    h_http(r, "GET", url(s, path), headers, NULL, 0);
}

static void get(struct h_resp *r, const char *auth, const char *path)
{
    get_at(r, &F.pp, auth, path);
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

static const char *auth_body(json_int_t amount, const char *currency,
                             const char *card, const char *reference)
{
    return h_fmt("{\"amount\":%lld,\"currency\":\"%s\",\"card_token\":\"%s\","
                 "\"reference\":\"%s\"}",
                 (long long)amount, currency, card, reference);
}

/* Authorize at s as auth; asserts 201 and returns the authorization. */
static json_t *authorize_at(const struct h_service *s, const char *auth,
                            json_int_t amount, const char *currency,
                            const char *card, const char *reference)
{
    struct h_resp r;
    post_at(&r, s, auth, "/v1/authorizations", unique("k"),
            auth_body(amount, currency, card, reference));
    h_assert_status(&r, 201);
    json_t *a = json_of(&r);
    const char *loc = h_resp_header(&r, "Location");
    assert_non_null(loc);
    assert_string_equal(loc, h_fmt("/v1/authorizations/%s", str(a, "id")));
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);
    return a;
}

static json_t *authorize(const char *auth, json_int_t amount,
                         const char *currency, const char *card,
                         const char *reference)
{
    return authorize_at(&F.pp, auth, amount, currency, card, reference);
}

static const char *auth_path(const json_t *a, const char *suffix)
{
    return h_fmt("/v1/authorizations/%s%s", str(a, "id"), suffix);
}

/* POST an operation with a fresh key; returns the response (release it). */
static void op(struct h_resp *r, const char *auth, const char *path,
               const char *json)
{
    post(r, auth, path, unique("k"), json);
}

static void control_at(const struct h_service *s, const char *json)
{
    struct h_resp r;
    const char *headers[] = {AUTH_C, NULL};
    h_send_json(&r, "POST", url(s, "/_control"), json, headers);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static void control(const char *json)
{
    control_at(&F.pp, json);
}

static int reset(void **state)
{
    MOAT_UNUSED(state);
    control(DEFAULT_KNOBS);
    return 0;
}

/* ---- a raw client: own handle, own timeout, usable from a thread ---- */

struct raw {
    /* request */
    char url[256];
    char auth[96];
    char key[96];
    char body[512];
    long timeout_ms;
    /* response */
    long status; /* 0 on a transport error (e.g. our timeout) */
    struct moat_buf resp;
    bool replayed; /* Idempotent-Replayed: true */
    double elapsed_ms;
    pthread_t thread;
};

static size_t raw_on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct raw *x = arg;
    moat_buf_add(&x->resp, data, size * nmemb);
    return size * nmemb;
}

static size_t raw_on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct raw *x = arg;
    static const char name[] = "idempotent-replayed: true";
    size_t len = size * nmemb;
    if (len >= sizeof(name) - 1 &&
        strncasecmp(data, name, sizeof(name) - 1) == 0)
        x->replayed = true;
    return len;
}

/* Blocking POST without cmocka assertions (safe on a second thread). */
static void raw_post(struct raw *x)
{
    struct curl_slist *list = NULL;
    char line[160];
    CURL *c = curl_easy_init();
    if (!c)
        moat_die("curl_easy_init failed");
    list = curl_slist_append(list, x->auth);
    snprintf(line, sizeof(line), "Idempotency-Key: %s", x->key);
    list = curl_slist_append(list, line);
    list = curl_slist_append(list, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, x->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, x->timeout_ms);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, x->body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, raw_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, raw_on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    uint64_t t0 = moat_mono_ns();
    CURLcode rc = curl_easy_perform(c);
    x->elapsed_ms = (double)(moat_mono_ns() - t0) / 1e6;
    x->status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x->status);
    curl_slist_free_all(list);
    curl_easy_cleanup(c);
}

static void raw_init(struct raw *x, const struct h_service *s, const char *auth,
                     const char *key, const char *body, long timeout_ms)
{
    memset(x, 0, sizeof(*x));
    snprintf(x->url, sizeof(x->url), "%s/v1/authorizations", s->url);
    snprintf(x->auth, sizeof(x->auth), "%s", auth);
    snprintf(x->key, sizeof(x->key), "%s", key);
    snprintf(x->body, sizeof(x->body), "%s", body);
    x->timeout_ms = timeout_ms;
}

static void *raw_thread(void *arg)
{
    raw_post(arg);
    return NULL;
}

static void raw_start(struct raw *x)
{
    assert_int_equal(pthread_create(&x->thread, NULL, raw_thread, x), 0);
}

static void raw_join(struct raw *x)
{
    assert_int_equal(pthread_join(x->thread, NULL), 0);
}

static void raw_release(struct raw *x)
{
    moat_buf_release(&x->resp);
}

/* Requests the provider holds right now (its payprovider_held_requests
 * gauge), to know that a background request has arrived. */
static int held_count(const struct h_service *s)
{
    struct h_resp r;
    h_get_metrics(&r, s->url);
    h_assert_status(&r, 200);
    static const char name[] = "\npayprovider_held_requests ";
    const char *p = strstr(r.body, name);
    assert_non_null(p);
    int n = atoi(p + sizeof(name) - 1);
    h_resp_release(&r);
    return n;
}

/* Wait until s holds at least n requests (10 s, scaled). */
static void wait_held(const struct h_service *s, int n)
{
    H_WAIT_UNTIL(held_count(s) >= n, 10000,
                 "the provider to hold %d request(s)", n);
}

/* ---- group ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    /* Before any thread: curl's global init is not thread-safe. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    F.tmp = h_tmpdir_new("payprovider");
    F.data = moat_xasprintf("%s/pp-data", F.tmp);
    if (h_service_start(&F.pp, "payprovider", F.tmp, F.data, pp_env) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.pp);
    if (rc != 0)
        print_error("the provider must exit 0 on SIGTERM: %d (see the log "
                    "above)\n",
                    rc);
    h_service_release(&F.pp);
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.data);
    curl_global_cleanup();
    return rc == 0 ? 0 : -1;
}

/* ---- flows ---- */

static void test_authorize_capture_refund(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *ref = unique("ord");
    json_t *a = authorize(AUTH_A, 1000, "EUR", "tok_ok", ref);
    assert_string_equal(str(a, "status"), "authorized");
    assert_string_equal(str(a, "object"), "authorization");
    assert_int_equal(num(a, "amount"), 1000);
    assert_string_equal(str(a, "currency"), "EUR");
    assert_string_equal(str(a, "reference"), ref);
    assert_null(json_object_get(a, "decline_code"));
    assert_int_equal(strlen(str(a, "id")), 31);

    get(&r, AUTH_A, auth_path(a, ""));
    h_assert_status(&r, 200);
    json_t *got = json_of(&r);
    assert_true(json_equal(got, a));
    json_decref(got);
    h_resp_release(&r);

    /* A partial capture; the capture id is what refunds go against. */
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amount\":600}");
    h_assert_status(&r, 200);
    json_t *c = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(c, "status"), "captured");
    assert_int_equal(num(c, "captured_amount"), 600);
    json_t *cap = json_object_get(c, "capture");
    assert_true(json_is_object(cap));
    const char *cap_id = str(cap, "id");
    assert_memory_equal(cap_id, "cap_", 4);
    assert_int_equal(num(cap, "amount"), 600);
    const char *refund_path = h_fmt("/v1/captures/%s/refund", cap_id);
    char refund_url[128];
    snprintf(refund_url, sizeof(refund_url), "%s", refund_path);

    /* Capture happens once. */
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amount\":100}");
    h_assert_problem(&r, 409);
    h_resp_release(&r);
    /* No void after a capture. */
    op(&r, AUTH_A, auth_path(a, "/void"), "{}");
    h_assert_problem(&r, 409);
    h_resp_release(&r);

    op(&r, AUTH_A, refund_url, "{\"amount\":100}");
    h_assert_status(&r, 201);
    json_t *rf = json_of(&r);
    h_resp_release(&r);
    assert_memory_equal(str(rf, "id"), "ref_", 4);
    assert_string_equal(str(rf, "object"), "refund");
    assert_int_equal(num(rf, "amount"), 100);
    assert_string_equal(str(rf, "capture_id"), cap_id);
    assert_string_equal(str(rf, "authorization_id"), str(a, "id"));
    assert_int_equal(num(json_object_get(rf, "capture"), "refunded_amount"),
                     100);
    json_decref(rf);

    /* Refunds never exceed what was captured (500 left). */
    op(&r, AUTH_A, refund_url, "{\"amount\":501}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/amount");
    h_resp_release(&r);
    /* Without an amount: the rest. */
    h_http(&r, "POST", url(&F.pp, refund_url),
           (const char *[]){AUTH_A, h_fmt("Idempotency-Key: %s", unique("k")),
                            NULL},
           NULL, 0);
    h_assert_status(&r, 201);
    rf = json_of(&r);
    assert_int_equal(num(rf, "amount"), 500);
    json_decref(rf);
    h_resp_release(&r);
    op(&r, AUTH_A, refund_url, "{\"amount\":1}");
    h_assert_problem(&r, 409);
    h_resp_release(&r);

    get(&r, AUTH_A, auth_path(a, ""));
    h_assert_status(&r, 200);
    got = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(got, "status"), "captured");
    assert_int_equal(num(got, "captured_amount"), 600);
    assert_int_equal(num(got, "refunded_amount"), 600);
    assert_int_equal(json_array_size(json_object_get(got, "refunds")), 2);
    json_decref(got);
    json_decref(c);
    json_decref(a);
}

static void test_void(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    json_t *a = authorize(AUTH_A, 500, "USD", "tok_ok", unique("ord"));

    /* No body at all is fine for a void. */
    h_http(&r, "POST", url(&F.pp, auth_path(a, "/void")),
           (const char *[]){AUTH_A, h_fmt("Idempotency-Key: %s", unique("k")),
                            NULL},
           NULL, 0);
    h_assert_status(&r, 200);
    json_t *v = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(v, "status"), "voided");
    assert_true(json_is_integer(json_object_get(v, "voided_at")));
    json_decref(v);

    op(&r, AUTH_A, auth_path(a, "/capture"), "{}");
    h_assert_problem(&r, 409);
    json_t *p = json_of(&r);
    assert_string_equal(str(p, "payment_status"), "voided");
    json_decref(p);
    h_resp_release(&r);
    op(&r, AUTH_A, auth_path(a, "/void"), "{}");
    h_assert_problem(&r, 409);
    h_resp_release(&r);
    /* A void takes no fields. */
    json_t *b = authorize(AUTH_A, 500, "USD", "tok_ok", unique("ord"));
    op(&r, AUTH_A, auth_path(b, "/void"), "{\"amount\":5}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/amount");
    h_resp_release(&r);
    json_decref(b);

    get(&r, AUTH_A, auth_path(a, ""));
    h_assert_status(&r, 200);
    v = json_of(&r);
    assert_string_equal(str(v, "status"), "voided");
    assert_int_equal(num(v, "captured_amount"), 0);
    json_decref(v);
    h_resp_release(&r);
    json_decref(a);
}

static void test_capture_limits(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    json_t *a = authorize(AUTH_A, 700, "EUR", "tok_ok", unique("ord"));
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amount\":701}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/amount");
    h_resp_release(&r);
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amount\":0}");
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    /* Without an amount: the whole authorization. */
    op(&r, AUTH_A, auth_path(a, "/capture"), "{}");
    h_assert_status(&r, 200);
    json_t *c = json_of(&r);
    assert_int_equal(num(c, "captured_amount"), 700);
    json_decref(c);
    h_resp_release(&r);
    json_decref(a);
}

static void test_not_found(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    get(&r, AUTH_A, "/v1/authorizations/auth_01M7ZRQ8CT7XRA5DVFHQHPKC8A");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    get(&r, AUTH_A, "/v1/authorizations/nonsense");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    /* An outcome like any other: stored and replayed under its key. */
    const char *key = unique("k");
    post(&r, AUTH_A,
         "/v1/authorizations/auth_01M7ZRQ8CT7XRA5DVFHQHPKC8A/capture", key,
         "{}");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    post(&r, AUTH_A,
         "/v1/authorizations/auth_01M7ZRQ8CT7XRA5DVFHQHPKC8A/capture", key,
         "{}");
    h_assert_problem(&r, 404);
    assert_non_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);
    op(&r, AUTH_A, "/v1/captures/cap_01M7ZRQ8CT7XRA5DVFHQHPKC8A/refund", "{}");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    op(&r, AUTH_A, "/v1/captures/bogus/refund", "{}");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

/* ---- declines ---- */

static void test_declines(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    json_t *d = authorize(AUTH_A, 200, "EUR", "tok_decline", unique("ord"));
    assert_string_equal(str(d, "status"), "declined");
    assert_string_equal(str(d, "decline_code"), "insufficient_funds");
    op(&r, AUTH_A, auth_path(d, "/capture"), "{}");
    h_assert_problem(&r, 409);
    h_resp_release(&r);
    op(&r, AUTH_A, auth_path(d, "/void"), "{}");
    h_assert_problem(&r, 409);
    h_resp_release(&r);
    json_decref(d);

    /* Every other card declines at rate 1, except the approving test card. */
    control("{\"decline_rate\":1}");
    d = authorize(AUTH_A, 200, "EUR", "tok_visa_4242", unique("ord"));
    assert_string_equal(str(d, "status"), "declined");
    assert_string_equal(str(d, "decline_code"), "do_not_honor");
    json_decref(d);
    d = authorize(AUTH_A, 200, "EUR", "tok_ok", unique("ord"));
    assert_string_equal(str(d, "status"), "authorized");
    json_decref(d);
    control("{\"decline_rate\":0}");
    d = authorize(AUTH_A, 200, "EUR", "tok_visa_4242", unique("ord"));
    assert_string_equal(str(d, "status"), "authorized");
    json_decref(d);
    d = authorize(AUTH_A, 200, "EUR", "tok_decline", unique("ord"));
    assert_string_equal(str(d, "status"), "declined");
    json_decref(d);
}

#define DRAWS 24
static void decline_pattern(char out[DRAWS + 1])
{
    for (int i = 0; i < DRAWS; i++) {
        json_t *a =
            authorize(AUTH_A, 100, "EUR", "tok_visa_4242", unique("ord"));
        out[i] = strcmp(str(a, "status"), "declined") == 0 ? 'D' : 'A';
        json_decref(a);
    }
    out[DRAWS] = '\0';
}

static void test_decline_rate_reproducible(void **state)
{
    MOAT_UNUSED(state);
    char first[DRAWS + 1], second[DRAWS + 1], other[DRAWS + 1];
    control("{\"decline_rate\":0.5,\"seed\":99}");
    decline_pattern(first);
    /* The same seed again replays the same sequence of decisions. */
    control("{\"seed\":99}");
    decline_pattern(second);
    assert_string_equal(first, second);
    assert_non_null(strchr(first, 'A'));
    assert_non_null(strchr(first, 'D'));
    /* Jitter draws from a stream of its own: it does not shift declines. */
    control("{\"seed\":99,\"latency_jitter_ms\":10}");
    decline_pattern(other);
    assert_string_equal(first, other);
    control("{\"seed\":100,\"latency_jitter_ms\":0}");
    decline_pattern(other);
    assert_string_not_equal(first, other);
}

/* ---- idempotency ---- */

static void test_idempotent_replay(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r1, r2;
    const char *ref = unique("ord");
    char key[64];
    snprintf(key, sizeof(key), "%s", unique("k"));

    post(&r1, AUTH_A, "/v1/authorizations", key,
         auth_body(1500, "GBP", "tok_ok", ref));
    h_assert_status(&r1, 201);
    assert_null(h_resp_header(&r1, "Idempotent-Replayed"));
    /* The same request, its members in another order: the same request. */
    post(&r2, AUTH_A, "/v1/authorizations", key,
         h_fmt("{\"reference\":\"%s\",\"card_token\":\"tok_ok\","
               "\"currency\":\"GBP\",\"amount\":1500}",
               ref));
    h_assert_status(&r2, 201);
    const char *replayed = h_resp_header(&r2, "Idempotent-Replayed");
    assert_non_null(replayed);
    assert_string_equal(replayed, "true");
    assert_string_equal(r1.body, r2.body);
    assert_string_equal(h_resp_header(&r1, "Location"),
                        h_resp_header(&r2, "Location"));
    h_resp_release(&r2);
    /* A quoted key (a structured-field string) is the same key. */
    post(&r2, AUTH_A, "/v1/authorizations", h_fmt("\"%s\"", key),
         auth_body(1500, "GBP", "tok_ok", ref));
    h_assert_status(&r2, 201);
    assert_non_null(h_resp_header(&r2, "Idempotent-Replayed"));
    assert_string_equal(r1.body, r2.body);
    h_resp_release(&r2);
    h_resp_release(&r1);

    /* One payment, however many retries. */
    get(&r1, AUTH_A, h_fmt("/v1/authorizations?reference=%s", ref));
    h_assert_status(&r1, 200);
    json_t *list = json_of(&r1);
    assert_int_equal(json_array_size(json_object_get(list, "items")), 1);
    json_decref(list);
    h_resp_release(&r1);

    /* A failure is an outcome too: replayed as it was. */
    json_t *a = authorize(AUTH_A, 100, "GBP", "tok_ok", ref);
    snprintf(key, sizeof(key), "%s", unique("k"));
    post(&r1, AUTH_A, auth_path(a, "/capture"), key, "{\"amount\":101}");
    h_assert_problem(&r1, 422);
    post(&r2, AUTH_A, auth_path(a, "/capture"), key, "{\"amount\":101}");
    h_assert_problem(&r2, 422);
    assert_non_null(h_resp_header(&r2, "Idempotent-Replayed"));
    assert_string_equal(r1.body, r2.body);
    h_resp_release(&r1);
    h_resp_release(&r2);
    json_decref(a);
}

static void test_key_reuse_other_body(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *ref = unique("ord");
    char key[64];
    snprintf(key, sizeof(key), "%s", unique("k"));
    post(&r, AUTH_A, "/v1/authorizations", key,
         auth_body(100, "EUR", "tok_ok", ref));
    h_assert_status(&r, 201);
    json_t *a = json_of(&r);
    h_resp_release(&r);

    post(&r, AUTH_A, "/v1/authorizations", key,
         auth_body(101, "EUR", "tok_ok", ref));
    h_assert_problem(&r, 422);
    json_t *p = json_of(&r);
    assert_string_equal(str(p, "type"),
                        "urn:payprovider:problem:idempotency-key-reused");
    json_decref(p);
    h_resp_release(&r);
    /* The same key on another path is another request too. */
    post(&r, AUTH_A, auth_path(a, "/capture"), key, "{}");
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    /* Nothing was captured by it. */
    get(&r, AUTH_A, auth_path(a, ""));
    json_t *got = json_of(&r);
    assert_string_equal(str(got, "status"), "authorized");
    json_decref(got);
    h_resp_release(&r);
    json_decref(a);
}

static void test_key_scoped_per_merchant(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    char key[64];
    snprintf(key, sizeof(key), "%s", unique("k"));
    post(&r, AUTH_A, "/v1/authorizations", key,
         auth_body(100, "EUR", "tok_ok", unique("ord")));
    h_assert_status(&r, 201);
    json_t *a = json_of(&r);
    h_resp_release(&r);
    /* Another merchant's identical key is another key. */
    post(&r, AUTH_B, "/v1/authorizations", key,
         auth_body(200, "EUR", "tok_ok", unique("ord")));
    h_assert_status(&r, 201);
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    json_t *b = json_of(&r);
    assert_string_not_equal(str(a, "id"), str(b, "id"));
    h_resp_release(&r);
    /* And merchants never see each other's payments. */
    get(&r, AUTH_B, auth_path(a, ""));
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    op(&r, AUTH_B, auth_path(a, "/void"), "{}");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    get(&r, AUTH_B,
        h_fmt("/v1/authorizations?reference=%s", str(a, "reference")));
    h_assert_status(&r, 200);
    json_t *list = json_of(&r);
    assert_int_equal(json_array_size(json_object_get(list, "items")), 0);
    json_decref(list);
    h_resp_release(&r);
    json_decref(a);
    json_decref(b);
}

static void test_key_required(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *body = auth_body(100, "EUR", "tok_ok", unique("ord"));
    post(&r, AUTH_A, "/v1/authorizations", NULL, body);
    h_assert_problem(&r, 400);
    json_t *p = json_of(&r);
    assert_string_equal(str(p, "type"),
                        "urn:payprovider:problem:idempotency-key-missing");
    json_decref(p);
    h_resp_release(&r);
    post(&r, AUTH_A, "/v1/authorizations", "\"\"", body);
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    post(&r, AUTH_A, "/v1/authorizations", "\"a b\"", body);
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    char longkey[300];
    memset(longkey, 'k', 256);
    longkey[256] = '\0';
    post(&r, AUTH_A, "/v1/authorizations", longkey, body);
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    longkey[255] = '\0';
    post(&r, AUTH_A, "/v1/authorizations", longkey, body);
    h_assert_status(&r, 201);
    h_resp_release(&r);
}

static void test_concurrent_in_progress(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    struct raw first;
    const char *ref = unique("ord");
    char key[64], body[256];
    snprintf(key, sizeof(key), "%s", unique("k"));
    snprintf(body, sizeof(body), "%s", auth_body(4200, "EUR", "tok_ok", ref));

    /* The window the other requests have to arrive in while the first is
     * held: wide enough for a loaded machine running sanitizer builds. */
    control(h_fmt("{\"latency_ms\":%u}", h_scaled_ms(1000)));
    raw_init(&first, &F.pp, AUTH_A, key, body, (long)h_scaled_ms(10000));
    raw_start(&first);
    wait_held(&F.pp, 1);

    /* The first is still held on its timer: the same request waits... */
    post(&r, AUTH_A, "/v1/authorizations", key, body);
    h_assert_problem(&r, 409);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    json_t *p = json_of(&r);
    assert_string_equal(str(p, "type"),
                        "urn:payprovider:problem:idempotency-key-in-progress");
    json_decref(p);
    h_resp_release(&r);
    /* ...and another request under the same key is refused as ever. */
    post(&r, AUTH_A, "/v1/authorizations", key,
         auth_body(4201, "EUR", "tok_ok", ref));
    h_assert_problem(&r, 422);
    h_resp_release(&r);

    raw_join(&first);
    assert_int_equal(first.status, 201);
    assert_false(first.replayed);
    assert_true(first.elapsed_ms >= 900.0);

    post(&r, AUTH_A, "/v1/authorizations", key, body);
    h_assert_status(&r, 201);
    assert_non_null(h_resp_header(&r, "Idempotent-Replayed"));
    assert_string_equal(r.body, moat_buf_str(&first.resp));
    h_resp_release(&r);
    raw_release(&first);

    get(&r, AUTH_A, h_fmt("/v1/authorizations?reference=%s", ref));
    json_t *list = json_of(&r);
    assert_int_equal(json_array_size(json_object_get(list, "items")), 1);
    json_decref(list);
    h_resp_release(&r);
}

/* ---- outages ---- */

static void test_outage_and_recovery(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *ref = unique("ord");
    char key[64], body[256];
    snprintf(key, sizeof(key), "%s", unique("k"));
    snprintf(body, sizeof(body), "%s", auth_body(900, "EUR", "tok_ok", ref));

    control("{\"outage\":true}");
    post(&r, AUTH_A, "/v1/authorizations", key, body);
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    get(&r, AUTH_A, "/v1/ledger/summary");
    h_assert_problem(&r, 503);
    h_resp_release(&r);
    /* Health stays up: a supervisor must not restart a processor that is
     * only pretending to be down. */
    h_get(&r, url(&F.pp, "/readyz"));
    h_assert_status(&r, 200);
    h_resp_release(&r);

    control("{\"outage_status\":500}");
    post(&r, AUTH_A, "/v1/authorizations", key, body);
    h_assert_problem(&r, 500);
    h_resp_release(&r);

    control("{\"outage\":false}");
    /* The key was not used up by the failed attempts: the retry runs. */
    post(&r, AUTH_A, "/v1/authorizations", key, body);
    h_assert_status(&r, 201);
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);
}

static void test_outage_timeout(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    struct raw x;
    const char *ref = unique("ord");
    char key[64];
    snprintf(key, sizeof(key), "%s", unique("k"));

    control("{\"outage\":true,\"outage_status\":\"timeout\"}");
    raw_init(&x, &F.pp, AUTH_A, key, auth_body(300, "EUR", "tok_ok", ref),
             1000);
    raw_post(&x);
    /* No answer at all: the client gives up on its own timeout. */
    assert_int_equal(x.status, 0);
    assert_true(x.elapsed_ms >= 900.0);
    raw_release(&x);

    control("{\"outage\":false}");
    raw_init(&x, &F.pp, AUTH_A, key, auth_body(300, "EUR", "tok_ok", ref),
             (long)h_scaled_ms(10000));
    raw_post(&x);
    assert_int_equal(x.status, 201);
    assert_false(x.replayed);
    raw_release(&x);
    get(&r, AUTH_A, "/v1/ledger/summary");
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

/* ---- authentication and input ---- */

static void test_api_keys(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *body = auth_body(100, "EUR", "tok_ok", unique("ord"));
    h_send_json(&r, "POST", url(&F.pp, "/v1/authorizations"), body,
                (const char *[]){"Idempotency-Key: x1", NULL});
    h_assert_problem(&r, 401);
    assert_non_null(h_resp_header(&r, "WWW-Authenticate"));
    h_resp_release(&r);
    post(&r, "Authorization: Bearer key-a-0123456789abcdeX",
         "/v1/authorizations", "x2", body);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    post(&r, "Authorization: Basic " KEY_A, "/v1/authorizations", "x3", body);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    get(&r, "Authorization: Bearer ", "/v1/ledger/summary");
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    /* The scheme is case-insensitive. */
    get(&r, "Authorization: bearer " KEY_A, "/v1/ledger/summary");
    h_assert_status(&r, 200);
    h_resp_release(&r);
    /* A merchant key does not open the control endpoint, nor the other
     * way round. */
    h_send_json(&r, "POST", url(&F.pp, "/_control"), "{\"outage\":true}",
                (const char *[]){AUTH_A, NULL});
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    get(&r, AUTH_C, "/v1/ledger/summary");
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    get(&r, AUTH_C, "/_control");
    h_assert_status(&r, 200);
    json_t *k = json_of(&r);
    assert_false(json_is_true(json_object_get(k, "outage")));
    json_decref(k);
    h_resp_release(&r);
}

static void test_invalid_bodies(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    char key[64];
    snprintf(key, sizeof(key), "%s", unique("k"));

    post(&r, AUTH_A, "/v1/authorizations", key, "{\"amount\":");
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    h_http(&r, "POST", url(&F.pp, "/v1/authorizations"),
           (const char *[]){AUTH_A, h_fmt("Idempotency-Key: %s", key),
                            "Content-Type: text/plain", NULL},
           "amount=5", 8);
    h_assert_problem(&r, 415);
    h_resp_release(&r);
    post(&r, AUTH_A, "/v1/authorizations", key, "[1,2]");
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    post(&r, AUTH_A, "/v1/authorizations", key, "{\"colour\":\"red\"}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/amount");
    h_assert_problem_error(&r, "pointer", "/currency");
    h_assert_problem_error(&r, "pointer", "/card_token");
    h_assert_problem_error(&r, "pointer", "/reference");
    h_assert_problem_error(&r, "pointer", "/colour");
    h_resp_release(&r);
    post(&r, AUTH_A, "/v1/authorizations", key,
         "{\"amount\":100,\"currency\":\"eur\",\"card_token\":\"tok ok\","
         "\"reference\":\"\"}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/currency");
    h_assert_problem_error(&r, "pointer", "/card_token");
    h_assert_problem_error(&r, "pointer", "/reference");
    h_resp_release(&r);
    post(&r, AUTH_A, "/v1/authorizations", key,
         auth_body(100, "XXX", "tok_ok", "ord"));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/currency");
    h_resp_release(&r);
    char longref[80];
    memset(longref, 'r', 65);
    longref[65] = '\0';
    post(&r, AUTH_A, "/v1/authorizations", key,
         auth_body(100, "EUR", "tok_ok", longref));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/reference");
    h_resp_release(&r);
    /* Capture and refund bodies are checked as strictly. */
    json_t *a = authorize(AUTH_A, 100, "EUR", "tok_ok", unique("ord"));
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amount\":\"50\"}");
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amont\":50}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/amont");
    h_resp_release(&r);
    json_decref(a);

    /* Rejected input did not use the key up: a corrected request runs. */
    post(&r, AUTH_A, "/v1/authorizations", key,
         auth_body(100, "EUR", "tok_ok", unique("ord")));
    h_assert_status(&r, 201);
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);
}

static void test_amount_limits(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    static const char *const bad[] = {"0",       "-1",   "100000000", "1.5",
                                      "\"100\"", "null", "1e3"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        op(&r, AUTH_A, "/v1/authorizations",
           h_fmt("{\"amount\":%s,\"currency\":\"EUR\",\"card_token\":"
                 "\"tok_ok\",\"reference\":\"lim\"}",
                 bad[i]));
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", "/amount");
        h_resp_release(&r);
    }
    json_t *a = authorize(AUTH_A, 99999999, "EUR", "tok_ok", unique("ord"));
    assert_int_equal(num(a, "amount"), 99999999);
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amount\":100000000}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/amount");
    h_resp_release(&r);
    op(&r, AUTH_A, auth_path(a, "/capture"), "{\"amount\":-5}");
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    op(&r, AUTH_A, auth_path(a, "/capture"), "{}");
    h_assert_status(&r, 200);
    json_t *c = json_of(&r);
    h_resp_release(&r);
    const char *cap = str(json_object_get(c, "capture"), "id");
    op(&r, AUTH_A, h_fmt("/v1/captures/%s/refund", cap),
       "{\"amount\":100000000}");
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/amount");
    h_resp_release(&r);
    json_decref(c);
    json_decref(a);
}

static void test_list_by_reference(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *ref = unique("ord");
    json_t *a = authorize(AUTH_A, 100, "EUR", "tok_decline", ref);
    json_t *b = authorize(AUTH_A, 100, "EUR", "tok_ok", ref);
    get(&r, AUTH_A, h_fmt("/v1/authorizations?reference=%s", ref));
    h_assert_status(&r, 200);
    json_t *list = json_of(&r);
    json_t *items = json_object_get(list, "items");
    assert_int_equal(json_array_size(items), 2);
    assert_string_equal(str(json_array_get(items, 0), "id"), str(a, "id"));
    assert_string_equal(str(json_array_get(items, 1), "id"), str(b, "id"));
    json_decref(list);
    h_resp_release(&r);
    get(&r, AUTH_A, "/v1/authorizations");
    h_assert_problem(&r, 400);
    h_assert_problem_error(&r, "parameter", "reference");
    h_resp_release(&r);
    get(&r, AUTH_A, h_fmt("/v1/authorizations?reference=%s&limit=5", ref));
    h_assert_problem(&r, 400);
    h_assert_problem_error(&r, "parameter", "limit");
    h_resp_release(&r);
    json_decref(a);
    json_decref(b);
}

static void test_ledger_summary(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    /* shop-sum is used by this test only, so the totals are exact. */
    json_t *a = authorize(AUTH_S, 1000, "EUR", "tok_ok", unique("ord"));
    op(&r, AUTH_S, auth_path(a, "/capture"), "{\"amount\":600}");
    h_assert_status(&r, 200);
    json_t *c = json_of(&r);
    h_resp_release(&r);
    op(&r, AUTH_S,
       h_fmt("/v1/captures/%s/refund",
             str(json_object_get(c, "capture"), "id")),
       "{\"amount\":100}");
    h_assert_status(&r, 201);
    h_resp_release(&r);
    json_t *b = authorize(AUTH_S, 500, "EUR", "tok_ok", unique("ord"));
    op(&r, AUTH_S, auth_path(b, "/void"), "{}");
    h_assert_status(&r, 200);
    h_resp_release(&r);
    json_t *u = authorize(AUTH_S, 300, "USD", "tok_ok", unique("ord"));
    json_t *d = authorize(AUTH_S, 200, "EUR", "tok_decline", unique("ord"));

    get(&r, AUTH_S, "/v1/ledger/summary");
    h_assert_status(&r, 200);
    json_t *s = json_of(&r);
    h_resp_release(&r);
    assert_string_equal(str(s, "merchant"), "shop-sum");
    assert_true(json_is_true(json_object_get(s, "consistent")));
    json_t *want = json_pack(
        "{s:{s:i, s:i, s:i, s:i, s:i, s:i}, s:{s:i, s:i, s:i, s:i, s:i, "
        "s:i}}",
        "EUR", "authorized", 1500, "captured", 600, "refunded", 100, "voided",
        500, "authorizations", 2, "declines", 1, "USD", "authorized", 300,
        "captured", 0, "refunded", 0, "voided", 0, "authorizations", 1,
        "declines", 0);
    if (!json_equal(want, json_object_get(s, "currencies"))) {
        char *got = json_dumps(s, JSON_COMPACT);
        fail_msg("unexpected summary %s", got);
    }
    json_decref(want);
    json_decref(s);
    json_decref(a);
    json_decref(b);
    json_decref(c);
    json_decref(u);
    json_decref(d);
}

static void test_control_validation(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *headers[] = {AUTH_C, NULL};
    h_send_json(&r, "POST", url(&F.pp, "/_control"),
                "{\"outage\":true,\"decline_rate\":2,\"outage_status\":404,"
                "\"latency_ms\":-1,\"speed\":1}",
                headers);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/decline_rate");
    h_assert_problem_error(&r, "pointer", "/outage_status");
    h_assert_problem_error(&r, "pointer", "/latency_ms");
    h_assert_problem_error(&r, "pointer", "/speed");
    h_resp_release(&r);
    /* All or nothing: the valid "outage" was not applied either. */
    get(&r, AUTH_C, "/_control");
    h_assert_status(&r, 200);
    json_t *k = json_of(&r);
    assert_true(json_is_false(json_object_get(k, "outage")));
    assert_int_equal(num(k, "seed"), SEED);
    json_decref(k);
    h_resp_release(&r);
}

/* ---- restart, drain, expiry (own instances) ---- */

static void test_restart_keeps_ledger(void **state)
{
    MOAT_UNUSED(state);
    struct h_service pp;
    struct h_resp r;
    struct raw held;
    char *data = moat_xasprintf("%s/restart-data", F.tmp);
    const char *ref = unique("ord");
    char key[64], body[256], first_body[1024], held_key[64];
    snprintf(key, sizeof(key), "%s", unique("k"));
    snprintf(held_key, sizeof(held_key), "%s", unique("k"));
    snprintf(body, sizeof(body), "%s", auth_body(2500, "CHF", "tok_ok", ref));

    assert_int_equal(h_service_start(&pp, "payprovider", F.tmp, data, pp_env),
                     0);
    post_at(&r, &pp, AUTH_A, "/v1/authorizations", key, body);
    h_assert_status(&r, 201);
    snprintf(first_body, sizeof(first_body), "%s", r.body);
    json_t *a = json_of(&r);
    h_resp_release(&r);
    post_at(&r, &pp, AUTH_A, auth_path(a, "/capture"), unique("k"),
            "{\"amount\":2000}");
    h_assert_status(&r, 200);
    h_resp_release(&r);

    /* A request held on its latency when SIGTERM arrives completes: the
     * drain runs it at once instead of dropping it. */
    control_at(&pp, "{\"latency_ms\":5000}");
    raw_init(&held, &pp, AUTH_A, held_key, auth_body(10, "CHF", "tok_ok", ref),
             (long)h_scaled_ms(20000));
    raw_start(&held);
    wait_held(&pp, 1);
    assert_int_equal(h_service_stop(&pp), 0);
    raw_join(&held);
    assert_int_equal(held.status, 201);
    assert_true(held.elapsed_ms < 4500.0);
    h_service_release(&pp);

    assert_int_equal(h_service_start(&pp, "payprovider", F.tmp, data, pp_env),
                     0);
    get_at(&r, &pp, AUTH_A, auth_path(a, ""));
    h_assert_status(&r, 200);
    json_t *got = json_of(&r);
    assert_string_equal(str(got, "status"), "captured");
    assert_int_equal(num(got, "captured_amount"), 2000);
    json_decref(got);
    h_resp_release(&r);
    /* The idempotency records came back with the ledger. */
    post_at(&r, &pp, AUTH_A, "/v1/authorizations", key, body);
    h_assert_status(&r, 201);
    assert_non_null(h_resp_header(&r, "Idempotent-Replayed"));
    assert_string_equal(r.body, first_body);
    h_resp_release(&r);
    post_at(&r, &pp, AUTH_A, "/v1/authorizations", held_key,
            auth_body(10, "CHF", "tok_ok", ref));
    h_assert_status(&r, 201);
    assert_non_null(h_resp_header(&r, "Idempotent-Replayed"));
    assert_string_equal(r.body, moat_buf_str(&held.resp));
    h_resp_release(&r);
    post_at(&r, &pp, AUTH_A, "/v1/authorizations", key,
            auth_body(2501, "CHF", "tok_ok", ref));
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    get_at(&r, &pp, AUTH_A, "/v1/ledger/summary");
    h_assert_status(&r, 200);
    json_t *s = json_of(&r);
    json_t *chf = json_object_get(json_object_get(s, "currencies"), "CHF");
    assert_int_equal(num(chf, "authorized"), 2510);
    assert_int_equal(num(chf, "captured"), 2000);
    assert_true(json_is_true(json_object_get(s, "consistent")));
    json_decref(s);
    h_resp_release(&r);

    assert_int_equal(h_service_stop(&pp), 0);
    h_service_release(&pp);
    raw_release(&held);
    json_decref(a);
    free(data);
}

static void test_idempotency_expiry(void **state)
{
    MOAT_UNUSED(state);
    struct h_service pp;
    struct h_resp r;
    char *data = moat_xasprintf("%s/expiry-data", F.tmp);
    /* Keys kept for two seconds, and no control key: /_control is off. */
    const char *env[] = {
        "MOAT_PAYPROVIDER_API_KEYS=shop-a:" KEY_A,
        "MOAT_PAYPROVIDER_IDEMPOTENCY_TTL_S=2",
        "MOAT_PAYPROVIDER_CONTROL_KEY=", "MOAT_PAYPROVIDER_LATENCY_MS=0", NULL};
    char key[64];
    snprintf(key, sizeof(key), "%s", unique("k"));

    assert_int_equal(h_service_start(&pp, "payprovider", F.tmp, data, env), 0);
    get_at(&r, &pp, AUTH_C, "/_control");
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    post_at(&r, &pp, AUTH_A, "/v1/authorizations", key,
            auth_body(100, "EUR", "tok_ok", "exp-1"));
    h_assert_status(&r, 201);
    h_resp_release(&r);
    post_at(&r, &pp, AUTH_A, "/v1/authorizations", key,
            auth_body(200, "EUR", "tok_ok", "exp-2"));
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    /* Time is the condition: the key's TTL (2 s here) must pass. */
    h_sleep_ms(2200);
    /* Expired: the key is free for a new operation. */
    post_at(&r, &pp, AUTH_A, "/v1/authorizations", key,
            auth_body(200, "EUR", "tok_ok", "exp-2"));
    h_assert_status(&r, 201);
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);

    assert_int_equal(h_service_stop(&pp), 0);
    h_service_release(&pp);
    free(data);
}

static void test_bad_configuration(void **state)
{
    MOAT_UNUSED(state);
    struct h_service pp;
    char *data = moat_xasprintf("%s/badconf-data", F.tmp);
    /* A short key, a malformed entry, a shared key: each refuses to
     * start rather than run with a weak or ambiguous merchant table. */
    static const char *const bad[] = {
        "MOAT_PAYPROVIDER_API_KEYS=shop-a:short",
        "MOAT_PAYPROVIDER_API_KEYS=shop-a",
        "MOAT_PAYPROVIDER_API_KEYS=Shop:" KEY_A,
        "MOAT_PAYPROVIDER_API_KEYS=shop-a:" KEY_A ",shop-b:" KEY_A,
        "MOAT_PAYPROVIDER_API_KEYS=",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        const char *env[] = {bad[i], NULL};
        fprintf(stderr, "(expected to fail: %s)\n", bad[i]);
        assert_int_not_equal(
            h_service_start(&pp, "payprovider", F.tmp, data, env), 0);
        h_service_release(&pp);
    }
    free(data);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_authorize_capture_refund, reset),
        cmocka_unit_test_setup(test_void, reset),
        cmocka_unit_test_setup(test_capture_limits, reset),
        cmocka_unit_test_setup(test_not_found, reset),
        cmocka_unit_test_setup(test_declines, reset),
        cmocka_unit_test_setup(test_decline_rate_reproducible, reset),
        cmocka_unit_test_setup(test_idempotent_replay, reset),
        cmocka_unit_test_setup(test_key_reuse_other_body, reset),
        cmocka_unit_test_setup(test_key_scoped_per_merchant, reset),
        cmocka_unit_test_setup(test_key_required, reset),
        cmocka_unit_test_setup(test_concurrent_in_progress, reset),
        cmocka_unit_test_setup(test_outage_and_recovery, reset),
        cmocka_unit_test_setup(test_outage_timeout, reset),
        cmocka_unit_test_setup(test_api_keys, reset),
        cmocka_unit_test_setup(test_invalid_bodies, reset),
        cmocka_unit_test_setup(test_amount_limits, reset),
        cmocka_unit_test_setup(test_list_by_reference, reset),
        cmocka_unit_test_setup(test_ledger_summary, reset),
        cmocka_unit_test_setup(test_control_validation, reset),
        cmocka_unit_test(test_restart_keeps_ledger),
        cmocka_unit_test(test_idempotency_expiry),
        cmocka_unit_test(test_bad_configuration),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("payment_provider", tests, group_setup,
                                       group_teardown);
}
