/*
 * contracts/messaging.h - the events messaging publishes on its feed
 * (source "messaging", subject = conversation id). Owned by messaging.
 * What a contract module is, why linking it keeps Database per Service,
 * and how a version is added: contracts/contract.h and docs/events.md.
 *
 * Events (docs/messaging.md), schema 1. Ids only, never message text or
 * group titles:
 *   ConversationCreated  {conversation_id, kind, created_by, members,
 *                         created_at}
 *   MessageSent          {conversation_id, message_id, sender_id, seq,
 *                         created_at}
 *   MessageEdited        {conversation_id, message_id, sender_id, seq,
 *                         edited_at}
 *   MessageDeleted       {conversation_id, message_id, sender_id, seq,
 *                         deleted_at, deleted_by}
 *   MembersChanged       {conversation_id, added, removed, by,
 *                         members_count, changed_at}
 * Times are seconds since the epoch.
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_MESSAGING_H
#define MOAT_CONTRACTS_MESSAGING_H

#include <jansson.h>

#define MESSAGING_CONVERSATION_CREATED "ConversationCreated"
#define MESSAGING_MESSAGE_SENT         "MessageSent"
#define MESSAGING_MESSAGE_EDITED       "MessageEdited"
#define MESSAGING_MESSAGE_DELETED      "MessageDeleted"
#define MESSAGING_MEMBERS_CHANGED      "MembersChanged"

/* Data schema versions (the current ones). */
#define MESSAGING_EVENT_SCHEMA 1 /* every type above */

/* As users_upcast (contracts/users.h), for messaging's events. */
int messaging_upcast(const char *type, int version, json_t *data, json_t **out,
                     const char **why);
/* The current schema version of an event type of messaging; 0 when not
 * one. */
int messaging_schema(const char *type);

#endif
