/*
 * payments.h - the payments service's state and the seams between its
 * files: main.c (lifecycle, configuration), handlers.c (the HTTP API),
 * saga.c (orders' commands and the worker that carries them out),
 * provider.c (every call to the card processor, and the busy list both
 * callers share), store.c (the database; the only code that knows the
 * schema).
 *
 * Everything here runs on the loop thread.
 */
#ifndef PAY_PAYMENTS_H
#define PAY_PAYMENTS_H

#include <stdbool.h>
#include <stddef.h>

#include "moat/audit.h"
#include "moat/crypto.h"
#include "moat/http_client.h"
#include "moat/service.h"
#include "moat/trace.h"
#include "store.h"

#define PAY_PROVIDER_TIMEOUT_DEFAULT_MS 2000
#define PAY_PROVIDER_TIMEOUT_MAX_MS     60000
#define PAY_PROVIDER_URL_MAX            256
#define PAY_PROVIDER_KEY_MIN            16
#define PAY_PROVIDER_KEY_MAX            256

#define PAY_ORDERS_URL_MAX 256

struct pay_config {
    char provider_url[PAY_PROVIDER_URL_MAX]; /* no trailing '/' */
    const char *provider_key;                /* borrowed from the environment */
    long provider_timeout_ms;
    /* Orders' feed (MOAT_PAYMENTS_ORDERS_URL); "" = take no commands. */
    char orders_url[PAY_ORDERS_URL_MAX];
};

struct pay_saga;
struct event;

/* Per-process state, created by init and freed by release in main.c. */
struct pay_service {
    struct moat_service *svc; /* borrowed */
    struct pay_config cfg;
    struct moat_keyring *kr;         /* owned */
    struct pay_store *store;         /* owned */
    struct moat_audit *audit;        /* owned */
    struct moat_http_client *client; /* owned; calls the provider */
    struct pay_saga *saga;           /* owned; NULL without orders' feed */
    /* Operations waiting for the provider, by "idem:<caller>:<key>" and
     * "pay:<id>": a second request for either gets 409 instead of racing
     * the first. Only the loop thread touches it. */
    char **busy;
    size_t nbusy, busy_cap;
};

/* Register the /v1/payments routes; ps is borrowed and outlives them. */
int pay_routes_register(struct pay_service *ps);
#ifdef MOAT_TEST_HOOKS
/* test_hooks.c: POST /v1/test/payments/{id}. */
int pay_test_hooks_register(struct pay_service *ps);
#endif
/* An event's data for p: {payment_id, order_id, amount, currency, status
 * [, decline_code]}; never a card token or a provider id. New reference. */
json_t *pay_event_json(const struct pay_payment *p);
/* One audit record for a state change of p, actor caller; a failure is
 * logged, not returned (the database is the record). */
void pay_audit(struct pay_service *ps, const char *action, const char *caller,
               const struct pay_payment *p);

/* ---- the busy list (provider.c) ----
 * A key ("pay:<id>" while an operation on a payment waits for the
 * provider, "idem:<caller>:<key>" while an HTTP authorization does) is
 * taken by one caller at a time. take copies key; false when taken. */
bool pay_busy_find(const struct pay_service *ps, const char *key);
bool pay_busy_take(struct pay_service *ps, const char *key);
void pay_busy_drop(struct pay_service *ps, const char *key);

/* ---- the card processor (provider.c) ---- */

enum pay_op { PAY_OP_AUTHORIZE, PAY_OP_CAPTURE, PAY_OP_VOID, PAY_OP_REFUND };

/* "authorize", "capture", "void", "refund"; static. */
const char *pay_op_name(enum pay_op op);

/* What a provider call came to. */
enum pay_result {
    PAY_TRANSIENT,  /* not now: unreachable, timeout, 5xx, 429, in progress */
    PAY_AUTHORIZED, /* authorize: authorized (auth_id_enc set) */
    PAY_DECLINED,   /* authorize: declined (auth_id_enc, decline_code) */
    PAY_REJECTED,   /* authorize: 400/422, the request itself refused */
    PAY_DONE,       /* capture/void/refund done (capture: capture_id_enc) */
    PAY_REFUSED,    /* capture/void/refund refused (another 4xx) */
    PAY_BAD_ANSWER, /* an answer that cannot be used (logged) */
    PAY_INTERNAL,   /* a provider id could not be sealed (logged) */
};

struct pay_outcome {
    enum pay_result result;
    bool cancelled;       /* TRANSIENT because we are shutting down */
    bool in_progress;     /* TRANSIENT: the provider is still on it (an
                             earlier call with the same key) */
    int status;           /* provider HTTP status, 0 on a transport error */
    char *auth_id_enc;    /* sealed for the payment's row; owned or NULL */
    char *capture_id_enc; /* sealed for the payment's row; owned or NULL */
    char decline_code[PAY_CODE_MAX + 1]; /* PAY_DECLINED; else "" */
    char error[160]; /* short reason (no secrets) for logs and events */
};

/* Called once per call on the loop thread; o is valid during the call
 * only (its strings are freed after: steal them by setting them NULL). */
typedef void (*pay_provider_cb)(struct pay_outcome *o, void *arg);

/*
 * Call the provider for op on p (borrowed; a copy is not needed after
 * return) with the deterministic Idempotency-Key "<p->id>:<op>", so a
 * retry, even after a restart, gets the provider's stored outcome instead
 * of a second operation. card_token (authorize only, borrowed) goes into
 * the body, which is wiped after sending. The caller counts the attempt
 * first. MOAT_OK: cb runs exactly once, never from inside this call;
 * MOAT_EPRECOND: the payment's stored provider id cannot be opened
 * (logged); MOAT_EIO: the call cannot be started (logged). cb is not
 * called on an error.
 */
int pay_provider_call(struct pay_service *ps, enum pay_op op,
                      const struct pay_payment *p, const char *card_token,
                      const struct moat_trace *trace, pay_provider_cb cb,
                      void *arg);

/* Seal/open a provider id or card token for its column, bound to the
 * payment's row (ad_prefix + payment id). seal: new string or NULL. */
#define PAY_AD_AUTH_ID    "payments.provider_auth_id:"
#define PAY_AD_CAPTURE_ID "payments.provider_capture_id:"
#define PAY_AD_CARD_TOKEN "payments.card_token:"
char *pay_seal(struct pay_service *ps, const char *ad_prefix,
               const char *pay_id, const char *value);
/* Opened plaintext (free with moat_free_secret) or NULL. */
char *pay_unseal(struct pay_service *ps, const char *ad_prefix,
                 const char *pay_id, const char *sealed);

/* Letters, digits and the characters of extra, 1..max bytes. */
bool pay_charset_ok(const char *s, size_t max, const char *extra);
bool pay_currency_ok(const char *s);

/* ---- the saga (saga.c) ---- */

/* Subscribe to orders' feed (source: the consumer's, owned by the saga),
 * register metrics, and start the worker. ps outlives the saga. */
int pay_saga_new(struct pay_service *ps);
/* Start pulling orders' feed (once the service listens). */
void pay_saga_start(struct pay_saga *sg);
/* Stop before the provider client is freed: calls cancelled from then on
 * record nothing. */
void pay_saga_stop(struct pay_saga *sg);
void pay_saga_free(struct pay_saga *sg);

#endif /* PAY_PAYMENTS_H */
