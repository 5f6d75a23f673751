/*
 * main.c - the orders service: orders, their lines and the CreateOrder
 * saga's state in orders' own SQLite database ($MOAT_DATA_DIR/orders.db),
 * the API at /v1/orders (docs/orders.md), its commands and order events
 * served from its outbox at /v1/events, and the participants' replies
 * consumed from their feeds (docs/saga.md).
 *
 * Environment (besides moat/service.h's):
 *   MOAT_ORDERS_CATALOG_URL     catalog's API (default http://127.0.0.1:8081)
 *   MOAT_ORDERS_USERS_URL       users' API and feed (default :8082)
 *   MOAT_ORDERS_INVENTORY_URL   inventory's feed (default :8083)
 *   MOAT_ORDERS_PAYMENTS_URL    payments' feed (default :8085)
 *   MOAT_ORDERS_STEP_TIMEOUT_MS deadline of the reserving and authorizing
 *                               steps (default 30000, 50..3600000)
 *   MOAT_ORDERS_API_TIMEOUT_MS  per call to catalog or users (default 2000)
 *   MOAT_OUTBOX_RETENTION_S     keep events this long (default 7 days)
 *   MOAT_ORDERS_KEYRING         the keyring's text instead of the key file
 *                               $MOAT_DATA_DIR/keys (moat/crypto.h)
 *
 * $MOAT_DATA_DIR/audit.log records every order state change (moat/audit.h).
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "moat/audit.h"
#include "moat/config.h"
#include "moat/crypto.h"
#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/keys.h"
#include "moat/log.h"
#include "moat/service.h"
#include "orders.h"

#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000

static const double saga_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1,    2.5,   5,    10,  30,   60};

static void orders_free(struct ord_service *os)
{
    if (!os)
        return;
    /* moat/service.h's FREE ORDER. */
    if (os->sweep)
        event_free(os->sweep);
    if (os->refresh)
        event_free(os->refresh);
    moat_consumer_free(os->consumer);
    moat_http_client_free(os->api); /* cancels calls: their callbacks free */
    moat_outbox_free(os->outbox);
    moat_keys_free(os->keys);
    if (os->db)
        moat_db_close(os->db);
    moat_audit_close(os->audit);
    moat_keyring_free(os->kr);
    for (size_t i = 0; i < os->nbusy; i++)
        free(os->busy[i]);
    free(os->busy);
    free(os);
}

/* Saga gauges, read from the database when /metrics is rendered. */
static void collect(struct moat_metrics *m, void *arg)
{
    struct ord_service *os = arg;
    json_t *sum = NULL;
    if (ord_sagas_summary(os->db, moat_wall_ms(), &sum) != MOAT_OK)
        return;
    struct moat_metric_family *f =
        moat_metrics_family(m, MOAT_GAUGE, "orders_sagas_open",
                            "Sagas not final, by step", "step", NULL, 0);
    static const char *const steps[] = {"reserving", "authorizing",
                                        "confirming", "compensating"};
    json_t *by_step = json_object_get(sum, "by_step");
    for (size_t i = 0; f && i < MOAT_ARRAY_LEN(steps); i++) {
        const char *v[] = {steps[i]};
        moat_metric_set(
            moat_metric_series(f, v),
            (double)json_integer_value(json_object_get(by_step, steps[i])));
    }
    f = moat_metrics_family(m, MOAT_GAUGE,
                            "orders_saga_oldest_open_age_seconds",
                            "Age of the oldest saga not final", NULL, NULL, 0);
    if (f)
        moat_metric_set(
            moat_metric_single(f),
            json_real_value(json_object_get(sum, "oldest_open_age_seconds")));
    json_decref(sum);
}

/* moat/keys.h's store functions: the customer copies. */
static int rekey_batch(void *arg, uint32_t active, char *after, size_t batch,
                       size_t *resealed, size_t *failed, bool *finished)
{
    struct ord_service *os = arg;
    return ord_customers_rekey_batch(os->db, os->kr, active, after, batch,
                                     resealed, failed, finished);
}

static int rows_by_key(void *arg, json_t **out)
{
    struct ord_service *os = arg;
    return ord_customers_rows_by_key(os->db, out);
}

/* Consume, sweep and refresh once the process is confined and listening
 * (moat/service.h). */
static int orders_start(struct moat_service *svc)
{
    struct ord_service *os = svc->impl;
    moat_consumer_start(os->consumer);
    if (ord_saga_start_sweeper(os) != MOAT_OK ||
        ord_customers_start_refresher(os) != MOAT_OK)
        return MOAT_EIO;
    return MOAT_OK;
}

static const struct {
    const char *name, *env, *def;
} urls[] = {
    {"catalog", "MOAT_ORDERS_CATALOG_URL", "http://127.0.0.1:8081"},
    {"users", "MOAT_ORDERS_USERS_URL", "http://127.0.0.1:8082"},
    {"inventory", "MOAT_ORDERS_INVENTORY_URL", "http://127.0.0.1:8083"},
    {"payments", "MOAT_ORDERS_PAYMENTS_URL", "http://127.0.0.1:8085"},
};

