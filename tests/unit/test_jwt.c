/*
 * Unit tests for lib/jwt.c: HS256 tokens. The heart of it is a table of
 * hostile or broken tokens, each of which must be refused with the stated
 * reason; then valid tokens, leeway, and signing.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "moat/jwt.h"

#define NOW 1700000000LL

static const uint8_t KEY[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t OTHER_KEY[32] = "fedcba9876543210fedcba9876543210";

/* A real RSA public key: the secret an algorithm-confusion attack uses. */
static const char RSA_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtYSzZlpIRwmZq2YSOm3V\n"
    "qMkpFB+87FcTg92cj4jr7d8Cu3V2emW6nqXCi1S1FquMXVtve8a8Vjp39idNAeIm\n"
    "ukENBFEK23nnXkFfSW32801Cm3rfT2eQdCnCec3TeVlYHuGXUuR/uXA8XCWUoeDz\n"
    "mgx+KYOPQXRWHUwf8ZCAEDJvV3SaVLa25cEUWCMsBjsjrh5qP8xNGfL4B6kVc3BW\n"
    "mvamL4ETOKnuSoYVPI7mzunZ7tdxv2GoOfQ4nJi1YUJc2viteGFzEXEi4TTiE/No\n"
    "G9YQFu+H9ZJh4ncHD7Z86rZ4R7Vr7qjkR8xsQW7RFzR8zY9Q3uAh8oz+u7EMUwix\n"
    "lwIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

#define HDR "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
/* Valid for NOW: exp 10 minutes ahead. */
#define PAY_REST "\"aud\":\"moat\",\"sub\":\"usr_1\",\"exp\":1700000600"
#define PAY                                                                    \
    "{\"iss\":\"moat-users\"," PAY_REST ",\"iat\":1700000000,"                 \
    "\"role\":\"customer\"}"

static char *b64url(const void *data, size_t len)
{
    size_t cap = sodium_base64_ENCODED_LEN(
        len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *out = moat_xmalloc(cap);
    sodium_bin2base64(out, cap, data, len,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

enum sign_mode {
    SIGN_KEY,   /* HMAC-SHA256 with KEY */
    SIGN_OTHER, /* HMAC-SHA256 with OTHER_KEY */
    SIGN_PEM,   /* HMAC-SHA256 with RSA_PEM as the secret */
    SIGN_EMPTY, /* no signature at all: "h.p." */
};

/* "b64(hdr).b64(pay).b64(hmac)"; caller frees. */
static char *make_token(const char *hdr, const char *pay, enum sign_mode mode)
{
    char *h = b64url(hdr, strlen(hdr));
    char *p = b64url(pay, strlen(pay));
    char *input = moat_xasprintf("%s.%s", h, p);
    uint8_t mac[crypto_auth_hmacsha256_BYTES];
    const uint8_t *k = KEY;
    size_t klen = sizeof(KEY);
    if (mode == SIGN_OTHER) {
        k = OTHER_KEY;
    } else if (mode == SIGN_PEM) {
        k = (const uint8_t *)RSA_PEM;
        klen = strlen(RSA_PEM);
    }
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, k, klen);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)input, strlen(input));
    crypto_auth_hmacsha256_final(&st, mac);
    char *s = b64url(mac, sizeof(mac));
    char *tok = moat_xasprintf("%s.%s", input, mode == SIGN_EMPTY ? "" : s);
    free(h);
    free(p);
    free(input);
    free(s);
    return tok;
}

static struct moat_jwt_expect expect(void)
{
    struct moat_jwt_expect e = {
        .key = KEY,
        .keylen = sizeof(KEY),
        .iss = "moat-users",
        .aud = "moat",
        .now = NOW,
        .leeway_s = 30,
    };
    return e;
}

enum mutate {
    M_NONE,
    M_TRUNCATE,     /* drop the last 5 characters */
    M_TWO_PARTS,    /* only "h.p" */
    M_FOUR_PARTS,   /* append ".x" */
    M_FLIP_SIG,     /* change the signature's first character */
    M_LEAD_SPACE,   /* " " + token */
    M_TRAIL_NL,     /* token + "\n" */
    M_PAD_SIG,      /* token + "=" (padded base64) */
    M_SIG_PLUS,     /* std-base64 '+' in the signature */
    M_SIG_TRAILING, /* same bytes, but the unused low bits of the last
                       character set: a second encoding of the signature */
    M_OVERSIZE,     /* payload padded past MOAT_JWT_MAX_LEN */
    M_RAW,          /* use hdr as the whole token */
};

