/*
 * moat/events.h - the event backbone: transactional outbox, replayable
 * feed, idempotent consumers. No broker needed; a broker (NATS JetStream,
 * later) plugs in behind struct moat_event_source without touching any
 * handler.
 *
 * PRODUCER. A publishing service keeps an outbox table in its OWN database
 * and appends events inside the same local transaction as the state change
 * (no dual writes). Its migrations include MOAT_OUTBOX_SCHEMA as one of its
 * numbered steps. After COMMIT it calls moat_outbox_committed(), which
 * wakes parked feed readers at once (no polling timer). A producer whose
 * database is an LMDB environment (moat/kv.h) uses moat_outbox_new_kv
 * instead: the events live in its sub-databases "outbox" and
 * "outbox_meta" and are appended inside its open LMDB write transaction;
 * everything else below is the same.
 *
 * FEED. moat_feed_register() serves the outbox as an ordered, replayable
 * feed on the service's HTTP server (a guarded route: callers need a
 * service token, moat/auth.h):
 *
 *   GET /v1/events?after=SEQ&limit=N&wait=MS
 *   200 {"source": "catalog", "events": [CloudEvent...], "next_after": S,
 *        "head": H, "retained_from": R, "epoch": E, "epoch_base": B}
 *
 * events are those with seq > after, ascending, at most limit (1..1000,
 * default 100) and at most ~4 MiB of event data (always at least one
 * event); next_after is the last one's seq (after when none). H is the
 * newest seq ever assigned, R the oldest still stored (H + 1 when the
 * outbox is empty). after defaults to 0, wait to 0. With none available
 * and wait > 0 (capped at 30000) the request parks until a commit adds
 * some (answered at once) or wait passes (answered with no events).
 * E and B are the feed epoch (moat/backup.h): a new E after a restore
 * from a backup, whose numbers after B are new events.
 * after < R - 1 (events already deleted by retention) is 410 Gone: the
 * consumer cannot catch up by replay and must be rebuilt from the
 * source's API. A malformed, repeated or unknown query parameter is a 400
 * problem listing {"parameter", "detail"} in "errors"; too many parked
 * readers (1024) is a 503 with Retry-After.
 * Streaming: GET /v1/events?after=SEQ&stream=1 (no limit or wait) is one
 * long-lived 200 application/x-ndjson reply, chunked: each event after SEQ
 * as one line (the same CloudEvent) as it commits, and
 * {"heartbeat":true,"head":H} after 2 s of silence; the first line is
 * {"heartbeat":true,"hello":true,"head":H}. Heartbeats carry "epoch" and
 * "epoch_base" as pages do (readers ignore unknown fields in heartbeats;
 * a source checks the epoch as a page's). A reader with 1 MiB
 * unread gets no more until it reads; one that stays so for 5 s is
 * dropped (the reply ends; it resumes from its cursor). 410 as above,
 * before the stream starts; at most 256 streams (503). The stream ends
 * when the producer drains.
 * Sequences are contiguous and assigned in commit order (one writer), so
 * a reader never sees seq N+1 before N; none is ever reused (SQLite's
 * AUTOINCREMENT, LMDB's stored last seq).
 * Each event is CloudEvents 1.0 structured JSON:
 *   {"specversion":"1.0", "id", "source":"moat/<service>", "type",
 *    "subject": aggregate id, "time": RFC 3339, "datacontenttype":
 *    "application/json", "data": {...}, "sequence": "<seq>",
 *    "dataschemaversion": N, "traceparent": "00-..."}
 * ("sequence" is a string per the CloudEvents sequence extension.)
 *
 * CONSUMER. A consuming service subscribes to (source, event types) with a
 * handler. For each pulled batch the consumer opens a transaction on the
 * consumer's OWN database, runs the handler of each event inside a
 * savepoint of its own, advances its cursor for that source to the last
 * event applied, and commits - so an effect happens exactly once per event
 * even though delivery is at-least-once (an event at or below the cursor
 * is a duplicate and skipped). A transaction holds at most 500 events or
 * ~50 ms of work; the batch goes on in the next one. A failing handler
 * undoes only its own event (back to its savepoint): the events before it
 * commit with the cursor right before it, and it is retried on its own.
 * The consumer's migrations include MOAT_CONSUMER_SCHEMA (a consumer on
 * an LMDB environment: moat_consumer_new_kv, a nested transaction per
 * event instead of a savepoint, the same rules). Per-aggregate
 * order is the feed order. Events of types not subscribed only move the
 * cursor. A source that is down is retried with backoff (100 ms doubling
 * to 5 s), logged once per change.
 *
 * Schema versions (upcasting). Each event carries its data schema version
 * (ev->schema_version, "dataschemaversion"). A producer may emit an older
 * version during a rolling upgrade, and replay re-reads years-old events,
 * so the handler accepts every version it may meet and converts older
 * shapes to the current one first thing, by the producer's event contract
 * (contracts/<producer>.h: the ONE upcaster per event type, shared by the
 * producer and all its consumers), then applies the current shape only.
 * An unknown (newer) version is an error: the event is retried, parked,
 * and redriven once the consumer is upgraded.
 *
 * Poison events: a handler that fails MOAT_CONSUMER_MAX_ATTEMPTS times
 * (with backoff) parks the event in moat_dead_letters with its error, and
 * later events of the same (source, subject) are parked behind it
 * ("blocked") while other aggregates flow on. A redrive re-applies the
 * parked events of a subject in order, stopping at the first failure.
 *
 * Threads: everything here runs on the loop thread of base.
 *
 * Memory: handlers get borrowed views valid during the call. Everything a
 * _new function returns is freed by the matching _free.
 */
