/*
 * handlers.c - inventory's HTTP API (/v1/stock): decoding, validation,
 * preconditions and status codes. The layout and every read and write are
 * in store.c.
 *
 *   GET  /v1/stock?cursor=&limit=         SKUs in SKU order, paged
 *   GET  /v1/stock/{sku}                  one SKU (ETag "v<version>")
 *   PUT  /v1/stock/{sku}                  {"on_hand", "reason"?}: set the
 *                                         count (creates the SKU: 201);
 *                                         optional If-Match
 *   POST /v1/stock/{sku}/adjustments      {"delta", "reason"}: add or
 *                                         remove units (201)
 *
 *   POST /v1/reservations                 {"order_id", "customer_id",
 *                                         "lines": [{"sku", "quantity"}]}:
 *                                         hold all lines or none (201; 200
 *                                         for a repeat)
 *   POST /v1/reservations/{order_id}/release   held -> released
 *   POST /v1/reservations/{order_id}/commit    held -> committed (sold)
 *   GET  /v1/reservations/{order_id}
 *
 *   GET  /v1/reservations?after=&limit=   every reservation in order_id
 *                                         order (audits)
 *   GET  /v1/adjustments?after=&limit=    the adjustment log in id order
 *                                         (audits)
 *
 * The stock routes are for administrators (stock levels are back-office
 * data). The reservation routes are internal: the order saga's steps,
 * called by services (orders) with their service token; the gateway
 * never exposes them, and a request relayed by the gateway is refused
 * (403), so no end user can hold stock by hand. The audit listings are
 * for services acting for nobody (the auditor) and for administrators.
 * The order saga's commands arrive from orders' feed instead (commands.c)
 * and end in the same store functions. A change that would
 * leave available = on_hand - reserved below zero is a 409 problem saying
 * how much is available. docs/inventory.md has the whole contract.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inventory.h"
#include "moat/audit.h"
#include "moat/auth.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "store.h"

#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX     100
#define ETAG_MAX           32
#define CURSOR_HEX_MAX     (2 * INV_SKU_MAX)
#define SKU_RULE           "1 to 64 of the characters A-Z a-z 0-9 . _ -"
/* Audit listings (GET /v1/reservations, /v1/adjustments). */
#define AUDIT_LIMIT_DEFAULT 100
#define AUDIT_LIMIT_MAX     500

/* ---- small helpers ---- */

static void etag_of(const struct inv_stock *s, char out[ETAG_MAX])
{
    snprintf(out, ETAG_MAX, "\"v%lld\"", (long long)s->version);
}

static json_t *stock_json(const struct inv_stock *s)
{
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "sku", s->sku,
                     "on_hand", (json_int_t)s->on_hand, "reserved",
                     (json_int_t)s->reserved, "available",
                     (json_int_t)inv_available(s), "sold", (json_int_t)s->sold,
                     "version", (json_int_t)s->version, "created_at",
                     (json_int_t)(s->created_ms / 1000), "updated_at",
                     (json_int_t)(s->updated_ms / 1000));
}

static void reply_stock(struct moat_req *r, int status,
                        const struct inv_stock *s)
{
    char etag[ETAG_MAX];
    etag_of(s, etag);
    moat_req_set_header(r, "ETag", etag);
    if (status == 201) {
        /* An absolute path: the gateway rewrites it to its prefix. */
        char *location = moat_xasprintf("/v1/stock/%s", s->sku);
        moat_req_set_header(r, "Location", location);
        free(location);
    }
    moat_req_reply_json(r, status, stock_json(s));
}

static void reply_not_found(struct moat_req *r, const char *sku)
{
    /* Echo the SKU only when it has the shape of one: anything else came
     * straight from the client and may not even be valid UTF-8. */
    if (inv_sku_valid(sku))
        moat_req_reply_problem(r, 404,
                               "there is no stock record for sku \"%s\"", sku);
    else
        moat_req_reply_problem(r, 404,
                               "there is no stock record for this sku "
                               "(a sku is " SKU_RULE ")");
}

/* 409: the change would leave less than nothing available. */
static void reply_insufficient(struct moat_req *r, const struct inv_stock *cur,
                               int64_t on_hand_wanted)
{
    char detail[200];
    int64_t available = inv_available(cur);
    if (on_hand_wanted > INV_QTY_MAX)
        snprintf(detail, sizeof(detail),
                 "on_hand would exceed %lld units for sku \"%s\"",
                 (long long)INV_QTY_MAX, cur->sku);
    else
        snprintf(detail, sizeof(detail),
                 "sku \"%s\" has %lld units available (on_hand %lld, reserved "
                 "%lld); stock never goes below zero",
                 cur->sku, (long long)available, (long long)cur->on_hand,
                 (long long)cur->reserved);
    json_t *p = moat_problem_new(409, detail);
    json_object_set_new(p, "sku", json_string(cur->sku));
    json_object_set_new(p, "available", json_integer(available));
    json_object_set_new(p, "on_hand", json_integer(cur->on_hand));
    json_object_set_new(p, "reserved", json_integer(cur->reserved));
    moat_req_reply_problem_json(r, p);
}

