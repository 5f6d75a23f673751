/*
 * handlers.c - the console's routes (docs/console.md):
 *   GET  /                      the pages (index.html), GET /ui/{file}
 *   POST /api/login             {"password"} -> a session cookie
 *   POST /api/logout
 *   GET  /api/state?after=V&wait=S   the supervisor's state (long poll)
 *   GET  /api/svc/{name}/{path}      a service's API, as the operator
 *   POST /api/svc/{name}/v1/admin/dead-letters/redrive, .../replay?verify=1
 *   POST /api/audit, GET /api/audit   `moat audit`, run by the supervisor
 *   *    /api/gw/{path}         the gateway's /api/v1/{path}, with the
 *                               customer's own Authorization
 * Every /api route but login needs the operator's session.
 */
#include "moat/common.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "console.h"
#include "moat/http_client.h"
#include "moat/log.h"

#define PROXY_MAX_QUERY 2048
#define PASSWORD_MAX    256

/* ---- sessions ---- */

/* The value of cookie name in the request's Cookie header, into out. */
static bool find_cookie(struct moat_req *req, const char *name, char *out,
                        size_t cap)
{
    const char *h = moat_req_header(req, "Cookie");
    size_t n = strlen(name);
    for (const char *p = h; p && *p;) {
        while (*p == ' ' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > n && strncmp(p, name, n) == 0 && p[n] == '=' &&
            len - n - 1 < cap) {
            memcpy(out, p + n + 1, len - n - 1);
            out[len - n - 1] = '\0';
            return true;
        }
        p = end;
    }
    return false;
}

static struct console_session *find_session(struct console *c,
                                            struct moat_req *req)
{
    char tok[65];
    if (!find_cookie(req, CONSOLE_COOKIE, tok, sizeof(tok)) ||
        strlen(tok) != 64)
        return NULL;
    int64_t now = moat_wall_ms();
    for (size_t i = 0; i < CONSOLE_MAX_SESSIONS; i++) {
        struct console_session *s = &c->sessions[i];
        if (s->token[0] && s->expires_ms > now &&
            sodium_memcmp(s->token, tok, 64) == 0)
            return s;
    }
    return NULL;
}

/* True when the request carries a live operator session; else 401. */
static bool require_operator(struct console *c, struct moat_req *req)
{
    if (find_session(c, req))
        return true;
    /* Told apart from a 401 a service answers through the console. */
    moat_req_set_header(req, "WWW-Authenticate", "MoatConsole");
    moat_req_reply_problem(req, 401, "log in to the console first");
    return false;
}

/* Compare as hashes: equal lengths, constant time. */
static bool password_ok(const char *want, const char *got)
{
    unsigned char a[32], b[32];
    crypto_generichash(a, sizeof(a), (const unsigned char *)want, strlen(want),
                       NULL, 0);
    crypto_generichash(b, sizeof(b), (const unsigned char *)got, strlen(got),
                       NULL, 0);
    return sodium_memcmp(a, b, sizeof(a)) == 0;
}

static void handle_login(struct moat_req *req, void *arg)
{
    struct console *c = arg;
    /* After CONSOLE_LOGIN_FREE_FAILS wrong passwords in a row, one try
     * per second: guessing stays hopeless. */
    int64_t now = moat_wall_ms();
    if (c->login_fails >= CONSOLE_LOGIN_FREE_FAILS && now < c->next_login_ms) {
        moat_req_set_header(req, "Retry-After", "1");
        moat_req_reply_problem(req, 429,
                               "too many wrong passwords; wait a "
                               "second");
        return;
    }
    json_t *body = NULL;
    if (moat_req_json(req, &body) != MOAT_OK)
        return; /* moat_req_json replied */
    const char *pw = json_string_value(json_object_get(body, "password"));
    if (!pw || strlen(pw) > PASSWORD_MAX || !password_ok(c->password, pw)) {
        json_decref(body);
        c->login_fails++;
        c->next_login_ms = now + 1000;
        moat_log(MOAT_LOG_WARN, "console login refused", "{s:s, s:i}", "peer",
                 moat_req_peer(req), "failures_in_a_row", c->login_fails);
        moat_req_reply_problem(req, 401, "wrong password");
        return;
    }
    json_decref(body);
    c->login_fails = 0;
    /* A free or expired slot, else the one closest to expiry. */
    struct console_session *slot = &c->sessions[0];
    for (size_t i = 0; i < CONSOLE_MAX_SESSIONS; i++) {
        struct console_session *s = &c->sessions[i];
        if (!s->token[0] || s->expires_ms <= now) {
            slot = s;
            break;
        }
        if (s->expires_ms < slot->expires_ms)
            slot = s;
    }
    unsigned char raw[32];
    moat_random_bytes(raw, sizeof(raw));
    moat_hex(slot->token, raw, sizeof(raw));
    slot->expires_ms = now + CONSOLE_SESSION_TTL_S * 1000LL;
    char cookie[160];
    snprintf(cookie, sizeof(cookie),
             "%s=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%d",
             CONSOLE_COOKIE, slot->token, CONSOLE_SESSION_TTL_S);
    moat_req_set_header(req, "Set-Cookie", cookie);
    moat_log(MOAT_LOG_INFO, "console login", "{s:s}", "peer",
             moat_req_peer(req));
    moat_req_reply_json(req, 200, json_pack("{s:b}", "ok", 1));
}

