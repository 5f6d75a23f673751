/*
 * One deployment on three "hosts" (docs/operations.md "Hosts"): three
 * network namespaces of this machine, each with its own address on a
 * private /24, joined by a bridge in a fourth namespace (veth pairs), so
 * nothing is added to the machine's own network namespace. The shop's
 * moat.json, with "hosts" and a "host" per service, runs as three
 * `moat up --host X`, one inside each namespace (ip netns exec); orders
 * are placed through the gateway on host c and must confirm, with
 * `moat audit` finding no violation.
 *
 * Needs root (CAP_NET_ADMIN) and iproute2's `ip`; skipped otherwise. The
 * namespaces are named moat-<pid>-{hub,a,b,c} and removed afterwards,
 * failure or not (which removes their veths and bridge too); the
 * supervisors are stopped first.
 */
#include "moat/common.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define IP "/usr/sbin/ip"

static const char *const hosts[] = {"a", "b", "c"};
/* Which host runs which service of moat.json (the gateway on c). */
static const char *const placement[][2] = {
    {"catalog", "a"},     {"users", "a"},         {"inventory", "a"},
    {"search", "a"},      {"orders", "b"},        {"payments", "b"},
    {"payprovider", "b"}, {"notifications", "b"}, {"reporting", "c"},
    {"readmodel", "c"},   {"gateway", "c"},       {"console", "c"},
};

static struct {
    char *dir;
    char file[512];
    char net[32];   /* "10.77.N" */
    char ns[4][32]; /* hub, a, b, c */
    bool made[4];
    pid_t up[3];
    int home_ns; /* the test's own network namespace, to return to */
    char gw[64];
} F = {.home_ns = -1};

static int sh(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int setup(void **state)
{
    MOAT_UNUSED(state);
    F.dir = h_tmpdir_new("hosts");
    snprintf(F.file, sizeof(F.file), "%s/moat.json", F.dir);
    int pid = (int)getpid();
    snprintf(F.net, sizeof(F.net), "10.77.%d", pid % 250);
    snprintf(F.ns[0], sizeof(F.ns[0]), "moat-%d-hub", pid);
    for (int i = 0; i < 3; i++)
        snprintf(F.ns[i + 1], sizeof(F.ns[i + 1]), "moat-%d-%s", pid, hosts[i]);
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    if (F.home_ns >= 0) {
        if (setns(F.home_ns, CLONE_NEWNET) != 0)
            perror("setns back");
        close(F.home_ns);
        F.home_ns = -1;
    }
    for (int i = 2; i >= 0; i--)
        h_moat_down(&F.up[i]);
    h_kill_all();
    for (int i = 3; i >= 0; i--)
        if (F.made[i] && sh(h_fmt(IP " netns del %s", F.ns[i])) != 0)
            fprintf(stderr, "cannot remove network namespace %s\n", F.ns[i]);
    h_rmtree(F.dir);
    free(F.dir);
    return 0;
}

static void run(const char *cmd)
{
    if (sh(cmd) != 0)
        fail_msg("failed: %s", cmd);
}

/* The namespaces, the bridge in the hub and one veth pair per host. */
static void make_network(void)
{
    for (int i = 0; i < 4; i++) {
        run(h_fmt(IP " netns add %s", F.ns[i]));
        F.made[i] = true;
        run(h_fmt(IP " -n %s link set lo up", F.ns[i]));
    }
    run(h_fmt(IP " -n %s link add br0 type bridge", F.ns[0]));
    run(h_fmt(IP " -n %s link set br0 up", F.ns[0]));
    for (int i = 0; i < 3; i++) {
        run(h_fmt(IP " -n %s link add v%s type veth peer name eth0 netns %s",
                  F.ns[0], hosts[i], F.ns[i + 1]));
        run(h_fmt(IP " -n %s link set v%s master br0 up", F.ns[0], hosts[i]));
        run(h_fmt(IP " -n %s addr add %s.%d/24 dev eth0", F.ns[i + 1], F.net,
                  i + 1));
        run(h_fmt(IP " -n %s link set eth0 up", F.ns[i + 1]));
    }
}

/* moat.json on free ports, without TLS, each service on its host. */
static void write_deployment(void)
{
    char gw[64];
    h_deployment_write_free_ports(MOAT_SOURCE_DIR "/moat.json", F.file, "hosts",
                                  gw, sizeof(gw));
    json_t *root = json_load_file(F.file, 0, NULL);
    assert_non_null(root);
    json_object_set_new(root, "tls", json_false());
    json_t *hs = json_object();
    for (int i = 0; i < 3; i++)
        json_object_set_new(
            hs, hosts[i],
            json_pack("{s:s}", "address", h_fmt("%s.%d", F.net, i + 1)));
    json_object_set_new(root, "hosts", hs);
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(root, "services"), i, svc)
    {
        const char *name = h_jstr(svc, "name");
        const char *host = NULL;
        for (size_t k = 0; k < MOAT_ARRAY_LEN(placement); k++)
            if (strcmp(placement[k][0], name) == 0)
                host = placement[k][1];
        if (!host)
            fail_msg("moat.json has a service this test does not place: %s",
                     name);
        json_object_set_new(svc, "host", json_string(host));
        if (strcmp(name, "gateway") == 0)
            snprintf(F.gw, sizeof(F.gw), "http://%s.3:%s", F.net,
                     strrchr(h_jstr(svc, "listen"), ':') + 1);
    }
    assert_int_equal(json_dump_file(root, F.file, JSON_INDENT(2)), 0);
    json_decref(root);
}

