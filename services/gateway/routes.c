/*
 * routes.c - MOAT_GATEWAY_ROUTES and MOAT_GATEWAY_PUBLIC parsing and the
 * URL arithmetic of the proxy and the guard. No I/O here, so the unit test
 * includes this file directly and the fuzz target links it alone.
 */
#include "moat/common.h"
#include "moat/buf.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"

static const char *const err_kind_names[GW_ERR_KINDS] = {
    [GW_ERR_CONNECT] = "connect",     [GW_ERR_TIMEOUT] = "timeout",
    [GW_ERR_TOO_BIG] = "too_big",     [GW_ERR_BAD_RESPONSE] = "bad_response",
    [GW_ERR_CANCELLED] = "cancelled",
};

const char *gw_err_kind_name(enum gw_err_kind k)
{
    return (k >= 0 && k < GW_ERR_KINDS) ? err_kind_names[k] : "unknown";
}

static bool is_unreserved(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
}

/* "{name}": a path parameter, name [a-z][a-z0-9_]{0,30}. */
static bool is_param_segment(const char *seg, size_t len)
{
    if (len < 3 || len > GW_MAX_PARAM_NAME + 2 || seg[0] != '{' ||
        seg[len - 1] != '}' || !(seg[1] >= 'a' && seg[1] <= 'z'))
        return false;
    for (size_t i = 2; i < len - 1; i++)
        if (!((seg[i] >= 'a' && seg[i] <= 'z') ||
              (seg[i] >= '0' && seg[i] <= '9') || seg[i] == '_'))
            return false;
    return true;
}

/*
 * The prefix is matched by the router segment by segment, so it is kept
 * to plain segments: "/" then unreserved characters, or a whole "{name}"
 * segment that matches any one segment, no empty, "." or ".." segment, no
 * final "/". *nparams counts the "{name}" segments.
 */
