/*
 * test_analytics.c - the analytics service over real producers: moat-
 * messaging, moat-posts, moat-connections and moat-users processes, and a
 * harness test feed named "comments" standing in for the comments service. The
 * test acts (messages, posts, follows, comments) and checks that the counts
 * equal a recomputation from the producers' own APIs (and, for the test
 * feed, from what the test published); a feed that goes away (the test
 * feed stopped, messaging killed) is a blind spot within seconds while the
 * other sources stay counted, and when it comes back the counts catch up
 * exactly, events produced during the outage included. Replay --verify
 * rebuilds the same view; bad input is 4xx.
 *
 * test_apply_lag prints the time from a MessageSent commit to analytics
 * applying it (p50/p99 from moat_analytics_apply_lag_seconds) over
 * MOAT_ANALYTICS_BENCH messages (default 300): a measurement for
 * docs/analytics.md, not a timed assertion.
 */
#include "moat/common.h"

#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUSERS 3

static const char *const users[NUSERS] = {"usr_ann", "usr_ben", "usr_cat"};

/* What the test did; checked against the producers' APIs too. */
struct counts {
    long messages[NUSERS], posts[NUSERS], follows[NUSERS], comments[NUSERS];
};

static struct {
    char *tmp;
    struct h_service messaging, posts, connections, users, an;
    struct h_feed *comments;
    uint16_t comments_port;
    char peers[4][1024];
    const char *env_messaging[2], *env_posts[2], *env_connections[2],
        *env_users[2];
    char an_env[5][160];
    const char *env_an[6];
    char conversation[64];
    long comment_n;
    struct counts did;
    int64_t t0; /* before the first action, epoch seconds */
} F;

/* ---- helpers ---- */

/* A producer's MOAT_PEER_KEYS: the test and analytics may call it. */
static const char *producer_peers(char *buf, size_t cap, const char *self)
{
    char *test_key = moat_xasprintf("%s", h_test_pair_key("test", self));
    snprintf(buf, cap, "MOAT_PEER_KEYS=test:%s,analytics:%s", test_key,
             h_test_pair_key("analytics", self));
    free(test_key);
    return buf;
}

/* method url as user (NULL: a service acting for no user) with an
 * optional JSON body; the response's JSON (new reference) after checking
 * its status. */
static json_t *call(const struct h_service *svc, const char *method,
                    const char *path, const char *user, const char *json,
                    long status)
{
    struct h_resp r;
    const char *hdrs[] = {
        h_service_token(svc->name, user, user ? "customer" : NULL), NULL};
    const char *url = h_fmt("%s%s", svc->url, path);
    if (json)
        h_send_json(&r, method, url, json, hdrs);
    else
        h_http(&r, method, url, hdrs, NULL, 0);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static void send_message(int u)
{
    json_decref(call(&F.messaging, "POST",
                     h_fmt("/v1/conversations/%s/messages", F.conversation),
                     users[u], "{\"text\": \"hello\"}", 201));
    F.did.messages[u]++;
}

static void post(int u)
{
    json_decref(call(&F.posts, "POST", "/v1/posts", users[u],
                     "{\"text\": \"a post\"}", 201));
    F.did.posts[u]++;
}

static void follow(int u, int whom)
{
    json_decref(call(&F.connections, "POST", "/v1/follows", users[u],
                     h_fmt("{\"user_id\": \"%s\"}", users[whom]), 201));
    F.did.follows[u]++;
}

static void comment(int u)
{
    F.comment_n++;
    h_feed_publish(
        F.comments, "CommentPosted", h_fmt("cmt_%ld", F.comment_n),
        h_fmt("{\"comment_id\": \"cmt_%ld\", \"target\": {\"kind\": "
              "\"post\", \"id\": \"post_x\"}, \"author_id\": \"%s\", "
              "\"parent_id\": null, \"status\": \"approved\", "
              "\"created_at\": %lld}",
              F.comment_n, users[u], (long long)(moat_wall_ms() / 1000)));
    F.did.comments[u]++;
}

/* The counts as the producers' APIs tell them (comments: as published). */
static void recompute(struct counts *c)
{
    memset(c, 0, sizeof(*c));
    memcpy(c->comments, F.did.comments, sizeof(c->comments));
    int64_t after = 0;
    for (;;) {
        json_t *page =
            call(&F.messaging, "GET",
                 h_fmt("/v1/conversations/%s/messages?after=%lld&limit=100",
                       F.conversation, (long long)after),
                 users[0], NULL, 200);
        json_t *items = json_object_get(page, "items"), *m;
        size_t i;
        json_array_foreach(items, i, m)
        {
            const char *sender =
                json_string_value(json_object_get(m, "sender_id"));
            for (int u = 0; u < NUSERS; u++)
                if (sender && strcmp(sender, users[u]) == 0)
                    c->messages[u]++;
        }
        size_t n = json_array_size(items);
        after = h_jint(page, "next_cursor");
        json_decref(page);
        if (n == 0)
            break;
    }
    for (int u = 0; u < NUSERS; u++) {
        json_t *p = call(&F.posts, "GET",
                         h_fmt("/v1/users/%s/posts?limit=100", users[u]),
                         users[u], NULL, 200);
        assert_true(json_is_null(json_object_get(p, "next_cursor")));
        c->posts[u] = (long)json_array_size(json_object_get(p, "items"));
        json_decref(p);
        json_t *k =
            call(&F.connections, "GET", h_fmt("/v1/users/%s/counts", users[u]),
                 users[u], NULL, 200);
        c->follows[u] = (long)h_jint(k, "following");
        json_decref(k);
    }
}

/* GET engagement as user (NULL: a service) with query; status checked. */
static json_t *engagement(const char *user, const char *role, const char *query,
                          long status)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("analytics", user, role), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/analytics/engagement?%s", F.an.url, query),
           hdrs, NULL, 0);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* The window every test's actions fall in, by the hour. */
