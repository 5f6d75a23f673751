/*
 * test_events_crash.c - the event backbone under crashes: hundreds of
 * catalog changes while catalog (the producer, its outbox) and search (the
 * consumer, its cursor and index) are each SIGKILLed at random moments and
 * restarted. Afterwards search must have caught up with catalog's head
 * and its index must equal catalog's actual state exactly, with every
 * event applied exactly once (the test-only apply log of search).
 *
 * Two writer processes (forked; so that a kill can land in the middle of
 * a request) create, update and delete products through catalog's API and
 * record each change catalog acknowledged. A write whose call failed
 * because catalog died may or may not have committed: the comparison is
 * against what catalog actually holds, never against the writers' intent,
 * but every acknowledged write must be there (no committed transaction is
 * lost to a kill).
 *
 * Bounded: about CHAOS_MS of chaos (at most CHAOS_MAX_MS), then the
 * catch-up. MOAT_TEST_SEED=N repeats a run's random choices (not its
 * timing). Run alone: tests/it_test_events_crash
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "moat/buf.h"

#define CHAOS_MS         20000 /* at least this long... */
#define CHAOS_MAX_MS     40000 /* ...and at most this, scaled */
#define MIN_CHANGES      200   /* acknowledged changes, at least */
#define WRITERS          2
#define CATCH_UP_MS      30000
#define WRITER_MAX_KNOWN 64 /* products a writer keeps working on */

static struct {
    char *tmp;
    char *cat_data, *search_data;
    char *stop_path;  /* writers stop when this file exists */
    char *ack_path;   /* acknowledged changes, one line each */
    char *maybe_path; /* deletes whose outcome the writer never learnt */
    char catalog_url_env[96];
    char access_log_env[24];
    struct h_service cat, search;
    uint64_t seed;
} F;

/* ---- small helpers ---- */

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: enough for choosing operations and moments. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static unsigned rng_below(uint64_t *s, unsigned n)
{
    return (unsigned)(rng_next(s) % n);
}

static const char *const *service_env(const struct h_service *svc)
{
    static const char *env[3];
    env[0] = F.access_log_env;
    env[1] = svc == &F.search ? F.catalog_url_env : NULL;
    env[2] = NULL;
    return env;
}

/* ---- HTTP (the test process and the writers alike) ---- */

static void req(struct h_resp *r, const char *method, const char *url,
                const char *const *headers, const char *body)
{
    if (body)
        h_send_json(r, method, url, body, headers);
    else
        h_http(r, method, url, headers, NULL, 0);
}

static json_t *get_json(const char *url)
{
    struct h_resp r;
    req(&r, "GET", url, NULL, NULL);
    h_assert_status(&r, 200);
    json_t *j = h_resp_json(&r);
    assert_non_null(j);
    h_resp_release(&r);
    return j;
}

/* ---- the writers ---- */

struct known {
    char id[64];
    json_int_t version;
};

static int maybe_fd = -1; /* a writer's F.maybe_path */

static void ack(int fd, const char *op, const char *id, json_int_t version)
{
    char line[160];
    int n = snprintf(line, sizeof(line), "%s %s %lld\n", op, id,
                     (long long)version);
    /* One write per line with O_APPEND: lines of the writers never mix. */
    if (write(fd, line, (size_t)n) != n)
        _exit(3);
}

static void forget(struct known *k, size_t *n, size_t i)
{
    k[i] = k[--*n];
}

