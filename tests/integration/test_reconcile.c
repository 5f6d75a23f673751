/*
 * test_reconcile.c - the recovery drill: one service restored to an earlier
 * point while the others kept going, then `moat reconcile --repair`, then
 * `moat audit` at 0 violations (docs/recovery.md).
 *
 * The shop runs with every participant real (catalog, orders, inventory,
 * payments, the payment provider, notifications and the read model, as in
 * test_audit.c); a deployment file names them for the CLI, which reads
 * and repairs them through their APIs only. For each of orders, payments
 * and inventory in turn:
 *
 *   1. `moat backup SERVICE` while it serves, under load;
 *   2. keep shopping: orders confirmed and declined, then a burst left in
 *      flight at the moment of the restore;
 *   3. stop the service, `moat restore SERVICE --from BACKUP` (its feed
 *      gets a new epoch based on the backup's outbox head), restart it:
 *      its consumers rewind their cursors to that head and read the new
 *      events the restored service numbers after it;
 *   4. reconcile --repair, wait for the repairs' sagas, audit: 0. The
 *      report lists the restore and every consumer's rewind.
 *
 * Orders restored loses every order placed after the backup: reconcile must
 * name each one that another service holds (and only those) and re-create
 * it. Payments and inventory restored re-apply orders' commands from their
 * restored cursors and come back to where they were (payments with the
 * same payment ids, so the provider answers from its idempotency records
 * and charges nobody twice): reconcile must find nothing, and the audit's
 * ledger comparison proves the provider was not asked twice.
 *
 * $MOAT_RECONCILE_SCALE (default 1) multiplies the number of orders: `make
 * drill-recovery` runs it at 20.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define MERCHANT_KEY "moat-shop-key-0123456789abcdef"
#define CONTROL_KEY  "control-key-0123456789abcdef"
#define ALICE        "usr_01J0000000000000000000RECN"
#define SKU          "REC-1"
#define PRICE        1200
#define STOCK        100000
#define SAGA_WAIT_MS (2 * H_WAIT_MS)
#define MAX_ORDERS   4096

enum { ORD, INV, PAY, PP, NOTIF, RM, CAT, NSVC };

static struct {
    char *tmp;
    struct h_service s[NSVC];
    char env[NSVC][8][1024]; /* each service's extra environment */
    size_t nenv[NSVC];
    struct h_feed *users;
    uint16_t ord_port;
    char deploy[512];
    char deploy_no_copies[512]; /* the same without the read model */
    char product[64];
    unsigned scale;
    unsigned seq; /* Idempotency-Key counter */
} F;

/* ---- calls ---- */

static json_t *get_json(const char *url, const char *aud)
{
    const char *hdrs[] = {h_service_token(aud, "usr_admin", "admin"), NULL};
    return h_get_json(url, hdrs);
}

/* Like get_json, but NULL for a 404. */
static json_t *get_maybe(const char *url, const char *aud)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token(aud, "usr_admin", "admin"), NULL};
    h_http(&r, "GET", url, hdrs, NULL, 0);
    json_t *j = NULL;
    if (r.status != 404) {
        h_assert_status(&r, 200);
        j = h_resp_json(&r);
    }
    h_resp_release(&r);
    return j;
}

