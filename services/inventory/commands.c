/*
 * commands.c - inventory as a participant of the order saga
 * (docs/saga.md): it pulls orders' event feed, applies the commands
 * ReserveStock, ReleaseStock and CommitStock through the store, and
 * writes its replies (StockReserved, StockReservationFailed,
 * StockReleased, StockCommitted) into its own outbox.
 *
 * Exactly once. inventory's data is an LMDB environment, not SQLite, so
 * the libmoat consumer (lib/consumer.c, SQLite savepoints) does not fit;
 * this file is its LMDB counterpart for one source. The cursor on orders'
 * feed lives in the store's "consumer" sub-database, and a whole pulled
 * batch - every command's effect, its reply events and the cursor at the
 * batch's last event - is ONE write transaction: one sync per batch, and
 * a crash anywhere applies each command once (a redelivered event at or
 * below the stored cursor is skipped). Events of other types only move
 * the cursor.
 *
 * The pull loop, all on the loop thread:
 *
 *   pull(after = cursor, limit 500, wait 25 s) --done--> events
 *     one transaction: apply each command after the cursor, store the
 *     cursor, commit; then pull again.
 *   A source that is down is retried with backoff (100 ms doubling to
 *   5 s), logged once per change of state. So is a fault of our own
 *   store (map full, I/O): the batch is kept, the commands before the
 *   failing one are committed on their own, and the rest is retried.
 *
 * A command is a fact orders decided, so a refusal is a reply, not an
 * error: out of stock, the customer's cap, a late reserve after its
 * release, a reserve with other lines, or malformed data all answer
 * StockReservationFailed. A malformed ReleaseStock or CommitStock (no
 * valid order_id: there is nobody to answer) is logged and skipped. The
 * feed never stops for a bad command; only a store fault holds it.
 *
 * The per-command effects are those of the HTTP routes (store.c), with
 * one addition the routes do not offer: a ReleaseStock of a committed
 * reservation returns its units (sold -> on_hand, the customer cancel of
 * a confirmed order).
 */
#include "moat/common.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "contracts/orders.h"
#include "inventory.h"
#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/metrics.h"
#include "moat/problem.h"
#include "moat/service.h"
#include "moat/trace.h"
#include "store.h"

#define SOURCE         "orders"
#define CALLER         "orders" /* the "user" of the adjustments it causes */
#define PULL_LIMIT     500
#define PULL_WAIT_MS   25000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* An empty page that came back faster than this (a source that does not
 * long-poll) is followed by a short pause rather than a busy loop. */
#define EMPTY_POLL_MIN_MS 100
/* Per-call bound of the feed client: above the longest long poll. */
#define FEED_CLIENT_TIMEOUT_MS (MOAT_FEED_MAX_WAIT_MS + 10000L)
#define ERROR_MAX              256
#define DETAIL_MAX             200

struct inv_consumer {
    struct inv_service *inv;         /* borrowed: the service */
    struct moat_http_client *client; /* owned */
    struct moat_event_source *src;   /* owned */
    struct event *timer;             /* owned: start, next pull, retries */
    json_t *batch;      /* pulled, not yet applied (a store fault); owned */
    int64_t cursor;     /* = the stored cursor */
    int64_t head;       /* the source's head at the last pull; -1 unknown */
    int64_t pending_ms; /* time of the oldest unapplied event; 0 = none */
    uint64_t pull_started_ms;
    int backoff_ms;
    int down_err;     /* the source's failure, MOAT_OK while it works */
    bool local_fault; /* our store refused a write */
    bool started, pulling;
    char error[ERROR_MAX]; /* the current problem, "" when none */
    /* Scratch records for the commands (about 4 KiB each). */
    struct inv_reservation *want, *res;
    struct inv_shortage *shortages;
    struct moat_metric_series *m_lag_events, *m_lag_seconds, *m_applied;
};

static const char *const command_types[] = {
    ORDERS_RESERVE_STOCK, ORDERS_RELEASE_STOCK, ORDERS_COMMIT_STOCK};

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

