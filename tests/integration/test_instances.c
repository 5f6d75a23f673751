/*
 * Several instances of a service under the real `moat up`
 * (docs/operations.md "Several instances"): two gateways and two catalog
 * instances sharing catalog's SQLite database, users for the admin's
 * token and search following catalog's feed.
 *
 *   - an event written through either catalog instance reaches search
 *     promptly (the other instance's feed is woken across processes, not
 *     after the long poll's timeout);
 *   - under load through both gateways (GETs of products and creates
 *     carrying an Idempotency-Key) catalog#1 is SIGKILLed: no GET fails
 *     (the gateway retries once on the other instance), no create fails
 *     beyond the in-flight retries, the supervisor restarts the instance
 *     and it gets traffic again (the gateways' per-instance counters);
 *   - after the kill, a new product still reaches search (its feed moved
 *     to the live instance).
 */
#include "moat/common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "moat/auth.h"

#define LOAD_THREADS 4 /* two per gateway */
#define PROPAGATE_MS 5000
#define NATS_SERVER  "/usr/sbin/nats-server" /* what moat up runs */

static struct {
    char *dir;
    char file[512];
    uint16_t catalog[2], gateway[2], users, search[2], nolease[2];
    char gw[2][64];
    pid_t up_pid;
    char token[2048]; /* "Authorization: Bearer ..." */
    char product[64]; /* an existing product id */
} F;

static int setup(void **state)
{
    MOAT_UNUSED(state);
    F.dir = h_tmpdir_new("instances");
    snprintf(F.file, sizeof(F.file), "%s/moat.json", F.dir);
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    h_moat_down(&F.up_pid);
    h_kill_all();
    h_rmtree(F.dir);
    free(F.dir);
    return 0;
}

/* With jetstream, events travel through a nats-server moat up runs. */
static void write_deployment(bool jetstream)
{
    char transport[160] = "";
    if (jetstream)
        snprintf(transport, sizeof(transport),
                 "\"transport\": \"jetstream\", \"jetstream\": {\"listen\": "
                 "\"127.0.0.1:%u\", \"monitor\": \"127.0.0.1:%u\"}, ",
                 (unsigned)h_free_port(), (unsigned)h_free_port());
    F.catalog[0] = h_free_port();
    F.catalog[1] = h_free_port();
    F.users = h_free_port();
    for (int i = 0; i < 2; i++) {
        F.search[i] = h_free_port();
        F.nolease[i] = h_free_port();
    }
    F.gateway[0] = h_free_port();
    F.gateway[1] = h_free_port();
    for (int i = 0; i < 2; i++)
        snprintf(F.gw[i], sizeof(F.gw[i]), "http://127.0.0.1:%u",
                 (unsigned)F.gateway[i]);
    char text[6144];
    snprintf(
        text, sizeof(text),
        "{\"name\": \"instances\", %s\"services\": ["
        "{\"name\": \"catalog\", \"listen\": [\"127.0.0.1:%u\", "
        "\"127.0.0.1:%u\"], \"engine\": \"sqlite\", \"db\": \"catalog.db\"},"
        "{\"name\": \"users\", \"listen\": \"127.0.0.1:%u\", \"engine\": "
        "\"sqlite\", \"db\": \"users.db\", \"env\": "
        "{\"MOAT_USERS_ADMIN_EMAIL\": \"admin@moat.local\"}, \"secrets\": "
        "[\"MOAT_JWT_SECRET\", \"MOAT_USERS_ADMIN_PASSWORD\"]},"
        "{\"name\": \"search\", \"listen\": [\"127.0.0.1:%u\", "
        "\"127.0.0.1:%u\"], \"engine\": \"sqlite\", \"db\": \"search.db\", "
        "\"calls\": [\"catalog\"], \"env\": {\"MOAT_SEARCH_CATALOG_URL\": "
        "\"http://127.0.0.1:%u\"}},"
        "{\"name\": \"nolease\", \"binary\": \"search\", \"listen\": "
        "[\"127.0.0.1:%u\", \"127.0.0.1:%u\"], \"engine\": \"sqlite\", "
        "\"db\": \"search.db\", \"calls\": [\"catalog\"], \"env\": "
        "{\"MOAT_SEARCH_CATALOG_URL\": \"http://127.0.0.1:%u\", "
        "\"MOAT_CONSUMER_LEASE\": \"0\"}},"
        "{\"name\": \"gateway\", \"listen\": [\"127.0.0.1:%u\", "
        "\"127.0.0.1:%u\"], \"engine\": \"none\", \"secrets\": "
        "[\"MOAT_JWT_SECRET\"], \"env\": {\"MOAT_GATEWAY_TIMEOUT_MS\": "
        "\"%u\", \"MOAT_GATEWAY_RATE\": \"0\"}, \"routes\": ["
        "{\"prefix\": \"/api/v1/products\", \"service\": \"catalog\", "
        "\"path\": \"/v1/products\", \"public\": [\"GET\"]},"
        "{\"prefix\": \"/api/v1/auth\", \"service\": \"users\", \"path\": "
        "\"/v1/auth\", \"public\": [\"POST\"]},"
        "{\"prefix\": \"/api/v1/search\", \"service\": \"search\", "
        "\"path\": \"/v1/search\", \"public\": [\"GET\"]}]}]}",
        transport, (unsigned)F.catalog[0], (unsigned)F.catalog[1],
        (unsigned)F.users, (unsigned)F.search[0], (unsigned)F.search[1],
        (unsigned)F.catalog[0], (unsigned)F.nolease[0], (unsigned)F.nolease[1],
        (unsigned)F.catalog[0], (unsigned)F.gateway[0], (unsigned)F.gateway[1],
        h_scaled_ms(5000));
    h_write_file(F.file, text);
}

