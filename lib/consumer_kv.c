/*
 * consumer_kv.c - the consumer's storage in its own LMDB environment
 * (moat_consumer_new_kv, see moat/events.h).
 *
 * Layout (sub-databases of the consumer's environment):
 *   consumer              source -> {"after_seq", "updated_ms"}
 *   dead_letters          source NUL seq (8 bytes big-endian) ->
 *                         {"event_id", "subject", "type", "event", "error",
 *                          "attempts", "state", "parked_ms"}
 *   dead_letters_subject  source NUL subject NUL seq -> empty: the parked
 *                         events of a subject in seq order (blockers,
 *                         redrive)
 * Both key orders are those of the SQLite queries they replace: (source,
 * seq) and (source, subject, seq).
 *
 * Transactions. A batch is one LMDB write transaction (c->kv_txn): one
 * sync for every event's effects, what its handler appended to an outbox
 * of the same environment, the parked events and the cursor. Each event's
 * handler runs in a transaction nested in it (c->kv_event, moat/kv.h
 * moat_kv_begin_nested), LMDB's savepoint: aborting it undoes that event
 * alone. LMDB never ends a transaction by itself; a handler that commits
 * or aborts its own nested transaction breaks the rules and the batch's
 * transaction is dropped ("lost") and applied again.
 *
 * Verification rebuilds into <data_dir>/replay-verify/, an environment the
 * service's view ops open (moat_kv_view_ops), removed with everything in
 * it at the end and at the start (a crash may have left one).
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include "moat/common.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "consumer_internal.h"
#include "moat/kv.h"
#include "moat/log.h"

#define CURSORS_DB      "consumer"
#define DEAD_DB         "dead_letters"
#define DEAD_SUBJECT_DB "dead_letters_subject"
#define VERIFY_DIR      "replay-verify"
/* The subject's bytes in an index key: keys are at most MOAT_KV_MAX_KEY. */
#define SUBJECT_KEY_MAX 400
#define KEY_MAX         (CONSUMER_SOURCE_MAX + SUBJECT_KEY_MAX + 16)

struct consumer_scratch {
    char *dir;          /* owned */
    struct moat_kv *kv; /* the view ops' */
    void *handler_arg;  /* the view ops' */
    struct moat_kv_txn *txn;
    bool opened; /* scratch_open succeeded: scratch_close is due */
    struct moat_consumer *c;
};

static void kv_failed(struct moat_consumer *c, const char *what, int rc)
{
    snprintf(c->kv_err, sizeof(c->kv_err), "lmdb %s: %s", what,
             moat_strerror(rc));
}

static const char *kv_where(struct moat_consumer *c)
{
    return moat_kv_path(c->kv);
}

static const char *kv_errmsg(struct moat_consumer *c)
{
    return c->kv_err[0] ? c->kv_err : "no error";
}

/* source NUL seq */
static size_t dead_key(unsigned char *k, const char *source, int64_t seq)
{
    size_t n = strlen(source);
    memcpy(k, source, n);
    k[n++] = 0;
    moat_kv_u64_key((uint64_t)seq, k + n);
    return n + 8;
}

/* source NUL subject NUL [seq]: the prefix without seq when seq < 0. */
static size_t subject_key(unsigned char *k, const char *source,
                          const char *subject, int64_t seq)
{
    size_t n = strlen(source), m = strlen(subject);
    if (m > SUBJECT_KEY_MAX)
        m = SUBJECT_KEY_MAX;
    memcpy(k, source, n);
    k[n++] = 0;
    memcpy(k + n, subject, m);
    n += m;
    k[n++] = 0;
    if (seq < 0)
        return n;
    moat_kv_u64_key((uint64_t)seq, k + n);
    return n + 8;
}

