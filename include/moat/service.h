/*
 * moat/service.h - the skeleton every moat service process runs.
 *
 * A service's main() is one call: moat_service_main(&def, argc, argv). It
 *  1. reads the configuration from the environment (below),
 *  2. creates the data directory (mode 0700) if the service has one,
 *  3. calls def->init, where the service opens its database, applies its
 *     migrations and registers its routes,
 *  4. confines the process to its data directory (moat/sandbox.h),
 *  5. listens, serves /healthz, /readyz and /metrics besides its routes,
 *  6. calls def->start, where the service starts what must not run before
 *     the process is confined and listening: consumers
 *     (moat_consumer_start), sweepers, worker threads,
 *  7. on SIGTERM or SIGINT stops accepting, drains in-flight requests (up to
 *     MOAT_DRAIN_TIMEOUT_MS), calls def->release, frees the feed client of
 *     moat_service_subscribe and exits 0.
 *
 * Environment (all optional except where the service needs a data dir):
 *   MOAT_SERVICE_NAME      instance name for logs/metrics (default def->name)
 *   MOAT_LISTEN            host:port (default 127.0.0.1:<def->default_port>)
 *   MOAT_DATA_DIR          data directory (default var/<name>)
 *   MOAT_LOG_LEVEL         debug|info|warn|error (default info)
 *   MOAT_ACCESS_LOG        log every request (default 1)
 *   MOAT_MAX_BODY_BYTES, MOAT_MAX_HEADER_BYTES, MOAT_MAX_CONNECTIONS,
 *   MOAT_IO_TIMEOUT_MS     HTTP limits (see moat/http.h)
 *   MOAT_DRAIN_TIMEOUT_MS  graceful shutdown bound (default 10000)
 *   MOAT_SANDBOX           1 = Landlock confinement (default), 0 = off
 *   MOAT_SERVICE_KEY, MOAT_PEER_KEYS
 *                          service identity (moat/auth.h); required
 *   MOAT_INSECURE_NO_AUTH  1 = accept calls without a service token
 *                          (development only; logged loudly)
 *   MOAT_TLS_CERT, MOAT_TLS_KEY, MOAT_TLS_CA
 *                          serve HTTPS only (moat/tls.h), read before
 *                          confinement; unless def->public_api or
 *                          def->external, a client certificate naming a
 *                          MOAT_PEER_KEYS caller or "operator" is required,
 *                          and on guarded routes it must name the token's
 *                          iss (403 otherwise). Outgoing https:// calls
 *                          present the certificate.
 *
 * Unless def->public_api, every route but /healthz, /readyz and /metrics
 * requires a valid service token from a known peer (401 otherwise); the
 * handler finds the caller and the end user in moat_req_principal().
 *
 * FREE ORDER. def->release frees what init created, in this order (each
 * service's *_free points here rather than explaining it again):
 *  1. stop what starts work by itself: timers, sweepers, sagas;
 *  2. consumers (moat_consumer_free): they own their feed sources, whose
 *     pending pulls an HTTP client's free would otherwise complete into a
 *     freed consumer; the feed client of moat_service_subscribe is freed
 *     by the skeleton after release, so it is always last;
 *  3. what completes work still in flight: the service's HTTP clients
 *     (freeing one cancels its calls, whose callbacks run now and answer
 *     their requests, e.g. 503) and worker pools (their last
 *     continuations run now); these may use anything freed below;
 *  4. what that work records into: writers (a deliverer), then the outbox
 *     (moat_outbox_free answers parked feed readers), then the database
 *     (moat_db_close), last of all.
 */
#ifndef MOAT_SERVICE_H
#define MOAT_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "moat/auth.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/metrics.h"

struct event_base;
struct moat_http_client;

/* Per-call bound of the feed client: above the longest long poll. */
#define MOAT_FEED_CLIENT_TIMEOUT_MS (MOAT_FEED_MAX_WAIT_MS + 10000L)

struct moat_service_config {
    const char *name;     /* borrowed from env or def */
    char host[64];        /* listen address */
    uint16_t port;        /* listen port (0 = any) */
    const char *data_dir; /* borrowed; NULL when def->needs_data_dir false */
    /* $MOAT_DB_DSN (borrowed; NULL when unset or empty, or without a data
     * dir): the store's PostgreSQL database, for moat_db_options.dsn. */
    const char *db_dsn;
    struct moat_http_limits limits;
    unsigned drain_timeout_ms;
    bool access_log;
    bool sandbox;
    bool insecure_no_auth; /* MOAT_INSECURE_NO_AUTH=1: development only */
    /* MOAT_OPERATORS: the peers (comma-separated, default "operator", the
     * CLI) whose service tokens may call /v1/admin/... routes. */
    const char *operators;
};

struct moat_service {
    const struct moat_service_def *def;
    struct moat_service_config cfg;
    struct event_base *base;
    struct moat_http_server *http;
    struct moat_metrics *metrics;
    struct moat_auth *auth; /* service identity; NULL only when insecure */
    uint16_t bound_port;
    void *impl; /* the service's own state, set by init */
    /* Owned by the skeleton: the client of moat_service_subscribe's feed
     * sources, created on first use, freed after def->release. */
    struct moat_http_client *feeds;
};

struct moat_service_def {
    const char *name;      /* "catalog" */
    uint16_t default_port; /* 8081 */
    bool needs_data_dir;   /* owns durable data */
    bool public_api; /* faces end users (gateway): no service-token guard */
    /* Stands in for the outside world (a card processor): not part of
     * moat's trust domain, so no service identity at all. */
    bool external;
    const char *const *ro_paths; /* extra read-only paths, NULL-terminated */
    /* Open the database, register routes. Negative return aborts start. */
    int (*init)(struct moat_service *svc);
    /* Readiness beyond "initialised" (e.g. DB reachable); NULL = ready.
     * Returns true when ready; *why (static string) says what is missing. */
    bool (*ready)(struct moat_service *svc, const char **why);
    /* Once the process is confined and listening, before the first
     * request is served: start consumers, sweepers, threads. NULL = none.
     * A negative return stops the service (release runs). */
    int (*start)(struct moat_service *svc);
    /* Free everything init created (FREE ORDER above). Called after
     * draining, also when start failed. */
    void (*release)(struct moat_service *svc);
};

/* Run the service; returns the process exit code. */
int moat_service_main(const struct moat_service_def *def, int argc,
                      char **argv);

/*
 * Subscribe consumer c (created by the service, e.g. in init) to the HTTP
 * event feed of service `source` at url: checks url (moat_url_valid,
 * logged), creates the feed source with the service's identity
 * (svc->auth) on svc->feeds (created on first use with timeout
 * MOAT_FEED_CLIENT_TIMEOUT_MS) and subscribes handler(arg) to types
 * (NULL-terminated; NULL = all). On success the consumer owns the source;
 * on failure nothing is left behind. Returns MOAT_OK, MOAT_EINVAL (bad
 * url or name) or as moat_consumer_subscribe.
 */
int moat_service_subscribe(struct moat_service *svc, struct moat_consumer *c,
                           const char *source, const char *url,
                           const char *const *types,
                           moat_event_handler_fn handler, void *arg);

/* Load cfg from the environment. Returns MOAT_OK or MOAT_EINVAL (logged). */
int moat_service_config_load(struct moat_service_config *cfg,
                             const struct moat_service_def *def);

#endif /* MOAT_SERVICE_H */
