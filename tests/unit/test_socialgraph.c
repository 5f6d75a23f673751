/* Unit tests for the synthetic social graph of `moat social seed`
 * (cli/socialgraph.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "moat/common.h"

#include "socialgraph.h"

static int edge_cmp(const void *x, const void *y)
{
    const struct social_edge *a = x, *b = y;
    uint32_t a0 = a->a < a->b ? a->a : a->b, a1 = a->a ^ a->b ^ a0;
    uint32_t b0 = b->a < b->b ? b->a : b->b, b1 = b->a ^ b->b ^ b0;
    if (a0 != b0)
        return a0 < b0 ? -1 : 1;
    return a1 < b1 ? -1 : a1 > b1;
}

/* Exact count, no self-loop, no edge twice in either direction, degrees
 * that add up. */
static void check_simple(const struct social_graph *g, uint32_t users,
                         size_t edges)
{
    assert_int_equal(g->users, users);
    assert_int_equal(g->nedges, edges);
    struct social_edge *e = calloc(edges + 1, sizeof(*e));
    assert_non_null(e);
    memcpy(e, g->edges, edges * sizeof(*e));
    qsort(e, edges, sizeof(*e), edge_cmp);
    uint64_t *deg = calloc(users, sizeof(*deg));
    assert_non_null(deg);
    for (size_t i = 0; i < edges; i++) {
        assert_true(e[i].a < users && e[i].b < users);
        assert_int_not_equal(e[i].a, e[i].b);
        if (i)
            assert_int_not_equal(edge_cmp(&e[i - 1], &e[i]), 0);
        deg[e[i].a]++;
        deg[e[i].b]++;
    }
    for (uint32_t u = 0; u < users; u++)
        assert_int_equal(deg[u], g->degree[u]);
    free(deg);
    free(e);
}

static void test_reed98_size(void **state)
{
    (void)state;
    struct social_graph g;
    assert_int_equal(social_graph_generate(&g, 962, 18812, 1), MOAT_OK);
    check_simple(&g, 962, 18812);
    /* Skewed like a social graph: the mean is Reed98's 39.1, the median
     * below it, the best connected users several times the mean, and
     * almost everyone has someone. */
    uint32_t max = 0, isolated = 0;
    for (uint32_t u = 0; u < g.users; u++) {
        if (g.degree[u] > max)
            max = g.degree[u];
        isolated += g.degree[u] == 0;
    }
    double mean = 2.0 * 18812 / 962;
    uint32_t median = social_graph_median_degree(&g);
    assert_true(median < mean);
    assert_true(median > mean / 3);
    assert_true(max > 3 * mean);
    assert_true(max < 962 / 2);
    assert_true(isolated < 962 / 50);
    social_graph_free(&g);
}

static void test_deterministic(void **state)
{
    (void)state;
    struct social_graph a, b, c;
    assert_int_equal(social_graph_generate(&a, 300, 2000, 42), MOAT_OK);
    assert_int_equal(social_graph_generate(&b, 300, 2000, 42), MOAT_OK);
    assert_int_equal(social_graph_generate(&c, 300, 2000, 43), MOAT_OK);
    assert_memory_equal(a.edges, b.edges, 2000 * sizeof(*a.edges));
    assert_true(memcmp(a.edges, c.edges, 2000 * sizeof(*a.edges)) != 0);
    social_graph_free(&a);
    social_graph_free(&b);
    social_graph_free(&c);
}

/* The integration test's size, and the densest graph allowed (where the
 * weighted draws stall and uniform ones finish the job). */
static void test_small_and_dense(void **state)
{
    (void)state;
    struct social_graph g;
    assert_int_equal(social_graph_generate(&g, 40, 120, 7), MOAT_OK);
    check_simple(&g, 40, 120);
    social_graph_free(&g);
    size_t max = social_graph_max_edges(40);
    assert_int_equal(max, 40 * 39 / 2 / 4);
    assert_int_equal(social_graph_generate(&g, 40, max, 7), MOAT_OK);
    check_simple(&g, 40, max);
    social_graph_free(&g);
    assert_int_equal(social_graph_generate(&g, 2, 0, 7), MOAT_OK);
    check_simple(&g, 2, 0);
    social_graph_free(&g);
}

static void test_out_of_range(void **state)
{
    (void)state;
    struct social_graph g;
    assert_int_equal(social_graph_generate(&g, 1, 0, 1), MOAT_EINVAL);
    assert_null(g.edges);
    assert_int_equal(social_graph_generate(&g, 40, 196, 1), MOAT_EINVAL);
    assert_int_equal(
        social_graph_generate(&g, SOCIAL_GRAPH_MAX_USERS + 1, 10, 1),
        MOAT_EINVAL);
}

static void test_rng(void **state)
{
    (void)state;
    struct social_rng r;
    social_rng_init(&r, 9);
    unsigned seen[7] = {0};
    for (int i = 0; i < 7000; i++) {
        uint64_t x = social_rng_below(&r, 7);
        assert_true(x < 7);
        seen[x]++;
        double u = social_rng_unit(&r);
        assert_true(u >= 0 && u < 1);
    }
    for (int i = 0; i < 7; i++)
        assert_true(seen[i] > 800 && seen[i] < 1200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reed98_size),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_small_and_dense),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_rng),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
