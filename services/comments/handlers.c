/*
 * handlers.c - comments' HTTP API (docs/comments.md): posting a comment
 * (with an optional Idempotency-Key), listing a target's threads, reading,
 * deleting, approving and rejecting one, and the moderation settings. The
 * checks against posts and messaging are upstream.c, the SQL is store.c.
 *
 * Authorisation (docs/comments.md "Who may do what"):
 *  - A moderator is an end user with the moderate permission in the
 *    token (roles "admin" and "moderator", moat/auth.h).
 *  - Readers see approved comments, their own in any state, and a
 *    moderator sees every one; a comment someone may not see is 404.
 *  - Comments on a message exist only for the conversation's members, as
 *    messaging says each time: every route touching one first asks
 *    messaging for the message acting for the caller. A non-member gets
 *    404 exactly like for an unknown id; a moderator is no exception
 *    (conversations are private). Messaging unreachable: 503.
 */
#include "moat/common.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comments.h"
#include "moat/auth.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"

/* Caps of client-controlled sizes (docs/comments.md). */
#define TEXT_MAX_BYTES     2000
#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX     50
#define CURSOR_HEX_LEN     (2 * CMT_ID_LEN)
#define RETRY_AFTER_S      "1"
#define PROBLEM_IDEM       "urn:moat:problem:idempotency-key-"
#define PROBLEM_SUSPENDED  "urn:moat:problem:commenting-suspended"

/* One request waiting for posts or messaging (upstream.c). */
struct op {
    struct cmt_service *cs;
    struct cmt_comment c; /* the new one, or the one loaded */
    bool keyed;
    char key[MOAT_IDEM_KEY_MAX + 1];
    char fp[65];
    /* list */
    bool has_after;
    char after[CMT_ID_LEN + 1];
    size_t limit;
    /* approve / reject: the new status; moderation settings: the kind */
    char what[16];
    char id[CMT_TARGET_MAX + 1];
    bool requires;
};

static struct op *op_new(struct cmt_service *cs)
{
    struct op *op = moat_xcalloc(1, sizeof(*op));
    op->cs = cs;
    return op;
}

static void op_free(void *arg)
{
    struct op *op = arg;
    cmt_comment_release(&op->c);
    free(op);
}

/* ---- replies ---- */

static void reply_no_comment(struct moat_req *r)
{
    moat_req_reply_problem(r, 404, "no such comment");
}

/* The moderate permission of the token (moat/auth.h: the moderator and
 * admin roles have it; the gateway keeps it current on role changes). */
static bool is_moderator(const struct moat_principal *p)
{
    return p->user_id[0] && (p->perms & MOAT_PERM_MODERATE);
}

/* May viewer p see c? mod: p moderates c's target (moderates()). */
static bool visible(const struct cmt_comment *c, const struct moat_principal *p,
                    bool mod)
{
    return strcmp(c->status, "approved") == 0 || mod ||
           (p->user_id[0] && strcmp(c->author_id, p->user_id) == 0);
}

static json_t *time_or_null(int64_t ms)
{
    return ms ? json_integer((json_int_t)(ms / 1000)) : json_null();
}

static json_t *target_json(const struct cmt_target *t)
{
    if (strcmp(t->kind, "message") == 0)
        return json_pack("{s:s, s:s, s:s}", "kind", t->kind, "conversation_id",
                         t->conversation_id, "message_id", t->id);
    return json_pack("{s:s, s:s}", "kind", t->kind, "id", t->id);
}

static json_t *comment_json(const struct cmt_comment *c, bool moderator)
{
    json_t *j = json_pack(
        "{s:s, s:s, s:o, s:s?, s:s, s:s?, s:s, s:I, s:o, s:b, s:o}", "id",
        c->id, "object", "comment", "target", target_json(&c->target),
        "parent_id", c->parent_id[0] ? c->parent_id : NULL, "author_id",
        c->author_id, "text", c->text, "status", c->status, "created_at",
        (json_int_t)(c->created_ms / 1000), "moderated_at",
        time_or_null(c->moderated_ms), "deleted", c->deleted_ms != 0,
        "deleted_at", time_or_null(c->deleted_ms));
    if (!j)
        moat_die("cannot build a comment's JSON");
    if (moderator && c->deleted_ms)
        json_object_set_new(
            j, "deleted_reason",
            json_string(c->deleted_reason ? c->deleted_reason : ""));
    return j;
}

