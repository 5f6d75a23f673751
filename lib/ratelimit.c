/*
 * ratelimit.c - token buckets in a hash map with LRU eviction (see
 * moat/ratelimit.h).
 *
 * Keys come from clients (addresses, account names), so the map hashes
 * them with SipHash under a per-limiter random key: nobody can choose keys
 * that all land in one chain. Keys longer than RL_KEY_MAX are replaced by a
 * keyed BLAKE2b digest, which bounds memory per bucket and still keeps two
 * distinct long keys apart.
 */
#include "moat/common.h"

#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "moat/ratelimit.h"

#define RL_KEY_MAX       128
#define RL_DIGEST_BYTES  32
#define RL_INITIAL_SLOTS 16
/* Rounding may leave a refilled bucket a hair under one token. */
#define RL_TOKEN_EPSILON 1e-9

struct bucket {
    struct bucket *hnext;       /* hash chain */
    struct bucket *prev, *next; /* LRU list; head = most recently used */
    uint64_t hash;
    double tokens;
    uint64_t last_ms; /* when tokens was last brought up to date */
    bool digest;      /* key holds a digest of a long key */
    size_t klen;
    unsigned char key[];
};

struct moat_ratelimit {
    double burst;
    double per_ms; /* tokens added per millisecond */
    size_t max_keys;
    size_t count;
    struct bucket **slots;
    size_t nslots; /* power of two */
    struct bucket *lru_head, *lru_tail;
    unsigned char hash_key[crypto_shorthash_KEYBYTES];
    unsigned char digest_key[crypto_generichash_KEYBYTES];
};

/* The key as stored: the string itself, or its digest when too long. */
struct lookup_key {
    const unsigned char *bytes;
    size_t len;
    bool digest;
    unsigned char buf[RL_DIGEST_BYTES];
    uint64_t hash;
};

static void make_key(const struct moat_ratelimit *rl, const char *key,
                     struct lookup_key *k)
{
    size_t len = strlen(key);
    if (len <= RL_KEY_MAX) {
        k->bytes = (const unsigned char *)key;
        k->len = len;
        k->digest = false;
    } else {
        crypto_generichash(k->buf, sizeof(k->buf), (const unsigned char *)key,
                           len, rl->digest_key, sizeof(rl->digest_key));
        k->bytes = k->buf;
        k->len = sizeof(k->buf);
        k->digest = true;
    }
    unsigned char h[crypto_shorthash_BYTES];
    crypto_shorthash(h, k->bytes, k->len, rl->hash_key);
    memcpy(&k->hash, h, sizeof(k->hash));
}

static struct bucket **find_slot(struct moat_ratelimit *rl,
                                 const struct lookup_key *k)
{
    struct bucket **pp = &rl->slots[k->hash & (rl->nslots - 1)];
    for (; *pp; pp = &(*pp)->hnext) {
        const struct bucket *b = *pp;
        if (b->hash == k->hash && b->digest == k->digest && b->klen == k->len &&
            memcmp(b->key, k->bytes, k->len) == 0)
            break;
    }
    return pp;
}

static void lru_unlink(struct moat_ratelimit *rl, struct bucket *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        rl->lru_head = b->next;
    if (b->next)
        b->next->prev = b->prev;
    else
        rl->lru_tail = b->prev;
    b->prev = b->next = NULL;
}

static void lru_push_front(struct moat_ratelimit *rl, struct bucket *b)
{
    b->prev = NULL;
    b->next = rl->lru_head;
    if (rl->lru_head)
        rl->lru_head->prev = b;
    rl->lru_head = b;
    if (!rl->lru_tail)
        rl->lru_tail = b;
}

/* Unlink b from its hash chain and the LRU list, then free it. */
static void remove_bucket(struct moat_ratelimit *rl, struct bucket *b)
{
    struct bucket **pp = &rl->slots[b->hash & (rl->nslots - 1)];
    while (*pp != b)
        pp = &(*pp)->hnext;
    *pp = b->hnext;
    lru_unlink(rl, b);
    rl->count--;
    free(b);
}

