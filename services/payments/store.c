/*
 * store.c - the payments schema and every query (see store.h).
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/payments.h"
#include "moat/db.h"
#include "moat/log.h"
#include "store.h"

#define DB_FILE "payments.db"

struct pay_store {
    struct moat_db *db;
    struct moat_outbox *outbox;
    bool appended; /* an event was appended in the open transaction */
};

/*
 * The CHECKs restate the rules the handlers enforce, so a bug fails a
 * write instead of corrupting the books. The unique index allows one live
 * payment per order; a payment the provider refused outright ('failed')
 * does not hold the order, so a corrected request can follow.
 */
static const struct moat_migration migrations[] = {
    {1, "create payments",
     "CREATE TABLE payments (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'pay_'),\n"
     "    order_id TEXT NOT NULL CHECK (length(order_id) BETWEEN 1 AND 64),\n"
     "    amount INTEGER NOT NULL CHECK (amount BETWEEN 1 AND 99999999),\n"
     "    currency TEXT NOT NULL CHECK (length(currency) = 3),\n"
     "    status TEXT NOT NULL CHECK (status IN ('pending', 'authorized',\n"
     "        'declined', 'captured', 'voided', 'refunded', 'failed')),\n"
     "    provider_auth_id_enc TEXT,\n"
     "    provider_capture_id_enc TEXT,\n"
     "    decline_code TEXT,\n"
     "    created_by TEXT NOT NULL,\n"
     "    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),\n"
     "    version INTEGER NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    updated_at_ms INTEGER NOT NULL,\n"
     "    CHECK (status IN ('pending', 'failed', 'declined') OR\n"
     "           provider_auth_id_enc IS NOT NULL),\n"
     "    CHECK (status NOT IN ('captured', 'refunded') OR\n"
     "           provider_capture_id_enc IS NOT NULL)\n"
     ") STRICT;\n"
     "CREATE UNIQUE INDEX payments_order ON payments (order_id)\n"
     "    WHERE status <> 'failed';\n"
     "CREATE TABLE idempotency_keys (\n"
     "    caller TEXT NOT NULL,\n"
     "    key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),\n"
     "    fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 64),\n"
     "    payment_id TEXT NOT NULL REFERENCES payments (id),\n"
     "    response_status INTEGER,\n"
     "    response TEXT,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (caller, key)\n"
     ") STRICT, WITHOUT ROWID;\n",
     /* PostgreSQL: the same table, CHECKs and partial unique index; ids
      * compare bytewise (COLLATE "C") as in SQLite, for the auditor's
      * paging. */
     "CREATE TABLE payments (\n"
     "    id text COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'pay_'),\n"
     "    order_id text NOT NULL CHECK (length(order_id) BETWEEN 1 AND 64),\n"
     "    amount bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),\n"
     "    currency text NOT NULL CHECK (length(currency) = 3),\n"
     "    status text NOT NULL CHECK (status IN ('pending', 'authorized',\n"
     "        'declined', 'captured', 'voided', 'refunded', 'failed')),\n"
     "    provider_auth_id_enc text,\n"
     "    provider_capture_id_enc text,\n"
     "    decline_code text,\n"
     "    created_by text NOT NULL,\n"
     "    attempts bigint NOT NULL DEFAULT 0 CHECK (attempts >= 0),\n"
     "    version bigint NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms bigint NOT NULL,\n"
     "    updated_at_ms bigint NOT NULL,\n"
     "    CHECK (status IN ('pending', 'failed', 'declined') OR\n"
     "           provider_auth_id_enc IS NOT NULL),\n"
     "    CHECK (status NOT IN ('captured', 'refunded') OR\n"
     "           provider_capture_id_enc IS NOT NULL)\n"
     ");\n"
     "CREATE UNIQUE INDEX payments_order ON payments (order_id)\n"
     "    WHERE status <> 'failed';\n"
     "CREATE TABLE idempotency_keys (\n"
     "    caller text NOT NULL,\n"
     "    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),\n"
     "    fingerprint text NOT NULL CHECK (length(fingerprint) = 64),\n"
     "    payment_id text COLLATE \"C\" NOT NULL REFERENCES payments (id),\n"
     "    response_status bigint,\n"
     "    response text,\n"
     "    created_at_ms bigint NOT NULL,\n"
     "    PRIMARY KEY (caller, key)\n"
     ");\n"},
    {2, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
    {3, "consumer cursors and dead letters", MOAT_CONSUMER_SCHEMA,
     MOAT_CONSUMER_SCHEMA_PG},
    /*
     * The order saga (docs/saga.md). payment_commands holds one row per
     * (order, command) ever applied: the unique key makes a redelivered
     * command a no-op, 'queued' rows are the worker's queue (strictly in id
     * order per payment), and a void or refund row without a payment is
     * the order's tombstone, which refuses a later authorization. The
     * card token of a saga payment is kept sealed (bound to the payment's
     * row) only until the provider has answered its authorization.
     */
    {4, "the order saga",
     "ALTER TABLE payments ADD COLUMN customer_id TEXT;\n"
     "ALTER TABLE payments ADD COLUMN card_token_enc TEXT;\n"
     "ALTER TABLE payments ADD COLUMN unavailable_reported INTEGER NOT NULL\n"
     "    DEFAULT 0 CHECK (unavailable_reported IN (0, 1));\n"
     "CREATE TABLE payment_commands (\n"
     "    id INTEGER PRIMARY KEY,\n"
     "    order_id TEXT NOT NULL CHECK (length(order_id) BETWEEN 1 AND 64),\n"
     "    command TEXT NOT NULL CHECK (command IN ('authorize', 'capture',\n"
     "        'void', 'refund')),\n"
     "    payment_id TEXT REFERENCES payments (id),\n"
     "    state TEXT NOT NULL CHECK (state IN ('queued', 'done', 'failed')),\n"
     "    amount INTEGER NOT NULL DEFAULT 0 CHECK (amount >= 0),\n"
     "    reason TEXT,\n"
     "    feed_seq INTEGER NOT NULL,\n"
     "    traceparent TEXT,\n"
     "    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),\n"
     "    next_at_ms INTEGER NOT NULL DEFAULT 0,\n"
     "    last_error TEXT,\n"
     "    reply TEXT,\n"
     "    queued_at_ms INTEGER NOT NULL,\n"
     "    done_at_ms INTEGER,\n"
     "    UNIQUE (order_id, command),\n"
     "    CHECK (state <> 'queued' OR payment_id IS NOT NULL)\n"
     ") STRICT;\n"
     "CREATE INDEX payment_commands_queue ON payment_commands (payment_id, "
     "id)\n"
     "    WHERE state = 'queued';\n",
     /* PostgreSQL: id is an identity column (SQLite's rowid alias hands
      * out increasing ids the same way). */
     "ALTER TABLE payments ADD COLUMN customer_id text;\n"
     "ALTER TABLE payments ADD COLUMN card_token_enc text;\n"
     "ALTER TABLE payments ADD COLUMN unavailable_reported bigint NOT NULL\n"
     "    DEFAULT 0 CHECK (unavailable_reported IN (0, 1));\n"
     "CREATE TABLE payment_commands (\n"
     "    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n"
     "    order_id text NOT NULL CHECK (length(order_id) BETWEEN 1 AND 64),\n"
     "    command text NOT NULL CHECK (command IN ('authorize', 'capture',\n"
     "        'void', 'refund')),\n"
     "    payment_id text COLLATE \"C\" REFERENCES payments (id),\n"
     "    state text NOT NULL CHECK (state IN ('queued', 'done', 'failed')),\n"
     "    amount bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),\n"
     "    reason text,\n"
     "    feed_seq bigint NOT NULL,\n"
     "    traceparent text,\n"
     "    attempts bigint NOT NULL DEFAULT 0 CHECK (attempts >= 0),\n"
     "    next_at_ms bigint NOT NULL DEFAULT 0,\n"
     "    last_error text,\n"
     "    reply text,\n"
     "    queued_at_ms bigint NOT NULL,\n"
     "    done_at_ms bigint,\n"
     "    UNIQUE (order_id, command),\n"
     "    CHECK (state <> 'queued' OR payment_id IS NOT NULL)\n"
     ");\n"
     "CREATE INDEX payment_commands_queue ON payment_commands (payment_id, "
     "id)\n"
     "    WHERE state = 'queued';\n"},
    /* Lookups the saga makes per command that scanned whole tables: the
     * worker's "ready" query walks queued commands in id order, and an
     * order's payment is looked up including failed ones (payments_order
     * covers live payments only). */
    {5, "indexes for the saga's lookups",
     "CREATE INDEX payment_commands_ready ON payment_commands (id)\n"
     "    WHERE state = 'queued';\n"
     "CREATE INDEX payments_by_order ON payments (order_id, id);\n",
     "CREATE INDEX payment_commands_ready ON payment_commands (id)\n"
     "    WHERE state = 'queued';\n"
     "CREATE INDEX payments_by_order ON payments (order_id, id);\n"},
};

void pay_payment_release(struct pay_payment *p)
{
    free(p->auth_id_enc);
    free(p->capture_id_enc);
    p->auth_id_enc = NULL;
    p->capture_id_enc = NULL;
}

void pay_idem_release(struct pay_idem *i)
{
    free(i->response);
    i->response = NULL;
}

int pay_store_open(struct pay_store **out, const char *data_dir,
                   struct moat_metrics *metrics,
                   const struct pay_store_options *opts)
{
    struct pay_store *s = moat_xcalloc(1, sizeof(*s));
    /* FULL: an authorization the provider has made must not vanish from
     * our books in a power cut after we told the caller about it. On
     * PostgreSQL the same holds through synchronous_commit = on (the
     * server's default, which moat's cluster keeps): a COMMIT returns once
     * its WAL is flushed. */
    const struct moat_db_options dbo = {.synchronous_full = true,
                                        .dsn = opts->dsn};
    int rc = moat_db_open_migrated(&s->db, data_dir, DB_FILE, &dbo, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc != MOAT_OK)
        goto cleanup;
    /* No retention: payment events are the books the auditor replays. */
    rc = moat_outbox_new(&s->outbox, opts->base, s->db, opts->source, NULL,
                         metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    *out = s;
    s = NULL;

cleanup:
    if (s) {
        if (s->db)
            moat_db_close(s->db);
        free(s);
    }
    return rc;
}

void pay_store_close(struct pay_store *s)
{
    if (!s)
        return;
    /* The outbox borrows the database: it goes first. */
    moat_outbox_free(s->outbox);
    moat_db_close(s->db);
    free(s);
}

struct moat_outbox *pay_store_outbox(struct pay_store *s)
{
    return s->outbox;
}

struct moat_db *pay_store_db(struct pay_store *s)
{
    return s->db;
}

bool pay_store_ready(struct pay_store *s, const char **why)
{
    if (!s || !s->db) {
        *why = "database not open";
        return false;
    }
    int version = moat_db_schema_version(s->db);
    if (version != migrations[MOAT_ARRAY_LEN(migrations) - 1].version) {
        *why = "database migrations not applied";
        return false;
    }
    return true;
}

/* ---- rows ---- */

#define PAYMENT_COLUMNS                                                        \
    "id, order_id, amount, currency, status, provider_auth_id_enc, "           \
    "provider_capture_id_enc, decline_code, created_by, attempts, version, "   \
    "created_at_ms, updated_at_ms"

static void copy_col(char *dst, size_t cap, struct moat_stmt *st, int col)
{
    const char *v = moat_stmt_text(st, col);
    snprintf(dst, cap, "%s", v ? v : "");
}

static char *dup_col(struct moat_stmt *st, int col)
{
    const char *v = moat_stmt_text(st, col);
    return v ? moat_xstrdup(v) : NULL;
}

static void row_to_payment(struct moat_stmt *st, struct pay_payment *p)
{
    memset(p, 0, sizeof(*p));
    copy_col(p->id, sizeof(p->id), st, 0);
    copy_col(p->order_id, sizeof(p->order_id), st, 1);
    p->amount = moat_stmt_int64(st, 2);
    copy_col(p->currency, sizeof(p->currency), st, 3);
    copy_col(p->status, sizeof(p->status), st, 4);
    p->auth_id_enc = dup_col(st, 5);
    p->capture_id_enc = dup_col(st, 6);
    copy_col(p->decline_code, sizeof(p->decline_code), st, 7);
    copy_col(p->created_by, sizeof(p->created_by), st, 8);
    p->attempts = moat_stmt_int64(st, 9);
    p->version = moat_stmt_int64(st, 10);
    p->created_ms = moat_stmt_int64(st, 11);
    p->updated_ms = moat_stmt_int64(st, 12);
}

/* A taken order or key is a conflict; any other constraint means our own
 * validation let something through: a bug, not the client's fault. */
static int write_error(struct pay_store *s, int step_rc)
{
    /* Extended codes on both engines (moat/db.h). */
    if (step_rc == SQLITE_CONSTRAINT_UNIQUE ||
        step_rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return MOAT_ECONFLICT;
    moat_log(MOAT_LOG_ERROR, "payments write failed", "{s:i}", "sqlite_code",
             step_rc);
    return moat_db_error(s->db, step_rc);
}

int pay_store_get(struct pay_store *s, const char *id, struct pay_payment *out)
{
    struct moat_stmt *stmt = moat_db_prepare(s->db, "payment_get",
                                             "SELECT " PAYMENT_COLUMNS
                                             " FROM payments WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, id);
    if (rc != MOAT_OK)
        goto cleanup;
    int step = moat_stmt_step(stmt);
    if (step == SQLITE_ROW) {
        row_to_payment(stmt, out);
        rc = MOAT_OK;
    } else {
        rc = step == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, step);
    }

cleanup:
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_list_by_order(struct pay_store *s, const char *order_id,
                            void (*fn)(const struct pay_payment *, void *),
                            void *arg)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "payment_list_order",
                        "SELECT " PAYMENT_COLUMNS " FROM payments "
                        "WHERE order_id = ?1 ORDER BY id");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, order_id);
    int step;
    if (rc != MOAT_OK)
        goto cleanup;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        struct pay_payment p;
        row_to_payment(stmt, &p);
        fn(&p, arg);
        pay_payment_release(&p);
    }
    rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, step);

