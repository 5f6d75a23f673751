/*
 * test_http_client.c - moat_http_client against an evhttp server running on
 * the same event_base, plus a "black hole" listener that accepts TCP
 * connections in the kernel but never reads them (for timeouts and pending
 * calls).
 */
#include "moat/common.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/http_client.h"
#include "moat/trace.h"

#define TEST_DEADLINE_MS 3000
#define NCONCURRENT      300

static struct event_base *base;
static struct evhttp *server;
static uint16_t server_port;
static int blackhole_fd = -1;
static uint16_t blackhole_port;
static bool in_send; /* set around moat_http_client_send calls */

/* --- test server --- */

static void add_line(struct evbuffer *b, struct evkeyvalq *h, const char *name)
{
    const char *v = evhttp_find_header(h, name);
    evbuffer_add_printf(b, "%s=%s\n", name, v ? v : "(none)");
}

/* Describes what the server received, one "name=value" per line. */
static void on_headers(struct evhttp_request *req, void *arg)
{
    struct evbuffer *b = evbuffer_new();
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    evbuffer_add_printf(b, "method=%d\n", (int)evhttp_request_get_command(req));
    evbuffer_add_printf(b, "uri=%s\n", evhttp_request_get_uri(req));
    add_line(b, in, "traceparent");
    add_line(b, in, "X-Request-Id");
    add_line(b, in, "X-Custom");
    add_line(b, in, "X-Empty");
    add_line(b, in, "Content-Type");
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Test-Header",
                      "  Hello World  ");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

/* Echoes method, content type and body; the body comes back verbatim. */
static void on_echo(struct evhttp_request *req, void *arg)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    const char *ct = evhttp_find_header(in, "Content-Type");
    const char *cl = evhttp_find_header(in, "Content-Length");
    char method[16];
    snprintf(method, sizeof(method), "%d",
             (int)evhttp_request_get_command(req));
    evhttp_add_header(out, "X-Method", method);
    evhttp_add_header(out, "X-Content-Type", ct ? ct : "(none)");
    evhttp_add_header(out, "X-Content-Length", cl ? cl : "(none)");
    evhttp_send_reply(req, 201, "Created",
                      evhttp_request_get_input_buffer(req));
}

/* Remote port of the connection, so tests can see keep-alive reuse. */
static void on_port(struct evhttp_request *req, void *arg)
{
    struct evbuffer *b = evbuffer_new();
    char *addr = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr,
                               &port);
    evbuffer_add_printf(b, "%u", (unsigned)port);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void on_big(struct evhttp_request *req, void *arg)
{
    struct evbuffer *b = evbuffer_new();
    char chunk[1024];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 64; i++)
        evbuffer_add(b, chunk, sizeof(chunk));
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

/* Chunked: no Content-Length, so only the body callback can see the cap. */
static void on_big_chunked(struct evhttp_request *req, void *arg)
{
    struct evbuffer *b = evbuffer_new();
    char chunk[1024];
    memset(chunk, 'y', sizeof(chunk));
    evhttp_send_reply_start(req, 200, "OK");
    for (int i = 0; i < 64; i++) {
        evbuffer_add(b, chunk, sizeof(chunk));
        evhttp_send_reply_chunk(req, b);
    }
    evhttp_send_reply_end(req);
    evbuffer_free(b);
}

static uint16_t local_port(int fd)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    return ntohs(sa.sin_port);
}

static int listen_loopback(int backlog)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    if (backlog > 0)
        assert_int_equal(listen(fd, backlog), 0);
    return fd;
}

static int group_setup(void **state)
{
    base = event_base_new();
    server = evhttp_new(base);
    assert_non_null(server);
    evhttp_set_allowed_methods(server, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                           EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH |
                                           EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD);
    evhttp_set_cb(server, "/headers", on_headers, NULL);
    evhttp_set_cb(server, "/echo", on_echo, NULL);
    evhttp_set_cb(server, "/port", on_port, NULL);
    evhttp_set_cb(server, "/big", on_big, NULL);
    evhttp_set_cb(server, "/bigchunked", on_big_chunked, NULL);
    struct evhttp_bound_socket *bs =
        evhttp_bind_socket_with_handle(server, "127.0.0.1", 0);
    assert_non_null(bs);
    server_port = local_port(evhttp_bound_socket_get_fd(bs));

    /* Listens, so connects succeed, but never accepts nor reads. */
    blackhole_fd = listen_loopback(64);
    blackhole_port = local_port(blackhole_fd);
    return 0;
}

