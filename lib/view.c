/*
 * view.c - comparing two copies of a consumer's view, for replay
 * verification (moat_view_compare_tables and moat_kv_compare_ranges in
 * moat/events.h).
 */
#include "moat/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/kv.h"

struct diff_sink {
    json_t *diffs;
    size_t max;
    size_t dropped;
};

MOAT_PRINTF(2, 3)
static void diff_add(struct diff_sink *d, const char *fmt, ...)
{
    if (json_array_size(d->diffs) >= d->max) {
        d->dropped++;
        return;
    }
    struct moat_buf b = MOAT_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    moat_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    json_t *s = json_string(moat_buf_str(&b));
    json_array_append_new(d->diffs, s ? s : json_string("(not UTF-8)"));
    moat_buf_release(&b);
}

static const char *key_of(struct moat_stmt *st, int step)
{
    return step == SQLITE_ROW ? moat_stmt_text(st, 0) : NULL;
}

/* Whether column c differs between the current rows of sa and sb: SQL
 * NULL or not, the text, and (both on SQLite) the storage class. */
static bool column_differs(struct moat_stmt *sa, struct moat_stmt *sb, int c)
{
    sqlite3_stmt *ra = moat_stmt_raw(sa), *rb = moat_stmt_raw(sb);
    if (ra && rb && sqlite3_column_type(ra, c) != sqlite3_column_type(rb, c))
        return true;
    if (moat_stmt_is_null(sa, c) != moat_stmt_is_null(sb, c))
        return true;
    const char *ta = moat_stmt_text(sa, c), *tb = moat_stmt_text(sb, c);
    return strcmp(ta ? ta : "", tb ? tb : "") != 0;
}

static int compare_table(struct moat_db *a, struct moat_db *b,
                         const struct moat_view_table *t, struct diff_sink *d)
{
    /* Prepared on each connection under the same name: the statement
     * cache is per connection. */
    struct moat_stmt *sa = moat_db_prepare(a, t->name, t->sql);
    struct moat_stmt *sb = moat_db_prepare(b, t->name, t->sql);
    if (!sa || !sb)
        return MOAT_EDB;
    int stepa = moat_stmt_step(sa), stepb = moat_stmt_step(sb);
    while (stepa == SQLITE_ROW || stepb == SQLITE_ROW) {
        const char *ka = key_of(sa, stepa), *kb = key_of(sb, stepb);
        int cmp = !ka ? 1 : !kb ? -1 : strcmp(ka, kb);
        if (cmp < 0) {
            diff_add(d, "%s %.80s: only in the live view", t->what, ka);
            stepa = moat_stmt_step(sa);
            continue;
        }
        if (cmp > 0) {
            diff_add(d, "%s %.80s: only in the rebuilt view", t->what, kb);
            stepb = moat_stmt_step(sb);
            continue;
        }
        int ncols = moat_stmt_columns(sa);
        for (int c = 1; c < ncols; c++) {
            if (!column_differs(sa, sb, c))
                continue;
            const char *ta = moat_stmt_text(sa, c), *tb = moat_stmt_text(sb, c);
            diff_add(d, "%s %.80s: %s differs (live %.80s, rebuilt %.80s)",
                     t->what, ka, moat_stmt_column_name(sa, c),
                     ta ? ta : "NULL", tb ? tb : "NULL");
        }
        stepa = moat_stmt_step(sa);
        stepb = moat_stmt_step(sb);
    }
    int rc = MOAT_OK;
    if (stepa != SQLITE_DONE)
        rc = moat_db_error(a, stepa);
    else if (stepb != SQLITE_DONE)
        rc = moat_db_error(b, stepb);
    moat_stmt_reset(sa);
    moat_stmt_reset(sb);
    return rc;
}

int moat_view_compare_tables(struct moat_db *live, struct moat_db *scratch,
                             const struct moat_view_table *tables, size_t n,
                             json_t *diffs, size_t max_diffs)
{
    struct diff_sink d = {.diffs = diffs, .max = max_diffs};
    int rc = MOAT_OK;
    for (size_t i = 0; i < n && rc == MOAT_OK; i++)
        rc = compare_table(live, scratch, &tables[i], &d);
    if (d.dropped)
        json_array_append_new(
            diffs, json_sprintf("... and %zu more differences", d.dropped));
    return rc;
}

/* ---- LMDB ---- */