static int kv_attach(struct moat_consumer *c)
{
    int rc = moat_kv_db(c->kv, CURSORS_DB, &c->kv_cursors);
    if (rc == MOAT_OK)
        rc = moat_kv_db(c->kv, DEAD_DB, &c->kv_dead);
    if (rc == MOAT_OK)
        rc = moat_kv_db(c->kv, DEAD_SUBJECT_DB, &c->kv_dead_subject);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR,
                 "cannot open the consumer's sub-databases (call "
                 "moat_consumer_new_kv at start, with no transaction open)",
                 "{s:s, s:s}", "path", moat_kv_path(c->kv), "error",
                 moat_strerror(rc));
    return rc;
}

static int cursor_get(struct moat_consumer *c, struct moat_kv_txn *t,
                      const char *source, int64_t *seq)
{
    json_t *j = NULL;
    json_int_t v = 0;
    *seq = 0;
    if (!source[0])
        return MOAT_OK; /* not a valid key; no source is called "" */
    int rc = moat_kv_get_json(t, c->kv_cursors, source, strlen(source), &j);
    if (rc == MOAT_ENOTFOUND)
        return MOAT_OK;
    if (rc != MOAT_OK)
        return rc;
    if (json_unpack(j, "{s:I}", "after_seq", &v) != 0 || v < 0) {
        moat_log(MOAT_LOG_ERROR, "stored consumer cursor is malformed", "{s:s}",
                 "source", source);
        rc = MOAT_EDB;
    }
    json_decref(j);
    *seq = v;
    return rc;
}

static int kv_cursor_read(struct moat_consumer *c, const char *source,
                          int64_t *seq)
{
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(c->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = cursor_get(c, t, source, seq);
    moat_kv_abort(t);
    return rc;
}

static int kv_begin(struct moat_consumer *c)
{
    c->kv_lost = false;
    int rc = moat_kv_begin(c->kv, &c->kv_txn);
    if (rc != MOAT_OK) {
        c->kv_txn = NULL;
        kv_failed(c, "begin", rc);
    }
    return rc;
}

static int kv_commit(struct moat_consumer *c)
{
    if (!c->kv_txn || c->kv_lost)
        return MOAT_EDB;
    int rc = moat_kv_commit(c->kv_txn);
    c->kv_txn = NULL;
    if (rc != MOAT_OK)
        kv_failed(c, "commit", rc);
    return rc;
}

static void kv_rollback(struct moat_consumer *c)
{
    /* Aborting the batch's transaction ends its nested one too. */
    moat_kv_abort(c->kv_txn);
    c->kv_txn = NULL;
    c->kv_event = NULL;
    c->kv_lost = false;
}

static bool kv_lost(struct moat_consumer *c)
{
    return c->kv_lost;
}

static int kv_savepoint(struct moat_consumer *c)
{
    int rc = moat_kv_begin_nested(c->kv_txn, &c->kv_event);
    if (rc != MOAT_OK) {
        c->kv_event = NULL;
        kv_failed(c, "begin nested", rc);
    }
    return rc;
}

static int kv_release(struct moat_consumer *c)
{
    int rc = moat_kv_commit(c->kv_event);
    c->kv_event = NULL;
    if (rc != MOAT_OK)
        kv_failed(c, "commit nested", rc);
    return rc;
}

static int kv_rollback_to(struct moat_consumer *c)
{
    moat_kv_abort(c->kv_event);
    c->kv_event = NULL;
    return MOAT_OK;
}

static int kv_run(struct moat_consumer *c, struct sub *s,
                  struct consumer_scratch *x, const struct moat_event *ev,
                  const char **why)
{
    struct moat_kv_txn *t = x ? x->txn : c->kv_event ? c->kv_event : c->kv_txn;
    struct moat_kv *kv = x ? x->kv : c->kv;
    int rc = s->kv_handler(t, ev, x ? x->handler_arg : s->arg, why);
    if (moat_kv_write_txn(kv) != t) {
        /* The handler ended its transaction: its writes may have joined
         * the batch's (a commit) and cannot be told apart any more. */
        if (!x) {
            if (t == c->kv_event)
                c->kv_event = NULL;
            else
                c->kv_txn = NULL;
            c->kv_lost = true;
        } else {
            x->txn = NULL;
        }
        *why = "the handler ended the consumer's transaction";
        return MOAT_EINVAL;
    }
    if (rc != MOAT_OK)
        snprintf(c->kv_err, sizeof(c->kv_err), "handler: %s",
                 *why ? *why : moat_strerror(rc));
    return rc;
}

static int kv_cursor_write(struct moat_consumer *c, const char *source,
                           int64_t seq)
{
    json_t *j = json_pack("{s:I, s:I}", "after_seq", (json_int_t)seq,
                          "updated_ms", (json_int_t)moat_wall_ms());
    int rc = moat_kv_put_json(c->kv_txn, c->kv_cursors, source, strlen(source),
                              j, 0);
    json_decref(j);
    if (rc != MOAT_OK)
        kv_failed(c, "cursor write", rc);
    return rc;
}

struct first_seq {
    const unsigned char *prefix;
    size_t plen;
    int64_t seq;
};

static int first_with_prefix(const void *key, size_t klen, const void *val,
                             size_t vlen, void *arg)
{
    MOAT_UNUSED(val);
    MOAT_UNUSED(vlen);
    struct first_seq *f = arg;
    if (klen == f->plen + 8 && memcmp(key, f->prefix, f->plen) == 0)
        f->seq =
            (int64_t)moat_kv_u64_from_key((const unsigned char *)key + f->plen);
    return MOAT_KV_STOP;
}

static int kv_blocker(struct moat_consumer *c, const char *source,
                      const char *subject, int64_t *seq)
{
    unsigned char k[KEY_MAX];
    struct first_seq f = {.prefix = k};
    f.plen = subject_key(k, source, subject, -1);
    int rc = moat_kv_iterate(c->kv_txn, c->kv_dead_subject, k, f.plen,
                             first_with_prefix, &f);
    if (rc != MOAT_OK)
        kv_failed(c, "dead letter lookup", rc);
    *seq = f.seq;
    return rc;
}

static json_t *dead_value(const struct consumer_dead *d)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:I}", "event_id",
                     d->event_id, "subject", d->subject, "type", d->type,
                     "event", d->event, "error", d->error, "attempts",
                     d->attempts, "state", d->state, "parked_ms",
                     (json_int_t)d->parked_ms);
}

