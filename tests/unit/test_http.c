/*
 * Unit tests for lib/http.c: routing, limits and problem+json errors of the
 * server, exercised over real loopback sockets. The server's event loop
 * runs in a thread; the test thread is the client (libcurl easy, or raw
 * sockets for what curl would refuse to send).
 */
#include "moat/common.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/buf.h"
#include "moat/http.h"

#define MAX_BODY   4096
#define MAX_HEADER 2048

static struct event_base *base;
static struct moat_http_server *server;
static struct moat_metrics *metrics;
static pthread_t loop_thread;
static uint16_t port;

struct resp {
    long status;
    struct moat_buf body;
    struct moat_buf headers;
};

/* Echo what the router extracted: route pattern, params, a query value. */
static void echo(struct moat_req *r, void *arg)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "route", moat_req_route(r),
                          "path", moat_req_path(r), "tag", (const char *)arg,
                          "target", moat_req_target(r));
    const char *names[] = {"id", "rest", "sub"};
    for (size_t i = 0; i < 3; i++) {
        const char *v = moat_req_param(r, names[i]);
        if (v)
            json_object_set_new(o, names[i], json_string(v));
    }
    const char *q = moat_req_query(r, "q");
    if (q)
        json_object_set_new(o, "q", json_string(q));
    json_t *all = json_object();
    void *it = NULL;
    const char *k, *v;
    while (moat_req_query_next(r, &it, &k, &v))
        json_object_set_new(all, k, json_string(v));
    json_object_set_new(o, "query", all);
    moat_req_reply_json(r, 200, o);
}

static void json_echo(struct moat_req *r, void *arg)
{
    json_t *body;
    if (moat_req_json(r, &body) != MOAT_OK)
        return;
    moat_req_reply_json(r, 200, body);
}

/* A v1 document with timestamps where API v2 rewrites them and values it
 * must leave alone. */
#define STAMPED                                                                \
    "{\"id\":\"s1\",\"created_at\":1796428800,\"updated_at\":null,"            \
    "\"name_at\":\"x\",\"real_at\":1.5,\"big_at\":253402300800,\"at\":86400,"  \
    "\"count\":7,\"nested\":{\"sent_at\":0,\"list\":[{\"placed_at\":-1}]}}"

static void stamped(struct moat_req *r, void *arg)
{
    moat_req_reply_json(r, 200, json_loads(STAMPED, 0, NULL));
}

/* The same, as text the handler wrote itself. */
static void stamped_raw(struct moat_req *r, void *arg)
{
    moat_req_reply(r, 200, "application/json", STAMPED, strlen(STAMPED));
}

/* What a handler sees of a request body's timestamp, per version. */
static void stamp_in(struct moat_req *r, void *arg)
{
    json_t *body;
    if (moat_req_json(r, &body) != MOAT_OK)
        return;
    json_t *at = json_object_get(body, "created_at");
    json_t *o =
        json_pack("{s:i, s:s, s:I}", "version", moat_req_api_version(r), "type",
                  json_is_integer(at)  ? "integer"
                  : json_is_string(at) ? "string"
                                       : "other",
                  "value", json_integer_value(at));
    json_decref(body);
    moat_req_reply_json(r, 200, o);
}

