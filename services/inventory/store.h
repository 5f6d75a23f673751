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
 *                "adjustment" | "commit" | "return", "delta", "reason",
 *                "on_hand_before", "on_hand_after", "user", "at_ms"}: an
 *                append-only log of every change of on_hand, for audits
 *                and reconciliation.
 *   reservations, open_by_customer   see "reservations" below.
 *   consumer, dead_letters, dead_letters_subject   the saga consumer's
 *                cursor on orders' feed and its parked commands, owned by
 *                libmoat's consumer (moat_consumer_new_kv in
 *                moat/events.h), written in the same transaction as the
 *                commands' effects and replies, so each command takes
 *                effect exactly once.
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

#include <jansson.h>
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

struct inv_stock {
    char sku[INV_SKU_MAX + 1];
    int64_t on_hand;  /* units in the warehouse */
    int64_t reserved; /* units held by held reservations */
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

/* ---- reservations (the order saga's stock step) ----
 *
 * A reservation holds units of one or more SKUs for one order. Its record
 * lives in "reservations" (order_id -> JSON: "order_id", "customer_id"
 * (null for a tombstone), "lines" [{"sku", "quantity"}] sorted by SKU,
 * "state" "held" | "released" | "committed", "tombstone", "returned"
 * (optional, true once a committed reservation's units came back),
 * "version", "created_ms", "updated_ms"), and while it is held also in
 * "open_by_customer" (customer_id NUL order_id -> empty), which counts a
 * customer's open reservations without scanning them all.
 *
 * Per SKU, every write keeps: reserved = the sum of the quantities of the
 * held reservations' lines for that SKU; on_hand + sold = everything ever
 * set or adjusted in (commit moves units from on_hand to sold, a return
 * moves them back); and on_hand >= reserved >= 0. Each transition is one LMDB
 * write transaction holding the stock records, the reservation, its index entry
 * and its events (StockReserved / StockReleased / StockCommitted, subject
 * order_id, then StockChanged per SKU), so all commit or none does.
 *
 * A release of an order with no reservation leaves a tombstone: a
 * released record without lines. Sagas compensate on a timeout, so the
 * reserve command can arrive after its own compensation; without the
 * tombstone that late reserve would hold stock for an order nobody will
 * ever commit or release again - a leak. With it, the late reserve is
 * refused (INV_RESERVE_RELEASED). Tombstones are kept (one small record
 * per compensated order).
 */

#define INV_REF_MAX      64    /* order and customer ids, SKU charset */
#define INV_LINES_MAX    50    /* lines per reservation */
#define INV_LINE_QTY_MAX 10000 /* units per line */

enum inv_res_state { INV_HELD, INV_RELEASED, INV_COMMITTED };

struct inv_line {
    char sku[INV_SKU_MAX + 1];
    int64_t quantity; /* 1..INV_LINE_QTY_MAX */
};

/* Plain data (no pointers); about 4 KiB. */
struct inv_reservation {
    char order_id[INV_REF_MAX + 1];
    char customer_id[INV_REF_MAX + 1]; /* "" for a tombstone */
    enum inv_res_state state;
    bool tombstone; /* released before it was ever reserved */
    bool returned;  /* released after it was committed: units back */
    size_t nlines;
    struct inv_line lines[INV_LINES_MAX]; /* sorted by SKU, no repeats */
    int64_t version;                      /* 1 at creation, +1 per change */
    int64_t created_ms, updated_ms;
};

/* One line that cannot be held: what was asked and what is available. */
struct inv_shortage {
    char sku[INV_SKU_MAX + 1];
    int64_t requested, available; /* available 0 for an unknown SKU */
};

enum inv_reserve_result {
    INV_RESERVED,         /* new reservation held (*out) */
    INV_RESERVE_EXISTS,   /* same order, customer and lines: *out as is */
    INV_RESERVE_MISMATCH, /* the order has a reservation of other lines */
    INV_RESERVE_RELEASED, /* the order was released (late reserve) */
    INV_RESERVE_CAP,      /* the customer holds max_open already */
    INV_RESERVE_SHORT,    /* some lines are short: see shortages */
};

enum inv_transition_result {
    INV_TRANSITIONED, /* held -> released / committed now */
    INV_ALREADY,      /* already in the wanted state (a tombstone is
                         released): nothing written */
    INV_WRONG_STATE,  /* in the other final state (*out) */
    INV_ABSENT,       /* release of an unknown order: tombstone written */
    INV_RETURNED,     /* committed -> released: units back on hand */
};

/* "held", "released", "committed". */
const char *inv_res_state_name(enum inv_res_state st);
/* True for an id usable as order_id / customer_id (SKU charset, 1..64). */
bool inv_ref_valid(const char *ref);
/* Sort want's lines by SKU; false when two lines share a SKU. */
bool inv_lines_sort(struct inv_reservation *want);

/*
 * Reserve want (order_id, customer_id, lines sorted by inv_lines_sort) all
 * or nothing, for a customer holding fewer than max_open reservations.
 * *result says what happened; *out holds the reservation for RESERVED,
 * EXISTS, MISMATCH and RELEASED; shortages (INV_LINES_MAX entries) gets
 * *nshort entries for SHORT. Returns MOAT_OK whatever the result, or a
 * store fault (nothing written).
 */
int inv_store_reserve(struct inv_store *s, const struct inv_reservation *want,
                      int64_t max_open, struct inv_reservation *out,
                      enum inv_reserve_result *result,
                      struct inv_shortage *shortages, size_t *nshort);
/*
 * Release the reservation of order_id (held -> released, units back to
 * available) or leave a tombstone when there is none. *out holds the
 * record after the call. caller (the calling service) is logged.
 */
int inv_store_release(struct inv_store *s, const char *order_id,
                      const char *caller, struct inv_reservation *out,
                      enum inv_transition_result *result);
/*
 * As inv_store_release, but a committed reservation is returned too
 * (INV_RETURNED, see inv_store_release_in): for the operator undoing an
 * order orders lost (docs/recovery.md).
 */
int inv_store_return(struct inv_store *s, const char *order_id,
                     const char *caller, struct inv_reservation *out,
                     enum inv_transition_result *result);
/*
 * Commit the reservation of order_id (held -> committed: the units leave
 * on_hand and reserved and count as sold; each SKU's change is logged in
 * "adjustments" as kind "commit" by caller). MOAT_ENOTFOUND when there is
 * no reservation (a tombstone is released: INV_WRONG_STATE).
 */
int inv_store_commit(struct inv_store *s, const char *order_id,
                     const char *caller, struct inv_reservation *out,
                     enum inv_transition_result *result);
/* Load the reservation of order_id; MOAT_ENOTFOUND when there is none. */
int inv_store_reservation_get(struct inv_store *s, const char *order_id,
                              struct inv_reservation *out);

/*
 * Visit up to limit reservations in order_id order (bytewise), strictly
 * after after_id (NULL: from the first), in one read snapshot. fn gets a
 * borrowed record valid during the call and returns MOAT_OK to go on.
 * *more says whether another reservation follows the last one visited.
 */
typedef int (*inv_reservation_fn)(const struct inv_reservation *r, void *arg);
int inv_store_reservations_visit(struct inv_store *s, const char *after_id,
                                 size_t limit, inv_reservation_fn fn, void *arg,
                                 bool *more);

/* One line of the adjustment log; strings borrowed (valid during the
 * visit callback only). */
struct inv_adjustment {
    int64_t id;
    const char *sku;
    const char *kind;   /* "set", "adjustment", "commit", "return" */
    const char *reason; /* NULL when none was given */
    const char *user;   /* the admin user or calling service; may be "" */
    int64_t delta, on_hand_before, on_hand_after;
    int64_t at_ms;
};
typedef int (*inv_adjustment_fn)(const struct inv_adjustment *a, void *arg);
/* As inv_store_reservations_visit, for the adjustment log in id order,
 * strictly after after_id (0: from the first). */
int inv_store_adjustments_visit(struct inv_store *s, int64_t after_id,
                                size_t limit, inv_adjustment_fn fn, void *arg,
                                bool *more);

/* ---- the saga consumer (commands.c) ----
 *
 * The functions above each run one write transaction. The order saga's
 * consumer (libmoat's, moat_consumer_new_kv on this store's environment)
 * instead applies a whole pulled batch of commands, their replies and its
 * feed cursor in ONE transaction (one sync per batch), each command in a
 * transaction nested in it: it calls the _in functions below on the
 * transaction it hands its handler. After any error of an _in function
 * the transaction must be aborted: its writes so far may be partial.
 */
struct moat_kv_txn;
struct moat_kv;
/* The environment (owned by the store), for the consumer. */
struct moat_kv *inv_store_kv(struct inv_store *s);

/* As inv_store_reserve, inside t (writes only for INV_RESERVED). */
int inv_store_reserve_in(struct inv_store *s, struct moat_kv_txn *t,
                         const struct inv_reservation *want, int64_t max_open,
                         struct inv_reservation *out,
                         enum inv_reserve_result *result,
                         struct inv_shortage *shortages, size_t *nshort);
/*
 * As inv_store_release, inside t. With allow_return a committed
 * reservation is returned (INV_RETURNED): each SKU's units go from sold
 * back to on_hand (logged in "adjustments" as kind "return" by caller),
 * the record becomes released with "returned" true, and StockReleased
 * says "returned": true. Without it a committed one is INV_WRONG_STATE.
 */
int inv_store_release_in(struct inv_store *s, struct moat_kv_txn *t,
                         const char *order_id, const char *caller,
                         bool allow_return, struct inv_reservation *out,
                         enum inv_transition_result *result);
/* As inv_store_commit, inside t. */
int inv_store_commit_in(struct inv_store *s, struct moat_kv_txn *t,
                        const char *order_id, const char *caller,
                        struct inv_reservation *out,
                        enum inv_transition_result *result);
/*
 * Append StockReservationFailed (subject order_id) to t: data {order_id,
 * reason, "shortages": [{sku, requested, available}] when nshort > 0,
 * "detail" when detail is not NULL}. All borrowed.
 */
int inv_store_reserve_failed_in(struct inv_store *s, struct moat_kv_txn *t,
                                const char *order_id, const char *reason,
                                const char *detail,
                                const struct inv_shortage *shortages,
                                size_t nshort);
/*
 * Replay verification (commands.c): a scratch store rebuilt from orders'
 * commands starts from live's stock as the commands found it - every unit
 * ever set or adjusted in on hand (on_hand + sold), nothing reserved or
 * sold - which inv_store_view_seed copies into scratch (a fresh store).
 * inv_store_view_compare appends the differences between the two
 * environments' "stock" (on_hand, reserved, sold), "reservations"
 * (without their times) and "open_by_customer" to diffs. Stock changed
 * through the HTTP API between two commands, or reservations made through
 * it, show as differences: the commands alone do not decide them.
 */
int inv_store_view_seed(struct inv_store *scratch, struct inv_store *live);
int inv_store_view_compare(struct moat_kv *live, struct moat_kv *scratch,
                           json_t *diffs);

#ifdef MOAT_TEST_HOOKS
/*
 * Test builds only (test_hooks.c): corrupt the store as a bug would, with
 * no adjustment, event or index update. Add the deltas to sku's counts;
 * set order_id's reservation state. MOAT_ENOTFOUND when there is none.
 */
int inv_store_test_poke_stock(struct inv_store *s, const char *sku,
                              int64_t d_on_hand, int64_t d_reserved,
                              int64_t d_sold);
int inv_store_test_poke_reservation(struct inv_store *s, const char *order_id,
                                    enum inv_res_state state);
#endif

#endif /* INV_STORE_H */