/* Place one order; returns its id (caller frees). */
static char *place(const char *card)
{
    struct h_resp r;
    const char *hdrs[] = {h_service_token("orders", ALICE, "customer"),
                          h_fmt("Idempotency-Key: rec-%u", ++F.seq), NULL};
    h_send_json(&r, "POST", h_fmt("%s/v1/orders", F.s[ORD].url),
                h_fmt("{\"lines\": [{\"product_id\": \"%s\", \"quantity\": "
                      "2}], \"card_token\": \"%s\"}",
                      F.product, card),
                hdrs);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    char *id = moat_xstrdup(h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    return id;
}

/* orders' status of id ("" when orders does not know it). */
static const char *status_of(const char *id)
{
    static char status[16];
    json_t *o = get_maybe(h_fmt("%s/v1/orders/%s", F.s[ORD].url, id), "orders");
    snprintf(status, sizeof(status), "%s",
             strcmp(h_jstr(o, "step"), "done") == 0 ? h_jstr(o, "status") : "");
    json_decref(o);
    return status;
}

static void wait_final(const char *id)
{
    H_WAIT_UNTIL(status_of(id)[0], SAGA_WAIT_MS, "order %s to finish", id);
}

/* Does another service than orders hold order id (a reservation, a
 * payment or a notification)? */
static bool held_elsewhere(const char *id)
{
    json_t *r = get_maybe(h_fmt("%s/v1/reservations/%s", F.s[INV].url, id),
                          "inventory");
    json_t *p = get_json(h_fmt("%s/v1/payments?order_id=%s", F.s[PAY].url, id),
                         "payments");
    json_t *n =
        get_json(h_fmt("%s/v1/notifications?order_id=%s", F.s[NOTIF].url, id),
                 "notifications");
    bool held = (r && h_jstr(r, "state")[0]) ||
                json_array_size(json_object_get(p, "items")) > 0 ||
                json_array_size(json_object_get(n, "notifications")) > 0;
    json_decref(r);
    json_decref(p);
    json_decref(n);
    return held;
}

/* Has the read model a copy of order id? */
static bool in_readmodel(const char *id)
{
    json_t *h = get_json(
        h_fmt("%s/v1/customers/%s/orders?limit=100", F.s[RM].url, ALICE),
        "readmodel");
    bool found = false;
    /* Pages of 100 in id order: walk until found or the end. */
    for (int page = 0; page < 1000 && h && !found; page++) {
        size_t i;
        json_t *o;
        json_array_foreach(json_object_get(h, "orders"), i, o)
        {
            if (strcmp(h_jstr(o, "order_id"), id) == 0)
                found = true;
        }
        const char *next = h_jstr(h, "next_after");
        if (found || !next[0])
            break;
        json_t *n =
            get_json(h_fmt("%s/v1/customers/%s/orders?limit=100&after=%s",
                           F.s[RM].url, ALICE, next),
                     "readmodel");
        json_decref(h);
        h = n;
    }
    json_decref(h);
    return found;
}

/* ---- the CLI ---- */

/* Run `moat <cmd> --file <deploy> --json`; returns its JSON answer and
 * *exit its exit status. */
static json_t *moat_json_in(const char *deploy, const char *cmd,
                            int *exit_status)
{
    char *out = h_run_capture(
        h_fmt("%s/moat %s --file %s --json 2>&1", MOAT_BIN_DIR, cmd, deploy),
        exit_status);
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    if (!j)
        fail_msg("moat %s did not answer JSON (%s):\n%s", cmd, err.text, out);
    free(out);
    return j;
}

static json_t *moat_json(const char *cmd, int *exit_status)
{
    return moat_json_in(F.deploy, cmd, exit_status);
}

static bool audit_ok(json_t **last)
{
    int st;
    json_decref(*last);
    *last = moat_json("audit", &st);
    return st == 0;
}

static const char *brief(const json_t *j)
{
    char *t = json_dumps(j, JSON_COMPACT);
    const char *out = h_fmt("%.3000s", t ? t : "(none)");
    free(t);
    return out;
}

static void expect_audit_clean(const char *when)
{
    json_t *r = NULL;
    H_WAIT_UNTIL(audit_ok(&r), SAGA_WAIT_MS, "the audit to be clean %s (%s)",
                 when, brief(r));
    assert_true(json_is_true(
        json_object_get(json_object_get(r, "summary"), "ledger_compared")));
    json_decref(r);
}

/* ---- backup and restore ---- */

static void run(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fail_msg("\"%s\" failed (%d)", cmd, rc);
}

static const char *const *env_of(int k)
{
    static const char *list[9];
    for (size_t i = 0; i < F.nenv[k]; i++)
        list[i] = F.env[k][i];
    list[F.nenv[k]] = NULL;
    return list;
}

static void restart(int k)
{
    assert_int_equal(h_service_restart(&F.s[k], env_of(k)), 0);
}

/* What `moat backup SERVICE` took of service k while it serves. */
struct backup {
    char id[128];
    int64_t head; /* the outbox head at the backup's instant */
};

static void backup(int k, struct backup *b)
{
    int st;
    char *out = h_run_capture(h_fmt("%s/moat backup %s --file %s 2>&1",
                                    MOAT_BIN_DIR, F.s[k].name, F.deploy),
                              &st);
    if (st != 0)
        fail_msg("moat backup %s failed:\n%s", F.s[k].name, out);
    /* "orders: <dir>/orders-<time>-<hex>" */
    const char *slash = strrchr(out, '/');
    assert_non_null(slash);
    snprintf(b->id, sizeof(b->id), "%.*s", (int)strcspn(slash + 1, "\n"),
             slash + 1);
    free(out);
    json_t *m = json_load_file(
        h_fmt("%s/var/backups/%s/%s/manifest.json", F.tmp, F.s[k].name, b->id),
        0, NULL);
    assert_non_null(m);
    b->head = h_jint(json_object_get(m, "outbox"), "head");
    json_decref(m);
}

static struct h_service *service_named(const char *name)
{
    for (int k = 0; k < NSVC; k++)
        if (strcmp(F.s[k].name, name) == 0)
            return &F.s[k];
    fail_msg("no service %s", name);
    return NULL;
}

/* Has the service named consumer accepted epoch ep of source's feed (in
 * its data directory, as test_backup reads it)? */
static bool accepted(const char *consumer, const char *source, const char *ep)
{
    json_t *j = json_load_file(h_fmt("%s/feed-epochs/%s.json",
                                     service_named(consumer)->data_dir, source),
                               0, NULL);
    bool yes = strcmp(h_jstr(j, "epoch"), ep) == 0;
    json_decref(j);
    return yes;
}

/* `moat restore SERVICE --from BACKUP` of service k: the CLI replaces the
 * store of the stopped service and starts a new feed epoch (no supervisor
 * runs these services: the test stops and restarts them). Returns once
 * every one of consumers has seen the new epoch. */
static void restore(int k, const struct backup *b, const char *const *consumers)
{
    assert_int_equal(h_service_stop(&F.s[k]), 0);
    run(h_fmt("%s/moat restore %s --from %s --file %s >/dev/null", MOAT_BIN_DIR,
              F.s[k].name, b->id, F.deploy));
    restart(k);
    json_t *ep =
        json_load_file(h_fmt("%s/feed.epoch", F.s[k].data_dir), 0, NULL);
    assert_string_equal(h_jstr(ep, "from_backup"), b->id);
    for (size_t i = 0; consumers[i]; i++)
        H_WAIT_UNTIL(accepted(consumers[i], F.s[k].name, h_jstr(ep, "epoch")),
                     SAGA_WAIT_MS, "%s to see %s's new feed epoch",
                     consumers[i], F.s[k].name);
    json_decref(ep);
}

/* The reconcile report lists the restore of service k from b: its feed
 * epoch from the backup, based on the backup's outbox head, and a rewind
 * to that head by each of the consumers named in rewound (and no other),
 * each of which had read past it. */
static void expect_restore_listed(json_t *report, int k, const struct backup *b,
                                  const char *const *rewound)
{
    json_t *e = NULL;
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(report, "restores"), i, x)
    {
        if (strcmp(h_jstr(x, "service"), F.s[k].name) == 0 &&
            json_is_true(json_object_get(x, "current")))
            e = x;
    }
    if (!e)
        fail_msg("the report lists no restore of %s: %s", F.s[k].name,
                 brief(json_object_get(report, "restores")));
    assert_string_equal(h_jstr(e, "from_backup"), b->id);
    assert_int_equal(h_jint(e, "base_seq"), b->head);
    json_t *seen = json_object();
    json_array_foreach(json_object_get(e, "rewinds"), i, x)
    {
        assert_int_equal(h_jint(x, "to_seq"), b->head);
        assert_true(h_jint(x, "from_seq") > b->head);
        json_object_set_new(seen, h_jstr(x, "consumer"), json_true());
    }
    size_t n = 0;
    for (; rewound[n]; n++)
        if (!json_object_get(seen, rewound[n]))
            fail_msg("%s did not rewind to %s's restored head: %s", rewound[n],
                     F.s[k].name, brief(e));
    assert_int_equal(json_object_size(seen), n);
    json_decref(seen);
}

