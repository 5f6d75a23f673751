/*
 * main.c - moat-gateway: the public entry point. Stateless: it owns no
 * data, only a table of public path prefixes and the upstream each one is
 * forwarded to (see proxy.c).
 *
 * The gateway is the public API (def->public_api): it authenticates end
 * users itself (access.c) instead of expecting service tokens, and calls
 * each upstream with a service token of its own (proxy.c).
 *
 * Environment, besides the common MOAT_* variables of moat/service.h
 * (MOAT_SERVICE_KEY and MOAT_PEER_KEYS included):
 *   MOAT_GATEWAY_ROUTES           "PREFIX=SERVICE@URL[|URL...][,...]", e.g.
 *       "/api/v1/products=catalog@http://127.0.0.1:8081/v1/products"; each
 *       entry forwards PREFIX and PREFIX/... (all methods) to URL and
 *       URL/..., with a service token whose audience is SERVICE; a PREFIX
 *       and URL path with a "v1" segment also get their v2 twin
 *       (/api/v2/products to .../v2/products, gw_routes_add_v2), and the
 *       v1 route's replies carry the deprecation headers; URL|URL|...
 *       are the instances of SERVICE, balanced (balance.c)
 *   MOAT_GATEWAY_PROBE_MS         /readyz probe period of the instances of
 *       an upstream with several (default 500)
 *   MOAT_GATEWAY_PUBLIC           "METHOD PREFIX[,...]" let through without
 *       a token, e.g. "GET /api/v1/products,POST /api/v1/users"; a prefix
 *       covers itself and everything below it; GET covers HEAD; a v1
 *       prefix covers its v2 twin too; unset or empty: nothing is public
 *   MOAT_JWT_SECRET               base64 (standard or url-safe) of 32 to
 *       256 bytes: the HS256 secret of end-user tokens, shared with the users
 *       service (iss "moat-users", aud "moat"); required unless
 *       MOAT_INSECURE_NO_AUTH=1, where leaving it unset disables end-user
 *       authentication altogether
 *   MOAT_GATEWAY_RATE             requests per second per client address
 *       (default 200; 0 disables the limit)
 *   MOAT_GATEWAY_BURST            bucket size per client (default 400)
 *   MOAT_GATEWAY_TIMEOUT_MS         total upstream call bound (default 2000)
 *   MOAT_GATEWAY_CONNECT_TIMEOUT_MS connect bound (default 300)
 *   MOAT_GATEWAY_MAX_RESPONSE_BYTES upstream body cap (default 8 MiB)
 *   MOAT_GATEWAY_MAX_HOST_CONNS     connections per upstream (default 64)
 *   MOAT_GATEWAY_ACCESS_TTL_S       lifetime of users' access tokens
 *       (MOAT_USERS_ACCESS_TTL_S, default 900): how long a suspension or
 *       role change seen on users' feed overrides older tokens
 *       (overrides.c); users' URL is its composition backend's
 * and for the order details composition (compose.c):
 *   MOAT_GATEWAY_BACKENDS         "NAME@URL[,...]": base URL of a
 *       composition backend (orders, users, catalog, payments,
 *       notifications, posts, messaging, comments) that no route names or
 *       that should be reached
 *       elsewhere, e.g. "payments@http://127.0.0.1:8085" (payments is
 *       internal: never routed); otherwise the origin of the first route to
 *       that service is used
 *   MOAT_GATEWAY_COMPOSE_TIMEOUT_MS  bound of each backend call (default 300)
 *   MOAT_GATEWAY_BREAKER_FAILURES    consecutive failures that open a
 *       backend's circuit (default 5)
 *   MOAT_GATEWAY_BREAKER_COOLDOWN_MS open this long before a probe
 *       (default 2000)
 * and for the read cache in Redis (cache.c; off without MOAT_REDIS_URL):
 *   MOAT_REDIS_URL                "redis://[:PASSWORD@]HOST:PORT"
 *   MOAT_REDIS_PASSWORD_FILE      a file holding the password (moat up
 *       writes one under var/secrets)
 *   MOAT_GATEWAY_CACHE_PREFIX     key prefix (default "moat:c1")
 *   MOAT_GATEWAY_CACHE_TTL_S      entry lifetime, a safety net (default 60)
 *   MOAT_GATEWAY_CACHE_TIMEOUT_MS bound of one Redis read (default 100)
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>

#include <sodium.h>

#include "gateway.h"
#include "moat/auth.h"
#include "moat/config.h"
#include "moat/jwt.h"
#include "moat/log.h"
#include "moat/service.h"

#define GW_DEFAULT_PORT               8080
#define GW_DEFAULT_TIMEOUT_MS         2000
#define GW_DEFAULT_CONNECT_TIMEOUT_MS 300
#define GW_MAX_TIMEOUT_MS             600000
#define GW_DEFAULT_MAX_RESPONSE       (8 << 20)
#define GW_MIN_MAX_RESPONSE           1024
#define GW_MAX_MAX_RESPONSE           (1 << 30)
/*
 * Below a typical listen backlog (evhttp's 128): a burst that opened more
 * connections than the backend's backlog holds would see dropped SYNs,
 * retried after 1 s - far beyond the connect timeout. Further requests wait
 * for a pooled connection instead, within their total timeout.
 */
