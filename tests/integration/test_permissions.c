/*
 * test_permissions.c - permissions, suspension and moderation actions end
 * to end: moat-users, moat-posts, moat-messaging and moat-gateway as real
 * processes on loopback, everything an end user does going through the
 * gateway with the tokens users issues.
 *
 * What is proven here: the access token's "perms" claim; a suspended
 * user's post and message refused 403 by posts and messaging within the
 * documented delay (1 s after the suspension's commit, docs/security.md)
 * even with the token minted before the suspension; reads still allowed;
 * a refresh of a suspended user mints a token without the permissions;
 * restore giving them back within the same delay; a role change taking
 * effect the same way; the account events and ModerationActionRequested
 * in users' feed; the moderation action's 202, its record and its
 * refusals (no moderate permission, bad input).
 *
 * Run one test alone: tests/it_test_permissions test_suspension_refuses
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "harness.h"

#define ADMIN_EMAIL    "root@perms.test"
#define ADMIN_PASSWORD "correct horse battery staple"
#define PASSWORD       "a long enough password"
/* The documented bound: a change applies within 1 s of its commit. */
#define DELAY_BOUND_MS 1000

static struct {
    char *tmp;
    char routes_env[1024];
    struct h_service users, posts, msg, gw;
    char admin_auth[4200];
    char admin_id[64];
} F;

static const char *const users_env[] = {
    "MOAT_USERS_ADMIN_EMAIL=" ADMIN_EMAIL,
    "MOAT_USERS_ADMIN_PASSWORD=" ADMIN_PASSWORD,
    "MOAT_USERS_LOGIN_PER_IP_PER_MIN=100000",
    NULL,
};

/* ---- helpers ---- */

/* Strict, unlike h_jstr: NULL when the member is missing, so that a
 * missing member fails the assertions that rely on it (a token's "perms"
 * compared with ""). */
static const char *str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static const char *gw(const char *path)
{
    return h_fmt("%s/api/v1%s", F.gw.url, path);
}

/* A signed-in user: id and the Authorization line of the access token. */
struct user {
    char id[64];
    char auth[4200];
    char refresh[128];
    char perms[64]; /* the login answer's user.perms */
};

static void login(struct user *u, const char *email)
{
    struct h_resp r;
    h_send_json(
        &r, "POST", gw("/auth/login"),
        h_fmt("{\"email\": \"%s\", \"password\": \"%s\"}", email,
              strcmp(email, ADMIN_EMAIL) == 0 ? ADMIN_PASSWORD : PASSWORD),
        NULL);
    h_assert_status(&r, 200);
    json_t *t = h_resp_json(&r);
    h_resp_release(&r);
    json_t *user = json_object_get(t, "user");
    snprintf(u->id, sizeof(u->id), "%s", str(user, "id"));
    snprintf(u->perms, sizeof(u->perms), "%s", str(user, "perms"));
    snprintf(u->auth, sizeof(u->auth), "Authorization: Bearer %s",
             str(t, "access_token"));
    snprintf(u->refresh, sizeof(u->refresh), "%s", str(t, "refresh_token"));
    json_decref(t);
}

/* Register a new account and sign it in. */
static void new_user(struct user *u, const char *tag)
{
    unsigned char rnd[4];
    char hex[9];
    randombytes_buf(rnd, sizeof(rnd));
    moat_hex(hex, rnd, sizeof(rnd));
    char email[96];
    snprintf(email, sizeof(email), "%s-%s@perms.test", tag, hex);
    struct h_resp r;
    h_send_json(&r, "POST", gw("/users"),
                h_fmt("{\"email\": \"%s\", \"password\": \"%s\", "
                      "\"display_name\": \"%s\"}",
                      email, PASSWORD, tag),
                NULL);
    h_assert_status(&r, 201);
    h_resp_release(&r);
    login(u, email);
}

/* method path with body as the holder of auth; the status. */
static long call(const char *method, const char *path, const char *auth,
                 const char *body, json_t **out)
{
    const char *hdrs[] = {auth, NULL};
    struct h_resp r;
    if (body)
        h_send_json(&r, method, gw(path), body, hdrs);
    else
        h_http(&r, method, gw(path), hdrs, NULL, 0);
    long status = r.status;
    if (out)
        *out = h_resp_json(&r);
    h_resp_release(&r);
    return status;
}

