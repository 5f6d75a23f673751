/*
 * lib/auth.c - service identity: this service's key, the keys of the peers
 * allowed to call it, and the short-lived service tokens between them.
 *
 * A service token is an HS256 JWT signed with the CALLER's key: iss = sub =
 * caller, aud = callee, exp = now + MOAT_SERVICE_TOKEN_TTL_S, and the end
 * user acted for in usr/role/ip/perms (perms only with a user; a token
 * with a user and no perms claim, from an older caller, gets the role's
 * permissions). The callee picks the key by the unverified
 * issuer (moat_jwt_peek_issuer), then verifies everything with that key and
 * aud = itself, so a token for one service is useless at another and a
 * service holding no peer key for a caller cannot be called by it.
 *
 * Keys live inside struct moat_auth and are wiped (sodium_memzero) when it
 * is freed.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#include <sodium.h>

#include "moat/auth.h"
#include "moat/jwt.h"
#include "moat/log.h"

#define AUTH_KEY_MAX   128 /* HMAC keys beyond a block are hashed anyway */
#define AUTH_NAME_MAX  32  /* [a-z][a-z0-9-]{0,31}: up to 32 characters */
#define AUTH_PEERS_MAX 64
#define AUTH_ENV_KEY   "MOAT_SERVICE_KEY"
#define AUTH_ENV_PEERS "MOAT_PEER_KEYS"

struct auth_key {
    char name[AUTH_NAME_MAX + 1];
    uint8_t key[AUTH_KEY_MAX];
    size_t keylen;
};

/*
 * Token caches. Minting and verifying an HS256 token costs ~7 us each,
 * a quarter of a simple request's time, so both are reused while valid:
 * the caller reuses a token it minted for the same (audience, user, role,
 * address) for half its lifetime, and the callee remembers tokens it has
 * verified until they expire. A bearer token is replayable for its whole
 * lifetime anyway, so reuse grants nothing new. Entries hold the full
 * token and are compared in full: a hash collision only evicts.
 */
#define VERIFY_CACHE_SLOTS 512 /* direct-mapped, power of two */
#define MINT_CACHE_SLOTS   64

struct verified {
    uint64_t hash;
    char *token; /* owned */
    struct moat_principal p;
    int64_t exp;
};

struct minted {
    char *key;   /* "aud\nuser\nrole\nip\nperms", owned */
    char *token; /* owned */
    int64_t minted;
};

struct auth_cache {
    pthread_mutex_t lock;
    struct verified v[VERIFY_CACHE_SLOTS];
    struct minted m[MINT_CACHE_SLOTS];
    size_t m_next; /* round-robin replacement */
};

struct moat_auth {
    struct auth_key self;
    struct auth_key peers[AUTH_PEERS_MAX];
    size_t npeers;
    struct auth_cache *cache; /* mutable behind the const API; owned */
};

static void derive_pair(const uint8_t *key, size_t keylen, const char *callee,
                        uint8_t out[crypto_auth_hmacsha256_BYTES])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, keylen);
    crypto_auth_hmacsha256_update(&st,
                                  (const unsigned char *)"moat-pair-key:", 14);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)callee,
                                  strlen(callee));
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}

