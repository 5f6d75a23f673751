/*
 * Backups per service, end to end under `moat up` (the repository's
 * moat.json on free ports): while `moat chaos` places orders (no faults),
 * `moat backup` copies orders (SQLite) and inventory (LMDB) from the
 * running services; `moat backup verify` accepts the copies and refuses a
 * corrupted one; the manifest's checksums are those sha256sum computes.
 * Once the load is over, `moat restore orders` puts the backup back: the
 * orders and the outbox are exactly the backup's (the orders placed after
 * it are gone), the feed has a new epoch based on the backup's outbox
 * head, and its consumers (inventory on LMDB, payments and notifications
 * on SQLite), whose cursors were beyond it, record the rewind.
 * inventory and payments come back from their backups too. orders keeps
 * its newest 3 backups (the retention); payments has "backup": {"every":
 * "10s"}: the supervisor backs it up by itself.
 */
#include "moat/common.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "moat/buf.h"

#define MIN_BACKUP_HEAD 30 /* orders' events in the backup, at least */

static struct {
    char *dir;
    char file[512];
    char gw_url[64];
    pid_t up_pid;
} dep;

static uint64_t t0;
#define STAGE(what)                                                            \
    fprintf(stderr, "%6.1f s  %s\n", (moat_mono_ms() - t0) / 1000.0, (what))

static int setup(void **state)
{
    MOAT_UNUSED(state);
    dep.dir = h_tmpdir_new("backup");
    snprintf(dep.file, sizeof(dep.file), "%s/moat.json", dep.dir);
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    h_moat_down(&dep.up_pid);
    h_kill_all();
    h_rmtree(dep.dir);
    free(dep.dir);
    return 0;
}

/* Run a shell command; its output (stdout and stderr) into out. */
static int run(struct moat_buf *out, const char *cmd)
{
    moat_buf_reset(out);
    FILE *p = popen(h_fmt("%s 2>&1", cmd), "r");
    assert_non_null(p);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        moat_buf_add(out, chunk, n);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *moat_cmd(const char *args)
{
    return h_fmt("%s/moat %s --file %s", MOAT_BIN_DIR, args, dep.file);
}

/* `moat backup SERVICE`: the new backup's directory (caller frees). */
static char *take_backup(const char *service)
{
    struct moat_buf out = MOAT_BUF_INIT;
    int rc = run(&out, moat_cmd(h_fmt("backup %s", service)));
    if (rc != 0)
        fprintf(stderr, "%s", moat_buf_str(&out));
    assert_int_equal(rc, 0);
    /* "orders: var/backups/orders/<id>" (relative to the cwd or not). */
    const char *p = strstr(moat_buf_str(&out), ": ");
    assert_non_null(p);
    char *dir = moat_xstrndup(p + 2, strcspn(p + 2, "\n"));
    if (dir[0] != '/') {
        char cwd[1024];
        assert_non_null(getcwd(cwd, sizeof(cwd)));
        char *abs = moat_xasprintf("%s/%s", cwd, dir);
        free(dir);
        dir = abs;
    }
    moat_buf_release(&out);
    return dir;
}

static json_t *manifest(const char *dir)
{
    json_t *m = json_load_file(h_fmt("%s/manifest.json", dir), 0, NULL);
    assert_non_null(m);
    return m;
}

/* The rows of sql in the SQLite file at path, one "a|b" line each. */
static char *rows(const char *path, const char *sql)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
    struct moat_buf b = MOAT_BUF_INIT;
    while (sqlite3_step(st) == SQLITE_ROW) {
        for (int c = 0; c < sqlite3_column_count(st); c++)
            moat_buf_printf(&b, "%s%s", c ? "|" : "",
                            (const char *)sqlite3_column_text(st, c));
        moat_buf_addch(&b, '\n');
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    return moat_buf_detach(&b, NULL);
}

/* payments: "backup": {"every": "10s"} (keeping enough that the one the
 * test takes stays); orders keeps 3 of the many the test takes. */
static void backup_settings(void)
{
    json_t *d = json_load_file(dep.file, 0, NULL);
    assert_non_null(d);
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(d, "services"), i, s)
    {
        if (strcmp(h_jstr(s, "name"), "payments") == 0)
            json_object_set_new(
                s, "backup",
                json_pack("{s:s, s:i}", "every", "10s", "keep", 50));
        if (strcmp(h_jstr(s, "name"), "orders") == 0)
            json_object_set_new(
                s, "backup", json_pack("{s:s, s:i}", "every", "1h", "keep", 3));
    }
    assert_int_equal(json_dump_file(d, dep.file, JSON_INDENT(2)), 0);
    json_decref(d);
}

