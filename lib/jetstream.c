/*
 * jetstream.c - NATS JetStream as the event transport (see
 * moat/jetstream.h): the relay that publishes an outbox to its stream, and
 * the event source that reads a stream through a durable pull consumer.
 * Both plug in through the transport hook of events_internal.h; nothing
 * in the outbox, the feed or the consumer's apply loop knows about NATS.
 *
 * Every libnats call runs on a worker thread (moat/work.h); the loop side
 * prepares a job, submits it and takes the result in the job's done
 * callback. A job owns what it carries; the loop never touches it while
 * it runs.
 *
 * libnats 3.4.1 paths kept away from (fixed only in later releases):
 *  - natsSubscription_Fetch overflows its message array when the batch
 *    it asks the server for shrinks: a fetch that finds messages still
 *    queued from an earlier pull request (one whose fetch timed out before
 *    they arrived) asks for the rest only, and keeps collecting past the
 *    array. A fixed batch of 100 was not enough: the 10-minute ASan soak
 *    caught the overrun in moat-payments. So every fetch here asks for
 *    exactly ONE message (FETCH_BATCH): a one-slot array that is full
 *    after one message can never be overrun. A pull collects up to its
 *    limit with further one-message fetches of FETCH_MORE_MS;
 *  - fetch timeouts: a timeout is only "no message yet" (late messages of
 *    a timed-out request are simply taken by the next fetch), and a long
 *    wait is a loop of FETCH_TIMEOUT_MS fetches;
 *  - callbacks on destroyed subscriptions: no asynchronous handler of any
 *    kind is installed (sync pull subscriptions, sync publishes, no
 *    connection callbacks), and subscriptions are destroyed before the
 *    connection (moat_jetstream_disable runs after every source is freed);
 *  - natsSock_ReadLine: the connection only goes to the deployment's own
 *    nats-server on loopback.
 */
#include "moat/jetstream.h"

#include <event2/event.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events_internal.h"
#include "moat/common.h"
#include "moat/db.h"
#include "moat/kv.h"
#include "moat/log.h"
#include "moat/work.h"

#include <sqlite3.h>

#define RELAY_BATCH       256  /* events per relay job */
#define RELAY_IDLE_MS     1000 /* stream check when nothing is new */
#define RELAY_BACKOFF_MAX 5000 /* ms */
#define PUBLISH_WAIT_MS   5000 /* for one broker ack */
#define FETCH_BATCH       1    /* the same for every fetch (see above) */
#define FETCH_MORE_MS     2    /* after a message: more already there? */
#define FETCH_TIMEOUT_MS  500  /* a wait is a loop of these (see above) */
#define CONSUMER_CHECK_MS 5000 /* quiet this long: is the durable there? */
#define ACK_WAIT_S        30   /* redelivery of unacked messages */
#define BROKER_RETRY_MS   2000 /* a failing broker: the feed meanwhile */
#define NAME_MAX_LEN      96
#define RELAY_ACKED_KEY   "relay_acked"
#define RELAY_STORE_MS    1000 /* write the acked position at most this often */

static const char RELAY_TABLE[] = "CREATE TABLE IF NOT EXISTS moat_relay (\n"
                                  "    broker TEXT PRIMARY KEY,\n"
                                  "    acked_seq INTEGER NOT NULL\n"
                                  ") STRICT";
/* The same on PostgreSQL (a producer whose store has MOAT_DB_DSN). */
static const char RELAY_TABLE_PG[] = "CREATE TABLE IF NOT EXISTS moat_relay (\n"
                                     "    broker TEXT PRIMARY KEY,\n"
                                     "    acked_seq BIGINT NOT NULL\n"
                                     ")";

const struct moat_event_transport *moat_event_transport;

/* ---- the process's connection ---- */

