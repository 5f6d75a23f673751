/*
 * deliver.c - the deliverer: undelivered notification rows become Maildir
 * messages, exactly one file per notification.
 *
 * For each undelivered row (at most max_in_flight at once, in id order):
 *
 *   1. If <maildir>/new/<id> or cur/<id> exists, the message was written
 *      before a crash that came before step 4: go to 4.
 *   2. The To: address: GET <orders>/v1/orders/{order_id} with our service
 *      token, unless an earlier notification of the same order looked it
 *      up less than ADDR_TTL_MS ago (an order's email does not change:
 *      the second email of a saga reuses the first one's answer). "customer":
 * {"email"} is used when it is a plain address for the row's customer; an order
 * orders does not know (404, or another 4xx), or one without a usable email,
 * goes to
 *      "<customer_id>@customers.invalid" with a warning. Orders unreachable
 *      (transport error, 5xx, 408, 429) or refusing us (401, 403): retry
 *      with backoff (100 ms doubling to retry_max_ms), the row keeping its
 *      slot, so a down orders service holds at most max_in_flight rows.
 *   3. On a worker thread (fsync must not stall the loop): write the RFC
 *      5322 message to tmp/<id>, fsync, rename to new/<id>, fsync new/.
 *   4. Record the delivery (deliveries + the row's flag). The messages
 *      written by the time the loop gets to it are recorded together, in
 *      one transaction (each alone if that one fails).
 *
 * The file name is the notification id, itself derived from (order,
 * status): a crash between 3 and 4 finds the file at step 1 (or, without
 * step 1, would rename the same name over it): never two files for one
 * notification. deliveries outlives a replay, so a rebuilt row is born
 * delivered and never sent again.
 *
 * The customer's email is never logged, never stored in the database, and
 * lives only in memory: in the job until its message is written, and in
 * the address memo (ADDR_SLOTS entries, each at most ADDR_TTL_MS, wiped
 * once the order's final notification used it).
 */
#include "moat/common.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/config.h"
#include "moat/http_client.h"
#include "moat/log.h"
#include "moat/trace.h"
#include "moat/work.h"
#include "notifications.h"
#include "store.h"

#define SWEEP_MS          2000 /* safety net besides the kicks */
#define RETRY_BASE_MS     100
#define ORDERS_TIMEOUT_MS 5000
#define WRITER_THREADS    2
#define EMAIL_MAX         254 /* RFC 5321 path limit */
#define FALLBACK_DOMAIN   "customers.invalid"
#define MAIL_FROM         "moat <orders@moat.local>"
#define MSGID_DOMAIN      "moat.local"
#define ADDR_SLOTS        256   /* orders whose address is remembered */
#define ADDR_TTL_MS       30000 /* about a saga's lifetime, with margin */
#define ADDR_ORDER_MAX    64

/* An order's address, from orders' answer, for its next notification. */
struct addr_memo {
    char order_id[ADDR_ORDER_MAX];
    char email[EMAIL_MAX + 1];
    int64_t expires_ms; /* 0: empty */
};

/* One notification being delivered. */
struct job {
    struct ntf_deliverer *d;
    struct job *prev, *next;
    struct ntf_row row;      /* owned */
    struct moat_trace trace; /* the order's trace, a span of our own */
    struct event *timer;     /* owned: retry backoff */
    unsigned attempts;       /* failures so far */
    bool fallback;           /* addressed to the fallback address */
    char *message;           /* owned: the file's content */
    size_t message_len;
    char *tmp_path, *new_path; /* owned */
    /* Set by the worker thread, read in write_done (the pool's hand-off
     * orders the accesses). */
    int werr;
    const char *wstep;
    struct job *mark_next; /* in the deliverer's marks list */
};

