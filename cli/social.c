/*
 * social.c - `moat social seed` and `moat social bench`: load a social
 * network deployment with a synthetic population, then measure it with
 * DeathStarBench's mixed workload. Everything goes through the gateway's
 * public API, as the network's clients would.
 *
 * seed  builds the graph of socialgraph.h (by default the size of
 *       socfb-Reed98: 962 users, 18,812 mutual edges) and, through the
 *       gateway: registers each user (POST /api/v1/users; 409, already
 *       registered, is fine; a 409 answering the retry of an attempt
 *       that got no definite answer is resolved by the account's
 *       created_at, so a registration users carried out after the
 *       gateway gave up still counts as registered), logs each in, sets
 *       their profile (PUT
 *       /api/v1/profiles/me with a unique handle), makes each edge a
 *       connection (a asks, b accepts) and a follow in both directions, as
 *       DeathStarBench's social graph does, then writes posts. Every step
 *       is idempotent (posts carry an Idempotency-Key derived from the
 *       seed), so a second run with the same seed adds nothing and an
 *       interrupted one can be run again. The accounts (ids, emails,
 *       handles, and the password they share, derived from the operator
 *       key as the drill customers') are saved to
 *       <var_dir>/social-seed.json (mode 0600) for bench.
 *
 * bench logs in a sample of the seeded users, then runs 60 % home
 *       timeline reads (GET /api/v1/timeline/home?limit=10 as a random
 *       user), 30 % user timeline reads (GET /api/v1/users/{id}/posts
 *       ?limit=10 of a random user) and 10 % posts (POST /api/v1/posts with
 *       mentions and URLs), in a closed or open loop like `moat bench`
 *       (open: latency from the intended send time). Then a short serial
 *       phase times the graph queries for users of median degree: the
 *       degree of separation and the second-degree connections.
 *
 * Calls run at most --parallel at once on one thread (fetch.h). During
 * seed, answers 429 (the gateway's per-client rate, users' login limits),
 * 502, 503 and transport errors are retried after a pause (doubling up to
 * 4.8 s after 502, 503 and no answer); bench counts
 * them as errors instead.
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moat/buf.h"

#include "benchstat.h"
#include "cli.h"
#include "drill.h"
#include "fetch.h"
#include "shop.h"
#include "social.h"
#include "socialgraph.h"

#define SEED_FILE            "social-seed.json"
#define SEED_VERSION         1
#define CALL_TIMEOUT_MS      15000
#define CALL_MAX_ATTEMPTS    60
#define RETRY_LIMITED_MS     1000
#define RETRY_BUSY_MS        300
#define RETRY_BUSY_DOUBLINGS 4 /* at most 4.8 s between attempts */
#define PROGRESS_MS          5000
#define MAX_POSTS_PER_USER   20
#define POST_TEXT_CHARS      256
#define POST_URL_CHARS       64
#define POST_MAX_ENTITIES    6
#define BENCH_MAX_PARALLEL   1024
#define BENCH_TIMEOUT_MS     10000
#define BENCH_SAMPLE_MS      500
#define BENCH_BACKOFF_MS     200
#define BENCH_TAIL_MS        15000
#define DEGREE_USERS         16
#define DEGREE_QUERIES       200 /* per kind */

static void pause_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

void social_free(struct social *s)
{
    cli_fetcher_free(s->f);
    for (uint32_t i = 0; s->acct && i < s->n; i++) {
        struct account *a = &s->acct[i];
        free(a->id);
        free(a->email);
        free(a->handle);
        if (a->auth) {
            sodium_memzero(a->auth, strlen(a->auth));
            free(a->auth);
        }
    }
    free(s->acct);
    if (s->password) {
        sodium_memzero(s->password, strlen(s->password));
        free(s->password);
    }
    free(s->gw);
    social_graph_free(&s->g);
}

/* The gateway and the shared password; MOAT_OK or an error after printing
 * why. */
int social_open(struct social *s, const struct deploy *d)
{
    s->d = d;
    const struct deploy_service *gw = shop_gateway(d, "/api/v1/posts");
    if (!gw) {
        cli_error("deployment \"%s\" has no gateway routing /api/v1/posts "
                  "(use -f deploy/social.json)",
                  d->name);
        return MOAT_EINVAL;
    }
    s->gw = deploy_base_url(gw);
    s->password =
        shop_derived_password(d, "moat social seed password", "social-");
    return s->password ? MOAT_OK : MOAT_EINVAL;
}

char *social_seed_path(const struct deploy *d)
{
    return moat_xasprintf("%s/" SEED_FILE, d->var_dir);
}

/* ---- calls with retries (seed) ---- */

static void call_free(struct call *c)
{
    free(c->method);
    free(c->path);
    if (c->body) {
        sodium_memzero(c->body, strlen(c->body));
        free(c->body);
    }
    free(c->auth);
    free(c->idem);
    free(c);
}

static void on_call(const struct cli_fetch_result *r, void *arg);

void social_call_send(struct call *c)
{
    char *url = moat_xasprintf("%s%s", c->s->gw, c->path);
    const char *hdrs[3] = {NULL, NULL, NULL};
    size_t h = 0;
    if (c->auth)
        hdrs[h++] = c->auth;
    if (c->idem)
        hdrs[h++] = c->idem;
    cli_fetch(c->s->f, c->method, url, hdrs, c->body, CALL_TIMEOUT_MS, on_call,
              c);
    free(url);
}

