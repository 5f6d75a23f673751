/*
 * compose.c - API composition: GET /api/v1/orders/{id}/details answers one
 * order together with what other services know about it (docs/design.md,
 * "Queries across services"):
 *
 *  1. The order from orders (GET /v1/orders/{id}), acting for the end user,
 *     so orders decides who may see it (someone else's order is its 404,
 *     passed through). Without the order there is nothing to compose:
 *     orders down, slow or behind an open circuit is a 503 with
 *     Retry-After.
 *  2. Then, in parallel, each call bounded by the composition timeout:
 *     the customer from users, each distinct product of the lines from
 *     catalog, the order's payments from payments and its notifications
 *     from notifications. Whatever has not answered usefully when the
 *     timeout passes is left out (null) and named in "partial"; the answer
 *     is still a 200. A deadline timer guarantees the bound even if a call
 *     outlives its own timeout (a call waiting for a pooled connection).
 *
 * Every backend has a circuit breaker (moat/breaker.h): after repeated
 * failures (connection refused, timeout, 5xx or 429, an unusable 200) its
 * calls are skipped at once, so a dead backend costs nothing, and one probe
 * per cool-down finds out when it is back. 404 and other 4xx answers are
 * the backend working and never trip it.
 *
 * Lifetime: a struct compose lives while its request is unanswered or one
 * of its HTTP calls is pending (refs). After the answer, late callbacks
 * only drop their reference. Calls are answered by the HTTP client even
 * when it is freed (MOAT_ECANCELLED), so nothing outlives the gateway.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "moat/auth.h"
#include "moat/config.h"
#include "moat/log.h"
#include "moat/problem.h"

#define GW_DEFAULT_COMPOSE_TIMEOUT_MS 300
#define GW_MAX_COMPOSE_TIMEOUT_MS     60000
#define GW_MAX_BREAKER_FAILURES       1000
#define GW_MAX_BREAKER_COOLDOWN_MS    600000
/* Products looked up per order (orders allows 50 lines). */
#define GW_COMPOSE_MAX_PRODUCTS 64
/* Ids we put into a backend URL: moat ids are far shorter. */
#define GW_COMPOSE_ID_MAX 64

static const char *const backend_names[GW_BACKENDS] = {
    [GW_BK_ORDERS] = "orders",
    [GW_BK_USERS] = "users",
    [GW_BK_CATALOG] = "catalog",
    [GW_BK_PAYMENTS] = "payments",
    [GW_BK_NOTIFICATIONS] = "notifications",
    [GW_BK_POSTS] = "posts",
    [GW_BK_MESSAGING] = "messaging",
    [GW_BK_COMMENTS] = "comments",
};

/*
 * The messages a conversation's composition shows: its newest page, and
 * the comments of each (one call to comments per message).
 */
#define GW_COMPOSE_MESSAGES 20
/* Top-level comments per post or message: comments' page limit. */
#define GW_COMPOSE_COMMENTS 50
/* Said in every answer whose comments could not be read. */
#define GW_COMMENTS_NOTICE "comments are temporarily unavailable"

/* What each kind of composition reads first and says when it cannot. */
static const struct kind_info {
    enum gw_backend_id main; /* the resource without which nothing is shown */
    unsigned parts;          /* bits (1 << backend) of the other backends */
    const char *what;        /* "the order details" in error details */
    bool needs_user;         /* 401 without an end user */
} kinds[] = {
    [GW_COMPOSE_ORDER] = {GW_BK_ORDERS,
                          1u << GW_BK_USERS | 1u << GW_BK_CATALOG |
                              1u << GW_BK_PAYMENTS | 1u << GW_BK_NOTIFICATIONS,
                          "the order details", true},
    [GW_COMPOSE_POST] = {GW_BK_POSTS, 1u << GW_BK_COMMENTS,
                         "the post with its comments", false},
    [GW_COMPOSE_CONVERSATION] = {GW_BK_MESSAGING, 1u << GW_BK_COMMENTS,
                                 "the conversation with its comments", true},
};

static const char *const reason_names[GW_FAIL_REASONS] = {
    [GW_FAIL_CONNECT] = "connect",
    [GW_FAIL_TIMEOUT] = "timeout",
    [GW_FAIL_TOO_BIG] = "too_big",
    [GW_FAIL_BAD_RESPONSE] = "bad_response",
    [GW_FAIL_STATUS] = "status",
    [GW_FAIL_CIRCUIT_OPEN] = "circuit_open",
    [GW_FAIL_UNCONFIGURED] = "unconfigured",
    [GW_FAIL_CANCELLED] = "cancelled",
};

/* gateway_compose_requests_total{result}. */
enum result {
    RES_COMPLETE,    /* 200, every backend answered */
    RES_PARTIAL,     /* 200 with a non-empty "partial" */
    RES_NOT_FOUND,   /* the main backend's 404 passed through */
    RES_REJECTED,    /* another 4xx from it, passed through */
    RES_UNAVAILABLE, /* 503: no main resource to compose */
    RESULTS,
};
static const char *const result_names[RESULTS] = {
    [RES_COMPLETE] = "complete",       [RES_PARTIAL] = "partial",
    [RES_NOT_FOUND] = "not_found",     [RES_REJECTED] = "rejected",
    [RES_UNAVAILABLE] = "unavailable",
};

