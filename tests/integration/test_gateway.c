/*
 * Integration tests of moat-gateway: the real binary in front of a tiny
 * evhttp backend that this test forks (it records what reached it, checks
 * the gateway's service token as the service "catalog" would, and can be
 * slow), and in front of a port where nothing listens.
 *
 * End-user tokens come from the harness's test keyset (h_user_token), as
 * the users service would issue them; a valid one is sent automatically to
 * the gateway, and tests that need none or a bad one say so explicitly.
 *
 * The backend is a forked child rather than a thread because the harness
 * forks the services with setenv() in the child, which is only safe while
 * the test process has a single thread.
 */
#include "moat/common.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "harness.h"
#include "moat/auth.h"
#include "moat/jwt.h"

#define GW_TIMEOUT_MS  500
#define SLOW_REPLY_MS  1500 /* the slow backend answers after this */
#define TRACEPARENT_IN "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static char *tmpdir;
static pid_t backend_pid;
static uint16_t backend_port;
static uint16_t dead_port;
static struct h_service gw;
static char env_routes[512];
static char env_timeout[64];
/* The backend's identity: catalog, which knows the gateway's key. */
static char backend_key[128];
static char backend_peers[256];
static struct moat_auth *backend_auth; /* in the child only */

#define PUBLIC_SPEC                                                            \
    "MOAT_GATEWAY_PUBLIC=GET /api/v1/open,POST /api/v1/open/signup"
#define NO_AUTH "Authorization:" /* suppresses the automatic token */

/* --- the backend (runs in the forked child only) --- */

static void put(json_t *o, const char *key, const char *value)
{
    json_object_set_new(o, key, value ? json_string(value) : json_null());
}

static void reply_json(struct evhttp_request *req, int status, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, text, strlen(text));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, status, "OK", b);
    evbuffer_free(b);
    free(text);
    json_decref(o);
}

static struct event_base *backend_base;

/* libevent 2.1 keeps a request the handler has not answered alive (only
 * detached) when the client goes away, so a late reply is safe. */
static void on_slow_reply(evutil_socket_t fd, short what, void *arg)
{
    reply_json(arg, 200, json_object());
}

static void on_backend(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);

    if (strncmp(uri, "/v1/items/slow", 14) == 0) {
        struct timeval tv = {SLOW_REPLY_MS / 1000,
                             (SLOW_REPLY_MS % 1000) * 1000};
        event_base_once(backend_base, -1, EV_TIMEOUT, on_slow_reply, req, &tv);
        return;
    }
    if (strcmp(uri, "/v1/items") == 0 &&
        evhttp_request_get_command(req) == EVHTTP_REQ_POST) {
        evhttp_add_header(out, "Location", "/v1/items/42");
        evhttp_add_header(out, "ETag", "\"1\"");
        evhttp_add_header(out, "X-Internal", "must not leak");
        struct evbuffer *body = evhttp_request_get_input_buffer(req);
        evhttp_add_header(out, "Content-Type", "application/json");
        evhttp_send_reply(req, 201, "Created", body);
        return;
    }
    /* Anything else: describe what arrived. */
    json_t *o = json_object();
    put(o, "uri", uri);
    put(o, "traceparent", evhttp_find_header(in, "traceparent"));
    put(o, "x_request_id", evhttp_find_header(in, "X-Request-Id"));
    put(o, "authorization", evhttp_find_header(in, "Authorization"));
    /* Verify the service token exactly as lib/service.c would. */
    const char *st = evhttp_find_header(in, MOAT_SERVICE_TOKEN_HEADER);
    struct moat_principal p;
    const char *why = "missing";
    bool ok = st && moat_auth_verify(backend_auth, st, &p, &why) == MOAT_OK;
    put(o, "service_token", st);
    json_object_set_new(o, "token_ok", json_boolean(ok));
    put(o, "token_why", ok ? NULL : why);
    put(o, "caller", ok ? p.service : NULL);
    put(o, "user", ok ? p.user_id : NULL);
    put(o, "role", ok ? p.role : NULL);
    put(o, "client_ip", ok ? p.client_ip : NULL);
    put(o, "idempotency_key", evhttp_find_header(in, "Idempotency-Key"));
    put(o, "x_secret", evhttp_find_header(in, "X-Secret"));
    put(o, "keep_alive", evhttp_find_header(in, "Keep-Alive"));
    reply_json(req, 200, o);
}

