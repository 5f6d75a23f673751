/* shop.c - the drill's products and customers, through the gateway (see
 * shop.h). */
#include "moat/common.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moat/buf.h"

#include "cli.h"
#include "secrets.h"
#include "shop.h"

#define SETUP_TIMEOUT_MS 10000
#define LOGIN_WAIT_MAX_S 90 /* bound on waiting out login rate limits */
#define BUSY_RETRIES     20 /* 503 (hash queue full, service restarting) */

static void pause_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

uint64_t shop_rand(struct shop *s, uint64_t n)
{
    /* xorshift64*: plenty for picking products and victims. */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (s->rng * 0x2545F4914F6CDD1DULL) % n;
}

const struct deploy_service *shop_gateway(const struct deploy *d,
                                          const char *prefix)
{
    for (size_t i = 0; i < d->nservices; i++)
        for (size_t r = 0; r < d->services[i].nroutes; r++)
            if (strcmp(d->services[i].routes[r].prefix, prefix) == 0)
                return &d->services[i];
    return NULL;
}

char *shop_derived_password(const struct deploy *d, const char *context,
                            const char *prefix)
{
    struct cli_secrets *sec = NULL;
    if (cli_secrets_load(&sec, d->var_dir) != MOAT_OK)
        return NULL;
    const char *op = cli_secret_service_key(sec, CLI_OPERATOR);
    if (cli_secrets_dirty(sec)) {
        cli_error("deployment %s has no secrets yet: run moat up first",
                  d->name);
        cli_secrets_free(sec);
        return NULL;
    }
    /* 24 hex characters derived from the operator key: a password nobody
     * without secrets.json can know, the same on every run. */
    unsigned char h[12];
    crypto_generichash(h, sizeof(h), (const unsigned char *)context,
                       strlen(context), (const unsigned char *)op, strlen(op));
    char hex[sizeof(h) * 2 + 1];
    sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
    char *pw = moat_xasprintf("%s%s", prefix, hex);
    sodium_memzero(hex, sizeof(hex));
    cli_secrets_free(sec);
    return pw;
}

int shop_open(struct shop *s, const struct deploy *d, uint64_t seed)
{
    memset(s, 0, sizeof(*s));
    s->d = d;
    s->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    const struct deploy_service *gw = shop_gateway(d, "/api/v1/orders");
    if (!gw) {
        cli_error("deployment \"%s\" has no gateway routing /api/v1/orders",
                  d->name);
        return MOAT_EINVAL;
    }
    s->gw_url = deploy_base_url(gw);
    s->password =
        shop_derived_password(d, "moat drill customer password", "drill-");
    return s->password ? MOAT_OK : MOAT_EINVAL;
}

void shop_close(struct shop *s)
{
    for (size_t i = 0; i < s->nproducts; i++) {
        free(s->products[i].id);
        free(s->products[i].sku);
    }
    free(s->products);
    for (size_t i = 0; i < s->ncustomers; i++) {
        struct shop_customer *c = &s->customers[i];
        free(c->email);
        if (c->refresh) {
            sodium_memzero(c->refresh, strlen(c->refresh));
            free(c->refresh);
        }
        if (c->auth) {
            sodium_memzero(c->auth, strlen(c->auth));
            free(c->auth);
        }
    }
    free(s->customers);
    if (s->password) {
        sodium_memzero(s->password, strlen(s->password));
        free(s->password);
    }
    free(s->gw_url);
    memset(s, 0, sizeof(*s));
}

/* A call through the gateway; *out gets the parsed JSON body (or NULL).
 * Retries 503s (a restarting service) a few times. Returns the status, 0
 * when there was no answer. */
