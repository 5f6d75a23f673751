/*
 * moat/metrics.h - a Prometheus metrics registry rendered in text format
 * 0.0.4 (# HELP, # TYPE, _total counters, cumulative histogram buckets with
 * le="+Inf", _sum and _count).
 *
 * A family (name, help, type, label names) holds series, one per set of
 * label values. Families and series are created on first use and live as
 * long as the registry; pointers to them stay valid until
 * moat_metrics_free(), so hot paths look a series up once and keep it.
 * All operations are thread-safe (one mutex per family).
 *
 * Names must match [a-zA-Z_:][a-zA-Z0-9_:]*; counters must end in _total.
 * Label values are escaped on output (backslash, quote, newline).
 */
#ifndef MOAT_METRICS_H
#define MOAT_METRICS_H

#include <stddef.h>

#include "moat/buf.h"

enum moat_metric_type {
    MOAT_COUNTER,
    MOAT_GAUGE,
    MOAT_HISTOGRAM,
};

#define MOAT_METRIC_MAX_LABELS 4
/* Cap on series per family: label values from requests cannot explode it. */
#define MOAT_METRIC_MAX_SERIES 2000

struct moat_metrics;
struct moat_metric_family;
struct moat_metric_series;

/* Default latency buckets in seconds (0.0001 .. 10). */
extern const double moat_latency_buckets[];
extern const size_t moat_latency_buckets_len;

struct moat_metrics *moat_metrics_new(void);
void moat_metrics_free(struct moat_metrics *m);

/*
 * Find or create a family. labels is a comma-separated list of label names
 * ("route,method,status") or NULL. buckets (ascending upper bounds, +Inf
 * implied) are copied, and are used only for histograms. Returns NULL (and
 * logs) when the name, labels or type conflict with an existing family or
 * are invalid.
 */
struct moat_metric_family *
moat_metrics_family(struct moat_metrics *m, enum moat_metric_type type,
                    const char *name, const char *help, const char *labels,
                    const double *buckets, size_t nbuckets);

/*
 * Find or create the series for the given label values (as many as the
 * family has labels; values are copied). Returns the overflow series
 * (all labels "_other") once the family holds MOAT_METRIC_MAX_SERIES.
 */
struct moat_metric_series *moat_metric_series(struct moat_metric_family *f,
                                              const char *const *values);
/* Shorthand for a family without labels. */
struct moat_metric_series *moat_metric_single(struct moat_metric_family *f);

void moat_metric_add(struct moat_metric_series *s, double v);     /* counters */
void moat_metric_set(struct moat_metric_series *s, double v);     /* gauges */
void moat_metric_observe(struct moat_metric_series *s, double v); /* hist */
double moat_metric_value(struct moat_metric_series *s); /* counter/gauge */
/* Histogram count and sum; for tests and status output. */
void moat_metric_hist(struct moat_metric_series *s, uint64_t *count,
                      double *sum);

/*
 * Collectors run just before rendering, to refresh gauges that are cheaper
 * to read on demand (RSS, DB size, backlog). fn is called with arg.
 */
typedef void (*moat_metrics_collect_fn)(struct moat_metrics *m, void *arg);
void moat_metrics_on_collect(struct moat_metrics *m, moat_metrics_collect_fn fn,
                             void *arg);

/* Append the exposition of every family, sorted by name, to out. */
void moat_metrics_render(struct moat_metrics *m, struct moat_buf *out);

#endif /* MOAT_METRICS_H */
