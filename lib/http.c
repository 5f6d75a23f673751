/*
 * http.c - the HTTP/1.1 server and router (see moat/http.h).
 *
 * evhttp does the protocol work (parsing, keep-alive, chunking, limits,
 * timeouts); this file adds what evhttp 2.1 lacks: routing with path
 * parameters and 404/405, a connection cap, request metrics, access logs,
 * trace context, draining, and problem+json for every error - including the
 * ones evhttp generates itself (see evhttp_send_error() at the end).
 */
#include "moat/common.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/http.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "moat/tls.h"

#define NMETHODS        7
#define MAX_SEGMENTS    32
#define MAX_DRAIN_HOOKS 8
#define LISTEN_BACKLOG  4096 /* capped by net.core.somaxconn */

struct segment {
    char *text; /* literal text, or parameter name */
    bool param; /* {name} */
    bool rest;  /* {name*}: matches the remaining segments */
};

struct route {
    char *pattern;
    struct segment segs[MAX_SEGMENTS];
    size_t nsegs;
    unsigned methods;
    moat_handler_fn fn[NMETHODS];
    void *arg[NMETHODS];
    unsigned flags;                     /* enum moat_route_flags */
    struct moat_metric_series *latency; /* by route */
    /* "/v2/..." when the route is also served as API v2 (NULL if not),
     * and its latency series. */
    char *pattern_v2;
    struct moat_metric_series *latency_v2;
};

/* What the server knows of one client connection, from its first byte to
 * its close (see "framing" below). */
struct conn {
    struct evhttp_connection *evcon;
    struct moat_http_server *srv;
    /* Armed at a request's first byte, disarmed when its headers are
     * complete: a client trickling header bytes is cut at the header
     * timeout from its first byte, however often it sends. */
    struct event *header_timer;
    /* A chunked request whose body is being read (its chunk-size lines
     * are checked as they arrive), or NULL. */
    struct evhttp_request *chunked;
    struct evbuffer_cb_entry *input_cb;
    /* The answer to the next error evhttp sends on this connection, set
     * where moat refuses what evhttp would accept (0: evhttp's own). */
    int verdict;
    char verdict_detail[160];
};

/* Open-addressing map of live connections by evhttp connection (evhttp
 * 2.1 keeps no count and has no per-connection user data). */
struct conn_set {
    struct conn **slots;
    size_t cap; /* power of two */
    size_t used;
};

struct moat_http_server {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    SSL_CTX *tls; /* moat_http_set_tls; NULL = plain HTTP */
    struct moat_http_limits lim;
    struct route **routes;
    size_t nroutes;
    struct conn_set conns;
    unsigned in_flight;
    bool listener_paused;
    struct event *accept_retry; /* re-enables accepting after EMFILE */
    uint64_t accept_errors;     /* logged once per pause, not per retry */
    bool draining;
    bool access_log;
    void (*on_idle)(void *);
    void *idle_arg;
    moat_guard_fn guard;
    void *guard_arg;
    struct {
        void (*fn)(void *);
        void *arg;
    } drain_hooks[MAX_DRAIN_HOOKS];
    size_t ndrain_hooks;
    struct moat_metrics *metrics;
    struct moat_metric_family *m_requests;  /* {route,method,status} */
    struct moat_metric_family *m_latency;   /* {route} */
    struct moat_metric_series *m_in_flight; /* gauge */
    struct moat_metric_series *m_conns;     /* gauge */
    struct moat_metric_family *m_rejected;  /* {reason} */
};

struct moat_req {
    struct moat_http_server *srv;
    struct evhttp_request *ev;
    enum moat_method method;
    struct route *route;
    const char *route_name; /* pattern, or a label for unrouted requests */
    char *path;             /* decoded */
    const char *param_names[MOAT_HTTP_MAX_PATH_PARAMS];
    char *param_values[MOAT_HTTP_MAX_PATH_PARAMS];
    size_t nparams;
    char *query_keys[MOAT_HTTP_MAX_QUERY_PARAMS]; /* decoded, owned */
    char *query_values[MOAT_HTTP_MAX_QUERY_PARAMS];
    size_t nquery;
    char *body;
    size_t body_len;
    bool body_loaded;
    struct moat_trace trace;
    struct moat_principal principal;
    uint64_t start_ns;
    int api_version;   /* 1, or 2 (moat/http.h "API versions") */
    int stream_status; /* a streamed reply's status, for finish() */
};

/* The server whose limits evhttp's own error pages report (one per
 * process in practice); see evhttp_send_error() below. */
static struct moat_http_server *g_server;

static const struct {
    enum moat_method m;
    enum evhttp_cmd_type ev;
    const char *name;
} methods[NMETHODS] = {
    {MOAT_GET, EVHTTP_REQ_GET, "GET"},
    {MOAT_POST, EVHTTP_REQ_POST, "POST"},
    {MOAT_PUT, EVHTTP_REQ_PUT, "PUT"},
    {MOAT_PATCH, EVHTTP_REQ_PATCH, "PATCH"},
    {MOAT_DELETE, EVHTTP_REQ_DELETE, "DELETE"},
    {MOAT_HEAD, EVHTTP_REQ_HEAD, "HEAD"},
    {MOAT_OPTIONS, EVHTTP_REQ_OPTIONS, "OPTIONS"},
};

static int method_index(enum moat_method m)
{
    for (int i = 0; i < NMETHODS; i++)
        if (methods[i].m == m)
            return i;
    return -1;
}

const char *moat_method_name(enum moat_method m)
{
    int i = method_index(m);
    return i < 0 ? "?" : methods[i].name;
}

/* ---- connection set ---- */

static size_t ptr_hash(const void *p, size_t cap)
{
    uintptr_t x = (uintptr_t)p;
    x ^= x >> 17;
    x *= 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 7) & (cap - 1);
}

static struct conn *conn_set_get(const struct conn_set *s,
                                 const struct evhttp_connection *c)
{
    if (!s->cap)
        return NULL;
    for (size_t i = ptr_hash(c, s->cap);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slots[i])
            return NULL;
        if (s->slots[i]->evcon == c)
            return s->slots[i];
    }
}

static void conn_set_put(struct conn_set *s, struct conn *c);

static void conn_set_rehash(struct conn_set *s, size_t cap)
{
    struct conn_set n = {moat_xcalloc(cap, sizeof(*n.slots)), cap, 0};
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i])
            conn_set_put(&n, s->slots[i]);
    free(s->slots);
    *s = n;
}

static void conn_set_put(struct conn_set *s, struct conn *c)
{
    if ((s->used + 1) * 2 > s->cap)
        conn_set_rehash(s, s->cap ? s->cap * 2 : 64);
    size_t i = ptr_hash(c->evcon, s->cap);
    while (s->slots[i])
        i = (i + 1) & (s->cap - 1);
    s->slots[i] = c;
    s->used++;
}

/* Remove c's entry (c itself is the caller's). */
static void conn_set_del(struct conn_set *s, const struct conn *c)
{
    if (!s->cap)
        return;
    size_t i = ptr_hash(c->evcon, s->cap);
    while (s->slots[i] != c) {
        if (!s->slots[i])
            return;
        i = (i + 1) & (s->cap - 1);
    }
    /* Backward-shift deletion keeps probe chains intact without
     * tombstones. */
    s->slots[i] = NULL;
    s->used--;
    for (size_t j = (i + 1) & (s->cap - 1); s->slots[j];
         j = (j + 1) & (s->cap - 1)) {
        struct conn *moved = s->slots[j];
        s->slots[j] = NULL;
        s->used--;
        conn_set_put(s, moved);
    }
}

static void update_listener(struct moat_http_server *s)
{
    if (!s->sock || s->draining)
        return;
    struct evconnlistener *l = evhttp_bound_socket_get_listener(s->sock);
    bool full = s->conns.used >= s->lim.max_connections;
    /* At the cap we stop accepting: further clients wait in the kernel's
     * backlog instead of costing us memory. */
    if (full && !s->listener_paused) {
        evconnlistener_disable(l);
        s->listener_paused = true;
        moat_log(MOAT_LOG_WARN, "connection cap reached, pausing accept",
                 "{s:I}", "max_connections",
                 (json_int_t)s->lim.max_connections);
    } else if (!full && s->listener_paused) {
        evconnlistener_enable(l);
        s->listener_paused = false;
    }
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    struct moat_http_server *s = arg;
    if (!s->sock || s->draining)
        return;
    if (!s->listener_paused)
        evconnlistener_enable(evhttp_bound_socket_get_listener(s->sock));
}