struct ntf_deliverer {
    struct moat_service *svc;                    /* borrowed */
    struct moat_db *db;                          /* borrowed */
    struct moat_outbox *outbox;                  /* borrowed; may be NULL */
    struct moat_http_client *client;             /* borrowed */
    struct moat_work_pool *pool;                 /* owned: Maildir writes */
    char *maildir, *new_dir, *cur_dir, *tmp_dir; /* owned */
    char *orders_url;                            /* owned */
    unsigned max_in_flight, in_flight;
    int64_t retry_max_ms;
    struct job *jobs;    /* in flight */
    struct event *kick;  /* owned: look for work next turn */
    struct event *sweep; /* owned: periodic look */
    struct event *mark;  /* owned: record the written messages */
    struct job *marks;   /* written, to record (newest first) */
    bool started, closing;
    bool orders_down;                  /* logged once per change */
    struct addr_memo addr[ADDR_SLOTS]; /* a ring, oldest overwritten */
    size_t addr_next;
    struct moat_metric_family *m_sent, *m_failures;
    struct moat_metric_series *m_backlog, *m_oldest, *m_fallback, *m_in_flight;
#ifdef MOAT_TEST_HOOKS
    int64_t die_after; /* SIGKILL ourselves after that many renames */
    int64_t renames;
#endif
};

static void pump(struct ntf_deliverer *d);
static void job_begin(struct job *j);

/* Log with the job's trace as the line's context. */
#define JOB_LOG(j, ...)                                                        \
    do {                                                                       \
        const struct moat_trace *prev_ = moat_log_trace();                     \
        moat_log_set_trace(&(j)->trace);                                       \
        moat_log(__VA_ARGS__);                                                 \
        moat_log_set_trace(prev_);                                             \
    } while (0)

/* ---- jobs ---- */

static void on_retry(evutil_socket_t fd, short what, void *arg);

static struct job *job_new(struct ntf_deliverer *d, struct ntf_row *row)
{
    struct job *j = moat_xcalloc(1, sizeof(*j));
    j->d = d;
    j->row = *row; /* takes the strings */
    memset(row, 0, sizeof(*row));
    j->timer = evtimer_new(d->svc->base, on_retry, j);
    if (!j->timer)
        moat_die("cannot create a timer");
    /* Continue the order's trace (from its event) with a span of ours, so
     * that the call to orders and our log lines join the saga's trace. */
    char tp[MOAT_TRACEPARENT_LEN + 1] = "";
    if (j->row.trace_id && strlen(j->row.trace_id) == 32) {
        uint8_t span[8];
        char span_hex[17];
        moat_random_bytes(span, sizeof(span));
        moat_hex(span_hex, span, sizeof(span));
        snprintf(tp, sizeof(tp), "00-%s-%s-01", j->row.trace_id, span_hex);
    }
    moat_trace_start(&j->trace, tp[0] ? tp : NULL, NULL);
    j->tmp_path = moat_xasprintf("%s/%s", d->tmp_dir, j->row.id);
    j->new_path = moat_xasprintf("%s/%s", d->new_dir, j->row.id);
    j->next = d->jobs;
    if (d->jobs)
        d->jobs->prev = j;
    d->jobs = j;
    d->in_flight++;
    moat_metric_set(d->m_in_flight, d->in_flight);
    return j;
}

static void job_free(struct job *j)
{
    struct ntf_deliverer *d = j->d;
    if (j->prev)
        j->prev->next = j->next;
    else
        d->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    d->in_flight--;
    moat_metric_set(d->m_in_flight, d->in_flight);
    event_free(j->timer);
    ntf_row_release(&j->row);
    free(j->message);
    free(j->tmp_path);
    free(j->new_path);
    free(j);
}

/* The job is over (delivered or given up for now): its slot is free. */
static void job_done(struct job *j)
{
    struct ntf_deliverer *d = j->d;
    job_free(j);
    ntf_deliverer_kick(d);
}

static void count_failure(struct ntf_deliverer *d, const char *reason)
{
    moat_metric_add(moat_metric_series(d->m_failures, &reason), 1);
}

