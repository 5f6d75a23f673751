/*
 * handlers.c - messaging's HTTP API (docs/messaging.md): conversations
 * (direct and group), their members, messages (send with an optional
 * Idempotency-Key, edit with history, delete to a tombstone), pages in
 * both directions, long polls for live delivery, and read marks. The SQL
 * is store.c, parked long polls live.c, input rules rules.c.
 *
 * Authorisation: every route needs an end user (401 otherwise). Only
 * members see a conversation: anyone else gets 404, as for a conversation
 * that does not exist, so ids reveal nothing. A member asking for what
 * the conversation does not allow them (editing another's message, adding
 * members without being a group admin) gets 403. A platform administrator
 * has no special rights here: conversations are private.
 */
#include "moat/common.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "messaging.h"
#include "moat/auth.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "rules.h"

/* Caps of client-controlled sizes (docs/messaging.md). */
#define TEXT_MAX_BYTES     4000
#define TITLE_MAX_CHARS    200
#define GROUP_MAX_MEMBERS  100
#define EDITS_MAX          50
#define LIST_LIMIT_DEFAULT 20
#define PAGE_LIMIT_DEFAULT 50
#define LIMIT_MAX          100
#define WAIT_MAX_S         30
#define CONV_CURSOR_MAX    64
#define RETRY_AFTER_S      "1"
#define PROBLEM_IDEM       "urn:moat:problem:idempotency-key-"

/* ---- replies ---- */

static void reply_no_conv(struct moat_req *r)
{
    moat_req_reply_problem(r, 404, "no such conversation");
}

static json_t *time_or_null(int64_t ms)
{
    return ms ? json_integer(ms / 1000) : json_null();
}

static json_t *conv_json(const struct msg_conv *c)
{
    json_t *members = json_array();
    for (size_t i = 0; i < c->nmembers; i++)
        json_array_append_new(
            members,
            json_pack("{s:s, s:s, s:I}", "user_id", c->members[i].user_id,
                      "role", c->members[i].admin ? "admin" : "member",
                      "joined_at",
                      (json_int_t)(c->members[i].joined_ms / 1000)));
    return json_pack("{s:s, s:s, s:s, s:o, s:s, s:o, s:I, s:I, s:I, s:I, s:I}",
                     "id", c->id, "object", "conversation", "kind",
                     c->kind == MSG_DIRECT ? "direct" : "group", "title",
                     c->title ? json_string(c->title) : json_null(),
                     "created_by", c->created_by, "members", members,
                     "created_at", (json_int_t)(c->created_ms / 1000),
                     "last_activity_at", (json_int_t)(c->activity_ms / 1000),
                     "last_seq", (json_int_t)c->last_seq, "read_up_to",
                     (json_int_t)c->read_seq, "unread_count",
                     (json_int_t)c->unread);
}

static json_t *message_json(const struct msg_message *m)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:o, s:I, s:o, s:b, s:o}", "id",
                     m->id, "object", "message", "conversation_id",
                     m->conversation_id, "seq", (json_int_t)m->seq, "sender_id",
                     m->sender_id, "text",
                     m->text ? json_string(m->text) : json_null(), "created_at",
                     (json_int_t)(m->created_ms / 1000), "edited_at",
                     time_or_null(m->edited_ms), "deleted", m->deleted_ms != 0,
                     "deleted_at", time_or_null(m->deleted_ms));
}

static void reply_conv(struct moat_req *r, int status, const struct msg_conv *c)
{
    if (status == 201) {
        /* An absolute path: the gateway rewrites it to its public prefix. */
        char location[MSG_ID_LEN + 32];
        snprintf(location, sizeof(location), "/v1/conversations/%s", c->id);
        moat_req_set_header(r, "Location", location);
    }
    moat_req_reply_json(r, status, conv_json(c));
}

/* The caller, or reply 401 and return NULL. */
static const char *caller(struct moat_req *r)
{
    return moat_req_require_user(r) ? moat_req_principal(r)->user_id : NULL;
}

/* The caller when they may send messages (a suspended account may not),
 * or reply 401 / 403 and return NULL. */
static const char *sender(struct moat_req *r)
{
    return moat_req_require_perm(r, MOAT_PERM_MESSAGE)
               ? moat_req_principal(r)->user_id
               : NULL;
}

/* Load conversation {id} as the caller sees it, or reply 404 / 5xx and
 * return false. */
static bool load_conv(struct moat_req *r, struct msg_service *ms,
                      const char *user, struct msg_conv *c)
{
    const char *id = moat_req_param(r, "id");
    int rc = id && moat_id_valid(id, MSG_CONV_PREFIX)
                 ? msg_store_get_conv(ms->store, id, user, c)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND)
        reply_no_conv(r);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "messaging", "read the conversation");
    return rc == MOAT_OK;
}

