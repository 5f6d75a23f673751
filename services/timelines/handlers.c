/*
 * handlers.c - the timelines' HTTP API (docs/timelines.md). The SQL lives
 * in store.c.
 *
 *   GET /v1/timeline/home?cursor=&limit=      the caller's home timeline
 *   GET /v1/timelines/{user_id}?cursor=&limit= anyone's, for an admin or a
 *                                              service acting for no user
 *
 * The cursor is opaque to clients: the hex of the last post's sequence.
 */
#include "moat/common.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "timelines.h"

#define LIMIT_DEFAULT 20
#define LIMIT_MAX     100
#define CURSOR_MAX    32

static void cursor_encode(int64_t seq, char out[CURSOR_MAX + 1])
{
    char dec[24];
    snprintf(dec, sizeof(dec), "%" PRId64, seq);
    moat_hex(out, dec, strlen(dec));
}

/* A cursor this API returned: the hex of a positive decimal sequence. */
static bool cursor_decode(const char *s, int64_t *seq)
{
    char dec[CURSOR_MAX / 2 + 1];
    size_t len = strlen(s);
    if (len == 0 || len % 2 || len > CURSOR_MAX ||
        moat_unhex(s, dec, len / 2) != MOAT_OK)
        return false;
    dec[len / 2] = '\0';
    int64_t v = 0;
    for (size_t i = 0; i < len / 2; i++) {
        if (dec[i] < '0' || dec[i] > '9' || v > (INT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (dec[i] - '0');
    }
    *seq = v;
    return v > 0;
}

static void reply_timeline(struct moat_req *r, struct tl_service *s,
                           const char *user)
{
    struct moat_qparam q[] = {
        {.name = "cursor", .kind = MOAT_Q_STR, .min = 1, .max = CURSOR_MAX},
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = LIMIT_MAX},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    int64_t before = INT64_MAX;
    if (!problem && q[0].seen && !cursor_decode(q[0].sval, &before))
        moat_problem_param_error(&problem, "cursor",
                                 "is not a next_cursor returned by this API");
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    size_t limit = q[1].seen ? (size_t)q[1].ival : LIMIT_DEFAULT;
    struct moat_buf body = MOAT_BUF_INIT;
    size_t n = 0;
    int64_t last = 0;
    bool more = false;
    moat_buf_addstr(&body, "{\"posts\":[");
    int rc = tl_store_home(s->db, user, before, limit, &body, &n, &last, &more);
    if (rc != MOAT_OK) {
        moat_buf_release(&body);
        moat_log(MOAT_LOG_ERROR, "cannot read a home timeline", "{s:s}",
                 "error", moat_strerror(rc));
        if (rc == MOAT_EBUSY)
            moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem(r, rc == MOAT_EBUSY ? 503 : 500,
                               "the timeline could not be read");
        return;
    }
    if (more) {
        char cur[CURSOR_MAX + 1];
        cursor_encode(last, cur);
        moat_buf_printf(&body, "],\"next_cursor\":\"%s\"}", cur);
    } else {
        moat_buf_addstr(&body, "],\"next_cursor\":null}");
    }
    moat_req_reply(r, 200, "application/json", body.data, body.len);
    moat_buf_release(&body);
}

static void handle_home(struct moat_req *r, void *arg)
{
    if (!moat_req_require_user(r))
        return;
    reply_timeline(r, arg, moat_req_principal(r)->user_id);
}

static void handle_user(struct moat_req *r, void *arg)
{
    const char *user = moat_req_param(r, "user_id");
    const struct moat_principal *p = moat_req_principal(r);
    if (p->user_id[0] && !moat_principal_is_admin(p) &&
        strcmp(p->user_id, user) != 0) {
        moat_req_reply_problem(r, 403,
                               "a user may read only their own home "
                               "timeline");
        return;
    }
    if (strlen(user) > TL_KEY_MAX) {
        moat_req_reply_problem(r, 400, "the user id is too long");
        return;
    }
    reply_timeline(r, arg, user);
}

int tl_routes_register(struct moat_http_server *server, struct tl_service *s)
{
    int rc = moat_http_route(server, MOAT_GET | MOAT_HEAD, "/v1/timeline/home",
                             handle_home, s);
    if (rc == MOAT_OK)
        rc = moat_http_route(server, MOAT_GET | MOAT_HEAD,
                             "/v1/timelines/{user_id}", handle_user, s);
    return rc;
}
