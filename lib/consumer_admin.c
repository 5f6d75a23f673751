/*
 * consumer_admin.c - a consumer's admin routes (moat/events.h): status,
 * dead letters, redrive, replay. They read and write through the storage
 * (c->ops), so SQLite and LMDB consumers answer alike.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consumer_internal.h"
#include "moat/log.h"
#include "moat/problem.h"

#define DEAD_LIST_DEFAULT 100
#define DEAD_LIST_MAX     1000
#define REDRIVE_MAX       10000
#define SUBJECT_MAX       CONSUMER_SUBJECT_MAX
#define SOURCE_MAX        CONSUMER_SOURCE_MAX
#define ERROR_MAX         CONSUMER_ERROR_MAX

static bool busy_verifying(struct moat_consumer *c, struct moat_req *req)
{
    if (!c->verify)
        return false;
    moat_req_set_header(req, "Retry-After", "1");
    moat_req_reply_problem(req, 409,
                           "a replay verification is running; retry when it "
                           "is done");
    return true;
}

const char *consumer_sub_state(const struct sub *s)
{
    if (s->c->paused)
        return "paused";
    if (s->down_err != MOAT_OK || s->local_fault)
        return "backoff";
    if (s->attempts > 0)
        return "retrying";
    if (s->batch)
        return "applying";
    if (s->pulling)
        return "waiting";
    return s->c->started ? "idle" : "stopped";
}

static void handle_status(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    json_t *problem = moat_req_parse_query(req, NULL, 0);
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < c->nsubs; i++) {
        struct sub *s = c->subs[i];
        int64_t failed = 0, blocked = 0;
        c->ops->dead_count(c, s->src->name, &failed, &blocked);
        int64_t lag = s->head > s->cursor ? s->head - s->cursor : 0;
        int64_t age = s->pending_ms ? moat_wall_ms() - s->pending_ms : 0;
        json_array_append_new(
            list, json_pack("{s:s, s:I, s:o, s:I, s:f, s:s, s:o, s:{s:I, s:I}}",
                            "source", s->src->name, "cursor",
                            (json_int_t)s->cursor, "head",
                            s->head >= 0 ? json_integer(s->head) : json_null(),
                            "lag_events", (json_int_t)lag, "lag_seconds",
                            age > 0 ? (double)age / 1000.0 : 0.0, "state",
                            consumer_sub_state(s), "error",
                            s->error[0] ? json_string(s->error) : json_null(),
                            "dead_letters", "failed", (json_int_t)failed,
                            "blocked", (json_int_t)blocked));
    }
    moat_req_reply_json(req, 200,
                        json_pack("{s:o, s:b, s:b}", "sources", list, "paused",
                                  c->paused, "verifying", c->verify != NULL));
}

size_t moat_consumer_status(const struct moat_consumer *c,
                            struct moat_consumer_source_status *out, size_t max)
{
    int64_t now = moat_wall_ms();
    for (size_t i = 0; i < c->nsubs && i < max; i++) {
        const struct sub *s = c->subs[i];
        struct moat_consumer_source_status *o = &out[i];
        memset(o, 0, sizeof(*o));
        snprintf(o->source, sizeof(o->source), "%s", s->src->name);
        o->cursor = s->cursor;
        o->head = s->head;
        o->lag_events = s->head > s->cursor ? s->head - s->cursor : 0;
        int64_t since = s->pending_ms;
        /* Unreachable: nothing is known since the outage began. */
        if (s->down_err != MOAT_OK && s->down_since_ms &&
            (since == 0 || s->down_since_ms < since))
            since = s->down_since_ms;
        o->lag_seconds =
            since && now > since ? (double)(now - since) / 1000.0 : 0.0;
        o->state = consumer_sub_state(s);
        o->reachable = s->down_err == MOAT_OK;
        o->down_since_ms = s->down_err != MOAT_OK ? s->down_since_ms : 0;
    }
    return c->nsubs;
}

static json_t *dead_json(const struct consumer_dead *d)
{
    char when[25];
    moat_time_rfc3339(d->parked_ms, when);
    json_t *event =
        json_loads(d->event ? d->event : "null", JSON_DECODE_ANY, NULL);
    return json_pack("{s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:o}",
                     "source", d->source, "seq", (json_int_t)d->seq, "event_id",
                     d->event_id, "subject", d->subject, "type", d->type,
                     "state", d->state, "error", d->error, "attempts",
                     d->attempts, "parked_at", when, "event",
                     event ? event : json_null());
}

static int list_one(const struct consumer_dead *d, void *arg)
{
    json_array_append_new(arg, dead_json(d));
    return 0;
}

