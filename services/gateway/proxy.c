/*
 * proxy.c - forward one public request to its upstream and relay the
 * answer.
 *
 * Only an allowlist of headers crosses the gateway in either direction, so
 * hop-by-hop headers (Connection, Keep-Alive, Transfer-Encoding, TE,
 * Upgrade, Proxy-*) and anything a client should not inject never reach a
 * backend. Credentials in particular: the client's Authorization (an
 * end-user JWT, already verified by access.c) and any Moat-Service-Token it
 * sends stay here; the upstream gets a fresh service token from the
 * gateway, for that upstream only, carrying the verified principal. Whatever
 * goes wrong upstream (refused, timeout, oversized or broken response) becomes
 * a 503 problem+json with Retry-After within the gateway's timeout: a client
 * never hangs on a dead backend.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "moat/auth.h"
#include "moat/log.h"
#include "moat/problem.h"

/* Request headers passed to the upstream (besides traceparent and
 * X-Request-Id, which the HTTP client sends from the request's trace, and
 * the gateway's own Moat-Service-Token). Never Authorization. */
static const char *const forward_request[] = {
    "Content-Type", "Accept", "If-Match", "If-None-Match", "Idempotency-Key",
};

/* Response headers passed back to the client; Location is rewritten. */
static const char *const forward_response[] = {
    "Content-Type",     "ETag",
    "Retry-After",      "Allow",
    "Cache-Control",    "Last-Modified",
    "WWW-Authenticate", "Accept-Patch",
    "Accept-Post",      "Idempotent-Replayed",
};

/* One forwarded request; owned by the proxy until the upstream answers. */
struct call {
    struct gw_route *route; /* borrowed */
    struct moat_req *req;   /* replied to exactly once in on_upstream */
    char *url;
    char *rest;                 /* url after the route's origin */
    struct gw_instance *inst;   /* the instance called; borrowed */
    long timeout_ms;            /* 0: the client's */
    bool retried;               /* the in-flight retry is spent */
    struct gw_cache_fill *fill; /* a cache miss to store, or NULL */
};

static int forward(struct call *c, const struct gw_instance *avoid);
/* forward(): no service token could be signed. */
#define FORWARD_NO_TOKEN MOAT_EUNSUPPORTED

static void reply_unavailable(struct call *c, enum gw_err_kind kind)
{
    const struct gw *gw = c->route->gw;
    const char *prefix = c->route->prefix;

    moat_req_set_header(c->req, "Retry-After", "1");
    switch (kind) {
    case GW_ERR_CONNECT:
        moat_req_reply_problem(c->req, 503,
                               "backend %s is unavailable: connection failed",
                               prefix);
        break;
    case GW_ERR_TIMEOUT:
        moat_req_reply_problem(c->req, 503,
                               "backend %s did not answer within %ld ms",
                               prefix, gw->timeout_ms);
        break;
    case GW_ERR_TOO_BIG:
        moat_req_reply_problem(c->req, 503,
                               "backend %s sent a response larger than %zu "
                               "bytes",
                               prefix, gw->max_response);
        break;
    case GW_ERR_CANCELLED:
        moat_req_reply_problem(c->req, 503,
                               "the gateway is shutting down; backend %s was "
                               "not heard from",
                               prefix);
        break;
    default:
        moat_req_reply_problem(c->req, 503,
                               "backend %s sent an invalid response", prefix);
        break;
    }
}

static enum gw_err_kind classify(const struct moat_http_response *resp)
{
    switch (resp->err) {
    case MOAT_ETIMEDOUT:
        return GW_ERR_TIMEOUT;
    case MOAT_ETOOBIG:
        return GW_ERR_TOO_BIG;
    case MOAT_ECANCELLED:
        return GW_ERR_CANCELLED;
    default:
        return resp->connect_failed ? GW_ERR_CONNECT : GW_ERR_BAD_RESPONSE;
    }
}

static void count_request(struct call *c, const char *status)
{
    const char *labels[] = {c->route->prefix, status};
    moat_metric_add(moat_metric_series(c->route->gw->m_requests, labels), 1);
}