#define GW_DEFAULT_MAX_HOST_CONNS 64
#define GW_MAX_MAX_HOST_CONNS     4096

#define GW_DEFAULT_RATE  200 /* requests/s per client address */
#define GW_DEFAULT_BURST 400
#define GW_MAX_RATE      1000000
/*
 * Clients tracked by the limiter; beyond this the least recently seen is
 * forgotten (~100 bytes each, so a few MiB at most).
 */
#define GW_RATE_MAX_CLIENTS 65536

static void gw_free(struct gw *gw)
{
    if (!gw)
        return;
    /* moat/service.h's FREE ORDER: the client first, its cancelled calls
     * answer their requests with 503 and touch the routes. */
    gw_overrides_free(gw);
    json_decref(gw->revoked);
    gw->revoked = NULL;
    gw_cache_close(gw);
    moat_http_client_free(gw->client);
    gw_cache_free(gw);
    gw_pools_free(gw);
    gw_compose_release(gw);
    gw_routes_free(gw->routes, gw->nroutes);
    gw_public_free(gw->public_list, gw->npublic);
    moat_ratelimit_free(gw->limiter);
    sodium_memzero(gw->jwt_secret, sizeof(gw->jwt_secret));
    free(gw);
}

/* MOAT_JWT_SECRET, or none in insecure development mode. */
static int load_user_auth(struct gw *gw)
{
    const char *b64 = getenv("MOAT_JWT_SECRET");
    if (!b64) {
        if (gw->svc->cfg.insecure_no_auth) {
            moat_log(MOAT_LOG_WARN,
                     "MOAT_JWT_SECRET is not set and MOAT_INSECURE_NO_AUTH=1: "
                     "end users are NOT authenticated (development only)",
                     NULL);
            return MOAT_OK;
        }
        moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s}",
                 "variable", "MOAT_JWT_SECRET", "error", "not set");
        fprintf(stderr, "config: MOAT_JWT_SECRET is not set (base64 of the "
                        "end-user token secret shared with users)\n");
        return MOAT_EINVAL;
    }
    int rc = moat_base64_decode(b64, gw->jwt_secret, sizeof(gw->jwt_secret),
                                &gw->jwt_secret_len);
    if (rc != MOAT_OK || gw->jwt_secret_len < MOAT_JWT_MIN_KEY) {
        /* The value is a secret: never logged. */
        moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s}",
                 "variable", "MOAT_JWT_SECRET", "error",
                 "must be base64 of 32 to 256 bytes");
        fprintf(stderr,
                "config: MOAT_JWT_SECRET must be base64 of %d to %d bytes\n",
                MOAT_JWT_MIN_KEY, GW_JWT_SECRET_MAX);
        sodium_memzero(gw->jwt_secret, sizeof(gw->jwt_secret));
        gw->jwt_secret_len = 0;
        return MOAT_EINVAL;
    }
    gw->user_auth = true;
    return MOAT_OK;
}

