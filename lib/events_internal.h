/*
 * events_internal.h - what lib/outbox.c, lib/outbox_kv.c, lib/feed.c and
 * lib/consumer.c share and nobody else sees (the public contract is
 * moat/events.h).
 *
 * The outbox owns the list of parked feed readers because it is the outbox
 * that learns about commits; feed.c owns everything about answering them.
 *
 * Where the events are stored is behind struct outbox_storage_ops: the
 * producer's own SQLite database (moat_outbox_new, lib/outbox.c) or its own
 * LMDB environment (moat_outbox_new_kv, lib/outbox_kv.c). Validation, ids,
 * traces, metrics, retention policy and the feed are the same for both;
 * each storage keeps the same promises: sequences assigned in commit order
 * by the one writer, never reused, contiguous in [retained_from, head]
 * because retention only deletes a prefix.
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
struct feed_stream;
struct moat_kv;
struct moat_kv_db;

/* One event as a storage hands it over (read) or takes it (append); every
 * pointer is borrowed for the duration of the call. */
struct outbox_event {
    int64_t seq; /* read only: append assigns it */
    const char *id;
    const char *type;
    const char *subject;
    int64_t time_ms;
    int schema_version;
    json_t *data;
    const char *traceparent; /* "" when none */
    size_t stored_bytes;     /* read only: its size in storage */
};

/* Read visitor: OUTBOX_NEXT, OUTBOX_STOP (this event is not taken), or a
 * negative MOAT_E* that ends the read and is returned. */
enum { OUTBOX_NEXT = 0, OUTBOX_STOP = 1 };
typedef int (*outbox_visit_fn)(const struct outbox_event *ev, void *arg);

struct outbox_storage_ops {
    const char *engine; /* "sqlite", "lmdb": for logs */
    /* Check (or create) what the storage needs, at moat_outbox_new*. */
    int (*attach)(struct moat_outbox *o);
    /* Whether the producer has a write transaction open right now. */
    bool (*in_txn)(struct moat_outbox *o);
    /* Store ev inside the producer's open transaction; *seq gets its
     * sequence number. */
    int (*append)(struct moat_outbox *o, const struct outbox_event *ev,
                  int64_t *seq);
    /* Visit the events with seq > after, ascending, at most limit. */
    int (*read)(struct moat_outbox *o, int64_t after, int limit,
                outbox_visit_fn fn, void *arg);
    /* As moat_outbox_bounds (below). */
    int (*bounds)(struct moat_outbox *o, int64_t *head, int64_t *retained_from,
                  int64_t *oldest_ms);
    /* One retention step in a transaction of its own: delete the oldest
     * events, at most batch, with time_ms < cutoff_ms, stopping at the
     * first younger one and never touching the newest keep (keep 0 = no
     * such floor). MOAT_EBUSY when the producer has a transaction open. */
    int (*trim)(struct moat_outbox *o, int64_t cutoff_ms, int64_t keep,
                int batch, int64_t *deleted);
    const char *(*where)(struct moat_outbox *o); /* path, for logs */
};

/* lib/outbox_kv.c: events in the producer's LMDB environment. */
extern const struct outbox_storage_ops moat_outbox_kv_ops;

struct moat_outbox {
    struct event_base *base; /* borrowed */
    const struct outbox_storage_ops *ops;
    struct moat_db *db; /* SQLite storage: borrowed; outlives the outbox */
    struct moat_kv *kv; /* LMDB storage: borrowed; outlives the outbox */
    struct moat_kv_db *kv_events, *kv_meta; /* owned by kv */
    char *source;                           /* owned: the producer's name */
    struct moat_outbox_options opts;
    struct event *trim_timer; /* retention sweep */
    struct event *wake;       /* made active by moat_outbox_committed */
    /* PostgreSQL: NOTIFYs of other instances' appends wake the feed. */
    struct moat_db_listener *listener;
    /* Parked GET /v1/events requests, oldest first (feed.c). */
    struct feed_waiter *waiters, *waiters_tail;
    size_t nwaiters;
    /* Streaming readers (GET /v1/events?stream=1, feed.c). */
    struct feed_stream *streams;
    size_t nstreams;
    int64_t counted_head; /* head already added to m_appended */
    /* Several instances share the outbox (MOAT_INSTANCES > 1): another
     * process's commits are seen by polling the head (outbox.c). */
    struct event *shared_poll;
    int64_t shared_head;
    void *relay; /* the transport's relay (moat_event_transport); its own */
    struct moat_metric_series *m_events, *m_oldest_age, *m_head, *m_appended;
    struct moat_metric_series *m_streams, *m_stream_drops; /* feed.c */
};

/*
 * The outbox's extent: head is the highest sequence ever assigned (0 when
 * none), retained_from the lowest still stored (head + 1 when empty), and
 * oldest_ms the time of that oldest stored event (0 when empty).
 */
int moat_outbox_bounds(struct moat_outbox *o, int64_t *head,
                       int64_t *retained_from, int64_t *oldest_ms);
/* Visit the events after `after` through the storage (feed.c). */
int moat_outbox_read(struct moat_outbox *o, int64_t after, int limit,
                     outbox_visit_fn fn, void *arg);

/* feed.c: answer the parked readers that now have events and write them
 * to the streaming readers (after a commit), or answer all of them,
 * whatever they get, and end every stream (at moat_outbox_free). */
void moat_feed_wake_waiters(struct moat_outbox *o);
void moat_feed_release_waiters(struct moat_outbox *o);

/*
 * The transport hook: NULL (the default) is the HTTP feed alone. Set by
 * moat_jetstream_enable (lib/jetstream.c, moat/jetstream.h) for a process
 * that runs on JetStream. outbox_started runs at the end of
 * moat_outbox_new*, outbox_committed in moat_outbox_committed and
 * outbox_stopping first in moat_outbox_free. wrap takes the source a
 * subscription was given (its ownership too; base is the consumer's
 * loop) and returns the source the consumer uses instead (never NULL;
 * the same one when it cannot wrap). Threads must not start before the
 * first loop turn (the process confines itself first: moat/sandbox.h).
 */
struct moat_event_transport {
    void (*outbox_started)(struct moat_outbox *o);
    void (*outbox_committed)(struct moat_outbox *o);
    void (*outbox_stopping)(struct moat_outbox *o);
    struct moat_event_source *(*wrap)(struct moat_event_source *src,
                                      struct event_base *base);
};
extern const struct moat_event_transport *moat_event_transport;

#endif /* MOAT_EVENTS_INTERNAL_H */
