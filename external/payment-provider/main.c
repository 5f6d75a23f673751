/*
 * main.c - moat-payprovider: a card processor that moat does not own.
 *
 * It runs on libmoat's service skeleton (listen, health, metrics, logs,
 * sandbox, drain) but stands outside moat's trust domain: it does not
 * take moat service tokens (public_api); merchants authenticate with an
 * API key, as they would with a real processor. It keeps its own SQLite
 * ledger in its data directory, so payments and idempotency records
 * survive its restarts. docs/payment-provider.md is the client's guide.
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_PAYPROVIDER_API_KEYS           "merchant-id:key,..." (required;
 *                                       keys of 16..256 visible ASCII)
 *   MOAT_PAYPROVIDER_CONTROL_KEY        enables /_control (unset: 403)
 *   MOAT_PAYPROVIDER_LATENCY_MS         added to every POST (default 20)
 *   MOAT_PAYPROVIDER_LATENCY_JITTER_MS  plus up to this much (default 0)
 *   MOAT_PAYPROVIDER_DECLINE_RATE       0..1 of other cards (default 0)
 *   MOAT_PAYPROVIDER_SEED               decline/jitter seed (default
 *                                       random, logged at start)
 *   MOAT_PAYPROVIDER_OUTAGE             1 = start in an outage
 *   MOAT_PAYPROVIDER_OUTAGE_STATUS      503 (default), 500 or timeout
 *   MOAT_PAYPROVIDER_IDEMPOTENCY_TTL_S  keys honoured for (default 86400)
 *
 * Where to look: api.c for the API and idempotency, control.c for the
 * knobs, ledger.c for the schema and every query, config.c for keys.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "moat/log.h"
#include "moat/service.h"
#include "payprovider.h"

#define PURGE_INTERVAL_S  600
#define PURGE_BATCH       1000
#define PURGE_MAX_BATCHES 10 /* per tick: the loop stays responsive */

/* Delete expired idempotency records; lookups ignore them already, this
 * only gives the space back. */
static void purge(struct pp_service *pp)
{
    int64_t before = moat_wall_ms() - pp->cfg.idempotency_ttl_ms;
    int total = 0, deleted = 0;
    for (int i = 0; i < PURGE_MAX_BATCHES; i++) {
        if (pp_ledger_idem_purge(pp->ledger, before, PURGE_BATCH, &deleted) !=
            MOAT_OK)
            break;
        total += deleted;
        if (deleted < PURGE_BATCH)
            break;
    }
    if (total > 0)
        moat_log(MOAT_LOG_INFO, "expired idempotency records deleted", "{s:i}",
                 "count", total);
}

static void on_purge(evutil_socket_t fd, short what, void *arg)
{
    purge(arg);
}

static void register_metrics(struct pp_service *pp)
{
    struct moat_metrics *m = pp->metrics;
    pp->m_operations = moat_metrics_family(
        m, MOAT_COUNTER, "payprovider_operations_total",
        "Completed payment operations by operation and HTTP status "
        "(replays not included)",
        "operation,status", NULL, 0);
    pp->m_idempotency = moat_metrics_family(
        m, MOAT_COUNTER, "payprovider_idempotency_total",
        "POSTs by what their Idempotency-Key found: new, replayed, "
        "mismatch (422) or in_progress (409)",
        "result", NULL, 0);
    struct moat_metric_family *held = moat_metrics_family(
        m, MOAT_GAUGE, "payprovider_held_requests",
        "Requests waiting on simulated latency or a timeout outage", NULL, NULL,
        0);
    struct moat_metric_family *outage =
        moat_metrics_family(m, MOAT_GAUGE, "payprovider_outage",
                            "1 while a simulated outage is on", NULL, NULL, 0);
    if (!pp->m_operations || !pp->m_idempotency || !held || !outage)
        moat_die("cannot register the payment provider metrics");
    pp->m_held = moat_metric_single(held);
    pp->m_outage = moat_metric_single(outage);
}

static int payprovider_init(struct moat_service *svc)
{
    struct pp_service *pp = moat_xcalloc(1, sizeof(*pp));
    int rc;

    pp->base = svc->base;
    pp->http = svc->http;
    pp->metrics = svc->metrics;
    rc = pp_config_load(&pp->cfg);
    if (rc != MOAT_OK)
        goto cleanup; /* logged */
    register_metrics(pp);
    pp_knobs_apply(pp, &pp->cfg.knobs, true);

    rc = pp_ledger_open(&pp->ledger, svc->cfg.data_dir, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the payment ledger", "{s:s, s:s}",
                 "data_dir", svc->cfg.data_dir, "error", moat_strerror(rc));
        goto cleanup;
    }
    rc = pp_api_register(pp);
    if (rc == MOAT_OK)
        rc = pp_control_register(pp);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot register the provider's routes",
                 "{s:s}", "error", moat_strerror(rc));
        goto cleanup;
    }
    purge(pp);
    pp->purge_timer = event_new(pp->base, -1, EV_PERSIST, on_purge, pp);
    if (!pp->purge_timer)
        moat_die("event_new failed");
    struct timeval tv = {PURGE_INTERVAL_S, 0};
    event_add(pp->purge_timer, &tv);

    json_t *knobs = pp_knobs_json(&pp->knobs);
    moat_log(MOAT_LOG_INFO, "payment provider configured",
             "{s:i, s:b, s:I, s:o}", "merchants", (int)pp->cfg.nmerchants,
             "control", pp->cfg.control_enabled, "idempotency_ttl_s",
             (json_int_t)(pp->cfg.idempotency_ttl_ms / 1000), "knobs", knobs);
    svc->impl = pp;
    pp = NULL;

cleanup:
    if (pp) {
        pp_ledger_close(pp->ledger);
        sodium_memzero(&pp->cfg, sizeof(pp->cfg));
        free(pp);
    }
    return rc;
}

static bool payprovider_ready(struct moat_service *svc, const char **why)
{
    struct pp_service *pp = svc->impl;
    if (!pp) {
        *why = "not initialised";
        return false;
    }
    return pp_ledger_ready(pp->ledger, why);
}

static void payprovider_release(struct moat_service *svc)
{
    struct pp_service *pp = svc->impl;
    if (!pp)
        return;
    /* Normally the drain answered everything held; after a drain deadline
     * or a second signal, this does. */
    pp_api_flush(pp);
    if (pp->purge_timer)
        event_free(pp->purge_timer);
    pp_ledger_close(pp->ledger);
    sodium_memzero(&pp->cfg, sizeof(pp->cfg));
    free(pp);
    svc->impl = NULL;
}

/*
 * The skeleton loads a moat service identity for every process, but the
 * provider never signs or verifies moat service tokens: it is not part of
 * moat. Rather than make a deployment invent a secret that means nothing
 * here, a missing MOAT_SERVICE_KEY becomes a random one for this process.
 */

static const struct moat_service_def payprovider_def = {
    .name = "payprovider",
    .default_port = 8099,
    .needs_data_dir = true,
    .public_api = true, /* merchants, not moat services, call it */
    .external = true,   /* outside moat: no moat service identity */
    .ro_paths = NULL,
    .init = payprovider_init,
    .ready = payprovider_ready,
    .release = payprovider_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&payprovider_def, argc, argv);
}