MOAT_NORETURN static void backend_main(int fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setenv("MOAT_SERVICE_KEY", backend_key, 1);
    setenv("MOAT_PEER_KEYS", backend_peers, 1);
    if (moat_auth_load(&backend_auth, "catalog") != MOAT_OK)
        _exit(4);
    backend_base = event_base_new();
    struct evhttp *http = evhttp_new(backend_base);
    if (!backend_base || !http || !evhttp_accept_socket_with_handle(http, fd))
        _exit(3);
    evhttp_set_gencb(http, on_backend, NULL);
    event_base_dispatch(backend_base);
    _exit(0);
}

static void backend_start(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 128), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    backend_port = ntohs(sa.sin_port);
    evutil_make_socket_nonblocking(fd);
    fflush(NULL);
    backend_pid = fork();
    assert_true(backend_pid >= 0);
    if (backend_pid == 0)
        backend_main(fd);
    close(fd);
}

/* --- fixture --- */

static int group_setup(void **state)
{
    /* A backend write to a gateway that gave up must not kill anyone. */
    signal(SIGPIPE, SIG_IGN);
    tmpdir = h_tmpdir_new("gateway");
    snprintf(backend_key, sizeof(backend_key), "%s",
             h_test_service_key("catalog"));
    snprintf(backend_peers, sizeof(backend_peers), "gateway:%s",
             h_test_pair_key("gateway", "catalog"));
    backend_start();
    dead_port = h_free_port(); /* nothing listens there */
    snprintf(env_routes, sizeof(env_routes),
             "MOAT_GATEWAY_ROUTES="
             "/api/v1/items=catalog@http://127.0.0.1:%u/v1/items,"
             "/api/v1/open=catalog@http://127.0.0.1:%u/v1/open,"
             "/api/v1/dead=catalog@http://127.0.0.1:%u/v1/dead",
             (unsigned)backend_port, (unsigned)backend_port,
             (unsigned)dead_port);
    snprintf(env_timeout, sizeof(env_timeout), "MOAT_GATEWAY_TIMEOUT_MS=%d",
             GW_TIMEOUT_MS);
    const char *env[] = {env_routes, env_timeout,
                         "MOAT_GATEWAY_CONNECT_TIMEOUT_MS=300", PUBLIC_SPEC,
                         NULL};
    if (h_service_start(&gw, "gateway", tmpdir, NULL, env) != 0)
        return -1;
    h_auto_header(gw.url, h_user_token("usr_a", "customer", 3600));
    return 0;
}

static int group_teardown(void **state)
{
    int rc = 0;
    if (gw.pid > 0 && h_service_stop(&gw) != 0)
        rc = -1; /* an unclean exit (or an ASan leak report) fails */
    h_service_release(&gw);
    h_auto_headers_clear();
    if (backend_pid > 0) {
        kill(backend_pid, SIGKILL);
        waitpid(backend_pid, NULL, 0);
    }
    h_rmtree(tmpdir);
    free(tmpdir);
    return rc;
}

/* --- tests --- */

static void assert_unavailable(const struct h_resp *r, const char *backend)
{
    h_assert_problem(r, 503);
    const char *ra = h_resp_header(r, "Retry-After");
    assert_non_null(ra);
    assert_string_equal(ra, "1");
    json_t *p = h_resp_json(r);
    const char *detail = json_string_value(json_object_get(p, "detail"));
    assert_non_null(detail);
    if (!strstr(detail, backend))
        fail_msg("detail '%s' does not name backend %s", detail, backend);
    json_decref(p);
}

