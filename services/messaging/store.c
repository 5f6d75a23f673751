/* store.c - messaging's schema and queries (see store.h). */
#include "moat/common.h"

#include "contracts/messaging.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/db.h"
#include "moat/log.h"
#include "store.h"

struct msg_store {
    struct moat_db *db;         /* owned */
    struct moat_outbox *outbox; /* owned; borrows db */
};

#define DB_FILE "messaging.db"

/*
 * Schema migrations: never edit one that has shipped, append a new one.
 *
 * conversations: direct_key is "<lower id>\n<higher id>" for a direct
 * conversation and NULL for a group; its UNIQUE index makes one direct
 * conversation per pair. last_seq numbers the conversation's messages;
 * activity_at_ms (the last message's time) orders a user's list.
 * members: one row per current member, with the read mark (read_seq) of
 * the read-up-to receipts; (user_id, conversation_id) finds a user's
 * conversations. Leaving deletes the row.
 * messages: clustered by (conversation_id, seq), the order of pages and
 * of unread counts; a tombstone keeps its row with text NULL.
 * message_edits: the texts that edits replaced, in order (edit n replaced
 * replaced_text at edited_at_ms). Deleting a message drops them too.
 * idempotency maps (sender, Idempotency-Key) to the message it sent.
 *
 * The same SQL runs on SQLite and PostgreSQL (moat/db.h); each migration
 * has both texts (BIGINT integers, no STRICT / WITHOUT ROWID, ids in
 * the "C" collation: byte order, as SQLite compares, for the pages).
 */
