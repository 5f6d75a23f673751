/*
 * test_notifications.c - the notifications service end to end: the real
 * moat-notifications binary on a free loopback port, fed by the harness's
 * test feed standing in for orders (h_feed: a real libmoat outbox and
 * GET /v1/events). The same URL is notifications' orders API, where
 * GET /v1/orders/{id} is 404: every message goes to the fallback address
 * <customer_id>@customers.invalid. (The customer email path needs the
 * real orders service: the saga's end-to-end test covers it.)
 *
 * Covered: one Maildir file per order state change with its headers and
 * text; duplicate events ignored; SIGKILL during a burst, and a kill in
 * the window between rename and record (a test hook), each followed by a
 * restart: exactly one file per (order, status); the list API's filters,
 * pages and authorisation (a customer sees only their own); 400 problems;
 * a malformed event dead-lettered without holding others up; replay
 * --verify identical and a real replay sending nothing again.
 *
 * The process is shared by the tests (started in the group setup, stopped
 * in the teardown, which requires exit status 0). Each test uses order and
 * customer ids of its own. Run one test alone:
 *     tests/it_test_notifications test_replay
 */
#include "moat/common.h"

#include <dirent.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/http.h"
#include "moat/metrics.h"

#define WAIT_MS 20000 /* for events to become files, scaled */

static struct {
    char *tmp;
    char *data;
    char *new_dir, *tmp_dir;
    struct h_feed *feed;
    int64_t head; /* the feed's last seq */
    char orders_env[128];
    struct h_service ntf;
} F;

/* "<prefix>_" + 12 random hex digits: ids of a test's own. */
static void unique_id(const char *prefix, char out[32])
{
    unsigned char rnd[6];
    char hex[13];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(hex, rnd, sizeof(rnd));
    snprintf(out, 32, "%s_%s", prefix, hex);
}

static const char *const *ntf_env(const char *extra)
{
    static const char *env[4];
    env[0] = F.orders_env;
    env[1] = "MOAT_NOTIFICATIONS_RETRY_MAX_MS=500";
    env[2] = extra;
    env[3] = NULL;
    return env;
}

static json_t *get_json_as(const char *url, const char *token, long status)
{
    const char *headers[] = {token, NULL};
    struct h_resp r;
    h_http(&r, "GET", url, token ? headers : NULL, NULL, 0);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    return j;
}

static json_t *get_json(const char *url)
{
    return get_json_as(url, NULL, 200);
}

static json_t *post_json(const char *url, long status)
{
    struct h_resp r;
    h_http(&r, "POST", url, NULL, NULL, 0);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    return j;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct moat_buf b = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        moat_buf_add(&b, chunk, n);
    fclose(f);
    return moat_buf_detach(&b, NULL);
}

/* ---- orders' events ---- */

static void publish(const char *type, const char *order, const char *data)
{
    F.head = h_feed_publish(F.feed, type, order, data);
}

static void placed(const char *order, const char *customer, long total)
{
    publish("OrderPlaced", order,
            h_fmt("{\"order_id\":\"%s\",\"customer_id\":\"%s\","
                  "\"status\":\"pending\",\"total\":%ld,\"currency\":\"EUR\","
                  "\"lines\":[{\"product_id\":\"prod_1\",\"sku\":\"MUG-1\","
                  "\"name\":\"Blue mug\",\"unit_price\":%ld,"
                  "\"quantity\":2}],\"version\":1}",
                  order, customer, total, total / 2));
}

static void confirmed(const char *order, const char *customer, long total)
{
    publish("OrderConfirmed", order,
            h_fmt("{\"order_id\":\"%s\",\"customer_id\":\"%s\","
                  "\"status\":\"confirmed\",\"total\":%ld,"
                  "\"currency\":\"EUR\",\"payment_id\":\"pay_1\","
                  "\"version\":3}",
                  order, customer, total));
}

static void cancelled(const char *order, const char *customer, long total,
                      const char *reason)
{
    publish("OrderCancelled", order,
            h_fmt("{\"order_id\":\"%s\",\"customer_id\":\"%s\","
                  "\"status\":\"cancelled\",\"reason\":\"%s\",\"total\":%ld,"
                  "\"currency\":\"EUR\",\"version\":4}",
                  order, customer, reason, total));
}

/* ---- notifications' side ---- */

