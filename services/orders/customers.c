/*
 * customers.c - orders' denormalised copy of each customer's display name
 * and email (the seeds' example of keeping a copy current from another
 * service's events).
 *
 * users' events carry no personal data (docs/users.md), so an event only
 * marks the copy stale, inside the consumer's transaction; a refresher
 * then reads the profile from users' API, acting for that customer (users
 * lets a user read themself), and stores it. Orders placed meanwhile show
 * the last copy. A customer users no longer knows (404) is stored empty.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contracts/users.h"
#include "moat/auth.h"
#include "moat/log.h"
#include "orders.h"

#define REFRESH_INTERVAL_MS 300
#define REFRESH_BATCH       32

const char *const ord_users_events[] = {USERS_USER_REGISTERED,
                                        USERS_USER_UPDATED, NULL};

int ord_customers_apply(struct moat_db *db, const struct moat_event *ev,
                        void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    if (strlen(ev->subject) > ORD_REF_MAX) {
        *why = "user id too long";
        return MOAT_EINVAL;
    }
    int rc = ord_customer_mark_stale(db, ev->subject, moat_wall_ms());
    if (rc != MOAT_OK)
        *why = "cannot mark the customer stale";
    return rc;
}

/* One batch of fetches in flight; the next waits for all of them. */
struct refresh_batch {
    struct ord_service *os;
    size_t pending;
};

struct fetch {
    struct refresh_batch *batch;
    char id[ORD_REF_MAX + 1];
};

static void schedule(struct ord_service *os)
{
    const struct timeval tv = {0, REFRESH_INTERVAL_MS * 1000};
    evtimer_add(os->refresh, &tv);
}

static void store_profile(struct ord_service *os, const char *id,
                          const char *name, const char *email)
{
    int rc = ord_customer_put(os->db, os->kr, id, name, email, moat_wall_ms());
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot store a customer copy", "{s:s, s:s}",
                 "customer", id, "error", moat_strerror(rc));
}

static void on_profile(const struct moat_http_response *resp, void *arg)
{
    struct fetch *f = arg;
    struct refresh_batch *b = f->batch;
    if (resp->err == MOAT_OK && resp->status == 200) {
        json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
        const char *name =
            json_string_value(json_object_get(j, "display_name"));
        const char *email = json_string_value(json_object_get(j, "email"));
        if (j && name && email)
            store_profile(b->os, f->id, name, email);
        json_decref(j);
    } else if (resp->err == MOAT_OK && resp->status == 404) {
        store_profile(b->os, f->id, "", "");
    } else if (resp->err != MOAT_ECANCELLED) {
        moat_log(MOAT_LOG_WARN, "cannot read a customer from users",
                 "{s:s, s:i, s:s}", "customer", f->id, "status", resp->status,
                 "error", resp->err ? moat_strerror(resp->err) : "");
    }
    free(f);
    if (--b->pending == 0) {
        if (resp->err != MOAT_ECANCELLED)
            schedule(b->os);
        free(b);
    }
}

static bool fetch_start(struct ord_service *os, struct refresh_batch *b,
                        const char *id)
{
    char *token = NULL;
    struct moat_principal p = {0};
    snprintf(p.user_id, sizeof(p.user_id), "%s", id);
    snprintf(p.role, sizeof(p.role), "customer");
    if (os->svc->auth &&
        moat_auth_token(os->svc->auth, "users", &p, &token) != MOAT_OK)
        return false;
    char *url = moat_xasprintf("%s/v1/users/%s", os->users_url, id);
    const struct moat_http_header h[] = {{MOAT_SERVICE_TOKEN_HEADER, token}};
    const struct moat_http_call call = {
        .method = "GET",
        .url = url,
        .headers = h,
        .nheaders = token ? 1 : 0,
        .timeout_ms = os->api_timeout_ms,
    };
    struct fetch *f = moat_xcalloc(1, sizeof(*f));
    f->batch = b;
    snprintf(f->id, sizeof(f->id), "%s", id);
    int rc = moat_http_client_send(os->api, &call, on_profile, f);
    free(url);
    free(token);
    if (rc != MOAT_OK) {
        free(f);
        return false;
    }
    b->pending++;
    return true;
}

static void refresh(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct ord_service *os = arg;
    char(*ids)[ORD_REF_MAX + 1] = moat_xcalloc(REFRESH_BATCH, ORD_REF_MAX + 1);
    size_t n = 0;
    struct refresh_batch *b = moat_xcalloc(1, sizeof(*b));
    b->os = os;
    if (ord_customers_stale(os->db, REFRESH_BATCH, ids, &n) == MOAT_OK) {
        for (size_t i = 0; i < n; i++)
            fetch_start(os, b, ids[i]);
    }
    free(ids);
    if (b->pending == 0) {
        free(b);
        schedule(os); /* else the batch's last answer schedules the next */
    }
}

int ord_customers_start_refresher(struct ord_service *os)
{
    os->refresh = evtimer_new(os->svc->base, refresh, os);
    if (!os->refresh)
        return MOAT_EIO;
    schedule(os);
    return MOAT_OK;
}
