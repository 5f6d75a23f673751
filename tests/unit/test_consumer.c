/*
 * test_consumer.c - lib/consumer.c end to end in one process: a producer
 * (outbox + feed on a loopback moat_http_server) and a consumer (its own
 * database, pulling through moat_feed_source_new without service tokens,
 * as with MOAT_INSECURE_NO_AUTH, admin routes on a second server), all on
 * one event loop.
 *
 * The view is a table items(subject, value, changes): each applied event
 * sets value and adds 1 to changes, so changes counts how often events of
 * a subject took effect - exactly once each, or the test fails. An event
 * whose value starts with "poison" fails while the view is "broken".
 *
 * Every test runs twice: on a consumer whose database is SQLite
 * (moat_consumer_new, handler apply_item) and on one whose database is an
 * LMDB environment (moat_consumer_new_kv, handler apply_item_kv: the same
 * view in sub-databases "items" and "applied"). The names of the LMDB
 * runs end in "_lmdb".
 *
 * Run one test alone: tests/unit_test_consumer test_poison_and_redrive
 */
#include "moat/common.h"

#include <event2/event.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/backup.h"
#include "moat/buf.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/http_client.h"
#include "moat/kv.h"
#include "moat/log.h"

#define DEADLINE_MS 5000

/* ---- the view under test ---- */

struct view {
    bool broken;     /* "poison..." values fail */
    int poison_runs; /* handler runs on a poison event */
};

static const struct moat_migration view_migrations[] = {
    {1, "consumer bookkeeping", MOAT_CONSUMER_SCHEMA, NULL},
    {2, "items",
     "CREATE TABLE items (subject TEXT PRIMARY KEY, value TEXT NOT NULL,"
     " changes INTEGER NOT NULL) STRICT;\n"
     "CREATE TABLE applied (n INTEGER PRIMARY KEY, subject TEXT NOT NULL,"
     " value TEXT NOT NULL) STRICT;\n",
     NULL},
};

/*
 * The one place where old data shapes become the current one: version 1
 * had {"val": ...}, version 2 has {"value": ...}.
 */
static const char *upcast_value(const struct moat_event *ev)
{
    if (ev->schema_version == 1)
        return json_string_value(json_object_get(ev->data, "val"));
    return json_string_value(json_object_get(ev->data, "value"));
}

static int apply_item(struct moat_db *db, const struct moat_event *ev,
                      void *arg, const char **why)
{
    struct view *v = arg;
    const char *value = upcast_value(ev);
    if (!value) {
        *why = "no value";
        return MOAT_EINVAL;
    }
    if (strncmp(value, "poison", 6) == 0) {
        v->poison_runs++;
        if (v->broken) {
            *why = "poisoned value";
            return MOAT_EINVAL;
        }
    }
    struct moat_stmt *st = moat_db_prepare(
        db, "item_upsert",
        "INSERT INTO items (subject, value, changes) VALUES (?1, ?2, 1) "
        "ON CONFLICT (subject) DO UPDATE SET value = excluded.value, "
        "changes = changes + 1");
    if (!st)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(st), 1, ev->subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(moat_stmt_raw(st), 2, value, -1, SQLITE_STATIC);
    int rc = moat_stmt_step(st);
    moat_stmt_reset(st);
    if (rc != SQLITE_DONE)
        return MOAT_EDB;
    st = moat_db_prepare(
        db, "item_log", "INSERT INTO applied (subject, value) VALUES (?1, ?2)");
    if (!st)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(st), 1, ev->subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(moat_stmt_raw(st), 2, value, -1, SQLITE_STATIC);
    rc = moat_stmt_step(st);
    moat_stmt_reset(st);
    return rc == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

static int view_reset(struct moat_db *db, void *arg)
{
    return moat_db_exec(db, "view_reset",
                        "DELETE FROM items; DELETE FROM applied");
}

/* {subject: "value/changes"} of db. */
static json_t *dump_items(struct moat_db *db)
{
    json_t *out = json_object();
    struct moat_stmt *st =
        moat_db_prepare(db, "items_dump",
                        "SELECT subject, value, changes FROM items "
                        "ORDER BY subject");
    assert_non_null(st);
    while (moat_stmt_step(st) == SQLITE_ROW) {
        sqlite3_stmt *s = moat_stmt_raw(st);
        json_object_set_new(
            out, (const char *)sqlite3_column_text(s, 0),
            json_sprintf("%s/%lld", (const char *)sqlite3_column_text(s, 1),
                         (long long)sqlite3_column_int64(s, 2)));
    }
    moat_stmt_reset(st);
    return out;
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    json_t *a = dump_items(live), *b = dump_items(scratch);
    const char *key;
    json_t *val;
    json_object_foreach(a, key, val)
    {
        json_t *other = json_object_get(b, key);
        if (!json_equal(val, other))
            json_array_append_new(
                diffs, json_sprintf("item %s: live %s, rebuilt %s", key,
                                    json_string_value(val),
                                    other ? json_string_value(other) : "-"));
    }
    json_object_foreach(b, key, val)
    {
        if (!json_object_get(a, key))
            json_array_append_new(diffs,
                                  json_sprintf("item %s: missing live", key));
    }
    json_decref(a);
    json_decref(b);
    return MOAT_OK;
}

/* ---- the same view in an LMDB environment ---- */

/* items: subject -> "value/changes"; applied: 8-byte n -> subject NUL
 * value, n counting from 1. The handles are those of one environment:
 * live or a verification's scratch. */
struct kv_view {
    struct view *v;
    struct moat_kv *kv; /* the scratch's is owned */
    struct moat_kv_db *items, *applied;
};

static int kv_view_open(struct kv_view *kvv, struct moat_kv *kv, struct view *v)
{
    kvv->v = v;
    kvv->kv = kv;
    int rc = moat_kv_db(kv, "items", &kvv->items);
    if (rc == MOAT_OK)
        rc = moat_kv_db(kv, "applied", &kvv->applied);
    return rc;
}

static int apply_item_kv(struct moat_kv_txn *t, const struct moat_event *ev,
                         void *arg, const char **why)
{
    struct kv_view *kvv = arg;
    const char *value = upcast_value(ev);
    if (!value) {
        *why = "no value";
        return MOAT_EINVAL;
    }
    if (strncmp(value, "poison", 6) == 0) {
        kvv->v->poison_runs++;
        if (kvv->v->broken) {
            *why = "poisoned value";
            return MOAT_EINVAL;
        }
    }
    const void *old;
    size_t olen;
    long long changes = 0;
    int rc = moat_kv_gets(t, kvv->items, ev->subject, &old, &olen);
    if (rc == MOAT_OK) {
        /* Values point into the map, without a NUL. */
        char *copy = moat_xstrndup(old, olen);
        const char *slash = strrchr(copy, '/');
        assert_non_null(slash);
        changes = strtoll(slash + 1, NULL, 10);
        free(copy);
    } else if (rc != MOAT_ENOTFOUND) {
        return rc;
    }
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "%s/%lld", value, changes + 1);
    rc = moat_kv_puts(t, kvv->items, ev->subject, buf, (size_t)n, 0);
    if (rc != MOAT_OK)
        return rc;
    const void *key, *val;
    size_t klen, vlen;
    uint64_t next = 1;
    rc = moat_kv_last(t, kvv->applied, &key, &klen, &val, &vlen);
    if (rc == MOAT_OK)
        next = moat_kv_u64_from_key(key) + 1;
    else if (rc != MOAT_ENOTFOUND)
        return rc;
    unsigned char k[8];
    moat_kv_u64_key(next, k);
    n = snprintf(buf, sizeof(buf), "%s%c%s", ev->subject, 0, value);
    return moat_kv_put(t, kvv->applied, k, 8, buf, (size_t)n, 0);
}