static void reply_stale(struct moat_req *r, const struct inv_stock *cur)
{
    json_t *p;
    if (cur->version > 0) {
        char etag[ETAG_MAX];
        etag_of(cur, etag);
        moat_req_set_header(r, "ETag", etag);
        p = moat_problem_new(412, "If-Match does not match the stock "
                                  "record's current ETag; read it again and "
                                  "retry");
        json_object_set_new(p, "current_etag", json_string(etag));
    } else {
        p = moat_problem_new(412, "If-Match was given but there is no stock "
                                  "record for this sku yet");
    }
    moat_req_reply_problem_json(r, p);
}

/*
 * The version an If-Match header asks for: INV_ANY_VERSION when absent or
 * "*"; false (after replying 412) when it is not one of our tags, which
 * can never match.
 */
static bool if_match_version(struct moat_req *r, int64_t *version)
{
    const char *h = moat_req_header(r, "If-Match");
    *version = INV_ANY_VERSION;
    if (!h)
        return true;
    h += strspn(h, " \t");
    if (strcmp(h, "*") == 0)
        return true;
    size_t n = strlen(h);
    while (n > 0 && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    char digits[24];
    /* One strong tag "vN": a list or a weak tag never matches ours
     * (strong comparison, RFC 9110 section 13.1.1). */
    if (n >= 4 && n - 3 < sizeof(digits) && h[0] == '"' && h[1] == 'v' &&
        h[n - 1] == '"') {
        memcpy(digits, h + 2, n - 3);
        digits[n - 3] = '\0';
        if (moat_parse_i64(digits, 1, INT64_MAX, version) == MOAT_OK)
            return true;
    }
    /* Not a tag this service makes: it cannot match, whether or not the
     * record exists (the record is not read here). */
    moat_req_reply_problem(r, 412,
                           "If-Match is not an entity tag of this API "
                           "(\"vN\"): it matches no version of the stock "
                           "record");
    return false;
}

/* The {sku} of the path when it is a valid SKU, else NULL. */
static const char *path_sku(struct moat_req *r)
{
    const char *sku = moat_req_param(r, "sku");
    return sku && inv_sku_valid(sku) ? sku : NULL;
}

static void reply_validation(struct moat_req *r, struct moat_validation *v)
{
    moat_req_reply_problem_json(
        r, moat_validation_problem(v, "the request has invalid fields"));
}

/* ---- GET /v1/stock/{sku} ---- */

static void handle_get(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    struct inv_stock s;
    if (!moat_req_require_admin(r))
        return;
    const char *sku = path_sku(r);
    if (!sku) {
        reply_not_found(r, moat_req_param(r, "sku"));
        return;
    }
    int rc = inv_store_get(inv->store, sku, &s);
    if (rc == MOAT_ENOTFOUND)
        reply_not_found(r, sku);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "inventory", "read the stock");
    else
        reply_stock(r, 200, &s);
}

/* ---- PUT /v1/stock/{sku} ---- */

/* ---- the audit log (moat/audit.h): every stock change ---- */

/* A set (amount = on_hand) or an adjustment (amount = delta, its id). */
static void audit_stock(struct inv_service *inv, struct moat_req *r,
                        const char *action, const struct inv_stock *s,
                        int64_t amount, int64_t adjustment)
{
    json_t *d =
        json_pack("{s:I, s:I, s:I, s:I}", "amount", (json_int_t)amount,
                  "on_hand", (json_int_t)s->on_hand, "version",
                  (json_int_t)s->version, "adjustment", (json_int_t)adjustment);
    moat_audit_req(inv->audit, r, action, s->sku, "ok", d);
    json_decref(d);
}

void inv_audit_reservation(struct moat_audit *a, struct moat_req *r,
                           const char *action,
                           const struct inv_reservation *res)
{
    if (!a)
        return;
    json_t *lines = json_array();
    for (size_t i = 0; i < res->nlines; i++)
        json_array_append_new(
            lines, json_pack("{s:s, s:I}", "sku", res->lines[i].sku, "quantity",
                             (json_int_t)res->lines[i].quantity));
    json_t *d =
        json_pack("{s:s, s:s, s:o}", "customer_id", res->customer_id, "state",
                  inv_res_state_name(res->state), "lines", lines);
    moat_audit_req(a, r, action, res->order_id, "ok", d);
    json_decref(d);
}

