/*
 * test_view.c - moat_view_compare_tables: two copies of a view that agree
 * give no difference; every kind of disagreement is named, and the list
 * is capped.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/db.h"
#include "moat/events.h"

struct fixture {
    char dir[64];
    struct moat_db *live, *scratch;
};

static const struct moat_view_table tables[] = {
    {"compare_items", "SELECT id, name, qty FROM items ORDER BY id", "item"},
};

static struct moat_db *open_db(const char *dir, const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    struct moat_db *db = NULL;
    assert_int_equal(moat_db_open(&db, path, NULL, NULL), MOAT_OK);
    assert_int_equal(moat_db_exec(db, "create",
                                  "CREATE TABLE items (id TEXT PRIMARY KEY, "
                                  "name TEXT, qty INTEGER)"),
                     MOAT_OK);
    return db;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-test-view-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->live = open_db(f->dir, "live.db");
    f->scratch = open_db(f->dir, "scratch.db");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    moat_db_close(f->live);
    moat_db_close(f->scratch);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static void fill(struct moat_db *db, const char *sql)
{
    assert_int_equal(moat_db_exec(db, "fill", sql), MOAT_OK);
}

static void test_identical(void **state)
{
    struct fixture *f = *state;
    const char *rows = "INSERT INTO items VALUES ('a', 'mug', 1), ('b', "
                       "'cup', 2)";
    fill(f->live, rows);
    fill(f->scratch, rows);
    json_t *diffs = json_array();
    assert_int_equal(
        moat_view_compare_tables(f->live, f->scratch, tables, 1, diffs, 10),
        MOAT_OK);
    assert_int_equal(json_array_size(diffs), 0);
    json_decref(diffs);
}

static void test_differences_named(void **state)
{
    struct fixture *f = *state;
    fill(f->live, "INSERT INTO items VALUES ('a', 'mug', 1), ('b', 'cup', 2), "
                  "('c', 'jar', 3)");
    /* b: other name; c: only live; d: only rebuilt; a: '1' as text. */
    fill(f->scratch, "INSERT INTO items VALUES ('a', 'mug', '1x'), "
                     "('b', 'bowl', 2), ('d', 'pot', 4)");
    json_t *diffs = json_array();
    assert_int_equal(
        moat_view_compare_tables(f->live, f->scratch, tables, 1, diffs, 10),
        MOAT_OK);
    assert_int_equal(json_array_size(diffs), 4);
    assert_string_equal(json_string_value(json_array_get(diffs, 0)),
                        "item a: qty differs (live 1, rebuilt 1x)");
    assert_string_equal(json_string_value(json_array_get(diffs, 1)),
                        "item b: name differs (live cup, rebuilt bowl)");
    assert_string_equal(json_string_value(json_array_get(diffs, 2)),
                        "item c: only in the live view");
    assert_string_equal(json_string_value(json_array_get(diffs, 3)),
                        "item d: only in the rebuilt view");
    json_decref(diffs);
}

static void test_capped(void **state)
{
    struct fixture *f = *state;
    fill(f->live, "INSERT INTO items VALUES ('a', 'x', 1), ('b', 'x', 1), "
                  "('c', 'x', 1), ('d', 'x', 1)");
    json_t *diffs = json_array();
    assert_int_equal(
        moat_view_compare_tables(f->live, f->scratch, tables, 1, diffs, 2),
        MOAT_OK);
    assert_int_equal(json_array_size(diffs), 3);
    assert_string_equal(json_string_value(json_array_get(diffs, 2)),
                        "... and 2 more differences");
    json_decref(diffs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_identical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_differences_named, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_capped, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
