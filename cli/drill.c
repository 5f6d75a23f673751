/* drill.c - what audit, chaos and bench share (see drill.h). */
#include "moat/common.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "drill.h"
#include "secrets.h"

/* ---- operator tokens ---- */

struct optoken {
    char *audience;
    char *header;
    time_t minted;
};

struct cli_optokens {
    const struct deploy *d;
    struct optoken *v;
    size_t n;
};

struct cli_optokens *cli_optokens_new(const struct deploy *d)
{
    struct cli_optokens *t = moat_xcalloc(1, sizeof(*t));
    t->d = d;
    return t;
}

void cli_optokens_free(struct cli_optokens *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].audience);
        if (t->v[i].header) {
            sodium_memzero(t->v[i].header, strlen(t->v[i].header));
            free(t->v[i].header);
        }
    }
    free(t->v);
    free(t);
}

const char *cli_optokens_get(struct cli_optokens *t, const char *audience)
{
    struct optoken *o = NULL;
    for (size_t i = 0; i < t->n && !o; i++)
        if (strcmp(t->v[i].audience, audience) == 0)
            o = &t->v[i];
    if (!o) {
        t->v = realloc(t->v, (t->n + 1) * sizeof(*t->v));
        if (!t->v)
            moat_die("out of memory");
        o = &t->v[t->n++];
        *o = (struct optoken){.audience = moat_xstrdup(audience)};
    }
    time_t now = time(NULL);
    if (o->header && now - o->minted < CLI_OPTOKEN_RENEW_S)
        return o->header;
    char *h = cli_operator_header(t->d, audience);
    if (!h)
        return o->header; /* keep the old one, if any */
    if (o->header) {
        sodium_memzero(o->header, strlen(o->header));
        free(o->header);
    }
    o->header = h;
    o->minted = now;
    return h;
}

/* ---- the provider ---- */

static const char *shared_find(void *arg, const char *name)
{
    return cli_secret_shared_find(arg, name);
}

static const char *env_of(const struct deploy_service *s, const char *name)
{
    for (size_t i = 0; s && i < s->nenv; i++)
        if (strcmp(s->env[i].name, name) == 0)
            return s->env[i].value;
    return NULL;
}

bool cli_provider_of(const struct deploy *d, char **url, char **key)
{
    *url = NULL;
    *key = NULL;
    const struct deploy_service *pay = deploy_find(d, "payments");
    const char *u = env_of(pay, "MOAT_PAYMENTS_PROVIDER_URL");
    if (!u)
        return false;
    struct cli_secrets *sec = NULL;
    if (cli_secrets_load(&sec, d->var_dir) != MOAT_OK)
        return false;
    const char *k = env_of(pay, "MOAT_PAYMENTS_PROVIDER_KEY");
    char *v = NULL;
    if (k) {
        v = deploy_expand_secrets(k, shared_find, sec);
    } else {
        for (size_t i = 0; i < pay->nsecrets && !v; i++)
            if (strcmp(pay->secrets[i], "MOAT_PAYMENTS_PROVIDER_KEY") == 0) {
                const char *s = cli_secret_shared_find(sec, pay->secrets[i]);
                v = s ? moat_xstrdup(s) : NULL;
            }
    }
    cli_secrets_free(sec);
    if (!v || !*v) {
        free(v);
        return false;
    }
    /* As `moat up` hands it to payments: on its host, https:// with TLS. */
    char *moved = deploy_moved_urls(d, u);
    char *tu = deploy_tls_urls(d, moved);
    free(moved);
    size_t n = strlen(tu);
    *url = n && tu[n - 1] == '/' ? moat_xstrndup(tu, n - 1) : moat_xstrdup(tu);
    free(tu);
    *key = v;
    return true;
}

const struct deploy_service *cli_service_at(const struct deploy *d,
                                            const char *url)
{
    for (size_t i = 0; url && i < d->nservices; i++) {
        char *base = deploy_base_url(&d->services[i]);
        size_t n = strlen(base);
        bool match =
            strncmp(url, base, n) == 0 && (url[n] == '\0' || url[n] == '/');
        free(base);
        if (match)
            return &d->services[i];
    }
    return NULL;
}

/* ---- the supervisor's state ---- */

json_t *cli_running_state(const struct deploy *d)
{
    char *lock = cli_lock_path(d);
    bool running = cli_supervisor_running(lock);
    free(lock);
    if (!running) {
        cli_error("no supervisor is running deployment \"%s\": start it with "
                  "'moat up' (in another terminal)",
                  d->name);
        return NULL;
    }
    char *path = cli_state_path(d);
    json_error_t err;
    json_t *st = json_load_file(path, 0, &err);
    if (!st)
        cli_error("cannot read %s: %s", path, err.text);
    free(path);
    return st;
}

pid_t cli_state_pid(json_t *state, const char *name, const char **status)
{
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(state, "services"), i, svc)
    {
        const char *n = json_string_value(json_object_get(svc, "name"));
        if (!n || strcmp(n, name) != 0)
            continue;
        if (status)
            *status = json_string_value(json_object_get(svc, "status"));
        return (pid_t)json_integer_value(json_object_get(svc, "pid"));
    }
    if (status)
        *status = NULL;
    return 0;
}
