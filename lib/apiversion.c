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

/* RFC 3339 (moat_time_parse_rfc3339) to whole seconds, rounded down. */
static int parse_seconds(const char *s, int64_t *unix_s)
{
    int64_t ms;
    if (moat_time_parse_rfc3339(s, &ms) != MOAT_OK)
        return MOAT_EINVAL;
    *unix_s = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
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
                     parse_seconds(json_string_value(m), &t) == MOAT_OK)
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