/* Try j again after a backoff; it keeps its slot meanwhile. */
static void job_retry(struct job *j, const char *reason)
{
    struct ntf_deliverer *d = j->d;
    count_failure(d, reason);
    if (d->closing) {
        job_free(j);
        return;
    }
    int64_t delay = RETRY_BASE_MS;
    for (unsigned i = 0; i < j->attempts && delay < d->retry_max_ms; i++)
        delay *= 2;
    if (delay > d->retry_max_ms)
        delay = d->retry_max_ms;
    j->attempts++;
    free(j->message);
    j->message = NULL;
    struct timeval tv = {(time_t)(delay / 1000),
                         (suseconds_t)(delay % 1000) * 1000};
    evtimer_add(j->timer, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    job_begin(arg);
}

/* ---- step 4: record the delivery ---- */

/* j's delivery is recorded: count and log it, free its slot. */
static void job_recorded(struct job *j, bool existed)
{
    struct ntf_deliverer *d = j->d;
    if (existed) {
        /* Written before a crash, recorded only now: it was counted (if
         * at all) by the process that wrote it. */
        JOB_LOG(j, MOAT_LOG_INFO, "notification already in the maildir",
                "{s:s, s:s, s:s}", "id", j->row.id, "order_id", j->row.order_id,
                "kind", j->row.kind);
    } else {
        const char *kind = j->row.kind;
        moat_metric_add(moat_metric_series(d->m_sent, &kind), 1);
        if (j->fallback)
            moat_metric_add(d->m_fallback, 1);
        JOB_LOG(j, MOAT_LOG_INFO, "notification delivered",
                "{s:s, s:s, s:s, s:b, s:i}", "id", j->row.id, "order_id",
                j->row.order_id, "kind", j->row.kind, "fallback_address",
                j->fallback, "attempts", (int)j->attempts + 1);
    }
    job_done(j);
}

static void job_mark(struct job *j, bool existed)
{
    struct ntf_deliverer *d = j->d;
    int rc = ntf_store_mark_delivered(d->db, d->outbox, &j->row, moat_wall_ms(),
                                      j->fallback);
    if (rc != MOAT_OK) {
        JOB_LOG(j, MOAT_LOG_ERROR, "cannot record a delivery",
                "{s:s, s:s, s:s}", "id", j->row.id, "order_id", j->row.order_id,
                "error", moat_strerror(rc));
        job_retry(j, "database");
        return;
    }
    job_recorded(j, existed);
}

/* Record every message written so far in one transaction; when that
 * fails, each on its own (each then retries alone). */
static void marks_flush(struct ntf_deliverer *d)
{
    size_t n = 0;
    for (struct job *j = d->marks; j; j = j->mark_next)
        n++;
    if (!n)
        return;
    struct job **jobs = moat_xcalloc(n, sizeof(*jobs));
    struct ntf_mark *m = moat_xcalloc(n, sizeof(*m));
    int64_t now = moat_wall_ms();
    size_t i = n;
    for (struct job *j = d->marks; j; j = j->mark_next) {
        i--; /* oldest first */
        jobs[i] = j;
        m[i] = (struct ntf_mark){&j->row, now, j->fallback};
    }
    d->marks = NULL;
    int rc = ntf_store_mark_delivered_many(d->db, d->outbox, m, n);
    for (i = 0; i < n; i++) {
        if (rc == MOAT_OK)
            job_recorded(jobs[i], false);
        else
            job_mark(jobs[i], false);
    }
    free(m);
    free(jobs);
}

static void on_mark(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    marks_flush(arg);
}

/* j's message is in the Maildir: record it once this loop turn is over. */
static void job_written(struct job *j)
{
    struct ntf_deliverer *d = j->d;
    if (!d->marks)
        event_active(d->mark, 0, 0);
    j->mark_next = d->marks;
    d->marks = j;
}

/* ---- step 3: the Maildir file (worker thread) ---- */

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* tmp/<id>, fsync, rename to new/<id>, fsync new/. Touches only the job's
 * own strings and the file system. */
static void write_work(void *arg)
{
    struct job *j = arg;
    j->werr = 0;
    j->wstep = NULL;
    int fd = open(j->tmp_path,
                  O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        j->werr = errno;
        j->wstep = "open";
        return;
    }
    if (write_all(fd, j->message, j->message_len) != 0 || fsync(fd) != 0) {
        j->werr = errno;
        j->wstep = "write";
        close(fd);
        unlink(j->tmp_path);
        return;
    }
    if (close(fd) != 0) {
        j->werr = errno;
        j->wstep = "close";
        unlink(j->tmp_path);
        return;
    }
    if (rename(j->tmp_path, j->new_path) != 0) {
        j->werr = errno;
        j->wstep = "rename";
        unlink(j->tmp_path);
        return;
    }
    /* The new name must be durable before the delivery is recorded. */
    int dfd = open(j->d->new_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        j->werr = errno;
        j->wstep = "fsync new/";
    }
    if (dfd >= 0)
        close(dfd);
}

static void write_done(void *arg, bool cancelled)
{
    struct job *j = arg;
    if (cancelled) { /* shutting down before it started */
        job_free(j);
        return;
    }
    if (j->werr) {
        JOB_LOG(j, MOAT_LOG_ERROR,
                "cannot write a notification into the "
                "maildir",
                "{s:s, s:s, s:s, s:s}", "id", j->row.id, "step", j->wstep,
                "path", j->new_path, "error", strerror(j->werr));
        job_retry(j, "maildir");
        return;
    }
#ifdef MOAT_TEST_HOOKS
    /* Test builds: die between the rename and the record, the window the
     * deterministic file name is for. */
    if (j->d->die_after > 0 && ++j->d->renames >= j->d->die_after) {
        JOB_LOG(j, MOAT_LOG_WARN, "test hook: killed after a rename", "{s:s}",
                "id", j->row.id);
        raise(SIGKILL);
    }
#endif
    job_written(j);
}

/* ---- the message ---- */

/* RFC 5322 date-time of ms in UTC: "Thu, 21 Nov 2026 19:03:30 +0000". */
static void rfc5322_date(int64_t ms, char out[40])
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed",
                                       "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
                                         "May", "Jun", "Jul", "Aug",
                                         "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(out, 40, "Thu, 01 Jan 1970 00:00:00 +0000");
        return;
    }
    snprintf(out, 40, "%s, %02d %s %04d %02d:%02d:%02d +0000",
             days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* The message with CRLF line ends (RFC 5322); body is LF-separated. */
static void build_message(struct job *j, const char *to)
{
    const struct ntf_row *r = &j->row;
    struct moat_buf b = MOAT_BUF_INIT;
    char date[40];
    rfc5322_date(r->created_ms, date);
    moat_buf_printf(&b,
                    "From: " MAIL_FROM "\r\n"
                    "To: %s\r\n"
                    "Subject: %s\r\n"
                    "Date: %s\r\n"
                    "Message-ID: <%s@" MSGID_DOMAIN ">\r\n"
                    "X-Moat-Order: %s\r\n"
                    "X-Moat-Kind: %s\r\n",
                    to, r->subject, date, r->id, r->order_id, r->kind);
    if (r->trace_id)
        moat_buf_printf(&b, "X-Moat-Trace-Id: %s\r\n", r->trace_id);
    moat_buf_addstr(&b, "MIME-Version: 1.0\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        "Content-Transfer-Encoding: 8bit\r\n"
                        "\r\n");
    for (const char *p = r->body; *p; p++) {
        if (*p == '\n')
            moat_buf_addch(&b, '\r');
        moat_buf_addch(&b, *p);
    }
    free(j->message);
    j->message = moat_buf_detach(&b, &j->message_len);
}

/*
 * A plain addr-spec we can put on a To: line unquoted: one '@', a local
 * part and a domain, no spaces, controls or RFC 5322 specials that would
 * need quoting (and so no way to inject a header).
 */
static bool email_usable(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (len < 3 || len > EMAIL_MAX)
        return false;
    const char *at = strchr(s, '@');
    if (!at || at == s || strchr(at + 1, '@') || at[1] == '\0' || at - s > 64)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p == 0x7f || strchr("()<>[]:;\\,\"", *p))
            return false;
    return true;
}

