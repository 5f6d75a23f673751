/*
 * store.h - profiles' own database: the only code that knows its schema,
 * and the only code that seals and opens the personal fields.
 *
 * The database is $MOAT_DATA_DIR/profiles.db (SQLite through moat/db.h).
 * It never holds a plaintext display name, bio or location: each is
 * sealed (moat/crypto.h) with the associated data
 * "profiles.<field>:<user id>", so a ciphertext copied to another row or
 * column fails to open; key_id records the data key of the row's seals.
 * The handle and avatar URL are plain columns (public, and the handle is
 * UNIQUE). PRAGMA secure_delete keeps replaced ciphertexts out of free
 * pages.
 *
 * The same database holds the outbox of ProfileUpdated events and the
 * consumer's cursor of users' feed, so a profile change and its event,
 * and a default profile and the cursor past its UserRegistered, commit
 * together. ProfileUpdated carries no PII (docs/profiles.md).
 *
 * Errors: MOAT_ENOTFOUND (no such profile), MOAT_ECONFLICT (handle
 * taken), MOAT_EPRECOND (version moved on), MOAT_EBUSY (database locked),
 * MOAT_EDB, and PRO_EINTEGRITY when a sealed field fails to open
 * (tampered, moved from another row, or its key is gone): the row must
 * not be shown.
 *
 * Ownership: profiles returned through out-parameters belong to the
 * caller (pro_profile_release). The keyring is borrowed and must outlive
 * the store.
 */
#ifndef PRO_STORE_H
#define PRO_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/crypto.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/metrics.h"
#include "profile.h"

struct event_base;
struct pro_store;

/* A sealed field did not authenticate: see above. */
#define PRO_EINTEGRITY MOAT_EINVAL
/* Any version: a write without a precondition. */
#define PRO_ANY_VERSION (-1)

/*
 * Open (creating and migrating) data_dir/profiles.db, or the PostgreSQL
 * database of dsn when it is not NULL or "" (moat/db.h), and its outbox
 * (source "profiles", options oo). base runs the outbox's timers; kr and
 * metrics are borrowed. Close with pro_store_close().
 */
int pro_store_open(struct pro_store **out, struct event_base *base,
                   const char *data_dir, const char *dsn,
                   const struct moat_keyring *kr,
                   const struct moat_outbox_options *oo,
                   struct moat_metrics *metrics);
void pro_store_close(struct pro_store *s);
bool pro_store_ready(struct pro_store *s, const char **why);
/* The database (for the consumer) and the outbox (for the feed); both
 * owned by the store. */
struct moat_db *pro_store_db(struct pro_store *s);
struct moat_outbox *pro_store_outbox(struct pro_store *s);

/* Load and open the profile of user_id. */
int pro_store_get(struct pro_store *s, const char *user_id,
                  struct pro_profile *out);
/* Load the profile whose handle is handle (already normalised). */
int pro_store_get_by_handle(struct pro_store *s, const char *handle,
                            struct pro_profile *out);

/*
 * Set the fields of the profile of in->user_id to in->fields (a full
 * replacement: NULL clears), creating the profile when it does not exist
 * yet (a user who edits before the UserRegistered event arrived), if its
 * version is still expect_version (or PRO_ANY_VERSION; a missing profile
 * has version 0). When a field changed: seal with the active key, version
 * + 1, updated_at = now_ms, and append ProfileUpdated in the same
 * transaction. Nothing changed: nothing is written. *out (may be NULL)
 * receives the resulting profile and *changed (may be NULL) whether
 * anything changed.
 */
int pro_store_put(struct pro_store *s, const struct pro_profile *in,
                  int64_t expect_version, int64_t now_ms,
                  struct pro_profile *out, bool *changed);

/*
 * Inside the consumer's transaction on db: create an empty profile for
 * user_id unless one exists (idempotent: a redelivered UserRegistered, or
 * a profile the user already edited, changes nothing). created_ms comes
 * from the event so a replay stores the same row.
 */
int pro_store_ensure(struct moat_db *db, const char *user_id, uint32_t key_id,
                     int64_t created_ms);

/* moat/keys.h's store functions: re-seal, one transaction per batch, the
 * rows whose key_id is not active (no version bump, no event: the content
 * is the same); count the rows per key_id. */
int pro_store_rekey_batch(struct pro_store *s, uint32_t active, char *after,
                          size_t batch, size_t *resealed, size_t *failed,
                          bool *finished);
int pro_store_rows_by_key(struct pro_store *s, json_t **out);

#endif /* PRO_STORE_H */
