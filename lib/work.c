/*
 * work.c - thread pool for blocking jobs, completions delivered on the
 * event loop (see moat/work.h).
 *
 * Workers hand finished jobs back through a mutex-protected list and wake
 * the loop by writing to an eventfd that a plain read event watches. That
 * works whether or not libevent was made thread-aware with
 * evthread_use_pthreads(), which would have to run before the service
 * creates its event_base. The read event is added only while jobs are
 * pending, so an idle pool never keeps event_base_dispatch() from
 * returning.
 */
#include "moat/common.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "moat/work.h"

#define WORK_MAX_THREADS     64
#define WORK_DEFAULT_THREADS 8

struct job {
    moat_work_fn work;
    moat_work_done_fn done;
    void *arg;
    struct job *next;
};

/* A FIFO of jobs; the head is the oldest. */
struct job_list {
    struct job *head, *tail;
    unsigned len;
};

struct moat_work_pool {
    struct event_base *base;
    struct event *wake_ev; /* EV_READ on efd; added while pending > 0 */
    int efd;
    unsigned nthreads; /* wanted */
    unsigned started;  /* threads running; 0 until the first submit */
    pthread_t *threads;

    /* Loop thread only. */
    unsigned pending; /* submitted, done_fn not yet called */
    bool freeing;

    /* Guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* queue not empty, or stopping */
    struct job_list queue;
    struct job_list finished;
    bool stopping;
    bool wake_sent; /* efd written, loop has not collected yet */
};

static void list_push(struct job_list *l, struct job *j)
{
    j->next = NULL;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->len++;
}

static struct job *list_pop(struct job_list *l)
{
    struct job *j = l->head;
    if (!j)
        return NULL;
    l->head = j->next;
    if (!l->head)
        l->tail = NULL;
    l->len--;
    return j;
}

/* Take the whole list, leaving l empty. */
static struct job_list list_take(struct job_list *l)
{
    struct job_list out = *l;
    l->head = l->tail = NULL;
    l->len = 0;
    return out;
}

static void *worker_main(void *arg)
{
    struct moat_work_pool *p = arg;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->queue.head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        struct job *j = list_pop(&p->queue);
        if (!j)
            break; /* stopping, and free() has taken what was queued */
        pthread_mutex_unlock(&p->mu);
        j->work(j->arg);
        pthread_mutex_lock(&p->mu);
        list_push(&p->finished, j);
        /* One write per batch: the loop collects everything at once. */
        if (!p->wake_sent) {
            uint64_t one = 1;
            ssize_t w;
            do {
                w = write(p->efd, &one, sizeof(one));
            } while (w < 0 && errno == EINTR);
            /* EAGAIN means the counter is already non-zero: still woken. */
            p->wake_sent = true;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void update_wake_event(struct moat_work_pool *p)
{
    if (p->pending > 0)
        event_add(p->wake_ev, NULL);
    else
        event_del(p->wake_ev);
}

/* Run the done callbacks of finished jobs, on the loop thread. */
static void deliver(struct moat_work_pool *p, struct job_list done,
                    bool cancelled)
{
    struct job *j;
    while ((j = list_pop(&done)) != NULL) {
        p->pending--;
        if (j->done)
            j->done(j->arg, cancelled);
        free(j);
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct moat_work_pool *p = arg;
    uint64_t n;

    MOAT_UNUSED(what);
    /* Reset the counter before collecting, so a worker that finishes
     * after we take the list writes again and is not lost. */
    while (read(fd, &n, sizeof(n)) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&p->mu);
    struct job_list done = list_take(&p->finished);
    p->wake_sent = false;
    pthread_mutex_unlock(&p->mu);
    deliver(p, done, false);
    if (!p->freeing)
        update_wake_event(p);
}

int moat_work_pool_new(struct moat_work_pool **out, struct event_base *base,
                       unsigned nthreads)
{
    if (!out)
        return MOAT_EINVAL;
    *out = NULL;
    if (!base || nthreads > WORK_MAX_THREADS)
        return MOAT_EINVAL;
    if (nthreads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = ncpu < 1                      ? 1
                   : ncpu > WORK_DEFAULT_THREADS ? WORK_DEFAULT_THREADS
                                                 : (unsigned)ncpu;
    }

    struct moat_work_pool *p = moat_xcalloc(1, sizeof(*p));
    p->base = base;
    p->nthreads = nthreads;
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        free(p);
        return MOAT_EIO;
    }
    p->wake_ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_wake, p);
    if (!p->wake_ev)
        moat_die("event_new failed");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    *out = p;
    return MOAT_OK;
}

/*
 * Start the workers. Called on the first submit, after the service has
 * confined itself (Landlock needs a single-threaded process). Workers
 * block every signal so SIGTERM and friends reach the loop thread.
 */
static int start_threads(struct moat_work_pool *p)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    p->threads = moat_xcalloc(p->nthreads, sizeof(*p->threads));
    for (unsigned i = 0; i < p->nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0)
            break;
        p->started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* Fewer threads than asked still make progress. */
    return p->started > 0 ? MOAT_OK : MOAT_EIO;
}

int moat_work_submit(struct moat_work_pool *p, moat_work_fn work,
                     moat_work_done_fn done, void *arg)
{
    if (!p || !work)
        return MOAT_EINVAL;
    if (p->freeing)
        return MOAT_ECANCELLED;
    if (p->started == 0) {
        int rc = start_threads(p);
        if (rc != MOAT_OK)
            return rc;
    }

    pthread_mutex_lock(&p->mu);
    if (p->queue.len >= MOAT_WORK_MAX_QUEUE) {
        pthread_mutex_unlock(&p->mu);
        return MOAT_EBUSY;
    }
    struct job *j = moat_xmalloc(sizeof(*j));
    j->work = work;
    j->done = done;
    j->arg = arg;
    list_push(&p->queue, j);
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);

    if (p->pending++ == 0)
        update_wake_event(p);
    return MOAT_OK;
}

unsigned moat_work_pending(const struct moat_work_pool *p)
{
    return p ? p->pending : 0;
}

void moat_work_pool_free(struct moat_work_pool *p)
{
    if (!p)
        return;
    p->freeing = true;

    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    struct job_list cancelled = list_take(&p->queue);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    /* Jobs that never started: work_fn never runs, done_fn says so. */
    deliver(p, cancelled, true);

    for (unsigned i = 0; i < p->started; i++)
        pthread_join(p->threads[i], NULL);

    /* Everything that ran, including what finished during the joins. */
    struct job_list done = list_take(&p->finished);
    deliver(p, done, false);

    event_free(p->wake_ev);
    close(p->efd);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}