static void write_submit(struct job *j, const char *to)
{
    build_message(j, to);
    int rc = moat_work_submit(j->d->pool, write_work, write_done, j);
    if (rc != MOAT_OK) {
        JOB_LOG(j, MOAT_LOG_ERROR, "cannot queue a maildir write", "{s:s, s:s}",
                "id", j->row.id, "error", moat_strerror(rc));
        job_retry(j, "maildir");
    }
}

/* Deliver to the fallback address (why is logged, never the email). */
static void use_fallback(struct job *j, const char *why, int status)
{
    JOB_LOG(j, MOAT_LOG_WARN,
            "no customer email for a notification: using the fallback "
            "address",
            "{s:s, s:s, s:s, s:s, s:i}", "id", j->row.id, "order_id",
            j->row.order_id, "customer_id", j->row.customer_id, "why", why,
            "orders_status", status);
    char *to = moat_xasprintf("%s@" FALLBACK_DOMAIN, j->row.customer_id);
    j->fallback = true;
    write_submit(j, to);
    free(to);
}

/* ---- step 2: the address, from orders ---- */

static void addr_wipe(struct addr_memo *m)
{
    explicit_bzero(m, sizeof(*m));
}

static void addr_remember(struct ntf_deliverer *d, const char *order_id,
                          const char *email)
{
    if (strlen(order_id) >= ADDR_ORDER_MAX || strlen(email) > EMAIL_MAX)
        return;
    struct addr_memo *m = &d->addr[d->addr_next];
    d->addr_next = (d->addr_next + 1) % ADDR_SLOTS;
    snprintf(m->order_id, sizeof(m->order_id), "%s", order_id);
    snprintf(m->email, sizeof(m->email), "%s", email);
    m->expires_ms = moat_mono_ms() + ADDR_TTL_MS;
}

