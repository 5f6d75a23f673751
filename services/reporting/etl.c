/*
 * etl.c - the batch ETL: POST /v1/admin/etl/products reloads dim_product
 * from catalog's public API (GET /v1/products, 100 a page, following
 * next_cursor), upserting SKUs, names and prices. Catalog's events keep the
 * dimension current; the reload repairs it (a product whose events are
 * gone from the feed, a dimension restored from an old backup) and
 * reports what it found: {"pages", "seen", "inserted", "updated",
 * "unchanged", "skipped", "invalid", "duration_ms"}.
 *
 * A row is never made older than it is: a product whose row holds a later
 * catalog version (events already applied) is skipped. Each page is one
 * transaction of its own, between the consumer's (both run on the loop
 * thread, and neither keeps a transaction open across loop turns).
 *
 * One reload at a time (409 while one runs). The request is answered when
 * the last page is stored, or with 502 when catalog fails (the pages
 * stored so far stay), or 503 when reporting shuts down meanwhile.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "reporting.h"
#include "store.h"

#define PAGE_LIMIT      100
#define PAGES_MAX       100000 /* 10 million products: a runaway cursor */
#define PAGE_TIMEOUT_MS 10000L
#define CURSOR_MAX      4096

struct rep_etl {
    struct rep_service *s;
    struct moat_req *req; /* answered by finish */
    char *cursor;         /* owned: the next page's cursor, NULL first */
    int64_t pages, invalid;
    struct rep_etl_counts c;
    int64_t started_ms;
};

static void etl_free(struct rep_etl *e)
{
    if (!e)
        return;
    if (e->s->etl == e)
        e->s->etl = NULL;
    free(e->cursor);
    free(e);
}

/* Answer the request (problem: a new problem, stolen; NULL = success). */
static void finish(struct rep_etl *e, json_t *problem)
{
    if (problem) {
        json_object_set_new(problem, "pages", json_integer(e->pages));
        moat_req_reply_problem_json(e->req, problem);
    } else {
        moat_log(MOAT_LOG_INFO, "product dimension reloaded",
                 "{s:I, s:I, s:I, s:I}", "seen", (json_int_t)e->c.seen,
                 "inserted", (json_int_t)e->c.inserted, "updated",
                 (json_int_t)e->c.updated, "pages", (json_int_t)e->pages);
        moat_req_reply_json(
            e->req, 200,
            json_pack(
                "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "source",
                "catalog", "pages", (json_int_t)e->pages, "seen",
                (json_int_t)e->c.seen, "inserted", (json_int_t)e->c.inserted,
                "updated", (json_int_t)e->c.updated, "unchanged",
                (json_int_t)e->c.unchanged, "skipped", (json_int_t)e->c.skipped,
                "invalid", (json_int_t)e->invalid, "duration_ms",
                (json_int_t)(moat_wall_ms() - e->started_ms)));
    }
    etl_free(e);
}

static void add_escaped(struct moat_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
            (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
            *p == '~') {
            moat_buf_addch(b, (char)*p);
        } else {
            moat_buf_addch(b, '%');
            moat_buf_addch(b, hex[*p >> 4]);
            moat_buf_addch(b, hex[*p & 15]);
        }
    }
}

static void on_page(const struct moat_http_response *resp, void *arg);

/* Ask catalog for the next page; MOAT_OK when the call is on its way. */
static int fetch(struct rep_etl *e)
{
    struct rep_service *s = e->s;
    struct moat_buf url = MOAT_BUF_INIT;
    moat_buf_printf(&url, "%s/v1/products?limit=%d", s->catalog_url,
                    PAGE_LIMIT);
    if (e->cursor) {
        moat_buf_addstr(&url, "&cursor=");
        add_escaped(&url, e->cursor);
    }
    char *token = NULL;
    struct moat_http_header hdr = {0};
    int rc = MOAT_OK;
    if (s->auth) {
        rc = moat_auth_token(s->auth, "catalog", NULL, &token);
        hdr.name = MOAT_SERVICE_TOKEN_HEADER;
        hdr.value = token;
    }
    if (rc == MOAT_OK) {
        const struct moat_http_call call = {
            .method = "GET",
            .url = moat_buf_str(&url),
            .headers = s->auth ? &hdr : NULL,
            .nheaders = s->auth ? 1 : 0,
            .timeout_ms = PAGE_TIMEOUT_MS,
            .trace = moat_req_trace(e->req),
        };
        rc = moat_http_client_send(s->client, &call, on_page, e);
    }
    free(token);
    moat_buf_release(&url);
    return rc;
}

