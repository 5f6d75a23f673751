/*
 * graph.h - the connections service's graph store: adjacency lists in the
 * service's own LMDB environment, and the only code that knows its layout
 * (docs/connections.md).
 *
 * The environment is the directory $MOAT_DATA_DIR/connections.lmdb
 * (moat/kv.h). Two kinds of edge: a follow (directed: A follows B) and a
 * connection (mutual: A requests, B accepts). Every adjacency list is a
 * sub-database of its own, keyed "owner NUL other" with an 8-byte
 * big-endian value, the edge's creation time in ms since the epoch:
 *
 *   following     A NUL B   A follows B
 *   followers     B NUL A   the same edge seen from B
 *   connections   A NUL B and B NUL A   A and B are connected (both ways)
 *   requests_out  A NUL B   A asked B to connect, B has not answered
 *   requests_in   B NUL A   the same request seen from B
 *   counts        A -> 5 x 8 bytes big-endian: following, followers,
 *                 connections, requests_out, requests_in of A (the caps
 *                 below are checked without scanning a list)
 *   outbox, outbox_meta   the transactional outbox (moat_outbox_new_kv)
 *
 * A NUL never occurs in a user id, so "A NUL" is a prefix of exactly A's
 * list, and a list is one B-tree seek followed by a contiguous scan in
 * the other user's id order (bytewise, which is strcmp's order). Every
 * write is one LMDB write transaction holding both directions of the
 * edge, the counts and the event (Followed, Unfollowed,
 * ConnectionRequested, ConnectionAccepted, ConnectionRemoved), so they
 * commit or vanish together.
 *
 * Ownership: the store owns the environment and the outbox; strings passed
 * in are borrowed; struct conn_entry is plain data.
 *
 * Threads: one writer, the loop thread (moat/kv.h); reads use read
 * snapshots of their own.
 */
#ifndef CONN_GRAPH_H
#define CONN_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/events.h"
#include "moat/metrics.h"

struct event_base;
struct conn_graph;

/* A user id, in bytes: what struct moat_principal's user_id holds. */
#define CONN_USER_MAX 63
/* Caps per user (a cap reached is CONN_CAP). They also bound the work of
 * a degree-2 page and a degree query (docs/connections.md). Followers
 * are not capped: a follow is the follower's choice. */
#define CONN_FOLLOWING_MAX    5000
#define CONN_CONNECTIONS_MAX  5000
#define CONN_REQUESTS_OUT_MAX 1000
/* Data schema version of every event of this service. */

struct conn_graph_options {
    struct event_base *base; /* the service loop (outbox timers) */
    const char *source;      /* service name, the events' source */
    size_t mapsize;          /* LMDB map size; 0 = default */
    struct moat_outbox_options outbox;
};

/*
 * Open (creating if needed) data_dir/connections.lmdb, apply the
 * migrations and create the outbox. opts->base and metrics (borrowed)
 * are required, as moat_outbox_new_kv needs them. Close with
 * conn_graph_close.
 */
int conn_graph_open(struct conn_graph **out, const char *data_dir,
                    struct moat_metrics *metrics,
                    const struct conn_graph_options *opts);
/* The store's database (borrowed), for the skeleton's backups. */
struct moat_kv *conn_graph_kv(struct conn_graph *s);
void conn_graph_close(struct conn_graph *g); /* NULL is fine */
/* The store's outbox (owned by the store), to serve the feed. */
struct moat_outbox *conn_graph_outbox(struct conn_graph *g);
/* True when the environment answers and every migration is applied. */
bool conn_graph_ready(struct conn_graph *g, const char **why);

/* True for 1..CONN_USER_MAX of A-Z a-z 0-9 . _ - (the users service's
 * "usr_" + 26 base32 characters fits; so does any test id). */
bool conn_user_valid(const char *id);

/* ---- writes ----
 *
 * a is the acting user, b the other one; both valid and different
 * (MOAT_EINVAL otherwise). now_ms stamps a new edge. Each returns MOAT_OK
 * with *outcome saying what happened, or a store fault (nothing written):
 * MOAT_ETOOBIG (map full), MOAT_EDB, MOAT_EIO.
 */
