/*
 * metrics.c - Prometheus registry and text exposition 0.0.4.
 *
 * Families live in a fixed array in the registry (a service has tens, not
 * thousands); series in a per-family array with a linear search, which is
 * fast enough because hot paths resolve their series once and keep the
 * pointer (see moat/metrics.h).
 */
#include "moat/common.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "moat/metrics.h"

#define MAX_FAMILIES   128
#define MAX_COLLECTORS 16

const double moat_latency_buckets[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
const size_t moat_latency_buckets_len = MOAT_ARRAY_LEN(moat_latency_buckets);

struct moat_metric_series {
    struct moat_metric_family *family;
    char *values[MOAT_METRIC_MAX_LABELS]; /* owned label values */
    double value;                         /* counter or gauge */
    uint64_t *buckets; /* histogram: per-bucket (non-cumulative) counts */
    uint64_t count;
    double sum;
};

struct moat_metric_family {
    enum moat_metric_type type;
    char *name;
    char *help;
    size_t nlabels;
    char *labels[MOAT_METRIC_MAX_LABELS];
    double *bounds; /* histogram upper bounds, ascending, +Inf implied */
    size_t nbounds;
    pthread_mutex_t lock; /* guards series array and every series' values */
    struct moat_metric_series **series;
    size_t nseries, cap;
    struct moat_metric_series *overflow;
};

struct moat_metrics {
    pthread_mutex_t lock; /* guards the family array and collectors */
    struct moat_metric_family *families[MAX_FAMILIES];
    size_t nfamilies;
    struct {
        moat_metrics_collect_fn fn;
        void *arg;
    } collectors[MAX_COLLECTORS];
    size_t ncollectors;
};

static bool valid_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     c == '_' || c == ':';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

struct moat_metrics *moat_metrics_new(void)
{
    struct moat_metrics *m = moat_xcalloc(1, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void series_free(struct moat_metric_series *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < MOAT_METRIC_MAX_LABELS; i++)
        free(s->values[i]);
    free(s->buckets);
    free(s);
}

static void family_free(struct moat_metric_family *f)
{
    for (size_t i = 0; i < f->nseries; i++)
        series_free(f->series[i]);
    series_free(f->overflow);
    free(f->series);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->bounds);
    free(f->name);
    free(f->help);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void moat_metrics_free(struct moat_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfamilies; i++)
        family_free(m->families[i]);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static int split_labels(const char *labels, char *out[MOAT_METRIC_MAX_LABELS],
                        size_t *n)
{
    *n = 0;
    if (!labels || !*labels)
        return MOAT_OK;
    const char *p = labels;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (*n == MOAT_METRIC_MAX_LABELS)
            return MOAT_EINVAL;
        out[*n] = moat_xstrndup(p, len);
        (*n)++;
        if (!valid_name(out[*n - 1]) || strchr(out[*n - 1], ':') ||
            strcmp(out[*n - 1], "le") == 0)
            return MOAT_EINVAL;
        if (!comma)
            break;
        p = comma + 1;
    }
    return MOAT_OK;
}

static bool same_labels(const struct moat_metric_family *f, const char *labels)
{
    char *names[MOAT_METRIC_MAX_LABELS] = {0};
    size_t n = 0;
    bool same = split_labels(labels, names, &n) == MOAT_OK && n == f->nlabels;
    for (size_t i = 0; i < n; i++) {
        if (same && strcmp(names[i], f->labels[i]) != 0)
            same = false;
        free(names[i]);
    }
    return same;
}

struct moat_metric_family *
moat_metrics_family(struct moat_metrics *m, enum moat_metric_type type,
                    const char *name, const char *help, const char *labels,
                    const double *buckets, size_t nbuckets)
{
    struct moat_metric_family *f = NULL;
    if (!valid_name(name) ||
        (type == MOAT_COUNTER &&
         (strlen(name) < 6 || strcmp(name + strlen(name) - 6, "_total")))) {
        moat_log(MOAT_LOG_ERROR, "invalid metric name", "{s:s}", "name",
                 name ? name : "");
        return NULL;
    }
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->nfamilies; i++) {
        if (strcmp(m->families[i]->name, name) == 0) {
            f = m->families[i];
            if (f->type != type || !same_labels(f, labels)) {
                moat_log(MOAT_LOG_ERROR, "metric redefined differently",
                         "{s:s}", "name", name);
                f = NULL;
            }
            goto out;
        }
    }
    if (m->nfamilies == MAX_FAMILIES) {
        moat_log(MOAT_LOG_ERROR, "too many metric families", "{s:s}", "name",
                 name);
        goto out;
    }
    f = moat_xcalloc(1, sizeof(*f));
    f->type = type;
    f->name = moat_xstrdup(name);
    f->help = moat_xstrdup(help ? help : "");
    pthread_mutex_init(&f->lock, NULL);
    if (split_labels(labels, f->labels, &f->nlabels) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "invalid metric labels", "{s:s, s:s}", "name",
                 name, "labels", labels);
        family_free(f);
        f = NULL;
        goto out;
    }
    if (type == MOAT_HISTOGRAM) {
        if (!buckets || nbuckets == 0) {
            buckets = moat_latency_buckets;
            nbuckets = moat_latency_buckets_len;
        }
        f->bounds = moat_xcalloc(nbuckets, sizeof(double));
        memcpy(f->bounds, buckets, nbuckets * sizeof(double));
        f->nbounds = nbuckets;
    }
    m->families[m->nfamilies++] = f;
