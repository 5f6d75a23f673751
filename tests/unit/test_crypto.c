/* Unit tests for lib/crypto.c: keyring, sealed fields, blind indexes,
 * passwords and small helpers. */
#include "moat/common.h"

#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/crypto.h"
#include "moat/log.h"

#define ENV_NAME "MOAT_TEST_KEYRING"

struct fixture {
    char dir[64];
    char *key_file;
};

static int setup(void **state)
{
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-test-crypto-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->key_file = moat_xasprintf("%s/keyring", f->dir);
    unsetenv(ENV_NAME);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char *cmd = moat_xasprintf("rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(cmd);
    free(f->key_file);
    free(f);
    unsetenv(ENV_NAME);
    return rc == 0 ? 0 : -1;
}

static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char *buf = moat_xcalloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static struct moat_keyring *load(const char *path)
{
    struct moat_keyring *kr = NULL;
    assert_int_equal(moat_keyring_load(&kr, ENV_NAME, path), MOAT_OK);
    assert_non_null(kr);
    return kr;
}

static char *seal_str(const struct moat_keyring *kr, const char *ad,
                      const char *pt)
{
    char *s = NULL;
    assert_int_equal(moat_seal(kr, ad, pt, strlen(pt), &s), MOAT_OK);
    assert_non_null(s);
    return s;
}

static void assert_opens_to(const struct moat_keyring *kr, const char *ad,
                            const char *sealed, const char *want)
{
    char *pt = NULL;
    size_t len = 0;
    assert_int_equal(moat_open(kr, ad, sealed, &pt, &len), MOAT_OK);
    assert_int_equal(len, strlen(want));
    assert_string_equal(pt, want);
    moat_free_secret(pt);
}

static void test_keyring_created_0600_and_reloaded(void **state)
{
    struct fixture *f = *state;
    struct stat st;

    assert_int_not_equal(stat(f->key_file, &st), 0);
    struct moat_keyring *kr = load(f->key_file);
    assert_int_equal(moat_keyring_active(kr), 1);
    assert_int_equal(stat(f->key_file, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    char *text = read_text(f->key_file);
    assert_int_equal(strncmp(text, "index ", 6), 0);
    char *data = strstr(text, "\ndata 1 ");
    assert_non_null(data);
    assert_int_equal(strlen(text), 6 + 44 + 1 + 7 + 44 + 1);
    moat_free_secret(text);

    /* A second load reads the same keys instead of making new ones. */
    char *s = seal_str(kr, "users.email:u1", "alice@example.com");
    struct moat_keyring *kr2 = load(f->key_file);
    assert_opens_to(kr2, "users.email:u1", s, "alice@example.com");
    char a[MOAT_BLIND_INDEX_HEX + 1], b[MOAT_BLIND_INDEX_HEX + 1];
    moat_blind_index(kr, "email", "alice@example.com", a);
    moat_blind_index(kr2, "email", "alice@example.com", b);
    assert_string_equal(a, b);
    free(s);
    moat_keyring_free(kr2);
    moat_keyring_free(kr);

    /* No temp file left behind. */
    char *ls = moat_xasprintf("ls '%s' | wc -l", f->dir);
    FILE *p = popen(ls, "r");
    int count = 0;
    assert_int_equal(fscanf(p, "%d", &count), 1);
    pclose(p);
    free(ls);
    assert_int_equal(count, 1);
}

static void test_keyring_refuses_open_permissions(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);
    moat_keyring_free(kr);

    const mode_t bad[] = {0644, 0640, 0604, 0620, 0602, 0610};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        assert_int_equal(chmod(f->key_file, bad[i]), 0);
        kr = (struct moat_keyring *)1;
        assert_int_equal(moat_keyring_load(&kr, ENV_NAME, f->key_file),
                         MOAT_EINVAL);
        assert_null(kr);
    }
    assert_int_equal(chmod(f->key_file, 0400), 0);
    kr = load(f->key_file);
    moat_keyring_free(kr);

    /* A symbolic link is refused, not followed. */
    char *link_path = moat_xasprintf("%s/link", f->dir);
    assert_int_equal(symlink(f->key_file, link_path), 0);
    assert_int_equal(moat_keyring_load(&kr, ENV_NAME, link_path), MOAT_EINVAL);
    free(link_path);

    /* A directory is not a key file. */
    assert_int_equal(moat_keyring_load(&kr, ENV_NAME, f->dir), MOAT_EINVAL);
    assert_int_equal(moat_keyring_load(&kr, ENV_NAME, NULL), MOAT_EINVAL);
}

static void test_keyring_rotate(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);
    char *old = seal_str(kr, "users.email:u1", "old@example.com");
    char before[MOAT_BLIND_INDEX_HEX + 1], after[MOAT_BLIND_INDEX_HEX + 1];
    moat_blind_index(kr, "email", "old@example.com", before);

    uint32_t id = 0;
    assert_int_equal(moat_keyring_rotate(kr, &id), MOAT_OK);
    assert_int_equal(id, 2);
    assert_int_equal(moat_keyring_active(kr), 2);
    assert_int_equal(moat_keyring_rotate(kr, NULL), MOAT_OK);
    assert_int_equal(moat_keyring_active(kr), 3);

    char *fresh = seal_str(kr, "users.email:u2", "new@example.com");
    assert_int_equal(moat_sealed_key_id(old), 1);
    assert_int_equal(moat_sealed_key_id(fresh), 3);
    assert_opens_to(kr, "users.email:u1", old, "old@example.com");
    assert_opens_to(kr, "users.email:u2", fresh, "new@example.com");
    /* The index key never rotates, or lookups would break. */
    moat_blind_index(kr, "email", "old@example.com", after);
    assert_string_equal(before, after);

    /* The file holds every key, stays 0600, and reloads to the same. */
    struct stat st;
    assert_int_equal(stat(f->key_file, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    struct moat_keyring *kr2 = load(f->key_file);
    assert_int_equal(moat_keyring_active(kr2), 3);
    assert_opens_to(kr2, "users.email:u1", old, "old@example.com");
    assert_opens_to(kr2, "users.email:u2", fresh, "new@example.com");
    moat_keyring_free(kr2);

    free(old);
    free(fresh);
    moat_keyring_free(kr);

    /* A failed write leaves the keyring as it was (works as root too:
     * the directory is gone, not merely read-only). */
    char *sub = moat_xasprintf("%s/sub", f->dir);
    char *sub_file = moat_xasprintf("%s/keyring", sub);
    assert_int_equal(mkdir(sub, 0700), 0);
    kr = load(sub_file);
    assert_int_equal(unlink(sub_file), 0);
    assert_int_equal(rmdir(sub), 0);
    id = 0;
    assert_int_equal(moat_keyring_rotate(kr, &id), MOAT_EIO);
    assert_int_equal(id, 0);
    assert_int_equal(moat_keyring_active(kr), 1);
    char *still = seal_str(kr, "t.c:1", "x");
    assert_int_equal(moat_sealed_key_id(still), 1);
    free(still);
    moat_keyring_free(kr);
    free(sub_file);
    free(sub);
}

/* Retirement drops every key but the active one, in the file too: what
 * the old keys sealed no longer opens, what the active one sealed does,
 * and the blind index is unchanged. */
static void test_keyring_retire(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);
    uint32_t n = 99;
    assert_int_equal(moat_keyring_retire(kr, &n), MOAT_OK);
    assert_int_equal(n, 0); /* one key: nothing to retire */
    char *old = seal_str(kr, "t.c:1", "old");
    char before[MOAT_BLIND_INDEX_HEX + 1], after[MOAT_BLIND_INDEX_HEX + 1];
    moat_blind_index(kr, "email", "a@example.com", before);
    assert_int_equal(moat_keyring_rotate(kr, NULL), MOAT_OK);
    assert_int_equal(moat_keyring_rotate(kr, NULL), MOAT_OK);
    char *fresh = seal_str(kr, "t.c:2", "fresh");
    assert_int_equal(moat_keyring_retire(kr, &n), MOAT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(moat_keyring_active(kr), 3);
    char *pt = NULL;
    assert_int_equal(moat_open(kr, "t.c:1", old, &pt, NULL), MOAT_ENOTFOUND);
    assert_opens_to(kr, "t.c:2", fresh, "fresh");
    moat_blind_index(kr, "email", "a@example.com", after);
    assert_string_equal(before, after);

    /* The file holds the index key and data key 3 only, still 0600. */
    char *text = read_text(f->key_file);
    assert_null(strstr(text, "data 1 "));
    assert_null(strstr(text, "data 2 "));
    assert_non_null(strstr(text, "data 3 "));
    free(text);
    struct stat st;
    assert_int_equal(stat(f->key_file, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    struct moat_keyring *kr2 = load(f->key_file);
    assert_int_equal(moat_keyring_active(kr2), 3);
    assert_opens_to(kr2, "t.c:2", fresh, "fresh");
    /* Ids go on from the active one. */
    uint32_t id = 0;
    assert_int_equal(moat_keyring_rotate(kr2, &id), MOAT_OK);
    assert_int_equal(id, 4);
    moat_keyring_free(kr2);
    free(old);
    free(fresh);
    moat_keyring_free(kr);
}

struct sealer {
    pthread_t thread;
    const struct moat_keyring *kr;
    int failures;
};

static void *sealer_main(void *arg)
{
    struct sealer *w = arg;
    for (int i = 0; i < 300; i++) {
        char *s = NULL, *pt = NULL;
        if (moat_seal(w->kr, "t.c:1", "value", 5, &s) != MOAT_OK ||
            moat_open(w->kr, "t.c:1", s, &pt, NULL) != MOAT_OK ||
            strcmp(pt, "value") != 0)
            w->failures++;
        free(s);
        moat_free_secret(pt);
    }
    return NULL;
}

static void test_keyring_rotate_while_in_use(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);
    struct sealer w[4];

    /* Workers seal and open while the loop thread rotates. */
    for (size_t i = 0; i < MOAT_ARRAY_LEN(w); i++) {
        w[i] = (struct sealer){.kr = kr};
        assert_int_equal(pthread_create(&w[i].thread, NULL, sealer_main, &w[i]),
                         0);
    }
    for (int i = 0; i < 5; i++)
        assert_int_equal(moat_keyring_rotate(kr, NULL), MOAT_OK);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(w); i++) {
        pthread_join(w[i].thread, NULL);
        assert_int_equal(w[i].failures, 0);
    }
    assert_int_equal(moat_keyring_active(kr), 6);
    moat_keyring_free(kr);
}

static void test_keyring_from_env(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *file_kr = load(f->key_file);
    assert_int_equal(moat_keyring_rotate(file_kr, NULL), MOAT_OK);
    char *sealed = seal_str(file_kr, "t.c:1", "secret");

    char *text = read_text(f->key_file);
    for (char *p = text; *p; p++)
        if (*p == '\n')
            *p = ';';
    assert_int_equal(setenv(ENV_NAME, text, 1), 0);
    moat_free_secret(text);

    char *other = moat_xasprintf("%s/never-created", f->dir);
    struct moat_keyring *kr = load(other);
    assert_int_equal(moat_keyring_active(kr), 2);
    assert_opens_to(kr, "t.c:1", sealed, "secret");
    assert_int_equal(moat_keyring_rotate(kr, NULL), MOAT_EUNSUPPORTED);
    assert_int_equal(moat_keyring_retire(kr, NULL), MOAT_EUNSUPPORTED);
    assert_int_not_equal(access(other, F_OK), 0);
    moat_keyring_free(kr);

    /* The file's text as is, newlines and all, works too. */
    text = read_text(f->key_file);
    assert_int_equal(setenv(ENV_NAME, text, 1), 0);
    moat_free_secret(text);
    kr = load(other);
    assert_opens_to(kr, "t.c:1", sealed, "secret");
    moat_keyring_free(kr);

    /* Set means used: empty or malformed is an error, not a fallback. */
    const char *bad[] = {
        "",
        "index AAAA",
        "data 1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        assert_int_equal(setenv(ENV_NAME, bad[i], 1), 0);
        assert_int_equal(moat_keyring_load(&kr, ENV_NAME, other), MOAT_EINVAL);
    }
    unsetenv(ENV_NAME);
    free(other);
    free(sealed);
    moat_keyring_free(file_kr);
}

#define K1 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define K2 "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="

static void test_keyring_malformed_files(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = NULL;

    /* The format is exact; ids may come in any order. */
    write_text(f->key_file, "data 7 " K2 "\nindex " K1 "\ndata 3 " K1 "\n",
               0600);
    kr = load(f->key_file);
    assert_int_equal(moat_keyring_active(kr), 7);
    moat_keyring_free(kr);

    const char *bad[] = {
        "",
        "\n\n",
        "index " K1 "\n",                               /* no data key */
        "data 1 " K1 "\n",                              /* no index key */
        "index " K1 "\nindex " K2 "\ndata 1 " K1 "\n",  /* two index keys */
        "index " K1 "\ndata 1 " K1 "\ndata 1 " K2 "\n", /* duplicate id */
        "index " K1 "\ndata 0 " K1 "\n",                /* id 0 */
        "index " K1 "\ndata 01 " K1 "\n",               /* leading zero */
        "index " K1 "\ndata -1 " K1 "\n",
        "index " K1 "\ndata 4294967296 " K1 "\n", /* > UINT32_MAX */
        "index " K1 "\ndata 1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n",
        "index " K1 "\ndata 1 " K1 "=\n",              /* junk after key */
        "index " K1 "\ndata 1  " K1 "\n",              /* two spaces */
        "index " K1 "\r\ndata 1 " K1 "\r\n",           /* CRLF */
        "index " K1 "\ndata 1 " K1 "\nkey 2 " K1 "\n", /* unknown line */
        "index " K1 "\ndata 1\n",
        "index " K1 "\ndata 1 ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8\n",
        "index " K1 "\ndata 1 ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj*=\n",
        "index " K1 ";data 1 " K1 "\n", /* ';' only separates env entries */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        write_text(f->key_file, bad[i], 0600);
        kr = (struct moat_keyring *)1;
        int rc = moat_keyring_load(&kr, ENV_NAME, f->key_file);
        if (rc != MOAT_EINVAL)
            fail_msg("key file %zu was accepted (%d)", i, rc);
        assert_null(kr);
    }
}

static void test_seal_open_round_trip(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);

    char *s = seal_str(kr, "users.email:usr_01", "alice@example.com");
    assert_int_equal(strncmp(s, "s1.1.", 5), 0);
    for (const char *p = s + 5; *p; p++)
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
                               "vwxyz0123456789-_",
                               *p));
    assert_opens_to(kr, "users.email:usr_01", s, "alice@example.com");
    /* Random nonces: the same value seals differently each time. */
    char *s2 = seal_str(kr, "users.email:usr_01", "alice@example.com");
    assert_string_not_equal(s, s2);
    free(s2);
    free(s);

    /* Empty and binary plaintexts, with NUL bytes kept by *len. */
    s = seal_str(kr, "t.c:1", "");
    assert_opens_to(kr, "t.c:1", s, "");
    free(s);
    const unsigned char bin[] = {0, 1, 2, 0, 255, 'x'};
    assert_int_equal(moat_seal(kr, "t.c:1", bin, sizeof(bin), &s), MOAT_OK);
    char *pt = NULL;
    size_t len = 0;
    assert_int_equal(moat_open(kr, "t.c:1", s, &pt, &len), MOAT_OK);
    assert_int_equal(len, sizeof(bin));
    assert_memory_equal(pt, bin, sizeof(bin));
    assert_int_equal(pt[len], '\0');
    moat_free_secret(pt);
    /* len is optional. */
    assert_int_equal(moat_open(kr, "t.c:1", s, &pt, NULL), MOAT_OK);
    moat_free_secret(pt);
    free(s);

    /* The cap is inclusive. */
    unsigned char *big = moat_xcalloc(1, MOAT_SEALED_MAX_INPUT + 1);
    assert_int_equal(moat_seal(kr, "t.c:1", big, MOAT_SEALED_MAX_INPUT, &s),
                     MOAT_OK);
    assert_int_equal(moat_open(kr, "t.c:1", s, &pt, &len), MOAT_OK);
    assert_int_equal(len, MOAT_SEALED_MAX_INPUT);
    moat_free_secret(pt);
    free(s);
    s = (char *)1;
    assert_int_equal(moat_seal(kr, "t.c:1", big, MOAT_SEALED_MAX_INPUT + 1, &s),
                     MOAT_ETOOBIG);
    assert_null(s);
    free(big);

    assert_int_equal(moat_seal(kr, NULL, "x", 1, &s), MOAT_EINVAL);
    assert_int_equal(moat_seal(kr, "a", NULL, 1, &s), MOAT_EINVAL);
    assert_int_equal(moat_seal(kr, "a", NULL, 0, &s), MOAT_OK);
    free(s);
    moat_keyring_free(kr);
}