static struct {
    bool enabled;
    char *url;
    char service[32];
    pthread_mutex_t mu; /* guards nc and js */
    natsConnection *nc;
    jsCtx *js;
    /* Durable names handed out: a second source of one producer in this
     * process gets the next number. */
    char producers[64][32];
    int nproducers;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The JetStream context, connecting first if needed (worker threads). */
static jsCtx *js_get(char *err, size_t errlen)
{
    pthread_mutex_lock(&G.mu);
    if (!G.js) {
        natsOptions *opts = NULL;
        natsStatus st = natsOptions_Create(&opts);
        if (st == NATS_OK)
            st = natsOptions_SetURL(opts, G.url);
        if (st == NATS_OK)
            st = natsOptions_SetName(opts, G.service);
        if (st == NATS_OK)
            st = natsOptions_SetTimeout(opts, 2000);
        if (st == NATS_OK)
            st = natsOptions_SetMaxReconnect(opts, -1); /* forever */
        if (st == NATS_OK)
            st = natsOptions_SetReconnectWait(opts, 200);
        if (st == NATS_OK)
            st = natsConnection_Connect(&G.nc, opts);
        if (st == NATS_OK)
            st = natsConnection_JetStream(&G.js, G.nc, NULL);
        if (st != NATS_OK) {
            snprintf(err, errlen, "connect %s: %s", G.url,
                     natsStatus_GetText(st));
            natsConnection_Destroy(G.nc);
            G.nc = NULL;
            G.js = NULL;
        }
        natsOptions_Destroy(opts);
    }
    jsCtx *js = G.js;
    pthread_mutex_unlock(&G.mu);
    return js;
}

static void stream_name(const char *producer, char *out, size_t len)
{
    snprintf(out, len, "MOAT_%s", producer);
}

/* ---- the relay (producer side) ---- */

struct relay_job;

struct relay {
    struct moat_outbox *o;
    struct moat_work_pool *pool;
    struct event *timer;
    char stream[NAME_MAX_LEN];
    int64_t acked; /* the last outbox seq the broker acknowledged */
    bool loaded;   /* acked read from the database */
    bool busy;     /* a job in flight */
    bool failing;  /* logged once per change */
    bool dirty;    /* a commit during the job in flight */
    int backoff_ms;
    int64_t stored;        /* acked as last written to the database */
    uint64_t stored_at_ms; /* when */
    struct relay_job *job;
};

struct relay_job {
    struct relay *r;
    size_t n;
    int64_t seqs[RELAY_BATCH];
    char *subjects[RELAY_BATCH];
    char *ids[RELAY_BATCH];
    char *bodies[RELAY_BATCH];
    int64_t head;
    /* results */
    int64_t acked;  /* the last seq acknowledged in this job, 0 = none */
    bool recreated; /* the stream was missing and is created now */
    bool failed;
    char err[160];
};

static void relay_job_free(struct relay_job *j)
{
    for (size_t i = 0; i < j->n; i++) {
        free(j->subjects[i]);
        free(j->ids[i]);
        free(j->bodies[i]);
    }
    free(j);
}

static json_t *string_or_empty(const char *s)
{
    json_t *j = json_string(s ? s : "");
    return j ? j : json_string("");
}

/* The CloudEvent of a stored event: the shape the HTTP feed serves
 * (moat/events.h), so a consumer cannot tell the transports apart. */
static char *cloudevent_text(const struct moat_outbox *o,
                             const struct outbox_event *e)
{
    char seq[24], time[25];
    snprintf(seq, sizeof(seq), "%lld", (long long)e->seq);
    moat_time_rfc3339(e->time_ms, time);
    char *source = moat_xasprintf("moat/%s", o->source);
    json_t *ev = json_pack(
        "{s:s, s:o, s:s, s:o, s:o, s:s, s:s, s:O, s:s, s:i}", "specversion",
        "1.0", "id", string_or_empty(e->id), "source", source, "type",
        string_or_empty(e->type), "subject", string_or_empty(e->subject),
        "time", time, "datacontenttype", "application/json", "data", e->data,
        "sequence", seq, "dataschemaversion", e->schema_version);
    free(source);
    if (!ev)
        return NULL;
    if (e->traceparent && *e->traceparent)
        json_object_set_new(ev, "traceparent", json_string(e->traceparent));
    char *text = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    return text;
}

static int relay_collect(const struct outbox_event *e, void *arg)
{
    struct relay_job *j = arg;
    char *body = cloudevent_text(j->r->o, e);
    if (!body)
        return MOAT_ENOMEM;
    j->seqs[j->n] = e->seq;
    j->subjects[j->n] =
        moat_xasprintf("moat.ev.%s.%s", j->r->o->source, e->type);
    j->ids[j->n] = moat_xstrdup(e->id);
    j->bodies[j->n] = body;
    j->n++;
    return OUTBOX_NEXT;
}

/* The acked position in the producer's own database. */
static int relay_load(struct relay *r)
{
    struct moat_outbox *o = r->o;
    if (o->db) {
        int rc = moat_db_exec(o->db, "relay_table",
                              moat_db_engine(o->db) == MOAT_DB_POSTGRES
                                  ? RELAY_TABLE_PG
                                  : RELAY_TABLE);
        if (rc != MOAT_OK)
            return rc;
        struct moat_stmt *st = moat_db_prepare(
            o->db, "relay_get",
            "SELECT acked_seq FROM moat_relay WHERE broker = 'jetstream'");
        if (!st)
            return MOAT_EDB;
        r->acked =
            moat_stmt_step(st) == SQLITE_ROW ? moat_stmt_int64(st, 0) : 0;
        moat_stmt_reset(st);
        return MOAT_OK;
    }
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(o->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    const void *val;
    size_t vlen;
    rc = moat_kv_gets(t, o->kv_meta, RELAY_ACKED_KEY, &val, &vlen);
    r->acked =
        rc == MOAT_OK && vlen == 8 ? (int64_t)moat_kv_u64_from_key(val) : 0;
    moat_kv_abort(t);
    return rc == MOAT_OK || rc == MOAT_ENOTFOUND ? MOAT_OK : rc;
}

/* Record r->acked; skipped (done later) while the producer has a
 * transaction open on the connection. Losing it costs a republish that the
 * broker's duplicate window and the consumers' cursors absorb. */
static void relay_store(struct relay *r, bool now)
{
    struct moat_outbox *o = r->o;
    if (r->stored == r->acked || o->ops->in_txn(o))
        return;
    /* A write (and its sync) of the producer's database per round would
     * double its commits under load: at most one a second. */
    if (!now && moat_mono_ms() - r->stored_at_ms < RELAY_STORE_MS)
        return;
    int rc;
    if (o->db) {
        struct moat_stmt *st = moat_db_prepare(
            o->db, "relay_set",
            "INSERT INTO moat_relay (broker, acked_seq) VALUES ('jetstream', "
            "?1) ON CONFLICT (broker) DO UPDATE SET acked_seq = "
            "excluded.acked_seq");
        if (!st)
            return;
        moat_stmt_bind_int64(st, 1, r->acked);
        int src = moat_stmt_step(st);
        rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(o->db, src);
        moat_stmt_reset(st);
    } else {
        struct moat_kv_txn *t;
        unsigned char key[8];
        moat_kv_u64_key((uint64_t)r->acked, key);
        rc = moat_kv_begin(o->kv, &t);
        if (rc == MOAT_OK) {
            rc = moat_kv_puts(t, o->kv_meta, RELAY_ACKED_KEY, key, sizeof(key),
                              0);
            if (rc == MOAT_OK)
                rc = moat_kv_commit(t);
            else
                moat_kv_abort(t);
        }
    }
    if (rc == MOAT_OK) {
        r->stored = r->acked;
        r->stored_at_ms = moat_mono_ms();
    }
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_WARN, "relay cannot record the acked position",
                 "{s:s, s:s}", "source", o->source, "error", moat_strerror(rc));
}

/* Worker thread: make sure the stream exists, then publish in order. */
static void relay_work(void *arg)
{
    struct relay_job *j = arg;
    jsCtx *js = js_get(j->err, sizeof(j->err));
    if (!js) {
        j->failed = true;
        return;
    }
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus st = js_GetStreamInfo(&si, js, j->r->stream, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (st == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        char subjects[NAME_MAX_LEN];
        snprintf(subjects, sizeof(subjects), "moat.ev.%s.>", j->r->o->source);
        const char *subj[] = {subjects};
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        cfg.Name = j->r->stream;
        cfg.Subjects = subj;
        cfg.SubjectsLen = 1;
        cfg.Storage = js_FileStorage;
        cfg.Retention = js_LimitsPolicy;
        cfg.Discard = js_DiscardOld;
        st = js_AddStream(&si, js, &cfg, NULL, &jerr);
        jsStreamInfo_Destroy(si);
        if (st != NATS_OK) {
            snprintf(j->err, sizeof(j->err), "create stream %s: %s (%d)",
                     j->r->stream, natsStatus_GetText(st), (int)jerr);
            j->failed = true;
            return;
        }
        j->recreated = true;
        return; /* the loop rewinds to the oldest retained event */
    }
    if (st != NATS_OK) {
        snprintf(j->err, sizeof(j->err), "stream info %s: %s (%d)",
                 j->r->stream, natsStatus_GetText(st), (int)jerr);
        j->failed = true;
        return;
    }
    char seq[24], head[24];
    snprintf(head, sizeof(head), "%lld", (long long)j->head);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = PUBLISH_WAIT_MS;
    po.ExpectStream = j->r->stream;
    for (size_t i = 0; i < j->n; i++) {
        natsMsg *m = NULL;
        snprintf(seq, sizeof(seq), "%lld", (long long)j->seqs[i]);
        st = natsMsg_Create(&m, j->subjects[i], NULL, j->bodies[i],
                            (int)strlen(j->bodies[i]));
        if (st == NATS_OK)
            st = natsMsgHeader_Set(m, "Nats-Msg-Id", j->ids[i]);
        if (st == NATS_OK)
            st = natsMsgHeader_Set(m, "Moat-Seq", seq);
        if (st == NATS_OK)
            st = natsMsgHeader_Set(m, "Moat-Head", head);
        jsPubAck *pa = NULL;
        if (st == NATS_OK)
            st = js_PublishMsg(&pa, js, m, &po, &jerr);
        jsPubAck_Destroy(pa);
        natsMsg_Destroy(m);
        if (st != NATS_OK) {
            snprintf(j->err, sizeof(j->err), "publish seq %s: %s (%d)", seq,
                     natsStatus_GetText(st), (int)jerr);
            j->failed = true;
            return;
        }
        /* Acknowledged: the next one may go (outbox order). */
        j->acked = j->seqs[i];
    }
}

static void relay_arm(struct relay *r, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(r->timer, &tv);
}

static void relay_done(void *arg, bool cancelled);

static void relay_tick(evutil_socket_t fd, short what, void *arg)
{
    struct relay *r = arg;
    if (r->busy)
        return;
    if (!r->loaded) {
        int rc = relay_load(r);
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "relay cannot read its acked position",
                     "{s:s, s:s}", "source", r->o->source, "error",
                     moat_strerror(rc));
            relay_arm(r, RELAY_BACKOFF_MAX);
            return;
        }
        r->loaded = true;
        r->stored = r->acked;
    }
    struct relay_job *j = moat_xcalloc(1, sizeof(*j));
    j->r = r;
    int rc = moat_outbox_bounds(r->o, &j->head, NULL, NULL);
    if (rc == MOAT_OK)
        rc = moat_outbox_read(r->o, r->acked, RELAY_BATCH, relay_collect, j);
    if (rc == MOAT_OK)
        rc = moat_work_submit(r->pool, relay_work, relay_done, j);
    if (rc != MOAT_OK) {
        relay_job_free(j);
        relay_arm(r, RELAY_BACKOFF_MAX);
        return;
    }
    r->busy = true;
    r->job = j;
}

