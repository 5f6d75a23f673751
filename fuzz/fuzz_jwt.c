/*
 * fuzz_jwt.c - the end-user and service token verifier on arbitrary input.
 *
 * Property beyond "no crash, no leak, no UB": whatever moat_jwt_verify
 * accepts carries a valid HS256 signature under the expected key,
 * recomputed here independently with libsodium over "header.payload", and
 * has the expected issuer and audience. A token the verifier accepts
 * without that would be a forgery.
 */
#include "moat/common.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "moat/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t key[32] = "moat-fuzz-key-0123456789abcdefgh";

static bool signature_ok(const char *tok)
{
    const char *dot2 = strrchr(tok, '.');
    if (!dot2)
        return false;
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, sizeof(key));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)tok,
                                  (size_t)(dot2 - tok));
    crypto_auth_hmacsha256_final(&st, mac);
    unsigned char sig[64];
    size_t siglen = 0;
    if (sodium_base642bin(sig, sizeof(sig), dot2 + 1, strlen(dot2 + 1), NULL,
                          &siglen, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return false;
    return siglen == sizeof(mac) && sodium_memcmp(sig, mac, sizeof(mac)) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (sodium_init() < 0)
        abort();
    char *tok = moat_xstrndup((const char *)data, size);
    struct moat_jwt_expect e = {.key = key,
                                .keylen = sizeof(key),
                                .iss = "moat-users",
                                .aud = "moat",
                                .now = 1800000000,
                                .leeway_s = -1};
    struct moat_jwt_claims c;
    const char *why = NULL;
    if (moat_jwt_verify(tok, &e, &c, &why) == MOAT_OK) {
        if (!signature_ok(tok) || strcmp(c.iss, "moat-users") != 0 ||
            strcmp(c.aud, "moat") != 0 || !c.sub[0])
            abort(); /* accepted a forgery */
    } else if (!why) {
        abort(); /* refused without a reason */
    }
    char iss[64];
    moat_jwt_peek_issuer(tok, iss, sizeof(iss));
    free(tok);
    return 0;
}
