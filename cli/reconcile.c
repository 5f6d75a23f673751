/*
 * reconcile.c - `moat reconcile`: after one service was restored to an
 * earlier point while the others kept going, find where the services
 * disagree about orders, through their APIs only, and repair what has a
 * safe repair through the owner's API (docs/recovery.md).
 *
 * It reads what the auditor reads first (cli_shop_gather: orders' orders,
 * inventory's reservations, notifications' notices), then for every order
 * that another service holds and orders does not know (orders restored:
 * the orders placed after its backup are gone), payments' payments of
 * that order and the read model's copy of its OrderPlaced (the lines as
 * paid), and for the orders orders knows, whether inventory agrees with
 * their final status.
 *
 * Divergences (each names the order and what every side holds):
 *   order-lost            inventory, payments or notifications hold an
 *                         order orders does not know. Repair: orders'
 *                         POST /v1/admin/orders/{id}/recover with the read
 *                         model's copy and the participants' states:
 *                         confirmed when sold and paid, else compensated
 *                         (its ReleaseStock / VoidPayment / RefundPayment)
 *                         and cancelled with reason "recovered". Without a
 *                         copy of the lines: compensated at the
 *                         participants (inventory's admin return, payments'
 *                         void or refund); one that holds nothing anywhere
 *                         is only counted (settled_unknown).
 *   reservation-missing   a confirmed order's reservation is not committed
 *                         (inventory restored past what it can re-derive
 *                         from orders' feed). Reported, not repaired: the
 *                         units may be gone; an operator decides.
 *   reservation-held      a cancelled order's reservation is still held or
 *                         committed. Repair: inventory's POST
 *                         /v1/admin/reservations/{id}/return.
 *   payment-missing       a confirmed order has no captured payment
 *                         (payments restored past what it can re-derive).
 *                         Reported, not repaired: the provider's ledger
 *                         says whether the money was taken.
 *   payment-held          a cancelled order's payment is still authorized
 *                         or captured. Repair: payments' POST
 *                         /v1/payments/{id}/void or /refund.
 *
 * Restores: besides the divergences, the report lists what was restored,
 * read from every service's GET /v1/admin/feed-epochs: each feed epoch
 * that came from a backup (moat restore) and every consumer that rewound
 * its cursor to it ("restores": [{"service", "epoch", "base_seq",
 * "from_backup", "restored_at", "current", "rewinds": [{"consumer",
 * "from_seq", "to_seq", "at"}]}]). The events a consumer had applied in
 * (to_seq, from_seq] are gone at the producer: that is where the
 * divergences come from. Only reported; a service that does not serve
 * the route (a program outside moat's skeleton) is skipped.
 *
 * Exit status: 0 when nothing diverges or everything found was repaired,
 * 1 when something is left, 2 when a service could not be read.
 */
#include "moat/common.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/id.h"

#include "cli.h"
#include "drill.h"

#define CALL_TIMEOUT_MS 10000
#define HISTORY_PAGES   100 /* pages of 100 read per customer at most */

struct rec {
    const struct deploy *d;
    const struct deploy_service *orders, *payments, *inventory, *readmodel;
    bool repair, json;
    json_t *divergences;
    size_t repaired, left;
    json_t *histories;      /* customer id -> {order id -> read model copy} */
    size_t settled_unknown; /* unknown to orders, nothing held, no copy */
};

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* jstr, or "" when o has no such string member. */
static const char *jtext(json_t *o, const char *k)
{
    const char *s = jstr(o, k);
    return s ? s : "";
}

/* GET svc path as the operator: the parsed 200 answer, or NULL (404 and
 * other answers; *status says which, 0 when there was none). */
static json_t *op_get(const struct rec *r, const struct deploy_service *svc,
                      const char *path, long *status)
{
    char *body = NULL;
    *status = 0;
    json_t *j = NULL;
    if (cli_operator_call(r->d, svc, "GET", path, NULL, CALL_TIMEOUT_MS, status,
                          &body) == MOAT_OK &&
        *status == 200)
        j = json_loads(body, 0, NULL);
    free(body);
    return j;
}

