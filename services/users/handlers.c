/*
 * handlers.c - the users service's /v1/users API: registration, profiles
 * (own and, for admins, anyone's), the admin listing, and the reply,
 * authorisation and audit helpers tokens.c and keys.c share. docs/users.md
 * describes the API and its security model for clients.
 *
 * Authorisation happens here, per object: the service skeleton has already
 * checked that a known service sent the call; the end user it acts for is
 * in moat_req_principal() (user_id empty for anonymous calls).
 */
#include "moat/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "moat/problem.h"
#include "users.h"

#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX     100
#define CURSOR_HEX_LEN     (2 * USR_ID_LEN)

/* ---- shared helpers ---- */

const struct moat_principal *usr_require_user(struct moat_req *r)
{
    const struct moat_principal *p = moat_req_principal(r);
    if (p->user_id[0])
        return p;
    moat_req_set_header(r, "WWW-Authenticate", "Bearer realm=\"moat\"");
    moat_req_reply_problem(r, 401,
                           "this needs a signed-in user: send an "
                           "access token from POST /api/v1/auth/login");
    return NULL;
}

const struct moat_principal *usr_require_admin(struct moat_req *r)
{
    const struct moat_principal *p = usr_require_user(r);
    if (!p)
        return NULL;
    if (moat_principal_is_admin(p))
        return p;
    moat_req_reply_problem(r, 403, "this needs the admin role");
    return NULL;
}

void usr_reply_store_fault(struct moat_req *r, int rc, const char *what)
{
    if (rc == USR_EINTEGRITY) {
        /* store.c has logged which row and field; the client learns
         * nothing of the row. */
        moat_req_reply_problem(r, 500,
                               "stored data failed its integrity "
                               "check");
        return;
    }
    moat_req_reply_store_error(r, rc, "users", what);
}

void usr_reply_busy(struct moat_req *r)
{
    moat_req_set_header(r, "Retry-After", "1");
    moat_req_reply_problem(r, 503,
                           "too many password operations in "
                           "progress; retry shortly");
}

void usr_reply_validation(struct moat_req *r, struct moat_validation *v,
                          const char *detail)
{
    moat_req_reply_problem_json(r, moat_validation_problem(v, detail));
}

void usr_audit(struct usr_service *usr, struct moat_req *r, const char *action,
               const char *subject, const char *outcome, json_t *detail)
{
    /* No request: the service itself acted (admin bootstrap). */
    const struct moat_principal *p = r ? moat_req_principal(r) : NULL;
    const char *actor = !r              ? "system"
                        : p->user_id[0] ? p->user_id
                                        : "anonymous";
    int rc = moat_audit_append(usr->audit, action, actor,
                               subject ? subject : "", outcome, detail);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot append to the audit log",
                 "{s:s, s:s, s:s}", "action", action, "outcome", outcome,
                 "error", moat_strerror(rc));
}

static void reply_user(struct moat_req *r, int status, const struct usr_user *u)
{
    char etag[USR_ETAG_MAX];
    usr_etag(u, etag);
    moat_req_set_header(r, "ETag", etag);
    moat_req_set_header(r, "Cache-Control", "no-store");
    if (status == 201) {
        char location[USR_ID_LEN + 16];
        snprintf(location, sizeof(location), "/v1/users/%s", u->id);
        moat_req_set_header(r, "Location", location);
    }
    moat_req_reply_json(r, status, usr_user_json_v1(u));
}

static void reply_not_found(struct moat_req *r)
{
    moat_req_reply_problem(r, 404, "there is no user with this id");
}

static void reply_email_taken(struct moat_req *r)
{
    json_t *p = moat_problem_new(409, "an account with this email address "
                                      "already exists");
    moat_problem_add_error(p, "/email", "is already registered");
    moat_req_reply_problem_json(r, p);
}

/* Load user id or reply 404 / 500. */
static bool load_user(struct moat_req *r, struct usr_service *usr,
                      const char *id, struct usr_user *u)
{
    if (!usr_id_valid(id)) {
        reply_not_found(r);
        return false;
    }
    int rc = usr_store_get(usr->store, id, u);
    if (rc == MOAT_ENOTFOUND) {
        reply_not_found(r);
        return false;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "read the user");
        return false;
    }
    return true;
}

