/*
 * customer_store.c - the sealed customer copy: orders keeps each
 * customer's name and email sealed with its own keyring (moat/crypto.h),
 * never in plain text, and re-seals them after a key rotation
 * (moat/keys.h). The schema is store.c's (migrations 1 and 4).
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/keys.h"
#include "moat/log.h"
#include "store.h"

#define AD_NAME  "orders.customer.name"
#define AD_EMAIL "orders.customer.email"

static int seal_field(const struct moat_keyring *kr, const char *place,
                      const char *id, const char *plain, char **out)
{
    char ad[96];
    snprintf(ad, sizeof(ad), "%s:%s", place, id);
    return moat_seal(kr, ad, plain, strlen(plain), out);
}

static int open_field(const struct moat_keyring *kr, const char *place,
                      const char *id, const char *sealed, char **out)
{
    char ad[96];
    snprintf(ad, sizeof(ad), "%s:%s", place, id);
    int rc = moat_open(kr, ad, sealed, out, NULL);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "a sealed customer field does not open",
                 "{s:s, s:s, s:i}", "customer", id, "field", place, "key_id",
                 (int)moat_sealed_key_id(sealed));
        return MOAT_EINVAL;
    }
    return MOAT_OK;
}

static const char *col_text(struct moat_stmt *st, int i)
{
    return moat_stmt_text(st, i);
}

int ord_customer_get(struct moat_db *db, const struct moat_keyring *kr,
                     const char *id, struct ord_customer *out)
{
    struct moat_stmt *st = moat_db_prepare(
        db, "customer_get",
        "SELECT name_enc, email_enc, stale FROM customers WHERE id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    memset(out, 0, sizeof(*out));
    int src = moat_stmt_step(st);
    int rc = MOAT_OK;
    if (src == SQLITE_ROW) {
        snprintf(out->id, sizeof(out->id), "%s", id);
        const char *name = col_text(st, 0), *email = col_text(st, 1);
        if (name && kr)
            rc = open_field(kr, AD_NAME, id, name, &out->name);
        if (rc == MOAT_OK && email && kr)
            rc = open_field(kr, AD_EMAIL, id, email, &out->email);
        out->stale = moat_stmt_int64(st, 2) != 0;
    } else {
        rc = src == SQLITE_DONE ? MOAT_ENOTFOUND : moat_db_error(db, src);
    }
    moat_stmt_reset(st);
    if (rc != MOAT_OK)
        ord_customer_release(out);
    return rc;
}

/* Store sealed name and email (NULL for both: nothing known). */
static int put_sealed(struct moat_db *db, const char *id, const char *name_enc,
                      const char *email_enc, uint32_t key_id, bool touch,
                      int64_t now_ms)
{
    struct moat_stmt *st =
        touch ? moat_db_prepare(
                    db, "customer_put",
                    "INSERT INTO customers (id, name_enc, email_enc, key_id, "
                    "stale, updated_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5) "
                    "ON CONFLICT (id) DO UPDATE SET name_enc = ?2, "
                    "email_enc = ?3, key_id = ?4, stale = 0, updated_ms = ?5")
              : moat_db_prepare(db, "customer_reseal",
                                "UPDATE customers SET name_enc = ?2, "
                                "email_enc = ?3, key_id = ?4 WHERE id = ?1");
    if (!st)
        return MOAT_EDB;
    moat_stmt_bind_text(st, 1, id);
    moat_stmt_bind_text(st, 2, name_enc);
    moat_stmt_bind_text(st, 3, email_enc);
    moat_stmt_bind_int64(st, 4, key_id);
    if (touch)
        moat_stmt_bind_int64(st, 5, now_ms);
    int src = moat_stmt_step(st);
    int rc = src == SQLITE_DONE ? MOAT_OK : moat_db_error(db, src);
    moat_stmt_reset(st);
    return rc;
}

