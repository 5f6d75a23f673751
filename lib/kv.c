/* kv.c - a service's own LMDB environment (see moat/kv.h). */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/kv.h"
#include "moat/log.h"

#define META_DB            "meta"
#define SCHEMA_VERSION_KEY "schema_version"
#define MIN_MAPSIZE        ((size_t)1 << 20)
/* The decimal text of an int, with its NUL. */
#define INT_TEXT 16

enum kv_op { OP_GET, OP_PUT, OP_DEL, OP_ITERATE, OP_COMMIT, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"get", "put", "del", "iterate",
                                               "commit"};

struct moat_kv_db {
    MDB_dbi dbi;
    char name[MOAT_KV_MAX_NAME + 1];
};

struct moat_kv {
    MDB_env *env;
    char *path;  /* owned copy of the directory */
    int lock_fd; /* the directory, flock'ed exclusively while open */
    struct moat_kv_db dbs[MOAT_KV_MAX_DBS];
    size_t ndbs;
    struct moat_kv_db *meta;  /* dbs[0] */
    struct moat_kv_txn *wtxn; /* the open write transaction, or NULL */
    unsigned readers;         /* open read transactions */
    struct moat_metric_series *timing[OP_COUNT]; /* NULL without metrics */
    struct moat_metric_series *m_map, *m_used;   /* NULL without metrics */
};

struct moat_kv_txn {
    struct moat_kv *kv;
    MDB_txn *txn;
    bool write;
    /* An LMDB error that leaves the transaction good for abort only. */
    bool failed;
    /* Nested write transactions (moat_kv_begin_nested): the enclosing
     * one, and the one open inside this one (each NULL when none). */
    struct moat_kv_txn *parent, *child;
};

/* ---- errors and timing ---- */

/*
 * The moat error for an LMDB (or errno) result. Missing keys and taken
 * keys are outcomes the caller turns into answers; the rest are faults
 * worth a line in the log.
 */
static int kv_error(const struct moat_kv *kv, const char *what, int rc)
{
    switch (rc) {
    case MDB_SUCCESS:
        return MOAT_OK;
    case MDB_NOTFOUND:
        return MOAT_ENOTFOUND;
    case MDB_KEYEXIST:
        return MOAT_ECONFLICT;
    default:
        break;
    }
    moat_log(MOAT_LOG_ERROR, "lmdb operation failed", "{s:s, s:s, s:i, s:s}",
             "op", what, "path", kv ? kv->path : "", "lmdb_code", rc, "error",
             mdb_strerror(rc));
    switch (rc) {
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
        return MOAT_ETOOBIG;
    case MDB_READERS_FULL:
        return MOAT_EBUSY;
    case MDB_BAD_VALSIZE:
    case EINVAL: /* e.g. a handle the transaction cannot see */
        return MOAT_EINVAL;
    case EACCES:
    case EIO:
    case ENOSPC:
    case ENOENT:
    case EROFS:
        return MOAT_EIO;
    default:
        return MOAT_EDB;
    }
}

/* Errors after which LMDB only allows an abort (MDB_TXN_ERROR set). */
static void note_failure(struct moat_kv_txn *t, int rc)
{
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND && rc != MDB_KEYEXIST)
        t->failed = true;
}

static void observe(struct moat_kv *kv, enum kv_op op, uint64_t ns)
{
    if (kv->timing[op])
        moat_metric_observe(kv->timing[op], (double)ns / 1e9);
}

static void update_gauges(struct moat_kv *kv)
{
    if (!kv->m_map)
        return;
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(kv->env, &info) != MDB_SUCCESS ||
        mdb_env_stat(kv->env, &st) != MDB_SUCCESS)
        return;
    moat_metric_set(kv->m_map, (double)info.me_mapsize);
    moat_metric_set(kv->m_used,
                    (double)(info.me_last_pgno + 1) * (double)st.ms_psize);
}

/* ---- opening ---- */

/*
 * Create dir 0700 (or accept it when it is a real directory, tightening a
 * mode that lets others in) and return it open, locked exclusively: the
 * lock is the "one process, one environment" rule (see moat/kv.h).
 */
