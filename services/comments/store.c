/* store.c - comments' schema and queries (see store.h). */
#include "moat/common.h"

#include "contracts/comments.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/db.h"
#include "moat/log.h"
#include "store.h"

struct cmt_store {
    struct moat_db *db;         /* owned */
    struct moat_outbox *outbox; /* owned; borrows db */
};

#define DB_FILE "comments.db"

/*
 * Schema migrations: never edit one that has shipped, append a new one.
 *
 * comments keeps live comments and tombstones (text NULL, deleted_* set):
 * a tombstone keeps its id, target, author and times so its events still
 * name a row and its replies keep their parent. Ids sort by creation
 * time: (target, parent, id) is the thread index. A message's target is
 * (message id, conversation id); a post's conversation_id is ''.
 * moderation_targets: kind 'post' or 'conversation' whose comments start
 * pending. user_flags: users whose comments start pending, or who may not
 * comment at all (suspended by a moderation action of users' feed).
 * applied_actions: every moderation action applied, by action_id, so a
 * second delivery changes nothing. post_owners: each commented post's
 * author as posts answered (a post's author never changes), so reads need
 * not ask posts who moderates a post's comments.
 *
 * The same SQL runs on SQLite and PostgreSQL (moat/db.h); each migration
 * has both texts (BIGINT integers, no STRICT / WITHOUT ROWID, ids in
 * the "C" collation: byte order, as SQLite compares, for the pages).
 */
