/*
 * outbox.c - the transactional outbox (see moat/events.h): what every
 * storage shares (validation, ids, traces, metrics, the retention timer,
 * waking the feed), and the SQLite storage, where events are rows of
 * moat_outbox in the producing service's own database, inserted in the
 * same transaction as the state change they describe. The LMDB storage is
 * lib/outbox_kv.c.
 *
 * Sequence numbers (SQLite). seq is an AUTOINCREMENT rowid: SQLite never reuses
 * one, even after retention deleted every row, so a consumer's cursor can
 * never point at a recycled number. Writers are serialised (BEGIN
 * IMMEDIATE, one connection), so events become visible in seq order: a
 * reader that has seen seq N can never later find a committed N-1 (the gap
 * problem outboxes on multi-writer databases have to solve). A failed or
 * rolled-back INSERT does not consume a number, and retention only ever
 * deletes a prefix, so the stored sequences are contiguous:
 * [retained_from, head].
 *
 * The same storage runs on PostgreSQL (MOAT_OUTBOX_SCHEMA_PG), through the
 * engine-neutral calls of moat/db.h. There seq is not a sequence (whose
 * numbers are drawn at INSERT but become visible at COMMIT, in another
 * order: a reader could pass N+1 before N commits, and skip N for ever)
 * but the one row of moat_outbox_head, incremented by each append in the
 * append's own transaction. Its row lock serialises the service's appends
 * until their COMMIT, so numbers become visible in order, a rolled-back
 * append gives its number back, and the stored sequences stay contiguous
 * exactly as on SQLite. (moat_db_begin's write lock already serialises
 * whole transactions; the row lock keeps the guarantee for any caller.)
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "events_internal.h"
#include "moat/log.h"
#include "moat/trace.h"

/* How often the retention sweep runs, and how many rows one sweep step
 * deletes: bounded so that the write lock is held only briefly. */
#define TRIM_INTERVAL_MS 10000
#define TRIM_BATCH       5000
/* When a step deleted a full batch there is more: come back soon. */
#define TRIM_AGAIN_MS 10

/* PostgreSQL: the NOTIFY channel of a database's outbox. */
#define OUTBOX_CHANNEL "moat_outbox"

#define TYPE_MAX    64
#define SUBJECT_MAX 256

/*
 * The migration step a publishing service appends to its own migrations.
 * Never edit it: services record its checksum when they apply it. A later
 * change is a new constant applied as a new migration.
 */
const char MOAT_OUTBOX_SCHEMA[] =
    "CREATE TABLE moat_outbox (\n"
    "    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "    id TEXT NOT NULL UNIQUE,\n"
    "    type TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 64),\n"
    "    subject TEXT NOT NULL CHECK (length(subject) BETWEEN 1 AND 256),\n"
    "    time_ms INTEGER NOT NULL,\n"
    "    schema_version INTEGER NOT NULL CHECK (schema_version >= 1),\n"
    "    data TEXT NOT NULL CHECK (json_valid(data)),\n"
    "    traceparent TEXT NOT NULL DEFAULT ''\n"
    ") STRICT;\n";

/* PostgreSQL's twin of MOAT_OUTBOX_SCHEMA (same rule: never edit it). */
const char MOAT_OUTBOX_SCHEMA_PG[] =
    "CREATE TABLE moat_outbox (\n"
    "    seq BIGINT PRIMARY KEY,\n"
    "    id TEXT NOT NULL UNIQUE,\n"
    "    type TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 64),\n"
    "    subject TEXT NOT NULL CHECK (length(subject) BETWEEN 1 AND 256),\n"
    "    time_ms BIGINT NOT NULL,\n"
    "    schema_version INTEGER NOT NULL CHECK (schema_version >= 1),\n"
    "    data TEXT NOT NULL CHECK (data::json IS NOT NULL),\n"
    "    traceparent TEXT NOT NULL DEFAULT ''\n"
    ");\n"
    "CREATE TABLE moat_outbox_head (\n"
    "    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),\n"
    "    head BIGINT NOT NULL CHECK (head >= 0)\n"
    ");\n"
    "INSERT INTO moat_outbox_head (head) VALUES (0);\n";

