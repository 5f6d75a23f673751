/* deployment.c - a whole deployment file started for a test (harness.h). */
#include "moat/common.h"

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#include "moat/buf.h"
#include "moat/tls.h"

#include "deploy.h"

#define DEAD_PORT 1

/* What the fixture knows about each service of the file. */
struct plan {
    bool wanted;       /* named in only */
    bool started;      /* running (or tried) */
    char file_url[96]; /* "http://host:port" as the file names it */
    uint16_t port;     /* the real one; 0 while unknown; DEAD_PORT for a
                        * service not started */
};

static bool is_wanted(const char *const *only, const char *name)
{
    if (!only)
        return true;
    for (const char *const *o = only; *o; o++)
        if (strcmp(*o, name) == 0)
            return true;
    return false;
}

const char *h_deployment_secret(const char *name)
{
    return h_test_service_key(h_fmt("secret-%s", name));
}

static const char *secret_lookup(void *arg, const char *name)
{
    MOAT_UNUSED(arg);
    return h_deployment_secret(name);
}

/* The next place at or after from where value names url (not followed by
 * another digit of a longer port), or NULL. */
static const char *find_url(const char *from, const char *url)
{
    size_t n = strlen(url);
    for (const char *p = strstr(from, url); p; p = strstr(p + 1, url))
        if (!isdigit((unsigned char)p[n]))
            return p;
    return NULL;
}

/* value with every URL (as the file writes them) of a started or
 * pre-assigned service rewritten to its real port, in one pass over value.
 * Caller frees. */
static char *rewrite(const struct deploy *d, const struct plan *plan,
                     const char *value)
{
    struct moat_buf out = MOAT_BUF_INIT;
    const char *p = value;
    while (*p) {
        size_t j = 0;
        for (; j < d->nservices; j++)
            if (plan[j].port != 0 && find_url(p, plan[j].file_url) == p)
                break;
        if (j == d->nservices) {
            moat_buf_addch(&out, *p++);
            continue;
        }
        moat_buf_printf(&out, "%s://127.0.0.1:%u", h_scheme(),
                        (unsigned)plan[j].port);
        p += strlen(plan[j].file_url);
    }
    moat_buf_grow(&out, 0);
    return moat_buf_detach(&out, NULL);
}

/* Give every wanted, not yet started service that s needs a port now. */
static void preassign(struct deploy *d, struct plan *plan, size_t i)
{
    const struct deploy_service *s = &d->services[i];
    for (size_t j = 0; j < d->nservices; j++) {
        if (j == i || !plan[j].wanted || plan[j].port != 0)
            continue;
        const char *url = plan[j].file_url;
        bool needed = false;
        for (size_t k = 0; k < s->nenv && !needed; k++)
            needed = find_url(s->env[k].value, url) != NULL;
        for (size_t k = 0; k < s->nroutes && !needed; k++)
            needed = strcmp(s->routes[k].service, d->services[j].name) == 0;
        if (needed) {
            plan[j].port = h_free_port();
            d->services[j].port = plan[j].port; /* for gateway routes */
        }
    }
}

/* The environment of service i, NULL-terminated; caller frees each entry
 * and the array. */