static void *run_loop(void *arg)
{
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static void start_server(unsigned max_conns)
{
    evthread_use_pthreads();
    base = event_base_new();
    metrics = moat_metrics_new();
    struct moat_http_limits lim = {MAX_BODY, MAX_HEADER, max_conns, 5000, 5000};
    server = moat_http_server_new(base, &lim, metrics);
    moat_http_set_access_log(server, false);
    assert_int_equal(moat_http_route(server, MOAT_GET | MOAT_DELETE,
                                     "/v1/items/{id}", echo, (void *)"item"),
                     MOAT_OK);
    assert_int_equal(moat_http_route(server, MOAT_GET, "/v1/items/special",
                                     echo, (void *)"special"),
                     MOAT_OK);
    assert_int_equal(moat_http_route(server, MOAT_GET,
                                     "/v1/items/{id}/parts/{sub}", echo,
                                     (void *)"part"),
                     MOAT_OK);
    assert_int_equal(moat_http_route(server, MOAT_METHOD_ANY, "/api/{rest*}",
                                     echo, (void *)"api"),
                     MOAT_OK);
    assert_int_equal(moat_http_route(server, MOAT_POST, "/v1/json", json_echo,
                                     (void *)"json"),
                     MOAT_OK);
    assert_int_equal(moat_http_route(server, MOAT_GET | MOAT_HEAD,
                                     "/v1/stamped", stamped, NULL),
                     MOAT_OK);
    assert_int_equal(
        moat_http_route(server, MOAT_GET, "/v1/stamped/raw", stamped_raw, NULL),
        MOAT_OK);
    assert_int_equal(
        moat_http_route(server, MOAT_POST, "/v1/stamped", stamp_in, NULL),
        MOAT_OK);
    assert_int_equal(
        moat_http_route(server, MOAT_GET, "/v1/admin/stamped", stamped, NULL),
        MOAT_OK);
    assert_int_equal(
        moat_http_route(server, MOAT_GET, "/v1/events", stamped, NULL),
        MOAT_OK);
    assert_int_equal(moat_http_route_ex(server, MOAT_GET,
                                        "/pub/v1/stamped/{id}", stamped, NULL,
                                        MOAT_ROUTE_API_V1_DEPRECATED),
                     MOAT_OK);
    assert_int_equal(moat_http_route_ex(server, MOAT_GET,
                                        "/pub/v2/stamped/{id}", stamped, NULL,
                                        MOAT_ROUTE_API_V2),
                     MOAT_OK);
    assert_int_equal(moat_http_listen(server, "127.0.0.1", 0, &port), MOAT_OK);
    assert_true(port > 0);
    pthread_create(&loop_thread, NULL, run_loop, NULL);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(base);
}

static void stop_server(void)
{
    event_base_once(base, -1, EV_TIMEOUT, on_stop, NULL, NULL);
    pthread_join(loop_thread, NULL);
    moat_http_server_free(server);
    moat_metrics_free(metrics);
    event_base_free(base);
}

static int setup(void **state)
{
    start_server(64);
    return 0;
}

static int teardown(void **state)
{
    stop_server();
    return 0;
}

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
    moat_buf_add(arg, p, sz * n);
    return sz * n;
}

static struct resp request(const char *method, const char *path,
                           struct curl_slist *headers, const char *body,
                           size_t body_len)
{
    struct resp r = {0, MOAT_BUF_INIT, MOAT_BUF_INIT};
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", port, path);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else
        fprintf(stderr, "curl: %s\n", curl_easy_strerror(rc));
    curl_easy_cleanup(c);
    return r;
}

static void resp_release(struct resp *r)
{
    moat_buf_release(&r->body);
    moat_buf_release(&r->headers);
}

static json_t *resp_json(const struct resp *r)
{
    json_error_t e;
    json_t *j = json_loads(moat_buf_str(&r->body), 0, &e);
    if (!j)
        fail_msg("response is not JSON: %s", moat_buf_str(&r->body));
    return j;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v ? json_string_value(v) : "(absent)";
}

static void assert_problem(const struct resp *r, long status)
{
    if (r->status != status)
        fail_msg("expected %ld, got %ld: %s", status, r->status,
                 moat_buf_str(&r->body));
    assert_non_null(strcasestr(moat_buf_str(&r->headers),
                               "content-type: application/problem+json"));
    json_t *p = resp_json(r);
    assert_int_equal(json_integer_value(json_object_get(p, "status")), status);
    assert_true(json_is_string(json_object_get(p, "title")));
    assert_true(json_is_string(json_object_get(p, "type")));
    json_decref(p);
}