/* Decode a JSON object body or reply (415, 400, 422). */
bool usr_read_object(struct moat_req *r, json_t **body)
{
    if (moat_req_json(r, body) < 0)
        return false;
    if (json_is_object(*body))
        return true;
    struct moat_validation v;
    moat_validation_init(&v);
    moat_validation_add(&v, "", "must be a JSON object");
    usr_reply_validation(r, &v, "the request body is not an object");
    moat_validation_release(&v);
    usr_json_release_secret(*body);
    *body = NULL;
    return false;
}

/* ---- POST /v1/users ---- */

struct register_ctx {
    struct usr_user user;
    char bidx[MOAT_BLIND_INDEX_HEX + 1];
};

static void register_ctx_free(void *arg)
{
    struct register_ctx *c = arg;
    usr_user_release(&c->user);
    free(c);
}

static void register_done(struct usr_pw_job *job, bool cancelled)
{
    struct register_ctx *c = job->ctx;
    struct usr_service *usr = job->usr;
    struct moat_req *r = job->req;

    if (cancelled) {
        moat_req_reply_problem(r, 503, "the users service is shutting down");
        return;
    }
    if (job->hash_rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "password hashing failed", "{s:s}", "error",
                 moat_strerror(job->hash_rc));
        moat_req_reply_problem(r, 500,
                               "the users service could not hash "
                               "the password");
        return;
    }
    memcpy(c->user.password_hash, job->new_hash, sizeof(job->new_hash));
    int rc = usr_store_create(usr->store, &c->user, c->bidx);
    if (rc == MOAT_ECONFLICT) {
        reply_email_taken(r);
        return;
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "create the user");
        return;
    }
    json_t *detail = json_pack("{s:s}", "role", c->user.role);
    usr_audit(usr, r, "user.register", c->user.id, "ok", detail);
    json_decref(detail);
    moat_log(MOAT_LOG_INFO, "user registered", "{s:s}", "id", c->user.id);
    reply_user(r, 201, &c->user);
}

static void handle_register(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    struct moat_validation v;
    json_t *body = NULL;
    char *email = NULL;
    const char *password = NULL, *name = NULL;
    /* Exactly these: role, id and anything else are refused rather than
     * ignored, so a client never believes it set something it did not. */
    static const char *const allowed[] = {"email", "password", "display_name",
                                          NULL};

    moat_validation_init(&v);
    if (!usr_read_object(r, &body))
        goto cleanup;
    moat_v_known_keys(&v, body, "", allowed);
    usr_v_email(&v, body, "email", true, &email);
    usr_v_password(&v, body, "password", true, &password);
    usr_v_display_name(&v, body, "display_name", true, &name);
    if (!moat_validation_ok(&v)) {
        usr_reply_validation(r, &v, "the registration has invalid fields");
        goto cleanup;
    }

    struct register_ctx *c = moat_xcalloc(1, sizeof(*c));
    usr_email_bidx(usr->kr, email, c->bidx);
    /* Early answer for a taken email, before paying for a hash; the
     * UNIQUE constraint still decides at insert time. */
    char existing[USR_ID_LEN + 1];
    int rc = usr_store_id_by_email(usr->store, c->bidx, existing);
    if (rc != MOAT_ENOTFOUND) {
        register_ctx_free(c);
        if (rc == MOAT_OK)
            reply_email_taken(r);
        else
            usr_reply_store_fault(r, rc, "check the email");
        goto cleanup;
    }
    usr_id_new(c->user.id);
    c->user.email = email;
    email = NULL;
    c->user.display_name = moat_xstrdup(name);
    snprintf(c->user.role, sizeof(c->user.role), "%s", USR_ROLE_CUSTOMER);
    c->user.created_ms = c->user.updated_ms = moat_wall_ms();

    struct usr_pw_job *job = usr_pw_job_new(usr, r, register_done);
    job->new_password = moat_xstrdup(password);
    job->ctx = c;
    job->ctx_free = register_ctx_free;
    if (usr_pw_submit(job) != MOAT_OK)
        usr_reply_busy(r);

cleanup:
    moat_free_secret(email);
    usr_json_release_secret(body);
    moat_validation_release(&v);
}

/* ---- GET /v1/users/me, GET /v1/users/{id} ---- */

static void handle_get_me(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    const struct moat_principal *p = usr_require_user(r);
    if (!p)
        return;
    struct usr_user u = {0};
    if (!load_user(r, usr, p->user_id, &u))
        return;
    reply_user(r, 200, &u);
    usr_user_release(&u);
}