#ifndef MOAT_EVENTS_H
#define MOAT_EVENTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "moat/db.h"
#include "moat/metrics.h"

struct event_base;
struct moat_kv;
struct moat_http_server;
struct moat_http_client;
struct moat_auth;

/* One migration step each (append to the service's own migrations), with
 * its PostgreSQL twin for the migration's pg text:
 *   {3, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG}
 * On PostgreSQL the outbox's sequence numbers come from the one row of
 * moat_outbox_head, locked by each append until its COMMIT: they become
 * visible in order and without gaps, as on SQLite (lib/outbox.c). Each
 * append also NOTIFYs channel moat_outbox at its COMMIT, and every outbox
 * LISTENs on a second connection, so that a feed reader parked on one
 * instance of the producer wakes when another instance commits; within
 * one process the wake stays in-process (moat_outbox_committed). The
 * table stays the truth: a lost notification only delays a reader until
 * its wait ends. */
extern const char MOAT_OUTBOX_SCHEMA[];
extern const char MOAT_OUTBOX_SCHEMA_PG[];
extern const char MOAT_CONSUMER_SCHEMA[];
extern const char MOAT_CONSUMER_SCHEMA_PG[];

#define MOAT_FEED_MAX_LIMIT        1000
#define MOAT_FEED_MAX_WAIT_MS      30000
#define MOAT_CONSUMER_MAX_ATTEMPTS 3

/* ---- producer ---- */

struct moat_outbox;

struct moat_outbox_options {
    int64_t retention_s; /* delete events older than this; 0 = keep all */
    int64_t retention_min_keep; /* never delete the newest N events */
};

/*
 * The outbox of db (borrowed; must outlive the outbox) for service source.
 * Registers outbox metrics in m: moat_outbox_events (rows), moat_outbox_
 * oldest_age_seconds, moat_outbox_head_seq, moat_outbox_appended_total,
 * refreshed by a collector (m is borrowed and must not be rendered after
 * moat_outbox_free: collectors cannot be removed). Retention runs every
 * 10 s when opts->retention_s > 0; opts may be NULL (keep everything).
 * MOAT_EDB when db lacks MOAT_OUTBOX_SCHEMA.
 */
int moat_outbox_new(struct moat_outbox **out, struct event_base *base,
                    struct moat_db *db, const char *source,
                    const struct moat_outbox_options *opts,
                    struct moat_metrics *m);
/*
 * The outbox of an LMDB environment kv (borrowed; must outlive the
 * outbox), otherwise as moat_outbox_new. The events are kept in kv's
 * sub-database "outbox" (8-byte big-endian seq -> the event as JSON
 * {"id", "type", "subject", "time_ms", "schema_version", "data",
 * "traceparent"}) and the last assigned seq in "outbox_meta" (key
 * "last_seq", 8 bytes big-endian), so a seq is never reused even once
 * retention has emptied "outbox". Both are created if missing: call this
 * at start, with no write transaction open.
 */