static int group_teardown(void **state)
{
    evhttp_free(server);
    event_base_free(base);
    close(blackhole_fd);
    return 0;
}

/* --- helpers --- */

struct result {
    int calls; /* times the callback ran */
    int err;
    bool connect_failed;
    int status;
    char *body; /* copies: the response dies with the callback */
    size_t body_len;
    char *header_dump; /* "name: value\n" for every header */
    double elapsed_ms;
    bool cb_in_send;
};

static void result_release(struct result *r)
{
    free(r->body);
    free(r->header_dump);
    memset(r, 0, sizeof(*r));
}

static void on_done(const struct moat_http_response *resp, void *arg)
{
    struct result *r = arg;
    r->calls++;
    r->cb_in_send = in_send;
    r->err = resp->err;
    r->connect_failed = resp->connect_failed;
    r->status = resp->status;
    r->elapsed_ms = resp->elapsed_ms;
    assert_non_null(resp->body);
    if (resp->err != MOAT_OK)
        assert_non_null(resp->err_msg);
    free(r->body);
    r->body = moat_xmalloc(resp->body_len + 1);
    memcpy(r->body, resp->body, resp->body_len + 1);
    r->body_len = resp->body_len;
    size_t cap = 1, len = 0;
    for (size_t i = 0; i < resp->nheaders; i++)
        cap +=
            strlen(resp->headers[i].name) + strlen(resp->headers[i].value) + 3;
    free(r->header_dump);
    r->header_dump = moat_xmalloc(cap);
    r->header_dump[0] = '\0';
    for (size_t i = 0; i < resp->nheaders; i++)
        len += (size_t)snprintf(r->header_dump + len, cap - len, "%s: %s\n",
                                resp->headers[i].name, resp->headers[i].value);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    *(bool *)arg = true;
}

