/* store.c - catalog's schema and queries (see store.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/catalog.h"
#include "moat/buf.h"
#include "moat/db.h"
#include "moat/log.h"
#include "store.h"

struct cat_store {
    struct moat_db *db;         /* owned */
    struct moat_outbox *outbox; /* owned; events of every write */
    int product_event_schema;   /* data version of ProductCreated/Updated */
};

#define DB_FILE "catalog.db"

/*
 * Schema migrations. An applied migration is checksummed by moat_db_migrate:
 * never edit one that has shipped, append a new version instead.
 *
 * products keeps the client document as JSON text (doc) and server-owned
 * metadata in columns. sku, name, currency and amount are VIRTUAL generated
 * columns over doc: indexable and filterable, and they cannot disagree with
 * the document because they are not stored twice. WITHOUT ROWID clusters
 * rows by id, which is the listing order (ids sort by creation time).
 *
 * 2 adds the transactional outbox (moat/events.h) that the writes below
 * append their events to.
 *
 * On PostgreSQL (MOAT_DB_DSN) the same columns are STORED generated
 * columns over doc::jsonb (PostgreSQL 15 has no virtual ones), ids sort
 * bytewise (COLLATE "C", the listing order, whatever the database's
 * locale), and the statements below that differ come in both dialects.
 */
static const struct moat_migration migrations[] = {
    {1, "create products",
     "CREATE TABLE products (\n"
     "    id TEXT NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 31 AND substr(id, 1, 5) = 'prod_'),\n"
     "    doc TEXT NOT NULL\n"
     "        CHECK (json_valid(doc) AND json_type(doc) = 'object'),\n"
     "    version INTEGER NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms INTEGER NOT NULL,\n"
     "    updated_at_ms INTEGER NOT NULL,\n"
     "    sku TEXT NOT NULL\n"
     "        GENERATED ALWAYS AS (json_extract(doc, '$.sku')) VIRTUAL,\n"
     "    name TEXT NOT NULL\n"
     "        GENERATED ALWAYS AS (json_extract(doc, '$.name')) VIRTUAL,\n"
     "    currency TEXT NOT NULL GENERATED ALWAYS AS\n"
     "        (json_extract(doc, '$.price.currency')) VIRTUAL,\n"
     "    amount INTEGER NOT NULL GENERATED ALWAYS AS\n"
     "        (json_extract(doc, '$.price.amount')) VIRTUAL\n"
     ") STRICT, WITHOUT ROWID;\n"
     "CREATE UNIQUE INDEX products_sku ON products (sku);\n"
     "CREATE INDEX products_currency_amount ON products (currency, amount);\n",
     "CREATE TABLE products (\n"
     "    id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY\n"
     "        CHECK (length(id) = 31 AND substr(id, 1, 5) = 'prod_'),\n"
     "    doc TEXT NOT NULL CHECK (json_typeof(doc::json) = 'object'),\n"
     "    version BIGINT NOT NULL CHECK (version >= 1),\n"
     "    created_at_ms BIGINT NOT NULL,\n"
     "    updated_at_ms BIGINT NOT NULL,\n"
     "    sku TEXT NOT NULL\n"
     "        GENERATED ALWAYS AS (doc::jsonb ->> 'sku') STORED,\n"
     "    name TEXT NOT NULL\n"
     "        GENERATED ALWAYS AS (doc::jsonb ->> 'name') STORED,\n"
     "    currency TEXT NOT NULL GENERATED ALWAYS AS\n"
     "        (doc::jsonb -> 'price' ->> 'currency') STORED,\n"
     "    amount BIGINT NOT NULL GENERATED ALWAYS AS\n"
     "        ((doc::jsonb -> 'price' ->> 'amount')::bigint) STORED\n"
     ");\n"
     "CREATE UNIQUE INDEX products_sku ON products (sku);\n"
     "CREATE INDEX products_currency_amount ON products (currency, amount);\n"},
    {2, "create the event outbox", MOAT_OUTBOX_SCHEMA, MOAT_OUTBOX_SCHEMA_PG},
};