int moat_outbox_new_kv(struct moat_outbox **out, struct event_base *base,
                       struct moat_kv *kv, const char *source,
                       const struct moat_outbox_options *opts,
                       struct moat_metrics *m);
/* Answers parked feed readers (their page as it is now) first. Free it
 * before the HTTP server and once it routes no more requests to the feed
 * (a service's release does both). */
void moat_outbox_free(struct moat_outbox *o);
/*
 * Append an event INSIDE the caller's open transaction on the outbox's db
 * (for moat_outbox_new_kv: kv's open write transaction, moat_kv_begin).
 * data is borrowed (serialised now). The trace of the current request (log
 * context, moat/log.h) is recorded as traceparent. *seq (may be NULL) gets
 * the event's sequence number, which is the event's once the transaction
 * commits. type is 1..64 bytes, subject 1..256, schema_version >= 1, data
 * not NULL; MOAT_EINVAL otherwise, and when no transaction is open (the
 * event must commit with its state change), MOAT_EDB/EBUSY from SQLite,
 * MOAT_ETOOBIG/EDB from LMDB (its transaction can then only be aborted).
 */
int moat_outbox_append(struct moat_outbox *o, const char *type,
                       const char *subject, int schema_version, json_t *data,
                       int64_t *seq);
/* After COMMIT of a transaction that appended: wake parked readers (on
 * the next loop turn, so the writer's reply does not wait for them). */
void moat_outbox_committed(struct moat_outbox *o);
/* Run the retention sweep now (the outbox runs it by itself every 10 s);
 * *deleted (may be NULL) gets the number of events deleted. Only a prefix
 * of the feed is ever deleted. */
int moat_outbox_trim(struct moat_outbox *o, int64_t *deleted);
/*
 * Serve GET /v1/events on http. Parked readers hold requests in flight:
 * they are answered when the outbox is freed. (A service's drain waits for
 * them up to their wait or MOAT_DRAIN_TIMEOUT_MS, whichever comes first.)
 */
int moat_feed_register(struct moat_outbox *o, struct moat_http_server *http);

/* ---- consumer ---- */

/* An event as a handler sees it; all borrowed. */
struct moat_event {
    const char *id;
    const char *source;  /* service name, e.g. "catalog" */
    const char *type;    /* e.g. "ProductCreated" */
    const char *subject; /* aggregate id */
    const char *time;    /* RFC 3339 */
    int64_t time_ms;     /* event time, Unix ms, parsed once by the consumer
                            (0 when "time" is not RFC 3339 UTC) */
    int64_t seq;
    int schema_version;
    json_t *data;
    const char *traceparent; /* may be "" */
};

/*
 * Apply ev to db inside the consumer's open transaction (which other
 * events of the batch share). Return MOAT_OK, or an error: ev's changes
 * are rolled back to a savepoint taken right before it (the other events
 * keep theirs) and the event retried, then parked - except MOAT_ETOOBIG
 * and MOAT_EIO (the consumer's own database is full or failing, not the
 * event): the batch is then rolled back and retried with backoff, and
 * nothing is parked for it. *why may be set to a
 * static or db-owned message for the dead letter. Must be deterministic
 * and touch nothing but db: replay runs it again, and verification runs it
 * on a scratch database. It must not COMMIT or ROLLBACK itself, nor
 * release or roll back savepoints it did not open (that is an error: a
 * COMMIT is refused and turns into a ROLLBACK, and the batch's events in
 * that transaction are applied again).
 */
typedef int (*moat_event_handler_fn)(struct moat_db *db,
                                     const struct moat_event *ev, void *arg,
                                     const char **why);
/*
 * The same for a consumer on an LMDB environment (moat_consumer_new_kv):
 * apply ev inside t, a write transaction nested in the batch's (moat/kv.h
 * moat_kv_begin_nested: the per-event savepoint), which also holds the
 * cursor and whatever the handler appends to an outbox of the same
 * environment (the outbox appends into moat_kv_write_txn, which is t).
 * On an error t is aborted (ev's writes alone vanish). The handler must
 * not commit or abort t. arg is the subscription's, except during a
 * verification, where it is the scratch view's handler_arg
 * (moat_kv_view_ops.scratch_open): sub-database handles belong to one
 * environment, so a kv handler finds its handles through arg.
 */