static const char *window(const char *user)
{
    int64_t now = moat_wall_ms() / 1000;
    return h_fmt("bucket=hour&from=%lld&to=%lld%s%s", (long long)(F.t0 - 3600),
                 (long long)(now + 3600), user ? "&user_id=" : "",
                 user ? user : "");
}

static long sum(json_t *answer, const char *metric)
{
    long n = 0;
    json_t *b;
    size_t i;
    json_array_foreach(json_object_get(answer, "series"), i, b) n +=
        (long)h_jint(b, metric);
    return n;
}

static bool names_blind(json_t *answer, const char *source)
{
    json_t *b;
    size_t i;
    json_array_foreach(json_object_get(answer, "blind_spots"), i, b)
    {
        if (strcmp(json_string_value(json_object_get(b, "source")), source) ==
            0)
            return true;
    }
    return false;
}

/* Whether analytics shows exactly c, per user and overall, with no blind
 * spot; why (cap bytes): the first difference otherwise. */
static bool shows(const struct counts *c, char *why, size_t cap)
{
    static const char *const metrics[] = {"messages_sent", "posts", "follows",
                                          "comments"};
    long total[4] = {0};
    bool ok = true;
    for (int u = 0; u <= NUSERS && ok; u++) {
        json_t *a =
            engagement(NULL, NULL, window(u < NUSERS ? users[u] : NULL), 200);
        for (int m = 0; m < 4; m++) {
            const long *want = m == 0   ? c->messages
                               : m == 1 ? c->posts
                               : m == 2 ? c->follows
                                        : c->comments;
            long w = u < NUSERS ? want[u] : total[m];
            if (u < NUSERS)
                total[m] += want[u];
            long got = sum(a, metrics[m]);
            if (got != w && ok)
                snprintf(why, cap, "%s %s: analytics %ld, expected %ld",
                         u < NUSERS ? users[u] : "overall", metrics[m], got, w);
            ok = ok && got == w;
        }
        if (json_array_size(json_object_get(a, "blind_spots")) != 0 && ok) {
            char *t = json_dumps(json_object_get(a, "blind_spots"), 0);
            snprintf(why, cap, "blind spots: %s", t);
            free(t);
            ok = false;
        }
        json_decref(a);
    }
    return ok;
}

/* Wait until analytics shows the recomputed counts, and they are what the
 * test did. */
static void assert_exact(void)
{
    struct counts api;
    recompute(&api);
    assert_memory_equal(&api, &F.did, sizeof(api));
    char why[512] = "";
    H_WAIT_UNTIL(shows(&api, why, sizeof(why)), H_WAIT_MS,
                 "analytics to show the producers' counts (last: %s)", why);
}

