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

#include <jansson.h>
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

/*
 * Spans: every process keeps its last MOAT_SPAN_RING finished spans in a
 * bounded ring (the oldest is overwritten), so an operator can draw what a
 * request did across services without a collector. The HTTP server records
 * one SERVER span per request (lib/http.c, not the health, metrics, feed
 * or admin routes) and a consumer one CONSUMER span per event it applies
 * (lib/consumer.c), both under the trace of the request or the event. The
 * skeleton serves the ring at GET /v1/admin/spans (moat/service.h).
 * Thread-safe; names are truncated to MOAT_SPAN_NAME_MAX - 1 bytes.
 */
#define MOAT_SPAN_RING     2048
#define MOAT_SPAN_NAME_MAX 96

enum moat_span_kind {
    MOAT_SPAN_SERVER = 2,   /* OpenTelemetry's SPAN_KIND_SERVER */
    MOAT_SPAN_CONSUMER = 5, /* SPAN_KIND_CONSUMER */
};

/* Record t's span: start at wall time start_us (microseconds since the
 * epoch), lasting dur_us; status is the HTTP status (0 for none) and
 * error marks a failed span. */
void moat_span_record(const struct moat_trace *t, enum moat_span_kind kind,
                      const char *name, int64_t start_us, int64_t dur_us,
                      int status, bool error);

/*
 * The recorded spans of trace_id (NULL or "" = all, newest last, at most
 * limit) as one OpenTelemetry OTLP/JSON resourceSpans entry of service
 * (resource attribute service.name): {"resource": {...}, "scopeSpans":
 * [{"scope": {"name": "moat"}, "spans": [...]}]}. Caller owns the result.
 */
json_t *moat_spans_export(const char *service, const char *trace_id,
                          size_t limit);

#endif /* MOAT_TRACE_H */
