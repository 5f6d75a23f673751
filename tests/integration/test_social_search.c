/*
 * test_social_search.c - search's social index (MOAT_SEARCH_INDEX=social)
 * end to end: real moat-users, moat-profiles (which learns of accounts
 * from users' feed), moat-posts, moat-search consuming posts' and
 * profiles' feeds, and a gateway routing /api/v1/search to it as
 * deploy/social.json does. Every assertion about the index waits (with a
 * deadline) for the events to arrive.
 *
 * Covered: a post is found by a word of its text and by a mention, its
 * item is the post, author_id narrows; a deleted post disappears; a handle
 * is found (also by a prefix), a changed handle replaces the old one;
 * pages by cursor, ranked and listed; problem+json 400s; the gateway
 * serves it without a token; replay --verify finds the rebuilt index
 * identical, and a full replay rebuilds the same results.
 *
 * Run one test alone: tests/it_test_social_search test_posts_by_word
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "moat/buf.h"

#define PASSWORD "a long enough password"
#define ALICE    "usr_01J00000000000000000000ALI"
#define BOB      "usr_01J00000000000000000000B0B"

static struct {
    char *tmp;
    char users_url_env[96], posts_url_env[96], profiles_url_env[96];
    char routes_env[256];
    struct h_service users, profiles, posts, search, gw;
} F;

/* ---- helpers ---- */

/* "w" + 8 random hex digits: a word or name of a test's own. */
static const char *unique(void)
{
    static char pool[16][10];
    static unsigned next;
    unsigned char rnd[4];
    char *out = pool[next++ % 16];
    moat_random_bytes(rnd, sizeof(rnd));
    out[0] = 'w';
    moat_hex(out + 1, rnd, sizeof(rnd));
    return out;
}

static json_t *post_json(const char *url, long status)
{
    struct h_resp r;
    h_http(&r, "POST", url, NULL, NULL, 0);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    return j;
}

/* GET /v1/search/<kind>?<query> on search. */
static json_t *search(const char *kind, const char *query)
{
    return h_get_json(h_fmt("%s/v1/search/%s?%s", F.search.url, kind, query),
                      NULL);
}

/* The ids of a search's items, as "a,b,c" (one rotating buffer). */
static const char *ids_of(const char *kind, const char *query)
{
    json_t *res = search(kind, query);
    struct moat_buf b = MOAT_BUF_INIT;
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(res, "items"), i, item)
    {
        const char *id =
            h_jstr(item, strcmp(kind, "posts") == 0 ? "id" : "user_id");
        moat_buf_printf(&b, "%s%s", i ? "," : "", id);
    }
    const char *out = h_fmt("%s", moat_buf_str(&b));
    moat_buf_release(&b);
    json_decref(res);
    return out;
}

/* Does search/<kind>?<query> answer exactly the ids want? got: the last
 * answer. */
static bool answers_ids(const char *kind, const char *query, const char *want,
                        char got[static 512])
{
    snprintf(got, 512, "%s", ids_of(kind, query));
    return strcmp(got, want) == 0;
}

/* Wait until the search answers exactly the ids want ("" for none). */
static void wait_ids(const char *kind, const char *query, const char *want)
{
    char got[512] = "";
    H_WAIT_UNTIL(answers_ids(kind, query, want, got), H_WAIT_MS,
                 "search/%s?%s to answer [%s] (last answer [%s])", kind, query,
                 want, got);
}

/* ---- the producers ---- */

/* Alice or Bob posts text (201); returns the post (new reference). */
static json_t *post(const char *user, const char *text)
{
    json_t *body = json_pack("{s:s}", "text", text);
    char *s = json_dumps(body, JSON_COMPACT);
    const char *hdr[] = {h_service_token("posts", user, "customer"), NULL};
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/posts", F.posts.url), s, hdr);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    free(s);
    json_decref(body);
    return j;
}

static void delete_post(const char *user, const char *id)
{
    const char *hdr[] = {h_service_token("posts", user, "customer"), NULL};
    struct h_resp r;
    h_http(&r, "DELETE", h_fmt("%s/v1/posts/%s", F.posts.url, id), hdr, NULL,
           0);
    h_assert_status(&r, 204);
    h_resp_release(&r);
}

