/*
 * test_users.c - the users service end to end: moat-users, moat-catalog
 * and moat-gateway as real processes on loopback, accounts and tokens
 * through the gateway (/api/v1/users, /api/v1/auth) and the admin and
 * fault-injection paths directly against users (service tokens).
 *
 * What is proven here: the register -> login -> refresh -> profile flow,
 * refresh-token rotation and reuse detection, object-level authorisation,
 * refused mass assignment, no plaintext email or name in the database
 * files, refusal of a ciphertext moved to another row, key rotation with
 * reads going on, an intact hash-chained audit log that detects a flipped
 * byte, login rate limits, and Landlock keeping each service out of the
 * other's database.
 *
 * Some tests stop and restart users (to read or edit its files at rest);
 * the gateway is restarted with it, since users comes back on a new port.
 * Tests never depend on each other's data: each makes its own accounts.
 *
 * Run one test alone (also under gdb or valgrind):
 *     tests/it_test_users test_refresh_rotation
 */
#include "moat/common.h"

#include <curl/curl.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "moat/audit.h"
#include "moat/db.h"
#include "moat/sandbox.h"

#define ADMIN_EMAIL    "root@moat.test"
#define ADMIN_PASSWORD "correct horse battery staple"
#define PASSWORD       "a long enough password"

/* Login limits small enough for the test to see them pass: 3 failures,
 * then one more attempt every 4/3 s (scaled: on a loaded machine three
 * password hashes may take longer than a token takes to come back). */
#define MAX_FAILURES 3
#define WINDOW_S     4

/* MOAT_USERS_LOGIN_WINDOW_S: WINDOW_S scaled, whole seconds. */
static unsigned window_s(void)
{
    return (h_scaled_ms(WINDOW_S * 1000) + 999) / 1000;
}

static struct {
    char *tmp;
    char *users_data;
    char *cat_data;
    char routes_env[512];
    struct h_service users, cat, gw;
    char admin_id[64];
} F;

static char window_env[64];
static const char *users_env[] = {
    "MOAT_USERS_ADMIN_EMAIL=" ADMIN_EMAIL,
    "MOAT_USERS_ADMIN_PASSWORD=" ADMIN_PASSWORD,
    "MOAT_USERS_LOGIN_MAX_FAILURES=3",
    window_env, /* MOAT_USERS_LOGIN_WINDOW_S, set by start_users */
    /* Every request of the suite comes from 127.0.0.1: the per-address
     * limit has its own test, with its own instance. */
    "MOAT_USERS_LOGIN_PER_IP_PER_MIN=100000",
    /* Small batches with a pause: rotation takes long enough for reads
     * to interleave with it. */
    "MOAT_USERS_REKEY_BATCH=2",
    "MOAT_USERS_REKEY_PAUSE_MS=40",
    NULL,
};

/* ---- helpers ---- */

#define UNIQUE_POOL 256
static const char *unique(const char *prefix)
{
    static char pool[UNIQUE_POOL][64];
    static unsigned next;
    unsigned char rnd[4];
    char hex[9];
    moat_random_bytes(rnd, sizeof(rnd));
    moat_hex(hex, rnd, sizeof(rnd));
    char *out = pool[next++ % UNIQUE_POOL];
    snprintf(out, sizeof(pool[0]), "%s-%s", prefix, hex);
    return out;
}

static const char *gw_url(const char *path)
{
    return h_fmt("%s/api/v1%s", F.gw.url, path);
}

static const char *users_url(const char *path)
{
    return h_fmt("%s%s", F.users.url, path);
}

static char *dump(const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    assert_non_null(s);
    return s;
}

static const char *str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* "Authorization: Bearer <token>" in a buffer the caller owns. */
#define AUTH_MAX 4200
static const char *bearer(const json_t *tokens, char out[AUTH_MAX])
{
    const char *t = str(tokens, "access_token");
    assert_non_null(t);
    snprintf(out, AUTH_MAX, "Authorization: Bearer %s", t);
    return out;
}

/* A service-token header for calling users directly as user/role, in a
 * buffer the caller owns (h_service_token's buffer rotates). */
static const char *as_user(const char *id, const char *role, char out[AUTH_MAX])
{
    snprintf(out, AUTH_MAX, "%s", h_service_token("users", id, role));
    return out;
}

/* POST a JSON document built from fmt to url with headers. */
static void post(struct h_resp *r, const char *url, const char *const *headers,
                 json_t *doc)
{
    char *body = dump(doc);
    h_send_json(r, "POST", url, body, headers);
    free(body);
    json_decref(doc);
}

/* Register through the gateway (anonymous: a public route). */
static json_t *register_user(const char *email, const char *name)
{
    struct h_resp r;
    post(&r, gw_url("/users"), NULL,
         json_pack("{s:s, s:s, s:s}", "email", email, "password", PASSWORD,
                   "display_name", name));
    h_assert_status(&r, 201);
    json_t *u = h_resp_json(&r);
    assert_non_null(u);
    assert_non_null(h_resp_header(&r, "Location"));
    h_resp_release(&r);
    return u;
}

static void login_raw(struct h_resp *r, const char *email, const char *password)
{
    post(r, gw_url("/auth/login"), NULL,
         json_pack("{s:s, s:s}", "email", email, "password", password));
}

static json_t *login(const char *email, const char *password)
{
    struct h_resp r;
    login_raw(&r, email, password);
    h_assert_status(&r, 200);
    json_t *t = h_resp_json(&r);
    assert_non_null(t);
    assert_string_equal(str(t, "token_type"), "Bearer");
    assert_non_null(str(t, "access_token"));
    assert_non_null(str(t, "refresh_token"));
    assert_string_equal(h_resp_header(&r, "Cache-Control"), "no-store");
    h_resp_release(&r);
    return t;
}

static void refresh_raw(struct h_resp *r, const char *token)
{
    post(r, gw_url("/auth/refresh"), NULL,
         json_pack("{s:s}", "refresh_token", token));
}