static char *lines_text(json_t *lines)
{
    struct moat_buf b = MOAT_BUF_INIT;
    size_t i;
    json_t *l;
    json_array_foreach(lines, i, l)
    {
        moat_buf_printf(
            &b, "%s%s:%lld", i ? "," : "", jstr(l, "sku"),
            (long long)json_integer_value(json_object_get(l, "quantity")));
    }
    return moat_buf_detach(&b, NULL);
}

/* The payment of order id that matters most (captured, authorized,
 * pending, then any), or NULL. */
static json_t *payment_of(struct rec *r, const char *id, bool *unreachable)
{
    if (!r->payments)
        return NULL;
    long st;
    char *path = moat_xasprintf("/v1/payments?order_id=%s", id);
    json_t *j = op_get(r, r->payments, path, &st);
    free(path);
    if (!j) {
        *unreachable = true;
        return NULL;
    }
    static const char *const rank[] = {"captured", "authorized", "pending"};
    json_t *best = NULL;
    size_t best_rank = MOAT_ARRAY_LEN(rank) + 1, i;
    json_t *p;
    json_array_foreach(json_object_get(j, "items"), i, p)
    {
        size_t k = 0;
        while (k < MOAT_ARRAY_LEN(rank) && strcmp(jstr(p, "status"), rank[k]))
            k++;
        if (!best || k < best_rank) {
            best = p;
            best_rank = k;
        }
    }
    json_incref(best);
    json_decref(j);
    return best;
}

/* The read model's copy of order id of customer, or NULL. */
static json_t *copy_of(struct rec *r, const char *customer, const char *id,
                       bool *unreachable)
{
    if (!r->readmodel || !customer)
        return NULL;
    json_t *h = json_object_get(r->histories, customer);
    if (!h) {
        h = json_object();
        json_object_set_new(r->histories, customer, h);
        char *after = NULL;
        for (int page = 0; page < HISTORY_PAGES; page++) {
            char *path =
                after ? moat_xasprintf("/v1/customers/%s/orders?limit=100&"
                                       "after=%s",
                                       customer, after)
                      : moat_xasprintf("/v1/customers/%s/orders?limit=100",
                                       customer);
            long st;
            json_t *j = op_get(r, r->readmodel, path, &st);
            free(path);
            if (!j && st != 404) {
                /* Not knowing is not "no copy": never compensate an
                 * order because the read model was down. */
                json_object_del(r->histories, customer);
                *unreachable = true;
                free(after);
                return NULL;
            }
            size_t i;
            json_t *o;
            json_array_foreach(json_object_get(j, "orders"), i, o)
            {
                if (jstr(o, "order_id"))
                    json_object_set(h, jstr(o, "order_id"), o);
            }
            free(after);
            after = jstr(j, "next_after") ? moat_xstrdup(jstr(j, "next_after"))
                                          : NULL;
            json_decref(j);
            if (!after)
                break;
        }
        free(after);
    }
    return json_object_get(h, id);
}

/* orders' recover body from the copy and the participants' states. */
static json_t *recover_body(json_t *copy, const char *res_state, json_t *pay)
{
    json_t *lines = json_array();
    size_t i;
    json_t *l;
    json_array_foreach(json_object_get(copy, "lines"), i, l)
    {
        json_array_append_new(
            lines, json_pack("{s:O, s:O, s:O, s:O, s:O}", "product_id",
                             json_object_get(l, "product_id"), "sku",
                             json_object_get(l, "sku"), "name",
                             json_object_get(l, "name"), "unit_price",
                             json_object_get(l, "unit_price_paid"), "quantity",
                             json_object_get(l, "quantity")));
    }
    json_t *b = json_pack("{s:s, s:O, s:O, s:o, s:s}", "customer_id",
                          jstr(copy, "customer_id"), "total",
                          json_object_get(copy, "total"), "currency",
                          json_object_get(copy, "currency"), "lines", lines,
                          "reservation", res_state);
    if (json_is_integer(json_object_get(copy, "placed_at")))
        json_object_set(b, "placed_at", json_object_get(copy, "placed_at"));
    if (pay)
        json_object_set_new(b, "payment",
                            json_pack("{s:s, s:s}", "id", jtext(pay, "id"),
                                      "status", jtext(pay, "status")));
    return b;
}

