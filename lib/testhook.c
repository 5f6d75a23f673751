/* testhook.c - see moat/testhook.h. Test builds only. */
#include "moat/common.h"

#ifdef MOAT_TEST_HOOKS

#include <jansson.h>
#include <sqlite3.h>

#include "moat/log.h"
#include "moat/testhook.h"

void moat_testhook_sql(struct moat_req *r, struct moat_db *db, const char *sql)
{
    sqlite3 *h = moat_db_handle(db);
    int rc = moat_db_begin(db);
    if (rc != MOAT_OK) {
        moat_req_reply_problem(r, 500, "cannot begin a transaction");
        return;
    }
    /* SQLite counts every statement of sql; PostgreSQL the last one. */
    int before = h ? sqlite3_total_changes(h) : 0;
    rc = moat_db_exec(db, "test_hook", sql);
    int changed =
        h ? sqlite3_total_changes(h) - before : (int)moat_db_changes(db);
    if (rc != MOAT_OK || changed == 0) {
        moat_db_rollback(db);
        if (rc != MOAT_OK)
            moat_req_reply_problem(r, 500, "%s", moat_db_errmsg(db));
        else
            moat_req_reply_problem(r, 404, "no row matched");
        return;
    }
    rc = moat_db_commit(db);
    if (rc != MOAT_OK) {
        moat_req_reply_problem(r, 500, "cannot commit");
        return;
    }
    moat_log(MOAT_LOG_WARN, "test hook: store corrupted on purpose", "{s:s}",
             "sql", sql);
    moat_req_reply_json(r, 200, json_pack("{s:i}", "changed", changed));
}

#else
typedef int moat_testhook_unused; /* ISO C: no empty translation unit */
#endif
