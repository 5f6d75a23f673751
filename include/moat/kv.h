/*
 * moat/kv.h - a service's own LMDB environment: the key-value engine of
 * the services that want ordered keys and nothing else (inventory).
 *
 * Layout. moat_kv_open(&kv, dir, ...) makes dir a directory of its own
 * (mode 0700, created if missing; the service's data directory holds it,
 * e.g. $MOAT_DATA_DIR/inventory.lmdb) with LMDB's data.mdb and lock.mdb
 * (mode 0600) inside. A directory rather than MDB_NOSUBDIR files: the
 * lock file and the data file stay together, `moat status` sums the
 * directory, and a backup copies one directory.
 *
 * One environment per process, one process per environment. LMDB must
 * not open the same environment twice in one process (its POSIX locks are
 * per process and closing one handle would drop the other's), so a second
 * moat_kv_open of an environment this process holds is refused
 * (MOAT_EBUSY); another process holding it is refused too (an exclusive
 * flock), because a second writer process would not wake this process's
 * feed readers. Stale reader slots left by a crashed process are cleared
 * at open (mdb_reader_check).
 *
 * Size. LMDB maps the file with a fixed maximum size (mapsize; default
 * MOAT_KV_DEFAULT_MAPSIZE). A write that does not fit fails with
 * MOAT_ETOOBIG (MDB_MAP_FULL): raise the mapsize and restart. Sparse
 * files: a large mapsize costs address space, not disk. The gauges
 * moat_kv_map_size_bytes and moat_kv_used_bytes show how close it is.
 *
 * Sub-databases. Data lives in named sub-databases (moat_kv_db; at most
 * MOAT_KV_MAX_DBS - 1 besides "meta", which this module owns and which
 * holds "schema_version" and the migration history). Keys are byte strings
 * of 1..MOAT_KV_MAX_KEY bytes, sorted bytewise (memcmp): encode numbers
 * big-endian (moat_kv_u64_key) so that they sort as numbers.
 *
 * Transactions. Writes go in a write transaction: moat_kv_begin /
 * moat_kv_commit / moat_kv_abort. There is one writer, on the loop thread:
 * a second moat_kv_begin while one is open is refused (MOAT_EINVAL) rather
 * than deadlocking on LMDB's writer lock. moat_kv_write_txn() tells
 * whether one is open (the outbox refuses to append outside one).
 * Reads go in a read transaction (moat_kv_begin_read, ended with
 * moat_kv_abort), a consistent snapshot that never blocks nor is blocked
 * by the writer. The environment runs with MDB_NOTLS, so a read
 * transaction belongs to the struct moat_kv_txn, not to the thread that
 * began it (each still used by one thread at a time). Keep read
 * transactions short: an open one pins the pages it sees, and the file
 * grows while it lives.
 *
 * Durability. Each commit is synced (LMDB's default; no MDB_NOSYNC): once
 * moat_kv_commit returns MOAT_OK the change survives a crash and a power
 * cut.
 *
 * Migrations. moat_kv_migrate runs numbered callbacks (versions 1, 2, 3...)
 * each in its own write transaction that also stores the new
 * "schema_version" in "meta", so a crash between two leaves a consistent
 * version. Like moat/db.h, an environment newer than the code is refused.
 * Never renumber or change a shipped migration; add a new one.
 *
 * Metrics (when a registry is given): moat_kv_op_duration_seconds{op} for
 * op = get, put, del, iterate, commit (commit includes the sync), and the
 * map gauges above.
 *
 * Memory. Values returned by the get and iterate helpers point into the
 * map: they are valid until the transaction ends or, in a write
 * transaction, until its next put or del. Copy what you keep. The _json
 * helpers return new references. Errors: MOAT_ENOTFOUND (no such key),
 * MOAT_ECONFLICT (MOAT_KV_NOOVERWRITE and the key exists), MOAT_EINVAL
 * (bad arguments, key size, no or wrong transaction), MOAT_ETOOBIG (map
 * full), MOAT_EBUSY (reader table full), MOAT_EIO / MOAT_EDB (logged).
 * After an error other than MOAT_ENOTFOUND / MOAT_ECONFLICT / MOAT_EINVAL
 * the write transaction can only be aborted (commit fails).
 *
 * Not thread-safe beyond what is said above: one writer thread, and each
 * transaction used by one thread at a time.
 */
