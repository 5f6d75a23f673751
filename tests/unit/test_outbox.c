/*
 * test_outbox.c - lib/outbox.c, lib/outbox_kv.c and lib/feed.c: appends
 * inside (and only inside) transactions, sequence order, retention, and the
 * feed served by a real moat_http_server on loopback, read with
 * moat_http_client and with moat_feed_source_new, all on one event loop in
 * this process. Every test runs twice: on the SQLite storage
 * (moat_outbox_new) and, as <name>_lmdb, on the LMDB one
 * (moat_outbox_new_kv); the fixture's tx_* helpers hide the difference.
 *
 * Run one test alone: tests/unit_test_outbox test_long_poll_wakes_on_commit
 * (a glob: 'test_long_poll_wakes_on_commit*' runs both storages).
 */
#include "moat/common.h"

#include <event2/event.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/buf.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/http_client.h"
#include "moat/kv.h"
#include "moat/log.h"
#include "pg_fixture.h"

#define DEADLINE_MS 5000

struct fixture {
    char dir[64];
    const char *dsn; /* on PostgreSQL (owned by pg_fixture), else NULL */
    struct event_base *base;
    struct moat_metrics *metrics;
    struct moat_db *db; /* SQLite storage, or */
    struct moat_kv *kv; /* LMDB storage */
    struct moat_kv_txn *txn;
    struct moat_outbox *o;
    struct moat_http_server *http;
    struct moat_http_client *client;
    uint16_t port;
};

static const struct moat_migration migrations[] = {
    {1, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
};

enum engine { ON_SQLITE, ON_LMDB, ON_PG };

static int setup_with(void **state, const struct moat_outbox_options *opts,
                      enum engine engine)
{
    bool lmdb = engine == ON_LMDB;
    if (engine == ON_PG && !h_pg_available()) {
        *state = NULL; /* the test skips */
        return 0;
    }
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-outbox-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->base = event_base_new();
    f->metrics = moat_metrics_new();
    if (lmdb) {
        char *path = moat_xasprintf("%s/producer.lmdb", f->dir);
        assert_int_equal(moat_kv_open(&f->kv, path, 0, f->metrics), MOAT_OK);
        free(path);
        assert_int_equal(moat_outbox_new_kv(&f->o, f->base, f->kv, "catalog",
                                            opts, f->metrics),
                         MOAT_OK);
    } else {
        char *path = moat_xasprintf("%s/producer.db", f->dir);
        f->dsn = engine == ON_PG ? h_pg_dsn("test_outbox") : NULL;
        struct moat_db_options o = {.dsn = f->dsn};
        assert_int_equal(moat_db_open(&f->db, path, &o, f->metrics), MOAT_OK);
        free(path);
        assert_int_equal(moat_db_migrate(f->db, migrations, 1), MOAT_OK);
        assert_int_equal(
            moat_outbox_new(&f->o, f->base, f->db, "catalog", opts, f->metrics),
            MOAT_OK);
    }
    struct moat_http_limits lim = {0};
    f->http = moat_http_server_new(f->base, &lim, f->metrics);
    moat_http_set_access_log(f->http, false);
    assert_int_equal(moat_feed_register(f->o, f->http), MOAT_OK);
    assert_int_equal(moat_http_listen(f->http, "127.0.0.1", 0, &f->port),
                     MOAT_OK);
    assert_int_equal(moat_http_client_new(&f->client, f->base, NULL), MOAT_OK);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, NULL, ON_SQLITE);
}

static int setup_kv(void **state)
{
    return setup_with(state, NULL, ON_LMDB);
}

static int setup_pg(void **state)
{
    return setup_with(state, NULL, ON_PG);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f)
        return 0;
    /* The drain hook answers the outbox's parked readers: not when a test
     * freed the outbox itself (the hook would reach freed memory). */
    if (f->o)
        moat_http_drain(f->http, NULL, NULL);
    moat_outbox_free(f->o);
    /* Let the replies the outbox wrote on its way out go. */
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    moat_http_client_free(f->client);
    moat_http_server_free(f->http);
    if (f->db)
        moat_db_close(f->db);
    moat_kv_close(f->kv);
    moat_metrics_free(f->metrics);
    event_base_free(f->base);
    char *cmd = moat_xasprintf("rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(f);
    return 0;
}

