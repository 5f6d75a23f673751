/*
 * store.h - catalog's own database: the only code that knows its schema.
 *
 * The database is $MOAT_DATA_DIR/catalog.db (SQLite, opened through
 * moat/db.h). Products are kept as JSON documents (see product.h) with
 * their metadata in plain columns; the SKU, currency, amount and name are
 * generated columns over the document so they can be indexed and filtered
 * without a second copy that could drift.
 *
 * Every write runs in one BEGIN IMMEDIATE transaction, which also appends
 * the write's events to the outbox (moat/events.h) - ProductCreated,
 * ProductUpdated (+ PriceChanged when the price changed), ProductDeleted,
 * with the product id as subject - so a change and its events commit or
 * vanish together. The store owns the outbox. Ownership: products
 * returned through out-parameters belong to the caller (release each with
 * cat_product_release(), or a list with cat_products_free()); documents
 * passed in are borrowed.
 */
#ifndef CAT_STORE_H
#define CAT_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/metrics.h"
#include "product.h"

struct event_base;
struct cat_store;

struct cat_store_options {
    struct event_base *base; /* the service loop (outbox timers) */
    const char *source;      /* service name, the events' source */
    struct moat_outbox_options outbox;
    int product_event_schema; /* CAT_EVENT_SCHEMA_CURRENT or _FLAT */
    /* The service's PostgreSQL database (libpq connection string,
     * borrowed), or NULL: the SQLite file data_dir/catalog.db. */
    const char *dsn;
};

/* Any version: for writes without a precondition. */
#define CAT_ANY_VERSION (-1)

/*
 * Open (creating if needed) data_dir/catalog.db, apply the migrations and
 * create the outbox. metrics is borrowed (statement timings, outbox
 * gauges). Close with cat_store_close().
 */
int cat_store_open(struct cat_store **out, const char *data_dir,
                   struct moat_metrics *metrics,
                   const struct cat_store_options *opts);
/* The store's database (borrowed), for the skeleton's backups. */
struct moat_db *cat_store_db(struct cat_store *s);
/* The store's outbox (owned by the store), to serve the feed. */
struct moat_outbox *cat_store_outbox(struct cat_store *s);
void cat_store_close(struct cat_store *s);

/* True when the database answers and every migration is applied. */
bool cat_store_ready(struct cat_store *s, const char **why);

/*
 * Insert p (id, doc and times set by the caller; version becomes 1).
 * MOAT_ECONFLICT when the SKU is taken.
 */
int cat_store_create(struct cat_store *s, struct cat_product *p);

/* Load a product into *out. MOAT_ENOTFOUND when there is none. */
int cat_store_get(struct cat_store *s, const char *id, struct cat_product *out);

/*
 * Replace the document of product id if its version is still
 * expect_version (or CAT_ANY_VERSION), bumping the version and setting
 * updated_ms. On success *out (if not NULL) holds the new state.
 * MOAT_ENOTFOUND, MOAT_EPRECOND (version moved on) or MOAT_ECONFLICT (SKU
 * taken by another product).
 */
int cat_store_replace(struct cat_store *s, const char *id,
                      int64_t expect_version, json_t *doc, int64_t now_ms,
                      struct cat_product *out);

/* Delete product id at expect_version (or any). Errors as for replace. */
int cat_store_delete(struct cat_store *s, const char *id,
                     int64_t expect_version);

/* Filters for cat_store_list; NULL / false members do not filter. */
struct cat_filter {
    const char *after_id;  /* keyset cursor: ids strictly greater */
    const char *sku;       /* exact SKU */
    const char *currency;  /* exact currency code */
    bool has_min, has_max; /* amount bounds, inclusive */
    int64_t min_amount, max_amount;
    const char *name_contains; /* substring of name, ASCII case-insensitive */
    json_t *attrs; /* borrowed object {key: string}: attributes.key == value */
};

/*
 * Up to limit products matching f, in id (= creation) order. *items is an
 * array of *n products the caller frees with cat_products_free().
 */
int cat_store_list(struct cat_store *s, const struct cat_filter *f,
                   size_t limit, struct cat_product **items, size_t *n);
void cat_products_free(struct cat_product *items, size_t n);

#endif /* CAT_STORE_H */
