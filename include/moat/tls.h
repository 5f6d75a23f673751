/*
 * moat/tls.h - TLS on every hop: the deployment CA and the certificate of
 * each service (OpenSSL's libcrypto), the server side of mutual TLS for
 * the HTTP server (moat/http.h, moat_http_set_tls) and the client side for
 * libcurl (moat_tls_curl).
 *
 * Names. A certificate names one service: CN = NAME, and the subject
 * alternative names URI:moat://service/NAME, DNS:NAME, DNS:localhost and
 * IP:127.0.0.1 (services listen on loopback, so curl's host check passes
 * for every service; who the peer is comes from the name,
 * moat_tls_peer_name). The
 * moat CLI presents the certificate "operator", integration tests "test".
 *
 * The process identity. A process has at most one: its certificate, key
 * and the deployment CA, read once into memory (moat_tls_load, before the
 * process is confined to its data directory, which holds none of them) and
 * kept until exit. With it loaded, every libcurl handle set up with
 * moat_tls_curl presents that certificate and trusts only that CA, for
 * https:// URLs; http:// URLs are left alone.
 *
 * Ownership: moat_tls_server_ctx returns an SSL_CTX the caller frees with
 * SSL_CTX_free (moat_http_set_tls takes a reference of its own). Paths are
 * copied. Functions returning char * return memory the caller frees.
 */
#ifndef MOAT_TLS_H
#define MOAT_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

/* Longest service name a certificate carries, NUL excluded. */
#define MOAT_TLS_NAME_MAX 32
/* Default lifetime of a certificate moat certs issues, in days. */
#define MOAT_TLS_CERT_DAYS 825
#define MOAT_TLS_CA_DAYS   3650

/*
 * Load the process identity: PEM certificate, PEM private key and PEM CA
 * certificate (all three, or MOAT_EINVAL). MOAT_EIO (logged, naming the
 * file) when one cannot be read or the key does not match the certificate.
 */
int moat_tls_load(const char *cert_path, const char *key_path,
                  const char *ca_path);
/*
 * From MOAT_TLS_CERT, MOAT_TLS_KEY and MOAT_TLS_CA: MOAT_ENOTFOUND when
 * none is set (TLS off), MOAT_EINVAL when only some are, else as
 * moat_tls_load.
 */
int moat_tls_load_env(void);
/* True once an identity is loaded. */
bool moat_tls_enabled(void);
/* Forget the identity (tests; a process normally keeps it until exit). */
void moat_tls_unload(void);

/*
 * A server context with the process identity: TLS 1.2 or later, session
 * cache and tickets on. With allowed (NULL-terminated service names) the
 * client must present a certificate from the deployment CA whose name is
 * one of them, or the handshake fails; with allowed NULL no client
 * certificate is asked for (the gateway, which faces the public). NULL
 * (logged) when no identity is loaded or OpenSSL refuses.
 */
SSL_CTX *moat_tls_server_ctx(const char *const *allowed);

/*
 * The service name a certificate names: its URI SAN moat://service/NAME,
 * else its CN. Writes it to out (cap >= MOAT_TLS_NAME_MAX + 1) and returns
 * true; false when ssl has no verified peer certificate or no valid name.
 */
bool moat_tls_peer_name(SSL *ssl, char *out, size_t cap);

/*
 * Set up a libcurl easy handle (a CURL *) for https:// calls with the
 * process identity: client certificate and key, the deployment CA as the
 * only trust anchor, peer and host verification on. No-op without an
 * identity. Returns MOAT_OK, or MOAT_EIO when libcurl refuses an option.
 */
int moat_tls_curl(void *curl_easy);

/*
 * Issue certificates (moat certs, tests). A CA: a new P-256 key and a
 * self-signed CA certificate "moat deployment CA <label>" valid for days.
 * A leaf: a new P-256 key and a certificate for service name signed by the
 * CA (ca_cert_pem, ca_key_pem), valid from now + not_before_s for days
 * (a negative not_before_s with a short lifetime makes an expired one for
 * tests). Each writes PEM text to *cert_pem and *key_pem (caller frees
 * both, wiping the key first). MOAT_EINVAL for a bad name, MOAT_EIO on
 * OpenSSL failures.
 */
int moat_tls_make_ca(const char *label, int days, char **cert_pem,
                     char **key_pem);
int moat_tls_make_cert(const char *ca_cert_pem, const char *ca_key_pem,
                       const char *name, int64_t not_before_s, int days,
                       char **cert_pem, char **key_pem);
/* Write text to path with mode 0600 (replacing it atomically). */
int moat_tls_write_pem(const char *path, const char *text);

#endif /* MOAT_TLS_H */
