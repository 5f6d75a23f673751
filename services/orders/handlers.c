/*
 * handlers.c - orders' HTTP API (docs/orders.md): placing an order (with
 * Idempotency-Key and catalog's prices), reading and listing orders, a
 * customer's cancel, and the saga summary for operators.
 *
 * Authorisation: an end user (the gateway's principal) sees and cancels
 * only their own orders - someone else's is a 404, so ids cannot be
 * probed; an admin, or a service calling without an end user (the
 * auditor, notifications), sees every order.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "orders.h"

#define LIST_LIMIT_DEFAULT 100
#define LIST_LIMIT_MAX     500
#define RETRY_AFTER_S      "1"
#define PROBLEM_IDEM       "urn:moat:problem:idempotency-key-"

/* ---- authorisation ---- */

/* The customer a request is limited to, or NULL when it may see all. */
static const char *only_customer(const struct moat_req *req)
{
    const struct moat_principal *p = moat_req_principal(req);
    if (!p->user_id[0] || moat_principal_is_admin(p))
        return NULL;
    return p->user_id;
}

static bool may_see(const struct moat_req *req, const struct ord_order *o)
{
    const char *only = only_customer(req);
    return !only || strcmp(only, o->customer_id) == 0;
}

/* ---- JSON ---- */

static json_t *nullable_str(const char *s)
{
    return s && s[0] ? json_string(s) : json_null();
}

static json_t *nullable_time(int64_t ms)
{
    return ms ? json_integer(ms / 1000) : json_null();
}

static json_t *order_json(struct ord_service *os, const struct ord_order *o)
{
    char trace_id[33] = "";
    if (strlen(o->traceparent) == 55)
        snprintf(trace_id, sizeof(trace_id), "%.32s", o->traceparent + 3);
    json_t *lines = json_array();
    for (size_t i = 0; i < o->nlines; i++) {
        const struct ord_line *l = &o->lines[i];
        json_array_append_new(
            lines, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "product_id",
                             l->product_id, "sku", l->sku, "name", l->name,
                             "unit_price", (json_int_t)l->unit_price,
                             "quantity", (json_int_t)l->quantity, "line_total",
                             (json_int_t)(l->unit_price * l->quantity)));
    }
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:o, s:I, s:s, s:o, s:o, s:o, s:s, s:I, "
        "s:I, s:I, s:o}",
        "id", o->id, "object", "order", "customer_id", o->customer_id, "status",
        o->status, "step", o->step, "cancel_reason",
        nullable_str(o->cancel_reason), "total", (json_int_t)o->total,
        "currency", o->currency, "lines", lines, "payment_id",
        nullable_str(o->payment_id), "deadline_at",
        nullable_time(o->deadline_ms), "trace_id", trace_id, "version",
        (json_int_t)o->version, "created_at",
        (json_int_t)(o->created_ms / 1000), "updated_at",
        (json_int_t)(o->updated_ms / 1000), "completed_at",
        nullable_time(o->completed_ms));
    struct ord_customer c;
    if (ord_customer_get(os->db, os->kr, o->customer_id, &c) == MOAT_OK) {
        json_object_set_new(j, "customer",
                            json_pack("{s:o, s:o}", "name",
                                      nullable_str(c.name), "email",
                                      nullable_str(c.email)));
        ord_customer_release(&c);
    } else {
        json_object_set_new(j, "customer", json_null());
    }
    return j;
}

/* ---- the busy list (idempotency keys being served) ---- */

static bool busy_take(struct ord_service *os, const char *key)
{
    for (size_t i = 0; i < os->nbusy; i++)
        if (strcmp(os->busy[i], key) == 0)
            return false;
    if (os->nbusy == os->busy_cap) {
        os->busy_cap = os->busy_cap ? 2 * os->busy_cap : 16;
        os->busy = moat_xrealloc(os->busy, os->busy_cap * sizeof(os->busy[0]));
    }
    os->busy[os->nbusy++] = moat_xstrdup(key);
    return true;
}