static long gw_call(struct shop *s, const char *method, const char *path,
                    const char *auth, const char *body, json_t **out)
{
    char *url = moat_xasprintf("%s%s", s->gw_url, path);
    long status = 0;
    *out = NULL;
    for (int attempt = 0; attempt < BUSY_RETRIES; attempt++) {
        char *text = NULL;
        int rc =
            cli_http(method, url, auth, body, SETUP_TIMEOUT_MS, &status, &text);
        json_decref(*out);
        *out = text && *text ? json_loads(text, 0, NULL) : NULL;
        if (text) {
            sodium_memzero(text, strlen(text));
            free(text);
        }
        if (rc == MOAT_OK && status != 503 && status != 502)
            break;
        pause_ms(500);
    }
    free(url);
    return status;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Log in email/password; fills *c's tokens. Waits out 429s. */
static int login(struct shop *s, struct shop_customer *c, const char *email,
                 const char *password)
{
    json_t *req = json_pack("{s:s, s:s}", "email", email, "password", password);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    int ret = MOAT_EIO;
    uint64_t give_up = moat_mono_ms() + LOGIN_WAIT_MAX_S * 1000ULL;
    for (;;) {
        json_t *res = NULL;
        long st = gw_call(s, "POST", "/api/v1/auth/login", NULL, body, &res);
        if (st == 200 && jstr(res, "access_token") &&
            jstr(res, "refresh_token")) {
            free(c->auth);
            free(c->refresh);
            c->auth = moat_xasprintf("Authorization: Bearer %s",
                                     jstr(res, "access_token"));
            c->refresh = moat_xstrdup(jstr(res, "refresh_token"));
            c->token_at = (int64_t)moat_mono_ms();
            json_decref(res);
            ret = MOAT_OK;
            break;
        }
        json_int_t after =
            json_integer_value(json_object_get(res, "retry_after_s"));
        json_decref(res);
        if (st == 429 && moat_mono_ms() < give_up) {
            fprintf(stderr, "moat: login of %s rate limited; waiting %lld s\n",
                    email, (long long)(after > 0 ? after : 2));
            pause_ms((unsigned)(after > 0 ? after : 2) * 1000u);
            continue;
        }
        cli_error("login of %s through the gateway failed (HTTP %ld)", email,
                  st);
        break;
    }
    sodium_memzero(body, strlen(body));
    free(body);
    return ret;
}

static const char *admin_email(const struct deploy *d)
{
    const struct deploy_service *u = deploy_find(d, "users");
    for (size_t i = 0; u && i < u->nenv; i++)
        if (strcmp(u->env[i].name, "MOAT_USERS_ADMIN_EMAIL") == 0)
            return u->env[i].value;
    return "admin@moat.local";
}

static int admin_login(struct shop *s, struct shop_customer *admin)
{
    struct cli_secrets *sec = NULL;
    if (cli_secrets_load(&sec, s->d->var_dir) != MOAT_OK)
        return MOAT_EIO;
    const char *pw = cli_secret_shared_find(sec, "MOAT_USERS_ADMIN_PASSWORD");
    int rc = MOAT_EINVAL;
    if (!pw)
        cli_error("no MOAT_USERS_ADMIN_PASSWORD in %s/secrets.json: the "
                  "deployment has no bootstrap administrator",
                  s->d->var_dir);
    else
        rc = login(s, admin, admin_email(s->d), pw);
    cli_secrets_free(sec);
    return rc;
}

/* The id of the product with this SKU, or NULL. Caller frees. */
static char *product_by_sku(struct shop *s, const char *sku)
{
    char *path = moat_xasprintf("/api/v1/products?sku=%s", sku);
    json_t *res = NULL;
    long st = gw_call(s, "GET", path, NULL, NULL, &res);
    free(path);
    char *id = NULL;
    json_t *first = json_array_get(json_object_get(res, "items"), 0);
    if (st == 200 && jstr(first, "id"))
        id = moat_xstrdup(jstr(first, "id"));
    json_decref(res);
    return id;
}

int shop_products(struct shop *s, bool create)
{
    struct shop_customer admin = {0};
    int ret = MOAT_EIO;
    if (create && admin_login(s, &admin) != MOAT_OK)
        goto out;
    s->products = moat_xcalloc(SHOP_PRODUCTS, sizeof(*s->products));
    for (unsigned i = 0; i < SHOP_PRODUCTS; i++) {
        char *sku = moat_xasprintf(SHOP_SKU_PREFIX "%02u", i + 1);
        char *id = product_by_sku(s, sku);
        if (!id && create) {
            json_t *doc = json_pack(
                "{s:s, s:s, s:{s:I, s:s}}", "sku", sku, "name",
                i + 1 == SHOP_PRODUCTS ? "Drill item (scarce)" : "Drill item",
                "price", "amount", (json_int_t)(199 + 100 * i), "currency",
                "EUR");
            char *body = json_dumps(doc, JSON_COMPACT);
            json_decref(doc);
            json_t *res = NULL;
            long st =
                gw_call(s, "POST", "/api/v1/products", admin.auth, body, &res);
            free(body);
            if (st == 201 && jstr(res, "id"))
                id = moat_xstrdup(jstr(res, "id"));
            else if (st == 409)
                id = product_by_sku(s, sku);
            json_decref(res);
            if (!id) {
                cli_error("cannot create product %s through the gateway "
                          "(HTTP %ld)",
                          sku, st);
                free(sku);
                goto out;
            }
        }
        if (!id) {
            cli_error("product %s does not exist: run with --setup first", sku);
            free(sku);
            goto out;
        }
        if (create) {
            char *path = moat_xasprintf("/api/v1/stock/%s", sku);
            char *body = moat_xasprintf(
                "{\"on_hand\": %d, \"reason\": \"drill setup\"}",
                i + 1 == SHOP_PRODUCTS ? SHOP_LOW_STOCK : SHOP_STOCK);
            json_t *res = NULL;
            long st = gw_call(s, "PUT", path, admin.auth, body, &res);
            json_decref(res);
            free(path);
            free(body);
            if (st != 200 && st != 201) {
                cli_error("cannot set the stock of %s (HTTP %ld)", sku, st);
                free(sku);
                free(id);
                goto out;
            }
        }
        s->products[s->nproducts].sku = sku;
        s->products[s->nproducts].id = id;
        s->nproducts++;
    }
    ret = MOAT_OK;
out:
    free(admin.email);
    free(admin.refresh);
    free(admin.auth);
    return ret;
}

int shop_customers(struct shop *s, size_t n)
{
    if (n > SHOP_MAX_CUSTOMERS)
        n = SHOP_MAX_CUSTOMERS;
    s->customers = moat_xcalloc(n, sizeof(*s->customers));
    for (size_t i = 0; i < n; i++) {
        struct shop_customer *c = &s->customers[i];
        c->email = moat_xasprintf("drill-%02zu@moat.local", i + 1);
        json_t *doc =
            json_pack("{s:s, s:s, s:s}", "email", c->email, "password",
                      s->password, "display_name", "Drill customer");
        char *body = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        json_t *res = NULL;
        long st = gw_call(s, "POST", "/api/v1/users", NULL, body, &res);
        json_decref(res);
        sodium_memzero(body, strlen(body));
        free(body);
        if (st != 201 && st != 409) {
            cli_error("cannot register %s through the gateway (HTTP %ld)",
                      c->email, st);
            return MOAT_EIO;
        }
        s->ncustomers++;
        if (login(s, c, c->email, s->password) != MOAT_OK)
            return MOAT_EIO;
    }
    return MOAT_OK;
}

void shop_refresh(struct shop *s)
{
    int64_t now = (int64_t)moat_mono_ms();
    for (size_t i = 0; i < s->ncustomers; i++) {
        struct shop_customer *c = &s->customers[i];
        if (now - c->token_at < SHOP_TOKEN_REFRESH_S * 1000)
            continue;
        char *body = moat_xasprintf("{\"refresh_token\": \"%s\"}", c->refresh);
        json_t *res = NULL;
        long st = gw_call(s, "POST", "/api/v1/auth/refresh", NULL, body, &res);
        sodium_memzero(body, strlen(body));
        free(body);
        if (st == 200 && jstr(res, "access_token") &&
            jstr(res, "refresh_token")) {
            free(c->auth);
            free(c->refresh);
            c->auth = moat_xasprintf("Authorization: Bearer %s",
                                     jstr(res, "access_token"));
            c->refresh = moat_xstrdup(jstr(res, "refresh_token"));
            c->token_at = now;
        } else if (login(s, c, c->email, s->password) != MOAT_OK) {
            /* Keep the old token; its requests will say 401. */
            c->token_at = now;
        }
        json_decref(res);
    }
}

char *shop_order_body(struct shop *s, double decline)
{
    /* The scarce last product joins about one order in twenty. */
    size_t ordinary = s->nproducts > 1 ? s->nproducts - 1 : s->nproducts;
    size_t nlines = 1 + (size_t)shop_rand(s, 3);
    size_t picked[4];
    size_t n = 0;
    while (n < nlines && n < ordinary) {
        size_t p = (size_t)shop_rand(s, ordinary);
        bool dup = false;
        for (size_t k = 0; k < n; k++)
            dup = dup || picked[k] == p;
        if (!dup)
            picked[n++] = p;
    }
    if (s->nproducts > 1 && shop_rand(s, 20) == 0)
        picked[n++] = s->nproducts - 1;
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_addstr(&b, "{\"lines\": [");
    for (size_t k = 0; k < n; k++)
        moat_buf_printf(&b, "%s{\"product_id\": \"%s\", \"quantity\": %u}",
                        k ? ", " : "", s->products[picked[k]].id,
                        (unsigned)(1 + shop_rand(s, 3)));
    bool dec = decline > 0 && (double)shop_rand(s, 1000000) < decline * 1e6;
    moat_buf_printf(&b, "], \"card_token\": \"%s\"}",
                    dec ? "tok_decline" : "tok_ok");
    return moat_buf_detach(&b, NULL);
}
