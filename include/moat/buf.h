/*
 * moat/buf.h - a growable byte buffer, always NUL-terminated (after git's
 * strbuf). The buffer owns data; moat_buf_release() frees it and resets the
 * buffer to empty, moat_buf_detach() hands the memory to the caller.
 * Growth aborts on out-of-memory (see common.h); callers that receive data
 * from a peer check their own size caps before appending.
 */
#ifndef MOAT_BUF_H
#define MOAT_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct moat_buf {
    char *data; /* NUL-terminated; owned by the buffer; NULL when empty */
    size_t len; /* bytes used, excluding the NUL */
    size_t cap; /* bytes allocated */
};

#define MOAT_BUF_INIT                                                          \
    {                                                                          \
        NULL, 0, 0                                                             \
    }

void moat_buf_grow(struct moat_buf *b, size_t extra);
void moat_buf_add(struct moat_buf *b, const void *data, size_t len);
void moat_buf_addstr(struct moat_buf *b, const char *s);
void moat_buf_addch(struct moat_buf *b, char c);
void moat_buf_printf(struct moat_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void moat_buf_vprintf(struct moat_buf *b, const char *fmt, va_list ap);
void moat_buf_reset(struct moat_buf *b); /* len = 0, keeps memory */
void moat_buf_release(struct moat_buf *b);
/* Returns the data (caller frees; never NULL) and empties the buffer. */
char *moat_buf_detach(struct moat_buf *b, size_t *len);
/* Current contents as a C string ("" when empty); owned by the buffer. */
const char *moat_buf_str(const struct moat_buf *b);

#endif /* MOAT_BUF_H */
