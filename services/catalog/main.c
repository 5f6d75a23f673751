/*
 * main.c - the catalog service: products as JSON documents in catalog's own
 * SQLite database ($MOAT_DATA_DIR/catalog.db), served at /v1/products.
 *
 * Where to look: handlers.c for the HTTP API, product.c for the document
 * rules, store.c for the schema and every query.
 */
#include "moat/common.h"

#include <stdlib.h>

#include "catalog.h"
#include "moat/log.h"
#include "moat/service.h"
#include "store.h"

static int catalog_init(struct moat_service *svc)
{
    struct cat_service *cat = moat_xcalloc(1, sizeof(*cat));
    int rc = cat_store_open(&cat->store, svc->cfg.data_dir, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the catalog database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    rc = cat_routes_register(svc->http, cat);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register catalog routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
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