/*
 * accept() failed (out of file descriptors, usually). libevent would retry
 * at once, forever: the loop spins at 100% CPU and logs every failure.
 * Stop accepting for a moment instead; clients wait in the backlog.
 */
/* libevent hands the listener's error callback evhttp's own argument (the
 * struct evhttp): servers are found by it. */
#define MAX_SERVERS 8
static struct moat_http_server *servers[MAX_SERVERS];

static void servers_add(struct moat_http_server *s)
{
    for (size_t i = 0; i < MAX_SERVERS; i++)
        if (!servers[i]) {
            servers[i] = s;
            return;
        }
}

static void servers_del(struct moat_http_server *s)
{
    for (size_t i = 0; i < MAX_SERVERS; i++)
        if (servers[i] == s)
            servers[i] = NULL;
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct moat_http_server *s = NULL;
    for (size_t i = 0; i < MAX_SERVERS && !s; i++)
        if (servers[i] && (void *)servers[i]->http == arg)
            s = servers[i];
    int err = EVUTIL_SOCKET_ERROR();
    if (!s) {
        evconnlistener_disable(l); /* unknown: never spin */
        return;
    }
    evconnlistener_disable(l);
    if (s->accept_errors++ % 100 == 0)
        moat_log(MOAT_LOG_WARN, "accept failed, pausing 100 ms",
                 "{s:s, s:I, s:I}", "error", strerror(err), "connections",
                 (json_int_t)s->conns.used, "failures",
                 (json_int_t)s->accept_errors);
    const char *labels[] = {"accept_failed"};
    moat_metric_add(moat_metric_series(s->m_rejected, labels), 1);
    if (!s->accept_retry)
        s->accept_retry = evtimer_new(s->base, on_accept_retry, s);
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(s->accept_retry, &tv);
}

static void reject_count(struct moat_http_server *s, const char *reason)
{
    const char *labels[] = {reason};
    moat_metric_add(moat_metric_series(s->m_rejected, labels), 1);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct moat_http_server *s = arg;
    struct conn *c = conn_set_get(&s->conns, evcon);
    if (!c)
        return;
    conn_set_del(&s->conns, c);
    if (c->input_cb)
        evbuffer_remove_cb_entry(
            bufferevent_get_input(evhttp_connection_get_bufferevent(evcon)),
            c->input_cb);
    event_free(c->header_timer);
    free(c);
    moat_metric_set(s->m_conns, (double)s->conns.used);
    update_listener(s);
}

/* ---- framing (RFC 9112) ----
 *
 * evhttp 2.1 accepts what RFC 9112 says a server must refuse (two
 * Content-Length values, a request without Host, whitespace before a
 * header name's colon, transfer codings it does not know), reads an
 * oversized body to its end before answering, and has no hook between
 * parsing a request's head and reading its body. Its two parsing steps,
 * evhttp_parse_firstline_() and evhttp_parse_headers_(), are exported and
 * called through libevent's PLT, so the definitions below take their place
 * (the executables export them, see lib/CMakeLists.txt, as with
 * evhttp_send_error): each calls libevent's own, then checks what it
 * parsed. A refusal returns DATA_CORRUPTED, which evhttp answers through
 * evhttp_send_error() (below) with the connection's verdict, and closes.
 */

enum parse_status { /* evhttp's enum message_read_status (http-internal.h) */
                    ALL_DATA_READ = 1,
                    MORE_DATA_EXPECTED = 0,
                    DATA_CORRUPTED = -1,
};

#define MAX_CHUNK_LINE 1024 /* chunk size plus extensions */

typedef int (*parse_fn)(struct evhttp_request *, struct evbuffer *);

static parse_fn libevent_parse(const char *name)
{
    parse_fn fn = NULL;
    void *sym = dlsym(RTLD_NEXT, name);
    memcpy(&fn, &sym, sizeof(fn));
    if (!fn)
        moat_die("libevent has no %s", name);
    return fn;
}

static struct moat_http_server *server_of(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct evhttp *http = evcon ? evhttp_connection_get_server(evcon) : NULL;
    for (size_t i = 0; http && i < MAX_SERVERS; i++)
        if (servers[i] && servers[i]->http == http)
            return servers[i];
    return NULL;
}

static void on_header_timeout(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct conn *c = arg;
    if (c->verdict) {
        reject_count(c->srv, "protocol_error");
    } else {
        reject_count(c->srv, "header_timeout");
        moat_log(MOAT_LOG_WARN, "request headers too slow: connection closed",
                 "{s:I}", "header_timeout_ms",
                 (json_int_t)c->srv->lim.header_timeout_ms);
    }
    evhttp_connection_free(c->evcon); /* frees c (on_conn_close) */
}

/* The connection's entry, made at its first byte. */
static struct conn *conn_of(struct moat_http_server *s,
                            struct evhttp_connection *evcon)
{
    struct conn *c = conn_set_get(&s->conns, evcon);
    if (c)
        return c;
    c = moat_xcalloc(1, sizeof(*c));
    c->evcon = evcon;
    c->srv = s;
    c->header_timer = evtimer_new(s->base, on_header_timeout, c);
    if (!c->header_timer)
        moat_die("evtimer_new failed");
    conn_set_put(&s->conns, c);
    evhttp_connection_set_closecb(evcon, on_conn_close, s);
    moat_metric_set(s->m_conns, (double)s->conns.used);
    update_listener(s);
    return c;
}

static int refuse(struct conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(struct conn *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->verdict_detail, sizeof(c->verdict_detail), fmt, ap);
    va_end(ap);
    c->verdict = status;
    return DATA_CORRUPTED;
}

/*
 * Origin-form is served as it is; absolute-form ("http://host/path?q",
 * which a server must accept) becomes the origin-form of its path and
 * query, in req->uri itself: the router and everything that reads the raw
 * target (the gateway's allow-list and upstream mapping) then see one and
 * the same path. Any other form is refused, as before: a target whose
 * parts evhttp reads differently from a path (a scheme other than
 * http(s), a "//" that it takes for an authority) would let those two
 * readings disagree, which is how a non-public route once passed the
 * gateway's allow-list.
 */
static int check_target(struct conn *c, struct evhttp_request *req)
{
    if (req->type == EVHTTP_REQ_CONNECT)
        return ALL_DATA_READ; /* 501, then closed (evhttp_send_error) */
    const char *uri = req->uri;
    const struct evhttp_uri *u = req->uri_elems;
    if (uri[0] == '/') {
        if (uri[1] == '/')
            return refuse(c, 400, "the request path starts with '//'");
        if (strchr(uri, '#'))
            return refuse(c, 400, "the request target has a fragment");
        return ALL_DATA_READ;
    }
    const char *scheme = evhttp_uri_get_scheme(u);
    const char *host = evhttp_uri_get_host(u);
    if (!scheme || !host || !*host ||
        (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0))
        return refuse(c, 400,
                      "the request target is neither an absolute path nor "
                      "an http(s) URL");
    if (evhttp_uri_get_userinfo(u) || evhttp_uri_get_fragment(u) ||
        strchr(uri, '#'))
        return refuse(c, 400,
                      "the request target has user information or a "
                      "fragment");
    const char *path = evhttp_uri_get_path(u);
    const char *query = evhttp_uri_get_query(u);
    if (!path || !*path)
        path = "/";
    if (path[0] != '/' || path[1] == '/')
        return refuse(c, 400, "the request target's path is not valid");
    char *origin =
        moat_xasprintf("%s%s%s", path, query ? "?" : "", query ? query : "");
    struct evhttp_uri *parsed =
        evhttp_uri_parse_with_flags(origin, EVHTTP_URI_NONCONFORMANT);
    if (!parsed) {
        free(origin);
        return refuse(c, 400, "the request target's path is not valid");
    }
    /* libevent allocates with malloc (no event_set_mem_functions here). */
    free(req->uri);
    req->uri = origin;
    evhttp_uri_free(req->uri_elems);
    req->uri_elems = parsed;
    req->flags &= ~EVHTTP_PROXY_REQUEST; /* not a proxy: ours */
    return ALL_DATA_READ;
}

