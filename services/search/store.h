/*
 * store.h - the catalog index's database (MOAT_SEARCH_INDEX=catalog): the
 * only code that knows its schema.
 *
 * The database is $MOAT_DATA_DIR/search.db (SQLite through moat/db.h). It
 * holds a read model of catalog's products built ONLY from catalog's
 * events: a products table (one row per live product, the v2 product
 * document plus the columns search filters and sorts on, and the feed
 * position and times of the last event applied to it) and products_fts, an
 * FTS5 index over name, description, sku and the attribute text, kept in
 * step with products by triggers (external content), so the index can
 * never disagree with the rows it indexes. The consumer's own tables
 * (cursors, dead letters: MOAT_CONSUMER_SCHEMA) are one migration step of
 * this same database, so an event's effect and the cursor move commit
 * together.
 *
 * Every function takes the database as a parameter rather than a store
 * object: the event handlers run on the live database and, during
 * /v1/admin/replay?verify=1, on a scratch copy built from the same
 * migrations. The write functions run inside the caller's transaction
 * (the consumer's); they never BEGIN or COMMIT.
 *
 * The FTS5 settings, the query and its pages are the engine's (engine.h):
 * this file says only what is indexed and which filters exist. The file's
 * name and how main.c opens it: search.h.
 *
 * Ownership: strings in struct srch_product are borrowed; hits returned by
 * srch_store_search belong to the caller (srch_hits_free); JSON returned
 * through out-parameters is a new reference the caller releases.
 */
#ifndef SRCH_STORE_H
#define SRCH_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "moat/db.h"

/* A product as the index stores it (all borrowed). */
struct srch_product {
    const char *id;
    const char *sku;
    const char *name;
    const char *description; /* "" when the product has none */
    const char *attributes;  /* attribute keys and values as plain text */
    int64_t amount;          /* price in minor units */
    const char *currency;    /* ISO 4217 code */
    json_t *doc;             /* the v2 product document */
    int64_t version;         /* catalog's version; 0 when not told */
    int64_t seq;             /* feed sequence of the event */
    int64_t event_time_ms;   /* the event's time (commit in catalog) */
};

/* The migrations of search.db (the consumer schema is one of them). */
const struct moat_migration *srch_store_migrations(size_t *n);

/*
 * Insert or replace p unless the row already reflects a later event of the
 * feed, or the product was deleted by one (p->seq decides: a re-delivered
 * or stale event changes nothing). *applied says whether the row changed.
 * MOAT_OK or a database error.
 */
int srch_store_upsert(struct moat_db *db, const struct srch_product *p,
                      bool *applied);
/*
 * Only the price of product id changed (event seq). MOAT_ENOTFOUND when
 * the product was never indexed (a deleted one is fine: nothing to do).
 */
int srch_store_set_price(struct moat_db *db, const char *id, int64_t amount,
                         const char *currency, int64_t seq,
                         int64_t event_time_ms, bool *applied);
/* Remove product id (no-op when absent) and remember that event seq
 * deleted it, so that older events delivered again cannot revive it. */
int srch_store_delete(struct moat_db *db, const char *id, int64_t seq,
                      bool *applied);
/* Remove every product and tombstone (replay starts from empty). */
int srch_store_reset(struct moat_db *db);

/* The indexed product id: its document plus where it came from. */
int srch_store_get(struct moat_db *db, const char *id, json_t **out);

/* The catalog index's filters, beside the engine's page. */
struct srch_query {
    const char *currency;
    bool has_min, has_max;
    int64_t min_amount, max_amount;
};

/* The engine's srch_search_fn for products: arg is a struct srch_query
 * (borrowed). Up to pg->limit hits, best first (or by name, id); each
 * hit's item is {id, sku, name, price: {amount, currency}}. */
int srch_store_search(struct moat_db *db, const struct srch_page *pg, void *arg,
                      struct srch_hit **hits, size_t *n);

/*
 * Append to diffs (an array of strings) how scratch differs from live:
 * product rows (by id, every column but the applied time), deletions,
 * and the FTS index (each index checked against its rows, and the term
 * statistics of both compared). At most max_diffs entries, then one "... more".
 */
int srch_store_compare(struct moat_db *live, struct moat_db *scratch,
                       json_t *diffs, size_t max_diffs);

/*
 * Lag from an event's time (catalog's commit) to its application in
 * search, over the products last changed by an event applied in
 * [since_ms, until_ms): {"count", "p50_ms", "p90_ms", "p99_ms", "max_ms",
 * "first_applied_ms", "last_applied_ms"}. Rows without an event time are
 * left out.
 */
int srch_store_lag(struct moat_db *db, int64_t since_ms, int64_t until_ms,
                   json_t **out);

#endif /* SRCH_STORE_H */
