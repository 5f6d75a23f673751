/*
 * consumer_internal.h - what the consumer's files share and nobody else
 * sees (the public contract is moat/events.h):
 *
 *   consumer.c         the live pull loop: cursors, batches, savepoints,
 *                      retries, parking, backoff, lag
 *   consumer_replay.c  replay from 0 and verification into a scratch view
 *   consumer_admin.c   the /v1/admin routes (status, dead letters,
 *                      redrive, replay)
 *   consumer_sqlite.c  the storage in the consumer's SQLite database
 *   consumer_kv.c      the storage in the consumer's LMDB environment
 *
 * Where cursors, dead letters and the view live is behind struct
 * consumer_storage_ops, the way the outbox has outbox_storage_ops: the
 * loop, replay and admin code never name an engine. Each storage keeps
 * the same promises: one write transaction per batch holding the effects,
 * the parked events and the cursor; a savepoint per event that undoes that
 * event alone; every transaction begun and ended within one callback.
 */
#ifndef MOAT_CONSUMER_INTERNAL_H
#define MOAT_CONSUMER_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/http.h"

struct event;
struct moat_kv;
struct moat_kv_db;
struct moat_kv_txn;

#define CONSUMER_ERROR_MAX   512
#define CONSUMER_SOURCE_MAX  31
#define CONSUMER_SUBJECT_MAX 256

enum sub_next {
    NEXT_PULL,  /* the timer starts the next pull */
    NEXT_APPLY, /* the timer resumes the batch at pos */
};

/*
 * One live pull in flight. A replay cannot call back a pull already sent
 * (a long poll may take 25 s to answer), so it marks it stale and starts
 * afresh; the stale one's answer is dropped when it comes. Tickets are
 * owned by their subscription: a source freed with pulls in flight never
 * calls back, so the subscription frees what is left.
 */
struct pull_ticket {
    struct sub *s;
    bool stale;
    struct pull_ticket *next;
};

struct sub {
    struct moat_consumer *c;
    struct moat_event_source *src; /* owned */
    char **types;                  /* owned, NULL-terminated; NULL = all */
    moat_event_handler_fn handler; /* SQLite consumers */
    moat_kv_event_handler_fn kv_handler; /* LMDB consumers */
    void *arg;
    int64_t cursor;     /* = the stored cursor */
    int64_t head;       /* the source's head at the last pull; -1 unknown */
    int64_t pending_ms; /* time of the oldest unapplied event; 0 = none */
    json_t *batch;      /* events being applied (owned), NULL between */
    size_t pos;         /* next event of batch */
    int64_t fail_seq;   /* the event whose handler failed; 0 = none */
    int attempts;       /* failed handler runs of fail_seq */
    char fail_why[CONSUMER_ERROR_MAX]; /* its last error, for parking it */
    struct event *timer;
    enum sub_next next;
    bool pulling;                /* a pull that is not stale is in flight */
    struct pull_ticket *tickets; /* every pull in flight, stale or not */
    uint64_t pull_started_ms;
    int backoff_ms;
    /* Wall ms of the current outage's first failed pull; 0 while up. */
    int64_t down_since_ms;
    int down_err;     /* the source's failure, MOAT_OK while it works */
    bool local_fault; /* our own database refused a write */
    bool ahead;       /* cursor beyond the source's head (logged once) */
    char error[CONSUMER_ERROR_MAX + 32]; /* the current problem, "" if none */
    int lease_fd; /* consumer_lease.c: > 0 while this instance holds it */
    struct moat_metric_series *m_lag_events, *m_lag_seconds, *m_applied,
        *m_failures, *m_dead, *m_rewinds, *m_hop;
};

/* One dead letter as a storage hands it over (visit) or takes it (park);
 * every pointer borrowed for the duration of the call. */
struct consumer_dead {
    const char *source;
    int64_t seq;
    const char *event_id, *subject, *type;
    const char *event; /* the CloudEvent as JSON text */
    const char *error;
    int attempts;
    const char *state; /* "failed" or "blocked" */
    int64_t parked_ms;
};
/* Visitor: 0 next, 1 stop, or a negative MOAT_E* returned. */
typedef int (*consumer_dead_fn)(const struct consumer_dead *d, void *arg);

