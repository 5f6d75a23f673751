/*
 * test_posts.c - the posts service on its own: a real moat-posts process,
 * called directly with service tokens that carry the end user (as the
 * gateway sends them). Creating (idempotently), reading, timelines,
 * deleting (author, stranger, admin), the events in its feed, bad input,
 * and a kill -9 that must not lose an acknowledged post.
 */
#include "moat/common.h"

#include "harness.h"

#include <string.h>

static struct {
    char *tmp;
    struct h_service svc;
} F;

#define ALICE "usr_01J00000000000000000000ALI"
#define BOB   "usr_01J00000000000000000000B0B"
#define CAROL "usr_01J0000000000000000000CAR0"
#define ADMIN "usr_01J0000000000000000000ADM1"

static const char *as(const char *user, const char *role)
{
    return h_service_token("posts", user, role);
}

static void create(struct h_resp *r, const char *user, const char *key,
                   const char *body)
{
    const char *hdrs[] = {as(user, "customer"),
                          key ? h_fmt("Idempotency-Key: %s", key) : NULL, NULL};
    h_send_json(r, "POST", h_fmt("%s/v1/posts", F.svc.url), body, hdrs);
}

/* Create a post (201) with text; returns its JSON (new reference). */
static json_t *create_ok(const char *user, const char *text)
{
    struct h_resp r;
    json_t *body = json_pack("{s:s}", "text", text);
    char *s = json_dumps(body, JSON_COMPACT);
    create(&r, user, NULL, s);
    free(s);
    json_decref(body);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* Strict, unlike h_jstr: NULL when the member is missing, so that a
 * missing member fails the assertions that rely on it (the text of an event
 * compared with the post's). */
static const char *str(json_t *j, const char *key)
{
    return json_string_value(json_object_get(j, key));
}

static void req(struct h_resp *r, const char *method, const char *path,
                const char *user, const char *role)
{
    const char *hdrs[] = {as(user, role), NULL};
    h_http(r, method, h_fmt("%s%s", F.svc.url, path), hdrs, NULL, 0);
}

/* The events posts published for subject, in feed order (new reference). */
static json_t *events_for(const char *subject)
{
    struct h_resp r;
    req(&r, "GET", "/v1/events?after=0&limit=1000", NULL, NULL);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    json_t *out = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, "events"), i, e)
    {
        if (strcmp(str(e, "subject"), subject) == 0)
            json_array_append(out, e);
    }
    json_decref(j);
    return out;
}

/* A JSON array of strings as "a,b,c". */
static const char *joined(json_t *a)
{
    static char out[2048];
    size_t len = 0, i;
    json_t *v;
    out[0] = '\0';
    json_array_foreach(a, i, v)
    {
        len += (size_t)snprintf(out + len, sizeof(out) - len, "%s%s",
                                i ? "," : "", json_string_value(v));
    }
    return out;
}

/* unit repeated n times into out (NUL-terminated; must fit). */
static void repeat(char *out, size_t cap, const char *unit, size_t n)
{
    size_t len = strlen(unit);
    assert_true(n * len < cap);
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * len, unit, len);
    out[n * len] = '\0';
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("posts");
    return h_service_start(&F.svc, "posts", F.tmp,
                           h_fmt("%s/posts-data", F.tmp), NULL);
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.svc);
    h_service_release(&F.svc);
    h_rmtree(F.tmp);
    free(F.tmp);
    if (rc)
        print_error("posts must exit 0 on SIGTERM: %d\n", rc);
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_create_and_get(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    create(&r, ALICE, NULL,
           "{\"text\": \"hi @bob and @Carol_1, see https://example.com/a?b=1. "
           "Mail dave@example.com, ping @bob again\", \"media_urls\": "
           "[\"https://img.example/1.png\", \"http://img.example/2.gif\"]}");
    h_assert_status(&r, 201);
    json_t *p = h_resp_json(&r);
    const char *id = str(p, "id");
    assert_non_null(id);
    assert_int_equal(strncmp(id, "post_", 5), 0);
    assert_string_equal(h_resp_header(&r, "Location"),
                        h_fmt("/v1/posts/%s", id));
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);
    assert_string_equal(str(p, "author_id"), ALICE);
    assert_string_equal(joined(json_object_get(p, "mentions")), "bob,Carol_1");
    assert_string_equal(joined(json_object_get(p, "urls")),
                        "https://example.com/a?b=1");
    assert_string_equal(joined(json_object_get(p, "media_urls")),
                        "https://img.example/1.png,http://img.example/2.gif");
    assert_true(json_integer_value(json_object_get(p, "created_at")) > 0);

    /* GET answers the same representation, to anyone. */
    req(&r, "GET", h_fmt("/v1/posts/%s", id), BOB, "customer");
    h_assert_status(&r, 200);
    json_t *g = h_resp_json(&r);
    assert_true(json_equal(g, p));
    json_decref(g);
    h_resp_release(&r);

    /* The feed has PostCreated with the post's data. */
    json_t *ev = events_for(id);
    assert_int_equal(json_array_size(ev), 1);
    json_t *e = json_array_get(ev, 0);
    assert_string_equal(str(e, "type"), "PostCreated");
    json_t *d = json_object_get(e, "data");
    assert_string_equal(str(d, "post_id"), id);
    assert_string_equal(str(d, "author_id"), ALICE);
    assert_string_equal(str(d, "text"), str(p, "text"));
    assert_true(json_equal(json_object_get(d, "mentions"),
                           json_object_get(p, "mentions")));
    assert_true(
        json_equal(json_object_get(d, "urls"), json_object_get(p, "urls")));
    assert_true(json_equal(json_object_get(d, "media_urls"),
                           json_object_get(p, "media_urls")));
    assert_true(json_equal(json_object_get(d, "created_at"),
                           json_object_get(p, "created_at")));
    json_decref(ev);
    json_decref(p);
}