static int str_cmp(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static void report(struct rec *r, json_t *div)
{
    bool repaired = json_is_true(json_object_get(div, "repaired"));
    if (repaired)
        r->repaired++;
    else
        r->left++;
    json_array_append(r->divergences, div);
    if (r->json)
        return;
    printf("DIVERGENCE %-20s order %s: %s", jstr(div, "kind"),
           jstr(div, "order_id"), jstr(div, "detail"));
    if (jstr(div, "repair"))
        printf(" -> %s%s",
               repaired ? "repaired: " : "not repaired: ", jstr(div, "repair"));
    printf("\n");
}

/* POST path of svc as the operator; true on 200/201/202. */
static bool op_post(struct rec *r, const struct deploy_service *svc,
                    const char *path, json_t *body, char *why, size_t cap)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    char *answer = NULL;
    long st = 0;
    int rc = cli_operator_call(r->d, svc, "POST", path, text ? text : "{}",
                               CALL_TIMEOUT_MS, &st, &answer);
    free(text);
    bool ok = rc == MOAT_OK && st >= 200 && st < 300;
    if (!ok)
        snprintf(why, cap, "%s answered %ld: %.200s", svc->name, st,
                 answer ? answer : "");
    free(answer);
    return ok;
}

/*
 * No copy of a lost order's lines to re-create it with: undo at the
 * participants what they hold (inventory releases the reservation,
 * payments voids or refunds), each through its owner's API.
 */
static void compensate_lost(struct rec *r, json_t *div, const char *id,
                            const char *res_state, json_t *pay)
{
    bool held =
        strcmp(res_state, "held") == 0 || strcmp(res_state, "committed") == 0;
    const char *ps = jtext(pay, "status");
    bool captured = strcmp(ps, "captured") == 0;
    bool live = captured || strcmp(ps, "authorized") == 0;
    json_object_set_new(div, "repair",
                        json_string("compensated at the participants (no copy "
                                    "of the order to re-create it)"));
    if (!r->repair)
        return;
    char why[300], path[160];
    bool ok = true;
    if (held && r->inventory) {
        snprintf(path, sizeof(path), "/v1/admin/reservations/%s/return", id);
        ok = op_post(r, r->inventory, path, NULL, why, sizeof(why));
    }
    if (ok && live && r->payments) {
        snprintf(path, sizeof(path), "/v1/payments/%s/%s", jtext(pay, "id"),
                 captured ? "refund" : "void");
        ok = op_post(r, r->payments, path, NULL, why, sizeof(why));
    }
    json_object_set_new(div, "repaired", json_boolean(ok && (held || live)));
    if (!ok)
        json_object_set_new(div, "repair", json_string(why));
}