/* Is source (*now) a blind spot of the overall answer as blind says? A
 * blind spot found has its lag and state. */
static bool blind_is(const char *source, bool blind, bool *now)
{
    json_t *a = engagement(NULL, NULL, window(NULL), 200);
    *now = names_blind(a, source);
    if (*now && blind) {
        json_t *b = json_array_get(json_object_get(a, "blind_spots"), 0);
        assert_non_null(json_object_get(b, "lag_seconds"));
        assert_non_null(json_object_get(b, "state"));
    }
    json_decref(a);
    return *now == blind;
}

/* Wait until source is (or is not) a blind spot of the overall answer. */
static void wait_blind(const char *source, bool blind)
{
    bool now = !blind;
    H_WAIT_UNTIL(blind_is(source, blind, &now), H_WAIT_MS,
                 "%s to be%s a blind spot (last: blind=%d)", source,
                 blind ? "" : " no longer", now);
}

/* Does the overall answer count want messages (*seen: its count)? Comments
 * is down: a blind spot at every read. */
static bool sent_counted_comments_blind(long want, long *seen)
{
    json_t *a = engagement(NULL, NULL, window(NULL), 200);
    *seen = sum(a, "messages_sent");
    bool blind = names_blind(a, "comments");
    json_decref(a);
    assert_true(blind); /* still down */
    return *seen == want;
}

/* Does the overall answer count want registrations (*now), never more? */
static bool registrations_reach(long want, long *now)
{
    json_t *a = engagement(NULL, NULL, window(NULL), 200);
    *now = sum(a, "registrations");
    json_decref(a);
    assert_true(*now <= want);
    return *now == want;
}

