/*
 * test_compose.c - the gateway's API composition (GET
 * /api/v1/orders/{id}/details, services/gateway/compose.c) against the real
 * services: moat-users, moat-catalog, moat-inventory, moat-payprovider,
 * moat-payments, moat-orders, moat-notifications and moat-gateway as
 * processes. One order is placed through the gateway and carried to
 * completion by the saga; then the details are read with everything up,
 * with each backend killed (refused at once) or stopped (SIGSTOP: it
 * accepts and never answers) in turn, as another customer, with orders
 * down, and until a backend's circuit breaker opens and closes again.
 */
#include "moat/common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define BOB         "usr_01J00000000000000000000BOB"
#define TIMEOUT_MS  300  /* MOAT_GATEWAY_COMPOSE_TIMEOUT_MS */
#define COOLDOWN_MS 1000 /* MOAT_GATEWAY_BREAKER_COOLDOWN_MS */
#define FAILURES    5    /* MOAT_GATEWAY_BREAKER_FAILURES */
#define MARGIN_MS   250  /* what a composition may take beyond its timeout */

static struct {
    char *tmp;
    struct h_deployment dep; /* moat.json: the real wiring */
    struct h_service *usr, *cat, *inv, *pp, *pay, *ord, *notif, *gw;
    char env[8][512];
    char alice[64];
    char product[64];
    char order[64];
    unsigned timeout_ms; /* scaled */
} F;

static json_t *service_get(const char *url, const char *aud)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token(aud, NULL, NULL), NULL};
    h_http(&r, "GET", url, hdrs, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* GET the details as user (role); *out released by the caller. */
static void details_as(struct h_resp *out, const char *order, const char *user,
                       const char *role)
{
    const char *hdrs[] = {h_user_token(user, role, 3600), NULL};
    h_http(out, "GET", h_fmt("%s/api/v1/orders/%s/details", F.gw->url, order),
           hdrs, NULL, 0);
}

/* The details as alice: 200, the JSON, and how long it took. */
static json_t *details(double *elapsed_ms)
{
    struct h_resp r;
    details_as(&r, F.order, F.alice, "customer");
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    if (elapsed_ms)
        *elapsed_ms = r.elapsed_ms;
    h_resp_release(&r);
    return j;
}

/* "partial" joined by ','. */
static const char *partial(json_t *j)
{
    static char out[128];
    json_t *list = json_object_get(j, "partial");
    size_t i;
    json_t *v;
    assert_true(json_is_array(list));
    out[0] = '\0';
    json_array_foreach(list, i, v)
    {
        size_t len = strlen(out);
        snprintf(out + len, sizeof(out) - len, "%s%s", len ? "," : "",
                 json_string_value(v));
    }
    return out;
}

static double circuit(const char *backend)
{
    return h_metric(F.gw->url,
                    h_fmt("gateway_circuit_state{backend=\"%s\"}", backend));
}

static double failures(const char *backend, const char *reason)
{
    return h_metric(
        F.gw->url,
        h_fmt("gateway_compose_backend_failures_total{backend=\"%s\","
              "reason=\"%s\"}",
              backend, reason));
}

/* Everything answers again: a full composition (which also resets every
 * breaker's count of consecutive failures). */
static void assert_full(void)
{
    json_t *j = NULL;
    /* A restarted service may need a moment for its pooled connections. */
    H_WAIT_UNTIL((json_decref(j), j = details(NULL), !*partial(j)), H_WAIT_MS,
                 "a full composition (partial: %s)", partial(j));
    json_decref(j);
}

static void assert_within_timeout(double elapsed_ms)
{
    /* The order fetch plus one composition timeout, plus the margin. */
    assert_true(elapsed_ms < F.timeout_ms + h_scaled_ms(MARGIN_MS));
}

/*
 * Stop or continue one service. Never kill(0, ...): that would stop the
 * whole process group, this test included.
 */
static void signal_service(struct h_service *svc, int sig)
{
    assert_true(svc->pid > 0);
    assert_int_equal(kill(svc->pid, sig), 0);
}

/* ---- fixture ---- */

static void make_customer(void)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("users", NULL, NULL), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/users", F.usr->url),
                "{\"email\": \"alice@example.com\", \"password\": "
                "\"correct horse battery\", \"display_name\": \"Alice\"}",
                hdrs);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.alice, sizeof(F.alice), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
}