/* An order some service holds and orders does not know. */
static bool check_lost(struct rec *r, const char *id, json_t *res,
                       json_t *notes)
{
    if (!moat_ref_valid(id, 64)) {
        /* Not an id any service would make: never put it in a URL. */
        json_t *div = json_pack(
            "{s:s, s:s, s:s, s:s, s:b}", "kind", "order-lost", "order_id", id,
            "detail", "held by another service under a malformed id", "repair",
            "none: look at it by hand", "repaired", false);
        report(r, div);
        json_decref(div);
        return true;
    }
    /* Placed after orders' list was read (a shop under traffic)? */
    long known_st;
    char *opath = moat_xasprintf("/v1/orders/%s", id);
    json_t *known = op_get(r, r->orders, opath, &known_st);
    free(opath);
    json_decref(known);
    if (known)
        return true;
    if (known_st != 404)
        return false; /* orders did not answer */
    bool unreachable = false;
    json_t *pay = payment_of(r, id, &unreachable);
    if (unreachable)
        return false;
    const char *res_state =
        res && jstr(res, "state") ? jstr(res, "state") : "none";
    const char *customer = res ? jstr(res, "customer_id") : NULL;
    if (!customer && pay)
        customer = jstr(pay, "customer_id");
    if (!customer)
        customer = jstr(json_array_get(notes, 0), "customer_id");
    if (customer && !moat_ref_valid(customer, 64))
        customer = NULL; /* never put it in a URL */
    json_t *copy = copy_of(r, customer, id, &unreachable);
    if (unreachable) {
        json_decref(pay);
        return false;
    }
    bool holds = strcmp(res_state, "held") == 0 ||
                 strcmp(res_state, "committed") == 0 ||
                 (pay && (strcmp(jtext(pay, "status"), "captured") == 0 ||
                          strcmp(jtext(pay, "status"), "authorized") == 0 ||
                          strcmp(jtext(pay, "status"), "pending") == 0));
    if (!copy && !holds) {
        /* Settled everywhere (released, voided, refunded, declined) and
         * nothing to re-create it from: nothing to repair. */
        r->settled_unknown++;
        json_decref(pay);
        return true;
    }
    char *lines = lines_text(res ? json_object_get(res, "lines")
                                 : json_object_get(copy, "lines"));
    struct moat_buf kinds = MOAT_BUF_INIT;
    size_t i;
    json_t *n;
    json_array_foreach(notes, i, n)
    {
        moat_buf_printf(&kinds, "%s%s", i ? "," : "",
                        jstr(n, "kind") ? jstr(n, "kind") : "?");
    }
    char detail[768];
    snprintf(detail, sizeof(detail),
             "orders: none; inventory: %s [%s]; payments: %s %s %lld %s; "
             "notifications: [%s]; copy of OrderPlaced: %s",
             res_state, lines, pay ? jtext(pay, "id") : "none",
             pay ? jtext(pay, "status") : "",
             pay ? (long long)json_integer_value(json_object_get(pay, "amount"))
                 : 0LL,
             pay ? jtext(pay, "currency") : "", moat_buf_str(&kinds),
             copy ? "read model" : "none");
    bool sold = strcmp(res_state, "committed") == 0 && pay &&
                strcmp(jtext(pay, "status"), "captured") == 0;
    json_t *div = json_pack(
        "{s:s, s:s, s:s, s:{s:n, s:{s:s, s:s}, s:o, s:o}, s:b}", "kind",
        "order-lost", "order_id", id, "detail", detail, "holds", "orders",
        "inventory", "state", res_state, "lines", lines, "payments",
        pay ? json_pack("{s:s, s:s, s:O, s:O}", "id", jtext(pay, "id"),
                        "status", jtext(pay, "status"), "amount",
                        json_object_get(pay, "amount"), "currency",
                        json_object_get(pay, "currency"))
            : json_null(),
        "notifications", json_string(moat_buf_str(&kinds)), "repaired", false);
    json_object_set_new(div, "copy",
                        copy ? json_string("readmodel") : json_null());
    if (!copy) {
        compensate_lost(r, div, id, res_state, pay);
    } else {
        json_object_set_new(div, "repair",
                            json_string(sold
                                            ? "re-created as confirmed"
                                            : "re-created and compensated "
                                              "(cancelled, reason recovered)"));
        if (r->repair) {
            json_t *copy_c = json_deep_copy(copy);
            json_object_set_new(copy_c, "customer_id", json_string(customer));
            json_t *body = recover_body(copy_c, res_state, pay);
            char *path = moat_xasprintf("/v1/admin/orders/%s/recover", id);
            char why[300];
            bool ok = op_post(r, r->orders, path, body, why, sizeof(why));
            free(path);
            json_decref(body);
            json_decref(copy_c);
            json_object_set_new(div, "repaired", json_boolean(ok));
            if (!ok)
                json_object_set_new(div, "repair", json_string(why));
        }
    }
    report(r, div);
    json_decref(div);
    json_decref(pay);
    free(lines);
    moat_buf_release(&kinds);
    return true;
}

