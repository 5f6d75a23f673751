/* social_store.c - the social index's schema and queries (social_store.h). */
#include "moat/common.h"

#include <string.h>

#include "moat/events.h"
#include "social_store.h"

/*
 * Schema migrations (checksummed once applied: append, never edit).
 *
 * As in the catalog index (store.c): each table has an INTEGER PRIMARY KEY
 * rid for its FTS5 external-content index and a unique id beside it; the
 * triggers are the only writers of the indexes; the fts5vocab tables let
 * replay --verify compare the term statistics of two indexes. A post never
 * changes, so posts has no update trigger. A profile without a handle
 * keeps its row (handle NULL: nothing indexed, not listed), so that the
 * feed-sequence guard still sees it. apply_log is written by test builds
 * only but exists in every build.
 */
static const struct moat_migration migrations[] = {
    {1, "create posts, profiles and their full-text indexes",
     "CREATE TABLE posts (\n"
     "    rid INTEGER PRIMARY KEY,\n"
     "    id TEXT NOT NULL UNIQUE,\n"
     "    author_id TEXT NOT NULL,\n"
     "    text TEXT NOT NULL,\n"
     "    mentions TEXT NOT NULL,\n"
     "    doc TEXT NOT NULL\n"
     "        CHECK (json_valid(doc) AND json_type(doc) = 'object'),\n"
     "    created_at INTEGER NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    event_time_ms INTEGER NOT NULL,\n"
     "    applied_at_ms INTEGER NOT NULL\n"
     ") STRICT;\n"
     "CREATE INDEX posts_created ON posts (created_at, id);\n"
     "CREATE INDEX posts_author ON posts (author_id, created_at);\n"
     "CREATE VIRTUAL TABLE posts_fts USING fts5 (\n"
     "    text, mentions, content = 'posts', content_rowid = 'rid',\n"
     "    " SRCH_FTS_OPTIONS ");\n"
     "CREATE VIRTUAL TABLE posts_fts_terms USING fts5vocab (posts_fts, "
     "'row');\n"
     "CREATE TRIGGER posts_fts_insert AFTER INSERT ON posts BEGIN\n"
     "    INSERT INTO posts_fts (rowid, text, mentions)\n"
     "    VALUES (new.rid, new.text, new.mentions);\n"
     "END;\n"
     "CREATE TRIGGER posts_fts_delete AFTER DELETE ON posts BEGIN\n"
     "    INSERT INTO posts_fts (posts_fts, rowid, text, mentions)\n"
     "    VALUES ('delete', old.rid, old.text, old.mentions);\n"
     "END;\n"
     "CREATE TABLE deleted_posts (\n"
     "    id TEXT NOT NULL PRIMARY KEY,\n"
     "    seq INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE profiles (\n"
     "    rid INTEGER PRIMARY KEY,\n"
     "    id TEXT NOT NULL UNIQUE,\n"
     "    handle TEXT,\n"
     "    version INTEGER NOT NULL,\n"
     "    updated_at INTEGER NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    event_time_ms INTEGER NOT NULL,\n"
     "    applied_at_ms INTEGER NOT NULL\n"
     ") STRICT;\n"
     "CREATE INDEX profiles_handle ON profiles (handle, id);\n"
     "CREATE VIRTUAL TABLE profiles_fts USING fts5 (\n"
     "    handle, content = 'profiles', content_rowid = 'rid',\n"
     "    " SRCH_FTS_OPTIONS ");\n"
     "CREATE VIRTUAL TABLE profiles_fts_terms USING fts5vocab (profiles_fts, "
     "'row');\n"
     "CREATE TRIGGER profiles_fts_insert AFTER INSERT ON profiles BEGIN\n"
     "    INSERT INTO profiles_fts (rowid, handle) VALUES (new.rid,\n"
     "                                                    new.handle);\n"
     "END;\n"
     "CREATE TRIGGER profiles_fts_delete AFTER DELETE ON profiles BEGIN\n"
     "    INSERT INTO profiles_fts (profiles_fts, rowid, handle)\n"
     "    VALUES ('delete', old.rid, old.handle);\n"
     "END;\n"
     "CREATE TRIGGER profiles_fts_update AFTER UPDATE OF handle ON profiles\n"
     "BEGIN\n"
     "    INSERT INTO profiles_fts (profiles_fts, rowid, handle)\n"
     "    VALUES ('delete', old.rid, old.handle);\n"
     "    INSERT INTO profiles_fts (rowid, handle) VALUES (new.rid,\n"
     "                                                    new.handle);\n"
     "END;\n"
     "CREATE TABLE apply_log (\n"
     "    source TEXT NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    applications INTEGER NOT NULL,\n"
     "    PRIMARY KEY (source, seq)\n"
     ") STRICT, WITHOUT ROWID;\n",
     NULL},
    {2, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA, NULL},
};

const struct moat_migration *soc_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

/* ---- writes (inside the consumer's transaction) ---- */

