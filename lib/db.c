/* db.c - a service's own SQLite database (see moat/db.h). */
#include "moat/common.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/buf.h"
#include "moat/crypto.h"
#include "moat/db.h"
#include "moat/log.h"

#define DEFAULT_BUSY_TIMEOUT_MS 5000
/* Buckets of the statement cache: services have tens of statements. */
#define STMT_BUCKETS 64
/* 16 hex digits of a 64-bit FNV-1a hash, plus the NUL. */
#define CHECKSUM_LEN 17

/* PostgreSQL: every statement is cut off after this long (a runaway
 * query must not hold a service's only connection). */
#define PG_STATEMENT_TIMEOUT_MS 30000
/* The transaction-level advisory lock moat_db_begin() takes on
 * PostgreSQL: one per database, so the service's write transactions run
 * one at a time, as BEGIN IMMEDIATE makes them on SQLite ("moat"). */
#define PG_WRITE_LOCK 0x6d6f6174
/* The type of bytea columns (pg_type.oid, fixed since forever). */
#define PG_BYTEA_OID 17

#define DURATION_FAMILY "moat_db_statement_duration_seconds"
#define ERRORS_FAMILY   "moat_db_statement_errors_total"

struct moat_stmt {
    struct moat_db *db;                /* owning connection */
    struct moat_stmt *next;            /* next in the same cache bucket */
    char *name;                        /* owned; the metrics label */
    char *sql;                         /* owned; to catch a reused name */
    sqlite3_stmt *st;                  /* finalized by moat_db_close() */
    struct moat_metric_series *timing; /* NULL without a registry */
    struct moat_metric_series *errors; /* NULL without a registry */
    /*
     * Nanoseconds spent inside sqlite3_step() during the current execution
     * (from the first step to SQLITE_DONE, an error or a reset). Time the
     * caller spends between rows is not the database's and is left out.
     */
    uint64_t busy_ns;
    bool running; /* stepped at least once since the last reset */

    /* PostgreSQL only (st is NULL there). */
    char *pg_text;       /* sql with $N placeholders; owned */
    char pg_name[24];    /* server-side name of the prepared statement */
    unsigned pg_gen;     /* connection it was prepared on (0: none yet) */
    int nparams;         /* highest placeholder number */
    const char **values; /* per parameter: NULL is SQL NULL */
    int *lengths;
    int *formats;   /* 0 text, 1 binary (blobs) */
    char **owned;   /* per parameter: our copy (int64, textn), or NULL */
    PGresult *res;  /* of the current execution; NULL before the first step */
    int row, nrows; /* current row of res */
    unsigned char **blobs; /* decoded bytea of the current row, per column */
    size_t *blob_lens;
    int nblobs;
};

struct moat_db {
    enum moat_db_engine engine;
    sqlite3 *h;       /* SQLite only */
    PGconn *pg;       /* PostgreSQL only */
    unsigned pg_gen;  /* bumped on each (re)connection */
    unsigned pg_next; /* names of prepared statements */
    int lock_timeout_ms;
    bool in_tx;      /* PostgreSQL: moat_db_begin() succeeded */
    bool pg_down;    /* PostgreSQL: a reconnection failed (logged) */
    int64_t changes; /* PostgreSQL: moat_db_changes() */
    char *pg_error;  /* PostgreSQL: the last error message; owned */
    char *pg_dsn;    /* PostgreSQL: the DSN as given, for listeners (secret) */
    char *path;      /* owned copy; on PostgreSQL the DSN without password */
    struct moat_metric_family *durations;  /* borrowed; NULL: no registry */
    struct moat_metric_family *errors;     /* borrowed; NULL: no registry */
    struct moat_stmt *cache[STMT_BUCKETS]; /* owned statements */
};

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/*
 * The checksum recorded with each migration: FNV-1a 64 of the SQL text in
 * hex. It only has to notice edits, not resist forgery, and must stay the
 * same across compilers and releases, so no hash-seeded function is used.
 */
static void migration_checksum(const char *sql, char out[CHECKSUM_LEN])
{
    snprintf(out, CHECKSUM_LEN, "%016" PRIx64, fnv1a64(sql));
}

int moat_db_error(struct moat_db *db, int sqlite_rc)
{
    /* PostgreSQL out of reach (restarting, network): unavailable for now,
     * a 503 with Retry-After, not a fault of the data. */
    if (db && db->engine == MOAT_DB_POSTGRES &&
        (sqlite_rc & 0xff) == SQLITE_IOERR)
        return MOAT_EBUSY;
    switch (sqlite_rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return MOAT_OK;
    case SQLITE_CONSTRAINT:
        return MOAT_ECONFLICT;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return MOAT_EBUSY;
    default:
        return MOAT_EDB;
    }
}

/*
 * Constraint violations and lock timeouts are outcomes the caller maps to
 * a response (409, 503); anything else (I/O error, corruption, full disk,
 * SQL error) is a fault worth a log line of its own.
 */
static bool is_expected_error(int rc)
{
    int primary = rc & 0xff;
    return primary == SQLITE_CONSTRAINT || primary == SQLITE_BUSY ||
           primary == SQLITE_LOCKED;
}

static void log_sqlite_error(struct moat_db *db, const char *what,
                             const char *name, int rc)
{
    /* PostgreSQL out of reach is logged once per outage (pg_ensure). */
    bool expected =
        is_expected_error(rc) || (db->pg_down && (rc & 0xff) == SQLITE_IOERR);
    moat_log(expected ? MOAT_LOG_DEBUG : MOAT_LOG_ERROR, what,
             "{s:s, s:s, s:i, s:s}", "statement", name ? name : "", "path",
             db->path, "sqlite_code", rc, "error", moat_db_errmsg(db));
}

static struct moat_metric_series *series_for(struct moat_metric_family *f,
                                             const char *name)
{
    const char *values[] = {name};
    return f ? moat_metric_series(f, values) : NULL;
}

/* Create the file ourselves so that it is never readable by anyone else,
 * whatever the umask (which is process-wide and not ours to change while
 * other threads run). SQLite gives the -wal and -shm files the same mode. */
static int create_private_file(const char *path)
{
    int rc = MOAT_OK;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        int err = errno;
        moat_log(MOAT_LOG_ERROR, "cannot create database file", "{s:s, s:s}",
                 "path", path, "error", strerror(err));
        /* A directory or a symlink where the file should be is a
         * configuration mistake (or an attack), not an I/O failure. */
        return err == EISDIR || err == ELOOP ? MOAT_EINVAL : MOAT_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        moat_log(MOAT_LOG_ERROR, "database path is not a regular file", "{s:s}",
                 "path", path);
        rc = MOAT_EINVAL;
        goto out;
    }
    /* A file left readable by an older build or by hand is tightened:
     * nobody but the owning service may read its data. */
    if ((st.st_mode & 077) != 0) {
        char mode[8];
        snprintf(mode, sizeof(mode), "%04o", (unsigned)(st.st_mode & 07777));
        moat_log(MOAT_LOG_WARN, "database file was accessible to others",
                 "{s:s, s:s}", "path", path, "mode", mode);
        if (fchmod(fd, st.st_mode & 0700) != 0) {
            moat_log(MOAT_LOG_ERROR, "cannot restrict database file mode",
                     "{s:s, s:s}", "path", path, "error", strerror(errno));
            rc = MOAT_EIO;
        }
    }
out:
    close(fd);
    return rc;
}

/* Run a statement expected to produce at most one row (a PRAGMA). When
 * expect is not NULL the first column must equal it, case-insensitively. */
static int run_pragma(struct moat_db *db, const char *sql, const char *expect)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->h, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto fail;
    if (expect) {
        const char *got =
            rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
        if (!got || sqlite3_stricmp(got, expect) != 0) {
            moat_log(MOAT_LOG_ERROR, "database setting not in effect",
                     "{s:s, s:s, s:s, s:s}", "path", db->path, "pragma", sql,
                     "expected", expect, "got", got ? got : "(none)");
            sqlite3_finalize(st);
            return MOAT_EDB;
        }
    }
    sqlite3_finalize(st);
    return MOAT_OK;