/* ---- the shop ---- */

struct batch {
    char *ids[MAX_ORDERS];
    size_t n;
};

static void batch_free(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->ids[i]);
    b->n = 0;
}

/* Orders confirmed and declined, each waited for. */
static void shop(struct batch *b, unsigned ok, unsigned declined)
{
    size_t from = b->n;
    for (unsigned i = 0; i < ok + declined; i++) {
        assert_true(b->n < MAX_ORDERS);
        b->ids[b->n++] = place(i < ok ? "tok_ok" : "tok_decline");
    }
    for (size_t i = from; i < b->n; i++)
        wait_final(b->ids[i]);
}

/* Orders placed and not waited for: in flight when the restore comes. */
static void burst(struct batch *b, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        assert_true(b->n < MAX_ORDERS);
        b->ids[b->n++] = place("tok_ok");
    }
}

/* ---- fixture ---- */

static void peer_keys(int k, const char *self)
{
    static const char *const peers[] = {
        "gateway",   "catalog",  "users",         "inventory",
        "orders",    "payments", "search",        "reporting",
        "readmodel", "test",     "notifications", "operator"};
    char *out = F.env[k][F.nenv[k]++];
    size_t cap = sizeof(F.env[0][0]);
    size_t off = (size_t)snprintf(out, cap, "MOAT_PEER_KEYS=");
    for (size_t i = 0; i < MOAT_ARRAY_LEN(peers); i++)
        off += (size_t)snprintf(out + off, cap - off, "%s%s:%s", i ? "," : "",
                                peers[i], h_test_pair_key(peers[i], self));
    assert_true(off < cap);
}

