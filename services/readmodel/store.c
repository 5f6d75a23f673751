/* store.c - the read model's schema and queries (see store.h). */
#include "moat/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/events.h"
#include "moat/log.h"
#include "store.h"

#define DB_FILE "readmodel.db"

/*
 * Schema migrations. An applied migration is checksummed by moat_db_migrate:
 * never edit one that has shipped, append a new version instead.
 *
 * orders is keyed (customer_id, order_id) WITHOUT ROWID, so a customer's
 * page is one range of the primary key in order id order; orders_by_id
 * finds the row of an event that names only the order. doc is the order
 * exactly as the API shows it, rendered from the row's columns and the
 * products of its lines (RENDER_DOC) whenever one of them changes;
 * order_products finds the orders to render again when a product changes.
 */
static const struct moat_migration migrations[] = {
    {1, "create the order history view",
     "CREATE TABLE orders (\n"
     "    customer_id TEXT NOT NULL,\n"
     "    order_id TEXT NOT NULL,\n"
     "    status TEXT NOT NULL\n"
     "        CHECK (status IN ('pending', 'confirmed', 'cancelled')),\n"
     "    cancel_reason TEXT,\n"
     "    total INTEGER NOT NULL,\n"
     "    currency TEXT NOT NULL,\n"
     "    placed_ms INTEGER NOT NULL,\n"
     "    lines TEXT NOT NULL\n"
     "        CHECK (json_valid(lines) AND json_type(lines) = 'array'),\n"
     "    payment TEXT CHECK (payment IS NULL OR json_valid(payment)),\n"
     "    notifications TEXT NOT NULL DEFAULT '[]'\n"
     "        CHECK (json_valid(notifications)),\n"
     "    doc TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(doc)),\n"
     "    seq INTEGER NOT NULL,\n"
     "    PRIMARY KEY (customer_id, order_id)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE UNIQUE INDEX orders_by_id ON orders (order_id);\n"
     "CREATE TABLE order_products (\n"
     "    product_id TEXT NOT NULL,\n"
     "    order_id TEXT NOT NULL,\n"
     "    PRIMARY KEY (product_id, order_id)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE products (\n"
     "    product_id TEXT NOT NULL PRIMARY KEY,\n"
     "    name TEXT,\n"
     "    price_amount INTEGER,\n"
     "    currency TEXT,\n"
     "    deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),\n"
     "    seq INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE payments (\n"
     "    order_id TEXT NOT NULL PRIMARY KEY,\n"
     "    payment_id TEXT NOT NULL,\n"
     "    status TEXT NOT NULL,\n"
     "    seq INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE notifications (\n"
     "    order_id TEXT NOT NULL,\n"
     "    notification_id TEXT NOT NULL,\n"
     "    kind TEXT NOT NULL,\n"
     "    status TEXT NOT NULL,\n"
     "    sent_ms INTEGER NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    PRIMARY KEY (order_id, notification_id)\n"
     ") STRICT, WITHOUT ROWID;\n",
     NULL},
    {2, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA, NULL},
};

/* The JSON the view embeds for an order's payment and notifications, from
 * their tables (x: the SQL naming the order id). Notifications in id
 * order, which is the order of the state changes they announce. */
#define PAYMENT_OF(x)                                                          \
    "(SELECT json_object('payment_id', p.payment_id, 'status', p.status) "     \
    "FROM payments p WHERE p.order_id = " x ")"
#define NOTIFICATIONS_OF(x)                                                    \
    "(SELECT json_group_array(json_object('kind', n.kind, 'status', "          \
    "n.status, 'sent_at', n.sent_ms / 1000)) FROM (SELECT kind, status, "      \
    "sent_ms FROM notifications WHERE order_id = " x                           \
    " ORDER BY notification_id) n)"

/*
 * The order as the API shows it (docs/readmodel.md), from the row of
 * orders being updated and the current products of its lines (joined by
 * primary key, in line order).
 */
