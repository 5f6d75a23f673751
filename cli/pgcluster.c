/*
 * pgcluster.c - the private PostgreSQL cluster of `moat up` (pgcluster.h):
 * initdb, its configuration, and one role and database per service.
 *
 * initdb and postgres are programs (DEPLOY_PG_BINDIR); the SQL goes
 * through libpq as the superuser over the cluster's Unix socket, which
 * lives in a directory only that user (and root) can enter.
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat/buf.h"
#include "moat/tls.h"

#include "cli.h"
#include "pgcluster.h"

#define PG_SYSTEM_USER     "postgres" /* Debian's package creates it */
#define PG_PASSWORD_BYTES  24         /* hex: 48 characters */
#define PG_CONNECT_TIMEOUT "10"

char *cli_pg_ident(const char *service)
{
    char *id = moat_xasprintf("moat_%s", service);
    for (char *c = id; *c; c++)
        if (*c == '-')
            *c = '_';
    return id;
}

char *cli_pg_passfile(const struct deploy *d, const char *who)
{
    return moat_xasprintf("%s/secrets/%s.pgpass", d->var_dir, who);
}

static char *run_dir(const struct deploy *d)
{
    return moat_xasprintf("%s/run", d->pg->data_dir);
}

static char *pgdata(const struct deploy *d)
{
    return moat_xasprintf("%s/data", d->pg->data_dir);
}

/* " key=value", the value quoted when it needs to be (libpq rules). */
static void dsn_add(struct moat_buf *b, const char *key, const char *value)
{
    moat_buf_printf(b, "%s%s=", b->len ? " " : "", key);
    if (*value && !strpbrk(value, " \t\n\r'\\")) {
        moat_buf_addstr(b, value);
        return;
    }
    moat_buf_addch(b, '\'');
    for (const char *c = value; *c; c++) {
        if (*c == '\'' || *c == '\\')
            moat_buf_addch(b, '\\');
        moat_buf_addch(b, *c);
    }
    moat_buf_addch(b, '\'');
}

char *cli_pg_dsn(const struct deploy *d, const struct deploy_service *svc)
{
    if (svc->engine != DEPLOY_ENGINE_POSTGRES)
        return NULL;
    if (svc->dsn || !d->pg)
        return svc->dsn ? moat_xstrdup(svc->dsn) : NULL;
    const char *host = deploy_connect_host(d->pg);
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)d->pg->port);
    char *id = cli_pg_ident(svc->name);
    char *pass = cli_pg_passfile(d, svc->name);
    struct moat_buf b = MOAT_BUF_INIT;
    dsn_add(&b, "host", host);
    dsn_add(&b, "port", port);
    dsn_add(&b, "dbname", id);
    dsn_add(&b, "user", id);
    dsn_add(&b, "passfile", pass);
    if (d->tls) {
        /* The certificate names 127.0.0.1 and localhost (moat/tls.h). */
        bool named =
            strcmp(host, "127.0.0.1") == 0 || strcmp(host, "localhost") == 0;
        char *ca = cli_cert_path(d, "ca", "crt");
        dsn_add(&b, "sslmode", named ? "verify-full" : "verify-ca");
        dsn_add(&b, "sslrootcert", ca);
        free(ca);
    } else {
        dsn_add(&b, "sslmode", "disable");
    }
    dsn_add(&b, "connect_timeout", "5");
    free(id);
    free(pass);
    return moat_buf_detach(&b, NULL);
}

/* ---- files ---- */

/* The password of a passfile's first line (its last field), or NULL. */
static char *passfile_password(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char line[512];
    char *pw = NULL;
    if (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *colon = strrchr(line, ':');
        if (colon && strlen(colon + 1) > 0)
            pw = moat_xstrdup(colon + 1);
    }
    sodium_memzero(line, sizeof(line));
    fclose(f);
    return pw;
}

/*
 * The password in passfile path, made (random hex) when the file has
 * none; the file is (re)written as "host:port:db:user:password", 0600.
 */
static char *ensure_passfile(const char *path, const char *host,
                             const char *port, const char *db, const char *user)
{
    char *pw = passfile_password(path);
    if (!pw) {
        unsigned char raw[PG_PASSWORD_BYTES];
        moat_random_bytes(raw, sizeof(raw));
        pw = moat_xcalloc(1, 2 * sizeof(raw) + 1);
        sodium_bin2hex(pw, 2 * sizeof(raw) + 1, raw, sizeof(raw));
        sodium_memzero(raw, sizeof(raw));
    }
    char *text = moat_xasprintf("%s:%s:%s:%s:%s\n", host, port, db, user, pw);
    int rc = moat_tls_write_pem(path, text);
    sodium_memzero(text, strlen(text));
    free(text);
    if (rc != MOAT_OK) {
        cli_error("postgres: cannot write %s: %s", path, strerror(errno));
        sodium_memzero(pw, strlen(pw));
        free(pw);
        return NULL;
    }
    return pw;
}