/* ---- helpers ---- */

/* The producer's transaction, whichever the storage. */
static void tx_begin(struct fixture *f)
{
    if (f->kv)
        assert_int_equal(moat_kv_begin(f->kv, &f->txn), MOAT_OK);
    else
        assert_int_equal(moat_db_begin(f->db), MOAT_OK);
}

static void tx_commit(struct fixture *f)
{
    if (f->kv) {
        assert_int_equal(moat_kv_commit(f->txn), MOAT_OK);
        f->txn = NULL;
    } else {
        assert_int_equal(moat_db_commit(f->db), MOAT_OK);
    }
}

static void tx_rollback(struct fixture *f)
{
    if (f->kv) {
        moat_kv_abort(f->txn);
        f->txn = NULL;
    } else {
        moat_db_rollback(f->db);
    }
}

/* The LMDB outbox's events: the sub-database moat_outbox_new_kv made. */
static struct moat_kv_db *kv_events(struct fixture *f)
{
    struct moat_kv_db *d = NULL;
    assert_int_equal(moat_kv_db(f->kv, "outbox", &d), MOAT_OK);
    return d;
}

struct rewrite {
    int64_t age_ms, skip_seq; /* age every event but skip_seq (0: none) */
    json_t *keys;             /* array of [key hex, new value] */
};

static int collect_rewrite(const void *key, size_t klen, const void *val,
                           size_t vlen, void *arg)
{
    struct rewrite *rw = arg;
    assert_int_equal(klen, 8);
    int64_t seq = (int64_t)moat_kv_u64_from_key(key);
    if (seq == rw->skip_seq)
        return MOAT_KV_NEXT;
    json_t *ev = json_loadb(val, vlen, 0, NULL);
    assert_non_null(ev);
    json_int_t t = json_integer_value(json_object_get(ev, "time_ms"));
    json_object_set_new(ev, "time_ms", json_integer(t - rw->age_ms));
    json_array_append_new(rw->keys, json_pack("[I, o]", (json_int_t)seq, ev));
    return MOAT_KV_NEXT;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Run the loop until *flag or the deadline (which fails the test). */
static void run_until(struct fixture *f, bool *flag, int ms)
{
    /* A ticking timer so EVLOOP_ONCE always comes back to check. */
    struct event *tick = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);
    uint64_t deadline = moat_mono_ms() + (uint64_t)ms;
    while (!*flag && moat_mono_ms() < deadline)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(tick);
    assert_true(*flag);
}

struct resp {
    bool done;
    int err;
    int status;
    json_t *body;
    uint64_t at_ms; /* monotonic time of completion */
};

static void on_resp(const struct moat_http_response *r, void *arg)
{
    struct resp *x = arg;
    x->done = true;
    x->err = r->err;
    x->status = r->status;
    x->body = json_loads(r->body, 0, NULL);
    x->at_ms = moat_mono_ms();
}

static void send_get(struct fixture *f, const char *target, struct resp *out)
{
    memset(out, 0, sizeof(*out));
    char *url = moat_xasprintf("http://127.0.0.1:%u%s", f->port, target);
    struct moat_http_call call = {
        .method = "GET", .url = url, .timeout_ms = 40000};
    assert_int_equal(moat_http_client_send(f->client, &call, on_resp, out),
                     MOAT_OK);
    free(url);
}

static void get(struct fixture *f, const char *target, struct resp *out)
{
    send_get(f, target, out);
    run_until(f, &out->done, DEADLINE_MS);
    assert_int_equal(out->err, MOAT_OK);
}

static int64_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    assert_non_null(s);
    return s;
}