static const struct moat_migration migrations[] = {
    {1, "conversations, members, messages, edits, idempotency",
     "CREATE TABLE conversations (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'cnv_'),\n"
     "    kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),\n"
     "    title TEXT,\n"
     "    created_by TEXT NOT NULL,\n"
     "    direct_key TEXT UNIQUE,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    activity_at_ms INTEGER NOT NULL,\n"
     "    last_seq INTEGER NOT NULL DEFAULT 0,\n"
     "    CHECK ((kind = 'direct') = (direct_key IS NOT NULL))\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE members (\n"
     "    conversation_id TEXT NOT NULL REFERENCES conversations (id),\n"
     "    user_id TEXT NOT NULL CHECK (length(user_id) BETWEEN 1 AND 63),\n"
     "    admin INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),\n"
     "    joined_at_ms INTEGER NOT NULL,\n"
     "    read_seq INTEGER NOT NULL DEFAULT 0,\n"
     "    PRIMARY KEY (conversation_id, user_id)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX members_user ON members (user_id, conversation_id);\n"
     "CREATE TABLE messages (\n"
     "    conversation_id TEXT NOT NULL REFERENCES conversations (id),\n"
     "    seq INTEGER NOT NULL CHECK (seq > 0),\n"
     "    id TEXT NOT NULL UNIQUE\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'msg_'),\n"
     "    sender_id TEXT NOT NULL,\n"
     "    text TEXT,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    edited_at_ms INTEGER,\n"
     "    edits INTEGER NOT NULL DEFAULT 0,\n"
     "    deleted_at_ms INTEGER,\n"
     "    deleted_by TEXT,\n"
     "    CHECK ((text IS NULL) = (deleted_at_ms IS NOT NULL)),\n"
     "    PRIMARY KEY (conversation_id, seq)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE message_edits (\n"
     "    message_id TEXT NOT NULL REFERENCES messages (id),\n"
     "    n INTEGER NOT NULL,\n"
     "    replaced_text TEXT NOT NULL,\n"
     "    edited_at_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (message_id, n)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE idempotency (\n"
     "    sender_id TEXT NOT NULL,\n"
     "    key TEXT NOT NULL,\n"
     "    fingerprint TEXT NOT NULL,\n"
     "    message_id TEXT NOT NULL,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (sender_id, key)\n"
     ") STRICT, WITHOUT ROWID;\n",
     "CREATE TABLE conversations (\n"
     "    id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'cnv_'),\n"
     "    kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),\n"
     "    title TEXT,\n"
     "    created_by TEXT NOT NULL,\n"
     "    direct_key TEXT UNIQUE,\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    activity_at_ms BIGINT NOT NULL,\n"
     "    last_seq BIGINT NOT NULL DEFAULT 0,\n"
     "    CHECK ((kind = 'direct') = (direct_key IS NOT NULL))\n"
     ");\n"
     "CREATE TABLE members (\n"
     "    conversation_id TEXT COLLATE \"C\" NOT NULL REFERENCES conversations "
     "(id),\n"
     "    user_id TEXT COLLATE \"C\" NOT NULL CHECK (length(user_id) BETWEEN 1 "
     "AND 63),\n"
     "    admin INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),\n"
     "    joined_at_ms BIGINT NOT NULL,\n"
     "    read_seq BIGINT NOT NULL DEFAULT 0,\n"
     "    PRIMARY KEY (conversation_id, user_id)\n"
     ");\n"
     "CREATE INDEX members_user ON members (user_id, conversation_id);\n"
     "CREATE TABLE messages (\n"
     "    conversation_id TEXT COLLATE \"C\" NOT NULL REFERENCES conversations "
     "(id),\n"
     "    seq BIGINT NOT NULL CHECK (seq > 0),\n"
     "    id TEXT COLLATE \"C\" NOT NULL UNIQUE\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'msg_'),\n"
     "    sender_id TEXT NOT NULL,\n"
     "    text TEXT,\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    edited_at_ms BIGINT,\n"
     "    edits BIGINT NOT NULL DEFAULT 0,\n"
     "    deleted_at_ms BIGINT,\n"
     "    deleted_by TEXT,\n"
     "    CHECK ((text IS NULL) = (deleted_at_ms IS NOT NULL)),\n"
     "    PRIMARY KEY (conversation_id, seq)\n"
     ");\n"
     "CREATE TABLE message_edits (\n"
     "    message_id TEXT COLLATE \"C\" NOT NULL REFERENCES messages (id),\n"
     "    n BIGINT NOT NULL,\n"
     "    replaced_text TEXT NOT NULL,\n"
     "    edited_at_ms BIGINT NOT NULL,\n"
     "    PRIMARY KEY (message_id, n)\n"
     ");\n"
     "CREATE TABLE idempotency (\n"
     "    sender_id TEXT NOT NULL,\n"
     "    key TEXT NOT NULL,\n"
     "    fingerprint TEXT NOT NULL,\n"
     "    message_id TEXT NOT NULL,\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    PRIMARY KEY (sender_id, key)\n"
     ");\n"},
    {2, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
};

int msg_store_open(struct msg_store **out, const char *data_dir,
                   const char *dsn, struct event_base *base, const char *source,
                   const struct moat_outbox_options *outbox,
                   struct moat_metrics *metrics)
{
    struct msg_store *s = moat_xcalloc(1, sizeof(*s));
    const struct moat_db_options opts = {.dsn = dsn};
    int rc = moat_db_open_migrated(&s->db, data_dir, DB_FILE, &opts, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc == MOAT_OK)
        rc = moat_outbox_new(&s->outbox, base, s->db, source, outbox, metrics);
    if (rc != MOAT_OK) {
        msg_store_close(s);
        return rc;
    }
    *out = s;
    return MOAT_OK;
}

void msg_store_close(struct msg_store *s)
{
    if (!s)
        return;
    moat_outbox_free(s->outbox); /* borrows the database: first */
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

struct moat_outbox *msg_store_outbox(struct msg_store *s)
{
    return s->outbox;
}

bool msg_store_ready(struct msg_store *s, const char **why)
{
    return moat_db_migrated(s ? s->db : NULL, migrations,
                            MOAT_ARRAY_LEN(migrations), why);
}

void msg_conv_release(struct msg_conv *c)
{
    free(c->title);
    free(c->members);
    c->title = NULL;
    c->members = NULL;
    c->nmembers = 0;
}

void msg_convs_free(struct msg_conv *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        msg_conv_release(&items[i]);
    free(items);
}

void msg_message_release(struct msg_message *m)
{
    free(m->text);
    m->text = NULL;
}

void msg_messages_free(struct msg_message *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        msg_message_release(&items[i]);
    free(items);
}

void msg_edits_free(struct msg_edit *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        free(items[i].replaced_text);
    free(items);
}

/* ---- statements ---- */

static int step_done(struct moat_db *db, struct moat_stmt *st)
{
    int src = moat_stmt_step(st);
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}

static const char *col_text(struct moat_stmt *st, int i)
{
    const char *s = moat_stmt_text(st, i);
    return s ? s : "";
}

static char *col_strdup(struct moat_stmt *st, int i)
{
    const char *s = moat_stmt_text(st, i);
    return s ? moat_xstrdup(s) : NULL;
}

/*
 * Run a one-row query (bound by the caller) and copy its row with fn.
 * MOAT_ENOTFOUND when there is no row. The statement is reset at once: an
 * unfinished SELECT pins a WAL read snapshot.
 */
static int one_row(struct msg_store *s, struct moat_stmt *st,
                   void (*fn)(struct moat_stmt *, void *), void *arg)
{
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW)
        fn(st, arg);
    else
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, src);
    moat_stmt_reset(st);
    return rc;
}

