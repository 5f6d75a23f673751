/*
 * orders.h - the orders service's state and the seams between its files:
 *   main.c       lifecycle, configuration, the consumer of the replies
 *   handlers.c   the HTTP API (placing, reading, cancelling orders)
 *   saga.c       the CreateOrder saga: every transition, the commands it
 *                sends, the replies it applies, the deadline sweeper
 *   customers.c  the denormalised customer copies (users' events + API)
 *   customer_store.c  the sealed customer copy (store.h)
 *   store.c      the database (store.h)
 * docs/saga.md is the contract with the participants; docs/orders.md the
 * API.
 */
#ifndef ORD_ORDERS_H
#define ORD_ORDERS_H

#include <stdbool.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/metrics.h"
#include "moat/service.h"
#include "store.h"

struct event;
struct moat_audit;
struct moat_keys;

/* Per-process state, created by init and freed by release in main.c. */
struct ord_service {
    struct moat_service *svc;            /* borrowed */
    struct moat_db *db;                  /* owned */
    struct moat_outbox *outbox;          /* owned */
    struct moat_consumer *consumer;      /* owned */
    struct moat_http_client *api;        /* owned: catalog and users calls */
    struct moat_keyring *kr;             /* owned: seals the customer copy */
    struct moat_keys *keys;              /* owned: /v1/admin/keys */
    struct moat_audit *audit;            /* owned: order state changes */
    const char *catalog_url, *users_url; /* borrowed from the environment */
    const char *inventory_url, *payments_url;
    int64_t step_timeout_ms;       /* deadline of reserving and authorizing */
    long api_timeout_ms;           /* per call to catalog or users */
    struct event *sweep, *refresh; /* owned timers, set by start */
    /* Idempotency keys of POSTs being served ("customer NUL key" joined
     * by '\n'): a second request with one gets 409. Loop thread only. */
    char **busy;
    size_t nbusy, busy_cap;
    /* POSTs whose products are in, waiting for the group commit at the end
     * of this loop turn (handlers.c), newest first; the event runs it. */
    struct place *placing;
    struct event *place_flush; /* owned; NULL before ord_routes_register */
    /* Metrics (series owned by svc->metrics). */
    struct moat_metric_family *outcomes;     /* orders_sagas_total{outcome} */
    struct moat_metric_series *saga_seconds; /* placed -> final */
};

/* Register the /v1/orders and /v1/admin/sagas routes. */
int ord_routes_register(struct ord_service *os);
/* Store and answer the POSTs waiting for a group commit, then free its
 * event (at shutdown, before the database closes). */
void ord_routes_stop(struct ord_service *os);
/* recover.c: POST /v1/admin/orders/{id}/recover (the operator's). */
int ord_recover_register(struct ord_service *os);
#ifdef MOAT_TEST_HOOKS
/* test_hooks.c: POST /v1/test/orders/{id} and /v1/test/sweeper. */
int ord_test_hooks_register(struct ord_service *os);
#endif

/* ---- saga.c ---- */

/* Record o's state change (action "order.placed", "order.cancel",
 * "order.finished") in the audit log, for request r or (NULL) the saga. */
void ord_audit(struct ord_service *os, struct moat_req *r,
               const struct ord_order *o, const char *action);

/* Reply types per source (NULL-terminated), for the subscriptions. */
extern const char *const ord_inventory_replies[];
extern const char *const ord_payments_replies[];
/* The consumer handler of inventory's and payments' replies. */
int ord_saga_apply(struct moat_db *db, const struct moat_event *ev, void *arg,
                   const char **why);
/*
 * Inside the caller's transaction: insert o (filled by the handler: ids,
 * customer, lines, total, currency, card token) as pending/reserving and
 * append OrderPlaced and ReserveStock.
 */
int ord_saga_place(struct ord_service *os, struct ord_order *o);
/*
 * Inside the caller's transaction: a customer's cancel. *changed says
 * whether anything was done (false for an order already cancelled or
 * compensating).
 */
int ord_saga_cancel(struct ord_service *os, struct ord_order *o, bool *changed);
/*
 * Inside the caller's transaction: re-create o (filled by the caller: id,
 * customer, lines, total, currency, created_ms, payment_id, traceparent),
 * an order this database lost (restored from a backup) that the
 * participants still hold, from what they hold: reservation "held",
 * "committed", "released" or "none", payment status ("captured",
 * "authorized", "pending", anything else for none). Appends OrderPlaced;
 * a committed and captured order is finished as confirmed (OrderConfirmed),
 * any other is compensated with reason "recovered" (ReleaseStock,
 * VoidPayment or RefundPayment for what is still held).
 */
int ord_saga_recover(struct ord_service *os, struct ord_order *o,
                     const char *reservation, const char *payment);
/* Start the deadline sweeper (every 200 ms). */
int ord_saga_start_sweeper(struct ord_service *os);

/* ---- customers.c ---- */

extern const char *const ord_users_events[];
/* Consumer handler of users' events: mark the customer stale. */
int ord_customers_apply(struct moat_db *db, const struct moat_event *ev,
                        void *arg, const char **why);
/* Start the refresher that fetches stale customers from users' API. */
int ord_customers_start_refresher(struct ord_service *os);

#endif /* ORD_ORDERS_H */