static void reply_comment(struct moat_req *r, int status,
                          const struct cmt_comment *c, bool replayed, bool mod)
{
    if (status == 201) {
        /* An absolute path: the gateway rewrites it to its public prefix. */
        char location[CMT_ID_LEN + 16];
        snprintf(location, sizeof(location), "/v1/comments/%s", c->id);
        moat_req_set_header(r, "Location", location);
    }
    if (replayed)
        moat_req_set_header(r, "Idempotent-Replayed", "true");
    moat_req_reply_json(r, status, comment_json(c, mod));
}

/* ---- access to a target ---- */

/* Is the caller an admin member of conversation c (messaging's JSON)? */
static bool conversation_admin(json_t *conv, const char *user)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(conv, "members"), i, m)
    {
        const char *id = json_string_value(json_object_get(m, "user_id"));
        const char *role = json_string_value(json_object_get(m, "role"));
        if (id && role && strcmp(id, user) == 0)
            return strcmp(role, "admin") == 0;
    }
    return false;
}

/*
 * Does the caller moderate the comments of t? Moderators do everywhere; a
 * post's author does on the post (as recorded from posts' answer); a
 * conversation's admins do on its messages (found: messaging's answer for
 * the conversation, from with_access).
 */
static bool moderates(struct moat_req *r, struct op *op,
                      const struct cmt_target *t, json_t *found)
{
    const struct moat_principal *who = moat_req_principal(r);
    if (is_moderator(who))
        return true;
    if (!who->user_id[0])
        return false;
    if (strcmp(t->kind, "message") == 0)
        return found && conversation_admin(found, who->user_id);
    bool owner = false;
    int rc =
        cmt_store_is_post_owner(op->cs->store, t->id, who->user_id, &owner);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot read a post's owner", "{s:s}", "error",
                 moat_strerror(rc));
    return owner;
}

/*
 * Run then(r, op, found) once the caller may touch target t: at once for
 * a post (posts are public), after messaging confirms the caller is a
 * member of the conversation for a message (found: messaging's answer,
 * NULL when it answers 404): of the message itself when message is true
 * (a new comment needs the message to exist), else of the conversation
 * (which lists its admins). Takes op.
 */
static void with_access(struct moat_req *r, struct op *op,
                        const struct cmt_target *t, bool message,
                        cmt_upstream_fn then)
{
    if (strcmp(t->kind, "message") != 0) {
        json_t *ok = json_object();
        then(r, op, ok);
        json_decref(ok);
        return;
    }
    if (!moat_req_require_user(r)) {
        op_free(op);
        return;
    }
    char path[2 * CMT_TARGET_MAX + 48];
    snprintf(path, sizeof(path), "/v1/conversations/%s%s%s", t->conversation_id,
             message ? "/messages/" : "", message ? t->id : "");
    cmt_upstream_get(op->cs, r, "messaging", path, then, op_free, op);
}

/* Load comment {id} into op->c, or answer 404 / 5xx and return false. */
static bool load_comment(struct moat_req *r, struct op *op)
{
    const char *id = moat_req_param(r, "id");
    int rc = id && moat_id_valid(id, CMT_ID_PREFIX)
                 ? cmt_store_get(op->cs->store, id, &op->c)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND)
        reply_no_comment(r);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "comments", "read the comment");
    return rc == MOAT_OK;
}

/* ---- validation ---- */

/* The text's problem, or NULL when it is acceptable. */
static const char *text_problem(const char *s, size_t len)
{
    if (len < 1 || len > TEXT_MAX_BYTES)
        return "must be 1 to 2000 bytes of UTF-8";
    return moat_text_problem(s, len);
}

/* Copy id into out when it is prefix + a well-formed id; else false. */
static bool take_id(json_t *v, const char *prefix, char *out, size_t cap)
{
    const char *s = json_string_value(v);
    if (!s || !moat_id_valid(s, prefix) || strlen(s) >= cap)
        return false;
    snprintf(out, cap, "%s", s);
    return true;
}

