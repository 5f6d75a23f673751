/*
 * main.c - the inventory service: stock levels per SKU in inventory's own
 * LMDB environment ($MOAT_DATA_DIR/inventory.lmdb), served at /v1/stock,
 * reservations for the order saga at /v1/reservations (docs/inventory.md),
 * and its events served from its outbox (in the same
 * environment, written in the same transactions) at /v1/events.
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_INVENTORY_MAPSIZE_MB  LMDB map size in MiB (default 256): the
 *                              most the environment can hold; a write
 *                              beyond it fails (503) until it is raised
 *                              and the service restarted
 *   MOAT_OUTBOX_RETENTION_S    keep events this long (default 7 days;
 *                              0 = forever); the newest 10000 always stay
 *   MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER
 *                              held reservations one customer may have at
 *                              once (default 5, 1..10000); more is 429
 *   MOAT_INVENTORY_ORDERS_URL  orders' base URL (e.g.
 *                              http://127.0.0.1:8086): consume the order
 *                              saga's commands from its feed; unset = no
 *                              consumption (the HTTP routes only)
 *
 * $MOAT_DATA_DIR/audit.log records every stock change (moat/audit.h).
 *
 * Where to look: handlers.c for the HTTP API, commands.c for the saga's
 * commands, store.c for the layout and every read and write.
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>

#include "inventory.h"
#include "moat/audit.h"
#include "moat/config.h"
#include "moat/events.h"
#include "moat/kv.h"
#include "moat/log.h"
#include "moat/service.h"
#include "store.h"

#define MAPSIZE_DEFAULT_MB         (MOAT_KV_DEFAULT_MAPSIZE >> 20)
#define MAPSIZE_MAX_MB             (1024 * 1024) /* 1 TiB of address space */
#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000
#define MAX_OPEN_DEFAULT           5
#define MAX_OPEN_MAX               10000

static int inventory_init(struct moat_service *svc)
{
    struct inv_service *inv = moat_xcalloc(1, sizeof(*inv));
    struct inv_store_options opts = {.base = svc->base,
                                     .source = svc->cfg.name};
    int64_t mapsize_mb, retention;
    int rc = MOAT_EINVAL;
    if (moat_env_int("MOAT_INVENTORY_MAPSIZE_MB", MAPSIZE_DEFAULT_MB, 1,
                     MAPSIZE_MAX_MB, &mapsize_mb) != MOAT_OK ||
        moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S, 0,
                     OUTBOX_RETENTION_MAX_S, &retention) != MOAT_OK ||
        moat_env_int("MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER", MAX_OPEN_DEFAULT,
                     1, MAX_OPEN_MAX, &inv->max_open_per_customer) != MOAT_OK)
        goto cleanup; /* logged by moat_env_int */
    opts.mapsize = (size_t)mapsize_mb << 20;
    opts.outbox.retention_s = retention;
    opts.outbox.retention_min_keep = OUTBOX_KEEP_MIN;

    rc = inv_store_open(&inv->store, svc->cfg.data_dir, svc->metrics, &opts);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the inventory database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    char *path = moat_xasprintf("%s/%s", svc->cfg.data_dir, MOAT_AUDIT_FILE);
    rc = moat_audit_open(&inv->audit, path);
    free(path);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = inv_routes_register(svc->http, inv);
    if (rc == MOAT_OK)
        rc = moat_feed_register(inv_store_outbox(inv->store), svc->http);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register inventory routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    const char *orders_url = moat_env_str("MOAT_INVENTORY_ORDERS_URL", NULL);
    rc = inv_consumer_new(&inv->consumer, svc, inv, orders_url);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR,
                 "cannot consume orders' feed (MOAT_INVENTORY_ORDERS_URL)",
                 "{s:s, s:s}", "url", orders_url ? orders_url : "", "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_kv(svc, inv_store_kv(inv->store));
    svc->impl = inv;
    inv = NULL;

cleanup:
    if (inv) {
        inv_consumer_free(inv->consumer);
        inv_store_close(inv->store);
        moat_audit_close(inv->audit);
        free(inv);
    }
    return rc;
}

static bool inventory_ready(struct moat_service *svc, const char **why)
{
    struct inv_service *inv = svc->impl;
    if (!inv) {
        *why = "not initialised";
        return false;
    }
    return inv_store_ready(inv->store, why);
}

static void inventory_release(struct moat_service *svc)
{
    struct inv_service *inv = svc->impl;
    if (!inv)
        return;
    /* The consumer first: it writes through the store. */
    inv_consumer_free(inv->consumer);
    inv_store_close(inv->store);
    moat_audit_close(inv->audit);
    free(inv);
    svc->impl = NULL;
}

static const struct moat_service_def inventory_def = {
    .name = "inventory",
    .default_port = 8083,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = inventory_init,
    .ready = inventory_ready,
    .release = inventory_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&inventory_def, argc, argv);
}
