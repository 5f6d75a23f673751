/* deploy.c - parse and validate the deployment file (see deploy.h). */
#include "moat/common.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h> /* PATH_MAX */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/config.h"

#include "deploy.h"

/*
 * Variables the supervisor sets itself: a deployment's "env" may not
 * override them, because the supervisor's own view (the port it probes,
 * the directory it sizes) would then disagree with the service's.
 */
static const char *const reserved_env[] = {
    "MOAT_SERVICE_NAME",   "MOAT_LISTEN",         "MOAT_DATA_DIR",
    "MOAT_GATEWAY_ROUTES", "MOAT_GATEWAY_PUBLIC", "MOAT_SERVICE_KEY",
    "MOAT_PEER_KEYS",      "MOAT_TLS_CERT",       "MOAT_TLS_KEY",
    "MOAT_TLS_CA",         "MOAT_DB_DSN",         "MOAT_INSTANCES",
    "MOAT_INSTANCE_URLS",
};

static const struct {
    const char *name;
    unsigned bit;
} method_names[] = {
    {"GET", DEPLOY_METHOD_GET},       {"POST", DEPLOY_METHOD_POST},
    {"PUT", DEPLOY_METHOD_PUT},       {"PATCH", DEPLOY_METHOD_PATCH},
    {"DELETE", DEPLOY_METHOD_DELETE},
};

/* The errors found so far, formatted "file: field: problem\n". */
struct errs {
    const char *file;
    struct moat_buf text;
    unsigned n;
};

static void report(struct errs *e, const char *at, const char *key,
                   const char *fmt, ...) MOAT_PRINTF(4, 5);

static void report(struct errs *e, const char *at, const char *key,
                   const char *fmt, ...)
{
    e->n++;
    if (e->n > DEPLOY_MAX_ERRORS)
        return;
    moat_buf_printf(&e->text, "%s: ", e->file);
    if (at && *at)
        moat_buf_addstr(&e->text, at);
    if (key)
        moat_buf_printf(&e->text, "%s%s", (at && *at) ? "." : "", key);
    if ((at && *at) || key)
        moat_buf_addstr(&e->text, ": ");
    va_list ap;
    va_start(ap, fmt);
    moat_buf_vprintf(&e->text, fmt, ap);
    va_end(ap);
    moat_buf_addch(&e->text, '\n');
}

/* Hand the collected errors over as one string without a final newline. */
static char *errs_detach(struct errs *e)
{
    if (e->n > DEPLOY_MAX_ERRORS)
        moat_buf_printf(&e->text, "%s: ... and %u more errors\n", e->file,
                        e->n - DEPLOY_MAX_ERRORS);
    if (e->text.len > 0 && e->text.data[e->text.len - 1] == '\n')
        e->text.data[--e->text.len] = '\0';
    return moat_buf_detach(&e->text, NULL);
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > DEPLOY_NAME_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

static bool valid_env_name(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return false;
    for (s++; *s; s++) {
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    }
    return true;
}

/*
 * A route prefix or upstream path: absolute, at most DEPLOY_URLPATH_MAX
 * bytes, unreserved URL characters only. ',' and '=' in particular are
 * excluded because they delimit MOAT_GATEWAY_ROUTES. No empty, "." or ".."
 * segment and no trailing '/', so prefixes compare unambiguously; a prefix
 * also needs at least one segment (the gateway serves its own endpoints at
 * the root).
 */
static const char *urlpath_problem(const char *s, bool is_prefix)
{
    size_t n = strlen(s);
    if (s[0] != '/')
        return "must start with '/'";
    if (n >= DEPLOY_URLPATH_MAX)
        return "is too long";
    if (is_prefix && n == 1)
        return "must have at least one segment (\"/\" alone would shadow "
               "the gateway's own endpoints)";
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '{' && s[i - 1] == '/') {
            /* A path parameter: a whole "{name}" segment. */
            size_t len = 1;
            while (i + len < n && s[i + len] >= 'a' && s[i + len] <= 'z')
                len++;
            if (len > 1 && s[i + len] == '}' &&
                (s[i + len + 1] == '/' || s[i + len + 1] == '\0')) {
                i += len;
                continue;
            }
            return "may use '{' only in a whole \"{name}\" segment "
                   "(name in lower-case letters)";
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '/' || c == '-' || c == '_' ||
              c == '.' || c == '~'))
            return "may contain only letters, digits, '/', '-', '_', '.', "
                   "'~' and \"{name}\" segments";
    }
    if (n > 1 && s[n - 1] == '/')
        return "must not end with '/'";
    for (const char *seg = s + 1; n > 1; seg++) {
        size_t len = strcspn(seg, "/");
        if (len == 0)
            return "must not contain an empty segment (\"//\")";
        if ((len == 1 && seg[0] == '.') ||
            (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return "must not contain a \".\" or \"..\" segment";
        seg += len;
        if (*seg == '\0')
            break;
    }
    return NULL;
}

char *deploy_path_join(const char *base, const char *rel)
{
    struct moat_buf in = MOAT_BUF_INIT;
    if (rel[0] != '/') {
        moat_buf_addstr(&in, base);
        moat_buf_addch(&in, '/');
    }
    moat_buf_addstr(&in, rel);

    /* Walk the segments, keeping the output as a stack of segments. */
    struct moat_buf out = MOAT_BUF_INIT;
    char *save = NULL;
    for (char *seg = strtok_r(in.data, "/", &save); seg;
         seg = strtok_r(NULL, "/", &save)) {
        if (strcmp(seg, ".") == 0)
            continue;
        if (strcmp(seg, "..") == 0) {
            char *slash = out.len ? strrchr(out.data, '/') : NULL;
            if (slash) {
                out.len = (size_t)(slash - out.data);
                out.data[out.len] = '\0';
            }
            continue;
        }
        moat_buf_addch(&out, '/');
        moat_buf_addstr(&out, seg);
    }
    if (out.len == 0)
        moat_buf_addch(&out, '/');
    moat_buf_release(&in);
    return moat_buf_detach(&out, NULL);
}

/* Whether path is dir itself or lies beneath it (both normalised). */
static bool path_within(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    if (strcmp(dir, "/") == 0)
        return true;
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static char *field_at(const char *at, const char *key)
{
    return (at && *at) ? moat_xasprintf("%s.%s", at, key) : moat_xstrdup(key);
}

/* Report every member of obj that is not in allowed (NULL-terminated). */
static void check_known(struct errs *e, json_t *obj, const char *at,
                        const char *const *allowed)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok) {
            struct moat_buf list = MOAT_BUF_INIT;
            for (size_t i = 0; allowed[i]; i++)
                moat_buf_printf(&list, "%s%s", i ? ", " : "", allowed[i]);
            report(e, at, key, "unknown field (expected one of: %s)",
                   moat_buf_str(&list));
            moat_buf_release(&list);
        }
    }
}

/*
 * A non-empty string member without NUL bytes. Returns the borrowed value,
 * or NULL when absent (an error if required) or invalid (always an error).
 */
static const char *get_string(struct errs *e, json_t *obj, const char *at,
                              const char *key, bool required)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required)
            report(e, at, key, "missing (required)");
        return NULL;
    }
    if (!json_is_string(v)) {
        report(e, at, key, "must be a string");
        return NULL;
    }
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        report(e, at, key, "must not contain NUL characters");
        return NULL;
    }
    if (*s == '\0') {
        report(e, at, key, "must not be empty");
        return NULL;
    }
    return s;
}

