/*
 * http_client.c - libcurl multi_socket on a libevent loop (see
 * moat/http_client.h), after curl's hiperfifo example.
 *
 * curl tells us which sockets to watch (sock_cb) and when to wake it up
 * (timer_cb); we turn those into libevent events, and when one fires we
 * hand it back with curl_multi_socket_action(), then collect finished
 * transfers (dispatch). curl_multi_add_handle() only ever arms the timer, so
 * no transfer can finish inside moat_http_client_send(): the first
 * curl_multi_socket_action() for a new call runs from the loop.
 *
 * Re-entrancy: a completion callback may send new calls (safe: we are not
 * inside curl then) or free the client. Freeing from a callback is deferred:
 * `dispatching` counts the frames that still use the client and the last
 * one out destroys it.
 */
#include "moat/common.h"

#include <ctype.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "moat/buf.h"
#include "moat/http_client.h"
#include "moat/tls.h"
#include "moat/trace.h"

/* Idle connections are probed so a peer that vanished is noticed. */
/* Hosts whose connections the idle cache is sized for. */
#define CACHE_HOSTS          16L
#define KEEPALIVE_IDLE_S     30L
#define KEEPALIVE_INTERVAL_S 10L
#define EASY_POOL_MAX        64

/* A socket curl asked us to watch; owned by the client's socket list. */
struct sock {
    struct event ev;
    curl_socket_t fd;
    struct moat_http_client *client;
    struct sock *prev, *next;
};

/* One call in flight; owned by the client's transfer list. */
struct xfer {
    struct moat_http_client *client;
    CURL *easy;
    moat_http_client_cb cb;
    void *arg;
    char *url; /* owned copies of the call */
    char *method;
    char *body; /* NULL when no body is sent */
    size_t body_len;
    struct curl_slist *headers; /* request headers */
    struct moat_buf resp_body;  /* capped at client->opts.max_response */
    /* Response headers as "name\0value\0" pairs; hdr_off[2i] and
     * hdr_off[2i+1] are the offsets of pair i in hdr_buf. */
    struct moat_buf hdr_buf;
    size_t hdr_off[2 * MOAT_HTTP_CLIENT_MAX_RESPONSE_HEADERS];
    size_t nheaders;
    bool too_big; /* we aborted the transfer because of a cap */
    /* A streamed call (moat_http_call.on_data); streaming once the status
     * is known to be 200. */
    bool (*on_data)(const char *data, size_t len, void *arg);
    void *data_arg;
    bool streaming, status_known;
    uint64_t start_ns;
    char errbuf[CURL_ERROR_SIZE];
    struct xfer *prev, *next;
};

