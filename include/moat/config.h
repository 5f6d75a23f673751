/*
 * moat/config.h - configuration from environment variables (12-factor).
 *
 * Every setting a process reads is a MOAT_* variable; the supervisor (moat
 * up) sets them from the deployment file. A malformed value is an error
 * naming the variable and the value, never silently replaced by a default:
 * the getters log the problem and return MOAT_EINVAL.
 * Returned strings point into the environment (do not free).
 */
#ifndef MOAT_CONFIG_H
#define MOAT_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

/* Value of name, or def when unset or empty. */
const char *moat_env_str(const char *name, const char *def);
/* Integer in [min, max]; def when unset or empty. */
int moat_env_int(const char *name, int64_t def, int64_t min, int64_t max,
                 int64_t *out);
/* "1/true/yes/on" or "0/false/no/off"; def when unset or empty. */
int moat_env_bool(const char *name, bool def, bool *out);
/* True when url starts with http:// or https:// (the one check every
 * service URL setting gets; the client rejects anything else later). */
bool moat_url_valid(const char *url);
/*
 * Several instances of a service (docs/operations.md "Several instances"):
 * moat up sets MOAT_INSTANCE_URLS to "URL|URL|...[,URL|URL|...]", the
 * origins of the instances of each service with several, the first being
 * the address its callers' URL variables name. When url's origin is such a
 * first one, returns url on every instance (origin replaced, the rest
 * kept), the first entry url itself, NULL-terminated; the caller frees
 * each entry and the array. NULL otherwise.
 */
char **moat_instance_urls(const char *url);
/* A service's URL setting: *out = name's value, or def when unset or
 * empty. MOAT_EINVAL (logged, naming the variable) when it is not an
 * http(s):// URL. */
int moat_env_url(const char *name, const char *def, const char **out);

/*
 * Parse "host:port" (IPv4 dotted quad or "localhost"; port 1..65535, or 0
 * when allow_zero) into host (NUL-terminated, hostlen bytes) and port.
 */
int moat_parse_hostport(const char *s, char *host, size_t hostlen,
                        uint16_t *port, bool allow_zero);

#endif /* MOAT_CONFIG_H */
