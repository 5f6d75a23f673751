/*
 * feed.c - the outbox served as an ordered, replayable HTTP feed
 * (GET /v1/events, see moat/events.h), and the consumer's side of it:
 * moat_feed_source_new(), a struct moat_event_source over that endpoint.
 *
 * Long polling. A reader with nothing to read and wait > 0 is parked in
 * the outbox's waiter list with a timer of its own. A commit
 * (moat_outbox_committed) wakes the list once per loop turn and every
 * reader that now has events is answered; the others stay parked until
 * their timer answers them with an empty page. Nothing polls the database
 * on a timer.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events_internal.h"
#include "moat/auth.h"
#include "moat/backup.h"
#include "moat/buf.h"
#include "moat/config.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/problem.h"

#define FEED_DEFAULT_LIMIT 100
/* Parked readers at most; each also holds a connection, so this is a
 * backstop against readers that hang up and come back in a loop. */
#define FEED_MAX_WAITERS 1024
/* A page stops growing past this many bytes of event data (with at least
 * one event), well under the HTTP client's default 8 MiB response cap. */
#define FEED_MAX_PAGE_BYTES (4u << 20)
/* Envelope bytes per event besides its data, for the page size estimate. */
#define FEED_EVENT_OVERHEAD 400
/* The client waits this much longer than the long poll itself. */
#define FEED_CLIENT_SLACK_MS 5000
/* Streaming readers at most (each holds a connection). */
#define FEED_MAX_STREAMS 256
/* A stream writes a heartbeat line after this much silence; the reader
 * gives up on a stream that stayed silent for FEED_STREAM_IDLE_MS. */
#define FEED_STREAM_HEARTBEAT_MS 2000
#define FEED_STREAM_IDLE_MS      10000
/* Bytes a streaming reader may leave unread: past the high-water mark the
 * producer stops writing to it (and retries every FEED_STREAM_RETRY_MS);
 * a reader that stays above it for FEED_STREAM_STALL_MS is dropped and
 * resumes from its cursor with a new request. */
#define FEED_STREAM_HIGH_WATER (1u << 20)
#define FEED_STREAM_RETRY_MS   20
#define FEED_STREAM_STALL_MS   5000
/* Events read from the outbox per batch while writing a stream. */
#define FEED_STREAM_BATCH 100

/* The epoch this process's feed serves (moat/backup.h); "" = none. */
static char feed_epoch[48];
static int64_t feed_epoch_base;

void moat_feed_set_epoch(const char *epoch, int64_t base_seq)
{
    snprintf(feed_epoch, sizeof(feed_epoch), "%s", epoch ? epoch : "");
    feed_epoch_base = base_seq;
}

/* ---- strict query strings (shared with consumer.c) ---- */