static void parse_target(struct moat_validation *v, json_t *t,
                         struct cmt_target *out)
{
    static const char *const post_keys[] = {"kind", "id", NULL};
    static const char *const msg_keys[] = {"kind", "conversation_id",
                                           "message_id", NULL};
    const char *kind = json_string_value(json_object_get(t, "kind"));
    if (!json_is_object(t) || !kind ||
        (strcmp(kind, "post") != 0 && strcmp(kind, "message") != 0)) {
        moat_validation_add(v, "/target",
                            "is required: {\"kind\": \"post\", \"id\"} or "
                            "{\"kind\": \"message\", \"conversation_id\", "
                            "\"message_id\"}");
        return;
    }
    snprintf(out->kind, sizeof(out->kind), "%s", kind);
    if (strcmp(kind, "post") == 0) {
        moat_v_known_keys(v, t, "/target", post_keys);
        if (!take_id(json_object_get(t, "id"), "post_", out->id,
                     sizeof(out->id)))
            moat_validation_add(v, "/target/id", "must be a post id");
        return;
    }
    moat_v_known_keys(v, t, "/target", msg_keys);
    if (!take_id(json_object_get(t, "conversation_id"), "cnv_",
                 out->conversation_id, sizeof(out->conversation_id)))
        moat_validation_add(v, "/target/conversation_id",
                            "must be a conversation id");
    if (!take_id(json_object_get(t, "message_id"), "msg_", out->id,
                 sizeof(out->id)))
        moat_validation_add(v, "/target/message_id", "must be a message id");
}

/* Check body into c's target, parent and text; NULL or a 422 problem. */
static json_t *parse_body(json_t *body, struct cmt_comment *c)
{
    static const char *const keys[] = {"target", "text", "parent_id", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", keys);
    parse_target(&v, json_object_get(body, "target"), &c->target);

    json_t *text = json_object_get(body, "text");
    const char *why = NULL;
    if (!json_is_string(text))
        moat_validation_add(&v, "/text", "is required and must be a string");
    else if ((why = text_problem(json_string_value(text),
                                 json_string_length(text))) != NULL)
        moat_validation_add(&v, "/text", "%s", why);
    else
        c->text = moat_xstrdup(json_string_value(text));

    json_t *parent = json_object_get(body, "parent_id");
    if (parent && !json_is_null(parent) &&
        !take_id(parent, CMT_ID_PREFIX, c->parent_id, sizeof(c->parent_id)))
        moat_validation_add(&v, "/parent_id", "must be a comment id");
    json_t *problem = NULL;
    if (!moat_validation_ok(&v))
        problem = moat_validation_problem(&v, "the comment is not valid");
    moat_validation_release(&v);
    return problem;
}

/* SHA-256 of the canonical body (sorted keys, compact), in hex. */
static void body_fingerprint(json_t *body, char out[65])
{
    char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (!canon)
        moat_die("cannot serialise a comment body");
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)canon, strlen(canon));
    free(canon);
    moat_hex(out, h, sizeof(h));
}

/* ---- POST /v1/comments ---- */

/* A replay of the key's earlier request: the same comment, or 422. */
static void replay(struct moat_req *r, struct cmt_service *cs,
                   const char *fingerprint, const char *stored_fp,
                   const char *comment_id)
{
    if (strcmp(fingerprint, stored_fp) != 0) {
        moat_req_reply_problem_json(
            r, moat_problem_typed(422, PROBLEM_IDEM "reused",
                                  "this Idempotency-Key was used for another "
                                  "comment"));
        return;
    }
    struct cmt_comment c = {0};
    int rc = cmt_store_get(cs->store, comment_id, &c);
    if (rc == MOAT_OK && c.deleted_ms)
        moat_req_reply_problem(r, 404,
                               "the comment created with this Idempotency-Key "
                               "has been deleted");
    else if (rc == MOAT_OK)
        reply_comment(r, 201, &c, true, false);
    else
        moat_req_reply_store_error(r, rc, "comments", "read the comment");
    cmt_comment_release(&c);
}