static long create_post(const struct user *u)
{
    return call("POST", "/posts", u->auth, "{\"text\": \"hello\"}", NULL);
}

static long send_message(const struct user *u, const char *conv)
{
    return call("POST", h_fmt("/conversations/%s/messages", conv), u->auth,
                "{\"text\": \"hi\"}", NULL);
}

/* Does probe(arg) answer want? *got: its answer. */
static bool probe_answers(long (*probe)(const void *), const void *arg,
                          long want, long *got)
{
    *got = probe(arg);
    return *got == want;
}

/*
 * Wait until probe() answers want; returns the ms it took from `since`
 * (moat_mono_ms): the delay is what the callers assert on.
 */
static uint64_t wait_status(long (*probe)(const void *), const void *arg,
                            long want, uint64_t since)
{
    long got = 0;
    H_WAIT_UNTIL(probe_answers(probe, arg, want, &got), H_WAIT_MS,
                 "the probe to answer %ld (last answer: %ld)", want, got);
    return moat_mono_ms() - since;
}

static long probe_post(const void *arg)
{
    return create_post(arg);
}

/* The events of users' feed of type about subject (new array). */
static json_t *feed_events(const char *type, const char *subject)
{
    const char *hdrs[] = {h_service_token("users", NULL, NULL), NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/v1/events?after=0&limit=1000", F.users.url),
           hdrs, NULL, 0);
    h_assert_status(&r, 200);
    json_t *page = h_resp_json(&r);
    h_resp_release(&r);
    json_t *out = json_array();
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(page, "events"), i, ev)
    {
        if (strcmp(str(ev, "type"), type) == 0 &&
            strcmp(str(ev, "subject"), subject) == 0)
            json_array_append(out, ev);
    }
    json_decref(page);
    return out;
}

/* The payload of a JWT in an "Authorization: Bearer" line (new ref). */
static json_t *jwt_payload(const char *auth)
{
    const char *tok = strstr(auth, "Bearer ") + 7;
    const char *dot1 = strchr(tok, '.');
    const char *dot2 = strchr(dot1 + 1, '.');
    unsigned char buf[4096];
    size_t n = 0;
    assert_int_equal(
        sodium_base642bin(buf, sizeof(buf), dot1 + 1, (size_t)(dot2 - dot1 - 1),
                          NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING),
        0);
    json_t *j = json_loadb((const char *)buf, n, 0, NULL);
    assert_non_null(j);
    return j;
}

static long admin_call(const char *method, const char *path, const char *body,
                       json_t **out)
{
    return call(method, path, F.admin_auth, body, out);
}

/* ---- fixture ---- */

static int start_gateway(void)
{
    snprintf(F.routes_env, sizeof(F.routes_env),
             "MOAT_GATEWAY_ROUTES="
             "/api/v1/users=users@%s/v1/users,"
             "/api/v1/auth=users@%s/v1/auth,"
             "/api/v1/moderation=users@%s/v1/moderation,"
             "/api/v1/posts=posts@%s/v1/posts,"
             "/api/v1/conversations=messaging@%s/v1/conversations",
             F.users.url, F.users.url, F.users.url, F.posts.url, F.msg.url);
    const char *env[] = {F.routes_env,
                         "MOAT_GATEWAY_PUBLIC=POST /api/v1/users,"
                         "POST /api/v1/auth",
                         "MOAT_GATEWAY_RATE=0", NULL};
    return h_service_start(&F.gw, "gateway", F.tmp, NULL, env);
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    if (sodium_init() < 0)
        return -1;
    F.tmp = h_tmpdir_new("perms");
    if (h_service_start(&F.users, "users", F.tmp, h_fmt("%s/users-data", F.tmp),
                        users_env) != 0 ||
        h_service_start(&F.posts, "posts", F.tmp, h_fmt("%s/posts-data", F.tmp),
                        NULL) != 0 ||
        h_service_start(&F.msg, "messaging", F.tmp,
                        h_fmt("%s/messaging-data", F.tmp), NULL) != 0 ||
        start_gateway() != 0)
        return -1;
    struct user admin;
    login(&admin, ADMIN_EMAIL);
    snprintf(F.admin_auth, sizeof(F.admin_auth), "%s", admin.auth);
    snprintf(F.admin_id, sizeof(F.admin_id), "%s", admin.id);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.gw) | h_service_stop(&F.msg) |
             h_service_stop(&F.posts) | h_service_stop(&F.users);
    h_service_release(&F.gw);
    h_service_release(&F.msg);
    h_service_release(&F.posts);
    h_service_release(&F.users);
    h_rmtree(F.tmp);
    free(F.tmp);
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_token_perms(void **state)
{
    MOAT_UNUSED(state);
    struct user u;
    new_user(&u, "claims");
    assert_string_equal(u.perms, "post comment message");
    json_t *p = jwt_payload(u.auth);
    assert_string_equal(str(p, "perms"), "post comment message");
    assert_string_equal(str(p, "role"), "customer");
    json_decref(p);
    p = jwt_payload(F.admin_auth);
    assert_string_equal(str(p, "perms"), "post comment message moderate");
    json_decref(p);
}