struct moat_kv_txn;
typedef int (*moat_kv_event_handler_fn)(struct moat_kv_txn *t,
                                        const struct moat_event *ev, void *arg,
                                        const char **why);

/*
 * Where events come from. The HTTP feed is one implementation
 * (moat_feed_source_new); a broker implements the same two calls.
 * pull: fetch events after `after` (limit 1..MOAT_FEED_MAX_LIMIT, wait_ms
 * 0..MOAT_FEED_MAX_WAIT_MS), calling done exactly once, on the loop thread
 * and never from inside pull, with a JSON array of CloudEvents (borrowed,
 * valid during done) and the source's head, or with an error and NULL:
 *   MOAT_EIO, MOAT_ETIMEDOUT  source unreachable or answering an error
 *   MOAT_ENOTFOUND            the events after `after` are gone (410);
 *                             head is then the oldest retained seq - 1
 *                             (where a reader that accepts the gap may
 *                             resume), 0 when unknown
 *   MOAT_EINVAL               malformed answer
 *   MOAT_ECONFLICT            the source was restored to an earlier point
 *                             (a new feed epoch, moat/backup.h); head is
 *                             the restored head, where the reader resumes
 *   MOAT_ECANCELLED           the transport is shutting down
 * If pull returns an error, done is never called. Several pulls may be in
 * flight at once (live consumption and a verification). free drops pulls
 * in flight: their done is never called.
 */
struct moat_event_source;
typedef void (*moat_source_done_fn)(int err, json_t *events, int64_t head,
                                    void *arg);
struct moat_event_source_ops {
    int (*pull)(struct moat_event_source *src, int64_t after, int limit,
                int wait_ms, moat_source_done_fn done, void *arg);
    void (*free)(struct moat_event_source *src);
};
struct moat_event_source {
    const struct moat_event_source_ops *ops;
    char name[32]; /* the producing service */
};

/* An HTTP feed at base_url (e.g. "http://127.0.0.1:8081"), called with a
 * service token for audience `name` minted by auth (borrowed; NULL sends
 * no token, for MOAT_INSECURE_NO_AUTH). client is borrowed and must
 * outlive the source. NULL (logged) for an empty or too long name or a
 * URL that is not http(s)://. One pull at a time is served from a stream
 * (?stream=1) the source keeps open at the puller's cursor, holding at
 * most 4 MiB of events received and not yet pulled; other pulls, and all
 * pulls when the producer does not stream or MOAT_FEED_STREAM=0, are long
 * polls waiting wait_ms + 5 s at most. */
struct moat_event_source *moat_feed_source_new(const char *name,
                                               const char *base_url,
                                               struct moat_http_client *client,
                                               const struct moat_auth *auth);

/* One subscription per source (list every type in it; MOAT_ECONFLICT for
 * a second one). On failure the caller still owns source. */
struct moat_subscription {
    struct moat_event_source *source;    /* owned by the consumer after add */
    const char *const *types;            /* NULL-terminated; NULL = all */
    moat_event_handler_fn handler;       /* for moat_consumer_new */
    moat_kv_event_handler_fn kv_handler; /* for moat_consumer_new_kv */
    void *arg;
};

struct moat_consumer;

/*
 * A consumer applying events to db (borrowed). Registers metrics in m:
 * moat_consumer_lag_events{source}, moat_consumer_lag_seconds{source},
 * moat_consumer_applied_total{source}, moat_consumer_failures_total
 * {source}, moat_consumer_dead_letters{source} (lag_events = head -
 * cursor, lag_seconds = age of the oldest unapplied event, 0 when caught
 * up). m must not be rendered after moat_consumer_free (a collector).
 * MOAT_EDB when db lacks MOAT_CONSUMER_SCHEMA. Free the consumer before
 * the HTTP client its sources use.
 */
int moat_consumer_new(struct moat_consumer **out, struct event_base *base,
                      struct moat_db *db, struct moat_metrics *m);
