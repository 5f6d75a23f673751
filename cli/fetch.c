/* fetch.c - concurrent HTTP calls for the CLI (see fetch.h). */
#include "moat/common.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"
#include "moat/tls.h"

#include "fetch.h"

struct call {
    char *method, *url, *body;
    struct curl_slist *headers;
    long timeout_ms;
    cli_fetch_cb cb;
    void *arg;
    CURL *easy;
    struct moat_buf out;
    bool too_big;
    uint64_t start_ms;
    struct call *next; /* in the wait queue or the running list */
    struct call *prev; /* in the running list */
};

struct cli_fetcher {
    CURLM *multi;
    unsigned max_parallel;
    unsigned running;
    size_t queued;
    struct call *head, *tail; /* waiting for a slot, FIFO */
    struct call *live;        /* running, for cli_fetcher_free */
};

struct cli_fetcher *cli_fetcher_new(unsigned max_parallel)
{
    CURLM *m = curl_multi_init();
    if (!m)
        return NULL;
    struct cli_fetcher *f = moat_xcalloc(1, sizeof(*f));
    f->multi = m;
    f->max_parallel = max_parallel ? max_parallel : 1;
    /* Keep a connection per slot alive between calls. */
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)f->max_parallel * 2);
    return f;
}

static void call_free(struct call *c)
{
    if (c->easy)
        curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    moat_buf_release(&c->out);
    free(c->method);
    free(c->url);
    free(c->body);
    free(c);
}

/* Complete c with MOAT_ECANCELLED and free it. */
static void cancel(struct call *c)
{
    struct cli_fetch_result r = {
        .err = MOAT_ECANCELLED, .body = "", .start_ms = c->start_ms};
    c->cb(&r, c->arg);
    call_free(c);
}

void cli_fetcher_free(struct cli_fetcher *f)
{
    if (!f)
        return;
    /* A callback may queue more calls: they are cancelled in turn. */
    while (f->head || f->live) {
        if (f->head) {
            struct call *c = f->head;
            f->head = c->next;
            if (!f->head)
                f->tail = NULL;
            f->queued--;
            cancel(c);
        } else {
            struct call *c = f->live;
            f->live = c->next;
            if (f->live)
                f->live->prev = NULL;
            curl_multi_remove_handle(f->multi, c->easy);
            f->running--;
            cancel(c);
        }
    }
    curl_multi_cleanup(f->multi);
    free(f);
}

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    struct call *c = arg;
    if (c->out.len + size * n > CLI_FETCH_MAX_BODY) {
        c->too_big = true;
        return 0;
    }
    moat_buf_add(&c->out, p, size * n);
    return size * n;
}

static void start(struct cli_fetcher *f, struct call *c)
{
    CURL *e = curl_easy_init();
    if (!e)
        moat_die("curl_easy_init failed");
    c->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     c->timeout_ms < 1000 ? c->timeout_ms : 1000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    moat_tls_curl(e); /* the operator's certificate when TLS is on */
    if (c->body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
    else if (strcmp(c->method, "POST") == 0)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    c->start_ms = moat_mono_ms();
    curl_multi_add_handle(f->multi, e);
    c->prev = NULL;
    c->next = f->live;
    if (f->live)
        f->live->prev = c;
    f->live = c;
    f->running++;
}

static void fill_slots(struct cli_fetcher *f)
{
    while (f->head && f->running < f->max_parallel) {
        struct call *c = f->head;
        f->head = c->next;
        if (!f->head)
            f->tail = NULL;
        f->queued--;
        start(f, c);
    }
}

void cli_fetch(struct cli_fetcher *f, const char *method, const char *url,
               const char *const *headers, const char *body, long timeout_ms,
               cli_fetch_cb cb, void *arg)
{
    struct call *c = moat_xcalloc(1, sizeof(*c));
    c->method = moat_xstrdup(method);
    c->url = moat_xstrdup(url);
    c->body = body ? moat_xstrdup(body) : NULL;
    for (size_t i = 0; headers && headers[i]; i++)
        c->headers = curl_slist_append(c->headers, headers[i]);
    if (body)
        c->headers =
            curl_slist_append(c->headers, "Content-Type: application/json");
    /* No "Expect: 100-continue" round trip for larger bodies. */
    c->headers = curl_slist_append(c->headers, "Expect:");
    c->timeout_ms = timeout_ms;
    c->cb = cb;
    c->arg = arg;
    if (f->tail)
        f->tail->next = c;
    else
        f->head = c;
    f->tail = c;
    f->queued++;
}

static void complete(struct cli_fetcher *f, CURLMsg *msg)
{
    struct call *c = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
    curl_multi_remove_handle(f->multi, msg->easy_handle);
    if (c->prev)
        c->prev->next = c->next;
    else
        f->live = c->next;
    if (c->next)
        c->next->prev = c->prev;
    f->running--;
    struct cli_fetch_result r = {.err = MOAT_OK, .start_ms = c->start_ms};
    CURLcode rc = msg->data.result;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &r.status);
    else if (c->too_big)
        r.err = MOAT_ETOOBIG;
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        r.err = MOAT_ETIMEDOUT;
    else
        r.err = MOAT_EIO;
    r.body = moat_buf_str(&c->out);
    r.body_len = c->out.len;
    r.elapsed_ms = (double)(moat_mono_ms() - c->start_ms);
    c->cb(&r, c->arg);
    call_free(c);
}

size_t cli_fetcher_run(struct cli_fetcher *f, int wait_ms)
{
    fill_slots(f);
    int still = 0;
    curl_multi_perform(f->multi, &still);
    if (wait_ms > 0 && f->running > 0) {
        curl_multi_poll(f->multi, NULL, 0, wait_ms, NULL);
        curl_multi_perform(f->multi, &still);
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(f->multi, &left))) {
        if (msg->msg == CURLMSG_DONE)
            complete(f, msg);
    }
    fill_slots(f);
    if (f->running)
        curl_multi_perform(f->multi, &still);
    return f->running + f->queued;
}

void cli_fetcher_drain(struct cli_fetcher *f)
{
    while (cli_fetcher_run(f, 100) > 0) {
    }
}

size_t cli_fetcher_pending(const struct cli_fetcher *f)
{
    return f->running + f->queued;
}
