/*
 * store.h - the payments database ($MOAT_DATA_DIR/payments.db, SQLite with
 * synchronous=FULL): payments, idempotency records and the event outbox.
 * store.c is the only code that knows the schema.
 *
 * Sensitive data: the provider's authorization and capture ids are stored
 * sealed (moat/crypto.h) by the caller; card tokens are never passed here
 * at all. Idempotency fingerprints are keyed hashes of the request, so
 * they do not reveal the card token either.
 *
 * Ownership: strings inside struct pay_payment and struct pay_idem that are
 * char * are malloc'd and freed by pay_payment_release / pay_idem_release.
 * Not thread-safe: the loop thread only.
 */
#ifndef PAY_STORE_H
#define PAY_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/metrics.h"

#define PAY_ID_MAX       40  /* "pay_" + 26 + NUL, rounded up */
#define PAY_ORDER_ID_MAX 64  /* bytes of an order id */
#define PAY_STATUS_MAX   16  /* "authorized" + NUL, rounded up */
#define PAY_CALLER_MAX   33  /* a service name, as moat/auth.h */
#define PAY_IDEM_KEY_MAX 255 /* visible ASCII characters */
#define PAY_CODE_MAX     64  /* a provider decline code */

struct pay_store;

struct pay_payment {
    char id[PAY_ID_MAX];
    char order_id[PAY_ORDER_ID_MAX + 1];
    int64_t amount; /* minor units */
    char currency[4];
    char status[PAY_STATUS_MAX];
    char decline_code[PAY_CODE_MAX + 1]; /* "" when none */
    char created_by[PAY_CALLER_MAX];     /* calling service */
    char *auth_id_enc;    /* sealed provider authorization id; may be NULL */
    char *capture_id_enc; /* sealed provider capture id; may be NULL */
    int64_t attempts;     /* provider calls made for this payment */
    int64_t version;      /* +1 per state change */
    int64_t created_ms, updated_ms;
};

void pay_payment_release(struct pay_payment *p);

struct pay_idem {
    char fingerprint[65];
    char payment_id[PAY_ID_MAX];
    int status;     /* stored response status; 0 while not completed */
    char *response; /* stored response body; NULL while not completed */
};

void pay_idem_release(struct pay_idem *i);

/* A state change, applied with its event and audit-free (the caller
 * audits after commit). Strings are borrowed. */
struct pay_transition {
    const char *id;
    const char *from;           /* expected current status */
    const char *to;             /* new status */
    const char *auth_id_enc;    /* NULL: keep */
    const char *capture_id_enc; /* NULL: keep */
    const char *decline_code;   /* NULL: keep */
    int64_t now_ms;             /* the new updated_at_ms */
    const char *event_type;     /* NULL: no event */
    json_t *event_data;         /* borrowed; with event_type */
    /* When set, the idempotency record (caller, key) gets this response in
     * the same transaction, so a replay never disagrees with the state. */
    const char *idem_caller;
    const char *idem_key;
    int idem_status;
    const char *idem_response;
};

struct pay_store_options {
    struct event_base *base; /* borrowed */
    const char *source;      /* service name for events */
};

/* Open (creating, migrating) <data_dir>/payments.db and its outbox.
 * Caller closes with pay_store_close. */
int pay_store_open(struct pay_store **out, const char *data_dir,
                   struct moat_metrics *metrics,
                   const struct pay_store_options *opts);
void pay_store_close(struct pay_store *s);
struct moat_outbox *pay_store_outbox(struct pay_store *s);
bool pay_store_ready(struct pay_store *s, const char **why);

/* MOAT_OK and *out filled, MOAT_ENOTFOUND, or MOAT_EDB. */
int pay_store_get(struct pay_store *s, const char *id, struct pay_payment *out);
/* Call fn for every payment of order_id, oldest first. */
int pay_store_list_by_order(struct pay_store *s, const char *order_id,
                            void (*fn)(const struct pay_payment *, void *),
                            void *arg);
/* Idempotency record of (caller, key): MOAT_OK, MOAT_ENOTFOUND, MOAT_EDB. */
int pay_store_idem_get(struct pay_store *s, const char *caller, const char *key,
                       struct pay_idem *out);
/*
 * Insert p (status pending) and the idempotency record (caller, key,
 * fingerprint) -> p->id in one transaction. MOAT_ECONFLICT when the order
 * already has a payment (*existing gets its id) or the key is taken.
 */
int pay_store_create(struct pay_store *s, const struct pay_payment *p,
                     const char *caller, const char *key,
                     const char *fingerprint, char existing[PAY_ID_MAX]);
/* attempts + 1 (committed before the provider is called, so a crash in
 * between still counts it). */
int pay_store_count_attempt(struct pay_store *s, const char *id);
/* Apply t atomically. MOAT_ECONFLICT when the payment is not in t->from. */
int pay_store_transition(struct pay_store *s, const struct pay_transition *t);
/* {"currencies": {CUR: {status: {"count", "amount"}}}}; new reference. */
int pay_store_summary(struct pay_store *s, json_t **out);

#endif /* PAY_STORE_H */