enum conn_outcome {
    CONN_DONE,      /* changed; the event is in the outbox */
    CONN_UNCHANGED, /* already so: nothing written */
    CONN_ABSENT,    /* nothing to undo or to accept: nothing written */
    CONN_CAP,       /* a per-user cap is reached: nothing written */
};

/* Where a pair of users stands as seen from the acting user. */
enum conn_state {
    CONN_NONE,
    CONN_PENDING_OUT, /* the actor asked the other */
    CONN_PENDING_IN,  /* the other asked the actor */
    CONN_CONNECTED,
};
/* "none", "pending_outgoing", "pending_incoming", "connected". */
const char *conn_state_name(enum conn_state st);

/* a follows b. CONN_UNCHANGED when it does already. */
int conn_graph_follow(struct conn_graph *g, const char *a, const char *b,
                      int64_t now_ms, enum conn_outcome *outcome);
/* a stops following b. CONN_ABSENT when it did not. */
int conn_graph_unfollow(struct conn_graph *g, const char *a, const char *b,
                        enum conn_outcome *outcome);
/*
 * a asks b to connect. When b had asked a already, this accepts it
 * instead (both want it). *state gets the state afterwards: PENDING_OUT
 * (CONN_DONE: requested, or CONN_UNCHANGED: was already) or CONNECTED
 * (CONN_DONE: accepted b's request; CONN_UNCHANGED: were connected).
 * CONN_CAP: a's outgoing requests, or either's connections, are full.
 */
int conn_graph_request(struct conn_graph *g, const char *a, const char *b,
                       int64_t now_ms, enum conn_outcome *outcome,
                       enum conn_state *state);
/* a accepts b's request: CONN_DONE, CONN_UNCHANGED (connected already),
 * CONN_ABSENT (no request from b: a request a made cannot be accepted by
 * a), CONN_CAP (either's connections are full). */
int conn_graph_accept(struct conn_graph *g, const char *a, const char *b,
                      int64_t now_ms, enum conn_outcome *outcome);
/*
 * a removes whatever links a and b as connections: the connection, a's
 * request to b (withdrawn) or b's request to a (declined). *was gets the
 * state before (CONN_NONE with CONN_ABSENT).
 */
int conn_graph_remove(struct conn_graph *g, const char *a, const char *b,
                      enum conn_outcome *outcome, enum conn_state *was);

/* ---- reads ---- */

enum conn_list {
    CONN_FOLLOWING,
    CONN_FOLLOWERS,
    CONN_CONNECTIONS,
    CONN_REQUESTS_OUT,
    CONN_REQUESTS_IN,
};
#define CONN_NLISTS 5

struct conn_entry {
    char user_id[CONN_USER_MAX + 1];
    int64_t since_ms; /* the edge's creation; 0 for a degree-2 entry */
};

/*
 * Up to limit entries of user's list, in user id order strictly after
 * after (NULL: from the first), into out (limit entries). *more says
 * whether another entry follows. A user without entries has an empty list.
 */
int conn_graph_page(struct conn_graph *g, enum conn_list list, const char *user,
                    const char *after, size_t limit, struct conn_entry *out,
                    size_t *n, bool *more);
/*
 * The same for user's second-degree connections: the connections of
 * user's connections, less user and user's own connections, each once.
 * Cost: one seek per connection of user, and at most limit + 1 + deg(user)
 * entries scanned after each (docs/connections.md).
 */
int conn_graph_second_page(struct conn_graph *g, const char *user,
                           const char *after, size_t limit,
                           struct conn_entry *out, size_t *n, bool *more);
/*
 * The degree of separation between a and b over connections: 0 (a == b),
 * 1, 2, 3, or -1 when it is more than 3 or they are not linked at all.
 * A bidirectional search: both sides' neighbours, then the smaller
 * side's neighbours' neighbours against the other side's.
 */
int conn_graph_degree(struct conn_graph *g, const char *a, const char *b,
                      int *degree);
/* user's counts, in enum conn_list order (zeros for an unknown user). */
int conn_graph_counts(struct conn_graph *g, const char *user,
                      int64_t counts[CONN_NLISTS]);
/* The state between a and b as a sees it. */
int conn_graph_state(struct conn_graph *g, const char *a, const char *b,
                     enum conn_state *state);

#endif /* CONN_GRAPH_H */