int soc_store_post_add(struct moat_db *db, const struct soc_post *p)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "post_add",
        "INSERT INTO posts (id, author_id, text, mentions, doc, created_at, "
        "seq, event_time_ms, applied_at_ms) "
        "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 "
        "WHERE NOT EXISTS (SELECT 1 FROM deleted_posts "
        "WHERE id = ?1 AND seq > ?7) "
        "ON CONFLICT (id) DO NOTHING");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p->author_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, p->text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, p->mentions, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, p->doc, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, p->created_at);
    sqlite3_bind_int64(st, 7, p->seq);
    sqlite3_bind_int64(st, 8, p->event_time_ms);
    sqlite3_bind_int64(st, 9, moat_wall_ms());
    return srch_step_done(db, stmt);
}

int soc_store_post_delete(struct moat_db *db, const char *id, int64_t seq)
{
    bool applied; /* a post already gone is fine */
    return srch_store_remove(db, "posts", "deleted_posts", id, seq, &applied);
}

int soc_store_profile_put(struct moat_db *db, const struct soc_profile *p)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "profile_put",
        "INSERT INTO profiles (id, handle, version, updated_at, seq, "
        "event_time_ms, applied_at_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) "
        "ON CONFLICT (id) DO UPDATE SET handle = excluded.handle, "
        "version = excluded.version, updated_at = excluded.updated_at, "
        "seq = excluded.seq, event_time_ms = excluded.event_time_ms, "
        "applied_at_ms = excluded.applied_at_ms "
        "WHERE excluded.seq >= profiles.seq");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, p->user_id, -1, SQLITE_STATIC);
    if (p->handle)
        sqlite3_bind_text(st, 2, p->handle, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_int64(st, 3, p->version);
    sqlite3_bind_int64(st, 4, p->updated_at);
    sqlite3_bind_int64(st, 5, p->seq);
    sqlite3_bind_int64(st, 6, p->event_time_ms);
    sqlite3_bind_int64(st, 7, moat_wall_ms());
    return srch_step_done(db, stmt);
}

int soc_store_reset(struct moat_db *db)
{
    /* Row by row through the triggers: an external-content index must be
     * told the old text of every row it forgets. */
    return moat_db_exec(db, "view_reset",
                        "DELETE FROM posts; DELETE FROM deleted_posts; "
                        "DELETE FROM profiles; DELETE FROM apply_log;");
}

/* ---- reads ---- */

/* bm25 weights: a mention counts more than a word of the text. */
static const struct srch_corpus posts = {
    .name = "posts",
    .table = "posts",
    .fts = "posts_fts",
    .bm25 = "1.0, 4.0",
    .item = "p.doc",
    .list_key = "created_at",
    .list_desc = true,
};

static const struct srch_corpus profiles = {
    .name = "profiles",
    .table = "profiles",
    .fts = "profiles_fts",
    .bm25 = "1.0",
    .item = "json_object('user_id', p.id, 'handle', p.handle, "
            "'version', p.version, 'updated_at', p.updated_at)",
    .list_key = "handle",
};

static void bind_author(sqlite3_stmt *st, const void *arg)
{
    srch_bind_text(st, ":author", arg);
}

int soc_store_search_posts(struct moat_db *db, const struct srch_page *pg,
                           void *arg, struct srch_hit **hits, size_t *n)
{
    const struct srch_filter author = {
        .mask = 1,
        .sql = " AND p.author_id = :author",
        .bind = bind_author,
        .arg = arg,
    };
    return srch_search(db, &posts, pg, arg ? &author : NULL, hits, n);
}

int soc_store_search_profiles(struct moat_db *db, const struct srch_page *pg,
                              void *arg, struct srch_hit **hits, size_t *n)
{
    MOAT_UNUSED(arg);
    /* A profile without a handle has nothing to find or show. */
    static const struct srch_filter has_handle = {
        .mask = 1,
        .sql = " AND p.handle IS NOT NULL",
    };
    return srch_search(db, &profiles, pg, &has_handle, hits, n);
}

/* ---- compare (replay --verify) ---- */

int soc_store_compare(struct moat_db *live, struct moat_db *scratch,
                      json_t *diffs, size_t max_diffs)
{
    /* Everything the events decide; not applied_at_ms (when it ran). */
    static const struct moat_view_table tables[] = {
        {"compare_posts",
         "SELECT id, author_id, text, mentions, doc, created_at, seq, "
         "event_time_ms FROM posts ORDER BY id",
         "post"},
        {"compare_post_tombstones",
         "SELECT id, seq FROM deleted_posts ORDER BY id", "deleted post"},
        {"compare_profiles",
         "SELECT id, handle, version, updated_at, seq, event_time_ms "
         "FROM profiles ORDER BY id",
         "profile"},
        {"compare_post_terms",
         "SELECT term, doc, cnt FROM posts_fts_terms ORDER BY term",
         "post index term"},
        {"compare_profile_terms",
         "SELECT term, doc, cnt FROM profiles_fts_terms ORDER BY term",
         "profile index term"},
    };
    srch_check_index(live, "posts_fts", "live", diffs, max_diffs);
    srch_check_index(scratch, "posts_fts", "rebuilt", diffs, max_diffs);
    srch_check_index(live, "profiles_fts", "live", diffs, max_diffs);
    srch_check_index(scratch, "profiles_fts", "rebuilt", diffs, max_diffs);
    return moat_view_compare_tables(live, scratch, tables,
                                    MOAT_ARRAY_LEN(tables), diffs, max_diffs);
}
