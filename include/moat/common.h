/*
 * moat/common.h - error codes, allocation, time and small helpers shared by
 * every part of libmoat.
 *
 * Conventions used throughout libmoat:
 *  - Functions that can fail return int: MOAT_OK (0) on success, a negative
 *    MOAT_E* code on failure; results come back through out-parameters.
 *    moat_strerror() turns a code into text.
 *  - Out-of-memory is not an error path: the moat_x* allocators abort the
 *    process with a message (as Redis, h2o and jq do). A service under memory
 *    pressure is restarted by the supervisor rather than limping on.
 *  - Ownership is stated on every function that returns or takes memory.
 *
 * Every .c file of the project includes this header first: it also pulls in
 * moat/banned.h, which turns unsafe libc calls into compile errors.
 */
#ifndef MOAT_COMMON_H
#define MOAT_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum moat_err {
    MOAT_OK = 0,
    MOAT_EINVAL = -1,       /* invalid argument or input */
    MOAT_ENOMEM = -2,       /* reserved: allocation failure (we abort) */
    MOAT_EIO = -3,          /* I/O or system call failure */
    MOAT_ENOTFOUND = -4,    /* no such object */
    MOAT_ECONFLICT = -5,    /* uniqueness or state conflict */
    MOAT_EBUSY = -6,        /* resource busy or locked */
    MOAT_ETIMEDOUT = -7,    /* deadline passed */
    MOAT_EUNSUPPORTED = -8, /* feature not available here */
    MOAT_EDB = -9,          /* database error */
    MOAT_EPRECOND = -10,    /* precondition (version, ETag) failed */
    MOAT_ETOOBIG = -11,     /* a size limit was exceeded */
    MOAT_ECANCELLED = -12,  /* operation cancelled (shutdown) */
};

/* Text for an error code; never NULL, static storage. */
const char *moat_strerror(int err);

#define MOAT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MOAT_UNUSED(x)    ((void)(x))

#if defined(__GNUC__)
#define MOAT_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define MOAT_NORETURN     __attribute__((noreturn))
#else
#define MOAT_PRINTF(f, a)
#define MOAT_NORETURN
#endif

/* Aborting allocators: never return NULL. Caller frees with free(). */
void *moat_xmalloc(size_t size);
void *moat_xcalloc(size_t nmemb, size_t size);
void *moat_xrealloc(void *ptr, size_t size);
char *moat_xstrdup(const char *s);
char *moat_xstrndup(const char *s, size_t n);
/* Formatted allocation; caller frees. */
char *moat_xasprintf(const char *fmt, ...) MOAT_PRINTF(1, 2);

/* Print "fatal: <message>" to stderr and abort. */
MOAT_NORETURN void moat_die(const char *fmt, ...) MOAT_PRINTF(1, 2);

/* Monotonic clock in nanoseconds and milliseconds. */
uint64_t moat_mono_ns(void);
uint64_t moat_mono_ms(void);
/* Wall clock: milliseconds since the Unix epoch. */
int64_t moat_wall_ms(void);
/*
 * Format a wall-clock time (ms since epoch) as RFC 3339 UTC with
 * milliseconds, e.g. "2026-11-21T19:03:30.123Z", into out (>= 25 bytes).
 */
void moat_time_rfc3339(int64_t wall_ms, char out[25]);
/*
 * Parse an RFC 3339 date-time ("2026-11-21T19:03:30.123Z",
 * "2026-11-21T20:03:30+01:00") into ms since the Unix epoch in *unix_ms.
 * Accepted: a 4-digit year (0000-9999, so times before 1970 come back
 * negative), a real calendar date (February 29 only in leap years), "T",
 * "t" or " " between date and time, seconds up to 60 (a leap second counts
 * as the next minute's first), any number of fraction digits (truncated to
 * ms), and "Z", "z" or a +hh:mm / -hh:mm offset. Returns MOAT_OK, or
 * MOAT_EINVAL for NULL or anything else (*unix_ms is then unchanged).
 * The inverse of moat_time_rfc3339 for the times it writes.
 */
int moat_time_parse_rfc3339(const char *s, int64_t *unix_ms);
/*
 * Format whole seconds since the Unix epoch as RFC 3339 UTC without a
 * fraction, e.g. "2026-12-04T23:17:44Z" (20 characters and a NUL), into out.
 * Returns MOAT_OK, or MOAT_EINVAL (out is then "") for a time outside the
 * years 0000 to 9999, which RFC 3339 cannot write.
 */
#define MOAT_RFC3339_S_MIN (-62167219200LL) /* 0000-01-01T00:00:00Z */
#define MOAT_RFC3339_S_MAX 253402300799LL   /* 9999-12-31T23:59:59Z */
int moat_time_format_rfc3339(int64_t unix_s, char out[21]);

/* Fill buf with cryptographically random bytes (getrandom); aborts on error. */
void moat_random_bytes(void *buf, size_t len);
/* Lowercase hex of len bytes into out (2 * len + 1 bytes, NUL-terminated). */
void moat_hex(char *out, const void *bytes, size_t len);
/*
 * Decode exactly 2 * len lowercase hex characters of hex into len bytes.
 * Returns MOAT_OK, or MOAT_EINVAL for another length or a non-hex
 * character (out is then unspecified).
 */
int moat_unhex(const char *hex, void *out, size_t len);

/*
 * Parse a whole decimal integer in [min, max]; no leading/trailing junk.
 * Returns MOAT_OK or MOAT_EINVAL.
 */
int moat_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);

#include "moat/banned.h"

#endif /* MOAT_COMMON_H */
