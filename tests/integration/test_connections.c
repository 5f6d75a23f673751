/*
 * test_connections.c - the connections service end to end: moat-connections
 * as a real process on a free loopback port, called directly with service
 * tokens acting for end users (as the gateway would). Follows and their
 * cursor pages, the request / accept / remove flow, degree-1 and degree-2
 * lists, the degree of separation, the 4xx answers (no user, oneself,
 * malformed ids and bodies, caps on sizes, acting on another's request),
 * the events of every change on its feed in commit order, and the graph
 * surviving a restart.
 *
 * One process serves the whole group (the restart test replaces it);
 * tests never depend on each other's data: each uses user ids of its own.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_connections test_degree
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static struct {
    char *tmp;  /* temporary directory of the run (owned) */
    char *data; /* the service's data directory inside tmp (owned) */
    struct h_service svc;
} F;

/* ---- helpers ---- */

/* "<prefix>-<8 hex>": user ids of a test's own, in a pool apart from
 * h_fmt's. */
#define UNIQUE_POOL 64
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

/* A request to path acting for user (NULL: a service call for nobody),
 * with a JSON body when json is not NULL. */
static void call(struct h_resp *r, const char *method, const char *user,
                 const char *path, const char *json)
{
    const char *headers[] = {
        h_service_token("connections", user, user ? "customer" : NULL), NULL};
    const char *url = h_fmt("%s%s", F.svc.url, path);
    if (json)
        h_send_json(r, method, url, json, headers);
    else
        h_http(r, method, url, headers, NULL, 0);
}

/* Call and assert the status (a problem for 4xx); returns the body as
 * JSON (caller frees; NULL for no body). */
