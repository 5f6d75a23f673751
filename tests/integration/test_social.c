/*
 * The social network end to end: the repository's deploy/social.json
 * (users, profiles, connections, posts, timelines and the gateway), moved
 * to free ports, runs under the real `moat up`, and everything below goes
 * through the gateway as a client would:
 *
 *   1. `moat social seed` (40 users, 120 edges, 2 posts each) and a
 *      3-second `moat social bench --json`: the seed's summary, the
 *      report's shape, no errors, home timeline reads that succeed;
 *      then a 2-second `moat social msgbench --json` with 2 groups of 3
 *      members: every message delivered to the waiting members, no errors;
 *   2. two users register, log in, connect and follow; a post with a
 *      mention and a URL reaches the follower's home timeline; the degree
 *      query; the post in API v2 (created_at in RFC 3339);
 *   3. degradation: with connections SIGKILLed, profiles, posts, user and
 *      home timelines still answer 200 and a follow is a 503 problem with
 *      Retry-After, until the supervisor restarts connections; with posts
 *      SIGKILLed, the home timeline still answers from its own store.
 *
 * While a service is down the test holds the supervisor (SIGSTOP), so
 * the outage lasts as long as the checks need and no longer than the
 * test wants; SIGCONT lets it notice the death and restart the service.
 */
#include "moat/common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "moat/auth.h"
#include "moat/buf.h"

#define SEED_USERS 40
#define SEED_EDGES 120
#define SEED_PPU   2
#define WAIT_MS    20000 /* for a condition, scaled */
#define PASSWORD   "correct horse battery staple"

static struct {
    char *dir;
    char file[512];
    char gw[64];
    pid_t up_pid;
    bool up_stopped; /* the supervisor is held with SIGSTOP */
} dep;

struct user {
    char id[64];
    char email[128];
    char handle[32];
    char auth[2048]; /* "Authorization: Bearer ..." */
};

/* Run the moat CLI with args; its stdout (stderr goes to the test's log).
 * *status is the exit code. Caller frees. */
static char *run_cli(const char *args, int *status)
{
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s/moat %s -f %s", MOAT_BIN_DIR, args,
             dep.file);
    fprintf(stderr, "$ moat %s\n", args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    struct moat_buf out = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(&out, chunk, n);
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    return moat_buf_detach(&out, NULL);
}

/* The number after label in text (which must be there). */
static long number_after(const char *text, const char *label)
{
    const char *p = strstr(text, label);
    if (!p)
        fail_msg("no \"%s\" in:\n%s", label, text);
    return strtol(p + strlen(label), NULL, 10);
}

/* The pid of service name from the supervisor's state file. */
static pid_t service_pid(const char *name)
{
    json_error_t err;
    json_t *st = json_load_file(h_fmt("%s/var/moat.state", dep.dir), 0, &err);
    if (!st)
        fail_msg("cannot read the state file: %s", err.text);
    pid_t pid = 0;
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(st, "services"), i, svc)
    {
        if (strcmp(json_string_value(json_object_get(svc, "name")), name) == 0)
            pid = (pid_t)json_integer_value(json_object_get(svc, "pid"));
    }
    json_decref(st);
    assert_true(pid > 0);
    return pid;
}

/* The URL of service name from the state file (valid as h_fmt's). */
static const char *service_url(const char *name)
{
    json_t *st = json_load_file(h_fmt("%s/var/moat.state", dep.dir), 0, NULL);
    assert_non_null(st);
    const char *url = NULL;
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(st, "services"), i, svc)
    {
        if (strcmp(json_string_value(json_object_get(svc, "name")), name) == 0)
            url = h_fmt("%s", json_string_value(json_object_get(svc, "url")));
    }
    json_decref(st);
    assert_non_null(url);
    return url;
}

/*
 * Hold the supervisor, SIGKILL service name and wait until its port
 * refuses connections. resume_supervisor() lets the supervisor restart it.
 */
static void kill_service(const char *name)
{
    const char *url = service_url(name);
    char health[128];
    snprintf(health, sizeof(health), "%s/healthz", url);
    pid_t pid = service_pid(name);
    assert_int_equal(kill(dep.up_pid, SIGSTOP), 0);
    dep.up_stopped = true;
    assert_int_equal(kill(pid, SIGKILL), 0);
    fprintf(stderr, "SIGKILLed %s (pid %d)\n", name, (int)pid);
    uint64_t deadline = moat_mono_ms() + h_scaled_ms(WAIT_MS);
    for (;;) {
        struct h_resp r;
        h_get(&r, health);
        long st = r.status;
        h_resp_release(&r);
        if (st == 0)
            break;
        if (moat_mono_ms() > deadline)
            fail_msg("%s still answers after SIGKILL", name);
        h_sleep_ms(20);
    }
}

static void resume_supervisor(void)
{
    if (dep.up_stopped) {
        kill(dep.up_pid, SIGCONT);
        dep.up_stopped = false;
    }
}