/* One backend's share of a composition. */
struct part {
    unsigned pending; /* calls under way (catalog: one per product) */
    bool started;     /* the breaker let it through */
    bool probe;       /* it is the breaker's probe */
    bool settled;     /* outcome decided (all answered, or the deadline) */
    bool failed;      /* listed in "partial" */
    bool trips;       /* counts as a failure for the breaker */
    enum gw_fail_reason reason; /* the first failure's */
};

struct compose {
    struct gw *gw;        /* borrowed */
    struct moat_req *req; /* NULL once answered */
    unsigned refs;        /* pending calls + 1 while req is unanswered */
    enum gw_compose_kind kind;
    bool v2; /* render the answer as API v2 (a proxied /api/v2 route) */
    struct moat_principal who;
    struct moat_trace trace; /* the request's, for logs after the answer */
    char id[GW_COMPOSE_ID_MAX + 1]; /* the order, post or conversation */
    struct event *deadline;         /* armed while the backends are asked */
    json_t *main;                   /* the order, post or messages page */
    json_t *customer;               /* users' answer; NULL until then */
    json_t *products;               /* {product_id: product | null} */
    json_t *payment;                /* the latest of payments' items, or NULL */
    json_t *notifications;          /* notifications' list, or NULL */
    /* Comments' items: an array (post), or {message_id: items}. */
    json_t *comments;
    struct part parts[GW_BACKENDS];
};

/* One HTTP call of a composition. */
struct compose_call {
    struct compose *c;
    enum gw_backend_id bk;
    /* The product (catalog) or message (comments of a conversation). */
    char key[GW_COMPOSE_ID_MAX + 1];
};

