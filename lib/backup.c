/*
 * backup.c - a service's online backup of its own store, the manifest,
 * verification of a backup, and feed epochs (see moat/backup.h).
 */
#include "moat/common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/backup.h"
#include "moat/buf.h"
#include "moat/db.h"
#include "moat/kv.h"
#include "moat/log.h"
#include "moat/service.h"

#define MANIFEST_MAX (1u << 20)
#define EPOCH_MAX    (256u << 10)
#define LMDB_DATA    "data.mdb"

/* One store per process: the service's own. */
static struct {
    struct moat_service *svc;
    struct moat_db *db;
    struct moat_kv *kv;
    char epoch[48];
    int64_t epoch_base;
    bool have_epoch;
} store;

int moat_backup_register_sqlite(struct moat_service *svc, struct moat_db *db)
{
    if (!svc || !db)
        return MOAT_EINVAL;
    /* A PostgreSQL store is backed up with PostgreSQL's tools: the backup
     * route then answers 501, as for a service without a store. */
    if (moat_db_engine(db) != MOAT_DB_SQLITE)
        return MOAT_EUNSUPPORTED;
    if (store.db || store.kv)
        return MOAT_ECONFLICT;
    store.svc = svc;
    store.db = db;
    return MOAT_OK;
}

int moat_backup_register_kv(struct moat_service *svc, struct moat_kv *kv)
{
    if (!svc || !kv)
        return MOAT_EINVAL;
    if (store.db || store.kv)
        return MOAT_ECONFLICT;
    store.svc = svc;
    store.kv = kv;
    return MOAT_OK;
}

bool moat_backup_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > MOAT_BACKUP_ID_MAX || id[0] == '.')
        return false;
    return strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                      "0123456789._-") == n;
}

/* ---- small file helpers ---- */

/* The whole of a small file, NUL-terminated; NULL (errno set) on error or
 * when it is larger than max. */
static char *read_small(const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    struct moat_buf b = MOAT_BUF_INIT;
    char chunk[8192];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
        if (b.len + (size_t)n > max) {
            errno = EFBIG;
            n = -1;
            break;
        }
        moat_buf_add(&b, chunk, (size_t)n);
    }
    close(fd);
    if (n < 0) {
        moat_buf_release(&b);
        return NULL;
    }
    return moat_buf_detach(&b, NULL);
}

/* Write text to path through path.tmp, synced, renamed into place. */
static int write_atomic(const char *path, const char *text)
{
    char *tmp = moat_xasprintf("%s.tmp", path);
    int rc = MOAT_EIO;
    int fd =
        open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        size_t len = strlen(text);
        bool ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
        if (close(fd) == 0 && ok && rename(tmp, path) == 0)
            rc = MOAT_OK;
    }
    if (rc != MOAT_OK)
        unlink(tmp);
    free(tmp);
    return rc;
}

static int write_json(const char *path, const json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text)
        return MOAT_EIO;
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_printf(&b, "%s\n", text);
    free(text);
    int rc = write_atomic(path, moat_buf_str(&b));
    moat_buf_release(&b);
    return rc;
}

static json_t *load_json(const char *path, size_t max)
{
    char *text = read_small(path, max);
    if (!text)
        return NULL;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    free(text);
    return j;
}

