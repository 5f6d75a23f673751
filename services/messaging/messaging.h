/*
 * messaging.h - the messaging service's state and the seams between its
 * files:
 *   main.c       lifecycle and configuration
 *   handlers.c   the HTTP API (docs/messaging.md): conversations, members,
 *                messages, read marks, long polls
 *   live.c       long polls parked per conversation (live.h)
 *   rules.c      input rules, pure (rules.h)
 *   store.c      the database and the outbox (store.h)
 */
#ifndef MSG_MESSAGING_H
#define MSG_MESSAGING_H

#include "live.h"
#include "moat/http.h"
#include "store.h"

/* Per-process state, created by init and freed by release in main.c. */
struct msg_service {
    struct msg_store *store; /* owned */
    struct msg_live *live;   /* owned; created by msg_routes_register */
};

/*
 * Register the /v1/conversations routes and the drain hook that answers
 * parked long polls; creates ms->live on base (metrics borrowed) for at
 * most max_polls parked polls. Handlers get ms (borrowed, must outlive
 * the server's use of the routes).
 */
int msg_routes_register(struct moat_http_server *server,
                        struct event_base *base, struct moat_metrics *metrics,
                        unsigned max_polls, struct msg_service *ms);

#endif /* MSG_MESSAGING_H */
