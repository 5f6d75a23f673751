/* store.c - reporting's schema, writes, reports and comparison (see
 * store.h). */
#include "moat/common.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/events.h"
#include "moat/log.h"
#include "store.h"

#define DB_FILE "reporting.db"

/*
 * Schema migrations. An applied migration is checksummed by moat_db_migrate:
 * never edit one that has shipped, append a new version instead.
 *
 * Amounts are integers in minor units, times epoch milliseconds (UTC),
 * date keys YYYYMMDD of the UTC day. dim_product.etl_loaded_at_ms is the
 * batch ETL's bookkeeping (when it last wrote the row); version is
 * catalog's product version, NULL when nobody told it (schema 1 events).
 */
static const struct moat_migration migrations[] = {
    {1, "create the star schema",
     "CREATE TABLE dim_date (\n"
     "    date_key INTEGER PRIMARY KEY,\n"
     "    date TEXT NOT NULL,\n"
     "    year INTEGER NOT NULL,\n"
     "    month INTEGER NOT NULL CHECK (month BETWEEN 1 AND 12),\n"
     "    day INTEGER NOT NULL CHECK (day BETWEEN 1 AND 31),\n"
     "    weekday INTEGER NOT NULL CHECK (weekday BETWEEN 1 AND 7),\n"
     "    weekday_name TEXT NOT NULL\n"
     ") STRICT;\n"
     "CREATE TABLE dim_product (\n"
     "    product_key INTEGER PRIMARY KEY,\n"
     "    product_id TEXT NOT NULL UNIQUE,\n"
     "    sku TEXT NOT NULL,\n"
     "    name TEXT NOT NULL,\n"
     "    price_amount INTEGER,\n"
     "    currency TEXT,\n"
     "    version INTEGER,\n"
     "    seq INTEGER,\n"
     "    deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),\n"
     "    etl_loaded_at_ms INTEGER\n"
     ") STRICT;\n"
     "CREATE INDEX dim_product_sku ON dim_product (sku);\n"
     "CREATE TABLE dim_customer (\n"
     "    customer_key INTEGER PRIMARY KEY,\n"
     "    pseudonym TEXT NOT NULL UNIQUE CHECK (length(pseudonym) = 64),\n"
     "    first_date_key INTEGER NOT NULL\n"
     ") STRICT;\n"
     "CREATE TABLE fact_order (\n"
     "    order_id TEXT PRIMARY KEY,\n"
     "    customer_key INTEGER NOT NULL,\n"
     "    date_key INTEGER NOT NULL,\n"
     "    placed_at_ms INTEGER NOT NULL,\n"
     "    total INTEGER NOT NULL,\n"
     "    currency TEXT NOT NULL,\n"
     "    status TEXT NOT NULL\n"
     "        CHECK (status IN ('pending', 'confirmed', 'cancelled')),\n"
     "    cancel_reason TEXT,\n"
     "    payment_id TEXT,\n"
     "    confirmed_at_ms INTEGER,\n"
     "    confirmed_date_key INTEGER,\n"
     "    completed_at_ms INTEGER,\n"
     "    completed_date_key INTEGER,\n"
     "    version INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX fact_order_date ON fact_order (date_key);\n"
     "CREATE TABLE fact_order_line (\n"
     "    order_id TEXT NOT NULL,\n"
     "    line_no INTEGER NOT NULL,\n"
     "    date_key INTEGER NOT NULL,\n"
     "    product_key INTEGER NOT NULL,\n"
     "    customer_key INTEGER NOT NULL,\n"
     "    quantity INTEGER NOT NULL,\n"
     "    unit_price INTEGER NOT NULL,\n"
     "    amount INTEGER NOT NULL,\n"
     "    currency TEXT NOT NULL,\n"
     "    status TEXT NOT NULL,\n"
     "    PRIMARY KEY (order_id, line_no)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX fact_order_line_date\n"
     "    ON fact_order_line (date_key, status);\n"
     "CREATE TABLE fact_payment (\n"
     "    payment_id TEXT NOT NULL,\n"
     "    kind TEXT NOT NULL CHECK (kind IN ('authorized', 'captured',\n"
     "        'refunded', 'voided', 'declined')),\n"
     "    order_id TEXT NOT NULL,\n"
     "    date_key INTEGER NOT NULL,\n"
     "    at_ms INTEGER NOT NULL,\n"
     "    amount INTEGER NOT NULL,\n"
     "    currency TEXT NOT NULL,\n"
     "    PRIMARY KEY (payment_id, kind)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX fact_payment_date ON fact_payment (date_key, kind);\n"
     "CREATE TABLE fact_stock_movement (\n"
     "    seq INTEGER PRIMARY KEY,\n"
     "    sku TEXT NOT NULL,\n"
     "    date_key INTEGER NOT NULL,\n"
     "    delta INTEGER NOT NULL,\n"
     "    kind TEXT NOT NULL,\n"
     "    order_id TEXT\n"
     ") STRICT;\n"
     "CREATE INDEX fact_stock_movement_date\n"
     "    ON fact_stock_movement (date_key, sku);\n"
     "CREATE TABLE fact_stock_commit (\n"
     "    order_id TEXT PRIMARY KEY,\n"
     "    date_key INTEGER NOT NULL,\n"
     "    at_ms INTEGER NOT NULL,\n"
     "    units INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n",
     NULL},
    {2, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA, NULL},
};

