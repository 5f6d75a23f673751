/*
 * view.c - comparing two copies of a consumer's view, for replay
 * verification (moat_view_compare_tables in moat/events.h).
 */
#include "moat/common.h"

#include <stdarg.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/events.h"

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

static const char *key_of(sqlite3_stmt *st, int step)
{
    return step == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
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
    sqlite3_stmt *ra = moat_stmt_raw(sa), *rb = moat_stmt_raw(sb);
    int ncols = sqlite3_column_count(ra);
    int stepa = moat_stmt_step(sa), stepb = moat_stmt_step(sb);
    while (stepa == SQLITE_ROW || stepb == SQLITE_ROW) {
        const char *ka = key_of(ra, stepa), *kb = key_of(rb, stepb);
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
        for (int c = 1; c < ncols; c++) {
            sqlite3_value *va = sqlite3_column_value(ra, c);
            sqlite3_value *vb = sqlite3_column_value(rb, c);
            const char *ta = (const char *)sqlite3_value_text(va);
            const char *tb = (const char *)sqlite3_value_text(vb);
            if (sqlite3_value_type(va) != sqlite3_value_type(vb) ||
                strcmp(ta ? ta : "", tb ? tb : "") != 0)
                diff_add(d, "%s %.80s: %s differs (live %.80s, rebuilt %.80s)",
                         t->what, ka, sqlite3_column_name(ra, c),
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