static bool is_command(const char *type)
{
    for (size_t i = 0; type && i < MOAT_ARRAY_LEN(command_types); i++)
        if (strcmp(type, command_types[i]) == 0)
            return true;
    return false;
}

/* The order a command is about: data's order_id when it is one, else the
 * event's subject (orders sets both); NULL when neither is. */
static const char *command_order(json_t *ce)
{
    const char *id = jstr(json_object_get(ce, "data"), "order_id");
    if (id && inv_ref_valid(id))
        return id;
    id = jstr(ce, "subject");
    return id && inv_ref_valid(id) ? id : NULL;
}

/* "<pointer>: <detail>" of the first validation error, for the reply. */
static void first_error(const struct moat_validation *v, char *out, size_t len)
{
    json_t *e = json_array_get(v->errors, 0);
    const char *pointer = jstr(e, "pointer"), *detail = jstr(e, "detail");
    snprintf(out, len, "%s: %s", pointer && pointer[0] ? pointer : "/data",
             detail ? detail : "is malformed");
}

/* ---- the commands: MOAT_OK for every outcome, an error for a store
 * fault only (the batch is then aborted) ---- */

static int reserve_failed(struct inv_consumer *c, struct moat_kv_txn *t,
                          const char *order_id, const char *reason,
                          const char *detail, size_t nshort)
{
    moat_log(MOAT_LOG_INFO, "stock reservation refused", "{s:s, s:s, s:s}",
             "order_id", order_id, "reason", reason, "detail",
             detail ? detail : "");
    return inv_store_reserve_failed_in(c->inv->store, t, order_id, reason,
                                       detail, c->shortages, nshort);
}

static int apply_reserve(struct inv_consumer *c, struct moat_kv_txn *t,
                         json_t *ce)
{
    struct moat_validation v;
    enum inv_reserve_result result;
    size_t nshort = 0;
    char detail[DETAIL_MAX];
    int rc = MOAT_OK;

    json_t *data = json_object_get(ce, "data");
    moat_validation_init(&v);
    /* Not strict about unknown members: a newer orders may add some. */
    if (!inv_reservation_parse(&v, data ? data : json_null(), false, c->want)) {
        const char *order_id = command_order(ce);
        first_error(&v, detail, sizeof(detail));
        if (order_id)
            rc = reserve_failed(c, t, order_id, "invalid", detail, 0);
        else
            moat_log(MOAT_LOG_WARN,
                     "malformed ReserveStock without an order id skipped",
                     "{s:s, s:s}", "seq", jstr(ce, "sequence"), "detail",
                     detail);
        goto cleanup;
    }
    rc = inv_store_reserve_in(c->inv->store, t, c->want,
                              c->inv->max_open_per_customer, c->res, &result,
                              c->shortages, &nshort);
    if (rc != MOAT_OK)
        goto cleanup;
    const char *order_id = c->want->order_id;
    switch (result) {
    case INV_RESERVED:
        moat_log(MOAT_LOG_DEBUG, "stock reserved", "{s:s, s:s, s:I}",
                 "order_id", order_id, "customer_id", c->want->customer_id,
                 "lines", (json_int_t)c->want->nlines);
        break;
    case INV_RESERVE_EXISTS:
        break; /* a repeat: its StockReserved went out with it */
    case INV_RESERVE_MISMATCH:
        rc = reserve_failed(c, t, order_id, "mismatch",
                            "the order already has a reservation of other "
                            "lines or another customer",
                            0);
        break;
    case INV_RESERVE_RELEASED:
        rc = reserve_failed(c, t, order_id, "released",
                            "the order was released before this reserve", 0);
        break;
    case INV_RESERVE_CAP:
        rc = reserve_failed(c, t, order_id, "reservation_limit",
                            "the customer holds the most open reservations "
                            "allowed",
                            0);
        break;
    case INV_RESERVE_SHORT:
        rc = reserve_failed(c, t, order_id, "out_of_stock", NULL, nshort);
        break;
    }

cleanup:
    moat_validation_release(&v);
    return rc;
}

