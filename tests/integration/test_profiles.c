/*
 * test_profiles.c - the profiles service end to end: moat-users and
 * moat-profiles as real processes on free loopback ports. Accounts are
 * registered with users (a service token, as the gateway would send);
 * profiles learns of them only from users' event feed, so every
 * assertion about a new profile first waits (with a deadline) for it.
 * Profiles are read and written directly with service tokens acting for
 * an end user, as the gateway forwards them.
 *
 * Covered: a registered user gets an empty profile; PUT /v1/profiles/me
 * then GET shows it, the handle resolves, ProfileUpdated (without any
 * personal data) is in the feed, and a repeated PUT changes nothing;
 * problem+json 4xx for bad bodies, an unknown user, a taken handle, a
 * stale If-Match, a missing end user and any attempt to write another
 * user's profile; no plaintext display name, bio or location in the
 * database files (at rest and live); kill -9 and restart keep every
 * profile, and users registered while profiles was down get theirs.
 *
 * Run one test alone: tests/it_test_profiles test_put_me
 */
#include "moat/common.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define PASSWORD "a long enough password"

static struct {
    char *tmp;
    char *users_data, *profiles_data;
    char users_url_env[96];
    struct h_service users, profiles;
} F;

/* ---- helpers ---- */

/* 8 random hex digits, for names of a test's own. */
static const char *unique(void)
{
    static char pool[16][9];
    static unsigned next;
    unsigned char rnd[4];
    char *out = pool[next++ % 16];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(out, rnd, sizeof(rnd));
    return out;
}

static const char *profile_url(const char *path)
{
    return h_fmt("%s/v1/profiles%s", F.profiles.url, path);
}

/* A service-token line acting for user (NULL: no end user), copied. */
static const char *as(const char *user, char out[4096])
{
    snprintf(out, 4096, "%s",
             h_service_token("profiles", user, user ? "customer" : NULL));
    return out;
}

