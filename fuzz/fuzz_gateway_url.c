/*
 * fuzz_gateway_url.c - the gateway's route table and request-target
 * mapping on arbitrary input.
 *
 * Input: "ROUTES\nTARGET\nLOCATION". ROUTES goes through the strict
 * MOAT_GATEWAY_ROUTES parser; when it parses, TARGET is mapped to an
 * upstream URL and LOCATION rewritten back. Properties: an upstream URL
 * always starts with the route's base URL, and never contains a "." or
 * ".." path segment after it (no escape from the upstream base path).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = moat_xstrndup((const char *)data, size);
    char *target = strchr(text, '\n');
    char *location = NULL;
    if (target) {
        *target++ = '\0';
        location = strchr(target, '\n');
        if (location)
            *location++ = '\0';
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
