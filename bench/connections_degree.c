/*
 * connections_degree.c - how long the connections service's degree-2
 * query takes on a synthetic graph the size of socfb-Reed98 (962 users,
 * 18,812 mutual edges), for a user of median degree
 * (docs/connections.md reports the numbers).
 *
 *   build/bin/bench-connections-degree [DIR [SEED]]
 *
 * DIR (default: a new directory under $TMPDIR or /tmp, removed after)
 * holds the LMDB environment; loading syncs each of the ~37,600 commits,
 * so put DIR on tmpfs (/dev/shm) to load quickly. The queries only read.
 *
 * The graph is a Chung-Lu random graph: each user gets a log-normal
 * weight and edges join users with probability proportional to the
 * product of their weights, which gives the skewed degrees of a real
 * social graph (median below mean, a few hubs) rather than G(n, m)'s
 * narrow ones. Each edge is loaded through the store's own API (a
 * request, then its acceptance), as the service would write it.
 */
#include "moat/common.h"

#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "moat/id.h"

#define USERS       962
#define EDGES       18812
#define PAGE_LIMIT  100
#define REPEATS     300
#define USER_ID_LEN (4 + MOAT_ID_CHARS)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void)
{
    /* xorshift64*: reproducible for a given seed. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static double rng_unit(void)
{
    return (double)(rng_next() >> 11) / (double)(1ull << 53);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

/* Index of the user that cumulative weight r falls in. */
static int pick(const double *cum, double r)
{
    int lo = 0, hi = USERS - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (cum[mid] < r)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void check(int rc, const char *what)
{
    if (rc != MOAT_OK) {
        fprintf(stderr, "%s: %s\n", what, moat_strerror(rc));
        exit(1);
    }
}

/* Time f(g, user) REPEATS times; prints the median and the 99th
 * percentile in microseconds. */
typedef size_t (*query_fn)(struct conn_graph *g, const char *a, const char *b);

static void timed(const char *label, query_fn f, struct conn_graph *g,
                  const char *a, const char *b)
{
    uint64_t ns[REPEATS];
    size_t result = 0;
    for (int i = 0; i < REPEATS; i++) {
        uint64_t t0 = moat_mono_ns();
        result = f(g, a, b);
        ns[i] = moat_mono_ns() - t0;
    }
    qsort(ns, REPEATS, sizeof(ns[0]), cmp_u64);
    printf("%-44s %8.1f us median, %8.1f us p99  (result %zu)\n", label,
           (double)ns[REPEATS / 2] / 1e3, (double)ns[REPEATS * 99 / 100] / 1e3,
           result);
}

/* Every degree-2 connection of a, page by page; returns how many. */
static size_t second_all(struct conn_graph *g, const char *a, const char *b)
{
    MOAT_UNUSED(b);
    struct conn_entry page[PAGE_LIMIT];
    char after[CONN_USER_MAX + 1] = "";
    size_t total = 0, n;
    bool more = true;
    while (more) {
        check(conn_graph_second_page(g, a, after[0] ? after : NULL, PAGE_LIMIT,
                                     page, &n, &more),
              "second page");
        total += n;
        if (n)
            memcpy(after, page[n - 1].user_id, sizeof(after));
    }
    return total;
}

static size_t second_first_page(struct conn_graph *g, const char *a,
                                const char *b)
{
    MOAT_UNUSED(b);
    struct conn_entry page[20];
    size_t n;
    bool more;
    check(conn_graph_second_page(g, a, NULL, 20, page, &n, &more),
          "second page");
    return n;
}

static size_t first_all(struct conn_graph *g, const char *a, const char *b)
{
    MOAT_UNUSED(b);
    struct conn_entry page[PAGE_LIMIT];
    size_t n;
    bool more;
    check(conn_graph_page(g, CONN_CONNECTIONS, a, NULL, PAGE_LIMIT, page, &n,
                          &more),
          "page");
    return n;
}

static size_t degree(struct conn_graph *g, const char *a, const char *b)
{
    int d;
    check(conn_graph_degree(g, a, b, &d), "degree");
    return (size_t)(d < 0 ? 99 : d);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : NULL;
    if (argc > 2)
        rng_state ^= strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ull;
    char *tmp = NULL;
    if (!dir) {
        const char *base = getenv("TMPDIR");
        tmp = moat_xasprintf("%s/moat-bench-conn-XXXXXX",
                             base && *base ? base : "/tmp");
        if (!mkdtemp(tmp)) {
            perror("mkdtemp");
            return 1;
        }
        dir = tmp;
    }

    static char ids[USERS][USER_ID_LEN + 1];
    static double weight[USERS], cum[USERS];
    static bool adj[USERS][USERS];
    int deg[USERS] = {0};
    for (int i = 0; i < USERS; i++) {
        moat_id_new("usr_", ids[i], sizeof(ids[i]));
        /* Log-normal weight (Box-Muller), sigma 0.8. */
        double u1 = rng_unit() + 1e-12, u2 = rng_unit();
        weight[i] = exp(0.8 * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
        cum[i] = weight[i] + (i ? cum[i - 1] : 0);
    }

    struct event_base *base = event_base_new();
    struct moat_metrics *m = moat_metrics_new();
    struct conn_graph *g = NULL;
    struct conn_graph_options opts = {.base = base, .source = "connections"};
    check(conn_graph_open(&g, dir, m, &opts), "open");

    uint64_t t0 = moat_mono_ns();
    for (int e = 0; e < EDGES;) {
        int a = pick(cum, rng_unit() * cum[USERS - 1]);
        int b = pick(cum, rng_unit() * cum[USERS - 1]);
        if (a == b || adj[a][b])
            continue;
        enum conn_outcome out;
        enum conn_state st;
        check(conn_graph_request(g, ids[a], ids[b], moat_wall_ms(), &out, &st),
              "request");
        check(conn_graph_accept(g, ids[b], ids[a], moat_wall_ms(), &out),
              "accept");
        if (out != CONN_DONE) {
            fprintf(stderr, "accept: outcome %d (a cap?)\n", (int)out);
            return 1;
        }
        adj[a][b] = adj[b][a] = true;
        deg[a]++;
        deg[b]++;
        e++;
    }
    double load_s = (double)(moat_mono_ns() - t0) / 1e9;

    int sorted[USERS];
    memcpy(sorted, deg, sizeof(sorted));
    qsort(sorted, USERS, sizeof(sorted[0]), cmp_int);
    int median = sorted[USERS / 2];
    int who = 0;
    for (int i = 0; i < USERS; i++)
        if (deg[i] == median) {
            who = i;
            break;
        }
    /* Work of its degree-2 query: the entries of its neighbours' lists. */
    long work = 0;
    for (int j = 0; j < USERS; j++)
        if (adj[who][j])
            work += deg[j];
    /* A pair at distance 3 or more for the degree query, if any. */
    int far = -1;
    for (int j = 0; j < USERS && far < 0; j++) {
        if (j == who || adj[who][j])
            continue;
        bool common = false;
        for (int k = 0; k < USERS && !common; k++)
            common = adj[who][k] && adj[k][j];
        if (!common && deg[j] > 0)
            far = j;
    }

    printf("graph: %d users, %d mutual edges, degree min %d / median %d / "
           "mean %.1f / max %d; loaded in %.1f s (%d commits)\n",
           USERS, EDGES, sorted[0], median, 2.0 * EDGES / USERS,
           sorted[USERS - 1], load_s, 2 * EDGES);
    printf("user %s: degree %d, neighbours' lists hold %ld entries\n", ids[who],
           median, work);
    timed("degree 1, one page (limit 100)", first_all, g, ids[who], NULL);
    timed("degree 2, first page (limit 20)", second_first_page, g, ids[who],
          NULL);
    timed("degree 2, every page (limit 100)", second_all, g, ids[who], NULL);
    if (far >= 0)
        timed("degree(median user, a user 3+ away)", degree, g, ids[who],
              ids[far]);

    conn_graph_close(g);
    moat_metrics_free(m);
    event_base_free(base);
    if (tmp) {
        /* The environment's two files, its directory, then ours. */
        static const char *const parts[] = {"/connections.lmdb/data.mdb",
                                            "/connections.lmdb/lock.mdb",
                                            "/connections.lmdb", ""};
        for (size_t i = 0; i < MOAT_ARRAY_LEN(parts); i++) {
            char *p = moat_xasprintf("%s%s", tmp, parts[i]);
            if (remove(p) != 0)
                perror(p);
            free(p);
        }
        free(tmp);
    }
    return 0;
}
