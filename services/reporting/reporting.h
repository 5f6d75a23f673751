/*
 * reporting.h - the reporting service's state and the seams between its
 * files: main.c (lifecycle: database, consumer, routes), events.c (the
 * events of orders, payments, catalog and inventory -> the star schema:
 * upcasting and handlers), etl.c (the batch reload of dim_product from
 * catalog's API), reports.c (the HTTP API: reports as JSON or CSV),
 * store.c (the database; the only code that knows the schema).
 *
 * reporting never reads another service's database: facts and dimensions
 * come from the services' event feeds (GET /v1/events) and, for the
 * product dimension only, from catalog's public API on request.
 */
#ifndef REP_REPORTING_H
#define REP_REPORTING_H

#include <stdbool.h>
#include <stdint.h>

#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"

struct moat_auth;

/* The pseudonym key: HMAC-SHA256 key bytes (the variable's text). */
#define REP_PSEUDONYM_KEY_MIN 32
#define REP_PSEUDONYM_KEY_MAX 256

/* Per-process state, created by init and freed by release in main.c. */
struct rep_service {
    struct moat_db *db;              /* owned: reporting.db */
    struct moat_http_client *client; /* owned: the ETL's calls to catalog */
    struct moat_consumer *consumer;  /* owned */
    const struct moat_auth *auth;    /* borrowed from the skeleton (NULL
                                        with MOAT_INSECURE_NO_AUTH) */
    const char *catalog_url;         /* borrowed from the environment */
    struct rep_etl *etl;             /* owned: the running ETL, or NULL */
    /* Key of customer pseudonyms (MOAT_REPORTING_PSEUDONYM_KEY). */
    unsigned char pseudonym_key[REP_PSEUDONYM_KEY_MAX];
    size_t pseudonym_key_len;
};

/* Event types consumed, per source (NULL-terminated). */
extern const char *const rep_orders_event_types[];
extern const char *const rep_payments_event_types[];
extern const char *const rep_catalog_event_types[];
extern const char *const rep_inventory_event_types[];

/*
 * The consumer's handlers, one per source (moat/events.h): each upcasts
 * the event's data to the current schema and applies it to db. arg is the
 * struct rep_service. Deterministic, and commutative across sources (a
 * replay interleaves the feeds differently from live consumption).
 */
int rep_apply_orders(struct moat_db *db, const struct moat_event *ev, void *arg,
                     const char **why);
int rep_apply_payments(struct moat_db *db, const struct moat_event *ev,
                       void *arg, const char **why);
int rep_apply_catalog(struct moat_db *db, const struct moat_event *ev,
                      void *arg, const char **why);
int rep_apply_inventory(struct moat_db *db, const struct moat_event *ev,
                        void *arg, const char **why);

/* The customer's pseudonym: lower-case hex of HMAC-SHA256(key, id). */
void rep_pseudonym(const struct rep_service *s, const char *customer_id,
                   char out[65]);

/* Register /v1/reports/{name} and POST /v1/admin/etl/products; handlers
 * get s (borrowed). */
int rep_routes_register(struct moat_http_server *server, struct rep_service *s);
/* POST /v1/admin/etl/products (etl.c). */
void rep_handle_etl_products(struct moat_req *r, void *arg);
/* Answer a running ETL's request (503) and free it: at release. */
void rep_etl_cancel(struct rep_service *s);

/* Whether the caller may read reports: a service acting for itself, or
 * for an admin. Otherwise replies 403 and returns false. */
bool rep_authorised(struct moat_req *r);

#endif /* REP_REPORTING_H */
