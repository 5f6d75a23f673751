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
 *   main.c    configuration, route registration, metrics, lifecycle.
 *
 * Ownership: struct gw (svc->impl) owns its routes and public arrays (each
 * entry owns its strings), the rate limiter and the JWT secret (wiped when
 * freed); metric series are owned by the service's registry.
 */
#ifndef MOAT_GATEWAY_H
#define MOAT_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* One MOAT_GATEWAY_ROUTES entry. All strings owned by the route. */
struct gw_route {
    char *prefix;       /* public prefix "/api/v1/products", no final '/' */
    char *service;      /* upstream service "catalog": service token aud */
    size_t prefix_segs; /* path segments in prefix (3 above) */
    char *pattern_rest; /* prefix + "/{rest*}" for the router */
    char *origin;       /* upstream "http://127.0.0.1:8081" (for Location) */
    char *base_path;    /* upstream "/v1/products", "" for the root */
    char *base_url;     /* origin + base_path */
    struct gw *gw;      /* back pointer, set by main.c */
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
};

/* Longest accepted MOAT_GATEWAY_ROUTES prefix, in segments. */
#define GW_MAX_PREFIX_SEGMENTS 16

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

/* Whole seconds for a Retry-After header: ms rounded up, at least 1. */
uint64_t gw_retry_after_s(uint64_t ms);

/* Metric label for an error kind ("connect", "timeout" ...). */
const char *gw_err_kind_name(enum gw_err_kind k);

/* Router handler; arg is the struct gw_route. */
void gw_proxy(struct moat_req *req, void *arg);

/*
 * The HTTP server guard of every proxied route (arg is the struct gw):
 * rate limit, then end-user authentication. Replies 429 or 401 itself and
 * returns false, or sets the request's principal and returns true.
 */
bool gw_access_guard(struct moat_req *req, void *arg);

#endif /* MOAT_GATEWAY_H */
