/*
 * test_contract_v1.c - the public API's v1 contract, and v2 beside it
 * (docs/api.md "Versions", docs/api-changelog.md).
 *
 * Real processes: moat-users, moat-catalog, moat-inventory,
 * moat-payprovider, moat-payments, moat-orders, moat-notifications,
 * moat-readmodel, moat-search, moat-reporting and moat-gateway, with the
 * gateway routes of moat.json (v1 only: the gateway derives v2); and
 * moat-posts, moat-connections and moat-profiles, called directly as the
 * gateway does not route them yet. One order is carried to completion so that
 * every list and read route has something to show. Then, for each such route:
 *  - v1's JSON has exactly the pinned shape (member names and types, at
 *    every depth): today's v1, which must not change;
 *  - v2 answers the same data, member by member, except that each v1
 *    integer timestamp is an RFC 3339 UTC string for the same second
 *    (checked with timegm, not with libmoat's formatter);
 *  - through the gateway, v1 carries Deprecation, Sunset and a Link to
 *    the v2 path; v2 does not. Services' own /v1 (the internal contract)
 *    carries none.
 */
#include "moat/common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "moat/http.h"

#define MERCHANT_KEY "moat-shop-key-0123456789abcdef"
#define CONTROL_KEY  "control-key-0123456789abcdef"
#define ADMIN        "usr_01J0000000000000000000ADMIN"

static struct {
    char *tmp;
    struct h_service usr, cat, inv, pp, pay, ord, notif, rm, srch, rep, gw,
        posts, conn, prof;
    uint16_t ord_port;
    char env[32][1024];
    const char *pay_env[8], *ord_env[8], *gw_env[8], *inv_env[2], *pp_env[4],
        *notif_env[2], *rm_env[8], *srch_env[2], *prof_env[2], *rep_env[8];
    char alice[64];
    char product[64];
    char order[64];
    char payment[64];
    char notification[64];
    char post[64];
} F;

/* ---- shapes and comparisons ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * The shape of a JSON value: "s" string, "i" integer, "r" real, "b"
 * boolean, "n" null, "[shape of the first element]" ("[]" when empty),
 * "{name:shape,...}" with names sorted.
 */
static void shape(json_t *v, char *out, size_t cap)
{
    size_t len = strlen(out);
    char *p = out + len;
    size_t room = cap - len;
    switch (json_typeof(v)) {
    case JSON_STRING:
        snprintf(p, room, "s");
        return;
    case JSON_INTEGER:
        snprintf(p, room, "i");
        return;
    case JSON_REAL:
        snprintf(p, room, "r");
        return;
    case JSON_TRUE:
    case JSON_FALSE:
        snprintf(p, room, "b");
        return;
    case JSON_NULL:
        snprintf(p, room, "n");
        return;
    case JSON_ARRAY:
        snprintf(p, room, "[");
        if (json_array_size(v))
            shape(json_array_get(v, 0), out, cap);
        len = strlen(out);
        snprintf(out + len, cap - len, "]");
        return;
    case JSON_OBJECT:
        break;
    }
    size_t n = json_object_size(v), i = 0;
    const char **keys = moat_xcalloc(n ? n : 1, sizeof(*keys));
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m) keys[i++] = k;
    qsort(keys, n, sizeof(*keys), cmp_str);
    snprintf(p, room, "{");
    for (i = 0; i < n; i++) {
        len = strlen(out);
        snprintf(out + len, cap - len, "%s%s:", i ? "," : "", keys[i]);
        shape(json_object_get(v, keys[i]), out, cap);
    }
    len = strlen(out);
    snprintf(out + len, cap - len, "}");
    free(keys);
}

/* "2026-12-04T23:17:44Z" to epoch seconds, independently of libmoat. */
static bool rfc3339_utc(const char *s, long long *out)
{
    struct tm tm = {0};
    char z = 0;
    int end = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%c%n", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &z,
               &end) != 7 ||
        z != 'Z' || s[end] != '\0' || strlen(s) != 20)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (long long)timegm(&tm);
    return true;
}

/*
 * v2 is v1 with its timestamps as RFC 3339: the same members everywhere,
 * equal values, and where v1 has an integer under a timestamp name, v2 the
 * string for that second. path says where, for the message. Counts the
 * timestamps compared in *times.
 */
