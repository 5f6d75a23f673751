/*
 * lib/jwt.c - HS256 JSON Web Tokens on top of libjwt 1.10.2, with every
 * check libjwt does not do (or does unsafely) done here.
 *
 * Verification order, cheapest and least trusting first:
 *
 *   1. size bound and alphabet: at most MOAT_JWT_MAX_LEN bytes, exactly
 *      three dot-separated parts of unpadded base64url; no whitespace;
 *   2. the raw header, decoded and parsed here with jansson (duplicate keys
 *      refused): alg exactly "HS256", typ absent or exactly "JWT", no crit;
 *   3. the signature: HMAC-SHA256 over "header.payload" computed with
 *      libsodium and compared in constant time (sodium_memcmp); libjwt
 *      1.10.2 compares base64 strings with strcmp, which leaks timing, so
 *      its own check is a second opinion, not the one we rely on;
 *   4. the claims, only now that they are authentic: exp, nbf, iat, iss,
 *      aud, sub, and the optional strings (role, usr, ip, jti, sid, perms),
 * each of the right type and size;
 *   5. libjwt's jwt_decode with the key (never NULL) and jwt_get_alg() ==
 *      JWT_ALG_HS256: the library must agree with this file, a second
 *      opinion that costs one more HMAC (~2 us).
 *
 * The payload is not parsed before the signature is checked, so an
 * attacker without the key only ever reaches steps 1-3.
 */
#include "moat/common.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <jwt.h>
#include <sodium.h>

#include "moat/jwt.h"

/* Decoded header and payload never exceed the token itself. */
#define PART_MAX MOAT_JWT_MAX_LEN

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;

static void sodium_init_once(void)
{
    if (sodium_init() < 0)
        moat_die("libsodium: sodium_init failed");
}

static void ensure_sodium(void)
{
    pthread_once(&sodium_once, sodium_init_once);
}

/* A token split into its three parts (pointers into the token). */
struct parts {
    const char *hdr, *pay, *sig;
    size_t hdr_len, pay_len, sig_len;
};

static bool is_b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/*
 * Exactly three parts of base64url characters. The signature may be empty
 * here so that an unsigned alg=none token is reported as such ("bad
 * algorithm") rather than as merely malformed; it is refused either way.
 */
static int split_token(const char *token, struct parts *p)
{
    size_t len = strnlen(token, MOAT_JWT_MAX_LEN + 1);
    if (len == 0 || len > MOAT_JWT_MAX_LEN)
        return MOAT_EINVAL;
    const char *dot[2];
    int ndots = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)token[i];
        if (c == '.') {
            if (ndots == 2)
                return MOAT_EINVAL;
            dot[ndots++] = token + i;
        } else if (!is_b64url_char(c)) {
            return MOAT_EINVAL;
        }
    }
    if (ndots != 2)
        return MOAT_EINVAL;
    p->hdr = token;
    p->hdr_len = (size_t)(dot[0] - token);
    p->pay = dot[0] + 1;
    p->pay_len = (size_t)(dot[1] - p->pay);
    p->sig = dot[1] + 1;
    p->sig_len = len - (size_t)(p->sig - token);
    if (p->hdr_len == 0 || p->pay_len == 0)
        return MOAT_EINVAL;
    return MOAT_OK;
}

/*
 * Strict unpadded base64url. libsodium also refuses non-zero trailing bits,
 * so each value has exactly one encoding (no signature malleability).
 */