cleanup:
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_idem_get(struct pay_store *s, const char *caller, const char *key,
                       struct pay_idem *out)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "idem_get",
        "SELECT fingerprint, payment_id, response_status, response "
        "FROM idempotency_keys WHERE caller = ?1 AND key = ?2");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, caller);
    if (rc == MOAT_OK)
        rc = moat_stmt_bind_text(stmt, 2, key);
    if (rc != MOAT_OK)
        goto cleanup;
    int step = moat_stmt_step(stmt);
    if (step == SQLITE_ROW) {
        memset(out, 0, sizeof(*out));
        copy_col(out->fingerprint, sizeof(out->fingerprint), stmt, 0);
        copy_col(out->payment_id, sizeof(out->payment_id), stmt, 1);
        out->status = (int)moat_stmt_int64(stmt, 2);
        out->response = dup_col(stmt, 3);
        rc = MOAT_OK;
    } else {
        rc = step == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(s->db, step);
    }

cleanup:
    moat_stmt_reset(stmt);
    return rc;
}

/* The live payment of an order (not 'failed') into existing, if any. */
static void find_order_payment(struct pay_store *s, const char *order_id,
                               char existing[PAY_ID_MAX])
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "payment_of_order",
        "SELECT id FROM payments WHERE order_id = ?1 AND status <> 'failed'");
    existing[0] = '\0';
    if (!stmt)
        return;
    if (moat_stmt_bind_text(stmt, 1, order_id) == MOAT_OK &&
        moat_stmt_step(stmt) == SQLITE_ROW)
        copy_col(existing, PAY_ID_MAX, stmt, 0);
    moat_stmt_reset(stmt);
}