/* Commit, or roll back after an error; wake feed readers on success. */
static int finish(struct msg_store *s, int rc)
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

/* Append one event of the open transaction; takes data. */
static int emit(struct msg_store *s, const char *type, const char *subject,
                json_t *data)
{
    if (!data)
        moat_die("cannot build the data of a messaging event");
    int rc = moat_outbox_append(s->outbox, type, subject,
                                MESSAGING_EVENT_SCHEMA, data, NULL);
    json_decref(data);
    return rc;
}

/* ---- conversations ---- */

#define CONV_COLUMNS                                                           \
    "c.id, c.kind, c.title, c.created_by, c.created_at_ms, "                   \
    "c.activity_at_ms, c.last_seq"

static void row_to_conv(struct moat_stmt *st, void *arg)
{
    struct msg_conv *c = arg;
    memset(c, 0, sizeof(*c));
    snprintf(c->id, sizeof(c->id), "%s", col_text(st, 0));
    c->kind = strcmp(col_text(st, 1), "direct") == 0 ? MSG_DIRECT : MSG_GROUP;
    c->title = col_strdup(st, 2);
    snprintf(c->created_by, sizeof(c->created_by), "%s", col_text(st, 3));
    c->created_ms = moat_stmt_int64(st, 4);
    c->activity_ms = moat_stmt_int64(st, 5);
    c->last_seq = moat_stmt_int64(st, 6);
}

/* Members of c->id in joining order into c->members. */
static int load_members(struct msg_store *s, struct msg_conv *c)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "members_of",
        "SELECT user_id, admin, joined_at_ms, read_seq FROM members "
        "WHERE conversation_id = ?1 ORDER BY joined_at_ms, user_id");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, c->id);
    size_t cap = 0;
    int src;
    while ((src = moat_stmt_step(st)) == SQLITE_ROW) {
        if (c->nmembers == cap) {
            cap = cap ? 2 * cap : 8;
            c->members = moat_xrealloc(c->members, cap * sizeof(*c->members));
        }
        struct msg_member *m = &c->members[c->nmembers++];
        memset(m, 0, sizeof(*m));
        snprintf(m->user_id, sizeof(m->user_id), "%s", col_text(st, 0));
        m->admin = moat_stmt_int64(st, 1) != 0;
        m->joined_ms = moat_stmt_int64(st, 2);
        m->read_seq = moat_stmt_int64(st, 3);
    }
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, src);
    moat_stmt_reset(st);
    return rc;
}

/* The viewer's unread count in c: messages after the read mark that the
 * viewer did not send and that are not deleted (a range of the primary
 * key, so it costs the number of messages after the mark). */
static int load_unread(struct msg_store *s, struct msg_conv *c,
                       const char *viewer)
{
    for (size_t i = 0; i < c->nmembers; i++)
        if (strcmp(c->members[i].user_id, viewer) == 0)
            c->read_seq = c->members[i].read_seq;
    struct moat_stmt *st = moat_db_prepare(
        s->db, "unread",
        "SELECT count(*) FROM messages WHERE conversation_id = ?1 "
        "AND seq > ?2 AND sender_id != ?3 AND deleted_at_ms IS NULL");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, c->id);
    moat_stmt_bind_int64(st, 2, c->read_seq);
    moat_stmt_bind_text(st, 3, viewer);
    int src = moat_stmt_step(st);
    int rc = src == SQLITE_ROW ? MOAT_OK : moat_db_error(s->db, src);
    if (rc == MOAT_OK)
        c->unread = moat_stmt_int64(st, 0);
    moat_stmt_reset(st);
    return rc;
}

static int insert_member(struct msg_store *s, const char *conv,
                         const char *user, bool admin, int64_t now_ms,
                         int64_t read_seq)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "member_insert",
        "INSERT INTO members (conversation_id, user_id, admin, joined_at_ms, "
        "read_seq) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, conv);
    moat_stmt_bind_text(st, 2, user);
    moat_stmt_bind_int64(st, 3, admin);
    moat_stmt_bind_int64(st, 4, now_ms);
    moat_stmt_bind_int64(st, 5, read_seq);
    return step_done(s->db, st);
}

