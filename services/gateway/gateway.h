/*
 * gateway.h - the gateway service's internals: a stateless reverse proxy
 * from public path prefixes to upstream services.
 *
 *   routes.c  parses MOAT_GATEWAY_ROUTES and MOAT_GATEWAY_PUBLIC and does
 *             the pure URL work (upstream URL from a request target,
 *             Location rewriting, public allow-list matching);
 *   access.c  the guard in front of every proxied route: per-client rate
 *             limit, then end-user authentication (Bearer JWT or the
 *             public allow-list), setting the request's principal;
 *   proxy.c   forwards one request with the non-blocking HTTP client, with
 *             a service token for the upstream instead of the client's
 *             credentials, and turns upstream failures into 503;
 *   overrides.c follows users' account events (suspension, role) so that
 *             access.c can apply them before old tokens expire;
 *   compose.c API composition: GET /api/v1/orders/{id}/details, the order
 *             plus the customer, products, payment and notifications read
 *             from their services in parallel, each behind a circuit
 *             breaker (moat/breaker.h), partial answers marked as such;
 *             and GET /api/v1/posts/{id} and /api/v1/conversations/{id}
 *             with ?include=comments, the post or the latest messages
 *             with their comments (null and "partial" when comments
 *             cannot answer);
 *   cache.c   the read cache in Redis: GETs of one product (catalog) or
 *             one profile (profiles) answered from Redis when it can,
 *             kept right by following the owners' events; Redis down or
 *             slow only sends the reads to the services (docs/gateway.md);
 *   main.c    configuration, route registration, metrics, lifecycle.
 *
 * Ownership: struct gw (svc->impl) owns its routes and public arrays (each
 * entry owns its strings), the rate limiter, the JWT secret (wiped when
 * freed) and the composition's backends (each owns its base URL); metric
 * series are owned by the service's registry.
 */
#ifndef MOAT_GATEWAY_H
#define MOAT_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/breaker.h"
#include "moat/http.h"
#include "moat/http_client.h"
#include "moat/metrics.h"
#include "moat/ratelimit.h"
#include "moat/service.h"

/* Why an upstream call produced no usable answer (metric label "kind"). */
enum gw_err_kind {
    GW_ERR_CONNECT,      /* could not connect (refused, unreachable) */
    GW_ERR_TIMEOUT,      /* no complete answer within the timeout */
    GW_ERR_TOO_BIG,      /* response over MOAT_GATEWAY_MAX_RESPONSE_BYTES */
    GW_ERR_BAD_RESPONSE, /* malformed, truncated, or reset connection */
    GW_ERR_CANCELLED,    /* gateway shutting down */
    GW_ERR_KINDS,
};

struct gw;
struct gw_overrides;
struct gw_cache;
struct gw_cache_fill;
struct moat_principal;

/*
 * The services API composition reads, in the order of the "partial" list.
 * Each is the service name: the service token audience, the name in
 * MOAT_GATEWAY_BACKENDS, the "backend" metric label and the name in
 * "partial".
 */
enum gw_backend_id {
    GW_BK_ORDERS,
    GW_BK_USERS,
    GW_BK_CATALOG,
    GW_BK_PAYMENTS,
    GW_BK_NOTIFICATIONS,
    GW_BK_POSTS,
    GW_BK_MESSAGING,
    GW_BK_COMMENTS,
    GW_BACKENDS,
};

/* What a composition answers (compose.c). */
enum gw_compose_kind {
    GW_COMPOSE_ORDER,        /* /api/v1/orders/{id}/details */
    GW_COMPOSE_POST,         /* /api/v1/posts/{id}?include=comments */
    GW_COMPOSE_CONVERSATION, /* /api/v1/conversations/{id}?include=comments */
};

/*
 * A proxied resource route that also composes: GET with include=comments
 * is composed, everything else goes to route as the plain proxy. Lives in
 * struct gw; route is borrowed from gw->routes.
 */
struct gw_composed_route {
    struct gw *gw;
    struct gw_route *route;
    enum gw_compose_kind kind;
    bool v2; /* the /api/v2 twin: the composition is rendered as v2 */
};
/* Posts and conversations, each in v1 and v2. */
#define GW_COMPOSED_ROUTES 4