static void handle_put(struct moat_req *r, void *arg)
{
    static const char *const keys[] = {"on_hand", "reason", NULL};
    struct inv_service *inv = arg;
    struct moat_validation v;
    json_t *body = NULL;
    const char *reason = NULL;
    int64_t on_hand = 0, expect;

    if (!moat_req_require_admin(r))
        return;
    moat_validation_init(&v);
    if (moat_req_json(r, &body) < 0)
        goto cleanup; /* replied 415 or 400 */
    const char *sku = path_sku(r);
    if (!sku) {
        /* PUT creates: a SKU that can never exist is the client's input
         * error, not a missing resource. */
        json_t *p = moat_problem_new(422, "the sku in the path is not valid");
        json_t *err = json_pack("{s:s, s:s}", "parameter", "sku", "detail",
                                "must be " SKU_RULE);
        json_object_set_new(p, "errors", json_pack("[o]", err));
        moat_req_reply_problem_json(r, p);
        goto cleanup;
    }
    if (!json_is_object(body)) {
        moat_validation_add(&v, "", "must be a JSON object, not %s",
                            moat_json_type_name(body));
    } else {
        moat_v_known_keys(&v, body, "", keys);
        moat_v_int(&v, body, "", "on_hand", true, 0, INV_QTY_MAX, &on_hand);
        moat_v_string(&v, body, "", "reason", false, 1, INV_REASON_MAX,
                      &reason);
    }
    if (!moat_validation_ok(&v)) {
        reply_validation(r, &v);
        goto cleanup;
    }
    if (!if_match_version(r, &expect))
        goto cleanup;

    struct inv_change c = {.sku = sku,
                           .reason = reason,
                           .user = moat_req_principal(r)->user_id,
                           .expect_version = expect};
    struct inv_stock s;
    bool created = false;
    int rc = inv_store_set(inv->store, &c, on_hand, &s, &created);
    switch (rc) {
    case MOAT_OK:
        moat_log(MOAT_LOG_INFO, "stock set", "{s:s, s:I, s:I}", "sku", sku,
                 "on_hand", (json_int_t)s.on_hand, "version",
                 (json_int_t)s.version);
        audit_stock(inv, r, "stock.set", &s, on_hand, 0);
        reply_stock(r, created ? 201 : 200, &s);
        break;
    case MOAT_ECONFLICT:
        reply_insufficient(r, &s, on_hand);
        break;
    case MOAT_EPRECOND:
        reply_stale(r, &s);
        break;
    default:
        moat_req_reply_store_error(r, rc, "inventory", "set the stock");
        break;
    }

cleanup:
    json_decref(body);
    moat_validation_release(&v);
}

/* ---- POST /v1/stock/{sku}/adjustments ---- */

static void handle_adjust(struct moat_req *r, void *arg)
{
    static const char *const keys[] = {"delta", "reason", NULL};
    struct inv_service *inv = arg;
    struct moat_validation v;
    json_t *body = NULL;
    const char *reason = NULL;
    int64_t delta = 0;

    if (!moat_req_require_admin(r))
        return;
    moat_validation_init(&v);
    if (moat_req_json(r, &body) < 0)
        goto cleanup;
    const char *sku = path_sku(r);
    if (!sku) {
        reply_not_found(r, moat_req_param(r, "sku"));
        goto cleanup;
    }
    if (!json_is_object(body)) {
        moat_validation_add(&v, "", "must be a JSON object, not %s",
                            moat_json_type_name(body));
    } else {
        moat_v_known_keys(&v, body, "", keys);
        if (moat_v_int(&v, body, "", "delta", true, -INV_QTY_MAX, INV_QTY_MAX,
                       &delta) &&
            delta == 0)
            moat_validation_add(&v, "/delta",
                                "must not be 0 (an adjustment changes the "
                                "stock)");
        moat_v_string(&v, body, "", "reason", true, 1, INV_REASON_MAX, &reason);
    }
    if (!moat_validation_ok(&v)) {
        reply_validation(r, &v);
        goto cleanup;
    }

    struct inv_change c = {.sku = sku,
                           .reason = reason,
                           .user = moat_req_principal(r)->user_id,
                           .expect_version = INV_ANY_VERSION};
    struct inv_stock s;
    int64_t id = 0;
    int rc = inv_store_adjust(inv->store, &c, delta, &s, &id);
    switch (rc) {
    case MOAT_OK: {
        moat_log(MOAT_LOG_INFO, "stock adjusted", "{s:s, s:I, s:I, s:I}", "sku",
                 sku, "delta", (json_int_t)delta, "on_hand",
                 (json_int_t)s.on_hand, "adjustment", (json_int_t)id);
        audit_stock(inv, r, "stock.adjust", &s, delta, id);
        char etag[ETAG_MAX];
        etag_of(&s, etag);
        moat_req_set_header(r, "ETag", etag);
        json_t *out = json_pack("{s:{s:I, s:s, s:I, s:s, s:I}, s:o}",
                                "adjustment", "id", (json_int_t)id, "sku", sku,
                                "delta", (json_int_t)delta, "reason", reason,
                                "created_at", (json_int_t)(s.updated_ms / 1000),
                                "stock", stock_json(&s));
        moat_req_reply_json(r, 201, out);
        break;
    }
    case MOAT_ENOTFOUND:
        reply_not_found(r, sku);
        break;
    case MOAT_ECONFLICT:
        reply_insufficient(r, &s, s.on_hand + delta);
        break;
    default:
        moat_req_reply_store_error(r, rc, "inventory", "adjust the stock");
        break;
    }

cleanup:
    json_decref(body);
    moat_validation_release(&v);
}