/* Some of everything. */
static void act(void)
{
    send_message(0);
    send_message(0);
    send_message(1);
    post(0);
    post(2);
    comment(1);
    comment(2);
    comment(1);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.t0 = moat_wall_ms() / 1000;
    F.tmp = h_tmpdir_new("analytics");
    F.env_messaging[0] =
        producer_peers(F.peers[0], sizeof(F.peers[0]), "messaging");
    F.env_posts[0] = producer_peers(F.peers[1], sizeof(F.peers[1]), "posts");
    F.env_connections[0] =
        producer_peers(F.peers[2], sizeof(F.peers[2]), "connections");
    F.env_users[0] = producer_peers(F.peers[3], sizeof(F.peers[3]), "users");
    if (h_service_start(&F.messaging, "messaging", F.tmp,
                        h_fmt("%s/messaging-data", F.tmp),
                        F.env_messaging) != 0 ||
        h_service_start(&F.posts, "posts", F.tmp, h_fmt("%s/posts-data", F.tmp),
                        F.env_posts) != 0 ||
        h_service_start(&F.connections, "connections", F.tmp,
                        h_fmt("%s/connections-data", F.tmp),
                        F.env_connections) != 0 ||
        h_service_start(&F.users, "users", F.tmp, h_fmt("%s/users-data", F.tmp),
                        F.env_users) != 0)
        return -1;
    F.comments = h_feed_start("comments", F.tmp);
    F.comments_port = (uint16_t)atoi(strrchr(h_feed_url(F.comments), ':') + 1);
    snprintf(F.an_env[0], sizeof(F.an_env[0]),
             "MOAT_ANALYTICS_MESSAGING_URL=%s", F.messaging.url);
    snprintf(F.an_env[1], sizeof(F.an_env[1]), "MOAT_ANALYTICS_POSTS_URL=%s",
             F.posts.url);
    snprintf(F.an_env[2], sizeof(F.an_env[2]),
             "MOAT_ANALYTICS_CONNECTIONS_URL=%s", F.connections.url);
    snprintf(F.an_env[3], sizeof(F.an_env[3]), "MOAT_ANALYTICS_COMMENTS_URL=%s",
             h_feed_url(F.comments));
    snprintf(F.an_env[4], sizeof(F.an_env[4]), "MOAT_ANALYTICS_USERS_URL=%s",
             F.users.url);
    for (int i = 0; i < 5; i++)
        F.env_an[i] = F.an_env[i];
    F.env_an[5] = NULL;
    if (h_service_start(&F.an, "analytics", F.tmp,
                        h_fmt("%s/analytics-data", F.tmp), F.env_an) != 0)
        return -1;
    json_t *c = call(&F.messaging, "POST", "/v1/conversations", users[0],
                     h_fmt("{\"kind\": \"group\", \"members\": [\"%s\", "
                           "\"%s\"]}",
                           users[1], users[2]),
                     201);
    snprintf(F.conversation, sizeof(F.conversation), "%s",
             json_string_value(json_object_get(c, "id")));
    json_decref(c);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.an);
    rc |= h_service_stop(&F.messaging);
    rc |= h_service_stop(&F.posts);
    rc |= h_service_stop(&F.connections);
    rc |= h_service_stop(&F.users);
    h_feed_stop(F.comments);
    h_service_release(&F.an);
    h_service_release(&F.messaging);
    h_service_release(&F.posts);
    h_service_release(&F.connections);
    h_service_release(&F.users);
    h_rmtree(F.tmp);
    free(F.tmp);
    if (rc)
        print_error("every service must exit 0 on SIGTERM\n");
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_counts_exact(void **state)
{
    MOAT_UNUSED(state);
    act();
    follow(0, 1);
    follow(2, 0);
    follow(1, 2);
    assert_exact();

    /* The answer's shape: dense buckets of the asked size. */
    json_t *a = engagement(NULL, NULL, window(NULL), 200);
    assert_string_equal(json_string_value(json_object_get(a, "bucket")),
                        "hour");
    json_t *series = json_object_get(a, "series");
    json_int_t from = h_jint(a, "from_at"), to = h_jint(a, "to_at");
    assert_int_equal(from % 3600, 0);
    assert_int_equal(to % 3600, 0);
    assert_int_equal(json_array_size(series), (size_t)((to - from) / 3600));
    for (size_t i = 0; i < json_array_size(series); i++)
        assert_int_equal(h_jint(json_array_get(series, i), "bucket_start_at"),
                         from + (json_int_t)i * 3600);
    assert_true(json_is_null(json_object_get(a, "user_id")));
    json_decref(a);

    /* A user's active_users is 1 exactly in the buckets where it acted;
     * overall, at most everyone. */
    for (int u = 0; u < NUSERS; u++) {
        json_t *m = engagement(users[u], "customer", window(users[u]), 200);
        json_t *b;
        size_t i;
        json_array_foreach(json_object_get(m, "series"), i, b)
        {
            bool acted = h_jint(b, "messages_sent") + h_jint(b, "posts") +
                             h_jint(b, "follows") + h_jint(b, "comments") >
                         0;
            assert_int_equal(h_jint(b, "active_users"), acted ? 1 : 0);
        }
        json_decref(m);
    }
    json_t *d =
        engagement(NULL, NULL,
                   h_fmt("bucket=day&from=%lld&to=%lld", (long long)F.t0,
                         (long long)(moat_wall_ms() / 1000 + 1)),
                   200);
    json_t *b;
    size_t i, nonzero = 0;
    json_int_t active = 0;
    json_array_foreach(json_object_get(d, "series"), i, b)
    {
        assert_true(h_jint(b, "active_users") <= NUSERS);
        nonzero += h_jint(b, "active_users") > 0;
        active += h_jint(b, "active_users");
    }
    if (nonzero == 1) /* not across midnight UTC */
        assert_int_equal(active, NUSERS);
    json_decref(d);
}

/* The comments feed goes away: a blind spot at once, while messages are
 * still counted; comments made meanwhile are counted when it is back. */
static void test_comments_outage(void **state)
{
    MOAT_UNUSED(state);
    assert_exact();
    h_feed_stop(F.comments);
    F.comments = NULL;
    wait_blind("comments", true);
    json_t *a = engagement(NULL, NULL, window(NULL), 200);
    assert_false(names_blind(a, "messaging"));
    json_t *b;
    size_t i;
    json_array_foreach(json_object_get(a, "blind_spots"), i, b)
    {
        assert_string_equal(json_string_value(json_object_get(b, "source")),
                            "comments");
        assert_false(json_is_true(json_object_get(b, "reachable")));
    }
    long messages = sum(a, "messages_sent");
    json_decref(a);

    send_message(2);
    long seen = messages;
    H_WAIT_UNTIL(sent_counted_comments_blind(messages + 1, &seen), H_WAIT_MS,
                 "messages_sent to reach %ld while comments is down (last: "
                 "%ld)",
                 messages + 1, seen);

    /* Back on the same port with the same outbox; comments made at once. */
    F.comments = h_feed_start_at("comments", F.tmp, F.comments_port);
    comment(0);
    comment(2);
    wait_blind("comments", false);
    assert_exact();
}

