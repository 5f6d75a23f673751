/*
 * handlers.c - posts' HTTP API (docs/posts.md): creating a post (with an
 * optional Idempotency-Key), reading one, deleting one, and a user's
 * timeline. The parser of mentions and URLs is entities.c, the SQL is
 * store.c.
 *
 * Authorisation: reads need only the service token the skeleton checks
 * (posts are public; the gateway decides who may call). Creating needs an
 * end user, who becomes the author. Deleting needs the author or an end
 * user with the admin role; anyone else gets 403 (the post is public, so
 * there is nothing to hide by answering 404).
 */
#include "moat/common.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "entities.h"
#include "moat/auth.h"
#include "moat/id.h"
#include "moat/log.h"
#include "moat/problem.h"
#include "posts.h"

/* Caps of client-controlled sizes (docs/posts.md). */
#define TEXT_MAX_BYTES     1000
#define MEDIA_MAX          5
#define MEDIA_URL_MAX      2048
#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX     100
#define CURSOR_HEX_LEN     (2 * PST_ID_LEN)
#define RETRY_AFTER_S      "1"
#define PROBLEM_IDEM       "urn:moat:problem:idempotency-key-"

/* ---- replies ---- */

static void reply_no_post(struct moat_req *r)
{
    moat_req_reply_problem(r, 404, "no such post");
}

static json_t *post_json(const struct pst_post *p)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:O, s:O, s:O, s:I}", "id", p->id,
                     "object", "post", "author_id", p->author_id, "text",
                     p->text, "mentions", p->mentions, "urls", p->urls,
                     "media_urls", p->media_urls, "created_at",
                     (json_int_t)(p->created_ms / 1000));
}

static void reply_post(struct moat_req *r, int status, const struct pst_post *p,
                       bool replayed)
{
    if (status == 201) {
        /* An absolute path: the gateway rewrites it to its public prefix. */
        char location[PST_ID_LEN + 16];
        snprintf(location, sizeof(location), "/v1/posts/%s", p->id);
        moat_req_set_header(r, "Location", location);
    }
    if (replayed)
        moat_req_set_header(r, "Idempotent-Replayed", "true");
    moat_req_reply_json(r, status, post_json(p));
}

/* Load live post {id} into *p, or reply 404 / 5xx and return false. */
static bool load_post(struct moat_req *r, struct pst_service *ps,
                      struct pst_post *p)
{
    const char *id = moat_req_param(r, "id");
    int rc = id && moat_id_valid(id, PST_ID_PREFIX)
                 ? pst_store_get(ps->store, id, p)
                 : MOAT_ENOTFOUND;
    if (rc == MOAT_OK && p->deleted_ms) {
        pst_post_release(p);
        rc = MOAT_ENOTFOUND;
    }
    if (rc == MOAT_ENOTFOUND)
        reply_no_post(r);
    else if (rc != MOAT_OK)
        moat_req_reply_store_error(r, rc, "posts", "read the post");
    return rc == MOAT_OK;
}

/* ---- validation ---- */

/* The text's problem, or NULL when it is acceptable. */
static const char *text_problem(const char *s, size_t len)
{
    if (len < 1 || len > TEXT_MAX_BYTES)
        return "must be 1 to 1000 bytes of UTF-8";
    return moat_text_problem(s, len);
}

/* http(s)://host... of visible ASCII, at most MEDIA_URL_MAX bytes. */
static bool media_url_valid(const char *s)
{
    size_t n = strlen(s), scheme;
    if (n > MEDIA_URL_MAX)
        return false;
    if (strncasecmp(s, "https://", 8) == 0)
        scheme = 8;
    else if (strncasecmp(s, "http://", 7) == 0)
        scheme = 7;
    else
        return false;
    unsigned char host = (unsigned char)s[scheme];
    if (!((host >= 'a' && host <= 'z') || (host >= 'A' && host <= 'Z') ||
          (host >= '0' && host <= '9') || host == '['))
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '<' ||
            s[i] == '>')
            return false;
    return true;
}

/* Check body into p's text and media; NULL or a 422 problem. */
static json_t *parse_body(json_t *body, struct pst_post *p)
{
    static const char *const keys[] = {"text", "media_urls", NULL};
    struct moat_validation v;
    moat_validation_init(&v);
    moat_v_known_keys(&v, body, "", keys);

    json_t *text = json_object_get(body, "text");
    const char *why = NULL;
    if (!json_is_string(text))
        moat_validation_add(&v, "/text", "is required and must be a string");
    else if ((why = text_problem(json_string_value(text),
                                 json_string_length(text))) != NULL)
        moat_validation_add(&v, "/text", "%s", why);
    else
        p->text = moat_xstrdup(json_string_value(text));

    json_t *media = json_object_get(body, "media_urls");
    p->media_urls = json_array();
    if (media && !json_is_null(media) &&
        (!json_is_array(media) || json_array_size(media) > MEDIA_MAX)) {
        moat_validation_add(&v, "/media_urls",
                            "must be an array of at most %d URLs", MEDIA_MAX);
    } else if (json_is_array(media)) {
        size_t i;
        json_t *u;
        json_array_foreach(media, i, u)
        {
            const char *s = json_string_value(u);
            char ptr[48];
            snprintf(ptr, sizeof(ptr), "/media_urls/%zu", i);
            if (!s || !media_url_valid(s))
                moat_validation_add(&v, ptr,
                                    "must be an http:// or https:// URL of "
                                    "at most %d visible ASCII characters",
                                    MEDIA_URL_MAX);
            else
                json_array_append(p->media_urls, u);
        }
    }
    json_t *problem = NULL;
    if (!moat_validation_ok(&v))
        problem = moat_validation_problem(&v, "the post is not valid");
    moat_validation_release(&v);
    return problem;
}