static void make_product(void)
{
    struct h_resp r;
    const char *admin[] = {h_service_token("catalog", "usr_admin", "admin"),
                           NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat->url),
                "{\"sku\": \"COMP-1\", \"name\": \"Compose mug\", \"price\": "
                "{\"amount\": 1500, \"currency\": \"EUR\"}}",
                admin);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.product, sizeof(F.product), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    const char *inv[] = {h_service_token("inventory", "usr_admin", "admin"),
                         NULL};
    h_send_json(&r, "PUT", h_fmt("%s/v1/stock/COMP-1", F.inv->url),
                "{\"on_hand\": 100, \"reason\": \"initial\"}", inv);
    h_assert_status(&r, 201);
    h_resp_release(&r);
}

/* Through the gateway as alice, then wait for the saga to finish. */
static void place_order(void)
{
    struct h_resp r;
    const char *hdrs[] = {h_user_token(F.alice, "customer", 3600),
                          "Idempotency-Key: compose-1", NULL};
    h_send_json(&r, "POST", h_fmt("%s/api/v1/orders", F.gw->url),
                h_fmt("{\"lines\": [{\"product_id\": \"%s\", \"quantity\": "
                      "2}], \"card_token\": \"tok_ok\"}",
                      F.product),
                hdrs);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.order, sizeof(F.order), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);

    const char *url = h_fmt("%s/v1/orders/%s", F.ord->url, F.order);
    char ourl[256];
    snprintf(ourl, sizeof(ourl), "%s", url);
    j = NULL;
    H_WAIT_UNTIL((json_decref(j), j = service_get(ourl, "orders"),
                  strcmp(h_jstr(j, "step"), "done") == 0),
                 H_WAIT_MS, "order %s to finish", F.order);
    assert_string_equal(h_jstr(j, "status"), "confirmed");
    json_decref(j);
    /* Both emails (placed, confirmed) recorded. */
    char nurl[256];
    snprintf(nurl, sizeof(nurl), "%s/v1/notifications?order_id=%s",
             F.notif->url, F.order);
    size_t n = 0;
    H_WAIT_UNTIL((j = service_get(nurl, "notifications"),
                  n = json_array_size(json_object_get(j, "notifications")),
                  json_decref(j), n >= 2),
                 H_WAIT_MS, "2 notifications of order %s", F.order);
    assert_int_equal(n, 2);
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("compose");
    F.timeout_ms = h_scaled_ms(TIMEOUT_MS);
    /* Payments is internal: not routed, only a composition backend
     * (MOAT_GATEWAY_BACKENDS in moat.json). */
    snprintf(F.env[0], 512, "gateway:MOAT_GATEWAY_COMPOSE_TIMEOUT_MS=%u",
             F.timeout_ms);
    snprintf(F.env[1], 512, "gateway:MOAT_GATEWAY_BREAKER_FAILURES=%d",
             FAILURES);
    snprintf(F.env[2], 512, "gateway:MOAT_GATEWAY_BREAKER_COOLDOWN_MS=%u",
             h_scaled_ms(COOLDOWN_MS));
    snprintf(F.env[3], 512, "gateway:MOAT_GATEWAY_RATE=0");
    snprintf(F.env[4], 512, "payprovider:MOAT_PAYPROVIDER_LATENCY_MS=1");
    const char *env[] = {F.env[0], F.env[1], F.env[2],
                         F.env[3], F.env[4], NULL};
    static const char *const only[] = {
        "users",  "catalog",       "inventory", "payments", "payprovider",
        "orders", "notifications", "gateway",   NULL};
    if (h_deployment_start(&F.dep, MOAT_SOURCE_DIR "/moat.json", F.tmp, only,
                           env) != 0)
        return -1;
    F.usr = h_deployment_service(&F.dep, "users");
    F.cat = h_deployment_service(&F.dep, "catalog");
    F.inv = h_deployment_service(&F.dep, "inventory");
    F.pp = h_deployment_service(&F.dep, "payprovider");
    F.pay = h_deployment_service(&F.dep, "payments");
    F.ord = h_deployment_service(&F.dep, "orders");
    F.notif = h_deployment_service(&F.dep, "notifications");
    F.gw = h_deployment_service(&F.dep, "gateway");

    make_customer();
    make_product();
    place_order();
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int bad = h_deployment_stop(&F.dep);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    return bad ? -1 : 0;
}