struct bad {
    const char *name;
    const char *hdr;
    const char *pay;
    enum sign_mode sign;
    enum mutate mutate;
    const char *why;
};

static const struct bad BAD[] = {
    {"alg none, unsigned", "{\"alg\":\"none\",\"typ\":\"JWT\"}", PAY,
     SIGN_EMPTY, M_NONE, "bad algorithm"},
    {"alg none, signed", "{\"alg\":\"none\",\"typ\":\"JWT\"}", PAY, SIGN_KEY,
     M_NONE, "bad algorithm"},
    {"alg None", "{\"alg\":\"None\"}", PAY, SIGN_EMPTY, M_NONE,
     "bad algorithm"},
    {"alg NONE", "{\"alg\":\"NONE\"}", PAY, SIGN_KEY, M_NONE, "bad algorithm"},
    {"alg hs256 lowercase", "{\"alg\":\"hs256\"}", PAY, SIGN_KEY, M_NONE,
     "bad algorithm"},
    {"alg missing", "{\"typ\":\"JWT\"}", PAY, SIGN_KEY, M_NONE,
     "bad algorithm"},
    {"alg not a string", "{\"alg\":256}", PAY, SIGN_KEY, M_NONE,
     "bad algorithm"},
    {"HS384 header", "{\"alg\":\"HS384\",\"typ\":\"JWT\"}", PAY, SIGN_KEY,
     M_NONE, "bad algorithm"},
    {"HS512 header", "{\"alg\":\"HS512\",\"typ\":\"JWT\"}", PAY, SIGN_KEY,
     M_NONE, "bad algorithm"},
    {"RS256 header", "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", PAY, SIGN_PEM,
     M_NONE, "bad algorithm"},
    {"typ not JWT", "{\"alg\":\"HS256\",\"typ\":\"JWE\"}", PAY, SIGN_KEY,
     M_NONE, "bad token type"},
    {"header crit", "{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}", PAY,
     SIGN_KEY, M_NONE, "unsupported critical header"},
    {"header duplicate alg", "{\"alg\":\"none\",\"alg\":\"HS256\"}", PAY,
     SIGN_KEY, M_NONE, "malformed header"},
    {"header not JSON", "not json", PAY, SIGN_KEY, M_NONE, "malformed header"},
    {"header array", "[\"HS256\"]", PAY, SIGN_KEY, M_NONE, "malformed header"},
    {"signed with another key", HDR, PAY, SIGN_OTHER, M_NONE, "bad signature"},
    {"algorithm confusion: HS256 with RSA PEM as secret", HDR, PAY, SIGN_PEM,
     M_NONE, "bad signature"},
    {"signature stripped", HDR, PAY, SIGN_EMPTY, M_NONE, "missing signature"},
    {"signature altered by one char", HDR, PAY, SIGN_KEY, M_FLIP_SIG,
     "bad signature"},
    {"truncated token", HDR, PAY, SIGN_KEY, M_TRUNCATE, "bad signature"},
    {"padded signature", HDR, PAY, SIGN_KEY, M_PAD_SIG, "malformed"},
    {"std base64 in signature", HDR, PAY, SIGN_KEY, M_SIG_PLUS, "malformed"},
    {"two parts", HDR, PAY, SIGN_KEY, M_TWO_PARTS, "malformed"},
    {"four parts", HDR, PAY, SIGN_KEY, M_FOUR_PARTS, "malformed"},
    {"leading whitespace", HDR, PAY, SIGN_KEY, M_LEAD_SPACE, "malformed"},
    {"trailing newline", HDR, PAY, SIGN_KEY, M_TRAIL_NL, "malformed"},
    {"longer than MOAT_JWT_MAX_LEN", HDR, PAY, SIGN_KEY, M_OVERSIZE,
     "token too long"},
    {"empty string", "", NULL, SIGN_KEY, M_RAW, "malformed"},
    {"garbage", "hello world", NULL, SIGN_KEY, M_RAW, "malformed"},
    {"dots only", "..", NULL, SIGN_KEY, M_RAW, "malformed"},
    {"non-base64 characters", "eyJh$GciOi.eyJz!dWIi.c2ln*", NULL, SIGN_KEY,
     M_RAW, "malformed"},
    {"signature with non-zero trailing bits", HDR, PAY, SIGN_KEY,
     M_SIG_TRAILING, "bad signature"},
    {"payload not JSON", HDR, "this is not json", SIGN_KEY, M_NONE,
     "malformed payload"},
    {"payload array", HDR, "[{\"sub\":\"usr_1\"}]", SIGN_KEY, M_NONE,
     "malformed payload"},
    {"payload duplicate keys", HDR,
     "{\"iss\":\"moat-users\"," PAY_REST ",\"sub\":\"usr_admin\"}", SIGN_KEY,
     M_NONE, "malformed payload"},
    {"payload trailing garbage", HDR, PAY "{}", SIGN_KEY, M_NONE,
     "malformed payload"},
    {"expired", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\",\"exp\":"
     "1699999000}",
     SIGN_KEY, M_NONE, "expired"},
    {"expired just past the leeway", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\",\"exp\":"
     "1699999970}",
     SIGN_KEY, M_NONE, "expired"},
    {"exp missing", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\"}", SIGN_KEY,
     M_NONE, "missing expiry"},
    {"exp as string", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\","
     "\"exp\":\"1700000600\"}",
     SIGN_KEY, M_NONE, "malformed claims"},
    {"exp fractional", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\","
     "\"exp\":1700000600.5}",
     SIGN_KEY, M_NONE, "malformed claims"},
    {"exp negative", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\",\"exp\":-1}",
     SIGN_KEY, M_NONE, "malformed claims"},
    {"exp huge", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\","
     "\"exp\":9223372036854775807}",
     SIGN_KEY, M_NONE, "malformed claims"},
    {"nbf in the future", HDR,
     "{\"iss\":\"moat-users\"," PAY_REST ",\"nbf\":1700000100}", SIGN_KEY,
     M_NONE, "not yet valid"},
    {"iat in the future", HDR,
     "{\"iss\":\"moat-users\"," PAY_REST ",\"iat\":1700000100}", SIGN_KEY,
     M_NONE, "issued in the future"},
    {"wrong iss", HDR, "{\"iss\":\"moat-user\"," PAY_REST "}", SIGN_KEY, M_NONE,
     "wrong issuer"},
    {"missing iss", HDR, "{" PAY_REST "}", SIGN_KEY, M_NONE, "wrong issuer"},
    {"iss not a string", HDR, "{\"iss\":[\"moat-users\"]," PAY_REST "}",
     SIGN_KEY, M_NONE, "malformed claims"},
    {"wrong aud", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"catalog\",\"sub\":\"u\","
     "\"exp\":1700000600}",
     SIGN_KEY, M_NONE, "wrong audience"},
    {"missing aud", HDR,
     "{\"iss\":\"moat-users\",\"sub\":\"u\",\"exp\":1700000600}", SIGN_KEY,
     M_NONE, "wrong audience"},
    {"aud array with extra values", HDR,
     "{\"iss\":\"moat-users\",\"aud\":[\"moat\",\"catalog\"],\"sub\":\"u\","
     "\"exp\":1700000600}",
     SIGN_KEY, M_NONE, "wrong audience"},
    {"aud empty array", HDR,
     "{\"iss\":\"moat-users\",\"aud\":[],\"sub\":\"u\",\"exp\":1700000600}",
     SIGN_KEY, M_NONE, "wrong audience"},
    {"aud prefix", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moatx\",\"sub\":\"u\","
     "\"exp\":1700000600}",
     SIGN_KEY, M_NONE, "wrong audience"},
    {"missing sub", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"exp\":1700000600}", SIGN_KEY,
     M_NONE, "missing subject"},
    {"empty sub", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"\","
     "\"exp\":1700000600}",
     SIGN_KEY, M_NONE, "missing subject"},
    {"sub with a control character", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\\n1\","
     "\"exp\":1700000600}",
     SIGN_KEY, M_NONE, "malformed claims"},
    {"sub with NUL", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\\u0000admin\","
     "\"exp\":1700000600}",
     SIGN_KEY, M_NONE, "malformed payload"},
    {"oversized sub", HDR,
     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"exp\":1700000600,\"sub\":"
     "\"0123456789012345678901234567890123456789012345678901234567890123\"}",
     SIGN_KEY, M_NONE, "oversized claim"},
    {"oversized role", HDR,
     "{\"iss\":\"moat-users\"," PAY_REST ",\"role\":\"administrator-xyz\"}",
     SIGN_KEY, M_NONE, "oversized claim"},
    {"role not a string", HDR,
     "{\"iss\":\"moat-users\"," PAY_REST ",\"role\":1}", SIGN_KEY, M_NONE,
     "malformed claims"},
};

