/*
 * Integration test of `moat up` as a user runs it: a whole deployment
 * (catalog + gateway) under the real supervisor, a product created through
 * the gateway, catalog killed with SIGKILL, the gateway's 503 while it is
 * down, the restart, the data still there, `moat status`, `moat logs`, a
 * refused second supervisor, and `moat down`.
 */
#include "moat/common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/jwt.h"

struct deployment {
    char *dir;
    char file[512];
    uint16_t cat_port, users_port, gw_port;
    char gw_url[64];
    pid_t up_pid;
};

static struct deployment dep;

/* Run `moat ARGS...` to completion; returns its exit code and stdout
 * (caller frees). */
static int run_moat(char **out, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/moat %s --file %s 2>&1", MOAT_BIN_DIR, args,
             dep.file);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    struct moat_buf b = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(&b, chunk, n);
    int st = pclose(p);
    *out = moat_buf_detach(&b, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static pid_t start_up(const char *log_name)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        char log[600];
        snprintf(log, sizeof(log), "%s/%s", dep.dir, log_name);
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr))
            _exit(126);
        char bin[512];
        snprintf(bin, sizeof(bin), "%s/moat", MOAT_BIN_DIR);
        execl(bin, "moat", "up", "-f", dep.file, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static bool ready(const char *url)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/readyz", url));
    bool ok = r.status == 200;
    h_resp_release(&r);
    return ok;
}

static json_t *status_json(void)
{
    char *out = NULL;
    run_moat(&out, "status --json");
    json_error_t e;
    json_t *j = json_loads(out, 0, &e);
    if (!j)
        fail_msg("moat status --json printed no JSON: %s", out);
    free(out);
    return j;
}

static json_t *status_of(json_t *st, const char *name)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            return s;
    }
    fail_msg("no service %s in status", name);
    return NULL;
}

/* "Authorization: Bearer <admin JWT>" signed with the deployment's
 * generated MOAT_JWT_SECRET. */
static const char *admin_token(void)
{
    json_t *sec =
        json_load_file(h_fmt("%s/var/secrets.json", dep.dir), 0, NULL);
    const char *b64 = json_string_value(
        json_object_get(json_object_get(sec, "shared"), "MOAT_JWT_SECRET"));
    assert_non_null(b64);
    uint8_t key[64];
    size_t keylen = 0;
    assert_int_equal(moat_base64_decode(b64, key, sizeof(key), &keylen),
                     MOAT_OK);
    json_decref(sec);
    struct moat_jwt_claims c = {0};
    int64_t now = (int64_t)time(NULL);
    snprintf(c.iss, sizeof(c.iss), "moat-users");
    snprintf(c.aud, sizeof(c.aud), "moat");
    snprintf(c.sub, sizeof(c.sub), "usr_operator");
    snprintf(c.role, sizeof(c.role), "admin");
    c.iat = now;
    c.exp = now + 600;
    char *tok = NULL;
    assert_int_equal(moat_jwt_sign(key, keylen, &c, &tok), MOAT_OK);
    const char *line = h_fmt("Authorization: Bearer %s", tok);
    free(tok);
    return line;
}

static int setup(void **state)
{
    dep.dir = h_tmpdir_new("supervisor");
    dep.cat_port = h_free_port();
    do
        dep.users_port = h_free_port();
    while (dep.users_port == dep.cat_port);
    do
        dep.gw_port = h_free_port();
    while (dep.gw_port == dep.cat_port || dep.gw_port == dep.users_port);
    snprintf(dep.file, sizeof(dep.file), "%s/moat.json", dep.dir);
    snprintf(dep.gw_url, sizeof(dep.gw_url), "http://127.0.0.1:%u",
             dep.gw_port);
    h_write_file(
        dep.file,
        h_fmt("{\"name\": \"it\", \"var_dir\": \"var\", \"services\": ["
              "{\"name\": \"catalog\", \"listen\": \"127.0.0.1:%u\","
              " \"engine\": \"sqlite\", \"db\": \"catalog.db\"},"
              "{\"name\": \"users\", \"listen\": \"127.0.0.1:%u\","
              " \"engine\": \"sqlite\", \"db\": \"users.db\","
              " \"secrets\": [\"MOAT_JWT_SECRET\"]},"
              "{\"name\": \"gateway\", \"listen\": \"127.0.0.1:%u\","
              " \"engine\": \"none\", \"secrets\": [\"MOAT_JWT_SECRET\"],"
              " \"routes\": [{\"prefix\": \"/api/v1/products\", \"service\":"
              " \"catalog\", \"path\": \"/v1/products\", \"public\": "
              "[\"GET\"]}]}]}",
              dep.cat_port, dep.users_port, dep.gw_port));
    return 0;
}

static int teardown(void **state)
{
    if (dep.up_pid > 0) {
        kill(dep.up_pid, SIGKILL);
        waitpid(dep.up_pid, NULL, 0);
    }
    h_kill_all();
    h_rmtree(dep.dir);
    free(dep.dir);
    return 0;
}

