/* harness.c - real service processes for integration tests (harness.h). */
#include "moat/common.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "pg_fixture.h"

#include <sodium.h>

#include "moat/auth.h"
#include "moat/jwt.h"
#include "moat/tls.h"
#include "moat/buf.h"
#include "moat/db.h"

#define READY_TIMEOUT_MS 10000
#define RESTART_ATTEMPTS 20
#define STOP_TIMEOUT_MS  15000
#define START_ATTEMPTS   3 /* new port each time another process took it */
#define LOG_TAIL_LINES   40
#define MAX_CHILDREN     32

/* ---- time and files ---- */

static double parse_mult(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return 0;
    char *end = NULL;
    double m = strtod(s, &end);
    if (end == s || *end != '\0' || !(m > 0.0) || m > 1000.0) {
        fprintf(stderr, "harness: ignoring %s=\"%s\"\n", name, s);
        return 0;
    }
    return m;
}

double h_timeout_mult(void)
{
    static double mult;
    if (mult == 0)
        mult = parse_mult("MOAT_TEST_TIMEOUT_MULT");
    if (mult == 0)
        mult = parse_mult("MOAT_TEST_TIMEOUT_MULTIPLIER");
    if (mult == 0)
        mult = H_DEFAULT_TIMEOUT_MULT;
    return mult;
}

unsigned h_scaled_ms(unsigned ms)
{
    return (unsigned)((double)ms * h_timeout_mult());
}

void h_sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- waiting on conditions ---- */

#define WAIT_PAUSE_MAX_MS 50

void h_wait_begin(struct h_waiter *w, unsigned timeout_ms)
{
    w->start_ms = moat_mono_ms();
    w->deadline_ms = w->start_ms + h_scaled_ms(timeout_ms);
    w->pause_ms = 1;
    w->polls = 0;
}

bool h_wait_next(struct h_waiter *w)
{
    w->polls++;
    uint64_t now = moat_mono_ms();
    if (now >= w->deadline_ms)
        return false;
    unsigned pause = w->pause_ms;
    if (now + pause > w->deadline_ms)
        pause = (unsigned)(w->deadline_ms - now);
    h_sleep_ms(pause);
    if (w->pause_ms < WAIT_PAUSE_MAX_MS)
        w->pause_ms = w->pause_ms * 2 > WAIT_PAUSE_MAX_MS ? WAIT_PAUSE_MAX_MS
                                                          : w->pause_ms * 2;
    return true;
}

bool h_wait_until(bool (*cond)(void *arg), void *arg, unsigned timeout_ms)
{
    struct h_waiter w;
    h_wait_begin(&w, timeout_ms);
    while (!cond(arg))
        if (!h_wait_next(&w))
            return false;
    return true;
}

static void print_all_logs(void);

void h_wait_fail_(const struct h_waiter *w, const char *file, int line,
                  const char *expr, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    print_all_logs();
    print_error("timed out after %llu ms (%u polls, multiplier %g) waiting "
                "for %s [%s]\n",
                (unsigned long long)(moat_mono_ms() - w->start_ms), w->polls,
                h_timeout_mult(), what, expr);
    _fail(file, line);
    abort(); /* _fail does not return inside a test */
}

/* Is 127.0.0.1:port free to listen on right now? */
static bool port_bindable(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(port);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/*
 * Ports come from below the kernel's ephemeral range (ip_local_port_range),
 * so that no outgoing connection of a running service can hold one, and a
 * port is handed out once per test process: a port only checked free (and
 * closed again) is not bound until the service starts, and bind(0) would
 * hand the same port to the next caller. Tests running beside each other
 * start from different random points of the range.
 */
uint16_t h_free_port(void)
{
    static uint16_t given[1024];
    static size_t n_given;
    static unsigned long long state;
    unsigned lo = 10000, hi = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    unsigned eph_lo = 0, eph_hi = 0;
    if (f) {
        if (fscanf(f, "%u %u", &eph_lo, &eph_hi) == 2 && eph_lo > lo + 2000)
            hi = eph_lo;
        fclose(f);
    }
    if (state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        state = ((unsigned long long)getpid() << 32) ^
                (unsigned long long)ts.tv_nsec ^ 0x9e3779b97f4a7c15ull;
    }
    for (int tries = 0; tries < 4096; tries++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        uint16_t p = (uint16_t)(lo + (unsigned)(state >> 33) % (hi - lo));
        bool used = false;
        for (size_t i = 0; i < n_given && !used; i++)
            used = given[i] == p;
        if (used || !port_bindable(p))
            continue;
        if (n_given < sizeof(given) / sizeof(given[0]))
            given[n_given++] = p;
        return p;
    }
    fail_msg("harness: no free port below %u", hi);
    return 0;
}

static bool keep_files(void)
{
    const char *s = getenv("MOAT_TEST_KEEP");
    return s && strcmp(s, "1") == 0;
}

char *h_tmpdir_new(const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    char *path = moat_xasprintf("%s/moat-it-%s-XXXXXX", base, tag);
    if (!mkdtemp(path)) {
        print_error("harness: mkdtemp %s: %s\n", path, strerror(errno));
        free(path);
        fail();
    }
    return path;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
    MOAT_UNUSED(st);
    MOAT_UNUSED(flag);
    MOAT_UNUSED(ftw);
    if (remove(path) != 0)
        fprintf(stderr, "harness: cannot remove %s: %s\n", path,
                strerror(errno));
    return 0; /* keep going: remove as much as possible */
}

void h_rmtree(const char *path)
{
    if (!path)
        return;
    if (keep_files()) {
        fprintf(stderr, "harness: keeping %s (MOAT_TEST_KEEP=1)\n", path);
        return;
    }
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *h_run_capture(const char *cmd, int *exit_status)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    struct moat_buf out = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(&out, chunk, n);
    int st = pclose(p);
    *exit_status = WIFEXITED(st)     ? WEXITSTATUS(st)
                   : WIFSIGNALED(st) ? 128 + WTERMSIG(st)
                                     : -1;
    return moat_buf_detach(&out, NULL);
}

void h_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        print_error("harness: cannot create %s: %s\n", path, strerror(errno));
        fail();
    }
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    close(fd);
    assert_int_equal(n, (ssize_t)len);
}

