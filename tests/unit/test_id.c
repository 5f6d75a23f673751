/* Unit tests for lib/id.c: sortable unique ids. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "moat/id.h"

static void test_ids_sort_and_validate(void **state)
{
    char prev[64] = "", cur[64];
    for (int i = 0; i < 10000; i++) { /* many within one millisecond */
        moat_id_new("ord_", cur, sizeof(cur));
        assert_int_equal(strlen(cur), 4 + MOAT_ID_CHARS);
        assert_true(moat_id_valid(cur, "ord_"));
        assert_false(moat_id_valid(cur, "usr_"));
        assert_true(strcmp(prev, cur) < 0); /* strictly increasing */
        memcpy(prev, cur, sizeof(cur));
    }
}

static void test_invalid_ids(void **state)
{
    char good[64];
    moat_id_new("x_", good, sizeof(good));
    const char *bad[] = {
        NULL,
        "",
        "x_",
        "x_01M7ZRQ8CT7XRA5DVFHQHPKC8",   /* 25 characters */
        "x_01M7ZRQ8CT7XRA5DVFHQHPKC8AB", /* 27 */
        "x_81M7ZRQ8CT7XRA5DVFHQHPKC8A",  /* first char holds 3 bits */
        "x_01M7ZRQ8CT7XRA5DVFHQHPKCIA",  /* I is not Crockford */
        "x_01m7zrq8ct7xra5dvfhqhpkc8a",  /* lower case */
        "y_01M7ZRQ8CT7XRA5DVFHQHPKC8A",  /* wrong prefix */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        assert_false(moat_id_valid(bad[i], "x_"));
    assert_true(moat_id_valid(good, "x_"));
    /* A short buffer truncates instead of overflowing. */
    char small[8];
    moat_id_new("prod_", small, sizeof(small));
    assert_int_equal(strlen(small), sizeof(small) - 1);
}

/* moat_hex/moat_unhex: the encoding of opaque cursors. */
static void test_hex_round_trip(void **state)
{
    const unsigned char bytes[] = {0x00, 0x7f, 0x80, 0xff, 'a', '\n'};
    char hex[2 * sizeof(bytes) + 1];
    moat_hex(hex, bytes, sizeof(bytes));
    assert_string_equal(hex, "007f80ff610a");
    unsigned char back[sizeof(bytes)];
    assert_int_equal(moat_unhex(hex, back, sizeof(back)), MOAT_OK);
    assert_memory_equal(back, bytes, sizeof(bytes));
    assert_int_equal(moat_unhex("007F", back, 2), MOAT_EINVAL); /* upper */
    assert_int_equal(moat_unhex("0g", back, 1), MOAT_EINVAL);
    assert_int_equal(moat_unhex("00", back, 2), MOAT_EINVAL); /* length */
    assert_int_equal(moat_unhex(NULL, back, 1), MOAT_EINVAL);
}

/* The same time and seed give the same valid id; another seed or time
 * another id; ids derived later sort later. */
static void test_derive(void **state)
{
    (void)state;
    char a[40], b[40], c[40], d[40];
    moat_id_derive("pay_", 1795296782000, "evt-1", 5, a, sizeof(a));
    moat_id_derive("pay_", 1795296782000, "evt-1", 5, b, sizeof(b));
    moat_id_derive("pay_", 1795296782000, "evt-2", 5, c, sizeof(c));
    moat_id_derive("pay_", 1795296782001, "evt-1", 5, d, sizeof(d));
    assert_true(moat_id_valid(a, "pay_"));
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_true(strcmp(a, d) < 0);
    assert_true(strncmp(a, c, 4 + 10) == 0); /* the same time part */
}

static void test_ref_valid(void **state)
{
    (void)state;
    assert_true(moat_ref_valid("usr_01J0ABC", 64));
    assert_true(moat_ref_valid("a-b_C9", 6));
    assert_false(moat_ref_valid("a-b_C9", 5)); /* over max */
    assert_false(moat_ref_valid("", 64));
    assert_false(moat_ref_valid(NULL, 64));
    assert_false(moat_ref_valid("a b", 64));
    assert_false(moat_ref_valid("a/b", 64));
    assert_false(moat_ref_valid("a.b", 64));
    assert_false(moat_ref_valid("caf\xc3\xa9", 64));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_valid),
        cmocka_unit_test(test_derive),
        cmocka_unit_test(test_ids_sort_and_validate),
        cmocka_unit_test(test_invalid_ids),
        cmocka_unit_test(test_hex_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