static int orders_init(struct moat_service *svc)
{
    struct ord_service *os = moat_xcalloc(1, sizeof(*os));
    os->svc = svc;
    int64_t timeout, api_timeout, retention;
    int rc = MOAT_EINVAL;
    const char **dst[] = {&os->catalog_url, &os->users_url, &os->inventory_url,
                          &os->payments_url};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(urls); i++)
        if (moat_env_url(urls[i].env, urls[i].def, dst[i]) != MOAT_OK)
            goto cleanup;
    if (moat_env_int("MOAT_ORDERS_STEP_TIMEOUT_MS", 30000, 50, 3600000,
                     &timeout) != MOAT_OK ||
        moat_env_int("MOAT_ORDERS_API_TIMEOUT_MS", 2000, 10, 60000,
                     &api_timeout) != MOAT_OK ||
        moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S, 0,
                     OUTBOX_RETENTION_MAX_S, &retention) != MOAT_OK)
        goto cleanup;
    os->step_timeout_ms = timeout;
    os->api_timeout_ms = (long)api_timeout;

    char *path = moat_xasprintf("%s/keys", svc->cfg.data_dir);
    rc = moat_keyring_load(&os->kr, "MOAT_ORDERS_KEYRING", path);
    free(path);
    if (rc != MOAT_OK)
        goto cleanup;
    path = moat_xasprintf("%s/%s", svc->cfg.data_dir, MOAT_AUDIT_FILE);
    rc = moat_audit_open(&os->audit, path);
    free(path);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = ord_store_open(&os->db, svc->cfg.data_dir, svc->cfg.db_dsn,
                        svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the orders database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    const struct moat_outbox_options oopts = {
        .retention_s = retention, .retention_min_keep = OUTBOX_KEEP_MIN};
    rc = moat_outbox_new(&os->outbox, svc->base, os->db, svc->cfg.name, &oopts,
                         svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    const struct moat_http_client_options aopts = {.timeout_ms = api_timeout};
    rc = moat_http_client_new(&os->api, svc->base, &aopts);
    if (rc == MOAT_OK)
        rc = moat_consumer_new(&os->consumer, svc->base, os->db, svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    moat_consumer_set_outbox(os->consumer, os->outbox);
    rc = moat_service_subscribe(svc, os->consumer, "inventory",
                                os->inventory_url, ord_inventory_replies,
                                ord_saga_apply, os);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, os->consumer, "payments",
                                    os->payments_url, ord_payments_replies,
                                    ord_saga_apply, os);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, os->consumer, "users", os->users_url,
                                    ord_users_events, ord_customers_apply, os);
    if (rc == MOAT_OK)
        rc = moat_consumer_register_admin(os->consumer, svc->http,
                                          svc->cfg.data_dir, NULL);
    if (rc == MOAT_OK)
        rc = moat_feed_register(os->outbox, svc->http);
    if (rc == MOAT_OK)
        rc = ord_routes_register(os);
    if (rc == MOAT_OK)
        rc = moat_keys_new(
            &os->keys, svc, os->kr,
            &(struct moat_keys_store){rekey_batch, rows_by_key, os},
            &(struct moat_keys_options){.env_name = "MOAT_ORDERS_KEYRING",
                                        .audit = os->audit});
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot set up orders", "{s:s}", "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    os->outcomes =
        moat_metrics_family(svc->metrics, MOAT_COUNTER, "orders_sagas_total",
                            "Sagas finished, by outcome", "outcome", NULL, 0);
    os->saga_seconds = moat_metric_single(moat_metrics_family(
        svc->metrics, MOAT_HISTOGRAM, "orders_saga_duration_seconds",
        "Time from placing an order to its final status", NULL, saga_buckets,
        MOAT_ARRAY_LEN(saga_buckets)));
    moat_metrics_on_collect(svc->metrics, collect, os);
    /* A PostgreSQL store is backed up by the database's own tools. */
    if (moat_db_engine(os->db) == MOAT_DB_SQLITE)
        moat_backup_register_sqlite(svc, os->db);
    svc->impl = os;
    os = NULL;
    rc = MOAT_OK;

cleanup:
    orders_free(os);
    return rc;
}

static bool orders_ready(struct moat_service *svc, const char **why)
{
    struct ord_service *os = svc->impl;
    if (!os) {
        *why = "not initialised";
        return false;
    }
    return ord_store_ready(os->db, why);
}

static void orders_release(struct moat_service *svc)
{
    orders_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def orders_def = {
    .name = "orders",
    .default_port = 8086,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = orders_init,
    .start = orders_start,
    .ready = orders_ready,
    .release = orders_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&orders_def, argc, argv);
}
