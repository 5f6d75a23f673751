/*
 * crypto.c - keyring, sealed fields, blind indexes and password hashing on
 * libsodium (see moat/crypto.h).
 *
 * Key material lives only in sodium_malloc'd memory (guard pages, mlock'd,
 * read-only once built, wiped by sodium_free). Text that carries keys (the
 * key file, its serialisation) goes through ordinary buffers that are wiped
 * before they are freed.
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <malloc.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/crypto.h"
#include "moat/log.h"

#define SEALED_PREFIX     "s1."
#define SEALED_PREFIX_LEN (sizeof(SEALED_PREFIX) - 1)
#define NONCE_BYTES       crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES         crypto_aead_xchacha20poly1305_ietf_ABYTES
#define B64URL            sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define B64STD            sodium_base64_VARIANT_ORIGINAL
/* Base64 text of one key, without the NUL ("...=" , 44 characters). */
#define KEY_B64_LEN (sodium_base64_ENCODED_LEN(MOAT_KEY_BYTES, B64STD) - 1)
/* Longest "data <id> <key>\n" line: 10 digits of id. */
#define KEY_LINE_MAX (5 + 10 + 1 + KEY_B64_LEN + 1)
/* Rotations are rare (months apart); this bounds the file we read. */
#define KEYRING_MAX_DATA_KEYS 4096
#define KEYRING_TEXT_MAX      ((KEYRING_MAX_DATA_KEYS + 1) * KEY_LINE_MAX)
/* Argon2 cost grows with the input; nobody types more than this. */
#define PASSWORD_MAX_LEN  1024
#define RANDOM_TOKEN_MAX  (1u << 20)
#define BLIND_INDEX_LABEL "moat-blind-index:"
/* Base64url lengths of the shortest and longest valid sealed payloads. */
#define SEALED_B64_MIN                                                         \
    (sodium_base64_ENCODED_LEN(NONCE_BYTES + TAG_BYTES, B64URL) - 1)
#define SEALED_B64_MAX                                                         \
    (sodium_base64_ENCODED_LEN(                                                \
         NONCE_BYTES + TAG_BYTES + MOAT_SEALED_MAX_INPUT, B64URL) -            \
     1)

_Static_assert(MOAT_KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
               "data keys are XChaCha20-Poly1305 keys");
_Static_assert(MOAT_PASSWORD_HASH_MAX == crypto_pwhash_STRBYTES,
               "password hash buffer matches crypto_pwhash_STRBYTES");
_Static_assert(MOAT_BLIND_INDEX_HEX == 2 * crypto_generichash_BYTES,
               "blind index is BLAKE2b-256 in hex");

struct data_key {
    uint32_t id;
    unsigned char key[MOAT_KEY_BYTES];
};

/* One sodium_malloc'd block holding every key of a keyring. */
struct secrets {
    unsigned char index_key[MOAT_KEY_BYTES];
    size_t ndata;           /* data keys in use */
    struct data_key data[]; /* sorted by id; the last one is active */
};

struct moat_keyring {
    struct secrets *s; /* read-only pages; replaced whole by rotation */
    char *file;        /* key file path; NULL when read from the env */
    /* A pointer so that readers holding a const keyring can still lock:
     * rotation (writer) swaps s while seal/open/index (readers) use it. */
    pthread_rwlock_t *lock;
};

static pthread_once_t g_sodium_once = PTHREAD_ONCE_INIT;

static void sodium_init_once(void)
{
    if (sodium_init() < 0)
        moat_die("sodium_init failed");
}

static void ensure_sodium(void)
{
    pthread_once(&g_sodium_once, sodium_init_once);
}

/* ---- secure key storage ------------------------------------------------ */

static struct secrets *secrets_alloc(size_t ndata)
{
    /*
     * sodium_malloc places the block against a guard page, so the pointer
     * is only as aligned as the size: round it up to keep size_t members
     * aligned.
     */
    size_t size = sizeof(struct secrets) + ndata * sizeof(struct data_key);
    size = (size + 15u) & ~(size_t)15u;
    struct secrets *s = sodium_malloc(size);
    if (!s)
        moat_die("sodium_malloc(%zu) failed", size);
    sodium_memzero(s, size);
    return s;
}

