/*
 * Personal data at rest, key retirement and the audit chains, on the real
 * deployments (issue 15, "at rest and audit everywhere").
 *
 * The shop (moat.json) and the social network (deploy/social.json), each
 * on free ports under `moat up`, serve a customer with a distinctive name
 * and email: registration, login, profile, an order through the saga to
 * its confirmation email, a post. Then:
 *
 *   - rotation: `moat keys rotate orders|users|profiles --wait`, then
 *     `moat keys retire`: the old data key is gone from the key file and
 *     the data still reads through the API;
 *   - at rest: `moat backup --all` backs every store up, the deployment is
 *     stopped and EVERY file under its var/ (databases, WAL and
 *     shared-memory files, LMDB, logs, state, audit logs, the backups) is
 *     scanned for the name and the email in plain text: none. The
 *     one exception is notifications' Maildir, the outgoing mail itself
 *     (it must name its recipient); the scan checks the email IS there, so
 *     a scan that reads nothing cannot pass;
 *   - audit: `moat audit-log verify` passes for orders, inventory, users
 *     and payments, then each log has one record edited and verify names
 *     the line.
 */
#include "moat/common.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "moat/buf.h"

#define PASSWORD "correct horse battery staple 42"
/* Strings no code, seed or fixture holds: found means leaked. */
#define SHOP_NAME   "Quillon Vexbrandt"
#define SHOP_EMAIL  "quillon.vexbrandt@pii-probe.example"
#define SOCIAL_NAME "Ysolde Marrowgate"
#define SOCIAL_BIO  "Marrowgate lives by the Ysolde quay"
#define SOCIAL_MAIL "ysolde.marrowgate@pii-probe.example"

struct deployment {
    char *dir;
    char file[512];
    char gw[64];
    pid_t up_pid;
};

static struct deployment dep;

/* h_fmt strings last 16 calls: what a test keeps longer is copied here,
 * freed by teardown. */
static char *kept[64];
static size_t nkept;

static const char *keep(const char *s)
{
    assert_true(nkept < MOAT_ARRAY_LEN(kept));
    return kept[nkept++] = moat_xstrdup(s);
}

/* Give service name the extra environment variable (in dep.file). */
static void set_env(const char *service, const char *name, const char *value)
{
    json_t *d = json_load_file(dep.file, 0, NULL);
    assert_non_null(d);
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(d, "services"), i, svc)
    {
        if (strcmp(h_jstr(svc, "name"), service) == 0)
            json_object_set_new(json_object_get(svc, "env"), name,
                                json_string(value));
    }
    assert_int_equal(json_dump_file(d, dep.file, JSON_INDENT(2)), 0);
    json_decref(d);
}

static void up(const char *src, const char *tag)
{
    dep.dir = h_tmpdir_new(tag);
    snprintf(dep.file, sizeof(dep.file), "%s/deploy.json", dep.dir);
    h_deployment_write_free_ports(src, dep.file, tag, dep.gw, sizeof(dep.gw));
    /* users re-seals slowly: a retirement during it is refused. */
    set_env("users", "MOAT_USERS_REKEY_BATCH", "1");
    set_env("users", "MOAT_USERS_REKEY_PAUSE_MS", "1500");
    dep.up_pid = h_moat_up(dep.file, dep.dir, dep.gw);
    if (dep.up_pid < 0)
        fail_msg("the %s deployment did not come up", tag);
}

/* Stop every service (SIGTERM to the supervisor): the files are final. */
static void down(void)
{
    h_moat_down(&dep.up_pid);
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    down();
    h_kill_all();
    while (nkept)
        free(kept[--nkept]);
    if (dep.dir) {
        h_rmtree(dep.dir);
        free(dep.dir);
        dep.dir = NULL;
    }
    return 0;
}

/* `moat ARGS -f <deployment>`: its exit status; its output into *out
 * (may be NULL). */
