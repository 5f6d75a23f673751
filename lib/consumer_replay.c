/*
 * consumer_replay.c - rebuilding a consumer's view from sequence 0
 * (POST /v1/admin/replay) and verifying it (?verify=1): the rebuild goes
 * into a scratch view made by the storage (a SQLite file, or an LMDB
 * environment of the service's view ops), through the same sources and
 * handlers, and is compared with the live view at exactly the same
 * positions (see moat/events.h for the protocol).
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consumer_internal.h"
#include "moat/log.h"

#define VERIFY_PULL_LIMIT MOAT_FEED_MAX_LIMIT
#define ERROR_MAX         CONSUMER_ERROR_MAX

/* ---- verification: rebuild into a scratch database and compare ---- */

struct vsrc {
    struct verify *v;
    struct sub *sub;
    int64_t cursor;     /* applied to the scratch up to here */
    int64_t target;     /* the live cursor to reach */
    json_t *parked;     /* {subject: seq} parked in the rebuild */
    json_t *parked_seq; /* [seq...] parked in the rebuild, ascending */
    bool pulling, done;
};

struct verify {
    struct moat_consumer *c;
    struct moat_req *req;             /* answered once; NULL after */
    struct consumer_scratch *scratch; /* owned; NULL once closed */
    struct vsrc *srcs;
    size_t n;
    int64_t events; /* events the rebuild went through */
    bool final;     /* live consumption paused for the last stretch */
    bool over;      /* answered; waiting for pulls in flight to return */
    int inflight;
    json_t *diffs;
};

static void verify_free(struct verify *v)
{
    v->c->ops->scratch_free(v->c, v->scratch);
    for (size_t i = 0; i < v->n; i++) {
        json_decref(v->srcs[i].parked);
        json_decref(v->srcs[i].parked_seq);
    }
    free(v->srcs);
    json_decref(v->diffs);
    free(v);
}

/* The verification is over (answered): resume live consumption and free
 * it, or leave that to the last pull still in flight. */
static void verify_end(struct verify *v)
{
    struct moat_consumer *c = v->c;
    v->over = true;
    c->ops->scratch_free(c, v->scratch);
    v->scratch = NULL;
    if (v->final) {
        v->final = false;
        consumer_resume(c);
    }
    if (v->inflight == 0) {
        if (c->verify == v)
            c->verify = NULL;
        verify_free(v);
    }
}

MOAT_PRINTF(3, 4)
static void verify_fail(struct verify *v, int status, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    moat_log(MOAT_LOG_ERROR, "replay verification failed", "{s:s}", "error",
             detail);
    if (v->req) {
        moat_req_reply_problem(v->req, status, "%s", detail);
        v->req = NULL;
    }
    verify_end(v);
}

/* Apply one event to the scratch database the way the live loop would
 * have: same type filter, same parking, same handler. */
static int verify_apply(struct vsrc *vs, json_t *ce, int64_t seq)
{
    struct verify *v = vs->v;
    struct sub *s = vs->sub;
    struct moat_event ev;
    char why[ERROR_MAX];

    v->events++;
    if (!consumer_wants_type(s, ce))
        return MOAT_OK;
    bool park = consumer_parse_event(ce, s->src->name, seq, &ev, why,
                                     sizeof(why)) != MOAT_OK ||
                json_object_get(vs->parked, ev.subject) != NULL;
    /* A deterministic handler fails the same way each time; the attempts
     * follow each other without the live loop's delays. */
    const struct consumer_storage_ops *ops = v->c->ops;
    for (int attempt = 0; !park && attempt < MOAT_CONSUMER_MAX_ATTEMPTS;
         attempt++) {
        if (ops->scratch_begin(v->scratch) != MOAT_OK)
            return MOAT_EDB;
        if (consumer_run_handler(s, v->scratch, &ev, why, sizeof(why)) ==
            MOAT_OK)
            return ops->scratch_commit(v->scratch) == MOAT_OK ? MOAT_OK
                                                              : MOAT_EDB;
        ops->scratch_rollback(v->scratch);
        park = attempt + 1 == MOAT_CONSUMER_MAX_ATTEMPTS;
    }
    if (!json_object_get(vs->parked, ev.subject))
        json_object_set_new(vs->parked, ev.subject, json_integer(seq));
    json_array_append_new(vs->parked_seq, json_integer(seq));
    return MOAT_OK;
}

static int collect_seq(const struct consumer_dead *d, void *arg)
{
    json_array_append_new(arg, json_integer(d->seq));
    return 0;
}