fail:
    log_sqlite_error(db, "database setup failed", sql, rc);
    sqlite3_finalize(st);
    return moat_db_error(db, rc);
}

static int configure(struct moat_db *db, const struct moat_db_options *opts)
{
    int rc;
    int busy_ms = opts && opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms
                                                    : DEFAULT_BUSY_TIMEOUT_MS;

    sqlite3_extended_result_codes(db->h, 1);
    sqlite3_busy_timeout(db->h, busy_ms);
    /*
     * Defensive mode keeps even buggy SQL from corrupting the file
     * (writable_schema, direct shadow table writes), and "double-quoted
     * strings" are identifiers only, so a typo such as WHERE name = "x" is
     * an error instead of a silent column lookup. The schema stays
     * trusted: the file is the service's own (mode 0600 in a 0700
     * directory), and SQLite 3.40 does not mark the JSON functions
     * innocuous, so an untrusted schema would refuse json_extract() in
     * generated columns and indexes.
     */
    sqlite3_db_config(db->h, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(db->h, SQLITE_DBCONFIG_DQS_DML, 0, (int *)NULL);
    sqlite3_db_config(db->h, SQLITE_DBCONFIG_DQS_DDL, 0, (int *)NULL);

    /* journal_mode answers with the mode actually in effect: WAL can be
     * refused (e.g. on a file system without shared memory). */
    if ((rc = run_pragma(db, "PRAGMA journal_mode=WAL", "wal")) != MOAT_OK)
        return rc;
    if ((rc = run_pragma(db,
                         opts && opts->synchronous_full
                             ? "PRAGMA synchronous=FULL"
                             : "PRAGMA synchronous=NORMAL",
                         NULL)) != MOAT_OK)
        return rc;
    if ((rc = run_pragma(db, "PRAGMA foreign_keys=ON", NULL)) != MOAT_OK)
        return rc;
    /* Foreign keys cannot be turned on inside a transaction, nor in a build
     * without them: check rather than trust. */
    if ((rc = run_pragma(db, "PRAGMA foreign_keys", "1")) != MOAT_OK)
        return rc;
    if (opts && opts->secure_delete &&
        (rc = run_pragma(db, "PRAGMA secure_delete=ON", "1")) != MOAT_OK)
        return rc;
    return run_pragma(db, "PRAGMA temp_store=MEMORY", NULL);
}

/* ---- PostgreSQL connection ---- */

static void pg_set_error(struct moat_db *db, const char *msg)
{
    free(db->pg_error);
    db->pg_error = moat_xstrdup(msg && *msg ? msg : "connection lost");
    size_t n = strlen(db->pg_error);
    while (n > 0 && (db->pg_error[n - 1] == '\n' || db->pg_error[n - 1] == ' '))
        db->pg_error[--n] = '\0';
}

/*
 * The SQLite result code standing for a failed PostgreSQL command, so that
 * moat_db_error() maps both engines alike: integrity violations (SQLSTATE
 * class 23) are SQLITE_CONSTRAINT, serialization failures, deadlocks and
 * lock timeouts SQLITE_BUSY, a lost connection SQLITE_IOERR, anything else
 * SQLITE_ERROR. Keeps the message for moat_db_errmsg().
 */
static int pg_code(struct moat_db *db, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : "";
    pg_set_error(db, *msg ? msg : PQerrorMessage(db->pg));
    if (PQstatus(db->pg) != CONNECTION_OK || !state)
        return SQLITE_IOERR;
    /* Integrity violations, with SQLite's extended code for the kind. */
    if (strcmp(state, "23505") == 0)
        return SQLITE_CONSTRAINT_UNIQUE;
    if (strcmp(state, "23503") == 0)
        return SQLITE_CONSTRAINT_FOREIGNKEY;
    if (strcmp(state, "23502") == 0)
        return SQLITE_CONSTRAINT_NOTNULL;
    if (strcmp(state, "23514") == 0)
        return SQLITE_CONSTRAINT_CHECK;
    if (strncmp(state, "23", 2) == 0)
        return SQLITE_CONSTRAINT;
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
        strcmp(state, "55P03") == 0)
        return SQLITE_BUSY;
    /* Connection exceptions, and the server shutting down under us. */
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0)
        return SQLITE_IOERR;
    return SQLITE_ERROR;
}

/* Server messages (warnings: client_min_messages hides notices) go to the
 * service's log instead of stderr. */
static void pg_notice(void *arg, const char *message)
{
    struct moat_db *db = arg;
    moat_log(MOAT_LOG_WARN, "postgresql notice", "{s:s, s:s}", "dsn", db->path,
             "message", message);
}

/* Session settings of a new connection. */
static int pg_setup(struct moat_db *db)
{
    char sql[160];
    PQsetNoticeProcessor(db->pg, pg_notice, db);
    snprintf(sql, sizeof(sql),
             "SET statement_timeout = %d; SET lock_timeout = %d; "
             "SET client_min_messages = warning",
             PG_STATEMENT_TIMEOUT_MS, db->lock_timeout_ms);
    PGresult *r = PQexec(db->pg, sql);
    int rc = MOAT_OK;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pg_code(db, r);
        moat_log(MOAT_LOG_ERROR, "cannot set up the database session",
                 "{s:s, s:s}", "dsn", db->path, "error", db->pg_error);
        rc = MOAT_EDB;
    }
    PQclear(r);
    /* Statements prepared on an earlier connection are gone. */
    db->pg_gen++;
    return rc;
}

/* A new connection to dsn (check PQstatus; NULL only without memory). */
static PGconn *pg_dial(const char *dsn)
{
    const char *app = getenv("MOAT_SERVICE_NAME");
    /* Processed in order: what the DSN says (dbname, expanded last) wins
     * over these defaults. */
    const char *keys[] = {"connect_timeout", "fallback_application_name",
                          "dbname", NULL};
    const char *vals[] = {"5", app && *app ? app : "moat", dsn, NULL};
    return PQconnectdbParams(keys, vals, 1);
}

static int pg_connect(struct moat_db *db, const char *dsn)
{
    db->pg = pg_dial(dsn);
    if (!db->pg || PQstatus(db->pg) != CONNECTION_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot connect to the database", "{s:s, s:s}",
                 "dsn", db->path, "error",
                 db->pg ? PQerrorMessage(db->pg) : "out of memory");
        return MOAT_EDB;
    }
    return pg_setup(db);
}

/*
 * A connection found broken (the server restarted, the network dropped)
 * is reset here, outside a transaction only: inside one, the work done so
 * far is lost and the caller must see the failure, not carry on in a new
 * session. Returns whether the connection is usable.
 */
static bool pg_ensure(struct moat_db *db)
{
    if (PQstatus(db->pg) == CONNECTION_OK)
        return true;
    if (db->in_tx)
        return false;
    PQreset(db->pg);
    if (PQstatus(db->pg) != CONNECTION_OK) {
        pg_set_error(db, PQerrorMessage(db->pg));
        /* Once per outage: every request would repeat it. */
        if (!db->pg_down)
            moat_log(MOAT_LOG_WARN, "database connection lost", "{s:s, s:s}",
                     "dsn", db->path, "error", db->pg_error);
        db->pg_down = true;
        return false;
    }
    moat_log(MOAT_LOG_INFO, "database connection re-established", "{s:s}",
             "dsn", db->path);
    db->pg_down = false;
    return pg_setup(db) == MOAT_OK;
}

/* The DSN for logs: every parameter it sets but the password. */
static char *pg_redacted(const char *dsn)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    if (!opts) {
        PQfreemem(err);
        return moat_xstrdup("postgresql (malformed connection string)");
    }
    struct moat_buf b = MOAT_BUF_INIT;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || strcmp(o->keyword, "password") == 0)
            continue;
        moat_buf_printf(&b, "%s%s=%s", b.len ? " " : "", o->keyword, o->val);
    }
    PQconninfoFree(opts);
    return moat_buf_detach(&b, NULL);
}