int pay_store_create(struct pay_store *s, const struct pay_payment *p,
                     const char *caller, const char *key,
                     const char *fingerprint, char existing[PAY_ID_MAX])
{
    struct moat_stmt *ins = NULL;
    int step = SQLITE_DONE;
    int rc = moat_db_begin(s->db);
    existing[0] = '\0';
    if (rc != MOAT_OK)
        return rc;

    ins = moat_db_prepare(
        s->db, "payment_insert",
        "INSERT INTO payments (id, order_id, amount, currency, status, "
        "created_by, attempts, version, created_at_ms, updated_at_ms) "
        "VALUES (?1, ?2, ?3, ?4, 'pending', ?5, 0, 1, ?6, ?6)");
    rc = MOAT_EDB;
    if (!ins)
        goto cleanup;
    if (moat_stmt_bind_text(ins, 1, p->id) != MOAT_OK ||
        moat_stmt_bind_text(ins, 2, p->order_id) != MOAT_OK ||
        moat_stmt_bind_int64(ins, 3, p->amount) != MOAT_OK ||
        moat_stmt_bind_text(ins, 4, p->currency) != MOAT_OK ||
        moat_stmt_bind_text(ins, 5, p->created_by) != MOAT_OK ||
        moat_stmt_bind_int64(ins, 6, p->created_ms) != MOAT_OK)
        goto cleanup;
    step = moat_stmt_step(ins);
    moat_stmt_reset(ins);
    if (step != SQLITE_DONE) {
        rc = write_error(s, step);
        if (rc == MOAT_ECONFLICT) {
            moat_db_rollback(s->db);
            find_order_payment(s, p->order_id, existing);
            return rc;
        }
        goto cleanup;
    }

    ins = moat_db_prepare(
        s->db, "idem_insert",
        "INSERT INTO idempotency_keys (caller, key, fingerprint, payment_id, "
        "created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!ins)
        goto cleanup;
    if (moat_stmt_bind_text(ins, 1, caller) != MOAT_OK ||
        moat_stmt_bind_text(ins, 2, key) != MOAT_OK ||
        moat_stmt_bind_text(ins, 3, fingerprint) != MOAT_OK ||
        moat_stmt_bind_text(ins, 4, p->id) != MOAT_OK ||
        moat_stmt_bind_int64(ins, 5, p->created_ms) != MOAT_OK)
        goto cleanup;
    step = moat_stmt_step(ins);
    moat_stmt_reset(ins);
    if (step != SQLITE_DONE) {
        rc = write_error(s, step);
        goto cleanup;
    }
    rc = moat_db_commit(s->db);

cleanup:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    return rc;
}

int pay_store_count_attempt(struct pay_store *s, const char *id)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "payment_attempt",
        "UPDATE payments SET attempts = attempts + 1 WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, id);
    if (rc == MOAT_OK) {
        int step = moat_stmt_step(stmt);
        rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

/* t's state change and event inside the open transaction. */
int pay_store_apply(struct pay_store *s, const struct pay_transition *t)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "payment_transition",
        "UPDATE payments SET status = ?3, "
        "provider_auth_id_enc = coalesce(?4, provider_auth_id_enc), "
        "provider_capture_id_enc = coalesce(?5, provider_capture_id_enc), "
        "decline_code = coalesce(?6, decline_code), version = version + 1, "
        "updated_at_ms = ?7, "
        "card_token_enc = CASE WHEN ?8 <> 0 THEN NULL ELSE card_token_enc END "
        "WHERE id = ?1 AND status = ?2");
    if (!stmt)
        return MOAT_EDB;
    if (moat_stmt_bind_text(stmt, 1, t->id) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 2, t->from) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 3, t->to) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 4, t->auth_id_enc) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 5, t->capture_id_enc) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 6, t->decline_code) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 7, t->now_ms) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 8, t->wipe_card_token) != MOAT_OK) {
        moat_stmt_reset(stmt);
        return MOAT_EDB;
    }
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE)
        return write_error(s, step);
    /* Someone else moved the payment first (cannot happen while the loop
     * serialises operations per payment, but the books must not rely on
     * that). */
    if (moat_db_changes(s->db) != 1)
        return MOAT_ECONFLICT;
    if (t->event_type)
        return pay_store_event(s, t->event_type, t->subject, t->event_data);
    return MOAT_OK;
}