/* Conversation {id} when the caller is a member of it (the path
 * parameter, owned by the request; *head gets its last seq), or reply 404
 * / 5xx and return NULL. Cheaper than load_conv: no members, no counts. */
static const char *member_of(struct moat_req *r, struct msg_service *ms,
                             const char *user, int64_t *head)
{
    const char *id = moat_req_param(r, "id");
    int rc = id && moat_id_valid(id, MSG_CONV_PREFIX)
                 ? msg_store_member_head(ms->store, id, user, head)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND)
        reply_no_conv(r);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "messaging", "read the conversation");
    return rc == MOAT_OK ? id : NULL;
}

static bool is_admin(const struct msg_conv *c, const char *user)
{
    for (size_t i = 0; i < c->nmembers; i++)
        if (strcmp(c->members[i].user_id, user) == 0)
            return c->members[i].admin;
    return false;
}

/* Check an array of user ids at pointer /key of body: min..max of them.
 * Returns the array (borrowed) or NULL. */
static json_t *user_list(struct moat_validation *v, json_t *body,
                         const char *key, size_t min, size_t max)
{
    json_t *a = json_object_get(body, key);
    char ptr[64];
    snprintf(ptr, sizeof(ptr), "/%s", key);
    if (!json_is_array(a) || json_array_size(a) < min ||
        json_array_size(a) > max) {
        moat_validation_add(v, ptr, "must be an array of %zu to %zu user ids",
                            min, max);
        return NULL;
    }
    size_t i;
    json_t *u;
    bool ok = true;
    json_array_foreach(a, i, u)
    {
        if (!msg_user_id_valid(json_string_value(u))) {
            snprintf(ptr, sizeof(ptr), "/%s/%zu", key, i);
            moat_validation_add(v, ptr,
                                "must be a user id: 1 to 63 letters, digits, "
                                "'_' or '-'");
            ok = false;
        }
    }
    return ok ? a : NULL;
}

/* The array's strings as a new array of borrowed pointers. */
static const char **strings_of(json_t *a)
{
    const char **out = moat_xcalloc(json_array_size(a) + 1, sizeof(*out));
    for (size_t i = 0; i < json_array_size(a); i++)
        out[i] = json_string_value(json_array_get(a, i));
    return out;
}

/* ---- POST /v1/conversations ---- */

static void handle_create_conv(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_conv c = {0};
    json_t *body = NULL;
    const char **ids = NULL, **set = NULL;
    const char *user = sender(r);
    if (!user)
        return;
    if (moat_req_json(r, &body) != MOAT_OK)
        return; /* answered 415 or 400 */
    if (!json_is_object(body)) {
        moat_req_reply_problem(r, 422,
                               "the conversation must be a JSON object");
        goto cleanup;
    }
    static const char *const keys[] = {"kind", "members", "title", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", keys);
    const char *kind = NULL, *title = NULL;
    if (moat_v_string(&v, body, "", "kind", true, 1, 16, &kind) &&
        strcmp(kind, "direct") != 0 && strcmp(kind, "group") != 0)
        moat_validation_add(&v, "/kind", "must be \"direct\" or \"group\"");
    json_t *members = user_list(&v, body, "members", 0, GROUP_MAX_MEMBERS);
    moat_v_string(&v, body, "", "title", false, 1, TITLE_MAX_CHARS, &title);
    bool direct = kind && strcmp(kind, "direct") == 0;
    if (direct && title)
        moat_validation_add(&v, "/title", "a direct conversation has no title");
    size_t nset = 0;
    if (members) {
        ids = strings_of(members);
        set = moat_xcalloc(json_array_size(members) + 1, sizeof(*set));
        nset = msg_member_set(user, ids, json_array_size(members), set);
        if (direct && nset != 2)
            moat_validation_add(&v, "/members",
                                "a direct conversation has exactly one "
                                "other member");
        else if (nset > GROUP_MAX_MEMBERS)
            moat_validation_add(&v, "/members",
                                "a group has at most %d members, its "
                                "creator included",
                                GROUP_MAX_MEMBERS);
    }
    if (!moat_validation_ok(&v)) {
        moat_req_reply_problem_json(
            r, moat_validation_problem(&v, "the conversation is not valid"));
        moat_validation_release(&v);
        goto cleanup;
    }
    moat_validation_release(&v);

    moat_id_new(MSG_CONV_PREFIX, c.id, sizeof(c.id));
    c.kind = direct ? MSG_DIRECT : MSG_GROUP;
    c.title = title ? moat_xstrdup(title) : NULL;
    snprintf(c.created_by, sizeof(c.created_by), "%s", user);
    c.created_ms = c.activity_ms = moat_wall_ms();
    c.members = moat_xcalloc(nset, sizeof(*c.members));
    c.nmembers = nset;
    for (size_t i = 0; i < nset; i++) {
        snprintf(c.members[i].user_id, sizeof(c.members[i].user_id), "%s",
                 set[i]);
        /* The creator administers a group; a direct one has no admin. */
        c.members[i].admin = !direct && i == 0;
        c.members[i].joined_ms = c.created_ms;
    }
    char existing[MSG_ID_LEN + 1];
    int rc = msg_store_create_conv(ms->store, &c, existing);
    char id[MSG_ID_LEN + 1];
    snprintf(id, sizeof(id), "%s", rc == MOAT_ECONFLICT ? existing : c.id);
    if (rc != MOAT_OK && rc != MOAT_ECONFLICT) {
        moat_req_reply_store_error(r, rc, "messaging",
                                   "create the conversation");
        goto cleanup;
    }
    if (rc == MOAT_OK)
        moat_log(MOAT_LOG_INFO, "conversation created", "{s:s, s:s, s:i}", "id",
                 c.id, "kind", kind, "members", (int)nset);
    /* Answer as GET does (a direct pair's existing one with 200). */
    int status = rc == MOAT_OK ? 201 : 200;
    msg_conv_release(&c);
    rc = msg_store_get_conv(ms->store, id, user, &c);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "read the conversation");
        goto cleanup;
    }
    reply_conv(r, status, &c);