static void metrics_init(struct moat_db *db, struct moat_metrics *metrics)
{
    if (!metrics)
        return;
    db->durations = moat_metrics_family(
        metrics, MOAT_HISTOGRAM, DURATION_FAMILY,
        "Time spent in SQLite per statement execution.", "statement",
        moat_latency_buckets, moat_latency_buckets_len);
    db->errors = moat_metrics_family(metrics, MOAT_COUNTER, ERRORS_FAMILY,
                                     "SQLite statement executions that failed.",
                                     "statement", NULL, 0);
}

static int pg_open(struct moat_db **out, const char *dsn,
                   const struct moat_db_options *opts,
                   struct moat_metrics *metrics)
{
    struct moat_db *db = moat_xcalloc(1, sizeof(*db));
    db->engine = MOAT_DB_POSTGRES;
    db->path = pg_redacted(dsn);
    db->pg_dsn = moat_xstrdup(dsn);
    db->lock_timeout_ms = opts && opts->busy_timeout_ms > 0
                              ? opts->busy_timeout_ms
                              : DEFAULT_BUSY_TIMEOUT_MS;
    metrics_init(db, metrics);
    int rc = pg_connect(db, dsn);
    if (rc != MOAT_OK) {
        moat_db_close(db);
        return rc;
    }
    moat_log(MOAT_LOG_INFO, "database connected", "{s:s, s:s, s:i}", "dsn",
             db->path, "engine", "postgres", "server_version",
             PQserverVersion(db->pg));
    *out = db;
    return MOAT_OK;
}

int moat_db_open(struct moat_db **out, const char *path,
                 const struct moat_db_options *opts,
                 struct moat_metrics *metrics)
{
    int rc;
    struct moat_db *db = NULL;

    *out = NULL;
    if (opts && opts->dsn && *opts->dsn)
        return pg_open(out, opts->dsn, opts, metrics);
    if (!path || !*path)
        return MOAT_EINVAL;
    if ((rc = create_private_file(path)) != MOAT_OK)
        return rc;

    db = moat_xcalloc(1, sizeof(*db));
    db->path = moat_xstrdup(path);
    metrics_init(db, metrics);

