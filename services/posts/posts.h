/*
 * posts.h - the posts service's state and the seams between its files:
 *   main.c       lifecycle and configuration
 *   handlers.c   the HTTP API (docs/posts.md): create, read, delete,
 *                a user's timeline
 *   entities.c   mentions and URLs in a post's text (pure; entities.h)
 *   store.c      the database and the outbox (store.h)
 */
#ifndef PST_POSTS_H
#define PST_POSTS_H

#include "moat/http.h"
#include "store.h"

/* Per-process state, created by init and freed by release in main.c. */
struct pst_service {
    struct pst_store *store; /* owned */
};

/* Register the /v1/posts and /v1/users/{id}/posts routes; handlers get ps
 * (borrowed, must outlive the server's use of the routes). */
int pst_routes_register(struct moat_http_server *server,
                        struct pst_service *ps);

#endif /* PST_POSTS_H */
