/*
 * keys.c - /v1/admin/keys: data-key rotation, re-sealing and retirement
 * without downtime (moat/keys.h).
 *
 * Rotation is three steps. moat_keyring_rotate() adds a new data key and
 * makes it active: from then on every write seals with it, while the old
 * keys stay in the keyring so every existing row still opens. Then a timer
 * on the event loop re-seals the rows still on an older key, a batch per
 * loop turn, each batch one transaction; requests are served between
 * batches, and a read sees a row either before or after its re-sealing,
 * both of which open. Last, once no row is left under an older key,
 * moat_keyring_retire() drops the older keys from the key file.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/audit.h"
#include "moat/auth.h"
#include "moat/crypto.h"
#include "moat/db.h"
#include "moat/http.h"
#include "moat/keys.h"
#include "moat/log.h"
#include "moat/metrics.h"
#include "moat/problem.h"
#include "moat/service.h"

#define REKEY_RETRY_MS 1000 /* after a failed batch (database busy...) */
#define DEFAULT_BATCH  100

struct moat_keys {
    struct moat_service *svc; /* borrowed */
    struct moat_keyring *kr;  /* borrowed */
    struct moat_keys_store store;
    struct moat_keys_options opts;
    struct event *timer;
    struct moat_metric_family *m_rows;
    bool running;
    uint32_t target_key;              /* key the rows are moved to */
    char after[MOAT_KEYS_CURSOR_MAX]; /* keyset cursor of the pass */
    uint64_t resealed, failed;        /* in the current pass */
};

static void schedule(struct moat_keys *k, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(k->timer, &tv);
}

static void rekey_tick(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct moat_keys *k = arg;
    uint32_t active = moat_keyring_active(k->kr);

    if (k->target_key != active) {
        /* Rotated again meanwhile: start a fresh pass towards the newest. */
        k->target_key = active;
        k->after[0] = '\0';
        k->resealed = k->failed = 0;
    }
    size_t resealed = 0, failed = 0;
    bool finished = false;
    int rc = k->store.rekey_batch(
        k->store.arg, active, k->after,
        (size_t)(k->opts.batch > 0 ? k->opts.batch : DEFAULT_BATCH), &resealed,
        &failed, &finished);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_WARN, "re-encryption batch failed, retrying",
                 "{s:s, s:i}", "error", moat_strerror(rc), "retry_ms",
                 REKEY_RETRY_MS);
        schedule(k, REKEY_RETRY_MS);
        return;
    }
    k->resealed += resealed;
    k->failed += failed;
    if (!finished) {
        schedule(k, k->opts.pause_ms);
        return;
    }
    k->running = false;
    moat_log(k->failed ? MOAT_LOG_ERROR : MOAT_LOG_INFO,
             "re-encryption finished", "{s:i, s:I, s:I}", "key", (int)active,
             "resealed", (json_int_t)k->resealed, "failed",
             (json_int_t)k->failed);
}

void moat_keys_rekey_start(struct moat_keys *k)
{
    k->running = true;
    k->target_key = moat_keyring_active(k->kr);
    k->after[0] = '\0';
    k->resealed = k->failed = 0;
    schedule(k, 0);
}

bool moat_keys_rotating(const struct moat_keys *k)
{
    return k && k->running;
}

/* Rows under keys other than the active one, per rows (0 when none). */
static json_int_t rows_behind(json_t *rows, uint32_t active)
{
    const char *key;
    json_t *n;
    json_int_t behind = 0;
    json_object_foreach(rows, key, n)
    {
        if (strtoul(key, NULL, 10) != active)
            behind += json_integer_value(n);
    }
    return behind;
}