int cat_store_open(struct cat_store **out, const char *data_dir,
                   struct moat_metrics *metrics,
                   const struct cat_store_options *opts)
{
    struct cat_store *s = moat_xcalloc(1, sizeof(*s));
    s->product_event_schema = opts->product_event_schema;
    struct moat_db_options dbo = {.dsn = opts->dsn};
    int rc = moat_db_open_migrated(&s->db, data_dir, DB_FILE, &dbo, metrics,
                                   migrations, MOAT_ARRAY_LEN(migrations));
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_outbox_new(&s->outbox, opts->base, s->db, opts->source,
                         &opts->outbox, metrics);
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

void cat_store_close(struct cat_store *s)
{
    if (!s)
        return;
    /* The outbox borrows the database: it goes first. */
    moat_outbox_free(s->outbox);
    moat_db_close(s->db);
    free(s);
}

struct moat_outbox *cat_store_outbox(struct cat_store *s)
{
    return s->outbox;
}

bool cat_store_ready(struct cat_store *s, const char **why)
{
    if (!s || !s->db) {
        *why = "database not open";
        return false;
    }
    /* A query, not a flag: it also proves the database still answers. */
    int version = moat_db_schema_version(s->db);
    if (version != migrations[MOAT_ARRAY_LEN(migrations) - 1].version) {
        *why = "database migrations not applied";
        return false;
    }
    return true;
}

/* ---- rows ---- */

#define PRODUCT_COLUMNS "id, doc, version, created_at_ms, updated_at_ms"

/* Fill p from a row of PRODUCT_COLUMNS. */
static int row_to_product(struct moat_stmt *st, struct cat_product *p)
{
    const char *id = moat_stmt_text(st, 0);
    const char *doc = moat_stmt_text(st, 1);
    json_error_t err;

    memset(p, 0, sizeof(*p));
    if (!id || !doc || strlen(id) != CAT_ID_LEN)
        return MOAT_EDB;
    memcpy(p->id, id, CAT_ID_LEN + 1);
    p->doc = json_loads(doc, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(p->doc)) {
        moat_log(MOAT_LOG_ERROR, "stored product document is not valid JSON",
                 "{s:s, s:s}", "id", id, "error", err.text);
        json_decref(p->doc);
        p->doc = NULL;
        return MOAT_EDB;
    }
    p->version = moat_stmt_int64(st, 2);
    p->created_ms = moat_stmt_int64(st, 3);
    p->updated_ms = moat_stmt_int64(st, 4);
    return MOAT_OK;
}

/* doc as compact JSON text (the caller frees it once the statement that
 * borrows it is done). */
static char *doc_text(json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    if (!text)
        moat_die("cannot serialise a product document");
    return text;
}

/* The moat error for a failed write step: a taken SKU is a conflict, any
 * other constraint (a CHECK) means our own validation let something
 * through, which is a bug rather than the client's fault. */
static int write_error(struct cat_store *s, int step_rc)
{
    /* Extended codes on both engines (PostgreSQL's 23505 is _UNIQUE). */
    int ext = step_rc;
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY)
        return MOAT_ECONFLICT;
    if ((step_rc & 0xff) == SQLITE_CONSTRAINT)
        return MOAT_EDB;
    return moat_db_error(s->db, step_rc);
}

/* Append one event of the open transaction; takes data. */
static int emit(struct cat_store *s, const char *type, const char *id,
                int schema_version, json_t *data)
{
    int rc =
        moat_outbox_append(s->outbox, type, id, schema_version, data, NULL);
    json_decref(data);
    return rc;
}

/* After a successful COMMIT that appended: tell the feed's readers. */
static void committed(struct cat_store *s)
{
    moat_outbox_committed(s->outbox);
}

int cat_store_get(struct cat_store *s, const char *id, struct cat_product *out)
{
    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "product_get",
                        "SELECT " PRODUCT_COLUMNS " FROM products "
                        "WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    int rc = MOAT_EDB;
    if (moat_stmt_bind_text(stmt, 1, id) != MOAT_OK)
        goto cleanup;
    int step = moat_stmt_step(stmt);
    if (step == SQLITE_ROW)
        rc = row_to_product(stmt, out);
    else if (step == SQLITE_DONE)
        rc = MOAT_ENOTFOUND;
    else
        rc = moat_db_error(s->db, step);

cleanup:
    /* Reset at once: an unfinished SELECT pins a WAL read snapshot. */
    moat_stmt_reset(stmt);
    return rc;
}

/* Current version of id inside a transaction, to tell a missing product
 * from a stale precondition after an UPDATE/DELETE changed no row. */
