/*
 * cli/shop.h - a customer's view of a running deployment, for `moat chaos`
 * and `moat bench`: everything goes through the gateway, as a shop's
 * clients would (register, log in, place orders), except the setup, which
 * acts as the deployment's bootstrap administrator (its password is the
 * generated MOAT_USERS_ADMIN_PASSWORD in <var_dir>/secrets.json).
 *
 * The drill's fixtures are recognisable and reused between runs:
 *   products   SKUs DRILL-01 .. DRILL-NN (EUR); the last one is stocked
 *              low on purpose, so some orders are cancelled out_of_stock
 *   customers  drill-NN@moat.local, whose password is derived from the
 *              deployment's operator key (so only whoever can read
 *              secrets.json can log in as them)
 *
 * Ownership: a struct shop owns every string it points to; shop_close()
 * frees them. Blocking calls (setup, logins) use cli_http; orders are
 * placed by the caller through a fetcher (fetch.h) with shop_order_*().
 */
#ifndef MOAT_CLI_SHOP_H
#define MOAT_CLI_SHOP_H

#include <stdbool.h>
#include <stdint.h>

#include "deploy.h"

#define SHOP_SKU_PREFIX      "DRILL-"
#define SHOP_PRODUCTS        12
#define SHOP_STOCK           1000000 /* units per ordinary SKU at setup */
#define SHOP_LOW_STOCK       30      /* units of the last SKU at setup */
#define SHOP_TOKEN_REFRESH_S 600     /* access tokens live 900 s */
#define SHOP_MAX_CUSTOMERS   200

struct shop_product {
    char *id;  /* prod_... */
    char *sku; /* DRILL-NN */
};

struct shop_customer {
    char *email;
    char *refresh;    /* refresh token */
    char *auth;       /* "Authorization: Bearer <access token>" */
    int64_t token_at; /* monotonic ms of the last login or refresh */
};

struct shop {
    const struct deploy *d; /* borrowed */
    char *gw_url;           /* "http://127.0.0.1:8080" */
    char *password;         /* the drill customers' password */
    struct shop_product *products;
    size_t nproducts;
    struct shop_customer *customers;
    size_t ncustomers;
    uint64_t rng; /* xorshift64* state */
};

/* The service whose routes include prefix (e.g. "/api/v1/orders"): the
 * gateway. NULL when no service routes it. */
const struct deploy_service *shop_gateway(const struct deploy *d,
                                          const char *prefix);

/*
 * prefix followed by 24 hex characters derived from the deployment's
 * operator key (<var_dir>/secrets.json) and context: the same on every run
 * and unknown to whoever cannot read secrets.json. NULL (after printing
 * why) when the deployment has no secrets yet. Caller frees (and should
 * wipe it).
 */
char *shop_derived_password(const struct deploy *d, const char *context,
                            const char *prefix);

/* Find the gateway (the service routing /api/v1/orders) and derive the
 * customers' password. MOAT_OK, or an error after printing why. */
int shop_open(struct shop *s, const struct deploy *d, uint64_t seed);
void shop_close(struct shop *s);

/*
 * Find the drill's products through the gateway; with create, first
 * create the missing ones and set every SKU's stock (SHOP_STOCK, the last
 * SHOP_LOW_STOCK), as the administrator. MOAT_OK, or an error after
 * printing why (e.g. the products do not exist and create is false).
 */
int shop_products(struct shop *s, bool create);

/* Register (when new) and log in n customers. */
int shop_customers(struct shop *s, size_t n);

/* Refresh the access tokens older than SHOP_TOKEN_REFRESH_S. */
void shop_refresh(struct shop *s);

/* A random order body: 1 to 3 products, 1 to 3 units each, card tok_ok
 * or, with probability decline, tok_decline. Caller frees. */
char *shop_order_body(struct shop *s, double decline);

/* Uniform random number in [0, n). n > 0. */
uint64_t shop_rand(struct shop *s, uint64_t n);

#endif /* MOAT_CLI_SHOP_H */