static void copy_id(struct moat_stmt *st, void *arg)
{
    snprintf(arg, MSG_ID_LEN + 1, "%s", col_text(st, 0));
}

static json_t *member_ids(const struct msg_conv *c)
{
    json_t *a = json_array();
    for (size_t i = 0; i < c->nmembers; i++)
        json_array_append_new(a, json_string(c->members[i].user_id));
    return a;
}

int msg_store_create_conv(struct msg_store *s, const struct msg_conv *c,
                          char existing_id[MSG_ID_LEN + 1])
{
    char *direct_key = NULL;
    if (c->kind == MSG_DIRECT) {
        if (c->nmembers != 2)
            return MOAT_EINVAL;
        const char *a = c->members[0].user_id, *b = c->members[1].user_id;
        direct_key = strcmp(a, b) < 0 ? moat_xasprintf("%s\n%s", a, b)
                                      : moat_xasprintf("%s\n%s", b, a);
    }
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        goto cleanup;
    if (direct_key) {
        struct moat_stmt *st = moat_db_prepare(
            s->db, "direct_find",
            "SELECT id FROM conversations WHERE direct_key = ?1");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, direct_key);
            rc = one_row(s, st, copy_id, existing_id);
            rc = rc == MOAT_OK          ? MOAT_ECONFLICT
                 : rc == MOAT_ENOTFOUND ? MOAT_OK
                                        : rc;
        }
    }
    struct moat_stmt *st =
        rc != MOAT_OK
            ? NULL
            : moat_db_prepare(s->db, "conv_insert",
                              "INSERT INTO conversations (id, kind, title, "
                              "created_by, direct_key, created_at_ms, "
                              "activity_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, "
                              "?6, ?6)");
    if (rc == MOAT_OK && !st)
        rc = MOAT_EDB;
    if (rc == MOAT_OK) {
        moat_stmt_bind_text(st, 1, c->id);
        moat_stmt_bind_text(st, 2, c->kind == MSG_DIRECT ? "direct" : "group");
        if (c->title)
            moat_stmt_bind_text(st, 3, c->title);
        moat_stmt_bind_text(st, 4, c->created_by);
        if (direct_key)
            moat_stmt_bind_text(st, 5, direct_key);
        moat_stmt_bind_int64(st, 6, c->created_ms);
        rc = step_done(s->db, st);
    }
    for (size_t i = 0; rc == MOAT_OK && i < c->nmembers; i++)
        rc = insert_member(s, c->id, c->members[i].user_id, c->members[i].admin,
                           c->created_ms, 0);
    /* Outbox: ConversationCreated commits (or vanishes) with it. The
     * title is the members' content, like message texts: not in events. */
    if (rc == MOAT_OK)
        rc = emit(
            s, MESSAGING_CONVERSATION_CREATED, c->id,
            json_pack("{s:s, s:s, s:s, s:o, s:I}", "conversation_id", c->id,
                      "kind", c->kind == MSG_DIRECT ? "direct" : "group",
                      "created_by", c->created_by, "members", member_ids(c),
                      "created_at", (json_int_t)(c->created_ms / 1000)));
    rc = finish(s, rc);

cleanup:
    free(direct_key);
    return rc;
}