static char *build_bad(const struct bad *b)
{
    if (b->mutate == M_RAW)
        return moat_xstrdup(b->hdr);
    if (b->mutate == M_OVERSIZE) {
        /* A genuinely signed token, only too long. */
        size_t n = MOAT_JWT_MAX_LEN;
        char *filler = moat_xmalloc(n + 1);
        memset(filler, 'a', n);
        filler[n] = '\0';
        char *pay = moat_xasprintf(
            "{\"iss\":\"moat-users\"," PAY_REST ",\"pad\":\"%s\"}", filler);
        char *t = make_token(b->hdr, pay, b->sign);
        free(filler);
        free(pay);
        return t;
    }
    char *t = make_token(b->hdr, b->pay, b->sign);
    char *r = NULL;
    size_t len = strlen(t);
    char *last_dot = strrchr(t, '.');
    switch (b->mutate) {
    case M_TRUNCATE:
        t[len - 5] = '\0';
        return t;
    case M_TWO_PARTS:
        *last_dot = '\0';
        return t;
    case M_FOUR_PARTS:
        r = moat_xasprintf("%s.x", t);
        break;
    case M_FLIP_SIG:
        last_dot[1] = last_dot[1] == 'A' ? 'B' : 'A';
        return t;
    case M_LEAD_SPACE:
        r = moat_xasprintf(" %s", t);
        break;
    case M_TRAIL_NL:
        r = moat_xasprintf("%s\n", t);
        break;
    case M_PAD_SIG:
        r = moat_xasprintf("%s=", t);
        break;
    case M_SIG_TRAILING: {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijkl"
                                       "mnopqrstuvwxyz0123456789-_";
        const char *at = strchr(alphabet, t[len - 1]);
        assert_non_null(at);
        t[len - 1] = alphabet[(at - alphabet) ^ 1];
        return t;
    }
    case M_SIG_PLUS:
        last_dot[1] = '+';
        return t;
    default:
        return t;
    }
    free(t);
    return r;
}

