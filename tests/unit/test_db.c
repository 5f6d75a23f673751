/* test_db.c - unit tests for lib/db.c: setup, migrations, transactions,
 * the statement cache, error mapping and statement metrics. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/db.h"
#include "moat/log.h"
#include "moat/metrics.h"

struct fixture {
    char dir[64];
    char path[128];
    struct moat_metrics *metrics;
    struct moat_db *db;
};

static const struct moat_migration base_migrations[] = {
    {1, "create widgets",
     "CREATE TABLE widgets (id INTEGER PRIMARY KEY, name TEXT NOT NULL "
     "UNIQUE) STRICT;",
     NULL},
    {2, "create parts",
     "CREATE TABLE parts (id INTEGER PRIMARY KEY, widget_id INTEGER NOT NULL "
     "REFERENCES widgets(id)) STRICT;"
     "CREATE INDEX parts_widget ON parts(widget_id);",
     NULL},
};

static int setup(void **state)
{
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-test-db-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/test.db", f->dir);
    f->metrics = moat_metrics_new();
    *state = f;
    return 0;
}

static void remove_db_files(const char *path)
{
    const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(suffixes); i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    moat_db_close(f->db);
    moat_metrics_free(f->metrics);
    remove_db_files(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct moat_db *open_db(struct fixture *f,
                               const struct moat_db_options *opts)
{
    struct moat_db *db = NULL;
    assert_int_equal(moat_db_open(&db, f->path, opts, f->metrics), MOAT_OK);
    assert_non_null(db);
    return db;
}

static void reopen(struct fixture *f)
{
    moat_db_close(f->db);
    f->db = open_db(f, NULL);
}

/* First column of the first row of sql as an integer (-1 if no row). */
static int64_t query_int(struct moat_db *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    assert_int_equal(sqlite3_prepare_v2(moat_db_handle(db), sql, -1, &st, NULL),
                     SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* First column of the first row of sql as text, copied into out. */
static void query_text(struct moat_db *db, const char *sql, char *out,
                       size_t len)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(moat_db_handle(db), sql, -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    snprintf(out, len, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static bool table_exists(struct moat_db *db, const char *name)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(moat_db_handle(db),
                                        "SELECT 1 FROM sqlite_schema "
                                        "WHERE type = 'table' AND name = ?1",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    bool found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

static void test_fresh_db_migrates(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_schema_version(f->db), 0);

    assert_int_equal(moat_db_migrate(f->db, base_migrations,
                                     MOAT_ARRAY_LEN(base_migrations)),
                     MOAT_OK);
    assert_int_equal(moat_db_schema_version(f->db), 2);
    assert_true(table_exists(f->db, "widgets"));
    assert_true(table_exists(f->db, "parts"));
    assert_int_equal(query_int(f->db, "SELECT count(*) FROM "
                                      "schema_migrations"),
                     2);

    char text[64];
    query_text(f->db, "SELECT name FROM schema_migrations WHERE version = 2",
               text, sizeof(text));
    assert_string_equal(text, "create parts");
    query_text(f->db,
               "SELECT checksum FROM schema_migrations WHERE version = 1", text,
               sizeof(text));
    assert_int_equal(strlen(text), 16);
    assert_int_equal(strspn(text, "0123456789abcdef"), 16);
    query_text(f->db,
               "SELECT applied_at FROM schema_migrations WHERE version = 1",
               text, sizeof(text));
    assert_int_equal(strlen(text), 24); /* 2026-01-02T03:04:05.678Z */
    assert_int_equal(text[23], 'Z');
    assert_string_equal(moat_db_path(f->db), f->path);
}

static void test_migrate_is_idempotent(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);
    char before[64], after[64];
    query_text(f->db, "SELECT group_concat(applied_at) FROM schema_migrations",
               before, sizeof(before));

    reopen(f);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);
    query_text(f->db, "SELECT group_concat(applied_at) FROM schema_migrations",
               after, sizeof(after));
    assert_string_equal(before, after);
    assert_int_equal(query_int(f->db, "SELECT count(*) FROM "
                                      "schema_migrations"),
                     2);

    /* A new migration appended later is the only one applied. */
    const struct moat_migration more[] = {
        base_migrations[0],
        base_migrations[1],
        {3, "add colour", "ALTER TABLE widgets ADD COLUMN colour TEXT;", NULL},
    };
    assert_int_equal(moat_db_migrate(f->db, more, 3), MOAT_OK);
    assert_int_equal(moat_db_schema_version(f->db), 3);
    assert_int_equal(query_int(f->db, "SELECT count(*) FROM "
                                      "schema_migrations"),
                     3);
}

static void test_edited_migration_refused(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);

    struct moat_migration edited[] = {base_migrations[0], base_migrations[1]};
    edited[0].sql = "CREATE TABLE widgets (id INTEGER PRIMARY KEY) STRICT;";
    reopen(f);
    assert_int_equal(moat_db_migrate(f->db, edited, 2), MOAT_ECONFLICT);
    assert_int_equal(moat_db_schema_version(f->db), 2);
}

static void test_newer_database_refused(void **state)
{
    struct fixture *f = *state;
    const struct moat_migration three[] = {
        base_migrations[0],
        base_migrations[1],
        {3, "create gadgets", "CREATE TABLE gadgets (id INTEGER) STRICT;",
         NULL},
    };
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, three, 3), MOAT_OK);

    reopen(f);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2),
                     MOAT_ECONFLICT);
    assert_int_equal(moat_db_schema_version(f->db), 3);
}

