/*
 * test_kv.c - lib/kv.c: an LMDB environment in a temporary directory:
 * modes, one open per environment, sub-databases, write and read
 * transactions, the data helpers, iteration order, migrations, a full
 * map, and the timings in the metrics registry.
 *
 * Run one test alone: tests/unit_test_kv test_migrations
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/buf.h"
#include "moat/kv.h"
#include "moat/log.h"

struct fixture {
    char dir[64];
    char *env_dir; /* dir/env.lmdb, created by moat_kv_open */
    struct moat_metrics *metrics;
    struct moat_kv *kv;
};

static int setup(void **state)
{
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-kv-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->env_dir = moat_xasprintf("%s/env.lmdb", f->dir);
    f->metrics = moat_metrics_new();
    assert_int_equal(moat_kv_open(&f->kv, f->env_dir, 0, f->metrics), MOAT_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    moat_kv_close(f->kv);
    moat_metrics_free(f->metrics);
    char *cmd = moat_xasprintf("rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(f->env_dir);
    free(f);
    return 0;
}

/* Close and open again (a restart), with the same registry. */
static void reopen(struct fixture *f, size_t mapsize)
{
    moat_kv_close(f->kv);
    f->kv = NULL;
    assert_int_equal(moat_kv_open(&f->kv, f->env_dir, mapsize, f->metrics),
                     MOAT_OK);
}

static struct moat_kv_db *db(struct fixture *f, const char *name)
{
    struct moat_kv_db *d = NULL;
    assert_int_equal(moat_kv_db(f->kv, name, &d), MOAT_OK);
    assert_non_null(d);
    return d;
}

static void put_str(struct fixture *f, struct moat_kv_db *d, const char *k,
                    const char *v)
{
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_puts(t, d, k, v, strlen(v), 0), MOAT_OK);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
}

/* The value of k as a new string, or NULL when there is none. */
static char *get_str(struct fixture *f, struct moat_kv_db *d, const char *k)
{
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin_read(f->kv, &t), MOAT_OK);
    const void *v;
    size_t n;
    int rc = moat_kv_gets(t, d, k, &v, &n);
    char *out = rc == MOAT_OK ? moat_xstrndup(v, n) : NULL;
    if (rc != MOAT_OK)
        assert_int_equal(rc, MOAT_ENOTFOUND);
    moat_kv_abort(t);
    return out;
}

static void assert_value(struct fixture *f, struct moat_kv_db *d, const char *k,
                         const char *want)
{
    char *got = get_str(f, d, k);
    if (!want) {
        assert_null(got);
        return;
    }
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void assert_mode(const char *path, unsigned want)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    if ((st.st_mode & 0777) != want)
        fail_msg("%s: mode %04o, want %04o", path, st.st_mode & 0777, want);
}

/* ---- tests ---- */

static void test_layout_and_modes(void **state)
{
    struct fixture *f = *state;
    assert_mode(f->env_dir, 0700);
    char *data = moat_xasprintf("%s/data.mdb", f->env_dir);
    char *lock = moat_xasprintf("%s/lock.mdb", f->env_dir);
    assert_mode(data, 0600);
    assert_mode(lock, 0600);
    assert_string_equal(moat_kv_path(f->kv), f->env_dir);

    /* Files loosened by hand are tightened at the next open. */
    assert_int_equal(chmod(data, 0644), 0);
    assert_int_equal(chmod(f->env_dir, 0755), 0);
    reopen(f, 0);
    assert_mode(f->env_dir, 0700);
    assert_mode(data, 0600);
    free(data);
    free(lock);
}

