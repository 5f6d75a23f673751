/*
 * The shop on NATS JetStream (moat/jetstream.h): the repository's own
 * moat.json, moved to free ports and given "transport": "jetstream", runs
 * under `moat up`, which starts and supervises nats-server beside the
 * services. Orders placed through the gateway (`moat chaos` without
 * faults) complete and the audit finds 0 violations, with the events
 * really travelling through the streams. Then JetStream's storage is
 * wiped in the middle of a run (nats-server SIGKILLed, its store
 * directory deleted, the supervisor restarting it): the relays republish
 * from their outboxes, the run ends with 0 violations, every consumer
 * caught up, and each consumer's rebuild from its sources (`moat events
 * replay --verify`) identical to its live view.
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

#define RUN_SECONDS  12
#define RUN_RATE     6
#define MIN_ORDERS   40
#define NATS_PROGRAM "/usr/sbin/nats-server"

static struct {
    char *dir;
    char file[512];
    char gw_url[64];
    char monitor[64]; /* http://127.0.0.1:<port> of nats-server */
    pid_t up_pid;
} dep;

static bool ready(const char *url)
{
    struct h_resp r;
    h_get(&r, url);
    bool ok = r.status == 200;
    h_resp_release(&r);
    return ok;
}

static bool gw_ready(void *arg)
{
    MOAT_UNUSED(arg);
    return ready(h_fmt("%s/readyz", dep.gw_url));
}

/* JetStream's account totals from the monitoring port; false when down. */
static bool jsz(json_int_t *streams, json_int_t *messages)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/jsz", dep.monitor));
    bool ok = r.status == 200;
    if (ok) {
        json_t *j = h_resp_json(&r);
        *streams = json_integer_value(json_object_get(j, "streams"));
        *messages = json_integer_value(json_object_get(j, "messages"));
        json_decref(j);
    }
    h_resp_release(&r);
    return ok;
}

/* The nats-server's pid from the supervisor's state file, 0 if none. */
static pid_t nats_pid(void)
{
    json_t *st = json_load_file(h_fmt("%s/var/moat.state", dep.dir), 0, NULL);
    pid_t pid = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        if (strcmp(h_jstr(s, "name"), "nats") == 0 &&
            strcmp(h_jstr(s, "status"), "ready") == 0)
            pid = (pid_t)json_integer_value(json_object_get(s, "pid"));
    }
    json_decref(st);
    return pid;
}

static int setup(void **state)
{
    MOAT_UNUSED(state);
    dep.dir = h_tmpdir_new("jetstream");
    snprintf(dep.file, sizeof(dep.file), "%s/moat.json", dep.dir);
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    if (dep.up_pid > 0) {
        kill(dep.up_pid, SIGTERM);
        waitpid(dep.up_pid, NULL, 0);
    }
    h_kill_all();
    h_rmtree(dep.dir);
    free(dep.dir);
    return 0;
}

/* Run a command, echo its output to the test log; its exit status. */
static int run(const char *cmd, struct moat_buf *out)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(out, chunk, n);
    int st = pclose(p);
    fputs(moat_buf_str(out), stderr);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *chaos_cmd(int seconds)
{
    return h_fmt("%s/moat chaos --file %s --setup --duration %d --rate %d "
                 "--kill-interval-ms 0 --settle 90 2>&1",
                 MOAT_BIN_DIR, dep.file, seconds, RUN_RATE);
}

static long accepted(const char *text)
{
    const char *acc = strstr(text, "moat chaos: orders placed ");
    assert_non_null(acc);
    acc = strstr(acc, "accepted ");
    assert_non_null(acc);
    return strtol(acc + strlen("accepted "), NULL, 10);
}

