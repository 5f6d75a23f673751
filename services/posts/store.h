/*
 * store.h - posts' own database ($MOAT_DATA_DIR/posts.db, SQLite): posts,
 * their mentions and URLs (own tables, in text order), tombstones of
 * deleted posts, idempotency records and the outbox (PostCreated,
 * PostDeleted). store.c is the only code that knows the schema.
 *
 * Every write runs in one BEGIN IMMEDIATE transaction that also appends
 * its event to the outbox, so a change and its event commit or vanish
 * together. The store owns its database and outbox.
 *
 * Ownership: struct pst_post owns its text and JSON arrays (release with
 * pst_post_release, a list with pst_posts_free); strings passed in are
 * borrowed. Everything runs on the loop thread.
 */
#ifndef PST_STORE_H
#define PST_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/metrics.h"

#define PST_ID_PREFIX "post_"
#define PST_ID_LEN    (5 + 26)
#define PST_USER_MAX  63 /* a principal's user id (moat/auth.h) */

struct event_base;
struct pst_store;

struct pst_post {
    char id[PST_ID_LEN + 1];
    char author_id[PST_USER_MAX + 1];
    char *text;         /* owned; NULL for a tombstone */
    json_t *mentions;   /* owned array of names (without "@") */
    json_t *urls;       /* owned array of URLs found in the text */
    json_t *media_urls; /* owned array of the client's media URLs */
    int64_t created_ms; /* wall clock, ms since the epoch */
    int64_t deleted_ms; /* 0 unless deleted (a tombstone) */
};

/* Free what p owns; p can be reused afterwards. */
void pst_post_release(struct pst_post *p);
void pst_posts_free(struct pst_post *items, size_t n);

/* Open (creating and migrating) data_dir/posts.db, or the PostgreSQL
 * database of dsn when it is not NULL or "" (moat/db.h), and its outbox
 * for service source; base runs the outbox timers, metrics is borrowed. */
int pst_store_open(struct pst_store **out, const char *data_dir,
                   const char *dsn, struct event_base *base, const char *source,
                   const struct moat_outbox_options *outbox,
                   struct moat_metrics *metrics);
/* The store's database (borrowed), for the skeleton's backups. */
struct moat_db *pst_store_db(struct pst_store *s);
void pst_store_close(struct pst_store *s);
struct moat_outbox *pst_store_outbox(struct pst_store *s);
/* True when the database answers and every migration is applied. */
bool pst_store_ready(struct pst_store *s, const char **why);

/*
 * Insert p (every field set by the caller except deleted_ms) with its
 * mentions and URLs and append PostCreated. With idem_key (may be NULL)
 * the record (author, key) -> (fingerprint, id) is inserted in the same
 * transaction: MOAT_ECONFLICT when the author used the key already.
 */
int pst_store_create(struct pst_store *s, const struct pst_post *p,
                     const char *idem_key, const char *fingerprint);

/* Load post id, a tombstone included, into *out. MOAT_ENOTFOUND if none. */
int pst_store_get(struct pst_store *s, const char *id, struct pst_post *out);

/*
 * Turn post id into a tombstone (text, mentions, URLs and media dropped;
 * id, author and times kept) and append PostDeleted. MOAT_ENOTFOUND when
 * there is no such post or it is deleted already.
 */
int pst_store_delete(struct pst_store *s, const char *id,
                     const char *deleted_by, int64_t now_ms);

/*
 * Up to limit live posts of author, newest first, with ids below before
 * (NULL: from the newest). *items (caller frees with pst_posts_free) has
 * *n posts.
 */
int pst_store_timeline(struct pst_store *s, const char *author,
                       const char *before, size_t limit,
                       struct pst_post **items, size_t *n);

/* The idempotency record of (author, key): MOAT_ENOTFOUND when none. */
int pst_idem_get(struct pst_store *s, const char *author, const char *key,
                 char fingerprint[65], char post_id[PST_ID_LEN + 1]);

#endif /* PST_STORE_H */