static void secrets_seal(struct secrets *s)
{
    /* A stray write through a bug now faults instead of corrupting keys. */
    sodium_mprotect_readonly(s);
}

static const struct data_key *find_key(const struct secrets *s, uint32_t id)
{
    size_t lo = 0, hi = s->ndata;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->data[mid].id == id)
            return &s->data[mid];
        if (s->data[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Wipe a malloc'd buffer of len bytes that held key text, then free it. */
static void free_wiped(char *buf, size_t len)
{
    if (!buf)
        return;
    sodium_memzero(buf, len);
    free(buf);
}

/* ---- keyring text ------------------------------------------------------ */

/* Strict decimal: 1-10 digits, no sign, no leading zero, 1..UINT32_MAX. */
static bool parse_u32(const char *s, size_t len, uint32_t *out)
{
    if (len == 0 || len > 10 || s[0] == '0')
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool decode_key(const char *b64, size_t len,
                       unsigned char out[MOAT_KEY_BYTES])
{
    size_t n = 0;
    const char *end = NULL;
    if (len != KEY_B64_LEN)
        return false;
    if (sodium_base642bin(out, MOAT_KEY_BYTES, b64, len, NULL, &n, &end,
                          B64STD) != 0)
        return false;
    return end == b64 + len && n == MOAT_KEY_BYTES;
}

/* Sort data keys by id without a heap copy of the key material. */
static void sort_data_keys(struct secrets *s)
{
    struct data_key tmp;
    for (size_t i = 1; i < s->ndata; i++) {
        size_t j = i;
        while (j > 0 && s->data[j - 1].id > s->data[j].id) {
            tmp = s->data[j];
            s->data[j] = s->data[j - 1];
            s->data[j - 1] = tmp;
            j--;
        }
    }
    sodium_memzero(&tmp, sizeof(tmp));
}

/*
 * Parse "index <b64>" and "data <id> <b64>" lines separated by sep (empty
 * lines are skipped). *why and *line_no say what was wrong; no key
 * material ever goes into a message.
 */
static int parse_keyring(const char *text, size_t len, char sep,
                         struct secrets **out, const char **why,
                         size_t *line_no)
{
    struct secrets *s = NULL;
    bool have_index = false;
    int rc = MOAT_EINVAL;
    size_t nlines = 1;

    *out = NULL;
    *line_no = 0;
    if (len > KEYRING_TEXT_MAX) {
        *why = "keyring is too large";
        return MOAT_ETOOBIG;
    }
    for (size_t i = 0; i < len; i++)
        nlines += text[i] == sep;
    s = secrets_alloc(nlines);

    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, sep, (size_t)(end - p));
        if (!eol)
            eol = end;
        size_t n = (size_t)(eol - p);
        (*line_no)++;
        if (n == 0) {
            p = eol + 1;
            continue;
        }
        if (n > 6 && memcmp(p, "index ", 6) == 0) {
            if (have_index) {
                *why = "more than one index key";
                goto out;
            }
            if (!decode_key(p + 6, n - 6, s->index_key)) {
                *why = "index key is not base64 of 32 bytes";
                goto out;
            }
            have_index = true;
        } else if (n > 5 && memcmp(p, "data ", 5) == 0) {
            const char *id = p + 5;
            const char *sp = memchr(id, ' ', (size_t)(eol - id));
            struct data_key *dk = &s->data[s->ndata];
            if (!sp || !parse_u32(id, (size_t)(sp - id), &dk->id)) {
                *why = "data key id is not a positive 32-bit integer";
                goto out;
            }
            if (!decode_key(sp + 1, (size_t)(eol - sp - 1), dk->key)) {
                *why = "data key is not base64 of 32 bytes";
                goto out;
            }
            if (++s->ndata > KEYRING_MAX_DATA_KEYS) {
                *why = "too many data keys";
                goto out;
            }
        } else {
            *why = "line is neither 'index <base64>' nor 'data <id> <base64>'";
            goto out;
        }
        p = eol + 1;
    }
    *line_no = 0;
    if (!have_index) {
        *why = "no index key";
        goto out;
    }
    if (s->ndata == 0) {
        *why = "no data key";
        goto out;
    }
    sort_data_keys(s);
    for (size_t i = 1; i < s->ndata; i++) {
        if (s->data[i].id == s->data[i - 1].id) {
            *why = "duplicate data key id";
            goto out;
        }
    }
    secrets_seal(s);
    *out = s;
    s = NULL;
    rc = MOAT_OK;
out:
    if (s)
        sodium_free(s);
    return rc;
}

/* The key file text for s; *len gets its length. Wipe with free_wiped. */
static char *serialise_keyring(const struct secrets *s, size_t *len)
{
    size_t cap = KEY_LINE_MAX * (s->ndata + 1) + 1;
    char *buf = moat_xmalloc(cap);
    size_t n = 0;
    char b64[KEY_B64_LEN + 1];

    sodium_bin2base64(b64, sizeof(b64), s->index_key, MOAT_KEY_BYTES, B64STD);
    n += (size_t)snprintf(buf + n, cap - n, "index %s\n", b64);
    for (size_t i = 0; i < s->ndata; i++) {
        sodium_bin2base64(b64, sizeof(b64), s->data[i].key, MOAT_KEY_BYTES,
                          B64STD);
        n += (size_t)snprintf(buf + n, cap - n, "data %" PRIu32 " %s\n",
                              s->data[i].id, b64);
    }
    sodium_memzero(b64, sizeof(b64));
    *len = n;
    return buf;
}

/* ---- key file ---------------------------------------------------------- */

static void log_file_error(const char *msg, const char *path, const char *why)
{
    moat_log(MOAT_LOG_ERROR, msg, "{s:s, s:s}", "path", path, "error", why);
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, data, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

static int fsync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir =
        slash ? moat_xstrndup(path, slash == path ? 1 : (size_t)(slash - path))
              : moat_xstrdup(".");
    int rc = -1;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        rc = fsync(fd);
        int err = errno;
        close(fd);
        errno = err;
    }
    free(dir);
    return rc;
}

