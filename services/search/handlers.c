/*
 * handlers.c - the catalog index's HTTP API: its filters (currency, price
 * range) on top of the engine's q, limit and cursor (engine.h), the
 * indexed document, the lag report. The SQL lives in store.c; docs/api.md,
 * docs/events.md and docs/search.md describe the API for clients.
 *
 *   GET /v1/search?q=&limit=&cursor=&currency=&min_price=&max_price=
 *   GET /v1/search/products/{id}          the indexed document
 *   GET /v1/admin/search/lag?since_ms=&until_ms=
 *                                         event -> index lag percentiles
 *   test builds: POST /_test/heal
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "moat/problem.h"
#include "search.h"
#include "store.h"

#define AMOUNT_MAX 1000000000000LL /* catalog's cap: 10^12 */

/* ---- query parameters besides the engine's q, limit and cursor ---- */

static void parse_amount(struct srch_request *rq, const char *key,
                         const char *value, bool *has, int64_t *out)
{
    if (moat_parse_i64(value, 0, AMOUNT_MAX, out) != MOAT_OK)
        moat_problem_param_error(
            &rq->problem, key,
            "must be a whole number of minor units from 0 to %lld",
            (long long)AMOUNT_MAX);
    else
        *has = true;
}

/* srch_param_fn: arg is the struct srch_query being filled. */
static bool parse_param(struct srch_request *rq, const char *key,
                        const char *value, void *arg)
{
    struct srch_query *q = arg;
    if (strcmp(key, "currency") == 0) {
        if (strlen(value) != 3 || value[0] < 'A' || value[0] > 'Z' ||
            value[1] < 'A' || value[1] > 'Z' || value[2] < 'A' ||
            value[2] > 'Z')
            moat_problem_param_error(
                &rq->problem, key,
                "must be a three-letter ISO 4217 currency code "
                "in upper case, e.g. EUR");
        else
            q->currency = value;
    } else if (strcmp(key, "min_price") == 0) {
        parse_amount(rq, key, value, &q->has_min, &q->min_amount);
    } else if (strcmp(key, "max_price") == 0) {
        parse_amount(rq, key, value, &q->has_max, &q->max_amount);
    } else {
        return false;
    }
    return true;
}

/* ---- GET /v1/search ---- */

static void handle_search(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    struct srch_query q = {0};
    struct srch_request rq;

    srch_request_parse(r, &rq, parse_param, &q,
                       ", currency, min_price, max_price");
    if (q.has_min && q.has_max && q.min_amount > q.max_amount)
        moat_problem_param_error(&rq.problem, "min_price",
                                 "must not be greater than "
                                 "max_price");
    srch_serve(r, s->db, &rq, srch_store_search, &q);
    srch_request_release(&rq);
}

/* ---- GET /v1/search/products/{id} ---- */

static void handle_product(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    const char *id = moat_req_param(r, "id");
    json_t *doc = NULL;
    if (!id || !srch_id_valid(id, strlen(id))) {
        moat_req_reply_problem(r, 404, "no product with this id is indexed");
        return;
    }
    int rc = srch_store_get(s->db, id, &doc);
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(r, 404, "product \"%s\" is not indexed", id);
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_problem(r, 500, "the search index could not be read");
        return;
    }
    moat_req_reply_json(r, 200, doc);
}

/* ---- GET /v1/admin/search/lag (for bench/events.sh) ---- */

static void handle_lag(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    int64_t since = 0, until = INT64_MAX;
    const char *a = moat_req_query(r, "since_ms");
    const char *b = moat_req_query(r, "until_ms");
    if ((a && moat_parse_i64(a, 0, INT64_MAX, &since) != MOAT_OK) ||
        (b && moat_parse_i64(b, 0, INT64_MAX, &until) != MOAT_OK)) {
        moat_req_reply_problem(r, 400,
                               "since_ms and until_ms must be milliseconds "
                               "since the epoch");
        return;
    }
    json_t *out = NULL;
    if (srch_store_lag(s->db, since, until, &out) != MOAT_OK) {
        moat_req_reply_problem(r, 500, "the lag could not be computed");
        return;
    }
    moat_req_reply_json(r, 200, out);
}

#ifdef MOAT_TEST_HOOKS
/* ---- test builds only ---- */

static void handle_test_heal(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    s->poison_healed = true;
    moat_log(MOAT_LOG_WARN, "test hook: poison products healed", NULL);
    moat_req_reply_json(r, 200, json_pack("{s:b}", "healed", 1));
}
#endif

int srch_routes_register(struct moat_http_server *server,
                         struct srch_service *s)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/search", handle_search},
        {MOAT_GET | MOAT_HEAD, "/v1/search/products/{id}", handle_product},
        {MOAT_GET, "/v1/admin/search/lag", handle_lag},
#ifdef MOAT_TEST_HOOKS
        {MOAT_POST, "/_test/heal", handle_test_heal},
#endif
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, s);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