static void test_routing_and_params(void **state)
{
    struct resp r = request("GET", "/v1/items/abc", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    json_t *j = resp_json(&r);
    assert_string_equal(jstr(j, "route"), "/v1/items/{id}");
    assert_string_equal(jstr(j, "id"), "abc");
    json_decref(j);
    resp_release(&r);

    /* a literal segment beats a parameter */
    r = request("GET", "/v1/items/special", NULL, NULL, 0);
    j = resp_json(&r);
    assert_string_equal(jstr(j, "tag"), "special");
    json_decref(j);
    resp_release(&r);

    /* parameters are decoded one by one: %2F stays inside the id */
    r = request("GET", "/v1/items/a%2Fb%20c/parts/x?q=hello%20there", NULL,
                NULL, 0);
    assert_int_equal(r.status, 200);
    j = resp_json(&r);
    assert_string_equal(jstr(j, "route"), "/v1/items/{id}/parts/{sub}");
    assert_string_equal(jstr(j, "id"), "a/b c");
    assert_string_equal(jstr(j, "sub"), "x");
    assert_string_equal(jstr(j, "q"), "hello there");
    json_decref(j);
    resp_release(&r);

    /* keys and values decoded; a key without "=" is kept with "" */
    r = request("GET", "/v1/items/1?a=1&flag&c=x+y&k%2Ey=v%26w&&", NULL, NULL,
                0);
    assert_int_equal(r.status, 200);
    j = resp_json(&r);
    json_t *q = json_object_get(j, "query");
    assert_int_equal(json_object_size(q), 4);
    assert_string_equal(jstr(q, "a"), "1");
    assert_string_equal(jstr(q, "flag"), "");
    assert_string_equal(jstr(q, "c"), "x y");
    assert_string_equal(jstr(q, "k.y"), "v&w");
    json_decref(j);
    resp_release(&r);
    r = request("GET", "/v1/items/1?a=%00", NULL, NULL, 0);
    assert_int_equal(r.status, 400);
    resp_release(&r);
    struct moat_buf many = MOAT_BUF_INIT;
    moat_buf_addstr(&many, "/v1/items/1?");
    for (int i = 0; i <= MOAT_HTTP_MAX_QUERY_PARAMS; i++)
        moat_buf_printf(&many, "p%d=1&", i);
    r = request("GET", moat_buf_str(&many), NULL, NULL, 0);
    assert_int_equal(r.status, 400);
    resp_release(&r);
    moat_buf_release(&many);

    /* {rest*} takes zero or more segments */
    r = request("PATCH", "/api/v1/things/7", NULL, NULL, 0);
    j = resp_json(&r);
    assert_string_equal(jstr(j, "rest"), "v1/things/7");
    json_decref(j);
    resp_release(&r);
    r = request("GET", "/api", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    resp_release(&r);
}

static void test_not_found_and_method(void **state)
{
    struct resp r = request("GET", "/nope", NULL, NULL, 0);
    assert_problem(&r, 404);
    resp_release(&r);
    r = request("GET", "/v1/items", NULL, NULL, 0);
    assert_problem(&r, 404);
    resp_release(&r);
    r = request("GET", "/v1/items/a/b/c/d/e", NULL, NULL, 0);
    assert_problem(&r, 404);
    resp_release(&r);

    r = request("POST", "/v1/items/abc", NULL, "{}", 2);
    assert_problem(&r, 405);
    assert_non_null(strcasestr(moat_buf_str(&r.headers), "allow: GET, DELETE"));
    resp_release(&r);

    /* %00 in a path never reaches a handler */
    r = request("GET", "/v1/items/a%00b", NULL, NULL, 0);
    assert_problem(&r, 400);
    resp_release(&r);
}

static void test_bad_patterns(void **state)
{
    const char *bad[] = {
        "nope",  "/a//b",   "/a/",  "/a/{x*}/b",
        "/a/{}", "/a/b{c}", "/a/{", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        assert_int_equal(moat_http_route(server, MOAT_GET, bad[i], echo, NULL),
                         MOAT_EINVAL);
    assert_int_equal(
        moat_http_route(server, MOAT_GET, "/v1/items/{id}", echo, NULL),
        MOAT_ECONFLICT);
}

static void test_json_body(void **state)
{
    struct curl_slist *json =
        curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *patch = curl_slist_append(
        NULL, "Content-Type: application/merge-patch+json; charset=utf-8");
    struct curl_slist *text =
        curl_slist_append(NULL, "Content-Type: text/plain");

    struct resp r = request("POST", "/v1/json", json, "{\"a\":1}", 7);
    assert_int_equal(r.status, 200);
    assert_string_equal(moat_buf_str(&r.body), "{\"a\":1}");
    resp_release(&r);
    r = request("POST", "/v1/json", patch, "{\"a\":null}", 10);
    assert_int_equal(r.status, 200);
    resp_release(&r);

    r = request("POST", "/v1/json", text, "{\"a\":1}", 7);
    assert_problem(&r, 415);
    resp_release(&r);

    const char *bad[] = {"{\"a\":",
                         "{\"a\":1,\"a\":2}",
                         "{\"a\":\"\\u0000\"}",
                         "{\"a\":1} trailing",
                         "\xff\xfe",
                         ""};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        r = request("POST", "/v1/json", json, bad[i], strlen(bad[i]));
        assert_problem(&r, 400);
        resp_release(&r);
    }
    curl_slist_free_all(json);
    curl_slist_free_all(patch);
    curl_slist_free_all(text);
}

static void test_limits_are_problem_json(void **state)
{
    struct curl_slist *json =
        curl_slist_append(NULL, "Content-Type: application/json");
    /* Over the body limit: evhttp refuses it; the answer is still ours. */
    size_t n = 64 * 1024;
    char *big = moat_xmalloc(n);
    memset(big, ' ', n);
    struct resp r = request("POST", "/v1/json", json, big, n);
    assert_problem(&r, 413);
    resp_release(&r);
    free(big);

    /* Headers over our limit: 431 from the router... */
    char hdr[8192];
    memset(hdr, 'a', sizeof(hdr));
    memcpy(hdr, "X-Big: ", 7);
    hdr[3000] = '\0';
    struct curl_slist *h = curl_slist_append(NULL, hdr);
    r = request("GET", "/v1/items/1", h, NULL, 0);
    assert_problem(&r, 431);
    resp_release(&r);
    curl_slist_free_all(h);
    /* ...and over evhttp's backstop (2x): 431 from evhttp, still JSON. */
    hdr[sizeof(hdr) - 1] = '\0';
    h = curl_slist_append(NULL, hdr);
    r = request("GET", "/v1/items/1", h, NULL, 0);
    assert_problem(&r, 431);
    resp_release(&r);
    curl_slist_free_all(h);
    curl_slist_free_all(json);

    /* The server is still fine. */
    r = request("GET", "/v1/items/ok", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    resp_release(&r);
}

static int raw_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Read until the peer closes, a full response with body arrives, or ms
 * pass. Returns bytes read. */
static size_t raw_read(int fd, char *buf, size_t cap, int ms)
{
    size_t got = 0;
    uint64_t deadline = moat_mono_ms() + (uint64_t)ms;
    while (got + 1 < cap) {
        int left = (int)(deadline - moat_mono_ms());
        if (left <= 0)
            break;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, left) <= 0)
            break;
        ssize_t k = read(fd, buf + got, cap - 1 - got);
        if (k <= 0)
            break;
        got += (size_t)k;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n") && buf[got - 1] == '}')
            break;
    }
    buf[got] = '\0';
    return got;
}

static void test_malformed_request_line(void **state)
{
    int fd = raw_connect();
    const char *junk = "GARBAGE\r\n\r\n";
    assert_int_equal(write(fd, junk, strlen(junk)), (ssize_t)strlen(junk));
    char buf[4096];
    raw_read(fd, buf, sizeof(buf), 2000);
    close(fd);
    assert_non_null(strstr(buf, "HTTP/1.1 400"));
    assert_non_null(strcasestr(buf, "application/problem+json"));
}

/* A target that is neither origin-form nor an http(s) URL is refused
 * before routing; an absolute-form one is served as its path: the path the
 * router matches is the one everything else reads (moat_req_target). */
static void test_non_origin_form_target(void **state)
{
    const char *refused[] = {
        "GET x:/api/v1/a?://h/v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET //h/v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://u@h/v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/items/1#f HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(refused); i++) {
        int fd = raw_connect();
        assert_int_equal(write(fd, refused[i], strlen(refused[i])),
                         (ssize_t)strlen(refused[i]));
        char buf[4096];
        raw_read(fd, buf, sizeof(buf), 2000);
        close(fd);
        assert_non_null(strstr(buf, "HTTP/1.1 400"));
        assert_non_null(strcasestr(buf, "application/problem+json"));
    }
    const char *req =
        "GET HTTP://h:80/v1/items/%41b?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    int fd = raw_connect();
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    char buf[4096];
    raw_read(fd, buf, sizeof(buf), 2000);
    close(fd);
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    assert_non_null(strstr(buf, "\"target\":\"/v1/items/%41b?x=1\""));
    assert_non_null(strstr(buf, "\"id\":\"Ab\""));
}

static void test_trace_and_request_id(void **state)
{
    struct curl_slist *h = curl_slist_append(NULL, "X-Request-Id: req-123");
    struct resp r = request("GET", "/v1/items/1", h, NULL, 0);
    assert_non_null(
        strcasestr(moat_buf_str(&r.headers), "x-request-id: req-123"));
    resp_release(&r);
    curl_slist_free_all(h);
    /* an invalid id is replaced, never echoed */
    h = curl_slist_append(NULL, "X-Request-Id: bad id <script>");
    r = request("GET", "/v1/items/1", h, NULL, 0);
    assert_null(strstr(moat_buf_str(&r.headers), "<script>"));
    assert_non_null(strcasestr(moat_buf_str(&r.headers), "x-request-id: "));
    resp_release(&r);
    curl_slist_free_all(h);
}

static void test_metrics_by_route(void **state)
{
    struct resp r = request("GET", "/v1/items/m1", NULL, NULL, 0);
    resp_release(&r);
    r = request("GET", "/zzz", NULL, NULL, 0);
    resp_release(&r);
    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(metrics, &out);
    const char *s = moat_buf_str(&out);
    assert_non_null(strstr(s, "moat_http_requests_total{route=\"/v1/items/"
                              "{id}\",method=\"GET\",status=\"200\"}"));
    /* unrouted paths share one label value: no cardinality explosion */
    assert_non_null(strstr(s, "moat_http_requests_total{route=\"_unmatched\","
                              "method=\"GET\",status=\"404\"}"));
    assert_null(strstr(s, "/zzz"));
    assert_non_null(strstr(s, "moat_http_request_duration_seconds_bucket{"
                              "route=\"/v1/items/{id}\",le=\"+Inf\"}"));
    moat_buf_release(&out);
}

/* With a cap of one connection, a second client waits until the first
 * disconnects, then is served. */
static void test_connection_cap(void **state)
{
    stop_server();
    start_server(1);
    const char *req = "GET /v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n";
    char buf[4096];
    int a = raw_connect();
    assert_int_equal(write(a, req, strlen(req)), (ssize_t)strlen(req));
    raw_read(a, buf, sizeof(buf), 2000);
    assert_non_null(strstr(buf, "HTTP/1.1 200"));

    int b = raw_connect(); /* sits in the kernel backlog */
    assert_int_equal(write(b, req, strlen(req)), (ssize_t)strlen(req));
    assert_int_equal(raw_read(b, buf, sizeof(buf), 300), 0);
    assert_int_equal(moat_http_connections(server), 1);

    close(a);
    raw_read(b, buf, sizeof(buf), 3000);
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    close(b);
}

static void test_idem_key_parse(void **state)
{
    MOAT_UNUSED(state);
    char key[MOAT_IDEM_KEY_MAX + 1], big[MOAT_IDEM_KEY_MAX + 3];
    assert_true(moat_idem_key_parse("k-1_A.~!", key));
    assert_string_equal(key, "k-1_A.~!");
    assert_true(moat_idem_key_parse("\"quoted\"", key));
    assert_string_equal(key, "quoted");
    assert_false(moat_idem_key_parse("", key));
    assert_false(moat_idem_key_parse("\"\"", key));
    assert_false(moat_idem_key_parse("has space", key));
    assert_false(moat_idem_key_parse("a\"b", key));
    assert_false(moat_idem_key_parse("caf\xc3\xa9", key));
    memset(big, 'k', MOAT_IDEM_KEY_MAX);
    big[MOAT_IDEM_KEY_MAX] = '\0';
    assert_true(moat_idem_key_parse(big, key));
    big[MOAT_IDEM_KEY_MAX] = 'k';
    big[MOAT_IDEM_KEY_MAX + 1] = '\0';
    assert_false(moat_idem_key_parse(big, key));
}

/* The v2 rendering of STAMPED: only integer timestamps in range change. */
#define STAMPED_V2                                                             \
    "{\"id\":\"s1\",\"created_at\":\"2026-12-05T00:00:00Z\","                  \
    "\"updated_at\":null,\"name_at\":\"x\",\"real_at\":1.5,"                   \
    "\"big_at\":253402300800,\"at\":\"1970-01-02T00:00:00Z\",\"count\":7,"     \
    "\"nested\":{\"sent_at\":\"1970-01-01T00:00:00Z\",\"list\":[{"             \
    "\"placed_at\":\"1969-12-31T23:59:59Z\"}]}}"

static void test_api_v2_representation(void **state)
{
    /* v1: the handler's bytes, and no deprecation headers (services' /v1
     * is also the internal contract). */
    struct resp r = request("GET", "/v1/stamped", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(moat_buf_str(&r.body), STAMPED);
    assert_null(strcasestr(moat_buf_str(&r.headers), "deprecation:"));
    resp_release(&r);

    const char *v2_paths[] = {"/v2/stamped", "/v2/stamped/raw"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(v2_paths); i++) {
        r = request("GET", v2_paths[i], NULL, NULL, 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(moat_buf_str(&r.body), STAMPED_V2);
        assert_non_null(strcasestr(moat_buf_str(&r.headers),
                                   "content-type: application/json"));
        resp_release(&r);
    }
    /* HEAD: the length of the v2 body. */
    r = request("HEAD", "/v2/stamped", NULL, NULL, 0);
    char cl[64];
    snprintf(cl, sizeof(cl), "content-length: %zu", strlen(STAMPED_V2));
    assert_non_null(strcasestr(moat_buf_str(&r.headers), cl));
    resp_release(&r);
}

static void test_api_v2_routing(void **state)
{
    /* Parameters, literal-over-parameter, 405 and 404 as on v1. */
    struct resp r = request("GET", "/v2/items/abc", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    json_t *j = resp_json(&r);
    assert_string_equal(jstr(j, "route"), "/v2/items/{id}");
    assert_string_equal(jstr(j, "path"), "/v2/items/abc");
    assert_string_equal(jstr(j, "id"), "abc");
    json_decref(j);
    resp_release(&r);
    r = request("GET", "/v2/items/special", NULL, NULL, 0);
    j = resp_json(&r);
    assert_string_equal(jstr(j, "tag"), "special");
    json_decref(j);
    resp_release(&r);
    r = request("POST", "/v2/items/abc", NULL, "{}", 2);
    assert_problem(&r, 405);
    resp_release(&r);
    /* Internal routes have no v2; nor does a path that is not v1's. */
    const char *missing[] = {"/v2/admin/stamped", "/v2/events", "/v2/nothing",
                             "/v2", "/v3/stamped"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(missing); i++) {
        r = request("GET", missing[i], NULL, NULL, 0);
        assert_problem(&r, 404);
        resp_release(&r);
    }
    r = request("GET", "/v1/admin/stamped", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    resp_release(&r);

    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(metrics, &out);
    assert_non_null(strstr(moat_buf_str(&out),
                           "moat_http_requests_total{route=\"/v2/items/"
                           "{id}\",method=\"GET\",status=\"200\"}"));
    assert_non_null(strstr(moat_buf_str(&out),
                           "moat_http_request_duration_seconds_bucket{"
                           "route=\"/v2/items/{id}\",le=\"+Inf\"}"));
    moat_buf_release(&out);
}

static void test_api_v2_request_body(void **state)
{
    struct curl_slist *h =
        curl_slist_append(NULL, "Content-Type: application/json");
    const char *v2body = "{\"created_at\":\"2026-12-05T01:00:00+01:00\"}";
    struct resp r = request("POST", "/v2/stamped", h, v2body, strlen(v2body));
    assert_int_equal(r.status, 200);
    assert_string_equal(moat_buf_str(&r.body), "{\"version\":2,\"type\":"
                                               "\"integer\",\"value\":"
                                               "1796428800}");
    resp_release(&r);
    /* Not a timestamp: passed on for the handler to refuse. */
    const char *bad = "{\"created_at\":\"2026-02-30T00:00:00Z\"}";
    r = request("POST", "/v2/stamped", h, bad, strlen(bad));
    assert_string_equal(moat_buf_str(&r.body), "{\"version\":2,\"type\":"
                                               "\"string\",\"value\":0}");
    resp_release(&r);
    /* v1 bodies are never touched. */
    r = request("POST", "/v1/stamped", h, v2body, strlen(v2body));
    assert_string_equal(moat_buf_str(&r.body), "{\"version\":1,\"type\":"
                                               "\"string\",\"value\":0}");
    resp_release(&r);
    curl_slist_free_all(h);
}

static void test_api_flags(void **state)
{
    /* A deprecated public v1 route: same body, three headers. */
    struct resp r = request("GET", "/pub/v1/stamped/a%2Fb", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(moat_buf_str(&r.body), STAMPED);
    const char *h = moat_buf_str(&r.headers);
    assert_non_null(strcasestr(h, "deprecation: @1796428800\r\n"));
    assert_non_null(strcasestr(h, "sunset: Wed, 30 Jun 2027 00:00:00 GMT\r\n"));
    assert_non_null(strcasestr(h, "link: </pub/v2/stamped/a%2Fb>; "
                                  "rel=\"successor-version\"\r\n"));
    resp_release(&r);
    /* Errors on it too: the route is deprecated whatever the answer. */
    r = request("POST", "/pub/v1/stamped/a", NULL, "{}", 2);
    assert_problem(&r, 405);
    assert_non_null(strcasestr(moat_buf_str(&r.headers), "deprecation: @"));
    resp_release(&r);
    /* A route that is v2 by registration. */
    r = request("GET", "/pub/v2/stamped/a", NULL, NULL, 0);
    assert_string_equal(moat_buf_str(&r.body), STAMPED_V2);
    assert_null(strcasestr(moat_buf_str(&r.headers), "deprecation:"));
    resp_release(&r);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_and_params),
        cmocka_unit_test(test_not_found_and_method),
        cmocka_unit_test(test_bad_patterns),
        cmocka_unit_test(test_json_body),
        cmocka_unit_test(test_limits_are_problem_json),
        cmocka_unit_test(test_malformed_request_line),
        cmocka_unit_test(test_non_origin_form_target),
        cmocka_unit_test(test_trace_and_request_id),
        cmocka_unit_test(test_metrics_by_route),
        cmocka_unit_test(test_connection_cap),
        cmocka_unit_test(test_idem_key_parse),
        cmocka_unit_test(test_api_v2_representation),
        cmocka_unit_test(test_api_v2_routing),
        cmocka_unit_test(test_api_v2_request_body),
        cmocka_unit_test(test_api_flags),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    libevent_global_shutdown();
    return rc;
}
