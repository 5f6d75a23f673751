/*
 * store.h - orders' own database ($MOAT_DATA_DIR/orders.db, SQLite): orders,
 * their lines, the saga state of each order, idempotency records, the
 * denormalised customer copies (sealed, customer_store.c), the outbox (commands
 * and order events) and the consumer's cursors. store.c is the only code that
 * knows the schema.
 *
 * Ownership: struct ord_order owns its lines (and their names); release it
 * with ord_order_release. Strings passed in are borrowed. Everything runs
 * on the loop thread.
 */
#ifndef ORD_STORE_H
#define ORD_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/crypto.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/metrics.h"

#define ORD_ID_PREFIX    "ord_"
#define ORD_ID_MAX       40 /* "ord_" + 26 + NUL, rounded up */
#define ORD_REF_MAX      64 /* customer, product and payment ids */
#define ORD_SKU_MAX      64
#define ORD_NAME_MAX     200 /* code points, as catalog's */
#define ORD_LINES_MAX    50
#define ORD_QTY_MAX      1000
#define ORD_TOKEN_MAX    64
#define ORD_IDEM_KEY_MAX 255
#define ORD_REASON_MAX   32
#define ORD_TRACEPARENT  56 /* 55 + NUL */
#define ORD_EMAIL_MAX    320

/* What the saga has done and learned (orders.flags). */
enum {
    ORD_F_SENT_RESERVE = 1 << 0,
    ORD_F_RESERVE_FAILED = 1 << 1,
    ORD_F_SENT_AUTHORIZE = 1 << 2,
    ORD_F_DECLINED = 1 << 3,
    ORD_F_SENT_CAPTURE = 1 << 4,
    ORD_F_CAPTURE_FAILED = 1 << 5,
    ORD_F_CAPTURED = 1 << 6,
    ORD_F_COMMITTED = 1 << 7,
    ORD_F_PROVIDER_DOWN = 1 << 8,
    ORD_F_SENT_RELEASE = 1 << 9,
    ORD_F_SENT_VOID = 1 << 10,
    ORD_F_SENT_REFUND = 1 << 11,
};
/* Compensations still awaiting their reply (orders.pending_comp). */
enum { ORD_COMP_STOCK = 1 << 0, ORD_COMP_PAYMENT = 1 << 1 };

struct ord_line {
    char product_id[ORD_REF_MAX + 1];
    char sku[ORD_SKU_MAX + 1];
    char *name; /* owned */
    int64_t unit_price, quantity;
};

struct ord_order {
    char id[ORD_ID_MAX];
    char customer_id[ORD_REF_MAX + 1];
    char status[12];                        /* pending|confirmed|cancelled */
    char step[16];                          /* see docs/saga.md */
    char cancel_reason[ORD_REASON_MAX + 1]; /* "" when none */
    int64_t total;
    char currency[4];
    char payment_id[ORD_REF_MAX + 1];   /* "" until authorised */
    char card_token[ORD_TOKEN_MAX + 1]; /* "" once sent to payments */
    int64_t flags, pending_comp;
    int64_t deadline_ms; /* of the current step; 0 when it has none */
    char traceparent[ORD_TRACEPARENT];
    int64_t version, created_ms, updated_ms, completed_ms;
    size_t nlines;
    struct ord_line *lines; /* owned; NULL when loaded without lines */
};

void ord_order_release(struct ord_order *o);

/* The denormalised copy of a customer (from users' events and API). */
struct ord_customer {
    char id[ORD_REF_MAX + 1];
    char *name, *email; /* owned; NULL while not known */
    bool stale;         /* users changed it since we fetched it */
};
void ord_customer_release(struct ord_customer *c);

/* The migrations (the consumer's verification needs them too). */
const struct moat_migration *ord_store_migrations(size_t *n);

int ord_store_open(struct moat_db **out, const char *data_dir, const char *dsn,
                   struct moat_metrics *metrics);
bool ord_store_ready(struct moat_db *db, const char **why);

/* MOAT_OK, MOAT_ENOTFOUND or a db error. with_lines loads the lines. */
int ord_order_get(struct moat_db *db, const char *id, bool with_lines,
                  struct ord_order *out);
/* Load o's lines (o->lines must be NULL), e.g. for an order from
 * ord_orders_list. */
int ord_order_lines_load(struct moat_db *db, struct ord_order *o);
/* Insert o with its lines (inside the caller's transaction). */
int ord_order_insert(struct moat_db *db, const struct ord_order *o);
/* Write o's mutable fields back; version +1 and updated_ms set here
 * (inside the caller's transaction). */
int ord_order_update(struct moat_db *db, struct ord_order *o);

/* Ids of up to limit orders whose step deadline passed at now_ms. */
int ord_orders_overdue(struct moat_db *db, int64_t now_ms, size_t limit,
                       char (*ids)[ORD_ID_MAX], size_t *n);

/* Up to limit orders (without lines) after id `after` ("" = first),
 * optionally of one customer and one status; fn is called per order. */
int ord_orders_list(struct moat_db *db, const char *customer_id,
                    const char *status, const char *after, size_t limit,
                    void (*fn)(const struct ord_order *, void *), void *arg);

/* Saga counts: {"by_status": {..}, "by_step": {..},
 * "oldest_open_age_seconds": N}; new reference in *out. */
int ord_sagas_summary(struct moat_db *db, int64_t now_ms, json_t **out);

/* Idempotency record of (customer, key). MOAT_ENOTFOUND when none. */
int ord_idem_get(struct moat_db *db, const char *customer_id, const char *key,
                 char fingerprint[65], char order_id[ORD_ID_MAX]);
int ord_idem_insert(struct moat_db *db, const char *customer_id,
                    const char *key, const char *fingerprint,
                    const char *order_id, int64_t now_ms);

/*
 * The customer copy is sealed (customer_store.c): name_enc and email_enc
 * hold moat/crypto.h sealed text bound to "orders.customer.name:<id>" and
 * "orders.customer.email:<id>", key_id the data key (0: nothing sealed).
 * get: MOAT_ENOTFOUND when no row, MOAT_EINVAL when a value does not open
 * (tampered, moved, or its key retired). kr NULL: whether the row exists
 * and is stale only, nothing opened (name and email stay NULL).
 */
int ord_customer_get(struct moat_db *db, const struct moat_keyring *kr,
                     const char *id, struct ord_customer *out);
/* Mark a customer changed by users (creating the row): the refresher
 * fetches the profile. */
int ord_customer_mark_stale(struct moat_db *db, const char *id, int64_t now_ms);
/* Store the profile fetched from users (not stale any more). */
int ord_customer_put(struct moat_db *db, const struct moat_keyring *kr,
                     const char *id, const char *name, const char *email,
                     int64_t now_ms);
/* moat/keys.h's store functions over the customer copies. */
int ord_customers_rekey_batch(struct moat_db *db, const struct moat_keyring *kr,
                              uint32_t active, char *after, size_t batch,
                              size_t *resealed, size_t *failed, bool *finished);
int ord_customers_rows_by_key(struct moat_db *db, json_t **out);
/* Ids of up to limit stale customers. */
int ord_customers_stale(struct moat_db *db, size_t limit,
                        char (*ids)[ORD_REF_MAX + 1], size_t *n);

#endif /* ORD_STORE_H */
