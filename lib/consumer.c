/*
 * consumer.c - idempotent event consumers (see moat/events.h): one pull
 * loop per subscribed source, each pulled batch applied in one transaction
 * together with the source's cursor, poison events parked as dead letters,
 * and the admin routes to inspect, redrive, replay and verify.
 *
 * The pull loop of a subscription, all on the event loop thread:
 *
 *   pull(after = cursor, wait = 25 s) --done--> batch of events
 *     BEGIN, then for each event, in order:
 *       seq <= cursor                -> duplicate delivery: skip
 *       type not subscribed          -> skip (the cursor moves past it with
 *                                       the commit)
 *       its subject has a dead letter -> park it "blocked" (also one parked
 *                                       earlier in this transaction)
 *       otherwise SAVEPOINT; handler; RELEASE
 *         handler failed -> ROLLBACK TO the savepoint (that event alone is
 *                           undone), COMMIT the events before it with the
 *                           cursor right before it, retry it after 50 ms,
 *                           200 ms, then park it "failed" and go on
 *     COMMIT with the cursor at the last event done: effects and cursor
 *     commit together, so each event takes effect exactly once; then pull
 *     again.
 *   A transaction is cut at TXN_MAX_EVENTS events or TXN_MAX_MS of work
 *   and the batch goes on in a new one on the next loop turn.
 *
 * One transaction per batch instead of one per event is what lets search
 * keep up with catalog: a commit (WAL append, its locking, a checkpoint
 * now and then) cost more than most handlers.
 *
 * The same loop serves both engines: SQLite (moat_consumer_new; BEGIN,
 * SAVEPOINT per event) and LMDB (moat_consumer_new_kv; one write
 * transaction, a nested one per event). Everything engine-specific is a
 * call through c->ops (consumer_internal.h; consumer_sqlite.c and
 * consumer_kv.c); replay and verification are in consumer_replay.c, the
 * admin routes in consumer_admin.c.
 *
 * A source that cannot be reached, or our own database refusing a write,
 * is retried with exponential backoff (100 ms doubling to 5 s) and logged
 * once per change of state, not once per attempt.
 *
 * Pausing (replay, verify) never interrupts anything: every transaction
 * starts and ends within one callback (the same holds for redrive, which
 * uses the same connection). A paused subscription keeps what it
 */
#include "moat/common.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "consumer_internal.h"
#include "events_internal.h"
#include "moat/log.h"
#include "moat/trace.h"

#define PULL_WAIT_MS   25000
#define PULL_LIMIT     100
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* An empty page that came back faster than this (a source that does not
 * long-poll) is followed by a short pause rather than a busy loop. */
#define EMPTY_POLL_MIN_MS 100
#define ERROR_MAX         CONSUMER_ERROR_MAX
/* One transaction applies at most this many events or this much work: a
 * bigger one would only hold the write lock and this loop longer (other
 * writers wait, requests queue) for little more throughput. */
#define TXN_MAX_EVENTS 500
#define TXN_MAX_MS     50

/* Waits between the attempts of a failing handler. */
static const int retry_delays_ms[MOAT_CONSUMER_MAX_ATTEMPTS - 1] = {50, 200};

/* ---- small helpers ---- */

const char *consumer_jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The event's sequence ("sequence" is a decimal string in CloudEvents). */
int consumer_event_seq(json_t *ce, int64_t *seq)
{
    const char *s = consumer_jstr(ce, "sequence");
    if (!json_is_object(ce) || !s)
        return MOAT_EINVAL;
    return moat_parse_i64(s, 1, INT64_MAX, seq);
}

/*
 * Fill ev (borrowing from ce) for the handler. On a malformed event it
 * still fills what it can ("" for the rest) and says what is wrong in why.
 */
int consumer_parse_event(json_t *ce, const char *source, int64_t seq,
                         struct moat_event *ev, char *why, size_t whylen)
{
    memset(ev, 0, sizeof(*ev));
    ev->source = source;
    ev->seq = seq;
    ev->id = consumer_jstr(ce, "id");
    ev->type = consumer_jstr(ce, "type");
    ev->subject = consumer_jstr(ce, "subject");
    ev->time = consumer_jstr(ce, "time");
    ev->traceparent = consumer_jstr(ce, "traceparent");
    ev->data = json_object_get(ce, "data");
    json_t *ver = json_object_get(ce, "dataschemaversion");
    ev->schema_version =
        json_is_integer(ver) ? (int)json_integer_value(ver) : 1;
    const char *missing = !ev->id        ? "id"
                          : !ev->type    ? "type"
                          : !ev->subject ? "subject"
                          : !ev->time    ? "time"
                                         : NULL;
    if (!ev->id)
        ev->id = "";
    if (!ev->type)
        ev->type = "";
    if (!ev->subject)
        ev->subject = "";
    if (!ev->time)
        ev->time = "";
    if (!ev->traceparent)
        ev->traceparent = "";
    if (missing) {
        snprintf(why, whylen, "malformed event: no string member \"%s\"",
                 missing);
        return MOAT_EINVAL;
    }
    if (ver && (!json_is_integer(ver) || json_integer_value(ver) < 1 ||
                json_integer_value(ver) > 1000000)) {
        snprintf(why, whylen,
                 "malformed event: dataschemaversion is not a positive "
                 "integer");
        return MOAT_EINVAL;
    }
    if (!ev->data)
        ev->data = json_null();
    /* Parsed once for every handler; 0 when unparsable. */
    if (moat_time_parse_rfc3339(ev->time, &ev->time_ms) != MOAT_OK)
        ev->time_ms = 0;
    return MOAT_OK;
}