    /* NOMUTEX: a connection is used by one thread (see db.h). NOFOLLOW:
     * the data directory holds no symlinks, so one would be an attack. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW |
                SQLITE_OPEN_EXRESCODE;
    int src = sqlite3_open_v2(path, &db->h, flags, NULL);
    if (src != SQLITE_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open database", "{s:s, s:i, s:s}",
                 "path", path, "sqlite_code", src, "error",
                 db->h ? sqlite3_errmsg(db->h) : sqlite3_errstr(src));
        rc = MOAT_EDB;
        goto fail;
    }
    if ((rc = configure(db, opts)) != MOAT_OK)
        goto fail;

    *out = db;
    return MOAT_OK;
fail:
    moat_db_close(db);
    return rc;
}

/* Forget the current PostgreSQL result and decoded blobs. */
static void pg_clear_result(struct moat_stmt *s)
{
    for (int i = 0; i < s->nblobs; i++)
        PQfreemem(s->blobs[i]);
    free(s->blobs);
    free(s->blob_lens);
    s->blobs = NULL;
    s->blob_lens = NULL;
    s->nblobs = 0;
    PQclear(s->res);
    s->res = NULL;
    s->row = s->nrows = 0;
}

static void pg_clear_bindings(struct moat_stmt *s)
{
    for (int i = 0; i < s->nparams; i++) {
        free(s->owned[i]);
        s->owned[i] = NULL;
        s->values[i] = NULL;
        s->lengths[i] = 0;
        s->formats[i] = 0;
    }
}

static void stmt_free(struct moat_stmt *s)
{
    sqlite3_finalize(s->st);
    if (s->pg_text) {
        pg_clear_result(s);
        pg_clear_bindings(s);
        free(s->values);
        free(s->lengths);
        free(s->formats);
        free(s->owned);
        free(s->pg_text);
    }
    free(s->name);
    free(s->sql);
    free(s);
}

void moat_db_close(struct moat_db *db)
{
    if (!db)
        return;
    for (size_t i = 0; i < STMT_BUCKETS; i++) {
        struct moat_stmt *s = db->cache[i];
        while (s) {
            struct moat_stmt *next = s->next;
            stmt_free(s);
            s = next;
        }
    }
    if (db->pg)
        PQfinish(db->pg);
    if (db->h) {
        /* Long-lived connections should let SQLite refresh its planner
         * statistics before going away; it is cheap when nothing changed. */
        sqlite3_exec(db->h, "PRAGMA optimize", NULL, NULL, NULL);
        if (sqlite3_close(db->h) != SQLITE_OK) {
            /* Statements prepared on moat_db_handle() and not finalized:
             * a leak in the caller. Close once they are gone. */
            moat_log(MOAT_LOG_ERROR, "database closed with open statements",
                     "{s:s, s:s}", "path", db->path, "error",
                     sqlite3_errmsg(db->h));
            sqlite3_close_v2(db->h);
        }
    }
    free(db->pg_error);
    moat_free_secret(db->pg_dsn); /* it may hold a password */
    free(db->path);
    free(db);
}

/* ---- statements ---- */

/* Record the end of one execution of s (DONE, error or reset midway). */
static void stmt_finish(struct moat_stmt *s)
{
    if (!s->running)
        return;
    if (s->timing)
        moat_metric_observe(s->timing, (double)s->busy_ns / 1e9);
    s->running = false;
    s->busy_ns = 0;
}

/* Whether tail, the text after a prepared statement, holds another one
 * (and not just whitespace, semicolons or comments). */
static bool has_more_sql(struct moat_db *db, const char *tail)
{
    sqlite3_stmt *next = NULL;
    if (!tail || tail[strspn(tail, " \t\r\n;")] == '\0')
        return false;
    int rc = sqlite3_prepare_v2(db->h, tail, -1, &next, NULL);
    sqlite3_finalize(next);
    return rc != SQLITE_OK || next != NULL;
}

/* Copy text from *p up to and including the first occurrence of end
 * (or to the end of text), advancing *p and *o. */
static void copy_through(const char **p, char **o, const char *end)
{
    const char *stop = strstr(*p, end);
    size_t n = stop ? (size_t)(stop - *p) + strlen(end) : strlen(*p);
    memcpy(*o, *p, n);
    *p += n;
    *o += n;
}

/*
 * SQLite's placeholders in PostgreSQL's form: ?NNN becomes $NNN and a bare
 * ? the next number after the largest so far (SQLite's rule), except inside
 * '...' literals, "..." identifiers, $tag$...$tag$ bodies, -- and block
 * comments. *nparams gets the largest number. NULL for a number out of
 * range (?0, above 32767). The caller frees the result.
 */
char *moat_db_pg_placeholders(const char *sql, int *nparams)
{
    /* "?" at worst becomes "$32767": 6 bytes for 1. */
    char *out = moat_xmalloc(strlen(sql) * 6 + 1);
    char *o = out;
    const char *p = sql;
    int max = 0;

    while (*p) {
        if (*p == '\'' || *p == '"') {
            char q[2] = {*p, '\0'};
            *o++ = *p++;
            copy_through(&p, &o, q);
        } else if (p[0] == '-' && p[1] == '-') {
            copy_through(&p, &o, "\n");
        } else if (p[0] == '/' && p[1] == '*') {
            *o++ = *p++;
            *o++ = *p++;
            copy_through(&p, &o, "*/");
        } else if (*p == '$' && !(p[1] >= '0' && p[1] <= '9')) {
            /* $tag$ ... $tag$ (tag may be empty), else a lone $. */
            size_t t =
                1 + strspn(p + 1, "abcdefghijklmnopqrstuvwxyz"
                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789");
            if (p[t] != '$') {
                *o++ = *p++;
                continue;
            }
            char tag[72];
            if (t + 1 >= sizeof(tag)) {
                free(out);
                return NULL;
            }
            memcpy(tag, p, t + 1);
            tag[t + 1] = '\0';
            memcpy(o, p, t + 1);
            o += t + 1;
            p += t + 1;
            copy_through(&p, &o, tag);
        } else if (*p == '?') {
            long k;
            p++;
            if (*p >= '0' && *p <= '9') {
                char *end;
                k = strtol(p, &end, 10);
                p = end;
            } else {
                k = max + 1;
            }
            if (k < 1 || k > 32767) {
                free(out);
                return NULL;
            }
            if (k > max)
                max = (int)k;
            o += snprintf(o, 8, "$%ld", k);
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    *nparams = max;
    return out;
}

/* Prepare s on the server, on the current connection. The SQLite code. */
static int pg_server_prepare(struct moat_stmt *s)
{
    struct moat_db *db = s->db;
    PGresult *r = PQprepare(db->pg, s->pg_name, s->pg_text, s->nparams, NULL);
    int rc = SQLITE_OK;
    if (PQresultStatus(r) == PGRES_COMMAND_OK) {
        s->pg_gen = db->pg_gen;
    } else {
        rc = pg_code(db, r);
        moat_log(rc == SQLITE_IOERR ? MOAT_LOG_WARN : MOAT_LOG_ERROR,
                 "cannot prepare statement", "{s:s, s:s, s:s, s:s}",
                 "statement", s->name, "dsn", db->path, "sql", s->pg_text,
                 "error", db->pg_error);
        if (db->errors)
            moat_metric_add(series_for(db->errors, s->name), 1);
    }
    PQclear(r);
    return rc;
}

/*
 * Make s runnable on the current connection: reconnect if it broke
 * (outside a transaction) and prepare s again if the connection is newer
 * than s. SQLITE_IOERR while the server is out of reach.
 */
static int pg_ready(struct moat_stmt *s)
{
    if (!pg_ensure(s->db))
        return SQLITE_IOERR;
    if (s->pg_gen == s->db->pg_gen)
        return SQLITE_OK;
    return pg_server_prepare(s);
}

/*
 * A new statement. With the server out of reach it is cached unprepared
 * and its first step fails with SQLITE_IOERR (MOAT_EBUSY, a 503), as any
 * statement would then; bad SQL is refused here as on SQLite.
 */
static struct moat_stmt *pg_prepare_new(struct moat_db *db, const char *name,
                                        const char *sql, size_t bucket)
{
    int nparams = 0;
    char *text = moat_db_pg_placeholders(sql, &nparams);
    if (!text) {
        moat_log(MOAT_LOG_ERROR, "bad placeholder in statement", "{s:s, s:s}",
                 "statement", name, "sql", sql);
        return NULL;
    }
    struct moat_stmt *s = moat_xcalloc(1, sizeof(*s));
    s->db = db;
    s->name = moat_xstrdup(name);
    s->sql = moat_xstrdup(sql);
    s->pg_text = text;
    s->nparams = nparams;
    size_t slots = nparams > 0 ? (size_t)nparams : 1;
    s->values = moat_xcalloc(slots, sizeof(*s->values));
    s->lengths = moat_xcalloc(slots, sizeof(*s->lengths));
    s->formats = moat_xcalloc(slots, sizeof(*s->formats));
    s->owned = moat_xcalloc(slots, sizeof(*s->owned));
    snprintf(s->pg_name, sizeof(s->pg_name), "moat_%u", ++db->pg_next);
    int rc = pg_ready(s);
    if (rc != SQLITE_OK && rc != SQLITE_IOERR) {
        stmt_free(s);
        return NULL;
    }
    s->timing = series_for(db->durations, name);
    s->errors = series_for(db->errors, name);
    s->next = db->cache[bucket];
    db->cache[bucket] = s;
    return s;
}

struct moat_stmt *moat_db_prepare(struct moat_db *db, const char *name,
                                  const char *sql)
{
    size_t bucket = fnv1a64(name) % STMT_BUCKETS;
    struct moat_stmt *s;

    for (s = db->cache[bucket]; s; s = s->next) {
        if (strcmp(s->name, name) != 0)
            continue;
        /* A name stands for one statement: the same name for other SQL
         * would mix two statements in one histogram, or worse run the
         * wrong one. A strcmp costs little next to a step. */
        if (strcmp(s->sql, sql) != 0) {
            moat_log(MOAT_LOG_ERROR, "statement name reused for other SQL",
                     "{s:s, s:s, s:s}", "statement", name, "sql", sql,
                     "cached_sql", s->sql);
            return NULL;
        }
        moat_stmt_reset(s);
        if (db->engine == MOAT_DB_SQLITE) {
            sqlite3_clear_bindings(s->st);
            return s;
        }
        pg_clear_bindings(s);
        /* After a reconnection the server knows none of our statements;
         * with the server away, the step will say so. */
        int rc = pg_ready(s);
        return rc == SQLITE_OK || rc == SQLITE_IOERR ? s : NULL;
    }
    if (db->engine == MOAT_DB_POSTGRES)
        return pg_prepare_new(db, name, sql, bucket);

    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v3(db->h, sql, -1, SQLITE_PREPARE_PERSISTENT, &st,
                                &tail);
    if (rc != SQLITE_OK) {
        log_sqlite_error(db, "cannot prepare statement", name, rc);
        if (db->errors)
            moat_metric_add(series_for(db->errors, name), 1);
        return NULL;
    }
    if (!st || has_more_sql(db, tail)) {
        /* Only the first statement would ever run: say so now rather
         * than lose the rest silently. */
        moat_log(MOAT_LOG_ERROR, "statement must be exactly one SQL statement",
                 "{s:s, s:s}", "statement", name, "sql", sql);
        sqlite3_finalize(st);
        return NULL;
    }

    s = moat_xcalloc(1, sizeof(*s));
    s->db = db;
    s->name = moat_xstrdup(name);
    s->sql = moat_xstrdup(sql);
    s->st = st;
    s->timing = series_for(db->durations, name);
    s->errors = series_for(db->errors, name);
    s->next = db->cache[bucket];
    db->cache[bucket] = s;
    return s;
}

sqlite3_stmt *moat_stmt_raw(struct moat_stmt *s)
{
    return s->st;
}

/* Whether a finished command changed rows (what sqlite3_changes counts). */
static bool pg_is_write(const PGresult *r)
{
    const char *tag = PQcmdStatus((PGresult *)r);
    return strncmp(tag, "INSERT", 6) == 0 || strncmp(tag, "UPDATE", 6) == 0 ||
           strncmp(tag, "DELETE", 6) == 0 || strncmp(tag, "MERGE", 5) == 0;
}

/* The first step runs the statement (all its rows come back at once);
 * the next ones walk the rows. */
static int pg_step(struct moat_stmt *s)
{
    struct moat_db *db = s->db;
    if (!s->res) {
        int rc = pg_ready(s);
        if (rc != SQLITE_OK)
            return rc;
        uint64_t t0 = moat_mono_ns();
        s->res = PQexecPrepared(db->pg, s->pg_name, s->nparams, s->values,
                                s->lengths, s->formats, 0);
        s->busy_ns += moat_mono_ns() - t0;
        s->running = true;
        ExecStatusType st = PQresultStatus(s->res);
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            rc = pg_code(db, s->res);
            PQclear(s->res);
            s->res = NULL;
            return rc;
        }
        if (pg_is_write(s->res))
            db->changes = strtoll(PQcmdTuples(s->res), NULL, 10);
        s->nrows = PQntuples(s->res);
        s->row = -1;
    }
    for (int i = 0; i < s->nblobs; i++) {
        PQfreemem(s->blobs[i]);
        s->blobs[i] = NULL;
    }
    if (++s->row < s->nrows)
        return SQLITE_ROW;
    s->row = s->nrows;
    return SQLITE_DONE;
}

int moat_stmt_step(struct moat_stmt *s)
{
    int rc;
    if (s->db->engine == MOAT_DB_POSTGRES) {
        rc = pg_step(s);
        if (rc == SQLITE_DONE) {
            /* Stepping again runs the statement again, as on SQLite. */
            stmt_finish(s);
            pg_clear_result(s);
        }
    } else {
        uint64_t t0 = moat_mono_ns();
        rc = sqlite3_step(s->st);
        s->busy_ns += moat_mono_ns() - t0;
        s->running = true;
    }

    if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        if (rc == SQLITE_DONE)
            stmt_finish(s);
        return rc;
    }
    if (s->errors)
        moat_metric_add(s->errors, 1);
    log_sqlite_error(s->db, "statement failed", s->name, rc);
    stmt_finish(s);
    return rc;
}

void moat_stmt_reset(struct moat_stmt *s)
{
    stmt_finish(s);
    if (s->db->engine == MOAT_DB_POSTGRES) {
        pg_clear_result(s);
        return;
    }
    /* The return value repeats the last step's error, already handled. */
    sqlite3_reset(s->st);
}

/* Run sql (several statements allowed) without results; the SQLite code.
 * On failure *err gets a message (owned; free()). */
static int exec_sql(struct moat_db *db, const char *sql, char **err)
{
    *err = NULL;
    if (db->engine == MOAT_DB_SQLITE) {
        char *msg = NULL;
        int rc = sqlite3_exec(db->h, sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK)
            *err = moat_xstrdup(msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return rc;
    }
    if (!pg_ensure(db)) {
        *err = moat_xstrdup(db->pg_error ? db->pg_error : "connection lost");
        return SQLITE_IOERR;
    }
    PGresult *r = PQexec(db->pg, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = SQLITE_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        rc = pg_code(db, r);
        *err = moat_xstrdup(db->pg_error);
    } else if (pg_is_write(r)) {
        db->changes = strtoll(PQcmdTuples(r), NULL, 10); /* the last one */
    }
    PQclear(r);
    return rc;
}

/* exec_sql, timed under name, failures counted and logged. */
static int exec_timed(struct moat_db *db, const char *name, const char *sql)
{
    char *err = NULL;
    uint64_t t0 = moat_mono_ns();
    int rc = exec_sql(db, sql, &err);
    uint64_t elapsed = moat_mono_ns() - t0;

    if (db->durations)
        moat_metric_observe(series_for(db->durations, name),
                            (double)elapsed / 1e9);
    if (rc != SQLITE_OK) {
        if (db->errors)
            moat_metric_add(series_for(db->errors, name), 1);
        moat_log(is_expected_error(rc) ? MOAT_LOG_DEBUG : MOAT_LOG_ERROR,
                 "statement failed", "{s:s, s:s, s:i, s:s}", "statement", name,
                 "path", db->path, "sqlite_code", rc, "error", err);
    }
    free(err);
    return rc;
}

int moat_db_exec(struct moat_db *db, const char *name, const char *sql)
{
    return moat_db_error(db, exec_timed(db, name, sql));
}

/* ---- transactions ---- */

/* Run a cached one-shot statement (BEGIN, COMMIT, ROLLBACK): cached so
 * that their latency, commit fsyncs included, shows in the histogram. */
static int run_cached(struct moat_db *db, const char *name, const char *sql)
{
    struct moat_stmt *s = moat_db_prepare(db, name, sql);
    if (!s)
        return MOAT_EDB;
    int rc = moat_stmt_step(s);
    moat_stmt_reset(s);
    return moat_db_error(db, rc);
}

/* Whether a transaction is open on the connection. */
static bool tx_open(struct moat_db *db)
{
    if (db->engine == MOAT_DB_SQLITE)
        return !sqlite3_get_autocommit(db->h);
    return db->in_tx;
}

/*
 * On PostgreSQL: READ COMMITTED, plus a transaction-level advisory lock
 * that every moat_db_begin() on the database takes first, so that write
 * transactions of the service (all its instances) run one at a time like
 * SQLite's BEGIN IMMEDIATE, waiting up to busy_timeout (lock_timeout) and
 * failing with MOAT_EBUSY past it. Outbox sequence numbers are therefore
 * drawn and committed in the same order (see moat/outbox.h), and no caller
 * needs the retry loop SERIALIZABLE would demand.
 */
static int pg_begin(struct moat_db *db)
{
    char sql[96];
    if (!pg_ensure(db))
        return MOAT_EBUSY;
    snprintf(sql, sizeof(sql), "BEGIN; SELECT pg_advisory_xact_lock(%d)",
             PG_WRITE_LOCK);
    int rc = exec_timed(db, "db_begin", sql);
    if (rc == SQLITE_OK) {
        db->in_tx = true;
        return MOAT_OK;
    }
    if (PQstatus(db->pg) == CONNECTION_OK &&
        PQtransactionStatus(db->pg) != PQTRANS_IDLE) {
        PGresult *r = PQexec(db->pg, "ROLLBACK");
        PQclear(r);
    }
    return moat_db_error(db, rc);
}

static int pg_commit(struct moat_db *db)
{
    uint64_t t0 = moat_mono_ns();
    PGresult *r = PQexec(db->pg, "COMMIT");
    if (db->durations)
        moat_metric_observe(series_for(db->durations, "db_commit"),
                            (double)(moat_mono_ns() - t0) / 1e9);
    int rc = SQLITE_OK;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = pg_code(db, r);
    } else if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        /* COMMIT of a transaction in which a statement failed answers
         * ROLLBACK, without an error. */
        pg_set_error(db, "the transaction had failed and was rolled back");
        rc = SQLITE_ERROR;
    }
    PQclear(r);
    if (rc != SQLITE_OK) {
        if (db->errors)
            moat_metric_add(series_for(db->errors, "db_commit"), 1);
        log_sqlite_error(db, "commit failed", "db_commit", rc);
    }
    db->in_tx = false;
    if (PQstatus(db->pg) == CONNECTION_OK &&
        PQtransactionStatus(db->pg) != PQTRANS_IDLE) {
        r = PQexec(db->pg, "ROLLBACK");
        PQclear(r);
    }
    return moat_db_error(db, rc);
}

int moat_db_begin(struct moat_db *db)
{
    if (tx_open(db)) {
        moat_log(MOAT_LOG_ERROR, "transaction already open", "{s:s}", "path",
                 db->path);
        return MOAT_EINVAL;
    }
    if (db->engine == MOAT_DB_POSTGRES)
        return pg_begin(db);
    return run_cached(db, "db_begin", "BEGIN IMMEDIATE");
}

int moat_db_commit(struct moat_db *db)
{
    if (!tx_open(db)) {
        moat_log(MOAT_LOG_ERROR, "commit without a transaction", "{s:s}",
                 "path", db->path);
        return MOAT_EINVAL;
    }
    if (db->engine == MOAT_DB_POSTGRES)
        return pg_commit(db);
    int rc = run_cached(db, "db_commit", "COMMIT");
    /* A failed COMMIT (SQLITE_BUSY, a deferred constraint, I/O) can leave
     * the transaction open: end it here so no caller forgets to. */
    if (rc != MOAT_OK)
        moat_db_rollback(db);
    return rc;
}

void moat_db_rollback(struct moat_db *db)
{
    /* SQLite rolls back by itself on some errors (full disk, I/O error):
     * a second ROLLBACK would only fail, so check first. */
    if (!tx_open(db))
        return;
    if (db->engine == MOAT_DB_SQLITE) {
        run_cached(db, "db_rollback", "ROLLBACK");
        return;
    }
    db->in_tx = false;
    /* A lost connection took the transaction with it. */
    if (PQstatus(db->pg) == CONNECTION_OK &&
        PQtransactionStatus(db->pg) != PQTRANS_IDLE)
        exec_timed(db, "db_rollback", "ROLLBACK");
}

/* ---- migrations ---- */

/* The migration's text for this database's engine. */
static const char *migration_sql(const struct moat_db *db,
                                 const struct moat_migration *m)
{
    return db->engine == MOAT_DB_POSTGRES ? m->pg : m->sql;
}

int moat_db_schema_version(struct moat_db *db)
{
    struct moat_stmt *s = moat_db_prepare_dialect(
        db, "db_schema_table",
        "SELECT count(*) FROM sqlite_schema "
        "WHERE type = 'table' AND name = 'schema_migrations'",
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
        "AND tablename = 'schema_migrations'");
    if (!s)
        return MOAT_EDB;
    int rc = moat_stmt_step(s);
    bool exists = rc == SQLITE_ROW && moat_stmt_int64(s, 0) > 0;
    moat_stmt_reset(s);
    if (rc != SQLITE_ROW)
        return MOAT_EDB;
    if (!exists)
        return 0;

    s = moat_db_prepare(
        db, "db_schema_version",
        "SELECT coalesce(max(version), 0) FROM schema_migrations");
    if (!s)
        return MOAT_EDB;
    int version = MOAT_EDB;
    if ((rc = moat_stmt_step(s)) == SQLITE_ROW)
        version = (int)moat_stmt_int64(s, 0);
    else
        log_sqlite_error(db, "cannot read schema version", NULL, rc);
    moat_stmt_reset(s);
    return version;
}

static int check_migration_list(const struct moat_db *db,
                                const struct moat_migration *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int prev = i == 0 ? 0 : m[i - 1].version;
        if (m[i].version <= prev || (i == 0 && m[i].version != 1) ||
            !m[i].name || !m[i].sql) {
            moat_log(MOAT_LOG_ERROR,
                     "migrations must be numbered 1, 2, 3... in order",
                     "{s:s, s:i, s:i}", "path", db->path, "index", (int)i,
                     "version", m[i].version);
            return MOAT_EINVAL;
        }
        if (db->engine == MOAT_DB_POSTGRES && !m[i].pg) {
            moat_log(MOAT_LOG_ERROR,
                     "migration has no PostgreSQL text: this store cannot "
                     "run on PostgreSQL",
                     "{s:s, s:i, s:s}", "dsn", db->path, "version",
                     m[i].version, "name", m[i].name);
            return MOAT_EINVAL;
        }
    }
    return MOAT_OK;
}

