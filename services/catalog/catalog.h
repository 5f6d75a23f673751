/*
 * catalog.h - the catalog service's state and the seams between its files:
 * main.c (lifecycle), handlers.c (HTTP <-> JSON), product.c (document
 * model), store.c (the database; the only code that knows the schema).
 */
#ifndef CAT_CATALOG_H
#define CAT_CATALOG_H

#include "moat/http.h"
#include "store.h"

/* Per-process state, created by init and freed by release in main.c. */
struct cat_service {
    struct cat_store *store; /* owned */
};

/*
 * Register the /v1/products routes on server; handlers get cat (borrowed,
 * must outlive the server's use of the routes).
 */
int cat_routes_register(struct moat_http_server *server,
                        struct cat_service *cat);

#endif /* CAT_CATALOG_H */
