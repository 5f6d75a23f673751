/*
 * contracts/connections.h - the events connections publishes on its feed
 * (source "connections", subject = the acting user's id). Owned by
 * connections; consumed by timelines (who follows whom). What a contract
 * module is, why linking it keeps Database per Service, and how a version
 * is added: contracts/contract.h and docs/events.md.
 *
 * Events (docs/connections.md), schema 1:
 *   Followed             {follower_id, followee_id}
 *   Unfollowed           {follower_id, followee_id}
 *   ConnectionRequested  {requester_id, recipient_id}
 *   ConnectionAccepted   {requester_id, recipient_id}
 *   ConnectionRemoved    {user_id, other_user_id,
 *                         reason: "removed" | "withdrawn" | "declined"}
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_CONNECTIONS_H
#define MOAT_CONTRACTS_CONNECTIONS_H

#include <jansson.h>

#define CONNECTIONS_FOLLOWED             "Followed"
#define CONNECTIONS_UNFOLLOWED           "Unfollowed"
#define CONNECTIONS_CONNECTION_REQUESTED "ConnectionRequested"
#define CONNECTIONS_CONNECTION_ACCEPTED  "ConnectionAccepted"
#define CONNECTIONS_CONNECTION_REMOVED   "ConnectionRemoved"

/* Data schema versions (the current ones). */
#define CONNECTIONS_EDGE_SCHEMA 1 /* every type above */

/* As users_upcast (contracts/users.h), for connections' events. */
int connections_upcast(const char *type, int version, json_t *data,
                       json_t **out, const char **why);
/* The current schema version of an event type of connections; 0 when not
 * one. */
int connections_schema(const char *type);

#endif