static int setup(void **state)
{
    MOAT_UNUSED(state);
    dep.dir = h_tmpdir_new("social");
    /* Searchable (not readable) by others: run as root, the deployment's
     * PostgreSQL cluster runs as the postgres system user under it. */
    if (chmod(dep.dir, 0711) != 0)
        return -1;
    snprintf(dep.file, sizeof(dep.file), "%s/social.json", dep.dir);
    /* integration/test_social_pg: deploy/social-pg.json, the SQL services
     * on the deployment's own PostgreSQL cluster. */
    const char *src = getenv("MOAT_TEST_SOCIAL_DEPLOYMENT");
    if (!src || !*src)
        src = MOAT_SOURCE_DIR "/deploy/social.json";
    h_deployment_write_free_ports(src, dep.file, NULL, dep.gw, sizeof(dep.gw));
    dep.up_pid = h_moat_up(dep.file, dep.dir, dep.gw);
    return dep.up_pid > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    resume_supervisor();
    if (dep.up_pid > 0) {
        /* SIGTERM: the supervisor stops every service in order. */
        kill(dep.up_pid, SIGTERM);
        int st = 0;
        waitpid(dep.up_pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            h_print_file(h_fmt("%s/up.log", dep.dir));
    }
    h_kill_all();
    h_rmtree(dep.dir);
    free(dep.dir);
    return 0;
}

/* ---- 1. seed and bench ---- */

static void test_seed_and_bench(void **state)
{
    MOAT_UNUSED(state);
    int st;
    char *out = run_cli(h_fmt("social seed --users %d --edges %d "
                              "--posts-per-user %d",
                              SEED_USERS, SEED_EDGES, SEED_PPU),
                        &st);
    fputs(out, stderr);
    assert_int_equal(st, 0);
    assert_int_equal(number_after(out, "users "), SEED_USERS);
    assert_int_equal(number_after(out, "registered "), SEED_USERS);
    assert_int_equal(number_after(out, "logged in "), SEED_USERS);
    assert_int_equal(number_after(out, "profiles "), SEED_USERS);
    assert_int_equal(number_after(out, "connections "), SEED_EDGES);
    assert_int_equal(number_after(out, "follows "), 2 * SEED_EDGES);
    assert_int_equal(number_after(out, "; posts "), SEED_USERS * SEED_PPU);
    assert_int_equal(number_after(out, "failed "), 0);
    free(out);

    /* Again with the same seed: everything is found, nothing added twice. */
    out = run_cli(h_fmt("social seed --users %d --edges %d "
                        "--posts-per-user %d",
                        SEED_USERS, SEED_EDGES, SEED_PPU),
                  &st);
    fputs(out, stderr);
    assert_int_equal(st, 0);
    assert_int_equal(number_after(out, "registered "), 0);
    assert_int_equal(number_after(out, "already there "), SEED_USERS);
    assert_int_equal(number_after(out, "failed "), 0);
    free(out);

    out = run_cli("social bench --duration 3 --concurrency 8 --json", &st);
    fputs(out, stderr);
    assert_int_equal(st, 0);
    json_error_t err;
    json_t *rep = json_loads(out, 0, &err);
    if (!rep)
        fail_msg("bench --json is not JSON: %s", err.text);
    assert_string_equal(json_string_value(json_object_get(rep, "mode")),
                        "closed");
    assert_int_equal(json_integer_value(json_object_get(rep, "concurrency")),
                     8);
    assert_true(json_is_number(json_object_get(rep, "seconds")));
    json_t *mix = json_object_get(rep, "mix");
    assert_int_equal(json_integer_value(json_object_get(mix, "home_timeline")),
                     60);
    assert_int_equal(json_integer_value(json_object_get(mix, "compose_post")),
                     10);
    assert_int_equal(
        json_integer_value(json_object_get(rep, "users_logged_in")),
        SEED_USERS);
    static const char *const ops[] = {"home_timeline", "user_timeline",
                                      "compose_post"};
    static const char *const graph[] = {"degree_query", "second_degree"};
    static const char *const pcts[] = {"p50", "p90", "p99", "p99_9", "max"};
    json_t *sections[] = {
        json_object_get(rep, "overall"), NULL, NULL, NULL, NULL, NULL};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ops); i++)
        sections[1 + i] =
            json_object_get(json_object_get(rep, "operations"), ops[i]);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(graph); i++)
        sections[4 + i] =
            json_object_get(json_object_get(rep, "graph_queries"), graph[i]);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(sections); i++) {
        json_t *o = sections[i];
        assert_true(json_is_object(o));
        json_int_t sent = json_integer_value(json_object_get(o, "sent"));
        json_int_t ok = json_integer_value(json_object_get(o, "ok"));
        json_t *e = json_object_get(o, "errors");
        assert_true(json_is_number(json_object_get(o, "ok_per_s")));
        assert_int_equal(json_integer_value(json_object_get(e, "total")), 0);
        static const char *const kinds[] = {"rate_limited", "server", "client",
                                            "transport"};
        for (size_t k = 0; k < MOAT_ARRAY_LEN(kinds); k++)
            assert_true(json_is_integer(json_object_get(e, kinds[k])));
        assert_int_equal(ok, sent);
        json_t *lat = json_object_get(o, "latency_ms");
        assert_int_equal(json_integer_value(json_object_get(lat, "count")), ok);
        for (size_t k = 0; k < MOAT_ARRAY_LEN(pcts); k++)
            assert_true(json_is_number(json_object_get(lat, pcts[k])));
    }
    /* Reads of the home timeline happened and succeeded. */
    assert_true(json_integer_value(json_object_get(sections[1], "ok")) > 0);
    /* The serial graph phase ran its 200 queries of each kind. */
    assert_int_equal(json_integer_value(json_object_get(sections[4], "ok")),
                     200);
    assert_int_equal(json_integer_value(json_object_get(sections[5], "ok")),
                     200);
    /* Every service of the deployment is in the CPU table. */
    json_t *svcs = json_object_get(rep, "services");
    assert_true(json_array_size(svcs) >= 6);
    json_decref(rep);
    free(out);

    /* msgbench, small: 2 groups of 3 seeded users, each member waiting in
     * a long poll; every message reaches the two other members. */
    out = run_cli("social msgbench --duration 2 --rate 20 --conversations 2 "
                  "--members 3 --json",
                  &st);
    fputs(out, stderr);
    assert_int_equal(st, 0);
    rep = json_loads(out, 0, &err);
    if (!rep)
        fail_msg("msgbench --json is not JSON: %s", err.text);
    assert_string_equal(json_string_value(json_object_get(rep, "through")),
                        "gateway");
    assert_int_equal(json_integer_value(json_object_get(rep, "members")), 6);
    json_t *msgs = json_object_get(rep, "messages");
    json_t *dl = json_object_get(rep, "deliveries");
    json_int_t ok = json_integer_value(json_object_get(msgs, "ok"));
    assert_true(ok > 0);
    assert_int_equal(ok, json_integer_value(json_object_get(msgs, "sent")));
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(msgs, "errors"), "total")),
                     0);
    assert_int_equal(json_integer_value(json_object_get(dl, "expected")),
                     2 * ok);
    assert_int_equal(json_integer_value(json_object_get(dl, "delivered")),
                     2 * ok);
    assert_int_equal(json_integer_value(json_object_get(dl, "missing")), 0);
    assert_int_equal(json_integer_value(json_object_get(dl, "duplicates")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(rep, "polls"), "errors"), "total")),
        0);
    static const char *const lats[] = {"latency_from_due_ms",
                                       "latency_from_201_ms"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(lats); i++) {
        json_t *lat = json_object_get(dl, lats[i]);
        assert_int_equal(json_integer_value(json_object_get(lat, "count")),
                         2 * ok);
        for (size_t k = 0; k < MOAT_ARRAY_LEN(pcts); k++)
            assert_true(json_is_number(json_object_get(lat, pcts[k])));
    }
    /* analytics follows messaging in this deployment: its lag is read. */
    assert_true(json_is_object(json_object_get(rep, "analytics_lag")));
    assert_true(json_array_size(json_object_get(rep, "services")) >= 6);
    json_decref(rep);
    free(out);
}