/* [A-Za-z0-9_-]{1,64}: safe in a URL path or query without escaping. */
static bool valid_id(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > GW_COMPOSE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* ---- breakers and metrics ---- */

static void update_gauge(struct gw_backend *b, uint64_t now)
{
    moat_metric_set(b->m_state, (double)moat_breaker_state(&b->breaker, now));
}

static void collect(struct moat_metrics *m, void *arg)
{
    MOAT_UNUSED(m);
    struct gw *gw = arg;
    uint64_t now = moat_mono_ms();
    for (int i = 0; i < GW_BACKENDS; i++)
        update_gauge(&gw->backends[i], now);
}

static void count_result(struct gw *gw, enum result r)
{
    const char *labels[] = {result_names[r]};
    moat_metric_add(moat_metric_series(gw->m_compose, labels), 1);
}

/* Record a finished call's outcome in the backend's breaker. */
static void breaker_record(struct gw *gw, enum gw_backend_id bk, bool ok,
                           bool probe, const struct moat_trace *trace)
{
    struct gw_backend *b = &gw->backends[bk];
    uint64_t now = moat_mono_ms();
    if (moat_breaker_record(&b->breaker, ok, probe, now)) {
        enum moat_breaker_state st = moat_breaker_state(&b->breaker, now);
        moat_log_set_trace(trace);
        moat_log(st == MOAT_BREAKER_OPEN ? MOAT_LOG_WARN : MOAT_LOG_INFO,
                 "circuit breaker changed state", "{s:s, s:s}", "backend",
                 b->name, "state", moat_breaker_state_name(st));
        moat_log_set_trace(NULL);
    }
    update_gauge(b, now);
}

static bool breaker_allow(struct gw *gw, enum gw_backend_id bk, bool *probe,
                          uint64_t *retry_ms)
{
    struct gw_backend *b = &gw->backends[bk];
    uint64_t now = moat_mono_ms();
    bool ok = moat_breaker_allow(&b->breaker, now, probe, retry_ms);
    update_gauge(b, now);
    return ok;
}

/* The failure reason of a transport error. */
static enum gw_fail_reason transport_reason(const struct moat_http_response *r)
{
    switch (r->err) {
    case MOAT_ETIMEDOUT:
        return GW_FAIL_TIMEOUT;
    case MOAT_ETOOBIG:
        return GW_FAIL_TOO_BIG;
    case MOAT_ECANCELLED:
        return GW_FAIL_CANCELLED;
    default:
        return r->connect_failed ? GW_FAIL_CONNECT : GW_FAIL_BAD_RESPONSE;
    }
}

/* 5xx and 429 say the backend is in trouble; other statuses do not. */
static bool status_trips(int status)
{
    return status >= 500 || status == 429 || status < 200;
}

/* ---- the answer ---- */

static void compose_free(struct compose *c)
{
    if (c->deadline)
        event_free(c->deadline);
    json_decref(c->main);
    json_decref(c->comments);
    json_decref(c->customer);
    json_decref(c->products);
    json_decref(c->payment);
    json_decref(c->notifications);
    free(c);
}

static void compose_unref(struct compose *c)
{
    if (--c->refs == 0)
        compose_free(c);
}

static json_t *take_or_null(json_t **v)
{
    json_t *out = *v ? *v : json_null();
    *v = NULL;
    return out;
}

/* Drop the placeholders of products catalog did not answer for. */
static void prune_products(struct compose *c)
{
    const char *key;
    json_t *v;
    void *tmp;
    if (!c->products || !c->parts[GW_BK_CATALOG].failed)
        return;
    json_object_foreach_safe(c->products, tmp, key, v)
    {
        if (json_is_null(v))
            json_object_del(c->products, key);
    }
}

/* Answer the request with what the backends gave; drops its reference. */
static void finish(struct compose *c)
{
    struct gw *gw = c->gw;
    json_t *partial = json_array();

    if (c->deadline) {
        event_free(c->deadline);
        c->deadline = NULL;
    }
    prune_products(c);
    for (int i = GW_BK_USERS; i < GW_BACKENDS; i++)
        if (c->parts[i].failed)
            json_array_append_new(partial, json_string(backend_names[i]));
    bool complete = json_array_size(partial) == 0;
    json_t *body;
    if (c->kind == GW_COMPOSE_ORDER) {
        body = json_object();
        json_object_set_new(body, "order", take_or_null(&c->main));
        json_object_set_new(body, "customer", take_or_null(&c->customer));
        json_object_set_new(body, "products",
                            c->products ? take_or_null(&c->products)
                                        : json_object());
        json_object_set_new(body, "payment", take_or_null(&c->payment));
        json_object_set_new(body, "notifications",
                            take_or_null(&c->notifications));
    } else {
        /* The post, or messaging's page, with the comments beside. */
        body = take_or_null(&c->main);
        if (c->kind == GW_COMPOSE_CONVERSATION)
            json_object_set_new(body, "conversation_id", json_string(c->id));
        if (c->parts[GW_BK_COMMENTS].failed) {
            /* Some messages' comments are no answer: none is shown. */
            json_decref(c->comments);
            c->comments = NULL;
            json_object_set_new(body, "notice",
                                json_string(GW_COMMENTS_NOTICE));
        }
        json_object_set_new(body, "comments", take_or_null(&c->comments));
    }
    json_object_set_new(body, "partial", partial);
    if (c->v2)
        moat_api_v2_from_v1(body);
    count_result(gw, complete ? RES_COMPLETE : RES_PARTIAL);
    moat_req_set_header(c->req, "Cache-Control", "no-store");
    moat_req_reply_json(c->req, 200, body);
    c->req = NULL;
    compose_unref(c);
}

/* Mark bk failed (first reason wins); trips: it counts for the breaker. */
static void part_fail(struct compose *c, enum gw_backend_id bk,
                      enum gw_fail_reason reason, bool trips)
{
    struct part *p = &c->parts[bk];
    if (!p->failed)
        p->reason = reason;
    p->failed = true;
    p->trips = p->trips || trips;
}

/* The backend's outcome is decided: metrics, breaker, once. */
static void part_settle(struct compose *c, enum gw_backend_id bk)
{
    struct gw *gw = c->gw;
    struct part *p = &c->parts[bk];
    if (p->settled)
        return;
    p->settled = true;
    if (p->failed)
        moat_metric_add(gw->backends[bk].m_failures[p->reason], 1);
    /* Shutting down says nothing about the backend. */
    if (p->started && !(p->failed && p->reason == GW_FAIL_CANCELLED))
        breaker_record(gw, bk, !p->trips, p->probe, &c->trace);
}

static bool all_settled(const struct compose *c)
{
    for (int i = GW_BK_USERS; i < GW_BACKENDS; i++)
        if (!c->parts[i].settled)
            return false;
    return true;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct compose *c = arg;
    for (int i = GW_BK_USERS; i < GW_BACKENDS; i++) {
        if (!c->parts[i].settled) {
            part_fail(c, i, GW_FAIL_TIMEOUT, true);
            part_settle(c, i);
        }
    }
    finish(c);
}

/* ---- the backends' answers ---- */

/* A 200 body as a JSON object, or NULL. */
static json_t *body_object(const struct moat_http_response *resp)
{
    json_t *j =
        json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/*
 * Keep what one answer brings. Returns false when a 200 carried something
 * unusable. 404 is an answer too: the user or product no longer exists
 * (null), not a failure.
 */
static bool absorb(struct compose *c, const struct compose_call *cc,
                   const struct moat_http_response *resp)
{
    json_t *j = NULL;

    if (resp->status == 404) {
        if (cc->bk == GW_BK_CATALOG)
            json_object_set_new(c->products, cc->key, json_null());
        else if (cc->bk == GW_BK_COMMENTS && cc->key[0])
            json_object_set_new(c->comments, cc->key, json_array());
        else if (cc->bk == GW_BK_COMMENTS)
            c->comments = json_array();
        return true;
    }
    j = body_object(resp);
    if (!j)
        return false;
    switch (cc->bk) {
    case GW_BK_USERS:
        c->customer = j;
        return true;
    case GW_BK_CATALOG:
        json_object_set_new(c->products, cc->key, j);
        return true;
    case GW_BK_PAYMENTS: {
        /* Oldest first: the last is the order's current payment. */
        json_t *items = json_object_get(j, "items");
        bool ok = json_is_array(items);
        size_t n = ok ? json_array_size(items) : 0;
        if (n > 0)
            c->payment = json_incref(json_array_get(items, n - 1));
        json_decref(j);
        return ok;
    }
    case GW_BK_NOTIFICATIONS: {
        json_t *list = json_object_get(j, "notifications");
        bool ok = json_is_array(list);
        if (ok)
            c->notifications = json_incref(list);
        json_decref(j);
        return ok;
    }
    case GW_BK_COMMENTS: {
        /* The first page: GW_COMPOSE_COMMENTS top-level comments. */
        json_t *items = json_object_get(j, "items");
        bool ok = json_is_array(items);
        if (ok && cc->key[0])
            json_object_set(c->comments, cc->key, items);
        else if (ok)
            c->comments = json_incref(items);
        json_decref(j);
        return ok;
    }
    default:
        json_decref(j);
        return false;
    }
}

static void on_part(const struct moat_http_response *resp, void *arg)
{
    struct compose_call *cc = arg;
    struct compose *c = cc->c;
    enum gw_backend_id bk = cc->bk;
    struct part *p = &c->parts[bk];

    p->pending--;
    if (!p->settled) {
        if (resp->err != MOAT_OK) {
            enum gw_fail_reason r = transport_reason(resp);
            part_fail(c, bk, r, r != GW_FAIL_CANCELLED);
        } else if (resp->status != 200 && resp->status != 404) {
            part_fail(c, bk, GW_FAIL_STATUS, status_trips(resp->status));
        } else if (!absorb(c, cc, resp)) {
            part_fail(c, bk, GW_FAIL_BAD_RESPONSE, true);
        }
        if (p->failed && p->pending == 0) {
            moat_log_set_trace(&c->trace);
            moat_log(MOAT_LOG_WARN, "composition backend failed",
                     "{s:s, s:s, s:s, s:i, s:f}", "backend", backend_names[bk],
                     "reason", reason_names[p->reason], "error",
                     resp->err_msg ? resp->err_msg : "", "status", resp->status,
                     "duration_ms", resp->elapsed_ms);
            moat_log_set_trace(NULL);
        }
        if (p->pending == 0)
            part_settle(c, bk);
        if (c->req && all_settled(c))
            finish(c);
    }
    free(cc);
    compose_unref(c);
}

/* Start one call of bk to base_url + path. False if it could not start. */
static bool send_call(struct compose *c, enum gw_backend_id bk,
                      const char *path, const char *key, moat_http_client_cb cb)
{
    struct gw *gw = c->gw;
    struct moat_http_header hdrs[2];
    size_t nhdrs = 0;
    char *token = NULL;
    int rc;

    hdrs[nhdrs++] = (struct moat_http_header){"Accept", "application/json"};
    if (gw->svc->auth) {
        rc = moat_auth_token(gw->svc->auth, backend_names[bk], &c->who, &token);
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "cannot sign a service token",
                     "{s:s, s:s}", "upstream", backend_names[bk], "error",
                     moat_strerror(rc));
            return false;
        }
        hdrs[nhdrs++] =
            (struct moat_http_header){MOAT_SERVICE_TOKEN_HEADER, token};
    }
    char *url =
        gw_pool_url(gw, backend_names[bk], gw->backends[bk].base_url, path);
    struct compose_call *cc = moat_xcalloc(1, sizeof(*cc));
    cc->c = c;
    cc->bk = bk;
    if (key)
        snprintf(cc->key, sizeof(cc->key), "%s", key);
    const struct moat_http_call call = {
        .method = "GET",
        .url = url,
        .headers = hdrs,
        .nheaders = nhdrs,
        .timeout_ms = gw->compose_timeout_ms,
        .trace = &c->trace,
    };
    rc = moat_http_client_send(gw->client, &call, cb, cc);
    free(url);
    free(token);
    if (rc != MOAT_OK) {
        free(cc);
        return false;
    }
    c->refs++;
    c->parts[bk].pending++;
    return true;
}

