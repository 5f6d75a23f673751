/*
 * events.c - users' moderation actions, applied from users' feed
 * (contracts/users.h ModerationActionRequested). Users accepts an action
 * (POST /v1/moderation/actions there) into its outbox; the consumer
 * brings it here, at least once, whenever comments runs; the store
 * applies each action_id once, in the consumer's transaction, so a second
 * delivery changes nothing (cmt_store_apply_action).
 *
 * users' UserSuspended / UserRestored / RoleChanged are not in its
 * contract yet: nothing else of users' feed is applied.
 */
#include "moat/common.h"

#include "contracts/users.h"

#include <string.h>

#include "comments.h"
#include "moat/log.h"

const char *const cmt_users_event_types[] = {
    USERS_MODERATION_ACTION_REQUESTED,
    NULL,
};

/* A string member of data of at most max bytes, or NULL. */
static const char *member(json_t *data, const char *key, size_t max)
{
    json_t *v = json_object_get(data, key);
    if (!json_is_string(v) || json_string_length(v) < 1 ||
        json_string_length(v) > max)
        return NULL;
    return json_string_value(v);
}

int cmt_apply_users(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why)
{
    MOAT_UNUSED(db); /* the store's database: no view ops, no scratch db */
    struct cmt_service *cs = arg;
    json_t *data = NULL;
    int rc = users_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc != MOAT_OK)
        return rc;
    const char *reason = member(data, "reason", 1000);
    const char *by = member(data, "requested_by", CMT_USER_MAX);
    const struct cmt_action a = {
        .action_id = member(data, "action_id", 128),
        .action = member(data, "action", 32),
        .comment_id = member(data, "comment_id", CMT_ID_LEN),
        .user_id = member(data, "user_id", CMT_USER_MAX),
        .reason = reason ? reason : "",
        .requested_by = by ? by : "users",
    };
    if (!a.action_id || !a.action) {
        *why = "ModerationActionRequested without action_id or action";
        json_decref(data);
        return MOAT_EINVAL;
    }
    /* The event's time, not the clock: replay gives the same rows. */
    int64_t at = ev->time_ms ? ev->time_ms : moat_wall_ms();
    rc = cmt_store_apply_action(cs->store, &a, at, why);
    if (rc == MOAT_OK)
        moat_log(MOAT_LOG_INFO, "moderation action applied", "{s:s, s:s, s:s}",
                 "action_id", a.action_id, "action", a.action, "subject",
                 ev->subject);
    json_decref(data);
    return rc;
}