/* ---- 2. the client's path ---- */

/*
 * POST a password operation (registration, login) through the gateway.
 * On a loaded machine users' Argon2id hash can outlast the gateway's
 * upstream timeout, a 503 with Retry-After while users still carries the
 * request out; retry, as a client would, until a scaled deadline. *retried
 * says whether an earlier attempt got such a 503. The status.
 */
static long password_post(struct h_resp *r, const char *path, const char *json,
                          bool *retried)
{
    char *url = strdup(h_fmt("%s%s", dep.gw, path)), *body = strdup(json);
    uint64_t deadline = moat_mono_ms() + h_scaled_ms(WAIT_MS);
    *retried = false;
    for (;;) {
        h_send_json(r, "POST", url, body, NULL);
        if (r->status != 503 || !h_resp_header(r, "Retry-After") ||
            moat_mono_ms() > deadline)
            break;
        h_resp_release(r);
        *retried = true;
        h_sleep_ms(1000);
    }
    free(url);
    free(body);
    return r->status;
}

static void make_user(struct user *u, const char *tag)
{
    char email[128];
    snprintf(email, sizeof(email), "%s-%llx@example.com", tag,
             (unsigned long long)moat_wall_ms());
    snprintf(u->email, sizeof(u->email), "%s", email);
    struct h_resp r;
    bool retried;
    password_post(&r, "/api/v1/users",
                  h_fmt("{\"email\":\"%s\",\"password\":\"" PASSWORD "\","
                        "\"display_name\":\"%s\"}",
                        email, tag),
                  &retried);
    /* 409 after a 503: the attempt users finished after the gateway gave
     * up (the email is this test's own). */
    h_assert_status(&r, retried && r.status == 409 ? 409 : 201);
    h_resp_release(&r);
    password_post(
        &r, "/api/v1/auth/login",
        h_fmt("{\"email\":\"%s\",\"password\":\"" PASSWORD "\"}", email),
        &retried);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    snprintf(
        u->id, sizeof(u->id), "%s",
        json_string_value(json_object_get(json_object_get(j, "user"), "id")));
    snprintf(u->auth, sizeof(u->auth), "Authorization: Bearer %s",
             json_string_value(json_object_get(j, "access_token")));
    json_decref(j);
    h_resp_release(&r);
    assert_true(strncmp(u->id, "usr_", 4) == 0);
    snprintf(u->handle, sizeof(u->handle), "%s_%llx", tag,
             (unsigned long long)(moat_wall_ms() & 0xffffff));
    const char *hdr[] = {u->auth, NULL};
    h_send_json(
        &r, "PUT", h_fmt("%s/api/v1/profiles/me", dep.gw),
        h_fmt("{\"display_name\":\"%s\",\"handle\":\"%s\"}", tag, u->handle),
        hdr);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

/* POST as u with a JSON body; the status. */
static long post_as(const struct user *u, const char *path, const char *json,
                    struct h_resp *keep)
{
    const char *hdr[] = {u->auth, NULL};
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s%s", dep.gw, path), json ? json : "{}",
                hdr);
    long st = r.status;
    if (keep)
        *keep = r;
    else
        h_resp_release(&r);
    return st;
}