/* n events of subject in one committed transaction; first seq in *first. */
static void append_n(struct fixture *f, int n, const char *subject,
                     int64_t *first)
{
    tx_begin(f);
    for (int i = 0; i < n; i++) {
        json_t *data = json_pack("{s:i, s:s}", "n", i, "subject", subject);
        int64_t seq = 0;
        assert_int_equal(
            moat_outbox_append(f->o, "ThingHappened", subject, 2, data, &seq),
            MOAT_OK);
        if (i == 0 && first)
            *first = seq;
        json_decref(data);
    }
    tx_commit(f);
    moat_outbox_committed(f->o);
}

static void assert_metric(struct fixture *f, const char *line)
{
    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(f->metrics, &out);
    if (!strstr(moat_buf_str(&out), line))
        fail_msg("metric line '%s' not found", line);
    moat_buf_release(&out);
}

/* ---- tests ---- */

static void test_append_needs_a_transaction(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    json_t *data = json_pack("{s:i}", "x", 1);
    assert_int_equal(moat_outbox_append(f->o, "T", "s1", 1, data, NULL),
                     MOAT_EINVAL);
    tx_begin(f);
    /* Bad arguments are refused inside one too. */
    assert_int_equal(moat_outbox_append(f->o, "", "s1", 1, data, NULL),
                     MOAT_EINVAL);
    assert_int_equal(moat_outbox_append(f->o, "T", "", 1, data, NULL),
                     MOAT_EINVAL);
    assert_int_equal(moat_outbox_append(f->o, "T", "s1", 0, data, NULL),
                     MOAT_EINVAL);
    assert_int_equal(moat_outbox_append(f->o, "T", "s1", 1, NULL, NULL),
                     MOAT_EINVAL);
    int64_t seq = 0;
    assert_int_equal(moat_outbox_append(f->o, "T", "s1", 1, data, &seq),
                     MOAT_OK);
    assert_int_equal(seq, 1);
    tx_commit(f);
    moat_outbox_committed(f->o);
    json_decref(data);
    assert_metric(f, "moat_outbox_events 1\n");
    assert_metric(f, "moat_outbox_head_seq 1\n");
    assert_metric(f, "moat_outbox_appended_total 1\n");
}

static void test_rollback_leaves_no_event(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    json_t *data = json_pack("{s:i}", "x", 1);
    tx_begin(f);
    assert_int_equal(moat_outbox_append(f->o, "T", "s1", 1, data, NULL),
                     MOAT_OK);
    tx_rollback(f);
    struct resp r;
    get(f, "/v1/events", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "events")), 0);
    assert_int_equal(jint(r.body, "head"), 0);
    assert_int_equal(jint(r.body, "retained_from"), 1);
    json_decref(r.body);
    /* A rolled-back append does not use up its sequence number. */
    int64_t first;
    append_n(f, 1, "s1", &first);
    assert_int_equal(first, 1);
    json_decref(data);
    assert_metric(f, "moat_outbox_appended_total 1\n");
}

