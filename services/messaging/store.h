/*
 * store.h - messaging's own database ($MOAT_DATA_DIR/messaging.db,
 * SQLite): conversations, their members with each member's read mark,
 * messages numbered by a per-conversation sequence, the edit history of
 * messages, idempotency records of sends, and the outbox
 * (ConversationCreated, MessageSent, MessageEdited, MessageDeleted,
 * MembersChanged). store.c is the only code that knows the schema.
 *
 * Every write runs in one BEGIN IMMEDIATE transaction that also appends
 * its event to the outbox, so a change and its event commit or vanish
 * together. Authorisation is the caller's (handlers.c): the store checks
 * only what the schema must hold (caps, one direct conversation per pair).
 *
 * Ownership: struct msg_conv and struct msg_message own their strings and
 * arrays (release with msg_conv_release / msg_message_release; lists with
 * msg_convs_free / msg_messages_free); strings passed in are borrowed.
 * Everything runs on the loop thread.
 */
#ifndef MSG_STORE_H
#define MSG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/metrics.h"

#define MSG_CONV_PREFIX "cnv_"
#define MSG_MSG_PREFIX  "msg_"
#define MSG_ID_LEN      (4 + 26)
#define MSG_USER_MAX    63 /* a principal's user id (moat/auth.h) */

struct event_base;
struct msg_store;

struct msg_member {
    char user_id[MSG_USER_MAX + 1];
    bool admin;        /* may add and remove members (groups) */
    int64_t joined_ms; /* wall clock, ms since the epoch */
    int64_t read_seq;  /* read up to this seq (0: nothing read) */
};

enum msg_kind {
    MSG_DIRECT,
    MSG_GROUP,
};

struct msg_conv {
    char id[MSG_ID_LEN + 1];
    enum msg_kind kind;
    char *title; /* owned; NULL when none */
    char created_by[MSG_USER_MAX + 1];
    int64_t created_ms;
    int64_t activity_ms;        /* the last message's time, or created_ms */
    int64_t last_seq;           /* seq of the newest message, 0 when none */
    struct msg_member *members; /* owned, in joining order */
    size_t nmembers;
    /* For the viewer the conversation was loaded for (else 0): */
    int64_t read_seq; /* the viewer's read mark */
    int64_t unread;   /* messages after it, not the viewer's, not deleted */
};

struct msg_message {
    char id[MSG_ID_LEN + 1];
    char conversation_id[MSG_ID_LEN + 1];
    char sender_id[MSG_USER_MAX + 1];
    int64_t seq;
    char *text; /* owned; NULL for a tombstone */
    int64_t created_ms;
    int64_t edited_ms;  /* 0 unless edited */
    int64_t deleted_ms; /* 0 unless deleted */
    int64_t edits;      /* number of edits so far */
};

/* One entry of a message's edit history: the text an edit replaced. */
struct msg_edit {
    char *replaced_text; /* owned */
    int64_t edited_ms;   /* when the edit replaced it */
};

void msg_conv_release(struct msg_conv *c);
void msg_convs_free(struct msg_conv *items, size_t n);
void msg_message_release(struct msg_message *m);
void msg_messages_free(struct msg_message *items, size_t n);
void msg_edits_free(struct msg_edit *items, size_t n);

/* Open (creating and migrating) data_dir/messaging.db, or the PostgreSQL
 * database of dsn when it is not NULL or "" (moat/db.h), and its outbox
 * for service source; base runs the outbox timers, metrics is borrowed. */
int msg_store_open(struct msg_store **out, const char *data_dir,
                   const char *dsn, struct event_base *base, const char *source,
                   const struct moat_outbox_options *outbox,
                   struct moat_metrics *metrics);
/* The store's database (borrowed), for the skeleton's backups. */
struct moat_db *msg_store_db(struct msg_store *s);
void msg_store_close(struct msg_store *s);
struct moat_outbox *msg_store_outbox(struct msg_store *s);
/* True when the database answers and every migration is applied. */
bool msg_store_ready(struct msg_store *s, const char **why);

/*
 * Insert conversation c (id, kind, title, created_by, created_ms and its
 * members set by the caller; the first admin is the creator) and append
 * ConversationCreated. For a direct conversation, when the pair has one
 * already: MOAT_ECONFLICT and its id in existing_id.
 */