static int kv_park(struct moat_consumer *c, const struct consumer_dead *d)
{
    unsigned char k[KEY_MAX];
    json_t *j = dead_value(d);
    if (!j)
        return MOAT_EINVAL; /* not UTF-8: jansson refused a string */
    int rc = moat_kv_put_json(c->kv_txn, c->kv_dead, k,
                              dead_key(k, d->source, d->seq), j, 0);
    json_decref(j);
    if (rc == MOAT_OK)
        rc = moat_kv_put(c->kv_txn, c->kv_dead_subject, k,
                         subject_key(k, d->source, d->subject, d->seq), NULL, 0,
                         0);
    if (rc != MOAT_OK)
        kv_failed(c, "park", rc);
    return rc;
}

static int kv_dead_delete(struct moat_consumer *c, const char *source,
                          int64_t seq)
{
    unsigned char k[KEY_MAX];
    json_t *j = NULL;
    size_t klen = dead_key(k, source, seq);
    int rc = moat_kv_get_json(c->kv_txn, c->kv_dead, k, klen, &j);
    if (rc == MOAT_OK)
        rc = moat_kv_del(c->kv_txn, c->kv_dead, k, klen);
    const char *subject = consumer_jstr(j, "subject");
    if (rc == MOAT_OK)
        rc = moat_kv_del(c->kv_txn, c->kv_dead_subject, k,
                         subject_key(k, source, subject ? subject : "", seq));
    json_decref(j);
    if (rc != MOAT_OK)
        kv_failed(c, "dead letter delete", rc);
    return rc;
}