/* Seal name and email for id and store them (touch: as a fresh copy). */
static int seal_and_store(struct moat_db *db, const struct moat_keyring *kr,
                          const char *id, const char *name, const char *email,
                          bool touch, int64_t now_ms)
{
    char *name_enc = NULL, *email_enc = NULL;
    int rc = MOAT_OK;
    /* An empty copy (users no longer knows the customer) seals nothing. */
    if (name[0] || email[0]) {
        rc = seal_field(kr, AD_NAME, id, name, &name_enc);
        if (rc == MOAT_OK)
            rc = seal_field(kr, AD_EMAIL, id, email, &email_enc);
    }
    if (rc == MOAT_OK)
        rc = put_sealed(db, id, name_enc, email_enc,
                        name_enc ? moat_sealed_key_id(name_enc) : 0, touch,
                        now_ms);
    free(name_enc);
    free(email_enc);
    return rc;
}

int ord_customer_put(struct moat_db *db, const struct moat_keyring *kr,
                     const char *id, const char *name, const char *email,
                     int64_t now_ms)
{
    return seal_and_store(db, kr, id, name, email, true, now_ms);
}

struct rekey_row {
    char id[ORD_REF_MAX + 1];
    char *name_enc, *email_enc;
};

/* Re-seal one row under the active key; MOAT_EINVAL leaves it alone. */
static int rekey_row(struct moat_db *db, const struct moat_keyring *kr,
                     const struct rekey_row *r)
{
    char *name = NULL, *email = NULL;
    int rc = open_field(kr, AD_NAME, r->id, r->name_enc, &name);
    if (rc == MOAT_OK)
        rc = open_field(kr, AD_EMAIL, r->id, r->email_enc, &email);
    if (rc == MOAT_OK)
        rc = seal_and_store(db, kr, r->id, name, email, false, 0);
    moat_free_secret(name);
    moat_free_secret(email);
    return rc;
}

int ord_customers_rekey_batch(struct moat_db *db, const struct moat_keyring *kr,
                              uint32_t active, char *after, size_t batch,
                              size_t *resealed, size_t *failed, bool *finished)
{
    struct rekey_row *rows = moat_xcalloc(batch ? batch : 1, sizeof(*rows));
    size_t n = 0;
    *resealed = *failed = 0;
    *finished = false;
    int rc = moat_db_begin(db);
    if (rc != MOAT_OK)
        goto out;
    /* Read the batch first, then write: no UPDATE while the SELECT that
     * feeds it is still stepping over the same table. */
    struct moat_stmt *st = moat_db_prepare(
        db, "customers_rekey_select",
        "SELECT id, name_enc, email_enc FROM customers WHERE id > ?1 AND "
        "key_id NOT IN (0, ?2) ORDER BY id LIMIT ?3");
    if (!st) {
        rc = MOAT_EDB;
    } else {
        moat_stmt_bind_text(st, 1, after);
        moat_stmt_bind_int64(st, 2, active);
        moat_stmt_bind_int64(st, 3, (int64_t)batch);
        int src;
        while (n < batch && (src = moat_stmt_step(st)) == SQLITE_ROW) {
            const char *id = col_text(st, 0), *nm = col_text(st, 1),
                       *em = col_text(st, 2);
            snprintf(rows[n].id, sizeof(rows[n].id), "%s", id ? id : "");
            rows[n].name_enc = moat_xstrdup(nm ? nm : "");
            rows[n].email_enc = moat_xstrdup(em ? em : "");
            n++;
        }
        if (n < batch && src != SQLITE_DONE)
            rc = moat_db_error(db, src);
        moat_stmt_reset(st);
    }
    for (size_t i = 0; rc == MOAT_OK && i < n; i++) {
        int one = rekey_row(db, kr, &rows[i]);
        if (one == MOAT_EINVAL)
            (*failed)++;
        else if (one == MOAT_OK)
            (*resealed)++;
        else
            rc = one;
    }
    if (rc == MOAT_OK)
        rc = moat_db_commit(db);
    else
        moat_db_rollback(db);
    if (rc == MOAT_OK) {
        if (n > 0)
            snprintf(after, MOAT_KEYS_CURSOR_MAX, "%s", rows[n - 1].id);
        *finished = n < batch;
    }
out:
    for (size_t i = 0; i < n; i++) {
        free(rows[i].name_enc);
        free(rows[i].email_enc);
    }
    free(rows);
    return rc;
}

int ord_customers_rows_by_key(struct moat_db *db, json_t **out)
{
    return moat_keys_count_sqlite(
        db, "customers_by_key",
        "SELECT key_id, count(*) FROM customers WHERE key_id <> 0 "
        "GROUP BY key_id",
        out);
}
