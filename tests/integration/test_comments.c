/*
 * test_comments.c - the comments service with real peers: moat-posts and
 * moat-messaging processes (the synchronous checks) and a harness feed
 * named "users" standing in for users' outbox (its ModerationActionRequested
 * events; users' POST /v1/moderation/actions is another change). Comments
 * is called directly with service tokens carrying the end user, as the
 * gateway sends them.
 *
 * Covered: posting, listing threads (pages), replies one level deep, caps
 * and 4xx, Idempotency-Key, the moderation flow (pending seen by its
 * author and moderators only, approve / reject), per-target and per-user
 * moderation settings, deletion by the author (refused for others),
 * moderation actions from users' feed applied exactly once even when
 * published while comments is down, and comments on messages: members
 * only (as messaging says), 503 with Retry-After while messaging is down.
 */
#include "moat/common.h"

#include "harness.h"

#include <stdlib.h>
#include <string.h>

static struct {
    char *tmp;
    struct h_feed *users; /* the stand-in for users' feed */
    struct h_service posts, messaging, comments;
} F;

#define ALICE "usr_alice"
#define BOB   "usr_bob"
#define CAROL "usr_carol"
#define DAVE  "usr_dave"
#define MOD   "usr_mod"

/* Strict, unlike h_jstr: NULL when the member is missing, so that a
 * missing member fails the assertions that rely on it (the ids of two answers
 * compared). */
static const char *str(json_t *j, const char *key)
{
    return json_string_value(json_object_get(j, key));
}

/* method path as user (MOD is an admin) with an optional JSON body. path
 * and json may be h_fmt buffers: copied before minting the token rotates
 * them. */
static void call_at(struct h_resp *r, const struct h_service *svc,
                    const char *method, const char *path, const char *user,
                    const char *json, const char *extra)
{
    char *url = moat_xasprintf("%s%s", svc->url, path);
    char *body = json ? moat_xstrdup(json) : NULL;
    char *more = extra ? moat_xstrdup(extra) : NULL;
    const char *hdrs[] = {
        h_service_token(svc->name, user,
                        user && strcmp(user, MOD) == 0 ? "admin" : "customer"),
        more, NULL};
    if (body)
        h_send_json(r, method, url, body, hdrs);
    else
        h_http(r, method, url, hdrs, NULL, 0);
    free(url);
    free(body);
    free(more);
}

static void call(struct h_resp *r, const char *method, const char *path,
                 const char *user, const char *json)
{
    call_at(r, &F.comments, method, path, user, json, NULL);
}