int pay_store_transition(struct pay_store *s, const struct pay_transition *t)
{
    struct moat_stmt *stmt;
    int step;
    int rc = pay_store_begin(s);
    if (rc != MOAT_OK)
        return rc;

    rc = pay_store_apply(s, t);
    if (rc != MOAT_OK)
        goto cleanup;
    if (t->idem_caller) {
        rc = MOAT_EDB;
        stmt = moat_db_prepare(
            s->db, "idem_complete",
            "UPDATE idempotency_keys SET response_status = ?3, response = ?4 "
            "WHERE caller = ?1 AND key = ?2");
        if (!stmt)
            goto cleanup;
        if (moat_stmt_bind_text(stmt, 1, t->idem_caller) != MOAT_OK ||
            moat_stmt_bind_text(stmt, 2, t->idem_key) != MOAT_OK ||
            moat_stmt_bind_int64(stmt, 3, t->idem_status) != MOAT_OK ||
            moat_stmt_bind_text(stmt, 4, t->idem_response) != MOAT_OK) {
            moat_stmt_reset(stmt);
            goto cleanup;
        }
        step = moat_stmt_step(stmt);
        moat_stmt_reset(stmt);
        if (step != SQLITE_DONE) {
            rc = write_error(s, step);
            goto cleanup;
        }
    }
    rc = pay_store_commit(s);

cleanup:
    if (rc != MOAT_OK)
        pay_store_rollback(s);
    return rc;
}

