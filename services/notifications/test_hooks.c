/*
 * test_hooks.c - test builds only (MOAT_TEST_HOOKS): break notifications'
 * own store the way a bug would, for tests/integration/test_audit.c, which
 * proves `moat audit` notices. Administrators only.
 *
 *   POST /v1/test/notifications/{id}  one of
 *       {"delete": true}          the notification is lost
 *       {"kind": "..."}           it is about something else
 *       {"copy_status": "..."}    a second copy of it under another status
 *                                 (the table allows one per order and
 *                                 status, so a copy needs another one)
 */
#include "moat/common.h"

#ifdef MOAT_TEST_HOOKS

#include <jansson.h>
#include <sqlite3.h>

#include "moat/auth.h"
#include "moat/id.h"
#include "moat/testhook.h"
#include "notifications.h"

static void handle_notification(struct moat_req *r, void *arg)
{
    struct ntf_service *s = arg;
    if (!moat_req_require_admin(r))
        return;
    json_t *b = NULL;
    if (moat_req_json(r, &b) != 0)
        return;
    const char *id = moat_req_param(r, "id");
    const char *kind = json_string_value(json_object_get(b, "kind"));
    const char *copy = json_string_value(json_object_get(b, "copy_status"));
    char *sql = NULL;
    if (json_is_true(json_object_get(b, "delete"))) {
        sql = sqlite3_mprintf("DELETE FROM notifications WHERE id = %Q;", id);
    } else if (kind) {
        sql = sqlite3_mprintf(
            "UPDATE notifications SET kind = %Q WHERE id = %Q;", kind, id);
    } else if (copy) {
        char nid[64];
        moat_id_new("ntf_", nid, sizeof(nid));
        sql = sqlite3_mprintf(
            "INSERT INTO notifications (id, order_id, status, customer_id, "
            "kind, subject, body, trace_id, event_id, seq, created_ms, "
            "delivered, delivered_ms) SELECT %Q, order_id, %Q, customer_id, "
            "kind, subject, body, trace_id, event_id, seq, created_ms, "
            "delivered, delivered_ms FROM notifications WHERE id = %Q;",
            nid, copy, id);
    }
    json_decref(b);
    if (!sql)
        moat_req_reply_problem(r, 400, "nothing to change");
    else
        moat_testhook_sql(r, s->db, sql);
    sqlite3_free(sql);
}

int ntf_test_hooks_register(struct moat_http_server *server,
                            struct ntf_service *s)
{
    return moat_http_route(server, MOAT_POST, "/v1/test/notifications/{id}",
                           handle_notification, s);
}

#else
typedef int ntf_test_hooks_unused; /* ISO C: no empty translation unit */
#endif
