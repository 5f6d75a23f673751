/*
 * main.c - the catalog service: products as JSON documents in catalog's own
 * SQLite database ($MOAT_DATA_DIR/catalog.db), served at /v1/products, and
 * its events (ProductCreated, ProductUpdated, PriceChanged,
 * ProductDeleted) served from its outbox at /v1/events.
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_OUTBOX_RETENTION_S     keep events this long (default 7 days;
 *                               0 = forever); the newest 10000 always stay
 *   MOAT_CATALOG_EVENT_SCHEMA   data version of ProductCreated/Updated:
 *                               2 (default, the current document) or 1
 *                               (flat price), for a rolling upgrade where
 *                               consumers are older than the catalog
 *
 * Where to look: handlers.c for the HTTP API, product.c for the document
 * rules, store.c for the schema and every query.
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>

#include "catalog.h"
#include "moat/config.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/log.h"
#include "moat/service.h"
#include "store.h"

#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000

static int catalog_init(struct moat_service *svc)
{
    struct cat_service *cat = moat_xcalloc(1, sizeof(*cat));
    struct cat_store_options opts = {
        .base = svc->base, .source = svc->cfg.name, .dsn = svc->cfg.db_dsn};
    int64_t retention, schema;
    int rc = MOAT_EINVAL;
    if (moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S, 0,
                     OUTBOX_RETENTION_MAX_S, &retention) != MOAT_OK ||
        moat_env_int("MOAT_CATALOG_EVENT_SCHEMA", CAT_EVENT_SCHEMA_CURRENT,
                     CAT_EVENT_SCHEMA_FLAT, CAT_EVENT_SCHEMA_CURRENT,
                     &schema) != MOAT_OK)
        goto cleanup; /* logged by moat_env_int */
    opts.outbox.retention_s = retention;
    opts.outbox.retention_min_keep = OUTBOX_KEEP_MIN;
    opts.product_event_schema = (int)schema;
    if (schema != CAT_EVENT_SCHEMA_CURRENT)
        moat_log(MOAT_LOG_WARN,
                 "emitting product events in an older data schema "
                 "(MOAT_CATALOG_EVENT_SCHEMA)",
                 "{s:I}", "schema_version", (json_int_t)schema);

    rc = cat_store_open(&cat->store, svc->cfg.data_dir, svc->metrics, &opts);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the catalog database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    rc = cat_routes_register(svc->http, cat);
    if (rc == MOAT_OK)
        rc = moat_feed_register(cat_store_outbox(cat->store), svc->http);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register catalog routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    /* A PostgreSQL store is backed up by the database's own tools. */
    if (moat_db_engine(cat_store_db(cat->store)) == MOAT_DB_SQLITE)
        moat_backup_register_sqlite(svc, cat_store_db(cat->store));
    svc->impl = cat;
    cat = NULL;

cleanup:
    if (cat) {
        cat_store_close(cat->store);
        free(cat);
    }
    return rc;
}

static bool catalog_ready(struct moat_service *svc, const char **why)
{
    struct cat_service *cat = svc->impl;
    if (!cat) {
        *why = "not initialised";
        return false;
    }
    return cat_store_ready(cat->store, why);
}

static void catalog_release(struct moat_service *svc)
{
    struct cat_service *cat = svc->impl;
    if (!cat)
        return;
    cat_store_close(cat->store);
    free(cat);
    svc->impl = NULL;
}

static const struct moat_service_def catalog_def = {
    .name = "catalog",
    .default_port = 8081,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = catalog_init,
    .ready = catalog_ready,
    .release = catalog_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&catalog_def, argc, argv);
}