/* Lowercase hex sha256 of the file at path into hex[65]; *bytes its size. */
static int sha256_file(const char *path, char hex[65], int64_t *bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return MOAT_EIO;
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    unsigned char buf[65536];
    ssize_t n;
    int64_t total = 0;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        crypto_hash_sha256_update(&st, buf, (unsigned long long)n);
        total += n;
    }
    close(fd);
    if (n < 0)
        return MOAT_EIO;
    unsigned char out[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, out);
    moat_hex(hex, out, sizeof(out));
    *bytes = total;
    return MOAT_OK;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* rm -r of a directory holding files only (a failed backup's staging). */
static void remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char *p = moat_xasprintf("%s/%s", dir, e->d_name);
            unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* ---- reading a copy: schema version, outbox head, cursors ---- */

/* file:PATH?immutable=1 with the URI's special characters escaped. */
static char *sqlite_ro_uri(const char *path)
{
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_add(&b, "file:", 5);
    for (const char *p = path; *p; p++) {
        if (*p == '%' || *p == '?' || *p == '#')
            moat_buf_printf(&b, "%%%02X", (unsigned char)*p);
        else
            moat_buf_addch(&b, *p);
    }
    moat_buf_add(&b, "?immutable=1", 12);
    return moat_buf_detach(&b, NULL);
}

static void problem(json_t *problems, const char *fmt, ...) MOAT_PRINTF(2, 3);
static void problem(json_t *problems, const char *fmt, ...)
{
    if (!problems)
        return;
    struct moat_buf b = MOAT_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    moat_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    /* A path need not be UTF-8; the problem must not be lost. */
    json_t *s = json_string(moat_buf_str(&b));
    json_array_append_new(problems, s ? s : json_string("(not UTF-8)"));
    moat_buf_release(&b);
}

/* Single integer of sql, or dflt when no row. MOAT_EDB on an error. */
static int sqlite_int(sqlite3 *h, const char *sql, int64_t dflt, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK)
        return MOAT_EDB;
    int step = sqlite3_step(st);
    *out = step == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL
               ? sqlite3_column_int64(st, 0)
               : dflt;
    sqlite3_finalize(st);
    return step == SQLITE_ROW || step == SQLITE_DONE ? MOAT_OK : MOAT_EDB;
}

static bool sqlite_has_table(sqlite3 *h, const char *name)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h,
                           "SELECT 1 FROM sqlite_schema WHERE type = 'table' "
                           "AND name = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return false;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    bool yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}

/*
 * Open the SQLite copy at path read-only (immutable: nothing is written
 * beside it) and fill facts {"schema_version", "outbox_head" (or null),
 * "cursors"}; with integrity, run PRAGMA integrity_check too.
 */
static int inspect_sqlite(const char *path, bool integrity, json_t *facts,
                          json_t *problems)
{
    char *uri = sqlite_ro_uri(path);
    sqlite3 *h = NULL;
    int rc = MOAT_EDB;
    if (sqlite3_open_v2(uri, &h, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI,
                        NULL) != SQLITE_OK) {
        problem(problems, "%s: cannot open: %s", path,
                h ? sqlite3_errmsg(h) : "out of memory");
        goto out;
    }
    if (integrity) {
        sqlite3_stmt *st = NULL;
        bool ok = false;
        if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL) ==
            SQLITE_OK) {
            int n = 0;
            while (sqlite3_step(st) == SQLITE_ROW && n < 10) {
                const char *line = (const char *)sqlite3_column_text(st, 0);
                if (n == 0 && line && strcmp(line, "ok") == 0)
                    ok = true;
                else
                    problem(problems, "%s: integrity_check: %s", path,
                            line ? line : "?");
                n++;
            }
            if (n == 0)
                problem(problems, "%s: integrity_check: %s", path,
                        sqlite3_errmsg(h));
        } else {
            problem(problems, "%s: not a readable database: %s", path,
                    sqlite3_errmsg(h));
        }
        sqlite3_finalize(st);
        if (!ok)
            goto out;
    }
    int64_t v;
    if (sqlite_int(h, "SELECT max(version) FROM schema_migrations", 0, &v) !=
        MOAT_OK) {
        problem(problems, "%s: no schema_migrations: %s", path,
                sqlite3_errmsg(h));
        goto out;
    }
    json_object_set_new(facts, "schema_version", json_integer(v));
    if (sqlite_has_table(h, "moat_outbox")) {
        if (sqlite_int(h,
                       "SELECT seq FROM sqlite_sequence WHERE name = "
                       "'moat_outbox'",
                       0, &v) != MOAT_OK) {
            problem(problems, "%s: cannot read the outbox head", path);
            goto out;
        }
        json_object_set_new(facts, "outbox_head", json_integer(v));
    } else {
        json_object_set_new(facts, "outbox_head", json_null());
    }
    json_t *cursors = json_object();
    json_object_set_new(facts, "cursors", cursors);
    if (sqlite_has_table(h, "moat_cursors")) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, "SELECT source, after_seq FROM moat_cursors",
                               -1, &st, NULL) != SQLITE_OK) {
            problem(problems, "%s: cannot read cursors", path);
            goto out;
        }
        while (sqlite3_step(st) == SQLITE_ROW)
            json_object_set_new(cursors,
                                (const char *)sqlite3_column_text(st, 0),
                                json_integer(sqlite3_column_int64(st, 1)));
        sqlite3_finalize(st);
    }
    rc = MOAT_OK;