/* Ask the breaker; false (and the part failed) when bk is skipped. */
static bool part_begin(struct compose *c, enum gw_backend_id bk)
{
    struct part *p = &c->parts[bk];
    if (!c->gw->backends[bk].base_url) {
        part_fail(c, bk, GW_FAIL_UNCONFIGURED, false);
        part_settle(c, bk);
        return false;
    }
    if (!breaker_allow(c->gw, bk, &p->probe, NULL)) {
        part_fail(c, bk, GW_FAIL_CIRCUIT_OPEN, false);
        part_settle(c, bk);
        return false;
    }
    p->started = true;
    return true;
}

/*
 * After starting bk's calls: settle it now if none is under way. Without a
 * call the breaker learnt nothing (a probe so spent is replaced after a
 * cool-down).
 */
static void part_started(struct compose *c, enum gw_backend_id bk)
{
    struct part *p = &c->parts[bk];
    if (p->pending == 0) {
        if (!p->failed)
            part_fail(c, bk, GW_FAIL_CANCELLED, false);
        p->started = false;
        part_settle(c, bk);
    }
}

/* bk had nothing to ask (an order without lines, a conversation without
 * messages): settled, nothing missing, nothing learnt. */
static void part_nothing_to_ask(struct compose *c, enum gw_backend_id bk)
{
    struct part *p = &c->parts[bk];
    if (p->pending > 0 || p->failed) {
        part_started(c, bk);
        return;
    }
    p->started = false;
    part_settle(c, bk);
}

static void start_single(struct compose *c, enum gw_backend_id bk,
                         const char *path)
{
    if (!part_begin(c, bk))
        return;
    if (path)
        send_call(c, bk, path, NULL, on_part);
    else
        part_fail(c, bk, GW_FAIL_BAD_RESPONSE, false);
    part_started(c, bk);
}

