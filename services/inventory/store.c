/* store.c - inventory's LMDB layout and every read and write (see store.h). */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/inventory.h"
#include "moat/kv.h"
#include "moat/log.h"
#include "store.h"

#define ENV_DIR "inventory.lmdb"

struct inv_store {
    struct moat_kv *kv;         /* owned */
    struct moat_kv_db *stock;   /* owned by kv */
    struct moat_kv_db *adjust;  /* owned by kv: "adjustments" */
    struct moat_kv_db *res;     /* owned by kv: "reservations" */
    struct moat_kv_db *open;    /* owned by kv: "open_by_customer" */
    struct moat_outbox *outbox; /* owned; events of every write */
};

/*
 * Layout migrations. The sub-databases themselves are created at open
 * (moat_kv_db); version 1 is their first record layout (store.h), so it
 * has nothing to transform; nor has version 2, which adds the reservation
 * sub-databases (empty at first, the stock records unchanged: "reserved"
 * was there from the start), nor has version 3, which adds the "consumer"
 * cursors (and the optional "returned" of a reservation, absent = false,
 * so older records stay valid as they are). A later layout change is a new
 * version that rewrites records inside its transaction. Never change a shipped
 * one.
 */
static int migrate_initial(struct moat_kv_txn *t, void *arg)
{
    MOAT_UNUSED(t);
    MOAT_UNUSED(arg);
    return MOAT_OK;
}

static const struct moat_kv_migration migrations[] = {
    {1, "stock and adjustments as JSON records", migrate_initial},
    {2, "reservations and their open-by-customer index", migrate_initial},
    {3, "consumer cursors of the order saga's commands", migrate_initial},
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
        rc = moat_kv_db(s->kv, "reservations", &s->res);
    if (rc == MOAT_OK)
        rc = moat_kv_db(s->kv, "open_by_customer", &s->open);
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

static int put_stock(struct inv_store *s, struct moat_kv_txn *t,
                     const struct inv_stock *st)
{
    json_t *rec = encode_stock(st);
    int rc = moat_kv_put_json(t, s->stock, st->sku, strlen(st->sku), rec, 0);
    json_decref(rec);
    return rc;
}

/*
 * Append one line to the adjustment log: on_hand of after->sku went from
 * before to after->on_hand. reason is a JSON string or null (borrowed).
 */
static int log_adjustment(struct inv_store *s, struct moat_kv_txn *t,
                          const char *kind, json_t *reason, const char *user,
                          int64_t before, const struct inv_stock *after,
                          int64_t *adjustment_id)
{
    /* Log ids follow the last one: one writer, so no two get the same. */
    const void *last;
    size_t klen;
    uint64_t id = 1;
    int rc = moat_kv_last(t, s->adjust, &last, &klen, NULL, NULL);
    if (rc == MOAT_OK && klen == 8)
        id = moat_kv_u64_from_key(last) + 1;
    else if (rc != MOAT_ENOTFOUND && rc != MOAT_OK)
        return rc;
    json_t *line =
        json_pack("{s:s, s:s, s:I, s:O, s:I, s:I, s:s, s:I}", "sku", after->sku,
                  "kind", kind, "delta", (json_int_t)(after->on_hand - before),
                  "reason", reason, "on_hand_before", (json_int_t)before,
                  "on_hand_after", (json_int_t)after->on_hand, "user",
                  user ? user : "", "at_ms", (json_int_t)after->updated_ms);
    unsigned char key[8];
    moat_kv_u64_key(id, key);
    rc = line ? moat_kv_put_json(t, s->adjust, key, sizeof(key), line,
                                 MOAT_KV_APPEND)
              : MOAT_EINVAL;
    json_decref(line);
    if (rc == MOAT_OK && adjustment_id)
        *adjustment_id = (int64_t)id;
    return rc;
}

/*
 * The StockChanged event of after (subject = sku). delta is the change of
 * on_hand; order_id (may be NULL) names the reservation behind it.
 */
static int stock_changed(struct inv_store *s, const struct inv_stock *after,
                         int64_t delta, const char *kind, json_t *reason,
                         const char *order_id)
{
    json_t *data = json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:O}", "sku", after->sku,
        "on_hand", (json_int_t)after->on_hand, "reserved",
        (json_int_t)after->reserved, "available",
        (json_int_t)inv_available(after), "sold", (json_int_t)after->sold,
        "version", (json_int_t)after->version, "delta", (json_int_t)delta,
        "kind", kind, "reason", reason);
    if (!data)
        return MOAT_EINVAL;
    if (order_id)
        json_object_set_new(data, "order_id", json_string(order_id));
    int rc = moat_outbox_append(s->outbox, INVENTORY_STOCK_CHANGED, after->sku,
                                INVENTORY_STOCK_CHANGED_SCHEMA, data, NULL);
    json_decref(data);
    return rc;
}