/* One divergence of a known order: report it, repairing it first with a
 * POST of repair_path (NULL: no safe repair, repair says why) to svc. */
static void known_divergence(struct rec *r, const char *kind, const char *id,
                             const char *detail, const char *repair,
                             const struct deploy_service *svc,
                             const char *repair_path)
{
    json_t *div =
        json_pack("{s:s, s:s, s:s, s:s, s:b}", "kind", kind, "order_id", id,
                  "detail", detail, "repair", repair, "repaired", false);
    if (r->repair && repair_path && svc) {
        char why[300];
        bool ok = op_post(r, svc, repair_path, NULL, why, sizeof(why));
        json_object_set_new(div, "repaired", json_boolean(ok));
        if (!ok)
            json_object_set_new(div, "repair", json_string(why));
    }
    report(r, div);
    json_decref(div);
}

/* A known, final order that inventory or payments disagrees with. */
static void check_known(struct rec *r, json_t *o, json_t *res, json_t *pays,
                        bool res_listed)
{
    const char *id = jstr(o, "id"), *st = jstr(o, "status");
    const char *rs = res ? jstr(res, "state") : "none";
    if (!id || !st || strcmp(st, "pending") == 0)
        return;
    bool confirmed = strcmp(st, "confirmed") == 0;
    char detail[256], path[128];
    if (res_listed && confirmed && strcmp(rs, "committed") != 0) {
        snprintf(detail, sizeof(detail),
                 "orders: confirmed; inventory: reservation %s", rs);
        known_divergence(r, "reservation-missing", id, detail,
                         "none safe: the units may be sold to others since; "
                         "an operator decides",
                         NULL, NULL);
    } else if (res_listed && !confirmed &&
               (strcmp(rs, "held") == 0 || strcmp(rs, "committed") == 0)) {
        snprintf(detail, sizeof(detail),
                 "orders: cancelled; inventory: reservation %s", rs);
        snprintf(path, sizeof(path), "/v1/admin/reservations/%s/return", id);
        known_divergence(r, "reservation-held", id, detail,
                         "released (or returned) by inventory", r->inventory,
                         path);
    }
    if (!r->payments || !json_is_array(pays))
        return;
    json_t *captured = NULL, *live = NULL;
    size_t i;
    json_t *p;
    json_array_foreach(pays, i, p)
    {
        const char *ps = jstr(p, "status");
        if (ps && strcmp(ps, "captured") == 0)
            captured = p;
        else if (ps && strcmp(ps, "authorized") == 0)
            live = p;
    }
    if (confirmed && !captured) {
        snprintf(detail, sizeof(detail),
                 "orders: confirmed, payment %s; payments: no capture (%zu "
                 "payments)",
                 jstr(o, "payment_id") ? jstr(o, "payment_id") : "?",
                 json_array_size(pays));
        known_divergence(r, "payment-missing", id, detail,
                         "none safe: compare with the provider's ledger", NULL,
                         NULL);
    } else if (!confirmed && (captured || live)) {
        json_t *pay = captured ? captured : live;
        snprintf(detail, sizeof(detail), "orders: cancelled; payments: %s %s",
                 jtext(pay, "id"), jtext(pay, "status"));
        snprintf(path, sizeof(path), "/v1/payments/%s/%s", jtext(pay, "id"),
                 captured ? "refund" : "void");
        known_divergence(
            r, "payment-held", id, detail,
            captured ? "refunded by payments" : "voided by payments",
            r->payments, moat_ref_valid(jtext(pay, "id"), 64) ? path : NULL);
    }
}

/* The restore of service's feed epoch ep in restores (by "service
 * epoch"), added when new. */
static json_t *restore_entry(json_t *restores, const char *service,
                             const char *ep, json_int_t base_seq)
{
    char *key = moat_xasprintf("%s %s", service, ep);
    json_t *e = json_object_get(restores, key);
    if (!e) {
        e = json_pack("{s:s, s:s, s:I, s:n, s:n, s:b, s:[]}", "service",
                      service, "epoch", ep, "base_seq", base_seq, "from_backup",
                      "restored_at", "current", false, "rewinds");
        json_object_set_new(restores, key, e);
    }
    free(key);
    return e;
}

