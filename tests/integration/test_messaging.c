/*
 * test_messaging.c - the messaging service on its own: a real
 * moat-messaging process, called directly with service tokens that carry
 * the end user (as the gateway sends them). Live delivery between two
 * members (a parked long poll answered by the other's send), strangers
 * refused, idempotent sends, edits and tombstones, unread counts, direct
 * conversation dedup, pages both ways, members and caps, bad input, a
 * graceful stop answering parked polls, and a kill -9 that must not lose
 * an acknowledged message.
 *
 * test_delivery_latency prints the send -> waiting member latency
 * (p50/p99) over MOAT_MESSAGING_BENCH messages (default 100): a
 * measurement for docs/messaging.md, not a timed assertion.
 */
#include "moat/common.h"

#include "harness.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static struct {
    char *tmp;
    struct h_service svc;
} F;

#define ALICE "usr_alice"
#define BOB   "usr_bob"
#define CAROL "usr_carol"
#define DAVE  "usr_dave"

static const char *as(const char *user)
{
    return h_service_token("messaging", user, user ? "customer" : NULL);
}

/* Strict, unlike h_jstr: NULL when the member is missing, so that a
 * missing member fails the assertions that rely on it
 * (assert_non_null(str(...)) and two answers' ids compared). */
static const char *str(json_t *j, const char *key)
{
    return json_string_value(json_object_get(j, key));
}

static json_int_t num(json_t *j, const char *key)
{
    return json_integer_value(json_object_get(j, key));
}

/* method path as user with an optional JSON body and extra header. */
static void call(struct h_resp *r, const char *method, const char *path,
                 const char *user, const char *json, const char *extra)
{
    const char *hdrs[] = {as(user), extra, NULL};
    const char *url = h_fmt("%s%s", F.svc.url, path);
    if (json)
        h_send_json(r, method, url, json, hdrs);
    else
        h_http(r, method, url, hdrs, NULL, 0);
}

/* call() that must answer status; returns the JSON body (new reference,
 * NULL for 204). */
static json_t *call_ok(const char *method, const char *path, const char *user,
                       const char *json, long status)
{
    struct h_resp r;
    call(&r, method, path, user, json, NULL);
    h_assert_status(&r, status);
    json_t *j = h_resp_json(&r);
    h_resp_release(&r);
    return j;
}

/* A new group of creator and members (JSON array text); its id. */
static const char *new_group(const char *creator, const char *members)
{
    json_t *c =
        call_ok("POST", "/v1/conversations", creator,
                h_fmt("{\"kind\": \"group\", \"members\": %s}", members), 201);
    const char *id = h_fmt("%s", str(c, "id"));
    json_decref(c);
    return id;
}

/* Send text to conv as user (201); returns the message (new reference). */
static json_t *send_msg(const char *conv, const char *user, const char *text)
{
    json_t *body = json_pack("{s:s}", "text", text);
    char *s = json_dumps(body, JSON_COMPACT);
    json_t *m = call_ok("POST", h_fmt("/v1/conversations/%s/messages", conv),
                        user, s, 201);
    free(s);
    json_decref(body);
    return m;
}

static json_t *get_conv(const char *conv, const char *user)
{
    return call_ok("GET", h_fmt("/v1/conversations/%s", conv), user, NULL, 200);
}

/* The events messaging published for subject, in feed order (every page
 * of the feed: the latency test alone appends MOAT_MESSAGING_BENCH). */
static json_t *events_for(const char *subject)
{
    json_t *out = json_array();
    json_int_t after = 0, head = 1;
    while (after < head) {
        json_t *j = call_ok(
            "GET", h_fmt("/v1/events?after=%lld&limit=1000", (long long)after),
            NULL, NULL, 200);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(j, "events"), i, e)
        {
            if (strcmp(str(e, "subject"), subject) == 0)
                json_array_append(out, e);
        }
        json_int_t next = num(j, "next_after");
        head = num(j, "head");
        json_decref(j);
        if (next == after)
            break;
        after = next;
    }
    return out;
}

/* The moat_messaging_parked_polls gauge (-1 if /metrics fails). */
static long parked_polls(void)
{
    return (long)h_metric(F.svc.url, "moat_messaging_parked_polls");
}

/* Are exactly n polls parked in the service? *seen: the gauge read. */
static bool polls_parked(long n, long *seen)
{
    *seen = parked_polls();
    return *seen == n;
}

/* Wait until n polls are parked in the service. */
static void wait_parked(long n)
{
    long seen = -1;
    H_WAIT_UNTIL(polls_parked(n, &seen), H_WAIT_MS,
                 "%ld parked long polls (moat_messaging_parked_polls is %ld)",
                 n, seen);
}

/* ---- a long poll in a thread of its own ---- */

struct poller {
    pthread_t thread;
    char url[256];
    char auth[1024]; /* minted on the test thread: h_* buffers are not
                      * thread-safe */
    struct h_resp resp;
    uint64_t done_ns; /* when the response arrived */
};

static void *poll_thread(void *arg)
{
    struct poller *p = arg;
    const char *hdrs[] = {p->auth, NULL};
    h_http(&p->resp, "GET", p->url, hdrs, NULL, 0);
    p->done_ns = moat_mono_ns();
    return NULL;
}