static const struct moat_migration *
find_migration(const struct moat_migration *m, size_t n, int version)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i].version == version)
            return &m[i];
    }
    return NULL;
}

/*
 * Compare every recorded migration with the code: each must exist in m
 * with the same checksum, and none may be missing below the newest one
 * applied (a migration inserted into history after a later one ran).
 * On success *max_applied is the newest recorded version.
 */
static int check_applied(struct moat_db *db, const struct moat_migration *m,
                         size_t n, int *max_applied)
{
    int rc = MOAT_OK;
    int code_max = n ? m[n - 1].version : 0;
    size_t count = 0;

    *max_applied = 0;
    struct moat_stmt *s = moat_db_prepare(db, "db_migrations_applied",
                                          "SELECT version, name, checksum FROM "
                                          "schema_migrations ORDER BY version");
    if (!s)
        return MOAT_EDB;
    int src;
    while ((src = moat_stmt_step(s)) == SQLITE_ROW) {
        int version = (int)moat_stmt_int64(s, 0);
        const char *name = moat_stmt_text(s, 1);
        const char *sum = moat_stmt_text(s, 2);
        const struct moat_migration *mig = find_migration(m, n, version);
        char want[CHECKSUM_LEN];

        if (version > code_max) {
            moat_log(MOAT_LOG_ERROR, "database schema is newer than this code",
                     "{s:s, s:i, s:i}", "path", db->path, "db_version", version,
                     "code_version", code_max);
            rc = MOAT_ECONFLICT;
            goto out;
        }
        if (!mig) {
            moat_log(MOAT_LOG_ERROR, "applied migration unknown to this code",
                     "{s:s, s:i, s:s}", "path", db->path, "version", version,
                     "name", name ? name : "");
            rc = MOAT_ECONFLICT;
            goto out;
        }
        migration_checksum(migration_sql(db, mig), want);
        if (!sum || strcmp(sum, want) != 0) {
            moat_log(MOAT_LOG_ERROR,
                     "applied migration was edited since; add a new one "
                     "instead",
                     "{s:s, s:i, s:s, s:s, s:s}", "path", db->path, "version",
                     version, "name", mig->name, "recorded_checksum",
                     sum ? sum : "", "code_checksum", want);
            rc = MOAT_ECONFLICT;
            goto out;
        }
        *max_applied = version;
        count++;
    }
    if (src != SQLITE_DONE) {
        rc = moat_db_error(db, src);
        goto out;
    }
    /* Recorded versions are unique and all found in m, so fewer of them
     * than m has up to max_applied means one of those never ran here. */
    size_t expected = 0;
    for (size_t i = 0; i < n && m[i].version <= *max_applied; i++)
        expected++;
    if (count != expected) {
        moat_log(MOAT_LOG_ERROR,
                 "a migration older than the applied ones never ran",
                 "{s:s, s:i}", "path", db->path, "db_version", *max_applied);
        rc = MOAT_ECONFLICT;
    }
out:
    moat_stmt_reset(s);
    return rc;
}