static int clear_one(const void *key, size_t klen, const void *val, size_t vlen,
                     void *arg)
{
    json_array_append_new(arg, json_stringn_nocheck(key, klen));
    return MOAT_KV_NEXT;
}

static int kv_clear(struct moat_kv_txn *t, struct moat_kv_db *db)
{
    json_t *keys = json_array();
    int rc = moat_kv_iterate(t, db, NULL, 0, clear_one, keys);
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        if (rc == MOAT_OK)
            rc =
                moat_kv_del(t, db, json_string_value(k), json_string_length(k));
    }
    json_decref(keys);
    return rc;
}

static int kv_view_reset(struct moat_kv_txn *t, void *arg)
{
    struct kv_view *kvv = arg;
    int rc = kv_clear(t, kvv->items);
    return rc == MOAT_OK ? kv_clear(t, kvv->applied) : rc;
}

static int kv_scratch_open(const char *dir, struct moat_kv *live,
                           struct moat_kv **scratch, void **handler_arg,
                           void *arg)
{
    struct kv_view *lv = arg;
    struct kv_view *x = moat_xcalloc(1, sizeof(*x));
    int rc = moat_kv_open(&x->kv, dir, 0, NULL);
    if (rc == MOAT_OK)
        rc = kv_view_open(x, x->kv, lv->v);
    if (rc != MOAT_OK) {
        moat_kv_close(x->kv);
        free(x);
        return rc;
    }
    assert_ptr_equal(live, lv->kv);
    *scratch = x->kv;
    *handler_arg = x;
    return MOAT_OK;
}

static void kv_scratch_close(struct moat_kv *scratch, void *handler_arg,
                             void *arg)
{
    struct kv_view *x = handler_arg;
    moat_kv_close(x->kv);
    free(x);
}

static int kv_view_compare(struct moat_kv *live, struct moat_kv *scratch,
                           json_t *diffs, void *arg)
{
    static const struct moat_kv_view_range ranges[] = {
        {"items", "item", NULL},
    };
    return moat_kv_compare_ranges(live, scratch, ranges, 1, diffs, 100);
}

/* ---- a source that delivers everything twice, and a flaky one ---- */

struct wrap_call {
    struct wrap_source *ws;
    moat_source_done_fn done;
    void *arg;
    struct wrap_call *next;
};

struct wrap_source {
    struct moat_event_source src;
    struct event_base *base;
    struct moat_event_source *inner;
    bool duplicate; /* re-deliver the last 3 events and each event twice */
    int fail_first; /* fail this many pulls with MOAT_EIO first */
    int pulls;
    struct wrap_call *calls;
};

static void wrap_forget(struct wrap_source *ws, struct wrap_call *wc)
{
    for (struct wrap_call **p = &ws->calls; *p; p = &(*p)->next)
        if (*p == wc) {
            *p = wc->next;
            return;
        }
}

static void wrap_done(int err, json_t *events, int64_t head, void *arg)
{
    struct wrap_call *wc = arg;
    json_t *out = NULL;
    wrap_forget(wc->ws, wc);
    if (err == MOAT_OK && wc->ws->duplicate) {
        out = json_array();
        json_array_extend(out, events);
        json_array_extend(out, events);
        events = out;
    }
    wc->done(err, events, head, wc->arg);
    json_decref(out);
    free(wc);
}

static void on_fail(evutil_socket_t fd, short what, void *arg)
{
    struct wrap_call *wc = arg;
    wrap_done(MOAT_EIO, NULL, 0, wc);
}

static int wrap_pull(struct moat_event_source *src, int64_t after, int limit,
                     int wait_ms, moat_source_done_fn done, void *arg)
{
    struct wrap_source *ws = (struct wrap_source *)src;
    struct wrap_call *wc = moat_xcalloc(1, sizeof(*wc));
    wc->ws = ws;
    wc->done = done;
    wc->arg = arg;
    wc->next = ws->calls;
    ws->calls = wc;
    if (ws->pulls++ < ws->fail_first) {
        /* Fail from the loop, never from inside pull. */
        struct timeval tv = {0, 0};
        int rc = event_base_once(ws->base, -1, EV_TIMEOUT, on_fail, wc, &tv);
        assert_int_equal(rc, 0);
        return MOAT_OK;
    }
    if (ws->duplicate)
        after = after > 3 ? after - 3 : 0;
    return ws->inner->ops->pull(ws->inner, after, limit, wait_ms, wrap_done,
                                wc);
}

static void wrap_free(struct moat_event_source *src)
{
    struct wrap_source *ws = (struct wrap_source *)src;
    ws->inner->ops->free(ws->inner); /* drops its calls: no callbacks */
    while (ws->calls) {
        struct wrap_call *wc = ws->calls;
        ws->calls = wc->next;
        free(wc);
    }
    free(ws);
}

static const struct moat_event_source_ops wrap_ops = {.pull = wrap_pull,
                                                      .free = wrap_free};

/* ---- fixture ---- */

struct fixture {
    char dir[64];
    struct event_base *base;
    struct moat_metrics *pmetrics, *cmetrics;
    /* A restarted consumer's previous registry (it still holds the freed
     * consumer's collector, so it is not rendered again). */
    struct moat_metrics *cmetrics_prev;
    struct moat_db *pdb, *cdb;
    bool kv;             /* the consumer's database is LMDB */
    struct moat_kv *ckv; /* then this, not cdb */
    struct kv_view kview;
    struct moat_outbox *o;
    struct moat_http_server *phttp, *chttp;
    uint16_t pport, cport;
    struct moat_http_client *client;
    struct moat_consumer *c;
    struct view view;
};

static const struct moat_migration producer_migrations[] = {
    {1, "create the event outbox", MOAT_OUTBOX_SCHEMA, NULL},
};

static struct moat_event_source *feed_source(struct fixture *f)
{
    char *url = moat_xasprintf("http://127.0.0.1:%u", f->pport);
    struct moat_event_source *src =
        moat_feed_source_new("catalog", url, f->client, NULL);
    free(url);
    assert_non_null(src);
    return src;
}

static struct moat_event_source *wrap(struct fixture *f,
                                      struct moat_event_source *inner,
                                      bool duplicate, int fail_first)
{
    struct wrap_source *ws = moat_xcalloc(1, sizeof(*ws));
    ws->base = f->base;
    ws->src.ops = &wrap_ops;
    snprintf(ws->src.name, sizeof(ws->src.name), "%s", inner->name);
    ws->inner = inner;
    ws->duplicate = duplicate;
    ws->fail_first = fail_first;
    return &ws->src;
}