static int moat_cli(struct moat_buf *out, const char *args)
{
    FILE *p = popen(
        h_fmt("%s/moat %s -f %s 2>&1", MOAT_BIN_DIR, args, dep.file), "r");
    assert_non_null(p);
    char chunk[4096];
    size_t n;
    struct moat_buf tmp = MOAT_BUF_INIT;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(&tmp, chunk, n);
    int st = pclose(p);
    fprintf(stderr, "$ moat %s\n%s", args, moat_buf_str(&tmp));
    if (out)
        moat_buf_add(out, tmp.data ? tmp.data : "", tmp.len);
    moat_buf_release(&tmp);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- calls through the gateway ---- */

/* Method path [json] as auth (a header line or NULL): status, *out the
 * body as JSON when wanted. */
static long call(const char *method, const char *path, const char *json,
                 const char *auth, json_t **out)
{
    const char *hdr[] = {auth, NULL};
    struct h_resp r;
    if (json)
        h_send_json(&r, method, h_fmt("%s%s", dep.gw, path), json,
                    auth ? hdr : NULL);
    else
        h_http(&r, method, h_fmt("%s%s", dep.gw, path), auth ? hdr : NULL, NULL,
               0);
    long st = r.status;
    if (out)
        *out = h_resp_json(&r);
    h_resp_release(&r);
    return st;
}

/* Log in; the Authorization header line, *id the user's id (h_fmt). */
static const char *login(const char *email, const char *password,
                         const char **id)
{
    json_t *j = NULL;
    long st = 0;
    H_WAIT_UNTIL((json_decref(j), j = NULL,
                  st = call("POST", "/api/v1/auth/login",
                            h_fmt("{\"email\":\"%s\",\"password\":\"%s\"}",
                                  email, password),
                            NULL, &j)) == 200,
                 20000, "%s to log in (last status %ld)", email, st);
    const char *auth =
        keep(h_fmt("Authorization: Bearer %s", h_jstr(j, "access_token")));
    if (id)
        *id = keep(h_jstr(json_object_get(j, "user"), "id"));
    json_decref(j);
    return auth;
}

static const char *register_user(const char *email, const char *name,
                                 const char **id)
{
    long st = 0;
    H_WAIT_UNTIL((st = call("POST", "/api/v1/users",
                            h_fmt("{\"email\":\"%s\",\"password\":\"" PASSWORD
                                  "\",\"display_name\":\"%s\"}",
                                  email, name),
                            NULL, NULL)) == 201,
                 20000, "registering %s (last status %ld)", email, st);
    return login(email, PASSWORD, id);
}

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

/* ---- the scan ---- */

struct scan {
    const char *const *needles;
    size_t nneedles;
    const char *exempt; /* a directory where the email must be found */
    const char *exempt_needle;
    const char *backups; /* the backups' directory */
    size_t files, exempt_hits, backup_files;
    struct moat_buf found; /* "path: needle\n" per hit */
};

static void scan_file(struct scan *s, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* a socket or a file that went away */
    struct moat_buf b = MOAT_BUF_INIT;
    char chunk[65536];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0)
        moat_buf_add(&b, chunk, (size_t)n);
    close(fd);
    s->files++;
    s->backup_files += strncmp(path, s->backups, strlen(s->backups)) == 0;
    bool exempt = s->exempt && strncmp(path, s->exempt, strlen(s->exempt)) == 0;
    for (size_t i = 0; i < s->nneedles; i++) {
        const char *k = s->needles[i];
        if (!b.len || !memmem(b.data, b.len, k, strlen(k)))
            continue;
        /* The mail names its recipient (the email and so its parts);
         * nothing else, not even the name. */
        if (exempt && strstr(s->exempt_needle, k))
            s->exempt_hits += strcmp(k, s->exempt_needle) == 0;
        else
            moat_buf_printf(&s->found, "%s: \"%s\"\n", path, k);
    }
    moat_buf_release(&b);
}