static const char *deployment_secret(const char *section, const char *name)
{
    json_t *s = json_load_file(h_fmt("%s/var/secrets.json", F.dir), 0, NULL);
    assert_non_null(s);
    const char *v =
        json_string_value(json_object_get(json_object_get(s, section), name));
    assert_non_null(v);
    v = h_fmt("%s", v);
    json_decref(s);
    return v;
}

static bool ready(void *arg)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/readyz", (const char *)arg));
    bool ok = r.status == 200;
    h_resp_release(&r);
    return ok;
}

static void login(void)
{
    const char *pw = deployment_secret("shared", "MOAT_USERS_ADMIN_PASSWORD");
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/api/v1/auth/login", F.gw[0]),
                h_fmt("{\"email\": \"admin@moat.local\", \"password\": "
                      "\"%s\"}",
                      pw),
                NULL);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    snprintf(F.token, sizeof(F.token), "Authorization: Bearer %s",
             h_jstr(j, "access_token"));
    json_decref(j);
    h_resp_release(&r);
}

/* POST a product through gateway gw; returns the status, *id its id. */
static long create(int gw, const char *sku, const char *key, char *id,
                   size_t idlen)
{
    char url[128], body[512], idem[128];
    snprintf(url, sizeof(url), "%s/api/v1/products", F.gw[gw]);
    snprintf(body, sizeof(body),
             "{\"sku\": \"%s\", \"name\": \"Widget %s\", \"price\": "
             "{\"amount\": 1250, \"currency\": \"EUR\"}}",
             sku, sku);
    snprintf(idem, sizeof(idem), "Idempotency-Key: %s", key);
    const char *hdrs[] = {F.token, idem, NULL};
    struct h_resp r;
    h_send_json(&r, "POST", url, body, hdrs);
    long st = r.status;
    if (st == 201 && id) {
        json_t *j = h_resp_json(&r);
        snprintf(id, idlen, "%s", h_jstr(j, "id"));
        json_decref(j);
    }
    h_resp_release(&r);
    return st;
}

/* Whether search (through gateway 0) finds the product named "Widget
 * <sku>". */
static bool indexed(void *arg)
{
    char url[256];
    snprintf(url, sizeof(url), "%s/api/v1/search?q=%s", F.gw[0],
             (const char *)arg);
    char name[128];
    snprintf(name, sizeof(name), "Widget %s", (const char *)arg);
    struct h_resp r;
    h_get(&r, url);
    bool found = r.status == 200 && strstr(r.body, name);
    h_resp_release(&r);
    return found;
}

/* A new product, created through gateway gw, is found by search within
 * PROPAGATE_MS (the long poll alone would take up to 25 s). */
