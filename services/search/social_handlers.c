/*
 * social_handlers.c - the social index's HTTP API, on the engine's q,
 * limit and cursor (engine.h); docs/search.md describes it for clients.
 *
 *   GET /v1/search/posts?q=&limit=&cursor=&author_id=
 *       posts by the words of their text and their mentions ("@bob" and
 *       "bob" both find a post mentioning @bob), best first; without q,
 *       newest first
 *   GET /v1/search/profiles?q=&limit=&cursor=
 *       profiles by handle, best first; without q, by handle
 */
#include "moat/common.h"

#include <string.h>

#include "moat/problem.h"
#include "search.h"
#include "social_store.h"

/* srch_param_fn of posts: author_id, kept in *arg (a const char *). */
static bool posts_param(struct srch_request *rq, const char *key,
                        const char *value, void *arg)
{
    if (strcmp(key, "author_id") != 0)
        return false;
    if (!srch_id_valid(value, strlen(value)))
        moat_problem_param_error(&rq->problem, key,
                                 "must be a user id: 1 to %d of "
                                 "A-Z, a-z, 0-9, _ and -",
                                 SRCH_ID_MAX);
    else
        *(const char **)arg = value;
    return true;
}

static void handle_posts(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    const char *author = NULL;
    struct srch_request rq;
    srch_request_parse(r, &rq, posts_param, &author, ", author_id");
    srch_serve(r, s->db, &rq, soc_store_search_posts, (void *)author);
    srch_request_release(&rq);
}

static void handle_profiles(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    struct srch_request rq;
    srch_request_parse(r, &rq, NULL, NULL, NULL);
    srch_serve(r, s->db, &rq, soc_store_search_profiles, NULL);
    srch_request_release(&rq);
}

int soc_routes_register(struct moat_http_server *server, struct srch_service *s)
{
    int rc = moat_http_route(server, MOAT_GET | MOAT_HEAD, "/v1/search/posts",
                             handle_posts, s);
    if (rc == MOAT_OK)
        rc = moat_http_route(server, MOAT_GET | MOAT_HEAD,
                             "/v1/search/profiles", handle_profiles, s);
    return rc;
}
