/*
 * main.c - the connections service: a social graph of follows (directed)
 * and connections (mutual, request then accept) in the service's own LMDB
 * environment ($MOAT_DATA_DIR/connections.lmdb), served at /v1/follows,
 * /v1/connections and /v1/users/{id}/... (docs/connections.md), and its
 * events served from its outbox (same environment, same transactions) at
 * /v1/events.
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_CONNECTIONS_MAPSIZE_MB  LMDB map size in MiB (default 256): the
 *                                most the environment can hold; a write
 *                                beyond it fails (503) until it is raised
 *                                and the service restarted
 *   MOAT_OUTBOX_RETENTION_S      keep events this long (default 7 days;
 *                                0 = forever); the newest 10000 always stay
 *
 * Where to look: handlers.c for the HTTP API, graph.c for the layout and
 * every read and write.
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>

#include "connections.h"
#include "moat/config.h"
#include "moat/events.h"
#include "moat/kv.h"
#include "moat/log.h"
#include "moat/service.h"

#define MAPSIZE_DEFAULT_MB         (MOAT_KV_DEFAULT_MAPSIZE >> 20)
#define MAPSIZE_MAX_MB             (1024 * 1024) /* 1 TiB of address space */
#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000

static int connections_init(struct moat_service *svc)
{
    struct conn_service *cs = moat_xcalloc(1, sizeof(*cs));
    struct conn_graph_options opts = {.base = svc->base,
                                      .source = svc->cfg.name};
    int64_t mapsize_mb, retention;
    int rc = MOAT_EINVAL;
    if (moat_env_int("MOAT_CONNECTIONS_MAPSIZE_MB", MAPSIZE_DEFAULT_MB, 1,
                     MAPSIZE_MAX_MB, &mapsize_mb) != MOAT_OK ||
        moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S, 0,
                     OUTBOX_RETENTION_MAX_S, &retention) != MOAT_OK)
        goto cleanup; /* logged by moat_env_int */
    opts.mapsize = (size_t)mapsize_mb << 20;
    opts.outbox.retention_s = retention;
    opts.outbox.retention_min_keep = OUTBOX_KEEP_MIN;

    rc = conn_graph_open(&cs->graph, svc->cfg.data_dir, svc->metrics, &opts);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the connections database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    rc = conn_routes_register(svc->http, cs);
    if (rc == MOAT_OK)
        rc = moat_feed_register(conn_graph_outbox(cs->graph), svc->http);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register connections routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_kv(svc, conn_graph_kv(cs->graph));
    svc->impl = cs;
    cs = NULL;

cleanup:
    if (cs) {
        conn_graph_close(cs->graph);
        free(cs);
    }
    return rc;
}

static bool connections_ready(struct moat_service *svc, const char **why)
{
    struct conn_service *cs = svc->impl;
    if (!cs) {
        *why = "not initialised";
        return false;
    }
    return conn_graph_ready(cs->graph, why);
}

static void connections_release(struct moat_service *svc)
{
    struct conn_service *cs = svc->impl;
    if (!cs)
        return;
    conn_graph_close(cs->graph);
    free(cs);
    svc->impl = NULL;
}

static const struct moat_service_def connections_def = {
    .name = "connections",
    .default_port = 8090,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = connections_init,
    .ready = connections_ready,
    .release = connections_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&connections_def, argc, argv);
}