/* A call as user `as` (UINT32_MAX: anonymous), to send with social_call_send()
 * once its other fields are set; path and body are taken. */
struct call *social_call_new(struct social *s, uint32_t as, const char *method,
                             char *path, char *body, call_done done)
{
    struct call *c = moat_xcalloc(1, sizeof(*c));
    c->s = s;
    c->method = moat_xstrdup(method);
    c->path = path;
    c->body = body;
    c->done = done;
    c->u = as;
    if (as != UINT32_MAX && s->acct[as].auth)
        c->auth = moat_xstrdup(s->acct[as].auth);
    return c;
}

static void call(struct social *s, uint32_t as, const char *method, char *path,
                 char *body, call_done done)
{
    social_call_send(social_call_new(s, as, method, path, body, done));
}

static void fail(struct call *c, long status, json_t *res)
{
    struct social *s = c->s;
    if (s->failed++ < 5)
        cli_error("%s %s: HTTP %ld%s%s", c->method, c->path, status,
                  jstr(res, "detail") ? ": " : "",
                  jstr(res, "detail") ? jstr(res, "detail") : "");
}

static void on_call(const struct cli_fetch_result *r, void *arg)
{
    struct call *c = arg;
    if (r->err == MOAT_ECANCELLED) {
        call_free(c);
        return;
    }
    struct social *s = c->s;
    long st = r->err == MOAT_OK ? r->status : 0;
    json_t *res =
        st && r->body_len ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
    if ((st == 0 || st == 429 || st == 502 || st == 503) &&
        ++c->attempts < CALL_MAX_ATTEMPTS) {
        /* No answer, 502 or 503: the upstream may have done it anyway
         * (users hashes a registration the gateway gave up on). */
        c->unsure = c->unsure || st != 429;
        /* Doubling pauses after no answer, 502 and 503: under load users
         * is still hashing the passwords of the attempts the gateway gave
         * up on, and quick retries would only queue more hashes behind
         * them (each to be given up on in turn). */
        unsigned doublings = c->attempts - 1 < RETRY_BUSY_DOUBLINGS
                                 ? c->attempts - 1
                                 : RETRY_BUSY_DOUBLINGS;
        double wait =
            st == 429 ? RETRY_LIMITED_MS : (double)(RETRY_BUSY_MS << doublings);
        json_int_t after =
            json_integer_value(json_object_get(res, "retry_after_s"));
        if (st == 429) {
            s->limited++;
            if (after > 0 && after <= 60)
                wait = (double)after * 1000.0;
        }
        json_decref(res);
        c->due = bench_now_ms() + wait;
        c->next = s->retry;
        s->retry = c;
        return;
    }
    s->calls_done++;
    c->done(c, st, res);
    json_decref(res);
    call_free(c);
}

/* Run every queued call (and those their callbacks queue) to the end. */
void social_run_calls(struct social *s, const char *what)
{
    double t0 = bench_now_ms(), next_note = t0 + PROGRESS_MS;
    size_t done0 = s->calls_done;
    for (;;) {
        double t = bench_now_ms();
        for (struct call **pp = &s->retry; *pp;) {
            struct call *c = *pp;
            if (c->due <= t) {
                *pp = c->next;
                c->next = NULL;
                social_call_send(c);
            } else {
                pp = &c->next;
            }
        }
        size_t left = cli_fetcher_run(s->f, 20);
        if (!left && !s->retry)
            break;
        if (!left)
            pause_ms(10);
        if (t >= next_note) {
            fprintf(stderr, "moat: %s: %zu calls done, %zu to go (%.0f s)\n",
                    what, s->calls_done - done0, left, (t - t0) / 1000.0);
            next_note += PROGRESS_MS;
        }
    }
}

/* ---- seed: users ---- */

/* The account's created_at: made by this run's users phase or before it. */
static void done_me(struct call *c, long st, json_t *res)
{
    struct social *s = c->s;
    json_t *created = json_object_get(res, "created_at");
    if (st != 200 || !json_is_integer(created)) {
        fail(c, st, res);
        return;
    }
    s->acct[c->u].unsure_409 = false;
    if (json_integer_value(created) >= s->users_since_s)
        s->registered++;
    else
        s->existing++;
}

static void done_login(struct call *c, long st, json_t *res)
{
    struct account *a = &c->s->acct[c->u];
    const char *id = jstr(json_object_get(res, "user"), "id");
    const char *tok = jstr(res, "access_token");
    if (st != 200 || !id || !tok) {
        fail(c, st, res);
        return;
    }
    if (a->id && strcmp(a->id, id) != 0) {
        free(a->id);
        a->id = NULL;
    }
    if (!a->id)
        a->id = moat_xstrdup(id);
    free(a->auth);
    a->auth = moat_xasprintf("Authorization: Bearer %s", tok);
    c->s->logged_in++;
    if (a->unsure_409)
        call(c->s, c->u, "GET", moat_xstrdup("/api/v1/users/me"), NULL,
             done_me);
}

void social_login(struct social *s, uint32_t i)
{
    json_t *doc = json_pack("{s:s, s:s}", "email", s->acct[i].email, "password",
                            s->password);
    struct call *c = social_call_new(s, UINT32_MAX, "POST",
                                     moat_xstrdup("/api/v1/auth/login"),
                                     json_dumps(doc, JSON_COMPACT), done_login);
    c->u = i;
    social_call_send(c);
    json_decref(doc);
}

