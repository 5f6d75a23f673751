/*
 * Unit tests for lib/audit.c: the chain across reopens, and every kind of
 * tampering the format promises to detect, each on its own copy of a good
 * log: an edited byte, a deleted, swapped or forged record, records cut off
 * the end, an edited head, garbage appended.
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "moat/audit.h"
#include "moat/log.h"
#include "moat/trace.h"

#define MAX_LINES 64

static char g_dir[PATH_MAX];

/* dir/name; caller frees. */
static char *tmp_path(const char *name)
{
    return moat_xasprintf("%s/%s", g_dir, name);
}

/* A fresh directory dir/name and the path of audit.log in it: the log
 * and its head get their real names, as problem texts show them. */
static char *log_in(const char *name)
{
    char *dir = tmp_path(name);
    assert_int_equal(mkdir(dir, 0700), 0);
    char *path = moat_xasprintf("%s/" MOAT_AUDIT_FILE, dir);
    free(dir);
    return path;
}

static char *head_of(const char *log)
{
    return moat_audit_head_path(log);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *data = NULL;
    size_t cap = 0, n = 0, got;
    do {
        cap += 4096;
        data = moat_xrealloc(data, cap + 1);
        got = fread(data + n, 1, cap - n, f);
        n += got;
    } while (n == cap);
    fclose(f);
    data[n] = '\0';
    if (len)
        *len = n;
    return data;
}