/* Store one page's items in one transaction. */
static int store_page(struct rep_etl *e, json_t *items)
{
    struct moat_db *db = e->s->db;
    int rc = moat_db_begin(db);
    if (rc != MOAT_OK)
        return rc;
    int64_t now = moat_wall_ms();
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        json_t *price = json_object_get(it, "price");
        json_t *amount = json_object_get(price, "amount");
        json_t *version = json_object_get(it, "version");
        const struct rep_product p = {
            .product_id = json_string_value(json_object_get(it, "id")),
            .sku = json_string_value(json_object_get(it, "sku")),
            .name = json_string_value(json_object_get(it, "name")),
            .price_amount = json_integer_value(amount),
            .currency = json_string_value(json_object_get(price, "currency")),
            .version = json_integer_value(version),
        };
        if (!p.product_id || !p.product_id[0] || !p.sku || !p.name ||
            !json_is_integer(amount) || p.price_amount < 0 || !p.currency ||
            strlen(p.currency) != 3 || !json_is_integer(version) ||
            p.version < 1) {
            e->invalid++;
            continue;
        }
        rc = rep_store_product_etl(db, &p, now, &e->c);
        if (rc != MOAT_OK)
            break;
    }
    if (rc == MOAT_OK)
        rc = moat_db_commit(db); /* rolls back itself when it fails */
    else
        moat_db_rollback(db);
    return rc;
}

static void on_page(const struct moat_http_response *resp, void *arg)
{
    struct rep_etl *e = arg;
    if (resp->err == MOAT_ECANCELLED) {
        finish(e, moat_problem_new(503, "reporting is shutting down"));
        return;
    }
    if (resp->err != MOAT_OK || resp->status != 200) {
        char detail[160];
        if (resp->err != MOAT_OK)
            snprintf(detail, sizeof(detail), "catalog did not answer (%s)",
                     moat_strerror(resp->err));
        else
            snprintf(detail, sizeof(detail),
                     "catalog answered %d to GET /v1/products", resp->status);
        finish(e, moat_problem_new(502, detail));
        return;
    }
    json_t *body = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *items = json_object_get(body, "items");
    json_t *next = json_object_get(body, "next_cursor");
    if (!json_is_array(items) ||
        (next && !json_is_null(next) &&
         (!json_is_string(next) || json_string_length(next) > CURSOR_MAX))) {
        json_decref(body);
        finish(e, moat_problem_new(502, "catalog's product list is "
                                        "malformed"));
        return;
    }
    int rc = store_page(e, items);
    e->pages++;
    if (rc != MOAT_OK) {
        json_decref(body);
        finish(e, moat_problem_new(rc == MOAT_EBUSY ? 503 : 500,
                                   "the product dimension could not be "
                                   "written"));
        return;
    }
    free(e->cursor);
    e->cursor =
        json_is_string(next) ? moat_xstrdup(json_string_value(next)) : NULL;
    json_decref(body);
    if (!e->cursor) {
        finish(e, NULL);
        return;
    }
    if (e->pages >= PAGES_MAX) {
        finish(e, moat_problem_new(502, "catalog's product list does not "
                                        "end"));
        return;
    }
    rc = fetch(e);
    if (rc != MOAT_OK)
        finish(e, moat_problem_new(503, "cannot call catalog"));
}

void rep_handle_etl_products(struct moat_req *r, void *arg)
{
    struct rep_service *s = arg;
    if (!rep_authorised(r))
        return;
    if (s->etl) {
        moat_req_set_header(r, "Retry-After", "1");
        moat_req_reply_problem(r, 409, "a product reload is already running");
        return;
    }
    struct rep_etl *e = moat_xcalloc(1, sizeof(*e));
    e->s = s;
    e->req = r;
    e->started_ms = moat_wall_ms();
    s->etl = e;
    if (fetch(e) != MOAT_OK)
        finish(e, moat_problem_new(503, "cannot call catalog"));
}

void rep_etl_cancel(struct rep_service *s)
{
    if (s->etl)
        finish(s->etl, moat_problem_new(503, "reporting is shutting down"));
}
