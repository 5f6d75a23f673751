/*
 * store.c - orders' schema and every read and write of it (store.h).
 *
 * Schema migrations are checksummed by moat_db_migrate: never edit an
 * applied one, append a new step. Each has its SQLite text and its
 * PostgreSQL twin (moat/db.h); every query below is in the dialect the two
 * share, so the store runs on either engine ("engine": "postgres" in the
 * deployment hands the service MOAT_DB_DSN).
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

#define DB_FILE "orders.db"

static const struct moat_migration migrations[] = {
    {1, "orders, lines, idempotency, customers",
     "CREATE TABLE orders (\n"
     "    id TEXT NOT NULL PRIMARY KEY,\n"
     "    customer_id TEXT NOT NULL,\n"
     "    status TEXT NOT NULL,\n"
     "    step TEXT NOT NULL,\n"
     "    cancel_reason TEXT NOT NULL DEFAULT '',\n"
     "    total INTEGER NOT NULL,\n"
     "    currency TEXT NOT NULL,\n"
     "    payment_id TEXT NOT NULL DEFAULT '',\n"
     "    card_token TEXT NOT NULL DEFAULT '',\n"
     "    flags INTEGER NOT NULL DEFAULT 0,\n"
     "    pending_comp INTEGER NOT NULL DEFAULT 0,\n"
     "    deadline_ms INTEGER NOT NULL DEFAULT 0,\n"
     "    traceparent TEXT NOT NULL DEFAULT '',\n"
     "    version INTEGER NOT NULL,\n"
     "    created_ms INTEGER NOT NULL,\n"
     "    updated_ms INTEGER NOT NULL,\n"
     "    completed_ms INTEGER NOT NULL DEFAULT 0\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX orders_by_customer ON orders (customer_id, id);\n"
     "CREATE INDEX orders_by_deadline ON orders (deadline_ms)\n"
     "    WHERE step IN ('reserving', 'authorizing');\n"
     "CREATE TABLE order_lines (\n"
     "    order_id TEXT NOT NULL,\n"
     "    n INTEGER NOT NULL,\n"
     "    product_id TEXT NOT NULL,\n"
     "    sku TEXT NOT NULL,\n"
     "    name TEXT NOT NULL,\n"
     "    unit_price INTEGER NOT NULL,\n"
     "    quantity INTEGER NOT NULL,\n"
     "    PRIMARY KEY (order_id, n)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE idempotency (\n"
     "    customer_id TEXT NOT NULL,\n"
     "    key TEXT NOT NULL,\n"
     "    fingerprint TEXT NOT NULL,\n"
     "    order_id TEXT NOT NULL,\n"
     "    created_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (customer_id, key)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE customers (\n"
     "    id TEXT NOT NULL PRIMARY KEY,\n"
     "    name TEXT,\n"
     "    email TEXT,\n"
     "    stale INTEGER NOT NULL,\n"
     "    updated_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX customers_stale ON customers (id) WHERE stale = 1;\n",
     "CREATE TABLE orders (\n"
     "    id text NOT NULL PRIMARY KEY,\n"
     "    customer_id text NOT NULL,\n"
     "    status text NOT NULL,\n"
     "    step text NOT NULL,\n"
     "    cancel_reason text NOT NULL DEFAULT '',\n"
     "    total bigint NOT NULL,\n"
     "    currency text NOT NULL,\n"
     "    payment_id text NOT NULL DEFAULT '',\n"
     "    card_token text NOT NULL DEFAULT '',\n"
     "    flags bigint NOT NULL DEFAULT 0,\n"
     "    pending_comp bigint NOT NULL DEFAULT 0,\n"
     "    deadline_ms bigint NOT NULL DEFAULT 0,\n"
     "    traceparent text NOT NULL DEFAULT '',\n"
     "    version bigint NOT NULL,\n"
     "    created_ms bigint NOT NULL,\n"
     "    updated_ms bigint NOT NULL,\n"
     "    completed_ms bigint NOT NULL DEFAULT 0\n"
     ");\n"
     "CREATE INDEX orders_by_customer ON orders (customer_id, id);\n"
     "CREATE INDEX orders_by_deadline ON orders (deadline_ms)\n"
     "    WHERE step IN ('reserving', 'authorizing');\n"
     "CREATE TABLE order_lines (\n"
     "    order_id text NOT NULL,\n"
     "    n bigint NOT NULL,\n"
     "    product_id text NOT NULL,\n"
     "    sku text NOT NULL,\n"
     "    name text NOT NULL,\n"
     "    unit_price bigint NOT NULL,\n"
     "    quantity bigint NOT NULL,\n"
     "    PRIMARY KEY (order_id, n)\n"
     ");\n"
     "CREATE TABLE idempotency (\n"
     "    customer_id text NOT NULL,\n"
     "    key text NOT NULL,\n"
     "    fingerprint text NOT NULL,\n"
     "    order_id text NOT NULL,\n"
     "    created_ms bigint NOT NULL,\n"
     "    PRIMARY KEY (customer_id, key)\n"
     ");\n"
     "CREATE TABLE customers (\n"
     "    id text NOT NULL PRIMARY KEY,\n"
     "    name text,\n"
     "    email text,\n"
     "    stale bigint NOT NULL,\n"
     "    updated_ms bigint NOT NULL\n"
     ");\n"
     "CREATE INDEX customers_stale ON customers (id) WHERE stale = 1;\n"},
    {2, "outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
    {3, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA,
     MOAT_CONSUMER_SCHEMA_PG},
    /* The customer copy sealed (customer_store.c): what was stored in
     * plain text is dropped and marked stale, so the refresher fetches it
     * again from users and stores it sealed; secure_delete (ord_store_open)
     * overwrites the old text. key_id 0: nothing sealed in the row. */
    {4, "sealed customer copies",
     "ALTER TABLE customers RENAME COLUMN name TO name_enc;\n"
     "ALTER TABLE customers RENAME COLUMN email TO email_enc;\n"
     "ALTER TABLE customers ADD COLUMN key_id INTEGER NOT NULL DEFAULT 0;\n"
     "UPDATE customers SET name_enc = NULL, email_enc = NULL, stale = 1;\n"
     "CREATE INDEX customers_key_id ON customers (key_id);\n",
     "ALTER TABLE customers RENAME COLUMN name TO name_enc;\n"
     "ALTER TABLE customers RENAME COLUMN email TO email_enc;\n"
     "ALTER TABLE customers ADD COLUMN key_id bigint NOT NULL DEFAULT 0;\n"
     "UPDATE customers SET name_enc = NULL, email_enc = NULL, stale = 1;\n"
     "CREATE INDEX customers_key_id ON customers (key_id);\n"},
};