/* A call on svc that must answer status; its JSON (NULL for none). */
static json_t *call_ok_at(const struct h_service *svc, const char *method,
                          const char *path, const char *user, const char *json,
                          long status)
{
    struct h_resp r;
    call_at(&r, svc, method, path, user, json, NULL);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static json_t *call_ok(const char *method, const char *path, const char *user,
                       const char *json, long status)
{
    return call_ok_at(&F.comments, method, path, user, json, status);
}

static void expect_problem(const char *method, const char *path,
                           const char *user, const char *json, long status)
{
    struct h_resp r;
    call(&r, method, path, user, json);
    h_assert_problem(&r, status);
    h_resp_release(&r);
}

/* A new post by author: its id (rotating buffer). */
static const char *new_post(const char *author)
{
    json_t *p = call_ok_at(&F.posts, "POST", "/v1/posts", author,
                           "{\"text\": \"a post to comment on\"}", 201);
    const char *id = h_fmt("%s", str(p, "id"));
    json_decref(p);
    return id;
}

static const char *post_target(const char *post)
{
    return h_fmt("{\"kind\": \"post\", \"id\": \"%s\"}", post);
}

/* A new comment by author on target (JSON) with parent (may be NULL);
 * returns the comment (new reference). */
static json_t *comment(const char *author, const char *target,
                       const char *parent, const char *text)
{
    return call_ok("POST", "/v1/comments", author,
                   h_fmt("{\"target\": %s, \"text\": \"%s\"%s%s%s}", target,
                         text, parent ? ", \"parent_id\": \"" : "",
                         parent ? parent : "", parent ? "\"" : ""),
                   201);
}

/* GET /v1/comments of post as user: the items (new reference). */
static json_t *list_post(const char *post, const char *user)
{
    json_t *page = call_ok(
        "GET", h_fmt("/v1/comments?target_kind=post&target_id=%s", post), user,
        NULL, 200);
    json_t *items = json_incref(json_object_get(page, "items"));
    json_decref(page);
    return items;
}

/* Is comment id among items (top level or a reply)? */
static bool listed(json_t *items, const char *id)
{
    size_t i, k;
    json_t *c, *rep;
    json_array_foreach(items, i, c)
    {
        if (strcmp(str(c, "id"), id) == 0)
            return true;
        json_array_foreach(json_object_get(c, "replies"), k,
                           rep) if (strcmp(str(rep, "id"), id) ==
                                    0) return true;
    }
    return false;
}

/* ---- setup ---- */

/* Peer keys for a service comments calls: the test and comments. Kept
 * in buf (h_fmt's buffers rotate while the harness starts a service). */
static const char *peers_of(const char *callee, char *buf, size_t cap)
{
    snprintf(buf, cap, "MOAT_PEER_KEYS=test:%s,comments:%s",
             h_test_pair_key("test", callee),
             h_test_pair_key("comments", callee));
    return buf;
}

/* Comments' environment: where its peers are. */
static const char *const *comments_env(void)
{
    static char users[160], posts[160], messaging[160];
    static const char *env[] = {users, posts, messaging, NULL};
    snprintf(users, sizeof(users), "MOAT_COMMENTS_USERS_URL=%s",
             h_feed_url(F.users));
    snprintf(posts, sizeof(posts), "MOAT_COMMENTS_POSTS_URL=%s", F.posts.url);
    snprintf(messaging, sizeof(messaging), "MOAT_COMMENTS_MESSAGING_URL=%s",
             F.messaging.url);
    return env;
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("comments");
    /* h_http's first call initialises curl: before any thread does. */
    struct h_resp r;
    h_get(&r, "http://127.0.0.1:1/");
    h_resp_release(&r);
    F.users = h_feed_start("users", F.tmp);
    char pk[256], mk[256];
    const char *posts_env[] = {peers_of("posts", pk, sizeof(pk)), NULL};
    const char *messaging_env[] = {peers_of("messaging", mk, sizeof(mk)), NULL};
    if (h_service_start(&F.posts, "posts", F.tmp, h_fmt("%s/posts-data", F.tmp),
                        posts_env) ||
        h_service_start(&F.messaging, "messaging", F.tmp,
                        h_fmt("%s/messaging-data", F.tmp), messaging_env))
        return -1;
    return h_service_start(&F.comments, "comments", F.tmp,
                           h_fmt("%s/comments-data", F.tmp), comments_env());
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = 0;
    struct h_service *all[] = {&F.comments, &F.messaging, &F.posts};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++) {
        if (h_service_alive(all[i]) && h_service_stop(all[i]) != 0) {
            print_error("%s must exit 0 on SIGTERM\n", all[i]->name);
            rc = -1;
        }
        h_service_release(all[i]);
    }
    h_feed_stop(F.users);
    h_rmtree(F.tmp);
    free(F.tmp);
    return rc;
}

/* ---- posts ---- */

