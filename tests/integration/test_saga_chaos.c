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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

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

    long accepted = h_chaos_drill(dep.file, dep.dir, DRILL_SECONDS, DRILL_RATE,
                                  "--kill-interval-ms 1500 --settle 100", NULL);
    assert_true(accepted >= MIN_ORDERS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chaos_drill),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
