/*
 * tokens.c - /v1/auth: login, refresh-token rotation with reuse detection,
 * and logout (see docs/users.md).
 *
 * Access tokens are short-lived HS256 JWTs (moat/jwt.h) that the gateway
 * verifies with the shared MOAT_JWT_SECRET; nothing here keeps them.
 * Refresh tokens are 256-bit random strings the client keeps and the
 * database knows only by SHA-256. Each login starts a family; a refresh
 * revokes the presented token and issues its successor in the same family,
 * so a token presented a second time means two parties hold it, and the
 * whole family is revoked.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/jwt.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "users.h"

#define REFRESH_TOKEN_BYTES 32
#define REFRESH_TOKEN_MAX   256 /* characters accepted from a client */
#define FAMILY_BYTES        16
#define JTI_BYTES           16

/* One message for every way a login can fail, so that it does not tell
 * which emails have accounts. */
#define LOGIN_FAILED "the email address or password is incorrect"

static const char *const outcome_names[USR_LOGIN_OUTCOMES] = {"ok", "failed",
                                                              "rate_limited"};

static void count_login(struct usr_service *usr, enum usr_login_outcome o)
{
    moat_metric_add(usr->m_logins[o], 1);
}

/* Decode {member: string} bodies (login, refresh, logout). */
static bool read_body(struct moat_req *r, json_t **body,
                      const char *const *allowed)
{
    struct moat_validation v;
    bool ok = false;
    moat_validation_init(&v);
    if (moat_req_json(r, body) < 0)
        goto out;
    if (!json_is_object(*body)) {
        moat_validation_add(&v, "", "must be a JSON object");
    } else {
        moat_v_known_keys(&v, *body, "", allowed);
        for (const char *const *k = allowed; *k; k++)
            moat_v_string(&v, *body, "", *k, true, 1, 1024, NULL);
    }
    if (!moat_validation_ok(&v)) {
        usr_reply_validation(r, &v, "the request has invalid fields");
        goto out;
    }
    ok = true;

out:
    if (!ok) {
        usr_json_release_secret(*body);
        *body = NULL;
    }
    moat_validation_release(&v);
    return ok;
}

static const char *member(json_t *body, const char *key)
{
    return json_string_value(json_object_get(body, key));
}

static void reply_too_many(struct moat_req *r, uint64_t retry_ms)
{
    unsigned long long secs = (retry_ms + 999) / 1000;
    char ra[24];
    snprintf(ra, sizeof(ra), "%llu", secs ? secs : 1);
    moat_req_set_header(r, "Retry-After", ra);
    json_t *p = moat_problem_new(429, "too many login attempts; retry later");
    json_object_set_new(p, "retry_after_s", json_integer((json_int_t)secs));
    moat_req_reply_problem_json(r, p);
}

static void reply_refresh_refused(struct moat_req *r, const char *why)
{
    moat_req_set_header(r, "WWW-Authenticate", "Bearer realm=\"moat\"");
    moat_req_reply_problem(r, 401, "%s", why);
}

/*
 * Issue an access token and a refresh token for the account of cred: its
 * role, and its permissions as they are now (a suspended account's token
 * has no post, comment or message). A new family starts when family is
 * NULL; otherwise the refresh token replaces old_hash in it (rotation). On
 * success *out is the response body.
 */