/* Write text to path (atomically), mode 0600, owned by uid:gid. */
static int write_owned(const char *path, const char *text, uid_t uid, gid_t gid)
{
    char *tmp = moat_xasprintf("%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen(text);
    bool ok = fd >= 0 && write(fd, text, len) == (ssize_t)len &&
              (uid == 0 || fchown(fd, uid, gid) == 0) && fsync(fd) == 0;
    if (fd >= 0 && close(fd) < 0)
        ok = false;
    ok = ok && rename(tmp, path) == 0;
    if (!ok) {
        cli_error("postgres: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return ok ? MOAT_OK : MOAT_EIO;
}

/* A copy of file src at dst for the server (0600, its owner's). */
static int copy_owned(const char *src, const char *dst, uid_t uid, gid_t gid)
{
    struct moat_buf b = MOAT_BUF_INIT;
    FILE *f = fopen(src, "re");
    char chunk[4096];
    size_t n;
    while (f && (n = fread(chunk, 1, sizeof(chunk), f)) > 0 &&
           b.len < (1u << 20))
        moat_buf_add(&b, chunk, n);
    int rc = MOAT_EIO;
    if (!f)
        cli_error("postgres: cannot read %s: %s", src, strerror(errno));
    else
        rc = write_owned(dst, moat_buf_str(&b), uid, gid);
    if (f)
        fclose(f);
    sodium_memzero(chunk, sizeof(chunk));
    if (b.data)
        sodium_memzero(b.data, b.len);
    moat_buf_release(&b);
    return rc;
}

/* mkdir (0700, owned by uid:gid); an existing one is fixed up. */
static int own_dir(const char *path, uid_t uid, gid_t gid)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        cli_error("postgres: cannot create %s: %s", path, strerror(errno));
        return MOAT_EIO;
    }
    if (chmod(path, 0700) < 0 || (uid != 0 && chown(path, uid, gid) < 0)) {
        cli_error("postgres: cannot make %s private to the server: %s", path,
                  strerror(errno));
        return MOAT_EIO;
    }
    return MOAT_OK;
}

/* ---- programs run as the postgres user ---- */

/*
 * Fork a child that enters dir, becomes uid:gid (when not 0), writes to
 * log_fd and either execs argv or, with argv NULL, exits 0 when it can
 * enter and write dir (a reachability check). Returns its exit status as
 * waitpid gives it, or -1.
 */
static int run_as(uid_t uid, gid_t gid, const char *dir, int log_fd,
                  char *const argv[])
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (uid != 0 &&
            (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0))
            _exit(126);
        if (!argv)
            _exit(access(dir, R_OK | W_OK | X_OK) == 0 ? 0 : 1);
        if (chdir(dir) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
            dup2(log_fd, STDERR_FILENO) < 0)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0)
        if (errno != EINTR)
            return -1;
    return wstatus;
}

/* As root: the postgres user's ids, and var_dir searchable by it. */
static int system_user(const struct deploy *d, uid_t *uid, gid_t *gid)
{
    *uid = 0;
    *gid = 0;
    if (geteuid() != 0)
        return MOAT_OK;
    struct passwd *pw = getpwnam(PG_SYSTEM_USER);
    if (!pw || pw->pw_uid == 0) {
        cli_error("postgres: running as root, and PostgreSQL refuses to run "
                  "as root: there is no \"%s\" system user to run it as "
                  "(install postgresql-15, scripts/deps.sh)",
                  PG_SYSTEM_USER);
        return MOAT_EINVAL;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    /* Search only (no listing): everything in var_dir is private by its
     * own mode anyway. */
    struct stat st;
    if (stat(d->var_dir, &st) == 0 && !(st.st_mode & S_IXOTH) &&
        chmod(d->var_dir, (st.st_mode & 07777) | S_IXOTH) < 0) {
        cli_error("postgres: cannot let the %s user search %s: %s",
                  PG_SYSTEM_USER, d->var_dir, strerror(errno));
        return MOAT_EIO;
    }
    return MOAT_OK;
}

static int initdb(const struct deploy *d, const char *data, const char *pw,
                  uid_t uid, gid_t gid, int log_fd)
{
    char *pwfile = moat_xasprintf("%s/initdb.pw", d->pg->data_dir);
    int rc = write_owned(pwfile, pw, uid, gid);
    if (rc != MOAT_OK) {
        free(pwfile);
        return rc;
    }
    char *prog = moat_xstrdup(DEPLOY_PG_BINDIR "/initdb");
    char *a_data = moat_xasprintf("--pgdata=%s", data);
    char *a_pw = moat_xasprintf("--pwfile=%s", pwfile);
    char a_user[] = "--username=" CLI_PG_SUPERUSER;
    char a_auth[] = "--auth=scram-sha-256", a_enc[] = "--encoding=UTF8",
         a_loc[] = "--locale=C", a_quiet[] = "--no-instructions";
    char *argv[] = {prog,  a_data, a_pw,    a_user, a_auth,
                    a_enc, a_loc,  a_quiet, NULL};
    dprintf(log_fd, "moat: initdb of %s\n", data);
    int ws = run_as(uid, gid, d->pg->data_dir, log_fd, argv);
    unlink(pwfile);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
        char *log = cli_log_path(d, "postgres");
        cli_error("postgres: initdb of %s failed (see %s)", data, log);
        free(log);
        rc = MOAT_EIO;
    }
    free(prog);
    free(a_data);
    free(a_pw);
    free(pwfile);
    return rc;
}

