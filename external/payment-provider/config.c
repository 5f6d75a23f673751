/*
 * config.c - moat-payprovider's configuration: merchants and their API
 * keys, the control key, the initial behaviour knobs, and the seeded
 * generator behind declines and jitter.
 */
#include "moat/common.h"

#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "moat/config.h"
#include "moat/log.h"
#include "payprovider.h"

#define ENV_API_KEYS    "MOAT_PAYPROVIDER_API_KEYS"
#define ENV_CONTROL_KEY "MOAT_PAYPROVIDER_CONTROL_KEY"
#define ENV_LATENCY     "MOAT_PAYPROVIDER_LATENCY_MS"
#define ENV_JITTER      "MOAT_PAYPROVIDER_LATENCY_JITTER_MS"
#define ENV_DECLINE     "MOAT_PAYPROVIDER_DECLINE_RATE"
#define ENV_SEED        "MOAT_PAYPROVIDER_SEED"
#define ENV_OUTAGE      "MOAT_PAYPROVIDER_OUTAGE"
#define ENV_OUTAGE_MODE "MOAT_PAYPROVIDER_OUTAGE_STATUS"
#define ENV_TTL         "MOAT_PAYPROVIDER_IDEMPOTENCY_TTL_S"

#define LATENCY_DEFAULT_MS 20

/* ---- the generator ---- */

void pp_rng_seed(struct pp_rng *r, uint64_t seed)
{
    r->state = seed;
}

uint64_t pp_rng_next(struct pp_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double pp_rng_unit(struct pp_rng *r)
{
    /* The top 53 bits: every double in [0, 1) on a 2^-53 grid. */
    return (double)(pp_rng_next(r) >> 11) * 0x1.0p-53;
}

/* ---- secrets ---- */

static void key_hash(const char *secret, uint8_t out[PP_KEY_HASH_LEN])
{
    crypto_hash_sha256(out, (const unsigned char *)secret, strlen(secret));
}

const struct pp_merchant *pp_config_merchant(const struct pp_config *cfg,
                                             const char *secret)
{
    /* Hashing first gives equal-length inputs to compare, so neither the
     * length nor the content of a configured key shows in the timing;
     * and every merchant is compared, so neither does which one matched. */
    uint8_t h[PP_KEY_HASH_LEN];
    key_hash(secret, h);
    const struct pp_merchant *found = NULL;
    for (size_t i = 0; i < cfg->nmerchants; i++) {
        bool eq = sodium_memcmp(h, cfg->merchants[i].key_hash, sizeof(h)) == 0;
        if (eq && !found)
            found = &cfg->merchants[i];
    }
    sodium_memzero(h, sizeof(h));
    return found;
}

bool pp_config_control_ok(const struct pp_config *cfg, const char *secret)
{
    if (!cfg->control_enabled || !secret)
        return false;
    uint8_t h[PP_KEY_HASH_LEN];
    key_hash(secret, h);
    bool ok = sodium_memcmp(h, cfg->control_hash, sizeof(h)) == 0;
    sodium_memzero(h, sizeof(h));
    return ok;
}

const char *pp_bearer(const char *value)
{
    static const char scheme[] = "Bearer";
    if (!value || strncasecmp(value, scheme, sizeof(scheme) - 1) != 0)
        return NULL;
    const char *p = value + sizeof(scheme) - 1;
    if (*p != ' ')
        return NULL;
    p += strspn(p, " ");
    size_t n = strlen(p);
    if (n == 0 || n > PP_SECRET_MAX)
        return NULL;
    return p;
}

const char *pp_outage_mode_name(enum pp_outage_mode m)
{
    switch (m) {
    case PP_OUTAGE_500:
        return "500";
    case PP_OUTAGE_TIMEOUT:
        return "timeout";
    case PP_OUTAGE_503:
    default:
        return "503";
    }
}

/* ---- environment ---- */

static bool merchant_id_valid(const char *s, size_t n)
{
    if (n == 0 || n > PP_MERCHANT_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_'))
            return false;
    }
    return true;
}

static bool secret_valid(const char *s, size_t n)
{
    if (n < PP_SECRET_MIN || n > PP_SECRET_MAX)
        return false;
    /* Visible ASCII only: it travels in a header, and a space would be
     * read as the end of the credential. */
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~')
            return false;
    return true;
}

static void config_error(const char *variable, const char *fmt, ...)
    MOAT_PRINTF(2, 3);

static void config_error(const char *variable, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s}", "variable",
             variable, "error", why);
    fprintf(stderr, "config: %s: %s\n", variable, why);
}