out:
    sqlite3_close(h);
    free(uri);
    return rc;
}

/* The value of key in sub-database name of txn, or MDB_NOTFOUND. */
static int mdb_lookup(MDB_txn *txn, const char *name, const char *key,
                      MDB_val *val)
{
    MDB_dbi dbi;
    int mrc = mdb_dbi_open(txn, name, 0, &dbi);
    if (mrc != MDB_SUCCESS)
        return mrc;
    MDB_val k = {strlen(key), (void *)key};
    return mdb_get(txn, dbi, &k, val);
}

/* As inspect_sqlite for an LMDB copy in directory dir (data.mdb only). */
static int inspect_lmdb(const char *dir, bool integrity, json_t *facts,
                        json_t *problems)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    int rc = MOAT_EDB;
    int mrc = mdb_env_create(&env);
    if (mrc == MDB_SUCCESS)
        mrc = mdb_env_set_maxdbs(env, MOAT_KV_MAX_DBS);
    if (mrc == MDB_SUCCESS)
        mrc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0600);
    if (mrc == MDB_SUCCESS)
        mrc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (mrc != MDB_SUCCESS) {
        problem(problems, "%s: cannot open the LMDB copy: %s", dir,
                mdb_strerror(mrc));
        goto out;
    }
    MDB_val v;
    mrc = mdb_lookup(txn, "meta", "schema_version", &v);
    char text[24];
    if (mrc != MDB_SUCCESS || v.mv_size == 0 || v.mv_size >= sizeof(text)) {
        problem(problems, "%s: no schema version in \"meta\"", dir);
        goto out;
    }
    memcpy(text, v.mv_data, v.mv_size);
    text[v.mv_size] = '\0';
    int64_t version;
    if (moat_parse_i64(text, 0, INT32_MAX, &version) != MOAT_OK) {
        problem(problems, "%s: malformed schema version", dir);
        goto out;
    }
    json_object_set_new(facts, "schema_version", json_integer(version));
    mrc = mdb_lookup(txn, "outbox_meta", "last_seq", &v);
    if (mrc == MDB_SUCCESS && v.mv_size == 8)
        json_object_set_new(
            facts, "outbox_head",
            json_integer((json_int_t)moat_kv_u64_from_key(v.mv_data)));
    else if (mrc == MDB_NOTFOUND)
        json_object_set_new(facts, "outbox_head",
                            json_integer(0)); /* 0 or no outbox: below */
    else {
        problem(problems, "%s: malformed outbox head", dir);
        goto out;
    }
    MDB_dbi probe;
    if (mdb_dbi_open(txn, "outbox_meta", 0, &probe) == MDB_NOTFOUND)
        json_object_set_new(facts, "outbox_head", json_null());

    json_t *cursors = json_object();
    json_object_set_new(facts, "cursors", cursors);
    MDB_dbi cdbi;
    if (mdb_dbi_open(txn, "consumer", 0, &cdbi) == MDB_SUCCESS) {
        MDB_cursor *cur = NULL;
        if (mdb_cursor_open(txn, cdbi, &cur) == MDB_SUCCESS) {
            MDB_val k;
            for (int op = MDB_FIRST;
                 mdb_cursor_get(cur, &k, &v, op) == MDB_SUCCESS;
                 op = MDB_NEXT) {
                json_t *j = json_loadb(v.mv_data, v.mv_size, 0, NULL);
                char *src = moat_xstrndup(k.mv_data, k.mv_size);
                json_object_set_new(cursors, src,
                                    json_integer(json_integer_value(
                                        json_object_get(j, "after_seq"))));
                free(src);
                json_decref(j);
            }
            mdb_cursor_close(cur);
        }
    }
    if (integrity) {
        /* Every named sub-database opens and stats. */
        MDB_dbi main;
        MDB_cursor *cur = NULL;
        mrc = mdb_dbi_open(txn, NULL, 0, &main);
        if (mrc == MDB_SUCCESS)
            mrc = mdb_cursor_open(txn, main, &cur);
        MDB_val k;
        for (int op = MDB_FIRST; mrc == MDB_SUCCESS &&
                                 mdb_cursor_get(cur, &k, &v, op) == MDB_SUCCESS;
             op = MDB_NEXT) {
            char *name = moat_xstrndup(k.mv_data, k.mv_size);
            MDB_dbi d;
            MDB_stat st;
            int r = mdb_dbi_open(txn, name, 0, &d);
            if (r == MDB_SUCCESS)
                r = mdb_stat(txn, d, &st);
            if (r != MDB_SUCCESS) {
                problem(problems, "%s: sub-database %s: %s", dir, name,
                        mdb_strerror(r));
                mrc = r;
            }
            free(name);
        }
        if (cur)
            mdb_cursor_close(cur);
        if (mrc != MDB_SUCCESS)
            goto out;
    }
    rc = MOAT_OK;