/* One change; returns true when catalog acknowledged it. */
static bool writer_step(int me, uint64_t *rng, struct known *k, size_t *n,
                        int fd, unsigned serial)
{
    unsigned roll = rng_below(rng, 100);
    struct h_resp r;
    bool acked = false;
    if (*n == 0 || (roll < 40 && *n < WRITER_MAX_KNOWN)) {
        char body[256];
        snprintf(body, sizeof(body),
                 "{\"sku\": \"CR-%d-%u-%llx\", \"name\": \"Crash %d %u\", "
                 "\"price\": {\"amount\": %u, \"currency\": \"EUR\"}, "
                 "\"attributes\": {\"writer\": \"%d\"}}",
                 me, serial, (unsigned long long)(rng_next(rng) & 0xffffff), me,
                 serial, 100 + rng_below(rng, 10000), me);
        req(&r, "POST", h_fmt("%s/v1/products", F.cat.url), NULL, body);
        if (r.status == 201) {
            json_t *p = h_resp_json(&r);
            snprintf(k[*n].id, sizeof(k[*n].id), "%s", h_jstr(p, "id"));
            k[*n].version = h_jint(p, "version");
            ack(fd, "create", k[*n].id, k[*n].version);
            (*n)++;
            json_decref(p);
            acked = true;
        }
    } else {
        size_t i = rng_below(rng, (unsigned)*n);
        const char *url = h_fmt("%s/v1/products/%s", F.cat.url, k[i].id);
        if (roll < 80) {
            char if_match[48], body[160];
            snprintf(if_match, sizeof(if_match), "If-Match: \"v%lld\"",
                     (long long)k[i].version);
            const char *headers[] = {if_match, NULL};
            if (rng_below(rng, 2))
                snprintf(body, sizeof(body),
                         "{\"name\": \"Crash %d %u v%lld\"}", me, serial,
                         (long long)k[i].version + 1);
            else
                snprintf(body, sizeof(body),
                         "{\"price\": {\"amount\": %u, \"currency\": "
                         "\"%s\"}}",
                         100 + rng_below(rng, 10000),
                         rng_below(rng, 2) ? "EUR" : "USD");
            req(&r, "PATCH", url, headers, body);
            if (r.status == 200) {
                json_t *p = h_resp_json(&r);
                k[i].version = h_jint(p, "version");
                ack(fd, "update", k[i].id, k[i].version);
                json_decref(p);
                acked = true;
            } else if (r.status == 412) {
                /* A write of ours committed although its call failed:
                 * take the version catalog has now. */
                const char *etag = h_resp_header(&r, "ETag");
                if (etag && etag[0] == '"' && etag[1] == 'v')
                    k[i].version = strtoll(etag + 2, NULL, 10);
            } else if (r.status == 404) {
                forget(k, n, i); /* a delete of ours committed unseen */
            }
        } else {
            req(&r, "DELETE", url, NULL, NULL);
            if (r.status == 204) {
                ack(fd, "delete", k[i].id, 0);
                forget(k, n, i);
                acked = true;
            } else if (r.status == 404) {
                forget(k, n, i);
            } else {
                /* Catalog may have died after committing it: the product
                 * may be gone although no delete was acknowledged. */
                ack(maybe_fd, "delete", k[i].id, 0);
            }
        }
    }
    bool refused = r.status == 0 || r.status == 503;
    h_resp_release(&r);
    if (refused)
        h_sleep_ms(20); /* catalog is down: do not spin */
    return acked;
}

MOAT_NORETURN static void writer_main(int me)
{
    /* This process must never run the harness's atexit (it would kill
     * the services): it leaves with _exit only. */
    uint64_t rng = F.seed * 31 + (uint64_t)me + 1;
    struct known k[WRITER_MAX_KNOWN];
    size_t n = 0;
    int fd = open(F.ack_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    maybe_fd = open(F.maybe_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 || maybe_fd < 0)
        _exit(2);
    for (unsigned serial = 0; access(F.stop_path, F_OK) != 0; serial++)
        writer_step(me, &rng, k, &n, fd, serial);
    close(fd);
    close(maybe_fd);
    _exit(0);
}

static size_t count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;
    int c;
    if (!f)
        return 0;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    const char *seed = getenv("MOAT_TEST_SEED");
    F.seed = seed ? strtoull(seed, NULL, 10) : (uint64_t)moat_wall_ms();
    if (F.seed == 0)
        F.seed = 1;
    fprintf(stderr, "events crash test: MOAT_TEST_SEED=%llu\n",
            (unsigned long long)F.seed);
    F.tmp = h_tmpdir_new("events-crash");
    F.cat_data = moat_xasprintf("%s/catalog-data", F.tmp);
    F.search_data = moat_xasprintf("%s/search-data", F.tmp);
    F.stop_path = moat_xasprintf("%s/writers-stop", F.tmp);
    F.ack_path = moat_xasprintf("%s/acknowledged", F.tmp);
    F.maybe_path = moat_xasprintf("%s/maybe-deleted", F.tmp);
    /* Hundreds of requests: keep the logs to what matters. */
    snprintf(F.access_log_env, sizeof(F.access_log_env), "MOAT_ACCESS_LOG=0");
    if (h_service_start(&F.cat, "catalog", F.tmp, F.cat_data,
                        service_env(&F.cat)) != 0)
        return -1;
    snprintf(F.catalog_url_env, sizeof(F.catalog_url_env),
             "MOAT_SEARCH_CATALOG_URL=%s", F.cat.url);
    if (h_service_start(&F.search, "search", F.tmp, F.search_data,
                        service_env(&F.search)) != 0)
        return -1;
    /* Admin on catalog, plain service on search; kept fresh by the
     * harness for as long as the suite runs. */
    h_auto_service_token(F.cat.url, "catalog", "usr_admin", "admin");
    h_auto_service_token(F.search.url, "search", NULL, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int search_rc = h_service_stop(&F.search);
    int cat_rc = h_service_stop(&F.cat);
    if (search_rc || cat_rc)
        print_error("services must exit 0 on SIGTERM: search %d, catalog %d\n",
                    search_rc, cat_rc);
    h_service_release(&F.search);
    h_service_release(&F.cat);
    h_auto_headers_clear();
    h_rmtree(F.tmp);
    free(F.tmp);
    free(F.cat_data);
    free(F.search_data);
    free(F.stop_path);
    free(F.ack_path);
    free(F.maybe_path);
    return search_rc == 0 && cat_rc == 0 ? 0 : -1;
}

/* ---- the test ---- */

/* Every product catalog holds: id -> {sku, name, price, version}. */
static json_t *catalog_state(void)
{
    json_t *all = json_object();
    char *cursor = NULL;
    for (;;) {
        json_t *page =
            get_json(cursor ? h_fmt("%s/v1/products?limit=100&cursor=%s",
                                    F.cat.url, cursor)
                            : h_fmt("%s/v1/products?limit=100", F.cat.url));
        free(cursor);
        cursor = NULL;
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(page, "items"), i, p)
        {
            json_object_set_new(all, h_jstr(p, "id"),
                                json_pack("{s:s, s:s, s:O, s:I}", "sku",
                                          h_jstr(p, "sku"), "name",
                                          h_jstr(p, "name"), "price",
                                          json_object_get(p, "price"),
                                          "version", h_jint(p, "version")));
        }
        json_t *next = json_object_get(page, "next_cursor");
        if (json_is_string(next))
            cursor = moat_xstrdup(json_string_value(next));
        json_decref(page);
        if (!cursor)
            return all;
    }
}

