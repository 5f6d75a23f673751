/*
 * keys.c - /v1/admin/keys: data-key rotation without downtime.
 *
 * Rotation is two steps. moat_keyring_rotate() adds a new data key and
 * makes it active: from then on every write seals with it, while the old
 * keys stay in the keyring so every existing row still opens. Then a timer
 * on the event loop re-seals the rows still on an older key, a batch per
 * loop turn, each batch one transaction; requests are served between
 * batches, and a read sees a row either before or after its re-sealing,
 * both of which open. A restart resumes the work (init calls
 * usr_rekey_start when rows are behind).
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "users.h"

#define REKEY_RETRY_MS 1000 /* after a failed batch (database busy...) */

static void schedule(struct usr_service *usr, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(usr->rekey.timer, &tv);
}

static void rekey_tick(evutil_socket_t fd, short what, void *arg)
{
    struct usr_service *usr = arg;
    struct usr_rekey *k = &usr->rekey;
    uint32_t active = moat_keyring_active(usr->kr);

    if (k->target_key != active) {
        /* Rotated again meanwhile: start a fresh pass towards the newest. */
        k->target_key = active;
        k->after[0] = '\0';
        k->resealed = k->failed = 0;
    }
    size_t resealed = 0, failed = 0;
    bool finished = false;
    int rc = usr_store_rekey_batch(usr->store, active, k->after,
                                   (size_t)usr->cfg.rekey_batch, &resealed,
                                   &failed, &finished);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_WARN, "re-encryption batch failed, retrying",
                 "{s:s, s:i}", "error", moat_strerror(rc), "retry_ms",
                 REKEY_RETRY_MS);
        schedule(usr, REKEY_RETRY_MS);
        return;
    }
    k->resealed += resealed;
    k->failed += failed;
    if (!finished) {
        schedule(usr, usr->cfg.rekey_pause_ms);
        return;
    }
    k->running = false;
    moat_log(failed || k->failed ? MOAT_LOG_ERROR : MOAT_LOG_INFO,
             "re-encryption finished", "{s:i, s:I, s:I}", "key", (int)active,
             "resealed", (json_int_t)k->resealed, "failed",
             (json_int_t)k->failed);
}

void usr_rekey_start(struct usr_service *usr)
{
    struct usr_rekey *k = &usr->rekey;
    if (!k->timer)
        k->timer = evtimer_new(usr->svc->base, rekey_tick, usr);
    if (!k->timer)
        moat_die("evtimer_new failed");
    k->running = true;
    k->target_key = moat_keyring_active(usr->kr);
    k->after[0] = '\0';
    k->resealed = k->failed = 0;
    schedule(usr, 0);
}

void usr_rekey_release(struct usr_service *usr)
{
    if (usr->rekey.timer)
        event_free(usr->rekey.timer);
    usr->rekey.timer = NULL;
    usr->rekey.running = false;
}

void usr_collect_rows_by_key(struct moat_metrics *m, void *arg)
{
    struct usr_service *usr = arg;
    json_t *rows = NULL;
    if (!usr->store || usr_store_rows_by_key(usr->store, &rows) != MOAT_OK)
        return;
    /* Every key up to the active one gets a sample, so a key that has
     * been emptied reads 0 rather than its last count. */
    uint32_t active = moat_keyring_active(usr->kr);
    for (uint32_t id = 1; id <= active; id++) {
        char key[16];
        snprintf(key, sizeof(key), "%u", id);
        const char *labels[] = {key};
        json_t *n = json_object_get(rows, key);
        moat_metric_set(moat_metric_series(usr->m_rows_by_key, labels),
                        n ? (double)json_integer_value(n) : 0.0);
    }
    json_decref(rows);
}

/* ---- GET /v1/admin/keys ---- */

static void handle_status(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    if (!usr_require_admin(r))
        return;
    json_t *rows = NULL;
    int rc = usr_store_rows_by_key(usr->store, &rows);
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "count the rows by key");
        return;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:i, s:o, s:b, s:{s:I, s:I}}", "active",
                                  (int)moat_keyring_active(usr->kr),
                                  "rows_by_key", rows, "rotating",
                                  usr->rekey.running, "pass", "resealed",
                                  (json_int_t)usr->rekey.resealed, "failed",
                                  (json_int_t)usr->rekey.failed));
}

/* ---- POST /v1/admin/keys/rotate ---- */

static void handle_rotate(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    if (!usr_require_admin(r))
        return;
    uint32_t from = moat_keyring_active(usr->kr), to = 0;
    int rc = moat_keyring_rotate(usr->kr, &to);
    if (rc == MOAT_EUNSUPPORTED) {
        moat_req_reply_problem(r, 409,
                               "the keyring comes from MOAT_USERS_KEYRING and "
                               "cannot be rotated online: add a data key to "
                               "the variable and restart");
        return;
    }
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "key rotation failed", "{s:s}", "error",
                 moat_strerror(rc));
        moat_req_reply_problem(r, 500, "the data key could not be rotated");
        return;
    }
    json_t *detail = json_pack("{s:i, s:i}", "from", (int)from, "to", (int)to);
    usr_audit(usr, r, "keys.rotate", NULL, "ok", detail);
    json_decref(detail);
    moat_log(MOAT_LOG_INFO, "data key rotated", "{s:i, s:i}", "from", (int)from,
             "to", (int)to);
    usr_rekey_start(usr);
    moat_req_reply_json(r, 202,
                        json_pack("{s:i, s:i, s:b}", "active", (int)to,
                                  "previous", (int)from, "rotating", 1));
}

int usr_keys_routes_register(struct usr_service *usr)
{
    usr->m_rows_by_key = moat_metrics_family(
        usr->svc->metrics, MOAT_GAUGE, "moat_users_rows_by_key",
        "User rows whose personal fields are sealed with each data key.", "key",
        NULL, 0);
    if (!usr->m_rows_by_key)
        return MOAT_EINVAL;
    moat_metrics_on_collect(usr->svc->metrics, usr_collect_rows_by_key, usr);
    int rc = moat_http_route(usr->svc->http, MOAT_GET, "/v1/admin/keys",
                             handle_status, usr);
    if (rc == MOAT_OK)
        rc = moat_http_route(usr->svc->http, MOAT_POST, "/v1/admin/keys/rotate",
                             handle_rotate, usr);
    return rc;
}
