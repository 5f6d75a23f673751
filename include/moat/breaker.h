/*
 * moat/breaker.h - a circuit breaker for calls to one backend: after
 * `threshold` consecutive failures the circuit opens and calls are refused
 * at once (no connection, no timeout to wait for); after `cooldown_ms` it is
 * half-open and lets exactly one call through, the probe; the probe's
 * success closes the circuit, its failure opens it for another cool-down.
 *
 *   closed --threshold failures--> open --cooldown--> half-open
 *   half-open --probe ok--> closed      half-open --probe failed--> open
 *
 * The clock is injected: every function that needs the time takes now_ms
 * (monotonic milliseconds, e.g. moat_mono_ms()), so tests drive it with a
 * fake clock. A caller asks moat_breaker_allow() before each call and, for
 * each call it let through, reports the outcome once with
 * moat_breaker_record(), passing back the probe flag allow() gave it.
 * Outcomes of calls that were not the probe are ignored while the circuit
 * is open or half-open (they started before it opened), so only the probe
 * decides; a probe whose outcome never comes is replaced by a new one after
 * another cool-down, so a lost callback cannot wedge the circuit.
 *
 * The struct is plain data owned by the caller (no allocation, nothing to
 * free). Not thread-safe: use one breaker from one thread (a loop).
 */
#ifndef MOAT_BREAKER_H
#define MOAT_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

enum moat_breaker_state {
    MOAT_BREAKER_CLOSED = 0,    /* calls pass; failures are counted */
    MOAT_BREAKER_OPEN = 1,      /* calls are refused until the cool-down */
    MOAT_BREAKER_HALF_OPEN = 2, /* one probe may pass */
};

#define MOAT_BREAKER_DEFAULT_THRESHOLD   5
#define MOAT_BREAKER_DEFAULT_COOLDOWN_MS 2000

struct moat_breaker {
    enum moat_breaker_state state;
    unsigned failures;     /* consecutive failures while closed */
    unsigned threshold;    /* failures that open the circuit, >= 1 */
    uint64_t cooldown_ms;  /* open this long before a probe, >= 1 */
    uint64_t opened_at_ms; /* now_ms of the last opening */
    bool probe_out;        /* half-open: the probe is under way */
    uint64_t probe_at_ms;  /* now_ms the probe was let through */
    uint64_t opened_total; /* times the circuit opened (for logs, tests) */
};

/* A closed breaker; threshold 0 and cooldown_ms 0 take the defaults. */
void moat_breaker_init(struct moat_breaker *b, unsigned threshold,
                       uint64_t cooldown_ms);

/*
 * May a call go out now? True when closed, or half-open with no probe
 * under way (this call becomes the probe: *probe is set to true; else it
 * is set to false). False when open, or half-open with the probe under
 * way; then *retry_in_ms (may be NULL) says when a probe may pass (>= 1).
 */
bool moat_breaker_allow(struct moat_breaker *b, uint64_t now_ms, bool *probe,
                        uint64_t *retry_in_ms);

/*
 * The outcome of a call allow() let through; probe as allow() set it.
 * Returns true when this changed the state (closed <-> open, half-open ->
 * closed or open), for logging.
 */
bool moat_breaker_record(struct moat_breaker *b, bool ok, bool probe,
                         uint64_t now_ms);

/*
 * The state as a gauge shows it: an open circuit whose cool-down has passed
 * reads MOAT_BREAKER_HALF_OPEN (the next call is the probe) although the
 * transition itself happens in the next allow().
 */
enum moat_breaker_state moat_breaker_state(const struct moat_breaker *b,
                                           uint64_t now_ms);

/* "closed", "open", "half_open". */
const char *moat_breaker_state_name(enum moat_breaker_state s);

#endif /* MOAT_BREAKER_H */
