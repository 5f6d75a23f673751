/*
 * test_timelines.c - the home timelines read model with real posts,
 * connections and timelines processes, started from deploy/social.json.
 *
 * What a user relies on: a post reaches the home timeline of its author
 * and of every follower, newest first, and no one else's; an unfollow
 * takes the author's posts out, a delete takes the post out everywhere;
 * an author with more followers than MOAT_TIMELINES_FANOUT_MAX (2 here)
 * is merged in at read time with the same result; the view survives
 * kill -9 of any of the three processes and then equals a recomputation
 * from the posts and connections APIs; replay --verify finds it
 * identical; and with posts or connections down the home timeline still
 * answers from its own store. With MOAT_TEST_ENGINE=postgres
 * (integration/test_timelines_pg) posts and timelines keep their stores
 * in PostgreSQL, and one more test restarts the server under them.
 */
#include "moat/common.h"

#include "harness.h"
#include "pg_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An author with more followers than this is merged in at read time. */
#define FANOUT_MAX "2"

static struct {
    char *tmp;
    struct h_deployment dep;
    struct h_service *posts, *conns, *tl;
    char state[512]; /* the consumer's last status, for failure messages */
} F;

/* A fresh user id per call, so that tests do not see each other. */
static const char *new_user(void)
{
    static unsigned n;
    return h_fmt("usr_tl%04u", ++n);
}

static const char *as(const char *aud, const char *user)
{
    return h_service_token(aud, user, user ? "customer" : NULL);
}

static void follow(const char *who, const char *whom, bool on)
{
    struct h_resp r;
    const char *hdrs[] = {as("connections", who), NULL};
    if (on)
        h_send_json(&r, "POST", h_fmt("%s/v1/follows", F.conns->url),
                    h_fmt("{\"user_id\": \"%s\"}", whom), hdrs);
    else
        h_http(&r, "DELETE", h_fmt("%s/v1/follows/%s", F.conns->url, whom),
               hdrs, NULL, 0);
    if (r.status != 200 && r.status != 201 && r.status != 204)
        fail_msg("%s %s -> %s: status %ld", on ? "follow" : "unfollow", who,
                 whom, r.status);
    h_resp_release(&r);
}

/* Post text as author; returns the post id (static until the next call). */
static const char *post(const char *author, const char *text)
{
    static char id[80];
    struct h_resp r;
    const char *hdrs[] = {as("posts", author), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/posts", F.posts->url),
                h_fmt("{\"text\": \"%s\"}", text), hdrs);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(id, sizeof(id), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    return id;
}

static void delete_post(const char *author, const char *id)
{
    struct h_resp r;
    const char *hdrs[] = {as("posts", author), NULL};
    h_http(&r, "DELETE", h_fmt("%s/v1/posts/%s", F.posts->url, id), hdrs, NULL,
           0);
    if (r.status != 200 && r.status != 204)
        fail_msg("delete %s: status %ld", id, r.status);
    h_resp_release(&r);
}

/* user's home timeline, every page, as "id,id,..." newest first. */
static const char *home(const char *user)
{
    static char out[16384];
    size_t len = 0;
    char cursor[64] = "";
    out[0] = '\0';
    for (int page = 0; page < 100; page++) {
        const char *hdrs[] = {as("timelines", user), NULL};
        json_t *j =
            h_get_json(h_fmt("%s/v1/timeline/home?limit=7%s%s", F.tl->url,
                             cursor[0] ? "&cursor=" : "", cursor),
                       hdrs);
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(j, "posts"), i, p)
        {
            if (len < sizeof(out) - 1)
                len += (size_t)snprintf(out + len, sizeof(out) - len, "%s%s",
                                        len ? "," : "", h_jstr(p, "id"));
        }
        /* h_jstr gives "" for the last page's null. */
        snprintf(cursor, sizeof(cursor), "%s", h_jstr(j, "next_cursor"));
        json_decref(j);
        if (!cursor[0] || len >= sizeof(out) - 1)
            break;
    }
    return out;
}

static bool home_is(const char *user, const char *want)
{
    return strcmp(home(user), want) == 0;
}

