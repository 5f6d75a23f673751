/*
 * store.h - the payments database ($MOAT_DATA_DIR/payments.db, SQLite with
 * synchronous=FULL): payments, idempotency records, the event outbox, the
 * consumer's cursor on orders' feed and the saga's commands (one row per
 * order and command, the queued ones being the worker's queue). store.c
 * is the only code that knows the schema.
 *
 * Sensitive data: the provider's authorization and capture ids are stored
 * sealed (moat/crypto.h) by the caller; so is the card token of a saga
 * payment, kept only until the provider has answered its authorization
 * (the HTTP API never passes a card token here at all). Idempotency
 * fingerprints are keyed hashes of the request, so they do not reveal the card
 * token either.
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
    bool wipe_card_token;       /* the provider has answered: forget it */
    int64_t now_ms;             /* the new updated_at_ms */
    const char *event_type;     /* NULL: no event */
    const char *subject;        /* the event's subject: the order id */
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
    const char *dsn;         /* MOAT_DB_DSN (borrowed); NULL or "": SQLite */
};

/* Open (creating, migrating) <data_dir>/payments.db, or the PostgreSQL
 * database opts->dsn names, and its outbox. Caller closes with
 * pay_store_close. */
int pay_store_open(struct pay_store **out, const char *data_dir,
                   struct moat_metrics *metrics,
                   const struct pay_store_options *opts);
void pay_store_close(struct pay_store *s);
struct moat_outbox *pay_store_outbox(struct pay_store *s);
/* The connection itself (borrowed), for the consumer of orders' feed:
 * its transactions and ours take turns on the loop thread. */
struct moat_db *pay_store_db(struct pay_store *s);
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
/* The same inside the caller's open transaction (t->idem_* ignored). */
int pay_store_apply(struct pay_store *s, const struct pay_transition *t);
/* {"currencies": {CUR: {status: {"count", "amount"}}}}; new reference. */
int pay_store_summary(struct pay_store *s, json_t **out);
/* Call fn for at most limit payments with id > after ("" or NULL: from
 * the first), in id order. */
int pay_store_list(struct pay_store *s, const char *after, int limit,
                   void (*fn)(const struct pay_payment *, void *), void *arg);

#define PAY_NSTATUS 7
struct pay_stats {
    int64_t by_status[PAY_NSTATUS]; /* indexed like pay_status_name */
    int64_t queued;                 /* saga commands waiting */
    int64_t oldest_queued_ms;       /* their oldest's queued time; 0 none */
};
int pay_store_stats(struct pay_store *s, struct pay_stats *out);
/* "pending", "authorized", ... for i < PAY_NSTATUS; static. */
const char *pay_status_name(size_t i);

/* ---- transactions ----
 * One at a time on the connection, opened and closed within one loop
 * callback (the consumer opens its own the same way). Commit wakes the
 * feed's readers when an event was appended. A savepoint inside one
 * undoes one step of a batch (undo = ROLLBACK TO and RELEASE). */
int pay_store_begin(struct pay_store *s);
int pay_store_commit(struct pay_store *s);
void pay_store_rollback(struct pay_store *s);
int pay_store_savepoint(struct pay_store *s);
int pay_store_savepoint_release(struct pay_store *s);
void pay_store_savepoint_undo(struct pay_store *s);
/* Append an event inside the open transaction (data borrowed). */
int pay_store_event(struct pay_store *s, const char *type, const char *subject,
                    json_t *data);

/* ---- the saga (docs/saga.md); all inside an open transaction ---- */

#define PAY_COMMAND_MAX 16 /* "authorize" + NUL, rounded up */
#define PAY_TRACE_MAX   56 /* a traceparent + NUL */

/* A queued command as the worker sees it. */
struct pay_command {
    int64_t id; /* queue order */
    char order_id[PAY_ORDER_ID_MAX + 1];
    char command[PAY_COMMAND_MAX]; /* authorize, capture, void, refund */
    char payment_id[PAY_ID_MAX];
    int64_t amount;   /* capture: the amount asked for */
    int64_t attempts; /* failed provider calls for it so far */
    int64_t queued_ms;
    char traceparent[PAY_TRACE_MAX]; /* the command's; "" when none */
};

/* A command as applied from the feed; strings borrowed. */
struct pay_command_new {
    const char *order_id;
    const char *command;
    const char *payment_id; /* NULL: none (a tombstone, a refusal) */
    const char *state;      /* "queued", or "done" when answered at once */
    int64_t amount;
    const char *reason;      /* may be NULL */
    int64_t feed_seq;        /* its sequence in orders' feed */
    const char *traceparent; /* may be NULL */
    const char *reply;       /* the reply's type when done; may be NULL */
    int64_t now_ms;
};

/* *found: the order already had this command. */
int pay_store_command_find(struct pay_store *s, const char *order_id,
                           const char *command, bool *found);
/* *yes: the order was voided or refunded before it had a payment. */
int pay_store_tombstoned(struct pay_store *s, const char *order_id, bool *yes);
/* The order's payment (the live one, else the newest failed one):
 * MOAT_OK and *out filled (release it), MOAT_ENOTFOUND, MOAT_EDB. */
int pay_store_order_payment(struct pay_store *s, const char *order_id,
                            struct pay_payment *out);
/* Insert p as pending with its customer and sealed card token.
 * MOAT_ECONFLICT when the order already has a live payment. */
int pay_store_saga_create(struct pay_store *s, const struct pay_payment *p,
                          const char *customer_id, const char *card_token_enc);
/* MOAT_ECONFLICT when the order already has this command. */
int pay_store_command_add(struct pay_store *s, const struct pay_command_new *c);
/* fn for each queued command that heads its payment's queue and whose
 * backoff is over (next_at <= now_ms), oldest first, at most limit. */
int pay_store_commands_ready(struct pay_store *s, int64_t now_ms, int limit,
                             void (*fn)(const struct pay_command *, void *),
                             void *arg);
/* The earliest next attempt of a queued command, -1 when none. */
int pay_store_commands_next_at(struct pay_store *s, int64_t *next_ms);
/* The sealed card token of a payment (*enc NULL once wiped; free it). */
int pay_store_card_token(struct pay_store *s, const char *payment_id,
                         char **enc);
/* Close a queued command: state "done" (reply: the type answered) or
 * "failed" (needs an operator; error says why). MOAT_ECONFLICT when it
 * was not queued. */
int pay_store_command_done(struct pay_store *s, int64_t id, const char *state,
                           const char *reply, const char *error,
                           int64_t now_ms);
/* A failed provider call: attempts + 1, next try at next_at_ms. */
int pay_store_command_retry(struct pay_store *s, int64_t id, int64_t next_at_ms,
                            const char *error);
/* *first: this payment had not reported an unavailable provider yet
 * (now it has). */
int pay_store_mark_unavailable(struct pay_store *s, const char *payment_id,
                               bool *first);

#endif /* PAY_STORE_H */