static void setenv_of(int k, const char *fmt, const char *val)
{
    snprintf(F.env[k][F.nenv[k]++], sizeof(F.env[0][0]), fmt, val);
}

static int start(int k, const char *name)
{
    peer_keys(k, name);
    return h_service_start(&F.s[k], name, F.tmp,
                           h_fmt("%s/%s-data", F.tmp, name), env_of(k));
}

/* The deployment file at path naming the services (the read model too
 * when with_copies) for the CLI. */
static void write_deployment(const char *path, bool with_copies)
{
    char var[512];
    snprintf(var, sizeof(var), "%s/var", F.tmp);
    mkdir(var, 0700);
    h_write_file(h_fmt("%s/secrets.json", var),
                 h_fmt("{\"version\": 1, \"service_keys\": {\"operator\": "
                       "\"%s\"}, \"shared\": {}}",
                       h_test_service_key("operator")));
    json_t *svcs = json_array();
    const struct {
        int k;
        const char *engine, *db;
    } all[] = {{ORD, "sqlite", "orders.db"},
               {INV, "lmdb", "inventory.lmdb"},
               {PAY, "sqlite", "payments.db"},
               {NOTIF, "sqlite", "notifications.db"},
               {RM, "sqlite", "readmodel.db"}};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++) {
        struct h_service *s = &F.s[all[i].k];
        if (all[i].k == RM && !with_copies)
            continue;
        json_t *j =
            json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", s->name, "listen",
                      s->url + strlen("http://"), "engine", all[i].engine, "db",
                      all[i].db, "data_dir", s->data_dir);
        if (all[i].k == PAY)
            json_object_set_new(
                j, "env",
                json_pack("{s:s, s:s}", "MOAT_PAYMENTS_PROVIDER_URL",
                          F.s[PP].url, "MOAT_PAYMENTS_PROVIDER_KEY",
                          MERCHANT_KEY));
        json_array_append_new(svcs, j);
    }
    json_t *d = json_pack("{s:s, s:s, s:o}", "name", "reconcile", "var_dir",
                          var, "services", svcs);
    assert_int_equal(json_dump_file(d, path, JSON_INDENT(2)), 0);
    json_decref(d);
}

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    const char *scale = getenv("MOAT_RECONCILE_SCALE");
    F.scale = scale && atoi(scale) > 0 ? (unsigned)atoi(scale) : 1;
    if (F.scale > 100)
        F.scale = 100;
    F.tmp = h_tmpdir_new("reconcile");
    F.users = h_feed_start("users", F.tmp);
    F.ord_port = h_free_port();
    char ord_url[64];
    snprintf(ord_url, sizeof(ord_url), "http://127.0.0.1:%u",
             (unsigned)F.ord_port);

    if (start(CAT, "catalog") != 0)
        return -1;
    setenv_of(INV, "MOAT_INVENTORY_ORDERS_URL=%s", ord_url);
    setenv_of(INV, "MOAT_INVENTORY_MAX_OPEN_PER_CUSTOMER=%s", "10000");
    if (start(INV, "inventory") != 0)
        return -1;
    setenv_of(PP, "MOAT_PAYPROVIDER_API_KEYS=moat-shop:%s", MERCHANT_KEY);
    setenv_of(PP, "MOAT_PAYPROVIDER_CONTROL_KEY=%s", CONTROL_KEY);
    setenv_of(PP, "MOAT_PAYPROVIDER_LATENCY_MS=%s", "2");
    if (start(PP, "payprovider") != 0)
        return -1;
    setenv_of(PAY, "MOAT_PAYMENTS_PROVIDER_URL=%s", F.s[PP].url);
    setenv_of(PAY, "MOAT_PAYMENTS_PROVIDER_KEY=%s", MERCHANT_KEY);
    setenv_of(PAY, "MOAT_PAYMENTS_ORDERS_URL=%s", ord_url);
    if (start(PAY, "payments") != 0)
        return -1;
    char port[16];
    snprintf(port, sizeof(port), "%u", (unsigned)F.ord_port);
    setenv_of(ORD, "MOAT_LISTEN=127.0.0.1:%s", port);
    setenv_of(ORD, "MOAT_ORDERS_CATALOG_URL=%s", F.s[CAT].url);
    setenv_of(ORD, "MOAT_ORDERS_INVENTORY_URL=%s", F.s[INV].url);
    setenv_of(ORD, "MOAT_ORDERS_PAYMENTS_URL=%s", F.s[PAY].url);
    setenv_of(ORD, "MOAT_ORDERS_USERS_URL=%s", h_feed_url(F.users));
    if (start(ORD, "orders") != 0)
        return -1;
    setenv_of(NOTIF, "MOAT_NOTIFICATIONS_ORDERS_URL=%s", F.s[ORD].url);
    if (start(NOTIF, "notifications") != 0)
        return -1;
    setenv_of(RM, "MOAT_READMODEL_ORDERS_URL=%s", F.s[ORD].url);
    setenv_of(RM, "MOAT_READMODEL_CATALOG_URL=%s", F.s[CAT].url);
    setenv_of(RM, "MOAT_READMODEL_PAYMENTS_URL=%s", F.s[PAY].url);
    setenv_of(RM, "MOAT_READMODEL_NOTIFICATIONS_URL=%s", F.s[NOTIF].url);
    if (start(RM, "readmodel") != 0)
        return -1;
    snprintf(F.deploy, sizeof(F.deploy), "%s/moat.json", F.tmp);
    write_deployment(F.deploy, true);
    snprintf(F.deploy_no_copies, sizeof(F.deploy_no_copies),
             "%s/no-copies.json", F.tmp);
    write_deployment(F.deploy_no_copies, false);

    h_auto_service_token(F.s[CAT].url, "catalog", "usr_admin", "admin");
    struct h_resp r;
    h_send_json(&r, "POST", h_fmt("%s/v1/products", F.s[CAT].url),
                "{\"sku\": \"" SKU "\", \"name\": \"Recovery mug\", "
                "\"price\": {\"amount\": 1200, \"currency\": \"EUR\"}}",
                NULL);
    h_assert_status(&r, 201);
    json_t *j = h_resp_json(&r);
    snprintf(F.product, sizeof(F.product), "%s", h_jstr(j, "id"));
    json_decref(j);
    h_resp_release(&r);
    const char *admin[] = {h_service_token("inventory", "usr_admin", "admin"),
                           NULL};
    h_send_json(&r, "PUT", h_fmt("%s/v1/stock/" SKU, F.s[INV].url),
                h_fmt("{\"on_hand\": %d, \"reason\": \"initial\"}", STOCK),
                admin);
    h_assert_status(&r, 201);
    h_resp_release(&r);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    static const int order[] = {RM, NOTIF, ORD, PAY, PP, INV, CAT};
    int bad = 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(order); i++) {
        struct h_service *s = &F.s[order[i]];
        if (h_service_stop(s) != 0) {
            print_error("%s did not exit 0 on SIGTERM\n", s->name);
            bad++;
        }
        h_service_release(s);
    }
    h_feed_stop(F.users);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    return bad ? -1 : 0;
}