static int issue_tokens(struct usr_service *usr, const struct usr_cred *cred,
                        const char *family, const char *old_hash, json_t **out)
{
    const char *id = cred->id, *role = cred->role;
    int64_t now_s = moat_wall_ms() / 1000;
    struct moat_jwt_claims c = {0};
    char *access = NULL, *refresh = NULL;
    uint8_t rnd[JTI_BYTES];
    struct usr_token t = {0};

    snprintf(c.iss, sizeof(c.iss), "%s", USR_JWT_ISSUER);
    snprintf(c.aud, sizeof(c.aud), "%s", USR_JWT_AUDIENCE);
    snprintf(c.sub, sizeof(c.sub), "%s", id);
    snprintf(c.role, sizeof(c.role), "%s", role);
    moat_perms_format(
        moat_perms_for(role, cred->suspended, cred->comment_suspended), c.perms,
        sizeof(c.perms));
    c.perms_set = true;
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(c.jti, rnd, sizeof(rnd));
    /* The session: the refresh family, so that ending it (logout, reuse)
     * ends its access tokens at the gateway too (SessionsEnded). */
    if (family) {
        snprintf(t.family, sizeof(t.family), "%s", family);
    } else {
        uint8_t f[FAMILY_BYTES];
        moat_random_bytes(f, sizeof(f));
        moat_hex(t.family, f, sizeof(f));
    }
    snprintf(c.sid, sizeof(c.sid), "%s", t.family);
    c.iat = now_s;
    c.exp = now_s + usr->cfg.access_ttl_s;
    int rc = moat_jwt_sign(usr->jwt_key, usr->jwt_keylen, &c, &access);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot sign an access token", "{s:s}",
                 "error", moat_strerror(rc));
        goto out;
    }

    refresh = moat_random_token(REFRESH_TOKEN_BYTES);
    moat_sha256_hex(refresh, strlen(refresh), t.hash);
    snprintf(t.user_id, sizeof(t.user_id), "%s", id);
    int64_t now_ms = moat_wall_ms();
    t.expires_ms = now_ms + usr->cfg.refresh_ttl_s * 1000;
    rc = old_hash ? usr_store_token_rotate(usr->store, old_hash, &t, now_ms)
                  : usr_store_token_insert(usr->store, &t, now_ms);
    if (rc != MOAT_OK)
        goto out;

    *out =
        json_pack("{s:s, s:s, s:I, s:s, s:I, s:{s:s, s:s, s:s}}",
                  "access_token", access, "token_type", "Bearer", "expires_in",
                  (json_int_t)usr->cfg.access_ttl_s, "refresh_token", refresh,
                  "refresh_expires_in", (json_int_t)usr->cfg.refresh_ttl_s,
                  "user", "id", id, "role", role, "perms", c.perms);

out:
    moat_free_secret(access);
    moat_free_secret(refresh);
    return rc;
}

/* Token responses must not be cached anywhere (RFC 6749 5.1). */
static void reply_tokens(struct moat_req *r, json_t *body)
{
    moat_req_set_header(r, "Cache-Control", "no-store");
    moat_req_set_header(r, "Pragma", "no-cache");
    moat_req_reply_json(r, 200, body);
}

/* ---- POST /v1/auth/login ---- */

struct login_ctx {
    bool known; /* the email has an account */
    struct usr_cred cred;
    char acct_key[MOAT_BLIND_INDEX_HEX + 1];
};

static void login_done(struct usr_pw_job *job, bool cancelled)
{
    struct login_ctx *c = job->ctx;
    struct usr_service *usr = job->usr;
    struct moat_req *r = job->req;

    if (cancelled) {
        moat_req_reply_problem(r, 503, "the users service is shutting down");
        return;
    }
    if (!c->known || !job->verified) {
        count_login(usr, USR_LOGIN_FAILED);
        json_t *detail = json_pack(
            "{s:s}", "reason", c->known ? "wrong password" : "unknown email");
        usr_audit(usr, r, "user.login", c->known ? c->cred.id : NULL, "failed",
                  detail);
        json_decref(detail);
        moat_req_set_header(r, "WWW-Authenticate", "Bearer realm=\"moat\"");
        moat_req_reply_problem(r, 401, LOGIN_FAILED);
        return;
    }

    /* A success forgives earlier failures of this account. */
    moat_ratelimit_reset(usr->rl_acct, c->acct_key);
    usr_store_tokens_purge(usr->store, c->cred.id, moat_wall_ms());
    json_t *body = NULL;
    int rc = issue_tokens(usr, &c->cred, NULL, NULL, &body);
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "start a session");
        return;
    }
    count_login(usr, USR_LOGIN_OK);
    usr_audit(usr, r, "user.login", c->cred.id, "ok", NULL);
    reply_tokens(r, body);
}

/* The key of the caller's address for the per-address limit. */
static void address_key(const struct moat_principal *p, char *out, size_t n)
{
    if (p->client_ip[0])
        snprintf(out, n, "ip:%s", p->client_ip);
    else
        snprintf(out, n, "svc:%s", p->service[0] ? p->service : "unknown");
}