static void test_sequence_order_and_cloudevents(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    int64_t a, b;
    append_n(f, 3, "s1", &a);
    append_n(f, 2, "s2", &b);
    assert_int_equal(a, 1);
    assert_int_equal(b, 4);

    struct resp r;
    get(f, "/v1/events?after=0&limit=1000", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.body, "source"), "catalog");
    json_t *events = json_object_get(r.body, "events");
    assert_int_equal(json_array_size(events), 5);
    for (size_t i = 0; i < 5; i++) {
        json_t *ev = json_array_get(events, i);
        char seq[8];
        snprintf(seq, sizeof(seq), "%zu", i + 1);
        assert_string_equal(jstr(ev, "sequence"), seq);
        assert_string_equal(jstr(ev, "specversion"), "1.0");
        assert_string_equal(jstr(ev, "source"), "moat/catalog");
        assert_string_equal(jstr(ev, "type"), "ThingHappened");
        assert_string_equal(jstr(ev, "subject"), i < 3 ? "s1" : "s2");
        assert_string_equal(jstr(ev, "datacontenttype"), "application/json");
        assert_int_equal(strlen(jstr(ev, "id")), 32);
        assert_int_equal(strlen(jstr(ev, "time")), 24);
        assert_int_equal(jint(ev, "dataschemaversion"), 2);
        assert_int_equal(jint(json_object_get(ev, "data"), "n"),
                         i < 3 ? (int)i : (int)i - 3);
        /* No request context here, so no trace was recorded. */
        assert_null(json_object_get(ev, "traceparent"));
    }
    assert_int_equal(jint(r.body, "next_after"), 5);
    assert_int_equal(jint(r.body, "head"), 5);
    json_decref(r.body);

    get(f, "/v1/events?after=1&limit=2", &r);
    events = json_object_get(r.body, "events");
    assert_int_equal(json_array_size(events), 2);
    assert_string_equal(jstr(json_array_get(events, 0), "sequence"), "2");
    assert_int_equal(jint(r.body, "next_after"), 3);
    json_decref(r.body);

    /* Caught up: nothing, at once (wait defaults to 0). */
    get(f, "/v1/events?after=5", &r);
    assert_int_equal(json_array_size(json_object_get(r.body, "events")), 0);
    assert_int_equal(jint(r.body, "next_after"), 5);
    json_decref(r.body);
}

static void test_trace_is_recorded(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    struct moat_trace t;
    moat_trace_start(
        &t, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", NULL);
    moat_log_set_trace(&t);
    append_n(f, 1, "s1", NULL);
    moat_log_set_trace(NULL);
    struct resp r;
    get(f, "/v1/events", &r);
    json_t *ev = json_array_get(json_object_get(r.body, "events"), 0);
    const char *tp = jstr(ev, "traceparent");
    assert_int_equal(strncmp(tp, "00-0af7651916cd43dd8448eb211c80319c-", 36),
                     0);
    json_decref(r.body);
}

/* Age every stored event but skip_seq (0: none) by ms (the test owns
 * this database). */
static void age_events(struct fixture *f, int64_t ms, int64_t skip_seq)
{
    if (!f->kv) {
        char *sql = moat_xasprintf(
            "UPDATE moat_outbox SET time_ms = time_ms - %lld WHERE seq <> %lld",
            (long long)ms, (long long)skip_seq);
        assert_int_equal(moat_db_exec(f->db, "test_age", sql), MOAT_OK);
        free(sql);
        return;
    }
    struct moat_kv_db *d = kv_events(f);
    struct rewrite rw = {.age_ms = ms, .skip_seq = skip_seq};
    rw.keys = json_array();
    tx_begin(f);
    assert_int_equal(moat_kv_iterate(f->txn, d, NULL, 0, collect_rewrite, &rw),
                     MOAT_OK);
    size_t i;
    json_t *pair;
    json_array_foreach(rw.keys, i, pair)
    {
        unsigned char key[8];
        moat_kv_u64_key((uint64_t)json_integer_value(json_array_get(pair, 0)),
                        key);
        assert_int_equal(
            moat_kv_put_json(f->txn, d, key, 8, json_array_get(pair, 1), 0),
            MOAT_OK);
    }
    tx_commit(f);
    json_decref(rw.keys);
}

/* Delete every stored event behind the outbox's back. */
static void delete_all_events(struct fixture *f)
{
    if (!f->kv) {
        assert_int_equal(
            moat_db_exec(f->db, "test_delete", "DELETE FROM moat_outbox"),
            MOAT_OK);
        return;
    }
    struct moat_kv_db *d = kv_events(f);
    tx_begin(f);
    const void *last;
    size_t klen;
    if (moat_kv_last(f->txn, d, &last, &klen, NULL, NULL) == MOAT_OK) {
        uint64_t head = moat_kv_u64_from_key(last);
        for (uint64_t seq = 1; seq <= head; seq++) {
            unsigned char key[8];
            moat_kv_u64_key(seq, key);
            int rc = moat_kv_del(f->txn, d, key, 8);
            assert_true(rc == MOAT_OK || rc == MOAT_ENOTFOUND);
        }
    }
    tx_commit(f);
}

static int setup_retention(void **state)
{
    struct moat_outbox_options opts = {.retention_s = 60,
                                       .retention_min_keep = 3};
    return setup_with(state, &opts, ON_SQLITE);
}

static int setup_retention_kv(void **state)
{
    struct moat_outbox_options opts = {.retention_s = 60,
                                       .retention_min_keep = 3};
    return setup_with(state, &opts, ON_LMDB);
}

static int setup_retention_pg(void **state)
{
    struct moat_outbox_options opts = {.retention_s = 60,
                                       .retention_min_keep = 3};
    return setup_with(state, &opts, ON_PG);
}

static void test_retention_keeps_min_and_410(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    append_n(f, 10, "s1", NULL);
    int64_t deleted = -1;
    assert_int_equal(moat_outbox_trim(f->o, &deleted), MOAT_OK);
    assert_int_equal(deleted, 0); /* all young */

    age_events(f, 120000, 0);
    assert_int_equal(moat_outbox_trim(f->o, &deleted), MOAT_OK);
    assert_int_equal(deleted, 7); /* the newest 3 always stay */
    assert_metric(f, "moat_outbox_events 3\n");

    struct resp r;
    get(f, "/v1/events?after=0", &r);
    assert_int_equal(r.status, 410);
    assert_int_equal(jint(r.body, "retained_from"), 8);
    assert_int_equal(jint(r.body, "head"), 10);
    json_decref(r.body);
    /* Right before the oldest kept one is fine. */
    get(f, "/v1/events?after=7", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "events")), 3);
    assert_int_equal(jint(r.body, "retained_from"), 8);
    json_decref(r.body);
    /* And a parked reader learns of it too. */
    get(f, "/v1/events?after=6&wait=1000", &r);
    assert_int_equal(r.status, 410);
    json_decref(r.body);
}

