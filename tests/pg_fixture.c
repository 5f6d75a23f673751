/* pg_fixture.c - a private PostgreSQL server for tests (see pg_fixture.h). */
#include "pg_fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The socket's name is .s.PGSQL.<port> inside the private directory: any
 * port number does, nothing listens on TCP. */
#define PG_PORT         "5432"
#define START_TIMEOUT_S 60
#define MAX_DSNS        256

static struct {
    bool started, atexit_set;
    char bindir[512];
    char dir[256]; /* the temporary directory; socket directory too */
    pid_t pid;     /* the postmaster, > 0 while running */
    uid_t uid;     /* to run the server as (when we are root) */
    gid_t gid;
    char *dsns[MAX_DSNS]; /* handed out by h_pg_dsn() */
    size_t ndsns;
} pg;

static bool file_executable(const char *path)
{
    return access(path, X_OK) == 0;
}

static bool find_bindir(void)
{
    const char *env = getenv("MOAT_PG_BINDIR");
    char path[600];

    if (pg.bindir[0])
        return true;
    if (env && *env) {
        snprintf(pg.bindir, sizeof(pg.bindir), "%s", env);
    } else {
        snprintf(pg.bindir, sizeof(pg.bindir), "/usr/lib/postgresql/15/bin");
        snprintf(path, sizeof(path), "%s/postgres", pg.bindir);
        if (!file_executable(path)) {
            FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
            pg.bindir[0] = '\0';
            if (p) {
                if (fgets(pg.bindir, sizeof(pg.bindir), p))
                    pg.bindir[strcspn(pg.bindir, "\n")] = '\0';
                pclose(p);
            }
        }
    }
    snprintf(path, sizeof(path), "%s/postgres", pg.bindir);
    bool ok = pg.bindir[0] && file_executable(path);
    snprintf(path, sizeof(path), "%s/initdb", pg.bindir);
    ok = ok && file_executable(path);
    if (!ok)
        pg.bindir[0] = '\0';
    return ok;
}

bool h_pg_available(void)
{
    static bool told;
    if (find_bindir())
        return true;
    if (!told) {
        fprintf(stderr, "pg_fixture: PostgreSQL server binaries not found "
                        "(install postgresql-15 with scripts/deps.sh, or set "
                        "MOAT_PG_BINDIR): PostgreSQL tests skipped\n");
        told = true;
    }
    return false;
}

bool h_pg_engine(void)
{
    const char *e = getenv("MOAT_TEST_ENGINE");
    return e && strcmp(e, "postgres") == 0;
}

static void die(const char *what)
{
    fprintf(stderr, "pg_fixture: %s\n", what);
    if (pg.dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "tail -n 30 %s/postgres.log %s/initdb.log",
                 pg.dir, pg.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "pg_fixture: (no server log)\n");
    }
    exit(1);
}

/* In a child: become the server's user when we are root, send output to
 * dir/<log>, die with the test process. Never returns on failure. */