#ifndef MOAT_KV_H
#define MOAT_KV_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/metrics.h"

#define MOAT_KV_DEFAULT_MAPSIZE ((size_t)256 << 20)
/* LMDB's compiled-in maximum key size (mdb_env_get_maxkeysize). */
#define MOAT_KV_MAX_KEY 511
/* Named sub-databases an environment can hold, "meta" included. */
#define MOAT_KV_MAX_DBS 32
/* A sub-database name, in bytes. */
#define MOAT_KV_MAX_NAME 63

struct moat_kv;
struct moat_kv_txn;
struct moat_kv_db; /* a named sub-database; owned by the environment */

/*
 * Open (creating if needed) the environment in directory dir with the
 * given mapsize (0 = MOAT_KV_DEFAULT_MAPSIZE; at least 1 MiB, and never
 * below what the file already uses). metrics (borrowed, may be NULL) gets
 * the timings and gauges and must outlive the environment and not be
 * rendered after moat_kv_close (a collector). On success *out belongs to
 * the caller: moat_kv_close(). MOAT_EINVAL (dir is not a directory),
 * MOAT_EBUSY (already open, see above), MOAT_EIO or MOAT_EDB.
 */
int moat_kv_open(struct moat_kv **out, const char *dir, size_t mapsize,
                 struct moat_metrics *metrics);
/* Aborts an open write transaction (logged: that is a bug). Read
 * transactions must all have ended. NULL is fine. */
void moat_kv_close(struct moat_kv *kv);
const char *moat_kv_path(const struct moat_kv *kv);

/*
 * The sub-database called name (1..MOAT_KV_MAX_NAME bytes; "meta" is
 * reserved), created if missing in a write transaction of its own: call
 * it at start, with no write transaction open (MOAT_EINVAL otherwise).
 * The handle belongs to kv; asking twice gives the same handle. A
 * transaction begun before the sub-database was first opened cannot use
 * it (LMDB's rule; MOAT_EINVAL): open every one at start.
 */
int moat_kv_db(struct moat_kv *kv, const char *name, struct moat_kv_db **out);

/* ---- transactions ---- */

int moat_kv_begin(struct moat_kv *kv, struct moat_kv_txn **out);
int moat_kv_begin_read(struct moat_kv *kv, struct moat_kv_txn **out);
/*
 * A write transaction nested in parent (LMDB's child transaction): its
 * writes join parent's on moat_kv_commit (nothing reaches the disk before
 * parent commits), or vanish alone on moat_kv_abort while parent's stay -
 * a savepoint. While it is open, use it, not parent (LMDB's rule);
 * moat_kv_write_txn() returns it, so the outbox appends into it. At most
 * one child per transaction (MOAT_EINVAL). Aborting or committing parent
 * first ends the child too (a commit of parent with a child open is
 * refused and rolls both back). A failed child commit leaves parent good
 * for abort only.
 */
int moat_kv_begin_nested(struct moat_kv_txn *parent, struct moat_kv_txn **out);
/* Commit a write transaction (a read one just ends). t is gone afterwards
 * whatever the result; on an error nothing of it was written. */
int moat_kv_commit(struct moat_kv_txn *t);
/* Drop t (read or write) and everything it wrote. NULL is fine. */
void moat_kv_abort(struct moat_kv_txn *t);
/* The open write transaction of kv, or NULL. */
struct moat_kv_txn *moat_kv_write_txn(struct moat_kv *kv);
bool moat_kv_txn_is_write(const struct moat_kv_txn *t);

/* ---- data ---- */

enum moat_kv_put_flags {
    MOAT_KV_NOOVERWRITE = 1 << 0, /* MOAT_ECONFLICT when the key exists */
    MOAT_KV_APPEND = 1 << 1,      /* key > every key (fast); else ECONFLICT */
};