static void create_store(struct moat_req *r, void *arg, json_t *found)
{
    struct op *op = arg;
    struct cmt_comment *c = &op->c;
    if (!found) {
        moat_req_reply_problem(r, 404, "no such %s",
                               strcmp(c->target.kind, "post") == 0 ? "post"
                                                                   : "message");
        goto done;
    }
    /* posts' answer names the post's author: its comments' moderator. */
    const char *owner = json_string_value(json_object_get(found, "author_id"));
    int rc = strcmp(c->target.kind, "post") == 0 && owner
                 ? cmt_store_set_post_owner(op->cs->store, c->target.id, owner)
                 : MOAT_OK;
    if (rc == MOAT_OK)
        rc = cmt_store_create(op->cs->store, c, op->keyed ? op->key : NULL,
                              op->fp);
    switch (rc) {
    case MOAT_OK:
        moat_log(MOAT_LOG_INFO, "comment posted", "{s:s, s:s, s:s, s:s}", "id",
                 c->id, "author", c->author_id, "target", c->target.id,
                 "status", c->status);
        reply_comment(r, 201, c, false, false);
        break;
    case CMT_SUSPENDED:
        moat_req_reply_problem_json(
            r, moat_problem_typed(403, PROBLEM_SUSPENDED,
                                  "commenting is suspended for this user"));
        break;
    case CMT_BAD_PARENT:
        moat_req_reply_problem(r, 422,
                               "parent_id: no such comment on this target");
        break;
    case CMT_NESTED:
        moat_req_reply_problem(r, 422,
                               "parent_id: a reply cannot be replied to; "
                               "threads are one level deep");
        break;
    case CMT_THREAD_FULL:
        moat_req_reply_problem(r, 409, "the comment has %d replies already",
                               CMT_REPLIES_MAX);
        break;
    case MOAT_ECONFLICT:
        /* The key's record appeared between the lookup and the insert:
         * another request with the key completed while this one waited
         * for posts or messaging. */
        moat_req_set_header(r, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            r,
            moat_problem_typed(409, PROBLEM_IDEM "in-progress",
                               "a comment with this Idempotency-Key is being "
                               "created; retry to get it"));
        break;
    default:
        moat_req_reply_store_error(r, rc, "comments", "store the comment");
    }
done:
    op_free(op);
}

static void handle_create(struct moat_req *r, void *arg)
{
    struct cmt_service *cs = arg;
    json_t *body = NULL;
    /* A suspended account has no comment permission (users' tokens, kept
     * current by the gateway); a commenting suspension from a moderation
     * action is also enforced below from comments' own record. */
    if (!moat_req_require_perm(r, MOAT_PERM_COMMENT))
        return;
    const char *author = moat_req_principal(r)->user_id;
    struct op *op = op_new(cs);
    const char *hkey = moat_req_header(r, "Idempotency-Key");
    if (hkey && !moat_idem_key_parse(hkey, op->key)) {
        moat_req_reply_problem_json(
            r,
            moat_problem_typed(400, PROBLEM_IDEM "malformed",
                               "the Idempotency-Key must be 1 to 255 visible "
                               "ASCII characters"));
        goto fail;
    }
    op->keyed = hkey != NULL;
    if (moat_req_json(r, &body) != MOAT_OK)
        goto fail; /* answered 415 or 400 */
    if (!json_is_object(body)) {
        moat_req_reply_problem(r, 422, "the comment must be a JSON object");
        goto fail;
    }
    json_t *problem = parse_body(body, &op->c);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        goto fail;
    }
    body_fingerprint(body, op->fp);
    json_decref(body);
    body = NULL;

    if (op->keyed) {
        char stored_fp[65], id[CMT_ID_LEN + 1];
        int rc = cmt_idem_get(cs->store, author, op->key, stored_fp, id);
        if (rc == MOAT_OK) {
            replay(r, cs, op->fp, stored_fp, id);
            goto fail;
        }
        if (rc != MOAT_ENOTFOUND) {
            moat_req_reply_store_error(r, rc, "comments",
                                       "check the Idempotency-Key");
            goto fail;
        }
    }
    moat_id_new(CMT_ID_PREFIX, op->c.id, sizeof(op->c.id));
    snprintf(op->c.author_id, sizeof(op->c.author_id), "%s", author);
    op->c.created_ms = moat_wall_ms();
    if (strcmp(op->c.target.kind, "post") == 0) {
        /* The post must exist (posts are public: no membership). */
        char path[CMT_TARGET_MAX + 16];
        snprintf(path, sizeof(path), "/v1/posts/%s", op->c.target.id);
        cmt_upstream_get(cs, r, "posts", path, create_store, op_free, op);
        return;
    }
    with_access(r, op, &op->c.target, true, create_store);
    return;

