/* problem.c - RFC 9457 problem details and member validation. */
#include "moat/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/problem.h"

const char *moat_http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

/*
 * Problem types: "about:blank" means "nothing beyond the status code"
 * (RFC 9457 section 4.2.1); the statuses below carry a moat-specific
 * meaning a client can branch on.
 */
static const char *problem_type(int status)
{
    switch (status) {
    case 400:
        return "urn:moat:problem:malformed-request";
    case 409:
        return "urn:moat:problem:conflict";
    case 412:
        return "urn:moat:problem:stale-version";
    case 413:
        return "urn:moat:problem:body-too-large";
    case 415:
        return "urn:moat:problem:unsupported-media-type";
    case 422:
        return "urn:moat:problem:validation";
    case 428:
        return "urn:moat:problem:precondition-required";
    case 431:
        return "urn:moat:problem:headers-too-large";
    case 503:
        return "urn:moat:problem:unavailable";
    default:
        return "about:blank";
    }
}

json_t *moat_problem_new(int status, const char *detail)
{
    json_t *p = json_object();
    json_object_set_new(p, "type", json_string(problem_type(status)));
    json_object_set_new(p, "title", json_string(moat_http_reason(status)));
    json_object_set_new(p, "status", json_integer(status));
    if (detail)
        json_object_set_new(p, "detail", json_string(detail));
    return p;
}

void moat_problem_add_error(json_t *problem, const char *pointer,
                            const char *detail)
{
    json_t *errors = json_object_get(problem, "errors");
    if (!json_is_array(errors)) {
        errors = json_array();
        json_object_set_new(problem, "errors", errors);
    }
    json_array_append_new(
        errors, json_pack("{s:s, s:s}", "pointer", pointer, "detail", detail));
}

#define MAX_PARAM_ERRORS 20

void moat_problem_param_error(json_t **problem, const char *param,
                              const char *fmt, ...)
{
    if (!*problem)
        *problem = moat_problem_new(400, "the query string has invalid "
                                         "parameters");
    json_t *errors = json_object_get(*problem, "errors");
    if (!errors) {
        errors = json_array();
        json_object_set_new(*problem, "errors", errors);
    }
    if (json_array_size(errors) >= MAX_PARAM_ERRORS)
        return;
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_t *name = json_string(param);
    if (!name)
        name = json_string("(a parameter name that is not valid UTF-8)");
    json_array_append_new(
        errors, json_pack("{s:o, s:s}", "parameter", name, "detail", detail));
}

void moat_validation_init(struct moat_validation *v)
{
    v->errors = json_array();
}

void moat_validation_release(struct moat_validation *v)
{
    json_decref(v->errors);
    v->errors = NULL;
}

bool moat_validation_ok(const struct moat_validation *v)
{
    return json_array_size(v->errors) == 0;
}

/* Errors are capped so a pathological body cannot build a huge reply. */
#define MAX_VALIDATION_ERRORS 50

void moat_validation_add(struct moat_validation *v, const char *pointer,
                         const char *fmt, ...)
{
    if (json_array_size(v->errors) >= MAX_VALIDATION_ERRORS)
        return;
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_array_append_new(v->errors, json_pack("{s:s, s:s}", "pointer", pointer,
                                               "detail", detail));
}

json_t *moat_validation_problem(struct moat_validation *v, const char *detail)
{
    json_t *p = moat_problem_new(
        422, detail ? detail : "the request body has invalid fields");
    json_object_set_new(p, "errors", v->errors);
    v->errors = json_array();
    return p;
}

void moat_json_pointer(char *out, size_t len, const char *base, const char *key)
{
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_addstr(&b, base);
    moat_buf_addch(&b, '/');
    for (const char *p = key; *p; p++) {
        if (*p == '~')
            moat_buf_addstr(&b, "~0");
        else if (*p == '/')
            moat_buf_addstr(&b, "~1");
        else
            moat_buf_addch(&b, *p);
    }
    snprintf(out, len, "%s", moat_buf_str(&b));
    moat_buf_release(&b);
}