/* ---- children ---- */

/*
 * Every child started and not yet reaped, so that h_kill_all() (also run
 * at exit) can kill it whatever state the test's own structs are in.
 */
static struct child {
    pid_t pid;
    uint16_t port; /* once known */
    char name[32];
    char log_path[PATH_MAX];
} children[MAX_CHILDREN];

static void child_add(const struct h_service *svc)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i].pid == 0) {
            children[i].pid = svc->pid;
            snprintf(children[i].name, sizeof(children[i].name), "%s",
                     svc->name);
            snprintf(children[i].log_path, sizeof(children[i].log_path), "%s",
                     svc->log_path);
            return;
        }
    }
    fprintf(stderr, "harness: more than %d children\n", MAX_CHILDREN);
}

static void child_remove(pid_t pid)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i].pid == pid)
            children[i].pid = 0;
}

void h_kill_all(void)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i].pid <= 0)
            continue;
        kill(children[i].pid, SIGKILL);
        waitpid(children[i].pid, NULL, 0);
        children[i].pid = 0;
    }
}

static void print_log_file(const char *name, const char *path, size_t max_lines)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "harness: no log %s: %s\n", path, strerror(errno));
        return;
    }
    /* Logs of a test run are small: read all, print the tail. */
    struct moat_buf b = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        moat_buf_add(&b, chunk, n);
    fclose(f);

    const char *s = moat_buf_str(&b);
    const char *start = s + b.len;
    size_t lines = 0;
    if (start > s && start[-1] == '\n')
        start--;
    while (start > s && !(start[-1] == '\n' && ++lines == max_lines))
        start--;
    fprintf(stderr, "---- last %zu lines of %s (%s) ----\n", max_lines, name,
            path);
    for (const char *line = start; *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        fprintf(stderr, "[%s] %.*s\n", name, (int)len, line);
        line += len + (nl ? 1 : 0);
    }
    fprintf(stderr, "---- end of %s log ----\n", name);
    moat_buf_release(&b);
}

void h_service_print_log(const struct h_service *svc, size_t max_lines)
{
    if (svc->log_path)
        print_log_file(svc->name, svc->log_path, max_lines);
}

static void print_all_logs(void)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i].pid > 0)
            print_log_file(children[i].name, children[i].log_path,
                           LOG_TAIL_LINES);
}

static int decode_status(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* Reap without blocking. Returns true when the child has exited. */
static bool reap(struct h_service *svc)
{
    if (svc->pid <= 0)
        return true;
    int status = 0;
    pid_t r = waitpid(svc->pid, &status, WNOHANG);
    if (r == 0)
        return false;
    svc->exit_status = r == svc->pid ? decode_status(status) : -1;
    child_remove(svc->pid);
    svc->pid = 0;
    return true;
}

bool h_service_alive(struct h_service *svc)
{
    return !reap(svc);
}

/* ---- the test keyset ---- */

static const char *const known_services[] = {
    "gateway",       "catalog", "users",     "inventory", "orders", "payments",
    "notifications", "search",  "reporting", "readmodel", "test",   "profiles",
    "connections",   "posts",   "timelines", "messaging",
};

static void derive(const char *purpose, const char *name,
                   uint8_t out[crypto_hash_sha256_BYTES])
{
    char *in = moat_xasprintf("moat-test-%s:%s", purpose, name);
    crypto_hash_sha256(out, (const unsigned char *)in, strlen(in));
    free(in);
}

static const char *b64(const uint8_t *bin, size_t len)
{
    char out[128];
    sodium_bin2base64(out, sizeof(out), bin, len,
                      sodium_base64_VARIANT_ORIGINAL);
    return h_fmt("%s", out);
}

const char *h_test_service_key(const char *name)
{
    uint8_t k[crypto_hash_sha256_BYTES];
    derive("service-key", name, k);
    return b64(k, sizeof(k));
}

const char *h_test_jwt_secret(void)
{
    uint8_t k[crypto_hash_sha256_BYTES];
    derive("jwt-secret", "users", k);
    return b64(k, sizeof(k));
}

const char *h_test_pair_key(const char *caller, const char *callee)
{
    char *pair = NULL;
    if (moat_auth_pair_key(h_test_service_key(caller), callee, &pair) !=
        MOAT_OK)
        moat_die("harness: cannot derive a pair key");
    const char *out = h_fmt("%s", pair);
    free(pair);
    return out;
}

/* MOAT_PEER_KEYS for self: every known service's pair key towards it. */
static const char *peer_keys(const char *self)
{
    static char buf[4096];
    size_t off = 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(known_services); i++)
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s:%s",
                                i ? "," : "", known_services[i],
                                h_test_pair_key(known_services[i], self));
    return buf;
}

static const char *signed_line(const char *prefix, const char *purpose,
                               const char *key_name,
                               const struct moat_jwt_claims *c)
{
    uint8_t k[crypto_hash_sha256_BYTES];
    derive(purpose, key_name, k);
    char *tok = NULL;
    if (moat_jwt_sign(k, sizeof(k), c, &tok) != MOAT_OK)
        fail_msg("harness: cannot sign a test token");
    const char *line = h_fmt("%s%s", prefix, tok);
    free(tok);
    return line;
}

/* A service-token line for claims c (iss = the caller, aud set), signed
 * with the caller's pair key towards aud, as a service would sign
 * (moat_auth_pair_key). */
