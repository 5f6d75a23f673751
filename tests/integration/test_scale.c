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
 * struck at least once. Then every service role on the cluster is refused
 * at every other service's database.
 *
 * MOAT_TEST_SEED repeats a run's orders and faults (the drill prints its
 * seed).
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "harness.h"

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

/*
 * The stores on the cluster, after the drill: each service's role reaches
 * its own database (with the DSN moat up handed it) and, for every ordered
 * pair (a, b), a's credentials are refused at b's database. moat up
 * records each service's DSN (no password: a passfile) in its state file.
 */
static void check_role_isolation(void)
{
    json_t *st = json_load_file(h_fmt("%s/var/moat.state", dep.dir), 0, NULL);
    assert_non_null(st);
    const char *names[16], *dsns[16];
    size_t n = 0, i;
    json_t *s;
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        const char *dsn = json_string_value(json_object_get(s, "dsn"));
        const char *name = json_string_value(json_object_get(s, "name"));
        bool seen = false;
        for (size_t k = 0; k < n; k++)
            seen = seen || strcmp(names[k], name) == 0;
        if (dsn && !seen && n < MOAT_ARRAY_LEN(names)) {
            names[n] = name;
            dsns[n++] = dsn;
        }
    }
    /* orders, payments, users and catalog */
    assert_int_equal(n, 4);
    for (size_t a = 0; a < n; a++) {
        PGconn *c = PQconnectdb(dsns[a]);
        if (PQstatus(c) != CONNECTION_OK)
            fail_msg("%s cannot reach its own database: %s", names[a],
                     PQerrorMessage(c));
        PQfinish(c);
        for (size_t b = 0; b < n; b++) {
            if (a == b)
                continue;
            /* a's DSN (user, passfile, TLS) aimed at b's database. */
            const char *own = h_fmt("dbname=moat_%s ", names[a]);
            const char *at = strstr(dsns[a], own);
            assert_non_null(at);
            char *other =
                moat_xasprintf("%.*sdbname=moat_%s %s", (int)(at - dsns[a]),
                               dsns[a], names[b], at + strlen(own));
            c = PQconnectdb(other);
            if (PQstatus(c) == CONNECTION_OK)
                fail_msg("%s's role reached %s's database", names[a], names[b]);
            fprintf(stderr, "%s -> %s refused: %s", names[a], names[b],
                    PQerrorMessage(c));
            PQfinish(c);
            free(other);
        }
    }
    json_decref(st);
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

    char *text = NULL;
    long accepted = h_chaos_drill(
        dep.file, dep.dir, DRILL_SECONDS, DRILL_RATE,
        "--kill-interval-ms 2000 --include-infra --settle 150", &text);
    assert_true(accepted >= MIN_ORDERS);
    /* The broker, the database cluster and the cache were each killed. */
    assert_non_null(strstr(text, "SIGKILL postgres"));
    assert_non_null(strstr(text, "SIGKILL nats"));
    assert_non_null(strstr(text, "SIGKILL redis"));
    free(text);
    check_role_isolation();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_drill),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