static void collect(struct moat_metrics *m, void *arg)
{
    MOAT_UNUSED(m);
    struct moat_keys *k = arg;
    json_t *rows = NULL;
    if (k->store.rows_by_key(k->store.arg, &rows) != MOAT_OK)
        return;
    /* Every key up to the active one gets a sample, so a key that has
     * been emptied reads 0 rather than its last count. */
    uint32_t active = moat_keyring_active(k->kr);
    for (uint32_t id = 1; id <= active; id++) {
        char key[16];
        snprintf(key, sizeof(key), "%u", id);
        const char *labels[] = {key};
        json_t *n = json_object_get(rows, key);
        moat_metric_set(moat_metric_series(k->m_rows, labels),
                        n ? (double)json_integer_value(n) : 0.0);
    }
    json_decref(rows);
}

static bool rows_or_reply(struct moat_keys *k, struct moat_req *r,
                          json_t **rows)
{
    int rc = k->store.rows_by_key(k->store.arg, rows);
    if (rc == MOAT_OK)
        return true;
    moat_log(MOAT_LOG_ERROR, "cannot count the rows by key", "{s:s}", "error",
             moat_strerror(rc));
    moat_req_reply_problem(r, 503, "the rows by key could not be counted");
    return false;
}

/* ---- GET /v1/admin/keys ---- */

static void handle_status(struct moat_req *r, void *arg)
{
    struct moat_keys *k = arg;
    json_t *rows = NULL;
    if (!moat_req_require_admin(r) || !rows_or_reply(k, r, &rows))
        return;
    moat_req_reply_json(r, 200,
                        json_pack("{s:i, s:o, s:b, s:{s:I, s:I}}", "active",
                                  (int)moat_keyring_active(k->kr),
                                  "rows_by_key", rows, "rotating", k->running,
                                  "pass", "resealed", (json_int_t)k->resealed,
                                  "failed", (json_int_t)k->failed));
}

static void reply_env_keyring(struct moat_keys *k, struct moat_req *r,
                              const char *what)
{
    moat_req_reply_problem(
        r, 409,
        "the keyring comes from %s and cannot be %s "
        "online: change the variable and restart",
        k->opts.env_name ? k->opts.env_name : "the environment", what);
}

/* ---- POST /v1/admin/keys/rotate ---- */

static void handle_rotate(struct moat_req *r, void *arg)
{
    struct moat_keys *k = arg;
    if (!moat_req_require_admin(r))
        return;
    uint32_t from = moat_keyring_active(k->kr), to = 0;
    int rc = moat_keyring_rotate(k->kr, &to);
    if (rc == MOAT_EUNSUPPORTED) {
        reply_env_keyring(k, r, "rotated");
        return;
    }
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "key rotation failed", "{s:s}", "error",
                 moat_strerror(rc));
        moat_req_reply_problem(r, 500, "the data key could not be rotated");
        return;
    }
    json_t *detail = json_pack("{s:i, s:i}", "from", (int)from, "to", (int)to);
    moat_audit_req(k->opts.audit, r, "keys.rotate", NULL, "ok", detail);
    json_decref(detail);
    moat_log(MOAT_LOG_INFO, "data key rotated", "{s:i, s:i}", "from", (int)from,
             "to", (int)to);
    moat_keys_rekey_start(k);
    moat_req_reply_json(r, 202,
                        json_pack("{s:i, s:i, s:b}", "active", (int)to,
                                  "previous", (int)from, "rotating", 1));
}

/* ---- POST /v1/admin/keys/retire ---- */