static bool utf8_valid(const char *s)
{
    json_t *j = json_string(s);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

static void parse_one(json_t **problem, struct moat_qparam *p,
                      const char *value)
{
    if (p->seen) {
        moat_problem_param_error(problem, p->name, "is given more than once");
        return;
    }
    p->seen = true;
    if (p->kind == MOAT_Q_INT) {
        if (moat_parse_i64(value, p->min, p->max, &p->ival) != MOAT_OK)
            moat_problem_param_error(problem, p->name,
                                     "must be an integer from %lld to %lld",
                                     (long long)p->min, (long long)p->max);
        return;
    }
    size_t len = strlen(value);
    if ((int64_t)len < p->min || (int64_t)len > p->max || !utf8_valid(value))
        moat_problem_param_error(problem, p->name,
                                 "must be %lld to %lld bytes of valid UTF-8",
                                 (long long)p->min, (long long)p->max);
    else
        p->sval = value;
}

json_t *moat_req_parse_query(struct moat_req *r, struct moat_qparam *params,
                             size_t n)
{
    json_t *problem = NULL;
    void *iter = NULL;
    const char *key, *value;
    size_t nseen = 0;

    while (moat_req_query_next(r, &iter, &key, &value)) {
        nseen++;
        struct moat_qparam *p = NULL;
        for (size_t i = 0; i < n && !p; i++)
            if (strcmp(params[i].name, key) == 0)
                p = &params[i];
        if (p) {
            parse_one(&problem, p, value ? value : "");
            continue;
        }
        struct moat_buf known = MOAT_BUF_INIT;
        for (size_t i = 0; i < n; i++)
            moat_buf_printf(&known, "%s%s", i ? ", " : "", params[i].name);
        moat_problem_param_error(&problem, key, "is not a known parameter (%s)",
                                 n ? moat_buf_str(&known) : "none");
        moat_buf_release(&known);
    }
    /* evhttp drops the whole query string when one parameter is not
     * name=value: silently serving defaults instead would be a lie. */
    const char *target = moat_req_target(r);
    const char *qs = target ? strchr(target, '?') : NULL;
    if (nseen == 0 && qs && qs[1 + strspn(qs + 1, "&")] != '\0' && !problem)
        problem = moat_problem_new(400, "the query string is malformed: every "
                                        "parameter must be name=value with "
                                        "a non-empty name");
    return problem;
}

/* ---- the feed ---- */

struct feed_stream {
    struct moat_outbox *o;
    struct moat_req *req; /* streamed to until stream_end */
    struct event *timer;  /* heartbeat, or retry while over high water */
    int64_t after;        /* the last seq written */
    uint64_t last_write_ns;
    uint64_t stalled_since_ns; /* 0 when under the high-water mark */
    struct feed_stream *prev, *next;
};

static bool stream_push(struct feed_stream *st);
static void stream_end(struct feed_stream *st, bool dropped);

struct feed_waiter {
    struct moat_outbox *o;
    struct moat_req *req; /* parked; answered exactly once */
    struct event *timer;  /* the reader's wait */
    int64_t after;
    int limit;
    struct feed_waiter *prev, *next;
};

static json_t *string_or_empty(const char *s)
{
    json_t *j = json_string(s ? s : "");
    return j ? j : json_string("");
}

/* The CloudEvent of a stored event (whatever the storage). */
static json_t *stored_event(struct moat_outbox *o, const struct outbox_event *e)
{
    char seq[24], time[25];
    snprintf(seq, sizeof(seq), "%lld", (long long)e->seq);
    moat_time_rfc3339(e->time_ms, time);
    char *source = moat_xasprintf("moat/%s", o->source);

    json_t *ev = json_object();
    json_object_set_new(ev, "specversion", json_string("1.0"));
    json_object_set_new(ev, "id", string_or_empty(e->id));
    json_object_set_new(ev, "source", json_string(source));
    json_object_set_new(ev, "type", string_or_empty(e->type));
    json_object_set_new(ev, "subject", string_or_empty(e->subject));
    json_object_set_new(ev, "time", json_string(time));
    json_object_set_new(ev, "datacontenttype", json_string("application/json"));
    json_object_set_new(ev, "data", json_incref(e->data));
    json_object_set_new(ev, "sequence", json_string(seq));
    json_object_set_new(ev, "dataschemaversion",
                        json_integer(e->schema_version));
    if (e->traceparent && *e->traceparent)
        json_object_set_new(ev, "traceparent", string_or_empty(e->traceparent));
    free(source);
    return ev;
}

struct page {
    struct moat_outbox *o;
    json_t *events; /* borrowed: the page being filled */
    size_t bytes;   /* event data so far, estimated */
    int64_t next_after;
};

static int add_to_page(const struct outbox_event *e, void *arg)
{
    struct page *p = arg;
    size_t size = e->stored_bytes + FEED_EVENT_OVERHEAD;
    if (json_array_size(p->events) > 0 && p->bytes + size > FEED_MAX_PAGE_BYTES)
        return OUTBOX_STOP;
    p->bytes += size;
    p->next_after = e->seq;
    json_array_append_new(p->events, stored_event(p->o, e));
    return OUTBOX_NEXT;
}

/* Append the events after `after` (at most limit, and FEED_MAX_PAGE_BYTES
 * of data) to events; *next_after gets the last one's seq, or after. */
static int read_events(struct moat_outbox *o, int64_t after, int limit,
                       json_t *events, int64_t *next_after)
{
    struct page p = {.o = o, .events = events, .next_after = after};
    int rc = moat_outbox_read(o, after, limit, add_to_page, &p);
    *next_after = p.next_after;
    return rc;
}

static void reply_fault(struct moat_req *req, int rc)
{
    if (rc == MOAT_EBUSY) {
        moat_req_set_header(req, "Retry-After", "1");
        moat_req_reply_problem(req, 503, "the event feed is busy; retry");
        return;
    }
    moat_log(MOAT_LOG_ERROR, "cannot read the outbox", "{s:s}", "error",
             moat_strerror(rc));
    moat_req_reply_problem(req, 500, "the event feed cannot be read");
}

/*
 * Answer req with the events after `after` when there are any, or in any
 * case when force (the wait is over, or it never started). Returns true
 * when it replied: req is gone then.
 */
static bool feed_answer(struct moat_outbox *o, struct moat_req *req,
                        int64_t after, int limit, bool force)
{
    int64_t head, from;
    int rc = moat_outbox_bounds(o, &head, &from, NULL);
    if (rc != MOAT_OK) {
        reply_fault(req, rc);
        return true;
    }
    if (after < from - 1) {
        json_t *p = moat_problem_new(
            410, "the events after this sequence number were deleted by "
                 "retention: this consumer cannot catch up from the feed "
                 "and must be rebuilt from the source's API");
        json_object_set_new(p, "after", json_integer(after));
        json_object_set_new(p, "retained_from", json_integer(from));
        json_object_set_new(p, "head", json_integer(head));
        moat_req_reply_problem_json(req, p);
        return true;
    }
    /* A reader beyond the head has read numbers this feed did not hand
     * out (it was restored from a backup): answered at once, so that the
     * page's epoch tells it, instead of after the whole wait. */
    if (after > head)
        force = true;
    /* Nothing new: no need to run the read at all. */
    if (after >= head && !force)
        return false;

    json_t *events = json_array();
    int64_t next_after;
    rc = read_events(o, after, limit, events, &next_after);
    if (rc != MOAT_OK) {
        json_decref(events);
        reply_fault(req, rc);
        return true;
    }
    if (json_array_size(events) == 0 && !force) {
        json_decref(events);
        return false;
    }
    json_t *body = json_object();
    json_object_set_new(body, "source", json_string(o->source));
    json_object_set_new(body, "events", events);
    json_object_set_new(body, "next_after", json_integer(next_after));
    json_object_set_new(body, "head", json_integer(head));
    json_object_set_new(body, "retained_from", json_integer(from));
    if (feed_epoch[0]) {
        json_object_set_new(body, "epoch", json_string(feed_epoch));
        json_object_set_new(body, "epoch_base", json_integer(feed_epoch_base));
    }
    moat_req_set_header(req, "Cache-Control", "no-store");
    moat_req_reply_json(req, 200, body);
    return true;
}

static void waiter_unlink(struct feed_waiter *w)
{
    struct moat_outbox *o = w->o;
    if (w->prev)
        w->prev->next = w->next;
    else
        o->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        o->waiters_tail = w->prev;
    o->nwaiters--;
}

static void waiter_free(struct feed_waiter *w)
{
    event_free(w->timer);
    free(w);
}

static void on_waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct feed_waiter *w = arg;
    waiter_unlink(w);
    feed_answer(w->o, w->req, w->after, w->limit, true);
    waiter_free(w);
}

