/*
 * fuzz_gateway_url.c - the gateway's route table and request-target
 * mapping on arbitrary input.
 *
 * Input: "ROUTES\nTARGET\nLOCATION\nPUBLIC". ROUTES goes through the
 * strict MOAT_GATEWAY_ROUTES parser ("PREFIX=SERVICE@URL,..."); when it
 * parses, TARGET is mapped to an upstream URL and LOCATION rewritten back.
 * PUBLIC goes through the MOAT_GATEWAY_PUBLIC parser ("METHOD PREFIX,...")
 * and TARGET is matched against it; LOCATION is also parsed as an
 * Authorization header. Properties: an upstream URL always starts with the
 * route's base URL, and never contains a "." or ".." path segment after it
 * (no escape from the upstream base path); a target the allow-list lets
 * through has a path that is an entry's prefix or continues it with '/'
 * (a "{name}" segment of a prefix standing for any one non-empty segment).
 * A route with "{name}" parameters maps to a URL that starts with the
 * route's origin and has no "." or ".." segment after it.
 */
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "../services/gateway/gateway.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool has_dot_segment(const char *path)
{
    const char *end = path + strcspn(path, "?#");
    const char *seg = path;
    while (seg < end) {
        const char *slash = memchr(seg, '/', (size_t)(end - seg));
        size_t len = slash ? (size_t)(slash - seg) : (size_t)(end - seg);
        if ((len == 1 && seg[0] == '.') ||
            (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return true;
        if (!slash)
            break;
        seg = slash + 1;
    }
    return false;
}

/* Does path (plen bytes) start with prefix, segment by segment? */
static bool segments_match(const char *prefix, const char *path, size_t plen)
{
    size_t i = 0, j = 0, n = strlen(prefix);
    while (i < n) {
        /* Both at a '/': compare the next segment. */
        if (j >= plen || prefix[i] != '/' || path[j] != '/')
            return false;
        size_t a = 1, b = 1;
        while (i + a < n && prefix[i + a] != '/')
            a++;
        while (j + b < plen && path[j + b] != '/')
            b++;
        bool param = a >= 3 && prefix[i + 1] == '{' && prefix[i + a - 1] == '}';
        if (param ? b == 1 : (a != b || memcmp(prefix + i, path + j, a) != 0))
            return false;
        i += a;
        j += b;
    }
    return j == plen || path[j] == '/';
}

/* The property of gw_public_allows, checked the slow way. */
static bool under_some_prefix(const struct gw_public *l, size_t n,
                              const char *target)
{
    const char *p = target;
    if (*p != '/') {
        const char *s = strstr(p, "://");
        if (!s)
            return false;
        p = s + 3 + strcspn(s + 3, "/?");
    }
    size_t plen = strcspn(p, "?#");
    for (size_t i = 0; i < n; i++)
        if (segments_match(l[i].prefix, p, plen))
            return true;
    return false;
}

static void check_public(const char *spec, const char *target)
{
    struct gw_public *l = NULL;
    size_t n = 0;
    char err[256];
    if (gw_public_parse(spec, &l, &n, err, sizeof(err)) != MOAT_OK)
        return;
    for (unsigned m = MOAT_GET; m <= MOAT_OPTIONS; m <<= 1)
        if (gw_public_allows(l, n, (enum moat_method)m, target) &&
            !under_some_prefix(l, n, target))
            abort();
    gw_public_free(l, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = moat_xstrndup((const char *)data, size);
    char *target = strchr(text, '\n');
    char *location = NULL, *pub = NULL;
    if (target) {
        *target++ = '\0';
        location = strchr(target, '\n');
        if (location) {
            *location++ = '\0';
            pub = strchr(location, '\n');
            if (pub)
                *pub++ = '\0';
        }
    }
    if (pub)
        check_public(pub, target);
    if (location) {
        const char *tok = gw_bearer_token(location);
        if (tok && (!*tok || strchr(tok, ' ')))
            abort();
    }
    struct gw_route *routes = NULL;
    size_t n = 0;
    char err[256];
    if (gw_routes_parse(text, &routes, &n, err, sizeof(err)) == MOAT_OK) {
        for (size_t i = 0; i < n && target; i++) {
            char *url = gw_upstream_url(&routes[i], target);
            if (url) {
                const char *base =
                    routes[i].nparams ? routes[i].origin : routes[i].base_url;
                size_t blen = strlen(base);
                if (strncmp(url, base, blen) != 0 ||
                    has_dot_segment(url + blen))
                    abort();
                free(url);
            }
            if (location)
                free(gw_rewrite_location(&routes[i], location));
        }
        gw_routes_free(routes, n);
    }
    free(text);
    return 0;
}