/* A consumer of "catalog" through src, with admin routes, started. */
static void consumer_up(struct fixture *f, struct moat_event_source *src)
{
    static const char *const types[] = {"ItemSet", NULL};
    if (f->kv) {
        assert_int_equal(
            moat_consumer_new_kv(&f->c, f->base, f->ckv, f->cmetrics), MOAT_OK);
        struct moat_subscription sub = {.source = src,
                                        .types = types,
                                        .kv_handler = apply_item_kv,
                                        .arg = &f->kview};
        assert_int_equal(moat_consumer_subscribe(f->c, &sub), MOAT_OK);
        struct moat_kv_view_ops ops = {.scratch_open = kv_scratch_open,
                                       .scratch_close = kv_scratch_close,
                                       .compare = kv_view_compare,
                                       .reset = kv_view_reset,
                                       .arg = &f->kview};
        assert_int_equal(
            moat_consumer_register_admin_kv(f->c, f->chttp, f->dir, &ops),
            MOAT_OK);
        moat_consumer_start(f->c);
        return;
    }
    assert_int_equal(moat_consumer_new(&f->c, f->base, f->cdb, f->cmetrics),
                     MOAT_OK);
    struct moat_subscription sub = {
        .source = src, .types = types, .handler = apply_item, .arg = &f->view};
    assert_int_equal(moat_consumer_subscribe(f->c, &sub), MOAT_OK);
    struct moat_view_ops ops = {.migrations = view_migrations,
                                .nmigrations = MOAT_ARRAY_LEN(view_migrations),
                                .reset = view_reset,
                                .compare = view_compare,
                                .arg = &f->view};
    assert_int_equal(moat_consumer_register_admin(f->c, f->chttp, f->dir, &ops),
                     MOAT_OK);
    moat_consumer_start(f->c);
}

static void new_admin_server(struct fixture *f)
{
    struct moat_http_limits lim = {0};
    f->chttp = moat_http_server_new(f->base, &lim, f->cmetrics);
    moat_http_set_access_log(f->chttp, false);
    assert_int_equal(moat_http_listen(f->chttp, "127.0.0.1", 0, &f->cport),
                     MOAT_OK);
}

static int setup_with(void **state, bool kv)
{
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    f->kv = kv;
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-consumer-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->base = event_base_new();
    f->pmetrics = moat_metrics_new();
    f->cmetrics = moat_metrics_new();
    f->view.broken = true;

    char *path = moat_xasprintf("%s/producer.db", f->dir);
    assert_int_equal(moat_db_open(&f->pdb, path, NULL, f->pmetrics), MOAT_OK);
    free(path);
    assert_int_equal(moat_db_migrate(f->pdb, producer_migrations, 1), MOAT_OK);
    assert_int_equal(
        moat_outbox_new(&f->o, f->base, f->pdb, "catalog", NULL, f->pmetrics),
        MOAT_OK);
    struct moat_http_limits lim = {0};
    f->phttp = moat_http_server_new(f->base, &lim, f->pmetrics);
    moat_http_set_access_log(f->phttp, false);
    assert_int_equal(moat_feed_register(f->o, f->phttp), MOAT_OK);
    assert_int_equal(moat_http_listen(f->phttp, "127.0.0.1", 0, &f->pport),
                     MOAT_OK);

    if (kv) {
        path = moat_xasprintf("%s/consumer.lmdb", f->dir);
        assert_int_equal(moat_kv_open(&f->ckv, path, 0, f->cmetrics), MOAT_OK);
        free(path);
        assert_int_equal(kv_view_open(&f->kview, f->ckv, &f->view), MOAT_OK);
        /* The consumer's own sub-databases exist before any test counts
         * commits (their creation commits). */
        static const char *const own[] = {"consumer", "dead_letters",
                                          "dead_letters_subject"};
        struct moat_kv_db *unused;
        for (size_t i = 0; i < MOAT_ARRAY_LEN(own); i++)
            assert_int_equal(moat_kv_db(f->ckv, own[i], &unused), MOAT_OK);
    } else {
        path = moat_xasprintf("%s/consumer.db", f->dir);
        assert_int_equal(moat_db_open(&f->cdb, path, NULL, f->cmetrics),
                         MOAT_OK);
        free(path);
        assert_int_equal(moat_db_migrate(f->cdb, view_migrations,
                                         MOAT_ARRAY_LEN(view_migrations)),
                         MOAT_OK);
    }
    new_admin_server(f);
    assert_int_equal(moat_http_client_new(&f->client, f->base, NULL), MOAT_OK);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, false);
}

static int setup_kv(void **state)
{
    return setup_with(state, true);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    /* As a service stops: no new requests reach the feed once the
     * outbox is gone; requests still arriving get a 503. */
    moat_http_drain(f->phttp, NULL, NULL);
    moat_http_drain(f->chttp, NULL, NULL);
    moat_consumer_free(f->c);
    moat_outbox_free(f->o);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    moat_http_client_free(f->client);
    moat_http_server_free(f->chttp);
    moat_http_server_free(f->phttp);
    moat_db_close(f->cdb);
    moat_kv_close(f->ckv);
    moat_db_close(f->pdb);
    moat_metrics_free(f->cmetrics);
    moat_metrics_free(f->cmetrics_prev);
    moat_metrics_free(f->pmetrics);
    moat_feed_set_epoch(NULL, 0); /* a test may have set one */
    event_base_free(f->base);
    char *cmd = moat_xasprintf("rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

typedef bool (*cond_fn)(struct fixture *f, void *arg);

static void run_until(struct fixture *f, cond_fn cond, void *arg, int ms)
{
    struct event *tick = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 5000};
    event_add(tick, &tv);
    uint64_t deadline = moat_mono_ms() + (uint64_t)ms;
    bool ok;
    while (!(ok = cond(f, arg)) && moat_mono_ms() < deadline)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(tick);
    assert_true(ok);
}

static void run_for(struct fixture *f, int ms)
{
    uint64_t until = moat_mono_ms() + (uint64_t)ms;
    struct event *tick = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 5000};
    event_add(tick, &tv);
    while (moat_mono_ms() < until)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(tick);
}

static int64_t cursor(struct fixture *f)
{
    if (f->kv) {
        struct moat_kv_txn *t;
        struct moat_kv_db *db;
        json_t *j = NULL;
        assert_int_equal(moat_kv_db(f->ckv, "consumer", &db), MOAT_OK);
        assert_int_equal(moat_kv_begin_read(f->ckv, &t), MOAT_OK);
        int rc = moat_kv_get_json(t, db, "catalog", 7, &j);
        moat_kv_abort(t);
        if (rc == MOAT_ENOTFOUND)
            return 0;
        assert_int_equal(rc, MOAT_OK);
        int64_t v = json_integer_value(json_object_get(j, "after_seq"));
        json_decref(j);
        return v;
    }
    struct moat_stmt *st = moat_db_prepare(
        f->cdb, "test_cursor",
        "SELECT after_seq FROM moat_cursors WHERE source = 'catalog'");
    int64_t v = 0;
    if (moat_stmt_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(moat_stmt_raw(st), 0);
    moat_stmt_reset(st);
    return v;
}

static bool cursor_at(struct fixture *f, void *arg)
{
    return cursor(f) >= *(int64_t *)arg;
}

static void wait_cursor(struct fixture *f, int64_t seq)
{
    run_until(f, cursor_at, &seq, DEADLINE_MS);
    assert_int_equal(cursor(f), seq);
}

/* One event in its own transaction; returns its seq. */
static int64_t produce(struct fixture *f, const char *type, const char *subject,
                       const char *value, int version)
{
    json_t *data = json_pack("{s:s}", version == 1 ? "val" : "value", value);
    int64_t seq = 0;
    assert_int_equal(moat_db_begin(f->pdb), MOAT_OK);
    assert_int_equal(
        moat_outbox_append(f->o, type, subject, version, data, &seq), MOAT_OK);
    assert_int_equal(moat_db_commit(f->pdb), MOAT_OK);
    moat_outbox_committed(f->o);
    json_decref(data);
    return seq;
}

static int dump_one(const void *key, size_t klen, const void *val, size_t vlen,
                    void *arg)
{
    char *k = moat_xasprintf("%.*s", (int)klen, (const char *)key);
    json_object_set_new(arg, k, json_stringn(val, vlen));
    free(k);
    return MOAT_KV_NEXT;
}

/* {subject: "value/changes"} of the consumer's view, either engine. */
static json_t *items_of(struct fixture *f)
{
    if (!f->kv)
        return dump_items(f->cdb);
    json_t *out = json_object();
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin_read(f->ckv, &t), MOAT_OK);
    assert_int_equal(moat_kv_iterate(t, f->kview.items, NULL, 0, dump_one, out),
                     MOAT_OK);
    moat_kv_abort(t);
    return out;
}

