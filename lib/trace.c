/* trace.c - W3C traceparent parsing/formatting and request ids. */
#include "moat/common.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "moat/trace.h"

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

static bool all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return false;
    return true;
}

bool moat_traceparent_valid(const char *s)
{
    /* 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags> */
    if (!s || strlen(s) != MOAT_TRACEPARENT_LEN)
        return false;
    if (s[0] != '0' || s[1] != '0' || s[2] != '-' || s[35] != '-' ||
        s[52] != '-')
        return false;
    return is_lower_hex(s + 3, 32) && !all_zero(s + 3, 32) &&
           is_lower_hex(s + 36, 16) && !all_zero(s + 36, 16) &&
           is_lower_hex(s + 53, 2);
}

bool moat_request_id_valid(const char *s)
{
    if (!s)
        return false;
    size_t n = strlen(s);
    if (n == 0 || n > MOAT_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/*
 * Trace and request ids must be unique, not secret: a per-thread
 * xoshiro256** seeded from getrandom() replaces a getrandom() call per id,
 * which showed up in the gateway's profile. A fork bumps the generation so
 * a child never repeats its parent's sequence.
 */
static _Thread_local uint64_t rng[4];
static _Thread_local unsigned rng_gen;
static unsigned fork_gen = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    fork_gen++;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(void)
{
    if (rng_gen != fork_gen) {
        pthread_once(&atfork_once, register_atfork);
        do
            moat_random_bytes(rng, sizeof(rng));
        while (!(rng[0] | rng[1] | rng[2] | rng[3]));
        rng_gen = fork_gen;
    }
    uint64_t result = rotl(rng[1] * 5, 7) * 9;
    uint64_t t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return result;
}

static void random_hex(char *out, size_t nbytes)
{
    unsigned char b[16];
    for (size_t i = 0; i < nbytes; i += 8) {
        uint64_t v = next_u64();
        memcpy(b + i, &v, nbytes - i < 8 ? nbytes - i : 8);
    }
    b[nbytes - 1] |= 1; /* W3C forbids all-zero ids */
    moat_hex(out, b, nbytes);
}

void moat_trace_start(struct moat_trace *t, const char *traceparent,
                      const char *request_id)
{
    memset(t, 0, sizeof(*t));
    if (moat_traceparent_valid(traceparent)) {
        memcpy(t->trace_id, traceparent + 3, 32);
        memcpy(t->parent_id, traceparent + 36, 16);
        t->flags = (uint8_t)strtoul(
            (char[3]){traceparent[53], traceparent[54], '\0'}, NULL, 16);
    } else {
        random_hex(t->trace_id, 16);
        t->flags = 1;
    }
    random_hex(t->span_id, 8);
    if (moat_request_id_valid(request_id))
        snprintf(t->request_id, sizeof(t->request_id), "%s", request_id);
    else
        random_hex(t->request_id, 12);
}

void moat_trace_format(const struct moat_trace *t,
                       char out[MOAT_TRACEPARENT_LEN + 1])
{
    snprintf(out, MOAT_TRACEPARENT_LEN + 1, "00-%s-%s-%02x", t->trace_id,
             t->span_id, t->flags);
}
