/* store.c - search's schema and queries (see store.h). */
#include "moat/common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/events.h"
#include "moat/log.h"
#include "store.h"

/*
 * Schema migrations. An applied migration is checksummed by moat_db_migrate:
 * never edit one that has shipped, append a new version instead.
 *
 * products has an INTEGER PRIMARY KEY (rid) because an FTS5 external
 * content table addresses its rows by rowid; the product id is a unique
 * column beside it. The triggers are the only writers of products_fts, so
 * the index always holds exactly the text of the rows (the AFTER UPDATE
 * trigger fires only when an indexed column changes: a price change does
 * not touch the index). products_fts_terms (fts5vocab) exposes the index's
 * term statistics so that a replay can compare two indexes.
 *
 * The tokenizer and prefix settings are the engine's (SRCH_FTS_OPTIONS,
 * engine.h): the same text as when this migration shipped.
 *
 * apply_log is written only by test builds (MOAT_TEST_HOOKS), but exists in
 * every build so that a database does not depend on the build type.
 */
static const struct moat_migration migrations[] = {
    {1, "create products and their full-text index",
     "CREATE TABLE products (\n"
     "    rid INTEGER PRIMARY KEY,\n"
     "    id TEXT NOT NULL UNIQUE,\n"
     "    sku TEXT NOT NULL,\n"
     "    name TEXT NOT NULL,\n"
     "    description TEXT NOT NULL,\n"
     "    attributes TEXT NOT NULL,\n"
     "    price_amount INTEGER NOT NULL,\n"
     "    currency TEXT NOT NULL,\n"
     "    doc TEXT NOT NULL\n"
     "        CHECK (json_valid(doc) AND json_type(doc) = 'object'),\n"
     "    version INTEGER,\n"
     "    seq INTEGER NOT NULL,\n"
     "    event_time_ms INTEGER NOT NULL,\n"
     "    applied_at_ms INTEGER NOT NULL\n"
     ") STRICT;\n"
     "CREATE INDEX products_name ON products (name, id);\n"
     "CREATE INDEX products_currency_amount\n"
     "    ON products (currency, price_amount);\n"
     "CREATE INDEX products_applied ON products (applied_at_ms);\n"
     "CREATE VIRTUAL TABLE products_fts USING fts5 (\n"
     "    name, description, sku, attributes,\n"
     "    content = 'products', content_rowid = 'rid',\n"
     "    " SRCH_FTS_OPTIONS ");\n"
     "CREATE VIRTUAL TABLE products_fts_terms\n"
     "    USING fts5vocab (products_fts, 'row');\n"
     "CREATE TRIGGER products_fts_insert AFTER INSERT ON products BEGIN\n"
     "    INSERT INTO products_fts (rowid, name, description, sku,\n"
     "                              attributes)\n"
     "    VALUES (new.rid, new.name, new.description, new.sku,\n"
     "            new.attributes);\n"
     "END;\n"
     "CREATE TRIGGER products_fts_delete AFTER DELETE ON products BEGIN\n"
     "    INSERT INTO products_fts (products_fts, rowid, name, description,\n"
     "                              sku, attributes)\n"
     "    VALUES ('delete', old.rid, old.name, old.description, old.sku,\n"
     "            old.attributes);\n"
     "END;\n"
     "CREATE TRIGGER products_fts_update\n"
     "    AFTER UPDATE OF name, description, sku, attributes ON products\n"
     "BEGIN\n"
     "    INSERT INTO products_fts (products_fts, rowid, name, description,\n"
     "                              sku, attributes)\n"
     "    VALUES ('delete', old.rid, old.name, old.description, old.sku,\n"
     "            old.attributes);\n"
     "    INSERT INTO products_fts (rowid, name, description, sku,\n"
     "                              attributes)\n"
     "    VALUES (new.rid, new.name, new.description, new.sku,\n"
     "            new.attributes);\n"
     "END;\n"
     "CREATE TABLE deleted_products (\n"
     "    id TEXT NOT NULL PRIMARY KEY,\n"
     "    seq INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE TABLE apply_log (\n"
     "    source TEXT NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    applications INTEGER NOT NULL,\n"
     "    PRIMARY KEY (source, seq)\n"
     ") STRICT, WITHOUT ROWID;\n",
     NULL},
    {2, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA, NULL},
};

