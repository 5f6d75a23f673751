/*
 * gateway.h - the gateway service's internals: a stateless reverse proxy
 * from public path prefixes to upstream services.
 *
 *   routes.c  parses MOAT_GATEWAY_ROUTES and does the pure URL work
 *             (upstream URL from a request target, Location rewriting);
 *   proxy.c   forwards one request with the non-blocking HTTP client and
 *             turns upstream failures into 503 problem+json;
 *   main.c    configuration, route registration, metrics, lifecycle.
 *
 * Ownership: struct gw (svc->impl) owns its routes array, each route owns
 * its strings; metric series are owned by the service's registry.
 */
#ifndef MOAT_GATEWAY_H
#define MOAT_GATEWAY_H

#include <stddef.h>

#include "moat/http.h"
#include "moat/http_client.h"
#include "moat/metrics.h"
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

struct gw {
    struct moat_service *svc; /* borrowed */
    struct moat_http_client *client;
    struct gw_route *routes;
    size_t nroutes;
    long timeout_ms;
    long connect_timeout_ms;
    size_t max_response;
    struct moat_metric_family *m_requests; /* {upstream,status} */
};

/* Longest accepted MOAT_GATEWAY_ROUTES prefix, in segments. */
#define GW_MAX_PREFIX_SEGMENTS 16

/*
 * Parse "PREFIX=URL[,PREFIX=URL...]". On success *out (caller frees with
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

/* Metric label for an error kind ("connect", "timeout" ...). */
const char *gw_err_kind_name(enum gw_err_kind k);

/* Router handler; arg is the struct gw_route. */
void gw_proxy(struct moat_req *req, void *arg);

#endif /* MOAT_GATEWAY_H */