static bool valid_secret_name(const char *s);

/*
 * The "${secret:NAME}" references in an env value: every "${" must start
 * one, NAME a valid secret name. NULL when the value is fine, else what is
 * wrong (static text).
 */
static const char *secret_refs_problem(const char *v)
{
    for (const char *p = strstr(v, "${"); p; p = strstr(p, "${")) {
        if (strncmp(p, DEPLOY_SECRET_REF, strlen(DEPLOY_SECRET_REF)) != 0)
            return "\"${\" may only start a reference to a shared secret, "
                   "\"${secret:MOAT_NAME}\"";
        p += strlen(DEPLOY_SECRET_REF);
        const char *end = strchr(p, '}');
        char name[DEPLOY_NAME_MAX * 4];
        if (!end || (size_t)(end - p) >= sizeof(name))
            return "has an unterminated or too long \"${secret:...}\"";
        memcpy(name, p, (size_t)(end - p));
        name[end - p] = '\0';
        if (!valid_secret_name(name))
            return "references an invalid secret name (MOAT_*, not one moat "
                   "sets itself)";
        p = end + 1;
    }
    return NULL;
}

bool deploy_has_secret_refs(const char *value)
{
    return strstr(value, DEPLOY_SECRET_REF) != NULL;
}

char *deploy_expand_secrets(const char *value,
                            const char *(*lookup)(void *arg, const char *name),
                            void *arg)
{
    struct moat_buf b = MOAT_BUF_INIT;
    const char *p = value;
    for (const char *ref; (ref = strstr(p, DEPLOY_SECRET_REF));) {
        const char *name = ref + strlen(DEPLOY_SECRET_REF);
        const char *end = strchr(name, '}');
        if (!end)
            break; /* cannot happen after validation */
        moat_buf_add(&b, p, (size_t)(ref - p));
        char *n = moat_xstrndup(name, (size_t)(end - name));
        const char *v = lookup(arg, n);
        free(n);
        if (v)
            moat_buf_addstr(&b, v);
        p = end + 1;
    }
    moat_buf_addstr(&b, p);
    return moat_buf_detach(&b, NULL);
}

static void parse_env(struct errs *e, json_t *obj, const char *at,
                      struct deploy_service *svc)
{
    json_t *env = json_object_get(obj, "env");
    if (!env)
        return;
    if (!json_is_object(env)) {
        report(e, at, "env", "must be an object of strings");
        return;
    }
    if (json_object_size(env) > DEPLOY_MAX_ENV) {
        report(e, at, "env", "too many variables (at most %d)", DEPLOY_MAX_ENV);
        return;
    }
    char *env_at = field_at(at, "env");
    svc->env = moat_xcalloc(json_object_size(env) + 1, sizeof(*svc->env));
    const char *key;
    json_t *val;
    json_object_foreach(env, key, val)
    {
        if (!valid_env_name(key)) {
            report(e, env_at, key,
                   "not a valid environment variable name "
                   "([A-Za-z_][A-Za-z0-9_]*)");
            continue;
        }
        bool reserved = false;
        for (size_t i = 0; i < MOAT_ARRAY_LEN(reserved_env); i++)
            reserved = reserved || strcmp(key, reserved_env[i]) == 0;
        if (reserved) {
            report(e, env_at, key,
                   "is set by the supervisor from the deployment file; "
                   "use the corresponding field instead");
            continue;
        }
        if (!json_is_string(val)) {
            report(e, env_at, key, "must be a string");
            continue;
        }
        if (strlen(json_string_value(val)) != json_string_length(val)) {
            report(e, env_at, key, "must not contain NUL characters");
            continue;
        }
        const char *problem = secret_refs_problem(json_string_value(val));
        if (problem) {
            report(e, env_at, key, "%s", problem);
            continue;
        }
        svc->env[svc->nenv].name = moat_xstrdup(key);
        svc->env[svc->nenv].value = moat_xstrdup(json_string_value(val));
        svc->nenv++;
    }
    free(env_at);
}

/* "public": ["GET", ...]: methods the gateway lets through without an
 * end-user token (the upstream still authorises). */
static unsigned parse_public(struct errs *e, json_t *r, const char *rat)
{
    json_t *pub = json_object_get(r, "public");
    unsigned bits = 0;
    if (!pub)
        return 0;
    if (!json_is_array(pub)) {
        report(e, rat, "public", "must be an array of HTTP methods");
        return 0;
    }
    size_t i;
    json_t *m;
    json_array_foreach(pub, i, m)
    {
        unsigned bit = 0;
        for (size_t k = 0;
             json_is_string(m) && k < MOAT_ARRAY_LEN(method_names); k++)
            if (strcmp(json_string_value(m), method_names[k].name) == 0)
                bit = method_names[k].bit;
        if (!bit)
            report(e, rat, "public",
                   "entry %zu must be one of GET, POST, PUT, PATCH, DELETE", i);
        bits |= bit;
    }
    return bits;
}

/* An array of strings into out and n; each checked with ok (may be NULL). */
static void parse_string_list(struct errs *e, json_t *obj, const char *at,
                              const char *key, bool (*ok)(const char *),
                              const char *what, char ***out, size_t *n)
{
    json_t *arr = json_object_get(obj, key);
    if (!arr)
        return;
    if (!json_is_array(arr) || json_array_size(arr) > DEPLOY_MAX_ENV) {
        report(e, at, key, "must be an array of at most %d %s", DEPLOY_MAX_ENV,
               what);
        return;
    }
    *out = moat_xcalloc(json_array_size(arr) + 1, sizeof(**out));
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        const char *str = json_string_value(v);
        if (!str || (ok && !ok(str))) {
            report(e, at, key, "entry %zu is not a valid %s", i, what);
            continue;
        }
        (*out)[(*n)++] = moat_xstrdup(str);
    }
}

static bool valid_secret_name(const char *s)
{
    if (!valid_env_name(s) || strncmp(s, "MOAT_", 5) != 0)
        return false;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(reserved_env); i++)
        if (strcmp(s, reserved_env[i]) == 0)
            return false;
    return true;
}