/* ---- the SQL storage (SQLite or PostgreSQL) ---- */

static int sqlite_bounds(struct moat_outbox *o, int64_t *head,
                         int64_t *retained_from, int64_t *oldest_ms)
{
    /* sqlite_sequence (moat_outbox_head on PostgreSQL) keeps the head even
     * when retention emptied the table (MAX(seq) would then say 0 and
     * reuse old numbers). */
    struct moat_stmt *stmt = moat_db_prepare_dialect(
        o->db, "outbox_bounds",
        "SELECT coalesce((SELECT seq FROM sqlite_sequence "
        "WHERE name = 'moat_outbox'), 0), "
        "(SELECT seq FROM moat_outbox ORDER BY seq LIMIT 1), "
        "(SELECT time_ms FROM moat_outbox ORDER BY seq LIMIT 1)",
        "SELECT (SELECT head FROM moat_outbox_head), "
        "(SELECT seq FROM moat_outbox ORDER BY seq LIMIT 1), "
        "(SELECT time_ms FROM moat_outbox ORDER BY seq LIMIT 1)");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_step(stmt);
    if (rc != SQLITE_ROW) {
        int err = moat_db_error(o->db, rc);
        moat_stmt_reset(stmt);
        return err == MOAT_OK ? MOAT_EDB : err;
    }
    int64_t h = moat_stmt_int64(stmt, 0);
    bool empty = moat_stmt_is_null(stmt, 1);
    if (head)
        *head = h;
    if (retained_from)
        *retained_from = empty ? h + 1 : moat_stmt_int64(stmt, 1);
    if (oldest_ms)
        *oldest_ms = empty ? 0 : moat_stmt_int64(stmt, 2);
    moat_stmt_reset(stmt);
    return MOAT_OK;
}

/* Add the sequences committed since the last look to appended_total:
 * counting in append would count events whose transaction rolled back. */
static void count_appended(struct moat_outbox *o, int64_t head)
{
    if (head > o->counted_head) {
        moat_metric_add(o->m_appended, (double)(head - o->counted_head));
        o->counted_head = head;
    }
}

static void collect(struct moat_metrics *m, void *arg)
{
    struct moat_outbox *o = arg;
    int64_t head, from, oldest_ms;
    if (moat_outbox_bounds(o, &head, &from, &oldest_ms) != MOAT_OK)
        return;
    /* Contiguous sequences (see the top of this file): no COUNT(*) that
     * walks the whole table on every scrape. */
    moat_metric_set(o->m_events, (double)(head - from + 1));
    moat_metric_set(o->m_head, (double)head);
    int64_t age = oldest_ms ? moat_wall_ms() - oldest_ms : 0;
    moat_metric_set(o->m_oldest_age, age > 0 ? (double)age / 1000.0 : 0.0);
    count_appended(o, head);
}

static bool sqlite_in_txn(struct moat_outbox *o)
{
    return moat_db_in_transaction(o->db);
}

static int sqlite_trim(struct moat_outbox *o, int64_t cutoff, int64_t keep,
                       int batch, int64_t *deleted)
{
    /* Never inside someone's open transaction on our connection. */
    if (sqlite_in_txn(o))
        return MOAT_EBUSY;
    /* The last seq that may go: the newest of the oldest `batch` rows
     * whose time is before the cutoff, stopping at the first younger one
     * and before the newest `keep` rows (with fewer rows than that, the
     * bound is 0 and nothing goes). */
    struct moat_stmt *stmt = moat_db_prepare(
        o->db, "outbox_trim_scan",
        "SELECT seq, time_ms FROM moat_outbox "
        "WHERE (?1 = 0 OR seq < coalesce((SELECT seq FROM moat_outbox "
        "ORDER BY seq DESC LIMIT 1 OFFSET ?1 - 1), 0)) "
        "ORDER BY seq LIMIT ?2");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_int64(stmt, 1, keep);
    moat_stmt_bind_int64(stmt, 2, batch);
    int64_t last = 0, n = 0;
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        if (moat_stmt_int64(stmt, 1) >= cutoff)
            break;
        last = moat_stmt_int64(stmt, 0);
        n++;
    }
    moat_stmt_reset(stmt);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return moat_db_error(o->db, step);
    if (n == 0)
        return MOAT_OK;

    stmt = moat_db_prepare(o->db, "outbox_trim_delete",
                           "DELETE FROM moat_outbox WHERE seq <= ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_int64(stmt, 1, last);
    step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE)
        return moat_db_error(o->db, step);
    *deleted = n;
    return MOAT_OK;
}