static void busy_drop(struct ord_service *os, const char *key)
{
    if (!key)
        return;
    for (size_t i = 0; i < os->nbusy; i++) {
        if (strcmp(os->busy[i], key) == 0) {
            free(os->busy[i]);
            os->busy[i] = os->busy[--os->nbusy];
            return;
        }
    }
}

/* ---- POST /v1/orders ---- */

/* One order being placed: waiting for catalog's answers. */
struct place {
    struct ord_service *os;
    struct moat_req *req;
    struct moat_trace trace; /* copy: for the calls and the stored order */
    char key[ORD_IDEM_KEY_MAX + 1];
    char fingerprint[65];
    char *busy_key; /* owned */
    struct ord_order o;
    size_t pending; /* catalog calls out */
    /* The first failure: 422 (problem with errors) or 503. */
    json_t *problem;
    struct place *next; /* in os->placing */
    int rc;             /* of storing it in the group commit */
};

static void place_free(struct place *pl)
{
    busy_drop(pl->os, pl->busy_key);
    free(pl->busy_key);
    json_decref(pl->problem);
    ord_order_release(&pl->o);
    free(pl);
}

static bool token_ok(const char *s)
{
    return moat_ref_valid(s, ORD_TOKEN_MAX);
}

/* Validate the body into pl->o's lines and card token. NULL or a 422. */
static json_t *parse_body(json_t *body, struct place *pl)
{
    static const char *const keys[] = {"lines", "card_token", NULL};
    static const char *const line_keys[] = {"product_id", "quantity", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", keys);
    const char *token = NULL;
    if (moat_v_string(&v, body, "", "card_token", true, 1, ORD_TOKEN_MAX,
                      &token) &&
        !token_ok(token))
        moat_validation_add(&v, "/card_token",
                            "must be a payment provider token "
                            "([A-Za-z0-9_-], 1 to 64)");
    else if (token)
        snprintf(pl->o.card_token, sizeof(pl->o.card_token), "%s", token);
    json_t *lines = json_object_get(body, "lines");
    if (!json_is_array(lines) || json_array_size(lines) < 1 ||
        json_array_size(lines) > ORD_LINES_MAX) {
        moat_validation_add(&v, "/lines", "must be an array of 1 to %d lines",
                            ORD_LINES_MAX);
    } else {
        size_t n = json_array_size(lines);
        pl->o.lines = moat_xcalloc(n, sizeof(pl->o.lines[0]));
        for (size_t i = 0; i < n; i++) {
            json_t *l = json_array_get(lines, i);
            char base[32];
            snprintf(base, sizeof(base), "/lines/%zu", i);
            if (!json_is_object(l)) {
                moat_validation_add(&v, base, "must be an object");
                continue;
            }
            moat_v_known_keys(&v, l, base, line_keys);
            const char *pid = NULL;
            int64_t qty = 0;
            bool ok = moat_v_string(&v, l, base, "product_id", true, 1,
                                    ORD_REF_MAX, &pid);
            ok &=
                moat_v_int(&v, l, base, "quantity", true, 1, ORD_QTY_MAX, &qty);
            if (pid && !moat_id_valid(pid, "prod_")) {
                char ptr[48];
                moat_json_pointer(ptr, sizeof(ptr), base, "product_id");
                moat_validation_add(&v, ptr, "is not a product id");
                ok = false;
            }
            for (size_t k = 0; ok && k < pl->o.nlines; k++) {
                if (strcmp(pl->o.lines[k].product_id, pid) == 0) {
                    moat_validation_add(&v, base,
                                        "repeats the product of line %zu", k);
                    ok = false;
                }
            }
            if (!ok)
                continue;
            struct ord_line *ol = &pl->o.lines[pl->o.nlines++];
            snprintf(ol->product_id, sizeof(ol->product_id), "%s", pid);
            ol->quantity = qty;
        }
    }
    json_t *problem = NULL;
    if (!moat_validation_ok(&v))
        problem = moat_validation_problem(&v, "the order is not valid");
    moat_validation_release(&v);
    return problem;
}

/* SHA-256 of the canonical body (sorted keys, compact), in hex. */
static bool body_fingerprint(json_t *body, char out[65])
{
    char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (!canon)
        return false;
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)canon, strlen(canon));
    sodium_memzero(canon, strlen(canon)); /* holds the card token */
    free(canon);
    moat_hex(out, h, sizeof(h));
    return true;
}