/* Apply one migration and record it, all in one transaction. */
static int apply_one(struct moat_db *db, const struct moat_migration *mig)
{
    char sum[CHECKSUM_LEN];
    char ts[25];
    char *errmsg = NULL;
    uint64_t t0 = moat_mono_ns();
    const char *sql = migration_sql(db, mig);
    int rc;

    migration_checksum(sql, sum);
    if ((rc = moat_db_begin(db)) != MOAT_OK)
        return rc;

    /* Another process may have applied it since we looked: the write lock
     * we now hold makes this check final. */
    struct moat_stmt *s = moat_db_prepare(
        db, "db_migration_find",
        "SELECT checksum FROM schema_migrations WHERE version = ?1");
    if (!s) {
        rc = MOAT_EDB;
        goto out;
    }
    moat_stmt_bind_int64(s, 1, mig->version);
    int src = moat_stmt_step(s);
    if (src == SQLITE_ROW) {
        const char *have = moat_stmt_text(s, 0);
        rc = have && strcmp(have, sum) == 0 ? MOAT_OK : MOAT_ECONFLICT;
        moat_stmt_reset(s);
        goto out;
    }
    moat_stmt_reset(s);
    if (src != SQLITE_DONE)
        goto db_error;

    src = exec_sql(db, sql, &errmsg);
    if (src != SQLITE_OK) {
        moat_log(MOAT_LOG_ERROR, "migration failed", "{s:s, s:i, s:s, s:s}",
                 "path", db->path, "version", mig->version, "name", mig->name,
                 "error", errmsg ? errmsg : "");
        rc = MOAT_EDB;
        goto out;
    }

    if (db->engine == MOAT_DB_SQLITE
            ? sqlite3_get_autocommit(db->h)
            : PQtransactionStatus(db->pg) == PQTRANS_IDLE) {
        /* Its own COMMIT or ROLLBACK ended our transaction: the record
         * below would no longer be atomic with the schema change. */
        moat_log(MOAT_LOG_ERROR, "migration must not end its transaction",
                 "{s:s, s:i, s:s}", "path", db->path, "version", mig->version,
                 "name", mig->name);
        rc = MOAT_EDB;
        goto out;
    }

    moat_time_rfc3339(moat_wall_ms(), ts);
    s = moat_db_prepare(db, "db_migration_record",
                        "INSERT INTO schema_migrations "
                        "(version, name, checksum, applied_at) "
                        "VALUES (?1, ?2, ?3, ?4)");
    if (!s) {
        rc = MOAT_EDB;
        goto out;
    }
    moat_stmt_bind_int64(s, 1, mig->version);
    moat_stmt_bind_text(s, 2, mig->name);
    moat_stmt_bind_text(s, 3, sum);
    moat_stmt_bind_text(s, 4, ts);
    src = moat_stmt_step(s);
    moat_stmt_reset(s);
    if (src != SQLITE_DONE)
        goto db_error;

    if ((rc = moat_db_commit(db)) != MOAT_OK)
        goto out;
    moat_log(MOAT_LOG_INFO, "migration applied", "{s:s, s:i, s:s, s:s, s:f}",
             "path", db->path, "version", mig->version, "name", mig->name,
             "checksum", sum, "duration_ms",
             (double)(moat_mono_ns() - t0) / 1e6);
    return MOAT_OK;

db_error:
    log_sqlite_error(db, "cannot record migration", mig->name, src);
    rc = moat_db_error(db, src);
    if (rc == MOAT_ECONFLICT)
        rc = MOAT_EDB;
out:
    free(errmsg);
    moat_db_rollback(db);
    return rc;
}

