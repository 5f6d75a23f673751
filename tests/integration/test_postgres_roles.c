/*
 * Integration test of the private PostgreSQL cluster of `moat up`
 * (cli/pgcluster.h): a deployment with a "postgres" block, "tls": true and
 * three services with "engine": "postgres", under the real supervisor
 * (which, run as root as here and in CI, runs initdb and postgres as the
 * postgres system user).
 *
 * The services are moat-catalog under three names: what is under test is
 * what moat up makes for them (roles, databases, pg_hba.conf, passfiles,
 * MOAT_DB_DSN), checked from here with libpq:
 *   - each service's DSN connects to its own database, as its own role,
 *     over TLS with the server certificate verified;
 *   - for every ordered pair (a, b), a != b: a's role with a's password
 *     cannot connect to b's database (pg_hba.conf), and even on a
 *     connection to b's database (the superuser's, SET ROLE a) a cannot
 *     read b's table, create one there, nor holds CONNECT on it;
 *   - a plain (non-TLS) connection is refused; the passfiles are 0600;
 *   - the postmaster killed with SIGKILL is restarted by the supervisor
 *     (moat status shows it), and the data committed before is there;
 *   - moat down stops the services first, then postgres with SIGINT;
 *   - a second moat up reuses the cluster and the passwords.
 */
#include "moat/common.h"

#include <jansson.h>
#include <libpq-fe.h>
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

#define NSVC 3
static const char *const names[NSVC] = {"alpha", "beta", "gamma-one"};
static const char *const idents[NSVC] = {"moat_alpha", "moat_beta",
                                         "moat_gamma_one"};

static char *dir;
static char file[512];
static pid_t up_pid;

static pid_t start_up(void)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        const char *log = h_fmt("%s/up.log", dir);
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr))
            _exit(126);
        execl(MOAT_BIN_DIR "/moat", "moat", "up", "-f", file, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static json_t *status_json(void)
{
    int st = 0;
    char *out = h_run_capture(
        h_fmt("%s/moat status --json --file %s", MOAT_BIN_DIR, file), &st);
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    return j ? j : json_object();
}

static json_t *entry(json_t *st, const char *name)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            return s;
    }
    return NULL;
}

static bool deployment_ready(void)
{
    json_t *st = status_json();
    bool ok = json_is_true(json_object_get(st, "ready"));
    json_decref(st);
    return ok;
}

/* The postgres entry of moat status: pid, restarts, health "ready". */
static bool postgres_back(json_int_t old_pid)
{
    json_t *st = status_json();
    json_t *pg = entry(st, "postgres");
    json_int_t pid = json_integer_value(json_object_get(pg, "pid"));
    bool ok =
        pg && pid > 0 && pid != old_pid &&
        json_integer_value(json_object_get(pg, "restarts")) >= 1 &&
        strcmp(json_string_value(json_object_get(pg, "health")), "ready") == 0;
    json_decref(st);
    return ok;
}

static char *dsns[NSVC];
static char port[8]; /* the cluster's */

static void read_dsns(void)
{
    json_t *st = status_json();
    for (size_t i = 0; i < NSVC; i++) {
        json_t *s = entry(st, names[i]);
        assert_non_null(s);
        const char *dsn = json_string_value(json_object_get(s, "dsn"));
        assert_non_null(dsn);
        free(dsns[i]);
        dsns[i] = moat_xstrdup(dsn);
        assert_non_null(strstr(dsn, h_fmt("dbname=%s ", idents[i])));
        assert_non_null(strstr(dsn, h_fmt("user=%s ", idents[i])));
        assert_non_null(strstr(dsn, "sslmode=verify-full"));
        assert_null(strstr(dsn, "password="));
    }
    const char *p = strstr(dsns[0], "port=") + 5;
    snprintf(port, sizeof(port), "%.*s", (int)strcspn(p, " "), p);
    json_decref(st);
}

