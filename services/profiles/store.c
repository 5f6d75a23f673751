/* store.c - profiles' schema, every query, and the sealing (store.h). */
#include "moat/common.h"

#include "contracts/profiles.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/keys.h"
#include "moat/log.h"
#include "store.h"

struct pro_store {
    struct moat_db *db;            /* owned */
    const struct moat_keyring *kr; /* borrowed */
    struct moat_outbox *outbox;    /* owned; ProfileUpdated */
};

#define DB_FILE "profiles.db"

/*
 * Schema migrations: never edit one that has shipped, append a new one.
 *
 * profiles has one row per user id. name_enc, bio_enc and location_enc
 * are sealed text ("s1.<key>.<base64url>") or NULL when the field is not
 * set; key_id is the data key of the row's seals (what a re-encryption
 * pass would scan for). handle is stored lower-case and UNIQUE (SQLite
 * lets several rows have NULL). WITHOUT ROWID clusters rows by user id.
 *
 * 2 and 3 add the outbox of profiles' events and the consumer's cursors
 * of users' feed, in this same database so that writes and their events
 * (or cursor moves) commit together.
 *
 * Each migration has its PostgreSQL text beside the SQLite one (moat/db.h):
 * the same columns, BIGINT for integers, a regular expression for GLOB,
 * and no STRICT / WITHOUT ROWID (a PostgreSQL table is a heap; the primary
 * key's index plays the clustering part). Sealed fields stay text. The
 * user id is in the "C" collation: byte order, as SQLite compares, so
 * that the re-sealing cursor walks the same order on either engine.
 */
