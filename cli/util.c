/* util.c - helpers shared by the moat commands (see cli.h). */
#include "moat/common.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moat/buf.h"
#include "moat/config.h"

#include "moat/auth.h"
#include "moat/jwt.h"
#include "moat/tls.h"

#include "cli.h"
#include "secrets.h"

#define DEFAULT_DEPLOY_FILE "moat.json"
#define TAIL_CHUNK          8192

struct deploy *cli_load_deploy(const char *file)
{
    if (!file)
        file = moat_env_str("MOAT_DEPLOY", DEFAULT_DEPLOY_FILE);
    struct deploy *d = NULL;
    char *err = NULL;
    if (deploy_load(file, &d, &err) != MOAT_OK) {
        /* One "error:" line per problem found in the file. */
        char *save = NULL;
        for (char *line = strtok_r(err, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save))
            cli_error("%s", line);
        free(err);
        return NULL;
    }
    /* $MOAT_HOST (set by `moat up --host`): the deployment as seen from
     * that host, every service at its host's address. */
    const char *host = getenv("MOAT_HOST");
    if (host && *host && deploy_select_host(d, host, &err) != MOAT_OK) {
        cli_error("%s (MOAT_HOST)", err);
        free(err);
        deploy_free(d);
        return NULL;
    }
    /* With "tls": every call below presents the operator's certificate;
     * before `moat certs` (or the first `moat up`) there is none yet. */
    if (cli_tls_operator(d) == MOAT_EIO)
        cli_error("cannot load the operator's TLS certificate from %s/certs",
                  d->var_dir);
    return d;
}

char *cli_state_path(const struct deploy *d)
{
    return moat_xasprintf("%s/moat.state",
                          d->state_dir ? d->state_dir : d->var_dir);
}

char *cli_lock_path(const struct deploy *d)
{
    return moat_xasprintf("%s/moat.lock",
                          d->state_dir ? d->state_dir : d->var_dir);
}

char *cli_log_path(const struct deploy *d, const char *name)
{
    return moat_xasprintf("%s/log/%s.log", d->var_dir, name);
}

/* Directory of the running moat executable: service programs live next to
 * it, whatever the current directory or $PATH. */
static char *bin_dir(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return moat_xstrdup(".");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    return slash && slash != exe ? moat_xstrndup(exe, (size_t)(slash - exe))
                                 : moat_xstrdup("/");
}

char *cli_service_program(const struct deploy_service *s)
{
    char *dir = bin_dir();
    char *prog;
    if (s->binary && strchr(s->binary, '/'))
        prog = deploy_path_join(dir, s->binary);
    else
        prog =
            moat_xasprintf("%s/moat-%s", dir, s->binary ? s->binary : s->name);
    free(dir);
    return prog;
}

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    MOAT_UNUSED(ptr);
    MOAT_UNUSED(arg);
    return size * nmemb;
}

/*
 * A redis:// URL (the cache moat up runs): connect and PING. An answer,
 * PONG or NOAUTH from a server with a password, is "200", anything else
 * "503". A blocking socket with send and receive timeouts (the first also
 * bounds connect on Linux).
 */
