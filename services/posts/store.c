/* store.c - posts' schema and queries (see store.h). */
#include "moat/common.h"

#include "contracts/posts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/db.h"
#include "moat/log.h"
#include "store.h"

struct pst_store {
    struct moat_db *db;         /* owned */
    struct moat_outbox *outbox; /* owned; borrows db */
};

#define DB_FILE "posts.db"

/*
 * Schema migrations: never edit one that has shipped, append a new one.
 *
 * posts keeps live posts and tombstones: a deleted post keeps its id,
 * author and times (so the feed's PostCreated / PostDeleted pair still
 * names a row, and the id is never reused) but loses its text and media.
 * Ids sort by creation time, so (author_id, id) is the timeline index.
 * post_mentions and post_urls hold what the parser found, in text order;
 * post_mentions is indexed by name for "posts mentioning X".
 * idempotency maps (author, Idempotency-Key) to the post it created.
 *
 * Each migration has its PostgreSQL text beside the SQLite one (moat/db.h):
 * the same tables with BIGINT integers, json_typeof for the array check,
 * lower(name) indexed where SQLite has COLLATE NOCASE, and post ids in
 * the "C" collation (byte order, as SQLite compares: the pages' order).
 */
static const struct moat_migration migrations[] = {
    {1, "posts, mentions, urls, idempotency",
     "CREATE TABLE posts (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 31 AND substr(id, 1, 5) = 'post_'),\n"
     "    author_id TEXT NOT NULL CHECK (length(author_id) BETWEEN 1 AND 63),\n"
     "    text TEXT,\n"
     "    media_urls TEXT NOT NULL DEFAULT '[]'\n"
     "        CHECK (json_valid(media_urls) AND\n"
     "               json_type(media_urls) = 'array'),\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    deleted_at_ms INTEGER,\n"
     "    deleted_by TEXT,\n"
     "    CHECK ((text IS NULL) = (deleted_at_ms IS NOT NULL))\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX posts_author ON posts (author_id, id);\n"
     "CREATE TABLE post_mentions (\n"
     "    post_id TEXT NOT NULL REFERENCES posts (id),\n"
     "    position INTEGER NOT NULL,\n"
     "    name TEXT NOT NULL COLLATE NOCASE,\n"
     "    PRIMARY KEY (post_id, position)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX post_mentions_name ON post_mentions (name, post_id);\n"
     "CREATE TABLE post_urls (\n"
     "    post_id TEXT NOT NULL REFERENCES posts (id),\n"
     "    position INTEGER NOT NULL,\n"
     "    url TEXT NOT NULL,\n"
     "    PRIMARY KEY (post_id, position)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE idempotency (\n"
     "    author_id TEXT NOT NULL,\n"
     "    key TEXT NOT NULL,\n"
     "    fingerprint TEXT NOT NULL,\n"
     "    post_id TEXT NOT NULL,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (author_id, key)\n"
     ") STRICT, WITHOUT ROWID;\n",
     "CREATE TABLE posts (\n"
     "    id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 31 AND substr(id, 1, 5) = 'post_'),\n"
     "    author_id TEXT NOT NULL CHECK (length(author_id) BETWEEN 1 AND 63),\n"
     "    text TEXT,\n"
     "    media_urls TEXT NOT NULL DEFAULT '[]'\n"
     "        CHECK (json_typeof(media_urls::json) = 'array'),\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    deleted_at_ms BIGINT,\n"
     "    deleted_by TEXT,\n"
     "    CHECK ((text IS NULL) = (deleted_at_ms IS NOT NULL))\n"
     ");\n"
     "CREATE INDEX posts_author ON posts (author_id, id);\n"
     "CREATE TABLE post_mentions (\n"
     "    post_id TEXT COLLATE \"C\" NOT NULL REFERENCES posts (id),\n"
     "    position BIGINT NOT NULL,\n"
     "    name TEXT NOT NULL,\n"
     "    PRIMARY KEY (post_id, position)\n"
     ");\n"
     "CREATE INDEX post_mentions_name ON post_mentions (lower(name), "
     "post_id);\n"
     "CREATE TABLE post_urls (\n"
     "    post_id TEXT COLLATE \"C\" NOT NULL REFERENCES posts (id),\n"
     "    position BIGINT NOT NULL,\n"
     "    url TEXT NOT NULL,\n"
     "    PRIMARY KEY (post_id, position)\n"
     ");\n"
     "CREATE TABLE idempotency (\n"
     "    author_id TEXT NOT NULL,\n"
     "    key TEXT NOT NULL,\n"
     "    fingerprint TEXT NOT NULL,\n"
     "    post_id TEXT NOT NULL,\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    PRIMARY KEY (author_id, key)\n"
     ");\n"},
    {2, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
};

int pst_store_open(struct pst_store **out, const char *data_dir,
                   const char *dsn, struct event_base *base, const char *source,
                   const struct moat_outbox_options *outbox,
                   struct moat_metrics *metrics)
{
    struct pst_store *s = moat_xcalloc(1, sizeof(*s));
    const struct moat_db_options opts = {.dsn = dsn};
    int rc = moat_db_open_migrated(&s->db, data_dir, DB_FILE, &opts, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc == MOAT_OK)
        rc = moat_outbox_new(&s->outbox, base, s->db, source, outbox, metrics);
    if (rc != MOAT_OK) {
        pst_store_close(s);
        return rc;
    }
    *out = s;
    return MOAT_OK;
}

void pst_store_close(struct pst_store *s)
{
    if (!s)
        return;
    moat_outbox_free(s->outbox); /* borrows the database: first */
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

struct moat_outbox *pst_store_outbox(struct pst_store *s)
{
    return s->outbox;
}

bool pst_store_ready(struct pst_store *s, const char **why)
{
    return moat_db_migrated(s ? s->db : NULL, migrations,
                            MOAT_ARRAY_LEN(migrations), why);
}

void pst_post_release(struct pst_post *p)
{
    free(p->text);
    json_decref(p->mentions);
    json_decref(p->urls);
    json_decref(p->media_urls);
    p->text = NULL;
    p->mentions = p->urls = p->media_urls = NULL;
}

void pst_posts_free(struct pst_post *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        pst_post_release(&items[i]);
    free(items);
}

/* ---- rows ---- */

static int step_done(struct moat_db *db, struct moat_stmt *st)
{
    int src = moat_stmt_step(st);
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}

/* A JSON array column, or an empty array for NULL / bad JSON (logged). */
static json_t *col_array(struct moat_stmt *st, int i)
{
    const char *s = moat_stmt_text(st, i);
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    if (!json_is_array(j)) {
        if (s)
            moat_log(MOAT_LOG_ERROR, "stored post column is not an array",
                     "{s:i}", "column", i);
        json_decref(j);
        j = json_array();
    }
    return j;
}

/*
 * The columns of a post; mentions and urls in text order as JSON arrays
 * (aggregated by json_group_array on SQLite, json_agg on PostgreSQL).
 */
#define POST_COLUMNS_WITH(list)                                                \
    "id, author_id, text, media_urls, created_at_ms, "                         \
    "coalesce(deleted_at_ms, 0), " list("name", "post_mentions") ", " list(    \
        "url", "post_urls")
#define LIST_SQLITE(col, table)                                                \
    "(SELECT json_group_array(" col ") FROM (SELECT " col " FROM " table       \
    "    WHERE post_id = posts.id ORDER BY position))"
#define LIST_PG(col, table)                                                    \
    "(SELECT coalesce(json_agg(" col " ORDER BY position), '[]')::text "       \
    "    FROM " table " WHERE post_id = posts.id)"
#define POST_COLUMNS    POST_COLUMNS_WITH(LIST_SQLITE)
#define POST_COLUMNS_PG POST_COLUMNS_WITH(LIST_PG)

static void row_to_post(struct moat_stmt *st, struct pst_post *p)
{
    const char *text = moat_stmt_text(st, 2);
    memset(p, 0, sizeof(*p));
    snprintf(p->id, sizeof(p->id), "%s", moat_stmt_text(st, 0));
    snprintf(p->author_id, sizeof(p->author_id), "%s", moat_stmt_text(st, 1));
    p->text = text ? moat_xstrdup(text) : NULL;
    p->media_urls = col_array(st, 3);
    p->created_ms = moat_stmt_int64(st, 4);
    p->deleted_ms = moat_stmt_int64(st, 5);
    p->mentions = col_array(st, 6);
    p->urls = col_array(st, 7);
}

int pst_store_get(struct pst_store *s, const char *id, struct pst_post *out)
{
    struct moat_stmt *st = moat_db_prepare_dialect(
        s->db, "post_get", "SELECT " POST_COLUMNS " FROM posts WHERE id = ?1",
        "SELECT " POST_COLUMNS_PG " FROM posts WHERE id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW)
        row_to_post(st, out);
    else
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, src);
    /* Reset at once: an unfinished SELECT pins a WAL read snapshot. */
    moat_stmt_reset(st);
    return rc;
}

/* ---- writes ---- */

/* The data of PostCreated: the post as the API shows it, id as post_id. */
static json_t *created_data(const struct pst_post *p)
{
    return json_pack("{s:s, s:s, s:s, s:O, s:O, s:O, s:I}", "post_id", p->id,
                     "author_id", p->author_id, "text", p->text, "mentions",
                     p->mentions, "urls", p->urls, "media_urls", p->media_urls,
                     "created_at", (json_int_t)(p->created_ms / 1000));
}

/* Append one event of the open transaction; takes data. */
static int emit(struct pst_store *s, const char *type, const char *subject,
                json_t *data)
{
    if (!data)
        moat_die("cannot build the data of a post event");
    int rc = moat_outbox_append(s->outbox, type, subject, POSTS_POST_SCHEMA,
                                data, NULL);
    json_decref(data);
    return rc;
}

/* Insert the strings of list as (post_id, position, value) rows. */
static int insert_list(struct pst_store *s, const char *name, const char *sql,
                       const char *post_id, json_t *list)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        struct moat_stmt *st = moat_db_prepare(s->db, name, sql);
        if (!st)
            return MOAT_EDB;
        moat_stmt_bind_text(st, 1, post_id);
        moat_stmt_bind_int64(st, 2, (int64_t)i);
        moat_stmt_bind_text(st, 3, json_string_value(v));
        int rc = step_done(s->db, st);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

static int insert_post(struct pst_store *s, const struct pst_post *p)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "post_insert",
        "INSERT INTO posts (id, author_id, text, media_urls, created_at_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!st)
        return MOAT_EDB;
    char *media = json_dumps(p->media_urls, JSON_COMPACT);
    if (!media)
        moat_die("cannot serialise media URLs");
    moat_stmt_bind_text(st, 1, p->id);
    moat_stmt_bind_text(st, 2, p->author_id);
    moat_stmt_bind_text(st, 3, p->text);
    moat_stmt_bind_text(st, 4, media);
    moat_stmt_bind_int64(st, 5, p->created_ms);
    int rc = step_done(s->db, st);
    free(media);
    if (rc == MOAT_OK)
        rc = insert_list(s, "mention_insert",
                         "INSERT INTO post_mentions (post_id, position, name) "
                         "VALUES (?1, ?2, ?3)",
                         p->id, p->mentions);
    if (rc == MOAT_OK)
        rc = insert_list(s, "url_insert",
                         "INSERT INTO post_urls (post_id, position, url) "
                         "VALUES (?1, ?2, ?3)",
                         p->id, p->urls);
    return rc;
}

static int insert_idem(struct pst_store *s, const struct pst_post *p,
                       const char *key, const char *fingerprint)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "idem_insert",
        "INSERT INTO idempotency (author_id, key, fingerprint, post_id, "
        "created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, p->author_id);
    moat_stmt_bind_text(st, 2, key);
    moat_stmt_bind_text(st, 3, fingerprint);
    moat_stmt_bind_text(st, 4, p->id);
    moat_stmt_bind_int64(st, 5, p->created_ms);
    return step_done(s->db, st);
}

