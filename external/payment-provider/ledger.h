/*
 * ledger.h - the payment provider's own database ($MOAT_DATA_DIR/
 * payprovider.db): authorizations, refunds, the append-only ledger of
 * every state change, and the idempotency records. ledger.c is the only
 * code that knows the schema.
 *
 * Invariants, enforced by the schema as well as by api.c: captured <=
 * authorized, refunded <= captured, a void only before a capture, and
 * every state change is a ledger row with its time. The writes below run
 * inside pp_ledger_begin() / pp_ledger_commit(), so an operation, its
 * ledger rows and its idempotency record commit together or not at all.
 *
 * Strings in the structs are fixed-size copies; pointers returned through
 * out-parameters are owned by the caller, who frees them as stated.
 */
#ifndef PP_LEDGER_H
#define PP_LEDGER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/metrics.h"
#include "payprovider.h"

#define PP_ID_MAX           40  /* "auth_" + 26 characters, with room */
#define PP_REFERENCE_MAX    64  /* code points */
#define PP_REFERENCE_BYTES  257 /* 64 code points of up to 4 bytes, NUL */
#define PP_CARD_TOKEN_MAX   64
#define PP_DECLINE_MAX      32
#define PP_FINGERPRINT_LEN  64 /* hex SHA-256 */
#define PP_IDEM_KEY_MAX     255
#define PP_BY_REFERENCE_MAX 100 /* authorizations listed per reference */

enum pp_auth_status {
    PP_AUTHORIZED = 0,
    PP_DECLINED,
    PP_CAPTURED,
    PP_VOIDED,
};

/* "authorized", "declined", "captured", "voided". */
const char *pp_auth_status_name(enum pp_auth_status s);

struct pp_authorization {
    char id[PP_ID_MAX];
    char merchant[PP_MERCHANT_ID_MAX + 1];
    char reference[PP_REFERENCE_BYTES];
    char card_token[PP_CARD_TOKEN_MAX + 1];
    char currency[4];
    int64_t amount; /* authorized, minor units */
    enum pp_auth_status status;
    char decline_code[PP_DECLINE_MAX]; /* "" unless declined */
    int64_t captured_amount;           /* 0 until captured */
    int64_t refunded_amount;           /* sum of refunds */
    char capture_id[PP_ID_MAX];        /* "" until captured */
    int64_t created_ms, updated_ms;    /* wall clock */
    int64_t captured_ms, voided_ms;    /* 0 when it did not happen */
};

struct pp_refund {
    char id[PP_ID_MAX];
    int64_t amount;
    int64_t created_ms;
};

/* A completed POST, replayed for a retry with the same key. */
struct pp_idem_record {
    char fingerprint[PP_FINGERPRINT_LEN + 1]; /* of method, path, body */
    int status;
    char *content_type; /* owned */
    char *body;         /* owned, the exact bytes sent */
    char *location;     /* owned; NULL when the reply had none */
    int64_t created_ms;
};

void pp_idem_record_release(struct pp_idem_record *r);

struct pp_ledger;

/* Open (creating) and migrate; caller closes with pp_ledger_close(). */
int pp_ledger_open(struct pp_ledger **out, const char *data_dir,
                   struct moat_metrics *metrics);
void pp_ledger_close(struct pp_ledger *l);
bool pp_ledger_ready(struct pp_ledger *l, const char **why);

int pp_ledger_begin(struct pp_ledger *l);
int pp_ledger_commit(struct pp_ledger *l);
void pp_ledger_rollback(struct pp_ledger *l);

/* Insert a new authorization (authorized or declined) and its ledger row. */
int pp_ledger_auth_insert(struct pp_ledger *l,
                          const struct pp_authorization *a);
/* The merchant's authorization id; MOAT_ENOTFOUND for another merchant's. */
int pp_ledger_auth_get(struct pp_ledger *l, const char *merchant,
                       const char *id, struct pp_authorization *out);
/* The authorization that capture_id captured, for the merchant. */
int pp_ledger_auth_by_capture(struct pp_ledger *l, const char *merchant,
                              const char *capture_id,
                              struct pp_authorization *out);
/*
 * Record a's capture (a->capture_id, captured_amount, captured_ms set by
 * the caller). MOAT_ECONFLICT when a is no longer "authorized".
 */
int pp_ledger_capture(struct pp_ledger *l, const struct pp_authorization *a);
/* Void a at now_ms. MOAT_ECONFLICT when a is no longer "authorized". */
int pp_ledger_void(struct pp_ledger *l, const struct pp_authorization *a,
                   int64_t now_ms);
/* Record refund r of a's capture. MOAT_ECONFLICT when it would refund
 * more than was captured. */
int pp_ledger_refund(struct pp_ledger *l, const struct pp_authorization *a,
                     const struct pp_refund *r);
/* a's refunds, oldest first; *out (may be NULL when *n is 0) is freed by
 * the caller with free(). */
int pp_ledger_refunds(struct pp_ledger *l, const char *auth_id,
                      struct pp_refund **out, size_t *n);
/* The merchant's authorizations for reference, oldest first, at most
 * PP_BY_REFERENCE_MAX; *out freed by the caller with free(). */
int pp_ledger_by_reference(struct pp_ledger *l, const char *merchant,
                           const char *reference, struct pp_authorization **out,
                           size_t *n);
/*
 * Totals per currency from the ledger rows, checked against the
 * authorizations table; *out is a new JSON object (see
 * docs/payment-provider.md) the caller releases.
 */
int pp_ledger_summary(struct pp_ledger *l, const char *merchant, json_t **out);

/*
 * The merchant's record for key, if created at or after not_before_ms
 * (older ones have expired). MOAT_ENOTFOUND when there is none. Release
 * *out with pp_idem_record_release().
 */
int pp_ledger_idem_get(struct pp_ledger *l, const char *merchant,
                       const char *key, int64_t not_before_ms,
                       struct pp_idem_record *out);
/* Store (replacing an expired one) the record of a completed POST. */
int pp_ledger_idem_put(struct pp_ledger *l, const char *merchant,
                       const char *key, const struct pp_idem_record *r);
/* Delete up to limit records created before before_ms; *deleted counts. */
int pp_ledger_idem_purge(struct pp_ledger *l, int64_t before_ms, int limit,
                         int *deleted);

#ifdef MOAT_TEST_HOOKS
/* Test builds only: write the newest ledger entry twice, as a bug would
 * (the entries are append-only; the authorization keeps its state).
 * MOAT_ENOTFOUND when there is none. */
int pp_ledger_test_repeat_last(struct pp_ledger *l);
#endif

#endif /* PP_LEDGER_H */
