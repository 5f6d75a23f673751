/*
 * contracts/users.h - the events users publishes on its feed (source
 * "users", subject = user id). Owned by users; consumed by orders (its
 * customer directory). What a contract module is, why linking it keeps
 * Database per Service, and how a version is added: contracts/contract.h and
 * docs/events.md.
 *
 * Events (docs/users.md), schema 1. No plaintext personal data: a
 * consumer that needs a name or email reads it through the API.
 *   UserRegistered  {id, role, version, created_at (s since the epoch)}
 *   UserUpdated     {id, role, version, updated_at (s since the epoch)}
 *
 * Moderation (schema 1), consumed by comments:
 *   ModerationActionRequested  {action_id, action: "remove_comment" |
 *                 "suspend_commenting" | "restore_commenting",
 *                 comment_id (remove_comment), user_id (the others),
 *                 reason, requested_by, requested_at (s since the epoch)}
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_USERS_H
#define MOAT_CONTRACTS_USERS_H

#include <jansson.h>

#define USERS_USER_REGISTERED             "UserRegistered"
#define USERS_USER_UPDATED                "UserUpdated"
#define USERS_MODERATION_ACTION_REQUESTED "ModerationActionRequested"

/* Data schema versions (the current ones). */
#define USERS_USER_SCHEMA       1 /* UserRegistered, UserUpdated */
#define USERS_MODERATION_SCHEMA 1 /* ModerationActionRequested */

/*
 * The current-shape data of an event of users (contract_upcast: data is
 * borrowed, *out a new reference; MOAT_EINVAL, MOAT_EUNSUPPORTED or
 * MOAT_ENOTFOUND with *why set).
 */
int users_upcast(const char *type, int version, json_t *data, json_t **out,
                 const char **why);
/* The current schema version of an event type of users; 0 when not one. */
int users_schema(const char *type);

#endif
