/*
 * reports.c - reporting's HTTP API: the reports, as JSON or CSV.
 *
 *   GET  /v1/reports                      the report names
 *   GET  /v1/reports/{name}?from=YYYY-MM-DD&to=YYYY-MM-DD[&format=csv|json]
 *        top-products also takes limit (1..1000, default 10) and
 *        by=quantity|revenue
 *   POST /v1/admin/etl/products           reload dim_product (etl.c)
 *
 * CSV (RFC 4180: CRLF line ends, a header line, fields with a comma,
 * quote, CR or LF quoted and quotes doubled) when ?format=csv or, without
 * format, when Accept names text/csv. Every route needs a service token;
 * a service acting for an end user must act for an admin. The SQL is in
 * store.c; docs/reporting.md describes the reports for their readers.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "reporting.h"
#include "store.h"

#define REPORT_MAX_ROWS   100000
#define TOP_LIMIT_MAX     1000
#define TOP_LIMIT_DEFAULT 10
#define DATE_KEY_MIN      19700101
#define DATE_KEY_MAX      99991231

static const struct {
    const char *name;
    enum rep_report report;
} reports[] = {
    {"revenue-per-day", REP_REVENUE_PER_DAY},
    {"top-products", REP_TOP_PRODUCTS},
    {"cancellation-reasons", REP_CANCELLATION_REASONS},
    {"stock-turnover", REP_STOCK_TURNOVER},
    {"saga-durations", REP_SAGA_DURATIONS},
};

bool rep_authorised(struct moat_req *r)
{
    const struct moat_principal *p = moat_req_principal(r);
    if (!p->user_id[0] || moat_principal_is_admin(p))
        return true;
    moat_req_reply_problem(r, 403, "reports are for administrators only");
    return false;
}

/* "YYYY-MM-DD" of a real calendar day -> YYYYMMDD; false otherwise. */
static bool parse_date(const char *s, int64_t *key)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return false;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
            return false;
    int y = atoi(s), m = atoi(s + 5), d = atoi(s + 8);
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1970 || m < 1 || m > 12 || d < 1 ||
        d > mdays[m - 1] + (m == 2 && leap))
        return false;
    *key = (int64_t)y * 10000 + m * 100 + d;
    return true;
}

/* Whether the Accept header asks for CSV (text/csv anywhere in it). */
static bool accepts_csv(struct moat_req *r)
{
    const char *a = moat_req_header(r, "Accept");
    return a && strstr(a, "text/csv") != NULL;
}

/* ---- CSV ---- */

static void csv_field(struct moat_buf *b, json_t *v)
{
    char num[32];
    const char *s = "";
    switch (json_typeof(v)) {
    case JSON_STRING:
        s = json_string_value(v);
        break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        s = num;
        break;
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        s = num;
        break;
    case JSON_TRUE:
        s = "true";
        break;
    case JSON_FALSE:
        s = "false";
        break;
    default: /* null: an empty field */
        break;
    }
    if (!strpbrk(s, ",\"\r\n")) {
        moat_buf_addstr(b, s);
        return;
    }
    moat_buf_addch(b, '"');
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            moat_buf_addch(b, '"');
        moat_buf_addch(b, *p);
    }
    moat_buf_addch(b, '"');
}

static void csv_row(struct moat_buf *b, json_t *row)
{
    size_t i;
    json_t *v;
    json_array_foreach(row, i, v)
    {
        if (i)
            moat_buf_addch(b, ',');
        csv_field(b, v);
    }
    moat_buf_addstr(b, "\r\n");
}

static void reply_csv(struct moat_req *r, const char *name, json_t *columns,
                      json_t *rows, bool truncated)
{
    struct moat_buf b = MOAT_BUF_INIT;
    csv_row(&b, columns);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        csv_row(&b, row);
    }
    char disp[96];
    snprintf(disp, sizeof(disp), "inline; filename=\"%s.csv\"", name);
    moat_req_set_header(r, "Content-Disposition", disp);
    if (truncated)
        moat_req_set_header(r, "Moat-Report-Truncated", "true");
    moat_req_reply(r, 200, "text/csv; charset=utf-8; header=present", b.data,
                   b.len);
    moat_buf_release(&b);
}

static json_t *rows_as_objects(json_t *columns, json_t *rows)
{
    json_t *out = json_array();
    size_t i, c;
    json_t *row, *v;
    json_array_foreach(rows, i, row)
    {
        json_t *o = json_object();
        json_array_foreach(row, c, v)
        {
            json_object_set(o, json_string_value(json_array_get(columns, c)),
                            v);
        }
        json_array_append_new(out, o);
    }
    return out;
}

static json_t *date_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* ---- GET /v1/reports/{name} ---- */

enum { Q_FROM, Q_TO, Q_FORMAT, Q_LIMIT, Q_BY };

