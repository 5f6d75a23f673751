/*
 * The order saga under a chaos drill, end to end: the repository's own
 * moat.json (every service of the saga, the gateway and the payment
 * provider), moved to free ports, runs under `moat up`; `moat chaos`
 * places about 560 orders through the gateway over 70 s while SIGKILLing
 * and SIGSTOPping random services (the orchestrator included), lets the
 * deployment settle, and audits it through the services' APIs. The drill
 * must end with exit status 0: every order final, every confirmed order
 * captured once and committed, every cancelled one released and refunded
 * or voided, stock counts equal to the reservations and the adjustment
 * log, one notification per state change, the ledgers in agreement.
 *
 * MOAT_TEST_SEED repeats a run's orders and faults (the drill prints its
 * seed). The longer drill is `make chaos-long` (10,000 orders).
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
#include "moat/buf.h"

#define DRILL_SECONDS 70
#define DRILL_RATE    8
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
    dep.dir = h_tmpdir_new("saga-chaos");
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

static void test_chaos_drill(void **state)
{
    MOAT_UNUSED(state);
    static const char *const programs[] = {
        "orders", "notifications", "payments", "payprovider", "inventory"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(programs); i++) {
        if (access(h_fmt("%s/moat-%s", MOAT_BIN_DIR, programs[i]), X_OK) != 0) {
            fprintf(stderr, "moat-%s is not built: skipping the drill\n",
                    programs[i]);
            skip();
        }
    }
    h_deployment_write_free_ports(MOAT_SOURCE_DIR "/moat.json", dep.file,
                                  "chaos", dep.gw_url, sizeof(dep.gw_url));

    dep.up_pid = h_moat_up(dep.file, dep.dir, dep.gw_url);
    if (dep.up_pid < 0)
        fail_msg("the deployment did not come up");

    const char *seed = getenv("MOAT_TEST_SEED");
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "%s/moat chaos --file %s --setup --duration %d --rate %d "
             "--kill-interval-ms 1500 --settle 100%s%s 2>&1",
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
    /* Faults really happened. */
    assert_null(strstr(text, "faults: 0 SIGKILL, 0 SIGSTOP"));
    moat_buf_release(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chaos_drill),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