static const struct moat_migration migrations[] = {
    {1, "comments, moderation settings, actions, idempotency",
     "CREATE TABLE comments (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'cmt_'),\n"
     "    target_kind TEXT NOT NULL CHECK (target_kind IN ('post', "
     "'message')),\n"
     "    target_id TEXT NOT NULL CHECK (length(target_id) BETWEEN 1 AND 63),\n"
     "    conversation_id TEXT NOT NULL DEFAULT '',\n"
     "    parent_id TEXT REFERENCES comments (id),\n"
     "    author_id TEXT NOT NULL CHECK (length(author_id) BETWEEN 1 AND 63),\n"
     "    text TEXT,\n"
     "    status TEXT NOT NULL\n"
     "        CHECK (status IN ('pending', 'approved', 'rejected')),\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    moderated_at_ms INTEGER,\n"
     "    moderated_by TEXT,\n"
     "    deleted_at_ms INTEGER,\n"
     "    deleted_by TEXT,\n"
     "    deleted_reason TEXT,\n"
     "    CHECK ((text IS NULL) = (deleted_at_ms IS NOT NULL))\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX comments_thread ON comments\n"
     "    (target_kind, target_id, conversation_id, parent_id, id);\n"
     "CREATE INDEX comments_replies ON comments (parent_id, id);\n"
     "CREATE TABLE moderation_targets (\n"
     "    kind TEXT NOT NULL CHECK (kind IN ('post', 'conversation')),\n"
     "    id TEXT NOT NULL,\n"
     "    requires_moderation INTEGER NOT NULL,\n"
     "    set_by TEXT NOT NULL,\n"
     "    set_at_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (kind, id)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE user_flags (\n"
     "    user_id TEXT NOT NULL PRIMARY KEY,\n"
     "    requires_moderation INTEGER NOT NULL DEFAULT 0,\n"
     "    suspended INTEGER NOT NULL DEFAULT 0,\n"
     "    reason TEXT,\n"
     "    updated_by TEXT NOT NULL,\n"
     "    updated_at_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE applied_actions (\n"
     "    action_id TEXT NOT NULL PRIMARY KEY,\n"
     "    action TEXT NOT NULL,\n"
     "    outcome TEXT NOT NULL,\n"
     "    applied_at_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE post_owners (\n"
     "    post_id TEXT NOT NULL PRIMARY KEY,\n"
     "    owner_id TEXT NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE idempotency (\n"
     "    author_id TEXT NOT NULL,\n"
     "    key TEXT NOT NULL,\n"
     "    fingerprint TEXT NOT NULL,\n"
     "    comment_id TEXT NOT NULL,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (author_id, key)\n"
     ") STRICT, WITHOUT ROWID;\n",
     "CREATE TABLE comments (\n"
     "    id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'cmt_'),\n"
     "    target_kind TEXT NOT NULL CHECK (target_kind IN ('post', "
     "'message')),\n"
     "    target_id TEXT NOT NULL CHECK (length(target_id) BETWEEN 1 AND 63),\n"
     "    conversation_id TEXT NOT NULL DEFAULT '',\n"
     "    parent_id TEXT COLLATE \"C\" REFERENCES comments (id),\n"
     "    author_id TEXT NOT NULL CHECK (length(author_id) BETWEEN 1 AND 63),\n"
     "    text TEXT,\n"
     "    status TEXT NOT NULL\n"
     "        CHECK (status IN ('pending', 'approved', 'rejected')),\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    moderated_at_ms BIGINT,\n"
     "    moderated_by TEXT,\n"
     "    deleted_at_ms BIGINT,\n"
     "    deleted_by TEXT,\n"
     "    deleted_reason TEXT,\n"
     "    CHECK ((text IS NULL) = (deleted_at_ms IS NOT NULL))\n"
     ");\n"
     "CREATE INDEX comments_thread ON comments\n"
     "    (target_kind, target_id, conversation_id, parent_id, id);\n"
     "CREATE INDEX comments_replies ON comments (parent_id, id);\n"
     "CREATE TABLE moderation_targets (\n"
     "    kind TEXT NOT NULL CHECK (kind IN ('post', 'conversation')),\n"
     "    id TEXT NOT NULL,\n"
     "    requires_moderation BIGINT NOT NULL,\n"
     "    set_by TEXT NOT NULL,\n"
     "    set_at_ms BIGINT NOT NULL,\n"
     "    PRIMARY KEY (kind, id)\n"
     ");\n"
     "CREATE TABLE user_flags (\n"
     "    user_id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,\n"
     "    requires_moderation BIGINT NOT NULL DEFAULT 0,\n"
     "    suspended BIGINT NOT NULL DEFAULT 0,\n"
     "    reason TEXT,\n"
     "    updated_by TEXT NOT NULL,\n"
     "    updated_at_ms BIGINT NOT NULL\n"
     ");\n"
     "CREATE TABLE applied_actions (\n"
     "    action_id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,\n"
     "    action TEXT NOT NULL,\n"
     "    outcome TEXT NOT NULL,\n"
     "    applied_at_ms BIGINT NOT NULL\n"
     ");\n"
     "CREATE TABLE post_owners (\n"
     "    post_id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,\n"
     "    owner_id TEXT NOT NULL\n"
     ");\n"
     "CREATE TABLE idempotency (\n"
     "    author_id TEXT NOT NULL,\n"
     "    key TEXT NOT NULL,\n"
     "    fingerprint TEXT NOT NULL,\n"
     "    comment_id TEXT NOT NULL,\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    PRIMARY KEY (author_id, key)\n"
     ");\n"},
    {2, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
    {3, "consumer cursors (users' feed)", MOAT_CONSUMER_SCHEMA,
     MOAT_CONSUMER_SCHEMA_PG},
};

int cmt_store_open(struct cmt_store **out, const char *data_dir,
                   const char *dsn, struct event_base *base, const char *source,
                   const struct moat_outbox_options *outbox,
                   struct moat_metrics *metrics)
{
    struct cmt_store *s = moat_xcalloc(1, sizeof(*s));
    const struct moat_db_options opts = {.dsn = dsn};
    int rc = moat_db_open_migrated(&s->db, data_dir, DB_FILE, &opts, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc == MOAT_OK)
        rc = moat_outbox_new(&s->outbox, base, s->db, source, outbox, metrics);
    if (rc != MOAT_OK) {
        cmt_store_close(s);
        return rc;
    }
    *out = s;
    return MOAT_OK;
}

void cmt_store_close(struct cmt_store *s)
{
    if (!s)
        return;
    moat_outbox_free(s->outbox); /* borrows the database: first */
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

struct moat_outbox *cmt_store_outbox(struct cmt_store *s)
{
    return s->outbox;
}

struct moat_db *cmt_store_db(struct cmt_store *s)
{
    return s->db;
}

bool cmt_store_ready(struct cmt_store *s, const char **why)
{
    return moat_db_migrated(s ? s->db : NULL, migrations,
                            MOAT_ARRAY_LEN(migrations), why);
}

void cmt_comment_release(struct cmt_comment *c)
{
    free(c->text);
    free(c->deleted_reason);
    c->text = c->deleted_reason = NULL;
}

void cmt_comments_free(struct cmt_comment *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        cmt_comment_release(&items[i]);
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

static void col_copy(struct moat_stmt *st, int i, char *out, size_t cap)
{
    const char *v = moat_stmt_text(st, i);
    snprintf(out, cap, "%s", v ? v : "");
}

static char *col_dup(struct moat_stmt *st, int i)
{
    const char *v = moat_stmt_text(st, i);
    return v ? moat_xstrdup(v) : NULL;
}

#define COMMENT_COLUMNS                                                        \
    "id, target_kind, target_id, conversation_id, coalesce(parent_id, ''), "   \
    "author_id, text, status, created_at_ms, coalesce(moderated_at_ms, 0), "   \
    "coalesce(moderated_by, ''), coalesce(deleted_at_ms, 0), "                 \
    "coalesce(deleted_by, ''), deleted_reason"

static void row_to_comment(struct moat_stmt *st, struct cmt_comment *c)
{
    memset(c, 0, sizeof(*c));
    col_copy(st, 0, c->id, sizeof(c->id));
    col_copy(st, 1, c->target.kind, sizeof(c->target.kind));
    col_copy(st, 2, c->target.id, sizeof(c->target.id));
    col_copy(st, 3, c->target.conversation_id,
             sizeof(c->target.conversation_id));
    col_copy(st, 4, c->parent_id, sizeof(c->parent_id));
    col_copy(st, 5, c->author_id, sizeof(c->author_id));
    c->text = col_dup(st, 6);
    col_copy(st, 7, c->status, sizeof(c->status));
    c->created_ms = moat_stmt_int64(st, 8);
    c->moderated_ms = moat_stmt_int64(st, 9);
    col_copy(st, 10, c->moderated_by, sizeof(c->moderated_by));
    c->deleted_ms = moat_stmt_int64(st, 11);
    col_copy(st, 12, c->deleted_by, sizeof(c->deleted_by));
    c->deleted_reason = col_dup(st, 13);
}

int cmt_store_get(struct cmt_store *s, const char *id, struct cmt_comment *out)
{
    struct moat_stmt *st = moat_db_prepare(s->db, "comment_get",
                                           "SELECT " COMMENT_COLUMNS
                                           " FROM comments WHERE id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW)
        row_to_comment(st, out);
    else
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, src);
    /* Reset at once: an unfinished SELECT pins a WAL read snapshot. */
    moat_stmt_reset(st);
    return rc;
}

/* One integer of a one-row query with text parameters p1, p2 (p2 may be
 * NULL); *out = dflt when there is no row. */
static int query_int(struct cmt_store *s, const char *name, const char *sql,
                     const char *p1, const char *p2, int64_t dflt, int64_t *out)
{
    struct moat_stmt *st = moat_db_prepare(s->db, name, sql);
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, p1);
    if (p2)
        moat_stmt_bind_text(st, 2, p2);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    *out = dflt;
    if (src == SQLITE_ROW)
        *out = moat_stmt_int64(st, 0);
    else if (src != SQLITE_DONE)
        rc = moat_db_error(s->db, src);
    moat_stmt_reset(st);
    return rc;
}

/* ---- events ---- */

static json_t *target_json(const struct cmt_target *t)
{
    if (strcmp(t->kind, "message") == 0)
        return json_pack("{s:s, s:s, s:s}", "kind", t->kind, "conversation_id",
                         t->conversation_id, "message_id", t->id);
    return json_pack("{s:s, s:s}", "kind", t->kind, "id", t->id);
}

/* Append one event of the open transaction; takes data. */
static int emit(struct cmt_store *s, const char *type, const char *subject,
                json_t *data)
{
    if (!data)
        moat_die("cannot build the data of a comment event");
    int rc = moat_outbox_append(s->outbox, type, subject,
                                COMMENTS_COMMENT_SCHEMA, data, NULL);
    json_decref(data);
    return rc;
}

/* Commit, or roll back after an error; wake feed readers on success. */
static int finish(struct cmt_store *s, int rc)
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

/* ---- create ---- */

/* CMT_* when parent_id may not take a reply of c's author, or MOAT_OK. */
static int check_parent(struct cmt_store *s, const struct cmt_comment *c)
{
    struct cmt_comment p;
    int rc = cmt_store_get(s, c->parent_id, &p);
    if (rc == MOAT_ENOTFOUND)
        return CMT_BAD_PARENT;
    if (rc != MOAT_OK)
        return rc;
    if (strcmp(p.target.kind, c->target.kind) != 0 ||
        strcmp(p.target.id, c->target.id) != 0 ||
        strcmp(p.target.conversation_id, c->target.conversation_id) != 0 ||
        p.deleted_ms ||
        (strcmp(p.status, "approved") != 0 &&
         strcmp(p.author_id, c->author_id) != 0))
        rc = CMT_BAD_PARENT;
    else if (p.parent_id[0])
        rc = CMT_NESTED;
    cmt_comment_release(&p);
    if (rc != MOAT_OK)
        return rc;
    int64_t replies;
    rc = query_int(s, "replies_count",
                   "SELECT count(*) FROM comments WHERE parent_id = ?1",
                   c->parent_id, NULL, 0, &replies);
    if (rc == MOAT_OK && replies >= CMT_REPLIES_MAX)
        rc = CMT_THREAD_FULL;
    return rc;
}

/* Whether c starts pending: its target or its author requires it. */
static int needs_moderation(struct cmt_store *s, const struct cmt_comment *c,
                            bool *pending)
{
    bool message = strcmp(c->target.kind, "message") == 0;
    bool target = false;
    int rc = cmt_store_get_target(
        s, message ? "conversation" : "post",
        message ? c->target.conversation_id : c->target.id, &target);
    int64_t user = 0;
    if (rc == MOAT_OK)
        rc = query_int(s, "user_requires",
                       "SELECT requires_moderation FROM user_flags "
                       "WHERE user_id = ?1",
                       c->author_id, NULL, 0, &user);
    *pending = target || user;
    return rc;
}

static int insert_comment(struct cmt_store *s, const struct cmt_comment *c)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "comment_insert",
        "INSERT INTO comments (id, target_kind, target_id, conversation_id, "
        "parent_id, author_id, text, status, created_at_ms) "
        "VALUES (?1, ?2, ?3, ?4, nullif(?5, ''), ?6, ?7, ?8, ?9)");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, c->id);
    moat_stmt_bind_text(st, 2, c->target.kind);
    moat_stmt_bind_text(st, 3, c->target.id);
    moat_stmt_bind_text(st, 4, c->target.conversation_id);
    moat_stmt_bind_text(st, 5, c->parent_id);
    moat_stmt_bind_text(st, 6, c->author_id);
    moat_stmt_bind_text(st, 7, c->text);
    moat_stmt_bind_text(st, 8, c->status);
    moat_stmt_bind_int64(st, 9, c->created_ms);
    return step_done(s->db, st);
}

