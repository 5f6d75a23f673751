/*
 * moat/trace.h - W3C Trace Context (traceparent) and request ids.
 *
 * Every request handled by a service has a struct moat_trace: the trace id
 * comes from the caller's traceparent header (or is generated), span_id is
 * this service's own span, parent_id the caller's span. Outgoing calls send
 * "00-<trace_id>-<span_id>-<flags>" so the callee sees our span as parent.
 * All fields are fixed-size strings inside the struct; nothing to free.
 */
#ifndef MOAT_TRACE_H
#define MOAT_TRACE_H

#include <stdbool.h>
#include <stdint.h>

#define MOAT_TRACEPARENT_LEN 55 /* "00-" 32 "-" 16 "-" 2 */
#define MOAT_REQUEST_ID_MAX  64

struct moat_trace {
    char trace_id[33];  /* 32 lowercase hex */
    char span_id[17];   /* our span: 16 lowercase hex */
    char parent_id[17]; /* caller's span, "" when we started the trace */
    uint8_t flags;      /* trace-flags (01 = sampled) */
    char request_id[MOAT_REQUEST_ID_MAX + 1];
};

/*
 * Start a span: continue the trace in traceparent if it is valid (version 00
 * format, non-zero ids), else start a new trace. Takes request_id if it is
 * valid (1..64 of [A-Za-z0-9._-]), else generates one. Either input may be
 * NULL. Always succeeds.
 */
void moat_trace_start(struct moat_trace *t, const char *traceparent,
                      const char *request_id);
/* Returns true when s is a valid version-00 traceparent. */
bool moat_traceparent_valid(const char *s);
/* Format our span as a traceparent into out. */
void moat_trace_format(const struct moat_trace *t,
                       char out[MOAT_TRACEPARENT_LEN + 1]);
bool moat_request_id_valid(const char *s);

#endif /* MOAT_TRACE_H */