static void test_one_open_per_environment(void **state)
{
    struct fixture *f = *state;
    struct moat_kv *again = NULL;
    assert_int_equal(moat_kv_open(&again, f->env_dir, 0, NULL), MOAT_EBUSY);
    assert_null(again);

    /* Not a directory: a configuration mistake. */
    char *file = moat_xasprintf("%s/file", f->dir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(moat_kv_open(&again, file, 0, NULL), MOAT_EINVAL);
    free(file);
    /* A map too small to be meant. */
    char *other = moat_xasprintf("%s/other", f->dir);
    assert_int_equal(moat_kv_open(&again, other, 4096, NULL), MOAT_EINVAL);
    free(other);
}

static void test_put_get_del(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "things");
    put_str(f, d, "a", "alpha");
    assert_value(f, d, "a", "alpha");
    assert_value(f, d, "b", NULL);

    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_ptr_equal(moat_kv_write_txn(f->kv), t);
    assert_true(moat_kv_txn_is_write(t));
    /* NOOVERWRITE is a conflict, and does not spoil the transaction. */
    assert_int_equal(moat_kv_puts(t, d, "a", "x", 1, MOAT_KV_NOOVERWRITE),
                     MOAT_ECONFLICT);
    assert_int_equal(moat_kv_puts(t, d, "b", "beta", 4, 0), MOAT_OK);
    /* A write transaction sees its own writes. */
    const void *v;
    size_t n;
    assert_int_equal(moat_kv_gets(t, d, "b", &v, &n), MOAT_OK);
    assert_int_equal(n, 4);
    assert_int_equal(moat_kv_dels(t, d, "a"), MOAT_OK);
    assert_int_equal(moat_kv_dels(t, d, "a"), MOAT_ENOTFOUND);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
    assert_null(moat_kv_write_txn(f->kv));
    assert_value(f, d, "a", NULL);
    assert_value(f, d, "b", "beta");

    /* Binary keys (with a NUL inside) and an empty value. */
    const unsigned char bkey[3] = {0x00, 0xff, 0x10};
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_put(t, d, bkey, sizeof(bkey), NULL, 0, 0),
                     MOAT_OK);
    assert_int_equal(moat_kv_get(t, d, bkey, sizeof(bkey), &v, &n), MOAT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);

    /* Bad keys are refused before LMDB sees them. */
    char big[MOAT_KV_MAX_KEY + 1];
    memset(big, 'k', sizeof(big));
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_put(t, d, big, sizeof(big), "v", 1, 0),
                     MOAT_EINVAL);
    assert_int_equal(moat_kv_put(t, d, big, MOAT_KV_MAX_KEY, "v", 1, 0),
                     MOAT_OK);
    assert_int_equal(moat_kv_put(t, d, "", 0, "v", 1, 0), MOAT_EINVAL);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
}

static void test_abort_and_transactions(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "things");
    put_str(f, d, "k", "v1");

    struct moat_kv_txn *t, *t2, *r;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    /* One writer: a nested begin is refused, not a deadlock. */
    assert_int_equal(moat_kv_begin(f->kv, &t2), MOAT_EINVAL);
    assert_int_equal(moat_kv_puts(t, d, "k", "v2", 2, 0), MOAT_OK);
    /* A reader meanwhile sees the committed snapshot only. */
    assert_int_equal(moat_kv_begin_read(f->kv, &r), MOAT_OK);
    const void *v;
    size_t n;
    assert_int_equal(moat_kv_gets(r, d, "k", &v, &n), MOAT_OK);
    assert_memory_equal(v, "v1", 2);
    /* Writing through a read transaction is refused. */
    assert_int_equal(moat_kv_puts(r, d, "z", "z", 1, 0), MOAT_EINVAL);
    moat_kv_abort(t);
    assert_null(moat_kv_write_txn(f->kv));
    assert_int_equal(moat_kv_gets(r, d, "k", &v, &n), MOAT_OK);
    assert_memory_equal(v, "v1", 2);
    moat_kv_abort(r);
    assert_value(f, d, "k", "v1");

    /* Sub-databases are opened at start only, not inside a write. */
    struct moat_kv_db *late = NULL;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_db(f->kv, "late", &late), MOAT_EINVAL);
    moat_kv_abort(t);
    assert_int_equal(moat_kv_db(f->kv, "meta", &late), MOAT_EINVAL);
    assert_int_equal(moat_kv_db(f->kv, "", &late), MOAT_EINVAL);
    /* The same name, the same handle. */
    assert_ptr_equal(db(f, "things"), d);
}

/* A nested transaction is a savepoint: its writes join its parent's on
 * commit or vanish alone on abort; while open it is the write
 * transaction; ending the parent ends it too. */