static int insert_idem(struct cmt_store *s, const struct cmt_comment *c,
                       const char *key, const char *fingerprint)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "idem_insert",
        "INSERT INTO idempotency (author_id, key, fingerprint, comment_id, "
        "created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, c->author_id);
    moat_stmt_bind_text(st, 2, key);
    moat_stmt_bind_text(st, 3, fingerprint);
    moat_stmt_bind_text(st, 4, c->id);
    moat_stmt_bind_int64(st, 5, c->created_ms);
    return step_done(s->db, st);
}

int cmt_store_create(struct cmt_store *s, struct cmt_comment *c,
                     const char *idem_key, const char *fingerprint)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    int64_t suspended = 0;
    rc = query_int(s, "user_suspended",
                   "SELECT suspended FROM user_flags WHERE user_id = ?1",
                   c->author_id, NULL, 0, &suspended);
    if (rc == MOAT_OK && suspended)
        rc = CMT_SUSPENDED;
    if (rc == MOAT_OK && c->parent_id[0])
        rc = check_parent(s, c);
    bool pending = false;
    if (rc == MOAT_OK)
        rc = needs_moderation(s, c, &pending);
    snprintf(c->status, sizeof(c->status), "%s",
             pending ? "pending" : "approved");
    if (rc == MOAT_OK && idem_key)
        rc = insert_idem(s, c, idem_key, fingerprint);
    if (rc == MOAT_OK)
        rc = insert_comment(s, c);
    /* Outbox: CommentPosted commits (or vanishes) with the comment. */
    if (rc == MOAT_OK)
        rc = emit(s, COMMENTS_COMMENT_POSTED, c->id,
                  json_pack("{s:s, s:o, s:s, s:s?, s:s, s:I}", "comment_id",
                            c->id, "target", target_json(&c->target),
                            "author_id", c->author_id, "parent_id",
                            c->parent_id[0] ? c->parent_id : NULL, "status",
                            c->status, "created_at",
                            (json_int_t)(c->created_ms / 1000)));
    if (rc > 0) { /* a refusal, not a failure */
        moat_db_rollback(s->db);
        return rc;
    }
    return finish(s, rc);
}