static void relay_done(void *arg, bool cancelled)
{
    struct relay_job *j = arg;
    struct relay *r = j->r;
    bool dirty = r->dirty;
    r->busy = false;
    r->dirty = false;
    r->job = NULL;
    if (cancelled || !r->timer) { /* stopping: relay_stopping stores */
        if (!cancelled && !j->recreated && j->acked > r->acked)
            r->acked = j->acked;
        relay_job_free(j);
        return;
    }
    if (j->recreated) {
        moat_log(r->acked ? MOAT_LOG_WARN : MOAT_LOG_INFO,
                 "JetStream stream missing: created, republishing the "
                 "outbox from its oldest retained event",
                 "{s:s, s:s, s:I}", "source", r->o->source, "stream", r->stream,
                 "acked_before", (json_int_t)r->acked);
        r->acked = 0;
        relay_store(r, true);
    } else if (j->acked > r->acked) {
        r->acked = j->acked;
        relay_store(r, false);
    } else {
        relay_store(r, false); /* what an earlier round could not */
    }
    if (j->failed) {
        if (!r->failing)
            moat_log(MOAT_LOG_WARN, "relay to JetStream failing, retrying",
                     "{s:s, s:s}", "source", r->o->source, "error", j->err);
        r->failing = true;
        r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : 100;
        if (r->backoff_ms > RELAY_BACKOFF_MAX)
            r->backoff_ms = RELAY_BACKOFF_MAX;
        relay_arm(r, r->backoff_ms);
    } else {
        if (r->failing)
            moat_log(MOAT_LOG_INFO, "relay to JetStream working again",
                     "{s:s, s:I}", "source", r->o->source, "acked",
                     (json_int_t)r->acked);
        r->failing = false;
        r->backoff_ms = 0;
        /* More to send (a full batch, or a rewind): at once. */
        relay_arm(r, j->recreated || dirty || j->n == RELAY_BATCH
                         ? 0
                         : RELAY_IDLE_MS);
    }
    relay_job_free(j);
}