static void parse_routes(struct errs *e, json_t *obj, const char *at,
                         struct deploy_service *svc)
{
    static const char *const allowed[] = {"prefix", "service", "path", "public",
                                          NULL};
    json_t *routes = json_object_get(obj, "routes");
    if (!routes)
        return;
    if (!json_is_array(routes) || json_array_size(routes) == 0) {
        report(e, at, "routes", "must be a non-empty array of routes");
        return;
    }
    if (json_array_size(routes) > DEPLOY_MAX_ROUTES) {
        report(e, at, "routes", "too many routes (at most %d)",
               DEPLOY_MAX_ROUTES);
        return;
    }
    svc->routes = moat_xcalloc(json_array_size(routes), sizeof(*svc->routes));
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        char *rat = moat_xasprintf("%s.routes[%zu]", at, i);
        if (!json_is_object(r)) {
            report(e, rat, NULL, "must be an object");
            free(rat);
            continue;
        }
        check_known(e, r, rat, allowed);
        const char *prefix = get_string(e, r, rat, "prefix", true);
        const char *service = get_string(e, r, rat, "service", true);
        const char *path = get_string(e, r, rat, "path", true);
        const char *problem;
        if (prefix && (problem = urlpath_problem(prefix, true))) {
            report(e, rat, "prefix", "%s, got \"%s\"", problem, prefix);
            prefix = NULL;
        }
        if (path && (problem = urlpath_problem(path, false))) {
            report(e, rat, "path", "%s, got \"%s\"", problem, path);
            path = NULL;
        }
        for (size_t j = 0; prefix && j < svc->nroutes; j++) {
            if (strcmp(svc->routes[j].prefix, prefix) == 0) {
                report(e, rat, "prefix",
                       "\"%s\" is already used by %s.routes[%zu]", prefix, at,
                       j);
                prefix = NULL;
            }
        }
        unsigned pub = parse_public(e, r, rat);
        if (prefix && service && path) {
            struct deploy_route *dr = &svc->routes[svc->nroutes++];
            dr->prefix = moat_xstrdup(prefix);
            dr->service = moat_xstrdup(service);
            dr->path = moat_xstrdup(path);
            dr->public_methods = pub;
        }
        free(rat);
    }
}

/* "10s", "5m", "1h", "1d" in ms; -1 when malformed. */
static int64_t parse_every(const char *s)
{
    char *end = NULL;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (errno || end == s || n <= 0 || n > 100000 || end[0] == '\0' ||
        end[1] != '\0')
        return -1;
    switch (end[0]) {
    case 's':
        return n * 1000;
    case 'm':
        return n * 60000;
    case 'h':
        return n * 3600000;
    case 'd':
        return n * 86400000;
    default:
        return -1;
    }
}

/* "backup": {"every": "1h", "keep": 24} (docs/operations.md). */
static void parse_backup(struct errs *e, json_t *obj, const char *at,
                         struct deploy_service *svc)
{
    static const char *const allowed[] = {"every", "keep", NULL};
    svc->backup_keep = DEPLOY_BACKUP_KEEP_DEFAULT;
    json_t *b = json_object_get(obj, "backup");
    if (!b)
        return;
    char *bat = field_at(at, "backup");
    if (!json_is_object(b)) {
        report(e, at, "backup", "must be an object");
        goto out;
    }
    if (svc->engine == DEPLOY_ENGINE_NONE)
        report(e, at, "backup", "not allowed with engine \"none\"");
    if (svc->engine == DEPLOY_ENGINE_POSTGRES)
        report(e, at, "backup",
               "not allowed with engine \"postgres\" (back the cluster up "
               "with PostgreSQL's own tools, docs/operations.md)");
    check_known(e, b, bat, allowed);
    const char *every = get_string(e, b, bat, "every", false);
    if (every) {
        svc->backup_every_ms = parse_every(every);
        if (svc->backup_every_ms < 10000) {
            report(e, bat, "every",
                   "must be a number and s, m, h or d, at least 10s, got "
                   "\"%s\"",
                   every);
            svc->backup_every_ms = 0;
        }
    }
    json_t *keep = json_object_get(b, "keep");
    if (keep) {
        if (!json_is_integer(keep) || json_integer_value(keep) < 1 ||
            json_integer_value(keep) > DEPLOY_BACKUP_KEEP_MAX)
            report(e, bat, "keep", "must be an integer in 1..%d",
                   DEPLOY_BACKUP_KEEP_MAX);
        else
            svc->backup_keep = (unsigned)json_integer_value(keep);
    }
out:
    free(bat);
}

/* "listen": "HOST:PORT", or an array of them: one instance each. */
static void parse_listen(struct errs *e, json_t *obj, const char *at,
                         struct deploy_service *svc)
{
    json_t *v = json_object_get(obj, "listen");
    json_t *one = json_is_array(v) ? NULL : json_array();
    if (one) {
        const char *str = get_string(e, obj, at, "listen", true);
        if (!str)
            goto out;
        json_array_append_new(one, json_string(str));
        v = one;
    }
    if (json_array_size(v) < 1 || json_array_size(v) > DEPLOY_MAX_INSTANCES) {
        report(e, at, "listen",
               "must be HOST:PORT or an array of 1 to %d of them (one "
               "instance each)",
               DEPLOY_MAX_INSTANCES);
        goto out;
    }
    svc->inst = moat_xcalloc(json_array_size(v), sizeof(*svc->inst));
    size_t i;
    json_t *l;
    json_array_foreach(v, i, l)
    {
        struct deploy_instance *in = &svc->inst[svc->ninstances];
        const char *str = json_string_value(l);
        if (!str || moat_parse_hostport(str, in->host, sizeof(in->host),
                                        &in->port, false) != MOAT_OK) {
            report(e, at, "listen",
                   "must be HOST:PORT with an IPv4 address or hostname and a "
                   "port in 1..65535, got \"%s\"",
                   str ? str : "(not a string)");
            continue;
        }
        in->listen = moat_xstrdup(str);
        svc->ninstances++;
    }
    if (svc->ninstances == json_array_size(v)) {
        svc->listen = moat_xstrdup(svc->inst[0].listen);
        memcpy(svc->host, svc->inst[0].host, sizeof(svc->host));
        svc->port = svc->inst[0].port;
    }
out:
    json_decref(one);
}

