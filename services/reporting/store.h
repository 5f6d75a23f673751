/*
 * store.h - reporting's own database, the warehouse: the only code that
 * knows its schema.
 *
 * The database is $MOAT_DATA_DIR/reporting.db (SQLite through moat/db.h),
 * a star schema:
 *
 *   facts       fact_order_line     one row per order line (placed date,
 *                                   product, customer, quantity, prices,
 *                                   the order's current status)
 *               fact_order          one row per order: the saga fact
 *                                   (placed, confirmed, completed times,
 *                                   final status, cancel reason)
 *               fact_payment        one row per payment and kind
 *                                   (authorized, captured, refunded,
 *                                   voided, declined)
 *               fact_stock_movement one row per StockChanged event
 *               fact_stock_commit   one row per committed reservation
 *   dimensions  dim_date            YYYYMMDD -> year, month, day, weekday
 *               dim_product         catalog's products (events, and the
 *                                   batch ETL from catalog's API)
 *               dim_customer        PSEUDONYMISED customers: a keyed hash
 *                                   of the customer id, never the id
 *
 * Surrogate keys are derived from the natural key (product_key from a
 * SHA-256 of the product id, customer_key from the pseudonym), never
 * assigned in arrival order: the four feeds interleave differently in a
 * replay, and the rebuilt warehouse must equal the live one. For the same
 * reason every write is commutative across sources: a row one source
 * creates is never conditionally updated by another.
 *
 * The consumer's own tables (cursors, dead letters: MOAT_CONSUMER_SCHEMA)
 * are one migration step of this same database, so an event's effect and
 * the cursor move commit together.
 *
 * Every function takes the database as a parameter: the handlers run on
 * the live database and, during /v1/admin/replay?verify=1, on a scratch
 * copy built from the same migrations. The event writes run inside the
 * caller's transaction (the consumer's); they never BEGIN or COMMIT.
 *
 * Ownership: strings in the structs below are borrowed; JSON returned
 * through out-parameters is a new reference the caller releases.
 */
#ifndef REP_STORE_H
#define REP_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/db.h"
#include "moat/metrics.h"

/* The migrations of reporting.db (the consumer schema is one of them). */
const struct moat_migration *rep_store_migrations(size_t *n);

/* Open (creating if needed) data_dir/reporting.db and migrate it. metrics
 * is borrowed (statement timings). Close with moat_db_close(). */
int rep_store_open(struct moat_db **out, const char *data_dir,
                   struct moat_metrics *metrics);
bool rep_store_ready(struct moat_db *db, const char **why);
/* Empty every warehouse table (replay starts from nothing). */
int rep_store_reset(struct moat_db *db);
/*
 * Append to diffs (an array of strings) how scratch differs from live:
 * every fact and dimension row, all columns the events decide (not the
 * ETL's bookkeeping). At most max_diffs entries, then one "... more".
 */
int rep_store_compare(struct moat_db *live, struct moat_db *scratch,
                      json_t *diffs, size_t max_diffs);

/* ---- keys ---- */

/* The surrogate key of a product id: 63 bits of SHA-256("product:" id). */
int64_t rep_product_key(const char *product_id);
/* The surrogate key of a customer pseudonym (hex): its first 63 bits. */
int64_t rep_customer_key(const char *pseudonym);

/* ---- writes inside the consumer's transaction ---- */

/* dim_date row of date_key (YYYYMMDD), if missing. */
int rep_store_date(struct moat_db *db, int64_t date_key);

struct rep_product {
    const char *product_id;
    const char *sku;
    const char *name;
    int64_t price_amount;
    const char *currency;
    int64_t version; /* catalog's; 0 when not told */
    int64_t seq;     /* catalog feed sequence (events) */
};
/* A catalog event's product: insert or replace unless the row reflects a
 * later event (seq) or a newer catalog version. */
int rep_store_product_event(struct moat_db *db, const struct rep_product *p);
/* PriceChanged: only the price (when the row is not newer than seq). */
int rep_store_product_price(struct moat_db *db, const char *product_id,
                            int64_t amount, const char *currency, int64_t seq);