/* The remembered address of j's order, or NULL. */
static struct addr_memo *addr_find(struct ntf_deliverer *d, const char *id)
{
    int64_t now = moat_mono_ms();
    for (size_t i = 0; i < ADDR_SLOTS; i++) {
        struct addr_memo *m = &d->addr[i];
        if (!m->expires_ms || strcmp(m->order_id, id) != 0)
            continue;
        if (m->expires_ms > now)
            return m;
        addr_wipe(m);
    }
    return NULL;
}

/* An order's final notification: its address is not needed any more. */
static bool row_final(const struct ntf_row *r)
{
    return r->status && strcmp(r->status, "pending") != 0;
}

static void orders_up(struct ntf_deliverer *d)
{
    if (d->orders_down) {
        d->orders_down = false;
        moat_log(MOAT_LOG_INFO, "orders answers again: deliveries resume",
                 NULL);
    }
}

static void orders_failed(struct job *j, const char *reason, int status,
                          const char *error)
{
    struct ntf_deliverer *d = j->d;
    if (!d->orders_down) {
        d->orders_down = true;
        JOB_LOG(j, MOAT_LOG_WARN,
                "cannot get an order from orders: deliveries wait",
                "{s:s, s:s, s:i, s:s}", "url", d->orders_url, "reason", reason,
                "status", status, "error", error ? error : "");
    }
    job_retry(j, reason);
}