static void handle_get(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    const struct moat_principal *p = usr_require_user(r);
    if (!p)
        return;
    const char *id = moat_req_param(r, "id");
    bool self = id && strcmp(id, p->user_id) == 0;
    /* Refused before any lookup: a customer learns nothing about which
     * ids exist. */
    if (!self && !moat_principal_is_admin(p)) {
        moat_req_reply_problem(r, 403, "you may only read your own profile");
        return;
    }
    struct usr_user u = {0};
    if (!load_user(r, usr, id ? id : "", &u))
        return;
    if (!self)
        usr_audit(usr, r, "admin.read_user", u.id, "ok", NULL);
    reply_user(r, 200, &u);
    usr_user_release(&u);
}

/* ---- PATCH /v1/users/me, PATCH /v1/users/{id} ---- */

struct patch_ctx {
    struct usr_user next; /* the state to write */
    int64_t expect_version;
    char bidx[MOAT_BLIND_INDEX_HEX + 1];     /* of next.email */
    char acct_key[MOAT_BLIND_INDEX_HEX + 1]; /* rate-limit key (old email) */
    char old_role[USR_ROLE_MAX];
    json_t *fields; /* names of the changed fields, for the audit */
    bool password_changed;
};

static void patch_ctx_free(void *arg)
{
    struct patch_ctx *c = arg;
    usr_user_release(&c->next);
    json_decref(c->fields);
    free(c);
}

static bool strings_differ(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") != 0;
}

/* Write the patched user and reply. */
static void patch_apply(struct moat_req *r, struct usr_service *usr,
                        struct patch_ctx *c)
{
    int rc = usr_store_replace(usr->store, &c->next, c->expect_version, c->bidx,
                               c->password_changed, moat_wall_ms(),
                               moat_req_principal(r)->user_id);
    switch (rc) {
    case MOAT_OK:
        break;
    case MOAT_ECONFLICT:
        reply_email_taken(r);
        return;
    case MOAT_ENOTFOUND:
        reply_not_found(r);
        return;
    case MOAT_EPRECOND:
        moat_req_reply_problem(r, 412,
                               "the user was changed concurrently; "
                               "fetch it again and retry");
        return;
    default:
        usr_reply_store_fault(r, rc, "update the user");
        return;
    }
    json_t *detail = json_pack("{s:O, s:b}", "fields", c->fields,
                               "sessions_revoked", c->password_changed);
    usr_audit(usr, r, "user.update", c->next.id, "ok", detail);
    json_decref(detail);
    if (strcmp(c->old_role, c->next.role) != 0) {
        detail =
            json_pack("{s:s, s:s}", "from", c->old_role, "to", c->next.role);
        usr_audit(usr, r, "admin.role_change", c->next.id, "ok", detail);
        json_decref(detail);
    }
    moat_log(MOAT_LOG_INFO, "user updated", "{s:s, s:I}", "id", c->next.id,
             "version", (json_int_t)c->next.version);
    reply_user(r, 200, &c->next);
}

static void patch_done(struct usr_pw_job *job, bool cancelled)
{
    struct patch_ctx *c = job->ctx;
    struct moat_req *r = job->req;
    struct usr_service *usr = job->usr;

    if (cancelled) {
        moat_req_reply_problem(r, 503, "the users service is shutting down");
        return;
    }
    if (!job->verified) {
        json_t *detail = json_pack("{s:s}", "reason", "wrong current_password");
        usr_audit(usr, r, "user.update", c->next.id, "denied", detail);
        json_decref(detail);
        moat_req_reply_problem(r, 403, "current_password is not correct");
        return;
    }
    moat_ratelimit_reset(usr->rl_acct, c->acct_key);
    if (c->password_changed) {
        if (job->hash_rc != MOAT_OK) {
            moat_req_reply_problem(r, 500,
                                   "the users service could not hash "
                                   "the password");
            return;
        }
        memcpy(c->next.password_hash, job->new_hash, sizeof(job->new_hash));
    }
    patch_apply(r, usr, c);
}

/* Fields a patch may never carry: server-owned. */
static bool readonly_field(const char *key)
{
    static const char *const ro[] = {"id", "version", "created_at",
                                     "updated_at", "password_hash"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ro); i++)
        if (strcmp(key, ro[i]) == 0)
            return true;
    return false;
}