const struct moat_migration *ord_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

int ord_store_open(struct moat_db **out, const char *data_dir, const char *dsn,
                   struct moat_metrics *metrics)
{
    /* secure_delete: a re-sealed or dropped customer copy leaves no old
     * text in free pages; the checkpoint empties the WAL of what an
     * earlier run (or migration 4) wrote there. */
    const struct moat_db_options opts = {.secure_delete = true, .dsn = dsn};
    int rc = moat_db_open_migrated(out, data_dir, DB_FILE, &opts, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc == MOAT_OK && moat_db_engine(*out) == MOAT_DB_SQLITE)
        rc = moat_db_exec(*out, "wal_truncate",
                          "PRAGMA wal_checkpoint(TRUNCATE)");
    if (rc != MOAT_OK && *out) {
        moat_db_close(*out);
        *out = NULL;
    }
    return rc;
}

bool ord_store_ready(struct moat_db *db, const char **why)
{
    return moat_db_migrated(db, migrations, MOAT_ARRAY_LEN(migrations), why);
}

void ord_order_release(struct ord_order *o)
{
    for (size_t i = 0; o->lines && i < o->nlines; i++)
        free(o->lines[i].name);
    free(o->lines);
    o->lines = NULL;
    o->nlines = 0;
}

void ord_customer_release(struct ord_customer *c)
{
    free(c->name);
    free(c->email);
    c->name = c->email = NULL;
}

/* ---- small binding helpers ---- */

static void bind_text(struct moat_stmt *st, int i, const char *s)
{
    moat_stmt_bind_text(st, i, s);
}

static void bind_i64(struct moat_stmt *st, int i, int64_t v)
{
    moat_stmt_bind_int64(st, i, v);
}