/* Commit, or roll back after an error; wake feed readers on success. */
static int finish(struct pst_store *s, int rc)
{
    if (rc == MOAT_OK)
        rc = moat_db_commit(s->db);
    if (rc != MOAT_OK) {
        moat_db_rollback(s->db);
        return rc;
    }
    moat_outbox_committed(s->outbox);
    return MOAT_OK;
}

int pst_store_create(struct pst_store *s, const struct pst_post *p,
                     const char *idem_key, const char *fingerprint)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    if (idem_key)
        rc = insert_idem(s, p, idem_key, fingerprint);
    if (rc == MOAT_OK)
        rc = insert_post(s, p);
    /* Outbox: PostCreated commits (or vanishes) with the post. */
    if (rc == MOAT_OK)
        rc = emit(s, POSTS_POST_CREATED, p->id, created_data(p));
    return finish(s, rc);
}

int pst_store_delete(struct pst_store *s, const char *id,
                     const char *deleted_by, int64_t now_ms)
{
    struct pst_post p = {0};
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    rc = pst_store_get(s, id, &p);
    if (rc == MOAT_OK && p.deleted_ms)
        rc = MOAT_ENOTFOUND;
    static const char *const sql[][2] = {
        {"mentions_delete", "DELETE FROM post_mentions WHERE post_id = ?1"},
        {"urls_delete", "DELETE FROM post_urls WHERE post_id = ?1"},
        {"post_tombstone", "UPDATE posts SET text = NULL, media_urls = '[]', "
                           "deleted_at_ms = ?2, deleted_by = ?3 WHERE id = ?1"},
    };
    for (size_t i = 0; rc == MOAT_OK && i < MOAT_ARRAY_LEN(sql); i++) {
        struct moat_stmt *st = moat_db_prepare(s->db, sql[i][0], sql[i][1]);
        if (!st) {
            rc = MOAT_EDB;
            break;
        }
        moat_stmt_bind_text(st, 1, id);
        if (i == 2) {
            moat_stmt_bind_int64(st, 2, now_ms);
            moat_stmt_bind_text(st, 3, deleted_by);
        }
        rc = step_done(s->db, st);
    }
    /* Outbox: PostDeleted commits (or vanishes) with the tombstone. */
    if (rc == MOAT_OK)
        rc = emit(
            s, POSTS_POST_DELETED, id,
            json_pack("{s:s, s:s}", "post_id", id, "author_id", p.author_id));
    pst_post_release(&p);
    return finish(s, rc);
}

