/*
 * events.c - orders' events as notifications applies them: one row per
 * order state change, with the email's subject and body.
 *
 * Orders' event contract (type names, data schemas, versions and
 * upcasters) is contracts/orders.h, shared with orders and its other
 * consumers: every event is upcast by it first, so the code here sees the
 * current schema only. The status a notification is keyed by comes from
 * the event TYPE (the data's status must agree). A newer schema version is
 * refused, so the event is parked as a dead letter until notifications is
 * rebuilt with the newer contract and it is redriven.
 *
 * Handlers are deterministic (replay runs them again on a scratch database
 * and compares): the id, the text and every stored time come from the
 * event. The id is the event's time (48 bits of ms, so ids sort by when
 * orders committed the change) followed by 80 bits of BLAKE2b of
 * (order_id, status), in moat/id.h's format: the same state change always
 * gets the same id, hence the same Maildir file name and Message-ID.
 */
#include "moat/common.h"

#include "moat/id.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/orders.h"
#include "moat/buf.h"
#include "moat/log.h"
#include "moat/trace.h"
#include "notifications.h"
#include "store.h"

#define TOTAL_MAX       1000000000000000LL /* 10^15 minor units */
#define LINES_MAX       50                 /* orders' own cap */
#define LINE_NAME_CHARS 120 /* code points of a product name in a mail */
#define REASON_MAX      64

const char *const ntf_order_event_types[] = {
    ORDERS_ORDER_PLACED,
    ORDERS_ORDER_CONFIRMED,
    ORDERS_ORDER_CANCELLED,
    NULL,
};

/* ---- small validators ---- */

/* Ids as moat services make them, loosely: 1..64 of [A-Za-z0-9_-]. */
static bool key_valid(const char *s)
{
    return moat_ref_valid(s, NTF_KEY_MAX);
}

static bool currency_valid(const char *c)
{
    return c && strlen(c) == 3 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' &&
           c[1] <= 'Z' && c[2] >= 'A' && c[2] <= 'Z';
}

/* ---- the notification id ---- */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* "ntf_" + 26 characters of 6 bytes of time_ms and 10 bytes of
 * BLAKE2b(order_id NUL status), as moat_id_new lays out its bytes. */
static void notification_id(int64_t time_ms, const char *order_id,
                            const char *status, char out[NTF_ID_LEN + 1])
{
    uint8_t bytes[16];
    uint64_t t = (uint64_t)time_ms & ((UINT64_C(1) << 48) - 1);
    for (int i = 0; i < 6; i++)
        bytes[i] = (uint8_t)(t >> (8 * (5 - i)));
    crypto_generichash_state h;
    static const char ctx[] = "moat-notification-id";
    crypto_generichash_init(&h, NULL, 0, 10);
    crypto_generichash_update(&h, (const unsigned char *)ctx, sizeof(ctx));
    crypto_generichash_update(&h, (const unsigned char *)order_id,
                              strlen(order_id) + 1);
    crypto_generichash_update(&h, (const unsigned char *)status,
                              strlen(status));
    crypto_generichash_final(&h, bytes + 6, 10);

    memcpy(out, NTF_ID_PREFIX, 4);
    /* 26 characters carry 130 bits: the first two are always zero. */
    for (int i = 0; i < 26; i++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++) {
            int bit = i * 5 - 2 + k;
            v <<= 1;
            if (bit >= 0)
                v |= (bytes[bit / 8] >> (7 - bit % 8)) & 1u;
        }
        out[4 + i] = crockford[v];
    }
    out[NTF_ID_LEN] = '\0';
}

/* ---- text ---- */

/* Digits after the decimal point of an ISO 4217 currency. */
static int currency_exponent(const char *c)
{
    static const char *const zero[] = {
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG",
        "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
    };
    static const char *const three[] = {
        "BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND",
    };
    static const char *const four[] = {"CLF", "UYW"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(zero); i++)
        if (strcmp(c, zero[i]) == 0)
            return 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(three); i++)
        if (strcmp(c, three[i]) == 0)
            return 3;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(four); i++)
        if (strcmp(c, four[i]) == 0)
            return 4;
    return 2;
}

/* "24.00 EUR", "1500 JPY": minor units as the currency writes them. */
static void add_money(struct moat_buf *b, int64_t minor, const char *currency)
{
    int exp = currency_exponent(currency);
    int64_t div = 1;
    for (int i = 0; i < exp; i++)
        div *= 10;
    if (exp == 0)
        moat_buf_printf(b, "%lld %s", (long long)minor, currency);
    else
        moat_buf_printf(b, "%lld.%0*lld %s", (long long)(minor / div), exp,
                        (long long)(minor % div), currency);
}

/*
 * Append s, valid UTF-8 (it came from JSON), cut to at most max_chars code
 * points, with control characters (line breaks included: one line per
 * item) turned into spaces.
 */
