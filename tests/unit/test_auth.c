/*
 * Unit tests for lib/auth.c: service keys from the environment, service
 * tokens between two services, and every way a token is refused.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <sodium.h>

#include "moat/auth.h"
#include "moat/jwt.h"

/* Three services' keys: gateway and orders may call catalog. */
static uint8_t k_gateway[32], k_orders[32], k_catalog[32], k_rogue[32];

static char *b64(const uint8_t *k, size_t len, int variant)
{
    size_t cap = sodium_base64_ENCODED_LEN(len, variant);
    char *s = moat_xmalloc(cap);
    sodium_bin2base64(s, cap, k, len, variant);
    return s;
}

/* Load a struct moat_auth for self with the given env values (NULL unsets). */
static int load_as(struct moat_auth **a, const char *self, const char *key,
                   const char *peers)
{
    if (key)
        setenv("MOAT_SERVICE_KEY", key, 1);
    else
        unsetenv("MOAT_SERVICE_KEY");
    if (peers)
        setenv("MOAT_PEER_KEYS", peers, 1);
    else
        unsetenv("MOAT_PEER_KEYS");
    return moat_auth_load(a, self);
}

static struct moat_auth *load_ok(const char *self, const uint8_t *key,
                                 const char *peers)
{
    struct moat_auth *a = NULL;
    char *k = b64(key, 32, sodium_base64_VARIANT_ORIGINAL);
    assert_int_equal(load_as(&a, self, k, peers), MOAT_OK);
    assert_non_null(a);
    assert_string_equal(moat_auth_self(a), self);
    free(k);
    return a;
}

/* The pair key of caller towards callee, re-encoded in a base64 variant. */
static char *pair_key(const uint8_t *caller_key, const char *callee,
                      int variant)
{
    char *own = b64(caller_key, 32, sodium_base64_VARIANT_ORIGINAL);
    char *pair = NULL;
    assert_int_equal(moat_auth_pair_key(own, callee, &pair), MOAT_OK);
    uint8_t raw[64];
    size_t len = 0;
    assert_int_equal(moat_base64_decode(pair, raw, sizeof(raw), &len), MOAT_OK);
    char *out = b64(raw, len, variant);
    free(own);
    free(pair);
    return out;
}

/* catalog knows gateway's and orders' pair keys towards it (std base64,
 * and url-safe unpadded), never their own keys. */
static char *catalog_peers(void)
{
    char *g = pair_key(k_gateway, "catalog", sodium_base64_VARIANT_ORIGINAL);
    char *o =
        pair_key(k_orders, "catalog", sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *s = moat_xasprintf("gateway:%s,orders:%s", g, o);
    free(g);
    free(o);
    return s;
}

static void test_round_trip_with_principal(void **state)
{
    char *peers = catalog_peers();
    struct moat_auth *catalog = load_ok("catalog", k_catalog, peers);
    struct moat_auth *gateway = load_ok("gateway", k_gateway, "");
    struct moat_auth *orders = load_ok("orders", k_orders, NULL);

    struct moat_principal p = {.service = "",
                               .user_id = "usr_7",
                               .role = "admin",
                               .client_ip = "192.0.2.9"};
    char *tok = NULL;
    assert_int_equal(moat_auth_token(gateway, "catalog", &p, &tok), MOAT_OK);
    struct moat_principal got;
    const char *why = "unset";
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_OK);
    assert_null(why);
    assert_string_equal(got.service, "gateway");
    assert_string_equal(got.user_id, "usr_7");
    assert_string_equal(got.role, "admin");
    assert_string_equal(got.client_ip, "192.0.2.9");
    free(tok);

    /* No principal: a service acting for itself. */
    assert_int_equal(moat_auth_token(orders, "catalog", NULL, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_OK);
    assert_string_equal(got.service, "orders");
    assert_string_equal(got.user_id, "");
    assert_string_equal(got.role, "");
    free(tok);

    moat_auth_free(catalog);
    moat_auth_free(gateway);
    moat_auth_free(orders);
    free(peers);
}

/* moat_auth_new: the same identity from a key in hand (the console signs
 * as the operator this way); catalog accepts what it signs. */
static void test_identity_from_key(void **state)
{
    char *peers = catalog_peers();
    struct moat_auth *catalog = load_ok("catalog", k_catalog, peers);
    char *key = b64(k_gateway, 32, sodium_base64_VARIANT_ORIGINAL);
    struct moat_auth *gw = NULL;
    assert_int_equal(moat_auth_new(&gw, "gateway", key), MOAT_OK);
    char *tok = NULL;
    assert_int_equal(moat_auth_token(gw, "catalog", NULL, &tok), MOAT_OK);
    struct moat_principal got;
    const char *why = NULL;
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_OK);
    assert_string_equal(got.service, "gateway");
    free(tok);
    moat_auth_free(gw);
    struct moat_auth *bad = NULL;
    assert_int_equal(moat_auth_new(&bad, "gateway", "c2hvcnQ="), MOAT_EINVAL);
    assert_null(bad);
    assert_int_equal(moat_auth_new(&bad, "Not A Name", key), MOAT_EINVAL);
    free(key);
    moat_auth_free(catalog);
    free(peers);
}