static void park(struct moat_outbox *o, struct moat_req *req, int64_t after,
                 int limit, int wait_ms)
{
    struct feed_waiter *w = moat_xcalloc(1, sizeof(*w));
    w->o = o;
    w->req = req;
    w->after = after;
    w->limit = limit;
    w->timer = evtimer_new(o->base, on_waiter_timeout, w);
    if (!w->timer)
        moat_die("cannot create a feed timer");
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    evtimer_add(w->timer, &tv);
    w->prev = o->waiters_tail;
    if (o->waiters_tail)
        o->waiters_tail->next = w;
    else
        o->waiters = w;
    o->waiters_tail = w;
    o->nwaiters++;
}

void moat_feed_wake_waiters(struct moat_outbox *o)
{
    for (struct feed_stream *st = o->streams, *nst; st; st = nst) {
        nst = st->next;
        if (!st->stalled_since_ns) /* a stalled one retries on its timer */
            stream_push(st);
    }
    struct feed_waiter *w = o->waiters, *next;
    for (; w; w = next) {
        next = w->next;
        if (!feed_answer(o, w->req, w->after, w->limit, false))
            continue;
        waiter_unlink(w);
        waiter_free(w);
    }
}

void moat_feed_release_waiters(struct moat_outbox *o)
{
    while (o->streams)
        stream_end(o->streams, false);
    while (o->waiters) {
        struct feed_waiter *w = o->waiters;
        waiter_unlink(w);
        feed_answer(o, w->req, w->after, w->limit, true);
        waiter_free(w);
    }
}

/* ---- streaming readers: GET /v1/events?stream=1 ---- */

static void stream_end(struct feed_stream *st, bool dropped)
{
    struct moat_outbox *o = st->o;
    if (st->prev)
        st->prev->next = st->next;
    else
        o->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    o->nstreams--;
    moat_metric_set(o->m_streams, (double)o->nstreams);
    if (dropped)
        moat_metric_add(o->m_stream_drops, 1);
    event_free(st->timer);
    moat_req_stream_end(st->req);
    free(st);
}

static void stream_arm(struct feed_stream *st, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(st->timer, &tv);
}

static bool stream_line(struct feed_stream *st, struct moat_buf *b)
{
    st->last_write_ns = moat_mono_ns();
    return moat_req_stream_write(st->req, b->data, b->len);
}

struct stream_batch {
    struct moat_outbox *o;
    struct moat_buf *out;
    int64_t last;
};

static int add_to_stream(const struct outbox_event *e, void *arg)
{
    struct stream_batch *sb = arg;
    json_t *ev = stored_event(sb->o, e);
    char *text = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(ev);
    if (!text)
        return MOAT_EINVAL;
    moat_buf_addstr(sb->out, text);
    moat_buf_addch(sb->out, '\n');
    free(text);
    sb->last = e->seq;
    return sb->out->len >= FEED_STREAM_HIGH_WATER / 4 ? OUTBOX_STOP
                                                      : OUTBOX_NEXT;
}

/*
 * Write what the reader has not got yet, up to the high-water mark. Ends
 * the stream (and returns false) when the reader is gone, stalled too
 * long, or its events were deleted by retention (its next request gets
 * the 410), or on a read error.
 */
static bool stream_push(struct feed_stream *st)
{
    struct moat_outbox *o = st->o;
    int64_t head, from;
    if (moat_outbox_bounds(o, &head, &from, NULL) != MOAT_OK ||
        st->after < from - 1) {
        stream_end(st, false);
        return false;
    }
    while (st->after < head) {
        if (moat_req_stream_buffered(st->req) >= FEED_STREAM_HIGH_WATER) {
            uint64_t now = moat_mono_ns();
            if (!st->stalled_since_ns)
                st->stalled_since_ns = now;
            if (now - st->stalled_since_ns >=
                (uint64_t)FEED_STREAM_STALL_MS * 1000000u) {
                moat_log(MOAT_LOG_INFO,
                         "streaming reader dropped: it did not keep up",
                         "{s:I, s:I}", "after", (json_int_t)st->after,
                         "buffered",
                         (json_int_t)moat_req_stream_buffered(st->req));
                stream_end(st, true);
                return false;
            }
            stream_arm(st, FEED_STREAM_RETRY_MS);
            return true;
        }
        st->stalled_since_ns = 0;
        struct moat_buf out = MOAT_BUF_INIT;
        struct stream_batch sb = {.o = o, .out = &out, .last = st->after};
        int rc = moat_outbox_read(o, st->after, FEED_STREAM_BATCH,
                                  add_to_stream, &sb);
        bool ok = rc == MOAT_OK && sb.last > st->after;
        if (ok)
            ok = stream_line(st, &out);
        moat_buf_release(&out);
        if (!ok) {
            stream_end(st, false);
            return false;
        }
        st->after = sb.last;
    }
    st->stalled_since_ns = 0;
    stream_arm(st, FEED_STREAM_HEARTBEAT_MS);
    return true;
}

/*
 * A heartbeat line: {"heartbeat":true,"head":H} with the feed epoch
 * ("epoch", "epoch_base") when there is one. The first line of every
 * stream is one with "hello":true: readers that know epochs check it as
 * they check a page's, older ones take it for a heartbeat.
 */
static bool stream_heartbeat(struct feed_stream *st, bool hello)
{
    int64_t head = st->after;
    moat_outbox_bounds(st->o, &head, NULL, NULL);
    json_t *j = json_object();
    json_object_set_new(j, "heartbeat", json_true());
    if (hello)
        json_object_set_new(j, "hello", json_true());
    json_object_set_new(j, "head", json_integer(head));
    if (feed_epoch[0]) {
        json_object_set_new(j, "epoch", json_string(feed_epoch));
        json_object_set_new(j, "epoch_base", json_integer(feed_epoch_base));
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!text)
        return false;
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_addstr(&b, text);
    moat_buf_addch(&b, '\n');
    free(text);
    bool ok = stream_line(st, &b);
    moat_buf_release(&b);
    return ok;
}