/* want may be an h_fmt string, which later h_fmt calls reuse: copied. */
#define WAIT_HOME(user, want)                                                  \
    do {                                                                       \
        char want_[4096];                                                      \
        snprintf(want_, sizeof(want_), "%s", (want));                          \
        H_WAIT_UNTIL(home_is(user, want_), H_WAIT_MS,                          \
                     "%s's home timeline to be [%s], it is [%s]", user, want_, \
                     home(user));                                              \
    } while (0)

/* Every source of timelines applied up to its producer's head. */
static bool caught_up(void)
{
    const struct {
        const char *name;
        const struct h_service *svc;
    } srcs[] = {{"posts", F.posts}, {"connections", F.conns}};
    const char *hdrs[] = {as("timelines", NULL), NULL};
    json_t *st = h_get_json(h_fmt("%s/v1/admin/consumer", F.tl->url), hdrs);
    char *dump = json_dumps(st, JSON_COMPACT);
    snprintf(F.state, sizeof(F.state), "%s", dump ? dump : "");
    free(dump);
    bool done = true;
    for (size_t i = 0; done && i < MOAT_ARRAY_LEN(srcs); i++) {
        double head = h_metric(srcs[i].svc->url, "moat_outbox_head_seq");
        size_t k;
        json_t *s;
        done = false;
        json_array_foreach(json_object_get(st, "sources"), k, s)
        {
            if (strcmp(h_jstr(s, "source"), srcs[i].name) == 0)
                done = (double)h_jint(s, "cursor") >= head;
        }
    }
    json_decref(st);
    return done;
}

static void wait_caught_up(void)
{
    H_WAIT_UNTIL(caught_up(), H_WAIT_MS, "timelines to catch up (%s)", F.state);
}

static void assert_verify_identical(void)
{
    struct h_resp r;
    const char *hdrs[] = {as("timelines", NULL), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/admin/replay?verify=1", F.tl->url), hdrs,
           NULL, 0);
    h_assert_status(&r, 200);
    json_t *v = h_resp_json(&r);
    h_resp_release(&r);
    if (!json_is_true(json_object_get(v, "identical"))) {
        char *t = json_dumps(v, JSON_INDENT(2));
        print_error("replay verification found differences: %s\n", t);
        free(t);
        fail();
    }
    assert_true(h_jint(v, "events") > 0);
    json_decref(v);
}

/* ---- a post reaches its author and followers, in order, no one else ---- */

static void test_fan_out(void **state)
{
    MOAT_UNUSED(state);
    char a[32], b[32], c[32], d[32];
    snprintf(a, sizeof(a), "%s", new_user());
    snprintf(b, sizeof(b), "%s", new_user());
    snprintf(c, sizeof(c), "%s", new_user());
    snprintf(d, sizeof(d), "%s", new_user());
    follow(b, a, true);
    follow(c, a, true);
    wait_caught_up(); /* the follows are in before the posts */
    char p1[80], p2[80], p3[80], pd[80];
    snprintf(p1, sizeof(p1), "%s", post(a, "one"));
    snprintf(p2, sizeof(p2), "%s", post(a, "two @bob https://x.example/y"));
    snprintf(p3, sizeof(p3), "%s", post(a, "three"));
    snprintf(pd, sizeof(pd), "%s", post(d, "d alone"));
    char want[512];
    snprintf(want, sizeof(want), "%s,%s,%s", p3, p2, p1);
    WAIT_HOME(a, want);
    WAIT_HOME(b, want);
    WAIT_HOME(c, want);
    WAIT_HOME(d, pd);
    /* The post as the timeline shows it. */
    const char *hdrs[] = {as("timelines", b), NULL};
    json_t *j =
        h_get_json(h_fmt("%s/v1/timeline/home?limit=2", F.tl->url), hdrs);
    json_t *first = json_array_get(json_object_get(j, "posts"), 1);
    assert_string_equal(h_jstr(first, "author_id"), a);
    assert_string_equal(h_jstr(first, "text"), "two @bob https://x.example/y");
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(first, "mentions"), 0)),
                        "bob");
    assert_true(json_is_integer(json_object_get(first, "created_at")));
    assert_non_null(h_jstr(j, "next_cursor"));
    json_decref(j);
}

