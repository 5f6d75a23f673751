/*
 * main.c - the profiles service: one profile per user id (display name,
 * handle, bio, location, avatar URL) in profiles' own SQLite database
 * ($MOAT_DATA_DIR/profiles.db) with the personal fields encrypted, served
 * at /v1/profiles; ProfileUpdated events served from its outbox at
 * /v1/events; users' UserRegistered events consumed from users' feed to
 * create each new user's (empty) profile.
 *
 * Environment (besides moat/service.h's):
 *   MOAT_PROFILES_USERS_URL   users' feed (default http://127.0.0.1:8082)
 *   MOAT_PROFILES_KEYRING     the keyring itself (moat/crypto.h); unset:
 *                             the key file $MOAT_DATA_DIR/keys, created
 *                             mode 0600 at first start
 *   MOAT_OUTBOX_RETENTION_S   keep events this long (default 7 days)
 *   MOAT_DB_DSN               a libpq connection string: the store lives
 *                             in that PostgreSQL database instead of
 *                             profiles.db (moat/db.h)
 *
 * Where to look: handlers.c for the API, profile.c for the field rules,
 * store.c for the schema and the sealing, events.c for users' events,
 * docs/profiles.md for all of it.
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/keys.h"
#include "moat/log.h"
#include "profiles.h"

#define USERS_URL_DEFAULT          "http://127.0.0.1:8082"
#define OUTBOX_RETENTION_DEFAULT_S (7 * 24 * 3600)
#define OUTBOX_RETENTION_MAX_S     (10LL * 365 * 24 * 3600)
#define OUTBOX_KEEP_MIN            10000

/* moat/keys.h's store functions. */
static int rekey_batch(void *arg, uint32_t active, char *after, size_t batch,
                       size_t *resealed, size_t *failed, bool *finished)
{
    struct pro_service *ps = arg;
    return pro_store_rekey_batch(ps->store, active, after, batch, resealed,
                                 failed, finished);
}

static int rows_by_key(void *arg, json_t **out)
{
    struct pro_service *ps = arg;
    return pro_store_rows_by_key(ps->store, out);
}

/* In moat/service.h's FREE ORDER. */
static void profiles_free(struct pro_service *ps)
{
    if (!ps)
        return;
    moat_consumer_free(ps->consumer);
    moat_keys_free(ps->keys);
    pro_store_close(ps->store);
    moat_keyring_free(ps->kr);
    free(ps);
}

static int profiles_init(struct moat_service *svc)
{
    struct pro_service *ps = moat_xcalloc(1, sizeof(*ps));
    const char *step = "configuration";
    char *path = NULL;
    int64_t retention;
    int rc = MOAT_EINVAL;
    ps->svc = svc;
    if (moat_env_url("MOAT_PROFILES_USERS_URL", USERS_URL_DEFAULT,
                     &ps->users_url) != MOAT_OK)
        goto out; /* logged by moat_env_url */
    if (moat_env_int("MOAT_OUTBOX_RETENTION_S", OUTBOX_RETENTION_DEFAULT_S, 0,
                     OUTBOX_RETENTION_MAX_S, &retention) != MOAT_OK)
        goto out; /* logged by moat_env_int */

    step = "keyring";
    path = moat_xasprintf("%s/keys", svc->cfg.data_dir);
    rc = moat_keyring_load(&ps->kr, "MOAT_PROFILES_KEYRING", path);
    if (rc != MOAT_OK)
        goto out;

    step = "database";
    const struct moat_outbox_options oo = {
        .retention_s = retention, .retention_min_keep = OUTBOX_KEEP_MIN};
    rc = pro_store_open(&ps->store, svc->base, svc->cfg.data_dir,
                        svc->cfg.db_dsn, ps->kr, &oo, svc->metrics);
    if (rc != MOAT_OK)
        goto out;

    step = "consumer";
    rc = moat_consumer_new(&ps->consumer, svc->base, pro_store_db(ps->store),
                           svc->metrics);
    if (rc == MOAT_OK)
        rc = moat_service_subscribe(svc, ps->consumer, "users", ps->users_url,
                                    pro_users_events, pro_apply_user_event, ps);
    /* No view: profiles is the source of truth of its rows, so the admin
     * routes offer no replay from scratch. */
    if (rc == MOAT_OK)
        rc = moat_consumer_register_admin(ps->consumer, svc->http,
                                          svc->cfg.data_dir, NULL);
    if (rc != MOAT_OK)
        goto out;

    step = "routes";
    rc = moat_feed_register(pro_store_outbox(ps->store), svc->http);
    if (rc == MOAT_OK)
        rc = pro_routes_register(ps);
    if (rc == MOAT_OK)
        rc = moat_keys_new(
            &ps->keys, svc, ps->kr,
            &(struct moat_keys_store){rekey_batch, rows_by_key, ps},
            &(struct moat_keys_options){.env_name = "MOAT_PROFILES_KEYRING"});
    if (rc != MOAT_OK)
        goto out;

    moat_backup_register_sqlite(svc, pro_store_db(ps->store));
    svc->impl = ps;
    ps = NULL;

out:
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "profiles service cannot start", "{s:s, s:s}",
                 "step", step, "error", moat_strerror(rc));
    profiles_free(ps);
    free(path);
    return rc;
}

static int profiles_start(struct moat_service *svc)
{
    struct pro_service *ps = svc->impl;
    moat_log(MOAT_LOG_INFO, "consuming users events", "{s:s}", "feed",
             ps->users_url);
    moat_consumer_start(ps->consumer);
    return MOAT_OK;
}

static bool profiles_ready(struct moat_service *svc, const char **why)
{
    struct pro_service *ps = svc->impl;
    if (!ps) {
        *why = "not initialised";
        return false;
    }
    return pro_store_ready(ps->store, why);
}

static void profiles_release(struct moat_service *svc)
{
    profiles_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def profiles_def = {
    .name = "profiles",
    .default_port = 8091,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = profiles_init,
    .start = profiles_start,
    .ready = profiles_ready,
    .release = profiles_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&profiles_def, argc, argv);
}