static void relay(struct call *c, const struct moat_http_response *resp)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(forward_response); i++) {
        const char *v = moat_http_response_header(resp, forward_response[i]);
        if (v)
            moat_req_set_header(c->req, forward_response[i], v);
    }
    const char *loc = moat_http_response_header(resp, "location");
    if (loc) {
        /* Another instance's origin reads as the first one's. */
        size_t olen = strlen(c->inst->origin);
        char *same = strncmp(loc, c->inst->origin, olen) == 0
                         ? moat_xasprintf("%s%s", c->route->origin, loc + olen)
                         : moat_xstrdup(loc);
        char *public_loc = gw_rewrite_location(c->route, same);
        free(same);
        moat_req_set_header(c->req, "Location", public_loc);
        free(public_loc);
    }
    /* Content-Type is already set from the upstream's headers. */
    moat_req_reply(c->req, resp->status, NULL, resp->body, resp->body_len);
}

/* Whether a call may be tried again on another instance: its first try
 * never reached the upstream, or it is idempotent (GET, HEAD, or an
 * Idempotency-Key the upstream deduplicates with, in the database every
 * instance shares) and no byte of an answer came back. */
static bool may_retry(const struct call *c,
                      const struct moat_http_response *resp)
{
    enum moat_method m = moat_req_method(c->req);
    if (c->retried || c->route->pool->n < 2 || resp->err == MOAT_OK ||
        resp->err == MOAT_ECANCELLED || resp->err == MOAT_ETOOBIG)
        return false;
    if (resp->connect_failed)
        return true;
    return resp->no_response && resp->err != MOAT_ETIMEDOUT &&
           (m == MOAT_GET || m == MOAT_HEAD ||
            moat_req_header(c->req, "Idempotency-Key"));
}

static void on_upstream(const struct moat_http_response *resp, void *arg)
{
    struct call *c = arg;
    struct gw_route *r = c->route;
    enum gw_err_kind kind = GW_ERR_KINDS;

    gw_pool_done(r->pool, c->inst, resp);
    if (may_retry(c, resp)) {
        struct gw_instance *failed = c->inst;
        c->retried = true;
        moat_metric_add(r->pool->m_retries, 1);
        moat_log_set_trace(moat_req_trace(c->req));
        moat_log(MOAT_LOG_INFO, "retrying on another instance",
                 "{s:s, s:s, s:s}", "upstream", r->prefix, "url", c->url,
                 "error", resp->err_msg ? resp->err_msg : "");
        moat_log_set_trace(NULL);
        if (forward(c, failed) == MOAT_OK)
            return;
    }

    moat_metric_observe(r->m_duration, resp->elapsed_ms / 1e3);
    if (resp->err != MOAT_OK)
        kind = classify(resp);
    else if (resp->status < 200 || resp->status > 599)
        kind = GW_ERR_BAD_RESPONSE; /* 1xx as final answer, or nonsense */

    if (kind == GW_ERR_KINDS) {
        char status[16];
        snprintf(status, sizeof(status), "%d", resp->status);
        count_request(c, status);
        gw_cache_filled(c->fill, resp);
        c->fill = NULL;
        relay(c, resp);
        goto cleanup;
    }

    count_request(c, "error");
    moat_metric_add(r->m_errors[kind], 1);
    /* Callbacks run outside the server's handler: set the log context. */
    moat_log_set_trace(moat_req_trace(c->req));
    moat_log(kind == GW_ERR_CANCELLED ? MOAT_LOG_INFO : MOAT_LOG_WARN,
             "upstream call failed", "{s:s, s:s, s:s, s:s, s:i, s:f}",
             "upstream", r->prefix, "url", c->url, "kind",
             gw_err_kind_name(kind), "error",
             resp->err_msg ? resp->err_msg : "invalid status", "status",
             resp->status, "duration_ms", resp->elapsed_ms);
    moat_log_set_trace(NULL);
    reply_unavailable(c, kind);
cleanup:
    gw_cache_filled(c->fill, resp);
    free(c->url);
    free(c->rest);
    free(c);
}

/*
 * A long poll's own wait: the public APIs' `wait=S` query parameter
 * (seconds, e.g. messaging's live delivery) extends the upstream timeout
 * by S, up to GW_LONG_POLL_MAX_S, so the gateway does not answer 503 to a
 * poll that is only waiting as asked. 0 when there is none.
 */
static long long_poll_ms(const char *target)
{
    const char *q = target ? strchr(target, '?') : NULL;
    while (q) {
        q++;
        if (strncmp(q, "wait=", 5) == 0) {
            long s = 0;
            const char *p = q + 5;
            for (; *p >= '0' && *p <= '9' && s <= GW_LONG_POLL_MAX_S; p++)
                s = s * 10 + (*p - '0');
            if (*p && *p != '&')
                return 0; /* not a number: the backend will say so */
            return (s > GW_LONG_POLL_MAX_S ? GW_LONG_POLL_MAX_S : s) * 1000;
        }
        q = strchr(q, '&');
    }
    return 0;
}