int pay_store_summary(struct pay_store *s, json_t **out)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "payment_summary",
        "SELECT currency, status, count(*), sum(amount) FROM payments "
        "GROUP BY currency, status ORDER BY currency, status");
    if (!stmt)
        return MOAT_EDB;
    json_t *cur = json_object();
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        const char *currency = moat_stmt_text(stmt, 0);
        const char *status = moat_stmt_text(stmt, 1);
        json_t *c = json_object_get(cur, currency);
        if (!c) {
            c = json_object();
            json_object_set_new(cur, currency, c);
        }
        json_object_set_new(c, status,
                            json_pack("{s:I, s:I}", "count",
                                      (json_int_t)moat_stmt_int64(stmt, 2),
                                      "amount",
                                      (json_int_t)moat_stmt_int64(stmt, 3)));
    }
    int rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, step);
    moat_stmt_reset(stmt);
    if (rc != MOAT_OK) {
        json_decref(cur);
        return rc;
    }
    *out = json_pack("{s:o}", "currencies", cur);
    return MOAT_OK;
}

/* ---- transactions ---- */

int pay_store_begin(struct pay_store *s)
{
    s->appended = false;
    return moat_db_begin(s->db);
}

int pay_store_commit(struct pay_store *s)
{
    int rc = moat_db_commit(s->db);
    if (rc == MOAT_OK && s->appended)
        moat_outbox_committed(s->outbox);
    s->appended = false;
    return rc;
}