static bool is_tchar(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
           (ch >= 'A' && ch <= 'Z') || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* A Content-Length field value: one decimal, or a list of equal ones
 * ("42, 42"). -1: not a number; -2: beyond 64 bits; -3: unequal. */
static int parse_length_list(const char *v, uint64_t *out, bool *have)
{
    const char *p = v;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p < '0' || *p > '9')
            return -1;
        uint64_t n = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (n > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
                return -2;
            n = n * 10 + (uint64_t)(*p - '0');
        }
        if (*have && n != *out)
            return -3;
        *out = n;
        *have = true;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            return 0;
        if (*p++ != ',')
            return -1;
    }
}

/* Transfer-Encoding must be exactly "chunked" (one coding, once). */
static int check_transfer_encoding(struct conn *c, const char *te,
                                   unsigned count)
{
    size_t len = strlen(te);
    while (len && (te[len - 1] == ' ' || te[len - 1] == '\t'))
        len--;
    if (count == 1 && len == 7 && strncasecmp(te, "chunked", 7) == 0)
        return ALL_DATA_READ;
    if (len >= 7 && strncasecmp(te + len - 7, "chunked", 7) == 0)
        return refuse(c, 501,
                      "the only transfer coding supported is chunked, "
                      "alone");
    return refuse(c, 400, "the request body's framing is not chunked");
}

static int check_headers(struct conn *c, struct evhttp_request *req)
{
    struct moat_http_server *s = c->srv;
    struct evkeyvalq *h = req->input_headers;
    struct evkeyval *kv;
    unsigned hosts = 0, tes = 0;
    const char *te = NULL;
    uint64_t length = 0;
    bool have_length = false;
    TAILQ_FOREACH(kv, h, next)
    {
        if (!*kv->key)
            return refuse(c, 400, "a header has no name");
        for (const char *k = kv->key; *k; k++)
            if (!is_tchar((unsigned char)*k))
                return refuse(c, 400,
                              "a header name has a character that is not "
                              "allowed (whitespace before the colon?)");
        if (strcasecmp(kv->key, "Host") == 0)
            hosts++;
        else if (strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            te = kv->value;
            tes++;
        } else if (strcasecmp(kv->key, "Content-Length") == 0) {
            int rc = parse_length_list(kv->value, &length, &have_length);
            if (rc == -2)
                return refuse(c, 400, "Content-Length is beyond 64 bits");
            if (rc == -3)
                return refuse(c, 400, "two different Content-Length values");
            if (rc < 0)
                return refuse(c, 400, "Content-Length is not a number");
        }
    }
    bool http11 = req->major > 1 || (req->major == 1 && req->minor >= 1);
    if (hosts > 1 || (hosts == 0 && http11))
        return refuse(c, 400, "an HTTP/1.1 request needs exactly one Host");
    if (te && !http11)
        return refuse(c, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (te && have_length)
        return refuse(c, 400,
                      "both Transfer-Encoding and Content-Length: the "
                      "body's framing is ambiguous");
    if (te)
        return check_transfer_encoding(c, te, tes);
    if (have_length && length > s->lim.max_body_bytes)
        return refuse(c, 413, "the request body exceeds the limit of %zu bytes",
                      s->lim.max_body_bytes);
    if (have_length) {
        /* One value for evhttp, which reads only the first field. */
        while (evhttp_remove_header(h, "Content-Length") == 0)
            ;
        char v[24];
        snprintf(v, sizeof(v), "%" PRIu64, length);
        evhttp_add_header(h, "Content-Length", v);
    }
    return ALL_DATA_READ;
}

/*
 * The chunk-size lines evhttp has yet to read from in, read as evhttp
 * will; left is its reader's state (req->ntoread: the bytes left of the
 * current chunk, or -1 before a size line). false at the first line that
 * is invalid: evhttp reports that as too large (413), and the verdict
 * makes it a 400. A size line longer than MAX_CHUNK_LINE is invalid too:
 * evhttp would buffer it without limit.
 */
static bool chunks_valid(int64_t left, struct evbuffer *in)
{
    size_t len = evbuffer_get_length(in), off = 0;
    while (off < len) {
        if (left > 0) {
            if ((uint64_t)left > len - off)
                return true;
            off += (size_t)left;
            left = -1;
            continue;
        }
        if (left == 0)
            return true; /* the last chunk: trailers follow */
        struct evbuffer_ptr at;
        size_t eol = 0;
        evbuffer_ptr_set(in, &at, off, EVBUFFER_PTR_SET);
        struct evbuffer_ptr end =
            evbuffer_search_eol(in, &at, &eol, EVBUFFER_EOL_CRLF);
        if (end.pos < 0)
            return len - off <= MAX_CHUNK_LINE;
        size_t n = (size_t)end.pos - off;
        if (n > MAX_CHUNK_LINE)
            return false;
        char line[MAX_CHUNK_LINE + 1];
        evbuffer_copyout_from(in, &at, line, n);
        line[n] = '\0';
        off += n + eol;
        if (n == 0)
            continue; /* the CRLF after a chunk's data */
        char *endp = NULL;
        errno = 0;
        long long size = strtoll(line, &endp, 16);
        if (endp == line || (*endp && *endp != ' ') || size < 0 ||
            errno == ERANGE)
            return false;
        left = size;
    }
    return true;
}

/*
 * Runs as bytes arrive, before evhttp reads them. An invalid chunk size
 * gets the verdict evhttp's answer will carry; the connection's timer is
 * armed at zero as well, closing it should evhttp not refuse the line
 * itself (one it would accept, or buffer without end). The verdict's
 * answer disarms it (evhttp_send_error).
 */
static void on_input(struct evbuffer *in, const struct evbuffer_cb_info *info,
                     void *arg)
{
    struct conn *c = arg;
    if (!info->n_added || !c->chunked || c->verdict ||
        chunks_valid(c->chunked->ntoread, in))
        return;
    refuse(c, 400, "a chunk size is not valid");
    struct timeval now = {0, 0};
    evtimer_add(c->header_timer, &now);
}

static void watch_chunks(struct conn *c, struct evhttp_request *req)
{
    c->chunked = req;
    if (!c->input_cb)
        c->input_cb = evbuffer_add_cb(
            bufferevent_get_input(evhttp_connection_get_bufferevent(c->evcon)),
            on_input, c);
}

enum parse_status evhttp_parse_firstline_(struct evhttp_request *req,
                                          struct evbuffer *buffer);
enum parse_status evhttp_parse_firstline_(struct evhttp_request *req,
                                          struct evbuffer *buffer)
{
    static parse_fn parse;
    if (!parse)
        parse = libevent_parse("evhttp_parse_firstline_");
    struct moat_http_server *s =
        req->kind == EVHTTP_REQUEST ? server_of(req) : NULL;
    if (!s)
        return parse(req, buffer);
    struct conn *c = conn_of(s, req->evcon);
    if (!evtimer_pending(c->header_timer, NULL) &&
        evbuffer_get_length(buffer)) {
        struct timeval tv = {s->lim.header_timeout_ms / 1000,
                             (s->lim.header_timeout_ms % 1000) * 1000};
        evtimer_add(c->header_timer, &tv);
    }
    int rc = parse(req, buffer);
    return rc == ALL_DATA_READ ? check_target(c, req) : rc;
}

enum parse_status evhttp_parse_headers_(struct evhttp_request *req,
                                        struct evbuffer *buffer);
enum parse_status evhttp_parse_headers_(struct evhttp_request *req,
                                        struct evbuffer *buffer)
{
    static parse_fn parse;
    if (!parse)
        parse = libevent_parse("evhttp_parse_headers_");
    struct moat_http_server *s =
        req->kind == EVHTTP_REQUEST ? server_of(req) : NULL;
    struct conn *c = s ? conn_set_get(&s->conns, req->evcon) : NULL;
    int rc = parse(req, buffer);
    if (!c)
        return rc;
    if (req->chunked) { /* the trailer after a chunked body */
        if (rc < 0)
            return refuse(c, 400, "the chunked body's trailer is not valid");
        return rc;
    }
    if (rc != ALL_DATA_READ)
        return rc;
    evtimer_del(c->header_timer);
    c->chunked = NULL;
    rc = check_headers(c, req);
    if (rc == ALL_DATA_READ &&
        evhttp_find_header(req->input_headers, "Transfer-Encoding")) {
        if (!chunks_valid(-1, buffer))
            return refuse(c, 400, "a chunk size is not valid");
        watch_chunks(c, req);
    }
    return rc;
}

/* ---- routes ---- */

static void route_free(struct route *r)
{
    for (size_t i = 0; i < r->nsegs; i++)
        free(r->segs[i].text);
    free(r->pattern);
    free(r->pattern_v2);
    free(r);
}

static int parse_pattern(struct route *r, const char *pattern)
{
    if (pattern[0] != '/')
        return MOAT_EINVAL;
    const char *p = pattern + 1;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || r->nsegs == MAX_SEGMENTS)
            return MOAT_EINVAL;
        struct segment *sg = &r->segs[r->nsegs];
        if (p[0] == '{') {
            if (p[len - 1] != '}' || len < 3)
                return MOAT_EINVAL;
            sg->param = true;
            size_t nl = len - 2;
            if (p[len - 2] == '*') {
                sg->rest = true;
                nl--;
                if (slash) /* {rest*} must be last */
                    return MOAT_EINVAL;
            }
            if (nl == 0)
                return MOAT_EINVAL;
            sg->text = moat_xstrndup(p + 1, nl);
        } else {
            if (memchr(p, '{', len) || memchr(p, '}', len))
                return MOAT_EINVAL;
            sg->text = moat_xstrndup(p, len);
        }
        r->nsegs++;
        if (!slash)
            break;
        p = slash + 1;
        if (!*p) /* trailing slash */
            return MOAT_EINVAL;
    }
    size_t nparams = 0;
    for (size_t i = 0; i < r->nsegs; i++)
        nparams += r->segs[i].param;
    return nparams > MOAT_HTTP_MAX_PATH_PARAMS ? MOAT_EINVAL : MOAT_OK;
}

