/* Unit tests for contracts/: the producers' event contracts (type names,
 * schema versions, upcasters). */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "contracts/comments.h"
#include "contracts/catalog.h"
#include "contracts/inventory.h"
#include "contracts/notifications.h"
#include "contracts/orders.h"
#include "contracts/payments.h"
#include "contracts/users.h"

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &err);
    if (!j)
        fail_msg("bad test JSON: %s", err.text);
    return j;
}

/* The keys of obj in order, comma-separated. */
static void keys_of(json_t *obj, char *out, size_t size)
{
    const char *key;
    json_t *val;
    out[0] = '\0';
    json_object_foreach(obj, key, val)
    {
        size_t len = strlen(out);
        snprintf(out + len, size - len, "%s%s", len ? "," : "", key);
    }
}

/* Schema 1's flat price becomes schema 2's price object; every other
 * member stays, in order; the event's own data is not touched. */
static void test_catalog_product_v1_to_v2(void **state)
{
    static const char *const types[] = {CATALOG_PRODUCT_CREATED,
                                        CATALOG_PRODUCT_UPDATED};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(types); i++) {
        json_t *v1 = parse("{\"id\": \"prd_1\", \"sku\": \"SKU-1\", \"name\": "
                           "\"Lamp\", \"description\": \"Warm\", "
                           "\"price_amount\": 1999, \"currency\": \"EUR\", "
                           "\"attributes\": {\"color\": \"blue\"}}");
        char *before = json_dumps(v1, JSON_COMPACT);
        json_t *out = NULL;
        const char *why = NULL;
        assert_int_equal(catalog_upcast(types[i], CATALOG_PRODUCT_SCHEMA_FLAT,
                                        v1, &out, &why),
                         MOAT_OK);
        json_t *want =
            parse("{\"id\": \"prd_1\", \"sku\": \"SKU-1\", \"name\": \"Lamp\", "
                  "\"description\": \"Warm\", \"attributes\": {\"color\": "
                  "\"blue\"}, \"price\": {\"amount\": 1999, \"currency\": "
                  "\"EUR\"}}");
        assert_true(json_equal(out, want));
        char keys[256];
        keys_of(out, keys, sizeof(keys));
        assert_string_equal(keys, "id,sku,name,description,attributes,price");
        char *after = json_dumps(v1, JSON_COMPACT);
        assert_string_equal(before, after);
        free(before);
        free(after);
        json_decref(want);
        json_decref(out);
        json_decref(v1);
    }
}

/* A flat product without a price gets no price member (apply then refuses
 * it as it would a v2 document without one). */
static void test_catalog_product_v1_without_price(void **state)
{
    json_t *v1 = parse("{\"id\": \"prd_1\", \"sku\": \"S\", \"name\": \"N\"}");
    json_t *out = NULL;
    const char *why = NULL;
    assert_int_equal(catalog_upcast(CATALOG_PRODUCT_CREATED, 1, v1, &out, &why),
                     MOAT_OK);
    assert_true(json_equal(out, v1));
    assert_null(json_object_get(out, "price"));
    json_decref(out);
    json_decref(v1);
}

/* The current version comes back as it is (a new reference). */
static void test_catalog_current_unchanged(void **state)
{
    json_t *v2 = parse("{\"id\": \"prd_1\", \"price\": {\"amount\": 5, "
                       "\"currency\": \"USD\"}, \"version\": 3}");
    json_t *out = NULL;
    const char *why = NULL;
    assert_int_equal(catalog_upcast(CATALOG_PRODUCT_UPDATED,
                                    CATALOG_PRODUCT_SCHEMA, v2, &out, &why),
                     MOAT_OK);
    assert_ptr_equal(out, v2);
    assert_int_equal(v2->refcount, 2);
    json_decref(out);

    json_t *price = parse("{\"id\": \"prd_1\", \"old\": {\"amount\": 1, "
                          "\"currency\": \"USD\"}, \"new\": {\"amount\": 2, "
                          "\"currency\": \"USD\"}}");
    assert_int_equal(catalog_upcast(CATALOG_PRICE_CHANGED,
                                    CATALOG_PRICE_CHANGED_SCHEMA, price, &out,
                                    &why),
                     MOAT_OK);
    assert_ptr_equal(out, price);
    json_decref(out);
    json_decref(price);
    json_decref(v2);
}

/* Newer (or impossible) versions, non-object data and foreign types are
 * refused with a reason, and nothing is returned. */
static void test_catalog_refusals(void **state)
{
    json_t *data = parse("{\"id\": \"prd_1\", \"sku\": \"S\"}");
    json_t *not_object = parse("[1, 2]");
    const struct {
        const char *type;
        int version;
        json_t *data;
        int rc;
    } cases[] = {
        {CATALOG_PRODUCT_CREATED, CATALOG_PRODUCT_SCHEMA + 1, data,
         MOAT_EUNSUPPORTED},
        {CATALOG_PRODUCT_CREATED, 0, data, MOAT_EUNSUPPORTED},
        {CATALOG_PRODUCT_CREATED, -1, data, MOAT_EUNSUPPORTED},
        {CATALOG_PRICE_CHANGED, 2, data, MOAT_EUNSUPPORTED},
        {CATALOG_PRODUCT_DELETED, 2, data, MOAT_EUNSUPPORTED},
        {CATALOG_PRODUCT_DELETED, 1, not_object, MOAT_EINVAL},
        {CATALOG_PRODUCT_CREATED, 1, NULL, MOAT_EINVAL},
        {ORDERS_ORDER_PLACED, 1, data, MOAT_ENOTFOUND},
        {"productcreated", 1, data, MOAT_ENOTFOUND},
        {NULL, 1, data, MOAT_ENOTFOUND},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        json_t *out = (json_t *)&out; /* must be reset to NULL */
        const char *why = NULL;
        assert_int_equal(catalog_upcast(cases[i].type, cases[i].version,
                                        cases[i].data, &out, &why),
                         cases[i].rc);
        assert_null(out);
        assert_non_null(why);
    }
    assert_int_equal(data->refcount, 1); /* nothing leaked or stolen */
    json_decref(not_object);
    json_decref(data);
}