static void test_suspension_refuses(void **state)
{
    MOAT_UNUSED(state);
    struct user alice, bob;
    new_user(&alice, "alice");
    new_user(&bob, "bob");
    json_t *conv = NULL;
    assert_int_equal(
        call("POST", "/conversations", alice.auth,
             h_fmt("{\"kind\": \"group\", \"members\": [\"%s\"]}", bob.id),
             &conv),
        201);
    char conv_id[64];
    snprintf(conv_id, sizeof(conv_id), "%s", str(conv, "id"));
    json_decref(conv);
    assert_int_equal(create_post(&alice), 201);
    assert_int_equal(send_message(&alice, conv_id), 201);

    /* Suspended: alice's token, minted before, is refused within the
     * bound by posts and by messaging. */
    json_t *acc = NULL;
    uint64_t t0 = moat_mono_ms();
    assert_int_equal(admin_call("POST", h_fmt("/users/%s/suspend", alice.id),
                                "{\"reason\": \"spam\"}", &acc),
                     200);
    assert_true(json_is_true(json_object_get(acc, "suspended")));
    assert_int_equal(json_array_size(json_object_get(acc, "perms")), 0);
    json_decref(acc);
    uint64_t took = wait_status(probe_post, &alice, 403, t0);
    print_message("suspension refused a post after %llu ms\n",
                  (unsigned long long)took);
    assert_true(took <= h_scaled_ms(DELAY_BOUND_MS));
    assert_int_equal(send_message(&alice, conv_id), 403);
    json_t *problem = NULL;
    assert_int_equal(
        call("POST", "/posts", alice.auth, "{\"text\": \"x\"}", &problem), 403);
    assert_string_equal(str(problem, "detail"), "your account may not post");
    json_decref(problem);
    /* Reading is not refused; bob is not affected. */
    assert_int_equal(call("GET", "/users/me", alice.auth, NULL, NULL), 200);
    assert_int_equal(send_message(&bob, conv_id), 201);

    /* A refresh mints a token without the permissions. */
    json_t *tokens = NULL;
    assert_int_equal(call("POST", "/auth/refresh", NULL,
                          h_fmt("{\"refresh_token\": \"%s\"}", alice.refresh),
                          &tokens),
                     200);
    char fresh[4200];
    snprintf(fresh, sizeof(fresh), "Authorization: Bearer %s",
             str(tokens, "access_token"));
    json_decref(tokens);
    json_t *claims = jwt_payload(fresh);
    assert_string_equal(str(claims, "perms"), "");
    json_decref(claims);

    /* The event, with the whole state. */
    json_t *evs = feed_events("UserSuspended", alice.id);
    assert_int_equal(json_array_size(evs), 1);
    json_t *data = json_object_get(json_array_get(evs, 0), "data");
    assert_true(json_is_true(json_object_get(data, "suspended")));
    assert_string_equal(str(data, "role"), "customer");
    assert_string_equal(str(data, "reason"), "spam");
    assert_string_equal(str(data, "changed_by"), F.admin_id);
    json_decref(evs);

    /* Suspending again changes nothing and publishes nothing. */
    assert_int_equal(
        admin_call("POST", h_fmt("/users/%s/suspend", alice.id), NULL, NULL),
        200);
    evs = feed_events("UserSuspended", alice.id);
    assert_int_equal(json_array_size(evs), 1);
    json_decref(evs);

    /* Restored: the same old token posts again within the bound. */
    t0 = moat_mono_ms();
    assert_int_equal(
        admin_call("POST", h_fmt("/users/%s/restore", alice.id), NULL, NULL),
        200);
    took = wait_status(probe_post, &alice, 201, t0);
    assert_true(took <= h_scaled_ms(DELAY_BOUND_MS));
    assert_int_equal(send_message(&alice, conv_id), 201);
    evs = feed_events("UserRestored", alice.id);
    assert_int_equal(json_array_size(evs), 1);
    json_decref(evs);
}

