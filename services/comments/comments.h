/*
 * comments.h - the comments service's state and the seams between its
 * files:
 *   main.c       lifecycle and configuration
 *   handlers.c   the HTTP API (docs/comments.md): comments, their
 *                moderation, the moderation settings
 *   upstream.c   the synchronous checks against posts and messaging
 *   events.c     users' moderation actions, applied from users' feed
 *   store.c      the database and the outbox (store.h)
 */
#ifndef CMT_COMMENTS_H
#define CMT_COMMENTS_H

#include <jansson.h>

#include "moat/events.h"
#include "moat/http.h"
#include "store.h"

struct moat_http_client;
struct moat_service;

/* Per-process state, created by init and freed by release in main.c. */
struct cmt_service {
    struct moat_service *svc;          /* borrowed: the skeleton's */
    struct cmt_store *store;           /* owned */
    struct moat_consumer *consumer;    /* owned: users' feed */
    struct moat_http_client *upstream; /* owned: posts and messaging */
    const char *posts_url;             /* borrowed from the environment */
    const char *messaging_url;
    long upstream_timeout_ms;
};

/* Register the /v1/comments and /v1/moderation routes; handlers get cs
 * (borrowed, must outlive the server's use of the routes). */
int cmt_routes_register(struct moat_http_server *server,
                        struct cmt_service *cs);

/* Event types of users' feed that comments applies (NULL-terminated). */
extern const char *const cmt_users_event_types[];
/* moat_event_handler_fn for users' feed; arg is the cmt_service. */
int cmt_apply_users(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why);

/*
 * Ask service ("posts" or "messaging") for path, acting for r's end user,
 * then call then(r, arg, found) on the loop thread: found is the 200
 * answer's JSON (borrowed during the call) or NULL for a 404 (the caller
 * answers, e.g. "no such comment"). Any other outcome is answered here:
 * unreachable, timed out or 5xx is 503 with Retry-After, anything else
 * 502; then is not called, and free_arg(arg) runs instead (free_arg may
 * be NULL). Returns nothing: r is always answered, by then or here.
 */
typedef void (*cmt_upstream_fn)(struct moat_req *r, void *arg, json_t *found);
void cmt_upstream_get(struct cmt_service *cs, struct moat_req *r,
                      const char *service, const char *path,
                      cmt_upstream_fn then, void (*free_arg)(void *),
                      void *arg);

#endif /* CMT_COMMENTS_H */
