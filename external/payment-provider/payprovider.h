/*
 * payprovider.h - moat-payprovider, a card-processor stand-in.
 *
 * The payment provider is outside moat: a separate small process that the
 * payments service calls the way it would call a real card processor, so
 * that payments talks to something it does not own. It speaks a small
 * JSON API (authorize, capture, void, refund), keeps its own SQLite ledger
 * and behaves like the real thing where that matters to a client:
 * Idempotency-Key on every POST, latency, declines and outages, all
 * adjustable while it runs (POST /_control). docs/payment-provider.md is
 * the client's guide.
 *
 * Files: main.c (service definition), config.c (environment, API keys,
 * the seeded generator), api.c (the /v1 API, idempotency and held
 * requests), control.c (/_control), ledger.c (the only code that knows
 * the schema).
 *
 * Exported symbols take the prefix pp_.
 */
#ifndef PP_PAYPROVIDER_H
#define PP_PAYPROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "moat/http.h"
#include "moat/metrics.h"

struct event;
struct event_base;
struct pp_ledger;
struct pp_held;

#define PP_MERCHANT_ID_MAX 32  /* [a-z0-9_-]{1,32} */
#define PP_SECRET_MIN      16  /* API and control keys, bytes */
#define PP_SECRET_MAX      256 /* longer Authorization values are refused */
#define PP_MAX_MERCHANTS   64
#define PP_KEY_HASH_LEN    32 /* SHA-256 */

/* One operation moves at most this many minor units (999 999.99 EUR). */
#define PP_AMOUNT_MAX     99999999LL
#define PP_LATENCY_MAX_MS 60000u
/* How long the "timeout" outage holds a request before giving up on the
 * client; the drain at SIGTERM answers held requests sooner. */
#define PP_TIMEOUT_HOLD_MS 60000u
/* Requests held at once (latency or timeout outage); beyond, 503. Each
 * also holds a connection, so this is well under the connection cap. */
#define PP_MAX_HELD                  512
#define PP_IDEMPOTENCY_TTL_DEFAULT_S (24 * 3600)
#define PP_IDEMPOTENCY_TTL_MAX_S     (30LL * 24 * 3600)

/* What an outage looks like to a client. */
enum pp_outage_mode {
    PP_OUTAGE_503 = 0, /* 503 problem+json with Retry-After */
    PP_OUTAGE_500,     /* 500 problem+json */
    PP_OUTAGE_TIMEOUT, /* no answer until the client gives up (or 60 s) */
};

/* The behaviour knobs: environment at start, POST /_control later. */
struct pp_knobs {
    unsigned latency_ms;        /* every POST completes this much later */
    unsigned latency_jitter_ms; /* plus a uniform draw in [0, jitter] */
    double decline_rate;        /* 0..1: share of other cards declined */
    bool outage;                /* every /v1 request fails as below */
    enum pp_outage_mode outage_mode;
    uint64_t seed; /* 0..INT64_MAX: the generators' seed (replays a run) */
};

struct pp_merchant {
    char id[PP_MERCHANT_ID_MAX + 1];
    uint8_t key_hash[PP_KEY_HASH_LEN]; /* SHA-256 of the API key */
};

struct pp_config {
    struct pp_merchant merchants[PP_MAX_MERCHANTS];
    size_t nmerchants;
    bool control_enabled; /* MOAT_PAYPROVIDER_CONTROL_KEY is set */
    uint8_t control_hash[PP_KEY_HASH_LEN];
    int64_t idempotency_ttl_ms; /* keys are kept (and honoured) this long */
    struct pp_knobs knobs;      /* initial values */
};

/* splitmix64: tiny, fast and, above all, reproducible from its seed. */
struct pp_rng {
    uint64_t state;
};

void pp_rng_seed(struct pp_rng *r, uint64_t seed);
uint64_t pp_rng_next(struct pp_rng *r);
/* Uniform in [0, 1). */
double pp_rng_unit(struct pp_rng *r);

/*
 * Load the configuration from MOAT_PAYPROVIDER_* (see main.c). Returns
 * MOAT_OK or MOAT_EINVAL after logging which variable is wrong. Secrets
 * are kept only as hashes.
 */
int pp_config_load(struct pp_config *cfg);
/*
 * The merchant whose API key is secret, or NULL. Every configured key is
 * compared, in constant time, whatever matches: the time taken says
 * nothing about the keys.
 */
const struct pp_merchant *pp_config_merchant(const struct pp_config *cfg,
                                             const char *secret);
bool pp_config_control_ok(const struct pp_config *cfg, const char *secret);
/*
 * The credential of an "Authorization: Bearer <secret>" value (scheme
 * case-insensitive), pointing into value; NULL when value is NULL, uses
 * another scheme, or is empty or too long.
 */
const char *pp_bearer(const char *value);
/* "503", "500" or "timeout"; static storage. */
const char *pp_outage_mode_name(enum pp_outage_mode m);

/* The process state shared by api.c and control.c; owned by main.c. */
struct pp_service {
    struct event_base *base;       /* borrowed from the skeleton */
    struct moat_http_server *http; /* borrowed */
    struct moat_metrics *metrics;  /* borrowed */
    struct pp_config cfg;
    struct pp_knobs knobs;     /* current values */
    struct pp_rng decline_rng; /* one draw per authorization of a card
                                  that is not a test card */
    struct pp_rng jitter_rng;  /* apart, so latency never shifts declines */
    struct pp_ledger *ledger;  /* owned */
    struct pp_held *held;      /* requests waiting on a timer (api.c) */
    size_t nheld;
    struct event *purge_timer; /* expires idempotency records; owned */
    struct moat_metric_family *m_operations;  /* {operation,status} */
    struct moat_metric_family *m_idempotency; /* {result} */
    struct moat_metric_series *m_held;        /* gauge */
    struct moat_metric_series *m_outage;      /* gauge, 0 or 1 */
};

/* Register the /v1 routes and the drain hook (api.c). */
int pp_api_register(struct pp_service *pp);
/* Answer every held request now: 503 for outage holds, the real outcome
 * for latency holds (api.c). Used by the drain and by release. */
void pp_api_flush(struct pp_service *pp);
/* Answer the requests parked by a "timeout" outage with 503 (api.c). */
void pp_api_end_outage_holds(struct pp_service *pp);
/* Register /_control (control.c). */
int pp_control_register(struct pp_service *pp);
/*
 * Make k the current knobs; reseed restarts both generators from k->seed
 * (also when the seed is unchanged: that replays the sequence).
 */
void pp_knobs_apply(struct pp_service *pp, const struct pp_knobs *k,
                    bool reseed);
/* The knobs as the control endpoint shows them (new reference). */
json_t *pp_knobs_json(const struct pp_knobs *k);

#endif /* PP_PAYPROVIDER_H */
