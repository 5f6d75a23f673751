/*
 * main.c - the notifications service: one email per order state change.
 * It consumes orders' feed (OrderPlaced, OrderConfirmed, OrderCancelled),
 * keeps one row per (order, status) in its own SQLite database
 * ($MOAT_DATA_DIR/notifications.db) and delivers each as one message in
 * the Maildir $MOAT_DATA_DIR/maildir/{tmp,new,cur}. Each delivery is
 * recorded with a NotificationSent event in its outbox, served as its feed
 * at GET /v1/events (for read models: docs/readmodel.md).
 *
 * Where to look: events.c for how an event becomes a notification (and
 * its text), deliver.c for the Maildir and the To: address, handlers.c for
 * the HTTP API, store.c for the schema and every query.
 * docs/notifications.md describes the service, docs/events.md how to
 * operate its consumer.
 *
 * Environment (besides moat/service.h's):
 *   MOAT_NOTIFICATIONS_ORDERS_URL      orders' base URL, for its event feed
 *                                      and GET /v1/orders/{id}
 *                                      (default http://127.0.0.1:8086)
 *   MOAT_NOTIFICATIONS_MAX_IN_FLIGHT   notifications delivered at once
 *                                      (default 8, 1..256)
 *   MOAT_NOTIFICATIONS_RETRY_MAX_MS    cap of the delivery retry backoff
 *                                      (default 30000, 100..600000)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/events.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/service.h"
#include "notifications.h"
#include "store.h"

#define ORDERS_URL_DEFAULT "http://127.0.0.1:8086"
/* Default per-call bound of the client (the calls to orders' API set a
 * shorter one of their own). */
#define CLIENT_TIMEOUT_MS MOAT_FEED_CLIENT_TIMEOUT_MS
/* Differences listed by replay --verify before "... and N more". */
#define VERIFY_MAX_DIFFS     100
#define RETRY_MAX_MS_DEFAULT 30000
#define RETRY_MAX_MS_MAX     600000

/* ---- the view, as the consumer's replay sees it ---- */

static int view_reset(struct moat_db *db, void *arg)
{
    MOAT_UNUSED(arg);
    /* Only the view: deliveries remembers what was sent, so the rebuilt
     * rows are born delivered and no email goes out twice. */
    return ntf_store_reset(db);
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    MOAT_UNUSED(arg);
    return ntf_store_compare(live, scratch, diffs, VERIFY_MAX_DIFFS);
}

/* Once the process is confined and listening (moat/service.h): the
 * deliverer's writer threads must start after Landlock. */
static int notifications_start(struct moat_service *svc)
{
    struct ntf_service *s = svc->impl;
    moat_log(MOAT_LOG_INFO, "consuming orders events", "{s:s}", "feed",
             s->orders_url);
    ntf_deliverer_start(s->deliverer);
    moat_consumer_start(s->consumer);
    return MOAT_OK;
}

/* In moat/service.h's FREE ORDER: the client completes the deliverer's
 * calls to orders (the deliverer drops them), then the deliverer, whose
 * running Maildir writes are recorded in the still open database (with
 * their events: the outbox goes after it). */
static void notifications_free(struct ntf_service *s)
{
    if (!s)
        return;
    moat_consumer_free(s->consumer);
    moat_http_client_free(s->client);
    ntf_deliverer_free(s->deliverer);
    moat_outbox_free(s->outbox);
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

static int load_options(struct ntf_deliverer_options *o)
{
    int64_t n;
    if (moat_env_int("MOAT_NOTIFICATIONS_MAX_IN_FLIGHT",
                     NTF_MAX_IN_FLIGHT_DEFAULT, 1, NTF_MAX_IN_FLIGHT_MAX,
                     &n) != MOAT_OK)
        return MOAT_EINVAL;
    o->max_in_flight = (unsigned)n;
    if (moat_env_int("MOAT_NOTIFICATIONS_RETRY_MAX_MS", RETRY_MAX_MS_DEFAULT,
                     100, RETRY_MAX_MS_MAX, &n) != MOAT_OK)
        return MOAT_EINVAL;
    o->retry_max_ms = n;
    return MOAT_OK;
}

static int notifications_init(struct moat_service *svc)
{
    struct ntf_service *s = moat_xcalloc(1, sizeof(*s));
    struct ntf_deliverer_options dopts = {0};
    char *maildir = NULL;
    int rc = MOAT_EINVAL;

    s->svc = svc;
    if (moat_env_url("MOAT_NOTIFICATIONS_ORDERS_URL", ORDERS_URL_DEFAULT,
                     &s->orders_url) != MOAT_OK)
        goto cleanup;
    rc = load_options(&dopts);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = ntf_store_open(&s->db, svc->cfg.data_dir, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the notifications database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }

    /* Every event is kept (no retention): a read model rebuilds from
     * sequence 1. */
    rc = moat_outbox_new(&s->outbox, svc->base, s->db, svc->cfg.name, NULL,
                         svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_feed_register(s->outbox, svc->http);
    if (rc != MOAT_OK)
        goto cleanup;

    const struct moat_http_client_options copts = {
        .timeout_ms = CLIENT_TIMEOUT_MS,
    };
    rc = moat_http_client_new(&s->client, svc->base, &copts);
    if (rc != MOAT_OK)
        goto cleanup;

    maildir = moat_xasprintf("%s/maildir", svc->cfg.data_dir);
    dopts.maildir = maildir;
    dopts.orders_url = s->orders_url;
    dopts.outbox = s->outbox;
#ifdef MOAT_TEST_HOOKS
    /* Test builds: orders' API at another address than its feed (a stub
     * of GET /v1/orders/{id} beside the harness's test feed). */
    dopts.orders_url =
        moat_env_str("MOAT_NOTIFICATIONS_TEST_ORDERS_API_URL", s->orders_url);
#endif
    rc = ntf_deliverer_new(&s->deliverer, svc, s->db, s->client, &dopts);
    if (rc != MOAT_OK)
        goto cleanup;

    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = moat_service_subscribe(svc, s->consumer, "orders", s->orders_url,
                                ntf_order_event_types, ntf_apply_event, s);
    if (rc != MOAT_OK)
        goto cleanup;

    size_t nmig;
    const struct moat_migration *mig = ntf_store_migrations(&nmig);
    const struct moat_view_ops view = {
        .migrations = mig,
        .nmigrations = nmig,
        .reset = view_reset,
        .compare = view_compare,
        .arg = s,
    };
    rc = moat_consumer_register_admin(s->consumer, svc->http, svc->cfg.data_dir,
                                      &view);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = ntf_routes_register(svc->http, s);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register notifications routes",
                 "{s:s}", "error", moat_strerror(rc));
        goto cleanup;
    }
    moat_backup_register_sqlite(svc, s->db);
    svc->impl = s;
    s = NULL;
    rc = MOAT_OK;

cleanup:
    notifications_free(s);
    free(maildir);
    return rc;
}

static bool notifications_ready(struct moat_service *svc, const char **why)
{
    struct ntf_service *s = svc->impl;
    if (!s) {
        *why = "not initialised";
        return false;
    }
    return ntf_store_ready(s->db, why);
}

static void notifications_release(struct moat_service *svc)
{
    notifications_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def notifications_def = {
    .name = "notifications",
    .default_port = 8087,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = notifications_init,
    .start = notifications_start,
    .ready = notifications_ready,
    .release = notifications_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&notifications_def, argc, argv);
}
