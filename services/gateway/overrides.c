/*
 * overrides.c - the latest access state of recently changed accounts, so
 * that a suspension takes effect long before the access tokens minted
 * earlier expire (docs/security.md "Suspension delay").
 *
 * The gateway follows users' event feed (long poll, from sequence 0 at
 * start: it keeps nothing on disk) and keeps, per user, the state the
 * newest UserSuspended / UserRestored / RoleChanged states: role and
 * permissions. access.c replaces a token's role and permissions with it.
 * Every account event carries the whole state after the change, so the
 * newest one is all that matters. An entry is kept while a token minted
 * before its change could still be accepted (the access-token lifetime
 * plus the JWT leeway plus a minute of clock skew); after that every live
 * token was minted from the new state and says the same thing.
 *
 * SessionsEnded (a logout, a reused refresh token, a password change)
 * ends access tokens the same way: by session id (the "sid" claim), or
 * every token of the account issued before the change, kept for as long
 * as such a token could live (docs/security.md "Revocation").
 *
 * The delay from the commit of a suspension to its effect here is the
 * feed's: the parked long poll is answered on the next loop turn of
 * users, well under a second on one host. While users cannot be reached
 * the entries stay as they are and new changes are not seen: the bound is
 * then the access token's lifetime.
 *
 * Threads: everything on the loop thread. Ownership: struct gw_overrides
 * (gw->overrides) owns the source, the table and the timer.
 */
#include "moat/common.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

#include "contracts/users.h"
#include "gateway.h"
#include "moat/auth.h"
#include "moat/events.h"
#include "moat/jwt.h"
#include "moat/log.h"

#define OV_PULL_LIMIT    1000
#define OV_WAIT_MS       25000
#define OV_RETRY_MIN_MS  100
#define OV_RETRY_MAX_MS  5000
#define OV_SKEW_S        60
#define OV_PRUNE_EVERY_S 10
/* Entries beyond this are not added (logged): the token lifetime bound
 * applies to those accounts. ~200 bytes each. */
#define OV_MAX_ENTRIES 200000

struct gw_overrides {
    struct gw *gw; /* borrowed */
    struct moat_event_source *src;
    json_t *table;    /* {user_id: {"role", "perms", "at"}} */
    json_t *sessions; /* ended sessions: {sid: ended_at} */
    json_t *ended;    /* accounts' every session: {user_id: ended_at} */
    int64_t after;
    int64_t horizon_s; /* keep an entry this long after its change */
    unsigned retry_ms;
    bool caught_up; /* reached the head once */
    bool full_logged;
    int64_t pruned_s;    /* when prune last walked the table */
    struct event *timer; /* retry after a failure */
    struct moat_metric_series *m_entries;
};

static void pull(struct gw_overrides *o);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    pull(arg);
}

static void retry_later(struct gw_overrides *o)
{
    struct timeval tv = {(time_t)(o->retry_ms / 1000),
                         (suseconds_t)(o->retry_ms % 1000) * 1000};
    evtimer_add(o->timer, &tv);
    o->retry_ms =
        o->retry_ms * 2 > OV_RETRY_MAX_MS ? OV_RETRY_MAX_MS : o->retry_ms * 2;
}

/* Drop entries no live token can be older than. */
static void prune(struct gw_overrides *o, int64_t now_s)
{
    const char *key;
    json_t *val;
    void *tmp;
    o->pruned_s = now_s;
    json_object_foreach_safe(o->table, tmp, key, val)
    {
        json_int_t at = json_integer_value(json_object_get(val, "at"));
        if (at < now_s - o->horizon_s)
            json_object_del(o->table, key);
    }
    json_t *times[] = {o->sessions, o->ended};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(times); i++)
        json_object_foreach_safe(times[i], tmp, key, val)
        {
            if (json_integer_value(val) < now_s - o->horizon_s)
                json_object_del(times[i], key);
        }
}

static size_t entries(const struct gw_overrides *o)
{
    return json_object_size(o->table) + json_object_size(o->sessions) +
           json_object_size(o->ended);
}

/* Room for one more entry (after a prune if need be); logged once when
 * there is none. */
