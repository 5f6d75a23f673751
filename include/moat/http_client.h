/*
 * moat/http_client.h - non-blocking HTTP client for service-to-service
 * calls: libcurl's multi_socket interface driven by the service's libevent
 * loop, so calls never block the loop. Connections are pooled and kept alive
 * by curl's connection cache (per client, max_host_conns per host).
 *
 * Every call has a connect timeout and a total timeout; the response body is
 * capped (MOAT_ETOOBIG beyond), as are the response headers. The caller's
 * trace (if given) is sent as traceparent and X-Request-Id so logs correlate
 * across services. Only http:// and https:// URLs are accepted; proxies from
 * the environment (http_proxy...) are ignored, redirects are not followed
 * (a 3xx comes back as is) and bodies are not decoded.
 *
 * Errors reported in the response (err):
 *   MOAT_ETIMEDOUT   connect or total timeout passed
 *   MOAT_ETOOBIG     body or headers over the cap (transfer aborted)
 *   MOAT_EIO         connection refused, reset, DNS failure, malformed or
 *                    truncated response (err_msg has curl's text)
 *   MOAT_ECANCELLED  moat_http_client_free() was called with the call pending
 * An HTTP error status (4xx, 5xx) is not an error: err is MOAT_OK.
 *
 * Lifetime: the call description is copied at send time (headers, body,
 * url), so the caller may free its copies right after moat_http_client_send
 * returns. The callback is called exactly once per successful send, on the
 * loop thread, and never from inside moat_http_client_send itself; if send
 * returns an error the callback is never called. The response and
 * everything it points to are valid only during the callback.
 * moat_http_client_free() completes pending calls with MOAT_ECANCELLED
 * (their callbacks run inside it); it may be called from a callback.
 * Not thread-safe: use a client from its loop's thread only.
 */
#ifndef MOAT_HTTP_CLIENT_H
#define MOAT_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "moat/trace.h"

struct event_base;
struct moat_http_client;

/* Zero fields take the defaults below. */
struct moat_http_client_options {
    long connect_timeout_ms; /* default 1000 */
    long timeout_ms;         /* default 5000; per call override below */
    size_t max_response;     /* body cap in bytes, default 8 MiB */
    long max_host_conns;     /* per host connection cap, default 256 */
};

#define MOAT_HTTP_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS 1000L
#define MOAT_HTTP_CLIENT_DEFAULT_TIMEOUT_MS         5000L
#define MOAT_HTTP_CLIENT_DEFAULT_MAX_RESPONSE       ((size_t)8 << 20)
#define MOAT_HTTP_CLIENT_DEFAULT_MAX_HOST_CONNS     256L
/* Response header caps: count and total bytes (MOAT_ETOOBIG beyond). */
#define MOAT_HTTP_CLIENT_MAX_RESPONSE_HEADERS      100
#define MOAT_HTTP_CLIENT_MAX_RESPONSE_HEADER_BYTES (64u << 10)

struct moat_http_header {
    const char *name;
    const char *value;
};

struct moat_http_response {
    int err;             /* MOAT_OK, or MOAT_ETIMEDOUT / MOAT_EIO / ... */
    const char *err_msg; /* human text when err != MOAT_OK, else NULL */
    /* True when the request never reached the peer (refused, unreachable,
     * DNS failure, connect timeout): retrying cannot duplicate an effect. */
    bool connect_failed;
    /* On error: not one byte of an answer arrived (refused, or reset
     * before the status line), so a proxy may try an idempotent request
     * elsewhere without having relayed anything. */
    bool no_response;
    int status; /* HTTP status, 0 on transport error */
    const struct moat_http_header *headers; /* names lowercase */
    size_t nheaders;
    const char *body; /* NUL-terminated; "" when empty, never NULL */
    size_t body_len;
    double elapsed_ms; /* from send to completion */
};

struct moat_http_call {
    const char *method; /* "GET", "POST", ... */
    const char *url;    /* absolute http:// or https:// URL */
    /* Extra request headers (copied); names and values must not contain CR
     * or LF. Content-Type is only sent when given here. May be NULL. */
    const struct moat_http_header *headers;
    size_t nheaders;
    const void *body; /* may be NULL */
    size_t body_len;
    long timeout_ms;                /* 0 = client default */
    const struct moat_trace *trace; /* may be NULL; overrides any
                                       traceparent/X-Request-Id in headers */
    /*
     * A streamed response (the event feed's ?stream=1): when on_data is
     * set, the body of a 200 answer is handed to on_data as it arrives
     * (data borrowed for the call) instead of being collected, and
     * max_response does not apply (on_data caps what it keeps). on_data
     * returns false to abort the call, which then completes with
     * MOAT_EIO. Such a call has no total timeout: it fails with
     * MOAT_ETIMEDOUT when no byte came for timeout_ms (the server sends
     * heartbeats). Any other status is collected into body as usual.
     */
    bool (*on_data)(const char *data, size_t len, void *arg);
    void *data_arg;
};

typedef void (*moat_http_client_cb)(const struct moat_http_response *resp,
                                    void *arg);

/*
 * base is borrowed and must outlive the client. opts may be NULL for
 * defaults. Caller frees with moat_http_client_free.
 */
int moat_http_client_new(struct moat_http_client **out, struct event_base *base,
                         const struct moat_http_client_options *opts);
/* The loop the client runs on (borrowed). */
struct event_base *moat_http_client_base(const struct moat_http_client *c);
void moat_http_client_free(struct moat_http_client *c);
/*
 * Start a call. Returns MOAT_OK (cb will be called once), MOAT_EINVAL for a
 * malformed method, URL or header, or MOAT_ECANCELLED while the client is
 * being freed.
 */
int moat_http_client_send(struct moat_http_client *c,
                          const struct moat_http_call *call,
                          moat_http_client_cb cb, void *arg);
/* Number of calls started and not yet completed. */
size_t moat_http_client_pending(const struct moat_http_client *c);
/* Case-insensitive header lookup in a response; NULL if absent. */
const char *moat_http_response_header(const struct moat_http_response *r,
                                      const char *name);

#endif /* MOAT_HTTP_CLIENT_H */