static void test_saga_on_jetstream(void **state)
{
    MOAT_UNUSED(state);
    if (access(NATS_PROGRAM, X_OK) != 0) {
        fprintf(stderr, "%s is missing (scripts/deps.sh): skipping\n",
                NATS_PROGRAM);
        skip();
    }
    h_deployment_write_free_ports(MOAT_SOURCE_DIR "/moat.json", dep.file,
                                  "jetstream", dep.gw_url, sizeof(dep.gw_url));
    /* The variant: the same file with the JetStream transport. */
    json_t *d = json_load_file(dep.file, 0, NULL);
    assert_non_null(d);
    uint16_t mon = h_free_port();
    snprintf(dep.monitor, sizeof(dep.monitor), "http://127.0.0.1:%u", mon);
    json_object_set_new(d, "transport", json_string("jetstream"));
    json_object_set_new(
        d, "jetstream",
        json_pack("{s:s, s:s, s:i, s:i}", "listen",
                  h_fmt("127.0.0.1:%u", h_free_port()), "monitor",
                  h_fmt("127.0.0.1:%u", mon), "max_memory_mb", 64,
                  "max_file_mb", 256));
    assert_int_equal(json_dump_file(d, dep.file, JSON_INDENT(2)), 0);
    json_decref(d);

    dep.up_pid = fork();
    assert_true(dep.up_pid >= 0);
    if (dep.up_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        const char *log = h_fmt("%s/up.log", dep.dir);
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr))
            _exit(126);
        execl(MOAT_BIN_DIR "/moat", "moat", "up", "-f", dep.file, (char *)NULL);
        _exit(127);
    }
    if (!h_wait_until(gw_ready, NULL, 30000)) {
        FILE *f = fopen(h_fmt("%s/up.log", dep.dir), "r");
        char line[1024];
        while (f && fgets(line, sizeof(line), f))
            fputs(line, stderr);
        if (f)
            fclose(f);
        fail_msg("the deployment did not come up");
    }
    /* moat status shows the broker's health beside the services'. */
    struct moat_buf out = MOAT_BUF_INIT;
    assert_int_equal(
        run(h_fmt("%s/moat status -f %s --json", MOAT_BIN_DIR, dep.file), &out),
        0);
    json_t *st = json_loads(moat_buf_str(&out), 0, NULL);
    assert_non_null(st);
    bool seen = false;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        if (strcmp(h_jstr(s, "name"), "nats") == 0) {
            assert_string_equal(h_jstr(s, "health"), "ready");
            seen = true;
        }
    }
    assert_true(seen);
    json_decref(st);
    moat_buf_release(&out);

    int rc = run(chaos_cmd(RUN_SECONDS), &out);
    const char *text = moat_buf_str(&out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(text, "result: 0 violations"));
    long n = accepted(text);
    fprintf(stderr, "accepted orders: %ld\n", n);
    assert_true(n >= MIN_ORDERS);
    moat_buf_release(&out);
    /* The events went through the streams. */
    json_int_t streams = 0, messages = 0;
    assert_true(jsz(&streams, &messages));
    fprintf(stderr, "jetstream: %lld streams, %lld messages\n",
            (long long)streams, (long long)messages);
    assert_true(streams >= 4); /* catalog, orders, inventory, payments... */
    assert_true(messages >= n);
}

struct wipe {
    json_int_t floor; /* messages before the run */
};

static bool run_under_way(void *arg)
{
    struct wipe *w = arg;
    json_int_t streams, messages;
    return jsz(&streams, &messages) && messages >= w->floor + 30;
}

static bool broker_back(void *arg)
{
    pid_t *old = arg;
    pid_t pid = nats_pid();
    json_int_t streams, messages;
    return pid > 0 && pid != *old && jsz(&streams, &messages);
}

static void test_wipe_storage_mid_run(void **state)
{
    MOAT_UNUSED(state);
    if (dep.up_pid <= 0)
        skip(); /* the first test did not start the deployment */
    struct wipe w = {0};
    json_int_t streams;
    assert_true(jsz(&streams, &w.floor));
    FILE *p = popen(chaos_cmd(RUN_SECONDS + 4), "r");
    assert_non_null(p);
    assert_true(h_wait_until(run_under_way, &w, 30000));

    pid_t pid = nats_pid();
    assert_true(pid > 0);
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* Not h_rmtree, which MOAT_TEST_KEEP=1 turns off. */
    assert_int_equal(
        system(h_fmt("rm -rf '%s/var/nats/jetstream'", dep.dir)), 0);
    fprintf(stderr, "wiped JetStream's storage (nats-server pid %d)\n",
            (int)pid);
    assert_true(h_wait_until(broker_back, &pid, 30000));

    struct moat_buf out = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(&out, chunk, n);
    int st = pclose(p);
    const char *text = moat_buf_str(&out);
    fputs(text, stderr);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_non_null(strstr(text, "result: 0 violations"));
    assert_true(accepted(text) >= MIN_ORDERS);
    moat_buf_release(&out);

    /* The relays republished: the streams are back. */
    json_int_t messages;
    assert_true(jsz(&streams, &messages));
    assert_true(streams >= 4);
    /* Every consumer's view equals a rebuild from its sources. */
    static const char *const consumers[] = {"orders", "inventory", "payments",
                                            "notifications", "search"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(consumers); i++) {
        int rc = run(h_fmt("%s/moat events replay --verify %s -f %s "
                           "2>&1",
                           MOAT_BIN_DIR, consumers[i], dep.file),
                     &out);
        const char *t = moat_buf_str(&out);
        if (strstr(t, "501") || strstr(t, "not support")) {
            fprintf(stderr, "%s: no verification, skipped\n", consumers[i]);
        } else {
            assert_int_equal(rc, 0);
        }
        moat_buf_release(&out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_saga_on_jetstream),
        cmocka_unit_test(test_wipe_storage_mid_run),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