/* ---- unfollow and delete ---- */

static void test_unfollow_and_delete(void **state)
{
    MOAT_UNUSED(state);
    char a[32], b[32], c[32];
    snprintf(a, sizeof(a), "%s", new_user());
    snprintf(b, sizeof(b), "%s", new_user());
    snprintf(c, sizeof(c), "%s", new_user());
    follow(b, a, true);
    follow(c, a, true);
    wait_caught_up();
    char p1[80], p2[80], p3[80];
    snprintf(p1, sizeof(p1), "%s", post(a, "before"));
    WAIT_HOME(b, p1);
    /* Unfollow: the author's posts leave b's timeline, new ones stay out. */
    follow(b, a, false);
    WAIT_HOME(b, "");
    snprintf(p2, sizeof(p2), "%s", post(a, "after"));
    WAIT_HOME(a, h_fmt("%s,%s", p2, p1));
    wait_caught_up();
    assert_string_equal(home(b), "");
    WAIT_HOME(c, h_fmt("%s,%s", p2, p1));
    /* Delete: gone from every timeline. */
    snprintf(p3, sizeof(p3), "%s", post(a, "doomed"));
    WAIT_HOME(c, h_fmt("%s,%s,%s", p3, p2, p1));
    delete_post(a, p3);
    WAIT_HOME(c, h_fmt("%s,%s", p2, p1));
    WAIT_HOME(a, h_fmt("%s,%s", p2, p1));
    /* Following again brings the author's posts back. */
    follow(b, a, true);
    WAIT_HOME(b, h_fmt("%s,%s", p2, p1));
}

/* ---- an author with many followers is merged in at read time ---- */

static void test_celebrity_merged_on_read(void **state)
{
    MOAT_UNUSED(state);
    char k[32], f[4][32];
    snprintf(k, sizeof(k), "%s", new_user());
    for (int i = 0; i < 4; i++)
        snprintf(f[i], sizeof(f[i]), "%s", new_user());
    for (int i = 0; i < 3; i++)
        follow(f[i], k, true); /* 3 > FANOUT_MAX */
    follow(k, f[0], true);
    wait_caught_up();
    char q1[80], q0[80];
    snprintf(q0, sizeof(q0), "%s", post(f[0], "ordinary"));
    snprintf(q1, sizeof(q1), "%s", post(k, "famous"));
    WAIT_HOME(k, h_fmt("%s,%s", q1, q0));
    WAIT_HOME(f[0], h_fmt("%s,%s", q1, q0));
    WAIT_HOME(f[1], q1);
    WAIT_HOME(f[2], q1);
    WAIT_HOME(f[3], "");
    /* A new follower sees the earlier post too; an unfollow removes it. */
    follow(f[3], k, true);
    WAIT_HOME(f[3], q1);
    follow(f[1], k, false);
    WAIT_HOME(f[1], "");
    /* Pages across the two kinds of rows keep the order. */
    char q2[80], q3[80];
    snprintf(q2, sizeof(q2), "%s", post(f[0], "ordinary again"));
    snprintf(q3, sizeof(q3), "%s", post(k, "famous again"));
    WAIT_HOME(f[0], h_fmt("%s,%s,%s,%s", q3, q2, q1, q0));
}

/* ---- kill -9 during a workload, then recompute from the APIs ---- */

#define NUSERS 8
#define ROUNDS 60

/* user's timeline recomputed from posts' and connections' APIs: the
 * posts of the user and of everyone they follow, as a sorted id set. */
