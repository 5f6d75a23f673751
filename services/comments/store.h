/*
 * store.h - comments' own database ($MOAT_DATA_DIR/comments.db, SQLite):
 * comments and their tombstones, the per-target and per-user moderation
 * settings, the moderation actions applied from users' feed, idempotency
 * records, the consumer's cursor and the outbox (CommentPosted,
 * CommentApproved, CommentRejected, CommentRemoved). store.c is the only
 * code that knows the schema.
 *
 * Every write runs in one transaction that also appends its event to the
 * outbox, so a change and its event commit or vanish together: the HTTP
 * writes in a BEGIN IMMEDIATE of their own, cmt_store_apply_action in the
 * consumer's transaction. The store owns its database and outbox.
 *
 * Ownership: struct cmt_comment owns text and reason (cmt_comment_release;
 * a list: cmt_comments_free); strings passed in are borrowed. Everything
 * runs on the loop thread.
 */
#ifndef CMT_STORE_H
#define CMT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/metrics.h"

#define CMT_ID_PREFIX   "cmt_"
#define CMT_ID_LEN      (4 + 26)
#define CMT_USER_MAX    63  /* a principal's user id (moat/auth.h) */
#define CMT_TARGET_MAX  63  /* a post, conversation or message id */
#define CMT_REPLIES_MAX 100 /* replies under one top-level comment */

/* Outcomes of cmt_store_create besides MOAT_* errors (positive). */
enum {
    CMT_SUSPENDED = 1,   /* the author may not comment (suspended) */
    CMT_BAD_PARENT = 2,  /* no such parent on this target, or not visible */
    CMT_NESTED = 3,      /* the parent is itself a reply */
    CMT_THREAD_FULL = 4, /* the parent has CMT_REPLIES_MAX replies */
};

struct event_base;
struct cmt_store;
struct moat_db;

/* What a comment is about: a post, or a message of a conversation. */
struct cmt_target {
    char kind[8];                             /* "post" | "message" */
    char id[CMT_TARGET_MAX + 1];              /* post id or message id */
    char conversation_id[CMT_TARGET_MAX + 1]; /* "" for a post */
};

struct cmt_comment {
    char id[CMT_ID_LEN + 1];
    struct cmt_target target;
    char parent_id[CMT_ID_LEN + 1]; /* "" for a top-level comment */
    char author_id[CMT_USER_MAX + 1];
    char *text;     /* owned; NULL for a tombstone */
    char status[9]; /* "pending" | "approved" | "rejected" */
    int64_t created_ms;
    int64_t moderated_ms; /* 0 until approved or rejected */
    char moderated_by[CMT_USER_MAX + 1];
    int64_t deleted_ms; /* 0 unless a tombstone */
    char deleted_by[CMT_USER_MAX + 1];
    char *deleted_reason; /* owned; NULL unless a tombstone */
};

/* A user's moderation flags (all false for a user never flagged). */
struct cmt_user_flags {
    bool requires_moderation;
    bool suspended;
    char *reason; /* owned (free); the suspension's, or NULL */
};

/* A moderation action of users' feed (borrowed strings). */
struct cmt_action {
    const char *action_id;
    const char *action;     /* remove_comment | suspend_commenting |
                               restore_commenting */
    const char *comment_id; /* remove_comment */
    const char *user_id;    /* the others */
    const char *reason;
    const char *requested_by;
};

void cmt_comment_release(struct cmt_comment *c);
void cmt_comments_free(struct cmt_comment *items, size_t n);

/* Open (creating and migrating) data_dir/comments.db, or the PostgreSQL
 * database of dsn when it is not NULL or "" (moat/db.h), and its outbox
 * for service source; base runs the outbox timers, metrics is borrowed. */
int cmt_store_open(struct cmt_store **out, const char *data_dir,
                   const char *dsn, struct event_base *base, const char *source,
                   const struct moat_outbox_options *outbox,
                   struct moat_metrics *metrics);
void cmt_store_close(struct cmt_store *s);
struct moat_outbox *cmt_store_outbox(struct cmt_store *s);
struct moat_db *cmt_store_db(struct cmt_store *s);
bool cmt_store_ready(struct cmt_store *s, const char **why);