static void on_stream_timer(evutil_socket_t fd, short what, void *arg)
{
    struct feed_stream *st = arg;
    if (!stream_push(st))
        return;
    uint64_t quiet_ns = moat_mono_ns() - st->last_write_ns;
    if (quiet_ns < (uint64_t)FEED_STREAM_HEARTBEAT_MS * 1000000u)
        return;
    if (!stream_heartbeat(st, false))
        stream_end(st, false);
}

static void stream_open(struct moat_outbox *o, struct moat_req *req,
                        int64_t after)
{
    struct feed_stream *st = moat_xcalloc(1, sizeof(*st));
    st->o = o;
    st->req = req;
    st->after = after;
    st->timer = evtimer_new(o->base, on_stream_timer, st);
    if (!st->timer)
        moat_die("cannot create a feed stream timer");
    st->next = o->streams;
    if (o->streams)
        o->streams->prev = st;
    o->streams = st;
    o->nstreams++;
    moat_metric_set(o->m_streams, (double)o->nstreams);
    moat_req_set_header(req, "Cache-Control", "no-store");
    moat_req_stream_start(req, 200, "application/x-ndjson");
    if (!stream_heartbeat(st, true)) {
        stream_end(st, false);
        return;
    }
    stream_push(st);
}

static void handle_events(struct moat_req *req, void *arg)
{
    struct moat_outbox *o = arg;
    struct moat_qparam q[] = {
        {.name = "after", .kind = MOAT_Q_INT, .min = 0, .max = INT64_MAX},
        {.name = "limit",
         .kind = MOAT_Q_INT,
         .min = 1,
         .max = MOAT_FEED_MAX_LIMIT},
        {.name = "wait",
         .kind = MOAT_Q_INT,
         .min = 0,
         .max = MOAT_FEED_MAX_WAIT_MS},
        {.name = "stream", .kind = MOAT_Q_INT, .min = 0, .max = 1},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    int64_t after = q[0].seen ? q[0].ival : 0;
    int limit = q[1].seen ? (int)q[1].ival : FEED_DEFAULT_LIMIT;
    int wait_ms = q[2].seen ? (int)q[2].ival : 0;

    if (q[3].seen && q[3].ival == 1) {
        if (q[1].seen || q[2].seen) {
            moat_req_reply_problem(req, 400,
                                   "stream=1 takes no limit or wait: the "
                                   "stream writes events as they commit");
            return;
        }
        if (o->nstreams >= FEED_MAX_STREAMS) {
            moat_req_set_header(req, "Retry-After", "1");
            moat_req_reply_problem(req, 503,
                                   "too many readers stream the event feed; "
                                   "retry");
            return;
        }
        /* A gap (410) or a fault is answered as a plain problem. */
        int64_t head, from;
        int rc = moat_outbox_bounds(o, &head, &from, NULL);
        if (rc != MOAT_OK || after < from - 1) {
            feed_answer(o, req, after, 1, true);
            return;
        }
        stream_open(o, req, after);
        return;
    }

    if (feed_answer(o, req, after, limit, wait_ms == 0))
        return;
    if (o->nwaiters >= FEED_MAX_WAITERS) {
        moat_req_set_header(req, "Retry-After", "1");
        moat_req_reply_problem(req, 503,
                               "too many readers are waiting on the event "
                               "feed; retry");
        return;
    }
    park(o, req, after, limit, wait_ms);
}

/* At shutdown, parked long polls are answered at once (with what there
 * is) instead of holding the drain until its deadline. */
static void on_drain(void *arg)
{
    moat_feed_release_waiters(arg);
}

int moat_feed_register(struct moat_outbox *o, struct moat_http_server *http)
{
    if (!o || !http)
        return MOAT_EINVAL;
    int rc = moat_http_on_drain(http, on_drain, o);
    if (rc == MOAT_OK)
        rc = moat_http_route(http, MOAT_GET, "/v1/events", handle_events, o);
    return rc;
}

/* ---- the consumer's side: an event source over HTTP ---- */

/* Events a source keeps received from its stream and not yet pulled;
 * past this the stream is dropped and reopened from the cursor later. */
#define FEED_SOURCE_MAX_BUFFERED (4u << 20)
/* One line of a stream (one event) at most. */
#define FEED_STREAM_MAX_LINE (FEED_MAX_PAGE_BYTES + (64u << 10))

struct feed_call;
struct stream_in;

struct feed_source {
    struct moat_event_source src;    /* first: the public view */
    char *base_url;                  /* owned, without a trailing '/' */
    struct moat_http_client *client; /* borrowed */
    const struct moat_auth *auth;    /* borrowed; NULL = no token */
    struct feed_call *calls;         /* pulls in flight */
    int last_status;                 /* for logging changes only */
    char *epoch_dir;                 /* owned; NULL = no epoch tracking */
    char epoch[48];                  /* the epoch accepted; "" none yet */
    bool epoch_loaded;               /* epoch read from epoch_dir */
    /* Streaming (?stream=1): events received in order, not yet pulled:
     * a contiguous run of seqs ending at the stream's position. */
    bool no_stream;           /* the producer does not stream; long polls */
    struct stream_in *stream; /* the open stream, NULL when none */
    json_t *buffered;         /* array of CloudEvents */
    json_t *buffered_sizes;   /* their sizes on the wire, in step */
    size_t buffered_bytes;
    struct event_base *base; /* the client's */
    int64_t head;            /* newest seq known from the stream */
    /* A stream's epoch said the source was restored to rewind_base (the
     * rewind is recorded): the next pull beyond it gets MOAT_ECONFLICT. */
    bool rewind_pending;
    int64_t rewind_base;
    /* The one pull served from the stream (others long-poll). */
    struct {
        bool active;
        int64_t after;
        int limit;
        moat_source_done_fn done;
        void *arg;
    } parked;
    struct event *parked_timer; /* the parked pull's wait */
    struct event *kick;         /* a delivery attempt from the loop */
    /* The producer's instances (moat_instance_urls), NULL when one. */
    char **instances;
    size_t cur_instance;
};

/* One stream request. It outlives its source (fs = NULL) or its place as
 * the source's stream (detached): the client still calls back, and it is
 * freed there. */
struct stream_in {
    struct feed_source *fs;
    bool detached; /* no longer fs->stream: on_data aborts */
    int64_t after; /* seq of the last event received */
    struct moat_buf line;
};

/* One pull in flight. It outlives its source when the source is freed
 * first (fs = NULL then): the client still calls back, and the call is
 * freed there without telling anyone. */
struct feed_call {
    struct feed_source *fs;
    moat_source_done_fn done;
    void *arg;
    int64_t after; /* what the pull asked for */
    struct feed_call *prev, *next;
};

static void call_unlink(struct feed_call *fc)
{
    if (fc->prev)
        fc->prev->next = fc->next;
    else
        fc->fs->calls = fc->next;
    if (fc->next)
        fc->next->prev = fc->prev;
}

static void note_status(struct feed_source *fs, int status, const char *body)
{
    if (status == fs->last_status)
        return;
    fs->last_status = status;
    if (status == 200)
        return;
    /* The problem's detail says why (401: keys; 410: retention...). */
    json_t *j = json_loads(body, 0, NULL);
    const char *detail = json_string_value(json_object_get(j, "detail"));
    moat_log(MOAT_LOG_WARN, "event feed answered with an error",
             "{s:s, s:i, s:s}", "source", fs->src.name, "status", status,
             "detail", detail ? detail : "");
    json_decref(j);
}

/*
 * The epoch of a page (moat/backup.h). A new epoch whose base is below
 * the pull's `after` means the producer was restored to an earlier point:
 * MOAT_ECONFLICT with *head = the base, where the consumer resumes; the
 * epoch is accepted once a pull at or below the base sees it.
 */
static int check_epoch(struct feed_source *fs, json_t *body, int64_t after,
                       int64_t *head)
{
    const char *ep = json_string_value(json_object_get(body, "epoch"));
    json_t *base = json_object_get(body, "epoch_base");
    if (!fs->epoch_dir || !ep || !json_is_integer(base) ||
        strlen(ep) >= sizeof(fs->epoch))
        return MOAT_OK;
    if (!fs->epoch_loaded) {
        moat_epoch_accepted(fs->epoch_dir, fs->src.name, fs->epoch,
                            sizeof(fs->epoch));
        fs->epoch_loaded = true;
    }
    if (strcmp(fs->epoch, ep) == 0)
        return MOAT_OK;
    int64_t b = json_integer_value(base);
    if (fs->epoch[0] && after > b) {
        moat_log(MOAT_LOG_WARN,
                 "the source was restored to an earlier point (new feed "
                 "epoch): moving the cursor back to the restored head",
                 "{s:s, s:s, s:s, s:I, s:I}", "source", fs->src.name,
                 "old_epoch", fs->epoch, "new_epoch", ep, "cursor",
                 (json_int_t)after, "epoch_base", (json_int_t)b);
        moat_epoch_note_rewind(fs->epoch_dir, fs->src.name, fs->epoch, ep,
                               after, b);
        *head = b;
        return MOAT_ECONFLICT;
    }
    if (moat_epoch_accept(fs->epoch_dir, fs->src.name, ep, b) == MOAT_OK)
        snprintf(fs->epoch, sizeof(fs->epoch), "%s", ep);
    return MOAT_OK;
}

/* The producer's instance was refused or reset before answering: the next
 * pull goes to its next instance, which serves the same feed (it shares
 * the database). */
static void feed_next_instance(struct feed_source *fs,
                               const struct moat_http_response *resp)
{
    if (!fs->instances || resp->err == MOAT_OK ||
        !(resp->connect_failed || resp->no_response))
        return;
    if (!fs->instances[++fs->cur_instance])
        fs->cur_instance = 0;
    free(fs->base_url);
    fs->base_url = moat_xstrdup(fs->instances[fs->cur_instance]);
    moat_log(MOAT_LOG_INFO, "event feed: trying another instance", "{s:s, s:s}",
             "source", fs->src.name, "url", fs->base_url);
}

static void on_feed_response(const struct moat_http_response *resp, void *arg)
{
    struct feed_call *fc = arg;
    struct feed_source *fs = fc->fs;
    json_t *body = NULL;
    if (!fs)
        goto cleanup; /* the source was freed: nobody to tell */
    call_unlink(fc);
    feed_next_instance(fs, resp);

    int err = resp->err;
    int64_t head = 0;
    json_t *events = NULL;
    if (err == MOAT_OK) {
        note_status(fs, resp->status, resp->body);
        if (resp->status == 200) {
            body = json_loads(resp->body, JSON_REJECT_DUPLICATES, NULL);
            events = json_object_get(body, "events");
            json_t *h = json_object_get(body, "head");
            if (!json_is_array(events) || !json_is_integer(h)) {
                moat_log(MOAT_LOG_WARN, "malformed event feed response",
                         "{s:s}", "source", fs->src.name);
                err = MOAT_EINVAL;
                events = NULL;
            } else {
                head = json_integer_value(h);
                err = check_epoch(fs, body, fc->after, &head);
            }
        } else if (resp->status == 410) {
            err = MOAT_ENOTFOUND;
            /* Where a reader that accepts the gap may resume. */
            body = json_loads(resp->body, 0, NULL);
            json_t *from = json_object_get(body, "retained_from");
            if (json_is_integer(from) && json_integer_value(from) > 0)
                head = json_integer_value(from) - 1;
        } else {
            err = MOAT_EIO;
        }
    }
    fc->done(err, err == MOAT_OK ? events : NULL, head, fc->arg);

cleanup:
    json_decref(body);
    free(fc);
}

static int poll_pull(struct feed_source *fs, int64_t after, int limit,
                     int wait_ms, moat_source_done_fn done, void *arg)
{
    struct moat_event_source *src = &fs->src;

    char *token = NULL;
    struct moat_http_header hdr[1];
    size_t nhdr = 0;
    if (fs->auth) {
        int rc = moat_auth_token(fs->auth, src->name, NULL, &token);
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "cannot sign a service token",
                     "{s:s, s:s}", "audience", src->name, "error",
                     moat_strerror(rc));
            return rc;
        }
        hdr[nhdr++] =
            (struct moat_http_header){MOAT_SERVICE_TOKEN_HEADER, token};
    }
    char *url = moat_xasprintf("%s/v1/events?after=%lld&limit=%d&wait=%d",
                               fs->base_url, (long long)after, limit, wait_ms);
    struct moat_http_call call = {
        .method = "GET",
        .url = url,
        .headers = hdr,
        .nheaders = nhdr,
        .timeout_ms = wait_ms + FEED_CLIENT_SLACK_MS,
    };
    struct feed_call *fc = moat_xcalloc(1, sizeof(*fc));
    fc->fs = fs;
    fc->done = done;
    fc->arg = arg;
    fc->after = after;
    int rc = moat_http_client_send(fs->client, &call, on_feed_response, fc);
    if (rc == MOAT_OK) {
        fc->next = fs->calls;
        if (fs->calls)
            fs->calls->prev = fc;
        fs->calls = fc;
    } else {
        free(fc);
    }
    free(url);
    free(token);
    return rc;
}

