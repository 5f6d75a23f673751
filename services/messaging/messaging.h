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
/*
 * The page a wake answers, serialised once for every waiter at the same
 * position (handlers.c): during one msg_live_wake every waiter of the
 * conversation is answered on the same loop turn, and most wait after
 * the same message, so the read and the JSON are made once, not once per
 * member.
 */
struct msg_wake_page {
    bool on;             /* a wake is answering its waiters */
    int64_t after, head; /* the page's position and the head it saw */
    int64_t limit;       /* the page's size */
    char *text;          /* owned; the page as v1 JSON, NULL = none yet */
    size_t len;
};

struct msg_service {
    struct msg_store *store;   /* owned */
    struct msg_live *live;     /* owned; created by msg_routes_register */
    struct msg_wake_page wake; /* valid only during a wake */
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
