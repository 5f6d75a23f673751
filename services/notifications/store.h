/*
 * store.h - notifications' own database: the only code that knows its
 * schema.
 *
 * The database is $MOAT_DATA_DIR/notifications.db (SQLite through
 * moat/db.h). It holds two tables with different lifetimes:
 *
 *   notifications  the VIEW: one row per (order_id, status), built only
 *                  from orders' events in the consumer's transaction
 *                  (UNIQUE (order_id, status): a redelivered or replayed
 *                  event inserts nothing). A replay empties and rebuilds
 *                  it; replay --verify compares every column the events
 *                  decide. Its delivered flag and delivered time are not
 *                  decided by events: they are copied from deliveries when
 *                  the row is (re)built and set when the deliverer marks
 *                  it, and the comparison ignores them.
 *   deliveries     the DURABLE RECORD of every email written to the
 *                  Maildir, keyed by (order_id, status). Replay never
 *                  touches it, so a rebuilt view knows what was sent and
 *                  nothing is sent twice.
 *
 * The consumer's own tables (cursors, dead letters: MOAT_CONSUMER_SCHEMA)
 * are one migration step of this same database, so a notification's row
 * and the cursor move commit together. So is the outbox
 * (MOAT_OUTBOX_SCHEMA): NotificationSent is appended in the transaction
 * that records a delivery, and served at GET /v1/events.
 *
 * Every function takes the database as a parameter: the event handler runs
 * on the live database and, during /v1/admin/replay?verify=1, on a scratch
 * copy built from the same migrations. ntf_store_insert runs inside the
 * caller's (the consumer's) transaction and never BEGINs or COMMITs; the
 * other writes are single statements (autocommit).
 *
 * Ownership: strings in struct ntf_row passed in are borrowed; rows
 * returned by ntf_store_* are owned by the caller (ntf_row_release /
 * ntf_rows_free); JSON returned through out-parameters is a new reference.
 */
#ifndef NTF_STORE_H
#define NTF_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/db.h"
#include "moat/events.h"
#include "moat/metrics.h"

#define NTF_ID_PREFIX "ntf_"
#define NTF_ID_LEN    (4 + 26) /* "ntf_" + 26 Crockford base32 characters */
#define NTF_KEY_MAX   64       /* order and customer ids: [A-Za-z0-9_-] */

/* A notification. In ntf_store_insert everything is borrowed; rows read
 * back (ntf_store_get, _list, _undelivered) own their strings. */
struct ntf_row {
    char *id;           /* "ntf_..." derived from (order_id, status) */
    char *order_id;     /* the order (the event's subject) */
    char *status;       /* pending | confirmed | cancelled */
    char *customer_id;  /* the order's customer */
    char *kind;         /* order.placed | order.confirmed | order.cancelled */
    char *subject;      /* the email's Subject: (ASCII) */
    char *body;         /* the email's text (UTF-8, LF line ends) */
    char *trace_id;     /* 32 hex of the event's traceparent; NULL if none */
    char *event_id;     /* the CloudEvent id that created it */
    int64_t seq;        /* its position in orders' feed */
    int64_t created_ms; /* the event's time (orders' commit), ms */
    bool delivered;
    int64_t delivered_ms; /* 0 when not delivered */
};

/* Free the strings of r (not r itself). */
void ntf_row_release(struct ntf_row *r);
void ntf_rows_free(struct ntf_row *rows, size_t n);

/* The migrations of notifications.db (the consumer schema is one). */
const struct moat_migration *ntf_store_migrations(size_t *n);

/* Open (creating if needed) data_dir/notifications.db and migrate it.
 * metrics is borrowed (statement timings). Close with moat_db_close(). */
int ntf_store_open(struct moat_db **out, const char *data_dir,
                   struct moat_metrics *metrics);
bool ntf_store_ready(struct moat_db *db, const char **why);

/*
 * Insert r unless a row for (r->order_id, r->status) exists (then nothing
 * changes and *inserted is false). The delivered flag and time of the new
 * row come from deliveries, so a replayed notification that was already
 * sent is born delivered. Inside the consumer's transaction.
 */
int ntf_store_insert(struct moat_db *db, const struct ntf_row *r,
                     bool *inserted);
/* Empty the view (replay); deliveries stay. */
int ntf_store_reset(struct moat_db *db);

/*
 * Record that notification r (its id, order_id, status, customer_id and
 * kind are used; all borrowed) was written to the Maildir at delivered_ms
 * (fallback: addressed to the customers.invalid fallback), set its row's
 * delivered flag and, in the same transaction, append NotificationSent
 * {notification_id, order_id, customer_id, kind, status, delivered_at,
 * fallback} (subject: the order id) to outbox (borrowed; NULL appends
 * nothing), then wake its feed readers. Idempotent: a second call keeps
 * the first record and publishes nothing. One transaction of its own.
 */
int ntf_store_mark_delivered(struct moat_db *db, struct moat_outbox *outbox,
                             const struct ntf_row *r, int64_t delivered_ms,
                             bool fallback);

/* One delivery to record (ntf_store_mark_delivered's arguments). */
struct ntf_mark {
    const struct ntf_row *row; /* borrowed */
    int64_t delivered_ms;
    bool fallback;
};
/* ntf_store_mark_delivered for n deliveries in one transaction: all are
 * recorded or none (an error). */
int ntf_store_mark_delivered_many(struct moat_db *db,
                                  struct moat_outbox *outbox,
                                  const struct ntf_mark *marks, size_t n);

/* Up to max undelivered notifications in id order after the id after
 * (NULL: from the start). *rows (caller frees with ntf_rows_free). */
int ntf_store_undelivered(struct moat_db *db, const char *after, size_t max,
                          struct ntf_row **rows, size_t *n);
/* Number of undelivered notifications and the created time of the oldest
 * (0 when none). */
int ntf_store_backlog(struct moat_db *db, int64_t *count, int64_t *oldest_ms);

/* One notification; MOAT_ENOTFOUND when there is none. *out is released
 * by the caller (ntf_row_release). */
int ntf_store_get(struct moat_db *db, const char *id, struct ntf_row *out);

struct ntf_query {
    const char *customer_id; /* NULL = any */
    const char *order_id;    /* NULL = any */
    const char *after;       /* id; NULL = from the first */
    size_t limit;
};
/* Notifications matching q in id order (at most q->limit). */
int ntf_store_list(struct moat_db *db, const struct ntf_query *q,
                   struct ntf_row **rows, size_t *n);

/*
 * Append to diffs (an array of strings) how scratch's view differs from
 * live's: every column the events decide (not the delivered flag or time).
 * At most max_diffs entries, then one "... and N more".
 */
int ntf_store_compare(struct moat_db *live, struct moat_db *scratch,
                      json_t *diffs, size_t max_diffs);

#endif /* NTF_STORE_H */