out:
    if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    return rc;
}

/* ---- taking a backup (the service side) ---- */

/* The store's path relative to the data directory (or its last part). */
static const char *store_rel(const char *path, const char *data_dir)
{
    size_t n = strlen(data_dir);
    if (strncmp(path, data_dir, n) == 0 && path[n] == '/')
        return path + n + 1;
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* List dir's files with size and sha256 into files (sorted by name). */
static int checksum_dir(const char *dir, json_t *files)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0)
        return MOAT_EIO;
    int rc = MOAT_OK;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (name[0] != '.' && strcmp(name, MOAT_BACKUP_MANIFEST) != 0 &&
            rc == MOAT_OK) {
            char *p = moat_xasprintf("%s/%s", dir, name);
            char hex[65];
            int64_t bytes;
            rc = sha256_file(p, hex, &bytes);
            if (rc == MOAT_OK)
                json_array_append_new(
                    files, json_pack("{s:s, s:I, s:s}", "name", name, "bytes",
                                     (json_int_t)bytes, "sha256", hex));
            free(p);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

/* Take the backup id into dir; *manifest gets the manifest written. */
static int take(const char *id, const char *dir, json_t **manifest, char *err,
                size_t errlen)
{
    const struct moat_service *svc = store.svc;
    int64_t t0 = moat_wall_ms();
    uint64_t m0 = moat_mono_ms();
    const char *engine = store.db ? "sqlite" : "lmdb";
    const char *path =
        store.db ? moat_db_path(store.db) : moat_kv_path(store.kv);
    const char *rel = store_rel(path, svc->cfg.data_dir);
    int rc;
    json_t *facts = json_object();
    json_t *problems = json_array();
    if (store.db) {
        const char *slash = strrchr(path, '/');
        char *target = moat_xasprintf("%s/%s", dir, slash ? slash + 1 : path);
        sqlite3_stmt *st = NULL;
        sqlite3 *h = moat_db_handle(store.db);
        rc = MOAT_EDB;
        if (sqlite3_prepare_v2(h, "VACUUM INTO ?1", -1, &st, NULL) ==
            SQLITE_OK) {
            sqlite3_bind_text(st, 1, target, -1, SQLITE_TRANSIENT);
            if (sqlite3_step(st) == SQLITE_DONE)
                rc = MOAT_OK;
        }
        if (rc != MOAT_OK)
            snprintf(err, errlen, "VACUUM INTO failed: %s", sqlite3_errmsg(h));
        sqlite3_finalize(st);
        if (rc == MOAT_OK)
            rc = inspect_sqlite(target, false, facts, problems);
        free(target);
    } else {
        rc = moat_kv_copy(store.kv, dir);
        if (rc != MOAT_OK)
            snprintf(err, errlen, "LMDB copy failed: %s", moat_strerror(rc));
        else
            rc = inspect_lmdb(dir, false, facts, problems);
    }
    if (rc == MOAT_OK && json_array_size(problems) == 0) {
        json_t *files = json_array();
        char ts[25];
        moat_time_rfc3339(t0, ts);
        rc = checksum_dir(dir, files);
        json_t *head = json_object_get(facts, "outbox_head");
        json_t *outbox = json_is_integer(head)
                             ? json_pack("{s:O, s:s}", "head", head, "epoch",
                                         store.have_epoch ? store.epoch : "")
                             : json_null();
        json_t *m = json_pack(
            "{s:i, s:s, s:s, s:s, s:s, s:O, s:o, s:O, s:o, s:s, s:I}", "format",
            MOAT_BACKUP_FORMAT, "id", id, "service", svc->cfg.name, "engine",
            engine, "store", rel, "schema_version",
            json_object_get(facts, "schema_version"), "outbox", outbox,
            "cursors", json_object_get(facts, "cursors"), "files", files,
            "created_at", ts, "duration_ms", (json_int_t)(moat_mono_ms() - m0));
        char *mpath = moat_xasprintf("%s/%s", dir, MOAT_BACKUP_MANIFEST);
        if (rc == MOAT_OK)
            rc = write_json(mpath, m);
        if (rc == MOAT_OK) {
            fsync_dir(dir);
            *manifest = m;
        } else {
            snprintf(err, errlen, "cannot write the backup's files");
            json_decref(m);
        }
        free(mpath);
    } else if (rc == MOAT_OK || err[0] == '\0') {
        json_t *first = json_array_get(problems, 0);
        snprintf(err, errlen, "the copy cannot be read: %s",
                 first ? json_string_value(first) : moat_strerror(rc));
        rc = MOAT_EDB;
    }
    json_decref(facts);
    json_decref(problems);
    return rc;
}

static bool operator_only(struct moat_req *req)
{
    if (!store.svc->auth)
        return true; /* MOAT_INSECURE_NO_AUTH: no identities at all */
    const struct moat_principal *p = moat_req_principal(req);
    if (p && strcmp(p->service, "operator") == 0)
        return true;
    moat_req_reply_problem(req, 403, "only the operator may do this");
    return false;
}

static void handle_backup(struct moat_req *req, void *arg)
{
    (void)arg;
    if (!operator_only(req))
        return;
    if (!store.db && !store.kv) {
        moat_req_reply_problem(req, 501, "this service has no store");
        return;
    }
    const char *id = moat_req_query(req, "id");
    if (!moat_backup_id_valid(id)) {
        moat_req_reply_problem(req, 400,
                               "query parameter id must be 1..%d of "
                               "[A-Za-z0-9._-], not starting with '.'",
                               MOAT_BACKUP_ID_MAX);
        return;
    }
    const char *data_dir = store.svc->cfg.data_dir;
    char *staging = moat_xasprintf("%s/%s", data_dir, MOAT_BACKUP_STAGING);
    char *dir = moat_xasprintf("%s/%s", staging, id);
    if (mkdir(staging, 0700) != 0 && errno != EEXIST) {
        moat_req_reply_problem(req, 500, "cannot create %s",
                               MOAT_BACKUP_STAGING);
        goto out;
    }
    if (mkdir(dir, 0700) != 0) {
        if (errno == EEXIST)
            moat_req_reply_problem(req, 409, "backup %s exists", id);
        else
            moat_req_reply_problem(req, 500,
                                   "cannot create the backup "
                                   "directory");
        goto out;
    }
    json_t *manifest = NULL;
    char err[256] = "";
    int rc = take(id, dir, &manifest, err, sizeof(err));
    if (rc != MOAT_OK) {
        remove_flat_dir(dir);
        moat_log(MOAT_LOG_ERROR, "backup failed", "{s:s, s:s}", "id", id,
                 "error", err);
        moat_req_reply_problem(req, 500, "backup failed: %s", err);
        goto out;
    }
    moat_log(MOAT_LOG_INFO, "backup taken", "{s:s, s:O, s:O}", "id", id,
             "outbox", json_object_get(manifest, "outbox"), "duration_ms",
             json_object_get(manifest, "duration_ms"));
    moat_req_reply_json(req, 201, manifest);
out:
    free(dir);
    free(staging);
}

/* ---- verification ---- */

static bool same_int(json_t *a, json_t *b)
{
    if (json_is_null(a) || json_is_null(b))
        return json_is_null(a) && json_is_null(b);
    return json_is_integer(a) && json_is_integer(b) &&
           json_integer_value(a) == json_integer_value(b);
}

int moat_backup_verify(const char *dir, json_t *problems, json_t **manifest)
{
    if (manifest)
        *manifest = NULL;
    json_t *scratch = problems ? NULL : json_array();
    if (!problems)
        problems = scratch;
    size_t before = json_array_size(problems);
    char *mpath = moat_xasprintf("%s/%s", dir, MOAT_BACKUP_MANIFEST);
    json_t *m = load_json(mpath, MANIFEST_MAX);
    json_t *facts = json_object();
    if (!m) {
        problem(problems, "%s: missing or not JSON", mpath);
        goto out;
    }
    const char *engine = json_string_value(json_object_get(m, "engine"));
    json_t *files = json_object_get(m, "files");
    if (json_integer_value(json_object_get(m, "format")) !=
            MOAT_BACKUP_FORMAT ||
        !engine || !json_is_array(files) ||
        !json_is_string(json_object_get(m, "service"))) {
        problem(problems, "%s: not a format %d manifest", mpath,
                MOAT_BACKUP_FORMAT);
        goto out;
    }
    /* Every listed file with its size and checksum... */
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f)
    {
        const char *name = json_string_value(json_object_get(f, "name"));
        const char *want = json_string_value(json_object_get(f, "sha256"));
        if (!name || !want || strchr(name, '/') || name[0] == '.') {
            problem(problems, "files[%zu]: malformed entry", i);
            continue;
        }
        char *p = moat_xasprintf("%s/%s", dir, name);
        char hex[65];
        int64_t bytes;
        if (sha256_file(p, hex, &bytes) != MOAT_OK)
            problem(problems, "%s: missing or unreadable", name);
        else if (bytes != json_integer_value(json_object_get(f, "bytes")))
            problem(problems, "%s: %lld bytes, the manifest says %lld", name,
                    (long long)bytes,
                    (long long)json_integer_value(json_object_get(f, "bytes")));
        else if (strcmp(hex, want) != 0)
            problem(problems, "%s: sha256 %s, the manifest says %s", name, hex,
                    want);
        free(p);
    }
    /* ...and nothing else. */
    json_t *present = json_array();
    if (checksum_dir(dir, present) == MOAT_OK) {
        json_array_foreach(present, i, f)
        {
            const char *name = json_string_value(json_object_get(f, "name"));
            bool listed = false;
            size_t k;
            json_t *g;
            json_array_foreach(files, k, g) listed =
                listed ||
                strcmp(name, json_string_value(json_object_get(g, "name"))
                                 ?: "") == 0;
            if (!listed)
                problem(problems, "%s: not in the manifest", name);
        }
    }
    json_decref(present);
    if (json_array_size(problems) > before)
        goto out; /* do not open a store whose bytes are not the backup's */

    int rc;
    if (strcmp(engine, "sqlite") == 0) {
        const char *name = json_string_value(
            json_object_get(json_array_get(files, 0), "name"));
        char *p = moat_xasprintf("%s/%s", dir, name ? name : "");
        rc = inspect_sqlite(p, true, facts, problems);
        free(p);
    } else if (strcmp(engine, "lmdb") == 0) {
        rc = inspect_lmdb(dir, true, facts, problems);
    } else {
        problem(problems, "unknown engine %s", engine);
        goto out;
    }
    if (rc != MOAT_OK)
        goto out;
    if (!same_int(json_object_get(facts, "schema_version"),
                  json_object_get(m, "schema_version")))
        problem(problems, "schema version %lld, the manifest says %lld",
                (long long)json_integer_value(
                    json_object_get(facts, "schema_version")),
                (long long)json_integer_value(
                    json_object_get(m, "schema_version")));
    json_t *outbox = json_object_get(m, "outbox");
    if (!same_int(json_object_get(facts, "outbox_head"),
                  json_is_object(outbox) ? json_object_get(outbox, "head")
                                         : json_null()))
        problem(problems, "the copy's outbox head differs from the manifest's");
    if (!json_equal(json_object_get(facts, "cursors"),
                    json_object_get(m, "cursors")))
        problem(problems, "the copy's consumer cursors differ from the "
                          "manifest's");
out:
    free(mpath);
    json_decref(facts);
    bool ok = json_array_size(problems) == before;
    json_decref(scratch);
    if (manifest)
        *manifest = m;
    else
        json_decref(m);
    return ok ? MOAT_OK : MOAT_EDB;
}