int moat_auth_pair_key(const char *caller_key_b64, const char *callee,
                       char **out)
{
    uint8_t key[AUTH_KEY_MAX];
    size_t keylen = 0;
    *out = NULL;
    if (!caller_key_b64 || !callee ||
        moat_base64_decode(caller_key_b64, key, sizeof(key), &keylen) !=
            MOAT_OK ||
        keylen < 32)
        return MOAT_EINVAL;
    uint8_t pair[crypto_auth_hmacsha256_BYTES];
    derive_pair(key, keylen, callee, pair);
    char b64[sodium_base64_ENCODED_LEN(sizeof(pair),
                                       sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof(b64), pair, sizeof(pair),
                      sodium_base64_VARIANT_ORIGINAL);
    *out = moat_xstrdup(b64);
    sodium_memzero(key, sizeof(key));
    sodium_memzero(pair, sizeof(pair));
    sodium_memzero(b64, sizeof(b64));
    return MOAT_OK;
}

/* ---- permissions ---- */

static const struct {
    unsigned flag;
    const char *name;
} perm_names[] = {
    {MOAT_PERM_POST, "post"},
    {MOAT_PERM_COMMENT, "comment"},
    {MOAT_PERM_MESSAGE, "message"},
    {MOAT_PERM_MODERATE, "moderate"},
};

unsigned moat_role_perms(const char *role)
{
    if (!role)
        return 0;
    if (strcmp(role, "customer") == 0 || strcmp(role, "member") == 0)
        return MOAT_PERM_POST | MOAT_PERM_COMMENT | MOAT_PERM_MESSAGE;
    if (strcmp(role, "moderator") == 0)
        return MOAT_PERM_POST | MOAT_PERM_COMMENT | MOAT_PERM_MESSAGE |
               MOAT_PERM_MODERATE;
    if (strcmp(role, "admin") == 0)
        return MOAT_PERM_ALL;
    return 0;
}

unsigned moat_perms_for(const char *role, bool suspended,
                        bool comment_suspended)
{
    unsigned perms = moat_role_perms(role);
    if (suspended)
        perms &= ~(MOAT_PERM_POST | MOAT_PERM_COMMENT | MOAT_PERM_MESSAGE);
    if (comment_suspended)
        perms &= ~MOAT_PERM_COMMENT;
    return perms;
}

const char *moat_perm_name(unsigned perm)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(perm_names); i++)
        if (perm_names[i].flag == perm)
            return perm_names[i].name;
    return NULL;
}

void moat_perms_format(unsigned perms, char *out, size_t cap)
{
    size_t len = 0;
    if (cap == 0)
        return;
    out[0] = '\0';
    for (size_t i = 0; i < MOAT_ARRAY_LEN(perm_names); i++) {
        if (!(perms & perm_names[i].flag))
            continue;
        int n = snprintf(out + len, cap - len, "%s%s", len ? " " : "",
                         perm_names[i].name);
        if (n < 0 || (size_t)n >= cap - len) {
            out[len] = '\0'; /* never half a name */
            return;
        }
        len += (size_t)n;
    }
}

unsigned moat_perms_parse(const char *s)
{
    unsigned perms = 0;
    while (s && *s) {
        s += strspn(s, " ");
        size_t n = strcspn(s, " ");
        for (size_t i = 0; i < MOAT_ARRAY_LEN(perm_names); i++)
            if (n == strlen(perm_names[i].name) &&
                memcmp(s, perm_names[i].name, n) == 0)
                perms |= perm_names[i].flag;
        s += n;
    }
    return perms;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void free_secret_string(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        free(s);
    }
}