/* ---- moderation of one comment ---- */

int cmt_store_moderate(struct cmt_store *s, const char *id, const char *status,
                       const char *by, int64_t now_ms, bool *changed)
{
    struct cmt_comment c = {0};
    *changed = false;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    rc = cmt_store_get(s, id, &c);
    if (rc == MOAT_OK && c.deleted_ms)
        rc = MOAT_ENOTFOUND;
    if (rc == MOAT_OK && strcmp(c.status, status) == 0) {
        cmt_comment_release(&c);
        moat_db_rollback(s->db); /* nothing to do */
        return MOAT_OK;
    }
    if (rc == MOAT_OK && strcmp(c.status, "pending") != 0)
        rc = MOAT_ECONFLICT;
    if (rc == MOAT_OK) {
        struct moat_stmt *st = moat_db_prepare(
            s->db, "comment_moderate",
            "UPDATE comments SET status = ?2, moderated_at_ms = ?3, "
            "moderated_by = ?4 WHERE id = ?1");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, id);
            moat_stmt_bind_text(st, 2, status);
            moat_stmt_bind_int64(st, 3, now_ms);
            moat_stmt_bind_text(st, 4, by);
            rc = step_done(s->db, st);
        }
    }
    if (rc == MOAT_OK)
        rc = emit(s,
                  strcmp(status, "approved") == 0 ? COMMENTS_COMMENT_APPROVED
                                                  : COMMENTS_COMMENT_REJECTED,
                  id,
                  json_pack("{s:s, s:o, s:s, s:s, s:I}", "comment_id", id,
                            "target", target_json(&c.target), "author_id",
                            c.author_id, "moderated_by", by, "moderated_at",
                            (json_int_t)(now_ms / 1000)));
    cmt_comment_release(&c);
    rc = finish(s, rc);
    *changed = rc == MOAT_OK;
    return rc;
}