/* ---- GET /v1/stock ---- */

/* The cursor is opaque to clients: hex of the last SKU of the page. */
static bool cursor_decode(const char *s, char out[INV_SKU_MAX + 1])
{
    size_t n = strlen(s);
    if (n == 0 || n % 2 != 0 || n > CURSOR_HEX_MAX ||
        moat_unhex(s, out, n / 2) != MOAT_OK)
        return false;
    out[n / 2] = '\0';
    return inv_sku_valid(out);
}

struct list_query {
    size_t limit;
    bool has_cursor;
    char after[INV_SKU_MAX + 1];
    json_t *problem; /* 400 being built; NULL while all is well */
};

static void parse_list_query(struct moat_req *r, struct list_query *q)
{
    void *iter = NULL;
    const char *key, *value;
    bool seen_limit = false;
    size_t nparams = 0;

    q->limit = LIST_LIMIT_DEFAULT;
    while (moat_req_query_next(r, &iter, &key, &value)) {
        nparams++;
        value = value ? value : "";
        if (strcmp(key, "limit") == 0) {
            int64_t limit;
            if (seen_limit)
                moat_problem_param_error(&q->problem, key,
                                         "is given more than once");
            else if (moat_parse_i64(value, 1, LIST_LIMIT_MAX, &limit) !=
                     MOAT_OK)
                moat_problem_param_error(&q->problem, key,
                                         "must be an integer from 1 to %d",
                                         LIST_LIMIT_MAX);
            else
                q->limit = (size_t)limit;
            seen_limit = true;
        } else if (strcmp(key, "cursor") == 0) {
            if (q->has_cursor)
                moat_problem_param_error(&q->problem, key,
                                         "is given more than once");
            else if (!cursor_decode(value, q->after))
                moat_problem_param_error(
                    &q->problem, key,
                    "is not a next_cursor returned by this API");
            q->has_cursor = true;
        } else {
            moat_problem_param_error(
                &q->problem, key, "is not a known parameter (limit, cursor)");
        }
    }
    /* evhttp drops the whole query string when one parameter is not
     * name=value: serving the first page instead would be a silent lie. */
    const char *target = moat_req_target(r);
    const char *qs = target ? strchr(target, '?') : NULL;
    if (nparams == 0 && qs && qs[1 + strspn(qs + 1, "&")] != '\0' &&
        !q->problem)
        q->problem = moat_problem_new(400, "the query string is malformed: "
                                           "every parameter must be "
                                           "name=value with a non-empty "
                                           "name");
}

static void handle_list(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    struct list_query q = {0};
    struct inv_stock *items = NULL;
    size_t n = 0;

    if (!moat_req_require_admin(r))
        return;
    parse_list_query(r, &q);
    if (q.problem) {
        moat_req_reply_problem_json(r, q.problem);
        return;
    }
    /* One more than the page tells whether another page follows. */
    int rc = inv_store_list(inv->store, q.has_cursor ? q.after : NULL,
                            q.limit + 1, &items, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "inventory", "list the stock");
        return;
    }
    json_t *list = json_array();
    size_t shown = n > q.limit ? q.limit : n;
    for (size_t i = 0; i < shown; i++)
        json_array_append_new(list, stock_json(&items[i]));
    json_t *next = json_null();
    if (n > q.limit) {
        const char *last = items[shown - 1].sku;
        char cursor[CURSOR_HEX_MAX + 1];
        moat_hex(cursor, last, strlen(last));
        json_decref(next);
        next = json_string(cursor);
    }
    free(items);
    moat_req_reply_json(
        r, 200, json_pack("{s:o, s:o}", "items", list, "next_cursor", next));
}

/* ---- reservations ---- */

/*
 * The reservation routes are service-to-service. The guard has verified
 * the service token; the gateway is the one caller that relays end users,
 * and it must not reach the saga's steps even if a route were misconfigured.
 */
static bool require_internal(struct moat_req *r)
{
    const char *svc = moat_req_principal(r)->service;
    if (svc[0] != '\0' && strcmp(svc, "gateway") != 0)
        return true;
    moat_req_reply_problem(r, 403,
                           "reservations are internal: only services such "
                           "as orders may call them");
    return false;
}