static int probe_redis(const char *url, long timeout_ms, long *status)
{
    char hostport[DEPLOY_HOST_MAX + 8], host[DEPLOY_HOST_MAX];
    uint16_t port = 0;
    const char *p = url + strlen("redis://");
    snprintf(hostport, sizeof(hostport), "%.*s", (int)strcspn(p, "/"), p);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (moat_parse_hostport(hostport, host, sizeof(host), &port, false) !=
            MOAT_OK ||
        inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host,
                  &sa.sin_addr) != 1)
        return MOAT_EINVAL;
    sa.sin_port = htons(port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return MOAT_EIO;
    struct timeval tv = {(time_t)(timeout_ms / 1000),
                         (suseconds_t)(timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[64] = {0};
    int rc = MOAT_EIO;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        write(fd, "PING\r\n", 6) == 6) {
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        if (n > 0) {
            *status =
                strncmp(buf, "+PONG", 5) == 0 || strncmp(buf, "-NOAUTH", 7) == 0
                    ? 200
                    : 503;
            rc = MOAT_OK;
        }
    }
    if (rc != MOAT_OK && (errno == EAGAIN || errno == EINPROGRESS))
        rc = MOAT_ETIMEDOUT;
    close(fd);
    return rc;
}

int cli_probe(const char *url, long timeout_ms, long *status)
{
    *status = 0;
    if (strncmp(url, "redis://", 8) == 0)
        return probe_redis(url, timeout_ms, status);
    CURL *c = curl_easy_init();
    if (!c)
        return MOAT_EIO;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    /* No SIGALRM tricks: the supervisor owns its signals. */
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    /* An http_proxy in the environment must not intercept loopback
     * health checks. */
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
    moat_tls_curl(c);
    CURLcode rc = curl_easy_perform(c);
    int ret = MOAT_OK;
    if (rc == CURLE_OPERATION_TIMEDOUT)
        ret = MOAT_ETIMEDOUT;
    else if (rc != CURLE_OK)
        ret = MOAT_EIO;
    else
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(c);
    return ret;
}

bool cli_supervisor_running(const char *lock_path)
{
    int fd = open(lock_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool held = false;
    if (flock(fd, LOCK_SH | LOCK_NB) < 0)
        held = errno == EWOULDBLOCK;
    close(fd); /* also drops our shared lock, if we got it */
    return held;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    return (uint64_t)st.st_size;
}

uint64_t cli_db_size(const char *db)
{
    struct stat st;
    if (!db || stat(db, &st) < 0)
        return 0;
    uint64_t total = 0;
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(db);
        struct dirent *de;
        while (dir && (de = readdir(dir))) {
            char *p = moat_xasprintf("%s/%s", db, de->d_name);
            total += file_size(p);
            free(p);
        }
        if (dir)
            closedir(dir);
        return total;
    }
    /* SQLite in WAL mode keeps recent commits in -wal until a checkpoint. */
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(suffixes); i++) {
        char *p = moat_xasprintf("%s%s", db, suffixes[i]);
        total += file_size(p);
        free(p);
    }
    return total;
}

void cli_human_size(uint64_t bytes, char *out, size_t len)
{
    static const char units[] = "KMGTP";
    if (bytes < 1024) {
        snprintf(out, len, "%uB", (unsigned)bytes);
        return;
    }
    double v = (double)bytes / 1024.0;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < sizeof(units) - 1) {
        v /= 1024.0;
        u++;
    }
    snprintf(out, len, "%.1f%c", v, units[u]);
}

const char *cli_display_path(const char *path, char *out, size_t len)
{
    char cwd[PATH_MAX];
    if (!path || !getcwd(cwd, sizeof(cwd)))
        return path;
    size_t n = strlen(cwd);
    if (strcmp(cwd, "/") == 0 || strncmp(path, cwd, n) != 0)
        return path;
    if (path[n] == '\0')
        return ".";
    if (path[n] != '/')
        return path;
    snprintf(out, len, "%s", path + n + 1);
    return out;
}

off_t cli_tail_offset(int fd, unsigned n)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    off_t end = st.st_size;
    if (n == 0 || end == 0)
        return end;
    char buf[TAIL_CHUNK];
    off_t pos = end;
    unsigned seen = 0;
    bool last_byte = true;
    while (pos > 0) {
        size_t want = pos > (off_t)sizeof(buf) ? sizeof(buf) : (size_t)pos;
        pos -= (off_t)want;
        ssize_t got = pread(fd, buf, want, pos);
        if (got != (ssize_t)want)
            return 0;
        for (size_t i = want; i-- > 0;) {
            /* The newline that ends the file ends the last line; it does
             * not start another one. */
            if (last_byte) {
                last_byte = false;
                if (buf[i] == '\n')
                    continue;
            }
            if (buf[i] == '\n' && ++seen == n)
                return pos + (off_t)i + 1;
        }
    }
    return 0;
}

void cli_print_tail(FILE *out, const char *path, unsigned n, const char *indent)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t off = cli_tail_offset(fd, n);
    char buf[TAIL_CHUNK];
    bool line_start = true;
    ssize_t got;
    while ((got = pread(fd, buf, sizeof(buf), off)) > 0) {
        off += got;
        for (ssize_t i = 0; i < got; i++) {
            if (line_start)
                fputs(indent, out);
            fputc(buf[i], out);
            line_start = buf[i] == '\n';
        }
    }
    if (!line_start)
        fputc('\n', out);
    close(fd);
}