static void done_register(struct call *c, long st, json_t *res)
{
    if (st == 201)
        c->s->registered++;
    else if (st == 409 && c->unsure)
        c->s->acct[c->u].unsure_409 = true; /* done_me counts it */
    else if (st == 409)
        c->s->existing++;
    else {
        fail(c, st, res);
        return;
    }
    social_login(c->s, c->u);
}

void social_users_phase(struct social *s)
{
    /* users stamps created_at (seconds) on receiving the registration. */
    s->users_since_s = (int64_t)(moat_wall_ms() / 1000);
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->acct[i].id) { /* known from an earlier run */
            s->existing++;
            social_login(s, i);
            continue;
        }
        char *name = moat_xasprintf("Seed user %u", i + 1);
        json_t *doc = json_pack("{s:s, s:s, s:s}", "email", s->acct[i].email,
                                "password", s->password, "display_name", name);
        free(name);
        struct call *c = social_call_new(
            s, UINT32_MAX, "POST", moat_xstrdup("/api/v1/users"),
            json_dumps(doc, JSON_COMPACT), done_register);
        c->u = i;
        social_call_send(c);
        json_decref(doc);
    }
    social_run_calls(s, "users");
}

/* ---- seed: profiles, edges, posts ---- */

static void done_profile(struct call *c, long st, json_t *res)
{
    if (st == 200)
        c->s->profiles++;
    else
        fail(c, st, res);
}

static void done_follow(struct call *c, long st, json_t *res)
{
    if (st == 200 || st == 201)
        c->s->follows++;
    else
        fail(c, st, res);
}

static void done_accept(struct call *c, long st, json_t *res)
{
    if (st == 200)
        c->s->connections++;
    else
        fail(c, st, res);
}

static void done_request(struct call *c, long st, json_t *res)
{
    struct social *s = c->s;
    if (st != 200 && st != 201) {
        fail(c, st, res);
        return;
    }
    if (st == 200 && strcmp(jstr(res, "state") ? jstr(res, "state") : "",
                            "connected") == 0) {
        s->connections++; /* an earlier run made it */
        return;
    }
    call(s, c->v, "POST",
         moat_xasprintf("/api/v1/connections/%s/accept", s->acct[c->u].id),
         NULL, done_accept);
}

static char *user_body(const char *id)
{
    return moat_xasprintf("{\"user_id\": \"%s\"}", id);
}

static void done_post(struct call *c, long st, json_t *res)
{
    if (st == 201)
        c->s->posts++;
    else
        fail(c, st, res);
}

static void add_random(struct moat_buf *b, struct social_rng *r, size_t n)
{
    static const char chars[] = "abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (size_t i = 0; i < n; i++)
        moat_buf_addch(b, chars[social_rng_below(r, sizeof(chars) - 1)]);
}

/*
 * A post body as DeathStarBench's compose: 256 random characters, 1 to 6
 * @mentions of other seeded users and 1 to 6 URLs of 64 characters (at
 * most 256 + 6 x 31 + 6 x 65 = 832 bytes, within posts' 1000). Caller
 * frees.
 */
static char *post_body(const struct social *s, struct social_rng *r)
{
    struct moat_buf t = MOAT_BUF_INIT;
    add_random(&t, r, POST_TEXT_CHARS);
    unsigned nm = 1 + (unsigned)social_rng_below(r, POST_MAX_ENTITIES);
    for (unsigned k = 0; k < nm; k++)
        moat_buf_printf(&t, " @%s", s->acct[social_rng_below(r, s->n)].handle);
    unsigned nu = 1 + (unsigned)social_rng_below(r, POST_MAX_ENTITIES);
    for (unsigned k = 0; k < nu; k++) {
        static const char host[] = "https://moat.example/";
        moat_buf_printf(&t, " %s", host);
        add_random(&t, r, POST_URL_CHARS - (sizeof(host) - 1));
    }
    json_t *doc = json_pack("{s:s}", "text", moat_buf_str(&t));
    moat_buf_release(&t);
    char *body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return body;
}

static void graph_phase(struct social *s, unsigned posts_per_user)
{
    for (uint32_t i = 0; i < s->n; i++) {
        if (!s->acct[i].auth)
            continue;
        json_t *doc = json_pack("{s:s, s:s, s:s}", "display_name",
                                s->acct[i].email, "handle", s->acct[i].handle,
                                "bio", "Synthetic user of moat social seed.");
        call(s, i, "PUT", moat_xstrdup("/api/v1/profiles/me"),
             json_dumps(doc, JSON_COMPACT), done_profile);
        json_decref(doc);
    }
    social_run_calls(s, "profiles");
    for (size_t e = 0; e < s->g.nedges; e++) {
        uint32_t a = s->g.edges[e].a, b = s->g.edges[e].b;
        if (!s->acct[a].auth || !s->acct[b].auth) {
            s->failed++;
            continue;
        }
        struct call *c =
            social_call_new(s, a, "POST", moat_xstrdup("/api/v1/connections"),
                            user_body(s->acct[b].id), done_request);
        c->v = b;
        social_call_send(c);
        call(s, a, "POST", moat_xstrdup("/api/v1/follows"),
             user_body(s->acct[b].id), done_follow);
        call(s, b, "POST", moat_xstrdup("/api/v1/follows"),
             user_body(s->acct[a].id), done_follow);
    }
    social_run_calls(s, "connections and follows");
    for (uint32_t i = 0; i < s->n; i++) {
        if (!s->acct[i].auth)
            continue;
        for (unsigned k = 0; k < posts_per_user; k++) {
            /* The same post on every run with this seed: with its key, a
             * second run is a replay, not a new post. */
            struct social_rng r;
            social_rng_init(&r, s->seed ^ ((uint64_t)i << 32 | k));
            social_rng_next(&r);
            struct call *c =
                social_call_new(s, i, "POST", moat_xstrdup("/api/v1/posts"),
                                post_body(s, &r), done_post);
            c->idem = moat_xasprintf("Idempotency-Key: seed-%llu-%u-%u",
                                     (unsigned long long)s->seed, i, k);
            social_call_send(c);
        }
    }
    social_run_calls(s, "posts");
}

