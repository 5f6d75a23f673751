/*
 * events.c - users' events as profiles applies them.
 *
 * UserRegistered (schema 1: {id, role, version, created_at}) creates an
 * empty profile for the new user id. users' events carry no personal data
 * (docs/users.md), so the display name starts unset: the user sets it
 * with PUT /v1/profiles/me. The handler is idempotent (a redelivery, or a
 * profile the user already created by editing it first, changes nothing)
 * and deterministic (the row's times come from the event), and it runs in
 * the consumer's transaction, which also moves the cursor.
 */
#include "moat/common.h"

#include <stdint.h>
#include <string.h>

#include "contracts/users.h"
#include "profiles.h"

#define CREATED_AT_MAX_S (INT64_MAX / 1000)

const char *const pro_users_events[] = {USERS_USER_REGISTERED, NULL};

int pro_apply_user_event(struct moat_db *db, const struct moat_event *ev,
                         void *arg, const char **why)
{
    struct pro_service *ps = arg;
    if (strcmp(ev->type, USERS_USER_REGISTERED) != 0)
        return MOAT_OK;
    json_t *data = NULL;
    int rc = users_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc != MOAT_OK)
        return rc;
    json_t *created = json_object_get(data, "created_at");
    if (!pro_user_id_valid(ev->subject)) {
        *why = "the event's subject is not a valid user id";
        rc = MOAT_EINVAL;
    } else if (!json_is_integer(created) || json_integer_value(created) < 0 ||
               json_integer_value(created) > CREATED_AT_MAX_S) {
        *why = "UserRegistered has no valid created_at";
        rc = MOAT_EINVAL;
    } else {
        rc = pro_store_ensure(db, ev->subject, moat_keyring_active(ps->kr),
                              (int64_t)json_integer_value(created) * 1000);
        if (rc != MOAT_OK)
            *why = "cannot store the default profile";
    }
    json_decref(data);
    return rc;
}