static int apply_release(struct inv_consumer *c, struct moat_kv_txn *t,
                         json_t *ce)
{
    enum inv_transition_result result;
    const char *order_id = jstr(json_object_get(ce, "data"), "order_id");
    if (!order_id || !inv_ref_valid(order_id)) {
        moat_log(MOAT_LOG_WARN, "malformed ReleaseStock skipped", "{s:s, s:s}",
                 "seq", jstr(ce, "sequence"), "detail",
                 "/order_id: must be 1 to 64 of A-Z a-z 0-9 . _ -");
        return MOAT_OK;
    }
    int rc = inv_store_release_in(c->inv->store, t, order_id, CALLER, true,
                                  c->res, &result);
    if (rc == MOAT_OK && result != INV_ALREADY)
        moat_log(MOAT_LOG_DEBUG, "reservation released", "{s:s, s:b, s:b}",
                 "order_id", order_id, "tombstone", result == INV_ABSENT,
                 "returned", result == INV_RETURNED);
    return rc;
}

static int apply_commit(struct inv_consumer *c, struct moat_kv_txn *t,
                        json_t *ce)
{
    enum inv_transition_result result;
    const char *order_id = jstr(json_object_get(ce, "data"), "order_id");
    if (!order_id || !inv_ref_valid(order_id)) {
        moat_log(MOAT_LOG_WARN, "malformed CommitStock skipped", "{s:s, s:s}",
                 "seq", jstr(ce, "sequence"), "detail",
                 "/order_id: must be 1 to 64 of A-Z a-z 0-9 . _ -");
        return MOAT_OK;
    }
    int rc = inv_store_commit_in(c->inv->store, t, order_id, CALLER, c->res,
                                 &result);
    if (rc == MOAT_ENOTFOUND || (rc == MOAT_OK && result == INV_WRONG_STATE)) {
        /* orders commits only what it reserved and never released: this
         * is a bug on its side, and no reply can make it right. */
        moat_log(MOAT_LOG_WARN, "CommitStock of a reservation not held",
                 "{s:s, s:s}", "order_id", order_id, "state",
                 rc == MOAT_ENOTFOUND ? "none"
                 : c->res->tombstone  ? "absent"
                                      : inv_res_state_name(c->res->state));
        return MOAT_OK;
    }
    return rc;
}

static int apply_command(struct inv_consumer *c, struct moat_kv_txn *t,
                         json_t *ce)
{
    const char *type = jstr(ce, "type");
    /* The reply continues the command's trace. */
    struct moat_trace trace;
    const struct moat_trace *saved = moat_log_trace();
    moat_trace_start(&trace, jstr(ce, "traceparent"), NULL);
    moat_log_set_trace(&trace);
    int rc;
    if (strcmp(type, ORDERS_RESERVE_STOCK) == 0)
        rc = apply_reserve(c, t, ce);
    else if (strcmp(type, ORDERS_RELEASE_STOCK) == 0)
        rc = apply_release(c, t, ce);
    else
        rc = apply_commit(c, t, ce);
    moat_log_set_trace(saved);
    return rc;
}

/*
 * Apply events[0..n) after the stored cursor in one transaction with the
 * cursor at the last of them. On a store fault nothing is written and
 * *fault is the index of the failing event (n when the commit failed).
 * *applied gets the number of commands applied.
 */
