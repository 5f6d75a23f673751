/*
 * moat/crypto.h - encryption at rest for sensitive columns, blind indexes
 * and password hashing (libsodium).
 *
 * Keyring. A service's keyring holds one index key (for blind indexes; it
 * never rotates, or every lookup would break) and numbered data keys; the
 * newest data key encrypts, every data key still present decrypts. It comes
 * from MOAT_KEYRING (the file's contents, lines separated by ';' or by
 * newlines) or from a key file in the service's data directory, created
 * with mode 0600 at first start. File format, one key per line, base64
 * (standard, padded) of 32 bytes:
 *
 *     index <base64>
 *     data 1 <base64>
 *     data 2 <base64>      <- the highest id is the active key
 *
 * Sealed fields are text: "s1.<key id>.<base64url(nonce || ciphertext)>",
 * XChaCha20-Poly1305 (IETF) with associated data that binds the value to
 * its place, e.g. "users.email:usr_01H..." - a ciphertext copied to another
 * row or column fails to open.
 *
 * Blind index: keyed BLAKE2b-256 of the normalised value under a subkey of
 * the index key derived per context ("email"), as 64 hex characters:
 * equality lookups and UNIQUE constraints without storing the plaintext.
 *
 * Passwords: Argon2id via crypto_pwhash_str (interactive limits, ~70 ms).
 * Blocking: call from a moat/work.h job, never on the event loop.
 *
 * Memory: strings returned through char ** are malloc'd; the caller frees
 * them (plaintexts with moat_free_secret, which wipes them first). Keys
 * live in sodium_malloc'd (guarded, mlock'd, read-only) memory.
 *
 * Threads: seal, open, blind index and active may run concurrently on any
 * thread (e.g. from moat/work.h jobs); rotate takes the keyring's write
 * lock. Errors that concern the key file are logged (path and reason,
 * never key material).
 */
#ifndef MOAT_CRYPTO_H
#define MOAT_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define MOAT_KEY_BYTES         32
#define MOAT_BLIND_INDEX_HEX   64
#define MOAT_PASSWORD_HASH_MAX 128         /* crypto_pwhash_STRBYTES */
#define MOAT_SEALED_MAX_INPUT  (64u << 10) /* plaintext cap per field */

struct moat_keyring;

/*
 * Load the keyring from the environment variable env_name if set (even if
 * empty: that is an error, not "use the file"), else from key_file,
 * creating key_file (0600, index key + data key 1; written to a temp file,
 * fsynced, then linked into place) when it does not exist. Refuses
 * (MOAT_EINVAL) a key file with any group or other permission bit, a
 * symbolic link, or a malformed file; MOAT_EIO on an I/O failure. Caller
 * frees with moat_keyring_free().
 */
int moat_keyring_load(struct moat_keyring **out, const char *env_name,
                      const char *key_file);
void moat_keyring_free(struct moat_keyring *kr);
uint32_t moat_keyring_active(const struct moat_keyring *kr);
/*
 * Rotation, step 1: generate data key active+1, append it to the key file
 * (atomically: write temp, fsync, rename, fsync the directory) and make it
 * active. The file is rewritten from the keys in memory, so it must not be
 * edited while the service runs. Fails with MOAT_EUNSUPPORTED when the
 * keyring came from the environment, MOAT_EIO when the file cannot be
 * written (the keyring is then unchanged).
 */
int moat_keyring_rotate(struct moat_keyring *kr, uint32_t *new_id);

/*
 * Rotation, step 3: drop every data key but the active one, from the key
 * file (atomically, as rotate) and from memory. Only once no stored value
 * is sealed with an older key (the caller checks; moat/keys.h does): what
 * is still sealed with a retired key can never be opened again, and
 * neither can backups taken before the re-sealing. *retired (may be NULL)
 * gets the number of keys dropped (0: nothing to retire). Errors as
 * moat_keyring_rotate.
 */
int moat_keyring_retire(struct moat_keyring *kr, uint32_t *retired);

/* Seal plaintext (len bytes, at most MOAT_SEALED_MAX_INPUT, else
 * MOAT_ETOOBIG) for place ad (non-NULL). *out is a new string. */
int moat_seal(const struct moat_keyring *kr, const char *ad, const void *pt,
              size_t len, char **out);
/*
 * Open a sealed field for place ad. *out is a new NUL-terminated buffer
 * (free with moat_free_secret); *len may be NULL. MOAT_EINVAL when the text
 * is malformed or does not authenticate (wrong place, tampered);
 * MOAT_ENOTFOUND when its key id is not in the keyring.
 */
int moat_open(const struct moat_keyring *kr, const char *ad, const char *sealed,
              char **out, size_t *len);
/* Key id a sealed text was made with (0 if malformed): rotation, step 2
 * re-seals every value whose id is not the active one. */
uint32_t moat_sealed_key_id(const char *sealed);

/* Blind index of value in context into out (64 hex + NUL). The caller
 * normalises value first (e.g. lower-cases an email). Arguments must not
 * be NULL (that aborts). */
void moat_blind_index(const struct moat_keyring *kr, const char *context,
                      const char *value, char out[MOAT_BLIND_INDEX_HEX + 1]);

/* Argon2id. Blocking (~70 ms): from a worker thread only. MOAT_EINVAL for
 * a password longer than 1024 bytes, MOAT_EIO if Argon2 gets no memory. */
int moat_password_hash(const char *password, char out[MOAT_PASSWORD_HASH_MAX]);
/* MOAT_OK if password matches hash, MOAT_EINVAL otherwise (also for a
 * malformed hash or a password longer than 1024 bytes). Blocking. */
int moat_password_verify(const char *hash, const char *password);

/*
 * Constant-time equality of two equal-length buffers. Like sodium_memcmp
 * this is NOT a boolean: MOAT_OK (0) when equal, MOAT_EINVAL otherwise.
 * Test it with == MOAT_OK.
 */
int moat_memeq(const void *a, const void *b, size_t len);
/* Wipe (sodium_memzero) then free a secret string; NULL is fine. */
void moat_free_secret(char *s);
/* n random bytes as base64url without padding; caller frees. */
char *moat_random_token(size_t nbytes);
/* SHA-256 (crypto_hash_sha256) of data as 64 hex characters. */
void moat_sha256_hex(const void *data, size_t len, char out[65]);

#endif /* MOAT_CRYPTO_H */
