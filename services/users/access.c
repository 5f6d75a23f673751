/*
 * access.c - who may do what: an account's role and suspension, and the
 * moderation actions users accepts for comments (docs/users.md
 * "Permissions" and "Moderation actions").
 *
 *   POST /v1/users/{id}/suspend   admin: no post, comment or message
 *   POST /v1/users/{id}/restore   admin: lifts both kinds of suspension
 *   PUT  /v1/users/{id}/role      admin: {"role"}
 *   POST /v1/moderation/actions   moderate permission: 202 queued
 *   GET  /v1/moderation/actions/{id}  moderate permission
 *
 * Each change commits with its event (store.c), so the gateway's access
 * overrides and comments learn of it from users' feed; each admin change
 * and moderation action is audited.
 */
#include "moat/common.h"

#include <stdio.h>
#include <string.h>

#include "moat/auth.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "users.h"

/* Optional {"reason"} of suspend and restore; the body may be empty. */
static bool read_reason(struct moat_req *r, json_t **body, const char **reason)
{
    static const char *const allowed[] = {"reason", NULL};
    struct moat_validation v;
    *reason = "";
    *body = NULL;
    size_t len = 0;
    moat_req_body(r, &len);
    if (len == 0)
        return true;
    if (!usr_read_object(r, body))
        return false;
    moat_validation_init(&v);
    moat_v_known_keys(&v, *body, "", allowed);
    moat_v_string(&v, *body, "", "reason", false, 0, USR_REASON_MAX, reason);
    bool ok = moat_validation_ok(&v);
    if (!ok)
        usr_reply_validation(r, &v, "the request has invalid fields");
    moat_validation_release(&v);
    return ok;
}

/* Admin acting on another existing user id: the principal, or NULL after
 * replying 401, 403 or 404 / 422. */
static const struct moat_principal *admin_on_other(struct moat_req *r,
                                                   const char *id)
{
    const struct moat_principal *p = usr_require_admin(r);
    if (!p)
        return NULL;
    if (!usr_id_valid(id)) {
        moat_req_reply_problem(r, 404, "there is no user with this id");
        return NULL;
    }
    if (strcmp(id, p->user_id) == 0) {
        moat_req_reply_problem(r, 409,
                               "an administrator cannot change their own "
                               "role or suspension");
        return NULL;
    }
    return p;
}

static void access_apply(struct moat_req *r, struct usr_service *usr,
                         const char *id, const struct usr_access_change *ch,
                         const char *audit_action, json_t *detail)
{
    struct usr_access a;
    bool changed = false;
    int rc = usr_store_access_change(usr->store, id, ch, moat_wall_ms(), &a,
                                     &changed);
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(r, 404, "there is no user with this id");
        return;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "change the account's access");
        return;
    }
    json_object_set_new(detail, "changed", json_boolean(changed));
    usr_audit(usr, r, audit_action, id, "ok", detail);
    moat_log(MOAT_LOG_INFO, "account access changed", "{s:s, s:s, s:b}", "id",
             id, "action", audit_action, "changed", changed);
    moat_req_set_header(r, "Cache-Control", "no-store");
    moat_req_reply_json(r, 200, usr_access_json(&a));
}

static void handle_suspension(struct moat_req *r, struct usr_service *usr,
                              bool suspend)
{
    const char *id = moat_req_param(r, "id");
    id = id ? id : "";
    json_t *body = NULL;
    const char *reason = "";
    const struct moat_principal *p = admin_on_other(r, id);
    if (!p || !read_reason(r, &body, &reason))
        goto cleanup;
    struct usr_access_change ch = {
        .suspended = suspend,
        /* Restoring lifts a commenting suspension too. */
        .comment_suspended = suspend ? -1 : 0,
        .changed_by = p->user_id,
        .reason = reason,
    };
    json_t *detail = json_pack("{s:s}", "reason", reason);
    access_apply(r, usr, id, &ch,
                 suspend ? "admin.suspend_user" : "admin.restore_user", detail);
    json_decref(detail);
cleanup:
    json_decref(body);
}

static void handle_suspend(struct moat_req *r, void *arg)
{
    handle_suspension(r, arg, true);
}

static void handle_restore(struct moat_req *r, void *arg)
{
    handle_suspension(r, arg, false);
}

static void handle_role(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    static const char *const allowed[] = {"role", NULL};
    const char *id = moat_req_param(r, "id");
    id = id ? id : "";
    json_t *body = NULL;
    const char *role = NULL;
    struct moat_validation v;
    moat_validation_init(&v);
    const struct moat_principal *p = admin_on_other(r, id);
    if (!p || !usr_read_object(r, &body))
        goto cleanup;
    moat_v_known_keys(&v, body, "", allowed);
    if (moat_v_string(&v, body, "", "role", true, 1, USR_ROLE_MAX, &role) &&
        !usr_role_valid(role))
        moat_validation_add(&v, "/role",
                            "must be \"customer\", \"moderator\" or "
                            "\"admin\"");
    if (!moat_validation_ok(&v)) {
        usr_reply_validation(r, &v, "the request has invalid fields");
        goto cleanup;
    }
    struct usr_access_change ch = {
        .role = role,
        .suspended = -1,
        .comment_suspended = -1,
        .changed_by = p->user_id,
        .reason = "",
    };
    json_t *detail = json_pack("{s:s}", "to", role);
    access_apply(r, usr, id, &ch, "admin.role_change", detail);
    json_decref(detail);
cleanup:
    json_decref(body);
    moat_validation_release(&v);
}

/* ---- moderation actions ---- */

