/*
 * contracts/profiles.h - the events profiles publishes on its feed
 * (source "profiles", subject = user id). Owned by profiles. What a
 * contract module is, why linking it keeps Database per Service, and how a
 * version is added: contracts/contract.h and docs/events.md.
 *
 * Events (docs/profiles.md), schema 1. No plaintext personal data (the
 * display name, bio and location are sealed in profiles' database; a
 * consumer that needs them reads the API):
 *   ProfileUpdated  {user_id, version, changed: [field names], handle,
 *                    updated_at (s since the epoch)}
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_PROFILES_H
#define MOAT_CONTRACTS_PROFILES_H

#include <jansson.h>

#define PROFILES_PROFILE_UPDATED "ProfileUpdated"

/* Data schema versions (the current ones). */
#define PROFILES_PROFILE_SCHEMA 1 /* ProfileUpdated */

/* As users_upcast (contracts/users.h), for profiles' events. */
int profiles_upcast(const char *type, int version, json_t *data, json_t **out,
                    const char **why);
/* The current schema version of an event type of profiles; 0 when not
 * one. */
int profiles_schema(const char *type);

#endif