static void write_all(const char *path, const char *data, size_t len,
                      const char *mode)
{
    FILE *f = fopen(path, mode);
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void append_str(const char *path, const char *s)
{
    write_all(path, s, strlen(s), "ab");
}

/* Lines of a file without their '\n'; caller frees with free_lines. */
static size_t load_lines(const char *path, char **lines)
{
    char *data = read_all(path, NULL);
    size_t n = 0;
    char *save = NULL;
    for (char *l = strtok_r(data, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        assert_true(n < MAX_LINES);
        lines[n++] = moat_xstrdup(l);
    }
    free(data);
    return n;
}

static void save_lines(const char *path, char **lines, size_t n)
{
    write_all(path, "", 0, "wb");
    for (size_t i = 0; i < n; i++) {
        append_str(path, lines[i]);
        append_str(path, "\n");
    }
}

static void free_lines(char **lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
}

/* A good log of n records at dir/name, written by two handles in turn so
 * that every test also covers resuming the chain. */
static char *make_log(const char *name, int n)
{
    char *path = log_in(name);
    struct moat_audit *a = NULL;
    for (int i = 1; i <= n; i++) {
        if (!a)
            assert_int_equal(moat_audit_open(&a, path), MOAT_OK);
        json_t *detail = i % 3 == 0
                             ? NULL
                             : json_pack("{s:s, s:i}", "note", "hello", "n", i);
        assert_int_equal(moat_audit_append(a, "product.update", "usr_1",
                                           "prd_2", "ok", detail),
                         MOAT_OK);
        json_decref(detail);
        if (i == n / 2) {
            moat_audit_close(a);
            a = NULL;
        }
    }
    moat_audit_close(a);
    return path;
}

static void assert_intact(const char *path, uint64_t records)
{
    struct moat_audit_report r;
    assert_int_equal(moat_audit_verify(path, &r), MOAT_OK);
    assert_int_equal(r.records, records);
    assert_int_equal(r.bad_line, 0);
    assert_string_equal(r.problem, "");
}

static void assert_tampered(const char *path, uint64_t line,
                            const char *problem)
{
    struct moat_audit_report r;
    assert_int_equal(moat_audit_verify(path, &r), MOAT_ECONFLICT);
    if (strncmp(r.problem, problem, strlen(problem)) != 0)
        fail_msg("problem \"%s\", expected \"%s...\"", r.problem, problem);
    assert_int_equal(r.bad_line, line);
    /* Everything before the bad line verified. */
    assert_true(r.records < line);
}

static json_t *parse_line(const char *line)
{
    json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(o);
    return o;
}

/* Re-hash a record after a forger's edit, with jansson's own canonical
 * form (equal to ours for ASCII content without control characters). */
static char *forge(json_t *rec)
{
    json_object_del(rec, "hash");
    char *body = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS);
    unsigned char md[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(md, (const unsigned char *)body, strlen(body));
    char hex[65];
    moat_hex(hex, md, sizeof(md));
    free(body);
    json_object_set_new(rec, "hash", json_string(hex));
    return json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS);
}

static void test_chain(void **state)
{
    char *path = make_log("chain", 8);
    assert_intact(path, 8);

    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    assert_int_equal(n, 8);
    char prev[65] = "0000000000000000000000000000000000000000000000000000000000"
                    "000000";
    for (size_t i = 0; i < n; i++) {
        json_t *o = parse_line(lines[i]);
        assert_int_equal(json_integer_value(json_object_get(o, "seq")), i + 1);
        assert_string_equal(json_string_value(json_object_get(o, "prev")),
                            prev);
        assert_string_equal(json_string_value(json_object_get(o, "action")),
                            "product.update");
        assert_string_equal(json_string_value(json_object_get(o, "trace_id")),
                            "");
        assert_int_equal(strlen(json_string_value(json_object_get(o, "ts"))),
                         24);
        /* Records 3 and 6 were appended without detail. */
        assert_true((json_object_get(o, "detail") == NULL) ==
                    ((i + 1) % 3 == 0));
        /* The line is the canonical form: sorted keys, no spaces. */
        char *canon = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        assert_string_equal(canon, lines[i]);
        free(canon);
        snprintf(prev, sizeof(prev), "%s",
                 json_string_value(json_object_get(o, "hash")));
        json_decref(o);
    }

    char *head = head_of(path);
    char *hd = read_all(head, NULL);
    char want[128];
    snprintf(want, sizeof(want), "%020d %s\n", 8, prev);
    assert_string_equal(hd, want);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(head, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    free(hd);
    free(head);
    free_lines(lines, n);
    free(path);
}

static void test_trace_and_detail(void **state)
{
    char *path = log_in("trace");
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_OK);
    struct moat_trace t;
    moat_trace_start(&t, NULL, NULL);
    moat_log_set_trace(&t);
    assert_int_equal(
        moat_audit_append(a, "user.login", NULL, "usr_9", "denied", NULL),
        MOAT_OK);
    moat_log_set_trace(NULL);
    /* Strings that need every kind of escape, NUL included. */
    static const char tricky[] = "a\"\\/\x01\x1f\x7f\n\xc3\xa9\0z";
    json_t *d =
        json_pack("{s:s%, s:[b,n,I], s:{}}", "s", tricky, sizeof(tricky) - 1,
                  "list", 1, (json_int_t)-9007199254740991LL, "empty");
    assert_non_null(d);
    json_object_setn_new(d, "k", 1, json_false());
    assert_int_equal(moat_audit_append(a, "x", "usr_1", NULL, "ok", d),
                     MOAT_OK);
    json_decref(d);
    moat_audit_close(a);
    assert_intact(path, 2);

    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    assert_int_equal(n, 2);
    json_t *o = parse_line(lines[0]);
    assert_string_equal(json_string_value(json_object_get(o, "trace_id")),
                        t.trace_id);
    assert_string_equal(json_string_value(json_object_get(o, "actor")), "");
    assert_null(json_object_get(o, "detail"));
    json_decref(o);
    assert_non_null(strstr(lines[1], "\"a\\\"\\\\/\\u0001\\u001f\\u007f\\n"
                                     "\xc3\xa9\\u0000z\""));
    assert_non_null(strstr(lines[1], "\"k\":false,\"list\":"));
    free_lines(lines, n);
    free(path);
}

static void test_append_refuses(void **state)
{
    char *path = log_in("refuse");
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_OK);
    json_t *arr = json_array();
    json_t *real = json_pack("{s:f}", "x", 1.5);
    json_t *big = json_pack("{s:I}", "x", (json_int_t)9007199254740992LL);
    json_t *deep = json_object();
    for (int i = 0; i < MOAT_AUDIT_DEPTH_MAX; i++)
        deep = json_pack("{s:o}", "d", deep);
    char *huge_s = moat_xmalloc(MOAT_AUDIT_LINE_MAX);
    memset(huge_s, 'x', MOAT_AUDIT_LINE_MAX - 1);
    huge_s[MOAT_AUDIT_LINE_MAX - 1] = '\0';
    json_t *huge = json_pack("{s:s}", "x", huge_s);

    assert_int_equal(moat_audit_append(a, NULL, "u", "s", "ok", NULL),
                     MOAT_EINVAL);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "", NULL),
                     MOAT_EINVAL);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", arr),
                     MOAT_EINVAL);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", real),
                     MOAT_EINVAL);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", big),
                     MOAT_EINVAL);
    assert_int_equal(moat_audit_append(a, "a", "\xff", "s", "ok", NULL),
                     MOAT_EINVAL);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", deep),
                     MOAT_EINVAL);
    /* Invalid UTF-8 that jansson's _nocheck constructors let through:
     * a truncated sequence, an overlong '/', a surrogate. */
    static const char *const bad_utf8[] = {"\xc3(", "\xc0\xaf", "\xed\xa0\x80"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad_utf8); i++) {
        json_t *d = json_object();
        json_object_set_new(d, "x", json_string_nocheck(bad_utf8[i]));
        assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", d),
                         MOAT_EINVAL);
        json_decref(d);
        d = json_object();
        json_object_set_new_nocheck(d, bad_utf8[i], json_true());
        assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", d),
                         MOAT_EINVAL);
        json_decref(d);
    }
    json_t *nul_key = json_object();
    json_object_setn_new(nul_key, "k\0a", 3, json_true());
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", nul_key),
                     MOAT_EINVAL);
    json_decref(nul_key);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", huge),
                     MOAT_ETOOBIG);
    /* One level less is fine, and the chain goes on as if nothing was
     * tried. */
    json_t *inner = json_object_get(deep, "d");
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", inner), MOAT_OK);
    moat_audit_close(a);
    assert_intact(path, 1);

    json_decref(arr);
    json_decref(real);
    json_decref(big);
    json_decref(deep);
    json_decref(huge);
    free(huge_s);
    free(path);
}

