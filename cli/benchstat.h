/*
 * cli/benchstat.h - what the benchmarks (`moat bench`, `moat social
 * bench`) measure and print besides their own workload: latency
 * percentiles and the CPU and memory of every service's process.
 *
 * Processes are found through the supervisor's state file (pid per
 * process: each instance of a service under its label, "catalog#2", and
 * the PostgreSQL cluster, the broker and Redis when moat up runs them) and
 * sampled from /proc/<pid>/stat (CPU time, with that of the process's
 * children, live or reaped: PostgreSQL's backends) and /proc/<pid>/status
 * (VmRSS, of the process alone). A service restarted during the run keeps
 * the CPU its earlier processes used and counts the restart.
 *
 * Ownership: the json_t objects returned are new references the caller
 * decrefs. struct bench_procs is a plain value (no heap).
 */
#ifndef MOAT_CLI_BENCHSTAT_H
#define MOAT_CLI_BENCHSTAT_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

#include "deploy.h"

struct cli_optokens; /* drill.h */

/* Monotonic time in ms, with sub-ms precision. */
double bench_now_ms(void);

struct bench_procstat {
    char name[DEPLOY_NAME_MAX + 1];
    pid_t pid;
    double cpu0, cpu1; /* seconds at the first and last sample */
    double cpu_acc;    /* CPU of earlier pids (restarts) */
    long rss_max_kb, rss_last_kb;
    long pss_first_kb, pss_last_kb; /* smaps_rollup Pss, -1 if unreadable */
    unsigned restarts;
};

struct bench_procs {
    struct bench_procstat ps[DEPLOY_MAX_SERVICES];
    size_t n;
};

/* Sample every service of d that runs (state file); quietly skips what
 * cannot be read. */
void bench_procs_sample(struct bench_procs *p, const struct deploy *d);
/* [{"service", "pid", "rss_max_mb", "rss_end_mb", "cpu_seconds",
 *   "cpu_percent" (of one core over run_s), "restarts"}] */
json_t *bench_procs_json(const struct bench_procs *p, double run_s);
/* The table of bench_procs_json()'s array, on stdout. */
void bench_procs_print(json_t *procs);

/*
 * Each row of procs (bench_procs_json) gains "cpu_us_per_unit": its CPU
 * divided by units (completed sagas); returns {"cpu_us_per_unit": the sum
 * over services, "cpu_seconds": the services' CPU, "pss_idle_mb", "pss_end_mb":
 * the sum of every service's Pss at the first and last sample}.
 */
json_t *bench_procs_totals(const struct bench_procs *p, json_t *procs,
                           double units);
/* Prints bench_procs_totals() under the procs table; unit names a unit. */
void bench_procs_totals_print(json_t *procs, json_t *totals, const char *unit);

/* The whole machine's CPU (/proc/stat) and this process's (getrusage), to
 * tell how much of the cores others used during a run. */
struct bench_machine {
    double busy_s, all_s; /* all CPUs: busy and total time, seconds */
    double self_s;        /* this process: user + system */
};
void bench_machine_sample(struct bench_machine *m);
/* {"cores", "busy_percent" (of all cores), "bench_cpu_s", "others_cpu_s"
 * (busy time not used by the services nor by bench)} between a and b;
 * services_cpu_s from bench_procs_totals. */
json_t *bench_machine_json(const struct bench_machine *a,
                           const struct bench_machine *b,
                           double services_cpu_s);
void bench_machine_print(json_t *machine);

/*
 * A Prometheus histogram's cumulative buckets, read from the /metrics page
 * of each service of a deployment, one entry per (service, source label).
 */
#define BENCH_HIST_BUCKETS 24
struct bench_hist {
    char name[2 * DEPLOY_NAME_MAX + 8]; /* "service<-source" */
    double le[BENCH_HIST_BUCKETS];      /* seconds; INFINITY for +Inf */
    double count[BENCH_HIST_BUCKETS];
    size_t n;
};
struct bench_hists {
    struct bench_hist h[64];
    size_t n;
};
/* Read histogram `metric` (labels source and le) from every service of d
 * that answers /metrics (as the operator, with tok's token for each). */
void bench_hists_read(struct bench_hists *hs, const struct deploy *d,
                      const char *metric, struct cli_optokens *tok);
/* Per entry of after with observations since before: {"hop", "count",
 * "p50", "p90", "p99" (ms, the upper bound of the bucket; null beyond the
 * last finite one)}; then, with two entries or more, one with "hop": "all
 * hops" (every entry's observations pooled: the event lag of the run). */
json_t *bench_hists_json(const struct bench_hists *before,
                         const struct bench_hists *after);
void bench_hists_print(json_t *hops);

/*
 * Sort v (n latencies in ms) and summarise it: {"count", "p50", "p90",
 * "p99", "p99_9", "max"} (nearest-rank percentiles; 0 when n is 0).
 */
json_t *bench_latency(double *v, size_t n);
/* One row "label p50 p90 p99 p99.9 max (count)" of bench_latency(). */
void bench_latency_print(const char *label, json_t *l);
/* The header line above bench_latency_print() rows. */
void bench_latency_header(const char *title);

#endif /* MOAT_CLI_BENCHSTAT_H */