static void poll_start(struct poller *p, const char *conv, const char *user,
                       long long after, int wait_s)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->url, sizeof(p->url),
             "%s/v1/conversations/%s/messages?after=%lld&wait=%d", F.svc.url,
             conv, after, wait_s);
    snprintf(p->auth, sizeof(p->auth), "%s", as(user));
    assert_int_equal(pthread_create(&p->thread, NULL, poll_thread, p), 0);
}

/* Join the poller; its response body as JSON (new reference). */
static json_t *poll_join(struct poller *p, long status)
{
    pthread_join(p->thread, NULL);
    h_assert_status(&p->resp, status);
    json_t *j = h_resp_json(&p->resp);
    h_resp_release(&p->resp);
    return j;
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    MOAT_UNUSED(state);
    F.tmp = h_tmpdir_new("messaging");
    /* h_http's first call initialises curl: before any thread does. */
    struct h_resp r;
    h_get(&r, "http://127.0.0.1:1/");
    h_resp_release(&r);
    return h_service_start(&F.svc, "messaging", F.tmp,
                           h_fmt("%s/messaging-data", F.tmp), NULL);
}

static int group_teardown(void **state)
{
    MOAT_UNUSED(state);
    int rc = h_service_stop(&F.svc);
    h_service_release(&F.svc);
    h_rmtree(F.tmp);
    free(F.tmp);
    if (rc)
        print_error("messaging must exit 0 on SIGTERM: %d\n", rc);
    return rc == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_live_exchange(void **state)
{
    MOAT_UNUSED(state);
    json_t *c =
        call_ok("POST", "/v1/conversations", ALICE,
                "{\"kind\": \"direct\", \"members\": [\"" BOB "\"]}", 201);
    char conv[64];
    snprintf(conv, sizeof(conv), "%s", str(c, "id"));
    assert_string_equal(str(c, "kind"), "direct");
    assert_int_equal(json_array_size(json_object_get(c, "members")), 2);
    json_decref(c);

    /* Bob waits; Alice's send answers his poll. */
    struct poller p;
    poll_start(&p, conv, BOB, 0, 30);
    wait_parked(1);
    json_t *sent = send_msg(conv, ALICE, "hello Bob");
    json_t *page = poll_join(&p, 200);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 1);
    json_t *got = json_array_get(items, 0);
    assert_string_equal(str(got, "id"), str(sent, "id"));
    assert_string_equal(str(got, "text"), "hello Bob");
    assert_string_equal(str(got, "sender_id"), ALICE);
    assert_int_equal(num(got, "seq"), 1);
    assert_int_equal(num(page, "next_cursor"), 1);
    json_decref(page);
    json_decref(sent);

    /* And back: Alice waits after seq 1, Bob answers. */
    poll_start(&p, conv, ALICE, 1, 30);
    wait_parked(1);
    json_decref(send_msg(conv, BOB, "hi Alice"));
    page = poll_join(&p, 200);
    got = json_array_get(json_object_get(page, "items"), 0);
    assert_string_equal(str(got, "text"), "hi Alice");
    assert_string_equal(str(got, "sender_id"), BOB);
    assert_int_equal(num(got, "seq"), 2);
    json_decref(page);
    assert_int_equal(parked_polls(), 0);

    /* A poll with something already after its cursor answers at once. */
    poll_start(&p, conv, BOB, 0, 30);
    page = poll_join(&p, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 2);
    json_decref(page);
    /* A poll with nothing to wait for answers empty when its wait ends. */
    poll_start(&p, conv, BOB, 2, 1);
    page = poll_join(&p, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 0);
    assert_int_equal(num(page, "next_cursor"), 2);
    json_decref(page);

    /* Events carry references, not the text. */
    json_t *ev = events_for(conv);
    assert_int_equal(json_array_size(ev), 3);
    assert_string_equal(str(json_array_get(ev, 0), "type"),
                        "ConversationCreated");
    json_t *d = json_object_get(json_array_get(ev, 1), "data");
    assert_string_equal(str(json_array_get(ev, 1), "type"), "MessageSent");
    assert_string_equal(str(d, "conversation_id"), conv);
    assert_string_equal(str(d, "sender_id"), ALICE);
    assert_int_equal(num(d, "seq"), 1);
    assert_non_null(str(d, "message_id"));
    assert_null(json_object_get(d, "text"));
    json_decref(ev);
}

