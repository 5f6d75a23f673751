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
#include "moat/common.h"

#include <event2/event.h>
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
/* Per-call bound of the client: above the feed's longest long poll (the
 * calls to orders' API set a shorter one of their own). */
#define CLIENT_TIMEOUT_MS (MOAT_FEED_MAX_WAIT_MS + 10000L)
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

/*
 * The skeleton has no hook that runs once it listens, and neither the
 * consumer nor the deliverer (whose writer threads must start after
 * Landlock) may start before then. A zero-delay timer added in init fires
 * on the loop's first iteration, which lib/service.c enters only after it
 * has confined the process and bound the listener.
 */
static void start_work(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct ntf_service *s = arg;
    moat_log(MOAT_LOG_INFO, "consuming orders events", "{s:s}", "feed",
             s->orders_url);
    ntf_deliverer_start(s->deliverer);
    moat_consumer_start(s->consumer);
}

static bool url_valid(const char *u)
{
    return strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
}

static void notifications_free(struct ntf_service *s)
{
    if (!s)
        return;
    if (s->start)
        event_free(s->start);
    /* The consumer first: it owns the feed source, whose pending pull the
     * client's free would otherwise complete into a freed consumer. Then
     * the client, which completes the deliverer's calls to orders (the
     * deliverer drops them), then the deliverer, whose running Maildir
     * writes are recorded in the still open database (with their events:
     * the outbox goes after it). */
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
    s->orders_url =
        moat_env_str("MOAT_NOTIFICATIONS_ORDERS_URL", ORDERS_URL_DEFAULT);
    if (!url_valid(s->orders_url)) {
        moat_log(MOAT_LOG_ERROR,
                 "MOAT_NOTIFICATIONS_ORDERS_URL is not an http URL", "{s:s}",
                 "value", s->orders_url);
        goto cleanup;
    }
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
    struct moat_event_source *src =
        moat_feed_source_new("orders", s->orders_url, s->client, svc->auth);
    if (!src) {
        rc = MOAT_EINVAL;
        goto cleanup;
    }
    const struct moat_subscription sub = {
        .source = src,
        .types = ntf_order_event_types,
        .handler = ntf_apply_event,
        .arg = s,
    };
    rc = moat_consumer_subscribe(s->consumer, &sub);
    if (rc != MOAT_OK) {
        src->ops->free(src); /* not taken: the consumer refused it */
        goto cleanup;
    }

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

    s->start = evtimer_new(svc->base, start_work, s);
    const struct timeval now = {0, 0};
    if (!s->start || evtimer_add(s->start, &now) != 0) {
        rc = MOAT_EIO;
        goto cleanup;
    }
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
    .ready = notifications_ready,
    .release = notifications_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&notifications_def, argc, argv);
}