static const struct moat_migration migrations[] = {
    {1, "create profiles",
     "CREATE TABLE profiles (\n"
     "    user_id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(user_id) BETWEEN 1 AND 64),\n"
     "    handle TEXT UNIQUE CHECK (handle IS NULL OR\n"
     "        (length(handle) BETWEEN 3 AND 30 AND\n"
     "         handle NOT GLOB '*[^a-z0-9_]*')),\n"
     "    avatar_url TEXT CHECK (avatar_url IS NULL OR\n"
     "        length(avatar_url) <= 2048),\n"
     "    name_enc TEXT CHECK (name_enc IS NULL OR\n"
     "        substr(name_enc, 1, 3) = 's1.'),\n"
     "    bio_enc TEXT CHECK (bio_enc IS NULL OR\n"
     "        substr(bio_enc, 1, 3) = 's1.'),\n"
     "    location_enc TEXT CHECK (location_enc IS NULL OR\n"
     "        substr(location_enc, 1, 3) = 's1.'),\n"
     "    key_id INTEGER NOT NULL CHECK (key_id >= 1),\n"
     "    version INTEGER NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    updated_at_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX profiles_key_id ON profiles (key_id);\n",
     "CREATE TABLE profiles (\n"
     "    user_id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(user_id) BETWEEN 1 AND 64),\n"
     "    handle TEXT UNIQUE CHECK (handle IS NULL OR\n"
     "        (length(handle) BETWEEN 3 AND 30 AND\n"
     "         handle !~ '[^a-z0-9_]')),\n"
     "    avatar_url TEXT CHECK (avatar_url IS NULL OR\n"
     "        length(avatar_url) <= 2048),\n"
     "    name_enc TEXT CHECK (name_enc IS NULL OR\n"
     "        substr(name_enc, 1, 3) = 's1.'),\n"
     "    bio_enc TEXT CHECK (bio_enc IS NULL OR\n"
     "        substr(bio_enc, 1, 3) = 's1.'),\n"
     "    location_enc TEXT CHECK (location_enc IS NULL OR\n"
     "        substr(location_enc, 1, 3) = 's1.'),\n"
     "    key_id BIGINT NOT NULL CHECK (key_id >= 1),\n"
     "    version BIGINT NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    updated_at_ms BIGINT NOT NULL\n"
     ");\n"
     "CREATE INDEX profiles_key_id ON profiles (key_id);\n"},
    {2, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
    {3, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA,
     MOAT_CONSUMER_SCHEMA_PG},
};

/* Where each field lives: its column (in PROFILE_COLUMNS order, from 1). */
static const struct {
    enum pro_field field;
    const char *column;
} columns[PRO_NFIELDS] = {
    {PRO_F_HANDLE, "handle"},         {PRO_F_AVATAR_URL, "avatar_url"},
    {PRO_F_DISPLAY_NAME, "name_enc"}, {PRO_F_BIO, "bio_enc"},
    {PRO_F_LOCATION, "location_enc"},
};

#define PROFILE_COLUMNS                                                        \
    "user_id, handle, avatar_url, name_enc, bio_enc, location_enc, key_id, "   \
    "version, created_at_ms, updated_at_ms"
#define COL_KEY_ID  6
#define COL_VERSION 7
#define COL_CREATED 8
#define COL_UPDATED 9

int pro_store_open(struct pro_store **out, struct event_base *base,
                   const char *data_dir, const char *dsn,
                   const struct moat_keyring *kr,
                   const struct moat_outbox_options *oo,
                   struct moat_metrics *metrics)
{
    struct pro_store *s = moat_xcalloc(1, sizeof(*s));
    s->kr = kr;
    /* Overwrite deleted content: a ciphertext replaced by an update does
     * not linger in free pages (SQLite; on PostgreSQL the cells hold only
     * sealed text either way). */
    const struct moat_db_options opts = {.secure_delete = true, .dsn = dsn};
    int rc = moat_db_open_migrated(&s->db, data_dir, DB_FILE, &opts, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc == MOAT_OK)
        rc = moat_outbox_new(&s->outbox, base, s->db, "profiles", oo, metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    *out = s;
    s = NULL;

cleanup:
    pro_store_close(s);
    return rc;
}

void pro_store_close(struct pro_store *s)
{
    if (!s)
        return;
    /* The outbox borrows the database: it goes first. */
    moat_outbox_free(s->outbox);
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

bool pro_store_ready(struct pro_store *s, const char **why)
{
    return moat_db_migrated(s ? s->db : NULL, migrations,
                            MOAT_ARRAY_LEN(migrations), why);
}

struct moat_db *pro_store_db(struct pro_store *s)
{
    return s->db;
}

struct moat_outbox *pro_store_outbox(struct pro_store *s)
{
    return s->outbox;
}

/* ---- sealing ---- */

/* The AEAD associated data of field f of user_id's row. */
static void place(char *out, size_t cap, enum pro_field f, const char *user_id)
{
    snprintf(out, cap, "profiles.%s:%s", pro_field_names[f], user_id);
}

static int seal_field(struct pro_store *s, enum pro_field f,
                      const char *user_id, const char *plaintext, char **out)
{
    char ad[128];
    place(ad, sizeof(ad), f, user_id);
    int rc = moat_seal(s->kr, ad, plaintext, strlen(plaintext), out);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot seal a field", "{s:s, s:s, s:s}",
                 "user_id", user_id, "field", pro_field_names[f], "error",
                 moat_strerror(rc));
    return rc;
}

/* Open a sealed field. Any failure means the row must not be shown; the
 * log names the row and field, never the content. */
static int open_field(struct pro_store *s, enum pro_field f,
                      const char *user_id, const char *sealed, char **out)
{
    char ad[128];
    place(ad, sizeof(ad), f, user_id);
    int rc = moat_open(s->kr, ad, sealed, out, NULL);
    if (rc == MOAT_OK)
        return MOAT_OK;
    moat_log(MOAT_LOG_ERROR, "stored data failed its integrity check",
             "{s:s, s:s, s:s, s:i}", "user_id", user_id, "field",
             pro_field_names[f], "error",
             rc == MOAT_ENOTFOUND ? "data key not in the keyring"
                                  : "does not authenticate for this row",
             "key_id", (int)moat_sealed_key_id(sealed));
    return PRO_EINTEGRITY;
}

/* ---- rows ---- */

static int row_to_profile(struct pro_store *s, struct moat_stmt *st,
                          struct pro_profile *p)
{
    const char *id = moat_stmt_text(st, 0);
    memset(p, 0, sizeof(*p));
    if (!id || strlen(id) > PRO_USER_ID_MAX)
        return MOAT_EDB;
    snprintf(p->user_id, sizeof(p->user_id), "%s", id);
    for (int i = 0; i < PRO_NFIELDS; i++) {
        enum pro_field f = columns[i].field;
        const char *text = moat_stmt_text(st, i + 1);
        if (!text)
            continue;
        if (!pro_field_is_pii(f)) {
            p->fields[f] = moat_xstrdup(text);
            continue;
        }
        int rc = open_field(s, f, p->user_id, text, &p->fields[f]);
        if (rc != MOAT_OK) {
            pro_profile_release(p);
            return rc;
        }
    }
    p->key_id = (uint32_t)moat_stmt_int64(st, COL_KEY_ID);
    p->version = moat_stmt_int64(st, COL_VERSION);
    p->created_ms = moat_stmt_int64(st, COL_CREATED);
    p->updated_ms = moat_stmt_int64(st, COL_UPDATED);
    return MOAT_OK;
}

/* One row by the text key (user id or handle) the statement binds as ?1. */
static int get_one(struct pro_store *s, const char *name, const char *sql,
                   const char *key, struct pro_profile *out)
{
    struct moat_stmt *stmt = moat_db_prepare(s->db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, key);
    int step = moat_stmt_step(stmt);
    int rc;
    if (step == SQLITE_ROW)
        rc = row_to_profile(s, stmt, out);
    else if (step == SQLITE_DONE)
        rc = MOAT_ENOTFOUND;
    else
        rc = moat_db_error(s->db, step);
    /* Reset at once: an unfinished SELECT pins a WAL read snapshot. */
    moat_stmt_reset(stmt);
    return rc;
}

int pro_store_get(struct pro_store *s, const char *user_id,
                  struct pro_profile *out)
{
    return get_one(s, "profile_get",
                   "SELECT " PROFILE_COLUMNS " FROM profiles "
                   "WHERE user_id = ?1",
                   user_id, out);
}

int pro_store_get_by_handle(struct pro_store *s, const char *handle,
                            struct pro_profile *out)
{
    return get_one(s, "profile_by_handle",
                   "SELECT " PROFILE_COLUMNS " FROM profiles "
                   "WHERE handle = ?1",
                   handle, out);
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The ProfileUpdated data (no PII: see docs/profiles.md). */
static json_t *updated_event(const struct pro_profile *p, json_t *changed)
{
    const char *handle = p->fields[PRO_F_HANDLE];
    return json_pack("{s:s, s:I, s:o, s:o, s:I}", "user_id", p->user_id,
                     "version", (json_int_t)p->version, "changed", changed,
                     "handle", handle ? json_string(handle) : json_null(),
                     "updated_at", (json_int_t)(p->updated_ms / 1000));
}

/* Upsert p's row with its fields sealed by the active key. */
static int write_row(struct pro_store *s, const struct pro_profile *p)
{
    char *sealed[PRO_NFIELDS] = {0};
    int rc = MOAT_OK;
    for (int f = 0; f < PRO_NFIELDS && rc == MOAT_OK; f++)
        if (pro_field_is_pii((enum pro_field)f) && p->fields[f])
            rc = seal_field(s, (enum pro_field)f, p->user_id, p->fields[f],
                            &sealed[f]);
    if (rc != MOAT_OK)
        goto out;

    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "profile_upsert",
        "INSERT INTO profiles (" PROFILE_COLUMNS ") "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
        "ON CONFLICT (user_id) DO UPDATE SET handle = excluded.handle, "
        "avatar_url = excluded.avatar_url, name_enc = excluded.name_enc, "
        "bio_enc = excluded.bio_enc, location_enc = excluded.location_enc, "
        "key_id = excluded.key_id, version = excluded.version, "
        "updated_at_ms = excluded.updated_at_ms");
    if (!stmt) {
        rc = MOAT_EDB;
        goto out;
    }
    moat_stmt_bind_text(stmt, 1, p->user_id);
    for (int i = 0; i < PRO_NFIELDS; i++) {
        enum pro_field f = columns[i].field;
        /* NULL binds SQL NULL: the field is not set. */
        moat_stmt_bind_text(stmt, i + 2,
                            pro_field_is_pii(f) ? sealed[f] : p->fields[f]);
    }
    moat_stmt_bind_int64(stmt, COL_KEY_ID + 1, moat_keyring_active(s->kr));
    moat_stmt_bind_int64(stmt, COL_VERSION + 1, p->version);
    moat_stmt_bind_int64(stmt, COL_CREATED + 1, p->created_ms);
    moat_stmt_bind_int64(stmt, COL_UPDATED + 1, p->updated_ms);
    int step = moat_stmt_step(stmt);
    if (step != SQLITE_DONE) {
        /* The user id cannot collide (upsert): a UNIQUE failure is the
         * handle. Any other constraint means validation let something
         * through, a bug rather than the client's fault. The step's code
         * is the extended one on both engines. */
        rc = step == SQLITE_CONSTRAINT_UNIQUE     ? MOAT_ECONFLICT
             : (step & 0xff) == SQLITE_CONSTRAINT ? MOAT_EDB
                                                  : moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);

out:
    for (int f = 0; f < PRO_NFIELDS; f++)
        free(sealed[f]);
    return rc;
}

/*
 * MOAT_ECONFLICT when another user holds handle. Asked before the write
 * (inside its transaction, which holds the store's write lock on either
 * engine) rather than read from the UNIQUE failure: on PostgreSQL a failed
 * statement fails the whole transaction.
 */
static int handle_free(struct pro_store *s, const char *handle,
                       const char *user_id)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "profile_handle_taken",
        "SELECT 1 FROM profiles WHERE handle = ?1 AND user_id <> ?2");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, handle);
    moat_stmt_bind_text(stmt, 2, user_id);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_ROW    ? MOAT_ECONFLICT
           : step == SQLITE_DONE ? MOAT_OK
                                 : moat_db_error(s->db, step);
}

