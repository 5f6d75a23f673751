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
 * A source that cannot be reached, or our own database refusing a write,
 * is retried with exponential backoff (100 ms doubling to 5 s) and logged
 * once per change of state, not once per attempt.
 *
 * Pausing (replay, verify) never interrupts anything: every transaction
 * starts and ends within one callback (the same holds for redrive, which
 * uses the same connection). A paused subscription keeps what it
 * holds (a batch, a pull in flight) and carries on from there on resume.
 */
#include "moat/common.h"

#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "events_internal.h"
#include "moat/http.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "moat/trace.h"

#define PULL_WAIT_MS   25000
#define PULL_LIMIT     100
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* An empty page that came back faster than this (a source that does not
 * long-poll) is followed by a short pause rather than a busy loop. */
#define EMPTY_POLL_MIN_MS 100
#define ERROR_MAX         512
#define VERIFY_FILE       "replay-verify.db"
#define VERIFY_PULL_LIMIT MOAT_FEED_MAX_LIMIT
#define DEAD_LIST_DEFAULT 100
#define DEAD_LIST_MAX     1000
#define REDRIVE_MAX       10000
#define SUBJECT_MAX       256
#define SOURCE_MAX        31
/* One transaction applies at most this many events or this much work: a
 * bigger one would only hold the write lock and this loop longer (other
 * writers wait, requests queue) for little more throughput. */
#define TXN_MAX_EVENTS 500
#define TXN_MAX_MS     50

/* Waits between the attempts of a failing handler. */
static const int retry_delays_ms[MOAT_CONSUMER_MAX_ATTEMPTS - 1] = {50, 200};

/*
 * The migration step a consuming service appends to its own migrations.
 * Never edit it (services checksum it); change it with a new constant.
 */
const char MOAT_CONSUMER_SCHEMA[] =
    "CREATE TABLE moat_cursors (\n"
    "    source TEXT NOT NULL PRIMARY KEY,\n"
    "    after_seq INTEGER NOT NULL CHECK (after_seq >= 0),\n"
    "    updated_ms INTEGER NOT NULL\n"
    ") STRICT, WITHOUT ROWID;\n"
    "CREATE TABLE moat_dead_letters (\n"
    "    source TEXT NOT NULL,\n"
    "    seq INTEGER NOT NULL,\n"
    "    event_id TEXT NOT NULL,\n"
    "    subject TEXT NOT NULL,\n"
    "    type TEXT NOT NULL,\n"
    "    event TEXT NOT NULL CHECK (json_valid(event)),\n"
    "    error TEXT NOT NULL,\n"
    "    attempts INTEGER NOT NULL,\n"
    "    state TEXT NOT NULL CHECK (state IN ('failed', 'blocked')),\n"
    "    parked_ms INTEGER NOT NULL,\n"
    "    PRIMARY KEY (source, seq)\n"
    ") STRICT, WITHOUT ROWID;\n"
    "CREATE INDEX moat_dead_letters_subject\n"
    "    ON moat_dead_letters (source, subject, seq);\n";

enum sub_next {
    NEXT_PULL,  /* the timer starts the next pull */
    NEXT_APPLY, /* the timer resumes the batch at pos */
};

/*
 * One live pull in flight. A replay cannot call back a pull already sent
 * (a long poll may take 25 s to answer), so it marks it stale and starts
 * afresh; the stale one's answer is dropped when it comes. Tickets are
 * owned by their subscription: a source freed with pulls in flight never
 * calls back, so the subscription frees what is left.
 */
struct pull_ticket {
    struct sub *s;
    bool stale;
    struct pull_ticket *next;
};

struct sub {
    struct moat_consumer *c;
    struct moat_event_source *src; /* owned */
    char **types;                  /* owned, NULL-terminated; NULL = all */
    moat_event_handler_fn handler;
    void *arg;
    int64_t cursor;     /* = moat_cursors.after_seq */
    int64_t head;       /* the source's head at the last pull; -1 unknown */
    int64_t pending_ms; /* time of the oldest unapplied event; 0 = none */
    json_t *batch;      /* events being applied (owned), NULL between */
    size_t pos;         /* next event of batch */
    int64_t fail_seq;   /* the event whose handler failed; 0 = none */
    int attempts;       /* failed handler runs of fail_seq */
    char fail_why[ERROR_MAX]; /* its last error, for parking it */
    struct event *timer;
    enum sub_next next;
    bool pulling;                /* a pull that is not stale is in flight */
    struct pull_ticket *tickets; /* every pull in flight, stale or not */
    uint64_t pull_started_ms;
    int backoff_ms;
    int down_err;     /* the source's failure, MOAT_OK while it works */
    bool local_fault; /* our own database refused a write */
    bool ahead;       /* cursor beyond the source's head (logged once) */
    char error[ERROR_MAX + 32]; /* the current problem, "" when none */
    struct moat_metric_series *m_lag_events, *m_lag_seconds, *m_applied,
        *m_failures, *m_dead;
};

struct verify;