static void scan_dir(struct scan *s, const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = moat_xasprintf("%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0) {
            if (S_ISDIR(st.st_mode))
                scan_dir(s, path);
            else if (S_ISREG(st.st_mode))
                scan_file(s, path);
        }
        free(path);
    }
    closedir(d);
}

/* `moat backup --all`: the number of backups it took. */
static size_t backup_all(void)
{
    struct moat_buf out = MOAT_BUF_INIT;
    assert_int_equal(moat_cli(&out, "backup --all"), 0);
    size_t n = 0;
    for (const char *p = moat_buf_str(&out); (p = strstr(p, "/backups/")); p++)
        n++;
    moat_buf_release(&out);
    assert_true(n > 3);
    return n;
}

/* Scan every file under var/, the nbackups backups (a manifest and a
 * store each) too; fail listing each plain-text hit. */
static void assert_no_plain_text(const char *const *needles, size_t n,
                                 const char *mail_needle, size_t nbackups)
{
    char *backups = moat_xasprintf("%s/var/backups/", dep.dir);
    struct scan s = {.needles = needles,
                     .nneedles = n,
                     .found = MOAT_BUF_INIT,
                     .exempt_needle = mail_needle,
                     .backups = backups};
    char *var = moat_xasprintf("%s/var", dep.dir);
    char *maildir = moat_xasprintf("%s/notifications/maildir/", var);
    if (mail_needle)
        s.exempt = maildir;
    scan_dir(&s, var);
    fprintf(stderr, "scanned %zu files under %s (%zu of %zu backups)\n",
            s.files, var, s.backup_files, nbackups);
    assert_true(s.files > 10);
    assert_true(s.backup_files >= 2 * nbackups);
    if (mail_needle)
        assert_true(s.exempt_hits > 0); /* the mail went out: scan works */
    if (s.found.len)
        fail_msg("personal data in plain text at rest:\n%s",
                 moat_buf_str(&s.found));
    moat_buf_release(&s.found);
    free(maildir);
    free(var);
    free(backups);
}

/* ---- rotation ---- */

/* Data key lines ("data <id> ...") in a service's key file. */
static int data_keys(const char *service, int *last_id)
{
    FILE *f = fopen(h_fmt("%s/var/%s/keys", dep.dir, service), "r");
    assert_non_null(f);
    char line[256];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "data %d ", last_id) == 1)
            n++;
    fclose(f);
    return n;
}

static bool rotating(const char *service)
{
    struct moat_buf out = MOAT_BUF_INIT;
    assert_int_equal(moat_cli(&out, h_fmt("keys status %s", service)), 0);
    bool yes = strstr(moat_buf_str(&out), "\"rotating\": true") != NULL;
    moat_buf_release(&out);
    return yes;
}

/* slow: the service re-seals a row per 1.5 s (users, see test_shop), so
 * retiring at once is refused while it works. */
static void rotate_and_retire(const char *service, bool slow)
{
    int id = 0;
    assert_int_equal(data_keys(service, &id), 1);
    assert_int_equal(id, 1);
    if (slow) {
        struct moat_buf out = MOAT_BUF_INIT;
        assert_int_equal(moat_cli(NULL, h_fmt("keys rotate %s", service)), 0);
        assert_int_not_equal(moat_cli(&out, h_fmt("keys retire %s", service)),
                             0);
        assert_non_null(strstr(moat_buf_str(&out), "(409)"));
        moat_buf_release(&out);
        assert_int_equal(data_keys(service, &id), 2);
        H_WAIT_UNTIL(!rotating(service), 30000, "%s to re-seal", service);
    } else {
        assert_int_equal(
            moat_cli(NULL, h_fmt("keys rotate %s --wait", service)), 0);
    }
    assert_int_equal(data_keys(service, &id), 2);
    struct moat_buf out = MOAT_BUF_INIT;
    assert_int_equal(moat_cli(&out, h_fmt("keys status %s", service)), 0);
    /* Every row moved: only key 2 holds rows. */
    assert_null(strstr(moat_buf_str(&out), "\"1\":"));
    moat_buf_release(&out);
    assert_int_equal(moat_cli(NULL, h_fmt("keys retire %s", service)), 0);
    assert_int_equal(data_keys(service, &id), 1);
    assert_int_equal(id, 2); /* key 1 is gone from the file */
}