static void test_backend_down(void **state)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/api/v1/dead/1", gw.url));
    assert_unavailable(&r, "/api/v1/dead");
    assert_true(r.elapsed_ms < h_scaled_ms(GW_TIMEOUT_MS));
    h_resp_release(&r);
}

static void test_slow_backend(void **state)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/api/v1/items/slow", gw.url));
    assert_unavailable(&r, "/api/v1/items");
    /* Bounded by the gateway's timeout, not by the backend. */
    assert_true(r.elapsed_ms >= GW_TIMEOUT_MS - 50);
    assert_true(r.elapsed_ms < GW_TIMEOUT_MS + h_scaled_ms(500));
    h_resp_release(&r);
}

static void test_trace_and_headers_forwarded(void **state)
{
    static const char *const hdrs[] = {
        "traceparent: " TRACEPARENT_IN, "X-Request-Id: it-gateway-1",
        "Idempotency-Key: k-1",         "X-Secret: 1",
        "Keep-Alive: timeout=5",        NULL,
    };
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/api/v1/items/7/x?b=2&a=%%20", gw.url), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    json_t *o = h_resp_json(&r);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "uri")),
                        "/v1/items/7/x?b=2&a=%20");
    const char *tp = json_string_value(json_object_get(o, "traceparent"));
    assert_non_null(tp);
    /* Same trace, the gateway's own span as parent. */
    assert_int_equal(strlen(tp), strlen(TRACEPARENT_IN));
    assert_memory_equal(tp, TRACEPARENT_IN, 36);
    assert_memory_not_equal(tp + 36, TRACEPARENT_IN + 36, 16);
    assert_string_equal(json_string_value(json_object_get(o, "x_request_id")),
                        "it-gateway-1");
    /* The end user's token stays at the gateway. */
    assert_true(json_is_null(json_object_get(o, "authorization")));
    assert_string_equal(
        json_string_value(json_object_get(o, "idempotency_key")), "k-1");
    assert_true(json_is_null(json_object_get(o, "x_secret")));
    assert_true(json_is_null(json_object_get(o, "keep_alive")));
    assert_string_equal(h_resp_header(&r, "X-Request-Id"), "it-gateway-1");
    json_decref(o);
    h_resp_release(&r);
}

static void test_location_rewritten(void **state)
{
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/api/v1/items", gw.url), "{\"n\":1}",
                NULL);
    h_assert_status(&r, 201);
    assert_string_equal(h_resp_header(&r, "Location"), "/api/v1/items/42");
    assert_string_equal(h_resp_header(&r, "ETag"), "\"1\"");
    assert_string_equal(h_resp_header(&r, "Content-Type"), "application/json");
    assert_null(h_resp_header(&r, "X-Internal"));
    assert_string_equal(r.body, "{\"n\":1}");
    h_resp_release(&r);
}

static void test_unknown_route(void **state)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/api/v1/nothing-here/1", gw.url));
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

static void test_dot_segments_refused(void **state)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/api/v1/items/%%2e%%2e/%%2e%%2e/admin", gw.url));
    h_assert_problem(&r, 400);
    h_resp_release(&r);
}

/* --- end-user authentication --- */