/* "merchant-id:secret,merchant-id:secret". Secrets never reach a log. */
static int parse_api_keys(struct pp_config *cfg, const char *list)
{
    const char *p = list;
    int rc = MOAT_EINVAL;
    while (*p) {
        size_t len = strcspn(p, ",");
        const char *colon = memchr(p, ':', len);
        if (!colon) {
            config_error(ENV_API_KEYS, "entry %zu is not merchant-id:secret",
                         cfg->nmerchants + 1);
            goto cleanup;
        }
        size_t id_len = (size_t)(colon - p);
        size_t secret_len = len - id_len - 1;
        if (!merchant_id_valid(p, id_len)) {
            config_error(ENV_API_KEYS,
                         "entry %zu: the merchant id must be 1 to %d of "
                         "[a-z0-9_-]",
                         cfg->nmerchants + 1, PP_MERCHANT_ID_MAX);
            goto cleanup;
        }
        if (!secret_valid(colon + 1, secret_len)) {
            config_error(ENV_API_KEYS,
                         "merchant \"%.*s\": the key must be %d to %d "
                         "visible ASCII characters",
                         (int)id_len, p, PP_SECRET_MIN, PP_SECRET_MAX);
            goto cleanup;
        }
        if (cfg->nmerchants == PP_MAX_MERCHANTS) {
            config_error(ENV_API_KEYS, "more than %d merchants",
                         PP_MAX_MERCHANTS);
            goto cleanup;
        }
        struct pp_merchant *m = &cfg->merchants[cfg->nmerchants];
        memcpy(m->id, p, id_len);
        m->id[id_len] = '\0';
        for (size_t i = 0; i < cfg->nmerchants; i++) {
            if (strcmp(cfg->merchants[i].id, m->id) == 0) {
                config_error(ENV_API_KEYS, "merchant \"%s\" appears twice",
                             m->id);
                goto cleanup;
            }
        }
        char *secret = moat_xstrndup(colon + 1, secret_len);
        key_hash(secret, m->key_hash);
        for (size_t i = 0; i < cfg->nmerchants; i++) {
            if (sodium_memcmp(cfg->merchants[i].key_hash, m->key_hash,
                              PP_KEY_HASH_LEN) == 0) {
                sodium_memzero(secret, secret_len);
                free(secret);
                /* The key identifies the merchant: two merchants with
                 * one key would see each other's payments. */
                config_error(ENV_API_KEYS,
                             "merchants \"%s\" and \"%s\" share a key",
                             cfg->merchants[i].id, m->id);
                goto cleanup;
            }
        }
        sodium_memzero(secret, secret_len);
        free(secret);
        cfg->nmerchants++;
        p += len;
        if (*p == ',')
            p++;
    }
    if (cfg->nmerchants == 0) {
        config_error(ENV_API_KEYS, "no merchant configured");
        goto cleanup;
    }
    rc = MOAT_OK;

cleanup:
    return rc;
}

static int parse_rate(const char *variable, double def, double *out)
{
    const char *v = getenv(variable);
    if (!v || !*v) {
        *out = def;
        return MOAT_OK;
    }
    char *end = NULL;
    double d = strtod(v, &end);
    if (end == v || *end != '\0' || !isfinite(d) || d < 0.0 || d > 1.0) {
        config_error(variable, "'%s' is not a number between 0 and 1", v);
        return MOAT_EINVAL;
    }
    *out = d;
    return MOAT_OK;
}