static void test_open_rejects_wrong_place_and_tampering(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);
    char *s = seal_str(kr, "users.email:usr_01", "alice@example.com");
    char *pt = (char *)1;

    /* Copied to another row, another column, or with no place. */
    const char *wrong_ad[] = {"users.email:usr_02", "users.phone:usr_01",
                              "users.email:usr_01 ", ""};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(wrong_ad); i++) {
        assert_int_equal(moat_open(kr, wrong_ad[i], s, &pt, NULL), MOAT_EINVAL);
        assert_null(pt);
    }

    /* Every changed character of the payload fails to open. */
    size_t len = strlen(s);
    for (size_t i = 5; i < len; i++) {
        char *t = moat_xstrdup(s);
        t[i] = t[i] == 'A' ? 'B' : 'A';
        if (moat_open(kr, "users.email:usr_01", t, &pt, NULL) != MOAT_EINVAL)
            fail_msg("tampered byte %zu opened", i);
        free(t);
    }

    /* Another key id: one that does not exist, and one that does. */
    char *t = moat_xasprintf("s1.7.%s", s + 5);
    assert_int_equal(moat_open(kr, "users.email:usr_01", t, &pt, NULL),
                     MOAT_ENOTFOUND);
    assert_int_equal(moat_sealed_key_id(t), 7);
    free(t);
    assert_int_equal(moat_keyring_rotate(kr, NULL), MOAT_OK);
    t = moat_xasprintf("s1.2.%s", s + 5);
    assert_int_equal(moat_open(kr, "users.email:usr_01", t, &pt, NULL),
                     MOAT_EINVAL);
    free(t);

    /* Another keyring altogether. */
    char *other_file = moat_xasprintf("%s/other", f->dir);
    struct moat_keyring *other = load(other_file);
    assert_int_equal(moat_open(other, "users.email:usr_01", s, &pt, NULL),
                     MOAT_EINVAL);
    moat_keyring_free(other);
    free(other_file);
    free(s);
    moat_keyring_free(kr);
}