static void handle_logout(struct moat_req *req, void *arg)
{
    struct console *c = arg;
    struct console_session *s = find_session(c, req);
    if (s)
        memset(s, 0, sizeof(*s));
    moat_req_set_header(req, "Set-Cookie",
                        CONSOLE_COOKIE "=; Path=/; HttpOnly; SameSite=Strict; "
                                       "Max-Age=0");
    moat_req_reply_json(req, 200, json_pack("{s:b}", "ok", 1));
}

/* ---- the supervisor's state, as a long poll ---- */

static void reply_state(struct console *c, struct moat_req *req)
{
    moat_req_set_header(req, "Cache-Control", "no-store");
    moat_req_reply_json(req, 200,
                        json_pack("{s:I, s:O}", "version",
                                  (json_int_t)c->version, "state",
                                  c->state ? c->state : json_null()));
}

void console_wake_waiters(struct console *c, bool stopping)
{
    int64_t now = moat_wall_ms();
    for (size_t i = 0; i < CONSOLE_MAX_WAITERS; i++) {
        struct console_waiter *w = &c->waiters[i];
        if (!w->req)
            continue;
        if (stopping) {
            moat_req_reply_problem(w->req, 503, "the console is stopping");
        } else if (c->version > w->after || now >= w->deadline_ms) {
            reply_state(c, w->req);
        } else {
            continue;
        }
        w->req = NULL;
    }
}

static void handle_state(struct moat_req *req, void *arg)
{
    struct console *c = arg;
    if (!require_operator(c, req))
        return;
    const char *a = moat_req_query(req, "after");
    const char *w = moat_req_query(req, "wait");
    long long after = a ? strtoll(a, NULL, 10) : -1;
    long wait = w ? strtol(w, NULL, 10) : 0;
    if (wait < 0 || wait > CONSOLE_MAX_WAIT_S) {
        moat_req_reply_problem(req, 400, "wait must be 0..%d seconds",
                               CONSOLE_MAX_WAIT_S);
        return;
    }
    if (c->version > after || wait == 0) {
        reply_state(c, req);
        return;
    }
    for (size_t i = 0; i < CONSOLE_MAX_WAITERS; i++) {
        if (!c->waiters[i].req) {
            c->waiters[i] = (struct console_waiter){
                req, after, moat_wall_ms() + wait * 1000L};
            return;
        }
    }
    moat_req_set_header(req, "Retry-After", "1");
    moat_req_reply_problem(req, 503, "too many waiting pages");
}

/* ---- calls on the browser's behalf ---- */

/* Personal data never reaches the page: these keys of event data are
 * replaced (docs/console.md "Events"). */
static const char *const pii_keys[] = {
    "email",      "display_name", "phone",    "address",       "street",
    "city",       "postcode",     "password", "card",          "card_token",
    "ip",         "client_ip",    "bio",      "text",          "body",
    "birth_date", "full_name",    "content",  "customer_name",
};

static void redact(json_t *j)
{
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_object(j)) {
        json_object_foreach(j, k, v)
        {
            bool pii = false;
            for (size_t p = 0; p < MOAT_ARRAY_LEN(pii_keys); p++)
                pii = pii || strcmp(k, pii_keys[p]) == 0;
            if (pii && !json_is_null(v))
                json_object_set_new(j, k, json_string("[redacted]"));
            else
                redact(v);
        }
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v) redact(v);
    }
}

struct pending {
    struct moat_req *req;
    bool redact; /* events or dead letters: strip personal data */
};

static void on_answer(const struct moat_http_response *resp, void *arg)
{
    struct pending *p = arg;
    struct moat_req *req = p->req;
    bool red = p->redact;
    free(p);
    if (resp->err != MOAT_OK) {
        moat_req_reply_problem(req, 502, "no answer: %s",
                               resp->err_msg ? resp->err_msg
                                             : moat_strerror(resp->err));
        return;
    }
    const char *ct = moat_http_response_header(resp, "content-type");
    if (red && resp->status == 200) {
        json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
        if (j) {
            redact(j);
            moat_req_reply_json(req, 200, j);
            return;
        }
    }
    moat_req_set_header(req, "X-Content-Type-Options", "nosniff");
    moat_req_reply(req, resp->status, ct ? ct : "application/octet-stream",
                   resp->body, resp->body_len);
}