/* Register an account with users; returns its id (caller frees). */
static char *register_user(const char *name)
{
    json_t *doc = json_pack("{s:s, s:s, s:s}", "email",
                            h_fmt("p-%s@profiles.test", unique()), "password",
                            PASSWORD, "display_name", name);
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

/* GET a profile: the status, and the body when 200 (else NULL). */
static json_t *get_profile(const char *user_id, long *status)
{
    char auth[4096];
    const char *hdr[] = {as(NULL, auth), NULL};
    struct h_resp r;
    h_http(&r, "GET", profile_url(h_fmt("/%s", user_id)), hdr, NULL, 0);
    *status = r.status;
    json_t *j = r.status == 200 ? h_resp_json(&r) : NULL;
    if (r.status == 404)
        h_assert_problem(&r, 404);
    h_resp_release(&r);
    return j;
}

/* Has user_id a profile (*p, replaced)? Only 404 may say not yet;
 * *status: the last answer. */
static bool has_profile(const char *user_id, json_t **p, long *status)
{
    json_decref(*p);
    *p = get_profile(user_id, status);
    if (!*p && *status != 404)
        fail_msg("GET profile of %s answered %ld", user_id, *status);
    return *p != NULL;
}

/* Wait until user_id has a profile; returns it. */
static json_t *wait_profile(const char *user_id)
{
    json_t *p = NULL;
    long status = 0;
    H_WAIT_UNTIL(has_profile(user_id, &p, &status), H_WAIT_MS,
                 "the profile of %s (last GET: %ld)", user_id, status);
    return p;
}

/* PUT /v1/profiles/me as user with body (and If-Match when not NULL). */
static void put_me(struct h_resp *r, const char *user, const char *body,
                   const char *if_match)
{
    char auth[4096], im[64];
    const char *hdr[] = {as(user, auth), NULL, NULL};
    if (if_match) {
        snprintf(im, sizeof(im), "If-Match: %s", if_match);
        hdr[1] = im;
    }
    h_send_json(r, "PUT", profile_url("/me"), body, hdr);
}

/* profiles' events after seq (new reference: the "events" array). */
static json_t *events_after(int64_t after)
{
    const char *hdr[] = {h_service_token("profiles", NULL, NULL), NULL};
    struct h_resp r;
    h_http(&r, "GET",
           h_fmt("%s/v1/events?after=%lld&limit=1000", F.profiles.url,
                 (long long)after),
           hdr, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    json_t *events = json_incref(json_object_get(j, "events"));
    assert_true(json_is_array(events));
    json_decref(j);
    h_resp_release(&r);
    return events;
}

/* The newest seq in profiles' feed. */
static int64_t feed_head(void)
{
    const char *hdr[] = {h_service_token("profiles", NULL, NULL), NULL};
    struct h_resp r;
    h_http(&r, "GET", h_fmt("%s/v1/events?limit=1", F.profiles.url), hdr, NULL,
           0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    int64_t head = (int64_t)json_integer_value(json_object_get(j, "head"));
    json_decref(j);
    h_resp_release(&r);
    return head;
}

/* ---- processes ---- */

static const char *const *profiles_env(void)
{
    static const char *env[2];
    env[0] = F.users_url_env;
    return env;
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("profiles");
    F.users_data = moat_xasprintf("%s/users-data", F.tmp);
    F.profiles_data = moat_xasprintf("%s/profiles-data", F.tmp);
    if (h_service_start(&F.users, "users", F.tmp, F.users_data, NULL) != 0)
        return -1;
    snprintf(F.users_url_env, sizeof(F.users_url_env),
             "MOAT_PROFILES_USERS_URL=%s", F.users.url);
    return h_service_start(&F.profiles, "profiles", F.tmp, F.profiles_data,
                           profiles_env());
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int prc = h_service_stop(&F.profiles);
    int urc = h_service_stop(&F.users);
    if (prc != 0 || urc != 0)
        print_error("services must exit 0 on SIGTERM: profiles %d, users %d\n",
                    prc, urc);
    h_service_release(&F.profiles);
    h_service_release(&F.users);
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.users_data);
    free(F.profiles_data);
    return prc == 0 && urc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_register_creates_profile(void **state)
{
    MOAT_UNUSED(state);
    char *id = register_user("Ada Lovelace");
    json_t *p = wait_profile(id);
    assert_string_equal(h_jstr(p, "user_id"), id);
    assert_string_equal(h_jstr(p, "object"), "profile");
    /* users' events carry no personal data: the profile starts empty. */
    assert_true(json_is_null(json_object_get(p, "display_name")));
    assert_true(json_is_null(json_object_get(p, "handle")));
    assert_int_equal(json_integer_value(json_object_get(p, "version")), 1);
    json_decref(p);
    free(id);
}

static void test_put_me(void **state)
{
    MOAT_UNUSED(state);
    char *id = register_user("Grace Hopper");
    json_decref(wait_profile(id));
    int64_t head = feed_head();

    const char *handle = h_fmt("Grace_%s", unique());
    char lower[64];
    snprintf(lower, sizeof(lower), "%s", handle);
    lower[0] = 'g';
    json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s}", "display_name",
                            "Grace B. Hopper", "handle", handle, "bio",
                            "Compilers.\nCOBOL.", "location", "Arlington",
                            "avatar_url", "https://img.example/grace.png");
    char *body = json_dumps(doc, JSON_COMPACT);
    struct h_resp r;
    put_me(&r, id, body, NULL);
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    h_resp_release(&r);

    long status;
    json_t *p = get_profile(id, &status);
    assert_non_null(p);
    assert_string_equal(h_jstr(p, "display_name"), "Grace B. Hopper");
    assert_string_equal(h_jstr(p, "handle"), lower); /* lower-cased */
    assert_string_equal(h_jstr(p, "bio"), "Compilers.\nCOBOL.");
    assert_string_equal(h_jstr(p, "location"), "Arlington");
    assert_string_equal(h_jstr(p, "avatar_url"),
                        "https://img.example/grace.png");
    json_decref(p);

    /* The handle resolves (any case), for @mentions. */
    char auth[4096];
    const char *hdr[] = {as(NULL, auth), NULL};
    h_http(&r, "GET", profile_url(h_fmt("?handle=%s", handle)), hdr, NULL, 0);
    h_assert_status(&r, 200);
    json_t *found = h_resp_json(&r);
    json_t *items = json_object_get(found, "items");
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(h_jstr(json_array_get(items, 0), "user_id"), id);
    json_decref(found);
    h_resp_release(&r);

    /* One ProfileUpdated: ids, the changed field names and the handle,
     * no personal data. */
    json_t *events = events_after(head);
    assert_int_equal(json_array_size(events), 1);
    json_t *ev = json_array_get(events, 0);
    assert_string_equal(h_jstr(ev, "type"), "ProfileUpdated");
    assert_string_equal(h_jstr(ev, "subject"), id);
    json_t *data = json_object_get(ev, "data");
    assert_string_equal(h_jstr(data, "user_id"), id);
    assert_string_equal(h_jstr(data, "handle"), lower);
    assert_int_equal(json_integer_value(json_object_get(data, "version")), 2);
    assert_int_equal(json_array_size(json_object_get(data, "changed")), 5);
    char *text = json_dumps(ev, JSON_COMPACT);
    assert_null(strstr(text, "Hopper"));
    assert_null(strstr(text, "Arlington"));
    assert_null(strstr(text, "COBOL"));
    free(text);
    json_decref(events);

    /* The same PUT again changes nothing and publishes nothing. */
    put_me(&r, id, body, "\"v2\"");
    h_assert_status(&r, 200);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    h_resp_release(&r);
    assert_int_equal(feed_head(), head + 1);

    /* A partial body clears the rest (PUT replaces); changed lists the
     * fields that changed. */
    put_me(&r, id, "{\"display_name\": \"Grace\"}", "\"v2\"");
    h_assert_status(&r, 200);
    h_resp_release(&r);
    events = events_after(head + 1);
    assert_int_equal(json_array_size(events), 1);
    json_t *changed = json_object_get(
        json_object_get(json_array_get(events, 0), "data"), "changed");
    assert_int_equal(json_array_size(changed), 5);
    json_decref(events);
    p = get_profile(id, &status);
    assert_true(json_is_null(json_object_get(p, "bio")));
    assert_string_equal(h_jstr(p, "display_name"), "Grace");
    json_decref(p);

    json_decref(doc);
    free(body);
    free(id);
}

static void test_bad_requests(void **state)
{
    MOAT_UNUSED(state);
    char *id = register_user("Bad Input");
    char *other = register_user("Other User");
    json_decref(wait_profile(id));
    json_decref(wait_profile(other));
    struct h_resp r;
    char auth[4096];

    /* Every wrong member listed in one 422. */
    char *long_name = moat_xcalloc(1, 200);
    memset(long_name, 'x', 150);
    json_t *doc =
        json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "display_name", long_name,
                  "handle", "no spaces!", "avatar_url", "javascript:alert(1)",
                  "bio", 42, "location", "a\x01b", "user_id", other);
    char *body = json_dumps(doc, JSON_COMPACT);
    put_me(&r, id, body, NULL);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/display_name");
    h_assert_problem_error(&r, "pointer", "/handle");
    h_assert_problem_error(&r, "pointer", "/avatar_url");
    h_assert_problem_error(&r, "pointer", "/bio");
    h_assert_problem_error(&r, "pointer", "/location");
    h_assert_problem_error(&r, "pointer", "/user_id"); /* not assignable */
    h_resp_release(&r);
    free(body);
    json_decref(doc);
    free(long_name);

    /* A URL past the cap, and one without a host. */
    char *url = moat_xcalloc(1, 2100);
    memcpy(url, "https://a.example/", 18);
    memset(url + 18, 'a', 2040);
    body = moat_xasprintf("{\"avatar_url\": \"%s\"}", url);
    put_me(&r, id, body, NULL);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/avatar_url");
    h_resp_release(&r);
    free(body);
    free(url);
    put_me(&r, id, "{\"avatar_url\": \"http:///x\"}", NULL);
    h_assert_problem(&r, 422);
    h_resp_release(&r);

    /* Not an object; not JSON. */
    put_me(&r, id, "[1]", NULL);
    h_assert_problem(&r, 422);
    h_resp_release(&r);
    put_me(&r, id, "{\"bio\": ", NULL);
    h_assert_problem(&r, 400);
    h_resp_release(&r);

    /* No end user: 401. Another user's profile: no such write route. */
    const char *anon[] = {as(NULL, auth), NULL};
    h_send_json(&r, "PUT", profile_url("/me"), "{}", anon);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    const char *mine[] = {as(id, auth), NULL};
    h_send_json(&r, "PUT", profile_url(h_fmt("/%s", other)),
                "{\"display_name\": \"Hijacked\"}", mine);
    h_assert_problem(&r, 405);
    h_resp_release(&r);
    long status;
    json_t *p = get_profile(other, &status);
    assert_true(json_is_null(json_object_get(p, "display_name")));
    json_decref(p);

    /* A taken handle: 409, and the first owner keeps it. */
    const char *handle = h_fmt("taken_%s", unique());
    body = moat_xasprintf("{\"handle\": \"%s\"}", handle);
    put_me(&r, other, body, NULL);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    put_me(&r, id, body, NULL);
    h_assert_problem(&r, 409);
    h_assert_problem_error(&r, "pointer", "/handle");
    h_resp_release(&r);
    free(body);

    /* A stale or malformed If-Match: 412 with the current ETag. */
    put_me(&r, id, "{\"location\": \"Here\"}", "\"v7\"");
    h_assert_problem(&r, 412);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v1\"");
    h_resp_release(&r);
    put_me(&r, id, "{\"location\": \"Here\"}", "W/\"v1\"");
    h_assert_problem(&r, 412);
    h_resp_release(&r);

    /* Unknown users and malformed ids: 404; bad handle queries: 400. */
    assert_null(get_profile("usr_nobody", &status));
    assert_int_equal(status, 404);
    assert_null(get_profile("bad%20id", &status));
    assert_int_equal(status, 404);
    const char *hdr[] = {as(NULL, auth), NULL};
    h_http(&r, "GET", profile_url("?handle=no!"), hdr, NULL, 0);
    h_assert_problem(&r, 400);
    h_assert_problem_error(&r, "parameter", "handle");
    h_resp_release(&r);
    h_http(&r, "GET", profile_url(""), hdr, NULL, 0);
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    h_http(&r, "GET", profile_url("?handle=nobody_has_this"), hdr, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 0);
    json_decref(j);
    h_resp_release(&r);

    free(id);
    free(other);
}

