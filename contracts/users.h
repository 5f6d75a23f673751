/*
 * contracts/users.h - the events users publishes on its feed (source
 * "users", subject = user id; for ModerationActionRequested the action id).
 * Owned by users; consumed by orders (its customer directory), the gateway
 * (its access overrides: the account events) and comments (the account
 * events and moderation actions). What a contract module is, why linking it
 * keeps Database per Service, and how a version is added: contracts/contract.h
 * and docs/events.md.
 *
 * Events (docs/users.md), schema 1. No plaintext personal data: a
 * consumer that needs a name or email reads it through the API.
 *   UserRegistered  {id, role, version, created_at (s since the epoch)}
 *   UserUpdated     {id, role, version, updated_at (s since the epoch)}
 *
 * Account events, schema 1 (USERS_ACCESS_SCHEMA): each carries the
 * account's whole access state AFTER the change, so a consumer keeps the
 * latest event per user and needs nothing older:
 *   UserSuspended   {id, role, suspended, comment_suspended, perms,
 *   UserRestored     version, changed_at (s since the epoch), changed_by,
 *   RoleChanged      reason (may be "")}
 * perms is the list of permission names the account now has ("post",
 * "comment", "message", "moderate"; moat/auth.h moat_perms_for).
 * UserSuspended and UserRestored are about suspended and comment_suspended
 * (a moderation "suspend_commenting" is a UserSuspended with
 * suspended = false, comment_suspended = true), RoleChanged about role.
 *
 * Sessions, schema 1 (USERS_SESSION_SCHEMA), subject = user id:
 *   SessionsEnded {id, sid (the session ended: the "sid" claim of its
 *       access tokens; "" for every session of the account), ended_at (s
 *       since the epoch), reason ("logout" | "reuse_detected" |
 *       "password_changed")}
 * The gateway refuses the access tokens of an ended session (sid), or of
 * every session issued before ended_at, for as long as they would live.
 *
 * Moderation, schema 1 (USERS_MODERATION_SCHEMA), subject = action_id:
 *   ModerationActionRequested {action_id, action ("remove_comment" |
 *       "suspend_commenting" | "restore_commenting"), comment_id (for
 *       remove_comment, else absent), user_id (for the other two, else
 *       absent), reason, requested_by (user id), requested_at (s since the
 *       epoch)}
 * The comments service applies it (exactly once: its consumer's cursor).
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_USERS_H
#define MOAT_CONTRACTS_USERS_H

#include <jansson.h>

#define USERS_USER_REGISTERED             "UserRegistered"
#define USERS_USER_UPDATED                "UserUpdated"
#define USERS_USER_SUSPENDED              "UserSuspended"
#define USERS_USER_RESTORED               "UserRestored"
#define USERS_ROLE_CHANGED                "RoleChanged"
#define USERS_MODERATION_ACTION_REQUESTED "ModerationActionRequested"
#define USERS_SESSIONS_ENDED              "SessionsEnded"

/* Data schema versions (the current ones). */
#define USERS_USER_SCHEMA       1 /* UserRegistered, UserUpdated */
#define USERS_ACCESS_SCHEMA     1 /* UserSuspended, UserRestored, RoleChanged */
#define USERS_MODERATION_SCHEMA 1 /* ModerationActionRequested */
#define USERS_SESSION_SCHEMA    1 /* SessionsEnded */

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
