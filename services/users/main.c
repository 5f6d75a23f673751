/*
 * main.c - the users service: accounts, credentials and profiles in its
 * own SQLite database ($MOAT_DATA_DIR/users.db; or the PostgreSQL database
 * MOAT_DB_DSN names) with the personal fields encrypted, served at
 * /v1/users, /v1/auth and /v1/admin/keys.
 *
 * Where to look: users.h for the map of the files, handlers.c and
 * tokens.c for the API, store.c for the schema and the sealing,
 * docs/users.md for the API and its security model.
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/db.h"
#include "moat/jwt.h"
#include "moat/keys.h"
#include "moat/events.h"
#include "moat/log.h"
#include "moat/service.h"
#include "users.h"

#define LIMITER_MAX_KEYS 100000 /* buckets per limiter (LRU beyond) */

static int load_config(struct usr_config *c)
{
    static const struct {
        const char *name;
        int64_t def, min, max;
        size_t offset;
    } vars[] = {
        {"MOAT_USERS_ACCESS_TTL_S", 900, 30, 86400,
         offsetof(struct usr_config, access_ttl_s)},
        {"MOAT_USERS_REFRESH_TTL_S", 30 * 86400, 60, 365 * 86400,
         offsetof(struct usr_config, refresh_ttl_s)},
        {"MOAT_USERS_LOGIN_MAX_FAILURES", 5, 1, 1000,
         offsetof(struct usr_config, login_max_failures)},
        {"MOAT_USERS_LOGIN_WINDOW_S", 900, 1, 86400,
         offsetof(struct usr_config, login_window_s)},
        {"MOAT_USERS_LOGIN_PER_IP_PER_MIN", 30, 1, 100000,
         offsetof(struct usr_config, login_per_ip_per_min)},
        {"MOAT_USERS_HASH_THREADS", 2, 1, 8,
         offsetof(struct usr_config, hash_threads)},
        {"MOAT_USERS_HASH_QUEUE_MAX", 64, 1, MOAT_WORK_MAX_QUEUE,
         offsetof(struct usr_config, hash_queue_max)},
        {"MOAT_USERS_REKEY_BATCH", 100, 1, 10000,
         offsetof(struct usr_config, rekey_batch)},
        {"MOAT_USERS_REKEY_PAUSE_MS", 0, 0, 60000,
         offsetof(struct usr_config, rekey_pause_ms)},
    };
    int rc = MOAT_OK;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(vars); i++) {
        int64_t *dst = (int64_t *)((char *)c + vars[i].offset);
        if (moat_env_int(vars[i].name, vars[i].def, vars[i].min, vars[i].max,
                         dst) != MOAT_OK)
            rc = MOAT_EINVAL; /* logged by moat_env_int */
    }
    return rc;
}

static int load_jwt_key(struct usr_service *usr)
{
    const char *b64 = moat_env_str("MOAT_JWT_SECRET", NULL);
    if (!b64) {
        moat_log(MOAT_LOG_ERROR, "MOAT_JWT_SECRET is not set", "{s:s}", "hint",
                 "base64 of at least 32 random bytes, shared with the "
                 "gateway (moat up generates it)");
        return MOAT_EINVAL;
    }
    if (moat_base64_decode(b64, usr->jwt_key, sizeof(usr->jwt_key),
                           &usr->jwt_keylen) != MOAT_OK ||
        usr->jwt_keylen < MOAT_JWT_MIN_KEY) {
        moat_log(MOAT_LOG_ERROR, "MOAT_JWT_SECRET is not valid", "{s:s}",
                 "hint", "base64 of 32 to 256 random bytes");
        return MOAT_EINVAL;
    }
    return MOAT_OK;
}

/*
 * MOAT_USERS_ADMIN_EMAIL + MOAT_USERS_ADMIN_PASSWORD: create that admin
 * when no account has the email. Hashing on this thread is fine: nothing
 * is served yet. An existing account is left exactly as it is.
 */
static int bootstrap_admin(struct usr_service *usr)
{
    const char *email_env = moat_env_str("MOAT_USERS_ADMIN_EMAIL", NULL);
    const char *pw_env = moat_env_str("MOAT_USERS_ADMIN_PASSWORD", NULL);
    const char *name_env =
        moat_env_str("MOAT_USERS_ADMIN_NAME", "Administrator");
    struct moat_validation v;
    struct usr_user u = {0};
    char *email = NULL;
    const char *pw = NULL, *name = NULL;
    char bidx[MOAT_BLIND_INDEX_HEX + 1], existing[USR_ID_LEN + 1];
    int rc = MOAT_OK;

    if (!email_env)
        return MOAT_OK;
    moat_validation_init(&v);
    json_t *obj = json_pack("{s:s, s:s?, s:s}", "email", email_env, "password",
                            pw_env, "display_name", name_env);
    if (!obj) {
        rc = MOAT_EINVAL;
        goto out;
    }
    usr_v_email(&v, obj, "email", true, &email);
    usr_v_password(&v, obj, "password", true, &pw);
    usr_v_display_name(&v, obj, "display_name", true, &name);
    if (!moat_validation_ok(&v)) {
        char *errs = json_dumps(v.errors, JSON_COMPACT);
        moat_log(MOAT_LOG_ERROR,
                 "MOAT_USERS_ADMIN_EMAIL / _PASSWORD / _NAME are not valid",
                 "{s:s}", "errors", errs ? errs : "");
        free(errs);
        rc = MOAT_EINVAL;
        goto out;
    }
    usr_email_bidx(usr->kr, email, bidx);
    rc = usr_store_id_by_email(usr->store, bidx, existing);
    if (rc == MOAT_OK) {
        moat_log(MOAT_LOG_INFO, "bootstrap admin account exists", "{s:s}", "id",
                 existing);
        goto out;
    }
    if (rc != MOAT_ENOTFOUND)
        goto out;

    usr_id_new(u.id);
    u.email = email;
    email = NULL;
    u.display_name = moat_xstrdup(name);
    snprintf(u.role, sizeof(u.role), "%s", USR_ROLE_ADMIN);
    u.created_ms = u.updated_ms = moat_wall_ms();
    rc = moat_password_hash(pw, u.password_hash);
    if (rc == MOAT_OK)
        rc = usr_store_create(usr->store, &u, bidx);
    if (rc != MOAT_OK)
        goto out;
    json_t *detail = json_pack("{s:s, s:s}", "role", u.role, "via",
                               "MOAT_USERS_ADMIN_EMAIL");
    usr_audit(usr, NULL, "user.register", u.id, "ok", detail);
    json_decref(detail);
    moat_log(MOAT_LOG_INFO, "bootstrap admin account created", "{s:s}", "id",
             u.id);

out:
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot bootstrap the admin account", "{s:s}",
                 "error", moat_strerror(rc));
    usr_user_release(&u);
    moat_free_secret(email);
    usr_json_release_secret(obj);
    moat_validation_release(&v);
    return rc;
}