static int current_version(struct cat_store *s, const char *id,
                           int64_t *version)
{
    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "product_version", "SELECT version FROM products WHERE id = ?1");
    if (!stmt)
        return MOAT_EDB;
    moat_stmt_bind_text(stmt, 1, id);
    int step = moat_stmt_step(stmt);
    int rc;
    if (step == SQLITE_ROW) {
        *version = moat_stmt_int64(stmt, 0);
        rc = MOAT_OK;
    } else if (step == SQLITE_DONE) {
        rc = MOAT_ENOTFOUND;
    } else {
        rc = moat_db_error(s->db, step);
    }
    moat_stmt_reset(stmt);
    return rc;
}

int cat_store_create(struct cat_store *s, struct cat_product *p)
{
    char *doc = NULL;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;

    struct moat_stmt *stmt = moat_db_prepare(
        s->db, "product_insert",
        "INSERT INTO products (id, doc, version, created_at_ms, "
        "updated_at_ms) VALUES (?1, ?2, 1, ?3, ?4)");
    if (!stmt) {
        rc = MOAT_EDB;
        goto cleanup;
    }
    doc = doc_text(p->doc);
    moat_stmt_bind_text(stmt, 1, p->id);
    moat_stmt_bind_text(stmt, 2, doc);
    moat_stmt_bind_int64(stmt, 3, p->created_ms);
    moat_stmt_bind_int64(stmt, 4, p->updated_ms);
    int step = moat_stmt_step(stmt);
    if (step != SQLITE_DONE) {
        rc = write_error(s, step);
        goto cleanup;
    }
    moat_stmt_reset(stmt);
    stmt = NULL;
    p->version = 1;

    /*
     * Outbox: the ProductCreated event is inserted here, in this same
     * transaction, so the change and its event commit or vanish together
     * (docs/design.md invariant 2).
     */
    rc = emit(s, CATALOG_PRODUCT_CREATED, p->id, s->product_event_schema,
              cat_product_event_data(p, s->product_event_schema));
    if (rc != MOAT_OK)
        goto cleanup;

    rc = moat_db_commit(s->db);
    if (rc == MOAT_OK)
        committed(s);

cleanup:
    if (stmt)
        moat_stmt_reset(stmt);
    free(doc);
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    return rc;
}

int cat_store_replace(struct cat_store *s, const char *id,
                      int64_t expect_version, json_t *doc, int64_t now_ms,
                      struct cat_product *out)
{
    struct cat_product old = {0}, now = {0};
    struct moat_stmt *stmt = NULL;
    char *text = NULL;
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;

    /* The state before, for PriceChanged (read under the write lock). */
    rc = cat_store_get(s, id, &old);
    if (rc != MOAT_OK)
        goto cleanup;

    stmt = moat_db_prepare_dialect(
        s->db, "product_update",
        "UPDATE products SET doc = ?2, version = version + 1, "
        "updated_at_ms = max(?3, updated_at_ms) "
        "WHERE id = ?1 AND (?4 < 0 OR version = ?4)",
        "UPDATE products SET doc = ?2, version = version + 1, "
        "updated_at_ms = greatest(?3, updated_at_ms) "
        "WHERE id = ?1 AND (?4 < 0 OR version = ?4)");
    if (!stmt) {
        rc = MOAT_EDB;
        goto cleanup;
    }
    text = doc_text(doc);
    moat_stmt_bind_text(stmt, 1, id);
    moat_stmt_bind_text(stmt, 2, text);
    moat_stmt_bind_int64(stmt, 3, now_ms);
    moat_stmt_bind_int64(stmt, 4, expect_version);
    int step = moat_stmt_step(stmt);
    if (step != SQLITE_DONE) {
        rc = write_error(s, step);
        goto cleanup;
    }
    moat_stmt_reset(stmt);
    stmt = NULL;
    if (moat_db_changes(s->db) != 1) {
        int64_t version;
        rc = current_version(s, id, &version);
        if (rc == MOAT_OK)
            rc = MOAT_EPRECOND;
        goto cleanup;
    }

    /*
     * Outbox: ProductUpdated (and PriceChanged when the price differs)
     * go here, in this same transaction.
     */
    rc = cat_store_get(s, id, &now);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = emit(s, CATALOG_PRODUCT_UPDATED, id, s->product_event_schema,
              cat_product_event_data(&now, s->product_event_schema));
    if (rc != MOAT_OK)
        goto cleanup;
    json_t *old_price = json_object_get(old.doc, "price");
    json_t *new_price = json_object_get(now.doc, "price");
    if (!json_equal(old_price, new_price)) {
        rc = emit(s, CATALOG_PRICE_CHANGED, id, CATALOG_PRICE_CHANGED_SCHEMA,
                  json_pack("{s:s, s:O, s:O}", "id", id, "old", old_price,
                            "new", new_price));
        if (rc != MOAT_OK)
            goto cleanup;
    }

