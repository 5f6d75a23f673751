/*
 * moat/auth.h - service identity and the principal behind a request.
 *
 * Every service has its own secret (MOAT_SERVICE_KEY, base64 of >= 32
 * bytes) and knows, for each service allowed to call it, the pair key that
 * caller uses towards it (MOAT_PEER_KEYS = "gateway:<base64>,...", see
 * moat_auth_pair_key): never a caller's own key. A caller sends
 * a short-lived HS256 service token in the Moat-Service-Token header:
 * iss = caller, aud = callee, exp = now + 60 s, plus the end user it acts
 * for (usr, role, ip) when there is one. `moat up` generates the keys and
 * hands each service exactly the peer keys it needs (least privilege).
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

/* Who is calling, as established from a verified token. */
struct moat_principal {
    char service[33]; /* calling service, [a-z][a-z0-9-]{0,31}; "" none */
    char user_id[64]; /* the end user acted for; "" for none */
    char role[16];    /* the end user's role: "customer", "admin", "" */
    char client_ip[48];
};

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

struct moat_auth;

/*
 * Load self's key and the peer keys from the environment. MOAT_EINVAL (with
 * a message naming the variable) when one is malformed or too short;
 * MOAT_ENOTFOUND when MOAT_SERVICE_KEY is unset.
 */
int moat_auth_load(struct moat_auth **out, const char *self);
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
