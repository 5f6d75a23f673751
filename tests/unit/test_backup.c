/*
 * test_backup.c - lib/backup.c without a service: backup ids, a
 * producer's feed epoch (created once, replaced by a restore), a
 * consumer's accepted epochs and rewinds, and moat_backup_verify on a
 * directory that is no backup. Taking, verifying and restoring real
 * backups runs end to end in tests/integration/test_backup.c.
 *
 * Run one test alone: tests/unit_test_backup test_epochs
 */
#include "moat/common.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/backup.h"
#include "moat/log.h"

static char dir[64];

static int setup(void **state)
{
    MOAT_UNUSED(state);
    moat_log_init("test", MOAT_LOG_ERROR);
    snprintf(dir, sizeof(dir), "/tmp/moat-backup-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    MOAT_UNUSED(state);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_ids(void **state)
{
    MOAT_UNUSED(state);
    assert_true(moat_backup_id_valid("orders-20261205T020101.113Z-3fa2"));
    assert_true(moat_backup_id_valid("a"));
    static const char *const bad[] = {"", ".hidden", "a/b", "..", "a b", "é"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        assert_false(moat_backup_id_valid(bad[i]));
    assert_false(moat_backup_id_valid(NULL));
    char longest[MOAT_BACKUP_ID_MAX + 2];
    memset(longest, 'x', sizeof(longest));
    longest[MOAT_BACKUP_ID_MAX] = '\0';
    assert_true(moat_backup_id_valid(longest));
    longest[MOAT_BACKUP_ID_MAX] = 'x';
    longest[MOAT_BACKUP_ID_MAX + 1] = '\0';
    assert_false(moat_backup_id_valid(longest));
}

static void test_epochs(void **state)
{
    MOAT_UNUSED(state);
    char first[48], again[48], restored[48];
    int64_t base = -1;
    /* Created at the first load, the same at the next. */
    assert_int_equal(moat_epoch_load(dir, first, sizeof(first), &base),
                     MOAT_OK);
    assert_int_equal(base, 0);
    assert_int_equal(strncmp(first, "ep_", 3), 0);
    assert_int_equal(moat_epoch_load(dir, again, sizeof(again), &base),
                     MOAT_OK);
    assert_string_equal(first, again);
    /* A restore starts a new one after the backup's head. */
    assert_int_equal(moat_epoch_new(dir, 42, "x-1", restored, sizeof(restored)),
                     MOAT_OK);
    assert_string_not_equal(restored, first);
    assert_int_equal(moat_epoch_load(dir, again, sizeof(again), &base),
                     MOAT_OK);
    assert_string_equal(again, restored);
    assert_int_equal(base, 42);

    /* A consumer's side: nothing accepted, then one epoch, rewinds. */
    char *seen = moat_xasprintf("%s/%s", dir, MOAT_EPOCH_DIR);
    char got[48];
    assert_int_equal(moat_epoch_accepted(seen, "orders", got, sizeof(got)),
                     MOAT_OK);
    assert_string_equal(got, "");
    assert_int_equal(moat_epoch_accept(seen, "orders", first, 0), MOAT_OK);
    assert_int_equal(moat_epoch_accepted(seen, "orders", got, sizeof(got)),
                     MOAT_OK);
    assert_string_equal(got, first);
    /* The same rewind noticed twice is one record; another is a second. */
    assert_int_equal(
        moat_epoch_note_rewind(seen, "orders", first, restored, 90, 42),
        MOAT_OK);
    assert_int_equal(
        moat_epoch_note_rewind(seen, "orders", first, restored, 90, 42),
        MOAT_OK);
    /* Noting a rewind does not accept the new epoch. */
    assert_int_equal(moat_epoch_accepted(seen, "orders", got, sizeof(got)),
                     MOAT_OK);
    assert_string_equal(got, first);
    assert_int_equal(moat_epoch_accept(seen, "orders", restored, 42), MOAT_OK);
    assert_int_equal(
        moat_epoch_note_rewind(seen, "orders", restored, "ep_later", 50, 44),
        MOAT_OK);
    char *file = moat_xasprintf("%s/orders.json", seen);
    json_t *j = json_load_file(file, 0, NULL);
    free(file);
    assert_non_null(j);
    json_t *rw = json_object_get(j, "rewinds");
    assert_int_equal(json_array_size(rw), 2);
    json_t *r0 = json_array_get(rw, 0);
    assert_int_equal(json_integer_value(json_object_get(r0, "from_seq")), 90);
    assert_int_equal(json_integer_value(json_object_get(r0, "to_seq")), 42);
    assert_string_equal(json_string_value(json_object_get(r0, "new_epoch")),
                        restored);
    assert_string_equal(json_string_value(json_object_get(j, "epoch")),
                        restored);
    assert_int_equal(json_integer_value(json_object_get(j, "base_seq")), 42);
    json_decref(j);
    free(seen);
}

static void test_verify_not_a_backup(void **state)
{
    MOAT_UNUSED(state);
    json_t *problems = json_array();
    json_t *m = NULL;
    assert_int_not_equal(moat_backup_verify(dir, problems, &m), MOAT_OK);
    assert_null(m);
    assert_true(json_array_size(problems) >= 1);
    assert_non_null(strstr(json_string_value(json_array_get(problems, 0)),
                           "manifest.json"));
    json_decref(problems);
    /* A manifest of another format is refused without opening anything. */
    char *path = moat_xasprintf("%s/%s", dir, MOAT_BACKUP_MANIFEST);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"format\": 99}", f);
    fclose(f);
    problems = json_array();
    assert_int_not_equal(moat_backup_verify(dir, problems, &m), MOAT_OK);
    assert_non_null(
        strstr(json_string_value(json_array_get(problems, 0)), "format"));
    json_decref(m);
    json_decref(problems);
    unlink(path);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_epochs),
        cmocka_unit_test(test_verify_not_a_backup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