static void get_as(struct h_resp *r, const struct user *u, const char *path)
{
    const char *hdr[] = {u ? u->auth : NULL, NULL};
    h_http(r, "GET", h_fmt("%s%s", dep.gw, path), hdr, NULL, 0);
}

/* True when u's home timeline (first page) holds post_id. */
static bool home_has(const struct user *u, const char *post_id)
{
    struct h_resp r;
    get_as(&r, u, "/api/v1/timeline/home?limit=50");
    bool found = false;
    if (r.status == 200) {
        json_t *j = h_resp_json(&r);
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(j, "posts"), i, p)
        {
            const char *id = json_string_value(json_object_get(p, "id"));
            if (!id)
                id = json_string_value(json_object_get(p, "post_id"));
            found = found || (id && strcmp(id, post_id) == 0);
        }
        assert_true(json_object_get(j, "next_cursor") != NULL);
        json_decref(j);
    }
    h_resp_release(&r);
    return found;
}

static bool wait_home_has(const struct user *u, const char *post_id)
{
    uint64_t deadline = moat_mono_ms() + h_scaled_ms(WAIT_MS);
    while (!home_has(u, post_id)) {
        if (moat_mono_ms() > deadline)
            return false;
        h_sleep_ms(50);
    }
    return true;
}

static struct user alice, bob;
static char post_id[64];

static const char *create_as(const struct user *u, const char *path,
                             const char *json);

static void test_client_path(void **state)
{
    MOAT_UNUSED(state);
    make_user(&alice, "alice");
    make_user(&bob, "bob");

    /* Bob follows Alice; they connect (Alice asks, Bob accepts). */
    assert_int_equal(post_as(&bob, "/api/v1/follows",
                             h_fmt("{\"user_id\":\"%s\"}", alice.id), NULL),
                     201);
    assert_int_equal(post_as(&alice, "/api/v1/connections",
                             h_fmt("{\"user_id\":\"%s\"}", bob.id), NULL),
                     201);
    assert_int_equal(post_as(&bob,
                             h_fmt("/api/v1/connections/%s/accept", alice.id),
                             NULL, NULL),
                     200);
    struct h_resp r;
    get_as(&r, &alice,
           h_fmt("/api/v1/connections/degree?from=%s&to=%s", alice.id, bob.id));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "degree")), 1);
    json_decref(j);
    h_resp_release(&r);
    get_as(&r, &alice, h_fmt("/api/v1/users/%s/followers", alice.id));
    h_assert_status(&r, 200);
    assert_non_null(strstr(r.body, bob.id));
    h_resp_release(&r);

    /* Alice posts with a mention of Bob and a URL. */
    assert_int_equal(
        post_as(&alice, "/api/v1/posts",
                h_fmt("{\"text\":\"hello @%s, see https://example.com/a\"}",
                      bob.handle),
                &r),
        201);
    j = h_resp_json(&r);
    snprintf(post_id, sizeof(post_id), "%s",
             json_string_value(json_object_get(j, "id")));
    assert_string_equal(json_string_value(json_object_get(j, "author_id")),
                        alice.id);
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(j, "mentions"), 0)),
        bob.handle);
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(j, "urls"), 0)),
        "https://example.com/a");
    assert_true(json_is_integer(json_object_get(j, "created_at")));
    json_decref(j);
    h_resp_release(&r);

    /* It reaches Bob's home timeline (fan-out through the events). */
    assert_true(wait_home_has(&bob, post_id));
    /* Alice's own list of posts has it too. */
    get_as(&r, NULL, h_fmt("/api/v1/users/%s/posts", alice.id));
    h_assert_status(&r, 200);
    assert_non_null(strstr(r.body, post_id));
    h_resp_release(&r);

    /* API v2 of the same read: created_at in RFC 3339. */
    get_as(&r, NULL, h_fmt("/api/v2/posts/%s", post_id));
    h_assert_status(&r, 200);
    j = h_resp_json(&r);
    const char *at = json_string_value(json_object_get(j, "created_at"));
    assert_non_null(at);
    assert_int_equal(strlen(at), 20); /* 2026-01-02T03:04:05Z */
    assert_true(at[4] == '-' && at[10] == 'T' && at[19] == 'Z');
    assert_string_equal(json_string_value(json_object_get(j, "id")), post_id);
    json_decref(j);
    h_resp_release(&r);

    /* A long poll through the gateway waits as long as it asked (3 s,
     * beyond the gateway's 2 s upstream timeout) and ends with an empty
     * page, not a 503. */
    const char *conv =
        create_as(&alice, "/api/v1/conversations",
                  h_fmt("{\"kind\":\"direct\",\"members\":[\"%s\"]}", bob.id));
    char conv_id[96];
    snprintf(conv_id, sizeof(conv_id), "%s", conv);
    get_as(&r, &bob,
           h_fmt("/api/v1/conversations/%s/messages?after=0&wait=3", conv_id));
    h_assert_status(&r, 200);
    j = h_resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "messages")), 0);
    json_decref(j);
    h_resp_release(&r);
}

