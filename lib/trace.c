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

/* ---- the span ring ---- */

struct span {
    char trace_id[33];
    char span_id[17];
    char parent_id[17];
    char name[MOAT_SPAN_NAME_MAX];
    enum moat_span_kind kind;
    int64_t start_us, dur_us;
    int status;
    bool error;
};

static struct span ring[MOAT_SPAN_RING];
static size_t ring_next, ring_len;
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;

void moat_span_record(const struct moat_trace *t, enum moat_span_kind kind,
                      const char *name, int64_t start_us, int64_t dur_us,
                      int status, bool error)
{
    pthread_mutex_lock(&ring_lock);
    struct span *s = &ring[ring_next];
    memcpy(s->trace_id, t->trace_id, sizeof(s->trace_id));
    memcpy(s->span_id, t->span_id, sizeof(s->span_id));
    memcpy(s->parent_id, t->parent_id, sizeof(s->parent_id));
    snprintf(s->name, sizeof(s->name), "%s", name ? name : "");
    s->kind = kind;
    s->start_us = start_us;
    s->dur_us = dur_us < 0 ? 0 : dur_us;
    s->status = status;
    s->error = error;
    ring_next = (ring_next + 1) % MOAT_SPAN_RING;
    if (ring_len < MOAT_SPAN_RING)
        ring_len++;
    pthread_mutex_unlock(&ring_lock);
}

/* OTLP/JSON carries 64-bit times as decimal strings. */
static json_t *nanos(int64_t us)
{
    char b[32];
    snprintf(b, sizeof(b), "%lld000", (long long)us);
    return json_string(b);
}

static json_t *span_json(const struct span *s)
{
    json_t *attrs = json_array();
    if (s->status)
        json_array_append_new(attrs,
                              json_pack("{s:s, s:{s:I}}", "key",
                                        "http.response.status_code", "value",
                                        "intValue", (json_int_t)s->status));
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:o, s:o, s:o, s:{s:i}}",
                     "traceId", s->trace_id, "spanId", s->span_id,
                     "parentSpanId", s->parent_id, "name", s->name, "kind",
                     (int)s->kind, "startTimeUnixNano", nanos(s->start_us),
                     "endTimeUnixNano", nanos(s->start_us + s->dur_us),
                     "attributes", attrs, "status", "code", s->error ? 2 : 1);
}

json_t *moat_spans_export(const char *service, const char *trace_id,
                          size_t limit)
{
    bool all = !trace_id || !trace_id[0];
    json_t *spans = json_array();
    pthread_mutex_lock(&ring_lock);
    size_t first = (ring_next + MOAT_SPAN_RING - ring_len) % MOAT_SPAN_RING;
    size_t n = 0;
    /* Newest first while collecting, so the limit keeps the newest. */
    for (size_t i = ring_len; i-- > 0 && n < limit;) {
        const struct span *s = &ring[(first + i) % MOAT_SPAN_RING];
        if (all || strcmp(s->trace_id, trace_id) == 0) {
            json_array_insert_new(spans, 0, span_json(s));
            n++;
        }
    }
    pthread_mutex_unlock(&ring_lock);
    return json_pack("{s:{s:[{s:s, s:{s:s}}]}, s:[{s:{s:s}, s:o}]}", "resource",
                     "attributes", "key", "service.name", "value",
                     "stringValue", service, "scopeSpans", "scope", "name",
                     "moat", "spans", spans);
}