/*
 * Write data to path so that path either keeps its old contents or holds
 * all of the new ones, even across a crash: a 0600 temp file in the same
 * directory, written and fsynced, then renamed over path (replace) or
 * hard-linked to it (no replace: MOAT_ECONFLICT if path exists), then the
 * directory is fsynced so the new name is durable too.
 */
static int write_file_atomic(const char *path, const char *data, size_t len,
                             bool replace)
{
    unsigned char rnd[8];
    char suffix[2 * sizeof(rnd) + 1];
    randombytes_buf(rnd, sizeof(rnd));
    sodium_bin2hex(suffix, sizeof(suffix), rnd, sizeof(rnd));
    char *tmp = moat_xasprintf("%s.tmp-%s", path, suffix);
    const char *why = NULL;
    int rc = MOAT_EIO;
    bool created = false;

    int fd =
        open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        why = strerror(errno);
        goto out;
    }
    created = true;
    /* The umask may have removed bits, but must not leave any extra. */
    if (fchmod(fd, 0600) != 0 || write_all(fd, data, len) != 0 ||
        fsync(fd) != 0) {
        int err = errno;
        close(fd);
        why = strerror(err);
        goto out;
    }
    if (close(fd) != 0) {
        why = strerror(errno);
        goto out;
    }
    if (replace) {
        if (rename(tmp, path) != 0) {
            why = strerror(errno);
            goto out;
        }
        created = false;
    } else {
        if (link(tmp, path) != 0) {
            if (errno == EEXIST)
                rc = MOAT_ECONFLICT;
            why = strerror(errno);
            goto out;
        }
    }
    if (fsync_parent_dir(path) != 0) {
        why = strerror(errno);
        goto out;
    }
    rc = MOAT_OK;
out:
    if (created)
        unlink(tmp);
    if (rc != MOAT_OK && rc != MOAT_ECONFLICT)
        log_file_error("cannot write key file", path, why ? why : "unknown");
    free(tmp);
    return rc;
}