/* Run the loop until *counter reaches target or max_ms pass. */
static void run_until(const int *counter, int target, long max_ms)
{
    bool expired = false;
    struct event *guard = evtimer_new(base, on_guard, &expired);
    struct timeval tv = {max_ms / 1000, (max_ms % 1000) * 1000};
    evtimer_add(guard, &tv);
    while (*counter < target && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(guard);
}

static int send_call(struct moat_http_client *c,
                     const struct moat_http_call *call, struct result *r)
{
    in_send = true;
    int rc = moat_http_client_send(c, call, on_done, r);
    in_send = false;
    return rc;
}

static char *url(uint16_t port, const char *path)
{
    return moat_xasprintf("http://127.0.0.1:%u%s", (unsigned)port, path);
}

static struct moat_http_client *client_new(long timeout_ms, size_t max_resp)
{
    struct moat_http_client *c = NULL;
    /* Fewer connections than NCONCURRENT: calls must queue for one. More
     * than the test server's listen backlog (128) could drop SYNs, whose
     * retry (1 s) is beyond the connect timeout. */
    struct moat_http_client_options o = {.connect_timeout_ms = 500,
                                         .timeout_ms = timeout_ms,
                                         .max_response = max_resp,
                                         .max_host_conns = 32};
    assert_int_equal(moat_http_client_new(&c, base, &o), MOAT_OK);
    return c;
}

/* --- tests --- */

static void test_get_headers_and_trace(void **state)
{
    struct moat_http_client *c = client_new(2000, 0);
    struct moat_trace t;
    moat_trace_start(&t, NULL, "req-abc.123");
    char tp[MOAT_TRACEPARENT_LEN + 1];
    moat_trace_format(&t, tp);
    struct moat_http_header hdrs[] = {
        {"X-Custom", "value 1"},
        {"X-Empty", ""},
        /* Overridden by the trace: must not reach the server. */
        {"traceparent", "00-bogus"},
    };
    char *u = url(server_port, "/headers?a=1&b=%20x");
    struct moat_http_call call = {.method = "GET",
                                  .url = u,
                                  .headers = hdrs,
                                  .nheaders = MOAT_ARRAY_LEN(hdrs),
                                  .trace = &t};
    struct result r = {0};
    assert_int_equal(send_call(c, &call, &r), MOAT_OK);
    free(u); /* the call was copied */
    assert_int_equal(r.calls, 0);
    run_until(&r.calls, 1, TEST_DEADLINE_MS);

    assert_int_equal(r.calls, 1);
    assert_false(r.cb_in_send);
    assert_int_equal(r.err, MOAT_OK);
    assert_int_equal(r.status, 200);
    char expect[256];
    snprintf(expect, sizeof(expect), "traceparent=%s\n", tp);
    assert_non_null(strstr(r.body, expect));
    assert_non_null(strstr(r.body, "X-Request-Id=req-abc.123\n"));
    assert_non_null(strstr(r.body, "X-Custom=value 1\n"));
    assert_non_null(strstr(r.body, "X-Empty=\n"));
    assert_non_null(strstr(r.body, "uri=/headers?a=1&b=%20x\n"));
    assert_non_null(strstr(r.body, "Content-Type=(none)\n"));
    snprintf(expect, sizeof(expect), "method=%d\n", (int)EVHTTP_REQ_GET);
    assert_non_null(strstr(r.body, expect));
    /* Names lowercase, values trimmed. */
    assert_non_null(strstr(r.header_dump, "x-test-header: Hello World\n"));
    assert_non_null(strstr(r.header_dump, "content-length: "));
    result_release(&r);
    moat_http_client_free(c);
}

static void test_response_header_lookup(void **state)
{
    struct moat_http_header h[] = {{"content-type", "text/plain"},
                                   {"etag", "\"3\""}};
    struct moat_http_response r = {.headers = h, .nheaders = 2};
    assert_string_equal(moat_http_response_header(&r, "ETag"), "\"3\"");
    assert_string_equal(moat_http_response_header(&r, "Content-Type"),
                        "text/plain");
    assert_null(moat_http_response_header(&r, "Location"));
}

static void test_post_body_echo(void **state)
{
    struct moat_http_client *c = client_new(2000, 0);
    static const char body[] = "{\"a\":1}\0binary\xff";
    struct moat_http_header hdrs[] = {
        {"Content-Type", "application/octet-stream"}};
    char *u = url(server_port, "/echo");
    struct moat_http_call call = {.method = "POST",
                                  .url = u,
                                  .headers = hdrs,
                                  .nheaders = 1,
                                  .body = body,
                                  .body_len = sizeof(body) - 1};
    struct result r = {0};
    assert_int_equal(send_call(c, &call, &r), MOAT_OK);
    run_until(&r.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.err, MOAT_OK);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.body_len, sizeof(body) - 1);
    assert_memory_equal(r.body, body, sizeof(body) - 1);
    assert_non_null(
        strstr(r.header_dump, "x-content-type: application/octet-stream\n"));
    result_release(&r);

    /* A body without Content-Type is sent without one (curl would add a
     * form type), and PUT with no body still says Content-Length: 0. */
    call.headers = NULL;
    call.nheaders = 0;
    call.method = "PATCH";
    assert_int_equal(send_call(c, &call, &r), MOAT_OK);
    run_until(&r.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(r.err, MOAT_OK);
    assert_non_null(strstr(r.header_dump, "x-content-type: (none)\n"));
    char expect[64];
    snprintf(expect, sizeof(expect), "x-method: %d\n", (int)EVHTTP_REQ_PATCH);
    assert_non_null(strstr(r.header_dump, expect));
    assert_memory_equal(r.body, body, sizeof(body) - 1);
    result_release(&r);

    call.method = "PUT";
    call.body = NULL;
    call.body_len = 0;
    assert_int_equal(send_call(c, &call, &r), MOAT_OK);
    run_until(&r.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(r.err, MOAT_OK);
    assert_int_equal(r.body_len, 0);
    assert_non_null(strstr(r.header_dump, "x-content-length: 0\n"));
    result_release(&r);

    /* HEAD: no body expected, must not wait for one. */
    call.method = "HEAD";
    assert_int_equal(send_call(c, &call, &r), MOAT_OK);
    run_until(&r.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(r.err, MOAT_OK);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.body_len, 0);
    result_release(&r);
    free(u);
    moat_http_client_free(c);
}

static void test_keepalive_reuses_connection(void **state)
{
    struct moat_http_client *c = client_new(2000, 0);
    char *u = url(server_port, "/port");
    struct moat_http_call call = {.method = "GET", .url = u};
    struct result a = {0}, b = {0};
    assert_int_equal(send_call(c, &call, &a), MOAT_OK);
    run_until(&a.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(send_call(c, &call, &b), MOAT_OK);
    run_until(&b.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(a.err, MOAT_OK);
    assert_int_equal(b.err, MOAT_OK);
    assert_string_equal(a.body, b.body);
    result_release(&a);
    result_release(&b);
    free(u);
    moat_http_client_free(c);
}

static void test_timeout(void **state)
{
    struct moat_http_client *c = client_new(5000, 0);
    char *u = url(blackhole_port, "/never");
    struct moat_http_call call = {.method = "GET", .url = u, .timeout_ms = 200};
    struct result r = {0};
    uint64_t t0 = moat_mono_ms();
    assert_int_equal(send_call(c, &call, &r), MOAT_OK);
    run_until(&r.calls, 1, TEST_DEADLINE_MS);
    uint64_t took = moat_mono_ms() - t0;
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.err, MOAT_ETIMEDOUT);
    assert_false(r.connect_failed); /* connected, then no answer */
    assert_int_equal(r.status, 0);
    assert_in_range(took, 150, 1000);
    assert_in_range((uint64_t)r.elapsed_ms, 150, 1000);
    result_release(&r);
    free(u);
    moat_http_client_free(c);
}

static void test_connection_refused(void **state)
{
    /* A port that was just ours and is closed now: nobody listens. */
    int fd = listen_loopback(0);
    uint16_t port = local_port(fd);
    close(fd);

    struct moat_http_client *c = client_new(2000, 0);
    char *u = url(port, "/x");
    struct moat_http_call call = {.method = "GET", .url = u};
    struct result r = {0};
    uint64_t t0 = moat_mono_ms();
    assert_int_equal(send_call(c, &call, &r), MOAT_OK);
    run_until(&r.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.err, MOAT_EIO);
    assert_true(r.connect_failed);
    assert_int_equal(r.status, 0);
    assert_true(moat_mono_ms() - t0 < 500);
    result_release(&r);
    free(u);
    moat_http_client_free(c);
}

static void test_response_cap(void **state)
{
    struct moat_http_client *c = client_new(2000, 1024);
    static const char *const paths[] = {"/big", "/bigchunked"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(paths); i++) {
        char *u = url(server_port, paths[i]);
        struct moat_http_call call = {.method = "GET", .url = u};
        struct result r = {0};
        assert_int_equal(send_call(c, &call, &r), MOAT_OK);
        run_until(&r.calls, 1, TEST_DEADLINE_MS);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.err, MOAT_ETOOBIG);
        assert_int_equal(r.body_len, 0);
        result_release(&r);
        free(u);
    }
    moat_http_client_free(c);
}

static void test_many_concurrent(void **state)
{
    struct moat_http_client *c = client_new(3000, 0);
    struct result *r = moat_xcalloc(NCONCURRENT, sizeof(*r));
    char *u = url(server_port, "/echo");
    int done = 0;
    for (int i = 0; i < NCONCURRENT; i++) {
        char body[32];
        int n = snprintf(body, sizeof(body), "call %d", i);
        struct moat_http_call call = {
            .method = "POST", .url = u, .body = body, .body_len = (size_t)n};
        assert_int_equal(send_call(c, &call, &r[i]), MOAT_OK);
    }
    assert_int_equal(moat_http_client_pending(c), NCONCURRENT);
    uint64_t deadline = moat_mono_ms() + TEST_DEADLINE_MS;
    while (moat_http_client_pending(c) > 0 && moat_mono_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    for (int i = 0; i < NCONCURRENT; i++) {
        char body[32];
        snprintf(body, sizeof(body), "call %d", i);
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, MOAT_OK);
        assert_string_equal(r[i].body, body);
        done++;
        result_release(&r[i]);
    }
    assert_int_equal(done, NCONCURRENT);
    free(r);
    free(u);
    moat_http_client_free(c);
}

/* Calls queued for a free connection (max_host_conns) still time out. */
static void test_queued_calls_time_out(void **state)
{
    struct moat_http_client *c = NULL;
    struct moat_http_client_options o = {.timeout_ms = 200,
                                         .max_host_conns = 1};
    assert_int_equal(moat_http_client_new(&c, base, &o), MOAT_OK);
    char *u = url(blackhole_port, "/never");
    struct moat_http_call call = {.method = "GET", .url = u};
    struct result r[3] = {{0}};
    int done = 0;
    uint64_t t0 = moat_mono_ms();
    for (int i = 0; i < 3; i++)
        assert_int_equal(send_call(c, &call, &r[i]), MOAT_OK);
    while (done < 3 && moat_mono_ms() - t0 < TEST_DEADLINE_MS) {
        event_base_loop(base, EVLOOP_ONCE);
        done = r[0].calls + r[1].calls + r[2].calls;
    }
    assert_int_equal(done, 3);
    assert_true(moat_mono_ms() - t0 < 1000);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].err, MOAT_ETIMEDOUT);
        result_release(&r[i]);
    }
    free(u);
    moat_http_client_free(c);
}

