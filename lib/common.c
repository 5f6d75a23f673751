/* common.c - error text, aborting allocators, clocks, randomness. */
#include "moat/common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

const char *moat_strerror(int err)
{
    switch (err) {
    case MOAT_OK:
        return "success";
    case MOAT_EINVAL:
        return "invalid argument";
    case MOAT_ENOMEM:
        return "out of memory";
    case MOAT_EIO:
        return "input/output error";
    case MOAT_ENOTFOUND:
        return "not found";
    case MOAT_ECONFLICT:
        return "conflict";
    case MOAT_EBUSY:
        return "busy";
    case MOAT_ETIMEDOUT:
        return "timed out";
    case MOAT_EUNSUPPORTED:
        return "not supported";
    case MOAT_EDB:
        return "database error";
    case MOAT_EPRECOND:
        return "precondition failed";
    case MOAT_ETOOBIG:
        return "too big";
    case MOAT_ECANCELLED:
        return "cancelled";
    default:
        return "unknown error";
    }
}

void moat_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fatal: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

void *moat_xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        moat_die("out of memory allocating %zu bytes", size);
    return p;
}

void *moat_xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (!p)
        moat_die("out of memory allocating %zu x %zu bytes", nmemb, size);
    return p;
}

void *moat_xrealloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (!p)
        moat_die("out of memory reallocating %zu bytes", size);
    return p;
}

char *moat_xstrdup(const char *s)
{
    return moat_xstrndup(s, strlen(s));
}

char *moat_xstrndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = moat_xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *moat_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        moat_die("out of memory formatting a string");
    return out;
}

uint64_t moat_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t moat_mono_ms(void)
{
    return moat_mono_ns() / 1000000u;
}

int64_t moat_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void moat_time_rfc3339(int64_t wall_ms, char out[25])
{
    /* Every access log line and event stamps the time: the seconds part
     * is formatted once per second (per thread), not per call. */
    static _Thread_local time_t last_secs = -1;
    static _Thread_local char last[25];
    static _Thread_local size_t last_len;
    int64_t floor_ms = wall_ms - (((wall_ms % 1000) + 1000) % 1000);
    time_t secs = (time_t)(floor_ms / 1000);
    if (secs != last_secs) {
        struct tm tm;
        gmtime_r(&secs, &tm);
        last_len = strftime(last, sizeof(last), "%Y-%m-%dT%H:%M:%S", &tm);
        if (last_len > 19) /* years past 9999: out has room for 19 */
            last_len = 19;
        last_secs = secs;
    }
    unsigned ms = (unsigned)(wall_ms - floor_ms);
    memcpy(out, last, last_len);
    char *p = out + last_len;
    *p++ = '.';
    *p++ = (char)('0' + ms / 100);
    *p++ = (char)('0' + ms / 10 % 10);
    *p++ = (char)('0' + ms % 10);
    *p++ = 'Z';
    *p = '\0';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The n-digit decimal number at s (all digits checked by the caller). */
static int64_t digits_value(const char *s, int n)
{
    int64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

static bool leap_year(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int moat_time_parse_rfc3339(const char *s, int64_t *unix_ms)
{
    /* 'd' a digit, 'T' the date/time separator, others themselves. */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    static const int month_days[] = {31, 28, 31, 30, 31, 30,
                                     31, 31, 30, 31, 30, 31};
    if (!s)
        return MOAT_EINVAL;
    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        bool ok = shape[i] == 'd' ? is_digit(s[i])
                  : shape[i] == 'T'
                      ? (s[i] == 'T' || s[i] == 't' || s[i] == ' ')
                      : s[i] == shape[i];
        if (!ok) /* also stops at the NUL of a short string */
            return MOAT_EINVAL;
    }
    int64_t year = digits_value(s, 4), mon = digits_value(s + 5, 2);
    int64_t day = digits_value(s + 8, 2), hh = digits_value(s + 11, 2);
    int64_t mm = digits_value(s + 14, 2), ss = digits_value(s + 17, 2);
    const char *p = s + 19;
    int64_t ms = 0;
    if (*p == '.') {
        int n = 0;
        for (p++; is_digit(*p); p++, n++)
            if (n < 3)
                ms = ms * 10 + (*p - '0');
        if (n == 0)
            return MOAT_EINVAL;
        for (; n < 3; n++)
            ms *= 10;
    }
    int64_t offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && is_digit(p[1]) && is_digit(p[2]) &&
               p[3] == ':' && is_digit(p[4]) && is_digit(p[5])) {
        int64_t oh = digits_value(p + 1, 2), om = digits_value(p + 4, 2);
        if (oh > 23 || om > 59)
            return MOAT_EINVAL;
        offset_min = (*p == '-' ? -1 : 1) * (oh * 60 + om);
        p += 6;
    } else {
        return MOAT_EINVAL;
    }
    if (*p || mon < 1 || mon > 12 || day < 1 || hh > 23 || mm > 59 || ss > 60)
        return MOAT_EINVAL;
    int64_t mdays = month_days[mon - 1] + (mon == 2 && leap_year(year));
    if (day > mdays)
        return MOAT_EINVAL;
    int64_t secs = days_from_civil(year, mon, day) * 86400 + hh * 3600 +
                   mm * 60 + ss - offset_min * 60;
    *unix_ms = secs * 1000 + ms;
    return MOAT_OK;
}

int moat_time_format_rfc3339(int64_t unix_s, char out[21])
{
    out[0] = '\0';
    if (unix_s < MOAT_RFC3339_S_MIN || unix_s > MOAT_RFC3339_S_MAX)
        return MOAT_EINVAL;
    /* Civil date from days since the epoch (H. Hinnant's algorithm):
     * exact for the whole proleptic Gregorian range, with no time_t or
     * gmtime_r limits to worry about. */
    int64_t days = unix_s / 86400, secs = unix_s % 86400;
    if (secs < 0) {
        secs += 86400;
        days--;
    }
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t day = doy - (153 * mp + 2) / 5 + 1;
    int64_t month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (month <= 2);
    /* The fields are in range; the wider buffer only spares the compiler
     * proving it. */
    char text[64];
    snprintf(text, sizeof(text), "%04d-%02d-%02dT%02d:%02d:%02dZ", (int)year,
             (int)month, (int)day, (int)(secs / 3600), (int)(secs / 60 % 60),
             (int)(secs % 60));
    memcpy(out, text, 21);
    return MOAT_OK;
}

void moat_random_bytes(void *buf, size_t len)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            moat_die("getrandom failed: %s", strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
}

void moat_hex(char *out, const void *bytes, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *b = bytes;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int moat_unhex(const char *hex, void *out, size_t len)
{
    unsigned char *o = out;
    if (!hex || strlen(hex) != 2 * len)
        return MOAT_EINVAL;
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return MOAT_EINVAL;
        o[i] = (unsigned char)(hi << 4 | lo);
    }
    return MOAT_OK;
}

int moat_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s)
        return MOAT_EINVAL;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return MOAT_EINVAL;
    /* strtoll accepts leading whitespace and '+'; a config value should not. */
    if (s[0] == ' ' || s[0] == '\t' || s[0] == '+')
        return MOAT_EINVAL;
    *out = v;
    return MOAT_OK;
}