static json_t *recompute(const char *user)
{
    json_t *ids = json_array();
    json_t *authors = json_array();
    json_array_append_new(authors, json_string(user));
    const char *hc[] = {as("connections", NULL), NULL};
    json_t *fol = h_get_json(
        h_fmt("%s/v1/users/%s/following?limit=100", F.conns->url, user), hc);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(fol, "items"), i, e)
    {
        json_array_append_new(authors, json_string(h_jstr(e, "user_id")));
    }
    json_decref(fol);
    json_array_foreach(authors, i, e)
    {
        const char *hp[] = {as("posts", NULL), NULL};
        json_t *ps = h_get_json(h_fmt("%s/v1/users/%s/posts?limit=100",
                                      F.posts->url, json_string_value(e)),
                                hp);
        size_t k;
        json_t *p;
        json_t *items = json_object_get(ps, "items");
        json_array_foreach(items, k, p)
        {
            json_array_append_new(ids, json_string(h_jstr(p, "id")));
        }
        json_decref(ps);
    }
    json_decref(authors);
    return ids;
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* A list of ids as a sorted "a,b,c" (owned by the caller). */
static char *sorted_set(json_t *ids)
{
    size_t n = json_array_size(ids);
    const char **v = calloc(n ? n : 1, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = json_string_value(json_array_get(ids, i));
    qsort(v, n, sizeof(*v), cmp_str);
    size_t cap = 64 * n + 1, len = 0;
    char *out = calloc(cap, 1);
    for (size_t i = 0; i < n; i++)
        len +=
            (size_t)snprintf(out + len, cap - len, "%s%s", i ? "," : "", v[i]);
    free(v);
    return out;
}

static json_t *split(const char *csv)
{
    json_t *a = json_array();
    char *copy = strdup(csv), *cur = copy, *tok;
    while ((tok = strsep(&cur, ",")) != NULL)
        if (*tok)
            json_array_append_new(a, json_string(tok));
    free(copy);
    return a;
}

static void test_kill_and_recompute(void **state)
{
    MOAT_UNUSED(state);
    char u[NUSERS][32];
    for (int i = 0; i < NUSERS; i++)
        snprintf(u[i], sizeof(u[i]), "%s", new_user());
    unsigned rnd = 12345;
    bool following[NUSERS][NUSERS] = {{false}};
    struct h_service *victims[] = {F.tl, F.posts, F.conns};
    for (int round = 0; round < ROUNDS; round++) {
        rnd = rnd * 1103515245u + 12345u;
        int a = (int)((rnd >> 8) % NUSERS), b = (int)((rnd >> 16) % NUSERS);
        if ((rnd >> 24) % 3 == 0 && a != b) {
            follow(u[a], u[b], !following[a][b]);
            following[a][b] = !following[a][b];
        } else {
            post(u[a], h_fmt("round %d", round));
        }
        if (round % 20 == 10) {
            struct h_service *v = victims[(round / 20) % 3];
            h_service_kill(v);
            assert_int_equal(h_deployment_restart(&F.dep, v), 0);
        }
    }
    wait_caught_up();
    for (int i = 0; i < NUSERS; i++) {
        json_t *want = recompute(u[i]);
        json_t *got = split(home(u[i]));
        char *w = sorted_set(want), *g = sorted_set(got);
        if (strcmp(w, g) != 0)
            fail_msg("%s: timeline [%s], recomputed [%s]", u[i], g, w);
        free(w);
        free(g);
        json_decref(want);
        json_decref(got);
    }
    assert_verify_identical();
}

/* ---- degradation: each producer down, the timeline still answers ---- */

static void test_answers_with_producers_down(void **state)
{
    MOAT_UNUSED(state);
    char a[32], b[32];
    snprintf(a, sizeof(a), "%s", new_user());
    snprintf(b, sizeof(b), "%s", new_user());
    follow(b, a, true);
    wait_caught_up();
    char p[80];
    snprintf(p, sizeof(p), "%s", post(a, "still here"));
    WAIT_HOME(b, p);
    h_service_kill(F.posts);
    h_service_kill(F.conns);
    assert_string_equal(home(b), p);
    assert_int_equal(h_deployment_restart(&F.dep, F.posts), 0);
    assert_int_equal(h_deployment_restart(&F.dep, F.conns), 0);
    wait_caught_up();
}

/* ---- PostgreSQL restarted under posts and timelines ---- */

/* Create a post, retrying while posts finds PostgreSQL away (503). */
static bool try_post(const char *author, const char *text, char *id, size_t cap)
{
    struct h_resp r;
    const char *hdrs[] = {as("posts", author), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/posts", F.posts->url),
                h_fmt("{\"text\": \"%s\"}", text), hdrs);
    if (r.status != 201 && r.status != 503)
        fail_msg("post while PostgreSQL restarts: status %ld", r.status);
    if (r.status == 201) {
        json_t *j = h_resp_json(&r);
        snprintf(id, cap, "%s", h_jstr(j, "id"));
        json_decref(j);
    }
    h_resp_release(&r);
    return r.status == 201;
}

static void test_postgres_restart(void **state)
{
    MOAT_UNUSED(state);
    if (!h_pg_engine())
        skip(); /* the stores are SQLite files */
    char a[32], b[32], p1[80], p2[80];
    snprintf(a, sizeof(a), "%s", new_user());
    snprintf(b, sizeof(b), "%s", new_user());
    follow(b, a, true);
    wait_caught_up();
    snprintf(p1, sizeof(p1), "%s", post(a, "before the restart"));
    WAIT_HOME(b, p1);

    /* Away: a read is a 503 problem (retry later), not a 500. */
    h_pg_down();
    struct h_resp r;
    const char *hdrs[] = {as("timelines", b), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/timeline/home", F.tl->url), hdrs, NULL, 0);
    h_assert_problem(&r, 503);
    h_resp_release(&r);

    /* Back: both reconnect, the consumer resumes from its cursor. */
    h_pg_up();
    H_WAIT_UNTIL(try_post(a, "after the restart", p2, sizeof(p2)), H_WAIT_MS,
                 "posts to accept a post again");
    WAIT_HOME(b, h_fmt("%s,%s", p2, p1));
    wait_caught_up();
    assert_true(h_service_alive(F.posts));
    assert_true(h_service_alive(F.tl));
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    const char *user[] = {as("timelines", "usr_x"), NULL};
    const char *none[] = {as("timelines", NULL), NULL};
    const char *bad[] = {"cursor=zz", "cursor=", "limit=0",
                         "limit=101", "limit=x", "cursor=3130"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        h_http(&r, "GET", h_fmt("%s/v1/timeline/home?%s", F.tl->url, bad[i]),
               user, NULL, 0);
        if (i == MOAT_ARRAY_LEN(bad) - 1)
            h_assert_status(&r, 200); /* a well-formed cursor: "10" */
        else
            h_assert_problem(&r, 400);
        h_resp_release(&r);
    }
    /* No end user: 401; someone else's timeline: 403. */
    h_http(&r, "GET", h_fmt("%s/v1/timeline/home", F.tl->url), none, NULL, 0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/v1/timelines/usr_y", F.tl->url), user, NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    h_http(&r, "GET", h_fmt("%s/v1/timelines/usr_x", F.tl->url), user, NULL, 0);
    h_assert_status(&r, 200);
    h_resp_release(&r);
}

static int setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("timelines");
    const char *only[] = {"posts", "connections", "timelines", NULL};
    const char *env[] = {"timelines:MOAT_TIMELINES_FANOUT_MAX=" FANOUT_MAX,
                         NULL};
    if (h_deployment_start(&F.dep, MOAT_SOURCE_DIR "/deploy/social.json", F.tmp,
                           only, env) != 0)
        return -1;
    F.posts = h_deployment_service(&F.dep, "posts");
    F.conns = h_deployment_service(&F.dep, "connections");
    F.tl = h_deployment_service(&F.dep, "timelines");
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_deployment_stop(&F.dep);
    h_rmtree(F.tmp);
    free(F.tmp);
    return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fan_out),
        cmocka_unit_test(test_unfollow_and_delete),
        cmocka_unit_test(test_celebrity_merged_on_read),
        cmocka_unit_test(test_answers_with_producers_down),
        cmocka_unit_test(test_kill_and_recompute),
        cmocka_unit_test(test_postgres_restart),
        cmocka_unit_test(test_bad_input),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, setup, teardown);
}
