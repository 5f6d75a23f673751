/*
 * audit.c - the hash-chained audit log (see moat/audit.h for the format,
 * the hash and the crash rules).
 *
 * The canonical serialiser is our own rather than jansson's
 * JSON_COMPACT | JSON_SORT_KEYS: the two agree on sorting and separators,
 * but jansson writes control characters as \u00XX (uppercase) and leaves
 * U+007F raw, where jq writes \u00xx and escapes U+007F. Matching jq byte
 * for byte is what lets anyone re-verify a log without our code.
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "moat/audit.h"
#include "moat/auth.h"
#include "moat/buf.h"
#include "moat/log.h"

#define HEAD_SEQ_DIGITS 20 /* UINT64_MAX has 20 decimal digits */
#define HEAD_LEN        (HEAD_SEQ_DIGITS + 1 + MOAT_AUDIT_HASH_HEX + 1)
/* I-JSON: integers every JSON reader (jq 1.6 included) reads exactly. */
#define INT_EXACT_MAX 9007199254740991LL /* 2^53 - 1 */
#define WHY_MAX       200

/* prev of record 1, and the hash of "no record" in the head. */
static const char genesis[MOAT_AUDIT_HASH_HEX + 1] =
    "0000000000000000000000000000000000000000000000000000000000000000";

struct moat_audit {
    char *path;   /* of audit.log, for messages; owned */
    int fd;       /* audit.log: O_APPEND, flock()ed exclusively */
    int head_fd;  /* audit.head (moat_audit_head_path) */
    uint64_t seq; /* seq of the last record; 0 for an empty log */
    char hash[MOAT_AUDIT_HASH_HEX + 1]; /* its hash; genesis when empty */
    bool failed; /* the files may no longer match seq/hash: append refuses */
};

/* The last record as audit.head records it. */
struct head {
    uint64_t seq; /* 0 for an empty head file */
    char hash[MOAT_AUDIT_HASH_HEX + 1];
};

/* What a verified record line says about the chain. */
struct rec {
    uint64_t seq;
    char prev[MOAT_AUDIT_HASH_HEX + 1];
    char hash[MOAT_AUDIT_HASH_HEX + 1];
};