static int64_t item(struct fixture *f, const char *subject, const char *value,
                    int64_t changes)
{
    json_t *items = items_of(f);
    const char *got = json_string_value(json_object_get(items, subject));
    char want[128];
    snprintf(want, sizeof(want), "%s/%lld", value, (long long)changes);
    if (!value ? got != NULL : (!got || strcmp(got, want) != 0))
        fail_msg("item %s is %s, want %s", subject, got ? got : "(none)",
                 value ? want : "(none)");
    json_decref(items);
    return changes;
}

struct resp {
    bool done;
    int err, status;
    json_t *body;
};

static void on_resp(const struct moat_http_response *r, void *arg)
{
    struct resp *x = arg;
    x->done = true;
    x->err = r->err;
    x->status = r->status;
    x->body = json_loads(r->body, 0, NULL);
}

static bool resp_done(struct fixture *f, void *arg)
{
    return ((struct resp *)arg)->done;
}

static json_t *admin(struct fixture *f, const char *method, const char *target,
                     int want_status)
{
    struct resp r = {0};
    char *url = moat_xasprintf("http://127.0.0.1:%u%s", f->cport, target);
    struct moat_http_call call = {
        .method = method, .url = url, .timeout_ms = DEADLINE_MS};
    assert_int_equal(moat_http_client_send(f->client, &call, on_resp, &r),
                     MOAT_OK);
    free(url);
    run_until(f, resp_done, &r, DEADLINE_MS);
    assert_int_equal(r.err, MOAT_OK);
    if (r.status != want_status) {
        char *text = json_dumps(r.body, 0);
        fail_msg("%s %s: status %d, want %d: %s", method, target, r.status,
                 want_status, text ? text : "");
    }
    return r.body;
}

static int64_t jint(json_t *o, const char *path)
{
    json_t *v = json_object_get(o, path);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static json_t *status_of(json_t *status)
{
    return json_array_get(json_object_get(status, "sources"), 0);
}

static void assert_metric(struct fixture *f, const char *line)
{
    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(f->cmetrics, &out);
    if (!strstr(moat_buf_str(&out), line))
        fail_msg("metric line '%s' not found in:\n%s", line,
                 moat_buf_str(&out));
    moat_buf_release(&out);
}

/* ---- tests ---- */

static void test_exactly_once_under_duplicates(void **state)
{
    struct fixture *f = *state;
    produce(f, "ItemSet", "s1", "a", 2);
    produce(f, "ItemSet", "s1", "b", 2);
    produce(f, "Ignored", "s1", "zzz", 2);
    produce(f, "ItemSet", "s2", "c", 1); /* an old data shape */
    produce(f, "ItemSet", "s1", "d", 2);
    consumer_up(f, wrap(f, feed_source(f), true, 0));
    wait_cursor(f, 5);
    /* Every pull re-delivered the last events, each twice: no matter. */
    item(f, "s1", "d", 3);
    item(f, "s2", "c", 1);
    assert_metric(f, "moat_consumer_applied_total{source=\"catalog\"} 4\n");

    /* Live events arrive through the long poll. */
    produce(f, "ItemSet", "s2", "e", 2);
    wait_cursor(f, 6);
    item(f, "s2", "e", 2);
    run_for(f, 50);
    item(f, "s2", "e", 2);
    assert_metric(f, "moat_consumer_lag_events{source=\"catalog\"} 0\n");
    assert_metric(f, "moat_consumer_lag_seconds{source=\"catalog\"} 0\n");
}

static void test_cursor_survives_restart(void **state)
{
    struct fixture *f = *state;
    produce(f, "ItemSet", "s1", "a", 2);
    produce(f, "ItemSet", "s1", "b", 2);
    consumer_up(f, feed_source(f));
    wait_cursor(f, 2);
    moat_consumer_free(f->c);
    f->c = NULL;
    moat_http_server_free(f->chttp);
    new_admin_server(f);

    produce(f, "ItemSet", "s1", "c", 2);
    consumer_up(f, feed_source(f));
    wait_cursor(f, 3);
    item(f, "s1", "c", 3); /* a and b were not applied again */
    json_t *st = admin(f, "GET", "/v1/admin/consumer", 200);
    assert_int_equal(jint(status_of(st), "cursor"), 3);
    assert_int_equal(jint(status_of(st), "head"), 3);
    assert_int_equal(jint(status_of(st), "lag_events"), 0);
    json_decref(st);
}

static void test_source_down_backs_off(void **state)
{
    struct fixture *f = *state;
    produce(f, "ItemSet", "s1", "a", 2);
    /* Fails 3 pulls: 100 + 200 + 400 ms of backoff, then works. */
    consumer_up(f, wrap(f, feed_source(f), false, 3));
    run_for(f, 150);
    json_t *st = admin(f, "GET", "/v1/admin/consumer", 200);
    assert_string_equal(
        json_string_value(json_object_get(status_of(st), "state")), "backoff");
    assert_non_null(json_string_value(json_object_get(status_of(st), "error")));
    json_decref(st);
    /* The same in the process: unreachable, lagging since the outage. */
    struct moat_consumer_source_status ss[2];
    assert_int_equal(moat_consumer_status(f->c, ss, 2), 1);
    assert_string_equal(ss[0].state, "backoff");
    assert_false(ss[0].reachable);
    assert_true(ss[0].down_since_ms > 0);
    assert_true(ss[0].lag_seconds >= 0.1);
    wait_cursor(f, 1);
    item(f, "s1", "a", 1);
    st = admin(f, "GET", "/v1/admin/consumer", 200);
    assert_true(json_is_null(json_object_get(status_of(st), "error")));
    json_decref(st);
    assert_int_equal(moat_consumer_status(f->c, ss, 0), 1);
    assert_int_equal(moat_consumer_status(f->c, ss, 2), 1);
    assert_true(ss[0].reachable);
    assert_int_equal(ss[0].down_since_ms, 0);
    assert_int_equal(ss[0].cursor, 1);
    assert_int_equal(ss[0].lag_events, 0);
    assert_true(ss[0].lag_seconds == 0.0);
}

static void assert_order(struct fixture *f, const char *subject,
                         const char *want);

static void test_poison_and_redrive(void **state)
{
    struct fixture *f = *state;
    produce(f, "ItemSet", "P", "poison-1", 2); /* 1 */
    produce(f, "ItemSet", "P", "p2", 2);       /* 2 */
    produce(f, "ItemSet", "Q", "q1", 2);       /* 3 */
    produce(f, "ItemSet", "P", "p3", 2);       /* 4 */
    produce(f, "ItemSet", "Q", "q2", 2);       /* 5 */
    uint64_t t0 = moat_mono_ms();
    consumer_up(f, feed_source(f));
    wait_cursor(f, 5);
    /* Three attempts with 50 and 200 ms between them: the retries waited
     * (a margin for millisecond truncation of the clock). */
    assert_int_equal(f->view.poison_runs, MOAT_CONSUMER_MAX_ATTEMPTS);
    assert_true(moat_mono_ms() - t0 >= 230);
    item(f, "Q", "q2", 2); /* the other aggregate flowed on */
    item(f, "P", NULL, 0); /* nothing of P overtook the poison */

    json_t *dl = admin(f, "GET", "/v1/admin/dead-letters", 200);
    assert_int_equal(jint(dl, "total"), 3);
    json_t *list = json_object_get(dl, "dead_letters");
    json_t *first = json_array_get(list, 0);
    assert_int_equal(jint(first, "seq"), 1);
    assert_string_equal(json_string_value(json_object_get(first, "state")),
                        "failed");
    assert_string_equal(json_string_value(json_object_get(first, "error")),
                        "poisoned value");
    assert_int_equal(jint(first, "attempts"), 3);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(first, "event"), "type")),
                        "ItemSet");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(list, 1), "state")),
        "blocked");
    assert_int_equal(jint(json_array_get(list, 2), "seq"), 4);
    json_decref(dl);
    assert_metric(f, "moat_consumer_dead_letters{source=\"catalog\"} 3\n");
    assert_metric(f, "moat_consumer_failures_total{source=\"catalog\"} 3\n");

    /* Later events of P park behind it as they come. */
    produce(f, "ItemSet", "P", "p4", 2); /* 6 */
    wait_cursor(f, 6);
    item(f, "P", NULL, 0);
    json_t *st = admin(f, "GET", "/v1/admin/consumer", 200);
    json_t *dead = json_object_get(status_of(st), "dead_letters");
    assert_int_equal(jint(dead, "failed"), 1);
    assert_int_equal(jint(dead, "blocked"), 3);
    json_decref(st);

    /* Still broken: the redrive stops at the first one, keeps the rest. */
    json_t *r =
        admin(f, "POST",
              "/v1/admin/dead-letters/redrive?source=catalog&subject=P", 200);
    assert_int_equal(jint(r, "applied"), 0);
    assert_int_equal(json_array_size(json_object_get(r, "failed")), 1);
    assert_int_equal(jint(r, "remaining"), 4);
    json_decref(r);
    dl = admin(f, "GET", "/v1/admin/dead-letters?subject=P&limit=1", 200);
    assert_int_equal(
        jint(json_array_get(json_object_get(dl, "dead_letters"), 0),
             "attempts"),
        4);
    json_decref(dl);

    /* Fixed: all of P, in order, and P flows normally afterwards. */
    f->view.broken = false;
    r = admin(f, "POST", "/v1/admin/dead-letters/redrive", 200);
    assert_int_equal(jint(r, "applied"), 4);
    assert_int_equal(json_array_size(json_object_get(r, "failed")), 0);
    assert_int_equal(jint(r, "remaining"), 0);
    json_decref(r);
    item(f, "P", "p4", 4);
    assert_order(f, "P", "poison-1,p2,p3,p4");
    assert_metric(f, "moat_consumer_dead_letters{source=\"catalog\"} 0\n");

    produce(f, "ItemSet", "P", "p5", 2); /* 7 */
    wait_cursor(f, 7);
    item(f, "P", "p5", 5);

    /* Bad admin requests. */
    json_decref(
        admin(f, "POST", "/v1/admin/dead-letters/redrive?source=x", 404));
    json_decref(admin(f, "GET", "/v1/admin/dead-letters?limit=0", 400));
    json_decref(admin(f, "POST", "/v1/admin/replay?verify=2", 400));
}