/* Differences between the live dead letters of vs (up to its target) and
 * the rebuild's. */
static int compare_dead(struct verify *v, struct vsrc *vs)
{
    json_t *live = json_array();
    int rc = v->c->ops->dead_visit(v->c, vs->sub->src->name, NULL, false,
                                   INT64_MAX, collect_seq, live, NULL);
    if (rc != MOAT_OK) {
        json_decref(live);
        return rc;
    }
    const char *name = vs->sub->src->name;
    size_t i = 0, k = 0, n = json_array_size(vs->parked_seq);
    size_t nlive = json_array_size(live);
    for (;;) {
        int64_t l =
            k < nlive ? json_integer_value(json_array_get(live, k)) : INT64_MAX;
        if (l > vs->target)
            l = INT64_MAX; /* parked live after the rebuild's end */
        int64_t r = i < n
                        ? json_integer_value(json_array_get(vs->parked_seq, i))
                        : INT64_MAX;
        if (l == INT64_MAX && r == INT64_MAX)
            break;
        if (l == r) {
            i++;
            k++;
        } else if (r < l) {
            json_array_append_new(
                v->diffs,
                json_sprintf("%s seq %lld: parked by the rebuild but applied "
                             "or skipped live",
                             name, (long long)r));
            i++;
        } else {
            json_array_append_new(
                v->diffs,
                json_sprintf("%s seq %lld: a dead letter live but applied by "
                             "the rebuild",
                             name, (long long)l));
            k++;
        }
    }
    json_decref(live);
    return MOAT_OK;
}

static void verify_finish(struct verify *v)
{
    struct moat_consumer *c = v->c;
    for (size_t i = 0; i < v->n; i++) {
        if (compare_dead(v, &v->srcs[i]) != MOAT_OK) {
            verify_fail(v, 500, "cannot read the dead letters");
            return;
        }
    }
    int rc = c->ops->compare(c, v->scratch, v->diffs);
    if (rc != MOAT_OK) {
        verify_fail(v, 500, "the view comparison failed: %s",
                    moat_strerror(rc));
        return;
    }
    json_t *sources = json_object();
    for (size_t i = 0; i < v->n; i++)
        json_object_set_new(sources, v->srcs[i].sub->src->name,
                            json_integer(v->srcs[i].target));
    json_t *body =
        json_pack("{s:b, s:O, s:I, s:o}", "identical",
                  json_array_size(v->diffs) == 0, "differences", v->diffs,
                  "events", (json_int_t)v->events, "sources", sources);
    moat_log(MOAT_LOG_INFO, "replay verification done", "{s:b, s:I, s:I}",
             "identical", json_array_size(v->diffs) == 0, "differences",
             (json_int_t)json_array_size(v->diffs), "events",
             (json_int_t)v->events);
    moat_req_reply_json(v->req, 200, body);
    v->req = NULL;
    verify_end(v);
}

static void on_verify_pulled(int err, json_t *events, int64_t head,
                             int64_t next_after, void *arg);

/* Start the pulls the rebuild still needs; when none is left, move to the
 * final stretch, then compare. */
static void verify_step(struct verify *v)
{
    bool all_done = true;
    for (size_t i = 0; i < v->n; i++) {
        struct vsrc *vs = &v->srcs[i];
        if (vs->cursor >= vs->target)
            vs->done = true;
        if (vs->done)
            continue;
        all_done = false;
        if (vs->pulling)
            continue;
        struct moat_event_source *src = vs->sub->src;
        int rc = src->ops->pull(src, vs->cursor, VERIFY_PULL_LIMIT, 0,
                                on_verify_pulled, vs);
        if (rc != MOAT_OK) {
            verify_fail(v, 502, "cannot read source %s: %s", src->name,
                        moat_strerror(rc));
            return;
        }
        vs->pulling = true;
        v->inflight++;
    }
    if (!all_done)
        return;
    if (v->final) {
        verify_finish(v);
        return;
    }
    /*
     * The rebuild reached the live cursors captured at the start, but the
     * live consumer kept going meanwhile. Pause it now - it finishes
     * nothing half-way, each event is one callback - and take its cursors
     * as the final targets: the rebuild catches up the last few events
     * and both sides are compared at exactly the same positions.
     */
    v->final = true;
    consumer_pause(v->c);
    int64_t more = 0;
    for (size_t i = 0; i < v->n; i++) {
        more += v->srcs[i].sub->cursor - v->srcs[i].target;
        v->srcs[i].target = v->srcs[i].sub->cursor;
        v->srcs[i].done = false;
    }
    moat_log(MOAT_LOG_DEBUG, "replay verification: live paused, last stretch",
             "{s:I}", "events", (json_int_t)more);
    verify_step(v);
}