struct moat_consumer {
    struct event_base *base; /* borrowed */
    struct moat_db *db;      /* borrowed */
    struct sub **subs;       /* owned */
    size_t nsubs;
    bool started;
    bool paused;
    struct verify *verify; /* the replay verification running, if any */
    char *data_dir;        /* owned; NULL before register_admin */
    struct moat_view_ops view;
    bool has_view;
    struct moat_outbox *outbox; /* borrowed; woken after each commit */
    struct moat_metric_family *f_lag_events, *f_lag_seconds, *f_applied,
        *f_failures, *f_dead;
};

/* ---- small helpers ---- */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The event's sequence ("sequence" is a decimal string in CloudEvents). */
static int event_seq(json_t *ce, int64_t *seq)
{
    const char *s = jstr(ce, "sequence");
    if (!json_is_object(ce) || !s)
        return MOAT_EINVAL;
    return moat_parse_i64(s, 1, INT64_MAX, seq);
}

/*
 * Fill ev (borrowing from ce) for the handler. On a malformed event it
 * still fills what it can ("" for the rest) and says what is wrong in why.
 */
static int parse_event(json_t *ce, const char *source, int64_t seq,
                       struct moat_event *ev, char *why, size_t whylen)
{
    memset(ev, 0, sizeof(*ev));
    ev->source = source;
    ev->seq = seq;
    ev->id = jstr(ce, "id");
    ev->type = jstr(ce, "type");
    ev->subject = jstr(ce, "subject");
    ev->time = jstr(ce, "time");
    ev->traceparent = jstr(ce, "traceparent");
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
    return MOAT_OK;
}

static bool wants_type(const struct sub *s, json_t *ce)
{
    const char *type = jstr(ce, "type");
    if (!s->types || !type)
        return true; /* all types; or malformed, which gets parked */
    for (char **t = s->types; *t; t++)
        if (strcmp(*t, type) == 0)
            return true;
    return false;
}

static struct sub *find_sub(struct moat_consumer *c, const char *source)
{
    for (size_t i = 0; i < c->nsubs; i++)
        if (strcmp(c->subs[i]->src->name, source) == 0)
            return c->subs[i];
    return NULL;
}

static int refuse_commit(void *arg)
{
    (void)arg;
    return 1;
}

/* Run the handler for ev inside the open transaction on db, with the
 * event's trace as log context. Returns its result; why gets the reason. */
static int run_handler(struct sub *s, struct moat_db *db,
                       const struct moat_event *ev, char *why, size_t whylen)
{
    struct moat_trace t;
    const char *hwhy = NULL;
    moat_trace_start(&t, ev->traceparent, NULL);
    const struct moat_trace *saved = moat_log_trace();
    moat_log_set_trace(&t);
    /* A COMMIT by the handler would commit the batch's earlier events
     * without their cursor (applied twice after a crash): refuse it, which
     * turns it into a ROLLBACK that the check below reports. */
    sqlite3_commit_hook(moat_db_handle(db), refuse_commit, NULL);
    int rc = s->handler(db, ev, s->arg, &hwhy);
    sqlite3_commit_hook(moat_db_handle(db), NULL, NULL);
    moat_log_set_trace(saved);
    if (rc == MOAT_OK && sqlite3_get_autocommit(moat_db_handle(db))) {
        rc = MOAT_EINVAL;
        hwhy = "the handler ended the consumer's transaction";
    }
    if (rc != MOAT_OK)
        /* Copied now: a db-owned message changes with the rollback. */
        snprintf(why, whylen, "%s", hwhy ? hwhy : moat_strerror(rc));
    return rc;
}

/* ---- database ---- */

static int cursor_write(struct moat_db *db, const char *source, int64_t seq)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "consumer_cursor_write",
        "INSERT INTO moat_cursors (source, after_seq, updated_ms) "
        "VALUES (?1, ?2, ?3) ON CONFLICT (source) DO UPDATE SET "
        "after_seq = excluded.after_seq, updated_ms = excluded.updated_ms");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_int64(st, 3, moat_wall_ms());
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

static int cursor_read(struct moat_db *db, const char *source, int64_t *seq)
{
    struct moat_stmt *stmt =
        moat_db_prepare(db, "consumer_cursor_read",
                        "SELECT after_seq FROM moat_cursors WHERE source = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    int step = moat_stmt_step(stmt);
    int rc = MOAT_OK;
    if (step == SQLITE_ROW)
        *seq = sqlite3_column_int64(st, 0);
    else if (step == SQLITE_DONE)
        *seq = 0;
    else
        rc = MOAT_EDB;
    moat_stmt_reset(stmt);
    return rc;
}

/* The first parked seq of (source, subject) into *seq, or 0 for none. */
static int parked_blocker(struct moat_db *db, const char *source,
                          const char *subject, int64_t *seq)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "consumer_dead_blocker",
        "SELECT seq FROM moat_dead_letters WHERE source = ?1 AND "
        "subject = ?2 ORDER BY seq LIMIT 1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, subject, -1, SQLITE_STATIC);
    int step = moat_stmt_step(stmt);
    int rc = MOAT_OK;
    *seq = 0;
    if (step == SQLITE_ROW)
        *seq = sqlite3_column_int64(st, 0);
    else if (step != SQLITE_DONE)
        rc = MOAT_EDB;
    moat_stmt_reset(stmt);
    return rc;
}