/* SHA-256 of the canonical body (sorted keys, compact), in hex. */
static void body_fingerprint(json_t *body, char out[65])
{
    char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (!canon)
        moat_die("cannot serialise a post body");
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)canon, strlen(canon));
    free(canon);
    moat_hex(out, h, sizeof(h));
}

/* The parser's spans of text as a JSON array of strings. */
static json_t *spans_json(const char *text, const struct pst_span *s, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_stringn(text + s[i].off, s[i].len));
    return a;
}

/* ---- POST /v1/posts ---- */

/* A replay of the key's earlier request: the same post, or 422. */
static void replay(struct moat_req *r, struct pst_service *ps,
                   const char *fingerprint, const char *stored_fp,
                   const char *post_id)
{
    if (strcmp(fingerprint, stored_fp) != 0) {
        moat_req_reply_problem_json(
            r, moat_problem_typed(422, PROBLEM_IDEM "reused",
                                  "this Idempotency-Key was used for another "
                                  "post"));
        return;
    }
    struct pst_post p = {0};
    int rc = pst_store_get(ps->store, post_id, &p);
    if (rc == MOAT_OK && p.deleted_ms)
        moat_req_reply_problem(r, 404,
                               "the post created with this Idempotency-Key "
                               "has been deleted");
    else if (rc == MOAT_OK)
        reply_post(r, 201, &p, true);
    else
        moat_req_reply_store_error(r, rc, "posts", "read the post");
    pst_post_release(&p);
}

static void handle_create(struct moat_req *r, void *arg)
{
    struct pst_service *ps = arg;
    struct pst_post p = {0};
    json_t *body = NULL;
    char key[MOAT_IDEM_KEY_MAX + 1], fp[65];

    /* A suspended account may not post (docs/security.md). */
    if (!moat_req_require_perm(r, MOAT_PERM_POST))
        return;
    const char *author = moat_req_principal(r)->user_id;
    const char *hkey = moat_req_header(r, "Idempotency-Key");
    if (hkey && !moat_idem_key_parse(hkey, key)) {
        moat_req_reply_problem_json(
            r,
            moat_problem_typed(400, PROBLEM_IDEM "malformed",
                               "the Idempotency-Key must be 1 to 255 visible "
                               "ASCII characters"));
        return;
    }
    if (moat_req_json(r, &body) != MOAT_OK)
        return; /* answered 415 or 400 */
    if (!json_is_object(body)) {
        moat_req_reply_problem(r, 422, "the post must be a JSON object");
        goto cleanup;
    }
    json_t *problem = parse_body(body, &p);
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        goto cleanup;
    }
    body_fingerprint(body, fp);

    if (hkey) {
        char stored_fp[65], post_id[PST_ID_LEN + 1];
        int rc = pst_idem_get(ps->store, author, key, stored_fp, post_id);
        if (rc == MOAT_OK) {
            replay(r, ps, fp, stored_fp, post_id);
            goto cleanup;
        }
        if (rc != MOAT_ENOTFOUND) {
            moat_req_reply_store_error(r, rc, "posts",
                                       "check the Idempotency-Key");
            goto cleanup;
        }
    }

    struct pst_entities e;
    pst_entities_parse(p.text, &e);
    p.mentions = spans_json(p.text, e.mentions, e.nmentions);
    p.urls = spans_json(p.text, e.urls, e.nurls);
    moat_id_new(PST_ID_PREFIX, p.id, sizeof(p.id));
    snprintf(p.author_id, sizeof(p.author_id), "%s", author);
    p.created_ms = moat_wall_ms();

    int rc = pst_store_create(ps->store, &p, hkey ? key : NULL, fp);
    if (rc == MOAT_ECONFLICT) {
        /* The key's record appeared between the lookup and the insert:
         * only another writer on the database can do that. */
        moat_req_set_header(r, "Retry-After", RETRY_AFTER_S);
        moat_req_reply_problem_json(
            r, moat_problem_typed(409, PROBLEM_IDEM "in-progress",
                                  "a post with this Idempotency-Key is being "
                                  "created; retry to get it"));
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "posts", "store the post");
        goto cleanup;
    }
    moat_log(MOAT_LOG_INFO, "post created", "{s:s, s:s, s:i, s:i}", "id", p.id,
             "author", p.author_id, "mentions", (int)e.nmentions, "urls",
             (int)e.nurls);
    reply_post(r, 201, &p, false);

