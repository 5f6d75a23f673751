/*
 * store.c - the timelines view's schema and queries (see timelines.h).
 *
 * Tables, all decided by events only:
 *   follows  (follower, followee)  who follows whom now, from connections
 *   posts    (post_id, author_id, seq, doc, fanned_out)  every live post,
 *            doc being the post as the API shows it
 *   home     (user_id, seq, post_id)  the fanned-out timelines: one row
 *            per reader and post, keyed so that a page is one range scan
 * A post whose author had more than fanout_max followers when it was
 * written is not fanned out (fanned_out = 0): readers merge such posts in
 * from posts_merged, a partial index holding only them.
 *
 * The same SQL runs on SQLite and PostgreSQL (moat/db.h) but for the
 * index hint of the home query; each migration has both texts. On
 * PostgreSQL the ids are in the "C" collation (byte order, as SQLite
 * compares), so that a replay's comparison walks both views alike.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "timelines.h"

#define DB_FILE "timelines.db"

/* SQL for the non-negative integer x as 20 digits, zero-padded, on both
 * engines (SQLite's printf is not PostgreSQL's). */
#define PAD20(x)                                                               \
    "substr('00000000000000000000' || " x ", length(" x " || '') + 1)"
#define SEQ20 PAD20("seq")

/* Never edit a migration that has shipped: append a new version. */
static const struct moat_migration migrations[] = {
    {1, "create the home timeline view",
     "CREATE TABLE follows (\n"
     "    follower TEXT NOT NULL,\n"
     "    followee TEXT NOT NULL,\n"
     "    PRIMARY KEY (follower, followee)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX follows_by_followee ON follows (followee, follower);\n"
     "CREATE TABLE posts (\n"
     "    post_id TEXT NOT NULL PRIMARY KEY,\n"
     "    author_id TEXT NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    doc TEXT NOT NULL CHECK (json_valid(doc)),\n"
     "    fanned_out INTEGER NOT NULL CHECK (fanned_out IN (0, 1))\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE UNIQUE INDEX posts_by_author ON posts (author_id, seq);\n"
     "CREATE INDEX posts_merged ON posts (author_id, seq)\n"
     "    WHERE fanned_out = 0;\n"
     "CREATE TABLE home (\n"
     "    user_id TEXT NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    post_id TEXT NOT NULL,\n"
     "    PRIMARY KEY (user_id, seq)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX home_by_post ON home (post_id);\n",
     "CREATE TABLE follows (\n"
     "    follower TEXT COLLATE \"C\" NOT NULL,\n"
     "    followee TEXT COLLATE \"C\" NOT NULL,\n"
     "    PRIMARY KEY (follower, followee)\n"
     ");\n"
     "CREATE INDEX follows_by_followee ON follows (followee, follower);\n"
     "CREATE TABLE posts (\n"
     "    post_id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,\n"
     "    author_id TEXT COLLATE \"C\" NOT NULL,\n"
     "    seq BIGINT NOT NULL,\n"
     "    doc TEXT NOT NULL CHECK (doc::json IS NOT NULL),\n"
     "    fanned_out INTEGER NOT NULL CHECK (fanned_out IN (0, 1))\n"
     ");\n"
     "CREATE UNIQUE INDEX posts_by_author ON posts (author_id, seq);\n"
     "CREATE INDEX posts_merged ON posts (author_id, seq)\n"
     "    WHERE fanned_out = 0;\n"
     "CREATE TABLE home (\n"
     "    user_id TEXT COLLATE \"C\" NOT NULL,\n"
     "    seq BIGINT NOT NULL,\n"
     "    post_id TEXT COLLATE \"C\" NOT NULL,\n"
     "    PRIMARY KEY (user_id, seq)\n"
     ");\n"
     "CREATE INDEX home_by_post ON home (post_id);\n"},
    {2, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA,
     MOAT_CONSUMER_SCHEMA_PG},
};

const struct moat_migration *tl_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

int tl_store_open(struct moat_db **out, const char *data_dir, const char *dsn,
                  struct moat_metrics *metrics)
{
    const struct moat_db_options opts = {.dsn = dsn};
    return moat_db_open_migrated(out, data_dir, DB_FILE, &opts, metrics,
                                 migrations, MOAT_ARRAY_LEN(migrations));
}

