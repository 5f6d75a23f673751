/*
 * notifications.h - the notifications service's state and the seams
 * between its files: main.c (lifecycle: database, consumer, deliverer,
 * routes), events.c (orders' events -> notification rows and their text),
 * deliver.c (rows -> Maildir files, the To: address from orders' API),
 * handlers.c (the HTTP API), store.c (the database; the only code that
 * knows the schema).
 *
 * The flow: orders' feed -> consumer transaction (one row per order and
 * status, UNIQUE) -> commit -> the deliverer writes each undelivered row
 * as one Maildir message named after the row's id and records it as
 * delivered, with a NotificationSent event in the same transaction (the
 * outbox, served at GET /v1/events). See docs/notifications.md.
 */
#ifndef NTF_NOTIFICATIONS_H
#define NTF_NOTIFICATIONS_H

#include <stdbool.h>

#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/service.h"

struct ntf_deliverer;

/* Per-process state, created by init and freed by release in main.c. */
struct ntf_service {
    struct moat_service *svc;        /* borrowed: the skeleton */
    struct moat_db *db;              /* owned: notifications.db */
    struct moat_http_client *client; /* owned: orders' API */
    struct moat_consumer *consumer;  /* owned */
    struct moat_outbox *outbox;      /* owned: NotificationSent, the feed */
    struct ntf_deliverer *deliverer; /* owned */
    const char *orders_url;          /* borrowed from the environment */
};

/* Event types notifications consumes from orders (NULL-terminated). */
extern const char *const ntf_order_event_types[];

/*
 * The consumer's handler for orders' events (moat/events.h): validates the
 * event's data, renders the email's subject and body and inserts the
 * notification row unless one exists for (order, status). Deterministic:
 * everything stored comes from the event. When a row was inserted into
 * the live database it asks the deliverer to look for work once the
 * transaction has committed. arg is the struct ntf_service.
 */
int ntf_apply_event(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why);

/* Register /v1/notifications and /v1/notifications/{id}; the handlers
 * get s (borrowed). */
int ntf_routes_register(struct moat_http_server *server, struct ntf_service *s);
#ifdef MOAT_TEST_HOOKS
/* test_hooks.c: POST /v1/test/notifications/{id}. */
int ntf_test_hooks_register(struct moat_http_server *server,
                            struct ntf_service *s);
#endif

/* ---- the deliverer (deliver.c) ---- */

#define NTF_MAX_IN_FLIGHT_DEFAULT 8
#define NTF_MAX_IN_FLIGHT_MAX     256

struct ntf_deliverer_options {
    const char *maildir;    /* <data>/maildir (copied); created if missing */
    const char *orders_url; /* orders' base URL (copied) */
    /* NotificationSent goes here with each delivery's record (borrowed;
     * must outlive the deliverer; NULL publishes nothing). */
    struct moat_outbox *outbox;
    unsigned max_in_flight; /* notifications being delivered at once */
    int64_t retry_max_ms;   /* cap of the retry backoff */
};

/*
 * A deliverer writing db's undelivered notifications into a Maildir. svc
 * (its loop, auth and metrics), db and client are borrowed and must
 * outlive it. Creates <maildir>/{tmp,new,cur} (mode 0700). Registers
 * notifications_total{kind}, notifications_undelivered,
 * notifications_oldest_undelivered_age_seconds,
 * notifications_delivery_failures_total{reason} and
 * notifications_fallback_address_total in svc->metrics (a collector: do
 * not render the metrics after ntf_deliverer_free). Caller frees with
 * ntf_deliverer_free.
 */
int ntf_deliverer_new(struct ntf_deliverer **out, struct moat_service *svc,
                      struct moat_db *db, struct moat_http_client *client,
                      const struct ntf_deliverer_options *opts);
/* Start delivering (after the process is confined: the Maildir writes
 * run on worker threads, which must start after Landlock). */
void ntf_deliverer_start(struct ntf_deliverer *d);
/* New rows may have committed: look for work on the next loop turn. */
void ntf_deliverer_kick(struct ntf_deliverer *d);
/* Drops deliveries in flight (an unwritten message is written again after
 * a restart; a written one is recognised by its file name). Free it AFTER
 * the HTTP client (whose free completes the deliverer's calls to orders
 * with MOAT_ECANCELLED) and before the database (Maildir writes that are
 * running finish and are recorded). */
void ntf_deliverer_free(struct ntf_deliverer *d);

#endif /* NTF_NOTIFICATIONS_H */