static void test_post_threads(void **state)
{
    MOAT_UNUSED(state);
    char post[64];
    snprintf(post, sizeof(post), "%s", new_post(ALICE));
    char target[128];
    snprintf(target, sizeof(target), "%s", post_target(post));

    json_t *top = comment(BOB, target, NULL, "nice post");
    assert_string_equal(str(top, "status"), "approved");
    assert_string_equal(str(top, "author_id"), BOB);
    assert_true(json_is_null(json_object_get(top, "parent_id")));
    char top_id[64];
    snprintf(top_id, sizeof(top_id), "%s", str(top, "id"));
    json_t *reply = comment(ALICE, target, top_id, "thanks");
    assert_string_equal(str(reply, "parent_id"), top_id);
    char reply_id[64];
    snprintf(reply_id, sizeof(reply_id), "%s", str(reply, "id"));

    /* One level deep: a reply to a reply is 422. */
    expect_problem("POST", "/v1/comments", CAROL,
                   h_fmt("{\"target\": %s, \"text\": \"deeper\", "
                         "\"parent_id\": \"%s\"}",
                         target, reply_id),
                   422);
    /* A parent on another target is 422 too. */
    char other[64];
    snprintf(other, sizeof(other), "%s", new_post(CAROL));
    expect_problem("POST", "/v1/comments", CAROL,
                   h_fmt("{\"target\": %s, \"text\": \"x\", "
                         "\"parent_id\": \"%s\"}",
                         post_target(other), top_id),
                   422);

    /* The thread: the top-level comment with its reply. */
    json_t *items = list_post(post, CAROL);
    assert_int_equal(json_array_size(items), 1);
    json_t *first = json_array_get(items, 0);
    assert_string_equal(str(first, "id"), top_id);
    json_t *replies = json_object_get(first, "replies");
    assert_int_equal(json_array_size(replies), 1);
    assert_string_equal(str(json_array_get(replies, 0), "text"), "thanks");
    json_decref(items);

    /* Pages of top-level comments, oldest first. */
    json_t *more[3];
    for (int i = 0; i < 3; i++)
        more[i] = comment(CAROL, target, NULL, h_fmt("more %d", i));
    json_t *page = call_ok(
        "GET",
        h_fmt("/v1/comments?target_kind=post&target_id=%s&limit=2", post), NULL,
        NULL, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 2);
    const char *cursor = str(page, "next_cursor");
    assert_non_null(cursor);
    json_t *page2 = call_ok("GET",
                            h_fmt("/v1/comments?target_kind=post&target_id=%s&"
                                  "limit=2&cursor=%s",
                                  post, cursor),
                            NULL, NULL, 200);
    json_t *items2 = json_object_get(page2, "items");
    assert_int_equal(json_array_size(items2), 2);
    assert_string_equal(str(json_array_get(items2, 1), "id"),
                        str(more[2], "id"));
    assert_true(json_is_null(json_object_get(page2, "next_cursor")));
    json_decref(page);
    json_decref(page2);
    for (int i = 0; i < 3; i++)
        json_decref(more[i]);

    /* GET one. */
    json_t *got =
        call_ok("GET", h_fmt("/v1/comments/%s", top_id), CAROL, NULL, 200);
    assert_string_equal(str(got, "text"), "nice post");
    json_decref(got);
    json_decref(top);
    json_decref(reply);
}

static void test_bad_input(void **state)
{
    MOAT_UNUSED(state);
    char post[64];
    snprintf(post, sizeof(post), "%s", new_post(ALICE));
    char target[128];
    snprintf(target, sizeof(target), "%s", post_target(post));
    char *big = malloc(2002);
    memset(big, 'a', 2001);
    big[2001] = '\0';
    char *body =
        moat_xasprintf("{\"target\": %s, \"text\": \"%s\"}", target, big);
    expect_problem("POST", "/v1/comments", BOB, body, 422);
    free(body);
    big[2000] = '\0'; /* exactly the cap */
    json_decref(comment(BOB, target, NULL, big));
    free(big);
    expect_problem("POST", "/v1/comments", BOB,
                   h_fmt("{\"target\": %s, \"text\": \"  \"}", target), 422);
    expect_problem("POST", "/v1/comments", BOB,
                   h_fmt("{\"target\": %s, \"text\": \"a\\u0001\"}", target),
                   422);
    expect_problem(
        "POST", "/v1/comments", BOB,
        h_fmt("{\"target\": %s, \"text\": \"x\", \"extra\": 1}", target), 422);
    expect_problem("POST", "/v1/comments", BOB, "{\"text\": \"x\"}", 422);
    expect_problem("POST", "/v1/comments", BOB,
                   "{\"target\": {\"kind\": \"page\", \"id\": \"x\"}, "
                   "\"text\": \"x\"}",
                   422);
    expect_problem("POST", "/v1/comments", BOB, "[1]", 422);
    expect_problem("POST", "/v1/comments", NULL,
                   h_fmt("{\"target\": %s, \"text\": \"x\"}", target), 401);
    /* A post that does not exist (a well-formed id). */
    expect_problem("POST", "/v1/comments", BOB,
                   "{\"target\": {\"kind\": \"post\", \"id\": "
                   "\"post_01M91PJ5W493XYHX8SD9T3DGZY\"}, \"text\": \"x\"}",
                   404);
    expect_problem("GET", "/v1/comments", BOB, NULL, 400);
    expect_problem("GET", "/v1/comments?target_kind=post&target_id=nope", BOB,
                   NULL, 400);
    expect_problem("GET",
                   h_fmt("/v1/comments?target_kind=post&target_id=%s&"
                         "limit=51",
                         post),
                   BOB, NULL, 400);
    expect_problem("GET",
                   h_fmt("/v1/comments?target_kind=post&target_id=%s&"
                         "cursor=zz",
                         post),
                   BOB, NULL, 400);
    expect_problem("GET", "/v1/comments/cmt_nope", BOB, NULL, 404);
    expect_problem("GET", "/v1/comments/cmt_01M91PJ5W493XYHX8SD9T3DGZY", BOB,
                   NULL, 404);
}