static int apply_range(struct inv_consumer *c, json_t *events, size_t n,
                       size_t *fault, size_t *applied)
{
    struct moat_kv_txn *t = NULL;
    int64_t stored = 0, last;
    size_t i = 0;
    *fault = 0;
    *applied = 0;
    int rc = inv_store_txn_begin(c->inv->store, &t);
    if (rc == MOAT_OK)
        rc = inv_store_cursor_get_in(c->inv->store, t, SOURCE, &stored);
    if (rc != MOAT_OK)
        goto cleanup;
    last = stored;
    for (i = 0; i < n; i++) {
        json_t *ce = json_array_get(events, i);
        int64_t seq;
        if (event_seq(ce, &seq) != MOAT_OK) {
            /* Not from a libmoat feed; nothing to order it by. */
            moat_log(MOAT_LOG_WARN, "event without a sequence skipped", "{s:s}",
                     "source", SOURCE);
            continue;
        }
        if (seq <= last)
            continue; /* applied before: a redelivery */
        if (is_command(jstr(ce, "type"))) {
            rc = apply_command(c, t, ce);
            if (rc != MOAT_OK)
                goto cleanup;
            (*applied)++;
        }
        last = seq;
    }
    if (last == stored)
        goto cleanup; /* nothing new: nothing to write */
    rc = inv_store_cursor_put_in(c->inv->store, t, SOURCE, last);
    if (rc == MOAT_OK) {
        rc = inv_store_txn_commit(c->inv->store, t);
        t = NULL;
    }
    if (rc == MOAT_OK)
        c->cursor = last;

cleanup:
    if (rc != MOAT_OK)
        *fault = i;
    inv_store_txn_abort(t);
    return rc;
}

/* ---- the pull loop ---- */

static void pull(struct inv_consumer *c);

