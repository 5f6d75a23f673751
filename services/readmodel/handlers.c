/*
 * handlers.c - the read model's HTTP API: parameters, authorisation and
 * the reply. The SQL lives in store.c; docs/readmodel.md describes the
 * API for clients.
 *
 *   GET /v1/customers/{id}/orders?after=&limit=
 *
 * Every route needs a service token (the skeleton's guard). A customer end
 * user (a token acting for a user who is not an admin) sees only their own
 * history: someone else's is 403. An admin, or a service calling for no
 * end user, sees any.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "readmodel.h"
#include "store.h"

#define LIMIT_DEFAULT   20
#define LIMIT_MAX       100
#define ORDER_ID_PREFIX "ord_"

/* Ids as moat services make them, loosely: 1..64 of [A-Za-z0-9_-]. */
static bool key_valid(const char *s)
{
    return moat_ref_valid(s, RM_KEY_MAX);
}

/* ---- GET /v1/customers/{id}/orders ---- */

static void handle_history(struct moat_req *r, void *arg)
{
    struct rm_service *s = arg;
    const char *customer = moat_req_param(r, "id");
    struct moat_qparam q[] = {
        {.name = "after", .kind = MOAT_Q_STR, .min = 1, .max = RM_KEY_MAX},
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = LIMIT_MAX},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    if (q[0].seen && !problem && !moat_id_valid(q[0].sval, ORDER_ID_PREFIX))
        moat_problem_param_error(&problem, "after",
                                 "must be an order id (a next_after returned "
                                 "by this API)");
    if (!customer || !key_valid(customer)) {
        if (!problem)
            problem = moat_problem_new(400, "the customer id in the path is "
                                            "not an id: 1 to 64 letters, "
                                            "digits, '_' or '-'");
    }
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }

    /* A customer sees their own history only. */
    const struct moat_principal *p = moat_req_principal(r);
    if (p->user_id[0] && !moat_principal_is_admin(p) &&
        strcmp(p->user_id, customer) != 0) {
        moat_req_reply_problem(r, 403,
                               "a customer may only read their own order "
                               "history");
        return;
    }

    size_t limit = q[1].seen ? (size_t)q[1].ival : LIMIT_DEFAULT;
    struct moat_buf body = MOAT_BUF_INIT;
    size_t n = 0;
    bool more = false;
    char last[RM_KEY_MAX + 1];
    moat_buf_addstr(&body, "{\"orders\":[");
    int rc = rm_store_history(s->db, customer, q[0].seen ? q[0].sval : NULL,
                              limit, &body, &n, &more, last);
    if (rc != MOAT_OK) {
        moat_buf_release(&body);
        moat_log(MOAT_LOG_ERROR, "cannot read the order history", "{s:s}",
                 "error", moat_strerror(rc));
        if (rc == MOAT_EBUSY)
            moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem(r, rc == MOAT_EBUSY ? 503 : 500,
                               "the order history could not be read");
        return;
    }
    /* The last id is an order id from the view: no escaping needed. */
    if (more)
        moat_buf_printf(&body, "],\"next_after\":\"%s\"}", last);
    else
        moat_buf_addstr(&body, "],\"next_after\":null}");
    moat_req_reply(r, 200, "application/json", body.data, body.len);
    moat_buf_release(&body);
}

int rm_routes_register(struct moat_http_server *server, struct rm_service *s)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/customers/{id}/orders", handle_history},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, s);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