/* ---- streaming pulls ---- */

static int64_t event_seq(json_t *ev)
{
    int64_t seq = -1;
    const char *s = json_string_value(json_object_get(ev, "sequence"));
    if (!s || moat_parse_i64(s, 1, INT64_MAX, &seq) != MOAT_OK)
        return -1;
    return seq;
}

static void stream_detach(struct feed_source *fs)
{
    if (fs->stream) {
        fs->stream->detached = true;
        fs->stream = NULL;
    }
}

static void buffer_clear(struct feed_source *fs)
{
    json_array_clear(fs->buffered);
    json_array_clear(fs->buffered_sizes);
    fs->buffered_bytes = 0;
}

/* Drop the first n buffered events. */
static void buffer_shift(struct feed_source *fs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fs->buffered_bytes -=
            (size_t)json_integer_value(json_array_get(fs->buffered_sizes, 0));
        json_array_remove(fs->buffered_sizes, 0);
        json_array_remove(fs->buffered, 0);
    }
}

/* Drop the buffered events at or below after. */
static void buffer_skip(struct feed_source *fs, int64_t after)
{
    size_t n = 0, total = json_array_size(fs->buffered);
    while (n < total && event_seq(json_array_get(fs->buffered, n)) <= after)
        n++;
    buffer_shift(fs, n);
}

