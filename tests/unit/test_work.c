/* Unit tests for lib/work.c: the blocking-work thread pool. */
#include "moat/common.h"

#include <dirent.h>
#include <event2/event.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "moat/work.h"

#define LOOP_DEADLINE_MS 5000

struct job_rec {
    pthread_t work_thread;
    pthread_t done_thread;
    int work_calls;
    int done_calls;
    bool cancelled;
    struct gate *gate;           /* work blocks on it when set */
    struct gate *open_on_done;   /* done opens it when set */
    struct moat_work_pool *pool; /* done submits into it when set */
    int resubmit_rc;
};

/* A latch a job can wait on, and that tells when the job got there. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered;
    bool open;
};

static void gate_init(struct gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->entered = g->open = false;
}

static void gate_destroy(struct gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

static void gate_pass(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_wait_entered(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->entered)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static int g_done_total;

static void work_fn(void *arg)
{
    struct job_rec *r = arg;
    r->work_thread = pthread_self();
    r->work_calls++;
    if (r->gate)
        gate_pass(r->gate);
}

static void done_fn(void *arg, bool cancelled)
{
    struct job_rec *r = arg;
    r->done_thread = pthread_self();
    r->done_calls++;
    r->cancelled = cancelled;
    g_done_total++;
    if (r->open_on_done)
        gate_open(r->open_on_done);
    if (r->pool)
        r->resubmit_rc = moat_work_submit(r->pool, work_fn, done_fn, r);
}

/* Run the loop until want done callbacks have run (or time runs out). */
static void run_until(struct event_base *base, int want)
{
    uint64_t deadline = moat_mono_ms() + LOOP_DEADLINE_MS;
    while (g_done_total < want && moat_mono_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(g_done_total, want);
}

static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static int setup(void **state)
{
    g_done_total = 0;
    *state = event_base_new();
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    event_base_free(*state);
    return 0;
}

static void test_jobs_run_off_thread_done_on_loop(void **state)
{
    struct event_base *base = *state;
    struct moat_work_pool *p = NULL;
    enum { N = 1000 };
    struct job_rec *recs = moat_xcalloc(N, sizeof(*recs));

    /* No thread before the first submit: Landlock needs one thread. */
    int before = count_threads();
    assert_int_equal(moat_work_pool_new(&p, base, 4), MOAT_OK);
    assert_int_equal(count_threads(), before);
    assert_int_equal(moat_work_pending(p), 0);

    for (int i = 0; i < N; i++)
        assert_int_equal(moat_work_submit(p, work_fn, done_fn, &recs[i]),
                         MOAT_OK);
    int during = count_threads();
    assert_true(during >= before + 4);
    assert_true(moat_work_pending(p) > 0);
    run_until(base, N);
    assert_int_equal(moat_work_pending(p), 0);

    pthread_t self = pthread_self();
    for (int i = 0; i < N; i++) {
        assert_int_equal(recs[i].work_calls, 1);
        assert_int_equal(recs[i].done_calls, 1);
        assert_false(recs[i].cancelled);
        assert_false(pthread_equal(recs[i].work_thread, self));
        assert_true(pthread_equal(recs[i].done_thread, self));
    }
    /* An idle pool leaves nothing registered: the loop can end. */
    assert_int_equal(event_base_dispatch(base), 1);

    moat_work_pool_free(p);
    /* (A sanitizer may have started a helper thread of its own.) */
    assert_true(during - count_threads() >= 4);
    assert_int_equal(g_done_total, N);
    free(recs);
}

static void test_default_threads(void **state)
{
    struct event_base *base = *state;
    struct moat_work_pool *p = NULL;
    enum { N = 200 };
    struct job_rec recs[N] = {{0}};

    /* 0 = one per CPU, at most 8. */
    assert_int_equal(moat_work_pool_new(&p, base, 0), MOAT_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(moat_work_submit(p, work_fn, done_fn, &recs[i]),
                         MOAT_OK);
    run_until(base, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(recs[i].done_calls, 1);
    moat_work_pool_free(p);
}

static void test_done_may_submit(void **state)
{
    struct event_base *base = *state;
    struct moat_work_pool *p = NULL;
    struct job_rec r = {0};

    assert_int_equal(moat_work_pool_new(&p, base, 2), MOAT_OK);
    r.pool = p;
    assert_int_equal(moat_work_submit(p, work_fn, done_fn, &r), MOAT_OK);
    run_until(base, 1);
    assert_int_equal(r.resubmit_rc, MOAT_OK);
    r.pool = NULL;
    run_until(base, 2);
    assert_int_equal(r.work_calls, 2);
    assert_int_equal(r.done_calls, 2);
    moat_work_pool_free(p);
}

static void test_queue_full_is_busy(void **state)
{
    struct event_base *base = *state;
    struct moat_work_pool *p = NULL;
    struct gate g;
    struct job_rec blocker = {0};
    struct job_rec *recs = moat_xcalloc(MOAT_WORK_MAX_QUEUE, sizeof(*recs));

    gate_init(&g);
    blocker.gate = &g;
    assert_int_equal(moat_work_pool_new(&p, base, 1), MOAT_OK);
    assert_int_equal(moat_work_submit(p, work_fn, done_fn, &blocker), MOAT_OK);
    gate_wait_entered(&g);

    for (int i = 0; i < MOAT_WORK_MAX_QUEUE; i++)
        assert_int_equal(moat_work_submit(p, work_fn, done_fn, &recs[i]),
                         MOAT_OK);
    struct job_rec extra = {0};
    assert_int_equal(moat_work_submit(p, work_fn, done_fn, &extra), MOAT_EBUSY);
    assert_int_equal(moat_work_pending(p), MOAT_WORK_MAX_QUEUE + 1);

    gate_open(&g);
    run_until(base, MOAT_WORK_MAX_QUEUE + 1);
    /* A refused job never gets a callback. */
    assert_int_equal(extra.work_calls, 0);
    assert_int_equal(extra.done_calls, 0);
    assert_int_equal(moat_work_submit(p, work_fn, done_fn, &extra), MOAT_OK);
    run_until(base, MOAT_WORK_MAX_QUEUE + 2);

    assert_int_equal(moat_work_submit(NULL, work_fn, done_fn, &extra),
                     MOAT_EINVAL);
    assert_int_equal(moat_work_submit(p, NULL, done_fn, &extra), MOAT_EINVAL);
    moat_work_pool_free(p);
    gate_destroy(&g);
    free(recs);
}

static void test_free_cancels_queued_exactly_once(void **state)
{
    struct event_base *base = *state;
    struct moat_work_pool *p = NULL;
    struct gate g;
    struct job_rec blocker = {0};
    enum { N = 10 };
    struct job_rec recs[N] = {{0}};

    gate_init(&g);
    blocker.gate = &g;
    assert_int_equal(moat_work_pool_new(&p, base, 1), MOAT_OK);
    assert_int_equal(moat_work_submit(p, work_fn, done_fn, &blocker), MOAT_OK);
    gate_wait_entered(&g);
    for (int i = 0; i < N; i++) {
        /* Free cancels these before it joins: the first cancellation lets
         * the running job finish, and each tries to submit again. */
        recs[i].open_on_done = i == 0 ? &g : NULL;
        recs[i].pool = p;
        assert_int_equal(moat_work_submit(p, work_fn, done_fn, &recs[i]),
                         MOAT_OK);
    }
    moat_work_pool_free(p);

    assert_int_equal(g_done_total, N + 1);
    assert_int_equal(blocker.work_calls, 1);
    assert_int_equal(blocker.done_calls, 1);
    assert_false(blocker.cancelled);
    pthread_t self = pthread_self();
    for (int i = 0; i < N; i++) {
        assert_int_equal(recs[i].work_calls, 0);
        assert_int_equal(recs[i].done_calls, 1);
        assert_true(recs[i].cancelled);
        assert_true(pthread_equal(recs[i].done_thread, self));
        assert_int_equal(recs[i].resubmit_rc, MOAT_ECANCELLED);
    }
    assert_true(pthread_equal(blocker.done_thread, self));
    gate_destroy(&g);
}

static void test_free_delivers_finished_jobs(void **state)
{
    struct event_base *base = *state;
    struct moat_work_pool *p = NULL;
    struct job_rec r = {0};

    /* Never started: no thread to join. */
    assert_int_equal(moat_work_pool_new(&p, base, 3), MOAT_OK);
    moat_work_pool_free(p);
    moat_work_pool_free(NULL);

    /* Started on a worker, but the loop never ran: free waits for it
     * and delivers it as done, not cancelled. */
    struct gate g;
    gate_init(&g);
    gate_open(&g);
    r.gate = &g;
    assert_int_equal(moat_work_pool_new(&p, base, 3), MOAT_OK);
    assert_int_equal(moat_work_submit(p, work_fn, done_fn, &r), MOAT_OK);
    gate_wait_entered(&g);
    moat_work_pool_free(p);
    gate_destroy(&g);
    assert_int_equal(r.work_calls, 1);
    assert_int_equal(r.done_calls, 1);
    assert_false(r.cancelled);

    assert_int_equal(moat_work_pool_new(&p, NULL, 1), MOAT_EINVAL);
    assert_int_equal(moat_work_pool_new(&p, base, 1000), MOAT_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_jobs_run_off_thread_done_on_loop,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_may_submit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full_is_busy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_cancels_queued_exactly_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_delivers_finished_jobs, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