int moat_db_migrate(struct moat_db *db, const struct moat_migration *m,
                    size_t n)
{
    int rc, max_applied;

    if ((rc = check_migration_list(db, m, n)) != MOAT_OK)
        return rc;
    /* On PostgreSQL under the write lock: two instances starting at once
     * would race in CREATE TABLE IF NOT EXISTS (a unique violation in the
     * catalog). */
    bool locked = db->engine == MOAT_DB_POSTGRES && !tx_open(db);
    if (locked && (rc = moat_db_begin(db)) != MOAT_OK)
        return rc == MOAT_EBUSY ? rc : MOAT_EDB;
    rc = moat_db_exec(db, "db_migrations_table",
                      db->engine == MOAT_DB_POSTGRES
                          ? "CREATE TABLE IF NOT EXISTS schema_migrations ("
                            " version INTEGER PRIMARY KEY,"
                            " name TEXT NOT NULL,"
                            " checksum TEXT NOT NULL,"
                            " applied_at TEXT NOT NULL)"
                          : "CREATE TABLE IF NOT EXISTS schema_migrations ("
                            " version INTEGER PRIMARY KEY,"
                            " name TEXT NOT NULL,"
                            " checksum TEXT NOT NULL,"
                            " applied_at TEXT NOT NULL"
                            ") STRICT");
    if (locked && rc == MOAT_OK)
        rc = moat_db_commit(db);
    else if (locked)
        moat_db_rollback(db);
    if (rc != MOAT_OK)
        return rc == MOAT_EBUSY ? rc : MOAT_EDB;
    if ((rc = check_applied(db, m, n, &max_applied)) != MOAT_OK)
        return rc;

    for (size_t i = 0; i < n; i++) {
        if (m[i].version <= max_applied)
            continue;
        if ((rc = apply_one(db, &m[i])) != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

/* ---- engine-neutral parameters and columns ---- */

static int bind_result(struct moat_stmt *s, int i, int rc)
{
    if (rc == SQLITE_OK)
        return MOAT_OK;
    log_sqlite_error(s->db, "cannot bind parameter", s->name, rc);
    MOAT_UNUSED(i);
    return MOAT_EDB;
}

/* Set parameter i of a PostgreSQL statement; own (may be NULL) becomes
 * the statement's. */
static int pg_bind(struct moat_stmt *s, int i, const char *v, int len, int fmt,
                   char *own)
{
    if (i < 1 || i > s->nparams) {
        moat_log(MOAT_LOG_ERROR, "cannot bind parameter", "{s:s, s:i, s:i}",
                 "statement", s->name, "index", i, "parameters", s->nparams);
        free(own);
        return MOAT_EDB;
    }
    free(s->owned[i - 1]);
    s->owned[i - 1] = own;
    s->values[i - 1] = v;
    s->lengths[i - 1] = len;
    s->formats[i - 1] = fmt;
    return MOAT_OK;
}

struct moat_stmt *moat_db_prepare_dialect(struct moat_db *db, const char *name,
                                          const char *sqlite_sql,
                                          const char *pg_sql)
{
    return moat_db_prepare(
        db, name, db->engine == MOAT_DB_POSTGRES ? pg_sql : sqlite_sql);
}

int moat_stmt_bind_int64(struct moat_stmt *s, int i, int64_t v)
{
    if (s->db->engine == MOAT_DB_POSTGRES) {
        char *own = moat_xasprintf("%" PRId64, v);
        return pg_bind(s, i, own, 0, 0, own);
    }
    return bind_result(s, i, sqlite3_bind_int64(s->st, i, v));
}

int moat_stmt_bind_text(struct moat_stmt *s, int i, const char *v)
{
    if (!v)
        return moat_stmt_bind_null(s, i);
    if (s->db->engine == MOAT_DB_POSTGRES)
        return pg_bind(s, i, v, 0, 0, NULL);
    return bind_result(s, i, sqlite3_bind_text(s->st, i, v, -1, SQLITE_STATIC));
}

int moat_stmt_bind_textn(struct moat_stmt *s, int i, const char *v, size_t n)
{
    if (!v)
        return moat_stmt_bind_null(s, i);
    if (s->db->engine == MOAT_DB_POSTGRES) {
        /* Text parameters travel NUL-terminated. */
        char *own = moat_xmalloc(n + 1);
        memcpy(own, v, n);
        own[n] = '\0';
        return pg_bind(s, i, own, 0, 0, own);
    }
    return bind_result(
        s, i, sqlite3_bind_text64(s->st, i, v, n, SQLITE_STATIC, SQLITE_UTF8));
}

int moat_stmt_bind_blob(struct moat_stmt *s, int i, const void *v, size_t n)
{
    /* A zero-length blob is a blob, not NULL: SQLite needs a non-NULL
     * pointer to tell them apart. */
    static const char empty[1];
    if (s->db->engine == MOAT_DB_POSTGRES) {
        /* Binary format: bytea's wire form is the bytes themselves. */
        if (n > INT32_MAX) {
            moat_log(MOAT_LOG_ERROR, "blob too large to bind", "{s:s}",
                     "statement", s->name);
            return MOAT_EDB;
        }
        return pg_bind(s, i, v ? v : empty, (int)n, 1, NULL);
    }
    return bind_result(
        s, i, sqlite3_bind_blob64(s->st, i, v ? v : empty, n, SQLITE_STATIC));
}

int moat_stmt_bind_null(struct moat_stmt *s, int i)
{
    if (s->db->engine == MOAT_DB_POSTGRES)
        return pg_bind(s, i, NULL, 0, 0, NULL);
    return bind_result(s, i, sqlite3_bind_null(s->st, i));
}

/* The text of column col in the current PostgreSQL row; NULL for SQL NULL
 * or when there is no such row or column. */
static const char *pg_value(struct moat_stmt *s, int col)
{
    if (!s->res || s->row < 0 || s->row >= s->nrows || col < 0 ||
        col >= PQnfields(s->res) || PQgetisnull(s->res, s->row, col))
        return NULL;
    return PQgetvalue(s->res, s->row, col);
}

int64_t moat_stmt_int64(struct moat_stmt *s, int col)
{
    if (s->db->engine == MOAT_DB_SQLITE)
        return sqlite3_column_int64(s->st, col);
    const char *v = pg_value(s, col);
    if (!v)
        return 0;
    if (strcmp(v, "t") == 0) /* boolean */
        return 1;
    return strtoll(v, NULL, 10);
}

double moat_stmt_double(struct moat_stmt *s, int col)
{
    if (s->db->engine == MOAT_DB_SQLITE)
        return sqlite3_column_double(s->st, col);
    const char *v = pg_value(s, col);
    if (!v)
        return 0;
    if (strcmp(v, "t") == 0)
        return 1;
    return strtod(v, NULL);
}

const char *moat_stmt_text(struct moat_stmt *s, int col)
{
    if (s->db->engine == MOAT_DB_SQLITE)
        return (const char *)sqlite3_column_text(s->st, col);
    return pg_value(s, col);
}

const void *moat_stmt_blob(struct moat_stmt *s, int col, size_t *n)
{
    if (s->db->engine == MOAT_DB_SQLITE) {
        const void *p = sqlite3_column_blob(s->st, col);
        *n = (size_t)sqlite3_column_bytes(s->st, col);
        return p;
    }
    *n = 0;
    const char *v = pg_value(s, col);
    if (!v)
        return NULL;
    if (PQftype(s->res, col) != PG_BYTEA_OID) {
        *n = strlen(v);
        return v;
    }
    /* Results come in text format, where bytea is "\x<hex>": decoded once
     * per row and column. */
    if (!s->blobs) {
        s->nblobs = PQnfields(s->res);
        s->blobs = moat_xcalloc((size_t)s->nblobs, sizeof(*s->blobs));
        s->blob_lens = moat_xcalloc((size_t)s->nblobs, sizeof(*s->blob_lens));
    }
    if (!s->blobs[col])
        s->blobs[col] =
            PQunescapeBytea((const unsigned char *)v, &s->blob_lens[col]);
    *n = s->blobs[col] ? s->blob_lens[col] : 0;
    return s->blobs[col];
}

bool moat_stmt_is_null(struct moat_stmt *s, int col)
{
    if (s->db->engine == MOAT_DB_SQLITE)
        return sqlite3_column_type(s->st, col) == SQLITE_NULL;
    return pg_value(s, col) == NULL;
}

int moat_stmt_columns(struct moat_stmt *s)
{
    if (s->db->engine == MOAT_DB_SQLITE)
        return sqlite3_column_count(s->st);
    return s->res ? PQnfields(s->res) : 0;
}

const char *moat_stmt_column_name(struct moat_stmt *s, int col)
{
    const char *name = NULL;
    if (s->db->engine == MOAT_DB_SQLITE)
        name = sqlite3_column_name(s->st, col);
    else if (s->res && col >= 0 && col < PQnfields(s->res))
        name = PQfname(s->res, col);
    return name ? name : "";
}

bool moat_db_in_transaction(struct moat_db *db)
{
    if (db->engine == MOAT_DB_SQLITE)
        return !sqlite3_get_autocommit(db->h);
    return db->in_tx && PQstatus(db->pg) == CONNECTION_OK &&
           PQtransactionStatus(db->pg) != PQTRANS_IDLE;
}

int64_t moat_db_changes(struct moat_db *db)
{
    if (db->engine == MOAT_DB_POSTGRES)
        return db->changes;
    return sqlite3_changes64(db->h);
}

enum moat_db_engine moat_db_engine(const struct moat_db *db)
{
    return db->engine;
}

/* ---- PostgreSQL notifications ---- */

#define LISTEN_RETRY_MS 1000

struct moat_db_listener {
    struct event_base *base;
    char *dsn;    /* owned copy (secret) */
    char *path;   /* owned; the redacted DSN, for logs */
    char *listen; /* LISTEN "<channel>" */
    PGconn *conn; /* NULL while disconnected */
    struct event *readable;
    struct event *retry;
    void (*fn)(void *arg);
    void *arg;
    bool down_logged;
};

static void listener_drop(struct moat_db_listener *l)
{
    if (l->readable) {
        event_free(l->readable);
        l->readable = NULL;
    }
    if (l->conn) {
        PQfinish(l->conn);
        l->conn = NULL;
    }
}

static void listener_retry_later(struct moat_db_listener *l)
{
    listener_drop(l);
    struct timeval tv = {LISTEN_RETRY_MS / 1000,
                         (LISTEN_RETRY_MS % 1000) * 1000};
    evtimer_add(l->retry, &tv);
}

static void on_listen_readable(evutil_socket_t fd, short what, void *arg)
{
    struct moat_db_listener *l = arg;
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    if (!PQconsumeInput(l->conn)) {
        moat_log(MOAT_LOG_WARN, "database listener lost its connection",
                 "{s:s, s:s}", "dsn", l->path, "error",
                 PQerrorMessage(l->conn));
        listener_retry_later(l);
        return;
    }
    bool any = false;
    PGnotify *n;
    while ((n = PQnotifies(l->conn)) != NULL) {
        any = true;
        PQfreemem(n);
    }
    if (any)
        l->fn(l->arg);
}

/* Connect and LISTEN; false (and a retry armed) when it cannot. */
static bool listener_connect(struct moat_db_listener *l)
{
    l->conn = pg_dial(l->dsn);
    PGresult *r = NULL;
    if (l->conn && PQstatus(l->conn) == CONNECTION_OK)
        r = PQexec(l->conn, l->listen);
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
        if (!l->down_logged)
            moat_log(MOAT_LOG_WARN, "database listener cannot connect",
                     "{s:s, s:s}", "dsn", l->path, "error",
                     l->conn ? PQerrorMessage(l->conn) : "out of memory");
        l->down_logged = true;
        PQclear(r);
        listener_retry_later(l);
        return false;
    }
    PQclear(r);
    PQsetnonblocking(l->conn, 1);
    l->readable = event_new(l->base, PQsocket(l->conn), EV_READ | EV_PERSIST,
                            on_listen_readable, l);
    if (!l->readable)
        moat_die("cannot create the listener's event");
    event_add(l->readable, NULL);
    l->down_logged = false;
    return true;
}

static void on_listen_retry(evutil_socket_t fd, short what, void *arg)
{
    struct moat_db_listener *l = arg;
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    /* Notifications sent while it was away are lost: catch up once. */
    if (listener_connect(l))
        l->fn(l->arg);
}

int moat_db_listen(struct moat_db_listener **out, struct moat_db *db,
                   struct event_base *base, const char *channel,
                   void (*fn)(void *arg), void *arg)
{
    *out = NULL;
    if (db->engine != MOAT_DB_POSTGRES || !channel || !*channel ||
        strlen(channel) > 63 ||
        strspn(channel, "abcdefghijklmnopqrstuvwxyz_") != strlen(channel))
        return MOAT_EINVAL;
    struct moat_db_listener *l = moat_xcalloc(1, sizeof(*l));
    l->base = base;
    l->dsn = moat_xstrdup(db->pg_dsn);
    l->path = moat_xstrdup(db->path);
    l->listen = moat_xasprintf("LISTEN %s", channel);
    l->fn = fn;
    l->arg = arg;
    l->retry = evtimer_new(base, on_listen_retry, l);
    if (!l->retry)
        moat_die("cannot create the listener's timer");
    listener_connect(l); /* retries by itself */
    *out = l;
    return MOAT_OK;
}

void moat_db_listener_free(struct moat_db_listener *l)
{
    if (!l)
        return;
    listener_drop(l);
    event_free(l->retry);
    moat_free_secret(l->dsn);
    free(l->path);
    free(l->listen);
    free(l);
}

/* ---- accessors ---- */

sqlite3 *moat_db_handle(struct moat_db *db)
{
    return db->h;
}

const char *moat_db_errmsg(struct moat_db *db)
{
    if (db->engine == MOAT_DB_POSTGRES)
        return db->pg_error ? db->pg_error : "";
    return sqlite3_errmsg(db->h);
}

const char *moat_db_path(const struct moat_db *db)
{
    return db->path;
}

int moat_db_open_migrated(struct moat_db **out, const char *data_dir,
                          const char *file, const struct moat_db_options *opts,
                          struct moat_metrics *metrics,
                          const struct moat_migration *m, size_t n)
{
    struct moat_db *db = NULL;
    char *path = NULL;
    int rc;
    if (opts && opts->dsn && *opts->dsn) {
        rc = moat_db_open(&db, NULL, opts, metrics);
    } else {
        path = moat_xasprintf("%s/%s", data_dir, file);
        rc = moat_db_open(&db, path, opts, metrics);
    }
    if (rc == MOAT_OK)
        rc = moat_db_migrate(db, m, n);
    if (rc == MOAT_OK)
        *out = db;
    else if (db)
        moat_db_close(db);
    free(path);
    return rc;
}

bool moat_db_migrated(struct moat_db *db, const struct moat_migration *m,
                      size_t n, const char **why)
{
    if (!db) {
        *why = "database not open";
        return false;
    }
    /* A query, not a flag: it also proves the database still answers. */
    int v = moat_db_schema_version(db);
    if (v < 0) {
        *why = "database unavailable";
        return false;
    }
    if (n == 0 || v != m[n - 1].version) {
        *why = "database migrations not applied";
        return false;
    }
    return true;
}