static void test_bad_tokens_refused(void **state)
{
    assert_true(MOAT_ARRAY_LEN(BAD) >= 30);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(BAD); i++) {
        const struct bad *b = &BAD[i];
        char *tok = build_bad(b);
        struct moat_jwt_expect e = expect();
        struct moat_jwt_claims c;
        const char *why = NULL;
        int rc = moat_jwt_verify(tok, &e, &c, &why);
        if (rc != MOAT_EINVAL || !why || strcmp(why, b->why) != 0)
            fail_msg("case \"%s\": rc %d, why \"%s\", expected \"%s\"", b->name,
                     rc, why ? why : "(null)", b->why);
        /* A refusal leaves no half-filled claims behind. */
        assert_string_equal(c.sub, "");
        free(tok);
    }
}

static void test_valid_token_accepted(void **state)
{
    char *tok = make_token(HDR, PAY, SIGN_KEY);
    struct moat_jwt_expect e = expect();
    struct moat_jwt_claims c;
    const char *why = "unset";
    assert_int_equal(moat_jwt_verify(tok, &e, &c, &why), MOAT_OK);
    assert_null(why);
    assert_string_equal(c.iss, "moat-users");
    assert_string_equal(c.aud, "moat");
    assert_string_equal(c.sub, "usr_1");
    assert_string_equal(c.role, "customer");
    assert_string_equal(c.usr, "");
    assert_int_equal(c.exp, 1700000600);
    assert_int_equal(c.iat, 1700000000);
    assert_int_equal(c.nbf, 0);
    free(tok);

    /* typ is optional; aud may be a one-element array (RFC 7519 4.1.3). */
    tok = make_token("{\"alg\":\"HS256\"}",
                     "{\"iss\":\"moat-users\",\"aud\":[\"moat\"],\"sub\":\"u\","
                     "\"exp\":1700000600,\"kid\":\"ignored\"}",
                     SIGN_KEY);
    assert_int_equal(moat_jwt_verify(tok, &e, &c, &why), MOAT_OK);
    assert_string_equal(c.aud, "moat");
    free(tok);
}