int msg_store_get_conv(struct msg_store *s, const char *id, const char *viewer,
                       struct msg_conv *out)
{
    struct moat_stmt *st =
        moat_db_prepare(s->db, "conv_get",
                        "SELECT " CONV_COLUMNS " FROM conversations c "
                        "WHERE c.id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    memset(out, 0, sizeof(*out));
    int rc = one_row(s, st, row_to_conv, out);
    if (rc == MOAT_OK)
        rc = load_members(s, out);
    if (rc == MOAT_OK && viewer) {
        bool member = false;
        for (size_t i = 0; i < out->nmembers; i++)
            member = member || strcmp(out->members[i].user_id, viewer) == 0;
        rc = member ? load_unread(s, out, viewer) : MOAT_ENOTFOUND;
    }
    if (rc != MOAT_OK)
        msg_conv_release(out);
    return rc;
}

static void copy_i64(struct moat_stmt *st, void *arg)
{
    *(int64_t *)arg = moat_stmt_int64(st, 0);
}

int msg_store_member_head(struct msg_store *s, const char *id, const char *user,
                          int64_t *last_seq)
{
    struct moat_stmt *st =
        moat_db_prepare(s->db, "member_head",
                        "SELECT c.last_seq FROM members m JOIN conversations c "
                        "ON c.id = m.conversation_id "
                        "WHERE m.conversation_id = ?1 AND m.user_id = ?2");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    moat_stmt_bind_text(st, 2, user);
    return one_row(s, st, copy_i64, last_seq);
}

int msg_store_list_convs(struct msg_store *s, const char *viewer,
                         int64_t before_activity_ms, const char *before_id,
                         size_t limit, struct msg_conv **items, size_t *n)
{
    *items = NULL;
    *n = 0;
    /* Sorting a user's conversations costs their number per page: fine
     * for chat, where a user has tens to thousands of them. */
    struct moat_stmt *st =
        moat_db_prepare(s->db, "conv_list",
                        "SELECT " CONV_COLUMNS " FROM members m "
                        "JOIN conversations c ON c.id = m.conversation_id "
                        "WHERE m.user_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR "
                        "c.activity_at_ms < ?3 "
                        "OR (c.activity_at_ms = ?3 AND c.id < ?2)) "
                        "ORDER BY c.activity_at_ms DESC, c.id DESC LIMIT ?4");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, viewer);
    if (before_id)
        moat_stmt_bind_text(st, 2, before_id);
    moat_stmt_bind_int64(st, 3, before_activity_ms);
    moat_stmt_bind_int64(st, 4, (int64_t)limit);
    struct msg_conv *out = moat_xcalloc(limit ? limit : 1, sizeof(*out));
    size_t count = 0;
    int src = SQLITE_DONE;
    while (count < limit && (src = moat_stmt_step(st)) == SQLITE_ROW)
        row_to_conv(st, &out[count++]);
    int rc = count == limit || src == SQLITE_DONE ? MOAT_OK
                                                  : moat_db_error(s->db, src);
    moat_stmt_reset(st);
    for (size_t i = 0; rc == MOAT_OK && i < count; i++) {
        rc = load_members(s, &out[i]);
        if (rc == MOAT_OK)
            rc = load_unread(s, &out[i], viewer);
    }
    if (rc != MOAT_OK) {
        msg_convs_free(out, count);
        return rc;
    }
    *items = out;
    *n = count;
    return MOAT_OK;
}

static int delete_member(struct msg_store *s, const char *conv,
                         const char *user)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "member_delete",
        "DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, conv);
    moat_stmt_bind_text(st, 2, user);
    return step_done(s->db, st);
}

/* A group left without an admin gets its longest-standing member. */
static int ensure_admin(struct msg_store *s, const char *conv)
{
    struct moat_stmt *st = moat_db_prepare(
        s->db, "admin_promote",
        "UPDATE members SET admin = 1 WHERE conversation_id = ?1 "
        "AND NOT EXISTS (SELECT 1 FROM members WHERE conversation_id = ?1 "
        "AND admin = 1) AND user_id = (SELECT user_id FROM members "
        "WHERE conversation_id = ?1 ORDER BY joined_at_ms, user_id LIMIT 1)");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, conv);
    return step_done(s->db, st);
}

int msg_store_change_members(struct msg_store *s, const char *id,
                             const char *by, const char *const *add,
                             size_t nadd, const char *remove,
                             size_t max_members, int64_t now_ms, bool *changed)
{
    struct msg_conv c = {0};
    json_t *added = json_array(), *removed = json_array();
    *changed = false;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = msg_store_get_conv(s, id, NULL, &c);
    size_t count = c.nmembers;
    for (size_t i = 0; rc == MOAT_OK && i < nadd; i++) {
        bool member = false;
        for (size_t j = 0; j < c.nmembers; j++)
            member = member || strcmp(c.members[j].user_id, add[i]) == 0;
        for (size_t j = 0; j < json_array_size(added); j++)
            member =
                member || strcmp(json_string_value(json_array_get(added, j)),
                                 add[i]) == 0;
        if (member)
            continue;
        if (count >= max_members) {
            rc = MOAT_ETOOBIG;
            break;
        }
        /* A new member starts with everything before read. */
        rc = insert_member(s, id, add[i], false, now_ms, c.last_seq);
        json_array_append_new(added, json_string(add[i]));
        count++;
    }
    if (rc == MOAT_OK && remove) {
        bool member = false;
        for (size_t j = 0; j < c.nmembers; j++)
            member = member || strcmp(c.members[j].user_id, remove) == 0;
        if (member) {
            rc = delete_member(s, id, remove);
            if (rc == MOAT_OK)
                rc = ensure_admin(s, id);
            json_array_append_new(removed, json_string(remove));
            count--;
        }
    }
    *changed = json_array_size(added) + json_array_size(removed) > 0;
    if (rc == MOAT_OK && *changed)
        rc = emit(s, MESSAGING_MEMBERS_CHANGED, id,
                  json_pack("{s:s, s:O, s:O, s:s, s:I, s:I}", "conversation_id",
                            id, "added", added, "removed", removed, "by", by,
                            "members_count", (json_int_t)count, "changed_at",
                            (json_int_t)(now_ms / 1000)));
    if (rc == MOAT_OK && !*changed) {
        moat_db_rollback(s->db); /* nothing to commit */
    } else {
        rc = finish(s, rc);
    }

cleanup:
    msg_conv_release(&c);
    json_decref(added);
    json_decref(removed);
    return rc;
}