static bool valid_prefix(const char *p, size_t *nsegs, size_t *nparams)
{
    size_t n = 0, np = 0;
    if (p[0] != '/')
        return false;
    while (*p == '/') {
        const char *seg = ++p;
        size_t len = strcspn(seg, "/");
        if (is_param_segment(seg, len)) {
            np++;
            p += len;
        } else {
            while (*p && *p != '/') {
                if (!is_unreserved(*p))
                    return false;
                p++;
            }
        }
        if (len == 0 || (len == 1 && seg[0] == '.') ||
            (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (++n > GW_MAX_PREFIX_SEGMENTS)
            return false;
    }
    *nsegs = n;
    *nparams = np;
    return *p == '\0';
}

/*
 * Does the path p (path_len bytes, raw) start with prefix, segment by
 * segment, a "{name}" segment of prefix matching any non-empty segment?
 * Then *matched is how many bytes of p the prefix covered.
 */
static bool path_has_prefix(const char *prefix, const char *p, size_t path_len,
                            size_t *matched)
{
    size_t i = 0;
    while (*prefix == '/') {
        size_t plen = strcspn(prefix + 1, "/");
        if (i >= path_len || p[i] != '/')
            return false;
        size_t slen = 0;
        while (i + 1 + slen < path_len && p[i + 1 + slen] != '/')
            slen++;
        if (is_param_segment(prefix + 1, plen)) {
            if (slen == 0)
                return false;
        } else if (slen != plen || memcmp(prefix + 1, p + i + 1, plen) != 0) {
            return false;
        }
        prefix += 1 + plen;
        i += 1 + slen;
    }
    *matched = i;
    return true;
}

/* Fills origin and base_path of r from an upstream URL; false if invalid. */
static bool parse_upstream(const char *url, struct gw_route *r,
                           const char **why)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    char *junk = NULL;
    bool ok = false;

    if (!u)
        moat_die("out of memory parsing a URL");
    /* A "{name}" parameter in the path stays "%7Bname%7D" in base_path,
     * where gw_upstream_url fills it in. */
    struct moat_buf esc = MOAT_BUF_INIT;
    for (const char *c = url; *c; c++) {
        if (*c == '{')
            moat_buf_addstr(&esc, "%7B");
        else if (*c == '}')
            moat_buf_addstr(&esc, "%7D");
        else
            moat_buf_addch(&esc, *c);
    }
    char *escaped = moat_buf_detach(&esc, NULL);
    *why = "is not an absolute URL";
    if (curl_url_set(u, CURLUPART_URL, escaped, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        goto cleanup;
    *why = "must use http:// or https://";
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        goto cleanup;
    *why = "has no host";
    if (!host[0])
        goto cleanup;
    *why = "must not contain user credentials, a query or a fragment";
    if (curl_url_get(u, CURLUPART_USER, &junk, 0) != CURLUE_NO_USER ||
        curl_url_get(u, CURLUPART_PASSWORD, &junk, 0) != CURLUE_NO_PASSWORD ||
        curl_url_get(u, CURLUPART_QUERY, &junk, 0) != CURLUE_NO_QUERY ||
        curl_url_get(u, CURLUPART_FRAGMENT, &junk, 0) != CURLUE_NO_FRAGMENT)
        goto cleanup;
    curl_url_get(u, CURLUPART_PORT, &port, 0); /* absent: scheme default */

    /* "/v1/products/" and "/v1/products" are the same base. */
    size_t plen = strlen(path);
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    r->origin = port ? moat_xasprintf("%s://%s:%s", scheme, host, port)
                     : moat_xasprintf("%s://%s", scheme, host);
    r->base_path = moat_xstrndup(path, plen);
    r->base_url = moat_xasprintf("%s%s", r->origin, r->base_path);
    ok = true;
cleanup:
    free(escaped);
    curl_free(junk);
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return ok;
}

char *gw_base_url_parse(const char *url, const char **why)
{
    struct gw_route r = {0};
    if (!parse_upstream(url, &r, why))
        return NULL;
    char *out = r.base_url;
    free(r.origin);
    free(r.base_path);
    return out;
}

/* [a-z][a-z0-9-]{0,31}: a service name as `moat up` and moat/auth.h know it. */
static bool valid_service(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > 32 || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '-'))
            return false;
    return true;
}

static void route_release(struct gw_route *r)
{
    free(r->prefix);
    free(r->service);
    free(r->pattern_rest);
    free(r->origin);
    free(r->base_path);
    free(r->base_url);
    for (size_t i = 0; i < r->norigins; i++)
        free(r->origins[i]);
    free(r->origins);
}

void gw_routes_free(struct gw_route *routes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        route_release(&routes[i]);
    free(routes);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t len = strlen(s);
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        s[--len] = '\0';
    return s;
}

/* The position of "{name}" in prefix (a pointer to its '{'), or NULL. */
static const char *find_param(const char *prefix, const char *name, size_t len)
{
    for (const char *p = prefix; (p = strchr(p, '{')) != NULL; p++)
        if (strncmp(p + 1, name, len) == 0 && p[1 + len] == '}')
            return p;
    return NULL;
}

/* The first "%7Bname%7D" of base_path whose name prefix lacks, or NULL. */
static const char *unknown_param(const char *base_path, const char *prefix)
{
    for (const char *p = base_path; (p = strstr(p, "%7B")) != NULL; p += 3) {
        const char *end = strstr(p + 3, "%7D");
        if (!end || !find_param(prefix, p + 3, (size_t)(end - p - 3)))
            return p;
    }
    return NULL;
}

int gw_routes_parse(const char *spec, struct gw_route **out, size_t *n,
                    char *err, size_t errlen)
{
    char *copy = moat_xstrdup(spec);
    char *cur = copy;
    struct gw_route *routes = NULL;
    size_t count = 0;
    int rc = MOAT_EINVAL;

    while (cur) {
        char *entry = trim(strsep(&cur, ","));
        char *eq = strchr(entry, '=');
        const char *why = NULL;
        struct gw_route r = {0};

        if (!*entry) {
            snprintf(err, errlen, "entry %zu is empty (stray comma?)",
                     count + 1);
            goto cleanup;
        }
        char *at = eq ? strchr(eq + 1, '@') : NULL;
        if (!eq || !at) {
            snprintf(err, errlen,
                     "entry %zu ('%s') is not "
                     "PUBLIC_PREFIX=SERVICE@UPSTREAM_URL",
                     count + 1, entry);
            goto cleanup;
        }
        *eq = '\0';
        *at = '\0';
        char *prefix = trim(entry), *service = trim(eq + 1),
             *url = trim(at + 1);
        if (!valid_prefix(prefix, &r.prefix_segs, &r.nparams)) {
            snprintf(err, errlen,
                     "entry %zu: prefix '%s' must be '/' followed by 1 to %d "
                     "segments of [A-Za-z0-9._~-] or {name}, without a final "
                     "'/'",
                     count + 1, prefix, GW_MAX_PREFIX_SEGMENTS);
            goto cleanup;
        }
        for (size_t i = 0; i < count; i++) {
            if (strcmp(routes[i].prefix, prefix) == 0) {
                snprintf(err, errlen, "entry %zu: prefix '%s' appears twice",
                         count + 1, prefix);
                goto cleanup;
            }
        }
        if (!valid_service(service)) {
            snprintf(err, errlen,
                     "entry %zu (%s): service '%s' must match "
                     "[a-z][a-z0-9-]{0,31}",
                     count + 1, prefix, service);
            goto cleanup;
        }
        /* "URL|URL|...": the instances of the upstream, same path. */
        char *more = strchr(url, '|');
        if (more)
            *more++ = '\0';
        if (!parse_upstream(url, &r, &why)) {
            snprintf(err, errlen, "entry %zu (%s): upstream '%s' %s", count + 1,
                     prefix, url, why);
            goto cleanup;
        }
        r.origins = moat_xcalloc(1, sizeof(*r.origins));
        r.origins[r.norigins++] = moat_xstrdup(r.origin);
        while (more) {
            char *u = more;
            more = strchr(u, '|');
            if (more)
                *more++ = '\0';
            struct gw_route o = {0};
            bool ok = parse_upstream(u, &o, &why);
            if (ok && strcmp(o.base_path, r.base_path) != 0) {
                ok = false;
                why = "has another path than the first instance";
            }
            if (ok) {
                r.origins = moat_xrealloc(r.origins, (r.norigins + 1) *
                                                         sizeof(*r.origins));
                r.origins[r.norigins++] = moat_xstrdup(o.origin);
            }
            route_release(&o);
            if (!ok) {
                snprintf(err, errlen, "entry %zu (%s): upstream '%s' %s",
                         count + 1, prefix, u, why);
                route_release(&r);
                goto cleanup;
            }
        }
        const char *unknown = unknown_param(r.base_path, prefix);
        if (unknown) {
            snprintf(err, errlen,
                     "entry %zu (%s): upstream '%s' uses a parameter that "
                     "the prefix does not have (%.*s)",
                     count + 1, prefix, url, (int)strcspn(unknown + 3, "%"),
                     unknown + 3);
            route_release(&r);
            goto cleanup;
        }
        r.prefix = moat_xstrdup(prefix);
        r.service = moat_xstrdup(service);
        r.pattern_rest = moat_xasprintf("%s/{rest*}", prefix);
        routes = moat_xrealloc(routes, (count + 1) * sizeof(*routes));
        routes[count++] = r;
    }
    *out = routes;
    *n = count;
    routes = NULL;
    count = 0;
    rc = MOAT_OK;
cleanup:
    gw_routes_free(routes, count);
    free(copy);
    return rc;
}

/* RFC 3986 characters of a path and query, with valid %XX escapes. */
static bool valid_target_chars(const char *p)
{
    for (; *p; p++) {
        if (*p == '%') {
            if (!is_hex(p[1]) || !is_hex(p[2]))
                return false;
            p += 2;
        } else if (!is_unreserved(*p) && !strchr("!$&'()*+,;=:@/?", *p)) {
            return false;
        }
    }
    return true;
}

/* True for a "." or ".." segment, also spelt "%2e" (RFC 3986 5.2.4). */
static bool is_dot_segment(const char *seg, size_t len)
{
    size_t dots = 0;
    for (size_t i = 0; i < len;) {
        if (seg[i] == '.') {
            i++;
        } else if (len - i >= 3 && seg[i] == '%' && seg[i + 1] == '2' &&
                   (seg[i + 2] == 'e' || seg[i + 2] == 'E')) {
            i += 3;
        } else {
            return false;
        }
        dots++;
    }
    return dots == 1 || dots == 2;
}

/*
 * base_url with each "%7Bname%7D" replaced by the target's segment under
 * prefix's "{name}". segs[i] is the raw target segment under prefix
 * segment i.
 */
static char *fill_params(const struct gw_route *r, const char *const *segs,
                         const size_t *seglens)
{
    struct moat_buf b = MOAT_BUF_INIT;
    const char *p = r->base_url;
    const char *open;
    while ((open = strstr(p, "%7B")) != NULL) {
        const char *name = open + 3;
        const char *close = strstr(name, "%7D");
        size_t nlen = close ? (size_t)(close - name) : 0;
        moat_buf_add(&b, p, (size_t)(open - p));
        /* Which prefix segment holds {name}? (Checked at parse time.) */
        size_t idx = 0;
        const char *at = find_param(r->prefix, name, nlen);
        for (const char *q = r->prefix; at && q < at; q++)
            if (*q == '/')
                idx++;
        if (!close || !at || idx == 0 || idx > r->prefix_segs) {
            moat_buf_release(&b);
            return NULL;
        }
        moat_buf_add(&b, segs[idx - 1], seglens[idx - 1]);
        p = close + 3;
    }
    moat_buf_addstr(&b, p);
    return moat_buf_detach(&b, NULL);
}

char *gw_upstream_url(const struct gw_route *r, const char *target)
{
    const char *p = target;
    const char *segs[GW_MAX_PREFIX_SEGMENTS];
    size_t seglens[GW_MAX_PREFIX_SEGMENTS];

    if (*p != '/') {
        /* absolute-form (RFC 9112 3.2.2): skip scheme and authority. */
        const char *s = strstr(p, "://");
        if (!s)
            return NULL;
        p = s + 3 + strcspn(s + 3, "/?");
        if (*p != '/')
            return NULL;
    }
    if (!valid_target_chars(p))
        return NULL;
    /* The router matched the prefix's segments: skip them, keeping each
     * (a "{name}" parameter is passed on to the upstream path). */
    for (size_t i = 0; i < r->prefix_segs; i++) {
        if (*p != '/')
            return NULL;
        p++;
        segs[i] = p;
        seglens[i] = strcspn(p, "/?");
        if (seglens[i] == 0 || is_dot_segment(p, seglens[i]))
            return NULL;
        p += seglens[i];
    }
    size_t path_len = strcspn(p, "?");
    for (size_t i = 0; i < path_len;) {
        i++; /* the '/' */
        size_t seg_len = strcspn(p + i, "/?");
        if (seg_len > path_len - i)
            seg_len = path_len - i;
        if (is_dot_segment(p + i, seg_len))
            return NULL;
        i += seg_len;
    }
    if (r->nparams == 0)
        return moat_xasprintf("%s%s", r->base_url, p);
    char *base = fill_params(r, segs, seglens);
    if (!base)
        return NULL;
    char *url = moat_xasprintf("%s%s", base, p);
    free(base);
    return url;
}

char *gw_v2_path(const char *path)
{
    for (const char *p = path; (p = strstr(p, "/v1")) != NULL; p += 3)
        if (p[3] == '\0' || p[3] == '/')
            return moat_xasprintf("%.*s/v2%s", (int)(p - path), path, p + 3);
    return NULL;
}

void gw_routes_add_v2(struct gw_route **routes, size_t *n)
{
    size_t count = *n;
    for (size_t i = 0; i < count; i++) {
        struct gw_route *v1 = &(*routes)[i];
        char *prefix = gw_v2_path(v1->prefix);
        char *base_path = prefix ? gw_v2_path(v1->base_path) : NULL;
        bool taken = false;
        for (size_t j = 0; prefix && j < *n; j++)
            taken = taken || strcmp((*routes)[j].prefix, prefix) == 0;
        if (!base_path || taken) {
            free(prefix);
            free(base_path);
            continue;
        }
        struct gw_route v2 = {
            .prefix = prefix,
            .service = moat_xstrdup(v1->service),
            .prefix_segs = v1->prefix_segs,
            .nparams = v1->nparams,
            .pattern_rest = moat_xasprintf("%s/{rest*}", prefix),
            .origin = moat_xstrdup(v1->origin),
            .base_path = base_path,
            .base_url = moat_xasprintf("%s%s", v1->origin, base_path),
            .origins = moat_xcalloc(v1->norigins, sizeof(char *)),
            .norigins = v1->norigins,
        };
        for (size_t k = 0; k < v1->norigins; k++)
            v2.origins[k] = moat_xstrdup(v1->origins[k]);
        v1->has_successor = true;
        *routes = moat_xrealloc(*routes, (*n + 1) * sizeof(**routes));
        (*routes)[(*n)++] = v2;
    }
}

void gw_public_add_v2(struct gw_public **list, size_t *n)
{
    size_t count = *n;
    for (size_t i = 0; i < count; i++) {
        char *prefix = gw_v2_path((*list)[i].prefix);
        unsigned methods = (*list)[i].methods;
        for (size_t j = 0; prefix && j < *n; j++)
            if ((*list)[j].methods == methods &&
                strcmp((*list)[j].prefix, prefix) == 0) {
                free(prefix);
                prefix = NULL;
            }
        if (!prefix)
            continue;
        *list = moat_xrealloc(*list, (*n + 1) * sizeof(**list));
        (*list)[(*n)++] = (struct gw_public){
            .methods = methods,
            .prefix = prefix,
            .len = strlen(prefix),
        };
    }
}

static bool at_boundary(char c)
{
    return c == '\0' || c == '/' || c == '?' || c == '#';
}

char *gw_rewrite_location(const struct gw_route *r, const char *location)
{
    const char *p = location;
    size_t olen = strlen(r->origin), blen = strlen(r->base_path);

    /* A parameterised base path has no single public spelling. */
    if (r->nparams > 0)
        return moat_xstrdup(location);

    /* Scheme and host are case-insensitive; the path is not. */
    if (strncasecmp(p, r->origin, olen) == 0 && at_boundary(p[olen]))
        p += olen;
    else if (p[0] != '/' || p[1] == '/') /* other origin, or relative */
        return moat_xstrdup(location);
    if (strncmp(p, r->base_path, blen) != 0 || !at_boundary(p[blen]))
        return moat_xstrdup(location);
    return moat_xasprintf("%s%s", r->prefix, p + blen);
}

static const struct {
    const char *name;
    unsigned methods;
} public_methods[] = {
    /* A HEAD is a GET without the body: public together. */
    {"GET", MOAT_GET | MOAT_HEAD}, {"HEAD", MOAT_HEAD},
    {"POST", MOAT_POST},           {"PUT", MOAT_PUT},
    {"PATCH", MOAT_PATCH},         {"DELETE", MOAT_DELETE},
    {"OPTIONS", MOAT_OPTIONS},
};

void gw_public_free(struct gw_public *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i].prefix);
    free(list);
}

