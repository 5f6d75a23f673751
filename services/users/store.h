/*
 * store.h - the users service's own database: the only code that knows
 * its schema, and the only code that seals and opens personal data.
 *
 * The database is $MOAT_DATA_DIR/users.db (SQLite through moat/db.h), or
 * the PostgreSQL database MOAT_DB_DSN names. It never holds a plaintext email,
 * display name, password or refresh token:
 *  - email and display name are sealed (moat/crypto.h) with associated
 *    data "users.email:<id>" / "users.display_name:<id>", so a ciphertext
 *    copied to another row or column fails to open; every write seals both
 *    with the keyring's active data key and records its id in key_id;
 *  - the email is found through its blind index (email_bidx, UNIQUE);
 *  - passwords are Argon2id hashes, refresh tokens SHA-256 hashes.
 *
 * Errors: MOAT_ENOTFOUND (no such row), MOAT_ECONFLICT (email taken),
 * MOAT_EPRECOND (version moved on), MOAT_EBUSY (database locked),
 * MOAT_EDB, and USR_EINTEGRITY when a sealed field fails to open (tampered,
 * moved from another row, or its key is gone): the caller must refuse to
 * answer with that row rather than show anything of it.
 *
 * Ownership: users returned through out-parameters belong to the caller
 * (usr_user_release, or usr_users_free for lists). The keyring is
 * borrowed and must outlive the store.
 */
#ifndef USR_STORE_H
#define USR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "moat/crypto.h"
#include "moat/metrics.h"
#include "user.h"

struct event_base;
struct moat_outbox;
struct usr_store;

/* A sealed field did not authenticate: see above. */
#define USR_EINTEGRITY MOAT_EINVAL

#define USR_TOKEN_HASH_HEX 64
#define USR_FAMILY_MAX     48

/* dsn (borrowed; NULL or "": SQLite) is MOAT_DB_DSN: the store is that
 * PostgreSQL database instead of data_dir/users.db (moat/db.h). */
int usr_store_open(struct usr_store **out, struct event_base *base,
                   const char *data_dir, const char *dsn,
                   const struct moat_keyring *kr, struct moat_metrics *metrics);
/* The store's database (borrowed), for the skeleton's backups. */
struct moat_db *usr_store_db(struct usr_store *s);
/* The outbox of UserRegistered/UserUpdated events (served as the feed). */
struct moat_outbox *usr_store_outbox(struct usr_store *s);
void usr_store_close(struct usr_store *s);
bool usr_store_ready(struct usr_store *s, const char **why);

/*
 * Insert u (id, plaintexts, hash, role, times set by the caller) with
 * email_bidx; sets u->version = 1 and u->key_id. MOAT_ECONFLICT when the
 * email is taken.
 */
int usr_store_create(struct usr_store *s, struct usr_user *u,
                     const char *email_bidx);

/* Load and open user id. */
int usr_store_get(struct usr_store *s, const char *id, struct usr_user *out);

/* What login needs, without opening any sealed field. */
struct usr_cred {
    char id[USR_ID_LEN + 1];
    char role[USR_ROLE_MAX];
    char password_hash[MOAT_PASSWORD_HASH_MAX];
    bool suspended;         /* no post, comment, message */
    bool comment_suspended; /* no comment */
};
int usr_store_cred_by_email(struct usr_store *s, const char *email_bidx,
                            struct usr_cred *out);
int usr_store_cred_by_id(struct usr_store *s, const char *id,
                         struct usr_cred *out);
/* The id of the user with this email (blind index), for admin lookups. */
int usr_store_id_by_email(struct usr_store *s, const char *email_bidx,
                          char id[USR_ID_LEN + 1]);

/*
 * Write u as the new state of user u->id if its version is still
 * expect_version: every column is rewritten (both fields sealed again with
 * the active key), version + 1, updated_at = now_ms. With
 * revoke_tokens, every live refresh token of the user is revoked in the
 * same transaction (a password change ends all sessions). A changed role
 * also appends RoleChanged (changed_by: the acting user id). On success u
 * holds the new version and key id.
 */
int usr_store_replace(struct usr_store *s, struct usr_user *u,
                      int64_t expect_version, const char *email_bidx,
                      bool revoke_tokens, int64_t now_ms,
                      const char *changed_by);

/* ---- access: role and suspension (docs/users.md "Permissions") ---- */

struct usr_access {
    char id[USR_ID_LEN + 1];
    char role[USR_ROLE_MAX];
    bool suspended;
    bool comment_suspended;
    int64_t version;
    int64_t updated_ms;
};

/* What to change; NULL / -1 leave a field as it is. */
struct usr_access_change {
    const char *role;
    int suspended;         /* -1, 0 or 1 */
    int comment_suspended; /* -1, 0 or 1 */
    const char *changed_by;
    const char *reason; /* may be "" */
};

