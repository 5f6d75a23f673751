/* graph.c - the connections graph in LMDB: layout, writes, pages and the
 * degree queries (see graph.h and docs/connections.md). */
#include "moat/common.h"

#include "contracts/connections.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "moat/kv.h"
#include "moat/log.h"

#define ENV_DIR     "connections.lmdb"
#define KEY_MAX     (2 * CONN_USER_MAX + 1)
#define COUNTS_SIZE (8 * CONN_NLISTS)

static const char *const list_names[CONN_NLISTS] = {
    "following", "followers", "connections", "requests_out", "requests_in",
};

struct conn_graph {
    struct moat_kv *kv;                    /* owned */
    struct moat_kv_db *lists[CONN_NLISTS]; /* owned by kv */
    struct moat_kv_db *counts;             /* owned by kv */
    struct moat_outbox *outbox;            /* owned */
};

/*
 * Layout migrations. The sub-databases are created at open (moat_kv_db);
 * version 1 is their first layout (graph.h), so there is nothing to
 * transform. A later layout change is a new version that rewrites records
 * inside its transaction. Never change a shipped one.
 */
static int migrate_initial(struct moat_kv_txn *t, void *arg)
{
    MOAT_UNUSED(t);
    MOAT_UNUSED(arg);
    return MOAT_OK;
}

static const struct moat_kv_migration migrations[] = {
    {1, "adjacency lists keyed owner NUL other, and counts", migrate_initial},
};

bool conn_user_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n < 1 || n > CONN_USER_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

const char *conn_state_name(enum conn_state st)
{
    switch (st) {
    case CONN_PENDING_OUT:
        return "pending_outgoing";
    case CONN_PENDING_IN:
        return "pending_incoming";
    case CONN_CONNECTED:
        return "connected";
    case CONN_NONE:
        break;
    }
    return "none";
}

int conn_graph_open(struct conn_graph **out, const char *data_dir,
                    struct moat_metrics *metrics,
                    const struct conn_graph_options *opts)
{
    struct conn_graph *g = moat_xcalloc(1, sizeof(*g));
    char *path = moat_xasprintf("%s/%s", data_dir, ENV_DIR);
    int rc = moat_kv_open(&g->kv, path, opts->mapsize, metrics);
    for (size_t i = 0; i < CONN_NLISTS && rc == MOAT_OK; i++)
        rc = moat_kv_db(g->kv, list_names[i], &g->lists[i]);
    if (rc == MOAT_OK)
        rc = moat_kv_db(g->kv, "counts", &g->counts);
    if (rc == MOAT_OK)
        rc = moat_kv_migrate(g->kv, migrations, MOAT_ARRAY_LEN(migrations), g);
    if (rc == MOAT_OK)
        rc = moat_outbox_new_kv(&g->outbox, opts->base, g->kv, opts->source,
                                &opts->outbox, metrics);
    if (rc != MOAT_OK)
        goto cleanup;
    *out = g;
    g = NULL;

cleanup:
    if (g) {
        moat_kv_close(g->kv);
        free(g);
    }
    free(path);
    return rc;
}

void conn_graph_close(struct conn_graph *g)
{
    if (!g)
        return;
    /* The outbox borrows the environment: it goes first. */
    moat_outbox_free(g->outbox);
    moat_kv_close(g->kv);
    free(g);
}

struct moat_outbox *conn_graph_outbox(struct conn_graph *g)
{
    return g->outbox;
}

bool conn_graph_ready(struct conn_graph *g, const char **why)
{
    int version = 0;
    if (!g || !g->kv) {
        *why = "database not open";
        return false;
    }
    /* A read, not a flag: it also proves the environment still answers. */
    if (moat_kv_schema_version(g->kv, &version) != MOAT_OK ||
        version != migrations[MOAT_ARRAY_LEN(migrations) - 1].version) {
        *why = "database migrations not applied";
        return false;
    }
    return true;
}

/* ---- edges and counts ---- */

/* "owner NUL other" (other may be "" for the prefix of owner's list). */
static size_t edge_key(const char *owner, const char *other,
                       unsigned char out[KEY_MAX])
{
    size_t a = strlen(owner), b = strlen(other);
    memcpy(out, owner, a);
    out[a] = '\0';
    memcpy(out + a + 1, other, b);
    return a + 1 + b;
}

