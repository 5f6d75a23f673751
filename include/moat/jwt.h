/*
 * moat/jwt.h - HS256 JSON Web Tokens, signed and verified safely.
 *
 * libjwt 1.10 (underneath) accepts alg=none and unverified tokens when given
 * a NULL key, checks no claim, and accepts an HS256 token "signed" with a
 * public key used as the secret (tests/unit/test_jwt.c pins each case).
 * This wrapper never passes NULL, requires the header's alg to be exactly
 * HS256 (and typ, if present, "JWT"), bounds the token size, and checks
 * the claims itself: exp and nbf with a small leeway, iat not in the
 * future, iss and aud exactly as expected, sub present. Anything else is a
 * refusal with a reason.
 *
 * Claims are fixed-size strings; a token whose claims do not fit is
 * refused. Nothing in struct moat_jwt_claims needs freeing.
 */
#ifndef MOAT_JWT_H
#define MOAT_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOAT_JWT_MAX_LEN  4096 /* longer tokens are refused unparsed */
#define MOAT_JWT_MIN_KEY  32   /* HS256 secrets shorter than this: EINVAL */
#define MOAT_JWT_LEEWAY_S 30   /* default clock skew allowance */

struct moat_jwt_claims {
    char iss[64];  /* issuer: "moat-users" or a service name */
    char sub[64];  /* subject: user id, or the calling service */
    char aud[64];  /* audience: "moat" or the callee service */
    char role[16]; /* "customer", "admin" ("" if none) */
    char usr[64];  /* service tokens: end user acted for ("" if none) */
    char ip[48];   /* service tokens: the end user's address ("" if none) */
    char jti[48];  /* token id */
    char sid[48];  /* users' access tokens: the session (refresh token
                    * family) it belongs to ("" if none) */
    /* "perms": the end user's permissions, space-separated names
     * ("post comment message moderate", moat/auth.h). perms_set says the
     * claim was present (it may be present and empty: a suspended user);
     * moat_jwt_sign writes it only when perms_set. */
    char perms[48];
    bool perms_set;
    int64_t iat, nbf, exp; /* seconds since the epoch; 0 = absent */
};

/* Sign claims (exp required) with key; *out is a new string. */
int moat_jwt_sign(const uint8_t *key, size_t keylen,
                  const struct moat_jwt_claims *c, char **out);

struct moat_jwt_expect {
    const uint8_t *key; /* required, >= MOAT_JWT_MIN_KEY bytes */
    size_t keylen;
    const char *iss; /* required exact issuer */
    const char *aud; /* required exact audience */
    int64_t now;     /* 0 = time(NULL) */
    int leeway_s;    /* < 0 = MOAT_JWT_LEEWAY_S */
};

/*
 * Verify token against e. On MOAT_OK *out holds the claims. Otherwise
 * returns MOAT_EINVAL and *why (static string) says what was wrong:
 * "malformed", "bad algorithm", "bad signature", "expired", "not yet
 * valid", "wrong issuer", ...
 */
int moat_jwt_verify(const char *token, const struct moat_jwt_expect *e,
                    struct moat_jwt_claims *out, const char **why);

/*
 * The issuer claim of a token WITHOUT verifying it, to pick the key to
 * verify it with. Never trust anything else from an unverified token.
 */
int moat_jwt_peek_issuer(const char *token, char *iss, size_t len);

#endif /* MOAT_JWT_H */