/*
 * A consumer applying events to the LMDB environment kv (borrowed; must
 * outlive the consumer), otherwise as moat_consumer_new: subscriptions
 * give a kv_handler. Its state lives in kv's sub-databases "consumer"
 * (source -> {"after_seq", "updated_ms"}), "dead_letters" (source NUL
 * 8-byte big-endian seq -> {"event_id", "subject", "type", "event",
 * "error", "attempts", "state", "parked_ms"}) and "dead_letters_subject"
 * (source NUL subject NUL seq -> empty, the per-subject index), created
 * if missing: call it at start with no write transaction open. A batch is
 * one LMDB write transaction (one sync) holding every event's effects,
 * its replies appended to an outbox in kv, and the cursor; each event runs
 * in a nested transaction so a failing one undoes only itself.
 */
int moat_consumer_new_kv(struct moat_consumer **out, struct event_base *base,
                         struct moat_kv *kv, struct moat_metrics *m);
void moat_consumer_free(struct moat_consumer *c);
int moat_consumer_subscribe(struct moat_consumer *c,
                            const struct moat_subscription *s);
/*
 * For a consumer whose handlers also append to an outbox on the same db
 * (a saga step that replies or sends a command): after each commit the
 * consumer calls moat_outbox_committed(o) so parked feed readers learn of
 * the new events at once. o is borrowed and must outlive the consumer.
 */
void moat_consumer_set_outbox(struct moat_consumer *c, struct moat_outbox *o);
/* Start pulling (after the service is confined and listening): one long
 * poll per source (limit 100, wait 25 s) from its stored cursor. */
void moat_consumer_start(struct moat_consumer *c);

/*
 * Each subscription's state as GET /v1/admin/consumer shows it, read in
 * the process, for a service that reports its own freshness (analytics'
 * blind spots). Fills out[0 .. min(n, max)) in subscription order and
 * returns n, the number of subscriptions. Loop thread only.
 */
struct moat_consumer_source_status {
    char source[32];
    int64_t cursor;     /* the last event applied */
    int64_t head;       /* the source's newest at the last answer; -1 none */
    int64_t lag_events; /* head - cursor, 0 when caught up */
    /* Age of the oldest unapplied event known; while the source does not
     * answer, at least the time since it stopped (it was caught up or
     * behind then, nothing is known after). 0 when caught up. */
    double lag_seconds;
    /* "idle", "waiting" (a long poll in flight), "applying", "retrying"
     * (a handler failed), "backoff" (the source or our database fails),
     * "paused" (replay), "stopped" (not started). Static. */
    const char *state;
    bool reachable;        /* the last pull was answered */
    int64_t down_since_ms; /* wall ms of the first failed pull, 0 if up */
};
size_t moat_consumer_status(const struct moat_consumer *c,
                            struct moat_consumer_source_status *out,
                            size_t max);

/*
 * Admin routes on http (guarded like every route):
 *   GET  /v1/admin/consumer            cursors, lag, dead letters per source
 *        200 {"sources": [{"source", "cursor", "head", "lag_events",
 *        "lag_seconds", "state", "error", "dead_letters": {"failed",
 *        "blocked"}}], "paused", "verifying"}
 *   GET  /v1/admin/dead-letters?source=&subject=&limit= (100, max 1000)
 *        200 {"dead_letters": [{"source", "seq", "event_id", "subject",
 *        "type", "state", "error", "attempts", "parked_at", "event"}],
 *        "total"}
 *   POST /v1/admin/dead-letters/redrive?source=S&subject=X (each optional)
 *        applies the parked events of each selected subject in seq order,
 *        each in its own transaction that also removes it; a subject stops
 *        at its first failure (error and attempts updated, the rest stay
 *        parked). 200 {"applied", "failed": [{source, subject, seq,
 *        error}], "remaining"}
 *   POST /v1/admin/replay[?verify=1]   rebuild the view from sequence 0
 * Replay pauses consumption, calls reset (which must empty the view
 * tables) and clears cursors and dead letters in one transaction, then
 * re-applies every source from 0 (202; progress in /v1/admin/consumer).
 * Replay needs the sources to still hold sequence 1 (see retention).
 * With verify=1 it instead rebuilds into a scratch database
 * <data_dir>/replay-verify.db (view migrations; created afresh, deleted
 * after) through the same sources and handlers, while live consumption
 * goes on: the rebuild first catches up with the live cursors taken at the
 * start, then live consumption pauses, the rebuild catches up the last
 * few events to the live cursors of that moment, compare runs on two
 * views at exactly the same positions (dead letters are compared too),
 * and consumption resumes. 200 {"identical": bool, "differences":
 * [...], "events": N, "sources": {name: seq}}. 409 while a verification
 * runs (also for redrive); 501 without view ops.
 */
