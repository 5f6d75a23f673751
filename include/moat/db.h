/*
 * moat/db.h - a service's own database (SQLite, or PostgreSQL given a
 * DSN): connection setup, numbered schema migrations, transactions and timed
 * prepared statements.
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
 *
 * Two engines. By default the database is a SQLite file. When the options
 * carry a dsn (the deployment's "engine": "postgres": `moat up` hands the
 * service MOAT_DB_DSN), the same calls run on that PostgreSQL database
 * through libpq instead. Code meant to run on both writes its SQL in the
 * dialect the two share (? or ?NNN placeholders, INSERT ... ON CONFLICT,
 * RETURNING, no SQLite-only functions) or gives each engine its own text
 * with moat_db_prepare_dialect(), binds and reads with the moat_stmt_bind_*
 * and moat_stmt_* column calls below, and never touches moat_stmt_raw() or
 * moat_db_handle(), which exist on SQLite only. moat_stmt_step() returns
 * SQLITE_ROW, SQLITE_DONE or an SQLite error code on both engines, so that
 * moat_db_error() maps either engine's failures alike.
 *
 * On PostgreSQL (libpq, one connection per moat_db):
 * - Placeholders ? and ?NNN become $N (not inside quotes, dollar-quoted
 *   bodies or comments). jsonb's ? operators are therefore unavailable:
 *   use jsonb_exists(). Named parameters (:x, @x) are not supported.
 * - Statements are prepared on the server once per connection, under a
 *   generated name, and cached by name like on SQLite. Parameters travel
 *   as text (int64 and text) or binary (blobs); results come as text and
 *   all rows of an execution arrive at its first step (keep result sets
 *   bounded with LIMIT). bytea columns are decoded for moat_stmt_blob();
 *   boolean columns read as 1/0 with moat_stmt_int64().
 *   moat_stmt_columns() is known after the first step only.
 * - SQLSTATE class 23 (unique, foreign key, check) is SQLITE_CONSTRAINT,
 *   40001/40P01 (serialization, deadlock) and 55P03 (lock timeout)
 *   SQLITE_BUSY, a lost connection SQLITE_IOERR (moat_db_error: MOAT_EBUSY,
 *   a 503 with Retry-After), anything else SQLITE_ERROR.
 * - A failed statement inside a transaction fails the whole transaction
 *   (unlike SQLite, where only that statement is undone): moat_db_commit()
 *   then returns MOAT_EDB. Expect conflicts with INSERT ... ON CONFLICT
 *   instead of catching a constraint error and carrying on.
 * - moat_db_begin() is BEGIN (READ COMMITTED) plus a transaction-level
 *   advisory lock, one per database: write transactions of the service,
 *   all its instances included, run one at a time as BEGIN IMMEDIATE makes
 *   them on SQLite, waiting up to busy_timeout (lock_timeout) and failing
 *   with MOAT_EBUSY past it. SERIALIZABLE was not chosen: every caller
 *   would need a retry loop around its transactions. Statements outside a
 *   transaction do not take the lock.
 * - Every statement is cut off after 30 s (statement_timeout);
 *   application_name defaults to $MOAT_SERVICE_NAME.
 * - A broken connection (PostgreSQL restarted, network lost) is reset at
 *   the next moat_db_prepare/begin/exec outside a transaction, and the
 *   statement cache prepared again; meanwhile calls fail with MOAT_EBUSY.
 *   Inside a transaction it is not replaced: the transaction fails.
 * - libpq calls block the calling thread: a statement costs a round trip,
 *   about 50-100 us on loopback, which the event loop waits out. That is
 *   acceptable for these services; a service needing more concurrency
 *   runs several instances.
 * - moat_db_path() is the DSN without its password (for logs).
 */
#ifndef MOAT_DB_H
#define MOAT_DB_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/metrics.h"

struct moat_db;
struct moat_stmt;

struct moat_db_options {
    bool synchronous_full; /* synchronous=FULL instead of NORMAL */
    int busy_timeout_ms;   /* 0 = default 5000 */
    /* secure_delete=ON: deleted content is overwritten, not left in free
     * pages (a store of sealed personal data). */
    bool secure_delete;
    /* A libpq connection string: the store lives in that PostgreSQL
     * database instead of a SQLite file (borrowed for the open call). NULL
     * or "": SQLite. */
    const char *dsn;
};

enum moat_db_engine { MOAT_DB_SQLITE = 0, MOAT_DB_POSTGRES = 1 };

struct moat_migration {
    int version;      /* 1, 2, 3 ... */
    const char *name; /* short description, e.g. "create products" */
    const char *sql;  /* one or more statements (SQLite) */
    /* The same migration in PostgreSQL's dialect. Migrations are one list
     * per service with both texts side by side, so that the two schemas
     * cannot drift apart in numbering. NULL: this migration has no
     * PostgreSQL form, and a store with one cannot open on PostgreSQL. */
    const char *pg;
};