int gw_public_parse(const char *spec, struct gw_public **out, size_t *n,
                    char *err, size_t errlen)
{
    char *copy = moat_xstrdup(spec);
    char *cur = copy;
    struct gw_public *list = NULL;
    size_t count = 0;
    int rc = MOAT_EINVAL;

    /* Nothing public is a valid (and the safest) configuration. */
    if (*trim(copy) == '\0')
        cur = NULL;
    while (cur) {
        char *entry = trim(strsep(&cur, ","));
        char *sp = strchr(entry, ' ');
        unsigned methods = 0;
        size_t segs = 0, nparams = 0;

        if (!*entry) {
            snprintf(err, errlen, "entry %zu is empty (stray comma?)",
                     count + 1);
            goto cleanup;
        }
        if (!sp) {
            snprintf(err, errlen, "entry %zu ('%s') is not 'METHOD PREFIX'",
                     count + 1, entry);
            goto cleanup;
        }
        *sp = '\0';
        char *prefix = trim(sp + 1);
        for (size_t i = 0; i < MOAT_ARRAY_LEN(public_methods); i++)
            if (strcmp(entry, public_methods[i].name) == 0)
                methods = public_methods[i].methods;
        if (!methods) {
            snprintf(err, errlen,
                     "entry %zu: method '%s' must be one of GET HEAD POST "
                     "PUT PATCH DELETE OPTIONS (upper case)",
                     count + 1, entry);
            goto cleanup;
        }
        if (!valid_prefix(prefix, &segs, &nparams)) {
            snprintf(err, errlen,
                     "entry %zu: prefix '%s' must be '/' followed by 1 to %d "
                     "segments of [A-Za-z0-9._~-] or {name}, without a final "
                     "'/'",
                     count + 1, prefix, GW_MAX_PREFIX_SEGMENTS);
            goto cleanup;
        }
        list = moat_xrealloc(list, (count + 1) * sizeof(*list));
        list[count++] = (struct gw_public){
            .methods = methods,
            .prefix = moat_xstrdup(prefix),
            .len = strlen(prefix),
        };
    }
    *out = list;
    *n = count;
    list = NULL;
    count = 0;
    rc = MOAT_OK;
cleanup:
    gw_public_free(list, count);
    free(copy);
    return rc;
}