/* ---- 3. degradation ---- */

static void assert_get_ok(const struct user *u, const char *path)
{
    struct h_resp r;
    get_as(&r, u, path);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static void test_degradation(void **state)
{
    MOAT_UNUSED(state);
    assert_true(post_id[0]); /* test_client_path ran */

    kill_service("connections");
    /* What does not need the graph still answers. */
    assert_get_ok(NULL, h_fmt("/api/v1/profiles/%s", alice.id));
    assert_get_ok(NULL, h_fmt("/api/v1/posts/%s", post_id));
    assert_get_ok(NULL, h_fmt("/api/v1/users/%s/posts", alice.id));
    assert_true(home_has(&bob, post_id));
    /* A follow cannot be served: 503 problem+json with Retry-After. */
    struct h_resp r;
    assert_int_equal(post_as(&alice, "/api/v1/follows",
                             h_fmt("{\"user_id\":\"%s\"}", bob.id), &r),
                     503);
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);

    /* The supervisor restarts connections; the follow then works. */
    resume_supervisor();
    uint64_t deadline = moat_mono_ms() + h_scaled_ms(WAIT_MS);
    long st;
    while ((st = post_as(&alice, "/api/v1/follows",
                         h_fmt("{\"user_id\":\"%s\"}", bob.id), NULL)) != 201) {
        if (st != 503 || moat_mono_ms() > deadline)
            fail_msg("the follow after the restart answered %ld", st);
        h_sleep_ms(100);
    }

    kill_service("posts");
    /* The home timeline answers from its own store. */
    assert_true(home_has(&bob, post_id));
    get_as(&r, NULL, h_fmt("/api/v1/posts/%s", post_id));
    h_assert_problem(&r, 503);
    h_resp_release(&r);
    resume_supervisor();
    deadline = moat_mono_ms() + h_scaled_ms(WAIT_MS);
    for (;;) {
        get_as(&r, NULL, h_fmt("/api/v1/posts/%s", post_id));
        st = r.status;
        h_resp_release(&r);
        if (st == 200)
            break;
        if (st != 503 || moat_mono_ms() > deadline)
            fail_msg("reading the post after the restart answered %ld", st);
        h_sleep_ms(100);
    }
}

/* ---- 4. comments killed or frozen (issue #12) ---- */

/* deploy/social.json's MOAT_GATEWAY_COMPOSE_TIMEOUT_MS. */
#define COMPOSE_TIMEOUT_MS 1000

/* A shared secret or service key of the deployment (secrets.json, as
 * `moat up` made it), as an h_fmt string. */
static const char *deployment_secret(const char *section, const char *name)
{
    json_t *s = json_load_file(h_fmt("%s/var/secrets.json", dep.dir), 0, NULL);
    assert_non_null(s);
    const char *v =
        json_string_value(json_object_get(json_object_get(s, section), name));
    assert_non_null(v);
    v = h_fmt("%s", v);
    json_decref(s);
    return v;
}

static void login(struct user *u, const char *email, const char *password)
{
    struct h_resp r;
    bool retried;
    password_post(
        &r, "/api/v1/auth/login",
        h_fmt("{\"email\":\"%s\",\"password\":\"%s\"}", email, password),
        &retried);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    snprintf(
        u->id, sizeof(u->id), "%s",
        json_string_value(json_object_get(json_object_get(j, "user"), "id")));
    snprintf(u->auth, sizeof(u->auth), "Authorization: Bearer %s",
             json_string_value(json_object_get(j, "access_token")));
    json_decref(j);
    h_resp_release(&r);
}