static json_t *expect(long status, const char *method, const char *user,
                      const char *path, const char *json)
{
    struct h_resp r;
    call(&r, method, user, path, json);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static void expect_none(long status, const char *method, const char *user,
                        const char *path, const char *json)
{
    json_decref(expect(status, method, user, path, json));
}

static const char *body_user(const char *id)
{
    return h_fmt("{\"user_id\": \"%s\"}", id);
}

static void follow(const char *a, const char *b, long status)
{
    expect_none(status, "POST", a, "/v1/follows", body_user(b));
}

/* a requests, b accepts. */
static void connect_pair(const char *a, const char *b)
{
    json_t *j = expect(201, "POST", a, "/v1/connections", body_user(b));
    assert_string_equal(json_string_value(json_object_get(j, "state")),
                        "pending_outgoing");
    json_decref(j);
    j = expect(200, "POST", b, h_fmt("/v1/connections/%s/accept", a), NULL);
    assert_string_equal(json_string_value(json_object_get(j, "state")),
                        "connected");
    json_decref(j);
}

/* Every user id of a list, read page by page with limit; returns a new
 * array of strings. */
static json_t *read_all(const char *path, const char *query, int limit)
{
    json_t *all = json_array();
    char cursor[256] = "";
    for (int pages = 0;; pages++) {
        assert_true(pages < 100);
        json_t *j = expect(200, "GET", "usr_reader",
                           h_fmt("%s?limit=%d%s%s%s%s", path, limit,
                                 query[0] ? "&" : "", query,
                                 cursor[0] ? "&cursor=" : "", cursor),
                           NULL);
        json_t *items = json_object_get(j, "items"), *e;
        size_t i;
        assert_true(json_array_size(items) <= (size_t)limit);
        json_array_foreach(items, i, e)
        {
            json_array_append(all, json_object_get(e, "user_id"));
        }
        json_t *next = json_object_get(j, "next_cursor");
        if (json_is_null(next)) {
            json_decref(j);
            return all;
        }
        assert_int_equal(json_array_size(items), limit);
        snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        json_decref(j);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Assert that list (strings) holds exactly want (n ids), in id order. */
static void assert_ids(json_t *list, const char **want, size_t n)
{
    if (n > 0)
        qsort(want, n, sizeof(want[0]), cmp_str);
    if (json_array_size(list) != n) {
        char *text = json_dumps(list, 0);
        fail_msg("got %s, want %zu ids", text, n);
    }
    for (size_t i = 0; i < n; i++)
        assert_string_equal(json_string_value(json_array_get(list, i)),
                            want[i]);
}

static json_t *degree(const char *a, const char *b)
{
    json_t *j =
        expect(200, "GET", "usr_reader",
               h_fmt("/v1/connections/degree?from=%s&to=%s", a, b), NULL);
    json_t *d = json_incref(json_object_get(j, "degree"));
    json_decref(j);
    return d;
}

static void assert_degree(const char *a, const char *b, int want)
{
    json_t *d = degree(a, b);
    if (want < 0)
        assert_true(json_is_null(d));
    else
        assert_int_equal(json_integer_value(d), want);
    json_decref(d);
}

static int64_t feed_head(void)
{
    json_t *j = expect(200, "GET", NULL, "/v1/events?limit=1", NULL);
    int64_t head = json_integer_value(json_object_get(j, "head"));
    json_decref(j);
    return head;
}

static json_t *feed_after(int64_t after)
{
    json_t *j = expect(
        200, "GET", NULL,
        h_fmt("/v1/events?after=%lld&limit=1000", (long long)after), NULL);
    json_t *events = json_incref(json_object_get(j, "events"));
    json_decref(j);
    return events;
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("connections");
    F.data = moat_xasprintf("%s/connections-data", F.tmp);
    return h_service_start(&F.svc, "connections", F.tmp, F.data, NULL);
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.svc);
    if (rc != 0)
        print_error("connections must exit 0 on SIGTERM, got %d\n", rc);
    h_service_release(&F.svc);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.data);
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_follow_unfollow_pages(void **state)
{
    MOAT_UNUSED(state);
    char a[48], others[25][48];
    const char *want[25];
    snprintf(a, sizeof(a), "%s", unique("fa"));
    for (int i = 0; i < 25; i++) {
        snprintf(others[i], sizeof(others[i]), "%s", unique("fo"));
        want[i] = others[i];
        follow(a, others[i], 201);
    }
    follow(a, others[0], 200); /* again: nothing changes */
    follow(others[0], a, 201);

    json_t *j = expect(200, "GET", "usr_reader",
                       h_fmt("/v1/users/%s/following?limit=10", a), NULL);
    json_t *first = json_array_get(json_object_get(j, "items"), 0);
    assert_true(json_is_string(json_object_get(first, "since")));
    assert_true(json_is_string(json_object_get(j, "next_cursor")));
    json_decref(j);

    json_t *list = read_all(h_fmt("/v1/users/%s/following", a), "", 10);
    assert_ids(list, want, 25);
    json_decref(list);
    list = read_all(h_fmt("/v1/users/%s/followers", others[3]), "", 7);
    const char *just_a[] = {a};
    assert_ids(list, just_a, 1);
    json_decref(list);

    j = expect(200, "GET", "usr_reader", h_fmt("/v1/users/%s/counts", a), NULL);
    assert_int_equal(json_integer_value(json_object_get(j, "following")), 25);
    assert_int_equal(json_integer_value(json_object_get(j, "followers")), 1);
    json_decref(j);

    expect_none(204, "DELETE", a, h_fmt("/v1/follows/%s", others[3]), NULL);
    expect_none(404, "DELETE", a, h_fmt("/v1/follows/%s", others[3]), NULL);
    list = read_all(h_fmt("/v1/users/%s/followers", others[3]), "", 7);
    assert_ids(list, NULL, 0);
    json_decref(list);
    /* A user with no edges has empty lists, not a 404. */
    list = read_all(h_fmt("/v1/users/%s/following", unique("nobody")), "", 5);
    assert_ids(list, NULL, 0);
    json_decref(list);
}

static void test_request_accept_remove(void **state)
{
    MOAT_UNUSED(state);
    char a[48], b[48];
    snprintf(a, sizeof(a), "%s", unique("ca"));
    snprintf(b, sizeof(b), "%s", unique("cb"));

    json_t *j = expect(201, "POST", a, "/v1/connections", body_user(b));
    assert_string_equal(json_string_value(json_object_get(j, "user_id")), b);
    json_decref(j);
    /* Again: unchanged. The requester cannot accept on b's behalf. */
    expect_none(200, "POST", a, "/v1/connections", body_user(b));
    expect_none(404, "POST", a, h_fmt("/v1/connections/%s/accept", b), NULL);

    /* Pending requests, seen by their owners only. */
    json_t *list =
        read_all("/v1/connections/requests", "direction=incoming", 5);
    assert_ids(list, NULL, 0); /* usr_reader has none */
    json_decref(list);
    j = expect(200, "GET", b, "/v1/connections/requests?direction=incoming",
               NULL);
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(j, "items"), 0), "user_id")),
        a);
    json_decref(j);
    j = expect(200, "GET", a, "/v1/connections/requests?direction=outgoing",
               NULL);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 1);
    json_decref(j);

    j = expect(200, "POST", b, h_fmt("/v1/connections/%s/accept", a), NULL);
    assert_string_equal(json_string_value(json_object_get(j, "state")),
                        "connected");
    json_decref(j);
    expect_none(200, "POST", b, h_fmt("/v1/connections/%s/accept", a), NULL);
    assert_degree(a, b, 1);
    list = read_all(h_fmt("/v1/users/%s/connections", a), "degree=1", 5);
    const char *just_b[] = {b};
    assert_ids(list, just_b, 1);
    json_decref(list);

    /* Removed by either side. */
    expect_none(204, "DELETE", b, h_fmt("/v1/connections/%s", a), NULL);
    expect_none(404, "DELETE", a, h_fmt("/v1/connections/%s", b), NULL);
    assert_degree(a, b, -1);

    /* Withdrawn by the requester, declined by the recipient. */
    expect_none(201, "POST", a, "/v1/connections", body_user(b));
    expect_none(204, "DELETE", a, h_fmt("/v1/connections/%s", b), NULL);
    expect_none(404, "POST", b, h_fmt("/v1/connections/%s/accept", a), NULL);
    expect_none(201, "POST", a, "/v1/connections", body_user(b));
    expect_none(204, "DELETE", b, h_fmt("/v1/connections/%s", a), NULL);
    expect_none(404, "POST", b, h_fmt("/v1/connections/%s/accept", a), NULL);

    /* Requests crossing: the second one accepts the first. */
    expect_none(201, "POST", a, "/v1/connections", body_user(b));
    j = expect(200, "POST", b, "/v1/connections", body_user(a));
    assert_string_equal(json_string_value(json_object_get(j, "state")),
                        "connected");
    json_decref(j);
    assert_degree(b, a, 1);
}

