/* test_db_pg.c - moat/db.h on PostgreSQL, against a private server
 * (tests/pg_fixture.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#include "pg_fixture.h"

static void test_fixture(void **state)
{
    (void)state;
    if (!h_pg_available())
        skip();
    const char *dsn = h_pg_dsn("fixture");
    PGconn *c = PQconnectdb(dsn);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PQfinish(c);
    h_pg_down();
    assert_int_not_equal(PQping(dsn), PQPING_OK);
    h_pg_up();
    assert_int_equal(PQping(dsn), PQPING_OK);
    /* Fresh again. */
    assert_string_equal(h_pg_dsn("fixture"), dsn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
