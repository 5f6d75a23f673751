/*
 * handlers.c - profiles' HTTP API (docs/profiles.md):
 *
 *   GET /v1/profiles/{user_id}    anyone (through the gateway: public)
 *   GET /v1/profiles?handle=NAME  resolve a handle (for @mentions)
 *   GET /v1/profiles/me           the end user's own profile
 *   PUT /v1/profiles/me           replace the end user's own profile
 *
 * Authorisation: the only write is to "me", the end user the gateway
 * authenticated (moat_req_principal); there is no route that writes
 * another user's profile, whatever the caller's role.
 */
#include "moat/common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "profiles.h"

/* ---- replies ---- */

static void reply_store_fault(struct moat_req *r, int rc, const char *what)
{
    if (rc == PRO_EINTEGRITY) {
        /* Logged by the store (row and field, never the content). */
        moat_req_reply_problem(r, 500,
                               "the stored profile failed its integrity "
                               "check and is not shown");
        return;
    }
    moat_req_reply_store_error(r, rc, "profiles", what);
}

static void reply_profile(struct moat_req *r, const struct pro_profile *p)
{
    char etag[PRO_ETAG_MAX];
    pro_etag(p, etag);
    moat_req_set_header(r, "ETag", etag);
    moat_req_reply_json(r, 200, pro_profile_json(p));
}

/* Reply with the profile of user_id, or 404 / 5xx. */
static void reply_by_id(struct moat_req *r, struct pro_service *ps,
                        const char *user_id)
{
    struct pro_profile p = {0};
    if (!pro_user_id_valid(user_id)) {
        moat_req_reply_problem(r, 404, "there is no profile with this user id");
        return;
    }
    int rc = pro_store_get(ps->store, user_id, &p);
    if (rc == MOAT_ENOTFOUND)
        moat_req_reply_problem(r, 404, "there is no profile for user \"%s\"",
                               user_id);
    else if (rc != MOAT_OK)
        reply_store_fault(r, rc, "read the profile");
    else
        reply_profile(r, &p);
    pro_profile_release(&p);
}

/* The end user a "me" request acts for, or NULL after replying 401/403. */
static const char *me(struct moat_req *r)
{
    if (!moat_req_require_user(r))
        return NULL;
    const char *id = moat_req_principal(r)->user_id;
    if (!pro_user_id_valid(id)) {
        moat_req_reply_problem(r, 403, "this user id cannot have a profile");
        return NULL;
    }
    return id;
}

/* ---- GET ---- */

static void handle_get(struct moat_req *r, void *arg)
{
    reply_by_id(r, arg, moat_req_param(r, "user_id"));
}

static void handle_get_me(struct moat_req *r, void *arg)
{
    const char *id = me(r);
    if (id)
        reply_by_id(r, arg, id);
}

static void handle_find(struct moat_req *r, void *arg)
{
    struct pro_service *ps = arg;
    struct moat_qparam q[] = {
        {.name = "handle", .kind = MOAT_Q_STR, .min = 1, .max = 64},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    char handle[PRO_HANDLE_MAX + 1];
    if (!problem && !q[0].seen)
        moat_problem_param_error(&problem, "handle",
                                 "is required (listing every profile is not "
                                 "offered)");
    else if (!problem && !pro_handle_normalise(q[0].sval, handle))
        moat_problem_param_error(&problem, "handle",
                                 "must be %d to %d characters of a-z, 0-9 "
                                 "and _",
                                 PRO_HANDLE_MIN, PRO_HANDLE_MAX);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    struct pro_profile p = {0};
    int rc = pro_store_get_by_handle(ps->store, handle, &p);
    if (rc != MOAT_OK && rc != MOAT_ENOTFOUND) {
        reply_store_fault(r, rc, "read the profile");
        return;
    }
    json_t *items = json_array();
    if (rc == MOAT_OK)
        json_array_append_new(items, pro_profile_json(&p));
    pro_profile_release(&p);
    moat_req_reply_json(r, 200, json_pack("{s:o}", "items", items));
}

/* ---- PUT /v1/profiles/me ---- */

/*
 * The version an If-Match header asks for: PRO_ANY_VERSION without one
 * or for "*", else the N of a single strong "vN" (a missing profile is
 * version 0). False for anything else, which can match no version.
 */
static bool if_match_version(struct moat_req *r, int64_t *out)
{
    const char *h = moat_req_header(r, "If-Match");
    *out = PRO_ANY_VERSION;
    if (!h || strcmp(h, "*") == 0)
        return true;
    size_t n = strlen(h);
    if (n < 4 || n > 20 || h[0] != '"' || h[1] != 'v' || h[n - 1] != '"')
        return false;
    int64_t v = 0;
    for (size_t i = 2; i < n - 1; i++) {
        if (h[i] < '0' || h[i] > '9')
            return false;
        v = v * 10 + (h[i] - '0');
    }
    *out = v;
    return true;
}

static void reply_stale(struct moat_req *r, struct pro_service *ps,
                        const char *user_id)
{
    struct pro_profile cur = {0};
    if (pro_store_get(ps->store, user_id, &cur) == MOAT_OK) {
        char etag[PRO_ETAG_MAX];
        pro_etag(&cur, etag);
        moat_req_set_header(r, "ETag", etag);
    }
    pro_profile_release(&cur);
    moat_req_reply_problem(r, 412,
                           "If-Match does not match the profile's current "
                           "ETag; fetch it again, reapply the change and "
                           "retry");
}

static void handle_put_me(struct moat_req *r, void *arg)
{
    struct pro_service *ps = arg;
    struct pro_profile in = {0}, out = {0};
    json_t *body = NULL;
    const char *id = me(r);
    int64_t expect;
    if (!id)
        return;
    if (!if_match_version(r, &expect)) {
        reply_stale(r, ps, id);
        return;
    }
    if (moat_req_json(r, &body) != MOAT_OK)
        return; /* answered */
    if (!json_is_object(body)) {
        moat_req_reply_problem(r, 422, "the profile must be a JSON object");
        goto out;
    }
    json_t *problem = pro_profile_parse(body, &in);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        goto out;
    }
    snprintf(in.user_id, sizeof(in.user_id), "%s", id);
    int rc = pro_store_put(ps->store, &in, expect, moat_wall_ms(), &out, NULL);
    if (rc == MOAT_OK) {
        reply_profile(r, &out);
    } else if (rc == MOAT_ECONFLICT) {
        json_t *p = moat_problem_new(409, "another user already has this "
                                          "handle");
        moat_problem_add_error(p, "/handle", "is taken");
        moat_req_reply_problem_json(r, p);
    } else if (rc == MOAT_EPRECOND) {
        reply_stale(r, ps, id);
    } else {
        reply_store_fault(r, rc, "save the profile");
    }

out:
    pro_profile_release(&in);
    pro_profile_release(&out);
    json_decref(body);
}

int pro_routes_register(struct pro_service *ps)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/profiles", handle_find},
        {MOAT_GET | MOAT_HEAD, "/v1/profiles/me", handle_get_me},
        {MOAT_PUT, "/v1/profiles/me", handle_put_me},
        {MOAT_GET | MOAT_HEAD, "/v1/profiles/{user_id}", handle_get},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(ps->svc->http, routes[i].methods,
                                 routes[i].pattern, routes[i].fn, ps);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