/* bm25 weights of the indexed columns: a hit in the name counts most. */
#define BM25_WEIGHTS "10.0, 2.0, 5.0, 1.0"

const struct moat_migration *srch_store_migrations(size_t *n)
{
    *n = MOAT_ARRAY_LEN(migrations);
    return migrations;
}

/* ---- writes (inside the consumer's transaction) ---- */

static void bind_doc(sqlite3_stmt *st, int idx, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    if (!text)
        moat_die("cannot serialise a product document");
    sqlite3_bind_text(st, idx, text, -1, free);
}

int srch_store_upsert(struct moat_db *db, const struct srch_product *p,
                      bool *applied)
{
    /*
     * Guarded by the feed sequence, beyond the consumer's cursor (defence
     * in depth, and what makes a re-delivered event harmless): an event
     * older than what the row reflects, or than the product's deletion,
     * changes nothing. The same event again re-applies the same values.
     */
    struct moat_stmt *stmt = moat_db_prepare(
        db, "product_upsert",
        "INSERT INTO products (id, sku, name, description, attributes, "
        "price_amount, currency, doc, version, seq, event_time_ms, "
        "applied_at_ms) "
        "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12 "
        "WHERE NOT EXISTS (SELECT 1 FROM deleted_products "
        "WHERE id = ?1 AND seq > ?10) "
        "ON CONFLICT (id) DO UPDATE SET sku = excluded.sku, "
        "name = excluded.name, description = excluded.description, "
        "attributes = excluded.attributes, "
        "price_amount = excluded.price_amount, currency = excluded.currency, "
        "doc = excluded.doc, version = excluded.version, seq = excluded.seq, "
        "event_time_ms = excluded.event_time_ms, "
        "applied_at_ms = excluded.applied_at_ms "
        "WHERE excluded.seq >= products.seq");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p->sku, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, p->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, p->description, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, p->attributes, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, p->amount);
    sqlite3_bind_text(st, 7, p->currency, -1, SQLITE_STATIC);
    bind_doc(st, 8, p->doc);
    if (p->version > 0)
        sqlite3_bind_int64(st, 9, p->version);
    else
        sqlite3_bind_null(st, 9);
    sqlite3_bind_int64(st, 10, p->seq);
    sqlite3_bind_int64(st, 11, p->event_time_ms);
    sqlite3_bind_int64(st, 12, moat_wall_ms());
    int rc = srch_step_done(db, stmt);
    if (rc == MOAT_OK)
        *applied = sqlite3_changes(moat_db_handle(db)) > 0;
    return rc;
}

/* Whether product id was deleted by an event newer than seq. */
static int deleted_after(struct moat_db *db, const char *id, int64_t seq,
                         bool *deleted)
{
    struct moat_stmt *stmt = moat_db_prepare(db, "product_deleted_after",
                                             "SELECT 1 FROM deleted_products "
                                             "WHERE id = ?1 AND seq > ?2");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(moat_stmt_raw(stmt), 2, seq);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return moat_db_error(db, step);
    *deleted = step == SQLITE_ROW;
    return MOAT_OK;
}

int srch_store_set_price(struct moat_db *db, const char *id, int64_t amount,
                         const char *currency, int64_t seq,
                         int64_t event_time_ms, bool *applied)
{
    struct moat_stmt *stmt =
        moat_db_prepare(db, "product_set_price",
                        "UPDATE products SET price_amount = ?2, currency = ?3, "
                        "doc = json_set(doc, '$.price', "
                        "json_object('amount', ?2, 'currency', ?3)), seq = ?4, "
                        "event_time_ms = ?5, applied_at_ms = ?6 "
                        "WHERE id = ?1 AND seq <= ?4");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, amount);
    sqlite3_bind_text(st, 3, currency, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, seq);
    sqlite3_bind_int64(st, 5, event_time_ms);
    sqlite3_bind_int64(st, 6, moat_wall_ms());
    int rc = srch_step_done(db, stmt);
    if (rc != MOAT_OK)
        return rc;
    *applied = sqlite3_changes(moat_db_handle(db)) > 0;
    if (*applied)
        return MOAT_OK;
    /* Nothing changed: a newer event is reflected (fine), the product is
     * gone (fine), or it was never indexed, which the feed's order rules
     * out - unless something is wrong, which must not pass silently. */
    stmt = moat_db_prepare(db, "product_exists",
                           "SELECT 1 FROM products WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, id, -1, SQLITE_STATIC);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step == SQLITE_ROW)
        return MOAT_OK;
    if (step != SQLITE_DONE)
        return moat_db_error(db, step);
    bool deleted = false;
    rc = deleted_after(db, id, seq, &deleted);
    if (rc != MOAT_OK)
        return rc;
    return deleted ? MOAT_OK : MOAT_ENOTFOUND;
}

