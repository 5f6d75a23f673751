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
 *  6. on SIGTERM or SIGINT stops accepting, drains in-flight requests (up to
 *     MOAT_DRAIN_TIMEOUT_MS), calls def->release and exits 0.
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
 *
 * Unless def->public_api, every route but /healthz, /readyz and /metrics
 * requires a valid service token from a known peer (401 otherwise); the
 * handler finds the caller and the end user in moat_req_principal().
 */
#ifndef MOAT_SERVICE_H
#define MOAT_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "moat/auth.h"
#include "moat/http.h"
#include "moat/metrics.h"

struct event_base;

struct moat_service_config {
    const char *name;     /* borrowed from env or def */
    char host[64];        /* listen address */
    uint16_t port;        /* listen port (0 = any) */
    const char *data_dir; /* borrowed; NULL when def->needs_data_dir false */
    struct moat_http_limits limits;
    unsigned drain_timeout_ms;
    bool access_log;
    bool sandbox;
    bool insecure_no_auth; /* MOAT_INSECURE_NO_AUTH=1: development only */
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
    /* Free everything init created. Called after draining. */
    void (*release)(struct moat_service *svc);
    /* Extra /readyz detail or status fields; NULL = none. */
};

/* Run the service; returns the process exit code. */
int moat_service_main(const struct moat_service_def *def, int argc,
                      char **argv);

/* Load cfg from the environment. Returns MOAT_OK or MOAT_EINVAL (logged). */
int moat_service_config_load(struct moat_service_config *cfg,
                             const struct moat_service_def *def);

#endif /* MOAT_SERVICE_H */