static int open_dir(const char *dir, int *out_fd)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        moat_log(MOAT_LOG_ERROR, "cannot create the lmdb directory",
                 "{s:s, s:s}", "path", dir, "error", strerror(errno));
        return MOAT_EIO;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        moat_log(MOAT_LOG_ERROR, "cannot open the lmdb directory", "{s:s, s:s}",
                 "path", dir, "error", strerror(err));
        /* A file or a symlink where the directory should be is a
         * configuration mistake (or an attack), not an I/O failure. */
        return err == ENOTDIR || err == ELOOP ? MOAT_EINVAL : MOAT_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return MOAT_EIO;
    }
    if ((st.st_mode & 077) != 0) {
        char mode[8];
        snprintf(mode, sizeof(mode), "%04o", (unsigned)(st.st_mode & 07777));
        moat_log(MOAT_LOG_WARN, "lmdb directory was accessible to others",
                 "{s:s, s:s}", "path", dir, "mode", mode);
        if (fchmod(fd, 0700) != 0) {
            moat_log(MOAT_LOG_ERROR, "cannot restrict the lmdb directory",
                     "{s:s, s:s}", "path", dir, "error", strerror(errno));
            close(fd);
            return MOAT_EIO;
        }
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        moat_log(MOAT_LOG_ERROR,
                 "the lmdb environment is already open (in this process or "
                 "another one)",
                 "{s:s, s:s}", "path", dir, "error", strerror(err));
        close(fd);
        return err == EWOULDBLOCK ? MOAT_EBUSY : MOAT_EIO;
    }
    *out_fd = fd;
    return MOAT_OK;
}

/* LMDB creates its files with the mode given to mdb_env_open, but files
 * left by an older build or by hand keep theirs: tighten them. */
static int restrict_files(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(files); i++) {
        char *p = moat_xasprintf("%s/%s", dir, files[i]);
        struct stat st;
        int rc = MOAT_OK;
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) &&
            (st.st_mode & 077) != 0) {
            moat_log(MOAT_LOG_WARN, "lmdb file was accessible to others",
                     "{s:s}", "path", p);
            if (chmod(p, st.st_mode & 0700) != 0)
                rc = MOAT_EIO;
        }
        free(p);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

static struct moat_kv_db *find_db(struct moat_kv *kv, const char *name)
{
    for (size_t i = 0; i < kv->ndbs; i++)
        if (strcmp(kv->dbs[i].name, name) == 0)
            return &kv->dbs[i];
    return NULL;
}

/* Open or create sub-database name in a write transaction of its own. The
 * handle is valid for everyone once that transaction commits. */
static int open_db(struct moat_kv *kv, const char *name,
                   struct moat_kv_db **out)
{
    struct moat_kv_db *db = find_db(kv, name);
    if (db) {
        *out = db;
        return MOAT_OK;
    }
    if (kv->ndbs >= MOAT_KV_MAX_DBS) {
        moat_log(MOAT_LOG_ERROR, "too many lmdb sub-databases", "{s:s, s:i}",
                 "name", name, "max", MOAT_KV_MAX_DBS);
        return MOAT_EINVAL;
    }
    if (kv->wtxn) {
        moat_log(MOAT_LOG_ERROR,
                 "lmdb sub-databases are opened at start, with no write "
                 "transaction open",
                 "{s:s}", "name", name);
        return MOAT_EINVAL;
    }
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int rc = mdb_txn_begin(kv->env, NULL, 0, &txn);
    if (rc == MDB_SUCCESS)
        rc = mdb_dbi_open(txn, name, MDB_CREATE, &dbi);
    if (rc == MDB_SUCCESS) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (txn)
        mdb_txn_abort(txn);
    if (rc != MDB_SUCCESS)
        return kv_error(kv, "open sub-database", rc);
    db = &kv->dbs[kv->ndbs++];
    db->dbi = dbi;
    snprintf(db->name, sizeof(db->name), "%s", name);
    *out = db;
    return MOAT_OK;
}

