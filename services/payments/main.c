/*
 * main.c - the payments service: payment authorisations, captures, voids
 * and refunds against an external card processor (docs/payment-provider.md),
 * kept in payments' own SQLite database ($MOAT_DATA_DIR/payments.db,
 * synchronous=FULL; or the PostgreSQL database MOAT_DB_DSN names, whose
 * commits are durable with synchronous_commit on), with events
 * (PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided,
 * PaymentRefunded, and the saga's PaymentCaptureFailed,
 * PaymentProviderUnavailable) served from its outbox at /v1/events and every
 * state change in <data_dir>/audit.log. With orders' feed configured it is a
 * participant of the order saga (saga.c, docs/saga.md).
 *
 * Configuration besides the MOAT_* basics (moat/service.h):
 *   MOAT_PAYMENTS_PROVIDER_URL         the processor, e.g.
 *                                      http://127.0.0.1:8099 (required)
 *   MOAT_PAYMENTS_PROVIDER_KEY         our merchant API key there (required)
 *   MOAT_PAYMENTS_PROVIDER_TIMEOUT_MS  per provider call (default 2000)
 *   MOAT_PAYMENTS_KEYRING              keyring contents (moat/crypto.h);
 *                                      default: <data_dir>/keys, created
 *   MOAT_PAYMENTS_ORDERS_URL           orders' base URL for its feed of
 *                                      commands; unset: take none
 *
 * Where to look: handlers.c for the HTTP API, saga.c for orders' commands,
 * provider.c for the provider calls, store.c for the schema and every
 * query. docs/payments.md for the rules.
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/config.h"
#include "moat/db.h"
#include "moat/events.h"
#include "moat/log.h"
#include "payments.h"

static int load_config(struct pay_config *cfg)
{
    const char *url = moat_env_str("MOAT_PAYMENTS_PROVIDER_URL", NULL);
    const char *key = moat_env_str("MOAT_PAYMENTS_PROVIDER_KEY", NULL);
    int64_t timeout;
    size_t len;

    if (!moat_url_valid(url)) {
        moat_log(MOAT_LOG_ERROR,
                 "MOAT_PAYMENTS_PROVIDER_URL must be an http(s):// URL", NULL);
        return MOAT_EINVAL;
    }
    len = strlen(url);
    while (len > 0 && url[len - 1] == '/')
        len--;
    if (len >= sizeof(cfg->provider_url)) {
        moat_log(MOAT_LOG_ERROR, "MOAT_PAYMENTS_PROVIDER_URL is too long",
                 NULL);
        return MOAT_EINVAL;
    }
    memcpy(cfg->provider_url, url, len);
    cfg->provider_url[len] = '\0';

    /* The key goes into a header: visible ASCII only, as the provider
     * requires. Never logged. */
    len = key ? strlen(key) : 0;
    if (len < PAY_PROVIDER_KEY_MIN || len > PAY_PROVIDER_KEY_MAX) {
        moat_log(MOAT_LOG_ERROR,
                 "MOAT_PAYMENTS_PROVIDER_KEY must be 16 to 256 characters",
                 NULL);
        return MOAT_EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        if (key[i] <= ' ' || key[i] > '~') {
            moat_log(MOAT_LOG_ERROR,
                     "MOAT_PAYMENTS_PROVIDER_KEY must be visible ASCII", NULL);
            return MOAT_EINVAL;
        }
    }
    cfg->provider_key = key;

    if (moat_env_int("MOAT_PAYMENTS_PROVIDER_TIMEOUT_MS",
                     PAY_PROVIDER_TIMEOUT_DEFAULT_MS, 1,
                     PAY_PROVIDER_TIMEOUT_MAX_MS, &timeout) != MOAT_OK)
        return MOAT_EINVAL; /* logged by moat_env_int */
    cfg->provider_timeout_ms = (long)timeout;

    const char *orders = moat_env_str("MOAT_PAYMENTS_ORDERS_URL", NULL);
    if (orders && orders[0]) {
        len = strlen(orders);
        if (!moat_url_valid(orders) || len >= sizeof(cfg->orders_url)) {
            moat_log(MOAT_LOG_ERROR,
                     "MOAT_PAYMENTS_ORDERS_URL must be an http(s):// URL of "
                     "at most 255 characters",
                     NULL);
            return MOAT_EINVAL;
        }
        memcpy(cfg->orders_url, orders, len + 1);
    }
    return MOAT_OK;
}

/* Once the process is confined and listening (moat/service.h). */
static int payments_start(struct moat_service *svc)
{
    struct pay_service *ps = svc->impl;
    if (ps->saga)
        pay_saga_start(ps->saga);
    return MOAT_OK;
}