void pay_store_rollback(struct pay_store *s)
{
    moat_db_rollback(s->db);
    s->appended = false;
}

int pay_store_savepoint(struct pay_store *s)
{
    return moat_db_exec(s->db, "payment_savepoint", "SAVEPOINT pay_step");
}

int pay_store_savepoint_release(struct pay_store *s)
{
    return moat_db_exec(s->db, "payment_savepoint_release", "RELEASE pay_step");
}

void pay_store_savepoint_undo(struct pay_store *s)
{
    /* ROLLBACK TO keeps the savepoint open: release it as well. */
    if (moat_db_exec(s->db, "payment_savepoint_undo", "ROLLBACK TO pay_step") ==
        MOAT_OK)
        moat_db_exec(s->db, "payment_savepoint_release", "RELEASE pay_step");
}

int pay_store_event(struct pay_store *s, const char *type, const char *subject,
                    json_t *data)
{
    int rc = moat_outbox_append(s->outbox, type, subject, payments_schema(type),
                                data, NULL);
    if (rc == MOAT_OK)
        s->appended = true;
    return rc;
}

/* ---- the saga ---- */

static int step_done(struct pay_store *s, struct moat_stmt *stmt)
{
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : write_error(s, step);
}

int pay_store_command_find(struct pay_store *s, const char *order_id,
                           const char *command, bool *found)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "command_find",
                        "SELECT 1 FROM payment_commands "
                        "WHERE order_id = ?1 AND command = ?2");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, order_id);
    if (rc == MOAT_OK)
        rc = moat_stmt_bind_text(stmt, 2, command);
    if (rc == MOAT_OK) {
        int step = moat_stmt_step(stmt);
        *found = step == SQLITE_ROW;
        if (step != SQLITE_ROW && step != SQLITE_DONE)
            rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_tombstoned(struct pay_store *s, const char *order_id, bool *yes)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "command_tombstone",
        "SELECT 1 FROM payment_commands WHERE order_id = ?1 "
        "AND command IN ('void', 'refund') AND payment_id IS NULL");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, order_id);
    if (rc == MOAT_OK) {
        int step = moat_stmt_step(stmt);
        *yes = step == SQLITE_ROW;
        if (step != SQLITE_ROW && step != SQLITE_DONE)
            rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_order_payment(struct pay_store *s, const char *order_id,
                            struct pay_payment *out)
{
    /* The live payment if there is one, else the newest failed one. */
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "payment_order_latest",
        "SELECT " PAYMENT_COLUMNS " FROM payments WHERE order_id = ?1 "
        "ORDER BY status = 'failed', id DESC LIMIT 1");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, order_id);
    if (rc == MOAT_OK) {
        int step = moat_stmt_step(stmt);
        if (step == SQLITE_ROW)
            row_to_payment(stmt, out);
        else
            rc = step == SQLITE_DONE ? MOAT_ENOTFOUND
                                     : moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_saga_create(struct pay_store *s, const struct pay_payment *p,
                          const char *customer_id, const char *card_token_enc)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "payment_saga_insert",
        "INSERT INTO payments (id, order_id, amount, currency, status, "
        "created_by, attempts, version, created_at_ms, updated_at_ms, "
        "customer_id, card_token_enc) "
        "VALUES (?1, ?2, ?3, ?4, 'pending', ?5, 0, 1, ?6, ?6, ?7, ?8)");
    if (!stmt)
        return MOAT_EDB;
    if (moat_stmt_bind_text(stmt, 1, p->id) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 2, p->order_id) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 3, p->amount) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 4, p->currency) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 5, p->created_by) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 6, p->created_ms) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 7, customer_id) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 8, card_token_enc) != MOAT_OK) {
        moat_stmt_reset(stmt);
        return MOAT_EDB;
    }
    return step_done(s, stmt);
}

