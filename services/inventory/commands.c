/*
 * commands.c - inventory as a participant of the order saga
 * (docs/saga.md): it consumes orders' event feed, applies the commands
 * ReserveStock, ReleaseStock and CommitStock through the store, and
 * writes its replies (StockReserved, StockReservationFailed,
 * StockReleased, StockCommitted) into its own outbox.
 *
 * Exactly once. The consumer is libmoat's (moat_consumer_new_kv,
 * moat/events.h) on inventory's LMDB environment: a whole pulled batch -
 * every command's effect, its reply events and the cursor at the batch's
 * last event - is ONE write transaction (one sync per batch), each
 * command in a transaction nested in it, so a crash anywhere applies each
 * command once. Events of other types only move the cursor. The same
 * consumer gives inventory what every consumer has: lag metrics,
 * GET /v1/admin/consumer, dead letters and their redrive, and replay
 * verification (POST /v1/admin/replay?verify=1; `moat events replay
 * inventory --verify`).
 *
 * A command is a fact orders decided, so a refusal is a reply, not an
 * error: out of stock, the customer's cap, a late reserve after its
 * release, a reserve with other lines, or malformed data all answer
 * StockReservationFailed. A malformed ReleaseStock or CommitStock (no
 * valid order_id: there is nobody to answer) is logged and skipped. What
 * fails a command is a data schema version newer than this code knows
 * (retried, then parked: upgrade inventory, then redrive) and a fault of
 * our own store (map full, I/O: the consumer holds the feed with backoff,
 * nothing parked).
 *
 * Replay. Inventory's stock is its own source of truth (set through its
 * API), not a view of any feed, so a plain replay (reset, then apply from
 * sequence 0) is not offered (501). Verification rebuilds into a scratch
 * store seeded with the stock as the commands found it
 * (inv_store_view_seed, store.h) and compares stock, reservations and the
 * per-customer index.
 *
 * The per-command effects are those of the HTTP routes (store.c), with
 * one addition the routes do not offer: a ReleaseStock of a committed
 * reservation returns its units (sold -> on_hand, the customer cancel of
 * a confirmed order).
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/orders.h"
#include "inventory.h"
#include "moat/audit.h"
#include "moat/backup.h"
#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/kv.h"
#include "moat/log.h"
#include "moat/metrics.h"
#include "moat/problem.h"
#include "moat/service.h"
#include "store.h"

#define SOURCE "orders"
#define CALLER "orders" /* the "user" of the adjustments it causes */
/* Per-call bound of the feed client: above the longest long poll. */
#define FEED_CLIENT_TIMEOUT_MS (MOAT_FEED_MAX_WAIT_MS + 10000L)
#define DETAIL_MAX             200
/* The data schema version of the commands this code knows. */

/* What a command handler works with: the live store, or a verification's
 * scratch store. */
struct inv_applier {
    struct inv_store *store;  /* borrowed (the scratch's: owned by it) */
    int64_t max_open;         /* held reservations per customer */
    const bool *healed;       /* test builds: the poison hook's cure */
    struct moat_audit *audit; /* borrowed; NULL for a scratch (replay) */
    /* Scratch records for the commands (about 4 KiB each); owned. */
    struct inv_reservation *want, *res;
    struct inv_shortage *shortages;
};

struct inv_consumer {
    struct inv_service *inv;         /* borrowed: the service */
    struct moat_http_client *client; /* owned */
    struct moat_consumer *consumer;  /* owned */
    struct event *start;             /* owned: starts consuming */
    struct event_base *base;         /* borrowed: the service loop */
    const char *name;                /* borrowed: the service's name */
    struct inv_applier live;
    bool poison_healed; /* test builds: POST /_test/heal */
};

/* A verification's scratch store (moat_kv_view_ops.scratch_open). */
struct inv_scratch {
    struct inv_applier applier;   /* first: the handler_arg */
    struct inv_store *store;      /* owned */
    struct moat_metrics *metrics; /* owned: the scratch outbox's */
};

