/*
 * live.c - parked long polls per conversation (see live.h).
 *
 * A small chained hash table maps a conversation id to its list of
 * parked polls; a conversation's entry exists while it has at least one.
 *
 *   park ──> parked ──(wake: something after S)──> answered
 *              │ ──(timer / drain / free: force)──> answered
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "live.h"
#include "moat/log.h"

#define BUCKETS 256 /* a power of two */

struct waiter {
    struct msg_live *live;
    struct live_conv *conv;
    struct moat_req *req; /* parked; answered exactly once */
    struct event *timer;
    struct msg_poll poll;
    struct waiter *prev, *next;
};

struct live_conv {
    char id[32];
    struct waiter *head, *tail;
    struct live_conv *next; /* in its bucket */
};

struct msg_live {
    struct event_base *base;
    msg_live_answer_fn answer;
    void *arg;
    unsigned max_parked, parked;
    struct moat_metric_series *gauge;
    struct live_conv *buckets[BUCKETS];
};

/* FNV-1a. */
static size_t bucket_of(const char *id)
{
    uint32_t h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h & (BUCKETS - 1);
}

static struct live_conv **conv_slot(struct msg_live *l, const char *id)
{
    struct live_conv **p = &l->buckets[bucket_of(id)];
    while (*p && strcmp((*p)->id, id) != 0)
        p = &(*p)->next;
    return p;
}

static void gauge_update(struct msg_live *l)
{
    if (l->gauge)
        moat_metric_set(l->gauge, l->parked);
}

/* Unlink w (and its conversation's entry once empty) and free it; the
 * request is the caller's to answer. */
static struct moat_req *waiter_remove(struct msg_live *l, struct waiter *w)
{
    struct live_conv *c = w->conv;
    if (w->prev)
        w->prev->next = w->next;
    else
        c->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        c->tail = w->prev;
    if (!c->head) {
        struct live_conv **slot = conv_slot(l, c->id);
        *slot = c->next;
        free(c);
    }
    struct moat_req *req = w->req;
    event_free(w->timer);
    free(w);
    l->parked--;
    gauge_update(l);
    return req;
}

static void answer_now(struct msg_live *l, struct waiter *w)
{
    struct msg_poll p = w->poll;
    struct moat_req *req = waiter_remove(l, w);
    l->answer(req, &p, true, l->arg);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;
    answer_now(w->live, w);
}

struct msg_live *msg_live_new(struct event_base *base,
                              struct moat_metrics *metrics, unsigned max_parked,
                              msg_live_answer_fn answer, void *arg)
{
    struct msg_live *l = moat_xcalloc(1, sizeof(*l));
    l->base = base;
    l->answer = answer;
    l->arg = arg;
    l->max_parked = max_parked;
    struct moat_metric_family *f =
        metrics ? moat_metrics_family(
                      metrics, MOAT_GAUGE, "moat_messaging_parked_polls",
                      "Long polls waiting for a message", NULL, NULL, 0)
                : NULL;
    l->gauge = f ? moat_metric_single(f) : NULL;
    gauge_update(l);
    return l;
}

void msg_live_release_all(struct msg_live *l)
{
    for (size_t b = 0; l && b < BUCKETS; b++)
        while (l->buckets[b])
            answer_now(l, l->buckets[b]->head);
}

void msg_live_free(struct msg_live *l)
{
    if (!l)
        return;
    msg_live_release_all(l);
    free(l);
}

int msg_live_park(struct msg_live *l, struct moat_req *req,
                  const struct msg_poll *p, unsigned wait_ms)
{
    if (l->parked >= l->max_parked)
        return MOAT_EBUSY;
    struct live_conv **slot = conv_slot(l, p->conv);
    if (!*slot) {
        *slot = moat_xcalloc(1, sizeof(**slot));
        snprintf((*slot)->id, sizeof((*slot)->id), "%s", p->conv);
    }
    struct live_conv *c = *slot;
    struct waiter *w = moat_xcalloc(1, sizeof(*w));
    w->live = l;
    w->conv = c;
    w->req = req;
    w->poll = *p;
    w->timer = evtimer_new(l->base, on_timeout, w);
    if (!w->timer)
        moat_die("cannot create a long-poll timer");
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    evtimer_add(w->timer, &tv);
    w->prev = c->tail;
    if (c->tail)
        c->tail->next = w;
    else
        c->head = w;
    c->tail = w;
    l->parked++;
    gauge_update(l);
    return MOAT_OK;
}

void msg_live_wake(struct msg_live *l, const char *conv)
{
    struct live_conv *c = *conv_slot(l, conv);
    if (!c)
        return;
    /* The conversation's entry goes away with its last waiter: stop at
     * the one that was last when the wake began. */
    struct waiter *w = c->head, *last = c->tail, *next;
    for (bool done = false; w && !done; w = next) {
        done = w == last;
        next = w->next;
        if (l->answer(w->req, &w->poll, false, l->arg))
            waiter_remove(l, w);
    }
}

unsigned msg_live_parked(const struct msg_live *l)
{
    return l ? l->parked : 0;
}