/* ---- load ---- */

/*
 * A customer placing orders (one in five declined) in a child process
 * until load_stop, appending the id of every order answered 201 to a file:
 * the traffic the orders restore happens under. Failures (orders down for
 * the restore) are only counted out; the child never asserts.
 */
struct load {
    pid_t pid;
    char path[512];
};

static void load_start(struct load *l)
{
    static unsigned runs;
    snprintf(l->path, sizeof(l->path), "%s/load-ids-%u", F.tmp, ++runs);
    l->pid = fork();
    assert_true(l->pid >= 0);
    if (l->pid > 0)
        return;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    FILE *f = fopen(l->path, "a");
    for (unsigned n = 0; f; n++) {
        struct h_resp r;
        const char *hdrs[] = {h_service_token("orders", ALICE, "customer"),
                              h_fmt("Idempotency-Key: %s-%u", l->path, n),
                              NULL};
        h_send_json(&r, "POST", h_fmt("%s/v1/orders", F.s[ORD].url),
                    h_fmt("{\"lines\": [{\"product_id\": \"%s\", "
                          "\"quantity\": 1}], \"card_token\": \"%s\"}",
                          F.product, n % 5 == 4 ? "tok_decline" : "tok_ok"),
                    hdrs);
        json_t *j = r.status == 201 ? h_resp_json(&r) : NULL;
        if (j) {
            fprintf(f, "%s\n", h_jstr(j, "id"));
            fflush(f);
        }
        json_decref(j);
        h_resp_release(&r);
        h_sleep_ms(10); /* paces the customer */
    }
    _exit(0);
}

