/*
 * engine.h - search's engine: what every index of moat-search shares,
 * whatever its documents are (docs/search.md).
 *
 *  - the FTS5 settings (SRCH_FTS_OPTIONS) each index's migration uses;
 *  - what a user typed -> a safe FTS5 expression (srch_fts_query);
 *  - the common query parameters q, limit and cursor, with problem+json
 *    for bad ones (srch_request_parse), and an index's own parameters
 *    through a callback;
 *  - the ranked (bm25) or listed query over one FTS5 external-content
 *    index and its table, with keyset pages (srch_search), and the GET
 *    that runs it and answers {"items", "next_cursor"} (srch_serve);
 *  - removal with a tombstone (srch_store_remove), replay --verify's check
 *    that an index matches its rows (srch_check_index), and the test
 *    builds' apply_log.
 *
 * An index (catalog: store.c, events.c, handlers.c; social: social_*.c)
 * brings its schema, the events that fill it and its routes, and
 * describes each searchable table as a struct srch_corpus. The engine
 * knows no table of its own beyond apply_log.
 *
 * Ownership: everything in the structs below is borrowed unless it says
 * owned; hits belong to the caller (srch_hits_free); a request's owned
 * members are freed by srch_request_release.
 */
#ifndef SRCH_ENGINE_H
#define SRCH_ENGINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/common.h"
#include "moat/db.h"
#include "moat/http.h"

/*
 * Every index's FTS5 options: the tokenizer folds case and diacritics
 * ("Crème" finds "creme"); the prefix indexes make the 2- and 3-character
 * prefix queries that search-as-you-type sends cheap. Spliced into the
 * migrations' SQL text (a shipped migration's text must never change).
 */
#define SRCH_FTS_OPTIONS                                                       \
    "tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3'"

/* Caps of the common parameters. */
#define SRCH_LIMIT_DEFAULT 20
#define SRCH_LIMIT_MAX     100
#define SRCH_Q_MAX_CHARS   200 /* code points of q */
#define SRCH_Q_MAX_TERMS   16
#define SRCH_ID_MAX        64

/* Ids as moat services make them: 1..64 of [A-Za-z0-9_-]. */
bool srch_id_valid(const char *s, size_t len);

/*
 * The FTS5 query for what a user typed: each word (letters, digits,
 * underscore) becomes a quoted prefix query, "word"*, and all must match.
 * Nothing a user types is FTS5 syntax, so no query can fail to parse or
 * reach into another column. Returns the number of words; *out (caller
 * frees) is NULL when there are none.
 */
int srch_fts_query(const char *q, char **out);

/* ---- one searchable table ---- */

/*
 * A table with "rid INTEGER PRIMARY KEY" and a unique text "id", indexed
 * by an FTS5 external-content table (content_rowid = 'rid'). The SQL
 * fragments are trusted text of the index's own (store code), never input.
 */
struct srch_corpus {
    const char *name;  /* prefix of the cached statements' names */
    const char *table; /* "products" */
    const char *fts;   /* "products_fts" */
    const char *bm25;  /* column weights: "10.0, 2.0, 5.0, 1.0" */
    /* SQL expression over the table's alias p: the hit's JSON object, to
     * which the engine adds "score". */
    const char *item;
    /* Without words, hits are listed by (p.<list_key>, p.id), descending
     * when list_desc, ascending otherwise. */
    const char *list_key;
    bool list_desc;
};

/* The page asked for: the words and the keyset cursor. */
struct srch_page {
    const char *match; /* FTS5 expression; NULL lists by list_key */
    size_t limit;
    /* Keyset cursor: the last hit of the previous page. */
    bool has_cursor;
    double after_score;    /* ranked pages */
    const char *after_key; /* listed pages: the list_key as text */
    const char *after_id;
};

/* An index's own conditions, e.g. a price range. */
struct srch_filter {
    unsigned mask;   /* which ones: part of the statement's name (< 2^20) */
    const char *sql; /* " AND p.currency = :currency ..."; NULL = none */
    /* Bind the named parameters of sql; NULL = none. */
    void (*bind)(sqlite3_stmt *st, const void *arg);
    const void *arg;
};