static int load_access(struct gw *gw)
{
    int64_t rate, burst;
    if (moat_env_int("MOAT_GATEWAY_RATE", GW_DEFAULT_RATE, 0, GW_MAX_RATE,
                     &rate) != MOAT_OK ||
        moat_env_int("MOAT_GATEWAY_BURST", GW_DEFAULT_BURST, 1, GW_MAX_RATE,
                     &burst) != MOAT_OK)
        return MOAT_EINVAL;
    if (rate > 0)
        gw->limiter = moat_ratelimit_new((double)burst, (double)rate,
                                         GW_RATE_MAX_CLIENTS);
    else
        moat_log(MOAT_LOG_WARN, "MOAT_GATEWAY_RATE=0: no per-client limit",
                 NULL);

    const char *spec = moat_env_str("MOAT_GATEWAY_PUBLIC", "");
    char err[512];
    if (gw_public_parse(spec, &gw->public_list, &gw->npublic, err,
                        sizeof(err)) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s, s:s}",
                 "variable", "MOAT_GATEWAY_PUBLIC", "value", spec, "error",
                 err);
        fprintf(stderr, "config: MOAT_GATEWAY_PUBLIC: %s\n", err);
        return MOAT_EINVAL;
    }
    gw_public_add_v2(&gw->public_list, &gw->npublic);
    for (size_t i = 0; i < gw->npublic; i++)
        moat_log(MOAT_LOG_INFO, "public", "{s:s, s:i}", "prefix",
                 gw->public_list[i].prefix, "methods",
                 (int)gw->public_list[i].methods);
    return load_user_auth(gw);
}

static int load_config(struct gw *gw, long *max_host_conns)
{
    int64_t v;

    if (moat_env_int("MOAT_GATEWAY_TIMEOUT_MS", GW_DEFAULT_TIMEOUT_MS, 1,
                     GW_MAX_TIMEOUT_MS, &v) != MOAT_OK)
        return MOAT_EINVAL;
    gw->timeout_ms = (long)v;
    if (moat_env_int("MOAT_GATEWAY_CONNECT_TIMEOUT_MS",
                     GW_DEFAULT_CONNECT_TIMEOUT_MS, 1, GW_MAX_TIMEOUT_MS,
                     &v) != MOAT_OK)
        return MOAT_EINVAL;
    gw->connect_timeout_ms = (long)v;
    if (moat_env_int("MOAT_GATEWAY_MAX_RESPONSE_BYTES", GW_DEFAULT_MAX_RESPONSE,
                     GW_MIN_MAX_RESPONSE, GW_MAX_MAX_RESPONSE, &v) != MOAT_OK)
        return MOAT_EINVAL;
    gw->max_response = (size_t)v;
    if (moat_env_int("MOAT_GATEWAY_MAX_HOST_CONNS", GW_DEFAULT_MAX_HOST_CONNS,
                     1, GW_MAX_MAX_HOST_CONNS, &v) != MOAT_OK)
        return MOAT_EINVAL;
    *max_host_conns = (long)v;

    const char *spec = moat_env_str("MOAT_GATEWAY_ROUTES", NULL);
    if (!spec) {
        moat_log(MOAT_LOG_WARN,
                 "MOAT_GATEWAY_ROUTES is not set: no API is routed", NULL);
        return MOAT_OK;
    }
    char err[512];
    if (gw_routes_parse(spec, &gw->routes, &gw->nroutes, err, sizeof(err)) !=
        MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s, s:s}",
                 "variable", "MOAT_GATEWAY_ROUTES", "value", spec, "error",
                 err);
        fprintf(stderr, "config: MOAT_GATEWAY_ROUTES: %s\n", err);
        return MOAT_EINVAL;
    }
    gw_routes_add_v2(&gw->routes, &gw->nroutes);
    return MOAT_OK;
}

static void register_metrics(struct gw *gw, struct moat_metrics *m)
{
    gw->m_requests = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_upstream_requests_total",
        "Upstream calls by upstream prefix and HTTP status (\"error\" when "
        "no valid response arrived)",
        "upstream,status", NULL, 0);
    struct moat_metric_family *dur = moat_metrics_family(
        m, MOAT_HISTOGRAM, "moat_gateway_upstream_duration_seconds",
        "Upstream call duration, failures included", "upstream",
        moat_latency_buckets, moat_latency_buckets_len);
    struct moat_metric_family *errs = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_upstream_errors_total",
        "Upstream calls that got no usable response, by kind", "upstream,kind",
        NULL, 0);
    gw->m_auth_rejected = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_auth_rejected_total",
        "Requests refused with 401, by reason (\"missing\" when no token "
        "was sent to a non-public route)",
        "reason", NULL, 0);
    struct moat_metric_family *limited = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_rate_limited_total",
        "Requests refused with 429 by the per-client rate limit", NULL, NULL,
        0);
    if (!gw->m_requests || !dur || !errs || !gw->m_auth_rejected || !limited)
        moat_die("cannot register the gateway metrics");
    gw->m_rate_limited = moat_metric_single(limited);
    for (size_t i = 0; i < gw->nroutes; i++) {
        struct gw_route *r = &gw->routes[i];
        const char *up[] = {r->prefix};
        r->m_duration = moat_metric_series(dur, up);
        /* Created up front so every kind shows as 0 before it happens. */
        for (int k = 0; k < GW_ERR_KINDS; k++) {
            const char *labels[] = {r->prefix, gw_err_kind_name(k)};
            r->m_errors[k] = moat_metric_series(errs, labels);
        }
    }
}