/*
 * Store the new state of a SKU, its line in the adjustment log and its
 * StockChanged event in the open transaction t. kind is "set" or
 * "adjustment"; before the on_hand before the change.
 */
static int record_change(struct inv_store *s, struct moat_kv_txn *t,
                         const struct inv_change *c, const char *kind,
                         int64_t before, const struct inv_stock *after,
                         int64_t *adjustment_id)
{
    json_t *reason = c->reason ? json_string(c->reason) : json_null();
    int rc = put_stock(s, t, after);
    if (rc == MOAT_OK)
        rc = log_adjustment(s, t, kind, reason, c->user, before, after,
                            adjustment_id);
    if (rc == MOAT_OK)
        rc = stock_changed(s, after, after->on_hand - before, kind, reason,
                           NULL);
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

/* ---- reservations ---- */

static const char *const state_names[] = {
    [INV_HELD] = "held",
    [INV_RELEASED] = "released",
    [INV_COMMITTED] = "committed",
};

const char *inv_res_state_name(enum inv_res_state st)
{
    return state_names[st];
}

bool inv_ref_valid(const char *ref)
{
    /* The SKU charset: safe in a path segment and in an index key (no
     * NUL, which separates customer and order in "open_by_customer"). */
    return inv_sku_valid(ref) && strlen(ref) <= INV_REF_MAX;
}

static int line_cmp(const void *a, const void *b)
{
    return strcmp(((const struct inv_line *)a)->sku,
                  ((const struct inv_line *)b)->sku);
}

bool inv_lines_sort(struct inv_reservation *want)
{
    qsort(want->lines, want->nlines, sizeof(want->lines[0]), line_cmp);
    for (size_t i = 1; i < want->nlines; i++)
        if (strcmp(want->lines[i - 1].sku, want->lines[i].sku) == 0)
            return false;
    return true;
}

static json_t *lines_json(const struct inv_reservation *r)
{
    json_t *a = json_array();
    for (size_t i = 0; i < r->nlines; i++)
        json_array_append_new(a, json_pack("{s:s, s:I}", "sku", r->lines[i].sku,
                                           "quantity",
                                           (json_int_t)r->lines[i].quantity));
    return a;
}

static json_t *encode_res(const struct inv_reservation *r)
{
    json_t *j = json_pack(
        "{s:s, s:o, s:o, s:s, s:b, s:I, s:I, s:I}", "order_id", r->order_id,
        "customer_id", r->tombstone ? json_null() : json_string(r->customer_id),
        "lines", lines_json(r), "state", inv_res_state_name(r->state),
        "tombstone", r->tombstone, "version", (json_int_t)r->version,
        "created_ms", (json_int_t)r->created_ms, "updated_ms",
        (json_int_t)r->updated_ms);
    /* Only when true: the records written before it existed lack it. */
    if (j && r->returned)
        json_object_set_new(j, "returned", json_true());
    return j;
}

static int decode_res(const char *order_id, const void *val, size_t vlen,
                      struct inv_reservation *out)
{
    json_error_t err = {0};
    json_t *customer = NULL, *lines = NULL;
    const char *state = NULL, *stored_id = NULL;
    int tombstone = 0, returned = 0;
    json_int_t version, created, updated;
    int rc = MOAT_EDB;
    memset(out, 0, sizeof(*out));
    json_t *j = json_loadb(val, vlen, JSON_REJECT_DUPLICATES, &err);
    if (!j ||
        json_unpack_ex(j, &err, JSON_STRICT,
                       "{s:s, s:o, s:o, s:s, s:b, s?b, s:I, s:I, s:I}",
                       "order_id", &stored_id, "customer_id", &customer,
                       "lines", &lines, "state", &state, "tombstone",
                       &tombstone, "returned", &returned, "version", &version,
                       "created_ms", &created, "updated_ms", &updated) != 0)
        goto cleanup;
    snprintf(out->order_id, sizeof(out->order_id), "%s", order_id);
    if (json_is_string(customer))
        snprintf(out->customer_id, sizeof(out->customer_id), "%s",
                 json_string_value(customer));
    out->tombstone = tombstone;
    out->returned = returned;
    size_t i;
    for (i = 0; i < MOAT_ARRAY_LEN(state_names); i++)
        if (strcmp(state, state_names[i]) == 0)
            break;
    if (i == MOAT_ARRAY_LEN(state_names) || !json_is_array(lines) ||
        json_array_size(lines) > INV_LINES_MAX)
        goto cleanup;
    out->state = (enum inv_res_state)i;
    json_t *line;
    json_array_foreach(lines, i, line)
    {
        const char *sku;
        json_int_t q;
        if (json_unpack(line, "{s:s, s:I}", "sku", &sku, "quantity", &q) != 0 ||
            !inv_sku_valid(sku))
            goto cleanup;
        snprintf(out->lines[i].sku, sizeof(out->lines[i].sku), "%s", sku);
        out->lines[i].quantity = q;
    }
    out->nlines = json_array_size(lines);
    out->version = version;
    out->created_ms = created;
    out->updated_ms = updated;
    rc = MOAT_OK;

cleanup:
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "stored reservation is malformed",
                 "{s:s, s:s}", "order_id", order_id, "error", err.text);
    json_decref(j);
    return rc;
}

