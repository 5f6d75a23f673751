/* db.c - a service's own SQLite database (see moat/db.h). */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/db.h"
#include "moat/log.h"

#define DEFAULT_BUSY_TIMEOUT_MS 5000
/* Buckets of the statement cache: services have tens of statements. */
#define STMT_BUCKETS 64
/* 16 hex digits of a 64-bit FNV-1a hash, plus the NUL. */
#define CHECKSUM_LEN 17

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
};

struct moat_db {
    sqlite3 *h;
    char *path;                            /* owned copy */
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
    MOAT_UNUSED(db);
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
    moat_log(is_expected_error(rc) ? MOAT_LOG_DEBUG : MOAT_LOG_ERROR, what,
             "{s:s, s:s, s:i, s:s}", "statement", name ? name : "", "path",
             db->path, "sqlite_code", rc, "error", sqlite3_errmsg(db->h));
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

int moat_db_open(struct moat_db **out, const char *path,
                 const struct moat_db_options *opts,
                 struct moat_metrics *metrics)
{
    int rc;
    struct moat_db *db = NULL;

    *out = NULL;
    if (!path || !*path)
        return MOAT_EINVAL;
    if ((rc = create_private_file(path)) != MOAT_OK)
        return rc;

    db = moat_xcalloc(1, sizeof(*db));
    db->path = moat_xstrdup(path);
    if (metrics) {
        db->durations = moat_metrics_family(
            metrics, MOAT_HISTOGRAM, DURATION_FAMILY,
            "Time spent in SQLite per statement execution.", "statement",
            moat_latency_buckets, moat_latency_buckets_len);
        db->errors = moat_metrics_family(
            metrics, MOAT_COUNTER, ERRORS_FAMILY,
            "SQLite statement executions that failed.", "statement", NULL, 0);
    }

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

static void stmt_free(struct moat_stmt *s)
{
    sqlite3_finalize(s->st);
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
        sqlite3_clear_bindings(s->st);
        return s;
    }

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

int moat_stmt_step(struct moat_stmt *s)
{
    uint64_t t0 = moat_mono_ns();
    int rc = sqlite3_step(s->st);
    s->busy_ns += moat_mono_ns() - t0;
    s->running = true;

    if (rc == SQLITE_ROW)
        return rc;
    if (rc != SQLITE_DONE) {
        if (s->errors)
            moat_metric_add(s->errors, 1);
        log_sqlite_error(s->db, "statement failed", s->name, rc);
    }
    stmt_finish(s);
    return rc;
}

void moat_stmt_reset(struct moat_stmt *s)
{
    stmt_finish(s);
    /* The return value repeats the last step's error, already handled. */
    sqlite3_reset(s->st);
}

int moat_db_exec(struct moat_db *db, const char *name, const char *sql)
{
    char *errmsg = NULL;
    uint64_t t0 = moat_mono_ns();
    int rc = sqlite3_exec(db->h, sql, NULL, NULL, &errmsg);
    uint64_t elapsed = moat_mono_ns() - t0;

    if (db->durations)
        moat_metric_observe(series_for(db->durations, name),
                            (double)elapsed / 1e9);
    if (rc != SQLITE_OK) {
        if (db->errors)
            moat_metric_add(series_for(db->errors, name), 1);
        log_sqlite_error(db, "statement failed", name, rc);
    }
    sqlite3_free(errmsg);
    return moat_db_error(db, rc);
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

int moat_db_begin(struct moat_db *db)
{
    if (!sqlite3_get_autocommit(db->h)) {
        moat_log(MOAT_LOG_ERROR, "transaction already open", "{s:s}", "path",
                 db->path);
        return MOAT_EINVAL;
    }
    return run_cached(db, "db_begin", "BEGIN IMMEDIATE");
}

int moat_db_commit(struct moat_db *db)
{
    if (sqlite3_get_autocommit(db->h)) {
        moat_log(MOAT_LOG_ERROR, "commit without a transaction", "{s:s}",
                 "path", db->path);
        return MOAT_EINVAL;
    }
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
    if (sqlite3_get_autocommit(db->h))
        return;
    run_cached(db, "db_rollback", "ROLLBACK");
}

/* ---- migrations ---- */

static bool table_exists(struct moat_db *db, const char *table)
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db->h,
                           "SELECT 1 FROM sqlite_schema "
                           "WHERE type = 'table' AND name = ?1",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    return found;
}

int moat_db_schema_version(struct moat_db *db)
{
    sqlite3_stmt *st = NULL;
    int version = 0;

    if (!table_exists(db, "schema_migrations"))
        return 0;
    int rc = sqlite3_prepare_v2(
        db->h, "SELECT coalesce(max(version), 0) FROM schema_migrations", -1,
        &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        version = sqlite3_column_int(st, 0);
    } else {
        log_sqlite_error(db, "cannot read schema version", NULL, rc);
        version = MOAT_EDB;
    }
    sqlite3_finalize(st);
    return version;
}

static int check_migration_list(const struct moat_migration *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int prev = i == 0 ? 0 : m[i - 1].version;
        if (m[i].version <= prev || (i == 0 && m[i].version != 1) ||
            !m[i].name || !m[i].sql) {
            moat_log(MOAT_LOG_ERROR,
                     "migrations must be numbered 1, 2, 3... in order",
                     "{s:i, s:i}", "index", (int)i, "version", m[i].version);
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
    sqlite3_stmt *st = NULL;
    int rc = MOAT_OK;
    int code_max = n ? m[n - 1].version : 0;
    size_t count = 0;

    *max_applied = 0;
    int src = sqlite3_prepare_v2(db->h,
                                 "SELECT version, name, checksum FROM "
                                 "schema_migrations ORDER BY version",
                                 -1, &st, NULL);
    if (src != SQLITE_OK)
        goto db_error;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int version = sqlite3_column_int(st, 0);
        const char *name = (const char *)sqlite3_column_text(st, 1);
        const char *sum = (const char *)sqlite3_column_text(st, 2);
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
        migration_checksum(mig->sql, want);
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
    if (src != SQLITE_DONE)
        goto db_error;
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
    goto out;
db_error:
    log_sqlite_error(db, "cannot read applied migrations", NULL, src);
    rc = moat_db_error(db, src);
out:
    sqlite3_finalize(st);
    return rc;
}

/* Apply one migration and record it, all in one transaction. */
static int apply_one(struct moat_db *db, const struct moat_migration *mig)
{
    char sum[CHECKSUM_LEN];
    char ts[25];
    sqlite3_stmt *st = NULL;
    char *errmsg = NULL;
    uint64_t t0 = moat_mono_ns();
    int rc;

    migration_checksum(mig->sql, sum);
    if ((rc = moat_db_begin(db)) != MOAT_OK)
        return rc;

    /* Another process may have applied it since we looked: the write lock
     * we now hold makes this check final. */
    int src = sqlite3_prepare_v2(
        db->h, "SELECT checksum FROM schema_migrations WHERE version = ?1", -1,
        &st, NULL);
    if (src != SQLITE_OK)
        goto db_error;
    sqlite3_bind_int(st, 1, mig->version);
    src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        const char *have = (const char *)sqlite3_column_text(st, 0);
        rc = have && strcmp(have, sum) == 0 ? MOAT_OK : MOAT_ECONFLICT;
        goto out;
    }
    if (src != SQLITE_DONE)
        goto db_error;
    sqlite3_finalize(st);
    st = NULL;

    src = sqlite3_exec(db->h, mig->sql, NULL, NULL, &errmsg);
    if (src != SQLITE_OK) {
        moat_log(MOAT_LOG_ERROR, "migration failed", "{s:s, s:i, s:s, s:s}",
                 "path", db->path, "version", mig->version, "name", mig->name,
                 "error", errmsg ? errmsg : sqlite3_errstr(src));
        rc = MOAT_EDB;
        goto out;
    }

    if (sqlite3_get_autocommit(db->h)) {
        /* Its own COMMIT or ROLLBACK ended our transaction: the record
         * below would no longer be atomic with the schema change. */
        moat_log(MOAT_LOG_ERROR, "migration must not end its transaction",
                 "{s:s, s:i, s:s}", "path", db->path, "version", mig->version,
                 "name", mig->name);
        rc = MOAT_EDB;
        goto out;
    }

    moat_time_rfc3339(moat_wall_ms(), ts);
    src = sqlite3_prepare_v2(db->h,
                             "INSERT INTO schema_migrations "
                             "(version, name, checksum, applied_at) "
                             "VALUES (?1, ?2, ?3, ?4)",
                             -1, &st, NULL);
    if (src != SQLITE_OK)
        goto db_error;
    sqlite3_bind_int(st, 1, mig->version);
    sqlite3_bind_text(st, 2, mig->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, sum, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, ts, -1, SQLITE_STATIC);
    if ((src = sqlite3_step(st)) != SQLITE_DONE)
        goto db_error;
    sqlite3_finalize(st);
    st = NULL;

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
    sqlite3_finalize(st);
    sqlite3_free(errmsg);
    moat_db_rollback(db);
    return rc;
}

int moat_db_migrate(struct moat_db *db, const struct moat_migration *m,
                    size_t n)
{
    int rc, max_applied;

    if ((rc = check_migration_list(m, n)) != MOAT_OK)
        return rc;
    rc = moat_db_exec(db, "db_migrations_table",
                      "CREATE TABLE IF NOT EXISTS schema_migrations ("
                      " version INTEGER PRIMARY KEY,"
                      " name TEXT NOT NULL,"
                      " checksum TEXT NOT NULL,"
                      " applied_at TEXT NOT NULL"
                      ") STRICT");
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

struct moat_stmt *moat_db_prepare_dialect(struct moat_db *db, const char *name,
                                          const char *sqlite_sql,
                                          const char *pg_sql)
{
    MOAT_UNUSED(pg_sql);
    return moat_db_prepare(db, name, sqlite_sql);
}

int moat_stmt_bind_int64(struct moat_stmt *s, int i, int64_t v)
{
    return bind_result(s, i, sqlite3_bind_int64(s->st, i, v));
}

int moat_stmt_bind_text(struct moat_stmt *s, int i, const char *v)
{
    if (!v)
        return moat_stmt_bind_null(s, i);
    return bind_result(s, i, sqlite3_bind_text(s->st, i, v, -1, SQLITE_STATIC));
}

int moat_stmt_bind_textn(struct moat_stmt *s, int i, const char *v, size_t n)
{
    if (!v)
        return moat_stmt_bind_null(s, i);
    return bind_result(
        s, i, sqlite3_bind_text64(s->st, i, v, n, SQLITE_STATIC, SQLITE_UTF8));
}

int moat_stmt_bind_blob(struct moat_stmt *s, int i, const void *v, size_t n)
{
    /* A zero-length blob is a blob, not NULL: SQLite needs a non-NULL
     * pointer to tell them apart. */
    static const char empty[1];
    return bind_result(
        s, i, sqlite3_bind_blob64(s->st, i, v ? v : empty, n, SQLITE_STATIC));
}

int moat_stmt_bind_null(struct moat_stmt *s, int i)
{
    return bind_result(s, i, sqlite3_bind_null(s->st, i));
}

int64_t moat_stmt_int64(struct moat_stmt *s, int col)
{
    return sqlite3_column_int64(s->st, col);
}

double moat_stmt_double(struct moat_stmt *s, int col)
{
    return sqlite3_column_double(s->st, col);
}

const char *moat_stmt_text(struct moat_stmt *s, int col)
{
    return (const char *)sqlite3_column_text(s->st, col);
}

const void *moat_stmt_blob(struct moat_stmt *s, int col, size_t *n)
{
    const void *p = sqlite3_column_blob(s->st, col);
    *n = (size_t)sqlite3_column_bytes(s->st, col);
    return p;
}

bool moat_stmt_is_null(struct moat_stmt *s, int col)
{
    return sqlite3_column_type(s->st, col) == SQLITE_NULL;
}

int moat_stmt_columns(struct moat_stmt *s)
{
    return sqlite3_column_count(s->st);
}

int64_t moat_db_changes(struct moat_db *db)
{
    return sqlite3_changes64(db->h);
}

enum moat_db_engine moat_db_engine(const struct moat_db *db)
{
    MOAT_UNUSED(db);
    return MOAT_DB_SQLITE;
}

/* ---- accessors ---- */

sqlite3 *moat_db_handle(struct moat_db *db)
{
    return db->h;
}

const char *moat_db_errmsg(struct moat_db *db)
{
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
    if (opts && opts->dsn && *opts->dsn) {
        moat_log(MOAT_LOG_ERROR, "this build has no PostgreSQL engine", "{s:s}",
                 "file", file);
        return MOAT_EINVAL;
    }
    char *path = moat_xasprintf("%s/%s", data_dir, file);
    int rc = moat_db_open(&db, path, opts, metrics);
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
