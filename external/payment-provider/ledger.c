/* ledger.c - the payment provider's schema and queries (see ledger.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "moat/db.h"
#include "moat/log.h"

#define DB_FILE "payprovider.db"

struct pp_ledger {
    struct moat_db *db; /* owned */
};

/*
 * Schema migrations: never edit one that has shipped, append a new one.
 *
 * The CHECK constraints restate the ledger invariants so that a bug in
 * api.c fails a write instead of corrupting the books: captured <=
 * authorized, refunded <= captured, a capture only on a captured
 * authorization, a void only of one with nothing captured.
 *
 * ledger_entries is the history: one row per state change with its time,
 * never updated or deleted (the triggers refuse both). The summary for
 * the auditor sums it, and checks the sums against authorizations.
 *
 * idempotency_keys keeps each completed POST's response, per merchant and
 * key, for the replay of a retry. It is written in the same transaction
 * as the effect, so a crash leaves either both or neither.
 */
static const struct moat_migration migrations[] = {
    {1, "create the payment ledger",
     "CREATE TABLE authorizations (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 31 AND substr(id, 1, 5) = 'auth_'),\n"
     "    merchant TEXT NOT NULL,\n"
     "    reference TEXT NOT NULL,\n"
     "    card_token TEXT NOT NULL,\n"
     "    currency TEXT NOT NULL CHECK (length(currency) = 3),\n"
     "    amount INTEGER NOT NULL CHECK (amount > 0),\n"
     "    status TEXT NOT NULL CHECK (status IN\n"
     "        ('authorized', 'declined', 'captured', 'voided')),\n"
     "    decline_code TEXT,\n"
     "    captured_amount INTEGER NOT NULL DEFAULT 0\n"
     "        CHECK (captured_amount BETWEEN 0 AND amount),\n"
     "    refunded_amount INTEGER NOT NULL DEFAULT 0\n"
     "        CHECK (refunded_amount BETWEEN 0 AND captured_amount),\n"
     "    capture_id TEXT UNIQUE,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    updated_at_ms INTEGER NOT NULL,\n"
     "    captured_at_ms INTEGER,\n"
     "    voided_at_ms INTEGER,\n"
     "    CHECK ((status = 'declined') = (decline_code IS NOT NULL)),\n"
     "    CHECK ((status = 'captured') = (capture_id IS NOT NULL)),\n"
     "    CHECK ((status = 'captured') = (captured_amount > 0)),\n"
     "    CHECK ((status = 'captured') = (captured_at_ms IS NOT NULL)),\n"
     "    CHECK ((status = 'voided') = (voided_at_ms IS NOT NULL))\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX authorizations_reference\n"
     "    ON authorizations (merchant, reference, id);\n"
     "CREATE TABLE refunds (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 30 AND substr(id, 1, 4) = 'ref_'),\n"
     "    authorization_id TEXT NOT NULL REFERENCES authorizations (id),\n"
     "    amount INTEGER NOT NULL CHECK (amount > 0),\n"
     "    created_at_ms INTEGER NOT NULL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX refunds_authorization ON refunds (authorization_id, id);\n"
     "CREATE TABLE ledger_entries (\n"
     "    seq INTEGER PRIMARY KEY,\n"
     "    merchant TEXT NOT NULL,\n"
     "    authorization_id TEXT NOT NULL REFERENCES authorizations (id),\n"
     "    kind TEXT NOT NULL CHECK (kind IN\n"
     "        ('authorized', 'declined', 'captured', 'voided', "
     "'refunded')),\n"
     "    object_id TEXT NOT NULL,\n"
     "    currency TEXT NOT NULL CHECK (length(currency) = 3),\n"
     "    amount INTEGER NOT NULL CHECK (amount > 0),\n"
     "    at_ms INTEGER NOT NULL\n"
     ") STRICT;\n"
     "CREATE INDEX ledger_entries_merchant\n"
     "    ON ledger_entries (merchant, currency, kind);\n"
     "CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON "
     "ledger_entries\n"
     "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;\n"
     "CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON "
     "ledger_entries\n"
     "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;\n"
     "CREATE TABLE idempotency_keys (\n"
     "    merchant TEXT NOT NULL,\n"
     "    key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),\n"
     "    fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 64),\n"
     "    status INTEGER NOT NULL CHECK (status BETWEEN 200 AND 599),\n"
     "    content_type TEXT NOT NULL,\n"
     "    body TEXT NOT NULL,\n"
     "    location TEXT,\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    PRIMARY KEY (merchant, key)\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE INDEX idempotency_keys_created\n"
     "    ON idempotency_keys (created_at_ms);\n",
     NULL},
};