static void on_order(const struct moat_http_response *resp, void *arg)
{
    struct job *j = arg;
    if (resp->err == MOAT_ECANCELLED || j->d->closing) {
        job_free(j);
        return;
    }
    if (resp->err != MOAT_OK) {
        orders_failed(j, "orders_unreachable", 0,
                      resp->err_msg ? resp->err_msg : moat_strerror(resp->err));
        return;
    }
    int st = resp->status;
    if (st == 401 || st == 403) {
        orders_failed(j, "orders_refused", st, "orders refuses our token");
        return;
    }
    if (st == 408 || st == 429 || st >= 500 || st < 200 ||
        (st >= 300 && st < 400) || (st >= 201 && st < 300)) {
        orders_failed(j, "orders_unreachable", st, "unexpected status");
        return;
    }
    orders_up(j->d);
    if (st != 200) {
        use_fallback(j, "orders does not know the order", st);
        return;
    }
    json_error_t jerr;
    json_t *order = json_loadb(resp->body, resp->body_len, 0, &jerr);
    json_t *cust = json_object_get(order, "customer");
    const char *email = json_string_value(json_object_get(cust, "email"));
    const char *owner =
        json_string_value(json_object_get(order, "customer_id"));
    if (!json_is_object(order)) {
        json_decref(order);
        orders_failed(j, "orders_unreachable", st, "the order is not JSON");
        return;
    }
    if (owner && strcmp(owner, j->row.customer_id) != 0)
        use_fallback(j, "the order belongs to another customer", st);
    else if (!email)
        use_fallback(j, "the order has no customer email", st);
    else if (!email_usable(email))
        use_fallback(j, "the customer email is not a plain address", st);
    else {
        if (!row_final(&j->row))
            addr_remember(j->d, j->row.order_id, email);
        write_submit(j, email);
    }
    json_decref(order);
}

static void fetch_order(struct job *j)
{
    struct ntf_deliverer *d = j->d;
    char *token = NULL;
    struct moat_http_header hdr[1];
    size_t nhdr = 0;
    if (d->svc->auth) {
        int rc = moat_auth_token(d->svc->auth, "orders", NULL, &token);
        if (rc != MOAT_OK) {
            JOB_LOG(j, MOAT_LOG_ERROR, "cannot sign a service token",
                    "{s:s, s:s}", "audience", "orders", "error",
                    moat_strerror(rc));
            job_retry(j, "orders_refused");
            return;
        }
        hdr[nhdr++] =
            (struct moat_http_header){MOAT_SERVICE_TOKEN_HEADER, token};
    }
    /* order_id is [A-Za-z0-9_-] (checked by the handler): safe in a URL. */
    char *url =
        moat_xasprintf("%s/v1/orders/%s", d->orders_url, j->row.order_id);
    const struct moat_http_call call = {
        .method = "GET",
        .url = url,
        .headers = hdr,
        .nheaders = nhdr,
        .timeout_ms = ORDERS_TIMEOUT_MS,
        .trace = &j->trace,
    };
    int rc = moat_http_client_send(d->client, &call, on_order, j);
    free(url);
    free(token);
    if (rc != MOAT_OK) {
        if (rc == MOAT_ECANCELLED) {
            job_free(j);
            return;
        }
        orders_failed(j, "orders_unreachable", 0, moat_strerror(rc));
    }
}

/* ---- step 1 and the loop ---- */

static bool file_exists(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    return n > 0 && (size_t)n < sizeof(path) && stat(path, &st) == 0 &&
           S_ISREG(st.st_mode);
}

static void job_begin(struct job *j)
{
    struct ntf_deliverer *d = j->d;
    if (d->closing) {
        job_free(j);
        return;
    }
    j->fallback = false;
    if (file_exists(d->new_dir, j->row.id) ||
        file_exists(d->cur_dir, j->row.id)) {
        job_mark(j, true);
        return;
    }
    struct addr_memo *m = addr_find(d, j->row.order_id);
    if (m) {
        write_submit(j, m->email);
        if (row_final(&j->row))
            addr_wipe(m);
        return;
    }
    fetch_order(j);
}