/* The query string of the request ("" or "?a=b"), if short enough. */
static const char *query_of(struct moat_req *req)
{
    const char *q = strchr(moat_req_target(req), '?');
    return q && strlen(q) <= PROXY_MAX_QUERY ? q : "";
}

/* A path the console passes on: no dot segments (the allow-list of
 * writes compares paths as written). */
static bool plain_path(struct moat_req *req, const char *rest)
{
    if (strstr(rest, "..") || strstr(rest, "//")) {
        moat_req_reply_problem(req, 400,
                               "the path may not contain \"..\" "
                               "or \"//\"");
        return false;
    }
    return true;
}

static void forward(struct console *c, struct moat_req *req, const char *url,
                    const struct moat_http_header *h, size_t nh, bool red)
{
    size_t len = 0;
    const char *body = moat_req_body(req, &len);
    struct pending *p = moat_xcalloc(1, sizeof(*p));
    p->req = req;
    p->redact = red;
    struct moat_http_call call = {
        .method = moat_method_name(moat_req_method(req)),
        .url = url,
        .headers = h,
        .nheaders = nh,
        .body = len ? body : NULL,
        .body_len = len,
        .trace = moat_req_trace(req),
    };
    if (moat_http_client_send(c->http, &call, on_answer, p) != MOAT_OK) {
        free(p);
        moat_req_reply_problem(req, 400, "cannot call %s", url);
    }
}

/* The URL of service name in the supervisor's state, or NULL. */
static const char *service_url(struct console *c, const char *name)
{
    json_t *svcs = json_object_get(c->state, "services"), *s;
    size_t i;
    json_array_foreach(svcs, i, s)
    {
        if (strcmp(json_string_value(json_object_get(s, "name")) ?: "", name) ==
            0)
            return json_string_value(json_object_get(s, "url"));
    }
    return NULL;
}

static void handle_svc(struct moat_req *req, void *arg)
{
    struct console *c = arg;
    if (!require_operator(c, req))
        return;
    const char *name = moat_req_param(req, "name");
    const char *rest = moat_req_param(req, "rest");
    if (!plain_path(req, rest))
        return;
    const char *base = service_url(c, name);
    if (!base) {
        moat_req_reply_problem(req, 404, "no service \"%s\" in this deployment",
                               name);
        return;
    }
    /* Writes: only the operator's repairs the pages offer. */
    if (moat_req_method(req) == MOAT_POST) {
        bool ok = strcmp(rest, "v1/admin/dead-letters/redrive") == 0 ||
                  (strcmp(rest, "v1/admin/replay") == 0 &&
                   strcmp(moat_req_query(req, "verify") ?: "", "1") == 0);
        if (!ok) {
            moat_req_reply_problem(req, 403,
                                   "the console only redrives dead letters "
                                   "and verifies replays");
            return;
        }
    }
    char *token = NULL;
    struct moat_principal op = {.perms = MOAT_PERM_ALL};
    snprintf(op.user_id, sizeof(op.user_id), "operator");
    snprintf(op.role, sizeof(op.role), "admin");
    if (moat_auth_token(c->op, name, &op, &token) != MOAT_OK) {
        moat_req_reply_problem(req, 500, "cannot sign as the operator");
        return;
    }
    char *url = moat_xasprintf("%s/%s%s", base, rest, query_of(req));
    struct moat_http_header h[] = {{MOAT_SERVICE_TOKEN_HEADER, token}};
    forward(c, req, url, h, 1,
            strcmp(rest, "v1/events") == 0 ||
                strcmp(rest, "v1/admin/dead-letters") == 0);
    sodium_memzero(token, strlen(token));
    free(token);
    free(url);
}

static void handle_gw(struct moat_req *req, void *arg)
{
    struct console *c = arg;
    if (!require_operator(c, req))
        return;
    if (!c->gateway_url) {
        moat_req_reply_problem(req, 404, "this console has no gateway");
        return;
    }
    if (!plain_path(req, moat_req_param(req, "rest")))
        return;
    static const char *const pass[] = {"Authorization", "Content-Type",
                                       "Idempotency-Key"};
    struct moat_http_header h[MOAT_ARRAY_LEN(pass)];
    size_t nh = 0;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(pass); i++) {
        const char *v = moat_req_header(req, pass[i]);
        if (v)
            h[nh++] = (struct moat_http_header){pass[i], v};
    }
    char *url = moat_xasprintf("%s/api/v1/%s%s", c->gateway_url,
                               moat_req_param(req, "rest"), query_of(req));
    forward(c, req, url, h, nh, false);
    free(url);
}