/* ---- the seed file ---- */

void social_accounts_new(struct social *s, uint32_t n)
{
    s->n = n;
    s->acct = moat_xcalloc(n, sizeof(*s->acct));
    for (uint32_t i = 0; i < n; i++) {
        s->acct[i].email = moat_xasprintf("social-%llu-%u@moat.local",
                                          (unsigned long long)s->seed, i + 1);
        /* 3 to 30 of [a-z0-9_], unique per seed and user. */
        s->acct[i].handle = moat_xasprintf(
            "u%u_%llx", i + 1, (unsigned long long)(s->seed & 0xffffffffffULL));
    }
}

static int save_seed(const struct social *s, unsigned posts_per_user)
{
    json_t *accts = json_array();
    for (uint32_t i = 0; i < s->n; i++)
        json_array_append_new(
            accts, json_pack("{s:s?, s:s, s:s}", "id", s->acct[i].id, "email",
                             s->acct[i].email, "handle", s->acct[i].handle));
    json_t *doc = json_pack("{s:i, s:I, s:I, s:I, s:i, s:s, s:o}", "version",
                            SEED_VERSION, "seed", (json_int_t)s->seed, "users",
                            (json_int_t)s->n, "edges", (json_int_t)s->g.nedges,
                            "posts_per_user", (int)posts_per_user, "password",
                            s->password, "accounts", accts);
    char *path = social_seed_path(s->d);
    char *tmp = moat_xasprintf("%s.tmp", path);
    int rc = MOAT_EIO;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0 && json_dumpfd(doc, fd, JSON_INDENT(1)) == 0 &&
        fsync(fd) == 0 && close(fd) == 0) {
        fd = -1;
        if (rename(tmp, path) == 0)
            rc = MOAT_OK;
    }
    if (fd >= 0)
        close(fd);
    if (rc != MOAT_OK) {
        cli_error("cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    free(path);
    json_decref(doc);
    return rc;
}

/* Read the seed file into s (accounts with their ids, the graph's size and
 * seed); with want_seed/want_users set, only a file of that seed and size
 * counts. MOAT_ENOTFOUND when there is none (or another one). */
int social_load_seed(struct social *s, bool match, uint64_t want_seed,
                     uint32_t want_users, size_t *edges, unsigned *ppu)
{
    char *path = social_seed_path(s->d);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    int rc = MOAT_ENOTFOUND;
    json_t *accts = json_object_get(doc, "accounts");
    json_int_t seed = json_integer_value(json_object_get(doc, "seed"));
    json_int_t users = json_integer_value(json_object_get(doc, "users"));
    if (!doc ||
        json_integer_value(json_object_get(doc, "version")) != SEED_VERSION ||
        users < 2 || users > SOCIAL_GRAPH_MAX_USERS ||
        json_array_size(accts) != (size_t)users)
        goto out;
    if (match && ((uint64_t)seed != want_seed || users != want_users))
        goto out;
    s->seed = (uint64_t)seed;
    social_accounts_new(s, (uint32_t)users);
    for (uint32_t i = 0; i < s->n; i++) {
        const char *id = jstr(json_array_get(accts, i), "id");
        if (id)
            s->acct[i].id = moat_xstrdup(id);
    }
    *edges = (size_t)json_integer_value(json_object_get(doc, "edges"));
    *ppu = (unsigned)json_integer_value(json_object_get(doc, "posts_per_user"));
    rc = MOAT_OK;
out:
    json_decref(doc);
    free(path);
    return rc;
}

/* ---- moat social seed ---- */

static int cmd_seed(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"users", required_argument, NULL, 'u'},
        {"edges", required_argument, NULL, 'e'},
        {"posts-per-user", required_argument, NULL, 'p'},
        {"seed", required_argument, NULL, 's'},
        {"parallel", required_argument, NULL, 'P'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    int64_t users = 962, edges = 18812, ppu = 5, seed = 1, parallel = 16;
    int ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        int64_t *target = NULL, lo = 0, hi = 0;
        const char *name = NULL;
        switch (ch) {
        case 'f':
            file = optarg;
            continue;
        case 'u':
            target = &users, lo = 2, hi = SOCIAL_GRAPH_MAX_USERS,
            name = "--users";
            break;
        case 'e':
            target = &edges, hi = SOCIAL_GRAPH_MAX_EDGES, name = "--edges";
            break;
        case 'p':
            target = &ppu, hi = MAX_POSTS_PER_USER, name = "--posts-per-user";
            break;
        case 's':
            target = &seed, hi = INT64_MAX, name = "--seed";
            break;
        case 'P':
            target = &parallel, lo = 1, hi = 256, name = "--parallel";
            break;
        default:
            return cli_option_error("social seed", ch, argv);
        }
        if (moat_parse_i64(optarg, lo, hi, target) != MOAT_OK)
            return cli_usage_error("social seed",
                                   "%s must be an integer from %lld to %lld",
                                   name, (long long)lo, (long long)hi);
    }
    if (optind < argc)
        return cli_usage_error("social seed", "unexpected argument '%s'",
                               argv[optind]);
    if ((size_t)edges > social_graph_max_edges((uint32_t)users))
        return cli_usage_error(
            "social seed", "--edges for %lld users is at most %zu",
            (long long)users, social_graph_max_edges((uint32_t)users));

    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    struct social s = {.seed = (uint64_t)seed};
    int ret = CLI_EXIT_FAIL;
    json_t *st = cli_running_state(d);
    json_decref(st);
    if (!st || social_open(&s, d) != MOAT_OK)
        goto out;
    size_t old_edges;
    unsigned old_ppu;
    if (social_load_seed(&s, true, (uint64_t)seed, (uint32_t)users, &old_edges,
                         &old_ppu) != MOAT_OK)
        social_accounts_new(&s, (uint32_t)users);
    social_graph_generate(&s.g, (uint32_t)users, (size_t)edges, s.seed);
    s.f = cli_fetcher_new(parallel < PASSWORD_PARALLEL ? (unsigned)parallel
                                                       : PASSWORD_PARALLEL);
    if (!s.f)
        goto out;
    printf("moat social seed: %u users, %zu edges, %lld posts per user "
           "(seed %lld) through %s\n",
           s.n, s.g.nedges, (long long)ppu, (long long)seed, s.gw);
    fflush(stdout);
    double t0 = bench_now_ms();
    social_users_phase(&s);
    if (save_seed(&s, (unsigned)ppu) != MOAT_OK)
        goto out;
    cli_fetcher_free(s.f);
    s.f = cli_fetcher_new((unsigned)parallel);
    if (!s.f)
        goto out;
    graph_phase(&s, (unsigned)ppu);
    double secs = (bench_now_ms() - t0) / 1000.0;
    char shown[4096], *path = social_seed_path(d);
    printf("users %u (registered %zu, already there %zu, logged in %zu), "
           "profiles %zu\n"
           "edges %zu: connections %zu, follows %zu; posts %zu\n"
           "failed %zu, retried after 429 %zu; %.1f s; accounts in %s\n",
           s.n, s.registered, s.existing, s.logged_in, s.profiles, s.g.nedges,
           s.connections, s.follows, s.posts, s.failed, s.limited, secs,
           cli_display_path(path, shown, sizeof(shown)));
    free(path);
    ret = s.failed ? CLI_EXIT_FAIL : CLI_EXIT_OK;
out:
    social_free(&s);
    deploy_free(d);
    return ret;
}

