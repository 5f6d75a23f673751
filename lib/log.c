/* log.c - JSON-line logs on stdout (see moat/log.h). */
#include "moat/common.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "moat/log.h"

static char g_service[64] = "moat";
static enum moat_log_level g_min = MOAT_LOG_INFO;
static _Thread_local const struct moat_trace *tl_trace;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void moat_log_init(const char *service, enum moat_log_level min_level)
{
    snprintf(g_service, sizeof(g_service), "%s", service ? service : "moat");
    g_min = min_level;
}

int moat_log_level_parse(const char *s, enum moat_log_level *out)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(level_names); i++) {
        if (s && strcmp(s, level_names[i]) == 0) {
            *out = (enum moat_log_level)i;
            return MOAT_OK;
        }
    }
    return MOAT_EINVAL;
}

bool moat_log_enabled(enum moat_log_level level)
{
    return level >= g_min;
}

void moat_log_set_trace(const struct moat_trace *t)
{
    tl_trace = t;
}

const struct moat_trace *moat_log_trace(void)
{
    return tl_trace;
}

void moat_log(enum moat_log_level level, const char *msg, const char *fmt, ...)
{
    if (level < g_min)
        return;
    if ((unsigned)level >= MOAT_ARRAY_LEN(level_names))
        level = MOAT_LOG_ERROR;

    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    json_t *line = json_object();
    json_object_set_new(line, "ts", json_string(ts));
    json_object_set_new(line, "level", json_string(level_names[level]));
    json_object_set_new(line, "service", json_string(g_service));
    json_object_set_new(line, "msg", json_string(msg ? msg : ""));
    if (tl_trace) {
        json_object_set_new(line, "request_id",
                            json_string(tl_trace->request_id));
        json_object_set_new(line, "trace_id", json_string(tl_trace->trace_id));
        json_object_set_new(line, "span_id", json_string(tl_trace->span_id));
    }
    if (fmt) {
        va_list ap;
        json_error_t err;
        va_start(ap, fmt);
        json_t *extra = json_vpack_ex(&err, 0, fmt, ap);
        va_end(ap);
        if (extra && json_is_object(extra)) {
            json_object_update(line, extra);
        } else {
            /* A bad format is a bug, but the line must not be lost. */
            json_object_set_new(line, "log_format_error",
                                json_string(err.text));
        }
        json_decref(extra);
    }
    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(line);
    if (!text)
        return;
    struct iovec iov[2] = {{text, strlen(text)}, {(void *)"\n", 1}};
    /* One writev per line keeps lines whole across threads and processes. */
    while (writev(STDOUT_FILENO, iov, 2) < 0 && errno == EINTR)
        ;
    free(text);
}