/* ---- messages ---- */

#define MESSAGE_COLUMNS                                                        \
    "id, conversation_id, sender_id, seq, text, created_at_ms, "               \
    "coalesce(edited_at_ms, 0), coalesce(deleted_at_ms, 0), edits"

static void row_to_message(struct moat_stmt *st, void *arg)
{
    struct msg_message *m = arg;
    memset(m, 0, sizeof(*m));
    snprintf(m->id, sizeof(m->id), "%s", col_text(st, 0));
    snprintf(m->conversation_id, sizeof(m->conversation_id), "%s",
             col_text(st, 1));
    snprintf(m->sender_id, sizeof(m->sender_id), "%s", col_text(st, 2));
    m->seq = moat_stmt_int64(st, 3);
    m->text = col_strdup(st, 4);
    m->created_ms = moat_stmt_int64(st, 5);
    m->edited_ms = moat_stmt_int64(st, 6);
    m->deleted_ms = moat_stmt_int64(st, 7);
    m->edits = moat_stmt_int64(st, 8);
}

/* The data of every message event: references, never the text. */
static json_t *message_ref(const struct msg_message *m, const char *time_key,
                           int64_t time_ms)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I}", "conversation_id",
                     m->conversation_id, "message_id", m->id, "sender_id",
                     m->sender_id, "seq", (json_int_t)m->seq, time_key,
                     (json_int_t)(time_ms / 1000));
}

int msg_store_send(struct msg_store *s, const struct msg_message *m,
                   const char *idem_key, const char *fingerprint,
                   int64_t *seq_out)
{
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    if (idem_key) {
        struct moat_stmt *st = moat_db_prepare(
            s->db, "idem_insert",
            "INSERT INTO idempotency (sender_id, key, fingerprint, "
            "message_id, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, m->sender_id);
            moat_stmt_bind_text(st, 2, idem_key);
            moat_stmt_bind_text(st, 3, fingerprint);
            moat_stmt_bind_text(st, 4, m->id);
            moat_stmt_bind_int64(st, 5, m->created_ms);
            rc = step_done(s->db, st);
        }
    }
    /* The next seq of the conversation: the UPDATE takes it under the
     * write lock that BEGIN IMMEDIATE holds. */
    struct msg_message row = *m;
    row.text = NULL;
    if (rc == MOAT_OK) {
        struct moat_stmt *st =
            moat_db_prepare(s->db, "seq_next",
                            "UPDATE conversations SET last_seq = last_seq + 1, "
                            "activity_at_ms = CASE WHEN activity_at_ms > ?2 "
                            "THEN activity_at_ms ELSE ?2 END WHERE id = ?1 "
                            "RETURNING last_seq");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, m->conversation_id);
            moat_stmt_bind_int64(st, 2, m->created_ms);
            int src = moat_stmt_step(st);
            if (src == SQLITE_ROW)
                row.seq = moat_stmt_int64(st, 0);
            rc = src == SQLITE_ROW    ? MOAT_OK
                 : src == SQLITE_DONE ? MOAT_ENOTFOUND
                                      : moat_db_error(s->db, src);
            moat_stmt_reset(st);
        }
    }
    if (rc == MOAT_OK) {
        struct moat_stmt *st = moat_db_prepare(
            s->db, "message_insert",
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, "
            "created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, m->conversation_id);
            moat_stmt_bind_int64(st, 2, row.seq);
            moat_stmt_bind_text(st, 3, m->id);
            moat_stmt_bind_text(st, 4, m->sender_id);
            moat_stmt_bind_text(st, 5, m->text);
            moat_stmt_bind_int64(st, 6, m->created_ms);
            rc = step_done(s->db, st);
        }
    }
    /* Outbox: MessageSent commits (or vanishes) with the message. */
    if (rc == MOAT_OK)
        rc = emit(s, MESSAGING_MESSAGE_SENT, m->conversation_id,
                  message_ref(&row, "created_at", m->created_ms));
    rc = finish(s, rc);
    if (rc == MOAT_OK)
        *seq_out = row.seq;
    return rc;
}