/* ---- removal ---- */

/* Tombstone live comment id inside the open transaction (see
 * cmt_store_remove); action_id may be NULL. */
static int remove_in_txn(struct cmt_store *s, const char *id, const char *by,
                         const char *reason, const char *action_id,
                         int64_t now_ms)
{
    struct cmt_comment c = {0};
    int rc = cmt_store_get(s, id, &c);
    if (rc == MOAT_OK && c.deleted_ms)
        rc = MOAT_ENOTFOUND;
    if (rc == MOAT_OK) {
        struct moat_stmt *st = moat_db_prepare(
            s->db, "comment_tombstone",
            "UPDATE comments SET text = NULL, deleted_at_ms = ?2, "
            "deleted_by = ?3, deleted_reason = ?4 WHERE id = ?1");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, id);
            moat_stmt_bind_int64(st, 2, now_ms);
            moat_stmt_bind_text(st, 3, by);
            moat_stmt_bind_text(st, 4, reason);
            rc = step_done(s->db, st);
        }
    }
    /* Outbox: CommentRemoved commits (or vanishes) with the tombstone. */
    if (rc == MOAT_OK)
        rc = emit(s, COMMENTS_COMMENT_REMOVED, id,
                  json_pack("{s:s, s:o, s:s, s:s, s:s, s:s?, s:I}",
                            "comment_id", id, "target", target_json(&c.target),
                            "author_id", c.author_id, "removed_by", by,
                            "reason", reason, "action_id", action_id,
                            "removed_at", (json_int_t)(now_ms / 1000)));
    cmt_comment_release(&c);
    return rc;
}