/* Stop the load; the ids of the orders it placed go into b. */
static void load_stop(struct load *l, struct batch *b)
{
    /* SIGKILL: the child may be inside a request (or a lock a fork can
     * inherit) and need not clean up; every id it wrote was flushed whole,
     * and a torn last line is left out below. */
    kill(l->pid, SIGKILL);
    int st;
    assert_int_equal(waitpid(l->pid, &st, 0), l->pid);
    FILE *f = fopen(l->path, "r");
    assert_non_null(f);
    char line[128];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        if (strlen(line) == 30 && b->n < MAX_ORDERS) /* a whole "ord_" id */
            b->ids[b->n++] = moat_xstrdup(line);
    }
    fclose(f);
}

/* Has every consumer of svc k caught up with its sources? */
static bool caught_up(int k)
{
    json_t *c =
        get_json(h_fmt("%s/v1/admin/consumer", F.s[k].url), F.s[k].name);
    bool ok = true;
    size_t i;
    json_t *src;
    json_array_foreach(json_object_get(c, "sources"), i, src)
    {
        /* A parked long poll (waiting) got nothing past the cursor; a
         * restarted consumer knows the head only once a pull answers. */
        ok = ok && h_jint(src, "lag_events") == 0 &&
             (json_is_integer(json_object_get(src, "head")) ||
              strcmp(h_jstr(src, "state"), "waiting") == 0);
    }
    json_decref(c);
    return ok;
}

static void wait_caught_up(void)
{
    static const int consumers[] = {INV, PAY, NOTIF, RM, ORD};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(consumers); i++)
        H_WAIT_UNTIL(caught_up(consumers[i]), SAGA_WAIT_MS,
                     "%s to catch up with its sources", F.s[consumers[i]].name);
}

/* Does inventory or payments still hold something of order id (a held or
 * committed reservation, a live payment)? */
static bool holds_something(const char *id)
{
    json_t *r = get_maybe(h_fmt("%s/v1/reservations/%s", F.s[INV].url, id),
                          "inventory");
    const char *rs = r ? h_jstr(r, "state") : "";
    bool held = strcmp(rs, "held") == 0 || strcmp(rs, "committed") == 0;
    json_decref(r);
    json_t *p = get_json(h_fmt("%s/v1/payments?order_id=%s", F.s[PAY].url, id),
                         "payments");
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(p, "items"), i, x)
    {
        const char *ps = h_jstr(x, "status");
        held = held || strcmp(ps, "captured") == 0 ||
               strcmp(ps, "authorized") == 0 || strcmp(ps, "pending") == 0;
    }
    json_decref(p);
    return held;
}

/* ---- the drill ---- */

/* Reconcile with --repair, check its exit status and report; returns the
 * report. */
static json_t *reconcile_repair_in(const char *deploy)
{
    int st;
    json_t *r = moat_json_in(deploy, "reconcile --repair", &st);
    fprintf(stderr, "reconcile: %lld divergences, %lld repaired, %lld left\n",
            (long long)h_jint(r, "divergence_count"),
            (long long)h_jint(r, "repaired_count"),
            (long long)h_jint(r, "left_count"));
    if (h_jint(r, "left_count"))
        fprintf(stderr, "%s\n", brief(json_object_get(r, "divergences")));
    assert_int_equal(st, h_jint(r, "left_count") ? 1 : 0);
    return r;
}

static json_t *reconcile_repair(void)
{
    return reconcile_repair_in(F.deploy);
}

static const char *const orders_consumers[] = {
    "inventory", "payments", "notifications", "readmodel", NULL};