/* Parse services[i] into svc. Cross-service checks come later. */
static void parse_service(struct errs *e, json_t *obj, const char *at,
                          const struct deploy *d, struct deploy_service *svc)
{
    static const char *const allowed[] = {
        "name",   "listen", "engine",  "db",     "data_dir", "binary", "env",
        "routes", "calls",  "secrets", "backup", "dsn",      "host",   NULL};
    if (!json_is_object(obj)) {
        report(e, at, NULL, "must be an object");
        return;
    }
    check_known(e, obj, at, allowed);

    const char *name = get_string(e, obj, at, "name", true);
    if (name && !valid_name(name)) {
        report(e, at, "name",
               "must match [a-z][a-z0-9-]{0,31} (lowercase letter first), "
               "got \"%s\"",
               name);
        name = NULL;
    }
    /* The supervisor's own log is <var>/log/moat.log. */
    if (name && strcmp(name, "moat") == 0) {
        report(e, at, "name", "\"moat\" is reserved for the supervisor");
        name = NULL;
    }
    /* The CLI's own identity towards services (cli.h CLI_OPERATOR). */
    if (name && strcmp(name, "operator") == 0) {
        report(e, at, "name", "\"operator\" is reserved for the moat CLI");
        name = NULL;
    }
    svc->name = name ? moat_xstrdup(name) : NULL;

    parse_listen(e, obj, at, svc);

    const char *engine = get_string(e, obj, at, "engine", true);
    if (engine) {
        if (strcmp(engine, "sqlite") == 0) {
            svc->engine = DEPLOY_ENGINE_SQLITE;
        } else if (strcmp(engine, "lmdb") == 0) {
            svc->engine = DEPLOY_ENGINE_LMDB;
        } else if (strcmp(engine, "postgres") == 0) {
            svc->engine = DEPLOY_ENGINE_POSTGRES;
        } else if (strcmp(engine, "none") == 0) {
            svc->engine = DEPLOY_ENGINE_NONE;
        } else {
            report(e, at, "engine",
                   "must be \"sqlite\", \"lmdb\", \"postgres\" or "
                   "\"none\", got \"%s\"",
                   engine);
            engine = NULL; /* then db is checked for type only */
        }
    }

    /* LMDB's environment is one process's (lib/kv.c locks it). */
    if (svc->ninstances > 1 && svc->engine == DEPLOY_ENGINE_LMDB)
        report(e, at, "listen",
               "several instances need a database several processes share "
               "(engine \"sqlite\"), not \"lmdb\"");

    const char *data_dir = get_string(e, obj, at, "data_dir", false);
    if (data_dir)
        svc->data_dir = deploy_path_join(d->dir, data_dir);
    else if (svc->name && d->var_dir)
        svc->data_dir = deploy_path_join(d->var_dir, svc->name);

    /* A PostgreSQL database is named after the service, not a file. */
    bool pg = engine && svc->engine == DEPLOY_ENGINE_POSTGRES;
    bool stores = engine && svc->engine != DEPLOY_ENGINE_NONE && !pg;
    bool has_db = json_object_get(obj, "db") != NULL;
    const char *db = get_string(e, obj, at, "db", stores);
    if (engine && !stores && has_db) {
        report(e, at, "db", "not allowed with engine \"%s\"", engine);
    } else if (db && svc->data_dir) {
        svc->db = deploy_path_join(svc->data_dir, db);
        if (strcmp(svc->db, svc->data_dir) == 0 ||
            !path_within(svc->db, svc->data_dir)) {
            report(e, at, "db",
                   "must be inside the service's data directory %s (the "
                   "service is confined to it), got \"%s\"",
                   svc->data_dir, db);
        }
    }

    const char *binary = get_string(e, obj, at, "binary", false);
    svc->binary = binary ? moat_xstrdup(binary) : NULL;

    bool has_dsn = json_object_get(obj, "dsn") != NULL;
    const char *dsn = get_string(e, obj, at, "dsn", false);
    if (engine && !pg && has_dsn)
        report(e, at, "dsn", "only with engine \"postgres\"");
    else if (dsn && strlen(dsn) > DEPLOY_DSN_MAX)
        report(e, at, "dsn", "longer than %d bytes", DEPLOY_DSN_MAX);
    else if (dsn)
        svc->dsn = moat_xstrdup(dsn);

    parse_env(e, obj, at, svc);
    parse_routes(e, obj, at, svc);
    parse_string_list(e, obj, at, "calls", valid_name, "service name",
                      &svc->calls, &svc->ncalls);
    parse_string_list(e, obj, at, "secrets", valid_secret_name,
                      "secret name (MOAT_*, not one moat sets itself)",
                      &svc->secrets, &svc->nsecrets);
    parse_backup(e, obj, at, svc);
    const char *host = get_string(e, obj, at, "host", false);
    svc->host_name = host ? moat_xstrdup(host) : NULL;
}

static const char *connect_host(const char *host)
{
    return strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host;
}

/* Instance k of s; the first one is s's own host and port (which a test
 * harness may move). */
static const char *inst_host(const struct deploy_service *s, size_t k)
{
    return connect_host(k ? s->inst[k].host : s->host);
}

static unsigned inst_port(const struct deploy_service *s, size_t k)
{
    return k ? s->inst[k].port : s->port;
}

static size_t ninst(const struct deploy_service *s)
{
    return s->ninstances ? s->ninstances : 1;
}

const char *deploy_connect_host(const struct deploy_service *s)
{
    return connect_host(s->host);
}

/* Two listen addresses collide on the same port when their hosts are equal
 * (localhost is loopback) or either is the wildcard address. */
static bool addr_conflict(const struct deploy_instance *a,
                          const struct deploy_instance *b)
{
    if (a->port != b->port)
        return false;
    const char *ha = strcmp(a->host, "localhost") == 0 ? "127.0.0.1" : a->host;
    const char *hb = strcmp(b->host, "localhost") == 0 ? "127.0.0.1" : b->host;
    return strcmp(ha, hb) == 0 || strcmp(ha, "0.0.0.0") == 0 ||
           strcmp(hb, "0.0.0.0") == 0;
}

/* Whether an instance of a collides with one of b (a == b: with another
 * one of its own). */
static bool listen_conflict(const struct deploy_service *a,
                            const struct deploy_service *b)
{
    /* A server moat up runs beside the services (the broker, the
     * PostgreSQL cluster, Redis) has one address and no instances. */
    struct deploy_instance one_a = {.port = a->port}, one_b = {.port = b->port};
    snprintf(one_a.host, sizeof(one_a.host), "%s", a->host);
    snprintf(one_b.host, sizeof(one_b.host), "%s", b->host);
    const struct deploy_instance *ia = a->ninstances ? a->inst : &one_a;
    const struct deploy_instance *ib = b->ninstances ? b->inst : &one_b;
    size_t na = a->ninstances ? a->ninstances : 1;
    size_t nb = b->ninstances ? b->ninstances : 1;
    for (size_t i = 0; i < na; i++)
        for (size_t j = a == b ? i + 1 : 0; j < nb; j++)
            if (addr_conflict(&ia[i], &ib[j]))
                return true;
    return false;
}

/* Checks across services: uniqueness, data directory separation, route
 * targets and the start order they imply. */
static void check_services(struct errs *e, struct deploy *d)
{
    char *logdir = moat_xasprintf("%s/log", d->var_dir);

    for (size_t i = 0; i < d->nservices; i++) {
        struct deploy_service *s = &d->services[i];
        char at[32];
        snprintf(at, sizeof(at), "services[%zu]", i);
        if (s->listen && listen_conflict(s, s))
            report(e, at, "listen", "two instances share an address");
        for (size_t j = 0; j < i; j++) {
            const struct deploy_service *o = &d->services[j];
            if (s->name && o->name && strcmp(s->name, o->name) == 0)
                report(e, at, "name", "\"%s\" is already used by services[%zu]",
                       s->name, j);
            if (s->listen && o->listen && listen_conflict(s, o))
                report(e, at, "listen",
                       "\"%s\" conflicts with services[%zu] (\"%s\")",
                       s->listen, j, o->listen);
            /* One service, one data directory: no sharing, no nesting. */
            if (s->data_dir && o->data_dir &&
                (path_within(s->data_dir, o->data_dir) ||
                 path_within(o->data_dir, s->data_dir)))
                report(e, at, "data_dir",
                       "%s overlaps the data directory of services[%zu] (%s)",
                       s->data_dir, j, o->data_dir);
        }
        if (s->data_dir && (path_within(d->var_dir, s->data_dir) ||
                            path_within(s->data_dir, logdir)))
            report(e, at, "data_dir",
                   "%s overlaps the supervisor's var_dir %s or its log/ "
                   "directory",
                   s->data_dir, d->var_dir);
        for (size_t r = 0; r < s->nroutes; r++) {
            const char *target = s->routes[r].service;
            const struct deploy_service *t = deploy_find(d, target);
            char rat[64];
            snprintf(rat, sizeof(rat), "%s.routes[%zu]", at, r);
            if (!t)
                report(e, rat, "service", "no service named \"%s\"", target);
            else if (t == s)
                report(e, rat, "service", "a service cannot route to itself");
        }
        for (size_t c = 0; c < s->ncalls; c++) {
            const struct deploy_service *t = deploy_find(d, s->calls[c]);
            if (!t || t == s)
                report(e, at, "calls", "\"%s\" is not another service",
                       s->calls[c]);
        }
    }
    free(logdir);
    if (e->n)
        return;

    /*
     * Start levels by relaxation: a service starts after every service it
     * routes to. Levels never exceed nservices unless routes form a cycle.
     */
    bool changed = true;
    for (size_t round = 0; changed && round <= d->nservices; round++) {
        changed = false;
        for (size_t i = 0; i < d->nservices; i++) {
            struct deploy_service *s = &d->services[i];
            int level = 0;
            for (size_t r = 0; r < s->nroutes; r++) {
                int tl = deploy_find(d, s->routes[r].service)->level;
                if (tl + 1 > level)
                    level = tl + 1;
            }
            if (level != s->level) {
                s->level = level;
                changed = true;
            }
        }
    }
    if (changed) {
        /* In a cycle every member's level grows each round, so after
         * nservices + 1 rounds exactly the services on or behind a cycle
         * are above nservices. */
        for (size_t i = 0; i < d->nservices; i++) {
            if (d->services[i].level > (int)d->nservices) {
                char at[32];
                snprintf(at, sizeof(at), "services[%zu]", i);
                report(e, at, "routes",
                       "routes of \"%s\" lead back to it through other "
                       "services (a cycle)",
                       d->services[i].name);
            }
        }
        return;
    }
    for (size_t i = 0; i < d->nservices; i++)
        if (d->services[i].level > d->max_level)
            d->max_level = d->services[i].level;
}

