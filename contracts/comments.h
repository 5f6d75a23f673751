/*
 * contracts/comments.h - the events comments publishes on its feed (source
 * "comments", subject = comment id). Owned by comments; no consumer yet
 * (notifications and search are the expected ones). What a contract module
 * is, why linking it keeps Database per Service, and how a version is
 * added: contracts/contract.h and docs/events.md.
 *
 * Events (docs/comments.md), schema 1. target is {"kind": "post", "id"}
 * or {"kind": "message", "conversation_id", "message_id"}; ids only, never
 * a conversation's content.
 *   CommentPosted    {comment_id, target, author_id, parent_id (or null),
 *                     status: "pending" | "approved",
 *                     created_at (s since the epoch)}
 *   CommentApproved  {comment_id, target, author_id, moderated_by,
 *                     moderated_at}
 *   CommentRejected  the same as CommentApproved
 *   CommentRemoved   {comment_id, target, author_id, removed_by, reason,
 *                     action_id (users' moderation action, or null),
 *                     removed_at}
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_COMMENTS_H
#define MOAT_CONTRACTS_COMMENTS_H

#include <jansson.h>

#define COMMENTS_COMMENT_POSTED   "CommentPosted"
#define COMMENTS_COMMENT_APPROVED "CommentApproved"
#define COMMENTS_COMMENT_REJECTED "CommentRejected"
#define COMMENTS_COMMENT_REMOVED  "CommentRemoved"

/* Data schema versions (the current ones). */
#define COMMENTS_COMMENT_SCHEMA 1 /* every type above */

/* As users_upcast (contracts/users.h), for comments' events. */
int comments_upcast(const char *type, int version, json_t *data, json_t **out,
                    const char **why);
/* The current schema version of an event type of comments; 0 when not one. */
int comments_schema(const char *type);

#endif