static int sqlite_append(struct moat_outbox *o, const struct outbox_event *ev,
                         int64_t *seq)
{
    char *text = json_dumps(ev->data, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        moat_die("cannot serialise an event");

    int rc = MOAT_EDB;
    bool pg = moat_db_engine(o->db) == MOAT_DB_POSTGRES;
    struct moat_stmt *stmt = moat_db_prepare_dialect(
        o->db, "outbox_append",
        "INSERT INTO moat_outbox (id, type, subject, time_ms, "
        "schema_version, data, traceparent) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        /* The head row's lock orders the appends (see the top). */
        "WITH h AS (UPDATE moat_outbox_head SET head = head + 1 "
        "RETURNING head) "
        "INSERT INTO moat_outbox (seq, id, type, subject, time_ms, "
        "schema_version, data, traceparent) "
        "SELECT head, ?1, ?2, ?3, ?4, ?5, ?6, ?7 FROM h, "
        /* Delivered at COMMIT (coalesced per transaction) to the other
         * instances' listeners: their feed readers wake too. */
        "(SELECT pg_notify('" OUTBOX_CHANNEL "', '')) AS n RETURNING seq");
    if (!stmt)
        goto cleanup;
    moat_stmt_bind_text(stmt, 1, ev->id);
    moat_stmt_bind_text(stmt, 2, ev->type);
    moat_stmt_bind_text(stmt, 3, ev->subject);
    moat_stmt_bind_int64(stmt, 4, ev->time_ms);
    moat_stmt_bind_int64(stmt, 5, ev->schema_version);
    moat_stmt_bind_text(stmt, 6, text);
    moat_stmt_bind_text(stmt, 7, ev->traceparent);
    int step = moat_stmt_step(stmt);
    if (pg && step == SQLITE_ROW) {
        *seq = moat_stmt_int64(stmt, 0);
        step = moat_stmt_step(stmt);
    } else if (!pg && step == SQLITE_DONE) {
        *seq = sqlite3_last_insert_rowid(moat_db_handle(o->db));
    } else if (step == SQLITE_DONE) {
        step = SQLITE_ERROR; /* no row: moat_outbox_head is empty */
    }
    if (step != SQLITE_DONE) {
        rc = moat_db_error(o->db, step);
        if (rc == MOAT_OK)
            rc = MOAT_EDB;
        moat_stmt_reset(stmt);
        goto cleanup;
    }
    moat_stmt_reset(stmt);
    rc = MOAT_OK;

cleanup:
    free(text);
    return rc;
}

static const char *column_text(struct moat_stmt *st, int col)
{
    const char *s = moat_stmt_text(st, col);
    return s ? s : "";
}

static int sqlite_read(struct moat_outbox *o, int64_t after, int limit,
                       outbox_visit_fn fn, void *arg)
{
    struct moat_stmt *stmt = moat_db_prepare(
        o->db, "outbox_read",
        "SELECT seq, id, type, subject, time_ms, schema_version, data, "
        "traceparent FROM moat_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_int64(stmt, 1, after);
    moat_stmt_bind_int64(stmt, 2, limit);
    int rc = MOAT_OK, step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        json_error_t jerr;
        const char *data = column_text(stmt, 6);
        struct outbox_event ev = {
            .seq = moat_stmt_int64(stmt, 0),
            .id = column_text(stmt, 1),
            .type = column_text(stmt, 2),
            .subject = column_text(stmt, 3),
            .time_ms = moat_stmt_int64(stmt, 4),
            .schema_version = (int)moat_stmt_int64(stmt, 5),
            .traceparent = column_text(stmt, 7),
            .stored_bytes = strlen(data),
        };
        ev.data = json_loads(data, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!ev.data) {
            moat_log(MOAT_LOG_ERROR, "stored event data is not JSON",
                     "{s:I, s:s}", "seq", (json_int_t)ev.seq, "error",
                     jerr.text);
            rc = MOAT_EDB;
            break;
        }
        int r = fn(&ev, arg);
        json_decref(ev.data);
        if (r < 0)
            rc = r;
        if (r != OUTBOX_NEXT)
            break;
    }
    if (rc == MOAT_OK && step != SQLITE_ROW && step != SQLITE_DONE)
        rc = moat_db_error(o->db, step);
    moat_stmt_reset(stmt);
    return rc;
}

/* Fail at the start, not at the first append, when the schema is missing. */
static int sqlite_attach(struct moat_outbox *o)
{
    int rc = sqlite_bounds(o, NULL, NULL, NULL);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR,
                 "cannot read the outbox (is MOAT_OUTBOX_SCHEMA among the "
                 "migrations?)",
                 "{s:s}", "path", moat_db_path(o->db));
    return rc;
}