/*
 * Open (creating if needed) the database file at path (a file: not
 * ":memory:"). A file found accessible to group or others is restricted to
 * its owner. metrics (borrowed, may be NULL; must outlive the db) receives
 * statement timings. opts may be NULL for defaults. On success *out is
 * owned by the caller: close with moat_db_close(). Returns MOAT_EINVAL when
 * path is not a regular file, MOAT_EIO or MOAT_EDB otherwise. With
 * opts->dsn set, path is ignored (may be NULL) and the connection is made
 * at once: MOAT_EDB when it fails (logged without the password).
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
/* SQLite only (NULL on PostgreSQL). */
sqlite3_stmt *moat_stmt_raw(struct moat_stmt *s);
/* sqlite3_step, timed. Returns SQLITE_ROW, SQLITE_DONE or an error code. */
int moat_stmt_step(struct moat_stmt *s);
void moat_stmt_reset(struct moat_stmt *s);

/*
 * The statement for name with one text per engine (sqlite_sql on SQLite,
 * pg_sql on PostgreSQL; each exactly one statement, ? placeholders on
 * both), as moat_db_prepare() otherwise.
 */
struct moat_stmt *moat_db_prepare_dialect(struct moat_db *db, const char *name,
                                          const char *sqlite_sql,
                                          const char *pg_sql);

/*
 * Parameters, numbered from 1. A text or blob is borrowed: it must stay
 * valid until the statement has stepped to SQLITE_DONE or been reset.
 * bind_text with v NULL binds SQL NULL. Each returns MOAT_OK, or MOAT_EDB
 * (logged) for an index out of range.
 */
int moat_stmt_bind_int64(struct moat_stmt *s, int i, int64_t v);
int moat_stmt_bind_text(struct moat_stmt *s, int i, const char *v);
int moat_stmt_bind_textn(struct moat_stmt *s, int i, const char *v, size_t n);
int moat_stmt_bind_blob(struct moat_stmt *s, int i, const void *v, size_t n);
int moat_stmt_bind_null(struct moat_stmt *s, int i);

/*
 * Columns of the current row (after moat_stmt_step() returned SQLITE_ROW),
 * numbered from 0. Text and blob pointers are owned by the statement and
 * valid until its next step or reset. text is NULL for SQL NULL; int64 is
 * 0 for NULL; blob sets *n (0 for NULL or empty).
 */
int64_t moat_stmt_int64(struct moat_stmt *s, int col);
double moat_stmt_double(struct moat_stmt *s, int col);
const char *moat_stmt_text(struct moat_stmt *s, int col);
const void *moat_stmt_blob(struct moat_stmt *s, int col, size_t *n);
bool moat_stmt_is_null(struct moat_stmt *s, int col);
int moat_stmt_columns(struct moat_stmt *s);
/* The name of result column col (owned by the statement; "" if none). */
const char *moat_stmt_column_name(struct moat_stmt *s, int col);

/* Whether a transaction is open on db (begun and not yet ended, also by
 * a statement such as COMMIT run through moat_db_exec). */
bool moat_db_in_transaction(struct moat_db *db);

/*
 * PostgreSQL only: fn(arg) runs on base's loop after a NOTIFY on channel
 * ([a-z_], at most 63) was committed in db's database, e.g. by another
 * instance of the service. A second connection of its own only listens;
 * when it breaks it reconnects every second, and calls fn once after
 * reconnecting (what was sent meanwhile is lost). Returns MOAT_OK, or
 * MOAT_EINVAL on SQLite or for a bad channel. db may be closed before the
 * listener; free it with moat_db_listener_free() before base.
 */
struct event_base;
struct moat_db_listener;
int moat_db_listen(struct moat_db_listener **out, struct moat_db *db,
                   struct event_base *base, const char *channel,
                   void (*fn)(void *arg), void *arg);
void moat_db_listener_free(struct moat_db_listener *l);

/* Rows inserted, changed or deleted by the last finished statement. */
int64_t moat_db_changes(struct moat_db *db);
enum moat_db_engine moat_db_engine(const struct moat_db *db);

/* SQLite only (NULL on PostgreSQL): code that must run on both engines
 * does not use these. */
sqlite3 *moat_db_handle(struct moat_db *db);
const char *moat_db_errmsg(struct moat_db *db);
const char *moat_db_path(const struct moat_db *db);
/* Map the last SQLite error to a moat error (constraint -> ECONFLICT...).
 * On PostgreSQL SQLITE_IOERR stands for a lost connection: MOAT_EBUSY. */
int moat_db_error(struct moat_db *db, int sqlite_rc);

/*
 * SQLite's ? and ?NNN placeholders rewritten as PostgreSQL's $N (what
 * moat_db_prepare does on PostgreSQL; exposed for tests). Quoted literals,
 * quoted identifiers, dollar-quoted bodies and comments are left alone.
 * *nparams gets the highest number. NULL for a number outside 1..32767.
 * The caller frees the result.
 */
char *moat_db_pg_placeholders(const char *sql, int *nparams);

#endif /* MOAT_DB_H */
