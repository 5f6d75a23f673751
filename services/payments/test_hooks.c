/*
 * test_hooks.c - test builds only (MOAT_TEST_HOOKS): break payments' own
 * store the way a bug would, for tests/integration/test_audit.c, which
 * proves `moat audit` notices. Administrators only.
 *
 *   POST /v1/test/payments/{id}  {"status", "amount"}: each member given
 *                                is written as is (the table's CHECKs
 *                                still hold: they are the last defence)
 */
#include "moat/common.h"

#ifdef MOAT_TEST_HOOKS

#include <jansson.h>
#include <sqlite3.h>

#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/testhook.h"
#include "payments.h"
#include "store.h"

static void handle_payment(struct moat_req *r, void *arg)
{
    struct pay_service *ps = arg;
    if (!moat_req_require_admin(r))
        return;
    json_t *b = NULL;
    if (moat_req_json(r, &b) != 0)
        return;
    const char *id = moat_req_param(r, "id");
    struct moat_buf sql = MOAT_BUF_INIT;
    const char *status = json_string_value(json_object_get(b, "status"));
    json_t *amount = json_object_get(b, "amount");
    /* One UPDATE, so that the rows it changed are counted alike on both
     * engines; sqlite3_mprintf's %Q quotes in standard SQL, which
     * PostgreSQL reads the same. */
    char *s = NULL;
    if (status) {
        s = sqlite3_mprintf("status = %Q", status);
        moat_buf_addstr(&sql, s);
        sqlite3_free(s);
    }
    if (json_is_integer(amount)) {
        s = sqlite3_mprintf("%samount = %lld", sql.len ? ", " : "",
                            (long long)json_integer_value(amount));
        moat_buf_addstr(&sql, s);
        sqlite3_free(s);
    }
    if (sql.len) {
        s = sqlite3_mprintf("UPDATE payments SET %s WHERE id = %Q",
                            moat_buf_str(&sql), id);
        moat_buf_release(&sql);
        moat_buf_addstr(&sql, s);
        sqlite3_free(s);
    }
    json_decref(b);
    if (!sql.len)
        moat_req_reply_problem(r, 400, "nothing to change");
    else
        moat_testhook_sql(r, pay_store_db(ps->store), moat_buf_str(&sql));
    moat_buf_release(&sql);
}

int pay_test_hooks_register(struct pay_service *ps)
{
    return moat_http_route(ps->svc->http, MOAT_POST, "/v1/test/payments/{id}",
                           handle_payment, ps);
}

#else
typedef int pay_test_hooks_unused; /* ISO C: no empty translation unit */
#endif