/* Dead letters of source by state (either pointer may be NULL). */
static int dead_count(struct moat_db *db, const char *source, int64_t *failed,
                      int64_t *blocked)
{
    struct moat_stmt *stmt =
        moat_db_prepare(db, "consumer_dead_count",
                        "SELECT coalesce(sum(state = 'failed'), 0), "
                        "coalesce(sum(state = 'blocked'), 0) "
                        "FROM moat_dead_letters WHERE source = ?1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    int rc = MOAT_EDB;
    if (moat_stmt_step(stmt) == SQLITE_ROW) {
        if (failed)
            *failed = sqlite3_column_int64(st, 0);
        if (blocked)
            *blocked = sqlite3_column_int64(st, 1);
        rc = MOAT_OK;
    }
    moat_stmt_reset(stmt);
    return rc;
}

static void refresh_dead_gauge(struct sub *s)
{
    int64_t failed = 0, blocked = 0;
    if (dead_count(s->c->db, s->src->name, &failed, &blocked) == MOAT_OK)
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

static void update_lag(struct sub *s)
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
            if (event_seq(ce, &seq) == MOAT_OK && seq > s->cursor) {
                /* Unparsable: 0, no age (the time only feeds the lag
                 * metric). */
                if (moat_time_parse_rfc3339(jstr(ce, "time"), &s->pending_ms) !=
                    MOAT_OK)
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
                 "error", moat_db_errmsg(s->c->db));
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
    if (skip_to <= s->cursor)
        return;
    if (cursor_write(s->c->db, s->src->name, skip_to) == MOAT_OK)
        s->cursor = skip_to;
}

/* A cached statement without results (savepoints): MOAT_OK or MOAT_EDB. */
static int run_sql(struct moat_db *db, const char *name, const char *sql)
{
    struct moat_stmt *stmt = moat_db_prepare(db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
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
    int rc = moat_db_begin(s->c->db);
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
    moat_db_rollback(s->c->db);
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
    struct moat_db *db = s->c->db;
    if (!tx->open) {
        flush_skip(s, tx->to); /* only skipped events: no effects */
        txn_init(s, tx);
        return MOAT_OK;
    }
    if (tx->events == 0) {
        /* Only a failed handler's undone savepoint: nothing to write but
         * the skips. */
        moat_db_rollback(db);
        flush_skip(s, tx->to);
        txn_init(s, tx);
        return MOAT_OK;
    }
    int rc = cursor_write(db, s->src->name, tx->to);
    if (rc == MOAT_OK)
        rc = moat_db_commit(db);
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
                 "type", jstr(p, "type"), "subject", jstr(p, "subject"),
                 "state", jstr(p, "state"), "error", jstr(p, "error"));
    }
    if (tx->parked)
        refresh_dead_gauge(s);
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
    struct moat_db *db = s->c->db;
    struct moat_stmt *stmt = moat_db_prepare(
        db, "consumer_dead_insert",
        "INSERT INTO moat_dead_letters (source, seq, event_id, subject, type, "
        "event, error, attempts, state, parked_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
    if (!stmt)
        return MOAT_EDB;
    char *text = json_dumps(ce, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        moat_die("cannot serialise an event");
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, s->src->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, ev->seq);
    sqlite3_bind_text(st, 3, ev->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, ev->subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, ev->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, error, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 8, attempts);
    sqlite3_bind_text(st, 9, state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, moat_wall_ms());
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    free(text);
    if (step != SQLITE_DONE)
        return MOAT_EDB;
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
    struct moat_db *db = s->c->db;
    struct moat_event ev;
    char why[ERROR_MAX];
    int64_t blocker;

    *step = "begin";
    if (txn_begin(s, tx) != MOAT_OK)
        return FAULT;
    *step = "park";
    if (parse_event(ce, s->src->name, seq, &ev, why, sizeof(why)) != MOAT_OK)
        return park(s, tx, ce, &ev, "failed", why, 0) == MOAT_OK ? DONE : FAULT;
    /* This also sees the dead letters parked earlier in tx itself. */
    *step = "dead letter lookup";
    if (parked_blocker(db, s->src->name, ev.subject, &blocker) != MOAT_OK)
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
    if (run_sql(db, "consumer_savepoint", "SAVEPOINT moat_event") != MOAT_OK)
        return FAULT;
    int hrc = run_handler(s, db, &ev, why, sizeof(why));
    if (hrc == MOAT_OK) {
        if (run_sql(db, "consumer_release", "RELEASE moat_event") != MOAT_OK)
            return FAULT;
        tx->to = seq;
        tx->events++;
        tx->applied++;
        return DONE;
    }
    /* SQLite rolls the whole transaction back by itself on some errors
     * (I/O, full disk), and a handler may have ended it against the
     * rules: then the events before this one in tx are gone too. */
    bool lost = sqlite3_get_autocommit(moat_db_handle(db));
    if (!lost &&
        (run_sql(db, "consumer_rollback_to", "ROLLBACK TO moat_event") !=
             MOAT_OK ||
         run_sql(db, "consumer_release", "RELEASE moat_event") != MOAT_OK)) {
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
    update_lag(s);
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
        if (event_seq(ce, &seq) != MOAT_OK) {
            /* Without a sequence there is no cursor to move past it: the
             * source is broken, not the event. */
            if (txn_commit(s, &tx) != MOAT_OK) {
                apply_fault(s, &tx, "commit");
                return;
            }
            json_decref(s->batch);
            s->batch = NULL;
            source_failed(s, MOAT_EINVAL);
            update_lag(s);
            return;
        }
        if (seq <= tx.to) { /* delivered again: already done */
            s->pos++;
            continue;
        }
        if (!wants_type(s, ce)) {
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
            update_lag(s);
            return;
        case LOST:
            /* The events before it in tx are undone as well: they are
             * applied again, in order, before its next attempt. */
            txn_abort(s, &tx);
            arm(s, NEXT_APPLY,
                s->attempts < MOAT_CONSUMER_MAX_ATTEMPTS
                    ? retry_delays_ms[s->attempts - 1]
                    : 0);
            update_lag(s);
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
            update_lag(s);
            return;
        }
    }
    if (txn_commit(s, &tx) != MOAT_OK) {
        apply_fault(s, &tx, "commit");
        return;
    }
    if (c->paused && s->batch) {
        update_lag(s); /* resume carries on at s->pos */
        return;
    }
    json_decref(s->batch);
    s->batch = NULL;
    update_lag(s);
    sub_pull(s);
}

static void ticket_drop(struct pull_ticket *t)
{
    for (struct pull_ticket **p = &t->s->tickets; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            break;
        }
    free(t);
}

static void on_pulled(int err, json_t *events, int64_t head, void *arg)
{
    struct pull_ticket *t = arg;
    struct sub *s = t->s;
    bool stale = t->stale;
    ticket_drop(t);
    if (stale)
        return; /* asked for before a replay reset the cursor */
    s->pulling = false;
    if (err == MOAT_ECANCELLED)
        return; /* the client is going away: so are we */
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
        update_lag(s);
        if (moat_mono_ms() - s->pull_started_ms < EMPTY_POLL_MIN_MS)
            arm(s, NEXT_PULL, EMPTY_POLL_MIN_MS);
        else
            sub_pull(s);
        return;
    }
    s->batch = json_incref(events);
    s->pos = 0;
    update_lag(s);
    if (!s->c->paused)
        sub_apply(s);
}