static const char *const command_types[] = {
    ORDERS_RESERVE_STOCK, ORDERS_RELEASE_STOCK, ORDERS_COMMIT_STOCK, NULL};

/* ---- small helpers ---- */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The order a command is about: data's order_id when it is one, else the
 * event's subject (orders sets both); NULL when neither is. */
static const char *command_order(const struct moat_event *ev)
{
    const char *id = jstr(ev->data, "order_id");
    if (id && inv_ref_valid(id))
        return id;
    return inv_ref_valid(ev->subject) ? ev->subject : NULL;
}

static void applier_init(struct inv_applier *a, struct inv_store *store,
                         int64_t max_open, const bool *healed)
{
    a->store = store;
    a->max_open = max_open;
    a->healed = healed;
    a->audit = NULL;
    a->want = moat_xcalloc(1, sizeof(*a->want));
    a->res = moat_xcalloc(1, sizeof(*a->res));
    a->shortages = moat_xcalloc(INV_LINES_MAX, sizeof(*a->shortages));
}

static void applier_release(struct inv_applier *a)
{
    free(a->want);
    free(a->res);
    free(a->shortages);
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

static int reserve_failed(struct inv_applier *c, struct moat_kv_txn *t,
                          const char *order_id, const char *reason,
                          const char *detail, size_t nshort)
{
    moat_log(MOAT_LOG_INFO, "stock reservation refused", "{s:s, s:s, s:s}",
             "order_id", order_id, "reason", reason, "detail",
             detail ? detail : "");
    return inv_store_reserve_failed_in(c->store, t, order_id, reason, detail,
                                       c->shortages, nshort);
}

static int apply_reserve(struct inv_applier *c, struct moat_kv_txn *t,
                         const struct moat_event *ev)
{
    struct moat_validation v;
    enum inv_reserve_result result;
    size_t nshort = 0;
    char detail[DETAIL_MAX];
    int rc = MOAT_OK;

    moat_validation_init(&v);
    /* Not strict about unknown members: a newer orders may add some. */
    if (!inv_reservation_parse(&v, ev->data, false, c->want)) {
        const char *order_id = command_order(ev);
        first_error(&v, detail, sizeof(detail));
        if (order_id)
            rc = reserve_failed(c, t, order_id, "invalid", detail, 0);
        else
            moat_log(MOAT_LOG_WARN,
                     "malformed ReserveStock without an order id skipped",
                     "{s:I, s:s}", "seq", (json_int_t)ev->seq, "detail",
                     detail);
        goto cleanup;
    }
    rc = inv_store_reserve_in(c->store, t, c->want, c->max_open, c->res,
                              &result, c->shortages, &nshort);
    if (rc != MOAT_OK)
        goto cleanup;
    const char *order_id = c->want->order_id;
    switch (result) {
    case INV_RESERVED:
        moat_log(MOAT_LOG_DEBUG, "stock reserved", "{s:s, s:s, s:I}",
                 "order_id", order_id, "customer_id", c->want->customer_id,
                 "lines", (json_int_t)c->want->nlines);
        inv_audit_reservation(c->audit, NULL, "stock.reserve", c->res);
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

static int apply_release(struct inv_applier *c, struct moat_kv_txn *t,
                         const struct moat_event *ev)
{
    enum inv_transition_result result;
    const char *order_id = jstr(ev->data, "order_id");
    if (!order_id || !inv_ref_valid(order_id)) {
        moat_log(MOAT_LOG_WARN, "malformed ReleaseStock skipped", "{s:I, s:s}",
                 "seq", (json_int_t)ev->seq, "detail",
                 "/order_id: must be 1 to 64 of A-Z a-z 0-9 . _ -");
        return MOAT_OK;
    }
    int rc = inv_store_release_in(c->store, t, order_id, CALLER, true, c->res,
                                  &result);
    if (rc == MOAT_OK && result != INV_ALREADY) {
        moat_log(MOAT_LOG_DEBUG, "reservation released", "{s:s, s:b, s:b}",
                 "order_id", order_id, "tombstone", result == INV_ABSENT,
                 "returned", result == INV_RETURNED);
        inv_audit_reservation(c->audit, NULL, "stock.release", c->res);
    }
    return rc;
}

static int apply_commit(struct inv_applier *c, struct moat_kv_txn *t,
                        const struct moat_event *ev)
{
    enum inv_transition_result result;
    const char *order_id = jstr(ev->data, "order_id");
    if (!order_id || !inv_ref_valid(order_id)) {
        moat_log(MOAT_LOG_WARN, "malformed CommitStock skipped", "{s:I, s:s}",
                 "seq", (json_int_t)ev->seq, "detail",
                 "/order_id: must be 1 to 64 of A-Z a-z 0-9 . _ -");
        return MOAT_OK;
    }
    int rc =
        inv_store_commit_in(c->store, t, order_id, CALLER, c->res, &result);
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
    if (rc == MOAT_OK && result == INV_TRANSITIONED)
        inv_audit_reservation(c->audit, NULL, "stock.commit", c->res);
    return rc;
}

/*
 * The consumer's handler: MOAT_OK for every outcome of a command (a
 * refusal is a reply), an error for what the event or our store cannot
 * get past: a newer schema (parked), a store fault (held).
 */
static int on_command(struct moat_kv_txn *t, const struct moat_event *ev,
                      void *arg, const char **why)
{
    struct inv_applier *c = arg;
#ifdef MOAT_TEST_HOOKS
    /* Test builds: commands of orders named "poison-..." fail until
     * POST /_test/heal "deploys the fix" (the dead letter tests). */
    const char *order = command_order(ev);
    if (!*c->healed && order && strncmp(order, "poison-", 7) == 0) {
        *why = "test hook: poison order (POST /_test/heal cures it)";
        return MOAT_EINVAL;
    }
#endif
    /* The command in its current shape (orders' contract): a newer schema
     * than this inventory knows is parked until inventory is upgraded. */
    struct moat_event cur = *ev;
    json_t *data = NULL;
    int rc = orders_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc == MOAT_EINVAL) {
        /* Data that is not an object: the apply functions answer it
         * "invalid" to the subject, so the saga is not left waiting. */
        data = json_incref(ev->data);
        rc = MOAT_OK;
    }
    if (rc != MOAT_OK)
        return rc;
    cur.data = data;
    if (strcmp(ev->type, ORDERS_RESERVE_STOCK) == 0)
        rc = apply_reserve(c, t, &cur);
    else if (strcmp(ev->type, ORDERS_RELEASE_STOCK) == 0)
        rc = apply_release(c, t, &cur);
    else
        rc = apply_commit(c, t, &cur);
    json_decref(data);
    return rc;
}

/* ---- verification (moat_kv_view_ops) ---- */

static int scratch_open(const char *dir, struct moat_kv *live,
                        struct moat_kv **scratch, void **handler_arg, void *arg)
{
    MOAT_UNUSED(live); /* the live store is c->inv->store's */
    struct inv_consumer *c = arg;
    struct inv_scratch *x = moat_xcalloc(1, sizeof(*x));
    const struct inv_store_options opts = {.base = c->base, .source = c->name};
    x->metrics = moat_metrics_new();
    int rc = inv_store_open(&x->store, dir, x->metrics, &opts);
    if (rc == MOAT_OK)
        rc = inv_store_view_seed(x->store, c->inv->store);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot make inventory's verification store",
                 "{s:s, s:s}", "dir", dir, "error", moat_strerror(rc));
        inv_store_close(x->store);
        moat_metrics_free(x->metrics);
        free(x);
        return rc;
    }
    applier_init(&x->applier, x->store, c->live.max_open, c->live.healed);
    *scratch = inv_store_kv(x->store);
    *handler_arg = &x->applier;
    return MOAT_OK;
}