out:
    pthread_mutex_unlock(&m->lock);
    return f;
}

static struct moat_metric_series *series_new(struct moat_metric_family *f,
                                             const char *const *values)
{
    struct moat_metric_series *s = moat_xcalloc(1, sizeof(*s));
    s->family = f;
    for (size_t i = 0; i < f->nlabels; i++)
        s->values[i] = moat_xstrdup(values && values[i] ? values[i] : "");
    if (f->type == MOAT_HISTOGRAM)
        s->buckets = moat_xcalloc(f->nbounds + 1, sizeof(uint64_t));
    return s;
}

struct moat_metric_series *moat_metric_series(struct moat_metric_family *f,
                                              const char *const *values)
{
    if (!f)
        return NULL;
    struct moat_metric_series *s = NULL;
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->nseries; i++) {
        struct moat_metric_series *c = f->series[i];
        size_t j = 0;
        while (j < f->nlabels &&
               strcmp(c->values[j], values && values[j] ? values[j] : "") == 0)
            j++;
        if (j == f->nlabels) {
            s = c;
            goto out;
        }
    }
    if (f->nseries >= MOAT_METRIC_MAX_SERIES) {
        if (!f->overflow) {
            const char *other[MOAT_METRIC_MAX_LABELS] = {"_other", "_other",
                                                         "_other", "_other"};
            f->overflow = series_new(f, other);
        }
        s = f->overflow;
        goto out;
    }
    if (f->nseries == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->series = moat_xrealloc(f->series, f->cap * sizeof(*f->series));
    }
    s = series_new(f, values);
    f->series[f->nseries++] = s;
out:
    pthread_mutex_unlock(&f->lock);
    return s;
}

struct moat_metric_series *moat_metric_single(struct moat_metric_family *f)
{
    return moat_metric_series(f, NULL);
}

void moat_metric_add(struct moat_metric_series *s, double v)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->family->lock);
    s->value += v;
    pthread_mutex_unlock(&s->family->lock);
}

void moat_metric_set(struct moat_metric_series *s, double v)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->family->lock);
    s->value = v;
    pthread_mutex_unlock(&s->family->lock);
}

void moat_metric_observe(struct moat_metric_series *s, double v)
{
    if (!s || !s->buckets)
        return;
    struct moat_metric_family *f = s->family;
    size_t i = 0;
    while (i < f->nbounds && v > f->bounds[i])
        i++;
    pthread_mutex_lock(&f->lock);
    s->buckets[i]++;
    s->count++;
    s->sum += v;
    pthread_mutex_unlock(&f->lock);
}

double moat_metric_value(struct moat_metric_series *s)
{
    if (!s)
        return 0;
    pthread_mutex_lock(&s->family->lock);
    double v = s->value;
    pthread_mutex_unlock(&s->family->lock);
    return v;
}

void moat_metric_hist(struct moat_metric_series *s, uint64_t *count,
                      double *sum)
{
    *count = 0;
    *sum = 0;
    if (!s)
        return;
    pthread_mutex_lock(&s->family->lock);
    *count = s->count;
    *sum = s->sum;
    pthread_mutex_unlock(&s->family->lock);
}

void moat_metrics_on_collect(struct moat_metrics *m, moat_metrics_collect_fn fn,
                             void *arg)
{
    pthread_mutex_lock(&m->lock);
    if (m->ncollectors < MAX_COLLECTORS) {
        m->collectors[m->ncollectors].fn = fn;
        m->collectors[m->ncollectors].arg = arg;
        m->ncollectors++;
    } else {
        moat_log(MOAT_LOG_ERROR, "too many metric collectors", NULL);
    }
    pthread_mutex_unlock(&m->lock);
}

