/* store.c - the users service's schema, queries and field sealing (see
 * store.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/users.h"
#include "moat/auth.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/keys.h"
#include "moat/log.h"
#include "store.h"

struct usr_store {
    struct moat_db *db;            /* owned */
    const struct moat_keyring *kr; /* borrowed */
    struct moat_outbox *outbox;    /* owned; UserRegistered, UserUpdated */
};

#define DB_FILE "users.db"

/* Places of the sealed fields: "<table>.<field>:<row id>" is the AEAD
 * associated data, which binds a ciphertext to one row and one column. */
#define AD_EMAIL "users.email"
#define AD_NAME  "users.display_name"

/*
 * Schema migrations: never edit one that has shipped, append a new one.
 *
 * users keeps no plaintext personal data: email_enc and name_enc are
 * sealed text ("s1.<key>.<base64url>"), email_bidx the keyed blind index
 * used for lookups and uniqueness, key_id the data key both seals were
 * made with (what key rotation scans for). WITHOUT ROWID clusters rows by
 * id, the listing order.
 *
 * refresh_tokens stores SHA-256 hashes only. A rotation revokes the old
 * token and points replaced_by at the new one; all tokens issued from one
 * login share a family_id, so presenting a revoked token again can revoke
 * the whole family (the token was stolen and used by someone).
 */