static const char *const status_names[] = {
    [PP_AUTHORIZED] = "authorized",
    [PP_DECLINED] = "declined",
    [PP_CAPTURED] = "captured",
    [PP_VOIDED] = "voided",
};

const char *pp_auth_status_name(enum pp_auth_status s)
{
    if ((size_t)s >= MOAT_ARRAY_LEN(status_names))
        return "unknown";
    return status_names[s];
}

static int status_parse(const char *s, enum pp_auth_status *out)
{
    for (size_t i = 0; s && i < MOAT_ARRAY_LEN(status_names); i++) {
        if (strcmp(s, status_names[i]) == 0) {
            *out = (enum pp_auth_status)i;
            return MOAT_OK;
        }
    }
    return MOAT_EDB;
}

void pp_idem_record_release(struct pp_idem_record *r)
{
    if (!r)
        return;
    free(r->content_type);
    free(r->body);
    free(r->location);
    memset(r, 0, sizeof(*r));
}

int pp_ledger_open(struct pp_ledger **out, const char *data_dir,
                   struct moat_metrics *metrics)
{
    struct pp_ledger *l = moat_xcalloc(1, sizeof(*l));
    /* A ledger: a commit that a power cut can undo would let a retry
     * with the same idempotency key charge twice. */
    const struct moat_db_options opts = {.synchronous_full = true};
    int rc = moat_db_open_migrated(&l->db, data_dir, DB_FILE, &opts, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc != MOAT_OK)
        goto cleanup;
    *out = l;
    l = NULL;

cleanup:
    if (l) {
        if (l->db)
            moat_db_close(l->db);
        free(l);
    }
    return rc;
}

void pp_ledger_close(struct pp_ledger *l)
{
    if (!l)
        return;
    moat_db_close(l->db);
    free(l);
}

bool pp_ledger_ready(struct pp_ledger *l, const char **why)
{
    if (!l || !l->db) {
        *why = "database not open";
        return false;
    }
    /* A query, not a flag: it also proves the database still answers. */
    int version = moat_db_schema_version(l->db);
    if (version != migrations[MOAT_ARRAY_LEN(migrations) - 1].version) {
        *why = "database migrations not applied";
        return false;
    }
    return true;
}

int pp_ledger_begin(struct pp_ledger *l)
{
    return moat_db_begin(l->db);
}

int pp_ledger_commit(struct pp_ledger *l)
{
    return moat_db_commit(l->db);
}

void pp_ledger_rollback(struct pp_ledger *l)
{
    moat_db_rollback(l->db);
}

/* ---- rows ---- */

static void copy_column(char *dst, size_t cap, sqlite3_stmt *st, int col)
{
    const char *s = (const char *)sqlite3_column_text(st, col);
    snprintf(dst, cap, "%s", s ? s : "");
}

static int64_t column_ms(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL
               ? 0
               : sqlite3_column_int64(st, col);
}

#define AUTH_COLUMNS                                                           \
    "id, merchant, reference, card_token, currency, amount, status, "          \
    "decline_code, captured_amount, refunded_amount, capture_id, "             \
    "created_at_ms, updated_at_ms, captured_at_ms, voided_at_ms"

