/* id.c - sortable unique ids (see moat/id.h). */
#include "moat/common.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "moat/id.h"

#include <sodium.h>

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#define ID_TIME_BYTES 6
#define ID_RAND_BYTES 10
#define ID_BYTES      (ID_TIME_BYTES + ID_RAND_BYTES)

/* The last id's time and random part, shared by every thread. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t last_ms;
static uint8_t last_rand[ID_RAND_BYTES];

/* Add one to a big-endian number; returns true when it wrapped to zero. */
static bool increment(uint8_t *b, size_t n)
{
    for (size_t i = n; i-- > 0;)
        if (++b[i] != 0)
            return false;
    return true;
}

/* prefix + the 16 bytes (time, random) as 26 Crockford characters. */
static void encode(const char *prefix, const uint8_t bytes[ID_BYTES], char *out,
                   size_t cap)
{
    /* 26 characters carry 130 bits: the first two are always zero. */
    char enc[MOAT_ID_CHARS + 1];
    for (int i = 0; i < MOAT_ID_CHARS; i++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++) {
            int bit = i * 5 - 2 + k;
            v <<= 1;
            if (bit >= 0)
                v |= (bytes[bit / 8] >> (7 - bit % 8)) & 1u;
        }
        enc[i] = crockford[v];
    }
    enc[MOAT_ID_CHARS] = '\0';
    snprintf(out, cap, "%s%s", prefix, enc);
}

void moat_id_new(const char *prefix, char *out, size_t cap)
{
    int64_t wall = moat_wall_ms();
    uint64_t now = wall > 0 ? (uint64_t)wall : 0;
    now &= (UINT64_C(1) << 48) - 1;
    uint8_t bytes[ID_BYTES];

    pthread_mutex_lock(&lock);
    if (now > last_ms) {
        last_ms = now;
        moat_random_bytes(last_rand, sizeof(last_rand));
    } else if (increment(last_rand, sizeof(last_rand))) {
        last_ms++; /* 2^80 ids in one millisecond: stay sortable anyway */
    }
    for (int i = 0; i < ID_TIME_BYTES; i++)
        bytes[i] = (uint8_t)(last_ms >> (8 * (ID_TIME_BYTES - 1 - i)));
    memcpy(bytes + ID_TIME_BYTES, last_rand, ID_RAND_BYTES);
    pthread_mutex_unlock(&lock);

    encode(prefix, bytes, out, cap);
}

bool moat_id_valid(const char *s, const char *prefix)
{
    if (!s)
        return false;
    size_t plen = strlen(prefix);
    if (strlen(s) != plen + MOAT_ID_CHARS || memcmp(s, prefix, plen) != 0)
        return false;
    const char *enc = s + plen;
    /* The leading character holds only 3 bits. */
    if (enc[0] < '0' || enc[0] > '7')
        return false;
    for (int i = 0; i < MOAT_ID_CHARS; i++)
        if (!strchr(crockford, enc[i]) || enc[i] == '\0')
            return false;
    return true;
}

bool moat_ref_valid(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

void moat_id_derive(const char *prefix, int64_t time_ms, const void *seed,
                    size_t seed_len, char *out, size_t cap)
{
    uint64_t t = time_ms > 0 ? (uint64_t)time_ms : 0;
    t &= (UINT64_C(1) << 48) - 1;
    uint8_t bytes[ID_BYTES];
    for (int i = 0; i < ID_TIME_BYTES; i++)
        bytes[i] = (uint8_t)(t >> (8 * (ID_TIME_BYTES - 1 - i)));
    crypto_generichash(bytes + ID_TIME_BYTES, ID_RAND_BYTES, seed, seed_len,
                       NULL, 0);
    encode(prefix, bytes, out, cap);
}