static void test_refusals(void **state)
{
    char *peers = catalog_peers();
    struct moat_auth *catalog = load_ok("catalog", k_catalog, peers);
    struct moat_auth *gateway = load_ok("gateway", k_gateway, NULL);
    struct moat_auth *rogue = load_ok("rogue", k_rogue, NULL);
    struct moat_principal got;
    const char *why = NULL;
    char *tok = NULL;

    /* A caller catalog holds no key for. */
    assert_int_equal(moat_auth_token(rogue, "catalog", NULL, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_EINVAL);
    assert_string_equal(why, "unknown caller");
    free(tok);

    /* Meant for another service: signed with the pair key towards that
     * service, so it does not even verify here. */
    assert_int_equal(moat_auth_token(gateway, "orders", NULL, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_EINVAL);
    assert_string_equal(why, "bad signature");
    free(tok);

    /* Claims to be the gateway but signed with the rogue key. */
    struct moat_jwt_claims c;
    memset(&c, 0, sizeof(c));
    int64_t now = (int64_t)time(NULL);
    snprintf(c.iss, sizeof(c.iss), "gateway");
    snprintf(c.sub, sizeof(c.sub), "gateway");
    snprintf(c.aud, sizeof(c.aud), "catalog");
    c.exp = now + 30;
    assert_int_equal(moat_jwt_sign(k_rogue, 32, &c, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_EINVAL);
    assert_string_equal(why, "bad signature");
    free(tok);

    /* The right key for gateway -> catalog is gateway's pair key. */
    uint8_t gw_pair[64];
    size_t gw_pair_len = 0;
    char *gp = pair_key(k_gateway, "catalog", sodium_base64_VARIANT_ORIGINAL);
    assert_int_equal(
        moat_base64_decode(gp, gw_pair, sizeof(gw_pair), &gw_pair_len),
        MOAT_OK);
    free(gp);
    /* Gateway's own key is not it. */
    c.iat = now;
    c.exp = now + 30;
    assert_int_equal(moat_jwt_sign(k_gateway, 32, &c, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_EINVAL);
    assert_string_equal(why, "bad signature");
    free(tok);

    /* Expired: signed by the right key, in the past. */
    c.iat = now - 600;
    c.exp = now - 540;
    assert_int_equal(moat_jwt_sign(gw_pair, gw_pair_len, &c, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_EINVAL);
    assert_string_equal(why, "expired");
    assert_string_equal(got.service, "");
    free(tok);

    /* Far longer-lived than a service token may be. */
    c.iat = now;
    c.exp = now + 3600;
    assert_int_equal(moat_jwt_sign(gw_pair, gw_pair_len, &c, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_EINVAL);
    assert_string_equal(why, "lifetime too long");
    free(tok);

    /* Subject other than the issuer. */
    c.exp = now + 60;
    snprintf(c.sub, sizeof(c.sub), "orders");
    assert_int_equal(moat_jwt_sign(gw_pair, gw_pair_len, &c, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_EINVAL);
    assert_string_equal(why, "subject is not the issuer");
    free(tok);

    /* Garbage, and nothing. */
    assert_int_equal(moat_auth_verify(catalog, "x.y.z", &got, &why),
                     MOAT_EINVAL);
    assert_string_equal(why, "malformed");
    assert_int_equal(moat_auth_verify(catalog, NULL, &got, &why), MOAT_EINVAL);
    assert_int_equal(moat_auth_verify(NULL, "x.y.z", &got, &why), MOAT_EINVAL);

    /* Token requests with a bad audience name. */
    assert_int_equal(moat_auth_token(gateway, "Catalog", NULL, &tok),
                     MOAT_EINVAL);
    assert_int_equal(moat_auth_token(gateway, "", NULL, &tok), MOAT_EINVAL);
    assert_null(tok);

    moat_auth_free(catalog);
    moat_auth_free(gateway);
    moat_auth_free(rogue);
    free(peers);
}

/* Tokens are reused while valid: the caller's per (audience, user) and the
 * callee's verification; a cached verification never widens what a token
 * says, and a different user gets a different token. */
static void test_token_caches(void **state)
{
    char *peers = catalog_peers();
    struct moat_auth *catalog = load_ok("catalog", k_catalog, peers);
    struct moat_auth *gateway = load_ok("gateway", k_gateway, "");
    struct moat_principal ann = {.user_id = "usr_ann", .role = "customer"};
    struct moat_principal bob = {.user_id = "usr_bob", .role = "admin"};
    char *t1 = NULL, *t2 = NULL, *t3 = NULL;
    assert_int_equal(moat_auth_token(gateway, "catalog", &ann, &t1), MOAT_OK);
    assert_int_equal(moat_auth_token(gateway, "catalog", &ann, &t2), MOAT_OK);
    assert_string_equal(t1, t2); /* reused */
    assert_int_equal(moat_auth_token(gateway, "catalog", &bob, &t3), MOAT_OK);
    assert_string_not_equal(t1, t3);

    struct moat_principal got;
    const char *why;
    for (int i = 0; i < 3; i++) { /* first verifies, then the cache */
        assert_int_equal(moat_auth_verify(catalog, t1, &got, &why), MOAT_OK);
        assert_string_equal(got.user_id, "usr_ann");
        assert_string_equal(got.role, "customer");
        assert_string_equal(got.service, "gateway");
        assert_int_equal(moat_auth_verify(catalog, t3, &got, &why), MOAT_OK);
        assert_string_equal(got.user_id, "usr_bob");
        assert_string_equal(got.role, "admin");
    }
    /* A token one character off is not a cache hit. */
    t1[strlen(t1) - 2] = t1[strlen(t1) - 2] == 'A' ? 'B' : 'A';
    assert_int_equal(moat_auth_verify(catalog, t1, &got, &why), MOAT_EINVAL);
    assert_string_equal(got.user_id, "");
    free(t1);
    free(t2);
    free(t3);
    moat_auth_free(catalog);
    moat_auth_free(gateway);
    free(peers);
}

/* Holding a caller's pair key towards you does not let you speak as that
 * caller to anyone else: catalog knows gateway's pair key for catalog, and
 * a token signed with it is refused by users. */
static void test_pair_keys_do_not_transfer(void **state)
{
    char *cat_pair =
        pair_key(k_gateway, "catalog", sodium_base64_VARIANT_ORIGINAL);
    char *users_pair =
        pair_key(k_gateway, "users", sodium_base64_VARIANT_ORIGINAL);
    assert_string_not_equal(cat_pair, users_pair);
    /* users trusts gateway's pair key towards users */
    char *users_peers = moat_xasprintf("gateway:%s", users_pair);
    struct moat_auth *users = load_ok("users", k_orders, users_peers);
    /* A forger holding only catalog's knowledge signs "as gateway". */
    uint8_t raw[64];
    size_t len = 0;
    assert_int_equal(moat_base64_decode(cat_pair, raw, sizeof(raw), &len),
                     MOAT_OK);
    struct moat_jwt_claims c = {0};
    int64_t now = (int64_t)time(NULL);
    snprintf(c.iss, sizeof(c.iss), "gateway");
    snprintf(c.sub, sizeof(c.sub), "gateway");
    snprintf(c.aud, sizeof(c.aud), "users");
    snprintf(c.usr, sizeof(c.usr), "usr_x");
    snprintf(c.role, sizeof(c.role), "admin");
    c.iat = now;
    c.exp = now + 60;
    char *forged = NULL;
    assert_int_equal(moat_jwt_sign(raw, len, &c, &forged), MOAT_OK);
    struct moat_principal got;
    const char *why = NULL;
    assert_int_equal(moat_auth_verify(users, forged, &got, &why), MOAT_EINVAL);
    /* The real gateway's token to users is accepted. */
    struct moat_auth *gateway = load_ok("gateway", k_gateway, "");
    char *real = NULL;
    assert_int_equal(moat_auth_token(gateway, "users", NULL, &real), MOAT_OK);
    assert_int_equal(moat_auth_verify(users, real, &got, &why), MOAT_OK);
    free(real);
    free(forged);
    moat_auth_free(users);
    moat_auth_free(gateway);
    free(users_peers);
    free(cat_pair);
    free(users_pair);
}

static void test_bad_env(void **state)
{
    struct moat_auth *a = NULL;
    char *good = b64(k_catalog, 32, sodium_base64_VARIANT_ORIGINAL);
    char *shortk = b64(k_catalog, 31, sodium_base64_VARIANT_ORIGINAL);
    char *url = b64(k_catalog, 32, sodium_base64_VARIANT_URLSAFE);

    assert_int_equal(load_as(&a, "catalog", NULL, NULL), MOAT_ENOTFOUND);
    assert_null(a);
    assert_int_equal(load_as(&a, "catalog", "", NULL), MOAT_EINVAL);
    assert_int_equal(load_as(&a, "catalog", shortk, NULL), MOAT_EINVAL);
    assert_int_equal(load_as(&a, "catalog", "not base64!", NULL), MOAT_EINVAL);
    char *spaced = moat_xasprintf(" %s", good);
    assert_int_equal(load_as(&a, "catalog", spaced, NULL), MOAT_EINVAL);
    free(spaced);
    /* Url-safe padded works as well as standard. */
    assert_int_equal(load_as(&a, "catalog", url, NULL), MOAT_OK);
    moat_auth_free(a);
    a = NULL;
    /* A bad self name. */
    assert_int_equal(load_as(&a, "Catalog", good, NULL), MOAT_EINVAL);
    assert_int_equal(load_as(&a, "", good, NULL), MOAT_EINVAL);

    const char *bad_peers_fmt[] = {
        "gateway=%s",                           /* wrong separator */
        "gateway:%s,",                          /* trailing comma */
        ",gateway:%s",                          /* empty entry */
        "Gateway:%s",                           /* upper case name */
        "1gw:%s",                               /* digit first */
        "gateway:%s,gateway:%s",                /* duplicate */
        "gateway: %s",                          /* space */
        "gateway:%s;orders:%s",                 /* wrong list separator */
        "abcdefghijabcdefghijabcdefghijabc:%s", /* 33-character name */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad_peers_fmt); i++) {
        char *peers = moat_xasprintf(bad_peers_fmt[i], good, good);
        if (load_as(&a, "catalog", good, peers) != MOAT_EINVAL)
            fail_msg("MOAT_PEER_KEYS \"%s\" accepted", bad_peers_fmt[i]);
        assert_null(a);
        free(peers);
    }
    char *p = moat_xasprintf("gateway:%s", shortk);
    assert_int_equal(load_as(&a, "catalog", good, p), MOAT_EINVAL);
    free(p);
    p = moat_xasprintf("gateway:");
    assert_int_equal(load_as(&a, "catalog", good, p), MOAT_EINVAL);
    free(p);
    /* 32-character names are fine. */
    p = moat_xasprintf("abcdefghijabcdefghijabcdefghijab:%s", good);
    assert_int_equal(load_as(&a, "catalog", good, p), MOAT_OK);
    moat_auth_free(a);
    free(p);

    free(good);
    free(shortk);
    free(url);
    unsetenv("MOAT_SERVICE_KEY");
    unsetenv("MOAT_PEER_KEYS");
}

static void test_base64_decode(void **state)
{
    uint8_t out[8];
    size_t n = 0;
    assert_int_equal(moat_base64_decode("aGk=", out, sizeof(out), &n), MOAT_OK);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "hi", 2);
    assert_int_equal(moat_base64_decode("aGk", out, sizeof(out), &n), MOAT_OK);
    assert_int_equal(n, 2);
    /* 0xfb 0xff: "+/8" standard, "-_8" url-safe. */
    assert_int_equal(moat_base64_decode("+/8=", out, sizeof(out), &n), MOAT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(moat_base64_decode("-_8", out, sizeof(out), &n), MOAT_OK);
    assert_int_equal(out[1], 0xff);
    /* Mixed alphabets, junk, whitespace, bad padding, too long. */
    assert_int_equal(moat_base64_decode("+_8=", out, sizeof(out), &n),
                     MOAT_EINVAL);
    assert_int_equal(moat_base64_decode("aG k=", out, sizeof(out), &n),
                     MOAT_EINVAL);
    assert_int_equal(moat_base64_decode("aGk=\n", out, sizeof(out), &n),
                     MOAT_EINVAL);
    assert_int_equal(moat_base64_decode("aGk==", out, sizeof(out), &n),
                     MOAT_EINVAL);
    assert_int_equal(moat_base64_decode("", out, sizeof(out), &n), MOAT_EINVAL);
    assert_int_equal(
        moat_base64_decode("AAAAAAAAAAAAAAAA", out, sizeof(out), &n),
        MOAT_ETOOBIG);
}

static void test_perms_map(void **state)
{
    MOAT_UNUSED(state);
    const unsigned pcm = MOAT_PERM_POST | MOAT_PERM_COMMENT | MOAT_PERM_MESSAGE;
    assert_int_equal(moat_role_perms("customer"), pcm);
    assert_int_equal(moat_role_perms("member"), pcm);
    assert_int_equal(moat_role_perms("moderator"), pcm | MOAT_PERM_MODERATE);
    assert_int_equal(moat_role_perms("admin"), MOAT_PERM_ALL);
    assert_int_equal(moat_role_perms(""), 0);
    assert_int_equal(moat_role_perms("Admin"), 0);
    assert_int_equal(moat_role_perms(NULL), 0);
    /* Suspension keeps moderate; a commenting suspension only drops
     * comment. */
    assert_int_equal(moat_perms_for("customer", true, false), 0);
    assert_int_equal(moat_perms_for("admin", true, false), MOAT_PERM_MODERATE);
    assert_int_equal(moat_perms_for("customer", false, true),
                     MOAT_PERM_POST | MOAT_PERM_MESSAGE);
    assert_int_equal(moat_perms_for("customer", false, false), pcm);

    char text[MOAT_PERMS_TEXT_MAX];
    moat_perms_format(MOAT_PERM_ALL, text, sizeof(text));
    assert_string_equal(text, "post comment message moderate");
    assert_true(strlen(text) < MOAT_PERMS_TEXT_MAX);
    moat_perms_format(MOAT_PERM_MESSAGE | MOAT_PERM_POST, text, sizeof(text));
    assert_string_equal(text, "post message");
    moat_perms_format(0, text, sizeof(text));
    assert_string_equal(text, "");
    moat_perms_format(MOAT_PERM_ALL, text, 10); /* never half a name */
    assert_string_equal(text, "post");
    for (unsigned f = 0; f <= MOAT_PERM_ALL; f++) {
        moat_perms_format(f, text, sizeof(text));
        assert_int_equal(moat_perms_parse(text), f);
    }
    /* Unknown names grant nothing; spacing does not matter. */
    assert_int_equal(moat_perms_parse("  post  fly comment"),
                     MOAT_PERM_POST | MOAT_PERM_COMMENT);
    assert_int_equal(moat_perms_parse("posts postcomment"), 0);
    assert_int_equal(moat_perms_parse(""), 0);
    assert_int_equal(moat_perms_parse(NULL), 0);
    assert_string_equal(moat_perm_name(MOAT_PERM_MODERATE), "moderate");
    assert_null(moat_perm_name(MOAT_PERM_POST | MOAT_PERM_COMMENT));
}

static void test_perms_in_service_token(void **state)
{
    MOAT_UNUSED(state);
    char *peers = catalog_peers();
    struct moat_auth *catalog = load_ok("catalog", k_catalog, peers);
    struct moat_auth *gateway = load_ok("gateway", k_gateway, NULL);
    struct moat_principal got;
    const char *why = NULL;
    char *tok = NULL;

    /* Carried as set, also when empty (a suspended customer) and when
     * only the permissions differ (the mint cache keys on them). */
    struct moat_principal p = {.user_id = "usr_1",
                               .role = "customer",
                               .perms = MOAT_PERM_POST | MOAT_PERM_MESSAGE};
    assert_int_equal(moat_auth_token(gateway, "catalog", &p, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_OK);
    assert_int_equal(got.perms, MOAT_PERM_POST | MOAT_PERM_MESSAGE);
    free(tok);
    p.perms = 0;
    assert_int_equal(moat_auth_token(gateway, "catalog", &p, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_OK);
    assert_int_equal(got.perms, 0);
    free(tok);

    /* A caller older than permissions sends no perms claim: the role's. */
    char *own = b64(k_gateway, 32, sodium_base64_VARIANT_ORIGINAL);
    char *pair_b64 = NULL;
    assert_int_equal(moat_auth_pair_key(own, "catalog", &pair_b64), MOAT_OK);
    uint8_t pair[64];
    size_t pair_len = 0;
    assert_int_equal(
        moat_base64_decode(pair_b64, pair, sizeof(pair), &pair_len), MOAT_OK);
    struct moat_jwt_claims c;
    memset(&c, 0, sizeof(c));
    snprintf(c.iss, sizeof(c.iss), "gateway");
    snprintf(c.sub, sizeof(c.sub), "gateway");
    snprintf(c.aud, sizeof(c.aud), "catalog");
    snprintf(c.usr, sizeof(c.usr), "usr_2");
    snprintf(c.role, sizeof(c.role), "moderator");
    c.exp = (int64_t)time(NULL) + 60;
    assert_int_equal(moat_jwt_sign(pair, pair_len, &c, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_OK);
    assert_string_equal(got.user_id, "usr_2");
    assert_int_equal(got.perms, moat_role_perms("moderator"));
    free(tok);
    /* No user: no permissions, whatever the claims say. */
    c.usr[0] = '\0';
    snprintf(c.perms, sizeof(c.perms), "post");
    c.perms_set = true;
    assert_int_equal(moat_jwt_sign(pair, pair_len, &c, &tok), MOAT_OK);
    assert_int_equal(moat_auth_verify(catalog, tok, &got, &why), MOAT_OK);
    assert_int_equal(got.perms, 0);
    free(tok);

    sodium_memzero(pair, sizeof(pair));
    free(own);
    free(pair_b64);
    moat_auth_free(catalog);
    moat_auth_free(gateway);
    free(peers);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    randombytes_buf(k_gateway, sizeof(k_gateway));
    randombytes_buf(k_orders, sizeof(k_orders));
    randombytes_buf(k_catalog, sizeof(k_catalog));
    randombytes_buf(k_rogue, sizeof(k_rogue));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_with_principal),
        cmocka_unit_test(test_identity_from_key),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_token_caches),
        cmocka_unit_test(test_pair_keys_do_not_transfer),
        cmocka_unit_test(test_bad_env),
        cmocka_unit_test(test_base64_decode),
        cmocka_unit_test(test_perms_map),
        cmocka_unit_test(test_perms_in_service_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