static void sub_pull(struct sub *s)
{
    if (s->c->paused || s->pulling || s->batch)
        return;
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
        ticket_drop(t);
        source_failed(s, rc);
    }
}

static void consumer_pause(struct moat_consumer *c)
{
    c->paused = true;
}

static void consumer_resume(struct moat_consumer *c)
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

int moat_consumer_new(struct moat_consumer **out, struct event_base *base,
                      struct moat_db *db, struct moat_metrics *m)
{
    if (!out || !base || !db || !m)
        return MOAT_EINVAL;
    /* Fail at start, not at the first event, without the schema. */
    int64_t probe;
    if (cursor_read(db, "", &probe) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR,
                 "cannot read consumer cursors (is MOAT_CONSUMER_SCHEMA "
                 "among the migrations?)",
                 "{s:s}", "path", moat_db_path(db));
        return MOAT_EDB;
    }
    struct moat_consumer *c = moat_xcalloc(1, sizeof(*c));
    c->base = base;
    c->db = db;
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
    moat_metrics_on_collect(m, collect, c);
    *out = c;
    return MOAT_OK;
}

void moat_consumer_set_outbox(struct moat_consumer *c, struct moat_outbox *o)
{
    c->outbox = o;
}

int moat_consumer_subscribe(struct moat_consumer *c,
                            const struct moat_subscription *sp)
{
    if (!c || !sp || !sp->source || !sp->source->ops || !sp->handler ||
        !sp->source->name[0])
        return MOAT_EINVAL;
    if (find_sub(c, sp->source->name)) {
        moat_log(MOAT_LOG_ERROR,
                 "a consumer subscribes to a source once (list every type "
                 "in one subscription)",
                 "{s:s}", "source", sp->source->name);
        return MOAT_ECONFLICT;
    }
    int64_t cursor;
    int rc = cursor_read(c->db, sp->source->name, &cursor);
    if (rc != MOAT_OK)
        return rc;

    struct sub *s = moat_xcalloc(1, sizeof(*s));
    s->c = c;
    s->src = sp->source;
    s->handler = sp->handler;
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
    refresh_dead_gauge(s);

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
    struct moat_req *req; /* answered once; NULL after */
    struct moat_db *db;   /* the scratch database, owned */
    char *path;
    struct vsrc *srcs;
    size_t n;
    int64_t events; /* events the rebuild went through */
    bool final;     /* live consumption paused for the last stretch */
    bool over;      /* answered; waiting for pulls in flight to return */
    int inflight;
    json_t *diffs;
};

