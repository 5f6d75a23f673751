/* benchstat.c - latency percentiles and process sampling for the
 * benchmarks (see benchstat.h). */
#include "moat/common.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "benchstat.h"
#include "cli.h"
#include "drill.h"

double bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---- /proc ---- */

/* From /proc/<pid>/stat: the parent, and the CPU seconds (user + system)
 * of the process and of its children it has waited for. */
static bool proc_stat(pid_t pid, pid_t *ppid, double *cpu_s, double *reaped_s)
{
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command name, which may hold spaces: from ") ". */
    char *p = strrchr(buf, ')');
    int pp = 0;
    unsigned long utime = 0, stime = 0;
    long cutime = 0, cstime = 0;
    if (!p || sscanf(p + 2,
                     "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu "
                     "%ld %ld",
                     &pp, &utime, &stime, &cutime, &cstime) != 5)
        return false;
    double tck = (double)sysconf(_SC_CLK_TCK);
    *ppid = (pid_t)pp;
    *cpu_s = (double)(utime + stime) / tck;
    *reaped_s = (double)(cutime + cstime) / tck;
    return true;
}

static long proc_rss_kb(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    long kb = 0;
    while (f && fgets(buf, sizeof(buf), f))
        if (strncmp(buf, "VmRSS:", 6) == 0)
            kb = strtol(buf + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

/* Proportional set size (kB) from /proc/<pid>/smaps_rollup; -1 if not
 * readable. */
static long proc_pss_kb(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "re");
    long kb = -1;
    while (f && fgets(buf, sizeof(buf), f))
        if (strncmp(buf, "Pss:", 4) == 0)
            kb = strtol(buf + 4, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

/* Adds the CPU of the live children of each of the n pids to cpu[]: one
 * pass over /proc (PostgreSQL's backends are the postmaster's children). */
static void children_cpu(const pid_t *pids, double *cpu, size_t n)
{
    DIR *dir = opendir("/proc");
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        pid_t ppid;
        double c, reaped;
        if (*end || pid <= 1 || !proc_stat((pid_t)pid, &ppid, &c, &reaped))
            continue;
        for (size_t k = 0; k < n; k++)
            if (pids[k] == ppid)
                cpu[k] += c;
    }
    if (dir)
        closedir(dir);
}

void bench_procs_sample(struct bench_procs *b, const struct deploy *d)
{
    json_t *st = cli_running_state(d);
    if (!st)
        return;
    /* Every process of the state file: each instance ("label"), and the
     * PostgreSQL cluster, the broker and Redis when moat up runs them. */
    json_t *svcs = json_object_get(st, "services");
    struct bench_procstat *rows[DEPLOY_MAX_SERVICES];
    pid_t pids[DEPLOY_MAX_SERVICES];
    double cpu[DEPLOY_MAX_SERVICES];
    size_t n = 0, i;
    json_t *svc;
    json_array_foreach(svcs, i, svc)
    {
        if (n == DEPLOY_MAX_SERVICES)
            break;
        json_t *label = json_object_get(svc, "label");
        const char *name =
            json_string_value(label ? label : json_object_get(svc, "name"));
        pid_t pid = (pid_t)json_integer_value(json_object_get(svc, "pid"));
        pid_t ppid;
        double reaped;
        if (!name || pid <= 1 || !proc_stat(pid, &ppid, &cpu[n], &reaped))
            continue;
        cpu[n] += reaped;
        struct bench_procstat *p = NULL;
        for (size_t k = 0; k < b->n && !p; k++)
            if (strcmp(b->ps[k].name, name) == 0)
                p = &b->ps[k];
        if (!p && b->n == DEPLOY_MAX_SERVICES)
            continue;
        if (!p) {
            p = &b->ps[b->n++];
            snprintf(p->name, sizeof(p->name), "%s", name);
            p->pid = 0;
        }
        rows[n] = p;
        pids[n++] = pid;
    }
    children_cpu(pids, cpu, n);
    for (size_t k = 0; k < n; k++) {
        struct bench_procstat *p = rows[k];
        pid_t pid = pids[k];
        if (!p->pid) {
            p->pid = pid;
            p->cpu0 = cpu[k];
            p->pss_first_kb = proc_pss_kb(pid);
        } else if (p->pid != pid) {
            /* Restarted: keep what the old process used. */
            p->cpu_acc += p->cpu1 - p->cpu0;
            p->pid = pid;
            p->cpu0 = 0;
            p->restarts++;
        }
        p->cpu1 = cpu[k];
        long rss = proc_rss_kb(pid);
        p->rss_last_kb = rss;
        p->pss_last_kb = proc_pss_kb(pid);
        if (rss > p->rss_max_kb)
            p->rss_max_kb = rss;
    }
    json_decref(st);
}

json_t *bench_procs_json(const struct bench_procs *b, double run_s)
{
    json_t *procs = json_array();
    for (size_t i = 0; i < b->n; i++) {
        const struct bench_procstat *p = &b->ps[i];
        double cpu = p->cpu_acc + p->cpu1 - p->cpu0;
        json_array_append_new(
            procs,
            json_pack("{s:s, s:i, s:f, s:f, s:f, s:f, s:i}", "service", p->name,
                      "pid", (int)p->pid, "rss_max_mb",
                      (double)p->rss_max_kb / 1024.0, "rss_end_mb",
                      (double)p->rss_last_kb / 1024.0, "cpu_seconds", cpu,
                      "cpu_percent", run_s > 0 ? 100.0 * cpu / run_s : 0.0,
                      "restarts", (int)p->restarts));
    }
    return procs;
}

void bench_procs_print(json_t *procs)
{
    printf("\n  %-14s %8s %10s %10s %8s %6s %8s\n", "SERVICE", "PID",
           "RSS MAX MB", "RSS END MB", "CPU S", "CPU %", "RESTARTS");
    size_t i;
    json_t *p;
    json_array_foreach(procs, i, p)
    {
        printf("  %-14s %8lld %10.1f %10.1f %8.2f %6.1f %8lld\n",
               json_string_value(json_object_get(p, "service")),
               (long long)json_integer_value(json_object_get(p, "pid")),
               json_real_value(json_object_get(p, "rss_max_mb")),
               json_real_value(json_object_get(p, "rss_end_mb")),
               json_real_value(json_object_get(p, "cpu_seconds")),
               json_real_value(json_object_get(p, "cpu_percent")),
               (long long)json_integer_value(json_object_get(p, "restarts")));
    }
}

json_t *bench_procs_totals(const struct bench_procs *b, json_t *procs,
                           double units)
{
    double cpu = 0, pss0 = 0, pss1 = 0;
    for (size_t i = 0; i < b->n; i++) {
        const struct bench_procstat *p = &b->ps[i];
        double c = p->cpu_acc + p->cpu1 - p->cpu0;
        cpu += c;
        pss0 += p->pss_first_kb > 0 ? (double)p->pss_first_kb : 0;
        pss1 += p->pss_last_kb > 0 ? (double)p->pss_last_kb : 0;
        json_t *row = json_array_get(procs, i);
        json_object_set_new(row, "cpu_us_per_unit",
                            json_real(units > 0 ? c * 1e6 / units : 0));
        json_object_set_new(row, "pss_end_mb",
                            json_real((double)p->pss_last_kb / 1024.0));
    }
    return json_pack("{s:f, s:f, s:f, s:f}", "cpu_seconds", cpu,
                     "cpu_us_per_unit", units > 0 ? cpu * 1e6 / units : 0.0,
                     "pss_idle_mb", pss0 / 1024.0, "pss_end_mb", pss1 / 1024.0);
}

void bench_procs_totals_print(json_t *procs, json_t *totals, const char *unit)
{
    printf("\nCPU per %s (us):", unit);
    size_t i;
    json_t *p;
    json_array_foreach(procs, i, p)
    {
        double us = json_real_value(json_object_get(p, "cpu_us_per_unit"));
        if (us >= 0.5)
            printf(" %s %.0f,",
                   json_string_value(json_object_get(p, "service")), us);
    }
    printf(" all services %.0f\n",
           json_real_value(json_object_get(totals, "cpu_us_per_unit")));
    printf("PSS of the deployment: %.1f MiB at the start, %.1f MiB at the "
           "end\n",
           json_real_value(json_object_get(totals, "pss_idle_mb")),
           json_real_value(json_object_get(totals, "pss_end_mb")));
}

/* ---- the machine ---- */

void bench_machine_sample(struct bench_machine *m)
{
    *m = (struct bench_machine){0};
    FILE *f = fopen("/proc/stat", "re");
    unsigned long long v[8] = {0};
    if (f) {
        /* cpu  user nice system idle iowait irq softirq steal */
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
                   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
            memset(v, 0, sizeof(v));
        fclose(f);
    }
    double tck = (double)sysconf(_SC_CLK_TCK), all = 0;
    for (size_t i = 0; i < 8; i++)
        all += (double)v[i];
    m->all_s = all / tck;
    m->busy_s = (all - (double)v[3] - (double)v[4]) / tck;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        m->self_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

json_t *bench_machine_json(const struct bench_machine *a,
                           const struct bench_machine *b, double services_cpu_s)
{
    double all = b->all_s - a->all_s, busy = b->busy_s - a->busy_s;
    double self = b->self_s - a->self_s;
    double others = busy - services_cpu_s - self;
    return json_pack("{s:i, s:f, s:f, s:f}", "cores",
                     (int)sysconf(_SC_NPROCESSORS_ONLN), "busy_percent",
                     all > 0 ? 100.0 * busy / all : 0.0, "bench_cpu_s", self,
                     "others_cpu_s", others > 0 ? others : 0.0);
}

void bench_machine_print(json_t *m)
{
    printf("machine: %lld cores %.0f%% busy; bench itself %.2f CPU s, other "
           "processes %.2f CPU s\n",
           (long long)json_integer_value(json_object_get(m, "cores")),
           json_real_value(json_object_get(m, "busy_percent")),
           json_real_value(json_object_get(m, "bench_cpu_s")),
           json_real_value(json_object_get(m, "others_cpu_s")));
}

/* ---- histograms from /metrics ---- */

static struct bench_hist *hist_slot(struct bench_hists *hs, const char *name)
{
    for (size_t i = 0; i < hs->n; i++)
        if (strcmp(hs->h[i].name, name) == 0)
            return &hs->h[i];
    if (hs->n == sizeof(hs->h) / sizeof(hs->h[0]))
        return NULL;
    struct bench_hist *h = &hs->h[hs->n++];
    memset(h, 0, sizeof(*h));
    snprintf(h->name, sizeof(h->name), "%s", name);
    return h;
}

static void hist_parse(struct bench_hists *hs, const char *service,
                       const char *page, const char *metric)
{
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s_bucket{source=\"", metric);
    size_t n = strlen(prefix);
    for (const char *p = page; p && *p;
         p = strchr(p, '\n'), p = p ? p + 1 : p) {
        if (strncmp(p, prefix, n) != 0)
            continue;
        const char *src = p + n, *q = strchr(src, '"');
        if (!q || strncmp(q, "\",le=\"", 6) != 0)
            continue;
        char name[sizeof(hs->h[0].name)];
        snprintf(name, sizeof(name), "%s<-%.*s", service, (int)(q - src), src);
        struct bench_hist *h = hist_slot(hs, name);
        if (!h || h->n == BENCH_HIST_BUCKETS)
            continue;
        h->le[h->n] =
            strncmp(q + 6, "+Inf", 4) == 0 ? INFINITY : strtod(q + 6, NULL);
        const char *sp = strchr(q + 6, ' ');
        h->count[h->n++] = sp ? strtod(sp + 1, NULL) : 0;
    }
}

void bench_hists_read(struct bench_hists *hs, const struct deploy *d,
                      const char *metric, struct cli_optokens *tok)
{
    hs->n = 0;
    for (size_t i = 0; i < d->nservices; i++) {
        char *base = deploy_base_url(&d->services[i]);
        char *url = moat_xasprintf("%s/metrics", base);
        const char *auth = cli_optokens_get(tok, d->services[i].name);
        long st = 0;
        char *body = NULL;
        if (cli_http("GET", url, auth, NULL, 2000, &st, &body) == MOAT_OK &&
            st == 200 && body)
            hist_parse(hs, d->services[i].name, body, metric);
        free(body);
        free(url);
        free(base);
    }
}

/* The upper bound (ms) of the bucket holding quantile q of a - b. */
static json_t *hist_quantile(const struct bench_hist *b,
                             const struct bench_hist *a, double total, double q)
{
    double rank = ceil(q * total);
    for (size_t i = 0; i < a->n; i++) {
        double c = a->count[i] - (b ? b->count[i] : 0);
        if (c >= rank)
            return isinf(a->le[i]) ? json_null() : json_real(a->le[i] * 1000);
    }
    return json_null();
}

json_t *bench_hists_json(const struct bench_hists *before,
                         const struct bench_hists *after)
{
    json_t *out = json_array();
    struct bench_hist all = {.n = 0}; /* every hop's observations pooled */
    size_t pooled = 0;
    for (size_t i = 0; i < after->n; i++) {
        const struct bench_hist *a = &after->h[i], *b = NULL;
        for (size_t k = 0; k < before->n && !b; k++)
            if (strcmp(before->h[k].name, a->name) == 0 &&
                before->h[k].n == a->n)
                b = &before->h[k];
        if (!a->n)
            continue;
        double total = a->count[a->n - 1] - (b ? b->count[b->n - 1] : 0);
        if (total <= 0)
            continue;
        if (!all.n) {
            all.n = a->n;
            memcpy(all.le, a->le, sizeof(all.le));
        }
        if (all.n == a->n && memcmp(all.le, a->le, sizeof(all.le)) == 0) {
            for (size_t k = 0; k < a->n; k++)
                all.count[k] += a->count[k] - (b ? b->count[k] : 0);
            pooled++;
        }
        json_array_append_new(
            out, json_pack("{s:s, s:f, s:o, s:o, s:o}", "hop", a->name, "count",
                           total, "p50", hist_quantile(b, a, total, 0.5), "p90",
                           hist_quantile(b, a, total, 0.9), "p99",
                           hist_quantile(b, a, total, 0.99)));
    }
    double total = all.n ? all.count[all.n - 1] : 0;
    if (pooled > 1 && total > 0)
        json_array_append_new(
            out,
            json_pack("{s:s, s:f, s:o, s:o, s:o}", "hop", "all hops", "count",
                      total, "p50", hist_quantile(NULL, &all, total, 0.5),
                      "p90", hist_quantile(NULL, &all, total, 0.9), "p99",
                      hist_quantile(NULL, &all, total, 0.99)));
    return out;
}

void bench_hists_print(json_t *hops)
{
    if (!json_array_size(hops))
        return;
    printf("\n%-32s %8s %8s %8s %9s\n", "hop: producer commit -> handler done",
           "p50 <=", "p90 <=", "p99 <=", "events");
    size_t i;
    json_t *h;
    json_array_foreach(hops, i, h)
    {
        printf("  %-30s", json_string_value(json_object_get(h, "hop")));
        static const char *const q[] = {"p50", "p90", "p99"};
        for (size_t k = 0; k < 3; k++) {
            json_t *v = json_object_get(h, q[k]);
            if (json_is_real(v))
                printf(" %6.0fms", json_real_value(v));
            else
                printf(" %8s", ">max");
        }
        printf(" %9.0f\n", json_real_value(json_object_get(h, "count")));
    }
}

/* ---- latency ---- */

static int dbl_cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double pct(const double *v, size_t n, double p)
{
    if (!n)
        return 0;
    size_t k = (size_t)ceil(p / 100.0 * (double)n);
    return v[k ? k - 1 : 0];
}

json_t *bench_latency(double *v, size_t n)
{
    if (n)
        qsort(v, n, sizeof(*v), dbl_cmp);
    return json_pack("{s:I, s:f, s:f, s:f, s:f, s:f}", "count", (json_int_t)n,
                     "p50", pct(v, n, 50), "p90", pct(v, n, 90), "p99",
                     pct(v, n, 99), "p99_9", pct(v, n, 99.9), "max",
                     n ? v[n - 1] : 0.0);
}

void bench_latency_header(const char *title)
{
    printf("\n%-24s %9s %9s %9s %9s %9s\n", title, "p50", "p90", "p99", "p99.9",
           "max");
}

void bench_latency_print(const char *label, json_t *l)
{
    printf("  %-22s %9.1f %9.1f %9.1f %9.1f %9.1f  (%lld)\n", label,
           json_real_value(json_object_get(l, "p50")),
           json_real_value(json_object_get(l, "p90")),
           json_real_value(json_object_get(l, "p99")),
           json_real_value(json_object_get(l, "p99_9")),
           json_real_value(json_object_get(l, "max")),
           (long long)json_integer_value(json_object_get(l, "count")));
}
