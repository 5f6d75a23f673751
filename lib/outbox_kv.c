/*
 * outbox_kv.c - the outbox's LMDB storage (moat_outbox_new_kv, see
 * moat/events.h): events in the producer's own environment, written in
 * the producer's open write transaction through moat/kv.h.
 *
 * Sequence numbers. "outbox_meta" holds last_seq, the highest sequence
 * ever assigned; an append reads it, stores the event under last_seq + 1
 * and stores the new last_seq, all in the producer's transaction. LMDB
 * has one writer at a time, so events become visible in seq order and
 * there is never a gap: an aborted transaction takes its numbers with it,
 * and retention only deletes a prefix. last_seq stays when retention has
 * emptied "outbox", so a number is never handed out twice.
 *
 * Keys are 8-byte big-endian, which LMDB's bytewise order sorts as
 * numbers, so appends go in with MDB_APPEND (no page splits in the middle)
 * and a read is one cursor walk.
 */
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "events_internal.h"
#include "moat/kv.h"
#include "moat/log.h"

#define EVENTS_DB    "outbox"
#define META_DB      "outbox_meta"
#define LAST_SEQ_KEY "last_seq"

/* last_seq as of t; 0 before the first event. */
static int last_seq(struct moat_outbox *o, struct moat_kv_txn *t, int64_t *out)
{
    const void *val;
    size_t vlen;
    int rc = moat_kv_gets(t, o->kv_meta, LAST_SEQ_KEY, &val, &vlen);
    if (rc == MOAT_ENOTFOUND) {
        *out = 0;
        return MOAT_OK;
    }
    if (rc != MOAT_OK)
        return rc;
    if (vlen != 8) {
        moat_log(MOAT_LOG_ERROR, "stored outbox last_seq is malformed", "{s:s}",
                 "path", moat_kv_path(o->kv));
        return MOAT_EDB;
    }
    uint64_t v = moat_kv_u64_from_key(val);
    if (v > INT64_MAX)
        return MOAT_EDB;
    *out = (int64_t)v;
    return MOAT_OK;
}

/*
 * Parse a stored event. On success ev's strings and data point into *doc
 * (a new reference the caller drops after using ev).
 */
static int decode(struct moat_outbox *o, int64_t seq, const void *val,
                  size_t vlen, struct outbox_event *ev, json_t **doc)
{
    json_error_t err;
    json_int_t time_ms = 0;
    int version = 0;
    *doc = json_loadb(val, vlen, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &err);
    memset(ev, 0, sizeof(*ev));
    if (*doc &&
        json_unpack_ex(*doc, &err, JSON_STRICT,
                       "{s:s, s:s, s:s, s:I, s:i, s:o, s:s}", "id", &ev->id,
                       "type", &ev->type, "subject", &ev->subject, "time_ms",
                       &time_ms, "schema_version", &version, "data", &ev->data,
                       "traceparent", &ev->traceparent) == 0) {
        ev->seq = seq;
        ev->time_ms = time_ms;
        ev->schema_version = version;
        ev->stored_bytes = vlen;
        return MOAT_OK;
    }
    moat_log(MOAT_LOG_ERROR, "stored event is malformed", "{s:I, s:s, s:s}",
             "seq", (json_int_t)seq, "path", moat_kv_path(o->kv), "error",
             err.text);
    json_decref(*doc);
    *doc = NULL;
    return MOAT_EDB;
}

static int kv_attach(struct moat_outbox *o)
{
    int rc = moat_kv_db(o->kv, EVENTS_DB, &o->kv_events);
    if (rc == MOAT_OK)
        rc = moat_kv_db(o->kv, META_DB, &o->kv_meta);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot open the outbox sub-databases",
                 "{s:s, s:s}", "path", moat_kv_path(o->kv), "error",
                 moat_strerror(rc));
    return rc;
}

static bool kv_in_txn(struct moat_outbox *o)
{
    return moat_kv_write_txn(o->kv) != NULL;
}