static int load_res(struct inv_store *s, struct moat_kv_txn *t,
                    const char *order_id, struct inv_reservation *out)
{
    const void *val;
    size_t vlen;
    int rc = moat_kv_gets(t, s->res, order_id, &val, &vlen);
    if (rc != MOAT_OK)
        return rc;
    return decode_res(order_id, val, vlen, out);
}

static int put_res(struct inv_store *s, struct moat_kv_txn *t,
                   const struct inv_reservation *r)
{
    json_t *rec = encode_res(r);
    int rc =
        moat_kv_put_json(t, s->res, r->order_id, strlen(r->order_id), rec, 0);
    json_decref(rec);
    return rc;
}

/* The "open_by_customer" key of r: customer_id NUL order_id. */
static size_t open_key(const struct inv_reservation *r,
                       char out[2 * INV_REF_MAX + 2])
{
    size_t c = strlen(r->customer_id), o = strlen(r->order_id);
    memcpy(out, r->customer_id, c + 1);
    memcpy(out + c + 1, r->order_id, o);
    return c + 1 + o;
}

/* The reservation event of r: StockReserved, StockReleased... */
static int res_event(struct inv_store *s, const char *type,
                     const struct inv_reservation *r)
{
    json_t *data = json_pack(
        "{s:s, s:o, s:o, s:s, s:I}", "order_id", r->order_id, "customer_id",
        r->tombstone ? json_null() : json_string(r->customer_id), "lines",
        lines_json(r), "state",
        r->tombstone ? "absent" : inv_res_state_name(r->state), "version",
        (json_int_t)r->version);
    /* A release says what it released (docs/saga.md): units that were
     * held, units already sold and now back on hand, or nothing. */
    if (data && strcmp(type, INVENTORY_STOCK_RELEASED) == 0) {
        json_object_set_new(data, "returned", json_boolean(r->returned));
        json_object_set_new(data, "tombstone", json_boolean(r->tombstone));
    }
    int rc = data ? moat_outbox_append(s->outbox, type, r->order_id,
                                       INVENTORY_RESERVATION_SCHEMA, data, NULL)
                  : MOAT_EINVAL;
    json_decref(data);
    return rc;
}

struct count_ctx {
    const char *prefix; /* customer_id NUL */
    size_t len;
    int64_t n;
};

static int count_one(const void *key, size_t klen, const void *val, size_t vlen,
                     void *arg)
{
    MOAT_UNUSED(val);
    MOAT_UNUSED(vlen);
    struct count_ctx *c = arg;
    if (klen < c->len || memcmp(key, c->prefix, c->len) != 0)
        return MOAT_KV_STOP; /* past this customer's keys */
    c->n++;
    return MOAT_KV_NEXT;
}

static int count_open(struct inv_store *s, struct moat_kv_txn *t,
                      const char *customer_id, int64_t *n)
{
    struct count_ctx c = {.prefix = customer_id,
                          .len = strlen(customer_id) + 1};
    int rc = moat_kv_iterate(t, s->open, customer_id, c.len, count_one, &c);
    *n = c.n;
    return rc;
}

static bool same_request(const struct inv_reservation *a,
                         const struct inv_reservation *b)
{
    if (strcmp(a->customer_id, b->customer_id) != 0 || a->nlines != b->nlines)
        return false;
    for (size_t i = 0; i < a->nlines; i++)
        if (strcmp(a->lines[i].sku, b->lines[i].sku) != 0 ||
            a->lines[i].quantity != b->lines[i].quantity)
            return false;
    return true;
}

