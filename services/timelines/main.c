/*
 * main.c - the timelines service: every user's home timeline, a read
 * model in its own SQLite database ($MOAT_DATA_DIR/timelines.db) built
 * only from the event feeds of posts and connections (timelines.h).
 *
 * Where to look: events.c for how each event changes the view, store.c
 * for the schema, fan-out and every query, handlers.c for the HTTP API.
 * docs/timelines.md describes the service.
 *
 * Environment (besides moat/service.h's):
 *   MOAT_TIMELINES_POSTS_URL        posts' base URL, for its feed
 *                                   (default http://127.0.0.1:8092)
 *   MOAT_TIMELINES_CONNECTIONS_URL  connections' (default :8090)
 *   MOAT_TIMELINES_FANOUT_MAX       authors with more followers than this
 *                                   are merged in at read time instead of
 *                                   fanned out on write (default 5000)
 *   MOAT_DB_DSN                     a libpq connection string: the view
 *                                   lives in that PostgreSQL database
 *                                   instead of timelines.db (moat/db.h)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>

#include "moat/config.h"
#include "moat/log.h"
#include "moat/service.h"
#include "timelines.h"

/* Differences listed by replay --verify before "... and N more". */
#define VERIFY_MAX_DIFFS 100

static int view_reset(struct moat_db *db, void *arg)
{
    MOAT_UNUSED(arg);
    return tl_store_reset(db);
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    MOAT_UNUSED(arg);
    return tl_store_compare(live, scratch, diffs, VERIFY_MAX_DIFFS);
}

/* In moat/service.h's FREE ORDER. */
static void timelines_free(struct tl_service *s)
{
    if (!s)
        return;
    moat_consumer_free(s->consumer);
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

static int timelines_init(struct moat_service *svc)
{
    struct tl_service *s = moat_xcalloc(1, sizeof(*s));
    const char *posts_url = NULL, *connections_url = NULL;
    int rc = moat_env_int("MOAT_TIMELINES_FANOUT_MAX", TL_FANOUT_MAX_DEFAULT, 0,
                          INT32_MAX, &s->fanout_max);
    if (rc == MOAT_OK)
        rc = moat_env_url("MOAT_TIMELINES_POSTS_URL", "http://127.0.0.1:8092",
                          &posts_url);
    if (rc == MOAT_OK)
        rc = moat_env_url("MOAT_TIMELINES_CONNECTIONS_URL",
                          "http://127.0.0.1:8090", &connections_url);
    if (rc != MOAT_OK)
        goto cleanup;
    rc =
        tl_store_open(&s->db, svc->cfg.data_dir, svc->cfg.db_dsn, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the timelines database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, s->consumer, "posts", posts_url,
                                    tl_posts_event_types, tl_apply_posts, s);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, s->consumer, "connections",
                                    connections_url, tl_connections_event_types,
                                    tl_apply_connections, s);
    if (rc != MOAT_OK)
        goto cleanup;

    size_t nmig;
    const struct moat_migration *mig = tl_store_migrations(&nmig);
    const struct moat_view_ops view = {
        .migrations = mig,
        .nmigrations = nmig,
        .reset = view_reset,
        .compare = view_compare,
        .arg = s,
    };
    rc = moat_consumer_register_admin(s->consumer, svc->http, svc->cfg.data_dir,
                                      &view);
    if (rc == MOAT_OK)
        rc = tl_routes_register(svc->http, s);
    if (rc != MOAT_OK)
        goto cleanup;
    moat_backup_register_sqlite(svc, s->db);
    svc->impl = s;
    s = NULL;
cleanup:
    timelines_free(s);
    return rc;
}

static int timelines_start(struct moat_service *svc)
{
    struct tl_service *s = svc->impl;
    moat_consumer_start(s->consumer);
    return MOAT_OK;
}

static bool timelines_ready(struct moat_service *svc, const char **why)
{
    struct tl_service *s = svc->impl;
    if (!s) {
        *why = "not initialised";
        return false;
    }
    return tl_store_ready(s->db, why);
}

static void timelines_release(struct moat_service *svc)
{
    timelines_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def timelines_def = {
    .name = "timelines",
    .default_port = 8094,
    .needs_data_dir = true,
    .init = timelines_init,
    .start = timelines_start,
    .ready = timelines_ready,
    .release = timelines_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&timelines_def, argc, argv);
}
