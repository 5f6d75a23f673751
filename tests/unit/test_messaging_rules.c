/*
 * Unit tests for services/messaging/rules.c: message texts, user ids and
 * the member set of a new conversation. The rules are pure and the unit
 * tests link libmoat only, so the file is compiled into this test.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../services/messaging/rules.c"

static const char *text_problem(const char *s, size_t max)
{
    return msg_text_problem(s, strlen(s), max);
}

static void test_text(void **state)
{
    MOAT_UNUSED(state);
    assert_null(text_problem("hello", 10));
    assert_null(text_problem("line one\nline two\r\n\ttabbed", 100));
    assert_null(text_problem("\xc3\xa9t\xc3\xa9", 5)); /* 5 bytes: fits */
    assert_non_null(text_problem("\xc3\xa9t\xc3\xa9", 4));
    assert_null(text_problem("0123456789", 10));
    assert_non_null(text_problem("0123456789a", 10));
    assert_non_null(text_problem("", 10));
    assert_non_null(text_problem(" \n\t\r ", 10));
    assert_non_null(text_problem("bell \x07", 10));
    assert_non_null(text_problem("del \x7f", 10));
    assert_non_null(text_problem("esc \x1b[0m", 20));
    /* A NUL inside the length is a control character too. */
    assert_non_null(msg_text_problem("a\0b", 3, 10));
}

static void test_user_ids(void **state)
{
    MOAT_UNUSED(state);
    char longest[65];
    memset(longest, 'a', 63);
    longest[63] = '\0';
    assert_true(msg_user_id_valid("usr_01J00000000000000000000ALI"));
    assert_true(msg_user_id_valid("a-b_C9"));
    assert_true(msg_user_id_valid(longest));
    longest[63] = 'a';
    longest[64] = '\0';
    assert_false(msg_user_id_valid(longest));
    assert_false(msg_user_id_valid(""));
    assert_false(msg_user_id_valid(NULL));
    assert_false(msg_user_id_valid("a b"));
    assert_false(msg_user_id_valid("a/b"));
    assert_false(msg_user_id_valid("\xc3\xa9"));
}

static void test_member_set(void **state)
{
    MOAT_UNUSED(state);
    const char *ids[] = {"bob", "alice", "carol", "bob", "carol", "dave"};
    const char *out[MOAT_ARRAY_LEN(ids) + 1];
    size_t n = msg_member_set("alice", ids, MOAT_ARRAY_LEN(ids), out);
    assert_int_equal(n, 4);
    assert_string_equal(out[0], "alice"); /* the creator first */
    assert_string_equal(out[1], "bob");
    assert_string_equal(out[2], "carol");
    assert_string_equal(out[3], "dave");
    /* Nobody else: the creator alone. */
    assert_int_equal(msg_member_set("alice", NULL, 0, out), 1);
    /* A direct conversation with oneself is a set of one. */
    const char *self[] = {"alice"};
    assert_int_equal(msg_member_set("alice", self, 1, out), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_user_ids),
        cmocka_unit_test(test_member_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