#define RENDER_DOC                                                             \
    "json_object('order_id', orders.order_id, 'status', orders.status, "       \
    "'cancel_reason', orders.cancel_reason, 'total', orders.total, "           \
    "'currency', orders.currency, 'placed_at', orders.placed_ms / 1000, "      \
    "'lines', (SELECT json_group_array(json_object("                           \
    "'product_id', l.value ->> 'product_id', 'sku', l.value ->> 'sku', "       \
    "'name', l.value ->> 'name', 'current_name', p.name, "                     \
    "'unit_price_paid', l.value ->> 'unit_price', "                            \
    "'current_price', p.price_amount, 'current_currency', p.currency, "        \
    "'quantity', l.value ->> 'quantity')) "                                    \
    "FROM json_each(orders.lines) l "                                          \
    "LEFT JOIN products p ON p.product_id = l.value ->> 'product_id'), "       \
    "'payment', json(orders.payment), "                                        \
    "'notifications', json(orders.notifications))"

const struct moat_migration *rm_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

int rm_store_open(struct moat_db **out, const char *data_dir,
                  struct moat_metrics *metrics)
{
    return moat_db_open_migrated(out, data_dir, DB_FILE, NULL, metrics,
                                 migrations, MOAT_ARRAY_LEN(migrations));
}

bool rm_store_ready(struct moat_db *db, const char **why)
{
    return moat_db_migrated(db, migrations, MOAT_ARRAY_LEN(migrations), why);
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
        *changed = sqlite3_changes(moat_db_handle(db)) > 0;
    return MOAT_OK;
}

static void bind_text(sqlite3_stmt *st, int idx, const char *v)
{
    if (v)
        sqlite3_bind_text(st, idx, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, idx);
}

/* Whether a row with key exists (stmt selects 1 for ?1 = key). */
static int exists(struct moat_db *db, struct moat_stmt *stmt, const char *key,
                  bool *found)
{
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, key, -1, SQLITE_STATIC);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return moat_db_error(db, step);
    *found = step == SQLITE_ROW;
    return MOAT_OK;
}

/* Render the order's doc again from its row and its products. */
static int order_render(struct moat_db *db, const char *order_id)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "order_render",
        "UPDATE orders SET doc = " RENDER_DOC " WHERE order_id = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, order_id, -1, SQLITE_STATIC);
    return step_write(db, stmt, NULL);
}

/* Render every order with a line of the product again (its current name
 * or price changed). */
static int product_render(struct moat_db *db, const char *product_id)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "product_render",
        "UPDATE orders SET doc = " RENDER_DOC
        " WHERE order_id IN (SELECT order_id FROM order_products "
        "WHERE product_id = ?1)");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, product_id, -1, SQLITE_STATIC);
    return step_write(db, stmt, NULL);
}

int rm_store_order_place(struct moat_db *db, const struct rm_order *o,
                         bool *applied)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "order_place",
        "INSERT INTO orders (customer_id, order_id, status, cancel_reason, "
        "total, currency, placed_ms, lines, payment, notifications, seq) "
        "VALUES (?1, ?2, 'pending', NULL, ?3, ?4, ?5, ?6, " PAYMENT_OF(
            "?2") ", " NOTIFICATIONS_OF("?2") ", ?7) "
                                              "ON CONFLICT DO NOTHING");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, o->customer_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, o->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, o->total);
    sqlite3_bind_text(st, 4, o->currency, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, o->placed_ms);
    sqlite3_bind_text(st, 6, o->lines, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, o->seq);
    int rc = step_write(db, stmt, applied);
    if (rc != MOAT_OK || !*applied)
        return rc;
    struct moat_stmt *products = moat_db_prepare(
        db, "order_products_insert",
        "INSERT INTO order_products (product_id, order_id) "
        "SELECT DISTINCT value ->> 'product_id', ?1 FROM json_each(?2) "
        "WHERE true ON CONFLICT DO NOTHING");
    if (!products)
        return MOAT_EDB;
    st = moat_stmt_raw(products);
    sqlite3_bind_text(st, 1, o->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, o->lines, -1, SQLITE_STATIC);
    rc = step_write(db, products, NULL);
    return rc == MOAT_OK ? order_render(db, o->order_id) : rc;
}

