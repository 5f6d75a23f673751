/* socialgraph.c - the synthetic graph of `moat social seed` (see
 * socialgraph.h). */
#include "moat/common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "socialgraph.h"

void social_rng_init(struct social_rng *r, uint64_t seed)
{
    r->s = seed;
}

uint64_t social_rng_next(struct social_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t social_rng_below(struct social_rng *r, uint64_t n)
{
    /* Rejection of the biased top keeps it exactly uniform. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = social_rng_next(r);
    while (x >= limit);
    return x % n;
}

double social_rng_unit(struct social_rng *r)
{
    return (double)(social_rng_next(r) >> 11) * 0x1.0p-53;
}

size_t social_graph_max_edges(uint32_t users)
{
    size_t pairs = (size_t)users * (users - 1) / 2;
    size_t max = pairs / 4;
    return max < SOCIAL_GRAPH_MAX_EDGES ? max : SOCIAL_GRAPH_MAX_EDGES;
}

/* An open-addressing set of edges, key (min << 32 | max) + 1 (0 = free). */
struct edge_set {
    uint64_t *slot;
    size_t mask;
};

static bool edge_set_add(struct edge_set *s, uint32_t a, uint32_t b)
{
    uint64_t key = a < b ? ((uint64_t)a << 32 | b) : ((uint64_t)b << 32 | a);
    key++;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 17) & s->mask;
    while (s->slot[i]) {
        if (s->slot[i] == key)
            return false;
        i = (i + 1) & s->mask;
    }
    s->slot[i] = key;
    return true;
}

/* The user whose cumulative weight interval holds x (cum is increasing,
 * cum[n - 1] the total). */
static uint32_t pick(const double *cum, uint32_t n, double x)
{
    uint32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cum[mid] > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

int social_graph_generate(struct social_graph *g, uint32_t users, size_t edges,
                          uint64_t seed)
{
    memset(g, 0, sizeof(*g));
    if (users < 2 || users > SOCIAL_GRAPH_MAX_USERS ||
        edges > social_graph_max_edges(users))
        return MOAT_EINVAL;
    struct social_rng r;
    social_rng_init(&r, seed);

    /* Log-normal weights (Box-Muller), then their running sums. */
    double *cum = moat_xcalloc(users, sizeof(*cum));
    double total = 0;
    for (uint32_t i = 0; i < users; i++) {
        double u1 = social_rng_unit(&r), u2 = social_rng_unit(&r);
        double z = sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
        total += exp(SOCIAL_GRAPH_SIGMA * z);
        cum[i] = total;
    }

    struct edge_set set = {0};
    size_t cap = 16;
    while (cap < edges * 2 + 16)
        cap *= 2;
    set.slot = moat_xcalloc(cap, sizeof(*set.slot));
    set.mask = cap - 1;
    g->users = users;
    g->edges = moat_xcalloc(edges ? edges : 1, sizeof(*g->edges));
    g->degree = moat_xcalloc(users, sizeof(*g->degree));

    /* Weighted draws until they stall, then uniform ones. */
    uint64_t misses = 0, give_up = 64 + 16 * (uint64_t)edges;
    while (g->nedges < edges) {
        uint32_t a, b;
        if (misses < give_up) {
            a = pick(cum, users, social_rng_unit(&r) * total);
            b = pick(cum, users, social_rng_unit(&r) * total);
        } else {
            a = (uint32_t)social_rng_below(&r, users);
            b = (uint32_t)social_rng_below(&r, users);
        }
        if (a == b || !edge_set_add(&set, a, b)) {
            misses++;
            continue;
        }
        g->edges[g->nedges++] = (struct social_edge){a, b};
        g->degree[a]++;
        g->degree[b]++;
    }
    free(set.slot);
    free(cum);
    return MOAT_OK;
}

void social_graph_free(struct social_graph *g)
{
    free(g->edges);
    free(g->degree);
    memset(g, 0, sizeof(*g));
}

static int u32_cmp(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

uint32_t social_graph_median_degree(const struct social_graph *g)
{
    if (!g->users)
        return 0;
    uint32_t *d = moat_xcalloc(g->users, sizeof(*d));
    memcpy(d, g->degree, g->users * sizeof(*d));
    qsort(d, g->users, sizeof(*d), u32_cmp);
    uint32_t m = d[(g->users - 1) / 2];
    free(d);
    return m;
}