json_t *inv_reservation_json(const struct inv_reservation *res)
{
    json_t *lines = json_array();
    for (size_t i = 0; i < res->nlines; i++)
        json_array_append_new(
            lines, json_pack("{s:s, s:I}", "sku", res->lines[i].sku, "quantity",
                             (json_int_t)res->lines[i].quantity));
    /* A tombstone was never reserved: "absent" says so (docs). */
    return json_pack(
        "{s:s, s:o, s:o, s:s, s:b, s:I, s:I, s:I}", "order_id", res->order_id,
        "customer_id",
        res->tombstone ? json_null() : json_string(res->customer_id), "lines",
        lines, "state",
        res->tombstone ? "absent" : inv_res_state_name(res->state), "returned",
        res->returned, "version", (json_int_t)res->version, "created_at",
        (json_int_t)(res->created_ms / 1000), "updated_at",
        (json_int_t)(res->updated_ms / 1000));
}

static void reply_reservation(struct moat_req *r, int status,
                              const struct inv_reservation *res)
{
    if (status == 201) {
        char *location = moat_xasprintf("/v1/reservations/%s", res->order_id);
        moat_req_set_header(r, "Location", location);
        free(location);
    }
    moat_req_reply_json(r, status, inv_reservation_json(res));
}

/* A 409 that carries the reservation as it stands. */
static void reply_res_conflict(struct moat_req *r, const char *detail,
                               const struct inv_reservation *res)
{
    json_t *p = moat_problem_new(409, detail);
    json_object_set_new(p, "order_id", json_string(res->order_id));
    json_object_set_new(p, "reservation", inv_reservation_json(res));
    moat_req_reply_problem_json(r, p);
}

static void reply_short(struct moat_req *r, const struct inv_shortage *sh,
                        size_t n)
{
    char detail[200];
    snprintf(detail, sizeof(detail),
             "%zu of the lines cannot be held (sku \"%s\" has %lld available, "
             "%lld requested%s); nothing was reserved",
             n, sh[0].sku, (long long)sh[0].available,
             (long long)sh[0].requested,
             n > 1 ? ", and more in \"short\"" : "");
    json_t *p = moat_problem_new(409, detail);
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            list, json_pack("{s:s, s:I, s:I}", "sku", sh[i].sku, "requested",
                            (json_int_t)sh[i].requested, "available",
                            (json_int_t)sh[i].available));
    json_object_set_new(p, "short", list);
    moat_req_reply_problem_json(r, p);
}

/* Check a reference (order or customer id) member into out. */
static void v_ref(struct moat_validation *v, json_t *body, const char *key,
                  char out[INV_REF_MAX + 1])
{
    const char *ref = NULL;
    if (!moat_v_string(v, body, "", key, true, 1, INV_REF_MAX, &ref))
        return;
    if (!inv_ref_valid(ref)) {
        char pointer[80];
        moat_json_pointer(pointer, sizeof(pointer), "", key);
        moat_validation_add(v, pointer, "must be " SKU_RULE);
        return;
    }
    snprintf(out, INV_REF_MAX + 1, "%s", ref);
}
/* Check "lines" into want (sorted by SKU, no SKU twice). */
static void v_lines(struct moat_validation *v, json_t *body,
                    struct inv_reservation *want)
{
    static const char *const keys[] = {"sku", "quantity", NULL};
    json_t *lines = json_object_get(body, "lines");
    if (!lines) {
        moat_validation_add(v, "/lines", "is required");
        return;
    }
    if (!json_is_array(lines) || json_array_size(lines) < 1 ||
        json_array_size(lines) > INV_LINES_MAX) {
        moat_validation_add(v, "/lines", "must be an array of 1 to %d lines",
                            INV_LINES_MAX);
        return;
    }
    size_t i;
    json_t *line;
    bool ok = true;
    json_array_foreach(lines, i, line)
    {
        char base[32];
        const char *sku = NULL;
        int64_t q = 0;
        snprintf(base, sizeof(base), "/lines/%zu", i);
        if (!json_is_object(line)) {
            moat_validation_add(v, base, "must be an object, not %s",
                                moat_json_type_name(line));
            ok = false;
            continue;
        }
        moat_v_known_keys(v, line, base, keys);
        bool sku_ok =
            moat_v_string(v, line, base, "sku", true, 1, INV_SKU_MAX, &sku);
        if (sku_ok && !inv_sku_valid(sku)) {
            char pointer[48];
            moat_json_pointer(pointer, sizeof(pointer), base, "sku");
            moat_validation_add(v, pointer, "must be " SKU_RULE);
            sku_ok = false;
        }
        if (!moat_v_int(v, line, base, "quantity", true, 1, INV_LINE_QTY_MAX,
                        &q) ||
            !sku_ok) {
            ok = false;
            continue;
        }
        /* Two lines of one SKU would be ambiguous to compare on a repeat. */
        for (size_t k = 0; k < want->nlines; k++)
            if (strcmp(want->lines[k].sku, sku) == 0) {
                char pointer[48];
                moat_json_pointer(pointer, sizeof(pointer), base, "sku");
                moat_validation_add(
                    v, pointer, "repeats sku \"%s\" of an earlier line", sku);
                ok = false;
            }
        struct inv_line *l = &want->lines[want->nlines++];
        snprintf(l->sku, sizeof(l->sku), "%s", sku);
        l->quantity = q;
    }
    /* Sorted, so that a repeat in another order is the same request. */
    if (ok)
        inv_lines_sort(want);
}

