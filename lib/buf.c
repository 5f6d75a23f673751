/* buf.c - growable NUL-terminated byte buffer (see moat/buf.h). */
#include "moat/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"

void moat_buf_grow(struct moat_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need < b->len)
        moat_die("buffer size overflow");
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap * 2 > cap ? cap * 2 : need;
    b->data = moat_xrealloc(b->data, cap);
    b->cap = cap;
}

void moat_buf_add(struct moat_buf *b, const void *data, size_t len)
{
    moat_buf_grow(b, len);
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void moat_buf_addstr(struct moat_buf *b, const char *s)
{
    moat_buf_add(b, s, strlen(s));
}

void moat_buf_addch(struct moat_buf *b, char c)
{
    moat_buf_add(b, &c, 1);
}

void moat_buf_vprintf(struct moat_buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    moat_buf_grow(b, 64);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, cp);
    va_end(cp);
    if (n < 0)
        moat_die("vsnprintf failed");
    if ((size_t)n >= b->cap - b->len) {
        moat_buf_grow(b, (size_t)n);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    }
    b->len += (size_t)n;
}

void moat_buf_printf(struct moat_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    moat_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void moat_buf_reset(struct moat_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void moat_buf_release(struct moat_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *moat_buf_detach(struct moat_buf *b, size_t *len)
{
    if (!b->data)
        moat_buf_grow(b, 0), b->data[0] = '\0';
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

const char *moat_buf_str(const struct moat_buf *b)
{
    return b->data ? b->data : "";
}