static int row_to_auth(sqlite3_stmt *st, struct pp_authorization *a)
{
    memset(a, 0, sizeof(*a));
    copy_column(a->id, sizeof(a->id), st, 0);
    copy_column(a->merchant, sizeof(a->merchant), st, 1);
    copy_column(a->reference, sizeof(a->reference), st, 2);
    copy_column(a->card_token, sizeof(a->card_token), st, 3);
    copy_column(a->currency, sizeof(a->currency), st, 4);
    a->amount = sqlite3_column_int64(st, 5);
    if (status_parse((const char *)sqlite3_column_text(st, 6), &a->status) !=
        MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "stored authorization has an unknown status",
                 "{s:s}", "id", a->id);
        return MOAT_EDB;
    }
    copy_column(a->decline_code, sizeof(a->decline_code), st, 7);
    a->captured_amount = sqlite3_column_int64(st, 8);
    a->refunded_amount = sqlite3_column_int64(st, 9);
    copy_column(a->capture_id, sizeof(a->capture_id), st, 10);
    a->created_ms = sqlite3_column_int64(st, 11);
    a->updated_ms = sqlite3_column_int64(st, 12);
    a->captured_ms = column_ms(st, 13);
    a->voided_ms = column_ms(st, 14);
    return MOAT_OK;
}

/* Run a write statement to completion; MOAT_OK on SQLITE_DONE. */
static int step_done(struct pp_ledger *l, struct moat_stmt *stmt)
{
    int step = moat_stmt_step(stmt);
    int rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(l->db, step);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "ledger write failed", "{s:s}", "error",
                 moat_db_errmsg(l->db));
    moat_stmt_reset(stmt);
    return rc;
}

/* Append one row to the history. */
static int entry_append(struct pp_ledger *l, const struct pp_authorization *a,
                        const char *kind, const char *object_id, int64_t amount,
                        int64_t at_ms)
{
    struct moat_stmt *stmt = moat_db_prepare(
        l->db, "ledger_entry_insert",
        "INSERT INTO ledger_entries (merchant, authorization_id, kind, "
        "object_id, currency, amount, at_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, a->merchant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, object_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, a->currency, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, amount);
    sqlite3_bind_int64(st, 7, at_ms);
    return step_done(l, stmt);
}

int pp_ledger_auth_insert(struct pp_ledger *l, const struct pp_authorization *a)
{
    struct moat_stmt *stmt = moat_db_prepare(
        l->db, "authorization_insert",
        "INSERT INTO authorizations (id, merchant, reference, card_token, "
        "currency, amount, status, decline_code, created_at_ms, "
        "updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->merchant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, a->reference, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, a->card_token, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, a->currency, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, a->amount);
    sqlite3_bind_text(st, 7, pp_auth_status_name(a->status), -1, SQLITE_STATIC);
    if (a->status == PP_DECLINED)
        sqlite3_bind_text(st, 8, a->decline_code, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, a->created_ms);
    int rc = step_done(l, stmt);
    if (rc == MOAT_OK)
        rc = entry_append(l, a,
                          a->status == PP_DECLINED ? "declined" : "authorized",
                          a->id, a->amount, a->created_ms);
    return rc;
}

/* One authorization by a unique column, for the merchant. */
static int auth_get_by(struct pp_ledger *l, const char *name, const char *sql,
                       const char *merchant, const char *key,
                       struct pp_authorization *out)
{
    struct moat_stmt *stmt = moat_db_prepare(l->db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, merchant, -1, SQLITE_STATIC);
    int step = moat_stmt_step(stmt);
    int rc;
    if (step == SQLITE_ROW)
        rc = row_to_auth(st, out);
    else if (step == SQLITE_DONE)
        rc = MOAT_ENOTFOUND;
    else
        rc = moat_db_error(l->db, step);
    /* Reset at once: an unfinished SELECT pins a WAL read snapshot. */
    moat_stmt_reset(stmt);
    return rc;
}

int pp_ledger_auth_get(struct pp_ledger *l, const char *merchant,
                       const char *id, struct pp_authorization *out)
{
    return auth_get_by(l, "authorization_get",
                       "SELECT " AUTH_COLUMNS " FROM authorizations "
                       "WHERE id = ?1 AND merchant = ?2",
                       merchant, id, out);
}

int pp_ledger_auth_by_capture(struct pp_ledger *l, const char *merchant,
                              const char *capture_id,
                              struct pp_authorization *out)
{
    return auth_get_by(l, "authorization_by_capture",
                       "SELECT " AUTH_COLUMNS " FROM authorizations "
                       "WHERE capture_id = ?1 AND merchant = ?2",
                       merchant, capture_id, out);
}

/* MOAT_ECONFLICT when the guarded UPDATE just run changed no row. */
static int one_row_changed(struct pp_ledger *l)
{
    return sqlite3_changes(moat_db_handle(l->db)) == 1 ? MOAT_OK
                                                       : MOAT_ECONFLICT;
}

int pp_ledger_capture(struct pp_ledger *l, const struct pp_authorization *a)
{
    struct moat_stmt *stmt = moat_db_prepare(
        l->db, "authorization_capture",
        "UPDATE authorizations SET status = 'captured', capture_id = ?2, "
        "captured_amount = ?3, captured_at_ms = ?4, updated_at_ms = ?4 "
        "WHERE id = ?1 AND status = 'authorized'");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->capture_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, a->captured_amount);
    sqlite3_bind_int64(st, 4, a->captured_ms);
    int rc = step_done(l, stmt);
    if (rc == MOAT_OK)
        rc = one_row_changed(l);
    if (rc == MOAT_OK)
        rc = entry_append(l, a, "captured", a->capture_id, a->captured_amount,
                          a->captured_ms);
    return rc;
}

int pp_ledger_void(struct pp_ledger *l, const struct pp_authorization *a,
                   int64_t now_ms)
{
    struct moat_stmt *stmt =
        moat_db_prepare(l->db, "authorization_void",
                        "UPDATE authorizations SET status = 'voided', "
                        "voided_at_ms = ?2, updated_at_ms = ?2 "
                        "WHERE id = ?1 AND status = 'authorized'");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms);
    int rc = step_done(l, stmt);
    if (rc == MOAT_OK)
        rc = one_row_changed(l);
    /* The voided amount is the hold released: the whole authorization. */
    if (rc == MOAT_OK)
        rc = entry_append(l, a, "voided", a->id, a->amount, now_ms);
    return rc;
}