static const char *service_token_line(struct moat_jwt_claims *c)
{
    int64_t now = (int64_t)time(NULL);
    c->iat = now;
    c->exp = now + MOAT_SERVICE_TOKEN_TTL_S;
    uint8_t key[64];
    size_t keylen = 0;
    if (moat_base64_decode(h_test_pair_key(c->iss, c->aud), key, sizeof(key),
                           &keylen) != MOAT_OK)
        moat_die("harness: bad pair key");
    char *tok = NULL;
    if (moat_jwt_sign(key, keylen, c, &tok) != MOAT_OK)
        fail_msg("harness: cannot sign a test token");
    const char *line = h_fmt("%s: %s", MOAT_SERVICE_TOKEN_HEADER, tok);
    free(tok);
    return line;
}

const char *h_peer_token(const char *caller, const char *aud)
{
    struct moat_jwt_claims c = {0};
    snprintf(c.iss, sizeof(c.iss), "%s", caller);
    snprintf(c.sub, sizeof(c.sub), "%s", caller);
    snprintf(c.aud, sizeof(c.aud), "%s", aud);
    return service_token_line(&c);
}

const char *h_service_token(const char *aud, const char *user_id,
                            const char *role)
{
    struct moat_jwt_claims c = {0};
    snprintf(c.iss, sizeof(c.iss), "test");
    snprintf(c.sub, sizeof(c.sub), "test");
    snprintf(c.aud, sizeof(c.aud), "%s", aud);
    snprintf(c.usr, sizeof(c.usr), "%s", user_id ? user_id : "");
    snprintf(c.role, sizeof(c.role), "%s", role ? role : "");
    snprintf(c.ip, sizeof(c.ip), "127.0.0.1");
    return service_token_line(&c);
}

const char *h_user_token(const char *user_id, const char *role, long ttl_s)
{
    struct moat_jwt_claims c = {0};
    int64_t now = (int64_t)time(NULL);
    snprintf(c.iss, sizeof(c.iss), "moat-users");
    snprintf(c.sub, sizeof(c.sub), "%s", user_id);
    snprintf(c.aud, sizeof(c.aud), "moat");
    snprintf(c.role, sizeof(c.role), "%s", role ? role : "");
    c.iat = now;
    c.exp = now + ttl_s;
    if (ttl_s < 0)
        c.iat = c.exp - 60;
    return signed_line("Authorization: Bearer ", "jwt-secret", "users", &c);
}

/* ---- automatic headers ---- */

#define MAX_AUTO_HEADERS 16

/* Service tokens live 60 s: automatic ones are minted again after this. */
#define AUTO_TOKEN_REFRESH_MS 20000

static struct {
    char *url_prefix;
    char *line;
    /* Set for an automatic service token (h_auto_service_token). */
    char *aud, *user, *role;
    uint64_t minted_ms;
} auto_headers[MAX_AUTO_HEADERS];
static size_t nauto;

void h_auto_header(const char *url_prefix, const char *line)
{
    size_t name_len = strcspn(line, ":");
    for (size_t i = 0; i < nauto; i++) {
        if (strcmp(auto_headers[i].url_prefix, url_prefix) == 0 &&
            strncasecmp(auto_headers[i].line, line, name_len + 1) == 0) {
            free(auto_headers[i].line);
            auto_headers[i].line = moat_xstrdup(line);
            return;
        }
    }
    if (nauto == MAX_AUTO_HEADERS)
        fail_msg("harness: too many automatic headers");
    auto_headers[nauto].url_prefix = moat_xstrdup(url_prefix);
    auto_headers[nauto].line = moat_xstrdup(line);
    nauto++;
}

void h_auto_service_token(const char *url_prefix, const char *aud,
                          const char *user, const char *role)
{
    h_auto_header(url_prefix, h_service_token(aud, user, role));
    for (size_t i = 0; i < nauto; i++) {
        if (strcmp(auto_headers[i].url_prefix, url_prefix) != 0 ||
            strncasecmp(auto_headers[i].line, MOAT_SERVICE_TOKEN_HEADER ":",
                        strlen(MOAT_SERVICE_TOKEN_HEADER) + 1) != 0)
            continue;
        free(auto_headers[i].aud);
        free(auto_headers[i].user);
        free(auto_headers[i].role);
        auto_headers[i].aud = moat_xstrdup(aud);
        auto_headers[i].user = user ? moat_xstrdup(user) : NULL;
        auto_headers[i].role = role ? moat_xstrdup(role) : NULL;
        auto_headers[i].minted_ms = moat_mono_ms();
    }
}

void h_auto_headers_clear(void)
{
    for (size_t i = 0; i < nauto; i++) {
        free(auto_headers[i].url_prefix);
        free(auto_headers[i].line);
        free(auto_headers[i].aud);
        free(auto_headers[i].user);
        free(auto_headers[i].role);
    }
    memset(auto_headers, 0, sizeof(auto_headers));
    nauto = 0;
}

/* Explicit headers of the same name win, including an empty "Name:". */
static void add_auto_headers(struct curl_slist **list, const char *url,
                             const char *const *headers)
{
    for (size_t i = 0; i < nauto; i++) {
        if (strncmp(url, auto_headers[i].url_prefix,
                    strlen(auto_headers[i].url_prefix)) != 0)
            continue;
        if (auto_headers[i].aud && moat_mono_ms() - auto_headers[i].minted_ms >=
                                       AUTO_TOKEN_REFRESH_MS) {
            free(auto_headers[i].line);
            auto_headers[i].line = moat_xstrdup(
                h_service_token(auto_headers[i].aud, auto_headers[i].user,
                                auto_headers[i].role));
            auto_headers[i].minted_ms = moat_mono_ms();
        }
        size_t n = strcspn(auto_headers[i].line, ":") + 1;
        bool explicit_one = false;
        for (const char *const *h = headers; h && *h; h++)
            explicit_one =
                explicit_one || strncasecmp(*h, auto_headers[i].line, n) == 0;
        if (!explicit_one)
            *list = curl_slist_append(*list, auto_headers[i].line);
    }
}

/* In the child: never returns. Only async-signal-safe calls until exec,
 * except setenv, which is fine because the test process is single
 * threaded when it forks. */
