/* store.c - notifications' schema and queries (see store.h). */
#include "moat/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/notifications.h"
#include "moat/buf.h"
#include "moat/events.h"
#include "moat/log.h"
#include "store.h"

#define DB_FILE "notifications.db"

/*
 * Schema migrations. An applied migration is checksummed by moat_db_migrate:
 * never edit one that has shipped, append a new version instead.
 *
 * notifications is the view (see store.h); its partial index on the
 * undelivered rows keeps the deliverer's sweep and the backlog gauge cheap
 * however many notifications were sent. deliveries is never emptied by a
 * replay.
 */
static const struct moat_migration migrations[] = {
    {1, "create notifications and deliveries",
     "CREATE TABLE notifications (\n"
     "    id TEXT NOT NULL PRIMARY KEY,\n"
     "    order_id TEXT NOT NULL,\n"
     "    status TEXT NOT NULL\n"
     "        CHECK (status IN ('pending', 'confirmed', 'cancelled')),\n"
     "    customer_id TEXT NOT NULL,\n"
     "    kind TEXT NOT NULL,\n"
     "    subject TEXT NOT NULL,\n"
     "    body TEXT NOT NULL,\n"
     "    trace_id TEXT,\n"
     "    event_id TEXT NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    created_ms INTEGER NOT NULL,\n"
     "    delivered INTEGER NOT NULL DEFAULT 0 CHECK (delivered IN (0, 1)),\n"
     "    delivered_ms INTEGER,\n"
     "    UNIQUE (order_id, status)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX notifications_customer ON notifications (customer_id, id);\n"
     "CREATE INDEX notifications_undelivered ON notifications (id)\n"
     "    WHERE delivered = 0;\n"
     "CREATE TABLE deliveries (\n"
     "    order_id TEXT NOT NULL,\n"
     "    status TEXT NOT NULL,\n"
     "    notification_id TEXT NOT NULL,\n"
     "    delivered_ms INTEGER NOT NULL,\n"
     "    fallback INTEGER NOT NULL CHECK (fallback IN (0, 1)),\n"
     "    PRIMARY KEY (order_id, status)\n"
     ") STRICT, WITHOUT ROWID;\n",
     NULL},
    {2, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA, NULL},
    {3, "outbox", MOAT_OUTBOX_SCHEMA, NULL},
    /* Deliveries recorded before the outbox existed get their
     * NotificationSent now, oldest first, so that a consumer replaying the
     * feed from 0 learns of every email ever sent. The id is random like
     * the outbox's own (32 hex digits); no trace (the request is long
     * gone). */
    {4, "NotificationSent for the deliveries recorded before the outbox",
     "INSERT INTO moat_outbox (id, type, subject, time_ms, schema_version,\n"
     "                         data)\n"
     "SELECT lower(hex(randomblob(16))), 'NotificationSent', d.order_id,\n"
     "       d.delivered_ms, 1,\n"
     "       json_object('notification_id', d.notification_id,\n"
     "                   'order_id', d.order_id,\n"
     "                   'customer_id', n.customer_id, 'kind', n.kind,\n"
     "                   'status', d.status,\n"
     "                   'delivered_at', d.delivered_ms / 1000,\n"
     "                   'fallback', json(iif(d.fallback, 'true', 'false')))\n"
     "FROM deliveries d JOIN notifications n\n"
     "    ON n.order_id = d.order_id AND n.status = d.status\n"
     "ORDER BY d.delivered_ms, d.order_id, d.status;\n",
     NULL},
};

const struct moat_migration *ntf_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

int ntf_store_open(struct moat_db **out, const char *data_dir,
                   struct moat_metrics *metrics)
{
    return moat_db_open_migrated(out, data_dir, DB_FILE, NULL, metrics,
                                 migrations, MOAT_ARRAY_LEN(migrations));
}

bool ntf_store_ready(struct moat_db *db, const char **why)
{
    return moat_db_migrated(db, migrations, MOAT_ARRAY_LEN(migrations), why);
}

/* ---- rows ---- */

void ntf_row_release(struct ntf_row *r)
{
    if (!r)
        return;
    free(r->id);
    free(r->order_id);
    free(r->status);
    free(r->customer_id);
    free(r->kind);
    free(r->subject);
    free(r->body);
    free(r->trace_id);
    free(r->event_id);
    memset(r, 0, sizeof(*r));
}

void ntf_rows_free(struct ntf_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ntf_row_release(&rows[i]);
    free(rows);
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? moat_xstrdup((const char *)t) : NULL;
}

/* The columns every read selects, in this order. */
#define ROW_COLUMNS                                                            \
    "id, order_id, status, customer_id, kind, subject, body, trace_id, "       \
    "event_id, seq, created_ms, delivered, delivered_ms"