/* Register an account with users; returns its id (caller frees). */
static char *register_user(void)
{
    json_t *doc = json_pack("{s:s, s:s, s:s}", "email",
                            h_fmt("%s@social-search.test", unique()),
                            "password", PASSWORD, "display_name", "Someone");
    char *body = json_dumps(doc, JSON_COMPACT);
    const char *hdr[] = {h_service_token("users", NULL, NULL), NULL};
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/users", F.users.url), body, hdr);
    h_assert_status(&r, 201);
    json_t *u = h_resp_json(&r);
    char *id = moat_xstrdup(h_jstr(u, "id"));
    assert_true(id[0] != '\0');
    json_decref(u);
    json_decref(doc);
    free(body);
    h_resp_release(&r);
    return id;
}

/* PUT /v1/profiles/me for user with body: 200 is done, 404 is "profiles
 * does not know the user yet" (false, *status 404), anything else fails. */
static bool handle_set(const char *user, const char *body, long *status)
{
    const char *hdr[] = {h_service_token("profiles", user, "customer"), NULL};
    struct h_resp r;
    h_send_json(&r, "PUT", h_fmt("%s/v1/profiles/me", F.profiles.url), body,
                hdr);
    *status = r.status;
    if (r.status != 404)
        h_assert_status(&r, 200);
    h_resp_release(&r);
    return *status == 200;
}

/* PUT /v1/profiles/me for user with handle; waits until profiles knows
 * the user (from users' feed) first. */
static void set_handle(const char *user, const char *handle)
{
    char body[128];
    snprintf(body, sizeof(body),
             "{\"display_name\": \"Secret Name\", "
             "\"handle\": \"%s\"}",
             handle);
    long status = 0;
    H_WAIT_UNTIL(handle_set(user, body, &status), H_WAIT_MS,
                 "profiles to know %s (from users' feed; last PUT: %ld)", user,
                 status);
}