static void test_inserted_old_migration_refused(void **state)
{
    struct fixture *f = *state;
    const struct moat_migration skip[] = {
        base_migrations[0],
        {3, "create gadgets", "CREATE TABLE gadgets (id INTEGER) STRICT;",
         NULL},
    };
    const struct moat_migration all[] = {
        base_migrations[0],
        base_migrations[1],
        skip[1],
    };
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, skip, 2), MOAT_OK);
    /* Version 2 appeared in the code after 3 had run: refused. */
    assert_int_equal(moat_db_migrate(f->db, all, 3), MOAT_ECONFLICT);
    assert_false(table_exists(f->db, "parts"));
}

static void test_bad_migration_list_refused(void **state)
{
    struct fixture *f = *state;
    const struct moat_migration from_two[] = {
        {2, "x", "CREATE TABLE x (a INTEGER) STRICT;", NULL},
    };
    const struct moat_migration unordered[] = {
        base_migrations[1],
        base_migrations[0],
    };
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, from_two, 1), MOAT_EINVAL);
    assert_int_equal(moat_db_migrate(f->db, unordered, 2), MOAT_EINVAL);
    assert_int_equal(moat_db_schema_version(f->db), 0);
}

static void test_failing_migration_rolls_back(void **state)
{
    struct fixture *f = *state;
    const struct moat_migration bad[] = {
        base_migrations[0],
        {2, "half done",
         "CREATE TABLE half (id INTEGER PRIMARY KEY) STRICT;"
         "INSERT INTO half (id) VALUES (1);"
         "INSERT INTO no_such_table (id) VALUES (1);",
         NULL},
    };
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, bad, 2), MOAT_EDB);
    assert_int_equal(moat_db_schema_version(f->db), 1);
    assert_true(table_exists(f->db, "widgets"));
    assert_false(table_exists(f->db, "half"));
    assert_true(sqlite3_get_autocommit(moat_db_handle(f->db)));

    /* A migration that ends its own transaction is refused as well. */
    const struct moat_migration commits[] = {
        base_migrations[0],
        {2, "commits", "CREATE TABLE c (id INTEGER) STRICT; COMMIT;", NULL},
    };
    assert_int_equal(moat_db_migrate(f->db, commits, 2), MOAT_EDB);
    assert_int_equal(moat_db_schema_version(f->db), 1);

    /* Once fixed, it applies. */
    reopen(f);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);
    assert_int_equal(moat_db_schema_version(f->db), 2);
}

static void insert_widget(struct moat_db *db, const char *name, int expect)
{
    struct moat_stmt *s = moat_db_prepare(
        db, "widget_insert", "INSERT INTO widgets (name) VALUES (?1)");
    assert_non_null(s);
    sqlite3_bind_text(moat_stmt_raw(s), 1, name, -1, SQLITE_STATIC);
    int rc = moat_stmt_step(s);
    assert_int_equal(moat_db_error(db, rc), expect);
    moat_stmt_reset(s);
}

