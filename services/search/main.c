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

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/service.h"
#include "search.h"
#include "store.h"

#define CATALOG_URL_DEFAULT "http://127.0.0.1:8081"
/* Per-call bound of the feed client: above the longest long poll. */
#define FEED_CLIENT_TIMEOUT_MS (MOAT_FEED_MAX_WAIT_MS + 10000L)
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

/*
 * The service skeleton has no hook that runs once it listens, and the
 * consumer must not pull before then (moat/events.h: start after the
 * process is confined). A zero-delay timer added in init fires on the
 * loop's first iteration, which lib/service.c enters only after it has
 * confined the process and bound the listener.
 */
static void start_consumer(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct srch_service *s = arg;
    moat_log(MOAT_LOG_INFO, "consuming catalog events", "{s:s}", "feed",
             s->catalog_url);
    moat_consumer_start(s->consumer);
}

static bool url_valid(const char *u)
{
    return strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
}

static void search_free(struct srch_service *s)
{
    if (!s)
        return;
    if (s->start)
        event_free(s->start);
    /* The consumer first: it owns the feed source, whose pending pull the
     * client's free would otherwise complete into a freed consumer. */
    moat_consumer_free(s->consumer);
    moat_http_client_free(s->client);
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

static int search_init(struct moat_service *svc)
{
    struct srch_service *s = moat_xcalloc(1, sizeof(*s));
    int rc = MOAT_EINVAL;

    s->catalog_url =
        moat_env_str("MOAT_SEARCH_CATALOG_URL", CATALOG_URL_DEFAULT);
    if (!url_valid(s->catalog_url)) {
        moat_log(MOAT_LOG_ERROR, "MOAT_SEARCH_CATALOG_URL is not an http URL",
                 "{s:s}", "value", s->catalog_url);
        goto cleanup;
    }
    rc = srch_store_open(&s->db, svc->cfg.data_dir, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the search database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }

    const struct moat_http_client_options copts = {
        .timeout_ms = FEED_CLIENT_TIMEOUT_MS,
    };
    rc = moat_http_client_new(&s->client, svc->base, &copts);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;

    struct moat_event_source *src =
        moat_feed_source_new("catalog", s->catalog_url, s->client, svc->auth);
    if (!src) {
        rc = MOAT_EINVAL;
        goto cleanup;
    }
    const struct moat_subscription sub = {
        .source = src,
        .types = srch_catalog_event_types,
        .handler = srch_apply_event,
        .arg = s,
    };
    rc = moat_consumer_subscribe(s->consumer, &sub);
    if (rc != MOAT_OK) {
        src->ops->free(src); /* not taken: the consumer refused it */
        goto cleanup;
    }

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

    s->start = evtimer_new(svc->base, start_consumer, s);
    const struct timeval now = {0, 0};
    if (!s->start || evtimer_add(s->start, &now) != 0) {
        rc = MOAT_EIO;
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
    .ready = search_ready,
    .release = search_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&search_def, argc, argv);
}