static void child_setup(const char *log)
{
    char path[400];
    if (geteuid() == 0) {
        if (setgroups(0, NULL) != 0 || setgid(pg.gid) != 0 ||
            setuid(pg.uid) != 0)
            _exit(120);
    }
    /* Set after the credential change, which clears it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    snprintf(path, sizeof(path), "%s/%s", pg.dir, log);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || null < 0)
        _exit(121);
    dup2(null, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
}

static pid_t spawn(const char *log, const char *prog, const char *const argv[])
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", pg.bindir, prog);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die("fork failed");
    if (pid == 0) {
        child_setup(log);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static void start_server(void)
{
    char data[300];
    snprintf(data, sizeof(data), "%s/data", pg.dir);
    const char *argv[] = {"postgres",
                          "-D",
                          data,
                          "-k",
                          pg.dir,
                          "-p",
                          PG_PORT,
                          "-c",
                          "listen_addresses=",
                          "-c",
                          "fsync=off",
                          "-c",
                          "full_page_writes=off",
                          "-c",
                          "max_connections=200",
                          "-c",
                          "shared_buffers=16MB",
                          "-c",
                          "logging_collector=off",
                          NULL};
    pg.pid = spawn("postgres.log", "postgres", argv);

    char dsn[400];
    snprintf(dsn, sizeof(dsn),
             "host=%s port=" PG_PORT " dbname=postgres user=postgres "
             "connect_timeout=2",
             pg.dir);
    time_t deadline = time(NULL) + START_TIMEOUT_S;
    struct timespec pause = {0, 20 * 1000 * 1000};
    while (PQping(dsn) != PQPING_OK) {
        int status;
        if (waitpid(pg.pid, &status, WNOHANG) == pg.pid) {
            pg.pid = 0;
            die("postgres exited while starting");
        }
        if (time(NULL) > deadline)
            die("postgres did not start in time");
        nanosleep(&pause, NULL); /* paces the polls */
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void h_pg_down(void)
{
    if (pg.pid <= 0)
        return;
    /* SIGQUIT: immediate shutdown, every backend exits at once. */
    kill(pg.pid, SIGQUIT);
    waitpid(pg.pid, NULL, 0);
    pg.pid = 0;
}

void h_pg_up(void)
{
    if (pg.started && pg.pid <= 0)
        start_server();
}

void h_pg_stop(void)
{
    if (!pg.started)
        return;
    if (pg.pid > 0) {
        /* SIGINT: fast shutdown (fsync is off, so it is quick). */
        kill(pg.pid, SIGINT);
        waitpid(pg.pid, NULL, 0);
        pg.pid = 0;
    }
    const char *keep = getenv("MOAT_TEST_KEEP");
    if (keep && strcmp(keep, "1") == 0)
        fprintf(stderr, "pg_fixture: kept %s\n", pg.dir);
    else
        nftw(pg.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (size_t i = 0; i < pg.ndsns; i++)
        free(pg.dsns[i]);
    pg.ndsns = 0;
    pg.started = false;
    pg.dir[0] = '\0';
}

static void start_cluster(void)
{
    if (!h_pg_available())
        die("PostgreSQL is not installed");
    /* A short path: the socket's full name must fit in sun_path. As root,
     * /tmp (not $TMPDIR) so that the postgres user can reach it. */
    const char *tmp = geteuid() == 0 ? NULL : getenv("TMPDIR");
    snprintf(pg.dir, sizeof(pg.dir), "%s/moat-pg-XXXXXX",
             tmp && *tmp && strlen(tmp) < 60 ? tmp : "/tmp");
    if (!mkdtemp(pg.dir))
        die("mkdtemp failed");
    /* Services drop every capability once sandboxed (lib/sandbox.c): a
     * root process without CAP_DAC_OVERRIDE must still reach the socket
     * to reconnect. The cluster's files stay in data/, mode 0700. */
    if (chmod(pg.dir, 0755) != 0)
        die("cannot open the directory to the socket's clients");
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");
        if (!pw)
            die("running as root and there is no postgres user to run the "
                "server as");
        pg.uid = pw->pw_uid;
        pg.gid = pw->pw_gid;
        if (chown(pg.dir, pg.uid, pg.gid) != 0)
            die("cannot hand the directory to the postgres user");
    }
    pg.started = true;
    if (!pg.atexit_set) {
        atexit(h_pg_stop);
        pg.atexit_set = true;
    }

    char data[300];
    snprintf(data, sizeof(data), "%s/data", pg.dir);
    const char *argv[] = {"initdb",
                          "-D",
                          data,
                          "-U",
                          "postgres",
                          "--auth=trust",
                          "-E",
                          "UTF8",
                          "--locale=C",
                          "--no-sync",
                          "--no-instructions",
                          NULL};
    int status;
    pid_t pid = spawn("initdb.log", "initdb", argv);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        die("initdb failed");
    start_server();
}

static bool valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 48)
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void run_admin(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "pg_fixture: %s: %s", sql, PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        die("cannot create the test database");
    }
    PQclear(r);
}

const char *h_pg_dsn(const char *name)
{
    char sql[200], dsn[400];

    if (!valid_name(name))
        die("h_pg_dsn: database names are [a-z0-9_]{1,48}");
    if (!pg.started)
        start_cluster();
    if (pg.ndsns == MAX_DSNS)
        die("h_pg_dsn: too many databases in one test process");

    snprintf(dsn, sizeof(dsn),
             "host=%s port=" PG_PORT " dbname=postgres user=postgres", pg.dir);
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pg_fixture: %s", PQerrorMessage(c));
        PQfinish(c);
        die("cannot connect to the test cluster");
    }
    PQsetNoticeProcessor(c, quiet, NULL); /* "does not exist, skipping" */
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    run_admin(c, sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    run_admin(c, sql);
    PQfinish(c);

    snprintf(dsn, sizeof(dsn),
             "host=%s port=" PG_PORT " dbname=%s user=postgres", pg.dir, name);
    pg.dsns[pg.ndsns] = strdup(dsn);
    if (!pg.dsns[pg.ndsns])
        die("out of memory");
    return pg.dsns[pg.ndsns++];
}
