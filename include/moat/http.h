/*
 * moat/http.h - the HTTP/1.1 server every service runs (libevent evhttp
 * underneath) with a method + path router.
 *
 * Routes are patterns of literal segments and {name} parameters, plus an
 * optional final {name*} that matches the rest of the path (zero or more
 * segments): "/v1/products/{id}", "/api/v1/{rest*}". Literal segments win
 * over parameters. A path that matches no pattern gets 404, a path whose
 * pattern lacks the method gets 405 with an Allow header; both as
 * application/problem+json, as is every error the server produces itself
 * (413 body too large, 431 headers too large, 400 malformed, 503 too many
 * connections or draining).
 *
 * Request lifetime: a handler receives a struct moat_req owned by the server.
 * It stays valid until the handler (now or later, from another callback on
 * the same loop) calls exactly one moat_req_reply*() function; the reply
 * frees it. Strings returned by the accessors live as long as the request.
 *
 * Every service also gets /healthz, /readyz and /metrics from service.c, and
 * per-route request counters, latency histograms and an in-flight gauge.
 */
#ifndef MOAT_HTTP_H
#define MOAT_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/metrics.h"
#include "moat/trace.h"

struct event_base;

enum moat_method {
    MOAT_GET = 1 << 0,
    MOAT_POST = 1 << 1,
    MOAT_PUT = 1 << 2,
    MOAT_PATCH = 1 << 3,
    MOAT_DELETE = 1 << 4,
    MOAT_HEAD = 1 << 5,
    MOAT_OPTIONS = 1 << 6,
    MOAT_METHOD_ANY = (1 << 7) - 1,
};

/* Method name ("GET"), or "?" for an unknown bit. */
const char *moat_method_name(enum moat_method m);

struct moat_http_limits {
    size_t max_body_bytes;    /* request body cap (413 beyond) */
    size_t max_header_bytes;  /* request line + headers cap (431 beyond) */
    unsigned max_connections; /* concurrent client connections */
    unsigned io_timeout_ms;   /* read/write timeout against slow clients */
    /* A request's line and headers must be complete this long after its
     * first byte, however the bytes trickle in (slow-header clients). */
    unsigned header_timeout_ms;
};

#define MOAT_HTTP_DEFAULT_MAX_BODY          (1u << 20)
#define MOAT_HTTP_DEFAULT_MAX_HEADER        (16u << 10)
#define MOAT_HTTP_DEFAULT_MAX_CONNECTIONS   1024u
#define MOAT_HTTP_DEFAULT_IO_TIMEOUT_MS     10000u
#define MOAT_HTTP_DEFAULT_HEADER_TIMEOUT_MS 10000u
#define MOAT_HTTP_MAX_PATH_PARAMS           8
#define MOAT_HTTP_MAX_QUERY_PARAMS          64 /* more is a 400 */

struct moat_http_server;
struct moat_req;

typedef void (*moat_handler_fn)(struct moat_req *req, void *arg);

/*
 * Create a server on base; metrics is borrowed (request metrics are
 * registered in it). Does not listen yet. Caller frees with
 * moat_http_server_free().
 */
struct moat_http_server *moat_http_server_new(struct event_base *base,
                                              const struct moat_http_limits *l,
                                              struct moat_metrics *metrics);
void moat_http_server_free(struct moat_http_server *s);

/*
 * Register a route for a set of methods (MOAT_GET | MOAT_HEAD ...). pattern
 * is copied. Returns MOAT_EINVAL for a malformed pattern, MOAT_ECONFLICT
 * when the same pattern already has one of these methods.
 */
int moat_http_route(struct moat_http_server *s, unsigned methods,
                    const char *pattern, moat_handler_fn fn, void *arg);

/* Route flags for moat_http_route_ex(). */
enum moat_route_flags {
    /* Skip the server's guard (moat_http_set_guard): health, readiness and
     * metrics endpoints, which a supervisor probes without credentials. */
    MOAT_ROUTE_OPEN = 1 << 0,
    /* Every request on the route is API version 2 (see "API versions"
     * below): for routes whose path does not start with /v1/, such as the
     * gateway's /api/v2/... composition. */
    MOAT_ROUTE_API_V2 = 1 << 1,
    /* A deprecated public v1 route: every reply carries Deprecation,
     * Sunset and a Link to the same path with its "v1" segment read "v2"
     * (the gateway's /api/v1/... routes). */
    MOAT_ROUTE_API_V1_DEPRECATED = 1 << 2,
};
int moat_http_route_ex(struct moat_http_server *s, unsigned methods,
                       const char *pattern, moat_handler_fn fn, void *arg,
                       unsigned flags);

/*
 * A guard runs after routing and before the handler of every route not
 * registered with MOAT_ROUTE_OPEN. It returns true to let the request
 * through, or replies itself (e.g. 401) and returns false. The service
 * skeleton installs one that verifies service tokens (moat/auth.h).
 */