const struct moat_migration *rep_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

int rep_store_open(struct moat_db **out, const char *data_dir,
                   struct moat_metrics *metrics)
{
    return moat_db_open_migrated(out, data_dir, DB_FILE, NULL, metrics,
                                 migrations, MOAT_ARRAY_LEN(migrations));
}

bool rep_store_ready(struct moat_db *db, const char **why)
{
    return moat_db_migrated(db, migrations, MOAT_ARRAY_LEN(migrations), why);
}

int rep_store_reset(struct moat_db *db)
{
    return moat_db_exec(db, "view_reset",
                        "DELETE FROM fact_order_line; DELETE FROM fact_order; "
                        "DELETE FROM fact_payment; "
                        "DELETE FROM fact_stock_movement; "
                        "DELETE FROM fact_stock_commit; "
                        "DELETE FROM dim_product; DELETE FROM dim_customer; "
                        "DELETE FROM dim_date;");
}

/* ---- keys ---- */

static int64_t key63(const unsigned char *h)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | h[i];
    return (int64_t)(v & INT64_MAX);
}

int64_t rep_product_key(const char *product_id)
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const unsigned char *)"product:", 8);
    crypto_hash_sha256_update(&st, (const unsigned char *)product_id,
                              strlen(product_id));
    crypto_hash_sha256_final(&st, h);
    return key63(h);
}

int64_t rep_customer_key(const char *pseudonym)
{
    /* The pseudonym is already a keyed hash: its first 16 hex digits. */
    unsigned char h[8] = {0};
    char first[17];
    snprintf(first, sizeof(first), "%.16s", pseudonym);
    if (moat_unhex(first, h, sizeof(h)) != MOAT_OK)
        memset(h, 0, sizeof(h));
    return key63(h);
}

/* ---- statements with bound values ---- */

struct bv {
    bool text;
    int64_t i;
    const char *s; /* text; NULL binds NULL */
};
#define BI(x)                                                                  \
    {                                                                          \
        .text = false, .i = (x), .s = NULL                                     \
    }
#define BS(x)                                                                  \
    {                                                                          \
        .text = true, .i = 0, .s = (x)                                         \
    }

static void bind_all(sqlite3_stmt *st, const struct bv *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int idx = (int)i + 1;
        if (!b[i].text)
            sqlite3_bind_int64(st, idx, b[i].i);
        else if (b[i].s)
            sqlite3_bind_text(st, idx, b[i].s, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, idx);
    }
}

