/*
 * main.c - the messaging service (the messaging application's Messaging,
 * the social network's Chat): direct and group conversations, their
 * messages and read marks in messaging's own SQLite database
 * ($MOAT_DATA_DIR/messaging.db), served at /v1/conversations
 * (docs/messaging.md) with long polls for live delivery, and its events
 * (ConversationCreated, MessageSent, MessageEdited, MessageDeleted,
 * MembersChanged) served from its outbox at /v1/events.
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_OUTBOX_RETENTION_S   keep events this long (default 7 days;
 *                             0 = forever); the newest 10000 always stay
 *   MOAT_MESSAGING_MAX_POLLS  long polls parked at once (default 1024);
 *                             503 beyond
 *   MOAT_DB_DSN               a libpq connection string: the store lives
 *                             in that PostgreSQL database instead of
 *                             messaging.db (moat/db.h)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>

#include "messaging.h"
#include "moat/config.h"
#include "moat/events.h"
#include "moat/log.h"
#include "moat/service.h"

#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000
#define MAX_POLLS_DEFAULT          1024
#define MAX_POLLS_MAX              65536

static void messaging_free(struct msg_service *ms)
{
    if (!ms)
        return;
    msg_live_free(ms->live); /* answers parked polls: needs the store */
    msg_store_close(ms->store);
    free(ms);
}

static int messaging_init(struct moat_service *svc)
{
    struct msg_service *ms = moat_xcalloc(1, sizeof(*ms));
    int64_t retention, max_polls;
    int rc = moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S,
                          0, OUTBOX_RETENTION_MAX_S, &retention);
    if (rc == MOAT_OK)
        rc = moat_env_int("MOAT_MESSAGING_MAX_POLLS", MAX_POLLS_DEFAULT, 1,
                          MAX_POLLS_MAX, &max_polls);
    if (rc != MOAT_OK)
        goto cleanup; /* logged by moat_env_int */
    const struct moat_outbox_options oopts = {
        .retention_s = retention, .retention_min_keep = OUTBOX_KEEP_MIN};
    rc = msg_store_open(&ms->store, svc->cfg.data_dir, svc->cfg.db_dsn,
                        svc->base, svc->cfg.name, &oopts, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the messaging database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    rc = msg_routes_register(svc->http, svc->base, svc->metrics,
                             (unsigned)max_polls, ms);
    if (rc == MOAT_OK)
        rc = moat_feed_register(msg_store_outbox(ms->store), svc->http);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register messaging routes", "{s:s}",
                 "error", moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_sqlite(svc, msg_store_db(ms->store));
    svc->impl = ms;
    ms = NULL;

cleanup:
    messaging_free(ms);
    return rc;
}

static bool messaging_ready(struct moat_service *svc, const char **why)
{
    struct msg_service *ms = svc->impl;
    if (!ms) {
        *why = "not initialised";
        return false;
    }
    return msg_store_ready(ms->store, why);
}

static void messaging_release(struct moat_service *svc)
{
    messaging_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def messaging_def = {
    .name = "messaging",
    .default_port = 8095,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = messaging_init,
    .ready = messaging_ready,
    .release = messaging_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&messaging_def, argc, argv);
}
