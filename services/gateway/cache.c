/*
 * cache.c - product and profile reads served from Redis, kept right by the
 * owners' events (docs/gateway.md "Read cache").
 *
 * The cache is never a source of truth: an entry is a copy of an
 * upstream's 200 answer (body, ETag, Content-Type) of GET
 * /v{1,2}/products/{id} (catalog) or GET /v{1,2}/profiles/{user_id}
 * (profiles), and every way the cache can fail ends in the request going
 * to the upstream as it would without one.
 *
 *   request --GET, cacheable path--> usable? --no--> upstream (bypass)
 *       usable: connected, authenticated, the kind's feed synced, breaker
 *       closed (or this is its probe), fewer than GW_CACHE_MAX_PENDING
 *       lookups out
 *   HMGET key ver <api>:b <api>:e <api>:t  (bounded by timeout_ms)
 *       --all three fields--> hit: answered from Redis (304 on a matching
 *                             If-None-Match)
 *       --missing-----------> miss: upstream; its 200 is stored (fill)
 *       --error, timeout----> error: upstream; the breaker counts it
 *
 * One key per resource, a hash: "ver" (the version the entry is for, the
 * N of ETag "vN") and, per API version rendered, body, ETag and
 * Content-Type. Every key expires after ttl_s: a safety net, not the
 * mechanism.
 *
 * Invalidation. For each cached kind the gateway follows the owner's feed
 * (as overrides.c follows users') and, for every event that changes a
 * resource, writes a tombstone: the entry is replaced by {"ver": V}, V the
 * version the event carries (ProductDeleted and events without a version:
 * GW_CACHE_VER_MAX, which no fill can pass). A fill is a compare-and-set
 * in one Lua script: it stores version N only when the key holds no
 * version above N. That closes the race
 *     miss -> upstream answers vN -> event vN+1 invalidates -> fill vN
 * since the tombstone vN+1 refuses the late fill of vN. A tombstone of
 * version V only replaces an entry older than V, so a fill of vN+1 that
 * beat the event of vN+1 stays.
 *
 * Cursor. The feed position lives in Redis next to the entries
 * ("<prefix>:cursor:<source>"), written by the same script as the batch's
 * tombstones, only ever forward (several gateways share it). A Redis that
 * lost its data lost the cursor with the entries: then nothing is stale,
 * and the gateway skips to the feed's head before it uses the cache. The
 * cursor has no TTL and moat up runs Redis with volatile-lru, so memory
 * pressure evicts entries, never the cursor. Applying a batch twice
 * (a cursor write lost) only rewrites tombstones: at least once is enough.
 * Until a (re)connected gateway has applied the feed up to its head, it
 * neither reads nor fills: entries it could not invalidate while away may
 * be stale.
 *
 * Threads: everything on the loop thread; hiredis's async API with its
 * libevent adapter, so Redis never blocks the loop. Ownership: struct
 * gw_cache (gw->cache) owns the Redis context, the feeds, the timers and
 * every lookup and fill under way; a lookup is freed by its hiredis
 * callback (which hiredis always calls, with a NULL reply when the
 * connection goes), never by its timer.
 */
#include "moat/common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <jansson.h>
#include <sodium.h>

#include "contracts/catalog.h"
#include "contracts/profiles.h"
#include "gateway.h"
#include "moat/config.h"
#include "moat/events.h"
#include "moat/log.h"

#define GW_CACHE_DEFAULT_TTL_S      60
#define GW_CACHE_DEFAULT_TIMEOUT_MS 100
#define GW_CACHE_MAX_PENDING        4096
#define GW_CACHE_MAX_BODY           (256 * 1024) /* larger answers: not kept */
#define GW_CACHE_PASSWORD_MAX       256
#define GW_CACHE_PREFIX_MAX         64
#define GW_CACHE_ID_MAX             64
#define GW_CACHE_HOST_MAX           64
#define GW_CACHE_PULL_LIMIT         1000
#define GW_CACHE_WAIT_MS            25000
#define GW_CACHE_RETRY_MIN_MS       100
#define GW_CACHE_RETRY_MAX_MS       2000
/* Above every real version, exact in a Lua number (2^53 - 1). */
#define GW_CACHE_VER_MAX "9007199254740991"

/* Store version ARGV[1] of the API rendering ARGV[2] unless the key holds
 * a newer version; a newer fill drops the older renderings. */
static const char fill_script[] =
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'ver') or '-1')\n"
    "local v = tonumber(ARGV[1])\n"
    "if cur > v then return 0 end\n"
    "if cur < v then redis.call('DEL', KEYS[1]) end\n"
    "redis.call('HSET', KEYS[1], 'ver', ARGV[1], ARGV[2] .. ':b', ARGV[3],\n"
    "           ARGV[2] .. ':e', ARGV[4], ARGV[2] .. ':t', ARGV[5])\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[6])\n"
    "return 1\n";

/* KEYS[1] the cursor, KEYS[2..] the changed resources; ARGV[1] the new
 * cursor, ARGV[2] the TTL, ARGV[i + 1] the version of KEYS[i]. */
static const char invalidate_script[] =
    "for i = 2, #KEYS do\n"
    "  local v = tonumber(ARGV[i + 1])\n"
    "  if tonumber(redis.call('HGET', KEYS[i], 'ver') or '-1') < v then\n"
    "    redis.call('DEL', KEYS[i])\n"
    "    redis.call('HSET', KEYS[i], 'ver', ARGV[i + 1])\n"
    "    redis.call('EXPIRE', KEYS[i], ARGV[2])\n"
    "  end\n"
    "end\n"
    "if tonumber(redis.call('GET', KEYS[1]) or '-1') < tonumber(ARGV[1]) "
    "then\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "end\n"
    "return #KEYS - 1\n";