/* A comment id from comments: 1..64 of [A-Za-z0-9_-] (opaque here). */
static bool comment_id_valid(const char *s)
{
    return moat_ref_valid(s, USR_COMMENT_ID_MAX);
}

static void validate_action(struct moat_validation *v, json_t *body,
                            const char **action, const char **comment_id,
                            const char **user_id, const char **reason)
{
    static const char *const allowed[] = {"action", "comment_id", "user_id",
                                          "reason", NULL};
    moat_v_known_keys(v, body, "", allowed);
    bool has_comment = moat_v_string(v, body, "", "comment_id", false, 1,
                                     USR_COMMENT_ID_MAX, comment_id);
    bool has_user =
        moat_v_string(v, body, "", "user_id", false, 1, USR_ID_LEN, user_id);
    moat_v_string(v, body, "", "reason", true, 1, USR_REASON_MAX, reason);
    if (has_comment && !comment_id_valid(*comment_id))
        moat_validation_add(v, "/comment_id",
                            "must be a comment id (letters, digits, _ and -)");
    if (has_user && !usr_id_valid(*user_id))
        moat_validation_add(v, "/user_id", "must be a user id");
    if (!moat_v_string(v, body, "", "action", true, 1, 32, action))
        return;
    if (strcmp(*action, "remove_comment") == 0) {
        if (!json_object_get(body, "comment_id"))
            moat_validation_add(v, "/comment_id",
                                "is required to remove a comment");
        if (json_object_get(body, "user_id"))
            moat_validation_add(v, "/user_id", "is not part of remove_comment");
    } else if (strcmp(*action, "suspend_commenting") == 0 ||
               strcmp(*action, "restore_commenting") == 0) {
        if (!json_object_get(body, "user_id"))
            moat_validation_add(v, "/user_id", "is required for %s", *action);
        if (json_object_get(body, "comment_id"))
            moat_validation_add(v, "/comment_id", "is not part of %s", *action);
    } else {
        moat_validation_add(v, "/action",
                            "must be \"remove_comment\", "
                            "\"suspend_commenting\" or "
                            "\"restore_commenting\"");
    }
}

static void reply_action(struct moat_req *r, int status,
                         const struct usr_mod_action *a)
{
    json_t *o = usr_mod_json(a);
    json_object_set_new(o, "status", json_string("queued"));
    if (status == 202) {
        char location[64];
        snprintf(location, sizeof(location), "/v1/moderation/actions/%s",
                 a->id);
        moat_req_set_header(r, "Location", location);
    }
    moat_req_set_header(r, "Cache-Control", "no-store");
    moat_req_reply_json(r, status, o);
}

static void handle_action_post(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    json_t *body = NULL;
    const char *action = NULL, *comment_id = NULL, *user_id = NULL,
               *reason = NULL;
    struct moat_validation v;
    moat_validation_init(&v);
    if (!moat_req_require_perm(r, MOAT_PERM_MODERATE) ||
        !usr_read_object(r, &body))
        goto cleanup;
    validate_action(&v, body, &action, &comment_id, &user_id, &reason);
    if (!moat_validation_ok(&v)) {
        usr_reply_validation(r, &v, "the moderation action has invalid fields");
        goto cleanup;
    }
    const struct moat_principal *p = moat_req_principal(r);
    if (user_id && strcmp(user_id, p->user_id) == 0) {
        moat_req_reply_problem(r, 409, "a moderator cannot act on themselves");
        goto cleanup;
    }
    struct usr_mod_action a = {0};
    moat_id_new(USR_MOD_ID_PREFIX, a.id, sizeof(a.id));
    snprintf(a.action, sizeof(a.action), "%s", action);
    snprintf(a.comment_id, sizeof(a.comment_id), "%s",
             comment_id ? comment_id : "");
    snprintf(a.user_id, sizeof(a.user_id), "%s", user_id ? user_id : "");
    snprintf(a.reason, sizeof(a.reason), "%s", reason);
    snprintf(a.requested_by, sizeof(a.requested_by), "%s", p->user_id);
    a.requested_ms = moat_wall_ms();
    int rc = usr_store_mod_insert(usr->store, &a);
    if (rc == MOAT_ENOTFOUND) {
        moat_validation_add(&v, "/user_id", "there is no user with this id");
        usr_reply_validation(r, &v, "the moderation action has invalid fields");
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "record the moderation action");
        goto cleanup;
    }
    json_t *detail = usr_mod_json(&a);
    usr_audit(usr, r, "moderation.action", a.user_id[0] ? a.user_id : NULL,
              "queued", detail);
    json_decref(detail);
    reply_action(r, 202, &a);
cleanup:
    json_decref(body);
    moat_validation_release(&v);
}

static void handle_action_get(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    if (!moat_req_require_perm(r, MOAT_PERM_MODERATE))
        return;
    const char *id = moat_req_param(r, "id");
    struct usr_mod_action a;
    int rc = id && moat_id_valid(id, USR_MOD_ID_PREFIX)
                 ? usr_store_mod_get(usr->store, id, &a)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(r, 404,
                               "there is no moderation action with this id");
        return;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "read the moderation action");
        return;
    }
    reply_action(r, 200, &a);
}

int usr_access_routes_register(struct usr_service *usr)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_POST, "/v1/users/{id}/suspend", handle_suspend},
        {MOAT_POST, "/v1/users/{id}/restore", handle_restore},
        {MOAT_PUT, "/v1/users/{id}/role", handle_role},
        {MOAT_POST, "/v1/moderation/actions", handle_action_post},
        {MOAT_GET, "/v1/moderation/actions/{id}", handle_action_get},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(usr->svc->http, routes[i].methods,
                                 routes[i].pattern, routes[i].fn, usr);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