static void remove_scratch(const char *path)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(suffixes); i++) {
        char *p = moat_xasprintf("%s%s", path, suffixes[i]);
        if (unlink(p) != 0 && errno != ENOENT)
            moat_log(MOAT_LOG_WARN, "cannot remove the verification database",
                     "{s:s, s:s}", "path", p, "error", strerror(errno));
        free(p);
    }
}

static void verify_free(struct verify *v)
{
    if (v->db)
        moat_db_close(v->db);
    remove_scratch(v->path);
    for (size_t i = 0; i < v->n; i++) {
        json_decref(v->srcs[i].parked);
        json_decref(v->srcs[i].parked_seq);
    }
    free(v->srcs);
    json_decref(v->diffs);
    free(v->path);
    free(v);
}

/* The verification is over (answered): resume live consumption and free
 * it, or leave that to the last pull still in flight. */
static void verify_end(struct verify *v)
{
    struct moat_consumer *c = v->c;
    v->over = true;
    if (v->db) {
        moat_db_close(v->db);
        v->db = NULL;
    }
    remove_scratch(v->path);
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
    if (!wants_type(s, ce))
        return MOAT_OK;
    bool park =
        parse_event(ce, s->src->name, seq, &ev, why, sizeof(why)) != MOAT_OK ||
        json_object_get(vs->parked, ev.subject) != NULL;
    /* A deterministic handler fails the same way each time; the attempts
     * follow each other without the live loop's delays. */
    for (int attempt = 0; !park && attempt < MOAT_CONSUMER_MAX_ATTEMPTS;
         attempt++) {
        if (moat_db_begin(v->db) != MOAT_OK)
            return MOAT_EDB;
        if (run_handler(s, v->db, &ev, why, sizeof(why)) == MOAT_OK)
            return moat_db_commit(v->db) == MOAT_OK ? MOAT_OK : MOAT_EDB;
        moat_db_rollback(v->db);
        park = attempt + 1 == MOAT_CONSUMER_MAX_ATTEMPTS;
    }
    if (!json_object_get(vs->parked, ev.subject))
        json_object_set_new(vs->parked, ev.subject, json_integer(seq));
    json_array_append_new(vs->parked_seq, json_integer(seq));
    return MOAT_OK;
}

/* Differences between the live dead letters of vs and the rebuild's. */
static int compare_dead(struct verify *v, struct vsrc *vs)
{
    struct moat_stmt *stmt = moat_db_prepare(
        v->c->db, "consumer_dead_seqs",
        "SELECT seq FROM moat_dead_letters WHERE source = ?1 AND seq <= ?2 "
        "ORDER BY seq");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, vs->sub->src->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, vs->target);
    const char *name = vs->sub->src->name;
    size_t i = 0, n = json_array_size(vs->parked_seq);
    int step;
    for (;;) {
        step = moat_stmt_step(stmt);
        bool have_live = step == SQLITE_ROW;
        int64_t live = have_live ? sqlite3_column_int64(st, 0) : INT64_MAX;
        while (i < n) {
            int64_t r = json_integer_value(json_array_get(vs->parked_seq, i));
            if (r > live)
                break;
            i++;
            if (r == live) {
                have_live = false; /* parked in both: no difference */
                break;
            }
            json_array_append_new(
                v->diffs,
                json_sprintf("%s seq %lld: parked by the rebuild but applied "
                             "or skipped live",
                             name, (long long)r));
        }
        if (step != SQLITE_ROW)
            break;
        if (have_live)
            json_array_append_new(
                v->diffs,
                json_sprintf("%s seq %lld: a dead letter live but applied by "
                             "the rebuild",
                             name, (long long)live));
    }
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
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
    int rc = c->view.compare(c->db, v->db, v->diffs, c->view.arg);
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

static void on_verify_pulled(int err, json_t *events, int64_t head, void *arg);

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

static void on_verify_pulled(int err, json_t *events, int64_t head, void *arg)
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
    if (json_array_size(events) == 0) {
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
        if (event_seq(ce, &seq) != MOAT_OK) {
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
                        moat_db_errmsg(v->db));
            return;
        }
        vs->cursor = seq;
    }
    verify_step(v);
}