/* Check which members the caller may send at all. */
static void patch_check_keys(struct moat_validation *v, json_t *patch,
                             bool admin, bool self)
{
    const char *key;
    json_t *val;
    char ptr[160];
    json_object_foreach(patch, key, val)
    {
        moat_json_pointer(ptr, sizeof(ptr), "", key);
        if (strcmp(key, "display_name") == 0 || strcmp(key, "email") == 0 ||
            strcmp(key, "current_password") == 0)
            continue;
        if (strcmp(key, "new_password") == 0) {
            if (!self)
                moat_validation_add(v, ptr,
                                    "an administrator cannot set another "
                                    "user's password");
        } else if (strcmp(key, "role") == 0) {
            if (!admin)
                moat_validation_add(v, ptr,
                                    "only an administrator can "
                                    "change a role");
            else if (self)
                moat_validation_add(v, ptr,
                                    "an administrator cannot change "
                                    "their own role");
        } else if (readonly_field(key)) {
            moat_validation_add(v, ptr,
                                "is set by the server and cannot be "
                                "changed");
        } else {
            moat_validation_add(v, ptr,
                                "is not a field of a user (display_name, "
                                "email, new_password, current_password%s)",
                                admin ? ", role" : "");
        }
    }
}

/*
 * Whether an If-Match list matches etag, with the strong comparison of RFC
 * 9110 section 13.1.1 (a weak tag never matches). Malformed: no match.
 */
static bool if_match_list(const char *list, const char *etag)
{
    size_t etag_len = strlen(etag);
    const char *p = list;
    for (;;) {
        p += strspn(p, " \t,");
        if (*p == '\0')
            return false;
        if (*p == '*')
            return true;
        bool weak = p[0] == 'W' && p[1] == '/';
        if (weak)
            p += 2;
        if (*p != '"')
            return false;
        const char *end = strchr(p + 1, '"');
        if (!end)
            return false;
        size_t len = (size_t)(end - p) + 1;
        if (!weak && len == etag_len && memcmp(p, etag, len) == 0)
            return true;
        p = end + 1;
    }
}

/* The If-Match precondition (optional): true to go on, else replied 412. */
static bool check_if_match(struct moat_req *r, const struct usr_user *cur)
{
    const char *h = moat_req_header(r, "If-Match");
    if (!h)
        return true;
    char etag[USR_ETAG_MAX];
    usr_etag(cur, etag);
    if (if_match_list(h, etag))
        return true;
    moat_req_set_header(r, "ETag", etag);
    moat_req_reply_problem(r, 412,
                           "If-Match does not match the user's "
                           "current ETag; fetch it again and retry");
    return false;
}