static void test_stranger_refused(void **state)
{
    MOAT_UNUSED(state);
    const char *conv = h_fmt("%s", new_group(ALICE, "[\"" BOB "\"]"));
    char id[64];
    snprintf(id, sizeof(id), "%s", conv);
    json_t *m = send_msg(id, ALICE, "members only");
    char mid[64];
    snprintf(mid, sizeof(mid), "%s", str(m, "id"));
    json_decref(m);

    /* Carol learns nothing: 404 everywhere, as for no conversation. */
    static const struct {
        const char *method, *fmt, *body;
    } cases[] = {
        {"GET", "/v1/conversations/%s", NULL},
        {"GET", "/v1/conversations/%s/messages", NULL},
        {"GET", "/v1/conversations/%s/messages?after=0&wait=5", NULL},
        {"POST", "/v1/conversations/%s/messages", "{\"text\": \"hi\"}"},
        {"POST", "/v1/conversations/%s/read", "{\"up_to\": 1}"},
        {"POST", "/v1/conversations/%s/members",
         "{\"members\": [\"" CAROL "\"]}"},
        {"DELETE", "/v1/conversations/%s/members/" CAROL, NULL},
    };
    struct h_resp r;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        call(&r, cases[i].method, h_fmt(cases[i].fmt, id), CAROL, cases[i].body,
             NULL);
        h_assert_problem(&r, 404);
        assert_non_null(strstr(r.body, "no such conversation"));
        h_resp_release(&r);
    }
    call(&r, "GET", h_fmt("/v1/conversations/%s/messages/%s", id, mid), CAROL,
         NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    call(&r, "DELETE", h_fmt("/v1/conversations/%s/messages/%s", id, mid),
         CAROL, NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    /* The same answer as for an id that does not exist. */
    call(&r, "GET", "/v1/conversations/cnv_01J0000000000000000000000A", CAROL,
         NULL, NULL);
    h_assert_problem(&r, 404);
    assert_non_null(strstr(r.body, "no such conversation"));
    h_resp_release(&r);

    /* Her list does not show it. */
    json_t *list = call_ok("GET", "/v1/conversations", CAROL, NULL, 200);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(list, "items"), i, c)
        assert_string_not_equal(str(c, "id"), id);
    json_decref(list);
    /* And nothing she tried was stored. */
    json_t *page = call_ok("GET", h_fmt("/v1/conversations/%s/messages", id),
                           BOB, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 1);
    json_decref(page);
}

static void test_idempotent_send(void **state)
{
    MOAT_UNUSED(state);
    char conv[64], other[64];
    snprintf(conv, sizeof(conv), "%s", new_group(ALICE, "[\"" BOB "\"]"));
    snprintf(other, sizeof(other), "%s", new_group(ALICE, "[\"" BOB "\"]"));
    const char *path = h_fmt("/v1/conversations/%s/messages", conv);
    char p[128];
    snprintf(p, sizeof(p), "%s", path);

    struct h_resp r;
    call(&r, "POST", p, ALICE, "{\"text\": \"only once\"}",
         "Idempotency-Key: txn-1");
    h_assert_status(&r, 201);
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    json_t *first = h_resp_json(&r);
    h_resp_release(&r);

    /* The client retries: the same message, not a second one. */
    call(&r, "POST", p, ALICE, "{\"text\": \"only once\"}",
         "Idempotency-Key: txn-1");
    h_assert_status(&r, 201);
    assert_string_equal(h_resp_header(&r, "Idempotent-Replayed"), "true");
    json_t *again = h_resp_json(&r);
    assert_true(json_equal(first, again));
    json_decref(again);
    h_resp_release(&r);

    /* Same key, another text, or another conversation: 422. */
    call(&r, "POST", p, ALICE, "{\"text\": \"something else\"}",
         "Idempotency-Key: txn-1");
    h_assert_problem(&r, 422);
    assert_non_null(strstr(r.body, "idempotency-key-reused"));
    h_resp_release(&r);
    call(&r, "POST", h_fmt("/v1/conversations/%s/messages", other), ALICE,
         "{\"text\": \"only once\"}", "Idempotency-Key: txn-1");
    h_assert_problem(&r, 422);
    h_resp_release(&r);

    /* Keys are per sender: Bob's txn-1 is his own message. */
    call(&r, "POST", p, BOB, "{\"text\": \"only once\"}",
         "Idempotency-Key: txn-1");
    h_assert_status(&r, 201);
    assert_null(h_resp_header(&r, "Idempotent-Replayed"));
    h_resp_release(&r);

    json_t *page = call_ok("GET", p, ALICE, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 2);
    json_decref(page);
    json_t *ev = events_for(conv);
    size_t sent = 0, i;
    json_t *e;
    json_array_foreach(ev, i, e) sent +=
        strcmp(str(e, "type"), "MessageSent") == 0;
    assert_int_equal(sent, 2);
    json_decref(ev);
    json_decref(first);

    /* A malformed key. */
    call(&r, "POST", p, ALICE, "{\"text\": \"x\"}", "Idempotency-Key: a b");
    h_assert_problem(&r, 400);
    assert_non_null(strstr(r.body, "idempotency-key-malformed"));
    h_resp_release(&r);
}

