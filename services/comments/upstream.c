/*
 * upstream.c - the synchronous checks comments makes before it answers:
 * GET on posts (does the post exist, who wrote it) and on messaging (is
 * the caller a member of the conversation, is the message in it), always
 * acting for the caller's end user, so messaging applies its own rule
 * (non-members get 404) and comments never decides membership itself.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comments.h"
#include "moat/auth.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/service.h"

#define RETRY_AFTER_S "2"

struct call {
    struct cmt_service *cs;
    struct moat_req *req;
    char service[16];
    cmt_upstream_fn then;
    void (*free_arg)(void *);
    void *arg;
};

static void unavailable(struct call *c, const char *why)
{
    moat_req_set_header(c->req, "Retry-After", RETRY_AFTER_S);
    moat_req_reply_problem(c->req, 503, "%s is unavailable (%s); retry",
                           c->service, why);
}

static void on_answer(const struct moat_http_response *resp, void *arg)
{
    struct call *c = arg;
    json_t *found = NULL;
    bool handed = false;
    if (resp->err == MOAT_ECANCELLED) {
        unavailable(c, "comments is shutting down");
    } else if (resp->err != MOAT_OK || resp->status >= 500) {
        moat_log(MOAT_LOG_WARN, "upstream unavailable", "{s:s, s:i, s:s}",
                 "service", c->service, "status", resp->status, "error",
                 resp->err ? moat_strerror(resp->err) : "");
        unavailable(c, resp->err ? moat_strerror(resp->err) : "it failed");
    } else if (resp->status == 404) {
        c->then(c->req, c->arg, NULL);
        handed = true;
    } else if (resp->status == 200 &&
               json_is_object(
                   found = json_loadb(resp->body, resp->body_len, 0, NULL))) {
        c->then(c->req, c->arg, found);
        handed = true;
    } else {
        moat_log(MOAT_LOG_ERROR, "upstream refused comments", "{s:s, s:i}",
                 "service", c->service, "status", resp->status);
        moat_req_reply_problem(c->req, 502, "%s refused the check (%d)",
                               c->service, resp->status);
    }
    json_decref(found);
    if (!handed && c->free_arg)
        c->free_arg(c->arg);
    free(c);
}

void cmt_upstream_get(struct cmt_service *cs, struct moat_req *r,
                      const char *service, const char *path,
                      cmt_upstream_fn then, void (*free_arg)(void *), void *arg)
{
    struct call *c = moat_xcalloc(1, sizeof(*c));
    *c = (struct call){
        .cs = cs, .req = r, .then = then, .free_arg = free_arg, .arg = arg};
    snprintf(c->service, sizeof(c->service), "%s", service);
    char *token = NULL;
    if (cs->svc->auth &&
        moat_auth_token(cs->svc->auth, service, moat_req_principal(r),
                        &token) != MOAT_OK) {
        moat_req_reply_problem(r, 500, "comments cannot authenticate to %s",
                               service);
        goto fail;
    }
    const char *base =
        strcmp(service, "posts") == 0 ? cs->posts_url : cs->messaging_url;
    char *url = moat_xasprintf("%s%s", base, path);
    const struct moat_http_header h[] = {{MOAT_SERVICE_TOKEN_HEADER, token}};
    const struct moat_http_call call = {
        .method = "GET",
        .url = url,
        .headers = h,
        .nheaders = token ? 1 : 0,
        .timeout_ms = cs->upstream_timeout_ms,
        .trace = moat_req_trace(r),
    };
    int rc = moat_http_client_send(cs->upstream, &call, on_answer, c);
    free(url);
    free(token);
    if (rc == MOAT_OK)
        return;
    unavailable(c, moat_strerror(rc));
fail:
    if (free_arg)
        free_arg(arg);
    free(c);
}