static void patch_user(struct moat_req *r, struct usr_service *usr,
                       const struct moat_principal *p, const char *target)
{
    struct moat_validation v;
    json_t *body = NULL;
    struct usr_user cur = {0};
    struct patch_ctx *c = NULL;
    char *email = NULL;
    const char *name = NULL, *new_password = NULL, *current = NULL,
               *role = NULL;
    bool admin = moat_principal_is_admin(p);
    bool self = strcmp(target, p->user_id) == 0;

    moat_validation_init(&v);
    if (!self && !admin) {
        moat_req_reply_problem(r, 403, "you may only change your own profile");
        goto cleanup;
    }
    if (!usr_read_object(r, &body))
        goto cleanup;
    patch_check_keys(&v, body, admin, self);
    usr_v_display_name(&v, body, "display_name", false, &name);
    usr_v_email(&v, body, "email", false, &email);
    usr_v_password(&v, body, "new_password", false, &new_password);
    moat_v_string(&v, body, "", "current_password", false, 1, USR_PASSWORD_MAX,
                  &current);
    if (moat_v_string(&v, body, "", "role", false, 1, USR_ROLE_MAX, &role) &&
        !usr_role_valid(role))
        moat_validation_add(&v, "/role",
                            "must be \"customer\", \"moderator\" or "
                            "\"admin\"");
    if (!moat_validation_ok(&v)) {
        usr_reply_validation(r, &v, "the change has invalid fields");
        goto cleanup;
    }
    if (!load_user(r, usr, target, &cur) || !check_if_match(r, &cur))
        goto cleanup;

    c = moat_xcalloc(1, sizeof(*c));
    c->fields = json_array();
    usr_user_copy(&c->next, &cur);
    c->expect_version = cur.version;
    snprintf(c->old_role, sizeof(c->old_role), "%s", cur.role);
    usr_email_bidx(usr->kr, cur.email, c->acct_key);
    memcpy(c->bidx, c->acct_key, sizeof(c->bidx));

    bool email_changed = email && strings_differ(email, cur.email);
    if (name && strings_differ(name, cur.display_name)) {
        moat_free_secret(c->next.display_name);
        c->next.display_name = moat_xstrdup(name);
        json_array_append_new(c->fields, json_string("display_name"));
    }
    if (email_changed) {
        moat_free_secret(c->next.email);
        c->next.email = email;
        email = NULL;
        usr_email_bidx(usr->kr, c->next.email, c->bidx);
        json_array_append_new(c->fields, json_string("email"));
        char owner[USR_ID_LEN + 1];
        int rc = usr_store_id_by_email(usr->store, c->bidx, owner);
        if (rc == MOAT_OK && strcmp(owner, cur.id) != 0) {
            reply_email_taken(r);
            goto cleanup;
        }
    }
    if (role && strcmp(role, cur.role) != 0) {
        snprintf(c->next.role, sizeof(c->next.role), "%s", role);
        json_array_append_new(c->fields, json_string("role"));
    }
    if (new_password) {
        c->password_changed = true;
        json_array_append_new(c->fields, json_string("password"));
    }
    if (json_array_size(c->fields) == 0) {
        reply_user(r, 200, &cur); /* nothing changes: nothing is written */
        goto cleanup;
    }

    /* Changing how the account is reached or proven needs the current
     * password too: a stolen access token alone must not take the account
     * over. An admin changing someone else's email does not know it. */
    bool needs_verify = self && (email_changed || new_password);
    if (!needs_verify) {
        patch_apply(r, usr, c);
        goto cleanup;
    }
    if (!current) {
        moat_validation_add(&v, "/current_password",
                            "is required to change the email or password");
        usr_reply_validation(r, &v, "the change has invalid fields");
        goto cleanup;
    }
    /* Guessing the current password is a login attempt by other means:
     * the same per-account limit applies (not spent on a 503). */
    uint64_t retry_ms = 0;
    if (usr_pw_busy(usr)) {
        usr_reply_busy(r);
        goto cleanup;
    }
    if (!moat_ratelimit_take(usr->rl_acct, c->acct_key, moat_mono_ms(),
                             &retry_ms)) {
        char ra[24];
        snprintf(ra, sizeof(ra), "%llu",
                 (unsigned long long)((retry_ms + 999) / 1000));
        moat_req_set_header(r, "Retry-After", ra);
        moat_req_reply_problem(r, 429,
                               "too many password attempts; retry "
                               "later");
        goto cleanup;
    }
    struct usr_pw_job *job = usr_pw_job_new(usr, r, patch_done);
    memcpy(job->verify_hash, cur.password_hash, sizeof(job->verify_hash));
    job->verify_password = moat_xstrdup(current);
    if (new_password)
        job->new_password = moat_xstrdup(new_password);
    job->ctx = c;
    job->ctx_free = patch_ctx_free;
    c = NULL;
    if (usr_pw_submit(job) != MOAT_OK)
        usr_reply_busy(r);

cleanup:
    if (c)
        patch_ctx_free(c);
    usr_user_release(&cur);
    moat_free_secret(email);
    usr_json_release_secret(body);
    moat_validation_release(&v);
}

static void handle_patch_me(struct moat_req *r, void *arg)
{
    const struct moat_principal *p = usr_require_user(r);
    if (p)
        patch_user(r, arg, p, p->user_id);
}

static void handle_patch(struct moat_req *r, void *arg)
{
    const struct moat_principal *p = usr_require_user(r);
    if (!p)
        return;
    const char *id = moat_req_param(r, "id");
    patch_user(r, arg, p, id ? id : "");
}

/* ---- GET /v1/users (admin) ---- */

static void cursor_encode(const char *id, char out[CURSOR_HEX_LEN + 1])
{
    moat_hex(out, id, USR_ID_LEN);
}

static bool cursor_decode(const char *s, char out[USR_ID_LEN + 1])
{
    if (strlen(s) != CURSOR_HEX_LEN)
        return false;
    for (size_t i = 0; i < USR_ID_LEN; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = s[2 * i + (size_t)k];
            v <<= 4;
            if (ch >= '0' && ch <= '9')
                v |= (unsigned)(ch - '0');
            else if (ch >= 'a' && ch <= 'f')
                v |= (unsigned)(ch - 'a' + 10);
            else
                return false;
        }
        out[i] = (char)v;
    }
    out[USR_ID_LEN] = '\0';
    return usr_id_valid(out);
}

static void query_error(json_t **problem, const char *param, const char *msg)
{
    if (!*problem)
        *problem = moat_problem_new(400, "the query string has invalid "
                                         "parameters");
    json_t *errors = json_object_get(*problem, "errors");
    if (!errors) {
        errors = json_array();
        json_object_set_new(*problem, "errors", errors);
    }
    json_t *name = json_string(param);
    if (!name)
        name = json_string("(not valid UTF-8)");
    json_array_append_new(
        errors, json_pack("{s:o, s:s}", "parameter", name, "detail", msg));
}