static void test_nested_transactions(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "things");
    struct moat_kv_txn *t, *c, *c2, *r;
    assert_int_equal(moat_kv_begin_read(f->kv, &r), MOAT_OK);
    assert_int_equal(moat_kv_begin_nested(r, &c), MOAT_EINVAL);
    moat_kv_abort(r);

    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_puts(t, d, "a", "1", 1, 0), MOAT_OK);
    assert_int_equal(moat_kv_begin_nested(t, &c), MOAT_OK);
    assert_ptr_equal(moat_kv_write_txn(f->kv), c);
    assert_int_equal(moat_kv_begin_nested(t, &c2), MOAT_EINVAL);
    assert_int_equal(moat_kv_begin(f->kv, &c2), MOAT_EINVAL);
    assert_int_equal(moat_kv_puts(c, d, "b", "2", 1, 0), MOAT_OK);
    moat_kv_abort(c); /* b alone is gone */
    assert_ptr_equal(moat_kv_write_txn(f->kv), t);
    assert_int_equal(moat_kv_begin_nested(t, &c), MOAT_OK);
    assert_int_equal(moat_kv_puts(c, d, "c", "3", 1, 0), MOAT_OK);
    assert_int_equal(moat_kv_commit(c), MOAT_OK);
    const void *v;
    size_t n;
    assert_int_equal(moat_kv_gets(t, d, "c", &v, &n), MOAT_OK);
    assert_value(f, d, "c", NULL); /* nothing on disk before the parent */
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
    assert_null(moat_kv_write_txn(f->kv));
    assert_value(f, d, "a", "1");
    assert_value(f, d, "b", NULL);
    assert_value(f, d, "c", "3");

    /* Aborting the parent with a child open drops both. */
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_begin_nested(t, &c), MOAT_OK);
    assert_int_equal(moat_kv_puts(c, d, "d", "4", 1, 0), MOAT_OK);
    moat_kv_abort(t);
    assert_null(moat_kv_write_txn(f->kv));
    assert_value(f, d, "d", NULL);
    /* Committing it with a child open is refused and drops both. */
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_begin_nested(t, &c), MOAT_OK);
    assert_int_equal(moat_kv_puts(c, d, "e", "5", 1, 0), MOAT_OK);
    assert_int_equal(moat_kv_commit(t), MOAT_EINVAL);
    assert_null(moat_kv_write_txn(f->kv));
    assert_value(f, d, "e", NULL);
}

static void test_survives_reopen(void **state)
{
    struct fixture *f = *state;
    put_str(f, db(f, "things"), "k", "kept");
    reopen(f, 0);
    assert_value(f, db(f, "things"), "k", "kept");
}

struct collected {
    char keys[16][16];
    size_t n;
    size_t stop_after;
};

static int collect(const void *key, size_t klen, const void *val, size_t vlen,
                   void *arg)
{
    struct collected *c = arg;
    snprintf(c->keys[c->n], sizeof(c->keys[0]), "%.*s", (int)klen,
             (const char *)key);
    c->n++;
    return c->n == c->stop_after ? MOAT_KV_STOP : MOAT_KV_NEXT;
}

static int fail_at_second(const void *key, size_t klen, const void *val,
                          size_t vlen, void *arg)
{
    int *seen = arg;
    return ++*seen == 2 ? MOAT_EIO : MOAT_KV_NEXT;
}