static char **service_env(const struct deploy *d, const struct plan *plan,
                          size_t i, const char *const *extra_env,
                          const char *nats_url)
{
    const struct deploy_service *s = &d->services[i];
    size_t nextra = 0;
    while (extra_env && extra_env[nextra])
        nextra++;
    char **env = moat_xcalloc(s->nenv + s->nsecrets + nextra + 5, sizeof(*env));
    size_t k = 0;
    if (nats_url[0])
        env[k++] = moat_xasprintf("MOAT_NATS_URL=%s", nats_url);
    for (size_t j = 0; j < s->nenv; j++) {
        char *v = deploy_expand_secrets(s->env[j].value, secret_lookup, NULL);
        char *r = rewrite(d, plan, v);
        env[k++] = moat_xasprintf("%s=%s", s->env[j].name, r);
        free(r);
        free(v);
    }
    for (size_t j = 0; j < s->nsecrets; j++)
        if (strcmp(s->secrets[j], "MOAT_JWT_SECRET") != 0) /* harness's */
            env[k++] = moat_xasprintf("%s=%s", s->secrets[j],
                                      h_deployment_secret(s->secrets[j]));
    if (s->nroutes > 0) {
        char *routes = deploy_gateway_routes(d, s);
        env[k++] = moat_xasprintf("MOAT_GATEWAY_ROUTES=%s", routes);
        free(routes);
        char *pub = deploy_gateway_public(s);
        if (pub)
            env[k++] = moat_xasprintf("MOAT_GATEWAY_PUBLIC=%s", pub);
        free(pub);
    }
    if (plan[i].port != 0) /* pre-assigned: an earlier service knows it */
        env[k++] =
            moat_xasprintf("MOAT_LISTEN=127.0.0.1:%u", (unsigned)plan[i].port);
    for (size_t j = 0; j < nextra; j++) {
        const char *e = extra_env[j];
        const char *eq = strchr(e, '=');
        const char *colon = eq ? memchr(e, ':', (size_t)(eq - e)) : NULL;
        if (!colon)
            env[k++] = moat_xstrdup(e);
        else if (strlen(s->name) == (size_t)(colon - e) &&
                 strncmp(e, s->name, (size_t)(colon - e)) == 0)
            env[k++] = moat_xstrdup(colon + 1);
    }
    env[k] = NULL;
    return env;
}

static bool nats_healthy(void *arg)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/healthz", (const char *)arg));
    bool ok = r.status == 200;
    h_resp_release(&r);
    return ok;
}

/* A nats-server with JetStream for the deployment, as moat up would run
 * it (cli/up.c), on free loopback ports. */
static int start_nats(struct h_deployment *dep, const char *tmpdir)
{
    uint16_t port = h_free_port(), mon = h_free_port();
    snprintf(dep->nats_url, sizeof(dep->nats_url), "nats://127.0.0.1:%u",
             (unsigned)port);
    snprintf(dep->nats_monitor, sizeof(dep->nats_monitor),
             "http://127.0.0.1:%u", (unsigned)mon);
    char conf[512], log[512];
    snprintf(conf, sizeof(conf), "%s/nats.conf", tmpdir);
    snprintf(log, sizeof(log), "%s/nats.log", tmpdir);
    h_write_file(conf, h_fmt("listen: \"127.0.0.1:%u\"\nhttp: "
                             "\"127.0.0.1:%u\"\njetstream { store_dir: "
                             "\"%s/nats\", max_memory_store: 64MB, "
                             "max_file_store: 256MB }\n",
                             (unsigned)port, (unsigned)mon, tmpdir));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr))
            _exit(126);
        execl("/usr/sbin/nats-server", "nats-server", "-c", conf, (char *)NULL);
        _exit(127);
    }
    dep->nats_pid = pid;
    if (!h_wait_until(nats_healthy, dep->nats_monitor, 20000)) {
        print_error("harness: nats-server did not start (see %s)\n", log);
        return -1;
    }
    return 0;
}

int h_deployment_start(struct h_deployment *dep, const char *file,
                       const char *tmpdir, const char *const *only,
                       const char *const *extra_env)
{
    memset(dep, 0, sizeof(*dep));
    char *err = NULL;
    if (deploy_load(file, &dep->d, &err) != MOAT_OK)
        fail_msg("harness: deployment %s: %s", file, err ? err : "?");
    struct deploy *d = dep->d;
    if (d->tls)
        h_tls_enable(tmpdir);
    struct plan *plan = moat_xcalloc(d->nservices, sizeof(*plan));
    for (size_t i = 0; i < d->nservices; i++) {
        d->services[i].tls = h_tls_on(); /* gateway routes: https:// */
        plan[i].wanted = is_wanted(only, d->services[i].name);
        snprintf(plan[i].file_url, sizeof(plan[i].file_url), "http://%s:%u",
                 deploy_connect_host(&d->services[i]),
                 (unsigned)d->services[i].port);
        if (!plan[i].wanted) {
            /* Not started: its URLs lead nowhere (nothing but root may
             * listen on port 1), never to a deployment that happens to
             * run on this machine. */
            plan[i].port = DEAD_PORT;
            snprintf(d->services[i].host, sizeof(d->services[i].host),
                     "127.0.0.1");
            d->services[i].port = DEAD_PORT;
        }
    }
    for (const char *const *o = only; o && *o; o++)
        if (!deploy_find(d, *o))
            fail_msg("harness: %s has no service %s", file, *o);

    int rc = 0;
    if (d->broker)
        rc = start_nats(dep, tmpdir);
    else if (d->nats_url)
        snprintf(dep->nats_url, sizeof(dep->nats_url), "%s", d->nats_url);
    for (size_t i = 0; i < d->nservices && rc == 0; i++) {
        struct deploy_service *s = &d->services[i];
        if (!plan[i].wanted)
            continue;
        if (dep->n == H_DEPLOY_MAX)
            fail_msg("harness: more than %d services", H_DEPLOY_MAX);
        preassign(d, plan, i);
        char **env = service_env(d, plan, i, extra_env, dep->nats_url);
        struct h_service *svc = &dep->svc[dep->n++];
        rc = h_service_start(svc, s->name, tmpdir,
                             s->engine == DEPLOY_ENGINE_NONE
                                 ? NULL
                                 : h_fmt("%s/%s-data", tmpdir, s->name),
                             (const char *const *)env);
        dep->env[dep->n - 1] = env; /* for h_deployment_restart */
        plan[i].started = true;
        plan[i].port = svc->port;
        /* Later gateways route to where it really listens. */
        snprintf(s->host, sizeof(s->host), "127.0.0.1");
        s->port = svc->port;
    }
    free(plan);
    return rc;
}