fail:
    json_decref(body);
    op_free(op);
}

/* ---- GET /v1/comments ---- */

/* The cursor is opaque to clients: hex of the last top-level id shown. */
static bool cursor_decode(const char *s, char out[CMT_ID_LEN + 1])
{
    if (strlen(s) != CURSOR_HEX_LEN ||
        moat_unhex(s, out, CMT_ID_LEN) != MOAT_OK)
        return false;
    out[CMT_ID_LEN] = '\0';
    return moat_id_valid(out, CMT_ID_PREFIX);
}

static void list_reply(struct moat_req *r, void *arg, json_t *found)
{
    struct op *op = arg;
    const struct moat_principal *who = moat_req_principal(r);
    struct cmt_comment *items = NULL, *replies = NULL;
    size_t n = 0, nr = 0;
    if (!found) {
        moat_req_reply_problem(r, 404, "no such conversation");
        goto done;
    }
    bool mod = moderates(r, op, &op->c.target, found);
    /* One row more than the page tells whether another page follows. */
    int rc = cmt_store_list(op->cs->store, &op->c.target, NULL,
                            op->has_after ? op->after : NULL, op->limit + 1,
                            who->user_id, mod, &items, &n);
    size_t shown = n > op->limit ? op->limit : n;
    json_t *list = json_array();
    for (size_t i = 0; rc == MOAT_OK && i < shown; i++) {
        json_t *c = comment_json(&items[i], mod);
        rc = cmt_store_list(op->cs->store, &op->c.target, items[i].id, NULL,
                            CMT_REPLIES_MAX, who->user_id, mod, &replies, &nr);
        json_t *rl = json_array();
        for (size_t k = 0; k < nr; k++)
            json_array_append_new(rl, comment_json(&replies[k], mod));
        cmt_comments_free(replies, nr);
        json_object_set_new(c, "replies", rl);
        json_array_append_new(list, c);
    }
    if (rc != MOAT_OK) {
        json_decref(list);
        moat_req_reply_store_error(r, rc, "comments", "read the comments");
        goto done;
    }
    json_t *next = json_null();
    if (n > op->limit) {
        char cursor[CURSOR_HEX_LEN + 1];
        moat_hex(cursor, items[shown - 1].id, CMT_ID_LEN);
        next = json_string(cursor);
    }
    moat_req_reply_json(
        r, 200, json_pack("{s:o, s:o}", "items", list, "next_cursor", next));
done:
    cmt_comments_free(items, n);
    op_free(op);
}

static void handle_list(struct moat_req *r, void *arg)
{
    struct cmt_service *cs = arg;
    struct moat_qparam q[] = {
        {.name = "target_kind", .kind = MOAT_Q_STR, .min = 4, .max = 7},
        {.name = "target_id", .kind = MOAT_Q_STR, .min = 1, .max = 63},
        {.name = "conversation_id", .kind = MOAT_Q_STR, .min = 1, .max = 63},
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = LIST_LIMIT_MAX},
        {.name = "cursor",
         .kind = MOAT_Q_STR,
         .min = CURSOR_HEX_LEN,
         .max = CURSOR_HEX_LEN},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    struct op *op = op_new(cs);
    struct cmt_target *t = &op->c.target;
    bool message = q[0].seen && strcmp(q[0].sval, "message") == 0;
    if (!problem && (!q[0].seen || (!message && strcmp(q[0].sval, "post"))))
        moat_problem_param_error(&problem, "target_kind",
                                 "is required: post or message");
    if (!problem &&
        (!q[1].seen || !moat_id_valid(q[1].sval, message ? "msg_" : "post_")))
        moat_problem_param_error(&problem, "target_id",
                                 "is required: a post or message id");
    if (!problem && message != q[2].seen)
        moat_problem_param_error(&problem, "conversation_id",
                                 "is required for a message, and only then");
    if (!problem && message && !moat_id_valid(q[2].sval, "cnv_"))
        moat_problem_param_error(&problem, "conversation_id",
                                 "must be a conversation id");
    if (!problem && q[4].seen && !cursor_decode(q[4].sval, op->after))
        moat_problem_param_error(&problem, "cursor",
                                 "is not a next_cursor returned by this API");
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        op_free(op);
        return;
    }
    snprintf(t->kind, sizeof(t->kind), "%s", q[0].sval);
    snprintf(t->id, sizeof(t->id), "%s", q[1].sval);
    if (message)
        snprintf(t->conversation_id, sizeof(t->conversation_id), "%s",
                 q[2].sval);
    op->has_after = q[4].seen;
    op->limit = q[3].seen ? (size_t)q[3].ival : LIST_LIMIT_DEFAULT;
    with_access(r, op, t, false, list_reply);
}