static void test_edit_and_delete(void **state)
{
    MOAT_UNUSED(state);
    char conv[64], mid[64], path[160];
    snprintf(conv, sizeof(conv), "%s", new_group(ALICE, "[\"" BOB "\"]"));
    json_decref(send_msg(conv, ALICE, "first"));
    json_t *m = send_msg(conv, ALICE, "helo");
    snprintf(mid, sizeof(mid), "%s", str(m, "id"));
    assert_true(json_is_null(json_object_get(m, "edited_at")));
    json_decref(m);
    json_decref(send_msg(conv, BOB, "third"));
    snprintf(path, sizeof(path), "/v1/conversations/%s/messages/%s", conv, mid);

    /* Someone else's message: 403 for a member. */
    struct h_resp r;
    call(&r, "PATCH", path, BOB, "{\"text\": \"hacked\"}", NULL);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    call(&r, "DELETE", path, BOB, NULL, NULL);
    h_assert_problem(&r, 403);
    h_resp_release(&r);

    /* Two edits by the sender: the latest text, with its history. */
    m = call_ok("PATCH", path, ALICE, "{\"text\": \"hello\"}", 200);
    assert_string_equal(str(m, "text"), "hello");
    assert_true(num(m, "edited_at") > 0);
    json_decref(m);
    m = call_ok("PATCH", path, ALICE, "{\"text\": \"hello, Bob\"}", 200);
    json_decref(m);
    m = call_ok("GET", path, BOB, NULL, 200);
    assert_string_equal(str(m, "text"), "hello, Bob");
    assert_string_equal(str(m, "original_text"), "helo");
    json_t *edits = json_object_get(m, "edits");
    assert_int_equal(json_array_size(edits), 2);
    assert_string_equal(str(json_array_get(edits, 0), "text"), "hello");
    assert_string_equal(str(json_array_get(edits, 1), "text"), "hello, Bob");
    assert_int_equal(num(m, "seq"), 2);
    json_decref(m);

    /* Delete: a tombstone that keeps its place. */
    json_decref(call_ok("DELETE", path, ALICE, NULL, 204));
    json_decref(call_ok("DELETE", path, ALICE, NULL, 204)); /* again: same */
    json_t *page = call_ok("GET", h_fmt("/v1/conversations/%s/messages", conv),
                           BOB, NULL, 200);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 3);
    json_t *t = json_array_get(items, 1);
    assert_string_equal(str(t, "id"), mid);
    assert_true(json_is_true(json_object_get(t, "deleted")));
    assert_true(json_is_null(json_object_get(t, "text")));
    assert_true(num(t, "deleted_at") > 0);
    assert_string_equal(str(json_array_get(items, 2), "text"), "third");
    json_decref(page);
    m = call_ok("GET", path, BOB, NULL, 200);
    assert_true(json_is_null(json_object_get(m, "original_text")));
    assert_int_equal(json_array_size(json_object_get(m, "edits")), 0);
    json_decref(m);
    call(&r, "PATCH", path, ALICE, "{\"text\": \"back\"}", NULL);
    h_assert_problem(&r, 409);
    h_resp_release(&r);

    /* Events: edited and deleted, without texts. */
    json_t *ev = events_for(conv);
    size_t i, edited = 0, deleted = 0;
    json_t *e;
    json_array_foreach(ev, i, e)
    {
        json_t *d = json_object_get(e, "data");
        assert_null(json_object_get(d, "text"));
        if (strcmp(str(e, "type"), "MessageEdited") == 0) {
            edited++;
            assert_string_equal(str(d, "message_id"), mid);
        }
        if (strcmp(str(e, "type"), "MessageDeleted") == 0) {
            deleted++;
            assert_string_equal(str(d, "message_id"), mid);
            assert_int_equal(num(d, "seq"), 2);
        }
    }
    assert_int_equal(edited, 2);
    assert_int_equal(deleted, 1);
    json_decref(ev);

    /* A message id of another conversation is not found here. */
    char other[64];
    snprintf(other, sizeof(other), "%s", new_group(ALICE, "[]"));
    call(&r, "GET", h_fmt("/v1/conversations/%s/messages/%s", other, mid),
         ALICE, NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
}

static json_int_t unread(const char *conv, const char *user)
{
    json_t *c = get_conv(conv, user);
    json_int_t n = num(c, "unread_count");
    json_decref(c);
    return n;
}

static void test_unread_counts(void **state)
{
    MOAT_UNUSED(state);
    char conv[64], m3[64], path[128];
    snprintf(conv, sizeof(conv), "%s",
             new_group(ALICE, "[\"" BOB "\", \"" CAROL "\"]"));
    snprintf(path, sizeof(path), "/v1/conversations/%s/read", conv);
    json_decref(send_msg(conv, ALICE, "one"));
    json_decref(send_msg(conv, ALICE, "two"));
    json_t *m = send_msg(conv, ALICE, "three");
    snprintf(m3, sizeof(m3), "%s", str(m, "id"));
    json_decref(m);
    json_decref(send_msg(conv, BOB, "four"));

    /* Nobody counts their own messages. */
    assert_int_equal(unread(conv, ALICE), 1);
    assert_int_equal(unread(conv, BOB), 3);
    assert_int_equal(unread(conv, CAROL), 4);

    /* Bob reads up to seq 2, then (late) up to 1: the mark stays. */
    json_t *rd = call_ok("POST", path, BOB, "{\"up_to\": 2}", 200);
    assert_int_equal(num(rd, "read_up_to"), 2);
    assert_int_equal(num(rd, "unread_count"), 1);
    json_decref(rd);
    rd = call_ok("POST", path, BOB, "{\"up_to\": 1}", 200);
    assert_int_equal(num(rd, "read_up_to"), 2);
    json_decref(rd);
    assert_int_equal(unread(conv, BOB), 1);

    /* A deleted message is not unread. */
    json_decref(call_ok("DELETE",
                        h_fmt("/v1/conversations/%s/messages/%s", conv, m3),
                        ALICE, NULL, 204));
    assert_int_equal(unread(conv, BOB), 0);
    assert_int_equal(unread(conv, CAROL), 3);

    /* Carol reads by message id; the list shows the counts too. */
    rd = call_ok("POST", path, CAROL, h_fmt("{\"up_to\": \"%s\"}", m3), 200);
    assert_int_equal(num(rd, "read_up_to"), 3);
    assert_int_equal(num(rd, "unread_count"), 1);
    json_decref(rd);
    json_t *list = call_ok("GET", "/v1/conversations", CAROL, NULL, 200);
    json_t *first = json_array_get(json_object_get(list, "items"), 0);
    assert_string_equal(str(first, "id"), conv);
    assert_int_equal(num(first, "unread_count"), 1);
    assert_int_equal(num(first, "read_up_to"), 3);
    json_decref(list);

    /* Beyond the last message, or a message elsewhere: 422. */
    struct h_resp r;
    call(&r, "POST", path, BOB, "{\"up_to\": 5}", NULL);
    h_assert_problem_error(&r, "pointer", "/up_to");
    h_resp_release(&r);
    call(&r, "POST", path, BOB, "{\"up_to\": \"msg_x\"}", NULL);
    h_assert_problem_error(&r, "pointer", "/up_to");
    h_resp_release(&r);
    call(&r, "POST", path, BOB, "{\"up_to\": -1}", NULL);
    h_assert_problem_error(&r, "pointer", "/up_to");
    h_resp_release(&r);
}

