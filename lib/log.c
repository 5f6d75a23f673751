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

#include "moat/buf.h"
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

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *p)
{
    unsigned c = p[0];
    size_t n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0)
        n = 2, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        n = 3, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        n = 4, min = 0x10000;
    else
        return 0;
    unsigned cp = c & (0x7F >> n);
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static void add_json_string(struct moat_buf *b, const char *s)
{
    moat_buf_addch(b, '"');
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        if (*p == '"' || *p == '\\') {
            moat_buf_addch(b, '\\');
            moat_buf_addch(b, (char)*p++);
        } else if (*p < 0x20) {
            moat_buf_printf(b, "\\u%04x", *p++);
        } else {
            size_t n = utf8_seq(p);
            if (n == 0) {
                moat_buf_addstr(b, "\\ufffd");
                p++;
            } else {
                moat_buf_add(b, p, n);
                p += n;
            }
        }
    }
    moat_buf_addch(b, '"');
}

void moat_log_access(const struct moat_trace *t, const char *method,
                     const char *path, const char *route, int status,
                     double duration_ms, const char *peer)
{
    if (MOAT_LOG_INFO < g_min)
        return;
    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_grow(&b, 384);
    moat_buf_printf(&b, "{\"ts\":\"%s\",\"level\":\"info\",\"service\":", ts);
    add_json_string(&b, g_service);
    moat_buf_addstr(&b, ",\"msg\":\"http request\"");
    if (t) {
        /* Ids are validated hex or [A-Za-z0-9._-]: no escaping needed. */
        moat_buf_printf(&b,
                        ",\"request_id\":\"%s\",\"trace_id\":\"%s\","
                        "\"span_id\":\"%s\"",
                        t->request_id, t->trace_id, t->span_id);
    }
    moat_buf_addstr(&b, ",\"method\":");
    add_json_string(&b, method);
    moat_buf_addstr(&b, ",\"path\":");
    add_json_string(&b, path);
    moat_buf_addstr(&b, ",\"route\":");
    add_json_string(&b, route);
    moat_buf_printf(&b, ",\"status\":%d,\"duration_ms\":%.3f,\"peer\":", status,
                    duration_ms);
    add_json_string(&b, peer);
    moat_buf_addstr(&b, "}\n");
    ssize_t off = 0;
    while ((size_t)off < b.len) {
        ssize_t w = write(STDOUT_FILENO, b.data + off, b.len - (size_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += w;
    }
    moat_buf_release(&b);
}
