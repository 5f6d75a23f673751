/*
 * consumer_sqlite.c - the consumer's storage in its own SQLite database
 * (moat_consumer_new, see moat/events.h): cursors in moat_cursors, dead
 * letters in moat_dead_letters (MOAT_CONSUMER_SCHEMA), the batch as one
 * BEGIN ... COMMIT with a SAVEPOINT per event, and verification into a
 * scratch SQLite file <data_dir>/replay-verify.db made with the view's
 * migrations.
 *
 * The same code serves a consumer whose database is PostgreSQL
 * (MOAT_CONSUMER_SCHEMA_PG): it uses moat/db.h's engine-neutral calls only,
 * savepoints included. The verification scratch stays a SQLite file.
 */
#include "moat/common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "consumer_internal.h"
#include "moat/log.h"

#define VERIFY_FILE "replay-verify.db"

/*
 * The migration step a consuming service appends to its own migrations.
 * Never edit it (services checksum it); change it with a new constant.
 */
const char MOAT_CONSUMER_SCHEMA[] =
    "CREATE TABLE moat_cursors (\n"
    "    source TEXT NOT NULL PRIMARY KEY,\n"
    "    after_seq INTEGER NOT NULL CHECK (after_seq >= 0),\n"
    "    updated_ms INTEGER NOT NULL\n"
    ") STRICT, WITHOUT ROWID;\n"
    "CREATE TABLE moat_dead_letters (\n"
    "    source TEXT NOT NULL,\n"
    "    seq INTEGER NOT NULL,\n"
    "    event_id TEXT NOT NULL,\n"
    "    subject TEXT NOT NULL,\n"
    "    type TEXT NOT NULL,\n"
    "    event TEXT NOT NULL CHECK (json_valid(event)),\n"
    "    error TEXT NOT NULL,\n"
    "    attempts INTEGER NOT NULL,\n"
    "    state TEXT NOT NULL CHECK (state IN ('failed', 'blocked')),\n"
    "    parked_ms INTEGER NOT NULL,\n"
    "    PRIMARY KEY (source, seq)\n"
    ") STRICT, WITHOUT ROWID;\n"
    "CREATE INDEX moat_dead_letters_subject\n"
    "    ON moat_dead_letters (source, subject, seq);\n";

/* PostgreSQL's twin of MOAT_CONSUMER_SCHEMA (never edit it either). */
const char MOAT_CONSUMER_SCHEMA_PG[] =
    "CREATE TABLE moat_cursors (\n"
    "    source TEXT NOT NULL PRIMARY KEY,\n"
    "    after_seq BIGINT NOT NULL CHECK (after_seq >= 0),\n"
    "    updated_ms BIGINT NOT NULL\n"
    ");\n"
    "CREATE TABLE moat_dead_letters (\n"
    "    source TEXT NOT NULL,\n"
    "    seq BIGINT NOT NULL,\n"
    "    event_id TEXT NOT NULL,\n"
    "    subject TEXT NOT NULL,\n"
    "    type TEXT NOT NULL,\n"
    "    event TEXT NOT NULL CHECK (event::json IS NOT NULL),\n"
    "    error TEXT NOT NULL,\n"
    "    attempts INTEGER NOT NULL,\n"
    "    state TEXT NOT NULL CHECK (state IN ('failed', 'blocked')),\n"
    "    parked_ms BIGINT NOT NULL,\n"
    "    PRIMARY KEY (source, seq)\n"
    ");\n"
    "CREATE INDEX moat_dead_letters_subject\n"
    "    ON moat_dead_letters (source, subject, seq);\n";

struct consumer_scratch {
    struct moat_db *db; /* owned */
    char *path;         /* owned */
};

static const char *sq_where(struct moat_consumer *c)
{
    return moat_db_path(c->db);
}

static const char *sq_errmsg(struct moat_consumer *c)
{
    return moat_db_errmsg(c->db);
}

static int sq_cursor_write(struct moat_consumer *c, const char *source,
                           int64_t seq)
{
    struct moat_db *db = c->db;
    struct moat_stmt *stmt = moat_db_prepare(
        db, "consumer_cursor_write",
        "INSERT INTO moat_cursors (source, after_seq, updated_ms) "
        "VALUES (?1, ?2, ?3) ON CONFLICT (source) DO UPDATE SET "
        "after_seq = excluded.after_seq, updated_ms = excluded.updated_ms");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, source);
    moat_stmt_bind_int64(stmt, 2, seq);
    moat_stmt_bind_int64(stmt, 3, moat_wall_ms());
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

