/*
 * payments.h - the payments service's state and the seams between its
 * files: main.c (lifecycle, configuration), handlers.c (the HTTP API and
 * the calls to the card processor), store.c (the database; the only code
 * that knows the schema).
 */
#ifndef PAY_PAYMENTS_H
#define PAY_PAYMENTS_H

#include <stddef.h>

#include "moat/audit.h"
#include "moat/crypto.h"
#include "moat/http_client.h"
#include "moat/service.h"
#include "store.h"

#define PAY_PROVIDER_TIMEOUT_DEFAULT_MS 2000
#define PAY_PROVIDER_TIMEOUT_MAX_MS     60000
#define PAY_PROVIDER_URL_MAX            256
#define PAY_PROVIDER_KEY_MIN            16
#define PAY_PROVIDER_KEY_MAX            256

struct pay_config {
    char provider_url[PAY_PROVIDER_URL_MAX]; /* no trailing '/' */
    const char *provider_key;                /* borrowed from the environment */
    long provider_timeout_ms;
};

/* Per-process state, created by init and freed by release in main.c. */
struct pay_service {
    struct moat_service *svc; /* borrowed */
    struct pay_config cfg;
    struct moat_keyring *kr;         /* owned */
    struct pay_store *store;         /* owned */
    struct moat_audit *audit;        /* owned */
    struct moat_http_client *client; /* owned; calls the provider */
    /* Operations waiting for the provider, by "idem:<caller>:<key>" and
     * "pay:<id>": a second request for either gets 409 instead of racing
     * the first. Only the loop thread touches it. */
    char **busy;
    size_t nbusy, busy_cap;
};

/* Register the /v1/payments routes; ps is borrowed and outlives them. */
int pay_routes_register(struct pay_service *ps);

#endif /* PAY_PAYMENTS_H */