static void test_up_kill_restart_down(void **state)
{
    char cat_url[64];
    snprintf(cat_url, sizeof(cat_url), "http://127.0.0.1:%u", dep.cat_port);

    uint64_t t0 = moat_mono_ms();
    dep.up_pid = start_up("up.log");
    H_WAIT_UNTIL(ready(cat_url) && ready(dep.gw_url), 10000,
                 "catalog and the gateway ready under `moat up`");
    uint64_t ready_ms = moat_mono_ms() - t0;
    fprintf(stderr, "deployment ready %llu ms after `moat up`\n",
            (unsigned long long)ready_ms);

    /* moat up generated the identities and secrets, owner-only. */
    struct stat sst;
    assert_int_equal(stat(h_fmt("%s/var/secrets.json", dep.dir), &sst), 0);
    assert_int_equal(sst.st_mode & 077, 0);

    /* A product through the gateway lands in catalog's own database. An
     * admin token signed with the deployment's JWT secret (the test acts
     * as the operator who can read var/secrets.json). */
    struct h_resp r;
    const char *admin[] = {admin_token(), NULL};
    h_send_json(&r, "POST", h_fmt("%s/api/v1/products", dep.gw_url),
                "{\"sku\":\"SUP-1\",\"name\":\"Kettle\",\"price\":{\"amount\":"
                "3900,\"currency\":\"EUR\"}}",
                admin);
    h_assert_status(&r, 201);
    json_t *created = h_resp_json(&r);
    char *id = moat_xstrdup(json_string_value(json_object_get(created, "id")));
    json_decref(created);
    h_resp_release(&r);

    json_t *st = status_json();
    assert_true(json_is_true(json_object_get(st, "ready")));
    json_t *cat = status_of(st, "catalog");
    pid_t cat_pid = (pid_t)json_integer_value(json_object_get(cat, "pid"));
    assert_true(cat_pid > 0);
    assert_int_equal(json_integer_value(json_object_get(cat, "restarts")), 0);
    assert_string_equal(json_string_value(json_object_get(cat, "engine")),
                        "sqlite");
    assert_true(json_integer_value(json_object_get(cat, "db_bytes")) > 0);
    json_decref(st);

    /* A second supervisor on the same var dir is refused. */
    pid_t second = start_up("second.log");
    int wst = 0;
    assert_int_equal(waitpid(second, &wst, 0), second);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) != 0);

    /* Catalog crashes: the gateway answers 503 problem+json quickly. */
    assert_int_equal(kill(cat_pid, SIGKILL), 0);
    bool saw_503 = false;
    for (int i = 0; i < 50 && !saw_503; i++) {
        h_get(&r, h_fmt("%s/api/v1/products/%s", dep.gw_url, id));
        if (r.status == 503) {
            saw_503 = true;
            h_assert_problem(&r, 503);
            assert_non_null(h_resp_header(&r, "Retry-After"));
            /* within the gateway's upstream timeout (2 s) */
            assert_true(r.elapsed_ms < h_scaled_ms(2500));
        } else {
            h_assert_status(&r, 200); /* already restarted */
        }
        h_resp_release(&r);
    }
    assert_true(saw_503);

    /* The supervisor restarts it; the product is still there. */
    long got = 0;
    H_WAIT_UNTIL((h_get(&r, h_fmt("%s/api/v1/products/%s", dep.gw_url, id)),
                  got = r.status, h_resp_release(&r), got == 200),
                 10000, "the product through the gateway (last status %ld)",
                 got);

    st = status_json();
    cat = status_of(st, "catalog");
    assert_int_equal(json_integer_value(json_object_get(cat, "restarts")), 1);
    assert_int_not_equal(json_integer_value(json_object_get(cat, "pid")),
                         cat_pid);
    json_decref(st);

    char *out = NULL;
    assert_int_equal(run_moat(&out, "logs catalog -n 5"), 0);
    assert_non_null(strstr(out, "\"service\":\"catalog\""));
    free(out);

    /* The operator rotates users' keys through its API and checks its
     * audit log, which records the rotation. */
    assert_int_equal(run_moat(&out, "keys rotate users --wait"), 0);
    assert_non_null(strstr(out, "\"active\": 2"));
    free(out);
    assert_int_equal(run_moat(&out, "audit-log verify users"), 0);
    assert_non_null(strstr(out, "intact"));
    free(out);

    /* moat down stops the supervisor, which stops every service. */
    assert_int_equal(run_moat(&out, "down"), 0);
    free(out);
    assert_int_equal(waitpid(dep.up_pid, &wst, 0), dep.up_pid);
    dep.up_pid = 0;
    assert_true(WIFEXITED(wst));
    assert_int_equal(WEXITSTATUS(wst), 0);
    assert_false(ready(cat_url));
    assert_false(ready(dep.gw_url));
    assert_int_not_equal(run_moat(&out, "status"), 0);
    free(out);
    /* The restarted catalog drained and stopped cleanly on SIGTERM. */
    FILE *f = fopen(h_fmt("%s/var/log/catalog.log", dep.dir), "r");
    assert_non_null(f);
    char line[4096];
    bool stopped = false;
    while (fgets(line, sizeof(line), f))
        stopped = stopped || strstr(line, "\"service stopped\"") != NULL;
    fclose(f);
    assert_true(stopped);
    free(id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_up_kill_restart_down),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
