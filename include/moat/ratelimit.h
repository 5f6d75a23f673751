/*
 * moat/ratelimit.h - token buckets keyed by a string (a client address, an
 * account's blind index), for the gateway's per-client limit and the
 * login limits. Memory is bounded: at most max_keys buckets; when full,
 * the least recently used one is forgotten (a forgotten bucket starts
 * full, which errs on the side of letting a request through).
 * Not thread-safe: use from the loop thread.
 */
#ifndef MOAT_RATELIMIT_H
#define MOAT_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moat_ratelimit;

/*
 * burst tokens (>= 1), refilled at per_second (> 0); at most max_keys (>= 1)
 * buckets. NULL when a parameter is out of range. Caller frees with _free.
 */
struct moat_ratelimit *moat_ratelimit_new(double burst, double per_second,
                                          size_t max_keys);
void moat_ratelimit_free(struct moat_ratelimit *rl);
/*
 * Take one token for key at now_ms (monotonic, e.g. moat_mono_ms()).
 * Returns true when allowed; otherwise false and *retry_after_ms (may be
 * NULL; >= 1) says in how many ms a token will be there. A key unseen (or
 * forgotten) starts with a full bucket. Keys longer than 128 bytes are
 * stored as a digest, so memory per key stays bounded.
 */
bool moat_ratelimit_take(struct moat_ratelimit *rl, const char *key,
                         uint64_t now_ms, uint64_t *retry_after_ms);
/* Forget key (e.g. after a successful login). */
void moat_ratelimit_reset(struct moat_ratelimit *rl, const char *key);
/* Buckets currently held (<= max_keys), e.g. for a gauge in /metrics. */
size_t moat_ratelimit_size(const struct moat_ratelimit *rl);

#endif /* MOAT_RATELIMIT_H */