/* MOAT_ENOTFOUND when path does not exist (the caller then creates it). */
static int load_key_file(const char *path, struct secrets **out)
{
    char *buf = NULL;
    size_t len = 0, cap = KEYRING_TEXT_MAX + 1;
    const char *why = NULL;
    int rc = MOAT_EINVAL;
    struct stat st;

    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT)
            return MOAT_ENOTFOUND;
        log_file_error("cannot open key file", path,
                       err == ELOOP ? "is a symbolic link" : strerror(err));
        return err == ELOOP ? MOAT_EINVAL : MOAT_EIO;
    }
    if (fstat(fd, &st) != 0) {
        why = strerror(errno);
        rc = MOAT_EIO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        why = "not a regular file";
        goto out;
    }
    /* Like ssh with its private keys: other users must not even see it. */
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        why = "accessible by group or others (run chmod 600 on it)";
        goto out;
    }
    buf = moat_xmalloc(cap);
    for (;;) {
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            why = strerror(errno);
            rc = MOAT_EIO;
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len == cap) {
            why = "too large";
            rc = MOAT_ETOOBIG;
            goto out;
        }
    }
    size_t line_no = 0;
    rc = parse_keyring(buf, len, '\n', out, &why, &line_no);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "malformed key file", "{s:s, s:s, s:I}",
                 "path", path, "error", why, "line", (json_int_t)line_no);
        why = NULL;
    }
out:
    if (why)
        log_file_error("refusing key file", path, why);
    free_wiped(buf, len);
    close(fd);
    return rc;
}

static struct secrets *generate_secrets(void)
{
    struct secrets *s = secrets_alloc(1);
    randombytes_buf(s->index_key, MOAT_KEY_BYTES);
    s->data[0].id = 1;
    crypto_aead_xchacha20poly1305_ietf_keygen(s->data[0].key);
    s->ndata = 1;
    secrets_seal(s);
    return s;
}

static int create_key_file(const char *path, struct secrets **out)
{
    struct secrets *s = generate_secrets();
    size_t len = 0;
    char *text = serialise_keyring(s, &len);
    int rc = write_file_atomic(path, text, len, false);
    free_wiped(text, len);
    if (rc == MOAT_OK) {
        moat_log(MOAT_LOG_INFO, "created key file", "{s:s}", "path", path);
        *out = s;
        return MOAT_OK;
    }
    sodium_free(s);
    /* Another process created it first: use theirs. */
    if (rc == MOAT_ECONFLICT)
        return load_key_file(path, out);
    return rc;
}

/* ---- keyring ----------------------------------------------------------- */

int moat_keyring_load(struct moat_keyring **out, const char *env_name,
                      const char *key_file)
{
    struct secrets *s = NULL;
    const char *env = env_name ? getenv(env_name) : NULL;
    int rc;

    ensure_sodium();
    if (!out)
        return MOAT_EINVAL;
    *out = NULL;
    if (env) {
        const char *why = NULL;
        size_t line_no = 0;
        /* Entries are separated by ';', but a value pasted from the file
         * (MOAT_KEYRING="$(cat keyring)") keeps its newlines: take both.
         * Set but empty is a configuration error, not "use the file". */
        size_t len = strlen(env);
        char *text = moat_xstrdup(env);
        for (size_t i = 0; i < len; i++)
            if (text[i] == '\n')
                text[i] = ';';
        rc = parse_keyring(text, len, ';', &s, &why, &line_no);
        free_wiped(text, len);
        if (rc != MOAT_OK) {
            moat_log(MOAT_LOG_ERROR, "malformed keyring in environment",
                     "{s:s, s:s, s:I}", "variable", env_name, "error", why,
                     "entry", (json_int_t)line_no);
            return rc;
        }
    } else {
        if (!key_file || !*key_file)
            return MOAT_EINVAL;
        rc = load_key_file(key_file, &s);
        if (rc == MOAT_ENOTFOUND)
            rc = create_key_file(key_file, &s);
        if (rc != MOAT_OK)
            return rc;
    }

    struct moat_keyring *kr = moat_xcalloc(1, sizeof(*kr));
    kr->s = s;
    kr->file = env ? NULL : moat_xstrdup(key_file);
    kr->lock = moat_xmalloc(sizeof(*kr->lock));
    /* Readers never pause, so a rotation would otherwise wait forever
     * behind a steady stream of seals. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (pthread_rwlock_init(kr->lock, &attr) != 0)
        moat_die("pthread_rwlock_init failed");
    pthread_rwlockattr_destroy(&attr);
    *out = kr;
    return MOAT_OK;
}

void moat_keyring_free(struct moat_keyring *kr)
{
    if (!kr)
        return;
    sodium_free(kr->s);
    pthread_rwlock_destroy(kr->lock);
    free(kr->lock);
    free(kr->file);
    free(kr);
}

uint32_t moat_keyring_active(const struct moat_keyring *kr)
{
    pthread_rwlock_rdlock(kr->lock);
    uint32_t id = kr->s->data[kr->s->ndata - 1].id;
    pthread_rwlock_unlock(kr->lock);
    return id;
}

int moat_keyring_rotate(struct moat_keyring *kr, uint32_t *new_id)
{
    struct secrets *ns = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc;

    if (!kr)
        return MOAT_EINVAL;
    if (!kr->file)
        return MOAT_EUNSUPPORTED;
    pthread_rwlock_wrlock(kr->lock);
    const struct secrets *s = kr->s;
    uint32_t active = s->data[s->ndata - 1].id;
    if (active == UINT32_MAX || s->ndata >= KEYRING_MAX_DATA_KEYS) {
        rc = MOAT_ETOOBIG;
        goto out;
    }
    ns = secrets_alloc(s->ndata + 1);
    memcpy(ns->index_key, s->index_key, MOAT_KEY_BYTES);
    memcpy(ns->data, s->data, s->ndata * sizeof(struct data_key));
    ns->data[s->ndata].id = active + 1;
    crypto_aead_xchacha20poly1305_ietf_keygen(ns->data[s->ndata].key);
    ns->ndata = s->ndata + 1;
    secrets_seal(ns);

    /* The file first: a key that is not on disk must never encrypt. */
    text = serialise_keyring(ns, &len);
    rc = write_file_atomic(kr->file, text, len, true);
    if (rc != MOAT_OK)
        goto out;
    sodium_free(kr->s);
    kr->s = ns;
    ns = NULL;
    if (new_id)
        *new_id = active + 1;
    moat_log(MOAT_LOG_INFO, "rotated data key", "{s:s, s:I}", "path", kr->file,
             "key_id", (json_int_t)(active + 1));
out:
    pthread_rwlock_unlock(kr->lock);
    if (ns)
        sodium_free(ns);
    free_wiped(text, len);
    return rc;
}