static void sha256_hex(const void *data, size_t len,
                       char out[MOAT_AUDIT_HASH_HEX + 1])
{
    unsigned char md[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(md, data, len);
    moat_hex(out, md, sizeof(md));
}

static bool is_hash_hex(const char *s)
{
    size_t i = 0;
    for (; s[i]; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return i == MOAT_AUDIT_HASH_HEX;
}

/* ---- canonical form (the bytes that are hashed and written) ---- */

/*
 * Whether s is UTF-8 as RFC 3629 has it (no overlong forms, surrogates or
 * code points above U+10FFFF). jansson's checking constructors ensure it,
 * but a caller's json_string_nocheck() would not, and a line no JSON
 * parser accepts would stop the service at its next start.
 */
static bool utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned min, cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i - 1 < n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

static void canon_string(struct moat_buf *b, const char *s, size_t len)
{
    size_t run = 0; /* start of the bytes copied as they are */
    moat_buf_addch(b, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char u[8];
        const char *esc;
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\r':
            esc = "\\r";
            break;
        default:
            if (c >= 0x20 && c != 0x7f)
                continue;
            snprintf(u, sizeof(u), "\\u%04x", (unsigned)c);
            esc = u;
        }
        moat_buf_add(b, s + run, i - run);
        moat_buf_addstr(b, esc);
        run = i + 1;
    }
    moat_buf_add(b, s + run, len - run);
    moat_buf_addch(b, '"');
}

/* An object member. json_object_setn() lets a key hold a NUL byte, which
 * no jansson parser reads back: canon() refuses such keys. */
struct member {
    const char *key;
    size_t len;
    const json_t *value;
};

/* Bytewise, as jq sorts keys: UTF-8 byte order is code point order. */
static int member_cmp(const void *x, const void *y)
{
    const struct member *a = x, *b = y;
    int c = memcmp(a->key, b->key, a->len < b->len ? a->len : b->len);
    if (c)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/*
 * Append the canonical form of v to b. Returns NULL, or why v has none
 * (static text); b then holds a partial result.
 */
static const char *canon(struct moat_buf *b, const json_t *v, int depth)
{
    const char *bad = NULL;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (depth >= MOAT_AUDIT_DEPTH_MAX + 1)
            return "nested too deep";
        size_t n = json_object_size(v), i = 0;
        if (n == 0) {
            moat_buf_addstr(b, "{}");
            return NULL;
        }
        struct member *m = moat_xmalloc(n * sizeof(*m));
        for (void *it = json_object_iter((json_t *)v); it && i < n;
             it = json_object_iter_next((json_t *)v, it), i++) {
            m[i].key = json_object_iter_key(it);
            m[i].len = json_object_iter_key_len(it);
            m[i].value = json_object_iter_value(it);
        }
        qsort(m, i, sizeof(*m), member_cmp);
        moat_buf_addch(b, '{');
        for (size_t k = 0; k < i && !bad; k++) {
            if (k)
                moat_buf_addch(b, ',');
            if (memchr(m[k].key, '\0', m[k].len)) {
                bad = "NUL byte in a key";
                break;
            }
            if (!utf8_valid((const unsigned char *)m[k].key, m[k].len)) {
                bad = "invalid UTF-8";
                break;
            }
            canon_string(b, m[k].key, m[k].len);
            moat_buf_addch(b, ':');
            bad = canon(b, m[k].value, depth + 1);
        }
        moat_buf_addch(b, '}');
        free(m);
        return bad;
    }
    case JSON_ARRAY: {
        if (depth >= MOAT_AUDIT_DEPTH_MAX + 1)
            return "nested too deep";
        moat_buf_addch(b, '[');
        for (size_t k = 0; k < json_array_size(v) && !bad; k++) {
            if (k)
                moat_buf_addch(b, ',');
            bad = canon(b, json_array_get(v, k), depth + 1);
        }
        moat_buf_addch(b, ']');
        return bad;
    }
    case JSON_STRING:
        if (!utf8_valid((const unsigned char *)json_string_value(v),
                        json_string_length(v)))
            return "invalid UTF-8";
        canon_string(b, json_string_value(v), json_string_length(v));
        return NULL;
    case JSON_INTEGER: {
        json_int_t n = json_integer_value(v);
        if (n > INT_EXACT_MAX || n < -INT_EXACT_MAX)
            return "integer beyond +-(2^53 - 1)";
        moat_buf_printf(b, "%" JSON_INTEGER_FORMAT, n);
        return NULL;
    }
    case JSON_REAL:
        /* Reals print differently in every JSON library, so no
         * serialisation of them could be re-verified elsewhere. */
        return "real number";
    case JSON_TRUE:
        moat_buf_addstr(b, "true");
        return NULL;
    case JSON_FALSE:
        moat_buf_addstr(b, "false");
        return NULL;
    case JSON_NULL:
        moat_buf_addstr(b, "null");
        return NULL;
    }
    return "unknown JSON type";
}

/* ---- records and the head file ---- */

static const char *const record_fields[] = {
    "action", "actor", "detail",  "hash",     "outcome",
    "prev",   "seq",   "subject", "trace_id", "ts",
};
static const char *const string_fields[] = {
    "ts", "action", "actor", "subject", "outcome", "trace_id", "prev", "hash",
};

static bool known_field(const char *key)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(record_fields); i++) {
        if (strcmp(key, record_fields[i]) == 0)
            return true;
    }
    return false;
}

/*
 * Check one record line (without its '\n') on its own: JSON, fields, hash.
 * MOAT_OK and *out, or MOAT_ECONFLICT and why (no "record N: " prefix).
 */