static void test_edit_detail(void **state)
{
    char *path = make_log("edit", 8);
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    char *h = strstr(lines[3], "hello");
    assert_non_null(h);
    h[0] = 'j'; /* one byte, still valid JSON */
    save_lines(path, lines, n);
    assert_tampered(path, 4, "record 4: hash mismatch (edited)");
    free_lines(lines, n);
    free(path);
}

static void test_delete_middle(void **state)
{
    char *path = make_log("delete", 8);
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    free(lines[2]);
    memmove(lines + 2, lines + 3, (n - 3) * sizeof(*lines));
    save_lines(path, lines, --n);
    assert_tampered(path, 3, "record 3: seq 4 after 2 (deleted or reordered)");
    free_lines(lines, n);
    free(path);
}

static void test_delete_first(void **state)
{
    char *path = make_log("first", 8);
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    save_lines(path, lines + 1, n - 1);
    assert_tampered(path, 1,
                    "record 1: seq 2, expected 1 (deleted or reordered)");
    free_lines(lines, n);
    free(path);
}

static void test_swap(void **state)
{
    char *path = make_log("swap", 8);
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    char *tmp = lines[4];
    lines[4] = lines[5];
    lines[5] = tmp;
    save_lines(path, lines, n);
    assert_tampered(path, 5, "record 5: seq 6 after 4 (deleted or reordered)");
    free_lines(lines, n);
    free(path);
}