static void test_retention_deletes_a_prefix_only(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    append_n(f, 10, "s1", NULL);
    /* 1..3 old, 4 young (a clock step), 5..10 old again. */
    age_events(f, 120000, 4);
    int64_t deleted = -1;
    assert_int_equal(moat_outbox_trim(f->o, &deleted), MOAT_OK);
    assert_int_equal(deleted, 3);
    struct resp r;
    get(f, "/v1/events?after=3", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "events")), 7);
    json_decref(r.body);
}

struct commit_at {
    struct fixture *f;
    uint64_t at_ms;
};

static void on_commit_timer(evutil_socket_t fd, short what, void *arg)
{
    struct commit_at *c = arg;
    append_n(c->f, 1, "s9", NULL);
    c->at_ms = moat_mono_ms();
}

static void test_long_poll_wakes_on_commit(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    append_n(f, 2, "s1", NULL);
    struct resp r;
    send_get(f, "/v1/events?after=2&wait=5000", &r);
    struct commit_at c = {.f = f};
    struct event *t = evtimer_new(f->base, on_commit_timer, &c);
    struct timeval tv = {0, 200000};
    evtimer_add(t, &tv);
    run_until(f, &r.done, DEADLINE_MS);
    event_free(t);
    assert_int_equal(r.status, 200);
    assert_true(c.at_ms > 0);
    /* Answered because of the commit, not because the wait ran out. */
    assert_true(r.at_ms - c.at_ms < 100);
    json_t *events = json_object_get(r.body, "events");
    assert_int_equal(json_array_size(events), 1);
    assert_string_equal(jstr(json_array_get(events, 0), "sequence"), "3");
    json_decref(r.body);
}

/* A second instance of the producer on the same PostgreSQL database. */
struct other_instance {
    struct moat_db *db;
    struct moat_metrics *m;
    struct moat_outbox *o;
    uint64_t at_ms;
};