static int check_line(const char *line, size_t len, struct rec *out, char *why,
                      size_t whylen)
{
    int ret = MOAT_ECONFLICT;
    struct moat_buf b = MOAT_BUF_INIT;
    json_error_t jerr;
    json_t *o = NULL;
    if (len == 0) {
        snprintf(why, whylen, "empty line");
        goto cleanup;
    }
    /* Duplicate keys would let a line say two things; our writer never
     * produces them. */
    o = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!o) {
        snprintf(why, whylen, "not valid JSON (%s at column %d)", jerr.text,
                 jerr.column);
        goto cleanup;
    }
    if (!json_is_object(o)) {
        snprintf(why, whylen, "not a JSON object");
        goto cleanup;
    }
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val)
    {
        if (!known_field(key)) {
            snprintf(why, whylen, "unexpected field \"%.40s\"", key);
            goto cleanup;
        }
    }
    json_t *seq = json_object_get(o, "seq");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1) {
        snprintf(why, whylen,
                 "field \"seq\" missing or not a positive "
                 "integer");
        goto cleanup;
    }
    for (size_t i = 0; i < MOAT_ARRAY_LEN(string_fields); i++) {
        if (!json_is_string(json_object_get(o, string_fields[i]))) {
            snprintf(why, whylen, "field \"%s\" missing or not a string",
                     string_fields[i]);
            goto cleanup;
        }
    }
    json_t *detail = json_object_get(o, "detail");
    if (detail && !json_is_object(detail)) {
        snprintf(why, whylen, "field \"detail\" is not an object");
        goto cleanup;
    }
    const char *prev = json_string_value(json_object_get(o, "prev"));
    const char *hash = json_string_value(json_object_get(o, "hash"));
    if (!is_hash_hex(prev) || !is_hash_hex(hash)) {
        snprintf(why, whylen, "field \"%s\" is not 64 lowercase hex digits",
                 is_hash_hex(prev) ? "hash" : "prev");
        goto cleanup;
    }
    /* Copy before the delete below frees the string. */
    memcpy(out->hash, hash, sizeof(out->hash));
    memcpy(out->prev, prev, sizeof(out->prev));
    out->seq = (uint64_t)json_integer_value(seq);
    json_object_del(o, "hash");
    const char *bad = canon(&b, o, 0);
    if (bad) {
        snprintf(why, whylen, "not in canonical form (%s)", bad);
        goto cleanup;
    }
    char want[MOAT_AUDIT_HASH_HEX + 1];
    sha256_hex(b.data, b.len, want);
    if (strcmp(want, out->hash) != 0) {
        snprintf(why, whylen, "hash mismatch (edited)");
        goto cleanup;
    }
    ret = MOAT_OK;

cleanup:
    json_decref(o);
    moat_buf_release(&b);
    return ret;
}

/*
 * Read audit.head. An empty file is the head of an empty log. MOAT_OK,
 * MOAT_EINVAL when malformed, MOAT_EIO.
 */