static void login_limited(struct usr_service *usr, struct moat_req *r,
                          const char *which, uint64_t retry_ms)
{
    count_login(usr, USR_LOGIN_RATE_LIMITED);
    json_t *detail = json_pack("{s:s}", "limit", which);
    usr_audit(usr, r, "user.login", NULL, "rate_limited", detail);
    json_decref(detail);
    reply_too_many(r, retry_ms);
}

static void handle_login(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    static const char *const allowed[] = {"email", "password", NULL};
    json_t *body = NULL;
    struct login_ctx *c = NULL;

    if (!read_body(r, &body, allowed))
        return;
    const char *email = member(body, "email");
    const char *password = member(body, "password");

    /* Limits first, before any work: per address (every attempt), then
     * per account (the bucket is reset by a success, so what it counts
     * is failures). Unknown emails have buckets too, so a 429 does not
     * tell whether the account exists. */
    char addr[80];
    uint64_t retry_ms = 0, now = moat_mono_ms();
    address_key(moat_req_principal(r), addr, sizeof(addr));
    if (!moat_ratelimit_take(usr->rl_ip, addr, now, &retry_ms)) {
        login_limited(usr, r, "address", retry_ms);
        goto cleanup;
    }
    /* A full password queue answers 503 before the account's bucket is
     * touched: a client retrying a busy service must not lock its own
     * account out. */
    if (usr_pw_busy(usr)) {
        usr_reply_busy(r);
        goto cleanup;
    }
    c = moat_xcalloc(1, sizeof(*c));
    usr_email_bidx(usr->kr, email, c->acct_key);
    if (!moat_ratelimit_take(usr->rl_acct, c->acct_key, now, &retry_ms)) {
        login_limited(usr, r, "account", retry_ms);
        goto cleanup;
    }

    struct usr_pw_job *job = usr_pw_job_new(usr, r, login_done);
    int rc = usr_store_cred_by_email(usr->store, c->acct_key, &c->cred);
    if (rc == MOAT_OK) {
        c->known = true;
        memcpy(job->verify_hash, c->cred.password_hash,
               sizeof(job->verify_hash));
    } else if (rc == MOAT_ENOTFOUND) {
        /* Same Argon2id cost as a real account: timing does not tell. */
        memcpy(job->verify_hash, usr->dummy_hash, sizeof(job->verify_hash));
    } else {
        free(job); /* nothing secret in it yet */
        usr_reply_store_fault(r, rc, "check the credentials");
        goto cleanup;
    }
    job->verify_password = moat_xstrdup(password);
    job->ctx = c;
    job->ctx_free = free;
    c = NULL;
    if (usr_pw_submit(job) != MOAT_OK)
        usr_reply_busy(r);

cleanup:
    free(c);
    usr_json_release_secret(body);
}

/* ---- POST /v1/auth/refresh ---- */