/* ---- moat social bench ---- */

enum op { OP_HOME, OP_USER, OP_COMPOSE, OP_DEGREE, OP_DEGREE2, NOPS };
static const char *const op_name[NOPS] = {"home_timeline", "user_timeline",
                                          "compose_post", "degree_query",
                                          "second_degree"};

struct opstat {
    double *lat; /* ms of the successful calls */
    size_t n, cap;
    size_t sent, e429, e5xx, e4xx, etransport;
};

struct bench {
    struct social s;
    uint32_t *who; /* logged-in users (indexes) */
    uint32_t nwho;
    struct social_rng rng;
    struct opstat op[NOPS];
    bool open, sending;
    unsigned mix[3];   /* percent of home, user timeline, compose; sum 100 */
    double *next_send; /* closed: per worker, 0 = busy */
    struct bench_procs procs;
};

struct req {
    struct bench *b;
    enum op op;
    double due;
    int worker;
    bool *done; /* serial phase: set when answered */
};

static void opstat_add(struct opstat *o, double ms)
{
    if (o->n == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 1024;
        o->lat = realloc(o->lat, o->cap * sizeof(*o->lat));
        if (!o->lat)
            moat_die("out of memory");
    }
    o->lat[o->n++] = ms;
}

static void on_req(const struct cli_fetch_result *r, void *arg)
{
    struct req *q = arg;
    struct bench *b = q->b;
    if (r->err == MOAT_ECANCELLED) {
        free(q);
        return;
    }
    double t = bench_now_ms();
    struct opstat *o = &b->op[q->op];
    bool ok = r->err == MOAT_OK && r->status >= 200 && r->status < 300;
    if (ok)
        opstat_add(o, t - q->due);
    else if (r->err != MOAT_OK)
        o->etransport++;
    else if (r->status == 429)
        o->e429++;
    else if (r->status >= 500)
        o->e5xx++;
    else
        o->e4xx++;
    if (q->worker >= 0 && b->sending)
        b->next_send[q->worker] = ok ? t : t + BENCH_BACKOFF_MS;
    if (q->done)
        *q->done = true;
    free(q);
}