static void test_iterate_in_key_order(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "things");
    /* Before the read below: a transaction does not see sub-databases
     * opened after it began. */
    struct moat_kv_db *empty = db(f, "empty");
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    static const char *const keys[] = {"m", "b", "z", "ba", "a"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(keys); i++)
        assert_int_equal(moat_kv_puts(t, d, keys[i], "1", 1, 0), MOAT_OK);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);

    assert_int_equal(moat_kv_begin_read(f->kv, &t), MOAT_OK);
    struct collected c = {0};
    assert_int_equal(moat_kv_iterate(t, d, NULL, 0, collect, &c), MOAT_OK);
    assert_int_equal(c.n, 5);
    static const char *const sorted[] = {"a", "b", "ba", "m", "z"};
    for (size_t i = 0; i < 5; i++)
        assert_string_equal(c.keys[i], sorted[i]);

    /* From a key that is not there: the next one up; and a stop. */
    memset(&c, 0, sizeof(c));
    c.stop_after = 2;
    assert_int_equal(moat_kv_iterate(t, d, "bb", 2, collect, &c), MOAT_OK);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.keys[0], "m");
    assert_string_equal(c.keys[1], "z");

    int seen = 0;
    assert_int_equal(moat_kv_iterate(t, d, NULL, 0, fail_at_second, &seen),
                     MOAT_EIO);
    assert_int_equal(seen, 2);

    const void *k;
    size_t kl;
    assert_int_equal(moat_kv_last(t, d, &k, &kl, NULL, NULL), MOAT_OK);
    assert_int_equal(kl, 1);
    assert_memory_equal(k, "z", 1);
    uint64_t count = 0;
    assert_int_equal(moat_kv_count(t, d, &count), MOAT_OK);
    assert_int_equal(count, 5);
    assert_int_equal(moat_kv_last(t, empty, &k, &kl, NULL, NULL),
                     MOAT_ENOTFOUND);
    moat_kv_abort(t);
}

static void test_u64_keys_sort_as_numbers(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "seq");
    static const uint64_t nums[] = {256, 1, 65536, 255, UINT64_MAX};
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(nums); i++) {
        unsigned char k[8];
        moat_kv_u64_key(nums[i], k);
        assert_int_equal(moat_kv_u64_from_key(k), nums[i]);
        assert_int_equal(moat_kv_put(t, d, k, 8, "", 0, 0), MOAT_OK);
    }
    /* APPEND past the last key is fine; before it is refused. */
    unsigned char low[8];
    moat_kv_u64_key(2, low);
    assert_int_not_equal(moat_kv_put(t, d, low, 8, "", 0, MOAT_KV_APPEND),
                         MOAT_OK);
    moat_kv_abort(t);

    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(nums); i++) {
        unsigned char k[8];
        moat_kv_u64_key(nums[i], k);
        assert_int_equal(moat_kv_put(t, d, k, 8, "", 0, 0), MOAT_OK);
    }
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
    assert_int_equal(moat_kv_begin_read(f->kv, &t), MOAT_OK);
    const void *k;
    size_t kl;
    assert_int_equal(moat_kv_last(t, d, &k, &kl, NULL, NULL), MOAT_OK);
    assert_int_equal(moat_kv_u64_from_key(k), UINT64_MAX);
    moat_kv_abort(t);
}

static void test_json_values(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "docs");
    json_t *doc = json_pack("{s:I, s:s}", "n", (json_int_t)INT64_MAX, "s",
                            "\xc3\xa9t\xc3\xa9");
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_put_json(t, d, "d", 1, doc, 0), MOAT_OK);
    assert_int_equal(moat_kv_puts(t, d, "bad", "{nope", 5, 0), MOAT_OK);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
    assert_int_equal(moat_kv_begin_read(f->kv, &t), MOAT_OK);
    json_t *got = NULL;
    assert_int_equal(moat_kv_get_json(t, d, "d", 1, &got), MOAT_OK);
    assert_true(json_equal(got, doc));
    json_decref(got);
    assert_int_equal(moat_kv_get_json(t, d, "bad", 3, &got), MOAT_EDB);
    assert_int_equal(moat_kv_get_json(t, d, "none", 4, &got), MOAT_ENOTFOUND);
    moat_kv_abort(t);
    json_decref(doc);
}

static int mig_one(struct moat_kv_txn *t, void *arg)
{
    struct moat_kv_db *d = arg;
    return moat_kv_puts(t, d, "from-1", "1", 1, 0);
}

static int mig_two(struct moat_kv_txn *t, void *arg)
{
    struct moat_kv_db *d = arg;
    return moat_kv_puts(t, d, "from-2", "2", 1, 0);
}

static int mig_fails(struct moat_kv_txn *t, void *arg)
{
    struct moat_kv_db *d = arg;
    assert_int_equal(moat_kv_puts(t, d, "from-3", "3", 1, 0), MOAT_OK);
    return MOAT_EINVAL;
}