int usr_store_access_get(struct usr_store *s, const char *id,
                         struct usr_access *out);
/*
 * Apply ch to user id in one transaction with its event (RoleChanged when
 * the role changes, else UserSuspended when a suspension is set, else
 * UserRestored), version + 1. Nothing changing is no write and no event
 * (*changed false). *out is the state after. MOAT_ENOTFOUND.
 */
int usr_store_access_change(struct usr_store *s, const char *id,
                            const struct usr_access_change *ch, int64_t now_ms,
                            struct usr_access *out, bool *changed);
/* The JSON of a's state: {id, role, suspended, comment_suspended, perms,
 * version, updated_at} (the access representation, new reference). */
json_t *usr_access_json(const struct usr_access *a);

/* ---- moderation actions ---- */

#define USR_MOD_ID_PREFIX  "mod_"
#define USR_MOD_ID_LEN     30
#define USR_REASON_MAX     200 /* code points (up to 4 bytes each) */
#define USR_COMMENT_ID_MAX 64

struct usr_mod_action {
    char id[USR_MOD_ID_LEN + 1];
    char action[24];                         /* "remove_comment", ... */
    char comment_id[USR_COMMENT_ID_MAX + 1]; /* "" when none */
    char user_id[USR_ID_LEN + 1];            /* "" when none */
    char reason[USR_REASON_MAX * 4 + 1];
    char requested_by[64];
    int64_t requested_ms;
    int64_t seq; /* the event's feed sequence */
};

/*
 * Record a (id, times and fields set by the caller) and append
 * ModerationActionRequested in one transaction; suspend_commenting and
 * restore_commenting also set the user's comment_suspended (with its
 * UserSuspended / UserRestored, when it changes). MOAT_ENOTFOUND when the
 * action names a user that does not exist.
 */
int usr_store_mod_insert(struct usr_store *s, struct usr_mod_action *a);
int usr_store_mod_get(struct usr_store *s, const char *id,
                      struct usr_mod_action *out);
/* {action_id, action, comment_id?, user_id?, reason, requested_by,
 * requested_at, status} (new reference). */
json_t *usr_mod_json(const struct usr_mod_action *a);

/*
 * Up to limit users with ids greater than after_id ("" = from the start),
 * in id order. On success *items (caller frees with usr_users_free) holds
 * *n users. USR_EINTEGRITY when any row fails to open.
 */
int usr_store_list(struct usr_store *s, const char *after_id, size_t limit,
                   struct usr_user **items, size_t *n);
void usr_users_free(struct usr_user *items, size_t n);

/* ---- refresh tokens (stored as SHA-256 hex of the token) ---- */

struct usr_token {
    char hash[USR_TOKEN_HASH_HEX + 1];
    char user_id[USR_ID_LEN + 1];
    char family[USR_FAMILY_MAX];
    int64_t expires_ms;
    int64_t revoked_ms; /* 0 while live */
    bool rotated;       /* revoked by a refresh (it has a successor) */
};

int usr_store_token_insert(struct usr_store *s, const struct usr_token *t,
                           int64_t now_ms);
int usr_store_token_get(struct usr_store *s, const char *hash,
                        struct usr_token *out);
/*
 * Rotation in one transaction: revoke old_hash (replaced_by = next->hash)
 * and insert next. MOAT_EPRECOND when old_hash is no longer live.
 */
int usr_store_token_rotate(struct usr_store *s, const char *old_hash,
                           const struct usr_token *next, int64_t now_ms);
/* Revoke every live token of user_id's family (a session); *count (may
 * be NULL) says how many. When there were any, SessionsEnded (reason:
 * "logout", "reuse_detected") is published in the same transaction. */
int usr_store_family_revoke(struct usr_store *s, const char *user_id,
                            const char *family, const char *reason,
                            int64_t now_ms, int *count);
/* Delete the user's tokens that have expired (housekeeping at login). */
int usr_store_tokens_purge(struct usr_store *s, const char *user_id,
                           int64_t now_ms);

/* ---- data keys ---- */

/* Rows per data key: *out is a new object {"<key id>": count}. */
int usr_store_rows_by_key(struct usr_store *s, json_t **out);
/*
 * Re-seal, in one transaction, up to batch users whose key_id is not
 * active_key and whose id is greater than after (updated to the last id
 * looked at). *resealed and *failed count the rows re-sealed and the rows
 * that failed to open (left as they are, logged); *finished is set when no
 * row is left after the cursor. Reads in between see either state, both
 * of which open.
 */
int usr_store_rekey_batch(struct usr_store *s, uint32_t active_key,
                          char after[USR_ID_LEN + 1], size_t batch,
                          size_t *resealed, size_t *failed, bool *finished);

#endif /* USR_STORE_H */
