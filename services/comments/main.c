/*
 * main.c - the comments service (the messaging application's Commenting):
 * comments on posts and on conversations' messages, threads one level
 * deep, moderation (pending -> approved | rejected), in comments' own
 * SQLite database ($MOAT_DATA_DIR/comments.db), served at /v1/comments
 * and /v1/moderation (docs/comments.md); its events (CommentPosted,
 * CommentApproved, CommentRejected, CommentRemoved) are served from its
 * outbox at /v1/events, and users' moderation actions are applied from
 * users' feed.
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_COMMENTS_USERS_URL      users' base URL, for its feed
 *                                (default http://127.0.0.1:8082)
 *   MOAT_COMMENTS_POSTS_URL      posts' (default :8092)
 *   MOAT_COMMENTS_MESSAGING_URL  messaging's (default :8095)
 *   MOAT_COMMENTS_UPSTREAM_TIMEOUT_MS
 *                                bound of a check on posts or messaging
 *                                (default 2000)
 *   MOAT_OUTBOX_RETENTION_S      keep events this long (default 7 days;
 *                                0 = forever); the newest 10000 always stay
 *   MOAT_DB_DSN                  a libpq connection string: the store lives
 *                                in that PostgreSQL database instead of
 *                                comments.db (moat/db.h)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>

#include "comments.h"
#include "moat/config.h"
#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/service.h"

#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000

/* In moat/service.h's FREE ORDER. */
static void comments_free(struct cmt_service *cs)
{
    if (!cs)
        return;
    moat_consumer_free(cs->consumer);
    moat_http_client_free(cs->upstream); /* answers pending checks */
    cmt_store_close(cs->store);
    free(cs);
}

static int comments_init(struct moat_service *svc)
{
    struct cmt_service *cs = moat_xcalloc(1, sizeof(*cs));
    cs->svc = svc;
    const char *users_url = NULL;
    int64_t retention, timeout;
    int rc = moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S,
                          0, OUTBOX_RETENTION_MAX_S, &retention);
    if (rc == MOAT_OK)
        rc = moat_env_int("MOAT_COMMENTS_UPSTREAM_TIMEOUT_MS", 2000, 10, 60000,
                          &timeout);
    if (rc == MOAT_OK)
        rc = moat_env_url("MOAT_COMMENTS_USERS_URL", "http://127.0.0.1:8082",
                          &users_url);
    if (rc == MOAT_OK)
        rc = moat_env_url("MOAT_COMMENTS_POSTS_URL", "http://127.0.0.1:8092",
                          &cs->posts_url);
    if (rc == MOAT_OK)
        rc = moat_env_url("MOAT_COMMENTS_MESSAGING_URL",
                          "http://127.0.0.1:8095", &cs->messaging_url);
    if (rc != MOAT_OK)
        goto cleanup; /* logged by moat_env_* */
    cs->upstream_timeout_ms = (long)timeout;
    const struct moat_outbox_options oopts = {
        .retention_s = retention, .retention_min_keep = OUTBOX_KEEP_MIN};
    rc = cmt_store_open(&cs->store, svc->cfg.data_dir, svc->cfg.db_dsn,
                        svc->base, svc->cfg.name, &oopts, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the comments database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    const struct moat_http_client_options uopts = {.timeout_ms = timeout};
    rc = moat_http_client_new(&cs->upstream, svc->base, &uopts);
    if (rc == MOAT_OK)
        rc = moat_consumer_new(&cs->consumer, svc->base,
                               cmt_store_db(cs->store), svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    /* Applying a removal appends CommentRemoved: wake feed readers. */
    moat_consumer_set_outbox(cs->consumer, cmt_store_outbox(cs->store));
    rc = moat_service_subscribe(svc, cs->consumer, "users", users_url,
                                cmt_users_event_types, cmt_apply_users, cs);
    if (rc == MOAT_OK)
        rc = moat_consumer_register_admin(cs->consumer, svc->http, NULL, NULL);
    if (rc == MOAT_OK)
        rc = cmt_routes_register(svc->http, cs);
    if (rc == MOAT_OK)
        rc = moat_feed_register(cmt_store_outbox(cs->store), svc->http);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot start comments", "{s:s}", "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_sqlite(svc, cmt_store_db(cs->store));
    svc->impl = cs;
    cs = NULL;

cleanup:
    comments_free(cs);
    return rc;
}

static int comments_start(struct moat_service *svc)
{
    struct cmt_service *cs = svc->impl;
    moat_consumer_start(cs->consumer);
    return MOAT_OK;
}

static bool comments_ready(struct moat_service *svc, const char **why)
{
    struct cmt_service *cs = svc->impl;
    if (!cs) {
        *why = "not initialised";
        return false;
    }
    return cmt_store_ready(cs->store, why);
}

static void comments_release(struct moat_service *svc)
{
    comments_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def comments_def = {
    .name = "comments",
    .default_port = 8096,
    .needs_data_dir = true,
    .init = comments_init,
    .start = comments_start,
    .ready = comments_ready,
    .release = comments_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&comments_def, argc, argv);
}