int rm_store_order_status(struct moat_db *db, const char *order_id,
                          const char *status, const char *reason, int64_t seq,
                          bool *applied)
{
    struct moat_stmt *stmt =
        moat_db_prepare(db, "order_status",
                        "UPDATE orders SET status = ?2, cancel_reason = ?3, "
                        "seq = ?4 WHERE order_id = ?1 AND seq < ?4");
    struct moat_stmt *find = moat_db_prepare(
        db, "order_exists", "SELECT 1 FROM orders WHERE order_id = ?1");
    if (!stmt || !find)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, status, -1, SQLITE_STATIC);
    bind_text(st, 3, reason);
    sqlite3_bind_int64(st, 4, seq);
    int rc = step_write(db, stmt, applied);
    if (rc != MOAT_OK)
        return rc;
    if (*applied)
        return order_render(db, order_id);
    bool found = false;
    rc = exists(db, find, order_id, &found);
    return rc == MOAT_OK && !found ? MOAT_ENOTFOUND : rc;
}

int rm_store_product_upsert(struct moat_db *db, const char *id,
                            const char *name, int64_t amount,
                            const char *currency, int64_t seq, bool *applied)
{
    /* A later event of the feed (its deletion included) wins; the same
     * event again writes the same values. */
    struct moat_stmt *stmt = moat_db_prepare(
        db, "product_upsert",
        "INSERT INTO products (product_id, name, price_amount, currency, "
        "deleted, seq) VALUES (?1, ?2, ?3, ?4, 0, ?5) "
        "ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, "
        "price_amount = excluded.price_amount, currency = excluded.currency, "
        "deleted = 0, seq = excluded.seq WHERE excluded.seq >= products.seq");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, amount);
    sqlite3_bind_text(st, 4, currency, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, seq);
    int rc = step_write(db, stmt, applied);
    return rc == MOAT_OK && *applied ? product_render(db, id) : rc;
}

int rm_store_product_price(struct moat_db *db, const char *id, int64_t amount,
                           const char *currency, int64_t seq, bool *applied)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "product_price",
        "UPDATE products SET price_amount = ?2, currency = ?3, seq = ?4 "
        "WHERE product_id = ?1 AND deleted = 0 AND seq <= ?4");
    struct moat_stmt *find = moat_db_prepare(
        db, "product_exists", "SELECT 1 FROM products WHERE product_id = ?1");
    if (!stmt || !find)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, amount);
    sqlite3_bind_text(st, 3, currency, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, seq);
    int rc = step_write(db, stmt, applied);
    if (rc != MOAT_OK)
        return rc;
    if (*applied)
        return product_render(db, id);
    bool found = false;
    rc = exists(db, find, id, &found);
    return rc == MOAT_OK && !found ? MOAT_ENOTFOUND : rc;
}

int rm_store_product_delete(struct moat_db *db, const char *id, int64_t seq,
                            bool *applied)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "product_delete",
        "INSERT INTO products (product_id, name, price_amount, currency, "
        "deleted, seq) VALUES (?1, NULL, NULL, NULL, 1, ?2) "
        "ON CONFLICT (product_id) DO UPDATE SET name = NULL, "
        "price_amount = NULL, currency = NULL, deleted = 1, "
        "seq = excluded.seq WHERE excluded.seq >= products.seq");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    int rc = step_write(db, stmt, applied);
    return rc == MOAT_OK && *applied ? product_render(db, id) : rc;
}

/* Copy the order's payment and notifications into its view row (no row
 * yet: OrderPlaced copies them when it comes). */
static int order_refresh(struct moat_db *db, const char *order_id)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "order_refresh",
        "UPDATE orders SET payment = " PAYMENT_OF(
            "?1") ", notifications = " NOTIFICATIONS_OF("?1") " WHERE "
                                                              "order_id = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, order_id, -1, SQLITE_STATIC);
    int rc = step_write(db, stmt, NULL);
    return rc == MOAT_OK ? order_render(db, order_id) : rc;
}