static void on_other_commit(evutil_socket_t fd, short what, void *arg)
{
    struct other_instance *x = arg;
    assert_int_equal(moat_db_begin(x->db), MOAT_OK);
    json_t *data = json_pack("{s:s}", "by", "the other instance");
    assert_int_equal(moat_outbox_append(x->o, "ItemSet", "s1", 1, data, NULL),
                     MOAT_OK);
    json_decref(data);
    assert_int_equal(moat_db_commit(x->db), MOAT_OK);
    moat_outbox_committed(x->o); /* wakes only its own readers */
    x->at_ms = moat_mono_ms();
}

/* PostgreSQL only: a long poll parked on one instance is answered when
 * another instance commits an event (NOTIFY reaches the first one's
 * listener), not when its wait runs out. */
static void test_other_instance_wakes_the_feed(void **state)
{
    struct fixture *f = *state;
    if (!f || !f->dsn)
        skip(); /* SQLite and LMDB have one writer process */
    struct other_instance x = {.m = moat_metrics_new()};
    struct moat_db_options opts = {.dsn = f->dsn};
    assert_int_equal(moat_db_open(&x.db, NULL, &opts, NULL), MOAT_OK);
    assert_int_equal(moat_outbox_new(&x.o, f->base, x.db, "catalog", NULL, x.m),
                     MOAT_OK);
    append_n(f, 1, "s1", NULL);

    struct resp r;
    send_get(f, "/v1/events?after=1&wait=5000", &r);
    struct event *t = evtimer_new(f->base, on_other_commit, &x);
    struct timeval tv = {0, 200000};
    evtimer_add(t, &tv);
    run_until(f, &r.done, DEADLINE_MS);
    event_free(t);
    assert_int_equal(r.status, 200);
    assert_true(x.at_ms > 0);
    assert_true(r.at_ms - x.at_ms < 1000);
    json_t *events = json_object_get(r.body, "events");
    assert_int_equal(json_array_size(events), 1);
    assert_string_equal(jstr(json_array_get(events, 0), "sequence"), "2");
    json_decref(r.body);

    moat_outbox_free(x.o);
    moat_db_close(x.db);
    moat_metrics_free(x.m);
}

static void test_long_poll_timeout_is_empty(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    append_n(f, 1, "s1", NULL);
    uint64_t t0 = moat_mono_ms();
    struct resp r;
    get(f, "/v1/events?after=1&wait=300", &r);
    uint64_t took = r.at_ms - t0;
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "events")), 0);
    assert_int_equal(jint(r.body, "head"), 1);
    assert_true(took >= 290 && took < 2000);
    json_decref(r.body);
}

static void test_free_answers_parked_readers(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    struct resp r;
    send_get(f, "/v1/events?wait=30000", &r);
    /* Let the request arrive and park. */
    uint64_t until = moat_mono_ms() + 200;
    while (moat_mono_ms() < until)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_false(r.done);
    moat_outbox_free(f->o);
    f->o = NULL;
    run_until(f, &r.done, DEADLINE_MS);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "events")), 0);
    json_decref(r.body);
}

static void test_bad_parameters(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    static const struct {
        const char *target;
        const char *param; /* the first error's parameter */
    } cases[] = {
        {"/v1/events?after=-1", "after"},
        {"/v1/events?after=abc", "after"},
        {"/v1/events?after=1.5", "after"},
        {"/v1/events?limit=0", "limit"},
        {"/v1/events?limit=1001", "limit"},
        {"/v1/events?wait=30001", "wait"},
        {"/v1/events?wait=", "wait"},
        {"/v1/events?after=1&after=2", "after"},
        {"/v1/events?cursor=1", "cursor"},
        {"/v1/events?junk", NULL},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        struct resp r;
        get(f, cases[i].target, &r);
        if (r.status != 400)
            fail_msg("%s: status %d", cases[i].target, r.status);
        assert_int_equal(jint(r.body, "status"), 400);
        json_t *errors = json_object_get(r.body, "errors");
        if (cases[i].param)
            assert_string_equal(jstr(json_array_get(errors, 0), "parameter"),
                                cases[i].param);
        json_decref(r.body);
    }
}