/* GET url with one header; asserts status and returns the body. */
static json_t *get_as(const char *url, const char *header, long status)
{
    const char *headers[] = {header, NULL};
    struct h_resp r;
    h_http(&r, "GET", url, headers, NULL, 0);
    if (status >= 400)
        h_assert_problem(&r, status);
    else
        h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

static void assert_json_string(const json_t *obj, const char *key,
                               const char *want)
{
    const char *got = str(obj, key);
    if (!got || strcmp(got, want) != 0)
        fail_msg("%s: expected \"%s\", got \"%s\"", key, want,
                 got ? got : "(none)");
}

/* Whole file into memory (NULL if absent); *len its size. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct {
        char *p;
        size_t n, cap;
    } b = {NULL, 0, 0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.n + got > b.cap) {
            b.cap = (b.n + got) * 2;
            b.p = moat_xrealloc(b.p, b.cap);
        }
        memcpy(b.p + b.n, chunk, got);
        b.n += got;
    }
    fclose(f);
    *len = b.n;
    return b.p ? b.p : moat_xcalloc(1, 1);
}

/* True when the users audit log has a line containing text. */
static bool audit_has(const char *text)
{
    size_t len = 0;
    char *log = slurp(h_fmt("%s/audit.log", F.users_data), &len);
    bool found = log && memmem(log, len, text, strlen(text)) != NULL;
    free(log);
    return found;
}

/* ---- process control ---- */

static int start_users(void)
{
    snprintf(window_env, sizeof(window_env), "MOAT_USERS_LOGIN_WINDOW_S=%u",
             window_s());
    return h_service_start(&F.users, "users", F.tmp, F.users_data, users_env);
}

static int start_gateway(void)
{
    snprintf(F.routes_env, sizeof(F.routes_env),
             "MOAT_GATEWAY_ROUTES="
             "/api/v1/users=users@%s/v1/users,"
             "/api/v1/auth=users@%s/v1/auth,"
             "/api/v1/products=catalog@%s/v1/products",
             F.users.url, F.users.url, F.cat.url);
    const char *env[] = {
        F.routes_env,
        "MOAT_GATEWAY_PUBLIC=GET /api/v1/products,POST /api/v1/users,"
        "POST /api/v1/auth",
        NULL};
    return h_service_start(&F.gw, "gateway", F.tmp, NULL, env);
}

/* Stop gateway and users (both must exit 0), run between() with users'
 * files at rest, start both again. */
static void restart_users(void (*between)(void *), void *arg)
{
    assert_int_equal(h_service_stop(&F.gw), 0);
    assert_int_equal(h_service_stop(&F.users), 0);
    h_service_release(&F.gw);
    h_service_release(&F.users);
    if (between)
        between(arg);
    assert_int_equal(start_users(), 0);
    assert_int_equal(start_gateway(), 0);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("users");
    F.users_data = moat_xasprintf("%s/users-data", F.tmp);
    F.cat_data = moat_xasprintf("%s/catalog-data", F.tmp);
    if (start_users() != 0 ||
        h_service_start(&F.cat, "catalog", F.tmp, F.cat_data, NULL) != 0 ||
        start_gateway() != 0)
        return -1;
    /* The bootstrap admin exists and can sign in. */
    struct h_resp r;
    login_raw(&r, ADMIN_EMAIL, ADMIN_PASSWORD);
    if (r.status != 200) {
        h_resp_release(&r);
        return -1;
    }
    json_t *t = h_resp_json(&r);
    h_resp_release(&r);
    json_t *user = json_object_get(t, "user");
    snprintf(F.admin_id, sizeof(F.admin_id), "%s",
             json_string_value(json_object_get(user, "id")));
    bool admin = str(user, "role") && strcmp(str(user, "role"), "admin") == 0;
    json_decref(t);
    return admin && F.admin_id[0] ? 0 : -1;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int gw_rc = h_service_stop(&F.gw);
    int users_rc = h_service_stop(&F.users);
    int cat_rc = h_service_stop(&F.cat);
    if (gw_rc != 0 || users_rc != 0 || cat_rc != 0)
        print_error("services must exit 0 on SIGTERM: gateway %d, users %d, "
                    "catalog %d (see the logs above)\n",
                    gw_rc, users_rc, cat_rc);
    h_service_release(&F.gw);
    h_service_release(&F.users);
    h_service_release(&F.cat);
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.users_data);
    free(F.cat_data);
    return gw_rc == 0 && users_rc == 0 && cat_rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_register_login_me(void **state)
{
    MOAT_UNUSED(state);
    const char *email = h_fmt("%s@Example.COM", unique("Alice"));
    char *mail = moat_xstrdup(email);
    json_t *u = register_user(mail, "Alice Example");
    const char *id = str(u, "id");
    assert_non_null(id);
    assert_int_equal(strlen(id), 30);
    assert_memory_equal(id, "usr_", 4);
    assert_json_string(u, "email", mail);
    assert_json_string(u, "display_name", "Alice Example");
    assert_json_string(u, "role", "customer");
    assert_int_equal(json_integer_value(json_object_get(u, "version")), 1);
    assert_null(json_object_get(u, "password"));
    assert_null(json_object_get(u, "password_hash"));

    /* Emails match case-insensitively (the blind index is over the
     * normalised form): a second account with the same address is 409. */
    struct h_resp r;
    char *lower = moat_xstrdup(mail);
    for (char *p = lower; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    post(&r, gw_url("/users"), NULL,
         json_pack("{s:s, s:s, s:s}", "email", lower, "password", PASSWORD,
                   "display_name", "Copy"));
    h_assert_problem(&r, 409);
    h_resp_release(&r);

    json_t *t = login(lower, PASSWORD);
    assert_string_equal(str(json_object_get(t, "user"), "id"), id);
    assert_string_equal(str(json_object_get(t, "user"), "role"), "customer");
    assert_true(json_integer_value(json_object_get(t, "expires_in")) > 0);
    char auth[AUTH_MAX];
    bearer(t, auth);

    json_t *me = get_as(gw_url("/users/me"), auth, 200);
    assert_true(json_equal(me, u));
    json_decref(me);
    me = get_as(gw_url(h_fmt("/users/%s", id)), auth, 200);
    assert_true(json_equal(me, u));
    json_decref(me);

    /* PATCH me: display name; version moves on. */
    const char *headers[] = {auth, NULL};
    h_send_json(&r, "PATCH", gw_url("/users/me"),
                "{\"display_name\":\"Alice B. Example\"}", headers);
    h_assert_status(&r, 200);
    json_t *p = h_resp_json(&r);
    assert_json_string(p, "display_name", "Alice B. Example");
    assert_int_equal(json_integer_value(json_object_get(p, "version")), 2);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    json_decref(p);
    h_resp_release(&r);
    /* A stale If-Match is refused (optimistic concurrency). */
    const char *stale[] = {auth, "If-Match: \"v1\"", NULL};
    h_send_json(&r, "PATCH", gw_url("/users/me"),
                "{\"display_name\":\"Lost update\"}", stale);
    h_assert_problem(&r, 412);
    assert_string_equal(h_resp_header(&r, "ETag"), "\"v2\"");
    h_resp_release(&r);

    /* A password change needs the current password... */
    h_send_json(&r, "PATCH", gw_url("/users/me"),
                "{\"new_password\":\"another long password\"}", headers);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/current_password");
    h_resp_release(&r);
    h_send_json(&r, "PATCH", gw_url("/users/me"),
                "{\"new_password\":\"another long password\","
                "\"current_password\":\"not the password\"}",
                headers);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    /* ...and with it, ends every session: the old refresh token is dead. */
    h_send_json(&r, "PATCH", gw_url("/users/me"),
                "{\"new_password\":\"another long password\","
                "\"current_password\":\"" PASSWORD "\"}",
                headers);
    h_assert_status(&r, 200);
    h_resp_release(&r);
    refresh_raw(&r, str(t, "refresh_token"));
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    login_raw(&r, lower, PASSWORD);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    json_t *t2 = login(mail, "another long password");

    /* Without a token the gateway refuses /users/me; directly, with a
     * service token but no end user, users refuses it. */
    h_get(&r, gw_url("/users/me"));
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    char svc[AUTH_MAX];
    json_decref(
        get_as(users_url("/v1/users/me"), as_user(NULL, NULL, svc), 401));
    /* And with no service token at all, users refuses everything. */
    h_get(&r, users_url("/v1/users/me"));
    h_assert_problem(&r, 401);
    h_resp_release(&r);

    json_decref(t2);
    json_decref(t);
    json_decref(u);
    free(lower);
    free(mail);
}

static void test_validation(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    h_send_json(&r, "POST", gw_url("/users"),
                "{\"email\":\"a@b@c\",\"password\":\"short\","
                "\"display_name\":\"\"}",
                NULL);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/email");
    h_assert_problem_error(&r, "pointer", "/password");
    h_assert_problem_error(&r, "pointer", "/display_name");
    h_resp_release(&r);

    h_send_json(&r, "POST", gw_url("/users"),
                "{\"email\":\"has space@x.test\",\"password\":\"" PASSWORD
                "\",\"display_name\":\"x\"}",
                NULL);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/email");
    h_resp_release(&r);

    h_send_json(&r, "POST", gw_url("/users"), "{\"email\":", NULL);
    h_assert_problem(&r, 400);
    h_resp_release(&r);

    h_send_json(&r, "POST", gw_url("/users"), "[1,2]", NULL);
    h_assert_problem(&r, 422);
    h_resp_release(&r);

    /* Wrong email and wrong password: the same 401, word for word. */
    json_t *u = register_user(h_fmt("%s@x.test", unique("val")), "Val");
    login_raw(&r, str(u, "email"), "wrong password!!");
    h_assert_problem(&r, 401);
    json_t *a = h_resp_json(&r);
    h_resp_release(&r);
    login_raw(&r, h_fmt("%s@x.test", unique("nobody")), "wrong password!!");
    h_assert_problem(&r, 401);
    json_t *b = h_resp_json(&r);
    h_resp_release(&r);
    assert_string_equal(str(a, "detail"), str(b, "detail"));
    json_decref(a);
    json_decref(b);
    json_decref(u);
}

static void get_status(const char *url, const char *header, long *status)
{
    struct h_resp r;
    const char *headers[] = {header, NULL};
    h_http(&r, "GET", url, headers, NULL, 0);
    *status = r.status;
    h_resp_release(&r);
}

/* A logout through the gateway ends the access token it carries at once;
 * another session's token is untouched. */
static void test_logout_revokes_access_token(void **state)
{
    MOAT_UNUSED(state);
    char *mail = moat_xstrdup(h_fmt("%s@x.test", unique("out")));
    json_decref(register_user(mail, "Leaving"));
    json_t *t1 = login(mail, PASSWORD);
    json_t *t2 = login(mail, PASSWORD);
    char auth1[AUTH_MAX], auth2[AUTH_MAX];
    bearer(t1, auth1);
    bearer(t2, auth2);
    json_decref(get_as(gw_url("/users/me"), auth1, 200));

    struct h_resp r;
    const char *headers[] = {auth1, NULL};
    post(&r, gw_url("/auth/logout"), headers,
         json_pack("{s:s}", "refresh_token", str(t1, "refresh_token")));
    h_assert_status(&r, 204);
    h_resp_release(&r);
    /* The very next request: no wait. */
    json_decref(get_as(gw_url("/users/me"), auth1, 401));
    json_decref(get_as(h_fmt("%s/api/v2/users/me", F.gw.url), auth1, 401));
    json_decref(get_as(gw_url("/users/me"), auth2, 200));

    /* A logout with the refresh token alone (no access token to deny):
     * users ends the session (SessionsEnded), and the gateway, following
     * users' feed, refuses its access token within the feed's delay. */
    post(&r, gw_url("/auth/logout"), NULL,
         json_pack("{s:s}", "refresh_token", str(t2, "refresh_token")));
    h_assert_status(&r, 204);
    h_resp_release(&r);
    long st = 0;
    H_WAIT_UNTIL((get_status(gw_url("/users/me"), auth2, &st), st == 401),
                 H_WAIT_MS, "the ended session's token to be refused");
    json_decref(t2);
    json_decref(t1);
    free(mail);
}

static void test_refresh_rotation(void **state)
{
    MOAT_UNUSED(state);
    const char *email = h_fmt("%s@x.test", unique("rot"));
    char *mail = moat_xstrdup(email);
    json_decref(register_user(mail, "Rotating"));
    json_t *t1 = login(mail, PASSWORD);
    char *r1 = moat_xstrdup(str(t1, "refresh_token"));

    /* Rotation: a new refresh token, the new access token works. */
    struct h_resp r;
    refresh_raw(&r, r1);
    h_assert_status(&r, 200);
    json_t *t2 = h_resp_json(&r);
    h_resp_release(&r);
    char *r2 = moat_xstrdup(str(t2, "refresh_token"));
    assert_string_not_equal(r1, r2);
    char auth[AUTH_MAX];
    json_decref(get_as(gw_url("/users/me"), bearer(t2, auth), 200));

    /* r2 rotates to r3 normally. */
    refresh_raw(&r, r2);
    h_assert_status(&r, 200);
    json_t *t3 = h_resp_json(&r);
    h_resp_release(&r);
    char *r3 = moat_xstrdup(str(t3, "refresh_token"));

    /* Presenting r1 again is theft: 401, and the whole family is revoked,
     * including the live r3. */
    refresh_raw(&r, r1);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    refresh_raw(&r, r3);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    assert_true(audit_has("\"token.reuse_detected\""));

    /* Another login is another family, untouched by that; logout revokes
     * it, and logout is idempotent. */
    json_t *t4 = login(mail, PASSWORD);
    const char *r4 = str(t4, "refresh_token");
    post(&r, gw_url("/auth/logout"), NULL,
         json_pack("{s:s}", "refresh_token", r4));
    h_assert_status(&r, 204);
    h_resp_release(&r);
    post(&r, gw_url("/auth/logout"), NULL,
         json_pack("{s:s}", "refresh_token", r4));
    h_assert_status(&r, 204);
    h_resp_release(&r);
    refresh_raw(&r, r4);
    h_assert_problem(&r, 401);
    h_resp_release(&r);

    /* Garbage is just invalid. */
    refresh_raw(&r, "not-a-token");
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    h_send_json(&r, "POST", gw_url("/auth/refresh"), "{\"token\":\"x\"}", NULL);
    h_assert_problem(&r, 422);
    h_resp_release(&r);

    json_decref(t4);
    json_decref(t3);
    json_decref(t2);
    json_decref(t1);
    free(r3);
    free(r2);
    free(r1);
    free(mail);
}

static void test_authorisation(void **state)
{
    MOAT_UNUSED(state);
    json_t *a = register_user(h_fmt("%s@x.test", unique("authz-a")), "A");
    json_t *b = register_user(h_fmt("%s@x.test", unique("authz-b")), "B");
    json_t *ta = login(str(a, "email"), PASSWORD);
    char auth[AUTH_MAX];
    bearer(ta, auth);
    const char *b_url = gw_url(h_fmt("/users/%s", str(b, "id")));
    char *b_path = moat_xstrdup(b_url);

    /* Another user's profile: 403, read or write. */
    json_decref(get_as(b_path, auth, 403));
    const char *headers[] = {auth, NULL};
    struct h_resp r;
    h_send_json(&r, "PATCH", b_path, "{\"display_name\":\"pwned\"}", headers);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    /* An id that does not exist looks the same to a customer. */
    json_decref(
        get_as(gw_url("/users/usr_00000000000000000000000000"), auth, 403));
    /* Admin routes: 403 for a customer. */
    json_decref(get_as(gw_url("/users?limit=5"), auth, 403));
    char svc[AUTH_MAX];
    as_user(str(a, "id"), "customer", svc);
    json_decref(get_as(users_url("/v1/admin/keys"), svc, 403));
    const char *svc_h[] = {svc, NULL};
    h_http(&r, "POST", users_url("/v1/admin/keys/rotate"), svc_h, NULL, 0);
    h_assert_problem(&r, 403);
    h_resp_release(&r);

    /* The admin reads and changes anyone, and finds users by email. */
    char admin[AUTH_MAX];
    as_user(F.admin_id, "admin", admin);
    json_t *got =
        get_as(users_url(h_fmt("/v1/users/%s", str(b, "id"))), admin, 200);
    assert_true(json_equal(got, b));
    json_decref(got);
    char *esc = curl_easy_escape(NULL, str(b, "email"), 0);
    json_t *list =
        get_as(users_url(h_fmt("/v1/users?email=%s", esc)), admin, 200);
    curl_free(esc);
    json_t *items = json_object_get(list, "items");
    assert_int_equal(json_array_size(items), 1);
    assert_json_string(json_array_get(items, 0), "id", str(b, "id"));
    json_decref(list);
    /* Pagination by id covers every user exactly once. */
    size_t seen = 0, pages = 0;
    char cursor[256] = "";
    for (;;) {
        const char *u =
            cursor[0] ? users_url(h_fmt("/v1/users?limit=2&cursor=%s", cursor))
                      : users_url("/v1/users?limit=2");
        list = get_as(u, admin, 200);
        seen += json_array_size(json_object_get(list, "items"));
        pages++;
        json_t *next = json_object_get(list, "next_cursor");
        if (!json_is_string(next)) {
            json_decref(list);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        json_decref(list);
        assert_true(pages < 1000);
    }
    assert_true(seen >= 3);

    /* The admin may set a role; the customer sees it after a refresh. */
    const char *admin_h[] = {admin, NULL};
    h_send_json(&r, "PATCH", users_url(h_fmt("/v1/users/%s", str(b, "id"))),
                "{\"role\":\"admin\"}", admin_h);
    h_assert_status(&r, 200);
    json_t *nb = h_resp_json(&r);
    assert_json_string(nb, "role", "admin");
    json_decref(nb);
    h_resp_release(&r);
    /* But not their own (no accidental lock-out). */
    h_send_json(&r, "PATCH", users_url("/v1/users/me"),
                "{\"role\":\"customer\"}", admin_h);
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/role");
    h_resp_release(&r);

    free(b_path);
    json_decref(ta);
    json_decref(b);
    json_decref(a);
}

static void test_mass_assignment(void **state)
{
    MOAT_UNUSED(state);
    const char *email = h_fmt("%s@x.test", unique("mass"));
    char *mail = moat_xstrdup(email);
    struct h_resp r;

    /* role and id at registration: refused, and nothing is created. */
    post(&r, gw_url("/users"), NULL,
         json_pack("{s:s, s:s, s:s, s:s}", "email", mail, "password", PASSWORD,
                   "display_name", "Mallory", "role", "admin"));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/role");
    h_resp_release(&r);
    post(&r, gw_url("/users"), NULL,
         json_pack("{s:s, s:s, s:s, s:s}", "email", mail, "password", PASSWORD,
                   "display_name", "Mallory", "id",
                   "usr_00000000000000000000000001"));
    h_assert_problem(&r, 422);
    h_assert_problem_error(&r, "pointer", "/id");
    h_resp_release(&r);
    char admin[AUTH_MAX];
    as_user(F.admin_id, "admin", admin);
    char *esc = curl_easy_escape(NULL, mail, 0);
    json_t *list =
        get_as(users_url(h_fmt("/v1/users?email=%s", esc)), admin, 200);
    assert_int_equal(json_array_size(json_object_get(list, "items")), 0);
    json_decref(list);

    /* Registered properly, a customer cannot patch role, id or version. */
    json_t *u = register_user(mail, "Mallory");
    json_t *t = login(mail, PASSWORD);
    char auth[AUTH_MAX];
    const char *headers[] = {bearer(t, auth), NULL};
    static const char *const patches[][2] = {
        {"{\"role\":\"admin\"}", "/role"},
        {"{\"id\":\"usr_00000000000000000000000001\"}", "/id"},
        {"{\"version\":99}", "/version"},
        {"{\"display_name\":\"M\",\"role\":\"admin\"}", "/role"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(patches); i++) {
        h_send_json(&r, "PATCH", gw_url("/users/me"), patches[i][0], headers);
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", patches[i][1]);
        h_resp_release(&r);
    }
    json_t *me = get_as(gw_url("/users/me"), auth, 200);
    assert_true(json_equal(me, u)); /* role, name and version unchanged */
    json_decref(me);
    /* A token refreshed afterwards still says customer. */
    refresh_raw(&r, str(t, "refresh_token"));
    h_assert_status(&r, 200);
    json_t *t2 = h_resp_json(&r);
    assert_string_equal(str(json_object_get(t2, "user"), "role"), "customer");
    json_decref(t2);
    h_resp_release(&r);

    curl_free(esc);
    json_decref(t);
    json_decref(u);
    free(mail);
}

struct needles {
    const char *const *s;
    size_t n;
};

static void scan_files(void *arg)
{
    struct needles *nd = arg;
    const char *files[] = {"users.db", "users.db-wal", "audit.log"};
    size_t scanned = 0;
    /* On PostgreSQL: every row of the store, as text. */
    char *rows = h_store_text(F.users_data);
    if (rows) {
        scanned++;
        for (size_t i = 0; i < nd->n; i++)
            if (strstr(rows, nd->s[i]))
                fail_msg("the database contains the plaintext \"%s\"",
                         nd->s[i]);
        free(rows);
    }
    for (size_t f = 0; f < MOAT_ARRAY_LEN(files); f++) {
        const char *path = h_fmt("%s/%s", F.users_data, files[f]);
        size_t len = 0;
        char *data = slurp(path, &len);
        if (!data)
            continue;
        scanned++;
        for (size_t i = 0; i < nd->n; i++)
            if (memmem(data, len, nd->s[i], strlen(nd->s[i])))
                fail_msg("%s contains the plaintext \"%s\"", path, nd->s[i]);
        free(data);
    }
    assert_true(scanned >= 2); /* the database and audit.log at least */
}

static void test_no_plaintext_at_rest(void **state)
{
    MOAT_UNUSED(state);
    char emails[3][96], lowers[3][96], names[3][96];
    const char *needles[9];
    for (int i = 0; i < 3; i++) {
        snprintf(emails[i], sizeof(emails[i]), "%s@Plain.Test",
                 unique("Zed.Rest"));
        snprintf(lowers[i], sizeof(lowers[i]), "%s", emails[i]);
        for (char *p = lowers[i]; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        snprintf(names[i], sizeof(names[i]), "Quixote %s", unique("Name"));
        json_decref(register_user(emails[i], names[i]));
        json_decref(login(emails[i], PASSWORD));
        needles[3 * i] = emails[i];
        needles[3 * i + 1] = lowers[i];
        needles[3 * i + 2] = names[i];
    }
    /* Read the files at rest: users stopped, its WAL checkpointed. Also
     * the refresh tokens and passwords: never stored. */
    struct needles nd = {needles, MOAT_ARRAY_LEN(needles)};
    restart_users(scan_files, &nd);
    /* A scan of the live files finds nothing either (the WAL included). */
    for (int i = 0; i < 3; i++)
        json_decref(register_user(
            h_fmt("%s.live@plain.test", unique("Zed.Live")), names[i]));
    scan_files(&nd);
}

/* ---- integrity: a ciphertext moved to another row ---- */

struct copy_job {
    const char *from_id, *to_id;
    char *saved; /* the original email_enc of to_id (owned) */
    bool restore;
};

static void exec_sql(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("sqlite: %s: %s", sql, err ? err : "?");
}

/* edit_db on a PostgreSQL store, through moat/db.h. */
static void edit_db_pg(struct copy_job *j, const char *dsn)
{
    struct moat_db *db = NULL;
    const struct moat_db_options o = {.dsn = dsn};
    assert_int_equal(moat_db_open(&db, NULL, &o, NULL), MOAT_OK);
    struct moat_stmt *st;
    if (j->restore) {
        st = moat_db_prepare(db, "restore",
                             "UPDATE users SET email_enc = ?1 WHERE id = ?2");
        assert_non_null(st);
        moat_stmt_bind_text(st, 1, j->saved);
        moat_stmt_bind_text(st, 2, j->to_id);
        assert_int_equal(moat_stmt_step(st), SQLITE_DONE);
    } else {
        st = moat_db_prepare(db, "save",
                             "SELECT email_enc FROM users WHERE id = ?1");
        assert_non_null(st);
        moat_stmt_bind_text(st, 1, j->to_id);
        assert_int_equal(moat_stmt_step(st), SQLITE_ROW);
        j->saved = moat_xstrdup(moat_stmt_text(st, 0));
        moat_stmt_reset(st);
        st = moat_db_prepare(db, "move",
                             "UPDATE users SET email_enc = (SELECT email_enc "
                             "FROM users WHERE id = ?1) WHERE id = ?2");
        assert_non_null(st);
        moat_stmt_bind_text(st, 1, j->from_id);
        moat_stmt_bind_text(st, 2, j->to_id);
        assert_int_equal(moat_stmt_step(st), SQLITE_DONE);
        assert_int_equal(moat_db_changes(db), 1);
    }
    moat_db_close(db);
}

static void edit_db(void *arg)
{
    struct copy_job *j = arg;
    const char *dsn = h_store_dsn(F.users_data);
    if (dsn) {
        edit_db_pg(j, dsn);
        return;
    }
    sqlite3 *db = NULL;
    const char *path = h_fmt("%s/users.db", F.users_data);
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL),
                     SQLITE_OK);
    sqlite3_stmt *st = NULL;
    if (j->restore) {
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "UPDATE users SET email_enc = ?1 "
                                            "WHERE id = ?2",
                                            -1, &st, NULL),
                         SQLITE_OK);
        sqlite3_bind_text(st, 1, j->saved, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->to_id, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
    } else {
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT email_enc FROM users "
                                            "WHERE id = ?1",
                                            -1, &st, NULL),
                         SQLITE_OK);
        sqlite3_bind_text(st, 1, j->to_id, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        j->saved = moat_xstrdup((const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        char *sql = sqlite3_mprintf(
            "UPDATE users SET email_enc = (SELECT email_enc FROM users "
            "WHERE id = %Q) WHERE id = %Q",
            j->from_id, j->to_id);
        exec_sql(db, sql);
        sqlite3_free(sql);
        assert_int_equal(sqlite3_changes(db), 1);
    }
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_integrity_moved_ciphertext(void **state)
{
    MOAT_UNUSED(state);
    json_t *victim = register_user(h_fmt("%s@x.test", unique("victim")), "V");
    json_t *other = register_user(h_fmt("%s@x.test", unique("other")), "O");
    struct copy_job j = {.from_id = str(victim, "id"),
                         .to_id = str(other, "id")};
    restart_users(edit_db, &j);

    /* other's row now holds victim's sealed email: it must not open as
     * other's, and nothing of victim's must come out. */
    char self[AUTH_MAX], admin[AUTH_MAX];
    as_user(j.to_id, "customer", self);
    as_user(F.admin_id, "admin", admin);
    const char *urls[] = {users_url(h_fmt("/v1/users/%s", j.to_id)),
                          users_url("/v1/users/me")};
    char *u0 = moat_xstrdup(urls[0]), *u1 = moat_xstrdup(urls[1]);
    for (int i = 0; i < 2; i++) {
        const char *headers[] = {self, NULL};
        struct h_resp r;
        h_http(&r, "GET", i ? u1 : u0, headers, NULL, 0);
        h_assert_problem(&r, 500);
        assert_non_null(strstr(r.body, "integrity"));
        assert_null(strstr(r.body, str(victim, "email")));
        h_resp_release(&r);
    }
    /* The admin list refuses too, rather than skip or leak. */
    json_decref(get_as(users_url("/v1/users?limit=100"), admin, 500));
    /* The victim's own row is fine. */
    json_t *v = get_as(users_url(h_fmt("/v1/users/%s", j.from_id)), admin, 200);
    assert_true(json_equal(v, victim));
    json_decref(v);
    /* The failure is in users' log. */
    size_t len = 0;
    char *log = slurp(F.users.log_path, &len);
    assert_non_null(log);
    assert_non_null(memmem(log, len, "failed its integrity check", 26));
    free(log);

    /* Put the row back, so later tests see a clean database. */
    j.restore = true;
    restart_users(edit_db, &j);
    v = get_as(users_url(h_fmt("/v1/users/%s", j.to_id)), self, 200);
    assert_true(json_equal(v, other));
    json_decref(v);

    free(u0);
    free(u1);
    free(j.saved);
    json_decref(other);
    json_decref(victim);
}

/* ---- key rotation with reads going on ---- */

/* Every user in users reads back as registered (as admin, an
 * Authorization line); then is the key rotation over? *status: the
 * keys' status read (the previous one released); *saw_rotating: whether
 * one status said it was still going on. */
static bool rotation_done(json_t *users, const char *admin, json_t **status,
                          bool *saw_rotating)
{
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u)
    {
        json_t *got =
            get_as(users_url(h_fmt("/v1/users/%s", str(u, "id"))), admin, 200);
        assert_true(json_equal(got, u));
        json_decref(got);
    }
    json_decref(*status);
    *status = get_as(users_url("/v1/admin/keys"), admin, 200);
    if (!json_is_true(json_object_get(*status, "rotating")))
        return true;
    *saw_rotating = true;
    return false;
}

static void test_key_rotation(void **state)
{
    MOAT_UNUSED(state);
    json_t *users = json_array();
    for (int i = 0; i < 5; i++)
        json_array_append_new(
            users, register_user(h_fmt("%s@x.test", unique("rekey")), "Key"));
    char admin[AUTH_MAX];
    as_user(F.admin_id, "admin", admin);
    const char *admin_h[] = {admin, NULL};

    json_t *before = get_as(users_url("/v1/admin/keys"), admin, 200);
    int old_key = (int)json_integer_value(json_object_get(before, "active"));
    json_decref(before);

    struct h_resp r;
    h_http(&r, "POST", users_url("/v1/admin/keys/rotate"), admin_h, NULL, 0);
    h_assert_status(&r, 202);
    json_t *rot = h_resp_json(&r);
    h_resp_release(&r);
    int new_key = (int)json_integer_value(json_object_get(rot, "active"));
    assert_int_equal(new_key, old_key + 1);
    json_decref(rot);

    /* Read every user while the rows move to the new key, until done. */
    bool saw_rotating = false;
    json_t *status = NULL;
    H_WAIT_UNTIL(rotation_done(users, admin, &status, &saw_rotating), H_WAIT_MS,
                 "the re-encryption to key %d to finish (last: %lld rows on "
                 "it, %lld on key %d)",
                 new_key,
                 (long long)h_jint(json_object_get(status, "rows_by_key"),
                                   h_fmt("%d", new_key)),
                 (long long)h_jint(json_object_get(status, "rows_by_key"),
                                   h_fmt("%d", old_key)),
                 old_key);
    /* All rows on the new key; the old key has none left. */
    json_t *rows = json_object_get(status, "rows_by_key");
    assert_int_equal(json_object_size(rows), 1);
    json_t *n = json_object_get(rows, h_fmt("%d", new_key));
    assert_non_null(n);
    assert_true(json_integer_value(n) >= 6);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(status, "pass"), "failed")),
                     0);
    if (!saw_rotating)
        print_message("note: re-encryption finished before the first "
                      "status read\n");
    assert_true(
        h_metric(F.users.url, h_fmt("moat_users_rows_by_key{key=\"%d\"}",
                                    new_key)) == (double)json_integer_value(n));
    assert_true(
        h_metric(F.users.url,
                 h_fmt("moat_users_rows_by_key{key=\"%d\"}", old_key)) == 0.0);
    json_decref(status);

    /* Rows written now use the new key, and logins still work. */
    json_t *fresh = register_user(h_fmt("%s@x.test", unique("post")), "Post");
    json_decref(login(str(fresh, "email"), PASSWORD));
    json_decref(fresh);
    json_decref(users);
}