static void assert_propagates_within(int gw, const char *sku, unsigned ms)
{
    char id[64];
    assert_int_equal(create(gw, sku, sku, id, sizeof(id)), 201);
    uint64_t t0 = moat_mono_ms();
    if (!h_wait_until(indexed, (void *)sku, ms))
        fail_msg("product %s did not reach search within %u ms", sku, ms);
    fprintf(stderr, "%s reached search in %llu ms\n", sku,
            (unsigned long long)(moat_mono_ms() - t0));
}

static void assert_propagates(int gw, const char *sku)
{
    assert_propagates_within(gw, sku, PROPAGATE_MS);
}

/* ---- load ---- */

static atomic_bool stop;
static atomic_long gets, get_failures, posts, post_failures, post_conflicts;

static void *load(void *arg)
{
    int n = (int)(intptr_t)arg;
    int gw = n % 2;
    char url[256];
    snprintf(url, sizeof(url), "%s/api/v1/products/%s", F.gw[gw], F.product);
    for (long i = 0; !atomic_load(&stop); i++) {
        if (i % 5 == 4) {
            char sku[64];
            snprintf(sku, sizeof(sku), "LOAD-%d-%ld-%d", n, i, (int)getpid());
            long st = create(gw, sku, sku, NULL, 0);
            atomic_fetch_add(&posts, 1);
            /* 409: the SKU exists, i.e. an earlier attempt of this very
             * create committed before its instance died (the retry found
             * it); anything else is a failure. */
            if (st == 409)
                atomic_fetch_add(&post_conflicts, 1);
            else if (st != 201) {
                atomic_fetch_add(&post_failures, 1);
                fprintf(stderr, "create %s: status %ld\n", sku, st);
            }
            continue;
        }
        struct h_resp r;
        h_get(&r, url);
        atomic_fetch_add(&gets, 1);
        if (r.status != 200) {
            atomic_fetch_add(&get_failures, 1);
            fprintf(stderr, "GET via gateway %d: status %ld %.200s\n", gw,
                    r.status, r.body ? r.body : "");
        }
        h_resp_release(&r);
    }
    return NULL;
}

/* A sample of the /metrics of the service aud at base_url, read as the
 * operator; 0 when absent. */
static double metric(const char *base_url, const char *aud, const char *series)
{
    struct moat_auth *a = NULL;
    char *token = NULL;
    setenv("MOAT_SERVICE_KEY", deployment_secret("service_keys", "operator"),
           1);
    assert_int_equal(moat_auth_load(&a, "operator"), MOAT_OK);
    assert_int_equal(moat_auth_token(a, aud, NULL, &token), MOAT_OK);
    moat_auth_free(a);
    unsetenv("MOAT_SERVICE_KEY");
    char hdr[2048], url[128];
    snprintf(hdr, sizeof(hdr), "%s: %s", MOAT_SERVICE_TOKEN_HEADER, token);
    free(token);
    snprintf(url, sizeof(url), "%s/metrics", base_url);
    const char *hdrs[] = {hdr, NULL};
    struct h_resp r;
    h_http(&r, "GET", url, hdrs, NULL, 0);
    double v = h_metric_sample(r.status == 200 ? r.body : NULL, series, 0);
    h_resp_release(&r);
    return v;
}

static double gw_metric(int gw, const char *series)
{
    return metric(F.gw[gw], "gateway", series);
}

/* Catalog events applied by instance i of a search service at ports. */
static double applied(const char *aud, const uint16_t *ports, int i)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", (unsigned)ports[i]);
    return metric(url, aud, "moat_consumer_applied_total{source=\"catalog\"}");
}

/* Calls both gateways sent to catalog instance i. */
static double instance_calls(int i)
{
    const char *s = h_fmt("moat_gateway_instance_requests_total{service="
                          "\"catalog\",instance=\"http://127.0.0.1:%u\"}",
                          (unsigned)F.catalog[i]);
    char series[256];
    snprintf(series, sizeof(series), "%s", s);
    return gw_metric(0, series) + gw_metric(1, series);
}

/* The pid and status of the process labelled label ("catalog#1") in
 * var/moat.state. */