static bool in_flight(struct ntf_deliverer *d, const char *id)
{
    for (struct job *j = d->jobs; j; j = j->next)
        if (strcmp(j->row.id, id) == 0)
            return true;
    return false;
}

/* Fill the free slots with the oldest undelivered rows not in flight. */
static void pump(struct ntf_deliverer *d)
{
    if (!d->started || d->closing || d->in_flight >= d->max_in_flight)
        return;
    unsigned free_slots = d->max_in_flight - d->in_flight;
    struct ntf_row *rows = NULL;
    size_t n = 0;
    /* Those in flight are among the oldest: asking for as many more as
     * there are free slots always finds enough. */
    int rc = ntf_store_undelivered(d->db, NULL, d->in_flight + free_slots,
                                   &rows, &n);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "cannot read undelivered notifications",
                 "{s:s}", "error", moat_strerror(rc));
        return; /* the sweep tries again */
    }
    for (size_t i = 0; i < n && free_slots > 0; i++) {
        if (in_flight(d, rows[i].id))
            continue;
        free_slots--;
        job_begin(job_new(d, &rows[i]));
    }
    ntf_rows_free(rows, n);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    pump(arg);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    MOAT_UNUSED(fd);
    MOAT_UNUSED(what);
    pump(arg);
}

void ntf_deliverer_kick(struct ntf_deliverer *d)
{
    if (d && d->started && !d->closing)
        event_active(d->kick, 0, 0);
}

/* ---- metrics ---- */

static void collect(struct moat_metrics *m, void *arg)
{
    MOAT_UNUSED(m);
    struct ntf_deliverer *d = arg;
    int64_t count = 0, oldest_ms = 0;
    if (ntf_store_backlog(d->db, &count, &oldest_ms) != MOAT_OK)
        return;
    moat_metric_set(d->m_backlog, (double)count);
    int64_t age = count ? moat_wall_ms() - oldest_ms : 0;
    moat_metric_set(d->m_oldest, age > 0 ? (double)age / 1000.0 : 0);
}

static void register_metrics(struct ntf_deliverer *d, struct moat_metrics *m)
{
    d->m_sent = moat_metrics_family(
        m, MOAT_COUNTER, "notifications_total",
        "Notifications sent (written into the Maildir), by kind", "kind", NULL,
        0);
    d->m_failures = moat_metrics_family(
        m, MOAT_COUNTER, "notifications_delivery_failures_total",
        "Failed delivery attempts (each retried), by reason: "
        "orders_unreachable, orders_refused, maildir, database",
        "reason", NULL, 0);
    d->m_backlog = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "notifications_undelivered",
        "Notifications not yet written into the Maildir", NULL, NULL, 0));
    d->m_oldest = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "notifications_oldest_undelivered_age_seconds",
        "Age of the oldest undelivered notification (0 when none)", NULL, NULL,
        0));
    d->m_fallback = moat_metric_single(moat_metrics_family(
        m, MOAT_COUNTER, "notifications_fallback_address_total",
        "Notifications sent to <customer_id>@customers.invalid for want of "
        "a customer email",
        NULL, NULL, 0));
    d->m_in_flight = moat_metric_single(moat_metrics_family(
        m, MOAT_GAUGE, "notifications_deliveries_in_flight",
        "Notifications being delivered right now", NULL, NULL, 0));
    if (!d->m_sent || !d->m_failures || !d->m_backlog || !d->m_oldest ||
        !d->m_fallback || !d->m_in_flight)
        moat_die("cannot register the notifications metrics");
    moat_metrics_on_collect(m, collect, d);
}

/* ---- lifecycle ---- */

static int make_dir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            return MOAT_OK;
    }
    moat_log(MOAT_LOG_ERROR, "cannot create a maildir directory", "{s:s, s:s}",
             "path", path, "error", strerror(errno));
    return MOAT_EIO;
}

