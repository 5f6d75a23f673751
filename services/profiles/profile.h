/*
 * profile.h - the profile of one user as profiles keeps it, and the rules
 * its fields follow (profile.c). No SQL and no HTTP here.
 *
 * A profile belongs to a user id that the users service issued; profiles
 * keeps no other identity data (no email, no password). Its fields:
 *
 *   display_name  1..PRO_NAME_MAX characters, no control characters  (PII)
 *   handle        PRO_HANDLE_MIN..PRO_HANDLE_MAX of [a-z0-9_], unique,
 *                 lower-cased on input; the name @mentions use
 *   bio           1..PRO_BIO_MAX characters; newlines and tabs allowed (PII)
 *   location      1..PRO_LOCATION_MAX characters                      (PII)
 *   avatar_url    an http:// or https:// URL of at most
 *                 PRO_AVATAR_URL_MAX bytes, visible ASCII only
 *
 * Every field is optional: NULL means "not set". PII fields are sealed at
 * rest by store.c; the others are plain columns (the handle is public by
 * nature and must be indexed; see docs/profiles.md).
 *
 * Ownership: the strings in fields[] are malloc'd and owned by the
 * profile; pro_profile_release() frees them (and wipes the PII ones).
 */
#ifndef PRO_PROFILE_H
#define PRO_PROFILE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define PRO_USER_ID_MAX    64 /* bytes, [A-Za-z0-9_-] */
#define PRO_NAME_MAX       100
#define PRO_HANDLE_MIN     3
#define PRO_HANDLE_MAX     30
#define PRO_BIO_MAX        500
#define PRO_LOCATION_MAX   100
#define PRO_AVATAR_URL_MAX 2048
#define PRO_ETAG_MAX       32

enum pro_field {
    PRO_F_DISPLAY_NAME,
    PRO_F_HANDLE,
    PRO_F_BIO,
    PRO_F_LOCATION,
    PRO_F_AVATAR_URL,
    PRO_NFIELDS,
};

/* "display_name", "handle", ...: the JSON member names, in enum order. */
extern const char *const pro_field_names[PRO_NFIELDS];
/* True for the fields sealed at rest (display name, bio, location). */
bool pro_field_is_pii(enum pro_field f);

struct pro_profile {
    char user_id[PRO_USER_ID_MAX + 1];
    char *fields[PRO_NFIELDS]; /* owned; NULL = not set */
    uint32_t key_id;           /* data key of the sealed fields */
    int64_t version;           /* 1 at creation, +1 per change */
    int64_t created_ms, updated_ms;
};

void pro_profile_release(struct pro_profile *p);

/* True when id has the shape profiles accepts for a user id: 1 to
 * PRO_USER_ID_MAX of [A-Za-z0-9_-]. */
bool pro_user_id_valid(const char *id);

/*
 * Lower-case a requested handle into out and check it; false (out
 * undefined) when it is not PRO_HANDLE_MIN..PRO_HANDLE_MAX of [a-z0-9_]
 * after lower-casing.
 */
bool pro_handle_normalise(const char *in, char out[PRO_HANDLE_MAX + 1]);

/*
 * Validate a PUT body (an object with only the members above, each a
 * string or null) into the fields of *out (which the caller zeroed; only
 * fields[] is written). Returns NULL when valid, else a new 422 problem
 * listing every wrong member (and *out's fields are released).
 */
json_t *pro_profile_parse(json_t *body, struct pro_profile *out);

/* The public JSON of p (a new reference). */
json_t *pro_profile_json(const struct pro_profile *p);
/* The strong ETag of p's version: "\"v<version>\"". */
void pro_etag(const struct pro_profile *p, char out[PRO_ETAG_MAX]);

#endif /* PRO_PROFILE_H */