/* The same from search's index and indexed documents. */
static json_t *search_state(void)
{
    json_t *all = json_object();
    char *cursor = NULL;
    for (;;) {
        json_t *page =
            get_json(cursor ? h_fmt("%s/v1/search?limit=100&cursor=%s",
                                    F.search.url, cursor)
                            : h_fmt("%s/v1/search?limit=100", F.search.url));
        free(cursor);
        cursor = NULL;
        size_t i;
        json_t *hit;
        json_array_foreach(json_object_get(page, "items"), i, hit)
        {
            json_t *doc = get_json(h_fmt("%s/v1/search/products/%s",
                                         F.search.url, h_jstr(hit, "id")));
            /* The hit (index columns) and the document must agree. */
            assert_string_equal(h_jstr(doc, "name"), h_jstr(hit, "name"));
            assert_true(json_equal(json_object_get(doc, "price"),
                                   json_object_get(hit, "price")));
            json_object_set_new(all, h_jstr(hit, "id"),
                                json_pack("{s:s, s:s, s:O, s:I}", "sku",
                                          h_jstr(hit, "sku"), "name",
                                          h_jstr(hit, "name"), "price",
                                          json_object_get(hit, "price"),
                                          "version", h_jint(doc, "version")));
            json_decref(doc);
        }
        json_t *next = json_object_get(page, "next_cursor");
        if (json_is_string(next))
            cursor = moat_xstrdup(json_string_value(next));
        json_decref(page);
        if (!cursor)
            return all;
    }
}

/* Read "op id version" lines into ids: id -> version (0 for a delete). */
static json_t *read_log(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    json_t *last = json_object();
    char op[16], id[64];
    long long version;
    while (fscanf(f, "%15s %63s %lld", op, id, &version) == 3)
        json_object_set_new(
            last, id, json_integer(strcmp(op, "delete") == 0 ? 0 : version));
    fclose(f);
    return last;
}

/*
 * Every acknowledged write is in catalog's final state: a product is
 * missing only after an acknowledged delete or one whose answer was lost
 * (the writer learnt nothing, catalog may have committed it), and it is at
 * least at its last acknowledged version.
 */
static void assert_acknowledged_durable(const json_t *cat)
{
    json_t *last = read_log(F.ack_path);
    json_t *maybe = read_log(F.maybe_path);
    const char *key;
    json_t *v;
    json_object_foreach(last, key, v)
    {
        json_t *p = json_object_get(cat, key);
        if (json_integer_value(v) == 0) {
            if (p)
                fail_msg("acknowledged delete of %s was lost", key);
        } else if (!p && !json_object_get(maybe, key)) {
            fail_msg("acknowledged product %s was lost", key);
        } else if (p && h_jint(p, "version") < json_integer_value(v)) {
            fail_msg("acknowledged version %lld of %s was lost",
                     (long long)json_integer_value(v), key);
        }
    }
    json_decref(last);
    json_decref(maybe);
}

