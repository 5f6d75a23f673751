/*
 * readmodel.h - the read model service's state and the seams between its
 * files: main.c (lifecycle: database, consumer with four sources, routes),
 * events.c (the sources' events -> the view: upcasting and handlers),
 * handlers.c (the HTTP API), store.c (the database; the only code that
 * knows the schema).
 *
 * The view is a customer's order history (CQRS, docs/design.md
 * "Queries across services"): built ONLY from the event feeds of orders,
 * catalog, payments and notifications, never from their databases or
 * APIs, rebuildable by a replay from sequence 0 and verifiable against a
 * rebuilt copy (moat/events.h). See docs/readmodel.md.
 */
#ifndef RM_READMODEL_H
#define RM_READMODEL_H

#include <stdbool.h>

#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"

#define RM_NSOURCES 4

/* Per-process state, created by init and freed by release in main.c. */
struct rm_service {
    struct moat_db *db;             /* owned: readmodel.db */
    struct moat_consumer *consumer; /* owned */
    /* The sources' base URLs (orders, catalog, payments, notifications:
     * the order of main.c's sources), borrowed from the environment. */
    const char *source_urls[RM_NSOURCES];
};

/* Event types consumed from each source (NULL-terminated). */
extern const char *const rm_orders_event_types[];
extern const char *const rm_catalog_event_types[];
extern const char *const rm_payments_event_types[];
extern const char *const rm_notifications_event_types[];

/*
 * The consumer's handlers (moat/events.h), one per source: upcast the
 * event's data to the current schema and apply it to db. Deterministic
 * and touching nothing but db (replay --verify runs them on a scratch
 * copy). arg is the struct rm_service (unused by the handlers today).
 */
int rm_apply_orders(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why);
int rm_apply_catalog(struct moat_db *db, const struct moat_event *ev, void *arg,
                     const char **why);
int rm_apply_payments(struct moat_db *db, const struct moat_event *ev,
                      void *arg, const char **why);
int rm_apply_notifications(struct moat_db *db, const struct moat_event *ev,
                           void *arg, const char **why);

/* Register GET /v1/customers/{id}/orders; handlers get s (borrowed). */
int rm_routes_register(struct moat_http_server *server, struct rm_service *s);

#endif /* RM_READMODEL_H */