static void col_copy(struct moat_stmt *st, int i, char *out, size_t cap)
{
    const char *s = moat_stmt_text(st, i);
    snprintf(out, cap, "%s", s ? s : "");
}

static int64_t col_i64(struct moat_stmt *st, int i)
{
    return moat_stmt_int64(st, i);
}

static char *col_dup(struct moat_stmt *st, int i)
{
    const char *s = moat_stmt_text(st, i);
    return s ? moat_xstrdup(s) : NULL;
}

/* Finish a write statement: MOAT_OK on SQLITE_DONE. */
static int step_done(struct moat_db *db, struct moat_stmt *st)
{
    int src = moat_stmt_step(st);
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}

/* ---- orders ---- */

#define ORDER_COLS                                                             \
    "id, customer_id, status, step, cancel_reason, total, currency, "          \
    "payment_id, card_token, flags, pending_comp, deadline_ms, traceparent, "  \
    "version, created_ms, updated_ms, completed_ms"

static void order_from_row(struct moat_stmt *st, struct ord_order *o)
{
    memset(o, 0, sizeof(*o));
    col_copy(st, 0, o->id, sizeof(o->id));
    col_copy(st, 1, o->customer_id, sizeof(o->customer_id));
    col_copy(st, 2, o->status, sizeof(o->status));
    col_copy(st, 3, o->step, sizeof(o->step));
    col_copy(st, 4, o->cancel_reason, sizeof(o->cancel_reason));
    o->total = col_i64(st, 5);
    col_copy(st, 6, o->currency, sizeof(o->currency));
    col_copy(st, 7, o->payment_id, sizeof(o->payment_id));
    col_copy(st, 8, o->card_token, sizeof(o->card_token));
    o->flags = col_i64(st, 9);
    o->pending_comp = col_i64(st, 10);
    o->deadline_ms = col_i64(st, 11);
    col_copy(st, 12, o->traceparent, sizeof(o->traceparent));
    o->version = col_i64(st, 13);
    o->created_ms = col_i64(st, 14);
    o->updated_ms = col_i64(st, 15);
    o->completed_ms = col_i64(st, 16);
}

int ord_order_lines_load(struct moat_db *db, struct ord_order *o)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "order_lines_get",
        "SELECT product_id, sku, name, unit_price, quantity FROM order_lines "
        "WHERE order_id = ?1 ORDER BY n");
    if (!st)
        return MOAT_EDB;
    bind_text(st, 1, o->id);
    int src;
    size_t cap = 0;
    while ((src = moat_stmt_step(st)) == SQLITE_ROW) {
        if (o->nlines == cap) {
            cap = cap ? 2 * cap : 4;
            o->lines = moat_xrealloc(o->lines, cap * sizeof(o->lines[0]));
        }
        struct ord_line *l = &o->lines[o->nlines++];
        memset(l, 0, sizeof(*l));
        col_copy(st, 0, l->product_id, sizeof(l->product_id));
        col_copy(st, 1, l->sku, sizeof(l->sku));
        l->name = col_dup(st, 2);
        if (!l->name)
            l->name = moat_xstrdup("");
        l->unit_price = col_i64(st, 3);
        l->quantity = col_i64(st, 4);
    }
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}

int ord_order_get(struct moat_db *db, const char *id, bool with_lines,
                  struct ord_order *out)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "order_get", "SELECT " ORDER_COLS " FROM orders WHERE id = ?1");
    if (!st)
        return MOAT_EDB;
    bind_text(st, 1, id);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW)
        order_from_row(st, out);
    else
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(db, src);
    moat_stmt_reset(st);
    if (rc == MOAT_OK && with_lines) {
        rc = ord_order_lines_load(db, out);
        if (rc != MOAT_OK)
            ord_order_release(out);
    }
    return rc;
}