static void test_orders_restored(void **state)
{
    MOAT_UNUSED(state);
    struct batch before = {0}, lost = {0}, loaded = {0};
    struct load load;
    struct backup b;
    shop(&before, 3 * F.scale, 1);
    load_start(&load);
    backup(ORD, &b);
    shop(&lost, 6 * F.scale, 2 * F.scale);
    size_t settled = lost.n;
    burst(&lost, 4 * F.scale);
    /* Every service but orders has read what it will read of the burst:
     * orders still waits for replies (sagas in flight) when it goes. */
    for (size_t i = settled; i < lost.n; i++)
        H_WAIT_UNTIL(in_readmodel(lost.ids[i]), SAGA_WAIT_MS,
                     "the read model to copy order %s", lost.ids[i]);
    restore(ORD, &b, orders_consumers);
    /* The customer goes on a little after the restore, then the shop
     * quiets down for the reconcile and the audit. */
    h_sleep_ms(500);
    load_stop(&load, &loaded);
    wait_caught_up();

    /* orders knows the orders before the copy and none after. */
    for (size_t i = 0; i < before.n; i++)
        assert_true(status_of(before.ids[i])[0]);
    for (size_t i = 0; i < lost.n; i++)
        assert_null(get_maybe(
            h_fmt("%s/v1/orders/%s", F.s[ORD].url, lost.ids[i]), "orders"));
    /* The load's orders placed after the restore are known: let them
     * finish. The others are lost with the ones placed here. */
    for (size_t i = 0; i < loaded.n; i++) {
        json_t *known = get_maybe(
            h_fmt("%s/v1/orders/%s", F.s[ORD].url, loaded.ids[i]), "orders");
        json_decref(known);
        if (known) {
            wait_final(loaded.ids[i]);
            free(loaded.ids[i]);
            loaded.ids[i] = NULL;
        } else {
            assert_true(lost.n < MAX_ORDERS);
            lost.ids[lost.n++] = loaded.ids[i];
            loaded.ids[i] = NULL;
        }
    }
    loaded.n = 0;
    /* A lost order is a divergence when inventory or payments still hold
     * something of it, or when another service knows it and the read model
     * has the copy to re-create it with. */
    json_t *lost_ids = json_object();
    size_t no_copy = 0;
    for (size_t i = 0; i < lost.n; i++) {
        bool copy = in_readmodel(lost.ids[i]);
        if (holds_something(lost.ids[i]) ||
            (copy && held_elsewhere(lost.ids[i])))
            json_object_set_new(lost_ids, lost.ids[i], json_true());
        no_copy += !copy;
    }
    fprintf(stderr,
            "orders lost: %zu (%zu from the load), %zu diverge, %zu "
            "without a copy\n",
            lost.n, lost.n - settled - 4 * F.scale, json_object_size(lost_ids),
            no_copy);
    /* Every settled order is held elsewhere (sold or released). */
    assert_true(json_object_size(lost_ids) >= settled);
    int st;
    json_t *a = moat_json("audit", &st);
    assert_int_equal(st, 1); /* sold units of orders orders does not know */
    json_decref(a);

    json_t *r = reconcile_repair();
    expect_restore_listed(r, ORD, &b, orders_consumers);
    json_t *divs = json_object_get(r, "divergences");
    assert_int_equal(json_array_size(divs), json_object_size(lost_ids));
    assert_int_equal(h_jint(r, "repaired_count"), json_object_size(lost_ids));
    size_t i;
    json_t *d;
    json_array_foreach(divs, i, d)
    {
        assert_string_equal(h_jstr(d, "kind"), "order-lost");
        assert_non_null(json_object_get(lost_ids, h_jstr(d, "order_id")));
        assert_true(json_is_true(json_object_get(d, "repaired")));
    }
    json_decref(r);

    /* Re-created: the confirmed ones as they were, the rest cancelled
     * (the load's, without a copy, undone at the participants). */
    for (i = 0; i < settled; i++) {
        wait_final(lost.ids[i]);
        assert_string_equal(status_of(lost.ids[i]),
                            i < 6 * F.scale ? "confirmed" : "cancelled");
    }
    const char *id;
    json_t *v;
    json_object_foreach(lost_ids, id, v)
    {
        if (in_readmodel(id))
            wait_final(id);
    }
    expect_audit_clean("after orders was restored and reconciled");
    /* A second reconcile finds nothing. */
    r = reconcile_repair();
    assert_int_equal(h_jint(r, "divergence_count"), 0);
    json_decref(r);
    /* The text report says what was restored too. */
    char *text = h_run_capture(
        h_fmt("%s/moat reconcile --file %s", MOAT_BIN_DIR, F.deploy), &st);
    assert_int_equal(st, 0);
    if (!strstr(text, "RESTORED orders: feed epoch") ||
        !strstr(text, h_fmt("from backup %s", b.id)) ||
        !strstr(text, "inventory rewound its cursor on orders from "))
        fail_msg("the report does not list the restore:\n%s", text);
    free(text);
    json_decref(lost_ids);
    batch_free(&before);
    batch_free(&lost);
}

/* What participant k holds of order id: "payment-id status" or the
 * reservation's state. */
static const char *held_by(int k, const char *id)
{
    static char out[128];
    if (k == PAY) {
        json_t *j = get_json(
            h_fmt("%s/v1/payments?order_id=%s", F.s[PAY].url, id), "payments");
        json_t *p = json_array_get(json_object_get(j, "items"), 0);
        snprintf(out, sizeof(out), "%s %s", h_jstr(p, "id"),
                 h_jstr(p, "status"));
        json_decref(j);
    } else {
        json_t *j = get_maybe(h_fmt("%s/v1/reservations/%s", F.s[INV].url, id),
                              "inventory");
        snprintf(out, sizeof(out), "%s", j ? h_jstr(j, "state") : "none");
        json_decref(j);
    }
    return out;
}

