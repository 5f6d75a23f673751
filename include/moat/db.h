/*
 * moat/db.h - a service's own SQLite database: connection setup, numbered
 * schema migrations, transactions and timed prepared statements.
 *
 * Only the owning service opens its database; the file is created mode 0600
 * inside the service's 0700 data directory. Every connection runs with
 * journal_mode=WAL, synchronous=NORMAL (FULL when asked, e.g. payments),
 * foreign_keys=ON, busy_timeout, temp_store=MEMORY (no temp files outside
 * the data directory, which the sandbox would refuse anyway). It also runs
 * in SQLite's defensive mode, and double-quoted "strings" are identifiers
 * only: write string literals in single quotes.
 *
 * Migrations are an array of {version, name, sql}, strictly increasing
 * versions starting at 1. Each unapplied one runs in its own transaction
 * together with its row in schema_migrations (version, name, checksum,
 * applied_at). An applied migration whose SQL changed since (checksum
 * mismatch), or a database newer than the code, is refused.
 *
 * Statements are prepared once and cached per connection by name; the name
 * labels the moat_db_statement_duration_seconds histogram (one observation
 * per execution: the time spent inside sqlite3_step() from the first step
 * to SQLITE_DONE, an error or a reset) and the
 * moat_db_statement_errors_total counter. struct moat_stmt pointers are
 * owned by the db and live until moat_db_close().
 * Not thread-safe: one connection per thread.
 */
#ifndef MOAT_DB_H
#define MOAT_DB_H

#include <sqlite3.h>
#include <stdbool.h>

#include "moat/metrics.h"

struct moat_db;
struct moat_stmt;

struct moat_db_options {
    bool synchronous_full; /* synchronous=FULL instead of NORMAL */
    int busy_timeout_ms;   /* 0 = default 5000 */
    /* secure_delete=ON: deleted content is overwritten, not left in free
     * pages (a store of sealed personal data). */
    bool secure_delete;
};

struct moat_migration {
    int version;      /* 1, 2, 3 ... */
    const char *name; /* short description, e.g. "create products" */
    const char *sql;  /* one or more statements */
};

/*
 * Open (creating if needed) the database file at path (a file: not
 * ":memory:"). A file found accessible to group or others is restricted to
 * its owner. metrics (borrowed, may be NULL; must outlive the db) receives
 * statement timings. opts may be NULL for defaults. On success *out is
 * owned by the caller: close with moat_db_close(). Returns MOAT_EINVAL when
 * path is not a regular file, MOAT_EIO or MOAT_EDB otherwise.
 */
int moat_db_open(struct moat_db **out, const char *path,
                 const struct moat_db_options *opts,
                 struct moat_metrics *metrics);
void moat_db_close(struct moat_db *db);

/* Apply pending migrations. Returns MOAT_OK, MOAT_ECONFLICT (checksum or
 * version mismatch), MOAT_EINVAL (m not numbered 1, 2, 3... in order),
 * MOAT_EBUSY (another writer held the lock past busy_timeout) or MOAT_EDB
 * (a migration failed: it was rolled back whole); the reason is logged.
 * A migration's SQL must not contain BEGIN, COMMIT or ROLLBACK. */
int moat_db_migrate(struct moat_db *db, const struct moat_migration *m,
                    size_t n);
/*
 * The usual start of a service's store: open data_dir/file (as
 * moat_db_open; opts may be NULL) and apply migrations m[0..n). On failure
 * nothing stays open and *out is untouched.
 */
int moat_db_open_migrated(struct moat_db **out, const char *data_dir,
                          const char *file, const struct moat_db_options *opts,
                          struct moat_metrics *metrics,
                          const struct moat_migration *m, size_t n);
/* Readiness of such a store: true when db answers and its schema is at
 * m[n - 1]; otherwise *why (static) says which is wrong. db may be NULL. */
bool moat_db_migrated(struct moat_db *db, const struct moat_migration *m,
                      size_t n, const char **why);
/* Highest applied migration version (0 for a fresh database), or MOAT_EDB
 * if it cannot be read. */
int moat_db_schema_version(struct moat_db *db);

/*
 * BEGIN IMMEDIATE / COMMIT / ROLLBACK. Nested calls, and commit without a
 * transaction, return MOAT_EINVAL; begin returns MOAT_EBUSY when another
 * writer holds the lock past busy_timeout. A failed commit rolls the
 * transaction back itself: the caller need not (moat_db_rollback does
 * nothing when no transaction is open).
 */
int moat_db_begin(struct moat_db *db);
int moat_db_commit(struct moat_db *db);
void moat_db_rollback(struct moat_db *db);

/* Run SQL without results (e.g. DDL; several statements allowed). name
 * labels the timing. Returns MOAT_OK or as moat_db_error(). */
int moat_db_exec(struct moat_db *db, const char *name, const char *sql);

/*
 * The cached prepared statement for name (prepared from sql on first use),
 * reset and with bindings cleared. sql must be exactly one statement. NULL
 * (logged) on a prepare error or when name was used before for other SQL.
 */
struct moat_stmt *moat_db_prepare(struct moat_db *db, const char *name,
                                  const char *sql);
sqlite3_stmt *moat_stmt_raw(struct moat_stmt *s);
/* sqlite3_step, timed. Returns SQLITE_ROW, SQLITE_DONE or an error code. */
int moat_stmt_step(struct moat_stmt *s);
void moat_stmt_reset(struct moat_stmt *s);

sqlite3 *moat_db_handle(struct moat_db *db);
const char *moat_db_errmsg(struct moat_db *db);
const char *moat_db_path(const struct moat_db *db);
/* Map the last SQLite error to a moat error (constraint -> ECONFLICT...). */
int moat_db_error(struct moat_db *db, int sqlite_rc);

#endif /* MOAT_DB_H */