/* The MOAT_DB_DSN in the environment of the running service name. */
static char *env_dsn(const char *name)
{
    json_t *st = status_json();
    json_int_t pid =
        json_integer_value(json_object_get(entry(st, name), "pid"));
    json_decref(st);
    assert_true(pid > 0);
    FILE *f = fopen(h_fmt("/proc/%lld/environ", (long long)pid), "re");
    assert_non_null(f);
    char *var = NULL;
    size_t cap = 0;
    char *found = NULL;
    while (!found && getdelim(&var, &cap, '\0', f) > 0)
        if (strncmp(var, "MOAT_DB_DSN=", 12) == 0)
            found = moat_xstrdup(var + 12);
    free(var);
    fclose(f);
    return found;
}

static char *password_of(const char *who)
{
    char *text = h_run_capture(h_fmt("cat %s/var/secrets/%s.pgpass", dir, who),
                               &(int){0});
    char *colon = strrchr(text, ':');
    assert_non_null(colon);
    char *pw = moat_xstrndup(colon + 1, strcspn(colon + 1, "\n"));
    free(text);
    return pw;
}

static PGconn *connect_ok(const char *dsn)
{
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect with %s: %s", dsn, PQerrorMessage(c));
    return c;
}

static void connect_refused(const char *dsn, const char *why)
{
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) == CONNECTION_OK)
        fail_msg("connected with %s", dsn);
    if (!strstr(PQerrorMessage(c), why))
        fail_msg("refused for another reason than \"%s\": %s", why,
                 PQerrorMessage(c));
    PQfinish(c);
}