struct h_service *h_deployment_service(struct h_deployment *dep,
                                       const char *name)
{
    for (size_t i = 0; i < dep->n; i++)
        if (strcmp(dep->svc[i].name, name) == 0)
            return &dep->svc[i];
    fail_msg("harness: the deployment started no %s", name);
    return NULL;
}

int h_deployment_restart(struct h_deployment *dep, struct h_service *svc)
{
    for (size_t i = 0; i < dep->n; i++)
        if (svc == &dep->svc[i])
            return h_service_restart(svc, (const char *const *)dep->env[i]);
    fail_msg("harness: %s is not a service of the deployment", svc->name);
    return -1;
}

int h_deployment_stop(struct h_deployment *dep)
{
    int bad = 0;
    for (size_t i = dep->n; i-- > 0;) {
        if (dep->svc[i].pid > 0)
            kill(dep->svc[i].pid, SIGCONT); /* a test failed mid-SIGSTOP */
        if (dep->svc[i].pid > 0 && h_service_stop(&dep->svc[i]) != 0) {
            print_error("%s did not exit 0 on SIGTERM\n", dep->svc[i].name);
            bad++;
        }
        h_service_release(&dep->svc[i]);
        for (size_t k = 0; dep->env[i] && dep->env[i][k]; k++)
            free(dep->env[i][k]);
        free(dep->env[i]);
    }
    if (dep->nats_pid > 0) { /* after the services that use it */
        kill(dep->nats_pid, SIGTERM);
        waitpid(dep->nats_pid, NULL, 0);
    }
    deploy_free(dep->d);
    memset(dep, 0, sizeof(*dep));
    return bad;
}

/* ---- a deployment file for `moat up` ---- */

/* Replace every occurrence of from in s by to. Caller frees. */
static char *replace_all(const char *s, const char *from, const char *to)
{
    struct moat_buf b = MOAT_BUF_INIT;
    size_t n = strlen(from);
    for (const char *p; (p = strstr(s, from));) {
        moat_buf_add(&b, s, (size_t)(p - s));
        moat_buf_addstr(&b, to);
        s = p + n;
    }
    moat_buf_addstr(&b, s);
    return moat_buf_detach(&b, NULL);
}

/*
 * A deployment with "tls" that the test runs with `moat up`: the CA and
 * the operator's certificate made beforehand where moat certs keeps them
 * (<dir of dst>/var/certs; moat up issues the services' from this CA),
 * and the operator's certificate as the test process's TLS identity, so
 * h_http reaches the gateway and every service as `moat` would.
 */
