/* testhook.c - see moat/testhook.h. Test builds only. */
#include "moat/common.h"

#ifdef MOAT_TEST_HOOKS

#include <jansson.h>
#include <sqlite3.h>

#include "moat/log.h"
#include "moat/testhook.h"

void moat_testhook_sql(struct moat_req *r, struct moat_db *db, const char *sql)
{
    /* SQLite counts the changes of every statement in sql; PostgreSQL
     * those of its last one (give it one statement). */
    sqlite3 *h = moat_db_handle(db);
    int rc = moat_db_begin(db);
    if (rc != MOAT_OK) {
        moat_req_reply_problem(r, 500, "cannot begin a transaction");
        return;
    }
    int64_t before = h ? sqlite3_total_changes64(h) : 0;
    rc = moat_db_exec(db, "test_hook", sql);
    int64_t changed =
        h ? sqlite3_total_changes64(h) - before : moat_db_changes(db);
    if (rc != MOAT_OK || changed == 0) {
        moat_db_rollback(db);
        if (rc != MOAT_OK)
            moat_req_reply_problem(r, 500, "%s",
                                   h ? moat_db_errmsg(db) : "statement failed");
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
    moat_req_reply_json(r, 200,
                        json_pack("{s:I}", "changed", (json_int_t)changed));
}

#else
typedef int moat_testhook_unused; /* ISO C: no empty translation unit */
#endif