cleanup:
    msg_conv_release(&c);
    free(ids);
    free(set);
    json_decref(body);
}

/* ---- GET /v1/conversations ---- */

/* "<activity ms>.<conversation id>", the last item of a page. */
static bool conv_cursor_parse(const char *s, int64_t *ms, char *id)
{
    const char *dot = strchr(s, '.');
    if (!dot || dot - s > 20)
        return false;
    char num[24];
    snprintf(num, sizeof(num), "%.*s", (int)(dot - s), s);
    if (moat_parse_i64(num, 0, INT64_MAX, ms) != MOAT_OK ||
        !moat_id_valid(dot + 1, MSG_CONV_PREFIX))
        return false;
    snprintf(id, MSG_ID_LEN + 1, "%s", dot + 1);
    return true;
}

static void handle_list_convs(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    const char *user = caller(r);
    if (!user)
        return;
    struct moat_qparam q[] = {
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = LIMIT_MAX},
        {.name = "cursor",
         .kind = MOAT_Q_STR,
         .min = 1,
         .max = CONV_CURSOR_MAX},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    int64_t before_ms = 0;
    char before_id[MSG_ID_LEN + 1];
    if (!problem && q[1].seen &&
        !conv_cursor_parse(q[1].sval, &before_ms, before_id))
        moat_problem_param_error(&problem, "cursor",
                                 "is not a next_cursor returned by this API");
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    size_t limit = q[0].seen ? (size_t)q[0].ival : LIST_LIMIT_DEFAULT;
    struct msg_conv *items = NULL;
    size_t n = 0;
    /* One row more than the page tells whether another page follows. */
    int rc = msg_store_list_convs(ms->store, user, before_ms,
                                  q[1].seen ? before_id : NULL, limit + 1,
                                  &items, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging",
                                   "list the conversations");
        return;
    }
    size_t shown = n > limit ? limit : n;
    json_t *list = json_array();
    for (size_t i = 0; i < shown; i++)
        json_array_append_new(list, conv_json(&items[i]));
    json_t *next = json_null();
    if (n > limit) {
        char *cursor =
            moat_xasprintf("%lld.%s", (long long)items[shown - 1].activity_ms,
                           items[shown - 1].id);
        next = json_string(cursor);
        free(cursor);
    }
    moat_req_reply_json(
        r, 200, json_pack("{s:o, s:o}", "items", list, "next_cursor", next));
    msg_convs_free(items, n);
}

/* ---- GET /v1/conversations/{id} ---- */

static void handle_get_conv(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_conv c = {0};
    const char *user = caller(r);
    if (!user || !load_conv(r, ms, user, &c))
        return;
    reply_conv(r, 200, &c);
    msg_conv_release(&c);
}

/* ---- POST /v1/conversations/{id}/members ---- */