bool consumer_wants_type(const struct sub *s, json_t *ce)
{
    const char *type = consumer_jstr(ce, "type");
    if (!s->types || !type)
        return true; /* all types; or malformed, which gets parked */
    for (char **t = s->types; *t; t++)
        if (strcmp(*t, type) == 0)
            return true;
    return false;
}

struct sub *consumer_find_sub(struct moat_consumer *c, const char *source)
{
    for (size_t i = 0; i < c->nsubs; i++)
        if (strcmp(c->subs[i]->src->name, source) == 0)
            return c->subs[i];
    return NULL;
}

/* Run the handler for ev inside the open transaction (or the scratch's),
 * with the event's trace as log context. Returns its result; why gets the
 * reason. */
int consumer_run_handler(struct sub *s, struct consumer_scratch *scratch,
                         const struct moat_event *ev, char *why, size_t whylen)
{
    struct moat_trace t;
    const char *hwhy = NULL;
    moat_trace_start(&t, ev->traceparent, NULL);
    const struct moat_trace *saved = moat_log_trace();
    moat_log_set_trace(&t);
    uint64_t t0 = moat_mono_ns();
    int rc = s->c->ops->run(s->c, s, scratch, ev, &hwhy);
    moat_log_set_trace(saved);
    if (!scratch) {
        char name[MOAT_SPAN_NAME_MAX];
        snprintf(name, sizeof(name), "consume %s from %s", ev->type,
                 s->src->name);
        int64_t dur_us = (int64_t)((moat_mono_ns() - t0) / 1000);
        moat_span_record(&t, MOAT_SPAN_CONSUMER, name,
                         moat_wall_ms() * 1000 - dur_us, dur_us, 0,
                         rc != MOAT_OK);
    }
    if (rc != MOAT_OK)
        /* Copied now: a db-owned message changes with the rollback. */
        snprintf(why, whylen, "%s", hwhy ? hwhy : moat_strerror(rc));
    return rc;
}

void consumer_refresh_dead_gauge(struct sub *s)
{
    int64_t failed = 0, blocked = 0;
    if (s->c->ops->dead_count(s->c, s->src->name, &failed, &blocked) == MOAT_OK)
        moat_metric_set(s->m_dead, (double)(failed + blocked));
}

/* ---- the live pull loop ---- */

static void sub_pull(struct sub *s);
static void sub_apply(struct sub *s);

static void arm(struct sub *s, enum sub_next next, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    s->next = next;
    evtimer_add(s->timer, &tv);
}

static void on_sub_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sub *s = arg;
    if (s->c->paused)
        return; /* resume picks up from the state we are in */
    if (s->next == NEXT_PULL)
        sub_pull(s);
    else
        sub_apply(s);
}

static int next_backoff(struct sub *s)
{
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (s->backoff_ms > BACKOFF_MAX_MS)
        s->backoff_ms = BACKOFF_MAX_MS;
    return s->backoff_ms;
}

void consumer_update_lag(struct sub *s)
{
    int64_t lag = s->head > s->cursor ? s->head - s->cursor : 0;
    if (lag == 0) {
        s->pending_ms = 0;
    } else if (s->batch) {
        /* The first event of the batch past the cursor is the oldest
         * unapplied one we know of. */
        for (size_t i = s->pos; i < json_array_size(s->batch); i++) {
            json_t *ce = json_array_get(s->batch, i);
            int64_t seq;
            if (consumer_event_seq(ce, &seq) == MOAT_OK && seq > s->cursor) {
                /* Unparsable: 0, no age (the time only feeds the lag
                 * metric). */
                if (moat_time_parse_rfc3339(consumer_jstr(ce, "time"),
                                            &s->pending_ms) != MOAT_OK)
                    s->pending_ms = 0;
                break;
            }
        }
    }
    moat_metric_set(s->m_lag_events, (double)lag);
    int64_t age = s->pending_ms ? moat_wall_ms() - s->pending_ms : 0;
    moat_metric_set(s->m_lag_seconds, age > 0 ? (double)age / 1000.0 : 0.0);
}

