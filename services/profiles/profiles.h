/*
 * profiles.h - the profiles service's state and the seams between its
 * files: main.c (lifecycle), handlers.c (HTTP <-> JSON), events.c (users'
 * events), profile.c (field rules), store.c (the database: the only code
 * that knows the schema and the only code that seals).
 */
#ifndef PRO_PROFILES_H
#define PRO_PROFILES_H

#include "moat/crypto.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/service.h"
#include "store.h"

struct event;

/* Per-process state, created by init and freed by release in main.c. */
struct pro_service {
    struct moat_service *svc;       /* borrowed */
    struct moat_keyring *kr;        /* owned */
    struct pro_store *store;        /* owned */
    struct moat_consumer *consumer; /* owned */
    struct moat_keys *keys;         /* owned: /v1/admin/keys */
    const char *users_url;          /* from the environment */
};

/* Register the /v1/profiles routes; handlers get ps (borrowed). */
int pro_routes_register(struct pro_service *ps);

/* users' event types profiles consumes (NULL-terminated). */
extern const char *const pro_users_events[];
/* The consumer handler of users' events; arg is the pro_service. */
int pro_apply_user_event(struct moat_db *db, const struct moat_event *ev,
                         void *arg, const char **why);

#endif /* PRO_PROFILES_H */