static void reply_members_fault(struct moat_req *r, int rc)
{
    if (rc == MOAT_ETOOBIG)
        moat_req_reply_problem(r, 409,
                               "a group has at most %d members, its "
                               "creator included",
                               GROUP_MAX_MEMBERS);
    else if (rc == MOAT_ENOTFOUND)
        reply_no_conv(r);
    else
        moat_req_reply_store_error(r, rc, "messaging", "change the members");
}

static void handle_add_members(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_conv c = {0};
    json_t *body = NULL;
    const char **ids = NULL;
    const char *user = caller(r);
    if (!user || !load_conv(r, ms, user, &c))
        return;
    if (moat_req_json(r, &body) != MOAT_OK)
        goto cleanup;
    if (!json_is_object(body)) {
        moat_req_reply_problem(r, 422, "the request must be a JSON object");
        goto cleanup;
    }
    static const char *const keys[] = {"members", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", keys);
    json_t *members = user_list(&v, body, "members", 1, GROUP_MAX_MEMBERS);
    if (!moat_validation_ok(&v)) {
        moat_req_reply_problem_json(
            r, moat_validation_problem(&v, "the members are not valid"));
        moat_validation_release(&v);
        goto cleanup;
    }
    moat_validation_release(&v);
    if (c.kind == MSG_DIRECT) {
        moat_req_reply_problem(r, 403,
                               "a direct conversation keeps its two members");
        goto cleanup;
    }
    if (!is_admin(&c, user)) {
        moat_req_reply_problem(r, 403,
                               "only an admin of the group may add members");
        goto cleanup;
    }
    ids = strings_of(members);
    bool changed;
    int rc = msg_store_change_members(
        ms->store, c.id, user, ids, json_array_size(members), NULL,
        GROUP_MAX_MEMBERS, moat_wall_ms(), &changed);
    if (rc != MOAT_OK) {
        reply_members_fault(r, rc);
        goto cleanup;
    }
    char id[MSG_ID_LEN + 1];
    snprintf(id, sizeof(id), "%s", c.id);
    msg_conv_release(&c);
    rc = msg_store_get_conv(ms->store, id, user, &c);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "read the conversation");
        goto cleanup;
    }
    reply_conv(r, 200, &c);

cleanup:
    free(ids);
    msg_conv_release(&c);
    json_decref(body);
}

/* ---- DELETE /v1/conversations/{id}/members/{user_id} ---- */

static void handle_remove_member(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_conv c = {0};
    const char *user = caller(r);
    if (!user || !load_conv(r, ms, user, &c))
        return;
    const char *target = moat_req_param(r, "user_id");
    bool self = target && strcmp(target, user) == 0;
    bool member = false;
    for (size_t i = 0; target && i < c.nmembers; i++)
        member = member || strcmp(c.members[i].user_id, target) == 0;
    if (c.kind == MSG_DIRECT) {
        moat_req_reply_problem(r, 403,
                               "a direct conversation keeps its two members");
        goto cleanup;
    }
    if (!self && !is_admin(&c, user)) {
        moat_req_reply_problem(r, 403,
                               "only an admin of the group may remove "
                               "members; anyone may leave");
        goto cleanup;
    }
    if (!member) {
        moat_req_reply_problem(r, 404, "no such member of this conversation");
        goto cleanup;
    }
    bool changed;
    int rc =
        msg_store_change_members(ms->store, c.id, user, NULL, 0, target,
                                 GROUP_MAX_MEMBERS, moat_wall_ms(), &changed);
    if (rc != MOAT_OK) {
        reply_members_fault(r, rc);
        goto cleanup;
    }
    moat_log(MOAT_LOG_INFO, "member removed", "{s:s, s:s, s:s}", "conversation",
             c.id, "user", target, "by", user);
    moat_req_reply(r, 204, NULL, NULL, 0);

cleanup:
    msg_conv_release(&c);
}

/* ---- POST /v1/conversations/{id}/messages ---- */

/* Check body's "text" (the only member); NULL or a 422 problem. */
static json_t *parse_text(json_t *body, const char **text)
{
    static const char *const keys[] = {"text", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    if (!json_is_object(body)) {
        moat_validation_add(&v, "", "must be a JSON object");
    } else {
        moat_v_known_keys(&v, body, "", keys);
        json_t *t = json_object_get(body, "text");
        size_t len = json_string_length(t);
        const char *why = NULL;
        if (!json_is_string(t))
            moat_validation_add(&v, "/text",
                                "is required and must be a string");
        else if (len < 1 || len > TEXT_MAX_BYTES)
            moat_validation_add(&v, "/text", "must be 1 to %d bytes of UTF-8",
                                TEXT_MAX_BYTES);
        else if ((why = msg_text_problem(json_string_value(t), len,
                                         TEXT_MAX_BYTES)) != NULL)
            moat_validation_add(&v, "/text", "%s", why);
        else
            *text = json_string_value(t);
    }
    json_t *problem = NULL;
    if (!moat_validation_ok(&v))
        problem = moat_validation_problem(&v, "the message is not valid");
    moat_validation_release(&v);
    return problem;
}

/* SHA-256 of the conversation id and the canonical body, in hex: the same
 * key sent to another conversation is another request. */
static void send_fingerprint(const char *conv, json_t *body, char out[65])
{
    char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (!canon)
        moat_die("cannot serialise a message body");
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const unsigned char *)conv, strlen(conv));
    crypto_hash_sha256_update(&st, (const unsigned char *)"\n", 1);
    crypto_hash_sha256_update(&st, (const unsigned char *)canon, strlen(canon));
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, h);
    free(canon);
    moat_hex(out, h, sizeof(h));
}