static void test_leeway_honoured(void **state)
{
    struct moat_jwt_expect e = expect();
    const char *why = NULL;
    /* exp 29 s ago, nbf and iat 29 s ahead: inside a 30 s leeway. */
    char *tok = make_token(HDR,
                           "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":"
                           "\"u\",\"exp\":1699999971,\"nbf\":1700000029,"
                           "\"iat\":1700000029}",
                           SIGN_KEY);
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_OK);
    /* The same token without leeway is refused... */
    e.leeway_s = 0;
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_EINVAL);
    assert_string_equal(why, "expired");
    /* ...and a negative leeway means the default (30 s). */
    e.leeway_s = -1;
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_OK);
    free(tok);
    /* exp exactly now - leeway is over. */
    tok = make_token(HDR,
                     "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"u\","
                     "\"exp\":1699999970}",
                     SIGN_KEY);
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_EINVAL);
    assert_string_equal(why, "expired");
    free(tok);
}

static void test_verifier_misuse(void **state)
{
    char *tok = make_token(HDR, PAY, SIGN_KEY);
    struct moat_jwt_expect e = expect();
    const char *why = NULL;
    /* A NULL key must never mean "do not check" (libjwt's behaviour). */
    e.key = NULL;
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_EINVAL);
    assert_string_equal(why, "verifier misconfigured");
    e = expect();
    e.keylen = MOAT_JWT_MIN_KEY - 1;
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_EINVAL);
    e = expect();
    e.iss = NULL;
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_EINVAL);
    e = expect();
    assert_int_equal(moat_jwt_verify(NULL, &e, NULL, &why), MOAT_EINVAL);
    assert_int_equal(moat_jwt_verify(tok, NULL, NULL, &why), MOAT_EINVAL);
    /* The PEM itself as the configured key: still an HS256 secret, and the
     * token was signed with KEY, so it fails. */
    e.key = (const uint8_t *)RSA_PEM;
    e.keylen = strlen(RSA_PEM);
    assert_int_equal(moat_jwt_verify(tok, &e, NULL, &why), MOAT_EINVAL);
    assert_string_equal(why, "bad signature");
    free(tok);
}

static void test_sign_round_trip(void **state)
{
    struct moat_jwt_claims c;
    memset(&c, 0, sizeof(c));
    snprintf(c.iss, sizeof(c.iss), "orders");
    snprintf(c.sub, sizeof(c.sub), "orders");
    snprintf(c.aud, sizeof(c.aud), "catalog");
    snprintf(c.usr, sizeof(c.usr), "usr_42");
    snprintf(c.role, sizeof(c.role), "admin");
    snprintf(c.ip, sizeof(c.ip), "2001:db8::1");
    c.iat = NOW;
    c.exp = NOW + 60;
    char *t1 = NULL, *t2 = NULL;
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t1), MOAT_OK);
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t2), MOAT_OK);
    assert_string_not_equal(t1, t2); /* fresh jti each time */

    struct moat_jwt_expect e = expect();
    e.iss = "orders";
    e.aud = "catalog";
    struct moat_jwt_claims got;
    const char *why = NULL;
    assert_int_equal(moat_jwt_verify(t1, &e, &got, &why), MOAT_OK);
    assert_string_equal(got.sub, "orders");
    assert_string_equal(got.usr, "usr_42");
    assert_string_equal(got.role, "admin");
    assert_string_equal(got.ip, "2001:db8::1");
    assert_int_equal(strlen(got.jti), 32);
    assert_int_equal(got.exp, NOW + 60);

    char iss[64];
    assert_int_equal(moat_jwt_peek_issuer(t1, iss, sizeof(iss)), MOAT_OK);
    assert_string_equal(iss, "orders");
    assert_int_equal(moat_jwt_peek_issuer(t1, iss, 6), MOAT_EINVAL);
    assert_int_equal(moat_jwt_peek_issuer("a.b.c", iss, sizeof(iss)),
                     MOAT_EINVAL);

    /* Another key, another audience: refused. */
    e.key = OTHER_KEY;
    assert_int_equal(moat_jwt_verify(t1, &e, NULL, &why), MOAT_EINVAL);
    assert_string_equal(why, "bad signature");
    e.key = KEY;
    e.aud = "users";
    assert_int_equal(moat_jwt_verify(t1, &e, NULL, &why), MOAT_EINVAL);
    assert_string_equal(why, "wrong audience");
    free(t1);
    free(t2);
}