/* Run one write statement; *changes (may be NULL) gets the rows changed. */
static int run(struct moat_db *db, const char *name, const char *sql,
               const struct bv *b, size_t n, int *changes)
{
    struct moat_stmt *stmt = moat_db_prepare(db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    bind_all(moat_stmt_raw(stmt), b, n);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE)
        return moat_db_error(db, step);
    if (changes)
        *changes = sqlite3_changes(moat_db_handle(db));
    return MOAT_OK;
}

/* Whether a query with bindings returns a row. */
static int exists(struct moat_db *db, const char *name, const char *sql,
                  const struct bv *b, size_t n, bool *found)
{
    struct moat_stmt *stmt = moat_db_prepare(db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    bind_all(moat_stmt_raw(stmt), b, n);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return moat_db_error(db, step);
    *found = step == SQLITE_ROW;
    return MOAT_OK;
}

/* ---- dimensions ---- */

int rep_store_date(struct moat_db *db, int64_t date_key)
{
    static const char *const names[] = {"Monday",   "Tuesday", "Wednesday",
                                        "Thursday", "Friday",  "Saturday",
                                        "Sunday"};
    int64_t y = date_key / 10000, m = date_key / 100 % 100, d = date_key % 100;
    if (m < 1 || m > 12 || d < 1 || d > 31)
        return MOAT_EINVAL;
    /* Days since 1970-01-01 (H. Hinnant), for the ISO weekday. */
    int64_t yy = y - (m <= 2);
    int64_t era = (yy >= 0 ? yy : yy - 399) / 400;
    int64_t yoe = yy - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t days =
        era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    int64_t wd = ((days % 7) + 7 + 3) % 7 + 1; /* 1970-01-01: Thursday */
    char date[64];
    snprintf(date, sizeof(date), "%04lld-%02lld-%02lld", (long long)y,
             (long long)m, (long long)d);
    const struct bv b[] = {BI(date_key), BS(date),         BI(y), BI(m), BI(d),
                           BI(wd),       BS(names[wd - 1])};
    return run(db, "dim_date_add",
               "INSERT INTO dim_date (date_key, date, year, month, day, "
               "weekday, weekday_name) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) "
               "ON CONFLICT (date_key) DO NOTHING",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_product_event(struct moat_db *db, const struct rep_product *p)
{
    /* Guarded by catalog's feed sequence and version: a re-delivered or
     * stale event changes nothing; a stub from an order line (seq NULL)
     * is replaced. deleted is left as it is (ids are never reused). */
    const struct bv b[] = {
        BI(rep_product_key(p->product_id)),
        BS(p->product_id),
        BS(p->sku),
        BS(p->name),
        BI(p->price_amount),
        BS(p->currency),
        p->version > 0 ? (struct bv)BI(p->version) : (struct bv)BS(NULL),
        BI(p->seq),
    };
    return run(db, "dim_product_event",
               "INSERT INTO dim_product (product_key, product_id, sku, name, "
               "price_amount, currency, version, seq) "
               "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
               "ON CONFLICT (product_key) DO UPDATE SET sku = excluded.sku, "
               "name = excluded.name, price_amount = excluded.price_amount, "
               "currency = excluded.currency, "
               "version = coalesce(excluded.version, dim_product.version), "
               "seq = excluded.seq "
               "WHERE (dim_product.seq IS NULL OR "
               "excluded.seq >= dim_product.seq) AND "
               "(dim_product.version IS NULL OR excluded.version IS NULL OR "
               "excluded.version >= dim_product.version)",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_product_price(struct moat_db *db, const char *product_id,
                            int64_t amount, const char *currency, int64_t seq)
{
    const struct bv b[] = {BS(product_id), BI(amount), BS(currency), BI(seq)};
    return run(db, "dim_product_price",
               "UPDATE dim_product SET price_amount = ?2, currency = ?3, "
               "seq = ?4 WHERE product_id = ?1 AND (seq IS NULL OR seq <= ?4)",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_product_deleted(struct moat_db *db, const char *product_id,
                              const char *sku, int64_t seq)
{
    MOAT_UNUSED(sku);
    const struct bv b[] = {BS(product_id), BI(seq)};
    return run(db, "dim_product_deleted",
               "UPDATE dim_product SET deleted = 1, seq = ?2 "
               "WHERE product_id = ?1 AND (seq IS NULL OR seq <= ?2)",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_product_stub(struct moat_db *db, const char *product_id,
                           const char *sku, const char *name)
{
    const struct bv b[] = {BI(rep_product_key(product_id)), BS(product_id),
                           BS(sku), BS(name)};
    return run(db, "dim_product_stub",
               "INSERT INTO dim_product (product_key, product_id, sku, name) "
               "VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_customer(struct moat_db *db, const char *pseudonym,
                       int64_t date_key)
{
    const struct bv b[] = {BI(rep_customer_key(pseudonym)), BS(pseudonym),
                           BI(date_key)};
    return run(db, "dim_customer_add",
               "INSERT INTO dim_customer (customer_key, pseudonym, "
               "first_date_key) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
               b, MOAT_ARRAY_LEN(b), NULL);
}

/* ---- facts ---- */

int rep_store_order_placed(struct moat_db *db, const struct rep_order *o,
                           bool *created)
{
    int changes = 0;
    const struct bv b[] = {BS(o->order_id), BI(o->customer_key),
                           BI(o->date_key), BI(o->placed_at_ms),
                           BI(o->total),    BS(o->currency),
                           BI(o->version)};
    int rc = run(db, "fact_order_placed",
                 "INSERT INTO fact_order (order_id, customer_key, date_key, "
                 "placed_at_ms, total, currency, status, version) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7) "
                 "ON CONFLICT (order_id) DO NOTHING",
                 b, MOAT_ARRAY_LEN(b), &changes);
    *created = rc == MOAT_OK && changes > 0;
    return rc;
}

int rep_store_order_line(struct moat_db *db, const struct rep_line *l)
{
    const struct bv b[] = {BS(l->order_id),     BI(l->line_no),
                           BI(l->date_key),     BI(l->product_key),
                           BI(l->customer_key), BI(l->quantity),
                           BI(l->unit_price),   BI(l->quantity * l->unit_price),
                           BS(l->currency)};
    return run(db, "fact_order_line_add",
               "INSERT INTO fact_order_line (order_id, line_no, date_key, "
               "product_key, customer_key, quantity, unit_price, amount, "
               "currency, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
               "'pending') ON CONFLICT DO NOTHING",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_order_final(struct moat_db *db, const struct rep_order_final *f)
{
    int changes = 0;
    const struct bv b[] = {
        BS(f->order_id), BS(f->status), BS(f->cancel_reason), BS(f->payment_id),
        BI(f->version),  BI(f->at_ms),  BI(f->date_key)};
    int rc = run(db, "fact_order_final",
                 "UPDATE fact_order SET status = ?2, cancel_reason = ?3, "
                 "payment_id = coalesce(?4, payment_id), version = ?5, "
                 "completed_at_ms = ?6, completed_date_key = ?7, "
                 "confirmed_at_ms = CASE WHEN ?2 = 'confirmed' THEN ?6 "
                 "ELSE confirmed_at_ms END, "
                 "confirmed_date_key = CASE WHEN ?2 = 'confirmed' THEN ?7 "
                 "ELSE confirmed_date_key END "
                 "WHERE order_id = ?1 AND version < ?5",
                 b, MOAT_ARRAY_LEN(b), &changes);
    if (rc != MOAT_OK)
        return rc;
    if (changes == 0) {
        bool found = false;
        const struct bv k[] = {BS(f->order_id)};
        rc = exists(db, "fact_order_exists",
                    "SELECT 1 FROM fact_order WHERE order_id = ?1", k, 1,
                    &found);
        if (rc != MOAT_OK)
            return rc;
        return found ? MOAT_OK : MOAT_ENOTFOUND; /* found: an older event */
    }
    const struct bv l[] = {BS(f->order_id), BS(f->status)};
    return run(db, "fact_order_line_status",
               "UPDATE fact_order_line SET status = ?2 WHERE order_id = ?1", l,
               MOAT_ARRAY_LEN(l), NULL);
}

int rep_store_payment(struct moat_db *db, const struct rep_payment *p)
{
    const struct bv b[] = {BS(p->payment_id), BS(p->kind),  BS(p->order_id),
                           BI(p->date_key),   BI(p->at_ms), BI(p->amount),
                           BS(p->currency)};
    return run(db, "fact_payment_add",
               "INSERT INTO fact_payment (payment_id, kind, order_id, "
               "date_key, at_ms, amount, currency) "
               "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_stock_movement(struct moat_db *db,
                             const struct rep_stock_movement *m)
{
    const struct bv b[] = {BI(m->seq),   BS(m->sku),  BI(m->date_key),
                           BI(m->delta), BS(m->kind), BS(m->order_id)};
    return run(db, "fact_stock_movement_add",
               "INSERT INTO fact_stock_movement (seq, sku, date_key, delta, "
               "kind, order_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
               "ON CONFLICT DO NOTHING",
               b, MOAT_ARRAY_LEN(b), NULL);
}

int rep_store_stock_commit(struct moat_db *db, const char *order_id,
                           int64_t date_key, int64_t at_ms, int64_t units)
{
    const struct bv b[] = {BS(order_id), BI(date_key), BI(at_ms), BI(units)};
    return run(db, "fact_stock_commit_add",
               "INSERT INTO fact_stock_commit (order_id, date_key, at_ms, "
               "units) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
               b, MOAT_ARRAY_LEN(b), NULL);
}

/* ---- the batch ETL ---- */

static bool same_text(sqlite3_stmt *st, int col, const char *v)
{
    const char *t = (const char *)sqlite3_column_text(st, col);
    return t && v && strcmp(t, v) == 0;
}

int rep_store_product_etl(struct moat_db *db, const struct rep_product *p,
                          int64_t now_ms, struct rep_etl_counts *c)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "dim_product_etl_get",
        "SELECT sku, name, price_amount, currency, version FROM dim_product "
        "WHERE product_id = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, p->product_id, -1, SQLITE_STATIC);
    int step = moat_stmt_step(stmt);
    bool found = step == SQLITE_ROW, same = false, newer = false;
    if (found) {
        same = same_text(st, 0, p->sku) && same_text(st, 1, p->name) &&
               sqlite3_column_type(st, 2) == SQLITE_INTEGER &&
               sqlite3_column_int64(st, 2) == p->price_amount &&
               same_text(st, 3, p->currency) &&
               sqlite3_column_type(st, 4) == SQLITE_INTEGER &&
               sqlite3_column_int64(st, 4) == p->version;
        newer = sqlite3_column_type(st, 4) == SQLITE_INTEGER &&
                sqlite3_column_int64(st, 4) > p->version;
    }
    moat_stmt_reset(stmt);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return moat_db_error(db, step);
    c->seen++;
    if (newer) { /* the events already brought a later version */
        c->skipped++;
        return MOAT_OK;
    }
    if (same) {
        c->unchanged++;
        return MOAT_OK;
    }
    const struct bv b[] = {BI(rep_product_key(p->product_id)),
                           BS(p->product_id),
                           BS(p->sku),
                           BS(p->name),
                           BI(p->price_amount),
                           BS(p->currency),
                           BI(p->version),
                           BI(now_ms)};
    int rc = run(db, "dim_product_etl_put",
                 "INSERT INTO dim_product (product_key, product_id, sku, name, "
                 "price_amount, currency, version, etl_loaded_at_ms) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                 "ON CONFLICT (product_key) DO UPDATE SET sku = excluded.sku, "
                 "name = excluded.name, price_amount = excluded.price_amount, "
                 "currency = excluded.currency, version = excluded.version, "
                 "etl_loaded_at_ms = excluded.etl_loaded_at_ms",
                 b, MOAT_ARRAY_LEN(b), NULL);
    if (rc == MOAT_OK) {
        if (found)
            c->updated++;
        else
            c->inserted++;
    }
    return rc;
}

/* ---- reports ---- */

/* Date filter on a date key column, both bounds inclusive. */
#define IN_RANGE(col) col " BETWEEN :from AND :to"

struct report_sql {
    const char *name;
    const char *sql;
};

static const struct report_sql report_sql[] = {
    [REP_REVENUE_PER_DAY] =
        {"report_revenue",
         "WITH pay AS (SELECT date_key, currency, "
         "sum(CASE WHEN kind = 'captured' THEN amount ELSE 0 END) AS cap, "
         "sum(CASE WHEN kind = 'refunded' THEN amount ELSE 0 END) AS ref, "
         "sum(kind = 'captured') AS ncap, sum(kind = 'refunded') AS nref "
         "FROM fact_payment WHERE " IN_RANGE(
             "date_key") " GROUP BY 1, 2), "
                         "placed AS (SELECT date_key, currency, count(*) AS n "
                         "FROM fact_order "
                         "WHERE " IN_RANGE(
                             "date_key") " GROUP BY 1, 2), "
                                         "conf AS (SELECT confirmed_date_key "
                                         "AS date_key, currency, "
                                         "count(*) AS n FROM fact_order "
                                         "WHERE " IN_RANGE(
                                             "confirmed_date_key") " GROUP BY "
                                                                   "1, 2), "
                                                                   "canc AS "
                                                                   "(SELECT "
                                                                   "completed_"
                                                                   "date_key "
                                                                   "AS "
                                                                   "date_key, "
                                                                   "currency, "
                                                                   "count(*) "
                                                                   "AS n FROM "
                                                                   "fact_order "
                                                                   "WHERE "
                                                                   "status = "
                                                                   "'cancelled'"
                                                                   " AND"
                                                                   " " IN_RANGE(
                                                                       "complet"
                                                                       "ed_"
                                                                       "date_"
                                                                       "key") " GROUP BY 1, 2), "
                                                                              "k AS (SELECT date_key, currency FROM pay UNION "
                                                                              "SELECT date_key, currency FROM placed UNION "
                                                                              "SELECT date_key, currency FROM conf UNION "
                                                                              "SELECT date_key, currency FROM canc) "
                                                                              "SELECT d.date AS date, k.currency AS currency, "
                                                                              "coalesce(pay.cap, 0) AS captured, coalesce(pay.ref, 0) AS refunded, "
                                                                              "coalesce(pay.cap, 0) - coalesce(pay.ref, 0) AS revenue, "
                                                                              "coalesce(pay.ncap, 0) AS captures, coalesce(pay.nref, 0) AS refunds, "
                                                                              "coalesce(placed.n, 0) AS orders_placed, "
                                                                              "coalesce(conf.n, 0) AS orders_confirmed, "
                                                                              "coalesce(canc.n, 0) AS orders_cancelled "
                                                                              "FROM k JOIN dim_date AS d ON d.date_key = k.date_key "
                                                                              "LEFT JOIN pay USING (date_key, currency) "
                                                                              "LEFT JOIN placed USING (date_key, currency) "
                                                                              "LEFT JOIN conf USING (date_key, currency) "
                                                                              "LEFT JOIN canc USING (date_key, currency) "
                                                                              "ORDER BY k.date_key, k.currency LIMIT :max"},
    [REP_TOP_PRODUCTS] =
        {"report_top_products",
         "SELECT p.product_id AS product_id, p.sku AS sku, p.name AS name, "
         "f.currency AS currency, sum(f.quantity) AS quantity, "
         "sum(f.amount) AS revenue, count(DISTINCT f.order_id) AS orders "
         "FROM fact_order_line AS f "
         "JOIN dim_product AS p ON p.product_key = f.product_key "
         "WHERE f.status = 'confirmed' AND " IN_RANGE(
             "f.date_key") " GROUP BY f.product_key, f.currency "
                           "ORDER BY CASE WHEN :by_revenue THEN sum(f.amount) "
                           "ELSE sum(f.quantity) END DESC, "
                           "CASE WHEN :by_revenue THEN sum(f.quantity) "
                           "ELSE sum(f.amount) END DESC, p.product_id "
                           "LIMIT min(:limit, :max)"},
    [REP_CANCELLATION_REASONS] =
        {"report_cancellations",
         "SELECT coalesce(cancel_reason, 'unknown') AS reason, "
         "count(*) AS orders, "
         "sum(confirmed_at_ms IS NOT NULL) AS after_confirmation "
         "FROM fact_order WHERE status = 'cancelled' AND " IN_RANGE(
             "date_key") " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :max"},
    [REP_STOCK_TURNOVER] =
        {"report_stock_turnover",
         "SELECT sku, "
         "sum(CASE WHEN kind = 'commit' THEN -delta ELSE 0 END) AS sold, "
         "sum(CASE WHEN kind = 'return' THEN delta ELSE 0 END) AS returned, "
         "sum(CASE WHEN kind = 'commit' THEN -delta ELSE 0 END) - "
         "sum(CASE WHEN kind = 'return' THEN delta ELSE 0 END) AS net_sold, "
         "sum(CASE WHEN kind IN ('set', 'adjustment') THEN delta ELSE 0 END) "
         "AS adjusted, "
         "sum(kind = 'reserve') AS reservations, "
         "sum(kind = 'release') AS releases, count(*) AS movements "
         "FROM fact_stock_movement WHERE " IN_RANGE(
             "date_key") " GROUP BY sku ORDER BY sku LIMIT :max"},
    /* Nearest-rank percentiles: the value at rank ceil(p * n). */
    [REP_SAGA_DURATIONS] =
        {"report_saga_durations",
         "WITH d AS (SELECT status, completed_at_ms - placed_at_ms AS ms, "
         "row_number() OVER (PARTITION BY status "
         "ORDER BY completed_at_ms - placed_at_ms) AS rn, "
         "count(*) OVER (PARTITION BY status) AS n FROM fact_order "
         "WHERE status IN ('confirmed', 'cancelled') AND "
         "completed_at_ms IS NOT NULL AND " IN_RANGE(
             "date_key") ") "
                         "SELECT status, max(n) AS orders, min(ms) AS min_ms, "
                         "max(CASE WHEN rn = (50 * n + 99) / 100 THEN ms END) "
                         "AS p50_ms, "
                         "max(CASE WHEN rn = (90 * n + 99) / 100 THEN ms END) "
                         "AS p90_ms, "
                         "max(CASE WHEN rn = (99 * n + 99) / 100 THEN ms END) "
                         "AS p99_ms, "
                         "max(ms) AS max_ms FROM d GROUP BY status ORDER BY "
                         "status "
                         "LIMIT :max"},
};

static json_t *column_json(sqlite3_stmt *st, int c)
{
    switch (sqlite3_column_type(st, c)) {
    case SQLITE_INTEGER:
        return json_integer(sqlite3_column_int64(st, c));
    case SQLITE_FLOAT:
        return json_real(sqlite3_column_double(st, c));
    case SQLITE_NULL:
        return json_null();
    default: {
        json_t *s = json_string((const char *)sqlite3_column_text(st, c));
        return s ? s : json_string("(not UTF-8)");
    }
    }
}

static void bind_named(sqlite3_stmt *st, const char *name, int64_t v)
{
    int idx = sqlite3_bind_parameter_index(st, name);
    if (idx > 0)
        sqlite3_bind_int64(st, idx, v);
}

int rep_store_report(struct moat_db *db, const struct rep_report_query *q,
                     json_t **columns, json_t **rows, bool *truncated)
{
    const struct report_sql *r = &report_sql[q->report];
    struct moat_stmt *stmt = moat_db_prepare(db, r->name, r->sql);
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    bind_named(st, ":from", q->from_key);
    bind_named(st, ":to", q->to_key);
    bind_named(st, ":limit", q->limit);
    bind_named(st, ":by_revenue", q->by_revenue);
    bind_named(st, ":max", (int64_t)q->max_rows + 1);

    int ncols = sqlite3_column_count(st);
    json_t *cols = json_array();
    for (int c = 0; c < ncols; c++)
        json_array_append_new(cols, json_string(sqlite3_column_name(st, c)));
    json_t *out = json_array();
    int step;
    *truncated = false;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        if (json_array_size(out) >= q->max_rows) {
            *truncated = true;
            break;
        }
        json_t *row = json_array();
        for (int c = 0; c < ncols; c++)
            json_array_append_new(row, column_json(st, c));
        json_array_append_new(out, row);
    }
    moat_stmt_reset(stmt);
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        json_decref(cols);
        json_decref(out);
        return moat_db_error(db, step);
    }
    *columns = cols;
    *rows = out;
    return MOAT_OK;
}

/* ---- compare (replay --verify) ---- */

int rep_store_compare(struct moat_db *live, struct moat_db *scratch,
                      json_t *diffs, size_t max_diffs)
{
    /* Everything the events decide. Not dim_product's bookkeeping: the
     * feed position and catalog version that guard its writes (a row the
     * ETL restored has no feed position), nor etl_loaded_at_ms. */
    static const struct moat_view_table tables[] = {
        {"compare_dates",
         "SELECT printf('%08d', date_key), date, year, month, day, weekday, "
         "weekday_name FROM dim_date ORDER BY 1",
         "date"},
        {"compare_products",
         "SELECT product_id, product_key, sku, name, price_amount, currency, "
         "deleted FROM dim_product ORDER BY product_id",
         "product"},
        {"compare_customers",
         "SELECT pseudonym, customer_key, first_date_key FROM dim_customer "
         "ORDER BY pseudonym",
         "customer"},
        {"compare_orders",
         "SELECT order_id, customer_key, date_key, placed_at_ms, total, "
         "currency, status, cancel_reason, payment_id, confirmed_at_ms, "
         "confirmed_date_key, completed_at_ms, completed_date_key, version "
         "FROM fact_order ORDER BY order_id",
         "order"},
        {"compare_order_lines",
         "SELECT order_id || '#' || printf('%06d', line_no), date_key, "
         "product_key, customer_key, quantity, unit_price, amount, currency, "
         "status FROM fact_order_line ORDER BY 1",
         "order line"},
        {"compare_payments",
         "SELECT payment_id || '#' || kind, order_id, date_key, at_ms, "
         "amount, currency FROM fact_payment ORDER BY 1",
         "payment"},
        {"compare_stock_movements",
         "SELECT printf('%020d', seq), sku, date_key, delta, kind, order_id "
         "FROM fact_stock_movement ORDER BY 1",
         "stock movement"},
        {"compare_stock_commits",
         "SELECT order_id, date_key, at_ms, units FROM fact_stock_commit "
         "ORDER BY order_id",
         "stock commit"},
    };
    return moat_view_compare_tables(live, scratch, tables,
                                    MOAT_ARRAY_LEN(tables), diffs, max_diffs);
}