static const struct moat_migration migrations[] = {
    {1, "create users and refresh tokens",
     "CREATE TABLE users (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'usr_'),\n"
     "    email_enc TEXT NOT NULL CHECK (substr(email_enc, 1, 3) = 's1.'),\n"
     "    email_bidx TEXT NOT NULL UNIQUE CHECK (length(email_bidx) = 64),\n"
     "    name_enc TEXT NOT NULL CHECK (substr(name_enc, 1, 3) = 's1.'),\n"
     "    password_hash TEXT NOT NULL,\n"
     "    role TEXT NOT NULL CHECK (role IN ('customer', 'admin')),\n"
     "    key_id INTEGER NOT NULL CHECK (key_id >= 1),\n"
     "    version INTEGER NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    updated_at_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX users_key_id ON users (key_id);\n"
     "CREATE TABLE refresh_tokens (\n"
     "    token_hash TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(token_hash) = 64),\n"
     "    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
     "    family_id TEXT NOT NULL,\n"
     "    expires_at_ms INTEGER NOT NULL,\n"
     "    revoked_at_ms INTEGER,\n"
     "    replaced_by TEXT,\n"
     "    created_at_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);\n"
     "CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);\n",
     /* PostgreSQL: ids compare bytewise (COLLATE "C"), as in SQLite, so
      * that listing and re-keying pages keep their order. */
     "CREATE TABLE users (\n"
     "    id text COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'usr_'),\n"
     "    email_enc text NOT NULL CHECK (substr(email_enc, 1, 3) = 's1.'),\n"
     "    email_bidx text NOT NULL UNIQUE CHECK (length(email_bidx) = 64),\n"
     "    name_enc text NOT NULL CHECK (substr(name_enc, 1, 3) = 's1.'),\n"
     "    password_hash text NOT NULL,\n"
     "    role text NOT NULL CONSTRAINT users_role_check\n"
     "        CHECK (role IN ('customer', 'admin')),\n"
     "    key_id bigint NOT NULL CHECK (key_id >= 1),\n"
     "    version bigint NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms bigint NOT NULL,\n"
     "    updated_at_ms bigint NOT NULL\n"
     ");\n"
     "CREATE INDEX users_key_id ON users (key_id);\n"
     "CREATE TABLE refresh_tokens (\n"
     "    token_hash text NOT NULL PRIMARY KEY\n"
     "        CHECK (length(token_hash) = 64),\n"
     "    user_id text COLLATE \"C\" NOT NULL\n"
     "        REFERENCES users (id) ON DELETE CASCADE,\n"
     "    family_id text NOT NULL,\n"
     "    expires_at_ms bigint NOT NULL,\n"
     "    revoked_at_ms bigint,\n"
     "    replaced_by text,\n"
     "    created_at_ms bigint NOT NULL\n"
     ");\n"
     "CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);\n"
     "CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);\n"},
    {2, "create outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
    /*
     * Permissions: the moderator role, suspension, and moderation actions.
     * A CHECK cannot be altered in SQLite, so users is rebuilt; its child
     * refresh_tokens is copied aside and rebuilt too, because dropping
     * users with foreign keys on would cascade into it.
     */
    {3, "moderator role, suspension, moderation actions",
     "CREATE TABLE users_v3 (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'usr_'),\n"
     "    email_enc TEXT NOT NULL CHECK (substr(email_enc, 1, 3) = 's1.'),\n"
     "    email_bidx TEXT NOT NULL UNIQUE CHECK (length(email_bidx) = 64),\n"
     "    name_enc TEXT NOT NULL CHECK (substr(name_enc, 1, 3) = 's1.'),\n"
     "    password_hash TEXT NOT NULL,\n"
     "    role TEXT NOT NULL\n"
     "        CHECK (role IN ('customer', 'moderator', 'admin')),\n"
     "    key_id INTEGER NOT NULL CHECK (key_id >= 1),\n"
     "    version INTEGER NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    updated_at_ms INTEGER NOT NULL,\n"
     "    suspended INTEGER NOT NULL DEFAULT 0 CHECK (suspended IN (0, 1)),\n"
     "    comment_suspended INTEGER NOT NULL DEFAULT 0\n"
     "        CHECK (comment_suspended IN (0, 1))\n"
     ") STRICT, WITHOUT ROWID;\n"
     "INSERT INTO users_v3 (id, email_enc, email_bidx, name_enc,\n"
     "    password_hash, role, key_id, version, created_at_ms,\n"
     "    updated_at_ms)\n"
     "    SELECT id, email_enc, email_bidx, name_enc, password_hash, role,\n"
     "        key_id, version, created_at_ms, updated_at_ms FROM users;\n"
     "CREATE TABLE refresh_tokens_v2 AS SELECT * FROM refresh_tokens;\n"
     "DROP TABLE refresh_tokens;\n"
     "DROP TABLE users;\n"
     "ALTER TABLE users_v3 RENAME TO users;\n"
     "CREATE INDEX users_key_id ON users (key_id);\n"
     "CREATE TABLE refresh_tokens (\n"
     "    token_hash TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(token_hash) = 64),\n"
     "    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
     "    family_id TEXT NOT NULL,\n"
     "    expires_at_ms INTEGER NOT NULL,\n"
     "    revoked_at_ms INTEGER,\n"
     "    replaced_by TEXT,\n"
     "    created_at_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "INSERT INTO refresh_tokens SELECT token_hash, user_id, family_id,\n"
     "    expires_at_ms, revoked_at_ms, replaced_by, created_at_ms\n"
     "    FROM refresh_tokens_v2;\n"
     "DROP TABLE refresh_tokens_v2;\n"
     "CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);\n"
     "CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);\n"
     "CREATE TABLE moderation_actions (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'mod_'),\n"
     "    action TEXT NOT NULL CHECK (action IN ('remove_comment',\n"
     "        'suspend_commenting', 'restore_commenting')),\n"
     "    comment_id TEXT,\n"
     "    user_id TEXT,\n"
     "    reason TEXT NOT NULL,\n"
     "    requested_by TEXT NOT NULL,\n"
     "    requested_at_ms INTEGER NOT NULL,\n"
     "    seq INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n",
     /* PostgreSQL alters its CHECK in place: no rebuild. */
     "ALTER TABLE users DROP CONSTRAINT users_role_check;\n"
     "ALTER TABLE users ADD CONSTRAINT users_role_check\n"
     "    CHECK (role IN ('customer', 'moderator', 'admin'));\n"
     "ALTER TABLE users ADD COLUMN suspended bigint NOT NULL DEFAULT 0\n"
     "    CHECK (suspended IN (0, 1));\n"
     "ALTER TABLE users ADD COLUMN comment_suspended bigint NOT NULL\n"
     "    DEFAULT 0 CHECK (comment_suspended IN (0, 1));\n"
     "CREATE TABLE moderation_actions (\n"
     "    id text COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'mod_'),\n"
     "    action text NOT NULL CHECK (action IN ('remove_comment',\n"
     "        'suspend_commenting', 'restore_commenting')),\n"
     "    comment_id text,\n"
     "    user_id text,\n"
     "    reason text NOT NULL,\n"
     "    requested_by text NOT NULL,\n"
     "    requested_at_ms bigint NOT NULL,\n"
     "    seq bigint NOT NULL\n"
     ");\n"},
};

int usr_store_open(struct usr_store **out, struct event_base *base,
                   const char *data_dir, const char *dsn,
                   const struct moat_keyring *kr, struct moat_metrics *metrics)
{
    struct usr_store *s = moat_xcalloc(1, sizeof(*s));
    s->kr = kr;
    /* Overwrite deleted content: a ciphertext replaced by re-sealing (or a
     * revoked token's row) does not linger in free pages (SQLite; on
     * PostgreSQL, VACUUM reclaims dead rows). */
    const struct moat_db_options dbo = {.secure_delete = true, .dsn = dsn};
    int rc = moat_db_open_migrated(&s->db, data_dir, DB_FILE, &dbo, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc != MOAT_OK)
        goto cleanup;
    /* Events carry ids and roles only: the outbox lives in this database,
     * which holds no plaintext personal data (docs/users.md). */
    struct moat_outbox_options oo = {.retention_s = 7 * 86400,
                                     .retention_min_keep = 10000};
    rc = moat_outbox_new(&s->outbox, base, s->db, "users", &oo, metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    *out = s;
    s = NULL;

cleanup:
    if (s) {
        if (s->db)
            moat_db_close(s->db);
        free(s);
    }
    return rc;
}

void usr_store_close(struct usr_store *s)
{
    if (!s)
        return;
    moat_outbox_free(s->outbox);
    moat_db_close(s->db);
    free(s);
}

bool usr_store_ready(struct usr_store *s, const char **why)
{
    if (!s || !s->db) {
        *why = "database not open";
        return false;
    }
    int version = moat_db_schema_version(s->db);
    if (version != migrations[MOAT_ARRAY_LEN(migrations) - 1].version) {
        *why = "database migrations not applied";
        return false;
    }
    return true;
}

/* ---- sealing ---- */

static int seal_field(struct usr_store *s, const char *place, const char *id,
                      const char *plaintext, char **out)
{
    char ad[64];
    snprintf(ad, sizeof(ad), "%s:%s", place, id);
    int rc = moat_seal(s->kr, ad, plaintext, strlen(plaintext), out);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot seal a field", "{s:s, s:s, s:s}", "id",
                 id, "field", place, "error", moat_strerror(rc));
    return rc;
}

/*
 * Open a sealed field of row id. Any failure is an integrity failure from
 * the caller's point of view: the row must not be shown. The log names the
 * row and field, never the content.
 */
static int open_field(struct usr_store *s, const char *place, const char *id,
                      const char *sealed, char **out)
{
    char ad[64];
    snprintf(ad, sizeof(ad), "%s:%s", place, id);
    int rc = sealed ? moat_open(s->kr, ad, sealed, out, NULL) : MOAT_EINVAL;
    if (rc == MOAT_OK)
        return MOAT_OK;
    moat_log(MOAT_LOG_ERROR, "stored data failed its integrity check",
             "{s:s, s:s, s:s, s:i}", "id", id, "field", place, "error",
             rc == MOAT_ENOTFOUND ? "data key not in the keyring"
                                  : "does not authenticate for this row",
             "key_id", (int)(sealed ? moat_sealed_key_id(sealed) : 0));
    return USR_EINTEGRITY;
}

/* ---- rows ---- */

#define USER_COLUMNS                                                           \
    "id, email_enc, name_enc, password_hash, role, key_id, version, "          \
    "created_at_ms, updated_at_ms"

static void copy_text(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

/* Fill u from a row of USER_COLUMNS, opening the sealed fields. */
static int row_to_user(struct usr_store *s, struct moat_stmt *stmt,
                       struct usr_user *u)
{
    const char *id = moat_stmt_text(stmt, 0);
    memset(u, 0, sizeof(*u));
    if (!id || strlen(id) != USR_ID_LEN)
        return MOAT_EDB;
    memcpy(u->id, id, USR_ID_LEN + 1);
    int rc = open_field(s, AD_EMAIL, u->id, moat_stmt_text(stmt, 1), &u->email);
    if (rc == MOAT_OK)
        rc = open_field(s, AD_NAME, u->id, moat_stmt_text(stmt, 2),
                        &u->display_name);
    if (rc != MOAT_OK) {
        usr_user_release(u);
        return rc;
    }
    copy_text(u->password_hash, sizeof(u->password_hash),
              moat_stmt_text(stmt, 3));
    copy_text(u->role, sizeof(u->role), moat_stmt_text(stmt, 4));
    u->key_id = (uint32_t)moat_stmt_int64(stmt, 5);
    u->version = moat_stmt_int64(stmt, 6);
    u->created_ms = moat_stmt_int64(stmt, 7);
    u->updated_ms = moat_stmt_int64(stmt, 8);
    return MOAT_OK;
}

/* A taken email (or id) is a conflict; any other constraint means our own
 * validation let something through: a bug, not the client's fault. */
static int write_error(struct usr_store *s, int step_rc)
{
    /* Extended codes on both engines (moat/db.h); the statement's own
     * failure was logged with the engine's message. */
    if (step_rc == SQLITE_CONSTRAINT_UNIQUE ||
        step_rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return MOAT_ECONFLICT;
    if ((step_rc & 0xff) == SQLITE_CONSTRAINT) {
        moat_log(MOAT_LOG_ERROR, "users constraint failed", "{s:i}",
                 "sqlite_code", step_rc);
        return MOAT_EDB;
    }
    return moat_db_error(s->db, step_rc);
}

/* Run a statement that returns no rows; resets it. */
static int step_done(struct usr_store *s, struct moat_stmt *stmt)
{
    int step = moat_stmt_step(stmt);
    int rc = step == SQLITE_DONE ? MOAT_OK : write_error(s, step);
    moat_stmt_reset(stmt);
    return rc;
}

int usr_store_create(struct usr_store *s, struct usr_user *u,
                     const char *email_bidx)
{
    char *email_enc = NULL, *name_enc = NULL;
    int rc = seal_field(s, AD_EMAIL, u->id, u->email, &email_enc);
    if (rc == MOAT_OK)
        rc = seal_field(s, AD_NAME, u->id, u->display_name, &name_enc);
    if (rc != MOAT_OK)
        goto out;
    rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        goto out;

    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "user_insert",
        "INSERT INTO users (id, email_enc, email_bidx, name_enc, "
        "password_hash, role, key_id, version, created_at_ms, updated_at_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9)");
    if (!stmt) {
        rc = MOAT_EDB;
        goto out;
    }
    uint32_t key_id = moat_sealed_key_id(email_enc);
    moat_stmt_bind_text(stmt, 1, u->id);
    moat_stmt_bind_text(stmt, 2, email_enc);
    moat_stmt_bind_text(stmt, 3, email_bidx);
    moat_stmt_bind_text(stmt, 4, name_enc);
    moat_stmt_bind_text(stmt, 5, u->password_hash);
    moat_stmt_bind_text(stmt, 6, u->role);
    moat_stmt_bind_int64(stmt, 7, key_id);
    moat_stmt_bind_int64(stmt, 8, u->created_ms);
    moat_stmt_bind_int64(stmt, 9, u->updated_ms);
    rc = step_done(s, stmt);
    if (rc != MOAT_OK)
        goto out;

    /* The account and its event commit or vanish together (docs/design.md
     * invariant 2). No plaintext personal data in the event. */
    json_t *ev = json_pack("{s:s, s:s, s:I, s:I}", "id", u->id, "role", u->role,
                           "version", (json_int_t)1, "created_at",
                           (json_int_t)(u->created_ms / 1000));
    rc = moat_outbox_append(s->outbox, USERS_USER_REGISTERED, u->id,
                            USERS_USER_SCHEMA, ev, NULL);
    json_decref(ev);
    if (rc != MOAT_OK)
        goto out;

    rc = moat_db_commit(s->db);
    if (rc == MOAT_OK) {
        u->version = 1;
        u->key_id = key_id;
        moat_outbox_committed(s->outbox);
    }

out:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    free(email_enc);
    free(name_enc);
    return rc;
}

int usr_store_get(struct usr_store *s, const char *id, struct usr_user *out)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "user_get", "SELECT " USER_COLUMNS " FROM users WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, id);
    int step = moat_stmt_step(stmt);
    int rc;
    if (step == SQLITE_ROW)
        rc = row_to_user(s, stmt, out);
    else if (step == SQLITE_DONE)
        rc = MOAT_ENOTFOUND;
    else
        rc = moat_db_error(s->db, step);
    /* Reset at once: an unfinished SELECT pins a WAL read snapshot. */
    moat_stmt_reset(stmt);
    return rc;
}

static int cred_query(struct usr_store *s, const char *name, const char *sql,
                      const char *key, struct usr_cred *out)
{
    struct moat_stmt *stmt = moat_db_prepare(s->db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, key);
    int step = moat_stmt_step(stmt);
    int rc;
    memset(out, 0, sizeof(*out));
    if (step == SQLITE_ROW) {
        copy_text(out->id, sizeof(out->id), moat_stmt_text(stmt, 0));
        copy_text(out->role, sizeof(out->role), moat_stmt_text(stmt, 1));
        copy_text(out->password_hash, sizeof(out->password_hash),
                  moat_stmt_text(stmt, 2));
        out->suspended = moat_stmt_int64(stmt, 3) != 0;
        out->comment_suspended = moat_stmt_int64(stmt, 4) != 0;
        rc = MOAT_OK;
    } else if (step == SQLITE_DONE) {
        rc = MOAT_ENOTFOUND;
    } else {
        rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int usr_store_cred_by_email(struct usr_store *s, const char *email_bidx,
                            struct usr_cred *out)
{
    return cred_query(s, "user_cred_by_email",
                      "SELECT id, role, password_hash, suspended, "
                      "comment_suspended FROM users WHERE email_bidx = ?1",
                      email_bidx, out);
}

int usr_store_cred_by_id(struct usr_store *s, const char *id,
                         struct usr_cred *out)
{
    return cred_query(s, "user_cred_by_id",
                      "SELECT id, role, password_hash, suspended, "
                      "comment_suspended FROM users WHERE id = ?1",
                      id, out);
}

int usr_store_id_by_email(struct usr_store *s, const char *email_bidx,
                          char id[USR_ID_LEN + 1])
{
    struct usr_cred c;
    int rc = usr_store_cred_by_email(s, email_bidx, &c);
    if (rc == MOAT_OK)
        memcpy(id, c.id, USR_ID_LEN + 1);
    return rc;
}

/* Inside a transaction: tell a missing user from a stale version. */
static int current_version(struct usr_store *s, const char *id,
                           int64_t *version)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "user_version", "SELECT version FROM users WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, id);
    int step = moat_stmt_step(stmt);
    int rc;
    if (step == SQLITE_ROW) {
        *version = moat_stmt_int64(stmt, 0);
        rc = MOAT_OK;
    } else if (step == SQLITE_DONE) {
        rc = MOAT_ENOTFOUND;
    } else {
        rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

/* Inside the caller's transaction: SessionsEnded (contracts/users.h). */
static int append_sessions_ended(struct usr_store *s, const char *user_id,
                                 const char *sid, int64_t now_ms,
                                 const char *reason)
{
    json_t *ev =
        json_pack("{s:s, s:s, s:I, s:s}", "id", user_id, "sid", sid, "ended_at",
                  (json_int_t)(now_ms / 1000), "reason", reason);
    int rc = moat_outbox_append(s->outbox, USERS_SESSIONS_ENDED, user_id,
                                USERS_SESSION_SCHEMA, ev, NULL);
    json_decref(ev);
    return rc;
}

static int revoke_user_tokens(struct usr_store *s, const char *user_id,
                              int64_t now_ms)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "tokens_revoke_user",
                        "UPDATE refresh_tokens SET revoked_at_ms = ?2 "
                        "WHERE user_id = ?1 AND revoked_at_ms IS NULL");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, user_id);
    moat_stmt_bind_int64(stmt, 2, now_ms);
    return step_done(s, stmt);
}

/* ---- access ---- */

int usr_store_access_get(struct usr_store *s, const char *id,
                         struct usr_access *out)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "user_access_get",
        "SELECT role, suspended, comment_suspended, version, updated_at_ms "
        "FROM users WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, id);
    int step = moat_stmt_step(stmt);
    int rc;
    memset(out, 0, sizeof(*out));
    if (step == SQLITE_ROW) {
        snprintf(out->id, sizeof(out->id), "%s", id);
        copy_text(out->role, sizeof(out->role), moat_stmt_text(stmt, 0));
        out->suspended = moat_stmt_int64(stmt, 1) != 0;
        out->comment_suspended = moat_stmt_int64(stmt, 2) != 0;
        out->version = moat_stmt_int64(stmt, 3);
        out->updated_ms = moat_stmt_int64(stmt, 4);
        rc = MOAT_OK;
    } else if (step == SQLITE_DONE) {
        rc = MOAT_ENOTFOUND;
    } else {
        rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

static json_t *perms_json(unsigned perms)
{
    json_t *list = json_array();
    for (unsigned f = 1; f <= MOAT_PERM_ALL; f <<= 1)
        if (perms & f)
            json_array_append_new(list, json_string(moat_perm_name(f)));
    return list;
}

json_t *usr_access_json(const struct usr_access *a)
{
    return json_pack(
        "{s:s, s:s, s:b, s:b, s:o, s:I, s:I}", "id", a->id, "role", a->role,
        "suspended", a->suspended, "comment_suspended", a->comment_suspended,
        "perms",
        perms_json(moat_perms_for(a->role, a->suspended, a->comment_suspended)),
        "version", (json_int_t)a->version, "updated_at",
        (json_int_t)(a->updated_ms / 1000));
}

/* Inside the caller's transaction: the account event of state a. */
static int append_access_event(struct usr_store *s, const char *type,
                               const struct usr_access *a,
                               const char *changed_by, const char *reason)
{
    json_t *ev = usr_access_json(a);
    json_object_del(ev, "updated_at");
    json_object_set_new(ev, "changed_at",
                        json_integer((json_int_t)(a->updated_ms / 1000)));
    json_object_set_new(ev, "changed_by", json_string(changed_by));
    json_object_set_new(ev, "reason", json_string(reason ? reason : ""));
    int rc = moat_outbox_append(s->outbox, type, a->id, USERS_ACCESS_SCHEMA, ev,
                                NULL);
    json_decref(ev);
    return rc;
}

/* Inside the caller's transaction: apply ch to *a (the current state,
 * updated to the new one) and write it with its event. */
static int access_apply(struct usr_store *s, struct usr_access *a,
                        const struct usr_access_change *ch, int64_t now_ms,
                        bool *changed)
{
    struct usr_access next = *a;
    if (ch->role)
        snprintf(next.role, sizeof(next.role), "%s", ch->role);
    if (ch->suspended >= 0)
        next.suspended = ch->suspended != 0;
    if (ch->comment_suspended >= 0)
        next.comment_suspended = ch->comment_suspended != 0;
    bool role_changed = strcmp(next.role, a->role) != 0;
    bool susp_changed = next.suspended != a->suspended ||
                        next.comment_suspended != a->comment_suspended;
    *changed = role_changed || susp_changed;
    if (!*changed)
        return MOAT_OK;
    next.version = a->version + 1;
    next.updated_ms = now_ms;

    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "user_access_set",
        "UPDATE users SET role = ?2, suspended = ?3, comment_suspended = ?4, "
        "version = ?5, updated_at_ms = ?6 WHERE id = ?1 AND version = ?7");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, next.id);
    moat_stmt_bind_text(stmt, 2, next.role);
    moat_stmt_bind_int64(stmt, 3, next.suspended);
    moat_stmt_bind_int64(stmt, 4, next.comment_suspended);
    moat_stmt_bind_int64(stmt, 5, next.version);
    moat_stmt_bind_int64(stmt, 6, next.updated_ms);
    moat_stmt_bind_int64(stmt, 7, a->version);
    int rc = step_done(s, stmt);
    if (rc != MOAT_OK)
        return rc;
    if (moat_db_changes(s->db) == 0)
        return MOAT_EPRECOND; /* cannot happen inside BEGIN IMMEDIATE */
    /* One event per change, the whole state after it. A suspension set
     * (either kind) is UserSuspended; lifted, UserRestored. */
    const char *type = role_changed ? USERS_ROLE_CHANGED
                       : (next.suspended && !a->suspended) ||
                               (next.comment_suspended && !a->comment_suspended)
                           ? USERS_USER_SUSPENDED
                           : USERS_USER_RESTORED;
    rc = append_access_event(s, type, &next, ch->changed_by, ch->reason);
    if (rc == MOAT_OK && role_changed && susp_changed)
        rc = append_access_event(s,
                                 next.suspended || next.comment_suspended
                                     ? USERS_USER_SUSPENDED
                                     : USERS_USER_RESTORED,
                                 &next, ch->changed_by, ch->reason);
    if (rc == MOAT_OK)
        *a = next;
    return rc;
}