/* ---- audit chains ---- */

/* Verify, edit one record's detail ("ok" -> "no" in its outcome), verify
 * again: the edited line is named. */
static void tamper(const char *service)
{
    struct moat_buf out = MOAT_BUF_INIT;
    assert_int_equal(moat_cli(&out, h_fmt("audit-log verify %s", service)), 0);
    assert_non_null(strstr(moat_buf_str(&out), "intact"));
    moat_buf_reset(&out);
    const char *path = h_fmt("%s/var/%s/audit.log", dep.dir, service);
    char *log = moat_xstrdup(path);
    FILE *f = fopen(log, "r+");
    assert_non_null(f);
    struct moat_buf text = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        moat_buf_add(&text, chunk, n);
    char *hit = strstr(moat_buf_str(&text), "\"outcome\":\"ok\"");
    assert_non_null(hit);
    memcpy(hit + strlen("\"outcome\":\""), "no", 2);
    rewind(f);
    assert_int_equal(fwrite(text.data, 1, text.len, f), text.len);
    fclose(f);
    moat_buf_release(&text);
    assert_int_not_equal(moat_cli(&out, h_fmt("audit-log verify %s", service)),
                         0);
    assert_non_null(strstr(moat_buf_str(&out), "TAMPERED at line"));
    moat_buf_release(&out);
    free(log);
}

/* ---- the shop ---- */

static const char *order_status(const char *auth, const char *id,
                                const char **email)
{
    json_t *j = NULL;
    if (call("GET", h_fmt("/api/v1/orders/%s", id), NULL, auth, &j) != 200) {
        json_decref(j);
        return "";
    }
    const char *st = h_fmt("%s", h_jstr(j, "status"));
    const char *e = h_jstr(json_object_get(j, "customer"), "email");
    *email = h_fmt("%s", e ? e : "");
    json_decref(j);
    return st;
}