/* A cached resource: whose it is, its upstream path, what changes it. */
struct cache_kind {
    const char *service;      /* upstream service and feed source */
    const char *collection;   /* "/v1/<collection>/<id>" */
    const char *key_name;     /* "product": "<prefix>:catalog:product:<id>" */
    const char *exclude;      /* an id that is not one ("me"), or NULL */
    const char *const *types; /* event types that change the resource */
};

static const char *const catalog_types[] = {CATALOG_PRODUCT_CREATED,
                                            CATALOG_PRODUCT_UPDATED,
                                            CATALOG_PRODUCT_DELETED, NULL};
static const char *const profiles_types[] = {PROFILES_PROFILE_UPDATED, NULL};

static const struct cache_kind kinds[] = {
    {"catalog", "products", "product", NULL, catalog_types},
    {"profiles", "profiles", "profile", "me", profiles_types},
};
#define NKINDS MOAT_ARRAY_LEN(kinds)

enum lookup_result { LR_HIT, LR_MISS, LR_BYPASS, LR_ERROR, LR_N };
static const char *const lookup_names[LR_N] = {"hit", "miss", "bypass",
                                               "error"};
enum fill_result { FR_STORED, FR_STALE, FR_SKIPPED, FR_ERROR, FR_N };
static const char *const fill_names[FR_N] = {"stored", "stale", "skipped",
                                             "error"};

struct cache_feed {
    struct gw_cache *c;
    const struct cache_kind *kind;
    struct moat_event_source *src; /* NULL: the service is not routed */
    const char *origin;            /* its feed's base URL; borrowed */
    int64_t after;
    bool ffwd;     /* Redis lost the cursor: skip to the head */
    bool synced;   /* applied up to the head since the last connect */
    bool pulling;  /* a pull is out */
    bool applying; /* a batch script is out */
    unsigned gen;  /* c->gen when the pull went out */
    unsigned retry_ms;
    struct event *timer;
    struct moat_metric_series *m_invalidations;
    struct moat_metric_series *m_synced;
};

struct gw_cache {
    struct gw *gw; /* borrowed */
    char host[GW_CACHE_HOST_MAX];
    uint16_t port;
    char password[GW_CACHE_PASSWORD_MAX];
    char prefix[GW_CACHE_PREFIX_MAX];
    int64_t ttl_s;
    long timeout_ms;
    redisAsyncContext *ac; /* NULL while disconnected */
    bool ready;            /* authenticated and cursors read */
    bool closing;          /* gw_cache_close: no new commands */
    bool logged_down;      /* "unavailable" logged since the last ready */
    unsigned gen;          /* counts connections that became ready */
    unsigned retry_ms;
    struct event *reconnect;
    size_t pending; /* lookups out */
    struct moat_breaker breaker;
    struct cache_feed feeds[NKINDS];
    long fill_delay_ms; /* MOAT_TEST_HOOKS only: hold each fill */
    struct held_fill *held;
    struct moat_metric_series *m_lookups[LR_N];
    struct moat_metric_series *m_fills[FR_N];
    struct moat_metric_series *m_connected;
    struct moat_metric_series *m_breaker;
};

/* One GET waiting for Redis. */
struct lookup {
    struct gw_cache *c;
    struct gw_route *route;
    struct moat_req *req;
    char *url;
    const struct cache_kind *kind;
    char id[GW_CACHE_ID_MAX + 1];
    char api[3]; /* "v1", "v2" */
    bool probe;
    bool done; /* answered or forwarded already (timeout) */
    struct event *timer;
};

/* What a miss stores once the upstream answers; see gw_cache_filled. */
struct gw_cache_fill {
    struct gw_cache *c;
    unsigned gen; /* c->gen at the lookup */
    const struct cache_kind *kind;
    char id[GW_CACHE_ID_MAX + 1];
    char api[3];
};

/* A fill held back by the test hook; in c->held until sent. */
struct held_fill {
    struct gw_cache *c;
    struct held_fill *next;
    unsigned gen;
    char *key, *api, *ver, *body, *etag, *ctype;
    size_t body_len;
    struct event *timer;
};

static void connect_redis(struct gw_cache *c);
static void feed_pull(struct cache_feed *f);
static void feed_restart(struct cache_feed *f);

static void count_lookup(struct gw_cache *c, enum lookup_result r)
{
    moat_metric_add(c->m_lookups[r], 1);
}

static char *entry_key(const struct gw_cache *c, const struct cache_kind *k,
                       const char *id)
{
    return moat_xasprintf("%s:%s:%s:%s", c->prefix, k->service, k->key_name,
                          id);
}

static char *cursor_key(const struct gw_cache *c, const struct cache_kind *k)
{
    return moat_xasprintf("%s:cursor:%s", c->prefix, k->service);
}