/* ---- feed epochs ---- */

static void new_epoch_id(char *out, size_t len)
{
    unsigned char r[12];
    char hex[25];
    moat_random_bytes(r, sizeof(r));
    moat_hex(hex, r, sizeof(r));
    snprintf(out, len, "ep_%s", hex);
}

int moat_epoch_new(const char *data_dir, int64_t base_seq,
                   const char *from_backup, char *epoch, size_t len)
{
    char id[40];
    new_epoch_id(id, sizeof(id));
    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    json_t *j = json_pack("{s:s, s:I, s:s, s:s?}", "epoch", id, "base_seq",
                          (json_int_t)base_seq, "created_at", ts, "from_backup",
                          from_backup);
    char *path = moat_xasprintf("%s/%s", data_dir, MOAT_EPOCH_FILE);
    int rc = write_json(path, j);
    free(path);
    json_decref(j);
    if (rc == MOAT_OK && epoch)
        snprintf(epoch, len, "%s", id);
    return rc;
}

int moat_epoch_load(const char *data_dir, char *epoch, size_t len,
                    int64_t *base_seq)
{
    char *path = moat_xasprintf("%s/%s", data_dir, MOAT_EPOCH_FILE);
    json_t *j = load_json(path, EPOCH_MAX);
    int rc = MOAT_OK;
    if (!j && errno == ENOENT) {
        rc = moat_epoch_new(data_dir, 0, NULL, epoch, len);
        *base_seq = 0;
    } else {
        const char *id = json_string_value(json_object_get(j, "epoch"));
        json_t *b = json_object_get(j, "base_seq");
        if (!id || !json_is_integer(b)) {
            moat_log(MOAT_LOG_ERROR, "malformed feed epoch file", "{s:s}",
                     "path", path);
            rc = MOAT_EIO;
        } else {
            snprintf(epoch, len, "%s", id);
            *base_seq = json_integer_value(b);
        }
    }
    json_decref(j);
    free(path);
    return rc;
}