static void relay_started(struct moat_outbox *o)
{
    struct relay *r = moat_xcalloc(1, sizeof(*r));
    r->o = o;
    stream_name(o->source, r->stream, sizeof(r->stream));
    if (moat_work_pool_new(&r->pool, o->base, 1) != MOAT_OK)
        moat_die("cannot create the relay's worker");
    r->timer = evtimer_new(o->base, relay_tick, r);
    if (!r->timer)
        moat_die("cannot create the relay's timer");
    o->relay = r;
    /* The first round runs from the loop, after the process is confined:
     * the worker thread starts with it. */
    relay_arm(r, 0);
}

static void relay_committed(struct moat_outbox *o)
{
    struct relay *r = o->relay;
    if (!r || r->failing)
        return; /* the backoff timer comes back */
    if (r->busy)
        r->dirty = true;
    else
        relay_arm(r, 0);
}

static void relay_stopping(struct moat_outbox *o)
{
    struct relay *r = o->relay;
    if (!r)
        return;
    event_free(r->timer);
    r->timer = NULL;
    /* Waits for a publish in flight; its done frees the job. */
    moat_work_pool_free(r->pool);
    if (r->loaded)
        relay_store(r, true);
    o->relay = NULL;
    free(r);
}

/* ---- the source (consumer side) ---- */