/* ---- configuration ---- */

static int write_conf(const struct deploy *d, const char *data, uid_t uid,
                      gid_t gid)
{
    char *run = run_dir(d);
    char *path = moat_xasprintf("%s/postgresql.conf", data);
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_printf(
        &b,
        "# written by moat up for deployment \"%s\"; edits are overwritten\n"
        "listen_addresses = '%s'\n"
        "port = %u\n"
        "max_connections = %u\n"
        "unix_socket_directories = '%s'\n"
        "unix_socket_permissions = 0700\n"
        "password_encryption = 'scram-sha-256'\n"
        "ssl = %s\n",
        d->name, d->pg->host, (unsigned)d->pg->port, d->pg_max_connections, run,
        d->tls ? "on" : "off");
    if (d->tls)
        moat_buf_addstr(&b, "ssl_cert_file = 'server.crt'\n"
                            "ssl_key_file = 'server.key'\n"
                            "ssl_min_protocol_version = 'TLSv1.2'\n");
    moat_buf_printf(&b,
                    "fsync = on\n"
                    "synchronous_commit = on\n"
                    "full_page_writes = on\n"
                    "shared_buffers = %uMB\n"
                    "dynamic_shared_memory_type = posix\n"
                    "logging_collector = off\n"
                    "log_destination = 'stderr'\n"
                    "log_line_prefix = '%%m [%%p] %%q%%u@%%d '\n"
                    "log_timezone = 'UTC'\n"
                    "timezone = 'UTC'\n"
                    "datestyle = 'iso, mdy'\n"
                    "lc_messages = 'C'\n",
                    d->pg_shared_buffers_mb);
    int rc = write_owned(path, moat_buf_str(&b), uid, gid);
    moat_buf_release(&b);
    free(path);

    /* The superuser over the socket; each role to its own database over
     * loopback (TLS only, with "tls"); nothing else. */
    path = moat_xasprintf("%s/pg_hba.conf", data);
    moat_buf_printf(&b,
                    "# written by moat up for deployment \"%s\"; edits are "
                    "overwritten\n"
                    "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
                    "local all %s scram-sha-256\n",
                    d->name, CLI_PG_SUPERUSER);
    for (size_t i = 0; i < d->nservices; i++) {
        const struct deploy_service *s = &d->services[i];
        if (s->engine != DEPLOY_ENGINE_POSTGRES || s->dsn)
            continue;
        char *id = cli_pg_ident(s->name);
        moat_buf_printf(&b, "%s %s %s 127.0.0.1/32 scram-sha-256\n",
                        d->tls ? "hostssl" : "host", id, id);
        free(id);
    }
    if (rc == MOAT_OK)
        rc = write_owned(path, moat_buf_str(&b), uid, gid);
    moat_buf_release(&b);
    free(path);
    free(run);
    return rc;
}

