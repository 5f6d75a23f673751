/*
 * test_hooks.c - test builds only (MOAT_TEST_HOOKS): break orders' own
 * store the way a bug would, for tests/integration/test_audit.c, which
 * proves `moat audit` notices. Administrators only.
 *
 *   POST /v1/test/orders/{id}  {"status", "step", "payment_id", "total",
 *                               "line_quantity" (of the first line),
 *                               "deadline_ago_s", "updated_ago_s",
 *                               "no_deadline": true}: each member given is
 *                               written as is
 *   POST /v1/test/sweeper      {"running": false | true}: stop or restart
 *                               the deadline sweeper (a sweeper that died)
 */
#include "moat/common.h"

#ifdef MOAT_TEST_HOOKS

#include <event2/event.h>
#include <jansson.h>
#include <sqlite3.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/log.h"
#include "moat/buf.h"
#include "moat/testhook.h"
#include "orders.h"

static void handle_order(struct moat_req *r, void *arg)
{
    struct ord_service *os = arg;
    if (!moat_req_require_admin(r))
        return;
    json_t *b = NULL;
    if (moat_req_json(r, &b) != 0)
        return;
    const char *id = moat_req_param(r, "id");
    int64_t now = moat_wall_ms();
    struct moat_buf sql = MOAT_BUF_INIT;
    static const char *const texts[] = {"status", "step", "payment_id"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(texts); i++) {
        const char *v = json_string_value(json_object_get(b, texts[i]));
        if (!v)
            continue;
        char *s = sqlite3_mprintf("UPDATE orders SET %s = %Q WHERE id = %Q;",
                                  texts[i], v, id);
        moat_buf_addstr(&sql, s);
        sqlite3_free(s);
    }
    static const struct {
        const char *member, *column;
        int64_t base; /* 0: the value as is; 1: now - value seconds */
    } ints[] = {{"total", "total", 0},
                {"deadline_ago_s", "deadline_ms", 1},
                {"updated_ago_s", "updated_ms", 1}};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ints); i++) {
        json_t *v = json_object_get(b, ints[i].member);
        if (!json_is_integer(v))
            continue;
        int64_t x = json_integer_value(v);
        if (ints[i].base)
            x = now - x * 1000;
        char *s = sqlite3_mprintf("UPDATE orders SET %s = %lld WHERE id = %Q;",
                                  ints[i].column, (long long)x, id);
        moat_buf_addstr(&sql, s);
        sqlite3_free(s);
    }
    if (json_is_true(json_object_get(b, "no_deadline"))) {
        char *s = sqlite3_mprintf(
            "UPDATE orders SET deadline_ms = 0 WHERE id = %Q;", id);
        moat_buf_addstr(&sql, s);
        sqlite3_free(s);
    }
    json_t *q = json_object_get(b, "line_quantity");
    if (json_is_integer(q)) {
        char *s = sqlite3_mprintf("UPDATE order_lines SET quantity = %lld "
                                  "WHERE order_id = %Q AND n = 1;",
                                  (long long)json_integer_value(q), id);
        moat_buf_addstr(&sql, s);
        sqlite3_free(s);
    }
    json_decref(b);
    if (!sql.len)
        moat_req_reply_problem(r, 400, "nothing to change");
    else
        moat_testhook_sql(r, os->db, moat_buf_str(&sql));
    moat_buf_release(&sql);
}

static void handle_sweeper(struct moat_req *r, void *arg)
{
    struct ord_service *os = arg;
    if (!moat_req_require_admin(r))
        return;
    json_t *b = NULL;
    if (moat_req_json(r, &b) != 0)
        return;
    bool running = json_is_true(json_object_get(b, "running"));
    json_decref(b);
    if (running) {
        struct timeval tv = {0, 200000};
        evtimer_add(os->sweep, &tv);
    } else {
        evtimer_del(os->sweep);
    }
    moat_log(MOAT_LOG_WARN, "test hook: deadline sweeper", "{s:b}", "running",
             running);
    moat_req_reply_json(r, 200, json_pack("{s:b}", "running", running));
}

int ord_test_hooks_register(struct ord_service *os)
{
    struct moat_http_server *h = os->svc->http;
    int rc =
        moat_http_route(h, MOAT_POST, "/v1/test/orders/{id}", handle_order, os);
    if (rc == MOAT_OK)
        rc = moat_http_route(h, MOAT_POST, "/v1/test/sweeper", handle_sweeper,
                             os);
    return rc;
}

#else
typedef int ord_test_hooks_unused; /* ISO C: no empty translation unit */
#endif