/* The newest seq of a producer's feed. */
static json_int_t feed_head(const struct h_service *svc)
{
    const char *hdr[] = {h_service_token(svc->name, NULL, NULL), NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/v1/events?limit=1", svc->url), hdr, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    json_int_t head = h_jint(j, "head");
    json_decref(j);
    h_resp_release(&r);
    return head;
}

/* Are search's cursors posts' and profiles' heads (read into *posts and
 * *profiles), with no lag? seen: the cursors read. */
static bool caught_up(json_int_t *posts, json_int_t *profiles,
                      char seen[static 256])
{
    seen[0] = '\0';
    *posts = feed_head(&F.posts);
    *profiles = feed_head(&F.profiles);
    json_t *st = h_get_json(h_fmt("%s/v1/admin/consumer", F.search.url), NULL);
    size_t i, done = 0;
    json_t *src;
    json_array_foreach(json_object_get(st, "sources"), i, src)
    {
        const char *name = h_jstr(src, "source");
        json_int_t want = strcmp(name, "posts") == 0      ? *posts
                          : strcmp(name, "profiles") == 0 ? *profiles
                                                          : -1;
        if (h_jint(src, "cursor") == want && h_jint(src, "lag_events") == 0)
            done++;
        size_t len = strlen(seen);
        snprintf(seen + len, 256 - len, " %s@%lld", name,
                 (long long)h_jint(src, "cursor"));
    }
    json_decref(st);
    return done == 2;
}

/* Wait until search's cursors are posts' and profiles' heads. */
static void wait_caught_up(void)
{
    json_int_t posts = 0, profiles = 0;
    char seen[256] = "";
    H_WAIT_UNTIL(caught_up(&posts, &profiles, seen), H_WAIT_MS,
                 "search to catch up with posts (head %lld) and profiles "
                 "(head %lld); its cursors:%s",
                 (long long)posts, (long long)profiles, seen);
}

/* Every page of search/<kind>?<query>, limit per page: the items. */
static json_t *all_pages(const char *kind, const char *query, int limit)
{
    json_t *all = json_array();
    char *cursor = NULL;
    for (int pages = 0;; pages++) {
        assert_true(pages < 1000);
        json_t *page = search(
            kind, cursor ? h_fmt("%s&limit=%d&cursor=%s", query, limit, cursor)
                         : h_fmt("%s&limit=%d", query, limit));
        free(cursor);
        cursor = NULL;
        assert_true(json_array_size(json_object_get(page, "items")) <=
                    (size_t)limit);
        json_array_extend(all, json_object_get(page, "items"));
        json_t *next = json_object_get(page, "next_cursor");
        if (json_is_string(next))
            cursor = moat_xstrdup(json_string_value(next));
        json_decref(page);
        if (!cursor)
            return all;
    }
}

static void assert_verify_identical(void)
{
    json_t *v =
        post_json(h_fmt("%s/v1/admin/replay?verify=1", F.search.url), 200);
    if (!json_is_true(json_object_get(v, "identical"))) {
        char *t = json_dumps(v, JSON_INDENT(2));
        print_error("replay verification found differences: %s\n", t);
        free(t);
        fail();
    }
    json_decref(v);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("social-search");
    if (h_service_start(&F.users, "users", F.tmp, h_fmt("%s/users-data", F.tmp),
                        NULL) != 0 ||
        h_service_start(&F.posts, "posts", F.tmp, h_fmt("%s/posts-data", F.tmp),
                        NULL) != 0)
        return -1;
    snprintf(F.users_url_env, sizeof(F.users_url_env),
             "MOAT_PROFILES_USERS_URL=%s", F.users.url);
    const char *profiles_env[] = {F.users_url_env, NULL};
    if (h_service_start(&F.profiles, "profiles", F.tmp,
                        h_fmt("%s/profiles-data", F.tmp), profiles_env) != 0)
        return -1;
    snprintf(F.posts_url_env, sizeof(F.posts_url_env),
             "MOAT_SEARCH_POSTS_URL=%s", F.posts.url);
    snprintf(F.profiles_url_env, sizeof(F.profiles_url_env),
             "MOAT_SEARCH_PROFILES_URL=%s", F.profiles.url);
    const char *search_env[] = {"MOAT_SEARCH_INDEX=social", F.posts_url_env,
                                F.profiles_url_env, NULL};
    if (h_service_start(&F.search, "search", F.tmp,
                        h_fmt("%s/search-data", F.tmp), search_env) != 0)
        return -1;
    snprintf(F.routes_env, sizeof(F.routes_env),
             "MOAT_GATEWAY_ROUTES=/api/v1/search=search@%s/v1/search",
             F.search.url);
    const char *gw_env[] = {F.routes_env,
                            "MOAT_GATEWAY_PUBLIC=GET /api/v1/search", NULL};
    if (h_service_start(&F.gw, "gateway", F.tmp, NULL, gw_env) != 0)
        return -1;
    h_auto_service_token(F.search.url, "search", NULL, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    struct h_service *all[] = {&F.gw, &F.search, &F.posts, &F.profiles,
                               &F.users};
    int rc = 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++) {
        if (h_service_stop(all[i]) != 0) {
            print_error("%s must exit 0 on SIGTERM\n", all[i]->name);
            rc = -1;
        }
        h_service_release(all[i]);
    }
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    return rc;
}

/* ---- tests ---- */

static void test_posts_by_word(void **state)
{
    MOAT_UNUSED(state);
    char word[16], name[16];
    snprintf(word, sizeof(word), "%s", unique());
    snprintf(name, sizeof(name), "%s", unique());
    json_t *p = post(ALICE, h_fmt("Crème brûlée %s, with @%s", word, name));
    const char *id = h_jstr(p, "id");

    /* By a word, by a prefix of it, by a folded accent. */
    wait_ids("posts", h_fmt("q=%s", word), id);
    wait_ids("posts", h_fmt("q=%.5s+creme", word), id);
    /* By the mention, with or without the @ (%40). */
    wait_ids("posts", h_fmt("q=%%40%s", name), id);
    wait_ids("posts", h_fmt("q=%s", name), id);
    /* author_id narrows. */
    wait_ids("posts", h_fmt("q=%s&author_id=%s", word, ALICE), id);
    wait_ids("posts", h_fmt("q=%s&author_id=%s", word, BOB), "");
    /* FTS5 syntax is plain text: no error, no other column. */
    wait_ids("posts", h_fmt("q=%s+OR+NEAR(%%22x", word), "");

    /* The item is the post as posts shows it, with a score. */
    json_t *res = search("posts", h_fmt("q=%s", word));
    json_t *item = json_array_get(json_object_get(res, "items"), 0);
    assert_string_equal(h_jstr(item, "id"), id);
    assert_string_equal(h_jstr(item, "author_id"), ALICE);
    assert_string_equal(h_jstr(item, "text"), h_jstr(p, "text"));
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(item, "mentions"), 0)),
        name);
    assert_int_equal(h_jint(item, "created_at"), h_jint(p, "created_at"));
    assert_true(json_is_real(json_object_get(item, "score")));
    assert_true(json_is_null(json_object_get(res, "next_cursor")));
    json_decref(res);
    json_decref(p);
}