/* A forger who re-hashes the record he edits still breaks the link to it. */
static void test_forged_record(void **state)
{
    char *path = make_log("forge", 8);
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);

    /* Edit record 4 and re-hash it: record 5's prev no longer matches. */
    json_t *o = parse_line(lines[3]);
    json_object_set_new(o, "outcome", json_string("denied"));
    free(lines[3]);
    lines[3] = forge(o);
    json_decref(o);
    save_lines(path, lines, n);
    assert_tampered(path, 5,
                    "record 5: prev does not match record 4 (deleted or "
                    "reordered)");

    /* Delete record 4 and renumber record 5 as 4: its prev is record 4's
     * hash, not record 3's. */
    free_lines(lines, n);
    free(path);
    path = make_log("forge2", 8);
    n = load_lines(path, lines);
    o = parse_line(lines[4]);
    json_object_set_new(o, "seq", json_integer(4));
    free(lines[4]);
    lines[4] = forge(o);
    json_decref(o);
    free(lines[3]);
    memmove(lines + 3, lines + 4, (n - 4) * sizeof(*lines));
    save_lines(path, lines, --n);
    assert_tampered(path, 4,
                    "record 4: prev does not match record 3 (deleted or "
                    "reordered)");
    free_lines(lines, n);
    free(path);
}

static void test_cut_off_end(void **state)
{
    char *path = make_log("cut", 8);
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    save_lines(path, lines, n - 1);
    assert_tampered(path, 8,
                    "log ends at record 7 but audit.head says 8 (records cut "
                    "off the end)");
    save_lines(path, lines, 0);
    assert_tampered(path, 1,
                    "log is empty but audit.head says 8 (records cut off the "
                    "end)");
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_ECONFLICT);
    assert_null(a);
    free_lines(lines, n);
    free(path);
}

/* Write a head naming record seq of the log at path. */
static void set_head(const char *path, size_t seq)
{
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    assert_true(seq >= 1 && seq <= n);
    json_t *o = parse_line(lines[seq - 1]);
    char buf[128];
    int len = snprintf(buf, sizeof(buf), "%020zu %s\n", seq,
                       json_string_value(json_object_get(o, "hash")));
    char *head = head_of(path);
    write_all(head, buf, (size_t)len, "wb");
    free(head);
    json_decref(o);
    free_lines(lines, n);
}

static void test_head_edits(void **state)
{
    char *path = make_log("head", 8);
    char *head = head_of(path);
    char *orig = read_all(head, NULL);

    char *hd = moat_xstrdup(orig);
    hd[30] = hd[30] == 'a' ? 'b' : 'a';
    write_all(head, hd, strlen(hd), "wb");
    assert_tampered(path, 9,
                    "audit.head does not match record 8 (log or head edited)");

    set_head(path, 6);
    assert_tampered(path, 9,
                    "log ends at record 8 but audit.head says 6 (audit.head "
                    "edited or rolled back)");

    memcpy(hd, orig, strlen(orig));
    hd[19] = '9';
    write_all(head, hd, strlen(hd), "wb");
    assert_tampered(path, 9,
                    "log ends at record 8 but audit.head says 9 (records cut "
                    "off the end)");

    write_all(head, "garbage\n", 8, "wb");
    assert_tampered(path, 9, "audit.head is malformed");
    write_all(head, orig, strlen(orig) - 1, "wb"); /* no newline */
    assert_tampered(path, 9, "audit.head is malformed");

    assert_int_equal(unlink(head), 0);
    assert_tampered(path, 9, "audit.head is missing");
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_ECONFLICT);
    assert_int_equal(access(head, F_OK), -1); /* not recreated */

    free(hd);
    free(orig);
    free(head);
    free(path);
}

/* Killed between the log write and the head write: the head is one record
 * behind. Verify accepts it; open repairs the head and goes on. */
static void test_crash_between_writes(void **state)
{
    char *path = make_log("crash", 8);
    char *head = head_of(path);
    char *orig = read_all(head, NULL);
    set_head(path, 7);
    assert_intact(path, 8);

    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_OK);
    char *hd = read_all(head, NULL);
    assert_string_equal(hd, orig);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", NULL), MOAT_OK);
    moat_audit_close(a);
    assert_intact(path, 9);

    /* The same for a log of one record and an empty head. */
    char *one = make_log("crash1", 1);
    char *one_head = head_of(one);
    write_all(one_head, "", 0, "wb");
    assert_intact(one, 1);
    assert_int_equal(moat_audit_open(&a, one), MOAT_OK);
    moat_audit_close(a);
    free(hd);
    hd = read_all(one_head, NULL);
    assert_int_equal(strlen(hd), 86);

    free(hd);
    free(one_head);
    free(one);
    free(orig);
    free(head);
    free(path);
}