int moat_keyring_retire(struct moat_keyring *kr, uint32_t *retired)
{
    struct secrets *ns = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = MOAT_OK;

    if (!kr)
        return MOAT_EINVAL;
    if (!kr->file)
        return MOAT_EUNSUPPORTED;
    pthread_rwlock_wrlock(kr->lock);
    const struct secrets *s = kr->s;
    uint32_t n = (uint32_t)(s->ndata - 1);
    if (n == 0)
        goto out;
    ns = secrets_alloc(1);
    memcpy(ns->index_key, s->index_key, MOAT_KEY_BYTES);
    ns->data[0] = s->data[s->ndata - 1];
    ns->ndata = 1;
    secrets_seal(ns);

    /* The file first: a key dropped from memory but still on disk would
     * come back at the next start. */
    text = serialise_keyring(ns, &len);
    rc = write_file_atomic(kr->file, text, len, true);
    if (rc != MOAT_OK)
        goto out;
    sodium_free(kr->s);
    kr->s = ns;
    ns = NULL;
    moat_log(MOAT_LOG_INFO, "retired old data keys", "{s:s, s:I, s:I}", "path",
             kr->file, "retired", (json_int_t)n, "active",
             (json_int_t)kr->s->data[0].id);
out:
    pthread_rwlock_unlock(kr->lock);
    if (ns)
        sodium_free(ns);
    free_wiped(text, len);
    if (retired)
        *retired = rc == MOAT_OK ? n : 0;
    return rc;
}

/* ---- sealed fields ----------------------------------------------------- */

static bool is_b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/*
 * Syntax of "s1.<id>.<base64url>": prefix, id, and a payload made only of
 * base64url characters whose length can hold a nonce and a tag and no
 * more than the plaintext cap. Decoding checks the rest.
 */