static void arm(struct inv_consumer *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static int next_backoff(struct inv_consumer *c)
{
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    return c->backoff_ms;
}

/* Lag gauges: head - cursor, and the age of the oldest event not applied
 * (approximated by the newest applied one while a backlog is pulled). */
static void update_lag(struct inv_consumer *c, json_t *events, size_t from)
{
    int64_t lag = c->head > c->cursor ? c->head - c->cursor : 0;
    if (lag == 0) {
        c->pending_ms = 0;
    } else if (events && json_array_size(events) > 0) {
        size_t n = json_array_size(events);
        json_t *ce = json_array_get(events, from < n ? from : n - 1);
        /* Unparsable: 0, no age (the time only feeds the lag gauge). */
        if (moat_time_parse_rfc3339(jstr(ce, "time"), &c->pending_ms) !=
            MOAT_OK)
            c->pending_ms = 0;
    }
    moat_metric_set(c->m_lag_events, (double)lag);
    int64_t age = c->pending_ms ? moat_wall_ms() - c->pending_ms : 0;
    moat_metric_set(c->m_lag_seconds, age > 0 ? (double)age / 1000.0 : 0.0);
}

static void source_failed(struct inv_consumer *c, int err)
{
    if (c->down_err != err) {
        if (err == MOAT_ENOTFOUND)
            moat_log(MOAT_LOG_ERROR,
                     "orders' commands this service has not applied were "
                     "deleted by orders' retention",
                     "{s:s, s:I}", "source", SOURCE, "cursor",
                     (json_int_t)c->cursor);
        else
            moat_log(MOAT_LOG_WARN,
                     "event source unavailable, retrying with backoff",
                     "{s:s, s:s}", "source", SOURCE, "error",
                     moat_strerror(err));
        c->down_err = err;
        c->backoff_ms = 0;
    }
    snprintf(c->error, sizeof(c->error), "source: %s",
             err == MOAT_ENOTFOUND ? "events gone (retention)"
                                   : moat_strerror(err));
    arm(c, next_backoff(c));
}

static void source_ok(struct inv_consumer *c)
{
    if (c->down_err != MOAT_OK) {
        moat_log(MOAT_LOG_INFO, "event source reachable again", "{s:s}",
                 "source", SOURCE);
        c->down_err = MOAT_OK;
        c->error[0] = '\0';
    }
    if (!c->local_fault)
        c->backoff_ms = 0;
}

/* Apply the held batch; on a store fault keep it and retry later. */
static void apply_batch(struct inv_consumer *c)
{
    size_t n = json_array_size(c->batch), fault = 0, applied = 0;
    int rc = apply_range(c, c->batch, n, &fault, &applied);
    if (rc != MOAT_OK && fault > 0 && fault < n) {
        /* Keep what came before the failing command (its effects are
         * deterministic, so the same again), so that one bad spot holds
         * back as little as possible. */
        size_t fault2, applied2;
        if (apply_range(c, c->batch, fault, &fault2, &applied2) == MOAT_OK)
            moat_metric_add(c->m_applied, (double)applied2);
    }
    if (rc != MOAT_OK) {
        if (!c->local_fault) {
            moat_log(MOAT_LOG_ERROR,
                     "cannot apply orders' commands, retrying with backoff",
                     "{s:s, s:I, s:s}", "source", SOURCE, "cursor",
                     (json_int_t)c->cursor, "error", moat_strerror(rc));
            c->local_fault = true;
            c->backoff_ms = 0;
        }
        snprintf(c->error, sizeof(c->error), "database: %s", moat_strerror(rc));
        update_lag(c, c->batch, fault);
        arm(c, next_backoff(c));
        return;
    }
    moat_metric_add(c->m_applied, (double)applied);
    if (c->local_fault) {
        moat_log(MOAT_LOG_INFO, "applying orders' commands again", "{s:s}",
                 "source", SOURCE);
        c->local_fault = false;
        c->backoff_ms = 0;
        c->error[0] = '\0';
    }
    update_lag(c, c->batch, n);
    json_decref(c->batch);
    c->batch = NULL;
    pull(c);
}

static void on_pulled(int err, json_t *events, int64_t head, void *arg)
{
    struct inv_consumer *c = arg;
    c->pulling = false;
    if (err == MOAT_ECANCELLED)
        return; /* the client is going away: so are we */
    if (err != MOAT_OK) {
        source_failed(c, err);
        return;
    }
    source_ok(c);
    c->head = head;
    if (json_array_size(events) == 0) {
        update_lag(c, NULL, 0);
        if (moat_mono_ms() - c->pull_started_ms < EMPTY_POLL_MIN_MS)
            arm(c, EMPTY_POLL_MIN_MS);
        else
            pull(c);
        return;
    }
    c->batch = json_incref(events);
    apply_batch(c);
}

static void pull(struct inv_consumer *c)
{
    if (c->pulling || c->batch)
        return;
    c->pull_started_ms = moat_mono_ms();
    /* Right after an error, ask without waiting: an answer, even empty,
     * proves the source is back at once instead of after a long poll. */
    int wait = c->down_err != MOAT_OK ? 0 : PULL_WAIT_MS;
    int rc =
        c->src->ops->pull(c->src, c->cursor, PULL_LIMIT, wait, on_pulled, c);
    if (rc == MOAT_OK)
        c->pulling = true;
    else
        source_failed(c, rc);
}

/*
 * The timer: the first run starts consuming. It is added with no delay in
 * init, and lib/service.c enters the loop only once the process is
 * confined and listening (the skeleton has no hook for that moment; search
 * does the same). Later runs are the pauses between pulls and the
 * retries.
 */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct inv_consumer *c = arg;
    if (!c->started) {
        c->started = true;
        moat_log(MOAT_LOG_INFO, "consuming orders' commands", "{s:s, s:I}",
                 "source", SOURCE, "cursor", (json_int_t)c->cursor);
    }
    if (c->batch)
        apply_batch(c);
    else
        pull(c);
}

/* ---- lifecycle ---- */

int inv_consumer_new(struct inv_consumer **out, struct moat_service *svc,
                     struct inv_service *inv, const char *orders_url)
{
    static const struct moat_http_client_options copts = {
        .timeout_ms = FEED_CLIENT_TIMEOUT_MS,
    };
    struct inv_consumer *c = moat_xcalloc(1, sizeof(*c));
    c->inv = inv;
    c->head = -1;
    int rc = inv_store_cursor_get(inv->store, SOURCE, &c->cursor);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_http_client_new(&c->client, svc->base, &copts);
    if (rc != MOAT_OK)
        goto cleanup;
    c->src = moat_feed_source_new(SOURCE, orders_url, c->client, svc->auth);
    if (!c->src) {
        rc = MOAT_EINVAL; /* logged */
        goto cleanup;
    }
    c->timer = evtimer_new(svc->base, on_timer, c);
    const struct timeval now = {0, 0};
    if (!c->timer || evtimer_add(c->timer, &now) != 0) {
        rc = MOAT_EIO;
        goto cleanup;
    }
    c->want = moat_xcalloc(1, sizeof(*c->want));
    c->res = moat_xcalloc(1, sizeof(*c->res));
    c->shortages = moat_xcalloc(INV_LINES_MAX, sizeof(*c->shortages));