static void test_garbage(void **state)
{
    static const struct {
        const char *tail;
        const char *problem;
    } cases[] = {
        {"garbage\n", "record 9: not valid JSON ("},
        {"{\"seq\":9}\n", "record 9: field \"ts\" missing or not a string"},
        {"[]\n", "record 9: not a JSON object"},
        {"\n", "record 9: empty line"},
        {"{\"seq\":9,", "record 9: truncated record (no newline at the end"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        char name[32];
        snprintf(name, sizeof(name), "garbage%zu", i);
        char *path = make_log(name, 8);
        append_str(path, cases[i].tail);
        assert_tampered(path, 9, cases[i].problem);
        free(path);
    }

    char *path = make_log("long", 8);
    char *junk = moat_xmalloc(MOAT_AUDIT_LINE_MAX + 10);
    memset(junk, 'x', MOAT_AUDIT_LINE_MAX + 9);
    junk[MOAT_AUDIT_LINE_MAX + 9] = '\0';
    append_str(path, junk);
    assert_tampered(path, 9, "record 9: line longer than 65536 bytes");
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_ECONFLICT);
    free(junk);
    free(path);
}

static void test_open_refuses_tampered(void **state)
{
    struct moat_audit *a = NULL;

    /* The last record edited. */
    char *path = make_log("open1", 5);
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    char *p = strstr(lines[4], "prd_2");
    assert_non_null(p);
    p[4] = '3';
    save_lines(path, lines, n);
    assert_int_equal(moat_audit_open(&a, path), MOAT_ECONFLICT);
    assert_null(a);
    free_lines(lines, n);
    free(path);

    /* A torn last line, as a crash in mid-write would leave. */
    path = make_log("open2", 5);
    append_str(path, "{\"action\":\"x\"");
    assert_int_equal(moat_audit_open(&a, path), MOAT_ECONFLICT);
    free(path);

    /* The last record deleted: the head is ahead. */
    path = make_log("open3", 5);
    n = load_lines(path, lines);
    save_lines(path, lines, n - 1);
    assert_int_equal(moat_audit_open(&a, path), MOAT_ECONFLICT);
    free_lines(lines, n);
    free(path);
}

/* A write cut short (here by RLIMIT_FSIZE, as a full disk would) leaves
 * no partial line behind, and the chain goes on once there is room. */
static void test_short_write(void **state)
{
    char *path = make_log("short", 3);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_OK);

    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)st.st_size + 10;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = moat_audit_append(a, "a", "u", "s", "ok", NULL);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(rc, MOAT_EIO);

    struct stat after;
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(after.st_size, st.st_size);
    assert_intact(path, 3);
    assert_int_equal(moat_audit_append(a, "a", "u", "s", "ok", NULL), MOAT_OK);
    moat_audit_close(a);
    assert_intact(path, 4);
    free(path);
}

static void test_busy_and_symlink(void **state)
{
    char *path = log_in("busy");
    struct moat_audit *a = NULL, *b = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_OK);
    assert_int_equal(moat_audit_open(&b, path), MOAT_EBUSY);
    assert_null(b);
    moat_audit_close(a);
    assert_int_equal(moat_audit_open(&b, path), MOAT_OK);
    moat_audit_close(b);

    char *link = log_in("link");
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(moat_audit_open(&a, link), MOAT_EINVAL);
    assert_null(a);
    free(link);
    free(path);
}

static void test_verify_missing_and_empty(void **state)
{
    struct moat_audit_report r;
    char *path = log_in("nothing");
    assert_int_equal(moat_audit_verify(path, &r), MOAT_ENOTFOUND);
    assert_non_null(strstr(r.problem, "No such file"));

    write_all(path, "", 0, "wb"); /* no head either: a fresh, empty log */
    assert_intact(path, 0);
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_OK);
    moat_audit_close(a);
    assert_intact(path, 0);
    free(path);

    /* A head with records in it but no log: the log was deleted. */
    path = make_log("gone", 3);
    assert_int_equal(unlink(path), 0);
    assert_tampered(path, 1,
                    "audit.log is missing but audit.head exists (log "
                    "deleted)");
    free(path);
}