static const char *sqlite_where(struct moat_outbox *o)
{
    return moat_db_path(o->db);
}

static const struct outbox_storage_ops sqlite_ops = {
    .engine = "sqlite",
    .attach = sqlite_attach,
    .in_txn = sqlite_in_txn,
    .append = sqlite_append,
    .read = sqlite_read,
    .bounds = sqlite_bounds,
    .trim = sqlite_trim,
    .where = sqlite_where,
};

/* The same statements on PostgreSQL (dialect differences inside them). */
static const struct outbox_storage_ops pg_ops = {
    .engine = "postgres",
    .attach = sqlite_attach,
    .in_txn = sqlite_in_txn,
    .append = sqlite_append,
    .read = sqlite_read,
    .bounds = sqlite_bounds,
    .trim = sqlite_trim,
    .where = sqlite_where,
};

/* ---- what every storage shares ---- */

int moat_outbox_bounds(struct moat_outbox *o, int64_t *head,
                       int64_t *retained_from, int64_t *oldest_ms)
{
    return o->ops->bounds(o, head, retained_from, oldest_ms);
}

int moat_outbox_read(struct moat_outbox *o, int64_t after, int limit,
                     outbox_visit_fn fn, void *arg)
{
    return o->ops->read(o, after, limit, fn, arg);
}

/*
 * One retention step: delete the oldest events, up to TRIM_BATCH, that are
 * older than retention_s and not among the newest retention_min_keep. Only
 * a prefix is ever deleted: an event is kept, and so is everything after
 * it, from the first one young enough, even if a clock step back made a
 * later event look older. A hole in the middle would make consumers skip
 * events without knowing.
 */
static int trim_step(struct moat_outbox *o, int64_t *deleted)
{
    *deleted = 0;
    if (o->opts.retention_s <= 0)
        return MOAT_OK;
    int64_t cutoff = moat_wall_ms() - o->opts.retention_s * 1000;
    int64_t keep =
        o->opts.retention_min_keep > 0 ? o->opts.retention_min_keep : 0;
    return o->ops->trim(o, cutoff, keep, TRIM_BATCH, deleted);
}

int moat_outbox_trim(struct moat_outbox *o, int64_t *deleted)
{
    int64_t total = 0, n;
    int rc;
    do {
        rc = trim_step(o, &n);
        total += n;
    } while (rc == MOAT_OK && n == TRIM_BATCH);
    if (deleted)
        *deleted = total;
    return rc;
}

static void arm_trim(struct moat_outbox *o, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(o->trim_timer, &tv);
}

static void on_trim(evutil_socket_t fd, short what, void *arg)
{
    struct moat_outbox *o = arg;
    int64_t n = 0;
    int rc = trim_step(o, &n);
    if (rc != MOAT_OK && rc != MOAT_EBUSY)
        moat_log(MOAT_LOG_WARN, "outbox retention sweep failed",
                 "{s:s, s:s, s:s}", "engine", o->ops->engine, "path",
                 o->ops->where(o), "error", moat_strerror(rc));
    if (n > 0)
        moat_log(MOAT_LOG_DEBUG, "outbox retention deleted events", "{s:I}",
                 "deleted", (json_int_t)n);
    arm_trim(o, n == TRIM_BATCH ? TRIM_AGAIN_MS : TRIM_INTERVAL_MS);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    moat_feed_wake_waiters(arg);
}