struct pulled {
    bool done;
    int err;
    int64_t head;
    size_t n;
    char first_seq[24];
};

static void on_pulled(int err, json_t *events, int64_t head, void *arg)
{
    struct pulled *p = arg;
    p->done = true;
    p->err = err;
    p->head = head;
    p->n = json_array_size(events);
    const char *s = json_string_value(
        json_object_get(json_array_get(events, 0), "sequence"));
    snprintf(p->first_seq, sizeof(p->first_seq), "%s", s ? s : "");
}

static void test_feed_source(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    append_n(f, 4, "s1", NULL);
    char *url = moat_xasprintf("http://127.0.0.1:%u/", f->port);
    struct moat_event_source *src =
        moat_feed_source_new("catalog", url, f->client, NULL);
    free(url);
    assert_non_null(src);
    assert_string_equal(src->name, "catalog");

    struct pulled p = {0};
    assert_int_equal(src->ops->pull(src, 1, 2, 0, on_pulled, &p), MOAT_OK);
    assert_false(p.done); /* never from inside pull */
    run_until(f, &p.done, DEADLINE_MS);
    assert_int_equal(p.err, MOAT_OK);
    assert_int_equal(p.n, 2);
    assert_int_equal(p.head, 4);
    assert_string_equal(p.first_seq, "2");

    /* Out of range arguments never reach the wire. */
    assert_int_equal(src->ops->pull(src, 0, 0, 0, on_pulled, &p), MOAT_EINVAL);
    assert_int_equal(src->ops->pull(src, 0, 1, 30001, on_pulled, &p),
                     MOAT_EINVAL);

    /* Freed with a pull in flight: done is never called. */
    struct pulled q = {0};
    assert_int_equal(src->ops->pull(src, 4, 10, 5000, on_pulled, &q), MOAT_OK);
    src->ops->free(src);
    uint64_t until = moat_mono_ms() + 100;
    while (moat_mono_ms() < until)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_false(q.done);
}

static void test_feed_source_errors(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    /* Retention gone: 410 becomes MOAT_ENOTFOUND. */
    append_n(f, 1, "s1", NULL);
    delete_all_events(f);
    append_n(f, 1, "s1", NULL);
    char *url = moat_xasprintf("http://127.0.0.1:%u", f->port);
    struct moat_event_source *src =
        moat_feed_source_new("catalog", url, f->client, NULL);
    free(url);
    struct pulled p = {0};
    assert_int_equal(src->ops->pull(src, 0, 10, 0, on_pulled, &p), MOAT_OK);
    run_until(f, &p.done, DEADLINE_MS);
    assert_int_equal(p.err, MOAT_ENOTFOUND);
    src->ops->free(src);

    /* Nobody listening: a transport error. */
    src =
        moat_feed_source_new("catalog", "http://127.0.0.1:1", f->client, NULL);
    memset(&p, 0, sizeof(p));
    assert_int_equal(src->ops->pull(src, 0, 10, 0, on_pulled, &p), MOAT_OK);
    run_until(f, &p.done, DEADLINE_MS);
    assert_int_equal(p.err, MOAT_EIO);
    src->ops->free(src);

    assert_null(moat_feed_source_new("", "http://x", f->client, NULL));
    assert_null(moat_feed_source_new("catalog", "ftp://x", f->client, NULL));
}

/*
 * LMDB only: the last sequence is kept apart from the events, so neither
 * retention emptying the outbox nor a restart hands a number out twice.
 * A separate environment, outbox and registry: the fixture's outbox is
 * wired to the HTTP server and cannot be freed early.
 */