static void row_read(sqlite3_stmt *st, struct ntf_row *r)
{
    r->id = col_dup(st, 0);
    r->order_id = col_dup(st, 1);
    r->status = col_dup(st, 2);
    r->customer_id = col_dup(st, 3);
    r->kind = col_dup(st, 4);
    r->subject = col_dup(st, 5);
    r->body = col_dup(st, 6);
    r->trace_id = col_dup(st, 7);
    r->event_id = col_dup(st, 8);
    r->seq = sqlite3_column_int64(st, 9);
    r->created_ms = sqlite3_column_int64(st, 10);
    r->delivered = sqlite3_column_int(st, 11) != 0;
    r->delivered_ms = sqlite3_column_int64(st, 12);
}

/* Step stmt to the end, collecting at most cap rows. */
static int rows_collect(struct moat_db *db, struct moat_stmt *stmt, size_t cap,
                        struct ntf_row **rows, size_t *n)
{
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    struct ntf_row *out = moat_xcalloc(cap ? cap : 1, sizeof(*out));
    size_t count = 0;
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW && count < cap)
        row_read(st, &out[count++]);
    int rc = step == SQLITE_ROW || step == SQLITE_DONE
                 ? MOAT_OK
                 : moat_db_error(db, step);
    moat_stmt_reset(stmt);
    if (rc != MOAT_OK) {
        ntf_rows_free(out, count);
        return rc;
    }
    *rows = out;
    *n = count;
    return MOAT_OK;
}

static void bind_opt(sqlite3_stmt *st, int idx, const char *v)
{
    if (v)
        sqlite3_bind_text(st, idx, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, idx);
}

/* ---- writes ---- */

int ntf_store_insert(struct moat_db *db, const struct ntf_row *r,
                     bool *inserted)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "notification_insert",
        "INSERT INTO notifications (id, order_id, status, customer_id, kind, "
        "subject, body, trace_id, event_id, seq, created_ms, delivered, "
        "delivered_ms) "
        "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, "
        "d.order_id IS NOT NULL, d.delivered_ms "
        "FROM (SELECT 1) LEFT JOIN deliveries d "
        "ON d.order_id = ?2 AND d.status = ?3 "
        /* WHERE true: SQLite's parser needs it to tell the upsert's ON
         * CONFLICT from a join constraint. */
        "WHERE true ON CONFLICT DO NOTHING");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->customer_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, r->subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, r->body, -1, SQLITE_STATIC);
    bind_opt(st, 8, r->trace_id);
    sqlite3_bind_text(st, 9, r->event_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, r->seq);
    sqlite3_bind_int64(st, 11, r->created_ms);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE)
        return moat_db_error(db, step);
    *inserted = sqlite3_changes(moat_db_handle(db)) > 0;
    return MOAT_OK;
}

int ntf_store_reset(struct moat_db *db)
{
    return moat_db_exec(db, "notifications_reset", "DELETE FROM notifications");
}

/* NotificationSent's data (docs/notifications.md): the ids, the kind and
 * the order status the email announced, when it was written (seconds, as
 * the API shows it) and whether it went to the fallback address. */
static json_t *sent_event_data(const struct ntf_row *r, int64_t delivered_ms,
                               bool fallback)
{
    json_t *d =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:b}", "notification_id",
                  r->id, "order_id", r->order_id, "customer_id", r->customer_id,
                  "kind", r->kind, "status", r->status, "delivered_at",
                  (json_int_t)(delivered_ms / 1000), "fallback", fallback);
    if (!d)
        moat_die("cannot build NotificationSent's data");
    return d;
}

/* One delivery record, inside the caller's transaction; *recorded when it
 * is new (and its event appended). */
static int mark_one(struct moat_db *db, struct moat_outbox *outbox,
                    const struct ntf_mark *m, bool *recorded)
{
    const struct ntf_row *r = m->row;
    int64_t delivered_ms = m->delivered_ms;
    bool fallback = m->fallback;
    struct moat_stmt *ins = moat_db_prepare(
        db, "delivery_insert",
        "INSERT INTO deliveries (order_id, status, notification_id, "
        "delivered_ms, fallback) VALUES (?1, ?2, ?3, ?4, ?5) "
        "ON CONFLICT DO NOTHING");
    struct moat_stmt *upd = moat_db_prepare(
        db, "notification_mark",
        "UPDATE notifications SET delivered = 1, delivered_ms = "
        "(SELECT delivered_ms FROM deliveries WHERE order_id = ?2 AND "
        "status = ?3) WHERE id = ?1 AND delivered = 0");
    if (!ins || !upd)
        return MOAT_EDB;
    int rc = MOAT_OK;
    sqlite3_stmt *st = moat_stmt_raw(ins);
    sqlite3_bind_text(st, 1, r->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, delivered_ms);
    sqlite3_bind_int(st, 5, fallback ? 1 : 0);
    int step = moat_stmt_step(ins);
    moat_stmt_reset(ins);
    if (step != SQLITE_DONE)
        return moat_db_error(db, step);
    /* The event only with the record that it describes: a second call
     * (the record exists) publishes nothing. */
    *recorded = sqlite3_changes(moat_db_handle(db)) > 0;
    if (*recorded && outbox) {
        json_t *data = sent_event_data(r, delivered_ms, fallback);
        rc = moat_outbox_append(outbox, NOTIFICATIONS_NOTIFICATION_SENT,
                                r->order_id, NOTIFICATIONS_SENT_SCHEMA, data,
                                NULL);
        json_decref(data);
        if (rc != MOAT_OK)
            return rc;
    }
    st = moat_stmt_raw(upd);
    sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->status, -1, SQLITE_STATIC);
    step = moat_stmt_step(upd);
    moat_stmt_reset(upd);
    return step == SQLITE_DONE ? MOAT_OK : moat_db_error(db, step);
}