int usr_store_access_change(struct usr_store *s, const char *id,
                            const struct usr_access_change *ch, int64_t now_ms,
                            struct usr_access *out, bool *changed)
{
    *changed = false;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    rc = usr_store_access_get(s, id, out);
    if (rc == MOAT_OK)
        rc = access_apply(s, out, ch, now_ms, changed);
    if (rc == MOAT_OK && *changed) {
        rc = moat_db_commit(s->db);
        if (rc == MOAT_OK)
            moat_outbox_committed(s->outbox);
        return rc;
    }
    moat_db_rollback(s->db);
    return rc;
}

int usr_store_replace(struct usr_store *s, struct usr_user *u,
                      int64_t expect_version, const char *email_bidx,
                      bool revoke_tokens, int64_t now_ms,
                      const char *changed_by)
{
    struct usr_access before;
    char *email_enc = NULL, *name_enc = NULL;
    int rc = seal_field(s, AD_EMAIL, u->id, u->email, &email_enc);
    if (rc == MOAT_OK)
        rc = seal_field(s, AD_NAME, u->id, u->display_name, &name_enc);
    if (rc != MOAT_OK)
        goto out;
    rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        goto out;
    rc = usr_store_access_get(s, u->id, &before);
    if (rc != MOAT_OK)
        goto out;

    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "user_replace",
        "UPDATE users SET email_enc = ?2, email_bidx = ?3, name_enc = ?4, "
        "password_hash = ?5, role = ?6, key_id = ?7, version = version + 1, "
        "updated_at_ms = ?8 WHERE id = ?1 AND version = ?9");
    if (!stmt) {
        rc = MOAT_EDB;
        goto out;
    }
    uint32_t key_id = moat_sealed_key_id(email_enc);
    moat_stmt_bind_text(stmt, 1, u->id);
    moat_stmt_bind_text(stmt, 2, email_enc);
    moat_stmt_bind_text(stmt, 3, email_bidx);
    moat_stmt_bind_text(stmt, 4, name_enc);
    moat_stmt_bind_text(stmt, 5, u->password_hash);
    moat_stmt_bind_text(stmt, 6, u->role);
    moat_stmt_bind_int64(stmt, 7, key_id);
    moat_stmt_bind_int64(stmt, 8, now_ms);
    moat_stmt_bind_int64(stmt, 9, expect_version);
    rc = step_done(s, stmt);
    if (rc != MOAT_OK)
        goto out;
    if (moat_db_changes(s->db) == 0) {
        int64_t v;
        rc = current_version(s, u->id, &v);
        if (rc == MOAT_OK)
            rc = MOAT_EPRECOND;
        goto out;
    }
    if (revoke_tokens) {
        rc = revoke_user_tokens(s, u->id, now_ms);
        if (rc == MOAT_OK)
            rc =
                append_sessions_ended(s, u->id, "", now_ms, "password_changed");
        if (rc != MOAT_OK)
            goto out;
    }

    /* Same transaction as the change (docs/design.md invariant 2). Consumers
     * that need the new name or email read it through the API, which
     * authorises and audits the read. */
    json_t *ev = json_pack("{s:s, s:s, s:I, s:I}", "id", u->id, "role", u->role,
                           "version", (json_int_t)(expect_version + 1),
                           "updated_at", (json_int_t)(now_ms / 1000));
    rc = moat_outbox_append(s->outbox, USERS_USER_UPDATED, u->id,
                            USERS_USER_SCHEMA, ev, NULL);
    json_decref(ev);
    if (rc == MOAT_OK && strcmp(before.role, u->role) != 0) {
        struct usr_access after = before;
        snprintf(after.role, sizeof(after.role), "%s", u->role);
        after.version = expect_version + 1;
        after.updated_ms = now_ms;
        rc = append_access_event(s, USERS_ROLE_CHANGED, &after, changed_by, "");
    }
    if (rc != MOAT_OK)
        goto out;

    rc = moat_db_commit(s->db);
    if (rc == MOAT_OK) {
        u->version = expect_version + 1;
        u->updated_ms = now_ms;
        u->key_id = key_id;
        moat_outbox_committed(s->outbox);
    }

out:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    free(email_enc);
    free(name_enc);
    return rc;
}

int usr_store_list(struct usr_store *s, const char *after_id, size_t limit,
                   struct usr_user **items, size_t *n)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "user_list",
        "SELECT " USER_COLUMNS " FROM users WHERE id > ?1 ORDER BY id "
        "LIMIT ?2");
    *items = NULL;
    *n = 0;
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, after_id ? after_id : "");
    moat_stmt_bind_int64(stmt, 2, (int64_t)limit);
    struct usr_user *list = moat_xcalloc(limit ? limit : 1, sizeof(*list));
    size_t count = 0;
    int rc = MOAT_OK;
    for (;;) {
        int step = moat_stmt_step(stmt);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW) {
            rc = moat_db_error(s->db, step);
            break;
        }
        if (count == limit)
            break;
        rc = row_to_user(s, stmt, &list[count]);
        if (rc != MOAT_OK)
            break;
        count++;
    }
    moat_stmt_reset(stmt);
    if (rc != MOAT_OK) {
        usr_users_free(list, count);
        return rc;
    }
    *items = list;
    *n = count;
    return MOAT_OK;
}

void usr_users_free(struct usr_user *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        usr_user_release(&items[i]);
    free(items);
}

/* ---- refresh tokens ---- */