int moat_http_route(struct moat_http_server *s, unsigned meths,
                    const char *pattern, moat_handler_fn fn, void *arg)
{
    return moat_http_route_ex(s, meths, pattern, fn, arg, 0);
}

void moat_http_set_guard(struct moat_http_server *s, moat_guard_fn fn,
                         void *arg)
{
    s->guard = fn;
    s->guard_arg = arg;
}

/*
 * A route under /v1/ is served as v2 too, unless it is internal: the event
 * feed, the admin routes and the test hooks are contracts between services
 * and operators, not the public API, and keep one version.
 */
static bool serves_v2(const struct route *r)
{
    static const char *const internal[] = {"events", "admin", "test"};
    if (r->nsegs < 2 || r->segs[0].param || strcmp(r->segs[0].text, "v1"))
        return false;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(internal); i++)
        if (!r->segs[1].param && strcmp(r->segs[1].text, internal[i]) == 0)
            return false;
    return true;
}

int moat_http_route_ex(struct moat_http_server *s, unsigned meths,
                       const char *pattern, moat_handler_fn fn, void *arg,
                       unsigned flags)
{
    if (!pattern || !fn || !meths || (meths & ~(unsigned)MOAT_METHOD_ANY))
        return MOAT_EINVAL;
    struct route *r = NULL;
    for (size_t i = 0; i < s->nroutes; i++)
        if (strcmp(s->routes[i]->pattern, pattern) == 0)
            r = s->routes[i];
    if (r && (r->methods & meths))
        return MOAT_ECONFLICT;
    /* The guard applies per pattern: mixing open and guarded methods on
     * one pattern would make it depend on registration order. */
    if (r && r->flags != flags)
        return MOAT_ECONFLICT;
    if (!r) {
        r = moat_xcalloc(1, sizeof(*r));
        r->pattern = moat_xstrdup(pattern);
        if (parse_pattern(r, pattern) != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "invalid route pattern", "{s:s}",
                     "pattern", pattern);
            route_free(r);
            return MOAT_EINVAL;
        }
        const char *labels[] = {pattern};
        r->latency = moat_metric_series(s->m_latency, labels);
        r->flags = flags;
        if (serves_v2(r)) {
            r->pattern_v2 = moat_xasprintf("/v2%s", pattern + 3);
            const char *v2labels[] = {r->pattern_v2};
            r->latency_v2 = moat_metric_series(s->m_latency, v2labels);
        }
        s->routes =
            moat_xrealloc(s->routes, (s->nroutes + 1) * sizeof(*s->routes));
        s->routes[s->nroutes++] = r;
    }
    r->methods |= meths;
    for (int i = 0; i < NMETHODS; i++) {
        if (meths & methods[i].m) {
            r->fn[i] = fn;
            r->arg[i] = arg;
        }
    }
    return MOAT_OK;
}

/*
 * Match raw (still percent-encoded) path segments against a route, so an
 * encoded "/" inside an id never splits a segment. Returns a score (more
 * literal segments = more specific) or -1.
 */
static int route_match(const struct route *r, char **segs, size_t nsegs)
{
    int score = 0;
    size_t i = 0;
    for (; i < r->nsegs; i++) {
        const struct segment *sg = &r->segs[i];
        if (sg->rest)
            return score; /* matches zero or more remaining segments */
        if (i >= nsegs)
            return -1;
        if (sg->param) {
            if (!*segs[i])
                return -1;
            continue;
        }
        if (strcmp(sg->text, segs[i]) != 0)
            return -1;
        score += 2;
    }
    return i == nsegs ? score + 1 : -1;
}

static char *decode_component(const char *s, size_t len, bool plus, bool *ok)
{
    char *tmp = moat_xstrndup(s, len);
    size_t out_len = 0;
    char *d = evhttp_uridecode(tmp, plus, &out_len);
    free(tmp);
    if (!d || out_len != strlen(d)) { /* NUL smuggled as %00 */
        free(d);
        *ok = false;
        return NULL;
    }
    return d;
}

static char *decode(const char *s, size_t len, bool *ok)
{
    return decode_component(s, len, false, ok);
}

/*
 * Split the query into decoded key/value pairs ("+" is a space; a key
 * without "=" has the value ""). evhttp_parse_query_str() would drop the
 * whole query for one such key, and leaves keys encoded.
 */
static int parse_query(struct moat_req *r)
{
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(r->ev));
    if (!q || !*q)
        return MOAT_OK;
    char *copy = moat_xstrdup(q);
    char *cur = copy;
    int rc = MOAT_OK;
    bool ok = true;
    while (cur && rc == MOAT_OK) {
        char *pair = strsep(&cur, "&");
        if (!*pair)
            continue;
        if (r->nquery == MOAT_HTTP_MAX_QUERY_PARAMS) {
            rc = MOAT_ETOOBIG;
            break;
        }
        char *eq = strchr(pair, '=');
        const char *val = "";
        if (eq) {
            *eq = '\0';
            val = eq + 1;
        }
        char *k = decode_component(pair, strlen(pair), true, &ok);
        char *v = ok ? decode_component(val, strlen(val), true, &ok) : NULL;
        if (!ok) {
            free(k);
            rc = MOAT_EINVAL;
            break;
        }
        r->query_keys[r->nquery] = k;
        r->query_values[r->nquery++] = v;
    }
    free(copy);
    return rc;
}

/* ---- replies ---- */

static void req_free(struct moat_req *r)
{
    for (size_t i = 0; i < r->nparams; i++)
        free(r->param_values[i]);
    for (size_t i = 0; i < r->nquery; i++) {
        free(r->query_keys[i]);
        free(r->query_values[i]);
    }
    free(r->path);
    /* Bodies can hold passwords (login, registration): wiped before they
     * go back to the allocator. libevent's and jansson's copies are
     * beyond reach. */
    if (r->body)
        explicit_bzero(r->body, r->body_len);
    free(r->body);
    free(r);
}

/* Spans are for what a request did: not probes, metrics, feed pulls or
 * the operator's admin reads (which would crowd the ring out). */
static bool span_worthy(const char *route)
{
    static const char *const skip[] = {"/healthz", "/readyz", "/metrics",
                                       "/v1/events", "/v1/admin/"};
    if (!route || route[0] != '/')
        return false;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(skip); i++)
        if (strncmp(route, skip[i], strlen(skip[i])) == 0)
            return false;
    return true;
}