static void test_idempotency(void **state)
{
    MOAT_UNUSED(state);
    char post[64];
    snprintf(post, sizeof(post), "%s", new_post(ALICE));
    const char *body =
        h_fmt("{\"target\": %s, \"text\": \"once\"}", post_target(post));
    struct h_resp a, b, c, d;
    call_at(&a, &F.comments, "POST", "/v1/comments", BOB, body,
            "Idempotency-Key: k-1");
    h_assert_status(&a, 201);
    call_at(&b, &F.comments, "POST", "/v1/comments", BOB, body,
            "Idempotency-Key: k-1");
    h_assert_status(&b, 201);
    assert_string_equal(h_resp_header(&b, "Idempotent-Replayed"), "true");
    json_t *ja = h_resp_json(&a), *jb = h_resp_json(&b);
    assert_string_equal(str(ja, "id"), str(jb, "id"));
    call_at(&c, &F.comments, "POST", "/v1/comments", BOB,
            h_fmt("{\"target\": %s, \"text\": \"other\"}", post_target(post)),
            "Idempotency-Key: k-1");
    h_assert_problem(&c, 422);
    call_at(&d, &F.comments, "POST", "/v1/comments", BOB, body,
            "Idempotency-Key: bad key");
    h_assert_problem(&d, 400);
    json_t *items = list_post(post, BOB);
    assert_int_equal(json_array_size(items), 1);
    json_decref(items);
    json_decref(ja);
    json_decref(jb);
    h_resp_release(&a);
    h_resp_release(&b);
    h_resp_release(&c);
    h_resp_release(&d);
}

