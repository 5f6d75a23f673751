/*
 * events_internal.h - what lib/outbox.c, lib/feed.c and lib/consumer.c
 * share and nobody else sees (the public contract is moat/events.h).
 *
 * The outbox owns the list of parked feed readers because it is the outbox
 * that learns about commits; feed.c owns everything about answering them.
 */
#ifndef MOAT_EVENTS_INTERNAL_H
#define MOAT_EVENTS_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/http.h"

struct event;
struct feed_waiter;

struct moat_outbox {
    struct event_base *base; /* borrowed */
    struct moat_db *db;      /* borrowed; outlives the outbox */
    char *source;            /* owned: the producing service's name */
    struct moat_outbox_options opts;
    struct event *trim_timer; /* retention sweep */
    struct event *wake;       /* made active by moat_outbox_committed */
    /* Parked GET /v1/events requests, oldest first (feed.c). */
    struct feed_waiter *waiters, *waiters_tail;
    size_t nwaiters;
    int64_t counted_head; /* head already added to m_appended */
    struct moat_metric_series *m_events, *m_oldest_age, *m_head, *m_appended;
};

/*
 * The outbox's extent: head is the highest sequence ever assigned (0 when
 * none), retained_from the lowest still stored (head + 1 when empty), and
 * oldest_ms the time of that oldest stored event (0 when empty).
 */
int moat_outbox_bounds(struct moat_outbox *o, int64_t *head,
                       int64_t *retained_from, int64_t *oldest_ms);

/* feed.c: answer the parked readers that now have events (after a commit)
 * or all of them, whatever they get (at moat_outbox_free). */
void moat_feed_wake_waiters(struct moat_outbox *o);
void moat_feed_release_waiters(struct moat_outbox *o);

/*
 * Strict query-string parsing shared by the feed and the admin routes:
 * every parameter must be one of params (each at most once), integers
 * within [min, max]. Returns NULL when all is well, or a new 400 problem
 * listing every bad parameter as {"parameter", "detail"} (caller replies).
 */
enum moat_qkind {
    MOAT_Q_INT,
    MOAT_Q_STR,
};
struct moat_qparam {
    const char *name;
    enum moat_qkind kind;
    int64_t min, max; /* MOAT_Q_INT bounds; MOAT_Q_STR byte length bounds */
    bool seen;        /* out: the parameter was given */
    int64_t ival;     /* out: MOAT_Q_INT value */
    const char *sval; /* out: MOAT_Q_STR value, owned by the request */
};
json_t *moat_events_parse_query(struct moat_req *r, struct moat_qparam *params,
                                size_t n);

#endif /* MOAT_EVENTS_INTERNAL_H */