static void reply_message(struct moat_req *r, int status,
                          const struct msg_message *m, bool replayed)
{
    if (status == 201) {
        char location[2 * MSG_ID_LEN + 48];
        snprintf(location, sizeof(location), "/v1/conversations/%s/messages/%s",
                 m->conversation_id, m->id);
        moat_req_set_header(r, "Location", location);
    }
    if (replayed)
        moat_req_set_header(r, "Idempotent-Replayed", "true");
    moat_req_reply_json(r, status, message_json(m));
}

/* A replay of the key's earlier send: the same message, or 422. */
static void replay(struct moat_req *r, struct msg_service *ms,
                   const char *fingerprint, const char *stored_fp,
                   const char *message_id)
{
    if (strcmp(fingerprint, stored_fp) != 0) {
        moat_req_reply_problem_json(
            r, moat_problem_typed(422, PROBLEM_IDEM "reused",
                                  "this Idempotency-Key was used for another "
                                  "message"));
        return;
    }
    struct msg_message m = {0};
    int rc = msg_store_get_message(ms->store, message_id, &m);
    if (rc == MOAT_OK)
        reply_message(r, 201, &m, true);
    else
        moat_req_reply_store_error(r, rc, "messaging", "read the message");
    msg_message_release(&m);
}

static void handle_send(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_message m = {0};
    json_t *body = NULL;
    char key[MOAT_IDEM_KEY_MAX + 1], fp[65];
    const char *user = sender(r);
    if (!user)
        return;
    const char *hkey = moat_req_header(r, "Idempotency-Key");
    if (hkey && !moat_idem_key_parse(hkey, key)) {
        moat_req_reply_problem_json(
            r,
            moat_problem_typed(400, PROBLEM_IDEM "malformed",
                               "the Idempotency-Key must be 1 to 255 visible "
                               "ASCII characters"));
        return;
    }
    int64_t head;
    const char *conv = member_of(r, ms, user, &head);
    if (!conv)
        return;
    if (moat_req_json(r, &body) != MOAT_OK)
        goto cleanup;
    const char *text = NULL;
    json_t *problem = parse_text(body, &text);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        goto cleanup;
    }
    send_fingerprint(conv, body, fp);
    if (hkey) {
        char stored_fp[65], message_id[MSG_ID_LEN + 1];
        int rc = msg_idem_get(ms->store, user, key, stored_fp, message_id);
        if (rc == MOAT_OK) {
            replay(r, ms, fp, stored_fp, message_id);
            goto cleanup;
        }
        if (rc != MOAT_ENOTFOUND) {
            moat_req_reply_store_error(r, rc, "messaging",
                                       "check the Idempotency-Key");
            goto cleanup;
        }
    }
    moat_id_new(MSG_MSG_PREFIX, m.id, sizeof(m.id));
    snprintf(m.conversation_id, sizeof(m.conversation_id), "%s", conv);
    snprintf(m.sender_id, sizeof(m.sender_id), "%s", user);
    m.text = moat_xstrdup(text);
    m.created_ms = moat_wall_ms();
    int rc = msg_store_send(ms->store, &m, hkey ? key : NULL, fp, &m.seq);
    if (rc == MOAT_ECONFLICT) {
        /* The key's record appeared between the lookup and the insert:
         * only another writer on the database can do that. */
        moat_req_set_header(r, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            r,
            moat_problem_typed(409, PROBLEM_IDEM "in-progress",
                               "a message with this Idempotency-Key is being "
                               "sent; retry to get it"));
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "store the message");
        goto cleanup;
    }
    /* Committed: the sender's reply first (it is only queued on its
     * connection), then the parked readers of the conversation, on this
     * same loop turn, sharing one rendering of the page they wait for. */
    reply_message(r, 201, &m, false); /* r and its params are gone now */
    ms->wake = (struct msg_wake_page){.on = true};
    msg_live_wake(ms->live, m.conversation_id);
    free(ms->wake.text);
    ms->wake = (struct msg_wake_page){0};

