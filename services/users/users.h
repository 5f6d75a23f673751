/*
 * users.h - the users service's state and the seams between its files:
 *
 *   main.c      lifecycle: configuration, keyring, JWT secret, database,
 *               audit log, work pool, rate limiters, admin bootstrap;
 *   handlers.c  /v1/users: registration, profiles, admin listing, plus
 *               the reply and authorisation helpers the other files share;
 *   access.c    role changes, suspension, moderation actions;
 *   tokens.c    /v1/auth: login, refresh-token rotation, logout;
 *   keys.c      /v1/admin/keys (moat/keys.h) over the store;
 *   password.c  Argon2id hashing and verification on the work pool;
 *   user.c      the account model (ids, field rules, JSON);
 *   store.c     the database: schema, queries, sealing (the only code that
 *               knows the schema).
 *
 * Everything runs on the event loop thread except password.c's work
 * functions, which touch nothing but their own job.
 *
 * Ownership: struct usr_service (svc->impl) owns everything it points to
 * except svc, which is the process's service skeleton (borrowed).
 */
#ifndef USR_USERS_H
#define USR_USERS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "moat/audit.h"
#include "moat/crypto.h"
#include "moat/http.h"
#include "moat/ratelimit.h"
#include "moat/service.h"
#include "moat/work.h"
#include "store.h"
#include "user.h"

struct event;

#define USR_JWT_ISSUER   "moat-users"
#define USR_JWT_AUDIENCE "moat"
#define USR_JWT_KEY_MAX  256 /* bytes of MOAT_JWT_SECRET after decoding */

/* Configuration from MOAT_USERS_* (see docs/users.md). */
struct usr_config {
    int64_t access_ttl_s;         /* MOAT_USERS_ACCESS_TTL_S, 900 */
    int64_t refresh_ttl_s;        /* MOAT_USERS_REFRESH_TTL_S, 30 days */
    int64_t login_max_failures;   /* MOAT_USERS_LOGIN_MAX_FAILURES, 5 */
    int64_t login_window_s;       /* MOAT_USERS_LOGIN_WINDOW_S, 900 */
    int64_t login_per_ip_per_min; /* MOAT_USERS_LOGIN_PER_IP_PER_MIN, 30 */
    int64_t hash_threads;         /* MOAT_USERS_HASH_THREADS, 2 */
    int64_t hash_queue_max;       /* MOAT_USERS_HASH_QUEUE_MAX, 64 */
    int64_t rekey_batch;          /* MOAT_USERS_REKEY_BATCH, 100 */
    int64_t rekey_pause_ms;       /* MOAT_USERS_REKEY_PAUSE_MS, 0 */
};

enum usr_login_outcome {
    USR_LOGIN_OK,
    USR_LOGIN_FAILED,
    USR_LOGIN_RATE_LIMITED,
    USR_LOGIN_OUTCOMES,
};

struct moat_keys;

struct usr_service {
    struct moat_service *svc; /* borrowed */
    struct usr_config cfg;
    struct moat_keyring *kr;        /* owned */
    struct usr_store *store;        /* owned */
    struct moat_audit *audit;       /* owned */
    struct moat_work_pool *pool;    /* owned */
    struct moat_ratelimit *rl_ip;   /* owned: login attempts per address */
    struct moat_ratelimit *rl_acct; /* owned: login failures per account */
    uint8_t jwt_key[USR_JWT_KEY_MAX];
    size_t jwt_keylen;
    /* Argon2id hash of a random password, verified against when the
     * email is unknown so that both cases cost the same. */
    char dummy_hash[MOAT_PASSWORD_HASH_MAX];
    struct moat_keys *keys; /* owned; moat/keys.h */
    /* Borrowed from the service's metrics registry. */
    struct moat_metric_series *m_logins[USR_LOGIN_OUTCOMES];
};

/* ---- handlers.c: routes and shared helpers ---- */