int cmt_store_remove(struct cmt_store *s, const char *id, const char *by,
                     const char *reason, int64_t now_ms)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    return finish(s, remove_in_txn(s, id, by, reason, NULL, now_ms));
}

/* ---- reads ---- */

int cmt_store_list(struct cmt_store *s, const struct cmt_target *t,
                   const char *parent, const char *after, size_t limit,
                   const char *viewer, bool moderator,
                   struct cmt_comment **items, size_t *n)
{
/* No unused parameter number (PostgreSQL must infer each one's type):
 * ?1 the parent or target id, ?2 after, ?3 limit, ?4 viewer, ?5 whether
 * a moderator; top level only: ?6 the target kind, ?7 its conversation. */
#define VISIBLE "(status = 'approved' OR author_id = ?4 OR ?5 = 1)"
    *items = NULL;
    *n = 0;
    struct moat_stmt *st =
        parent
            ? moat_db_prepare(
                  s->db, "replies",
                  "SELECT " COMMENT_COLUMNS " FROM comments "
                  "WHERE parent_id = ?1 AND "
                  "(CAST(?2 AS TEXT) IS NULL OR id > ?2) AND " VISIBLE
                  " ORDER BY id LIMIT ?3")
            : moat_db_prepare(s->db, "top_level",
                              "SELECT " COMMENT_COLUMNS " FROM comments "
                              "WHERE target_kind = ?6 AND target_id = ?1 "
                              "AND conversation_id = ?7 AND parent_id IS "
                              "NULL AND (CAST(?2 AS TEXT) IS NULL OR "
                              "id > ?2) AND " VISIBLE " ORDER BY id LIMIT ?3");
#undef VISIBLE
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, parent ? parent : t->id);
    if (after)
        moat_stmt_bind_text(st, 2, after);
    moat_stmt_bind_int64(st, 3, (int64_t)limit);
    moat_stmt_bind_text(st, 4, viewer ? viewer : "");
    moat_stmt_bind_int64(st, 5, moderator);
    if (!parent) {
        moat_stmt_bind_text(st, 6, t->kind);
        moat_stmt_bind_text(st, 7, t->conversation_id);
    }
    struct cmt_comment *out = moat_xcalloc(limit ? limit : 1, sizeof(*out));
    size_t count = 0;
    int src = SQLITE_DONE;
    while (count < limit && (src = moat_stmt_step(st)) == SQLITE_ROW)
        row_to_comment(st, &out[count++]);
    int rc = count == limit || src == SQLITE_DONE ? MOAT_OK
                                                  : moat_db_error(s->db, src);
    moat_stmt_reset(st);
    if (rc != MOAT_OK) {
        cmt_comments_free(out, count);
        return rc;
    }
    *items = out;
    *n = count;
    return MOAT_OK;
}