static bool has_edge(struct moat_kv_txn *t, struct conn_graph *g,
                     enum conn_list l, const char *owner, const char *other,
                     int *rc)
{
    unsigned char key[KEY_MAX];
    const void *val;
    size_t vlen;
    *rc = moat_kv_get(t, g->lists[l], key, edge_key(owner, other, key), &val,
                      &vlen);
    if (*rc == MOAT_ENOTFOUND) {
        *rc = MOAT_OK;
        return false;
    }
    return *rc == MOAT_OK;
}

static int put_edge(struct moat_kv_txn *t, struct conn_graph *g,
                    enum conn_list l, const char *owner, const char *other,
                    int64_t since_ms)
{
    unsigned char key[KEY_MAX], val[8];
    moat_kv_u64_key((uint64_t)since_ms, val);
    return moat_kv_put(t, g->lists[l], key, edge_key(owner, other, key), val,
                       sizeof(val), 0);
}

static int del_edge(struct moat_kv_txn *t, struct conn_graph *g,
                    enum conn_list l, const char *owner, const char *other)
{
    unsigned char key[KEY_MAX];
    return moat_kv_del(t, g->lists[l], key, edge_key(owner, other, key));
}

static int load_counts(struct moat_kv_txn *t, struct conn_graph *g,
                       const char *user, int64_t c[CONN_NLISTS])
{
    const void *val;
    size_t vlen;
    memset(c, 0, sizeof(int64_t) * CONN_NLISTS);
    int rc = moat_kv_gets(t, g->counts, user, &val, &vlen);
    if (rc == MOAT_ENOTFOUND)
        return MOAT_OK;
    if (rc != MOAT_OK)
        return rc;
    if (vlen != COUNTS_SIZE) {
        moat_log(MOAT_LOG_ERROR, "stored counts are malformed", "{s:s}", "user",
                 user);
        return MOAT_EDB;
    }
    for (size_t i = 0; i < CONN_NLISTS; i++)
        c[i] =
            (int64_t)moat_kv_u64_from_key((const unsigned char *)val + 8 * i);
    return MOAT_OK;
}

/* Add delta to one count of user (a user with no edges left has no
 * record). */
static int bump(struct moat_kv_txn *t, struct conn_graph *g, const char *user,
                enum conn_list l, int delta)
{
    int64_t c[CONN_NLISTS];
    int rc = load_counts(t, g, user, c);
    if (rc != MOAT_OK)
        return rc;
    c[l] += delta;
    if (c[l] < 0) {
        moat_log(MOAT_LOG_ERROR, "a count would go below zero", "{s:s, s:s}",
                 "user", user, "list", list_names[l]);
        return MOAT_EDB;
    }
    bool empty = true;
    unsigned char val[COUNTS_SIZE];
    for (size_t i = 0; i < CONN_NLISTS; i++) {
        moat_kv_u64_key((uint64_t)c[i], val + 8 * i);
        empty = empty && c[i] == 0;
    }
    if (empty)
        return moat_kv_dels(t, g->counts, user);
    return moat_kv_puts(t, g->counts, user, val, sizeof(val), 0);
}

/* Add or remove one directed edge and its mirror, with both counts. */
static int link(struct moat_kv_txn *t, struct conn_graph *g, enum conn_list fwd,
                enum conn_list back, const char *a, const char *b,
                int64_t now_ms)
{
    int rc = put_edge(t, g, fwd, a, b, now_ms);
    if (rc == MOAT_OK)
        rc = put_edge(t, g, back, b, a, now_ms);
    if (rc == MOAT_OK)
        rc = bump(t, g, a, fwd, +1);
    if (rc == MOAT_OK)
        rc = bump(t, g, b, back, +1);
    return rc;
}

static int unlink_edge(struct moat_kv_txn *t, struct conn_graph *g,
                       enum conn_list fwd, enum conn_list back, const char *a,
                       const char *b)
{
    int rc = del_edge(t, g, fwd, a, b);
    if (rc == MOAT_OK)
        rc = del_edge(t, g, back, b, a);
    if (rc == MOAT_OK)
        rc = bump(t, g, a, fwd, -1);
    if (rc == MOAT_OK)
        rc = bump(t, g, b, back, -1);
    return rc;
}