/* The scratch view a verification rebuilds into (opaque to the loop). */
struct consumer_scratch;

struct consumer_storage_ops {
    const char *engine; /* "sqlite", "lmdb": for logs */
    const char *(*where)(struct moat_consumer *c); /* path, for logs */
    /* The last storage error in words, for logs and error fields. */
    const char *(*errmsg)(struct moat_consumer *c);
    /* Check (or create) what the storage needs, at moat_consumer_new*. */
    int (*attach)(struct moat_consumer *c);
    /* The committed cursor of source (0 when none), outside a txn. */
    int (*cursor_read)(struct moat_consumer *c, const char *source,
                       int64_t *seq);

    /* The batch transaction (one at a time). */
    int (*begin)(struct moat_consumer *c);
    int (*commit)(struct moat_consumer *c);
    void (*rollback)(struct moat_consumer *c);
    /* Whether the open transaction ended by itself (SQLite's rollback on
     * I/O errors, a handler breaking the rules): everything in it is gone. */
    bool (*lost)(struct moat_consumer *c);
    /* Per event, inside the batch transaction: open a savepoint, release
     * it (keep its effects) or roll back to it (undo them) - both end it. */
    int (*savepoint)(struct moat_consumer *c);
    int (*release)(struct moat_consumer *c);
    int (*rollback_to)(struct moat_consumer *c);
    /* Run s's handler on ev inside the open transaction (live) or inside
     * the scratch's (scratch != NULL). */
    int (*run)(struct moat_consumer *c, struct sub *s,
               struct consumer_scratch *scratch, const struct moat_event *ev,
               const char **why);

    /* Inside the batch transaction. */
    int (*cursor_write)(struct moat_consumer *c, const char *source,
                        int64_t seq);
    /* The first parked seq of (source, subject), 0 for none; sees what
     * was parked earlier in the open transaction. */
    int (*blocker)(struct moat_consumer *c, const char *source,
                   const char *subject, int64_t *seq);
    int (*park)(struct moat_consumer *c, const struct consumer_dead *d);
    int (*dead_delete)(struct moat_consumer *c, const char *source,
                       int64_t seq);

    /* In a transaction of their own (none may be open). */
    int (*dead_mark_failed)(struct moat_consumer *c, const char *source,
                            int64_t seq, const char *error);
    /* Empty the view (view reset), cursors and dead letters at once. */
    int (*reset)(struct moat_consumer *c);

    /* Reads of committed state. Counts by state (either may be NULL). */
    int (*dead_count)(struct moat_consumer *c, const char *source,
                      int64_t *failed, int64_t *blocked);
    /* Visit the dead letters of source and subject (NULL: any), at most
     * limit, ordered by (source, seq) or by (source, subject, seq);
     * *total (may be NULL) gets how many match in all. */
    int (*dead_visit)(struct moat_consumer *c, const char *source,
                      const char *subject, bool by_subject, int64_t limit,
                      consumer_dead_fn fn, void *arg, int64_t *total);

    /* Verification. Whether view ops were registered (replay without
     * them is 501), and whether a plain replay (reset) is offered. */
    bool (*has_view)(struct moat_consumer *c);
    bool (*can_reset)(struct moat_consumer *c);
    /* Make a fresh scratch view under dir (the consumer's data dir). */
    int (*scratch_open)(struct moat_consumer *c, const char *dir,
                        struct consumer_scratch **out, char *why,
                        size_t whylen);
    /* Close and delete it. NULL is fine. */
    void (*scratch_free)(struct moat_consumer *c,
                         struct consumer_scratch *scratch);
    int (*scratch_begin)(struct consumer_scratch *scratch);
    int (*scratch_commit)(struct consumer_scratch *scratch);
    void (*scratch_rollback)(struct consumer_scratch *scratch);
    const char *(*scratch_errmsg)(struct consumer_scratch *scratch);
    /* Append the differences between the live view and the scratch's. */
    int (*compare)(struct moat_consumer *c, struct consumer_scratch *scratch,
                   json_t *diffs);
};

extern const struct consumer_storage_ops moat_consumer_sqlite_ops;
extern const struct consumer_storage_ops moat_consumer_kv_ops;