bool inv_reservation_parse(struct moat_validation *v, json_t *body, bool strict,
                           struct inv_reservation *want)
{
    static const char *const keys[] = {"order_id", "customer_id", "lines",
                                       NULL};
    memset(want, 0, sizeof(*want));
    if (!json_is_object(body)) {
        moat_validation_add(v, "", "must be a JSON object, not %s",
                            body ? moat_json_type_name(body) : "nothing");
        return false;
    }
    if (strict)
        moat_v_known_keys(v, body, "", keys);
    v_ref(v, body, "order_id", want->order_id);
    v_ref(v, body, "customer_id", want->customer_id);
    v_lines(v, body, want);
    return moat_validation_ok(v);
}

static void handle_reserve(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    struct moat_validation v;
    json_t *body = NULL;
    struct inv_reservation *want = NULL, *res = NULL;
    struct inv_shortage *shortages = NULL;
    size_t nshort = 0;
    enum inv_reserve_result result;

    if (!require_internal(r))
        return;
    moat_validation_init(&v);
    if (moat_req_json(r, &body) < 0)
        goto cleanup;
    want = moat_xcalloc(1, sizeof(*want));
    if (!inv_reservation_parse(&v, body, true, want)) {
        reply_validation(r, &v);
        goto cleanup;
    }

    res = moat_xcalloc(1, sizeof(*res));
    shortages = moat_xcalloc(INV_LINES_MAX, sizeof(*shortages));
    int rc = inv_store_reserve(inv->store, want, inv->max_open_per_customer,
                               res, &result, shortages, &nshort);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "inventory", "reserve the stock");
        goto cleanup;
    }
    switch (result) {
    case INV_RESERVED:
        moat_log(MOAT_LOG_INFO, "stock reserved", "{s:s, s:s, s:I, s:s}",
                 "order_id", res->order_id, "customer_id", res->customer_id,
                 "lines", (json_int_t)res->nlines, "caller",
                 moat_req_principal(r)->service);
        inv_audit_reservation(inv->audit, r, "stock.reserve", res);
        reply_reservation(r, 201, res);
        break;
    case INV_RESERVE_EXISTS:
        reply_reservation(r, 200, res);
        break;
    case INV_RESERVE_MISMATCH:
        reply_res_conflict(r,
                           "this order_id already has a reservation with "
                           "other lines or another customer",
                           res);
        break;
    case INV_RESERVE_RELEASED:
        /* A late reserve after the saga compensated (docs/inventory.md). */
        reply_res_conflict(r,
                           "order already released: a reservation that "
                           "arrives after its release is refused",
                           res);
        break;
    case INV_RESERVE_CAP: {
        json_t *p = moat_problem_new(429, "this customer already holds the "
                                          "most open reservations allowed; "
                                          "commit or release one first");
        json_object_set_new(p, "customer_id", json_string(want->customer_id));
        json_object_set_new(p, "max_open",
                            json_integer(inv->max_open_per_customer));
        moat_req_reply_problem_json(r, p);
        break;
    }
    case INV_RESERVE_SHORT:
        reply_short(r, shortages, nshort);
        break;
    }

cleanup:
    json_decref(body);
    moat_validation_release(&v);
    free(want);
    free(res);
    free(shortages);
}

static void reply_no_reservation(struct moat_req *r)
{
    moat_req_reply_problem(r, 404, "there is no reservation for this order_id");
}

/* POST .../release and .../commit: to says which. */
static void handle_transition(struct moat_req *r, struct inv_service *inv,
                              enum inv_res_state to)
{
    struct inv_reservation *res = NULL;
    enum inv_transition_result result;
    bool release = to == INV_RELEASED;
    if (!require_internal(r))
        return;
    const char *id = moat_req_param(r, "order_id");
    if (!id || !inv_ref_valid(id)) {
        reply_no_reservation(r);
        return;
    }
    const char *caller = moat_req_principal(r)->service;
    res = moat_xcalloc(1, sizeof(*res));
    int rc = release ? inv_store_release(inv->store, id, caller, res, &result)
                     : inv_store_commit(inv->store, id, caller, res, &result);
    if (rc == MOAT_ENOTFOUND) {
        reply_no_reservation(r);
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "inventory",
                                   release ? "release the stock"
                                           : "commit the stock");
        goto cleanup;
    }
    switch (result) {
    case INV_TRANSITIONED:
    case INV_ABSENT:
    case INV_RETURNED: /* not asked for here: a committed one is 409 */
        moat_log(MOAT_LOG_INFO,
                 release ? "reservation released" : "reservation committed",
                 "{s:s, s:b, s:s}", "order_id", id, "absent",
                 result == INV_ABSENT, "caller", caller);
        inv_audit_reservation(inv->audit, r,
                              release ? "stock.release" : "stock.commit", res);
        reply_reservation(r, 200, res);
        break;
    case INV_ALREADY:
        reply_reservation(r, 200, res);
        break;
    case INV_WRONG_STATE:
        reply_res_conflict(r,
                           release ? "the reservation is committed: it can "
                                     "no longer be released"
                                   : "the reservation is released: it can no "
                                     "longer be committed",
                           res);
        break;
    }