int inv_store_reserve_in(struct inv_store *s, struct moat_kv_txn *t,
                         const struct inv_reservation *want, int64_t max_open,
                         struct inv_reservation *out,
                         enum inv_reserve_result *result,
                         struct inv_shortage *shortages, size_t *nshort)
{
    struct inv_stock *stock = NULL;
    int64_t open = 0;
    *nshort = 0;
    if (!inv_ref_valid(want->order_id) || !inv_ref_valid(want->customer_id) ||
        want->nlines < 1 || want->nlines > INV_LINES_MAX)
        return MOAT_EINVAL;

    /* Idempotency by order id: the record decides before any stock. */
    int rc = load_res(s, t, want->order_id, out);
    if (rc == MOAT_OK) {
        if (out->state == INV_RELEASED)
            *result = INV_RESERVE_RELEASED;
        else if (same_request(out, want))
            *result = INV_RESERVE_EXISTS;
        else
            *result = INV_RESERVE_MISMATCH;
        return MOAT_OK; /* nothing written */
    }
    if (rc != MOAT_ENOTFOUND)
        return rc;

    rc = count_open(s, t, want->customer_id, &open);
    if (rc != MOAT_OK)
        return rc;
    if (open >= max_open) {
        *result = INV_RESERVE_CAP;
        return MOAT_OK;
    }

    /* Check every line before writing any, so that the refusal lists all
     * short SKUs and a short line leaves the others untouched. */
    stock = moat_xcalloc(want->nlines, sizeof(*stock));
    for (size_t i = 0; i < want->nlines; i++) {
        const struct inv_line *l = &want->lines[i];
        rc = load(s, t, l->sku, &stock[i]);
        if (rc == MOAT_ENOTFOUND)
            snprintf(stock[i].sku, sizeof(stock[i].sku), "%s", l->sku);
        else if (rc != MOAT_OK)
            goto cleanup;
        if (inv_available(&stock[i]) < l->quantity) {
            struct inv_shortage *sh = &shortages[(*nshort)++];
            snprintf(sh->sku, sizeof(sh->sku), "%s", l->sku);
            sh->requested = l->quantity;
            sh->available = inv_available(&stock[i]);
        }
    }
    rc = MOAT_OK;
    if (*nshort > 0) {
        *result = INV_RESERVE_SHORT;
        goto cleanup;
    }

    int64_t now = moat_wall_ms();
    *out = *want;
    out->state = INV_HELD;
    out->tombstone = false;
    out->returned = false;
    out->version = 1;
    out->created_ms = out->updated_ms = now;
    char key[2 * INV_REF_MAX + 2];
    size_t klen = open_key(out, key);
    rc = put_res(s, t, out);
    if (rc == MOAT_OK)
        rc = moat_kv_put(t, s->open, key, klen, "", 0, 0);
    if (rc == MOAT_OK)
        rc = res_event(s, INVENTORY_STOCK_RESERVED, out);
    for (size_t i = 0; rc == MOAT_OK && i < want->nlines; i++) {
        /* Available was checked above, so reserved stays <= on_hand. */
        stock[i].reserved += want->lines[i].quantity;
        stock[i].version++;
        stock[i].updated_ms = now;
        rc = put_stock(s, t, &stock[i]);
        if (rc == MOAT_OK)
            rc = stock_changed(s, &stock[i], 0, "reserve", json_null(),
                               want->order_id);
    }
    if (rc == MOAT_OK)
        *result = INV_RESERVED;

cleanup:
    free(stock);
    return rc;
}