static void start_catalog(struct compose *c)
{
    json_t *lines = json_object_get(c->main, "lines");
    size_t i;
    json_t *line;

    c->products = json_object();
    if (!part_begin(c, GW_BK_CATALOG))
        return;
    json_array_foreach(lines, i, line)
    {
        const char *id = json_string_value(json_object_get(line, "product_id"));
        if (!valid_id(id)) {
            part_fail(c, GW_BK_CATALOG, GW_FAIL_BAD_RESPONSE, false);
            continue;
        }
        if (json_object_get(c->products, id))
            continue; /* asked already */
        if (json_object_size(c->products) >= GW_COMPOSE_MAX_PRODUCTS) {
            part_fail(c, GW_BK_CATALOG, GW_FAIL_TOO_BIG, false);
            break;
        }
        /* Placeholder until catalog answers; removed if it does not. */
        json_object_set_new(c->products, id, json_null());
        char *path = moat_xasprintf("/v1/products/%s", id);
        if (!send_call(c, GW_BK_CATALOG, path, id, on_part))
            part_fail(c, GW_BK_CATALOG, GW_FAIL_CANCELLED, false);
        free(path);
    }
    if (json_array_size(lines) == 0) {
        /* An order without lines: nothing to ask, nothing missing. */
        part_nothing_to_ask(c, GW_BK_CATALOG);
        return;
    }
    part_started(c, GW_BK_CATALOG);
}

static void start_order_parts(struct compose *c)
{
    const char *customer =
        json_string_value(json_object_get(c->main, "customer_id"));
    char *path;

    path = valid_id(customer) ? moat_xasprintf("/v1/users/%s", customer) : NULL;
    start_single(c, GW_BK_USERS, path);
    free(path);
    start_catalog(c);
    path = moat_xasprintf("/v1/payments?order_id=%s", c->id);
    start_single(c, GW_BK_PAYMENTS, path);
    free(path);
    path = moat_xasprintf("/v1/notifications?order_id=%s", c->id);
    start_single(c, GW_BK_NOTIFICATIONS, path);
    free(path);
}

/*
 * The comments of the post, or of each message of the page (one call per
 * message: comments lists by message), read for the end user so comments
 * decides what they may see.
 */
static void start_comments(struct compose *c)
{
    json_t *items = json_object_get(c->main, "items");
    size_t i;
    json_t *msg;
    char *path;

    if (c->kind == GW_COMPOSE_POST) {
        path = moat_xasprintf("/v1/comments?target_kind=post&target_id=%s"
                              "&limit=%d",
                              c->id, GW_COMPOSE_COMMENTS);
        start_single(c, GW_BK_COMMENTS, path);
        free(path);
        return;
    }
    c->comments = json_object();
    if (!part_begin(c, GW_BK_COMMENTS))
        return;
    json_array_foreach(items, i, msg)
    {
        const char *id = json_string_value(json_object_get(msg, "id"));
        if (!valid_id(id)) {
            part_fail(c, GW_BK_COMMENTS, GW_FAIL_BAD_RESPONSE, false);
            continue;
        }
        path = moat_xasprintf("/v1/comments?target_kind=message&target_id=%s"
                              "&conversation_id=%s&limit=%d",
                              id, c->id, GW_COMPOSE_COMMENTS);
        if (!send_call(c, GW_BK_COMMENTS, path, id, on_part))
            part_fail(c, GW_BK_COMMENTS, GW_FAIL_CANCELLED, false);
        free(path);
    }
    if (json_array_size(items) == 0) {
        /* No message yet: no comment either. */
        part_nothing_to_ask(c, GW_BK_COMMENTS);
        return;
    }
    part_started(c, GW_BK_COMMENTS);
}

/* The main resource is here: ask everyone else. */
static void start_parts(struct compose *c)
{
    struct gw *gw = c->gw;

    /* Held while the calls start, so a synchronous settle cannot finish
     * and free c under our feet. */
    c->refs++;
    if (c->kind == GW_COMPOSE_ORDER)
        start_order_parts(c);
    else
        start_comments(c);

    if (c->req && !all_settled(c)) {
        c->deadline = evtimer_new(gw->svc->base, on_deadline, c);
        const struct timeval tv = {gw->compose_timeout_ms / 1000,
                                   (gw->compose_timeout_ms % 1000) * 1000};
        if (!c->deadline || evtimer_add(c->deadline, &tv) != 0)
            moat_die("cannot arm the composition deadline");
    } else if (c->req) {
        finish(c);
    }
    compose_unref(c);
}

/* ---- the main resource ---- */

static void reply_unavailable(struct moat_req *req, uint64_t retry_ms,
                              const char *fmt, ...) MOAT_PRINTF(3, 4);
static void reply_unavailable(struct moat_req *req, uint64_t retry_ms,
                              const char *fmt, ...)
{
    char ra[24], detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    snprintf(ra, sizeof(ra), "%" PRIu64, gw_retry_after_s(retry_ms));
    moat_req_set_header(req, "Retry-After", ra);
    moat_req_reply_problem(req, 503, "%s", detail);
}

/* The main backend's answer relayed as is (its 404 for someone else's
 * order, a conversation the user is not in). */
static void relay(struct moat_req *req, const struct moat_http_response *resp)
{
    const char *ct = moat_http_response_header(resp, "content-type");
    moat_req_reply(req, resp->status, ct ? ct : "application/problem+json",
                   resp->body, resp->body_len);
}

/* Whether a 200 of the main backend is what the composition needs. */
static bool main_usable(const struct compose *c)
{
    switch (c->kind) {
    case GW_COMPOSE_ORDER:
        return json_is_string(json_object_get(c->main, "customer_id")) &&
               json_is_array(json_object_get(c->main, "lines"));
    case GW_COMPOSE_POST:
        return json_is_string(json_object_get(c->main, "id"));
    case GW_COMPOSE_CONVERSATION:
        return json_is_array(json_object_get(c->main, "items"));
    }
    return false;
}

