/*
 * report.c - `moat report NAME [--from D] [--to D] [--csv] [--json]
 * [--limit N] [--by quantity|revenue] [--file F]`: one of the reporting
 * service's reports (GET /v1/reports/{name}, docs/reporting.md), called as
 * the operator with the deployment's operator key like every admin
 * command. Prints an aligned table by default, the service's CSV with
 * --csv, its JSON with --json.
 *
 * Exit status: 0 the report was printed, 1 the service could not answer
 * it, 2 a usage error (also when the service refuses the parameters: an
 * unknown report or a malformed date).
 */
#include "moat/common.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"

#include "cli.h"

#define REPORT_TIMEOUT_MS 60000L
#define REPORT_SERVICE    "reporting"
#define CELL_MAX          48 /* a wider cell is cut in the table */

/* Percent-encode s onto b as a query value. */
static void add_query(struct moat_buf *b, const char *name, const char *value)
{
    if (!value)
        return;
    moat_buf_printf(b, "%c%s=", strchr(moat_buf_str(b), '?') ? '&' : '?', name);
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
            (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
            *p == '~')
            moat_buf_addch(b, (char)*p);
        else
            moat_buf_printf(b, "%%%02X", *p);
    }
}

/* A cell as text into out. */
static void cell_text(json_t *v, char *out, size_t len)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        snprintf(out, len, "%.*s", CELL_MAX, json_string_value(v));
        break;
    case JSON_INTEGER:
        snprintf(out, len, "%lld", (long long)json_integer_value(v));
        break;
    case JSON_REAL:
        snprintf(out, len, "%.3f", json_real_value(v));
        break;
    case JSON_NULL:
        snprintf(out, len, "-");
        break;
    default:
        snprintf(out, len, "%s", json_is_true(v) ? "true" : "false");
        break;
    }
}

static void print_table(json_t *body)
{
    json_t *cols = json_object_get(body, "columns");
    json_t *rows = json_object_get(body, "rows");
    size_t ncols = json_array_size(cols);
    size_t *width = calloc(ncols ? ncols : 1, sizeof(*width));
    char cell[CELL_MAX * 4 + 8];
    size_t i, r;
    json_t *c, *row;
    if (!width)
        return;
    json_array_foreach(cols, i, c)
    {
        width[i] = strlen(json_string_value(c) ? json_string_value(c) : "");
    }
    json_array_foreach(rows, r, row)
    {
        json_array_foreach(cols, i, c)
        {
            cell_text(json_object_get(row, json_string_value(c)), cell,
                      sizeof(cell));
            if (strlen(cell) > width[i])
                width[i] = strlen(cell);
        }
    }
    json_array_foreach(cols, i, c)
    {
        const char *name = json_string_value(c);
        printf("%s%-*s", i ? "  " : "", (int)width[i], name ? name : "");
    }
    putchar('\n');
    json_array_foreach(rows, r, row)
    {
        json_array_foreach(cols, i, c)
        {
            json_t *v = json_object_get(row, json_string_value(c));
            cell_text(v, cell, sizeof(cell));
            /* Numbers to the right, text to the left. */
            if (json_is_number(v))
                printf("%s%*s", i ? "  " : "", (int)width[i], cell);
            else
                printf("%s%-*s", i ? "  " : "", (int)width[i], cell);
        }
        putchar('\n');
    }
    if (json_is_true(json_object_get(body, "truncated")))
        printf("(truncated: the report has more rows than the service "
               "returns)\n");
    free(width);
}

/* The problem's detail and its parameter errors, to stderr. */
static void print_problem(const char *body, long status)
{
    json_t *p = json_loads(body ? body : "", 0, NULL);
    const char *detail = json_string_value(json_object_get(p, "detail"));
    cli_error("reporting answered %ld: %s", status,
              detail ? detail : "no details");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(p, "errors"), i, e)
    {
        fprintf(stderr, "  %s: %s\n",
                json_string_value(json_object_get(e, "parameter"))
                    ? json_string_value(json_object_get(e, "parameter"))
                    : "?",
                json_string_value(json_object_get(e, "detail"))
                    ? json_string_value(json_object_get(e, "detail"))
                    : "");
    }
    json_decref(p);
}

int cli_cmd_report(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"file", required_argument, NULL, 'f'},
        {"from", required_argument, NULL, 'F'},
        {"to", required_argument, NULL, 'T'},
        {"limit", required_argument, NULL, 'n'},
        {"by", required_argument, NULL, 'b'},
        {"csv", no_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL, *from = NULL, *to = NULL, *limit = NULL,
               *by = NULL;
    bool csv = false, json = false;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            file = optarg;
            break;
        case 'F':
            from = optarg;
            break;
        case 'T':
            to = optarg;
            break;
        case 'n':
            limit = optarg;
            break;
        case 'b':
            by = optarg;
            break;
        case 'c':
            csv = true;
            break;
        case 'j':
            json = true;
            break;
        default:
            return cli_option_error("report", c, argv);
        }
    }
    if (csv && json)
        return cli_usage_error("report", "--csv and --json exclude each other");
    if (optind >= argc)
        return cli_usage_error("report", "which report? (revenue-per-day, "
                                         "top-products, cancellation-reasons, "
                                         "stock-turnover, saga-durations)");
    const char *name = argv[optind++];
    if (optind < argc)
        return cli_usage_error("report", "unexpected argument '%s'",
                               argv[optind]);
    if (!name[0] || strspn(name, "abcdefghijklmnopqrstuvwxyz-") != strlen(name))
        return cli_usage_error("report", "'%s' is not a report name", name);

    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    int ret = CLI_EXIT_FAIL;
    char *body = NULL;
    struct moat_buf path = MOAT_BUF_INIT;
    const struct deploy_service *svc = deploy_find(d, REPORT_SERVICE);
    if (!svc) {
        cli_error("no service '%s' in deployment \"%s\"", REPORT_SERVICE,
                  d->name);
        goto cleanup;
    }
    moat_buf_printf(&path, "/v1/reports/%s", name);
    add_query(&path, "from", from);
    add_query(&path, "to", to);
    add_query(&path, "limit", limit);
    add_query(&path, "by", by);
    add_query(&path, "format", csv ? "csv" : "json");
    long status = 0;
    if (cli_operator_call(d, svc, "GET", moat_buf_str(&path), NULL,
                          REPORT_TIMEOUT_MS, &status, &body) != MOAT_OK)
        goto cleanup;
    if (status == 400 || status == 404) {
        print_problem(body, status);
        ret = CLI_EXIT_USAGE;
        goto cleanup;
    }
    if (status != 200) {
        print_problem(body, status);
        goto cleanup;
    }
    if (csv) {
        fputs(body, stdout);
        ret = CLI_EXIT_OK;
        goto cleanup;
    }
    json_t *j = json_loads(body, 0, NULL);
    if (!json_is_object(j)) {
        cli_error("reporting answered something that is not a report");
        json_decref(j);
        goto cleanup;
    }
    if (json) {
        char *text = json_dumps(j, JSON_INDENT(2));
        if (text)
            puts(text);
        free(text);
    } else {
        print_table(j);
    }
    json_decref(j);
    ret = CLI_EXIT_OK;

cleanup:
    moat_buf_release(&path);
    free(body);
    deploy_free(d);
    return ret;
}