static bool room(struct gw_overrides *o, int64_t now_s)
{
    if (entries(o) < OV_MAX_ENTRIES)
        return true;
    prune(o, now_s);
    if (entries(o) < OV_MAX_ENTRIES)
        return true;
    if (!o->full_logged)
        moat_log(MOAT_LOG_ERROR,
                 "access override table full: changes wait for the tokens "
                 "to expire",
                 "{s:i}", "max", OV_MAX_ENTRIES);
    o->full_logged = true;
    return false;
}

/* SessionsEnded: the session's tokens, or all of the account's. */
static void apply_sessions_ended(struct gw_overrides *o, json_t *data,
                                 int64_t now_s)
{
    const char *id = json_string_value(json_object_get(data, "id"));
    const char *sid = json_string_value(json_object_get(data, "sid"));
    json_t *at = json_object_get(data, "ended_at");
    if (!id || !sid || !json_is_integer(at) || strlen(id) >= 64 ||
        strlen(sid) >= 48) {
        moat_log(MOAT_LOG_WARN, "malformed account event ignored", "{s:s}",
                 "type", USERS_SESSIONS_ENDED);
        return;
    }
    if (json_integer_value(at) < now_s - o->horizon_s || !room(o, now_s))
        return;
    json_object_set_new(*sid ? o->sessions : o->ended, *sid ? sid : id,
                        json_integer(json_integer_value(at)));
}

/* Record the state an account event states (its data). */
static void apply_event(struct gw_overrides *o, const char *type, json_t *data,
                        int64_t now_s)
{
    if (strcmp(type, USERS_SESSIONS_ENDED) == 0) {
        apply_sessions_ended(o, data, now_s);
        return;
    }
    if (strcmp(type, USERS_USER_SUSPENDED) != 0 &&
        strcmp(type, USERS_USER_RESTORED) != 0 &&
        strcmp(type, USERS_ROLE_CHANGED) != 0)
        return;
    const char *id = json_string_value(json_object_get(data, "id"));
    const char *role = json_string_value(json_object_get(data, "role"));
    json_t *at = json_object_get(data, "changed_at");
    if (!id || !role || !json_is_integer(at) || strlen(id) >= 64 ||
        strlen(role) >= 16) {
        moat_log(MOAT_LOG_WARN, "malformed account event ignored", "{s:s}",
                 "type", type);
        return;
    }
    if (json_integer_value(at) < now_s - o->horizon_s)
        return; /* every token minted before it has expired */
    bool suspended = json_is_true(json_object_get(data, "suspended"));
    bool comment_suspended =
        json_is_true(json_object_get(data, "comment_suspended"));
    if (!json_object_get(o->table, id) && !room(o, now_s))
        return;
    json_object_set_new(
        o->table, id,
        json_pack("{s:s, s:i, s:O}", "role", role, "perms",
                  (int)moat_perms_for(role, suspended, comment_suspended), "at",
                  at));
}

static void on_pulled(int err, json_t *events, int64_t head, int64_t next_after,
                      void *arg)
{
    (void)next_after; /* every type is asked for: the last event's seq */
    struct gw_overrides *o = arg;
    if (err == MOAT_ECANCELLED)
        return;
    if (err == MOAT_ENOTFOUND && head > o->after) {
        /* Retention deleted events older than any live token: skip. */
        moat_log(MOAT_LOG_WARN, "users' early events are gone; resuming",
                 "{s:I}", "after", (json_int_t)head);
        o->after = head;
        pull(o);
        return;
    }
    if (err != MOAT_OK) {
        retry_later(o);
        return;
    }
    o->retry_ms = OV_RETRY_MIN_MS;
    int64_t now_s = (int64_t)time(NULL);
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        const char *seq = json_string_value(json_object_get(ev, "sequence"));
        const char *type = json_string_value(json_object_get(ev, "type"));
        json_t *data = json_object_get(ev, "data");
        int64_t n = 0;
        if (!seq || moat_parse_i64(seq, 1, INT64_MAX, &n) != MOAT_OK ||
            n <= o->after)
            continue;
        json_t *ver = json_object_get(ev, "dataschemaversion");
        json_t *cur = NULL;
        const char *why = NULL;
        if (type && json_is_object(data) && users_schema(type) > 0) {
            if (users_upcast(type,
                             json_is_integer(ver) ? (int)json_integer_value(ver)
                                                  : 1,
                             data, &cur, &why) == MOAT_OK)
                apply_event(o, type, cur, now_s);
            else
                moat_log(MOAT_LOG_WARN, "account event not understood",
                         "{s:s, s:s}", "type", type, "error", why ? why : "");
            json_decref(cur);
        }
        o->after = n;
    }
    if (!o->caught_up && o->after >= head) {
        o->caught_up = true;
        moat_log(MOAT_LOG_INFO, "following users' account events", "{s:I, s:i}",
                 "after", (json_int_t)o->after, "entries",
                 (int)json_object_size(o->table));
    }
    if (now_s - o->pruned_s >= OV_PRUNE_EVERY_S)
        prune(o, now_s);
    moat_metric_set(o->m_entries, (double)entries(o));
    pull(o);
}