static int sq_cursor_read(struct moat_consumer *c, const char *source,
                          int64_t *seq)
{
    struct moat_db *db = c->db;
    struct moat_stmt *stmt =
        moat_db_prepare(db, "consumer_cursor_read",
                        "SELECT after_seq FROM moat_cursors WHERE source = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, source);
    int step = moat_stmt_step(stmt);
    int rc = MOAT_OK;
    if (step == SQLITE_ROW)
        *seq = moat_stmt_int64(stmt, 0);
    else if (step == SQLITE_DONE)
        *seq = 0;
    else
        rc = MOAT_EDB;
    moat_stmt_reset(stmt);
    return rc;
}

static int sq_attach(struct moat_consumer *c)
{
    int64_t probe;
    if (sq_cursor_read(c, "", &probe) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR,
                 "cannot read consumer cursors (is MOAT_CONSUMER_SCHEMA "
                 "among the migrations?)",
                 "{s:s}", "path", moat_db_path(c->db));
        return MOAT_EDB;
    }
    return MOAT_OK;
}

static int sq_begin(struct moat_consumer *c)
{
    return moat_db_begin(c->db);
}

static int sq_commit(struct moat_consumer *c)
{
    return moat_db_commit(c->db);
}

static void sq_rollback(struct moat_consumer *c)
{
    moat_db_rollback(c->db);
}

static bool sq_lost(struct moat_consumer *c)
{
    return !moat_db_in_transaction(c->db);
}