static void test_transactions(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);

    assert_int_equal(moat_db_begin(f->db), MOAT_OK);
    assert_false(sqlite3_get_autocommit(moat_db_handle(f->db)));
    assert_int_equal(moat_db_begin(f->db), MOAT_EINVAL); /* nested */
    insert_widget(f->db, "rolled back", MOAT_OK);
    moat_db_rollback(f->db);
    assert_true(sqlite3_get_autocommit(moat_db_handle(f->db)));
    assert_int_equal(query_int(f->db, "SELECT count(*) FROM widgets"), 0);

    assert_int_equal(moat_db_begin(f->db), MOAT_OK);
    insert_widget(f->db, "kept", MOAT_OK);
    assert_int_equal(moat_db_commit(f->db), MOAT_OK);
    assert_int_equal(query_int(f->db, "SELECT count(*) FROM widgets"), 1);

    /* Commit without a transaction is an error; rollback is harmless. */
    assert_int_equal(moat_db_commit(f->db), MOAT_EINVAL);
    moat_db_rollback(f->db);

    /* The commit is durable: another connection sees it. */
    reopen(f);
    assert_int_equal(query_int(f->db, "SELECT count(*) FROM widgets"), 1);
}

/* A COMMIT that fails leaves no transaction open: moat_db_commit rolls
 * back itself, so the next begin works and nothing of it was kept. */
static void test_failed_commit_rolls_back(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_exec(f->db, "schema",
                                  "CREATE TABLE parent (id INTEGER PRIMARY "
                                  "KEY) STRICT; CREATE TABLE child (id "
                                  "INTEGER PRIMARY KEY, parent INTEGER "
                                  "REFERENCES parent (id) DEFERRABLE "
                                  "INITIALLY DEFERRED) STRICT;"),
                     MOAT_OK);
    assert_int_equal(moat_db_begin(f->db), MOAT_OK);
    /* A deferred foreign key: checked only by COMMIT, which then fails
     * with the transaction still open (SQLite does not end it). */
    assert_int_equal(
        moat_db_exec(f->db, "orphan", "INSERT INTO child VALUES (1, 42)"),
        MOAT_OK);
    assert_int_not_equal(moat_db_commit(f->db), MOAT_OK);
    assert_true(sqlite3_get_autocommit(moat_db_handle(f->db)));
    assert_int_equal(query_int(f->db, "SELECT count(*) FROM child"), 0);
    assert_int_equal(moat_db_begin(f->db), MOAT_OK);
    assert_int_equal(moat_db_commit(f->db), MOAT_OK);
}

static void test_busy_maps_to_ebusy(void **state)
{
    struct fixture *f = *state;
    struct moat_db_options quick = {.busy_timeout_ms = 50};
    f->db = open_db(f, NULL);
    struct moat_db *other = open_db(f, &quick);

    assert_int_equal(moat_db_begin(f->db), MOAT_OK);
    assert_int_equal(moat_db_begin(other), MOAT_EBUSY);
    assert_true(sqlite3_get_autocommit(moat_db_handle(other)));
    moat_db_rollback(f->db);
    assert_int_equal(moat_db_begin(other), MOAT_OK);
    assert_int_equal(moat_db_commit(other), MOAT_OK);
    moat_db_close(other);
}

