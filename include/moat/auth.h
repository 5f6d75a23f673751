/*
 * moat/auth.h - service identity and the principal behind a request.
 *
 * Every service has its own secret (MOAT_SERVICE_KEY, base64 of >= 32
 * bytes) and knows, for each service allowed to call it, the pair key that
 * caller uses towards it (MOAT_PEER_KEYS = "gateway:<base64>,...", see
 * moat_auth_pair_key): never a caller's own key. A caller sends
 * a short-lived HS256 service token in the Moat-Service-Token header:
 * iss = caller, aud = callee, exp = now + 60 s, plus the end user it acts
 * for (usr, role, ip, perms) when there is one. `moat up` generates the keys
 * and hands each service exactly the peer keys it needs (least privilege).
 *
 * The service skeleton (lib/service.c) verifies the token on every route
 * except /healthz, /readyz and /metrics, before the handler runs, and
 * answers 401 problem+json when it is missing, unknown, expired or meant
 * for another service. A public-facing service (the gateway) sets
 * def->public_api and authenticates end users itself.
 */
#ifndef MOAT_AUTH_H
#define MOAT_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOAT_SERVICE_TOKEN_HEADER "Moat-Service-Token"
#define MOAT_SERVICE_TOKEN_TTL_S  60

struct moat_req;

/*
 * Permissions of an end user (docs/security.md "Permissions"). A role
 * grants a fixed set (moat_role_perms):
 *   customer (and "member"): post, comment, message
 *   moderator:               post, comment, message, moderate
 *   admin:                   all of them
 * A suspended user loses post, comment and message; a user whose commenting
 * is suspended loses comment (moat_perms_for). Tokens carry the result as
 * the "perms" claim, space-separated names ("post comment message").
 */
#define MOAT_PERM_POST     1u
#define MOAT_PERM_COMMENT  2u
#define MOAT_PERM_MESSAGE  4u
#define MOAT_PERM_MODERATE 8u
#define MOAT_PERM_ALL      15u
/* Longest perms claim: every name once, separated by spaces, + NUL. */
#define MOAT_PERMS_TEXT_MAX 32

/* Who is calling, as established from a verified token. */
struct moat_principal {
    char service[33]; /* calling service, [a-z][a-z0-9-]{0,31}; "" none */
    char user_id[64]; /* the end user acted for; "" for none */
    char role[16];    /* "customer", "moderator", "admin", "" */
    char client_ip[48];
    /*
     * MOAT_PERM_* of the end user. A service token without a "perms"
     * claim (from a caller older than permissions) gets its role's
     * permissions, moat_role_perms(role): what that role could do before
     * permissions existed. No user: 0. moat_auth_token always sends it
     * with a user: a principal built by hand (not copied from a request)
     * must set it, or the callee sees no permissions at all.
     */
    unsigned perms;
};

/* The permissions a role grants; 0 for an unknown role or "". */
unsigned moat_role_perms(const char *role);
/* A user's effective permissions: the role's, less post, comment and
 * message when suspended, less comment when commenting is suspended. */
unsigned moat_perms_for(const char *role, bool suspended,
                        bool comment_suspended);
/* The name of one MOAT_PERM_* flag ("post", ...); NULL for anything else. */
const char *moat_perm_name(unsigned perm);
/* perms as space-separated names in flag order into out (cap >=
 * MOAT_PERMS_TEXT_MAX always fits); "" for none. */
void moat_perms_format(unsigned perms, char *out, size_t cap);
/* Parse space-separated names. Unknown names are ignored (a newer issuer
 * may know more permissions; none is granted by a name not known here).
 * Returns the flags. */
unsigned moat_perms_parse(const char *s);

/* The request's principal (never NULL; empty fields when unknown). */
const struct moat_principal *moat_req_principal(const struct moat_req *r);
/* For the gateway, after verifying the end user's JWT. */
void moat_req_set_principal(struct moat_req *r, const struct moat_principal *p);
bool moat_principal_is_admin(const struct moat_principal *p);
/*
 * Authorisation shorthands for handlers: true when the request acts for an
 * end user (an admin); otherwise they reply 401 problem+json (no user) or
 * 403 (not an admin) and return false.
 */
bool moat_req_require_user(struct moat_req *r);
bool moat_req_require_admin(struct moat_req *r);
/*
 * True when the request acts for an end user holding every flag of perm
 * (MOAT_PERM_*); otherwise replies 401 problem+json (no user) or 403
 * ("your account may not post" / comment / send messages / moderate:
 * a suspended account, or a role without it) and returns false. The one
 * call an owning service makes before a write that needs a permission:
 * posts (MOAT_PERM_POST), comments (MOAT_PERM_COMMENT), messaging
 * (MOAT_PERM_MESSAGE), moderation (MOAT_PERM_MODERATE).
 */
bool moat_req_require_perm(struct moat_req *r, unsigned perm);

struct moat_auth;

/*
 * Load self's key and the peer keys from the environment. MOAT_EINVAL (with
 * a message naming the variable) when one is malformed or too short;
 * MOAT_ENOTFOUND when MOAT_SERVICE_KEY is unset.
 */
int moat_auth_load(struct moat_auth **out, const char *self);
/*
 * An identity from a key in hand rather than the environment, with no
 * peers (it can mint tokens, not verify them): the console signs as the
 * operator with the key `moat up` hands it (docs/console.md). MOAT_EINVAL
 * for a bad name or a malformed or short key.
 */
int moat_auth_new(struct moat_auth **out, const char *self,
                  const char *key_b64);
void moat_auth_free(struct moat_auth *a);
const char *moat_auth_self(const struct moat_auth *a);

/* A new service token for calling audience, acting for p (may be NULL). */
int moat_auth_token(const struct moat_auth *a, const char *audience,
                    const struct moat_principal *p, char **out);
/* Verify an incoming service token; *why says why not. */
int moat_auth_verify(const struct moat_auth *a, const char *token,
                     struct moat_principal *out, const char **why);

/*
 * The key a caller signs its tokens to callee with: HMAC-SHA256 of
 * "moat-pair-key:" callee under the caller's own key, as base64 (*out, the
 * caller frees it). `moat up` gives a callee only these pair keys of its
 * callers in MOAT_PEER_KEYS: a callee can check what its callers send it,
 * but cannot mint a token one of them would send to another service.
 */
int moat_auth_pair_key(const char *caller_key_b64, const char *callee,
                       char **out);

/* Decode standard or url-safe base64 into at most cap bytes. */
int moat_base64_decode(const char *in, uint8_t *out, size_t cap, size_t *len);

#endif /* MOAT_AUTH_H */