/* ---- GET, DELETE /v1/comments/{id}, POST .../approve|reject ---- */

/* After the access check: found NULL (not a member), or a comment the
 * caller may not see, is 404. True when the caller may go on; *mod says
 * whether the caller moderates the comment's target. */
static bool may_see(struct moat_req *r, struct op *op, json_t *found, bool *mod)
{
    *mod = found && moderates(r, op, &op->c.target, found);
    if (found && visible(&op->c, moat_req_principal(r), *mod))
        return true;
    reply_no_comment(r);
    op_free(op);
    return false;
}

static void get_reply(struct moat_req *r, void *arg, json_t *found)
{
    struct op *op = arg;
    bool mod;
    if (!may_see(r, op, found, &mod))
        return;
    reply_comment(r, 200, &op->c, false, mod);
    op_free(op);
}

static void handle_get(struct moat_req *r, void *arg)
{
    struct op *op = op_new(arg);
    if (!load_comment(r, op)) {
        op_free(op);
        return;
    }
    with_access(r, op, &op->c.target, false, get_reply);
}

static void delete_apply(struct moat_req *r, void *arg, json_t *found)
{
    struct op *op = arg;
    bool mod;
    if (!may_see(r, op, found, &mod))
        return;
    const struct moat_principal *who = moat_req_principal(r);
    bool author = strcmp(op->c.author_id, who->user_id) == 0;
    if (!author && !mod) {
        moat_req_reply_problem(r, 403,
                               "only the author or a moderator may delete "
                               "this comment");
        goto done;
    }
    int rc = op->c.deleted_ms
                 ? MOAT_ENOTFOUND
                 : cmt_store_remove(op->cs->store, op->c.id, who->user_id,
                                    author ? "deleted by its author"
                                           : "deleted by a moderator",
                                    moat_wall_ms());
    if (rc == MOAT_ENOTFOUND) {
        reply_no_comment(r);
        goto done;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "comments", "delete the comment");
        goto done;
    }
    moat_log(MOAT_LOG_INFO, "comment deleted", "{s:s, s:s, s:s}", "id",
             op->c.id, "author", op->c.author_id, "by", who->user_id);
    moat_req_reply(r, 204, NULL, NULL, 0);
done:
    op_free(op);
}

static void handle_delete(struct moat_req *r, void *arg)
{
    if (!moat_req_require_user(r))
        return;
    struct op *op = op_new(arg);
    if (!load_comment(r, op)) {
        op_free(op);
        return;
    }
    with_access(r, op, &op->c.target, false, delete_apply);
}

static void moderate_apply(struct moat_req *r, void *arg, json_t *found)
{
    struct op *op = arg;
    bool mod;
    if (!may_see(r, op, found, &mod))
        return;
    const struct moat_principal *who = moat_req_principal(r);
    if (!mod) {
        moat_req_reply_problem(r, 403, "only a moderator may %s this comment",
                               strcmp(op->what, "approved") == 0 ? "approve"
                                                                 : "reject");
        op_free(op);
        return;
    }
    bool changed = false;
    int rc = cmt_store_moderate(op->cs->store, op->c.id, op->what, who->user_id,
                                moat_wall_ms(), &changed);
    if (rc == MOAT_ENOTFOUND) {
        reply_no_comment(r);
    } else if (rc == MOAT_ECONFLICT) {
        moat_req_reply_problem(r, 409, "the comment is %s already",
                               op->c.status);
    } else if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "comments", "moderate the comment");
    } else {
        if (changed) /* before the reply, which frees r and its principal */
            moat_log(MOAT_LOG_INFO, "comment moderated", "{s:s, s:s, s:s}",
                     "id", op->c.id, "status", op->what, "by", who->user_id);
        cmt_comment_release(&op->c);
        rc = cmt_store_get(op->cs->store, moat_req_param(r, "id"), &op->c);
        if (rc == MOAT_OK)
            reply_comment(r, 200, &op->c, false, true);
        else
            moat_req_reply_store_error(r, rc, "comments", "read the comment");
    }
    op_free(op);
}

