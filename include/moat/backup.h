/*
 * moat/backup.h - online backups of a service's own store, their manifest,
 * their verification, and the feed epoch a restore starts.
 *
 * WHO COPIES. The database-per-service rule holds for backups too: only
 * the owning service reads its store. A service registers its store with
 * the skeleton in init (moat_backup_register_sqlite or _kv); the skeleton
 * then serves, to the operator only (the "operator" identity of
 * cli_operator_call; any other caller gets 403):
 *
 *   POST /v1/admin/backup?id=ID
 *     ID: [A-Za-z0-9._-]{1,80}, chosen by the caller (moat backup makes
 *     "<service>-<YYYYMMDDTHHMMSS.mmmZ>-<4 hex>"). Writes a consistent copy of
 *     the store while the service serves into
 *       <data_dir>/backup-staging/<ID>/
 *     (the only place the sandboxed process may write) with its manifest
 *     MOAT_BACKUP_MANIFEST, and answers 201 with the manifest. The caller
 *     (moat backup) then moves the directory to
 *     <var_dir>/backups/<service>/<ID>/, out of the data directory.
 *     409 when ID exists, 501 when the service has no store.
 *
 * HOW. SQLite: VACUUM INTO the staging file (one read transaction: a
 * snapshot of the last commit; compact; WAL content included). LMDB:
 * mdb_env_copy2(MDB_CP_COMPACT) (one read transaction). Both run on the
 * service's loop thread: requests wait for the copy (milliseconds to a
 * few seconds for the stores moat keeps). The manifest's outbox head,
 * consumer cursors and schema version are read FROM THE COPY, so they are
 * exactly those of the copy's instant (the copy is one snapshot).
 *
 * MANIFEST (manifest.json, format 1):
 *   {"format": 1, "id", "service", "engine": "sqlite"|"lmdb",
 *    "store": "catalog.db" | "inventory.lmdb" (relative to the data dir),
 *    "schema_version": N,
 *    "outbox": {"head": H, "epoch": "<feed epoch at backup>"} | null,
 *    "cursors": {"<source>": SEQ, ...},
 *    "files": [{"name": "catalog.db" | "data.mdb", "bytes", "sha256"}],
 *    "created_at": RFC 3339 UTC, "duration_ms"}
 * "outbox" is null for a store without an outbox; "cursors" is {} for a
 * service that consumes nothing.
 *
 * FEED EPOCH. Every producer's feed has an epoch: a random id and the
 * sequence it starts after (base_seq), kept in <data_dir>/MOAT_EPOCH_FILE
 * ({"epoch", "base_seq", "created_at", "from_backup"}). The skeleton
 * creates it (base_seq 0) at the first start; moat restore writes a new
 * one whose base_seq is the restored outbox head. Every feed page carries
 * "epoch" and "epoch_base" (a stream: its first line and heartbeats,
 * moat/events.h). A consumer keeps the epoch it last accepted
 * per source in <data_dir>/feed-epochs/<source>.json; when a page comes
 * with another epoch and the consumer's cursor is beyond the new
 * epoch's base_seq, the events it applied after base_seq no longer exist
 * at the producer (which will hand out those numbers again for new
 * events): the consumer neither skips the new events nor reads them as
 * duplicates, it moves its cursor back to base_seq, records a "rewind"
 * {at, old_epoch, new_epoch, from_seq, to_seq} in that file, counts it
 * (moat_consumer_rewinds_total{source}) and resumes. What it had applied
 * in (to_seq, from_seq] is a divergence for moat reconcile, which reads
 * the rewinds at GET /v1/admin/feed-epochs:
 *   200 {"epoch": {own feed epoch} | null,
 *        "sources": [{"source", "epoch", "base_seq", "rewinds": [...]}]}
 */
#ifndef MOAT_BACKUP_H
#define MOAT_BACKUP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moat_service;
struct moat_db;
struct moat_kv;