/* A cached statement without results (savepoints): MOAT_OK or MOAT_EDB. */
static int run_sql(struct moat_db *db, const char *name, const char *sql)
{
    struct moat_stmt *stmt = moat_db_prepare(db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

static int sq_savepoint(struct moat_consumer *c)
{
    return run_sql(c->db, "consumer_savepoint", "SAVEPOINT moat_event");
}

static int sq_release(struct moat_consumer *c)
{
    return run_sql(c->db, "consumer_release", "RELEASE moat_event");
}

static int sq_rollback_to(struct moat_consumer *c)
{
    if (run_sql(c->db, "consumer_rollback_to", "ROLLBACK TO moat_event") !=
        MOAT_OK)
        return MOAT_EDB;
    return sq_release(c);
}

static int refuse_commit(void *arg)
{
    (void)arg;
    return 1;
}

static int sq_run(struct moat_consumer *c, struct sub *s,
                  struct consumer_scratch *scratch, const struct moat_event *ev,
                  const char **why)
{
    struct moat_db *db = scratch ? scratch->db : c->db;
    /* A COMMIT by the handler would commit the batch's earlier events
     * without their cursor (applied twice after a crash): refuse it, which
     * turns it into a ROLLBACK that the check below reports. */
    sqlite3 *h = moat_db_handle(db); /* NULL on PostgreSQL: no hook */
    if (h)
        sqlite3_commit_hook(h, refuse_commit, NULL);
    int rc = s->handler(db, ev, s->arg, why);
    if (h)
        sqlite3_commit_hook(h, NULL, NULL);
    if (rc == MOAT_OK && !moat_db_in_transaction(db)) {
        rc = MOAT_EINVAL;
        *why = "the handler ended the consumer's transaction";
    }
    return rc;
}

static int sq_blocker(struct moat_consumer *c, const char *source,
                      const char *subject, int64_t *seq)
{
    struct moat_db *db = c->db;
    struct moat_stmt *stmt = moat_db_prepare(
        db, "consumer_dead_blocker",
        "SELECT seq FROM moat_dead_letters WHERE source = ?1 AND "
        "subject = ?2 ORDER BY seq LIMIT 1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, source);
    moat_stmt_bind_text(stmt, 2, subject);
    int step = moat_stmt_step(stmt);
    int rc = MOAT_OK;
    *seq = 0;
    if (step == SQLITE_ROW)
        *seq = moat_stmt_int64(stmt, 0);
    else if (step != SQLITE_DONE)
        rc = MOAT_EDB;
    moat_stmt_reset(stmt);
    return rc;
}

/* Dead letters of source by state (either pointer may be NULL). */
static int sq_dead_count(struct moat_consumer *c, const char *source,
                         int64_t *failed, int64_t *blocked)
{
    struct moat_db *db = c->db;
    struct moat_stmt *stmt =
        moat_db_prepare(db, "consumer_dead_count",
                        "SELECT count(CASE WHEN state = 'failed' THEN 1 END), "
                        "count(CASE WHEN state = 'blocked' THEN 1 END) "
                        "FROM moat_dead_letters WHERE source = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, source);
    int rc = MOAT_EDB;
    if (moat_stmt_step(stmt) == SQLITE_ROW) {
        if (failed)
            *failed = moat_stmt_int64(stmt, 0);
        if (blocked)
            *blocked = moat_stmt_int64(stmt, 1);
        rc = MOAT_OK;
    }
    moat_stmt_reset(stmt);
    return rc;
}

static int sq_park(struct moat_consumer *c, const struct consumer_dead *d)
{
    struct moat_stmt *stmt = moat_db_prepare(
        c->db, "consumer_dead_insert",
        "INSERT INTO moat_dead_letters (source, seq, event_id, subject, type, "
        "event, error, attempts, state, parked_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, d->source);
    moat_stmt_bind_int64(stmt, 2, d->seq);
    moat_stmt_bind_text(stmt, 3, d->event_id);
    moat_stmt_bind_text(stmt, 4, d->subject);
    moat_stmt_bind_text(stmt, 5, d->type);
    moat_stmt_bind_text(stmt, 6, d->event);
    moat_stmt_bind_text(stmt, 7, d->error);
    moat_stmt_bind_int64(stmt, 8, d->attempts);
    moat_stmt_bind_text(stmt, 9, d->state);
    moat_stmt_bind_int64(stmt, 10, d->parked_ms);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

static int sq_dead_delete(struct moat_consumer *c, const char *source,
                          int64_t seq)
{
    struct moat_stmt *stmt = moat_db_prepare(
        c->db, "consumer_dead_delete",
        "DELETE FROM moat_dead_letters WHERE source = ?1 AND seq = ?2");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, source);
    moat_stmt_bind_int64(stmt, 2, seq);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

static int sq_dead_mark_failed(struct moat_consumer *c, const char *source,
                               int64_t seq, const char *error)
{
    struct moat_stmt *stmt = moat_db_prepare(
        c->db, "consumer_dead_fail",
        "UPDATE moat_dead_letters SET error = ?3, attempts = attempts + 1, "
        "state = 'failed' WHERE source = ?1 AND seq = ?2");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, source);
    moat_stmt_bind_int64(stmt, 2, seq);
    moat_stmt_bind_text(stmt, 3, error);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

/* Empty the view, cursors and dead letters in one transaction. */
static int sq_reset(struct moat_consumer *c)
{
    int rc = moat_db_begin(c->db);
    if (rc != MOAT_OK)
        return rc;
    rc = c->view.reset(c->db, c->view.arg);
    if (rc == MOAT_OK)
        rc = moat_db_exec(c->db, "consumer_reset_cursors",
                          "DELETE FROM moat_cursors");
    if (rc == MOAT_OK)
        rc = moat_db_exec(c->db, "consumer_reset_dead",
                          "DELETE FROM moat_dead_letters");
    if (rc == MOAT_OK)
        rc = moat_db_commit(c->db);
    if (rc != MOAT_OK)
        moat_db_rollback(c->db);
    return rc;
}

#define DEAD_FILTER                                                            \
    "FROM moat_dead_letters WHERE (CAST(?1 AS TEXT) IS NULL OR source = ?1) "  \
    "AND (CAST(?2 AS TEXT) IS NULL OR subject = ?2) "

static int sq_dead_visit(struct moat_consumer *c, const char *source,
                         const char *subject, bool by_subject, int64_t limit,
                         consumer_dead_fn fn, void *arg, int64_t *total)
{
    struct moat_db *db = c->db;
    if (total) {
        struct moat_stmt *stmt = moat_db_prepare(
            db, "consumer_dead_total", "SELECT count(*) " DEAD_FILTER);
        if (!stmt)
            return MOAT_EDB;
        moat_stmt_bind_text(stmt, 1, source);
        moat_stmt_bind_text(stmt, 2, subject);
        int step = moat_stmt_step(stmt);
        if (step == SQLITE_ROW)
            *total = moat_stmt_int64(stmt, 0);
        moat_stmt_reset(stmt);
        if (step != SQLITE_ROW)
            return MOAT_EDB;
    }
    if (!fn || limit <= 0)
        return MOAT_OK;
    struct moat_stmt *stmt =
        by_subject
            ? moat_db_prepare(db, "consumer_dead_by_subject",
                              "SELECT source, seq, event_id, subject, type, "
                              "event, error, attempts, state, "
                              "parked_ms " DEAD_FILTER
                              "ORDER BY source, subject, seq LIMIT ?3")
            : moat_db_prepare(db, "consumer_dead_list",
                              "SELECT source, seq, event_id, subject, type, "
                              "event, error, attempts, state, "
                              "parked_ms " DEAD_FILTER
                              "ORDER BY source, seq LIMIT ?3");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, source);
    moat_stmt_bind_text(stmt, 2, subject);
    moat_stmt_bind_int64(stmt, 3, limit);
    int step, rc = MOAT_OK;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        struct consumer_dead d = {
            .source = moat_stmt_text(stmt, 0),
            .seq = moat_stmt_int64(stmt, 1),
            .event_id = moat_stmt_text(stmt, 2),
            .subject = moat_stmt_text(stmt, 3),
            .type = moat_stmt_text(stmt, 4),
            .event = moat_stmt_text(stmt, 5),
            .error = moat_stmt_text(stmt, 6),
            .attempts = (int)moat_stmt_int64(stmt, 7),
            .state = moat_stmt_text(stmt, 8),
            .parked_ms = moat_stmt_int64(stmt, 9),
        };
        rc = fn(&d, arg);
        if (rc != 0)
            break;
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = MOAT_EDB;
    moat_stmt_reset(stmt);
    return rc < 0 ? rc : MOAT_OK;
}

static bool sq_has_view(struct moat_consumer *c)
{
    return c->has_view;
}

static bool sq_can_reset(struct moat_consumer *c)
{
    return c->has_view; /* reset is required with SQLite view ops */
}

static void remove_scratch(const char *path)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(suffixes); i++) {
        char *p = moat_xasprintf("%s%s", path, suffixes[i]);
        if (unlink(p) != 0 && errno != ENOENT)
            moat_log(MOAT_LOG_WARN, "cannot remove the verification database",
                     "{s:s, s:s}", "path", p, "error", strerror(errno));
        free(p);
    }
}

static void sq_scratch_free(struct moat_consumer *c, struct consumer_scratch *x)
{
    MOAT_UNUSED(c);
    if (!x)
        return;
    if (x->db)
        moat_db_close(x->db);
    remove_scratch(x->path);
    free(x->path);
    free(x);
}

static int sq_scratch_open(struct moat_consumer *c, const char *dir,
                           struct consumer_scratch **out, char *why,
                           size_t whylen)
{
    MOAT_UNUSED(why);
    MOAT_UNUSED(whylen);
    struct consumer_scratch *x = moat_xcalloc(1, sizeof(*x));
    x->path = moat_xasprintf("%s/%s", dir, VERIFY_FILE);
    /* A file left by a crash mid-verification is stale: start over. */
    remove_scratch(x->path);
    int rc = moat_db_open(&x->db, x->path, NULL, NULL);
    if (rc == MOAT_OK)
        rc = moat_db_migrate(x->db, c->view.migrations, c->view.nmigrations);
    if (rc != MOAT_OK) {
        sq_scratch_free(c, x);
        return rc;
    }
    *out = x;
    return MOAT_OK;
}

static int sq_scratch_begin(struct consumer_scratch *x)
{
    return moat_db_begin(x->db);
}

static int sq_scratch_commit(struct consumer_scratch *x)
{
    return moat_db_commit(x->db);
}

static void sq_scratch_rollback(struct consumer_scratch *x)
{
    moat_db_rollback(x->db);
}

static const char *sq_scratch_errmsg(struct consumer_scratch *x)
{
    return x && x->db ? moat_db_errmsg(x->db) : "not open";
}

static int sq_compare(struct moat_consumer *c, struct consumer_scratch *x,
                      json_t *diffs)
{
    return c->view.compare(c->db, x->db, diffs, c->view.arg);
}

const struct consumer_storage_ops moat_consumer_sqlite_ops = {
    .engine = "sqlite",
    .where = sq_where,
    .errmsg = sq_errmsg,
    .attach = sq_attach,
    .cursor_read = sq_cursor_read,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .lost = sq_lost,
    .savepoint = sq_savepoint,
    .release = sq_release,
    .rollback_to = sq_rollback_to,
    .run = sq_run,
    .cursor_write = sq_cursor_write,
    .blocker = sq_blocker,
    .park = sq_park,
    .dead_delete = sq_dead_delete,
    .dead_mark_failed = sq_dead_mark_failed,
    .reset = sq_reset,
    .dead_count = sq_dead_count,
    .dead_visit = sq_dead_visit,
    .has_view = sq_has_view,
    .can_reset = sq_can_reset,
    .scratch_open = sq_scratch_open,
    .scratch_free = sq_scratch_free,
    .scratch_begin = sq_scratch_begin,
    .scratch_commit = sq_scratch_commit,
    .scratch_rollback = sq_scratch_rollback,
    .scratch_errmsg = sq_scratch_errmsg,
    .compare = sq_compare,
};