static void test_open_rejects_malformed(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);
    char *s = seal_str(kr, "t.c:1", "hello");
    const char *p = s + 5; /* the base64url payload */
    size_t plen = strlen(p);
    char *pt = NULL;

    /*
     * A non-canonical encoding: "hell" seals to 24 + 4 + 16 = 44 bytes, 59
     * characters whose last one has 2 unused bits. Setting one of them
     * would decode to the same bytes, and must be refused all the same.
     */
    static const char b64url[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *s4 = seal_str(kr, "t.c:1", "hell");
    size_t s4len = strlen(s4);
    assert_int_equal(s4len, 5 + 59);
    assert_opens_to(kr, "t.c:1", s4, "hell");
    char *noncanon = moat_xstrdup(s4 + 5);
    size_t last = (size_t)(strchr(b64url, noncanon[58]) - b64url);
    assert_int_equal(last % 4, 0);
    noncanon[58] = b64url[last + 1];
    char *cut = moat_xstrndup(p, plen - 4); /* whole groups, short by 3 */
    assert_int_equal(plen, 60);

    char *bad[] = {
        moat_xstrdup(""),
        moat_xstrdup("s1"),
        moat_xstrdup("s1."),
        moat_xstrdup("s1.1"),
        moat_xstrdup("s1.1."),
        moat_xasprintf("s2.1.%s", p),               /* unknown version */
        moat_xasprintf("S1.1.%s", p),               /* case matters */
        moat_xasprintf(" s1.1.%s", p),              /* leading junk */
        moat_xasprintf("s1.1.%s ", p),              /* trailing junk */
        moat_xasprintf("s1.1.%s\n", p),             /* trailing newline */
        moat_xasprintf("s1.1.%s=", p),              /* padding */
        moat_xasprintf("s1.1.%s.x", p),             /* extra field */
        moat_xasprintf("s1.0.%s", p),               /* id 0 */
        moat_xasprintf("s1.01.%s", p),              /* leading zero */
        moat_xasprintf("s1.-1.%s", p),              /* sign */
        moat_xasprintf("s1.4294967296.%s", p),      /* > UINT32_MAX */
        moat_xasprintf("s1..%s", p),                /* no id */
        moat_xasprintf("s1.1%s", p),                /* no dot */
        moat_xasprintf("s1.1.%.20s", p),            /* shorter than nonce+tag */
        moat_xasprintf("s1.1.%.57s", p),            /* len % 4 == 1 */
        moat_xasprintf("s1.1.%.10s+%s", p, p + 11), /* not url-safe */
        moat_xasprintf("s1.1.%.10s*%s", p, p + 11), /* not base64 */
        moat_xasprintf("s1.1.%.10s\x01%s", p, p + 11),
        moat_xasprintf("s1.1.%s", cut),      /* truncated: fails auth */
        moat_xasprintf("s1.1.%s", noncanon), /* non-canonical base64 */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        pt = (char *)1;
        if (moat_open(kr, "t.c:1", bad[i], &pt, NULL) != MOAT_EINVAL)
            fail_msg("malformed sealed text %zu (%s) accepted", i, bad[i]);
        assert_null(pt);
        free(bad[i]);
    }
    assert_int_equal(moat_open(kr, "t.c:1", NULL, &pt, NULL), MOAT_EINVAL);

    /* Key id of what parses, 0 for what does not. */
    assert_int_equal(moat_sealed_key_id(s), 1);
    assert_int_equal(moat_sealed_key_id(NULL), 0);
    assert_int_equal(moat_sealed_key_id("s1.1."), 0);
    assert_int_equal(moat_sealed_key_id("s1.1.AAAA"), 0);
    char *t = moat_xasprintf("s1.1.%s ", p);
    assert_int_equal(moat_sealed_key_id(t), 0);
    free(t);

    /* An oversized payload is refused before it is decoded. */
    size_t huge = 2 * MOAT_SEALED_MAX_INPUT;
    char *big = moat_xmalloc(huge + 6);
    memcpy(big, "s1.1.", 5);
    memset(big + 5, 'A', huge);
    big[huge + 5] = '\0';
    assert_int_equal(moat_open(kr, "t.c:1", big, &pt, NULL), MOAT_EINVAL);
    assert_int_equal(moat_sealed_key_id(big), 0);
    free(big);

    free(cut);
    free(noncanon);
    free(s4);
    free(s);
    moat_keyring_free(kr);
}