static void payments_free(struct pay_service *ps)
{
    if (!ps)
        return;
    /* moat/service.h's FREE ORDER: the saga stops taking outcomes, then
     * the client, whose cancelled calls' callbacks answer their requests
     * (503) or drop the saga's calls, and use nothing but the busy list. */
    pay_saga_stop(ps->saga);
    moat_http_client_free(ps->client);
    pay_saga_free(ps->saga);
    moat_audit_close(ps->audit);
    pay_store_close(ps->store);
    moat_keyring_free(ps->kr);
    for (size_t i = 0; i < ps->nbusy; i++)
        free(ps->busy[i]);
    free(ps->busy);
    free(ps);
}

static int payments_init(struct moat_service *svc)
{
    struct pay_service *ps = moat_xcalloc(1, sizeof(*ps));
    const char *dir = svc->cfg.data_dir;
    const char *step = "configuration";
    char *path = NULL;
    ps->svc = svc;

    int rc = load_config(&ps->cfg);
    if (rc != MOAT_OK)
        goto cleanup;

    step = "keyring";
    path = moat_xasprintf("%s/keys", dir);
    rc = moat_keyring_load(&ps->kr, "MOAT_PAYMENTS_KEYRING", path);
    if (rc != MOAT_OK)
        goto cleanup;

    step = "database";
    /* MOAT_DB_DSN: the store is that PostgreSQL database (moat up sets it
     * for "engine": "postgres"); unset, data_dir/payments.db. */
    struct pay_store_options so = {
        .base = svc->base, .source = svc->cfg.name, .dsn = svc->cfg.db_dsn};
    rc = pay_store_open(&ps->store, dir, svc->metrics, &so);
    if (rc == MOAT_OK)
        rc = moat_feed_register(pay_store_outbox(ps->store), svc->http);
    if (rc != MOAT_OK)
        goto cleanup;

    step = "audit log";
    free(path);
    path = moat_xasprintf("%s/%s", dir, MOAT_AUDIT_FILE);
    rc = moat_audit_open(&ps->audit, path);
    if (rc != MOAT_OK)
        goto cleanup;

    step = "http client";
    struct moat_http_client_options co = {
        .timeout_ms = ps->cfg.provider_timeout_ms,
        .connect_timeout_ms =
            ps->cfg.provider_timeout_ms <
                    MOAT_HTTP_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS
                ? ps->cfg.provider_timeout_ms
                : MOAT_HTTP_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS,
        /* Provider answers are small; a huge one is a fault, not data. */
        .max_response = 1u << 20,
    };
    rc = moat_http_client_new(&ps->client, svc->base, &co);
    if (rc != MOAT_OK)
        goto cleanup;

    step = "routes";
    rc = pay_routes_register(ps);
    if (rc != MOAT_OK)
        goto cleanup;

    if (ps->cfg.orders_url[0]) {
        step = "orders' feed";
        rc = pay_saga_new(ps);
        if (rc != MOAT_OK)
            goto cleanup;
    }

    moat_log(MOAT_LOG_INFO, "payments configured", "{s:s, s:I, s:i, s:s}",
             "provider", ps->cfg.provider_url, "provider_timeout_ms",
             (json_int_t)ps->cfg.provider_timeout_ms, "active_key",
             (int)moat_keyring_active(ps->kr), "orders",
             ps->cfg.orders_url[0] ? ps->cfg.orders_url : "(none)");
    /* A PostgreSQL store is backed up by its cluster, not by the skeleton
     * (docs/operations.md). */
    if (moat_db_engine(pay_store_db(ps->store)) == MOAT_DB_SQLITE)
        moat_backup_register_sqlite(svc, pay_store_db(ps->store));
    svc->impl = ps;
    ps = NULL;

cleanup:
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "payments service cannot start", "{s:s, s:s}",
                 "step", step, "error", moat_strerror(rc));
    payments_free(ps);
    free(path);
    return rc;
}

static bool payments_ready(struct moat_service *svc, const char **why)
{
    struct pay_service *ps = svc->impl;
    if (!ps) {
        *why = "not initialised";
        return false;
    }
    return pay_store_ready(ps->store, why);
}

static void payments_release(struct moat_service *svc)
{
    payments_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def payments_def = {
    .name = "payments",
    .default_port = 8085,
    .needs_data_dir = true,
    .ro_paths = NULL,
    .init = payments_init,
    .start = payments_start,
    .ready = payments_ready,
    .release = payments_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&payments_def, argc, argv);
}