static void users_free(struct usr_service *usr)
{
    if (!usr)
        return;
    /* moat/service.h's FREE ORDER: the pool first, its last continuations
     * still use the store and the audit log (and reply 503 to requests it
     * never ran). */
    moat_work_pool_free(usr->pool);
    moat_keys_free(usr->keys);
    moat_audit_close(usr->audit);
    usr_store_close(usr->store);
    moat_keyring_free(usr->kr);
    moat_ratelimit_free(usr->rl_ip);
    moat_ratelimit_free(usr->rl_acct);
    sodium_memzero(usr->jwt_key, sizeof(usr->jwt_key));
    free(usr);
}

static int users_init(struct moat_service *svc)
{
    struct usr_service *usr = moat_xcalloc(1, sizeof(*usr));
    const char *dir = svc->cfg.data_dir;
    char *path = NULL;
    const char *step = "configuration";
    usr->svc = svc;

    int rc = load_config(&usr->cfg);
    if (rc == MOAT_OK)
        rc = load_jwt_key(usr);
    if (rc != MOAT_OK)
        goto out;

    step = "keyring";
    path = moat_xasprintf("%s/keys", dir);
    rc = moat_keyring_load(&usr->kr, "MOAT_USERS_KEYRING", path);
    if (rc != MOAT_OK)
        goto out;

    step = "database";
    /* MOAT_DB_DSN: the store is that PostgreSQL database (moat up sets it
     * for "engine": "postgres"); unset, data_dir/users.db. */
    rc = usr_store_open(&usr->store, svc->base, dir, svc->cfg.db_dsn, usr->kr,
                        svc->metrics);
    if (rc == MOAT_OK)
        rc = moat_feed_register(usr_store_outbox(usr->store), svc->http);
    if (rc != MOAT_OK)
        goto out;

    step = "audit log";
    free(path);
    path = moat_xasprintf("%s/audit.log", dir);
    rc = moat_audit_open(&usr->audit, path);
    if (rc != MOAT_OK)
        goto out;

    step = "work pool";
    rc = moat_work_pool_new(&usr->pool, svc->base,
                            (unsigned)usr->cfg.hash_threads);
    if (rc != MOAT_OK)
        goto out;

    usr->rl_ip = moat_ratelimit_new(
        (double)usr->cfg.login_per_ip_per_min,
        (double)usr->cfg.login_per_ip_per_min / 60.0, LIMITER_MAX_KEYS);
    usr->rl_acct = moat_ratelimit_new((double)usr->cfg.login_max_failures,
                                      (double)usr->cfg.login_max_failures /
                                          (double)usr->cfg.login_window_s,
                                      LIMITER_MAX_KEYS);

    step = "dummy password hash";
    uint8_t rnd[24];
    char dummy[2 * sizeof(rnd) + 1];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(dummy, rnd, sizeof(rnd));
    rc = moat_password_hash(dummy, usr->dummy_hash);
    if (rc != MOAT_OK)
        goto out;

    step = "admin bootstrap";
    rc = bootstrap_admin(usr);
    if (rc != MOAT_OK)
        goto out;

    step = "routes";
    rc = usr_routes_register(usr);
    if (rc == MOAT_OK)
        rc = usr_auth_routes_register(usr);
    if (rc == MOAT_OK)
        rc = usr_keys_routes_register(usr);
    if (rc != MOAT_OK)
        goto out;

    /* A PostgreSQL store is backed up by its cluster, not by the skeleton
     * (docs/operations.md). */
    if (moat_db_engine(usr_store_db(usr->store)) == MOAT_DB_SQLITE)
        moat_backup_register_sqlite(svc, usr_store_db(usr->store));
    svc->impl = usr;
    usr = NULL;

out:
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "users service cannot start", "{s:s, s:s}",
                 "step", step, "error", moat_strerror(rc));
    users_free(usr);
    free(path);
    return rc;
}

static bool users_ready(struct moat_service *svc, const char **why)
{
    struct usr_service *usr = svc->impl;
    if (!usr) {
        *why = "not initialised";
        return false;
    }
    return usr_store_ready(usr->store, why);
}

static void users_release(struct moat_service *svc)
{
    users_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def users_def = {
    .name = "users",
    .default_port = 8082,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = users_init,
    .ready = users_ready,
    .release = users_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&users_def, argc, argv);
}
