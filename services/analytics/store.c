/*
 * store.c - the analytics view's schema and queries (see analytics.h).
 *
 * Tables, all decided by events only:
 *   counts  (size, user_id, start, messages_sent, comments, posts,
 *           follows, registrations, active_users)  one row per bucket
 *           (size seconds from start, epoch seconds) and user, user_id ''
 *           being everyone; a row exists once anything was counted in it
 *   active  (size, start, user_id)  who was active in each bucket, so
 *           that active_users counts each user once per bucket
 * Every action touches three sizes (minute, hour, day).
 *
 * The same SQL runs on SQLite and PostgreSQL (moat/db.h); each migration
 * has both texts. On PostgreSQL user ids are in the "C" collation (byte
 * order, as SQLite compares), so that a replay's comparison walks both
 * views alike.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analytics.h"
#include "moat/log.h"

#define DB_FILE "analytics.db"

/* SQL for the non-negative integer x as 20 digits, zero-padded, on both
 * engines (SQLite's printf is not PostgreSQL's). */
#define PAD20(x)                                                               \
    "substr('00000000000000000000' || " x ", length(" x " || '') + 1)"
#define START20 PAD20("start")

const char *const an_metric_names[AN_METRICS] = {
    "messages_sent", "comments", "posts", "follows", "registrations"};

const struct an_bucket an_buckets[3] = {
    {"minute", 60}, {"hour", 3600}, {"day", 86400}};

/* Never edit a migration that has shipped: append a new version. */
static const struct moat_migration migrations[] = {
    {1, "create the engagement view",
     "CREATE TABLE counts (\n"
     "    size INTEGER NOT NULL CHECK (size > 0),\n"
     "    user_id TEXT NOT NULL,\n"
     "    start INTEGER NOT NULL,\n"
     "    messages_sent INTEGER NOT NULL DEFAULT 0,\n"
     "    comments INTEGER NOT NULL DEFAULT 0,\n"
     "    posts INTEGER NOT NULL DEFAULT 0,\n"
     "    follows INTEGER NOT NULL DEFAULT 0,\n"
     "    registrations INTEGER NOT NULL DEFAULT 0,\n"
     "    active_users INTEGER NOT NULL DEFAULT 0,\n"
     "    PRIMARY KEY (size, user_id, start)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE active (\n"
     "    size INTEGER NOT NULL,\n"
     "    start INTEGER NOT NULL,\n"
     "    user_id TEXT NOT NULL,\n"
     "    PRIMARY KEY (size, start, user_id)\n"
     ") STRICT, WITHOUT ROWID;\n",
     "CREATE TABLE counts (\n"
     "    size BIGINT NOT NULL CHECK (size > 0),\n"
     "    user_id TEXT COLLATE \"C\" NOT NULL,\n"
     "    start BIGINT NOT NULL,\n"
     "    messages_sent BIGINT NOT NULL DEFAULT 0,\n"
     "    comments BIGINT NOT NULL DEFAULT 0,\n"
     "    posts BIGINT NOT NULL DEFAULT 0,\n"
     "    follows BIGINT NOT NULL DEFAULT 0,\n"
     "    registrations BIGINT NOT NULL DEFAULT 0,\n"
     "    active_users BIGINT NOT NULL DEFAULT 0,\n"
     "    PRIMARY KEY (size, user_id, start)\n"
     ");\n"
     "CREATE TABLE active (\n"
     "    size BIGINT NOT NULL,\n"
     "    start BIGINT NOT NULL,\n"
     "    user_id TEXT COLLATE \"C\" NOT NULL,\n"
     "    PRIMARY KEY (size, start, user_id)\n"
     ");\n"},
    {2, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA,
     MOAT_CONSUMER_SCHEMA_PG},
};

const struct moat_migration *an_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

int an_store_open(struct moat_db **out, const char *data_dir, const char *dsn,
                  struct moat_metrics *metrics)
{
    const struct moat_db_options opts = {.dsn = dsn};
    return moat_db_open_migrated(out, data_dir, DB_FILE, &opts, metrics,
                                 migrations, MOAT_ARRAY_LEN(migrations));
}

bool an_store_ready(struct moat_db *db, const char **why)
{
    return moat_db_migrated(db, migrations, MOAT_ARRAY_LEN(migrations), why);
}

int an_store_reset(struct moat_db *db)
{
    return moat_db_exec(db, "reset", "DELETE FROM counts; DELETE FROM active;");
}