    /* The families and help texts of lib/consumer.c, so dashboards and
     * `moat status` read inventory like every other consumer. */
    struct moat_metric_family *f_lag = moat_metrics_family(
        svc->metrics, MOAT_GAUGE, "moat_consumer_lag_events",
        "Events the source has that this consumer has not applied yet.",
        "source", NULL, 0);
    struct moat_metric_family *f_age = moat_metrics_family(
        svc->metrics, MOAT_GAUGE, "moat_consumer_lag_seconds",
        "Age of the oldest event not applied yet (0 when caught up).", "source",
        NULL, 0);
    struct moat_metric_family *f_applied = moat_metrics_family(
        svc->metrics, MOAT_COUNTER, "moat_consumer_applied_total",
        "Events applied by their handler.", "source", NULL, 0);
    if (!f_lag || !f_age || !f_applied) {
        rc = MOAT_EINVAL; /* logged by the registry */
        goto cleanup;
    }
    const char *labels[] = {SOURCE};
    c->m_lag_events = moat_metric_series(f_lag, labels);
    c->m_lag_seconds = moat_metric_series(f_age, labels);
    c->m_applied = moat_metric_series(f_applied, labels);
    *out = c;
    c = NULL;

cleanup:
    inv_consumer_free(c);
    return rc;
}

void inv_consumer_free(struct inv_consumer *c)
{
    if (!c)
        return;
    if (c->timer)
        event_free(c->timer);
    /* The source first: it drops its pull in flight, which the client's
     * free would otherwise complete into a freed consumer. */
    if (c->src)
        c->src->ops->free(c->src);
    moat_http_client_free(c->client);
    json_decref(c->batch);
    free(c->want);
    free(c->res);
    free(c->shortages);
    free(c);
}

/* ---- GET /v1/admin/consumer ---- */

static const char *state_of(const struct inv_consumer *c)
{
    if (c->down_err != MOAT_OK || c->local_fault)
        return "backoff";
    if (c->pulling)
        return "waiting";
    return c->started ? "idle" : "stopped";
}

/* lib/consumer.c's shape; inventory has no dead letters (a bad command is
 * answered or skipped, never parked), so those counts are always 0. */
static void handle_consumer_status(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    struct inv_consumer *c = inv->consumer;
    void *iter = NULL;
    const char *key, *value;
    json_t *problem = NULL;
    while (moat_req_query_next(r, &iter, &key, &value))
        moat_problem_param_error(&problem, key,
                                 "is not a known parameter (there are none)");
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    json_t *list = json_array();
    if (c) {
        int64_t lag = c->head > c->cursor ? c->head - c->cursor : 0;
        int64_t age = c->pending_ms ? moat_wall_ms() - c->pending_ms : 0;
        json_array_append_new(
            list,
            json_pack("{s:s, s:I, s:o, s:I, s:f, s:s, s:o, s:{s:i, s:i}}",
                      "source", SOURCE, "cursor", (json_int_t)c->cursor, "head",
                      c->head >= 0 ? json_integer(c->head) : json_null(),
                      "lag_events", (json_int_t)lag, "lag_seconds",
                      lag > 0 && age > 0 ? (double)age / 1000.0 : 0.0, "state",
                      state_of(c), "error",
                      c->error[0] ? json_string(c->error) : json_null(),
                      "dead_letters", "failed", 0, "blocked", 0));
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:o, s:b, s:b}", "sources", list, "paused",
                                  0, "verifying", 0));
}

int inv_consumer_routes_register(struct moat_http_server *server,
                                 struct inv_service *inv)
{
    return moat_http_route(server, MOAT_GET | MOAT_HEAD, "/v1/admin/consumer",
                           handle_consumer_status, inv);
}