static void verify_start(struct moat_consumer *c, struct moat_req *req)
{
    struct verify *v = moat_xcalloc(1, sizeof(*v));
    v->c = c;
    v->req = req;
    v->path = moat_xasprintf("%s/%s", c->data_dir, VERIFY_FILE);
    v->diffs = json_array();
    c->verify = v;

    /* A file left by a crash mid-verification is stale: start over. */
    remove_scratch(v->path);
    int rc = moat_db_open(&v->db, v->path, NULL, NULL);
    if (rc == MOAT_OK)
        rc = moat_db_migrate(v->db, c->view.migrations, c->view.nmigrations);
    if (rc != MOAT_OK) {
        verify_fail(v, 500, "cannot create the verification database: %s",
                    moat_strerror(rc));
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
    moat_log(MOAT_LOG_INFO, "replay verification started", "{s:s}", "path",
             v->path);
    verify_step(v);
}

/* ---- admin routes ---- */

static bool busy_verifying(struct moat_consumer *c, struct moat_req *req)
{
    if (!c->verify)
        return false;
    moat_req_set_header(req, "Retry-After", "1");
    moat_req_reply_problem(req, 409,
                           "a replay verification is running; retry when it "
                           "is done");
    return true;
}

static const char *sub_state(const struct sub *s)
{
    if (s->c->paused)
        return "paused";
    if (s->down_err != MOAT_OK || s->local_fault)
        return "backoff";
    if (s->attempts > 0)
        return "retrying";
    if (s->batch)
        return "applying";
    if (s->pulling)
        return "waiting";
    return s->c->started ? "idle" : "stopped";
}

static void handle_status(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    json_t *problem = moat_req_parse_query(req, NULL, 0);
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < c->nsubs; i++) {
        struct sub *s = c->subs[i];
        int64_t failed = 0, blocked = 0;
        dead_count(c->db, s->src->name, &failed, &blocked);
        int64_t lag = s->head > s->cursor ? s->head - s->cursor : 0;
        int64_t age = s->pending_ms ? moat_wall_ms() - s->pending_ms : 0;
        json_array_append_new(
            list, json_pack("{s:s, s:I, s:o, s:I, s:f, s:s, s:o, s:{s:I, s:I}}",
                            "source", s->src->name, "cursor",
                            (json_int_t)s->cursor, "head",
                            s->head >= 0 ? json_integer(s->head) : json_null(),
                            "lag_events", (json_int_t)lag, "lag_seconds",
                            age > 0 ? (double)age / 1000.0 : 0.0, "state",
                            sub_state(s), "error",
                            s->error[0] ? json_string(s->error) : json_null(),
                            "dead_letters", "failed", (json_int_t)failed,
                            "blocked", (json_int_t)blocked));
    }
    moat_req_reply_json(req, 200,
                        json_pack("{s:o, s:b, s:b}", "sources", list, "paused",
                                  c->paused, "verifying", c->verify != NULL));
}

static json_t *dead_row_json(sqlite3_stmt *st)
{
    char when[25];
    moat_time_rfc3339(sqlite3_column_int64(st, 9), when);
    const char *text = (const char *)sqlite3_column_text(st, 5);
    json_t *event = json_loads(text ? text : "null", JSON_DECODE_ANY, NULL);
    return json_pack("{s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:o}",
                     "source", (const char *)sqlite3_column_text(st, 0), "seq",
                     (json_int_t)sqlite3_column_int64(st, 1), "event_id",
                     (const char *)sqlite3_column_text(st, 2), "subject",
                     (const char *)sqlite3_column_text(st, 3), "type",
                     (const char *)sqlite3_column_text(st, 4), "state",
                     (const char *)sqlite3_column_text(st, 8), "error",
                     (const char *)sqlite3_column_text(st, 6), "attempts",
                     sqlite3_column_int(st, 7), "parked_at", when, "event",
                     event ? event : json_null());
}

static void bind_opt(sqlite3_stmt *st, int idx, const char *v)
{
    if (v)
        sqlite3_bind_text(st, idx, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, idx);
}

#define DEAD_FILTER                                                            \
    "FROM moat_dead_letters WHERE (?1 IS NULL OR source = ?1) AND "            \
    "(?2 IS NULL OR subject = ?2) "

static int dead_total(struct moat_db *db, const char *source,
                      const char *subject, int64_t *total)
{
    struct moat_stmt *stmt = moat_db_prepare(db, "consumer_dead_total",
                                             "SELECT count(*) " DEAD_FILTER);
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    bind_opt(st, 1, source);
    bind_opt(st, 2, subject);
    int rc = MOAT_EDB;
    if (moat_stmt_step(stmt) == SQLITE_ROW) {
        *total = sqlite3_column_int64(st, 0);
        rc = MOAT_OK;
    }
    moat_stmt_reset(stmt);
    return rc;
}

static void handle_dead_letters(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    struct moat_qparam q[] = {
        {.name = "source", .kind = MOAT_Q_STR, .min = 1, .max = SOURCE_MAX},
        {.name = "subject", .kind = MOAT_Q_STR, .min = 1, .max = SUBJECT_MAX},
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = DEAD_LIST_MAX},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    int64_t total = 0;
    struct moat_stmt *stmt = moat_db_prepare(
        c->db, "consumer_dead_list",
        "SELECT source, seq, event_id, subject, type, event, error, attempts, "
        "state, parked_ms " DEAD_FILTER "ORDER BY source, seq LIMIT ?3");
    if (!stmt || dead_total(c->db, q[0].sval, q[1].sval, &total) != MOAT_OK) {
        moat_req_reply_problem(req, 500, "cannot read the dead letters");
        return;
    }
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    bind_opt(st, 1, q[0].sval);
    bind_opt(st, 2, q[1].sval);
    sqlite3_bind_int64(st, 3, q[2].seen ? q[2].ival : DEAD_LIST_DEFAULT);
    json_t *list = json_array();
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW)
        json_array_append_new(list, dead_row_json(st));
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE) {
        json_decref(list);
        moat_req_reply_problem(req, 500, "cannot read the dead letters");
        return;
    }
    moat_req_reply_json(req, 200,
                        json_pack("{s:o, s:I}", "dead_letters", list, "total",
                                  (json_int_t)total));
}

