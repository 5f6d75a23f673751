/*
 * analytics.h - the analytics service's state and the seams between its
 * files: main.c (lifecycle: database, consumer of every source's feed,
 * routes), events.c (the sources' events -> counts), handlers.c (the HTTP
 * API), store.c (the database; the only code that knows the schema).
 *
 * The view is engagement in time buckets (a CQRS read model, see
 * docs/design.md "Queries across services" and docs/analytics.md): built
 * ONLY from the feeds of messaging, comments, posts, connections and
 * users, never from their databases or APIs, rebuildable by a replay from
 * sequence 0 and verifiable against a rebuilt copy. An action counts in
 * the buckets of the event's own time (ev->time_ms), not of its arrival,
 * so a source that was down adds its events to the right buckets when it
 * comes back: the counts catch up exactly.
 */
#ifndef AN_ANALYTICS_H
#define AN_ANALYTICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/buf.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/metrics.h"

/* Longest user id accepted from an event or a query. */
#define AN_KEY_MAX 64
/* Buckets in one answer at most (a day of minutes). */
#define AN_BUCKETS_MAX 1440
/* Sources at most (one subscription each). */
#define AN_SOURCES_MAX 8
/* Default for MOAT_ANALYTICS_BLIND_LAG_MS. */
#define AN_BLIND_LAG_MS_DEFAULT 1000

/* What an action counts as: a column of the counts table. */
enum an_metric {
    AN_NONE = -1, /* activity only (active_users) */
    AN_MESSAGES_SENT,
    AN_COMMENTS,
    AN_POSTS,
    AN_FOLLOWS,
    AN_REGISTRATIONS,
    AN_METRICS
};
/* Column (and JSON) names, indexed by enum an_metric. */
extern const char *const an_metric_names[AN_METRICS];

/* Bucket sizes in seconds, and their names in the API. */
struct an_bucket {
    const char *name; /* "minute", "hour", "day" */
    int64_t seconds;
};
extern const struct an_bucket an_buckets[3];

/* Per-process state, created by init and freed by release in main.c. */
struct an_service {
    struct moat_db *db;             /* owned: analytics.db */
    struct moat_consumer *consumer; /* owned (with its feed clients) */
    /* A source further behind than this is a blind spot. */
    int64_t blind_lag_ms;
    /* moat_analytics_apply_lag_seconds{source}: event time -> applied. */
    struct moat_metric_family *f_apply_lag; /* owned by the registry */
};

/*
 * The consumer's handler (moat/events.h), one for every source: which
 * event types mean what is decided by ev->source and ev->type (events.c).
 * Deterministic and touching nothing but db. arg is the struct
 * an_service (for the lag metric only; a scratch rebuild passes the same).
 */
int an_apply(struct moat_db *db, const struct moat_event *ev, void *arg,
             const char **why);
/* The event types to subscribe to for source (NULL-terminated), or NULL
 * for a source analytics does not know. */
const char *const *an_event_types(const char *source);

/* Register the HTTP API; handlers get s (borrowed). */
int an_routes_register(struct moat_http_server *server, struct an_service *s);

/* ---- store.c ---- */

const struct moat_migration *an_store_migrations(size_t *n);
/* data_dir/analytics.db, or the PostgreSQL database of dsn when it is not
 * NULL or "" (moat/db.h). */
int an_store_open(struct moat_db **out, const char *data_dir, const char *dsn,
                  struct moat_metrics *metrics);
bool an_store_ready(struct moat_db *db, const char **why);
/* Empty every view table (replay). */
int an_store_reset(struct moat_db *db);
int an_store_compare(struct moat_db *live, struct moat_db *scratch,
                     json_t *diffs, size_t max_diffs);

/*
 * Count one action of user at time_s (seconds since the epoch) in every
 * bucket size, for the user and overall: metric + 1 (unless AN_NONE), and
 * active_users + 1 when the user was not yet active in that bucket.
 * Inside the consumer's transaction; not idempotent by itself (the
 * consumer's cursor, committed with it, applies each event once).
 */
int an_store_count(struct moat_db *db, const char *user, int64_t time_s,
                   enum an_metric metric);

/* One bucket of a series. */
struct an_row {
    int64_t start; /* seconds since the epoch */
    int64_t n[AN_METRICS];
    int64_t active_users;
};
/*
 * The buckets of size seconds starting in [from, to) for user ("" for
 * overall) that have counts, in order, passed to fn one by one (row
 * borrowed). Buckets without any count are not visited.
 */
int an_store_series(struct moat_db *db, int64_t size, const char *user,
                    int64_t from, int64_t to,
                    void (*fn)(const struct an_row *row, void *arg), void *arg);

#endif /* AN_ANALYTICS_H */