static void send_op(struct bench *b, enum op op, double due, int worker,
                    bool *done)
{
    struct social *s = &b->s;
    uint32_t me = b->who[social_rng_below(&b->rng, b->nwho)];
    char *path = NULL, *body = NULL;
    const char *method = "GET";
    switch (op) {
    case OP_HOME:
        path = moat_xstrdup("/api/v1/timeline/home?limit=10");
        break;
    case OP_USER: {
        const char *id = s->acct[social_rng_below(&b->rng, s->n)].id;
        path = moat_xasprintf("/api/v1/users/%s/posts?limit=10",
                              id ? id : s->acct[me].id);
        break;
    }
    case OP_COMPOSE:
        method = "POST";
        path = moat_xstrdup("/api/v1/posts");
        body = post_body(s, &b->rng);
        break;
    default:
        cli_error("send_op: not a workload operation");
        abort();
    }
    struct req *q = moat_xcalloc(1, sizeof(*q));
    *q = (struct req){
        .b = b, .op = op, .due = due, .worker = worker, .done = done};
    b->op[op].sent++;
    char *url = moat_xasprintf("%s%s", s->gw, path);
    const char *hdrs[] = {s->acct[me].auth, NULL};
    cli_fetch(s->f, method, url, hdrs, body, BENCH_TIMEOUT_MS, on_req, q);
    free(url);
    free(path);
    free(body);
}

static enum op pick_op(struct bench *b)
{
    uint64_t x = social_rng_below(&b->rng, 100);
    return x < b->mix[0]               ? OP_HOME
           : x < b->mix[0] + b->mix[1] ? OP_USER
                                       : OP_COMPOSE;
}

/* One graph query at a time, timed from send to answer. */
static void serial_query(struct bench *b, enum op op, char *path)
{
    struct social *s = &b->s;
    bool done = false;
    struct req *q = moat_xcalloc(1, sizeof(*q));
    *q = (struct req){
        .b = b, .op = op, .due = bench_now_ms(), .worker = -1, .done = &done};
    b->op[op].sent++;
    char *url = moat_xasprintf("%s%s", s->gw, path);
    const char *hdrs[] = {s->acct[b->who[0]].auth, NULL};
    cli_fetch(s->f, "GET", url, hdrs, NULL, BENCH_TIMEOUT_MS, on_req, q);
    while (!done)
        cli_fetcher_run(s->f, 20);
    free(url);
    free(path);
}

/* Users of the median degree (up to DEGREE_USERS; the nearest degrees
 * when fewer have it exactly), then degree queries between them and their
 * second-degree lists. */
static void degree_phase(struct bench *b)
{
    struct social *s = &b->s;
    uint32_t med = social_graph_median_degree(&s->g);
    uint32_t pick[DEGREE_USERS], np = 0;
    for (uint32_t dist = 0; np < DEGREE_USERS && dist <= s->g.users; dist++)
        for (uint32_t u = 0; u < s->n && np < DEGREE_USERS; u++) {
            uint32_t dg = s->g.degree[u];
            if ((dg == med + dist || (dist && dg + dist == med)) &&
                s->acct[u].id)
                pick[np++] = u;
        }
    if (np < 2)
        return;
    for (unsigned k = 0; k < DEGREE_QUERIES; k++) {
        uint32_t x = pick[k % np], y = pick[(k / np + 1 + k) % np];
        if (x == y)
            y = pick[(k + 1) % np];
        serial_query(b, OP_DEGREE,
                     moat_xasprintf("/api/v1/connections/degree?from=%s&to=%s",
                                    s->acct[x].id, s->acct[y].id));
        serial_query(b, OP_DEGREE2,
                     moat_xasprintf("/api/v1/users/%s/connections?degree=2",
                                    s->acct[x].id));
    }
}

static json_t *opstat_json(struct opstat *o, double run_s)
{
    size_t errors = o->e429 + o->e5xx + o->e4xx + o->etransport;
    return json_pack(
        "{s:I, s:I, s:f, s:{s:I, s:I, s:I, s:I, s:I}, s:o}", "sent",
        (json_int_t)o->sent, "ok", (json_int_t)o->n, "ok_per_s",
        run_s > 0 ? (double)o->n / run_s : 0.0, "errors", "total",
        (json_int_t)errors, "rate_limited", (json_int_t)o->e429, "server",
        (json_int_t)o->e5xx, "client", (json_int_t)o->e4xx, "transport",
        (json_int_t)o->etransport, "latency_ms", bench_latency(o->lat, o->n));
}