/* COMMITs on the consumer's database so far (its statement histogram). */
static int64_t commits(struct fixture *f)
{
    const char *key =
        f->kv ? "moat_kv_op_duration_seconds_count{op=\"commit\"} "
              : "moat_db_statement_duration_seconds_count{statement="
                "\"db_commit\"} ";
    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(f->cmetrics, &out);
    const char *line = strstr(moat_buf_str(&out), key);
    int64_t n = line ? strtoll(line + strlen(key), NULL, 10) : 0;
    moat_buf_release(&out);
    return n;
}

static bool poison_ran(struct fixture *f, void *arg)
{
    return f->view.poison_runs >= *(int *)arg;
}

/* The values applied to subject, in order, comma-separated. */
struct order_walk {
    const char *subject;
    struct moat_buf out;
};

static int order_one(const void *key, size_t klen, const void *val, size_t vlen,
                     void *arg)
{
    struct order_walk *w = arg;
    const char *subj = val;
    size_t slen = strnlen(subj, vlen);
    if (slen == strlen(w->subject) && memcmp(subj, w->subject, slen) == 0)
        moat_buf_printf(&w->out, "%s%.*s", w->out.len ? "," : "",
                        (int)(vlen - slen - 1), subj + slen + 1);
    return MOAT_KV_NEXT;
}

static char *applied_order(struct fixture *f, const char *subject)
{
    if (f->kv) {
        struct order_walk w = {.subject = subject, .out = MOAT_BUF_INIT};
        struct moat_kv_txn *t;
        assert_int_equal(moat_kv_begin_read(f->ckv, &t), MOAT_OK);
        assert_int_equal(
            moat_kv_iterate(t, f->kview.applied, NULL, 0, order_one, &w),
            MOAT_OK);
        moat_kv_abort(t);
        char *v = moat_xstrdup(w.out.len ? moat_buf_str(&w.out) : "");
        moat_buf_release(&w.out);
        return v;
    }
    struct moat_stmt *s = moat_db_prepare(
        f->cdb, "test_applied_order",
        "SELECT coalesce(group_concat(value, ','), '') FROM (SELECT value "
        "FROM applied WHERE subject = ?1 ORDER BY n)");
    sqlite3_bind_text(moat_stmt_raw(s), 1, subject, -1, SQLITE_STATIC);
    assert_int_equal(moat_stmt_step(s), SQLITE_ROW);
    char *v =
        moat_xstrdup((const char *)sqlite3_column_text(moat_stmt_raw(s), 0));
    moat_stmt_reset(s);
    return v;
}

static void assert_order(struct fixture *f, const char *subject,
                         const char *want)
{
    char *got = applied_order(f, subject);
    if (strcmp(got, want) != 0)
        fail_msg("subject %s applied %s, want %s", subject, got, want);
    free(got);
}

/*
 * One pulled batch with a poison event in the middle: the events before
 * it commit (cursor right before it) while it waits for its retries; then
 * it is parked, the later events of its subject park behind it - also
 * those of the same batch, in the same transaction - and everything else
 * after it applies. One COMMIT per stretch, not one per event.
 */