/*
 * Insert comment c (id, target, parent_id, author, text, created_ms set by
 * the caller) and append CommentPosted, in one transaction that first
 * checks, as of now: the author is not suspended (CMT_SUSPENDED); a
 * parent exists on the same target, is live and visible to the author
 * (CMT_BAD_PARENT), is top-level (CMT_NESTED) and has room
 * (CMT_THREAD_FULL). c->status is set: "pending" when the target (the post,
 * or the message's conversation) or the author requires moderation,
 * "approved" otherwise. With idem_key (may be NULL) the record (author,
 * key) -> (fingerprint, id) is inserted too: MOAT_ECONFLICT when taken.
 */
int cmt_store_create(struct cmt_store *s, struct cmt_comment *c,
                     const char *idem_key, const char *fingerprint);

/* Comment id, tombstones included. MOAT_ENOTFOUND if none. */
int cmt_store_get(struct cmt_store *s, const char *id, struct cmt_comment *out);

/*
 * Approve or reject (status "approved" / "rejected") pending comment id and
 * append CommentApproved / CommentRejected. *changed is false when it had
 * that status already (nothing happens). MOAT_ENOTFOUND for no comment or a
 * tombstone, MOAT_ECONFLICT when it was decided the other way.
 */
int cmt_store_moderate(struct cmt_store *s, const char *id, const char *status,
                       const char *by, int64_t now_ms, bool *changed);

/* Tombstone live comment id (text dropped) and append CommentRemoved with
 * reason. MOAT_ENOTFOUND for no comment or a tombstone. */
int cmt_store_remove(struct cmt_store *s, const char *id, const char *by,
                     const char *reason, int64_t now_ms);

/*
 * Up to limit top-level comments of target with ids above after (NULL:
 * from the oldest), oldest first; or (parent != NULL) the replies of
 * parent. Only those viewer may see: approved ones, viewer's own, and
 * every one when moderator. *items (cmt_comments_free) has *n.
 */
int cmt_store_list(struct cmt_store *s, const struct cmt_target *t,
                   const char *parent, const char *after, size_t limit,
                   const char *viewer, bool moderator,
                   struct cmt_comment **items, size_t *n);

/* Set whether comments on target (kind "post" or "conversation", id)
 * start pending. */
int cmt_store_set_target(struct cmt_store *s, const char *kind, const char *id,
                         bool requires, const char *by, int64_t now_ms);
/* Whether comments on (kind, id) start pending (false when never set). */
int cmt_store_get_target(struct cmt_store *s, const char *kind, const char *id,
                         bool *requires);

/* Record post's author (as posts answered; kept once known). */
int cmt_store_set_post_owner(struct cmt_store *s, const char *post,
                             const char *owner);
/* Is user the recorded author of post? (false when unknown) */
int cmt_store_is_post_owner(struct cmt_store *s, const char *post,
                            const char *user, bool *owner);

/* Set whether user's comments start pending. */
int cmt_store_set_user(struct cmt_store *s, const char *user, bool requires,
                       const char *by, int64_t now_ms);
int cmt_store_get_user(struct cmt_store *s, const char *user,
                       struct cmt_user_flags *out);

/*
 * Apply users' moderation action a inside the consumer's open transaction
 * on the store's database (the consumer's), once per action_id: an action
 * applied before changes nothing. remove_comment tombstones the comment and
 * appends CommentRemoved (an unknown or removed comment is recorded as such);
 * suspend_commenting / restore_commenting set or clear the user's
 * suspension. MOAT_EINVAL (with *why) for an action the store does not
 * know: it is parked as a dead letter.
 */
int cmt_store_apply_action(struct cmt_store *s, const struct cmt_action *a,
                           int64_t now_ms, const char **why);
/* The outcome ("removed", "not_found", "suspended", "restored") of an
 * applied action into out (cap 32). MOAT_ENOTFOUND when not applied. */
int cmt_store_get_action(struct cmt_store *s, const char *action_id,
                         char out[32], int64_t *applied_ms);

/* The idempotency record of (author, key): MOAT_ENOTFOUND when none. */
int cmt_idem_get(struct cmt_store *s, const char *author, const char *key,
                 char fingerprint[65], char comment_id[CMT_ID_LEN + 1]);

#endif /* CMT_STORE_H */
