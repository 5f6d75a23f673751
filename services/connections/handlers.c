/*
 * handlers.c - the connections service's HTTP API (docs/connections.md):
 * follows, connection requests, lists as cursor pages and the degree of
 * separation. The graph itself lives in graph.c.
 *
 * Authorisation: every write acts for the end user of the request (the
 * gateway's principal, moat/auth.h) and for nobody else: the acting user
 * is never taken from the body or the path, so a user cannot act as
 * another. A write without an end user is 401. Reads of follows and
 * connections are open to every authenticated caller (they are public on
 * the social networks this mirrors); pending requests are shown to their
 * owner only.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "connections.h"
#include "moat/auth.h"
#include "moat/log.h"
#include "moat/problem.h"

#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX     100
/* The only bodies are {"user_id": ...}: anything much larger is abuse. */
#define BODY_MAX 1024
/* A cursor is the hex of the last user id of the page. */
#define CURSOR_MAX (2 * CONN_USER_MAX)

/* ---- small helpers ---- */

/*
 * The acting end user, or NULL after replying 401 (no end user) or 403 (a
 * principal whose id this service cannot hold).
 */
static const char *actor(struct moat_req *r)
{
    if (!moat_req_require_user(r))
        return NULL;
    const char *me = moat_req_principal(r)->user_id;
    if (!conn_user_valid(me)) {
        moat_req_reply_problem(r, 403,
                               "the signed-in user's id is not one this "
                               "service accepts");
        return NULL;
    }
    return me;
}

/* The {user_id} of the path, or NULL after replying 404. */
static const char *path_user(struct moat_req *r, const char *param)
{
    const char *id = moat_req_param(r, param);
    if (id && conn_user_valid(id))
        return id;
    /* Not echoed: it came straight from the client. */
    moat_req_reply_problem(r, 404,
                           "there is no user with this id (user ids are 1 to "
                           "%d of A-Z a-z 0-9 . _ -)",
                           CONN_USER_MAX);
    return NULL;
}

/*
 * The body {"user_id": B} of a write by me: B (owned by *body) or NULL
 * after replying 413, 415, 400 or 422 (B missing, malformed, or me).
 */
static const char *body_user(struct moat_req *r, const char *me, json_t **body)
{
    static const char *const known[] = {"user_id", NULL};
    struct moat_validation v;
    const char *other = NULL;
    size_t len = 0;
    *body = NULL;
    moat_req_body(r, &len);
    if (len > BODY_MAX) {
        moat_req_reply_problem(r, 413, "the body is larger than %d bytes",
                               BODY_MAX);
        return NULL;
    }
    if (moat_req_json(r, body) < 0)
        return NULL; /* replied 415 or 400 */
    moat_validation_init(&v);
    if (!json_is_object(*body)) {
        moat_validation_add(&v, "", "must be a JSON object {\"user_id\": ...}");
    } else {
        moat_v_known_keys(&v, *body, "", known);
        if (moat_v_string(&v, *body, "", "user_id", true, 1, CONN_USER_MAX,
                          &other)) {
            if (!conn_user_valid(other))
                moat_validation_add(&v, "/user_id",
                                    "must be 1 to %d of A-Z a-z 0-9 . _ -",
                                    CONN_USER_MAX);
            else if (strcmp(other, me) == 0)
                moat_validation_add(&v, "/user_id",
                                    "must be another user than yourself");
        }
    }
    if (!moat_validation_ok(&v)) {
        moat_req_reply_problem_json(
            r, moat_validation_problem(&v, "the request has invalid fields"));
        moat_validation_release(&v);
        return NULL;
    }
    moat_validation_release(&v);
    return other;
}

/* The path's other user for a write by me, refusing me (422). */
static const char *path_other(struct moat_req *r, const char *me)
{
    const char *other = path_user(r, "user_id");
    if (other && strcmp(other, me) == 0) {
        moat_req_reply_problem(r, 422, "you cannot do this with yourself");
        return NULL;
    }
    return other;
}

static json_t *time_json(int64_t ms)
{
    char at[25];
    if (ms <= 0)
        return json_null();
    moat_time_rfc3339(ms, at);
    return json_string(at);
}