static void test_moderation_flow(void **state)
{
    MOAT_UNUSED(state);
    char post[64];
    snprintf(post, sizeof(post), "%s", new_post(ALICE));
    char target[128];
    snprintf(target, sizeof(target), "%s", post_target(post));
    const char *setting = h_fmt("/v1/moderation/targets/post/%s", post);
    /* Only the post's author (or a moderator) sets it. */
    expect_problem("PUT", setting, BOB, "{\"requires_moderation\": true}", 403);
    expect_problem("PUT", setting, ALICE, "{\"requires_moderation\": 1}", 422);
    json_decref(
        call_ok("PUT", setting, ALICE, "{\"requires_moderation\": true}", 200));

    json_t *c = comment(BOB, target, NULL, "wait for it");
    assert_string_equal(str(c, "status"), "pending");
    char id[64];
    snprintf(id, sizeof(id), "%s", str(c, "id"));
    json_decref(c);
    /* Pending: its author and moderators see it, nobody else. */
    json_t *items = list_post(post, CAROL);
    assert_false(listed(items, id));
    json_decref(items);
    items = list_post(post, BOB);
    assert_true(listed(items, id));
    json_decref(items);
    items = list_post(post, MOD);
    assert_true(listed(items, id));
    json_decref(items);
    expect_problem("GET", h_fmt("/v1/comments/%s", id), CAROL, NULL, 404);
    /* Nobody replies to what they cannot see. */
    expect_problem("POST", "/v1/comments", CAROL,
                   h_fmt("{\"target\": %s, \"text\": \"r\", "
                         "\"parent_id\": \"%s\"}",
                         target, id),
                   422);

    /* The post's author moderates its comments too. */
    items = list_post(post, ALICE);
    assert_true(listed(items, id));
    json_decref(items);
    /* Only moderators approve; approving makes it public. */
    expect_problem("POST", h_fmt("/v1/comments/%s/approve", id), BOB, NULL,
                   403);
    json_t *ok =
        call_ok("POST", h_fmt("/v1/comments/%s/approve", id), MOD, NULL, 200);
    assert_string_equal(str(ok, "status"), "approved");
    json_decref(ok);
    items = list_post(post, CAROL);
    assert_true(listed(items, id));
    json_decref(items);
    /* Approving again changes nothing; rejecting now is a conflict. */
    json_decref(
        call_ok("POST", h_fmt("/v1/comments/%s/approve", id), MOD, NULL, 200));
    expect_problem("POST", h_fmt("/v1/comments/%s/reject", id), MOD, NULL, 409);

    /* A rejected comment stays with its author. */
    c = comment(CAROL, target, NULL, "spam");
    char spam[64];
    snprintf(spam, sizeof(spam), "%s", str(c, "id"));
    json_decref(c);
    json_decref(call_ok("POST", h_fmt("/v1/comments/%s/reject", spam), ALICE,
                        NULL, 200));
    items = list_post(post, BOB);
    assert_false(listed(items, spam));
    json_decref(items);
    json_t *mine =
        call_ok("GET", h_fmt("/v1/comments/%s", spam), CAROL, NULL, 200);
    assert_string_equal(str(mine, "status"), "rejected");
    json_decref(mine);

    /* A flagged author's comments start pending on any target. */
    char free_post[64];
    snprintf(free_post, sizeof(free_post), "%s", new_post(ALICE));
    expect_problem("PUT", "/v1/moderation/users/" DAVE, ALICE,
                   "{\"requires_moderation\": true}", 403);
    json_decref(call_ok("PUT", "/v1/moderation/users/" DAVE, MOD,
                        "{\"requires_moderation\": true}", 200));
    c = comment(DAVE, post_target(free_post), NULL, "flagged");
    assert_string_equal(str(c, "status"), "pending");
    json_decref(c);
    c = comment(CAROL, post_target(free_post), NULL, "not flagged");
    assert_string_equal(str(c, "status"), "approved");
    json_decref(c);
}

static void test_delete(void **state)
{
    MOAT_UNUSED(state);
    char post[64];
    snprintf(post, sizeof(post), "%s", new_post(ALICE));
    json_t *c = comment(BOB, post_target(post), NULL, "regret");
    char id[64];
    snprintf(id, sizeof(id), "%s", str(c, "id"));
    json_decref(c);
    const char *path = h_fmt("/v1/comments/%s", id);
    expect_problem("DELETE", path, CAROL, NULL, 403);
    expect_problem("DELETE", path, NULL, NULL, 401);
    json_decref(call_ok("DELETE", path, BOB, NULL, 204));
    expect_problem("DELETE", path, BOB, NULL, 404);
    json_t *t = call_ok("GET", path, CAROL, NULL, 200);
    assert_true(json_is_true(json_object_get(t, "deleted")));
    assert_true(json_is_null(json_object_get(t, "text")));
    json_decref(t);
    /* A moderator deletes anyone's. */
    c = comment(CAROL, post_target(post), NULL, "rude");
    json_decref(call_ok("DELETE", h_fmt("/v1/comments/%s", str(c, "id")), MOD,
                        NULL, 204));
    json_decref(c);
}

/* ---- moderation actions from users' feed ---- */

/* Has comments applied action id? *status: the last GET's status;
 * *outcome (rotating buffer): the outcome once applied. */
static bool action_applied(const char *action_id, long *status,
                           const char **outcome)
{
    struct h_resp r;
    call(&r, "GET", h_fmt("/v1/moderation/actions/%s", action_id), MOD, NULL);
    *status = r.status;
    if (r.status == 200) {
        json_t *j = h_resp_json(&r);
        *outcome = h_fmt("%s", str(j, "outcome"));
        json_decref(j);
    }
    h_resp_release(&r);
    return *status == 200;
}

/* Wait until comments has applied action id; its outcome (rotating). */
static const char *wait_applied(const char *action_id)
{
    long status = 0;
    const char *outcome = NULL;
    H_WAIT_UNTIL(action_applied(action_id, &status, &outcome), H_WAIT_MS,
                 "comments to apply moderation action %s (last GET: %ld)",
                 action_id, status);
    return outcome;
}