static void source_failed(struct sub *s, int err)
{
    if (s->down_err != err) {
        if (err == MOAT_ENOTFOUND)
            moat_log(MOAT_LOG_ERROR,
                     "events this consumer has not applied were deleted by "
                     "the source's retention: the view must be rebuilt from "
                     "the source's API",
                     "{s:s, s:I}", "source", s->src->name, "cursor",
                     (json_int_t)s->cursor);
        else
            moat_log(MOAT_LOG_WARN,
                     "event source unavailable, retrying with backoff",
                     "{s:s, s:s}", "source", s->src->name, "error",
                     moat_strerror(err));
        if (s->down_err == MOAT_OK)
            s->down_since_ms = moat_wall_ms();
        s->down_err = err;
        s->backoff_ms = 0;
    }
    snprintf(s->error, sizeof(s->error), "source: %s",
             err == MOAT_ENOTFOUND ? "events gone (retention)"
                                   : moat_strerror(err));
    arm(s, NEXT_PULL, next_backoff(s));
}

static void source_ok(struct sub *s)
{
    if (s->down_err != MOAT_OK) {
        moat_log(MOAT_LOG_INFO, "event source reachable again", "{s:s}",
                 "source", s->src->name);
        s->down_err = MOAT_OK;
        s->down_since_ms = 0;
        s->error[0] = '\0';
    }
    if (!s->local_fault)
        s->backoff_ms = 0;
}

/* Our own database refused a write: retry the batch with backoff. */
static void local_fault(struct sub *s, const char *what)
{
    if (!s->local_fault) {
        moat_log(MOAT_LOG_ERROR,
                 "consumer cannot write its database, retrying with backoff",
                 "{s:s, s:s, s:s}", "source", s->src->name, "step", what,
                 "error", s->c->ops->errmsg(s->c));
        s->local_fault = true;
        s->backoff_ms = 0;
    }
    snprintf(s->error, sizeof(s->error), "database: %s failed", what);
    arm(s, NEXT_APPLY, next_backoff(s));
}

static void local_ok(struct sub *s)
{
    if (!s->local_fault)
        return;
    moat_log(MOAT_LOG_INFO, "consumer database writable again", "{s:s}",
             "source", s->src->name);
    s->local_fault = false;
    s->backoff_ms = 0;
    s->error[0] = '\0';
}

/* Move the cursor past events that needed no handler (its own small
 * transaction; losing it only means skipping them again). */
static void flush_skip(struct sub *s, int64_t skip_to)
{
    const struct consumer_storage_ops *ops = s->c->ops;
    if (skip_to <= s->cursor || ops->begin(s->c) != MOAT_OK)
        return;
    if (consumer_shared_cursor(s, skip_to) > skip_to) {
        ops->rollback(s->c); /* another instance got further */
        return;
    }
    if (ops->cursor_write(s->c, s->src->name, skip_to) == MOAT_OK &&
        ops->commit(s->c) == MOAT_OK)
        s->cursor = skip_to;
    else
        ops->rollback(s->c);
}

/*
 * The transaction a stretch of a batch is applied in: BEGIN, then per
 * event SAVEPOINT; handler; RELEASE (or ROLLBACK TO on a failure, which
 * undoes that event alone), and COMMIT with the cursor at the last event
 * done in it. It starts and ends within one sub_apply call, like the
 * per-event transactions before it, so pause, redrive, replay and verify
 * (other callbacks on the same connection) never meet it open.
 */
struct txn {
    bool open;
    size_t start_pos; /* s->pos where it began: resumed from on abort */
    int64_t to;       /* the cursor it commits: the last event done */
    int events;       /* events done in it (handler run or parked) */
    int64_t applied;  /* of which took effect through their handler */
    uint64_t started_ms;
    json_t *parked; /* events parked in it, logged once committed */
};

static void txn_init(struct sub *s, struct txn *tx)
{
    json_decref(tx->parked);
    *tx = (struct txn){.start_pos = s->pos, .to = s->cursor};
}

static int txn_begin(struct sub *s, struct txn *tx)
{
    if (tx->open)
        return MOAT_OK;
    int rc = s->c->ops->begin(s->c);
    if (rc != MOAT_OK)
        return rc;
    tx->open = true;
    tx->started_ms = moat_mono_ms();
    return MOAT_OK;
}

/* Nothing of tx happened (or SQLite already rolled it back): the batch
 * resumes at its first event; the cursor in memory never moved. */