struct moat_http_client {
    struct event_base *base; /* borrowed */
    CURLM *multi;
    CURLSH *tls_sessions; /* TLS sessions shared by the easy handles */
    struct event *timer;  /* curl's single timeout */
    struct moat_http_client_options opts;
    struct xfer *xfers; /* pending calls */
    size_t npending;
    struct sock *socks; /* watched sockets */
    /* Finished easy handles kept for reuse: creating one per call costs
     * more than the call itself on loopback (allocations, defaults). A
     * handle whose last call was a plain GET keeps its options (only the
     * per-call ones are set again); any other is reset first. */
    struct {
        CURL *easy;
        bool configured;
    } idle[EASY_POOL_MAX];
    size_t nidle;
    /* Origins ("http://host:port") whose URLs passed curl's parser; see
     * valid_url(). */
    char origins[8][128];
    size_t norigins, origin_next;
    unsigned dispatching; /* frames using the client (see top) */
    bool closing;         /* moat_http_client_free() was called */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    /* Once per process: curl_global_init is not thread-safe by itself. */
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* --- sockets and timer: curl -> libevent --- */

static void sock_free(struct moat_http_client *c, struct sock *s)
{
    event_del(&s->ev);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

static void dispatch(struct moat_http_client *c);

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
    struct sock *s = arg;
    /* s may be freed by curl's sock_cb inside socket_action: copy first. */
    struct moat_http_client *c = s->client;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) |
                 ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(c->multi, fd, action, &running);
    dispatch(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct moat_http_client *c = arg;
    int running = 0;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    dispatch(c);
}

static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                   void *socketp)
{
    struct moat_http_client *c = userp;
    struct sock *s = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (s)
            sock_free(c, s);
        return 0;
    }
    if (!s) {
        s = moat_xcalloc(1, sizeof(*s));
        s->fd = fd;
        s->client = c;
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        curl_multi_assign(c->multi, fd, s);
    } else {
        /* event_assign must not be used on a pending event. */
        event_del(&s->ev);
    }
    short kind = EV_PERSIST;
    if (what & CURL_POLL_IN)
        kind |= EV_READ;
    if (what & CURL_POLL_OUT)
        kind |= EV_WRITE;
    event_assign(&s->ev, c->base, fd, kind, on_socket, s);
    event_add(&s->ev, NULL);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct moat_http_client *c = userp;
    if (timeout_ms < 0) {
        evtimer_del(c->timer);
        return 0;
    }
    /* Even for 0 we go through the loop instead of calling
     * curl_multi_socket_action here: this keeps completions out of
     * moat_http_client_send (which triggers this callback). */
    struct timeval tv = {.tv_sec = timeout_ms / 1000,
                         .tv_usec = (timeout_ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
    return 0;
}

/* --- transfers --- */

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    if (x->on_data && !x->status_known) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        x->streaming = status == 200;
        x->status_known = true;
    }
    if (x->streaming)
        return x->on_data(data, len, x->data_arg) ? len : 0;
    if (x->resp_body.len + len > x->client->opts.max_response ||
        x->resp_body.len + len < x->resp_body.len) {
        x->too_big = true;
        return 0; /* anything but len aborts with CURLE_WRITE_ERROR */
    }
    moat_buf_add(&x->resp_body, data, len);
    return len;
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t total = size * n, len = total;

    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A new status line: headers of an interim (1xx) response are not
         * those of the final one. */
        moat_buf_reset(&x->hdr_buf);
        x->nheaders = 0;
        return total;
    }
    /* Skip the blank end-of-headers line, obsolete line folding (RFC 9112
     * lets a client drop it) and lines without a colon. */
    const char *colon = len ? memchr(line, ':', len) : NULL;
    if (len == 0 || is_ows(line[0]) || !colon || colon == line)
        return total;

    size_t name_len = (size_t)(colon - line);
    const char *value = colon + 1;
    const char *end = line + len;
    while (value < end && is_ows(*value))
        value++;
    while (end > value && is_ows(end[-1]))
        end--;
    if (x->nheaders == MOAT_HTTP_CLIENT_MAX_RESPONSE_HEADERS ||
        x->hdr_buf.len + len + 2 > MOAT_HTTP_CLIENT_MAX_RESPONSE_HEADER_BYTES) {
        x->too_big = true;
        return 0; /* aborts the transfer */
    }
    x->hdr_off[2 * x->nheaders] = x->hdr_buf.len;
    for (size_t i = 0; i < name_len; i++)
        moat_buf_addch(&x->hdr_buf, (char)tolower((unsigned char)line[i]));
    moat_buf_addch(&x->hdr_buf, '\0');
    x->hdr_off[2 * x->nheaders + 1] = x->hdr_buf.len;
    moat_buf_add(&x->hdr_buf, value, (size_t)(end - value));
    moat_buf_addch(&x->hdr_buf, '\0');
    x->nheaders++;
    return total;
}

static void xfer_free(struct xfer *x)
{
    struct moat_http_client *c = x->client;
    if (x->easy && !c->closing && c->nidle < EASY_POOL_MAX) {
        /* Options only; connections stay cached. */
        bool plain_get =
            strcmp(x->method, "GET") == 0 && !x->body && !x->on_data;
        if (!plain_get) {
            curl_easy_reset(x->easy);
        } else { /* nothing may point into x once it is freed */
            curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, NULL);
            curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, NULL);
            curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, NULL);
            curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, NULL);
            curl_easy_setopt(x->easy, CURLOPT_PRIVATE, NULL);
        }
        c->idle[c->nidle].easy = x->easy;
        c->idle[c->nidle++].configured = plain_get;
    } else if (x->easy) {
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->headers);
    free(x->url);
    free(x->method);
    free(x->body);
    moat_buf_release(&x->resp_body);
    moat_buf_release(&x->hdr_buf);
    free(x);
}

/* Unlink x from its client and the multi handle. */
static void xfer_detach(struct xfer *x)
{
    struct moat_http_client *c = x->client;
    curl_multi_remove_handle(c->multi, x->easy);
    if (x->prev)
        x->prev->next = x->next;
    else
        c->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    c->npending--;
}

static bool is_connect_error(CURLcode rc)
{
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
           rc == CURLE_COULDNT_RESOLVE_PROXY;
}

/*
 * Complete x: detach it, call its callback once with the outcome (err
 * overrides rc, e.g. MOAT_ECANCELLED), free it.
 */