/* POST as u, expecting 201; the new resource's id (h_fmt string). */
static const char *create_as(const struct user *u, const char *path,
                             const char *json)
{
    struct h_resp r;
    long st = post_as(u, path, json, &r);
    if (st != 201)
        fail_msg("POST %s answered %ld: %s", path, st, r.body);
    json_t *j = h_resp_json(&r);
    const char *id = h_fmt("%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    h_resp_release(&r);
    return id;
}

static const char *comment_on_post(const char *pid, const char *text)
{
    return h_fmt("{\"target\":{\"kind\":\"post\",\"id\":\"%s\"},"
                 "\"text\":\"%s\"}",
                 pid, text);
}

/*
 * GET path (with include=comments) as u: 200, the main resource present
 * (key), and either comments with "partial" empty or, degraded, comments
 * null, "partial" ["comments"] and the notice. *ms: how long it took.
 */
static bool read_with_comments(const struct user *u, const char *path,
                               const char *key, uint64_t *ms)
{
    struct h_resp r;
    uint64_t t0 = moat_mono_ms();
    get_as(&r, u, path);
    *ms = moat_mono_ms() - t0;
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_non_null(json_object_get(j, key));
    json_t *partial = json_object_get(j, "partial");
    json_t *comments = json_object_get(j, "comments");
    assert_true(json_is_array(partial));
    bool complete = json_array_size(partial) == 0;
    if (complete) {
        assert_true(json_is_array(comments) || json_is_object(comments));
        assert_null(json_object_get(j, "notice"));
    } else {
        assert_int_equal(json_array_size(partial), 1);
        assert_string_equal(json_string_value(json_array_get(partial, 0)),
                            "comments");
        assert_true(json_is_null(comments));
        assert_string_equal(h_jstr(j, "notice"),
                            "comments are temporarily unavailable");
    }
    json_decref(j);
    h_resp_release(&r);
    return complete;
}

struct outage {
    struct user *users; /* 3 */
    char post[64], conv[64], msg[64];
};

/*
 * A round of the workload while comments is out: each user logs in again
 * and sends a message (both go on), a comment is 503 problem+json with
 * Retry-After, and both composed reads degrade within the composition
 * timeout + 250 ms (scaled for a loaded machine).
 */
static void outage_round(const struct outage *o, int round)
{
    unsigned bound = h_scaled_ms(COMPOSE_TIMEOUT_MS + 250);
    for (int i = 0; i < 3; i++) {
        struct user *u = &o->users[i];
        struct user again = {0};
        login(&again, u->email, PASSWORD);
        assert_string_equal(again.id, u->id);
        create_as(u, h_fmt("/api/v1/conversations/%s/messages", o->conv),
                  h_fmt("{\"text\":\"round %d from %d\"}", round, i));
        struct h_resp r;
        post_as(u, "/api/v1/comments", comment_on_post(o->post, "down?"), &r);
        h_assert_problem(&r, 503);
        assert_non_null(h_resp_header(&r, "Retry-After"));
        h_resp_release(&r);
        uint64_t ms;
        assert_false(read_with_comments(
            u, h_fmt("/api/v1/posts/%s?include=comments", o->post), "id", &ms));
        if (ms > bound)
            fail_msg("the post took %llu ms (bound %u)", (unsigned long long)ms,
                     bound);
        assert_false(read_with_comments(
            u, h_fmt("/api/v2/conversations/%s?include=comments", o->conv),
            "items", &ms));
        if (ms > bound)
            fail_msg("the conversation took %llu ms (bound %u)",
                     (unsigned long long)ms, bound);
    }
}

/* Analytics' engagement for u as admin: whether comments is a blind
 * spot, and the sums of u's messages and comments. */
static bool engagement(const struct user *admin, const struct user *u,
                       long *messages, long *comments)
{
    struct h_resp r;
    get_as(&r, admin,
           h_fmt("/api/v1/analytics/engagement?bucket=day&user_id=%s", u->id));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    size_t i;
    json_t *v;
    bool blind = false;
    *messages = *comments = 0;
    json_array_foreach(json_object_get(j, "series"), i, v)
    {
        *messages += (long)h_jint(v, "messages_sent");
        *comments += (long)h_jint(v, "comments");
    }
    json_array_foreach(json_object_get(j, "blind_spots"), i, v) blind =
        blind || strcmp(h_jstr(v, "source"), "comments") == 0;
    json_decref(j);
    h_resp_release(&r);
    return blind;
}

/* u's comments (replies included) in one of comments' lists, via the API. */
static long count_authored(const struct user *u, const char *query)
{
    struct h_resp r;
    get_as(&r, u, h_fmt("/api/v1/comments?%s&limit=50", query));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_true(json_is_null(json_object_get(j, "next_cursor")));
    long n = 0;
    size_t i, k;
    json_t *c, *rep;
    json_array_foreach(json_object_get(j, "items"), i, c)
    {
        n += strcmp(h_jstr(c, "author_id"), u->id) == 0;
        json_array_foreach(json_object_get(c, "replies"), k, rep) n +=
            strcmp(h_jstr(rep, "author_id"), u->id) == 0;
    }
    json_decref(j);
    h_resp_release(&r);
    return n;
}

/* Analytics agrees with a recount from messaging's and comments' APIs. */
static bool counts_exact(const struct user *admin, const struct outage *o)
{
    struct h_resp r;
    get_as(&r, &o->users[0],
           h_fmt("/api/v1/conversations/%s/messages?limit=100", o->conv));
    h_assert_status(&r, 200);
    json_t *page = h_resp_json(&r);
    h_resp_release(&r);
    bool exact = true;
    for (int u = 0; u < 3 && exact; u++) {
        long msgs = 0, cmts = 0, a_msgs, a_cmts;
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(page, "items"), i, m)
        {
            msgs += strcmp(h_jstr(m, "sender_id"), o->users[u].id) == 0;
            cmts += count_authored(
                &o->users[u],
                h_fmt("target_kind=message&target_id=%s&conversation_id=%s",
                      h_jstr(m, "id"), o->conv));
        }
        cmts += count_authored(&o->users[u],
                               h_fmt("target_kind=post&target_id=%s", o->post));
        bool blind = engagement(admin, &o->users[u], &a_msgs, &a_cmts);
        exact = !blind && msgs == a_msgs && cmts == a_cmts;
        if (!exact)
            fprintf(stderr,
                    "%s: analytics %ld messages %ld comments%s, recount %ld "
                    "%ld\n",
                    o->users[u].id, a_msgs, a_cmts, blind ? " (blind)" : "",
                    msgs, cmts);
    }
    json_decref(page);
    return exact;
}

