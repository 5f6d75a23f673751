/*
 * cli/socialgraph.h - the synthetic social graph of `moat social seed`: a
 * deterministic undirected graph with an exact number of edges, no
 * self-loops and no duplicate edges, and the skewed degrees of a real
 * social network.
 *
 * The model is Chung-Lu: every user gets a weight drawn from a log-normal
 * distribution (sigma SOCIAL_GRAPH_SIGMA), and each edge joins two users
 * drawn with probability proportional to their weights; a draw that would
 * make a self-loop or repeat an edge is drawn again. Expected degrees are
 * proportional to the weights, so a few users have many connections and
 * most have a few, as in Facebook's socfb-Reed98 (962 users, 18,812
 * edges, the defaults). When the graph is too dense for the weighted draws
 * to find free pairs quickly, the rest of the edges are drawn uniformly.
 *
 * Everything derives from the seed: the same (users, edges, seed) gives the
 * same edges in the same order on every run (the weights use libm's log,
 * cos and exp, so another C library might round one differently).
 *
 * Ownership: social_graph_generate() fills a struct the caller releases
 * with social_graph_free().
 */
#ifndef MOAT_CLI_SOCIALGRAPH_H
#define MOAT_CLI_SOCIALGRAPH_H

#include <stddef.h>
#include <stdint.h>

#define SOCIAL_GRAPH_SIGMA     0.8
#define SOCIAL_GRAPH_MAX_USERS 100000
#define SOCIAL_GRAPH_MAX_EDGES 5000000

/* A small seeded PRNG (splitmix64), shared by the seed and the bench. */
struct social_rng {
    uint64_t s;
};
void social_rng_init(struct social_rng *r, uint64_t seed);
uint64_t social_rng_next(struct social_rng *r);
/* Uniform in [0, n); n > 0. */
uint64_t social_rng_below(struct social_rng *r, uint64_t n);
/* Uniform in [0, 1). */
double social_rng_unit(struct social_rng *r);

struct social_edge {
    uint32_t a, b; /* user indexes, a != b; a asked b to connect */
};

struct social_graph {
    uint32_t users;
    size_t nedges;
    struct social_edge *edges; /* nedges, in generation order */
    uint32_t *degree;          /* users entries */
};

/*
 * The largest number of edges generate accepts for n users: a quarter of
 * all pairs, so that drawing free pairs always ends quickly.
 */
size_t social_graph_max_edges(uint32_t users);

/*
 * Generate a graph of users (2..SOCIAL_GRAPH_MAX_USERS) and edges
 * (0..social_graph_max_edges(users)). MOAT_OK, or MOAT_EINVAL for sizes
 * out of range (g is then empty).
 */
int social_graph_generate(struct social_graph *g, uint32_t users, size_t edges,
                          uint64_t seed);
void social_graph_free(struct social_graph *g);

/* The median degree of g (lower median). */
uint32_t social_graph_median_degree(const struct social_graph *g);

#endif /* MOAT_CLI_SOCIALGRAPH_H */