cleanup:
    free(res);
}

/*
 * POST /v1/admin/reservations/{order_id}/return, the operator's only:
 * release a held reservation or return a committed one's units to on_hand
 * (logged as "return" adjustments), for an order that orders lost and
 * cannot re-create (moat reconcile, docs/recovery.md). Idempotent: a
 * released one is answered as it is.
 */
static void handle_admin_return(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    if (strcmp(moat_req_principal(r)->service, "operator") != 0) {
        moat_req_reply_problem(r, 403, "operators only");
        return;
    }
    const char *id = moat_req_param(r, "order_id");
    if (!id || !inv_ref_valid(id)) {
        reply_no_reservation(r);
        return;
    }
    struct inv_reservation *res = moat_xcalloc(1, sizeof(*res));
    enum inv_transition_result result;
    int rc = inv_store_return(inv->store, id, "operator", res, &result);
    if (rc == MOAT_ENOTFOUND)
        reply_no_reservation(r);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "inventory", "return the stock");
    else {
        if (result != INV_ALREADY)
            moat_log(MOAT_LOG_WARN, "reservation returned by the operator",
                     "{s:s, s:b}", "order_id", id, "returned",
                     result == INV_RETURNED);
        reply_reservation(r, 200, res);
    }
    free(res);
}

static void handle_release(struct moat_req *r, void *arg)
{
    handle_transition(r, arg, INV_RELEASED);
}

static void handle_commit(struct moat_req *r, void *arg)
{
    handle_transition(r, arg, INV_COMMITTED);
}

static void handle_reservation_get(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    if (!require_internal(r))
        return;
    const char *id = moat_req_param(r, "order_id");
    struct inv_reservation *res = moat_xcalloc(1, sizeof(*res));
    int rc =
        id ? inv_store_reservation_get(inv->store, id, res) : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND)
        reply_no_reservation(r);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "inventory", "read the stock");
    else
        reply_reservation(r, 200, res);
    free(res);
}

/* ---- audit listings: GET /v1/reservations, GET /v1/adjustments ---- */

/*
 * Audits read everything: a service acting for nobody (the auditor,
 * orders) or anyone acting for an administrator. A service acting for a
 * customer, and the gateway's relays of non-administrators, are refused.
 */
static bool require_auditor(struct moat_req *r)
{
    const struct moat_principal *p = moat_req_principal(r);
    if (moat_principal_is_admin(p))
        return true;
    if (p->service[0] != '\0' && strcmp(p->service, "gateway") != 0 &&
        p->user_id[0] == '\0')
        return true;
    moat_req_reply_problem(r, 403,
                           "audit listings are for services acting for "
                           "nobody and for administrators");
    return false;
}

struct page_query {
    size_t limit;
    const char *after; /* the raw value (borrowed from the request) */
    json_t *problem;   /* 400 being built; NULL while all is well */
};

/* ?after=&limit= and nothing else, each at most once. */
static void parse_page_query(struct moat_req *r, struct page_query *q)
{
    void *iter = NULL;
    const char *key, *value;
    bool seen_limit = false, seen_after = false;
    size_t nparams = 0;

    q->limit = AUDIT_LIMIT_DEFAULT;
    while (moat_req_query_next(r, &iter, &key, &value)) {
        nparams++;
        value = value ? value : "";
        if (strcmp(key, "limit") == 0) {
            int64_t limit;
            if (seen_limit)
                moat_problem_param_error(&q->problem, key,
                                         "is given more than once");
            else if (moat_parse_i64(value, 1, AUDIT_LIMIT_MAX, &limit) !=
                     MOAT_OK)
                moat_problem_param_error(&q->problem, key,
                                         "must be an integer from 1 to %d",
                                         AUDIT_LIMIT_MAX);
            else
                q->limit = (size_t)limit;
            seen_limit = true;
        } else if (strcmp(key, "after") == 0) {
            if (seen_after)
                moat_problem_param_error(&q->problem, key,
                                         "is given more than once");
            else
                q->after = value;
            seen_after = true;
        } else {
            moat_problem_param_error(&q->problem, key,
                                     "is not a known parameter (after, limit)");
        }
    }
    /* evhttp drops the whole query string when one parameter is not
     * name=value (see parse_list_query). */
    const char *target = moat_req_target(r);
    const char *qs = target ? strchr(target, '?') : NULL;
    if (nparams == 0 && qs && qs[1 + strspn(qs + 1, "&")] != '\0' &&
        !q->problem)
        q->problem = moat_problem_new(400, "the query string is malformed: "
                                           "every parameter must be "
                                           "name=value with a non-empty "
                                           "name");
}