int pp_ledger_refund(struct pp_ledger *l, const struct pp_authorization *a,
                     const struct pp_refund *r)
{
    struct moat_stmt *upd = moat_db_prepare(
        l->db, "authorization_refund",
        "UPDATE authorizations SET refunded_amount = refunded_amount + ?2, "
        "updated_at_ms = ?3 WHERE id = ?1 AND status = 'captured' "
        "AND refunded_amount + ?2 <= captured_amount");
    if (!upd)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(upd);
    sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, r->amount);
    sqlite3_bind_int64(st, 3, r->created_ms);
    int rc = step_done(l, upd);
    if (rc == MOAT_OK)
        rc = one_row_changed(l);
    if (rc != MOAT_OK)
        return rc;

    struct moat_stmt *ins = moat_db_prepare(
        l->db, "refund_insert",
        "INSERT INTO refunds (id, authorization_id, amount, created_at_ms) "
        "VALUES (?1, ?2, ?3, ?4)");
    if (!ins)
        return MOAT_EDB;
    st = moat_stmt_raw(ins);
    sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r->amount);
    sqlite3_bind_int64(st, 4, r->created_ms);
    rc = step_done(l, ins);
    if (rc == MOAT_OK)
        rc = entry_append(l, a, "refunded", r->id, r->amount, r->created_ms);
    return rc;
}

int pp_ledger_refunds(struct pp_ledger *l, const char *auth_id,
                      struct pp_refund **out, size_t *n)
{
    struct moat_stmt *stmt =
        moat_db_prepare(l->db, "refund_list",
                        "SELECT id, amount, created_at_ms FROM refunds "
                        "WHERE authorization_id = ?1 ORDER BY id");
    *out = NULL;
    *n = 0;
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, auth_id, -1, SQLITE_STATIC);
    size_t cap = 0;
    int step, rc = MOAT_OK;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 4;
            *out = moat_xrealloc(*out, cap * sizeof(**out));
        }
        struct pp_refund *r = &(*out)[(*n)++];
        copy_column(r->id, sizeof(r->id), st, 0);
        r->amount = sqlite3_column_int64(st, 1);
        r->created_ms = sqlite3_column_int64(st, 2);
    }
    if (step != SQLITE_DONE) {
        rc = moat_db_error(l->db, step);
        free(*out);
        *out = NULL;
        *n = 0;
    }
    moat_stmt_reset(stmt);
    return rc;
}