/* ---- moderation settings ---- */

int cmt_store_set_target(struct cmt_store *s, const char *kind, const char *id,
                         bool requires, const char *by, int64_t now_ms)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "target_set",
        "INSERT INTO moderation_targets (kind, id, requires_moderation, "
        "set_by, set_at_ms) VALUES (?1, ?2, ?3, ?4, ?5) "
        "ON CONFLICT (kind, id) DO UPDATE SET requires_moderation = ?3, "
        "set_by = ?4, set_at_ms = ?5");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, kind);
    moat_stmt_bind_text(st, 2, id);
    moat_stmt_bind_int64(st, 3, requires);
    moat_stmt_bind_text(st, 4, by);
    moat_stmt_bind_int64(st, 5, now_ms);
    return step_done(s->db, st);
}

int cmt_store_get_target(struct cmt_store *s, const char *kind, const char *id,
                         bool *requires)
{
    int64_t v = 0;
    int rc = query_int(s, "target_get",
                       "SELECT requires_moderation FROM moderation_targets "
                       "WHERE kind = ?1 AND id = ?2",
                       kind, id, 0, &v);
    *requires = v != 0;
    return rc;
}

int cmt_store_set_user(struct cmt_store *s, const char *user, bool requires,
                       const char *by, int64_t now_ms)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "user_set_requires",
        "INSERT INTO user_flags (user_id, requires_moderation, updated_by, "
        "updated_at_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (user_id) DO "
        "UPDATE SET requires_moderation = ?2, updated_by = ?3, "
        "updated_at_ms = ?4");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, user);
    moat_stmt_bind_int64(st, 2, requires);
    moat_stmt_bind_text(st, 3, by);
    moat_stmt_bind_int64(st, 4, now_ms);
    return step_done(s->db, st);
}

int cmt_store_get_user(struct cmt_store *s, const char *user,
                       struct cmt_user_flags *out)
{
    memset(out, 0, sizeof(*out));
    struct moat_stmt *st = moat_db_prepare(
        s->db, "user_get",
        "SELECT requires_moderation, suspended, reason FROM user_flags "
        "WHERE user_id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, user);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW) {
        out->requires_moderation = moat_stmt_int64(st, 0) != 0;
        out->suspended = moat_stmt_int64(st, 1) != 0;
        out->reason = out->suspended ? col_dup(st, 2) : NULL;
    } else if (src != SQLITE_DONE) {
        rc = moat_db_error(s->db, src);
    }
    moat_stmt_reset(st);
    return rc;
}

int cmt_store_set_post_owner(struct cmt_store *s, const char *post,
                             const char *owner)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "owner_set",
        "INSERT INTO post_owners (post_id, owner_id) VALUES (?1, ?2) "
        "ON CONFLICT (post_id) DO NOTHING");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, post);
    moat_stmt_bind_text(st, 2, owner);
    return step_done(s->db, st);
}

int cmt_store_is_post_owner(struct cmt_store *s, const char *post,
                            const char *user, bool *owner)
{
    int64_t v = 0;
    int rc = query_int(s, "owner_is",
                       "SELECT 1 FROM post_owners WHERE post_id = ?1 AND "
                       "owner_id = ?2",
                       post, user, 0, &v);
    *owner = v != 0;
    return rc;
}

