/*
 * jetstream_fixture.h - what test_jetstream.c and test_jetstream_soak.c
 * share: the repository's moat.json moved to free ports, given
 * "transport": "jetstream", and run under the real `moat up` (which starts
 * and supervises nats-server); probes of the broker's monitoring port and
 * the supervisor's state; `moat chaos` runs. Included by one test file
 * each (static inline: a test uses what it needs).
 */
#ifndef MOAT_TEST_JETSTREAM_FIXTURE_H
#define MOAT_TEST_JETSTREAM_FIXTURE_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "moat/buf.h"

#define JS_NATS_PROGRAM "/usr/sbin/nats-server"

static struct {
    char *dir;
    char file[512];
    char gw_url[64];
    char monitor[64]; /* http://127.0.0.1:<port> of nats-server */
    pid_t up_pid;
} dep;

static inline bool js_gw_ready(void *arg)
{
    MOAT_UNUSED(arg);
    struct h_resp r;
    h_get(&r, h_fmt("%s/readyz", dep.gw_url));
    bool ok = r.status == 200;
    h_resp_release(&r);
    return ok;
}

/* JetStream's account totals from the monitoring port; false when down. */
static inline bool js_jsz(json_int_t *streams, json_int_t *messages)
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

/* The nats-server's pid from the supervisor's state file, 0 when it is
 * not running and ready. */
static inline pid_t js_nats_pid(void)
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

/* For h_wait_until: the supervisor runs a nats-server other than *old
 * and it answers. */
static inline bool js_broker_back(void *arg)
{
    pid_t *old = arg;
    pid_t pid = js_nats_pid();
    json_int_t streams, messages;
    return pid > 0 && pid != *old && js_jsz(&streams, &messages);
}

static inline int js_setup(const char *tag)
{
    dep.dir = h_tmpdir_new(tag);
    snprintf(dep.file, sizeof(dep.file), "%s/moat.json", dep.dir);
    return 0;
}

static inline int js_teardown(void)
{
    if (dep.up_pid > 0) {
        /* SIGTERM: the supervisor stops every service in order. */
        kill(dep.up_pid, SIGTERM);
        waitpid(dep.up_pid, NULL, 0);
        dep.up_pid = 0;
    }
    h_kill_all();
    h_rmtree(dep.dir);
    free(dep.dir);
    return 0;
}

/* Write the JetStream variant of moat.json and start `moat up` on it;
 * skips the test without nats-server. */
static inline void js_up(const char *name)
{
    if (access(JS_NATS_PROGRAM, X_OK) != 0) {
        fprintf(stderr, "%s is missing (scripts/deps.sh): skipping\n",
                JS_NATS_PROGRAM);
        skip();
    }
    h_deployment_write_free_ports(MOAT_SOURCE_DIR "/moat.json", dep.file, name,
                                  dep.gw_url, sizeof(dep.gw_url));
    json_t *d = json_load_file(dep.file, 0, NULL);
    assert_non_null(d);
    uint16_t mon = h_free_port();
    snprintf(dep.monitor, sizeof(dep.monitor), "http://127.0.0.1:%u", mon);
    json_object_set_new(d, "transport", json_string("jetstream"));
    json_object_set_new(d, "jetstream",
                        json_pack("{s:s, s:s, s:i, s:i}", "listen",
                                  h_fmt("127.0.0.1:%u", h_free_port()),
                                  "monitor", h_fmt("127.0.0.1:%u", mon),
                                  "max_memory_mb", 64, "max_file_mb", 256));
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
    if (!h_wait_until(js_gw_ready, NULL, 60000)) {
        FILE *f = fopen(h_fmt("%s/up.log", dep.dir), "r");
        char line[1024];
        while (f && fgets(line, sizeof(line), f))
            fputs(line, stderr);
        if (f)
            fclose(f);
        fail_msg("the deployment did not come up");
    }
}

/* Read p to its end into out (echoed to the test log); p's exit status. */
static inline int js_finish(FILE *p, struct moat_buf *out)
{
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(out, chunk, n);
    int st = pclose(p);
    fputs(moat_buf_str(out), stderr);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline int js_run(const char *cmd, struct moat_buf *out)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    return js_finish(p, out);
}

/* `moat chaos` placing orders through the gateway, then the audit. */
static inline FILE *js_chaos(int seconds, int rate, int kill_ms)
{
    FILE *p = popen(h_fmt("%s/moat chaos --file %s --setup --duration %d "
                          "--rate %d --kill-interval-ms %d --settle 120 2>&1",
                          MOAT_BIN_DIR, dep.file, seconds, rate, kill_ms),
                    "r");
    assert_non_null(p);
    return p;
}

/* The drill's count of accepted orders. */
static inline long js_accepted(const char *text)
{
    const char *acc = strstr(text, "moat chaos: orders placed ");
    assert_non_null(acc);
    acc = strstr(acc, "accepted ");
    assert_non_null(acc);
    return strtol(acc + strlen("accepted "), NULL, 10);
}

#endif /* MOAT_TEST_JETSTREAM_FIXTURE_H */