static int gw_init(struct moat_service *svc)
{
    struct gw *gw = moat_xcalloc(1, sizeof(*gw));
    long max_host_conns = 0;
    int rc = MOAT_EINVAL;

    gw->svc = svc;
    if (load_config(gw, &max_host_conns) != MOAT_OK ||
        load_access(gw) != MOAT_OK)
        goto cleanup;
    struct moat_http_client_options opts = {
        .connect_timeout_ms = gw->connect_timeout_ms,
        .timeout_ms = gw->timeout_ms,
        .max_response = gw->max_response,
        .max_host_conns = max_host_conns,
    };
    rc = moat_http_client_new(&gw->client, svc->base, &opts);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot create the HTTP client", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    register_metrics(gw, svc->metrics);
    rc = gw_pools_init(gw);
    if (rc == MOAT_OK)
        rc = gw_compose_init(gw);
    if (rc != MOAT_OK)
        goto cleanup;
    int64_t access_ttl_s;
    rc = moat_env_int("MOAT_GATEWAY_ACCESS_TTL_S", 900, 30, 86400,
                      &access_ttl_s);
    if (rc == MOAT_OK)
        rc = gw_overrides_init(gw, access_ttl_s);
    if (rc == MOAT_OK)
        rc = gw_cache_init(gw);
    if (rc != MOAT_OK)
        goto cleanup;

    for (size_t i = 0; i < gw->nroutes; i++) {
        struct gw_route *r = &gw->routes[i];
        r->gw = gw;
        /* A proxied v2 route needs no flag: the upstream renders v2. */
        unsigned flags = r->has_successor ? MOAT_ROUTE_API_V1_DEPRECATED : 0;
        rc = moat_http_route_ex(svc->http, MOAT_METHOD_ANY, r->prefix, gw_proxy,
                                r, flags);
        if (rc == MOAT_OK)
            rc = moat_http_route_ex(svc->http, MOAT_METHOD_ANY, r->pattern_rest,
                                    gw_proxy, r, flags);
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "cannot route prefix", "{s:s, s:s}",
                     "prefix", r->prefix, "error", moat_strerror(rc));
            fprintf(stderr,
                    "config: MOAT_GATEWAY_ROUTES: prefix '%s' cannot be "
                    "routed (%s; it may clash with a built-in route)\n",
                    r->prefix, moat_strerror(rc));
            goto cleanup;
        }
        moat_log(MOAT_LOG_INFO, "route", "{s:s, s:s}", "prefix", r->prefix,
                 "upstream", r->base_url);
    }
    /* Every route registered above is proxied: all go through the guard. */
    moat_http_set_guard(svc->http, gw_access_guard, gw);
    svc->impl = gw;
    gw = NULL;
    rc = MOAT_OK;
cleanup:
    /* On failure release is not called: undo here. Routes already given to
     * the server point at freed memory, but the server only runs after a
     * successful init. */
    gw_free(gw);
    return rc;
}

static int gw_start(struct moat_service *svc)
{
    gw_overrides_start(svc->impl);
    gw_cache_start(svc->impl);
    return MOAT_OK;
}

static void gw_release(struct moat_service *svc)
{
    gw_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def gateway_def = {
    .name = "gateway",
    .default_port = GW_DEFAULT_PORT,
    .needs_data_dir = false,
    .public_api = true, /* end users authenticate here (access.c) */
    .init = gw_init,
    .start = gw_start,
    .release = gw_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&gateway_def, argc, argv);
}
