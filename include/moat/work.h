/*
 * moat/work.h - a small thread pool for blocking work (password hashing,
 * bulk re-encryption) that must not run on the event loop thread.
 *
 * work_fn runs on a worker thread: it may compute, but must not touch the
 * event loop, the HTTP request or a database connection owned by the loop.
 * done_fn then runs on the loop thread, where it may reply to a request.
 * Each submitted job gets exactly one done_fn call, including at
 * moat_work_pool_free() (jobs not yet started get done_fn with cancelled =
 * true and work_fn never runs).
 *
 * Threads start on the first submit, not at creation: a service confines
 * itself with Landlock before it serves (moat/sandbox.h), which requires a
 * single-threaded process.
 *
 * Workers wake the loop through an eventfd watched by an ordinary read
 * event, so libevent need not be thread-enabled (no evthread_use_pthreads).
 * That event is registered only while jobs are pending: an idle pool does
 * not keep event_base_dispatch() running. All functions below are for the
 * loop thread only; a done_fn must not free the pool.
 */
#ifndef MOAT_WORK_H
#define MOAT_WORK_H

#include <stdbool.h>

struct event_base;
struct moat_work_pool;

typedef void (*moat_work_fn)(void *arg);
typedef void (*moat_work_done_fn)(void *arg, bool cancelled);

#define MOAT_WORK_MAX_QUEUE 1024 /* submits beyond fail with MOAT_EBUSY */

/* nthreads 0 = number of CPUs (at most 8); at most 64. Caller frees with
 * moat_work_pool_free(). */
int moat_work_pool_new(struct moat_work_pool **out, struct event_base *base,
                       unsigned nthreads);
/*
 * Stops accepting jobs (submit from a done_fn then gets MOAT_ECANCELLED),
 * calls done_fn(arg, true) on this thread for every job not yet started,
 * waits for the running ones, then calls their done_fn(arg, false). Blocks
 * as long as a running work_fn does.
 */
void moat_work_pool_free(struct moat_work_pool *p);
/* Queue a job; done may be NULL. MOAT_EBUSY when MOAT_WORK_MAX_QUEUE jobs
 * are waiting (caller answers 503); MOAT_EIO when no thread can start. On
 * error neither callback is ever called. */
int moat_work_submit(struct moat_work_pool *p, moat_work_fn work,
                     moat_work_done_fn done, void *arg);
/* Jobs whose done_fn has not run yet (queued, running or finished and
 * waiting for the loop). */
unsigned moat_work_pending(const struct moat_work_pool *p);

#endif /* MOAT_WORK_H */
