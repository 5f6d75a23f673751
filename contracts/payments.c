/* payments.c - payments's event contract: contracts/payments.h. */
#include "moat/common.h"

#include "contract.h"
#include "payments.h"

static const struct contract_event events[] = {
    {PAYMENTS_PAYMENT_AUTHORIZED, PAYMENTS_EVENT_SCHEMA, NULL},
    {PAYMENTS_PAYMENT_DECLINED, PAYMENTS_EVENT_SCHEMA, NULL},
    {PAYMENTS_PAYMENT_PROVIDER_UNAVAILABLE, PAYMENTS_EVENT_SCHEMA, NULL},
    {PAYMENTS_PAYMENT_CAPTURED, PAYMENTS_EVENT_SCHEMA, NULL},
    {PAYMENTS_PAYMENT_CAPTURE_FAILED, PAYMENTS_EVENT_SCHEMA, NULL},
    {PAYMENTS_PAYMENT_VOIDED, PAYMENTS_EVENT_SCHEMA, NULL},
    {PAYMENTS_PAYMENT_REFUNDED, PAYMENTS_EVENT_SCHEMA, NULL},
};

int payments_upcast(const char *type, int version, json_t *data, json_t **out,
                    const char **why)
{
    return contract_upcast(events, MOAT_ARRAY_LEN(events), type, version, data,
                           out, why);
}

int payments_schema(const char *type)
{
    return contract_schema(events, MOAT_ARRAY_LEN(events), type);
}
