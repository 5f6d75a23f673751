/* engine.c - search's engine, shared by every index (see engine.h). */
#include "moat/common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "moat/buf.h"
#include "moat/log.h"
#include "moat/problem.h"

#define CURSOR_MAX_HEX 4096

/* Cursor kinds: a ranked page continues after (score, id), a listed one
 * after (list key, id). The kind is the first byte of the cursor. */
#define CURSOR_RANKED 'r'
#define CURSOR_LISTED 'n'

/* Statement-name bits of srch_search; a filter's mask is shifted above. */
#define Q_MATCH  (1u << 0)
#define Q_CURSOR (1u << 1)

/* ---- text ---- */

static bool utf8_valid(const char *s)
{
    json_t *j = json_string(s);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

bool srch_id_valid(const char *s, size_t len)
{
    if (len == 0 || len > SRCH_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool term_char(unsigned char c)
{
    /* Bytes of multi-byte UTF-8 characters count as letters: q is valid
     * UTF-8 and the tokenizer, not this loop, decides what a letter is. */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

/* Quotes, operators (AND, OR, NOT, NEAR), column filters (name:),
 * parentheses and carets are separators or plain words inside quotes. */
int srch_fts_query(const char *q, char **out)
{
    struct moat_buf b = MOAT_BUF_INIT;
    int terms = 0;
    const unsigned char *p = (const unsigned char *)q;
    while (*p) {
        while (*p && !term_char(*p))
            p++;
        const unsigned char *start = p;
        while (*p && term_char(*p))
            p++;
        if (p == start)
            continue;
        moat_buf_printf(&b, "%s\"", terms ? " " : "");
        moat_buf_add(&b, start, (size_t)(p - start));
        moat_buf_addstr(&b, "\"*");
        terms++;
    }
    *out = terms ? moat_buf_detach(&b, NULL) : NULL;
    moat_buf_release(&b);
    return terms;
}

/* ---- cursors: opaque hex of the kind, the sort key and the last id ---- */

static char *cursor_encode(const struct srch_hit *last, bool ranked)
{
    struct moat_buf raw = MOAT_BUF_INIT;
    if (ranked)
        moat_buf_printf(&raw, "%c%.17g\n%s", CURSOR_RANKED, last->score,
                        last->id);
    else
        moat_buf_printf(&raw, "%c%s\n%s", CURSOR_LISTED, last->key, last->id);
    char *hex = moat_xmalloc(2 * raw.len + 1);
    moat_hex(hex, raw.data, raw.len);
    moat_buf_release(&raw);
    return hex;
}

/*
 * Decode a cursor into pg (which then borrows from *raw; caller frees
 * *raw). False when it is not one this API made for this kind of query.
 */
static bool cursor_decode(const char *hex, bool ranked, struct srch_page *pg,
                          char **raw)
{
    size_t len = strlen(hex);
    *raw = NULL;
    if (len < 4 || len > CURSOR_MAX_HEX || len % 2)
        return false;
    char *s = moat_xmalloc(len / 2 + 1);
    if (moat_unhex(hex, s, len / 2) != MOAT_OK ||
        memchr(s, '\0', len / 2)) /* a NUL byte would cut the cursor */
        goto fail;
    s[len / 2] = '\0';
    char *nl = strrchr(s, '\n');
    if (!nl || !srch_id_valid(nl + 1, strlen(nl + 1)))
        goto fail;
    *nl = '\0';
    if (ranked && s[0] == CURSOR_RANKED) {
        char *end = NULL;
        errno = 0;
        double score = strtod(s + 1, &end);
        if (errno || end == s + 1 || *end || !isfinite(score))
            goto fail;
        pg->after_score = score;
    } else if (!ranked && s[0] == CURSOR_LISTED && utf8_valid(s + 1)) {
        pg->after_key = s + 1;
    } else {
        goto fail;
    }
    pg->after_id = nl + 1;
    pg->has_cursor = true;
    *raw = s;
    return true;
fail:
    free(s);
    return false;
}

/* ---- the query ---- */

/*
 * One SQL text per combination (match, cursor, the filter's mask), each
 * cached under its own name, so SQLite plans each with the right index.
 * Ranked queries materialise the matches with their bm25 score first: the
 * keyset cursor compares scores, and an FTS5 auxiliary function is only
 * defined in the query that runs the MATCH.
 */
static void search_sql(const struct srch_corpus *c, unsigned mask,
                       const char *filter_sql, struct moat_buf *sql)
{
    const char *cmp = c->list_desc ? "<" : ">";
    const char *dir = c->list_desc ? " DESC" : "";
    if (mask & Q_MATCH)
        moat_buf_printf(sql,
                        "WITH hits AS MATERIALIZED ("
                        "SELECT rowid AS rid, bm25(%s, %s) AS score "
                        "FROM %s WHERE %s MATCH :match) "
                        "SELECT p.id, p.%s, %s, h.score FROM hits AS h "
                        "JOIN %s AS p ON p.rid = h.rid WHERE 1",
                        c->fts, c->bm25, c->fts, c->fts, c->list_key, c->item,
                        c->table);
    else
        moat_buf_printf(sql, "SELECT p.id, p.%s, %s, 0.0 FROM %s AS p WHERE 1",
                        c->list_key, c->item, c->table);
    if (filter_sql)
        moat_buf_addstr(sql, filter_sql);
    if ((mask & Q_CURSOR) && (mask & Q_MATCH))
        moat_buf_addstr(sql, " AND (h.score > :after_score OR "
                             "(h.score = :after_score AND p.id > :after_id))");
    else if (mask & Q_CURSOR)
        moat_buf_printf(sql,
                        " AND (p.%s %s :after_key OR "
                        "(p.%s = :after_key AND p.id %s :after_id))",
                        c->list_key, cmp, c->list_key, cmp);
    if (mask & Q_MATCH)
        moat_buf_addstr(sql, " ORDER BY h.score, p.id");
    else
        moat_buf_printf(sql, " ORDER BY p.%s%s, p.id%s", c->list_key, dir, dir);
    moat_buf_addstr(sql, " LIMIT :limit");
}

void srch_bind_text(sqlite3_stmt *st, const char *name, const char *value)
{
    sqlite3_bind_text(st, sqlite3_bind_parameter_index(st, name), value, -1,
                      SQLITE_TRANSIENT);
}

void srch_bind_int(sqlite3_stmt *st, const char *name, int64_t value)
{
    sqlite3_bind_int64(st, sqlite3_bind_parameter_index(st, name), value);
}

static char *column_dup(sqlite3_stmt *st, int col)
{
    const char *s = (const char *)sqlite3_column_text(st, col);
    return moat_xstrdup(s ? s : "");
}

int srch_search(struct moat_db *db, const struct srch_corpus *c,
                const struct srch_page *pg, const struct srch_filter *filter,
                struct srch_hit **hits, size_t *n)
{
    unsigned mask = (pg->match ? Q_MATCH : 0) | (pg->has_cursor ? Q_CURSOR : 0);
    if (filter)
        mask |= filter->mask << 2;

    struct moat_buf sql = MOAT_BUF_INIT;
    struct srch_hit *out =
        moat_xcalloc(pg->limit ? pg->limit : 1, sizeof(*out));
    size_t count = 0;
    int rc = MOAT_EDB;
    char name[64];

    search_sql(c, mask, filter ? filter->sql : NULL, &sql);
    snprintf(name, sizeof(name), "%s_search_%x", c->name, mask);
    struct moat_stmt *stmt = moat_db_prepare(db, name, moat_buf_str(&sql));
    if (!stmt)
        goto cleanup;
    sqlite3_stmt *st = moat_stmt_raw(stmt);
    if (pg->match)
        srch_bind_text(st, ":match", pg->match);
    if (filter && filter->bind)
        filter->bind(st, filter->arg);
    if (pg->has_cursor) {
        srch_bind_text(st, ":after_id", pg->after_id);
        if (pg->match)
            sqlite3_bind_double(
                st, sqlite3_bind_parameter_index(st, ":after_score"),
                pg->after_score);
        else
            srch_bind_text(st, ":after_key", pg->after_key);
    }
    srch_bind_int(st, ":limit", (int64_t)pg->limit);

    int step = SQLITE_DONE;
    while (count < pg->limit && (step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        const char *item = (const char *)sqlite3_column_text(st, 2);
        json_t *j = item ? json_loads(item, 0, NULL) : NULL;
        if (!json_is_object(j)) {
            json_decref(j);
            moat_log(MOAT_LOG_ERROR, "a search hit is not a JSON object",
                     "{s:s}", "corpus", c->name);
            goto cleanup;
        }
        struct srch_hit *h = &out[count++];
        h->id = column_dup(st, 0);
        h->key = column_dup(st, 1);
        h->item = j;
        h->score = sqlite3_column_double(st, 3);
    }
    if (count < pg->limit && step != SQLITE_DONE) {
        /* A malformed MATCH expression cannot happen (srch_fts_query
         * quotes every term), so any error here is the database's. */
        rc = moat_db_error(db, step);
        goto cleanup;
    }
    rc = MOAT_OK;

cleanup:
    if (stmt)
        moat_stmt_reset(stmt);
    moat_buf_release(&sql);
    if (rc != MOAT_OK) {
        srch_hits_free(out, count);
        out = NULL;
        count = 0;
    }
    *hits = out;
    *n = count;
    return rc;
}

void srch_hits_free(struct srch_hit *hits, size_t n)
{
    if (!hits)
        return;
    for (size_t i = 0; i < n; i++) {
        free(hits[i].id);
        free(hits[i].key);
        json_decref(hits[i].item);
    }
    free(hits);
}

/* ---- query parameters ---- */

static void parse_param(struct srch_request *rq, const char *key,
                        const char *value, srch_param_fn param, void *arg,
                        const char *known)
{
    if (strcmp(key, "q") == 0) {
        size_t n = moat_utf8_len(value);
        if (!utf8_valid(value) || n > SRCH_Q_MAX_CHARS)
            moat_problem_param_error(
                &rq->problem, key,
                "must be at most %d characters of valid UTF-8",
                SRCH_Q_MAX_CHARS);
        else
            rq->text = value;
    } else if (strcmp(key, "limit") == 0) {
        int64_t limit;
        if (moat_parse_i64(value, 1, SRCH_LIMIT_MAX, &limit) != MOAT_OK)
            moat_problem_param_error(&rq->problem, key,
                                     "must be an integer from 1 to %d",
                                     SRCH_LIMIT_MAX);
        else
            rq->page.limit = (size_t)limit;
    } else if (strcmp(key, "cursor") == 0) {
        rq->cursor = value; /* decoded once q is known */
    } else if (!param || !param(rq, key, value, arg)) {
        moat_problem_param_error(
            &rq->problem, key, "is not a known parameter (q, limit, cursor%s)",
            known ? known : "");
    }
}

void srch_request_parse(struct moat_req *r, struct srch_request *rq,
                        srch_param_fn param, void *arg, const char *known)
{
    void *iter = NULL;
    const char *key, *value;
    json_t *seen = json_object();
    size_t nparams = 0;

    memset(rq, 0, sizeof(*rq));
    rq->page.limit = SRCH_LIMIT_DEFAULT;
    while (moat_req_query_next(r, &iter, &key, &value)) {
        nparams++;
        /* A repeated parameter is ambiguous (which one wins?): refuse it. */
        if (utf8_valid(key)) {
            if (json_object_get(seen, key)) {
                moat_problem_param_error(&rq->problem, key,
                                         "is given more than once");
                continue;
            }
            json_object_set_new(seen, key, json_true());
        }
        parse_param(rq, key, value ? value : "", param, arg, known);
    }
    json_decref(seen);

    /* evhttp drops the whole query string when one parameter is not
     * name=value: refuse rather than answer an unfiltered search. */
    const char *target = moat_req_target(r);
    const char *qs = target ? strchr(target, '?') : NULL;
    if (nparams == 0 && qs && qs[1 + strspn(qs + 1, "&")] != '\0' &&
        !rq->problem)
        rq->problem = moat_problem_new(400, "the query string is malformed: "
                                            "every parameter must be "
                                            "name=value with a non-empty "
                                            "name");

    /* An empty q (a search box left blank) is no q: list. */
    if (rq->text && rq->text[strspn(rq->text, " \t")] == '\0')
        rq->text = NULL;
    if (rq->text) {
        rq->terms = srch_fts_query(rq->text, &rq->match);
        if (rq->terms > SRCH_Q_MAX_TERMS)
            moat_problem_param_error(&rq->problem, "q",
                                     "must have at most %d words",
                                     SRCH_Q_MAX_TERMS);
    }
    rq->page.match = rq->match;
    bool ranked = rq->terms > 0;
    if (rq->cursor &&
        !cursor_decode(rq->cursor, ranked, &rq->page, &rq->cursor_raw))
        moat_problem_param_error(
            &rq->problem, "cursor",
            "is not a next_cursor returned by this API for this "
            "query");
}

void srch_request_release(struct srch_request *rq)
{
    free(rq->match);
    free(rq->cursor_raw);
    json_decref(rq->problem);
    memset(rq, 0, sizeof(*rq));
}

/* ---- the reply ---- */

void srch_serve(struct moat_req *r, struct moat_db *db, struct srch_request *rq,
                srch_search_fn search, void *arg)
{
    struct srch_hit *hits = NULL;
    size_t n = 0;

    if (rq->problem) {
        moat_req_reply_problem_json(r, rq->problem);
        rq->problem = NULL;
        return;
    }
    bool ranked = rq->terms > 0;
    json_t *items = json_array();
    json_t *next = json_null();
    /* Words were given but none is searchable ("?q=--"): nothing matches. */
    if (!rq->text || ranked) {
        struct srch_page pg = rq->page;
        pg.limit = rq->page.limit + 1; /* one more: does a page follow? */
        int rc = search(db, &pg, arg, &hits, &n);
        if (rc != MOAT_OK) {
            json_decref(items);
            moat_log(MOAT_LOG_ERROR, "search query failed", "{s:s}", "error",
                     moat_strerror(rc));
            if (rc == MOAT_EBUSY)
                moat_req_set_header(r, "Retry-After", "1");
            moat_req_reply_problem(r, rc == MOAT_EBUSY ? 503 : 500,
                                   "the search index could not be read");
            return;
        }
        size_t shown = n > rq->page.limit ? rq->page.limit : n;
        for (size_t i = 0; i < shown; i++) {
            /* bm25 is lower-is-better and negative: clients get
             * higher-is-better. */
            json_object_set_new(hits[i].item, "score",
                                ranked ? json_real(-hits[i].score)
                                       : json_null());
            json_array_append(items, hits[i].item);
        }
        if (n > rq->page.limit) {
            char *c = cursor_encode(&hits[shown - 1], ranked);
            next = json_string(c);
            free(c);
        }
    }
    moat_req_reply_json(
        r, 200, json_pack("{s:o, s:o}", "items", items, "next_cursor", next));
    srch_hits_free(hits, n);
}

/* ---- writes (inside the consumer's transaction) ---- */

int srch_step_done(struct moat_db *db, struct moat_stmt *stmt)
{
    int step = moat_stmt_step(stmt);
    moat_stmt_reset(stmt);
    return step == SQLITE_DONE ? MOAT_OK : moat_db_error(db, step);
}

int srch_store_remove(struct moat_db *db, const char *table,
                      const char *tombstones, const char *id, int64_t seq,
                      bool *applied)
{
    char name[64];
    char *sql =
        moat_xasprintf("DELETE FROM %s WHERE id = ?1 AND seq <= ?2", table);
    snprintf(name, sizeof(name), "%s_remove", table);
    struct moat_stmt *stmt = moat_db_prepare(db, name, sql);
    free(sql);
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(moat_stmt_raw(stmt), 2, seq);
    int rc = srch_step_done(db, stmt);
    if (rc != MOAT_OK)
        return rc;
    *applied = sqlite3_changes(moat_db_handle(db)) > 0;
    sql = moat_xasprintf("INSERT INTO %s (id, seq) VALUES (?1, ?2) "
                         "ON CONFLICT (id) DO UPDATE SET "
                         "seq = max(seq, excluded.seq)",
                         tombstones);
    snprintf(name, sizeof(name), "%s_tombstone", table);
    stmt = moat_db_prepare(db, name, sql);
    free(sql);
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(moat_stmt_raw(stmt), 2, seq);
    return srch_step_done(db, stmt);
}

/* ---- replay --verify ---- */

void srch_check_index(struct moat_db *db, const char *fts, const char *which,
                      json_t *diffs, size_t max_diffs)
{
    char name[64];
    char *sql = moat_xasprintf("INSERT INTO %s (%s, rank) "
                               "VALUES ('integrity-check', 1)",
                               fts, fts);
    snprintf(name, sizeof(name), "%s_integrity_check", fts);
    int rc = moat_db_exec(db, name, sql);
    free(sql);
    if (rc != MOAT_OK && json_array_size(diffs) < max_diffs)
        json_array_append_new(
            diffs, json_sprintf("the %s full-text index %s does not match its "
                                "rows: %s",
                                which, fts, moat_db_errmsg(db)));
}

/* ---- apply_log (test builds) ---- */

int srch_store_count_application(struct moat_db *db, const char *source,
                                 int64_t seq)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "apply_log_count",
        "INSERT INTO apply_log (source, seq, applications) VALUES (?1, ?2, 1) "
        "ON CONFLICT (source, seq) DO UPDATE SET "
        "applications = applications + 1");
    if (!stmt)
        return MOAT_EDB;
    sqlite3_bind_text(moat_stmt_raw(stmt), 1, source, -1, SQLITE_STATIC);
    sqlite3_bind_int64(moat_stmt_raw(stmt), 2, seq);
    return srch_step_done(db, stmt);
}

int srch_store_applications(struct moat_db *db, int64_t *events,
                            int64_t *max_applications)
{
    struct moat_stmt *stmt = moat_db_prepare(
        db, "apply_log_summary",
        "SELECT count(*), coalesce(max(applications), 0) FROM apply_log");
    if (!stmt)
        return MOAT_EDB;
    int step = moat_stmt_step(stmt);
    if (step == SQLITE_ROW) {
        *events = sqlite3_column_int64(moat_stmt_raw(stmt), 0);
        *max_applications = sqlite3_column_int64(moat_stmt_raw(stmt), 1);
    }
    moat_stmt_reset(stmt);
    return step == SQLITE_ROW ? MOAT_OK : moat_db_error(db, step);
}
