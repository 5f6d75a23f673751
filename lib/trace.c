/* trace.c - W3C traceparent parsing/formatting and request ids. */
#include "moat/common.h"

#include <stdio.h>
#include <string.h>

#include "moat/trace.h"

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

static bool all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return false;
    return true;
}

bool moat_traceparent_valid(const char *s)
{
    /* 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags> */
    if (!s || strlen(s) != MOAT_TRACEPARENT_LEN)
        return false;
    if (s[0] != '0' || s[1] != '0' || s[2] != '-' || s[35] != '-' ||
        s[52] != '-')
        return false;
    return is_lower_hex(s + 3, 32) && !all_zero(s + 3, 32) &&
           is_lower_hex(s + 36, 16) && !all_zero(s + 36, 16) &&
           is_lower_hex(s + 53, 2);
}

bool moat_request_id_valid(const char *s)
{
    if (!s)
        return false;
    size_t n = strlen(s);
    if (n == 0 || n > MOAT_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static void random_hex(char *out, size_t nbytes)
{
    unsigned char b[16];
    moat_random_bytes(b, nbytes);
    b[nbytes - 1] |= 1; /* W3C forbids all-zero ids */
    moat_hex(out, b, nbytes);
}

void moat_trace_start(struct moat_trace *t, const char *traceparent,
                      const char *request_id)
{
    memset(t, 0, sizeof(*t));
    if (moat_traceparent_valid(traceparent)) {
        memcpy(t->trace_id, traceparent + 3, 32);
        memcpy(t->parent_id, traceparent + 36, 16);
        unsigned flags = 0;
        sscanf(traceparent + 53, "%2x", &flags);
        t->flags = (uint8_t)flags;
    } else {
        random_hex(t->trace_id, 16);
        t->flags = 1;
    }
    random_hex(t->span_id, 8);
    if (moat_request_id_valid(request_id))
        snprintf(t->request_id, sizeof(t->request_id), "%s", request_id);
    else
        random_hex(t->request_id, 12);
}

void moat_trace_format(const struct moat_trace *t,
                       char out[MOAT_TRACEPARENT_LEN + 1])
{
    snprintf(out, MOAT_TRACEPARENT_LEN + 1, "00-%s-%s-%02x", t->trace_id,
             t->span_id, t->flags);
}
