/*
 * handlers.c - search's HTTP API: query parsing and validation, the FTS5
 * query text, cursors and replies. The SQL lives in store.c; docs/api.md
 * and docs/events.md describe the API for clients.
 *
 *   GET /v1/search?q=&limit=&cursor=&currency=&min_price=&max_price=
 *   GET /v1/search/products/{id}          the indexed document
 *   GET /v1/admin/search/lag?since_ms=&until_ms=
 *                                         event -> index lag percentiles
 *   test builds: GET /_test/applications, POST /_test/heal
 */
#include "moat/common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "search.h"
#include "store.h"

#define LIMIT_DEFAULT    20
#define LIMIT_MAX        100
#define Q_MAX_CHARS      200 /* code points of q */
#define Q_MAX_TERMS      16
#define ID_MAX           64
#define CURSOR_MAX_HEX   4096
#define AMOUNT_MAX       1000000000000LL /* catalog's cap: 10^12 */
#define QUERY_MAX_ERRORS 20

/* Cursor kinds: a ranked page continues after (score, id), a listing by
 * name after (name, id). The kind is the first byte of the cursor. */
#define CURSOR_RANKED  'r'
#define CURSOR_BY_NAME 'n'

/* ---- small helpers ---- */

static bool utf8_valid(const char *s)
{
    json_t *j = json_string(s);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

/* Product ids as catalog makes them, loosely: 1..64 of [A-Za-z0-9_-]. */
static bool id_valid(const char *s, size_t len)
{
    if (len == 0 || len > ID_MAX)
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

/*
 * The FTS5 query for what a user typed: each word (letters, digits,
 * underscore) becomes a quoted prefix query, "word"*, and all must match.
 * Nothing a user types is FTS5 syntax: quotes, operators (AND, OR, NOT,
 * NEAR), column filters (name:), parentheses and carets are separators or
 * plain words inside quotes, so no query can fail to parse or reach into
 * another column. Returns the number of words; *out (caller frees) is NULL
 * when there are none.
 */
static int fts_query(const char *q, char **out)
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
        moat_buf_printf(&raw, "%c%s\n%s", CURSOR_BY_NAME, last->name, last->id);
    char *hex = moat_xmalloc(2 * raw.len + 1);
    moat_hex(hex, raw.data, raw.len);
    moat_buf_release(&raw);
    return hex;
}

/*
 * Decode a cursor into q (which then borrows from *raw; caller frees
 * *raw). False when it is not one this API made for this kind of query.
 */
static bool cursor_decode(const char *hex, bool ranked, struct srch_query *q,
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
    if (!nl || !id_valid(nl + 1, strlen(nl + 1)))
        goto fail;
    *nl = '\0';
    if (ranked && s[0] == CURSOR_RANKED) {
        char *end = NULL;
        errno = 0;
        double score = strtod(s + 1, &end);
        if (errno || end == s + 1 || *end || !isfinite(score))
            goto fail;
        q->after_score = score;
    } else if (!ranked && s[0] == CURSOR_BY_NAME && utf8_valid(s + 1)) {
        q->after_name = s + 1;
    } else {
        goto fail;
    }
    q->after_id = nl + 1;
    q->has_cursor = true;
    *raw = s;
    return true;
fail:
    free(s);
    return false;
}

/* ---- query parameters ---- */

struct search_params {
    struct srch_query q;
    const char *text;   /* q as given, NULL when absent */
    const char *cursor; /* as given */
    char *match;        /* owned FTS5 expression */
    char *cursor_raw;   /* owned; q borrows from it */
    int terms;
    json_t *problem; /* 400 problem being built, NULL while all is well */
};

MOAT_PRINTF(3, 4)
static void param_error(struct search_params *sp, const char *param,
                        const char *fmt, ...)
{
    if (!sp->problem)
        sp->problem = moat_problem_new(400, "the query string has invalid "
                                            "parameters");
    json_t *errors = json_object_get(sp->problem, "errors");
    if (!errors) {
        errors = json_array();
        json_object_set_new(sp->problem, "errors", errors);
    }
    if (json_array_size(errors) >= QUERY_MAX_ERRORS)
        return;
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_t *name = json_string(param);
    if (!name)
        name = json_string("(a parameter name that is not valid UTF-8)");
    json_array_append_new(
        errors, json_pack("{s:o, s:s}", "parameter", name, "detail", detail));
}

static void parse_amount(struct search_params *sp, const char *key,
                         const char *value, bool *has, int64_t *out)
{
    if (moat_parse_i64(value, 0, AMOUNT_MAX, out) != MOAT_OK)
        param_error(sp, key,
                    "must be a whole number of minor units from 0 to %lld",
                    (long long)AMOUNT_MAX);
    else
        *has = true;
}

static void parse_param(struct search_params *sp, const char *key,
                        const char *value)
{
    struct srch_query *q = &sp->q;
    if (strcmp(key, "q") == 0) {
        size_t n = moat_utf8_len(value);
        if (!utf8_valid(value) || n > Q_MAX_CHARS)
            param_error(sp, key, "must be at most %d characters of valid UTF-8",
                        Q_MAX_CHARS);
        else
            sp->text = value;
    } else if (strcmp(key, "limit") == 0) {
        int64_t limit;
        if (moat_parse_i64(value, 1, LIMIT_MAX, &limit) != MOAT_OK)
            param_error(sp, key, "must be an integer from 1 to %d", LIMIT_MAX);
        else
            q->limit = (size_t)limit;
    } else if (strcmp(key, "cursor") == 0) {
        sp->cursor = value; /* decoded once q is known */
    } else if (strcmp(key, "currency") == 0) {
        if (strlen(value) != 3 || value[0] < 'A' || value[0] > 'Z' ||
            value[1] < 'A' || value[1] > 'Z' || value[2] < 'A' ||
            value[2] > 'Z')
            param_error(sp, key,
                        "must be a three-letter ISO 4217 currency code in "
                        "upper case, e.g. EUR");
        else
            q->currency = value;
    } else if (strcmp(key, "min_price") == 0) {
        parse_amount(sp, key, value, &q->has_min, &q->min_amount);
    } else if (strcmp(key, "max_price") == 0) {
        parse_amount(sp, key, value, &q->has_max, &q->max_amount);
    } else {
        param_error(sp, key,
                    "is not a known parameter (q, limit, cursor, currency, "
                    "min_price, max_price)");
    }
}

static void parse_search(struct moat_req *r, struct search_params *sp)
{
    void *iter = NULL;
    const char *key, *value;
    json_t *seen = json_object();
    size_t nparams = 0;

    sp->q.limit = LIMIT_DEFAULT;
    while (moat_req_query_next(r, &iter, &key, &value)) {
        nparams++;
        /* A repeated parameter is ambiguous (which one wins?): refuse it. */
        if (utf8_valid(key)) {
            if (json_object_get(seen, key)) {
                param_error(sp, key, "is given more than once");
                continue;
            }
            json_object_set_new(seen, key, json_true());
        }
        parse_param(sp, key, value ? value : "");
    }
    json_decref(seen);

    /* evhttp drops the whole query string when one parameter is not
     * name=value: refuse rather than answer an unfiltered search. */
    const char *target = moat_req_target(r);
    const char *qs = target ? strchr(target, '?') : NULL;
    if (nparams == 0 && qs && qs[1 + strspn(qs + 1, "&")] != '\0' &&
        !sp->problem)
        sp->problem = moat_problem_new(400, "the query string is malformed: "
                                            "every parameter must be "
                                            "name=value with a non-empty "
                                            "name");
    if (sp->q.has_min && sp->q.has_max && sp->q.min_amount > sp->q.max_amount)
        param_error(sp, "min_price", "must not be greater than max_price");

    /* An empty q (a search box left blank) is no q: list by name. */
    if (sp->text && sp->text[strspn(sp->text, " \t")] == '\0')
        sp->text = NULL;
    if (sp->text) {
        sp->terms = fts_query(sp->text, &sp->match);
        if (sp->terms > Q_MAX_TERMS)
            param_error(sp, "q", "must have at most %d words", Q_MAX_TERMS);
    }
    sp->q.match = sp->match;
    bool ranked = sp->terms > 0;
    if (sp->cursor &&
        !cursor_decode(sp->cursor, ranked, &sp->q, &sp->cursor_raw))
        param_error(sp, "cursor",
                    "is not a next_cursor returned by this API for this "
                    "query");
}

/* ---- GET /v1/search ---- */

static json_t *hit_json(const struct srch_hit *h, bool ranked)
{
    /* bm25 is lower-is-better and negative: clients get higher-is-better. */
    return json_pack("{s:s, s:s, s:s, s:{s:I, s:s}, s:o}", "id", h->id, "sku",
                     h->sku, "name", h->name, "price", "amount",
                     (json_int_t)h->amount, "currency", h->currency, "score",
                     ranked ? json_real(-h->score) : json_null());
}

static void handle_search(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    struct search_params sp = {0};
    struct srch_hit *hits = NULL;
    size_t n = 0;

    parse_search(r, &sp);
    if (sp.problem) {
        moat_req_reply_problem_json(r, sp.problem);
        sp.problem = NULL;
        goto cleanup;
    }
    bool ranked = sp.terms > 0;
    json_t *items = json_array();
    json_t *next = json_null();
    /* Words were given but none is searchable ("?q=--"): nothing matches. */
    if (!sp.text || ranked) {
        struct srch_query q = sp.q;
        q.limit = sp.q.limit + 1; /* one more tells whether a page follows */
        int rc = srch_store_search(s->db, &q, &hits, &n);
        if (rc != MOAT_OK) {
            json_decref(items);
            moat_log(MOAT_LOG_ERROR, "search query failed", "{s:s}", "error",
                     moat_strerror(rc));
            if (rc == MOAT_EBUSY)
                moat_req_set_header(r, "Retry-After", "1");
            moat_req_reply_problem(r, rc == MOAT_EBUSY ? 503 : 500,
                                   "the search index could not be read");
            goto cleanup;
        }
        size_t shown = n > sp.q.limit ? sp.q.limit : n;
        for (size_t i = 0; i < shown; i++)
            json_array_append_new(items, hit_json(&hits[i], ranked));
        if (n > sp.q.limit) {
            char *c = cursor_encode(&hits[shown - 1], ranked);
            next = json_string(c);
            free(c);
        }
    }
    moat_req_reply_json(
        r, 200, json_pack("{s:o, s:o}", "items", items, "next_cursor", next));

cleanup:
    srch_hits_free(hits, n);
    free(sp.match);
    free(sp.cursor_raw);
}

/* ---- GET /v1/search/products/{id} ---- */

static void handle_product(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    const char *id = moat_req_param(r, "id");
    json_t *doc = NULL;
    if (!id || !id_valid(id, strlen(id))) {
        moat_req_reply_problem(r, 404, "no product with this id is indexed");
        return;
    }
    int rc = srch_store_get(s->db, id, &doc);
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(r, 404, "product \"%s\" is not indexed", id);
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_problem(r, 500, "the search index could not be read");
        return;
    }
    moat_req_reply_json(r, 200, doc);
}

