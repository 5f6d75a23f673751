/*
 * balance.c - several instances of an upstream (gateway.h "Several
 * instances"): pick an instance per call, health-check them actively
 * (/readyz on a timer) and passively (a refused or reset call), and count
 * calls per instance.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "moat/config.h"
#include "moat/log.h"

#define GW_DEFAULT_PROBE_MS 500
#define GW_PROBE_TIMEOUT_MS 1000

static bool eligible(const struct gw_instance *in, uint64_t now)
{
    return !in->probe_failed && now >= in->down_until;
}

struct gw_instance *gw_pool_pick(struct gw_pool *p,
                                 const struct gw_instance *avoid)
{
    uint64_t now = moat_mono_ms();
    struct gw_instance *best = NULL, *any = NULL;
    for (size_t k = 0; k < p->n; k++) {
        struct gw_instance *in = &p->inst[(p->next + k) % p->n];
        if (in == avoid)
            continue;
        if (!any)
            any = in;
        if (eligible(in, now) && (!best || in->outstanding < best->outstanding))
            best = in;
    }
    p->next = (p->next + 1) % p->n;
    if (!best)
        best = any; /* none is ready: try one anyway rather than fail */
    if (best) {
        best->outstanding++;
        moat_metric_add(best->m_requests, 1);
    }
    return best;
}

static void set_up(struct gw_instance *in, uint64_t now)
{
    moat_metric_set(in->m_up, eligible(in, now) ? 1 : 0);
}

void gw_pool_done(struct gw_pool *p, struct gw_instance *in,
                  const struct moat_http_response *resp)
{
    (void)p;
    if (in->outstanding)
        in->outstanding--;
    /* Refused, or reset before answering; a slow answer is not a down
     * instance. */
    bool down =
        resp->connect_failed || (resp->no_response && resp->err == MOAT_EIO);
    if (resp->err == MOAT_OK || resp->err == MOAT_ECANCELLED || !down)
        return;
    uint64_t now = moat_mono_ms();
    if (now >= in->down_until)
        moat_log(MOAT_LOG_WARN, "upstream instance marked down",
                 "{s:s, s:s, s:s, s:i}", "upstream", p->service, "instance",
                 in->origin, "error", resp->err_msg ? resp->err_msg : "",
                 "for_ms", GW_DOWN_MS);
    in->down_at = now;
    in->down_until = now + GW_DOWN_MS;
    moat_metric_add(in->m_marked, 1);
    set_up(in, now);
}

struct probe {
    struct gw_pool *pool;
    size_t idx;
};

static void on_probe(const struct moat_http_response *resp, void *arg)
{
    struct probe *pr = arg;
    if (resp->err != MOAT_ECANCELLED) {
        struct gw_instance *in = &pr->pool->inst[pr->idx];
        uint64_t now = moat_mono_ms();
        bool ok = resp->err == MOAT_OK && resp->status == 200;
        in->probing = false;
        if (ok != !in->probe_failed)
            moat_log(MOAT_LOG_INFO, "upstream instance probe",
                     "{s:s, s:s, s:s}", "upstream", pr->pool->service,
                     "instance", in->origin, "result",
                     ok ? "ready" : "not ready");
        in->probe_failed = !ok;
        /* Ready since the passive mark: it is back. */
        if (ok && in->probe_sent >= in->down_at)
            in->down_until = 0;
        set_up(in, now);
    }
    free(pr);
}

static void probe_all(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct gw_pool *p = arg;
    for (size_t i = 0; i < p->n; i++) {
        struct gw_instance *in = &p->inst[i];
        if (in->probing)
            continue;
        struct probe *pr = moat_xcalloc(1, sizeof(*pr));
        pr->pool = p;
        pr->idx = i;
        char *url = moat_xasprintf("%s/readyz", in->origin);
        struct moat_http_call call = {
            .method = "GET", .url = url, .timeout_ms = GW_PROBE_TIMEOUT_MS};
        in->probe_sent = moat_mono_ms();
        in->probing = true;
        if (moat_http_client_send(p->gw->client, &call, on_probe, pr) !=
            MOAT_OK) {
            in->probing = false;
            free(pr);
        }
        free(url);
    }
}

static bool same_origins(const struct gw_pool *p, const struct gw_route *r)
{
    if (strcmp(p->service, r->service) != 0 || p->n != r->norigins)
        return false;
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->inst[i].origin, r->origins[i]) != 0)
            return false;
    return true;
}