/* Why a backend of a composition gave nothing usable (label "reason"). */
enum gw_fail_reason {
    GW_FAIL_CONNECT,      /* could not connect */
    GW_FAIL_TIMEOUT,      /* no answer within the composition timeout */
    GW_FAIL_TOO_BIG,      /* response over the cap, or too many products */
    GW_FAIL_BAD_RESPONSE, /* not the JSON expected, or a broken transfer */
    GW_FAIL_STATUS,       /* an HTTP status other than 200 and 404 */
    GW_FAIL_CIRCUIT_OPEN, /* skipped: the backend's circuit is open */
    GW_FAIL_UNCONFIGURED, /* skipped: no URL known for the backend */
    GW_FAIL_CANCELLED,    /* the gateway is shutting down */
    GW_FAIL_REASONS,
};

/* One backend of the composition; lives in struct gw. */
struct gw_backend {
    const char *name; /* static, "users" */
    char *base_url;   /* owned; "http://127.0.0.1:8082", NULL if unknown */
    struct moat_breaker breaker;
    /* Borrowed from the service's metrics registry. */
    struct moat_metric_series *m_state;
    struct moat_metric_series *m_failures[GW_FAIL_REASONS];
};

/*
 * Several instances of one upstream (balance.c, docs/operations.md
 * "Several instances"): a route's URL may be "URL|URL|...", one per
 * instance, all with the same path. Calls go to the ready instance with
 * the fewest calls in flight (ties in turn). An instance is not ready
 * while its last /readyz probe (every MOAT_GATEWAY_PROBE_MS, default 500,
 * only for pools of two or more) failed, or for GW_DOWN_MS after a call to
 * it was refused or reset before any answer (passive check; a later
 * successful probe lifts that). A call that failed so, if idempotent (GET,
 * HEAD, or carrying Idempotency-Key) or never sent (connect failed), is
 * tried once more on another instance: the in-flight retry budget.
 */
#define GW_DOWN_MS 5000

struct gw_instance {
    char *origin;         /* owned; "http://127.0.0.1:8081" */
    unsigned outstanding; /* calls in flight */
    bool probe_failed;    /* the last /readyz probe did not answer 200 */
    bool probing;         /* a probe is in flight */
    uint64_t probe_sent;  /* monotonic ms the current probe was sent */
    uint64_t down_at;     /* monotonic ms of the last passive mark */
    uint64_t down_until;  /* monotonic ms: not picked before, unless all are */
    /* Borrowed from the service's metrics registry. */
    struct moat_metric_series *m_requests, *m_up, *m_marked;
};

/* The instances of one upstream service, shared by its routes. */
struct gw_pool {
    struct gw *gw;
    char *service; /* owned */
    struct gw_instance *inst;
    size_t n;
    size_t next;         /* where the next tie-break starts */
    struct event *timer; /* the active probe; NULL for one instance */
    struct moat_metric_series *m_retries;
};

/* The ready instance with the fewest calls in flight, never avoid (may be
 * NULL); when none is ready, the next one in turn. NULL only when avoid is
 * the only instance. Counts the call as outstanding. */
struct gw_instance *gw_pool_pick(struct gw_pool *p,
                                 const struct gw_instance *avoid);
/* A call picked from p ended: resp's failure (refused, or reset before any
 * byte) marks the instance down for GW_DOWN_MS. */
void gw_pool_done(struct gw_pool *p, struct gw_instance *in,
                  const struct moat_http_response *resp);
/* One pool per upstream service of the routes (route->pool), their
 * metrics and probes. After routes, gw_routes_add_v2 and the client. */
int gw_pools_init(struct gw *gw);
/* After the client is freed. */
void gw_pools_free(struct gw *gw);
/* base_url + path for a call outside the proxy (compose.c): on a ready
 * instance in turn when base_url is the first instance of service's pool.
 * Caller frees. */
char *gw_pool_url(struct gw *gw, const char *service, const char *base_url,
                  const char *path);

