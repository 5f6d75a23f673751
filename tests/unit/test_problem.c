/* Unit tests for lib/problem.c: RFC 9457 problems and validation. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "moat/problem.h"

static void test_problem_shape(void **state)
{
    const int statuses[] = {400, 404, 405, 409, 412, 413, 415, 422, 503};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(statuses); i++) {
        json_t *p = moat_problem_new(statuses[i], "why");
        assert_true(json_is_string(json_object_get(p, "type")));
        assert_string_equal(json_string_value(json_object_get(p, "title")),
                            moat_http_reason(statuses[i]));
        assert_int_equal(json_integer_value(json_object_get(p, "status")),
                         statuses[i]);
        assert_string_equal(json_string_value(json_object_get(p, "detail")),
                            "why");
        assert_string_not_equal(moat_http_reason(statuses[i]), "Unknown");
        json_decref(p);
    }
    json_t *p = moat_problem_new(404, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "type")),
                        "about:blank");
    assert_null(json_object_get(p, "detail"));
    moat_problem_add_error(p, "/a", "bad");
    moat_problem_add_error(p, "/b", "worse");
    assert_int_equal(json_array_size(json_object_get(p, "errors")), 2);
    json_decref(p);
}

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    assert_non_null(j);
    return j;
}

static const char *error_for(json_t *errors, const char *pointer)
{
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "pointer")), pointer) ==
            0)
            return json_string_value(json_object_get(e, "detail"));
    }
    return NULL;
}

static void test_validation_collects_every_error(void **state)
{
    json_t *body =
        parse("{\"name\": 5, \"qty\": \"x\", \"big\": 1000,"
              " \"unknown\": true, \"a/b\": 1,"
              " \"inner\": {\"flag\": \"no\"}, \"s\": \"h\xc3\xa9\"}");
    struct moat_validation v;
    moat_validation_init(&v);
    const char *name;
    int64_t qty, big;
    json_t *inner = NULL;
    assert_false(moat_v_string(&v, body, "", "name", true, 1, 10, &name));
    assert_false(moat_v_int(&v, body, "", "qty", true, 0, 10, &qty));
    assert_false(moat_v_int(&v, body, "", "big", true, 0, 10, &big));
    assert_false(moat_v_string(&v, body, "", "missing", true, 1, 10, &name));
    assert_false(moat_v_string(&v, body, "", "optional", false, 1, 10, &name));
    assert_true(moat_v_object(&v, body, "", "inner", true, &inner));
    assert_false(moat_v_bool(&v, inner, "/inner", "flag", true, NULL));
    /* "hé" is 2 code points, not 3 bytes */
    assert_true(moat_v_string(&v, body, "", "s", true, 2, 2, &name));
    static const char *const known[] = {"name",  "qty", "big",
                                        "inner", "s",   NULL};
    moat_v_known_keys(&v, body, "", known);
    assert_false(moat_validation_ok(&v));

    json_t *p = moat_validation_problem(&v, NULL);
    assert_int_equal(json_integer_value(json_object_get(p, "status")), 422);
    json_t *errors = json_object_get(p, "errors");
    assert_string_equal(error_for(errors, "/name"),
                        "must be a string, not an integer");
    assert_string_equal(error_for(errors, "/qty"),
                        "must be an integer, not a string");
    assert_string_equal(error_for(errors, "/big"), "must be between 0 and 10");
    assert_string_equal(error_for(errors, "/missing"), "is required");
    assert_null(error_for(errors, "/optional"));
    assert_string_equal(error_for(errors, "/inner/flag"),
                        "must be a boolean, not a string");
    assert_string_equal(error_for(errors, "/unknown"), "is not a known field");
    /* RFC 6901 escaping of "/" in a member name */
    assert_string_equal(error_for(errors, "/a~1b"), "is not a known field");
    json_decref(p);
    /* the validation is empty again and reusable */
    assert_true(moat_validation_ok(&v));
    moat_validation_release(&v);
    json_decref(body);
}

static void test_validation_error_cap(void **state)
{
    json_t *body = json_object();
    char key[16];
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        json_object_set_new(body, key, json_true());
    }
    struct moat_validation v;
    moat_validation_init(&v);
    static const char *const none[] = {NULL};
    moat_v_known_keys(&v, body, "", none);
    assert_true(json_array_size(v.errors) <= 50);
    moat_validation_release(&v);
    json_decref(body);
}

static void test_typed_and_text(void **state)
{
    (void)state;
    json_t *pr = moat_problem_typed(409, "urn:moat:problem:x", "busy");
    assert_string_equal(json_string_value(json_object_get(pr, "type")),
                        "urn:moat:problem:x");
    assert_int_equal(json_integer_value(json_object_get(pr, "status")), 409);
    assert_string_equal(json_string_value(json_object_get(pr, "detail")),
                        "busy");
    json_decref(pr);

    const char *ok[] = {"hi", "two\nlines\tand a tab", " x ", "caf\xc3\xa9"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ok); i++)
        assert_null(moat_text_problem(ok[i], strlen(ok[i])));
    const char *bad[] = {"", " \n\t ", "a\x01b", "del\x7f", "esc\x1b[0m"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        if (!moat_text_problem(bad[i], strlen(bad[i])))
            fail_msg("accepted text %zu", i);
    /* An embedded NUL is a control character too. */
    assert_non_null(moat_text_problem("a\0b", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_problem_shape),
        cmocka_unit_test(test_validation_collects_every_error),
        cmocka_unit_test(test_validation_error_cap),
        cmocka_unit_test(test_typed_and_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