static void txn_abort(struct sub *s, struct txn *tx)
{
    s->c->ops->rollback(s->c);
    s->pos = tx->start_pos;
    txn_init(s, tx);
}

/*
 * Commit tx with the cursor at its last event: the effects of exactly the
 * events done in it and the cursor commit together. MOAT_OK, or a
 * database error with tx still open (the caller aborts it).
 */
static int txn_commit(struct sub *s, struct txn *tx)
{
    const struct consumer_storage_ops *ops = s->c->ops;
    if (!tx->open) {
        flush_skip(s, tx->to); /* only skipped events: no effects */
        txn_init(s, tx);
        return MOAT_OK;
    }
    if (tx->events == 0) {
        /* Only a failed handler's undone savepoint: nothing to write but
         * the skips. */
        ops->rollback(s->c);
        flush_skip(s, tx->to);
        txn_init(s, tx);
        return MOAT_OK;
    }
    int rc = ops->cursor_write(s->c, s->src->name, tx->to);
    if (rc == MOAT_OK)
        rc = ops->commit(s->c);
    if (rc != MOAT_OK)
        return rc;
    if (s->c->outbox)
        moat_outbox_committed(s->c->outbox);
    s->cursor = tx->to;
    if (s->fail_seq && s->fail_seq <= s->cursor) {
        /* The failing event is behind us now: applied or parked. */
        s->fail_seq = 0;
        s->attempts = 0;
        if (!s->local_fault)
            s->error[0] = '\0';
    }
    moat_metric_add(s->m_applied, (double)tx->applied);
    size_t i;
    json_t *p;
    json_array_foreach(tx->parked, i, p)
    {
        moat_log(MOAT_LOG_WARN, "event parked as a dead letter",
                 "{s:s, s:I, s:s, s:s, s:s, s:s}", "source", s->src->name,
                 "seq",
                 (json_int_t)json_integer_value(json_object_get(p, "seq")),
                 "type", consumer_jstr(p, "type"), "subject",
                 consumer_jstr(p, "subject"), "state",
                 consumer_jstr(p, "state"), "error", consumer_jstr(p, "error"));
    }
    if (tx->parked)
        consumer_refresh_dead_gauge(s);
    local_ok(s);
    txn_init(s, tx);
    return MOAT_OK;
}

/*
 * Park ev as a dead letter in state, inside the open tx (its cursor then
 * moves past ev with the rest of tx). MOAT_OK or MOAT_EDB.
 */