/* Copy the fields of from into to (to's fields must be NULL). */
static void copy_fields(struct pro_profile *to, const struct pro_profile *from)
{
    for (int f = 0; f < PRO_NFIELDS; f++)
        to->fields[f] = from->fields[f] ? moat_xstrdup(from->fields[f]) : NULL;
}

int pro_store_put(struct pro_store *s, const struct pro_profile *in,
                  int64_t expect_version, int64_t now_ms,
                  struct pro_profile *out, bool *changed)
{
    struct pro_profile cur = {0}, next = {0};
    bool exists = true;
    json_t *names = json_array();
    if (changed)
        *changed = false;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        goto out;

    /* The state before, read under the write lock. */
    rc = pro_store_get(s, in->user_id, &cur);
    if (rc == MOAT_ENOTFOUND) {
        exists = false;
        snprintf(cur.user_id, sizeof(cur.user_id), "%s", in->user_id);
        cur.created_ms = cur.updated_ms = now_ms;
        rc = MOAT_OK;
    }
    if (rc != MOAT_OK)
        goto out;
    if (expect_version != PRO_ANY_VERSION && cur.version != expect_version) {
        rc = MOAT_EPRECOND;
        goto out;
    }
    for (int f = 0; f < PRO_NFIELDS; f++)
        if (!same(cur.fields[f], in->fields[f]))
            json_array_append_new(names, json_string(pro_field_names[f]));