int moat_kv_get(struct moat_kv_txn *t, struct moat_kv_db *db, const void *key,
                size_t klen, const void **val, size_t *vlen);
int moat_kv_put(struct moat_kv_txn *t, struct moat_kv_db *db, const void *key,
                size_t klen, const void *val, size_t vlen, unsigned flags);
int moat_kv_del(struct moat_kv_txn *t, struct moat_kv_db *db, const void *key,
                size_t klen);

/* String keys (without their NUL). */
int moat_kv_gets(struct moat_kv_txn *t, struct moat_kv_db *db, const char *key,
                 const void **val, size_t *vlen);
int moat_kv_puts(struct moat_kv_txn *t, struct moat_kv_db *db, const char *key,
                 const void *val, size_t vlen, unsigned flags);
int moat_kv_dels(struct moat_kv_txn *t, struct moat_kv_db *db, const char *key);

/* JSON values (compact text): *out is a new reference. A stored value
 * that is not JSON is MOAT_EDB (logged). */
int moat_kv_get_json(struct moat_kv_txn *t, struct moat_kv_db *db,
                     const void *key, size_t klen, json_t **out);
int moat_kv_put_json(struct moat_kv_txn *t, struct moat_kv_db *db,
                     const void *key, size_t klen, const json_t *val,
                     unsigned flags);

/*
 * Visit the entries of db in key order starting at the first key >= from
 * (from NULL: the first key). fn returns MOAT_KV_NEXT to go on,
 * MOAT_KV_STOP to stop, or a negative MOAT_E* that stops and is returned.
 * fn must not write to db through t while iterating. Returns MOAT_OK at
 * the end or on MOAT_KV_STOP.
 */
enum { MOAT_KV_NEXT = 0, MOAT_KV_STOP = 1 };
typedef int (*moat_kv_iter_fn)(const void *key, size_t klen, const void *val,
                               size_t vlen, void *arg);
int moat_kv_iterate(struct moat_kv_txn *t, struct moat_kv_db *db,
                    const void *from, size_t from_len, moat_kv_iter_fn fn,
                    void *arg);
/*
 * A compacted copy of the environment, as of one read transaction, into
 * the existing empty directory dir (LMDB's mdb_env_copy2 with
 * MDB_CP_COMPACT: dir/data.mdb, no lock file). Safe while writers run.
 * MOAT_OK, MOAT_EINVAL, MOAT_EIO (logged).
 */
int moat_kv_copy(struct moat_kv *kv, const char *dir);
/* The last entry of db (highest key): MOAT_ENOTFOUND when db is empty. */
int moat_kv_last(struct moat_kv_txn *t, struct moat_kv_db *db, const void **key,
                 size_t *klen, const void **val, size_t *vlen);
/* Number of entries in db as of t. */
int moat_kv_count(struct moat_kv_txn *t, struct moat_kv_db *db,
                  uint64_t *count);

/* Big-endian encoding: byte order = numeric order. */
void moat_kv_u64_key(uint64_t v, unsigned char out[8]);
uint64_t moat_kv_u64_from_key(const unsigned char in[8]);

/* ---- schema migrations ---- */

struct moat_kv_migration {
    int version;      /* 1, 2, 3 ... */
    const char *name; /* short description, recorded in "meta" */
    /* Runs inside the write transaction t; must not commit or abort it. */
    int (*apply)(struct moat_kv_txn *t, void *arg);
};

/*
 * Apply the migrations above the stored schema version, in order, each in
 * its own transaction (arg is passed to each). MOAT_EINVAL (m not numbered
 * 1, 2, 3..., or a write transaction open), MOAT_ECONFLICT (the
 * environment is newer than the code), or the first failing migration's
 * error (that migration is rolled back whole; the earlier ones stay).
 */
int moat_kv_migrate(struct moat_kv *kv, const struct moat_kv_migration *m,
                    size_t n, void *arg);
/* The stored schema version (0 for a fresh environment). */
int moat_kv_schema_version(struct moat_kv *kv, int *version);

#endif /* MOAT_KV_H */