struct fetch_job;

struct js_source {
    struct moat_event_source base;  /* first: the consumer sees this */
    struct moat_event_source *http; /* the fallback; owned */
    struct moat_work_pool *pool;
    char stream[NAME_MAX_LEN], durable[NAME_MAX_LEN], filter[NAME_MAX_LEN];
    /* Loop thread. */
    int64_t live_pos; /* the last seq handed out from the durable; -1 none */
    int64_t head;
    bool live_busy; /* a fetch job in flight */
    bool on_http;   /* the last live pull fell back to the feed (logged) */
    uint64_t http_until_ms; /* after a broker failure: the feed until then */
    _Atomic bool freeing;   /* read by the worker */
    /* Worker thread only (or the loop once the worker is joined). */
    natsSubscription *sub;
    natsMsg **held; /* delivered, not acked yet */
    size_t nheld;
    uint64_t quiet_since_ms;
};

struct fetch_job {
    struct js_source *s;
    int64_t after;
    int limit;
    int wait_ms;
    moat_source_done_fn done;
    void *arg;
    /* results */
    json_t *events;
    int64_t head;
    int err;
    bool gap; /* the durable cannot serve `after` in order */
    char why[160];
};

static const struct moat_event_source_ops js_source_ops;

static int64_t header_i64(natsMsg *m, const char *key)
{
    const char *v = NULL;
    int64_t n;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v ||
        moat_parse_i64(v, 0, INT64_MAX, &n) != MOAT_OK)
        return -1;
    return n;
}