static int b64url_decode(const char *in, size_t inlen, uint8_t *out, size_t cap,
                         size_t *outlen)
{
    const char *end = NULL;
    if (sodium_base642bin(out, cap, in, inlen, NULL, outlen, &end,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return MOAT_EINVAL;
    if (end != in + inlen)
        return MOAT_EINVAL;
    return MOAT_OK;
}

/* Decode a part and parse it as a JSON object (duplicate keys refused). */
static json_t *decode_json_part(const char *in, size_t inlen)
{
    uint8_t buf[PART_MAX];
    size_t n = 0;
    if (b64url_decode(in, inlen, buf, sizeof(buf), &n) != MOAT_OK)
        return NULL;
    json_t *j = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* alg exactly "HS256", typ absent or exactly "JWT", no crit. */
static const char *check_header(const struct parts *p)
{
    const char *why = NULL;
    json_t *h = decode_json_part(p->hdr, p->hdr_len);
    if (!h)
        return "malformed header";
    json_t *alg = json_object_get(h, "alg");
    if (!json_is_string(alg) || strcmp(json_string_value(alg), "HS256") != 0) {
        why = "bad algorithm";
        goto cleanup;
    }
    json_t *typ = json_object_get(h, "typ");
    if (typ &&
        (!json_is_string(typ) || strcmp(json_string_value(typ), "JWT") != 0)) {
        why = "bad token type";
        goto cleanup;
    }
    /*
     * RFC 7515 4.1.11: a recipient must refuse a token whose crit names an
     * extension it does not understand; we understand none.
     */
    if (json_object_get(h, "crit")) {
        why = "unsupported critical header";
        goto cleanup;
    }
cleanup:
    json_decref(h);
    return why;
}

static void hmac_sha256(const uint8_t *key, size_t keylen, const char *msg,
                        size_t msglen,
                        uint8_t mac[crypto_auth_hmacsha256_BYTES])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, keylen);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)msg, msglen);
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_memzero(&st, sizeof(st));
}

static const char *check_signature(const struct parts *p, const uint8_t *key,
                                   size_t keylen)
{
    uint8_t sig[crypto_auth_hmacsha256_BYTES + 1];
    uint8_t mac[crypto_auth_hmacsha256_BYTES];
    size_t n = 0;
    if (p->sig_len == 0)
        return "missing signature";
    if (b64url_decode(p->sig, p->sig_len, sig, sizeof(sig), &n) != MOAT_OK ||
        n != crypto_auth_hmacsha256_BYTES)
        return "bad signature";
    /* The signed input is "header.payload": everything before the 2nd dot. */
    hmac_sha256(key, keylen, p->hdr, (size_t)(p->sig - 1 - p->hdr), mac);
    int diff = sodium_memcmp(sig, mac, sizeof(mac));
    sodium_memzero(mac, sizeof(mac));
    return diff == 0 ? NULL : "bad signature";
}

/* libjwt's view must match ours: decoded with the key, alg HS256. */
static const char *check_with_libjwt(const char *token, const uint8_t *key,
                                     size_t keylen)
{
    jwt_t *jwt = NULL;
    const char *why = NULL;
    if (keylen > INT32_MAX)
        return "refused by libjwt";
    if (jwt_decode(&jwt, token, key, (int)keylen) != 0 || !jwt) {
        why = "refused by libjwt";
        goto cleanup;
    }
    if (jwt_get_alg(jwt) != JWT_ALG_HS256)
        why = "bad algorithm";
cleanup:
    if (jwt)
        jwt_free(jwt);
    return why;
}

/* Copy an optional string claim; absent leaves "" and is fine. */
static const char *get_str(json_t *pay, const char *name, char *dst, size_t cap,
                           bool required)
{
    dst[0] = '\0';
    json_t *v = json_object_get(pay, name);
    if (!v)
        return required ? "missing claim" : NULL;
    if (!json_is_string(v))
        return "malformed claims";
    size_t len = json_string_length(v);
    const char *s = json_string_value(v);
    if (len >= cap)
        return "oversized claim";
    /*
     * Claims end up in logs, headers and SQL parameters: no control
     * characters (jansson already refuses \u0000 without JSON_ALLOW_NUL).
     */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return "malformed claims";
    }
    memcpy(dst, s, len + 1);
    return NULL;
}

/* NumericDate as a JSON integer in (0, 2^53); fractions are refused. */
static const char *get_time(json_t *pay, const char *name, int64_t *dst,
                            bool required)
{
    *dst = 0;
    json_t *v = json_object_get(pay, name);
    if (!v)
        return required ? "missing expiry" : NULL;
    if (!json_is_integer(v))
        return "malformed claims";
    json_int_t t = json_integer_value(v);
    if (t <= 0 || t >= ((json_int_t)1 << 53))
        return "malformed claims";
    *dst = (int64_t)t;
    return NULL;
}