static void reply_order(struct ord_service *os, struct moat_req *req,
                        const char *id, int status, bool replayed)
{
    struct ord_order o;
    int rc = ord_order_get(os->db, id, true, &o);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "orders", "serve the request");
        return;
    }
    char loc[64];
    snprintf(loc, sizeof(loc), "/v1/orders/%s", o.id);
    moat_req_set_header(req, "Location", loc);
    if (replayed)
        moat_req_set_header(req, "Idempotent-Replayed", "true");
    moat_req_reply_json(req, status, order_json(os, &o));
    ord_order_release(&o);
}

/* Store pl's order inside the group's transaction, in a savepoint of its
 * own: a failure undoes this order only. */
static int place_store(struct ord_service *os, struct place *pl)
{
    moat_trace_format(&pl->trace, pl->o.traceparent);
    moat_id_new(ORD_ID_PREFIX, pl->o.id, sizeof(pl->o.id));
    pl->o.total = 0;
    for (size_t i = 0; i < pl->o.nlines; i++)
        pl->o.total += pl->o.lines[i].unit_price * pl->o.lines[i].quantity;
    struct ord_customer c;
    int rc = moat_db_exec(os->db, "place_savepoint", "SAVEPOINT place");
    if (rc != MOAT_OK)
        return rc;
    rc = ord_idem_insert(os->db, pl->o.customer_id, pl->key, pl->fingerprint,
                         pl->o.id, moat_wall_ms());
    if (rc == MOAT_OK) {
        rc = ord_customer_get(os->db, NULL, pl->o.customer_id, &c);
        if (rc == MOAT_OK)
            ord_customer_release(&c);
        else if (rc == MOAT_ENOTFOUND) /* the refresher fetches it */
            rc = ord_customer_mark_stale(os->db, pl->o.customer_id,
                                         moat_wall_ms());
    }
    if (rc == MOAT_OK)
        rc = ord_saga_place(os, &pl->o);
    if (rc != MOAT_OK)
        moat_db_exec(os->db, "place_rollback_to", "ROLLBACK TO place");
    int rrc = moat_db_exec(os->db, "place_release", "RELEASE place");
    return rc == MOAT_OK ? rrc : rc;
}

/*
 * Group commit: the orders whose products came in during this loop turn
 * are stored in one transaction (one fsync), each in its own savepoint,
 * and each answered once that transaction committed. After a failure
 * the rest of the group is answered with it, not stored: some errors
 * (a full disk, I/O) end the whole transaction, and a savepoint opened
 * after that would commit on its own.
 */
