/* benchstat.c - latency percentiles and process sampling for the
 * benchmarks (see benchstat.h). */
#include "moat/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchstat.h"
#include "drill.h"

double bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---- /proc ---- */

static bool proc_sample(pid_t pid, double *cpu_s, long *rss_kb)
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
    unsigned long utime = 0, stime = 0;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
               &utime, &stime) != 2)
        return false;
    *cpu_s = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "re");
    *rss_kb = 0;
    while (f && fgets(buf, sizeof(buf), f))
        if (strncmp(buf, "VmRSS:", 6) == 0)
            *rss_kb = strtol(buf + 6, NULL, 10);
    if (f)
        fclose(f);
    return true;
}

void bench_procs_sample(struct bench_procs *b, const struct deploy *d)
{
    json_t *st = cli_running_state(d);
    if (!st)
        return;
    for (size_t i = 0; i < d->nservices; i++) {
        const char *name = d->services[i].name;
        struct bench_procstat *p = NULL;
        for (size_t k = 0; k < b->n && !p; k++)
            if (strcmp(b->ps[k].name, name) == 0)
                p = &b->ps[k];
        pid_t pid = cli_state_pid(st, name, NULL);
        double cpu;
        long rss;
        if (pid <= 1 || !proc_sample(pid, &cpu, &rss))
            continue;
        if (!p) {
            p = &b->ps[b->n++];
            snprintf(p->name, sizeof(p->name), "%s", name);
            p->pid = pid;
            p->cpu0 = p->cpu1 = cpu;
        } else if (p->pid != pid) {
            /* Restarted: keep what the old process used. */
            p->cpu_acc += p->cpu1 - p->cpu0;
            p->pid = pid;
            p->cpu0 = 0;
            p->restarts++;
        }
        p->cpu1 = cpu;
        p->rss_last_kb = rss;
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