cleanup:
    msg_message_release(&m);
    json_decref(body);
}

/* ---- GET /v1/conversations/{id}/messages ---- */

/* The page after p->after (the long poll's answer), or, with force, even
 * an empty one. A reader removed from the conversation while parked gets
 * 404 and nothing sent after its removal. */
static bool answer_poll(struct moat_req *r, const struct msg_poll *p,
                        bool force, void *arg);

static json_t *page_json(struct msg_message *items, size_t n, int64_t after,
                         int64_t before, int64_t head)
{
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, message_json(&items[i]));
    int64_t next = n            ? items[n - 1].seq
                   : after >= 0 ? after
                   : before > 0 ? before - 1
                                : head;
    json_t *prev =
        n && items[0].seq > 1 ? json_integer(items[0].seq) : json_null();
    return json_pack("{s:o, s:o, s:I, s:I}", "items", list, "prev_cursor", prev,
                     "next_cursor", (json_int_t)next, "head_seq",
                     (json_int_t)head);
}

/* Reply with a page; false (no reply) when it is empty and !force. */
static bool reply_page(struct moat_req *r, struct msg_service *ms,
                       const char *conv, int64_t head, int64_t after,
                       int64_t before, size_t limit, bool force)
{
    struct msg_message *items = NULL;
    size_t n = 0;
    if (after >= 0 && after >= head && !force)
        return false; /* nothing new: no need to run the read */
    /* During a wake, a waiter at the position of the one before it gets
     * the same bytes (moat_req_reply renders them as v2 where asked). */
    struct msg_wake_page *w = &ms->wake;
    bool shared = w->on && before < 0 && after >= 0;
    if (shared && w->text && w->after == after && w->head == head &&
        w->limit == (int64_t)limit) {
        moat_req_set_header(r, "Cache-Control", "no-store");
        moat_req_reply(r, 200, "application/json", w->text, w->len);
        return true;
    }
    int rc = msg_store_page(ms->store, conv, after, before, limit, &items, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "read the messages");
        return true;
    }
    if (n == 0 && !force) {
        msg_messages_free(items, n);
        return false;
    }
    moat_req_set_header(r, "Cache-Control", "no-store");
    if (shared) {
        json_t *page = page_json(items, n, after, before, head);
        free(w->text);
        w->text = json_dumps(page, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(page);
        w->len = w->text ? strlen(w->text) : 0;
        w->after = after;
        w->head = head;
        w->limit = (int64_t)limit;
        moat_req_reply(r, 200, "application/json", w->text, w->len);
    } else {
        moat_req_reply_json(r, 200, page_json(items, n, after, before, head));
    }
    msg_messages_free(items, n);
    return true;
}

static bool answer_poll(struct moat_req *r, const struct msg_poll *p,
                        bool force, void *arg)
{
    struct msg_service *ms = arg;
    int64_t head;
    int rc = msg_store_member_head(ms->store, p->conv, p->user, &head);
    if (rc == MOAT_ENOTFOUND) {
        reply_no_conv(r);
        return true;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "read the messages");
        return true;
    }
    return reply_page(r, ms, p->conv, head, p->after, -1, (size_t)p->limit,
                      force);
}

