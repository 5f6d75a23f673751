/*
 * store.h - the read model's own database: the only code that knows its
 * schema.
 *
 * The database is $MOAT_DATA_DIR/readmodel.db (SQLite through moat/db.h).
 * Every row comes from an event of one of four feeds:
 *
 *   orders          THE VIEW: one row per order, keyed (customer_id,
 *                   order_id), already holding everything the history
 *                   endpoint shows: status and cancel reason, total,
 *                   currency, placed time, the lines as paid (JSON), the
 *                   payment (JSON or NULL), the notifications sent (JSON
 *                   array), and doc: the order rendered as the API shows
 *                   it, current product names and prices included. From
 *                   orders' OrderPlaced, OrderConfirmed, OrderCancelled;
 *                   payment and notifications are copied in from the
 *                   tables below whenever either changes, and doc is
 *                   rendered again after every change of the row or of one
 *                   of its products.
 *   order_products  (product_id, order_id) for every line: the orders to
 *                   render again when a product changes.
 *   products        current name and price per product id, from catalog's
 *                   ProductCreated/Updated, PriceChanged, ProductDeleted (a
 *                   deleted product keeps a row with NULL name and price:
 *                   its tombstone).
 *   payments        the latest payment state per order, from payments'
 *                   Payment* events (subject = order id).
 *   notifications   one row per email sent, from notifications'
 *                   NotificationSent.
 *
 * The feeds are consumed independently, so a payment or an email may be
 * seen before its order: payments and notifications keep it until the
 * OrderPlaced arrives, which copies it in. Every write is guarded by its
 * feed's sequence (an older or re-delivered event changes nothing), on
 * top of the consumer's cursor.
 *
 * The consumer's own tables (cursors, dead letters: MOAT_CONSUMER_SCHEMA)
 * are one migration step of this same database, so an event's effect and
 * the cursor move commit together.
 *
 * Every function takes the database as a parameter: the handlers run on
 * the live database and, during /v1/admin/replay?verify=1, on a scratch
 * copy built from the same migrations. Writes run inside the caller's (the
 * consumer's) transaction and never BEGIN or COMMIT.
 *
 * Ownership: every string passed in is borrowed.
 */
#ifndef RM_STORE_H
#define RM_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/buf.h"
#include "moat/db.h"
#include "moat/metrics.h"

#define RM_KEY_MAX 64 /* ids: 1..64 of [A-Za-z0-9_-] */

/* The migrations of readmodel.db (the consumer schema is one of them). */
const struct moat_migration *rm_store_migrations(size_t *n);

/* Open (creating if needed) data_dir/readmodel.db and migrate it. metrics
 * is borrowed (statement timings). Close with moat_db_close(). */
int rm_store_open(struct moat_db **out, const char *data_dir,
                  struct moat_metrics *metrics);
bool rm_store_ready(struct moat_db *db, const char **why);

/* An order as OrderPlaced tells it. lines is the JSON text of the lines
 * array as the view stores it: [{product_id, sku, name, unit_price,
 * quantity}]. */
struct rm_order {
    const char *customer_id, *order_id, *currency, *lines;
    int64_t total;
    int64_t placed_ms; /* the event's time */
    int64_t seq;
};

/* Insert the order (status pending) with the payment and notifications
 * already known for it, unless it is in the view already (*applied
 * false). */
int rm_store_order_place(struct moat_db *db, const struct rm_order *o,
                         bool *applied);
/* The order's status changed at seq (reason NULL but for a cancel).
 * MOAT_ENOTFOUND when the order was never placed in the view. */
int rm_store_order_status(struct moat_db *db, const char *order_id,
                          const char *status, const char *reason, int64_t seq,
                          bool *applied);

/* A product's current name and price (created or updated at seq). */
int rm_store_product_upsert(struct moat_db *db, const char *id,
                            const char *name, int64_t amount,
                            const char *currency, int64_t seq, bool *applied);
/* Only the price changed. MOAT_ENOTFOUND when the product was never seen
 * (a deleted one is fine: nothing to do). */
int rm_store_product_price(struct moat_db *db, const char *id, int64_t amount,
                           const char *currency, int64_t seq, bool *applied);
/* The product was deleted at seq: name and price become unknown (NULL). */
int rm_store_product_delete(struct moat_db *db, const char *id, int64_t seq,
                            bool *applied);

/* The order's payment is payment_id in status (as of seq). */
int rm_store_payment(struct moat_db *db, const char *order_id,
                     const char *payment_id, const char *status, int64_t seq,
                     bool *applied);

/* An email about the order was sent (once per notification_id). */
struct rm_notification {
    const char *order_id, *notification_id, *kind, *status;
    int64_t sent_ms;
    int64_t seq;
};
int rm_store_notification(struct moat_db *db, const struct rm_notification *n,
                          bool *applied);

/* Empty every table of the view (replay starts from nothing). */
int rm_store_reset(struct moat_db *db);

/*
 * A page of customer_id's history, in order id (creation) order after the
 * order id after (NULL: from the first): each order's doc (a JSON object,
 * see docs/readmodel.md), comma-separated, appended to out; at most limit
 * of them. One query: a range of the primary key. *n is the number appended,
 * *more whether another order follows, and last (RM_KEY_MAX + 1 bytes) the last
 * one's id
 * ("" when none).
 */
int rm_store_history(struct moat_db *db, const char *customer_id,
                     const char *after, size_t limit, struct moat_buf *out,
                     size_t *n, bool *more, char *last);

/*
 * Append to diffs (an array of strings) how scratch differs from live:
 * every column of every table of the view. At most max_diffs entries,
 * then one "... and N more".
 */
int rm_store_compare(struct moat_db *live, struct moat_db *scratch,
                     json_t *diffs, size_t max_diffs);

#endif /* RM_STORE_H */