static void on_verify_pulled(int err, json_t *events, int64_t head,
                             int64_t next_after, void *arg)
{
    struct vsrc *vs = arg;
    struct verify *v = vs->v;
    vs->pulling = false;
    v->inflight--;
    if (v->over) {
        verify_end(v);
        return;
    }
    const char *name = vs->sub->src->name;
    if (err != MOAT_OK) {
        verify_fail(v, 502, "cannot read source %s: %s", name,
                    err == MOAT_ENOTFOUND
                        ? "its retention deleted events this view was "
                          "built from"
                        : moat_strerror(err));
        return;
    }
    if (json_array_size(events) == 0 && next_after <= vs->cursor) {
        json_array_append_new(
            v->diffs,
            json_sprintf("%s: the feed ends at seq %lld, before "
                         "the live cursor %lld",
                         name, (long long)head, (long long)vs->target));
        vs->done = true;
    }
    size_t i;
    json_t *ce;
    json_array_foreach(events, i, ce)
    {
        int64_t seq;
        if (consumer_event_seq(ce, &seq) != MOAT_OK) {
            verify_fail(v, 502,
                        "source %s sent an event without a valid "
                        "sequence",
                        name);
            return;
        }
        if (seq <= vs->cursor)
            continue;
        if (seq > vs->target) {
            vs->done = true;
            break;
        }
        if (verify_apply(vs, ce, seq) != MOAT_OK) {
            verify_fail(v, 500, "cannot write the verification database: %s",
                        v->c->ops->scratch_errmsg(v->scratch));
            return;
        }
        vs->cursor = seq;
    }
    /* Past the events of other types the source passed over. */
    if (!vs->done && next_after > vs->cursor)
        vs->cursor = next_after < vs->target ? next_after : vs->target;
    verify_step(v);
}

void consumer_verify_start(struct moat_consumer *c, struct moat_req *req)
{
    struct verify *v = moat_xcalloc(1, sizeof(*v));
    v->c = c;
    v->req = req;
    v->diffs = json_array();
    c->verify = v;

    /* What a crash mid-verification left behind is stale: the storage
     * starts afresh. */
    char why[ERROR_MAX] = "";
    int rc =
        c->ops->scratch_open(c, c->data_dir, &v->scratch, why, sizeof(why));
    if (rc != MOAT_OK) {
        verify_fail(v, 500, "cannot create the verification database: %s",
                    why[0] ? why : moat_strerror(rc));
        return;
    }
    v->n = c->nsubs;
    v->srcs = moat_xcalloc(v->n ? v->n : 1, sizeof(*v->srcs));
    for (size_t i = 0; i < v->n; i++) {
        v->srcs[i].v = v;
        v->srcs[i].sub = c->subs[i];
        v->srcs[i].target = c->subs[i]->cursor;
        v->srcs[i].parked = json_object();
        v->srcs[i].parked_seq = json_array();
    }
    moat_log(MOAT_LOG_INFO, "replay verification started", "{s:s}", "engine",
             c->ops->engine);
    verify_step(v);
}

void consumer_verify_abort(struct moat_consumer *c)
{
    struct verify *v = c->verify;
    if (!v)
        return;
    if (v->req)
        moat_req_reply_problem(v->req, 503, "the service is shutting down");
    /* Its pulls die with the sources and never call back. */
    verify_free(v);
    c->verify = NULL;
}

void consumer_replay_start(struct moat_consumer *c, struct moat_req *req)
{
    consumer_pause(c);
    int rc = c->ops->reset(c);
    if (rc != MOAT_OK) {
        consumer_resume(c);
        moat_log(MOAT_LOG_ERROR, "cannot reset the view for a replay", "{s:s}",
                 "error", moat_strerror(rc));
        moat_req_reply_problem(req, rc == MOAT_EBUSY ? 503 : 500,
                               "cannot reset the view: %s", moat_strerror(rc));
        return;
    }
    json_t *names = json_array();
    for (size_t i = 0; i < c->nsubs; i++) {
        consumer_rewind(c->subs[i]);
        json_array_append_new(names, json_string(c->subs[i]->src->name));
    }
    moat_log(MOAT_LOG_INFO, "replay from sequence 0 started", NULL);
    consumer_resume(c);
    moat_req_reply_json(
        req, 202,
        json_pack("{s:s, s:o}", "replay", "started", "sources", names));
}