static void operator_identity(const char *dst)
{
    char *dir = moat_xstrdup(dst);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    char *var = moat_xasprintf("%s/var", slash ? dir : ".");
    char *certs = moat_xasprintf("%s/certs", var);
    mkdir(var, 0700);
    mkdir(certs, 0700);
    char *ca_cert = NULL, *ca_key = NULL, *cert = NULL, *key = NULL;
    if (moat_tls_make_ca("test", MOAT_TLS_CA_DAYS, &ca_cert, &ca_key) !=
            MOAT_OK ||
        moat_tls_make_cert(ca_cert, ca_key, "operator", -300,
                           MOAT_TLS_CERT_DAYS, &cert, &key) != MOAT_OK)
        fail_msg("harness: cannot make the deployment CA");
    const char *files[][2] = {{"ca.crt", ca_cert},
                              {"ca.key", ca_key},
                              {"operator.crt", cert},
                              {"operator.key", key}};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(files); i++)
        if (moat_tls_write_pem(h_fmt("%s/%s", certs, files[i][0]),
                               files[i][1]) != MOAT_OK)
            fail_msg("harness: cannot write %s", files[i][0]);
    if (moat_tls_load(h_fmt("%s/operator.crt", certs),
                      h_fmt("%s/operator.key", certs),
                      h_fmt("%s/ca.crt", certs)) != MOAT_OK)
        fail_msg("harness: cannot load the operator's TLS identity");
    free(ca_cert);
    free(ca_key);
    free(cert);
    free(key);
    free(certs);
    free(var);
    free(dir);
}

/* The gateway's default upstream timeout, scaled in test deployments. */
#define GATEWAY_TIMEOUT_MS 2000

void h_deployment_write_free_ports(const char *src, const char *dst,
                                   const char *name, char *gw_url,
                                   size_t gw_len)
{
    json_error_t err;
    json_t *root = json_load_file(src, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        fail_msg("cannot read %s: %s", src, err.text);
    json_t *services = json_object_get(root, "services");
    /* Every address of every service (several for a service with
     * instances, "listen" an array) moves to a free port of its own. */
    size_t n = 0, cap = 0;
    char **from = NULL, **to = NULL;
    size_t si;
    json_t *svc0;
    json_array_foreach(services, si, svc0)
    {
        json_t *listen = json_object_get(svc0, "listen");
        json_t *addrs = json_is_array(listen) ? json_incref(listen)
                                              : json_pack("[O]", listen);
        size_t k;
        json_t *a;
        json_array_foreach(addrs, k, a)
        {
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                from = realloc(from, cap * sizeof(*from));
                to = realloc(to, cap * sizeof(*to));
                assert_non_null(from);
                assert_non_null(to);
            }
            from[n] = strdup(json_string_value(a));
            to[n] = strdup(h_fmt("127.0.0.1:%u", (unsigned)h_free_port()));
            json_array_set_new(addrs, k, json_string(to[n]));
            if (k == 0 && json_array_size(json_object_get(svc0, "routes")))
                snprintf(gw_url, gw_len, "%s://%s",
                         json_is_true(json_object_get(root, "tls")) ? "https"
                                                                    : "http",
                         to[n]);
            n++;
        }
        json_object_set(svc0, "listen",
                        json_is_array(listen) ? addrs
                                              : json_array_get(addrs, 0));
        json_decref(addrs);
    }
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        const char *key;
        json_t *val;
        json_object_foreach(json_object_get(svc, "env"), key, val)
        {
            char *v = strdup(json_string_value(val));
            for (size_t k = 0; k < n; k++) {
                char *r = replace_all(v, from[k], to[k]);
                free(v);
                v = r;
            }
            json_object_set_new(json_object_get(svc, "env"), key,
                                json_string(v));
            free(v);
        }
    }
    /* The gateway's upstream timeout (2 s by default) scaled as the tests'
     * own waits: on a loaded machine one Argon2id hash in users can
     * outlast 2 s, and then no sign-up or login gets through. */
    json_array_foreach(services, i, svc)
    {
        json_t *env = json_object_get(svc, "env");
        if (json_array_size(json_object_get(svc, "routes")) && env &&
            !json_object_get(env, "MOAT_GATEWAY_TIMEOUT_MS"))
            json_object_set_new(
                env, "MOAT_GATEWAY_TIMEOUT_MS",
                json_string(h_fmt("%u", h_scaled_ms(GATEWAY_TIMEOUT_MS))));
    }
    /* The servers moat up runs beside the services move too: Redis
     * ("redis" without a "url"), the PostgreSQL cluster and the broker. */
    json_t *redis = json_object_get(root, "redis");
    if (json_is_object(redis) && !json_object_get(redis, "url"))
        json_object_set_new(
            redis, "listen",
            json_string(h_fmt("127.0.0.1:%u", (unsigned)h_free_port())));
    json_t *pg = json_object_get(root, "postgres");
    if (json_is_object(pg))
        json_object_set_new(
            pg, "listen",
            json_string(h_fmt("127.0.0.1:%u", (unsigned)h_free_port())));
    json_t *js = json_object_get(root, "jetstream");
    if (json_is_object(js) && !json_object_get(js, "url")) {
        json_object_set_new(
            js, "listen",
            json_string(h_fmt("127.0.0.1:%u", (unsigned)h_free_port())));
        json_object_set_new(
            js, "monitor",
            json_string(h_fmt("127.0.0.1:%u", (unsigned)h_free_port())));
    }
    if (name)
        json_object_set_new(root, "name", json_string(name));
    json_object_set_new(root, "var_dir", json_string("var"));
    assert_int_equal(json_dump_file(root, dst, JSON_INDENT(2)), 0);
    if (json_is_true(json_object_get(root, "tls")))
        operator_identity(dst);
    for (size_t k = 0; k < n; k++) {
        free(from[k]);
        free(to[k]);
    }
    free(from);
    free(to);
    json_decref(root);
}