static void bench_report(struct bench *b, unsigned workers, double rate,
                         double run_s, bool as_json)
{
    struct opstat all = {0};
    json_t *ops = json_object(), *graph = json_object();
    for (int i = 0; i < NOPS; i++) {
        struct opstat *o = &b->op[i];
        if (i < OP_DEGREE) {
            for (size_t k = 0; k < o->n; k++)
                opstat_add(&all, o->lat[k]);
            all.sent += o->sent, all.e429 += o->e429, all.e5xx += o->e5xx;
            all.e4xx += o->e4xx, all.etransport += o->etransport;
        }
        json_object_set_new(i < OP_DEGREE ? ops : graph, op_name[i],
                            opstat_json(o, run_s));
    }
    json_t *procs = bench_procs_json(&b->procs, run_s);
    json_t *out = json_pack(
        "{s:s, s:i, s:f, s:{s:i, s:i, s:i}, s:f, s:i, s:o, s:o, s:o, s:o}",
        "mode", b->open ? "open" : "closed", "concurrency", (int)workers,
        "rate", b->open ? rate : 0.0, "mix", op_name[OP_HOME], (int)b->mix[0],
        op_name[OP_USER], (int)b->mix[1], op_name[OP_COMPOSE], (int)b->mix[2],
        "seconds", run_s, "users_logged_in", (int)b->nwho, "overall",
        opstat_json(&all, run_s), "operations", ops, "graph_queries", graph,
        "services", procs);
    free(all.lat);
    if (as_json) {
        char *text = json_dumps(out, JSON_INDENT(2));
        puts(text);
        free(text);
        json_decref(out);
        return;
    }
    json_t *ov = json_object_get(out, "overall");
    printf("\n%s loop, %.1f s: sent %lld, ok %lld (%.1f/s)\n",
           b->open ? "open" : "closed", run_s,
           (long long)json_integer_value(json_object_get(ov, "sent")),
           (long long)json_integer_value(json_object_get(ov, "ok")),
           json_real_value(json_object_get(ov, "ok_per_s")));
    printf("\n  %-16s %8s %8s %8s %6s %6s %6s %8s\n", "OPERATION", "SENT", "OK",
           "OK/S", "429", "5XX", "4XX", "NO REPLY");
    const char *k;
    json_t *v;
    for (int pass = 0; pass < 2; pass++) {
        json_t *set =
            pass ? json_pack("{s:O}", "overall", ov) : json_incref(ops);
        json_object_foreach(set, k, v)
        {
            json_t *e = json_object_get(v, "errors");
            printf(
                "  %-16s %8lld %8lld %8.1f %6lld %6lld %6lld %8lld\n", k,
                (long long)json_integer_value(json_object_get(v, "sent")),
                (long long)json_integer_value(json_object_get(v, "ok")),
                json_real_value(json_object_get(v, "ok_per_s")),
                (long long)json_integer_value(
                    json_object_get(e, "rate_limited")),
                (long long)json_integer_value(json_object_get(e, "server")),
                (long long)json_integer_value(json_object_get(e, "client")),
                (long long)json_integer_value(json_object_get(e, "transport")));
        }
        json_decref(set);
    }
    bench_latency_header(b->open ? "latency (ms, from due)" : "latency (ms)");
    json_object_foreach(ops, k, v)
        bench_latency_print(k, json_object_get(v, "latency_ms"));
    bench_latency_print("overall", json_object_get(ov, "latency_ms"));
    bench_latency_header("graph queries (serial)");
    json_object_foreach(graph, k, v)
        bench_latency_print(k, json_object_get(v, "latency_ms"));
    bench_procs_print(procs);
    json_decref(out);
}

/* Log in up to want users, picked at random; MOAT_OK when at least one. */
static int bench_logins(struct bench *b, uint32_t want)
{
    struct social *s = &b->s;
    if (want > s->n)
        want = s->n;
    b->who = moat_xcalloc(want, sizeof(*b->who));
    /* A partial Fisher-Yates shuffle picks distinct users. */
    uint32_t *perm = moat_xcalloc(s->n, sizeof(*perm));
    for (uint32_t i = 0; i < s->n; i++)
        perm[i] = i;
    for (uint32_t i = 0; i < want; i++) {
        uint32_t j = i + (uint32_t)social_rng_below(&b->rng, s->n - i);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        if (s->acct[perm[i]].id)
            social_login(s, perm[i]);
    }
    social_run_calls(s, "logins");
    for (uint32_t i = 0; i < want; i++)
        if (s->acct[perm[i]].auth)
            b->who[b->nwho++] = perm[i];
    free(perm);
    if (!b->nwho)
        cli_error("no seeded user could log in");
    return b->nwho ? MOAT_OK : MOAT_EIO;
}

/* "H,U,C": the workload's percentages, adding up to 100. */
static int parse_mix(const char *arg, unsigned mix[3])
{
    char buf[32];
    if (strlen(arg) >= sizeof(buf))
        return MOAT_EINVAL;
    snprintf(buf, sizeof(buf), "%s", arg);
    unsigned sum = 0;
    char *save = NULL, *tok = strtok_r(buf, ",", &save);
    for (int i = 0; i < 3; i++, tok = strtok_r(NULL, ",", &save)) {
        int64_t v;
        if (!tok || moat_parse_i64(tok, 0, 100, &v) != MOAT_OK)
            return MOAT_EINVAL;
        mix[i] = (unsigned)v;
        sum += mix[i];
    }
    return !tok && sum == 100 ? MOAT_OK : MOAT_EINVAL;
}

