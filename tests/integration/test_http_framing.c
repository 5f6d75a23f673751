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
 * well within that is the server's decision, not its timeout.
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

#include "moat/common.h"

#define IO_TIMEOUT_MS     60000
#define HEADER_TIMEOUT_MS 2000
/* Far below the I/O timeout: an answer within it is not a timeout's. */
#define ANSWER_MS 8000

static struct {
    char *tmp;
    struct h_deployment dep;
} F;

static int raw_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void raw_send(int fd, const char *bytes)
{
    size_t len = strlen(bytes);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
}

/*
 * Read until the server closes or ms (scaled) pass. Returns whether it
 * closed; buf holds what arrived. A reset after the answer counts as a
 * close.
 */
static bool read_to_close(int fd, char *buf, size_t cap, unsigned ms)
{
    size_t got = 0;
    uint64_t deadline = moat_mono_ms() + h_scaled_ms(ms);
    buf[0] = '\0';
    for (;;) {
        int64_t left = (int64_t)(deadline - moat_mono_ms());
        if (left <= 0)
            return false;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        ssize_t k = read(fd, buf + got, cap - 1 - got);
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            return true;
        if (k < 0)
            return false;
        got += (size_t)k;
        buf[got] = '\0';
        if (got + 1 == cap)
            return false;
    }
}

/* Read one whole response (headers and Content-Length body). */
static void read_response(int fd, char *buf, size_t cap, unsigned ms)
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
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        ssize_t k = read(fd, buf + got, cap - 1 - got);
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
        int fd = raw_connect(svc->port);
        raw_send(fd, t->request);
        char buf[8192];
        bool closed = read_to_close(fd, buf, sizeof(buf), ANSWER_MS);
        close(fd);
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
    int fd = raw_connect(svc->port);
    char req[256], buf[8192];
    snprintf(req, sizeof(req),
             "GET http://127.0.0.1:%u/healthz HTTP/1.1\r\nHost: h\r\n\r\n",
             (unsigned)svc->port);
    raw_send(fd, req);
    read_response(fd, buf, sizeof(buf), ANSWER_MS);
    if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0)
        fail_msg("%s: absolute-form GET /healthz: %s", svc->name, buf);
    raw_send(fd, "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n");
    read_response(fd, buf, sizeof(buf), ANSWER_MS);
    if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0)
        fail_msg("%s: a second request on the connection: %s", svc->name, buf);
    close(fd);
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
    h_http(&r, "GET", url, as_gateway, NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/metrics", svc->url), as_gateway, NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
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
    int fds[H_DEPLOY_MAX];
    uint64_t closed_at[H_DEPLOY_MAX] = {0};
    uint64_t start = moat_mono_ms();
    for (size_t i = 0; i < n; i++) {
        fds[i] = raw_connect(F.dep.svc[first + i].port);
        raw_send(fds[i], "GET /healthz HTTP/1.1\r\nHost: h\r\nX-Slow: ");
    }
    uint64_t deadline = start + HEADER_TIMEOUT_MS + h_scaled_ms(ANSWER_MS);
    size_t open = n;
    while (open && moat_mono_ms() < deadline) {
        for (size_t i = 0; i < n; i++) {
            if (closed_at[i])
                continue;
            struct pollfd p = {fds[i], POLLIN, 0};
            char c;
            if (poll(&p, 1, 0) == 1) {
                ssize_t k = read(fds[i], &c, 1);
                if (k > 0)
                    fail_msg("%s answered a request still in its headers",
                             F.dep.svc[first + i].name);
                closed_at[i] = moat_mono_ms();
                open--;
                continue;
            }
            /* A reset for a write after the close is a close too. */
            if (send(fds[i], "x", 1, MSG_NOSIGNAL) != 1) {
                closed_at[i] = moat_mono_ms();
                open--;
            }
        }
        h_sleep_ms(100); /* paces the trickle */
    }
    for (size_t i = 0; i < n; i++) {
        close(fds[i]);
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