struct list_query {
    const char *email;
    size_t limit;
    char after[USR_ID_LEN + 1];
    json_t *problem;
};

static void parse_list_query(struct moat_req *r, struct list_query *q)
{
    void *iter = NULL;
    const char *key, *value;
    q->limit = LIST_LIMIT_DEFAULT;
    while (moat_req_query_next(r, &iter, &key, &value)) {
        value = value ? value : "";
        if (strcmp(key, "limit") == 0) {
            int64_t limit;
            if (moat_parse_i64(value, 1, LIST_LIMIT_MAX, &limit) != MOAT_OK)
                query_error(&q->problem, key,
                            "must be an integer from 1 to 100");
            else
                q->limit = (size_t)limit;
        } else if (strcmp(key, "cursor") == 0) {
            if (!cursor_decode(value, q->after))
                query_error(&q->problem, key,
                            "is not a next_cursor returned by this API");
        } else if (strcmp(key, "email") == 0) {
            if (!value[0] || strlen(value) > USR_EMAIL_MAX)
                query_error(&q->problem, key,
                            "must be an email address of 1 to 254 bytes");
            else
                q->email = value;
        } else {
            query_error(&q->problem, key,
                        "is not a known parameter (email, limit, cursor)");
        }
    }
}

static void handle_list(struct moat_req *r, void *arg)
{
    struct usr_service *usr = arg;
    struct list_query q = {0};
    struct usr_user *items = NULL;
    size_t n = 0;
    int rc;

    if (!usr_require_admin(r))
        return;
    parse_list_query(r, &q);
    if (q.problem) {
        moat_req_reply_problem_json(r, q.problem);
        return;
    }
    if (q.email) {
        /* Exact lookup through the blind index: the plaintext is never
         * compared, or even stored. */
        char bidx[MOAT_BLIND_INDEX_HEX + 1], id[USR_ID_LEN + 1];
        usr_email_bidx(usr->kr, q.email, bidx);
        rc = usr_store_id_by_email(usr->store, bidx, id);
        if (rc == MOAT_OK) {
            items = moat_xcalloc(1, sizeof(*items));
            rc = usr_store_get(usr->store, id, &items[0]);
            n = rc == MOAT_OK ? 1 : 0;
        }
        if (rc == MOAT_ENOTFOUND)
            rc = MOAT_OK;
    } else {
        /* One row more than the page tells whether another page follows. */
        rc = usr_store_list(usr->store, q.after, q.limit + 1, &items, &n);
    }
    if (rc != MOAT_OK) {
        usr_reply_store_fault(r, rc, "list the users");
        goto cleanup;
    }
    size_t shown = n > q.limit ? q.limit : n;
    json_t *list = json_array();
    for (size_t i = 0; i < shown; i++)
        json_array_append_new(list, usr_user_json_v1(&items[i]));
    json_t *body = json_pack("{s:o}", "items", list);
    if (n > q.limit) {
        char cursor[CURSOR_HEX_LEN + 1];
        cursor_encode(items[shown - 1].id, cursor);
        json_object_set_new(body, "next_cursor", json_string(cursor));
    } else {
        json_object_set_new(body, "next_cursor", json_null());
    }
    json_t *detail = json_pack("{s:I, s:b}", "count", (json_int_t)shown,
                               "by_email", q.email != NULL);
    usr_audit(usr, r, "admin.list_users", NULL, "ok", detail);
    json_decref(detail);
    moat_req_set_header(r, "Cache-Control", "no-store");
    moat_req_reply_json(r, 200, body);

cleanup:
    usr_users_free(items, n);
}

int usr_routes_register(struct usr_service *usr)
{
    int rc0 = usr_access_routes_register(usr);
    if (rc0 != MOAT_OK)
        return rc0;
    static const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_POST, "/v1/users", handle_register},
        {MOAT_GET, "/v1/users", handle_list},
        {MOAT_GET, "/v1/users/me", handle_get_me},
        {MOAT_PATCH, "/v1/users/me", handle_patch_me},
        {MOAT_GET, "/v1/users/{id}", handle_get},
        {MOAT_PATCH, "/v1/users/{id}", handle_patch},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(usr->svc->http, routes[i].methods,
                                 routes[i].pattern, routes[i].fn, usr);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
