/*
 * moat/testhook.h - corrupting a service's own store on purpose, for the
 * integration test that proves `moat audit` can fail (tests/integration/
 * test_audit.c). Compiled only with MOAT_TEST_HOOKS: never part of the
 * binaries `make up` runs.
 *
 * A service's hook route (POST /v1/test/...) decides what to break and
 * builds the SQL; moat_testhook_sql runs it the way a bug would, behind
 * the service's back: no event, no log entry, no version bump.
 *
 * Ownership: sql is borrowed; the request is answered (and freed).
 */
#ifndef MOAT_TESTHOOK_H
#define MOAT_TESTHOOK_H

#ifdef MOAT_TEST_HOOKS

#include "moat/db.h"
#include "moat/http.h"

/*
 * Run sql (one or more statements; on PostgreSQL only the last one's
 * changes count, so give it one) in one transaction on db and reply 200
 * {"changed": rows} , 404 problem when no row changed (the transaction is
 * rolled back), or 500 problem on an error.
 */
void moat_testhook_sql(struct moat_req *r, struct moat_db *db, const char *sql);

#endif /* MOAT_TEST_HOOKS */
#endif /* MOAT_TESTHOOK_H */
