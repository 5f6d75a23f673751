/*
 * The scale-out shape of the shop (deploy/scale.json) under a chaos drill:
 * orders, payments, users and catalog on PostgreSQL (a private cluster
 * `moat up` runs, one role and database each), events through NATS
 * JetStream, the gateways' read cache in Redis, two catalogs and two
 * gateways. `moat chaos --include-infra` places orders through the first
 * gateway while SIGKILLing and SIGSTOPping services and, every third
 * fault, SIGKILLing PostgreSQL, nats-server or Redis in turn; then it
 * settles and audits through the services' APIs. The drill must end with
 * 0 violations, at least MIN_ORDERS accepted and every built-in server
 * struck at least once.
 *
 * MOAT_TEST_SEED repeats a run's orders and faults (the drill prints its
 * seed).
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "moat/buf.h"

#define DRILL_SECONDS 60
#define DRILL_RATE    9
#define MIN_ORDERS    500

static struct {
    char *dir;
    char file[512];
    char gw_url[64];
    pid_t up_pid;
} dep;

static int setup(void **state)
{
    MOAT_UNUSED(state);
    dep.dir = h_tmpdir_new("scale");
    /* Run as root, PostgreSQL runs as the postgres system user, which
     * must be able to search the directories above var/postgres. */
    if (chmod(dep.dir, 0711) != 0)
        return -1;
    snprintf(dep.file, sizeof(dep.file), "%s/moat.json", dep.dir);
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    h_moat_down(&dep.up_pid);
    h_kill_all();
    h_rmtree(dep.dir);
    free(dep.dir);
    return 0;
}

static void test_scale_drill(void **state)
{
    MOAT_UNUSED(state);
    static const char *const programs[] = {
        "/usr/sbin/nats-server", "/usr/bin/redis-server",
        "/usr/lib/postgresql/15/bin/postgres"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(programs); i++) {
        if (access(programs[i], X_OK) != 0) {
            fprintf(stderr, "%s is missing (scripts/deps.sh): skipping\n",
                    programs[i]);
            skip();
        }
    }
    h_deployment_write_free_ports(MOAT_SOURCE_DIR "/deploy/scale.json",
                                  dep.file, "scale", dep.gw_url,
                                  sizeof(dep.gw_url));
    dep.up_pid = h_moat_up(dep.file, dep.dir, dep.gw_url);
    if (dep.up_pid < 0)
        fail_msg("the deployment did not come up");

    const char *seed = getenv("MOAT_TEST_SEED");
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "%s/moat chaos --file %s --setup --duration %d --rate %d "
             "--kill-interval-ms 2000 --include-infra --settle 150%s%s 2>&1",
             MOAT_BIN_DIR, dep.file, DRILL_SECONDS, DRILL_RATE,
             seed ? " --seed " : "", seed ? seed : "");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    struct moat_buf out = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(&out, chunk, n);
    int st = pclose(p);
    const char *text = moat_buf_str(&out);
    /* The drill's report is the test's log, pass or fail. */
    fputs(text, stderr);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        h_print_file(h_fmt("%s/up.log", dep.dir));
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_non_null(strstr(text, "result: 0 violations"));
    const char *acc = strstr(text, "moat chaos: orders placed ");
    assert_non_null(acc);
    acc = strstr(acc, "accepted ");
    assert_non_null(acc);
    long accepted = strtol(acc + strlen("accepted "), NULL, 10);
    fprintf(stderr, "accepted orders: %ld\n", accepted);
    assert_true(accepted >= MIN_ORDERS);
    /* The broker, the database cluster and the cache were each killed. */
    assert_non_null(strstr(text, "SIGKILL postgres"));
    assert_non_null(strstr(text, "SIGKILL nats"));
    assert_non_null(strstr(text, "SIGKILL redis"));
    moat_buf_release(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_drill),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