static void handle_refresh(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    static const char *const allowed[] = {"refresh_token", NULL};
    json_t *body = NULL;
    struct usr_token t;
    char hash[USR_TOKEN_HASH_HEX + 1];

    if (!read_body(r, &body, allowed))
        return;
    const char *token = member(body, "refresh_token");
    if (strlen(token) > REFRESH_TOKEN_MAX) {
        reply_refresh_refused(r, "the refresh token is not valid");
        goto cleanup;
    }
    moat_sha256_hex(token, strlen(token), hash);
    int rc = usr_store_token_get(usr->store, hash, &t);
    if (rc == MOAT_ENOTFOUND) {
        reply_refresh_refused(r, "the refresh token is not valid");
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "check the refresh token");
        goto cleanup;
    }
    int64_t now_ms = moat_wall_ms();
    if (t.revoked_ms && !t.rotated) {
        /* Ended by a logout or a password change: simply dead. */
        reply_refresh_refused(r, "the refresh token has been revoked");
        goto cleanup;
    }
    if (t.revoked_ms) {
        /* Used before: whoever holds the family's live token may be a
         * thief (or the owner, after a thief used this one). Either way
         * the session is no longer trustworthy: end all of it. */
        int revoked = 0;
        rc = usr_store_family_revoke(usr->store, t.user_id, t.family,
                                     "reuse_detected", now_ms, &revoked);
        json_t *detail =
            json_pack("{s:s, s:i}", "family", t.family, "revoked", revoked);
        usr_audit(usr, r, "token.reuse_detected", t.user_id,
                  rc == MOAT_OK ? "ok" : "error", detail);
        json_decref(detail);
        moat_log(MOAT_LOG_WARN, "refresh token reused: family revoked",
                 "{s:s, s:s, s:i}", "user", t.user_id, "family", t.family,
                 "revoked", revoked);
        reply_refresh_refused(r, "the refresh token was already used; every "
                                 "session of that sign-in has been revoked");
        goto cleanup;
    }
    if (t.expires_ms <= now_ms) {
        reply_refresh_refused(r, "the refresh token has expired");
        goto cleanup;
    }
    struct usr_cred cred;
    rc = usr_store_cred_by_id(usr->store, t.user_id, &cred);
    if (rc == MOAT_ENOTFOUND) {
        reply_refresh_refused(r, "the refresh token is not valid");
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "check the refresh token");
        goto cleanup;
    }
    /* The role and permissions come from the account now, not from the old
     * token: a suspended account refreshes into a token without post,
     * comment or message. */
    json_t *out = NULL;
    rc = issue_tokens(usr, &cred, t.family, t.hash, &out);
    if (rc == MOAT_EPRECOND) {
        reply_refresh_refused(r, "the refresh token is not valid");
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "rotate the refresh token");
        goto cleanup;
    }
    usr_audit(usr, r, "token.refresh", cred.id, "ok", NULL);
    reply_tokens(r, out);

cleanup:
    usr_json_release_secret(body);
}

/* ---- POST /v1/auth/logout ---- */

static void handle_logout(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    static const char *const allowed[] = {"refresh_token", NULL};
    json_t *body = NULL;
    struct usr_token t;
    char hash[USR_TOKEN_HASH_HEX + 1];

    if (!read_body(r, &body, allowed))
        return;
    const char *token = member(body, "refresh_token");
    moat_sha256_hex(token, strlen(token), hash);
    int rc = usr_store_token_get(usr->store, hash, &t);
    if (rc == MOAT_OK) {
        /* Logging out ends the session: every token of its family. */
        int revoked = 0;
        rc = usr_store_family_revoke(usr->store, t.user_id, t.family, "logout",
                                     moat_wall_ms(), &revoked);
        if (rc != MOAT_OK) {
            usr_reply_store_fault(r, rc, "revoke the session");
            goto cleanup;
        }
        json_t *detail = json_pack("{s:i}", "revoked", revoked);
        usr_audit(usr, r, "user.logout", t.user_id, "ok", detail);
        json_decref(detail);
    } else if (rc != MOAT_ENOTFOUND) {
        usr_reply_store_fault(r, rc, "revoke the session");
        goto cleanup;
    }
    /* Unknown tokens get the same answer: logout is idempotent and does
     * not confirm which tokens exist. */
    moat_req_reply(r, 204, NULL, NULL, 0);

cleanup:
    usr_json_release_secret(body);
}

int usr_auth_routes_register(struct usr_service *usr)
{
    struct moat_metric_family *f = moat_metrics_family(
        usr->svc->metrics, MOAT_COUNTER, "moat_users_logins_total",
        "Login attempts by outcome (ok, failed, rate_limited).", "outcome",
        NULL, 0);
    if (!f)
        return MOAT_EINVAL;
    for (int i = 0; i < USR_LOGIN_OUTCOMES; i++) {
        const char *labels[] = {outcome_names[i]};
        usr->m_logins[i] = moat_metric_series(f, labels);
    }
    static const struct {
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {"/v1/auth/login", handle_login},
        {"/v1/auth/refresh", handle_refresh},
        {"/v1/auth/logout", handle_logout},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(usr->svc->http, MOAT_POST, routes[i].pattern,
                                 routes[i].fn, usr);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