static void finish(struct moat_req *r, int status)
{
    struct moat_http_server *s = r->srv;
    double secs = (double)(moat_mono_ns() - r->start_ns) / 1e9;
    char st[8];
    snprintf(st, sizeof(st), "%d", status);
    const char *labels[] = {r->route_name, moat_method_name(r->method), st};
    moat_metric_add(moat_metric_series(s->m_requests, labels), 1);
    if (r->route)
        moat_metric_observe(r->route_name == r->route->pattern_v2
                                ? r->route->latency_v2
                                : r->route->latency,
                            secs);
    if (span_worthy(r->route_name)) {
        char name[MOAT_SPAN_NAME_MAX];
        snprintf(name, sizeof(name), "%s %s", moat_method_name(r->method),
                 r->route_name);
        int64_t dur_us = (int64_t)(secs * 1e6);
        moat_span_record(&r->trace, MOAT_SPAN_SERVER, name,
                         moat_wall_ms() * 1000 - dur_us, dur_us, status,
                         status >= 500);
    }
    if (s->access_log)
        moat_log_access(&r->trace, moat_method_name(r->method),
                        r->path ? r->path : evhttp_request_get_uri(r->ev),
                        r->route_name, status, secs * 1e3, moat_req_peer(r));
    s->in_flight--;
    moat_metric_set(s->m_in_flight, s->in_flight);
    req_free(r);
    if (s->draining && s->in_flight == 0 && s->on_idle) {
        void (*cb)(void *) = s->on_idle;
        s->on_idle = NULL;
        cb(s->idle_arg);
    }
}

void moat_req_set_header(struct moat_req *r, const char *name,
                         const char *value)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->ev);
    evhttp_remove_header(h, name);
    evhttp_add_header(h, name, value);
}

/*
 * A deprecated v1 route's headers: Deprecation (RFC 9745), Sunset (RFC
 * 8594) and the successor: this path with its "v1" segment read "v2".
 */
static void set_deprecation(struct moat_req *r)
{
    char deprecation[24], sunset[32];
    moat_api_deprecation_headers(deprecation, sunset);
    moat_req_set_header(r, "Deprecation", deprecation);
    moat_req_set_header(r, "Sunset", sunset);
    const char *raw = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(r->ev));
    const char *v1 = raw ? strstr(raw, "/v1") : NULL;
    while (v1 && v1[3] && v1[3] != '/')
        v1 = strstr(v1 + 3, "/v1");
    if (!v1)
        return;
    /* The raw path passed the router; a URI reference in <> still must not
     * hold characters that would end it. */
    for (const char *p = raw; *p; p++)
        if (*p <= ' ' || *p > '~' || *p == '<' || *p == '>' || *p == '"')
            return;
    char *link = moat_xasprintf("<%.*s/v2%s>; rel=\"successor-version\"",
                                (int)(v1 - raw), raw, v1 + 3);
    moat_req_set_header(r, "Link", link);
    free(link);
}

static bool is_plain_json(const char *ct)
{
    return ct && strncasecmp(ct, "application/json", 16) == 0 &&
           (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ');
}

static void send_reply(struct moat_req *r, int status, const char *content_type,
                       const void *body, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->ev);
    if (r->route && (r->route->flags & MOAT_ROUTE_API_V1_DEPRECATED))
        set_deprecation(r);
    if (content_type && body)
        moat_req_set_header(r, "Content-Type", content_type);
    evhttp_add_header(h, "X-Request-Id", r->trace.request_id);
    if (r->srv->draining)
        moat_req_set_header(r, "Connection", "close");
    struct evbuffer *buf = NULL;
    if (r->method == MOAT_HEAD && body && status != 204 && status != 304) {
        /* HEAD: the headers GET would send, Content-Length included. */
        char cl[24];
        snprintf(cl, sizeof(cl), "%zu", len);
        moat_req_set_header(r, "Content-Length", cl);
    }
    if (body && len && status != 204 && status != 304 &&
        r->method != MOAT_HEAD) {
        buf = evbuffer_new();
        evbuffer_add(buf, body, len);
    }
    evhttp_send_reply(r->ev, status, moat_http_reason(status), buf);
    if (buf)
        evbuffer_free(buf);
    finish(r, status);
}

/* ---- streamed replies ---- */

void moat_req_stream_start(struct moat_req *r, int status,
                           const char *content_type)
{
    if (content_type)
        moat_req_set_header(r, "Content-Type", content_type);
    moat_req_set_header(r, "X-Request-Id", r->trace.request_id);
    r->stream_status = status;
    evhttp_send_reply_start(r->ev, status, moat_http_reason(status));
}

bool moat_req_stream_write(struct moat_req *r, const void *data, size_t len)
{
    /* evhttp detaches a request from a connection that failed. */
    if (!evhttp_request_get_connection(r->ev))
        return false;
    struct evbuffer *buf = evbuffer_new();
    if (!buf)
        moat_die("out of memory streaming a reply");
    evbuffer_add(buf, data, len);
    evhttp_send_reply_chunk(r->ev, buf);
    evbuffer_free(buf);
    return true;
}

size_t moat_req_stream_buffered(const struct moat_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->ev);
    struct bufferevent *bev =
        evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

void moat_req_stream_end(struct moat_req *r)
{
    /* Frees the evhttp request too when the client is gone. */
    evhttp_send_reply_end(r->ev);
    finish(r, r->stream_status);
}

#define JSON_REPLY_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY)

void moat_req_reply(struct moat_req *r, int status, const char *content_type,
                    const void *body, size_t len)
{
    /* A JSON body a handler wrote itself (or stored, for replays) is v1:
     * v2 gets it rewritten. Bytes that are not JSON, or hold no
     * timestamp, go out unchanged. */
    if (r->api_version == 2 && body && len && is_plain_json(content_type)) {
        json_t *j = json_loadb(body, len, JSON_DECODE_ANY, NULL);
        char *text = NULL;
        if (j && moat_api_v2_from_v1(j) > 0)
            text = json_dumps(j, JSON_REPLY_FLAGS);
        json_decref(j);
        if (text) {
            send_reply(r, status, content_type, text, strlen(text));
            free(text);
            return;
        }
    }
    send_reply(r, status, content_type, body, len);
}

void moat_req_reply_json(struct moat_req *r, int status, json_t *body)
{
    if (!body) {
        send_reply(r, status, NULL, NULL, 0);
        return;
    }
    if (r->api_version == 2)
        moat_api_v2_from_v1(body);
    char *text = json_dumps(body, JSON_REPLY_FLAGS);
    json_decref(body);
    send_reply(r, status, "application/json", text, text ? strlen(text) : 0);
    free(text);
}

void moat_req_reply_problem_json(struct moat_req *r, json_t *problem)
{
    int status = (int)json_integer_value(json_object_get(problem, "status"));
    if (status < 400 || status > 599)
        status = 500;
    if (!json_object_get(problem, "instance"))
        json_object_set_new(problem, "instance",
                            json_string(r->path ? r->path : "/"));
    json_object_set_new(problem, "request_id",
                        json_string(r->trace.request_id));
    char *text = json_dumps(problem, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(problem);
    send_reply(r, status, "application/problem+json", text,
               text ? strlen(text) : 0);
    free(text);
}

void moat_req_reply_problem(struct moat_req *r, int status, const char *fmt,
                            ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    moat_req_reply_problem_json(r, moat_problem_new(status, detail));
}

void moat_req_reply_store_error(struct moat_req *r, int rc, const char *store,
                                const char *what)
{
    if (rc == MOAT_EBUSY) {
        moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem(r, 503, "the %s database is busy; retry", store);
        return;
    }
    moat_log(MOAT_LOG_ERROR, "store failure", "{s:s, s:s, s:s}", "store", store,
             "op", what, "error", moat_strerror(rc));
    if (rc == MOAT_ETOOBIG) {
        /* Full (an LMDB map): no retry helps until an operator grows it. */
        moat_req_reply_problem(r, 503, "the %s database is full", store);
        return;
    }
    moat_req_reply_problem(r, 500, "the %s database could not %s", store, what);
}

/* ---- accessors ---- */

enum moat_method moat_req_method(const struct moat_req *r)
{
    return r->method;
}

const char *moat_req_path(const struct moat_req *r)
{
    return r->path;
}

const char *moat_req_target(const struct moat_req *r)
{
    return evhttp_request_get_uri(r->ev);
}

const char *moat_req_route(const struct moat_req *r)
{
    return r->route_name;
}

int moat_req_api_version(const struct moat_req *r)
{
    return r->api_version;
}

const char *moat_req_param(const struct moat_req *r, const char *name)
{
    for (size_t i = 0; i < r->nparams; i++)
        if (strcmp(r->param_names[i], name) == 0)
            return r->param_values[i];
    return NULL;
}

const char *moat_req_query(const struct moat_req *r, const char *name)
{
    for (size_t i = 0; i < r->nquery; i++)
        if (strcmp(r->query_keys[i], name) == 0)
            return r->query_values[i];
    return NULL;
}

int moat_req_query_next(const struct moat_req *r, void **iter, const char **key,
                        const char **value)
{
    /* *iter holds the index of the next parameter, plus one. */
    uintptr_t next = (uintptr_t)*iter;
    size_t i = next ? (size_t)next - 1 : 0;
    if (i >= r->nquery)
        return 0;
    *key = r->query_keys[i];
    *value = r->query_values[i];
    *iter = (void *)(uintptr_t)(i + 2);
    return 1;
}

const char *moat_req_header(const struct moat_req *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->ev), name);
}