static bool is_lower_hex(const char *s, size_t len)
{
    if (strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!strchr("0123456789abcdef", s[i]))
            return false;
    return true;
}

static void test_blind_index(void **state)
{
    struct fixture *f = *state;
    struct moat_keyring *kr = load(f->key_file);
    char *other_file = moat_xasprintf("%s/other", f->dir);
    struct moat_keyring *other = load(other_file);
    char a[MOAT_BLIND_INDEX_HEX + 1], b[MOAT_BLIND_INDEX_HEX + 1];
    char c[MOAT_BLIND_INDEX_HEX + 1], d[MOAT_BLIND_INDEX_HEX + 1];
    char e[MOAT_BLIND_INDEX_HEX + 1];

    moat_blind_index(kr, "email", "alice@example.com", a);
    moat_blind_index(kr, "email", "alice@example.com", b);
    moat_blind_index(kr, "phone", "alice@example.com", c);
    moat_blind_index(other, "email", "alice@example.com", d);
    moat_blind_index(kr, "email", "bob@example.com", e);
    assert_true(is_lower_hex(a, MOAT_BLIND_INDEX_HEX));
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, d);
    assert_string_not_equal(a, e);

    /* Not a plain hash of the value. */
    char plain[65];
    moat_sha256_hex("alice@example.com", 17, plain);
    assert_string_not_equal(a, plain);

    moat_keyring_free(other);
    free(other_file);
    moat_keyring_free(kr);
}