static bool parse_sealed(const char *sealed, uint32_t *kid, const char **b64,
                         size_t *b64_len)
{
    if (!sealed || strncmp(sealed, SEALED_PREFIX, SEALED_PREFIX_LEN) != 0)
        return false;
    const char *id = sealed + SEALED_PREFIX_LEN;
    const char *dot = id;
    while (*dot >= '0' && *dot <= '9')
        dot++;
    if (*dot != '.' || !parse_u32(id, (size_t)(dot - id), kid))
        return false;
    const char *p = dot + 1;
    size_t n = 0;
    while (n <= SEALED_B64_MAX && is_b64url_char(p[n]))
        n++;
    /* Anything else (padding, whitespace, junk) stops the scan early. */
    if (p[n] != '\0' || n < SEALED_B64_MIN || n > SEALED_B64_MAX || n % 4 == 1)
        return false;
    *b64 = p;
    *b64_len = n;
    return true;
}

uint32_t moat_sealed_key_id(const char *sealed)
{
    uint32_t kid = 0;
    const char *b64;
    size_t n;
    return parse_sealed(sealed, &kid, &b64, &n) ? kid : 0;
}

int moat_seal(const struct moat_keyring *kr, const char *ad, const void *pt,
              size_t len, char **out)
{
    static const unsigned char empty[1];
    unsigned char *raw = NULL;
    unsigned long long clen = 0;
    uint32_t kid;

    if (out)
        *out = NULL;
    if (!kr || !ad || !out || (!pt && len))
        return MOAT_EINVAL;
    if (len > MOAT_SEALED_MAX_INPUT)
        return MOAT_ETOOBIG;
    if (!pt)
        pt = empty;

    size_t raw_len = NONCE_BYTES + len + TAG_BYTES;
    raw = moat_xmalloc(raw_len);
    /* 192-bit random nonces: no counter to keep, no collision to fear. */
    randombytes_buf(raw, NONCE_BYTES);
    pthread_rwlock_rdlock(kr->lock);
    const struct data_key *dk = &kr->s->data[kr->s->ndata - 1];
    kid = dk->id;
    crypto_aead_xchacha20poly1305_ietf_encrypt(raw + NONCE_BYTES, &clen, pt,
                                               len, (const unsigned char *)ad,
                                               strlen(ad), NULL, raw, dk->key);
    pthread_rwlock_unlock(kr->lock);

    char prefix[SEALED_PREFIX_LEN + 12];
    int plen =
        snprintf(prefix, sizeof(prefix), SEALED_PREFIX "%" PRIu32 ".", kid);
    size_t b64_size = sodium_base64_ENCODED_LEN(raw_len, B64URL);
    char *s = moat_xmalloc((size_t)plen + b64_size);
    memcpy(s, prefix, (size_t)plen);
    sodium_bin2base64(s + plen, b64_size, raw, raw_len, B64URL);
    free(raw);
    *out = s;
    return MOAT_OK;
}

int moat_open(const struct moat_keyring *kr, const char *ad, const char *sealed,
              char **out, size_t *len)
{
    unsigned char *raw = NULL;
    char *pt = NULL;
    size_t raw_len = 0;
    unsigned long long pt_len = 0;
    const char *b64, *end = NULL;
    size_t b64_len;
    uint32_t kid;
    int rc = MOAT_EINVAL;

    if (out)
        *out = NULL;
    if (len)
        *len = 0;
    if (!kr || !ad || !out)
        return MOAT_EINVAL;
    if (!parse_sealed(sealed, &kid, &b64, &b64_len))
        return MOAT_EINVAL;

    size_t raw_cap = b64_len / 4 * 3 + 3;
    raw = moat_xmalloc(raw_cap);
    if (sodium_base642bin(raw, raw_cap, b64, b64_len, NULL, &raw_len, &end,
                          B64URL) != 0 ||
        end != b64 + b64_len || raw_len < NONCE_BYTES + TAG_BYTES)
        goto out;

    pt = moat_xmalloc(raw_len - NONCE_BYTES - TAG_BYTES + 1);
    pthread_rwlock_rdlock(kr->lock);
    const struct data_key *dk = find_key(kr->s, kid);
    if (!dk) {
        rc = MOAT_ENOTFOUND;
    } else if (crypto_aead_xchacha20poly1305_ietf_decrypt(
                   (unsigned char *)pt, &pt_len, NULL, raw + NONCE_BYTES,
                   raw_len - NONCE_BYTES, (const unsigned char *)ad, strlen(ad),
                   raw, dk->key) == 0) {
        rc = MOAT_OK;
    }
    pthread_rwlock_unlock(kr->lock);
    if (rc != MOAT_OK)
        goto out;
    pt[pt_len] = '\0';
    *out = pt;
    pt = NULL;
    if (len)
        *len = (size_t)pt_len;
out:
    moat_free_secret(pt);
    free(raw);
    return rc;
}