struct moat_view_ops {
    /* The consumer DB's own migrations (MOAT_CONSUMER_SCHEMA among
     * them); verification applies them to its scratch database too. */
    const struct moat_migration *migrations;
    size_t nmigrations;
    int (*reset)(struct moat_db *db, void *arg);
    /* Append human-readable differences between a and b to diffs (array). */
    int (*compare)(struct moat_db *live, struct moat_db *scratch, json_t *diffs,
                   void *arg);
    void *arg;
};
/*
 * The usual view compare (lib/view.c): each table's rows, read by sql from
 * both databases, keyed by the first column (text) and ordered by it, are
 * walked side by side. A key on one side only, or a column whose type or
 * text differs, adds a line to diffs naming `what`, the key and the
 * column (its name in sql). At most max_diffs lines, then one "... and N
 * more differences". name labels the statement (prepared on both).
 */
struct moat_view_table {
    const char *name;
    const char *sql;
    const char *what; /* "product", "order line"... */
};
int moat_view_compare_tables(struct moat_db *live, struct moat_db *scratch,
                             const struct moat_view_table *tables, size_t n,
                             json_t *diffs, size_t max_diffs);

int moat_consumer_register_admin(struct moat_consumer *c,
                                 struct moat_http_server *http,
                                 const char *data_dir,
                                 const struct moat_view_ops *view);

/*
 * The view of an LMDB consumer, for replay and verification.
 * Verification makes the empty directory <data_dir>/replay-verify (removed
 * with everything in it afterwards, and afresh at the start), and calls
 * scratch_open(dir, live, ...) which opens an environment of its own in
 * it, with the view's migrations and sub-databases (and any state the
 * rebuild starts from, copied from live), setting *scratch (closed by
 * scratch_close) and *handler_arg, what the kv handlers get as arg while
 * they apply to it. compare appends human-readable differences between
 * the live environment and the scratch to diffs. reset (may be NULL: then
 * a replay without verify is 501) empties the view inside t; the consumer
 * clears its cursors and dead letters in the same transaction.
 */
struct moat_kv_view_ops {
    int (*scratch_open)(const char *dir, struct moat_kv *live,
                        struct moat_kv **scratch, void **handler_arg,
                        void *arg);
    void (*scratch_close)(struct moat_kv *scratch, void *handler_arg,
                          void *arg);
    int (*compare)(struct moat_kv *live, struct moat_kv *scratch, json_t *diffs,
                   void *arg);
    int (*reset)(struct moat_kv_txn *t, void *arg);
    void *arg;
};
int moat_consumer_register_admin_kv(struct moat_consumer *c,
                                    struct moat_http_server *http,
                                    const char *data_dir,
                                    const struct moat_kv_view_ops *view);

/*
 * The LMDB counterpart of moat_view_compare_tables (lib/view_kv.c): each
 * range is the sub-database called db in both environments, walked side by
 * side in key order. project (NULL: the value's bytes as they are) turns a
 * value into the JSON compared, e.g. without the times of the write; a
 * NULL result means "not comparable" and is reported. A key on one side
 * only, or a differing projection, adds a line to diffs naming `what` and
 * the key (printable keys as text, others in hex). At most max_diffs
 * lines, then one "... and N more differences".
 */
struct moat_kv_view_range {
    const char *db;
    const char *what;
    json_t *(*project)(const void *val, size_t vlen);
};
int moat_kv_compare_ranges(struct moat_kv *live, struct moat_kv *scratch,
                           const struct moat_kv_view_range *ranges, size_t n,
                           json_t *diffs, size_t max_diffs);

#endif /* MOAT_EVENTS_H */