/* ---- reads ---- */

int pst_store_timeline(struct pst_store *s, const char *author,
                       const char *before, size_t limit,
                       struct pst_post **items, size_t *n)
{
    *items = NULL;
    *n = 0;
#define TIMELINE_WHERE                                                         \
    " FROM posts WHERE author_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR id < "  \
    "?2) "                                                                     \
    "AND deleted_at_ms IS NULL ORDER BY id DESC LIMIT ?3"
    struct moat_stmt *st = moat_db_prepare_dialect(
        s->db, "timeline", "SELECT " POST_COLUMNS TIMELINE_WHERE,
        "SELECT " POST_COLUMNS_PG TIMELINE_WHERE);
#undef TIMELINE_WHERE
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, author);
    if (before)
        moat_stmt_bind_text(st, 2, before);
    moat_stmt_bind_int64(st, 3, (int64_t)limit);
    struct pst_post *out = moat_xcalloc(limit ? limit : 1, sizeof(*out));
    size_t count = 0;
    int src = SQLITE_DONE;
    while (count < limit && (src = moat_stmt_step(st)) == SQLITE_ROW)
        row_to_post(st, &out[count++]);
    int rc = count == limit || src == SQLITE_DONE ? MOAT_OK
                                                  : moat_db_error(s->db, src);
    moat_stmt_reset(st);
    if (rc != MOAT_OK) {
        pst_posts_free(out, count);
        return rc;
    }
    *items = out;
    *n = count;
    return MOAT_OK;
}

int pst_idem_get(struct pst_store *s, const char *author, const char *key,
                 char fingerprint[65], char post_id[PST_ID_LEN + 1])
{
    struct moat_stmt *st =
        moat_db_prepare(s->db, "idem_get",
                        "SELECT fingerprint, post_id FROM idempotency "
                        "WHERE author_id = ?1 AND key = ?2");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, author);
    moat_stmt_bind_text(st, 2, key);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW) {
        snprintf(fingerprint, 65, "%s", moat_stmt_text(st, 0));
        snprintf(post_id, PST_ID_LEN + 1, "%s", moat_stmt_text(st, 1));
    } else {
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, src);
    }
    moat_stmt_reset(st);
    return rc;
}

struct moat_db *pst_store_db(struct pst_store *s)
{
    return s->db;
}