static void test_password_hash_verify(void **state)
{
    char hash[MOAT_PASSWORD_HASH_MAX];

    /* One hash only: Argon2id is slow on purpose. */
    assert_int_equal(moat_password_hash("correct horse battery", hash),
                     MOAT_OK);
    assert_int_equal(strncmp(hash, "$argon2id$", 10), 0);
    assert_int_equal(moat_password_verify(hash, "correct horse battery"),
                     MOAT_OK);
    assert_int_equal(moat_password_verify(hash, "correct horse batterY"),
                     MOAT_EINVAL);
    assert_int_equal(moat_password_verify(hash, ""), MOAT_EINVAL);

    char bad_hash[MOAT_PASSWORD_HASH_MAX];
    snprintf(bad_hash, sizeof(bad_hash), "%s", hash);
    bad_hash[strlen(bad_hash) - 2] ^= 1;
    assert_int_equal(moat_password_verify(bad_hash, "correct horse battery"),
                     MOAT_EINVAL);
    assert_int_equal(moat_password_verify("not a hash", "x"), MOAT_EINVAL);
    assert_int_equal(moat_password_verify("", "x"), MOAT_EINVAL);
    assert_int_equal(moat_password_verify(NULL, "x"), MOAT_EINVAL);
    assert_int_equal(moat_password_verify(hash, NULL), MOAT_EINVAL);

    /* Length cap: refused before any hashing. */
    char *long_pw = moat_xmalloc(1026);
    memset(long_pw, 'p', 1025);
    long_pw[1025] = '\0';
    assert_int_equal(moat_password_hash(long_pw, hash), MOAT_EINVAL);
    assert_int_equal(moat_password_verify(hash, long_pw), MOAT_EINVAL);
    free(long_pw);
    assert_int_equal(moat_password_hash(NULL, hash), MOAT_EINVAL);

    /* Unterminated hash buffer. */
    char unterminated[MOAT_PASSWORD_HASH_MAX];
    memset(unterminated, 'a', sizeof(unterminated));
    assert_int_equal(moat_password_verify(unterminated, "x"), MOAT_EINVAL);
}