static void drop_sub(struct js_source *s)
{
    for (size_t i = 0; i < s->nheld; i++)
        natsMsg_Destroy(s->held[i]);
    s->nheld = 0;
    if (s->sub) {
        natsSubscription_Unsubscribe(s->sub);
        natsSubscription_Destroy(s->sub);
        s->sub = NULL;
    }
}

static natsStatus ensure_sub(struct js_source *s, jsCtx *js, jsErrCode *jerr)
{
    if (s->sub)
        return NATS_OK;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = s->stream;
    so.Config.Durable = s->durable;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.DeliverPolicy = js_DeliverAll;
    so.Config.AckWait = (int64_t)ACK_WAIT_S * 1000000000LL;
    so.Config.FilterSubject = s->filter;
    so.ManualAck = true;
    s->quiet_since_ms = moat_mono_ms();
    return js_PullSubscribe(&s->sub, js, s->filter, s->durable, NULL, &so,
                            jerr);
}

/* The durable still exists? (A wiped server forgets it without telling a
 * pull subscription, which then only times out.) */
static bool durable_exists(struct js_source *s, jsCtx *js)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st =
        js_GetConsumerInfo(&ci, js, s->stream, s->durable, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    return !(st == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr ||
             jerr == JSStreamNotFoundErr);
}

/* Worker thread: ack what the consumer committed, then fetch. */
static void fetch_work(void *arg)
{
    struct fetch_job *j = arg;
    struct js_source *s = j->s;
    jsCtx *js = js_get(j->why, sizeof(j->why));
    if (!js) {
        j->err = MOAT_EIO;
        return;
    }
    /* The consumer asks for the events after its committed cursor: what
     * is at or below it is applied, the rest comes again at once. */
    for (size_t i = 0; i < s->nheld; i++) {
        if (header_i64(s->held[i], "Moat-Seq") <= j->after)
            natsMsg_Ack(s->held[i], NULL);
        else
            natsMsg_Nak(s->held[i], NULL);
        natsMsg_Destroy(s->held[i]);
    }
    s->nheld = 0;
    jsErrCode jerr = 0;
    natsStatus st = ensure_sub(s, js, &jerr);
    if (st != NATS_OK) {
        snprintf(j->why, sizeof(j->why), "subscribe %s: %s (%d)", s->durable,
                 natsStatus_GetText(st), (int)jerr);
        drop_sub(s);
        j->err = MOAT_EIO;
        return;
    }
    j->events = json_array();
    j->head = -1;
    uint64_t deadline = moat_mono_ms() + (uint64_t)j->wait_ms;
    for (;;) {
        natsMsgList list = {0};
        bool more = json_array_size(j->events) > 0;
        st = natsSubscription_Fetch(&list, s->sub, FETCH_BATCH,
                                    more ? FETCH_MORE_MS : FETCH_TIMEOUT_MS,
                                    &jerr);
        if (st == NATS_TIMEOUT && more) {
            natsMsgList_Destroy(&list);
            return; /* what has come so far */
        }
        if (st == NATS_TIMEOUT) {
            natsMsgList_Destroy(&list);
            if (moat_mono_ms() - s->quiet_since_ms >= CONSUMER_CHECK_MS) {
                s->quiet_since_ms = moat_mono_ms();
                if (!durable_exists(s, js)) {
                    snprintf(j->why, sizeof(j->why),
                             "durable %s is gone (broker storage wiped?)",
                             s->durable);
                    drop_sub(s);
                    j->err = MOAT_EIO;
                    return;
                }
            }
            if (atomic_load(&s->freeing) || moat_mono_ms() >= deadline)
                return; /* nothing new within the wait */
            continue;
        }
        if (st != NATS_OK) {
            natsMsgList_Destroy(&list);
            snprintf(j->why, sizeof(j->why), "fetch %s: %s (%d)", s->durable,
                     natsStatus_GetText(st), (int)jerr);
            drop_sub(s);
            j->err = MOAT_EIO;
            return;
        }
        s->quiet_since_ms = moat_mono_ms();
        s->held = moat_xrealloc(s->held, (s->nheld + (size_t)list.Count) *
                                             sizeof(*s->held));
        int64_t expect = j->after + 1;
        for (int i = 0; i < list.Count; i++) {
            natsMsg *m = list.Msgs[i];
            list.Msgs[i] = NULL; /* ours now */
            int64_t seq = header_i64(m, "Moat-Seq");
            int64_t head = header_i64(m, "Moat-Head");
            if (head > j->head)
                j->head = head;
            if (seq >= 0 && seq <= j->after) { /* applied: redelivery */
                natsMsg_Ack(m, NULL);
                natsMsg_Destroy(m);
                continue;
            }
            json_t *ev = NULL;
            if (seq == expect &&
                json_array_size(j->events) < (size_t)j->limit) {
                ev = json_loadb(natsMsg_GetData(m),
                                (size_t)natsMsg_GetDataLength(m), 0, NULL);
            }
            if (ev) {
                json_array_append_new(j->events, ev);
                expect++;
            } else if (seq != expect && json_array_size(j->events) == 0) {
                j->gap = true; /* not the next one: the HTTP feed serves */
            }
            s->held[s->nheld++] = m; /* acked or naked by the next pull */
        }
        natsMsgList_Destroy(&list);
        if (j->gap || json_array_size(j->events) >= (size_t)j->limit)
            return;
        if (json_array_size(j->events) == 0 && moat_mono_ms() >= deadline)
            return;
    }
}