static void handle_dead_letters(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    struct moat_qparam q[] = {
        {.name = "source", .kind = MOAT_Q_STR, .min = 1, .max = SOURCE_MAX},
        {.name = "subject", .kind = MOAT_Q_STR, .min = 1, .max = SUBJECT_MAX},
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = DEAD_LIST_MAX},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    int64_t total = 0;
    json_t *list = json_array();
    int rc = c->ops->dead_visit(c, q[0].sval, q[1].sval, false,
                                q[2].seen ? q[2].ival : DEAD_LIST_DEFAULT,
                                list_one, list, &total);
    if (rc != MOAT_OK) {
        json_decref(list);
        moat_req_reply_problem(req, 500, "cannot read the dead letters");
        return;
    }
    moat_req_reply_json(req, 200,
                        json_pack("{s:o, s:I}", "dead_letters", list, "total",
                                  (json_int_t)total));
}

/*
 * Apply one dead letter again: handler and removal in one transaction.
 * MOAT_OK, a handler failure (recorded on the dead letter, why says it)
 * or MOAT_EDB (our database; nothing changed).
 */
static int redrive_one(struct moat_consumer *c, struct sub *s, int64_t seq,
                       const char *text, char *why, size_t whylen)
{
    const struct consumer_storage_ops *ops = c->ops;
    json_t *ce = json_loads(text, JSON_DECODE_ANY, NULL);
    struct moat_event ev;
    int rc = consumer_parse_event(ce, s->src->name, seq, &ev, why, whylen);
    if (rc != MOAT_OK) {
        ops->dead_mark_failed(c, s->src->name, seq, why);
        goto cleanup;
    }
    if ((rc = ops->begin(c)) != MOAT_OK) {
        rc = MOAT_EDB;
        goto cleanup;
    }
    rc = consumer_run_handler(s, NULL, &ev, why, whylen);
    if (rc != MOAT_OK) {
        ops->rollback(c);
        moat_metric_add(s->m_failures, 1);
        ops->dead_mark_failed(c, s->src->name, seq, why);
        goto cleanup;
    }
    rc = MOAT_EDB;
    if (ops->dead_delete(c, s->src->name, seq) == MOAT_OK &&
        ops->commit(c) == MOAT_OK) {
        rc = MOAT_OK;
        if (c->outbox)
            moat_outbox_committed(c->outbox);
        moat_metric_add(s->m_applied, 1);
    }

cleanup:
    if (rc == MOAT_EDB) {
        snprintf(why, whylen, "database: %s", ops->errmsg(c));
        ops->rollback(c);
    }
    json_decref(ce);
    return rc;
}

static int redrive_row(const struct consumer_dead *d, void *arg)
{
    json_array_append_new(arg,
                          json_pack("{s:s, s:s, s:I, s:s}", "source", d->source,
                                    "subject", d->subject, "seq",
                                    (json_int_t)d->seq, "event", d->event));
    return 0;
}

/*
 * Parked events are redriven per (source, subject), in seq order, each in
 * its own transaction, and a subject stops at its first failure so that
 * its later events never overtake it. Everything runs within this one
 * callback: the live loop cannot interleave an event of the same subject.
 */