static int kv_dead_mark_failed(struct moat_consumer *c, const char *source,
                               int64_t seq, const char *error)
{
    unsigned char k[KEY_MAX];
    size_t klen = dead_key(k, source, seq);
    json_t *j = NULL;
    int rc = kv_begin(c);
    if (rc == MOAT_OK)
        rc = moat_kv_get_json(c->kv_txn, c->kv_dead, k, klen, &j);
    if (rc == MOAT_OK) {
        json_t *attempts = json_object_get(j, "attempts");
        json_object_set_new(j, "error", json_string(error));
        json_object_set_new(j, "state", json_string("failed"));
        json_object_set_new(j, "attempts",
                            json_integer(json_integer_value(attempts) + 1));
        rc = moat_kv_put_json(c->kv_txn, c->kv_dead, k, klen, j, 0);
    }
    json_decref(j);
    if (rc == MOAT_OK)
        return kv_commit(c);
    kv_rollback(c);
    return rc;
}

/* Collect every key of a sub-database (deleting while iterating is not
 * allowed), then delete them. */
static int collect_key(const void *key, size_t klen, const void *val,
                       size_t vlen, void *arg)
{
    MOAT_UNUSED(val);
    MOAT_UNUSED(vlen);
    json_array_append_new(arg, json_stringn_nocheck(key, klen));
    return MOAT_KV_NEXT;
}

static int clear_db(struct moat_kv_txn *t, struct moat_kv_db *db)
{
    json_t *keys = json_array();
    int rc = moat_kv_iterate(t, db, NULL, 0, collect_key, keys);
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        if (rc != MOAT_OK)
            break;
        rc = moat_kv_del(t, db, json_string_value(k), json_string_length(k));
    }
    json_decref(keys);
    return rc;
}

static int kv_reset(struct moat_consumer *c)
{
    int rc = kv_begin(c);
    if (rc != MOAT_OK)
        return rc;
    rc = c->kv_view.reset(c->kv_txn, c->kv_view.arg);
    if (rc == MOAT_OK)
        rc = clear_db(c->kv_txn, c->kv_cursors);
    if (rc == MOAT_OK)
        rc = clear_db(c->kv_txn, c->kv_dead);
    if (rc == MOAT_OK)
        rc = clear_db(c->kv_txn, c->kv_dead_subject);
    if (rc == MOAT_OK)
        return kv_commit(c);
    kv_rollback(c);
    return rc;
}

/* ---- reading dead letters ---- */

struct visit {
    struct moat_consumer *c;
    struct moat_kv_txn *t;
    const char *source, *subject; /* filters, NULL = any */
    size_t slen;
    int64_t limit, seen, total;
    bool want_total;
    consumer_dead_fn fn;
    void *arg;
    int rc;
};

/* One dead letter: key source NUL seq, val its JSON. */
static int visit_dead(struct visit *v, const unsigned char *key, size_t klen,
                      const void *val, size_t vlen)
{
    if (klen < 10 || key[klen - 9] != 0)
        return MOAT_EDB;
    const char *source = (const char *)key; /* NUL-terminated in the key */
    if (v->source && strcmp(source, v->source) != 0)
        return MOAT_KV_STOP; /* past the source's keys (they sort first) */
    json_t *j = json_loadb(val, vlen, 0, NULL);
    const char *subject = consumer_jstr(j, "subject");
    if (!j || !subject) {
        json_decref(j);
        return MOAT_EDB;
    }
    int rc = MOAT_KV_NEXT;
    if (!v->subject || strcmp(subject, v->subject) == 0) {
        v->total++;
        if (v->fn && v->seen < v->limit) {
            v->seen++;
            json_t *attempts = json_object_get(j, "attempts");
            json_t *parked = json_object_get(j, "parked_ms");
            const char *ev = consumer_jstr(j, "event");
            struct consumer_dead d = {
                .source = source,
                .seq = (int64_t)moat_kv_u64_from_key(key + klen - 8),
                .event_id = consumer_jstr(j, "event_id"),
                .subject = subject,
                .type = consumer_jstr(j, "type"),
                .event = ev ? ev : "null",
                .error = consumer_jstr(j, "error"),
                .attempts = (int)json_integer_value(attempts),
                .state = consumer_jstr(j, "state"),
                .parked_ms = json_integer_value(parked),
            };
            if (!d.event_id || !d.type || !d.error || !d.state)
                rc = MOAT_EDB;
            else if (v->fn(&d, v->arg) != 0)
                rc = MOAT_KV_STOP;
        } else if (!v->want_total) {
            rc = MOAT_KV_STOP;
        }
    }
    json_decref(j);
    return rc;
}