int inv_store_reserve(struct inv_store *s, const struct inv_reservation *want,
                      int64_t max_open, struct inv_reservation *out,
                      enum inv_reserve_result *result,
                      struct inv_shortage *shortages, size_t *nshort)
{
    struct moat_kv_txn *t = NULL;
    *nshort = 0;
    if (!inv_ref_valid(want->order_id) || !inv_ref_valid(want->customer_id) ||
        want->nlines < 1 || want->nlines > INV_LINES_MAX)
        return MOAT_EINVAL;
    int rc = moat_kv_begin(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = inv_store_reserve_in(s, t, want, max_open, out, result, shortages,
                              nshort);
    if (rc == MOAT_OK && *result == INV_RESERVED) {
        rc = commit(s, t);
        t = NULL;
    }
    moat_kv_abort(t); /* nothing was written, or a fault */
    return rc;
}

/*
 * Move the held reservation r to state to, in t: every SKU gives back its
 * reserved units and, for a commit, leaves on_hand for sold (logged as an
 * adjustment by caller).
 */
static int finish(struct inv_store *s, struct moat_kv_txn *t,
                  struct inv_reservation *r, enum inv_res_state to,
                  const char *caller)
{
    int64_t now = moat_wall_ms();
    bool sold = to == INV_COMMITTED;
    char key[2 * INV_REF_MAX + 2];
    size_t klen = open_key(r, key);
    json_t *reason = NULL;
    int rc = MOAT_OK;

    r->state = to;
    r->version++;
    r->updated_ms = now;
    rc = put_res(s, t, r);
    if (rc == MOAT_OK)
        rc = moat_kv_del(t, s->open, key, klen);
    if (rc == MOAT_OK)
        rc = res_event(
            s, sold ? INVENTORY_STOCK_COMMITTED : INVENTORY_STOCK_RELEASED, r);
    if (rc != MOAT_OK)
        goto cleanup;
    reason = json_sprintf("order %s", r->order_id);
    for (size_t i = 0; i < r->nlines; i++) {
        const struct inv_line *l = &r->lines[i];
        struct inv_stock st;
        rc = load(s, t, l->sku, &st);
        /* A held line always has its SKU and at least its units reserved
         * (store.h); anything else is a damaged database, not a retry. */
        if (rc == MOAT_ENOTFOUND ||
            (rc == MOAT_OK &&
             (st.reserved < l->quantity || (sold && st.on_hand < l->quantity))))
            rc = MOAT_EDB;
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "held units are missing from the stock",
                     "{s:s, s:s}", "order_id", r->order_id, "sku", l->sku);
            goto cleanup;
        }
        int64_t before = st.on_hand;
        st.reserved -= l->quantity;
        if (sold) {
            st.on_hand -= l->quantity;
            st.sold += l->quantity;
        }
        st.version++;
        st.updated_ms = now;
        rc = put_stock(s, t, &st);
        if (rc == MOAT_OK && sold)
            rc = log_adjustment(s, t, "commit", reason, caller, before, &st,
                                NULL);
        if (rc == MOAT_OK)
            rc =
                stock_changed(s, &st, st.on_hand - before,
                              sold ? "commit" : "release", reason, r->order_id);
        if (rc != MOAT_OK)
            goto cleanup;
    }

cleanup:
    json_decref(reason);
    return rc;
}

/*
 * Return the committed reservation r in t: every SKU's units go from sold
 * back to on_hand (a refunded order's goods back on the shelf), logged as
 * kind "return" by caller; r becomes released with returned set.
 */
static int give_back(struct inv_store *s, struct moat_kv_txn *t,
                     struct inv_reservation *r, const char *caller)
{
    int64_t now = moat_wall_ms();
    json_t *reason = NULL;
    r->state = INV_RELEASED;
    r->returned = true;
    r->version++;
    r->updated_ms = now;
    int rc = put_res(s, t, r);
    if (rc == MOAT_OK)
        rc = res_event(s, INVENTORY_STOCK_RELEASED, r);
    if (rc != MOAT_OK)
        goto cleanup;
    reason = json_sprintf("order %s returned", r->order_id);
    for (size_t i = 0; i < r->nlines; i++) {
        const struct inv_line *l = &r->lines[i];
        struct inv_stock st;
        rc = load(s, t, l->sku, &st);
        /* A committed line's units are among the SKU's sold ones; on_hand
         * is capped, so a return that would pass the cap is damage too. */
        if (rc == MOAT_ENOTFOUND ||
            (rc == MOAT_OK &&
             (st.sold < l->quantity || st.on_hand > INV_QTY_MAX - l->quantity)))
            rc = MOAT_EDB;
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "sold units are missing from the stock",
                     "{s:s, s:s}", "order_id", r->order_id, "sku", l->sku);
            goto cleanup;
        }
        int64_t before = st.on_hand;
        st.on_hand += l->quantity;
        st.sold -= l->quantity;
        st.version++;
        st.updated_ms = now;
        rc = put_stock(s, t, &st);
        if (rc == MOAT_OK)
            rc = log_adjustment(s, t, "return", reason, caller, before, &st,
                                NULL);
        if (rc == MOAT_OK)
            rc = stock_changed(s, &st, l->quantity, "return", reason,
                               r->order_id);
        if (rc != MOAT_OK)
            goto cleanup;
    }

cleanup:
    json_decref(reason);
    return rc;
}