static bool mail_sent(const char *needle)
{
    char *dir = moat_xasprintf("%s/var/notifications/maildir/new", dep.dir);
    DIR *d = opendir(dir);
    bool found = false;
    struct dirent *e;
    while (d && !found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *path = moat_xasprintf("%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "r");
        char line[1024];
        while (f && !found && fgets(line, sizeof(line), f))
            found = strstr(line, needle) != NULL;
        if (f)
            fclose(f);
        free(path);
    }
    if (d)
        closedir(d);
    free(dir);
    return found;
}

static const char *place_order(const char *auth, const char *product,
                               const char *key)
{
    const char *hdr[] = {auth, h_fmt("Idempotency-Key: %s", key), NULL};
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/api/v1/orders", dep.gw),
                h_fmt("{\"lines\":[{\"product_id\":\"%s\",\"quantity\":1}],"
                      "\"card_token\":\"tok_ok\"}",
                      product),
                hdr);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    const char *order = keep(h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    return order;
}

static void test_shop(void **state)
{
    MOAT_UNUSED(state);
    up(MOAT_SOURCE_DIR "/moat.json", "piishop");

    /* A product with stock, as the administrator. */
    const char *admin = login(
        "admin@moat.local",
        keep(deployment_secret("shared", "MOAT_USERS_ADMIN_PASSWORD")), NULL);
    json_t *j = NULL;
    assert_int_equal(call("POST", "/api/v1/products",
                          "{\"sku\":\"PII-1\",\"name\":\"Probe\","
                          "\"price\":{\"amount\":500,\"currency\":\"EUR\"}}",
                          admin, &j),
                     201);
    const char *product = keep(h_jstr(j, "id"));
    json_decref(j);
    assert_int_equal(call("PUT", "/api/v1/stock/PII-1",
                          "{\"on_hand\":10,\"reason\":\"pii probe\"}", admin,
                          NULL),
                     201);

    /* The customer and two orders: the first may be mailed before orders
     * has its copy of the customer (to the fallback address); the second,
     * placed once it has, is mailed to the customer. */
    const char *uid = NULL;
    const char *auth = register_user(SHOP_EMAIL, SHOP_NAME, &uid);
    const char *order = place_order(auth, product, "pii-order-1");
    const char *email = "", *status = "";
    H_WAIT_UNTIL(
        strcmp(status = order_status(auth, order, &email), "confirmed") == 0 &&
            strcmp(email, SHOP_EMAIL) == 0,
        30000, "order %s confirmed with the customer copy (%s, %s)", order,
        status, email);
    order = place_order(auth, product, "pii-order-2");
    H_WAIT_UNTIL(mail_sent(SHOP_EMAIL), 30000, "the confirmation email");

    /* Rotation and retirement; the data still reads. */
    rotate_and_retire("orders", false);
    rotate_and_retire("users", true);
    assert_string_equal(order_status(auth, order, &email), "confirmed");
    assert_string_equal(email, SHOP_EMAIL);
    assert_int_equal(
        call("GET", h_fmt("/api/v1/users/%s", uid), NULL, auth, &j), 200);
    assert_string_equal(h_jstr(j, "display_name"), SHOP_NAME);
    json_decref(j);
    login(SHOP_EMAIL, PASSWORD, NULL); /* the blind index still finds it */

    size_t nbackups = backup_all();
    down();
    static const char *const needles[] = {
        SHOP_NAME,
        SHOP_EMAIL,
        "Vexbrandt",
        "quillon.vexbrandt",
    };
    assert_no_plain_text(needles, MOAT_ARRAY_LEN(needles), SHOP_EMAIL,
                         nbackups);

    tamper("orders");
    tamper("inventory");
    tamper("users");
    tamper("payments");
    teardown(NULL);
}

/* ---- the social network ---- */

static void test_social(void **state)
{
    MOAT_UNUSED(state);
    up(MOAT_SOURCE_DIR "/deploy/social.json", "piisocial");
    const char *uid = NULL;
    const char *auth = register_user(SOCIAL_MAIL, SOCIAL_NAME, &uid);
    long st = 0;
    H_WAIT_UNTIL(
        (st = call("PUT", "/api/v1/profiles/me",
                   "{\"display_name\":\"" SOCIAL_NAME "\",\"bio\":\"" SOCIAL_BIO
                   "\",\"handle\":\"piiprobe\"}",
                   auth, NULL)) == 200,
        20000, "the profile to be written (last status %ld)", st);
    assert_int_equal(call("POST", "/api/v1/posts",
                          "{\"text\":\"hello from the probe\"}", auth, NULL),
                     201);
    json_t *j = NULL;
    assert_int_equal(
        call("GET", h_fmt("/api/v1/profiles/%s", uid), NULL, auth, &j), 200);
    assert_string_equal(h_jstr(j, "display_name"), SOCIAL_NAME);
    json_decref(j);
    rotate_and_retire("profiles", false);
    assert_int_equal(
        call("GET", h_fmt("/api/v1/profiles/%s", uid), NULL, auth, &j), 200);
    assert_string_equal(h_jstr(j, "display_name"), SOCIAL_NAME);
    assert_string_equal(h_jstr(j, "bio"), SOCIAL_BIO);
    json_decref(j);
    size_t nbackups = backup_all();
    down();
    static const char *const needles[] = {
        SOCIAL_NAME, SOCIAL_MAIL, SOCIAL_BIO, "Marrowgate", "ysolde.marrowgate",
    };
    assert_no_plain_text(needles, MOAT_ARRAY_LEN(needles), NULL, nbackups);
    teardown(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_shop, teardown),
        cmocka_unit_test_teardown(test_social, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