static void scratch_close(struct moat_kv *scratch, void *handler_arg, void *arg)
{
    MOAT_UNUSED(scratch);
    MOAT_UNUSED(arg);
    struct inv_scratch *x = handler_arg; /* applier is its first member */
    applier_release(&x->applier);
    inv_store_close(x->store);
    moat_metrics_free(x->metrics);
    free(x);
}

static int view_compare(struct moat_kv *live, struct moat_kv *scratch,
                        json_t *diffs, void *arg)
{
    MOAT_UNUSED(arg);
    return inv_store_view_compare(live, scratch, diffs);
}

/* ---- lifecycle ---- */

#ifdef MOAT_TEST_HOOKS
static void handle_test_heal(struct moat_req *r, void *arg)
{
    struct inv_consumer *c = arg;
    c->poison_healed = true;
    moat_log(MOAT_LOG_WARN, "test hook: poison orders healed", NULL);
    moat_req_reply_json(r, 200, json_pack("{s:b}", "healed", 1));
}
#endif

/*
 * The consumer must not pull before the service is confined and
 * listening (moat/events.h): lib/service.c enters the loop only then, so
 * a timer added with no delay at init fires at the right moment.
 */
static void on_start(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct inv_consumer *c = arg;
    moat_consumer_start(c->consumer);
}