static int parse_outage_mode(const char *variable, enum pp_outage_mode *out)
{
    const char *v = moat_env_str(variable, "503");
    if (strcmp(v, "503") == 0)
        *out = PP_OUTAGE_503;
    else if (strcmp(v, "500") == 0)
        *out = PP_OUTAGE_500;
    else if (strcmp(v, "timeout") == 0)
        *out = PP_OUTAGE_TIMEOUT;
    else {
        config_error(variable, "'%s' is not one of 503, 500, timeout", v);
        return MOAT_EINVAL;
    }
    return MOAT_OK;
}

static int parse_seed(const char *variable, uint64_t *out)
{
    const char *v = getenv(variable);
    if (!v || !*v) {
        /* Unseeded runs differ, but the seed is logged at start so any
         * one of them can be replayed. */
        moat_random_bytes(out, sizeof(*out));
        *out &= (uint64_t)INT64_MAX; /* JSON integers are signed */
        return MOAT_OK;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long s = strtoull(v, &end, 10);
    if (end == v || *end != '\0' || errno != 0 || v[0] == '-' ||
        s > (unsigned long long)INT64_MAX) {
        config_error(variable, "'%s' is not an integer from 0 to %lld", v,
                     (long long)INT64_MAX);
        return MOAT_EINVAL;
    }
    *out = (uint64_t)s;
    return MOAT_OK;
}

int pp_config_load(struct pp_config *cfg)
{
    int64_t latency, jitter, ttl_s;
    const char *keys = moat_env_str(ENV_API_KEYS, NULL);
    const char *control = moat_env_str(ENV_CONTROL_KEY, NULL);

    memset(cfg, 0, sizeof(*cfg));
    if (!keys) {
        config_error(ENV_API_KEYS, "not set: the provider needs at least "
                                   "one merchant-id:secret");
        return MOAT_EINVAL;
    }
    if (parse_api_keys(cfg, keys) != MOAT_OK)
        return MOAT_EINVAL;
    if (control) {
        if (!secret_valid(control, strlen(control))) {
            config_error(ENV_CONTROL_KEY,
                         "the key must be %d to %d visible ASCII characters",
                         PP_SECRET_MIN, PP_SECRET_MAX);
            return MOAT_EINVAL;
        }
        key_hash(control, cfg->control_hash);
        cfg->control_enabled = true;
    }
    if (moat_env_int(ENV_LATENCY, LATENCY_DEFAULT_MS, 0, PP_LATENCY_MAX_MS,
                     &latency) != MOAT_OK ||
        moat_env_int(ENV_JITTER, 0, 0, PP_LATENCY_MAX_MS, &jitter) != MOAT_OK ||
        moat_env_int(ENV_TTL, PP_IDEMPOTENCY_TTL_DEFAULT_S, 1,
                     PP_IDEMPOTENCY_TTL_MAX_S, &ttl_s) != MOAT_OK ||
        moat_env_bool(ENV_OUTAGE, false, &cfg->knobs.outage) != MOAT_OK ||
        parse_rate(ENV_DECLINE, 0.0, &cfg->knobs.decline_rate) != MOAT_OK ||
        parse_outage_mode(ENV_OUTAGE_MODE, &cfg->knobs.outage_mode) !=
            MOAT_OK ||
        parse_seed(ENV_SEED, &cfg->knobs.seed) != MOAT_OK)
        return MOAT_EINVAL;
    cfg->knobs.latency_ms = (unsigned)latency;
    cfg->knobs.latency_jitter_ms = (unsigned)jitter;
    cfg->idempotency_ttl_ms = ttl_s * 1000;
    return MOAT_OK;
}