static void test_suspension_refusals(void **state)
{
    MOAT_UNUSED(state);
    struct user u;
    new_user(&u, "plain");
    /* Not an admin; oneself; no such user. */
    assert_int_equal(
        call("POST", h_fmt("/users/%s/suspend", u.id), u.auth, NULL, NULL),
        403);
    assert_int_equal(
        admin_call("POST", h_fmt("/users/%s/suspend", F.admin_id), NULL, NULL),
        409);
    assert_int_equal(admin_call("POST",
                                "/users/usr_00000000000000000000000000/suspend",
                                NULL, NULL),
                     404);
    assert_int_equal(admin_call("POST", h_fmt("/users/%s/suspend", u.id),
                                "{\"why\": \"x\"}", NULL),
                     422);
}

static long probe_moderate(const void *arg)
{
    const struct user *u = arg;
    return call("POST", "/moderation/actions", u->auth,
                "{\"action\": \"remove_comment\", \"comment_id\": "
                "\"cmt_probe\", \"reason\": \"probe\"}",
                NULL);
}

static void test_role_change(void **state)
{
    MOAT_UNUSED(state);
    struct user carol;
    new_user(&carol, "carol");
    assert_int_equal(probe_moderate(&carol), 403);

    json_t *acc = NULL;
    uint64_t t0 = moat_mono_ms();
    assert_int_equal(admin_call("PUT", h_fmt("/users/%s/role", carol.id),
                                "{\"role\": \"moderator\"}", &acc),
                     200);
    assert_string_equal(str(acc, "role"), "moderator");
    json_decref(acc);
    /* The token minted as a customer moderates within the bound. */
    uint64_t took = wait_status(probe_moderate, &carol, 202, t0);
    assert_true(took <= h_scaled_ms(DELAY_BOUND_MS));
    json_t *evs = feed_events("RoleChanged", carol.id);
    assert_int_equal(json_array_size(evs), 1);
    json_t *data = json_object_get(json_array_get(evs, 0), "data");
    assert_string_equal(str(data, "role"), "moderator");
    assert_int_equal(json_array_size(json_object_get(data, "perms")), 4);
    json_decref(evs);

    /* Bad input, not an admin, oneself. */
    assert_int_equal(admin_call("PUT", h_fmt("/users/%s/role", carol.id),
                                "{\"role\": \"king\"}", NULL),
                     422);
    assert_int_equal(
        admin_call("PUT", h_fmt("/users/%s/role", carol.id), "{}", NULL), 422);
    assert_int_equal(call("PUT", h_fmt("/users/%s/role", carol.id), carol.auth,
                          "{\"role\": \"admin\"}", NULL),
                     403);
    assert_int_equal(admin_call("PUT", h_fmt("/users/%s/role", F.admin_id),
                                "{\"role\": \"customer\"}", NULL),
                     409);
    /* Back to customer: the moderate permission goes within the bound. */
    t0 = moat_mono_ms();
    assert_int_equal(admin_call("PUT", h_fmt("/users/%s/role", carol.id),
                                "{\"role\": \"customer\"}", NULL),
                     200);
    took = wait_status(probe_moderate, &carol, 403, t0);
    assert_true(took <= h_scaled_ms(DELAY_BOUND_MS));
}