/* A real producer killed: a blind spot; restarted, it catches up,
 * messages sent right after the restart included. */
static void test_messaging_outage(void **state)
{
    MOAT_UNUSED(state);
    assert_exact();
    h_service_kill(&F.messaging);
    wait_blind("messaging", true);
    post(1); /* the others flow on */
    comment(0);
    assert_int_equal(h_service_restart(&F.messaging, F.env_messaging), 0);
    send_message(1);
    send_message(2);
    wait_blind("messaging", false);
    assert_exact();
}

/* Registrations with the real users service: each new user is counted,
 * and active, in its own series. */
static void test_registrations(void **state)
{
    MOAT_UNUSED(state);
    json_t *before = engagement(NULL, NULL, window(NULL), 200);
    long registered = sum(before, "registrations");
    json_decref(before);
    char ids[2][64];
    for (int i = 0; i < 2; i++) {
        json_t *u = call(&F.users, "POST", "/v1/users", NULL,
                         h_fmt("{\"email\": \"reg%d@example.com\", "
                               "\"password\": \"a long enough secret\", "
                               "\"display_name\": \"Reg %d\"}",
                               i, i),
                         201);
        snprintf(ids[i], sizeof(ids[i]), "%s",
                 json_string_value(json_object_get(u, "id")));
        json_decref(u);
    }
    long now = registered;
    H_WAIT_UNTIL(registrations_reach(registered + 2, &now), H_WAIT_MS,
                 "registrations to reach %ld (last: %ld)", registered + 2, now);
    for (int i = 0; i < 2; i++) {
        json_t *a = engagement(ids[i], "customer", window(ids[i]), 200);
        assert_int_equal(sum(a, "registrations"), 1);
        assert_int_equal(sum(a, "active_users"), 1);
        assert_int_equal(sum(a, "messages_sent"), 0);
        json_decref(a);
    }
}

