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
 * through has a path that is an entry's prefix or continues it with '/'.
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
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(l[i].prefix);
        if (plen >= len && strncmp(p, l[i].prefix, len) == 0 &&
            (plen == len || p[len] == '/'))
            return true;
    }
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
                size_t blen = strlen(routes[i].base_url);
                if (strncmp(url, routes[i].base_url, blen) != 0 ||
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