static char *b64url(const void *data, size_t len)
{
    size_t cap = sodium_base64_ENCODED_LEN(
        len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *out = moat_xmalloc(cap);
    sodium_bin2base64(out, cap, data, len,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

/* An "Authorization: Bearer" line with valid claims and alg "none". */
static const char *alg_none_token(void)
{
    const char *hdr = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
    char *pay_json = moat_xasprintf(
        "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"usr_admin\","
        "\"role\":\"admin\",\"exp\":%lld}",
        (long long)time(NULL) + 600);
    char *h = b64url(hdr, strlen(hdr));
    char *p = b64url(pay_json, strlen(pay_json));
    const char *line = h_fmt("Authorization: Bearer %s.%s.", h, p);
    free(h);
    free(p);
    free(pay_json);
    return line;
}

/* Valid claims signed with a key the gateway does not know. */
static const char *wrong_key_token(void)
{
    uint8_t key[32];
    memset(key, 'k', sizeof(key));
    struct moat_jwt_claims c = {0};
    snprintf(c.iss, sizeof(c.iss), "moat-users");
    snprintf(c.aud, sizeof(c.aud), "moat");
    snprintf(c.sub, sizeof(c.sub), "usr_admin");
    snprintf(c.role, sizeof(c.role), "admin");
    c.exp = (int64_t)time(NULL) + 600;
    char *tok = NULL;
    assert_int_equal(moat_jwt_sign(key, sizeof(key), &c, &tok), MOAT_OK);
    const char *line = h_fmt("Authorization: Bearer %s", tok);
    free(tok);
    return line;
}

/* What the backend saw, as JSON (new reference). */
static json_t *backend_saw(const struct h_resp *r)
{
    h_assert_status(r, 200);
    json_t *o = h_resp_json(r);
    assert_non_null(o);
    return o;
}

static const char *field(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void assert_unauthorized(const struct h_resp *r, bool presented)
{
    h_assert_problem(r, 401);
    const char *wa = h_resp_header(r, "WWW-Authenticate");
    assert_non_null(wa);
    assert_memory_equal(wa, "Bearer", 6);
    if (presented != (strstr(wa, "error=\"invalid_token\"") != NULL))
        fail_msg("WWW-Authenticate '%s' for %s credentials", wa,
                 presented ? "bad" : "missing");
}

static void test_public_route_without_token(void **state)
{
    static const char *const hdrs[] = {NO_AUTH, NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/api/v1/open/x?y=1", gw.url), hdrs, NULL, 0);
    json_t *o = backend_saw(&r);
    assert_string_equal(field(o, "uri"), "/v1/open/x?y=1");
    /* Anonymous, but still a verified call from the gateway. */
    assert_true(json_is_true(json_object_get(o, "token_ok")));
    assert_string_equal(field(o, "caller"), "gateway");
    assert_string_equal(field(o, "user"), "");
    assert_string_equal(field(o, "client_ip"), "127.0.0.1");
    json_decref(o);
    h_resp_release(&r);

    /* The prefix itself is public too; POST on the signup sub-prefix. */
    h_http(&r, "GET", h_fmt("%s/api/v1/open", gw.url), hdrs, NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    h_http(&r, "POST", h_fmt("%s/api/v1/open/signup", gw.url), hdrs, "{}", 2);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static void test_private_route_without_token(void **state)
{
    static const char *const hdrs[] = {NO_AUTH, NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/api/v1/items/1", gw.url), hdrs, NULL, 0);
    assert_unauthorized(&r, false);
    h_resp_release(&r);
    /* Public for GET is not public for DELETE, nor for a neighbour. */
    h_http(&r, "DELETE", h_fmt("%s/api/v1/open/x", gw.url), hdrs, NULL, 0);
    assert_unauthorized(&r, false);
    h_resp_release(&r);
    h_http(&r, "POST", h_fmt("%s/api/v1/open/signupx", gw.url), hdrs, "{}", 2);
    assert_unauthorized(&r, false);
    h_resp_release(&r);
    /* Percent-encoded spelling of a public path: not public. */
    h_http(&r, "GET", h_fmt("%s/api/v1/ope%%6e/x", gw.url), hdrs, NULL, 0);
    assert_true(r.status == 401 || r.status == 404);
    h_resp_release(&r);
}

static void test_bad_tokens_refused(void **state)
{
    const char *bad[] = {
        h_user_token("usr_a", "customer", -120), /* expired */
        wrong_key_token(),
        alg_none_token(),
        "Authorization: Bearer garbage",
        "Authorization: Bearer a.b.c",
        "Authorization: Basic dXNlcjpwYXNz",
        "Authorization: Bearer",
    };
    char *copies[MOAT_ARRAY_LEN(bad)];
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        copies[i] = moat_xstrdup(bad[i]); /* h_fmt buffers rotate */
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        const char *hdrs[] = {copies[i], NULL};
        struct h_resp r;
        /* Private route, and a public one: a bad token is never ignored. */
        h_http(&r, "GET", h_fmt("%s/api/v1/items/1", gw.url), hdrs, NULL, 0);
        assert_unauthorized(&r, true);
        h_resp_release(&r);
        h_http(&r, "GET", h_fmt("%s/api/v1/open/1", gw.url), hdrs, NULL, 0);
        assert_unauthorized(&r, true);
        h_resp_release(&r);
    }
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        free(copies[i]);
}

static void test_identity_reaches_backend(void **state)
{
    const char *hdrs[] = {h_user_token("usr_42", "admin", 600), NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/api/v1/items/9", gw.url), hdrs, NULL, 0);
    json_t *o = backend_saw(&r);
    if (!json_is_true(json_object_get(o, "token_ok")))
        fail_msg("backend refused the gateway's token: %s",
                 field(o, "token_why"));
    assert_string_equal(field(o, "caller"), "gateway");
    assert_string_equal(field(o, "user"), "usr_42");
    assert_string_equal(field(o, "role"), "admin");
    assert_string_equal(field(o, "client_ip"), "127.0.0.1");
    assert_true(json_is_null(json_object_get(o, "authorization")));
    json_decref(o);
    h_resp_release(&r);
}

static void test_client_service_token_not_forwarded(void **state)
{
    /* A real service token (peer "test" to catalog, as admin) and junk:
     * neither may reach the backend; the gateway sends its own. */
    char *forged = moat_xstrdup(h_service_token("catalog", "usr_x", "admin"));
    const char *variants[] = {forged, MOAT_SERVICE_TOKEN_HEADER ": junk"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(variants); i++) {
        const char *hdrs[] = {variants[i], NULL};
        struct h_resp r;
        h_http(&r, "GET", h_fmt("%s/api/v1/items/9", gw.url), hdrs, NULL, 0);
        json_t *o = backend_saw(&r);
        const char *sent = strchr(variants[i], ':') + 2;
        assert_string_not_equal(field(o, "service_token"), sent);
        assert_true(json_is_true(json_object_get(o, "token_ok")));
        assert_string_equal(field(o, "caller"), "gateway");
        assert_string_equal(field(o, "user"), "usr_a"); /* the bearer's */
        assert_string_equal(field(o, "role"), "customer");
        json_decref(o);
        h_resp_release(&r);
    }
    free(forged);
}

static void test_rate_limit(void **state)
{
    /* A gateway of its own: 2 requests/s, bucket of 3. */
    struct h_service g;
    const char *env[] = {env_routes, PUBLIC_SPEC, "MOAT_GATEWAY_RATE=2",
                         "MOAT_GATEWAY_BURST=3", NULL};
    assert_int_equal(h_service_start(&g, "gateway", tmpdir, NULL, env), 0);
    static const char *const hdrs[] = {NO_AUTH, NULL};
    const char *url = h_fmt("%s/api/v1/open/r", g.url);
    struct h_resp r;
    for (int i = 0; i < 3; i++) {
        h_http(&r, "GET", url, hdrs, NULL, 0);
        h_assert_status(&r, 200);
        h_resp_release(&r);
    }
    h_http(&r, "GET", url, hdrs, NULL, 0);
    h_assert_problem(&r, 429);
    const char *ra = h_resp_header(&r, "Retry-After");
    assert_non_null(ra);
    assert_string_equal(ra, "1"); /* 500 ms to the next token, rounded up */
    h_resp_release(&r);
    /* Over the limit even before authentication is looked at. */
    h_http(&r, "GET", h_fmt("%s/api/v1/items/1", g.url), hdrs, NULL, 0);
    h_assert_problem(&r, 429);
    h_resp_release(&r);
    /* Health checks are not limited. */
    h_get(&r, h_fmt("%s/healthz", g.url));
    h_assert_status(&r, 200);
    h_resp_release(&r);

    h_sleep_ms(1100); /* the window: two tokens back at 2/s */
    h_http(&r, "GET", url, hdrs, NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);

    h_get_metrics(&r, g.url);
    h_assert_status(&r, 200);
    if (!strstr(r.body, "moat_gateway_rate_limited_total 2\n"))
        fail_msg("/metrics lacks moat_gateway_rate_limited_total 2");
    h_resp_release(&r);
    assert_int_equal(h_service_stop(&g), 0);
    h_service_release(&g);
}

/* Runs after the tests above, whose calls it counts. */
static void test_metrics(void **state)
{
    struct h_resp r;
    h_get_metrics(&r, gw.url);
    h_assert_status(&r, 200);
    static const char *const want[] = {
        "moat_gateway_upstream_errors_total{upstream=\"/api/v1/dead\","
        "kind=\"connect\"} 1\n",
        "moat_gateway_upstream_errors_total{upstream=\"/api/v1/items\","
        "kind=\"timeout\"} 1\n",
        "moat_gateway_upstream_requests_total{upstream=\"/api/v1/items\","
        "status=\"201\"} 1\n",
        "moat_gateway_upstream_duration_seconds_count{upstream=\"/api/v1/"
        "items\"} ",
        "moat_gateway_auth_rejected_total{reason=\"missing\"} ",
        "moat_gateway_auth_rejected_total{reason=\"expired\"} 2\n",
        "moat_gateway_auth_rejected_total{reason=\"bad signature\"} 2\n",
        "moat_gateway_auth_rejected_total{reason=\"bad algorithm\"} 2\n",
        "moat_gateway_rate_limited_total 0\n",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++)
        if (!strstr(r.body, want[i]))
            fail_msg("/metrics lacks %s", want[i]);
    h_resp_release(&r);
}

static void test_bad_config_refused(void **state)
{
    static const char *const bad[] = {
        "MOAT_GATEWAY_ROUTES=/api/v1/x=x@ftp://127.0.0.1/x",
        "MOAT_GATEWAY_ROUTES=/api/v1/x",
        "MOAT_GATEWAY_ROUTES=/api/v1/x/=x@http://127.0.0.1:1",
        "MOAT_GATEWAY_ROUTES=/api/v1/x=http://127.0.0.1:1",
        "MOAT_GATEWAY_TIMEOUT_MS=soon",
        "MOAT_GATEWAY_PUBLIC=GET /",
        "MOAT_GATEWAY_PUBLIC=get /api",
        "MOAT_GATEWAY_RATE=-1",
        "MOAT_GATEWAY_BURST=0",
        "MOAT_JWT_SECRET=c2hvcnQ=",
        "MOAT_JWT_SECRET=not base64!",
        "MOAT_SERVICE_KEY=c2hvcnQ=",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        struct h_service s;
        const char *env[] = {bad[i], NULL};
        char *dir = h_tmpdir_new("gateway-bad");
        assert_int_equal(h_service_start(&s, "gateway", dir, NULL, env), -1);
        /* 1 or 2: a configuration error, not a crash or leak (ASan: 23). */
        assert_true(s.exit_status == 1 || s.exit_status == 2);
        h_service_release(&s);
        h_rmtree(dir);
        free(dir);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_down),
        cmocka_unit_test(test_slow_backend),
        cmocka_unit_test(test_trace_and_headers_forwarded),
        cmocka_unit_test(test_location_rewritten),
        cmocka_unit_test(test_unknown_route),
        cmocka_unit_test(test_dot_segments_refused),
        cmocka_unit_test(test_public_route_without_token),
        cmocka_unit_test(test_private_route_without_token),
        cmocka_unit_test(test_bad_tokens_refused),
        cmocka_unit_test(test_identity_reaches_backend),
        cmocka_unit_test(test_client_service_token_not_forwarded),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_rate_limit),
        cmocka_unit_test(test_bad_config_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
