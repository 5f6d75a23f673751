/*
 * main.c - the search service: a full-text index of catalog's products in
 * search's own SQLite FTS5 database ($MOAT_DATA_DIR/search.db), built only
 * from catalog's events, served at /v1/search.
 *
 * Where to look: events.c for how each catalog event changes the index
 * (and the upcasting of older event schemas), handlers.c for the HTTP API,
 * store.c for the schema and every query. docs/events.md describes the
 * event backbone and how to operate the consumer.
 *
 * Environment (besides moat/service.h's):
 *   MOAT_SEARCH_CATALOG_URL  catalog's base URL for its event feed
 *                            (default http://127.0.0.1:8081)
 */
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/events.h"
#include "moat/log.h"
#include "moat/service.h"
#include "search.h"
#include "store.h"

#define CATALOG_URL_DEFAULT "http://127.0.0.1:8081"
/* Differences listed by replay --verify before "... and N more". */
#define VERIFY_MAX_DIFFS 100

/* ---- the view, as the consumer's replay sees it ---- */

static int view_reset(struct moat_db *db, void *arg)
{
    MOAT_UNUSED(arg);
    return srch_store_reset(db);
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    MOAT_UNUSED(arg);
    return srch_store_compare(live, scratch, diffs, VERIFY_MAX_DIFFS);
}

/* Once the process is confined and listening (moat/service.h). */
static int search_start(struct moat_service *svc)
{
    struct srch_service *s = svc->impl;
    moat_log(MOAT_LOG_INFO, "consuming catalog events", "{s:s}", "feed",
             s->catalog_url);
    moat_consumer_start(s->consumer);
    return MOAT_OK;
}

/* In moat/service.h's FREE ORDER. */
static void search_free(struct srch_service *s)
{
    if (!s)
        return;
    moat_consumer_free(s->consumer);
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

static int search_init(struct moat_service *svc)
{
    struct srch_service *s = moat_xcalloc(1, sizeof(*s));
    int rc = MOAT_EINVAL;

    if (moat_env_url("MOAT_SEARCH_CATALOG_URL", CATALOG_URL_DEFAULT,
                     &s->catalog_url) != MOAT_OK)
        goto cleanup;
    rc = srch_store_open(&s->db, svc->cfg.data_dir, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the search database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }

    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, s->consumer, "catalog", s->catalog_url,
                                    srch_catalog_event_types, srch_apply_event,
                                    s);
    if (rc != MOAT_OK)
        goto cleanup;

    size_t nmig;
    const struct moat_migration *mig = srch_store_migrations(&nmig);
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
    rc = srch_routes_register(svc->http, s);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register search routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    svc->impl = s;
    s = NULL;
    rc = MOAT_OK;

cleanup:
    search_free(s);
    return rc;
}

static bool search_ready(struct moat_service *svc, const char **why)
{
    struct srch_service *s = svc->impl;
    if (!s) {
        *why = "not initialised";
        return false;
    }
    return srch_store_ready(s->db, why);
}

static void search_release(struct moat_service *svc)
{
    search_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def search_def = {
    .name = "search",
    .default_port = 8084,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = search_init,
    .start = search_start,
    .ready = search_ready,
    .release = search_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&search_def, argc, argv);
}