/* `moat up --host h` inside h's namespace. */
static pid_t up(int i)
{
    const char *log = h_fmt("%s/up-%s.log", F.dir, hosts[i]);
    char ns[32], host[8];
    snprintf(ns, sizeof(ns), "%s", F.ns[i + 1]);
    snprintf(host, sizeof(host), "%s", hosts[i]);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr))
            _exit(126);
        /* ip netns exec execs moat: the pid is the supervisor's. */
        execl(IP, "ip", "netns", "exec", ns, MOAT_BIN_DIR "/moat", "up", "-f",
              F.file, "--host", host, (char *)NULL);
        _exit(127);
    }
    assert_true(pid > 0);
    return pid;
}

/* `moat CMD` in host c's namespace, seeing the deployment from c. */
static char *moat_on_c(const char *args, int *status)
{
    return h_run_capture(h_fmt(IP " netns exec %s env MOAT_HOST=c %s/moat %s "
                                  "-f %s 2>&1",
                               F.ns[3], MOAT_BIN_DIR, args, F.file),
                         status);
}

static bool all_ready(void *arg)
{
    MOAT_UNUSED(arg);
    int st;
    free(moat_on_c("status", &st));
    return st == 0;
}

static bool audit_clean(void *arg)
{
    json_t **report = arg;
    int st;
    char *out = moat_on_c("audit --json", &st);
    json_decref(*report);
    *report = json_loads(out, 0, NULL);
    if (!*report)
        fprintf(stderr, "moat audit (exit %d): %.2000s\n", st, out);
    free(out);
    return st == 0 && json_is_true(json_object_get(*report, "ok"));
}

static void test_three_hosts(void **state)
{
    MOAT_UNUSED(state);
    if (geteuid() != 0) {
        fprintf(stderr, "not root: cannot make network namespaces; "
                        "skipping\n");
        skip();
    }
    if (access(IP, X_OK) != 0) {
        fprintf(stderr, "%s (iproute2) is missing; skipping\n", IP);
        skip();
    }
    if (sh(h_fmt(IP " netns add %s 2>/dev/null", F.ns[0])) != 0) {
        fprintf(stderr, "cannot add a network namespace (no CAP_NET_ADMIN?); "
                        "skipping\n");
        skip();
    }
    run(h_fmt(IP " netns del %s", F.ns[0]));
    make_network();
    write_deployment();

    /* The test itself talks from host c's namespace from now on. */
    F.home_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    int c_ns = open(h_fmt("/run/netns/%s", F.ns[3]), O_RDONLY | O_CLOEXEC);
    assert_true(F.home_ns >= 0 && c_ns >= 0);
    assert_int_equal(setns(c_ns, CLONE_NEWNET), 0);
    close(c_ns);

    uint64_t t0 = moat_mono_ms();
    for (int i = 0; i < 3; i++)
        F.up[i] = up(i);
    if (!h_wait_until(all_ready, NULL, 60000)) {
        int st;
        char *out = moat_on_c("status", &st);
        fputs(out, stderr);
        free(out);
        for (int i = 0; i < 3; i++)
            h_print_file(h_fmt("%s/up-%s.log", F.dir, hosts[i]));
        fail_msg("the three hosts did not come up");
    }
    fprintf(stderr, "all ready after %llu ms\n",
            (unsigned long long)(moat_mono_ms() - t0));
    int st;
    char *out = moat_on_c("status", &st);
    fputs(out, stderr);
    /* Each service answers on its host's address. */
    assert_non_null(strstr(out, "catalog"));
    free(out);
    struct h_resp r;
    h_get(&r, h_fmt("%s/api/v1/products", F.gw));
    h_assert_status(&r, 200);
    h_resp_release(&r);

    out = moat_on_c("bench --setup --mode open --rate 10 --duration 5", &st);
    fputs(out, stderr);
    assert_int_equal(st, 0);
    free(out);

    json_t *report = NULL;
    bool clean = h_wait_until(audit_clean, &report, 30000);
    char *text = json_dumps(json_object_get(report, "summary"), 0);
    fprintf(stderr, "audit summary: %s\n", text ? text : "(none)");
    free(text);
    if (!clean) {
        char *all = json_dumps(report, JSON_INDENT(2));
        fprintf(stderr, "%s\n", all ? all : "(no report)");
        free(all);
    }
    assert_true(clean);
    json_t *by =
        json_object_get(json_object_get(report, "summary"), "by_status");
    assert_true(json_integer_value(json_object_get(by, "confirmed")) > 0);
    json_decref(report);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_hosts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