/* ---- TLS (h_tls_enable) ---- */

static struct {
    char *dir;              /* <tmpdir>/certs; NULL while TLS is off */
    char *ca_cert, *ca_key; /* PEM */
} tls;

bool h_tls_on(void)
{
    return tls.dir != NULL;
}

const char *h_scheme(void)
{
    return tls.dir ? "https" : "http";
}

const char *h_tls_path(const char *name, const char *ext)
{
    if (!tls.dir)
        fail_msg("harness: h_tls_path without h_tls_enable");
    return h_fmt("%s/%s.%s", tls.dir, name, ext);
}

void h_tls_issue(const char *name, int64_t not_before_s, int days,
                 const char *cert_path, const char *key_path)
{
    char *cert = NULL, *key = NULL;
    if (moat_tls_make_cert(tls.ca_cert, tls.ca_key, name, not_before_s, days,
                           &cert, &key) != MOAT_OK ||
        moat_tls_write_pem(cert_path, cert) != MOAT_OK ||
        moat_tls_write_pem(key_path, key) != MOAT_OK)
        fail_msg("harness: cannot issue a TLS certificate for %s", name);
    free(cert);
    free(key);
}

/* The certificate of name, issued on first use. */
static void tls_cert_for(const char *name)
{
    if (!tls.dir)
        return;
    char *cert = moat_xstrdup(h_tls_path(name, "crt"));
    if (access(cert, R_OK) != 0)
        h_tls_issue(name, -300, MOAT_TLS_CERT_DAYS, cert,
                    h_tls_path(name, "key"));
    free(cert);
}

void h_tls_enable(const char *tmpdir)
{
    char *dir = moat_xasprintf("%s/certs", tmpdir);
    if (tls.dir && strcmp(tls.dir, dir) == 0) {
        free(dir);
        return;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        fail_msg("harness: cannot create %s", dir);
    /* One CA per test process; a later test with another tmpdir (the
     * previous one removed) gets the files written there again. */
    if (!tls.ca_cert && moat_tls_make_ca("test", MOAT_TLS_CA_DAYS, &tls.ca_cert,
                                         &tls.ca_key) != MOAT_OK)
        fail_msg("harness: cannot make a test CA");
    if (tls.dir)
        moat_tls_unload();
    free(tls.dir);
    tls.dir = dir;
    char *ca = moat_xstrdup(h_tls_path("ca", "crt"));
    if (moat_tls_write_pem(ca, tls.ca_cert) != MOAT_OK)
        fail_msg("harness: cannot write %s", ca);
    /* The test process calls as the peer "test". */
    tls_cert_for("test");
    char *cert = moat_xstrdup(h_tls_path("test", "crt"));
    char *key = moat_xstrdup(h_tls_path("test", "key"));
    if (moat_tls_load(cert, key, ca) != MOAT_OK)
        fail_msg("harness: cannot load the test TLS identity");
    free(cert);
    free(key);
    free(ca);
}

/*
 * MOAT_TEST_ENGINE=postgres: each data directory gets its own database in
 * the test's private cluster (tests/pg_fixture.h), so a service restarted
 * with the same data directory finds its data again. child_dsn is what
 * the next child forked gets as MOAT_DB_DSN (NULL: none).
 */
#define MAX_PG_STORES 64
static struct {
    char *data_dir;
    const char *dsn; /* owned by the fixture */
} pg_stores[MAX_PG_STORES];
static size_t pg_store_count;
static const char *child_dsn;

static const char *pg_store_dsn(const char *name, const char *data_dir)
{
    if (!data_dir || !h_pg_engine())
        return NULL;
    if (!h_pg_available()) {
        fprintf(stderr, "harness: MOAT_TEST_ENGINE=postgres without "
                        "PostgreSQL: test skipped\n");
        exit(77);
    }
    for (size_t i = 0; i < pg_store_count; i++)
        if (strcmp(pg_stores[i].data_dir, data_dir) == 0)
            return pg_stores[i].dsn;
    if (pg_store_count == MAX_PG_STORES) {
        fprintf(stderr, "harness: too many PostgreSQL stores\n");
        exit(1);
    }
    char db[49];
    int n = snprintf(db, sizeof(db), "%.30s_%zu", name, pg_store_count);
    for (int i = 0; i < n && db[i]; i++)
        if (!((db[i] >= 'a' && db[i] <= 'z') || (db[i] >= '0' && db[i] <= '9')))
            db[i] = '_';
    pg_stores[pg_store_count].data_dir = moat_xstrdup(data_dir);
    pg_stores[pg_store_count].dsn = h_pg_dsn(db);
    return pg_stores[pg_store_count++].dsn;
}

const char *h_store_dsn(const char *data_dir)
{
    for (size_t i = 0; data_dir && i < pg_store_count; i++)
        if (strcmp(pg_stores[i].data_dir, data_dir) == 0)
            return pg_stores[i].dsn;
    return NULL;
}

char *h_store_text(const char *data_dir)
{
    const char *dsn = h_store_dsn(data_dir);
    if (!dsn)
        return NULL;
    struct moat_db *db = NULL;
    const struct moat_db_options o = {.dsn = dsn};
    if (moat_db_open(&db, NULL, &o, NULL) != MOAT_OK) {
        fprintf(stderr, "harness: cannot open %s\n", dsn);
        exit(1);
    }
    struct moat_stmt *s = moat_db_prepare(
        db, "tables",
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'");
    json_t *names = json_array();
    while (s && moat_stmt_step(s) == SQLITE_ROW)
        json_array_append_new(names, json_string(moat_stmt_text(s, 0)));
    struct moat_buf out = MOAT_BUF_INIT;
    size_t i;
    json_t *name;
    json_array_foreach(names, i, name)
    {
        const char *table = json_string_value(name);
        char *sql = moat_xasprintf("SELECT t::text FROM \"%s\" t", table);
        struct moat_stmt *rows = moat_db_prepare(db, table, sql);
        while (rows && moat_stmt_step(rows) == SQLITE_ROW) {
            moat_buf_addstr(&out, moat_stmt_text(rows, 0));
            moat_buf_addstr(&out, "\n");
        }
        free(sql);
    }
    json_decref(names);
    moat_db_close(db);
    char *text = moat_xstrdup(moat_buf_str(&out));
    moat_buf_release(&out);
    return text;
}

MOAT_NORETURN static void exec_child(const struct h_service *svc, pid_t parent,
                                     const char *bin,
                                     const char *const *extra_env)
{
    /* Die with the test process, whatever kills it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(126);

    int log = open(svc->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    int null = open("/dev/null", O_RDONLY);
    if (log < 0 || null < 0)
        _exit(125);
    dup2(null, STDIN_FILENO);
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
    close(log);
    close(null);

    char listen_addr[32];
    snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%u",
             (unsigned)svc->port);
    setenv("MOAT_SERVICE_NAME", svc->name, 1);
    setenv("MOAT_LISTEN", listen_addr, 1);
    setenv("MOAT_SERVICE_KEY", h_test_service_key(svc->name), 1);
    setenv("MOAT_PEER_KEYS", peer_keys(svc->name), 1);
    setenv("MOAT_JWT_SECRET", h_test_jwt_secret(), 1);
    /* The test process calls admin routes as an operator would. */
    setenv("MOAT_OPERATORS", "operator,test", 1);
    if (svc->data_dir)
        setenv("MOAT_DATA_DIR", svc->data_dir, 1);
    if (child_dsn)
        setenv("MOAT_DB_DSN", child_dsn, 1);
    if (tls.dir) {
        setenv("MOAT_TLS_CERT", h_tls_path(svc->name, "crt"), 1);
        setenv("MOAT_TLS_KEY", h_tls_path(svc->name, "key"), 1);
        setenv("MOAT_TLS_CA", h_tls_path("ca", "crt"), 1);
    }
    for (const char *const *e = extra_env; e && *e; e++)
        putenv((char *)*e); /* the parent's strings outlive the exec */

    char *argv[] = {(char *)bin, NULL};
    execv(bin, argv);
    fprintf(stderr, "harness: cannot exec %s: %s\n", bin, strerror(errno));
    _exit(127);
}

/* GET url/readyz until 200, the child exits or the deadline passes. */
static int wait_ready(struct h_service *svc)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i].pid == svc->pid)
            children[i].port = svc->port;
    struct h_waiter w;
    h_wait_begin(&w, READY_TIMEOUT_MS);
    const char *url = h_fmt("%s/readyz", svc->url);
    long last = 0;
    do {
        if (reap(svc))
            return -1;
        struct h_resp r;
        h_http(&r, "GET", url, NULL, NULL, 0);
        last = r.status;
        h_resp_release(&r);
        if (last == 200)
            return 0;
    } while (h_wait_next(&w));
    fprintf(stderr, "harness: %s not ready after %u ms (last /readyz: %ld)\n",
            svc->name, h_scaled_ms(READY_TIMEOUT_MS), last);
    return -1;
}