static void test_lmdb_seq_survives_restart(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    char *path = moat_xasprintf("%s/restart.lmdb", f->dir);
    struct moat_metrics *m = moat_metrics_new();
    struct moat_kv *kv;
    struct moat_outbox *o;
    struct moat_kv_txn *t;
    json_t *data = json_pack("{s:i}", "x", 1);
    int64_t seq = 0;

    assert_int_equal(moat_kv_open(&kv, path, 0, m), MOAT_OK);
    assert_int_equal(moat_outbox_new_kv(&o, f->base, kv, "inventory", NULL, m),
                     MOAT_OK);
    /* A read transaction is not a place to append either. */
    assert_int_equal(moat_kv_begin_read(kv, &t), MOAT_OK);
    assert_int_equal(moat_outbox_append(o, "T", "s1", 1, data, NULL),
                     MOAT_EINVAL);
    moat_kv_abort(t);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(moat_kv_begin(kv, &t), MOAT_OK);
        assert_int_equal(moat_outbox_append(o, "T", "s1", 1, data, &seq),
                         MOAT_OK);
        assert_int_equal(moat_kv_commit(t), MOAT_OK);
    }
    assert_int_equal(seq, 3);
    /* Empty the events, as retention would. */
    struct moat_kv_db *d = NULL;
    assert_int_equal(moat_kv_db(kv, "outbox", &d), MOAT_OK);
    assert_int_equal(moat_kv_begin(kv, &t), MOAT_OK);
    for (uint64_t s = 1; s <= 3; s++) {
        unsigned char key[8];
        moat_kv_u64_key(s, key);
        assert_int_equal(moat_kv_del(t, d, key, 8), MOAT_OK);
    }
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
    moat_outbox_free(o);
    moat_kv_close(kv);

    assert_int_equal(moat_kv_open(&kv, path, 0, m), MOAT_OK);
    assert_int_equal(moat_outbox_new_kv(&o, f->base, kv, "inventory", NULL, m),
                     MOAT_OK);
    assert_int_equal(moat_kv_begin(kv, &t), MOAT_OK);
    assert_int_equal(moat_outbox_append(o, "T", "s1", 1, data, &seq), MOAT_OK);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
    assert_int_equal(seq, 4);
    moat_outbox_free(o);
    moat_kv_close(kv);
    json_decref(data);
    moat_metrics_free(m);
    free(path);
}

int main(int argc, char **argv)
{
    /* One test alone: pass its name (a glob). */
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    moat_log_init("test", MOAT_LOG_ERROR);
    /* Each test on SQLite, then as <name>_lmdb on LMDB and as <name>_pg
     * on PostgreSQL (skipped without it: tests/pg_fixture.h). */
#define BOTH(fn, su)                                                           \
    cmocka_unit_test_setup_teardown(fn, su, teardown),                         \
        {#fn "_lmdb", fn, su##_kv, teardown, NULL},                            \
    {                                                                          \
#fn "_pg", fn, su##_pg, teardown, NULL                                 \
    }
    const struct CMUnitTest tests[] = {
        BOTH(test_append_needs_a_transaction, setup),
        BOTH(test_rollback_leaves_no_event, setup),
        BOTH(test_sequence_order_and_cloudevents, setup),
        BOTH(test_trace_is_recorded, setup),
        BOTH(test_retention_keeps_min_and_410, setup_retention),
        BOTH(test_retention_deletes_a_prefix_only, setup_retention),
        BOTH(test_long_poll_wakes_on_commit, setup),
        BOTH(test_long_poll_timeout_is_empty, setup),
        BOTH(test_free_answers_parked_readers, setup),
        BOTH(test_bad_parameters, setup),
        BOTH(test_feed_source, setup),
        BOTH(test_feed_source_errors, setup),
        cmocka_unit_test_setup_teardown(test_lmdb_seq_survives_restart,
                                        setup_kv, teardown),
        cmocka_unit_test_setup_teardown(test_other_instance_wakes_the_feed,
                                        setup_pg, teardown),
    };
#undef BOTH
    return cmocka_run_group_tests(tests, NULL, NULL);
}