static void place_flush(struct ord_service *os)
{
    struct place *list = NULL;
    while (os->placing) { /* oldest first */
        struct place *pl = os->placing;
        os->placing = pl->next;
        pl->next = list;
        list = pl;
    }
    if (!list)
        return;
    const struct moat_trace *saved = moat_log_trace();
    int rc = moat_db_begin(os->db);
    bool any = false;
    int failed = rc; /* SQLite may have ended the transaction: stop there */
    for (struct place *pl = list; pl; pl = pl->next) {
        moat_log_set_trace(&pl->trace);
        pl->rc = failed == MOAT_OK ? place_store(os, pl) : failed;
        any = any || pl->rc == MOAT_OK;
        failed = pl->rc;
    }
    if (rc == MOAT_OK) {
        if (any)
            rc = moat_db_commit(os->db);
        else
            moat_db_rollback(os->db);
    }
    if (rc == MOAT_OK && any)
        moat_outbox_committed(os->outbox);
    for (struct place *pl = list, *next; pl; pl = next) {
        next = pl->next;
        moat_log_set_trace(&pl->trace);
        if (rc != MOAT_OK && pl->rc == MOAT_OK)
            pl->rc = rc; /* the commit failed: nothing was stored */
        if (pl->rc == MOAT_OK) {
            ord_audit(os, pl->req, &pl->o, "order.placed");
            moat_log(MOAT_LOG_INFO, "order placed", "{s:s, s:s, s:I, s:s}",
                     "order", pl->o.id, "customer", pl->o.customer_id, "total",
                     (json_int_t)pl->o.total, "currency", pl->o.currency);
            reply_order(os, pl->req, pl->o.id, 201, false);
        } else {
            moat_log(MOAT_LOG_ERROR, "cannot store an order", "{s:s}", "error",
                     moat_strerror(pl->rc));
            moat_req_reply_store_error(pl->req, pl->rc, "orders",
                                       "serve the request");
        }
        place_free(pl);
    }
    moat_log_set_trace(saved);
}

static void on_place_flush(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    place_flush(arg);
}

/* All catalog answers are in: queue the order for this loop turn's group
 * commit, or answer the failure. */