bool tl_store_ready(struct moat_db *db, const char **why)
{
    return moat_db_migrated(db, migrations, MOAT_ARRAY_LEN(migrations), why);
}

int tl_store_reset(struct moat_db *db)
{
    return moat_db_exec(db, "reset",
                        "DELETE FROM home; DELETE FROM posts; "
                        "DELETE FROM follows;");
}

int tl_store_compare(struct moat_db *live, struct moat_db *scratch,
                     json_t *diffs, size_t max_diffs)
{
    /*
     * What the view shows, not how it is stored: the two feeds interleave
     * differently live and in a replay, so whether a post was fanned out
     * (it depends on the author's follower count when the post was
     * applied) and which home rows hold it may differ, while every
     * timeline shows the same posts. So: the follows, the posts without
     * fanned_out, and every (reader, post) pair a timeline shows, fanned
     * out or merged. Composite keys joined by a space (ids never hold
     * one), numbers zero-padded so that keys sort as their numbers do;
     * the SQL runs on either engine (the live view may be PostgreSQL).
     */
    static const struct moat_view_table tables[] = {
        {"compare_follows",
         "SELECT follower || ' ' || followee AS k FROM follows ORDER BY k",
         "follow"},
        {"compare_posts",
         "SELECT post_id, author_id, seq, doc FROM posts ORDER BY post_id",
         "post"},
        {"compare_shown",
         "SELECT user_id || ' ' || " SEQ20 " AS k, post_id FROM ("
         " SELECT user_id, seq, post_id FROM home"
         " UNION SELECT f.follower, m.seq, m.post_id FROM follows f"
         " JOIN posts m ON m.author_id = f.followee AND m.fanned_out = 0"
         ") u ORDER BY k",
         "home timeline entry"},
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

/* Prepare name/sql and bind up to two texts; NULL on a prepare error. */
static struct moat_stmt *prep(struct moat_db *db, const char *name,
                              const char *sql, const char *a, const char *b)
{
    struct moat_stmt *st = moat_db_prepare(db, name, sql);
    if (!st)
        return NULL;
    if (a)
        moat_stmt_bind_text(st, 1, a);
    if (b)
        moat_stmt_bind_text(st, 2, b);
    return st;
}

int tl_store_post_add(struct moat_db *db, const struct tl_post *p,
                      int64_t fanout_max)
{
    /* Fan out on write unless the author has very many followers. */
    struct moat_stmt *st = prep(
        db, "followers_count",
        "SELECT count(*) FROM follows WHERE followee = ?1", p->author_id, NULL);
    if (!st)
        return MOAT_EDB;
    int step = moat_stmt_step(st);
    int64_t followers = step == SQLITE_ROW ? moat_stmt_int64(st, 0) : 0;
    moat_stmt_reset(st);
    if (step != SQLITE_ROW)
        return moat_db_error(db, step);
    bool fan_out = followers <= fanout_max;

    st = prep(db, "post_add",
              "INSERT INTO posts (post_id, author_id, seq, doc, fanned_out) "
              "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
              p->post_id, p->author_id);
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_int64(st, 3, p->seq);
    moat_stmt_bind_text(st, 4, p->doc);
    moat_stmt_bind_int64(st, 5, fan_out);
    bool added = false;
    int rc = step_write(db, st, &added);
    if (rc != MOAT_OK || !added)
        return rc; /* a post seen before changes nothing */

    /* The author's own timeline always has the post; followers' too when
     * fanned out. (The casts type the parameter for PostgreSQL, which
     * would take an untyped one in a UNION for text.) */
    st = prep(db, fan_out ? "fan_out" : "fan_out_self",
              fan_out ? "INSERT INTO home (user_id, seq, post_id) "
                        "SELECT follower, CAST(?3 AS BIGINT), ?1 FROM follows "
                        "WHERE followee = ?2 "
                        "UNION SELECT ?2, CAST(?3 AS BIGINT), ?1 "
                        "ON CONFLICT DO NOTHING"
                      : "INSERT INTO home (user_id, seq, post_id) "
                        "VALUES (?2, ?3, ?1) ON CONFLICT DO NOTHING",
              p->post_id, p->author_id);
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_int64(st, 3, p->seq);
    return step_write(db, st, NULL);
}

int tl_store_post_delete(struct moat_db *db, const char *post_id)
{
    struct moat_stmt *st =
        prep(db, "home_delete_post", "DELETE FROM home WHERE post_id = ?1",
             post_id, NULL);
    if (!st)
        return MOAT_EDB;
    int rc = step_write(db, st, NULL);
    if (rc != MOAT_OK)
        return rc;
    st = prep(db, "post_delete", "DELETE FROM posts WHERE post_id = ?1",
              post_id, NULL);
    if (!st)
        return MOAT_EDB;
    return step_write(db, st, NULL);
}

int tl_store_follow(struct moat_db *db, const char *follower,
                    const char *followee)
{
    struct moat_stmt *st =
        prep(db, "follow",
             "INSERT INTO follows (follower, followee) VALUES (?1, ?2) "
             "ON CONFLICT DO NOTHING",
             follower, followee);
    if (!st)
        return MOAT_EDB;
    bool added = false;
    int rc = step_write(db, st, &added);
    if (rc != MOAT_OK || !added)
        return rc;
    /* The new followee's recent fanned-out posts join the timeline (the
     * others are merged in at read time anyway). */
    st = prep(db, "backfill",
              "INSERT INTO home (user_id, seq, post_id) "
              "SELECT ?1, seq, post_id FROM posts "
              "WHERE author_id = ?2 AND fanned_out = 1 "
              "ORDER BY seq DESC LIMIT ?3 ON CONFLICT DO NOTHING",
              follower, followee);
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_int64(st, 3, TL_BACKFILL_MAX);
    return step_write(db, st, NULL);
}

int tl_store_unfollow(struct moat_db *db, const char *follower,
                      const char *followee)
{
    struct moat_stmt *st =
        prep(db, "unfollow",
             "DELETE FROM follows WHERE follower = ?1 AND followee = ?2",
             follower, followee);
    if (!st)
        return MOAT_EDB;
    bool removed = false;
    int rc = step_write(db, st, &removed);
    if (rc != MOAT_OK || !removed)
        return rc;
    /* The followee's posts leave the timeline: one primary-key probe each
     * (home is keyed by user and sequence). */
    st = prep(db, "unfollow_posts",
              "DELETE FROM home WHERE user_id = ?1 AND seq IN "
              "(SELECT seq FROM posts WHERE author_id = ?2)",
              follower, followee);
    if (!st)
        return MOAT_EDB;
    return step_write(db, st, NULL);
}

/* ---- reads ---- */

int tl_store_home(struct moat_db *db, const char *user, int64_t before,
                  size_t limit, struct moat_buf *out, size_t *n, int64_t *last,
                  bool *more)
{
    /* The fanned-out rows, merged with the posts of followed authors that
     * were not fanned out (posts_merged holds only those; SQLite is told
     * so, PostgreSQL's planner finds it). One more row than asked tells
     * whether older ones exist. */
#define HOME_SQL(merged)                                                       \
    "SELECT p.doc, t.seq FROM ("                                               \
    "  SELECT seq, post_id FROM home WHERE user_id = ?1 AND seq < ?2"          \
    "  UNION ALL"                                                              \
    "  SELECT m.seq, m.post_id FROM follows f"                                 \
    "  JOIN posts m " merged " ON m.author_id = f.followee"                    \
    "    AND m.fanned_out = 0 AND m.seq < ?2"                                  \
    "  WHERE f.follower = ?1"                                                  \
    "  ORDER BY 1 DESC LIMIT ?3"                                               \
    ") t JOIN posts p ON p.post_id = t.post_id ORDER BY t.seq DESC"
    struct moat_stmt *st = moat_db_prepare_dialect(
        db, "home", HOME_SQL("INDEXED BY posts_merged"), HOME_SQL(""));
#undef HOME_SQL
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, user);
    moat_stmt_bind_int64(st, 2, before);
    moat_stmt_bind_int64(st, 3, (int64_t)limit + 1);
    int step;
    *n = 0;
    *more = false;
    while ((step = moat_stmt_step(st)) == SQLITE_ROW) {
        if (*n == limit) {
            *more = true;
            break;
        }
        if (*n)
            moat_buf_addch(out, ',');
        moat_buf_addstr(out, moat_stmt_text(st, 0));
        *last = moat_stmt_int64(st, 1);
        (*n)++;
    }
    moat_stmt_reset(st);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return moat_db_error(db, step);
    return MOAT_OK;
}