/* One MOAT_GATEWAY_ROUTES entry. All strings owned by the route. */
struct gw_route {
    char *prefix;       /* public prefix "/api/v1/products", no final '/' */
    char *service;      /* upstream service "catalog": service token aud */
    size_t prefix_segs; /* path segments in prefix (3 above) */
    size_t nparams;     /* "{name}" segments in prefix (0 above) */
    char *pattern_rest; /* prefix + "/{rest*}" for the router */
    char *origin;       /* upstream "http://127.0.0.1:8081" (for Location) */
    char *base_path;    /* upstream "/v1/products", "" for the root */
    char *base_url;     /* origin + base_path */
    char **origins;     /* every instance's origin, [0] = origin; owned */
    size_t norigins;
    struct gw_pool *pool; /* borrowed from gw->pools; set by gw_pools_init */
    /* A v1 route that gw_routes_add_v2 gave a v2 twin: its replies carry
     * the deprecation headers (MOAT_ROUTE_API_V1_DEPRECATED). */
    bool has_successor;
    struct gw *gw; /* back pointer, set by main.c */
    /* Borrowed from the service's metrics registry; set by main.c. */
    struct moat_metric_series *m_duration;
    struct moat_metric_series *m_errors[GW_ERR_KINDS];
};

/* One MOAT_GATEWAY_PUBLIC entry: requests let through without a token. */
struct gw_public {
    unsigned methods; /* enum moat_method bits; GET also allows HEAD */
    char *prefix;     /* owned; "/api/v1/products", no final '/' */
    size_t len;       /* strlen(prefix) */
};

/* Longest end-user JWT secret accepted: the users service's own limit. */
#define GW_JWT_SECRET_MAX 256

struct gw {
    struct moat_service *svc; /* borrowed */
    struct moat_http_client *client;
    struct gw_route *routes;
    size_t nroutes;
    struct gw_public *public_list;
    size_t npublic;
    long timeout_ms;
    long connect_timeout_ms;
    size_t max_response;
    /*
     * End-user tokens: HS256 secret shared with the users service. When
     * user_auth is false (only with MOAT_INSECURE_NO_AUTH=1 and no
     * MOAT_JWT_SECRET) every request passes as anonymous.
     */
    bool user_auth;
    uint8_t jwt_secret[GW_JWT_SECRET_MAX];
    size_t jwt_secret_len;
    struct moat_ratelimit *limiter;        /* NULL when MOAT_GATEWAY_RATE=0 */
    struct moat_metric_family *m_requests; /* {upstream,status} */
    struct moat_metric_family *m_auth_rejected; /* {reason} */
    struct moat_metric_series *m_rate_limited;
    /* API composition (compose.c). */
    struct gw_backend backends[GW_BACKENDS];
    long compose_timeout_ms; /* per backend call, and the order fetch */
    struct moat_metric_family *m_compose; /* {result} */
    struct gw_composed_route composed[GW_COMPOSED_ROUTES];
    /* Access tokens ended by a logout through this gateway (access.c):
     * {jti: exp}, each kept until the token would expire anyway. */
    json_t *revoked;
    /* Access overrides (overrides.c); NULL when users is unknown. */
    struct gw_overrides *overrides;
    /* The read cache (cache.c); NULL without MOAT_REDIS_URL. */
    struct gw_cache *cache;
    struct gw_pool **pools; /* balance.c; owned */
    size_t npools;
    long probe_ms;
};

/* Longest accepted MOAT_GATEWAY_ROUTES prefix, in segments. */
#define GW_MAX_PREFIX_SEGMENTS 16
/* Longest `wait=S` of a long poll the gateway waits for, in seconds. */
#define GW_LONG_POLL_MAX_S 60
/* Longest name of a path parameter "{name}" in a route. */
#define GW_MAX_PARAM_NAME 31

/*
 * Parse "PREFIX=SERVICE@URL[,PREFIX=SERVICE@URL...]", SERVICE being the
 * upstream's service name ([a-z][a-z0-9-]{0,31}, the audience of the
 * service tokens sent to it). On success *out (caller frees with
 * gw_routes_free) holds *n routes, in order. On MOAT_EINVAL err says what is
 * wrong with which entry, and nothing is allocated.
 */
