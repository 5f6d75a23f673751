/*
 * breaker.c - the circuit breaker of moat/breaker.h: a small state machine
 * on an injected monotonic clock, no I/O and no allocation.
 */
#include "moat/common.h"

#include <string.h>

#include "moat/breaker.h"

void moat_breaker_init(struct moat_breaker *b, unsigned threshold,
                       uint64_t cooldown_ms)
{
    memset(b, 0, sizeof(*b));
    b->state = MOAT_BREAKER_CLOSED;
    b->threshold = threshold ? threshold : MOAT_BREAKER_DEFAULT_THRESHOLD;
    b->cooldown_ms =
        cooldown_ms ? cooldown_ms : MOAT_BREAKER_DEFAULT_COOLDOWN_MS;
}

static uint64_t until(uint64_t from, uint64_t span, uint64_t now)
{
    /* now before from would be a clock going back: treat as just started. */
    uint64_t elapsed = now > from ? now - from : 0;
    return elapsed >= span ? 0 : span - elapsed;
}

bool moat_breaker_allow(struct moat_breaker *b, uint64_t now_ms, bool *probe,
                        uint64_t *retry_in_ms)
{
    uint64_t wait = 0;

    *probe = false;
    switch (b->state) {
    case MOAT_BREAKER_CLOSED:
        return true;
    case MOAT_BREAKER_OPEN:
        wait = until(b->opened_at_ms, b->cooldown_ms, now_ms);
        if (wait == 0) {
            b->state = MOAT_BREAKER_HALF_OPEN;
            b->probe_out = false;
        }
        break;
    case MOAT_BREAKER_HALF_OPEN:
        break;
    }
    if (b->state == MOAT_BREAKER_HALF_OPEN) {
        /* A probe out for longer than a cool-down has lost its outcome. */
        if (b->probe_out)
            wait = until(b->probe_at_ms, b->cooldown_ms, now_ms);
        if (!b->probe_out || wait == 0) {
            b->probe_out = true;
            b->probe_at_ms = now_ms;
            *probe = true;
            return true;
        }
    }
    if (retry_in_ms)
        *retry_in_ms = wait ? wait : 1;
    return false;
}

static void open_circuit(struct moat_breaker *b, uint64_t now_ms)
{
    b->state = MOAT_BREAKER_OPEN;
    b->opened_at_ms = now_ms;
    b->probe_out = false;
    b->failures = 0;
    b->opened_total++;
}

bool moat_breaker_record(struct moat_breaker *b, bool ok, bool probe,
                         uint64_t now_ms)
{
    switch (b->state) {
    case MOAT_BREAKER_CLOSED:
        if (ok) {
            b->failures = 0;
            return false;
        }
        if (++b->failures < b->threshold)
            return false;
        open_circuit(b, now_ms);
        return true;
    case MOAT_BREAKER_HALF_OPEN:
        if (!probe)
            return false; /* a call from before the circuit opened */
        if (!ok) {
            open_circuit(b, now_ms);
            return true;
        }
        b->state = MOAT_BREAKER_CLOSED;
        b->failures = 0;
        b->probe_out = false;
        return true;
    case MOAT_BREAKER_OPEN:
        /* Late outcomes of calls made before it opened (or of a probe
         * replaced after a lost outcome) do not shorten the cool-down. */
        return false;
    }
    return false;
}

enum moat_breaker_state moat_breaker_state(const struct moat_breaker *b,
                                           uint64_t now_ms)
{
    if (b->state == MOAT_BREAKER_OPEN &&
        until(b->opened_at_ms, b->cooldown_ms, now_ms) == 0)
        return MOAT_BREAKER_HALF_OPEN;
    return b->state;
}

const char *moat_breaker_state_name(enum moat_breaker_state s)
{
    switch (s) {
    case MOAT_BREAKER_CLOSED:
        return "closed";
    case MOAT_BREAKER_OPEN:
        return "open";
    case MOAT_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}