const char *moat_json_type_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "unknown";
}

/* The member, or NULL after recording "is required" when it is missing. */
static json_t *member(struct moat_validation *v, json_t *obj, const char *base,
                      const char *key, bool required, char *ptr, size_t plen)
{
    moat_json_pointer(ptr, plen, base, key);
    json_t *m = json_object_get(obj, key);
    if (!m && required)
        moat_validation_add(v, ptr, "is required");
    return m;
}

size_t moat_utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

bool moat_v_string(struct moat_validation *v, json_t *obj, const char *base,
                   const char *key, bool required, size_t min_len,
                   size_t max_len, const char **out)
{
    char ptr[256];
    json_t *m = member(v, obj, base, key, required, ptr, sizeof(ptr));
    if (!m)
        return false;
    if (!json_is_string(m)) {
        moat_validation_add(v, ptr, "must be a string, not %s",
                            moat_json_type_name(m));
        return false;
    }
    size_t n = moat_utf8_len(json_string_value(m));
    if (n < min_len || n > max_len) {
        if (min_len == max_len)
            moat_validation_add(v, ptr, "must be exactly %zu character%s long",
                                min_len, min_len == 1 ? "" : "s");
        else if (n < min_len)
            moat_validation_add(v, ptr, "must be at least %zu character%s long",
                                min_len, min_len == 1 ? "" : "s");
        else
            moat_validation_add(v, ptr, "must be at most %zu character%s long",
                                max_len, max_len == 1 ? "" : "s");
        return false;
    }
    if (out)
        *out = json_string_value(m);
    return true;
}

bool moat_v_int(struct moat_validation *v, json_t *obj, const char *base,
                const char *key, bool required, int64_t min, int64_t max,
                int64_t *out)
{
    char ptr[256];
    json_t *m = member(v, obj, base, key, required, ptr, sizeof(ptr));
    if (!m)
        return false;
    if (!json_is_integer(m)) {
        moat_validation_add(v, ptr, "must be an integer, not %s",
                            moat_json_type_name(m));
        return false;
    }
    json_int_t i = json_integer_value(m);
    if (i < min || i > max) {
        moat_validation_add(v, ptr, "must be between %lld and %lld",
                            (long long)min, (long long)max);
        return false;
    }
    if (out)
        *out = i;
    return true;
}

bool moat_v_bool(struct moat_validation *v, json_t *obj, const char *base,
                 const char *key, bool required, bool *out)
{
    char ptr[256];
    json_t *m = member(v, obj, base, key, required, ptr, sizeof(ptr));
    if (!m)
        return false;
    if (!json_is_boolean(m)) {
        moat_validation_add(v, ptr, "must be a boolean, not %s",
                            moat_json_type_name(m));
        return false;
    }
    if (out)
        *out = json_is_true(m);
    return true;
}

bool moat_v_object(struct moat_validation *v, json_t *obj, const char *base,
                   const char *key, bool required, json_t **out)
{
    char ptr[256];
    json_t *m = member(v, obj, base, key, required, ptr, sizeof(ptr));
    if (!m)
        return false;
    if (!json_is_object(m)) {
        moat_validation_add(v, ptr, "must be an object, not %s",
                            moat_json_type_name(m));
        return false;
    }
    if (out)
        *out = m;
    return true;
}

void moat_v_known_keys(struct moat_validation *v, json_t *obj, const char *base,
                       const char *const *allowed)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(*a, key) == 0;
        if (!known) {
            char ptr[256];
            moat_json_pointer(ptr, sizeof(ptr), base, key);
            moat_validation_add(v, ptr, "is not a known field");
        }
    }
}

json_t *moat_problem_typed(int status, const char *type, const char *detail)
{
    json_t *pr = moat_problem_new(status, detail);
    json_object_set_new(pr, "type", json_string(type));
    return pr;
}

const char *moat_text_problem(const char *s, size_t len)
{
    bool visible = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c == 0x7f)
            return "must not contain control characters other than tab "
                   "and line breaks";
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t')
            visible = true;
    }
    return visible ? NULL : "must not be only white space";
}