void h_print_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    while (f && fgets(line, sizeof(line), f))
        fputs(line, stderr);
    if (f)
        fclose(f);
}

static bool gateway_ready(void *arg)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/readyz", (const char *)arg));
    bool ok = r.status == 200;
    h_resp_release(&r);
    return ok;
}

/* For h_wait_until: the gateway answers, or moat up has exited (a start
 * that failed: no point in waiting for the rest of the timeout). */
struct up_wait {
    const char *gw_url;
    pid_t pid;
    bool exited;
};

static bool up_ready_or_gone(void *arg)
{
    struct up_wait *w = arg;
    if (waitpid(w->pid, NULL, WNOHANG) == w->pid) {
        w->exited = true;
        return true;
    }
    return gateway_ready((void *)w->gw_url);
}

pid_t h_moat_up(const char *file, const char *dir, const char *gw_url)
{
    char *log = moat_xasprintf("%s/up.log", dir);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr))
            _exit(126);
        execl(MOAT_BIN_DIR "/moat", "moat", "up", "-f", file, (char *)NULL);
        _exit(127);
    }
    struct up_wait w = {.gw_url = gw_url, .pid = pid};
    if (pid > 0 && (!h_wait_until(up_ready_or_gone, &w, 30000) || w.exited)) {
        h_print_file(log);
        fprintf(stderr, "harness: the deployment %s did not come up%s\n", file,
                w.exited ? " (moat up exited)" : "");
        if (!w.exited)
            h_moat_down(&pid);
        pid = -1;
    }
    free(log);
    return pid;
}

void h_moat_down(pid_t *pid)
{
    if (*pid > 0) {
        kill(*pid, SIGTERM);
        waitpid(*pid, NULL, 0);
    }
    *pid = 0;
}

long h_chaos_drill(const char *file, const char *dir, int seconds, int rate,
                   const char *extra, char **text)
{
    const char *seed = getenv("MOAT_TEST_SEED");
    int st = -1;
    char *out = h_run_capture(
        h_fmt("%s/moat chaos --file %s --setup --duration %d --rate %d %s%s%s "
              "2>&1",
              MOAT_BIN_DIR, file, seconds, rate, extra, seed ? " --seed " : "",
              seed ? seed : ""),
        &st);
    /* The drill's report is the test's log, pass or fail. */
    fputs(out, stderr);
    if (st != 0)
        h_print_file(h_fmt("%s/up.log", dir));
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "result: 0 violations"));
    const char *acc = strstr(out, "moat chaos: orders placed ");
    assert_non_null(acc);
    acc = strstr(acc, "accepted ");
    assert_non_null(acc);
    long accepted = strtol(acc + strlen("accepted "), NULL, 10);
    fprintf(stderr, "accepted orders: %ld\n", accepted);
    /* Faults really happened. */
    assert_null(strstr(out, "faults: 0 SIGKILL, 0 SIGSTOP"));
    if (text)
        *text = out;
    else
        free(out);
    return accepted;
}
