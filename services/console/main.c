/*
 * main.c - the console service (console.h, docs/console.md): the web
 * console of a deployment, behind the operator's password.
 *
 * Environment (besides moat/service.h's):
 *   MOAT_CONSOLE_PASSWORD     the operator's login password (moat up
 *                             generates it into var/secrets.json)
 *   MOAT_OPERATOR_KEY         the operator's key: the console signs its
 *                             calls to the other services as the operator
 *   MOAT_CONSOLE_GATEWAY_URL  the gateway, for the storefront and the
 *                             social pages (customers' own tokens); unset:
 *                             those pages have nothing to call
 *
 * With TLS, moat/service.h's MOAT_TLS_* are the operator's certificate and
 * key (moat up, docs/security.md): the services take the operator's tokens
 * only over the operator's certificate. The console serves HTTPS with it
 * and asks browsers for no certificate (public_api).
 */
#include "moat/common.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "console.h"
#include "moat/config.h"
#include "moat/http_client.h"
#include "moat/log.h"

/* In moat/service.h's FREE ORDER. */
static void console_free(struct console *c)
{
    if (!c)
        return;
    if (c->tick)
        event_free(c->tick);
    console_wake_waiters(c, true);
    moat_http_client_free(c->http);
    moat_auth_free(c->op);
    json_decref(c->state);
    free(c->state_text);
    free(c->state_path);
    free(c);
}

/* Read the supervisor's copy; bump the version when it changed. */
static void read_state(struct console *c)
{
    /* The supervisor replaces the file (rename): a new inode or mtime is
     * a change; anything else is not worth reading. */
    struct stat st;
    if (stat(c->state_path, &st) != 0)
        return;
    if (st.st_ino == c->state_ino &&
        st.st_mtim.tv_sec == c->state_mtime.tv_sec &&
        st.st_mtim.tv_nsec == c->state_mtime.tv_nsec)
        return;
    c->state_ino = st.st_ino;
    c->state_mtime = st.st_mtim;
    FILE *f = fopen(c->state_path, "r");
    if (!f)
        return;
    char *buf = moat_xcalloc(1, CONSOLE_STATE_MAX + 1);
    size_t n = fread(buf, 1, CONSOLE_STATE_MAX, f);
    fclose(f);
    buf[n] = '\0';
    json_t *j = n ? json_loads(buf, 0, NULL) : NULL;
    if (!j || strcmp(buf, c->state_text) == 0) {
        json_decref(j); /* half-written files cannot happen (rename) */
        free(buf);
        return;
    }
    free(c->state_text);
    c->state_text = buf;
    json_decref(c->state);
    c->state = j;
    c->version++;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct console *c = arg;
    read_state(c);
    console_wake_waiters(c, false);
}

/* Parked long polls are answered at once when the service drains. */
static void on_drain(void *arg)
{
    console_wake_waiters(arg, true);
}

static int console_init(struct moat_service *svc)
{
    struct console *c = moat_xcalloc(1, sizeof(*c));
    c->svc = svc;
    c->state_text = moat_xstrdup("");
    c->state_path = moat_xasprintf("%s/moat.state", svc->cfg.data_dir);
    int rc = MOAT_OK;
    c->password = moat_env_str("MOAT_CONSOLE_PASSWORD", NULL);
    const char *key = moat_env_str("MOAT_OPERATOR_KEY", NULL);
    if (!c->password || strlen(c->password) < 12 || !key) {
        moat_log(MOAT_LOG_ERROR,
                 "the console needs MOAT_CONSOLE_PASSWORD (12+ characters) "
                 "and MOAT_OPERATOR_KEY",
                 NULL);
        rc = MOAT_EINVAL;
    }
    if (rc == MOAT_OK)
        rc = moat_auth_new(&c->op, "operator", key);
    if (rc == MOAT_OK && moat_env_str("MOAT_CONSOLE_GATEWAY_URL", NULL))
        rc = moat_env_url("MOAT_CONSOLE_GATEWAY_URL", NULL, &c->gateway_url);
    if (rc == MOAT_OK)
        rc = moat_http_client_new(&c->http, svc->base,
                                  &(struct moat_http_client_options){
                                      .timeout_ms = 15000,
                                      .max_host_conns = 16,
                                  });
    if (rc == MOAT_OK)
        rc = console_routes_register(c);
    if (rc == MOAT_OK)
        rc = moat_http_on_drain(svc->http, on_drain, c);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot set up the console", "{s:s}", "error",
                 moat_strerror(rc));
        console_free(c);
        return rc;
    }
    svc->impl = c;
    return MOAT_OK;
}

static int console_start(struct moat_service *svc)
{
    struct console *c = svc->impl;
    read_state(c);
    c->tick = event_new(svc->base, -1, EV_PERSIST, on_tick, c);
    struct timeval tv = {0, CONSOLE_TICK_MS * 1000};
    evtimer_add(c->tick, &tv);
    return MOAT_OK;
}

static void console_release(struct moat_service *svc)
{
    console_free(svc->impl);
    svc->impl = NULL;
}

static const struct moat_service_def console_def = {
    .name = "console",
    .default_port = 8090,
    .needs_data_dir = true,
    /* Browsers call it: it checks the operator's session itself. */
    .public_api = true,
    .init = console_init,
    .start = console_start,
    .release = console_release,
};

int main(int argc, char **argv)
{
    return moat_service_main(&console_def, argc, argv);
}