int cli_pg_prepare(const struct deploy *d, uid_t *uid, gid_t *gid)
{
    int rc = system_user(d, uid, gid);
    if (rc != MOAT_OK)
        return rc;
    char *secrets = moat_xasprintf("%s/secrets", d->var_dir);
    char *data = pgdata(d);
    char *run = run_dir(d);
    char *super_pass = cli_pg_passfile(d, "postgres");
    char *pw = NULL;
    int log_fd = -1;
    struct sockaddr_un addr;
    if (strlen(run) + sizeof("/.s.PGSQL.65535") > sizeof(addr.sun_path)) {
        cli_error("postgres: the socket directory %s is too long for a Unix "
                  "socket path; use a shorter var_dir",
                  run);
        rc = MOAT_EINVAL;
        goto out;
    }
    if ((mkdir(secrets, 0700) < 0 && errno != EEXIST) ||
        chmod(secrets, 0700) < 0) {
        cli_error("postgres: cannot create %s: %s", secrets, strerror(errno));
        rc = MOAT_EIO;
        goto out;
    }
    pw = ensure_passfile(super_pass, "*", "*", "*", CLI_PG_SUPERUSER);
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)d->pg->port);
    for (size_t i = 0; pw && i < d->nservices; i++) {
        const struct deploy_service *s = &d->services[i];
        if (s->engine != DEPLOY_ENGINE_POSTGRES || s->dsn)
            continue;
        char *path = cli_pg_passfile(d, s->name);
        char *id = cli_pg_ident(s->name);
        char *spw =
            ensure_passfile(path, deploy_connect_host(d->pg), port, id, id);
        if (!spw)
            rc = MOAT_EIO;
        else
            sodium_memzero(spw, strlen(spw));
        free(spw);
        free(id);
        free(path);
    }
    if (!pw || rc != MOAT_OK) {
        rc = MOAT_EIO;
        goto out;
    }
    if ((rc = own_dir(d->pg->data_dir, *uid, *gid)) != MOAT_OK ||
        (rc = own_dir(run, *uid, *gid)) != MOAT_OK)
        goto out;
    if (*uid != 0 && run_as(*uid, *gid, d->pg->data_dir, -1, NULL) != 0) {
        cli_error("postgres: the %s system user cannot reach %s (a directory "
                  "above it is not searchable by others: chmod o+x it, or "
                  "put var_dir elsewhere)",
                  PG_SYSTEM_USER, d->pg->data_dir);
        rc = MOAT_EIO;
        goto out;
    }
    char *log = cli_log_path(d, "postgres");
    log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    free(log);
    char *version = moat_xasprintf("%s/PG_VERSION", data);
    bool fresh = access(version, F_OK) < 0;
    free(version);
    if (fresh && (rc = initdb(d, data, pw, *uid, *gid, log_fd)) != MOAT_OK)
        goto out;
    if ((rc = own_dir(data, *uid, *gid)) != MOAT_OK)
        goto out;
    if (d->tls) {
        char *crt = cli_cert_path(d, "postgres", "crt");
        char *key = cli_cert_path(d, "postgres", "key");
        char *dcrt = moat_xasprintf("%s/server.crt", data);
        char *dkey = moat_xasprintf("%s/server.key", data);
        rc = copy_owned(crt, dcrt, *uid, *gid);
        if (rc == MOAT_OK)
            rc = copy_owned(key, dkey, *uid, *gid);
        free(crt);
        free(key);
        free(dcrt);
        free(dkey);
        if (rc != MOAT_OK)
            goto out;
    }
    rc = write_conf(d, data, *uid, *gid);

out:
    if (log_fd >= 0)
        close(log_fd);
    if (pw)
        sodium_memzero(pw, strlen(pw));
    free(pw);
    free(super_pass);
    free(run);
    free(data);
    free(secrets);
    return rc;
}

/* ---- provisioning over libpq ---- */

static PGconn *super_connect(const struct deploy *d, const char *dbname)
{
    char *run = run_dir(d);
    char *pass = cli_pg_passfile(d, "postgres");
    char *pw = passfile_password(pass);
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)d->pg->port);
    const char *keys[] = {
        "host", "port", "dbname", "user", "password", "connect_timeout", NULL};
    const char *vals[] = {
        run, port, dbname, CLI_PG_SUPERUSER, pw ? pw : "", PG_CONNECT_TIMEOUT,
        NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 0);
    if (PQstatus(c) != CONNECTION_OK) {
        cli_error("postgres: cannot connect as %s to %s: %s", CLI_PG_SUPERUSER,
                  dbname, PQerrorMessage(c));
        PQfinish(c);
        c = NULL;
    }
    if (pw)
        sodium_memzero(pw, strlen(pw));
    free(pw);
    free(pass);
    free(run);
    return c;
}