static void handle_retire(struct moat_req *r, void *arg)
{
    struct moat_keys *k = arg;
    json_t *rows = NULL;
    if (!moat_req_require_admin(r))
        return;
    if (k->running) {
        moat_req_reply_problem(r, 409,
                               "rows are still being re-sealed under the "
                               "active key: retire once that has finished");
        return;
    }
    if (!rows_or_reply(k, r, &rows))
        return;
    uint32_t active = moat_keyring_active(k->kr);
    json_int_t behind = rows_behind(rows, active);
    if (behind > 0) {
        char *msg = moat_xasprintf(
            "%lld rows are still sealed with an older key (a re-sealing pass "
            "left them: see rows_by_key and the service's log)",
            (long long)behind);
        json_t *p = moat_problem_new(409, msg);
        json_object_set_new(p, "rows_by_key", rows);
        moat_req_reply_problem_json(r, p);
        free(msg);
        return;
    }
    json_decref(rows);
    uint32_t retired = 0;
    int rc = moat_keyring_retire(k->kr, &retired);
    if (rc == MOAT_EUNSUPPORTED) {
        reply_env_keyring(k, r, "retired");
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_problem(r, 500,
                               "the old data keys could not be "
                               "retired");
        return;
    }
    json_t *detail =
        json_pack("{s:i, s:i}", "active", (int)active, "retired", (int)retired);
    moat_audit_req(k->opts.audit, r, "keys.retire", NULL, "ok", detail);
    json_decref(detail);
    moat_req_reply_json(r, 200,
                        json_pack("{s:i, s:i}", "active", (int)active,
                                  "retired", (int)retired));
}

int moat_keys_new(struct moat_keys **out, struct moat_service *svc,
                  struct moat_keyring *kr, const struct moat_keys_store *store,
                  const struct moat_keys_options *opts)
{
    struct moat_keys *k = moat_xcalloc(1, sizeof(*k));
    k->svc = svc;
    k->kr = kr;
    k->store = *store;
    if (opts)
        k->opts = *opts;
    k->timer = evtimer_new(svc->base, rekey_tick, k);
    if (!k->timer)
        moat_die("evtimer_new failed");
    char *name = moat_xasprintf("moat_%s_rows_by_key", svc->cfg.name);
    for (char *c = name; *c; c++)
        if (*c == '-')
            *c = '_';
    k->m_rows = moat_metrics_family(
        svc->metrics, MOAT_GAUGE, name,
        "Rows whose personal fields are sealed with each data key.", "key",
        NULL, 0);
    free(name);
    int rc = k->m_rows ? MOAT_OK : MOAT_EINVAL;
    if (rc == MOAT_OK)
        moat_metrics_on_collect(svc->metrics, collect, k);
    if (rc == MOAT_OK)
        rc = moat_http_route(svc->http, MOAT_GET, "/v1/admin/keys",
                             handle_status, k);
    if (rc == MOAT_OK)
        rc = moat_http_route(svc->http, MOAT_POST, "/v1/admin/keys/rotate",
                             handle_rotate, k);
    if (rc == MOAT_OK)
        rc = moat_http_route(svc->http, MOAT_POST, "/v1/admin/keys/retire",
                             handle_retire, k);
    if (rc != MOAT_OK) {
        moat_keys_free(k);
        return rc;
    }
    json_t *rows = NULL;
    if (store->rows_by_key(store->arg, &rows) == MOAT_OK &&
        rows_behind(rows, moat_keyring_active(kr)) > 0)
        moat_keys_rekey_start(k);
    json_decref(rows);
    *out = k;
    return MOAT_OK;
}

void moat_keys_free(struct moat_keys *k)
{
    if (!k)
        return;
    if (k->timer)
        event_free(k->timer);
    free(k);
}

int moat_keys_count_sqlite(struct moat_db *db, const char *name,
                           const char *sql, json_t **out)
{
    struct moat_stmt *stmt = moat_db_prepare(db, name, sql);
    if (!stmt)
        return MOAT_EDB;
    json_t *rows = json_object();
    int step;
    while ((step = moat_stmt_step(stmt)) == SQLITE_ROW) {
        char key[24];
        snprintf(key, sizeof(key), "%lld", (long long)moat_stmt_int64(stmt, 0));
        json_object_set_new(rows, key, json_integer(moat_stmt_int64(stmt, 1)));
    }
    int rc = step == SQLITE_DONE ? MOAT_OK : moat_db_error(db, step);
    moat_stmt_reset(stmt);
    if (rc != MOAT_OK) {
        json_decref(rows);
        return rc;
    }
    *out = rows;
    return MOAT_OK;
}