struct verify;

struct moat_consumer {
    struct event_base *base; /* borrowed */
    const struct consumer_storage_ops *ops;
    struct moat_db *db; /* SQLite storage: borrowed */
    struct moat_kv *kv; /* LMDB storage: borrowed */
    struct moat_kv_db *kv_cursors, *kv_dead, *kv_dead_subject; /* kv's */
    struct moat_kv_txn *kv_txn;   /* LMDB: the batch transaction, or NULL */
    struct moat_kv_txn *kv_event; /* LMDB: the event's nested one, or NULL */
    bool kv_lost;                 /* LMDB: a handler ended kv_event */
    char kv_err[160];             /* LMDB: the last failure, for logs */
    struct sub **subs;            /* owned */
    size_t nsubs;
    bool started;
    bool paused;
    struct verify *verify;     /* the replay verification running, if any */
    char *data_dir;            /* owned; NULL before register_admin */
    struct moat_view_ops view; /* SQLite view ops */
    struct moat_kv_view_ops kv_view; /* LMDB view ops */
    bool has_view;
    struct moat_outbox *outbox; /* borrowed; woken after each commit */
    bool shared; /* several instances share the database (consumer_lease.c) */
    struct moat_metric_family *f_lag_events, *f_lag_seconds, *f_applied,
        *f_failures, *f_dead, *f_rewinds, *f_hop;
};

/* ---- consumer_lease.c: several instances sharing the database ---- */

/* How often an instance without a source's lease tries to take it. */
#define CONSUMER_LEASE_RETRY_MS 1000

/* MOAT_INSTANCES > 1. */
bool consumer_shared(void);
/* Whether this instance may pull from s's source: it holds the source's
 * lease (taking it now if free, then adopting the committed cursor), or
 * there is no lease to hold. */
bool consumer_lease_hold(struct sub *s);
void consumer_lease_release(struct sub *s);
/* Inside the open transaction: to, or the committed cursor when another
 * instance got further (s->cursor follows). */
int64_t consumer_shared_cursor(struct sub *s, int64_t to);

/* ---- consumer.c: shared helpers ---- */

const char *consumer_jstr(json_t *o, const char *key);
/* The event's sequence ("sequence" is a decimal string in CloudEvents). */
int consumer_event_seq(json_t *ce, int64_t *seq);
/* Fill ev (borrowing from ce) for the handler; on a malformed event fill
 * what it can ("" for the rest) and say what is wrong in why. */
int consumer_parse_event(json_t *ce, const char *source, int64_t seq,
                         struct moat_event *ev, char *why, size_t whylen);
bool consumer_wants_type(const struct sub *s, json_t *ce);
struct sub *consumer_find_sub(struct moat_consumer *c, const char *source);
/* Run s's handler on ev with the event's trace as log context, live or
 * on the scratch; why gets the reason of a failure (copied). */
int consumer_run_handler(struct sub *s, struct consumer_scratch *scratch,
                         const struct moat_event *ev, char *why, size_t whylen);
void consumer_refresh_dead_gauge(struct sub *s);
void consumer_update_lag(struct sub *s);
void consumer_pause(struct moat_consumer *c);
void consumer_resume(struct moat_consumer *c);
void consumer_ticket_drop(struct pull_ticket *t);
/* Forget every sub's position (after a reset): cursor 0, no batch, pulls
 * in flight stale. */
void consumer_rewind(struct sub *s);

/* ---- consumer_replay.c ---- */

/* Start a verification answering req (a 200 or a problem, later). */
void consumer_verify_start(struct moat_consumer *c, struct moat_req *req);
/* At moat_consumer_free: answer its request 503 and free it. */
void consumer_verify_abort(struct moat_consumer *c);
/* POST /v1/admin/replay without verify: reset and rewind. */
void consumer_replay_start(struct moat_consumer *c, struct moat_req *req);

/* ---- consumer_admin.c ---- */

/* What s is doing, in words ("idle", "backoff"...): static. */
const char *consumer_sub_state(const struct sub *s);

int consumer_register_routes(struct moat_consumer *c,
                             struct moat_http_server *http);

#endif /* MOAT_CONSUMER_INTERNAL_H */