static void test_degree(void **state)
{
    MOAT_UNUSED(state);
    /* a - b - c - d, a - e - c, and f alone; g x5 around b. */
    char u[7][48], g[5][48];
    for (int i = 0; i < 7; i++)
        snprintf(u[i], sizeof(u[i]), "%s", unique("d"));
    const char *a = u[0], *b = u[1], *c = u[2], *d = u[3], *e = u[4], *f = u[5],
               *x = u[6];
    connect_pair(a, b);
    connect_pair(b, c);
    connect_pair(c, d);
    connect_pair(a, e);
    connect_pair(e, c);
    const char *second[6] = {c};
    for (int i = 0; i < 5; i++) {
        snprintf(g[i], sizeof(g[i]), "%s", unique("g"));
        connect_pair(g[i], b);
        second[1 + i] = g[i];
    }
    /* A pending request and a follow are not connections. */
    expect_none(201, "POST", x, "/v1/connections", body_user(a));
    follow(a, x, 201);

    assert_degree(a, a, 0);
    assert_degree(a, b, 1);
    assert_degree(a, c, 2);
    assert_degree(a, d, 3);
    assert_degree(d, a, 3);
    assert_degree(a, f, -1);
    assert_degree(a, x, -1);

    /* Degree 2 of a: c (through b and e) and the g's, neither a nor its
     * own connections, each once; pages of 2. */
    json_t *list =
        read_all(h_fmt("/v1/users/%s/connections", a), "degree=2", 2);
    assert_ids(list, second, 6);
    json_decref(list);
    list = read_all(h_fmt("/v1/users/%s/connections", a), "", 1);
    const char *first[] = {b, e};
    assert_ids(list, first, 2);
    json_decref(list);
    /* Degree-2 items carry no "since". */
    json_t *j = expect(200, "GET", "usr_reader",
                       h_fmt("/v1/users/%s/connections?degree=2", a), NULL);
    assert_null(json_object_get(json_array_get(json_object_get(j, "items"), 0),
                                "since"));
    json_decref(j);
}