/* The perms claim: absent, present and empty, present with names. */
static void test_perms_claim(void **state)
{
    MOAT_UNUSED(state);
    struct moat_jwt_claims c;
    memset(&c, 0, sizeof(c));
    snprintf(c.iss, sizeof(c.iss), "moat-users");
    snprintf(c.sub, sizeof(c.sub), "usr_1");
    snprintf(c.aud, sizeof(c.aud), "moat");
    c.iat = NOW;
    c.exp = NOW + 60;
    struct moat_jwt_expect e = expect();
    struct moat_jwt_claims got;
    const char *why = NULL;
    char *t = NULL;

    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_OK);
    assert_int_equal(moat_jwt_verify(t, &e, &got, &why), MOAT_OK);
    assert_false(got.perms_set);
    assert_string_equal(got.perms, "");
    free(t);

    c.perms_set = true;
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_OK);
    assert_int_equal(moat_jwt_verify(t, &e, &got, &why), MOAT_OK);
    assert_true(got.perms_set);
    assert_string_equal(got.perms, "");
    free(t);

    snprintf(c.perms, sizeof(c.perms), "post comment message moderate");
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_OK);
    assert_int_equal(moat_jwt_verify(t, &e, &got, &why), MOAT_OK);
    assert_true(got.perms_set);
    assert_string_equal(got.perms, "post comment message moderate");
    free(t);

    /* Control characters and unterminated values are refused. */
    snprintf(c.perms, sizeof(c.perms), "post\tcomment");
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_EINVAL);
    memset(c.perms, 'p', sizeof(c.perms));
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_EINVAL);
    assert_null(t);
}

static void test_sign_refuses_bad_input(void **state)
{
    struct moat_jwt_claims c;
    memset(&c, 0, sizeof(c));
    snprintf(c.iss, sizeof(c.iss), "moat-users");
    snprintf(c.sub, sizeof(c.sub), "usr_1");
    snprintf(c.aud, sizeof(c.aud), "moat");
    char *t = NULL;
    /* exp required */
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_EINVAL);
    assert_null(t);
    c.exp = NOW + 60;
    assert_int_equal(moat_jwt_sign(KEY, MOAT_JWT_MIN_KEY - 1, &c, &t),
                     MOAT_EINVAL);
    assert_int_equal(moat_jwt_sign(NULL, sizeof(KEY), &c, &t), MOAT_EINVAL);
    c.sub[0] = '\0';
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_EINVAL);
    snprintf(c.sub, sizeof(c.sub), "usr\n1");
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_EINVAL);
    /* An unterminated field is refused, not read past. */
    memset(c.sub, 'x', sizeof(c.sub));
    assert_int_equal(moat_jwt_sign(KEY, sizeof(KEY), &c, &t), MOAT_EINVAL);
    assert_null(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_tokens_refused),
        cmocka_unit_test(test_valid_token_accepted),
        cmocka_unit_test(test_leeway_honoured),
        cmocka_unit_test(test_verifier_misuse),
        cmocka_unit_test(test_sign_round_trip),
        cmocka_unit_test(test_sign_refuses_bad_input),
        cmocka_unit_test(test_perms_claim),
    };
    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
