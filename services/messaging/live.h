/*
 * live.h - live delivery: long polls parked per conversation until a
 * message is committed there, their wait runs out, or the service drains.
 *
 * A reader of GET .../messages?after=S&wait=W with nothing after S is
 * parked here (msg_live_park) with a timer of its own. The sender's
 * handler calls msg_live_wake(conv) right after its commit: every request
 * parked on that conversation is offered to the answer function, which
 * replies when there is something after its S (and returns true) or
 * leaves it parked. The timer, msg_live_release_all (drain) and
 * msg_live_free answer with force = true: the answer function must reply
 * then. Nothing polls the database; everything runs on the loop thread.
 *
 * Parked requests are owned by the live set until answered; at most
 * max_parked per process (msg_live_park answers MOAT_EBUSY beyond, the
 * caller replies 503).
 */
#ifndef MSG_LIVE_H
#define MSG_LIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "moat/http.h"
#include "moat/metrics.h"

struct event_base;
struct msg_live;

/* What a parked request asked for (copied when parked). */
struct msg_poll {
    char conv[32]; /* conversation id */
    char user[64]; /* the end user waiting */
    int64_t after; /* answer with messages after this seq */
    int limit;     /* page size */
};

/* Reply to req with what p asks for when there is something (or in any
 * case when force) and return true; false leaves req parked. */
typedef bool (*msg_live_answer_fn)(struct moat_req *req,
                                   const struct msg_poll *p, bool force,
                                   void *arg);

/* A live set on base; metrics (borrowed) gets the gauge
 * moat_messaging_parked_polls. Free with msg_live_free. */
struct msg_live *msg_live_new(struct event_base *base,
                              struct moat_metrics *metrics, unsigned max_parked,
                              msg_live_answer_fn answer, void *arg);
/* Answer every parked request (force) and free the set. NULL is fine. */
void msg_live_free(struct msg_live *l);

/* Park req for wait_ms. MOAT_EBUSY (req untouched) when full. */
int msg_live_park(struct msg_live *l, struct moat_req *req,
                  const struct msg_poll *p, unsigned wait_ms);
/* Offer every request parked on conversation conv to the answer fn. */
void msg_live_wake(struct msg_live *l, const char *conv);
/* Answer every parked request now (the service is draining). */
void msg_live_release_all(struct msg_live *l);
unsigned msg_live_parked(const struct msg_live *l);

#endif /* MSG_LIVE_H */