static void test_direct_dedup(void **state)
{
    MOAT_UNUSED(state);
    struct h_resp r;
    call(&r, "POST", "/v1/conversations", CAROL,
         "{\"kind\": \"direct\", \"members\": [\"" DAVE "\"]}", NULL);
    h_assert_status(&r, 201);
    assert_non_null(h_resp_header(&r, "Location"));
    json_t *a = h_resp_json(&r);
    h_resp_release(&r);
    /* Again, from the other side (naming both): the same conversation. */
    call(&r, "POST", "/v1/conversations", DAVE,
         "{\"kind\": \"direct\", \"members\": [\"" CAROL "\", \"" DAVE "\"]}",
         NULL);
    h_assert_status(&r, 200);
    json_t *b = h_resp_json(&r);
    h_resp_release(&r);
    assert_string_equal(str(a, "id"), str(b, "id"));
    json_decref(a);
    json_decref(b);

    static const char *const bad[] = {
        "{\"kind\": \"direct\", \"members\": [\"" CAROL "\"]}", /* self */
        "{\"kind\": \"direct\", \"members\": [\"" ALICE "\", \"" BOB "\"]}",
        "{\"kind\": \"direct\", \"members\": [\"" DAVE "\"], \"title\": "
        "\"x\"}",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        call(&r, "POST", "/v1/conversations", CAROL, bad[i], NULL);
        h_assert_problem(&r, 422);
        h_resp_release(&r);
    }
}

/* The seqs of a page's items as "1,2,3". */
static const char *seqs(json_t *page)
{
    static char out[512];
    size_t len = 0, i;
    json_t *m;
    out[0] = '\0';
    json_array_foreach(json_object_get(page, "items"), i, m)
    {
        len += (size_t)snprintf(out + len, sizeof(out) - len, "%s%lld",
                                i ? "," : "", (long long)num(m, "seq"));
    }
    return out;
}

static void test_paging(void **state)
{
    MOAT_UNUSED(state);
    char conv[64];
    snprintf(conv, sizeof(conv), "%s", new_group(BOB, "[\"" DAVE "\"]"));
    for (int i = 1; i <= 25; i++)
        json_decref(send_msg(conv, i % 2 ? BOB : DAVE, h_fmt("m%d", i)));
    static const struct {
        const char *query, *seqs;
        json_int_t prev, next; /* prev 0 = null */
    } cases[] = {
        {"limit=10", "16,17,18,19,20,21,22,23,24,25", 16, 25},
        {"before=16&limit=10", "6,7,8,9,10,11,12,13,14,15", 6, 15},
        {"before=6&limit=10", "1,2,3,4,5", 0, 5},
        {"after=0&limit=10", "1,2,3,4,5,6,7,8,9,10", 0, 10},
        {"after=10&limit=10", "11,12,13,14,15,16,17,18,19,20", 11, 20},
        {"after=20&limit=10", "21,22,23,24,25", 21, 25},
        {"after=25&limit=10", "", 0, 25},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        json_t *page = call_ok(
            "GET",
            h_fmt("/v1/conversations/%s/messages?%s", conv, cases[i].query),
            DAVE, NULL, 200);
        assert_string_equal(seqs(page), cases[i].seqs);
        json_t *prev = json_object_get(page, "prev_cursor");
        if (cases[i].prev)
            assert_int_equal(json_integer_value(prev), cases[i].prev);
        else
            assert_true(json_is_null(prev));
        assert_int_equal(num(page, "next_cursor"), cases[i].next);
        assert_int_equal(num(page, "head_seq"), 25);
        json_decref(page);
    }
    json_t *page = call_ok(
        "GET", h_fmt("/v1/conversations/%s/messages?after=3&limit=1", conv),
        DAVE, NULL, 200);
    assert_string_equal(
        str(json_array_get(json_object_get(page, "items"), 0), "text"), "m4");
    json_decref(page);

    /* Conversations page too: Dave's, newest activity first. */
    char ids[3][64];
    for (int i = 0; i < 3; i++)
        snprintf(ids[i], sizeof(ids[i]), "%s", new_group(DAVE, "[]"));
    json_t *list = call_ok("GET", "/v1/conversations?limit=2", DAVE, NULL, 200);
    json_t *items = json_object_get(list, "items");
    assert_int_equal(json_array_size(items), 2);
    const char *cursor = str(list, "next_cursor");
    assert_non_null(cursor);
    json_t *more =
        call_ok("GET", h_fmt("/v1/conversations?limit=100&cursor=%s", cursor),
                DAVE, NULL, 200);
    size_t total = json_array_size(items) +
                   json_array_size(json_object_get(more, "items"));
    assert_true(json_is_null(json_object_get(more, "next_cursor")));
    /* ids[0..2] and the paging conversation (and test_direct_dedup's). */
    assert_int_equal(total, 5);
    json_decref(more);
    json_decref(list);
}

