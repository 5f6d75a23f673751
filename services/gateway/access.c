/*
 * access.c - who may come in: the guard the HTTP server runs before every
 * proxied route (health, readiness and metrics are open routes).
 *
 *  1. Rate limit per client address (token bucket, moat/ratelimit.h),
 *     first, so that a flood costs one hash lookup per request and cannot
 *     be used to guess tokens at full speed: 429 with Retry-After.
 *  2. End-user authentication. A request carrying Authorization must carry
 *     a valid Bearer JWT from the users service (iss "moat-users", aud
 *     "moat"); any failure is a 401, even on a public route, so a client
 *     never silently loses its identity. A request without one passes only
 *     when it is on the MOAT_GATEWAY_PUBLIC allow-list.
 *
 *  3. Permissions: the token's "perms" claim (a token without one, from
 *     before permissions existed, gets its role's), then the account's
 *     newest role and permissions when users' feed changed them recently
 *     (overrides.c): a suspension is applied within the feed's delay, not
 *     at the token's expiry. The gateway refuses nothing for it: the
 *     owning service refuses the write (moat_req_require_perm).
 *
 *  4. Revocation: a logout through the gateway ends the access token it
 *     carries at once: its id (jti) goes to a deny list kept for the
 *     token's remaining lifetime. Sessions users ended (a logout, also
 *     one not through this gateway, a reused refresh token, a password
 *     change) end their tokens within the feed's delay (overrides.c).
 *     docs/security.md "Revocation".
 *
 * The principal set here (user id, role, permissions, client address) is
 * what proxy.c signs into the service token for the upstream; nothing the
 * client sent about its identity travels further.
 */
#include "moat/common.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "gateway.h"
#include "moat/auth.h"
#include "moat/jwt.h"
#include "moat/log.h"

#define GW_USER_ISSUER   "moat-users"
#define GW_USER_AUDIENCE "moat"

_Static_assert(sizeof(((struct moat_principal *)0)->user_id) ==
                   sizeof(((struct moat_jwt_claims *)0)->sub),
               "user_id holds a sub claim");
_Static_assert(sizeof(((struct moat_principal *)0)->role) ==
                   sizeof(((struct moat_jwt_claims *)0)->role),
               "role holds a role claim");

/* Deny-list entries beyond this are not added (logged): those tokens
 * live to their expiry. ~100 bytes each. */
#define GW_MAX_REVOKED 100000

static bool is_logout(struct moat_req *req)
{
    const char *path = moat_req_path(req);
    return moat_req_method(req) == MOAT_POST && path &&
           (strcmp(path, "/api/v1/auth/logout") == 0 ||
            strcmp(path, "/api/v2/auth/logout") == 0);
}

static bool revoked(const struct gw *gw, const struct moat_jwt_claims *c)
{
    return gw->revoked && c->jti[0] && json_object_get(gw->revoked, c->jti);
}

/* Deny c's token until it expires; expired entries are dropped first. */
static void revoke(struct gw *gw, const struct moat_jwt_claims *c)
{
    if (!c->jti[0])
        return;
    if (!gw->revoked)
        gw->revoked = json_object();
    int64_t now_s = (int64_t)time(NULL);
    if (json_object_size(gw->revoked) >= GW_MAX_REVOKED) {
        const char *key;
        json_t *val;
        void *tmp;
        json_object_foreach_safe(gw->revoked, tmp, key, val)
        {
            if (json_integer_value(val) + MOAT_JWT_LEEWAY_S < now_s)
                json_object_del(gw->revoked, key);
        }
    }
    if (json_object_size(gw->revoked) >= GW_MAX_REVOKED) {
        moat_log(MOAT_LOG_ERROR,
                 "revocation list full: a logged-out access token lives to "
                 "its expiry",
                 "{s:i}", "max", GW_MAX_REVOKED);
        return;
    }
    json_object_set_new(gw->revoked, c->jti, json_integer(c->exp));
}