/* ---- scenarios ---- */

static void test_full_answer(void **state)
{
    MOAT_UNUSED(state);
    double ms = 0;
    json_t *j = details(&ms);
    assert_string_equal(partial(j), "");
    json_t *order = json_object_get(j, "order");
    assert_string_equal(h_jstr(order, "id"), F.order);
    assert_string_equal(h_jstr(order, "status"), "confirmed");
    json_t *customer = json_object_get(j, "customer");
    assert_string_equal(h_jstr(customer, "id"), F.alice);
    assert_string_equal(h_jstr(customer, "display_name"), "Alice");
    json_t *product =
        json_object_get(json_object_get(j, "products"), F.product);
    assert_string_equal(h_jstr(product, "name"), "Compose mug");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(product, "price"), "amount")),
                     1500);
    json_t *payment = json_object_get(j, "payment");
    assert_string_equal(h_jstr(payment, "order_id"), F.order);
    assert_string_equal(h_jstr(payment, "status"), "captured");
    assert_int_equal(json_array_size(json_object_get(j, "notifications")), 2);
    json_decref(j);
    assert_within_timeout(ms);
    assert_true(
        h_metric(F.gw->url,
                 "gateway_compose_requests_total{result=\"complete\"}") >= 1);
    for (int i = 0; i < 5; i++) {
        static const char *const b[] = {"orders", "users", "catalog",
                                        "payments", "notifications"};
        assert_true(circuit(b[i]) == 0);
    }
}

static void test_admin_sees_any(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    details_as(&r, F.order, "usr_admin", "admin");
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_string_equal(partial(j), "");
    assert_string_equal(h_jstr(json_object_get(j, "customer"), "id"), F.alice);
    json_decref(j);
    h_resp_release(&r);
}