int pp_ledger_by_reference(struct pp_ledger *l, const char *merchant,
                           const char *reference, struct pp_authorization **out,
                           size_t *n)
{
    struct moat_stmt *stmt = moat_db_prepare(
        l->db, "authorization_by_reference",
        "SELECT " AUTH_COLUMNS " FROM authorizations "
        "WHERE merchant = ?1 AND reference = ?2 ORDER BY id LIMIT ?3");
    *out = NULL;
    *n = 0;
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, merchant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, reference, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, PP_BY_REFERENCE_MAX);
    int step, rc = MOAT_OK;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        *out = moat_xrealloc(*out, (*n + 1) * sizeof(**out));
        rc = row_to_auth(st, &(*out)[*n]);
        if (rc != MOAT_OK)
            break;
        (*n)++;
    }
    if (rc == MOAT_OK && step != SQLITE_DONE)
        rc = moat_db_error(l->db, step);
    if (rc != MOAT_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    moat_stmt_reset(stmt);
    return rc;
}

/* ---- the summary ---- */

enum total {
    T_AUTHORIZED,
    T_CAPTURED,
    T_REFUNDED,
    T_VOIDED,
    T_COUNT_AUTHORIZED,
    T_COUNT_DECLINED,
    NTOTALS
};

static const char *const total_names[NTOTALS] = {
    "authorized", "captured",       "refunded",
    "voided",     "authorizations", "declines",
};

/* Run a per-currency totals query (currency, then ncols integer columns
 * in total_names order) into obj[currency][name]. */
static int sum_into(struct pp_ledger *l, const char *name, const char *sql,
                    const char *merchant, json_t *obj, size_t ncols)
{
    struct moat_stmt *stmt = moat_db_prepare(l->db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, merchant, -1, SQLITE_STATIC);
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        const char *cur = (const char *)sqlite3_column_text(st, 0);
        json_t *t = json_object();
        for (size_t i = 0; i < ncols; i++)
            json_object_set_new(
                t, total_names[i],
                json_integer(sqlite3_column_int64(st, (int)i + 1)));
        json_object_set_new(obj, cur ? cur : "", t);
    }
    int rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(l->db, step);
    moat_stmt_reset(stmt);
    return rc;
}

int pp_ledger_summary(struct pp_ledger *l, const char *merchant, json_t **out)
{
    json_t *from_ledger = json_object();
    json_t *from_state = json_object();
    int rc;

    *out = NULL;
    /* Both sums see the same state without a read transaction: the one
     * connection is used by the one loop thread, so no write can land
     * between the two queries. */
    rc = sum_into(
        l, "summary_ledger",
        "SELECT currency,\n"
        "  coalesce(sum(CASE kind WHEN 'authorized' THEN amount END), 0),\n"
        "  coalesce(sum(CASE kind WHEN 'captured' THEN amount END), 0),\n"
        "  coalesce(sum(CASE kind WHEN 'refunded' THEN amount END), 0),\n"
        "  coalesce(sum(CASE kind WHEN 'voided' THEN amount END), 0),\n"
        "  count(CASE kind WHEN 'authorized' THEN 1 END),\n"
        "  count(CASE kind WHEN 'declined' THEN 1 END)\n"
        "FROM ledger_entries WHERE merchant = ?1\n"
        "GROUP BY currency ORDER BY currency",
        merchant, from_ledger, NTOTALS);
    if (rc == MOAT_OK)
        rc = sum_into(l, "summary_state",
                      "SELECT currency,\n"
                      "  coalesce(sum(CASE WHEN status <> 'declined' "
                      "THEN amount END), 0),\n"
                      "  sum(captured_amount),\n"
                      "  sum(refunded_amount),\n"
                      "  coalesce(sum(CASE status WHEN 'voided' THEN amount "
                      "END), 0),\n"
                      "  count(CASE WHEN status <> 'declined' THEN 1 END),\n"
                      "  count(CASE status WHEN 'declined' THEN 1 END)\n"
                      "FROM authorizations WHERE merchant = ?1\n"
                      "GROUP BY currency ORDER BY currency",
                      merchant, from_state, NTOTALS);
    if (rc != MOAT_OK)
        goto cleanup;

    /* The history and the current state are written in one transaction
     * each time; if their sums ever disagree, a bug broke that, and the
     * auditor should hear it from us first. */
    bool consistent = json_equal(from_ledger, from_state);
    if (!consistent)
        moat_log(MOAT_LOG_ERROR,
                 "ledger history and authorization state disagree",
                 "{s:s, s:O, s:O}", "merchant", merchant, "ledger", from_ledger,
                 "state", from_state);
    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    *out = json_pack("{s:s, s:s, s:O, s:b}", "merchant", merchant, "as_of", ts,
                     "currencies", from_ledger, "consistent", consistent);

cleanup:
    json_decref(from_ledger);
    json_decref(from_state);
    return rc;
}

