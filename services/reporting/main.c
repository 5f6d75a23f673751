/*
 * main.c - the reporting service: a warehouse (a star schema of sales,
 * payments, stock and sagas) in reporting's own SQLite database
 * ($MOAT_DATA_DIR/reporting.db), loaded continuously from the events of
 * orders, payments, catalog and inventory, reported at /v1/reports/{name}
 * as JSON or CSV.
 *
 * Where to look: events.c for how each event becomes facts and dimensions
 * (and the upcasting of older schemas), etl.c for the batch reload of the
 * product dimension from catalog's API, reports.c for the HTTP API,
 * store.c for the schema and every query. docs/reporting.md describes the
 * warehouse and the reports.
 *
 * Environment (besides moat/service.h's):
 *   MOAT_REPORTING_ORDERS_URL     orders' base URL (http://127.0.0.1:8086)
 *   MOAT_REPORTING_PAYMENTS_URL   payments' (http://127.0.0.1:8085)
 *   MOAT_REPORTING_CATALOG_URL    catalog's (http://127.0.0.1:8081), for
 *                                 its feed and the product reload
 *   MOAT_REPORTING_INVENTORY_URL  inventory's (http://127.0.0.1:8083)
 *   MOAT_REPORTING_PSEUDONYM_KEY  required: the key of customer pseudonyms
 *                                 (HMAC-SHA256), 32..256 bytes of text.
 *                                 Changing it changes every pseudonym:
 *                                 replay the warehouse afterwards
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/service.h"
#include "reporting.h"
#include "store.h"

/* Per-call bound of the product reload's calls to catalog. */
#define ETL_CLIENT_TIMEOUT_MS 40000L
/* Differences listed by replay --verify before "... and N more". */
#define VERIFY_MAX_DIFFS 100

/* ---- the view, as the consumer's replay sees it ---- */

static int view_reset(struct moat_db *db, void *arg)
{
    MOAT_UNUSED(arg);
    return rep_store_reset(db);
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    MOAT_UNUSED(arg);
    return rep_store_compare(live, scratch, diffs, VERIFY_MAX_DIFFS);
}

/* Once the process is confined and listening (moat/service.h). */
static int reporting_start(struct moat_service *svc)
{
    struct rep_service *s = svc->impl;
    moat_log(MOAT_LOG_INFO, "consuming events", "{s:s}", "sources",
             "orders, payments, catalog, inventory");
    moat_consumer_start(s->consumer);
    return MOAT_OK;
}

static void reporting_free(struct rep_service *s)
{
    if (!s)
        return;
    /* moat/service.h's FREE ORDER. Freeing the client answers a running
     * product reload (503). */
    moat_consumer_free(s->consumer);
    moat_http_client_free(s->client);
    rep_etl_cancel(s);
    if (s->db)
        moat_db_close(s->db);
    sodium_memzero(s->pseudonym_key, sizeof(s->pseudonym_key));
    free(s);
}

static const struct {
    const char *source;
    const char *env;
    const char *def;
    const char *const *types;
    moat_event_handler_fn handler;
} feeds[] = {
    {"orders", "MOAT_REPORTING_ORDERS_URL", "http://127.0.0.1:8086",
     rep_orders_event_types, rep_apply_orders},
    {"payments", "MOAT_REPORTING_PAYMENTS_URL", "http://127.0.0.1:8085",
     rep_payments_event_types, rep_apply_payments},
    {"catalog", "MOAT_REPORTING_CATALOG_URL", "http://127.0.0.1:8081",
     rep_catalog_event_types, rep_apply_catalog},
    {"inventory", "MOAT_REPORTING_INVENTORY_URL", "http://127.0.0.1:8083",
     rep_inventory_event_types, rep_apply_inventory},
};

static int subscribe_all(struct rep_service *s, struct moat_service *svc)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(feeds); i++) {
        const char *url;
        int rc = moat_env_url(feeds[i].env, feeds[i].def, &url);
        if (rc == MOAT_OK)
            rc = moat_service_subscribe(svc, s->consumer, feeds[i].source, url,
                                        feeds[i].types, feeds[i].handler, s);
        if (rc != MOAT_OK)
            return rc;
        if (strcmp(feeds[i].source, "catalog") == 0)
            s->catalog_url = url;
    }
    return MOAT_OK;
}

static int load_key(struct rep_service *s)
{
    const char *key = moat_env_str("MOAT_REPORTING_PSEUDONYM_KEY", "");
    size_t len = strlen(key);
    if (len < REP_PSEUDONYM_KEY_MIN || len > REP_PSEUDONYM_KEY_MAX) {
        moat_log(MOAT_LOG_ERROR,
                 "MOAT_REPORTING_PSEUDONYM_KEY must be set, 32 to 256 bytes "
                 "(customer ids are never stored, only their keyed hash)",
                 "{s:I}", "length", (json_int_t)len);
        return MOAT_EINVAL;
    }
    memcpy(s->pseudonym_key, key, len);
    s->pseudonym_key_len = len;
    return MOAT_OK;
}

static int reporting_init(struct moat_service *svc)
{
    struct rep_service *s = moat_xcalloc(1, sizeof(*s));
    int rc = load_key(s);
    if (rc != MOAT_OK)
        goto cleanup;
    s->auth = svc->auth;
    rc = rep_store_open(&s->db, svc->cfg.data_dir, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the reporting database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    const struct moat_http_client_options copts = {
        .timeout_ms = ETL_CLIENT_TIMEOUT_MS,
    };
    rc = moat_http_client_new(&s->client, svc->base, &copts);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = subscribe_all(s, svc);
    if (rc != MOAT_OK)
        goto cleanup;

    size_t nmig;
    const struct moat_migration *mig = rep_store_migrations(&nmig);
    const struct moat_view_ops view = {
        .migrations = mig,
        .nmigrations = nmig,
        .reset = view_reset,
        .compare = view_compare,
        .arg = s,
    };
    rc = moat_consumer_register_admin(s->consumer, svc->http, svc->cfg.data_dir,
                                      &view);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = rep_routes_register(svc->http, s);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register reporting routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_sqlite(svc, s->db);
    svc->impl = s;
    s = NULL;
    rc = MOAT_OK;

cleanup:
    reporting_free(s);
    return rc;
}

static bool reporting_ready(struct moat_service *svc, const char **why)
{
    struct rep_service *s = svc->impl;
    if (!s) {
        *why = "not initialised";
        return false;
    }
    return rep_store_ready(s->db, why);
}

static void reporting_release(struct moat_service *svc)
{
    reporting_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def reporting_def = {
    .name = "reporting",
    .default_port = 8088,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = reporting_init,
    .start = reporting_start,
    .ready = reporting_ready,
    .release = reporting_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&reporting_def, argc, argv);
}