/*
 * What was restored (see the top of the file): every service's own epoch
 * when it came from a backup, and the rewinds its consumers recorded.
 * Returns an array (new reference).
 */
static json_t *gather_restores(struct rec *r)
{
    json_t *restores = json_object();
    for (size_t i = 0; i < r->d->nservices; i++) {
        const struct deploy_service *svc = &r->d->services[i];
        if (svc->engine == DEPLOY_ENGINE_NONE)
            continue;
        long st;
        json_t *j = op_get(r, svc, "/v1/admin/feed-epochs", &st);
        if (!j && st != 404)
            fprintf(stderr,
                    "moat reconcile: cannot read the feed epochs of "
                    "%s (HTTP %ld): its restores are not listed\n",
                    svc->name, st);
        json_t *own = json_object_get(j, "epoch");
        if (jstr(own, "from_backup") && jstr(own, "epoch")) {
            json_t *e = restore_entry(
                restores, svc->name, jstr(own, "epoch"),
                json_integer_value(json_object_get(own, "base_seq")));
            json_object_set(e, "from_backup",
                            json_object_get(own, "from_backup"));
            json_object_set(e, "restored_at",
                            json_object_get(own, "created_at"));
            json_object_set_new(e, "current", json_true());
        }
        size_t k;
        json_t *src;
        json_array_foreach(json_object_get(j, "sources"), k, src)
        {
            size_t m;
            json_t *rw;
            json_array_foreach(json_object_get(src, "rewinds"), m, rw)
            {
                json_t *to = json_object_get(rw, "to_seq");
                if (!jstr(src, "source") || !jstr(rw, "new_epoch"))
                    continue;
                json_t *e = restore_entry(restores, jstr(src, "source"),
                                          jstr(rw, "new_epoch"),
                                          json_integer_value(to));
                json_array_append_new(
                    json_object_get(e, "rewinds"),
                    json_pack("{s:s, s:O, s:O, s:s}", "consumer", svc->name,
                              "from_seq", json_object_get(rw, "from_seq"),
                              "to_seq", to, "at", jtext(rw, "at")));
            }
        }
        json_decref(j);
    }
    json_t *out = json_array();
    const char *key;
    json_t *e;
    json_object_foreach(restores, key, e)
    {
        json_array_append(out, e);
    }
    json_decref(restores);
    return out;
}

static void print_restores(json_t *restores)
{
    size_t i;
    json_t *e;
    json_array_foreach(restores, i, e)
    {
        printf("RESTORED %s: feed epoch %s after seq %lld", jstr(e, "service"),
               jstr(e, "epoch"),
               (long long)json_integer_value(json_object_get(e, "base_seq")));
        if (jstr(e, "from_backup"))
            printf(", from backup %s at %s", jstr(e, "from_backup"),
                   jtext(e, "restored_at"));
        printf("%s\n", json_is_true(json_object_get(e, "current"))
                           ? " (its current epoch)"
                           : "");
        size_t k;
        json_t *rw;
        json_array_foreach(json_object_get(e, "rewinds"), k, rw)
        {
            printf(
                "  %s rewound its cursor on %s from %lld to %lld at %s\n",
                jstr(rw, "consumer"), jstr(e, "service"),
                (long long)json_integer_value(json_object_get(rw, "from_seq")),
                (long long)json_integer_value(json_object_get(rw, "to_seq")),
                jtext(rw, "at"));
        }
    }
}