int msg_store_create_conv(struct msg_store *s, const struct msg_conv *c,
                          char existing_id[MSG_ID_LEN + 1]);

/*
 * Load conversation id with its members into *out (release it). With
 * viewer (may be NULL) the conversation must have viewer as a member
 * (MOAT_ENOTFOUND otherwise, as for no conversation) and out->read_seq /
 * out->unread are the viewer's.
 */
int msg_store_get_conv(struct msg_store *s, const char *id, const char *viewer,
                       struct msg_conv *out);

/* The newest seq of conversation id when user is a member of it;
 * MOAT_ENOTFOUND when not (or no such conversation). */
int msg_store_member_head(struct msg_store *s, const char *id, const char *user,
                          int64_t *last_seq);

/*
 * Up to limit conversations of viewer, most recent activity first, that
 * come after the cursor (before_activity_ms, before_id) in that order
 * (before_id NULL: from the start). Each with members and the viewer's
 * unread count. *items (msg_convs_free) has *n conversations.
 */
int msg_store_list_convs(struct msg_store *s, const char *viewer,
                         int64_t before_activity_ms, const char *before_id,
                         size_t limit, struct msg_conv **items, size_t *n);

/*
 * Add users add[0..nadd) (existing members are skipped) or remove user
 * `remove` (may be NULL) from group conversation id, by user `by`, and
 * append MembersChanged when anything changed (*changed says so). At most
 * max_members stay members: MOAT_ETOOBIG beyond. When the last admin
 * leaves, the longest-standing remaining member becomes admin. New
 * members' read marks start at the newest message.
 */
int msg_store_change_members(struct msg_store *s, const char *id,
                             const char *by, const char *const *add,
                             size_t nadd, const char *remove,
                             size_t max_members, int64_t now_ms, bool *changed);

/*
 * Append message m (id, conversation_id, sender_id, text, created_ms set
 * by the caller) as the conversation's next seq (*seq_out), and
 * MessageSent. With idem_key (may be NULL) the record (sender, key) ->
 * (fingerprint, id) is inserted in the same transaction: MOAT_ECONFLICT
 * when the sender used the key already.
 */
int msg_store_send(struct msg_store *s, const struct msg_message *m,
                   const char *idem_key, const char *fingerprint,
                   int64_t *seq_out);

/* The idempotency record of (sender, key): MOAT_ENOTFOUND when none. */
int msg_idem_get(struct msg_store *s, const char *sender, const char *key,
                 char fingerprint[65], char message_id[MSG_ID_LEN + 1]);

/* Load message id (a tombstone included) into *out. MOAT_ENOTFOUND if
 * none. */
int msg_store_get_message(struct msg_store *s, const char *id,
                          struct msg_message *out);

/* The edit history of message id, oldest first (*items: msg_edits_free). */
int msg_store_edits(struct msg_store *s, const char *id,
                    struct msg_edit **items, size_t *n);

/*
 * Replace the text of live message id (keeping the old text in its
 * history) and append MessageEdited. MOAT_ENOTFOUND when there is no
 * live message id.
 */
int msg_store_edit(struct msg_store *s, const char *id, const char *text,
                   int64_t now_ms);

/*
 * Turn message id into a tombstone (its text and history dropped; id,
 * sender, seq and times kept) and append MessageDeleted. MOAT_ENOTFOUND
 * when there is no live message id.
 */
int msg_store_delete_message(struct msg_store *s, const char *id,
                             const char *deleted_by, int64_t now_ms);

/*
 * Up to limit messages of conversation conv, in ascending seq order:
 *  - after >= 0: the first ones with seq > after;
 *  - otherwise before > 0: the last ones with seq < before;
 *  - otherwise: the newest ones.
 * Tombstones included. *items (msg_messages_free) has *n messages.
 */
int msg_store_page(struct msg_store *s, const char *conv, int64_t after,
                   int64_t before, size_t limit, struct msg_message **items,
                   size_t *n);

/*
 * Move user's read mark in conv up to up_to (never back: a lower up_to
 * changes nothing). *read_seq gets the mark afterwards. MOAT_ENOTFOUND
 * when user is not a member.
 */
int msg_store_read(struct msg_store *s, const char *conv, const char *user,
                   int64_t up_to, int64_t *read_seq);

#endif /* MSG_STORE_H */