static pid_t state_pid(const char *label, char *status, size_t len)
{
    json_t *st = json_load_file(h_fmt("%s/var/moat.state", F.dir), 0, NULL);
    pid_t pid = 0;
    size_t i;
    json_t *s;
    status[0] = '\0';
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        if (strcmp(h_jstr(s, "label"), label) == 0) {
            pid = (pid_t)h_jint(s, "pid");
            snprintf(status, len, "%s", h_jstr(s, "status"));
        }
    }
    json_decref(st);
    return pid;
}

struct restarted {
    const char *label;
    pid_t old;
};

static bool restarted_ready(void *arg)
{
    struct restarted *r = arg;
    char status[32];
    pid_t pid = state_pid(r->label, status, sizeof(status));
    return pid > 0 && pid != r->old && strcmp(status, "ready") == 0;
}

struct all_applied {
    double want, got;
};

/* Every catalog event applied once by the two lease-less instances. */
static bool nolease_caught_up(void *arg)
{
    struct all_applied *a = arg;
    a->got =
        applied("nolease", F.nolease, 0) + applied("nolease", F.nolease, 1);
    return a->got >= a->want;
}

static bool has_calls(void *arg)
{
    double *before = arg;
    return instance_calls(0) > *before + 10;
}

static void test_instances(void **state)
{
    MOAT_UNUSED(state);
    write_deployment(false);
    F.up_pid = h_moat_up(F.file, F.dir, F.gw[0]);
    if (F.up_pid < 0)
        fail_msg("the deployment did not come up");
    if (!h_wait_until(ready, F.gw[1], 20000))
        fail_msg("the second gateway did not become ready");

    /* moat status lists each instance. */
    int ex = 0;
    char *out = h_run_capture(
        h_fmt("%s/moat status -f %s 2>&1", MOAT_BIN_DIR, F.file), &ex);
    fputs(out, stderr);
    assert_int_equal(ex, 0);
    assert_non_null(strstr(out, "catalog#2"));
    assert_non_null(strstr(out, "gateway#2"));
    free(out);

    login();
    assert_int_equal(create(0, "FIRST", "first", F.product, sizeof(F.product)),
                     201);
    /* Sequential creates alternate between the instances. */
    char sku[64];
    for (int i = 0; i < 4; i++) {
        snprintf(sku, sizeof(sku), "PROP%d", i);
        assert_propagates(i % 2, sku);
    }

    pthread_t th[LOAD_THREADS];
    for (int i = 0; i < LOAD_THREADS; i++)
        assert_int_equal(
            pthread_create(&th[i], NULL, load, (void *)(intptr_t)i), 0);
    h_sleep_ms(1500);
    char status[32];
    struct restarted rs = {.label = "catalog#1"};
    rs.old = state_pid(rs.label, status, sizeof(status));
    assert_true(rs.old > 0);
    fprintf(stderr, "SIGKILL catalog#1 (pid %d) after %ld requests\n",
            (int)rs.old, atomic_load(&gets) + atomic_load(&posts));
    assert_int_equal(kill(rs.old, SIGKILL), 0);
    if (!h_wait_until(restarted_ready, &rs, 20000))
        fail_msg("catalog#1 was not restarted");
    double before = instance_calls(0);
    if (!h_wait_until(has_calls, &before, 10000))
        fail_msg("the restarted catalog#1 gets no traffic (%.0f calls)",
                 instance_calls(0) - before);
    atomic_store(&stop, true);
    for (int i = 0; i < LOAD_THREADS; i++)
        pthread_join(th[i], NULL);

    const char *rt = "moat_gateway_retries_total{service=\"catalog\"}";
    double retries = gw_metric(0, rt) + gw_metric(1, rt);
    fprintf(stderr,
            "load: %ld GETs (%ld failed), %ld creates (%ld failed, %ld found "
            "committed by the killed instance); gateway retries %.0f; calls "
            "to catalog#1 %.0f, catalog#2 %.0f\n",
            atomic_load(&gets), atomic_load(&get_failures), atomic_load(&posts),
            atomic_load(&post_failures), atomic_load(&post_conflicts), retries,
            instance_calls(0), instance_calls(1));
    assert_true(atomic_load(&gets) > 50);
    assert_int_equal(atomic_load(&get_failures), 0);
    assert_int_equal(atomic_load(&post_failures), 0);
    assert_true(atomic_load(&post_conflicts) <= (long)retries);

    /* The feed follows the instances: writes through both reach search. */
    assert_propagates(0, "AFTER0");
    assert_propagates(1, "AFTER1");

    /* Consumers. With the lease one search instance follows catalog, the
     * other waits; without it both pull and each event is still applied
     * once (the cursor is read again under the write lock). */
    double a0 = applied("search", F.search, 0);
    double a1 = applied("search", F.search, 1);
    struct all_applied all = {
        .want = metric(h_fmt("http://127.0.0.1:%u", (unsigned)F.catalog[1]),
                       "catalog", "moat_outbox_head_seq")};
    bool caught_up = h_wait_until(nolease_caught_up, &all, 10000);
    fprintf(stderr,
            "catalog events %.0f; applied by search#1 %.0f, search#2 %.0f; "
            "by nolease#1 %.0f + nolease#2 %.0f\n",
            all.want, a0, a1, applied("nolease", F.nolease, 0),
            applied("nolease", F.nolease, 1));
    assert_true(caught_up);
    assert_true(all.got == all.want); /* none twice */
    assert_true((a0 > 0) != (a1 > 0));
    assert_true(a0 + a1 == all.want);

    /* The holder dies: the other instance takes the lease over and carries
     * on from the committed cursor, applying only what is new. */
    struct restarted srs = {.label = a0 > 0 ? "search#1" : "search#2"};
    srs.old = state_pid(srs.label, status, sizeof(status));
    assert_true(srs.old > 0);
    assert_int_equal(kill(srs.old, SIGKILL), 0);
    assert_propagates(0, "TAKEOVER0");
    assert_propagates(1, "TAKEOVER1");
    if (!h_wait_until(restarted_ready, &srs, 20000))
        fail_msg("%s was not restarted", srs.label);
    double b0 = applied("search", F.search, 0);
    double b1 = applied("search", F.search, 1);
    fprintf(stderr, "after the kill: applied by search#1 %.0f, search#2 %.0f\n",
            b0, b1);
    /* The survivor had applied nothing before; the restarted one starts
     * counting from 0: together exactly the two new events. */
    assert_true(b0 + b1 == 2);
}