/* ---- moderation actions (users' feed) ---- */

static int set_suspended(struct cmt_store *s, const struct cmt_action *a,
                         bool suspended, int64_t now_ms)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "user_set_suspended",
        "INSERT INTO user_flags (user_id, suspended, reason, updated_by, "
        "updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (user_id) DO "
        "UPDATE SET suspended = ?2, reason = ?3, updated_by = ?4, "
        "updated_at_ms = ?5");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, a->user_id);
    moat_stmt_bind_int64(st, 2, suspended);
    if (suspended)
        moat_stmt_bind_text(st, 3, a->reason);
    moat_stmt_bind_text(st, 4, a->requested_by);
    moat_stmt_bind_int64(st, 5, now_ms);
    return step_done(s->db, st);
}

int cmt_store_apply_action(struct cmt_store *s, const struct cmt_action *a,
                           int64_t now_ms, const char **why)
{
    int64_t seen = 0;
    int rc = query_int(s, "action_seen",
                       "SELECT 1 FROM applied_actions WHERE action_id = ?1",
                       a->action_id, NULL, 0, &seen);
    if (rc != MOAT_OK || seen)
        return rc; /* applied once already: nothing changes */
    const char *outcome;
    if (strcmp(a->action, "remove_comment") == 0 && a->comment_id) {
        rc = remove_in_txn(s, a->comment_id, a->requested_by, a->reason,
                           a->action_id, now_ms);
        outcome = rc == MOAT_ENOTFOUND ? "not_found" : "removed";
        if (rc == MOAT_ENOTFOUND)
            rc = MOAT_OK;
    } else if (strcmp(a->action, "suspend_commenting") == 0 && a->user_id) {
        rc = set_suspended(s, a, true, now_ms);
        outcome = "suspended";
    } else if (strcmp(a->action, "restore_commenting") == 0 && a->user_id) {
        rc = set_suspended(s, a, false, now_ms);
        outcome = "restored";
    } else {
        *why = "unknown moderation action, or its comment_id / user_id "
               "is missing";
        return MOAT_EINVAL;
    }
    if (rc != MOAT_OK)
        return rc;
    struct moat_stmt *st = moat_db_prepare(
        s->db, "action_insert",
        "INSERT INTO applied_actions (action_id, action, outcome, "
        "applied_at_ms) VALUES (?1, ?2, ?3, ?4)");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, a->action_id);
    moat_stmt_bind_text(st, 2, a->action);
    moat_stmt_bind_text(st, 3, outcome);
    moat_stmt_bind_int64(st, 4, now_ms);
    return step_done(s->db, st);
}

int cmt_store_get_action(struct cmt_store *s, const char *action_id,
                         char out[32], int64_t *applied_ms)
{
    struct moat_stmt *st =
        moat_db_prepare(s->db, "action_get",
                        "SELECT outcome, applied_at_ms FROM applied_actions "
                        "WHERE action_id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, action_id);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW) {
        col_copy(st, 0, out, 32);
        *applied_ms = moat_stmt_int64(st, 1);
    } else {
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, src);
    }
    moat_stmt_reset(st);
    return rc;
}

int cmt_idem_get(struct cmt_store *s, const char *author, const char *key,
                 char fingerprint[65], char comment_id[CMT_ID_LEN + 1])
{
    struct moat_stmt *st =
        moat_db_prepare(s->db, "idem_get",
                        "SELECT fingerprint, comment_id FROM idempotency "
                        "WHERE author_id = ?1 AND key = ?2");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, author);
    moat_stmt_bind_text(st, 2, key);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW) {
        col_copy(st, 0, fingerprint, 65);
        col_copy(st, 1, comment_id, CMT_ID_LEN + 1);
    } else {
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, src);
    }
    moat_stmt_reset(st);
    return rc;
}