/* ---- GET /v1/admin/search/lag (for bench/events.sh) ---- */

static void handle_lag(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    int64_t since = 0, until = INT64_MAX;
    const char *a = moat_req_query(r, "since_ms");
    const char *b = moat_req_query(r, "until_ms");
    if ((a && moat_parse_i64(a, 0, INT64_MAX, &since) != MOAT_OK) ||
        (b && moat_parse_i64(b, 0, INT64_MAX, &until) != MOAT_OK)) {
        moat_req_reply_problem(r, 400,
                               "since_ms and until_ms must be milliseconds "
                               "since the epoch");
        return;
    }
    json_t *out = NULL;
    if (srch_store_lag(s->db, since, until, &out) != MOAT_OK) {
        moat_req_reply_problem(r, 500, "the lag could not be computed");
        return;
    }
    moat_req_reply_json(r, 200, out);
}

#ifdef MOAT_TEST_HOOKS
/* ---- test builds only ---- */

static void handle_test_applications(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    int64_t events = 0, max = 0;
    if (srch_store_applications(s->db, &events, &max) != MOAT_OK) {
        moat_req_reply_problem(r, 500, "cannot read apply_log");
        return;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:I, s:I}", "events", (json_int_t)events,
                                  "max_applications", (json_int_t)max));
}

static void handle_test_heal(struct moat_req *r, void *arg)
{
    struct srch_service *s = arg;
    s->poison_healed = true;
    moat_log(MOAT_LOG_WARN, "test hook: poison products healed", NULL);
    moat_req_reply_json(r, 200, json_pack("{s:b}", "healed", 1));
}
#endif

int srch_routes_register(struct moat_http_server *server,
                         struct srch_service *s)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/search", handle_search},
        {MOAT_GET | MOAT_HEAD, "/v1/search/products/{id}", handle_product},
        {MOAT_GET, "/v1/admin/search/lag", handle_lag},
#ifdef MOAT_TEST_HOOKS
        {MOAT_GET, "/_test/applications", handle_test_applications},
        {MOAT_POST, "/_test/heal", handle_test_heal},
#endif
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, s);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