static void test_statement_cache(void **state)
{
    struct fixture *f = *state;
    const char *sql = "SELECT ?1 UNION ALL SELECT 2";
    f->db = open_db(f, NULL);

    struct moat_stmt *s = moat_db_prepare(f->db, "pair", sql);
    assert_non_null(s);
    sqlite3_stmt *raw = moat_stmt_raw(s);
    sqlite3_bind_int(raw, 1, 42);
    assert_int_equal(moat_stmt_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(raw, 0), 42);
    assert_true(sqlite3_stmt_busy(raw));

    /* Same name (even from a copy of the SQL): same statement, reset mid
     * way through its rows and with the binding gone. */
    char copy[64];
    snprintf(copy, sizeof(copy), "%s", sql);
    struct moat_stmt *again = moat_db_prepare(f->db, "pair", copy);
    assert_ptr_equal(again, s);
    assert_ptr_equal(moat_stmt_raw(again), raw);
    assert_false(sqlite3_stmt_busy(raw));
    assert_int_equal(moat_stmt_step(again), SQLITE_ROW);
    assert_int_equal(sqlite3_column_type(raw, 0), SQLITE_NULL);
    assert_int_equal(moat_stmt_step(again), SQLITE_ROW);
    assert_int_equal(moat_stmt_step(again), SQLITE_DONE);

    /* Another name is another statement. */
    struct moat_stmt *other = moat_db_prepare(f->db, "other", "SELECT 1");
    assert_non_null(other);
    assert_ptr_not_equal(other, s);

    /* A name reused for different SQL is a programming error. */
    assert_null(moat_db_prepare(f->db, "pair", "SELECT 3"));
    /* Bad SQL and more than one statement are refused. */
    assert_null(moat_db_prepare(f->db, "bad", "SELEKT 1"));
    assert_null(moat_db_prepare(f->db, "two", "SELECT 1; SELECT 2"));
    assert_non_null(
        moat_db_prepare(f->db, "trailing", "SELECT 1; -- a comment\n"));
    /* Double-quoted strings are identifiers only. */
    assert_null(moat_db_prepare(f->db, "dqs", "SELECT \"not a column\""));
    /* The cache still serves the original after all that. */
    assert_ptr_equal(moat_db_prepare(f->db, "pair", sql), s);
}

/* The calls a store uses to run on either engine, here on SQLite. */
static void test_neutral_binds_and_columns(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_engine(f->db), MOAT_DB_SQLITE);
    assert_int_equal(moat_db_exec(f->db, "ddl",
                                  "CREATE TABLE t (i INTEGER, s TEXT, b BLOB)"),
                     MOAT_OK);

    struct moat_stmt *ins = moat_db_prepare(
        f->db, "ins", "INSERT INTO t (i, s, b) VALUES (?, ?, ?)");
    assert_non_null(ins);
    assert_int_equal(moat_stmt_bind_int64(ins, 1, INT64_MAX), MOAT_OK);
    assert_int_equal(moat_stmt_bind_textn(ins, 2, "héllo, world", 6), MOAT_OK);
    assert_int_equal(moat_stmt_bind_blob(ins, 3, "\0\1\2", 3), MOAT_OK);
    assert_int_equal(moat_stmt_step(ins), SQLITE_DONE);
    assert_int_equal(moat_db_changes(f->db), 1);

    /* NULLs, and an empty blob that is not NULL. */
    ins = moat_db_prepare(f->db, "ins",
                          "INSERT INTO t (i, s, b) VALUES (?, ?, ?)");
    assert_int_equal(moat_stmt_bind_null(ins, 1), MOAT_OK);
    assert_int_equal(moat_stmt_bind_text(ins, 2, NULL), MOAT_OK);
    assert_int_equal(moat_stmt_bind_blob(ins, 3, NULL, 0), MOAT_OK);
    assert_int_equal(moat_stmt_step(ins), SQLITE_DONE);
    /* Out of range is an error, not a crash. */
    ins = moat_db_prepare(f->db, "ins",
                          "INSERT INTO t (i, s, b) VALUES (?, ?, ?)");
    assert_int_equal(moat_stmt_bind_int64(ins, 4, 1), MOAT_EDB);

    struct moat_stmt *sel = moat_db_prepare_dialect(
        f->db, "sel", "SELECT i, s, b FROM t ORDER BY rowid",
        "SELECT i, s, b FROM t ORDER BY ctid");
    assert_non_null(sel);
    assert_int_equal(moat_stmt_columns(sel), 3);
    assert_int_equal(moat_stmt_step(sel), SQLITE_ROW);
    assert_true(moat_stmt_int64(sel, 0) == INT64_MAX);
    assert_string_equal(moat_stmt_text(sel, 1), "héllo");
    size_t n = 0;
    const unsigned char *b = moat_stmt_blob(sel, 2, &n);
    assert_int_equal(n, 3);
    assert_int_equal(b[2], 2);
    assert_false(moat_stmt_is_null(sel, 2));
    assert_int_equal(moat_stmt_step(sel), SQLITE_ROW);
    assert_true(moat_stmt_is_null(sel, 0));
    assert_int_equal(moat_stmt_int64(sel, 0), 0);
    assert_null(moat_stmt_text(sel, 1));
    assert_false(moat_stmt_is_null(sel, 2));
    moat_stmt_blob(sel, 2, &n);
    assert_int_equal(n, 0);
    assert_int_equal(moat_stmt_step(sel), SQLITE_DONE);

    struct moat_stmt *del = moat_db_prepare(f->db, "del", "DELETE FROM t");
    assert_int_equal(moat_stmt_step(del), SQLITE_DONE);
    assert_int_equal(moat_db_changes(f->db), 2);
}