static void test_other_customer_404(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    details_as(&r, F.order, BOB, "customer");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    details_as(&r, "ord_does_not_exist", F.alice, "customer");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    /* No token: 401 like every non-public gateway route. */
    const char *none[] = {"Authorization:", NULL};
    h_http(&r, "GET", h_fmt("%s/api/v1/orders/%s/details", F.gw->url, F.order),
           none, NULL, 0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    assert_true(
        h_metric(F.gw->url,
                 "gateway_compose_requests_total{result=\"not_found\"}") >= 2);
}

/* One backend killed (refused at once): exactly it is partial. */
static void backend_killed(struct h_service *svc, const char *name,
                           const char *null_member)
{
    h_service_kill(svc);
    double ms = 0;
    json_t *j = details(&ms);
    assert_string_equal(partial(j), name);
    if (null_member)
        assert_true(json_is_null(json_object_get(j, null_member)));
    assert_string_equal(h_jstr(json_object_get(j, "order"), "id"), F.order);
    json_decref(j);
    assert_within_timeout(ms);
    assert_true(failures(name, "connect") >= 1);
    assert_int_equal(h_deployment_restart(&F.dep, svc), 0);
    assert_full();
}

/* One backend stopped (accepts, never answers): partial after the
 * timeout, not later. */
static void backend_stopped(struct h_service *svc, const char *name,
                            const char *null_member)
{
    signal_service(svc, SIGSTOP);
    double ms = 0;
    json_t *j = details(&ms);
    signal_service(svc, SIGCONT);
    assert_string_equal(partial(j), name);
    if (null_member)
        assert_true(json_is_null(json_object_get(j, null_member)));
    json_decref(j);
    assert_true(ms >= F.timeout_ms * 0.9);
    assert_within_timeout(ms);
    assert_true(failures(name, "timeout") >= 1);
    assert_full();
}

static void test_users_down(void **state)
{
    MOAT_UNUSED(state);
    backend_killed(F.usr, "users", "customer");
}

static void test_catalog_down(void **state)
{
    MOAT_UNUSED(state);
    backend_killed(F.cat, "catalog", NULL);
}

static void test_payments_down(void **state)
{
    MOAT_UNUSED(state);
    backend_killed(F.pay, "payments", "payment");
}

static void test_notifications_down(void **state)
{
    MOAT_UNUSED(state);
    backend_killed(F.notif, "notifications", "notifications");
}

static void test_users_slow(void **state)
{
    MOAT_UNUSED(state);
    backend_stopped(F.usr, "users", "customer");
}

static void test_catalog_slow(void **state)
{
    MOAT_UNUSED(state);
    signal_service(F.cat, SIGSTOP);
    double ms = 0;
    json_t *j = details(&ms);
    signal_service(F.cat, SIGCONT);
    assert_string_equal(partial(j), "catalog");
    /* Products catalog did not answer for are left out. */
    assert_int_equal(json_object_size(json_object_get(j, "products")), 0);
    json_decref(j);
    assert_within_timeout(ms);
    assert_full();
}

static void test_payments_slow(void **state)
{
    MOAT_UNUSED(state);
    backend_stopped(F.pay, "payments", "payment");
}

static void test_notifications_slow(void **state)
{
    MOAT_UNUSED(state);
    backend_stopped(F.notif, "notifications", "notifications");
}

/* Without the order there is nothing to compose: 503 + Retry-After. */
static void test_orders_down(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    signal_service(F.ord, SIGSTOP);
    details_as(&r, F.order, F.alice, "customer");
    signal_service(F.ord, SIGCONT);
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    assert_true(r.elapsed_ms < F.timeout_ms + h_scaled_ms(MARGIN_MS));
    h_resp_release(&r);

    h_service_kill(F.ord);
    details_as(&r, F.order, F.alice, "customer");
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    assert_int_equal(h_deployment_restart(&F.dep, F.ord), 0);
    assert_full();
    assert_true(
        h_metric(F.gw->url,
                 "gateway_compose_requests_total{result=\"unavailable\"}") >=
        2);
}

/* FAILURES consecutive failures open the circuit: calls are skipped at
 * once; after the cool-down one probe closes it again. */
static void test_breaker_opens_and_closes(void **state)
{
    MOAT_UNUSED(state);
    double open0 = failures("notifications", "circuit_open");
    h_service_kill(F.notif);
    for (int i = 0; i < FAILURES; i++) {
        json_t *j = details(NULL);
        assert_string_equal(partial(j), "notifications");
        json_decref(j);
        assert_true(circuit("notifications") == (i + 1 < FAILURES ? 0 : 1));
    }
    assert_true(circuit("notifications") == 1);
    /* Open: skipped without a call. */
    double ms = 0;
    json_t *j = details(&ms);
    assert_string_equal(partial(j), "notifications");
    json_decref(j);
    assert_true(failures("notifications", "circuit_open") == open0 + 1);
    assert_true(circuit("users") == 0);

    /* Back, but the circuit stays open until the cool-down. */
    assert_int_equal(h_deployment_restart(&F.dep, F.notif), 0);
    j = details(NULL);
    assert_string_equal(partial(j), "notifications");
    json_decref(j);
    /* Time is the condition: the breaker's cool-down must pass. */
    h_sleep_ms(h_scaled_ms(COOLDOWN_MS) + 100);
    assert_true(circuit("notifications") == 2); /* a probe may pass */
    j = details(NULL);
    assert_string_equal(partial(j), "");
    assert_int_equal(json_array_size(json_object_get(j, "notifications")), 2);
    json_decref(j);
    assert_true(circuit("notifications") == 0);

    /* A failed probe opens it again at once. */
    h_service_kill(F.notif);
    for (int i = 0; i < FAILURES; i++)
        json_decref(details(NULL));
    assert_true(circuit("notifications") == 1);
    /* Time is the condition: the breaker's cool-down must pass. */
    h_sleep_ms(h_scaled_ms(COOLDOWN_MS) + 100);
    j = details(NULL); /* the probe, refused */
    assert_string_equal(partial(j), "notifications");
    json_decref(j);
    assert_true(circuit("notifications") == 1);
    assert_int_equal(h_deployment_restart(&F.dep, F.notif), 0);
    /* Time is the condition: the breaker's cool-down must pass. */
    h_sleep_ms(h_scaled_ms(COOLDOWN_MS) + 100);
    assert_full();
    assert_true(circuit("notifications") == 0);
}

/* The orders breaker: open, the details are a 503 at once. */
static void test_orders_breaker(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    h_service_kill(F.ord);
    for (int i = 0; i < FAILURES; i++) {
        details_as(&r, F.order, F.alice, "customer");
        h_assert_problem(&r, 503);
        h_resp_release(&r);
    }
    assert_true(circuit("orders") == 1);
    double before = failures("orders", "circuit_open");
    details_as(&r, F.order, F.alice, "customer");
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    assert_true(failures("orders", "circuit_open") == before + 1);
    assert_int_equal(h_deployment_restart(&F.dep, F.ord), 0);
    /* Time is the condition: the breaker's cool-down must pass. */
    h_sleep_ms(h_scaled_ms(COOLDOWN_MS) + 100);
    assert_full();
    assert_true(circuit("orders") == 0);
}

/*
 * Not a timed test: with MOAT_COMPOSE_BENCH=<seconds> (and wrk installed,
 * scripts/deps.sh --bench) it runs wrk against the details endpoint with
 * everything up and prints wrk's report; otherwise it is skipped.
 * MOAT_COMPOSE_BENCH_CONNS sets the connections (default 32).
 */
static void test_bench_details(void **state)
{
    MOAT_UNUSED(state);
    const char *secs = getenv("MOAT_COMPOSE_BENCH");
    const char *conns = getenv("MOAT_COMPOSE_BENCH_CONNS");
    if (!secs || !*secs) {
        skip();
        return;
    }
    assert_full();
    char dur[32], auth[1024], url[256], conn[32];
    snprintf(dur, sizeof(dur), "%ss", secs);
    snprintf(conn, sizeof(conn), "%s", conns && *conns ? conns : "32");
    snprintf(auth, sizeof(auth), "%s", h_user_token(F.alice, "customer", 3600));
    snprintf(url, sizeof(url), "%s/api/v1/orders/%s/details", F.gw->url,
             F.order);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execlp("wrk", "wrk", "-t2", "-c", conn, "-d", dur, "--latency", "-H",
               auth, url, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    print_message(
        "partial answers under load: %.0f, complete: %.0f\n",
        h_metric(F.gw->url,
                 "gateway_compose_requests_total{result=\"partial\"}"),
        h_metric(F.gw->url,
                 "gateway_compose_requests_total{result=\"complete\"}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_answer),
        cmocka_unit_test(test_admin_sees_any),
        cmocka_unit_test(test_other_customer_404),
        cmocka_unit_test(test_users_down),
        cmocka_unit_test(test_catalog_down),
        cmocka_unit_test(test_payments_down),
        cmocka_unit_test(test_notifications_down),
        cmocka_unit_test(test_users_slow),
        cmocka_unit_test(test_catalog_slow),
        cmocka_unit_test(test_payments_slow),
        cmocka_unit_test(test_notifications_slow),
        cmocka_unit_test(test_orders_down),
        cmocka_unit_test(test_breaker_opens_and_closes),
        cmocka_unit_test(test_orders_breaker),
        cmocka_unit_test(test_bench_details),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