static void xfer_finish(struct xfer *x, CURLcode rc, int err)
{
    struct moat_http_response r = {0};
    struct moat_http_header hdrs[MOAT_HTTP_CLIENT_MAX_RESPONSE_HEADERS];

    xfer_detach(x);
    r.elapsed_ms = (double)(moat_mono_ns() - x->start_ns) / 1e6;
    if (err == MOAT_OK && rc != CURLE_OK) {
        if (x->too_big || rc == CURLE_FILESIZE_EXCEEDED)
            err = MOAT_ETOOBIG;
        else if (rc == CURLE_OPERATION_TIMEDOUT)
            err = MOAT_ETIMEDOUT;
        else
            err = MOAT_EIO;
    }
    r.err = err;
    if (err == MOAT_ETOOBIG) {
        r.err_msg = "response larger than the client's limit";
    } else if (err == MOAT_ECANCELLED) {
        r.err_msg = "call cancelled: client freed";
    } else if (err != MOAT_OK) {
        r.err_msg = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
        curl_off_t connect_us = 0;
        curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
        /* A timeout before any connection existed (connect timeout, or
         * queued behind max_host_conns) never sent the request. */
        r.connect_failed = is_connect_error(rc) ||
                           (rc == CURLE_OPERATION_TIMEDOUT && connect_us == 0);
        long header_bytes = 0;
        curl_easy_getinfo(x->easy, CURLINFO_HEADER_SIZE, &header_bytes);
        r.no_response = header_bytes == 0 && x->resp_body.len == 0;
    }
    if (err == MOAT_OK) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        r.status = (int)status;
        for (size_t i = 0; i < x->nheaders; i++) {
            hdrs[i].name = x->hdr_buf.data + x->hdr_off[2 * i];
            hdrs[i].value = x->hdr_buf.data + x->hdr_off[2 * i + 1];
        }
        r.headers = hdrs;
        r.nheaders = x->nheaders;
        r.body = moat_buf_str(&x->resp_body);
        r.body_len = x->resp_body.len;
    } else {
        r.body = "";
    }
    x->cb(&r, x->arg);
    xfer_free(x);
}

static void client_destroy(struct moat_http_client *c)
{
    /* Closing cached connections may still call sock_cb: c stays valid
     * until after curl_multi_cleanup. */
    curl_multi_cleanup(c->multi);
    while (c->nidle)
        curl_easy_cleanup(c->idle[--c->nidle].easy);
    curl_share_cleanup(c->tls_sessions);
    while (c->socks)
        sock_free(c, c->socks);
    event_free(c->timer);
    free(c);
}

/* Collect finished transfers, then run a deferred destroy if any. */
static void dispatch(struct moat_http_client *c)
{
    CURLMsg *m;
    int left;

    c->dispatching++;
    while (!c->closing && (m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        /* m is invalid once the handle is removed: copy what we need. */
        CURLcode rc = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        xfer_finish((struct xfer *)priv, rc, MOAT_OK);
    }
    c->dispatching--;
    if (c->closing && c->dispatching == 0)
        client_destroy(c);
}

/* --- public API --- */

int moat_http_client_new(struct moat_http_client **out, struct event_base *base,
                         const struct moat_http_client_options *opts)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK || !base)
        return curl_init_rc != CURLE_OK ? MOAT_EIO : MOAT_EINVAL;

    struct moat_http_client *c = moat_xcalloc(1, sizeof(*c));
    c->base = base;
    if (opts)
        c->opts = *opts;
    if (c->opts.connect_timeout_ms <= 0)
        c->opts.connect_timeout_ms =
            MOAT_HTTP_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS;
    if (c->opts.timeout_ms <= 0)
        c->opts.timeout_ms = MOAT_HTTP_CLIENT_DEFAULT_TIMEOUT_MS;
    if (c->opts.max_response == 0)
        c->opts.max_response = MOAT_HTTP_CLIENT_DEFAULT_MAX_RESPONSE;
    if (c->opts.max_host_conns <= 0)
        c->opts.max_host_conns = MOAT_HTTP_CLIENT_DEFAULT_MAX_HOST_CONNS;

    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, on_timer, c);
    if (!c->multi || !c->timer)
        moat_die("cannot create an HTTP client (curl multi or event)");
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      c->opts.max_host_conns);
    /* Keep as many idle connections as the hosts may use, so a burst does
     * not end in a wave of closes and reconnects. curl's cache is one for
     * all hosts: sized for max_host_conns on each of a gateway's
     * upstreams (a cache of max_host_conns alone made several upstreams
     * evict each other's connections). */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS,
                      c->opts.max_host_conns * CACHE_HOSTS);
    /* A new connection resumes a TLS session another handle made. */
    c->tls_sessions = curl_share_init();
    if (c->tls_sessions)
        curl_share_setopt(c->tls_sessions, CURLSHOPT_SHARE,
                          CURL_LOCK_DATA_SSL_SESSION);
    *out = c;
    return MOAT_OK;
}