/*
 * The stream's epoch says the source was restored to base, before the
 * stream's position: what it brought is gone, and so is the stream. The
 * parked pull (or the next one) gets MOAT_ECONFLICT with head = base, as
 * from a long poll, and the pull at the base reopens the stream.
 */
static void stream_rewound(struct feed_source *fs, int64_t base)
{
    stream_detach(fs);
    buffer_clear(fs);
    fs->head = base;
    fs->rewind_pending = true;
    fs->rewind_base = base;
    if (fs->parked.active)
        event_active(fs->kick, EV_TIMEOUT, 1);
}

/* One line of the stream: an event (the next seq) or a heartbeat. */
static bool stream_take_line(struct stream_in *st, const char *line, size_t len)
{
    struct feed_source *fs = st->fs;
    if (len == 0)
        return true;
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return false;
    }
    if (json_is_true(json_object_get(j, "heartbeat"))) {
        json_int_t h = json_integer_value(json_object_get(j, "head"));
        /* A stream's first line says where the producer is now (lower
         * than before when it was restored). */
        if (h > fs->head || json_is_true(json_object_get(j, "hello")))
            fs->head = h;
        /* The consumer's position: its next pull asks for what follows
         * the events it took, which the buffer starts after. */
        size_t n = json_array_size(fs->buffered);
        int64_t pos =
            n ? event_seq(json_array_get(fs->buffered, 0)) - 1 : st->after;
        int64_t base = 0;
        int rc = check_epoch(fs, j, pos, &base);
        json_decref(j);
        if (rc == MOAT_ECONFLICT) {
            stream_rewound(fs, base);
            return false;
        }
        return true;
    }
    int64_t seq = event_seq(j);
    if (seq != st->after + 1) { /* a gap or a repeat: start over */
        json_decref(j);
        return false;
    }
    st->after = seq;
    if (seq > fs->head)
        fs->head = seq;
    fs->buffered_bytes += len;
    json_array_append_new(fs->buffered, j);
    json_array_append_new(fs->buffered_sizes, json_integer((json_int_t)len));
    return true;
}

