/*
 * search.h - the search service's state and the seams between its files.
 *
 * One binary, one engine, several indexes: an instance serves the index
 * named by MOAT_SEARCH_INDEX (docs/search.md):
 *   catalog  catalog's products (events.c, handlers.c, store.c);
 *   social   the social network's posts and profiles (social_events.c,
 *            social_handlers.c, social_store.c).
 * engine.c is what they share (FTS5 settings, query parsing, ranking,
 * cursor pages, the index check of replay --verify); main.c the
 * lifecycle: database, consumer, routes.
 *
 * search never reads another service's database or API to build an
 * index: every row comes from an event of the producers' feeds
 * (GET /v1/events).
 */
#ifndef SRCH_SEARCH_H
#define SRCH_SEARCH_H

#include <stdbool.h>

#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/service.h"

/* Every index's database: $MOAT_DATA_DIR/search.db. An instance opening
 * another index's database stops: the migrations' checksums differ. */
#define SRCH_DB_FILE "search.db"

struct srch_service;

/* What an index brings to the engine (all static). */
struct srch_index {
    const char *name; /* MOAT_SEARCH_INDEX */
    const struct moat_migration *(*migrations)(size_t *n);
    /* Subscribe s->consumer to the index's feeds (their URLs from the
     * environment). */
    int (*subscribe)(struct moat_service *svc, struct srch_service *s);
    int (*routes)(struct moat_http_server *server, struct srch_service *s);
    /* replay: empty the index; --verify: how scratch differs from live. */
    int (*reset)(struct moat_db *db);
    int (*compare)(struct moat_db *live, struct moat_db *scratch, json_t *diffs,
                   size_t max_diffs);
};

/* Per-process state, created by init and freed by release in main.c. */
struct srch_service {
    const struct srch_index *index; /* static */
    struct moat_db *db;             /* owned: search.db */
    struct moat_consumer *consumer; /* owned */
    bool poison_healed;             /* test builds: POST /_test/heal */
};

/* ---- the catalog index ---- */

/* Event types search consumes from catalog (NULL-terminated). */
extern const char *const srch_catalog_event_types[];

/*
 * The consumer's handler for every catalog event (moat/events.h): upcasts
 * the event's data to the current schema, applies it to db, and in test
 * builds counts the application. arg is the struct srch_service.
 */
int srch_apply_event(struct moat_db *db, const struct moat_event *ev, void *arg,
                     const char **why);

/* Register /v1/search, /v1/search/products/{id}, the admin lag report
 * and, in test builds, POST /_test/heal; handlers get s (borrowed). */
int srch_routes_register(struct moat_http_server *server,
                         struct srch_service *s);

/* ---- the social index ---- */

extern const char *const soc_posts_event_types[];
extern const char *const soc_profiles_event_types[];

/* The consumer's handlers for posts' and profiles' events (as
 * srch_apply_event). */
int soc_apply_posts(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why);
int soc_apply_profiles(struct moat_db *db, const struct moat_event *ev,
                       void *arg, const char **why);

/* Register /v1/search/posts and /v1/search/profiles. */
int soc_routes_register(struct moat_http_server *server,
                        struct srch_service *s);

#endif /* SRCH_SEARCH_H */