/* A whole number in 1..max, or def when absent. */
static unsigned get_uint(struct errs *e, json_t *obj, const char *at,
                         const char *key, unsigned def, unsigned max)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return def;
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > max) {
        report(e, at, key, "must be a whole number in 1..%u", max);
        return def;
    }
    return (unsigned)json_integer_value(v);
}

/* "transport" and "jetstream" (see deploy.h). */
static void parse_transport(struct errs *e, json_t *root, struct deploy *d)
{
    static const char *const allowed[] = {
        "url", "listen", "monitor", "max_memory_mb", "max_file_mb", NULL};
    const char *t = get_string(e, root, "", "transport", false);
    json_t *js = json_object_get(root, "jetstream");
    if (!t || strcmp(t, "http") == 0) {
        if (js)
            report(e, "", "jetstream",
                   "only with \"transport\": "
                   "\"jetstream\"");
        return;
    }
    if (strcmp(t, "jetstream") != 0) {
        report(e, "", "transport", "must be \"http\" or \"jetstream\"");
        return;
    }
    d->transport = DEPLOY_TRANSPORT_JETSTREAM;
    if (js && !json_is_object(js)) {
        report(e, "", "jetstream", "must be an object");
        return;
    }
    json_t *none = json_object();
    if (!js)
        js = none;
    check_known(e, js, "jetstream", allowed);
    const char *url = get_string(e, js, "jetstream", "url", false);
    if (url) {
        if (strncmp(url, "nats://", 7) != 0)
            report(e, "jetstream", "url", "must be a nats:// URL");
        d->nats_url = moat_xstrdup(url);
        json_decref(none);
        return;
    }
    const char *listen = get_string(e, js, "jetstream", "listen", false);
    const char *monitor = get_string(e, js, "jetstream", "monitor", false);
    if (!listen)
        listen = "127.0.0.1:4222";
    if (!monitor)
        monitor = "127.0.0.1:8222";
    struct deploy_service *b = moat_xcalloc(1, sizeof(*b));
    d->broker = b;
    if (moat_parse_hostport(listen, d->nats_host, sizeof(d->nats_host),
                            &d->nats_port, false) != MOAT_OK)
        report(e, "jetstream", "listen", "must be HOST:PORT, got \"%s\"",
               listen);
    if (moat_parse_hostport(monitor, b->host, sizeof(b->host), &b->port,
                            false) != MOAT_OK)
        report(e, "jetstream", "monitor", "must be HOST:PORT, got \"%s\"",
               monitor);
    d->nats_max_memory_mb =
        get_uint(e, js, "jetstream", "max_memory_mb", 64, 1u << 20);
    d->nats_max_file_mb =
        get_uint(e, js, "jetstream", "max_file_mb", 1024, 1u << 24);
    d->nats_url = moat_xasprintf(
        "nats://%s:%u",
        strcmp(d->nats_host, "0.0.0.0") == 0 ? "127.0.0.1" : d->nats_host,
        (unsigned)d->nats_port);
    b->name = moat_xstrdup("nats");
    b->listen = moat_xstrdup(monitor);
    b->engine = DEPLOY_ENGINE_NONE;
    b->data_dir = deploy_path_join(d->var_dir, "nats");
    b->binary = moat_xstrdup(DEPLOY_NATS_SERVER);
    b->args = moat_xcalloc(3, sizeof(*b->args));
    b->args[0] = moat_xstrdup("-c");
    b->args[1] = moat_xasprintf("%s/nats.conf", b->data_dir);
    b->ready_path = "/healthz";
    if (deploy_find(d, "nats"))
        report(e, "", "services",
               "\"nats\" is reserved for the broker with \"transport\": "
               "\"jetstream\"");
    json_decref(none);
}

/* "redis" (see deploy.h). */
static void parse_redis(struct errs *e, json_t *root, struct deploy *d)
{
    static const char *const allowed[] = {"url", "listen", "max_memory_mb",
                                          NULL};
    json_t *r = json_object_get(root, "redis");
    if (!r)
        return;
    if (!json_is_object(r)) {
        report(e, "", "redis", "must be an object");
        return;
    }
    check_known(e, r, "redis", allowed);
    const char *url = get_string(e, r, "redis", "url", false);
    if (url) {
        if (strncmp(url, "redis://", 8) != 0)
            report(e, "redis", "url", "must be a redis:// URL");
        if (json_object_get(r, "listen") || json_object_get(r, "max_memory_mb"))
            report(e, "redis", "url",
                   "a server of its own (\"url\") takes no \"listen\" or "
                   "\"max_memory_mb\"");
        d->redis_url = moat_xstrdup(url);
        return;
    }
    const char *listen = get_string(e, r, "redis", "listen", false);
    if (!listen)
        listen = "127.0.0.1:6380";
    struct deploy_service *b = moat_xcalloc(1, sizeof(*b));
    d->redis = b;
    if (moat_parse_hostport(listen, b->host, sizeof(b->host), &b->port,
                            false) != MOAT_OK)
        report(e, "redis", "listen", "must be HOST:PORT, got \"%s\"", listen);
    d->redis_max_memory_mb =
        get_uint(e, r, "redis", "max_memory_mb", 64, 1u << 20);
    d->redis_url = moat_xasprintf("redis://%s:%u", deploy_connect_host(b),
                                  (unsigned)b->port);
    b->name = moat_xstrdup("redis");
    b->listen = moat_xstrdup(listen);
    b->engine = DEPLOY_ENGINE_NONE;
    b->data_dir = deploy_path_join(d->var_dir, "redis");
    b->binary = moat_xstrdup(DEPLOY_REDIS_SERVER);
    b->args = moat_xcalloc(2, sizeof(*b->args));
    b->args[0] = moat_xasprintf("%s/redis.conf", b->data_dir);
    b->ready_path = "";
    b->scheme = "redis";
    if (deploy_find(d, "redis"))
        report(e, "", "services",
               "\"redis\" is reserved for the cache of \"redis\"");
    for (size_t i = 0; i < d->nservices; i++)
        if (d->services[i].name && listen_conflict(b, &d->services[i]))
            report(e, "redis", "listen", "is %s's address too",
                   d->services[i].name);
}