/* Append an event of this service (data is stolen). */
static int publish(struct conn_graph *g, const char *type, const char *subject,
                   json_t *data)
{
    int rc = moat_outbox_append(g->outbox, type, subject,
                                CONNECTIONS_EDGE_SCHEMA, data, NULL);
    json_decref(data);
    return rc;
}

static int state_in(struct moat_kv_txn *t, struct conn_graph *g, const char *a,
                    const char *b, enum conn_state *st)
{
    int rc;
    *st = CONN_NONE;
    if (has_edge(t, g, CONN_CONNECTIONS, a, b, &rc))
        *st = CONN_CONNECTED;
    else if (rc == MOAT_OK && has_edge(t, g, CONN_REQUESTS_OUT, a, b, &rc))
        *st = CONN_PENDING_OUT;
    else if (rc == MOAT_OK && has_edge(t, g, CONN_REQUESTS_IN, a, b, &rc))
        *st = CONN_PENDING_IN;
    return rc;
}

/* ---- writes ---- */

typedef int (*write_fn)(struct moat_kv_txn *t, struct conn_graph *g,
                        const char *a, const char *b, int64_t now_ms,
                        enum conn_outcome *outcome, enum conn_state *state);

/* Run fn in one write transaction, committed only when it changed
 * something. */
