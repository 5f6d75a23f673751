/*
 * `moat up` with a "redis" block (cli/deploy.h): the real supervisor runs
 * redis-server under var/redis from the configuration it writes (no
 * persistence, a memory bound, a password from secrets.json in a 0600
 * file), gives the gateway MOAT_REDIS_URL and the password file, shows
 * Redis in `moat status`, and restarts it when it dies; the gateway's
 * reads are hits, survive the death, and are hits again afterwards.
 */
#include "moat/common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static struct {
    char *dir;
    char file[512];
    char gw_url[64];
    uint16_t redis_port;
    pid_t up_pid;
} F;

static const char *moat_cmd(const char *args)
{
    return h_fmt("%s/moat %s --file %s 2>&1", MOAT_BIN_DIR, args, F.file);
}

/* The row of service name in `moat status --json`; caller decrefs. */
static json_t *status_row(const char *name)
{
    int st = 0;
    char *out = h_run_capture(moat_cmd("status --json"), &st);
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    json_t *row = NULL;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(j, "services"), i, s)
    {
        if (strcmp(h_jstr(s, "name"), name) == 0)
            row = json_incref(s);
    }
    json_decref(j);
    return row;
}

static bool redis_ready(json_int_t not_pid)
{
    json_t *row = status_row("redis");
    bool ok = row && strcmp(h_jstr(row, "health"), "ready") == 0 &&
              json_integer_value(json_object_get(row, "pid")) != not_pid;
    json_decref(row);
    return ok;
}

static const char *cache_of(const char *url, long *status)
{
    static char cache[16];
    struct h_resp r;
    h_get(&r, url);
    *status = r.status;
    const char *mc = h_resp_header(&r, "Moat-Cache");
    snprintf(cache, sizeof(cache), "%s", mc ? mc : "");
    h_resp_release(&r);
    return cache;
}

static bool hit(const char *url)
{
    long status = 0;
    return strcmp(cache_of(url, &status), "hit") == 0 && status == 200;
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 0777;
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.dir = h_tmpdir_new("redis-up");
    /* Placeholder addresses; the harness moves everything, Redis included,
     * to free ports. */
    char src[512];
    snprintf(src, sizeof(src), "%s/cache.src.json", F.dir);
    snprintf(F.file, sizeof(F.file), "%s/cache.json", F.dir);
    h_write_file(
        src,
        h_fmt("{\"name\": \"cachetest\",\n"
              " \"redis\": {\"listen\": \"127.0.0.1:6380\", \"max_memory_mb\": "
              "16},\n"
              " \"services\": [\n"
              "  {\"name\": \"catalog\", \"listen\": \"127.0.0.1:8081\", "
              "\"engine\": \"sqlite\", \"db\": \"catalog.db\"},\n"
              "  {\"name\": \"gateway\", \"listen\": \"127.0.0.1:8080\", "
              "\"engine\": \"none\", \"env\": {\"MOAT_GATEWAY_RATE\": \"0\", "
              "\"MOAT_JWT_SECRET\": \"%s\"},\n"
              "   \"routes\": [{\"prefix\": \"/api/v1/products\", \"service\": "
              "\"catalog\", \"path\": \"/v1/products\", \"public\": "
              "[\"GET\"]}]}]}\n",
              h_test_jwt_secret()));
    h_deployment_write_free_ports(src, F.file, NULL, F.gw_url,
                                  sizeof(F.gw_url));
    json_t *j = json_load_file(F.file, 0, NULL);
    const char *listen =
        h_jstr(json_object_get(j, "redis"), "listen"); /* 127.0.0.1:P */
    F.redis_port = (uint16_t)atoi(strchr(listen, ':') + 1);
    json_decref(j);
    assert_true(F.redis_port != 6380);
    F.up_pid = h_moat_up(F.file, F.dir, F.gw_url);
    return F.up_pid > 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    h_moat_down(&F.up_pid);
    h_rmtree(F.dir);
    free(F.dir);
    return 0;
}

static void test_moat_up_runs_redis(void **state)
{
    MOAT_UNUSED(state);
    /* Its configuration and password: a cache, private to the deployment. */
    char conf[512], pwfile[512];
    snprintf(conf, sizeof(conf), "%s/var/redis/redis.conf", F.dir);
    snprintf(pwfile, sizeof(pwfile), "%s/var/secrets/redis.password", F.dir);
    assert_int_equal(mode_of(conf), 0600);
    assert_int_equal(mode_of(pwfile), 0600);
    int st = 0;
    char *text = h_run_capture(h_fmt("cat %s", conf), &st);
    static const char *const want[] = {
        "bind 127.0.0.1\n", "protected-mode yes\n", "save \"\"\n",
        "appendonly no\n",  "maxmemory 16mb\n",     "requirepass \"",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++)
        assert_non_null(strstr(text, want[i]));
    free(text);
    /* Without the password Redis answers nothing but NOAUTH. */
    char *out = h_run_capture(
        h_fmt("redis-cli -p %u KEYS '*' 2>&1", (unsigned)F.redis_port), &st);
    assert_non_null(strstr(out, "NOAUTH"));
    free(out);
    H_WAIT_UNTIL(redis_ready(0), H_WAIT_MS, "redis ready in moat status");
}

static void test_gateway_reads_through_redis(void **state)
{
    MOAT_UNUSED(state);
    /* An admin creates a product through the gateway. */
    const char *auth[] = {h_user_token("usr_admin", "admin", 3600), NULL};
    const char *body = "{\"sku\":\"UP-CACHE-1\",\"name\":\"Supervised mug\","
                       "\"price\":{\"amount\":900,\"currency\":\"EUR\"}}";
    struct h_resp r;
    const char *hdrs[] = {auth[0], "Content-Type: application/json", NULL};
    h_http(&r, "POST", h_fmt("%s/api/v1/products", F.gw_url), hdrs, body,
           strlen(body));
    h_assert_status(&r, 201);
    json_t *p = h_resp_json(&r);
    char *url =
        moat_xstrdup(h_fmt("%s/api/v1/products/%s", F.gw_url, h_jstr(p, "id")));
    json_decref(p);
    h_resp_release(&r);
    H_WAIT_UNTIL(hit(url), H_WAIT_MS, "a hit through moat up's Redis");
    /* moat status shows the gateway's cache. */
    json_t *gw = status_row("gateway");
    json_t *cache = json_object_get(json_object_get(gw, "events"), "cache");
    assert_true(json_number_value(json_object_get(cache, "hit")) >= 1);
    assert_true(json_is_true(
        json_object_get(json_object_get(cache, "synced"), "catalog")));
    json_decref(gw);

    /* Redis dies: reads go on; moat up restarts it; hits come back. */
    json_t *row = status_row("redis");
    json_int_t pid = json_integer_value(json_object_get(row, "pid"));
    json_decref(row);
    assert_true(pid > 0);
    assert_int_equal(kill((pid_t)pid, SIGKILL), 0);
    long status = 0;
    for (int i = 0; i < 10; i++) {
        cache_of(url, &status);
        assert_int_equal(status, 200);
    }
    H_WAIT_UNTIL(redis_ready(pid), H_WAIT_MS, "redis restarted by moat up");
    H_WAIT_UNTIL(hit(url), H_WAIT_MS, "hits again after the restart");
    free(url);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moat_up_runs_redis),
        cmocka_unit_test(test_gateway_reads_through_redis),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