int ord_order_insert(struct moat_db *db, const struct ord_order *o)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "order_insert",
        "INSERT INTO orders (" ORDER_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
        "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)");
    if (!st)
        return MOAT_EDB;
    bind_text(st, 1, o->id);
    bind_text(st, 2, o->customer_id);
    bind_text(st, 3, o->status);
    bind_text(st, 4, o->step);
    bind_text(st, 5, o->cancel_reason);
    bind_i64(st, 6, o->total);
    bind_text(st, 7, o->currency);
    bind_text(st, 8, o->payment_id);
    bind_text(st, 9, o->card_token);
    bind_i64(st, 10, o->flags);
    bind_i64(st, 11, o->pending_comp);
    bind_i64(st, 12, o->deadline_ms);
    bind_text(st, 13, o->traceparent);
    bind_i64(st, 14, o->version);
    bind_i64(st, 15, o->created_ms);
    bind_i64(st, 16, o->updated_ms);
    bind_i64(st, 17, o->completed_ms);
    int rc = step_done(db, st);
    for (size_t i = 0; rc == MOAT_OK && i < o->nlines; i++) {
        const struct ord_line *l = &o->lines[i];
        st = moat_db_prepare(db, "order_line_insert",
                             "INSERT INTO order_lines (order_id, n, "
                             "product_id, sku, name, unit_price, quantity) "
                             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
        if (!st)
            return MOAT_EDB;
        bind_text(st, 1, o->id);
        bind_i64(st, 2, (int64_t)i + 1);
        bind_text(st, 3, l->product_id);
        bind_text(st, 4, l->sku);
        bind_text(st, 5, l->name);
        bind_i64(st, 6, l->unit_price);
        bind_i64(st, 7, l->quantity);
        rc = step_done(db, st);
    }
    return rc;
}

int ord_order_update(struct moat_db *db, struct ord_order *o)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "order_update",
        "UPDATE orders SET status = ?2, step = ?3, cancel_reason = ?4, "
        "payment_id = ?5, card_token = ?6, flags = ?7, pending_comp = ?8, "
        "deadline_ms = ?9, version = version + 1, updated_ms = ?10, "
        "completed_ms = ?11 WHERE id = ?1 AND version = ?12");
    if (!st)
        return MOAT_EDB;
    o->updated_ms = moat_wall_ms();
    bind_text(st, 1, o->id);
    bind_text(st, 2, o->status);
    bind_text(st, 3, o->step);
    bind_text(st, 4, o->cancel_reason);
    bind_text(st, 5, o->payment_id);
    bind_text(st, 6, o->card_token);
    bind_i64(st, 7, o->flags);
    bind_i64(st, 8, o->pending_comp);
    bind_i64(st, 9, o->deadline_ms);
    bind_i64(st, 10, o->updated_ms);
    bind_i64(st, 11, o->completed_ms);
    bind_i64(st, 12, o->version);
    int rc = step_done(db, st);
    if (rc == MOAT_OK) {
        if (moat_db_changes(db) != 1)
            return MOAT_ECONFLICT; /* moved on under us: a bug */
        o->version++;
    }
    return rc;
}

int ord_orders_overdue(struct moat_db *db, int64_t now_ms, size_t limit,
                       char (*ids)[ORD_ID_MAX], size_t *n)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "orders_overdue",
        "SELECT id FROM orders WHERE step IN ('reserving', 'authorizing') "
        "AND deadline_ms <= ?1 ORDER BY deadline_ms LIMIT ?2");
    if (!st)
        return MOAT_EDB;
    bind_i64(st, 1, now_ms);
    bind_i64(st, 2, (int64_t)limit);
    *n = 0;
    int src;
    while ((src = moat_stmt_step(st)) == SQLITE_ROW && *n < limit)
        col_copy(st, 0, ids[(*n)++], ORD_ID_MAX);
    int rc = (src == SQLITE_DONE || src == SQLITE_ROW) ? MOAT_OK
                                                       : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}

int ord_orders_list(struct moat_db *db, const char *customer_id,
                    const char *status, const char *after, size_t limit,
                    void (*fn)(const struct ord_order *, void *), void *arg)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "orders_list",
        "SELECT " ORDER_COLS " FROM orders WHERE id > ?1 "
        "AND (?2 = '' OR customer_id = ?2) AND (?3 = '' OR status = ?3) "
        "ORDER BY id LIMIT ?4");
    if (!st)
        return MOAT_EDB;
    bind_text(st, 1, after ? after : "");
    bind_text(st, 2, customer_id ? customer_id : "");
    bind_text(st, 3, status ? status : "");
    bind_i64(st, 4, (int64_t)limit);
    int src;
    while ((src = moat_stmt_step(st)) == SQLITE_ROW) {
        struct ord_order o;
        order_from_row(st, &o);
        fn(&o, arg);
    }
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}