static void assert_same_data(json_t *v1, json_t *v2, const char *path,
                             const char *member, size_t *times)
{
    if (member && moat_api_time_member(member) && json_is_integer(v1)) {
        long long t = 0;
        if (!json_is_string(v2) || !rfc3339_utc(json_string_value(v2), &t))
            fail_msg("%s: v2 is not an RFC 3339 UTC string", path);
        if (t != (long long)json_integer_value(v1))
            fail_msg("%s: v1 %lld, v2 %s (%lld)", path,
                     (long long)json_integer_value(v1), json_string_value(v2),
                     t);
        (*times)++;
        return;
    }
    if (json_typeof(v1) != json_typeof(v2))
        fail_msg("%s: v1 and v2 have different types", path);
    char sub[512];
    if (json_is_object(v1)) {
        if (json_object_size(v1) != json_object_size(v2))
            fail_msg("%s: v1 has %zu members, v2 %zu", path,
                     json_object_size(v1), json_object_size(v2));
        const char *k;
        json_t *m;
        json_object_foreach(v1, k, m)
        {
            snprintf(sub, sizeof(sub), "%s/%s", path, k);
            json_t *m2 = json_object_get(v2, k);
            if (!m2)
                fail_msg("%s: missing in v2", sub);
            assert_same_data(m, m2, sub, k, times);
        }
    } else if (json_is_array(v1)) {
        if (json_array_size(v1) != json_array_size(v2))
            fail_msg("%s: arrays of different sizes", path);
        for (size_t i = 0; i < json_array_size(v1); i++) {
            snprintf(sub, sizeof(sub), "%s/%zu", path, i);
            assert_same_data(json_array_get(v1, i), json_array_get(v2, i), sub,
                             NULL, times);
        }
    } else if (!json_equal(v1, v2)) {
        fail_msg("%s: v1 and v2 differ", path);
    }
}

/*
 * GET base + v1_path and base + the v2 path (its "v1" segment read "v2")
 * with one auth header; both 200 JSON. Checks v1's shape against want,
 * v2 against v1, the deprecation headers (via_gateway: present on v1, with
 * the v2 path; else absent) and returns how many timestamps were compared.
 */
static size_t check_route(const char *base, const char *v1_path,
                          const char *auth, bool via_gateway, const char *want)
{
    char v2_path[512];
    const char *seg = strstr(v1_path, "/v1/");
    assert_non_null(seg);
    snprintf(v2_path, sizeof(v2_path), "%.*s/v2/%s", (int)(seg - v1_path),
             v1_path, seg + 4);
    const char *hdrs[] = {auth, NULL};
    struct h_resp r1, r2;
    h_http(&r1, "GET", h_fmt("%s%s", base, v1_path), hdrs, NULL, 0);
    h_http(&r2, "GET", h_fmt("%s%s", base, v2_path), hdrs, NULL, 0);
    h_assert_status(&r1, 200);
    h_assert_status(&r2, 200);
    json_t *j1 = h_resp_json(&r1), *j2 = h_resp_json(&r2);
    assert_non_null(j1);
    assert_non_null(j2);

    char got[4096] = "";
    shape(j1, got, sizeof(got));
    if (strcmp(got, want) != 0)
        fail_msg("GET %s: the v1 shape changed\n  want %s\n  got  %s", v1_path,
                 want, got);
    size_t times = 0;
    assert_same_data(j1, j2, v1_path, NULL, &times);

    const char *dep = h_resp_header(&r1, "Deprecation");
    if (via_gateway) {
        char link[600];
        snprintf(link, sizeof(link), "<%.*s>; rel=\"successor-version\"",
                 (int)strcspn(v2_path, "?"), v2_path);
        assert_non_null(dep);
        assert_string_equal(dep, h_fmt("@%lld", MOAT_API_V1_DEPRECATED_S));
        assert_non_null(h_resp_header(&r1, "Sunset"));
        assert_non_null(h_resp_header(&r1, "Link"));
        assert_string_equal(h_resp_header(&r1, "Link"), link);
    } else {
        assert_null(dep);
    }
    assert_null(h_resp_header(&r2, "Deprecation"));
    assert_null(h_resp_header(&r2, "Sunset"));
    json_decref(j1);
    json_decref(j2);
    h_resp_release(&r1);
    h_resp_release(&r2);
    return times;
}

/* ---- fixture ---- */

static const char **envs(const char **list, size_t from, size_t n)
{
    for (size_t i = 0; i < n; i++)
        list[i] = F.env[from + i];
    list[n] = NULL;
    return list;
}

static json_t *service_get(const char *url, const char *aud, const char *user,
                           const char *role)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token(aud, user, role), NULL};
    h_http(&r, "GET", url, hdrs, NULL, 0);
    json_t *j = r.status == 200 ? h_resp_json(&r) : NULL;
    h_resp_release(&r);
    return j;
}

