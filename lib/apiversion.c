/*
 * apiversion.c - the representations of the public API's versions (see
 * "API versions" in moat/http.h and docs/api.md "Versions").
 *
 * Version 2 differs from version 1 in one thing: timestamps. v1 writes them
 * as integers (seconds since the Unix epoch), v2 as RFC 3339 UTC strings.
 * Handlers only ever build v1; the HTTP server turns a reply into v2 with
 * moat_api_v2_from_v1() and a v2 request body back into v1 with
 * moat_api_v1_from_v2() before the handler reads it. Which members are
 * timestamps is decided here, once, by name.
 */
#include "moat/common.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "moat/http.h"

/*
 * Timestamp members whose name does not end in "_at" (inventory's
 * adjustment log writes "at"). Keep docs/api-changelog.md in step.
 */
static const char *const time_members[] = {"at"};

/* Deeper values are left as they are (no document of ours nests so). */
#define MAX_DEPTH 128

bool moat_api_time_member(const char *name)
{
    size_t n = strlen(name);
    if (n > 3 && strcmp(name + n - 3, "_at") == 0)
        return true;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(time_members); i++)
        if (strcmp(name, time_members[i]) == 0)
            return true;
    return false;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* n decimal digits at s; -1 if any is not a digit. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int moat_api_parse_rfc3339(const char *s, int64_t *unix_s)
{
    /* YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM) */
    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' ||
        (s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':')
        return MOAT_EINVAL;
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
    int h = digits(s + 11, 2), mi = digits(s + 14, 2), sec = digits(s + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 ||
        mi > 59 || sec < 0 || sec > 59) /* no leap second 60 */
        return MOAT_EINVAL;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] + (mo == 2 && leap))
        return MOAT_EINVAL;
    const char *p = s + 19;
    if (*p == '.') { /* a fraction of a second: dropped (floor) */
        p++;
        if (*p < '0' || *p > '9')
            return MOAT_EINVAL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    int offset = 0;
    if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
        offset = 0;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int oh = digits(p + 1, 2), om = digits(p + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return MOAT_EINVAL;
        offset = (oh * 60 + om) * 60 * (*p == '-' ? -1 : 1);
    } else {
        return MOAT_EINVAL;
    }
    *unix_s =
        days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset;
    return MOAT_OK;
}

/* Rewrite the timestamp members of v and everything below it. */
static size_t walk(json_t *v, bool to_v2, int depth)
{
    size_t n = 0;
    if (depth > MAX_DEPTH)
        return 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) n += walk(e, to_v2, depth + 1);
        return n;
    }
    if (!json_is_object(v))
        return 0;
    for (void *it = json_object_iter(v); it;
         it = json_object_iter_next(v, it)) {
        json_t *m = json_object_iter_value(it);
        json_t *repl = NULL;
        if (moat_api_time_member(json_object_iter_key(it))) {
            char text[21];
            int64_t t;
            if (to_v2 && json_is_integer(m) &&
                moat_time_format_rfc3339(json_integer_value(m), text) ==
                    MOAT_OK)
                repl = json_string(text);
            else if (!to_v2 && json_is_string(m) &&
                     moat_api_parse_rfc3339(json_string_value(m), &t) ==
                         MOAT_OK)
                repl = json_integer((json_int_t)t);
        }
        if (repl) {
            json_object_iter_set_new(v, it, repl);
            n++;
        } else {
            n += walk(m, to_v2, depth + 1);
        }
    }
    return n;
}

size_t moat_api_v2_from_v1(json_t *v)
{
    return walk(v, true, 0);
}

size_t moat_api_v1_from_v2(json_t *v)
{
    return walk(v, false, 0);
}

void moat_api_deprecation_headers(char deprecation[24], char sunset[32])
{
    snprintf(deprecation, 24, "@%lld", (long long)MOAT_API_V1_DEPRECATED_S);
    time_t t = (time_t)MOAT_API_V1_SUNSET_S;
    struct tm tm;
    gmtime_r(&t, &tm);
    /* RFC 9110 IMF-fixdate; strftime's %a and %b are English in the "C"
     * locale the services run in. */
    strftime(sunset, 32, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}