int ntf_store_mark_delivered_many(struct moat_db *db,
                                  struct moat_outbox *outbox,
                                  const struct ntf_mark *marks, size_t n)
{
    int rc = moat_db_begin(db);
    if (rc != MOAT_OK)
        return rc;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        bool recorded = false;
        rc = mark_one(db, outbox, &marks[i], &recorded);
        if (rc != MOAT_OK) {
            moat_db_rollback(db);
            return rc;
        }
        any = any || recorded;
    }
    rc = moat_db_commit(db);
    if (rc != MOAT_OK) {
        moat_db_rollback(db);
        return rc;
    }
    if (any && outbox)
        moat_outbox_committed(outbox);
    return MOAT_OK;
}

int ntf_store_mark_delivered(struct moat_db *db, struct moat_outbox *outbox,
                             const struct ntf_row *r, int64_t delivered_ms,
                             bool fallback)
{
    const struct ntf_mark m = {r, delivered_ms, fallback};
    return ntf_store_mark_delivered_many(db, outbox, &m, 1);
}

/* ---- reads ---- */

int ntf_store_undelivered(struct moat_db *db, const char *after, size_t max,
                          struct ntf_row **rows, size_t *n)
{
    struct moat_stmt *stmt =
        moat_db_prepare(db, "notifications_undelivered",
                        "SELECT " ROW_COLUMNS " FROM notifications "
                        "WHERE delivered = 0 AND id > ?1 ORDER BY id LIMIT ?2");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
    return rows_collect(db, stmt, max, rows, n);
}

int ntf_store_backlog(struct moat_db *db, int64_t *count, int64_t *oldest_ms)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "notifications_backlog",
        "SELECT count(*), coalesce(min(created_ms), 0) FROM notifications "
        "WHERE delivered = 0");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    int step = moat_stmt_step(stmt);
    if (step == SQLITE_ROW) {
        *count = sqlite3_column_int64(st, 0);
        *oldest_ms = sqlite3_column_int64(st, 1);
    }
    moat_stmt_reset(stmt);
    return step == SQLITE_ROW ? MOAT_OK : moat_db_error(db, step);
}

int ntf_store_get(struct moat_db *db, const char *id, struct ntf_row *out)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "notification_get",
        "SELECT " ROW_COLUMNS " FROM notifications WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, id, -1, SQLITE_STATIC);
    struct ntf_row *rows = NULL;
    size_t n = 0;
    int rc = rows_collect(db, stmt, 1, &rows, &n);
    if (rc != MOAT_OK)
        return rc;
    if (n == 0) {
        free(rows);
        return MOAT_ENOTFOUND;
    }
    *out = rows[0];
    free(rows);
    return MOAT_OK;
}

int ntf_store_list(struct moat_db *db, const struct ntf_query *q,
                   struct ntf_row **rows, size_t *n)
{
    /* One statement per combination of filters, so that each uses its
     * index: (customer_id, id) for a customer's list, (order_id, status)
     * for an order's, the primary key otherwise. */
    static const struct {
        const char *name, *where;
    } shapes[] = {
        {"notifications_list", "id > ?3"},
        {"notifications_list_customer", "customer_id = ?1 AND id > ?3"},
        {"notifications_list_order", "order_id = ?2 AND id > ?3"},
        {"notifications_list_both",
         "customer_id = ?1 AND order_id = ?2 AND id > ?3"},
    };
    size_t k = (q->customer_id ? 1 : 0) + (q->order_id ? 2 : 0);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT " ROW_COLUMNS " FROM notifications WHERE %s "
             "ORDER BY id LIMIT ?4",
             shapes[k].where);
    struct moat_stmt *stmt = moat_db_prepare(db, shapes[k].name, sql);
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    if (q->customer_id)
        sqlite3_bind_text(st, 1, q->customer_id, -1, SQLITE_STATIC);
    if (q->order_id)
        sqlite3_bind_text(st, 2, q->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, q->after ? q->after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)q->limit);
    return rows_collect(db, stmt, q->limit, rows, n);
}

/* ---- compare (replay --verify) ---- */

int ntf_store_compare(struct moat_db *live, struct moat_db *scratch,
                      json_t *diffs, size_t max_diffs)
{
    /* Everything the events decide; not delivered / delivered_ms, which
     * the deliverer sets (and a scratch database never delivers). */
    static const struct moat_view_table tables[] = {
        {"compare_notifications",
         "SELECT id, order_id, status, customer_id, kind, subject, body, "
         "trace_id, event_id, seq, created_ms FROM notifications ORDER BY id",
         "notification"},
    };
    return moat_view_compare_tables(live, scratch, tables,
                                    MOAT_ARRAY_LEN(tables), diffs, max_diffs);
}