struct idem_row {
    char *fingerprint, *message_id;
};

static void copy_idem(struct moat_stmt *st, void *arg)
{
    struct idem_row *r = arg;
    snprintf(r->fingerprint, 65, "%s", col_text(st, 0));
    snprintf(r->message_id, MSG_ID_LEN + 1, "%s", col_text(st, 1));
}

int msg_idem_get(struct msg_store *s, const char *sender, const char *key,
                 char fingerprint[65], char message_id[MSG_ID_LEN + 1])
{
    struct moat_stmt *st =
        moat_db_prepare(s->db, "idem_get",
                        "SELECT fingerprint, message_id FROM idempotency "
                        "WHERE sender_id = ?1 AND key = ?2");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, sender);
    moat_stmt_bind_text(st, 2, key);
    struct idem_row r = {fingerprint, message_id};
    return one_row(s, st, copy_idem, &r);
}

int msg_store_get_message(struct msg_store *s, const char *id,
                          struct msg_message *out)
{
    struct moat_stmt *st = moat_db_prepare(s->db, "message_get",
                                           "SELECT " MESSAGE_COLUMNS
                                           " FROM messages WHERE id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    return one_row(s, st, row_to_message, out);
}

int msg_store_edits(struct msg_store *s, const char *id,
                    struct msg_edit **items, size_t *n)
{
    *items = NULL;
    *n = 0;
    struct moat_stmt *st =
        moat_db_prepare(s->db, "edits_of",
                        "SELECT replaced_text, edited_at_ms FROM message_edits "
                        "WHERE message_id = ?1 ORDER BY n");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    struct msg_edit *out = NULL;
    size_t count = 0, cap = 0;
    int src;
    while ((src = moat_stmt_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? 2 * cap : 4;
            out = moat_xrealloc(out, cap * sizeof(*out));
        }
        out[count].replaced_text = moat_xstrdup(col_text(st, 0));
        out[count].edited_ms = moat_stmt_int64(st, 1);
        count++;
    }
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, src);
    moat_stmt_reset(st);
    if (rc != MOAT_OK) {
        msg_edits_free(out, count);
        return rc;
    }
    *items = out;
    *n = count;
    return MOAT_OK;
}

/* Load live message id inside the open transaction. */
static int load_live(struct msg_store *s, const char *id, struct msg_message *m)
{
    int rc = msg_store_get_message(s, id, m);
    if (rc == MOAT_OK && m->deleted_ms)
        rc = MOAT_ENOTFOUND;
    return rc;
}

int msg_store_edit(struct msg_store *s, const char *id, const char *text,
                   int64_t now_ms)
{
    struct msg_message m = {0};
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    rc = load_live(s, id, &m);
    if (rc == MOAT_OK) {
        struct moat_stmt *st = moat_db_prepare(
            s->db, "edit_insert",
            "INSERT INTO message_edits (message_id, n, replaced_text, "
            "edited_at_ms) VALUES (?1, ?2, ?3, ?4)");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, id);
            moat_stmt_bind_int64(st, 2, m.edits + 1);
            moat_stmt_bind_text(st, 3, m.text);
            moat_stmt_bind_int64(st, 4, now_ms);
            rc = step_done(s->db, st);
        }
    }
    if (rc == MOAT_OK) {
        struct moat_stmt *st =
            moat_db_prepare(s->db, "message_edit",
                            "UPDATE messages SET text = ?2, edited_at_ms = ?3, "
                            "edits = edits + 1 WHERE id = ?1");
        if (!st) {
            rc = MOAT_EDB;
        } else {
            moat_stmt_bind_text(st, 1, id);
            moat_stmt_bind_text(st, 2, text);
            moat_stmt_bind_int64(st, 3, now_ms);
            rc = step_done(s->db, st);
        }
    }
    if (rc == MOAT_OK)
        rc = emit(s, MESSAGING_MESSAGE_EDITED, m.conversation_id,
                  message_ref(&m, "edited_at", now_ms));
    msg_message_release(&m);
    return finish(s, rc);
}