static void test_constraint_is_conflict(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);

    insert_widget(f->db, "unique", MOAT_OK);
    insert_widget(f->db, "unique", MOAT_ECONFLICT);

    /* Foreign keys are enforced. */
    struct moat_stmt *s = moat_db_prepare(
        f->db, "part_insert", "INSERT INTO parts (widget_id) VALUES (?1)");
    assert_non_null(s);
    sqlite3_bind_int(moat_stmt_raw(s), 1, 999);
    int rc = moat_stmt_step(s);
    assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
    assert_int_equal(moat_db_error(f->db, rc), MOAT_ECONFLICT);

    assert_int_equal(moat_db_exec(f->db, "dup",
                                  "INSERT INTO widgets (name) "
                                  "VALUES ('unique')"),
                     MOAT_ECONFLICT);
    assert_int_equal(moat_db_exec(f->db, "typo", "SELEKT 1"), MOAT_EDB);
    assert_int_equal(moat_db_exec(f->db, "ok", "DELETE FROM widgets"), MOAT_OK);
    assert_non_null(moat_db_errmsg(f->db));

    assert_int_equal(moat_db_error(f->db, SQLITE_OK), MOAT_OK);
    assert_int_equal(moat_db_error(f->db, SQLITE_DONE), MOAT_OK);
    assert_int_equal(moat_db_error(f->db, SQLITE_CONSTRAINT_UNIQUE),
                     MOAT_ECONFLICT);
    assert_int_equal(moat_db_error(f->db, SQLITE_BUSY), MOAT_EBUSY);
    assert_int_equal(moat_db_error(f->db, SQLITE_BUSY_SNAPSHOT), MOAT_EBUSY);
    assert_int_equal(moat_db_error(f->db, SQLITE_LOCKED), MOAT_EBUSY);
    assert_int_equal(moat_db_error(f->db, SQLITE_IOERR_WRITE), MOAT_EDB);
    assert_int_equal(moat_db_error(f->db, SQLITE_CORRUPT), MOAT_EDB);
}

static void test_file_mode(void **state)
{
    struct fixture *f = *state;
    struct stat st;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);

    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char wal[160];
    snprintf(wal, sizeof(wal), "%s-wal", f->path);
    assert_int_equal(stat(wal, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* A file someone made world-readable is tightened on open. */
    moat_db_close(f->db);
    f->db = NULL;
    assert_int_equal(chmod(f->path, 0644), 0);
    f->db = open_db(f, NULL);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* Something that is not a regular file is refused. */
    struct moat_db *db = NULL;
    assert_int_equal(moat_db_open(&db, f->dir, NULL, NULL), MOAT_EINVAL);
    assert_null(db);
}

static void test_pragmas(void **state)
{
    struct fixture *f = *state;
    char mode[16];
    f->db = open_db(f, NULL);

    query_text(f->db, "PRAGMA journal_mode", mode, sizeof(mode));
    assert_string_equal(mode, "wal");
    assert_int_equal(query_int(f->db, "PRAGMA foreign_keys"), 1);
    assert_int_equal(query_int(f->db, "PRAGMA synchronous"), 1);
    assert_int_equal(query_int(f->db, "PRAGMA busy_timeout"), 5000);
    assert_int_equal(query_int(f->db, "PRAGMA temp_store"), 2);

    moat_db_close(f->db);
    struct moat_db_options opts = {.synchronous_full = true,
                                   .busy_timeout_ms = 1234};
    f->db = open_db(f, &opts);
    assert_int_equal(query_int(f->db, "PRAGMA synchronous"), 2);
    assert_int_equal(query_int(f->db, "PRAGMA busy_timeout"), 1234);
    assert_int_equal(query_int(f->db, "PRAGMA foreign_keys"), 1);
}

/* Services index JSON documents through generated columns; SQLite 3.40
 * refuses that under an untrusted schema, so the schema must stay trusted. */
static void test_json_generated_columns(void **state)
{
    struct fixture *f = *state;
    const struct moat_migration json[] = {
        {1, "create docs",
         "CREATE TABLE docs (id INTEGER PRIMARY KEY, doc TEXT NOT NULL"
         " CHECK (json_valid(doc)),"
         " sku TEXT GENERATED ALWAYS AS (json_extract(doc, '$.sku'))"
         " VIRTUAL) STRICT;"
         "CREATE UNIQUE INDEX docs_sku ON docs (sku);",
         NULL},
    };
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, json, 1), MOAT_OK);
    assert_int_equal(moat_db_exec(f->db, "doc_insert",
                                  "INSERT INTO docs (doc) "
                                  "VALUES ('{\"sku\": \"a\"}')"),
                     MOAT_OK);
    assert_int_equal(moat_db_exec(f->db, "doc_insert",
                                  "INSERT INTO docs (doc) "
                                  "VALUES ('{\"sku\": \"a\"}')"),
                     MOAT_ECONFLICT);
}