/* ---- blind index, passwords, helpers ----------------------------------- */

void moat_blind_index(const struct moat_keyring *kr, const char *context,
                      const char *value, char out[MOAT_BLIND_INDEX_HEX + 1])
{
    unsigned char sub[crypto_generichash_KEYBYTES];
    unsigned char mac[crypto_generichash_BYTES];
    crypto_generichash_state st;

    if (!kr || !context || !value || !out)
        moat_die("moat_blind_index: NULL argument");
    /* One subkey per context: equal emails and equal phone numbers must
     * not produce equal indexes. */
    pthread_rwlock_rdlock(kr->lock);
    crypto_generichash_init(&st, kr->s->index_key, MOAT_KEY_BYTES, sizeof(sub));
    pthread_rwlock_unlock(kr->lock);
    crypto_generichash_update(&st, (const unsigned char *)BLIND_INDEX_LABEL,
                              sizeof(BLIND_INDEX_LABEL) - 1);
    crypto_generichash_update(&st, (const unsigned char *)context,
                              strlen(context));
    crypto_generichash_final(&st, sub, sizeof(sub));
    crypto_generichash(mac, sizeof(mac), (const unsigned char *)value,
                       strlen(value), sub, sizeof(sub));
    sodium_bin2hex(out, MOAT_BLIND_INDEX_HEX + 1, mac, sizeof(mac));
    sodium_memzero(&st, sizeof(st));
    sodium_memzero(sub, sizeof(sub));
}

int moat_password_hash(const char *password, char out[MOAT_PASSWORD_HASH_MAX])
{
    ensure_sodium();
    if (!password || !out)
        return MOAT_EINVAL;
    size_t n = strnlen(password, PASSWORD_MAX_LEN + 1);
    if (n > PASSWORD_MAX_LEN)
        return MOAT_EINVAL;
    /* Fails only when Argon2 cannot get its 64 MiB. */
    if (crypto_pwhash_str(out, password, n, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
        return MOAT_EIO;
    return MOAT_OK;
}

int moat_password_verify(const char *hash, const char *password)
{
    ensure_sodium();
    if (!hash || !password)
        return MOAT_EINVAL;
    if (strnlen(hash, MOAT_PASSWORD_HASH_MAX) >= MOAT_PASSWORD_HASH_MAX)
        return MOAT_EINVAL;
    size_t n = strnlen(password, PASSWORD_MAX_LEN + 1);
    if (n > PASSWORD_MAX_LEN)
        return MOAT_EINVAL;
    return crypto_pwhash_str_verify(hash, password, n) == 0 ? MOAT_OK
                                                            : MOAT_EINVAL;
}

int moat_memeq(const void *a, const void *b, size_t len)
{
    ensure_sodium();
    return sodium_memcmp(a, b, len) == 0 ? MOAT_OK : MOAT_EINVAL;
}

void moat_free_secret(char *s)
{
    if (!s)
        return;
    /* The whole allocation: a plaintext may hold NUL bytes. */
    sodium_memzero(s, malloc_usable_size(s));
    free(s);
}

char *moat_random_token(size_t nbytes)
{
    ensure_sodium();
    if (nbytes > RANDOM_TOKEN_MAX)
        moat_die("moat_random_token: %zu bytes requested", nbytes);
    unsigned char *raw = moat_xmalloc(nbytes ? nbytes : 1);
    randombytes_buf(raw, nbytes);
    size_t size = sodium_base64_ENCODED_LEN(nbytes, B64URL);
    char *out = moat_xmalloc(size);
    sodium_bin2base64(out, size, raw, nbytes, B64URL);
    sodium_memzero(raw, nbytes);
    free(raw);
    return out;
}

void moat_sha256_hex(const void *data, size_t len, char out[65])
{
    static const unsigned char empty[1];
    unsigned char digest[crypto_hash_sha256_BYTES];

    ensure_sodium();
    crypto_hash_sha256(digest, data ? data : empty, data ? len : 0);
    sodium_bin2hex(out, 65, digest, sizeof(digest));
}
