/* user.c - the users service's account model (see user.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "moat/id.h"

#include "user.h"

void usr_user_release(struct usr_user *u)
{
    moat_free_secret(u->email);
    moat_free_secret(u->display_name);
    u->email = NULL;
    u->display_name = NULL;
}

void usr_user_copy(struct usr_user *dst, const struct usr_user *src)
{
    *dst = *src;
    dst->email = src->email ? moat_xstrdup(src->email) : NULL;
    dst->display_name =
        src->display_name ? moat_xstrdup(src->display_name) : NULL;
}

/* --- ids (the same scheme as catalog's product ids) --- */

/* Ids come from the runtime (moat/id.h); the prefix is this service's. */
void usr_id_new(char out[USR_ID_LEN + 1])
{
    moat_id_new(USR_ID_PREFIX, out, USR_ID_LEN + 1);
}

bool usr_id_valid(const char *s)
{
    return s && moat_id_valid(s, USR_ID_PREFIX);
}

bool usr_role_valid(const char *s)
{
    return s && (strcmp(s, USR_ROLE_CUSTOMER) == 0 ||
                 strcmp(s, USR_ROLE_MODERATOR) == 0 ||
                 strcmp(s, USR_ROLE_ADMIN) == 0);
}

/* --- field rules --- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

/* Trimmed copy of s (caller frees with moat_free_secret). */
static char *trim_dup(const char *s)
{
    while (is_space(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1]))
        n--;
    return moat_xstrndup(s, n);
}

bool usr_v_email(struct moat_validation *v, json_t *obj, const char *key,
                 bool required, char **out)
{
    char ptr[64];
    const char *raw = NULL;
    /* Generous code-point bound first; the byte limit applies after
     * trimming, below. */
    if (!moat_v_string(v, obj, "", key, required, 1, 4 * USR_EMAIL_MAX, &raw))
        return false;
    moat_json_pointer(ptr, sizeof(ptr), "", key);
    char *email = trim_dup(raw);
    size_t n = strlen(email);
    const char *at = strchr(email, '@');
    const char *why = NULL;
    if (n == 0)
        why = "must not be empty";
    else if (n > USR_EMAIL_MAX)
        why = "must be at most 254 bytes long";
    else if (!at || strchr(at + 1, '@'))
        why = "must contain exactly one \"@\"";
    else if (at == email || at[1] == '\0')
        why = "needs a local part before and a domain after the \"@\"";
    for (size_t i = 0; !why && i < n; i++) {
        unsigned char c = (unsigned char)email[i];
        if (is_space((char)c) || c < 0x20 || c == 0x7f)
            why = "must not contain spaces or control characters";
    }
    if (why) {
        moat_validation_add(v, ptr, "%s", why);
        moat_free_secret(email);
        return false;
    }
    *out = email;
    return true;
}

bool usr_v_password(struct moat_validation *v, json_t *obj, const char *key,
                    bool required, const char **out)
{
    return moat_v_string(v, obj, "", key, required, USR_PASSWORD_MIN,
                         USR_PASSWORD_MAX, out);
}

bool usr_v_display_name(struct moat_validation *v, json_t *obj, const char *key,
                        bool required, const char **out)
{
    const char *s = NULL;
    if (!moat_v_string(v, obj, "", key, required, 1, USR_NAME_MAX, &s))
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            char ptr[64];
            moat_json_pointer(ptr, sizeof(ptr), "", key);
            moat_validation_add(v, ptr, "must not contain control characters");
            return false;
        }
    }
    *out = s;
    return true;
}

char *usr_email_normalise(const char *email)
{
    char *n = trim_dup(email);
    for (char *p = n; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return n;
}

void usr_email_bidx(const struct moat_keyring *kr, const char *email,
                    char out[MOAT_BLIND_INDEX_HEX + 1])
{
    char *n = usr_email_normalise(email);
    moat_blind_index(kr, "email", n, out);
    moat_free_secret(n);
}

/* --- representation --- */

json_t *usr_user_json_v1(const struct usr_user *u)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "id", u->id,
                     "email", u->email ? u->email : "", "display_name",
                     u->display_name ? u->display_name : "", "role", u->role,
                     "version", (json_int_t)u->version, "created_at",
                     (json_int_t)(u->created_ms / 1000), "updated_at",
                     (json_int_t)(u->updated_ms / 1000));
}

void usr_etag(const struct usr_user *u, char out[USR_ETAG_MAX])
{
    snprintf(out, USR_ETAG_MAX, "\"v%lld\"", (long long)u->version);
}