int inv_consumer_new(struct inv_consumer **out, struct moat_service *svc,
                     struct inv_service *inv, const char *orders_url)
{
    static const struct moat_http_client_options copts = {
        .timeout_ms = FEED_CLIENT_TIMEOUT_MS,
    };
    struct inv_consumer *c = moat_xcalloc(1, sizeof(*c));
    c->inv = inv;
    c->base = svc->base;
    c->name = svc->cfg.name;
    applier_init(&c->live, inv->store, inv->max_open_per_customer,
                 &c->poison_healed);
    c->live.audit = inv->audit;
    int rc = moat_consumer_new_kv(&c->consumer, svc->base,
                                  inv_store_kv(inv->store), svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    moat_consumer_set_outbox(c->consumer, inv_store_outbox(inv->store));
    const struct moat_kv_view_ops view = {
        .scratch_open = scratch_open,
        .scratch_close = scratch_close,
        .compare = view_compare,
        .reset = NULL, /* stock is not a view: no plain replay */
        .arg = c,
    };
    rc = moat_consumer_register_admin_kv(c->consumer, svc->http,
                                         svc->cfg.data_dir, &view);
#ifdef MOAT_TEST_HOOKS
    if (rc == MOAT_OK)
        rc = moat_http_route(svc->http, MOAT_POST, "/_test/heal",
                             handle_test_heal, c);
#endif
    if (rc != MOAT_OK || !orders_url || !orders_url[0])
        goto cleanup; /* no saga: the admin routes show no source */

    rc = moat_http_client_new(&c->client, svc->base, &copts);
    if (rc != MOAT_OK)
        goto cleanup;
    struct moat_event_source *src =
        moat_feed_source_new(SOURCE, orders_url, c->client, svc->auth);
    if (!src) {
        rc = MOAT_EINVAL; /* logged */
        goto cleanup;
    }
    char *epochs = moat_epoch_dir(svc); /* orders restored: rewind */
    moat_feed_source_set_epoch_dir(src, epochs);
    free(epochs);
    const struct moat_subscription sub = {
        .source = src,
        .types = command_types,
        .kv_handler = on_command,
        .arg = &c->live,
    };
    rc = moat_consumer_subscribe(c->consumer, &sub);
    if (rc != MOAT_OK) {
        src->ops->free(src); /* not taken: the consumer refused it */
        goto cleanup;
    }
    c->start = evtimer_new(svc->base, on_start, c);
    const struct timeval now = {0, 0};
    if (!c->start || evtimer_add(c->start, &now) != 0)
        rc = MOAT_EIO;

cleanup:
    if (rc != MOAT_OK) {
        inv_consumer_free(c);
        return rc;
    }
    *out = c;
    return MOAT_OK;
}

void inv_consumer_free(struct inv_consumer *c)
{
    if (!c)
        return;
    if (c->start)
        event_free(c->start);
    /* The consumer first: it owns the feed source, whose pull in flight
     * the client's free would otherwise complete into a freed consumer. */
    moat_consumer_free(c->consumer);
    moat_http_client_free(c->client);
    applier_release(&c->live);
    free(c);
}