/*
 * Send c to an instance of its route's pool other than avoid (may be
 * NULL). FORWARD_NO_TOKEN when no service token could be signed (logged).
 */
static int forward(struct call *c, const struct gw_instance *avoid)
{
    struct gw_route *r = c->route;
    struct gw *gw = r->gw;
    struct moat_http_header hdrs[MOAT_ARRAY_LEN(forward_request) + 1];
    size_t nhdrs = 0;
    char *token = NULL;

    for (size_t i = 0; i < MOAT_ARRAY_LEN(forward_request); i++) {
        const char *v = moat_req_header(c->req, forward_request[i]);
        if (v)
            hdrs[nhdrs++] = (struct moat_http_header){forward_request[i], v};
    }
    /* No service identity only with MOAT_INSECURE_NO_AUTH=1. */
    if (gw->svc->auth) {
        int trc = moat_auth_token(gw->svc->auth, r->service,
                                  moat_req_principal(c->req), &token);
        if (trc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "cannot sign a service token",
                     "{s:s, s:s}", "upstream", r->service, "error",
                     moat_strerror(trc));
            return FORWARD_NO_TOKEN;
        }
        hdrs[nhdrs++] =
            (struct moat_http_header){MOAT_SERVICE_TOKEN_HEADER, token};
    }
    struct gw_instance *in = gw_pool_pick(r->pool, avoid);
    if (!in) {
        free(token);
        return MOAT_EIO;
    }
    c->inst = in;
    free(c->url);
    c->url = moat_xasprintf("%s%s", in->origin, c->rest);
    size_t body_len = 0;
    const char *body = moat_req_body(c->req, &body_len);
    struct moat_http_call call = {
        .method = moat_method_name(moat_req_method(c->req)),
        .url = c->url,
        .headers = hdrs,
        .nheaders = nhdrs,
        .body = body_len ? body : NULL,
        .body_len = body_len,
        .timeout_ms = c->timeout_ms,
        .trace = moat_req_trace(c->req),
    };
    int rc = moat_http_client_send(gw->client, &call, on_upstream, c);
    free(token); /* the client copied the headers */
    if (rc != MOAT_OK && in->outstanding)
        in->outstanding--;
    return rc;
}

void gw_proxy(struct moat_req *req, void *arg)
{
    struct gw_route *r = arg;
    char *url = gw_upstream_url(r, moat_req_target(req));
    if (!url) {
        moat_req_reply_problem(req, 400,
                               "the request target cannot be forwarded: it "
                               "has characters not allowed in a URL or a "
                               "'.' or '..' segment");
        return;
    }
    if (!gw_cache_lookup(r, req, url))
        gw_proxy_forward(r, req, url, NULL);
}

void gw_proxy_forward(struct gw_route *r, struct moat_req *req, char *url,
                      struct gw_cache_fill *fill)
{
    struct gw *gw = r->gw;
    struct call *c = moat_xcalloc(1, sizeof(*c));
    c->route = r;
    c->req = req;
    c->fill = fill;
    /* base_url starts with the first instance's origin; the rest goes to
     * whichever instance is picked. */
    c->rest = moat_xstrdup(url + strlen(r->origin));
    free(url);
    long wait_ms = long_poll_ms(moat_req_target(req));
    if (wait_ms > 0)
        c->timeout_ms = gw->timeout_ms + wait_ms;
    int rc = forward(c, NULL);
    if (rc != MOAT_OK) {
        /* A token that cannot be signed, a header value the client cannot
         * send (EINVAL) or a client being freed; none is the backend's
         * fault. */
        moat_log(MOAT_LOG_WARN, "cannot forward request", "{s:s, s:s, s:s}",
                 "upstream", r->prefix, "url", c->url ? c->url : "", "error",
                 moat_strerror(rc));
        if (rc == FORWARD_NO_TOKEN)
            moat_req_reply_problem(req, 500,
                                   "the gateway cannot authenticate to "
                                   "backend %s",
                                   r->prefix);
        else if (rc == MOAT_EINVAL)
            moat_req_reply_problem(req, 400,
                                   "the request cannot be forwarded to "
                                   "backend %s",
                                   r->prefix);
        else
            reply_unavailable(c, GW_ERR_CANCELLED);
        free(c->fill);
        free(c->url);
        free(c->rest);
        free(c);
    }
}
