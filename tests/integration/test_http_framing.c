/*
 * test_http_framing.c - HTTP/1.1 framing as RFC 9110/9112 require, tried
 * with raw bytes as an attacker would, on the port of every service
 * (moat.json's, then deploy/social.json's others): each refusal answers
 * at once with the right status as problem+json and closes the
 * connection; an absolute-form target is served; a client trickling
 * header bytes is cut at the header timeout from its first byte; /metrics
 * refuses a caller without a service token, and admin routes a peer that
 * is not an operator.
 *
 * The services run with a 60 s I/O timeout, so an answer or a close seen
 * well within that is the server's decision, not its timeout. The
 * deployments serve TLS ("tls": true): the raw bytes travel inside a TLS
 * connection made with the test's own client certificate, exactly as a
 * caller's would, so the HTTP layer behind the handshake is what is tried.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "moat/common.h"
#include "moat/tls.h"

#define IO_TIMEOUT_MS     60000
#define HEADER_TIMEOUT_MS 2000
/* Far below the I/O timeout: an answer within it is not a timeout's. */
#define ANSWER_MS 8000

static struct {
    char *tmp;
    struct h_deployment dep;
} F;

/* One raw connection: the socket and, when the deployment serves TLS,
 * the TLS session over it. */
struct raw {
    int fd;
    SSL *ssl;
};