static void pull(struct gw_overrides *o)
{
    int rc = o->src->ops->pull(o->src, o->after, OV_PULL_LIMIT, OV_WAIT_MS,
                               on_pulled, o);
    if (rc != MOAT_OK)
        retry_later(o);
}

int gw_overrides_init(struct gw *gw, int64_t access_ttl_s)
{
    const char *url = gw->backends[GW_BK_USERS].base_url;
    if (!gw->user_auth || !url) {
        moat_log(MOAT_LOG_WARN,
                 "no users service known: suspensions take effect when the "
                 "access tokens expire",
                 NULL);
        return MOAT_OK;
    }
    struct gw_overrides *o = moat_xcalloc(1, sizeof(*o));
    o->gw = gw;
    o->table = json_object();
    o->sessions = json_object();
    o->ended = json_object();
    o->horizon_s = access_ttl_s + MOAT_JWT_LEEWAY_S + OV_SKEW_S;
    o->retry_ms = OV_RETRY_MIN_MS;
    /* The skeleton's feed client: its timeout outlasts a long poll (the
     * proxy client's does not); it is freed after release. */
    if (!gw->svc->feeds) {
        const struct moat_http_client_options opts = {
            .timeout_ms = MOAT_FEED_CLIENT_TIMEOUT_MS};
        if (moat_http_client_new(&gw->svc->feeds, gw->svc->base, &opts) !=
            MOAT_OK) {
            gw->overrides = o;
            return MOAT_EINVAL;
        }
    }
    o->src = moat_feed_source_new("users", url, gw->svc->feeds, gw->svc->auth);
    o->timer = evtimer_new(gw->svc->base, on_timer, o);
    struct moat_metric_family *f = moat_metrics_family(
        gw->svc->metrics, MOAT_GAUGE, "moat_gateway_access_overrides",
        "Accounts whose recent role or suspension change overrides their "
        "tokens",
        NULL, NULL, 0);
    if (!o->src || !o->timer || !f) {
        gw->overrides = o;
        return MOAT_EINVAL;
    }
    o->m_entries = moat_metric_single(f);
    gw->overrides = o;
    return MOAT_OK;
}

void gw_overrides_start(struct gw *gw)
{
    if (gw->overrides)
        pull(gw->overrides);
}

void gw_overrides_free(struct gw *gw)
{
    struct gw_overrides *o = gw->overrides;
    if (!o)
        return;
    if (o->src)
        o->src->ops->free(o->src);
    if (o->timer)
        event_free(o->timer);
    json_decref(o->table);
    json_decref(o->sessions);
    json_decref(o->ended);
    free(o);
    gw->overrides = NULL;
}

void gw_overrides_apply(const struct gw *gw, struct moat_principal *p)
{
    if (!gw->overrides || !p->user_id[0])
        return;
    json_t *e = json_object_get(gw->overrides->table, p->user_id);
    if (!e)
        return;
    snprintf(p->role, sizeof(p->role), "%s",
             json_string_value(json_object_get(e, "role")));
    p->perms = (unsigned)json_integer_value(json_object_get(e, "perms"));
}

bool gw_overrides_revoked(const struct gw *gw, const struct moat_jwt_claims *c)
{
    const struct gw_overrides *o = gw->overrides;
    if (!o)
        return false;
    if (c->sid[0] && json_object_get(o->sessions, c->sid))
        return true;
    /* Strictly before: a token issued in the second of the change (a new
     * login right after a password change) stays valid. */
    json_t *at = json_object_get(o->ended, c->sub);
    return at && c->iat < json_integer_value(at);
}