static bool sql_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        cli_error("postgres: %s", PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

/* Whether query (one $1 parameter) returns a row. */
static bool has_row(PGconn *c, const char *query, const char *param)
{
    PGresult *r = PQexecParams(c, query, 1, NULL, &param, NULL, NULL, 0);
    bool yes = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
    PQclear(r);
    return yes;
}

/* Role and database of one service on the superuser's connection c. */
static bool provision_service(const struct deploy *d, PGconn *c,
                              const struct deploy_service *s)
{
    char *id = cli_pg_ident(s->name);
    char *pass = cli_pg_passfile(d, s->name);
    char *pw = passfile_password(pass);
    char *qid = PQescapeIdentifier(c, id, strlen(id));
    /* Only the SCRAM verifier goes to the server, never the password. */
    char *verifier =
        pw ? PQencryptPasswordConn(c, pw, id, "scram-sha-256") : NULL;
    char *qpw =
        verifier ? PQescapeLiteral(c, verifier, strlen(verifier)) : NULL;
    bool ok = qid && qpw;
    if (!ok)
        cli_error("postgres: cannot prepare role %s: %s", id,
                  pw ? PQerrorMessage(c) : "no password in its passfile");
    struct moat_buf q = MOAT_BUF_INIT;
    if (ok && !has_row(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", id)) {
        moat_buf_printf(&q, "CREATE ROLE %s LOGIN", qid);
        ok = sql_ok(c, moat_buf_str(&q));
        moat_buf_reset(&q);
    }
    if (ok) {
        moat_buf_printf(&q,
                        "ALTER ROLE %s LOGIN NOSUPERUSER NOCREATEDB "
                        "NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %s",
                        qid, qpw);
        ok = sql_ok(c, moat_buf_str(&q));
        moat_buf_reset(&q);
    }
    if (ok && !has_row(c, "SELECT 1 FROM pg_database WHERE datname = $1", id)) {
        moat_buf_printf(&q,
                        "CREATE DATABASE %s OWNER %s ENCODING 'UTF8' "
                        "TEMPLATE template0",
                        qid, qid);
        ok = sql_ok(c, moat_buf_str(&q));
        moat_buf_reset(&q);
    }
    if (ok) {
        moat_buf_printf(&q,
                        "ALTER DATABASE %s OWNER TO %s; "
                        "REVOKE ALL ON DATABASE %s FROM PUBLIC",
                        qid, qid, qid);
        ok = sql_ok(c, moat_buf_str(&q));
        moat_buf_reset(&q);
    }
    /* Inside it: the role owns the public schema, PUBLIC has nothing. */
    PGconn *in = ok ? super_connect(d, id) : NULL;
    if (ok && !in)
        ok = false;
    if (ok) {
        moat_buf_printf(&q,
                        "ALTER SCHEMA public OWNER TO %s; "
                        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
                        qid);
        ok = sql_ok(in, moat_buf_str(&q));
    }
    PQfinish(in);
    moat_buf_release(&q);
    if (qpw)
        PQfreemem(qpw);
    if (verifier)
        PQfreemem(verifier);
    if (qid)
        PQfreemem(qid);
    if (pw)
        sodium_memzero(pw, strlen(pw));
    free(pw);
    free(pass);
    free(id);
    return ok;
}

int cli_pg_provision(const struct deploy *d)
{
    PGconn *c = super_connect(d, "postgres");
    if (!c)
        return MOAT_EIO;
    /* No role but the superuser may enter the cluster's own databases. */
    bool ok = sql_ok(c, "REVOKE ALL ON DATABASE postgres FROM PUBLIC; "
                        "REVOKE ALL ON DATABASE template1 FROM PUBLIC");
    for (size_t i = 0; ok && i < d->nservices; i++) {
        const struct deploy_service *s = &d->services[i];
        if (s->engine == DEPLOY_ENGINE_POSTGRES && !s->dsn)
            ok = provision_service(d, c, s);
    }
    PQfinish(c);
    return ok ? MOAT_OK : MOAT_EIO;
}

enum cli_pg_health cli_pg_ping(const struct deploy *d)
{
    struct moat_buf b = MOAT_BUF_INIT;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)d->pg->port);
    char *run = run_dir(d);
    bool local = access(run, X_OK) == 0;
    dsn_add(&b, "host", local ? run : deploy_connect_host(d->pg));
    dsn_add(&b, "port", port);
    dsn_add(&b, "dbname", "postgres");
    dsn_add(&b, "user", CLI_PG_SUPERUSER);
    dsn_add(&b, "connect_timeout", "2");
    PGPing p = PQping(moat_buf_str(&b));
    moat_buf_release(&b);
    free(run);
    return p == PQPING_OK       ? CLI_PG_READY
           : p == PQPING_REJECT ? CLI_PG_STARTING
                                : CLI_PG_DOWN;
}