static void test_poison_mid_batch(void **state)
{
    struct fixture *f = *state;
    produce(f, "ItemSet", "A", "a1", 2);       /* 1 */
    produce(f, "ItemSet", "B", "b1", 2);       /* 2 */
    produce(f, "ItemSet", "P", "poison-1", 2); /* 3 */
    produce(f, "ItemSet", "A", "a2", 2);       /* 4 */
    produce(f, "ItemSet", "P", "p2", 2);       /* 5 */
    produce(f, "ItemSet", "Q", "q1", 2);       /* 6 */
    produce(f, "Ignored", "A", "zzz", 2);      /* 7 */
    produce(f, "ItemSet", "P", "p3", 2);       /* 8 */
    produce(f, "ItemSet", "B", "b2", 2);       /* 9 */
    int64_t commits0 = commits(f);
    consumer_up(f, feed_source(f));

    /* First failure: 1 and 2 committed with the cursor at 2, nothing of
     * 3 and after, nothing parked yet. */
    int runs = 1;
    run_until(f, poison_ran, &runs, DEADLINE_MS);
    assert_int_equal(cursor(f), 2);
    item(f, "A", "a1", 1);
    item(f, "B", "b1", 1);
    item(f, "P", NULL, 0);
    item(f, "Q", NULL, 0);
    json_t *dl = admin(f, "GET", "/v1/admin/dead-letters", 200);
    assert_int_equal(jint(dl, "total"), 0);
    json_decref(dl);
    json_t *st = admin(f, "GET", "/v1/admin/consumer", 200);
    assert_string_equal(
        json_string_value(json_object_get(status_of(st), "state")), "retrying");
    json_decref(st);
    assert_int_equal(commits(f) - commits0, 1);

    wait_cursor(f, 9);
    assert_int_equal(f->view.poison_runs, MOAT_CONSUMER_MAX_ATTEMPTS);
    item(f, "A", "a2", 2);
    item(f, "B", "b2", 2);
    item(f, "Q", "q1", 1);
    item(f, "P", NULL, 0);
    assert_order(f, "A", "a1,a2");
    assert_order(f, "B", "b1,b2");
    assert_order(f, "P", "");
    /* The retries' transactions wrote nothing; the last one parked 3, 5
     * and 8 and applied 4, 6 and 9 (7 moved the cursor only). */
    assert_int_equal(commits(f) - commits0, 2);

    dl = admin(f, "GET", "/v1/admin/dead-letters", 200);
    assert_int_equal(jint(dl, "total"), 3);
    json_t *list = json_object_get(dl, "dead_letters");
    static const struct {
        int64_t seq;
        const char *state, *error;
        int64_t attempts;
    } want[] = {
        {3, "failed", "poisoned value", MOAT_CONSUMER_MAX_ATTEMPTS},
        {5, "blocked", "blocked behind parked event seq 3", 0},
        {8, "blocked", "blocked behind parked event seq 3", 0},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++) {
        json_t *d = json_array_get(list, i);
        assert_int_equal(jint(d, "seq"), want[i].seq);
        assert_string_equal(json_string_value(json_object_get(d, "subject")),
                            "P");
        assert_string_equal(json_string_value(json_object_get(d, "state")),
                            want[i].state);
        assert_string_equal(json_string_value(json_object_get(d, "error")),
                            want[i].error);
        assert_int_equal(jint(d, "attempts"), want[i].attempts);
    }
    json_decref(dl);
    assert_metric(f, "moat_consumer_applied_total{source=\"catalog\"} 5\n");
    assert_metric(f, "moat_consumer_failures_total{source=\"catalog\"} 3\n");
    assert_metric(f, "moat_consumer_dead_letters{source=\"catalog\"} 3\n");
    st = admin(f, "GET", "/v1/admin/consumer", 200);
    assert_true(json_is_null(json_object_get(status_of(st), "error")));
    json_decref(st);

    /* Fixed and redriven: P in order, then live again. */
    f->view.broken = false;
    json_t *r = admin(f, "POST", "/v1/admin/dead-letters/redrive", 200);
    assert_int_equal(jint(r, "applied"), 3);
    assert_int_equal(jint(r, "remaining"), 0);
    json_decref(r);
    assert_order(f, "P", "poison-1,p2,p3");
    produce(f, "ItemSet", "P", "p4", 2); /* 10 */
    wait_cursor(f, 10);
    item(f, "P", "p4", 4);
    item(f, "A", "a2", 2);
}

static void test_replay_rebuilds_the_same_view(void **state)
{
    struct fixture *f = *state;
    f->view.broken = false;
    for (int i = 0; i < 30; i++) {
        char subject[8], value[8];
        snprintf(subject, sizeof(subject), "s%d", i % 7);
        snprintf(value, sizeof(value), "v%d", i);
        produce(f, i % 5 == 4 ? "Other" : "ItemSet", subject, value,
                i % 3 == 0 ? 1 : 2);
    }
    consumer_up(f, feed_source(f));
    wait_cursor(f, 30);
    json_t *before = items_of(f);

    json_t *r = admin(f, "POST", "/v1/admin/replay", 202);
    assert_string_equal(json_string_value(json_object_get(r, "replay")),
                        "started");
    json_decref(r);
    assert_true(cursor(f) < 30); /* reset, then rebuilt */
    wait_cursor(f, 30);
    json_t *after = items_of(f);
    assert_true(json_equal(before, after));
    json_decref(before);
    json_decref(after);

    /* And the rebuilt consumer is live again. */
    produce(f, "ItemSet", "s0", "new", 2);
    wait_cursor(f, 31);
}

static void on_produce_tick(evutil_socket_t fd, short what, void *arg)
{
    struct fixture *f = arg;
    produce(f, "ItemSet", "live", "x", 2);
}

/* Change the live view behind the consumer's back. */
static void tamper(struct fixture *f, const char *subject)
{
    if (!f->kv) {
        assert_int_equal(moat_db_exec(f->cdb, "test_tamper",
                                      "UPDATE items SET value = 'tampered' "
                                      "WHERE subject = 's3'"),
                         MOAT_OK);
        return;
    }
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->ckv, &t), MOAT_OK);
    assert_int_equal(
        moat_kv_puts(t, f->kview.items, subject, "tampered/1", 10, 0), MOAT_OK);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
}

static void test_verify(void **state)
{
    struct fixture *f = *state;
    f->view.broken = false;
    for (int i = 0; i < 200; i++) {
        char subject[8];
        snprintf(subject, sizeof(subject), "s%d", i % 11);
        produce(f, "ItemSet", subject, "v", 2);
    }
    consumer_up(f, feed_source(f));
    wait_cursor(f, 200);

    /* Events keep coming while the verification runs. */
    struct event *tick = event_new(f->base, -1, EV_PERSIST, on_produce_tick, f);
    struct timeval tv = {0, 2000};
    event_add(tick, &tv);
    json_t *r = admin(f, "POST", "/v1/admin/replay?verify=1", 200);
    event_free(tick);
    if (!json_is_true(json_object_get(r, "identical"))) {
        char *text = json_dumps(r, 0);
        fail_msg("not identical: %s", text);
    }
    assert_true(jint(r, "events") >= 200);
    assert_int_equal(json_array_size(json_object_get(r, "differences")), 0);
    json_decref(r);
    char *scratch = moat_xasprintf(
        "%s/%s", f->dir, f->kv ? "replay-verify" : "replay-verify.db");
    assert_int_not_equal(access(scratch, F_OK), 0);

    /* A view that drifted from its events is caught. */
    tamper(f, "s3");
    r = admin(f, "POST", "/v1/admin/replay?verify=1", 200);
    assert_true(json_is_false(json_object_get(r, "identical")));
    json_t *diffs = json_object_get(r, "differences");
    assert_int_equal(json_array_size(diffs), 1);
    const char *diff = json_string_value(json_array_get(diffs, 0));
    assert_non_null(strstr(diff, "item s3: "));
    assert_non_null(strstr(diff, "tampered/"));
    json_decref(r);
    assert_int_not_equal(access(scratch, F_OK), 0);

    /* So is a dead letter that the rebuild would apply. */
    f->view.broken = true;
    wait_cursor(f, produce(f, "ItemSet", "s3", "poison-late", 2));
    f->view.broken = false;
    r = admin(f, "POST", "/v1/admin/replay?verify=1", 200);
    assert_true(json_is_false(json_object_get(r, "identical")));
    char *text = json_dumps(json_object_get(r, "differences"), 0);
    assert_non_null(strstr(text, "a dead letter live but applied by the "
                                 "rebuild"));
    free(text);
    json_decref(r);
    free(scratch);
}