static int kv_append(struct moat_outbox *o, const struct outbox_event *ev,
                     int64_t *seq)
{
    struct moat_kv_txn *t = moat_kv_write_txn(o->kv);
    int64_t last;
    int rc = last_seq(o, t, &last);
    if (rc != MOAT_OK)
        return rc;
    json_t *doc =
        json_pack("{s:s, s:s, s:s, s:I, s:i, s:O, s:s}", "id", ev->id, "type",
                  ev->type, "subject", ev->subject, "time_ms",
                  (json_int_t)ev->time_ms, "schema_version", ev->schema_version,
                  "data", ev->data, "traceparent", ev->traceparent);
    if (!doc) {
        /* type and subject came from the service's code, not a client,
         * but a string that is not UTF-8 must not reach the feed. */
        moat_log(MOAT_LOG_ERROR, "outbox event is not valid UTF-8", "{s:I}",
                 "seq", (json_int_t)(last + 1));
        return MOAT_EINVAL;
    }
    unsigned char key[8];
    moat_kv_u64_key((uint64_t)last + 1, key);
    /* APPEND: the key must be above every stored one. If it is not, the
     * meta and the events disagree, and overwriting would lose an event. */
    rc = moat_kv_put_json(t, o->kv_events, key, sizeof(key), doc,
                          MOAT_KV_APPEND);
    json_decref(doc);
    if (rc == MOAT_ECONFLICT) {
        moat_log(MOAT_LOG_ERROR, "outbox last_seq is behind its events",
                 "{s:s, s:I}", "path", moat_kv_path(o->kv), "last_seq",
                 (json_int_t)last);
        return MOAT_EDB;
    }
    if (rc == MOAT_OK)
        rc = moat_kv_puts(t, o->kv_meta, LAST_SEQ_KEY, key, sizeof(key), 0);
    if (rc == MOAT_OK)
        *seq = last + 1;
    return rc;
}

struct read_ctx {
    struct moat_outbox *o;
    int left;
    const char *const *types;
    outbox_visit_fn fn;
    void *arg;
    int64_t *reached;
};

static int read_one(const void *key, size_t klen, const void *val, size_t vlen,
                    void *arg)
{
    struct read_ctx *c = arg;
    if (klen != 8)
        return MOAT_EDB;
    struct outbox_event ev;
    json_t *doc;
    int rc =
        decode(c->o, (int64_t)moat_kv_u64_from_key(key), val, vlen, &ev, &doc);
    if (rc != MOAT_OK)
        return rc;
    /* The type is inside the stored document: passed over once decoded. */
    rc = moat_outbox_type_selected(c->types, ev.type) ? c->fn(&ev, c->arg)
                                                      : OUTBOX_NEXT;
    json_decref(doc);
    if (rc != OUTBOX_NEXT)
        return rc;
    *c->reached = ev.seq;
    return --c->left > 0 ? MOAT_KV_NEXT : MOAT_KV_STOP;
}