int gw_routes_parse(const char *spec, struct gw_route **out, size_t *n,
                    char *err, size_t errlen);
void gw_routes_free(struct gw_route *routes, size_t n);

/*
 * API v2 for every v1 route (docs/api.md "Versions"): each route whose
 * prefix and upstream path both have a "v1" segment ("/api/v1/products" to
 * ".../v1/products") gets a twin with "v2" in both, appended to *routes,
 * unless a route with that prefix exists already (an explicit entry wins),
 * and is marked has_successor. The services serve /v2/... themselves
 * (lib/http.c), so the deployment file lists v1 only.
 */
void gw_routes_add_v2(struct gw_route **routes, size_t *n);
/* The same for the public allow-list: "GET /api/v1/products" also allows
 * "GET /api/v2/products". */
void gw_public_add_v2(struct gw_public **list, size_t *n);
/*
 * path with its first "v1" segment read "v2" ("/api/v1/x" to "/api/v2/x"),
 * as a new string the caller frees; NULL when it has no "v1" segment.
 */
char *gw_v2_path(const char *path);

/*
 * Upstream URL for a request target (raw "path?query" or absolute-form)
 * that the router matched to r: base_url + the path after r->prefix + the
 * query. Returns a new string (caller frees), or NULL when the target has
 * characters that are not valid in a URL or a "." / ".." segment after the
 * prefix (which would climb out of the upstream base path).
 */
char *gw_upstream_url(const struct gw_route *r, const char *target);

/*
 * Map an upstream Location back to the public prefix: origin+base_path/x
 * or base_path/x becomes prefix/x; anything else is returned unchanged.
 * Returns a new string; caller frees.
 */
char *gw_rewrite_location(const struct gw_route *r, const char *location);

/*
 * Parse MOAT_GATEWAY_PUBLIC: "METHOD PREFIX[,METHOD PREFIX...]" with METHOD
 * one of GET HEAD POST PUT PATCH DELETE OPTIONS and PREFIX as in the
 * routes. "" means nothing is public. Same ownership and errors as
 * gw_routes_parse; free with gw_public_free.
 */
int gw_public_parse(const char *spec, struct gw_public **out, size_t *n,
                    char *err, size_t errlen);
void gw_public_free(struct gw_public *list, size_t n);

/*
 * True when method + the raw request target (path?query or absolute-form)
 * is on the list: the path equals an entry's prefix or continues it with
 * '/'. Compared before percent-decoding, so an encoded spelling of a public
 * path is not public (fails closed).
 */
bool gw_public_allows(const struct gw_public *list, size_t n,
                      enum moat_method method, const char *target);

/*
 * The token of an Authorization header value "Bearer <token>" (scheme
 * case-insensitive, RFC 6750 2.1): a pointer into value, or NULL when the
 * scheme is not Bearer or the token is empty or has spaces.
 */
const char *gw_bearer_token(const char *value);

/*
 * The base URL of a service's API from an http(s) URL as in
 * MOAT_GATEWAY_ROUTES ("http://h:p" or "http://h:p/base", no credentials,
 * query or fragment; final '/' dropped). Returns a new string (caller
 * frees) or NULL with *why saying what is wrong.
 */
char *gw_base_url_parse(const char *url, const char **why);

/* Whole seconds for a Retry-After header: ms rounded up, at least 1. */
uint64_t gw_retry_after_s(uint64_t ms);

/* Metric label for an error kind ("connect", "timeout" ...). */
const char *gw_err_kind_name(enum gw_err_kind k);

/* Router handler; arg is the struct gw_route. */
void gw_proxy(struct moat_req *req, void *arg);
/*
 * Forward req to url (an upstream URL of r from gw_upstream_url; taken
 * over) and relay the answer. fill (taken over, may be NULL) gets the
 * answer through gw_cache_filled.
 */
void gw_proxy_forward(struct gw_route *r, struct moat_req *req, char *url,
                      struct gw_cache_fill *fill);