/* After a failed redrive attempt: the new error, one more attempt. */
static void dead_mark_failed(struct moat_db *db, const char *source,
                             int64_t seq, const char *error)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "consumer_dead_fail",
        "UPDATE moat_dead_letters SET error = ?3, attempts = attempts + 1, "
        "state = 'failed' WHERE source = ?1 AND seq = ?2");
    if (!stmt)
        return;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_text(st, 3, error, -1, SQLITE_STATIC);
    moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
}

/*
 * Apply one dead letter again: handler and removal in one transaction.
 * MOAT_OK, a handler failure (recorded on the row, why says it) or
 * MOAT_EDB (our database; nothing changed).
 */
static int redrive_one(struct moat_consumer *c, struct sub *s, int64_t seq,
                       const char *text, char *why, size_t whylen)
{
    json_t *ce = json_loads(text, JSON_DECODE_ANY, NULL);
    struct moat_event ev;
    int rc = parse_event(ce, s->src->name, seq, &ev, why, whylen);
    if (rc != MOAT_OK) {
        dead_mark_failed(c->db, s->src->name, seq, why);
        goto cleanup;
    }
    if ((rc = moat_db_begin(c->db)) != MOAT_OK) {
        rc = MOAT_EDB;
        goto cleanup;
    }
    rc = run_handler(s, c->db, &ev, why, whylen);
    if (rc != MOAT_OK) {
        moat_db_rollback(c->db);
        moat_metric_add(s->m_failures, 1);
        dead_mark_failed(c->db, s->src->name, seq, why);
        goto cleanup;
    }
    struct moat_stmt *stmt = moat_db_prepare(
        c->db, "consumer_dead_delete",
        "DELETE FROM moat_dead_letters WHERE source = ?1 AND seq = ?2");
    rc = MOAT_EDB;
    if (!stmt)
        goto cleanup;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, s->src->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(moat_stmt_raw(stmt), 2, seq);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step == SQLITE_DONE && moat_db_commit(c->db) == MOAT_OK) {
        rc = MOAT_OK;
        if (c->outbox)
            moat_outbox_committed(c->outbox);
        moat_metric_add(s->m_applied, 1);
    }

cleanup:
    if (rc == MOAT_EDB) {
        moat_db_rollback(c->db);
        snprintf(why, whylen, "database: %s", moat_db_errmsg(c->db));
    }
    json_decref(ce);
    return rc;
}

/*
 * Parked events are redriven per (source, subject), in seq order, each in
 * its own transaction, and a subject stops at its first failure so that
 * its later events never overtake it. Everything runs within this one
 * callback: the live loop cannot interleave an event of the same subject.
 */
static void handle_redrive(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    struct moat_qparam q[] = {
        {.name = "source", .kind = MOAT_Q_STR, .min = 1, .max = SOURCE_MAX},
        {.name = "subject", .kind = MOAT_Q_STR, .min = 1, .max = SUBJECT_MAX},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    if (busy_verifying(c, req))
        return;
    const char *source = q[0].sval, *subject = q[1].sval;
    if (source && !find_sub(c, source)) {
        moat_req_reply_problem(req, 404, "this consumer has no source \"%s\"",
                               source);
        return;
    }

    /* Read the whole selection first: applying while a SELECT is open
     * would pin its snapshot inside our own transactions. */
    struct moat_stmt *stmt =
        moat_db_prepare(c->db, "consumer_dead_redrive",
                        "SELECT source, subject, seq, event " DEAD_FILTER
                        "ORDER BY source, subject, seq LIMIT ?3");
    if (!stmt) {
        moat_req_reply_problem(req, 500, "cannot read the dead letters");
        return;
    }
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    bind_opt(st, 1, source);
    bind_opt(st, 2, subject);
    sqlite3_bind_int(st, 3, REDRIVE_MAX);
    json_t *rows = json_array();
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW)
        json_array_append_new(
            rows, json_pack("{s:s, s:s, s:I, s:s}", "source",
                            (const char *)sqlite3_column_text(st, 0), "subject",
                            (const char *)sqlite3_column_text(st, 1), "seq",
                            (json_int_t)sqlite3_column_int64(st, 2), "event",
                            (const char *)sqlite3_column_text(st, 3)));
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE) {
        json_decref(rows);
        moat_req_reply_problem(req, 500, "cannot read the dead letters");
        return;
    }

    json_t *failed = json_array();
    int64_t applied = 0;
    const char *stop_src = NULL, *stop_subj = NULL;
    bool db_fault = false;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        const char *rsrc = jstr(row, "source");
        const char *rsubj = jstr(row, "subject");
        int64_t seq = json_integer_value(json_object_get(row, "seq"));
        if (stop_src && strcmp(stop_src, rsrc) == 0 &&
            strcmp(stop_subj, rsubj) == 0)
            continue; /* this subject stopped at an earlier failure */
        struct sub *s = find_sub(c, rsrc);
        char why[ERROR_MAX];
        int rc;
        if (!s) {
            snprintf(why, sizeof(why), "no subscription for source \"%s\"",
                     rsrc);
            rc = MOAT_ENOTFOUND;
        } else {
            rc = redrive_one(c, s, seq, jstr(row, "event"), why, sizeof(why));
        }
        if (rc == MOAT_OK) {
            applied++;
            continue;
        }
        stop_src = rsrc;
        stop_subj = rsubj;
        json_array_append_new(
            failed, json_pack("{s:s, s:s, s:I, s:s}", "source", rsrc, "subject",
                              rsubj, "seq", (json_int_t)seq, "error", why));
        if (rc == MOAT_EDB) {
            db_fault = true;
            break;
        }
    }
    for (size_t k = 0; k < c->nsubs; k++)
        refresh_dead_gauge(c->subs[k]);
    int64_t remaining = 0;
    dead_total(c->db, source, subject, &remaining);
    moat_log(MOAT_LOG_INFO, "dead letters redriven", "{s:I, s:I, s:I}",
             "applied", (json_int_t)applied, "failed",
             (json_int_t)json_array_size(failed), "remaining",
             (json_int_t)remaining);
    json_decref(rows);
    moat_req_reply_json(req, db_fault ? 503 : 200,
                        json_pack("{s:I, s:o, s:I}", "applied",
                                  (json_int_t)applied, "failed", failed,
                                  "remaining", (json_int_t)remaining));
}