int an_store_compare(struct moat_db *live, struct moat_db *scratch,
                     json_t *diffs, size_t max_diffs)
{
    /* Composite keys joined by spaces (ids never hold one), in SQL that
     * runs on either engine (the live view may be PostgreSQL). */
    static const struct moat_view_table tables[] = {
        {"compare_counts",
         "SELECT size || ' ' || user_id || ' ' || " START20 " AS k, "
         "messages_sent, comments, posts, follows, registrations, "
         "active_users FROM counts ORDER BY k",
         "bucket"},
        {"compare_active",
         "SELECT size || ' ' || " START20 " || ' ' || user_id AS k "
         "FROM active ORDER BY k",
         "active user"},
    };
    return moat_view_compare_tables(live, scratch, tables,
                                    MOAT_ARRAY_LEN(tables), diffs, max_diffs);
}

/* ---- writes (inside the consumer's transaction) ---- */

/* Step a write to its end; *changed whether it changed a row. */
static int step_write(struct moat_db *db, struct moat_stmt *stmt, bool *changed)
{
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE)
        return moat_db_error(db, step);
    if (changed)
        *changed = moat_db_changes(db) > 0;
    return MOAT_OK;
}

/* Add one to column col (a metric or active_users) of (size, user, start). */
static int bump(struct moat_db *db, int col, int64_t size, const char *user,
                int64_t start)
{
    static const char *const sql[AN_METRICS + 1] = {
#define BUMP(c)                                                                \
    "INSERT INTO counts (size, user_id, start, " c ") VALUES (?1, ?2, ?3, 1) " \
    "ON CONFLICT (size, user_id, start) DO UPDATE SET " c " = counts." c       \
    " + 1"
        BUMP("messages_sent"), BUMP("comments"),      BUMP("posts"),
        BUMP("follows"),       BUMP("registrations"), BUMP("active_users"),
#undef BUMP
    };
    static const char *const names[AN_METRICS + 1] = {
        "bump_messages_sent", "bump_comments",      "bump_posts",
        "bump_follows",       "bump_registrations", "bump_active_users"};
    struct moat_stmt *st = moat_db_prepare(db, names[col], sql[col]);
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_int64(st, 1, size);
    moat_stmt_bind_text(st, 2, user);
    moat_stmt_bind_int64(st, 3, start);
    return step_write(db, st, NULL);
}

int an_store_count(struct moat_db *db, const char *user, int64_t time_s,
                   enum an_metric metric)
{
    int rc = MOAT_OK;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(an_buckets) && rc == MOAT_OK; i++) {
        int64_t size = an_buckets[i].seconds;
        int64_t start = time_s - ((time_s % size) + size) % size;
        if (metric != AN_NONE) {
            rc = bump(db, metric, size, user, start);
            if (rc == MOAT_OK)
                rc = bump(db, metric, size, "", start);
        }
        if (rc != MOAT_OK)
            break;
        struct moat_stmt *st = moat_db_prepare(
            db, "active_add",
            "INSERT INTO active (size, start, user_id) VALUES (?1, ?2, ?3) "
            "ON CONFLICT DO NOTHING");
        if (!st)
            return MOAT_EDB;
        moat_stmt_bind_int64(st, 1, size);
        moat_stmt_bind_int64(st, 2, start);
        moat_stmt_bind_text(st, 3, user);
        bool added = false;
        rc = step_write(db, st, &added);
        if (rc == MOAT_OK && added)
            rc = bump(db, AN_METRICS, size, user, start);
        if (rc == MOAT_OK && added)
            rc = bump(db, AN_METRICS, size, "", start);
    }
    return rc;
}

/* ---- reads ---- */

int an_store_series(struct moat_db *db, int64_t size, const char *user,
                    int64_t from, int64_t to,
                    void (*fn)(const struct an_row *row, void *arg), void *arg)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "series",
        "SELECT start, messages_sent, comments, posts, follows, "
        "registrations, active_users FROM counts "
        "WHERE size = ?1 AND user_id = ?2 AND start >= ?3 AND start < ?4 "
        "ORDER BY start");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_int64(st, 1, size);
    moat_stmt_bind_text(st, 2, user);
    moat_stmt_bind_int64(st, 3, from);
    moat_stmt_bind_int64(st, 4, to);
    int step;
    while ((step = moat_stmt_step(st)) == SQLITE_ROW) {
        struct an_row row = {.start = moat_stmt_int64(st, 0)};
        for (int m = 0; m < AN_METRICS; m++)
            row.n[m] = moat_stmt_int64(st, 1 + m);
        row.active_users = moat_stmt_int64(st, 1 + AN_METRICS);
        fn(&row, arg);
    }
    moat_stmt_reset(st);
    if (step != SQLITE_DONE)
        return moat_db_error(db, step);
    return MOAT_OK;
}