/* ProductDeleted: mark the product deleted (it stays for old facts). */
int rep_store_product_deleted(struct moat_db *db, const char *product_id,
                              const char *sku, int64_t seq);
/* A product an order line names: a row with the line's SKU and name
 * when there is none yet (catalog's events then replace it). */
int rep_store_product_stub(struct moat_db *db, const char *product_id,
                           const char *sku, const char *name);

/* dim_customer row of a pseudonym first seen on date_key, if missing. */
int rep_store_customer(struct moat_db *db, const char *pseudonym,
                       int64_t date_key);

struct rep_order {
    const char *order_id;
    int64_t customer_key;
    int64_t date_key;
    int64_t placed_at_ms;
    int64_t total;
    const char *currency;
    int64_t version;
};
/* OrderPlaced: the saga fact; MOAT_OK when it exists already. *created
 * says whether it was new (its lines are then written). */
int rep_store_order_placed(struct moat_db *db, const struct rep_order *o,
                           bool *created);
struct rep_line {
    const char *order_id;
    int64_t line_no;
    int64_t date_key;
    int64_t product_key;
    int64_t customer_key;
    int64_t quantity;
    int64_t unit_price;
    const char *currency;
};
int rep_store_order_line(struct moat_db *db, const struct rep_line *l);
/*
 * OrderConfirmed / OrderCancelled: the order's status (and its lines'),
 * completed time, reason, unless the fact reflects a newer version.
 * MOAT_ENOTFOUND when the order was never placed.
 */
struct rep_order_final {
    const char *order_id;
    const char *status; /* "confirmed" or "cancelled" */
    const char *cancel_reason;
    const char *payment_id;
    int64_t version;
    int64_t at_ms;
    int64_t date_key;
};
int rep_store_order_final(struct moat_db *db, const struct rep_order_final *f);

struct rep_payment {
    const char *payment_id;
    const char *kind; /* authorized, captured, refunded, voided, declined */
    const char *order_id;
    int64_t date_key;
    int64_t at_ms;
    int64_t amount;
    const char *currency;
};
/* The first event of each (payment, kind) counts; repeats change nothing. */
int rep_store_payment(struct moat_db *db, const struct rep_payment *p);

struct rep_stock_movement {
    int64_t seq; /* inventory feed sequence: the key */
    const char *sku;
    int64_t date_key;
    int64_t delta;
    const char *kind;
    const char *order_id; /* may be NULL */
};
int rep_store_stock_movement(struct moat_db *db,
                             const struct rep_stock_movement *m);
int rep_store_stock_commit(struct moat_db *db, const char *order_id,
                           int64_t date_key, int64_t at_ms, int64_t units);

/* ---- the batch ETL (its own transaction, outside the consumer's) ---- */

struct rep_etl_counts {
    int64_t seen, inserted, updated, unchanged, skipped;
};
/* Upsert one product read from catalog's API: names and prices, never
 * older than what the row holds (catalog's version). */
int rep_store_product_etl(struct moat_db *db, const struct rep_product *p,
                          int64_t now_ms, struct rep_etl_counts *c);

/* ---- reports ---- */

enum rep_report {
    REP_REVENUE_PER_DAY,
    REP_TOP_PRODUCTS,
    REP_CANCELLATION_REASONS,
    REP_STOCK_TURNOVER,
    REP_SAGA_DURATIONS,
};
struct rep_report_query {
    enum rep_report report;
    int64_t from_key, to_key; /* inclusive date keys */
    int64_t limit;            /* top-products */
    bool by_revenue;          /* top-products: order by revenue */
    size_t max_rows;
};
/* The report's column names (*columns, array of strings) and rows (*rows,
 * array of arrays of scalars); *truncated when more than max_rows. */
int rep_store_report(struct moat_db *db, const struct rep_report_query *q,
                     json_t **columns, json_t **rows, bool *truncated);

#endif /* REP_STORE_H */