static int park(struct sub *s, struct txn *tx, json_t *ce,
                const struct moat_event *ev, const char *state,
                const char *error, int attempts)
{
    char *text = json_dumps(ce, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        moat_die("cannot serialise an event");
    struct consumer_dead d = {
        .source = s->src->name,
        .seq = ev->seq,
        .event_id = ev->id,
        .subject = ev->subject,
        .type = ev->type,
        .event = text,
        .error = error,
        .attempts = attempts,
        .state = state,
        .parked_ms = moat_wall_ms(),
    };
    int rc = s->c->ops->park(s->c, &d);
    free(text);
    if (rc != MOAT_OK)
        return rc;
    if (!tx->parked)
        tx->parked = json_array();
    json_array_append_new(
        tx->parked, json_pack("{s:I, s:s, s:s, s:s, s:s}", "seq",
                              (json_int_t)ev->seq, "type", ev->type, "subject",
                              ev->subject, "state", state, "error", error));
    tx->to = ev->seq;
    tx->events++;
    return MOAT_OK;
}

enum outcome {
    DONE,  /* applied or parked inside tx; tx->to moved to it */
    RETRY, /* the handler failed and only its savepoint was undone: commit
              tx (the events before it) and try again after a delay */
    LOST,  /* the handler failed and took all of tx with it */
    FAULT, /* our database failed (*step says where): abort tx */
};

static enum outcome process(struct sub *s, struct txn *tx, json_t *ce,
                            int64_t seq, const char **step)
{
    struct moat_consumer *c = s->c;
    struct moat_event ev;
    char why[ERROR_MAX];
    int64_t blocker;

    *step = "begin";
    if (txn_begin(s, tx) != MOAT_OK)
        return FAULT;
    tx->to = consumer_shared_cursor(s, tx->to);
    if (seq <= tx->to)
        return DONE; /* another instance applied it */
    *step = "park";
    if (consumer_parse_event(ce, s->src->name, seq, &ev, why, sizeof(why)) !=
        MOAT_OK)
        return park(s, tx, ce, &ev, "failed", why, 0) == MOAT_OK ? DONE : FAULT;
    /* This also sees the dead letters parked earlier in tx itself. */
    *step = "dead letter lookup";
    if (c->ops->blocker(c, s->src->name, ev.subject, &blocker) != MOAT_OK)
        return FAULT;
    *step = "park";
    if (blocker) {
        /* Per-aggregate order: nothing of this subject may overtake the
         * parked event, so everything after it waits behind it. */
        snprintf(why, sizeof(why), "blocked behind parked event seq %lld",
                 (long long)blocker);
        return park(s, tx, ce, &ev, "blocked", why, 0) == MOAT_OK ? DONE
                                                                  : FAULT;
    }
    if (s->fail_seq == seq && s->attempts >= MOAT_CONSUMER_MAX_ATTEMPTS)
        /* Its attempts are used up but parking it did not commit (our
         * database failed, or its handler took the transaction down):
         * park it now rather than run it again. */
        return park(s, tx, ce, &ev, "failed", s->fail_why, s->attempts) ==
                       MOAT_OK
                   ? DONE
                   : FAULT;

    *step = "savepoint";
    if (c->ops->savepoint(c) != MOAT_OK)
        return FAULT;
    int hrc = consumer_run_handler(s, NULL, &ev, why, sizeof(why));
    if (hrc == MOAT_OK) {
        *step = "release savepoint";
        if (c->ops->release(c) != MOAT_OK)
            return FAULT;
        tx->to = seq;
        tx->events++;
        tx->applied++;
        if (ev.time_ms > 0) /* the hop: the producer's commit to here */
            moat_metric_observe(s->m_hop,
                                (double)(moat_wall_ms() - ev.time_ms) / 1000.0);
        return DONE;
    }
    /* SQLite rolls the whole transaction back by itself on some errors
     * (I/O, full disk), and a handler may have ended it against the
     * rules: then the events before this one in tx are gone too. */
    bool lost = c->ops->lost(c);
    if (hrc == MOAT_ETOOBIG || hrc == MOAT_EIO) {
        /* Our own storage is full or failing, not the event: hold the
         * batch with backoff (as for a failing commit); nothing counts
         * against the event, which would only be parked for it. */
        if (!lost)
            c->ops->rollback_to(c);
        *step = "a handler's write (storage full or I/O)";
        return FAULT;
    }
    if (!lost && c->ops->rollback_to(c) != MOAT_OK) {
        *step = "rollback to savepoint";
        return FAULT;
    }
    if (s->fail_seq != seq) {
        s->fail_seq = seq;
        s->attempts = 0;
    }
    s->attempts++;
    snprintf(s->fail_why, sizeof(s->fail_why), "%s", why);
    moat_metric_add(s->m_failures, 1);
    moat_log(MOAT_LOG_WARN, "event handler failed",
             "{s:s, s:I, s:s, s:s, s:s, s:i, s:s}", "source", s->src->name,
             "seq", (json_int_t)seq, "id", ev.id, "type", ev.type, "subject",
             ev.subject, "attempt", s->attempts, "error", why);
    if (lost)
        return LOST;
    if (s->attempts < MOAT_CONSUMER_MAX_ATTEMPTS) {
        snprintf(s->error, sizeof(s->error), "handler: %s", why);
        return RETRY;
    }
    /* Parked in tx: if tx does not commit, fail_seq/attempts make the
     * next try park it at once. */
    *step = "park";
    return park(s, tx, ce, &ev, "failed", why, s->attempts) == MOAT_OK ? DONE
                                                                       : FAULT;
}

/* Our database failed inside tx: log while SQLite's message is still the
 * failure's, then undo tx and retry from its first event with backoff. */
static void apply_fault(struct sub *s, struct txn *tx, const char *step)
{
    local_fault(s, step);
    txn_abort(s, tx);
    consumer_update_lag(s);
}

/*
 * Apply the batch from s->pos: in one transaction per stretch of at most
 * TXN_MAX_EVENTS events or TXN_MAX_MS of work (the rest continues on the
 * next loop turn, so requests on this loop and other writers get their
 * turn), cut short by a handler failure that must wait for its retry.
 */
static void sub_apply(struct sub *s)
{
    struct moat_consumer *c = s->c;
    struct txn tx = {0};
    const char *step = NULL;
    txn_init(s, &tx);

    while (s->batch && s->pos < json_array_size(s->batch) && !c->paused) {
        json_t *ce = json_array_get(s->batch, s->pos);
        int64_t seq;
        if (consumer_event_seq(ce, &seq) != MOAT_OK) {
            /* Without a sequence there is no cursor to move past it: the
             * source is broken, not the event. */
            if (txn_commit(s, &tx) != MOAT_OK) {
                apply_fault(s, &tx, "commit");
                return;
            }
            json_decref(s->batch);
            s->batch = NULL;
            source_failed(s, MOAT_EINVAL);
            consumer_update_lag(s);
            return;
        }
        if (seq <= tx.to) { /* delivered again: already done */
            s->pos++;
            continue;
        }
        if (!consumer_wants_type(s, ce)) {
            /* Only moves the cursor, with the next commit. */
            tx.to = seq;
            s->pos++;
            continue;
        }
        switch (process(s, &tx, ce, seq, &step)) {
        case DONE:
            s->pos++;
            break;
        case RETRY:
            /* The events before it keep their effects and the cursor stops
             * right before it. */
            if (txn_commit(s, &tx) != MOAT_OK) {
                apply_fault(s, &tx, "commit");
                return;
            }
            arm(s, NEXT_APPLY, retry_delays_ms[s->attempts - 1]);
            consumer_update_lag(s);
            return;
        case LOST:
            /* The events before it in tx are undone as well: they are
             * applied again, in order, before its next attempt. */
            txn_abort(s, &tx);
            arm(s, NEXT_APPLY,
                s->attempts < MOAT_CONSUMER_MAX_ATTEMPTS
                    ? retry_delays_ms[s->attempts - 1]
                    : 0);
            consumer_update_lag(s);
            return;
        case FAULT:
            apply_fault(s, &tx, step);
            return;
        }
        if (tx.open && s->pos < json_array_size(s->batch) &&
            (tx.events >= TXN_MAX_EVENTS ||
             moat_mono_ms() - tx.started_ms >= TXN_MAX_MS)) {
            if (txn_commit(s, &tx) != MOAT_OK) {
                apply_fault(s, &tx, "commit");
                return;
            }
            arm(s, NEXT_APPLY, 0);
            consumer_update_lag(s);
            return;
        }
    }
    if (txn_commit(s, &tx) != MOAT_OK) {
        apply_fault(s, &tx, "commit");
        return;
    }
    if (c->paused && s->batch) {
        consumer_update_lag(s); /* resume carries on at s->pos */
        return;
    }
    json_decref(s->batch);
    s->batch = NULL;
    consumer_update_lag(s);
    sub_pull(s);
}

void consumer_ticket_drop(struct pull_ticket *t)
{
    for (struct pull_ticket **p = &t->s->tickets; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            break;
        }
    free(t);
}

/*
 * The source was restored to an earlier point (moat/backup.h, feed
 * epochs): what we applied after `to` no longer exists there, and the
 * numbers after it will be new events. Resume at `to`; the source has
 * recorded the rewind for moat reconcile.
 */
static void rewind_cursor(struct sub *s, int64_t to)
{
    const struct consumer_storage_ops *ops = s->c->ops;
    /* On a failure the next pull finds the new epoch again. */
    if (ops->begin(s->c) != MOAT_OK) {
        arm(s, NEXT_PULL, next_backoff(s));
        return;
    }
    if (ops->cursor_write(s->c, s->src->name, to) != MOAT_OK ||
        ops->commit(s->c) != MOAT_OK) {
        ops->rollback(s->c);
        arm(s, NEXT_PULL, next_backoff(s));
        return;
    }
    s->cursor = to;
    s->head = to;
    s->ahead = false;
    moat_metric_add(s->m_rewinds, 1);
    sub_pull(s);
}

static void on_pulled(int err, json_t *events, int64_t head, void *arg)
{
    struct pull_ticket *t = arg;
    struct sub *s = t->s;
    bool stale = t->stale;
    consumer_ticket_drop(t);
    if (stale)
        return; /* asked for before a replay reset the cursor */
    s->pulling = false;
    if (err == MOAT_ECANCELLED)
        return; /* the client is going away: so are we */
    if (err == MOAT_ECONFLICT && head < s->cursor) {
        rewind_cursor(s, head);
        return;
    }
    if (err != MOAT_OK) {
        source_failed(s, err);
        return;
    }
    source_ok(s);
    s->head = head;
    bool ahead = head < s->cursor;
    if (ahead && !s->ahead)
        /* The source lost events we applied (restored from a backup?):
         * the numbers it hands out next we have seen already. */
        moat_log(MOAT_LOG_ERROR,
                 "consumer cursor is ahead of the source's newest event",
                 "{s:s, s:I, s:I}", "source", s->src->name, "cursor",
                 (json_int_t)s->cursor, "head", (json_int_t)head);
    s->ahead = ahead;
    if (json_array_size(events) == 0) {
        consumer_update_lag(s);
        if (moat_mono_ms() - s->pull_started_ms < EMPTY_POLL_MIN_MS)
            arm(s, NEXT_PULL, EMPTY_POLL_MIN_MS);
        else
            sub_pull(s);
        return;
    }
    s->batch = json_incref(events);
    s->pos = 0;
    consumer_update_lag(s);
    if (!s->c->paused)
        sub_apply(s);
}

static void sub_pull(struct sub *s)
{
    if (s->c->paused || s->pulling || s->batch)
        return;
    if (!consumer_lease_hold(s)) {
        arm(s, NEXT_PULL, CONSUMER_LEASE_RETRY_MS); /* another one follows */
        return;
    }
    s->pull_started_ms = moat_mono_ms();
    struct pull_ticket *t = moat_xcalloc(1, sizeof(*t));
    t->s = s;
    t->next = s->tickets;
    s->tickets = t;
    /* Right after an error, ask without waiting: an answer, even empty,
     * proves the source is back at once instead of after a long poll. */
    int wait = s->down_err != MOAT_OK ? 0 : PULL_WAIT_MS;
    int rc =
        s->src->ops->pull(s->src, s->cursor, PULL_LIMIT, wait, on_pulled, t);
    if (rc == MOAT_OK) {
        s->pulling = true;
    } else {
        consumer_ticket_drop(t);
        source_failed(s, rc);
    }
}

void consumer_pause(struct moat_consumer *c)
{
    c->paused = true;
}

void consumer_resume(struct moat_consumer *c)
{
    c->paused = false;
    if (!c->started)
        return;
    for (size_t i = 0; i < c->nsubs; i++) {
        struct sub *s = c->subs[i];
        if (s->pulling || evtimer_pending(s->timer, NULL))
            continue; /* its callback carries on */
        if (s->batch)
            sub_apply(s);
        else
            sub_pull(s);
    }
}

static void collect(struct moat_metrics *m, void *arg)
{
    struct moat_consumer *c = arg;
    for (size_t i = 0; i < c->nsubs; i++) {
        struct sub *s = c->subs[i];
        int64_t age = s->pending_ms ? moat_wall_ms() - s->pending_ms : 0;
        moat_metric_set(s->m_lag_seconds, age > 0 ? (double)age / 1000.0 : 0.0);
    }
}

static int consumer_new(struct moat_consumer **out, struct event_base *base,
                        const struct consumer_storage_ops *ops,
                        struct moat_db *db, struct moat_kv *kv,
                        struct moat_metrics *m)
{
    if (!out || !base || (!db && !kv) || !m)
        return MOAT_EINVAL;
    struct moat_consumer *c = moat_xcalloc(1, sizeof(*c));
    c->base = base;
    c->ops = ops;
    c->db = db;
    c->kv = kv;
    c->shared = db && consumer_shared(); /* LMDB is one process's */
    /* Fail at start, not at the first event, without the schema. */
    int rc = ops->attach(c);
    if (rc != MOAT_OK) {
        free(c);
        return rc;
    }
    c->f_lag_events = moat_metrics_family(
        m, MOAT_GAUGE, "moat_consumer_lag_events",
        "Events the source has that this consumer has not applied yet.",
        "source", NULL, 0);
    c->f_lag_seconds = moat_metrics_family(
        m, MOAT_GAUGE, "moat_consumer_lag_seconds",
        "Age of the oldest event not applied yet (0 when caught up).", "source",
        NULL, 0);
    c->f_applied = moat_metrics_family(
        m, MOAT_COUNTER, "moat_consumer_applied_total",
        "Events applied by their handler.", "source", NULL, 0);
    c->f_failures = moat_metrics_family(
        m, MOAT_COUNTER, "moat_consumer_failures_total",
        "Handler runs that failed (each attempt counts).", "source", NULL, 0);
    c->f_dead = moat_metrics_family(
        m, MOAT_GAUGE, "moat_consumer_dead_letters",
        "Events parked as dead letters (failed or blocked behind one).",
        "source", NULL, 0);
    c->f_rewinds = moat_metrics_family(
        m, MOAT_COUNTER, "moat_consumer_rewinds_total",
        "Times the source was restored to an earlier point (a new feed "
        "epoch) and the cursor moved back to it.",
        "source", NULL, 0);
    static const double hop_buckets[] = {
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10};
    c->f_hop = moat_metrics_family(
        m, MOAT_HISTOGRAM, "moat_consumer_hop_seconds",
        "From the event's time (stamped in the producer's transaction) to "
        "its handler done here, per applied event.",
        "source", hop_buckets, sizeof(hop_buckets) / sizeof(hop_buckets[0]));
    moat_metrics_on_collect(m, collect, c);
    *out = c;
    return MOAT_OK;
}

int moat_consumer_new(struct moat_consumer **out, struct event_base *base,
                      struct moat_db *db, struct moat_metrics *m)
{
    return consumer_new(out, base, &moat_consumer_sqlite_ops, db, NULL, m);
}

int moat_consumer_new_kv(struct moat_consumer **out, struct event_base *base,
                         struct moat_kv *kv, struct moat_metrics *m)
{
    return consumer_new(out, base, &moat_consumer_kv_ops, NULL, kv, m);
}

void moat_consumer_set_outbox(struct moat_consumer *c, struct moat_outbox *o)
{
    c->outbox = o;
}

int moat_consumer_subscribe(struct moat_consumer *c,
                            const struct moat_subscription *sp)
{
    /* The handler of the consumer's engine, and only that one. */
    bool kv = c && c->kv;
    if (!c || !sp || !sp->source || !sp->source->ops ||
        (kv ? !sp->kv_handler || sp->handler
            : !sp->handler || sp->kv_handler) ||
        !sp->source->name[0])
        return MOAT_EINVAL;
    if (consumer_find_sub(c, sp->source->name)) {
        moat_log(MOAT_LOG_ERROR,
                 "a consumer subscribes to a source once (list every type "
                 "in one subscription)",
                 "{s:s}", "source", sp->source->name);
        return MOAT_ECONFLICT;
    }
    int64_t cursor;
    int rc = c->ops->cursor_read(c, sp->source->name, &cursor);
    if (rc != MOAT_OK)
        return rc;

    struct sub *s = moat_xcalloc(1, sizeof(*s));
    s->c = c;
    /* The transport hook (events_internal.h): on JetStream the source is
     * wrapped by a durable pull consumer that falls back on it. */
    s->src = moat_event_transport
                 ? moat_event_transport->wrap(sp->source, c->base)
                 : sp->source;
    s->handler = sp->handler;
    s->kv_handler = sp->kv_handler;
    s->arg = sp->arg;
    s->cursor = cursor;
    s->head = -1;
    if (sp->types) {
        size_t n = 0;
        while (sp->types[n])
            n++;
        s->types = moat_xcalloc(n + 1, sizeof(*s->types));
        for (size_t i = 0; i < n; i++)
            s->types[i] = moat_xstrdup(sp->types[i]);
    }
    s->timer = evtimer_new(c->base, on_sub_timer, s);
    if (!s->timer)
        moat_die("cannot create a consumer timer");
    const char *labels[] = {s->src->name};
    s->m_lag_events = moat_metric_series(c->f_lag_events, labels);
    s->m_lag_seconds = moat_metric_series(c->f_lag_seconds, labels);
    s->m_applied = moat_metric_series(c->f_applied, labels);
    s->m_failures = moat_metric_series(c->f_failures, labels);
    s->m_dead = moat_metric_series(c->f_dead, labels);
    s->m_rewinds = moat_metric_series(c->f_rewinds, labels);
    s->m_hop = moat_metric_series(c->f_hop, labels);
    consumer_refresh_dead_gauge(s);

    c->subs = moat_xrealloc(c->subs, (c->nsubs + 1) * sizeof(*c->subs));
    c->subs[c->nsubs++] = s;
    moat_log(MOAT_LOG_INFO, "consumer subscribed", "{s:s, s:I}", "source",
             s->src->name, "cursor", (json_int_t)cursor);
    if (c->started && !c->paused)
        sub_pull(s);
    return MOAT_OK;
}

void moat_consumer_start(struct moat_consumer *c)
{
    if (!c || c->started)
        return;
    c->started = true;
    if (!c->paused)
        for (size_t i = 0; i < c->nsubs; i++)
            sub_pull(c->subs[i]);
}

void consumer_rewind(struct sub *s)
{
    s->cursor = 0;
    s->pending_ms = 0;
    s->attempts = 0;
    s->fail_seq = 0;
    s->error[0] = '\0';
    json_decref(s->batch);
    s->batch = NULL;
    evtimer_del(s->timer);
    /* What is in flight was asked for from the old cursor. */
    for (struct pull_ticket *t = s->tickets; t; t = t->next)
        t->stale = true;
    s->pulling = false;
    moat_metric_set(s->m_dead, 0);
    consumer_update_lag(s);
}

void moat_consumer_free(struct moat_consumer *c)
{
    if (!c)
        return;
    consumer_verify_abort(c);
    for (size_t i = 0; i < c->nsubs; i++) {
        struct sub *s = c->subs[i];
        /* A pull in flight is dropped by its source: no callback. */
        s->src->ops->free(s->src);
        while (s->tickets)
            consumer_ticket_drop(s->tickets);
        event_free(s->timer);
        consumer_lease_release(s);
        json_decref(s->batch);
        if (s->types)
            for (char **t = s->types; *t; t++)
                free(*t);
        free(s->types);
        free(s);
    }
    free(c->subs);
    free(c->data_dir);
    free(c);
}
