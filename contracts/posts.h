/*
 * contracts/posts.h - the events posts publishes on its feed (source
 * "posts", subject = post id). Owned by posts; consumed by timelines
 * (home timelines). What a contract module is, why linking it keeps
 * Database per Service, and how a version is added: contracts/contract.h
 * and docs/events.md.
 *
 * Events (docs/posts.md), schema 1:
 *   PostCreated  {post_id, author_id, text, mentions: [names],
 *                 urls: [urls], media_urls: [urls],
 *                 created_at (s since the epoch)}
 *   PostDeleted  {post_id, author_id}
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_POSTS_H
#define MOAT_CONTRACTS_POSTS_H

#include <jansson.h>

#define POSTS_POST_CREATED "PostCreated"
#define POSTS_POST_DELETED "PostDeleted"

/* Data schema versions (the current ones). */
#define POSTS_POST_SCHEMA 1 /* PostCreated, PostDeleted */

/* As users_upcast (contracts/users.h), for posts' events. */
int posts_upcast(const char *type, int version, json_t *data, json_t **out,
                 const char **why);
/* The current schema version of an event type of posts; 0 when not one. */
int posts_schema(const char *type);

#endif