static int head_read(int fd, struct head *h)
{
    char buf[HEAD_LEN + 1]; /* one more, to notice a longer file */
    ssize_t n;
    do
        n = pread(fd, buf, sizeof(buf), 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return MOAT_EIO;
    h->seq = 0;
    memcpy(h->hash, genesis, sizeof(h->hash));
    if (n == 0)
        return MOAT_OK;
    if (n != HEAD_LEN || buf[HEAD_SEQ_DIGITS] != ' ' ||
        buf[HEAD_LEN - 1] != '\n')
        return MOAT_EINVAL;
    uint64_t seq = 0;
    for (int i = 0; i < HEAD_SEQ_DIGITS; i++) {
        unsigned d = (unsigned)(buf[i] - '0');
        if (d > 9 || seq > (UINT64_MAX - d) / 10)
            return MOAT_EINVAL;
        seq = seq * 10 + d;
    }
    memcpy(h->hash, buf + HEAD_SEQ_DIGITS + 1, MOAT_AUDIT_HASH_HEX);
    h->hash[MOAT_AUDIT_HASH_HEX] = '\0';
    if (!is_hash_hex(h->hash))
        return MOAT_EINVAL;
    h->seq = seq;
    return MOAT_OK;
}

/* One pwrite of a fixed-width record: it always overwrites the whole old
 * head, so no truncate or rename is needed. */
static int head_write(int fd, uint64_t seq, const char *hash)
{
    char buf[HEAD_LEN + 1];
    snprintf(buf, sizeof(buf), "%0*" PRIu64 " %s\n", HEAD_SEQ_DIGITS, seq,
             hash);
    ssize_t n;
    do
        n = pwrite(fd, buf, HEAD_LEN, 0);
    while (n < 0 && errno == EINTR);
    return n == HEAD_LEN ? MOAT_OK : MOAT_EIO;
}

/*
 * Whether the head agrees with a log whose last record is last_seq with
 * hash last_hash and prev last_prev (all genesis/0 for an empty log). A
 * head one record behind is the crash between the log write and the head
 * write, and agrees. Otherwise says why not; hname is the head file's
 * name for that.
 */
static bool head_agrees(const struct head *h, const char *hname,
                        uint64_t last_seq, const char *last_hash,
                        const char *last_prev, char *why, size_t whylen)
{
    if (h->seq == last_seq && strcmp(h->hash, last_hash) == 0)
        return true;
    if (last_seq > 0 && h->seq == last_seq - 1 &&
        strcmp(h->hash, last_prev) == 0)
        return true;
    if (h->seq == last_seq || (last_seq > 0 && h->seq == last_seq - 1))
        snprintf(why, whylen,
                 "%s does not match record %" PRIu64 " (log or head edited)",
                 hname, h->seq);
    else if (h->seq > last_seq && last_seq == 0)
        snprintf(why, whylen,
                 "log is empty but %s says %" PRIu64
                 " (records cut off the end)",
                 hname, h->seq);
    else if (h->seq > last_seq)
        snprintf(why, whylen,
                 "log ends at record %" PRIu64 " but %s says %" PRIu64
                 " (records cut off the end)",
                 last_seq, hname, h->seq);
    else
        snprintf(why, whylen,
                 "log ends at record %" PRIu64 " but %s says %" PRIu64
                 " (%s edited or rolled back)",
                 last_seq, hname, h->seq, hname);
    return false;
}

char *moat_audit_head_path(const char *path)
{
    size_t n = strlen(path);
    if (n > 4 && strcmp(path + n - 4, ".log") == 0)
        return moat_xasprintf("%.*s.head", (int)(n - 4), path);
    return moat_xasprintf("%s.head", path);
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* ---- opening and appending ---- */

/*
 * Read the last line of fd (size bytes, size > 0) into buf (at least
 * MOAT_AUDIT_LINE_MAX + 1 bytes: a longest line and the '\n' before it);
 * *len excludes the '\n'. MOAT_ECONFLICT with why when it is torn or too
 * long, MOAT_EIO.
 */
static int read_last_line(int fd, off_t size, char *buf, size_t *len, char *why,
                          size_t whylen)
{
    size_t want =
        size > MOAT_AUDIT_LINE_MAX + 1 ? MOAT_AUDIT_LINE_MAX + 1 : (size_t)size;
    off_t start = size - (off_t)want;
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, start + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return MOAT_EIO;
        got += (size_t)n;
    }
    if (buf[want - 1] != '\n') {
        snprintf(why, whylen,
                 "the last record is truncated (no newline at "
                 "the end of the file)");
        return MOAT_ECONFLICT;
    }
    const char *nl = want > 1 ? memrchr(buf, '\n', want - 1) : NULL;
    size_t from = nl ? (size_t)(nl - buf) + 1 : 0;
    if (!nl && start > 0) {
        snprintf(why, whylen, "the last line is longer than %d bytes",
                 MOAT_AUDIT_LINE_MAX);
        return MOAT_ECONFLICT;
    }
    *len = want - 1 - from;
    memmove(buf, buf + from, *len);
    return MOAT_OK;
}

void moat_audit_close(struct moat_audit *a)
{
    if (!a)
        return;
    if (a->fd >= 0)
        close(a->fd); /* also releases the flock */
    if (a->head_fd >= 0)
        close(a->head_fd);
    free(a->path);
    free(a);
}

int moat_audit_open(struct moat_audit **out, const char *path)
{
    int ret = MOAT_EIO;
    char why[WHY_MAX] = "";
    char *line = NULL;
    char *head_path = moat_audit_head_path(path);
    const char *hname = base_name(head_path);
    struct moat_audit *a = moat_xcalloc(1, sizeof(*a));
    a->path = moat_xstrdup(path);
    a->fd = a->head_fd = -1;
    *out = NULL;
    if (sodium_init() < 0)
        goto cleanup;

    /* O_NOFOLLOW: a symlink planted in the data dir must not redirect our
     * appends elsewhere. O_RDWR rather than O_WRONLY: the last line is
     * read back below. */
    a->fd =
        open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (a->fd < 0) {
        ret = errno == ELOOP ? MOAT_EINVAL : MOAT_EIO;
        snprintf(why, sizeof(why), "cannot open: %s", strerror(errno));
        goto cleanup;
    }
    struct stat st;
    if (fstat(a->fd, &st) < 0) {
        snprintf(why, sizeof(why), "cannot stat: %s", strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        ret = MOAT_EINVAL;
        snprintf(why, sizeof(why), "not a regular file");
        goto cleanup;
    }
    if (flock(a->fd, LOCK_EX | LOCK_NB) < 0) {
        ret = errno == EWOULDBLOCK ? MOAT_EBUSY : MOAT_EIO;
        snprintf(why, sizeof(why), "cannot lock: %s",
                 errno == EWOULDBLOCK ? "open elsewhere" : strerror(errno));
        goto cleanup;
    }

    /* A log with records always has a head file: both are created here,
     * before the first append. So a missing one was removed. */
    a->head_fd = open(head_path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (a->head_fd < 0 && errno == ENOENT && st.st_size > 0) {
        ret = MOAT_ECONFLICT;
        snprintf(why, sizeof(why), "%s is missing", hname);
        goto cleanup;
    }
    if (a->head_fd < 0 && errno == ENOENT)
        a->head_fd =
            open(head_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (a->head_fd < 0) {
        ret = errno == ELOOP ? MOAT_EINVAL : MOAT_EIO;
        snprintf(why, sizeof(why), "cannot open %s: %s", hname,
                 strerror(errno));
        goto cleanup;
    }
    struct stat hst;
    if (fstat(a->head_fd, &hst) < 0 || !S_ISREG(hst.st_mode)) {
        ret = MOAT_EINVAL;
        snprintf(why, sizeof(why), "%s is not a regular file", hname);
        goto cleanup;
    }
    struct head h;
    int rc = head_read(a->head_fd, &h);
    if (rc != MOAT_OK) {
        ret = rc == MOAT_EINVAL ? MOAT_ECONFLICT : MOAT_EIO;
        snprintf(why, sizeof(why), "%s is %s", hname,
                 rc == MOAT_EINVAL ? "malformed" : "unreadable");
        goto cleanup;
    }

    struct rec last = {.seq = 0};
    memcpy(last.hash, genesis, sizeof(last.hash));
    memcpy(last.prev, genesis, sizeof(last.prev));
    if (st.st_size > 0) {
        char lwhy[WHY_MAX - 20];
        size_t len = 0;
        line = moat_xmalloc(MOAT_AUDIT_LINE_MAX + 1);
        rc = read_last_line(a->fd, st.st_size, line, &len, lwhy, sizeof(lwhy));
        if (rc == MOAT_OK)
            rc = check_line(line, len, &last, lwhy, sizeof(lwhy));
        if (rc != MOAT_OK) {
            ret = rc;
            snprintf(why, sizeof(why), "last record: %s",
                     rc == MOAT_EIO ? strerror(errno) : lwhy);
            goto cleanup;
        }
    }
    if (!head_agrees(&h, hname, last.seq, last.hash, last.prev, why,
                     sizeof(why))) {
        ret = MOAT_ECONFLICT;
        goto cleanup;
    }
    if (h.seq != last.seq &&
        head_write(a->head_fd, last.seq, last.hash) != MOAT_OK) {
        snprintf(why, sizeof(why), "cannot update %s: %s", hname,
                 strerror(errno));
        goto cleanup;
    }
    a->seq = last.seq;
    memcpy(a->hash, last.hash, sizeof(a->hash));
    *out = a;
    a = NULL;
    ret = MOAT_OK;

cleanup:
    if (ret != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "audit log refused", "{s:s, s:s, s:s}", "path",
                 path, "problem", why, "error", moat_strerror(ret));
    moat_audit_close(a);
    free(line);
    free(head_path);
    return ret;
}

/* json_string() refuses invalid UTF-8; so do we. */
static bool set_string(json_t *o, const char *key, const char *s)
{
    json_t *v = json_string(s ? s : "");
    return v && json_object_set_new(o, key, v) == 0;
}

/*
 * Append line to the log in one write(2). On failure nothing of it stays
 * in the file: a partial line would make every later record unreadable.
 */
static int write_line(struct moat_audit *a, const char *line, size_t len)
{
    struct stat st;
    if (fstat(a->fd, &st) < 0)
        return MOAT_EIO;
    ssize_t n;
    do
        n = write(a->fd, line, len);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)len)
        return MOAT_OK;
    int err = n < 0 ? errno : ENOSPC; /* a short write: the disk filled */
    bool cut = n <= 0 || ftruncate(a->fd, st.st_size) == 0;
    if (!cut)
        a->failed = true;
    moat_log(MOAT_LOG_ERROR, "audit log write failed", "{s:s, s:s, s:b}",
             "path", a->path, "error", strerror(err), "partial_line_left",
             !cut);
    return MOAT_EIO;
}

int moat_audit_append(struct moat_audit *a, const char *action,
                      const char *actor, const char *subject,
                      const char *outcome, json_t *detail)
{
    if (!a || !action || !*action || !outcome || !*outcome ||
        (detail && !json_is_object(detail)))
        return MOAT_EINVAL;
    if (a->failed)
        return MOAT_EIO;
    int ret = MOAT_EINVAL;
    struct moat_buf b = MOAT_BUF_INIT;
    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    const struct moat_trace *t = moat_log_trace();
    json_t *rec = json_object();
    json_object_set_new(rec, "seq", json_integer((json_int_t)(a->seq + 1)));
    if (!set_string(rec, "ts", ts) || !set_string(rec, "action", action) ||
        !set_string(rec, "actor", actor) ||
        !set_string(rec, "subject", subject) ||
        !set_string(rec, "outcome", outcome) ||
        !set_string(rec, "trace_id", t ? t->trace_id : "") ||
        !set_string(rec, "prev", a->hash))
        goto cleanup;
    if (detail)
        json_object_set(rec, "detail", detail);

    if (canon(&b, rec, 0))
        goto cleanup;
    char hash[MOAT_AUDIT_HASH_HEX + 1];
    sha256_hex(b.data, b.len, hash);
    json_object_set_new(rec, "hash", json_string(hash));
    moat_buf_reset(&b);
    canon(&b, rec, 0);
    moat_buf_addch(&b, '\n');
    if (b.len > MOAT_AUDIT_LINE_MAX) {
        ret = MOAT_ETOOBIG;
        goto cleanup;
    }
    ret = write_line(a, b.data, b.len);
    if (ret != MOAT_OK)
        goto cleanup;
    a->seq++;
    memcpy(a->hash, hash, sizeof(a->hash));
    /* The record is in; a head left one behind is a state open and verify
     * accept, but a second append would leave it two behind. */
    if (head_write(a->head_fd, a->seq, a->hash) != MOAT_OK) {
        a->failed = true;
        moat_log(MOAT_LOG_ERROR, "audit head write failed", "{s:s, s:s}",
                 "path", a->path, "error", strerror(errno));
        ret = MOAT_EIO;
    }

cleanup:
    json_decref(rec);
    moat_buf_release(&b);
    return ret;
}

/* ---- verifying ---- */

static int report_bad(struct moat_audit_report *r, uint64_t line,
                      const char *fmt, ...) MOAT_PRINTF(3, 4);
static int report_bad(struct moat_audit_report *r, uint64_t line,
                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->problem, sizeof(r->problem), fmt, ap);
    va_end(ap);
    r->bad_line = line;
    return MOAT_ECONFLICT;
}

int moat_audit_verify(const char *path, struct moat_audit_report *r)
{
    int ret = MOAT_EIO;
    int fd = -1, hfd = -1;
    char *head_path = moat_audit_head_path(path);
    const char *hname = base_name(head_path);
    char *buf = NULL;
    char why[WHY_MAX];
    memset(r, 0, sizeof(*r));
    if (sodium_init() < 0)
        goto cleanup;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ret = errno == ENOENT ? MOAT_ENOTFOUND : MOAT_EIO;
        snprintf(r->problem, sizeof(r->problem), "cannot open %s: %s", path,
                 strerror(errno));
        /* The head is written only after a record: a non-empty head
         * without its log means the log was removed, records and all. */
        struct stat hst;
        if (ret == MOAT_ENOTFOUND && stat(head_path, &hst) == 0 &&
            hst.st_size > 0)
            ret = report_bad(r, 1, "%s is missing but %s exists (log deleted)",
                             base_name(path), hname);
        goto cleanup;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(r->problem, sizeof(r->problem), "%s is not a regular file",
                 path);
        goto cleanup;
    }

    /* Stream: buf[start, have) holds what is read but not yet checked. */
    buf = moat_xmalloc(MOAT_AUDIT_LINE_MAX);
    size_t start = 0, have = 0;
    bool eof = false;
    uint64_t line_no = 0, last_seq = 0;
    char last_hash[MOAT_AUDIT_HASH_HEX + 1], last_prev[MOAT_AUDIT_HASH_HEX + 1];
    memcpy(last_hash, genesis, sizeof(last_hash));
    memcpy(last_prev, genesis, sizeof(last_prev));
    for (;;) {
        char *nl = memchr(buf + start, '\n', have - start);
        if (!nl) {
            if (eof && have == start)
                break;
            if (eof) {
                ret = report_bad(r, line_no + 1,
                                 "record %" PRIu64 ": truncated record (no "
                                 "newline at the end of the file)",
                                 line_no + 1);
                goto cleanup;
            }
            if (have - start == MOAT_AUDIT_LINE_MAX) {
                ret = report_bad(r, line_no + 1,
                                 "record %" PRIu64 ": line longer than %d "
                                 "bytes",
                                 line_no + 1, MOAT_AUDIT_LINE_MAX);
                goto cleanup;
            }
            memmove(buf, buf + start, have - start);
            have -= start;
            start = 0;
            ssize_t n = read(fd, buf + have, MOAT_AUDIT_LINE_MAX - have);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                snprintf(r->problem, sizeof(r->problem), "cannot read %s: %s",
                         path, strerror(errno));
                goto cleanup;
            }
            eof = n == 0;
            have += (size_t)n;
            continue;
        }
        size_t len = (size_t)(nl - (buf + start));
        struct rec rec;
        line_no++;
        if (check_line(buf + start, len, &rec, why, sizeof(why)) != MOAT_OK) {
            ret =
                report_bad(r, line_no, "record %" PRIu64 ": %s", line_no, why);
            goto cleanup;
        }
        if (rec.seq != last_seq + 1) {
            if (line_no == 1)
                ret = report_bad(r, line_no,
                                 "record 1: seq %" PRIu64 ", expected 1 "
                                 "(deleted or reordered)",
                                 rec.seq);
            else
                ret = report_bad(r, line_no,
                                 "record %" PRIu64 ": seq %" PRIu64
                                 " after %" PRIu64 " (deleted or reordered)",
                                 line_no, rec.seq, last_seq);
            goto cleanup;
        }
        if (strcmp(rec.prev, last_hash) != 0) {
            if (line_no == 1)
                ret = report_bad(r, line_no,
                                 "record 1: prev is not 64 zeros (deleted "
                                 "or reordered)");
            else
                ret = report_bad(r, line_no,
                                 "record %" PRIu64 ": prev does not match "
                                 "record %" PRIu64 " (deleted or reordered)",
                                 line_no, last_seq);
            goto cleanup;
        }
        last_seq = rec.seq;
        memcpy(last_prev, last_hash, sizeof(last_prev));
        memcpy(last_hash, rec.hash, sizeof(last_hash));
        r->records++;
        start += len + 1;
    }

    /* Only the head tells whether records were cut off the end. */
    hfd = open(head_path, O_RDONLY | O_CLOEXEC);
    if (hfd < 0 && errno == ENOENT) {
        if (last_seq == 0)
            ret = MOAT_OK;
        else
            ret = report_bad(r, line_no + 1,
                             "%s is missing (records may have been cut off "
                             "the end)",
                             hname);
        goto cleanup;
    }
    if (hfd < 0) {
        snprintf(r->problem, sizeof(r->problem), "cannot open %s: %s",
                 head_path, strerror(errno));
        goto cleanup;
    }
    struct head h;
    int rc = head_read(hfd, &h);
    if (rc == MOAT_EIO) {
        snprintf(r->problem, sizeof(r->problem), "cannot read %s: %s",
                 head_path, strerror(errno));
        goto cleanup;
    }
    if (rc != MOAT_OK) {
        ret = report_bad(r, line_no + 1, "%s is malformed", hname);
        goto cleanup;
    }
    if (!head_agrees(&h, hname, last_seq, last_hash, last_prev, why,
                     sizeof(why))) {
        ret = report_bad(r, line_no + 1, "%s", why);
        goto cleanup;
    }
    ret = MOAT_OK;

cleanup:
    if (fd >= 0)
        close(fd);
    if (hfd >= 0)
        close(hfd);
    free(buf);
    free(head_path);
    return ret;
}

void moat_audit_req(struct moat_audit *a, struct moat_req *r,
                    const char *action, const char *subject,
                    const char *outcome, json_t *detail)
{
    if (!a)
        return;
    const struct moat_principal *p = r ? moat_req_principal(r) : NULL;
    const char *actor = !p              ? "system"
                        : p->user_id[0] ? p->user_id
                        : p->service[0] ? p->service
                                        : "anonymous";
    int rc = moat_audit_append(a, action, actor, subject ? subject : "",
                               outcome, detail);
    if (rc != MOAT_OK)
        moat_log(MOAT_LOG_ERROR, "cannot append to the audit log",
                 "{s:s, s:s, s:s}", "action", action, "outcome", outcome,
                 "error", moat_strerror(rc));
}
