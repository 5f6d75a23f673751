/*
 * test_connections_graph.c - services/connections/graph.c, the graph store
 * of the connections service, in an LMDB environment in a temporary
 * directory: follows and their pages, the request / accept / remove
 * states, and, on a random graph of 400 users, every user's degree-2
 * pages and every pair's degree checked against a brute-force breadth
 * first search over an adjacency matrix, before and after removing edges.
 * The unit tests link libmoat only, so graph.c is compiled into this test.
 *
 * Run one test alone: tests/unit_test_connections_graph test_follows
 */
#include "moat/common.h"

#include <event2/event.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../services/connections/graph.c"
#include "moat/log.h"

struct fixture {
    char dir[64];
    struct event_base *base;
    struct moat_metrics *metrics;
    struct conn_graph *g;
};

static int setup(void **state)
{
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-graph-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->base = event_base_new();
    f->metrics = moat_metrics_new();
    struct conn_graph_options opts = {.base = f->base, .source = "connections"};
    assert_int_equal(conn_graph_open(&f->g, f->dir, f->metrics, &opts),
                     MOAT_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    conn_graph_close(f->g);
    moat_metrics_free(f->metrics);
    event_base_free(f->base);
    char *cmd = moat_xasprintf("rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(f);
    return 0;
}

/* Read a whole list through pages of limit entries into ids (cap). */
static size_t read_all(struct conn_graph *g, enum conn_list l, bool second,
                       const char *user, size_t limit, char (*ids)[64],
                       size_t cap)
{
    struct conn_entry page[16];
    char after[CONN_USER_MAX + 1] = "";
    size_t total = 0, n;
    bool more = true;
    assert_true(limit <= MOAT_ARRAY_LEN(page));
    while (more) {
        const char *a = after[0] ? after : NULL;
        int rc =
            second ? conn_graph_second_page(g, user, a, limit, page, &n, &more)
                   : conn_graph_page(g, l, user, a, limit, page, &n, &more);
        assert_int_equal(rc, MOAT_OK);
        assert_true(n <= limit);
        assert_true(!more || n == limit);
        for (size_t i = 0; i < n; i++) {
            assert_true(total < cap);
            memcpy(ids[total++], page[i].user_id, 64);
        }
        if (n)
            memcpy(after, page[n - 1].user_id, sizeof(after));
    }
    return total;
}

static void test_follows(void **state)
{
    struct fixture *f = *state;
    enum conn_outcome out;
    char ids[8][64];
    int64_t c[CONN_NLISTS];

    const char *others[] = {"bob", "carol", "al", "b0b"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(others); i++) {
        assert_int_equal(
            conn_graph_follow(f->g, "alice", others[i], 1000 + i, &out),
            MOAT_OK);
        assert_int_equal(out, CONN_DONE);
    }
    assert_int_equal(conn_graph_follow(f->g, "alice", "bob", 5, &out), MOAT_OK);
    assert_int_equal(out, CONN_UNCHANGED);
    assert_int_equal(conn_graph_follow(f->g, "bob", "alice", 7, &out), MOAT_OK);
    assert_int_equal(out, CONN_DONE);

    /* Bytewise order, across pages of 3. */
    assert_int_equal(read_all(f->g, CONN_FOLLOWING, false, "alice", 3, ids, 8),
                     4);
    assert_string_equal(ids[0], "al");
    assert_string_equal(ids[1], "b0b");
    assert_string_equal(ids[2], "bob");
    assert_string_equal(ids[3], "carol");
    /* "al"'s list is not "alice"'s, though one id prefixes the other. */
    assert_int_equal(read_all(f->g, CONN_FOLLOWING, false, "al", 3, ids, 8), 0);
    assert_int_equal(read_all(f->g, CONN_FOLLOWERS, false, "bob", 2, ids, 8),
                     1);
    assert_string_equal(ids[0], "alice");

    struct conn_entry e[2];
    size_t n;
    bool more;
    assert_int_equal(
        conn_graph_page(f->g, CONN_FOLLOWERS, "alice", NULL, 2, e, &n, &more),
        MOAT_OK);
    assert_int_equal(n, 1);
    assert_false(more);
    assert_string_equal(e[0].user_id, "bob");
    assert_int_equal(e[0].since_ms, 7);

    assert_int_equal(conn_graph_counts(f->g, "alice", c), MOAT_OK);
    assert_int_equal(c[CONN_FOLLOWING], 4);
    assert_int_equal(c[CONN_FOLLOWERS], 1);

    assert_int_equal(conn_graph_unfollow(f->g, "alice", "bob", &out), MOAT_OK);
    assert_int_equal(out, CONN_DONE);
    assert_int_equal(conn_graph_unfollow(f->g, "alice", "bob", &out), MOAT_OK);
    assert_int_equal(out, CONN_ABSENT);
    assert_int_equal(read_all(f->g, CONN_FOLLOWERS, false, "bob", 2, ids, 8),
                     0);
    assert_int_equal(conn_graph_counts(f->g, "bob", c), MOAT_OK);
    assert_int_equal(c[CONN_FOLLOWERS], 0);
    assert_int_equal(c[CONN_FOLLOWING], 1);

    /* Oneself and malformed ids are refused. */
    assert_int_equal(conn_graph_follow(f->g, "alice", "alice", 1, &out),
                     MOAT_EINVAL);
    assert_int_equal(conn_graph_follow(f->g, "alice", "a b", 1, &out),
                     MOAT_EINVAL);
    assert_int_equal(conn_graph_follow(f->g, "", "bob", 1, &out), MOAT_EINVAL);
    char longid[CONN_USER_MAX + 2];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    assert_int_equal(conn_graph_follow(f->g, "alice", longid, 1, &out),
                     MOAT_EINVAL);
    longid[CONN_USER_MAX] = '\0';
    assert_int_equal(conn_graph_follow(f->g, "alice", longid, 1, &out),
                     MOAT_OK);
}

static void test_requests(void **state)
{
    struct fixture *f = *state;
    enum conn_outcome out;
    enum conn_state st;
    int d;
    int64_t c[CONN_NLISTS];

    assert_int_equal(conn_graph_request(f->g, "a", "b", 1, &out, &st), MOAT_OK);
    assert_int_equal(out, CONN_DONE);
    assert_int_equal(st, CONN_PENDING_OUT);
    assert_int_equal(conn_graph_request(f->g, "a", "b", 2, &out, &st), MOAT_OK);
    assert_int_equal(out, CONN_UNCHANGED);
    assert_int_equal(st, CONN_PENDING_OUT);
    assert_int_equal(conn_graph_state(f->g, "b", "a", &st), MOAT_OK);
    assert_int_equal(st, CONN_PENDING_IN);
    /* The requester cannot accept its own request. */
    assert_int_equal(conn_graph_accept(f->g, "a", "b", 3, &out), MOAT_OK);
    assert_int_equal(out, CONN_ABSENT);
    assert_int_equal(conn_graph_degree(f->g, "a", "b", &d), MOAT_OK);
    assert_int_equal(d, -1);
    assert_int_equal(conn_graph_counts(f->g, "b", c), MOAT_OK);
    assert_int_equal(c[CONN_REQUESTS_IN], 1);

    assert_int_equal(conn_graph_accept(f->g, "b", "a", 4, &out), MOAT_OK);
    assert_int_equal(out, CONN_DONE);
    assert_int_equal(conn_graph_accept(f->g, "b", "a", 5, &out), MOAT_OK);
    assert_int_equal(out, CONN_UNCHANGED);
    assert_int_equal(conn_graph_state(f->g, "a", "b", &st), MOAT_OK);
    assert_int_equal(st, CONN_CONNECTED);
    assert_int_equal(conn_graph_degree(f->g, "a", "b", &d), MOAT_OK);
    assert_int_equal(d, 1);
    assert_int_equal(conn_graph_degree(f->g, "a", "a", &d), MOAT_OK);
    assert_int_equal(d, 0);
    assert_int_equal(conn_graph_counts(f->g, "b", c), MOAT_OK);
    assert_int_equal(c[CONN_REQUESTS_IN], 0);
    assert_int_equal(c[CONN_CONNECTIONS], 1);
    assert_int_equal(conn_graph_request(f->g, "b", "a", 6, &out, &st), MOAT_OK);
    assert_int_equal(out, CONN_UNCHANGED);
    assert_int_equal(st, CONN_CONNECTED);

    /* A request crossing one in the other direction accepts it. */
    assert_int_equal(conn_graph_request(f->g, "c", "b", 7, &out, &st), MOAT_OK);
    assert_int_equal(conn_graph_request(f->g, "b", "c", 8, &out, &st), MOAT_OK);
    assert_int_equal(out, CONN_DONE);
    assert_int_equal(st, CONN_CONNECTED);
    assert_int_equal(conn_graph_degree(f->g, "a", "c", &d), MOAT_OK);
    assert_int_equal(d, 2);

    /* Remove: a connection, a withdrawn and a declined request. */
    assert_int_equal(conn_graph_remove(f->g, "c", "b", &out, &st), MOAT_OK);
    assert_int_equal(out, CONN_DONE);
    assert_int_equal(st, CONN_CONNECTED);
    assert_int_equal(conn_graph_remove(f->g, "c", "b", &out, &st), MOAT_OK);
    assert_int_equal(out, CONN_ABSENT);
    assert_int_equal(st, CONN_NONE);
    assert_int_equal(conn_graph_request(f->g, "c", "d", 9, &out, &st), MOAT_OK);
    assert_int_equal(conn_graph_remove(f->g, "c", "d", &out, &st), MOAT_OK);
    assert_int_equal(st, CONN_PENDING_OUT);
    assert_int_equal(conn_graph_request(f->g, "c", "d", 9, &out, &st), MOAT_OK);
    assert_int_equal(conn_graph_remove(f->g, "d", "c", &out, &st), MOAT_OK);
    assert_int_equal(st, CONN_PENDING_IN);
    assert_int_equal(conn_graph_state(f->g, "c", "d", &st), MOAT_OK);
    assert_int_equal(st, CONN_NONE);
    /* Every count back to zero removes the user's record. */
    assert_int_equal(conn_graph_counts(f->g, "d", c), MOAT_OK);
    for (size_t i = 0; i < CONN_NLISTS; i++)
        assert_int_equal(c[i], 0);
}

/* ---- the random graph against brute force ---- */

#define N_USERS  400
#define N_RANDOM 340 /* users 0..339 get random edges */
#define N_EDGES  650
#define N_CHAIN  12 /* users 340..351: a path, far from everyone */

static bool adj[N_USERS][N_USERS];
static char names[N_USERS][16];
/* dist[i][j]: hops, or -1 beyond 3 / unreachable. */
static int dist[N_USERS][N_USERS];

static unsigned rnd(void)
{
    static uint64_t s = 0x2545F4914F6CDD1Dull;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return (unsigned)((s * 0x2545F4914F6CDD1Dull) >> 33);
}

static void brute_distances(void)
{
    for (int src = 0; src < N_USERS; src++) {
        int queue[N_USERS], head = 0, tail = 0;
        for (int j = 0; j < N_USERS; j++)
            dist[src][j] = -1;
        dist[src][src] = 0;
        queue[tail++] = src;
        while (head < tail) {
            int u = queue[head++];
            if (dist[src][u] == 3)
                continue;
            for (int v = 0; v < N_USERS; v++)
                if (adj[u][v] && dist[src][v] < 0) {
                    dist[src][v] = dist[src][u] + 1;
                    queue[tail++] = v;
                }
        }
    }
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void check_against_brute_force(struct conn_graph *g, size_t limit)
{
    static char got[N_USERS][64], want[N_USERS][64];
    int seen[5] = {0}; /* degrees 0..3, and -1 at [4] */
    brute_distances();
    for (int u = 0; u < N_USERS; u++) {
        size_t nwant = 0, nfirst = 0;
        for (int v = 0; v < N_USERS; v++) {
            if (dist[u][v] == 2)
                memcpy(want[nwant++], names[v], sizeof(names[v]));
            nfirst += adj[u][v];
        }
        qsort(want, nwant, sizeof(want[0]), cmp_name);
        size_t ngot =
            read_all(g, CONN_CONNECTIONS, true, names[u], limit, got, N_USERS);
        if (ngot != nwant)
            fail_msg("user %s: %zu degree-2 users, brute force says %zu",
                     names[u], ngot, nwant);
        for (size_t i = 0; i < ngot; i++)
            assert_string_equal(got[i], want[i]);
        int64_t c[CONN_NLISTS];
        assert_int_equal(conn_graph_counts(g, names[u], c), MOAT_OK);
        assert_int_equal(c[CONN_CONNECTIONS], nfirst);

        for (int v = 0; v < N_USERS; v++) {
            int d;
            assert_int_equal(conn_graph_degree(g, names[u], names[v], &d),
                             MOAT_OK);
            if (d != dist[u][v])
                fail_msg("degree(%s, %s) = %d, brute force says %d", names[u],
                         names[v], d, dist[u][v]);
            seen[d < 0 ? 4 : d]++;
        }
    }
    /* The graph exercises every answer. */
    for (size_t i = 0; i < MOAT_ARRAY_LEN(seen); i++)
        assert_true(seen[i] > 0);
}

static void connect_pair(struct conn_graph *g, int a, int b)
{
    enum conn_outcome out;
    enum conn_state st;
    assert_int_equal(conn_graph_request(g, names[a], names[b], 1, &out, &st),
                     MOAT_OK);
    assert_int_equal(conn_graph_accept(g, names[b], names[a], 2, &out),
                     MOAT_OK);
    assert_int_equal(out, CONN_DONE);
    adj[a][b] = adj[b][a] = true;
}

static void test_random_graph_against_brute_force(void **state)
{
    struct fixture *f = *state;
    /* Ids of different lengths, so bytewise order is not numeric order. */
    for (int i = 0; i < N_USERS; i++)
        snprintf(names[i], sizeof(names[i]), "u%d", i * 7);
    for (int e = 0; e < N_EDGES;) {
        int a = (int)(rnd() % N_RANDOM), b = (int)(rnd() % N_RANDOM);
        if (a == b || adj[a][b])
            continue;
        connect_pair(f->g, a, b);
        e++;
    }
    for (int i = N_RANDOM; i + 1 < N_RANDOM + N_CHAIN; i++)
        connect_pair(f->g, i, i + 1);
    /* Pending requests and follows are not connections. */
    enum conn_outcome out;
    enum conn_state st;
    assert_int_equal(
        conn_graph_request(f->g, names[N_RANDOM], names[0], 3, &out, &st),
        MOAT_OK);
    assert_int_equal(
        conn_graph_follow(f->g, names[N_RANDOM], names[1], 3, &out), MOAT_OK);

    check_against_brute_force(f->g, 3);
    check_against_brute_force(f->g, 16);

    /* Remove a tenth of the random edges (each from a random side). */
    int removed = 0;
    while (removed < N_EDGES / 10) {
        int a = (int)(rnd() % N_RANDOM), b = (int)(rnd() % N_RANDOM);
        if (!adj[a][b])
            continue;
        assert_int_equal(conn_graph_remove(f->g, names[a], names[b], &out, &st),
                         MOAT_OK);
        assert_int_equal(out, CONN_DONE);
        adj[a][b] = adj[b][a] = false;
        removed++;
    }
    check_against_brute_force(f->g, 5);
}

int main(int argc, char **argv)
{
    /* One test alone: pass its name (a glob). */
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    moat_log_init("test", MOAT_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_follows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_graph_against_brute_force,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