static bool on_stream_data(const char *data, size_t len, void *arg)
{
    struct stream_in *st = arg;
    if (!st->fs || st->detached)
        return false;
    size_t had = json_array_size(st->fs->buffered);
    const char *end = data + len;
    while (data < end) {
        const char *nl = memchr(data, '\n', (size_t)(end - data));
        size_t n = nl ? (size_t)(nl - data) : (size_t)(end - data);
        if (st->line.len + n > FEED_STREAM_MAX_LINE)
            return false;
        if (!nl) {
            moat_buf_add(&st->line, data, n);
            break;
        }
        bool ok;
        if (st->line.len) {
            moat_buf_add(&st->line, data, n);
            ok = stream_take_line(st, st->line.data, st->line.len);
            moat_buf_reset(&st->line);
        } else {
            ok = stream_take_line(st, data, n);
        }
        if (!ok)
            return false;
        data = nl + 1;
    }
    struct feed_source *fs = st->fs;
    if (fs->parked.active && json_array_size(fs->buffered) > had)
        event_active(fs->kick, EV_TIMEOUT, 1);
    /* A consumer that does not keep up: stop reading; its next pull
     * reopens the stream from its cursor once the buffer is drained. */
    if (fs->buffered_bytes >= FEED_SOURCE_MAX_BUFFERED) {
        stream_detach(fs);
        return false;
    }
    return true;
}

static void parked_finish(struct feed_source *fs, int err, json_t *events,
                          int64_t head)
{
    moat_source_done_fn done = fs->parked.done;
    void *arg = fs->parked.arg;
    fs->parked.active = false;
    evtimer_del(fs->parked_timer);
    done(err, events, head, arg);
}

static void stream_open_from(struct feed_source *fs, int64_t after);

/*
 * Answer the parked pull from the buffer when it holds the next events,
 * or (force: its wait is over) with none. Returns true when answered.
 */
static bool parked_try(struct feed_source *fs, bool force)
{
    if (fs->rewind_pending) {
        fs->rewind_pending = false;
        if (fs->parked.after > fs->rewind_base) {
            parked_finish(fs, MOAT_ECONFLICT, NULL, fs->rewind_base);
            return true;
        }
    }
    buffer_skip(fs, fs->parked.after);
    size_t n = json_array_size(fs->buffered);
    if (n == 0) {
        if (force) {
            json_t *none = json_array();
            parked_finish(fs, MOAT_OK, none, fs->head);
            json_decref(none);
            return true;
        }
        return false;
    }
    size_t take = n < (size_t)fs->parked.limit ? n : (size_t)fs->parked.limit;
    json_t *events = json_array();
    for (size_t i = 0; i < take; i++)
        json_array_append(events, json_array_get(fs->buffered, i));
    buffer_shift(fs, take);
    parked_finish(fs, MOAT_OK, events, fs->head);
    json_decref(events);
    return true;
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct feed_source *fs = arg;
    if (!fs->parked.active || parked_try(fs, false))
        return;
    /* Nothing buffered for it: the stream must be open at its cursor. */
    if (!fs->stream)
        stream_open_from(fs, fs->parked.after);
}

static void on_parked_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct feed_source *fs = arg;
    if (fs->parked.active)
        parked_try(fs, true);
}

static void on_stream_end(const struct moat_http_response *resp, void *arg)
{
    struct stream_in *st = arg;
    struct feed_source *fs = st->fs;
    bool ours = fs && !st->detached;
    moat_buf_release(&st->line);
    free(st);
    if (!ours)
        return;
    fs->stream = NULL;
    if (resp->err == MOAT_OK && resp->status == 400 &&
        strstr(resp->body, "stream")) {
        /* A producer from before streaming: long polls from now on. */
        moat_log(MOAT_LOG_INFO, "event feed does not stream; long polling",
                 "{s:s}", "source", fs->src.name);
        fs->no_stream = true;
        if (fs->parked.active) {
            int64_t after = fs->parked.after;
            moat_source_done_fn done = fs->parked.done;
            void *parg = fs->parked.arg;
            fs->parked.active = false;
            evtimer_del(fs->parked_timer);
            if (poll_pull(fs, after, fs->parked.limit, 0, done, parg) !=
                MOAT_OK)
                done(MOAT_EIO, NULL, 0, parg);
        }
        return;
    }
    if (!fs->parked.active)
        return; /* the next pull reopens it */
    if (resp->err == MOAT_OK && resp->status == 200) {
        /* The producer ended it (shutdown, or we were too slow): resume
         * from the cursor, from the loop. */
        if (!parked_try(fs, false))
            event_active(fs->kick, EV_TIMEOUT, 1);
        return;
    }
    /* Unreachable or an error: answered like the long poll's. */
    struct feed_call fc = {
        .fs = fs, .done = fs->parked.done, .arg = fs->parked.arg};
    fs->parked.active = false;
    evtimer_del(fs->parked_timer);
    fc.next = fs->calls; /* on_feed_response unlinks and frees it */
    struct feed_call *heap = moat_xmalloc(sizeof(*heap));
    *heap = fc;
    if (fs->calls)
        fs->calls->prev = heap;
    heap->prev = NULL;
    fs->calls = heap;
    on_feed_response(resp, heap);
}

