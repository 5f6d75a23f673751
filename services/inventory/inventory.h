/*
 * inventory.h - the inventory service's state and the seams between its
 * files: main.c (lifecycle), handlers.c (HTTP <-> JSON, validation),
 * commands.c (the order saga's commands from orders' feed), store.c (the
 * LMDB environment; the only code that knows its layout).
 */
#ifndef INV_INVENTORY_H
#define INV_INVENTORY_H

#include <jansson.h>
#include <stdbool.h>

#include "moat/http.h"
#include "moat/problem.h"
#include "store.h"

struct moat_service;
struct inv_consumer;

/* Per-process state, created by init and freed by release in main.c. */
struct moat_audit;

struct inv_service {
    struct inv_store *store; /* owned */
    /* Held reservations one customer may have at once (against hoarding:
     * MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER). */
    int64_t max_open_per_customer;
    /* Owned; without MOAT_INVENTORY_ORDERS_URL it has no source (no
     * saga) but still answers the admin routes. */
    struct inv_consumer *consumer;
    struct moat_audit *audit; /* owned: every stock change (moat/audit.h) */
};

/*
 * Register the /v1/stock and /v1/reservations routes on server; handlers get
 * inv (borrowed, must outlive the server's use of the routes).
 */
int inv_routes_register(struct moat_http_server *server,
                        struct inv_service *inv);
#ifdef MOAT_TEST_HOOKS
/* test_hooks.c: POST /v1/test/stock/{sku}, /v1/test/reservations/{id}. */
int inv_test_hooks_register(struct moat_http_server *server,
                            struct inv_service *inv);
#endif

/*
 * Record a reservation's stock change (action "stock.reserve",
 * "stock.release", "stock.commit") in the audit log a (NULL: none), for
 * request r or (NULL) the saga's command.
 */
void inv_audit_reservation(struct moat_audit *a, struct moat_req *r,
                           const char *action,
                           const struct inv_reservation *res);

/* The API's JSON of a reservation (a new reference). */
json_t *inv_reservation_json(const struct inv_reservation *res);
/*
 * Check a reservation request {"order_id", "customer_id", "lines"} into
 * want (lines sorted by SKU), recording every bad member in v (JSON
 * pointers relative to body). strict also refuses unknown members (the
 * HTTP API; a command from a newer orders may carry more). body is
 * borrowed. Returns moat_validation_ok(v).
 */
bool inv_reservation_parse(struct moat_validation *v, json_t *body, bool strict,
                           struct inv_reservation *want);

/*
 * commands.c: libmoat's consumer on the store's environment with its
 * admin routes (/v1/admin/consumer, dead letters, redrive, replay
 * verification), consuming orders' feed at orders_url (copied by the
 * source) when it is not NULL or "": the saga's commands applied, replied
 * to and cursored exactly once. inv (inv->store open) and svc are
 * borrowed and must outlive the consumer; consuming starts on the loop's
 * first turn (after the service is confined and listening). Free with
 * inv_consumer_free (NULL is fine) before the store.
 */
int inv_consumer_new(struct inv_consumer **out, struct moat_service *svc,
                     struct inv_service *inv, const char *orders_url);
void inv_consumer_free(struct inv_consumer *c);

#endif /* INV_INVENTORY_H */