static void test_client_errors(void **state)
{
    MOAT_UNUSED(state);
    char a[48], b[48];
    snprintf(a, sizeof(a), "%s", unique("ea"));
    snprintf(b, sizeof(b), "%s", unique("eb"));
    struct h_resp r;

    /* No end user: writes need one (401); reads do not. */
    expect_none(401, "POST", NULL, "/v1/follows", body_user(b));
    expect_none(401, "DELETE", NULL, h_fmt("/v1/connections/%s", b), NULL);
    expect_none(401, "GET", NULL, "/v1/connections/requests", NULL);
    expect_none(200, "GET", NULL, h_fmt("/v1/users/%s/followers", b), NULL);
    /* Without a service token at all. */
    h_get(&r, h_fmt("%s/v1/users/%s/followers", F.svc.url, b));
    h_assert_problem(&r, 401);
    h_resp_release(&r);

    /* Oneself. */
    call(&r, "POST", a, "/v1/follows", body_user(a));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/user_id");
    h_resp_release(&r);
    expect_none(422, "POST", a, "/v1/connections", body_user(a));
    expect_none(422, "DELETE", a, h_fmt("/v1/follows/%s", a), NULL);
    expect_none(422, "POST", a, h_fmt("/v1/connections/%s/accept", a), NULL);

    /* Bodies: malformed ids, unknown members (no acting for another). */
    call(&r, "POST", a, "/v1/follows",
         h_fmt("{\"user_id\": \"%s\", \"follower_id\": \"%s\"}", b, b));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/follower_id");
    h_resp_release(&r);
    expect_none(422, "POST", a, "/v1/follows", "{\"user_id\": \"a b\"}");
    expect_none(422, "POST", a, "/v1/follows", "{\"user_id\": 7}");
    expect_none(422, "POST", a, "/v1/follows", "{}");
    expect_none(422, "POST", a, "/v1/follows", "[]");
    char longid[80];
    memset(longid, 'x', 64);
    longid[64] = '\0';
    expect_none(422, "POST", a, "/v1/follows", body_user(longid));
    expect_none(400, "POST", a, "/v1/follows", "{\"user_id\": ");
    const char *headers[] = {h_service_token("connections", a, "customer"),
                             "Content-Type: text/plain", NULL};
    h_http(&r, "POST", h_fmt("%s/v1/follows", F.svc.url), headers, "{}", 2);
    h_assert_problem(&r, 415);
    h_resp_release(&r);
    /* A body far beyond what a follow needs. */
    size_t big = 4096;
    char *body = moat_xmalloc(big + 1);
    memset(body, ' ', big);
    memcpy(body, "{\"user_id\": \"x\"", 15);
    body[big - 1] = '}';
    body[big] = '\0';
    expect_none(413, "POST", a, "/v1/follows", body);
    free(body);

    /* Paths and queries. */
    expect_none(404, "DELETE", a, "/v1/follows/a%20b", NULL);
    expect_none(404, "GET", a, "/v1/users/a%2Fb/followers", NULL);
    const char *bad_queries[] = {
        "limit=0",   "limit=101", "limit=x",   "cursor=zz",
        "cursor=00", "degree=3",  "sort=name", "limit=5&limit=6",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad_queries); i++)
        expect_none(400, "GET", a,
                    h_fmt("/v1/users/%s/connections?%s", b, bad_queries[i]),
                    NULL);
    expect_none(400, "GET", a, "/v1/connections/requests?direction=sideways",
                NULL);
    expect_none(400, "GET", a, h_fmt("/v1/connections/degree?from=%s", a),
                NULL);
    expect_none(400, "GET", a,
                h_fmt("/v1/connections/degree?from=%s&to=a%%20b", a), NULL);
    expect_none(405, "PUT", a, "/v1/follows", body_user(b));

    /* Nothing to undo or accept: 404. */
    expect_none(404, "DELETE", a, h_fmt("/v1/follows/%s", b), NULL);
    expect_none(404, "DELETE", a, h_fmt("/v1/connections/%s", b), NULL);
    expect_none(404, "POST", a, h_fmt("/v1/connections/%s/accept", b), NULL);
}