/* ---- audit log ---- */

static void copy_file(const char *from, const char *to)
{
    size_t len = 0;
    char *data = slurp(from, &len);
    assert_non_null(data);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    free(data);
}

static void test_audit_log(void **state)
{
    MOAT_UNUSED(state);
    /* Some of everything: register, login ok and failed, refresh, admin
     * read. */
    const char *email = h_fmt("%s@x.test", unique("audit"));
    char *mail = moat_xstrdup(email);
    json_t *u = register_user(mail, "Audited Person");
    json_t *t = login(mail, PASSWORD);
    struct h_resp r;
    login_raw(&r, mail, "not the password!");
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    refresh_raw(&r, str(t, "refresh_token"));
    h_assert_status(&r, 200);
    h_resp_release(&r);
    char admin[AUTH_MAX];
    as_user(F.admin_id, "admin", admin);
    json_decref(
        get_as(users_url(h_fmt("/v1/users/%s", str(u, "id"))), admin, 200));

    char *path = moat_xasprintf("%s/audit.log", F.users_data);
    struct moat_audit_report rep;
    memset(&rep, 0, sizeof(rep));
    int rc = moat_audit_verify(path, &rep);
    if (rc != MOAT_OK)
        fail_msg("audit log: %s at line %llu", rep.problem,
                 (unsigned long long)rep.bad_line);
    assert_true(rep.records >= 6);
    size_t len = 0;
    char *log = slurp(path, &len);
    static const char *const actions[] = {
        "\"user.register\"", "\"user.login\"", "\"token.refresh\"",
        "\"admin.read_user\"", "\"outcome\":\"failed\""};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(actions); i++)
        if (!memmem(log, len, actions[i], strlen(actions[i])))
            fail_msg("audit log has no %s", actions[i]);
    assert_null(memmem(log, len, mail, strlen(mail)));
    assert_null(memmem(log, len, "Audited Person", 14));

    /* Flip one byte in a copy: verify finds it. */
    char *dir = moat_xasprintf("%s/audit-copy", F.tmp);
    assert_int_equal(mkdir(dir, 0700), 0);
    char *copy = moat_xasprintf("%s/audit.log", dir);
    char *head = moat_xasprintf("%s/audit.head", dir);
    copy_file(path, copy);
    copy_file(h_fmt("%s/audit.head", F.users_data), head);
    memset(&rep, 0, sizeof(rep));
    assert_int_equal(moat_audit_verify(copy, &rep), MOAT_OK);
    size_t at = len / 2;
    while (log[at] == '\n' || log[at] == '"' || log[at] == '\\')
        at++;
    log[at] = (log[at] >= '0' && log[at] <= '8')  ? (char)(log[at] + 1)
              : (log[at] == '9')                  ? '0'
              : (log[at] >= 'a' && log[at] < 'z') ? (char)(log[at] + 1)
                                                  : (char)(log[at] ^ 0x01);
    FILE *f = fopen(copy, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(log, 1, len, f), len);
    fclose(f);
    memset(&rep, 0, sizeof(rep));
    assert_int_equal(moat_audit_verify(copy, &rep), MOAT_ECONFLICT);
    assert_true(rep.bad_line > 0);
    print_message("tampered audit copy: line %llu: %s\n",
                  (unsigned long long)rep.bad_line, rep.problem);

    free(head);
    free(copy);
    free(dir);
    free(log);
    free(path);
    json_decref(t);
    json_decref(u);
    free(mail);
}