typedef bool (*moat_guard_fn)(struct moat_req *req, void *arg);
void moat_http_set_guard(struct moat_http_server *s, moat_guard_fn fn,
                         void *arg);

/* Bind and listen on host:port (port 0 = any); *bound_port gets the port. */
int moat_http_listen(struct moat_http_server *s, const char *host,
                     uint16_t port, uint16_t *bound_port);
/*
 * Stop accepting connections; answer further requests on open connections
 * with 503. on_idle (may be NULL) is called once when no request is in
 * flight any more.
 */
void moat_http_drain(struct moat_http_server *s, void (*on_idle)(void *),
                     void *arg);
/*
 * Run fn(arg) when draining starts, before waiting for in-flight requests:
 * for requests parked on purpose (long polls), which must be answered now
 * rather than hold the drain until its deadline. At most 8 hooks.
 */
int moat_http_on_drain(struct moat_http_server *s, void (*fn)(void *),
                       void *arg);
unsigned moat_http_in_flight(const struct moat_http_server *s);
/* Log one JSON line per request (default on). */
void moat_http_set_access_log(struct moat_http_server *s, bool on);
unsigned moat_http_connections(const struct moat_http_server *s);

/*
 * Serve HTTPS (moat/tls.h): every connection starts with a TLS handshake
 * under ctx (from moat_tls_server_ctx; the server takes its own
 * reference), so plain HTTP to the port is refused. Call before listening.
 * ctx NULL goes back to plain HTTP.
 */
typedef struct ssl_ctx_st SSL_CTX;
void moat_http_set_tls(struct moat_http_server *s, SSL_CTX *ctx);
/*
 * The service name of the request's TLS client certificate
 * (moat_tls_peer_name) into out; false on plain HTTP or without a
 * verified client certificate.
 */
bool moat_req_peer_service(const struct moat_req *r, char *out, size_t cap);

/* --- request accessors (strings owned by the request) --- */
enum moat_method moat_req_method(const struct moat_req *r);
const char *moat_req_path(const struct moat_req *r);   /* decoded path */
const char *moat_req_target(const struct moat_req *r); /* raw path?query */
const char *moat_req_route(const struct moat_req *r);  /* matched pattern */
/* Path parameter by name, percent-decoded; NULL if absent. */
const char *moat_req_param(const struct moat_req *r, const char *name);
/* Query parameter by name (first occurrence), key and value decoded, "+"
 * as space, "" for a key without "="; NULL if absent. */
const char *moat_req_query(const struct moat_req *r, const char *name);
/* Iterate query parameters: returns false after the last one. */
int moat_req_query_next(const struct moat_req *r, void **iter, const char **key,
                        const char **value);
const char *moat_req_header(const struct moat_req *r, const char *name);
/* Iterate request headers: returns 0 when exhausted. */
int moat_req_header_next(const struct moat_req *r, void **iter,
                         const char **key, const char **value);
/* Request body (NUL-terminated copy owned by the request); len may be NULL. */
const char *moat_req_body(struct moat_req *r, size_t *len);
const struct moat_trace *moat_req_trace(const struct moat_req *r);
const char *moat_req_peer(const struct moat_req *r); /* client address */
struct moat_http_server *moat_req_server(const struct moat_req *r);

/*
 * Decode the body as a JSON value: requires a JSON content type
 * (application/json or application/<x>+json, else 415), valid UTF-8 JSON
 * without duplicate keys or NUL characters (else 400 with the position).
 * On failure it has replied already and returns a negative code; on success
 * *out is a new reference the caller releases.
 */
int moat_req_json(struct moat_req *r, json_t **out);

/* --- replies: exactly one per request; each frees the request --- */
/* Add a response header (copied). Call before replying. */
void moat_req_set_header(struct moat_req *r, const char *name,
                         const char *value);
void moat_req_reply(struct moat_req *r, int status, const char *content_type,
                    const void *body, size_t len);
/* Reply with a JSON body; steals the reference to body (may be NULL). */
void moat_req_reply_json(struct moat_req *r, int status, json_t *body);
/* Reply application/problem+json; steals problem, fills in "instance". */
void moat_req_reply_problem_json(struct moat_req *r, json_t *problem);
/* Shorthand: new problem for status with a printf-style detail. */
void moat_req_reply_problem(struct moat_req *r, int status, const char *fmt,
                            ...) __attribute__((format(printf, 3, 4)));
/*
 * A streamed reply (the event feed's ?stream=1): stream_start sends the
 * status and headers with chunked transfer coding; stream_write queues
 * data for the client (copied) and returns false when the client is gone
 * (then nothing is sent; call stream_end); stream_buffered is how many
 * bytes are queued and not yet taken by the client (the caller caps it);
 * stream_end ends the reply and frees the request, like the other
 * replies. A request being streamed counts as in flight until then, so a
 * drain hook (moat_http_on_drain) must end its streams.
 */
void moat_req_stream_start(struct moat_req *r, int status,
                           const char *content_type);