    rc = moat_db_commit(s->db);
    if (rc == MOAT_OK) {
        committed(s);
        if (out) {
            *out = now;
            now.doc = NULL;
        }
    }

cleanup:
    if (stmt)
        moat_stmt_reset(stmt);
    free(text);
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    cat_product_release(&old);
    cat_product_release(&now);
    return rc;
}

int cat_store_delete(struct cat_store *s, const char *id,
                     int64_t expect_version)
{
    struct cat_product old = {0};
    int rc = moat_db_begin(s->db);
    if (rc != MOAT_OK)
        return rc;

    /* Its SKU, for ProductDeleted (read under the write lock). */
    rc = cat_store_get(s, id, &old);
    if (rc != MOAT_OK)
        goto cleanup;

    struct moat_stmt *stmt =
        moat_db_prepare(s->db, "product_delete",
                        "DELETE FROM products "
                        "WHERE id = ?1 AND (?2 < 0 OR version = ?2)");
    if (!stmt) {
        rc = MOAT_EDB;
        goto cleanup;
    }
    moat_stmt_bind_text(stmt, 1, id);
    moat_stmt_bind_int64(stmt, 2, expect_version);
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    if (step != SQLITE_DONE) {
        rc = write_error(s, step);
        goto cleanup;
    }
    if (moat_db_changes(s->db) != 1) {
        int64_t version;
        rc = current_version(s, id, &version);
        if (rc == MOAT_OK)
            rc = MOAT_EPRECOND;
        goto cleanup;
    }

    /* Outbox: ProductDeleted goes here, in this same transaction. */
    rc = emit(s, CATALOG_PRODUCT_DELETED, id, CATALOG_PRODUCT_DELETED_SCHEMA,
              json_pack("{s:s, s:O}", "id", id, "sku",
                        json_object_get(old.doc, "sku")));
    if (rc != MOAT_OK)
        goto cleanup;

    rc = moat_db_commit(s->db);
    if (rc == MOAT_OK)
        committed(s);

cleanup:
    if (rc != MOAT_OK)
        moat_db_rollback(s->db);
    cat_product_release(&old);
    return rc;
}

/* ---- listing ---- */

enum list_filter {
    F_CURSOR = 1 << 0,
    F_SKU = 1 << 1,
    F_CURRENCY = 1 << 2,
    F_MIN = 1 << 3,
    F_MAX = 1 << 4,
    F_NAME = 1 << 5,
    F_ATTRS = 1 << 6,
};

/*
 * One SQL text per combination of filters (at most 128), each cached under
 * its own name, rather than one statement full of "(? IS NULL OR ...)":
 * a fixed text lets the planner use the right index for each combination
 * (the SKU index for ?sku=, the currency index for ?currency=). The
 * parameters are numbered in the order the filters appear, which is the
 * order cat_store_list binds them in.
 */
static void list_sql(unsigned mask, bool pg, struct moat_buf *sql)
{
    moat_buf_addstr(sql, "SELECT " PRODUCT_COLUMNS " FROM products WHERE true");
    if (mask & F_CURSOR)
        moat_buf_addstr(sql, " AND id > ?");
    if (mask & F_SKU)
        moat_buf_addstr(sql, " AND sku = ?");
    if (mask & F_CURRENCY)
        moat_buf_addstr(sql, " AND currency = ?");
    if (mask & F_MIN)
        moat_buf_addstr(sql, " AND amount >= ?");
    if (mask & F_MAX)
        moat_buf_addstr(sql, " AND amount <= ?");
    /* SQLite's LIKE ignores ASCII case; PostgreSQL's ILIKE does. */
    if (mask & F_NAME)
        moat_buf_addstr(sql, pg ? " AND name ILIKE ? ESCAPE '\\'"
                                : " AND name LIKE ? ESCAPE '\\'");
    if ((mask & F_ATTRS) && pg)
        /* Every requested attribute present as an equal string: jsonb
         * containment (the filter is an object of strings). */
        moat_buf_addstr(sql,
                        " AND coalesce(doc::jsonb -> 'attributes', '{}') @> "
                        "?::jsonb");
    else if (mask & F_ATTRS)
        /*
         * Every requested attribute must be present as an equal string.
         * json_each compares keys as plain text, so attribute names with
         * dots, quotes or brackets need no JSON-path quoting. Filter keys
         * are unique (the handler refuses repeats), so counting works.
         */
        moat_buf_addstr(sql,
                        " AND (SELECT count(*) FROM json_each(?) AS f"
                        " JOIN json_each(products.doc, '$.attributes') AS a"
                        " ON a.key = f.key"
                        " WHERE a.type = 'text' AND a.atom = f.atom)"
                        " = ?");
    moat_buf_addstr(sql, " ORDER BY id LIMIT ?");
}