/* ---- login rate limits ---- */

static void test_login_rate_limit(void **state)
{
    MOAT_UNUSED(state);
    const char *email = h_fmt("%s@x.test", unique("limit"));
    char *mail = moat_xstrdup(email);
    json_decref(register_user(mail, "Limited"));
    double limited_before =
        h_metric(F.users.url, "moat_users_logins_total{outcome=\"rate_"
                              "limited\"}");

    struct h_resp r;
    for (int i = 0; i < MAX_FAILURES; i++) {
        login_raw(&r, mail, "wrong password, again");
        h_assert_problem(&r, 401);
        h_resp_release(&r);
    }
    /* Locked: even the right password gets 429, with Retry-After. */
    login_raw(&r, mail, PASSWORD);
    h_assert_problem(&r, 429);
    const char *ra = h_resp_header(&r, "Retry-After");
    assert_non_null(ra);
    long secs = strtol(ra, NULL, 10);
    assert_true(secs >= 1 && secs <= (long)window_s());
    h_resp_release(&r);
    assert_true(h_metric(F.users.url,
                         "moat_users_logins_total{outcome=\"rate_limited\"}") >=
                limited_before + 1);

    /* Recovery once the window lets one more attempt through: time is the
     * condition (the Retry-After the service announced). */
    h_sleep_ms((unsigned)secs * 1000 + 100);
    json_decref(login(mail, PASSWORD));

    /* The success reset the account's bucket: MAX_FAILURES again. */
    for (int i = 0; i < MAX_FAILURES; i++) {
        login_raw(&r, mail, "wrong password, again");
        h_assert_problem(&r, 401);
        h_resp_release(&r);
    }
    login_raw(&r, mail, "wrong password, again");
    h_assert_problem(&r, 429);
    h_resp_release(&r);
    free(mail);
}

