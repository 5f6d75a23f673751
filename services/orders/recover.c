/*
 * recover.c - POST /v1/admin/orders/{id}/recover: re-create an order this
 * database lost (it was restored from a backup taken before the order was
 * placed) from what other services still hold, for `moat reconcile
 * --repair` (docs/recovery.md). Only the operator may call it.
 *
 * Body (every member from another service's records):
 *   {"customer_id", "total", "currency", "placed_at" (epoch s, optional),
 *    "trace_id" (32 hex, optional), "lines": [{"product_id", "sku",
 *    "name", "unit_price", "quantity"}] (the copy of OrderPlaced a read
 *    model keeps), "reservation": "held"|"committed"|"released"|"none"
 *    (inventory's), "payment": {"id", "status"} or null (payments')}
 *
 * Idempotent by order id: an order orders already has is answered 200 as
 * it is, unchanged; a re-created one 201 (ord_saga_recover decides its
 * outcome and sends the events and commands through the outbox, so every
 * other service learns of it the usual way).
 */
#include "moat/common.h"

#include <stdio.h>
#include <string.h>

#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "moat/trace.h"
#include "orders.h"

/* Signed with the deployment's operator key (the moat CLI), which is not
 * the key of any service: no other caller can be "operator". */
static bool is_operator(const struct moat_req *req)
{
    return strcmp(moat_req_principal(req)->service, "operator") == 0;
}

static bool one_of(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0)
            return true;
    return false;
}

