/*
 * main.c - the analytics service: engagement (messages sent, comments,
 * posts, follows, registrations, active users) in minute, hour and day
 * buckets, per user and overall, a read model in its own SQLite database
 * ($MOAT_DATA_DIR/analytics.db) built only from the other services'
 * event feeds (analytics.h).
 *
 * Where to look: events.c for what each event counts as, store.c for the
 * schema and every query, handlers.c for the HTTP API and blind spots.
 * docs/analytics.md describes the service.
 *
 * Environment (besides moat/service.h's). Each source is optional: one
 * whose URL is unset is not subscribed (and never a blind spot).
 *   MOAT_ANALYTICS_MESSAGING_URL    messaging's base URL, for its feed
 *   MOAT_ANALYTICS_COMMENTS_URL     comments'
 *   MOAT_ANALYTICS_POSTS_URL        posts'
 *   MOAT_ANALYTICS_CONNECTIONS_URL  connections'
 *   MOAT_ANALYTICS_USERS_URL        users'
 *   MOAT_ANALYTICS_BLIND_LAG_MS     a source further behind than this is
 *                                   a blind spot (default 1000)
 *   MOAT_DB_DSN                     a libpq connection string: the view
 *                                   lives in that PostgreSQL database
 *                                   instead of analytics.db (moat/db.h)
 */
#include "moat/backup.h"
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>

#include "analytics.h"
#include "moat/config.h"
#include "moat/log.h"
#include "moat/service.h"

/* Differences listed by replay --verify before "... and N more". */
#define VERIFY_MAX_DIFFS 100

/* Apply lag buckets, seconds: finer than the default latency buckets
 * around the 100 ms objective. */
static const double lag_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,  0.075,  0.1,   0.25, 0.5,
                                     1,     2.5,    5,     10,   60};

static const char *const sources[] = {"messaging", "comments", "posts",
                                      "connections", "users"};

static int view_reset(struct moat_db *db, void *arg)
{
    MOAT_UNUSED(arg);
    return an_store_reset(db);
}

static int view_compare(struct moat_db *live, struct moat_db *scratch,
                        json_t *diffs, void *arg)
{
    MOAT_UNUSED(arg);
    return an_store_compare(live, scratch, diffs, VERIFY_MAX_DIFFS);
}

/* In moat/service.h's FREE ORDER. */
static void analytics_free(struct an_service *s)
{
    if (!s)
        return;
    moat_consumer_free(s->consumer);
    if (s->db)
        moat_db_close(s->db);
    free(s);
}

/* Subscribe to every source whose URL is set; *n gets how many. */
static int subscribe_all(struct moat_service *svc, struct an_service *s,
                         size_t *n)
{
    *n = 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(sources); i++) {
        char var[64];
        snprintf(var, sizeof(var), "MOAT_ANALYTICS_%s_URL", sources[i]);
        for (char *c = var; *c; c++)
            if (*c >= 'a' && *c <= 'z')
                *c = (char)(*c - 'a' + 'A');
        const char *url = moat_env_str(var, NULL);
        if (!url)
            continue; /* not a source of this deployment */
        int rc = moat_env_url(var, NULL, &url);
        if (rc == MOAT_OK)
            rc =
                moat_service_subscribe(svc, s->consumer, sources[i], url,
                                       an_event_types(sources[i]), an_apply, s);
        if (rc != MOAT_OK)
            return rc;
        (*n)++;
    }
    return MOAT_OK;
}

static int analytics_init(struct moat_service *svc)
{
    struct an_service *s = moat_xcalloc(1, sizeof(*s));
    size_t nsources = 0;
    int rc =
        moat_env_int("MOAT_ANALYTICS_BLIND_LAG_MS", AN_BLIND_LAG_MS_DEFAULT, 1,
                     3600000, &s->blind_lag_ms);
    if (rc != MOAT_OK)
        goto cleanup;
    rc =
        an_store_open(&s->db, svc->cfg.data_dir, svc->cfg.db_dsn, svc->metrics);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot open the analytics database",
                 "{s:s, s:s}", "data_dir", svc->cfg.data_dir, "error",
                 moat_strerror(rc));
        goto cleanup;
    }
    s->f_apply_lag = moat_metrics_family(
        svc->metrics, MOAT_HISTOGRAM, "moat_analytics_apply_lag_seconds",
        "Time from an event's commit (its time) to analytics applying it",
        "source", lag_buckets, MOAT_ARRAY_LEN(lag_buckets));
    rc = moat_consumer_new(&s->consumer, svc->base, s->db, svc->metrics);
    if (rc == MOAT_OK)
        rc = subscribe_all(svc, s, &nsources);
    if (rc != MOAT_OK)
        goto cleanup;
    if (nsources == 0)
        moat_log(MOAT_LOG_WARN,
                 "no source configured (MOAT_ANALYTICS_*_URL): every count "
                 "stays 0",
                 NULL);

    size_t nmig;
    const struct moat_migration *mig = an_store_migrations(&nmig);
    const struct moat_view_ops view = {
        .migrations = mig,
        .nmigrations = nmig,
        .reset = view_reset,
        .compare = view_compare,
        .arg = s,
    };
    rc = moat_consumer_register_admin(s->consumer, svc->http, svc->cfg.data_dir,
                                      &view);
    if (rc == MOAT_OK)
        rc = an_routes_register(svc->http, s);
    if (rc != MOAT_OK)
        goto cleanup;
    moat_backup_register_sqlite(svc, s->db);
    svc->impl = s;
    s = NULL;
cleanup:
    analytics_free(s);
    return rc;
}

static int analytics_start(struct moat_service *svc)
{
    struct an_service *s = svc->impl;
    moat_consumer_start(s->consumer);
    return MOAT_OK;
}

static bool analytics_ready(struct moat_service *svc, const char **why)
{
    struct an_service *s = svc->impl;
    if (!s) {
        *why = "not initialised";
        return false;
    }
    return an_store_ready(s->db, why);
}

static void analytics_release(struct moat_service *svc)
{
    analytics_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def analytics_def = {
    .name = "analytics",
    .default_port = 8097,
    .needs_data_dir = true,
    .init = analytics_init,
    .start = analytics_start,
    .ready = analytics_ready,
    .release = analytics_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&analytics_def, argc, argv);
}