/* ---- follows ---- */

static void handle_follow(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    json_t *body = NULL;
    enum conn_outcome out;
    const char *me = actor(r);
    const char *other = me ? body_user(r, me, &body) : NULL;
    if (!other)
        goto cleanup;
    int rc = conn_graph_follow(cs->graph, me, other, moat_wall_ms(), &out);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "connections", "follow");
        goto cleanup;
    }
    if (out == CONN_CAP) {
        moat_req_reply_problem(r, 409,
                               "you follow %d users, the most one may follow",
                               CONN_FOLLOWING_MAX);
        goto cleanup;
    }
    moat_req_reply_json(
        r, out == CONN_DONE ? 201 : 200,
        json_pack("{s:s, s:s}", "follower_id", me, "followee_id", other));

cleanup:
    json_decref(body);
}

static void handle_unfollow(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    enum conn_outcome out;
    const char *me = actor(r);
    const char *other = me ? path_other(r, me) : NULL;
    if (!other)
        return;
    int rc = conn_graph_unfollow(cs->graph, me, other, &out);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "connections", "unfollow");
    else if (out == CONN_ABSENT)
        moat_req_reply_problem(r, 404, "you do not follow this user");
    else
        moat_req_reply(r, 204, NULL, NULL, 0);
}

/* ---- connections ---- */

static void reply_state(struct moat_req *r, int status, const char *other,
                        enum conn_state st)
{
    moat_req_reply_json(r, status,
                        json_pack("{s:s, s:s}", "user_id", other, "state",
                                  conn_state_name(st)));
}

static void handle_request(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    json_t *body = NULL;
    enum conn_outcome out;
    enum conn_state st;
    const char *me = actor(r);
    const char *other = me ? body_user(r, me, &body) : NULL;
    if (!other)
        goto cleanup;
    int rc =
        conn_graph_request(cs->graph, me, other, moat_wall_ms(), &out, &st);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "connections",
                                   "request the connection");
    else if (out == CONN_CAP)
        moat_req_reply_problem(r, 409,
                               "a user may have at most %d connections and "
                               "%d pending requests of their own",
                               CONN_CONNECTIONS_MAX, CONN_REQUESTS_OUT_MAX);
    else
        /* 201 for a new request; 200 when it accepted theirs or nothing
         * changed (the state says which). */
        reply_state(r, out == CONN_DONE && st == CONN_PENDING_OUT ? 201 : 200,
                    other, st);

cleanup:
    json_decref(body);
}

static void handle_accept(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    enum conn_outcome out;
    const char *me = actor(r);
    const char *other = me ? path_other(r, me) : NULL;
    if (!other)
        return;
    int rc = conn_graph_accept(cs->graph, me, other, moat_wall_ms(), &out);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "connections",
                                   "accept the connection");
    else if (out == CONN_ABSENT)
        moat_req_reply_problem(r, 404,
                               "this user has not asked you to connect");
    else if (out == CONN_CAP)
        moat_req_reply_problem(r, 409,
                               "you or this user already have %d "
                               "connections, the most one may have",
                               CONN_CONNECTIONS_MAX);
    else
        reply_state(r, 200, other, CONN_CONNECTED);
}

static void handle_remove(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    enum conn_outcome out;
    enum conn_state was;
    const char *me = actor(r);
    const char *other = me ? path_other(r, me) : NULL;
    if (!other)
        return;
    int rc = conn_graph_remove(cs->graph, me, other, &out, &was);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "connections",
                                   "remove the connection");
    else if (out == CONN_ABSENT)
        moat_req_reply_problem(r, 404,
                               "you are not connected to this user and no "
                               "request is pending between you");
    else
        moat_req_reply(r, 204, NULL, NULL, 0);
}

/* ---- pages ---- */

static void cursor_encode(const char *id, char out[CURSOR_MAX + 1])
{
    moat_hex(out, id, strlen(id));
}

static bool cursor_decode(const char *s, char out[CONN_USER_MAX + 1])
{
    size_t n = strlen(s);
    if (n == 0 || n % 2 != 0 || n > CURSOR_MAX ||
        moat_unhex(s, out, n / 2) != MOAT_OK)
        return false;
    out[n / 2] = '\0';
    return conn_user_valid(out);
}