int usr_routes_register(struct usr_service *usr);

/*
 * The end user behind the request, or NULL after replying 401 (no user:
 * the route needs one).
 */
const struct moat_principal *usr_require_user(struct moat_req *r);
/* The same plus an admin role; NULL after replying 401 or 403. */
const struct moat_principal *usr_require_admin(struct moat_req *r);
/* Reply for a store failure that is not the client's fault (503 busy,
 * 500 integrity, 500 otherwise). what: "read the user", ... */
void usr_reply_store_fault(struct moat_req *r, int rc, const char *what);
/* 503 with Retry-After when the hashing queue is full. */
void usr_reply_busy(struct moat_req *r);
/* 422 with every error collected in v. */
void usr_reply_validation(struct moat_req *r, struct moat_validation *v,
                          const char *detail);
/*
 * Append an audit record: actor is the request's end user ("anonymous"
 * without one), subject a user id (may be NULL), detail borrowed (may be
 * NULL; never plaintext personal data). Failures are logged: the action
 * already happened and the audit log is evidence, not a gate.
 */
void usr_audit(struct usr_service *usr, struct moat_req *r, const char *action,
               const char *subject, const char *outcome, json_t *detail);

/* ---- access.c: role, suspension, moderation actions ---- */

int usr_access_routes_register(struct usr_service *usr);
/* Read a JSON object body or reply (415, 400, 422) and return false. */
bool usr_read_object(struct moat_req *r, json_t **body);

/* ---- tokens.c ---- */

int usr_auth_routes_register(struct usr_service *usr);

/* ---- keys.c ---- */

/* moat/keys.h's routes over users' store; resumes an interrupted pass. */
int usr_keys_routes_register(struct usr_service *usr);

/* ---- password.c ---- */

struct usr_pw_job;
/*
 * Called on the loop thread with the finished job (cancelled: the pool
 * shut down before running it). It must reply to job->req. The job is
 * freed (and its secrets wiped) after it returns.
 */
typedef void (*usr_pw_done_fn)(struct usr_pw_job *job, bool cancelled);

struct usr_pw_job {
    /* inputs, set before usr_pw_submit */
    char verify_hash[MOAT_PASSWORD_HASH_MAX]; /* "" = no verification */
    char *verify_password; /* owned, wiped; NULL = no verification */
    char *new_password;    /* owned, wiped; NULL = nothing to hash */
    /* outputs */
    bool verified; /* verify_password matched verify_hash */
    int hash_rc;   /* MOAT_OK when new_hash holds a hash */
    char new_hash[MOAT_PASSWORD_HASH_MAX];
    /* continuation */
    usr_pw_done_fn done;
    struct usr_service *usr;
    struct moat_req *req;
    void *ctx; /* the caller's, freed by ctx_free */
    void (*ctx_free)(void *ctx);
};

/* A zeroed job; caller fills it in and submits it. */
struct usr_pw_job *usr_pw_job_new(struct usr_service *usr, struct moat_req *req,
                                  usr_pw_done_fn done);
/*
 * Queue the job: a new hash is computed only when there is nothing to
 * verify or the verification succeeded. On MOAT_EBUSY (queue full) the
 * job is freed and the caller replies 503; otherwise done runs later.
 */
int usr_pw_submit(struct usr_pw_job *job);

/*
 * Wipe (sodium_memzero) every string in a request document that can hold a
 * password or token (login, registration, update, refresh, logout), then
 * drop the reference. Only for a document no one else holds. NULL is fine.
 * The request body's own bytes are wiped by the HTTP layer.
 */
void usr_json_release_secret(json_t *doc);
/*
 * True when usr_pw_submit would refuse a job now (the queue is full). A
 * caller checks it before spending a per-account attempt, so a 503 costs
 * the account nothing.
 */
bool usr_pw_busy(const struct usr_service *usr);

#endif /* USR_USERS_H */