/* aud: the expected string, or an array holding exactly that one string. */
static const char *get_aud(json_t *pay, const char *expected, char *dst,
                           size_t cap)
{
    json_t *v = json_object_get(pay, "aud");
    dst[0] = '\0';
    if (!v)
        return "wrong audience";
    if (json_is_array(v)) {
        if (json_array_size(v) != 1)
            return "wrong audience";
        v = json_array_get(v, 0);
    }
    if (!json_is_string(v))
        return "wrong audience";
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (len >= cap)
        return "oversized claim";
    if (len != strlen(expected) || memcmp(s, expected, len) != 0)
        return "wrong audience";
    memcpy(dst, s, len + 1);
    return NULL;
}

static const char *check_claims(const struct parts *p,
                                const struct moat_jwt_expect *e,
                                struct moat_jwt_claims *c)
{
    const char *why = NULL;
    json_t *pay = decode_json_part(p->pay, p->pay_len);
    if (!pay)
        return "malformed payload";
    int64_t now = e->now ? e->now : (int64_t)time(NULL);
    int64_t leeway = e->leeway_s < 0 ? MOAT_JWT_LEEWAY_S : e->leeway_s;

    if ((why = get_time(pay, "exp", &c->exp, true)) ||
        (why = get_time(pay, "nbf", &c->nbf, false)) ||
        (why = get_time(pay, "iat", &c->iat, false)))
        goto cleanup;
    if (c->exp <= now - leeway) {
        why = "expired";
        goto cleanup;
    }
    if (c->nbf && c->nbf > now + leeway) {
        why = "not yet valid";
        goto cleanup;
    }
    if (c->iat && c->iat > now + leeway) {
        why = "issued in the future";
        goto cleanup;
    }
    if ((why = get_str(pay, "iss", c->iss, sizeof(c->iss), false)))
        goto cleanup;
    if (strcmp(c->iss, e->iss) != 0) {
        why = "wrong issuer";
        goto cleanup;
    }
    if ((why = get_aud(pay, e->aud, c->aud, sizeof(c->aud))))
        goto cleanup;
    if ((why = get_str(pay, "sub", c->sub, sizeof(c->sub), false)))
        goto cleanup;
    if (c->sub[0] == '\0') {
        why = "missing subject";
        goto cleanup;
    }
    if ((why = get_str(pay, "role", c->role, sizeof(c->role), false)) ||
        (why = get_str(pay, "usr", c->usr, sizeof(c->usr), false)) ||
        (why = get_str(pay, "ip", c->ip, sizeof(c->ip), false)) ||
        (why = get_str(pay, "jti", c->jti, sizeof(c->jti), false)) ||
        (why = get_str(pay, "sid", c->sid, sizeof(c->sid), false)) ||
        (why = get_str(pay, "perms", c->perms, sizeof(c->perms), false)))
        goto cleanup;
    c->perms_set = json_object_get(pay, "perms") != NULL;
cleanup:
    json_decref(pay);
    return why;
}

int moat_jwt_verify(const char *token, const struct moat_jwt_expect *e,
                    struct moat_jwt_claims *out, const char **why)
{
    struct moat_jwt_claims c;
    struct parts p;
    const char *reason = NULL;
    memset(&c, 0, sizeof(c));
    ensure_sodium();

    if (!e || !e->key || e->keylen < MOAT_JWT_MIN_KEY || !e->iss || !e->aud) {
        reason = "verifier misconfigured";
        goto cleanup;
    }
    if (!token) {
        reason = "missing token";
        goto cleanup;
    }
    if (strnlen(token, MOAT_JWT_MAX_LEN + 1) > MOAT_JWT_MAX_LEN) {
        reason = "token too long";
        goto cleanup;
    }
    if (split_token(token, &p) != MOAT_OK) {
        reason = "malformed";
        goto cleanup;
    }
    if ((reason = check_header(&p)) ||
        (reason = check_signature(&p, e->key, e->keylen)) ||
        (reason = check_claims(&p, e, &c)) ||
        (reason = check_with_libjwt(token, e->key, e->keylen)))
        goto cleanup;
cleanup:
    if (why)
        *why = reason;
    if (reason) {
        if (out)
            memset(out, 0, sizeof(*out));
        return MOAT_EINVAL;
    }
    if (out)
        *out = c;
    return MOAT_OK;
}