static int run(struct rec *r)
{
    struct cli_shop_view v;
    bool ok = cli_shop_gather(r->d, CLI_AUDIT_PARALLEL, &v);
    int ret = CLI_AUDIT_UNREACHABLE;
    if (!ok)
        goto out;
    json_t *known = json_object();
    size_t i;
    json_t *o;
    json_array_foreach(v.orders, i, o)
    {
        const char *id = jstr(o, "id");
        if (!id)
            continue;
        json_object_set_new(known, id, json_true());
        check_known(r, o, json_object_get(v.reservations, id),
                    json_object_get(v.payments, id), v.reservations_listed);
    }
    /* Every order id another service holds, once, in id order. */
    json_t *lost = json_object();
    const char *id;
    json_t *x;
    json_object_foreach(v.reservations, id, x)
    {
        if (!json_object_get(known, id))
            json_object_set_new(lost, id, json_true());
    }
    json_object_foreach(v.notes, id, x)
    {
        if (!json_object_get(known, id))
            json_object_set_new(lost, id, json_true());
    }
    size_t n = json_object_size(lost);
    const char **ids = moat_xcalloc(n + 1, sizeof(*ids));
    size_t k = 0;
    json_object_foreach(lost, id, x)
    {
        ids[k++] = id;
    }
    qsort(ids, n, sizeof(*ids), str_cmp);
    bool complete = true;
    for (k = 0; k < n && complete; k++)
        complete =
            check_lost(r, ids[k], json_object_get(v.reservations, ids[k]),
                       json_object_get(v.notes, ids[k]));
    free(ids);
    json_decref(lost);
    json_decref(known);
    if (!complete) {
        cli_error("reconcile incomplete: orders, payments or the read model "
                  "did not answer");
        goto out;
    }
    ret = r->left ? CLI_AUDIT_VIOLATIONS : CLI_AUDIT_CLEAN;
    json_t *restores = gather_restores(r);
    if (r->json) {
        json_t *out =
            json_pack("{s:s, s:b, s:I, s:I, s:I, s:O, s:I}", "deployment",
                      r->d->name, "repair", r->repair, "divergence_count",
                      (json_int_t)json_array_size(r->divergences),
                      "repaired_count", (json_int_t)r->repaired, "left_count",
                      (json_int_t)r->left, "divergences", r->divergences,
                      "orders", (json_int_t)json_array_size(v.orders));
        json_object_set_new(out, "settled_unknown_count",
                            json_integer((json_int_t)r->settled_unknown));
        json_object_set_new(
            out, "restore_count",
            json_integer((json_int_t)json_array_size(restores)));
        json_object_set(out, "restores", restores);
        char *text = json_dumps(out, JSON_INDENT(2));
        puts(text);
        free(text);
        json_decref(out);
    } else {
        printf("reconcile of deployment \"%s\": %zu orders, %zu divergences, "
               "%zu repaired, %zu left%s\n",
               r->d->name, json_array_size(v.orders),
               json_array_size(r->divergences), r->repaired, r->left,
               r->repair ? "" : " (no --repair: nothing changed)");
        if (r->settled_unknown)
            printf("  %zu orders unknown to orders are settled everywhere "
                   "else and have no copy to re-create them from\n",
                   r->settled_unknown);
        print_restores(restores);
    }
    json_decref(restores);
out:
    cli_shop_view_release(&v);
    return ret;
}

int cli_cmd_reconcile(int argc, char **argv)
{
    static const struct option opts[] = {
        {"deployment", required_argument, NULL, 'f'},
        {"file", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"repair", no_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    struct rec r = {0};
    const char *file = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            file = optarg;
            break;
        case 'j':
            r.json = true;
            break;
        case 'r':
            r.repair = true;
            break;
        default:
            return cli_option_error("reconcile", c, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("reconcile", "unexpected argument '%s'",
                               argv[optind]);
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    r.d = d;
    r.orders = deploy_find(d, "orders");
    r.payments = deploy_find(d, "payments");
    r.inventory = deploy_find(d, "inventory");
    r.readmodel = deploy_find(d, "readmodel");
    r.divergences = json_array();
    r.histories = json_object();
    int rc = CLI_AUDIT_UNREACHABLE;
    if (!r.orders)
        cli_error("deployment \"%s\" has no service \"orders\"", d->name);
    else
        rc = run(&r);
    json_decref(r.divergences);
    json_decref(r.histories);
    deploy_free(d);
    return rc;
}
