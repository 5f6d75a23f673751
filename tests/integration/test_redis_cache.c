/*
 * Integration tests of the gateway's read cache (services/gateway/cache.c,
 * docs/gateway.md "Read cache"): real catalog, real gateways, a real
 * redis-server that this test runs (and kills, and runs again).
 *
 *   - a second GET of a product is answered from Redis: catalog's request
 *     counter does not move;
 *   - a profile (users and profiles run too) is cached and its update
 *     seen; /profiles/me is never cached;
 *   - an update or a delete through the API is seen within the feed's lag;
 *   - Redis killed: every GET still succeeds, from catalog; Redis back:
 *     hits resume; Redis hung (SIGSTOP): reads time out into catalog until
 *     the circuit opens, then skip Redis, and hits resume after SIGCONT;
 *   - an invalidation that arrives while a miss is in flight refuses the
 *     miss's old value (a second gateway holds its fills back with the
 *     MOAT_TEST_HOOKS delay, so the order is forced, and the test checks
 *     that it happened).
 */
#include "moat/common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define REDIS_PASSWORD "moat-test-cache-password"
#define FILL_DELAY_MS  1000 /* gw2 holds each fill this long (scaled) */

static struct {
    char *tmp, *tmp2; /* tmp2: gw2's log, apart from the first one's */
    char *cat_data;
    struct h_service cat, gw, gw2, users, profiles;
    char *users_data, *profiles_data;
    char env_users[128];
    pid_t redis_pid;
    uint16_t redis_port;
    char conf[512];
    char env_routes[1024], env_redis[128], env_pwfile[512], env_delay[96];
    int seq;
} F;

/* ---- redis-server ---- */

static char *redis_cli(const char *args)
{
    int st = 0;
    char *out =
        h_run_capture(h_fmt("REDISCLI_AUTH=%s redis-cli -p %u %s "
                            "2>&1",
                            REDIS_PASSWORD, (unsigned)F.redis_port, args),
                      &st);
    return out;
}

static bool redis_pong(void)
{
    char *out = redis_cli("PING");
    bool ok = strncmp(out, "PONG", 4) == 0;
    free(out);
    return ok;
}

static void redis_start(void)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execlp("redis-server", "redis-server", F.conf, (char *)NULL);
        _exit(127);
    }
    F.redis_pid = pid;
    H_WAIT_UNTIL(redis_pong(), H_WAIT_MS, "redis-server on port %u",
                 (unsigned)F.redis_port);
}

static void redis_kill(void)
{
    if (F.redis_pid <= 0)
        return;
    kill(F.redis_pid, SIGKILL);
    waitpid(F.redis_pid, NULL, 0);
    F.redis_pid = 0;
}

/* ---- helpers ---- */

static const char *gw_product(const struct h_service *gw, const char *id)
{
    return h_fmt("%s/api/v1/products/%s", gw->url, id);
}

static double cat_gets(void)
{
    return h_metric(F.cat.url,
                    "moat_http_requests_total{route=\"/v1/"
                    "products/{id}\",method=\"GET\",status=\"200\"}");
}

static double gw_metric(const struct h_service *gw, const char *series)
{
    double v = h_metric(gw->url, series);
    return v < 0 ? 0 : v;
}

/* Create a product through catalog itself; returns its id (h_fmt buffer
 * copied by the caller). */
static char *make_product(const char *name)
{
    char body[256];
    snprintf(body, sizeof(body),
             "{\"sku\":\"CACHE-%d-%d\",\"name\":\"%s\",\"price\":{\"amount\":"
             "1000,\"currency\":\"EUR\"}}",
             (int)getpid(), ++F.seq, name);
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.cat.url), body, NULL);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    char *id = moat_xstrdup(h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    return id;
}

/* PATCH the product's name through url (gateway or catalog), If-Match the
 * version given. */