static void publish_action(const char *id, const char *action, const char *key,
                           const char *value)
{
    h_feed_publish(F.users, "ModerationActionRequested", value,
                   h_fmt("{\"action_id\": \"%s\", \"action\": \"%s\", "
                         "\"%s\": \"%s\", \"reason\": \"policy\", "
                         "\"requested_by\": \"" MOD
                         "\", \"requested_at\": 1796425000}",
                         id, action, key, value));
}

/* CommentRemoved events of comment id on comments' feed. */
static size_t removed_events(const char *id)
{
    json_t *feed =
        call_ok("GET", "/v1/events?after=0&limit=1000", NULL, NULL, 200);
    size_t n = 0, i;
    json_t *ev;
    json_array_foreach(json_object_get(feed, "events"), i,
                       ev) if (strcmp(str(ev, "type"), "CommentRemoved") == 0 &&
                               strcmp(str(ev, "subject"), id) == 0) n++;
    json_decref(feed);
    return n;
}

static void test_moderation_actions(void **state)
{
    MOAT_UNUSED(state);
    char post[64];
    snprintf(post, sizeof(post), "%s", new_post(ALICE));
    char target[128];
    snprintf(target, sizeof(target), "%s", post_target(post));
    const char *body = h_fmt("{\"target\": %s, \"text\": \"hi\"}", target);

    /* Suspension: the user's new comments are refused until restored. */
    publish_action("act_suspend_1", "suspend_commenting", "user_id", DAVE);
    assert_string_equal(wait_applied("act_suspend_1"), "suspended");
    struct h_resp r;
    call(&r, "POST", "/v1/comments", DAVE, body);
    h_assert_problem(&r, 403);
    json_t *pr = h_resp_json(&r);
    assert_string_equal(str(pr, "type"),
                        "urn:moat:problem:commenting-suspended");
    json_decref(pr);
    h_resp_release(&r);
    json_t *flags =
        call_ok("GET", "/v1/moderation/users/" DAVE, DAVE, NULL, 200);
    assert_true(json_is_true(json_object_get(flags, "commenting_suspended")));
    json_decref(flags);
    publish_action("act_restore_1", "restore_commenting", "user_id", DAVE);
    assert_string_equal(wait_applied("act_restore_1"), "restored");
    json_decref(comment(DAVE, target, NULL, "back again"));

    /* Removal while comments is down: applied once it is back. */
    json_t *c = comment(BOB, target, NULL, "to be removed");
    char id[64];
    snprintf(id, sizeof(id), "%s", str(c, "id"));
    json_decref(c);
    h_service_kill(&F.comments);
    publish_action("act_remove_1", "remove_comment", "comment_id", id);
    assert_int_equal(h_service_restart(&F.comments, comments_env()), 0);
    assert_string_equal(wait_applied("act_remove_1"), "removed");
    json_t *t = call_ok("GET", h_fmt("/v1/comments/%s", id), MOD, NULL, 200);
    assert_true(json_is_true(json_object_get(t, "deleted")));
    assert_string_equal(str(t, "deleted_reason"), "policy");
    json_decref(t);
    assert_int_equal(removed_events(id), 1);

    /* A second delivery of the same action changes nothing. */
    publish_action("act_remove_1", "remove_comment", "comment_id", id);
    publish_action("act_marker_1", "restore_commenting", "user_id", CAROL);
    assert_string_equal(wait_applied("act_marker_1"), "restored");
    assert_int_equal(removed_events(id), 1);
    json_t *items = list_post(post, MOD);
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) if (strcmp(str(it, "id"), id) == 0)
        assert_true(json_is_true(json_object_get(it, "deleted")));
    json_decref(items);
    /* An action on an unknown comment is recorded, not retried forever. */
    publish_action("act_remove_2", "remove_comment", "comment_id",
                   "cmt_01M91PJ5W493XYHX8SD9T3DGZY");
    assert_string_equal(wait_applied("act_remove_2"), "not_found");
}

/* ---- comments on messages ---- */

