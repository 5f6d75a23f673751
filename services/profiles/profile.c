/* profile.c - the profile's field rules and JSON (see profile.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "moat/crypto.h"
#include "moat/problem.h"
#include "profile.h"

const char *const pro_field_names[PRO_NFIELDS] = {
    [PRO_F_DISPLAY_NAME] = "display_name",
    [PRO_F_HANDLE] = "handle",
    [PRO_F_BIO] = "bio",
    [PRO_F_LOCATION] = "location",
    [PRO_F_AVATAR_URL] = "avatar_url",
};

bool pro_field_is_pii(enum pro_field f)
{
    return f == PRO_F_DISPLAY_NAME || f == PRO_F_BIO || f == PRO_F_LOCATION;
}

void pro_profile_release(struct pro_profile *p)
{
    if (!p)
        return;
    for (int f = 0; f < PRO_NFIELDS; f++) {
        if (pro_field_is_pii((enum pro_field)f))
            moat_free_secret(p->fields[f]);
        else
            free(p->fields[f]);
        p->fields[f] = NULL;
    }
}

bool pro_user_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > PRO_USER_ID_MAX)
        return false;
    return strspn(id, "abcdefghijklmnopqrstuvwxyz"
                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

bool pro_handle_normalise(const char *in, char out[PRO_HANDLE_MAX + 1])
{
    size_t n = strlen(in);
    if (n < PRO_HANDLE_MIN || n > PRO_HANDLE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
        out[i] = c;
    }
    out[n] = '\0';
    return true;
}

/* ---- validation ---- */

/* Control characters (C0 and DEL), except those in allowed. */
static bool has_control(const char *s, const char *allowed)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 || *p == 0x7f) && !strchr(allowed, *p))
            return true;
    return false;
}

/* Text of 1..max code points without control characters but allowed;
 * records the error at ptr otherwise. */
static bool check_text(struct moat_validation *v, const char *ptr,
                       const char *s, size_t max, const char *allowed)
{
    size_t n = moat_utf8_len(s);
    if (n == 0)
        moat_validation_add(v, ptr, "must not be empty (null clears it)");
    else if (n > max)
        moat_validation_add(v, ptr, "must be at most %zu characters long", max);
    else if (has_control(s, allowed))
        moat_validation_add(v, ptr, "must not contain control characters%s",
                            allowed[0] ? " other than newlines and tabs" : "");
    else
        return true;
    return false;
}

static bool check_url(struct moat_validation *v, const char *ptr, const char *s)
{
    size_t n = strlen(s);
    size_t scheme = strncasecmp(s, "https://", 8) == 0  ? 8
                    : strncasecmp(s, "http://", 7) == 0 ? 7
                                                        : 0;
    const char *why = NULL;
    if (!scheme)
        why = "must be an http:// or https:// URL";
    else if (n > PRO_AVATAR_URL_MAX)
        why = "must be at most 2048 bytes long";
    else if (n == scheme || strchr("/?#", s[scheme]))
        why = "must name a host after the scheme";
    for (size_t i = 0; !why && i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            why = "must be visible ASCII (percent-encode anything else)";
    if (why)
        moat_validation_add(v, ptr, "%s", why);
    return !why;
}

/* Check value of field f, recording an error at ptr; a valid handle is
 * normalised into handle. */
static bool check_field(struct moat_validation *v, const char *ptr,
                        enum pro_field f, const char *value,
                        char handle[PRO_HANDLE_MAX + 1])
{
    switch (f) {
    case PRO_F_DISPLAY_NAME:
        return check_text(v, ptr, value, PRO_NAME_MAX, "");
    case PRO_F_LOCATION:
        return check_text(v, ptr, value, PRO_LOCATION_MAX, "");
    case PRO_F_BIO:
        return check_text(v, ptr, value, PRO_BIO_MAX, "\n\t");
    case PRO_F_AVATAR_URL:
        return check_url(v, ptr, value);
    case PRO_F_HANDLE:
    case PRO_NFIELDS:
        break;
    }
    if (pro_handle_normalise(value, handle))
        return true;
    moat_validation_add(v, ptr, "must be %d to %d characters of a-z, 0-9 and _",
                        PRO_HANDLE_MIN, PRO_HANDLE_MAX);
    return false;
}

json_t *pro_profile_parse(json_t *body, struct pro_profile *out)
{
    static const char *const allowed[PRO_NFIELDS + 1] = {
        "display_name", "handle", "bio", "location", "avatar_url", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", allowed);
    for (int f = 0; f < PRO_NFIELDS; f++) {
        const char *name = pro_field_names[f];
        json_t *m = json_object_get(body, name);
        if (!m || json_is_null(m))
            continue;
        char ptr[32];
        snprintf(ptr, sizeof(ptr), "/%s", name);
        if (!json_is_string(m)) {
            moat_validation_add(&v, ptr, "must be a string or null, not %s",
                                moat_json_type_name(m));
            continue;
        }
        char handle[PRO_HANDLE_MAX + 1];
        if (!check_field(&v, ptr, (enum pro_field)f, json_string_value(m),
                         handle))
            continue;
        out->fields[f] =
            moat_xstrdup(f == PRO_F_HANDLE ? handle : json_string_value(m));
    }
    json_t *problem = NULL;
    if (!moat_validation_ok(&v)) {
        pro_profile_release(out);
        problem = moat_validation_problem(&v, "the profile has invalid fields");
    }
    moat_validation_release(&v);
    return problem;
}

/* ---- JSON ---- */

json_t *pro_profile_json(const struct pro_profile *p)
{
    json_t *j =
        json_pack("{s:s, s:s}", "object", "profile", "user_id", p->user_id);
    for (int f = 0; f < PRO_NFIELDS; f++)
        json_object_set_new(j, pro_field_names[f],
                            p->fields[f] ? json_string(p->fields[f])
                                         : json_null());
    json_object_set_new(j, "version", json_integer(p->version));
    json_object_set_new(j, "created_at", json_integer(p->created_ms / 1000));
    json_object_set_new(j, "updated_at", json_integer(p->updated_ms / 1000));
    return j;
}

void pro_etag(const struct pro_profile *p, char out[PRO_ETAG_MAX])
{
    snprintf(out, PRO_ETAG_MAX, "\"v%lld\"", (long long)p->version);
}