int srch_store_delete(struct moat_db *db, const char *id, int64_t seq,
                      bool *applied)
{
    return srch_store_remove(db, "products", "deleted_products", id, seq,
                             applied);
}

int srch_store_reset(struct moat_db *db)
{
    /* Row by row through the trigger: an external-content index must be
     * told the old text of every row it forgets. */
    return moat_db_exec(db, "view_reset",
                        "DELETE FROM products; DELETE FROM deleted_products; "
                        "DELETE FROM apply_log;");
}

/* ---- reads ---- */

int srch_store_get(struct moat_db *db, const char *id, json_t **out)
{
    struct moat_stmt *stmt =
        moat_db_prepare(db, "product_get",
                        "SELECT doc, version, seq, event_time_ms, "
                        "applied_at_ms FROM products WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc;
    int step = moat_stmt_step(stmt);
    if (step == SQLITE_ROW) {
        json_error_t err;
        const char *text = (const char *)sqlite3_column_text(st, 0);
        json_t *doc = text ? json_loads(text, 0, &err) : NULL;
        if (!json_is_object(doc)) {
            json_decref(doc);
            rc = MOAT_EDB;
            goto cleanup;
        }
        char event_time[25], applied[25];
        moat_time_rfc3339(sqlite3_column_int64(st, 3), event_time);
        moat_time_rfc3339(sqlite3_column_int64(st, 4), applied);
        /* version is NULL when the events did not say (data schema 1). */
        json_t *version = sqlite3_column_type(st, 1) == SQLITE_NULL
                              ? json_null()
                              : json_integer(sqlite3_column_int64(st, 1));
        json_object_set_new(doc, "indexed",
                            json_pack("{s:s, s:I, s:o, s:s, s:s}", "source",
                                      "catalog", "seq",
                                      (json_int_t)sqlite3_column_int64(st, 2),
                                      "version", version, "event_time",
                                      event_time, "applied_at", applied));
        *out = doc;
        rc = MOAT_OK;
    } else {
        rc = step == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(db, step);
    }

cleanup:
    /* Reset at once: an unfinished SELECT pins a WAL read snapshot. */
    moat_stmt_reset(stmt);
    return rc;
}

/* The products as the engine searches them: hits are summaries, listed
 * by name without words. */
static const struct srch_corpus products = {
    .name = "products",
    .table = "products",
    .fts = "products_fts",
    .bm25 = BM25_WEIGHTS,
    .item = "json_object('id', p.id, 'sku', p.sku, 'name', p.name, "
            "'price', json_object('amount', p.price_amount, "
            "'currency', p.currency))",
    .list_key = "name",
};

enum search_filter {
    F_CURRENCY = 1 << 0,
    F_MIN = 1 << 1,
    F_MAX = 1 << 2,
};

static void bind_filters(sqlite3_stmt *st, const void *arg)
{
    const struct srch_query *q = arg;
    if (q->currency)
        srch_bind_text(st, ":currency", q->currency);
    if (q->has_min)
        srch_bind_int(st, ":min", q->min_amount);
    if (q->has_max)
        srch_bind_int(st, ":max", q->max_amount);
}

int srch_store_search(struct moat_db *db, const struct srch_page *pg, void *arg,
                      struct srch_hit **hits, size_t *n)
{
    const struct srch_query *q = arg;
    struct moat_buf sql = MOAT_BUF_INIT;
    struct srch_filter filter = {.bind = bind_filters, .arg = q};
    if (q->currency) {
        filter.mask |= F_CURRENCY;
        moat_buf_addstr(&sql, " AND p.currency = :currency");
    }
    if (q->has_min) {
        filter.mask |= F_MIN;
        moat_buf_addstr(&sql, " AND p.price_amount >= :min");
    }
    if (q->has_max) {
        filter.mask |= F_MAX;
        moat_buf_addstr(&sql, " AND p.price_amount <= :max");
    }
    filter.sql = sql.len ? moat_buf_str(&sql) : NULL;
    int rc = srch_search(db, &products, pg, &filter, hits, n);
    moat_buf_release(&sql);
    return rc;
}

/* ---- lag ---- */

int srch_store_lag(struct moat_db *db, int64_t since_ms, int64_t until_ms,
                   json_t **out)
{
    static const struct {
        const char *key;
        double p;
    } quantiles[] = {{"p50_ms", 0.50}, {"p90_ms", 0.90}, {"p99_ms", 0.99}};
    struct moat_stmt *stmt = moat_db_prepare(
        db, "lag_count",
        "SELECT count(*), coalesce(max(applied_at_ms - event_time_ms), 0), "
        "coalesce(min(applied_at_ms), 0), coalesce(max(applied_at_ms), 0) "
        "FROM products WHERE applied_at_ms >= ?1 AND applied_at_ms < ?2 "
        "AND event_time_ms > 0");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_int64(st, 1, since_ms);
    sqlite3_bind_int64(st, 2, until_ms);
    int step = moat_stmt_step(stmt);
    if (step != SQLITE_ROW) {
        moat_stmt_reset(stmt);
        return moat_db_error(db, step);
    }
    int64_t count = sqlite3_column_int64(st, 0);
    json_t *res =
        json_pack("{s:I, s:I, s:I, s:I}", "count", (json_int_t)count, "max_ms",
                  (json_int_t)sqlite3_column_int64(st, 1), "first_applied_ms",
                  (json_int_t)sqlite3_column_int64(st, 2), "last_applied_ms",
                  (json_int_t)sqlite3_column_int64(st, 3));
    moat_stmt_reset(stmt);

    /* Nearest-rank percentiles, read straight from the ordered lags. */
    stmt = moat_db_prepare(
        db, "lag_rank",
        "SELECT applied_at_ms - event_time_ms AS lag FROM products "
        "WHERE applied_at_ms >= ?1 AND applied_at_ms < ?2 "
        "AND event_time_ms > 0 ORDER BY lag LIMIT 1 OFFSET ?3");
    if (!stmt) {
        json_decref(res);
        return MOAT_EDB;
    }
    st = moat_stmt_raw(stmt);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(quantiles); i++) {
        int64_t value = 0;
        if (count > 0) {
            int64_t rank = (int64_t)ceil(quantiles[i].p * (double)count);
            sqlite3_bind_int64(st, 1, since_ms);
            sqlite3_bind_int64(st, 2, until_ms);
            sqlite3_bind_int64(st, 3, rank > 0 ? rank - 1 : 0);
            if (moat_stmt_step(stmt) == SQLITE_ROW)
                value = sqlite3_column_int64(st, 0);
            moat_stmt_reset(stmt);
        }
        json_object_set_new(res, quantiles[i].key, json_integer(value));
    }
    *out = res;
    return MOAT_OK;
}

/* ---- compare (replay --verify) ---- */

int srch_store_compare(struct moat_db *live, struct moat_db *scratch,
                       json_t *diffs, size_t max_diffs)
{
    /* Everything the events decide; not applied_at_ms (when it ran). The
     * index itself: each is checked against its rows first, and their
     * term statistics must agree. */
    static const struct moat_view_table tables[] = {
        {"compare_products",
         "SELECT id, sku, name, description, attributes, price_amount, "
         "currency, doc, version, seq, event_time_ms FROM products "
         "ORDER BY id",
         "product"},
        {"compare_tombstones",
         "SELECT id, seq FROM deleted_products ORDER BY id", "deleted product"},
        {"compare_terms",
         "SELECT term, doc, cnt FROM products_fts_terms ORDER BY term",
         "index term"},
    };
    srch_check_index(live, "products_fts", "live", diffs, max_diffs);
    srch_check_index(scratch, "products_fts", "rebuilt", diffs, max_diffs);
    return moat_view_compare_tables(live, scratch, tables,
                                    MOAT_ARRAY_LEN(tables), diffs, max_diffs);
}