/*
 * The same two-instance search on JetStream: both instances bind the same
 * durable pull consumer, the lease lets one fetch; when it dies the other
 * (or its restart) takes over the durable, and new events still arrive.
 */
static void test_instances_jetstream(void **state)
{
    MOAT_UNUSED(state);
    if (access(NATS_SERVER, X_OK) != 0) {
        fprintf(stderr, "%s is missing: skipping\n", NATS_SERVER);
        skip();
    }
    write_deployment(true);
    F.up_pid = h_moat_up(F.file, F.dir, F.gw[0]);
    if (F.up_pid < 0)
        fail_msg("the deployment did not come up");
    if (!h_wait_until(ready, F.gw[1], 20000))
        fail_msg("the second gateway did not become ready");
    login();
    assert_propagates(0, "JS0");
    assert_propagates(1, "JS1");
    double a0 = applied("search", F.search, 0);
    double a1 = applied("search", F.search, 1);
    fprintf(stderr, "jetstream: applied by search#1 %.0f, search#2 %.0f\n", a0,
            a1);
    assert_true((a0 > 0) != (a1 > 0));
    char status[32];
    struct restarted srs = {.label = a0 > 0 ? "search#1" : "search#2"};
    srs.old = state_pid(srs.label, status, sizeof(status));
    assert_true(srs.old > 0);
    assert_int_equal(kill(srs.old, SIGKILL), 0);
    /* Up to the broker's redelivery of what the dead holder fetched, or
     * the source reading that gap from catalog's own feed. */
    assert_propagates_within(0, "JSTAKEOVER0", h_scaled_ms(40000));
    assert_propagates_within(1, "JSTAKEOVER1", h_scaled_ms(40000));
    double b0 = applied("search", F.search, 0);
    double b1 = applied("search", F.search, 1);
    fprintf(stderr, "jetstream after the kill: search#1 %.0f, search#2 %.0f\n",
            b0, b1);
}

static int per_test_setup(void **state)
{
    memset(&F, 0, sizeof(F));
    atomic_store(&stop, false);
    return setup(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_instances, per_test_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_instances_jetstream,
                                        per_test_setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