/* ---- idempotency records ---- */

int pp_ledger_idem_get(struct pp_ledger *l, const char *merchant,
                       const char *key, int64_t not_before_ms,
                       struct pp_idem_record *out)
{
    struct moat_stmt *stmt = moat_db_prepare(
        l->db, "idempotency_get",
        "SELECT fingerprint, status, content_type, body, location, "
        "created_at_ms FROM idempotency_keys "
        "WHERE merchant = ?1 AND key = ?2 AND created_at_ms >= ?3");
    memset(out, 0, sizeof(*out));
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, merchant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, not_before_ms);
    int step = moat_stmt_step(stmt);
    int rc;
    if (step == SQLITE_ROW) {
        copy_column(out->fingerprint, sizeof(out->fingerprint), st, 0);
        out->status = sqlite3_column_int(st, 1);
        const char *ct = (const char *)sqlite3_column_text(st, 2);
        out->content_type = moat_xstrdup(ct ? ct : "application/json");
        const char *body = (const char *)sqlite3_column_text(st, 3);
        out->body = moat_xstrdup(body ? body : "");
        const char *loc = (const char *)sqlite3_column_text(st, 4);
        out->location = loc ? moat_xstrdup(loc) : NULL;
        out->created_ms = sqlite3_column_int64(st, 5);
        rc = MOAT_OK;
    } else if (step == SQLITE_DONE) {
        rc = MOAT_ENOTFOUND;
    } else {
        rc = moat_db_error(l->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int pp_ledger_idem_put(struct pp_ledger *l, const char *merchant,
                       const char *key, const struct pp_idem_record *r)
{
    /* REPLACE only ever meets an expired record: a live one is replayed
     * before the request gets this far. */
    struct moat_stmt *stmt = moat_db_prepare(
        l->db, "idempotency_put",
        "INSERT OR REPLACE INTO idempotency_keys (merchant, key, "
        "fingerprint, status, content_type, body, location, created_at_ms) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_text(st, 1, merchant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->fingerprint, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, r->status);
    sqlite3_bind_text(st, 5, r->content_type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, r->body, -1, SQLITE_STATIC);
    if (r->location)
        sqlite3_bind_text(st, 7, r->location, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, r->created_ms);
    return step_done(l, stmt);
}

int pp_ledger_idem_purge(struct pp_ledger *l, int64_t before_ms, int limit,
                         int *deleted)
{
    struct moat_stmt *stmt = moat_db_prepare(
        l->db, "idempotency_purge",
        "DELETE FROM idempotency_keys WHERE (merchant, key) IN (SELECT "
        "merchant, key FROM idempotency_keys WHERE created_at_ms < ?1 "
        "LIMIT ?2)");
    *deleted = 0;
    if (!stmt)
        return MOAT_EDB;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    sqlite3_bind_int64(st, 1, before_ms);
    sqlite3_bind_int(st, 2, limit);
    int rc = step_done(l, stmt);
    if (rc == MOAT_OK)
        *deleted = sqlite3_changes(moat_db_handle(l->db));
    return rc;
}

#ifdef MOAT_TEST_HOOKS
int pp_ledger_test_repeat_last(struct pp_ledger *l)
{
    int rc = moat_db_exec(
        l->db, "test_repeat_last",
        "INSERT INTO ledger_entries (merchant, authorization_id, kind, "
        "object_id, currency, amount, at_ms) SELECT merchant, "
        "authorization_id, kind, object_id, currency, amount, at_ms FROM "
        "ledger_entries ORDER BY seq DESC LIMIT 1");
    if (rc == MOAT_OK && sqlite3_changes(moat_db_handle(l->db)) == 0)
        rc = MOAT_ENOTFOUND;
    return rc;
}
#endif