/* Another instance's append committed (PostgreSQL NOTIFY). */
static void on_notify(void *arg)
{
    struct moat_outbox *o = arg;
    if (o->nwaiters > 0 || o->nstreams > 0)
        event_active(o->wake, EV_TIMEOUT, 1);
}

/*
 * Several instances of the producer share its database (docs/operations.md
 * "Several instances"): a commit by another process never calls
 * moat_outbox_committed here. While a reader waits, the head is read every
 * OUTBOX_SHARED_POLL_MS (one indexed max() query) and a change wakes the
 * readers as a commit would; with nobody waiting nothing is read.
 */
#define OUTBOX_SHARED_POLL_MS 50

static void on_shared_poll(evutil_socket_t fd, short what, void *arg)
{
    struct moat_outbox *o = arg;
    int64_t head;
    if ((o->nwaiters == 0 && o->nstreams == 0) ||
        moat_outbox_bounds(o, &head, NULL, NULL) != MOAT_OK ||
        head == o->shared_head)
        return;
    o->shared_head = head;
    moat_feed_wake_waiters(o);
}

static void start_shared_poll(struct moat_outbox *o)
{
    const char *n = getenv("MOAT_INSTANCES");
    if (!n || atoi(n) < 2)
        return;
    o->shared_head = o->counted_head;
    o->shared_poll = event_new(o->base, -1, EV_PERSIST, on_shared_poll, o);
    struct timeval tv = {0, OUTBOX_SHARED_POLL_MS * 1000};
    if (!o->shared_poll || event_add(o->shared_poll, &tv) != 0)
        moat_die("cannot create the shared outbox poll");
}

/* The part of moat_outbox_new* after the storage is known: takes o. */
static int outbox_start(struct moat_outbox **out, struct moat_outbox *o,
                        struct moat_metrics *m)
{
    int64_t head;
    int rc = o->ops->attach(o);
    if (rc == MOAT_OK)
        rc = moat_outbox_bounds(o, &head, NULL, NULL);
    if (rc != MOAT_OK) {
        free(o->source);
        free(o);
        return rc;
    }
    o->counted_head = head;

    o->m_events = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "moat_outbox_events",
        "Events stored in the outbox (not yet deleted by retention).", NULL,
        NULL, 0));
    o->m_oldest_age = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "moat_outbox_oldest_age_seconds",
        "Age of the oldest event still stored in the outbox.", NULL, NULL, 0));
    o->m_head = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "moat_outbox_head_seq",
        "Sequence number of the newest event in the outbox.", NULL, NULL, 0));
    o->m_appended = moat_metric_single(moat_metrics_family(
        m, MOAT_COUNTER, "moat_outbox_appended_total",
        "Events committed to the outbox since the process started.", NULL, NULL,
        0));
    o->m_streams = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "moat_feed_streams",
        "Readers of the event feed with a streaming subscription open.", NULL,
        NULL, 0));
    o->m_stream_drops = moat_metric_single(moat_metrics_family(
        m, MOAT_COUNTER, "moat_feed_stream_drops_total",
        "Streaming subscriptions ended because the reader did not keep up "
        "(it resumes from its cursor).",
        NULL, NULL, 0));
    moat_metrics_on_collect(m, collect, o);

    o->wake = event_new(o->base, -1, 0, on_wake, o);
    o->trim_timer = evtimer_new(o->base, on_trim, o);
    if (!o->wake || !o->trim_timer)
        moat_die("cannot create outbox events");
    if (o->db && moat_db_engine(o->db) == MOAT_DB_POSTGRES &&
        moat_db_listen(&o->listener, o->db, o->base, OUTBOX_CHANNEL, on_notify,
                       o) != MOAT_OK)
        moat_die("cannot listen for the outbox's notifications");
    if (o->opts.retention_s > 0)
        arm_trim(o, TRIM_INTERVAL_MS);
    start_shared_poll(o);
    if (moat_event_transport)
        moat_event_transport->outbox_started(o);
    *out = o;
    return MOAT_OK;
}