static char *seen_path(const char *dir, const char *source)
{
    return moat_xasprintf("%s/%s.json", dir, source);
}

int moat_epoch_accepted(const char *dir, const char *source, char *epoch,
                        size_t len)
{
    epoch[0] = '\0';
    char *path = seen_path(dir, source);
    json_t *j = load_json(path, EPOCH_MAX);
    free(path);
    const char *id = json_string_value(json_object_get(j, "epoch"));
    if (id)
        snprintf(epoch, len, "%s", id);
    json_decref(j);
    return MOAT_OK;
}

/* Read-modify-write of dir/source.json. */
static int seen_update(const char *dir, const char *source, const char *epoch,
                       int64_t base_seq, json_t *rewind)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return MOAT_EIO;
    char *path = seen_path(dir, source);
    json_t *j = load_json(path, EPOCH_MAX);
    if (!json_is_object(j)) {
        json_decref(j);
        j = json_object();
    }
    json_t *rewinds = json_object_get(j, "rewinds");
    if (!json_is_array(rewinds)) {
        rewinds = json_array();
        json_object_set_new(j, "rewinds", rewinds);
    }
    if (epoch) {
        json_object_set_new(j, "epoch", json_string(epoch));
        json_object_set_new(j, "base_seq", json_integer(base_seq));
    }
    if (rewind) {
        /* The same rewind noticed again (the cursor move did not stick)
         * replaces the record instead of doubling it. */
        json_t *last = json_array_get(rewinds, json_array_size(rewinds) - 1);
        const char *ne =
            json_string_value(json_object_get(rewind, "new_epoch"));
        if (last && ne &&
            strcmp(json_string_value(json_object_get(last, "new_epoch")) ?: "",
                   ne) == 0)
            json_array_remove(rewinds, json_array_size(rewinds) - 1);
        json_array_append(rewinds, rewind);
        while (json_array_size(rewinds) > MOAT_EPOCH_MAX_REWINDS)
            json_array_remove(rewinds, 0);
    }
    int rc = write_json(path, j);
    json_decref(j);
    free(path);
    return rc;
}