static void test_members(void **state)
{
    MOAT_UNUSED(state);
    char conv[64], path[128];
    snprintf(conv, sizeof(conv), "%s",
             new_group(ALICE, "[\"" BOB "\", \"" CAROL "\"]"));
    snprintf(path, sizeof(path), "/v1/conversations/%s/members", conv);
    struct h_resp r;

    /* Only the group's admin adds or removes; anyone may leave. */
    call(&r, "POST", path, BOB, "{\"members\": [\"" DAVE "\"]}", NULL);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    call(&r, "DELETE", h_fmt("%s/%s", path, CAROL), BOB, NULL, NULL);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    json_t *c = call_ok("POST", path, ALICE,
                        "{\"members\": [\"" DAVE "\", \"" BOB "\"]}", 200);
    assert_int_equal(json_array_size(json_object_get(c, "members")), 4);
    json_decref(c);
    /* Bob waits, then leaves: the next message is not his to see. */
    struct poller p;
    poll_start(&p, conv, BOB, 0, 30);
    wait_parked(1);
    json_decref(call_ok("DELETE", h_fmt("%s/%s", path, BOB), BOB, NULL, 204));
    json_decref(send_msg(conv, DAVE, "hi all"));
    json_t *gone = poll_join(&p, 404);
    assert_string_equal(str(gone, "detail"), "no such conversation");
    json_decref(gone);
    call(&r, "GET", h_fmt("/v1/conversations/%s", conv), BOB, NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);
    json_decref(
        call_ok("DELETE", h_fmt("%s/%s", path, CAROL), ALICE, NULL, 204));
    call(&r, "DELETE", h_fmt("%s/%s", path, CAROL), ALICE, NULL, NULL);
    h_assert_problem(&r, 404);
    h_resp_release(&r);

    /* The admin leaves: the longest-standing member takes over. */
    json_decref(
        call_ok("DELETE", h_fmt("%s/%s", path, ALICE), ALICE, NULL, 204));
    c = get_conv(conv, DAVE);
    json_t *members = json_object_get(c, "members");
    assert_int_equal(json_array_size(members), 1);
    assert_string_equal(str(json_array_get(members, 0), "role"), "admin");
    json_decref(c);

    json_t *ev = events_for(conv);
    size_t i, changes = 0;
    json_t *e;
    json_array_foreach(ev, i, e) changes +=
        strcmp(str(e, "type"), "MembersChanged") == 0;
    assert_int_equal(changes, 4);
    json_decref(ev);

    /* Caps: 100 members with the creator. */
    char list[100 * 16] = "[";
    size_t len = 1;
    for (int k = 0; k < 100; k++)
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s\"u%d\"",
                                k ? "," : "", k);
    snprintf(list + len, sizeof(list) - len, "]");
    call(&r, "POST", "/v1/conversations", ALICE,
         h_fmt("{\"kind\": \"group\", \"members\": %s}", list), NULL);
    h_assert_problem_error(&r, "pointer", "/members");
    h_resp_release(&r);
    list[strlen(list) - 7] = ']'; /* drop "u99" */
    list[strlen(list) - 6] = '\0';
    c = call_ok("POST", "/v1/conversations", ALICE,
                h_fmt("{\"kind\": \"group\", \"members\": %s}", list), 201);
    assert_int_equal(json_array_size(json_object_get(c, "members")), 100);
    call(&r, "POST", h_fmt("/v1/conversations/%s/members", str(c, "id")), ALICE,
         "{\"members\": [\"u100\"]}", NULL);
    h_assert_problem(&r, 409);
    h_resp_release(&r);
    json_decref(c);

    /* A direct conversation keeps its two members. */
    c = call_ok("POST", "/v1/conversations", ALICE,
                "{\"kind\": \"direct\", \"members\": [\"" DAVE "\"]}", 201);
    call(&r, "POST", h_fmt("/v1/conversations/%s/members", str(c, "id")), ALICE,
         "{\"members\": [\"" CAROL "\"]}", NULL);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    call(&r, "DELETE",
         h_fmt("/v1/conversations/%s/members/%s", str(c, "id"), ALICE), ALICE,
         NULL, NULL);
    h_assert_problem(&r, 403);
    h_resp_release(&r);
    json_decref(c);
}