static int by_seq(const void *key, size_t klen, const void *val, size_t vlen,
                  void *arg)
{
    return visit_dead(arg, key, klen, val, vlen);
}

static int by_subject(const void *key, size_t klen, const void *val,
                      size_t vlen, void *arg)
{
    MOAT_UNUSED(val);
    MOAT_UNUSED(vlen);
    struct visit *v = arg;
    const unsigned char *k = key;
    if (klen < 10)
        return MOAT_EDB;
    const char *source = (const char *)k;
    if (v->source && strcmp(source, v->source) != 0)
        return MOAT_KV_STOP; /* past the source's keys */
    unsigned char dk[KEY_MAX];
    size_t dlen =
        dead_key(dk, source, (int64_t)moat_kv_u64_from_key(k + klen - 8));
    const void *dval;
    size_t dvlen;
    int rc = moat_kv_get(v->t, v->c->kv_dead, dk, dlen, &dval, &dvlen);
    if (rc != MOAT_OK)
        return rc == MOAT_ENOTFOUND ? MOAT_EDB : rc;
    return visit_dead(v, dk, dlen, dval, dvlen);
}

static int kv_dead_visit(struct moat_consumer *c, const char *source,
                         const char *subject, bool order_by_subject,
                         int64_t limit, consumer_dead_fn fn, void *arg,
                         int64_t *total)
{
    struct visit v = {.c = c,
                      .source = source,
                      .subject = subject,
                      .limit = limit,
                      .want_total = total != NULL,
                      .fn = fn,
                      .arg = arg};
    unsigned char from[KEY_MAX];
    size_t flen = 0;
    if (source) {
        memcpy(from, source, strlen(source) + 1);
        flen = strlen(source) + 1;
    }
    int rc = moat_kv_begin_read(c->kv, &v.t);
    if (rc != MOAT_OK)
        return rc;
    if (order_by_subject)
        rc = moat_kv_iterate(v.t, c->kv_dead_subject, flen ? from : NULL, flen,
                             by_subject, &v);
    else
        rc = moat_kv_iterate(v.t, c->kv_dead, flen ? from : NULL, flen, by_seq,
                             &v);
    moat_kv_abort(v.t);
    if (rc == MOAT_EDB)
        moat_log(MOAT_LOG_ERROR, "a stored dead letter is malformed", "{s:s}",
                 "path", moat_kv_path(c->kv));
    if (total)
        *total = v.total;
    return rc;
}

static int count_state(const struct consumer_dead *d, void *arg)
{
    int64_t *n = arg;
    n[strcmp(d->state, "blocked") == 0]++;
    return 0;
}

static int kv_dead_count(struct moat_consumer *c, const char *source,
                         int64_t *failed, int64_t *blocked)
{
    int64_t n[2] = {0, 0};
    int rc =
        kv_dead_visit(c, source, NULL, false, INT64_MAX, count_state, n, NULL);
    if (failed)
        *failed = n[0];
    if (blocked)
        *blocked = n[1];
    return rc;
}

/* ---- verification ---- */

static bool kv_has_view(struct moat_consumer *c)
{
    return c->has_view;
}