    if (exists && json_array_size(names) == 0) {
        /* Nothing to write and no event: a repeated PUT is a no-op. */
        moat_db_rollback(s->db);
        if (out) {
            *out = cur;
            memset(&cur, 0, sizeof(cur));
        }
        goto out;
    }

    snprintf(next.user_id, sizeof(next.user_id), "%s", in->user_id);
    copy_fields(&next, in);
    next.key_id = moat_keyring_active(s->kr);
    next.version = cur.version + 1;
    next.created_ms = cur.created_ms;
    next.updated_ms = now_ms > cur.updated_ms ? now_ms : cur.updated_ms;
    if (next.fields[PRO_F_HANDLE] &&
        !same(cur.fields[PRO_F_HANDLE], next.fields[PRO_F_HANDLE]))
        rc = handle_free(s, next.fields[PRO_F_HANDLE], next.user_id);
    if (rc == MOAT_OK)
        rc = write_row(s, &next);
    if (rc != MOAT_OK)
        goto out;

    /* The change and its event commit or vanish together (docs/design.md
     * invariant 2). */
    json_t *ev = updated_event(&next, json_incref(names));
    rc = moat_outbox_append(s->outbox, PROFILES_PROFILE_UPDATED, next.user_id,
                            PROFILES_PROFILE_SCHEMA, ev, NULL);
    json_decref(ev);
    if (rc != MOAT_OK)
        goto out;
    rc = moat_db_commit(s->db);
    if (rc != MOAT_OK)
        goto out;
    moat_outbox_committed(s->outbox);
    if (changed)
        *changed = true;
    if (out) {
        *out = next;
        memset(&next, 0, sizeof(next));
    }

out:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    pro_profile_release(&cur);
    pro_profile_release(&next);
    json_decref(names);
    return rc;
}

int pro_store_ensure(struct moat_db *db, const char *user_id, uint32_t key_id,
                     int64_t created_ms)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "profile_ensure",
        "INSERT INTO profiles (user_id, key_id, version, created_at_ms, "
        "updated_at_ms) VALUES (?1, ?2, 1, ?3, ?3) "
        "ON CONFLICT (user_id) DO NOTHING");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, user_id);
    moat_stmt_bind_int64(stmt, 2, key_id);
    moat_stmt_bind_int64(stmt, 3, created_ms);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : moat_db_error(db, step);
}

/* ---- re-sealing after a key rotation (moat/keys.h) ---- */