/* How many CommentRemoved events for comment_id comments' feed holds, read
 * as the operator (its key from secrets.json, as the moat CLI does). */
static int removed_events(const char *comment_id)
{
    struct moat_auth *a = NULL;
    char *token = NULL;
    setenv("MOAT_SERVICE_KEY", deployment_secret("service_keys", "operator"),
           1);
    assert_int_equal(moat_auth_load(&a, "operator"), MOAT_OK);
    assert_int_equal(moat_auth_token(a, "comments", NULL, &token), MOAT_OK);
    moat_auth_free(a);
    unsetenv("MOAT_SERVICE_KEY");
    const char *hdr[] = {h_fmt("%s: %s", MOAT_SERVICE_TOKEN_HEADER, token),
                         NULL};
    int n = 0;
    long long after = 0;
    for (bool more = true; more;) {
        json_t *j = h_get_json(h_fmt("%s/v1/events?after=%lld&limit=100",
                                     service_url("comments"), after),
                               hdr);
        assert_non_null(j);
        json_t *events = json_object_get(j, "events");
        size_t i;
        json_t *e;
        json_array_foreach(events, i, e)
        {
            n += strcmp(h_jstr(e, "type"), "CommentRemoved") == 0 &&
                 strcmp(h_jstr(e, "subject"), comment_id) == 0;
        }
        more = json_array_size(events) > 0;
        after = (long long)h_jint(j, "next_after");
        json_decref(j);
    }
    free(token);
    return n;
}

static bool comment_deleted(const struct user *admin, const char *id)
{
    struct h_resp r;
    get_as(&r, admin, h_fmt("/api/v1/comments/%s", id));
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    bool deleted = json_is_true(json_object_get(j, "deleted"));
    json_decref(j);
    h_resp_release(&r);
    return deleted;
}