/* The notifications of one order (as a plain service caller). */
static json_t *of_order(const char *order)
{
    json_t *res =
        get_json(h_fmt("%s/v1/notifications?order_id=%s", F.ntf.url, order));
    json_t *list = json_incref(json_object_get(res, "notifications"));
    json_decref(res);
    return list;
}

/* Wait until order has n notifications, all delivered; returns them. */
/* The order has exactly n notifications, all delivered (*list: the list
 * last read, replaced). */
static bool all_delivered(json_t **list, const char *order, size_t n)
{
    json_decref(*list);
    *list = of_order(order);
    size_t done = 0, i;
    json_t *it;
    json_array_foreach(*list, i, it)
    {
        if (json_is_integer(json_object_get(it, "delivered_at")))
            done++;
    }
    return json_array_size(*list) == n && done == n;
}

static json_t *wait_delivered(const char *order, size_t n)
{
    json_t *list = NULL;
    H_WAIT_UNTIL(all_delivered(&list, order, n), WAIT_MS,
                 "%zu delivered notifications of order %s", n, order);
    return list;
}

/* Wait until the consumer's cursor is the feed's head and the backlog is
 * empty. */
/* Notifications' cursor is at the feed's head, everything delivered. */
static bool caught_up(void)
{
    json_t *st = get_json(h_fmt("%s/v1/admin/consumer", F.ntf.url));
    json_t *src = json_array_get(json_object_get(st, "sources"), 0);
    bool at_head = json_integer_value(json_object_get(src, "cursor")) == F.head;
    json_decref(st);
    return at_head && h_metric(F.ntf.url, "notifications_undelivered") == 0;
}

static void wait_caught_up(void)
{
    H_WAIT_UNTIL(caught_up(), WAIT_MS,
                 "notifications to catch up with seq %lld", (long long)F.head);
}

/* The header value of name in message text (first line "Name: value"),
 * copied; NULL when absent. */
static char *header(const char *msg, const char *name)
{
    size_t n = strlen(name);
    const char *p = msg;
    while (p && *p && !(p[0] == '\r' && p[1] == '\n')) {
        if (strncmp(p, name, n) == 0 && p[n] == ':' && p[n + 1] == ' ') {
            const char *v = p + n + 2;
            return moat_xstrndup(v, strcspn(v, "\r\n"));
        }
        p = strstr(p, "\r\n");
        if (p)
            p += 2;
    }
    return NULL;
}

/* Every file in new/: {name: {"order", "ino", "mtime"}}. */
static json_t *maildir_files(void)
{
    json_t *all = json_object();
    DIR *dir = opendir(F.new_dir);
    assert_non_null(dir);
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *path = moat_xasprintf("%s/%s", F.new_dir, e->d_name);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        char *text = read_text(path);
        assert_non_null(text);
        char *order = header(text, "X-Moat-Order");
        json_object_set_new(
            all, e->d_name,
            json_pack("{s:s, s:I, s:I}", "order", order ? order : "", "ino",
                      (json_int_t)st.st_ino, "mtime_ns",
                      (json_int_t)st.st_mtim.tv_sec * 1000000000 +
                          st.st_mtim.tv_nsec));
        free(order);
        free(text);
        free(path);
    }
    closedir(dir);
    return all;
}

/* Number of files in new/ for order. */
static size_t files_of(json_t *files, const char *order)
{
    size_t n = 0;
    const char *name;
    json_t *f;
    json_object_foreach(files, name, f)
    {
        if (strcmp(h_jstr(f, "order"), order) == 0)
            n++;
    }
    return n;
}