/* [a-z][a-z0-9-]{0,31}: the same rule as service names. */
static bool valid_name(const char *s, size_t len)
{
    if (len == 0 || len > AUTH_NAME_MAX)
        return false;
    if (!(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

int moat_base64_decode(const char *in, uint8_t *out, size_t cap, size_t *len)
{
    if (!in || !out || !len)
        return MOAT_EINVAL;
    *len = 0;
    size_t inlen = strlen(in);
    if (inlen == 0)
        return MOAT_EINVAL;
    bool url = strpbrk(in, "-_") != NULL;
    bool std = strpbrk(in, "+/") != NULL;
    if (url && std)
        return MOAT_EINVAL;
    /* Padding is optional, but when present it must be right. */
    bool padded = in[inlen - 1] == '=';
    int variant = url ? (padded ? sodium_base64_VARIANT_URLSAFE
                                : sodium_base64_VARIANT_URLSAFE_NO_PADDING)
                      : (padded ? sodium_base64_VARIANT_ORIGINAL
                                : sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    const char *end = NULL;
    size_t n = 0;
    if (sodium_base642bin(out, cap, in, inlen, NULL, &n, &end, variant) != 0) {
        /* sodium_base642bin says ERANGE when the output does not fit. */
        sodium_memzero(out, cap);
        return (size_t)(inlen / 4 * 3) > cap ? MOAT_ETOOBIG : MOAT_EINVAL;
    }
    if (end != in + inlen) {
        sodium_memzero(out, cap);
        return MOAT_EINVAL;
    }
    *len = n;
    return MOAT_OK;
}

/* Decode one key; names the variable in the log line on failure. */
static int load_key(struct auth_key *k, const char *b64, size_t b64len,
                    const char *var, const char *who)
{
    char tmp[AUTH_KEY_MAX * 2];
    int rc = MOAT_EINVAL;
    if (b64len == 0 || b64len >= sizeof(tmp)) {
        moat_log(MOAT_LOG_ERROR, "service key malformed", "{s:s, s:s, s:s}",
                 "variable", var, "key", who, "error",
                 b64len ? "too long" : "empty");
        goto cleanup;
    }
    memcpy(tmp, b64, b64len);
    tmp[b64len] = '\0';
    if (moat_base64_decode(tmp, k->key, sizeof(k->key), &k->keylen) !=
        MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "service key malformed", "{s:s, s:s, s:s}",
                 "variable", var, "key", who, "error", "not base64");
        goto cleanup;
    }
    if (k->keylen < MOAT_JWT_MIN_KEY) {
        moat_log(MOAT_LOG_ERROR, "service key too short", "{s:s, s:s, s:i}",
                 "variable", var, "key", who, "minimum_bytes",
                 MOAT_JWT_MIN_KEY);
        goto cleanup;
    }
    rc = MOAT_OK;
cleanup:
    sodium_memzero(tmp, sizeof(tmp));
    if (rc != MOAT_OK) {
        sodium_memzero(k->key, sizeof(k->key));
        k->keylen = 0;
    }
    return rc;
}

/* MOAT_PEER_KEYS: "name:base64,name:base64"; empty or unset = no peers. */
static int load_peers(struct moat_auth *a, const char *s)
{
    const char *p = s;
    while (*p) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (!colon || !valid_name(p, (size_t)(colon - p))) {
            moat_log(MOAT_LOG_ERROR, "peer key entry malformed",
                     "{s:s, s:s, s:i}", "variable", AUTH_ENV_PEERS, "expected",
                     "name:base64[,name:base64...]", "entry",
                     (int)a->npeers + 1);
            return MOAT_EINVAL;
        }
        if (a->npeers == AUTH_PEERS_MAX) {
            moat_log(MOAT_LOG_ERROR, "too many peer keys", "{s:s, s:i}",
                     "variable", AUTH_ENV_PEERS, "max", AUTH_PEERS_MAX);
            return MOAT_EINVAL;
        }
        struct auth_key *k = &a->peers[a->npeers];
        size_t nlen = (size_t)(colon - p);
        memcpy(k->name, p, nlen);
        k->name[nlen] = '\0';
        for (size_t i = 0; i < a->npeers; i++) {
            if (strcmp(a->peers[i].name, k->name) == 0) {
                moat_log(MOAT_LOG_ERROR, "duplicate peer key", "{s:s, s:s}",
                         "variable", AUTH_ENV_PEERS, "peer", k->name);
                return MOAT_EINVAL;
            }
        }
        if (load_key(k, colon + 1, (size_t)(end - colon - 1), AUTH_ENV_PEERS,
                     k->name) != MOAT_OK)
            return MOAT_EINVAL;
        a->npeers++;
        if (!comma)
            break;
        p = comma + 1;
        if (*p == '\0') { /* a trailing comma is a typo, not an entry */
            moat_log(MOAT_LOG_ERROR, "peer key entry malformed", "{s:s, s:s}",
                     "variable", AUTH_ENV_PEERS, "error", "trailing comma");
            return MOAT_EINVAL;
        }
    }
    return MOAT_OK;
}

int moat_auth_new(struct moat_auth **out, const char *self, const char *key_b64)
{
    if (!out || !self || !key_b64 || !valid_name(self, strlen(self)))
        return MOAT_EINVAL;
    *out = NULL;
    if (sodium_init() < 0)
        moat_die("libsodium: sodium_init failed");
    struct moat_auth *a = moat_xcalloc(1, sizeof(*a));
    a->cache = moat_xcalloc(1, sizeof(*a->cache));
    pthread_mutex_init(&a->cache->lock, NULL);
    snprintf(a->self.name, sizeof(a->self.name), "%s", self);
    if (load_key(&a->self, key_b64, strlen(key_b64), "key", self) != MOAT_OK) {
        moat_auth_free(a);
        return MOAT_EINVAL;
    }
    *out = a;
    return MOAT_OK;
}

int moat_auth_load(struct moat_auth **out, const char *self)
{
    struct moat_auth *a = NULL;
    int rc = MOAT_EINVAL;
    if (!out)
        return MOAT_EINVAL;
    *out = NULL;
    if (sodium_init() < 0)
        moat_die("libsodium: sodium_init failed");
    if (!self || !valid_name(self, strlen(self))) {
        moat_log(MOAT_LOG_ERROR, "service name invalid for auth", "{s:s}",
                 "name", self ? self : "(null)");
        return MOAT_EINVAL;
    }
    const char *key = getenv(AUTH_ENV_KEY);
    if (!key) {
        moat_log(MOAT_LOG_ERROR, "service key missing", "{s:s}", "variable",
                 AUTH_ENV_KEY);
        return MOAT_ENOTFOUND;
    }
    a = moat_xcalloc(1, sizeof(*a));
    a->cache = moat_xcalloc(1, sizeof(*a->cache));
    pthread_mutex_init(&a->cache->lock, NULL);
    snprintf(a->self.name, sizeof(a->self.name), "%s", self);
    if (load_key(&a->self, key, strlen(key), AUTH_ENV_KEY, self) != MOAT_OK)
        goto cleanup;
    const char *peers = getenv(AUTH_ENV_PEERS);
    if (peers && load_peers(a, peers) != MOAT_OK)
        goto cleanup;
    *out = a;
    a = NULL;
    rc = MOAT_OK;
cleanup:
    moat_auth_free(a);
    return rc;
}

void moat_auth_free(struct moat_auth *a)
{
    if (!a)
        return;
    if (a->cache) {
        for (size_t i = 0; i < VERIFY_CACHE_SLOTS; i++)
            free_secret_string(a->cache->v[i].token);
        for (size_t i = 0; i < MINT_CACHE_SLOTS; i++) {
            free(a->cache->m[i].key);
            free_secret_string(a->cache->m[i].token);
        }
        pthread_mutex_destroy(&a->cache->lock);
        free(a->cache);
    }
    sodium_memzero(a, sizeof(*a));
    free(a);
}

const char *moat_auth_self(const struct moat_auth *a)
{
    return a ? a->self.name : "";
}

int moat_auth_token(const struct moat_auth *a, const char *audience,
                    const struct moat_principal *p, char **out)
{
    struct moat_jwt_claims c;
    if (!out)
        return MOAT_EINVAL;
    *out = NULL;
    if (!a || !audience || !valid_name(audience, strlen(audience)))
        return MOAT_EINVAL;
    int64_t now = (int64_t)time(NULL);
    char *key = moat_xasprintf("%s\n%s\n%s\n%s\n%u", audience,
                               p ? p->user_id : "", p ? p->role : "",
                               p ? p->client_ip : "", p ? p->perms : 0u);
    struct auth_cache *cache = a->cache;
    pthread_mutex_lock(&cache->lock);
    for (size_t i = 0; i < MINT_CACHE_SLOTS; i++) {
        struct minted *m = &cache->m[i];
        if (m->key && strcmp(m->key, key) == 0 &&
            now - m->minted < MOAT_SERVICE_TOKEN_TTL_S / 2) {
            *out = moat_xstrdup(m->token);
            pthread_mutex_unlock(&cache->lock);
            free(key);
            return MOAT_OK;
        }
    }
    pthread_mutex_unlock(&cache->lock);

    memset(&c, 0, sizeof(c));
    snprintf(c.iss, sizeof(c.iss), "%s", a->self.name);
    snprintf(c.sub, sizeof(c.sub), "%s", a->self.name);
    snprintf(c.aud, sizeof(c.aud), "%s", audience);
    c.iat = now;
    c.exp = now + MOAT_SERVICE_TOKEN_TTL_S;
    if (p) {
        /* The principal's fields are exactly as wide as the claims. */
        snprintf(c.usr, sizeof(c.usr), "%s", p->user_id);
        snprintf(c.role, sizeof(c.role), "%s", p->role);
        snprintf(c.ip, sizeof(c.ip), "%s", p->client_ip);
        if (p->user_id[0]) {
            moat_perms_format(p->perms, c.perms, sizeof(c.perms));
            c.perms_set = true;
        }
    }
    /* Signed with the pair key for this audience, never our own key: the
     * callee holds only that (see moat_auth_pair_key). */
    uint8_t pair[crypto_auth_hmacsha256_BYTES];
    derive_pair(a->self.key, a->self.keylen, audience, pair);
    int rc = moat_jwt_sign(pair, sizeof(pair), &c, out);
    sodium_memzero(pair, sizeof(pair));
    if (rc == MOAT_OK) {
        pthread_mutex_lock(&cache->lock);
        struct minted *m = &cache->m[cache->m_next];
        cache->m_next = (cache->m_next + 1) % MINT_CACHE_SLOTS;
        free(m->key);
        free_secret_string(m->token);
        m->key = key;
        key = NULL;
        m->token = moat_xstrdup(*out);
        m->minted = now;
        pthread_mutex_unlock(&cache->lock);
    }
    free(key);
    return rc;
}

static const struct auth_key *find_peer(const struct moat_auth *a,
                                        const char *name)
{
    for (size_t i = 0; i < a->npeers; i++)
        if (strcmp(a->peers[i].name, name) == 0)
            return &a->peers[i];
    return NULL;
}

/* The principal a verified service token from caller states. */
static void principal_from_claims(struct moat_principal *p, const char *caller,
                                  const struct moat_jwt_claims *c)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->service, sizeof(p->service), "%s", caller);
    snprintf(p->user_id, sizeof(p->user_id), "%s", c->usr);
    snprintf(p->role, sizeof(p->role), "%s", c->role);
    snprintf(p->client_ip, sizeof(p->client_ip), "%s", c->ip);
    if (!c->usr[0])
        p->perms = 0;
    else if (c->perms_set)
        p->perms = moat_perms_parse(c->perms);
    else /* a caller older than permissions: what the role could do */
        p->perms = moat_role_perms(c->role);
}