/* Size of the file at path, 0 when it does not exist. */
static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* The port in the first "service started" line (lib/service.c) of svc's
 * log after offset; 0 while there is none. */
static uint16_t logged_port(const struct h_service *svc, long offset)
{
    FILE *f = fopen(svc->log_path, "r");
    if (!f)
        return 0;
    uint16_t port = 0;
    char line[4096];
    if (fseek(f, offset, SEEK_SET) == 0) {
        while (!port && fgets(line, sizeof(line), f)) {
            if (!strstr(line, "\"msg\":\"service started\""))
                continue;
            json_t *j = json_loads(line, 0, NULL);
            json_int_t p = json_integer_value(json_object_get(j, "port"));
            if (p > 0 && p < 65536)
                port = (uint16_t)p;
            json_decref(j);
        }
    }
    fclose(f);
    return port;
}

static void set_url(struct h_service *svc)
{
    snprintf(svc->url, sizeof(svc->url), "%s://127.0.0.1:%u", h_scheme(),
             (unsigned)svc->port);
}

/* A service started on port 0: wait until its log names the port it
 * bound, while it runs. */
static int wait_port(struct h_service *svc, long log_offset)
{
    struct h_waiter w;
    h_wait_begin(&w, READY_TIMEOUT_MS);
    while ((svc->port = logged_port(svc, log_offset)) == 0) {
        if (reap(svc))
            return -1;
        if (!h_wait_next(&w)) {
            fprintf(stderr,
                    "harness: %s logged no \"service started\" line with "
                    "its port within %u ms (is MOAT_LOG_LEVEL above "
                    "info?)\n",
                    svc->name, h_scaled_ms(READY_TIMEOUT_MS));
            return -1;
        }
    }
    set_url(svc);
    return 0;
}

static bool atexit_done;

int h_service_restart(struct h_service *svc, const char *const *extra_env)
{
    if (h_service_alive(svc))
        h_service_kill(svc);
    char *bin = moat_xasprintf("%s/moat-%s", MOAT_BIN_DIR, svc->name);
    int rc = -1;
    tls_cert_for(svc->name);
    child_dsn = pg_store_dsn(svc->name, svc->data_dir);
    /* The port may linger for an instant after a kill: a few attempts. */
    for (int attempt = 1; attempt <= RESTART_ATTEMPTS && rc != 0; attempt++) {
        fflush(NULL);
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0)
            break;
        if (pid == 0)
            exec_child(svc, parent, bin, extra_env);
        svc->pid = pid;
        child_add(svc);
        rc = wait_ready(svc);
        if (rc != 0 && svc->pid > 0) {
            h_service_print_log(svc, LOG_TAIL_LINES);
            h_service_kill(svc);
            break; /* running but never ready: retrying will not help */
        }
        if (rc != 0)
            h_sleep_ms(50); /* paces the retries while the port is held */
    }
    if (rc != 0)
        h_service_print_log(svc, LOG_TAIL_LINES);
    free(bin);
    return rc;
}