/* "%" + pattern with LIKE's wildcards and the escape character escaped. */
static char *like_pattern(const char *s)
{
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_addch(&b, '%');
    for (; *s; s++) {
        if (*s == '%' || *s == '_' || *s == '\\')
            moat_buf_addch(&b, '\\');
        moat_buf_addch(&b, *s);
    }
    moat_buf_addch(&b, '%');
    return moat_buf_detach(&b, NULL);
}

int cat_store_list(struct cat_store *s, const struct cat_filter *f,
                   size_t limit, struct cat_product **items, size_t *n)
{
    unsigned mask = 0;
    if (f->after_id)
        mask |= F_CURSOR;
    if (f->sku)
        mask |= F_SKU;
    if (f->currency)
        mask |= F_CURRENCY;
    if (f->has_min)
        mask |= F_MIN;
    if (f->has_max)
        mask |= F_MAX;
    if (f->name_contains)
        mask |= F_NAME;
    if (json_object_size(f->attrs) > 0)
        mask |= F_ATTRS;

    bool pg = moat_db_engine(s->db) == MOAT_DB_POSTGRES;
    struct moat_buf sql = MOAT_BUF_INIT;
    struct cat_product *out = NULL;
    size_t count = 0;
    int rc = MOAT_EDB;
    char name[32];
    char *pattern = NULL, *attrs = NULL;

    list_sql(mask, pg, &sql);
    snprintf(name, sizeof(name), "product_list_%02x", mask);
    struct moat_stmt *stmt = moat_db_prepare(s->db, name, moat_buf_str(&sql));
    if (!stmt)
        goto cleanup;

    /* In list_sql's order; the texts bound stay alive until the reset. */
    int i = 0;
    if (f->after_id)
        moat_stmt_bind_text(stmt, ++i, f->after_id);
    if (f->sku)
        moat_stmt_bind_text(stmt, ++i, f->sku);
    if (f->currency)
        moat_stmt_bind_text(stmt, ++i, f->currency);
    if (f->has_min)
        moat_stmt_bind_int64(stmt, ++i, f->min_amount);
    if (f->has_max)
        moat_stmt_bind_int64(stmt, ++i, f->max_amount);
    if (f->name_contains) {
        pattern = like_pattern(f->name_contains);
        moat_stmt_bind_text(stmt, ++i, pattern);
    }
    if (mask & F_ATTRS) {
        attrs = json_dumps(f->attrs, JSON_COMPACT);
        if (!attrs)
            moat_die("cannot serialise an attribute filter");
        moat_stmt_bind_text(stmt, ++i, attrs);
        if (!pg)
            moat_stmt_bind_int64(stmt, ++i,
                                 (int64_t)json_object_size(f->attrs));
    }
    moat_stmt_bind_int64(stmt, ++i, (int64_t)limit);

    out = moat_xcalloc(limit ? limit : 1, sizeof(*out));
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW && count < limit) {
        rc = row_to_product(stmt, &out[count]);
        if (rc != MOAT_OK)
            goto cleanup;
        count++;
    }
    rc = step == SQLITE_ROW || step == SQLITE_DONE ? MOAT_OK
                                                   : moat_db_error(s->db, step);

cleanup:
    if (stmt)
        moat_stmt_reset(stmt);
    free(pattern);
    free(attrs);
    moat_buf_release(&sql);
    if (rc != MOAT_OK) {
        cat_products_free(out, count);
        out = NULL;
        count = 0;
    }
    *items = out;
    *n = count;
    return rc;
}

void cat_products_free(struct cat_product *items, size_t n)
{
    if (!items)
        return;
    for (size_t i = 0; i < n; i++)
        cat_product_release(&items[i]);
    free(items);
}

struct moat_db *cat_store_db(struct cat_store *s)
{
    return s->db;
}