/* Whole file into memory (NULL if absent). */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0, got;
    char chunk[65536];
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (n + got > cap) {
            cap = (n + got) * 2;
            buf = moat_xrealloc(buf, cap);
        }
        memcpy(buf + n, chunk, got);
        n += got;
    }
    fclose(f);
    *len = n;
    return buf ? buf : moat_xcalloc(1, 1);
}

/* Fail if any of needles is in profiles' database files; returns how
 * many files were scanned. */
static int scan_files(const char *const *needles, size_t n)
{
    const char *files[] = {"profiles.db", "profiles.db-wal"};
    int scanned = 0;
    for (size_t f = 0; f < MOAT_ARRAY_LEN(files); f++) {
        const char *path = h_fmt("%s/%s", F.profiles_data, files[f]);
        size_t len = 0;
        char *data = slurp(path, &len);
        if (!data)
            continue;
        scanned++;
        for (size_t i = 0; i < n; i++)
            if (memmem(data, len, needles[i], strlen(needles[i])))
                fail_msg("%s contains the plaintext \"%s\"", path, needles[i]);
        free(data);
    }
    return scanned;
}

/*
 * On PostgreSQL (MOAT_TEST_ENGINE=postgres) the store is no file of the
 * data directory: read user_id's row as the server holds it instead. Fail
 * if any of needles is in it; the handle (a plain column) must be, and
 * each personal field must be sealed text. Returns false when profiles is
 * not on PostgreSQL.
 */