int rm_store_payment(struct moat_db *db, const char *order_id,
                     const char *payment_id, const char *status, int64_t seq,
                     bool *applied)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "payment_upsert",
        "INSERT INTO payments (order_id, payment_id, status, seq) "
        "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (order_id) DO UPDATE SET "
        "payment_id = excluded.payment_id, status = excluded.status, "
        "seq = excluded.seq WHERE excluded.seq >= payments.seq");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, payment_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, seq);
    int rc = step_write(db, stmt, applied);
    if (rc == MOAT_OK && *applied)
        rc = order_refresh(db, order_id);
    return rc;
}

int rm_store_notification(struct moat_db *db, const struct rm_notification *n,
                          bool *applied)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "notification_insert",
        "INSERT INTO notifications (order_id, notification_id, kind, status, "
        "sent_ms, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
        "ON CONFLICT DO NOTHING");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, n->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, n->notification_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, n->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, n->status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, n->sent_ms);
    sqlite3_bind_int64(st, 6, n->seq);
    int rc = step_write(db, stmt, applied);
    if (rc == MOAT_OK && *applied)
        rc = order_refresh(db, n->order_id);
    return rc;
}

int rm_store_reset(struct moat_db *db)
{
    return moat_db_exec(db, "view_reset",
                        "DELETE FROM orders; DELETE FROM order_products; "
                        "DELETE FROM products; DELETE FROM payments; "
                        "DELETE FROM notifications;");
}

/* ---- the history: one query ---- */

int rm_store_history(struct moat_db *db, const char *customer_id,
                     const char *after, size_t limit, struct moat_buf *out,
                     size_t *n, bool *more, char *last)
{
    /*
     * One statement, a range of the primary key (customer_id, order_id):
     * each row holds its order as the API shows it (doc), copied into the
     * reply as text.
     */
    struct moat_stmt *stmt = moat_db_prepare(
        db, "history",
        "SELECT order_id, doc FROM orders WHERE customer_id = ?1 "
        "AND order_id > ?2 ORDER BY order_id LIMIT ?3");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, customer_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit + 1);
    size_t count = 0;
    int step;
    *more = false;
    last[0] = '\0';
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        if (count == limit) {
            *more = true;
            break;
        }
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const char *doc = (const char *)sqlite3_column_text(st, 1);
        int len = sqlite3_column_bytes(st, 1);
        if (count)
            moat_buf_addch(out, ',');
        moat_buf_add(out, doc ? doc : "null", doc ? (size_t)len : 4);
        snprintf(last, RM_KEY_MAX + 1, "%s", id ? id : "");
        count++;
    }
    int rc = step == SQLITE_ROW || step == SQLITE_DONE
                 ? MOAT_OK
                 : moat_db_error(db, step);
    moat_stmt_reset(stmt);
    *n = count;
    return rc;
}

/* ---- compare (replay --verify) ---- */

int rm_store_compare(struct moat_db *live, struct moat_db *scratch,
                     json_t *diffs, size_t max_diffs)
{
    /* Every column: everything in the view is decided by events.
     * Composite keys joined by a space (ids never hold one), so that one
     * text key orders the walk. */
    static const struct moat_view_table tables[] = {
        {"compare_orders",
         "SELECT customer_id || ' ' || order_id AS k, status, cancel_reason, "
         "total, currency, placed_ms, lines, payment, notifications, doc, seq "
         "FROM orders ORDER BY k",
         "order"},
        {"compare_order_products",
         "SELECT product_id || ' ' || order_id AS k, order_id "
         "FROM order_products ORDER BY k",
         "order line of product"},
        {"compare_products",
         "SELECT product_id, name, price_amount, currency, deleted, seq "
         "FROM products ORDER BY product_id",
         "product"},
        {"compare_payments",
         "SELECT order_id, payment_id, status, seq FROM payments "
         "ORDER BY order_id",
         "payment of order"},
        {"compare_notifications",
         "SELECT order_id || ' ' || notification_id AS k, kind, status, "
         "sent_ms, seq FROM notifications ORDER BY k",
         "notification"},
    };
    return moat_view_compare_tables(live, scratch, tables,
                                    MOAT_ARRAY_LEN(tables), diffs, max_diffs);
}
