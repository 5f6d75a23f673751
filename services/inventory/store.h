/*
 * store.h - inventory's own LMDB environment: the only code that knows its
 * layout.
 *
 * The environment is the directory $MOAT_DATA_DIR/inventory.lmdb
 * (moat/kv.h: mode 0700, files 0600). Its sub-databases:
 *
 *   stock        sku -> {"on_hand", "reserved", "sold", "version",
 *                "created_ms", "updated_ms"} (JSON). available =
 *                on_hand - reserved, never negative: every write checks it.
 *   adjustments  8-byte big-endian id -> {"sku", "kind": "set" |
 *                "adjustment", "delta", "reason", "on_hand_before",
 *                "on_hand_after", "user", "at_ms"}: an append-only log of
 *                every change of on_hand, for audits and reconciliation.
 *   outbox, outbox_meta   the transactional outbox (moat_outbox_new_kv).
 *
 * Every write is one LMDB write transaction holding the stock record, its
 * adjustment and its StockChanged event (subject = sku), so the three
 * commit or vanish together. The store owns the environment and the
 * outbox.
 *
 * Ownership: struct inv_stock is plain data (no pointers). Strings passed
 * in are borrowed.
 */
#ifndef INV_STORE_H
#define INV_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/metrics.h"

struct event_base;
struct inv_store;

#define INV_SKU_MAX    64
#define INV_REASON_MAX 200
#define INV_USER_MAX   64
/* Units of one SKU at most, and of one adjustment: far beyond any real
 * warehouse, far below where int64 arithmetic could overflow. */
#define INV_QTY_MAX ((int64_t)1000000000000)
/* Data schema version of StockChanged. */
#define INV_STOCK_CHANGED_SCHEMA 1

struct inv_stock {
    char sku[INV_SKU_MAX + 1];
    int64_t on_hand;  /* units in the warehouse */
    int64_t reserved; /* units held for orders (saga; next issue) */
    int64_t sold;     /* units sold since the SKU was created */
    int64_t version;  /* 1 at creation, +1 per change */
    int64_t created_ms, updated_ms;
};

static inline int64_t inv_available(const struct inv_stock *s)
{
    return s->on_hand - s->reserved;
}

struct inv_store_options {
    struct event_base *base; /* the service loop (outbox timers) */
    const char *source;      /* service name, the events' source */
    size_t mapsize;          /* LMDB map size; 0 = default */
    struct moat_outbox_options outbox;
};

/*
 * Open (creating if needed) data_dir/inventory.lmdb, apply the migrations
 * and create the outbox. metrics is borrowed. Close with inv_store_close.
 */
int inv_store_open(struct inv_store **out, const char *data_dir,
                   struct moat_metrics *metrics,
                   const struct inv_store_options *opts);
void inv_store_close(struct inv_store *s);
/* The store's outbox (owned by the store), to serve the feed. */
struct moat_outbox *inv_store_outbox(struct inv_store *s);
/* True when the environment answers and every migration is applied. */
bool inv_store_ready(struct inv_store *s, const char **why);

/* True for 1..INV_SKU_MAX of A-Z a-z 0-9 . _ - (catalog's SKU rule). */
bool inv_sku_valid(const char *sku);

/* What a write was asked to do; strings borrowed. */
struct inv_change {
    const char *sku;
    const char *reason;     /* NULL for a set without one */
    const char *user;       /* who asked (the principal's user id), or "" */
    int64_t expect_version; /* INV_ANY_VERSION or the If-Match version */
};
#define INV_ANY_VERSION (-1)

/*
 * Set the on_hand of sku to on_hand (creating the SKU when missing; *created
 * says so). An unchanged value writes nothing. MOAT_ECONFLICT when on_hand
 * would fall below reserved, MOAT_EPRECOND when the version moved on
 * (*out then holds the current state). On success and on those two
 * errors *out holds the state (new or current).
 */
int inv_store_set(struct inv_store *s, const struct inv_change *c,
                  int64_t on_hand, struct inv_stock *out, bool *created);
/*
 * Add delta (non-zero) to the on_hand of an existing sku. MOAT_ENOTFOUND,
 * MOAT_ECONFLICT (available would go below 0, or on_hand above
 * INV_QTY_MAX; *out holds the current state). *adjustment_id gets the id
 * of the logged adjustment.
 */
int inv_store_adjust(struct inv_store *s, const struct inv_change *c,
                     int64_t delta, struct inv_stock *out,
                     int64_t *adjustment_id);

/* Load sku. MOAT_ENOTFOUND when there is none. */
int inv_store_get(struct inv_store *s, const char *sku, struct inv_stock *out);
/*
 * Up to limit SKUs in SKU order, strictly after after_sku (NULL: from the
 * first). *items is an array of *n the caller frees with free().
 */
int inv_store_list(struct inv_store *s, const char *after_sku, size_t limit,
                   struct inv_stock **items, size_t *n);

/*
 * Reservations (the order saga, next issue) go here: reserve(order_id,
 * lines) moving units from available to reserved, release (compensation)
 * and commit (reserved -> sold), each idempotent by order id and answered
 * through the outbox in the same transaction. The stock record already
 * carries reserved and sold, and every check above already uses
 * available = on_hand - reserved.
 */

#endif /* INV_STORE_H */