static void add_plain(struct moat_buf *b, const char *s, size_t max_chars)
{
    size_t chars = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p & 0xC0) != 0x80 && chars++ == max_chars) {
            moat_buf_addstr(b, "...");
            return;
        }
        moat_buf_addch(b, (*p < 0x20 || *p == 0x7f) ? ' ' : (char)*p);
    }
}

/* A cancel reason (docs/saga.md) in plain words, completing "because ". */
static const char *reason_words(const char *reason)
{
    static const struct {
        const char *code, *words;
    } reasons[] = {
        {"out_of_stock", "some of the items are out of stock"},
        {"reservation_limit",
         "you already have too many orders waiting for stock"},
        {"payment_declined", "your payment was declined"},
        {"provider_unavailable",
         "we could not reach the payment provider in time"},
        {"deadline_exceeded", "we could not complete it in time"},
        {"capture_failed", "the payment could not be completed"},
        {"customer_cancelled", "you cancelled it"},
        {"invalid_order", "it could not be processed"},
    };
    for (size_t i = 0; reason && i < MOAT_ARRAY_LEN(reasons); i++)
        if (strcmp(reason, reasons[i].code) == 0)
            return reasons[i].words;
    return "it could not be completed";
}

static const char SIGNATURE[] = "\n-- \nmoat\n";

/* ---- the events ---- */

/* What every order event carries, validated. */
struct order_event {
    const char *order_id, *customer_id, *currency;
    int64_t total;
};

static int order_common(const struct moat_event *ev, const char *status,
                        struct order_event *o, const char **why)
{
    json_t *d = ev->data;
    if (!json_is_object(d)) {
        *why = "event data is not an object";
        return MOAT_EINVAL;
    }
    o->order_id = json_string_value(json_object_get(d, "order_id"));
    if (!key_valid(o->order_id) || !ev->subject ||
        strcmp(o->order_id, ev->subject) != 0) {
        *why = "data.order_id is not an id matching the event subject";
        return MOAT_EINVAL;
    }
    o->customer_id = json_string_value(json_object_get(d, "customer_id"));
    if (!key_valid(o->customer_id)) {
        *why = "data.customer_id is not an id";
        return MOAT_EINVAL;
    }
    json_t *st = json_object_get(d, "status");
    if (st &&
        (!json_is_string(st) || strcmp(json_string_value(st), status) != 0)) {
        *why = "data.status does not match the event type";
        return MOAT_EINVAL;
    }
    json_t *total = json_object_get(d, "total");
    o->currency = json_string_value(json_object_get(d, "currency"));
    if (!json_is_integer(total) || json_integer_value(total) < 0 ||
        json_integer_value(total) > TOTAL_MAX || !currency_valid(o->currency)) {
        *why = "data.total is not an amount in minor units or data.currency "
               "not an ISO 4217 code";
        return MOAT_EINVAL;
    }
    o->total = json_integer_value(total);
    return MOAT_OK;
}

static int text_placed(const struct moat_event *ev, const struct order_event *o,
                       struct moat_buf *subject, struct moat_buf *body,
                       const char **why)
{
    json_t *lines = json_object_get(ev->data, "lines");
    if (lines &&
        (!json_is_array(lines) || json_array_size(lines) > LINES_MAX)) {
        *why = "data.lines is not an array of at most 50 lines";
        return MOAT_EINVAL;
    }
    moat_buf_printf(subject, "We have received your order %s", o->order_id);
    moat_buf_printf(body,
                    "Hello,\n\nthank you for your order %s. We have received "
                    "it and are now\nreserving the items and taking the "
                    "payment.\n\n",
                    o->order_id);
    size_t i;
    json_t *line;
    json_array_foreach(lines, i, line)
    {
        const char *name = json_string_value(json_object_get(line, "name"));
        json_t *qty = json_object_get(line, "quantity");
        json_t *price = json_object_get(line, "unit_price");
        if (!name || !json_is_integer(qty) || json_integer_value(qty) < 1 ||
            json_integer_value(qty) > 1000000 || !json_is_integer(price) ||
            json_integer_value(price) < 0 ||
            json_integer_value(price) > TOTAL_MAX) {
            *why = "a line lacks name, quantity or unit_price";
            return MOAT_EINVAL;
        }
        moat_buf_printf(body, "  %lld x ", (long long)json_integer_value(qty));
        add_plain(body, name, LINE_NAME_CHARS);
        moat_buf_addstr(body, " at ");
        add_money(body, json_integer_value(price), o->currency);
        moat_buf_addch(body, '\n');
    }
    moat_buf_addstr(body, i ? "\nTotal: " : "Total: ");
    add_money(body, o->total, o->currency);
    moat_buf_addstr(body, "\n\nWe will write again as soon as your order is "
                          "confirmed.\n");
    return MOAT_OK;
}