static void test_login_address_limit(void **state)
{
    MOAT_UNUSED(state);
    /* An instance of its own with a tiny per-address limit; every login
     * comes from 127.0.0.1 (the service token's ip). */
    char *tmp = h_tmpdir_new("users-ip");
    char *data = moat_xasprintf("%s/data", tmp);
    const char *env[] = {"MOAT_USERS_LOGIN_PER_IP_PER_MIN=2", NULL};
    struct h_service s;
    assert_int_equal(h_service_start(&s, "users", tmp, data, env), 0);
    char svc[AUTH_MAX];
    snprintf(svc, sizeof(svc), "%s", h_service_token("users", NULL, NULL));
    const char *headers[] = {svc, NULL};
    for (int i = 0; i < 3; i++) {
        struct h_resp r;
        /* Different (unknown) accounts: only the address limit applies. */
        char *body = moat_xasprintf(
            "{\"email\":\"%s@x.test\",\"password\":\"whatever it is\"}",
            unique("ip"));
        h_send_json(&r, "POST", h_fmt("%s/v1/auth/login", s.url), body,
                    headers);
        free(body);
        h_assert_problem(&r, i < 2 ? 401 : 429);
        if (i == 2)
            assert_non_null(h_resp_header(&r, "Retry-After"));
        h_resp_release(&r);
    }
    assert_int_equal(h_service_stop(&s), 0);
    h_service_release(&s);
    h_rmtree(tmp);
    free(data);
    free(tmp);
}

