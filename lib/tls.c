/*
 * tls.c - the deployment CA, service certificates and mutual TLS (see
 * moat/tls.h).
 */
#include "moat/tls.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat/common.h"
#include "moat/log.h"

#define URI_PREFIX    "moat://service/"
#define MAX_PEM_BYTES (64u << 10)
#define MAX_ALLOWED   64

/* The process identity: PEM texts kept for curl's blobs, parsed forms for
 * server contexts. */
static struct {
    char *cert, *key, *ca;
    size_t cert_len, key_len, ca_len;
} g_id;

bool moat_tls_enabled(void)
{
    return g_id.cert != NULL;
}

void moat_tls_unload(void)
{
    if (g_id.key)
        OPENSSL_cleanse(g_id.key, g_id.key_len);
    free(g_id.cert);
    free(g_id.key);
    free(g_id.ca);
    memset(&g_id, 0, sizeof(g_id));
}

static char *read_pem(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        moat_log(MOAT_LOG_ERROR, "cannot read a TLS file", "{s:s, s:s}", "path",
                 path, "error", strerror(errno));
        return NULL;
    }
    char *buf = moat_xcalloc(1, MAX_PEM_BYTES + 1);
    size_t n = fread(buf, 1, MAX_PEM_BYTES + 1, f);
    fclose(f);
    if (n == 0 || n > MAX_PEM_BYTES) {
        moat_log(MOAT_LOG_ERROR, "a TLS file is empty or too large",
                 "{s:s, s:I}", "path", path, "max_bytes",
                 (json_int_t)MAX_PEM_BYTES);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static X509 *pem_cert(const char *pem, size_t len)
{
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return x;
}

static EVP_PKEY *pem_key(const char *pem, size_t len)
{
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

int moat_tls_load(const char *cert_path, const char *key_path,
                  const char *ca_path)
{
    if (!cert_path || !key_path || !ca_path)
        return MOAT_EINVAL;
    moat_tls_unload();
    g_id.cert = read_pem(cert_path, &g_id.cert_len);
    g_id.key = read_pem(key_path, &g_id.key_len);
    g_id.ca = read_pem(ca_path, &g_id.ca_len);
    int rc = MOAT_EIO;
    X509 *cert = NULL, *ca = NULL;
    EVP_PKEY *key = NULL;
    if (!g_id.cert || !g_id.key || !g_id.ca)
        goto out;
    cert = pem_cert(g_id.cert, g_id.cert_len);
    ca = pem_cert(g_id.ca, g_id.ca_len);
    key = pem_key(g_id.key, g_id.key_len);
    if (!cert || !ca || !key) {
        moat_log(MOAT_LOG_ERROR, "a TLS file is not valid PEM",
                 "{s:s, s:s, s:s}", "cert", cert_path, "key", key_path, "ca",
                 ca_path);
        goto out;
    }
    if (X509_check_private_key(cert, key) != 1) {
        moat_log(MOAT_LOG_ERROR, "the TLS key does not match the certificate",
                 "{s:s, s:s}", "cert", cert_path, "key", key_path);
        goto out;
    }
    rc = MOAT_OK;
out:
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(key);
    if (rc != MOAT_OK)
        moat_tls_unload();
    ERR_clear_error();
    return rc;
}

int moat_tls_load_env(void)
{
    const char *cert = getenv("MOAT_TLS_CERT");
    const char *key = getenv("MOAT_TLS_KEY");
    const char *ca = getenv("MOAT_TLS_CA");
    bool c = cert && *cert, k = key && *key, a = ca && *ca;
    if (!c && !k && !a)
        return MOAT_ENOTFOUND;
    if (!c || !k || !a) {
        moat_log(MOAT_LOG_ERROR,
                 "MOAT_TLS_CERT, MOAT_TLS_KEY and MOAT_TLS_CA go together",
                 NULL);
        return MOAT_EINVAL;
    }
    return moat_tls_load(cert, key, ca);
}

/* ---- names ---- */

static bool name_valid(const char *s, size_t n)
{
    if (n == 0 || n > MOAT_TLS_NAME_MAX || s[0] < 'a' || s[0] > 'z')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '-'))
            return false;
    return true;
}

static bool cert_name(X509 *x, char *out, size_t cap)
{
    bool found = false;
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans) && !found; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type != GEN_URI)
            continue;
        const char *u =
            (const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        size_t ulen =
            (size_t)ASN1_STRING_length(g->d.uniformResourceIdentifier);
        size_t plen = strlen(URI_PREFIX);
        if (ulen > plen && strncmp(u, URI_PREFIX, plen) == 0 &&
            name_valid(u + plen, ulen - plen) && ulen - plen < cap) {
            memcpy(out, u + plen, ulen - plen);
            out[ulen - plen] = '\0';
            found = true;
        }
    }
    GENERAL_NAMES_free(sans);
    if (found)
        return true;
    char cn[MOAT_TLS_NAME_MAX + 2];
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName,
                                      cn, sizeof(cn));
    if (n <= 0 || !name_valid(cn, (size_t)n) || (size_t)n >= cap)
        return false;
    memcpy(out, cn, (size_t)n + 1);
    return true;
}

