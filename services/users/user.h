/*
 * user.h - the users service's account model: user ids, the rules for
 * email addresses, passwords, display names and roles, and the v1 JSON
 * representation.
 *
 * Nothing here touches the database, the keyring or HTTP: store.c seals
 * and opens the personal fields, handlers.c glues the pieces together.
 *
 * Ownership: struct usr_user owns its plaintext strings (email,
 * display_name); usr_user_release() wipes them before freeing, so a
 * plaintext never lingers in freed heap memory.
 */
#ifndef USR_USER_H
#define USR_USER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "moat/crypto.h"
#include "moat/problem.h"

/* "usr_" + 26 Crockford base32 characters (48-bit ms time, 80 random). */
#define USR_ID_PREFIX     "usr_"
#define USR_ID_PREFIX_LEN 4
#define USR_ID_LEN        (USR_ID_PREFIX_LEN + 26)

/* Field limits. Email in bytes (RFC 5321 path limit), others in code
 * points. */
#define USR_EMAIL_MAX    254
#define USR_PASSWORD_MIN 12
#define USR_PASSWORD_MAX 256
#define USR_NAME_MAX     100
#define USR_ROLE_MAX     16

#define USR_ROLE_CUSTOMER  "customer"
#define USR_ROLE_MODERATOR "moderator"
#define USR_ROLE_ADMIN     "admin"

struct usr_user {
    char id[USR_ID_LEN + 1];
    char *email;        /* plaintext as given (trimmed); owned, wiped */
    char *display_name; /* plaintext; owned, wiped */
    char password_hash[MOAT_PASSWORD_HASH_MAX]; /* Argon2id string */
    char role[USR_ROLE_MAX]; /* "customer" | "moderator" | "admin" */
    uint32_t key_id;         /* data key of the row's sealed fields */
    int64_t version;         /* 1 on creation, +1 per change */
    int64_t created_ms;      /* wall clock, ms since the epoch */
    int64_t updated_ms;
};

/* Wipe and free the plaintexts; the struct can be reused afterwards. */
void usr_user_release(struct usr_user *u);
/* Deep copy of src into dst (dst is overwritten, not released). */
void usr_user_copy(struct usr_user *dst, const struct usr_user *src);

/*
 * A new user id into out. Ids sort by creation time (ULID-like monotonic
 * within a millisecond). Not thread-safe: loop thread only.
 */
void usr_id_new(char out[USR_ID_LEN + 1]);
/* True when s has the exact shape of a user id. */
bool usr_id_valid(const char *s);
bool usr_role_valid(const char *s);

/*
 * Validate member key of obj as an email address: a string of at most
 * USR_EMAIL_MAX bytes after trimming surrounding white space, exactly one
 * "@" with something on both sides, no white space or control characters.
 * On success *out is the trimmed address (new string, caller frees with
 * moat_free_secret) and true is returned; errors go to v.
 */
bool usr_v_email(struct moat_validation *v, json_t *obj, const char *key,
                 bool required, char **out);
/* A password of USR_PASSWORD_MIN..MAX code points; *out borrowed. */
bool usr_v_password(struct moat_validation *v, json_t *obj, const char *key,
                    bool required, const char **out);
/* A display name of 1..USR_NAME_MAX code points without control
 * characters; *out borrowed. */
bool usr_v_display_name(struct moat_validation *v, json_t *obj, const char *key,
                        bool required, const char **out);

/*
 * The lookup form of an email address: trimmed, ASCII letters lowercased
 * (what the blind index is computed over). Caller frees with
 * moat_free_secret.
 */
char *usr_email_normalise(const char *email);
/* The email's blind index under kr (context "email") into out. */
void usr_email_bidx(const struct moat_keyring *kr, const char *email,
                    char out[MOAT_BLIND_INDEX_HEX + 1]);

/* The v1 representation (new reference): times in epoch seconds. */
json_t *usr_user_json_v1(const struct usr_user *u);

/* Strong entity tag of u's version, quotes included: "\"v3\"". */
#define USR_ETAG_MAX 32
void usr_etag(const struct usr_user *u, char out[USR_ETAG_MAX]);

#endif /* USR_USER_H */