static SSL_CTX *client_ctx(void)
{
    static SSL_CTX *ctx;
    if (ctx)
        return ctx;
    ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    if (SSL_CTX_use_certificate_file(ctx, h_tls_path("test", "crt"),
                                     SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, h_tls_path("test", "key"),
                                    SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(ctx, h_tls_path("ca", "crt"), NULL) != 1)
        fail_msg("cannot load the test's TLS identity");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

static struct raw raw_connect(uint16_t port)
{
    struct raw c = {socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), NULL};
    assert_true(c.fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(c.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    if (h_tls_on()) {
        c.ssl = SSL_new(client_ctx());
        assert_non_null(c.ssl);
        SSL_set_fd(c.ssl, c.fd);
        if (SSL_connect(c.ssl) != 1)
            fail_msg("TLS handshake with port %u failed", (unsigned)port);
    }
    return c;
}

static void raw_close(struct raw *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* Write len bytes; false when the peer has closed (or reset). */
static bool raw_write(struct raw *c, const char *bytes, size_t len)
{
    if (c->ssl) {
        ERR_clear_error();
        return SSL_write(c->ssl, bytes, (int)len) == (int)len;
    }
    return send(c->fd, bytes, len, MSG_NOSIGNAL) == (ssize_t)len;
}

static void raw_send(struct raw *c, const char *bytes)
{
    assert_true(raw_write(c, bytes, strlen(bytes)));
}

/* Wait up to ms for something to read (already decrypted bytes count). */
static bool raw_readable(struct raw *c, int ms)
{
    if (c->ssl && SSL_pending(c->ssl) > 0)
        return true;
    struct pollfd p = {c->fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
}

/* As read(2): > 0 bytes, 0 at a close, < 0 on an error (a reset after the
 * answer, or TLS's close without close_notify, counts as a close). */
static ssize_t raw_read(struct raw *c, char *buf, size_t cap)
{
    if (!c->ssl) {
        ssize_t k = read(c->fd, buf, cap);
        return k < 0 && errno == ECONNRESET ? 0 : k;
    }
    ERR_clear_error();
    int k = SSL_read(c->ssl, buf, (int)cap);
    if (k > 0)
        return k;
    int e = SSL_get_error(c->ssl, k);
    if (e == SSL_ERROR_WANT_READ)
        return -1;
    return 0; /* ZERO_RETURN, SYSCALL (EOF or reset), SSL: closed */
}

/*
 * Read until the server closes or ms (scaled) pass. Returns whether it
 * closed; buf holds what arrived.
 */
static bool read_to_close(struct raw *c, char *buf, size_t cap, unsigned ms)
{
    size_t got = 0;
    uint64_t deadline = moat_mono_ms() + h_scaled_ms(ms);
    buf[0] = '\0';
    for (;;) {
        int64_t left = (int64_t)(deadline - moat_mono_ms());
        if (left <= 0)
            return false;
        if (!raw_readable(c, (int)left))
            continue;
        ssize_t k = raw_read(c, buf + got, cap - 1 - got);
        if (k == 0)
            return true;
        if (k < 0)
            continue;
        got += (size_t)k;
        buf[got] = '\0';
        if (got + 1 == cap)
            return false;
    }
}

/* Read one whole response (headers and Content-Length body). */
static void read_response(struct raw *c, char *buf, size_t cap, unsigned ms)
{
    size_t got = 0;
    uint64_t deadline = moat_mono_ms() + h_scaled_ms(ms);
    buf[0] = '\0';
    while (got + 1 < cap) {
        const char *end = strstr(buf, "\r\n\r\n");
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        if (end && cl && cl < end &&
            got >= (size_t)(end + 4 - buf) + strtoul(cl + 17, NULL, 10))
            return;
        int64_t left = (int64_t)(deadline - moat_mono_ms());
        assert_true(left > 0);
        if (!raw_readable(c, (int)left))
            continue;
        ssize_t k = raw_read(c, buf + got, cap - 1 - got);
        if (k < 0)
            continue;
        assert_true(k > 0);
        got += (size_t)k;
        buf[got] = '\0';
    }
}

struct refusal {
    const char *what;
    const char *request; /* %u: the service's port */
    int status;
};

/* Every one is answered at once and the connection closed. */
static const struct refusal refusals[] = {
    {"two different Content-Length values",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
     "Content-Length: 6\r\n\r\nhello!",
     400},
    {"a Content-Length list of different values",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
     400},
    {"a Content-Length beyond 64 bits",
     "POST /healthz HTTP/1.1\r\nHost: h\r\n"
     "Content-Length: 99999999999999999999999\r\n\r\n",
     400},
    {"Expect: 100-continue with a length over the limit",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
     "Content-Length: 1000000000\r\n\r\n",
     413},
    {"an oversized Content-Length, body not sent",
     "PUT /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 9000000000\r\n\r\n",
     413},
    {"CONNECT", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501},
    {"no Host", "GET /healthz HTTP/1.1\r\n\r\n", 400},
    {"two Host fields", "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
     400},
    {"whitespace before a header name's colon",
     "GET /healthz HTTP/1.1\r\nHost : h\r\n\r\n", 400},
    {"an invalid chunk size",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     "zz\r\nhello\r\n0\r\n\r\n",
     400},
    {"an invalid chunk size in a later read",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     "5\r\nhello\r\n-1\r\n",
     400},
    {"Transfer-Encoding and Content-Length",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     "Content-Length: 5\r\n\r\n0\r\n\r\n",
     400},
    {"a transfer coding other than chunked",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked"
     "\r\n\r\n0\r\n\r\n",
     501},
    {"chunked not last",
     "POST /healthz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip"
     "\r\n\r\n0\r\n\r\n",
     400},
    {"a target that is not a path or an http URL",
     "GET x:/v1/a?://h/healthz HTTP/1.1\r\nHost: h\r\n\r\n", 400},
};

static void check_refusals(const struct h_service *svc)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(refusals); i++) {
        const struct refusal *t = &refusals[i];
        struct raw c = raw_connect(svc->port);
        raw_send(&c, t->request);
        char buf[8192];
        bool closed = read_to_close(&c, buf, sizeof(buf), ANSWER_MS);
        raw_close(&c);
        char want[32];
        snprintf(want, sizeof(want), "HTTP/1.1 %d ", t->status);
        if (!closed || strncmp(buf, want, strlen(want)) != 0 ||
            !strcasestr(buf, "application/problem+json"))
            fail_msg("%s, %s: expected %d and a close, got %s:\n%s", svc->name,
                     t->what, t->status, closed ? "closed" : "still open", buf);
    }
}

/* Absolute-form is served as its path, and the connection stays usable. */
static void check_absolute_form(const struct h_service *svc)
{
    struct raw c = raw_connect(svc->port);
    char req[256], buf[8192];
    snprintf(req, sizeof(req),
             "GET http://127.0.0.1:%u/healthz HTTP/1.1\r\nHost: h\r\n\r\n",
             (unsigned)svc->port);
    raw_send(&c, req);
    read_response(&c, buf, sizeof(buf), ANSWER_MS);
    if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0)
        fail_msg("%s: absolute-form GET /healthz: %s", svc->name, buf);
    raw_send(&c, "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n");
    read_response(&c, buf, sizeof(buf), ANSWER_MS);
    if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0)
        fail_msg("%s: a second request on the connection: %s", svc->name, buf);
    raw_close(&c);
}

/*
 * /metrics is for operators and known peers: 401 problem+json without a
 * service token, 200 with one. The payment provider stand-in is an
 * external party with no service identity: open.
 */
static void check_metrics(const struct h_service *svc)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/metrics", svc->url));
    if (strcmp(svc->name, "payprovider") == 0)
        h_assert_status(&r, 200);
    else
        h_assert_problem(&r, 401);
    h_resp_release(&r);
    h_get_metrics(&r, svc->url);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

/* Admin routes are the operators': a known peer that is not one (the
 * gateway) gets 403, an operator (the test process, as MOAT_OPERATORS
 * says in tests) 200; and /metrics takes the gateway's token. */
static void check_admin(const struct h_service *svc)
{
    struct h_resp r;
    const char *url = h_fmt("%s/v1/admin/consumer", svc->url);
    const char *as_gateway[] = {h_peer_token("gateway", svc->name), NULL};
    /* Under TLS the token must come with the gateway's certificate (the
     * test's own would be refused for naming another caller). */
    if (h_tls_on())
        assert_int_equal(moat_tls_load(h_tls_path("gateway", "crt"),
                                       h_tls_path("gateway", "key"),
                                       h_tls_path("ca", "crt")),
                         MOAT_OK);
    h_http(&r, "GET", url, as_gateway, NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/metrics", svc->url), as_gateway, NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    if (h_tls_on())
        assert_int_equal(moat_tls_load(h_tls_path("test", "crt"),
                                       h_tls_path("test", "key"),
                                       h_tls_path("ca", "crt")),
                         MOAT_OK);
    const char *as_test[] = {h_service_token(svc->name, NULL, NULL), NULL};
    h_http(&r, "GET", url, as_test, NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static void check_all(size_t first)
{
    for (size_t i = first; i < F.dep.n; i++) {
        check_refusals(&F.dep.svc[i]);
        check_absolute_form(&F.dep.svc[i]);
        check_metrics(&F.dep.svc[i]);
    }
}

/*
 * A client sending one header byte every 100 ms, on every service at once:
 * each is cut at the header timeout from its first byte (the I/O timeout,
 * reset by every byte, never would), and never answered.
 */
static void check_slow_headers(size_t first)
{
    size_t n = F.dep.n - first;
    struct raw conns[H_DEPLOY_MAX];
    uint64_t closed_at[H_DEPLOY_MAX] = {0};
    uint64_t start = moat_mono_ms();
    for (size_t i = 0; i < n; i++) {
        conns[i] = raw_connect(F.dep.svc[first + i].port);
        raw_send(&conns[i], "GET /healthz HTTP/1.1\r\nHost: h\r\nX-Slow: ");
    }
    uint64_t deadline = start + HEADER_TIMEOUT_MS + h_scaled_ms(ANSWER_MS);
    size_t open = n;
    while (open && moat_mono_ms() < deadline) {
        for (size_t i = 0; i < n; i++) {
            if (closed_at[i])
                continue;
            char c;
            if (raw_readable(&conns[i], 0)) {
                ssize_t k = raw_read(&conns[i], &c, 1);
                if (k < 0)
                    continue; /* TLS bytes that are not data yet */
                if (k > 0)
                    fail_msg("%s answered a request still in its headers",
                             F.dep.svc[first + i].name);
                closed_at[i] = moat_mono_ms();
                open--;
                continue;
            }
            /* A reset for a write after the close is a close too. */
            if (!raw_write(&conns[i], "x", 1)) {
                closed_at[i] = moat_mono_ms();
                open--;
            }
        }
        h_sleep_ms(100); /* paces the trickle */
    }
    for (size_t i = 0; i < n; i++) {
        raw_close(&conns[i]);
        if (!closed_at[i])
            fail_msg("%s kept a slow-header connection open past %u ms",
                     F.dep.svc[first + i].name, (unsigned)(deadline - start));
        /* Not before the timeout either (less a little timer slack). */
        if (closed_at[i] - start + 100 < HEADER_TIMEOUT_MS)
            fail_msg("%s cut the connection after %u ms, before the header "
                     "timeout",
                     F.dep.svc[first + i].name,
                     (unsigned)(closed_at[i] - start));
    }
}

static int start(const char *file, const char *const *only)
{
    static char io[64], hdr[64];
    snprintf(io, sizeof(io), "MOAT_IO_TIMEOUT_MS=%u", IO_TIMEOUT_MS);
    snprintf(hdr, sizeof(hdr), "MOAT_HEADER_TIMEOUT_MS=%u", HEADER_TIMEOUT_MS);
    const char *env[] = {io, hdr, NULL};
    return h_deployment_start(&F.dep, file, F.tmp, only, env);
}

static void test_shop_services(void **state)
{
    MOAT_UNUSED(state);
    assert_int_equal(start(MOAT_SOURCE_DIR "/moat.json", NULL), 0);
    check_all(0);
    check_admin(h_deployment_service(&F.dep, "search"));
    check_slow_headers(0);
    assert_int_equal(h_deployment_stop(&F.dep), 0);
}

/* The social services moat.json does not have. */
static void test_social_services(void **state)
{
    MOAT_UNUSED(state);
    static const char *const only[] = {"profiles",  "connections", "posts",
                                       "timelines", "messaging",   "analytics",
                                       "comments",  NULL};
    assert_int_equal(start(MOAT_SOURCE_DIR "/deploy/social.json", only), 0);
    check_all(0);
    check_slow_headers(0);
    assert_int_equal(h_deployment_stop(&F.dep), 0);
}

static int setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("framing");
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    h_kill_all();
    h_rmtree(F.tmp);
    free(F.tmp);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shop_services, setup, teardown),
        cmocka_unit_test_setup_teardown(test_social_services, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