static int kv_read(struct moat_outbox *o, int64_t after, int limit,
                   const char *const *types, outbox_visit_fn fn, void *arg,
                   int64_t *reached)
{
    *reached = after;
    if (limit <= 0 || after < 0)
        return MOAT_OK;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(o->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    unsigned char from[8];
    moat_kv_u64_key((uint64_t)after + 1, from);
    struct read_ctx c = {.o = o,
                         .left = limit,
                         .types = types,
                         .fn = fn,
                         .arg = arg,
                         .reached = reached};
    /* OUTBOX_STOP from fn is also "stop", which iterate turns into OK. */
    rc = moat_kv_iterate(t, o->kv_events, from, sizeof(from), read_one, &c);
    moat_kv_abort(t);
    return rc;
}

struct first_ctx {
    struct moat_outbox *o;
    bool found;
    int64_t seq;
    bool want_time;
    int64_t time_ms;
};

static int first_one(const void *key, size_t klen, const void *val, size_t vlen,
                     void *arg)
{
    struct first_ctx *c = arg;
    if (klen != 8)
        return MOAT_EDB;
    c->found = true;
    c->seq = (int64_t)moat_kv_u64_from_key(key);
    if (c->want_time) {
        struct outbox_event ev;
        json_t *doc;
        int rc = decode(c->o, c->seq, val, vlen, &ev, &doc);
        if (rc != MOAT_OK)
            return rc;
        c->time_ms = ev.time_ms;
        json_decref(doc);
    }
    return MOAT_KV_STOP;
}

static int kv_bounds(struct moat_outbox *o, int64_t *head,
                     int64_t *retained_from, int64_t *oldest_ms)
{
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(o->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    int64_t h = 0;
    struct first_ctx c = {.o = o, .want_time = oldest_ms != NULL};
    rc = last_seq(o, t, &h);
    if (rc == MOAT_OK)
        rc = moat_kv_iterate(t, o->kv_events, NULL, 0, first_one, &c);
    moat_kv_abort(t);
    if (rc != MOAT_OK)
        return rc;
    if (head)
        *head = h;
    if (retained_from)
        *retained_from = c.found ? c.seq : h + 1;
    if (oldest_ms)
        *oldest_ms = c.found ? c.time_ms : 0;
    return MOAT_OK;
}

struct trim_ctx {
    struct moat_outbox *o;
    int64_t cutoff, max_seq; /* delete time < cutoff and seq <= max_seq */
    int left;
    int64_t first, last, n;
};

static int trim_scan(const void *key, size_t klen, const void *val, size_t vlen,
                     void *arg)
{
    struct trim_ctx *c = arg;
    if (klen != 8)
        return MOAT_EDB;
    int64_t seq = (int64_t)moat_kv_u64_from_key(key);
    if (seq > c->max_seq)
        return MOAT_KV_STOP;
    struct outbox_event ev;
    json_t *doc;
    int rc = decode(c->o, seq, val, vlen, &ev, &doc);
    if (rc != MOAT_OK)
        return rc;
    int64_t time_ms = ev.time_ms;
    json_decref(doc);
    /* The first young one ends the prefix (see trim_step in outbox.c). */
    if (time_ms >= c->cutoff)
        return MOAT_KV_STOP;
    if (c->n == 0)
        c->first = seq;
    c->last = seq;
    c->n++;
    return --c->left > 0 ? MOAT_KV_NEXT : MOAT_KV_STOP;
}

static int kv_trim(struct moat_outbox *o, int64_t cutoff, int64_t keep,
                   int batch, int64_t *deleted)
{
    /* Never inside the producer's transaction (and the writer lock is
     * not recursive). */
    if (moat_kv_write_txn(o->kv))
        return MOAT_EBUSY;
    struct moat_kv_txn *t = NULL;
    int rc = moat_kv_begin(o->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    int64_t head;
    rc = last_seq(o, t, &head);
    if (rc != MOAT_OK)
        goto cleanup;
    /* Sequences are contiguous up to head, so the newest keep events are
     * those above head - keep. */
    struct trim_ctx c = {.o = o,
                         .cutoff = cutoff,
                         .max_seq = keep > 0 ? head - keep : INT64_MAX,
                         .left = batch};
    rc = moat_kv_iterate(t, o->kv_events, NULL, 0, trim_scan, &c);
    if (rc != MOAT_OK || c.n == 0)
        goto cleanup;
    /* Deleted after the walk: a cursor must not see its db change. */
    for (int64_t seq = c.first; seq <= c.last && rc == MOAT_OK; seq++) {
        unsigned char key[8];
        moat_kv_u64_key((uint64_t)seq, key);
        rc = moat_kv_del(t, o->kv_events, key, sizeof(key));
        /* A hole cannot happen (see the top); if one did, retention must
         * not get stuck on it forever. */
        if (rc == MOAT_ENOTFOUND)
            rc = MOAT_OK;
    }
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_kv_commit(t);
    t = NULL;
    if (rc == MOAT_OK)
        *deleted = c.n;

cleanup:
    moat_kv_abort(t);
    return rc;
}

static const char *kv_where(struct moat_outbox *o)
{
    return moat_kv_path(o->kv);
}

const struct outbox_storage_ops moat_outbox_kv_ops = {
    .engine = "lmdb",
    .attach = kv_attach,
    .in_txn = kv_in_txn,
    .append = kv_append,
    .read = kv_read,
    .bounds = kv_bounds,
    .trim = kv_trim,
    .where = kv_where,
};