/* Fill o from body; returns a problem or NULL. */
static json_t *parse(json_t *body, struct ord_order *o, const char **res,
                     const char **pay)
{
    static const char *const keys[] = {"customer_id", "total",    "currency",
                                       "placed_at",   "trace_id", "lines",
                                       "reservation", "payment",  NULL};
    static const char *const line_keys[] = {"product_id", "sku",      "name",
                                            "unit_price", "quantity", NULL};
    static const char *const res_states[] = {"held", "committed", "released",
                                             "none", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", keys);
    const char *customer = NULL, *currency = NULL, *trace = NULL;
    int64_t total = 0, placed = 0;
    moat_v_string(&v, body, "", "customer_id", true, 1, ORD_REF_MAX, &customer);
    moat_v_int(&v, body, "", "total", true, 0, INT64_C(1) << 50, &total);
    moat_v_string(&v, body, "", "currency", true, 3, 3, &currency);
    moat_v_int(&v, body, "", "placed_at", false, 0, INT64_C(1) << 40, &placed);
    moat_v_string(&v, body, "", "trace_id", false, 32, 32, &trace);
    moat_v_string(&v, body, "", "reservation", true, 1, 16, res);
    if (*res && !one_of(*res, res_states))
        moat_validation_add(&v, "/reservation",
                            "must be held, committed, released or none");
    json_t *p = json_object_get(body, "payment");
    *pay = "none";
    if (p && !json_is_null(p)) {
        static const char *const pay_keys[] = {"id", "status", NULL};
        const char *pid = NULL;
        if (!json_is_object(p)) {
            moat_validation_add(&v, "/payment", "must be an object or null");
        } else {
            moat_v_known_keys(&v, p, "/payment", pay_keys);
            moat_v_string(&v, p, "/payment", "id", true, 1, ORD_REF_MAX, &pid);
            moat_v_string(&v, p, "/payment", "status", true, 1, 16, pay);
            if (pid)
                snprintf(o->payment_id, sizeof(o->payment_id), "%s", pid);
        }
    }
    json_t *lines = json_object_get(body, "lines");
    size_t n = json_array_size(lines);
    if (!json_is_array(lines) || n < 1 || n > ORD_LINES_MAX)
        moat_validation_add(&v, "/lines", "must be 1 to 50 lines");
    else
        o->lines = moat_xcalloc(n, sizeof(*o->lines));
    for (size_t i = 0; o->lines && i < n; i++) {
        json_t *l = json_array_get(lines, i);
        char base[32];
        snprintf(base, sizeof(base), "/lines/%zu", i);
        if (!json_is_object(l)) {
            moat_validation_add(&v, base, "must be an object");
            continue;
        }
        const char *pid = NULL, *sku = NULL, *name = NULL;
        struct ord_line *ol = &o->lines[o->nlines++];
        moat_v_known_keys(&v, l, base, line_keys);
        moat_v_string(&v, l, base, "product_id", true, 1, ORD_REF_MAX, &pid);
        moat_v_string(&v, l, base, "sku", true, 1, ORD_SKU_MAX, &sku);
        moat_v_string(&v, l, base, "name", true, 1, 4 * ORD_NAME_MAX, &name);
        moat_v_int(&v, l, base, "unit_price", true, 0, INT64_C(1) << 40,
                   &ol->unit_price);
        moat_v_int(&v, l, base, "quantity", true, 1, ORD_QTY_MAX,
                   &ol->quantity);
        snprintf(ol->product_id, sizeof(ol->product_id), "%s", pid ? pid : "");
        snprintf(ol->sku, sizeof(ol->sku), "%s", sku ? sku : "");
        ol->name = moat_xstrdup(name ? name : "");
    }
    if (!moat_validation_ok(&v))
        return moat_validation_problem(&v, "the order cannot be recovered");
    moat_validation_release(&v);
    snprintf(o->customer_id, sizeof(o->customer_id), "%s", customer);
    snprintf(o->currency, sizeof(o->currency), "%s", currency);
    o->total = total;
    o->created_ms = placed * 1000;
    if (trace)
        snprintf(o->traceparent, sizeof(o->traceparent), "00-%s-%016x-01",
                 trace, 1u);
    return NULL;
}

static void handle_recover(struct moat_req *req, void *arg)
{
    struct ord_service *os = arg;
    if (!is_operator(req)) {
        moat_req_reply_problem(req, 403, "operators only");
        return;
    }
    const char *id = moat_req_param(req, "id");
    if (!moat_id_valid(id, ORD_ID_PREFIX)) {
        moat_req_reply_problem(req, 404, "not an order id");
        return;
    }
    json_t *body = NULL;
    if (moat_req_json(req, &body) != MOAT_OK)
        return; /* answered */
    struct ord_order o = {0};
    const char *res = NULL, *pay = NULL;
    json_t *problem = json_is_object(body)
                          ? parse(body, &o, &res, &pay)
                          : moat_problem_new(422, "the body must be an object");
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        goto out;
    }
    snprintf(o.id, sizeof(o.id), "%s", id);
    if (!o.traceparent[0])
        moat_trace_format(moat_req_trace(req), o.traceparent);
    struct ord_order have;
    int rc = ord_order_get(os->db, id, true, &have);
    bool created = false;
    if (rc == MOAT_ENOTFOUND) {
        rc = moat_db_begin(os->db);
        if (rc == MOAT_OK)
            rc = ord_saga_recover(os, &o, res, pay);
        if (rc == MOAT_OK)
            rc = moat_db_commit(os->db);
        else
            moat_db_rollback(os->db);
        if (rc == MOAT_OK) {
            moat_outbox_committed(os->outbox);
            created = true;
            moat_log(MOAT_LOG_WARN, "order recovered", "{s:s, s:s, s:s, s:s}",
                     "order", id, "reservation", res, "payment", pay, "status",
                     o.status);
        }
        if (rc == MOAT_OK)
            rc = ord_order_get(os->db, id, true, &have);
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(req, rc, "orders", "recover the order");
        goto out;
    }
    moat_req_reply_json(req, created ? 201 : 200,
                        json_pack("{s:b, s:s, s:s, s:s}", "recovered", created,
                                  "id", have.id, "status", have.status, "step",
                                  have.step));
    ord_order_release(&have);
out:
    ord_order_release(&o);
    json_decref(body);
}

int ord_recover_register(struct ord_service *os)
{
    return moat_http_route(os->svc->http, MOAT_POST,
                           "/v1/admin/orders/{id}/recover", handle_recover, os);
}