int h_service_start(struct h_service *svc, const char *name, const char *tmpdir,
                    const char *data_dir, const char *const *extra_env)
{
    memset(svc, 0, sizeof(*svc));
    snprintf(svc->name, sizeof(svc->name), "%s", name);
    svc->exit_status = -1;
    svc->data_dir = data_dir ? moat_xstrdup(data_dir) : NULL;
    svc->log_path = moat_xasprintf("%s/%s.log", tmpdir, name);
    char *bin = moat_xasprintf("%s/moat-%s", MOAT_BIN_DIR, name);
    int rc = -1;

    if (!atexit_done) {
        atexit(h_kill_all);
        atexit_done = true;
    }
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "harness: %s is not built: %s\n", bin, strerror(errno));
        goto cleanup;
    }
    /* A port chosen by the caller (services that must know each other's
     * URLs before either starts): MOAT_LISTEN=127.0.0.1:<port>. */
    uint16_t fixed_port = 0;
    for (const char *const *e = extra_env; e && *e; e++) {
        unsigned p;
        if (sscanf(*e, "MOAT_LISTEN=127.0.0.1:%u", &p) == 1 && p > 0 &&
            p < 65536)
            fixed_port = (uint16_t)p;
    }
    /* Without a fixed port the service binds port 0 and logs the port it
     * got: no other process can take it in between. A fixed port may be
     * taken by someone else for an instant: a few attempts. */
    int attempts = fixed_port ? START_ATTEMPTS : 1;
    tls_cert_for(name);
    child_dsn = pg_store_dsn(name, data_dir);
    for (int attempt = 1; attempt <= attempts; attempt++) {
        svc->port = fixed_port;
        set_url(svc);
        long log_offset = file_size(svc->log_path);
        fflush(NULL); /* the child must not repeat our buffered output */
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "harness: fork: %s\n", strerror(errno));
            goto cleanup;
        }
        if (pid == 0)
            exec_child(svc, parent, bin, extra_env);
        svc->pid = pid;
        child_add(svc);
        if ((fixed_port || wait_port(svc, log_offset) == 0) &&
            wait_ready(svc) == 0) {
            rc = 0;
            goto cleanup;
        }
        if (svc->pid > 0) {
            /* Still running but not ready: no point in another attempt. */
            h_service_print_log(svc, LOG_TAIL_LINES);
            h_service_kill(svc);
            goto cleanup;
        }
        fprintf(stderr,
                "harness: %s exited with status %d while starting "
                "(attempt %d of %d, port %u)\n",
                name, svc->exit_status, attempt, attempts, (unsigned)svc->port);
        if (attempt == attempts)
            h_service_print_log(svc, LOG_TAIL_LINES);
    }

cleanup:
    free(bin);
    return rc;
}

int h_service_stop(struct h_service *svc)
{
    if (svc->pid <= 0)
        return svc->exit_status;
    kill(svc->pid, SIGTERM);
    struct h_waiter w;
    h_wait_begin(&w, STOP_TIMEOUT_MS);
    while (!reap(svc)) {
        if (!h_wait_next(&w)) {
            fprintf(stderr, "harness: %s ignored SIGTERM for %u ms: killing\n",
                    svc->name, h_scaled_ms(STOP_TIMEOUT_MS));
            h_service_kill(svc);
            svc->exit_status = -1;
            break;
        }
    }
    if (svc->exit_status != 0) {
        fprintf(stderr, "harness: %s exited with status %d\n", svc->name,
                svc->exit_status);
        h_service_print_log(svc, LOG_TAIL_LINES);
    }
    return svc->exit_status;
}

void h_service_kill(struct h_service *svc)
{
    if (svc->pid <= 0)
        return;
    kill(svc->pid, SIGKILL);
    int status = 0;
    if (waitpid(svc->pid, &status, 0) == svc->pid)
        svc->exit_status = decode_status(status);
    child_remove(svc->pid);
    svc->pid = 0;
}

void h_service_release(struct h_service *svc)
{
    h_service_kill(svc);
    free(svc->data_dir);
    free(svc->log_path);
    svc->data_dir = NULL;
    svc->log_path = NULL;
}

/* ---- HTTP ---- */

static bool curl_ready;

struct recv_ctx {
    struct h_resp *resp;
    struct moat_buf body;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct recv_ctx *ctx = arg;
    size_t len = size * nmemb;
    size_t room = H_MAX_BODY - ctx->body.len;
    if (len > room) {
        ctx->resp->truncated = true;
        len = room;
    }
    moat_buf_add(&ctx->body, data, len);
    return size * nmemb; /* keep reading: the status still counts */
}

static void headers_clear(struct h_resp *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    r->nheaders = 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct recv_ctx *ctx = arg;
    struct h_resp *r = ctx->resp;
    size_t len = size * nmemb;

    /* A new status line (after 100 Continue) starts a new header set. */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        headers_clear(r);
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon || r->nheaders == H_MAX_HEADERS)
        return len;
    const char *v = colon + 1;
    const char *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    r->headers[r->nheaders].name = moat_xstrndup(data, (size_t)(colon - data));
    r->headers[r->nheaders].value = moat_xstrndup(v, (size_t)(end - v));
    r->nheaders++;
    return len;
}