int moat_req_header_next(const struct moat_req *r, void **iter,
                         const char **key, const char **value)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(r->ev);
    struct evkeyval *kv =
        *iter ? TAILQ_NEXT((struct evkeyval *)*iter, next) : TAILQ_FIRST(h);
    *iter = kv;
    if (!kv)
        return 0;
    *key = kv->key;
    *value = kv->value;
    return 1;
}

const char *moat_req_body(struct moat_req *r, size_t *len)
{
    if (!r->body_loaded) {
        struct evbuffer *in = evhttp_request_get_input_buffer(r->ev);
        size_t n = evbuffer_get_length(in);
        r->body = moat_xmalloc(n + 1);
        evbuffer_copyout(in, r->body, n);
        r->body[n] = '\0';
        r->body_len = n;
        r->body_loaded = true;
    }
    if (len)
        *len = r->body_len;
    return r->body;
}

const struct moat_trace *moat_req_trace(const struct moat_req *r)
{
    return &r->trace;
}

const char *moat_req_peer(const struct moat_req *r)
{
    /* The TCP peer only: never the client-controlled Host header, since
     * the address keys rate limits and lands in principals and logs. */
    struct evhttp_connection *c = evhttp_request_get_connection(r->ev);
    char *addr = NULL;
    ev_uint16_t port = 0;
    if (c)
        evhttp_connection_get_peer(c, &addr, &port);
    return addr ? addr : "";
}

struct moat_http_server *moat_req_server(const struct moat_req *r)
{
    return r->srv;
}

const struct moat_principal *moat_req_principal(const struct moat_req *r)
{
    return &r->principal;
}

void moat_req_set_principal(struct moat_req *r, const struct moat_principal *p)
{
    r->principal = *p;
}

bool moat_principal_is_admin(const struct moat_principal *p)
{
    return strcmp(p->role, "admin") == 0 && p->user_id[0];
}

bool moat_req_require_user(struct moat_req *r)
{
    if (r->principal.user_id[0])
        return true;
    moat_req_set_header(r, "WWW-Authenticate", "Bearer");
    moat_req_reply_problem(r, 401, "this operation needs a signed-in user");
    return false;
}

bool moat_req_require_admin(struct moat_req *r)
{
    if (!moat_req_require_user(r))
        return false;
    if (moat_principal_is_admin(&r->principal))
        return true;
    moat_req_reply_problem(r, 403, "this operation is for administrators");
    return false;
}

bool moat_req_require_perm(struct moat_req *r, unsigned perm)
{
    if (!moat_req_require_user(r))
        return false;
    if ((r->principal.perms & perm) == perm)
        return true;
    const char *what = perm == MOAT_PERM_POST       ? "post"
                       : perm == MOAT_PERM_COMMENT  ? "comment"
                       : perm == MOAT_PERM_MESSAGE  ? "send messages"
                       : perm == MOAT_PERM_MODERATE ? "moderate"
                                                    : "do this";
    moat_req_reply_problem(r, 403, "your account may not %s", what);
    return false;
}

static bool json_content_type(const char *ct)
{
    if (!ct)
        return false;
    size_t len = strcspn(ct, ";");
    while (len && (ct[len - 1] == ' ' || ct[len - 1] == '\t'))
        len--;
    if (len == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return true;
    /* application/<anything>+json, e.g. merge-patch+json */
    return len > 17 && strncasecmp(ct, "application/", 12) == 0 &&
           strncasecmp(ct + len - 5, "+json", 5) == 0 &&
           !memchr(ct + 12, '/', len - 12);
}

int moat_req_json(struct moat_req *r, json_t **out)
{
    *out = NULL;
    const char *ct = moat_req_header(r, "Content-Type");
    if (!json_content_type(ct)) {
        moat_req_reply_problem(r, 415,
                               "expected Content-Type application/json, got "
                               "'%s'",
                               ct ? ct : "(none)");
        return MOAT_EINVAL;
    }
    size_t len;
    const char *body = moat_req_body(r, &len);
    if (len == 0) {
        moat_req_reply_problem(r, 400, "the request body is empty");
        return MOAT_EINVAL;
    }
    json_error_t err;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    if (!j) {
        json_t *p = moat_problem_new(400, "the request body is not valid "
                                          "JSON");
        json_object_set_new(p, "json_error",
                            json_pack("{s:s, s:i, s:i}", "message", err.text,
                                      "line", err.line, "column", err.column));
        moat_req_reply_problem_json(r, p);
        return MOAT_EINVAL;
    }
    if (r->api_version == 2)
        moat_api_v1_from_v2(j);
    *out = j;
    return MOAT_OK;
}

/* ---- dispatch ---- */

static size_t header_bytes(struct evhttp_request *ev)
{
    size_t n = strlen(evhttp_request_get_uri(ev)) + 16;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(ev), next)
    {
        n += strlen(kv->key) + strlen(kv->value) + 4;
    }
    return n;
}

static void reply_allow(struct moat_req *r, unsigned meths)
{
    struct moat_buf allow = MOAT_BUF_INIT;
    for (int i = 0; i < NMETHODS; i++) {
        if (meths & methods[i].m) {
            if (allow.len)
                moat_buf_addstr(&allow, ", ");
            moat_buf_addstr(&allow, methods[i].name);
        }
    }
    moat_req_set_header(r, "Allow", moat_buf_str(&allow));
    moat_req_reply_problem(
        r, 405, "method %s is not allowed on %s; allowed: %s",
        moat_method_name(r->method), r->path, moat_buf_str(&allow));
    moat_buf_release(&allow);
}

/* The most specific route for the path's raw segments; v2_only: among
 * the routes also served as v2. */
static struct route *best_route(struct moat_http_server *s, char **segs,
                                size_t nsegs, bool v2_only)
{
    struct route *best = NULL;
    int best_score = -1;
    for (size_t i = 0; i < s->nroutes; i++) {
        if (v2_only && !s->routes[i]->pattern_v2)
            continue;
        int sc = route_match(s->routes[i], segs, nsegs);
        if (sc > best_score) {
            best_score = sc;
            best = s->routes[i];
        }
    }
    return best;
}