/* ---- streaming subscription (GET /v1/events?stream=1) ---- */

/* Whether the rendering of m has the text want. */
static bool metrics_have(struct moat_metrics *m, const char *want)
{
    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(m, &out);
    bool found = strstr(moat_buf_str(&out), want) != NULL;
    moat_buf_release(&out);
    return found;
}

static bool producer_metric(struct fixture *f, void *arg)
{
    return metrics_have(f->pmetrics, arg);
}

/* How often ItemSet events took effect, and for how many subjects. */
static void applied_counts(struct fixture *f, int64_t *total, int64_t *subjects)
{
    struct moat_stmt *st = moat_db_prepare(
        f->cdb, "test_applied",
        "SELECT count(*), count(DISTINCT subject) FROM applied");
    assert_int_equal(moat_stmt_step(st), SQLITE_ROW);
    *total = sqlite3_column_int64(moat_stmt_raw(st), 0);
    *subjects = sqlite3_column_int64(moat_stmt_raw(st), 1);
    moat_stmt_reset(st);
}

/* The producer's HTTP server goes away and comes back on the same port,
 * as when its process restarts. */
static void producer_restart(struct fixture *f, int down_ms)
{
    moat_http_drain(f->phttp, NULL, NULL);
    run_for(f, 20);
    moat_http_server_free(f->phttp);
    run_for(f, down_ms);
    struct moat_http_limits lim = {0};
    f->phttp = moat_http_server_new(f->base, &lim, f->pmetrics);
    moat_http_set_access_log(f->phttp, false);
    assert_int_equal(moat_feed_register(f->o, f->phttp), MOAT_OK);
    uint16_t port = 0;
    assert_int_equal(moat_http_listen(f->phttp, "127.0.0.1", f->pport, &port),
                     MOAT_OK);
    assert_int_equal(port, f->pport);
}

static void test_stream_resumes_after_producer_restart(void **state)
{
    struct fixture *f = *state;
    /* A backlog of 6 MiB comes down one stream, in pulls of 100. */
    char *big = moat_xmalloc(20001);
    memset(big, 'x', 20000);
    big[20000] = '\0';
    int64_t n = 0;
    for (int i = 0; i < 300; i++) {
        char subject[16];
        snprintf(subject, sizeof(subject), "b%d", i);
        n = produce(f, "ItemSet", subject, big, 2);
    }
    free(big);
    consumer_up(f, feed_source(f));
    run_until(f, producer_metric, (char *)"moat_feed_streams 1\n", DEADLINE_MS);
    wait_cursor(f, n);

    /* Live events come down the open stream. */
    produce(f, "ItemSet", "s1", "a", 2);
    wait_cursor(f, n + 1);
    item(f, "s1", "a", 1);

    /* The producer restarts; events committed meanwhile arrive after. */
    producer_restart(f, 300);
    produce(f, "ItemSet", "s1", "b", 2);
    produce(f, "ItemSet", "s2", "c", 2);
    wait_cursor(f, n + 3);
    run_until(f, producer_metric, (char *)"moat_feed_streams 1\n", DEADLINE_MS);
    produce(f, "ItemSet", "s2", "d", 2);
    wait_cursor(f, n + 4);
    run_for(f, 50);

    /* No event took effect twice. */
    item(f, "s1", "b", 2);
    item(f, "s2", "d", 2);
    int64_t total, subjects;
    applied_counts(f, &total, &subjects);
    assert_int_equal(total, n + 4);
    assert_int_equal(subjects, 302);
}

static bool consumer_metric(struct fixture *f, void *arg)
{
    return metrics_have(f->cmetrics, arg);
}

/* The consumer's record of the source's epoch (feed-epochs/catalog.json). */
static json_t *epoch_record(struct fixture *f)
{
    char *path = moat_xasprintf("%s/feed-epochs/catalog.json", f->dir);
    json_t *j = json_load_file(path, 0, NULL);
    free(path);
    assert_non_null(j);
    return j;
}

/*
 * The producer is restored from a backup taken at base, in place: the
 * events after base are gone, its sequence numbers restart after it, and
 * its feed has a new epoch. Open streams carry that in their heartbeats
 * (a restarted producer's streams in their first line, the same check).
 */
static void producer_restore(struct fixture *f, int64_t base, const char *epoch)
{
    char *sql = moat_xasprintf(
        "DELETE FROM moat_outbox WHERE seq > %lld; UPDATE sqlite_sequence "
        "SET seq = %lld WHERE name = 'moat_outbox'",
        (long long)base, (long long)base);
    assert_int_equal(moat_db_exec(f->pdb, "test_restore", sql), MOAT_OK);
    free(sql);
    moat_feed_set_epoch(epoch, base);
}

/* A feed source that keeps its epochs in f->dir/feed-epochs. */
static struct moat_event_source *epoch_source(struct fixture *f)
{
    struct moat_event_source *src = feed_source(f);
    char *dir = moat_xasprintf("%s/feed-epochs", f->dir);
    moat_feed_source_set_epoch_dir(src, dir);
    free(dir);
    return src;
}

/*
 * A consumer streams from a producer that is restored to an earlier point
 * (seq 3, below its cursor 5): it moves back once, records it, and
 * applies the new events after 3, each once. The stream says so in a
 * heartbeat, or (consumer_restarts: it was down meanwhile) in the first
 * line of the stream it opens at its cursor.
 */
static void stream_restore(struct fixture *f, bool consumer_restarts)
{
    moat_feed_set_epoch("epoch-one", 0);
    struct moat_event_source *src = epoch_source(f);
    for (int i = 1; i <= 5; i++) {
        char subject[8], value[8];
        snprintf(subject, sizeof(subject), "s%d", i);
        snprintf(value, sizeof(value), "old%d", i);
        produce(f, "ItemSet", subject, value, 2);
    }
    consumer_up(f, src);
    wait_cursor(f, 5);
    run_until(f, producer_metric, (char *)"moat_feed_streams 1\n", DEADLINE_MS);
    json_t *rec = epoch_record(f);
    assert_string_equal(json_string_value(json_object_get(rec, "epoch")),
                        "epoch-one");
    json_decref(rec);

    if (consumer_restarts) {
        moat_consumer_free(f->c);
        f->c = NULL;
        moat_http_server_free(f->chttp);
        f->cmetrics_prev = f->cmetrics;
        f->cmetrics = moat_metrics_new();
        new_admin_server(f);
    }
    /* Restored to seq 3 while the consumer is at 5; seq 4 is a new event
     * before the consumer hears of it. */
    producer_restore(f, 3, "epoch-two");
    assert_int_equal(produce(f, "ItemSet", "s4", "new4", 2), 4);
    if (consumer_restarts)
        consumer_up(f, epoch_source(f));
    run_until(f, consumer_metric,
              (char *)"moat_consumer_rewinds_total{source=\"catalog\"} 1\n",
              DEADLINE_MS);
    wait_cursor(f, 4);
    item(f, "s4", "new4", 2);

    /* What follows comes at the new epoch. */
    assert_int_equal(produce(f, "ItemSet", "s5", "new5", 2), 5);
    assert_int_equal(produce(f, "ItemSet", "s6", "new6", 2), 6);
    wait_cursor(f, 6);
    run_for(f, 50);

    /* One rewind, recorded; the new epoch accepted; every event (5 old,
     * 3 new) took effect once. */
    assert_true(consumer_metric(
        f, (char *)"moat_consumer_rewinds_total{source=\"catalog\"} 1\n"));
    rec = epoch_record(f);
    assert_string_equal(json_string_value(json_object_get(rec, "epoch")),
                        "epoch-two");
    assert_int_equal(json_integer_value(json_object_get(rec, "base_seq")), 3);
    json_t *rewinds = json_object_get(rec, "rewinds");
    assert_int_equal(json_array_size(rewinds), 1);
    json_t *r = json_array_get(rewinds, 0);
    assert_string_equal(json_string_value(json_object_get(r, "old_epoch")),
                        "epoch-one");
    assert_string_equal(json_string_value(json_object_get(r, "new_epoch")),
                        "epoch-two");
    assert_int_equal(json_integer_value(json_object_get(r, "from_seq")), 5);
    assert_int_equal(json_integer_value(json_object_get(r, "to_seq")), 3);
    json_decref(rec);
    item(f, "s3", "old3", 1);
    item(f, "s5", "new5", 2);
    item(f, "s6", "new6", 1);
    int64_t total, subjects;
    applied_counts(f, &total, &subjects);
    assert_int_equal(total, 8);
    assert_int_equal(subjects, 6);
}