/* Release or commit (to) order_id inside t; see store.h. */
static int transition_in(struct inv_store *s, struct moat_kv_txn *t,
                         const char *order_id, enum inv_res_state to,
                         const char *caller, bool allow_return,
                         struct inv_reservation *out,
                         enum inv_transition_result *result)
{
    if (!inv_ref_valid(order_id))
        return MOAT_ENOTFOUND;
    int rc = load_res(s, t, order_id, out);
    if (rc == MOAT_ENOTFOUND && to == INV_RELEASED) {
        /* The tombstone (store.h): refuses a reserve that comes late. */
        memset(out, 0, sizeof(*out));
        snprintf(out->order_id, sizeof(out->order_id), "%s", order_id);
        out->state = INV_RELEASED;
        out->tombstone = true;
        out->version = 1;
        out->created_ms = out->updated_ms = moat_wall_ms();
        rc = put_res(s, t, out);
        if (rc == MOAT_OK)
            rc = res_event(s, INVENTORY_STOCK_RELEASED, out);
        if (rc == MOAT_OK)
            *result = INV_ABSENT;
        return rc;
    }
    if (rc != MOAT_OK)
        return rc;
    if (out->tombstone)
        *result = to == INV_RELEASED ? INV_ALREADY : INV_WRONG_STATE;
    else if (out->state == to)
        *result = INV_ALREADY;
    else if (out->state != INV_HELD)
        *result = INV_WRONG_STATE;
    else
        *result = INV_TRANSITIONED;
    if (*result == INV_WRONG_STATE && to == INV_RELEASED && allow_return) {
        rc = give_back(s, t, out, caller);
        if (rc == MOAT_OK)
            *result = INV_RETURNED;
        return rc;
    }
    if (*result != INV_TRANSITIONED)
        return MOAT_OK; /* nothing to write */
    return finish(s, t, out, to, caller);
}

static bool wrote(enum inv_transition_result r)
{
    return r == INV_TRANSITIONED || r == INV_ABSENT || r == INV_RETURNED;
}