bool gw_public_allows(const struct gw_public *list, size_t n,
                      enum moat_method method, const char *target)
{
    const char *p = target;
    if (!p)
        return false;
    if (*p != '/') {
        /* absolute-form: the same skip as gw_upstream_url. */
        const char *s = strstr(p, "://");
        if (!s)
            return false;
        p = s + 3 + strcspn(s + 3, "/?");
    }
    size_t path_len = strcspn(p, "?#");
    for (size_t i = 0; i < n; i++) {
        const struct gw_public *e = &list[i];
        size_t matched = 0;
        if (!(e->methods & (unsigned)method) ||
            !path_has_prefix(e->prefix, p, path_len, &matched))
            continue;
        if (path_len == matched || p[matched] == '/')
            return true;
    }
    return false;
}

const char *gw_bearer_token(const char *value)
{
    if (!value || strncasecmp(value, "Bearer ", 7) != 0)
        return NULL;
    const char *tok = value + 7;
    while (*tok == ' ')
        tok++;
    size_t len = strcspn(tok, " \t");
    if (len == 0 || tok[len] != '\0')
        return NULL;
    return tok;
}

uint64_t gw_retry_after_s(uint64_t ms)
{
    uint64_t s = ms / 1000 + (ms % 1000 != 0);
    return s ? s : 1;
}