static void test_migrations(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "things");
    int v = -1;
    assert_int_equal(moat_kv_schema_version(f->kv, &v), MOAT_OK);
    assert_int_equal(v, 0);

    const struct moat_kv_migration m[] = {
        {1, "first", mig_one},
        {2, "second", mig_two},
        {3, "broken", mig_fails},
    };
    assert_int_equal(moat_kv_migrate(f->kv, m, 2, d), MOAT_OK);
    assert_int_equal(moat_kv_schema_version(f->kv, &v), MOAT_OK);
    assert_int_equal(v, 2);
    assert_value(f, d, "from-1", "1");
    assert_value(f, d, "from-2", "2");

    /* Applied ones do not run again: delete a mark and migrate again. */
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    assert_int_equal(moat_kv_dels(t, d, "from-1"), MOAT_OK);
    assert_int_equal(moat_kv_commit(t), MOAT_OK);
    assert_int_equal(moat_kv_migrate(f->kv, m, 2, d), MOAT_OK);
    assert_value(f, d, "from-1", NULL);

    /* A failing one is rolled back whole and leaves the version. */
    assert_int_equal(moat_kv_migrate(f->kv, m, 3, d), MOAT_EINVAL);
    assert_value(f, d, "from-3", NULL);
    assert_int_equal(moat_kv_schema_version(f->kv, &v), MOAT_OK);
    assert_int_equal(v, 2);

    /* Newer than the code: refused. Misnumbered: refused. */
    assert_int_equal(moat_kv_migrate(f->kv, m, 1, d), MOAT_ECONFLICT);
    const struct moat_kv_migration bad[] = {{2, "skips one", mig_one}};
    assert_int_equal(moat_kv_migrate(f->kv, bad, 1, d), MOAT_EINVAL);

    /* The version survives a restart. */
    reopen(f, 0);
    assert_int_equal(moat_kv_schema_version(f->kv, &v), MOAT_OK);
    assert_int_equal(v, 2);
}

static void test_map_full_is_etoobig(void **state)
{
    struct fixture *f = *state;
    reopen(f, (size_t)1 << 20);
    struct moat_kv_db *d = db(f, "big");
    char *val = moat_xmalloc(64 << 10);
    memset(val, 'x', 64 << 10);
    struct moat_kv_txn *t;
    assert_int_equal(moat_kv_begin(f->kv, &t), MOAT_OK);
    int rc = MOAT_OK;
    for (int i = 0; i < 64 && rc == MOAT_OK; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%03d", i);
        rc = moat_kv_puts(t, d, key, val, 64 << 10, 0);
    }
    assert_int_equal(rc, MOAT_ETOOBIG);
    /* The transaction is spoilt: commit refuses and rolls back. */
    assert_int_equal(moat_kv_commit(t), MOAT_EDB);
    assert_null(moat_kv_write_txn(f->kv));
    /* The environment still works for writes that fit. */
    put_str(f, d, "small", "ok");
    assert_value(f, d, "small", "ok");
    free(val);
}

static void test_metrics(void **state)
{
    struct fixture *f = *state;
    struct moat_kv_db *d = db(f, "things");
    put_str(f, d, "k", "v");
    char *v = get_str(f, d, "k");
    free(v);
    struct moat_buf out = MOAT_BUF_INIT;
    moat_metrics_render(f->metrics, &out);
    const char *text = moat_buf_str(&out);
    static const char *const want[] = {
        "moat_kv_op_duration_seconds_count{op=\"put\"} 1\n",
        "moat_kv_op_duration_seconds_count{op=\"get\"} 1\n",
        "moat_kv_op_duration_seconds_count{op=\"commit\"} 1\n",
        "moat_kv_map_size_bytes 268435456\n",
        "moat_kv_used_bytes ",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++)
        if (!strstr(text, want[i]))
            fail_msg("'%s' not in the metrics:\n%s", want[i], text);
    moat_buf_release(&out);
}

int main(int argc, char **argv)
{
    /* One test alone: pass its name (a glob). */
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    moat_log_init("test", MOAT_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_layout_and_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_open_per_environment, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_put_get_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_and_transactions, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_nested_transactions, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_survives_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iterate_in_key_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_u64_keys_sort_as_numbers, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_json_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_full_is_etoobig, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