int moat_jwt_peek_issuer(const char *token, char *iss, size_t len)
{
    struct parts p;
    int rc = MOAT_EINVAL;
    json_t *pay = NULL;
    if (!token || !iss || len == 0)
        return MOAT_EINVAL;
    iss[0] = '\0';
    ensure_sodium();
    if (split_token(token, &p) != MOAT_OK)
        goto cleanup;
    pay = decode_json_part(p.pay, p.pay_len);
    if (!pay)
        goto cleanup;
    json_t *v = json_object_get(pay, "iss");
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) >= len)
        goto cleanup;
    memcpy(iss, json_string_value(v), json_string_length(v) + 1);
    rc = MOAT_OK;
cleanup:
    json_decref(pay);
    return rc;
}

/* A string claim to sign: must fit the verifier's field and be printable. */
static bool signable(const char *s, size_t cap, bool required)
{
    size_t len = strnlen(s, cap);
    if (len >= cap || (required && len == 0))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

int moat_jwt_sign(const uint8_t *key, size_t keylen,
                  const struct moat_jwt_claims *c, char **out)
{
    jwt_t *jwt = NULL;
    char *tok = NULL;
    int rc = MOAT_EINVAL;
    if (!out)
        return MOAT_EINVAL;
    *out = NULL;
    if (!key || keylen < MOAT_JWT_MIN_KEY || keylen > INT32_MAX || !c ||
        c->exp <= 0)
        return MOAT_EINVAL;
    if (!signable(c->iss, sizeof(c->iss), true) ||
        !signable(c->sub, sizeof(c->sub), true) ||
        !signable(c->aud, sizeof(c->aud), true) ||
        !signable(c->role, sizeof(c->role), false) ||
        !signable(c->usr, sizeof(c->usr), false) ||
        !signable(c->ip, sizeof(c->ip), false) ||
        !signable(c->jti, sizeof(c->jti), false) ||
        !signable(c->sid, sizeof(c->sid), false) ||
        !signable(c->perms, sizeof(c->perms), false))
        return MOAT_EINVAL;

    char jti[sizeof(c->jti)];
    if (c->jti[0]) {
        snprintf(jti, sizeof(jti), "%s", c->jti);
    } else {
        uint8_t rnd[16];
        moat_random_bytes(rnd, sizeof(rnd));
        moat_hex(jti, rnd, sizeof(rnd));
    }
    int64_t iat = c->iat ? c->iat : (int64_t)time(NULL);

    if (jwt_new(&jwt) != 0)
        moat_die("libjwt: jwt_new failed");
    if (jwt_set_alg(jwt, JWT_ALG_HS256, key, (int)keylen) != 0)
        goto cleanup;
    if (jwt_add_grant(jwt, "iss", c->iss) ||
        jwt_add_grant(jwt, "sub", c->sub) ||
        jwt_add_grant(jwt, "aud", c->aud) || jwt_add_grant(jwt, "jti", jti) ||
        jwt_add_grant_int(jwt, "exp", (long)c->exp) ||
        jwt_add_grant_int(jwt, "iat", (long)iat))
        goto cleanup;
    if (c->nbf && jwt_add_grant_int(jwt, "nbf", (long)c->nbf))
        goto cleanup;
    if ((c->role[0] && jwt_add_grant(jwt, "role", c->role)) ||
        (c->usr[0] && jwt_add_grant(jwt, "usr", c->usr)) ||
        (c->ip[0] && jwt_add_grant(jwt, "ip", c->ip)) ||
        (c->sid[0] && jwt_add_grant(jwt, "sid", c->sid)) ||
        (c->perms_set && jwt_add_grant(jwt, "perms", c->perms)))
        goto cleanup;
    tok = jwt_encode_str(jwt);
    if (!tok) {
        rc = errno == ENOMEM ? MOAT_ENOMEM : MOAT_EINVAL;
        goto cleanup;
    }
    /* A token we would refuse to verify is no token at all. */
    if (strlen(tok) > MOAT_JWT_MAX_LEN) {
        rc = MOAT_ETOOBIG;
        goto cleanup;
    }
    *out = moat_xstrdup(tok);
    rc = MOAT_OK;
cleanup:
    free(tok); /* libjwt 1.10 has no jwt_free_str: the string is malloc'd */
    if (jwt)
        jwt_free(jwt); /* jwt_free scrubs libjwt's copy of the key */
    return rc;
}