static void make_data(void)
{
    struct h_resp r;
    const char *usr[] = {h_service_token("users", NULL, NULL), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/users", F.usr.url),
                "{\"email\": \"alice@example.com\", \"password\": "
                "\"correct horse battery\", \"display_name\": \"Alice\"}",
                usr);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.alice, sizeof(F.alice), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);

    const char *admin[] = {h_user_token(ADMIN, "admin", 3600), NULL};
    h_send_json(&r, "POST", h_fmt("%s/api/v1/products", F.gw.url),
                "{\"sku\": \"CONTRACT-1\", \"name\": \"Contract mug\", "
                "\"price\": {\"amount\": 1500, \"currency\": \"EUR\"}}",
                admin);
    h_assert_status(&r, 201);
    j = h_resp_json(&r);
    snprintf(F.product, sizeof(F.product), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    h_send_json(&r, "PUT", h_fmt("%s/api/v1/stock/CONTRACT-1", F.gw.url),
                "{\"on_hand\": 100, \"reason\": \"initial\"}", admin);
    h_assert_status(&r, 201);
    h_resp_release(&r);

    const char *alice[] = {h_user_token(F.alice, "customer", 3600),
                           "Idempotency-Key: contract-1", NULL};
    h_send_json(&r, "POST", h_fmt("%s/api/v1/orders", F.gw.url),
                h_fmt("{\"lines\": [{\"product_id\": \"%s\", \"quantity\": "
                      "2}], \"card_token\": \"tok_ok\"}",
                      F.product),
                alice);
    h_assert_status(&r, 201);
    j = h_resp_json(&r);
    snprintf(F.order, sizeof(F.order), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
}

/* A post by alice, alice following ADMIN, alice's profile (from users'
 * UserRegistered, waited for in wait_settled). */
static void make_social(void)
{
    struct h_resp r;
    const char *posts[] = {h_service_token("posts", F.alice, "customer"), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/posts", F.posts.url),
                "{\"text\": \"contract\"}", posts);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.post, sizeof(F.post), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    const char *conn[] = {h_service_token("connections", F.alice, "customer"),
                          NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/follows", F.conn.url),
                h_fmt("{\"user_id\": \"%s\"}", ADMIN), conn);
    h_assert_status(&r, 201);
    h_resp_release(&r);
}

/* Has orders seen F.order through, with the customer's name and email
 * (they come to orders from users' events: waited for too, so that the
 * shape is the settled one)? step: the step read (32 bytes). Once done,
 * the order is confirmed and F.payment is its payment. */
static bool order_settled(char *step)
{
    char url[512];
    snprintf(url, sizeof(url), "%s/v1/orders/%s", F.ord.url, F.order);
    json_t *j = service_get(url, "orders", NULL, NULL);
    snprintf(step, 32, "%s", j ? h_jstr(j, "step") : "(no answer)");
    bool done =
        j && strcmp(h_jstr(j, "step"), "done") == 0 &&
        json_is_integer(json_object_get(j, "completed_at")) &&
        json_is_string(json_object_get(json_object_get(j, "customer"), "name"));
    if (done) {
        assert_string_equal(h_jstr(j, "status"), "confirmed");
        snprintf(F.payment, sizeof(F.payment), "%s", h_jstr(j, "payment_id"));
    }
    json_decref(j);
    return done;
}

/* Are F.order's notifications (*n listed) at least 2, all delivered?
 * Then F.notification is the first. */
static bool emails_delivered(size_t *n)
{
    char url[512];
    snprintf(url, sizeof(url), "%s/v1/notifications?order_id=%s", F.notif.url,
             F.order);
    json_t *j = service_get(url, "notifications", NULL, NULL);
    json_t *list = json_object_get(j, "notifications");
    *n = json_array_size(list);
    bool delivered = true;
    for (size_t k = 0; k < *n; k++)
        delivered = delivered && json_is_integer(json_object_get(
                                     json_array_get(list, k), "delivered_at"));
    bool done = *n >= 2 && delivered;
    if (done)
        snprintf(F.notification, sizeof(F.notification), "%s",
                 h_jstr(json_array_get(list, 0), "id"));
    json_decref(j);
    return done;
}

/* Does the read model show Alice's order confirmed, paid, both emails
 * sent? status: the status read (32 bytes). */
static bool read_model_settled(char *status)
{
    char url[512];
    snprintf(url, sizeof(url), "%s/v1/customers/%s/orders", F.rm.url, F.alice);
    json_t *j = service_get(url, "readmodel", F.alice, "customer");
    json_t *o = json_array_get(json_object_get(j, "orders"), 0);
    json_t *ns = json_object_get(o, "notifications");
    snprintf(status, 32, "%s", o ? h_jstr(o, "status") : "(no order)");
    bool done =
        o && strcmp(h_jstr(o, "status"), "confirmed") == 0 &&
        json_is_object(json_object_get(o, "payment")) &&
        json_array_size(ns) == 2 &&
        json_is_integer(json_object_get(json_array_get(ns, 1), "sent_at"));
    json_decref(j);
    return done;
}

/* Does GET url (as a service to aud) answer 200 with JSON? */
static bool answers_json(const char *url, const char *aud)
{
    json_t *j = service_get(url, aud, NULL, NULL);
    json_decref(j);
    return j != NULL;
}

/* Every service has seen the order through: the saga, the emails, the
 * read model and the search index. */
static void wait_settled(void)
{
    char step[32] = "";
    H_WAIT_UNTIL(order_settled(step), H_WAIT_MS,
                 "order %s to be done with the customer's name (last step: "
                 "%s)",
                 F.order, step);

    size_t n = 0;
    H_WAIT_UNTIL(emails_delivered(&n), H_WAIT_MS,
                 "2 delivered notifications of order %s (last: %zu listed)",
                 F.order, n);
    assert_int_equal(n, 2);

    /* The read model: confirmed, paid, both emails sent. */
    char status[32] = "";
    H_WAIT_UNTIL(read_model_settled(status), H_WAIT_MS,
                 "the read model to show order %s confirmed, paid, both "
                 "emails sent (last status: %s)",
                 F.order, status);

    const struct {
        const char *url, *aud;
    } appear[] = {
        {h_fmt("%s/v1/search/products/%s", F.srch.url, F.product), "search"},
        {h_fmt("%s/v1/profiles/%s", F.prof.url, F.alice), "profiles"},
    };
    for (size_t k = 0; k < MOAT_ARRAY_LEN(appear); k++) {
        char url[512];
        snprintf(url, sizeof(url), "%s", appear[k].url);
        H_WAIT_UNTIL(answers_json(url, appear[k].aud), H_WAIT_MS,
                     "GET %s to answer 200", url);
    }
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("contract");
    F.ord_port = h_free_port();
    char ord_url[64];
    snprintf(ord_url, sizeof(ord_url), "http://127.0.0.1:%u",
             (unsigned)F.ord_port);

    if (h_service_start(&F.usr, "users", F.tmp, h_fmt("%s/users-data", F.tmp),
                        NULL) != 0 ||
        h_service_start(&F.cat, "catalog", F.tmp,
                        h_fmt("%s/catalog-data", F.tmp), NULL) != 0)
        return -1;
    snprintf(F.env[0], 512, "MOAT_INVENTORY_ORDERS_URL=%s", ord_url);
    if (h_service_start(&F.inv, "inventory", F.tmp,
                        h_fmt("%s/inventory-data", F.tmp),
                        envs(F.inv_env, 0, 1)) != 0)
        return -1;
    snprintf(F.env[1], 512, "MOAT_PAYPROVIDER_API_KEYS=moat-shop:%s",
             MERCHANT_KEY);
    snprintf(F.env[2], 512, "MOAT_PAYPROVIDER_CONTROL_KEY=%s", CONTROL_KEY);
    snprintf(F.env[3], 512, "MOAT_PAYPROVIDER_LATENCY_MS=1");
    if (h_service_start(&F.pp, "payprovider", F.tmp,
                        h_fmt("%s/payprovider-data", F.tmp),
                        envs(F.pp_env, 1, 3)) != 0)
        return -1;
    snprintf(F.env[4], 512, "MOAT_PAYMENTS_PROVIDER_URL=%s", F.pp.url);
    snprintf(F.env[5], 512, "MOAT_PAYMENTS_PROVIDER_KEY=%s", MERCHANT_KEY);
    snprintf(F.env[6], 512, "MOAT_PAYMENTS_ORDERS_URL=%s", ord_url);
    if (h_service_start(&F.pay, "payments", F.tmp,
                        h_fmt("%s/payments-data", F.tmp),
                        envs(F.pay_env, 4, 3)) != 0)
        return -1;
    snprintf(F.env[7], 512, "MOAT_LISTEN=127.0.0.1:%u", (unsigned)F.ord_port);
    snprintf(F.env[8], 512, "MOAT_ORDERS_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[9], 512, "MOAT_ORDERS_INVENTORY_URL=%s", F.inv.url);
    snprintf(F.env[10], 512, "MOAT_ORDERS_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[11], 512, "MOAT_ORDERS_USERS_URL=%s", F.usr.url);
    if (h_service_start(&F.ord, "orders", F.tmp, h_fmt("%s/orders-data", F.tmp),
                        envs(F.ord_env, 7, 5)) != 0)
        return -1;
    snprintf(F.env[12], 512, "MOAT_NOTIFICATIONS_ORDERS_URL=%s", F.ord.url);
    if (h_service_start(&F.notif, "notifications", F.tmp,
                        h_fmt("%s/notifications-data", F.tmp),
                        envs(F.notif_env, 12, 1)) != 0)
        return -1;
    snprintf(F.env[13], 512, "MOAT_READMODEL_ORDERS_URL=%s", F.ord.url);
    snprintf(F.env[14], 512, "MOAT_READMODEL_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[15], 512, "MOAT_READMODEL_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[16], 512, "MOAT_READMODEL_NOTIFICATIONS_URL=%s",
             F.notif.url);
    if (h_service_start(&F.rm, "readmodel", F.tmp,
                        h_fmt("%s/readmodel-data", F.tmp),
                        envs(F.rm_env, 13, 4)) != 0)
        return -1;
    snprintf(F.env[17], 512, "MOAT_SEARCH_CATALOG_URL=%s", F.cat.url);
    if (h_service_start(&F.srch, "search", F.tmp,
                        h_fmt("%s/search-data", F.tmp),
                        envs(F.srch_env, 17, 1)) != 0)
        return -1;
    /* moat.json's routes: v1 only, the gateway derives v2. */
    snprintf(F.env[18], sizeof(F.env[18]),
             "MOAT_GATEWAY_ROUTES=/api/v1/products=catalog@%s/v1/products,"
             "/api/v1/users=users@%s/v1/users,"
             "/api/v1/stock=inventory@%s/v1/stock,"
             "/api/v1/search=search@%s/v1/search,"
             "/api/v1/orders=orders@%s/v1/orders,"
             "/api/v1/notifications=notifications@%s/v1/notifications,"
             "/api/v1/customers=readmodel@%s/v1/customers",
             F.cat.url, F.usr.url, F.inv.url, F.srch.url, F.ord.url,
             F.notif.url, F.rm.url);
    snprintf(F.env[19], 512, "MOAT_GATEWAY_BACKENDS=payments@%s", F.pay.url);
    snprintf(F.env[20], 512,
             "MOAT_GATEWAY_PUBLIC=GET /api/v1/products,GET /api/v1/search");
    snprintf(F.env[21], 512, "MOAT_GATEWAY_RATE=0");
    if (h_service_start(&F.gw, "gateway", F.tmp, NULL, envs(F.gw_env, 18, 4)) !=
        0)
        return -1;

    snprintf(F.env[23], 512, "MOAT_REPORTING_ORDERS_URL=%s", F.ord.url);
    snprintf(F.env[24], 512, "MOAT_REPORTING_PAYMENTS_URL=%s", F.pay.url);
    snprintf(F.env[25], 512, "MOAT_REPORTING_CATALOG_URL=%s", F.cat.url);
    snprintf(F.env[26], 512, "MOAT_REPORTING_INVENTORY_URL=%s", F.inv.url);
    snprintf(F.env[27], 512,
             "MOAT_REPORTING_PSEUDONYM_KEY=contract-test-pseudonym-key-0123");
    if (h_service_start(&F.rep, "reporting", F.tmp,
                        h_fmt("%s/reporting-data", F.tmp),
                        envs(F.rep_env, 23, 5)) != 0)
        return -1;
    if (h_service_start(&F.posts, "posts", F.tmp, h_fmt("%s/posts-data", F.tmp),
                        NULL) != 0 ||
        h_service_start(&F.conn, "connections", F.tmp,
                        h_fmt("%s/connections-data", F.tmp), NULL) != 0)
        return -1;
    snprintf(F.env[22], 512, "MOAT_PROFILES_USERS_URL=%s", F.usr.url);
    if (h_service_start(&F.prof, "profiles", F.tmp,
                        h_fmt("%s/profiles-data", F.tmp),
                        envs(F.prof_env, 22, 1)) != 0)
        return -1;

    make_data();
    make_social();
    wait_settled();
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    struct h_service *all[] = {&F.rep,  &F.prof, &F.conn,  &F.posts, &F.gw,
                               &F.srch, &F.rm,   &F.notif, &F.ord,   &F.pay,
                               &F.pp,   &F.inv,  &F.cat,   &F.usr};
    int bad = 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++) {
        if (h_service_stop(all[i]) != 0) {
            print_error("%s did not exit 0 on SIGTERM\n", all[i]->name);
            bad++;
        }
        h_service_release(all[i]);
    }
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    return bad ? -1 : 0;
}

/* ---- the contract, route by route ---- */

#define PRODUCT                                                                \
    "{attributes:{},created_at:i,id:s,name:s,price:{amount:i,currency:s},"     \
    "sku:s,updated_at:i,version:i}"

static void test_catalog(void **state)
{
    MOAT_UNUSED(state);
    const char *anon = NULL; /* public routes */
    size_t t = check_route(F.gw.url, h_fmt("/api/v1/products/%s", F.product),
                           anon, true, PRODUCT);
    assert_int_equal(t, 2);
    t = check_route(F.gw.url, "/api/v1/products", anon, true,
                    "{items:[" PRODUCT "],next_cursor:n}");
    assert_int_equal(t, 2);
}

static void test_users(void **state)
{
    MOAT_UNUSED(state);
    const char *admin = h_user_token(ADMIN, "admin", 3600);
    const char *user = "{created_at:i,display_name:s,email:s,id:s,role:s,"
                       "updated_at:i,version:i}";
    assert_int_equal(check_route(F.gw.url, h_fmt("/api/v1/users/%s", F.alice),
                                 admin, true, user),
                     2);
    assert_int_equal(check_route(F.gw.url, "/api/v1/users/me",
                                 h_user_token(F.alice, "customer", 3600), true,
                                 user),
                     2);
    assert_true(check_route(F.gw.url, "/api/v1/users", admin, true,
                            h_fmt("{items:[%s],next_cursor:n}", user)) >= 2);
}

static void test_inventory(void **state)
{
    MOAT_UNUSED(state);
    const char *admin = h_user_token(ADMIN, "admin", 3600);
    const char *stock = "{available:i,created_at:i,on_hand:i,reserved:i,"
                        "sku:s,sold:i,updated_at:i,version:i}";
    assert_int_equal(
        check_route(F.gw.url, "/api/v1/stock/CONTRACT-1", admin, true, stock),
        2);
    assert_int_equal(check_route(F.gw.url, "/api/v1/stock", admin, true,
                                 h_fmt("{items:[%s],next_cursor:n}", stock)),
                     2);
    /* Internal routes, straight at the service. */
    const char *svc = h_service_token("inventory", ADMIN, "admin");
#define RESERVATION                                                            \
    "{created_at:i,customer_id:s,lines:[{quantity:i,sku:s}],order_id:s,"       \
    "returned:b,state:s,updated_at:i,version:i}"
    assert_int_equal(check_route(F.inv.url,
                                 h_fmt("/v1/reservations/%s", F.order), svc,
                                 false, RESERVATION),
                     2);
    assert_int_equal(check_route(F.inv.url, "/v1/reservations", svc, false,
                                 "{next_after:n,reservations:[" RESERVATION
                                 "]}"),
                     2);
    assert_true(check_route(F.inv.url, "/v1/adjustments", svc, false,
                            "{adjustments:[{at:i,delta:i,id:i,kind:s,"
                            "on_hand_after:i,on_hand_before:i,reason:s,sku:s,"
                            "user:s}],next_after:n}") >= 1);
}

#define ORDER                                                                  \
    "{cancel_reason:n,completed_at:i,created_at:i,currency:s,customer:{"       \
    "email:s,name:s},customer_id:s,deadline_at:n,id:s,lines:[{line_total:i,"   \
    "name:s,product_id:s,quantity:i,sku:s,unit_price:i}],object:s,"            \
    "payment_id:s,status:s,step:s,total:i,trace_id:s,updated_at:i,version:i}"

static void test_orders(void **state)
{
    MOAT_UNUSED(state);
    const char *alice = h_user_token(F.alice, "customer", 3600);
    assert_int_equal(check_route(F.gw.url, h_fmt("/api/v1/orders/%s", F.order),
                                 alice, true, ORDER),
                     3);
    assert_int_equal(check_route(F.gw.url, "/api/v1/orders", alice, true,
                                 "{next_after:n,orders:[" ORDER "]}"),
                     3);
}

#define USER                                                                   \
    "{created_at:i,display_name:s,email:s,id:s,role:s,updated_at:i,version:i}"
#define PAYMENT                                                                \
    "{amount:i,attempts:i,created_at:i,created_by:s,currency:s,id:s,object:s," \
    "order_id:s,status:s,updated_at:i,version:i}"
#define NOTIFICATION_ROW                                                       \
    "{created_at:i,customer_id:s,delivered_at:i,id:s,kind:s,order_id:s,"       \
    "status:s,subject:s,trace_id:s}"

static void test_order_details(void **state)
{
    MOAT_UNUSED(state);
    /* Built by the gateway from the services' v1, rendered as v2 there:
     * the order's 3 timestamps, the customer's 2, two emails' 2 each, the
     * payment's 2 and the product's 2. */
    assert_int_equal(
        check_route(F.gw.url, h_fmt("/api/v1/orders/%s/details", F.order),
                    h_user_token(F.alice, "customer", 3600), true,
                    h_fmt("{customer:" USER ",notifications:[" NOTIFICATION_ROW
                          "],order:" ORDER ",partial:[],payment:" PAYMENT
                          ",products:{%s:" PRODUCT "}}",
                          F.product)),
        13);
}

static void test_payments(void **state)
{
    MOAT_UNUSED(state);
    /* Internal (not routed by the gateway): straight at the service. */
    const char *svc = h_service_token("payments", ADMIN, "admin");
    assert_int_equal(check_route(F.pay.url, h_fmt("/v1/payments/%s", F.payment),
                                 svc, false, PAYMENT),
                     2);
    assert_int_equal(check_route(F.pay.url,
                                 h_fmt("/v1/payments?order_id=%s", F.order),
                                 svc, false, "{items:[" PAYMENT "]}"),
                     2);
}

static void test_notifications(void **state)
{
    MOAT_UNUSED(state);
    const char *alice = h_user_token(F.alice, "customer", 3600);
    assert_int_equal(
        check_route(F.gw.url, h_fmt("/api/v1/notifications/%s", F.notification),
                    alice, true,
                    "{body:s,created_at:i,customer_id:s,"
                    "delivered_at:i,id:s,kind:s,order_id:s,"
                    "status:s,subject:s,trace_id:s}"),
        2);
    assert_int_equal(
        check_route(
            F.gw.url, h_fmt("/api/v1/notifications?order_id=%s", F.order),
            alice, true, "{next_after:n,notifications:[" NOTIFICATION_ROW "]}"),
        4);
}

static void test_readmodel(void **state)
{
    MOAT_UNUSED(state);
    assert_int_equal(check_route(F.gw.url,
                                 h_fmt("/api/v1/customers/%s/orders", F.alice),
                                 h_user_token(F.alice, "customer", 3600), true,
                                 "{next_after:n,orders:[{cancel_reason:n,"
                                 "currency:s,lines:[{current_currency:s,"
                                 "current_name:s,current_price:i,name:s,"
                                 "product_id:s,quantity:i,sku:s,"
                                 "unit_price_paid:i}],notifications:[{kind:s,"
                                 "sent_at:i,status:s}],order_id:s,payment:{"
                                 "payment_id:s,status:s},placed_at:i,status:s,"
                                 "total:i}]}"),
                     3);
}

static void test_search(void **state)
{
    MOAT_UNUSED(state);
    const char *anon = NULL; /* public routes */
    /* No timestamps in the results; the document's "indexed" times are
     * RFC 3339 strings already in v1 and stay as they are. */
    assert_int_equal(check_route(F.gw.url, "/api/v1/search?q=contract", anon,
                                 true,
                                 "{items:[{id:s,name:s,price:{amount:i,"
                                 "currency:s},score:r,sku:s}],next_cursor:n}"),
                     0);
    assert_int_equal(
        check_route(F.srch.url, h_fmt("/v1/search/products/%s", F.product),
                    h_service_token("search", NULL, NULL), false,
                    "{attributes:{},created_at:i,id:s,indexed:{applied_at:s,"
                    "event_time:s,seq:i,source:s,version:i},name:s,price:{"
                    "amount:i,currency:s},sku:s,updated_at:i,version:i}"),
        2);
}

static void test_posts(void **state)
{
    MOAT_UNUSED(state);
    const char *svc = h_service_token("posts", F.alice, "customer");
#define POST                                                                   \
    "{author_id:s,created_at:i,id:s,media_urls:[],mentions:[],object:s,"       \
    "text:s,urls:[]}"
    assert_int_equal(check_route(F.posts.url, h_fmt("/v1/posts/%s", F.post),
                                 svc, false, POST),
                     1);
    assert_int_equal(check_route(F.posts.url,
                                 h_fmt("/v1/users/%s/posts", F.alice), svc,
                                 false, "{items:[" POST "],next_cursor:n}"),
                     1);
}

static void test_connections(void **state)
{
    MOAT_UNUSED(state);
    const char *svc = h_service_token("connections", F.alice, "customer");
    /* "since" is an RFC 3339 string in v1 already: nothing to rewrite. */
    const char *page = "{items:[{since:s,user_id:s}],next_cursor:n,user_id:s}";
    assert_int_equal(check_route(F.conn.url,
                                 h_fmt("/v1/users/%s/following", F.alice), svc,
                                 false, page),
                     0);
    assert_int_equal(check_route(F.conn.url,
                                 h_fmt("/v1/users/%s/followers", ADMIN), svc,
                                 false, page),
                     0);
    assert_int_equal(
        check_route(F.conn.url, h_fmt("/v1/users/%s/counts", F.alice), svc,
                    false, "{connections:i,followers:i,following:i,user_id:s}"),
        0);
}

static void test_profiles(void **state)
{
    MOAT_UNUSED(state);
    const char *svc = h_service_token("profiles", F.alice, "customer");
#define PROFILE                                                                \
    "{avatar_url:n,bio:n,created_at:i,display_name:n,handle:n,location:n,"     \
    "object:s,updated_at:i,user_id:s,version:i}"
    assert_int_equal(check_route(F.prof.url, h_fmt("/v1/profiles/%s", F.alice),
                                 svc, false, PROFILE),
                     2);
    assert_int_equal(
        check_route(F.prof.url, "/v1/profiles/me", svc, false, PROFILE), 2);
}

/* Does the top-products report at url count a sale (*count: its count)? */
static bool sale_reported(const char *url, json_int_t *count)
{
    json_t *j = service_get(url, "reporting", ADMIN, "admin");
    *count = json_integer_value(json_object_get(j, "count"));
    json_decref(j);
    return *count >= 1;
}

static void test_reporting(void **state)
{
    MOAT_UNUSED(state);
    const char *svc = h_service_token("reporting", ADMIN, "admin");
    assert_int_equal(
        check_route(F.rep.url, "/v1/reports", svc, false, "{reports:[s]}"), 0);
    /* Once the warehouse has the sale (its ETL follows the feeds). */
    char url[256];
    snprintf(url, sizeof(url), "%s/v1/reports/top-products", F.rep.url);
    json_int_t count = 0;
    H_WAIT_UNTIL(sale_reported(url, &count), H_WAIT_MS,
                 "the warehouse to report the sale (last count: %lld)",
                 (long long)count);
    assert_int_equal(count, 1);
    /* Calendar dates and amounts: nothing to rewrite. */
    assert_int_equal(
        check_route(F.rep.url, "/v1/reports/top-products", svc, false,
                    "{columns:[s],count:i,from:n,report:s,rows:[{currency:s,"
                    "name:s,orders:i,product_id:s,quantity:i,revenue:i,sku:s}],"
                    "to:n,truncated:b}"),
        0);
}

/*
 * Request bodies: a product read in v2 and sent back whole in v2 is
 * accepted (its read-only created_at and updated_at, RFC 3339 strings,
 * reach the handler as the epoch seconds it compares with); the same body
 * in v1 is refused, as v1 always refused a string there.
 */
static void test_v2_request_body(void **state)
{
    MOAT_UNUSED(state);
    const char *admin = h_user_token(ADMIN, "admin", 3600);
    const char *hdrs[] = {admin, NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/api/v2/products/%s", F.gw.url, F.product), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    json_t *doc = h_resp_json(&r);
    char etag[128];
    snprintf(etag, sizeof(etag), "If-Match: %s", h_resp_header(&r, "ETag"));
    h_resp_release(&r);
    assert_true(json_is_string(json_object_get(doc, "created_at")));
    json_object_set_new(doc, "name", json_string("Contract mug v2"));
    char *body = json_dumps(doc, JSON_COMPACT);

    const char *put[] = {admin, etag, NULL};
    h_send_json(&r, "PUT", h_fmt("%s/api/v1/products/%s", F.gw.url, F.product),
                body, put);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/created_at");
    h_resp_release(&r);

    h_send_json(&r, "PUT", h_fmt("%s/api/v2/products/%s", F.gw.url, F.product),
                body, put);
    h_assert_status(&r, 200);
    json_t *after = h_resp_json(&r);
    assert_string_equal(h_jstr(after, "name"), "Contract mug v2");
    assert_string_equal(h_jstr(after, "created_at"), h_jstr(doc, "created_at"));
    assert_true(json_is_string(json_object_get(after, "updated_at")));
    assert_null(h_resp_header(&r, "Deprecation"));
    json_decref(after);
    h_resp_release(&r);
    free(body);
    json_decref(doc);
}

/* What is not v2: the event feed and the admin routes. */
static void test_internal_routes_stay_v1(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", ADMIN, "admin"), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/events?after=0&limit=1", F.ord.url), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    assert_null(h_resp_header(&r, "Deprecation"));
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/v2/events?after=0&limit=1", F.ord.url), hdrs,
           NULL, 0);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/v2/admin/sagas", F.ord.url), hdrs, NULL, 0);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalog),
        cmocka_unit_test(test_users),
        cmocka_unit_test(test_inventory),
        cmocka_unit_test(test_orders),
        cmocka_unit_test(test_order_details),
        cmocka_unit_test(test_payments),
        cmocka_unit_test(test_notifications),
        cmocka_unit_test(test_readmodel),
        cmocka_unit_test(test_search),
        cmocka_unit_test(test_posts),
        cmocka_unit_test(test_connections),
        cmocka_unit_test(test_profiles),
        cmocka_unit_test(test_reporting),
        cmocka_unit_test(test_internal_routes_stay_v1),
        cmocka_unit_test(test_v2_request_body),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