/* A key for a message: printable bytes as they are, else hex. */
static void key_text(const void *key, size_t klen, char *out, size_t outlen)
{
    const unsigned char *k = key;
    bool printable = true;
    for (size_t i = 0; i < klen && printable; i++)
        printable = k[i] >= 0x20 && k[i] < 0x7f;
    if (printable) {
        snprintf(out, outlen, "%.*s", (int)(klen < 80 ? klen : 80),
                 (const char *)key);
        return;
    }
    size_t n = klen < 40 ? klen : 40;
    if (outlen < 2 * n + 1)
        n = (outlen - 1) / 2;
    moat_hex(out, k, n);
}

struct range_walk {
    const struct moat_kv_view_range *r;
    struct moat_kv_txn *other; /* the other side's snapshot */
    struct moat_kv_db *other_db;
    bool live_side; /* walking live: compare values; else only presence */
    struct diff_sink *d;
};

static json_t *project(const struct moat_kv_view_range *r, const void *val,
                       size_t vlen)
{
    if (r->project)
        return r->project(val, vlen);
    return json_stringn_nocheck(val, vlen);
}

static int walk_one(const void *key, size_t klen, const void *val, size_t vlen,
                    void *arg)
{
    struct range_walk *w = arg;
    char kt[96];
    const void *oval;
    size_t olen;
    int rc = moat_kv_get(w->other, w->other_db, key, klen, &oval, &olen);
    if (rc == MOAT_ENOTFOUND) {
        key_text(key, klen, kt, sizeof(kt));
        diff_add(w->d, "%s %s: only in the %s view", w->r->what, kt,
                 w->live_side ? "live" : "rebuilt");
        return MOAT_KV_NEXT;
    }
    if (rc != MOAT_OK)
        return rc;
    if (!w->live_side)
        return MOAT_KV_NEXT; /* on both sides: compared from the live one */
    json_t *a = project(w->r, val, vlen), *b = project(w->r, oval, olen);
    if (!a || !b || !json_equal(a, b)) {
        char *ta =
            a ? json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS)
              : NULL;
        char *tb =
            b ? json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS)
              : NULL;
        key_text(key, klen, kt, sizeof(kt));
        diff_add(w->d, "%s %s: differs (live %.200s, rebuilt %.200s)",
                 w->r->what, kt, ta ? ta : "not comparable",
                 tb ? tb : "not comparable");
        free(ta);
        free(tb);
    }
    json_decref(a);
    json_decref(b);
    return MOAT_KV_NEXT;
}

static int compare_range(struct moat_kv *live, struct moat_kv *scratch,
                         const struct moat_kv_view_range *r,
                         struct diff_sink *d)
{
    struct moat_kv_db *dl, *ds;
    struct moat_kv_txn *tl = NULL, *ts = NULL;
    int rc = moat_kv_db(live, r->db, &dl);
    if (rc == MOAT_OK)
        rc = moat_kv_db(scratch, r->db, &ds);
    if (rc == MOAT_OK)
        rc = moat_kv_begin_read(live, &tl);
    if (rc == MOAT_OK)
        rc = moat_kv_begin_read(scratch, &ts);
    if (rc == MOAT_OK) {
        /* Each key of each side looked up on the other: O(n log n), and
         * nothing held in memory but the two snapshots. */
        struct range_walk w = {
            .r = r, .other = ts, .other_db = ds, .live_side = true, .d = d};
        rc = moat_kv_iterate(tl, dl, NULL, 0, walk_one, &w);
        if (rc == MOAT_OK) {
            w = (struct range_walk){.r = r,
                                    .other = tl,
                                    .other_db = dl,
                                    .live_side = false,
                                    .d = d};
            rc = moat_kv_iterate(ts, ds, NULL, 0, walk_one, &w);
        }
    }
    moat_kv_abort(tl);
    moat_kv_abort(ts);
    return rc;
}

int moat_kv_compare_ranges(struct moat_kv *live, struct moat_kv *scratch,
                           const struct moat_kv_view_range *ranges, size_t n,
                           json_t *diffs, size_t max_diffs)
{
    struct diff_sink d = {.diffs = diffs, .max = max_diffs};
    int rc = MOAT_OK;
    for (size_t i = 0; i < n && rc == MOAT_OK; i++)
        rc = compare_range(live, scratch, &ranges[i], &d);
    if (d.dropped)
        json_array_append_new(
            diffs, json_sprintf("... and %zu more differences", d.dropped));
    return rc;
}
