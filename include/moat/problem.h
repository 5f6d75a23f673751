/*
 * moat/problem.h - RFC 9457 problem details and request body validation.
 *
 * A problem is a jansson object {type, title, status, detail[, instance]
 * [, errors]}. "errors" lists field-level failures as
 * {"pointer": "/price/amount", "detail": "must be an integer"} with RFC 6901
 * JSON pointers, so a client learns every wrong field in one round trip.
 *
 * struct moat_validation collects those errors while a handler checks a
 * decoded body; the moat_v_* helpers each check one member and record a
 * precise message when it is missing, of the wrong type or out of range.
 */
#ifndef MOAT_PROBLEM_H
#define MOAT_PROBLEM_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* Standard reason phrase for an HTTP status ("Unknown" if not known). */
const char *moat_http_reason(int status);

/*
 * New problem object for status; detail may be NULL. The type is
 * "about:blank" with the reason phrase as title unless the status has a
 * moat problem type (e.g. 422 -> "urn:moat:problem:validation").
 * Caller owns the returned reference.
 */
json_t *moat_problem_new(int status, const char *detail);
/* moat_problem_new with type (a URI, e.g. "urn:moat:problem:..."; copied)
 * instead of the status's default type. Caller owns the reference. */
json_t *moat_problem_typed(int status, const char *type, const char *detail);

/*
 * NULL when s (len bytes, UTF-8 as jansson decoded it) is text a person
 * can read: no control character but tab and line breaks, and not only
 * white space; otherwise what is wrong with it (static, for a field
 * error). Length caps are the caller's: each API words its own.
 */
const char *moat_text_problem(const char *s, size_t len);
/* Append {"pointer": pointer, "detail": detail} to problem's "errors". */
void moat_problem_add_error(json_t *problem, const char *pointer,
                            const char *detail);

/*
 * Record that query parameter param is wrong: creates *problem (a 400
 * "the query string has invalid parameters") on first use and appends
 * {"parameter": param, "detail": ...} to its "errors" (at most 20; a name
 * that is not valid UTF-8 is replaced by a placeholder). The caller
 * replies with *problem when it is not NULL.
 */
void moat_problem_param_error(json_t **problem, const char *param,
                              const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

struct moat_validation {
    json_t *errors; /* array of {pointer, detail}; owned */
};

void moat_validation_init(struct moat_validation *v);
void moat_validation_release(struct moat_validation *v);
bool moat_validation_ok(const struct moat_validation *v);
void moat_validation_add(struct moat_validation *v, const char *pointer,
                         const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Moves the errors into a new 422 problem (caller owns it). */
json_t *moat_validation_problem(struct moat_validation *v, const char *detail);

/*
 * Member checks. base is the JSON pointer of obj ("" for the root). Each
 * returns true when the member is present and valid (and sets *out, a
 * borrowed pointer into obj for strings/objects), false otherwise; a
 * missing optional member returns false without recording an error.
 * String lengths count Unicode code points, not bytes.
 */
bool moat_v_string(struct moat_validation *v, json_t *obj, const char *base,
                   const char *key, bool required, size_t min_len,
                   size_t max_len, const char **out);
bool moat_v_int(struct moat_validation *v, json_t *obj, const char *base,
                const char *key, bool required, int64_t min, int64_t max,
                int64_t *out);
bool moat_v_bool(struct moat_validation *v, json_t *obj, const char *base,
                 const char *key, bool required, bool *out);
bool moat_v_object(struct moat_validation *v, json_t *obj, const char *base,
                   const char *key, bool required, json_t **out);
/* Record an error for every member of obj not in the NULL-terminated list. */
void moat_v_known_keys(struct moat_validation *v, json_t *obj, const char *base,
                       const char *const *allowed);

/*
 * The RFC 6901 pointer of member key under base ("~" -> "~0", "/" -> "~1"),
 * truncated to len bytes: moat_json_pointer(out, n, "/price", "a/b") gives
 * "/price/a~1b".
 */
void moat_json_pointer(char *out, size_t len, const char *base,
                       const char *key);
/* "an object", "a string", "an integer"...: for messages; static storage. */
const char *moat_json_type_name(const json_t *j);

/* Number of Unicode code points in valid UTF-8 s. */
size_t moat_utf8_len(const char *s);

#endif /* MOAT_PROBLEM_H */