enum { Q_LIMIT, Q_CURSOR, Q_EXTRA };

/*
 * Parse limit and cursor plus the route's own extra parameter (extra may
 * be NULL). Returns false after replying 400.
 */
static bool parse_page_query(struct moat_req *r, const char *extra,
                             size_t *limit, char after[CONN_USER_MAX + 1],
                             bool *has_after, const char **extra_val)
{
    struct moat_qparam q[] = {
        [Q_LIMIT] = {"limit", MOAT_Q_INT, 1, LIST_LIMIT_MAX, false, 0, NULL},
        [Q_CURSOR] = {"cursor", MOAT_Q_STR, 1, CURSOR_MAX, false, 0, NULL},
        [Q_EXTRA] = {extra, MOAT_Q_STR, 1, 2 * CONN_USER_MAX, false, 0, NULL},
    };
    json_t *problem = moat_req_parse_query(r, q, extra ? 3 : 2);
    if (!problem && q[Q_CURSOR].seen && !cursor_decode(q[Q_CURSOR].sval, after))
        moat_problem_param_error(&problem, "cursor",
                                 "is not a next_cursor returned by this API");
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return false;
    }
    *limit = q[Q_LIMIT].seen ? (size_t)q[Q_LIMIT].ival : LIST_LIMIT_DEFAULT;
    *has_after = q[Q_CURSOR].seen;
    if (extra_val)
        *extra_val = extra && q[Q_EXTRA].seen ? q[Q_EXTRA].sval : NULL;
    return true;
}

static void reply_page(struct moat_req *r, const char *user,
                       const struct conn_entry *items, size_t n, bool more,
                       bool with_since)
{
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_pack("{s:s}", "user_id", items[i].user_id);
        if (with_since)
            json_object_set_new(e, "since", time_json(items[i].since_ms));
        json_array_append_new(list, e);
    }
    char cursor[CURSOR_MAX + 1];
    if (more)
        cursor_encode(items[n - 1].user_id, cursor);
    moat_req_reply_json(r, 200,
                        json_pack("{s:s, s:o, s:o}", "user_id", user, "items",
                                  list, "next_cursor",
                                  more ? json_string(cursor) : json_null()));
}

/* One page of user's list l. */
static void list_page(struct moat_req *r, struct conn_service *cs,
                      const char *user, enum conn_list l)
{
    size_t limit, n;
    bool has_after, more;
    char cur[CONN_USER_MAX + 1];
    if (!parse_page_query(r, NULL, &limit, cur, &has_after, NULL))
        return;
    struct conn_entry *items = moat_xcalloc(limit, sizeof(*items));
    int rc = conn_graph_page(cs->graph, l, user, has_after ? cur : NULL, limit,
                             items, &n, &more);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "connections", "read the list");
    else
        reply_page(r, user, items, n, more, true);
    free(items);
}

static void handle_followers(struct moat_req *r, void *arg)
{
    const char *user = path_user(r, "id");
    if (user)
        list_page(r, arg, user, CONN_FOLLOWERS);
}

static void handle_following(struct moat_req *r, void *arg)
{
    const char *user = path_user(r, "id");
    if (user)
        list_page(r, arg, user, CONN_FOLLOWING);
}

static void handle_user_connections(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    size_t limit, n;
    bool has_after, more;
    char cur[CONN_USER_MAX + 1];
    const char *degree = NULL;
    const char *user = path_user(r, "id");
    if (!user ||
        !parse_page_query(r, "degree", &limit, cur, &has_after, &degree))
        return;
    bool second = degree && strcmp(degree, "2") == 0;
    if (degree && !second && strcmp(degree, "1") != 0) {
        json_t *problem = NULL;
        moat_problem_param_error(&problem, "degree", "must be 1 or 2");
        moat_req_reply_problem_json(r, problem);
        return;
    }
    struct conn_entry *items = moat_xcalloc(limit, sizeof(*items));
    const char *after = has_after ? cur : NULL;
    int rc = second ? conn_graph_second_page(cs->graph, user, after, limit,
                                             items, &n, &more)
                    : conn_graph_page(cs->graph, CONN_CONNECTIONS, user, after,
                                      limit, items, &n, &more);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "connections",
                                   "read the connections");
    else
        reply_page(r, user, items, n, more, !second);
    free(items);
}

