/*
 * main.c - the read model service: a customer's order history (CQRS) in
 * its own SQLite database ($MOAT_DATA_DIR/readmodel.db), materialised only
 * from the event feeds of orders, catalog, payments and notifications,
 * served at GET /v1/customers/{id}/orders.
 *
 * Where to look: events.c for how each event changes the view (and the
 * upcasting of older event schemas), handlers.c for the HTTP API, store.c
 * for the schema and every query. docs/readmodel.md describes the
 * service, docs/events.md how to operate its consumer (moat events
 * replay readmodel --verify).
 *
 * Environment (besides moat/service.h's):
 *   MOAT_READMODEL_ORDERS_URL         orders' base URL, for its feed
 *                                     (default http://127.0.0.1:8086)
 *   MOAT_READMODEL_CATALOG_URL        catalog's (default :8081)
 *   MOAT_READMODEL_PAYMENTS_URL       payments' (default :8085)
 *   MOAT_READMODEL_NOTIFICATIONS_URL  notifications' (default :8087)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/events.h"
#include "moat/log.h"
#include "moat/service.h"
#include "readmodel.h"
#include "store.h"

/* Differences listed by replay --verify before "... and N more". */
#define VERIFY_MAX_DIFFS 100

/* ---- the view, as the consumer's replay sees it ---- */

static int view_reset(struct moat_db *db, void *arg)
{
    MOAT_UNUSED(arg);
    return rm_store_reset(db);
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    MOAT_UNUSED(arg);
    return rm_store_compare(live, scratch, diffs, VERIFY_MAX_DIFFS);
}

/* Once the process is confined and listening (moat/service.h). */
static int readmodel_start(struct moat_service *svc)
{
    struct rm_service *s = svc->impl;
    moat_log(MOAT_LOG_INFO, "consuming events", "{s:s, s:s, s:s, s:s}",
             "orders", s->source_urls[0], "catalog", s->source_urls[1],
             "payments", s->source_urls[2], "notifications", s->source_urls[3]);
    moat_consumer_start(s->consumer);
    return MOAT_OK;
}

/* In moat/service.h's FREE ORDER. */
static void readmodel_free(struct rm_service *s)
{
    if (!s)
        return;
    moat_consumer_free(s->consumer);
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

/* One source of the view. */
struct source_def {
    const char *name;
    const char *env, *url_default;
    const char *const *types;
    moat_event_handler_fn handler;
};

static const struct source_def sources[RM_NSOURCES] = {
    {"orders", "MOAT_READMODEL_ORDERS_URL", "http://127.0.0.1:8086",
     rm_orders_event_types, rm_apply_orders},
    {"catalog", "MOAT_READMODEL_CATALOG_URL", "http://127.0.0.1:8081",
     rm_catalog_event_types, rm_apply_catalog},
    {"payments", "MOAT_READMODEL_PAYMENTS_URL", "http://127.0.0.1:8085",
     rm_payments_event_types, rm_apply_payments},
    {"notifications", "MOAT_READMODEL_NOTIFICATIONS_URL",
     "http://127.0.0.1:8087", rm_notifications_event_types,
     rm_apply_notifications},
};

static int subscribe(struct rm_service *s, struct moat_service *svc, size_t i)
{
    const struct source_def *def = &sources[i];
    int rc = moat_env_url(def->env, def->url_default, &s->source_urls[i]);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, s->consumer, def->name,
                                    s->source_urls[i], def->types, def->handler,
                                    s);
    return rc;
}

static int readmodel_init(struct moat_service *svc)
{
    struct rm_service *s = moat_xcalloc(1, sizeof(*s));
    int rc = rm_store_open(&s->db, svc->cfg.data_dir, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the read model database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }

    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(sources) && rc == MOAT_OK; i++)
        rc = subscribe(s, svc, i);
    if (rc != MOAT_OK)
        goto cleanup;

    size_t nmig;
    const struct moat_migration *mig = rm_store_migrations(&nmig);
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
    rc = rm_routes_register(svc->http, s);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register the read model's routes",
                 "{s:s}", "error", moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_sqlite(svc, s->db);
    svc->impl = s;
    s = NULL;
    rc = MOAT_OK;

cleanup:
    readmodel_free(s);
    return rc;
}

static bool readmodel_ready(struct moat_service *svc, const char **why)
{
    struct rm_service *s = svc->impl;
    if (!s) {
        *why = "not initialised";
        return false;
    }
    return rm_store_ready(s->db, why);
}

static void readmodel_release(struct moat_service *svc)
{
    readmodel_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def readmodel_def = {
    .name = "readmodel",
    .default_port = 8089,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = readmodel_init,
    .start = readmodel_start,
    .ready = readmodel_ready,
    .release = readmodel_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&readmodel_def, argc, argv);
}