static int insert_token(struct usr_store *s, const struct usr_token *t,
                        int64_t now_ms)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "token_insert",
        "INSERT INTO refresh_tokens (token_hash, user_id, family_id, "
        "expires_at_ms, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, t->hash);
    moat_stmt_bind_text(stmt, 2, t->user_id);
    moat_stmt_bind_text(stmt, 3, t->family);
    moat_stmt_bind_int64(stmt, 4, t->expires_ms);
    moat_stmt_bind_int64(stmt, 5, now_ms);
    return step_done(s, stmt);
}

int usr_store_token_insert(struct usr_store *s, const struct usr_token *t,
                           int64_t now_ms)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    rc = insert_token(s, t, now_ms);
    if (rc == MOAT_OK)
        rc = moat_db_commit(s->db); /* rolls back itself when it fails */
    else
        moat_db_rollback(s->db);
    return rc;
}

int usr_store_token_get(struct usr_store *s, const char *hash,
                        struct usr_token *out)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "token_get",
                        "SELECT token_hash, user_id, family_id, expires_at_ms, "
                        "coalesce(revoked_at_ms, 0), "
                        "CASE WHEN replaced_by IS NULL THEN 0 ELSE 1 END "
                        "FROM refresh_tokens "
                        "WHERE token_hash = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, hash);
    int step = moat_stmt_step(stmt);
    int rc;
    memset(out, 0, sizeof(*out));
    if (step == SQLITE_ROW) {
        copy_text(out->hash, sizeof(out->hash), moat_stmt_text(stmt, 0));
        copy_text(out->user_id, sizeof(out->user_id), moat_stmt_text(stmt, 1));
        copy_text(out->family, sizeof(out->family), moat_stmt_text(stmt, 2));
        out->expires_ms = moat_stmt_int64(stmt, 3);
        out->revoked_ms = moat_stmt_int64(stmt, 4);
        out->rotated = moat_stmt_int64(stmt, 5) != 0;
        rc = MOAT_OK;
    } else if (step == SQLITE_DONE) {
        rc = MOAT_ENOTFOUND;
    } else {
        rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int usr_store_token_rotate(struct usr_store *s, const char *old_hash,
                           const struct usr_token *next, int64_t now_ms)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "token_revoke_one",
        "UPDATE refresh_tokens SET revoked_at_ms = ?2, replaced_by = ?3 "
        "WHERE token_hash = ?1 AND revoked_at_ms IS NULL");
    if (!stmt) {
        rc = MOAT_EDB;
        goto out;
    }
    moat_stmt_bind_text(stmt, 1, old_hash);
    moat_stmt_bind_int64(stmt, 2, now_ms);
    moat_stmt_bind_text(stmt, 3, next->hash);
    rc = step_done(s, stmt);
    if (rc != MOAT_OK)
        goto out;
    if (moat_db_changes(s->db) != 1) {
        rc = MOAT_EPRECOND;
        goto out;
    }
    rc = insert_token(s, next, now_ms);
    if (rc == MOAT_OK)
        rc = moat_db_commit(s->db);

out:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    return rc;
}

int usr_store_family_revoke(struct usr_store *s, const char *user_id,
                            const char *family, const char *reason,
                            int64_t now_ms, int *count)
{
    int n = 0;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "tokens_revoke_family",
                        "UPDATE refresh_tokens SET revoked_at_ms = ?2 "
                        "WHERE family_id = ?1 AND revoked_at_ms IS NULL");
    if (!stmt) {
        rc = MOAT_EDB;
        goto out;
    }
    moat_stmt_bind_text(stmt, 1, family);
    moat_stmt_bind_int64(stmt, 2, now_ms);
    rc = step_done(s, stmt);
    if (rc != MOAT_OK)
        goto out;
    n = moat_db_changes(s->db);
    if (count)
        *count = n;
    if (n > 0)
        rc = append_sessions_ended(s, user_id, family, now_ms, reason);
    if (rc == MOAT_OK)
        rc = moat_db_commit(s->db);
    if (rc == MOAT_OK && n > 0)
        moat_outbox_committed(s->outbox);

out:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    return rc;
}

int usr_store_tokens_purge(struct usr_store *s, const char *user_id,
                           int64_t now_ms)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "tokens_purge",
        "DELETE FROM refresh_tokens WHERE user_id = ?1 AND expires_at_ms < ?2");
    if (!stmt) {
        rc = MOAT_EDB;
        goto out;
    }
    moat_stmt_bind_text(stmt, 1, user_id);
    moat_stmt_bind_int64(stmt, 2, now_ms);
    rc = step_done(s, stmt);
    if (rc == MOAT_OK)
        rc = moat_db_commit(s->db);

out:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    return rc;
}

/* ---- data keys ---- */

int usr_store_rows_by_key(struct usr_store *s, json_t **out)
{
    return moat_keys_count_sqlite(
        s->db, "users_by_key",
        "SELECT key_id, count(*) FROM users GROUP BY key_id ORDER BY key_id",
        out);
}

/* One row picked for re-sealing. */
struct rekey_row {
    char id[USR_ID_LEN + 1];
    char *email_enc, *name_enc;
};

/* Read the next batch of rows not on active_key into rows. */
static int rekey_select(struct usr_store *s, uint32_t active_key,
                        const char *after, size_t batch, struct rekey_row *rows,
                        size_t *n)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "users_rekey_select",
                        "SELECT id, email_enc, name_enc FROM users "
                        "WHERE id > ?1 AND key_id <> ?2 ORDER BY id LIMIT ?3");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, after);
    moat_stmt_bind_int64(stmt, 2, active_key);
    moat_stmt_bind_int64(stmt, 3, (int64_t)batch);
    int rc = MOAT_OK;
    *n = 0;
    while (*n < batch) {
        int step = moat_stmt_step(stmt);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW) {
            rc = moat_db_error(s->db, step);
            break;
        }
        struct rekey_row *r = &rows[*n];
        copy_text(r->id, sizeof(r->id), moat_stmt_text(stmt, 0));
        const char *e = moat_stmt_text(stmt, 1);
        const char *nm = moat_stmt_text(stmt, 2);
        r->email_enc = moat_xstrdup(e ? e : "");
        r->name_enc = moat_xstrdup(nm ? nm : "");
        (*n)++;
    }
    moat_stmt_reset(stmt);
    return rc;
}

/* Re-seal one row with the active key; USR_EINTEGRITY leaves it alone. */
static int rekey_row(struct usr_store *s, const struct rekey_row *r)
{
    char *email = NULL, *name = NULL, *email_enc = NULL, *name_enc = NULL;
    int rc = open_field(s, AD_EMAIL, r->id, r->email_enc, &email);
    if (rc == MOAT_OK)
        rc = open_field(s, AD_NAME, r->id, r->name_enc, &name);
    if (rc == MOAT_OK)
        rc = seal_field(s, AD_EMAIL, r->id, email, &email_enc);
    if (rc == MOAT_OK)
        rc = seal_field(s, AD_NAME, r->id, name, &name_enc);
    if (rc != MOAT_OK)
        goto out;
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "users_rekey_update",
        "UPDATE users SET email_enc = ?2, name_enc = ?3, key_id = ?4 "
        "WHERE id = ?1");
    if (!stmt) {
        rc = MOAT_EDB;
        goto out;
    }
    moat_stmt_bind_text(stmt, 1, r->id);
    moat_stmt_bind_text(stmt, 2, email_enc);
    moat_stmt_bind_text(stmt, 3, name_enc);
    moat_stmt_bind_int64(stmt, 4, moat_sealed_key_id(email_enc));
    rc = step_done(s, stmt);

out:
    moat_free_secret(email);
    moat_free_secret(name);
    free(email_enc);
    free(name_enc);
    return rc;
}