static void fetch_done(void *arg, bool cancelled)
{
    struct fetch_job *j = arg;
    struct js_source *s = j->s;
    s->live_busy = false;
    if (cancelled || s->freeing) { /* free drops pulls in flight */
        json_decref(j->events);
        free(j);
        return;
    }
    if (j->err != MOAT_OK || j->gap) {
        /* The broker cannot hand over the next event in order (it is
         * down, the stream is missing or lacks it): the outbox itself,
         * through the HTTP feed, answers this pull. */
        if (!s->on_http)
            moat_log(MOAT_LOG_INFO,
                     "JetStream cannot serve the next events: reading the "
                     "HTTP feed meanwhile",
                     "{s:s, s:I, s:s}", "source", s->base.name, "after",
                     (json_int_t)j->after, "why",
                     j->gap ? "gap in the stream" : j->why);
        s->on_http = true;
        if (j->err != MOAT_OK) /* do not ask a failing broker every pull */
            s->http_until_ms = moat_mono_ms() + BROKER_RETRY_MS;
        int rc = s->http->ops->pull(s->http, j->after, j->limit,
                                    j->err == MOAT_OK ? 0 : j->wait_ms, j->done,
                                    j->arg);
        if (rc != MOAT_OK)
            j->done(rc, NULL, 0, j->arg);
        json_decref(j->events);
        free(j);
        return;
    }
    if (s->on_http)
        moat_log(MOAT_LOG_INFO, "reading JetStream again", "{s:s}", "source",
                 s->base.name);
    s->on_http = false;
    if (j->head > s->head)
        s->head = j->head;
    size_t n = json_array_size(j->events);
    if (n > 0) {
        int64_t last = 0;
        const char *seq = json_string_value(
            json_object_get(json_array_get(j->events, n - 1), "sequence"));
        if (seq && moat_parse_i64(seq, 1, INT64_MAX, &last) == MOAT_OK)
            s->live_pos = last;
    } else if (s->live_pos < j->after) {
        s->live_pos = j->after;
    }
    int64_t head = s->head > j->after ? s->head : j->after;
    j->done(MOAT_OK, j->events, head, j->arg);
    json_decref(j->events);
    free(j);
}