static void test_comments_outage(void **state)
{
    MOAT_UNUSED(state);
    struct user users[3], admin = {0};
    make_user(&users[0], "carol");
    make_user(&users[1], "dave");
    make_user(&users[2], "erin");
    login(&admin, "admin@moat.local",
          deployment_secret("shared", "MOAT_USERS_ADMIN_PASSWORD"));
    struct outage o = {.users = users};
    snprintf(o.post, sizeof(o.post), "%s",
             create_as(&users[0], "/api/v1/posts",
                       "{\"text\":\"comments may go away\"}"));
    snprintf(o.conv, sizeof(o.conv), "%s",
             create_as(&users[0], "/api/v1/conversations",
                       h_fmt("{\"kind\":\"group\",\"title\":\"outage\","
                             "\"members\":[\"%s\",\"%s\"]}",
                             users[1].id, users[2].id)));
    snprintf(o.msg, sizeof(o.msg), "%s",
             create_as(&users[1],
                       h_fmt("/api/v1/conversations/%s/messages", o.conv),
                       "{\"text\":\"before\"}"));
    char keep[64], spam[64];
    snprintf(keep, sizeof(keep), "%s",
             create_as(&users[1], "/api/v1/comments",
                       comment_on_post(o.post, "first")));
    snprintf(spam, sizeof(spam), "%s",
             create_as(&users[2], "/api/v1/comments",
                       comment_on_post(o.post, "buy now")));
    create_as(&users[2], "/api/v1/comments",
              h_fmt("{\"target\":{\"kind\":\"message\","
                    "\"conversation_id\":\"%s\",\"message_id\":\"%s\"},"
                    "\"text\":\"about this\"}",
                    o.conv, o.msg));

    /* Healthy: both reads composed, nothing partial. */
    uint64_t ms;
    H_WAIT_UNTIL(
        read_with_comments(&users[0],
                           h_fmt("/api/v1/posts/%s?include=comments", o.post),
                           "id", &ms),
        H_WAIT_MS, "the post with its comments");
    struct h_resp r;
    get_as(&r, &users[0], h_fmt("/api/v1/posts/%s?include=comments", o.post));
    assert_non_null(strstr(r.body, keep));
    assert_non_null(h_resp_header(&r, "Deprecation"));
    h_resp_release(&r);
    H_WAIT_UNTIL(read_with_comments(
                     &users[1],
                     h_fmt("/api/v1/conversations/%s?include=comments", o.conv),
                     "items", &ms),
                 H_WAIT_MS, "the conversation with its comments");
    get_as(&r, &users[1],
           h_fmt("/api/v1/conversations/%s?include=comments", o.conv));
    json_t *j = h_resp_json(&r);
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(j, "comments"), o.msg)),
        1);
    json_decref(j);
    h_resp_release(&r);
    /* In v2 the whole composition has RFC 3339 times. */
    get_as(&r, NULL, h_fmt("/api/v2/posts/%s?include=comments", o.post));
    h_assert_status(&r, 200);
    j = h_resp_json(&r);
    assert_true(json_is_string(json_object_get(j, "created_at")));
    assert_true(json_is_string(json_object_get(
        json_array_get(json_object_get(j, "comments"), 0), "created_at")));
    assert_null(h_resp_header(&r, "Deprecation"));
    json_decref(j);
    h_resp_release(&r);
    /* Without include=comments: the plain proxy, as before. */
    get_as(&r, &users[1], h_fmt("/api/v1/conversations/%s", o.conv));
    h_assert_status(&r, 200);
    j = h_resp_json(&r);
    assert_string_equal(h_jstr(j, "object"), "conversation");
    assert_null(json_object_get(j, "partial"));
    json_decref(j);
    h_resp_release(&r);

    /* Frozen: the process is there but answers nothing. */
    pid_t cpid = service_pid("comments");
    assert_int_equal(kill(dep.up_pid, SIGSTOP), 0);
    dep.up_stopped = true;
    assert_int_equal(kill(cpid, SIGSTOP), 0);
    outage_round(&o, 0);
    assert_int_equal(kill(cpid, SIGCONT), 0);
    resume_supervisor();
    H_WAIT_UNTIL(
        read_with_comments(&users[0],
                           h_fmt("/api/v1/posts/%s?include=comments", o.post),
                           "id", &ms),
        H_WAIT_MS, "comments back after the freeze");

    /* Killed, with the workload going on and a moderation action. */
    kill_service("comments");
    long m, c;
    H_WAIT_UNTIL(engagement(&admin, &users[1], &m, &c), H_WAIT_MS,
                 "analytics to name comments a blind spot");
    outage_round(&o, 1);
    struct h_resp act;
    assert_int_equal(
        post_as(&admin, "/api/v1/moderation/actions",
                h_fmt("{\"action\":\"remove_comment\",\"comment_id\":\"%s\","
                      "\"reason\":\"spam\"}",
                      spam),
                &act),
        202);
    h_resp_release(&act);
    outage_round(&o, 2);
    assert_true(engagement(&admin, &users[1], &m, &c));

    /* The supervisor restarts comments: the action is applied, once. */
    resume_supervisor();
    H_WAIT_UNTIL(
        read_with_comments(&users[0],
                           h_fmt("/api/v1/posts/%s?include=comments", o.post),
                           "id", &ms),
        H_WAIT_MS, "comments back after the kill");
    H_WAIT_UNTIL(comment_deleted(&admin, spam), H_WAIT_MS,
                 "the moderation action to be applied");
    assert_int_equal(removed_events(spam), 1);
    get_as(&r, &users[0], h_fmt("/api/v1/posts/%s?include=comments", o.post));
    assert_non_null(strstr(r.body, keep));
    h_resp_release(&r);
    /* Analytics: the blind spot gone, its counts those of the APIs. */
    H_WAIT_UNTIL(counts_exact(&admin, &o), H_WAIT_MS,
                 "analytics' counts to equal the recount");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_and_bench),
        cmocka_unit_test(test_client_path),
        cmocka_unit_test(test_degradation),
        cmocka_unit_test(test_comments_outage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