#define MOAT_BACKUP_MANIFEST   "manifest.json"
#define MOAT_BACKUP_STAGING    "backup-staging"
#define MOAT_BACKUP_FORMAT     1
#define MOAT_BACKUP_ID_MAX     80
#define MOAT_EPOCH_FILE        "feed.epoch"
#define MOAT_EPOCH_DIR         "feed-epochs"
#define MOAT_EPOCH_MAX_REWINDS 64 /* kept per source, oldest dropped */

/*
 * Register the service's store (borrowed; must live until release) so
 * that the skeleton serves POST /v1/admin/backup. Call once, in init,
 * after opening it. A service with two stores is not supported (the
 * second call is refused with MOAT_ECONFLICT). A database on PostgreSQL is
 * not registered (MOAT_EUNSUPPORTED: back it up with PostgreSQL's tools).
 */
int moat_backup_register_sqlite(struct moat_service *svc, struct moat_db *db);
int moat_backup_register_kv(struct moat_service *svc, struct moat_kv *kv);

/* Whether id is a valid backup id ([A-Za-z0-9._-]{1,MOAT_BACKUP_ID_MAX},
 * not starting with '.'). */
bool moat_backup_id_valid(const char *id);

/*
 * Verify the backup in directory dir without writing to it: the manifest
 * parses, every listed file exists with its size and sha256, no other
 * file is there, the store opens read-only (SQLite: PRAGMA
 * integrity_check says ok; LMDB: the environment opens and every named
 * sub-database stats), and its schema version, outbox head and cursors
 * equal the manifest's. MOAT_OK when everything holds; otherwise an
 * error code, and problems (an array, may be NULL) gets one string per
 * problem found. *manifest (may be NULL) gets the parsed manifest (new
 * reference, or NULL when it does not parse).
 */
int moat_backup_verify(const char *dir, json_t *problems, json_t **manifest);

/*
 * The feed epoch of data_dir: reads MOAT_EPOCH_FILE, creating it (base_seq
 * 0) when absent. epoch receives the id (at least 40 bytes). MOAT_OK or
 * MOAT_EIO.
 */
int moat_epoch_load(const char *data_dir, char *epoch, size_t len,
                    int64_t *base_seq);
/*
 * Write a new epoch for data_dir starting after base_seq (moat restore
 * calls it while the service is stopped); from_backup (may be NULL) is
 * recorded. epoch (may be NULL; at least 40 bytes) receives the new id.
 */
int moat_epoch_new(const char *data_dir, int64_t base_seq,
                   const char *from_backup, char *epoch, size_t len);

/* ---- used inside libmoat ---- */

/*
 * The skeleton's part (lib/service.c, after def->init): load or create the
 * feed epoch and hand it to the feed (moat_feed_set_epoch), and serve POST
 * /v1/admin/backup and GET /v1/admin/feed-epochs. Nothing for a service
 * without a data directory. MOAT_OK or MOAT_EIO (logged).
 */
int moat_backup_serve(struct moat_service *svc);
/* <data_dir>/MOAT_EPOCH_DIR of svc, where its consumers keep the epochs
 * they accepted; NULL without a data directory. Caller frees. */
char *moat_epoch_dir(const struct moat_service *svc);
/* The epoch every feed page of this process carries (lib/feed.c). */
void moat_feed_set_epoch(const char *epoch, int64_t base_seq);
/* A feed source keeps the epoch it accepts in dir/<source>.json (lib/
 * feed.c); dir (copied) may be NULL: no epoch tracking. */
struct moat_event_source;
void moat_feed_source_set_epoch_dir(struct moat_event_source *src,
                                    const char *dir);
/* The epoch accepted for source ("" when none yet) into epoch. */
int moat_epoch_accepted(const char *dir, const char *source, char *epoch,
                        size_t len);
/* Accept epoch (starting after base_seq) for source. */
int moat_epoch_accept(const char *dir, const char *source, const char *epoch,
                      int64_t base_seq);
/* Record a rewind of source's consumer from from_seq back to to_seq. */
int moat_epoch_note_rewind(const char *dir, const char *source,
                           const char *old_epoch, const char *new_epoch,
                           int64_t from_seq, int64_t to_seq);

#endif /* MOAT_BACKUP_H */