static void place_finish(struct place *pl)
{
    struct ord_service *os = pl->os;
    struct moat_req *req = pl->req;
    if (pl->problem) {
        if (json_integer_value(json_object_get(pl->problem, "status")) == 503)
            moat_req_set_header(req, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(req, pl->problem);
        pl->problem = NULL;
        place_free(pl);
        return;
    }
    bool first = !os->placing;
    pl->next = os->placing;
    os->placing = pl;
    if (!os->place_flush)
        place_flush(os);
    else if (first)
        event_active(os->place_flush, EV_TIMEOUT, 1);
}

static void fail_503(struct place *pl, const char *detail)
{
    if (!pl->problem)
        pl->problem = moat_problem_new(503, detail);
}

static void fail_line(struct place *pl, size_t i, const char *detail)
{
    if (pl->problem &&
        json_integer_value(json_object_get(pl->problem, "status")) == 503)
        return; /* unavailability wins: the client retries anyway */
    if (!pl->problem)
        pl->problem = moat_problem_new(422, "the order is not valid");
    char ptr[48];
    snprintf(ptr, sizeof(ptr), "/lines/%zu/product_id", i);
    moat_problem_add_error(pl->problem, ptr, detail);
}

struct lookup {
    struct place *pl;
    size_t line;
};

/* Copy catalog's product into the line (name, SKU, price snapshot). */
static void take_product(struct place *pl, size_t i, const char *body,
                         size_t len)
{
    struct ord_line *l = &pl->o.lines[i];
    json_t *p = json_loadb(body, len, 0, NULL);
    json_t *price = json_object_get(p, "price");
    const char *sku = json_string_value(json_object_get(p, "sku"));
    const char *name = json_string_value(json_object_get(p, "name"));
    const char *cur = json_string_value(json_object_get(price, "currency"));
    json_t *amount = json_object_get(price, "amount");
    if (!sku || !name || !cur || strlen(cur) != 3 || !json_is_integer(amount) ||
        strlen(sku) > ORD_SKU_MAX) {
        fail_503(pl, "catalog answered with a product orders cannot read");
        json_decref(p);
        return;
    }
    snprintf(l->sku, sizeof(l->sku), "%s", sku);
    l->name = moat_xstrdup(name);
    l->unit_price = json_integer_value(amount);
    if (!pl->o.currency[0])
        snprintf(pl->o.currency, sizeof(pl->o.currency), "%s", cur);
    else if (strcmp(pl->o.currency, cur) != 0)
        fail_line(pl, i, "is priced in another currency than line 0");
    json_decref(p);
}

static void on_product(const struct moat_http_response *resp, void *arg)
{
    struct lookup *lk = arg;
    struct place *pl = lk->pl;
    size_t i = lk->line;
    free(lk);
    if (resp->err == MOAT_ECANCELLED) {
        /* Shutting down: answer as unavailable. */
        fail_503(pl, "orders is shutting down");
    } else if (resp->err != MOAT_OK || resp->status >= 500) {
        moat_log(MOAT_LOG_WARN, "catalog unavailable", "{s:i, s:s}", "status",
                 resp->status, "error",
                 resp->err ? moat_strerror(resp->err) : "");
        fail_503(pl, "the catalog is unavailable; nothing was stored");
    } else if (resp->status == 404 || resp->status == 410) {
        fail_line(pl, i, "no such product");
    } else if (resp->status != 200) {
        fail_503(pl, "the catalog refused the product lookup");
    } else {
        take_product(pl, i, resp->body, resp->body_len);
    }
    if (--pl->pending == 0)
        place_finish(pl);
}

/* Ask catalog for every line's product, in parallel. */
static void lookup_products(struct place *pl)
{
    struct ord_service *os = pl->os;
    char *token = NULL;
    if (os->svc->auth &&
        moat_auth_token(os->svc->auth, "catalog", moat_req_principal(pl->req),
                        &token) != MOAT_OK) {
        moat_req_reply_problem(pl->req, 500,
                               "orders cannot authenticate to catalog");
        place_free(pl);
        return;
    }
    const struct moat_http_header h[] = {{MOAT_SERVICE_TOKEN_HEADER, token}};
    pl->pending = 1; /* held until every call is out */
    for (size_t i = 0; i < pl->o.nlines; i++) {
        char *url = moat_xasprintf("%s/v1/products/%s", os->catalog_url,
                                   pl->o.lines[i].product_id);
        const struct moat_http_call call = {
            .method = "GET",
            .url = url,
            .headers = h,
            .nheaders = token ? 1 : 0,
            .timeout_ms = os->api_timeout_ms,
            .trace = &pl->trace,
        };
        struct lookup *lk = moat_xcalloc(1, sizeof(*lk));
        lk->pl = pl;
        lk->line = i;
        if (moat_http_client_send(os->api, &call, on_product, lk) == MOAT_OK) {
            pl->pending++;
        } else {
            free(lk);
            fail_503(pl, "orders cannot call the catalog");
        }
        free(url);
    }
    free(token);
    if (--pl->pending == 0)
        place_finish(pl);
}

static void handle_place(struct moat_req *req, void *arg)
{
    struct ord_service *os = arg;
    if (!moat_req_require_user(req))
        return;
    const struct moat_principal *who = moat_req_principal(req);
    const char *hkey = moat_req_header(req, "Idempotency-Key");
    struct place *pl = moat_xcalloc(1, sizeof(*pl));
    pl->os = os;
    pl->req = req;
    pl->trace = *moat_req_trace(req);
    snprintf(pl->o.customer_id, sizeof(pl->o.customer_id), "%s", who->user_id);
    json_t *body = NULL;

    if (!hkey) {
        moat_req_reply_problem_json(
            req, moat_problem_typed(400, PROBLEM_IDEM "missing",
                                    "an Idempotency-Key header is required"));
        goto fail;
    }
    if (!moat_idem_key_parse(hkey, pl->key)) {
        moat_req_reply_problem_json(
            req, moat_problem_typed(400, PROBLEM_IDEM "malformed",
                                    "the Idempotency-Key must be 1 to 255 "
                                    "visible ASCII characters"));
        goto fail;
    }
    if (moat_req_json(req, &body) != MOAT_OK)
        goto fail; /* answered */
    if (!json_is_object(body)) {
        moat_req_reply_problem(req, 422, "the order must be a JSON object");
        goto fail;
    }
    json_t *problem = parse_body(body, pl);
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        goto fail;
    }
    if (!body_fingerprint(body, pl->fingerprint)) {
        moat_req_reply_problem(req, 500, "cannot fingerprint the order");
        goto fail;
    }
    json_decref(body);
    body = NULL;

    char fp[65], existing[ORD_ID_MAX];
    int rc = ord_idem_get(os->db, pl->o.customer_id, pl->key, fp, existing);
    if (rc == MOAT_OK) {
        if (strcmp(fp, pl->fingerprint) != 0) {
            moat_req_reply_problem_json(
                req, moat_problem_typed(422, PROBLEM_IDEM "reused",
                                        "this Idempotency-Key was used for "
                                        "another order"));
            goto fail;
        }
        reply_order(os, req, existing, 201, true);
        goto fail;
    }
    if (rc != MOAT_ENOTFOUND) {
        moat_req_reply_store_error(req, rc, "orders", "serve the request");
        goto fail;
    }
    pl->busy_key = moat_xasprintf("%s\n%s", pl->o.customer_id, pl->key);
    if (!busy_take(os, pl->busy_key)) {
        free(pl->busy_key);
        pl->busy_key = NULL;
        moat_req_set_header(req, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            req, moat_problem_typed(409, PROBLEM_IDEM "in-progress",
                                    "an order with this Idempotency-Key is "
                                    "still being placed"));
        goto fail;
    }
    lookup_products(pl);
    return;

fail:
    json_decref(body);
    place_free(pl);
}