int usr_store_rekey_batch(struct usr_store *s, uint32_t active_key,
                          char after[USR_ID_LEN + 1], size_t batch,
                          size_t *resealed, size_t *failed, bool *finished)
{
    struct rekey_row *rows = moat_xcalloc(batch ? batch : 1, sizeof(*rows));
    size_t n = 0;
    *resealed = *failed = 0;
    *finished = false;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        goto out;
    /* Read the batch first, then write: no UPDATE while the SELECT that
     * feeds it is still stepping over the same table. */
    rc = rekey_select(s, active_key, after, batch, rows, &n);
    for (size_t i = 0; rc == MOAT_OK && i < n; i++) {
        int one = rekey_row(s, &rows[i]);
        if (one == USR_EINTEGRITY)
            (*failed)++;
        else if (one == MOAT_OK)
            (*resealed)++;
        else
            rc = one;
    }
    if (rc == MOAT_OK)
        rc = moat_db_commit(s->db);
    if (rc == MOAT_OK) {
        if (n > 0)
            memcpy(after, rows[n - 1].id, USR_ID_LEN + 1);
        *finished = n < batch;
    } else {
        *resealed = *failed = 0;
    }

out:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    for (size_t i = 0; i < n; i++) {
        free(rows[i].email_enc);
        free(rows[i].name_enc);
    }
    free(rows);
    return rc;
}

struct moat_outbox *usr_store_outbox(struct usr_store *s)
{
    return s->outbox;
}

/* ---- moderation actions ---- */

static int mod_insert_row(struct usr_store *s, const struct usr_mod_action *a)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "mod_insert",
        "INSERT INTO moderation_actions (id, action, comment_id, user_id, "
        "reason, requested_by, requested_at_ms, seq) "
        "VALUES (?1, ?2, nullif(?3, ''), nullif(?4, ''), ?5, ?6, ?7, ?8)");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, a->id);
    moat_stmt_bind_text(stmt, 2, a->action);
    moat_stmt_bind_text(stmt, 3, a->comment_id);
    moat_stmt_bind_text(stmt, 4, a->user_id);
    moat_stmt_bind_text(stmt, 5, a->reason);
    moat_stmt_bind_text(stmt, 6, a->requested_by);
    moat_stmt_bind_int64(stmt, 7, a->requested_ms);
    moat_stmt_bind_int64(stmt, 8, a->seq);
    return step_done(s, stmt);
}

json_t *usr_mod_json(const struct usr_mod_action *a)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I}", "action_id", a->id,
                          "action", a->action, "reason", a->reason,
                          "requested_by", a->requested_by, "requested_at",
                          (json_int_t)(a->requested_ms / 1000));
    if (a->comment_id[0])
        json_object_set_new(o, "comment_id", json_string(a->comment_id));
    if (a->user_id[0])
        json_object_set_new(o, "user_id", json_string(a->user_id));
    return o;
}

int usr_store_mod_insert(struct usr_store *s, struct usr_mod_action *a)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    bool on_user = strcmp(a->action, "suspend_commenting") == 0 ||
                   strcmp(a->action, "restore_commenting") == 0;
    if (on_user) {
        /* The account's own state changes with the request, so tokens and
         * the gateway drop "comment" at once; comments applies the event
         * to its own data. */
        struct usr_access acc;
        bool changed = false;
        struct usr_access_change ch = {
            .suspended = -1,
            .comment_suspended = strcmp(a->action, "suspend_commenting") == 0,
            .changed_by = a->requested_by,
            .reason = a->reason,
        };
        rc = usr_store_access_get(s, a->user_id, &acc);
        if (rc == MOAT_OK)
            rc = access_apply(s, &acc, &ch, a->requested_ms, &changed);
        if (rc != MOAT_OK)
            goto out;
    }
    json_t *ev = usr_mod_json(a);
    rc = moat_outbox_append(s->outbox, USERS_MODERATION_ACTION_REQUESTED, a->id,
                            USERS_MODERATION_SCHEMA, ev, &a->seq);
    json_decref(ev);
    if (rc == MOAT_OK)
        rc = mod_insert_row(s, a);
    if (rc == MOAT_OK) {
        rc = moat_db_commit(s->db);
        if (rc == MOAT_OK)
            moat_outbox_committed(s->outbox);
        return rc;
    }
out:
    moat_db_rollback(s->db);
    return rc;
}

int usr_store_mod_get(struct usr_store *s, const char *id,
                      struct usr_mod_action *out)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "mod_get",
        "SELECT id, action, coalesce(comment_id, ''), coalesce(user_id, ''), "
        "reason, requested_by, requested_at_ms, seq FROM moderation_actions "
        "WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, id);
    int step = moat_stmt_step(stmt);
    int rc;
    memset(out, 0, sizeof(*out));
    if (step == SQLITE_ROW) {
        copy_text(out->id, sizeof(out->id), moat_stmt_text(stmt, 0));
        copy_text(out->action, sizeof(out->action), moat_stmt_text(stmt, 1));
        copy_text(out->comment_id, sizeof(out->comment_id),
                  moat_stmt_text(stmt, 2));
        copy_text(out->user_id, sizeof(out->user_id), moat_stmt_text(stmt, 3));
        copy_text(out->reason, sizeof(out->reason), moat_stmt_text(stmt, 4));
        copy_text(out->requested_by, sizeof(out->requested_by),
                  moat_stmt_text(stmt, 5));
        out->requested_ms = moat_stmt_int64(stmt, 6);
        out->seq = moat_stmt_int64(stmt, 7);
        rc = MOAT_OK;
    } else if (step == SQLITE_DONE) {
        rc = MOAT_ENOTFOUND;
    } else {
        rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

struct moat_db *usr_store_db(struct usr_store *s)
{
    return s->db;
}
