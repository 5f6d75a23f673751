/*
 * test_hooks.c - test builds only (MOAT_TEST_HOOKS): break inventory's own
 * store the way a bug would, for tests/integration/test_audit.c, which
 * proves `moat audit` notices. Administrators only.
 *
 *   POST /v1/test/stock/{sku}  {"on_hand", "reserved", "sold"}: add each
 *                              given delta to the SKU's count (nothing
 *                              logged, no event)
 *   POST /v1/test/reservations/{order_id}  {"state": "held" | "released" |
 *                              "committed"}: the record's state alone
 */
#include "moat/common.h"

#ifdef MOAT_TEST_HOOKS

#include <jansson.h>
#include <string.h>

#include "inventory.h"
#include "moat/auth.h"
#include "moat/log.h"
#include "store.h"

static void reply(struct moat_req *r, int rc)
{
    if (rc == MOAT_OK)
        moat_req_reply_json(r, 200, json_pack("{s:i}", "changed", 1));
    else if (rc == MOAT_ENOTFOUND)
        moat_req_reply_problem(r, 404, "no such record");
    else
        moat_req_reply_problem(r, 500, "%s", moat_strerror(rc));
}

static void handle_stock(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    if (!moat_req_require_admin(r))
        return;
    json_t *b = NULL;
    if (moat_req_json(r, &b) != 0)
        return;
    int rc = inv_store_test_poke_stock(
        inv->store, moat_req_param(r, "sku"),
        json_integer_value(json_object_get(b, "on_hand")),
        json_integer_value(json_object_get(b, "reserved")),
        json_integer_value(json_object_get(b, "sold")));
    json_decref(b);
    moat_log(MOAT_LOG_WARN, "test hook: stock corrupted on purpose", NULL);
    reply(r, rc);
}

static void handle_reservation(struct moat_req *r, void *arg)
{
    struct inv_service *inv = arg;
    if (!moat_req_require_admin(r))
        return;
    json_t *b = NULL;
    if (moat_req_json(r, &b) != 0)
        return;
    const char *state = json_string_value(json_object_get(b, "state"));
    int rc = MOAT_EINVAL;
    static const enum inv_res_state all[] = {INV_HELD, INV_RELEASED,
                                             INV_COMMITTED};
    for (size_t i = 0; state && i < MOAT_ARRAY_LEN(all); i++)
        if (strcmp(state, inv_res_state_name(all[i])) == 0)
            rc = inv_store_test_poke_reservation(
                inv->store, moat_req_param(r, "order_id"), all[i]);
    json_decref(b);
    if (rc == MOAT_EINVAL) {
        moat_req_reply_problem(r, 400,
                               "state must be held, released or committed");
        return;
    }
    moat_log(MOAT_LOG_WARN, "test hook: reservation corrupted on purpose",
             NULL);
    reply(r, rc);
}

int inv_test_hooks_register(struct moat_http_server *server,
                            struct inv_service *inv)
{
    int rc = moat_http_route(server, MOAT_POST, "/v1/test/stock/{sku}",
                             handle_stock, inv);
    if (rc == MOAT_OK)
        rc = moat_http_route(server, MOAT_POST,
                             "/v1/test/reservations/{order_id}",
                             handle_reservation, inv);
    return rc;
}

#else
typedef int inv_test_hooks_unused; /* ISO C: no empty translation unit */
#endif
