/* store.c - inventory's LMDB layout and every read and write (see store.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/kv.h"
#include "moat/log.h"
#include "store.h"

#define ENV_DIR "inventory.lmdb"

struct inv_store {
    struct moat_kv *kv;         /* owned */
    struct moat_kv_db *stock;   /* owned by kv */
    struct moat_kv_db *adjust;  /* owned by kv: "adjustments" */
    struct moat_outbox *outbox; /* owned; events of every write */
};

/*
 * Layout migrations. The sub-databases themselves are created at open
 * (moat_kv_db); version 1 is their first record layout (store.h), so it
 * has nothing to transform. A later layout change (reservations, next
 * issue) is a new version that rewrites records inside its transaction.
 * Never change a shipped one.
 */
static int migrate_initial(struct moat_kv_txn *t, void *arg)
{
    MOAT_UNUSED(t);
    MOAT_UNUSED(arg);
    return MOAT_OK;
}

static const struct moat_kv_migration migrations[] = {
    {1, "stock and adjustments as JSON records", migrate_initial},
};

bool inv_sku_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > INV_SKU_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

int inv_store_open(struct inv_store **out, const char *data_dir,
                   struct moat_metrics *metrics,
                   const struct inv_store_options *opts)
{
    struct inv_store *s = moat_xcalloc(1, sizeof(*s));
    char *path = moat_xasprintf("%s/%s", data_dir, ENV_DIR);
    int rc = moat_kv_open(&s->kv, path, opts->mapsize, metrics);
    if (rc == MOAT_OK)
        rc = moat_kv_db(s->kv, "stock", &s->stock);
    if (rc == MOAT_OK)
        rc = moat_kv_db(s->kv, "adjustments", &s->adjust);
    if (rc == MOAT_OK)
        rc = moat_kv_migrate(s->kv, migrations, MOAT_ARRAY_LEN(migrations), s);
    if (rc == MOAT_OK)
        rc = moat_outbox_new_kv(&s->outbox, opts->base, s->kv, opts->source,
                                &opts->outbox, metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    *out = s;
    s = NULL;

cleanup:
    if (s) {
        moat_kv_close(s->kv);
        free(s);
    }
    free(path);
    return rc;
}

void inv_store_close(struct inv_store *s)
{
    if (!s)
        return;
    /* The outbox borrows the environment: it goes first. */
    moat_outbox_free(s->outbox);
    moat_kv_close(s->kv);
    free(s);
}

struct moat_outbox *inv_store_outbox(struct inv_store *s)
{
    return s->outbox;
}

bool inv_store_ready(struct inv_store *s, const char **why)
{
    int version = 0;
    if (!s || !s->kv) {
        *why = "database not open";
        return false;
    }
    /* A read, not a flag: it also proves the environment still answers. */
    if (moat_kv_schema_version(s->kv, &version) != MOAT_OK ||
        version != migrations[MOAT_ARRAY_LEN(migrations) - 1].version) {
        *why = "database migrations not applied";
        return false;
    }
    return true;
}

/* ---- records ---- */

static int decode_stock(const char *sku, const void *val, size_t vlen,
                        struct inv_stock *out)
{
    json_error_t err;
    json_int_t on_hand, reserved, sold, version, created, updated;
    memset(out, 0, sizeof(*out));
    json_t *j = json_loadb(val, vlen, JSON_REJECT_DUPLICATES, &err);
    int rc = j ? json_unpack_ex(j, &err, JSON_STRICT,
                                "{s:I, s:I, s:I, s:I, s:I, s:I}", "on_hand",
                                &on_hand, "reserved", &reserved, "sold", &sold,
                                "version", &version, "created_ms", &created,
                                "updated_ms", &updated)
               : -1;
    json_decref(j);
    if (rc != 0 || strlen(sku) > INV_SKU_MAX) {
        moat_log(MOAT_LOG_ERROR, "stored stock record is malformed",
                 "{s:s, s:s}", "sku", sku, "error", err.text);
        return MOAT_EDB;
    }
    snprintf(out->sku, sizeof(out->sku), "%s", sku);
    out->on_hand = on_hand;
    out->reserved = reserved;
    out->sold = sold;
    out->version = version;
    out->created_ms = created;
    out->updated_ms = updated;
    return MOAT_OK;
}

static json_t *encode_stock(const struct inv_stock *st)
{
    return json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I}", "on_hand", (json_int_t)st->on_hand,
        "reserved", (json_int_t)st->reserved, "sold", (json_int_t)st->sold,
        "version", (json_int_t)st->version, "created_ms",
        (json_int_t)st->created_ms, "updated_ms", (json_int_t)st->updated_ms);
}

