/* config.c - typed, validated environment variables. */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "moat/config.h"
#include "moat/log.h"

const char *moat_env_str(const char *name, const char *def)
{
    const char *v = getenv(name);
    return (v && *v) ? v : def;
}

bool moat_url_valid(const char *url)
{
    return url && (strncmp(url, "http://", 7) == 0 ||
                   strncmp(url, "https://", 8) == 0);
}

char **moat_instance_urls(const char *url)
{
    const char *map = getenv("MOAT_INSTANCE_URLS");
    for (const char *g = map; url && g && *g;) {
        size_t glen = strcspn(g, ",");
        size_t first = strcspn(g, "|,");
        if (first < glen && strncmp(url, g, first) == 0 &&
            (url[first] == '\0' || url[first] == '/')) {
            size_t n = 1;
            for (size_t i = 0; i < glen; i++)
                n += g[i] == '|';
            char **out = moat_xcalloc(n + 1, sizeof(*out));
            const char *o = g;
            for (size_t k = 0; k < n; k++) {
                size_t olen = strcspn(o, "|,");
                out[k] = moat_xasprintf("%.*s%s", (int)olen, o, url + first);
                o += olen + 1;
            }
            return out;
        }
        g += glen + (g[glen] == ',');
    }
    return NULL;
}

int moat_env_url(const char *name, const char *def, const char **out)
{
    const char *v = moat_env_str(name, def);
    if (!moat_url_valid(v)) {
        moat_log(MOAT_LOG_ERROR, "not an http(s):// URL", "{s:s, s:s}",
                 "variable", name, "value", v ? v : "");
        return MOAT_EINVAL;
    }
    *out = v;
    return MOAT_OK;
}

int moat_env_int(const char *name, int64_t def, int64_t min, int64_t max,
                 int64_t *out)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        *out = def;
        return MOAT_OK;
    }
    if (moat_parse_i64(v, min, max, out) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s, s:s}",
                 "variable", name, "value", v, "expected",
                 "an integer in range");
        fprintf(stderr, "config: %s='%s' is not an integer in [%lld, %lld]\n",
                name, v, (long long)min, (long long)max);
        return MOAT_EINVAL;
    }
    return MOAT_OK;
}

int moat_env_bool(const char *name, bool def, bool *out)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        *out = def;
        return MOAT_OK;
    }
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return MOAT_OK;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return MOAT_OK;
        }
    }
    fprintf(stderr, "config: %s='%s' is not a boolean (1/0, true/false)\n",
            name, v);
    return MOAT_EINVAL;
}

int moat_parse_hostport(const char *s, char *host, size_t hostlen,
                        uint16_t *port, bool allow_zero)
{
    if (!s)
        return MOAT_EINVAL;
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return MOAT_EINVAL;
    size_t hl = (size_t)(colon - s);
    if (hl >= hostlen)
        return MOAT_EINVAL;
    for (size_t i = 0; i < hl; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || c == '.' || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || c == '-'))
            return MOAT_EINVAL;
    }
    int64_t p;
    if (moat_parse_i64(colon + 1, allow_zero ? 0 : 1, 65535, &p) != MOAT_OK)
        return MOAT_EINVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return MOAT_OK;
}