int moat_auth_verify(const struct moat_auth *a, const char *token,
                     struct moat_principal *out, const char **why)
{
    char iss[AUTH_NAME_MAX + 1];
    struct moat_jwt_claims c;
    const char *reason = NULL;
    if (out)
        memset(out, 0, sizeof(*out));
    if (!a || !token) {
        reason = "missing token";
        goto cleanup;
    }
    int64_t now = (int64_t)time(NULL);
    uint64_t h = fnv1a(token);
    struct auth_cache *cache = a->cache;
    struct verified *slot = &cache->v[h & (VERIFY_CACHE_SLOTS - 1)];
    pthread_mutex_lock(&cache->lock);
    if (slot->token && slot->hash == h && now < slot->exp &&
        strcmp(slot->token, token) == 0) {
        if (out)
            *out = slot->p;
        pthread_mutex_unlock(&cache->lock);
        goto cleanup; /* reason stays NULL: verified before */
    }
    pthread_mutex_unlock(&cache->lock);
    if (moat_jwt_peek_issuer(token, iss, sizeof(iss)) != MOAT_OK) {
        reason = "malformed";
        goto cleanup;
    }
    const struct auth_key *k = find_peer(a, iss);
    if (!k) {
        reason = "unknown caller";
        goto cleanup;
    }
    struct moat_jwt_expect e = {
        .key = k->key,
        .keylen = k->keylen,
        .iss = k->name,
        .aud = a->self.name,
        .now = now,
        .leeway_s = -1,
    };
    if (moat_jwt_verify(token, &e, &c, &reason) != MOAT_OK)
        goto cleanup;
    if (strcmp(c.sub, c.iss) != 0) {
        reason = "subject is not the issuer";
        goto cleanup;
    }
    /*
     * Service tokens are short-lived by contract: a longer one is either a
     * misbehaving peer or a token minted to be replayed later.
     */
    if (c.exp > now + MOAT_SERVICE_TOKEN_TTL_S + MOAT_JWT_LEEWAY_S) {
        reason = "lifetime too long";
        goto cleanup;
    }
    {
        struct moat_principal got;
        principal_from_claims(&got, k->name, &c);
        if (out)
            *out = got;
        /* Remember it until it expires (not beyond: no leeway here). */
        pthread_mutex_lock(&cache->lock);
        free_secret_string(slot->token);
        slot->token = moat_xstrdup(token);
        slot->hash = h;
        slot->exp = c.exp;
        slot->p = got;
        pthread_mutex_unlock(&cache->lock);
    }
cleanup:
    if (why)
        *why = reason;
    if (reason && out)
        memset(out, 0, sizeof(*out));
    return reason ? MOAT_EINVAL : MOAT_OK;
}