static int load(struct inv_store *s, struct moat_kv_txn *t, const char *sku,
                struct inv_stock *out)
{
    const void *val;
    size_t vlen;
    int rc = moat_kv_gets(t, s->stock, sku, &val, &vlen);
    if (rc != MOAT_OK)
        return rc;
    return decode_stock(sku, val, vlen, out);
}

int inv_store_get(struct inv_store *s, const char *sku, struct inv_stock *out)
{
    if (!inv_sku_valid(sku))
        return MOAT_ENOTFOUND;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = load(s, t, sku, out);
    moat_kv_abort(t);
    return rc;
}

struct list_ctx {
    const char *after;
    size_t limit;
    struct inv_stock *items;
    size_t n;
};

static int list_one(const void *key, size_t klen, const void *val, size_t vlen,
                    void *arg)
{
    struct list_ctx *c = arg;
    if (klen > INV_SKU_MAX)
        return MOAT_EDB;
    char sku[INV_SKU_MAX + 1];
    memcpy(sku, key, klen);
    sku[klen] = '\0';
    /* The iteration starts at the cursor's own key: that one was on the
     * previous page. */
    if (c->after && strcmp(sku, c->after) == 0)
        return MOAT_KV_NEXT;
    int rc = decode_stock(sku, val, vlen, &c->items[c->n]);
    if (rc != MOAT_OK)
        return rc;
    return ++c->n < c->limit ? MOAT_KV_NEXT : MOAT_KV_STOP;
}

int inv_store_list(struct inv_store *s, const char *after_sku, size_t limit,
                   struct inv_stock **items, size_t *n)
{
    *items = NULL;
    *n = 0;
    if (limit == 0)
        return MOAT_OK;
    struct list_ctx c = {.after = after_sku, .limit = limit};
    c.items = moat_xcalloc(limit, sizeof(*c.items));
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(s->kv, &t);
    if (rc == MOAT_OK) {
        rc = moat_kv_iterate(t, s->stock, after_sku,
                             after_sku ? strlen(after_sku) : 0, list_one, &c);
        moat_kv_abort(t);
    }
    if (rc != MOAT_OK) {
        free(c.items);
        return rc;
    }
    *items = c.items;
    *n = c.n;
    return MOAT_OK;
}

/* ---- writes ---- */

/*
 * Store the new state of a SKU, its line in the adjustment log and its
 * StockChanged event in the open transaction t. kind is "set" or
 * "adjustment"; delta the change of on_hand.
 */
static int record_change(struct inv_store *s, struct moat_kv_txn *t,
                         const struct inv_change *c, const char *kind,
                         int64_t before, const struct inv_stock *after,
                         int64_t *adjustment_id)
{
    json_t *rec = encode_stock(after);
    int rc =
        moat_kv_put_json(t, s->stock, after->sku, strlen(after->sku), rec, 0);
    json_decref(rec);
    if (rc != MOAT_OK)
        return rc;

    /* Log ids follow the last one: one writer, so no two get the same. */
    const void *last;
    size_t klen;
    uint64_t id = 1;
    rc = moat_kv_last(t, s->adjust, &last, &klen, NULL, NULL);
    if (rc == MOAT_OK && klen == 8)
        id = moat_kv_u64_from_key(last) + 1;
    else if (rc != MOAT_ENOTFOUND && rc != MOAT_OK)
        return rc;
    int64_t delta = after->on_hand - before;
    json_t *reason = c->reason ? json_string(c->reason) : json_null();
    json_t *line = json_pack(
        "{s:s, s:s, s:I, s:O, s:I, s:I, s:s, s:I}", "sku", after->sku, "kind",
        kind, "delta", (json_int_t)delta, "reason", reason, "on_hand_before",
        (json_int_t)before, "on_hand_after", (json_int_t)after->on_hand, "user",
        c->user ? c->user : "", "at_ms", (json_int_t)after->updated_ms);
    unsigned char key[8];
    moat_kv_u64_key(id, key);
    rc = line ? moat_kv_put_json(t, s->adjust, key, sizeof(key), line,
                                 MOAT_KV_APPEND)
              : MOAT_EINVAL;
    json_decref(line);
    if (rc != MOAT_OK)
        goto out;
    if (adjustment_id)
        *adjustment_id = (int64_t)id;

    json_t *data = json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:O}", "sku", after->sku,
        "on_hand", (json_int_t)after->on_hand, "reserved",
        (json_int_t)after->reserved, "available",
        (json_int_t)inv_available(after), "sold", (json_int_t)after->sold,
        "version", (json_int_t)after->version, "delta", (json_int_t)delta,
        "kind", kind, "reason", reason);
    rc = moat_outbox_append(s->outbox, "StockChanged", after->sku,
                            INV_STOCK_CHANGED_SCHEMA, data, NULL);
    json_decref(data);