/* ---- reading ---- */

static void handle_get(struct moat_req *req, void *arg)
{
    struct ord_service *os = arg;
    const char *id = moat_req_param(req, "id");
    struct ord_order o;
    int rc = moat_id_valid(id, ORD_ID_PREFIX)
                 ? ord_order_get(os->db, id, true, &o)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND || (rc == MOAT_OK && !may_see(req, &o))) {
        if (rc == MOAT_OK)
            ord_order_release(&o);
        moat_req_reply_problem(req, 404, "no such order");
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "orders", "serve the request");
        return;
    }
    moat_req_reply_json(req, 200, order_json(os, &o));
    ord_order_release(&o);
}

struct list_ctx {
    struct ord_service *os;
    json_t *items;
    int rc;
};

static void list_one(const struct ord_order *o, void *arg)
{
    struct list_ctx *lc = arg;
    /* Lines too: the auditor compares them with the reservations. */
    struct ord_order full = *o;
    if (lc->rc == MOAT_OK)
        lc->rc = ord_order_lines_load(lc->os->db, &full);
    json_array_append_new(lc->items, order_json(lc->os, &full));
    ord_order_release(&full);
}

static void handle_list(struct moat_req *req, void *arg)
{
    struct ord_service *os = arg;
    struct moat_qparam q[] = {
        {.name = "customer_id",
         .kind = MOAT_Q_STR,
         .min = 1,
         .max = ORD_REF_MAX},
        {.name = "status", .kind = MOAT_Q_STR, .min = 1, .max = 16},
        {.name = "after", .kind = MOAT_Q_STR, .min = 1, .max = ORD_ID_MAX},
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = LIST_LIMIT_MAX},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    const char *status = q[1].sval;
    if (!problem && status && strcmp(status, "pending") != 0 &&
        strcmp(status, "confirmed") != 0 && strcmp(status, "cancelled") != 0)
        moat_problem_param_error(&problem, "status",
                                 "must be pending, confirmed or cancelled");
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    const char *only = only_customer(req);
    const char *customer = only ? only : q[0].sval;
    size_t limit = q[3].seen ? (size_t)q[3].ival : LIST_LIMIT_DEFAULT;
    struct list_ctx lc = {.os = os, .items = json_array()};
    int rc = ord_orders_list(os->db, customer, status, q[2].sval, limit + 1,
                             list_one, &lc);
    if (rc == MOAT_OK)
        rc = lc.rc;
    if (rc != MOAT_OK) {
        json_decref(lc.items);
        moat_req_reply_store_error(req, rc, "orders", "serve the request");
        return;
    }
    json_t *next = json_null();
    if (json_array_size(lc.items) > limit) {
        json_array_remove(lc.items, limit);
        json_t *last = json_array_get(lc.items, limit - 1);
        next = json_incref(json_object_get(last, "id"));
    }
    moat_req_reply_json(
        req, 200,
        json_pack("{s:o, s:o}", "orders", lc.items, "next_after", next));
}