/* Search's cursor on catalog; no event may be dead-lettered, and the
 * cursor never passes the head. */
static int64_t search_cursor(void)
{
    json_t *st = get_json(h_fmt("%s/v1/admin/consumer", F.search.url));
    json_t *src = json_array_get(json_object_get(st, "sources"), 0);
    int64_t cursor = h_jint(src, "cursor");
    json_t *dead = json_object_get(src, "dead_letters");
    assert_int_equal(h_jint(dead, "failed") + h_jint(dead, "blocked"), 0);
    json_decref(st);
    return cursor;
}

static void test_crash_consistency(void **state)
{
    MOAT_UNUSED(state);
    uint64_t rng = F.seed;
    h_write_file(F.ack_path, "");
    h_write_file(F.maybe_path, "");
    pid_t writers[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        fflush(NULL);
        writers[i] = fork();
        assert_true(writers[i] >= 0);
        if (writers[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            writer_main(i);
        }
    }

    /* Chaos: kill catalog or search at a random moment, restart it after
     * a random pause, until enough changes were acknowledged. */
    uint64_t start = moat_mono_ms();
    unsigned kills[2] = {0, 0};
    for (unsigned round = 0;; round++) {
        uint64_t elapsed = moat_mono_ms() - start;
        size_t acked = count_lines(F.ack_path);
        if ((elapsed >= h_scaled_ms(CHAOS_MS) && acked >= MIN_CHANGES &&
             kills[0] >= 3 && kills[1] >= 3) ||
            elapsed >= h_scaled_ms(CHAOS_MAX_MS))
            break;
        /* Random pauses shape the chaos (when the kills come), nothing is
         * waited for. */
        h_sleep_ms(200 + rng_below(&rng, 1300));
        /* Alternate, with a random twist, so that both die several times. */
        int which = (round + rng_below(&rng, 4) / 3) % 2;
        struct h_service *victim = which ? &F.search : &F.cat;
        h_service_kill(victim);
        kills[which]++;
        h_sleep_ms(rng_below(&rng, 400));
        assert_int_equal(h_service_restart(victim, service_env(victim)), 0);
    }
    h_write_file(F.stop_path, "");
    for (int i = 0; i < WRITERS; i++) {
        int status = 0;
        assert_int_equal(waitpid(writers[i], &status, 0), writers[i]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    size_t acked = count_lines(F.ack_path);
    fprintf(stderr,
            "events crash test: %zu acknowledged changes in %.1f s, catalog "
            "killed %u times, search %u times\n",
            acked, (double)(moat_mono_ms() - start) / 1000.0, kills[0],
            kills[1]);
    assert_true(acked >= MIN_CHANGES);
    assert_true(kills[0] >= 1 && kills[1] >= 1);

    /* Catch-up: search's cursor reaches catalog's head. */
    int64_t head = (int64_t)h_metric(F.cat.url, "moat_outbox_head_seq");
    assert_true(head >= (int64_t)acked);
    int64_t cursor = 0;
    H_WAIT_UNTIL((cursor = search_cursor()) == head, CATCH_UP_MS,
                 "search's cursor (at %lld) to reach catalog's head %lld",
                 (long long)cursor, (long long)head);

    /* The index is exactly catalog's state. */
    json_t *cat = catalog_state();
    json_t *idx = search_state();
    assert_acknowledged_durable(cat);
    const char *id;
    json_t *want;
    json_object_foreach(cat, id, want)
    {
        json_t *got = json_object_get(idx, id);
        if (!got)
            fail_msg("product %s is in catalog but not in search", id);
        if (!json_equal(want, got)) {
            char *a = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
            char *b = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
            fail_msg("product %s: catalog %s, search %s", id, a, b);
        }
    }
    json_object_foreach(idx, id, want)
    {
        if (!json_object_get(cat, id))
            fail_msg("product %s is in search but not in catalog", id);
    }
    fprintf(stderr,
            "events crash test: %zu products, %lld events; index equals "
            "catalog\n",
            json_object_size(cat), (long long)head);
    json_decref(cat);
    json_decref(idx);

    /* Every event took effect exactly once. */
    json_t *a = get_json(h_fmt("%s/_test/applications", F.search.url));
    assert_int_equal(h_jint(a, "events"), head);
    assert_int_equal(h_jint(a, "max_applications"), 1);
    json_decref(a);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_consistency),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("events_crash", tests, group_setup,
                                       group_teardown);
}