int msg_store_delete_message(struct msg_store *s, const char *id,
                             const char *deleted_by, int64_t now_ms)
{
    struct msg_message m = {0};
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;
    rc = load_live(s, id, &m);
    static const char *const sql[][2] = {
        {"edits_delete", "DELETE FROM message_edits WHERE message_id = ?1"},
        {"message_tombstone",
         "UPDATE messages SET text = NULL, deleted_at_ms = ?2, "
         "deleted_by = ?3 WHERE id = ?1"},
    };
    for (size_t i = 0; rc == MOAT_OK && i < MOAT_ARRAY_LEN(sql); i++) {
        struct moat_stmt *st = moat_db_prepare(s->db, sql[i][0], sql[i][1]);
        if (!st) {
            rc = MOAT_EDB;
            break;
        }
        moat_stmt_bind_text(st, 1, id);
        if (i == 1) {
            moat_stmt_bind_int64(st, 2, now_ms);
            moat_stmt_bind_text(st, 3, deleted_by);
        }
        rc = step_done(s->db, st);
    }
    if (rc == MOAT_OK) {
        json_t *data = message_ref(&m, "deleted_at", now_ms);
        json_object_set_new(data, "deleted_by", json_string(deleted_by));
        rc = emit(s, MESSAGING_MESSAGE_DELETED, m.conversation_id, data);
    }
    msg_message_release(&m);
    return finish(s, rc);
}

int msg_store_page(struct msg_store *s, const char *conv, int64_t after,
                   int64_t before, size_t limit, struct msg_message **items,
                   size_t *n)
{
    *items = NULL;
    *n = 0;
    /* Forward pages read up the primary key; backward pages (and the
     * newest page) read down it and are reversed below. */
    bool forward = after >= 0;
    struct moat_stmt *st =
        forward ? moat_db_prepare(s->db, "page_after",
                                  "SELECT " MESSAGE_COLUMNS " FROM messages "
                                  "WHERE conversation_id = ?1 AND seq > ?2 "
                                  "ORDER BY seq LIMIT ?3")
                : moat_db_prepare(s->db, "page_before",
                                  "SELECT " MESSAGE_COLUMNS " FROM messages "
                                  "WHERE conversation_id = ?1 AND seq < ?2 "
                                  "ORDER BY seq DESC LIMIT ?3");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, conv);
    moat_stmt_bind_int64(st, 2,
                         forward      ? after
                         : before > 0 ? before
                                      : INT64_MAX);
    moat_stmt_bind_int64(st, 3, (int64_t)limit);
    struct msg_message *out = moat_xcalloc(limit ? limit : 1, sizeof(*out));
    size_t count = 0;
    int src = SQLITE_DONE;
    while (count < limit && (src = moat_stmt_step(st)) == SQLITE_ROW)
        row_to_message(st, &out[count++]);
    int rc = count == limit || src == SQLITE_DONE ? MOAT_OK
                                                  : moat_db_error(s->db, src);
    moat_stmt_reset(st);
    if (rc != MOAT_OK) {
        msg_messages_free(out, count);
        return rc;
    }
    for (size_t i = 0; !forward && i < count / 2; i++) {
        struct msg_message t = out[i];
        out[i] = out[count - 1 - i];
        out[count - 1 - i] = t;
    }
    *items = out;
    *n = count;
    return MOAT_OK;
}

int msg_store_read(struct msg_store *s, const char *conv, const char *user,
                   int64_t up_to, int64_t *read_seq)
{
    /* One statement: taking the larger keeps the mark monotonic without
     * a transaction around a read and a write. */
    struct moat_stmt *st = moat_db_prepare(
        s->db, "read_mark",
        "UPDATE members SET read_seq = CASE WHEN read_seq > ?3 "
        "THEN read_seq ELSE ?3 END "
        "WHERE conversation_id = ?1 AND user_id = ?2 RETURNING read_seq");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, conv);
    moat_stmt_bind_text(st, 2, user);
    moat_stmt_bind_int64(st, 3, up_to);
    int src = moat_stmt_step(st);
    int rc = src == SQLITE_ROW    ? MOAT_OK
             : src == SQLITE_DONE ? MOAT_ENOTFOUND
                                  : moat_db_error(s->db, src);
    if (rc == MOAT_OK)
        *read_seq = moat_stmt_int64(st, 0);
    moat_stmt_reset(st);
    return rc;
}

struct moat_db *msg_store_db(struct msg_store *s)
{
    return s->db;
}
