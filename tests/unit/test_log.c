/* Unit tests for lib/log.c: every line is one valid JSON object. */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "moat/log.h"

/* Run fn with stdout redirected to a temp file; return the output. */
static char *capture(void (*fn)(void))
{
    char path[] = "/tmp/moat-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(fd, STDOUT_FILENO);
    fn();
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    off_t len = lseek(fd, 0, SEEK_END);
    char *out = moat_xcalloc(1, (size_t)len + 1);
    assert_int_equal(pread(fd, out, (size_t)len, 0), len);
    close(fd);
    unlink(path);
    return out;
}

static void write_access(void)
{
    struct moat_trace t;
    moat_trace_start(&t, NULL, "req-1");
    /* quote, backslash, control, valid UTF-8, invalid bytes, overlong */
    moat_log_access(&t, "GET", "/v1/a\"b\\c\x01\xc3\xa9\xff\xc0\xaf/z",
                    "/v1/{rest*}", 200, 1.25, "127.0.0.1");
    moat_log_access(NULL, "POST", "", "_unmatched", 404, 0.0, "");
}

static void test_access_line_is_json(void **state)
{
    moat_log_init("tester", MOAT_LOG_INFO);
    char *out = capture(write_access);
    char *save = NULL;
    char *line = strtok_r(out, "\n", &save);
    assert_non_null(line);
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    if (!j)
        fail_msg("not JSON (%s): %s", err.text, line);
    assert_string_equal(json_string_value(json_object_get(j, "service")),
                        "tester");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")),
                        "req-1");
    assert_string_equal(json_string_value(json_object_get(j, "path")),
                        "/v1/a\"b\\c\x01\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd"
                        "\xef\xbf\xbd/z");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
    assert_true(json_real_value(json_object_get(j, "duration_ms")) > 1.2);
    json_decref(j);
    line = strtok_r(NULL, "\n", &save);
    j = json_loads(line, 0, &err);
    assert_non_null(j);
    assert_null(json_object_get(j, "request_id"));
    json_decref(j);
    free(out);
}

static void write_levels(void)
{
    moat_log(MOAT_LOG_DEBUG, "hidden", NULL);
    moat_log(MOAT_LOG_WARN, "shown", "{s:i}", "n", 7);
    moat_log(MOAT_LOG_ERROR, "bad format", "{s:i", "n", 7);
}

static void test_levels_and_bad_format(void **state)
{
    moat_log_init("tester", MOAT_LOG_INFO);
    char *out = capture(write_levels);
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "\"msg\":\"shown\",\"n\":7"));
    /* A bad format still logs the line, saying so. */
    assert_non_null(strstr(out, "log_format_error"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_line_is_json),
        cmocka_unit_test(test_levels_and_bad_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