static void handle_redrive(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    struct moat_qparam q[] = {
        {.name = "source", .kind = MOAT_Q_STR, .min = 1, .max = SOURCE_MAX},
        {.name = "subject", .kind = MOAT_Q_STR, .min = 1, .max = SUBJECT_MAX},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    if (busy_verifying(c, req))
        return;
    const char *source = q[0].sval, *subject = q[1].sval;
    if (source && !consumer_find_sub(c, source)) {
        moat_req_reply_problem(req, 404, "this consumer has no source \"%s\"",
                               source);
        return;
    }

    /* Read the whole selection first: applying while a read is open would
     * pin its snapshot inside our own transactions. */
    json_t *rows = json_array();
    if (c->ops->dead_visit(c, source, subject, true, REDRIVE_MAX, redrive_row,
                           rows, NULL) != MOAT_OK) {
        json_decref(rows);
        moat_req_reply_problem(req, 500, "cannot read the dead letters");
        return;
    }

    json_t *failed = json_array();
    int64_t applied = 0;
    const char *stop_src = NULL, *stop_subj = NULL;
    bool db_fault = false;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        const char *rsrc = consumer_jstr(row, "source");
        const char *rsubj = consumer_jstr(row, "subject");
        int64_t seq = json_integer_value(json_object_get(row, "seq"));
        if (stop_src && strcmp(stop_src, rsrc) == 0 &&
            strcmp(stop_subj, rsubj) == 0)
            continue; /* this subject stopped at an earlier failure */
        struct sub *s = consumer_find_sub(c, rsrc);
        char why[ERROR_MAX];
        int rc;
        if (!s) {
            snprintf(why, sizeof(why), "no subscription for source \"%s\"",
                     rsrc);
            rc = MOAT_ENOTFOUND;
        } else {
            rc = redrive_one(c, s, seq, consumer_jstr(row, "event"), why,
                             sizeof(why));
        }
        if (rc == MOAT_OK) {
            applied++;
            continue;
        }
        stop_src = rsrc;
        stop_subj = rsubj;
        json_array_append_new(
            failed, json_pack("{s:s, s:s, s:I, s:s}", "source", rsrc, "subject",
                              rsubj, "seq", (json_int_t)seq, "error", why));
        if (rc == MOAT_EDB) {
            db_fault = true;
            break;
        }
    }
    for (size_t k = 0; k < c->nsubs; k++)
        consumer_refresh_dead_gauge(c->subs[k]);
    int64_t remaining = 0;
    c->ops->dead_visit(c, source, subject, false, 0, NULL, NULL, &remaining);
    moat_log(MOAT_LOG_INFO, "dead letters redriven", "{s:I, s:I, s:I}",
             "applied", (json_int_t)applied, "failed",
             (json_int_t)json_array_size(failed), "remaining",
             (json_int_t)remaining);
    json_decref(rows);
    moat_req_reply_json(req, db_fault ? 503 : 200,
                        json_pack("{s:I, s:o, s:I}", "applied",
                                  (json_int_t)applied, "failed", failed,
                                  "remaining", (json_int_t)remaining));
}

static void handle_replay(struct moat_req *req, void *arg)
{
    struct moat_consumer *c = arg;
    struct moat_qparam q[] = {
        {.name = "verify", .kind = MOAT_Q_INT, .min = 0, .max = 1},
    };
    json_t *problem = moat_req_parse_query(req, q, MOAT_ARRAY_LEN(q));
    if (problem) {
        moat_req_reply_problem_json(req, problem);
        return;
    }
    if (!c->ops->has_view(c)) {
        moat_req_reply_problem(req, 501,
                               "this consumer has no view operations to "
                               "replay with");
        return;
    }
    if (busy_verifying(c, req))
        return;
    if (q[0].seen && q[0].ival == 1) {
        consumer_verify_start(c, req);
        return;
    }
    if (!c->ops->can_reset(c)) {
        moat_req_reply_problem(req, 501,
                               "this consumer's view cannot be reset; "
                               "verify=1 rebuilds it in a scratch copy");
        return;
    }
    consumer_replay_start(c, req);
}

int consumer_register_routes(struct moat_consumer *c,
                             struct moat_http_server *http)
{
    static const struct {
        unsigned method;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET, "/v1/admin/consumer", handle_status},
        {MOAT_GET, "/v1/admin/dead-letters", handle_dead_letters},
        {MOAT_POST, "/v1/admin/dead-letters/redrive", handle_redrive},
        {MOAT_POST, "/v1/admin/replay", handle_replay},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(http, routes[i].method, routes[i].pattern,
                                 routes[i].fn, c);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

int moat_consumer_register_admin(struct moat_consumer *c,
                                 struct moat_http_server *http,
                                 const char *data_dir,
                                 const struct moat_view_ops *view)
{
    if (!c || !http || c->kv)
        return MOAT_EINVAL;
    if (view && (!view->reset || !view->compare || !view->migrations))
        return MOAT_EINVAL;
    if (view && !data_dir)
        return MOAT_EINVAL;
    free(c->data_dir);
    c->data_dir = data_dir ? moat_xstrdup(data_dir) : NULL;
    if (view) {
        c->view = *view;
        c->has_view = true;
    }
    return consumer_register_routes(c, http);
}

int moat_consumer_register_admin_kv(struct moat_consumer *c,
                                    struct moat_http_server *http,
                                    const char *data_dir,
                                    const struct moat_kv_view_ops *view)
{
    if (!c || !http || !c->kv)
        return MOAT_EINVAL;
    if (view && (!view->scratch_open || !view->scratch_close ||
                 !view->compare || !data_dir))
        return MOAT_EINVAL;
    free(c->data_dir);
    c->data_dir = data_dir ? moat_xstrdup(data_dir) : NULL;
    if (view) {
        c->kv_view = *view;
        c->has_view = true;
    }
    return consumer_register_routes(c, http);
}