int ntf_deliverer_new(struct ntf_deliverer **out, struct moat_service *svc,
                      struct moat_db *db, struct moat_http_client *client,
                      const struct ntf_deliverer_options *opts)
{
    struct ntf_deliverer *d = moat_xcalloc(1, sizeof(*d));
    int rc = MOAT_EINVAL;
    d->svc = svc;
    d->db = db;
    d->outbox = opts->outbox;
    d->client = client;
    d->maildir = moat_xstrdup(opts->maildir);
    d->tmp_dir = moat_xasprintf("%s/tmp", opts->maildir);
    d->new_dir = moat_xasprintf("%s/new", opts->maildir);
    d->cur_dir = moat_xasprintf("%s/cur", opts->maildir);
    d->orders_url = moat_xstrdup(opts->orders_url);
    /* No trailing slash: ids are appended after one. */
    size_t ulen = strlen(d->orders_url);
    while (ulen > 0 && d->orders_url[ulen - 1] == '/')
        d->orders_url[--ulen] = '\0';
    d->max_in_flight =
        opts->max_in_flight ? opts->max_in_flight : NTF_MAX_IN_FLIGHT_DEFAULT;
    d->retry_max_ms =
        opts->retry_max_ms > RETRY_BASE_MS ? opts->retry_max_ms : RETRY_BASE_MS;
    if ((rc = make_dir(d->maildir)) != MOAT_OK ||
        (rc = make_dir(d->tmp_dir)) != MOAT_OK ||
        (rc = make_dir(d->new_dir)) != MOAT_OK ||
        (rc = make_dir(d->cur_dir)) != MOAT_OK)
        goto fail;
    rc = moat_work_pool_new(&d->pool, svc->base, WRITER_THREADS);
    if (rc != MOAT_OK)
        goto fail;
    d->kick = event_new(svc->base, -1, 0, on_kick, d);
    d->sweep = event_new(svc->base, -1, EV_PERSIST, on_sweep, d);
    d->mark = event_new(svc->base, -1, 0, on_mark, d);
    if (!d->kick || !d->sweep || !d->mark) {
        rc = MOAT_EIO;
        goto fail;
    }
#ifdef MOAT_TEST_HOOKS
    rc = moat_env_int("MOAT_NOTIFICATIONS_TEST_DIE_AFTER_RENAMES", 0, 0,
                      INT64_MAX, &d->die_after);
    if (rc != MOAT_OK)
        goto fail;
#endif
    register_metrics(d, svc->metrics);
    *out = d;
    return MOAT_OK;

fail:
    ntf_deliverer_free(d);
    return rc;
}

void ntf_deliverer_start(struct ntf_deliverer *d)
{
    d->started = true;
    const struct timeval tv = {SWEEP_MS / 1000, (SWEEP_MS % 1000) * 1000};
    evtimer_add(d->sweep, &tv);
    event_active(d->kick, 0, 0);
}

void ntf_deliverer_free(struct ntf_deliverer *d)
{
    if (!d)
        return;
    d->closing = true;
    /* Writes not started are cancelled, running ones finish and are
     * recorded (the database is still open): job_free or job_mark. */
    if (d->pool)
        moat_work_pool_free(d->pool);
    if (d->mark)
        marks_flush(d); /* the writes that finished above */
    /* What is left waits for a retry (or for orders, whose calls the
     * client completes with MOAT_ECANCELLED when it is freed: main.c frees
     * it first). */
    while (d->jobs)
        job_free(d->jobs);
    if (d->kick)
        event_free(d->kick);
    if (d->sweep)
        event_free(d->sweep);
    if (d->mark)
        event_free(d->mark);
    free(d->maildir);
    free(d->tmp_dir);
    free(d->new_dir);
    free(d->cur_dir);
    free(d->orders_url);
    explicit_bzero(d->addr, sizeof(d->addr));
    free(d);
}