static void test_bad_input(void **state)
{
    MOAT_UNUSED(state);
    char conv[64], path[128];
    snprintf(conv, sizeof(conv), "%s", new_group(ALICE, "[\"" BOB "\"]"));
    snprintf(path, sizeof(path), "/v1/conversations/%s/messages", conv);
    struct h_resp r;

    /* Texts: 4000 bytes pass (in 2000 two-byte characters), 4001 not. */
    static char big[8200];
    memset(big, 'x', 4001);
    big[4001] = '\0';
    call(&r, "POST", path, ALICE, h_fmt("{\"text\": \"%s\"}", big), NULL);
    h_assert_problem_error(&r, "pointer", "/text");
    h_resp_release(&r);
    for (int i = 0; i < 2000; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[4000] = '\0';
    json_t *m = json_pack("{s:s}", "text", big);
    char *body = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    call(&r, "POST", path, ALICE, body, NULL);
    h_assert_status(&r, 201);
    h_resp_release(&r);
    free(body);

    static const struct {
        const char *body, *pointer;
    } texts[] = {
        {"{}", "/text"},
        {"{\"text\": \"\"}", "/text"},
        {"{\"text\": \" \\n \"}", "/text"},
        {"{\"text\": \"bell \\u0007\"}", "/text"},
        {"{\"text\": 7}", "/text"},
        {"{\"text\": \"ok\", \"to\": \"x\"}", "/to"},
        {"[1]", ""},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(texts); i++) {
        call(&r, "POST", path, ALICE, texts[i].body, NULL);
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", texts[i].pointer);
        h_resp_release(&r);
    }
    call(&r, "POST", path, ALICE, "{\"text\": ", NULL);
    h_assert_problem(&r, 400);
    h_resp_release(&r);
    const char *plain[] = {as(ALICE), "Content-Type: text/plain", NULL};
    h_http(&r, "POST", h_fmt("%s%s", F.svc.url, path), plain, "hi", 2);
    h_assert_problem(&r, 415);
    h_resp_release(&r);

    static const struct {
        const char *body, *pointer;
    } convs[] = {
        {"{\"kind\": \"channel\", \"members\": [\"" BOB "\"]}", "/kind"},
        {"{\"members\": [\"" BOB "\"]}", "/kind"},
        {"{\"kind\": \"group\"}", "/members"},
        {"{\"kind\": \"direct\", \"members\": []}", "/members"},
        {"{\"kind\": \"group\", \"members\": [\"bad id\"]}", "/members/0"},
        {"{\"kind\": \"group\", \"members\": [7]}", "/members/0"},
        {"{\"kind\": \"group\", \"members\": [\"" BOB "\"], \"x\": 1}", "/x"},
        {"{\"kind\": \"group\", \"members\": [\"" BOB "\"], \"title\": \"\"}",
         "/title"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(convs); i++) {
        call(&r, "POST", "/v1/conversations", ALICE, convs[i].body, NULL);
        h_assert_problem(&r, 422);
        h_assert_problem_error(&r, "pointer", convs[i].pointer);
        h_resp_release(&r);
    }
    char title[260];
    memset(title, 't', 201);
    title[201] = '\0';
    call(&r, "POST", "/v1/conversations", ALICE,
         h_fmt("{\"kind\": \"group\", \"members\": [\"" BOB
               "\"], \"title\": \"%s\"}",
               title),
         NULL);
    h_assert_problem_error(&r, "pointer", "/title");
    h_resp_release(&r);

    static const char *const queries[] = {
        "after=1&before=5", "wait=5",    "after=0&wait=31",
        "limit=0",          "limit=101", "after=-1",
        "before=0",         "color=red", "after=x",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(queries); i++) {
        call(&r, "GET", h_fmt("%s?%s", path, queries[i]), ALICE, NULL, NULL);
        h_assert_problem(&r, 400);
        h_resp_release(&r);
    }
    call(&r, "GET", "/v1/conversations?cursor=nope", ALICE, NULL, NULL);
    h_assert_problem(&r, 400);
    h_resp_release(&r);

    /* No end user behind the call: 401; no service token at all: 401. */
    call(&r, "GET", "/v1/conversations", NULL, NULL, NULL);
    h_assert_problem(&r, 401);
    h_resp_release(&r);
    h_get(&r, h_fmt("%s/v1/conversations", F.svc.url));
    h_assert_problem(&r, 401);
    h_resp_release(&r);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Send -> waiting member's response, over n messages (printed, not
 * asserted: the machine is shared). */
static void test_delivery_latency(void **state)
{
    MOAT_UNUSED(state);
    const char *env = getenv("MOAT_MESSAGING_BENCH");
    int n = env && atoi(env) > 0 ? atoi(env) : 100;
    char conv[64];
    snprintf(conv, sizeof(conv), "%s", new_group(ALICE, "[\"" BOB "\"]"));
    double *ms = moat_xcalloc((size_t)n, sizeof(*ms));
    json_t *body = json_pack("{s:s}", "text", "ping");
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    char url[256], auth[1024];
    snprintf(url, sizeof(url), "%s/v1/conversations/%s/messages", F.svc.url,
             conv);
    for (int i = 0; i < n; i++) {
        /* Tokens live 60 s: mint Alice's per message. */
        snprintf(auth, sizeof(auth), "%s", as(ALICE));
        struct poller p;
        poll_start(&p, conv, BOB, i, 30);
        wait_parked(1);
        const char *hdrs[] = {auth, "Content-Type: application/json", NULL};
        struct h_resp r;
        uint64_t t0 = moat_mono_ns();
        h_http(&r, "POST", url, hdrs, text, strlen(text));
        h_assert_status(&r, 201);
        h_resp_release(&r);
        json_t *page = poll_join(&p, 200);
        assert_int_equal(json_array_size(json_object_get(page, "items")), 1);
        json_decref(page);
        ms[i] = (double)(p.done_ns - t0) / 1e6;
    }
    qsort(ms, (size_t)n, sizeof(*ms), cmp_double);
    print_message("delivery latency over %d messages: p50 %.2f ms, p90 %.2f "
                  "ms, p99 %.2f ms, max %.2f ms\n",
                  n, ms[n / 2], ms[n * 9 / 10], ms[n * 99 / 100], ms[n - 1]);
    free(ms);
    free(text);
}

/* The parked polls are bounded per process: with room for 2, a third
 * reader gets 503 and Retry-After, and a send answers the two. */
static void test_parked_bound(void **state)
{
    MOAT_UNUSED(state);
    const char *small[] = {"MOAT_MESSAGING_MAX_POLLS=2", NULL};
    assert_int_equal(h_service_restart(&F.svc, small), 0);
    char conv[64];
    snprintf(conv, sizeof(conv), "%s",
             new_group(ALICE, "[\"" BOB "\", \"" CAROL "\"]"));
    struct poller a, b;
    poll_start(&a, conv, BOB, 0, 30);
    poll_start(&b, conv, CAROL, 0, 30);
    wait_parked(2);
    struct h_resp r;
    call(&r, "GET",
         h_fmt("/v1/conversations/%s/messages?after=0&wait=30", conv), ALICE,
         NULL, NULL);
    h_assert_problem(&r, 503);
    assert_non_null(h_resp_header(&r, "Retry-After"));
    h_resp_release(&r);
    json_decref(send_msg(conv, ALICE, "to both"));
    json_t *pa = poll_join(&a, 200), *pb = poll_join(&b, 200);
    assert_int_equal(json_array_size(json_object_get(pa, "items")), 1);
    assert_int_equal(json_array_size(json_object_get(pb, "items")), 1);
    json_decref(pa);
    json_decref(pb);
    assert_int_equal(h_service_restart(&F.svc, NULL), 0);
}

/* SIGTERM with a parked poll: answered at once, clean exit; then kill -9
 * right after 201s: every acknowledged message survives. */
static void test_stop_and_kill(void **state)
{
    MOAT_UNUSED(state);
    char conv[64];
    snprintf(conv, sizeof(conv), "%s", new_group(ALICE, "[\"" BOB "\"]"));
    struct poller p;
    poll_start(&p, conv, BOB, 0, 30);
    wait_parked(1);
    uint64_t t0 = moat_mono_ms();
    assert_int_equal(h_service_stop(&F.svc), 0);
    json_t *page = poll_join(&p, 200);
    assert_int_equal(json_array_size(json_object_get(page, "items")), 0);
    json_decref(page);
    /* Well before the 30 s wait and the 10 s drain deadline. */
    assert_true(moat_mono_ms() - t0 < h_scaled_ms(5000));
    assert_int_equal(h_service_restart(&F.svc, NULL), 0);

    char ids[20][64];
    for (int i = 0; i < 20; i++) {
        json_t *m = send_msg(conv, i % 2 ? BOB : ALICE, h_fmt("durable %d", i));
        snprintf(ids[i], sizeof(ids[i]), "%s", str(m, "id"));
        json_decref(m);
    }
    h_service_kill(&F.svc);
    assert_int_equal(h_service_restart(&F.svc, NULL), 0);
    page = call_ok(
        "GET", h_fmt("/v1/conversations/%s/messages?after=0&limit=100", conv),
        BOB, NULL, 200);
    json_t *items = json_object_get(page, "items");
    assert_int_equal(json_array_size(items), 20);
    for (int i = 0; i < 20; i++) {
        json_t *m = json_array_get(items, (size_t)i);
        assert_string_equal(str(m, "id"), ids[i]);
        assert_string_equal(str(m, "text"), h_fmt("durable %d", i));
        assert_int_equal(num(m, "seq"), i + 1);
    }
    json_decref(page);
    json_t *ev = events_for(conv);
    assert_int_equal(json_array_size(ev), 21);
    json_decref(ev);
    /* The sequence goes on after the crash. */
    json_t *m = send_msg(conv, ALICE, "after the crash");
    assert_int_equal(num(m, "seq"), 21);
    json_decref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_exchange),
        cmocka_unit_test(test_stranger_refused),
        cmocka_unit_test(test_idempotent_send),
        cmocka_unit_test(test_edit_and_delete),
        cmocka_unit_test(test_unread_counts),
        cmocka_unit_test(test_direct_dedup),
        cmocka_unit_test(test_paging),
        cmocka_unit_test(test_members),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_delivery_latency),
        cmocka_unit_test(test_parked_bound),
        cmocka_unit_test(test_stop_and_kill),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