bool moat_tls_peer_name(SSL *ssl, char *out, size_t cap)
{
    if (!ssl || SSL_get_verify_result(ssl) != X509_V_OK)
        return false;
    X509 *x = SSL_get1_peer_certificate(ssl);
    bool ok = x && cert_name(x, out, cap);
    X509_free(x);
    return ok;
}

/* ---- server ---- */

struct allowed {
    size_t n;
    char names[MAX_ALLOWED][MOAT_TLS_NAME_MAX + 1];
};

static int g_allowed_idx = -1;

static void allowed_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                         long argl, void *argp)
{
    MOAT_UNUSED(parent);
    MOAT_UNUSED(ad);
    MOAT_UNUSED(idx);
    MOAT_UNUSED(argl);
    MOAT_UNUSED(argp);
    free(ptr);
}

/* At the end of the chain (depth 0), a verified certificate must name an
 * allowed caller. */
static int verify_cb(int preverify_ok, X509_STORE_CTX *xs)
{
    if (!preverify_ok || X509_STORE_CTX_get_error_depth(xs) != 0)
        return preverify_ok;
    SSL *ssl =
        X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    const struct allowed *a =
        SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), g_allowed_idx);
    char name[MOAT_TLS_NAME_MAX + 1];
    if (!cert_name(X509_STORE_CTX_get_current_cert(xs), name, sizeof(name))) {
        X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
        moat_log(MOAT_LOG_WARN, "TLS client certificate names no service",
                 NULL);
        return 0;
    }
    for (size_t i = 0; a && i < a->n; i++)
        if (strcmp(a->names[i], name) == 0)
            return 1;
    moat_log(MOAT_LOG_WARN, "TLS client is not a known caller", "{s:s}", "peer",
             name);
    X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

SSL_CTX *moat_tls_server_ctx(const char *const *allowed)
{
    if (!moat_tls_enabled())
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    X509 *cert = pem_cert(g_id.cert, g_id.cert_len);
    X509 *ca = pem_cert(g_id.ca, g_id.ca_len);
    EVP_PKEY *key = pem_key(g_id.key, g_id.key_len);
    bool ok = ctx && cert && ca && key &&
              SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 &&
              SSL_CTX_use_certificate(ctx, cert) == 1 &&
              SSL_CTX_use_PrivateKey(ctx, key) == 1 &&
              SSL_CTX_check_private_key(ctx) == 1;
    /* Resumption: a session cache for TLS 1.2 ids, tickets for 1.3 (on by
     * default); a context id, without which OpenSSL refuses to resume a
     * session that verified a client certificate. */
    static const unsigned char sid_ctx[] = "moat";
    ok = ok &&
         SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) == 1;
    if (ok) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, 4096);
        SSL_CTX_set_timeout(ctx, 3600);
    }
    if (ok && allowed) {
        struct allowed *a = moat_xcalloc(1, sizeof(*a));
        for (size_t i = 0; allowed[i] && a->n < MAX_ALLOWED; i++)
            if (strlen(allowed[i]) <= MOAT_TLS_NAME_MAX)
                snprintf(a->names[a->n++], sizeof(a->names[0]), "%s",
                         allowed[i]);
        if (g_allowed_idx < 0)
            g_allowed_idx =
                SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, allowed_free);
        SSL_CTX_set_ex_data(ctx, g_allowed_idx, a);
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        ok = X509_STORE_add_cert(store, ca) == 1;
        STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
        X509_NAME *cn = X509_NAME_dup(X509_get_subject_name(ca));
        if (names && cn && sk_X509_NAME_push(names, cn) > 0)
            SSL_CTX_set_client_CA_list(ctx, names);
        else {
            X509_NAME_free(cn);
            sk_X509_NAME_free(names);
        }
        SSL_CTX_set_verify(
            ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
        SSL_CTX_set_verify_depth(ctx, 2);
    }
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(key);
    if (!ok) {
        unsigned long e = ERR_get_error();
        moat_log(MOAT_LOG_ERROR, "cannot set up the TLS server", "{s:s}",
                 "error", e ? ERR_error_string(e, NULL) : "no identity");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* ---- client (libcurl) ---- */

int moat_tls_curl(void *curl_easy)
{
    CURL *e = curl_easy;
    if (!moat_tls_enabled())
        return MOAT_OK;
    /* The identity lives until exit: curl may point at it. */
    struct curl_blob cert = {g_id.cert, g_id.cert_len, CURL_BLOB_NOCOPY};
    struct curl_blob key = {g_id.key, g_id.key_len, CURL_BLOB_NOCOPY};
    struct curl_blob ca = {g_id.ca, g_id.ca_len, CURL_BLOB_NOCOPY};
    CURLcode rc = CURLE_OK;
    rc |= curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &cert);
    rc |= curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
    rc |= curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &key);
    rc |= curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    rc |= curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &ca);
    rc |= curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    rc |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    rc |=
        curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    rc |= curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 1L);
    return rc == CURLE_OK ? MOAT_OK : MOAT_EIO;
}