static void rename_at(const char *url, const char *name, int version)
{
    char body[128], im[64];
    snprintf(body, sizeof(body), "{\"name\":\"%s\"}", name);
    snprintf(im, sizeof(im), "If-Match: \"v%d\"", version);
    const char *hdrs[] = {"Content-Type: application/merge-patch+json", im,
                          NULL};
    struct h_resp r;
    h_http(&r, "PATCH", url, hdrs, body, strlen(body));
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

/* What a GET answered. */
struct got {
    long status;
    char name[64];
    char cache[16];
};

/* GET url: status, the string field of the body and Moat-Cache. */
static struct got get_field(const char *url, const char *field)
{
    struct got g = {0};
    struct h_resp r;
    h_get(&r, url);
    g.status = r.status;
    const char *mc = h_resp_header(&r, "Moat-Cache");
    snprintf(g.cache, sizeof(g.cache), "%s", mc ? mc : "");
    if (r.status == 200) {
        json_t *j = h_resp_json(&r);
        const char *v = h_jstr(j, field);
        snprintf(g.name, sizeof(g.name), "%s", v ? v : "");
        json_decref(j);
    }
    h_resp_release(&r);
    return g;
}

static struct got get(const char *url)
{
    return get_field(url, "name");
}

static bool is_hit(const char *url)
{
    return strcmp(get(url).cache, "hit") == 0;
}

static bool synced(const struct h_service *gw)
{
    return gw_metric(gw, "moat_gateway_cache_synced{source=\"catalog\"}") == 1;
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("redis-cache");
    F.cat_data = moat_xasprintf("%s/catalog-data", F.tmp);
    F.redis_port = h_free_port();
    snprintf(F.conf, sizeof(F.conf), "%s/redis.conf", F.tmp);
    h_write_file(F.conf,
                 h_fmt("bind 127.0.0.1\nport %u\nprotected-mode yes\n"
                       "requirepass %s\nsave \"\"\nappendonly no\n"
                       "maxmemory 32mb\nmaxmemory-policy volatile-lru\n"
                       "dir %s\nlogfile %s/redis.log\n",
                       (unsigned)F.redis_port, REDIS_PASSWORD, F.tmp, F.tmp));
    char *pw = moat_xasprintf("%s/redis.password", F.tmp);
    h_write_file(pw, REDIS_PASSWORD "\n");
    redis_start();

    if (h_service_start(&F.cat, "catalog", F.tmp, F.cat_data, NULL) != 0)
        return -1;
    F.users_data = moat_xasprintf("%s/users-data", F.tmp);
    F.profiles_data = moat_xasprintf("%s/profiles-data", F.tmp);
    if (h_service_start(&F.users, "users", F.tmp, F.users_data, NULL) != 0)
        return -1;
    snprintf(F.env_users, sizeof(F.env_users), "MOAT_PROFILES_USERS_URL=%s",
             F.users.url);
    const char *pro_env[] = {F.env_users, NULL};
    if (h_service_start(&F.profiles, "profiles", F.tmp, F.profiles_data,
                        pro_env) != 0)
        return -1;
    snprintf(F.env_routes, sizeof(F.env_routes),
             "MOAT_GATEWAY_ROUTES=/api/v1/products=catalog@%s/v1/products,"
             "/api/v1/profiles=profiles@%s/v1/profiles",
             F.cat.url, F.profiles.url);
    snprintf(F.env_redis, sizeof(F.env_redis),
             "MOAT_REDIS_URL=redis://127.0.0.1:%u", (unsigned)F.redis_port);
    snprintf(F.env_pwfile, sizeof(F.env_pwfile), "MOAT_REDIS_PASSWORD_FILE=%s",
             pw);
    free(pw);
    snprintf(F.env_delay, sizeof(F.env_delay),
             "MOAT_TEST_GATEWAY_CACHE_FILL_DELAY_MS=%u",
             h_scaled_ms(FILL_DELAY_MS));
    const char *gw_env[] = {F.env_routes,
                            F.env_redis,
                            F.env_pwfile,
                            "MOAT_GATEWAY_PUBLIC=GET /api/v1/products,GET "
                            "/api/v1/profiles",
                            "MOAT_GATEWAY_RATE=0",
                            "MOAT_GATEWAY_BREAKER_COOLDOWN_MS=200",
                            NULL};
    if (h_service_start(&F.gw, "gateway", F.tmp, NULL, gw_env) != 0)
        return -1;
    /* The second gateway shares Redis and holds every fill back. */
    const char *gw2_env[] = {F.env_routes,
                             F.env_redis,
                             F.env_pwfile,
                             F.env_delay,
                             "MOAT_GATEWAY_PUBLIC=GET /api/v1/products",
                             "MOAT_GATEWAY_RATE=0",
                             NULL};
    F.tmp2 = h_tmpdir_new("redis-cache-gw2");
    if (h_service_start(&F.gw2, "gateway", F.tmp2, NULL, gw2_env) != 0)
        return -1;
    /* Writes are for administrators. */
    h_auto_header(F.gw.url, h_user_token("usr_admin", "admin", 3600));
    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    H_WAIT_UNTIL(synced(&F.gw) && synced(&F.gw2) &&
                     gw_metric(&F.gw, "moat_gateway_cache_synced{source="
                                      "\"profiles\"}") == 1,
                 H_WAIT_MS, "the gateways following the invalidations");
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int bad = h_service_stop(&F.gw2) != 0;
    bad |= h_service_stop(&F.gw) != 0;
    bad |= h_service_stop(&F.cat) != 0;
    bad |= h_service_stop(&F.profiles) != 0;
    bad |= h_service_stop(&F.users) != 0;
    h_service_release(&F.gw2);
    h_service_release(&F.gw);
    h_service_release(&F.cat);
    h_service_release(&F.profiles);
    h_service_release(&F.users);
    free(F.users_data);
    free(F.profiles_data);
    redis_kill();
    h_auto_headers_clear();
    if (bad)
        h_print_file(h_fmt("%s/redis.log", F.tmp));
    h_rmtree(F.tmp);
    h_rmtree(F.tmp2);
    free(F.tmp);
    free(F.tmp2);
    free(F.cat_data);
    return bad ? -1 : 0;
}

/* ---- tests ---- */

static void test_second_get_is_a_hit(void **state)
{
    MOAT_UNUSED(state);
    char *id = make_product("Cached mug");
    char *url = moat_xstrdup(gw_product(&F.gw, id));
    struct got g = get(url);
    assert_int_equal(g.status, 200);
    assert_string_equal(g.cache, "miss");
    assert_string_equal(g.name, "Cached mug");
    H_WAIT_UNTIL(gw_metric(&F.gw, "moat_gateway_cache_fills_total{result="
                                  "\"stored\"}") >= 1,
                 H_WAIT_MS, "the miss stored");
    double before = cat_gets();
    for (int i = 0; i < 5; i++) {
        g = get(url);
        assert_int_equal(g.status, 200);
        assert_string_equal(g.cache, "hit");
        assert_string_equal(g.name, "Cached mug");
    }
    assert_true(cat_gets() == before);
    /* A hit keeps HTTP's revalidation: a matching If-None-Match is 304. */
    const char *inm[] = {"If-None-Match: \"v1\"", NULL};
    struct h_resp r;
    h_http(&r, "GET", url, inm, NULL, 0);
    h_assert_status(&r, 304);
    assert_string_equal(h_resp_header(&r, "Moat-Cache"), "hit");
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    h_resp_release(&r);
    assert_true(cat_gets() == before);
    free(url);
    free(id);
}

static void test_update_seen_within_feed_lag(void **state)
{
    MOAT_UNUSED(state);
    char *id = make_product("Old name");
    const char *url = moat_xstrdup(gw_product(&F.gw, id));
    const char *url2 =
        moat_xstrdup(h_fmt("%s/api/v2/products/%s", F.gw.url, id));
    assert_string_equal(get(url).name, "Old name");
    assert_int_equal(get(url2).status, 200);
    H_WAIT_UNTIL(is_hit(url) && is_hit(url2), H_WAIT_MS,
                 "v1 and v2 of %s cached", id);
    double inv = gw_metric(&F.gw, "moat_gateway_cache_invalidations_total{"
                                  "source=\"catalog\"}");
    rename_at(url, "New name", 1);
    struct got g = {0};
    H_WAIT_UNTIL((g = get(url), strcmp(g.name, "New name") == 0), H_WAIT_MS,
                 "the new name through the gateway (last: %s, %s)", g.name,
                 g.cache);
    H_WAIT_UNTIL((g = get(url2), strcmp(g.name, "New name") == 0), H_WAIT_MS,
                 "the new name in v2 too");
    assert_true(gw_metric(&F.gw, "moat_gateway_cache_invalidations_total{"
                                 "source=\"catalog\"}") > inv);
    /* And the new version is cached in turn. */
    H_WAIT_UNTIL(is_hit(url), H_WAIT_MS, "v2 of the product cached");
    assert_string_equal(get(url).name, "New name");
    free((char *)url);
    free((char *)url2);
    free(id);
}

static void test_delete_seen(void **state)
{
    MOAT_UNUSED(state);
    char *id = make_product("Doomed");
    const char *url = moat_xstrdup(gw_product(&F.gw, id));
    get(url);
    H_WAIT_UNTIL(is_hit(url), H_WAIT_MS, "%s cached", id);
    const char *im[] = {"If-Match: \"v1\"", NULL};
    struct h_resp r;
    h_http(&r, "DELETE", url, im, NULL, 0);
    assert_true(r.status == 204 || r.status == 200);
    h_resp_release(&r);
    H_WAIT_UNTIL(get(url).status == 404, H_WAIT_MS, "the delete seen");
    free((char *)url);
    free(id);
}

static void test_redis_down_costs_latency_only(void **state)
{
    MOAT_UNUSED(state);
    char *id = make_product("Sturdy");
    const char *url = moat_xstrdup(gw_product(&F.gw, id));
    get(url);
    H_WAIT_UNTIL(is_hit(url), H_WAIT_MS, "%s cached", id);

    redis_kill();
    double before = cat_gets();
    for (int i = 0; i < 20; i++) {
        struct got g = get(url);
        assert_int_equal(g.status, 200);
        assert_string_equal(g.name, "Sturdy");
        assert_string_not_equal(g.cache, "hit");
    }
    /* Every one of them came from catalog. */
    assert_true(cat_gets() >= before + 20);
    /* Changes made while Redis is away are seen at once, of course. */
    rename_at(h_fmt("%s/v1/products/%s", F.cat.url, id), "Sturdier", 1);
    assert_string_equal(get(url).name, "Sturdier");

    redis_start();
    H_WAIT_UNTIL(is_hit(url), H_WAIT_MS, "hits again after Redis is back");
    assert_string_equal(get(url).name, "Sturdier");
    free((char *)url);
    free(id);
}

/* Register an account with users; returns its id (caller frees). */
static char *register_user(void)
{
    char body[256];
    snprintf(body, sizeof(body),
             "{\"email\":\"cache-%d-%d@profiles.test\",\"password\":"
             "\"a long enough password\",\"display_name\":\"Ada\"}",
             (int)getpid(), ++F.seq);
    const char *hdr[] = {h_service_token("users", NULL, NULL), NULL};
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/users", F.users.url), body, hdr);
    h_assert_status(&r, 201);
    json_t *u = h_resp_json(&r);
    char *id = moat_xstrdup(h_jstr(u, "id"));
    json_decref(u);
    h_resp_release(&r);
    return id;
}

static void put_profile(const char *user, const char *name)
{
    char body[256], auth[4096];
    snprintf(body, sizeof(body),
             "{\"display_name\":\"%s\",\"handle\":\"cache_%d_%d\"}", name,
             (int)getpid(), F.seq);
    snprintf(auth, sizeof(auth), "%s", h_user_token(user, "customer", 3600));
    const char *hdr[] = {auth, NULL};
    struct h_resp r;
    h_send_json(&r, "PUT", h_fmt("%s/api/v1/profiles/me", F.gw.url), body, hdr);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

/* GET a profile through the gateway: display name and Moat-Cache. */
static struct got get_profile(const char *url)
{
    return get_field(url, "display_name");
}

static void test_profile_cached_and_invalidated(void **state)
{
    MOAT_UNUSED(state);
    char *id = register_user();
    char *url = moat_xstrdup(h_fmt("%s/api/v1/profiles/%s", F.gw.url, id));
    /* profiles creates it from users' UserRegistered. */
    H_WAIT_UNTIL(get_profile(url).status == 200, H_WAIT_MS, "the profile of %s",
                 id);
    put_profile(id, "First");
    struct got g = {0};
    H_WAIT_UNTIL((g = get_profile(url),
                  strcmp(g.name, "First") == 0 && strcmp(g.cache, "hit") == 0),
                 H_WAIT_MS, "First cached (last: %s, %s)", g.name, g.cache);
    put_profile(id, "Second");
    H_WAIT_UNTIL((g = get_profile(url), strcmp(g.name, "Second") == 0),
                 H_WAIT_MS, "the update seen (last: %s, %s)", g.name, g.cache);
    H_WAIT_UNTIL(strcmp(get_profile(url).cache, "hit") == 0, H_WAIT_MS,
                 "Second cached");
    assert_string_equal(get_profile(url).name, "Second");
    /* The caller's own profile depends on who asks: never cached. */
    char auth[4096];
    snprintf(auth, sizeof(auth), "%s", h_user_token(id, "customer", 3600));
    const char *hdr[] = {auth, NULL};
    for (int i = 0; i < 2; i++) {
        struct h_resp r;
        h_http(&r, "GET", h_fmt("%s/api/v1/profiles/me", F.gw.url), hdr, NULL,
               0);
        h_assert_status(&r, 200);
        assert_null(h_resp_header(&r, "Moat-Cache"));
        h_resp_release(&r);
    }
    free(url);
    free(id);
}

/*
 * A Redis that hangs (SIGSTOP: the kernel still accepts, nothing answers)
 * costs each read the lookup timeout until the circuit opens, then
 * nothing; when it answers again the circuit closes and hits resume.
 */
static void test_redis_slow_opens_the_circuit(void **state)
{
    MOAT_UNUSED(state);
    char *id = make_product("Patient");
    char *url = moat_xstrdup(gw_product(&F.gw, id));
    get(url);
    H_WAIT_UNTIL(is_hit(url), H_WAIT_MS, "%s cached", id);
    double errors = gw_metric(&F.gw, "moat_gateway_cache_requests_total{"
                                     "result=\"error\"}");
    double bypass = gw_metric(&F.gw, "moat_gateway_cache_requests_total{"
                                     "result=\"bypass\"}");
    assert_int_equal(kill(F.redis_pid, SIGSTOP), 0);
    for (int i = 0; i < 12; i++) {
        struct got g = get(url);
        assert_int_equal(g.status, 200);
        assert_string_equal(g.name, "Patient");
        assert_string_not_equal(g.cache, "hit");
    }
    /* The breaker's 5 failures, then reads that skip Redis at once. */
    double e = gw_metric(&F.gw, "moat_gateway_cache_requests_total{result="
                                "\"error\"}") -
               errors;
    assert_true(e >= 5);
    assert_true(gw_metric(&F.gw, "moat_gateway_cache_requests_total{result="
                                 "\"bypass\"}") > bypass);
    assert_int_equal(kill(F.redis_pid, SIGCONT), 0);
    H_WAIT_UNTIL(is_hit(url), H_WAIT_MS, "hits again once Redis answers");
    assert_true(gw_metric(&F.gw, "moat_gateway_cache_circuit_state") == 0);
    free(url);
    free(id);
}

/*
 * The race: gw2's miss reads v1 from catalog and holds the fill; the
 * product is renamed (v2), the invalidation lands (a tombstone of v2),
 * and only then the fill of v1 is offered: it must be refused ("stale"),
 * and the next GETs show v2 from both gateways.
 */
static void test_invalidation_during_miss_refuses_stale_fill(void **state)
{
    MOAT_UNUSED(state);
    H_WAIT_UNTIL(synced(&F.gw2), H_WAIT_MS, "gw2 in sync");
    char *id = make_product("Before the race");
    const char *url2 = moat_xstrdup(gw_product(&F.gw2, id));
    double stale = gw_metric(&F.gw2, "moat_gateway_cache_fills_total{result="
                                     "\"stale\"}");
    double inv = gw_metric(&F.gw2, "moat_gateway_cache_invalidations_total{"
                                   "source=\"catalog\"}");
    uint64_t t0 = moat_mono_ms();
    struct got g = get(url2);
    assert_string_equal(g.cache, "miss");
    assert_string_equal(g.name, "Before the race");
    /* The fill of v1 is now held; v2 is committed and invalidated. */
    rename_at(h_fmt("%s/v1/products/%s", F.cat.url, id), "After the race", 1);
    H_WAIT_UNTIL(gw_metric(&F.gw2, "moat_gateway_cache_invalidations_total{"
                                   "source=\"catalog\"}") > inv,
                 H_WAIT_MS, "the invalidation applied");
    /* The ordering this test is about really happened. */
    assert_true(moat_mono_ms() - t0 < h_scaled_ms(FILL_DELAY_MS));
    H_WAIT_UNTIL(gw_metric(&F.gw2, "moat_gateway_cache_fills_total{result="
                                   "\"stale\"}") > stale,
                 H_WAIT_MS, "the held fill of v1 refused");
    for (int i = 0; i < 3; i++) {
        assert_string_equal(get(url2).name, "After the race");
        assert_string_equal(get(gw_product(&F.gw, id)).name, "After the race");
    }
    free((char *)url2);
    free(id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_second_get_is_a_hit),
        cmocka_unit_test(test_update_seen_within_feed_lag),
        cmocka_unit_test(test_delete_seen),
        cmocka_unit_test(test_profile_cached_and_invalidated),
        cmocka_unit_test(test_invalidation_during_miss_refuses_stale_fill),
        cmocka_unit_test(test_redis_slow_opens_the_circuit),
        cmocka_unit_test(test_redis_down_costs_latency_only),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