static struct moat_outbox *outbox_alloc(struct event_base *base,
                                        const char *source,
                                        const struct moat_outbox_options *opts)
{
    struct moat_outbox *o = moat_xcalloc(1, sizeof(*o));
    o->base = base;
    o->source = moat_xstrdup(source);
    if (opts)
        o->opts = *opts;
    return o;
}

int moat_outbox_new(struct moat_outbox **out, struct event_base *base,
                    struct moat_db *db, const char *source,
                    const struct moat_outbox_options *opts,
                    struct moat_metrics *m)
{
    if (!out || !base || !db || !source || !*source || !m)
        return MOAT_EINVAL;
    struct moat_outbox *o = outbox_alloc(base, source, opts);
    o->ops = moat_db_engine(db) == MOAT_DB_POSTGRES ? &pg_ops : &sqlite_ops;
    o->db = db;
    return outbox_start(out, o, m);
}

int moat_outbox_new_kv(struct moat_outbox **out, struct event_base *base,
                       struct moat_kv *kv, const char *source,
                       const struct moat_outbox_options *opts,
                       struct moat_metrics *m)
{
    if (!out || !base || !kv || !source || !*source || !m)
        return MOAT_EINVAL;
    struct moat_outbox *o = outbox_alloc(base, source, opts);
    o->ops = &moat_outbox_kv_ops;
    o->kv = kv;
    return outbox_start(out, o, m);
}

void moat_outbox_free(struct moat_outbox *o)
{
    if (!o)
        return;
    if (moat_event_transport)
        moat_event_transport->outbox_stopping(o);
    /* Parked readers get their answer now, while the db is still ours. */
    moat_feed_release_waiters(o);
    moat_db_listener_free(o->listener);
    event_free(o->wake);
    if (o->shared_poll)
        event_free(o->shared_poll);
    event_free(o->trim_timer);
    free(o->source);
    free(o);
}

static bool valid_name(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    return n >= 1 && n <= max;
}

int moat_outbox_append(struct moat_outbox *o, const char *type,
                       const char *subject, int schema_version, json_t *data,
                       int64_t *seq)
{
    if (!valid_name(type, TYPE_MAX) || !valid_name(subject, SUBJECT_MAX) ||
        schema_version < 1 || !data) {
        moat_log(MOAT_LOG_ERROR, "invalid outbox event", "{s:s, s:s, s:i}",
                 "type", type ? type : "", "subject", subject ? subject : "",
                 "schema_version", schema_version);
        return MOAT_EINVAL;
    }
    /* The whole point: an event outside the state change's transaction
     * would be a dual write (docs/design.md invariant 2). */
    if (!o->ops->in_txn(o)) {
        moat_log(MOAT_LOG_ERROR,
                 "outbox append outside a transaction refused (the event "
                 "must commit with the change it describes)",
                 "{s:s, s:s}", "type", type, "subject", subject);
        return MOAT_EINVAL;
    }

    unsigned char rnd[16];
    char id[33];
    char traceparent[MOAT_TRACEPARENT_LEN + 1] = "";
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(id, rnd, sizeof(rnd));
    const struct moat_trace *t = moat_log_trace();
    if (t)
        moat_trace_format(t, traceparent);
    struct outbox_event ev = {
        .id = id,
        .type = type,
        .subject = subject,
        .time_ms = moat_wall_ms(),
        .schema_version = schema_version,
        .data = data,
        .traceparent = traceparent,
    };
    int64_t assigned = 0;
    int rc = o->ops->append(o, &ev, &assigned);
    if (rc == MOAT_OK && seq)
        *seq = assigned;
    return rc;
}

void moat_outbox_committed(struct moat_outbox *o)
{
    int64_t head;
    if (moat_outbox_bounds(o, &head, NULL, NULL) == MOAT_OK)
        count_appended(o, head);
    /*
     * Readers are answered from the loop, not from inside the writer's
     * request: the writer's reply does not wait for them, and several
     * commits in one loop turn coalesce into one wake.
     */
    if (o->nwaiters > 0 || o->nstreams > 0)
        event_active(o->wake, EV_TIMEOUT, 1);
    if (moat_event_transport)
        moat_event_transport->outbox_committed(o);
}