static void add_escaped(struct moat_buf *out, const char *s, bool label)
{
    for (; *s; s++) {
        if (*s == '\\')
            moat_buf_addstr(out, "\\\\");
        else if (*s == '\n')
            moat_buf_addstr(out, "\\n");
        else if (label && *s == '"')
            moat_buf_addstr(out, "\\\"");
        else
            moat_buf_addch(out, *s);
    }
}

static void add_number(struct moat_buf *out, double v)
{
    if (isnan(v))
        moat_buf_addstr(out, "NaN");
    else if (isinf(v))
        moat_buf_addstr(out, v > 0 ? "+Inf" : "-Inf");
    else if (v == (double)(int64_t)v && fabs(v) < 1e15)
        moat_buf_printf(out, "%lld", (long long)v);
    else
        moat_buf_printf(out, "%.17g", v);
}

/* {a="x",b="y"[,le="0.5"]} or nothing when there are no labels at all. */
static void add_labels(struct moat_buf *out, const struct moat_metric_family *f,
                       const struct moat_metric_series *s, const char *le)
{
    if (f->nlabels == 0 && !le)
        return;
    moat_buf_addch(out, '{');
    for (size_t i = 0; i < f->nlabels; i++) {
        if (i)
            moat_buf_addch(out, ',');
        moat_buf_printf(out, "%s=\"", f->labels[i]);
        add_escaped(out, s->values[i], true);
        moat_buf_addch(out, '"');
    }
    if (le) {
        if (f->nlabels)
            moat_buf_addch(out, ',');
        moat_buf_printf(out, "le=\"%s\"", le);
    }
    moat_buf_addch(out, '}');
}

static void render_series(struct moat_buf *out,
                          const struct moat_metric_family *f,
                          const struct moat_metric_series *s)
{
    if (f->type != MOAT_HISTOGRAM) {
        moat_buf_addstr(out, f->name);
        add_labels(out, f, s, NULL);
        moat_buf_addch(out, ' ');
        add_number(out, s->value);
        moat_buf_addch(out, '\n');
        return;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= f->nbounds; i++) {
        char le[32];
        cumulative += s->buckets[i];
        if (i == f->nbounds)
            snprintf(le, sizeof(le), "+Inf");
        else
            snprintf(le, sizeof(le), "%g", f->bounds[i]);
        moat_buf_printf(out, "%s_bucket", f->name);
        add_labels(out, f, s, le);
        moat_buf_printf(out, " %llu\n", (unsigned long long)cumulative);
    }
    moat_buf_printf(out, "%s_sum", f->name);
    add_labels(out, f, s, NULL);
    moat_buf_addch(out, ' ');
    add_number(out, s->sum);
    moat_buf_printf(out, "\n%s_count", f->name);
    add_labels(out, f, s, NULL);
    moat_buf_printf(out, " %llu\n", (unsigned long long)s->count);
}

static int cmp_family(const void *a, const void *b)
{
    const struct moat_metric_family *fa =
        *(const struct moat_metric_family *const *)a;
    const struct moat_metric_family *fb =
        *(const struct moat_metric_family *const *)b;
    return strcmp(fa->name, fb->name);
}

void moat_metrics_render(struct moat_metrics *m, struct moat_buf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};

    pthread_mutex_lock(&m->lock);
    size_t nc = m->ncollectors;
    moat_metrics_collect_fn fns[MAX_COLLECTORS];
    void *args[MAX_COLLECTORS];
    for (size_t i = 0; i < nc; i++) {
        fns[i] = m->collectors[i].fn;
        args[i] = m->collectors[i].arg;
    }
    pthread_mutex_unlock(&m->lock);
    /* Collectors may create families, so they run without the lock. */
    for (size_t i = 0; i < nc; i++)
        fns[i](m, args[i]);

    pthread_mutex_lock(&m->lock);
    size_t n = m->nfamilies;
    struct moat_metric_family *sorted[MAX_FAMILIES];
    memcpy(sorted, m->families, n * sizeof(sorted[0]));
    pthread_mutex_unlock(&m->lock);
    qsort(sorted, n, sizeof(sorted[0]), cmp_family);

    for (size_t i = 0; i < n; i++) {
        struct moat_metric_family *f = sorted[i];
        moat_buf_printf(out, "# HELP %s ", f->name);
        add_escaped(out, f->help, false);
        moat_buf_printf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
        pthread_mutex_lock(&f->lock);
        for (size_t j = 0; j < f->nseries; j++)
            render_series(out, f, f->series[j]);
        if (f->overflow)
            render_series(out, f, f->overflow);
        pthread_mutex_unlock(&f->lock);
    }
}