static int text_confirmed(const struct moat_event *ev,
                          const struct order_event *o, struct moat_buf *subject,
                          struct moat_buf *body, const char **why)
{
    MOAT_UNUSED(ev);
    MOAT_UNUSED(why);
    moat_buf_printf(subject, "Your order %s is confirmed", o->order_id);
    moat_buf_printf(body,
                    "Hello,\n\nyour order %s is confirmed: the items are "
                    "yours and the payment\nis complete.\n\nTotal charged: ",
                    o->order_id);
    add_money(body, o->total, o->currency);
    moat_buf_addch(body, '\n');
    return MOAT_OK;
}

static int text_cancelled(const struct moat_event *ev,
                          const struct order_event *o, struct moat_buf *subject,
                          struct moat_buf *body, const char **why)
{
    json_t *r = json_object_get(ev->data, "reason");
    if (r && !json_is_null(r) &&
        (!json_is_string(r) || json_string_length(r) > REASON_MAX)) {
        *why = "data.reason is not a short string";
        return MOAT_EINVAL;
    }
    const char *reason = json_string_value(r);
    moat_buf_printf(subject, "Your order %s has been cancelled", o->order_id);
    moat_buf_printf(body,
                    "Hello,\n\nyour order %s has been cancelled because %s.\n"
                    "\nOrder total: ",
                    o->order_id, reason_words(reason));
    add_money(body, o->total, o->currency);
    moat_buf_addstr(body, "\nNothing is charged for a cancelled order: any "
                          "payment taken is\nrefunded.\n");
    return MOAT_OK;
}

/* ---- dispatch ---- */

struct event_kind {
    const char *type;
    const char *status; /* the order status the event reports */
    const char *kind;   /* the notification's kind */
    int (*text)(const struct moat_event *ev, const struct order_event *o,
                struct moat_buf *subject, struct moat_buf *body,
                const char **why);
};

static const struct event_kind kinds[] = {
    {ORDERS_ORDER_PLACED, "pending", "order.placed", text_placed},
    {ORDERS_ORDER_CONFIRMED, "confirmed", "order.confirmed", text_confirmed},
    {ORDERS_ORDER_CANCELLED, "cancelled", "order.cancelled", text_cancelled},
};

/* ev of kind k, its data in the current schema. */
static int apply_current(struct moat_db *db, const struct moat_event *ev,
                         const struct event_kind *k, struct ntf_service *s,
                         const char **why)
{
    struct order_event o = {0};
    int rc = order_common(ev, k->status, &o, why);
    if (rc != MOAT_OK)
        return rc;
    int64_t time_ms;
    if (moat_time_parse_rfc3339(ev->time, &time_ms) != MOAT_OK || time_ms < 0) {
        *why = "the event's time is not an RFC 3339 time";
        return MOAT_EINVAL;
    }

    struct moat_buf subject = MOAT_BUF_INIT, body = MOAT_BUF_INIT;
    rc = k->text(ev, &o, &subject, &body, why);
    if (rc == MOAT_OK) {
        moat_buf_addstr(&body, SIGNATURE);
        char id[NTF_ID_LEN + 1];
        notification_id(time_ms, o.order_id, k->status, id);
        char trace_id[33] = "";
        if (ev->traceparent && moat_traceparent_valid(ev->traceparent))
            snprintf(trace_id, sizeof(trace_id), "%.32s", ev->traceparent + 3);
        /* The row borrows everything (const views of the event). */
        const struct ntf_row row = {
            .id = id,
            .order_id = (char *)o.order_id,
            .status = (char *)k->status,
            .customer_id = (char *)o.customer_id,
            .kind = (char *)k->kind,
            .subject = (char *)moat_buf_str(&subject),
            .body = (char *)moat_buf_str(&body),
            .trace_id = trace_id[0] ? trace_id : NULL,
            .event_id = (char *)(ev->id ? ev->id : ""),
            .seq = ev->seq,
            .created_ms = time_ms,
        };
        bool inserted = false;
        rc = ntf_store_insert(db, &row, &inserted);
        /* Only the live database delivers (verification runs this on a
         * scratch copy). The deliverer looks on the next loop turn, after
         * the consumer's commit. */
        if (rc == MOAT_OK && inserted && db == s->db && s->deliverer)
            ntf_deliverer_kick(s->deliverer);
    }
    moat_buf_release(&subject);
    moat_buf_release(&body);
    return rc;
}

int ntf_apply_event(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why)
{
    const struct event_kind *k = NULL;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(kinds) && !k; i++)
        if (strcmp(ev->type, kinds[i].type) == 0)
            k = &kinds[i];
    if (!k)
        return MOAT_OK; /* not ours (the subscription filters already) */
    struct moat_event cur = *ev;
    cur.data = NULL;
    int rc =
        orders_upcast(ev->type, ev->schema_version, ev->data, &cur.data, why);
    if (rc == MOAT_OK)
        rc = apply_current(db, &cur, k, arg, why);
    json_decref(cur.data);
    return rc;
}
