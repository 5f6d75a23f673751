/*
 * social_store.h - the social index's database (MOAT_SEARCH_INDEX=social):
 * the only code that knows its schema.
 *
 * $MOAT_DATA_DIR/search.db holds two read models built ONLY from events:
 *  - posts: one row per live post (posts' PostCreated; a PostDeleted
 *    removes it and leaves a tombstone), indexed by posts_fts over the
 *    text and the mention names;
 *  - profiles: one row per user whose profile profiles announced
 *    (ProfileUpdated), indexed by profiles_fts over the handle only: the
 *    display name and bio are sealed in profiles' database and not in its
 *    events, and reading them from profiles' API inside a handler would
 *    make replay depend on what the API says today (docs/search.md).
 * Each FTS5 index is external content kept in step by triggers, with the
 * engine's options (SRCH_FTS_OPTIONS). The consumer's tables are one
 * migration of the same database, so an effect and the cursor move commit
 * together. As store.h: every function takes the database (live, or the
 * scratch copy of replay --verify) and runs inside the caller's
 * transaction.
 *
 * Ownership: strings in the structs are borrowed; hits belong to the
 * caller (srch_hits_free).
 */
#ifndef SRCH_SOCIAL_STORE_H
#define SRCH_SOCIAL_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "moat/db.h"

/* A post as the index stores it (all borrowed). */
struct soc_post {
    const char *id;
    const char *author_id;
    const char *text;
    const char *mentions; /* the mention names, space-separated */
    const char *doc;      /* the post as the API shows it (JSON object) */
    int64_t created_at;   /* s since the epoch */
    int64_t seq;          /* feed sequence of the event */
    int64_t event_time_ms;
};

/* A profile as the index stores it (all borrowed). */
struct soc_profile {
    const char *user_id;
    const char *handle; /* NULL: none (the profile is not findable) */
    int64_t version;    /* profiles' version of the profile */
    int64_t updated_at; /* s since the epoch */
    int64_t seq;
    int64_t event_time_ms;
};

/* The migrations of the social index's search.db. */
const struct moat_migration *soc_store_migrations(size_t *n);

/* Index p unless it was deleted by a later event of the feed (a post
 * never changes: the same event again changes nothing). */
int soc_store_post_add(struct moat_db *db, const struct soc_post *p);
/* Remove post id (no-op when absent) and remember that event seq deleted
 * it, so that its PostCreated delivered again cannot revive it. */
int soc_store_post_delete(struct moat_db *db, const char *id, int64_t seq);
/* Insert or replace p unless the row reflects a later event (seq). */
int soc_store_profile_put(struct moat_db *db, const struct soc_profile *p);
/* Remove every row, tombstone and apply_log entry (replay). */
int soc_store_reset(struct moat_db *db);

/* The engine's srch_search_fn for posts (arg: the author id to keep, or
 * NULL) and for profiles (arg unused). Posts' items are the posts
 * {id, author_id, text, mentions, urls, media_urls, created_at}, listed
 * newest first without words; profiles' items are {user_id, handle,
 * version, updated_at}, listed by handle. */
int soc_store_search_posts(struct moat_db *db, const struct srch_page *pg,
                           void *arg, struct srch_hit **hits, size_t *n);
int soc_store_search_profiles(struct moat_db *db, const struct srch_page *pg,
                              void *arg, struct srch_hit **hits, size_t *n);

/* As srch_store_compare (store.h), for posts, their tombstones, profiles
 * and both indexes. */
int soc_store_compare(struct moat_db *live, struct moat_db *scratch,
                      json_t *diffs, size_t max_diffs);

#endif /* SRCH_SOCIAL_STORE_H */