/* ---- Landlock: neither service can open the other's database ---- */

#ifdef MOAT_TEST_HOOKS
static bool probe_open(const struct h_service *svc, const char *path, int *err)
{
    char *esc = curl_easy_escape(NULL, path, 0);
    struct h_resp r;
    h_get(&r, h_fmt("%s/_test/open?path=%s", svc->url, esc));
    curl_free(esc);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    bool ok = json_is_true(json_object_get(j, "ok"));
    *err = (int)json_integer_value(json_object_get(j, "errno"));
    json_decref(j);
    h_resp_release(&r);
    return ok;
}
#endif

static void test_sandbox(void **state)
{
    MOAT_UNUSED(state);
#ifndef MOAT_TEST_HOOKS
    print_message("skipped: needs a MOAT_TEST_HOOKS build for /_test/open\n");
#else
    if (moat_sandbox_abi() == 0) {
        print_message("skipped: this kernel has no Landlock\n");
        return;
    }
    char *users_db = moat_xasprintf("%s/users.db", F.users_data);
    char *cat_db = moat_xasprintf("%s/catalog.db", F.cat_data);
    int err = 0;
    /* Database files exist on SQLite only; on PostgreSQL each store is a
     * database of its own role instead. */
    if (!h_store_dsn(F.users_data)) {
        assert_true(probe_open(&F.users, users_db, &err));
        assert_false(probe_open(&F.cat, users_db, &err));
        assert_int_equal(err, EACCES);
    }
    if (!h_store_dsn(F.cat_data)) {
        assert_true(probe_open(&F.cat, cat_db, &err));
        assert_false(probe_open(&F.users, cat_db, &err));
        assert_int_equal(err, EACCES);
    }
    /* Nor the key file. */
    char *keys = moat_xasprintf("%s/keys", F.users_data);
    assert_false(probe_open(&F.cat, keys, &err));
    assert_int_equal(err, EACCES);
    free(keys);
    /* Nor another service's environment, where its keys are, even when the
     * services run as root: confinement drops every capability. */
    char *environ_path = moat_xasprintf("/proc/%d/environ", (int)F.users.pid);
    assert_false(probe_open(&F.cat, environ_path, &err));
    free(environ_path);
    free(cat_db);
    free(users_db);
#endif
}