int ord_sagas_summary(struct moat_db *db, int64_t now_ms, json_t **out)
{
    json_t *by_status = json_object(), *by_step = json_object();
    int64_t oldest = 0;
    struct moat_stmt *st = moat_db_prepare(
        db, "sagas_summary",
        "SELECT status, step, count(*), min(created_ms) FROM orders "
        "GROUP BY status, step");
    int rc = MOAT_EDB;
    if (!st)
        goto fail;
    int src;
    while ((src = moat_stmt_step(st)) == SQLITE_ROW) {
        char status[16], step[16];
        col_copy(st, 0, status, sizeof(status));
        col_copy(st, 1, step, sizeof(step));
        int64_t n = col_i64(st, 2), min_created = col_i64(st, 3);
        json_t *a = json_object_get(by_status, status);
        json_object_set_new(by_status, status,
                            json_integer(json_integer_value(a) + n));
        if (strcmp(step, "done") != 0) {
            a = json_object_get(by_step, step);
            json_object_set_new(by_step, step,
                                json_integer(json_integer_value(a) + n));
            if (!oldest || min_created < oldest)
                oldest = min_created;
        }
    }
    rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(db, src);
    moat_stmt_reset(st);
    if (rc != MOAT_OK)
        goto fail;
    *out = json_pack("{s:o, s:o, s:f}", "by_status", by_status, "by_step",
                     by_step, "oldest_open_age_seconds",
                     oldest ? (double)(now_ms - oldest) / 1000.0 : 0.0);
    return MOAT_OK;

fail:
    json_decref(by_status);
    json_decref(by_step);
    return rc;
}

/* ---- idempotency ---- */

int ord_idem_get(struct moat_db *db, const char *customer_id, const char *key,
                 char fingerprint[65], char order_id[ORD_ID_MAX])
{
    struct moat_stmt *st =
        moat_db_prepare(db, "idem_get",
                        "SELECT fingerprint, order_id FROM idempotency "
                        "WHERE customer_id = ?1 AND key = ?2");
    if (!st)
        return MOAT_EDB;
    bind_text(st, 1, customer_id);
    bind_text(st, 2, key);
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW) {
        col_copy(st, 0, fingerprint, 65);
        col_copy(st, 1, order_id, ORD_ID_MAX);
    } else {
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(db, src);
    }
    moat_stmt_reset(st);
    return rc;
}

int ord_idem_insert(struct moat_db *db, const char *customer_id,
                    const char *key, const char *fingerprint,
                    const char *order_id, int64_t now_ms)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "idem_insert",
        "INSERT INTO idempotency (customer_id, key, fingerprint, order_id, "
        "created_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!st)
        return MOAT_EDB;
    bind_text(st, 1, customer_id);
    bind_text(st, 2, key);
    bind_text(st, 3, fingerprint);
    bind_text(st, 4, order_id);
    bind_i64(st, 5, now_ms);
    return step_done(db, st);
}

/* ---- customers ---- */

int ord_customer_mark_stale(struct moat_db *db, const char *id, int64_t now_ms)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "customer_stale",
        "INSERT INTO customers (id, stale, updated_ms) VALUES (?1, 1, ?2) "
        "ON CONFLICT (id) DO UPDATE SET stale = 1, updated_ms = ?2");
    if (!st)
        return MOAT_EDB;
    bind_text(st, 1, id);
    bind_i64(st, 2, now_ms);
    return step_done(db, st);
}

int ord_customers_stale(struct moat_db *db, size_t limit,
                        char (*ids)[ORD_REF_MAX + 1], size_t *n)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "customers_stale",
        "SELECT id FROM customers WHERE stale = 1 ORDER BY id LIMIT ?1");
    if (!st)
        return MOAT_EDB;
    bind_i64(st, 1, (int64_t)limit);
    *n = 0;
    int src;
    while ((src = moat_stmt_step(st)) == SQLITE_ROW && *n < limit)
        col_copy(st, 0, ids[(*n)++], ORD_REF_MAX + 1);
    int rc = (src == SQLITE_DONE || src == SQLITE_ROW) ? MOAT_OK
                                                       : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}
