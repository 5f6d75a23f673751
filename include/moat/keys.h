/*
 * moat/keys.h - a service's data-key admin API and background
 * re-encryption, the same in every service that seals fields
 * (moat/crypto.h).
 *
 * Routes (admin only, e.g. the operator's `moat keys`):
 *
 *   GET  /v1/admin/keys          {"active": N,
 *                                 "rows_by_key": {"<id>": n}, "rotating":
 *                                 bool, "pass": {"resealed", "failed"}}
 *   POST /v1/admin/keys/rotate   202: a new data key is active; the rows
 *                                still under older keys are re-sealed in
 *                                the background, a batch per loop turn,
 *                                each batch one transaction of the
 *                                service's own
 *   POST /v1/admin/keys/retire   200 {"active", "retired": n}: the older
 *                                keys are dropped from the key file; 409
 *                                while re-sealing runs or any row is still
 *                                under an older key (rows_by_key says
 *                                which), or when the keyring comes from
 *                                the environment
 *
 * Rotation, re-sealing and retirement are recorded in the service's audit
 * log when it has one ("keys.rotate", "keys.retire"). A metric
 * moat_<service>_rows_by_key{key} counts rows per key.
 *
 * Ownership: the service owns the keyring and the audit log and frees them
 * after moat_keys_free(); struct moat_keys borrows them and the service.
 * Threads: the loop thread only.
 */
#ifndef MOAT_KEYS_H
#define MOAT_KEYS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOAT_KEYS_CURSOR_MAX 128 /* bytes of a re-sealing cursor, NUL too */

struct moat_service;
struct moat_keyring;
struct moat_audit;
struct moat_keys;

struct moat_keys_store {
    /*
     * Re-seal, in one transaction, up to batch rows whose key is not
     * active and whose key (cursor) is greater than after; after is
     * updated to the last one looked at ("" = from the start; at most
     * MOAT_KEYS_CURSOR_MAX - 1 characters). *resealed and *failed count
     * the rows re-sealed and the rows that did not open (left as they
     * are); *finished when no such row is left after the cursor.
     */
    int (*rekey_batch)(void *arg, uint32_t active, char *after, size_t batch,
                       size_t *resealed, size_t *failed, bool *finished);
    /* *out: a new object {"<key id>": rows} of the rows holding sealed
     * values (rows with nothing sealed are not counted). */
    int (*rows_by_key)(void *arg, json_t **out);
    void *arg;
};

struct moat_keys_options {
    const char *env_name;     /* MOAT_<SERVICE>_KEYRING, for the 409 text */
    struct moat_audit *audit; /* may be NULL */
    int64_t batch;            /* rows per re-sealing batch; 0 = 100 */
    int64_t pause_ms;         /* pause between batches; 0 = none */
};

/*
 * A rows_by_key for moat/db.h stores (either engine, despite the name):
 * run sql (named name for moat/db.h's metrics), a query of two integer
 * columns (key id, row count), into
 * *out = {"<key id>": count}. MOAT_EDB (or moat_db_error's code) on
 * failure, *out untouched.
 */
struct moat_db;
int moat_keys_count_sqlite(struct moat_db *db, const char *name,
                           const char *sql, json_t **out);

/*
 * Register the routes and the metric, and start re-sealing at once when
 * rows are behind the active key (a restart in the middle of a pass).
 * MOAT_EINVAL when a route or the metric cannot be registered.
 */
int moat_keys_new(struct moat_keys **out, struct moat_service *svc,
                  struct moat_keyring *kr, const struct moat_keys_store *store,
                  const struct moat_keys_options *opts);
/* Stop re-sealing and free; NULL is fine. Call before the store closes. */
void moat_keys_free(struct moat_keys *k);
/* Start (or restart) re-sealing towards the active key. */
void moat_keys_rekey_start(struct moat_keys *k);
bool moat_keys_rotating(const struct moat_keys *k);

#endif /* MOAT_KEYS_H */