static void test_helpers(void **state)
{
    assert_int_equal(moat_memeq("abcd", "abcd", 4), MOAT_OK);
    assert_int_equal(moat_memeq("abcd", "abce", 4), MOAT_EINVAL);
    assert_int_equal(moat_memeq("abcd", "xbcd", 0), MOAT_OK);

    char *t1 = moat_random_token(32);
    char *t2 = moat_random_token(32);
    assert_int_equal(strlen(t1), 43);
    assert_string_not_equal(t1, t2);
    for (const char *p = t1; *p; p++)
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
                               "vwxyz0123456789-_",
                               *p));
    free(t1);
    free(t2);
    t1 = moat_random_token(0);
    assert_string_equal(t1, "");
    free(t1);

    char hex[65];
    moat_sha256_hex("abc", 3, hex);
    assert_string_equal(
        hex,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    moat_sha256_hex(NULL, 0, hex);
    assert_string_equal(
        hex,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    moat_free_secret(NULL);
    moat_free_secret(moat_xstrdup("secret"));
}

int main(void)
{
    /* Refusals are logged on purpose; keep the test output readable. */
    moat_log_init("test_crypto", (enum moat_log_level)(MOAT_LOG_ERROR + 1));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keyring_created_0600_and_reloaded,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_refuses_open_permissions,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_rotate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_retire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_rotate_while_in_use, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_keyring_from_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_malformed_files, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_seal_open_round_trip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_open_rejects_wrong_place_and_tampering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_rejects_malformed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_blind_index, setup, teardown),
        cmocka_unit_test(test_password_hash_verify),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