int pay_store_command_add(struct pay_store *s, const struct pay_command_new *c)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "command_insert",
        "INSERT INTO payment_commands (order_id, command, payment_id, state, "
        "amount, reason, feed_seq, traceparent, reply, queued_at_ms, "
        "done_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
    if (!stmt)
        return MOAT_EDB;
    /* A queued command is not done yet; any other is done as it lands. */
    bool queued = strcmp(c->state, "queued") == 0;
    if (moat_stmt_bind_text(stmt, 1, c->order_id) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 2, c->command) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 3, c->payment_id) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 4, c->state) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 5, c->amount) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 6, c->reason) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 7, c->feed_seq) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 8, c->traceparent) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 9, c->reply) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 10, c->now_ms) != MOAT_OK ||
        (queued ? moat_stmt_bind_null(stmt, 11)
                : moat_stmt_bind_int64(stmt, 11, c->now_ms)) != MOAT_OK) {
        moat_stmt_reset(stmt);
        return MOAT_EDB;
    }
    return step_done(s, stmt);
}

int pay_store_commands_ready(struct pay_store *s, int64_t now_ms, int limit,
                             void (*fn)(const struct pay_command *, void *),
                             void *arg)
{
    /* The head of each payment's queue, when its backoff has passed: a
     * later command of a payment never overtakes an earlier one. */
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "command_ready",
        "SELECT c.id, c.order_id, c.command, c.payment_id, c.amount, "
        "c.attempts, c.queued_at_ms, coalesce(c.traceparent, '') "
        "FROM payment_commands c WHERE c.state = 'queued' "
        "AND c.next_at_ms <= ?1 AND NOT EXISTS (SELECT 1 FROM "
        "payment_commands e WHERE e.state = 'queued' "
        "AND e.payment_id = c.payment_id AND e.id < c.id) "
        "ORDER BY c.id LIMIT ?2");
    if (!stmt)
        return MOAT_EDB;
    int rc = MOAT_EDB;
    int step;
    if (moat_stmt_bind_int64(stmt, 1, now_ms) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 2, limit) != MOAT_OK)
        goto cleanup;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        struct pay_command c = {0};
        c.id = moat_stmt_int64(stmt, 0);
        copy_col(c.order_id, sizeof(c.order_id), stmt, 1);
        copy_col(c.command, sizeof(c.command), stmt, 2);
        copy_col(c.payment_id, sizeof(c.payment_id), stmt, 3);
        c.amount = moat_stmt_int64(stmt, 4);
        c.attempts = moat_stmt_int64(stmt, 5);
        c.queued_ms = moat_stmt_int64(stmt, 6);
        copy_col(c.traceparent, sizeof(c.traceparent), stmt, 7);
        fn(&c, arg);
    }
    rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, step);

cleanup:
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_commands_next_at(struct pay_store *s, int64_t *next_ms)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "command_next_at",
                        "SELECT min(next_at_ms) FROM payment_commands "
                        "WHERE state = 'queued'");
    if (!stmt)
        return MOAT_EDB;
    int step = moat_stmt_step(stmt);
    int rc = MOAT_OK;
    if (step == SQLITE_ROW)
        *next_ms = moat_stmt_is_null(stmt, 0) ? -1 : moat_stmt_int64(stmt, 0);
    else
        rc = moat_db_error(s->db, step);
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_card_token(struct pay_store *s, const char *payment_id,
                         char **enc)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "payment_card",
                        "SELECT card_token_enc FROM payments "
                        "WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, payment_id);
    *enc = NULL;
    if (rc == MOAT_OK) {
        int step = moat_stmt_step(stmt);
        if (step == SQLITE_ROW)
            *enc = dup_col(stmt, 0);
        else
            rc = step == SQLITE_DONE ? MOAT_ENOTFOUND
                                     : moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int pay_store_command_done(struct pay_store *s, int64_t id, const char *state,
                           const char *reply, const char *error, int64_t now_ms)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "command_done",
        "UPDATE payment_commands SET state = ?2, reply = ?3, "
        "last_error = coalesce(?4, last_error), done_at_ms = ?5 "
        "WHERE id = ?1 AND state = 'queued'");
    if (!stmt)
        return MOAT_EDB;
    if (moat_stmt_bind_int64(stmt, 1, id) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 2, state) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 3, reply) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 4, error) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 5, now_ms) != MOAT_OK) {
        moat_stmt_reset(stmt);
        return MOAT_EDB;
    }
    int rc = step_done(s, stmt);
    if (rc == MOAT_OK && moat_db_changes(s->db) != 1)
        rc = MOAT_ECONFLICT;
    return rc;
}