static char *one_value(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    char *v = moat_xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void sql_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* sql fails with SQLSTATE 42501 (insufficient_privilege). */
static void sql_denied(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (PQresultStatus(r) != PGRES_FATAL_ERROR || !state ||
        strcmp(state, "42501") != 0)
        fail_msg("%s was not refused for privileges: %s", sql,
                 PQresultErrorMessage(r));
    PQclear(r);
}

/* The superuser on the cluster's socket, in database db. */
static PGconn *superuser(const char *db)
{
    return connect_ok(
        h_fmt("host=%s/var/postgres/run port=%s dbname=%s user=moat "
              "passfile=%s/var/secrets/postgres.pgpass",
              dir, port, db, dir));
}

static void check_own_databases(void)
{
    for (size_t i = 0; i < NSVC; i++) {
        PGconn *c = connect_ok(dsns[i]);
        char *who = one_value(c, "SELECT current_user");
        assert_string_equal(who, idents[i]);
        free(who);
        char *ssl = one_value(
            c, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
        assert_string_equal(ssl, "t");
        free(ssl);
        sql_ok(c, "CREATE TABLE IF NOT EXISTS secret (v text)");
        sql_ok(c, h_fmt("INSERT INTO secret VALUES ('of %s')", names[i]));
        PQfinish(c);
    }
}

static void check_pairs(void)
{
    for (size_t a = 0; a < NSVC; a++) {
        char *pw = password_of(names[a]);
        for (size_t b = 0; b < NSVC; b++) {
            if (a == b)
                continue;
            /* a's credentials, b's database: pg_hba.conf says no. */
            connect_refused(
                h_fmt("host=127.0.0.1 port=%s dbname=%s user=%s password=%s "
                      "sslmode=verify-full sslrootcert=%s/var/certs/ca.crt",
                      port, idents[b], idents[a], pw, dir),
                "no pg_hba.conf entry");
            /* And were a connected to b's database, a could do nothing. */
            PGconn *c = superuser(idents[b]);
            char *priv =
                one_value(c, h_fmt("SELECT has_database_privilege('%s', '%s', "
                                   "'CONNECT')",
                                   idents[a], idents[b]));
            assert_string_equal(priv, "f");
            free(priv);
            sql_ok(c, h_fmt("SET ROLE %s", idents[a]));
            sql_denied(c, "SELECT * FROM public.secret");
            sql_denied(c, "CREATE TABLE public.intruder (v text)");
            PQfinish(c);
        }
        /* Its own database, without TLS: refused. */
        connect_refused(h_fmt("host=127.0.0.1 port=%s dbname=%s user=%s "
                              "password=%s sslmode=disable",
                              port, idents[a], idents[a], pw),
                        "no pg_hba.conf entry");
        free(pw);
    }
}

static void check_modes(void)
{
    const char *files[] = {"postgres", names[0], names[1], names[2]};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(files); i++) {
        struct stat st;
        const char *path = h_fmt("%s/var/secrets/%s.pgpass", dir, files[i]);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
    }
}

static void test_postgres_roles(void **state)
{
    MOAT_UNUSED(state);
    dir = h_tmpdir_new("pgroles");
    /* Run as root, the server runs as the postgres system user, which
     * must be able to search the directories above var/postgres. */
    assert_int_equal(chmod(dir, 0711), 0);
    snprintf(file, sizeof(file), "%s/moat.json", dir);
    struct moat_buf json = MOAT_BUF_INIT;
    moat_buf_printf(&json,
                    "{\"name\": \"pgroles\", \"tls\": true, \"postgres\": "
                    "{\"listen\": \"127.0.0.1:%u\"}, \"services\": [",
                    (unsigned)h_free_port());
    for (size_t i = 0; i < NSVC; i++)
        moat_buf_printf(&json,
                        "%s{\"name\": \"%s\", \"listen\": \"127.0.0.1:%u\", "
                        "\"engine\": \"postgres\", \"binary\": \"catalog\"}",
                        i ? ", " : "", names[i], (unsigned)h_free_port());
    moat_buf_addstr(&json, "]}");
    h_write_file(file, moat_buf_str(&json));
    moat_buf_release(&json);

    uint64_t t0 = moat_mono_ms();
    up_pid = start_up();
    H_WAIT_UNTIL(deployment_ready(), 30000, "moat up of %s", file);
    fprintf(stderr, "deployment with its cluster ready after %llu ms\n",
            (unsigned long long)(moat_mono_ms() - t0));
    read_dsns();
    /* What the service was given is what moat status shows. */
    for (size_t i = 0; i < NSVC; i++) {
        char *dsn = env_dsn(names[i]);
        assert_non_null(dsn);
        assert_string_equal(dsn, dsns[i]);
        free(dsn);
    }
    check_modes();
    check_own_databases();
    check_pairs();

    /* The postmaster killed: the supervisor starts it again, and what was
     * committed is still there. */
    json_t *st = status_json();
    json_int_t pg_pid =
        json_integer_value(json_object_get(entry(st, "postgres"), "pid"));
    json_decref(st);
    assert_true(pg_pid > 0);
    assert_int_equal(kill((pid_t)pg_pid, SIGKILL), 0);
    H_WAIT_UNTIL(postgres_back(pg_pid), H_WAIT_MS,
                 "the supervisor to restart postgres");
    PGconn *c = connect_ok(dsns[0]);
    char *v = one_value(c, "SELECT v FROM secret");
    assert_string_equal(v, "of alpha");
    free(v);
    PQfinish(c);

    /* moat down: services first, then the cluster's fast shutdown. */
    st = status_json();
    pg_pid = json_integer_value(json_object_get(entry(st, "postgres"), "pid"));
    json_decref(st);
    h_moat_down(&up_pid);
    assert_true(kill((pid_t)pg_pid, 0) < 0);
    int rc = 0;
    char *log = h_run_capture(h_fmt("cat %s/up.log", dir), &rc);
    const char *svc_stopped = strstr(log, "gamma-one: stopped");
    const char *pg_stop = strstr(log, "postgres: stopping pid");
    assert_non_null(svc_stopped);
    assert_non_null(pg_stop);
    assert_true(svc_stopped < pg_stop);
    assert_non_null(strstr(pg_stop, "(SIGINT)"));
    assert_non_null(strstr(log, "postgres: exited unexpectedly"));
    free(log);

    /* Again: the same cluster, roles and passwords. */
    char *pw = password_of(names[1]);
    up_pid = start_up();
    H_WAIT_UNTIL(deployment_ready(), 30000, "the second moat up of %s", file);
    char *pw2 = password_of(names[1]);
    assert_string_equal(pw, pw2);
    free(pw);
    free(pw2);
    c = connect_ok(dsns[1]);
    v = one_value(c, "SELECT v FROM secret");
    assert_string_equal(v, "of beta");
    free(v);
    PQfinish(c);
    h_moat_down(&up_pid);

    for (size_t i = 0; i < NSVC; i++)
        free(dsns[i]);
    h_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postgres_roles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