static bool payments_backed_up(void *arg)
{
    MOAT_UNUSED(arg);
    struct moat_buf out = MOAT_BUF_INIT;
    run(&out, moat_cmd("backup list payments"));
    bool yes = strstr(moat_buf_str(&out), "/backups/payments/") != NULL;
    moat_buf_release(&out);
    return yes;
}

static const char *rewound_epoch; /* for rewound */

/* Consumer arg (a service name) of orders' feed accepted the new epoch
 * after recording a rewind to it. */
static bool rewound(void *arg)
{
    json_t *j = json_load_file(
        h_fmt("%s/var/%s/feed-epochs/orders.json", dep.dir, (const char *)arg),
        0, NULL);
    json_t *last =
        json_array_get(json_object_get(j, "rewinds"),
                       json_array_size(json_object_get(j, "rewinds")) - 1);
    bool yes = last && strcmp(h_jstr(last, "new_epoch"), rewound_epoch) == 0 &&
               strcmp(h_jstr(j, "epoch"), rewound_epoch) == 0;
    json_decref(j);
    return yes;
}

static void test_backup_restore(void **state)
{
    MOAT_UNUSED(state);
    h_deployment_write_free_ports(MOAT_SOURCE_DIR "/moat.json", dep.file,
                                  "backup", dep.gw_url, sizeof(dep.gw_url));
    backup_settings();
    t0 = moat_mono_ms();
    STAGE("start");
    dep.up_pid = h_moat_up(dep.file, dep.dir, dep.gw_url);
    assert_true(dep.up_pid > 0);
    STAGE("up");

    /* Load: orders placed at 10/s for 12 s, no faults. */
    FILE *chaos =
        popen(h_fmt("%s 2>&1", moat_cmd("chaos --setup --duration 12 --rate 10 "
                                        "--kill-interval-ms 0 --settle 40")),
              "r");
    assert_non_null(chaos);

    /* Back orders up while they are placed, until the copy holds some. */
    char *dir = NULL;
    json_t *m = NULL;
    struct h_waiter w;
    int taken = 0;
    for (h_wait_begin(&w, 30000); h_wait_next(&w); taken++) {
        free(dir);
        json_decref(m);
        dir = take_backup("orders");
        m = manifest(dir);
        if (h_jint(json_object_get(m, "outbox"), "head") >= MIN_BACKUP_HEAD)
            break;
    }
    json_int_t head = h_jint(json_object_get(m, "outbox"), "head");
    assert_true(head >= MIN_BACKUP_HEAD);
    /* Retention: the newest 3, the last one among them. */
    struct moat_buf out = MOAT_BUF_INIT;
    assert_int_equal(run(&out, moat_cmd("backup list orders")), 0);
    int listed = 0;
    for (const char *p = moat_buf_str(&out); (p = strchr(p, '\n')); p++)
        listed++;
    assert_int_equal(listed, taken + 1 < 3 ? taken + 1 : 3);
    assert_non_null(strstr(moat_buf_str(&out), dir));
    STAGE("orders backed up during the load");
    assert_string_equal(h_jstr(m, "engine"), "sqlite");
    assert_non_null(
        json_object_get(json_object_get(m, "cursors"), "inventory"));
    char *inv = take_backup("inventory");
    json_t *im = manifest(inv);
    assert_string_equal(h_jstr(im, "engine"), "lmdb");
    assert_true(h_jint(json_object_get(im, "cursors"), "orders") > 0);
    char *pay = take_backup("payments");

    /* verify accepts both; the checksums are sha256sum's. */
    assert_int_equal(run(&out, moat_cmd(h_fmt("backup verify %s", dir))), 0);
    assert_non_null(strstr(moat_buf_str(&out), "ok: "));
    assert_int_equal(run(&out, moat_cmd(h_fmt("backup verify %s", inv))), 0);
    json_t *files = json_object_get(m, "files");
    assert_int_equal(json_array_size(files), 1);
    const char *dbname = h_jstr(json_array_get(files, 0), "name");
    assert_int_equal(run(&out, h_fmt("sha256sum %s/%s", dir, dbname)), 0);
    assert_memory_equal(moat_buf_str(&out),
                        h_jstr(json_array_get(files, 0), "sha256"), 64);

    /* A corrupted copy and a manifest that lies are both refused. */
    char *bad = moat_xasprintf("%s/bad", dep.dir);
    assert_int_equal(run(&out, h_fmt("cp -r %s %s && printf 'X' | dd "
                                     "of=%s/%s bs=1 seek=5000 conv=notrunc",
                                     dir, bad, bad, dbname)),
                     0);
    assert_int_equal(run(&out, moat_cmd(h_fmt("backup verify %s", bad))), 1);
    assert_non_null(strstr(moat_buf_str(&out), "sha256"));
    json_t *lie = manifest(dir);
    json_object_set_new(json_object_get(lie, "outbox"), "head",
                        json_integer(head + 1));
    assert_int_equal(run(&out, h_fmt("rm -r %s && cp -r %s %s", bad, dir, bad)),
                     0);
    assert_int_equal(json_dump_file(lie, h_fmt("%s/manifest.json", bad), 0), 0);
    json_decref(lie);
    assert_int_equal(run(&out, moat_cmd(h_fmt("backup verify %s", bad))), 1);
    assert_non_null(strstr(moat_buf_str(&out), "outbox head"));
    STAGE("verify checked");

    /* The load ends and audits clean before anything is restored. */
    struct moat_buf report = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), chaos)) > 0)
        moat_buf_add(&report, chunk, n);
    int st = pclose(chaos);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fputs(moat_buf_str(&report), stderr);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    moat_buf_release(&report);
    STAGE("load over, audited");

    char *live = moat_xasprintf("%s/var/orders/orders.db", dep.dir);
    char *backup_db = moat_xasprintf("%s/%s", dir, dbname);
    static const char orders_sql[] = "SELECT id FROM orders ORDER BY id";
    char *outbox_sql = moat_xasprintf(
        "SELECT seq, id FROM moat_outbox WHERE seq <= %lld ORDER BY seq",
        (long long)head);
    char *in_backup = rows(backup_db, orders_sql);
    char *before = rows(live, orders_sql);
    assert_true(strlen(before) > strlen(in_backup)); /* placed after it */

    /* Restore orders: the orders and the events are the backup's. */
    int rc = run(&out, moat_cmd(h_fmt("restore orders --from %s", dir)));
    if (rc != 0)
        fprintf(stderr, "%s", moat_buf_str(&out));
    assert_int_equal(rc, 0);
    STAGE("restored");
    char *after = rows(live, orders_sql);
    assert_string_equal(after, in_backup);
    char *ev_live = rows(live, outbox_sql);
    char *ev_backup = rows(backup_db, outbox_sql);
    assert_string_equal(ev_live, ev_backup);

    /* A new feed epoch based on the backup's head; inventory rewound. */
    json_t *epoch =
        json_load_file(h_fmt("%s/var/orders/feed.epoch", dep.dir), 0, NULL);
    assert_non_null(epoch);
    assert_int_equal(h_jint(epoch, "base_seq"), head);
    assert_string_equal(h_jstr(epoch, "from_backup"), h_jstr(m, "id"));
    rewound_epoch = h_jstr(epoch, "epoch");
    /* LMDB (inventory) and SQLite (payments, notifications) consumers. */
    static const char *const consumers[] = {"inventory", "payments",
                                            "notifications"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(consumers); i++)
        if (!h_wait_until(rewound, (void *)consumers[i], 20000))
            fail_msg("%s did not record the rewind of orders", consumers[i]);
    STAGE("consumers rewound");

    /* inventory (LMDB) and payments (SQLite beside its audit log) come
     * back from their backups too, each with a new epoch at its head. */
    static const char *const others[] = {"inventory", "payments"};
    const char *other_dirs[] = {inv, pay};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(others); i++) {
        rc = run(&out, moat_cmd(h_fmt("restore %s --from %s", others[i],
                                      other_dirs[i])));
        if (rc != 0)
            fprintf(stderr, "%s", moat_buf_str(&out));
        assert_int_equal(rc, 0);
        json_t *om = manifest(other_dirs[i]);
        json_t *oe = json_load_file(
            h_fmt("%s/var/%s/feed.epoch", dep.dir, others[i]), 0, NULL);
        assert_int_equal(h_jint(oe, "base_seq"),
                         h_jint(json_object_get(om, "outbox"), "head"));
        json_decref(oe);
        json_decref(om);
    }
    STAGE("inventory and payments restored");

    /* The supervisor's own cadence backed payments up. */
    assert_true(h_wait_until(payments_backed_up, NULL, 30000));
    STAGE("payments backed up by the supervisor");

    json_decref(epoch);
    free(after);
    free(ev_live);
    free(ev_backup);
    free(before);
    free(in_backup);
    free(outbox_sql);
    free(backup_db);
    free(live);
    free(bad);
    moat_buf_release(&out);
    json_decref(im);
    json_decref(m);
    free(inv);
    free(pay);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backup_restore),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