static void test_replay_verify(void **state)
{
    MOAT_UNUSED(state);
    assert_exact();
    struct h_resp r;
    const char *hdrs[] = {h_service_token("analytics", NULL, NULL), NULL};
    h_http(&r, "POST", h_fmt("%s/v1/admin/replay?verify=1", F.an.url), hdrs,
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

    /* A full replay rebuilds the same counts. */
    h_http(&r, "POST", h_fmt("%s/v1/admin/replay", F.an.url), hdrs, NULL, 0);
    h_assert_status(&r, 202);
    h_resp_release(&r);
    assert_exact();
}

static void test_authorisation(void **state)
{
    MOAT_UNUSED(state);
    const char *me = users[0];
    /* Everyone's: admins, moderators and services. */
    json_decref(engagement("usr_root", "admin", window(NULL), 200));
    json_decref(engagement("usr_mod", "moderator", window(NULL), 200));
    json_decref(engagement(me, "customer", window(NULL), 403));
    /* A user's: that user, or those. */
    json_t *a = engagement(me, "customer", window(me), 200);
    assert_string_equal(json_string_value(json_object_get(a, "user_id")), me);
    json_decref(a);
    json_decref(engagement(me, "customer", window(users[1]), 403));
    json_decref(engagement("usr_mod", "moderator", window(me), 200));
}

static void test_bad_input(void **state)
{
    MOAT_UNUSED(state);
    json_decref(engagement(NULL, NULL, "bucket=week", 400));
    json_decref(engagement(NULL, NULL, "from=yesterday", 400));
    json_decref(engagement(NULL, NULL, "to=-5", 400));
    json_decref(engagement(NULL, NULL, "colour=blue", 400));
    json_decref(engagement(NULL, NULL, "bucket=hour&bucket=day", 400));
    json_decref(engagement(NULL, NULL, "user_id=", 400));
    json_decref(engagement(NULL, NULL, "from=100&to=100", 422));
    json_decref(engagement(NULL, NULL, "from=200&to=100", 422));
    /* 1,440 buckets is the most. */
    json_decref(engagement(NULL, NULL, "bucket=minute&from=0&to=86400", 200));
    json_decref(engagement(NULL, NULL, "bucket=minute&from=0&to=86401", 422));
    json_decref(engagement(NULL, NULL, "bucket=day&from=0&to=2000000000", 422));
    /* RFC 3339 is accepted too (API v2 writes times so). */
    json_t *a = engagement(NULL, NULL,
                           "bucket=minute&from=2026-01-01T00:00:00Z&"
                           "to=2026-01-01T00:10:00Z",
                           200);
    assert_int_equal(json_array_size(json_object_get(a, "series")), 10);
    assert_int_equal(h_jint(a, "from_at"), 1767225600);
    json_decref(a);
    /* API v2: the same answer with RFC 3339 times. */
    struct h_resp r;
    const char *hdrs[] = {h_service_token("analytics", NULL, NULL), NULL};
    h_http(&r, "GET",
           h_fmt("%s/v2/analytics/engagement?bucket=day&"
                 "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
                 F.an.url),
           hdrs, NULL, 0);
    h_assert_status(&r, 200);
    a = h_resp_json(&r);
    h_resp_release(&r);
    assert_string_equal(json_string_value(json_object_get(a, "from_at")),
                        "2026-01-01T00:00:00Z");
    json_t *b0 = json_array_get(json_object_get(a, "series"), 0);
    assert_string_equal(
        json_string_value(json_object_get(b0, "bucket_start_at")),
        "2026-01-01T00:00:00Z");
    assert_int_equal(json_array_size(json_object_get(a, "series")), 1);
    json_decref(a);
}

#define HIST_MAX 64

/* The histogram moat_analytics_apply_lag_seconds{source="messaging"} as
 * /metrics shows it now: bucket bounds and cumulative counts. */
struct hist {
    double le[HIST_MAX], n[HIST_MAX];
    size_t k;
};

static void hist_read(struct hist *h)
{
    static const char key[] =
        "moat_analytics_apply_lag_seconds_bucket{source=\"messaging\",le=\"";
    struct h_resp r;
    h_get_metrics(&r, F.an.url);
    h_assert_status(&r, 200);
    h->k = 0;
    for (const char *p = strstr(r.body, key); p && h->k < HIST_MAX;
         p = strstr(p + 1, key)) {
        const char *v = p + strlen(key);
        h->le[h->k] = strncmp(v, "+Inf", 4) == 0 ? 1e9 : strtod(v, NULL);
        h->n[h->k] = strtod(strchr(v, ' ') + 1, NULL);
        h->k++;
    }
    h_resp_release(&r);
}

/* The smallest bucket bound holding quantile q of what was observed
 * between before and after. */
static double hist_quantile(const struct hist *before, const struct hist *after,
                            double q)
{
    double total = after->n[after->k - 1] - before->n[after->k - 1];
    for (size_t i = 0; i < after->k; i++)
        if (after->n[i] - before->n[i] >= q * total)
            return after->le[i];
    return -1;
}

static void test_apply_lag(void **state)
{
    MOAT_UNUSED(state);
    const char *env = getenv("MOAT_ANALYTICS_BENCH");
    int n = env ? atoi(env) : 300;
    if (n <= 0)
        n = 300;
    struct hist before, after;
    hist_read(&before);
    assert_true(before.k > 0);
    uint64_t start = moat_mono_ms();
    for (int i = 0; i < n; i++)
        send_message(i % NUSERS);
    uint64_t elapsed = moat_mono_ms() - start;
    assert_exact();
    hist_read(&after);
    assert_int_equal(after.k, before.k);
    assert_int_equal((long)(after.n[after.k - 1] - before.n[before.k - 1]), n);
    print_message("analytics apply lag over %d MessageSent sent at %.0f/s: "
                  "p50 <= %.4f s, p99 <= %.4f s\n",
                  n, elapsed ? n * 1000.0 / (double)elapsed : 0.0,
                  hist_quantile(&before, &after, 0.5),
                  hist_quantile(&before, &after, 0.99));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_exact),
        cmocka_unit_test(test_comments_outage),
        cmocka_unit_test(test_messaging_outage),
        cmocka_unit_test(test_registrations),
        cmocka_unit_test(test_replay_verify),
        cmocka_unit_test(test_authorisation),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_apply_lag),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