const struct deploy_service *deploy_builtin(const struct deploy *d, size_t k)
{
    const struct deploy_service *all[] = {d->pg, d->broker, d->redis};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++)
        if (all[i] && k-- == 0)
            return all[i];
    return NULL;
}

size_t deploy_nbuiltin(const struct deploy *d)
{
    return (d->pg ? 1 : 0) + (d->broker ? 1 : 0) + (d->redis ? 1 : 0);
}

/* "postgres" (see deploy.h), after the services. */
static void parse_postgres(struct errs *e, json_t *root, struct deploy *d)
{
    static const char *const allowed[] = {"listen", "max_connections",
                                          "shared_buffers_mb", NULL};
    json_t *pg = json_object_get(root, "postgres");
    for (size_t i = 0; i < d->nservices; i++) {
        const struct deploy_service *s = &d->services[i];
        char at[32];
        snprintf(at, sizeof(at), "services[%zu]", i);
        if (!pg && s->engine == DEPLOY_ENGINE_POSTGRES && !s->dsn)
            report(e, at, "engine",
                   "\"postgres\" needs either a \"dsn\" (a server of your "
                   "own) or the top-level \"postgres\" block (moat up then "
                   "runs a private cluster)");
        if (pg && s->name && strcmp(s->name, "postgres") == 0)
            report(e, at, "name",
                   "\"postgres\" is reserved for the cluster of the "
                   "top-level \"postgres\" block");
    }
    if (!pg)
        return;
    if (!json_is_object(pg)) {
        report(e, "", "postgres", "must be an object");
        return;
    }
    check_known(e, pg, "postgres", allowed);
    struct deploy_service *c = moat_xcalloc(1, sizeof(*c));
    d->pg = c;
    d->min_level = -1;
    c->level = -1;
    c->pg_cluster = true;
    c->name = moat_xstrdup("postgres");
    c->engine = DEPLOY_ENGINE_NONE;
    const char *listen = get_string(e, pg, "postgres", "listen", true);
    if (listen && moat_parse_hostport(listen, c->host, sizeof(c->host),
                                      &c->port, false) != MOAT_OK) {
        report(e, "postgres", "listen", "must be HOST:PORT, got \"%s\"",
               listen);
        listen = NULL;
    } else if (listen && strcmp(c->host, "localhost") != 0 &&
               strncmp(c->host, "127.", 4) != 0) {
        report(e, "postgres", "listen",
               "must be a loopback address (127.x.x.x or localhost): the "
               "cluster is private to this machine, got \"%s\"",
               listen);
        listen = NULL;
    }
    c->listen = moat_xstrdup(listen ? listen : "127.0.0.1:0");
    for (size_t i = 0; listen && i < d->nservices; i++)
        if (d->services[i].listen && listen_conflict(c, &d->services[i]))
            report(e, "postgres", "listen", "\"%s\" conflicts with %s (\"%s\")",
                   listen, d->services[i].name, d->services[i].listen);
    /* Nor with the broker's client or monitoring address. */
    struct deploy_service nats = {.port = d->nats_port};
    snprintf(nats.host, sizeof(nats.host), "%s", d->nats_host);
    if (listen && d->broker &&
        (listen_conflict(c, d->broker) || listen_conflict(c, &nats)))
        report(e, "postgres", "listen",
               "\"%s\" conflicts with the broker's addresses", listen);
    d->pg_max_connections =
        get_uint(e, pg, "postgres", "max_connections", 50, 10000);
    d->pg_shared_buffers_mb =
        get_uint(e, pg, "postgres", "shared_buffers_mb", 32, 1u << 20);
    c->data_dir = deploy_path_join(d->var_dir, "postgres");
    for (size_t i = 0; i < d->nservices; i++) {
        const char *dd = d->services[i].data_dir;
        if (dd &&
            (path_within(dd, c->data_dir) || path_within(c->data_dir, dd)))
            report(e, "postgres", NULL,
                   "the cluster's directory %s overlaps the data directory "
                   "of %s (%s)",
                   c->data_dir, d->services[i].name, dd);
    }
    c->binary = moat_xstrdup(DEPLOY_PG_BINDIR "/postgres");
    c->args = moat_xcalloc(3, sizeof(*c->args));
    c->args[0] = moat_xstrdup("-D");
    c->args[1] = moat_xasprintf("%s/data", c->data_dir);
}

static const struct deploy_host *find_host(const struct deploy *d,
                                           const char *name)
{
    for (size_t i = 0; i < d->nhosts; i++)
        if (strcmp(d->hosts[i].name, name) == 0)
            return &d->hosts[i];
    return NULL;
}

/* "hosts" and each service's "host" (see deploy.h). */
static void parse_hosts(struct errs *e, json_t *root, struct deploy *d)
{
    static const char *const allowed[] = {"address", NULL};
    json_t *hosts = json_object_get(root, "hosts");
    if (hosts && (!json_is_object(hosts) || json_object_size(hosts) < 1 ||
                  json_object_size(hosts) > DEPLOY_MAX_HOSTS)) {
        report(e, "", "hosts", "must be an object of 1 to %d hosts",
               DEPLOY_MAX_HOSTS);
        return;
    }
    d->hosts = moat_xcalloc(json_object_size(hosts) + 1, sizeof(*d->hosts));
    const char *name;
    json_t *h;
    json_object_foreach(hosts, name, h)
    {
        char *at = moat_xasprintf("hosts.%s", name);
        struct deploy_host *dh = &d->hosts[d->nhosts];
        uint16_t port;
        char *hp = NULL;
        const char *addr =
            json_is_object(h) ? get_string(e, h, at, "address", true) : NULL;
        if (!valid_name(name))
            report(e, "hosts", name, "must match [a-z][a-z0-9-]{0,31}");
        else if (!json_is_object(h))
            report(e, "hosts", name, "must be an object");
        else
            check_known(e, h, at, allowed);
        if (addr)
            hp = moat_xasprintf("%s:1", addr);
        if (addr && (moat_parse_hostport(hp, dh->address, sizeof(dh->address),
                                         &port, false) != MOAT_OK ||
                     strspn(addr, "0123456789.") != strlen(addr)))
            report(e, at, "address", "must be an IPv4 address, got \"%s\"",
                   addr);
        else if (addr && valid_name(name)) {
            dh->name = moat_xstrdup(name);
            d->nhosts++;
        }
        free(hp);
        free(at);
    }
    for (size_t i = 0; i < d->nservices; i++) {
        const struct deploy_service *s = &d->services[i];
        char at[32];
        snprintf(at, sizeof(at), "services[%zu]", i);
        if (s->host_name && !find_host(d, s->host_name))
            report(e, at, "host", "no host named \"%s\" in \"hosts\"",
                   s->host_name);
        else if (hosts && !s->host_name)
            report(e, at, "host",
                   "missing (every service says its host when the file has "
                   "\"hosts\")");
    }
    if (hosts && d->tls)
        report(e, "", "hosts",
               "not with \"tls\": true yet (the certificates name loopback "
               "only)");
    if (hosts && d->broker)
        report(e, "", "hosts",
               "with \"transport\": \"jetstream\" give \"jetstream\": "
               "{\"url\"} (moat up runs no broker across hosts)");
    if (hosts && d->pg)
        report(e, "", "hosts",
               "not with the \"postgres\" block (its cluster is private to "
               "one machine): give each postgres service a \"dsn\"");
    if (hosts && d->redis)
        report(e, "", "hosts",
               "with \"redis\" give {\"url\"} (moat up runs no cache across "
               "hosts)");
}