static void test_stream_rewinds_after_producer_restore(void **state)
{
    stream_restore(*state, false);
}

static void test_stream_rewinds_on_open_after_producer_restore(void **state)
{
    stream_restore(*state, true);
}

/* A raw loopback connection to the producer, sending one request. */
static int raw_request(struct fixture *f, const char *target)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons(f->pport),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char *req =
        moat_xasprintf("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target);
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    free(req);
    return fd;
}

struct raw_read {
    int fd;
    struct moat_buf got;
    const char *want;
};

/* Read what the producer sent so far; true once want is in it. */
static bool raw_has(struct fixture *f, void *arg)
{
    struct raw_read *r = arg;
    char buf[4096];
    ssize_t n;
    while ((n = recv(r->fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
        moat_buf_add(&r->got, buf, (size_t)n);
    return strstr(moat_buf_str(&r->got), r->want) != NULL;
}

static void test_stream_wire_format(void **state)
{
    struct fixture *f = *state;
    produce(f, "ItemSet", "s1", "a", 2);
    produce(f, "ItemSet", "s2", "b", 2);
    struct raw_read r = {.fd = raw_request(f, "/v1/events?after=1&stream=1"),
                         .got = MOAT_BUF_INIT};
    /* Chunked NDJSON: the events after the cursor, one per line. */
    r.want = "\"sequence\":\"2\"";
    run_until(f, raw_has, &r, DEADLINE_MS);
    const char *text = moat_buf_str(&r.got);
    assert_non_null(strstr(text, "HTTP/1.1 200"));
    assert_non_null(strstr(text, "Transfer-Encoding: chunked"));
    assert_non_null(strstr(text, "Content-Type: application/x-ndjson"));
    assert_null(strstr(text, "\"sequence\":\"1\""));
    /* The first line says where the producer is (a heartbeat, to readers
     * that know no more). */
    const char *hello = strstr(text, "{\"heartbeat\":true,\"hello\":true,"
                                     "\"head\":2}\n");
    assert_non_null(hello);
    assert_true(hello < strstr(text, "\"sequence\":\"2\""));
    /* A commit is written at once; silence brings a heartbeat. */
    produce(f, "ItemSet", "s3", "c", 2);
    r.want = "\"sequence\":\"3\"";
    run_until(f, raw_has, &r, DEADLINE_MS);
    r.want = "{\"heartbeat\":true,\"head\":3}\n";
    run_until(f, raw_has, &r, DEADLINE_MS);
    close(r.fd);
    moat_buf_release(&r.got);

    /* With a feed epoch, the first line and heartbeats carry it. */
    moat_feed_set_epoch("epoch-w", 1);
    r = (struct raw_read){.fd = raw_request(f, "/v1/events?after=3&stream=1"),
                          .got = MOAT_BUF_INIT,
                          .want = "{\"heartbeat\":true,\"hello\":true,"
                                  "\"head\":3,\"epoch\":\"epoch-w\","
                                  "\"epoch_base\":1}\n"};
    run_until(f, raw_has, &r, DEADLINE_MS);
    r.want = "{\"heartbeat\":true,\"head\":3,\"epoch\":\"epoch-w\","
             "\"epoch_base\":1}\n";
    run_until(f, raw_has, &r, DEADLINE_MS);
    close(r.fd);
    moat_buf_release(&r.got);

    /* A stream takes no limit or wait. */
    r = (struct raw_read){
        .fd = raw_request(f, "/v1/events?after=0&stream=1&limit=5"),
        .got = MOAT_BUF_INIT,
        .want = "HTTP/1.1 400"};
    run_until(f, raw_has, &r, DEADLINE_MS);
    close(r.fd);
    moat_buf_release(&r.got);
}

static void test_stream_slow_reader_is_dropped(void **state)
{
    struct fixture *f = *state;
    /* A reader that opens a stream and never reads a byte. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons(f->pport),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    const char *req = "GET /v1/events?after=0&stream=1 HTTP/1.1\r\n"
                      "Host: 127.0.0.1\r\n\r\n";
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    run_until(f, producer_metric, (char *)"moat_feed_streams 1\n", DEADLINE_MS);

    /* 8 MiB of events: far past what the producer queues for one reader
     * (1 MiB) and what the sockets hold. */
    char *big = moat_xmalloc(65537);
    memset(big, 'y', 65536);
    big[65536] = '\0';
    for (int i = 0; i < 128; i++)
        produce(f, "ItemSet", "s1", big, 2);
    free(big);
    /* Dropped after 5 s over the mark, not kept growing. */
    run_until(f, producer_metric, (char *)"moat_feed_stream_drops_total 1\n",
              10000);
    assert_true(producer_metric(f, (char *)"moat_feed_streams 0\n"));
    close(fd);

    /* A reader that keeps up gets everything. */
    consumer_up(f, feed_source(f));
    wait_cursor(f, 128);
}

int main(int argc, char **argv)
{
    /* One test alone: pass its name (a glob). */
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    moat_log_init("test", getenv("TEST_LOG") ? MOAT_LOG_DEBUG : MOAT_LOG_ERROR);
#define BOTH(fn)                                                               \
    cmocka_unit_test_setup_teardown(fn, setup, teardown),                      \
    {                                                                          \
#fn "_lmdb", fn, setup_kv, teardown, NULL                              \
    }
    const struct CMUnitTest tests[] = {
        BOTH(test_exactly_once_under_duplicates),
        BOTH(test_cursor_survives_restart),
        BOTH(test_source_down_backs_off),
        BOTH(test_poison_and_redrive),
        BOTH(test_poison_mid_batch),
        BOTH(test_replay_rebuilds_the_same_view),
        BOTH(test_verify),
        cmocka_unit_test_setup_teardown(
            test_stream_resumes_after_producer_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_stream_rewinds_after_producer_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_stream_rewinds_on_open_after_producer_restore, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_stream_slow_reader_is_dropped,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_wire_format, setup,
                                        teardown),
    };
#undef BOTH
    return cmocka_run_group_tests(tests, NULL, NULL);
}