static void count_rejected(struct gw *gw, const char *reason)
{
    const char *labels[] = {reason};
    moat_metric_add(moat_metric_series(gw->m_auth_rejected, labels), 1);
}

/*
 * 401 per RFC 6750 3: no error code when no credentials were presented,
 * invalid_token when they were and failed. The detail is the short static
 * reason ("expired", "bad signature"), nothing from the token itself.
 */
static void reply_unauthorized(struct gw *gw, struct moat_req *req,
                               const char *reason, bool presented)
{
    count_rejected(gw, reason);
    moat_log(MOAT_LOG_INFO, "request refused", "{s:s, s:s, s:s}", "reason",
             reason, "peer", moat_req_peer(req), "target", moat_req_route(req));
    if (presented) {
        moat_req_set_header(req, "WWW-Authenticate",
                            "Bearer realm=\"moat\", error=\"invalid_token\"");
        moat_req_reply_problem(req, 401, "invalid bearer token: %s", reason);
    } else {
        moat_req_set_header(req, "WWW-Authenticate", "Bearer realm=\"moat\"");
        moat_req_reply_problem(req, 401,
                               "authentication required: send "
                               "Authorization: Bearer <token>");
    }
}

static bool rate_limited(struct gw *gw, struct moat_req *req)
{
    uint64_t retry_ms = 0;
    if (!gw->limiter || moat_ratelimit_take(gw->limiter, moat_req_peer(req),
                                            moat_mono_ms(), &retry_ms))
        return false;
    char ra[24];
    uint64_t secs = gw_retry_after_s(retry_ms);
    snprintf(ra, sizeof(ra), "%" PRIu64, secs);
    moat_metric_add(gw->m_rate_limited, 1);
    moat_req_set_header(req, "Retry-After", ra);
    moat_req_reply_problem(
        req, 429, "too many requests from this client; retry in %" PRIu64 " s",
        secs);
    return true;
}

bool gw_access_guard(struct moat_req *req, void *arg)
{
    struct gw *gw = arg;
    struct moat_principal p;
    memset(&p, 0, sizeof(p));
    snprintf(p.client_ip, sizeof(p.client_ip), "%s", moat_req_peer(req));

    if (rate_limited(gw, req))
        return false;
    if (!gw->user_auth) {
        moat_req_set_principal(req, &p);
        return true;
    }

    const char *authz = moat_req_header(req, "Authorization");
    if (!authz) {
        if (!gw_public_allows(gw->public_list, gw->npublic,
                              moat_req_method(req), moat_req_target(req))) {
            reply_unauthorized(gw, req, "missing", false);
            return false;
        }
        moat_req_set_principal(req, &p);
        return true;
    }

    const char *token = gw_bearer_token(authz);
    if (!token) {
        reply_unauthorized(gw, req, "not a bearer token", true);
        return false;
    }
    struct moat_jwt_expect e = {
        .key = gw->jwt_secret,
        .keylen = gw->jwt_secret_len,
        .iss = GW_USER_ISSUER,
        .aud = GW_USER_AUDIENCE,
        .now = 0,
        .leeway_s = -1,
    };
    struct moat_jwt_claims c;
    const char *why = NULL;
    if (moat_jwt_verify(token, &e, &c, &why) != MOAT_OK) {
        reply_unauthorized(gw, req, why, true);
        return false;
    }
    if (revoked(gw, &c) || gw_overrides_revoked(gw, &c)) {
        reply_unauthorized(gw, req, "revoked", true);
        return false;
    }
    /* The user ends this token now, whatever users answers: logout is
     * idempotent, and the token must not outlive the request to end it. */
    if (is_logout(req))
        revoke(gw, &c);
    /* Both fields are exactly as wide as the claims they come from. */
    memcpy(p.user_id, c.sub, sizeof(p.user_id));
    memcpy(p.role, c.role, sizeof(p.role));
    p.perms = c.perms_set ? moat_perms_parse(c.perms) : moat_role_perms(c.role);
    gw_overrides_apply(gw, &p);
    moat_req_set_principal(req, &p);
    return true;
}