/* GET /v1/connections/requests?direction=incoming|outgoing: my own. */
static void handle_requests(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    size_t limit, n;
    bool has_after, more;
    char cur[CONN_USER_MAX + 1];
    const char *dir = NULL;
    const char *me = actor(r);
    if (!me || !parse_page_query(r, "direction", &limit, cur, &has_after, &dir))
        return;
    bool out = dir && strcmp(dir, "outgoing") == 0;
    if (dir && !out && strcmp(dir, "incoming") != 0) {
        json_t *problem = NULL;
        moat_problem_param_error(&problem, "direction",
                                 "must be incoming or outgoing");
        moat_req_reply_problem_json(r, problem);
        return;
    }
    struct conn_entry *items = moat_xcalloc(limit, sizeof(*items));
    int rc =
        conn_graph_page(cs->graph, out ? CONN_REQUESTS_OUT : CONN_REQUESTS_IN,
                        me, has_after ? cur : NULL, limit, items, &n, &more);
    if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "connections", "read the requests");
    else
        reply_page(r, me, items, n, more, true);
    free(items);
}

/* GET /v1/users/{id}/counts */
static void handle_counts(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    int64_t c[CONN_NLISTS];
    const char *user = path_user(r, "id");
    if (!user)
        return;
    json_t *problem = moat_req_parse_query(r, NULL, 0);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    int rc = conn_graph_counts(cs->graph, user, c);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "connections", "read the counts");
        return;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:s, s:I, s:I, s:I}", "user_id", user,
                                  "following", (json_int_t)c[CONN_FOLLOWING],
                                  "followers", (json_int_t)c[CONN_FOLLOWERS],
                                  "connections",
                                  (json_int_t)c[CONN_CONNECTIONS]));
}

/* GET /v1/connections/degree?from=A&to=B */
static void handle_degree(struct moat_req *r, void *arg)
{
    struct conn_service *cs = arg;
    struct moat_qparam q[] = {
        {"from", MOAT_Q_STR, 1, CONN_USER_MAX, false, 0, NULL},
        {"to", MOAT_Q_STR, 1, CONN_USER_MAX, false, 0, NULL},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    for (size_t i = 0; i < MOAT_ARRAY_LEN(q) && !problem; i++)
        if (!q[i].seen || !conn_user_valid(q[i].sval))
            moat_problem_param_error(&problem, q[i].name,
                                     "is required: a user id, 1 to %d of "
                                     "A-Z a-z 0-9 . _ -",
                                     CONN_USER_MAX);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    int degree;
    int rc = conn_graph_degree(cs->graph, q[0].sval, q[1].sval, &degree);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "connections", "compute the degree");
        return;
    }
    moat_req_reply_json(
        r, 200,
        json_pack("{s:s, s:s, s:o}", "from", q[0].sval, "to", q[1].sval,
                  "degree", degree < 0 ? json_null() : json_integer(degree)));
}

int conn_routes_register(struct moat_http_server *server,
                         struct conn_service *cs)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_POST, "/v1/follows", handle_follow},
        {MOAT_DELETE, "/v1/follows/{user_id}", handle_unfollow},
        {MOAT_GET | MOAT_HEAD, "/v1/users/{id}/followers", handle_followers},
        {MOAT_GET | MOAT_HEAD, "/v1/users/{id}/following", handle_following},
        {MOAT_GET | MOAT_HEAD, "/v1/users/{id}/connections",
         handle_user_connections},
        {MOAT_GET | MOAT_HEAD, "/v1/users/{id}/counts", handle_counts},
        {MOAT_POST, "/v1/connections", handle_request},
        {MOAT_GET | MOAT_HEAD, "/v1/connections/requests", handle_requests},
        {MOAT_GET | MOAT_HEAD, "/v1/connections/degree", handle_degree},
        {MOAT_POST, "/v1/connections/{user_id}/accept", handle_accept},
        {MOAT_DELETE, "/v1/connections/{user_id}", handle_remove},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, cs);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