static void handle_moderate(struct moat_req *r, const char *status,
                            struct cmt_service *cs)
{
    if (!moat_req_require_user(r))
        return;
    struct op *op = op_new(cs);
    snprintf(op->what, sizeof(op->what), "%s", status);
    if (!load_comment(r, op)) {
        op_free(op);
        return;
    }
    with_access(r, op, &op->c.target, false, moderate_apply);
}

static void handle_approve(struct moat_req *r, void *arg)
{
    handle_moderate(r, "approved", arg);
}

static void handle_reject(struct moat_req *r, void *arg)
{
    handle_moderate(r, "rejected", arg);
}

/* ---- PUT /v1/moderation/targets/{kind}/{id} ---- */

static void target_apply(struct moat_req *r, void *arg, json_t *found)
{
    struct op *op = arg;
    const struct moat_principal *who = moat_req_principal(r);
    bool post = strcmp(op->what, "post") == 0;
    if (!found) {
        moat_req_reply_problem(r, 404, "no such %s",
                               post ? "post" : "conversation");
        goto done;
    }
    const char *owner = json_string_value(json_object_get(found, "author_id"));
    bool allowed =
        post ? is_moderator(who) || (owner && strcmp(owner, who->user_id) == 0)
             : conversation_admin(found, who->user_id);
    if (!allowed) {
        moat_req_reply_problem(r, 403, "only the %s may set this",
                               post ? "post's author or a moderator"
                                    : "conversation's admins");
        goto done;
    }
    int rc = post && owner
                 ? cmt_store_set_post_owner(op->cs->store, op->id, owner)
                 : MOAT_OK;
    if (rc == MOAT_OK)
        rc = cmt_store_set_target(op->cs->store, op->what, op->id, op->requires,
                                  who->user_id, moat_wall_ms());
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "comments", "store the setting");
        goto done;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:s, s:s, s:b}", "kind", op->what, "id",
                                  op->id, "requires_moderation", op->requires));
done:
    op_free(op);
}

/* Parse {"requires_moderation": bool} into *out, or answer and false. */
static bool parse_flag(struct moat_req *r, bool *out)
{
    static const char *const keys[] = {"requires_moderation", NULL};
    json_t *body = NULL;
    if (moat_req_json(r, &body) != MOAT_OK)
        return false;
    struct moat_validation v;
    moat_validation_init(&v);
    if (!json_is_object(body))
        moat_validation_add(&v, "", "must be a JSON object");
    else
        moat_v_known_keys(&v, body, "", keys);
    if (json_is_object(body))
        moat_v_bool(&v, body, "", "requires_moderation", true, out);
    bool ok = moat_validation_ok(&v);
    if (!ok)
        moat_req_reply_problem_json(
            r, moat_validation_problem(&v, "the setting is not valid"));
    moat_validation_release(&v);
    json_decref(body);
    return ok;
}

static void handle_set_target(struct moat_req *r, void *arg)
{
    struct cmt_service *cs = arg;
    if (!moat_req_require_user(r))
        return;
    const char *kind = moat_req_param(r, "kind");
    const char *id = moat_req_param(r, "id");
    bool post = kind && strcmp(kind, "post") == 0;
    bool conv = kind && strcmp(kind, "conversation") == 0;
    if (!(post && moat_id_valid(id, "post_")) &&
        !(conv && moat_id_valid(id, "cnv_"))) {
        moat_req_reply_problem(r, 404,
                               "no such moderation target (kinds: post, "
                               "conversation)");
        return;
    }
    struct op *op = op_new(cs);
    if (!parse_flag(r, &op->requires)) {
        op_free(op);
        return;
    }
    snprintf(op->what, sizeof(op->what), "%s", kind);
    snprintf(op->id, sizeof(op->id), "%s", id);
    char path[CMT_TARGET_MAX + 32];
    snprintf(path, sizeof(path), "%s%s",
             post ? "/v1/posts/" : "/v1/conversations/", id);
    cmt_upstream_get(cs, r, post ? "posts" : "messaging", path, target_apply,
                     op_free, op);
}