char *cli_operator_header(const struct deploy *d, const char *audience)
{
    struct cli_secrets *sec = NULL;
    char *line = NULL, *tok = NULL;
    if (cli_secrets_load(&sec, d->var_dir) != MOAT_OK)
        return NULL;
    const char *b64 = cli_secret_service_key(sec, CLI_OPERATOR);
    uint8_t key[64];
    size_t keylen = 0;
    /* A key generated just now was never handed to any service. */
    if (cli_secrets_dirty(sec)) {
        cli_error("deployment %s has no operator key yet: run moat up first",
                  d->name);
        goto out;
    }
    /* Services know only the operator's pair key towards them. */
    char *pair = NULL;
    if (moat_auth_pair_key(b64, audience, &pair) != MOAT_OK)
        goto out;
    int drc = moat_base64_decode(pair, key, sizeof(key), &keylen);
    sodium_memzero(pair, strlen(pair));
    free(pair);
    if (drc != MOAT_OK)
        goto out;
    struct moat_jwt_claims c = {0};
    int64_t now = (int64_t)time(NULL);
    snprintf(c.iss, sizeof(c.iss), "%s", CLI_OPERATOR);
    snprintf(c.sub, sizeof(c.sub), "%s", CLI_OPERATOR);
    snprintf(c.aud, sizeof(c.aud), "%s", audience);
    /* The operator acts as an administrator: whoever can read
     * secrets.json could become one anyway. */
    snprintf(c.usr, sizeof(c.usr), "%s", CLI_OPERATOR);
    snprintf(c.role, sizeof(c.role), "admin");
    c.iat = now;
    c.exp = now + MOAT_SERVICE_TOKEN_TTL_S;
    if (moat_jwt_sign(key, keylen, &c, &tok) == MOAT_OK)
        line = moat_xasprintf("%s: %s", MOAT_SERVICE_TOKEN_HEADER, tok);
    sodium_memzero(key, sizeof(key));
out:
    free(tok);
    cli_secrets_free(sec);
    return line;
}

static size_t collect_body(char *p, size_t size, size_t n, void *arg)
{
    struct moat_buf *b = arg;
    if (b->len + size * n > CLI_CALL_MAX_BODY)
        return 0; /* curl aborts the transfer */
    moat_buf_add(b, p, size * n);
    return size * n;
}

int cli_http(const char *method, const char *url, const char *header,
             const char *json_body, long timeout_ms, long *status, char **body)
{
    *status = 0;
    *body = NULL;
    struct curl_slist *hdrs = NULL;
    if (header)
        hdrs = curl_slist_append(hdrs, header);
    if (json_body)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    struct moat_buf out = MOAT_BUF_INIT;
    CURL *c = curl_easy_init();
    int ret = MOAT_EIO;
    if (!c)
        goto out;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    if (json_body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, json_body);
    else if (strcmp(method, "POST") == 0)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    moat_tls_curl(c);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        ret = MOAT_ETIMEDOUT;
    } else if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
        ret = MOAT_OK;
    }
out:
    if (c)
        curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    *body = moat_buf_detach(&out, NULL);
    return ret;
}

int cli_operator_call(const struct deploy *d, const struct deploy_service *svc,
                      const char *method, const char *path,
                      const char *json_body, long timeout_ms, long *status,
                      char **body)
{
    *status = 0;
    *body = NULL;
    char *auth = cli_operator_header(d, svc->name);
    if (!auth)
        return MOAT_EINVAL;
    char *base = deploy_base_url(svc);
    char *url = moat_xasprintf("%s%s", base, path);
    int ret = cli_http(method, url, auth, json_body, timeout_ms, status, body);
    if (ret != MOAT_OK)
        cli_error("%s %s: %s", method, url,
                  ret == MOAT_ETIMEDOUT ? "timed out" : "no answer");
    sodium_memzero(auth, strlen(auth));
    free(auth);
    free(base);
    free(url);
    return ret;
}