static int write_txn(struct conn_graph *g, write_fn fn, const char *a,
                     const char *b, int64_t now_ms, enum conn_outcome *outcome,
                     enum conn_state *state)
{
    enum conn_state ignored;
    if (!conn_user_valid(a) || !conn_user_valid(b) || strcmp(a, b) == 0)
        return MOAT_EINVAL;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin(g->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = fn(t, g, a, b, now_ms, outcome, state ? state : &ignored);
    if (rc != MOAT_OK || *outcome != CONN_DONE) {
        moat_kv_abort(t);
        return rc;
    }
    rc = moat_kv_commit(t);
    if (rc == MOAT_OK)
        moat_outbox_committed(g->outbox);
    return rc;
}

static int follow_in(struct moat_kv_txn *t, struct conn_graph *g, const char *a,
                     const char *b, int64_t now_ms, enum conn_outcome *outcome,
                     enum conn_state *state)
{
    MOAT_UNUSED(state);
    int64_t c[CONN_NLISTS];
    int rc;
    if (has_edge(t, g, CONN_FOLLOWING, a, b, &rc)) {
        *outcome = CONN_UNCHANGED;
        return MOAT_OK;
    }
    if (rc == MOAT_OK)
        rc = load_counts(t, g, a, c);
    if (rc != MOAT_OK)
        return rc;
    if (c[CONN_FOLLOWING] >= CONN_FOLLOWING_MAX) {
        *outcome = CONN_CAP;
        return MOAT_OK;
    }
    rc = link(t, g, CONN_FOLLOWING, CONN_FOLLOWERS, a, b, now_ms);
    if (rc == MOAT_OK)
        rc = publish(
            g, CONNECTIONS_FOLLOWED, a,
            json_pack("{s:s, s:s}", "follower_id", a, "followee_id", b));
    *outcome = CONN_DONE;
    return rc;
}

static int unfollow_in(struct moat_kv_txn *t, struct conn_graph *g,
                       const char *a, const char *b, int64_t now_ms,
                       enum conn_outcome *outcome, enum conn_state *state)
{
    MOAT_UNUSED(now_ms);
    MOAT_UNUSED(state);
    int rc;
    if (!has_edge(t, g, CONN_FOLLOWING, a, b, &rc)) {
        *outcome = CONN_ABSENT;
        return rc;
    }
    rc = unlink_edge(t, g, CONN_FOLLOWING, CONN_FOLLOWERS, a, b);
    if (rc == MOAT_OK)
        rc = publish(
            g, CONNECTIONS_UNFOLLOWED, a,
            json_pack("{s:s, s:s}", "follower_id", a, "followee_id", b));
    *outcome = CONN_DONE;
    return rc;
}

/* a accepts b's pending request (the caller checked it is there). */
static int connect_in(struct moat_kv_txn *t, struct conn_graph *g,
                      const char *a, const char *b, int64_t now_ms,
                      enum conn_outcome *outcome)
{
    int64_t ca[CONN_NLISTS], cb[CONN_NLISTS];
    int rc = load_counts(t, g, a, ca);
    if (rc == MOAT_OK)
        rc = load_counts(t, g, b, cb);
    if (rc != MOAT_OK)
        return rc;
    if (ca[CONN_CONNECTIONS] >= CONN_CONNECTIONS_MAX ||
        cb[CONN_CONNECTIONS] >= CONN_CONNECTIONS_MAX) {
        *outcome = CONN_CAP;
        return MOAT_OK;
    }
    rc = unlink_edge(t, g, CONN_REQUESTS_OUT, CONN_REQUESTS_IN, b, a);
    /* One edge, stored both ways: each side's list holds the other. */
    if (rc == MOAT_OK)
        rc = put_edge(t, g, CONN_CONNECTIONS, a, b, now_ms);
    if (rc == MOAT_OK)
        rc = put_edge(t, g, CONN_CONNECTIONS, b, a, now_ms);
    if (rc == MOAT_OK)
        rc = bump(t, g, a, CONN_CONNECTIONS, +1);
    if (rc == MOAT_OK)
        rc = bump(t, g, b, CONN_CONNECTIONS, +1);
    if (rc == MOAT_OK)
        rc = publish(
            g, CONNECTIONS_CONNECTION_ACCEPTED, a,
            json_pack("{s:s, s:s}", "requester_id", b, "recipient_id", a));
    *outcome = CONN_DONE;
    return rc;
}

static int request_in(struct moat_kv_txn *t, struct conn_graph *g,
                      const char *a, const char *b, int64_t now_ms,
                      enum conn_outcome *outcome, enum conn_state *state)
{
    int64_t c[CONN_NLISTS];
    int rc = state_in(t, g, a, b, state);
    if (rc != MOAT_OK)
        return rc;
    switch (*state) {
    case CONN_CONNECTED:
    case CONN_PENDING_OUT:
        *outcome = CONN_UNCHANGED;
        return MOAT_OK;
    case CONN_PENDING_IN:
        /* b asked already: both want it. */
        rc = connect_in(t, g, a, b, now_ms, outcome);
        if (*outcome == CONN_DONE)
            *state = CONN_CONNECTED;
        return rc;
    case CONN_NONE:
        break;
    }
    rc = load_counts(t, g, a, c);
    if (rc != MOAT_OK)
        return rc;
    if (c[CONN_REQUESTS_OUT] >= CONN_REQUESTS_OUT_MAX ||
        c[CONN_CONNECTIONS] >= CONN_CONNECTIONS_MAX) {
        *outcome = CONN_CAP;
        return MOAT_OK;
    }
    rc = link(t, g, CONN_REQUESTS_OUT, CONN_REQUESTS_IN, a, b, now_ms);
    if (rc == MOAT_OK)
        rc = publish(
            g, CONNECTIONS_CONNECTION_REQUESTED, a,
            json_pack("{s:s, s:s}", "requester_id", a, "recipient_id", b));
    *outcome = CONN_DONE;
    *state = CONN_PENDING_OUT;
    return rc;
}

static int accept_in(struct moat_kv_txn *t, struct conn_graph *g, const char *a,
                     const char *b, int64_t now_ms, enum conn_outcome *outcome,
                     enum conn_state *state)
{
    int rc = state_in(t, g, a, b, state);
    if (rc != MOAT_OK)
        return rc;
    if (*state == CONN_CONNECTED) {
        *outcome = CONN_UNCHANGED;
        return MOAT_OK;
    }
    if (*state != CONN_PENDING_IN) {
        *outcome = CONN_ABSENT;
        return MOAT_OK;
    }
    return connect_in(t, g, a, b, now_ms, outcome);
}

static int remove_in(struct moat_kv_txn *t, struct conn_graph *g, const char *a,
                     const char *b, int64_t now_ms, enum conn_outcome *outcome,
                     enum conn_state *was)
{
    MOAT_UNUSED(now_ms);
    const char *reason = NULL;
    int rc = state_in(t, g, a, b, was);
    if (rc != MOAT_OK)
        return rc;
    switch (*was) {
    case CONN_NONE:
        *outcome = CONN_ABSENT;
        return MOAT_OK;
    case CONN_CONNECTED:
        reason = "removed";
        rc = del_edge(t, g, CONN_CONNECTIONS, a, b);
        if (rc == MOAT_OK)
            rc = del_edge(t, g, CONN_CONNECTIONS, b, a);
        if (rc == MOAT_OK)
            rc = bump(t, g, a, CONN_CONNECTIONS, -1);
        if (rc == MOAT_OK)
            rc = bump(t, g, b, CONN_CONNECTIONS, -1);
        break;
    case CONN_PENDING_OUT:
        reason = "withdrawn";
        rc = unlink_edge(t, g, CONN_REQUESTS_OUT, CONN_REQUESTS_IN, a, b);
        break;
    case CONN_PENDING_IN:
        reason = "declined";
        rc = unlink_edge(t, g, CONN_REQUESTS_OUT, CONN_REQUESTS_IN, b, a);
        break;
    }
    if (rc == MOAT_OK)
        rc = publish(g, CONNECTIONS_CONNECTION_REMOVED, a,
                     json_pack("{s:s, s:s, s:s}", "user_id", a, "other_user_id",
                               b, "reason", reason));
    *outcome = CONN_DONE;
    return rc;
}

int conn_graph_follow(struct conn_graph *g, const char *a, const char *b,
                      int64_t now_ms, enum conn_outcome *outcome)
{
    return write_txn(g, follow_in, a, b, now_ms, outcome, NULL);
}

int conn_graph_unfollow(struct conn_graph *g, const char *a, const char *b,
                        enum conn_outcome *outcome)
{
    return write_txn(g, unfollow_in, a, b, 0, outcome, NULL);
}

int conn_graph_request(struct conn_graph *g, const char *a, const char *b,
                       int64_t now_ms, enum conn_outcome *outcome,
                       enum conn_state *state)
{
    return write_txn(g, request_in, a, b, now_ms, outcome, state);
}

int conn_graph_accept(struct conn_graph *g, const char *a, const char *b,
                      int64_t now_ms, enum conn_outcome *outcome)
{
    return write_txn(g, accept_in, a, b, now_ms, outcome, NULL);
}

int conn_graph_remove(struct conn_graph *g, const char *a, const char *b,
                      enum conn_outcome *outcome, enum conn_state *was)
{
    return write_txn(g, remove_in, a, b, 0, outcome, was);
}

/* ---- reads ---- */

/* Called per entry of a list: returns MOAT_KV_NEXT, MOAT_KV_STOP or an
 * error. other is NUL-terminated and valid during the call. */
typedef int (*visit_fn)(const char *other, int64_t since_ms, void *arg);

struct scan {
    const unsigned char *prefix; /* "owner NUL" */
    size_t prefix_len;
    const char *after; /* skip this one (the seek lands on it) */
    visit_fn fn;
    void *arg;
};

static int scan_one(const void *key, size_t klen, const void *val, size_t vlen,
                    void *arg)
{
    struct scan *s = arg;
    if (klen < s->prefix_len || memcmp(key, s->prefix, s->prefix_len) != 0)
        return MOAT_KV_STOP; /* past the owner's list */
    size_t n = klen - s->prefix_len;
    if (n < 1 || n > CONN_USER_MAX || vlen != 8) {
        moat_log(MOAT_LOG_ERROR, "stored edge is malformed", "{s:I}", "klen",
                 (json_int_t)klen);
        return MOAT_EDB;
    }
    char other[CONN_USER_MAX + 1];
    memcpy(other, (const char *)key + s->prefix_len, n);
    other[n] = '\0';
    if (s->after && strcmp(other, s->after) == 0)
        return MOAT_KV_NEXT;
    return s->fn(other, (int64_t)moat_kv_u64_from_key(val), s->arg);
}

/* Visit owner's list in l, from the first entry after after (NULL: from
 * the first). One seek, then a contiguous scan. */
static int scan_list(struct moat_kv_txn *t, struct conn_graph *g,
                     enum conn_list l, const char *owner, const char *after,
                     visit_fn fn, void *arg)
{
    unsigned char prefix[KEY_MAX], from[KEY_MAX];
    struct scan s = {.prefix = prefix, .after = after, .fn = fn, .arg = arg};
    s.prefix_len = edge_key(owner, "", prefix);
    size_t from_len = edge_key(owner, after ? after : "", from);
    return moat_kv_iterate(t, g->lists[l], from, from_len, scan_one, &s);
}

struct page {
    struct conn_entry *out;
    size_t limit, n;
    bool more;
};

static int page_one(const char *other, int64_t since_ms, void *arg)
{
    struct page *p = arg;
    if (p->n == p->limit) {
        p->more = true;
        return MOAT_KV_STOP;
    }
    snprintf(p->out[p->n].user_id, sizeof(p->out[p->n].user_id), "%s", other);
    p->out[p->n].since_ms = since_ms;
    p->n++;
    return MOAT_KV_NEXT;
}

int conn_graph_page(struct conn_graph *g, enum conn_list list, const char *user,
                    const char *after, size_t limit, struct conn_entry *out,
                    size_t *n, bool *more)
{
    struct page p = {.out = out, .limit = limit};
    *n = 0;
    *more = false;
    if ((unsigned)list >= CONN_NLISTS || !conn_user_valid(user) ||
        (after && !conn_user_valid(after)))
        return MOAT_EINVAL;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(g->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = scan_list(t, g, list, user, after, page_one, &p);
    moat_kv_abort(t);
    *n = p.n;
    *more = p.more;
    return rc;
}

/* A sorted list of distinct user ids (an adjacency list read whole). */
struct idlist {
    char (*ids)[CONN_USER_MAX + 1];
    size_t n, cap;
};

static void idlist_free(struct idlist *l)
{
    free(l->ids);
    memset(l, 0, sizeof(*l));
}

/* Index of the first id >= id. */
static size_t idlist_lower(const struct idlist *l, const char *id)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(l->ids[mid], id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool idlist_has(const struct idlist *l, const char *id)
{
    size_t i = idlist_lower(l, id);
    return i < l->n && strcmp(l->ids[i], id) == 0;
}

static int idlist_append(const char *other, int64_t since_ms, void *arg)
{
    MOAT_UNUSED(since_ms);
    struct idlist *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->ids = moat_xrealloc(l->ids, l->cap * sizeof(*l->ids));
    }
    memcpy(l->ids[l->n++], other, strlen(other) + 1);
    return MOAT_KV_NEXT;
}

/* owner's whole connection list, in id order. */
static int load_connections(struct moat_kv_txn *t, struct conn_graph *g,
                            const char *owner, struct idlist *out)
{
    return scan_list(t, g, CONN_CONNECTIONS, owner, NULL, idlist_append, out);
}

/*
 * The degree-2 page: the smallest limit + 1 distinct ids after `after`
 * among the neighbours' lists, less user and user's neighbours. best is
 * kept sorted and at most limit + 1 long; once it is full, a neighbour's
 * scan stops at the first id beyond its largest (the rest of that list is
 * larger still).
 */
struct second {
    const char *user;
    const struct idlist *first; /* user's connections */
    struct idlist best;
    size_t cap; /* limit + 1 */
};

static int second_one(const char *other, int64_t since_ms, void *arg)
{
    MOAT_UNUSED(since_ms);
    struct second *s = arg;
    struct idlist *b = &s->best;
    if (b->n == s->cap && strcmp(other, b->ids[b->n - 1]) >= 0)
        return MOAT_KV_STOP;
    if (strcmp(other, s->user) == 0 || idlist_has(s->first, other))
        return MOAT_KV_NEXT;
    size_t i = idlist_lower(b, other);
    if (i < b->n && strcmp(b->ids[i], other) == 0)
        return MOAT_KV_NEXT; /* reached through another neighbour too */
    if (b->n == s->cap)
        b->n--; /* the largest drops out */
    memmove(b->ids[i + 1], b->ids[i], (b->n - i) * sizeof(b->ids[0]));
    memcpy(b->ids[i], other, strlen(other) + 1);
    b->n++;
    return MOAT_KV_NEXT;
}

int conn_graph_second_page(struct conn_graph *g, const char *user,
                           const char *after, size_t limit,
                           struct conn_entry *out, size_t *n, bool *more)
{
    *n = 0;
    *more = false;
    if (!conn_user_valid(user) || (after && !conn_user_valid(after)))
        return MOAT_EINVAL;
    if (limit == 0)
        return MOAT_OK;
    struct idlist first = {0};
    struct second s = {.user = user, .first = &first, .cap = limit + 1};
    s.best.cap = s.cap;
    s.best.ids = moat_xcalloc(s.cap, sizeof(*s.best.ids));
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(g->kv, &t);
    if (rc != MOAT_OK)
        goto cleanup;
    rc = load_connections(t, g, user, &first);
    for (size_t i = 0; i < first.n && rc == MOAT_OK; i++)
        rc = scan_list(t, g, CONN_CONNECTIONS, first.ids[i], after, second_one,
                       &s);
    moat_kv_abort(t);
    if (rc != MOAT_OK)
        goto cleanup;
    *more = s.best.n > limit;
    *n = *more ? limit : s.best.n;
    for (size_t i = 0; i < *n; i++) {
        memcpy(out[i].user_id, s.best.ids[i], sizeof(out[i].user_id));
        out[i].since_ms = 0;
    }

cleanup:
    idlist_free(&first);
    idlist_free(&s.best);
    return rc;
}

/* Whether some entry of a list is in target (stops at the first). */
struct meet {
    const struct idlist *target;
    bool found;
};

static int meet_one(const char *other, int64_t since_ms, void *arg)
{
    MOAT_UNUSED(since_ms);
    struct meet *m = arg;
    if (!idlist_has(m->target, other))
        return MOAT_KV_NEXT;
    m->found = true;
    return MOAT_KV_STOP;
}

static bool sorted_intersect(const struct idlist *x, const struct idlist *y)
{
    size_t i = 0, j = 0;
    while (i < x->n && j < y->n) {
        int c = strcmp(x->ids[i], y->ids[j]);
        if (c == 0)
            return true;
        if (c < 0)
            i++;
        else
            j++;
    }
    return false;
}

static int degree_in(struct moat_kv_txn *t, struct conn_graph *g, const char *a,
                     const char *b, struct idlist *na, struct idlist *nb,
                     int *degree)
{
    int rc;
    *degree = -1;
    if (has_edge(t, g, CONN_CONNECTIONS, a, b, &rc)) {
        *degree = 1;
        return MOAT_OK;
    }
    if (rc == MOAT_OK)
        rc = load_connections(t, g, a, na);
    if (rc == MOAT_OK)
        rc = load_connections(t, g, b, nb);
    if (rc != MOAT_OK || na->n == 0 || nb->n == 0)
        return rc;
    if (sorted_intersect(na, nb)) {
        *degree = 2;
        return MOAT_OK;
    }
    /* Depth 3: expand the smaller side one more level and look for the
     * other side's neighbours. */
    const struct idlist *small = na->n <= nb->n ? na : nb;
    struct meet m = {.target = small == na ? nb : na};
    for (size_t i = 0; i < small->n && rc == MOAT_OK && !m.found; i++)
        rc = scan_list(t, g, CONN_CONNECTIONS, small->ids[i], NULL, meet_one,
                       &m);
    if (rc == MOAT_OK && m.found)
        *degree = 3;
    return rc;
}

int conn_graph_degree(struct conn_graph *g, const char *a, const char *b,
                      int *degree)
{
    *degree = -1;
    if (!conn_user_valid(a) || !conn_user_valid(b))
        return MOAT_EINVAL;
    if (strcmp(a, b) == 0) {
        *degree = 0;
        return MOAT_OK;
    }
    struct idlist na = {0}, nb = {0};
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(g->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = degree_in(t, g, a, b, &na, &nb, degree);
    moat_kv_abort(t);
    idlist_free(&na);
    idlist_free(&nb);
    return rc;
}

int conn_graph_counts(struct conn_graph *g, const char *user,
                      int64_t counts[CONN_NLISTS])
{
    memset(counts, 0, sizeof(int64_t) * CONN_NLISTS);
    if (!conn_user_valid(user))
        return MOAT_EINVAL;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(g->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = load_counts(t, g, user, counts);
    moat_kv_abort(t);
    return rc;
}

int conn_graph_state(struct conn_graph *g, const char *a, const char *b,
                     enum conn_state *state)
{
    *state = CONN_NONE;
    if (!conn_user_valid(a) || !conn_user_valid(b))
        return MOAT_EINVAL;
    struct moat_kv_txn *t;
    int rc = moat_kv_begin_read(g->kv, &t);
    if (rc != MOAT_OK)
        return rc;
    rc = state_in(t, g, a, b, state);
    moat_kv_abort(t);
    return rc;
}

struct moat_kv *conn_graph_kv(struct conn_graph *s)
{
    return s->kv;
}