static void on_main(const struct moat_http_response *resp, void *arg)
{
    struct compose_call *cc = arg;
    struct compose *c = cc->c;
    struct gw *gw = c->gw;
    const struct kind_info *k = &kinds[c->kind];
    const char *name = backend_names[k->main];
    struct part *p = &c->parts[k->main];
    struct moat_req *req = c->req;
    bool trips = true;
    enum gw_fail_reason reason = GW_FAIL_STATUS;

    free(cc);
    c->refs--; /* this call's; the request's reference remains */
    if (resp->err != MOAT_OK) {
        reason = transport_reason(resp);
        trips = reason != GW_FAIL_CANCELLED;
    } else if (resp->status == 200) {
        c->main = body_object(resp);
        reason = GW_FAIL_BAD_RESPONSE;
        if (main_usable(c)) {
            breaker_record(gw, k->main, true, p->probe, &c->trace);
            const char *owner =
                json_string_value(json_object_get(c->main, "customer_id"));
            /* Orders checks ownership; a second look costs nothing. */
            if (c->kind == GW_COMPOSE_ORDER &&
                !moat_principal_is_admin(&c->who) && c->who.user_id[0] &&
                strcmp(owner, c->who.user_id) != 0) {
                count_result(gw, RES_NOT_FOUND);
                moat_req_reply_problem(req, 404, "no order %s", c->id);
                c->req = NULL;
                compose_unref(c);
                return;
            }
            start_parts(c);
            return;
        }
    } else if (resp->status == 401) {
        /* The backend refused the gateway's own token: not the client's
         * fault. */
        breaker_record(gw, k->main, true, p->probe, &c->trace);
        moat_log(MOAT_LOG_ERROR,
                 "a backend refused the gateway's service token", "{s:s}",
                 "backend", name);
        count_result(gw, RES_REJECTED);
        moat_req_reply_problem(req, 502,
                               "the gateway is not allowed to read %s", name);
        c->req = NULL;
        compose_unref(c);
        return;
    } else if (!status_trips(resp->status)) {
        breaker_record(gw, k->main, true, p->probe, &c->trace);
        count_result(gw, resp->status == 404 ? RES_NOT_FOUND : RES_REJECTED);
        relay(req, resp);
        c->req = NULL;
        compose_unref(c);
        return;
    }

    moat_metric_add(gw->backends[k->main].m_failures[reason], 1);
    if (trips)
        breaker_record(gw, k->main, false, p->probe, &c->trace);
    moat_log_set_trace(&c->trace);
    moat_log(MOAT_LOG_WARN, "composition: the main resource could not be read",
             "{s:s, s:s, s:s, s:s, s:i, s:f}", "backend", name, "id", c->id,
             "reason", reason_names[reason], "error",
             resp->err_msg ? resp->err_msg : "", "status", resp->status,
             "duration_ms", resp->elapsed_ms);
    moat_log_set_trace(NULL);
    count_result(gw, RES_UNAVAILABLE);
    if (reason == GW_FAIL_TIMEOUT)
        reply_unavailable(req, 1000,
                          "%s did not answer in time; %s cannot be "
                          "composed",
                          name, k->what);
    else
        reply_unavailable(req, 1000, "%s is unavailable; %s cannot be composed",
                          name, k->what);
    c->req = NULL;
    compose_unref(c);
}

/* Start composing kind for id (a path parameter) as req's answer. */
static void compose_start(struct gw *gw, struct moat_req *req,
                          enum gw_compose_kind kind, bool v2, const char *id)
{
    const struct moat_principal *who = moat_req_principal(req);
    const struct kind_info *k = &kinds[kind];
    const char *name = backend_names[k->main];
    uint64_t retry_ms = 0;
    bool probe = false;

    /* Reachable without a user only if MOAT_GATEWAY_PUBLIC covers it. */
    if (k->needs_user && gw->user_auth && !who->user_id[0]) {
        moat_req_set_header(req, "WWW-Authenticate", "Bearer realm=\"moat\"");
        moat_req_reply_problem(req, 401,
                               "authentication required: send "
                               "Authorization: Bearer <token>");
        return;
    }
    if (!valid_id(id)) {
        /* No resource has such an id; the backend would say the same. */
        count_result(gw, RES_NOT_FOUND);
        moat_req_reply_problem(req, 404, "no %s %s",
                               kind == GW_COMPOSE_ORDER  ? "order"
                               : kind == GW_COMPOSE_POST ? "post"
                                                         : "conversation",
                               id && strlen(id) <= GW_COMPOSE_ID_MAX ? id : "");
        return;
    }
    if (!breaker_allow(gw, k->main, &probe, &retry_ms)) {
        moat_metric_add(gw->backends[k->main].m_failures[GW_FAIL_CIRCUIT_OPEN],
                        1);
        count_result(gw, RES_UNAVAILABLE);
        reply_unavailable(req, retry_ms,
                          "%s is unavailable (circuit open); %s cannot be "
                          "composed",
                          name, k->what);
        return;
    }