struct event_base *moat_http_client_base(const struct moat_http_client *c)
{
    return c->base;
}

size_t moat_http_client_pending(const struct moat_http_client *c)
{
    return c->npending;
}

void moat_http_client_free(struct moat_http_client *c)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    c->dispatching++;
    while (c->xfers)
        xfer_finish(c->xfers, CURLE_OK, MOAT_ECANCELLED);
    c->dispatching--;
    if (c->dispatching == 0)
        client_destroy(c);
}

static bool is_tchar(unsigned char ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool valid_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (!is_tchar((unsigned char)*s))
            return false;
    return true;
}

static bool valid_value(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return false;
    return true;
}

static bool curl_valid_url(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    bool ok = false;

    if (!u)
        moat_die("out of memory parsing a URL");
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto cleanup;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        goto cleanup;
    ok = (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) &&
         host[0] != '\0';
cleanup:
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

/* Length of url's origin ("http://host:port") when it has an http(s)
 * scheme, else 0. */
static size_t origin_len(const char *url)
{
    size_t skip = strncmp(url, "http://", 7) == 0    ? 7
                  : strncmp(url, "https://", 8) == 0 ? 8
                                                     : 0;
    return skip ? skip + strcspn(url + skip, "/?#") : 0;
}

/*
 * Every call's URL is checked, and curl's URL parser costs allocations
 * per call. A service calls a handful of origins: one curl_url() check
 * per origin is remembered, and a URL on a known origin whose rest is
 * plain visible ASCII needs nothing more (curl_url() accepts such a
 * path). Anything else gets the full check.
 */
static bool valid_url(struct moat_http_client *c, const char *url)
{
    size_t olen = origin_len(url);
    if (olen == 0 || olen >= sizeof(c->origins[0]))
        return curl_valid_url(url);
    bool plain = true;
    for (const char *p = url + olen; *p && plain; p++)
        plain = *p > ' ' && *p <= '~';
    if (plain)
        for (size_t i = 0; i < c->norigins; i++)
            if (strncmp(c->origins[i], url, olen) == 0 &&
                c->origins[i][olen] == '\0')
                return true;
    if (!curl_valid_url(url))
        return false;
    if (plain) {
        /* Known origins only grow; past the table, the oldest goes. */
        size_t slot = c->norigins < MOAT_ARRAY_LEN(c->origins)
                          ? c->norigins++
                          : c->origin_next++ % MOAT_ARRAY_LEN(c->origins);
        memcpy(c->origins[slot], url, olen);
        c->origins[slot][olen] = '\0';
    }
    return true;
}

static struct curl_slist *add_header(struct curl_slist *list, const char *name,
                                     const char *value)
{
    /* "Name;" is curl's spelling of a header with an empty value ("Name:"
     * would remove the header). */
    char small[512];
    size_t nlen = strlen(name), vlen = strlen(value);
    char *line = nlen + vlen + 3 <= sizeof(small)
                     ? small
                     : moat_xmalloc(nlen + vlen + 3);
    memcpy(line, name, nlen);
    if (vlen) {
        line[nlen] = ':';
        line[nlen + 1] = ' ';
        memcpy(line + nlen + 2, value, vlen + 1);
    } else {
        memcpy(line + nlen, ";", 2);
    }
    struct curl_slist *l = curl_slist_append(list, line);
    if (line != small)
        free(line);
    if (!l)
        moat_die("out of memory building request headers");
    return l;
}

static bool is_trace_header(const char *name)
{
    return strcasecmp(name, "traceparent") == 0 ||
           strcasecmp(name, "x-request-id") == 0;
}

static struct curl_slist *build_headers(const struct moat_http_call *call)
{
    struct curl_slist *l = NULL;
    bool has_type = false;

    for (size_t i = 0; i < call->nheaders; i++) {
        const struct moat_http_header *h = &call->headers[i];
        if (call->trace && is_trace_header(h->name))
            continue;
        if (strcasecmp(h->name, "content-type") == 0)
            has_type = true;
        l = add_header(l, h->name, h->value);
    }
    if (call->trace) {
        char tp[MOAT_TRACEPARENT_LEN + 1];
        moat_trace_format(call->trace, tp);
        l = add_header(l, "traceparent", tp);
        if (call->trace->request_id[0])
            l = add_header(l, "X-Request-Id", call->trace->request_id);
    }
    /* curl would add "Content-Type: application/x-www-form-urlencoded" to
     * any body, and "Expect: 100-continue" (a round trip) to large ones. */
    if (!has_type && (call->body || call->body_len))
        l = curl_slist_append(l, "Content-Type:");
    l = curl_slist_append(l, "Expect:");
    if (!l)
        moat_die("out of memory building request headers");
    return l;
}

static void setup_method(struct xfer *x, const struct moat_http_call *call)
{
    CURL *e = x->easy;
    const char *m = x->method;
    bool wants_body = strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 ||
                      strcmp(m, "PATCH") == 0;

    if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        return;
    }
    if (call->body_len > 0 || wants_body) {
        /* Send exactly body_len bytes (binary safe); an empty body still
         * gets Content-Length: 0, which servers expect for POST/PUT. */
        x->body = moat_xmalloc(call->body_len + 1);
        if (call->body_len)
            memcpy(x->body, call->body, call->body_len);
        x->body_len = call->body_len;
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)x->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body);
        if (strcmp(m, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
        return;
    }
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (strcmp(m, "GET") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
}

static void setup_common(struct moat_http_client *c, CURL *e);

int moat_http_client_send(struct moat_http_client *c,
                          const struct moat_http_call *call,
                          moat_http_client_cb cb, void *arg)
{
    if (c->closing)
        return MOAT_ECANCELLED;
    if (!call || !cb || !valid_token(call->method) || !call->url ||
        !valid_url(c, call->url) || call->timeout_ms < 0 ||
        (call->nheaders && !call->headers) || (call->body_len && !call->body))
        return MOAT_EINVAL;
    for (size_t i = 0; i < call->nheaders; i++) {
        const struct moat_http_header *h = &call->headers[i];
        if (!valid_token(h->name) || !h->value || !valid_value(h->value))
            return MOAT_EINVAL;
    }

    struct xfer *x = moat_xcalloc(1, sizeof(*x));
    x->client = c;
    x->cb = cb;
    x->arg = arg;
    x->url = moat_xstrdup(call->url);
    x->method = moat_xstrdup(call->method);
    x->headers = build_headers(call);
    x->start_ns = moat_mono_ns();
    bool configured = false;
    if (c->nidle) {
        c->nidle--;
        x->easy = c->idle[c->nidle].easy;
        configured = c->idle[c->nidle].configured;
    } else {
        x->easy = curl_easy_init();
    }
    if (!x->easy)
        moat_die("out of memory creating a curl handle");

    long timeout = call->timeout_ms ? call->timeout_ms : c->opts.timeout_ms;
    long connect_timeout = c->opts.connect_timeout_ms < timeout
                               ? c->opts.connect_timeout_ms
                               : timeout;
    CURL *e = x->easy;
    if (!configured)
        setup_common(c, e);
    curl_easy_setopt(e, CURLOPT_URL, x->url);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout);
    if (call->on_data) {
        /* No total timeout: at least a byte a second for timeout_ms. */
        x->on_data = call->on_data;
        x->data_arg = call->data_arg;
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (timeout + 999) / 1000);
    } else {
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    }
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    /* https:// URLs: mutual TLS with the process identity (moat/tls.h). */
    curl_easy_setopt(e, CURLOPT_SHARE, c->tls_sessions);
    if (moat_tls_curl(e) != MOAT_OK) {
        xfer_free(x);
        return MOAT_EIO;
    }
    setup_method(x, call);

    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        xfer_free(x);
        return MOAT_EIO;
    }
    x->next = c->xfers;
    if (c->xfers)
        c->xfers->prev = x;
    c->xfers = x;
    c->npending++;
    return MOAT_OK;
}

/* The options every call has, set on a new or reset easy handle. */
static void setup_common(struct moat_http_client *c, CURL *e)
{
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    /* "" disables proxies, including http_proxy and friends from the
     * environment: service calls go straight to the service. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, KEEPALIVE_IDLE_S);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S);
    /* Fails early when Content-Length announces more than the cap; chunked
     * bodies are caught by on_body. */
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                     (curl_off_t)c->opts.max_response);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
}

const char *moat_http_response_header(const struct moat_http_response *r,
                                      const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}