static void register_metrics(struct moat_kv *kv, struct moat_metrics *m)
{
    struct moat_metric_family *f = moat_metrics_family(
        m, MOAT_HISTOGRAM, "moat_kv_op_duration_seconds",
        "Time spent in LMDB operations (commit includes the sync to disk).",
        "op", moat_latency_buckets, moat_latency_buckets_len);
    for (int i = 0; f && i < OP_COUNT; i++) {
        const char *values[] = {op_names[i]};
        kv->timing[i] = moat_metric_series(f, values);
    }
    /* Set at open and after each commit rather than by a collector: a
     * collector cannot be removed and would outlive a closed environment. */
    kv->m_map = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "moat_kv_map_size_bytes",
        "Maximum size of the LMDB map (a write beyond it fails).", NULL, NULL,
        0));
    kv->m_used = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "moat_kv_used_bytes",
        "Bytes of the LMDB map in use (up to the last page written).", NULL,
        NULL, 0));
}

int moat_kv_open(struct moat_kv **out, const char *dir, size_t mapsize,
                 struct moat_metrics *metrics)
{
    if (!out || !dir || !*dir)
        return MOAT_EINVAL;
    if (mapsize == 0)
        mapsize = MOAT_KV_DEFAULT_MAPSIZE;
    if (mapsize < MIN_MAPSIZE) {
        moat_log(MOAT_LOG_ERROR, "lmdb mapsize too small", "{s:s, s:I}", "path",
                 dir, "mapsize", (json_int_t)mapsize);
        return MOAT_EINVAL;
    }
    struct moat_kv *kv = moat_xcalloc(1, sizeof(*kv));
    kv->path = moat_xstrdup(dir);
    kv->lock_fd = -1;
    int rc = open_dir(dir, &kv->lock_fd);
    if (rc != MOAT_OK)
        goto cleanup;

    int mrc = mdb_env_create(&kv->env);
    if (mrc == MDB_SUCCESS)
        mrc = mdb_env_set_mapsize(kv->env, mapsize);
    if (mrc == MDB_SUCCESS)
        mrc = mdb_env_set_maxdbs(kv->env, MOAT_KV_MAX_DBS);
    /*
     * MDB_NOTLS: a read transaction is tied to its handle, not to the
     * thread that began it (work may move to a pool thread). Every other
     * default stays: synced commits, a read-only map (a stray pointer
     * cannot scribble on the data).
     */
    if (mrc == MDB_SUCCESS)
        mrc = mdb_env_open(kv->env, dir, MDB_NOTLS, 0600);
    if (mrc != MDB_SUCCESS) {
        rc = kv_error(kv, "open environment", mrc);
        goto cleanup;
    }
    rc = restrict_files(dir);
    if (rc != MOAT_OK)
        goto cleanup;
    /* A process killed in a read transaction leaves its reader slot
     * taken, pinning old pages until someone clears it. */
    int dead = 0;
    mrc = mdb_reader_check(kv->env, &dead);
    if (mrc != MDB_SUCCESS) {
        rc = kv_error(kv, "reader check", mrc);
        goto cleanup;
    }
    if (dead > 0)
        moat_log(MOAT_LOG_WARN, "cleared stale lmdb reader slots", "{s:s, s:i}",
                 "path", dir, "readers", dead);

    rc = open_db(kv, META_DB, &kv->meta);
    if (rc != MOAT_OK)
        goto cleanup;
    if (metrics)
        register_metrics(kv, metrics);
    update_gauges(kv);
    *out = kv;
    kv = NULL;

cleanup:
    if (kv) {
        if (kv->env)
            mdb_env_close(kv->env);
        if (kv->lock_fd >= 0)
            close(kv->lock_fd);
        free(kv->path);
        free(kv);
    }
    return rc;
}

void moat_kv_close(struct moat_kv *kv)
{
    if (!kv)
        return;
    if (kv->wtxn) {
        moat_log(MOAT_LOG_ERROR,
                 "lmdb closed with a write transaction open (aborted)", "{s:s}",
                 "path", kv->path);
        struct moat_kv_txn *root = kv->wtxn;
        while (root->parent)
            root = root->parent;
        moat_kv_abort(root);
    }
    if (kv->readers > 0)
        moat_log(MOAT_LOG_ERROR, "lmdb closed with read transactions open",
                 "{s:s, s:i}", "path", kv->path, "readers", (int)kv->readers);
    mdb_env_close(kv->env);
    close(kv->lock_fd);
    free(kv->path);
    free(kv);
}