int deploy_select_host(struct deploy *d, const char *name, char **err)
{
    const struct deploy_host *h = find_host(d, name);
    if (!h) {
        *err = moat_xasprintf("%s: no host \"%s\" in \"hosts\"", d->file, name);
        return MOAT_EINVAL;
    }
    for (size_t i = 0; i < d->nservices; i++) {
        struct deploy_service *s = &d->services[i];
        const struct deploy_host *at = find_host(d, s->host_name);
        for (size_t k = 0; at && k < s->ninstances; k++) {
            struct deploy_instance *in = &s->inst[k];
            memcpy(in->written, in->host, sizeof(in->written));
            snprintf(in->host, sizeof(in->host), "%s", at->address);
            free(in->listen);
            in->listen = moat_xasprintf("%s:%u", in->host, (unsigned)in->port);
        }
        if (at) {
            free(s->listen);
            s->listen = moat_xstrdup(s->inst[0].listen);
            memcpy(s->host, s->inst[0].host, sizeof(s->host));
        }
    }
    d->selected_host = moat_xstrdup(name);
    free(d->state_dir);
    d->state_dir = moat_xasprintf("%s/hosts/%s", d->var_dir, name);
    *err = NULL;
    return MOAT_OK;
}

char *deploy_moved_urls(const struct deploy *d, const char *value)
{
    struct moat_buf b = MOAT_BUF_INIT;
    const char *p = value;
    for (const char *h; (h = strstr(p, "://"));) {
        h += 3;
        moat_buf_add(&b, p, (size_t)(h - p));
        p = h;
        for (size_t i = 0; i < d->nservices; i++) {
            const struct deploy_service *s = &d->services[i];
            for (size_t k = 0; k < s->ninstances; k++) {
                const struct deploy_instance *in = &s->inst[k];
                char addr[DEPLOY_HOST_MAX + 8];
                int n = snprintf(addr, sizeof(addr), "%s:%u", in->written,
                                 (unsigned)in->port);
                if (!in->written[0] || strncmp(h, addr, (size_t)n) != 0 ||
                    (h[n] >= '0' && h[n] <= '9'))
                    continue;
                moat_buf_printf(&b, "%s:%u", in->host, (unsigned)in->port);
                p = h + n;
                i = d->nservices;
                break;
            }
        }
    }
    moat_buf_addstr(&b, p);
    return moat_buf_detach(&b, NULL);
}

int deploy_parse(const char *json, size_t len, const char *file,
                 const char *base_dir, struct deploy **out, char **err)
{
    static const char *const allowed[] = {
        "name",      "var_dir", "tls",      "services", "transport",
        "jetstream", "redis",   "postgres", "hosts",    NULL};
    struct errs e = {.file = file, .text = MOAT_BUF_INIT};
    struct deploy *d = moat_xcalloc(1, sizeof(*d));
    d->file = moat_xstrdup(file);
    d->dir = deploy_path_join("/", base_dir);
    int rc = MOAT_EINVAL;

    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        moat_buf_printf(&e.text, "%s:%d:%d: invalid JSON: %s", file, jerr.line,
                        jerr.column, jerr.text);
        e.n++;
        goto cleanup;
    }
    if (!json_is_object(root)) {
        report(&e, NULL, NULL, "the top level must be an object");
        goto cleanup;
    }
    check_known(&e, root, "", allowed);

    const char *name = get_string(&e, root, "", "name", true);
    if (name && !valid_name(name)) {
        report(&e, "", "name", "must match [a-z][a-z0-9-]{0,31}, got \"%s\"",
               name);
        name = NULL;
    }
    d->name = name ? moat_xstrdup(name) : NULL;

    const char *var_dir = get_string(&e, root, "", "var_dir", false);
    d->var_dir = deploy_path_join(d->dir, var_dir ? var_dir : "var");

    json_t *tls = json_object_get(root, "tls");
    if (tls && !json_is_boolean(tls))
        report(&e, "", "tls", "must be true or false");
    d->tls = json_is_true(tls);

    json_t *services = json_object_get(root, "services");
    if (!services) {
        report(&e, "", "services", "missing (required)");
    } else if (!json_is_array(services) || json_array_size(services) == 0) {
        report(&e, "", "services", "must be a non-empty array of services");
    } else if (json_array_size(services) > DEPLOY_MAX_SERVICES) {
        report(&e, "", "services", "too many services (at most %d)",
               DEPLOY_MAX_SERVICES);
    } else {
        d->nservices = json_array_size(services);
        d->services = moat_xcalloc(d->nservices, sizeof(*d->services));
        for (size_t i = 0; i < d->nservices; i++) {
            char at[32];
            snprintf(at, sizeof(at), "services[%zu]", i);
            parse_service(&e, json_array_get(services, i), at, d,
                          &d->services[i]);
            d->services[i].tls = d->tls;
        }
        if (e.n == 0)
            check_services(&e, d);
    }
    parse_transport(&e, root, d);
    parse_redis(&e, root, d);
    if (e.n == 0)
        parse_postgres(&e, root, d);
    parse_hosts(&e, root, d);
    if (e.n == 0)
        rc = MOAT_OK;

cleanup:
    json_decref(root);
    if (rc == MOAT_OK) {
        *out = d;
        *err = NULL;
        moat_buf_release(&e.text);
    } else {
        deploy_free(d);
        *out = NULL;
        *err = errs_detach(&e);
    }
    return rc;
}

int deploy_load(const char *path, struct deploy **out, char **err)
{
    *out = NULL;
    *err = NULL;
    int rc = MOAT_EIO;
    struct moat_buf text = MOAT_BUF_INIT;
    char *dir = NULL;
    char real[PATH_MAX];

    FILE *f = fopen(path, "re");
    if (!f) {
        *err = moat_xasprintf("cannot open deployment file '%s': %s", path,
                              strerror(errno));
        goto cleanup;
    }
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (text.len + n > DEPLOY_FILE_MAX) {
            *err = moat_xasprintf("deployment file '%s' is larger than %u "
                                  "bytes",
                                  path, DEPLOY_FILE_MAX);
            goto cleanup;
        }
        moat_buf_add(&text, chunk, n);
    }
    if (ferror(f)) {
        *err = moat_xasprintf("cannot read deployment file '%s': %s", path,
                              strerror(errno));
        goto cleanup;
    }

    /* Relative paths in the file are relative to the file, not to the
     * directory moat happens to run in. */
    const char *slash = strrchr(path, '/');
    dir = slash ? moat_xstrndup(path, (size_t)(slash - path) + 1)
                : moat_xstrdup(".");
    if (!realpath(dir, real)) {
        *err = moat_xasprintf("cannot resolve directory of '%s': %s", path,
                              strerror(errno));
        goto cleanup;
    }
    rc = deploy_parse(moat_buf_str(&text), text.len, path, real, out, err);