/* Empty the view, cursors and dead letters in one transaction. */
static int reset_all(struct moat_consumer *c)
{
    int rc = moat_db_begin(c->db);
    if (rc != MOAT_OK)
        return rc;
    rc = c->view.reset(c->db, c->view.arg);
    if (rc == MOAT_OK)
        rc = moat_db_exec(c->db, "consumer_reset_cursors",
                          "DELETE FROM moat_cursors");
    if (rc == MOAT_OK)
        rc = moat_db_exec(c->db, "consumer_reset_dead",
                          "DELETE FROM moat_dead_letters");
    if (rc == MOAT_OK)
        rc = moat_db_commit(c->db);
    if (rc != MOAT_OK)
        moat_db_rollback(c->db);
    return rc;
}

static void handle_replay(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    struct moat_qparam q[] = {
        {.name = "verify", .kind = MOAT_Q_INT, .min = 0, .max = 1},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    if (!c->has_view) {
        moat_req_reply_problem(req, 501,
                               "this consumer has no view operations to "
                               "replay with");
        return;
    }
    if (busy_verifying(c, req))
        return;
    if (q[0].seen && q[0].ival == 1) {
        verify_start(c, req);
        return;
    }

    consumer_pause(c);
    int rc = reset_all(c);
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
        struct sub *s = c->subs[i];
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
        update_lag(s);
        json_array_append_new(names, json_string(s->src->name));
    }
    moat_log(MOAT_LOG_INFO, "replay from sequence 0 started", NULL);
    consumer_resume(c);
    moat_req_reply_json(
        req, 202,
        json_pack("{s:s, s:o}", "replay", "started", "sources", names));
}

int moat_consumer_register_admin(struct moat_consumer *c,
                                 struct moat_http_server *http,
                                 const char *data_dir,
                                 const struct moat_view_ops *view)
{
    if (!c || !http)
        return MOAT_EINVAL;
    if (view && (!view->reset || !view->compare || !view->migrations))
        return MOAT_EINVAL;
    if (view && !data_dir)
        return MOAT_EINVAL;
    free(c->data_dir);
    c->data_dir = data_dir ? moat_xstrdup(data_dir) : NULL;
    if (view) {
        c->view = *view;
        c->has_view = true;
    }
    static const struct {
        unsigned method;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET, "/v1/admin/consumer", handle_status},
        {MOAT_GET, "/v1/admin/dead-letters", handle_dead_letters},
        {MOAT_POST, "/v1/admin/dead-letters/redrive", handle_redrive},
        {MOAT_POST, "/v1/admin/replay", handle_replay},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(http, routes[i].method, routes[i].pattern,
                                 routes[i].fn, c);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

void moat_consumer_free(struct moat_consumer *c)
{
    if (!c)
        return;
    if (c->verify) {
        struct verify *v = c->verify;
        if (v->req)
            moat_req_reply_problem(v->req, 503, "the service is shutting down");
        /* Its pulls die with the sources below and never call back. */
        verify_free(v);
        c->verify = NULL;
    }
    for (size_t i = 0; i < c->nsubs; i++) {
        struct sub *s = c->subs[i];
        /* A pull in flight is dropped by its source: no callback. */
        s->src->ops->free(s->src);
        while (s->tickets)
            ticket_drop(s->tickets);
        event_free(s->timer);
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