static void set_timer(struct event *ev, long ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static unsigned backoff(unsigned *ms)
{
    unsigned now = *ms;
    *ms = *ms * 2 > GW_CACHE_RETRY_MAX_MS ? GW_CACHE_RETRY_MAX_MS : *ms * 2;
    return now;
}

/* ---- connection ---- */

static void went_down(struct gw_cache *c, const char *why)
{
    c->ac = NULL; /* hiredis frees the context after this callback */
    c->ready = false;
    moat_metric_set(c->m_connected, 0);
    for (size_t i = 0; i < NKINDS; i++) {
        c->feeds[i].synced = false;
        moat_metric_set(c->feeds[i].m_synced, 0);
    }
    if (c->closing)
        return;
    if (!c->logged_down)
        moat_log(MOAT_LOG_WARN,
                 "redis unavailable: reads go to the services; retrying",
                 "{s:s, s:s, s:i}", "error", why ? why : "", "host", c->host,
                 "port", (int)c->port);
    c->logged_down = true;
    set_timer(c->reconnect, backoff(&c->retry_ms));
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct gw_cache *c = ac->data;
    if (status != REDIS_OK)
        went_down(c, ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct gw_cache *c = ac->data;
    went_down(c, status == REDIS_OK ? "disconnected" : ac->errstr);
}

static void on_reconnect_timer(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    connect_redis(arg);
}

static bool reply_ok(const redisReply *r)
{
    return r && r->type != REDIS_REPLY_ERROR;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    MOAT_UNUSED(priv);
    const redisReply *r = reply;
    struct gw_cache *c = ac->data;
    if (r && r->type == REDIS_REPLY_ERROR && !c->closing) {
        moat_log(MOAT_LOG_ERROR, "redis refused the password", "{s:s}", "error",
                 r->str);
        redisAsyncDisconnect(ac);
    }
}

/* The cursors, read once per connection: then the feeds (re)start. */
static void on_cursors(redisAsyncContext *ac, void *reply, void *priv)
{
    MOAT_UNUSED(priv);
    const redisReply *r = reply;
    struct gw_cache *c = ac->data;
    if (c->closing || !reply_ok(r) || r->type != REDIS_REPLY_ARRAY ||
        r->elements != NKINDS)
        return; /* the disconnect, if any, reconnects */
    c->ready = true;
    c->gen++;
    c->retry_ms = GW_CACHE_RETRY_MIN_MS;
    moat_metric_set(c->m_connected, 1);
    if (c->logged_down)
        moat_log(MOAT_LOG_INFO, "redis available", "{s:s, s:i}", "host",
                 c->host, "port", (int)c->port);
    c->logged_down = false;
    for (size_t i = 0; i < NKINDS; i++) {
        struct cache_feed *f = &c->feeds[i];
        const redisReply *e = r->element[i];
        int64_t at = 0;
        f->ffwd = !(e->type == REDIS_REPLY_STRING &&
                    moat_parse_i64(e->str, 0, INT64_MAX, &at) == MOAT_OK);
        if (!f->ffwd)
            f->after = at;
        f->applying = false;
        feed_restart(f);
    }
}

static struct moat_event_source *feed_source(struct cache_feed *f)
{
    struct gw *gw = f->c->gw;
    return moat_feed_source_new(f->kind->service, f->origin, gw->svc->feeds,
                                gw->svc->auth);
}

/*
 * Pull from the cursor just read. A pull of the old connection may still
 * be parked at the producer for up to GW_CACHE_WAIT_MS: the source is
 * replaced (freeing one drops its parked pull, no callback) rather than
 * waited for.
 */
static void feed_restart(struct cache_feed *f)
{
    if (!f->src)
        return;
    if (f->pulling) {
        f->src->ops->free(f->src);
        f->src = feed_source(f);
        f->pulling = false;
        if (!f->src) {
            moat_log(MOAT_LOG_ERROR, "cannot follow a cached service's feed",
                     "{s:s}", "source", f->kind->service);
            return;
        }
    }
    feed_pull(f);
}

static void connect_redis(struct gw_cache *c)
{
    if (c->closing || c->ac)
        return;
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (!ac) {
        set_timer(c->reconnect, backoff(&c->retry_ms));
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof(why), "%s", ac->errstr);
        redisAsyncFree(ac);
        c->ac = NULL;
        went_down(c, why);
        return;
    }
    ac->data = c;
    c->ac = ac;
    redisLibeventAttach(ac, c->gw->svc->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Queued until the connection is up, then sent in order. */
    if (c->password[0])
        redisAsyncCommand(ac, on_auth, NULL, "AUTH %s", c->password);
    const char *argv[1 + NKINDS];
    char *keys[NKINDS];
    argv[0] = "MGET";
    for (size_t i = 0; i < NKINDS; i++)
        argv[1 + i] = keys[i] = cursor_key(c, &kinds[i]);
    redisAsyncCommandArgv(ac, on_cursors, NULL, 1 + NKINDS, argv, NULL);
    for (size_t i = 0; i < NKINDS; i++)
        free(keys[i]);
}

/* ---- invalidation: following the owners' feeds ---- */

static void on_feed_timer(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    feed_pull(arg);
}

static void feed_retry(struct cache_feed *f)
{
    set_timer(f->timer, backoff(&f->retry_ms));
}

/* A batch's reply: the cursor moved with the tombstones. */
struct batch {
    struct cache_feed *f;
    unsigned gen;
    int64_t last, head;
    size_t n;
};

static void on_batch(redisAsyncContext *ac, void *reply, void *priv)
{
    MOAT_UNUSED(ac);
    struct batch *b = priv;
    struct cache_feed *f = b->f;
    struct gw_cache *c = f->c;
    if (c->closing || b->gen != c->gen || !c->ready) {
        free(b);
        return; /* a new connection restarts the feed from its cursor */
    }
    f->applying = false;
    if (!reply_ok(reply)) {
        moat_log(MOAT_LOG_WARN, "cache invalidation failed; retrying",
                 "{s:s, s:s}", "source", f->kind->service, "error",
                 reply ? ((const redisReply *)reply)->str : "no reply");
        free(b);
        feed_retry(f);
        return;
    }
    f->after = b->last;
    if (f->after >= b->head)
        f->ffwd = false;
    moat_metric_add(f->m_invalidations, (double)b->n);
    if (!f->synced && f->after >= b->head) {
        f->synced = true;
        moat_metric_set(f->m_synced, 1);
        moat_log(MOAT_LOG_INFO, "cache following its invalidations",
                 "{s:s, s:I}", "source", f->kind->service, "after",
                 (json_int_t)f->after);
    }
    free(b);
    feed_pull(f);
}

static bool changes_resource(const struct cache_kind *k, const char *type)
{
    for (const char *const *t = k->types; *t; t++)
        if (strcmp(*t, type) == 0)
            return true;
    return false;
}

/*
 * One script call for the batch: a tombstone per event that changes a
 * resource (none while fast-forwarding: the cache holds nothing older),
 * and the cursor.
 */
static void apply_batch(struct cache_feed *f, json_t *events, int64_t head)
{
    struct gw_cache *c = f->c;
    size_t cap = json_array_size(events);
    /* EVAL script numkeys cursor keys... new_cursor ttl versions... */
    const char **argv = moat_xcalloc(6 + 2 * cap, sizeof(*argv));
    char **owned = moat_xcalloc(2 * cap + 4, sizeof(*owned));
    size_t nowned = 0, nkeys = 0;
    int64_t last = f->after;
    size_t i;
    json_t *ev;

    /* Keys first, versions after: collect both, then lay them out. */
    const char **vers = moat_xcalloc(cap + 1, sizeof(*vers));
    const char **keys = moat_xcalloc(cap + 1, sizeof(*keys));
    json_array_foreach(events, i, ev)
    {
        const char *seq = json_string_value(json_object_get(ev, "sequence"));
        const char *type = json_string_value(json_object_get(ev, "type"));
        const char *subject = json_string_value(json_object_get(ev, "subject"));
        int64_t n = 0;
        if (!seq || moat_parse_i64(seq, 1, INT64_MAX, &n) != MOAT_OK ||
            n <= last)
            continue;
        last = n;
        if (f->ffwd || !type || !subject || !changes_resource(f->kind, type) ||
            strlen(subject) > GW_CACHE_ID_MAX)
            continue;
        json_t *v = json_object_get(json_object_get(ev, "data"), "version");
        bool versioned = strcmp(type, CATALOG_PRODUCT_DELETED) != 0 &&
                         json_is_integer(v) && json_integer_value(v) >= 0 &&
                         json_integer_value(v) < (json_int_t)1 << 53;
        keys[nkeys] = owned[nowned++] = entry_key(c, f->kind, subject);
        vers[nkeys++] = versioned
                            ? (owned[nowned++] = moat_xasprintf(
                                   "%lld", (long long)json_integer_value(v)))
                            : GW_CACHE_VER_MAX;
    }
    char *ckey = owned[nowned++] = cursor_key(c, f->kind);
    char *numkeys = owned[nowned++] = moat_xasprintf("%zu", nkeys + 1);
    char *cursor = owned[nowned++] = moat_xasprintf("%lld", (long long)last);
    char *ttl = owned[nowned++] = moat_xasprintf("%lld", (long long)c->ttl_s);
    size_t argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = invalidate_script;
    argv[argc++] = numkeys;
    argv[argc++] = ckey;
    for (size_t k = 0; k < nkeys; k++)
        argv[argc++] = keys[k];
    argv[argc++] = cursor;
    argv[argc++] = ttl;
    for (size_t k = 0; k < nkeys; k++)
        argv[argc++] = vers[k];

    struct batch *b = moat_xcalloc(1, sizeof(*b));
    *b = (struct batch){
        .f = f, .gen = c->gen, .last = last, .head = head, .n = nkeys};
    f->applying = true;
    if (redisAsyncCommandArgv(c->ac, on_batch, b, (int)argc, argv, NULL) !=
        REDIS_OK) {
        f->applying = false;
        free(b);
        feed_retry(f);
    }
    for (size_t k = 0; k < nowned; k++)
        free(owned[k]);
    free(owned);
    free(argv);
    free(keys);
    free(vers);
}

static void on_pulled(int err, json_t *events, int64_t head, void *arg)
{
    struct cache_feed *f = arg;
    struct gw_cache *c = f->c;
    f->pulling = false;
    if (err == MOAT_ECANCELLED || c->closing)
        return;
    if (!c->ready || f->gen != c->gen) {
        /* Redis went (and maybe came back) meanwhile: this batch goes
         * again from the cursor on the current connection. */
        if (c->ready && !f->applying)
            feed_pull(f);
        return;
    }
    if (err == MOAT_ENOTFOUND && head > f->after) {
        /* Retention deleted events this gateway never applied: entries
         * may be stale until they expire. */
        moat_log(MOAT_LOG_WARN,
                 "events of a cached service are gone; entries may be stale "
                 "until they expire",
                 "{s:s, s:I, s:I}", "source", f->kind->service, "after",
                 (json_int_t)f->after, "head", (json_int_t)head);
        f->after = head;
        feed_pull(f);
        return;
    }
    if (err != MOAT_OK) {
        feed_retry(f);
        return;
    }
    f->retry_ms = GW_CACHE_RETRY_MIN_MS;
    if (head < f->after) {
        /* The producer's feed went back (a restore): follow it from its
         * head. Entries of the lost versions expire with their TTL. */
        moat_log(MOAT_LOG_WARN,
                 "a cached service's feed is behind the cache's cursor "
                 "(restored?); following it from its head",
                 "{s:s, s:I, s:I}", "source", f->kind->service, "cursor",
                 (json_int_t)f->after, "head", (json_int_t)head);
        f->after = head;
    }
    if (json_array_size(events) == 0 && f->after < head) {
        feed_retry(f); /* nothing where events should be: later */
        return;
    }
    if (json_array_size(events) == 0 && f->synced) {
        feed_pull(f);
        return;
    }
    /* An empty batch at the head still goes through Redis once: the
     * cursor is written and the feed counts as synced. */
    apply_batch(f, events, head);
}

static void feed_pull(struct cache_feed *f)
{
    struct gw_cache *c = f->c;
    if (c->closing || !c->ready || f->pulling || f->applying || !f->src)
        return;
    f->gen = c->gen;
    f->pulling = true;
    int rc = f->src->ops->pull(f->src, f->after, GW_CACHE_PULL_LIMIT,
                               f->synced ? GW_CACHE_WAIT_MS : 0, on_pulled, f);
    if (rc != MOAT_OK) {
        f->pulling = false;
        feed_retry(f);
    }
}

/* ---- reads ---- */

static bool valid_id(const char *s, size_t len)
{
    if (len == 0 || len > GW_CACHE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

/* The kind, id and API version of an upstream URL, when it reads one
 * cacheable resource: "scheme://authority/v{1,2}/<collection>/<id>". */
static const struct cache_kind *match(const struct gw_route *r, const char *url,
                                      char *id, char *api)
{
    const char *p = strstr(url, "://");
    if (!p || strchr(url, '?') || strchr(url, '#'))
        return NULL;
    p = strchr(p + 3, '/');
    if (!p || p[1] != 'v' || (p[2] != '1' && p[2] != '2') || p[3] != '/')
        return NULL;
    api[0] = 'v';
    api[1] = p[2];
    api[2] = '\0';
    p += 4;
    for (size_t i = 0; i < NKINDS; i++) {
        const struct cache_kind *k = &kinds[i];
        size_t clen = strlen(k->collection);
        if (strcmp(r->service, k->service) != 0 ||
            strncmp(p, k->collection, clen) != 0 || p[clen] != '/')
            continue;
        const char *s = p + clen + 1;
        size_t len = strlen(s);
        if (!valid_id(s, len) || (k->exclude && strcmp(s, k->exclude) == 0))
            return NULL;
        memcpy(id, s, len + 1);
        return k;
    }
    return NULL;
}

/* If-None-Match lists etag (weak comparison, RFC 9110 13.1.2) or is *. */
static bool none_match(const char *inm, const char *etag)
{
    if (strcmp(inm, "*") == 0)
        return true;
    size_t elen = strlen(etag);
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        size_t len = strcspn(p, ",");
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len == elen && memcmp(p, etag, len) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

static void lookup_forward(struct lookup *l, bool fill)
{
    struct gw_cache_fill *f = NULL;
    if (fill) {
        f = moat_xcalloc(1, sizeof(*f));
        f->c = l->c;
        f->gen = l->c->gen;
        f->kind = l->kind;
        memcpy(f->id, l->id, sizeof(f->id));
        memcpy(f->api, l->api, sizeof(f->api));
    }
    moat_req_set_header(l->req, "Moat-Cache", fill ? "miss" : "bypass");
    gw_proxy_forward(l->route, l->req, l->url, f);
    l->url = NULL;
    l->done = true;
}

static void lookup_free(struct lookup *l)
{
    if (l->timer)
        event_free(l->timer);
    free(l->url);
    free(l);
}

static void on_lookup_timeout(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct lookup *l = arg;
    struct gw_cache *c = l->c;
    count_lookup(c, LR_ERROR);
    if (moat_breaker_record(&c->breaker, false, l->probe, moat_mono_ms()))
        moat_log(MOAT_LOG_WARN, "redis is slow: reads bypass the cache",
                 "{s:i}", "timeout_ms", (int)c->timeout_ms);
    moat_metric_set(c->m_breaker,
                    moat_breaker_state(&c->breaker, moat_mono_ms()));
    /* The reply, if it ever comes, frees l. */
    lookup_forward(l, false);
}

static void on_lookup(redisAsyncContext *ac, void *reply, void *priv)
{
    MOAT_UNUSED(ac);
    struct lookup *l = priv;
    struct gw_cache *c = l->c;
    const redisReply *r = reply;
    c->pending--;
    if (l->done) {
        lookup_free(l);
        return;
    }
    evtimer_del(l->timer);
    bool ok = reply_ok(r) && r->type == REDIS_REPLY_ARRAY && r->elements == 4;
    if (moat_breaker_record(&c->breaker, ok || c->closing, l->probe,
                            moat_mono_ms()))
        moat_log(MOAT_LOG_INFO, "redis answers again: reads use the cache",
                 NULL);
    moat_metric_set(c->m_breaker,
                    moat_breaker_state(&c->breaker, moat_mono_ms()));
    if (!ok) {
        count_lookup(c, LR_ERROR);
        lookup_forward(l, false);
        lookup_free(l);
        return;
    }
    const redisReply *body = r->element[1], *etag = r->element[2],
                     *ctype = r->element[3];
    if (body->type != REDIS_REPLY_STRING || etag->type != REDIS_REPLY_STRING ||
        ctype->type != REDIS_REPLY_STRING) {
        count_lookup(c, LR_MISS);
        lookup_forward(l, true);
        lookup_free(l);
        return;
    }
    count_lookup(c, LR_HIT);
    moat_req_set_header(l->req, "ETag", etag->str);
    moat_req_set_header(l->req, "Moat-Cache", "hit");
    const char *inm = moat_req_header(l->req, "If-None-Match");
    if (inm && none_match(inm, etag->str))
        moat_req_reply(l->req, 304, NULL, NULL, 0);
    else
        moat_req_reply(l->req, 200, ctype->str, body->str, (size_t)body->len);
    l->done = true;
    lookup_free(l);
}

bool gw_cache_lookup(struct gw_route *r, struct moat_req *req, char *url)
{
    struct gw_cache *c = r->gw->cache;
    char id[GW_CACHE_ID_MAX + 1], api[3];
    if (!c || moat_req_method(req) != MOAT_GET)
        return false;
    const struct cache_kind *k = match(r, url, id, api);
    if (!k)
        return false;
    const struct cache_feed *f = &c->feeds[k - kinds];
    bool probe = false;
    if (!c->ac || !c->ready || c->closing || !f->synced ||
        c->pending >= GW_CACHE_MAX_PENDING ||
        !moat_breaker_allow(&c->breaker, moat_mono_ms(), &probe, NULL)) {
        count_lookup(c, LR_BYPASS);
        moat_req_set_header(req, "Moat-Cache", "bypass");
        return false;
    }
    struct lookup *l = moat_xcalloc(1, sizeof(*l));
    l->c = c;
    l->route = r;
    l->req = req;
    l->kind = k;
    l->probe = probe;
    memcpy(l->id, id, sizeof(id));
    memcpy(l->api, api, sizeof(api));
    char *key = entry_key(c, k, id);
    char fb[8], fe[8], ft[8];
    snprintf(fb, sizeof(fb), "%s:b", api);
    snprintf(fe, sizeof(fe), "%s:e", api);
    snprintf(ft, sizeof(ft), "%s:t", api);
    const char *argv[] = {"HMGET", key, "ver", fb, fe, ft};
    int rc = redisAsyncCommandArgv(c->ac, on_lookup, l,
                                   (int)MOAT_ARRAY_LEN(argv), argv, NULL);
    free(key);
    if (rc != REDIS_OK) {
        moat_breaker_record(&c->breaker, false, probe, moat_mono_ms());
        count_lookup(c, LR_ERROR);
        free(l);
        return false;
    }
    l->url = url; /* ours from here on */
    c->pending++;
    l->timer = evtimer_new(c->gw->svc->base, on_lookup_timeout, l);
    set_timer(l->timer, c->timeout_ms);
    return true;
}

/* ---- fills ---- */

static void on_fill(redisAsyncContext *ac, void *reply, void *priv)
{
    MOAT_UNUSED(ac);
    struct gw_cache *c = priv;
    const redisReply *r = reply;
    if (!reply_ok(r) || r->type != REDIS_REPLY_INTEGER)
        moat_metric_add(c->m_fills[FR_ERROR], 1);
    else
        moat_metric_add(c->m_fills[r->integer == 1 ? FR_STORED : FR_STALE], 1);
}

/*
 * Only on the connection the lookup was made on: after a reconnect the
 * events in between may have been skipped (a Redis that lost its data) or
 * not yet applied, so an answer read before cannot be checked against
 * them.
 */
static void send_fill(struct gw_cache *c, unsigned gen, const char *key,
                      const char *api, const char *ver, const char *body,
                      size_t body_len, const char *etag, const char *ctype)
{
    if (!c->ac || !c->ready || c->closing || gen != c->gen) {
        moat_metric_add(c->m_fills[FR_SKIPPED], 1);
        return;
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)c->ttl_s);
    const char *argv[] = {"EVAL", fill_script, "1",  key,   ver,
                          api,    body,        etag, ctype, ttl};
    size_t lens[MOAT_ARRAY_LEN(argv)];
    for (size_t i = 0; i < MOAT_ARRAY_LEN(argv); i++)
        lens[i] = argv[i] == body ? body_len : strlen(argv[i]);
    if (redisAsyncCommandArgv(c->ac, on_fill, c, (int)MOAT_ARRAY_LEN(argv),
                              argv, lens) != REDIS_OK)
        moat_metric_add(c->m_fills[FR_ERROR], 1);
}

static void held_free(struct held_fill *h)
{
    event_free(h->timer);
    free(h->key);
    free(h->api);
    free(h->ver);
    free(h->body);
    free(h->etag);
    free(h->ctype);
    free(h);
}

static void on_held_fill(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    struct held_fill *h = arg;
    struct gw_cache *c = h->c;
    for (struct held_fill **p = &c->held; *p; p = &(*p)->next)
        if (*p == h) {
            *p = h->next;
            break;
        }
    send_fill(c, h->gen, h->key, h->api, h->ver, h->body, h->body_len, h->etag,
              h->ctype);
    held_free(h);
}

/* The N of an ETag "vN" (the services' ETags), or -1. */
static int64_t etag_version(const char *etag)
{
    size_t len = etag ? strlen(etag) : 0;
    if (len < 4 || len > 24 || etag[0] != '"' || etag[1] != 'v' ||
        etag[len - 1] != '"')
        return -1;
    char digits[24];
    snprintf(digits, sizeof(digits), "%.*s", (int)(len - 3), etag + 2);
    int64_t v = 0;
    if (moat_parse_i64(digits, 0, ((int64_t)1 << 53) - 1, &v) != MOAT_OK)
        return -1;
    return v;
}

void gw_cache_filled(struct gw_cache_fill *f,
                     const struct moat_http_response *resp)
{
    if (!f)
        return;
    struct gw_cache *c = f->c;
    if (resp->err != MOAT_OK || resp->status != 200) {
        free(f);
        return;
    }
    const char *etag = moat_http_response_header(resp, "ETag");
    const char *ctype = moat_http_response_header(resp, "Content-Type");
    int64_t ver = etag_version(etag);
    if (ver < 0 || !ctype || resp->body_len > GW_CACHE_MAX_BODY || c->closing) {
        moat_metric_add(c->m_fills[FR_SKIPPED], 1);
        free(f);
        return;
    }
    char *key = entry_key(c, f->kind, f->id);
    char vs[24];
    snprintf(vs, sizeof(vs), "%lld", (long long)ver);
    if (c->fill_delay_ms > 0) {
        struct held_fill *h = moat_xcalloc(1, sizeof(*h));
        h->c = c;
        h->gen = f->gen;
        h->key = key;
        h->api = moat_xstrdup(f->api);
        h->ver = moat_xstrdup(vs);
        h->body = moat_xmalloc(resp->body_len + 1);
        if (resp->body_len)
            memcpy(h->body, resp->body, resp->body_len);
        h->body_len = resp->body_len;
        h->etag = moat_xstrdup(etag);
        h->ctype = moat_xstrdup(ctype);
        h->timer = evtimer_new(c->gw->svc->base, on_held_fill, h);
        set_timer(h->timer, c->fill_delay_ms);
        h->next = c->held;
        c->held = h;
        free(f);
        return;
    }
    send_fill(c, f->gen, key, f->api, vs, resp->body ? resp->body : "",
              resp->body_len, etag, ctype);
    free(key);
    free(f);
}

/* ---- lifecycle ---- */

/* "redis://[[user]:password@]HOST:PORT[/]" into c; false if malformed. */
static bool parse_url(struct gw_cache *c, const char *url)
{
    if (strncmp(url, "redis://", 8) != 0)
        return false;
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon || (size_t)(at - colon - 1) >= sizeof(c->password))
            return false;
        snprintf(c->password, sizeof(c->password), "%.*s",
                 (int)(at - colon - 1), colon + 1);
        p = at + 1;
    }
    char hostport[GW_CACHE_HOST_MAX + 8];
    size_t len = strcspn(p, "/");
    if (len >= sizeof(hostport) || (p[len] == '/' && p[len + 1] != '\0'))
        return false;
    snprintf(hostport, sizeof(hostport), "%.*s", (int)len, p);
    return moat_parse_hostport(hostport, c->host, sizeof(c->host), &c->port,
                               false) == MOAT_OK;
}

static int read_password_file(struct gw_cache *c, const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return MOAT_EIO;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        moat_log(MOAT_LOG_WARN, "the redis password file is readable by others",
                 "{s:s}", "path", path);
    size_t n = fread(c->password, 1, sizeof(c->password) - 1, f);
    fclose(f);
    c->password[n] = '\0';
    c->password[strcspn(c->password, "\r\n")] = '\0';
    return c->password[0] ? MOAT_OK : MOAT_EINVAL;
}

static int config_error(const char *var, const char *why)
{
    moat_log(MOAT_LOG_ERROR, "invalid configuration", "{s:s, s:s}", "variable",
             var, "error", why);
    fprintf(stderr, "config: %s: %s\n", var, why);
    return MOAT_EINVAL;
}

static void register_metrics(struct gw_cache *c)
{
    struct moat_metrics *m = c->gw->svc->metrics;
    struct moat_metric_family *lookups = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_cache_requests_total",
        "Cacheable GETs by result: hit (answered from Redis), miss (from the "
        "service, then stored), bypass (Redis unavailable, not in sync or its "
        "circuit open), error (Redis failed or was slow)",
        "result", NULL, 0);
    struct moat_metric_family *fills = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_cache_fills_total",
        "Answers offered to the cache after a miss: stored, stale (a newer "
        "version or its invalidation was there first), skipped, error",
        "result", NULL, 0);
    struct moat_metric_family *inv = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_cache_invalidations_total",
        "Cache entries invalidated by the owner's events", "source", NULL, 0);
    struct moat_metric_family *synced = moat_metrics_family(
        m, MOAT_GAUGE, "moat_gateway_cache_synced",
        "1 when the invalidations of a source are applied up to its head",
        "source", NULL, 0);
    struct moat_metric_family *up = moat_metrics_family(
        m, MOAT_GAUGE, "moat_gateway_cache_connected",
        "1 while the gateway is connected and authenticated to Redis", NULL,
        NULL, 0);
    struct moat_metric_family *br = moat_metrics_family(
        m, MOAT_GAUGE, "moat_gateway_cache_circuit_state",
        "Redis circuit: 0 closed, 1 open, 2 half-open", NULL, NULL, 0);
    if (!lookups || !fills || !inv || !synced || !up || !br)
        moat_die("cannot register the cache metrics");
    for (int i = 0; i < LR_N; i++)
        c->m_lookups[i] = moat_metric_series(lookups, &lookup_names[i]);
    for (int i = 0; i < FR_N; i++)
        c->m_fills[i] = moat_metric_series(fills, &fill_names[i]);
    for (size_t i = 0; i < NKINDS; i++) {
        const char *l[] = {kinds[i].service};
        c->feeds[i].m_invalidations = moat_metric_series(inv, l);
        c->feeds[i].m_synced = moat_metric_series(synced, l);
    }
    c->m_connected = moat_metric_single(up);
    c->m_breaker = moat_metric_single(br);
}