void h_http(struct h_resp *out, const char *method, const char *url,
            const char *const *headers, const void *body, size_t body_len)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->what, sizeof(out->what), "%s %s", method, url);
    struct recv_ctx ctx = {out, MOAT_BUF_INIT};
    struct curl_slist *list = NULL;
    bool has_ct = false;

    if (!curl_ready) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl_ready = true;
    }
    CURL *c = curl_easy_init();
    if (!c)
        moat_die("curl_easy_init failed");
    for (const char *const *h = headers; h && *h; h++) {
        list = curl_slist_append(list, *h);
        if (strncasecmp(*h, "Content-Type:", 13) == 0)
            has_ct = true;
    }
    if (body && !has_ct)
        list = curl_slist_append(list, "Content-Type:");
    add_auto_headers(&list, url, headers);

    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)h_scaled_ms(H_HTTP_TIMEOUT));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)h_scaled_ms(H_HTTP_TIMEOUT));
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never via $http_proxy */
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &ctx);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &ctx);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    moat_tls_curl(c); /* as the peer "test" after h_tls_enable */

    uint64_t t0 = moat_mono_ns();
    CURLcode rc = curl_easy_perform(c);
    out->elapsed_ms = (double)(moat_mono_ns() - t0) / 1e6;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    } else {
        /* A status may have arrived before the transport failed (the
         * server answered early and closed while we were sending). */
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
        snprintf(out->err, sizeof(out->err), "%s: %s", curl_easy_strerror(rc),
                 errbuf);
    }
    moat_buf_grow(&ctx.body, 0);
    out->body = moat_buf_detach(&ctx.body, &out->body_len);
    curl_slist_free_all(list);
    curl_easy_cleanup(c);
}

void h_get(struct h_resp *out, const char *url)
{
    h_http(out, "GET", url, NULL, NULL, 0);
}

void h_send_json(struct h_resp *out, const char *method, const char *url,
                 const char *json, const char *const *headers)
{
    const char *all[H_MAX_HEADERS + 2];
    size_t n = 0;
    all[n++] = "Content-Type: application/json";
    for (const char *const *h = headers; h && *h && n < H_MAX_HEADERS; h++)
        all[n++] = *h;
    all[n] = NULL;
    h_http(out, method, url, all, json, strlen(json));
}