static struct gw_pool *pool_new(struct gw *gw, const struct gw_route *r)
{
    struct moat_metrics *m = gw->svc->metrics;
    struct moat_metric_family *calls = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_instance_requests_total",
        "Calls sent to each instance of an upstream service (retries "
        "included)",
        "service,instance", NULL, 0);
    struct moat_metric_family *up = moat_metrics_family(
        m, MOAT_GAUGE, "moat_gateway_instance_up",
        "1 while an upstream instance is picked (its /readyz answers and no "
        "call to it was refused lately)",
        "service,instance", NULL, 0);
    struct moat_metric_family *marked = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_instance_marked_down_total",
        "Calls refused or reset before any answer, each marking the "
        "instance down for a while",
        "service,instance", NULL, 0);
    struct moat_metric_family *retries = moat_metrics_family(
        m, MOAT_COUNTER, "moat_gateway_retries_total",
        "Idempotent calls tried again on another instance after the first "
        "failed before any answer",
        "service", NULL, 0);
    if (!calls || !up || !marked || !retries)
        moat_die("cannot register the gateway balancing metrics");
    struct gw_pool *p = moat_xcalloc(1, sizeof(*p));
    p->gw = gw;
    p->service = moat_xstrdup(r->service);
    p->n = r->norigins;
    p->inst = moat_xcalloc(p->n, sizeof(*p->inst));
    for (size_t i = 0; i < p->n; i++) {
        struct gw_instance *in = &p->inst[i];
        in->origin = moat_xstrdup(r->origins[i]);
        const char *labels[] = {p->service, in->origin};
        in->m_requests = moat_metric_series(calls, labels);
        in->m_up = moat_metric_series(up, labels);
        in->m_marked = moat_metric_series(marked, labels);
        moat_metric_set(in->m_up, 1);
    }
    const char *svc_label[] = {p->service};
    p->m_retries = moat_metric_series(retries, svc_label);
    if (p->n > 1) {
        p->timer = event_new(gw->svc->base, -1, EV_PERSIST, probe_all, p);
        struct timeval tv = {gw->probe_ms / 1000, (gw->probe_ms % 1000) * 1000};
        if (!p->timer || event_add(p->timer, &tv) != 0)
            moat_die("cannot start the upstream probes");
    }
    return p;
}

int gw_pools_init(struct gw *gw)
{
    int64_t v;
    if (moat_env_int("MOAT_GATEWAY_PROBE_MS", GW_DEFAULT_PROBE_MS, 50, 60000,
                     &v) != MOAT_OK)
        return MOAT_EINVAL;
    gw->probe_ms = (long)v;
    for (size_t i = 0; i < gw->nroutes; i++) {
        struct gw_route *r = &gw->routes[i];
        for (size_t k = 0; k < gw->npools && !r->pool; k++)
            if (same_origins(gw->pools[k], r))
                r->pool = gw->pools[k];
        if (r->pool)
            continue;
        gw->pools =
            moat_xrealloc(gw->pools, (gw->npools + 1) * sizeof(*gw->pools));
        r->pool = gw->pools[gw->npools++] = pool_new(gw, r);
    }
    return MOAT_OK;
}

void gw_pools_free(struct gw *gw)
{
    for (size_t k = 0; k < gw->npools; k++) {
        struct gw_pool *p = gw->pools[k];
        if (p->timer)
            event_free(p->timer);
        for (size_t i = 0; i < p->n; i++)
            free(p->inst[i].origin);
        free(p->inst);
        free(p->service);
        free(p);
    }
    free(gw->pools);
    gw->pools = NULL;
    gw->npools = 0;
}

char *gw_pool_url(struct gw *gw, const char *service, const char *base_url,
                  const char *path)
{
    for (size_t k = 0; k < gw->npools; k++) {
        struct gw_pool *p = gw->pools[k];
        size_t olen = strlen(p->inst[0].origin);
        if (p->n < 2 || strcmp(p->service, service) != 0 ||
            strncmp(base_url, p->inst[0].origin, olen) != 0)
            continue;
        uint64_t now = moat_mono_ms();
        for (size_t i = 0; i < p->n; i++) {
            struct gw_instance *in = &p->inst[(p->next + i) % p->n];
            if (eligible(in, now)) {
                p->next = (p->next + i + 1) % p->n;
                return moat_xasprintf("%s%s%s", in->origin, base_url + olen,
                                      path);
            }
        }
    }
    return moat_xasprintf("%s%s", base_url, path);
}