/*
 * A participant restored: it re-applies orders' commands from its restored
 * cursor and comes back to the same state (payments with the same payment
 * ids), so reconcile finds nothing and the audit, ledgers compared with
 * the provider's, is clean.
 */
static void participant_restored(int k, const char *const *consumers)
{
    struct batch b = {0}, loaded = {0};
    struct load load;
    struct backup bk;
    shop(&b, 2 * F.scale, 1);
    load_start(&load);
    backup(k, &bk);
    size_t from = b.n;
    shop(&b, 5 * F.scale, 1 * F.scale);
    size_t settled = b.n;
    char(*was)[128] = moat_xcalloc(settled, 128);
    for (size_t i = from; i < settled; i++)
        snprintf(was[i], 128, "%s", held_by(k, b.ids[i]));
    burst(&b, 3 * F.scale);
    for (size_t i = settled; i < b.n; i++)
        H_WAIT_UNTIL(held_elsewhere(b.ids[i]), SAGA_WAIT_MS,
                     "order %s to reach the participants", b.ids[i]);
    restore(k, &bk, consumers);
    h_sleep_ms(500); /* the customer goes on a little after the restore */
    load_stop(&load, &loaded);
    /* The copy is from before these orders; the restored service must
     * re-apply orders' commands to know them again. */
    for (size_t i = 0; i < b.n; i++)
        wait_final(b.ids[i]);
    for (size_t i = 0; i < loaded.n; i++)
        wait_final(loaded.ids[i]);
    wait_caught_up();
    for (size_t i = from; i < settled; i++)
        H_WAIT_UNTIL(strcmp(held_by(k, b.ids[i]), was[i]) == 0, SAGA_WAIT_MS,
                     "%s to hold order %s as before (%s)", F.s[k].name,
                     b.ids[i], was[i]);
    expect_audit_clean("after the participant was restored");
    json_t *r = reconcile_repair();
    assert_int_equal(h_jint(r, "divergence_count"), 0);
    expect_restore_listed(r, k, &bk, consumers);
    json_decref(r);
    free(was);
    batch_free(&b);
    batch_free(&loaded);
}

static void test_payments_restored(void **state)
{
    MOAT_UNUSED(state);
    static const char *const consumers[] = {"orders", "readmodel", NULL};
    participant_restored(PAY, consumers);
}

static void test_inventory_restored(void **state)
{
    MOAT_UNUSED(state);
    static const char *const consumers[] = {"orders", NULL};
    participant_restored(INV, consumers);
}

/*
 * Orders restored with no copy of the lost orders' lines to be had (a
 * deployment without the read model): reconcile undoes at the
 * participants what they still hold of each (the reservation released,
 * the capture refunded) and counts the ones settled everywhere. Runs last:
 * a read model that does have the copies would re-create these orders.
 */
static void test_orders_restored_without_copies(void **state)
{
    MOAT_UNUSED(state);
    struct batch lost = {0};
    struct backup b;
    backup(ORD, &b);
    shop(&lost, 3 * F.scale, 1 * F.scale);
    restore(ORD, &b, orders_consumers);
    json_t *r = reconcile_repair_in(F.deploy_no_copies);
    /* This deployment names no read model: its rewind is not read. */
    static const char *const consumers[] = {"inventory", "payments",
                                            "notifications", NULL};
    expect_restore_listed(r, ORD, &b, consumers);
    assert_int_equal(h_jint(r, "left_count"), 0);
    assert_int_equal(h_jint(r, "divergence_count"), 3 * F.scale);
    assert_int_equal(h_jint(r, "repaired_count"), 3 * F.scale);
    assert_int_equal(h_jint(r, "settled_unknown_count"), 1 * F.scale);
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(r, "divergences"), i, d)
    {
        assert_string_equal(h_jstr(d, "kind"), "order-lost");
        assert_true(json_is_true(json_object_get(d, "repaired")));
    }
    json_decref(r);
    for (i = 0; i < 3 * F.scale; i++) {
        assert_string_equal(held_by(INV, lost.ids[i]), "released");
        assert_non_null(strstr(held_by(PAY, lost.ids[i]), " refunded"));
    }
    expect_audit_clean("after the lost orders were compensated");
    r = reconcile_repair_in(F.deploy_no_copies);
    assert_int_equal(h_jint(r, "divergence_count"), 0);
    assert_int_equal(h_jint(r, "settled_unknown_count"), 4 * F.scale);
    json_decref(r);
    batch_free(&lost);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_orders_restored),
        cmocka_unit_test(test_payments_restored),
        cmocka_unit_test(test_inventory_restored),
        cmocka_unit_test(test_orders_restored_without_copies),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