static void test_statement_metrics(void **state)
{
    struct fixture *f = *state;
    f->db = open_db(f, NULL);
    assert_int_equal(moat_db_migrate(f->db, base_migrations, 2), MOAT_OK);

    insert_widget(f->db, "a", MOAT_OK);
    insert_widget(f->db, "b", MOAT_OK);
    insert_widget(f->db, "a", MOAT_ECONFLICT);

    /* A query stepped through several rows is one observation. */
    struct moat_stmt *s =
        moat_db_prepare(f->db, "widget_list", "SELECT name FROM widgets");
    assert_non_null(s);
    int rows = 0;
    while (moat_stmt_step(s) == SQLITE_ROW)
        rows++;
    assert_int_equal(rows, 2);
    /* A query abandoned after its first row counts once, on reset. */
    s = moat_db_prepare(f->db, "widget_list", "SELECT name FROM widgets");
    assert_int_equal(moat_stmt_step(s), SQLITE_ROW);
    moat_stmt_reset(s);
    moat_stmt_reset(s); /* no second observation */

    struct moat_metric_family *fam = moat_metrics_family(
        f->metrics, MOAT_HISTOGRAM, "moat_db_statement_duration_seconds",
        "Time spent in SQLite per statement execution.", "statement",
        moat_latency_buckets, moat_latency_buckets_len);
    assert_non_null(fam);
    uint64_t count = 0;
    double sum = -1;
    const char *insert_label[] = {"widget_insert"};
    moat_metric_hist(moat_metric_series(fam, insert_label), &count, &sum);
    assert_int_equal(count, 3);
    assert_true(sum > 0);
    const char *list_label[] = {"widget_list"};
    moat_metric_hist(moat_metric_series(fam, list_label), &count, &sum);
    assert_int_equal(count, 2);

    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(f->metrics, &out);
    const char *text = moat_buf_str(&out);
    assert_non_null(
        strstr(text, "# TYPE moat_db_statement_duration_seconds histogram"));
    assert_non_null(strstr(text, "moat_db_statement_duration_seconds_bucket{"
                                 "statement=\"widget_insert\""));
    assert_non_null(strstr(text, "moat_db_statement_duration_seconds_count{"
                                 "statement=\"widget_insert\"} 3"));
    assert_non_null(strstr(text, "moat_db_statement_duration_seconds_count{"
                                 "statement=\"db_migrations_table\"}"));
    assert_non_null(strstr(text, "moat_db_statement_errors_total{"
                                 "statement=\"widget_insert\"} 1"));
    moat_buf_release(&out);
}

int main(void)
{
    /* Expected failures log errors; keep the test output readable. */
    moat_log_init("test_db", MOAT_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fresh_db_migrates, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_migrate_is_idempotent, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_edited_migration_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_newer_database_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_inserted_old_migration_refused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_migration_list_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failing_migration_rolls_back,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_commit_rolls_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_busy_maps_to_ebusy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_statement_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_neutral_binds_and_columns, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_constraint_is_conflict, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_file_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pragmas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_generated_columns, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_statement_metrics, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