static void test_idempotent_create(void **state)
{
    MOAT_UNUSED(state);
    const char *body = "{\"text\": \"once only\", \"media_urls\": []}";
    struct h_resp r;
    create(&r, BOB, "idem-1", body);
    h_assert_status(&r, 201);
    json_t *first = h_resp_json(&r);
    h_resp_release(&r);

    /* Same key, same body (keys in another order): the same post. */
    create(&r, BOB, "idem-1", "{\"media_urls\": [], \"text\": \"once only\"}");
    h_assert_status(&r, 201);
    assert_string_equal(h_resp_header(&r, "Idempotent-Replayed"), "true");
    json_t *again = h_resp_json(&r);
    assert_true(json_equal(first, again));
    json_decref(again);
    h_resp_release(&r);

    /* Same key, another body: 422. */
    create(&r, BOB, "idem-1", "{\"text\": \"something else\"}");
    h_assert_problem(&r, 422);
    assert_non_null(strstr(r.body, "idempotency-key-reused"));
    h_resp_release(&r);

    /* One post and one event. */
    req(&r, "GET", h_fmt("/v1/users/%s/posts", BOB), NULL, NULL);
    h_assert_status(&r, 200);
    json_t *tl = h_resp_json(&r);
    h_resp_release(&r);
    assert_int_equal(json_array_size(json_object_get(tl, "items")), 1);
    json_decref(tl);
    json_t *ev = events_for(str(first, "id"));
    assert_int_equal(json_array_size(ev), 1);
    json_decref(ev);

    /* Keys are per author. */
    create(&r, ALICE, "idem-1", body);
    h_assert_status(&r, 201);
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    json_t *other = h_resp_json(&r);
    assert_string_not_equal(str(other, "id"), str(first, "id"));
    json_decref(other);
    h_resp_release(&r);

    /* Once the post is deleted, a replay says so. */
    req(&r, "DELETE", h_fmt("/v1/posts/%s", str(first, "id")), BOB, "customer");
    h_assert_status(&r, 204);
    h_resp_release(&r);
    create(&r, BOB, "idem-1", body);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    json_decref(first);
}