const char *moat_kv_path(const struct moat_kv *kv)
{
    return kv->path;
}

int moat_kv_copy(struct moat_kv *kv, const char *dir)
{
    if (!kv || !dir)
        return MOAT_EINVAL;
    int mrc = mdb_env_copy2(kv->env, dir, MDB_CP_COMPACT);
    if (mrc != MDB_SUCCESS) {
        moat_log(MOAT_LOG_ERROR, "lmdb copy failed", "{s:s, s:s, s:s}", "path",
                 kv->path, "to", dir, "error", mdb_strerror(mrc));
        return MOAT_EIO;
    }
    return MOAT_OK;
}

static bool valid_db_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    return n >= 1 && n <= MOAT_KV_MAX_NAME;
}

int moat_kv_db(struct moat_kv *kv, const char *name, struct moat_kv_db **out)
{
    if (!kv || !out || !valid_db_name(name) || strcmp(name, META_DB) == 0)
        return MOAT_EINVAL;
    return open_db(kv, name, out);
}

/* ---- transactions ---- */

int moat_kv_begin(struct moat_kv *kv, struct moat_kv_txn **out)
{
    if (!kv || !out)
        return MOAT_EINVAL;
    /* LMDB's writer lock is not recursive: a second begin on this thread
     * would wait for itself forever. */
    if (kv->wtxn) {
        moat_log(MOAT_LOG_ERROR, "nested lmdb write transaction refused",
                 "{s:s}", "path", kv->path);
        return MOAT_EINVAL;
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(kv->env, NULL, 0, &txn);
    if (rc != MDB_SUCCESS)
        return kv_error(kv, "begin", rc);
    struct moat_kv_txn *t = moat_xcalloc(1, sizeof(*t));
    t->kv = kv;
    t->txn = txn;
    t->write = true;
    kv->wtxn = t;
    *out = t;
    return MOAT_OK;
}

int moat_kv_begin_read(struct moat_kv *kv, struct moat_kv_txn **out)
{
    if (!kv || !out)
        return MOAT_EINVAL;
    MDB_txn *txn;
    int rc = mdb_txn_begin(kv->env, NULL, MDB_RDONLY, &txn);
    if (rc != MDB_SUCCESS)
        return kv_error(kv, "begin read", rc);
    struct moat_kv_txn *t = moat_xcalloc(1, sizeof(*t));
    t->kv = kv;
    t->txn = txn;
    kv->readers++;
    *out = t;
    return MOAT_OK;
}

static void txn_end(struct moat_kv_txn *t)
{
    if (t->write) {
        t->kv->wtxn = t->parent;
        if (t->parent)
            t->parent->child = NULL;
    } else
        t->kv->readers--;
    free(t);
}

int moat_kv_begin_nested(struct moat_kv_txn *parent, struct moat_kv_txn **out)
{
    if (!parent || !out || !parent->write || parent->child ||
        parent->kv->wtxn != parent)
        return MOAT_EINVAL;
    if (parent->failed)
        return MOAT_EDB;
    MDB_txn *txn;
    int rc = mdb_txn_begin(parent->kv->env, parent->txn, 0, &txn);
    if (rc != MDB_SUCCESS)
        return kv_error(parent->kv, "begin nested", rc);
    struct moat_kv_txn *t = moat_xcalloc(1, sizeof(*t));
    t->kv = parent->kv;
    t->txn = txn;
    t->write = true;
    t->parent = parent;
    parent->child = t;
    parent->kv->wtxn = t;
    *out = t;
    return MOAT_OK;
}

int moat_kv_commit(struct moat_kv_txn *t)
{
    if (!t)
        return MOAT_EINVAL;
    struct moat_kv *kv = t->kv;
    if (t->child) {
        /* Committing under an open child would drop it behind our back. */
        moat_log(MOAT_LOG_ERROR,
                 "lmdb commit refused with a nested transaction open "
                 "(rolled back)",
                 "{s:s}", "path", kv->path);
        moat_kv_abort(t);
        return MOAT_EINVAL;
    }
    if (!t->write) {
        mdb_txn_abort(t->txn);
        txn_end(t);
        return MOAT_OK;
    }
    if (t->failed) {
        moat_log(MOAT_LOG_ERROR,
                 "lmdb commit refused after a failed operation (rolled back)",
                 "{s:s}", "path", kv->path);
        mdb_txn_abort(t->txn);
        txn_end(t);
        return MOAT_EDB;
    }
    struct moat_kv_txn *parent = t->parent;
    uint64_t t0 = moat_mono_ns();
    int rc = mdb_txn_commit(t->txn);
    if (!parent)
        observe(kv, OP_COMMIT, moat_mono_ns() - t0);
    txn_end(t);
    if (rc != MDB_SUCCESS) {
        if (parent)
            parent->failed = true; /* its child's writes are half merged */
        return kv_error(kv, "commit", rc);
    }
    if (parent)
        return MOAT_OK; /* nothing is written before the parent commits */
    update_gauges(kv);
    return MOAT_OK;
}

void moat_kv_abort(struct moat_kv_txn *t)
{
    if (!t)
        return;
    if (t->child)
        moat_kv_abort(t->child); /* LMDB aborts it too; free ours first */
    mdb_txn_abort(t->txn);
    txn_end(t);
}

struct moat_kv_txn *moat_kv_write_txn(struct moat_kv *kv)
{
    return kv ? kv->wtxn : NULL;
}

bool moat_kv_txn_is_write(const struct moat_kv_txn *t)
{
    return t && t->write;
}

/* ---- data ---- */

static bool valid_key(const void *key, size_t klen)
{
    return key && klen >= 1 && klen <= MOAT_KV_MAX_KEY;
}

static MDB_val mval(const void *p, size_t len)
{
    /* LMDB's MDB_val is not const-qualified; it never writes through a
     * key or a value given to it. */
    return (MDB_val){.mv_size = len, .mv_data = (void *)p};
}

int moat_kv_get(struct moat_kv_txn *t, struct moat_kv_db *db, const void *key,
                size_t klen, const void **val, size_t *vlen)
{
    if (!t || !db || !valid_key(key, klen) || !val || !vlen)
        return MOAT_EINVAL;
    MDB_val k = mval(key, klen), v;
    uint64_t t0 = moat_mono_ns();
    int rc = mdb_get(t->txn, db->dbi, &k, &v);
    observe(t->kv, OP_GET, moat_mono_ns() - t0);
    if (rc != MDB_SUCCESS) {
        if (t->write)
            note_failure(t, rc);
        return kv_error(t->kv, "get", rc);
    }
    *val = v.mv_data;
    *vlen = v.mv_size;
    return MOAT_OK;
}

int moat_kv_put(struct moat_kv_txn *t, struct moat_kv_db *db, const void *key,
                size_t klen, const void *val, size_t vlen, unsigned flags)
{
    if (!t || !t->write || !db || !valid_key(key, klen) || (!val && vlen))
        return MOAT_EINVAL;
    unsigned mflags = 0;
    if (flags & MOAT_KV_NOOVERWRITE)
        mflags |= MDB_NOOVERWRITE;
    if (flags & MOAT_KV_APPEND)
        mflags |= MDB_APPEND;
    MDB_val k = mval(key, klen), v = mval(val ? val : "", vlen);
    uint64_t t0 = moat_mono_ns();
    int rc = mdb_put(t->txn, db->dbi, &k, &v, mflags);
    observe(t->kv, OP_PUT, moat_mono_ns() - t0);
    note_failure(t, rc);
    return kv_error(t->kv, "put", rc);
}

int moat_kv_del(struct moat_kv_txn *t, struct moat_kv_db *db, const void *key,
                size_t klen)
{
    if (!t || !t->write || !db || !valid_key(key, klen))
        return MOAT_EINVAL;
    MDB_val k = mval(key, klen);
    uint64_t t0 = moat_mono_ns();
    int rc = mdb_del(t->txn, db->dbi, &k, NULL);
    observe(t->kv, OP_DEL, moat_mono_ns() - t0);
    note_failure(t, rc);
    return kv_error(t->kv, "del", rc);
}

int moat_kv_gets(struct moat_kv_txn *t, struct moat_kv_db *db, const char *key,
                 const void **val, size_t *vlen)
{
    return moat_kv_get(t, db, key, key ? strlen(key) : 0, val, vlen);
}

int moat_kv_puts(struct moat_kv_txn *t, struct moat_kv_db *db, const char *key,
                 const void *val, size_t vlen, unsigned flags)
{
    return moat_kv_put(t, db, key, key ? strlen(key) : 0, val, vlen, flags);
}

int moat_kv_dels(struct moat_kv_txn *t, struct moat_kv_db *db, const char *key)
{
    return moat_kv_del(t, db, key, key ? strlen(key) : 0);
}

int moat_kv_get_json(struct moat_kv_txn *t, struct moat_kv_db *db,
                     const void *key, size_t klen, json_t **out)
{
    if (!out)
        return MOAT_EINVAL;
    const void *val;
    size_t vlen;
    int rc = moat_kv_get(t, db, key, klen, &val, &vlen);
    if (rc != MOAT_OK)
        return rc;
    json_error_t err;
    *out = json_loadb(val, vlen, JSON_DECODE_ANY, &err);
    if (!*out) {
        moat_log(MOAT_LOG_ERROR, "stored lmdb value is not JSON",
                 "{s:s, s:s, s:s}", "path", t->kv->path, "db", db->name,
                 "error", err.text);
        return MOAT_EDB;
    }
    return MOAT_OK;
}

int moat_kv_put_json(struct moat_kv_txn *t, struct moat_kv_db *db,
                     const void *key, size_t klen, const json_t *val,
                     unsigned flags)
{
    if (!val)
        return MOAT_EINVAL;
    char *text = json_dumps(val, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        moat_die("cannot serialise a JSON value");
    int rc = moat_kv_put(t, db, key, klen, text, strlen(text), flags);
    free(text);
    return rc;
}

int moat_kv_iterate(struct moat_kv_txn *t, struct moat_kv_db *db,
                    const void *from, size_t from_len, moat_kv_iter_fn fn,
                    void *arg)
{
    if (!t || !db || !fn || (from && !valid_key(from, from_len)))
        return MOAT_EINVAL;
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(t->txn, db->dbi, &cur);
    if (rc != MDB_SUCCESS)
        return kv_error(t->kv, "cursor open", rc);
    MDB_val k = mval(from, from_len), v;
    MDB_cursor_op op = from ? MDB_SET_RANGE : MDB_FIRST;
    /* Only the time inside LMDB counts, not the caller's per entry. */
    uint64_t busy = 0;
    int ret = MOAT_OK;
    for (;;) {
        uint64_t t0 = moat_mono_ns();
        rc = mdb_cursor_get(cur, &k, &v, op);
        busy += moat_mono_ns() - t0;
        if (rc == MDB_NOTFOUND)
            break;
        if (rc != MDB_SUCCESS) {
            ret = kv_error(t->kv, "cursor get", rc);
            break;
        }
        int r = fn(k.mv_data, k.mv_size, v.mv_data, v.mv_size, arg);
        if (r < 0)
            ret = r;
        if (r != MOAT_KV_NEXT)
            break;
        op = MDB_NEXT;
    }
    observe(t->kv, OP_ITERATE, busy);
    mdb_cursor_close(cur);
    return ret;
}

int moat_kv_last(struct moat_kv_txn *t, struct moat_kv_db *db, const void **key,
                 size_t *klen, const void **val, size_t *vlen)
{
    if (!t || !db)
        return MOAT_EINVAL;
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(t->txn, db->dbi, &cur);
    if (rc != MDB_SUCCESS)
        return kv_error(t->kv, "cursor open", rc);
    MDB_val k, v;
    uint64_t t0 = moat_mono_ns();
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    observe(t->kv, OP_GET, moat_mono_ns() - t0);
    mdb_cursor_close(cur);
    if (rc != MDB_SUCCESS)
        return kv_error(t->kv, "cursor last", rc);
    if (key)
        *key = k.mv_data;
    if (klen)
        *klen = k.mv_size;
    if (val)
        *val = v.mv_data;
    if (vlen)
        *vlen = v.mv_size;
    return MOAT_OK;
}

int moat_kv_count(struct moat_kv_txn *t, struct moat_kv_db *db, uint64_t *count)
{
    if (!t || !db || !count)
        return MOAT_EINVAL;
    MDB_stat st;
    int rc = mdb_stat(t->txn, db->dbi, &st);
    if (rc != MDB_SUCCESS)
        return kv_error(t->kv, "stat", rc);
    *count = st.ms_entries;
    return MOAT_OK;
}

void moat_kv_u64_key(uint64_t v, unsigned char out[8])
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

uint64_t moat_kv_u64_from_key(const unsigned char in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | in[i];
    return v;
}

/* ---- schema migrations ---- */

static int read_version(struct moat_kv_txn *t, int *version)
{
    const void *val;
    size_t vlen;
    int rc = moat_kv_gets(t, t->kv->meta, SCHEMA_VERSION_KEY, &val, &vlen);
    if (rc == MOAT_ENOTFOUND) {
        *version = 0;
        return MOAT_OK;
    }
    if (rc != MOAT_OK)
        return rc;
    char text[INT_TEXT];
    int64_t v;
    if (vlen == 0 || vlen >= sizeof(text))
        goto bad;
    memcpy(text, val, vlen);
    text[vlen] = '\0';
    if (moat_parse_i64(text, 0, INT32_MAX, &v) != MOAT_OK)
        goto bad;
    *version = (int)v;
    return MOAT_OK;
bad:
    moat_log(MOAT_LOG_ERROR, "stored lmdb schema version is malformed", "{s:s}",
             "path", t->kv->path);
    return MOAT_EDB;
}

int moat_kv_schema_version(struct moat_kv *kv, int *version)
{
    if (!kv || !version)
        return MOAT_EINVAL;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = read_version(t, version);
    moat_kv_abort(t);
    return rc;
}

/* Run migration m and record it, in one transaction. */
static int apply_one(struct moat_kv *kv, const struct moat_kv_migration *m,
                     void *arg)
{
    struct moat_kv_txn *t = NULL;
    int rc = moat_kv_begin(kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = m->apply(t, arg);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "lmdb migration failed (rolled back)",
                 "{s:s, s:i, s:s, s:s}", "path", kv->path, "version",
                 m->version, "name", m->name, "error", moat_strerror(rc));
        goto cleanup;
    }
    char text[INT_TEXT];
    snprintf(text, sizeof(text), "%d", m->version);
    rc = moat_kv_puts(t, kv->meta, SCHEMA_VERSION_KEY, text, strlen(text), 0);
    if (rc != MOAT_OK)
        goto cleanup;
    /* The history, for whoever looks at the environment later. */
    char key[32];
    snprintf(key, sizeof(key), "migration:%06d", m->version);
    json_t *rec = json_pack("{s:s, s:I}", "name", m->name, "applied_ms",
                            (json_int_t)moat_wall_ms());
    rc = moat_kv_put_json(t, kv->meta, key, strlen(key), rec, 0);
    json_decref(rec);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_kv_commit(t);
    t = NULL;
    if (rc == MOAT_OK)
        moat_log(MOAT_LOG_INFO, "lmdb migration applied", "{s:s, s:i, s:s}",
                 "path", kv->path, "version", m->version, "name", m->name);

cleanup:
    moat_kv_abort(t);
    return rc;
}

int moat_kv_migrate(struct moat_kv *kv, const struct moat_kv_migration *m,
                    size_t n, void *arg)
{
    if (!kv || (!m && n) || kv->wtxn)
        return MOAT_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (m[i].version != (int)i + 1 || !m[i].name || !m[i].apply) {
            moat_log(MOAT_LOG_ERROR,
                     "lmdb migrations must be numbered 1, 2, 3... in order",
                     "{s:s, s:i}", "path", kv->path, "index", (int)i);
            return MOAT_EINVAL;
        }
    }
    int current;
    int rc = moat_kv_schema_version(kv, &current);
    if (rc != MOAT_OK)
        return rc;
    if ((size_t)current > n) {
        moat_log(MOAT_LOG_ERROR,
                 "the lmdb environment is newer than this code (downgrade "
                 "refused)",
                 "{s:s, s:i, s:i}", "path", kv->path, "stored", current,
                 "known", (int)n);
        return MOAT_ECONFLICT;
    }
    for (size_t i = (size_t)current; i < n; i++) {
        rc = apply_one(kv, &m[i], arg);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