void h_resp_release(struct h_resp *r)
{
    headers_clear(r);
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

const char *h_resp_header(const struct h_resp *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

json_t *h_resp_json(const struct h_resp *r)
{
    if (!r->body || r->body_len == 0)
        return NULL;
    return json_loadb(r->body, r->body_len, 0, NULL);
}

const char *h_jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

json_int_t h_jint(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

json_t *h_get_json(const char *url, const char *const *headers)
{
    struct h_resp r;
    h_http(&r, "GET", url, headers, NULL, 0);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    if (!j)
        fail_msg("harness: GET %s: the body is not JSON: %.200s", url, r.body);
    h_resp_release(&r);
    return j;
}

const char *h_metrics_token(const char *base_url)
{
    const char *colon = strrchr(base_url, ':');
    unsigned long port = colon ? strtoul(colon + 1, NULL, 10) : 0;
    for (size_t i = 0; port && i < MAX_CHILDREN; i++)
        if (children[i].pid > 0 && children[i].port == port)
            return h_service_token(children[i].name, NULL, NULL);
    return NULL;
}

void h_get_metrics(struct h_resp *out, const char *base_url)
{
    const char *headers[] = {h_metrics_token(base_url), NULL};
    h_http(out, "GET", h_fmt("%s/metrics", base_url), headers, NULL, 0);
}

double h_metric_sample(const char *text, const char *series, double absent)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return absent;
}

double h_metric(const char *base_url, const char *series)
{
    struct h_resp r;
    h_get_metrics(&r, base_url);
    double v = h_metric_sample(r.status == 200 ? r.body : NULL, series, -1);
    h_resp_release(&r);
    return v;
}

const char *h_fmt(const char *fmt, ...)
{
    static char bufs[16][4096];
    static unsigned next;
    char *b = bufs[next++ % 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof(bufs[0]), fmt, ap);
    va_end(ap);
    return b;
}

/* ---- assertions ---- */

static void print_resp(const struct h_resp *r)
{
    fprintf(stderr, "---- %s -> %ld (%.1f ms)%s%s\n", r->what, r->status,
            r->elapsed_ms, r->err[0] ? " transport error: " : "", r->err);
    for (size_t i = 0; i < r->nheaders; i++)
        fprintf(stderr, "%s: %s\n", r->headers[i].name, r->headers[i].value);
    fprintf(stderr, "\n%.*s%s\n----\n",
            (int)(r->body_len > 2048 ? 2048 : r->body_len),
            r->body ? r->body : "", r->body_len > 2048 ? "..." : "");
}

/* Report a failed expectation with everything that helps, then fail. */
MOAT_PRINTF(4, 5)
static void fail_with(const struct h_resp *r, const char *file, int line,
                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    print_resp(r);
    print_all_logs();
    print_error("%s\n", msg);
    _fail(file, line);
}

void h_assert_status_(const struct h_resp *r, long status, const char *file,
                      int line)
{
    if (r->status != status)
        fail_with(r, file, line, "%s: expected status %ld, got %ld", r->what,
                  status, r->status);
}

void h_assert_problem_(const struct h_resp *r, long status, const char *file,
                       int line)
{
    h_assert_status_(r, status, file, line);
    const char *ct = h_resp_header(r, "Content-Type");
    if (!ct || strncasecmp(ct, "application/problem+json", 24) != 0)
        fail_with(r, file, line,
                  "%s: expected Content-Type application/problem+json, got "
                  "%s",
                  r->what, ct ? ct : "none");
    json_t *j = h_resp_json(r);
    bool ok = json_is_object(j) && json_is_string(json_object_get(j, "type")) &&
              json_is_string(json_object_get(j, "title")) &&
              json_integer_value(json_object_get(j, "status")) == status;
    json_decref(j);
    if (!ok)
        fail_with(r, file, line,
                  "%s: body is not a problem object with type, title and "
                  "status %ld",
                  r->what, status);
}

void h_assert_problem_error_(const struct h_resp *r, const char *key,
                             const char *name, const char *file, int line)
{
    json_t *j = h_resp_json(r);
    json_t *errors = json_object_get(j, "errors");
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        const char *v = json_string_value(json_object_get(e, key));
        if (v && strcmp(v, name) == 0 &&
            json_is_string(json_object_get(e, "detail")))
            found = true;
    }
    json_decref(j);
    if (!found)
        fail_with(r, file, line, "%s: no error with %s \"%s\" and a detail",
                  r->what, key, name);
}

/* ---- a test event feed ---- */

#include <event2/event.h>
#include <pthread.h>

#include "moat/db.h"
#include "moat/events.h"
#include "moat/http.h"
#include "moat/metrics.h"

static const struct moat_migration feed_migrations[] = {
    {1, "outbox", MOAT_OUTBOX_SCHEMA, NULL},
};

/* One publish handed from the test thread to the loop thread. */
struct feed_job {
    const char *type, *subject;
    json_t *data;
    int64_t seq;
    int rc;
    bool stop; /* stop the loop instead */
    bool done;
};

struct h_feed {
    struct event_base *base;
    struct moat_metrics *metrics;
    struct moat_http_server *http;
    struct moat_db *db;
    struct moat_outbox *outbox;
    struct event *wake; /* read end of pipe_fd */
    int pipe_fd[2];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct feed_job *job; /* the job in hand, under mu */
    char url[64];
    char *dir;
};

static void feed_run_job(struct h_feed *f, struct feed_job *j)
{
    if (j->stop) {
        moat_outbox_free(f->outbox); /* answers parked readers */
        f->outbox = NULL;
        event_base_loopexit(f->base, NULL);
        return;
    }
    j->rc = moat_db_begin(f->db);
    if (j->rc == MOAT_OK)
        j->rc = moat_outbox_append(f->outbox, j->type, j->subject, 1, j->data,
                                   &j->seq);
    if (j->rc == MOAT_OK)
        j->rc = moat_db_commit(f->db);
    else
        moat_db_rollback(f->db);
    if (j->rc == MOAT_OK)
        moat_outbox_committed(f->outbox);
}

static void feed_on_wake(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(what);
    struct h_feed *f = arg;
    char byte;
    if (read(fd, &byte, 1) != 1)
        return;
    pthread_mutex_lock(&f->mu);
    struct feed_job *j = f->job;
    pthread_mutex_unlock(&f->mu);
    if (!j)
        return;
    feed_run_job(f, j);
    pthread_mutex_lock(&f->mu);
    j->done = true;
    f->job = NULL;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void *feed_thread(void *arg)
{
    struct h_feed *f = arg;
    event_base_loop(f->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

/* Hand j to the loop thread and wait until it ran. */
static void feed_submit(struct h_feed *f, struct feed_job *j)
{
    pthread_mutex_lock(&f->mu);
    while (f->job)
        pthread_cond_wait(&f->cv, &f->mu);
    f->job = j;
    pthread_mutex_unlock(&f->mu);
    char byte = 1;
    if (write(f->pipe_fd[1], &byte, 1) != 1)
        fail_msg("harness: cannot wake the test feed");
    pthread_mutex_lock(&f->mu);
    while (!j->done)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

struct h_feed *h_feed_start(const char *name, const char *tmpdir)
{
    return h_feed_start_at(name, tmpdir, 0);
}

struct h_feed *h_feed_start_at(const char *name, const char *tmpdir,
                               uint16_t port)
{
    struct h_feed *f = moat_xcalloc(1, sizeof(*f));
    f->dir = moat_xasprintf("%s/feed-%s", tmpdir, name);
    if (mkdir(f->dir, 0700) != 0 && errno != EEXIST)
        fail_msg("harness: cannot create %s", f->dir);
    char *path = moat_xasprintf("%s/outbox.db", f->dir);
    f->base = event_base_new();
    f->metrics = moat_metrics_new();
    if (!f->base || pipe(f->pipe_fd) != 0 ||
        moat_db_open(&f->db, path, NULL, NULL) != MOAT_OK ||
        moat_db_migrate(f->db, feed_migrations,
                        MOAT_ARRAY_LEN(feed_migrations)) != MOAT_OK ||
        moat_outbox_new(&f->outbox, f->base, f->db, name, NULL, f->metrics) !=
            MOAT_OK)
        fail_msg("harness: cannot create the test feed %s", name);
    free(path);
    struct moat_http_limits limits = {0};
    f->http = moat_http_server_new(f->base, &limits, f->metrics);
    if (!f->http || moat_feed_register(f->outbox, f->http) != MOAT_OK ||
        moat_http_listen(f->http, "127.0.0.1", port, &port) != MOAT_OK)
        fail_msg("harness: cannot serve the test feed %s", name);
    moat_http_set_access_log(f->http, false);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u", port);
    f->wake = event_new(f->base, f->pipe_fd[0], EV_READ | EV_PERSIST,
                        feed_on_wake, f);
    event_add(f->wake, NULL);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    if (pthread_create(&f->thread, NULL, feed_thread, f) != 0)
        fail_msg("harness: cannot start the test feed thread");
    return f;
}

const char *h_feed_url(const struct h_feed *f)
{
    return f->url;
}

int64_t h_feed_publish(struct h_feed *f, const char *type, const char *subject,
                       const char *data_json)
{
    json_error_t err;
    struct feed_job j = {.type = type, .subject = subject};
    j.data = json_loads(data_json, 0, &err);
    if (!j.data)
        fail_msg("harness: h_feed_publish: bad JSON (%s): %s", err.text,
                 data_json);
    feed_submit(f, &j);
    json_decref(j.data);
    if (j.rc != MOAT_OK)
        fail_msg("harness: cannot publish %s: %s", type, moat_strerror(j.rc));
    return j.seq;
}

void h_feed_stop(struct h_feed *f)
{
    if (!f)
        return;
    struct feed_job j = {.stop = true};
    feed_submit(f, &j);
    pthread_join(f->thread, NULL);
    moat_http_server_free(f->http);
    event_free(f->wake);
    moat_db_close(f->db);
    moat_metrics_free(f->metrics);
    event_base_free(f->base);
    close(f->pipe_fd[0]);
    close(f->pipe_fd[1]);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->dir);
    free(f);
}
