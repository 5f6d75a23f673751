/*
 * contracts/payments.h - the events payments publishes on its feed (source
 * "payments", subject = order id). Owned by payments; consumed by orders
 * (the saga), readmodel, reporting. What a contract module is, why linking
 * it keeps Database per Service, and how a version is added:
 * contracts/contract.h and docs/events.md.
 *
 * Replies to the order saga's commands (docs/payments.md), schema 1:
 *   PaymentAuthorized, PaymentDeclined, PaymentCaptured,
 *   PaymentCaptureFailed, PaymentVoided, PaymentRefunded
 *                   {payment_id (null when the order has no payment),
 *                    order_id, amount, currency, status, ...}
 *   PaymentProviderUnavailable {order_id, ...}: no status; the payment's
 *                   next event says where it stands
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_PAYMENTS_H
#define MOAT_CONTRACTS_PAYMENTS_H

#include <jansson.h>

#define PAYMENTS_PAYMENT_AUTHORIZED           "PaymentAuthorized"
#define PAYMENTS_PAYMENT_DECLINED             "PaymentDeclined"
#define PAYMENTS_PAYMENT_PROVIDER_UNAVAILABLE "PaymentProviderUnavailable"
#define PAYMENTS_PAYMENT_CAPTURED             "PaymentCaptured"
#define PAYMENTS_PAYMENT_CAPTURE_FAILED       "PaymentCaptureFailed"
#define PAYMENTS_PAYMENT_VOIDED               "PaymentVoided"
#define PAYMENTS_PAYMENT_REFUNDED             "PaymentRefunded"

/* Data schema versions (the current ones). */
#define PAYMENTS_EVENT_SCHEMA 1 /* every payments event */

/*
 * The current-shape data of an event of payments (contract_upcast: data is
 * borrowed, *out a new reference; MOAT_EINVAL, MOAT_EUNSUPPORTED or
 * MOAT_ENOTFOUND with *why set).
 */
int payments_upcast(const char *type, int version, json_t *data, json_t **out,
                    const char **why);
/* The current schema version of an event type of payments; 0 when not one. */
int payments_schema(const char *type);

#endif