/* ---- the audit, run by the supervisor (cli/up.c) ---- */

static bool exists(const char *dir, const char *name, struct stat *st)
{
    char *path = moat_xasprintf("%s/%s", dir, name);
    bool ok = stat(path, st) == 0;
    free(path);
    return ok;
}

/* POST /api/audit: ask the supervisor for `moat audit` (202). */
static void handle_audit_run(struct moat_req *req, void *arg)
{
    struct console *c = arg;
    if (!require_operator(c, req))
        return;
    char *path = moat_xasprintf("%s/audit.request", c->svc->cfg.data_dir);
    FILE *f = fopen(path, "w");
    free(path);
    if (!f) {
        moat_req_reply_problem(req, 500, "cannot ask for an audit");
        return;
    }
    fclose(f);
    moat_req_reply_json(req, 202, json_pack("{s:b}", "requested", 1));
}

/* GET /api/audit: {"state": "idle"|"requested"|"running", "finished_at":
 * unix s|null, "report": the last `moat audit --json` or null}. */
static void handle_audit_get(struct moat_req *req, void *arg)
{
    struct console *c = arg;
    if (!require_operator(c, req))
        return;
    const char *dir = c->svc->cfg.data_dir;
    struct stat st;
    const char *state = exists(dir, "audit.request", &st)    ? "requested"
                        : exists(dir, "audit.json.tmp", &st) ? "running"
                                                             : "idle";
    char *path = moat_xasprintf("%s/audit.json", dir);
    json_t *report = NULL;
    json_t *finished = json_null();
    if (stat(path, &st) == 0 && st.st_size < CONSOLE_STATE_MAX * 8) {
        report = json_load_file(path, 0, NULL);
        finished = json_integer((json_int_t)st.st_mtim.tv_sec);
    }
    free(path);
    moat_req_set_header(req, "Cache-Control", "no-store");
    moat_req_reply_json(req, 200,
                        json_pack("{s:s, s:o, s:o}", "state", state,
                                  "finished_at", finished, "report",
                                  report ? report : json_null()));
}

/* ---- the pages ---- */

static const char *content_type(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (dot && strcmp(dot, ".html") == 0)
        return "text/html; charset=utf-8";
    if (dot && strcmp(dot, ".js") == 0)
        return "text/javascript; charset=utf-8";
    if (dot && strcmp(dot, ".css") == 0)
        return "text/css; charset=utf-8";
    if (dot && strcmp(dot, ".svg") == 0)
        return "image/svg+xml";
    return "application/octet-stream";
}

static void serve(struct moat_req *req, const char *path)
{
    for (size_t i = 0; i < console_nassets; i++) {
        const struct console_asset *a = &console_assets[i];
        if (strcmp(a->path, path) != 0)
            continue;
        /* Nothing but this origin: no CDN, no inline script, no frames. */
        moat_req_set_header(req, "Content-Security-Policy",
                            "default-src 'self'; img-src 'self' data:; "
                            "frame-ancestors 'none'");
        moat_req_set_header(req, "X-Content-Type-Options", "nosniff");
        moat_req_set_header(req, "Cache-Control", "no-cache");
        moat_req_reply(req, 200, content_type(path), (const char *)a->data,
                       a->len);
        return;
    }
    moat_req_reply_problem(req, 404, "no page %s", path);
}

static void handle_index(struct moat_req *req, void *arg)
{
    serve(req, "index.html");
}

static void handle_asset(struct moat_req *req, void *arg)
{
    serve(req, moat_req_param(req, "file"));
}

int console_routes_register(struct console *c)
{
    struct moat_http_server *h = c->svc->http;
    const struct {
        unsigned methods;
        const char *pattern;
        moat_handler_fn fn;
    } routes[] = {
        {MOAT_GET, "/", handle_index},
        {MOAT_GET, "/ui/{file*}", handle_asset},
        {MOAT_POST, "/api/login", handle_login},
        {MOAT_POST, "/api/logout", handle_logout},
        {MOAT_GET, "/api/state", handle_state},
        {MOAT_POST, "/api/audit", handle_audit_run},
        {MOAT_GET, "/api/audit", handle_audit_get},
        {MOAT_GET | MOAT_POST, "/api/svc/{name}/{rest*}", handle_svc},
        {MOAT_GET | MOAT_POST | MOAT_PUT | MOAT_PATCH | MOAT_DELETE,
         "/api/gw/{rest*}", handle_gw},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(routes); i++) {
        int rc = moat_http_route(h, routes[i].methods, routes[i].pattern,
                                 routes[i].fn, c);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