int moat_epoch_accept(const char *dir, const char *source, const char *epoch,
                      int64_t base_seq)
{
    return seen_update(dir, source, epoch, base_seq, NULL);
}

int moat_epoch_note_rewind(const char *dir, const char *source,
                           const char *old_epoch, const char *new_epoch,
                           int64_t from_seq, int64_t to_seq)
{
    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    json_t *r = json_pack("{s:s, s:s, s:s, s:I, s:I}", "at", ts, "old_epoch",
                          old_epoch, "new_epoch", new_epoch, "from_seq",
                          (json_int_t)from_seq, "to_seq", (json_int_t)to_seq);
    int rc = seen_update(dir, source, NULL, 0, r);
    json_decref(r);
    return rc;
}

static void handle_epochs(struct moat_req *req, void *arg)
{
    (void)arg;
    if (!operator_only(req))
        return;
    const char *data_dir = store.svc->cfg.data_dir;
    char *own = moat_xasprintf("%s/%s", data_dir, MOAT_EPOCH_FILE);
    json_t *epoch = load_json(own, EPOCH_MAX);
    free(own);
    json_t *sources = json_array();
    char *dir = moat_xasprintf("%s/%s", data_dir, MOAT_EPOCH_DIR);
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        size_t len = strlen(name);
        if (name[0] != '.' && len > 5 && strcmp(name + len - 5, ".json") == 0) {
            char *p = moat_xasprintf("%s/%s", dir, name);
            json_t *j = load_json(p, EPOCH_MAX);
            if (json_is_object(j)) {
                json_object_set_new(j, "source", json_stringn(name, len - 5));
                json_array_append(sources, j);
            }
            json_decref(j);
            free(p);
        }
        free(names[i]);
    }
    free(names);
    free(dir);
    moat_req_reply_json(req, 200,
                        json_pack("{s:o, s:o}", "epoch",
                                  epoch ? epoch : json_null(), "sources",
                                  sources));
}

/* ---- the skeleton's part ---- */

int moat_backup_serve(struct moat_service *svc)
{
    /* An external stand-in (the card processor) is not moat's to back
     * up, and has no operator identity to guard the route with. */
    if (!svc->cfg.data_dir || svc->def->external)
        return MOAT_OK;
    store.svc = svc;
    if (moat_epoch_load(svc->cfg.data_dir, store.epoch, sizeof(store.epoch),
                        &store.epoch_base) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot read or create the feed epoch",
                 "{s:s}", "data_dir", svc->cfg.data_dir);
        return MOAT_EIO;
    }
    store.have_epoch = true;
    moat_feed_set_epoch(store.epoch, store.epoch_base);
    moat_http_route(svc->http, MOAT_POST, "/v1/admin/backup", handle_backup,
                    NULL);
    moat_http_route(svc->http, MOAT_GET, "/v1/admin/feed-epochs", handle_epochs,
                    NULL);
    return MOAT_OK;
}

char *moat_epoch_dir(const struct moat_service *svc)
{
    return svc->cfg.data_dir
               ? moat_xasprintf("%s/%s", svc->cfg.data_dir, MOAT_EPOCH_DIR)
               : NULL;
}