static const char *event_type(json_t *events, size_t i)
{
    return json_string_value(
        json_object_get(json_array_get(events, i), "type"));
}

static void test_events_in_feed(void **state)
{
    MOAT_UNUSED(state);
    char a[48], b[48];
    snprintf(a, sizeof(a), "%s", unique("va"));
    snprintf(b, sizeof(b), "%s", unique("vb"));
    int64_t head = feed_head();

    follow(a, b, 201);
    follow(a, b, 200); /* unchanged: no event */
    expect_none(204, "DELETE", a, h_fmt("/v1/follows/%s", b), NULL);
    connect_pair(a, b);
    expect_none(204, "DELETE", b, h_fmt("/v1/connections/%s", a), NULL);
    expect_none(201, "POST", a, "/v1/connections", body_user(b));
    expect_none(204, "DELETE", b, h_fmt("/v1/connections/%s", a), NULL);

    json_t *events = feed_after(head);
    const char *want[] = {
        "Followed",           "Unfollowed",        "ConnectionRequested",
        "ConnectionAccepted", "ConnectionRemoved", "ConnectionRequested",
        "ConnectionRemoved"};
    assert_int_equal(json_array_size(events), MOAT_ARRAY_LEN(want));
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++) {
        json_t *ev = json_array_get(events, i);
        assert_string_equal(event_type(events, i), want[i]);
        assert_string_equal(json_string_value(json_object_get(ev, "source")),
                            "moat/connections");
        assert_int_equal(
            json_integer_value(json_object_get(ev, "dataschemaversion")), 1);
    }
    json_t *data = json_object_get(json_array_get(events, 0), "data");
    assert_string_equal(json_string_value(json_object_get(data, "follower_id")),
                        a);
    assert_string_equal(json_string_value(json_object_get(data, "followee_id")),
                        b);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(events, 0), "subject")),
                        a);
    data = json_object_get(json_array_get(events, 3), "data");
    assert_string_equal(
        json_string_value(json_object_get(data, "requester_id")), a);
    assert_string_equal(
        json_string_value(json_object_get(data, "recipient_id")), b);
    data = json_object_get(json_array_get(events, 4), "data");
    assert_string_equal(json_string_value(json_object_get(data, "user_id")), b);
    assert_string_equal(json_string_value(json_object_get(data, "reason")),
                        "removed");
    data = json_object_get(json_array_get(events, 6), "data");
    assert_string_equal(json_string_value(json_object_get(data, "reason")),
                        "declined");
    json_decref(events);
}

static void test_restart_keeps_graph(void **state)
{
    MOAT_UNUSED(state);
    char a[48], b[48], c[48];
    snprintf(a, sizeof(a), "%s", unique("ra"));
    snprintf(b, sizeof(b), "%s", unique("rb"));
    snprintf(c, sizeof(c), "%s", unique("rc"));
    connect_pair(a, b);
    connect_pair(b, c);
    follow(c, a, 201);
    int64_t head = feed_head();

    assert_int_equal(h_service_stop(&F.svc), 0);
    assert_int_equal(h_service_restart(&F.svc, NULL), 0);

    assert_degree(a, c, 2);
    json_t *list = read_all(h_fmt("/v1/users/%s/followers", a), "", 5);
    const char *just_c[] = {c};
    assert_ids(list, just_c, 1);
    json_decref(list);
    assert_int_equal(feed_head(), head);
    /* The sequence goes on from where it was. */
    follow(a, c, 201);
    assert_int_equal(feed_head(), head + 1);
}

int main(int argc, char **argv)
{
    /* One test alone: pass its name (a glob). */
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_follow_unfollow_pages),
        cmocka_unit_test(test_request_accept_remove),
        cmocka_unit_test(test_degree),
        cmocka_unit_test(test_client_errors),
        cmocka_unit_test(test_events_in_feed),
        cmocka_unit_test(test_restart_keeps_graph),
    };
    return cmocka_run_group_tests_name("connections", tests, group_setup,
                                       group_teardown);
}