static void test_free_cancels_pending(void **state)
{
    struct moat_http_client *c = client_new(5000, 0);
    char *u = url(blackhole_port, "/never");
    struct moat_http_call call = {.method = "GET", .url = u};
    struct result r[3] = {{0}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(send_call(c, &call, &r[i]), MOAT_OK);
    /* Let the first two connect and send; the third never starts. */
    int never = 0;
    run_until(&never, 1, 100);
    assert_int_equal(send_call(c, &call, &r[2]), MOAT_OK);
    assert_int_equal(moat_http_client_pending(c), 3);
    moat_http_client_free(c);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, MOAT_ECANCELLED);
        result_release(&r[i]);
    }
    free(u);
}

struct free_ctx {
    struct moat_http_client *client;
    struct result *other;
    int calls;
    int send_rc;
};

static void on_done_free(const struct moat_http_response *resp, void *arg)
{
    struct free_ctx *f = arg;
    f->calls++;
    assert_int_equal(resp->err, MOAT_OK);
    moat_http_client_free(f->client);
    /* The other call was cancelled inside free. */
    assert_int_equal(f->other->calls, 1);
    assert_int_equal(f->other->err, MOAT_ECANCELLED);
}

static void test_free_from_callback(void **state)
{
    struct moat_http_client *c = client_new(5000, 0);
    char *fast = url(server_port, "/echo");
    char *slow = url(blackhole_port, "/never");
    struct result other = {0};
    struct free_ctx f = {.client = c, .other = &other};
    struct moat_http_call call = {.method = "GET", .url = slow};
    assert_int_equal(send_call(c, &call, &other), MOAT_OK);
    call.url = fast;
    assert_int_equal(moat_http_client_send(c, &call, on_done_free, &f),
                     MOAT_OK);
    run_until(&f.calls, 1, TEST_DEADLINE_MS);
    assert_int_equal(f.calls, 1);
    assert_int_equal(other.calls, 1);
    result_release(&other);
    free(fast);
    free(slow);
}

