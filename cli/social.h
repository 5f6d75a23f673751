/*
 * cli/social.h - what `moat social seed`, `bench` (social.c) and
 * `msgbench` (msgbench.c) share: the seeded accounts, the gateway, and
 * calls through it retried after 429, 502, 503 and transport errors.
 *
 * Ownership: struct social owns its strings, accounts, fetcher and graph
 * (social_free). A struct call owns its strings and is freed after its
 * done callback returns; the res passed to that callback is borrowed.
 */
#ifndef MOAT_CLI_SOCIAL_H
#define MOAT_CLI_SOCIAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "deploy.h"
#include "socialgraph.h"

/* Registrations and logins at once: each is an Argon2id hash in users
 * (2 threads by default), and one that waits in users' queue longer than
 * the gateway's upstream timeout (2 s) is a 503 whose hash users still
 * computes; a retry then adds another, so more at once only slows down. */
#define PASSWORD_PARALLEL 4

struct account {
    char *id; /* usr_..., NULL until known */
    char *email;
    char *handle;
    char *auth; /* "Authorization: Bearer ...", NULL until logged in */
    /* Its registration answered 409 after an attempt with no definite
     * answer (no reply, 502, 503): users may have carried that attempt
     * out. Its created_at, read once logged in, says which run made it. */
    bool unsure_409;
};

struct social {
    const struct deploy *d;
    char *gw; /* gateway base URL */
    char *password;
    struct cli_fetcher *f;
    struct account *acct;
    uint32_t n;
    uint64_t seed;
    struct social_graph g;
    struct call *retry; /* calls waiting to be sent again */
    size_t calls_done;
    int64_t users_since_s; /* wall clock when the users phase began */
    /* seed's counts */
    size_t registered, existing, logged_in, profiles, connections, follows,
        posts, failed, limited;
};

struct call;
/* status 0: no answer (after the retries). */
typedef void (*call_done)(struct call *c, long status, json_t *res);

struct call {
    struct social *s;
    char *method, *path, *body, *auth, *idem;
    call_done done;
    uint32_t u, v; /* the users it concerns */
    unsigned attempts;
    bool unsure; /* an earlier attempt may have been carried out */
    double due;
    struct call *next;
};

/* The gateway and the shared password; MOAT_OK or an error after printing
 * why. */
int social_open(struct social *s, const struct deploy *d);
void social_free(struct social *s);
/* <var_dir>/social-seed.json. Caller frees. */
char *social_seed_path(const struct deploy *d);
/* n accounts (emails and handles of s->seed), none registered yet. */
void social_accounts_new(struct social *s, uint32_t n);
/* Read the seed file into s (accounts with their ids, the graph's size
 * and seed); with match, only a file of want_seed and want_users counts.
 * MOAT_ENOTFOUND when there is none (or another one). */
int social_load_seed(struct social *s, bool match, uint64_t want_seed,
                     uint32_t want_users, size_t *edges, unsigned *ppu);
/* Register every account of s (409, already registered, is fine) and log
 * each in, through s->f; failures are counted in s->failed. A 409 that
 * answers a retry of this run's own registration counts as registered:
 * the account's created_at (GET /api/v1/users/me) tells it from one that
 * was there before. */
void social_users_phase(struct social *s);
/* Queue a login of account i (sets its id and auth when it succeeds). */
void social_login(struct social *s, uint32_t i);
/* A call as account `as` (UINT32_MAX: anonymous), to send with
 * social_call_send() once its other fields are set; path and body are
 * taken. */
struct call *social_call_new(struct social *s, uint32_t as, const char *method,
                             char *path, char *body, call_done done);
void social_call_send(struct call *c);
/* Run every queued call (and those their callbacks queue) to the end,
 * printing progress as `what` every few seconds. */
void social_run_calls(struct social *s, const char *what);

/* `moat social msgbench` (msgbench.c). */
int social_cmd_msgbench(int argc, char **argv);

#endif /* MOAT_CLI_SOCIAL_H */