static void test_moderation_action(void **state)
{
    MOAT_UNUSED(state);
    struct user dave, erin;
    new_user(&dave, "dave");
    new_user(&erin, "erin");

    json_t *a = NULL;
    assert_int_equal(admin_call("POST", "/moderation/actions",
                                "{\"action\": \"remove_comment\", "
                                "\"comment_id\": \"cmt_01abc\", "
                                "\"reason\": \"off topic\"}",
                                &a),
                     202);
    assert_string_equal(str(a, "status"), "queued");
    char id[64];
    snprintf(id, sizeof(id), "%s", str(a, "action_id"));
    assert_int_equal(strncmp(id, "mod_", 4), 0);
    json_decref(a);
    assert_int_equal(
        admin_call("GET", h_fmt("/moderation/actions/%s", id), NULL, &a), 200);
    assert_string_equal(str(a, "comment_id"), "cmt_01abc");
    assert_string_equal(str(a, "requested_by"), F.admin_id);
    json_decref(a);
    json_t *evs = feed_events("ModerationActionRequested", id);
    assert_int_equal(json_array_size(evs), 1);
    json_t *ev = json_array_get(evs, 0);
    json_t *data = json_object_get(ev, "data");
    assert_string_equal(str(data, "action"), "remove_comment");
    assert_string_equal(str(data, "comment_id"), "cmt_01abc");
    assert_string_equal(str(data, "reason"), "off topic");
    assert_null(json_object_get(data, "user_id"));
    assert_int_equal(
        json_integer_value(json_object_get(ev, "dataschemaversion")), 1);
    json_decref(evs);

    /* Suspend commenting: an action for comments and the account's own
     * state (no "comment" in erin's permissions any more). */
    assert_int_equal(
        admin_call("POST", "/moderation/actions",
                   h_fmt("{\"action\": \"suspend_commenting\", "
                         "\"user_id\": \"%s\", \"reason\": \"flaming\"}",
                         erin.id),
                   &a),
        202);
    json_decref(a);
    evs = feed_events("UserSuspended", erin.id);
    assert_int_equal(json_array_size(evs), 1);
    data = json_object_get(json_array_get(evs, 0), "data");
    assert_true(json_is_true(json_object_get(data, "comment_suspended")));
    assert_false(json_is_true(json_object_get(data, "suspended")));
    json_decref(evs);
    assert_int_equal(create_post(&erin), 201); /* posting is still allowed */

    /* Not a moderator. */
    assert_int_equal(probe_moderate(&dave), 403);
    assert_int_equal(
        call("GET", h_fmt("/moderation/actions/%s", id), dave.auth, NULL, NULL),
        403);
    /* Bad input. */
    static const char *const bad[] = {
        "{\"action\": \"ban\", \"reason\": \"x\"}",
        "{\"action\": \"remove_comment\", \"reason\": \"x\"}",
        "{\"action\": \"remove_comment\", \"comment_id\": \"a b\", "
        "\"reason\": \"x\"}",
        "{\"action\": \"remove_comment\", \"comment_id\": \"c1\"}",
        "{\"action\": \"suspend_commenting\", \"reason\": \"x\"}",
        "{\"action\": \"suspend_commenting\", \"user_id\": "
        "\"usr_00000000000000000000000000\", \"reason\": \"x\"}",
        "{\"action\": \"remove_comment\", \"comment_id\": \"c1\", "
        "\"reason\": \"x\", \"extra\": 1}",
        "[]",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        long st = admin_call("POST", "/moderation/actions", bad[i], NULL);
        if (st != 422)
            fail_msg("%s: %ld, not 422", bad[i], st);
    }
    assert_int_equal(admin_call("GET",
                                "/moderation/actions/"
                                "mod_00000000000000000000000000",
                                NULL, NULL),
                     404);
    assert_int_equal(
        admin_call("GET", "/moderation/actions/nonsense", NULL, NULL), 404);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_perms),
        cmocka_unit_test(test_suspension_refuses),
        cmocka_unit_test(test_suspension_refusals),
        cmocka_unit_test(test_role_change),
        cmocka_unit_test(test_moderation_action),
    };
    return cmocka_run_group_tests_name("permissions", tests, group_setup,
                                       group_teardown);
}
