/*
 * console.h - the console service (docs/console.md): the deployment's web
 * console for its operator. It owns no database: it serves the pages
 * embedded in its binary (services/console/static, assets.c generated at
 * build time) and reads every other service only through their HTTP APIs,
 * signed as the operator with the key `moat up` hands it
 * (MOAT_OPERATOR_KEY); the supervisor's state comes from the copy `moat
 * up` writes into the console's data directory (<data_dir>/moat.state).
 *
 * Ownership: struct console is created by console_init (main.c) and freed
 * by console_free; everything it points to is its own.
 */
#ifndef MOAT_CONSOLE_H
#define MOAT_CONSOLE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "moat/service.h"

#define CONSOLE_MAX_SESSIONS     32
#define CONSOLE_SESSION_TTL_S    (12 * 3600)
#define CONSOLE_MAX_WAITERS      64 /* parked /api/state long polls */
#define CONSOLE_TICK_MS          50 /* how often the state copy is checked */
#define CONSOLE_MAX_WAIT_S       25 /* longest /api/state wait */
#define CONSOLE_STATE_MAX        (1u << 20)
#define CONSOLE_COOKIE           "moat_console"
#define CONSOLE_LOGIN_FREE_FAILS 5 /* then one login attempt per second */

/* One embedded file of services/console/static (assets.c). */
struct console_asset {
    const char *path; /* "index.html", "console.js" */
    const unsigned char *data;
    size_t len;
};
extern const struct console_asset console_assets[];
extern const size_t console_nassets;

struct console_session {
    char token[65]; /* hex of 32 random bytes; "" = free slot */
    int64_t expires_ms;
};

struct console_waiter {
    struct moat_req *req; /* NULL = free slot */
    int64_t after;        /* answer once version > after */
    int64_t deadline_ms;
};

struct console {
    struct moat_service *svc;
    struct moat_auth *op;    /* signs as the operator */
    const char *password;    /* MOAT_CONSOLE_PASSWORD (environment) */
    const char *gateway_url; /* MOAT_CONSOLE_GATEWAY_URL, may be NULL */
    char *state_path;        /* <data_dir>/moat.state */
    char *state_text;        /* last read copy, "" before the first */
    json_t *state;           /* parsed state_text, NULL before */
    int64_t version;         /* bumped whenever the copy changes */
    ino_t state_ino;         /* the copy last read: inode and mtime */
    struct timespec state_mtime;
    struct event *tick;
    struct moat_http_client *http;
    struct console_session sessions[CONSOLE_MAX_SESSIONS];
    int login_fails;       /* wrong passwords in a row */
    int64_t next_login_ms; /* no attempt before, once over the free ones */
    struct console_waiter waiters[CONSOLE_MAX_WAITERS];
};

/* handlers.c: register the routes. */
int console_routes_register(struct console *c);
/* handlers.c: answer every parked long poll whose condition or deadline
 * came (all of them when stopping). */
void console_wake_waiters(struct console *c, bool stopping);

#endif /* MOAT_CONSOLE_H */