static void test_data_dir_permissions(void **state)
{
    MOAT_UNUSED(state);
    struct stat st;
    assert_int_equal(stat(F.users_data, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    const char *files[] = {"keys", "audit.log", "audit.head", "users.db"};
    /* users.db only when the store is that file (not PostgreSQL). */
    size_t n = MOAT_ARRAY_LEN(files) - (h_store_dsn(F.users_data) ? 1 : 0);
    for (size_t i = 0; i < n; i++) {
        const char *path = h_fmt("%s/%s", F.users_data, files[i]);
        assert_int_equal(stat(path, &st), 0);
        if ((st.st_mode & 07777) != 0600)
            fail_msg("%s has mode %o, want 600", path,
                     (unsigned)(st.st_mode & 07777));
    }
}

/* users publishes UserRegistered through its feed, to known services
 * only, and the events carry no personal data (the outbox lives in the
 * encrypted-at-rest database). */
static void test_events_feed(void **state)
{
    MOAT_UNUSED(state);
    json_t *u = register_user("feed.person@example.com", "Feed Person");
    const char *id = json_string_value(json_object_get(u, "id"));
    struct h_resp r;
    const char *tok[] = {h_service_token("users", NULL, NULL), NULL};
    h_http(&r, "GET", h_fmt("%s/v1/events?after=0&limit=1000", F.users.url),
           tok, NULL, 0);
    h_assert_status(&r, 200);
    assert_null(strstr(r.body, "feed.person@example.com"));
    assert_null(strstr(r.body, "Feed Person"));
    json_t *feed = h_resp_json(&r);
    bool found = false;
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(feed, "events"), i, ev)
    {
        if (strcmp(json_string_value(json_object_get(ev, "type")),
                   "UserRegistered") == 0 &&
            strcmp(json_string_value(json_object_get(ev, "subject")), id) ==
                0) {
            found = true;
            assert_string_equal(json_string_value(json_object_get(
                                    json_object_get(ev, "data"), "role")),
                                "customer");
            assert_string_equal(
                json_string_value(json_object_get(ev, "source")), "moat/users");
        }
    }
    assert_true(found);
    json_decref(feed);
    h_resp_release(&r);

    /* Without a service token: refused. */
    const char *none[] = {"Moat-Service-Token:", NULL};
    h_http(&r, "GET", h_fmt("%s/v1/events?after=0", F.users.url), none, NULL,
           0);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    json_decref(u);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_login_me),
        cmocka_unit_test(test_events_feed),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_refresh_rotation),
        cmocka_unit_test(test_logout_revokes_access_token),
        cmocka_unit_test(test_authorisation),
        cmocka_unit_test(test_mass_assignment),
        cmocka_unit_test(test_no_plaintext_at_rest),
        cmocka_unit_test(test_integrity_moved_ciphertext),
        cmocka_unit_test(test_key_rotation),
        cmocka_unit_test(test_audit_log),
        cmocka_unit_test(test_login_rate_limit),
        cmocka_unit_test(test_login_address_limit),
        cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_data_dir_permissions),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("users", tests, group_setup,
                                       group_teardown);
}