bool moat_req_stream_write(struct moat_req *r, const void *data, size_t len);
size_t moat_req_stream_buffered(const struct moat_req *r);
void moat_req_stream_end(struct moat_req *r);
/*
 * Reply to a store error that is not the client's fault, the same way in
 * every service: MOAT_EBUSY (another writer held the lock) is a 503 with
 * Retry-After: 1, "the <store> database is busy; retry"; MOAT_ETOOBIG
 * (the store is full, e.g. an LMDB map) is logged and a 503 "the <store>
 * database is full" without Retry-After (only an operator helps); any
 * other error is logged (store, what, error) and a 500 "the <store>
 * database could not <what>", telling the client nothing more. store names the
 * service's database ("orders"), what the failed operation ("read the order").
 * A service maps its own errors (not found, conflict) before calling this.
 */
void moat_req_reply_store_error(struct moat_req *r, int rc, const char *store,
                                const char *what);

/*
 * API versions (docs/api.md "Versions", docs/api-changelog.md).
 *
 * Handlers are written once, against v1. A route registered under /v1/ is
 * also served under /v2/ (same handler, same pattern with "v2"), except the
 * internal ones: /v1/events..., /v1/admin/... and /v1/test/... stay v1 only.
 * A route registered under /v2/ itself wins over that. On a v2 request:
 *  - moat_req_api_version() is 2;
 *  - JSON replies (moat_req_reply_json, and moat_req_reply with Content-Type
 *    application/json) are rewritten by moat_api_v2_from_v1(): every
 *    timestamp member (moat_api_time_member) holding an integer number of
 *    seconds since the epoch becomes an RFC 3339 UTC string;
 *  - moat_req_json() hands the handler the body after
 *    moat_api_v1_from_v2(), so handlers only ever see epoch seconds.
 * problem+json bodies are the same in both versions. /v1/ replies are left
 * byte for byte as they are, headers included: services' /v1 is also the
 * internal service-to-service contract. The public v1 (the gateway's
 * /api/v1) is marked with MOAT_ROUTE_API_V1_DEPRECATED.
 *
 * Metrics and access logs name a v2 request by the v2 pattern
 * ("/v2/products/{id}").
 */
#define MOAT_API_V1_DEPRECATED_S 1796428800LL /* 2026-12-05T00:00:00Z */
#define MOAT_API_V1_SUNSET_S     1814313600LL /* 2027-06-30T00:00:00Z */

/* 1, or 2 for a request on a /v2/ path or a MOAT_ROUTE_API_V2 route. */
int moat_req_api_version(const struct moat_req *r);
/* True for a member name that is a timestamp: "..._at", or "at". */
bool moat_api_time_member(const char *name);
/*
 * Rewrite, in place, every timestamp member of v (at any depth up to 128)
 * from v1 to v2: an integer within the years 0000-9999 becomes an RFC 3339
 * UTC string ("2026-12-04T23:17:44Z"); anything else (null, strings, reals,
 * other integers) stays as it is. Returns how many members changed.
 */
size_t moat_api_v2_from_v1(json_t *v);
/*
 * The reverse, for v2 request bodies: a timestamp member holding an RFC
 * 3339 string (any offset; a fraction of a second is dropped) becomes
 * integer epoch seconds; other values stay (the handler's validation
 * reports them). Returns how many members changed.
 */
size_t moat_api_v1_from_v2(json_t *v);
/* The values of the Deprecation (RFC 9745) and Sunset (RFC 8594) headers
 * of API v1. */
void moat_api_deprecation_headers(char deprecation[24], char sunset[32]);

/*
 * Strict query-string parsing for any route (implemented in lib/feed.c,
 * whose routes were its first users):
 * every parameter must be one of params (each at most once), integers
 * within [min, max]. Returns NULL when all is well, or a new 400 problem
 * listing every bad parameter as {"parameter", "detail"} (caller replies).
 */
enum moat_qkind {
    MOAT_Q_INT,
    MOAT_Q_STR,
};
struct moat_qparam {
    const char *name;
    enum moat_qkind kind;
    int64_t min, max; /* MOAT_Q_INT bounds; MOAT_Q_STR byte length bounds */
    bool seen;        /* out: the parameter was given */
    int64_t ival;     /* out: MOAT_Q_INT value */
    const char *sval; /* out: MOAT_Q_STR value, owned by the request */
};
json_t *moat_req_parse_query(struct moat_req *r, struct moat_qparam *params,
                             size_t n);

/*
 * An Idempotency-Key header value: 1..MOAT_IDEM_KEY_MAX visible ASCII
 * characters other than '"', bare or as a structured-field string
 * ("...", the IETF draft's form). Copies the key (without quotes) into out
 * and returns true; false when header is malformed.
 */
#define MOAT_IDEM_KEY_MAX 255
bool moat_idem_key_parse(const char *header, char out[MOAT_IDEM_KEY_MAX + 1]);

#endif /* MOAT_HTTP_H */