/* The header promises that jq and sha256sum re-verify a log. Run its
 * commands, on a log with every kind of escape, when jq is installed. */
static void test_jq_reverifies(void **state)
{
    if (system("command -v jq >/dev/null 2>&1 && "
               "command -v bash >/dev/null 2>&1") != 0)
        skip();
    char *path = log_in("jq");
    struct moat_audit *a = NULL;
    assert_int_equal(moat_audit_open(&a, path), MOAT_OK);
    for (int i = 0; i < 4; i++) {
        static const char tricky[] =
            "a\"\\/\x01\x1f\x7f\t\xc3\xa9\xe2\x80\xa8\0z";
        json_t *d = json_pack(
            "{s:s%, s:I, s:{s:[i,b,n]}}", "s", tricky, sizeof(tricky) - 1,
            "big", (json_int_t)9007199254740991LL, "z\xc3\xa9", "a", i, 0);
        assert_int_equal(moat_audit_append(a, "x.y", "usr_1", "sub", "ok", d),
                         MOAT_OK);
        json_decref(d);
    }
    moat_audit_close(a);

    char *script = tmp_path("reverify.sh");
    static const char body[] =
        "set -e\n"
        "cd \"$(dirname \"$1\")\"\n"
        "log=$(basename \"$1\")\n"
        "jq -cS 'del(.hash)' $log | while IFS= read -r r; do\n"
        "    printf '%s' \"$r\" | sha256sum | cut -c1-64; done |\n"
        "    diff - <(jq -r .hash $log)\n"
        "out=$(jq -rs '. as $r | range(length) | select($r[.].seq != . + 1 "
        "or\n"
        "    $r[.].prev != (if . == 0 then \"0\" * 64 else $r[. - 1].hash "
        "end)) |\n"
        "    \"record \\(. + 1): bad seq or prev\"' $log)\n"
        "test -z \"$out\"\n"
        "diff <(jq -rs 'last | \"\\(.seq) \\(.hash)\"' $log) \\\n"
        "     <(awk '{ print $1 + 0, $2 }' ${log%.log}.head)\n";
    write_all(script, body, sizeof(body) - 1, "wb");
    char *cmd = moat_xasprintf("bash %s %s >/dev/null 2>&1", script, path);
    assert_int_equal(system(cmd), 0);

    /* And the same commands notice an edit. */
    char *lines[MAX_LINES];
    size_t n = load_lines(path, lines);
    char *p = strstr(lines[1], "usr_1");
    p[4] = '2';
    save_lines(path, lines, n);
    assert_int_not_equal(system(cmd), 0);

    free_lines(lines, n);
    free(cmd);
    free(script);
    free(path);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    snprintf(g_dir, sizeof(g_dir), "%s/moat-audit-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir))
        return -1;
    /* Refusals are logged; keep the test output to what fails. */
    moat_log_init("test_audit", (enum moat_log_level)(MOAT_LOG_ERROR + 1));
    return 0;
}

static int teardown(void **state)
{
    return nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_trace_and_detail),
        cmocka_unit_test(test_append_refuses),
        cmocka_unit_test(test_edit_detail),
        cmocka_unit_test(test_delete_middle),
        cmocka_unit_test(test_delete_first),
        cmocka_unit_test(test_swap),
        cmocka_unit_test(test_forged_record),
        cmocka_unit_test(test_cut_off_end),
        cmocka_unit_test(test_head_edits),
        cmocka_unit_test(test_crash_between_writes),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_open_refuses_tampered),
        cmocka_unit_test(test_short_write),
        cmocka_unit_test(test_busy_and_symlink),
        cmocka_unit_test(test_verify_missing_and_empty),
        cmocka_unit_test(test_jq_reverifies),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