/*
 * The read cache (cache.c, docs/gateway.md "Read cache"), configured by
 * MOAT_REDIS_URL ("redis://[:PASSWORD@]HOST:PORT"; unset: no cache),
 * MOAT_REDIS_PASSWORD_FILE (a file holding the password),
 * MOAT_GATEWAY_CACHE_PREFIX (key prefix, default "moat:c1"),
 * MOAT_GATEWAY_CACHE_TTL_S (default 60) and MOAT_GATEWAY_CACHE_TIMEOUT_MS
 * (bound of one Redis read, default 100); its circuit breaker takes the
 * composition's settings. Init after gw_compose_init (MOAT_EINVAL, logged
 * and printed, for a bad variable; gw_cache_free undoes a partial init);
 * start from the service's start. On the way down gw_cache_close before
 * the HTTP client is freed (lookups still waiting go to their upstream)
 * and gw_cache_free after it (fills still waiting are dropped).
 */
int gw_cache_init(struct gw *gw);
void gw_cache_start(struct gw *gw);
void gw_cache_close(struct gw *gw);
void gw_cache_free(struct gw *gw);
/*
 * For a GET that the cache may answer (one product or profile, API v1 or
 * v2, no query): look it up and return true; the cache then owns url and
 * answers req itself (hit) or calls gw_proxy_forward (miss, error). False
 * when it does not take the request: the caller forwards it (url is still
 * the caller's).
 */
bool gw_cache_lookup(struct gw_route *r, struct moat_req *req, char *url);
/* The upstream's answer to a miss: stored when it is a 200 with an ETag
 * "vN". Frees fill; NULL is ignored. */
void gw_cache_filled(struct gw_cache_fill *fill,
                     const struct moat_http_response *resp);

/*
 * The HTTP server guard of every proxied route (arg is the struct gw):
 * rate limit, then end-user authentication. Replies 429 or 401 itself and
 * returns false, or sets the request's principal and returns true.
 */
bool gw_access_guard(struct moat_req *req, void *arg);

/*
 * Access overrides (overrides.c, docs/security.md "Suspension delay"):
 * follow users' feed from sequence 0 for UserSuspended, UserRestored and
 * RoleChanged, keeping each account's newest state for access_ttl_s (the
 * users' access-token lifetime) + the JWT leeway + 60 s. Init after
 * gw_compose_init (it reads the users backend's URL; no URL or no end-user
 * auth: nothing to follow, MOAT_OK); start from the service's start; free
 * from release, before the service's feed client is freed.
 */
int gw_overrides_init(struct gw *gw, int64_t access_ttl_s);
void gw_overrides_start(struct gw *gw);
void gw_overrides_free(struct gw *gw);
/* Replace p's role and perms with its account's newest state, if any. */
void gw_overrides_apply(const struct gw *gw, struct moat_principal *p);
/* Whether users ended the session of the access token c (SessionsEnded). */
struct moat_jwt_claims;
bool gw_overrides_revoked(const struct gw *gw, const struct moat_jwt_claims *c);

/* Public path of the composed order details (GET only), in v1 and v2. */
#define GW_DETAILS_ROUTE    "/api/v1/orders/{id}/details"
#define GW_DETAILS_ROUTE_V2 "/api/v2/orders/{id}/details"

/*
 * Set up the composition: each backend's base URL (MOAT_GATEWAY_BACKENDS
 * "NAME@URL,...", else the origin of the first route to that service),
 * MOAT_GATEWAY_COMPOSE_TIMEOUT_MS and the breakers
 * (MOAT_GATEWAY_BREAKER_FAILURES, MOAT_GATEWAY_BREAKER_COOLDOWN_MS), the
 * metrics, the GW_DETAILS_ROUTE route when orders is known, and
 * "PREFIX/{id}" (all methods) for the routes with prefix /api/v1/posts and
 * /api/v1/conversations and their v2 twins, when routed: GET with
 * include=comments composes, anything else is proxied as before. Call
 * after the routes are parsed and gw_routes_add_v2. MOAT_EINVAL (logged, and
 * printed to stderr) for a bad variable.
 */
int gw_compose_init(struct gw *gw);
/* Free what gw_compose_init allocated (after the HTTP client is freed). */
void gw_compose_release(struct gw *gw);

#endif /* MOAT_GATEWAY_H */