static int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"mode", required_argument, NULL, 'm'},
        {"concurrency", required_argument, NULL, 'c'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"users", required_argument, NULL, 'u'},
        {"seed", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"mix", required_argument, NULL, 'x'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    unsigned mix[3] = {60, 30, 10};
    int64_t conc = 16, rate = 100, duration = 30, users = 100, seed = 1;
    bool open = false, as_json = false;
    int ch;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        int64_t *target = NULL, hi = 0;
        const char *name = NULL;
        switch (ch) {
        case 'f':
            file = optarg;
            continue;
        case 'j':
            as_json = true;
            continue;
        case 'm':
            if (strcmp(optarg, "open") == 0)
                open = true;
            else if (strcmp(optarg, "closed") != 0)
                return cli_usage_error("social bench",
                                       "--mode must be closed or open");
            continue;
        case 'x':
            if (parse_mix(optarg, mix) != MOAT_OK)
                return cli_usage_error(
                    "social bench",
                    "--mix must be three percentages of home timeline, user "
                    "timeline and compose adding up to 100 (e.g. 60,30,10)");
            continue;
        case 'c':
            target = &conc, hi = 1000, name = "--concurrency";
            break;
        case 'r':
            target = &rate, hi = 100000, name = "--rate";
            break;
        case 'd':
            /* Access tokens live 900 s and bench does not refresh them. */
            target = &duration, hi = 600, name = "--duration";
            break;
        case 'u':
            target = &users, hi = SOCIAL_GRAPH_MAX_USERS, name = "--users";
            break;
        case 's':
            target = &seed, hi = INT64_MAX, name = "--seed";
            break;
        default:
            return cli_option_error("social bench", ch, argv);
        }
        if (moat_parse_i64(optarg, 1, hi, target) != MOAT_OK)
            return cli_usage_error("social bench",
                                   "%s must be an integer from 1 to %lld", name,
                                   (long long)hi);
    }
    if (optind < argc)
        return cli_usage_error("social bench", "unexpected argument '%s'",
                               argv[optind]);

    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    struct bench b = {.open = open, .mix = {mix[0], mix[1], mix[2]}};
    social_rng_init(&b.rng, (uint64_t)seed);
    int ret = CLI_EXIT_FAIL;
    size_t edges = 0;
    unsigned ppu = 0;
    json_t *st = cli_running_state(d);
    json_decref(st);
    if (!st || social_open(&b.s, d) != MOAT_OK)
        goto out;
    if (social_load_seed(&b.s, false, 0, 0, &edges, &ppu) != MOAT_OK) {
        char *path = social_seed_path(d);
        cli_error("no seeded users in %s: run moat social seed first", path);
        free(path);
        goto out;
    }
    if (social_graph_generate(&b.s.g, b.s.n, edges, b.s.seed) != MOAT_OK) {
        cli_error("the seed file's graph (%u users, %zu edges) is invalid",
                  b.s.n, edges);
        goto out;
    }
    b.s.f = cli_fetcher_new(PASSWORD_PARALLEL);
    if (!b.s.f || bench_logins(&b, (uint32_t)users) != MOAT_OK)
        goto out;
    cli_fetcher_free(b.s.f);
    b.s.f = cli_fetcher_new(BENCH_MAX_PARALLEL);
    if (!b.s.f)
        goto out;
    if (!as_json) {
        if (open)
            printf("moat social bench: open loop at %lld requests/s for %lld "
                   "s, %u users, mix %u/%u/%u, through %s\n",
                   (long long)rate, (long long)duration, b.nwho, mix[0], mix[1],
                   mix[2], b.s.gw);
        else
            printf("moat social bench: closed loop, %lld workers, %lld s, %u "
                   "users, mix %u/%u/%u, through %s\n",
                   (long long)conc, (long long)duration, b.nwho, mix[0], mix[1],
                   mix[2], b.s.gw);
        fflush(stdout);
    }

    bench_procs_sample(&b.procs, d);
    double t0 = bench_now_ms(), end = t0 + (double)duration * 1000.0;
    b.next_send = moat_xcalloc((size_t)conc, sizeof(*b.next_send));
    for (int64_t w = 0; w < conc; w++)
        b.next_send[w] = t0;
    b.sending = true;
    double next_due = t0, next_sample = t0 + BENCH_SAMPLE_MS;
    double interval = 1000.0 / (double)rate;
    for (;;) {
        double t = bench_now_ms();
        if (t >= end)
            break;
        if (open) {
            while (next_due <= t) {
                send_op(&b, pick_op(&b), next_due, -1, NULL);
                next_due += interval;
            }
        } else {
            for (int64_t w = 0; w < conc; w++) {
                if (b.next_send[w] && b.next_send[w] <= t) {
                    b.next_send[w] = 0; /* busy until answered */
                    send_op(&b, pick_op(&b), t, (int)w, NULL);
                }
            }
        }
        if (t >= next_sample) {
            bench_procs_sample(&b.procs, d);
            next_sample += BENCH_SAMPLE_MS;
        }
        double wake = open ? next_due : t + 5;
        int wait = wake > t ? (int)(wake - t) : 0;
        cli_fetcher_run(b.s.f, wait > 20 ? 20 : wait);
    }
    double run_end = bench_now_ms();
    b.sending = false;
    /* The answers to what was sent (their latency counts, the time not). */
    while (cli_fetcher_pending(b.s.f) &&
           bench_now_ms() < run_end + BENCH_TAIL_MS)
        cli_fetcher_run(b.s.f, 20);
    bench_procs_sample(&b.procs, d);
    if (!as_json) {
        printf("graph queries for users of median degree (%u)...\n",
               social_graph_median_degree(&b.s.g));
        fflush(stdout);
    }
    degree_phase(&b);
    bench_report(&b, (unsigned)conc, (double)rate, (run_end - t0) / 1000.0,
                 as_json);
    ret = CLI_EXIT_OK;
out:
    social_free(&b.s);
    for (int i = 0; i < NOPS; i++)
        free(b.op[i].lat);
    free(b.who);
    free(b.next_send);
    deploy_free(d);
    return ret;
}

int cli_cmd_social(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error("social",
                               "moat social needs seed, bench or msgbench");
    if (strcmp(argv[1], "seed") == 0)
        return cmd_seed(argc - 1, argv + 1);
    if (strcmp(argv[1], "bench") == 0)
        return cmd_bench(argc - 1, argv + 1);
    if (strcmp(argv[1], "msgbench") == 0)
        return social_cmd_msgbench(argc - 1, argv + 1);
    return cli_usage_error("social", "unknown social command '%s'", argv[1]);
}
