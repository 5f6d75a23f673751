/*
 * search.h - the search service's state and the seams between its files:
 * main.c (lifecycle: database, consumer, routes), events.c (catalog's
 * events -> the index: upcasting and handlers), handlers.c (the HTTP
 * API), store.c (the database; the only code that knows the schema).
 *
 * search never reads catalog's database or API to build its view: every
 * row comes from an event of catalog's feed (GET /v1/events on catalog).
 */
#ifndef SRCH_SEARCH_H
#define SRCH_SEARCH_H

#include <stdbool.h>

#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"

/* Per-process state, created by init and freed by release in main.c. */
struct srch_service {
    struct moat_db *db;             /* owned: search.db */
    struct moat_consumer *consumer; /* owned */
    const char *catalog_url;        /* borrowed from the environment */
    bool poison_healed;             /* test builds: POST /_test/heal */
};

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
 * and, in test builds, /_test/...; handlers get s (borrowed). */
int srch_routes_register(struct moat_http_server *server,
                         struct srch_service *s);

#endif /* SRCH_SEARCH_H */