/* ---- /v1/moderation/users/{id}, /v1/moderation/actions/{id} ---- */

/* A user id as principals carry them: 1..63 of [A-Za-z0-9_-]. */
static bool user_id_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > CMT_USER_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void reply_user(struct moat_req *r, struct cmt_service *cs,
                       const char *user)
{
    struct cmt_user_flags f;
    int rc = cmt_store_get_user(cs->store, user, &f);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "comments", "read the user's flags");
        return;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:s, s:b, s:b, s:s?}", "user_id", user,
                                  "requires_moderation", f.requires_moderation,
                                  "commenting_suspended", f.suspended,
                                  "suspension_reason", f.reason));
    free(f.reason);
}

static void handle_get_user(struct moat_req *r, void *arg)
{
    if (!moat_req_require_user(r))
        return;
    const struct moat_principal *who = moat_req_principal(r);
    const char *user = moat_req_param(r, "id");
    if (!user_id_valid(user) ||
        (!is_moderator(who) && strcmp(user, who->user_id) != 0)) {
        moat_req_reply_problem(r, 404, "no such user");
        return;
    }
    reply_user(r, arg, user);
}

static void handle_set_user(struct moat_req *r, void *arg)
{
    if (!moat_req_require_user(r))
        return;
    const struct moat_principal *who = moat_req_principal(r);
    const char *user = moat_req_param(r, "id");
    bool requires = false;
    if (!is_moderator(who)) {
        moat_req_reply_problem(r, 403, "only a moderator may flag a user");
        return;
    }
    if (!user_id_valid(user)) {
        moat_req_reply_problem(r, 404, "no such user");
        return;
    }
    if (!parse_flag(r, &requires))
        return;
    int rc = cmt_store_set_user(((struct cmt_service *)arg)->store, user,
                                requires, who->user_id, moat_wall_ms());
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "comments", "store the setting");
        return;
    }
    reply_user(r, arg, user);
}

static void handle_get_action(struct moat_req *r, void *arg)
{
    struct cmt_service *cs = arg;
    if (!moat_req_require_user(r))
        return;
    if (!is_moderator(moat_req_principal(r))) {
        moat_req_reply_problem(r, 403, "only a moderator may read actions");
        return;
    }
    const char *id = moat_req_param(r, "id");
    char outcome[32];
    int64_t at = 0;
    int rc = id && strlen(id) <= 128
                 ? cmt_store_get_action(cs->store, id, outcome, &at)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_ENOTFOUND) {
        moat_req_reply_problem(r, 404, "no such action applied (yet)");
        return;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "comments", "read the action");
        return;
    }
    moat_req_reply_json(r, 200,
                        json_pack("{s:s, s:s, s:I}", "action_id", id, "outcome",
                                  outcome, "applied_at",
                                  (json_int_t)(at / 1000)));
}

int cmt_routes_register(struct moat_http_server *server, struct cmt_service *cs)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_POST, "/v1/comments", handle_create},
        {MOAT_GET | MOAT_HEAD, "/v1/comments", handle_list},
        {MOAT_GET | MOAT_HEAD, "/v1/comments/{id}", handle_get},
        {MOAT_DELETE, "/v1/comments/{id}", handle_delete},
        {MOAT_POST, "/v1/comments/{id}/approve", handle_approve},
        {MOAT_POST, "/v1/comments/{id}/reject", handle_reject},
        {MOAT_PUT, "/v1/moderation/targets/{kind}/{id}", handle_set_target},
        {MOAT_GET | MOAT_HEAD, "/v1/moderation/users/{id}", handle_get_user},
        {MOAT_PUT, "/v1/moderation/users/{id}", handle_set_user},
        {MOAT_GET | MOAT_HEAD, "/v1/moderation/actions/{id}",
         handle_get_action},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, cs);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
