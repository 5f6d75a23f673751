/*
 * main.c - the posts service (the social network's content): short posts
 * by end users in posts' own SQLite database ($MOAT_DATA_DIR/posts.db),
 * served at /v1/posts and /v1/users/{id}/posts (docs/posts.md), and their
 * events (PostCreated, PostDeleted) served from its outbox at /v1/events.
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_OUTBOX_RETENTION_S   keep events this long (default 7 days;
 *                             0 = forever); the newest 10000 always stay
 *   MOAT_DB_DSN               a libpq connection string: the store lives
 *                             in that PostgreSQL database instead of
 *                             posts.db (moat/db.h)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>

#include "moat/config.h"
#include "moat/events.h"
#include "moat/log.h"
#include "moat/service.h"
#include "posts.h"

#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000

static void posts_free(struct pst_service *ps)
{
    if (!ps)
        return;
    pst_store_close(ps->store);
    free(ps);
}

static int posts_init(struct moat_service *svc)
{
    struct pst_service *ps = moat_xcalloc(1, sizeof(*ps));
    int64_t retention;
    int rc = moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S,
                          0, OUTBOX_RETENTION_MAX_S, &retention);
    if (rc != MOAT_OK)
        goto cleanup; /* logged by moat_env_int */
    const struct moat_outbox_options oopts = {
        .retention_s = retention, .retention_min_keep = OUTBOX_KEEP_MIN};
    rc = pst_store_open(&ps->store, svc->cfg.data_dir, svc->cfg.db_dsn,
                        svc->base, svc->cfg.name, &oopts, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the posts database", "{s:s, s:s}",
                 "data_dir", svc->cfg.data_dir, "error", moat_strerror(rc));
        goto cleanup;
    }
    rc = pst_routes_register(svc->http, ps);
    if (rc == MOAT_OK)
        rc = moat_feed_register(pst_store_outbox(ps->store), svc->http);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register posts routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_sqlite(svc, pst_store_db(ps->store));
    svc->impl = ps;
    ps = NULL;

cleanup:
    posts_free(ps);
    return rc;
}

static bool posts_ready(struct moat_service *svc, const char **why)
{
    struct pst_service *ps = svc->impl;
    if (!ps) {
        *why = "not initialised";
        return false;
    }
    return pst_store_ready(ps->store, why);
}

static void posts_release(struct moat_service *svc)
{
    posts_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def posts_def = {
    .name = "posts",
    .default_port = 8092,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = posts_init,
    .ready = posts_ready,
    .release = posts_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&posts_def, argc, argv);
}