/* Keep chains short: at most one bucket per slot on average. */
static void maybe_grow(struct moat_ratelimit *rl)
{
    if (rl->count < rl->nslots)
        return;
    size_t n = rl->nslots * 2;
    struct bucket **slots = moat_xcalloc(n, sizeof(*slots));
    for (size_t i = 0; i < rl->nslots; i++) {
        struct bucket *b = rl->slots[i];
        while (b) {
            struct bucket *next = b->hnext;
            b->hnext = slots[b->hash & (n - 1)];
            slots[b->hash & (n - 1)] = b;
            b = next;
        }
    }
    free(rl->slots);
    rl->slots = slots;
    rl->nslots = n;
}

struct moat_ratelimit *moat_ratelimit_new(double burst, double per_second,
                                          size_t max_keys)
{
    if (!isfinite(burst) || burst < 1.0 || !isfinite(per_second) ||
        per_second <= 0.0 || max_keys == 0)
        return NULL;
    /* Idempotent and thread-safe; libsodium wants it before any use. */
    if (sodium_init() < 0)
        moat_die("sodium_init failed");
    struct moat_ratelimit *rl = moat_xcalloc(1, sizeof(*rl));
    rl->burst = burst;
    rl->per_ms = per_second / 1000.0;
    rl->max_keys = max_keys;
    rl->nslots = RL_INITIAL_SLOTS;
    rl->slots = moat_xcalloc(rl->nslots, sizeof(*rl->slots));
    moat_random_bytes(rl->hash_key, sizeof(rl->hash_key));
    moat_random_bytes(rl->digest_key, sizeof(rl->digest_key));
    return rl;
}

void moat_ratelimit_free(struct moat_ratelimit *rl)
{
    if (!rl)
        return;
    struct bucket *b = rl->lru_head;
    while (b) {
        struct bucket *next = b->next;
        free(b);
        b = next;
    }
    free(rl->slots);
    free(rl);
}

bool moat_ratelimit_take(struct moat_ratelimit *rl, const char *key,
                         uint64_t now_ms, uint64_t *retry_after_ms)
{
    struct lookup_key k;

    if (retry_after_ms)
        *retry_after_ms = 0;
    make_key(rl, key ? key : "", &k);
    struct bucket **pp = find_slot(rl, &k);
    struct bucket *b = *pp;
    if (b) {
        lru_unlink(rl, b);
        /* A clock that goes backwards adds nothing and loses nothing. */
        if (now_ms > b->last_ms) {
            double t = b->tokens + (double)(now_ms - b->last_ms) * rl->per_ms;
            b->tokens = t < rl->burst ? t : rl->burst;
            b->last_ms = now_ms;
        }
    } else {
        if (rl->count >= rl->max_keys)
            remove_bucket(rl, rl->lru_tail);
        b = moat_xmalloc(sizeof(*b) + k.len);
        b->hash = k.hash;
        b->tokens = rl->burst;
        b->last_ms = now_ms;
        b->digest = k.digest;
        b->klen = k.len;
        memcpy(b->key, k.bytes, k.len);
        /* Eviction may have emptied the chain pp pointed into: look
         * again, and grow before linking so pp stays valid. */
        rl->count++;
        maybe_grow(rl);
        pp = &rl->slots[k.hash & (rl->nslots - 1)];
        b->hnext = *pp;
        *pp = b;
    }
    lru_push_front(rl, b);

    if (b->tokens >= 1.0 - RL_TOKEN_EPSILON) {
        b->tokens = b->tokens >= 1.0 ? b->tokens - 1.0 : 0.0;
        return true;
    }
    if (retry_after_ms) {
        /* Aim a little under the allowance so rounding cannot make the
         * promised time one millisecond too early or too late. */
        double need = 1.0 - b->tokens - RL_TOKEN_EPSILON / 10;
        double ms = ceil(need / rl->per_ms);
        /* A tiny rate gives a huge wait: clamp before converting. */
        *retry_after_ms = ms < 1.0                  ? 1
                          : ms >= (double)INT64_MAX ? (uint64_t)INT64_MAX
                                                    : (uint64_t)ms;
    }
    return false;
}

void moat_ratelimit_reset(struct moat_ratelimit *rl, const char *key)
{
    struct lookup_key k;

    make_key(rl, key ? key : "", &k);
    struct bucket *b = *find_slot(rl, &k);
    if (b)
        remove_bucket(rl, b);
}

size_t moat_ratelimit_size(const struct moat_ratelimit *rl)
{
    return rl ? rl->count : 0;
}