    struct compose *c = moat_xcalloc(1, sizeof(*c));
    c->gw = gw;
    c->req = req;
    c->refs = 1;
    c->kind = kind;
    c->v2 = v2;
    c->who = *who;
    c->trace = *moat_req_trace(req);
    /* Backends this kind does not ask are settled from the start. */
    for (int i = 0; i < GW_BACKENDS; i++)
        c->parts[i].settled = !(k->parts & 1u << i);
    c->parts[k->main].probe = probe;
    c->parts[k->main].started = true;
    snprintf(c->id, sizeof(c->id), "%s", id);
    char *path = kind == GW_COMPOSE_ORDER ? moat_xasprintf("/v1/orders/%s", id)
                 : kind == GW_COMPOSE_POST
                     ? moat_xasprintf("/v1/posts/%s", id)
                     : moat_xasprintf("/v1/conversations/%s/messages?limit=%d",
                                      id, GW_COMPOSE_MESSAGES);
    bool sent = send_call(c, k->main, path, NULL, on_main);
    free(path);
    if (!sent) {
        /* Not the backend's fault: give the probe back as a success. */
        breaker_record(gw, k->main, true, probe, &c->trace);
        count_result(gw, RES_UNAVAILABLE);
        reply_unavailable(req, 1000,
                          "the gateway cannot call %s; %s cannot be "
                          "composed",
                          name, k->what);
        compose_free(c);
    }
}

static void h_details(struct moat_req *req, void *arg)
{
    /* Its v2 route is MOAT_ROUTE_API_V2: the server renders v2. */
    compose_start(arg, req, GW_COMPOSE_ORDER, false, moat_req_param(req, "id"));
}

/* A post or conversation: composed with include=comments, else proxied. */
static void h_with_comments(struct moat_req *req, void *arg)
{
    struct gw_composed_route *cr = arg;
    const char *include = moat_req_query(req, "include");
    if (moat_req_method(req) != MOAT_GET || !include ||
        strcmp(include, "comments") != 0) {
        gw_proxy(req, cr->route);
        return;
    }
    compose_start(cr->gw, req, cr->kind, cr->v2, moat_req_param(req, "id"));
}

/* ---- configuration ---- */

static int config_error(const char *variable, const char *value,
                        const char *err)
{
    moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s, s:s}",
             "variable", variable, "value", value, "error", err);
    fprintf(stderr, "config: %s: %s\n", variable, err);
    return MOAT_EINVAL;
}

/* MOAT_GATEWAY_BACKENDS: "NAME@URL[,NAME@URL...]". */
static int parse_backends(struct gw *gw, const char *spec)
{
    char *copy = moat_xstrdup(spec);
    char *cur = copy;
    char err[512];
    int rc = MOAT_EINVAL;
    size_t n = 0;

    if (*spec == '\0')
        cur = NULL;
    while (cur) {
        char *entry = strsep(&cur, ",");
        char *at = strchr(entry, '@');
        const char *why = NULL;
        int bk = -1;
        n++;
        if (!at) {
            snprintf(err, sizeof(err), "entry %zu ('%s') is not NAME@URL", n,
                     entry);
            goto cleanup;
        }
        *at = '\0';
        for (int i = 0; i < GW_BACKENDS; i++)
            if (strcmp(entry, backend_names[i]) == 0)
                bk = i;
        if (bk < 0) {
            snprintf(err, sizeof(err),
                     "entry %zu: '%s' is not one of orders, users, catalog, "
                     "payments, notifications, posts, messaging, comments",
                     n, entry);
            goto cleanup;
        }
        if (gw->backends[bk].base_url) {
            snprintf(err, sizeof(err), "entry %zu: '%s' appears twice", n,
                     entry);
            goto cleanup;
        }
        gw->backends[bk].base_url = gw_base_url_parse(at + 1, &why);
        if (!gw->backends[bk].base_url) {
            snprintf(err, sizeof(err), "entry %zu (%s): URL '%s' %s", n, entry,
                     at + 1, why);
            goto cleanup;
        }
    }
    rc = MOAT_OK;
cleanup:
    if (rc != MOAT_OK)
        config_error("MOAT_GATEWAY_BACKENDS", spec, err);
    free(copy);
    return rc;
}

static void register_metrics(struct gw *gw)
{
    struct moat_metrics *m = gw->svc->metrics;
    struct moat_metric_family *state = moat_metrics_family(
        m, MOAT_GAUGE, "gateway_circuit_state",
        "Circuit breaker of each composition backend: 0 closed, 1 open, "
        "2 half-open",
        "backend", NULL, 0);
    struct moat_metric_family *fails = moat_metrics_family(
        m, MOAT_COUNTER, "gateway_compose_backend_failures_total",
        "Composition backends that gave nothing usable (or were skipped), "
        "by reason",
        "backend,reason", NULL, 0);
    gw->m_compose = moat_metrics_family(
        m, MOAT_COUNTER, "gateway_compose_requests_total",
        "Composed requests (order details, posts and conversations with "
        "their comments) by result",
        "result", NULL, 0);
    if (!state || !fails || !gw->m_compose)
        moat_die("cannot register the composition metrics");
    for (int i = 0; i < GW_BACKENDS; i++) {
        struct gw_backend *b = &gw->backends[i];
        const char *lb[] = {b->name};
        b->m_state = moat_metric_series(state, lb);
        for (int r = 0; r < GW_FAIL_REASONS; r++) {
            const char *lr[] = {b->name, reason_names[r]};
            b->m_failures[r] = moat_metric_series(fails, lr);
        }
    }
    for (int r = 0; r < RESULTS; r++) {
        const char *lr[] = {result_names[r]};
        moat_metric_series(gw->m_compose, lr);
    }
    moat_metrics_on_collect(m, collect, gw);
    collect(m, gw);
}

static struct gw_route *route_by_prefix(struct gw *gw, const char *prefix)
{
    for (size_t r = 0; r < gw->nroutes; r++)
        if (strcmp(gw->routes[r].prefix, prefix) == 0)
            return &gw->routes[r];
    return NULL;
}