static void test_deleted_post_disappears(void **state)
{
    MOAT_UNUSED(state);
    char word[16];
    snprintf(word, sizeof(word), "%s", unique());
    json_t *gone = post(BOB, h_fmt("soon gone %s", word));
    json_t *kept = post(BOB, h_fmt("here to stay %s", word));
    wait_ids("posts", h_fmt("q=%s+gone", word), h_jstr(gone, "id"));
    delete_post(BOB, h_jstr(gone, "id"));
    wait_ids("posts", h_fmt("q=%s+gone", word), "");
    wait_ids("posts", h_fmt("q=%s", word), h_jstr(kept, "id"));
    json_decref(gone);
    json_decref(kept);
}

static void test_handle_found(void **state)
{
    MOAT_UNUSED(state);
    char *user = register_user();
    char first[16], second[16];
    snprintf(first, sizeof(first), "%s", unique());
    snprintf(second, sizeof(second), "%s", unique());
    set_handle(user, first);
    wait_ids("profiles", h_fmt("q=%s", first), user);
    wait_ids("profiles", h_fmt("q=%%40%.4s", first), user); /* a prefix */
    /* Only the handle is indexed, never the (sealed) display name. */
    wait_ids("profiles", "q=Secret", "");

    json_t *res = search("profiles", h_fmt("q=%s", first));
    json_t *item = json_array_get(json_object_get(res, "items"), 0);
    assert_string_equal(h_jstr(item, "user_id"), user);
    assert_string_equal(h_jstr(item, "handle"), first);
    assert_true(h_jint(item, "version") >= 1); /* profiles' own count */
    assert_null(json_object_get(item, "display_name"));
    json_decref(res);

    /* A new handle replaces the old one. */
    set_handle(user, second);
    wait_ids("profiles", h_fmt("q=%s", second), user);
    wait_ids("profiles", h_fmt("q=%s", first), "");
    free(user);
}

static void test_pages(void **state)
{
    MOAT_UNUSED(state);
    char word[16];
    snprintf(word, sizeof(word), "%s", unique());
    json_t *made[5];
    for (int i = 0; i < 5; i++)
        made[i] = post(ALICE, h_fmt("page %s number %d", word, i));
    wait_caught_up();

    /* Ranked pages: every post once. */
    json_t *items = all_pages("posts", h_fmt("q=%s", word), 2);
    assert_int_equal(json_array_size(items), 5);
    for (int i = 0; i < 5; i++) {
        bool found = false;
        size_t j;
        json_t *it;
        json_array_foreach(items, j, it)
        {
            found =
                found || strcmp(h_jstr(it, "id"), h_jstr(made[i], "id")) == 0;
        }
        assert_true(found);
    }
    json_decref(items);

    /* Listed (no q): newest first, no duplicates across pages, and these
     * five in the order they were made (newest first). */
    items = all_pages("posts", "author_id=" ALICE, 3);
    json_int_t last_created = INT64_MAX;
    int seen = 0;
    size_t j;
    json_t *it;
    json_array_foreach(items, j, it)
    {
        assert_true(h_jint(it, "created_at") <= last_created);
        last_created = h_jint(it, "created_at");
        assert_true(json_is_null(json_object_get(it, "score")));
        for (int i = 0; i < 5; i++)
            if (strcmp(h_jstr(it, "id"), h_jstr(made[i], "id")) == 0)
                seen++;
    }
    assert_int_equal(seen, 5);
    json_decref(items);
    for (int i = 0; i < 5; i++)
        json_decref(made[i]);
}

