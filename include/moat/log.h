/*
 * moat/log.h - structured logs: one JSON object per line on stdout.
 *
 * Each line has "ts" (RFC 3339 UTC), "level", "service", "msg" and, when a
 * request context is set on the calling thread, "request_id", "trace_id"
 * and "span_id". Extra fields come from a jansson json_pack() object format:
 *
 *     moat_log(MOAT_LOG_INFO, "product created", "{s:s, s:I}",
 *              "id", id, "version", (json_int_t)v);
 *
 * fmt may be NULL for no extra fields. A format error is reported in the
 * line itself instead of being lost. Thread-safe (one write(2) per line).
 */
#ifndef MOAT_LOG_H
#define MOAT_LOG_H

#include "moat/trace.h"

enum moat_log_level {
    MOAT_LOG_DEBUG = 0,
    MOAT_LOG_INFO = 1,
    MOAT_LOG_WARN = 2,
    MOAT_LOG_ERROR = 3,
};

/* Set the service name (copied) and the minimum level; call once at start. */
void moat_log_init(const char *service, enum moat_log_level min_level);
/* Parse "debug", "info", "warn", "error". Returns MOAT_OK or MOAT_EINVAL. */
int moat_log_level_parse(const char *s, enum moat_log_level *out);
bool moat_log_enabled(enum moat_log_level level);

void moat_log(enum moat_log_level level, const char *msg, const char *fmt, ...);

/*
 * The access log line of one request, formatted directly (it is written
 * for every request, so it skips building a JSON object). Strings are
 * escaped for JSON; bytes that are not valid UTF-8 (a decoded path may
 * hold any) become U+FFFD.
 */
void moat_log_access(const struct moat_trace *t, const char *method,
                     const char *path, const char *route, int status,
                     double duration_ms, const char *peer);

/*
 * Set (or clear with NULL) the request context of the calling thread. The
 * pointer is borrowed: the caller keeps it valid until it clears it. The
 * HTTP server sets it around each handler call.
 */
void moat_log_set_trace(const struct moat_trace *t);
const struct moat_trace *moat_log_trace(void);

#endif /* MOAT_LOG_H */
