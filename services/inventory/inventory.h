/*
 * inventory.h - the inventory service's state and the seams between its
 * files: main.c (lifecycle), handlers.c (HTTP <-> JSON, validation),
 * store.c (the LMDB environment; the only code that knows its layout).
 */
#ifndef INV_INVENTORY_H
#define INV_INVENTORY_H

#include "moat/http.h"
#include "store.h"

/* Per-process state, created by init and freed by release in main.c. */
struct inv_service {
    struct inv_store *store; /* owned */
    /* Held reservations one customer may have at once (against hoarding:
     * MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER). */
    int64_t max_open_per_customer;
};

/*
 * Register the /v1/stock and /v1/reservations routes on server; handlers get
 * inv (borrowed, must outlive the server's use of the routes).
 */
int inv_routes_register(struct moat_http_server *server,
                        struct inv_service *inv);

#endif /* INV_INVENTORY_H */