static void expect_400(const char *kind, const char *query, const char *param)
{
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/search/%s?%s", F.search.url, kind, query));
    h_assert_problem(&r, 400);
    if (param)
        h_assert_problem_error(&r, "parameter", param);
    h_resp_release(&r);
}

static void test_bad_requests(void **state)
{
    MOAT_UNUSED(state);
    char long_q[260];
    memset(long_q, 'a', 201);
    long_q[201] = '\0';
    expect_400("posts", "limit=0", "limit");
    expect_400("posts", "limit=101", "limit");
    expect_400("posts", "q=a&q=b", "q");
    expect_400("posts", h_fmt("q=%s", long_q), "q");
    expect_400("posts", "q=a+b+c+d+e+f+g+h+i+j+k+l+m+n+o+p+q", "q");
    expect_400("posts", "cursor=zz", "cursor");
    expect_400("posts", "author_id=no%20spaces", "author_id");
    expect_400("posts", "currency=EUR", "currency"); /* catalog's, not here */
    expect_400("profiles", "author_id=" ALICE, "author_id");
    expect_400("profiles", "q=%FF", "q"); /* not UTF-8 */

    /* A listed page's cursor does not continue a ranked query. */
    json_t *p1 = post(BOB, "cursor kinds one");
    json_t *p2 = post(BOB, "cursor kinds two");
    wait_caught_up();
    json_t *page = search("posts", "limit=1");
    const char *next = h_jstr(page, "next_cursor");
    assert_true(next[0] != '\0');
    expect_400("posts", h_fmt("q=cursor&cursor=%s", next), "cursor");
    json_decref(page);
    json_decref(p1);
    json_decref(p2);

    /* The catalog index's route is not served by the social one. */
    struct h_resp r;
    h_get(&r, h_fmt("%s/v1/search?q=x", F.search.url));
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

static void test_gateway_public(void **state)
{
    MOAT_UNUSED(state);
    char word[16];
    snprintf(word, sizeof(word), "%s", unique());
    json_t *p = post(ALICE, h_fmt("through the gateway %s", word));
    wait_ids("posts", h_fmt("q=%s", word), h_jstr(p, "id"));
    struct h_resp r;
    h_get(&r, h_fmt("%s/api/v1/search/posts?q=%s", F.gw.url, word));
    h_assert_status(&r, 200);
    json_t *res = h_resp_json(&r);
    assert_string_equal(
        h_jstr(json_array_get(json_object_get(res, "items"), 0), "id"),
        h_jstr(p, "id"));
    json_decref(res);
    h_resp_release(&r);
    h_get(&r, h_fmt("%s/api/v1/search/profiles?limit=0", F.gw.url));
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    json_decref(p);
}

static void test_replay(void **state)
{
    MOAT_UNUSED(state);
    wait_caught_up();
    assert_verify_identical();
    json_t *posts_before = all_pages("posts", "q=", 100);
    json_t *profiles_before = all_pages("profiles", "q=", 100);
    assert_true(json_array_size(posts_before) > 0);
    assert_true(json_array_size(profiles_before) > 0);

    /* Rebuild the live index from sequence 0 of both feeds. */
    json_decref(post_json(h_fmt("%s/v1/admin/replay", F.search.url), 202));
    wait_caught_up();
    json_t *posts_after = all_pages("posts", "q=", 100);
    json_t *profiles_after = all_pages("profiles", "q=", 100);
    assert_true(json_equal(posts_before, posts_after));
    assert_true(json_equal(profiles_before, profiles_after));
    /* Replayed into an empty index: every event once again. */
    json_t *a = h_get_json(h_fmt("%s/_test/applications", F.search.url), NULL);
    assert_int_equal(h_jint(a, "max_applications"), 1);
    assert_int_equal(h_jint(a, "events"),
                     feed_head(&F.posts) + feed_head(&F.profiles));
    json_decref(a);
    assert_verify_identical();
    json_decref(posts_before);
    json_decref(posts_after);
    json_decref(profiles_before);
    json_decref(profiles_after);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_posts_by_word),
        cmocka_unit_test(test_deleted_post_disappears),
        cmocka_unit_test(test_handle_found),
        cmocka_unit_test(test_pages),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_gateway_public),
        cmocka_unit_test(test_replay),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("social_search", tests, group_setup,
                                       group_teardown);
}