struct rekey_row {
    char user_id[PRO_USER_ID_MAX + 1];
    char *sealed[PRO_NFIELDS]; /* NULL: not set, or a plain column */
};

/* Re-seal one row under the active key; PRO_EINTEGRITY leaves it alone. */
static int rekey_row(struct pro_store *s, const struct rekey_row *r,
                     uint32_t active)
{
    char *fresh[PRO_NFIELDS] = {0};
    int rc = MOAT_OK;
    for (size_t f = 0; rc == MOAT_OK && f < PRO_NFIELDS; f++) {
        char *plain = NULL;
        if (!r->sealed[f])
            continue;
        rc = open_field(s, (enum pro_field)f, r->user_id, r->sealed[f], &plain);
        if (rc == MOAT_OK)
            rc = seal_field(s, (enum pro_field)f, r->user_id, plain, &fresh[f]);
        moat_free_secret(plain);
    }
    if (rc == MOAT_OK) {
        struct moat_stmt *stmt = moat_db_prepare(
            s->db, "profiles_rekey_update",
            "UPDATE profiles SET name_enc = ?2, bio_enc = ?3, "
            "location_enc = ?4, key_id = ?5 WHERE user_id = ?1");
        if (!stmt) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(stmt, 1, r->user_id);
            moat_stmt_bind_text(stmt, 2, fresh[PRO_F_DISPLAY_NAME]);
            moat_stmt_bind_text(stmt, 3, fresh[PRO_F_BIO]);
            moat_stmt_bind_text(stmt, 4, fresh[PRO_F_LOCATION]);
            moat_stmt_bind_int64(stmt, 5, active);
            int step = moat_stmt_step(stmt);
            rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, step);
            moat_stmt_reset(stmt);
        }
    }
    for (size_t f = 0; f < PRO_NFIELDS; f++)
        free(fresh[f]);
    return rc;
}

int pro_store_rekey_batch(struct pro_store *s, uint32_t active, char *after,
                          size_t batch, size_t *resealed, size_t *failed,
                          bool *finished)
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
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "profiles_rekey_select",
        "SELECT user_id, name_enc, bio_enc, location_enc FROM profiles "
        "WHERE user_id > ?1 AND key_id <> ?2 ORDER BY user_id LIMIT ?3");
    if (!stmt) {
        rc = MOAT_EDB;
    } else {
        moat_stmt_bind_text(stmt, 1, after);
        moat_stmt_bind_int64(stmt, 2, active);
        moat_stmt_bind_int64(stmt, 3, (int64_t)batch);
        static const enum pro_field order[] = {PRO_F_DISPLAY_NAME, PRO_F_BIO,
                                               PRO_F_LOCATION};
        int step = SQLITE_DONE;
        while (n < batch && (step = moat_stmt_step(stmt)) == SQLITE_ROW) {
            const char *id = moat_stmt_text(stmt, 0);
            snprintf(rows[n].user_id, sizeof(rows[n].user_id), "%s",
                     id ? id : "");
            for (size_t i = 0; i < MOAT_ARRAY_LEN(order); i++) {
                const char *v = moat_stmt_text(stmt, (int)i + 1);
                if (v)
                    rows[n].sealed[order[i]] = moat_xstrdup(v);
            }
            n++;
        }
        if (step != SQLITE_DONE && step != SQLITE_ROW)
            rc = moat_db_error(s->db, step);
        moat_stmt_reset(stmt);
    }
    for (size_t i = 0; rc == MOAT_OK && i < n; i++) {
        int one = rekey_row(s, &rows[i], active);
        if (one == PRO_EINTEGRITY)
            (*failed)++;
        else if (one == MOAT_OK)
            (*resealed)++;
        else
            rc = one;
    }
    if (rc == MOAT_OK)
        rc = moat_db_commit(s->db);
    else
        moat_db_rollback(s->db);
    if (rc == MOAT_OK) {
        if (n > 0)
            snprintf(after, MOAT_KEYS_CURSOR_MAX, "%s", rows[n - 1].user_id);
        *finished = n < batch;
    }
out:
    for (size_t i = 0; i < n; i++)
        for (size_t f = 0; f < PRO_NFIELDS; f++)
            free(rows[i].sealed[f]);
    free(rows);
    return rc;
}

int pro_store_rows_by_key(struct pro_store *s, json_t **out)
{
    return moat_keys_count_sqlite(
        s->db, "profiles_by_key",
        "SELECT key_id, count(*) FROM profiles GROUP BY key_id", out);
}