static void test_timeline_paging(void **state)
{
    MOAT_UNUSED(state);
    char ids[7][64];
    for (int i = 0; i < 7; i++) {
        json_t *p = create_ok(CAROL, h_fmt("post number %d", i));
        snprintf(ids[i], sizeof(ids[i]), "%s", str(p, "id"));
        json_decref(p);
    }
    /* Newest first, three pages of 3, 3 and 1. */
    int seen = 0;
    char cursor[128] = "";
    for (int page = 0; page < 3; page++) {
        struct h_resp r;
        req(&r, "GET",
            cursor[0]
                ? h_fmt("/v1/users/%s/posts?limit=3&cursor=%s", CAROL, cursor)
                : h_fmt("/v1/users/%s/posts?limit=3", CAROL),
            NULL, NULL);
        h_assert_status(&r, 200);
        json_t *j = h_resp_json(&r);
        h_resp_release(&r);
        json_t *items = json_object_get(j, "items");
        assert_int_equal(json_array_size(items), page < 2 ? 3 : 1);
        size_t i;
        json_t *p;
        json_array_foreach(items, i, p)
        {
            assert_string_equal(str(p, "id"), ids[6 - seen]);
            assert_string_equal(str(p, "author_id"), CAROL);
            seen++;
        }
        json_t *next = json_object_get(j, "next_cursor");
        if (page < 2)
            snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        else
            assert_true(json_is_null(next));
        json_decref(j);
    }
    assert_int_equal(seen, 7);

    /* A deleted post leaves the timeline. */
    struct h_resp r;
    req(&r, "DELETE", h_fmt("/v1/posts/%s", ids[6]), CAROL, "customer");
    h_assert_status(&r, 204);
    h_resp_release(&r);
    req(&r, "GET", h_fmt("/v1/users/%s/posts?limit=1", CAROL), NULL, NULL);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    assert_string_equal(
        str(json_array_get(json_object_get(j, "items"), 0), "id"), ids[5]);
    json_decref(j);

    /* A user without posts has an empty timeline. */
    req(&r, "GET", "/v1/users/usr_nobody/posts", NULL, NULL);
    h_assert_status(&r, 200);
    j = h_resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 0);
    json_decref(j);
    h_resp_release(&r);

    /* Bad parameters. */
    static const char *const bad[] = {
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=abc",
        "cursor=" /* empty */,
        "cursor=zz00000000000000000000000000000000000000000000000000000000000",
        "color=red"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        req(&r, "GET", h_fmt("/v1/users/%s/posts?%s", CAROL, bad[i]), NULL,
            NULL);
        h_assert_problem(&r, 400);
        h_resp_release(&r);
    }
    req(&r, "GET", "/v1/users/bad%20id/posts", NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

static void test_delete(void **state)
{
    MOAT_UNUSED(state);
    json_t *p = create_ok(ALICE, "delete me, @bob");
    const char *id = str(p, "id");
    char path[64];
    snprintf(path, sizeof(path), "/v1/posts/%s", id);
    struct h_resp r;

    /* Someone else: 403, and the post stays. */
    req(&r, "DELETE", path, BOB, "customer");
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    /* No end user: 401. */
    req(&r, "DELETE", path, NULL, NULL);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    req(&r, "GET", path, NULL, NULL);
    h_assert_status(&r, 200);
    h_resp_release(&r);

    /* The author: 204, then 404 for reads and deletes. */
    req(&r, "DELETE", path, ALICE, "customer");
    h_assert_status(&r, 204);
    h_resp_release(&r);
    req(&r, "GET", path, NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    req(&r, "DELETE", path, ALICE, "customer");
    h_assert_problem(&r, 404);
    h_resp_release(&r);

    json_t *ev = events_for(id);
    assert_int_equal(json_array_size(ev), 2);
    assert_string_equal(str(json_array_get(ev, 0), "type"), "PostCreated");
    json_t *del = json_array_get(ev, 1);
    assert_string_equal(str(del, "type"), "PostDeleted");
    json_t *d = json_object_get(del, "data");
    assert_string_equal(str(d, "post_id"), id);
    assert_string_equal(str(d, "author_id"), ALICE);
    json_decref(ev);
    json_decref(p);

    /* An administrator may delete anyone's post. */
    p = create_ok(BOB, "moderate me");
    snprintf(path, sizeof(path), "/v1/posts/%s", str(p, "id"));
    req(&r, "DELETE", path, ADMIN, "admin");
    h_assert_status(&r, 204);
    h_resp_release(&r);
    req(&r, "GET", path, NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    ev = events_for(str(p, "id"));
    assert_string_equal(str(json_array_get(ev, 1), "type"), "PostDeleted");
    assert_string_equal(
        str(json_object_get(json_array_get(ev, 1), "data"), "author_id"), BOB);
    json_decref(ev);
    json_decref(p);

    /* Ids that are not post ids, or no post. */
    req(&r, "DELETE", "/v1/posts/post_x", ALICE, "customer");
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    req(&r, "GET", "/v1/posts/post_01J00000000000000000000000", NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

static void test_bad_input(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    char big[1100], euro[1100], e_acute[1100];
    memset(big, 'x', 1001);
    big[1001] = '\0';
    repeat(euro, sizeof(euro), "\xe2\x82\xac", 334);   /* 1002 bytes */
    repeat(e_acute, sizeof(e_acute), "\xc3\xa9", 500); /* 1000 bytes */

    static const struct {
        const char *body, *pointer;
    } cases[] = {
        {"{}", "/text"},
        {"{\"text\": \"\"}", "/text"},
        {"{\"text\": \" \\n\\t \"}", "/text"},
        {"{\"text\": \"bell \\u0007\"}", "/text"},
        {"{\"text\": 42}", "/text"},
        {"{\"text\": \"ok\", \"colour\": \"red\"}", "/colour"},
        {"{\"text\": \"ok\", \"media_urls\": \"https://a.io\"}", "/media_urls"},
        {"{\"text\": \"ok\", \"media_urls\": [\"ftp://a.io/x\"]}",
         "/media_urls/0"},
        {"{\"text\": \"ok\", \"media_urls\": [\"https://a.io/ok\", "
         "\"https://a.io/a b\"]}",
         "/media_urls/1"},
        {"{\"text\": \"ok\", \"media_urls\": [7]}", "/media_urls/0"},
        {"{\"text\": \"ok\", \"media_urls\": [\"https://a.io/1\", "
         "\"https://a.io/2\", \"https://a.io/3\", \"https://a.io/4\", "
         "\"https://a.io/5\", \"https://a.io/6\"]}",
         "/media_urls"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        create(&r, ALICE, NULL, cases[i].body);
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", cases[i].pointer);
        h_resp_release(&r);
    }
    /* Size caps count bytes: 1001 ASCII or 1002 in 334 characters fail,
     * 1000 bytes in 500 characters pass. */
    create(&r, ALICE, NULL, h_fmt("{\"text\": \"%s\"}", big));
    h_assert_problem_error(&r, "pointer", "/text");
    h_resp_release(&r);
    create(&r, ALICE, NULL, h_fmt("{\"text\": \"%s\"}", euro));
    h_assert_problem_error(&r, "pointer", "/text");
    h_resp_release(&r);
    create(&r, ALICE, NULL, h_fmt("{\"text\": \"%s\"}", e_acute));
    h_assert_status(&r, 201);
    h_resp_release(&r);
    /* A media URL of 2049 bytes fails. */
    char longurl[2100];
    memcpy(longurl, "https://a.io/", 13);
    memset(longurl + 13, 'x', 2049 - 13);
    longurl[2049] = '\0';
    create(&r, ALICE, NULL,
           h_fmt("{\"text\": \"ok\", \"media_urls\": [\"%s\"]}", longurl));
    h_assert_problem_error(&r, "pointer", "/media_urls/0");
    h_resp_release(&r);

    create(&r, ALICE, NULL, "[\"text\"]");
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    create(&r, ALICE, NULL, "{\"text\": ");
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    const char *plain[] = {as(ALICE, "customer"), "Content-Type: text/plain",
                           NULL};
    h_http(&r, "POST", h_fmt("%s/v1/posts", F.svc.url), plain, "hi", 2);
    h_assert_problem(&r, 415);
    h_resp_release(&r);
    /* A malformed Idempotency-Key. */
    create(&r, ALICE, "has space", "{\"text\": \"ok\"}");
    h_assert_problem(&r, 400);
    assert_non_null(strstr(r.body, "idempotency-key-malformed"));
    h_resp_release(&r);
    /* No end user behind the call: 401. */
    const char *svc_only[] = {as(NULL, NULL), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/posts", F.svc.url),
                "{\"text\": \"ok\"}", svc_only);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    /* No service token at all: 401 from the skeleton. */
    h_get(&r, h_fmt("%s/v1/users/%s/posts", F.svc.url, ALICE));
    h_assert_problem(&r, 401);
    h_resp_release(&r);
}

/* kill -9 right after the 201s: every acknowledged post survives. */
static void test_kill_and_restart(void **state)
{
    MOAT_UNUSED(state);
    char ids[5][64];
    for (int i = 0; i < 5; i++) {
        json_t *p = create_ok(ALICE, h_fmt("durable %d @bob", i));
        snprintf(ids[i], sizeof(ids[i]), "%s", str(p, "id"));
        json_decref(p);
    }
    h_service_kill(&F.svc);
    assert_int_equal(h_service_restart(&F.svc, NULL), 0);
    for (int i = 0; i < 5; i++) {
        struct h_resp r;
        req(&r, "GET", h_fmt("/v1/posts/%s", ids[i]), NULL, NULL);
        h_assert_status(&r, 200);
        json_t *p = h_resp_json(&r);
        assert_string_equal(str(p, "text"), h_fmt("durable %d @bob", i));
        assert_string_equal(joined(json_object_get(p, "mentions")), "bob");
        json_decref(p);
        h_resp_release(&r);
        json_t *ev = events_for(ids[i]);
        assert_int_equal(json_array_size(ev), 1);
        json_decref(ev);
    }
    /* And new posts sort after the old ones. */
    json_t *p = create_ok(ALICE, "after the crash");
    assert_true(strcmp(str(p, "id"), ids[4]) > 0);
    json_decref(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_get),
        cmocka_unit_test(test_idempotent_create),
        cmocka_unit_test(test_timeline_paging),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_kill_and_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