/* ---- cancelling ---- */

static void handle_cancel(struct moat_req *req, void *arg)
{
    struct ord_service *os = arg;
    const char *id = moat_req_param(req, "id");
    if (!moat_id_valid(id, ORD_ID_PREFIX)) {
        moat_req_reply_problem(req, 404, "no such order");
        return;
    }
    struct ord_order o;
    bool changed = false;
    int rc = moat_db_begin(os->db);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "orders", "serve the request");
        return;
    }
    rc = ord_order_get(os->db, id, true, &o);
    if (rc == MOAT_OK && !may_see(req, &o)) {
        ord_order_release(&o);
        rc = MOAT_ENOTFOUND;
    }
    if (rc == MOAT_OK) {
        const struct moat_trace *saved = moat_log_trace();
        struct moat_trace t;
        moat_trace_start(&t, o.traceparent, NULL);
        moat_log_set_trace(&t);
        rc = ord_saga_cancel(os, &o, &changed);
        moat_log_set_trace(saved);
        if (rc == MOAT_OK)
            rc = moat_db_commit(os->db);
        if (rc == MOAT_OK && changed)
            ord_audit(os, req, &o, "order.cancel");
        ord_order_release(&o);
    }
    if (rc != MOAT_OK)
        moat_db_rollback(os->db);
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(req, 404, "no such order");
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "orders", "serve the request");
        return;
    }
    if (changed)
        moat_outbox_committed(os->outbox);
    reply_order(os, req, id, changed ? 202 : 200, false);
}

static void handle_sagas(struct moat_req *req, void *arg)
{
    struct ord_service *os = arg;
    if (only_customer(req)) {
        moat_req_reply_problem(req, 403, "operators only");
        return;
    }
    json_t *out = NULL;
    int rc = ord_sagas_summary(os->db, moat_wall_ms(), &out);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "orders", "serve the request");
        return;
    }
    moat_req_reply_json(req, 200, out);
}

void ord_routes_stop(struct ord_service *os)
{
    place_flush(os);
    if (os->place_flush)
        event_free(os->place_flush);
    os->place_flush = NULL;
}

int ord_routes_register(struct ord_service *os)
{
    struct moat_http_server *h = os->svc->http;
    os->place_flush = event_new(os->svc->base, -1, 0, on_place_flush, os);
    if (!os->place_flush)
        moat_die("cannot create the orders group commit event");
    int rc = moat_http_route(h, MOAT_POST, "/v1/orders", handle_place, os);
    if (rc == MOAT_OK)
        rc = moat_http_route(h, MOAT_GET, "/v1/orders", handle_list, os);
    if (rc == MOAT_OK)
        rc = moat_http_route(h, MOAT_GET, "/v1/orders/{id}", handle_get, os);
    if (rc == MOAT_OK)
        rc = moat_http_route(h, MOAT_POST, "/v1/orders/{id}/cancel",
                             handle_cancel, os);
    if (rc == MOAT_OK)
        rc = moat_http_route(h, MOAT_GET, "/v1/admin/sagas", handle_sagas, os);
    if (rc == MOAT_OK)
        rc = ord_recover_register(os);
#ifdef MOAT_TEST_HOOKS
    if (rc == MOAT_OK)
        rc = ord_test_hooks_register(os);
#endif
    return rc;
}