static void handle_report(struct moat_req *r, void *arg)
{
    struct rep_service *s = arg;
    if (!rep_authorised(r))
        return;
    const char *name = moat_req_param(r, "name");
    const char *rname = NULL;
    struct rep_report_query q = {
        .from_key = DATE_KEY_MIN,
        .to_key = DATE_KEY_MAX,
        .limit = TOP_LIMIT_DEFAULT,
        .max_rows = REPORT_MAX_ROWS,
    };
    for (size_t i = 0; name && i < MOAT_ARRAY_LEN(reports) && !rname; i++) {
        if (strcmp(name, reports[i].name) == 0) {
            rname = reports[i].name;
            q.report = reports[i].report;
        }
    }
    if (!rname) {
        moat_req_reply_problem(r, 404,
                               "no such report (revenue-per-day, "
                               "top-products, cancellation-reasons, "
                               "stock-turnover, saga-durations)");
        return;
    }
    struct moat_qparam qp[] = {
        [Q_FROM] = {.name = "from", .kind = MOAT_Q_STR, .min = 1, .max = 10},
        [Q_TO] = {.name = "to", .kind = MOAT_Q_STR, .min = 1, .max = 10},
        [Q_FORMAT] = {.name = "format", .kind = MOAT_Q_STR, .min = 1, .max = 8},
        [Q_LIMIT] = {.name = "limit",
                     .kind = MOAT_Q_INT,
                     .min = 1,
                     .max = TOP_LIMIT_MAX},
        [Q_BY] = {.name = "by", .kind = MOAT_Q_STR, .min = 1, .max = 16},
    };
    json_t *problem = moat_req_parse_query(r, qp, MOAT_ARRAY_LEN(qp));
    if (qp[Q_FROM].sval && !parse_date(qp[Q_FROM].sval, &q.from_key))
        moat_problem_param_error(&problem, "from",
                                 "must be a date YYYY-MM-DD (1970 or later)");
    if (qp[Q_TO].sval && !parse_date(qp[Q_TO].sval, &q.to_key))
        moat_problem_param_error(&problem, "to",
                                 "must be a date YYYY-MM-DD (1970 or later)");
    if (!problem && q.from_key > q.to_key)
        moat_problem_param_error(&problem, "from", "must not be after to");
    bool csv = accepts_csv(r);
    if (qp[Q_FORMAT].sval) {
        if (strcmp(qp[Q_FORMAT].sval, "csv") == 0)
            csv = true;
        else if (strcmp(qp[Q_FORMAT].sval, "json") == 0)
            csv = false;
        else
            moat_problem_param_error(&problem, "format", "must be json or csv");
    }
    bool top = q.report == REP_TOP_PRODUCTS;
    if (qp[Q_LIMIT].seen && !top)
        moat_problem_param_error(&problem, "limit",
                                 "applies to top-products only");
    else if (qp[Q_LIMIT].seen)
        q.limit = qp[Q_LIMIT].ival;
    if (qp[Q_BY].seen && !top) {
        moat_problem_param_error(&problem, "by",
                                 "applies to top-products only");
    } else if (qp[Q_BY].sval) {
        if (strcmp(qp[Q_BY].sval, "revenue") == 0)
            q.by_revenue = true;
        else if (strcmp(qp[Q_BY].sval, "quantity") != 0)
            moat_problem_param_error(&problem, "by",
                                     "must be quantity or revenue");
    }
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }

    json_t *columns = NULL, *rows = NULL;
    bool truncated = false;
    int rc = rep_store_report(s->db, &q, &columns, &rows, &truncated);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "report query failed", "{s:s, s:s}", "report",
                 rname, "error", moat_strerror(rc));
        if (rc == MOAT_EBUSY)
            moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem(r, rc == MOAT_EBUSY ? 503 : 500,
                               "the warehouse could not be read");
        return;
    }
    if (csv) {
        reply_csv(r, rname, columns, rows, truncated);
    } else {
        json_t *body = json_pack(
            "{s:s, s:o, s:o, s:O, s:o, s:I, s:b}", "report", rname, "from",
            date_or_null(qp[Q_FROM].sval), "to", date_or_null(qp[Q_TO].sval),
            "columns", columns, "rows", rows_as_objects(columns, rows), "count",
            (json_int_t)json_array_size(rows), "truncated", truncated);
        moat_req_reply_json(r, 200, body);
    }
    json_decref(columns);
    json_decref(rows);
}

static void handle_list(struct moat_req *r, void *arg)
{
    MOAT_UNUSED(arg);
    if (!rep_authorised(r))
        return;
    json_t *names = json_array();
    for (size_t i = 0; i < MOAT_ARRAY_LEN(reports); i++)
        json_array_append_new(names, json_string(reports[i].name));
    moat_req_reply_json(r, 200, json_pack("{s:o}", "reports", names));
}

int rep_routes_register(struct moat_http_server *server, struct rep_service *s)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET | MOAT_HEAD, "/v1/reports", handle_list},
        {MOAT_GET | MOAT_HEAD, "/v1/reports/{name}", handle_report},
        {MOAT_POST, "/v1/admin/etl/products", rep_handle_etl_products},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, s);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