/* The origin of the first route to service, or NULL. */
static const char *service_origin(const struct gw *gw, const char *service)
{
    for (size_t i = 0; i < gw->nroutes; i++)
        if (strcmp(gw->routes[i].service, service) == 0)
            return gw->routes[i].origin;
    return NULL;
}

int gw_cache_init(struct gw *gw)
{
    const char *url = moat_env_str("MOAT_REDIS_URL", NULL);
    if (!url)
        return MOAT_OK;
    struct gw_cache *c = moat_xcalloc(1, sizeof(*c));
    c->gw = gw;
    gw->cache = c;
    if (!parse_url(c, url))
        return config_error("MOAT_REDIS_URL",
                            "must be redis://[:PASSWORD@]HOST:PORT");
    const char *pwfile = moat_env_str("MOAT_REDIS_PASSWORD_FILE", NULL);
    if (pwfile && read_password_file(c, pwfile) != MOAT_OK)
        return config_error("MOAT_REDIS_PASSWORD_FILE",
                            "cannot read a password from the file");
    const char *prefix = moat_env_str("MOAT_GATEWAY_CACHE_PREFIX", "moat:c1");
    if (strlen(prefix) >= sizeof(c->prefix) || strpbrk(prefix, " \r\n"))
        return config_error("MOAT_GATEWAY_CACHE_PREFIX",
                            "must be up to 63 characters, no spaces");
    snprintf(c->prefix, sizeof(c->prefix), "%s", prefix);
    int64_t v;
    if (moat_env_int("MOAT_GATEWAY_CACHE_TTL_S", GW_CACHE_DEFAULT_TTL_S, 1,
                     86400, &c->ttl_s) != MOAT_OK ||
        moat_env_int("MOAT_GATEWAY_CACHE_TIMEOUT_MS",
                     GW_CACHE_DEFAULT_TIMEOUT_MS, 1, 10000, &v) != MOAT_OK)
        return MOAT_EINVAL;
    c->timeout_ms = (long)v;
#ifdef MOAT_TEST_HOOKS
    if (moat_env_int("MOAT_TEST_GATEWAY_CACHE_FILL_DELAY_MS", 0, 0, 60000,
                     &v) != MOAT_OK)
        return MOAT_EINVAL;
    c->fill_delay_ms = (long)v;
#endif
    moat_breaker_init(&c->breaker, gw->backends[0].breaker.threshold,
                      gw->backends[0].breaker.cooldown_ms);
    c->retry_ms = GW_CACHE_RETRY_MIN_MS;
    c->reconnect = evtimer_new(gw->svc->base, on_reconnect_timer, c);
    if (!c->reconnect)
        return MOAT_EINVAL;
    register_metrics(c);
    for (size_t i = 0; i < NKINDS; i++) {
        struct cache_feed *f = &c->feeds[i];
        f->c = c;
        f->kind = &kinds[i];
        f->retry_ms = GW_CACHE_RETRY_MIN_MS;
        f->timer = evtimer_new(gw->svc->base, on_feed_timer, f);
        if (!f->timer)
            return MOAT_EINVAL;
        const char *origin = service_origin(gw, kinds[i].service);
        if (!origin)
            continue;
        if (!gw->svc->feeds) {
            const struct moat_http_client_options opts = {
                .timeout_ms = MOAT_FEED_CLIENT_TIMEOUT_MS};
            if (moat_http_client_new(&gw->svc->feeds, gw->svc->base, &opts) !=
                MOAT_OK)
                return MOAT_EINVAL;
        }
        f->origin = origin;
        f->src = feed_source(f);
        if (!f->src)
            return MOAT_EINVAL;
    }
    moat_log(MOAT_LOG_INFO, "read cache on", "{s:s, s:i, s:s, s:I, s:i}",
             "host", c->host, "port", (int)c->port, "prefix", c->prefix,
             "ttl_s", (json_int_t)c->ttl_s, "timeout_ms", (int)c->timeout_ms);
    return MOAT_OK;
}

void gw_cache_start(struct gw *gw)
{
    if (gw->cache)
        connect_redis(gw->cache);
}

void gw_cache_close(struct gw *gw)
{
    struct gw_cache *c = gw->cache;
    if (!c || c->closing)
        return;
    c->closing = true;
    for (size_t i = 0; i < NKINDS; i++)
        if (c->feeds[i].src) {
            c->feeds[i].src->ops->free(c->feeds[i].src);
            c->feeds[i].src = NULL;
        }
    /* Calls every callback still waiting with a NULL reply: the lookups
     * go to their upstream, whose client is freed next. */
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac = NULL;
        redisAsyncFree(ac);
    }
}

void gw_cache_free(struct gw *gw)
{
    struct gw_cache *c = gw->cache;
    if (!c)
        return;
    gw_cache_close(gw);
    while (c->held) {
        struct held_fill *h = c->held;
        c->held = h->next;
        held_free(h);
    }
    for (size_t i = 0; i < NKINDS; i++)
        if (c->feeds[i].timer)
            event_free(c->feeds[i].timer);
    if (c->reconnect)
        event_free(c->reconnect);
    sodium_memzero(c->password, sizeof(c->password));
    free(c);
    gw->cache = NULL;
}