cleanup:
    if (f)
        fclose(f);
    free(dir);
    moat_buf_release(&text);
    return rc;
}

static void service_free(struct deploy_service *s)
{
    free(s->name);
    free(s->listen);
    free(s->host_name);
    for (size_t j = 0; j < s->ninstances; j++)
        free(s->inst[j].listen);
    free(s->inst);
    free(s->db);
    free(s->data_dir);
    free(s->binary);
    for (size_t j = 0; j < s->nenv; j++) {
        free(s->env[j].name);
        free(s->env[j].value);
    }
    free(s->env);
    for (size_t j = 0; j < s->nroutes; j++) {
        free(s->routes[j].prefix);
        free(s->routes[j].service);
        free(s->routes[j].path);
    }
    free(s->routes);
    for (size_t j = 0; j < s->ncalls; j++)
        free(s->calls[j]);
    free(s->calls);
    for (size_t j = 0; j < s->nsecrets; j++)
        free(s->secrets[j]);
    free(s->secrets);
    for (char **a = s->args; a && *a; a++)
        free(*a);
    free(s->args);
    free(s->dsn);
}

void deploy_free(struct deploy *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nservices; i++)
        service_free(&d->services[i]);
    if (d->broker)
        service_free(d->broker);
    free(d->broker);
    if (d->pg)
        service_free(d->pg);
    free(d->pg);
    free(d->nats_url);
    if (d->redis)
        service_free(d->redis);
    free(d->redis);
    free(d->redis_url);
    for (size_t i = 0; i < d->nhosts; i++)
        free(d->hosts[i].name);
    free(d->hosts);
    free(d->selected_host);
    free(d->state_dir);
    free(d->services);
    free(d->name);
    free(d->file);
    free(d->dir);
    free(d->var_dir);
    free(d);
}

size_t deploy_nprocs(const struct deploy *d)
{
    return d->nservices + deploy_nbuiltin(d);
}

const struct deploy_service *deploy_proc(const struct deploy *d, size_t i)
{
    return i < d->nservices ? &d->services[i]
                            : deploy_builtin(d, i - d->nservices);
}

const struct deploy_service *deploy_find(const struct deploy *d,
                                         const char *name)
{
    for (size_t i = 0; i < d->nservices; i++)
        if (d->services[i].name && strcmp(d->services[i].name, name) == 0)
            return &d->services[i];
    return NULL;
}

char *deploy_base_url(const struct deploy_service *s)
{
    if (s->pg_cluster)
        return moat_xasprintf("postgresql://%s:%u", deploy_connect_host(s),
                              (unsigned)s->port);
    return moat_xasprintf("%s://%s:%u",
                          s->scheme ? s->scheme
                          : s->tls  ? "https"
                                    : "http",
                          deploy_connect_host(s), (unsigned)s->port);
}

char *deploy_gateway_routes(const struct deploy *d,
                            const struct deploy_service *s)
{
    struct moat_buf b = MOAT_BUF_INIT;
    for (size_t i = 0; i < s->nroutes; i++) {
        const struct deploy_route *r = &s->routes[i];
        const struct deploy_service *t = deploy_find(d, r->service);
        if (!t)
            continue; /* cannot happen after validation */
        moat_buf_printf(&b, "%s%s=%s@", i ? "," : "", r->prefix, t->name);
        for (size_t k = 0; k < ninst(t); k++)
            moat_buf_printf(&b, "%s%s://%s:%u%s", k ? "|" : "",
                            t->tls ? "https" : "http", inst_host(t, k),
                            inst_port(t, k), r->path);
    }
    return moat_buf_detach(&b, NULL);
}

char *deploy_gateway_public(const struct deploy_service *s)
{
    struct moat_buf b = MOAT_BUF_INIT;
    for (size_t i = 0; i < s->nroutes; i++)
        for (size_t k = 0; k < MOAT_ARRAY_LEN(method_names); k++)
            if (s->routes[i].public_methods & method_names[k].bit)
                moat_buf_printf(&b, "%s%s %s", b.len ? "," : "",
                                method_names[k].name, s->routes[i].prefix);
    if (!b.len)
        return NULL;
    return moat_buf_detach(&b, NULL);
}

bool deploy_calls(const struct deploy_service *caller,
                  const struct deploy_service *callee)
{
    for (size_t i = 0; i < caller->nroutes; i++)
        if (strcmp(caller->routes[i].service, callee->name) == 0)
            return true;
    for (size_t i = 0; i < caller->ncalls; i++)
        if (strcmp(caller->calls[i], callee->name) == 0)
            return true;
    return false;
}

/* Whether p starts with "HOST:PORT" of instance k of s (not followed by a
 * digit). */
static bool addr_at(const char *p, const struct deploy_service *s, size_t k)
{
    char addr[DEPLOY_HOST_MAX + 8];
    int n =
        snprintf(addr, sizeof(addr), "%s:%u", inst_host(s, k), inst_port(s, k));
    return strncmp(p, addr, (size_t)n) == 0 && !(p[n] >= '0' && p[n] <= '9');
}

char *deploy_instance_map(const struct deploy *d)
{
    struct moat_buf b = MOAT_BUF_INIT;
    for (size_t i = 0; i < d->nservices; i++) {
        const struct deploy_service *s = &d->services[i];
        if (s->ninstances < 2)
            continue;
        moat_buf_addstr(&b, b.len ? "," : "");
        for (size_t k = 0; k < s->ninstances; k++)
            moat_buf_printf(&b, "%s%s://%s:%u", k ? "|" : "",
                            s->tls ? "https" : "http", inst_host(s, k),
                            inst_port(s, k));
    }
    if (!b.len)
        return NULL;
    return moat_buf_detach(&b, NULL);
}

char *deploy_tls_urls(const struct deploy *d, const char *value)
{
    struct moat_buf b = MOAT_BUF_INIT;
    const char *p = value;
    for (;;) {
        const char *h = strstr(p, "http://");
        if (!h)
            break;
        moat_buf_add(&b, p, (size_t)(h - p));
        p = h + strlen("http://");
        const struct deploy_service *hit = NULL;
        for (size_t i = 0; i < d->nservices && !hit; i++) {
            const struct deploy_service *s = &d->services[i];
            for (size_t k = 0; k < ninst(s) && !hit; k++)
                if (s->tls && addr_at(p, s, k))
                    hit = s;
        }
        moat_buf_printf(&b, "%s://", hit ? "https" : "http");
    }
    moat_buf_printf(&b, "%s", p);
    return moat_buf_detach(&b, NULL);
}

const char *deploy_engine_name(enum deploy_engine e)
{
    switch (e) {
    case DEPLOY_ENGINE_SQLITE:
        return "sqlite";
    case DEPLOY_ENGINE_LMDB:
        return "lmdb";
    case DEPLOY_ENGINE_POSTGRES:
        return "postgres";
    case DEPLOY_ENGINE_NONE:
        break;
    }
    return "none";
}
