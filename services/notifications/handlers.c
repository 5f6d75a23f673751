/*
 * handlers.c - notifications' HTTP API: parameters, authorisation and
 * replies. The SQL lives in store.c; docs/notifications.md describes the
 * API for clients.
 *
 *   GET /v1/notifications?customer_id=&order_id=&after=&limit=
 *   GET /v1/notifications/{id}
 *
 * Every route needs a service token (the skeleton's guard). A customer end
 * user (a token acting for a user who is not an admin) sees only their own
 * notifications: the list is forced to their customer_id and someone
 * else's notification is 404, so ids cannot be probed. An admin, or a
 * service calling for no end user, sees all.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "notifications.h"
#include "store.h"

#define LIMIT_DEFAULT 100
#define LIMIT_MAX     500

/* Ids as moat services make them, loosely: 1..64 of [A-Za-z0-9_-]. */
static bool key_valid(const char *s)
{
    return moat_ref_valid(s, NTF_KEY_MAX);
}

static bool utf8_valid(const char *s)
{
    json_t *j = json_string(s);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

/* The customer the caller is restricted to, or NULL for any (an admin, or
 * a service acting for no end user). */
static const char *restricted_to(const struct moat_req *r)
{
    const struct moat_principal *p = moat_req_principal(r);
    if (!p->user_id[0] || moat_principal_is_admin(p))
        return NULL;
    return p->user_id;
}

static json_t *ms_to_s(int64_t ms, bool present)
{
    return present ? json_integer((json_int_t)(ms / 1000)) : json_null();
}

static json_t *row_json(const struct ntf_row *n, bool with_body)
{
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:o}", "id", n->id,
                  "order_id", n->order_id, "customer_id", n->customer_id,
                  "kind", n->kind, "status", n->status, "subject", n->subject,
                  "created_at", ms_to_s(n->created_ms, true), "delivered_at",
                  ms_to_s(n->delivered_ms, n->delivered), "trace_id",
                  n->trace_id ? json_string(n->trace_id) : json_null());
    if (!o)
        moat_die("cannot build a notification's JSON");
    if (with_body)
        json_object_set_new(o, "body", json_string(n->body));
    return o;
}

/* ---- GET /v1/notifications ---- */

static void parse_param(struct ntf_query *q, json_t **problem, const char *key,
                        const char *value)
{
    if (strcmp(key, "customer_id") == 0 || strcmp(key, "order_id") == 0) {
        if (!key_valid(value))
            moat_problem_param_error(problem, key,
                                     "must be an id: 1 to %d letters, digits, "
                                     "'_' or '-'",
                                     NTF_KEY_MAX);
        else if (key[0] == 'c')
            q->customer_id = value;
        else
            q->order_id = value;
    } else if (strcmp(key, "after") == 0) {
        if (!moat_id_valid(value, NTF_ID_PREFIX))
            moat_problem_param_error(problem, key,
                                     "must be a notification id (a "
                                     "next_after returned by this API)");
        else
            q->after = value;
    } else if (strcmp(key, "limit") == 0) {
        int64_t limit;
        if (moat_parse_i64(value, 1, LIMIT_MAX, &limit) != MOAT_OK)
            moat_problem_param_error(
                problem, key, "must be an integer from 1 to %d", LIMIT_MAX);
        else
            q->limit = (size_t)limit;
    } else {
        moat_problem_param_error(problem, key,
                                 "is not a known parameter (customer_id, "
                                 "order_id, after, limit)");
    }
}

/* Parse the query into q; NULL, or the 400 problem to reply with. */
static json_t *parse_list(struct moat_req *r, struct ntf_query *q)
{
    void *iter = NULL;
    const char *key, *value;
    json_t *problem = NULL;
    json_t *seen = json_object();
    size_t nparams = 0;

    q->limit = LIMIT_DEFAULT;
    while (moat_req_query_next(r, &iter, &key, &value)) {
        nparams++;
        /* A repeated parameter is ambiguous (which one wins?): refuse it. */
        if (utf8_valid(key)) {
            if (json_object_get(seen, key)) {
                moat_problem_param_error(&problem, key,
                                         "is given more than once");
                continue;
            }
            json_object_set_new(seen, key, json_true());
        }
        parse_param(q, &problem, key, value ? value : "");
    }
    json_decref(seen);

    /* evhttp drops the whole query string when one parameter is not
     * name=value: refuse rather than answer an unfiltered list. */
    const char *target = moat_req_target(r);
    const char *qs = target ? strchr(target, '?') : NULL;
    if (nparams == 0 && qs && qs[1 + strspn(qs + 1, "&")] != '\0' && !problem)
        problem = moat_problem_new(400, "the query string is malformed: "
                                        "every parameter must be name=value "
                                        "with a non-empty name");
    return problem;
}

static void handle_list(struct moat_req *r, void *arg)
{
    struct ntf_service *s = arg;
    struct ntf_query q = {0};
    json_t *problem = parse_list(r, &q);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    /* A customer's list is always their own, whatever they asked for. */
    const char *own = restricted_to(r);
    if (own)
        q.customer_id = own;

    struct ntf_row *rows = NULL;
    size_t n = 0;
    size_t limit = q.limit;
    q.limit = limit + 1; /* one more tells whether a page follows */
    int rc = ntf_store_list(s->db, &q, &rows, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "notifications",
                                   "read the notifications");
        return;
    }
    json_t *items = json_array();
    size_t shown = n > limit ? limit : n;
    for (size_t i = 0; i < shown; i++)
        json_array_append_new(items, row_json(&rows[i], false));
    json_t *next = n > limit ? json_string(rows[shown - 1].id) : json_null();
    ntf_rows_free(rows, n);
    moat_req_reply_json(
        r, 200,
        json_pack("{s:o, s:o}", "notifications", items, "next_after", next));
}

/* ---- GET /v1/notifications/{id} ---- */

static void handle_get(struct moat_req *r, void *arg)
{
    struct ntf_service *s = arg;
    const char *id = moat_req_param(r, "id");
    if (!id || !moat_id_valid(id, NTF_ID_PREFIX)) {
        moat_req_reply_problem(r, 404, "no notification has this id");
        return;
    }
    struct ntf_row row = {0};
    int rc = ntf_store_get(s->db, id, &row);
    const char *own = restricted_to(r);
    if (rc == MOAT_ENOTFOUND ||
        (rc == MOAT_OK && own && strcmp(row.customer_id, own) != 0)) {
        /* Someone else's looks exactly like none at all. */
        ntf_row_release(&row);
        moat_req_reply_problem(r, 404, "notification \"%s\" does not exist",
                               id);
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "notifications",
                                   "read the notifications");
        return;
    }
    json_t *body = row_json(&row, true);
    ntf_row_release(&row);
    moat_req_reply_json(r, 200, body);
}

int ntf_routes_register(struct moat_http_server *server, struct ntf_service *s)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/notifications", handle_list},
        {MOAT_GET | MOAT_HEAD, "/v1/notifications/{id}", handle_get},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, s);
        if (rc != MOAT_OK)
            return rc;
    }
#ifdef MOAT_TEST_HOOKS
    return ntf_test_hooks_register(server, s);
#else
    return MOAT_OK;
#endif
}
