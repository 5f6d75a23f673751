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
 * wakes parked feed readers at once (no polling timer).
 *
 * FEED. moat_feed_register() serves the outbox as an ordered, replayable
 * feed on the service's HTTP server (a guarded route: callers need a
 * service token, moat/auth.h):
 *
 *   GET /v1/events?after=SEQ&limit=N&wait=MS
 *   200 {"source": "catalog", "events": [CloudEvent...], "next_after": S,
 *        "head": H, "retained_from": R}
 *
 * events are those with seq > after, ascending, at most limit (1..1000,
 * default 100). With none available and wait > 0 (capped at 30000) the
 * request parks until a commit adds some or wait passes. after < R - 1
 * (events already deleted by retention) is 410 Gone: the consumer cannot
 * catch up by replay and must be rebuilt from the source's API.
 * Each event is CloudEvents 1.0 structured JSON:
 *   {"specversion":"1.0", "id", "source":"moat/<service>", "type",
 *    "subject": aggregate id, "time": RFC 3339, "datacontenttype":
 *    "application/json", "data": {...}, "sequence": "<seq>",
 *    "dataschemaversion": N, "traceparent": "00-..."}
 * ("sequence" is a string per the CloudEvents sequence extension.)
 *
 * CONSUMER. A consuming service subscribes to (source, event types) with a
 * handler. For each event the consumer opens a transaction on the
 * consumer's OWN database, runs the handler, advances its cursor for that
 * source, and commits - so an effect happens exactly once per event even
 * though delivery is at-least-once. The consumer's migrations include
 * MOAT_CONSUMER_SCHEMA. Per-aggregate order is the feed order.
 *
 * Poison events: a handler that fails MOAT_CONSUMER_MAX_ATTEMPTS times
 * (with backoff) parks the event in moat_dead_letters with its error, and
 * later events of the same (source, subject) are parked behind it
 * ("blocked") while other aggregates flow on. A redrive re-applies the
 * parked events of a subject in order, stopping at the first failure.
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
struct moat_http_server;
struct moat_http_client;
struct moat_auth;

/* One migration step each (append to the service's own migrations). */
extern const char MOAT_OUTBOX_SCHEMA[];
extern const char MOAT_CONSUMER_SCHEMA[];

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
 * oldest_age_seconds, moat_outbox_head_seq, moat_outbox_appended_total.
 */
int moat_outbox_new(struct moat_outbox **out, struct event_base *base,
                    struct moat_db *db, const char *source,
                    const struct moat_outbox_options *opts,
                    struct moat_metrics *m);
void moat_outbox_free(struct moat_outbox *o);
/*
 * Append an event INSIDE the caller's open transaction on the outbox's db.
 * data is borrowed (serialised now). The trace of the current request (log
 * context, moat/log.h) is recorded as traceparent. *seq (may be NULL) gets
 * the event's sequence number once the transaction commits.
 */
int moat_outbox_append(struct moat_outbox *o, const char *type,
                       const char *subject, int schema_version, json_t *data,
                       int64_t *seq);
/* After COMMIT of a transaction that appended: wake parked readers. */
void moat_outbox_committed(struct moat_outbox *o);
/* Serve GET /v1/events on http. */
int moat_feed_register(struct moat_outbox *o, struct moat_http_server *http);

/* ---- consumer ---- */

/* An event as a handler sees it; all borrowed. */
struct moat_event {
    const char *id;
    const char *source;  /* service name, e.g. "catalog" */
    const char *type;    /* e.g. "ProductCreated" */
    const char *subject; /* aggregate id */
    const char *time;    /* RFC 3339 */
    int64_t seq;
    int schema_version;
    json_t *data;
    const char *traceparent; /* may be "" */
};

/*
 * Apply ev to db inside the consumer's open transaction. Return MOAT_OK,
 * or an error: the transaction is rolled back and the event retried, then
 * parked. *why may be set to a static or db-owned message for the dead
 * letter. Must be deterministic: replay runs it again on a scratch copy.
 */
typedef int (*moat_event_handler_fn)(struct moat_db *db,
                                     const struct moat_event *ev, void *arg,
                                     const char **why);

/*
 * Where events come from. The HTTP feed is one implementation
 * (moat_feed_source_new); a broker implements the same two calls.
 * pull: fetch events after `after`, calling done exactly once, on the
 * loop thread, with a JSON array of CloudEvents (borrowed) or an error.
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
 * service token for audience `name` minted by auth (borrowed). */
struct moat_event_source *moat_feed_source_new(const char *name,
                                               const char *base_url,
                                               struct moat_http_client *client,
                                               const struct moat_auth *auth);

struct moat_subscription {
    struct moat_event_source *source; /* owned by the consumer after add */
    const char *const *types;         /* NULL-terminated; NULL = all */
    moat_event_handler_fn handler;
    void *arg;
};

struct moat_consumer;

/*
 * A consumer applying events to db (borrowed). Registers metrics in m:
 * moat_consumer_lag_events{source}, moat_consumer_lag_seconds{source},
 * moat_consumer_applied_total{source}, moat_consumer_failures_total
 * {source}, moat_consumer_dead_letters{source}.
 */
int moat_consumer_new(struct moat_consumer **out, struct event_base *base,
                      struct moat_db *db, struct moat_metrics *m);
void moat_consumer_free(struct moat_consumer *c);
int moat_consumer_subscribe(struct moat_consumer *c,
                            const struct moat_subscription *s);
/* Start pulling (after the service is confined and listening). */
void moat_consumer_start(struct moat_consumer *c);

/*
 * Admin routes on http (guarded like every route):
 *   GET  /v1/admin/consumer            cursors, lag, dead letters per source
 *   GET  /v1/admin/dead-letters        parked events with their errors
 *   POST /v1/admin/dead-letters/redrive?source=S&subject=X (or all)
 *   POST /v1/admin/replay[?verify=1]   rebuild the view from sequence 0
 * Replay calls reset (which must empty the view tables) then re-applies
 * every source from 0 in a fresh pass; with verify=1 it instead rebuilds
 * into a scratch database (same migrations, in the data directory) and
 * compares it with the live view using compare, answering
 * {"identical": bool, "differences": [...]}.
 */
struct moat_view_ops {
    const struct moat_migration *migrations; /* the consumer DB's own */
    size_t nmigrations;
    int (*reset)(struct moat_db *db, void *arg);
    /* Append human-readable differences between a and b to diffs (array). */
    int (*compare)(struct moat_db *live, struct moat_db *scratch, json_t *diffs,
                   void *arg);
    void *arg;
};
int moat_consumer_register_admin(struct moat_consumer *c,
                                 struct moat_http_server *http,
                                 const char *data_dir,
                                 const struct moat_view_ops *view);

#endif /* MOAT_EVENTS_H */