static void handle_messages(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    const char *user = caller(r);
    if (!user)
        return;
    struct moat_qparam q[] = {
        {.name = "after", .kind = MOAT_Q_INT, .min = 0, .max = INT64_MAX},
        {.name = "before", .kind = MOAT_Q_INT, .min = 1, .max = INT64_MAX},
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = LIMIT_MAX},
        {.name = "wait", .kind = MOAT_Q_INT, .min = 0, .max = WAIT_MAX_S},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    if (!problem && q[0].seen && q[1].seen)
        moat_problem_param_error(&problem, "before",
                                 "cannot be combined with after");
    if (!problem && q[3].seen && !q[0].seen)
        moat_problem_param_error(&problem, "wait",
                                 "needs after: a long poll waits for "
                                 "messages after a cursor");
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    int64_t head;
    const char *id = member_of(r, ms, user, &head);
    if (!id)
        return;
    int64_t after = q[0].seen ? q[0].ival : -1;
    int64_t before = q[1].seen ? q[1].ival : -1;
    size_t limit = q[2].seen ? (size_t)q[2].ival : PAGE_LIMIT_DEFAULT;
    unsigned wait_s = q[3].seen ? (unsigned)q[3].ival : 0;
    if (reply_page(r, ms, id, head, after, before, limit, wait_s == 0))
        return;
    struct msg_poll p = {.after = after, .limit = (int)limit};
    snprintf(p.conv, sizeof(p.conv), "%s", id);
    snprintf(p.user, sizeof(p.user), "%s", user);
    if (msg_live_park(ms->live, r, &p, wait_s * 1000) != MOAT_OK) {
        moat_req_set_header(r, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem(r, 503,
                               "too many readers are waiting for messages; "
                               "retry");
    }
}

/* ---- /v1/conversations/{id}/messages/{msg_id} ---- */

/* The message {msg_id} of conversation {id}, of which the caller must be
 * a member, into *m; or reply 404 / 5xx and return false. */
static bool load_message(struct moat_req *r, struct msg_service *ms,
                         const char *user, struct msg_message *m)
{
    int64_t head;
    const char *conv = member_of(r, ms, user, &head);
    if (!conv)
        return false;
    const char *id = moat_req_param(r, "msg_id");
    int rc = id && moat_id_valid(id, MSG_MSG_PREFIX)
                 ? msg_store_get_message(ms->store, id, m)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_OK && strcmp(m->conversation_id, conv) != 0) {
        msg_message_release(m);
        rc = MOAT_ENOTFOUND;
    }
    if (rc == MOAT_ENOTFOUND)
        moat_req_reply_problem(r, 404, "no such message in this conversation");
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "messaging", "read the message");
    return rc == MOAT_OK;
}

static void handle_get_message(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_message m = {0};
    struct msg_edit *edits = NULL;
    size_t n = 0;
    const char *user = caller(r);
    if (!user || !load_message(r, ms, user, &m))
        return;
    int rc = msg_store_edits(ms->store, m.id, &edits, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging",
                                   "read the message's edits");
        goto cleanup;
    }
    /* History: edit i replaced edits[i].replaced_text with the text that
     * edit i + 1 replaced, or (the last edit) the current text. */
    json_t *j = message_json(&m);
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            list,
            json_pack("{s:s, s:I}", "text",
                      i + 1 < n ? edits[i + 1].replaced_text : m.text,
                      "edited_at", (json_int_t)(edits[i].edited_ms / 1000)));
    const char *original = n ? edits[0].replaced_text : m.text;
    json_object_set_new(j, "original_text",
                        original ? json_string(original) : json_null());
    json_object_set_new(j, "edits", list);
    moat_req_reply_json(r, 200, j);

cleanup:
    msg_edits_free(edits, n);
    msg_message_release(&m);
}

static void handle_edit_message(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_message m = {0};
    json_t *body = NULL;
    const char *user = sender(r);
    if (!user || !load_message(r, ms, user, &m))
        return;
    if (moat_req_json(r, &body) != MOAT_OK)
        goto cleanup;
    const char *text = NULL;
    json_t *problem = parse_text(body, &text);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        goto cleanup;
    }
    if (strcmp(m.sender_id, user) != 0) {
        moat_req_reply_problem(r, 403, "only the sender may edit a message");
        goto cleanup;
    }
    if (m.deleted_ms) {
        moat_req_reply_problem(r, 409, "the message is deleted");
        goto cleanup;
    }
    if (strcmp(m.text, text) != 0) {
        if (m.edits >= EDITS_MAX) {
            moat_req_reply_problem(
                r, 409, "a message can be edited at most %d times", EDITS_MAX);
            goto cleanup;
        }
        int rc = msg_store_edit(ms->store, m.id, text, moat_wall_ms());
        if (rc != MOAT_OK) {
            moat_req_reply_store_error(r, rc, "messaging", "edit the message");
            goto cleanup;
        }
    }
    /* An edit to the same text changes nothing and records nothing. */
    char id[MSG_ID_LEN + 1];
    snprintf(id, sizeof(id), "%s", m.id);
    msg_message_release(&m);
    int rc = msg_store_get_message(ms->store, id, &m);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "read the message");
        goto cleanup;
    }
    moat_req_reply_json(r, 200, message_json(&m));

cleanup:
    msg_message_release(&m);
    json_decref(body);
}

static void handle_delete_message(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_message m = {0};
    const char *user = caller(r);
    if (!user || !load_message(r, ms, user, &m))
        return;
    if (strcmp(m.sender_id, user) != 0) {
        moat_req_reply_problem(r, 403, "only the sender may delete a message");
        goto cleanup;
    }
    /* Deleting a tombstone again changes nothing: 204 as the first time. */
    int rc = m.deleted_ms ? MOAT_OK
                          : msg_store_delete_message(ms->store, m.id, user,
                                                     moat_wall_ms());
    if (rc != MOAT_OK && rc != MOAT_ENOTFOUND) {
        moat_req_reply_store_error(r, rc, "messaging", "delete the message");
        goto cleanup;
    }
    moat_req_reply(r, 204, NULL, NULL, 0);

cleanup:
    msg_message_release(&m);
}