static void route_request(struct moat_req *r)
{
    struct moat_http_server *s = r->srv;
    const char *raw = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(r->ev));
    const char *target = evhttp_request_get_uri(r->ev);
    /* Origin-form only ("/path?query"): moat's services are origin servers,
     * and code that reads the raw target (the gateway's allow-list and
     * upstream mapping) must see the same path the router matched. An
     * absolute-form or other target could make the two disagree. */
    if (!raw || raw[0] != '/' || !target || target[0] != '/') {
        r->route_name = "_invalid";
        moat_req_reply_problem(r, 400,
                               "the request target is not an "
                               "absolute path");
        return;
    }
    bool ok = true;
    r->path = decode(raw, strlen(raw), &ok);
    if (!ok) {
        r->route_name = "_invalid";
        moat_req_reply_problem(r, 400,
                               "the request path is not valid "
                               "percent-encoding");
        return;
    }

    /* Split the raw path into segments (in one scratch copy). */
    char *scratch = moat_xstrdup(raw + 1);
    char *segs[MAX_SEGMENTS + 1];
    size_t nsegs = 0;
    bool too_deep = false;
    if (*scratch) {
        char *cur = scratch;
        while (cur) {
            if (nsegs == MAX_SEGMENTS) {
                too_deep = true;
                break;
            }
            segs[nsegs++] = strsep(&cur, "/");
        }
    }
    if (too_deep) {
        free(scratch);
        r->route_name = "_unmatched";
        moat_req_reply_problem(r, 404, "no resource at %s", r->path);
        return;
    }

    struct route *best = best_route(s, segs, nsegs, false);
    bool as_v2 = false;
    if (!best && nsegs > 0 && strcmp(segs[0], "v2") == 0) {
        /* API v2 of a /v1/ route: the same route, read as v1. */
        segs[0][1] = '1';
        best = best_route(s, segs, nsegs, true);
        as_v2 = true;
    }
    if (!best) {
        free(scratch);
        r->route_name = "_unmatched";
        moat_req_reply_problem(r, 404, "no resource at %s", r->path);
        return;
    }
    r->route = best;
    r->route_name = best->pattern;
    r->api_version = as_v2 || (best->flags & MOAT_ROUTE_API_V2) ? 2 : 1;
    if (as_v2)
        r->route_name = best->pattern_v2;

    /* Bind parameters, each decoded on its own. */
    for (size_t i = 0; i < best->nsegs && ok; i++) {
        const struct segment *sg = &best->segs[i];
        if (!sg->param)
            continue;
        r->param_names[r->nparams] = sg->text;
        if (sg->rest) {
            /* The remainder, re-joined and decoded as one path. */
            struct moat_buf rest = MOAT_BUF_INIT;
            for (size_t j = i; j < nsegs; j++) {
                if (j > i)
                    moat_buf_addch(&rest, '/');
                moat_buf_addstr(&rest, segs[j]);
            }
            r->param_values[r->nparams++] =
                decode(moat_buf_str(&rest), rest.len, &ok);
            moat_buf_release(&rest);
        } else {
            r->param_values[r->nparams++] =
                decode(segs[i], strlen(segs[i]), &ok);
        }
    }
    free(scratch);
    if (!ok) {
        moat_req_reply_problem(r, 400,
                               "a path parameter is not valid "
                               "percent-encoding");
        return;
    }

    int qrc = parse_query(r);
    if (qrc == MOAT_ETOOBIG) {
        moat_req_reply_problem(r, 400, "more than %d query parameters",
                               MOAT_HTTP_MAX_QUERY_PARAMS);
        return;
    }
    if (qrc != MOAT_OK) {
        moat_req_reply_problem(r, 400,
                               "the query string is not valid "
                               "percent-encoding");
        return;
    }

    int mi = method_index(r->method);
    if (mi < 0 || !(best->methods & r->method)) {
        reply_allow(r, best->methods);
        return;
    }
    moat_log_set_trace(&r->trace);
    if (!(best->flags & MOAT_ROUTE_OPEN) && s->guard &&
        !s->guard(r, s->guard_arg)) {
        moat_log_set_trace(NULL);
        return; /* the guard replied */
    }
    best->fn[mi](r, best->arg[mi]);
    moat_log_set_trace(NULL);
}

static void on_request(struct evhttp_request *ev, void *arg)
{
    struct moat_http_server *s = arg;
    struct moat_req *r = moat_xcalloc(1, sizeof(*r));
    r->srv = s;
    r->ev = ev;
    r->start_ns = moat_mono_ns();
    r->route_name = "_unmatched";
    r->api_version = 1;
    s->in_flight++;
    moat_metric_set(s->m_in_flight, s->in_flight);

    enum evhttp_cmd_type cmd = evhttp_request_get_command(ev);
    for (int i = 0; i < NMETHODS; i++)
        if (methods[i].ev == cmd)
            r->method = methods[i].m;

    struct evkeyvalq *in = evhttp_request_get_input_headers(ev);
    moat_trace_start(&r->trace, evhttp_find_header(in, "traceparent"),
                     evhttp_find_header(in, "X-Request-Id"));

    struct evhttp_connection *evcon = evhttp_request_get_connection(ev);
    if (evcon)
        conn_of(s, evcon)->chunked = NULL; /* the body is read */

    if (s->draining) {
        const char *labels[] = {"draining"};
        moat_metric_add(moat_metric_series(s->m_rejected, labels), 1);
        moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem(r, 503, "the service is shutting down");
        return;
    }
    if (header_bytes(ev) > s->lim.max_header_bytes) {
        const char *labels[] = {"headers_too_large"};
        moat_metric_add(moat_metric_series(s->m_rejected, labels), 1);
        moat_req_set_header(r, "Connection", "close");
        moat_req_reply_problem(r, 431,
                               "the request line and headers exceed the "
                               "limit of %zu bytes",
                               s->lim.max_header_bytes);
        return;
    }
    if (r->method == 0) {
        moat_req_reply_problem(r, 405, "unsupported method");
        return;
    }
    route_request(r);
}

/* ---- lifecycle ---- */

struct moat_http_server *moat_http_server_new(struct event_base *base,
                                              const struct moat_http_limits *l,
                                              struct moat_metrics *metrics)
{
    struct moat_http_server *s = moat_xcalloc(1, sizeof(*s));
    s->base = base;
    s->lim = *l;
    if (!s->lim.max_body_bytes)
        s->lim.max_body_bytes = MOAT_HTTP_DEFAULT_MAX_BODY;
    if (!s->lim.max_header_bytes)
        s->lim.max_header_bytes = MOAT_HTTP_DEFAULT_MAX_HEADER;
    if (!s->lim.max_connections)
        s->lim.max_connections = MOAT_HTTP_DEFAULT_MAX_CONNECTIONS;
    if (!s->lim.io_timeout_ms)
        s->lim.io_timeout_ms = MOAT_HTTP_DEFAULT_IO_TIMEOUT_MS;
    if (!s->lim.header_timeout_ms)
        s->lim.header_timeout_ms = MOAT_HTTP_DEFAULT_HEADER_TIMEOUT_MS;
    s->access_log = true;
    s->metrics = metrics;

    s->http = evhttp_new(base);
    if (!s->http)
        moat_die("evhttp_new failed");
    evhttp_set_gencb(s->http, on_request, s);
    evhttp_set_allowed_methods(
        s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                     EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD |
                     EVHTTP_REQ_OPTIONS);
    evhttp_set_max_body_size(s->http, (ev_ssize_t)s->lim.max_body_bytes);
    /* evhttp's own limit is a backstop at twice ours, so the usual case
     * gets our precise 431 (see on_request) rather than a generic error. */
    evhttp_set_max_headers_size(s->http,
                                (ev_ssize_t)s->lim.max_header_bytes * 2);
    struct timeval tv = {s->lim.io_timeout_ms / 1000,
                         (s->lim.io_timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(s->http, &tv);
    /* No EVHTTP_SERVER_LINGERING_CLOSE: an oversized body is refused
     * (413) before it is read, not read to its end first (RFC 9110
     * 15.5.14); evhttp half-closes after the answer. */

    s->m_requests = moat_metrics_family(
        metrics, MOAT_COUNTER, "moat_http_requests_total",
        "HTTP requests handled, by route pattern, method and status.",
        "route,method,status", NULL, 0);
    s->m_latency = moat_metrics_family(
        metrics, MOAT_HISTOGRAM, "moat_http_request_duration_seconds",
        "Time from request parsed to response queued, by route pattern.",
        "route", moat_latency_buckets, moat_latency_buckets_len);
    s->m_in_flight = moat_metric_single(moat_metrics_family(
        metrics, MOAT_GAUGE, "moat_http_requests_in_flight",
        "Requests received and not yet answered.", NULL, NULL, 0));
    s->m_conns = moat_metric_single(moat_metrics_family(
        metrics, MOAT_GAUGE, "moat_http_connections",
        "Open client connections that have sent a request.", NULL, NULL, 0));
    s->m_rejected = moat_metrics_family(
        metrics, MOAT_COUNTER, "moat_http_rejected_total",
        "Requests refused before routing, by reason.", "reason", NULL, 0);
    g_server = s;
    servers_add(s);
    return s;
}

void moat_http_set_access_log(struct moat_http_server *s, bool on)
{
    s->access_log = on;
}

int moat_http_listen(struct moat_http_server *s, const char *host,
                     uint16_t port, uint16_t *bound_port)
{
    /* Our own socket rather than evhttp_bind_socket: evhttp's backlog of
     * 128 overflows under bursts, and a dropped SYN is retried only after
     * a second - longer than callers' connect timeouts. */
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        moat_log(MOAT_LOG_ERROR, "cannot listen: not an IPv4 address", "{s:s}",
                 "host", host);
        return MOAT_EINVAL;
    }
    evutil_socket_t fd =
        socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* Accepted sockets inherit TCP_NODELAY: small responses go now. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        listen(fd, LISTEN_BACKLOG) != 0) {
        moat_log(MOAT_LOG_ERROR, "cannot listen", "{s:s, s:i, s:s}", "host",
                 host, "port", port, "error", strerror(errno));
        if (fd >= 0)
            close(fd);
        return MOAT_EIO;
    }
    s->sock = evhttp_accept_socket_with_handle(s->http, fd);
    if (!s->sock) {
        close(fd);
        return MOAT_EIO;
    }
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(s->sock),
                                on_accept_error);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (bound_port && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            *bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            *bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return MOAT_OK;
}

