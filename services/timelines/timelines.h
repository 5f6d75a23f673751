/*
 * timelines.h - the timelines service's state and the seams between its
 * files: main.c (lifecycle: database, consumer of posts' and connections'
 * feeds, routes), events.c (their events -> the view), handlers.c (the
 * HTTP API), store.c (the database; the only code that knows the schema).
 *
 * The view is every user's home timeline (a CQRS read model, see
 * docs/design.md "Queries across services" and docs/timelines.md): built
 * ONLY from the feeds of posts (PostCreated, PostDeleted) and connections
 * (Followed, Unfollowed), never from their databases or APIs, rebuildable
 * by a replay from sequence 0 and verifiable against a rebuilt copy.
 *
 * A user's home timeline is the posts of the user and of everyone the
 * user follows now, newest first (ordered by the posts feed's sequence,
 * which is the order posts were committed). Ordinary authors are fanned
 * out on write (one row per follower); an author with more than
 * fanout_max followers when posting is merged in at read time instead.
 */
#ifndef TL_TIMELINES_H
#define TL_TIMELINES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/buf.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"

/* Longest id accepted from an event or a path (user and post ids). */
#define TL_KEY_MAX 64
/* Posts copied into a new follower's timeline on a follow. */
#define TL_BACKFILL_MAX 200
/* Default for MOAT_TIMELINES_FANOUT_MAX. */
#define TL_FANOUT_MAX_DEFAULT 5000

/* Per-process state, created by init and freed by release in main.c. */
struct tl_service {
    struct moat_db *db;             /* owned: timelines.db */
    struct moat_consumer *consumer; /* owned (with its feed client) */
    /* Authors with more followers than this are merged at read time. */
    int64_t fanout_max;
};

/* Event types consumed from each source (NULL-terminated). */
extern const char *const tl_posts_event_types[];
extern const char *const tl_connections_event_types[];

/*
 * The consumer's handlers (moat/events.h), one per source. Deterministic
 * and touching nothing but db. arg is the struct tl_service.
 */
int tl_apply_posts(struct moat_db *db, const struct moat_event *ev, void *arg,
                   const char **why);
int tl_apply_connections(struct moat_db *db, const struct moat_event *ev,
                         void *arg, const char **why);

/* Register the HTTP API; handlers get s (borrowed). */
int tl_routes_register(struct moat_http_server *server, struct tl_service *s);

/* ---- store.c ---- */

const struct moat_migration *tl_store_migrations(size_t *n);
/* data_dir/timelines.db, or the PostgreSQL database of dsn when it is not
 * NULL or "" (moat/db.h). */
int tl_store_open(struct moat_db **out, const char *data_dir, const char *dsn,
                  struct moat_metrics *metrics);
bool tl_store_ready(struct moat_db *db, const char **why);
/* Empty every view table (replay). */
int tl_store_reset(struct moat_db *db);
int tl_store_compare(struct moat_db *live, struct moat_db *scratch,
                     json_t *diffs, size_t max_diffs);

/* A post as the view keeps it; all borrowed. doc is the post's JSON as
 * the API shows it (already rendered by events.c). */
struct tl_post {
    const char *post_id, *author_id;
    int64_t seq; /* posts' feed sequence: the timeline order */
    const char *doc;
};

/* The writes, inside the consumer's transaction. Each is idempotent. */
int tl_store_post_add(struct moat_db *db, const struct tl_post *p,
                      int64_t fanout_max);
int tl_store_post_delete(struct moat_db *db, const char *post_id);
int tl_store_follow(struct moat_db *db, const char *follower,
                    const char *followee);
int tl_store_unfollow(struct moat_db *db, const char *follower,
                      const char *followee);

/*
 * Append the home timeline of user to out as JSON objects separated by
 * commas: at most limit posts with a sequence below before (INT64_MAX for
 * the newest), newest first. *n is how many, *last the sequence of the
 * last one, *more whether older ones exist.
 */
int tl_store_home(struct moat_db *db, const char *user, int64_t before,
                  size_t limit, struct moat_buf *out, size_t *n, int64_t *last,
                  bool *more);

#endif /* TL_TIMELINES_H */
