/*
 * cli/fetch.h - many HTTP calls at once from one thread, for the commands
 * that read or drive a whole deployment (audit, chaos, bench).
 *
 * A fetcher is a libcurl multi handle with a FIFO of calls waiting for a
 * slot: at most max_parallel run at once, over connections curl keeps
 * alive. Calls complete only inside cli_fetcher_run() (never inside
 * cli_fetch()), each calling its callback exactly once; a callback may
 * queue more calls. Proxies from the environment are ignored (loopback).
 *
 * Ownership: cli_fetch() copies the method, URL, headers and body. The
 * result passed to a callback (and its body) belongs to the fetcher and is
 * valid only during the callback. Not thread-safe.
 */
#ifndef MOAT_CLI_FETCH_H
#define MOAT_CLI_FETCH_H

#include <stddef.h>
#include <stdint.h>

#define CLI_FETCH_MAX_BODY (64u << 20) /* a response beyond is MOAT_ETOOBIG */

struct cli_fetch_result {
    int err;           /* MOAT_OK, MOAT_ETIMEDOUT, MOAT_ETOOBIG, MOAT_EIO, or
                          MOAT_ECANCELLED (cli_fetcher_free) */
    long status;       /* HTTP status; 0 when err != MOAT_OK */
    const char *body;  /* NUL-terminated, "" when empty; never NULL */
    size_t body_len;   /* bytes in body */
    uint64_t start_ms; /* monotonic ms when the call started running */
    double elapsed_ms; /* from start to completion */
};

typedef void (*cli_fetch_cb)(const struct cli_fetch_result *r, void *arg);

struct cli_fetcher;

/* max_parallel >= 1. Returns NULL when libcurl cannot start. */
struct cli_fetcher *cli_fetcher_new(unsigned max_parallel);
/* Completes every queued or running call with MOAT_ECANCELLED (their
 * callbacks run inside it, and must not touch f), then frees f. */
void cli_fetcher_free(struct cli_fetcher *f);

/*
 * Queue a call. headers: NULL-terminated "Name: value" lines, or NULL. A
 * body (NULL for none) is sent as application/json; a POST without one
 * sends an empty body. timeout_ms bounds the call once it runs.
 */
void cli_fetch(struct cli_fetcher *f, const char *method, const char *url,
               const char *const *headers, const char *body, long timeout_ms,
               cli_fetch_cb cb, void *arg);

/*
 * Move transfers for up to wait_ms (0: only what is ready now) and call
 * the callbacks of the calls that completed. Returns the number of calls
 * still queued or running.
 */
size_t cli_fetcher_run(struct cli_fetcher *f, int wait_ms);
/* Run until no call is queued or running. */
void cli_fetcher_drain(struct cli_fetcher *f);
size_t cli_fetcher_pending(const struct cli_fetcher *f);

#endif /* MOAT_CLI_FETCH_H */