static bool kv_can_reset(struct moat_consumer *c)
{
    return c->has_view && c->kv_view.reset;
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
    MOAT_UNUSED(st);
    MOAT_UNUSED(flag);
    MOAT_UNUSED(ftw);
    if (remove(path) != 0 && errno != ENOENT)
        moat_log(MOAT_LOG_WARN, "cannot remove the verification environment",
                 "{s:s, s:s}", "path", path, "error", strerror(errno));
    return 0;
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void kv_scratch_free(struct moat_consumer *c, struct consumer_scratch *x)
{
    if (!x)
        return;
    moat_kv_abort(x->txn);
    if (x->opened)
        c->kv_view.scratch_close(x->kv, x->handler_arg, c->kv_view.arg);
    rm_tree(x->dir);
    free(x->dir);
    free(x);
}

static int kv_scratch_open(struct moat_consumer *c, const char *dir,
                           struct consumer_scratch **out, char *why,
                           size_t whylen)
{
    struct consumer_scratch *x = moat_xcalloc(1, sizeof(*x));
    x->c = c;
    x->dir = moat_xasprintf("%s/%s", dir, VERIFY_DIR);
    rm_tree(x->dir); /* stale, from a crash mid-verification */
    int rc = MOAT_EIO;
    if (mkdir(x->dir, 0700) != 0) {
        snprintf(why, whylen, "mkdir %s: %s", x->dir, strerror(errno));
        goto cleanup;
    }
    rc = c->kv_view.scratch_open(x->dir, c->kv, &x->kv, &x->handler_arg,
                                 c->kv_view.arg);
    if (rc != MOAT_OK)
        goto cleanup;
    x->opened = true;
    *out = x;
    return MOAT_OK;

cleanup:
    kv_scratch_free(c, x);
    return rc;
}

static int kv_scratch_begin(struct consumer_scratch *x)
{
    return moat_kv_begin(x->kv, &x->txn);
}

static int kv_scratch_commit(struct consumer_scratch *x)
{
    if (!x->txn)
        return MOAT_EDB;
    int rc = moat_kv_commit(x->txn);
    x->txn = NULL;
    return rc;
}

static void kv_scratch_rollback(struct consumer_scratch *x)
{
    moat_kv_abort(x->txn);
    x->txn = NULL;
}

static const char *kv_scratch_errmsg(struct consumer_scratch *x)
{
    MOAT_UNUSED(x);
    return "lmdb write failed (see the log)";
}

static int kv_compare(struct moat_consumer *c, struct consumer_scratch *x,
                      json_t *diffs)
{
    return c->kv_view.compare(c->kv, x->kv, diffs, c->kv_view.arg);
}

const struct consumer_storage_ops moat_consumer_kv_ops = {
    .engine = "lmdb",
    .where = kv_where,
    .errmsg = kv_errmsg,
    .attach = kv_attach,
    .cursor_read = kv_cursor_read,
    .begin = kv_begin,
    .commit = kv_commit,
    .rollback = kv_rollback,
    .lost = kv_lost,
    .savepoint = kv_savepoint,
    .release = kv_release,
    .rollback_to = kv_rollback_to,
    .run = kv_run,
    .cursor_write = kv_cursor_write,
    .blocker = kv_blocker,
    .park = kv_park,
    .dead_delete = kv_dead_delete,
    .dead_mark_failed = kv_dead_mark_failed,
    .reset = kv_reset,
    .dead_count = kv_dead_count,
    .dead_visit = kv_dead_visit,
    .has_view = kv_has_view,
    .can_reset = kv_can_reset,
    .scratch_open = kv_scratch_open,
    .scratch_free = kv_scratch_free,
    .scratch_begin = kv_scratch_begin,
    .scratch_commit = kv_scratch_commit,
    .scratch_rollback = kv_scratch_rollback,
    .scratch_errmsg = kv_scratch_errmsg,
    .compare = kv_compare,
};
