/*
 * connections.h - the connections service's state and the seams between
 * its files: main.c (lifecycle), handlers.c (HTTP <-> JSON, validation,
 * who may do what), graph.c (the LMDB graph store; the only code that
 * knows its layout).
 */
#ifndef CONN_CONNECTIONS_H
#define CONN_CONNECTIONS_H

#include "graph.h"
#include "moat/http.h"

/* Per-process state, created by init and freed by release in main.c. */
struct conn_service {
    struct conn_graph *graph; /* owned */
};

/*
 * Register /v1/follows, /v1/connections and /v1/users/{id}/... on server;
 * handlers get cs (borrowed, must outlive the server's use of the routes).
 */
int conn_routes_register(struct moat_http_server *server,
                         struct conn_service *cs);

#endif /* CONN_CONNECTIONS_H */