out:
    json_decref(reason);
    return rc;
}

/* Commit t (which wrote) and wake the feed's readers. */
static int commit(struct inv_store *s, struct moat_kv_txn *t)
{
    int rc = moat_kv_commit(t);
    if (rc == MOAT_OK)
        moat_outbox_committed(s->outbox);
    return rc;
}

int inv_store_set(struct inv_store *s, const struct inv_change *c,
                  int64_t on_hand, struct inv_stock *out, bool *created)
{
    struct moat_kv_txn *t = NULL;
    struct inv_stock cur;
    *created = false;
    if (!inv_sku_valid(c->sku) || on_hand < 0 || on_hand > INV_QTY_MAX)
        return MOAT_EINVAL;
    int rc = moat_kv_begin(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = load(s, t, c->sku, &cur);
    if (rc == MOAT_ENOTFOUND) {
        *created = true;
        memset(&cur, 0, sizeof(cur));
        snprintf(cur.sku, sizeof(cur.sku), "%s", c->sku);
    } else if (rc != MOAT_OK) {
        goto cleanup;
    }
    memset(out, 0, sizeof(*out));
    if (c->expect_version != INV_ANY_VERSION &&
        (*created || cur.version != c->expect_version)) {
        if (!*created)
            *out = cur;
        *created = false;
        rc = MOAT_EPRECOND;
        goto cleanup;
    }
    *out = cur;
    if (!*created && cur.on_hand == on_hand) {
        rc = MOAT_OK; /* nothing changes: no version, no event */
        goto cleanup;
    }
    if (on_hand < cur.reserved) {
        rc = MOAT_ECONFLICT;
        goto cleanup;
    }
    struct inv_stock next = cur;
    int64_t now = moat_wall_ms();
    next.on_hand = on_hand;
    next.version = cur.version + 1;
    next.updated_ms = now;
    if (*created)
        next.created_ms = now;
    rc = record_change(s, t, c, "set", cur.on_hand, &next, NULL);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = commit(s, t);
    t = NULL;
    if (rc == MOAT_OK)
        *out = next;

cleanup:
    moat_kv_abort(t);
    return rc;
}

int inv_store_adjust(struct inv_store *s, const struct inv_change *c,
                     int64_t delta, struct inv_stock *out,
                     int64_t *adjustment_id)
{
    struct moat_kv_txn *t = NULL;
    struct inv_stock cur;
    if (!inv_sku_valid(c->sku) || delta == 0 || delta < -INV_QTY_MAX ||
        delta > INV_QTY_MAX)
        return MOAT_EINVAL;
    int rc = moat_kv_begin(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = load(s, t, c->sku, &cur);
    if (rc != MOAT_OK)
        goto cleanup;
    *out = cur;
    /* Both bounds hold before, so this sum cannot overflow. */
    int64_t on_hand = cur.on_hand + delta;
    if (on_hand - cur.reserved < 0 || on_hand > INV_QTY_MAX) {
        rc = MOAT_ECONFLICT;
        goto cleanup;
    }
    struct inv_stock next = cur;
    next.on_hand = on_hand;
    next.version = cur.version + 1;
    next.updated_ms = moat_wall_ms();
    rc =
        record_change(s, t, c, "adjustment", cur.on_hand, &next, adjustment_id);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = commit(s, t);
    t = NULL;
    if (rc == MOAT_OK)
        *out = next;

cleanup:
    moat_kv_abort(t);
    return rc;
}