static void test_message_comments(void **state)
{
    MOAT_UNUSED(state);
    json_t *conv = call_ok_at(&F.messaging, "POST", "/v1/conversations", ALICE,
                              "{\"kind\": \"group\", \"members\": [\"" BOB
                              "\"], \"title\": \"t\"}",
                              201);
    char cid[64];
    snprintf(cid, sizeof(cid), "%s", str(conv, "id"));
    json_decref(conv);
    json_t *msg = call_ok_at(&F.messaging, "POST",
                             h_fmt("/v1/conversations/%s/messages", cid), ALICE,
                             "{\"text\": \"private\"}", 201);
    char mid[64];
    snprintf(mid, sizeof(mid), "%s", str(msg, "id"));
    json_decref(msg);
    char target[256];
    snprintf(target, sizeof(target),
             "{\"kind\": \"message\", \"conversation_id\": \"%s\", "
             "\"message_id\": \"%s\"}",
             cid, mid);
    const char *list = h_fmt("/v1/comments?target_kind=message&target_id=%s&"
                             "conversation_id=%s",
                             mid, cid);
    char list_path[256];
    snprintf(list_path, sizeof(list_path), "%s", list);

    /* A member comments; the comment is theirs to read. */
    json_t *c = comment(BOB, target, NULL, "about that");
    char id[64];
    snprintf(id, sizeof(id), "%s", str(c, "id"));
    json_decref(c);
    json_t *page = call_ok("GET", list_path, ALICE, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 1);
    json_decref(page);

    /* Non-members (moderators too) learn nothing: 404. */
    expect_problem("POST", "/v1/comments", CAROL,
                   h_fmt("{\"target\": %s, \"text\": \"x\"}", target), 404);
    expect_problem("GET", list_path, CAROL, NULL, 404);
    expect_problem("GET", list_path, NULL, NULL, 401);
    expect_problem("GET", h_fmt("/v1/comments/%s", id), CAROL, NULL, 404);
    expect_problem("GET", h_fmt("/v1/comments/%s", id), MOD, NULL, 404);
    expect_problem("DELETE", h_fmt("/v1/comments/%s", id), CAROL, NULL, 404);
    /* The conversation needs conversation_id in a list. */
    expect_problem("GET",
                   h_fmt("/v1/comments?target_kind=message&target_id=%s", mid),
                   BOB, NULL, 400);

    /* The conversation's admin sets moderation for its messages. */
    const char *setting = h_fmt("/v1/moderation/targets/conversation/%s", cid);
    expect_problem("PUT", setting, BOB, "{\"requires_moderation\": true}", 403);
    expect_problem("PUT", setting, CAROL, "{\"requires_moderation\": true}",
                   404);
    json_decref(
        call_ok("PUT", setting, ALICE, "{\"requires_moderation\": true}", 200));
    c = comment(BOB, target, NULL, "moderated now");
    assert_string_equal(str(c, "status"), "pending");
    char pending[64];
    snprintf(pending, sizeof(pending), "%s", str(c, "id"));
    json_decref(c);
    /* Its admin moderates; other members do not. */
    expect_problem("POST", h_fmt("/v1/comments/%s/approve", pending), BOB, NULL,
                   403);
    page = call_ok("GET", list_path, ALICE, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 2);
    json_decref(page);
    json_decref(call_ok("POST", h_fmt("/v1/comments/%s/approve", pending),
                        ALICE, NULL, 200));

    /* Messaging down: 503 with Retry-After, nothing guessed. */
    h_service_kill(&F.messaging);
    struct h_resp r;
    call(&r, "GET", list_path, BOB, NULL);
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    call(&r, "POST", "/v1/comments", BOB,
         h_fmt("{\"target\": %s, \"text\": \"x\"}", target));
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    /* Post comments do not depend on messaging. */
    json_t *items = list_post(h_fmt("%s", new_post(ALICE)), BOB);
    json_decref(items);
    char mk[256];
    const char *env[] = {peers_of("messaging", mk, sizeof(mk)), NULL};
    assert_int_equal(h_service_restart(&F.messaging, env), 0);
    json_decref(call_ok("GET", h_fmt("/v1/comments/%s", id), BOB, NULL, 200));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_post_threads),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_idempotency),
        cmocka_unit_test(test_moderation_flow),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_moderation_actions),
        cmocka_unit_test(test_message_comments),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