/* ---- issuing ---- */

static EVP_PKEY *new_key(void)
{
    return EVP_EC_gen("P-256");
}

static bool add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return false;
    bool ok = X509_add_ext(x, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

static char *pem_of_cert(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b && PEM_write_bio_X509(b, x) == 1) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        out = moat_xcalloc(1, (size_t)n + 1);
        memcpy(out, p, (size_t)n);
    }
    BIO_free(b);
    return out;
}

static char *pem_of_key(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_secmem());
    char *out = NULL;
    if (b && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        out = moat_xcalloc(1, (size_t)n + 1);
        memcpy(out, p, (size_t)n);
    }
    BIO_free(b);
    return out;
}

/* A certificate for subject (CN) with key, signed by issuer_key; issuer
 * NULL = self-signed. */
static X509 *new_cert(const char *cn, EVP_PKEY *key, X509 *issuer,
                      EVP_PKEY *issuer_key, int64_t not_before_s, int days)
{
    X509 *x = X509_new();
    unsigned char serial[16];
    BIGNUM *bn = NULL;
    bool ok = x && RAND_bytes(serial, sizeof(serial)) == 1;
    if (ok) {
        serial[0] &= 0x7f; /* positive */
        bn = BN_bin2bn(serial, sizeof(serial), NULL);
        ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) &&
             X509_set_version(x, 2) == 1;
    }
    BN_free(bn);
    ok = ok && X509_gmtime_adj(X509_getm_notBefore(x), (long)not_before_s) &&
         X509_time_adj_ex(X509_getm_notAfter(x), days, (long)not_before_s,
                          NULL) &&
         X509_set_pubkey(x, key) == 1;
    X509_NAME *name = X509_get_subject_name(x);
    ok = ok &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                    (const unsigned char *)cn, -1, -1, 0) == 1;
    ok = ok && X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer)
                                              : name) == 1;
    X509 *iss = issuer ? issuer : x;
    if (ok && !issuer) {
        ok = add_ext(x, iss, NID_basic_constraints,
                     "critical,CA:TRUE,pathlen:0") &&
             add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign") &&
             add_ext(x, iss, NID_subject_key_identifier, "hash");
    } else if (ok) {
        char san[160];
        snprintf(san, sizeof(san),
                 "URI:" URI_PREFIX "%s,DNS:%s,DNS:localhost,IP:127.0.0.1", cn,
                 cn);
        ok = add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(x, iss, NID_key_usage,
                     "critical,digitalSignature,keyAgreement") &&
             add_ext(x, iss, NID_ext_key_usage, "serverAuth,clientAuth") &&
             add_ext(x, iss, NID_subject_alt_name, san) &&
             add_ext(x, iss, NID_authority_key_identifier, "keyid:always");
    }
    ok = ok && X509_sign(x, issuer_key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* PEM texts of x and key into *cert_pem and *key_pem; frees x and key.
 * MOAT_OK, or MOAT_EIO with both NULL. */
static int take_pems(X509 *x, EVP_PKEY *key, char **cert_pem, char **key_pem)
{
    *cert_pem = x ? pem_of_cert(x) : NULL;
    *key_pem = x ? pem_of_key(key) : NULL;
    X509_free(x);
    EVP_PKEY_free(key);
    ERR_clear_error();
    if (*cert_pem && *key_pem)
        return MOAT_OK;
    free(*cert_pem);
    if (*key_pem)
        OPENSSL_cleanse(*key_pem, strlen(*key_pem));
    free(*key_pem);
    *cert_pem = *key_pem = NULL;
    return MOAT_EIO;
}

int moat_tls_make_ca(const char *label, int days, char **cert_pem,
                     char **key_pem)
{
    char cn[96];
    snprintf(cn, sizeof(cn), "moat deployment CA %s", label ? label : "");
    EVP_PKEY *key = new_key();
    X509 *x = key ? new_cert(cn, key, NULL, key, 0, days) : NULL;
    return take_pems(x, key, cert_pem, key_pem);
}

int moat_tls_make_cert(const char *ca_cert_pem, const char *ca_key_pem,
                       const char *name, int64_t not_before_s, int days,
                       char **cert_pem, char **key_pem)
{
    *cert_pem = *key_pem = NULL;
    if (!name || !name_valid(name, strlen(name)))
        return MOAT_EINVAL;
    X509 *ca = pem_cert(ca_cert_pem, strlen(ca_cert_pem));
    EVP_PKEY *ca_key = pem_key(ca_key_pem, strlen(ca_key_pem));
    EVP_PKEY *key = ca && ca_key ? new_key() : NULL;
    X509 *x = key ? new_cert(name, key, ca, ca_key, not_before_s, days) : NULL;
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    return take_pems(x, key, cert_pem, key_pem);
}

int moat_tls_write_pem(const char *path, const char *text)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return MOAT_EINVAL;
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return MOAT_EIO;
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    bool ok = off == len && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return MOAT_EIO;
    }
    return MOAT_OK;
}