/* transition_in in a transaction of its own. */
static int transition(struct inv_store *s, const char *order_id,
                      enum inv_res_state to, const char *caller,
                      bool allow_return, struct inv_reservation *out,
                      enum inv_transition_result *result)
{
    struct moat_kv_txn *t = NULL;
    if (!inv_ref_valid(order_id))
        return MOAT_ENOTFOUND;
    int rc = moat_kv_begin(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = transition_in(s, t, order_id, to, caller, allow_return, out, result);
    if (rc == MOAT_OK && wrote(*result)) {
        rc = commit(s, t);
        t = NULL;
    }
    moat_kv_abort(t);
    return rc;
}

int inv_store_release(struct inv_store *s, const char *order_id,
                      const char *caller, struct inv_reservation *out,
                      enum inv_transition_result *result)
{
    return transition(s, order_id, INV_RELEASED, caller, false, out, result);
}

int inv_store_return(struct inv_store *s, const char *order_id,
                     const char *caller, struct inv_reservation *out,
                     enum inv_transition_result *result)
{
    return transition(s, order_id, INV_RELEASED, caller, true, out, result);
}

int inv_store_commit(struct inv_store *s, const char *order_id,
                     const char *caller, struct inv_reservation *out,
                     enum inv_transition_result *result)
{
    return transition(s, order_id, INV_COMMITTED, caller, false, out, result);
}

int inv_store_release_in(struct inv_store *s, struct moat_kv_txn *t,
                         const char *order_id, const char *caller,
                         bool allow_return, struct inv_reservation *out,
                         enum inv_transition_result *result)
{
    return transition_in(s, t, order_id, INV_RELEASED, caller, allow_return,
                         out, result);
}

int inv_store_commit_in(struct inv_store *s, struct moat_kv_txn *t,
                        const char *order_id, const char *caller,
                        struct inv_reservation *out,
                        enum inv_transition_result *result)
{
    return transition_in(s, t, order_id, INV_COMMITTED, caller, false, out,
                         result);
}

int inv_store_reservation_get(struct inv_store *s, const char *order_id,
                              struct inv_reservation *out)
{
    if (!inv_ref_valid(order_id))
        return MOAT_ENOTFOUND;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = load_res(s, t, order_id, out);
    moat_kv_abort(t);
    return rc;
}

/* ---- listings for audits ---- */

struct res_visit {
    const char *after;
    size_t limit, n;
    bool more;
    inv_reservation_fn fn;
    void *arg;
    struct inv_reservation *rec; /* scratch, owned by the caller */
};

static int res_visit_one(const void *key, size_t klen, const void *val,
                         size_t vlen, void *arg)
{
    struct res_visit *c = arg;
    char id[INV_REF_MAX + 1];
    if (klen > INV_REF_MAX)
        return MOAT_EDB;
    memcpy(id, key, klen);
    id[klen] = '\0';
    /* The iteration starts at the cursor's own key: it was on the page
     * before. */
    if (c->after && strcmp(id, c->after) == 0)
        return MOAT_KV_NEXT;
    if (c->n == c->limit) {
        c->more = true;
        return MOAT_KV_STOP;
    }
    int rc = decode_res(id, val, vlen, c->rec);
    if (rc == MOAT_OK)
        rc = c->fn(c->rec, c->arg);
    c->n++;
    return rc;
}

int inv_store_reservations_visit(struct inv_store *s, const char *after_id,
                                 size_t limit, inv_reservation_fn fn, void *arg,
                                 bool *more)
{
    struct res_visit c = {
        .after = after_id, .limit = limit, .fn = fn, .arg = arg};
    struct moat_kv_txn *t;
    *more = false;
    if (after_id && !inv_ref_valid(after_id))
        return MOAT_EINVAL;
    int rc = moat_kv_begin_read(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    c.rec = moat_xcalloc(1, sizeof(*c.rec));
    rc = moat_kv_iterate(t, s->res, after_id, after_id ? strlen(after_id) : 0,
                         res_visit_one, &c);
    moat_kv_abort(t);
    free(c.rec);
    *more = c.more;
    return rc;
}

struct adj_visit {
    uint64_t after;
    size_t limit, n;
    bool more;
    inv_adjustment_fn fn;
    void *arg;
};

static int adj_visit_one(const void *key, size_t klen, const void *val,
                         size_t vlen, void *arg)
{
    struct adj_visit *c = arg;
    if (klen != 8)
        return MOAT_EDB;
    uint64_t id = moat_kv_u64_from_key(key);
    if (id <= c->after)
        return MOAT_KV_NEXT;
    if (c->n == c->limit) {
        c->more = true;
        return MOAT_KV_STOP;
    }
    json_error_t err;
    json_t *reason = NULL;
    struct inv_adjustment a = {.id = (int64_t)id};
    json_int_t delta, before, after, at;
    json_t *j = json_loadb(val, vlen, JSON_REJECT_DUPLICATES, &err);
    if (!j ||
        json_unpack_ex(j, &err, JSON_STRICT,
                       "{s:s, s:s, s:I, s:o, s:I, s:I, s:s, s:I}", "sku",
                       &a.sku, "kind", &a.kind, "delta", &delta, "reason",
                       &reason, "on_hand_before", &before, "on_hand_after",
                       &after, "user", &a.user, "at_ms", &at) != 0 ||
        !(json_is_string(reason) || json_is_null(reason))) {
        moat_log(MOAT_LOG_ERROR, "stored adjustment is malformed", "{s:I, s:s}",
                 "id", (json_int_t)id, "error", err.text);
        json_decref(j);
        return MOAT_EDB;
    }
    a.reason = json_string_value(reason);
    a.delta = delta;
    a.on_hand_before = before;
    a.on_hand_after = after;
    a.at_ms = at;
    int rc = c->fn(&a, c->arg);
    json_decref(j);
    c->n++;
    return rc;
}

int inv_store_adjustments_visit(struct inv_store *s, int64_t after_id,
                                size_t limit, inv_adjustment_fn fn, void *arg,
                                bool *more)
{
    struct adj_visit c = {.after = after_id > 0 ? (uint64_t)after_id : 0,
                          .limit = limit,
                          .fn = fn,
                          .arg = arg};
    unsigned char from[8];
    struct moat_kv_txn *t;
    *more = false;
    int rc = moat_kv_begin_read(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    moat_kv_u64_key(c.after, from);
    rc = moat_kv_iterate(t, s->adjust, from, sizeof(from), adj_visit_one, &c);
    moat_kv_abort(t);
    *more = c.more;
    return rc;
}

/* ---- the saga consumer ---- */

int inv_store_reserve_failed_in(struct inv_store *s, struct moat_kv_txn *t,
                                const char *order_id, const char *reason,
                                const char *detail,
                                const struct inv_shortage *shortages,
                                size_t nshort)
{
    MOAT_UNUSED(t); /* the outbox appends to kv's open write transaction */
    json_t *data =
        json_pack("{s:s, s:s}", "order_id", order_id, "reason", reason);
    if (!data)
        return MOAT_EINVAL;
    if (nshort > 0) {
        json_t *list = json_array();
        for (size_t i = 0; i < nshort; i++)
            json_array_append_new(
                list,
                json_pack("{s:s, s:I, s:I}", "sku", shortages[i].sku,
                          "requested", (json_int_t)shortages[i].requested,
                          "available", (json_int_t)shortages[i].available));
        json_object_set_new(data, "shortages", list);
    }
    if (detail)
        json_object_set_new(data, "detail", json_string(detail));
    int rc =
        moat_outbox_append(s->outbox, INVENTORY_STOCK_RESERVATION_FAILED,
                           order_id, INVENTORY_RESERVATION_SCHEMA, data, NULL);
    json_decref(data);
    return rc;
}

struct moat_kv *inv_store_kv(struct inv_store *s)
{
    return s->kv;
}

struct seed {
    struct inv_store *to;
    struct moat_kv_txn *t;
};

/* The stock as the commands found it: every unit set or adjusted in is
 * on hand (on_hand + sold), none reserved or sold yet. */
static int seed_one(const void *key, size_t klen, const void *val, size_t vlen,
                    void *arg)
{
    struct seed *sd = arg;
    char sku[INV_SKU_MAX + 1];
    struct inv_stock st;
    if (klen > INV_SKU_MAX)
        return MOAT_EDB;
    memcpy(sku, key, klen);
    sku[klen] = '\0';
    int rc = decode_stock(sku, val, vlen, &st);
    if (rc != MOAT_OK)
        return rc;
    st.on_hand += st.sold;
    st.reserved = 0;
    st.sold = 0;
    json_t *j = encode_stock(&st);
    rc = moat_kv_put_json(sd->t, sd->to->stock, key, klen, j, 0);
    json_decref(j);
    return rc == MOAT_OK ? MOAT_KV_NEXT : rc;
}

int inv_store_view_seed(struct inv_store *scratch, struct inv_store *live)
{
    struct moat_kv_txn *r = NULL;
    struct seed sd = {.to = scratch};
    int rc = moat_kv_begin_read(live->kv, &r);
    if (rc == MOAT_OK)
        rc = moat_kv_begin(scratch->kv, &sd.t);
    if (rc == MOAT_OK)
        rc = moat_kv_iterate(r, live->stock, NULL, 0, seed_one, &sd);
    moat_kv_abort(r);
    if (rc == MOAT_OK)
        return moat_kv_commit(sd.t);
    moat_kv_abort(sd.t);
    return rc;
}

/* What the commands decide of a stock record: not its version (the HTTP
 * writes count too) nor its times. */
static json_t *stock_projection(const void *val, size_t vlen)
{
    json_t *j = json_loadb(val, vlen, 0, NULL);
    json_t *p = json_pack("{s:O?, s:O?, s:O?}", "on_hand",
                          json_object_get(j, "on_hand"), "reserved",
                          json_object_get(j, "reserved"), "sold",
                          json_object_get(j, "sold"));
    json_decref(j);
    return p;
}

/* A reservation without the times of its writes. */
static json_t *res_projection(const void *val, size_t vlen)
{
    json_t *j = json_loadb(val, vlen, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    json_object_del(j, "created_ms");
    json_object_del(j, "updated_ms");
    return j;
}

#define VIEW_MAX_DIFFS 100

int inv_store_view_compare(struct moat_kv *live, struct moat_kv *scratch,
                           json_t *diffs)
{
    static const struct moat_kv_view_range ranges[] = {
        {"stock", "stock", stock_projection},
        {"reservations", "reservation", res_projection},
        {"open_by_customer", "open reservation", NULL},
    };
    return moat_kv_compare_ranges(live, scratch, ranges, MOAT_ARRAY_LEN(ranges),
                                  diffs, VIEW_MAX_DIFFS);
}

#ifdef MOAT_TEST_HOOKS
/* ---- test builds only: corruption on purpose (store.h) ---- */

int inv_store_test_poke_stock(struct inv_store *s, const char *sku,
                              int64_t d_on_hand, int64_t d_reserved,
                              int64_t d_sold)
{
    struct moat_kv_txn *t;
    int rc = moat_kv_begin(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    struct inv_stock st;
    rc = load(s, t, sku, &st);
    if (rc == MOAT_OK) {
        st.on_hand += d_on_hand;
        st.reserved += d_reserved;
        st.sold += d_sold;
        rc = put_stock(s, t, &st);
    }
    if (rc == MOAT_OK)
        return moat_kv_commit(t);
    moat_kv_abort(t);
    return rc;
}

int inv_store_test_poke_reservation(struct inv_store *s, const char *order_id,
                                    enum inv_res_state state)
{
    struct moat_kv_txn *t;
    int rc = moat_kv_begin(s->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    struct inv_reservation *r = moat_xcalloc(1, sizeof(*r));
    rc = load_res(s, t, order_id, r);
    if (rc == MOAT_OK) {
        r->state = state;
        rc = put_res(s, t, r);
    }
    free(r);
    if (rc == MOAT_OK)
        return moat_kv_commit(t);
    moat_kv_abort(t);
    return rc;
}
#endif