static int list_reservation_one(const struct inv_reservation *res, void *arg)
{
    json_t *list = arg;
    json_array_append_new(list, inv_reservation_json(res));
    return MOAT_OK;
}

static void handle_reservation_list(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    struct page_query q = {0};
    bool more = false;
    if (!require_auditor(r))
        return;
    parse_page_query(r, &q);
    if (q.after && !inv_ref_valid(q.after))
        moat_problem_param_error(&q.problem, "after",
                                 "must be an order_id (" SKU_RULE ")");
    if (q.problem) {
        moat_req_reply_problem_json(r, q.problem);
        return;
    }
    json_t *list = json_array();
    int rc = inv_store_reservations_visit(inv->store, q.after, q.limit,
                                          list_reservation_one, list, &more);
    if (rc != MOAT_OK) {
        json_decref(list);
        moat_req_reply_store_error(r, rc, "inventory", "list the stock");
        return;
    }
    size_t n = json_array_size(list);
    json_t *next = more && n > 0 ? json_incref(json_object_get(
                                       json_array_get(list, n - 1), "order_id"))
                                 : json_null();
    moat_req_reply_json(
        r, 200,
        json_pack("{s:o, s:o}", "reservations", list, "next_after", next));
}

static int list_adjustment_one(const struct inv_adjustment *a, void *arg)
{
    json_t *list = arg;
    json_array_append_new(
        list, json_pack("{s:I, s:s, s:s, s:I, s:o, s:I, s:I, s:s, s:I}", "id",
                        (json_int_t)a->id, "sku", a->sku, "kind", a->kind,
                        "delta", (json_int_t)a->delta, "reason",
                        a->reason ? json_string(a->reason) : json_null(),
                        "on_hand_before", (json_int_t)a->on_hand_before,
                        "on_hand_after", (json_int_t)a->on_hand_after, "user",
                        a->user, "at", (json_int_t)(a->at_ms / 1000)));
    return MOAT_OK;
}

static void handle_adjustment_list(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    struct page_query q = {0};
    int64_t after = 0;
    bool more = false;
    if (!require_auditor(r))
        return;
    parse_page_query(r, &q);
    if (q.after && moat_parse_i64(q.after, 0, INT64_MAX, &after) != MOAT_OK)
        moat_problem_param_error(&q.problem, "after",
                                 "must be an adjustment id (an integer >= 0)");
    if (q.problem) {
        moat_req_reply_problem_json(r, q.problem);
        return;
    }
    json_t *list = json_array();
    int rc = inv_store_adjustments_visit(inv->store, after, q.limit,
                                         list_adjustment_one, list, &more);
    if (rc != MOAT_OK) {
        json_decref(list);
        moat_req_reply_store_error(r, rc, "inventory", "list the stock");
        return;
    }
    size_t n = json_array_size(list);
    json_t *next =
        more && n > 0
            ? json_incref(json_object_get(json_array_get(list, n - 1), "id"))
            : json_null();
    moat_req_reply_json(
        r, 200,
        json_pack("{s:o, s:o}", "adjustments", list, "next_after", next));
}

int inv_routes_register(struct moat_http_server *server,
                        struct inv_service *inv)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/stock", handle_list},
        {MOAT_GET | MOAT_HEAD, "/v1/stock/{sku}", handle_get},
        {MOAT_PUT, "/v1/stock/{sku}", handle_put},
        {MOAT_POST, "/v1/stock/{sku}/adjustments", handle_adjust},
        {MOAT_POST, "/v1/reservations", handle_reserve},
        {MOAT_GET | MOAT_HEAD, "/v1/reservations", handle_reservation_list},
        {MOAT_GET | MOAT_HEAD, "/v1/adjustments", handle_adjustment_list},
        {MOAT_GET | MOAT_HEAD, "/v1/reservations/{order_id}",
         handle_reservation_get},
        {MOAT_POST, "/v1/reservations/{order_id}/release", handle_release},
        {MOAT_POST, "/v1/reservations/{order_id}/commit", handle_commit},
        {MOAT_POST, "/v1/admin/reservations/{order_id}/return",
         handle_admin_return},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, inv);
        if (rc != MOAT_OK)
            return rc;
    }
#ifdef MOAT_TEST_HOOKS
    return inv_test_hooks_register(server, inv);
#else
    return MOAT_OK;
#endif
}