cleanup:
    pst_post_release(&p);
    json_decref(body);
}

/* ---- GET /v1/posts/{id} ---- */

static void handle_get(struct moat_req *r, void *arg)
{
    struct pst_service *ps = arg;
    struct pst_post p = {0};
    if (!load_post(r, ps, &p))
        return;
    reply_post(r, 200, &p, false);
    pst_post_release(&p);
}

/* ---- DELETE /v1/posts/{id} ---- */

static void handle_delete(struct moat_req *r, void *arg)
{
    struct pst_service *ps = arg;
    struct pst_post p = {0};
    if (!moat_req_require_user(r))
        return;
    const struct moat_principal *who = moat_req_principal(r);
    if (!load_post(r, ps, &p))
        return;
    if (strcmp(p.author_id, who->user_id) != 0 &&
        !moat_principal_is_admin(who)) {
        moat_req_reply_problem(r, 403,
                               "only the author or an administrator may "
                               "delete this post");
        goto cleanup;
    }
    int rc = pst_store_delete(ps->store, p.id, who->user_id, moat_wall_ms());
    if (rc == MOAT_ENOTFOUND) {
        reply_no_post(r);
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "posts", "delete the post");
        goto cleanup;
    }
    moat_log(MOAT_LOG_INFO, "post deleted", "{s:s, s:s, s:s}", "id", p.id,
             "author", p.author_id, "by", who->user_id);
    moat_req_reply(r, 204, NULL, NULL, 0);

cleanup:
    pst_post_release(&p);
}

/* ---- GET /v1/users/{id}/posts ---- */

/* A user id as principals carry them: 1..63 of [A-Za-z0-9_-]. */
static bool user_id_valid(const char *s)
{
    return moat_ref_valid(s, PST_USER_MAX);
}

/* The cursor is opaque to clients: hex of the last post id of the page. */
static bool cursor_decode(const char *s, char out[PST_ID_LEN + 1])
{
    if (strlen(s) != CURSOR_HEX_LEN ||
        moat_unhex(s, out, PST_ID_LEN) != MOAT_OK)
        return false;
    out[PST_ID_LEN] = '\0';
    return moat_id_valid(out, PST_ID_PREFIX);
}

static void handle_timeline(struct moat_req *r, void *arg)
{
    struct pst_service *ps = arg;
    const char *user = moat_req_param(r, "id");
    if (!user_id_valid(user)) {
        moat_req_reply_problem(r, 404, "no such user");
        return;
    }
    struct moat_qparam q[] = {
        {.name = "limit", .kind = MOAT_Q_INT, .min = 1, .max = LIST_LIMIT_MAX},
        {.name = "cursor",
         .kind = MOAT_Q_STR,
         .min = CURSOR_HEX_LEN,
         .max = CURSOR_HEX_LEN},
    };
    json_t *problem = moat_req_parse_query(r, q, MOAT_ARRAY_LEN(q));
    char before[PST_ID_LEN + 1];
    if (!problem && q[1].seen && !cursor_decode(q[1].sval, before))
        moat_problem_param_error(&problem, "cursor",
                                 "is not a next_cursor returned by this API");
    if (problem) {
        moat_req_reply_problem_json(r, problem);
        return;
    }
    size_t limit = q[0].seen ? (size_t)q[0].ival : LIST_LIMIT_DEFAULT;
    struct pst_post *items = NULL;
    size_t n = 0;
    /* One row more than the page tells whether another page follows. */
    int rc = pst_store_timeline(ps->store, user, q[1].seen ? before : NULL,
                                limit + 1, &items, &n);
    if (rc != MOAT_OK) {
        moat_req_reply_store_error(r, rc, "posts", "read the timeline");
        return;
    }
    size_t shown = n > limit ? limit : n;
    json_t *list = json_array();
    for (size_t i = 0; i < shown; i++)
        json_array_append_new(list, post_json(&items[i]));
    json_t *next = json_null();
    if (n > limit) {
        char cursor[CURSOR_HEX_LEN + 1];
        moat_hex(cursor, items[shown - 1].id, PST_ID_LEN);
        next = json_string(cursor);
    }
    moat_req_reply_json(
        r, 200, json_pack("{s:o, s:o}", "items", list, "next_cursor", next));
    pst_posts_free(items, n);
}

int pst_routes_register(struct moat_http_server *server, struct pst_service *ps)
{
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_POST, "/v1/posts", handle_create},
        {MOAT_GET | MOAT_HEAD, "/v1/posts/{id}", handle_get},
        {MOAT_DELETE, "/v1/posts/{id}", handle_delete},
        {MOAT_GET | MOAT_HEAD, "/v1/users/{id}/posts", handle_timeline},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(server, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, ps);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