static void stream_open_from(struct feed_source *fs, int64_t after)
{
    char *token = NULL;
    struct moat_http_header hdr[1];
    size_t nhdr = 0;
    if (fs->auth) {
        int rc = moat_auth_token(fs->auth, fs->src.name, NULL, &token);
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "cannot sign a service token",
                     "{s:s, s:s}", "audience", fs->src.name, "error",
                     moat_strerror(rc));
            if (fs->parked.active)
                parked_finish(fs, rc, NULL, 0);
            return;
        }
        hdr[nhdr++] =
            (struct moat_http_header){MOAT_SERVICE_TOKEN_HEADER, token};
    }
    struct stream_in *st = moat_xcalloc(1, sizeof(*st));
    st->fs = fs;
    st->after = after;
    char *url = moat_xasprintf("%s/v1/events?after=%lld&stream=1", fs->base_url,
                               (long long)after);
    struct moat_http_call call = {
        .method = "GET",
        .url = url,
        .headers = hdr,
        .nheaders = nhdr,
        .timeout_ms = FEED_STREAM_IDLE_MS,
        .on_data = on_stream_data,
        .data_arg = st,
    };
    buffer_clear(fs);
    int rc = moat_http_client_send(fs->client, &call, on_stream_end, st);
    free(url);
    free(token);
    if (rc != MOAT_OK) {
        free(st);
        if (fs->parked.active)
            parked_finish(fs, rc == MOAT_ECANCELLED ? rc : MOAT_EIO, NULL, 0);
        return;
    }
    fs->stream = st;
}

static int feed_pull(struct moat_event_source *src, int64_t after, int limit,
                     int wait_ms, moat_source_done_fn done, void *arg)
{
    struct feed_source *fs = (struct feed_source *)src;
    if (after < 0 || limit < 1 || limit > MOAT_FEED_MAX_LIMIT || wait_ms < 0 ||
        wait_ms > MOAT_FEED_MAX_WAIT_MS || !done)
        return MOAT_EINVAL;
    if (fs->rewind_pending && after <= fs->rewind_base)
        fs->rewind_pending = false; /* already back there */
    /* One pull at a time rides the stream; a second one (a verification
     * beside live consumption) and old producers long-poll. */
    if (fs->no_stream || fs->parked.active)
        return poll_pull(fs, after, limit, wait_ms, done, arg);

    /* Is `after` on the stream: within what it brought, or where it is? */
    size_t n = json_array_size(fs->buffered);
    int64_t first = n ? event_seq(json_array_get(fs->buffered, 0)) : -1;
    int64_t last = n ? event_seq(json_array_get(fs->buffered, n - 1))
                     : (fs->stream ? fs->stream->after : -1);
    bool on_stream =
        last >= 0 && after <= last && (n ? after >= first - 1 : after == last);
    bool has_more = on_stream && after < last && n > 0;
    /* "What there is now" (wait 0) is the long poll's answer unless the
     * stream already brought it; it leaves the stream alone. */
    if (wait_ms == 0 && !has_more && !fs->rewind_pending)
        return poll_pull(fs, after, limit, wait_ms, done, arg);
    if (on_stream) {
        buffer_skip(fs, after);
    } else {
        stream_detach(fs);
        buffer_clear(fs);
    }
    fs->parked.active = true;
    fs->parked.after = after;
    fs->parked.limit = limit;
    fs->parked.done = done;
    fs->parked.arg = arg;
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    evtimer_add(fs->parked_timer, &tv);
    event_active(fs->kick, EV_TIMEOUT, 1);
    return MOAT_OK;
}

static void feed_source_free(struct moat_event_source *src)
{
    struct feed_source *fs = (struct feed_source *)src;
    if (!fs)
        return;
    if (fs->stream)
        fs->stream->fs = NULL;
    event_free(fs->kick);
    event_free(fs->parked_timer);
    json_decref(fs->buffered);
    json_decref(fs->buffered_sizes);
    for (struct feed_call *fc = fs->calls; fc; fc = fc->next)
        fc->fs = NULL;
    free(fs->base_url);
    for (size_t i = 0; fs->instances && fs->instances[i]; i++)
        free(fs->instances[i]);
    free(fs->instances);
    free(fs->epoch_dir);
    free(fs);
}

static const struct moat_event_source_ops feed_source_ops = {
    .pull = feed_pull,
    .free = feed_source_free,
};

struct moat_event_source *moat_feed_source_new(const char *name,
                                               const char *base_url,
                                               struct moat_http_client *client,
                                               const struct moat_auth *auth)
{
    size_t nlen = name ? strlen(name) : 0;
    if (nlen == 0 || nlen >= sizeof(((struct moat_event_source *)0)->name) ||
        !base_url || !client ||
        (strncmp(base_url, "http://", 7) != 0 &&
         strncmp(base_url, "https://", 8) != 0)) {
        moat_log(MOAT_LOG_ERROR, "invalid event feed source", "{s:s, s:s}",
                 "name", name ? name : "", "url", base_url ? base_url : "");
        return NULL;
    }
    struct feed_source *fs = moat_xcalloc(1, sizeof(*fs));
    fs->src.ops = &feed_source_ops;
    memcpy(fs->src.name, name, nlen + 1);
    size_t ulen = strlen(base_url);
    while (ulen > 0 && base_url[ulen - 1] == '/')
        ulen--;
    fs->base_url = moat_xstrndup(base_url, ulen);
    fs->instances = moat_instance_urls(fs->base_url);
    fs->client = client;
    fs->auth = auth;
    fs->last_status = 200;
    /* MOAT_FEED_STREAM=0: long polls only (old producers are detected). */
    const char *env = getenv("MOAT_FEED_STREAM");
    fs->no_stream = env && strcmp(env, "0") == 0;
    fs->buffered = json_array();
    fs->buffered_sizes = json_array();
    fs->base = moat_http_client_base(client);
    fs->kick = event_new(fs->base, -1, 0, on_kick, fs);
    fs->parked_timer = evtimer_new(fs->base, on_parked_timeout, fs);
    if (!fs->kick || !fs->parked_timer)
        moat_die("cannot create event feed source events");
    return &fs->src;
}

void moat_feed_source_set_epoch_dir(struct moat_event_source *src,
                                    const char *dir)
{
    struct feed_source *fs = (struct feed_source *)src;
    free(fs->epoch_dir);
    fs->epoch_dir = dir ? moat_xstrdup(dir) : NULL;
    fs->epoch_loaded = false;
}