static bool scan_row_pg(const char *user_id, const char *const *needles,
                        size_t n, const char *handle)
{
    const char *dsn = h_store_dsn(F.profiles.data_dir);
    if (!dsn)
        return false;
    PGconn *conn = PQconnectdb(dsn);
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    const char *params[] = {user_id};
    PGresult *res = PQexecParams(
        conn,
        "SELECT handle, name_enc, bio_enc, location_enc FROM profiles "
        "WHERE user_id = $1",
        1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    assert_string_equal(PQgetvalue(res, 0, 0), handle);
    for (int c = 1; c < 4; c++) {
        const char *v = PQgetvalue(res, 0, c);
        assert_memory_equal(v, "s1.", 3);
        for (size_t i = 0; i < n; i++)
            if (strstr(v, needles[i]))
                fail_msg("profiles' row holds the plaintext \"%s\"",
                         needles[i]);
    }
    PQclear(res);
    PQfinish(conn);
    return true;
}

static void test_no_plaintext_at_rest(void **state)
{
    MOAT_UNUSED(state);
    char *id = register_user("Rest Test");
    json_decref(wait_profile(id));
    char name[64], bio[64], place[64], handle[64];
    snprintf(name, sizeof(name), "Quixote %s", unique());
    snprintf(bio, sizeof(bio), "Windmills %s", unique());
    snprintf(place, sizeof(place), "La Mancha %s", unique());
    snprintf(handle, sizeof(handle), "rest_%s", unique());
    char *body = moat_xasprintf("{\"display_name\": \"%s\", \"bio\": \"%s\", "
                                "\"location\": \"%s\", \"handle\": \"%s\"}",
                                name, bio, place, handle);
    struct h_resp r;
    put_me(&r, id, body, NULL);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    const char *needles[] = {name, bio, place};

    if (scan_row_pg(id, needles, MOAT_ARRAY_LEN(needles), handle)) {
        /* On PostgreSQL: live, then after a clean stop. */
        assert_int_equal(h_service_stop(&F.profiles), 0);
        assert_true(scan_row_pg(id, needles, MOAT_ARRAY_LEN(needles), handle));
    } else {
        /* Live (the WAL included), then at rest after a clean stop. */
        assert_true(scan_files(needles, MOAT_ARRAY_LEN(needles)) >= 1);
        assert_int_equal(h_service_stop(&F.profiles), 0);
        assert_true(scan_files(needles, MOAT_ARRAY_LEN(needles)) >= 1);
        /* The handle is a plain, public column: the scan can see it,
         * which shows it reads the right file. */
        size_t len = 0;
        char *db = slurp(h_fmt("%s/profiles.db", F.profiles_data), &len);
        assert_non_null(db);
        assert_non_null(memmem(db, len, handle, strlen(handle)));
        free(db);
    }

    assert_int_equal(h_service_restart(&F.profiles, profiles_env()), 0);
    long status;
    json_t *p = get_profile(id, &status);
    assert_non_null(p);
    assert_string_equal(h_jstr(p, "display_name"), name);
    assert_string_equal(h_jstr(p, "bio"), bio);
    assert_string_equal(h_jstr(p, "location"), place);
    json_decref(p);
    free(body);
    free(id);
}

static void test_kill_and_restart(void **state)
{
    MOAT_UNUSED(state);
    char *id = register_user("Crash Test");
    json_decref(wait_profile(id));
    struct h_resp r;
    put_me(&r, id, "{\"display_name\": \"Survivor\", \"location\": \"Ark\"}",
           NULL);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    int64_t head = feed_head();

    h_service_kill(&F.profiles);
    /* Registered while profiles is down: its event waits in users' feed. */
    char *late = register_user("Late Comer");
    assert_int_equal(h_service_restart(&F.profiles, profiles_env()), 0);

    long status;
    json_t *p = get_profile(id, &status);
    assert_non_null(p);
    assert_string_equal(h_jstr(p, "display_name"), "Survivor");
    assert_string_equal(h_jstr(p, "location"), "Ark");
    assert_int_equal(json_integer_value(json_object_get(p, "version")), 2);
    json_decref(p);
    json_decref(wait_profile(late));
    /* The committed event survived too, and nothing was published twice. */
    assert_int_equal(feed_head(), head);
    json_t *events = events_after(head - 1);
    assert_string_equal(h_jstr(json_array_get(events, 0), "subject"), id);
    json_decref(events);
    free(late);
    free(id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_creates_profile),
        cmocka_unit_test(test_put_me),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_no_plaintext_at_rest),
        cmocka_unit_test(test_kill_and_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
