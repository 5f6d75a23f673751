/*
 * A soak of the JetStream transport (moat/jetstream.h), meant for the
 * ASan+UBSan build: the shop on JetStream under `moat up` (see
 * jetstream_fixture.h) takes orders through the gateway for
 * MOAT_JETSTREAM_SOAK_S seconds (60 under ASan, 15 in the optimised
 * build; `make soak-jetstream` runs 600 under ASan) while `moat chaos`
 * SIGKILLs and SIGSTOPs random services and the test SIGKILLs nats-server
 * every time the streams have taken 100 more messages, wiping its storage
 * every other time. Every relay reconnects, republishes and every durable
 * pull consumer is recreated over and over: the paths where libnats
 * 3.4.1's known bugs live. The run must end with 0 audit violations, and
 * once the deployment is stopped (every service exits, running its leak
 * check) no log may hold a sanitizer report.
 */
#include "moat/common.h"

#include <dirent.h>

#include "jetstream_fixture.h"

#if defined(__SANITIZE_ADDRESS__)
#define SOAK_DEFAULT_S 60
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOAK_DEFAULT_S 60
#endif
#endif
#ifndef SOAK_DEFAULT_S
#define SOAK_DEFAULT_S 15
#endif

#define SOAK_RATE           4
#define KILL_EVERY_MESSAGES 100

static int setup(void **state)
{
    MOAT_UNUSED(state);
    return js_setup("jetstream-soak");
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    return js_teardown();
}

struct progress {
    json_int_t floor;
};

static bool grew(void *arg)
{
    struct progress *p = arg;
    json_int_t streams, messages;
    return js_jsz(&streams, &messages) &&
           messages >= p->floor + KILL_EVERY_MESSAGES;
}

/* A sanitizer report in any service's log (printed), or false. */
static bool sanitizer_reports(void)
{
    const char *logdir = h_fmt("%s/var/log", dep.dir);
    DIR *d = opendir(logdir);
    assert_non_null(d);
    bool found = false;
    struct dirent *e;
    char path[1024], line[2048];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", logdir, e->d_name);
        FILE *f = fopen(path, "r");
        int echo = 0; /* a report's lines after its first: its stack */
        while (f && fgets(line, sizeof(line), f)) {
            if (strstr(line, "AddressSanitizer") ||
                strstr(line, "LeakSanitizer") ||
                strstr(line, "runtime error:")) {
                found = true;
                echo = 40;
            }
            if (echo > 0) {
                fprintf(stderr, "%s: %s", e->d_name, line);
                echo--;
            }
        }
        if (f)
            fclose(f);
    }
    closedir(d);
    return found;
}

static void test_soak(void **state)
{
    MOAT_UNUSED(state);
    long seconds = SOAK_DEFAULT_S;
    const char *env = getenv("MOAT_JETSTREAM_SOAK_S");
    if (env)
        seconds = strtol(env, NULL, 10);
    assert_true(seconds >= 5 && seconds <= 7200);
    js_up("jssoak");

    uint64_t end = moat_mono_ms() + (uint64_t)seconds * 1000;
    FILE *p = js_chaos((int)seconds, SOAK_RATE, 2500);
    unsigned kills = 0, wipes = 0;
    struct progress pr = {0};
    json_int_t streams;
    while (moat_mono_ms() + 3000 < end) {
        if (!js_jsz(&streams, &pr.floor) ||
            !h_wait_until(grew, &pr, (int)(end - moat_mono_ms())))
            break;
        pid_t pid = js_nats_pid();
        if (pid <= 0)
            continue;
        kill(pid, SIGKILL);
        kills++;
        if (kills % 2 == 0) {
            assert_int_equal(
                system(h_fmt("rm -rf '%s/var/nats/jetstream'", dep.dir)), 0);
            wipes++;
        }
        assert_true(h_wait_until(js_broker_back, &pid, 30000));
    }
    struct moat_buf out = MOAT_BUF_INIT;
    int st = js_finish(p, &out);
    fprintf(stderr,
            "soak: %ld s, nats-server killed %u times, storage "
            "wiped %u times\n",
            seconds, kills, wipes);
    assert_int_equal(st, 0);
    assert_non_null(strstr(moat_buf_str(&out), "result: 0 violations"));
    assert_true(kills >= 1);
    moat_buf_release(&out);

    /* Stop everything: each service's exit runs its leak check. */
    kill(dep.up_pid, SIGTERM);
    int wst = 0;
    waitpid(dep.up_pid, &wst, 0);
    dep.up_pid = 0;
    assert_false(sanitizer_reports());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_soak),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
