/*
 * pg_fixture.h - a private, throwaway PostgreSQL server for tests.
 *
 * One cluster per test process, started on first use: initdb into a fresh
 * temporary directory (trust authentication, UTF8, C locale, fsync=off:
 * for tests only), then `postgres` in the foreground as a child of the
 * test process, listening on a unix socket inside that directory only (no
 * TCP port, so no port can collide). When the test runs as root (CI, this
 * machine) initdb and postgres refuse to, so they run as the Debian
 * `postgres` system user and the directory is handed to it. The server is
 * stopped and the directory removed at process exit (atexit), or earlier
 * by h_pg_stop(). The Debian package's own cluster on 5432 is never used.
 *
 * Binaries: $MOAT_PG_BINDIR, else /usr/lib/postgresql/15/bin, else
 * `pg_config --bindir`. $MOAT_TEST_KEEP=1 keeps the directory (server log
 * in <dir>/postgres.log).
 *
 * Usage in a cmocka test (unit tests link this file; so does the
 * integration harness):
 *
 *   #include "pg_fixture.h"
 *
 *   static void test_x(void **state)
 *   {
 *       if (!h_pg_available())
 *           skip();  // prints why once; the test counts as skipped
 *       const char *dsn = h_pg_dsn("x");  // a fresh, empty database "x"
 *       struct moat_db_options o = {.dsn = dsn};
 *       ...moat_db_open_migrated(&db, dir, "x.db", &o, NULL, m, n)...
 *   }
 *
 * h_pg_dsn(name) drops any database of that name (closing its
 * connections) and creates it again, so each call starts empty; the DSN
 * string belongs to the fixture and stays valid until h_pg_stop().
 *
 * Integration tests: when the test process runs with
 * MOAT_TEST_ENGINE=postgres in its environment, h_service_start() gives
 * every service with a data directory its own database (one per data
 * directory: a restart with the same data directory finds its data again)
 * and passes MOAT_DB_DSN=<dsn> to it; a service that reads MOAT_DB_DSN then
 * runs on PostgreSQL. Register such a run in tests/CMakeLists.txt (see
 * integration/test_catalog_pg). Without PostgreSQL installed, such a test
 * process exits with status 77 (ctest: skipped) on its first service.
 */
#ifndef MOAT_TEST_PG_FIXTURE_H
#define MOAT_TEST_PG_FIXTURE_H

#include <stdbool.h>

/* Whether the PostgreSQL server binaries are installed (and, the first
 * time it returns false, a line on stderr saying why). */
bool h_pg_available(void);

/* Whether this test process was asked to run services on PostgreSQL
 * ($MOAT_TEST_ENGINE=postgres). */
bool h_pg_engine(void);

/*
 * A libpq connection string for a fresh, empty database named name
 * ([a-z0-9_], at most 48 characters), starting the cluster if needed.
 * Owned by the fixture. Aborts the test process (exit 1, reason on stderr)
 * when the cluster cannot start; check h_pg_available() first.
 */
const char *h_pg_dsn(const char *name);

/*
 * Stop the server abruptly (immediate shutdown: every connection is cut,
 * as when the supervisor's PostgreSQL is killed), keeping its data, and
 * start it again on the same socket. For reconnect tests. h_pg_up() waits
 * until the server accepts connections.
 */
void h_pg_down(void);
void h_pg_up(void);

/* Stop the server and remove its directory (also run at exit). */
void h_pg_stop(void);

#endif /* MOAT_TEST_PG_FIXTURE_H */