static void test_catalog_schemas(void **state)
{
    assert_int_equal(catalog_schema(CATALOG_PRODUCT_CREATED), 2);
    assert_int_equal(catalog_schema(CATALOG_PRODUCT_UPDATED), 2);
    assert_int_equal(catalog_schema(CATALOG_PRICE_CHANGED), 1);
    assert_int_equal(catalog_schema(CATALOG_PRODUCT_DELETED), 1);
    assert_int_equal(catalog_schema(ORDERS_ORDER_PLACED), 0);
    assert_int_equal(catalog_schema(NULL), 0);
}

typedef int (*upcast_fn)(const char *type, int version, json_t *data,
                         json_t **out, const char **why);
typedef int (*schema_fn)(const char *type);

/* Producers whose types have had one schema: each of their types is known,
 * at version 1, passes through unchanged, and refuses version 2. */
static void check_single_schema(upcast_fn upcast, schema_fn schema,
                                const char *const *types, size_t n)
{
    json_t *data = parse("{\"order_id\": \"ord_1\", \"x\": [1]}");
    for (size_t i = 0; i < n; i++) {
        json_t *out = NULL;
        const char *why = NULL;
        assert_int_equal(schema(types[i]), 1);
        assert_int_equal(upcast(types[i], 1, data, &out, &why), MOAT_OK);
        assert_ptr_equal(out, data);
        json_decref(out);
        assert_int_equal(upcast(types[i], 2, data, &out, &why),
                         MOAT_EUNSUPPORTED);
        assert_null(out);
    }
    json_t *out = NULL;
    const char *why = NULL;
    assert_int_equal(schema(CATALOG_PRODUCT_CREATED), 0);
    assert_int_equal(upcast(CATALOG_PRODUCT_CREATED, 1, data, &out, &why),
                     MOAT_ENOTFOUND);
    assert_int_equal(data->refcount, 1);
    json_decref(data);
}

static void test_single_schema_producers(void **state)
{
    static const char *const orders[] = {
        ORDERS_ORDER_PLACED,      ORDERS_ORDER_CONFIRMED,
        ORDERS_ORDER_CANCELLED,   ORDERS_RESERVE_STOCK,
        ORDERS_RELEASE_STOCK,     ORDERS_COMMIT_STOCK,
        ORDERS_AUTHORIZE_PAYMENT, ORDERS_CAPTURE_PAYMENT,
        ORDERS_VOID_PAYMENT,      ORDERS_REFUND_PAYMENT,
    };
    static const char *const payments[] = {
        PAYMENTS_PAYMENT_AUTHORIZED,
        PAYMENTS_PAYMENT_DECLINED,
        PAYMENTS_PAYMENT_PROVIDER_UNAVAILABLE,
        PAYMENTS_PAYMENT_CAPTURED,
        PAYMENTS_PAYMENT_CAPTURE_FAILED,
        PAYMENTS_PAYMENT_VOIDED,
        PAYMENTS_PAYMENT_REFUNDED,
    };
    static const char *const inventory[] = {
        INVENTORY_STOCK_CHANGED,
        INVENTORY_STOCK_RESERVED,
        INVENTORY_STOCK_RESERVATION_FAILED,
        INVENTORY_STOCK_RELEASED,
        INVENTORY_STOCK_COMMITTED,
    };
    static const char *const notifications[] = {
        NOTIFICATIONS_NOTIFICATION_SENT};
    static const char *const users[] = {
        USERS_USER_REGISTERED, USERS_USER_UPDATED,
        USERS_USER_SUSPENDED,  USERS_USER_RESTORED,
        USERS_ROLE_CHANGED,    USERS_MODERATION_ACTION_REQUESTED,
        USERS_SESSIONS_ENDED};
    static const char *const comments[] = {
        COMMENTS_COMMENT_POSTED, COMMENTS_COMMENT_APPROVED,
        COMMENTS_COMMENT_REJECTED, COMMENTS_COMMENT_REMOVED};
    check_single_schema(orders_upcast, orders_schema, orders,
                        MOAT_ARRAY_LEN(orders));
    check_single_schema(payments_upcast, payments_schema, payments,
                        MOAT_ARRAY_LEN(payments));
    check_single_schema(inventory_upcast, inventory_schema, inventory,
                        MOAT_ARRAY_LEN(inventory));
    check_single_schema(notifications_upcast, notifications_schema,
                        notifications, MOAT_ARRAY_LEN(notifications));
    check_single_schema(users_upcast, users_schema, users,
                        MOAT_ARRAY_LEN(users));
    check_single_schema(comments_upcast, comments_schema, comments,
                        MOAT_ARRAY_LEN(comments));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalog_product_v1_to_v2),
        cmocka_unit_test(test_catalog_product_v1_without_price),
        cmocka_unit_test(test_catalog_current_unchanged),
        cmocka_unit_test(test_catalog_refusals),
        cmocka_unit_test(test_catalog_schemas),
        cmocka_unit_test(test_single_schema_producers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