static int js_pull(struct moat_event_source *src, int64_t after, int limit,
                   int wait_ms, moat_source_done_fn done, void *arg)
{
    struct js_source *s = (struct js_source *)src;
    /* The durable serves the live loop only (a long poll: wait_ms > 0;
     * verification reads with wait 0, and so does the live loop right
     * after an error), one pull at a time, from where it left off; an
     * older position (replay) reads the outbox itself, and so does every
     * pull for a while after the broker failed one. The durable cannot
     * serve a second reader: what it delivered to one is pending there. */
    if (wait_ms == 0 || s->live_busy ||
        (s->live_pos >= 0 && after < s->live_pos) ||
        moat_mono_ms() < s->http_until_ms)
        return s->http->ops->pull(s->http, after, limit, wait_ms, done, arg);
    struct fetch_job *j = moat_xcalloc(1, sizeof(*j));
    j->s = s;
    j->after = after;
    j->limit = limit;
    j->wait_ms = wait_ms;
    j->done = done;
    j->arg = arg;
    int rc = moat_work_submit(s->pool, fetch_work, fetch_done, j);
    if (rc != MOAT_OK) {
        free(j);
        return rc;
    }
    s->live_busy = true;
    return MOAT_OK;
}

static void js_source_free(struct moat_event_source *src)
{
    struct js_source *s = (struct js_source *)src;
    atomic_store(&s->freeing, true);
    moat_work_pool_free(s->pool); /* waits for a fetch (<= its timeout) */
    drop_sub(s); /* before the connection (moat_jetstream_disable) */
    free(s->held);
    s->http->ops->free(s->http);
    free(s);
}

static const struct moat_event_source_ops js_source_ops = {
    .pull = js_pull,
    .free = js_source_free,
};

static struct moat_event_source *js_wrap(struct moat_event_source *http,
                                         struct event_base *base)
{
    struct js_source *s = moat_xcalloc(1, sizeof(*s));
    if (moat_work_pool_new(&s->pool, base, 1) != MOAT_OK) {
        free(s);
        return http;
    }
    s->base.ops = &js_source_ops;
    snprintf(s->base.name, sizeof(s->base.name), "%s", http->name);
    s->http = http;
    s->live_pos = -1;
    s->head = -1;
    int k = 0;
    for (int i = 0; i < G.nproducers; i++)
        k += strcmp(G.producers[i], http->name) == 0;
    if (G.nproducers < (int)MOAT_ARRAY_LEN(G.producers))
        snprintf(G.producers[G.nproducers++], sizeof(G.producers[0]), "%s",
                 http->name);
    stream_name(http->name, s->stream, sizeof(s->stream));
    snprintf(s->durable, sizeof(s->durable), "%s_%s_%d", G.service, http->name,
             k);
    snprintf(s->filter, sizeof(s->filter), "moat.ev.%s.>", http->name);
    return &s->base;
}

/* ---- enabling ---- */

static const struct moat_event_transport jetstream_transport = {
    .outbox_started = relay_started,
    .outbox_committed = relay_committed,
    .outbox_stopping = relay_stopping,
    .wrap = js_wrap,
};

int moat_jetstream_enable(const char *url, const char *service)
{
    if (!url || strncmp(url, "nats://", 7) != 0 || !service || !*service ||
        strlen(service) >= sizeof(G.service))
        return MOAT_EINVAL;
    free(G.url);
    G.url = moat_xstrdup(url);
    snprintf(G.service, sizeof(G.service), "%s", service);
    G.enabled = true;
    moat_event_transport = &jetstream_transport;
    moat_log(MOAT_LOG_INFO, "events travel through NATS JetStream", "{s:s}",
             "url", url);
    return MOAT_OK;
}

void moat_jetstream_disable(void)
{
    if (!G.enabled)
        return;
    moat_event_transport = NULL;
    pthread_mutex_lock(&G.mu);
    jsCtx_Destroy(G.js);
    G.js = NULL;
    if (G.nc) {
        natsConnection_Close(G.nc);
        natsConnection_Destroy(G.nc);
        G.nc = NULL;
    }
    pthread_mutex_unlock(&G.mu);
    nats_CloseAndWait(2000);
    free(G.url);
    G.url = NULL;
    G.enabled = false;
}