/* ---- POST /v1/conversations/{id}/read ---- */

static void handle_read(struct moat_req *r, void *arg)
{
    struct msg_service *ms = arg;
    struct msg_conv c = {0};
    struct msg_message m = {0};
    json_t *body = NULL;
    const char *user = caller(r);
    if (!user || !load_conv(r, ms, user, &c))
        return;
    if (moat_req_json(r, &body) != MOAT_OK)
        goto cleanup;
    static const char *const keys[] = {"up_to", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    json_t *up = json_object_get(body, "up_to");
    int64_t up_to = -1;
    if (!json_is_object(body)) {
        moat_validation_add(&v, "", "must be a JSON object");
    } else {
        moat_v_known_keys(&v, body, "", keys);
        if (json_is_integer(up) && json_integer_value(up) >= 0 &&
            json_integer_value(up) <= c.last_seq) {
            up_to = json_integer_value(up);
        } else if (json_is_string(up) &&
                   moat_id_valid(json_string_value(up), MSG_MSG_PREFIX) &&
                   msg_store_get_message(ms->store, json_string_value(up),
                                         &m) == MOAT_OK &&
                   strcmp(m.conversation_id, c.id) == 0) {
            up_to = m.seq;
        } else {
            moat_validation_add(&v, "/up_to",
                                "must be a seq from 0 to the conversation's "
                                "last_seq (%lld) or the id of one of its "
                                "messages",
                                (long long)c.last_seq);
        }
    }
    if (!moat_validation_ok(&v)) {
        moat_req_reply_problem_json(
            r, moat_validation_problem(&v, "the read mark is not valid"));
        moat_validation_release(&v);
        goto cleanup;
    }
    moat_validation_release(&v);
    int64_t read_seq;
    int rc = msg_store_read(ms->store, c.id, user, up_to, &read_seq);
    if (rc == MOAT_ENOTFOUND) {
        reply_no_conv(r);
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "store the read mark");
        goto cleanup;
    }
    char id[MSG_ID_LEN + 1];
    snprintf(id, sizeof(id), "%s", c.id);
    msg_conv_release(&c);
    rc = msg_store_get_conv(ms->store, id, user, &c);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "messaging", "read the conversation");
        goto cleanup;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:s, s:I, s:I}", "conversation_id", c.id,
                                  "read_up_to", (json_int_t)c.read_seq,
                                  "unread_count", (json_int_t)c.unread));

cleanup:
    msg_message_release(&m);
    msg_conv_release(&c);
    json_decref(body);
}

/* At shutdown, parked long polls are answered at once (with what there
 * is) instead of holding the drain until its deadline. */
static void on_drain(void *arg)
{
    struct msg_service *ms = arg;
    msg_live_release_all(ms->live);
}

int msg_routes_register(struct moat_http_server *server,
                        struct event_base *base, struct moat_metrics *metrics,
                        unsigned max_polls, struct msg_service *ms)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_POST, "/v1/conversations", handle_create_conv},
        {MOAT_GET | MOAT_HEAD, "/v1/conversations", handle_list_convs},
        {MOAT_GET | MOAT_HEAD, "/v1/conversations/{id}", handle_get_conv},
        {MOAT_POST, "/v1/conversations/{id}/members", handle_add_members},
        {MOAT_DELETE, "/v1/conversations/{id}/members/{user_id}",
         handle_remove_member},
        {MOAT_POST, "/v1/conversations/{id}/messages", handle_send},
        {MOAT_GET | MOAT_HEAD, "/v1/conversations/{id}/messages",
         handle_messages},
        {MOAT_GET | MOAT_HEAD, "/v1/conversations/{id}/messages/{msg_id}",
         handle_get_message},
        {MOAT_PATCH, "/v1/conversations/{id}/messages/{msg_id}",
         handle_edit_message},
        {MOAT_DELETE, "/v1/conversations/{id}/messages/{msg_id}",
         handle_delete_message},
        {MOAT_POST, "/v1/conversations/{id}/read", handle_read},
    };
    ms->live = msg_live_new(base, metrics, max_polls, answer_poll, ms);
    int rc = moat_http_on_drain(server, on_drain, ms);
    for (size_t i = 0; rc == MOAT_OK && i < MOAT_ARRAY_LEN(routes); i++)
        rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                             routes[i].fn, ms);
    return rc;
}
