/*
 * main.c - the search service: a full-text index in search's own SQLite
 * FTS5 database ($MOAT_DATA_DIR/search.db), built only from events.
 * MOAT_SEARCH_INDEX picks which (search.h): catalog's products, served at
 * /v1/search, or the social network's posts and profiles, served at
 * /v1/search/posts and /v1/search/profiles. Both run on one engine
 * (engine.h); docs/search.md describes them.
 *
 * Where to look: events.c / social_events.c for how each event changes an
 * index (and the upcasting of older event schemas), handlers.c /
 * social_handlers.c for the HTTP APIs, store.c / social_store.c for the
 * schemas and their queries, engine.c for what they share. docs/events.md
 * describes the event backbone and how to operate the consumer.
 *
 * Environment (besides moat/service.h's):
 *   MOAT_SEARCH_INDEX         catalog (default) or social
 *   MOAT_SEARCH_CATALOG_URL   catalog index: catalog's base URL for its
 *                             event feed (default http://127.0.0.1:8081)
 *   MOAT_SEARCH_POSTS_URL     social index: posts' base URL
 *                             (default http://127.0.0.1:8092)
 *   MOAT_SEARCH_PROFILES_URL  social index: profiles' base URL
 *                             (default http://127.0.0.1:8091)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/events.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "moat/service.h"
#include "engine.h"
#include "search.h"
#include "social_store.h"
#include "store.h"

#define CATALOG_URL_DEFAULT  "http://127.0.0.1:8081"
#define POSTS_URL_DEFAULT    "http://127.0.0.1:8092"
#define PROFILES_URL_DEFAULT "http://127.0.0.1:8091"
/* Differences listed by replay --verify before "... and N more". */
#define VERIFY_MAX_DIFFS 100

/* ---- the indexes ---- */

static int catalog_subscribe(struct moat_service *svc, struct srch_service *s)
{
    const char *url;
    int rc = moat_env_url("MOAT_SEARCH_CATALOG_URL", CATALOG_URL_DEFAULT, &url);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, s->consumer, "catalog", url,
                                    srch_catalog_event_types, srch_apply_event,
                                    s);
    return rc;
}

static int social_subscribe(struct moat_service *svc, struct srch_service *s)
{
    const char *posts, *profiles;
    int rc = moat_env_url("MOAT_SEARCH_POSTS_URL", POSTS_URL_DEFAULT, &posts);
    if (rc == MOAT_OK)
        rc = moat_env_url("MOAT_SEARCH_PROFILES_URL", PROFILES_URL_DEFAULT,
                          &profiles);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, s->consumer, "posts", posts,
                                    soc_posts_event_types, soc_apply_posts, s);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, s->consumer, "profiles", profiles,
                                    soc_profiles_event_types,
                                    soc_apply_profiles, s);
    return rc;
}

static const struct srch_index indexes[] = {
    {
        .name = "catalog",
        .migrations = srch_store_migrations,
        .subscribe = catalog_subscribe,
        .routes = srch_routes_register,
        .reset = srch_store_reset,
        .compare = srch_store_compare,
    },
    {
        .name = "social",
        .migrations = soc_store_migrations,
        .subscribe = social_subscribe,
        .routes = soc_routes_register,
        .reset = soc_store_reset,
        .compare = soc_store_compare,
    },
};

static const struct srch_index *index_named(const char *name)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(indexes); i++)
        if (strcmp(indexes[i].name, name) == 0)
            return &indexes[i];
    return NULL;
}

/* ---- the view, as the consumer's replay sees it ---- */

static int view_reset(struct moat_db *db, void *arg)
{
    struct srch_service *s = arg;
    return s->index->reset(db);
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    struct srch_service *s = arg;
    return s->index->compare(live, scratch, diffs, VERIFY_MAX_DIFFS);
}

#ifdef MOAT_TEST_HOOKS
/* GET /_test/applications (test builds, every index): how many events
 * took effect, and the most times one did. */
static void handle_test_applications(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    int64_t events = 0, max = 0;
    if (srch_store_applications(s->db, &events, &max) != MOAT_OK) {
        moat_req_reply_problem(r, 500, "cannot read apply_log");
        return;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:I, s:I}", "events", (json_int_t)events,
                                  "max_applications", (json_int_t)max));
}
#endif

/* Once the process is confined and listening (moat/service.h). */
static int search_start(struct moat_service *svc)
{
    struct srch_service *s = svc->impl;
    moat_log(MOAT_LOG_INFO, "consuming events", "{s:s}", "index",
             s->index->name);
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
    const char *name = getenv("MOAT_SEARCH_INDEX");

    s->index = index_named(name && name[0] ? name : "catalog");
    if (!s->index) {
        moat_log(MOAT_LOG_ERROR, "MOAT_SEARCH_INDEX names no index",
                 "{s:s, s:s}", "value", name, "known", "catalog, social");
        goto cleanup;
    }
    size_t nmig;
    const struct moat_migration *mig = s->index->migrations(&nmig);
    rc = moat_db_open_migrated(&s->db, svc->cfg.data_dir, SRCH_DB_FILE, NULL,
                               svc->metrics, mig, nmig);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the search database",
                 "{s:s, s:s, s:s}", "data_dir", svc->cfg.data_dir, "index",
                 s->index->name, "error", moat_strerror(rc));
        goto cleanup;
    }

    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc == MOAT_OK)
        rc = s->index->subscribe(svc, s);
    if (rc != MOAT_OK)
        goto cleanup;

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
    rc = s->index->routes(svc->http, s);
#ifdef MOAT_TEST_HOOKS
    if (rc == MOAT_OK)
        rc = moat_http_route(svc->http, MOAT_GET, "/_test/applications",
                             handle_test_applications, s);
#endif
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register search routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_sqlite(svc, s->db);
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
    size_t nmig;
    const struct moat_migration *mig = s->index->migrations(&nmig);
    return moat_db_migrated(s->db, mig, nmig, why);
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