static void test_invalid_calls(void **state)
{
    struct moat_http_client *c = client_new(2000, 0);
    struct result r = {0};
    struct moat_http_header crlf[] = {{"X-A", "a\r\nX-Injected: 1"}};
    struct moat_http_header badname[] = {{"X A", "a"}};
    struct moat_http_call calls[] = {
        {.method = "GET", .url = "ftp://127.0.0.1/x"},
        {.method = "GET", .url = "file:///etc/passwd"},
        {.method = "GET", .url = "not a url"},
        {.method = "GE T", .url = "http://127.0.0.1/"},
        {.method = "", .url = "http://127.0.0.1/"},
        {.method = "GET",
         .url = "http://127.0.0.1/",
         .headers = crlf,
         .nheaders = 1},
        {.method = "GET",
         .url = "http://127.0.0.1/",
         .headers = badname,
         .nheaders = 1},
        {.method = "GET", .url = "http://127.0.0.1/", .timeout_ms = -1},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(calls); i++)
        assert_int_equal(send_call(c, &calls[i], &r), MOAT_EINVAL);
    assert_int_equal(moat_http_client_pending(c), 0);
    int never = 0;
    run_until(&never, 1, 20);
    assert_int_equal(r.calls, 0);
    moat_http_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_headers_and_trace),
        cmocka_unit_test(test_response_header_lookup),
        cmocka_unit_test(test_post_body_echo),
        cmocka_unit_test(test_keepalive_reuses_connection),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_response_cap),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_queued_calls_time_out),
        cmocka_unit_test(test_free_cancels_pending),
        cmocka_unit_test(test_free_from_callback),
        cmocka_unit_test(test_invalid_calls),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
