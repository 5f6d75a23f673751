/*
 * contracts/notifications.h - the events notifications publishes on its feed
 * (source "notifications", subject = order id). Owned by notifications;
 * consumed by readmodel. What a contract module is, why linking it keeps
 * Database per Service, and how a version is added: contracts/contract.h and
 * docs/events.md.
 *
 * Events (docs/notifications.md), schema 1:
 *   NotificationSent {notification_id, order_id, customer_id, kind,
 *                    status, delivered_at (s since the epoch), fallback}
 *
 * Every type has had one schema so far: its upcaster accepts exactly the
 * current version and returns the data as it is.
 */
#ifndef MOAT_CONTRACTS_NOTIFICATIONS_H
#define MOAT_CONTRACTS_NOTIFICATIONS_H

#include <jansson.h>

#define NOTIFICATIONS_NOTIFICATION_SENT "NotificationSent"

/* Data schema versions (the current ones). */
#define NOTIFICATIONS_SENT_SCHEMA 1 /* NotificationSent */

/*
 * The current-shape data of an event of notifications (contract_upcast: data is
 * borrowed, *out a new reference; MOAT_EINVAL, MOAT_EUNSUPPORTED or
 * MOAT_ENOTFOUND with *why set).
 */
int notifications_upcast(const char *type, int version, json_t *data,
                         json_t **out, const char **why);
/* The current schema version of an event type of notifications; 0 when not one.
 */
int notifications_schema(const char *type);

#endif