struct srch_hit {
    char *id;     /* owned */
    char *key;    /* owned: list_key as text */
    double score; /* bm25 (lower is better); 0 when listed */
    json_t *item; /* owned */
};

/* Up to pg->limit hits, best first (or listed). filter may be NULL. */
int srch_search(struct moat_db *db, const struct srch_corpus *c,
                const struct srch_page *pg, const struct srch_filter *filter,
                struct srch_hit **hits, size_t *n);
void srch_hits_free(struct srch_hit *hits, size_t n);

/* Bind :name of st (copies value), for filters' bind functions. */
void srch_bind_text(sqlite3_stmt *st, const char *name, const char *value);
void srch_bind_int(sqlite3_stmt *st, const char *name, int64_t value);

/* Step a statement that returns no rows and reset it: MOAT_OK or as
 * moat_db_error(). */
int srch_step_done(struct moat_db *db, struct moat_stmt *stmt);

/*
 * Remove row id of table (no-op when absent or when it reflects an event
 * after seq) and record in tombstones (id TEXT PRIMARY KEY, seq) that
 * event seq deleted it, so that an older event of it, delivered again,
 * cannot revive it; ids are never reused, so a tombstone never expires.
 * *applied says whether a row went. Inside the caller's transaction.
 */
int srch_store_remove(struct moat_db *db, const char *table,
                      const char *tombstones, const char *id, int64_t seq,
                      bool *applied);

/* ---- GET ...?q=&limit=&cursor= ---- */

struct srch_request {
    struct srch_page page;
    const char *text;   /* q as given; NULL when absent or blank */
    const char *cursor; /* as given */
    char *match;        /* owned: page.match */
    char *cursor_raw;   /* owned: page borrows from it */
    int terms;          /* words in q */
    json_t *problem;    /* owned: the 400 being built, NULL while all is well */
};

/*
 * A parameter besides q, limit and cursor: handle it (report a bad value
 * with moat_problem_param_error(&rq->problem, ...)) and return true, or
 * return false when it is not one of the index's.
 */
typedef bool (*srch_param_fn)(struct srch_request *rq, const char *key,
                              const char *value, void *arg);

/*
 * Parse r's query string into rq (zeroed first). param (may be NULL)
 * handles the index's own parameters, named in known (", currency, ...",
 * for the error about an unknown one). Errors accumulate in rq->problem.
 */
void srch_request_parse(struct moat_req *r, struct srch_request *rq,
                        srch_param_fn param, void *arg, const char *known);
void srch_request_release(struct srch_request *rq);

/* Runs the query of one page (srch_search with the index's filter). */
typedef int (*srch_search_fn)(struct moat_db *db, const struct srch_page *pg,
                              void *arg, struct srch_hit **hits, size_t *n);

/*
 * Answer a parsed request: its 400 problem, or 200 {"items": [...],
 * "next_cursor": string|null} from search (one hit more than the limit
 * tells whether a page follows), or 500/503 when the index cannot be
 * read. Words that are all separators ("?q=--") match nothing.
 */
void srch_serve(struct moat_req *r, struct moat_db *db, struct srch_request *rq,
                srch_search_fn search, void *arg);

/* ---- replay --verify and test builds ---- */

/* FTS5's integrity check of index fts against its rows; a failure adds
 * "the <which> full-text index does not match its rows" to diffs. */
void srch_check_index(struct moat_db *db, const char *fts, const char *which,
                      json_t *diffs, size_t max_diffs);

/*
 * apply_log (every search database has it, written by test builds only):
 * count one application of (source, seq) inside the handler's
 * transaction, so the crash tests prove that no event took effect twice;
 * and read the number of events applied and the highest count of one.
 */
int srch_store_count_application(struct moat_db *db, const char *source,
                                 int64_t seq);
int srch_store_applications(struct moat_db *db, int64_t *events,
                            int64_t *max_applications);

#endif /* SRCH_ENGINE_H */