void moat_http_drain(struct moat_http_server *s, void (*on_idle)(void *),
                     void *arg)
{
    if (s->sock) {
        evhttp_del_accept_socket(s->http, s->sock);
        s->sock = NULL;
    }
    s->draining = true;
    s->on_idle = on_idle;
    s->idle_arg = arg;
    for (size_t i = 0; i < s->ndrain_hooks; i++)
        s->drain_hooks[i].fn(s->drain_hooks[i].arg);
    if (s->in_flight == 0 && on_idle) {
        s->on_idle = NULL;
        on_idle(arg);
    }
}

int moat_http_on_drain(struct moat_http_server *s, void (*fn)(void *),
                       void *arg)
{
    if (s->ndrain_hooks == MAX_DRAIN_HOOKS)
        return MOAT_ETOOBIG;
    s->drain_hooks[s->ndrain_hooks].fn = fn;
    s->drain_hooks[s->ndrain_hooks].arg = arg;
    s->ndrain_hooks++;
    return MOAT_OK;
}

unsigned moat_http_in_flight(const struct moat_http_server *s)
{
    return s->in_flight;
}

unsigned moat_http_connections(const struct moat_http_server *s)
{
    return (unsigned)s->conns.used;
}

/* ---- TLS (moat/tls.h) ---- */

/* Every accepted connection: TLS first, HTTP inside. A client speaking
 * plain HTTP fails the handshake and the connection is closed. */
static struct bufferevent *tls_bev(struct event_base *base, void *arg)
{
    struct moat_http_server *s = arg;
    SSL *ssl = SSL_new(s->tls);
    if (!ssl)
        return NULL;
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev) /* clients that close without close_notify are not errors */
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

void moat_http_set_tls(struct moat_http_server *s, SSL_CTX *ctx)
{
    if (s->tls)
        SSL_CTX_free(s->tls);
    s->tls = ctx;
    if (ctx) {
        SSL_CTX_up_ref(ctx);
        evhttp_set_bevcb(s->http, tls_bev, s);
    } else {
        evhttp_set_bevcb(s->http, NULL, NULL);
    }
}

bool moat_req_peer_service(const struct moat_req *r, char *out, size_t cap)
{
    struct evhttp_connection *c = evhttp_request_get_connection(r->ev);
    struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
    SSL *ssl = bev && r->srv->tls ? bufferevent_openssl_get_ssl(bev) : NULL;
    return moat_tls_peer_name(ssl, out, cap);
}

void moat_http_server_free(struct moat_http_server *s)
{
    if (!s)
        return;
    /* evhttp_free frees the listener, then closes the remaining
     * connections and runs their close callbacks, which touch s: keep s
     * alive until it returns, and keep them off the freed listener. */
    s->sock = NULL;
    servers_del(s);
    evhttp_free(s->http);
    if (s->tls)
        SSL_CTX_free(s->tls);
    if (s->accept_retry)
        event_free(s->accept_retry);
    for (size_t i = 0; i < s->nroutes; i++)
        route_free(s->routes[i]);
    free(s->routes);
    free(s->conns.slots);
    if (g_server == s)
        g_server = NULL;
    free(s);
}

/*
 * evhttp answers protocol errors itself (malformed request line, headers or
 * body over the limits, a failed Expect) through evhttp_send_error(), with
 * an HTML page and no hook in libevent 2.1. This definition replaces
 * libevent's: libevent calls it through its PLT and the executables export
 * it (see lib/CMakeLists.txt), so every error a client can see is
 * application/problem+json. It is also what evhttp uses for the rare error
 * before our callback runs, so it must not touch struct moat_req.
 */
void evhttp_send_error(struct evhttp_request *req, int error,
                       const char *reason);
void evhttp_send_error(struct evhttp_request *req, int error,
                       const char *reason)
{
    struct moat_http_server *s = server_of(req);
    if (!s)
        s = g_server;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct conn *c = s && evcon ? conn_set_get(&s->conns, evcon) : NULL;
    const char *detail = reason;
    char text[160];
    int status = error;
    /* evhttp keeps a CONNECT's connection open after any answer (for a
     * tunnel); an error here always closes. */
    if (req->type == EVHTTP_REQ_CONNECT)
        req->type = EVHTTP_REQ_GET;
    if (c && c->verdict) {
        status = c->verdict;
        snprintf(text, sizeof(text), "%s", c->verdict_detail);
        detail = text;
        c->verdict = 0;
        c->chunked = NULL;
        evtimer_del(c->header_timer);
    } else if (error == 413) {
        const char *cl =
            evhttp_find_header(req->input_headers, "Content-Length");
        const char *te =
            evhttp_find_header(req->input_headers, "Transfer-Encoding");
        size_t max_body = s ? s->lim.max_body_bytes : 0;
        int64_t n = 0;
        if ((cl && moat_parse_i64(cl, 0, INT64_MAX, &n) == MOAT_OK &&
             (uint64_t)n > max_body) ||
            te) {
            snprintf(text, sizeof(text),
                     "the request body exceeds the limit of %zu bytes",
                     max_body);
        } else {
            status = 431;
            snprintf(text, sizeof(text),
                     "the request line and headers exceed the limit of %zu "
                     "bytes",
                     s ? s->lim.max_header_bytes : 0);
        }
        detail = text;
    } else if (error == 400) {
        /* evhttp reports headers beyond its own limit as invalid (400);
         * what it had read plus what is waiting tells them apart. */
        struct bufferevent *bev =
            evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
        size_t pending =
            bev ? evbuffer_get_length(bufferevent_get_input(bev)) : 0;
        if (s && req->headers_size + pending > s->lim.max_header_bytes) {
            status = 431;
            snprintf(text, sizeof(text),
                     "the request line and headers exceed the limit of %zu "
                     "bytes",
                     s->lim.max_header_bytes);
            detail = text;
        } else {
            detail = "the request is not valid HTTP/1.1";
        }
    }
    if (s) {
        reject_count(s, status == 413   ? "body_too_large"
                        : status == 431 ? "headers_too_large"
                                        : "protocol_error");
    }
    json_t *p = moat_problem_new(status, detail);
    char *body = json_dumps(p, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(p);
    struct evbuffer *buf = evbuffer_new();
    if (!buf || !body) {
        free(body);
        if (buf)
            evbuffer_free(buf);
        evhttp_connection_free(evhttp_request_get_connection(req));
        return;
    }
    evbuffer_add(buf, body, strlen(body));
    free(body);
    /* A request that failed to parse may have no version yet. */
    if (!req->major) {
        req->major = 1;
        req->minor = 1;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_clear_headers(h);
    evhttp_add_header(h, "Content-Type", "application/problem+json");
    evhttp_add_header(h, "Connection", "close");
    evhttp_send_reply(req, status, moat_http_reason(status), buf);
    evbuffer_free(buf);
}

bool moat_idem_key_parse(const char *header, char out[MOAT_IDEM_KEY_MAX + 1])
{
    const char *h = header;
    size_t n = strlen(h);
    if (n >= 2 && h[0] == '"' && h[n - 1] == '"') {
        h++;
        n -= 2;
    }
    if (n < 1 || n > MOAT_IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (h[i] <= ' ' || h[i] > '~' || h[i] == '"')
            return false;
    memcpy(out, h, n);
    out[n] = '\0';
    return true;
}