int pay_store_command_retry(struct pay_store *s, int64_t id, int64_t next_at_ms,
                            const char *error)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "command_retry",
        "UPDATE payment_commands SET attempts = attempts + 1, "
        "next_at_ms = ?2, last_error = ?3 WHERE id = ?1 AND state = 'queued'");
    if (!stmt)
        return MOAT_EDB;
    if (moat_stmt_bind_int64(stmt, 1, id) != MOAT_OK ||
        moat_stmt_bind_int64(stmt, 2, next_at_ms) != MOAT_OK ||
        moat_stmt_bind_text(stmt, 3, error) != MOAT_OK) {
        moat_stmt_reset(stmt);
        return MOAT_EDB;
    }
    return step_done(s, stmt);
}

int pay_store_mark_unavailable(struct pay_store *s, const char *payment_id,
                               bool *first)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "payment_unavailable",
                        "UPDATE payments SET unavailable_reported = 1 "
                        "WHERE id = ?1 AND unavailable_reported = 0");
    if (!stmt)
        return MOAT_EDB;
    if (moat_stmt_bind_text(stmt, 1, payment_id) != MOAT_OK) {
        moat_stmt_reset(stmt);
        return MOAT_EDB;
    }
    int rc = step_done(s, stmt);
    *first = rc == MOAT_OK && moat_db_changes(s->db) == 1;
    return rc;
}

/* ---- reads for the auditor and the metrics ---- */

int pay_store_list(struct pay_store *s, const char *after, int limit,
                   void (*fn)(const struct pay_payment *, void *), void *arg)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "payment_list",
                        "SELECT " PAYMENT_COLUMNS " FROM payments "
                        "WHERE id > ?1 ORDER BY id LIMIT ?2");
    if (!stmt)
        return MOAT_EDB;
    int rc = moat_stmt_bind_text(stmt, 1, after ? after : "");
    int step;
    if (rc != MOAT_OK || moat_stmt_bind_int64(stmt, 2, limit) != MOAT_OK) {
        rc = MOAT_EDB;
        goto cleanup;
    }
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        struct pay_payment p;
        row_to_payment(stmt, &p);
        fn(&p, arg);
        pay_payment_release(&p);
    }
    rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(s->db, step);

cleanup:
    moat_stmt_reset(stmt);
    return rc;
}

static const char *const statuses[PAY_NSTATUS] = {
    "pending", "authorized", "declined", "captured",
    "voided",  "refunded",   "failed"};

int pay_store_stats(struct pay_store *s, struct pay_stats *out)
{
    memset(out, 0, sizeof(*out));
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "payment_stats",
        "SELECT status, count(*) FROM payments GROUP BY status");
    if (!stmt)
        return MOAT_EDB;
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        const char *status = moat_stmt_text(stmt, 0);
        for (size_t i = 0; status && i < PAY_NSTATUS; i++)
            if (strcmp(status, statuses[i]) == 0)
                out->by_status[i] = moat_stmt_int64(stmt, 1);
    }
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE)
        return moat_db_error(s->db, step);

    stmt = moat_db_prepare(s->db, "command_stats",
                           "SELECT count(*), min(queued_at_ms) FROM "
                           "payment_commands WHERE state = 'queued'");
    if (!stmt)
        return MOAT_EDB;
    step = moat_stmt_step(stmt);
    if (step == SQLITE_ROW) {
        out->queued = moat_stmt_int64(stmt, 0);
        out->oldest_queued_ms = moat_stmt_int64(stmt, 1);
    }
    moat_stmt_reset(stmt);
    return step == SQLITE_ROW ? MOAT_OK : moat_db_error(s->db, step);
}

const char *pay_status_name(size_t i)
{
    return i < PAY_NSTATUS ? statuses[i] : NULL;
}