/*
 * prefix + "/{id}" for every method, and the same for its v2 twin: GET with
 * include=comments is composed, the rest goes to the proxied route. Both
 * carry the proxy's route flags (the v1 one the deprecation headers); on
 * the v2 one the composition (v1 JSON of the backends) renders itself as
 * v2, and the proxied answers stay as the upstream wrote them.
 */
static int route_with_comments(struct gw *gw, const char *prefix,
                               enum gw_compose_kind kind)
{
    char *v2 = gw_v2_path(prefix);
    const char *versions[] = {prefix, v2};
    int rc = MOAT_OK;

    for (size_t v = 0; v < MOAT_ARRAY_LEN(versions) && rc == MOAT_OK; v++) {
        struct gw_route *r =
            versions[v] ? route_by_prefix(gw, versions[v]) : NULL;
        size_t slot = (size_t)(kind - GW_COMPOSE_POST) * 2 + v;
        if (!r)
            continue; /* not routed: nothing to compose either */
        struct gw_composed_route *cr = &gw->composed[slot];
        *cr = (struct gw_composed_route){gw, r, kind, v == 1};
        char *pattern = moat_xasprintf("%s/{id}", r->prefix);
        /* The proxy's flags: its v2 answers are the upstream's, already
         * v2; the composition renders itself (cr->v2). */
        unsigned flags = r->has_successor ? MOAT_ROUTE_API_V1_DEPRECATED : 0;
        rc = moat_http_route_ex(gw->svc->http, MOAT_METHOD_ANY, pattern,
                                h_with_comments, cr, flags);
        if (rc == MOAT_OK)
            moat_log(MOAT_LOG_INFO, "composition route", "{s:s, s:s}", "route",
                     pattern, "include", "comments");
        free(pattern);
    }
    free(v2);
    return rc;
}

int gw_compose_init(struct gw *gw)
{
    int64_t timeout, failures, cooldown;
    const char *spec = moat_env_str("MOAT_GATEWAY_BACKENDS", "");

    for (int i = 0; i < GW_BACKENDS; i++)
        gw->backends[i].name = backend_names[i];
    if (moat_env_int("MOAT_GATEWAY_COMPOSE_TIMEOUT_MS",
                     GW_DEFAULT_COMPOSE_TIMEOUT_MS, 1,
                     GW_MAX_COMPOSE_TIMEOUT_MS, &timeout) != MOAT_OK ||
        moat_env_int("MOAT_GATEWAY_BREAKER_FAILURES",
                     MOAT_BREAKER_DEFAULT_THRESHOLD, 1, GW_MAX_BREAKER_FAILURES,
                     &failures) != MOAT_OK ||
        moat_env_int("MOAT_GATEWAY_BREAKER_COOLDOWN_MS",
                     MOAT_BREAKER_DEFAULT_COOLDOWN_MS, 1,
                     GW_MAX_BREAKER_COOLDOWN_MS, &cooldown) != MOAT_OK)
        return MOAT_EINVAL;
    gw->compose_timeout_ms = (long)timeout;
    if (parse_backends(gw, spec) != MOAT_OK)
        return MOAT_EINVAL;
    for (int i = 0; i < GW_BACKENDS; i++) {
        struct gw_backend *b = &gw->backends[i];
        moat_breaker_init(&b->breaker, (unsigned)failures, (uint64_t)cooldown);
        /* Else the first route to the service: its API is at the origin. */
        for (size_t r = 0; !b->base_url && r < gw->nroutes; r++)
            if (strcmp(gw->routes[r].service, b->name) == 0)
                b->base_url = moat_xstrdup(gw->routes[r].origin);
    }
    register_metrics(gw);

    int rc = MOAT_OK;
    if (!gw->backends[GW_BK_ORDERS].base_url) {
        moat_log(MOAT_LOG_INFO,
                 "no orders backend: " GW_DETAILS_ROUTE " is not served", NULL);
    } else {
        /* The composition is JSON of the gateway's own: the HTTP server
         * renders it as v2 on the v2 route (moat/http.h "API versions"). */
        rc = moat_http_route_ex(gw->svc->http, MOAT_GET, GW_DETAILS_ROUTE,
                                h_details, gw, MOAT_ROUTE_API_V1_DEPRECATED);
        if (rc == MOAT_OK)
            rc =
                moat_http_route_ex(gw->svc->http, MOAT_GET, GW_DETAILS_ROUTE_V2,
                                   h_details, gw, MOAT_ROUTE_API_V2);
    }
    if (rc == MOAT_OK)
        rc = route_with_comments(gw, "/api/v1/posts", GW_COMPOSE_POST);
    if (rc == MOAT_OK)
        rc = route_with_comments(gw, "/api/v1/conversations",
                                 GW_COMPOSE_CONVERSATION);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot route a composition", "{s:s}", "error",
                 moat_strerror(rc));
        return rc;
    }
    for (int i = 0; i < GW_BACKENDS; i++)
        moat_log(MOAT_LOG_INFO, "composition backend", "{s:s, s:s}", "backend",
                 backend_names[i], "url",
                 gw->backends[i].base_url ? gw->backends[i].base_url
                                          : "(none: always partial)");
    return MOAT_OK;
}

void gw_compose_release(struct gw *gw)
{
    for (int i = 0; i < GW_BACKENDS; i++) {
        free(gw->backends[i].base_url);
        gw->backends[i].base_url = NULL;
    }
}
