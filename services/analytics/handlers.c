/*
 * handlers.c - the analytics HTTP API (docs/analytics.md). The SQL lives
 * in store.c.
 *
 *   GET /v1/analytics/engagement?from=&to=&bucket=&user_id=
 *
 * from and to are seconds since the epoch (or RFC 3339, as API v2 writes
 * times); the buckets answered are those of size bucket (minute, hour,
 * day; default hour) from the one holding from up to the one holding
 * to - 1, every one of them (zeros included), at most AN_BUCKETS_MAX.
 * Without user_id the series is everyone's (admins, moderators and
 * services acting for no user); with it, that user's (the user, or one of
 * those). Every answer lists the sources whose feeds lag: blind_spots.
 */
#include "moat/common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "analytics.h"
#include "moat/auth.h"
#include "moat/log.h"
#include "moat/problem.h"

#define TIME_PARAM_MAX 40
/* Times accepted: up to the year 9999. */
#define TIME_MAX_S 253402300799LL
/* Defaults: the last day. */
#define RANGE_DEFAULT_S 86400

/* Epoch seconds, or an RFC 3339 time (rounded down to the second). */
static bool parse_time(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s && *end == '\0' && errno == 0) {
        *out = v;
        return v >= 0 && v <= TIME_MAX_S;
    }
    int64_t ms;
    if (moat_time_parse_rfc3339(s, &ms) != MOAT_OK || ms < 0 ||
        ms / 1000 > TIME_MAX_S)
        return false;
    *out = ms / 1000;
    return true;
}

static bool privileged(const struct moat_principal *p)
{
    return !p->user_id[0] || moat_principal_is_admin(p) ||
           strcmp(p->role, "moderator") == 0;
}

struct rows {
    struct an_row *v;
    size_t n, cap;
};

static void collect(const struct an_row *row, void *arg)
{
    struct rows *r = arg;
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->v = moat_xrealloc(r->v, r->cap * sizeof(*r->v));
    }
    r->v[r->n++] = *row;
}

static json_t *bucket_json(int64_t start, const struct an_row *row)
{
    json_t *o = json_object();
    json_object_set_new(o, "bucket_start_at", json_integer(start));
    for (int m = 0; m < AN_METRICS; m++)
        json_object_set_new(o, an_metric_names[m],
                            json_integer(row ? row->n[m] : 0));
    json_object_set_new(o, "active_users",
                        json_integer(row ? row->active_users : 0));
    return o;
}

/* Every subscribed source that is unreachable, not consuming, or further
 * behind than s->blind_lag_ms. */
static json_t *blind_spots(struct an_service *s)
{
    struct moat_consumer_source_status st[AN_SOURCES_MAX];
    size_t n = moat_consumer_status(s->consumer, st, AN_SOURCES_MAX);
    json_t *list = json_array();
    for (size_t i = 0; i < n && i < AN_SOURCES_MAX; i++) {
        bool blind = !st[i].reachable || strcmp(st[i].state, "paused") == 0 ||
                     strcmp(st[i].state, "stopped") == 0 ||
                     st[i].lag_seconds * 1000.0 >= (double)s->blind_lag_ms;
        if (!blind)
            continue;
        json_array_append_new(
            list,
            json_pack("{s:s, s:f, s:I, s:s, s:b}", "source", st[i].source,
                      "lag_seconds",
                      (double)(int64_t)(st[i].lag_seconds * 1000.0) / 1000.0,
                      "lag_events", (json_int_t)st[i].lag_events, "state",
                      st[i].state, "reachable", st[i].reachable));
    }
    return list;
}

static void handle_engagement(struct moat_req *r, void *arg)
{
    struct an_service *s = arg;
    struct moat_qparam q[] = {
        {.name = "from", .kind = MOAT_Q_STR, .min = 1, .max = TIME_PARAM_MAX},
        {.name = "to", .kind = MOAT_Q_STR, .min = 1, .max = TIME_PARAM_MAX},
        {.name = "bucket", .kind = MOAT_Q_STR, .min = 1, .max = 16},
        {.name = "user_id", .kind = MOAT_Q_STR, .min = 1, .max = AN_KEY_MAX},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    int64_t to = moat_wall_ms() / 1000, from = 0;
    const struct an_bucket *b = &an_buckets[1];
    if (!problem && q[1].seen && !parse_time(q[1].sval, &to))
        moat_problem_param_error(&problem, "to",
                                 "is not a time (epoch seconds or RFC 3339)");
    from = to - RANGE_DEFAULT_S;
    if (!problem && q[0].seen && !parse_time(q[0].sval, &from))
        moat_problem_param_error(&problem, "from",
                                 "is not a time (epoch seconds or RFC 3339)");
    if (!problem && q[2].seen) {
        b = NULL;
        for (size_t i = 0; i < MOAT_ARRAY_LEN(an_buckets); i++)
            if (strcmp(q[2].sval, an_buckets[i].name) == 0)
                b = &an_buckets[i];
        if (!b)
            moat_problem_param_error(&problem, "bucket",
                                     "is not minute, hour or day");
    }
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    const char *user = q[3].seen ? q[3].sval : "";
    const struct moat_principal *p = moat_req_principal(r);
    if (!privileged(p) && (!user[0] || strcmp(user, p->user_id) != 0)) {
        moat_req_reply_problem(r, 403,
                               user[0] ? "a user may read only their own "
                                         "engagement"
                                       : "overall engagement is for admins "
                                         "and moderators; pass your user_id");
        return;
    }
    if (from >= to) {
        moat_req_reply_problem(r, 422, "from must be before to");
        return;
    }
    int64_t size = b->seconds;
    int64_t first = from - from % size;
    int64_t end = to % size ? to - to % size + size : to;
    int64_t nbuckets = (end - first) / size;
    if (nbuckets > AN_BUCKETS_MAX) {
        moat_req_reply_problem(r, 422,
                               "too many buckets in one answer (at most 1440): "
                               "narrow from..to or use a larger bucket");
        return;
    }
    struct rows rows = {0};
    int rc = an_store_series(s->db, size, user, first, end, collect, &rows);
    if (rc != MOAT_OK) {
        free(rows.v);
        moat_req_reply_store_error(r, rc, "analytics", "engagement");
        return;
    }
    json_t *series = json_array();
    size_t k = 0;
    for (int64_t start = first; start < end; start += size) {
        const struct an_row *row = NULL;
        if (k < rows.n && rows.v[k].start == start)
            row = &rows.v[k++];
        json_array_append_new(series, bucket_json(start, row));
    }
    free(rows.v);
    moat_req_reply_json(
        r, 200,
        json_pack("{s:s, s:o, s:I, s:I, s:o, s:o}", "bucket", b->name,
                  "user_id", user[0] ? json_string(user) : json_null(),
                  "from_at", (json_int_t)first, "to_at", (json_int_t)end,
                  "series", series, "blind_spots", blind_spots(s)));
}

int an_routes_register(struct moat_http_server *server, struct an_service *s)
{
    return moat_http_route(server, MOAT_GET | MOAT_HEAD,
                           "/v1/analytics/engagement", handle_engagement, s);
}