static size_t dir_entries(const char *path)
{
    size_t n = 0;
    DIR *dir = opendir(path);
    assert_non_null(dir);
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

static char *message_of(const char *id)
{
    char *path = moat_xasprintf("%s/%s", F.new_dir, id);
    char *text = read_text(path);
    if (!text)
        fail_msg("no maildir file %s", path);
    free(path);
    return text;
}

static void assert_header(const char *msg, const char *name, const char *want)
{
    char *v = header(msg, name);
    if (!v)
        fail_msg("no %s header in:\n%s", name, msg);
    assert_string_equal(v, want);
    free(v);
}

/* The notification of list with this status (borrowed). */
static json_t *with_status(json_t *list, const char *status)
{
    size_t i;
    json_t *it;
    json_array_foreach(list, i, it)
    {
        if (strcmp(h_jstr(it, "status"), status) == 0)
            return it;
    }
    fail_msg("no notification with status %s", status);
    return NULL;
}

/* ---- a stub of orders' API (GET /v1/orders/{id}) ----
 *
 * Test builds of notifications take MOAT_NOTIFICATIONS_TEST_ORDERS_API_URL
 * for orders' API while the feed stays the harness's h_feed. The stub
 * answers each order from a table the test fills (status and JSON body),
 * failing an order's first calls when asked, on a loop in a thread of its
 * own like h_feed.
 */
struct stub_order {
    char id[32];
    long status;  /* answered once the failures are used up */
    char *body;   /* owned JSON text */
    int failures; /* 503s to answer first */
    int calls;
    bool token; /* every call carried a service token */
};

#define STUB_MAX_ORDERS 16

static struct {
    struct event_base *base;
    struct moat_metrics *metrics;
    struct moat_http_server *http;
    struct event *stop;
    int pipe_fd[2];
    pthread_t thread;
    pthread_mutex_t mu;
    struct stub_order orders[STUB_MAX_ORDERS];
    size_t n;
    char url[64];
} S;

static void stub_order_route(struct moat_req *req, void *arg)
{
    MOAT_UNUSED(arg);
    const char *id = moat_req_param(req, "id");
    bool token = moat_req_header(req, MOAT_SERVICE_TOKEN_HEADER) != NULL;
    long status = 404;
    char *body = NULL;
    pthread_mutex_lock(&S.mu);
    for (size_t i = 0; i < S.n; i++) {
        struct stub_order *o = &S.orders[i];
        if (strcmp(o->id, id ? id : "") != 0)
            continue;
        o->calls++;
        o->token = (o->calls == 1 || o->token) && token;
        if (o->failures > 0) {
            o->failures--;
            status = 503;
        } else {
            status = o->status;
            body = moat_xstrdup(o->body);
        }
    }
    pthread_mutex_unlock(&S.mu);
    if (status != 200) {
        moat_req_reply_problem(req, (int)status, "stub: status %ld", status);
    } else {
        moat_req_reply(req, 200, "application/json", body, strlen(body));
    }
    free(body);
}

static void stub_on_stop(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    MOAT_UNUSED(arg);
    event_base_loopexit(S.base, NULL);
}

static void *stub_thread(void *arg)
{
    MOAT_UNUSED(arg);
    event_base_dispatch(S.base);
    return NULL;
}

static void stub_start(void)
{
    struct moat_http_limits limits = {0};
    uint16_t port = 0;
    S.base = event_base_new();
    S.metrics = moat_metrics_new();
    assert_non_null(S.base);
    assert_int_equal(pipe(S.pipe_fd), 0);
    S.http = moat_http_server_new(S.base, &limits, S.metrics);
    assert_non_null(S.http);
    assert_int_equal(moat_http_route(S.http, MOAT_GET, "/v1/orders/{id}",
                                     stub_order_route, NULL),
                     MOAT_OK);
    assert_int_equal(moat_http_listen(S.http, "127.0.0.1", 0, &port), MOAT_OK);
    moat_http_set_access_log(S.http, false);
    snprintf(S.url, sizeof(S.url), "http://127.0.0.1:%u", port);
    S.stop = event_new(S.base, S.pipe_fd[0], EV_READ, stub_on_stop, NULL);
    event_add(S.stop, NULL);
    pthread_mutex_init(&S.mu, NULL);
    assert_int_equal(pthread_create(&S.thread, NULL, stub_thread, NULL), 0);
}

static void stub_stop(void)
{
    char byte = 1;
    assert_int_equal(write(S.pipe_fd[1], &byte, 1), 1);
    pthread_join(S.thread, NULL);
    moat_http_server_free(S.http);
    event_free(S.stop);
    moat_metrics_free(S.metrics);
    event_base_free(S.base);
    close(S.pipe_fd[0]);
    close(S.pipe_fd[1]);
    pthread_mutex_destroy(&S.mu);
    for (size_t i = 0; i < S.n; i++)
        free(S.orders[i].body);
    memset(&S, 0, sizeof(S));
}

/* Answer order id with status and an order document of customer whose
 * customer.email is email_json (JSON text: a string or null), after
 * failures 503s. */
static void stub_set(const char *id, const char *customer,
                     const char *email_json, long status, int failures)
{
    pthread_mutex_lock(&S.mu);
    assert_true(S.n < STUB_MAX_ORDERS);
    struct stub_order *o = &S.orders[S.n++];
    snprintf(o->id, sizeof(o->id), "%s", id);
    o->status = status;
    o->failures = failures;
    o->body = moat_xasprintf(
        "{\"id\":\"%s\",\"object\":\"order\",\"customer_id\":\"%s\","
        "\"status\":\"pending\",\"customer\":{\"name\":\"Ada\","
        "\"email\":%s}}",
        id, customer, email_json);
    pthread_mutex_unlock(&S.mu);
}

static struct stub_order stub_get(const char *id)
{
    struct stub_order copy = {0};
    pthread_mutex_lock(&S.mu);
    for (size_t i = 0; i < S.n; i++)
        if (strcmp(S.orders[i].id, id) == 0)
            copy = S.orders[i];
    pthread_mutex_unlock(&S.mu);
    copy.body = NULL; /* not the test's */
    return copy;
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("notifications");
    F.data = moat_xasprintf("%s/notifications-data", F.tmp);
    F.new_dir = moat_xasprintf("%s/maildir/new", F.data);
    F.tmp_dir = moat_xasprintf("%s/maildir/tmp", F.data);
    F.feed = h_feed_start("orders", F.tmp);
    snprintf(F.orders_env, sizeof(F.orders_env),
             "MOAT_NOTIFICATIONS_ORDERS_URL=%s", h_feed_url(F.feed));
    if (h_service_start(&F.ntf, "notifications", F.tmp, F.data,
                        ntf_env(NULL)) != 0)
        return -1;
    h_auto_service_token(F.ntf.url, "notifications", NULL, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.ntf);
    if (rc)
        print_error("notifications must exit 0 on SIGTERM: %d (see the log "
                    "above)\n",
                    rc);
    h_service_release(&F.ntf);
    h_feed_stop(F.feed);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.data);
    free(F.new_dir);
    free(F.tmp_dir);
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_one_file_per_state_change(void **state)
{
    MOAT_UNUSED(state);
    char o1[32], o2[32], cust[32];
    unique_id("ord", o1);
    unique_id("ord", o2);
    unique_id("usr", cust);
    placed(o1, cust, 2400);
    confirmed(o1, cust, 2400);
    placed(o2, cust, 150);
    cancelled(o2, cust, 150, "payment_declined");

    json_t *l1 = wait_delivered(o1, 2);
    json_t *l2 = wait_delivered(o2, 2);
    json_t *files = maildir_files();
    assert_int_equal(files_of(files, o1), 2);
    assert_int_equal(files_of(files, o2), 2);

    /* The confirmation: every header, the total with its currency. */
    json_t *n = with_status(l1, "confirmed");
    assert_string_equal(h_jstr(n, "kind"), "order.confirmed");
    assert_string_equal(h_jstr(n, "customer_id"), cust);
    assert_string_equal(h_jstr(n, "order_id"), o1);
    assert_true(json_is_integer(json_object_get(n, "created_at")));
    char *msg = message_of(h_jstr(n, "id"));
    assert_header(msg, "From", "moat <orders@moat.local>");
    assert_header(msg, "To", h_fmt("%s@customers.invalid", cust));
    assert_header(msg, "Subject", h_jstr(n, "subject"));
    assert_header(msg, "Message-ID", h_fmt("<%s@moat.local>", h_jstr(n, "id")));
    assert_header(msg, "X-Moat-Order", o1);
    assert_header(msg, "Content-Type", "text/plain; charset=utf-8");
    char *date = header(msg, "Date");
    assert_non_null(date);
    assert_true(strlen(date) > 20 && strstr(date, "+0000"));
    free(date);
    json_t *trace = json_object_get(n, "trace_id");
    if (json_is_string(trace))
        assert_header(msg, "X-Moat-Trace-Id", json_string_value(trace));
    assert_non_null(strstr(msg, "\r\n\r\n"));
    assert_non_null(strstr(msg, "24.00 EUR"));
    assert_non_null(strstr(h_jstr(n, "subject"), o1));
    free(msg);

    /* The single notification has its body. */
    json_t *one =
        get_json(h_fmt("%s/v1/notifications/%s", F.ntf.url, h_jstr(n, "id")));
    assert_non_null(strstr(h_jstr(one, "body"), "24.00 EUR"));
    json_decref(one);

    /* The cancellation says why, in words. */
    n = with_status(l2, "cancelled");
    assert_string_equal(h_jstr(n, "kind"), "order.cancelled");
    msg = message_of(h_jstr(n, "id"));
    assert_non_null(strstr(msg, "your payment was declined"));
    assert_non_null(strstr(msg, "1.50 EUR"));
    free(msg);
    n = with_status(l2, "pending");
    assert_string_equal(h_jstr(n, "kind"), "order.placed");
    msg = message_of(h_jstr(n, "id"));
    assert_non_null(strstr(msg, "2 x Blue mug"));
    free(msg);

    assert_true(
        h_metric(F.ntf.url, "notifications_total{kind=\"order.placed\"}") >= 2);
    assert_true(h_metric(F.ntf.url,
                         "notifications_total{kind=\"order.confirmed\"}") >= 1);
    assert_true(h_metric(F.ntf.url, "notifications_fallback_address_total") >=
                4);
    json_decref(files);
    json_decref(l1);
    json_decref(l2);
}

static void test_duplicates_ignored(void **state)
{
    MOAT_UNUSED(state);
    char o[32], cust[32];
    unique_id("ord", o);
    unique_id("usr", cust);
    placed(o, cust, 1000);
    placed(o, cust, 1000); /* orders published it twice */
    confirmed(o, cust, 1000);
    confirmed(o, cust, 1000);
    wait_caught_up();
    json_t *list = wait_delivered(o, 2);
    json_t *files = maildir_files();
    assert_int_equal(files_of(files, o), 2);
    json_decref(files);
    json_decref(list);

    /* A restart (everything redelivered from the stored cursor, nothing
     * pending) sends nothing again. */
    assert_int_equal(h_service_stop(&F.ntf), 0);
    assert_int_equal(h_service_restart(&F.ntf, ntf_env(NULL)), 0);
    confirmed(o, cust, 1000);
    wait_caught_up();
    files = maildir_files();
    assert_int_equal(files_of(files, o), 2);
    json_decref(files);
    assert_int_equal(dir_entries(F.tmp_dir), 0);
}

#define BURST_ORDERS 25

static void test_kill_during_burst(void **state)
{
    MOAT_UNUSED(state);
    char orders[BURST_ORDERS][32], cust[32];
    unique_id("usr", cust);
    for (int i = 0; i < BURST_ORDERS; i++)
        unique_id("ord", orders[i]);

    /* Half of the burst, a kill while it is being delivered, the rest
     * while notifications is down. */
    for (int i = 0; i < BURST_ORDERS; i++) {
        placed(orders[i], cust, 100 + i);
        if (i == BURST_ORDERS / 2) {
            /* Shapes the crash point only (any is valid): not a wait. */
            h_sleep_ms(5);
            h_service_kill(&F.ntf);
        }
    }
    for (int i = 0; i < BURST_ORDERS; i++) {
        if (i % 2)
            confirmed(orders[i], cust, 100 + i);
        else
            cancelled(orders[i], cust, 100 + i, "out_of_stock");
    }
    assert_int_equal(h_service_restart(&F.ntf, ntf_env(NULL)), 0);
    /* Killed again in the middle of catching up (the pause shapes the
     * crash point only: any is valid). */
    h_sleep_ms(10);
    h_service_kill(&F.ntf);
    assert_int_equal(h_service_restart(&F.ntf, ntf_env(NULL)), 0);
    wait_caught_up();

    json_t *files = maildir_files();
    for (int i = 0; i < BURST_ORDERS; i++) {
        json_decref(wait_delivered(orders[i], 2));
        assert_int_equal(files_of(files, orders[i]), 2);
    }
    json_decref(files);
    assert_int_equal(dir_entries(F.tmp_dir), 0);
}

static void test_kill_between_rename_and_record(void **state)
{
    MOAT_UNUSED(state);
#ifndef MOAT_TEST_HOOKS
    skip();
#endif
    char orders[6][32], cust[32];
    unique_id("usr", cust);
    for (int i = 0; i < 6; i++)
        unique_id("ord", orders[i]);
    assert_int_equal(h_service_stop(&F.ntf), 0);
    assert_int_equal(
        h_service_restart(&F.ntf, ntf_env("MOAT_NOTIFICATIONS_TEST_DIE_"
                                          "AFTER_RENAMES=3")),
        0);
    for (int i = 0; i < 6; i++)
        placed(orders[i], cust, 500);
    H_WAIT_UNTIL(!h_service_alive(&F.ntf), WAIT_MS,
                 "the test hook to kill notifications");
    assert_int_equal(h_service_restart(&F.ntf, ntf_env(NULL)), 0);
    wait_caught_up();
    json_t *files = maildir_files();
    for (int i = 0; i < 6; i++) {
        json_decref(wait_delivered(orders[i], 1));
        assert_int_equal(files_of(files, orders[i]), 1);
    }
    json_decref(files);
    /* The file written before the kill was found, not written again. */
    char *log = read_text(F.ntf.log_path);
    assert_non_null(log);
    assert_non_null(strstr(log, "notification already in the maildir"));
    free(log);
}

static void test_list_and_authorisation(void **state)
{
    MOAT_UNUSED(state);
    char a[32], b[32], oa[3][32], ob[32];
    unique_id("usr", a);
    unique_id("usr", b);
    for (int i = 0; i < 3; i++) {
        unique_id("ord", oa[i]);
        placed(oa[i], a, 100);
    }
    unique_id("ord", ob);
    placed(ob, b, 100);
    json_decref(wait_delivered(ob, 1));
    for (int i = 0; i < 3; i++)
        json_decref(wait_delivered(oa[i], 1));

    /* A service (no end user) filters by customer and pages. */
    json_t *p1 = get_json(
        h_fmt("%s/v1/notifications?customer_id=%s&limit=2", F.ntf.url, a));
    json_t *items = json_object_get(p1, "notifications");
    assert_int_equal(json_array_size(items), 2);
    const char *next = h_jstr(p1, "next_after");
    assert_true(next[0]);
    json_t *p2 =
        get_json(h_fmt("%s/v1/notifications?customer_id=%s&limit=2&after=%s",
                       F.ntf.url, a, next));
    assert_int_equal(json_array_size(json_object_get(p2, "notifications")), 1);
    assert_true(json_is_null(json_object_get(p2, "next_after")));
    json_t *first = json_array_get(items, 0);
    const char *keys[] = {"id",         "order_id",     "customer_id",
                          "kind",       "status",       "subject",
                          "created_at", "delivered_at", "trace_id"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(keys); i++)
        assert_non_null(json_object_get(first, keys[i]));
    assert_string_equal(h_jstr(first, "customer_id"), a);

    /* Customer a sees only their own, whatever they ask for. */
    const char *as_a = h_service_token("notifications", a, "customer");
    json_t *own =
        get_json_as(h_fmt("%s/v1/notifications", F.ntf.url), as_a, 200);
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(own, "notifications"), i, it)
    {
        assert_string_equal(h_jstr(it, "customer_id"), a);
    }
    assert_int_equal(json_array_size(json_object_get(own, "notifications")), 3);
    json_decref(own);
    as_a = h_service_token("notifications", a, "customer");
    json_t *other = get_json_as(
        h_fmt("%s/v1/notifications?customer_id=%s", F.ntf.url, b), as_a, 200);
    json_array_foreach(json_object_get(other, "notifications"), i, it)
    {
        assert_string_equal(h_jstr(it, "customer_id"), a);
    }
    json_decref(other);

    /* b's notification is 404 for a, visible to b and to an admin. */
    json_t *lb = of_order(ob);
    const char *bid = h_jstr(json_array_get(lb, 0), "id");
    const char *url = h_fmt("%s/v1/notifications/%s", F.ntf.url, bid);
    char url_copy[256];
    snprintf(url_copy, sizeof(url_copy), "%s", url);
    struct h_resp r;
    const char *hdr_a[] = {h_service_token("notifications", a, "customer"),
                           NULL};
    h_http(&r, "GET", url_copy, hdr_a, NULL, 0);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    json_decref(get_json_as(
        url_copy, h_service_token("notifications", b, "customer"), 200));
    json_decref(get_json_as(
        url_copy, h_service_token("notifications", "usr_admin", "admin"), 200));
    json_t *adm = get_json_as(
        h_fmt("%s/v1/notifications?customer_id=%s", F.ntf.url, b),
        h_service_token("notifications", "usr_admin", "admin"), 200);
    assert_int_equal(json_array_size(json_object_get(adm, "notifications")), 1);
    json_decref(adm);
    json_decref(lb);

    /* No token: 401. */
    const char *none[] = {"Moat-Service-Token:", NULL};
    h_http(&r, "GET", h_fmt("%s/v1/notifications", F.ntf.url), none, NULL, 0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    json_decref(p1);
    json_decref(p2);
}

static void test_bad_params(void **state)
{
    MOAT_UNUSED(state);
    static const struct {
        const char *query, *param;
    } bad[] = {
        {"limit=0", "limit"},
        {"limit=501", "limit"},
        {"limit=ten", "limit"},
        {"after=ntf_nope", "after"},
        {"customer_id=a%20b", "customer_id"},
        {"order_id=", "order_id"},
        {"colour=red", "colour"},
        {"limit=1&limit=2", "limit"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        struct h_resp r;
        h_get(&r, h_fmt("%s/v1/notifications?%s", F.ntf.url, bad[i].query));
        h_assert_problem(&r, 400);
        h_assert_problem_error(&r, "parameter", bad[i].param);
        h_resp_release(&r);
    }
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/notifications/not-an-id", F.ntf.url));
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    h_get(&r, h_fmt("%s/v1/notifications/ntf_01ARZ3NDEKTSV4RRFFQ69G5FAV",
                    F.ntf.url));
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

static void test_malformed_event_parked(void **state)
{
    MOAT_UNUSED(state);
    char bad[32], good[32], cust[32];
    unique_id("ord", bad);
    unique_id("ord", good);
    unique_id("usr", cust);
    /* No customer_id: a broken event, not an order. */
    publish(
        "OrderPlaced", bad,
        h_fmt("{\"order_id\":\"%s\",\"total\":1,\"currency\":\"EUR\"}", bad));
    placed(good, cust, 300);
    json_decref(wait_delivered(good, 1));
    size_t n = 0;
    json_t *dl_json;
    H_WAIT_UNTIL((dl_json = get_json(h_fmt(
                      "%s/v1/admin/dead-letters?subject=%s", F.ntf.url, bad)),
                  n = json_array_size(json_object_get(dl_json, "dead_letters")),
                  json_decref(dl_json), n == 1),
                 WAIT_MS, "the malformed event parked as a dead letter");
    json_t *list = of_order(bad);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
}

/* The To: of order's only notification. */
static char *to_of(const char *order)
{
    json_t *list = wait_delivered(order, 1);
    char *msg = message_of(h_jstr(json_array_get(list, 0), "id"));
    char *to = header(msg, "To");
    assert_non_null(to);
    free(msg);
    json_decref(list);
    return to;
}

static void test_customer_email(void **state)
{
    MOAT_UNUSED(state);
#ifndef MOAT_TEST_HOOKS
    skip();
#endif
    enum { OK, NO_EMAIL, INJECT, OTHER, FLAKY, NORDERS };
    char o[NORDERS][32], cust[32], other[32];
    unique_id("usr", cust);
    unique_id("usr", other);
    for (int i = 0; i < NORDERS; i++)
        unique_id("ord", o[i]);
    stub_start();
    stub_set(o[OK], cust, "\"ada@example.com\"", 200, 0);
    stub_set(o[NO_EMAIL], cust, "null", 200, 0);
    stub_set(o[INJECT], cust, "\"ada@example.com\\r\\nBcc: eve@example.com\"",
             200, 0);
    stub_set(o[OTHER], other, "\"eve@example.com\"", 200, 0);
    stub_set(o[FLAKY], cust, "\"bob@example.com\"", 200, 2);
    char api_env[128];
    snprintf(api_env, sizeof(api_env),
             "MOAT_NOTIFICATIONS_TEST_ORDERS_API_URL=%s", S.url);
    assert_int_equal(h_service_stop(&F.ntf), 0);
    assert_int_equal(h_service_restart(&F.ntf, ntf_env(api_env)), 0);
    double failures_before = h_metric(
        F.ntf.url,
        "notifications_delivery_failures_total{reason=\"orders_unreachable\"}");

    for (int i = 0; i < NORDERS; i++)
        placed(o[i], cust, 990);
    const char *fallback = h_fmt("%s@customers.invalid", cust);
    char fb[64];
    snprintf(fb, sizeof(fb), "%s", fallback);
    struct {
        int order;
        const char *to;
    } want[] = {
        {OK, "ada@example.com"},    {NO_EMAIL, fb}, {INJECT, fb}, {OTHER, fb},
        {FLAKY, "bob@example.com"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++) {
        char *to = to_of(o[want[i].order]);
        assert_string_equal(to, want[i].to);
        free(to);
    }
    /* The flaky order was retried through two 503s; every call carried
     * a service token. */
    struct stub_order flaky = stub_get(o[FLAKY]);
    assert_int_equal(flaky.calls, 3);
    assert_true(flaky.token);
    assert_true(stub_get(o[OK]).token);
    double failures_after = h_metric(
        F.ntf.url,
        "notifications_delivery_failures_total{reason=\"orders_unreachable\"}");
    if (failures_before < 0)
        failures_before = 0;
    assert_true(failures_after - failures_before >= 2);
    /* No email address in the log. */
    char *log = read_text(F.ntf.log_path);
    assert_non_null(log);
    assert_null(strstr(log, "@example.com"));
    free(log);

    /* An order orders never answers for: it waits, holding its slot, and
     * a shutdown with its retries pending is clean (exit 0, no leaks). */
    char down[32];
    unique_id("ord", down);
    stub_set(down, cust, "\"carol@example.com\"", 200, 1000000);
    placed(down, cust, 10);
    H_WAIT_UNTIL(stub_get(down).calls >= 2, WAIT_MS,
                 "a retry of the unanswered order");
    json_t *list = of_order(down);
    assert_int_equal(json_array_size(list), 1);
    assert_true(
        json_is_null(json_object_get(json_array_get(list, 0), "delivered_at")));
    json_decref(list);
    assert_true(h_metric(F.ntf.url, "notifications_undelivered") >= 1);
    assert_int_equal(h_service_stop(&F.ntf), 0);
    stub_stop();
    /* Back on the test feed's API (404): the fallback address. */
    assert_int_equal(h_service_restart(&F.ntf, ntf_env(NULL)), 0);
    char *to = to_of(down);
    assert_string_equal(to, fb);
    free(to);
}

/* Every notification (as a service), by id. */
static json_t *all_notifications(void)
{
    json_t *all = json_object();
    char after[64] = "";
    for (;;) {
        json_t *page = get_json(
            after[0] ? h_fmt("%s/v1/notifications?limit=500&after=%s",
                             F.ntf.url, after)
                     : h_fmt("%s/v1/notifications?limit=500", F.ntf.url));
        size_t i;
        json_t *it;
        json_array_foreach(json_object_get(page, "notifications"), i, it)
        {
            json_object_set(all, h_jstr(it, "id"), it);
        }
        json_t *next = json_object_get(page, "next_after");
        bool more = json_is_string(next);
        if (more)
            snprintf(after, sizeof(after), "%s", json_string_value(next));
        json_decref(page);
        if (!more)
            return all;
    }
}

static void assert_json_equal(const json_t *want, const json_t *got)
{
    if (!json_equal(want, got)) {
        char *a = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
        char *b = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        print_error("expected %.3000s\n     got %.3000s\n", a, b);
        free(a);
        free(b);
        fail();
    }
}

static void test_replay(void **state)
{
    MOAT_UNUSED(state);
    char o[32], cust[32];
    unique_id("ord", o);
    unique_id("usr", cust);
    placed(o, cust, 4200);
    cancelled(o, cust, 4200, "customer_cancelled");
    json_decref(wait_delivered(o, 2));
    wait_caught_up();
    json_t *before = all_notifications();
    json_t *files_before = maildir_files();
    assert_true(json_object_size(before) > 0);
    assert_int_equal(json_object_size(files_before), json_object_size(before));

    /* Verification: a scratch rebuild equals the live view. */
    json_t *v = post_json(h_fmt("%s/v1/admin/replay?verify=1", F.ntf.url), 200);
    if (!json_is_true(json_object_get(v, "identical"))) {
        char *t = json_dumps(v, JSON_INDENT(2));
        print_error("replay verification found differences: %s\n", t);
        free(t);
        fail();
    }
    json_decref(v);

    /* A real replay rebuilds every row, born delivered: no new file, no
     * file written again. */
    json_decref(post_json(h_fmt("%s/v1/admin/replay", F.ntf.url), 202));
    wait_caught_up();
    /* A window in which no delivery may happen (one would have by now),
     * not a wait. */
    h_sleep_ms(300);
    json_t *after = all_notifications();
    assert_json_equal(before, after);
    json_t *files_after = maildir_files();
    assert_json_equal(files_before, files_after);
    assert_int_equal(dir_entries(F.tmp_dir), 0);
    assert_true(h_metric(F.ntf.url, "notifications_undelivered") == 0);
    json_decref(before);
    json_decref(after);
    json_decref(files_before);
    json_decref(files_after);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_file_per_state_change),
        cmocka_unit_test(test_duplicates_ignored),
        cmocka_unit_test(test_kill_during_burst),
        cmocka_unit_test(test_kill_between_rename_and_record),
        cmocka_unit_test(test_list_and_authorisation),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_malformed_event_parked),
        cmocka_unit_test(test_customer_email),
        cmocka_unit_test(test_replay),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("notifications", tests, group_setup,
                                       group_teardown);
}
