/*
 * test_sandbox.c - unit tests for lib/sandbox.c. Confinement cannot be
 * undone, so each check runs in a forked child that confines itself and
 * reports through its exit status: 0 when every check held, otherwise the
 * number of the first failed check (also printed on stderr).
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat/log.h"
#include "moat/sandbox.h"

struct dirs {
    char rw[64];    /* the child's own directory */
    char other[64]; /* someone else's: must be out of reach */
    char ro[64];    /* given as ro_extra */
};

static int make_file(const char *dir, const char *name, const char *text)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int setup(void **state)
{
    if (moat_sandbox_abi() == 0) {
        *state = NULL;
        return 0;
    }
    struct dirs *d = moat_xcalloc(1, sizeof(*d));
    snprintf(d->rw, sizeof(d->rw), "/tmp/moat-test-sandbox-rw-XXXXXX");
    snprintf(d->other, sizeof(d->other), "/tmp/moat-test-sandbox-other-XXXXXX");
    snprintf(d->ro, sizeof(d->ro), "/tmp/moat-test-sandbox-ro-XXXXXX");
    if (!mkdtemp(d->rw) || !mkdtemp(d->other) || !mkdtemp(d->ro) ||
        make_file(d->other, "secret", "not yours\n") != 0 ||
        make_file(d->ro, "config", "read me\n") != 0) {
        free(d);
        return -1;
    }
    *state = d;
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type,
                        struct FTW *ftw)
{
    MOAT_UNUSED(st);
    MOAT_UNUSED(type);
    MOAT_UNUSED(ftw);
    return remove(path);
}

static int teardown(void **state)
{
    struct dirs *d = *state;
    if (!d)
        return 0;
    nftw(d->rw, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    nftw(d->other, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    nftw(d->ro, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(d);
    return 0;
}

static void skip_without_landlock(void)
{
    if (moat_sandbox_abi() == 0) {
        print_message("landlock is not available on this kernel "
                      "(moat_sandbox_abi() == 0): skipping\n");
        skip();
    }
}

/* Fork, run fn in the child and return its exit status. */
static int run_child(int (*fn)(const struct dirs *), const struct dirs *d)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(fn(d)); /* no atexit handlers or stdio of the parent */
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

#define CHECK(n, cond)                                                         \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "child check %d failed: %s (errno %s)\n", n,       \
                    #cond, strerror(errno));                                   \
            return n;                                                          \
        }                                                                      \
    } while (0)

static bool open_fails_eacces(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC, 0600);
    if (fd >= 0) {
        close(fd);
        return false;
    }
    return errno == EACCES;
}

static bool can_read(const char *path)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof(buf));
    close(fd);
    return n >= 0;
}

static int confined_child(const struct dirs *d)
{
    const char *ro_extra[] = {d->ro, "/nonexistent/moat/path", NULL};
    bool enforced = false;
    char path[160], path2[160];

    CHECK(1, moat_sandbox_confine(d->rw, ro_extra, &enforced) == MOAT_OK);
    CHECK(2, enforced);

    /* Another directory is out of reach: no read, no create, no list. */
    snprintf(path, sizeof(path), "%s/secret", d->other);
    CHECK(3, open_fails_eacces(path, O_RDONLY));
    snprintf(path, sizeof(path), "%s/planted", d->other);
    CHECK(4, open_fails_eacces(path, O_WRONLY | O_CREAT));
    CHECK(5, open_fails_eacces(d->other, O_RDONLY | O_DIRECTORY));
    CHECK(6, open_fails_eacces("/", O_RDONLY | O_DIRECTORY));

    /* Its own directory is fully usable: create, write, truncate, make
     * a directory, move across directories (REFER), remove. */
    CHECK(7, make_file(d->rw, "data", "hello\n") == 0);
    snprintf(path, sizeof(path), "%s/data", d->rw);
    CHECK(8, can_read(path));
    CHECK(9, truncate(path, 1) == 0);
    snprintf(path2, sizeof(path2), "%s/sub", d->rw);
    CHECK(10, mkdir(path2, 0700) == 0);
    snprintf(path2, sizeof(path2), "%s/sub/data", d->rw);
    CHECK(11, rename(path, path2) == 0);
    CHECK(12, unlink(path2) == 0);

    /* System files stay readable; extra read-only paths are read-only. */
    CHECK(13, can_read("/etc/hostname") || can_read("/usr/lib/os-release"));
    CHECK(14, can_read("/proc/self/stat"));
    snprintf(path, sizeof(path), "%s/config", d->ro);
    CHECK(15, can_read(path));
    CHECK(16, open_fails_eacces(path, O_WRONLY));
    snprintf(path, sizeof(path), "%s/new", d->ro);
    CHECK(17, open_fails_eacces(path, O_WRONLY | O_CREAT));
    CHECK(18,
          open_fails_eacces("/usr/lib/moat-sandbox-test", O_WRONLY | O_CREAT));
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    CHECK(19, fd >= 0);
    close(fd);

    /* It cannot be undone: a second, wider confinement adds rules to a
     * new layer, and every layer must allow an access. */
    const char *wide[] = {d->other, NULL};
    CHECK(20, moat_sandbox_confine(d->rw, wide, &enforced) == MOAT_OK);
    snprintf(path, sizeof(path), "%s/secret", d->other);
    CHECK(21, open_fails_eacces(path, O_RDONLY));
    return 0;
}

static void test_confined_to_own_dir(void **state)
{
    skip_without_landlock();
    assert_int_equal(run_child(confined_child, *state), 0);
    /* The parent is not affected. */
    char path[160];
    snprintf(path, sizeof(path), "%s/secret", ((struct dirs *)*state)->other);
    assert_true(can_read(path));
}

static int no_rw_dir_child(const struct dirs *d)
{
    bool enforced = false;
    CHECK(1, moat_sandbox_confine(NULL, NULL, &enforced) == MOAT_OK);
    CHECK(2, enforced);
    CHECK(3, open_fails_eacces(d->rw, O_RDONLY | O_DIRECTORY));
    CHECK(4, can_read("/etc/hostname") || can_read("/usr/lib/os-release"));
    return 0;
}

static void test_no_writable_dir(void **state)
{
    skip_without_landlock();
    assert_int_equal(run_child(no_rw_dir_child, *state), 0);
}

static int missing_rw_dir_child(const struct dirs *d)
{
    bool enforced = true;
    char path[128];
    snprintf(path, sizeof(path), "%s/missing", d->rw);
    CHECK(1, moat_sandbox_confine(path, NULL, &enforced) != MOAT_OK);
    CHECK(2, !enforced);
    return 0;
}

static void test_missing_rw_dir_is_error(void **state)
{
    skip_without_landlock();
    assert_int_equal(run_child(missing_rw_dir_child, *state), 0);
}

static void *sleeper(void *arg)
{
    MOAT_UNUSED(arg);
    pause();
    return NULL;
}

static int threaded_child(const struct dirs *d)
{
    pthread_t t;
    bool enforced = true;
    CHECK(1, pthread_create(&t, NULL, sleeper, NULL) == 0);
    CHECK(2, moat_sandbox_confine(d->rw, NULL, &enforced) == MOAT_EINVAL);
    CHECK(3, !enforced);
    return 0;
}

/* Landlock does not reach threads that already run: refuse to pretend. */
static void test_refuses_with_threads(void **state)
{
    skip_without_landlock();
    assert_int_equal(run_child(threaded_child, *state), 0);
}

/* Confined with the files of a DSN as ro_extra (what lib/service.c does
 * with MOAT_DB_DSN): the passfile it names is readable, not writable, and
 * its neighbour is out of reach. */
static int dsn_child(const struct dirs *d)
{
    char dsn[256], pass[128], config[128];
    snprintf(pass, sizeof(pass), "%s/secret", d->other);
    snprintf(config, sizeof(config), "%s/config", d->ro);
    snprintf(dsn, sizeof(dsn), "host=127.0.0.1 passfile=%s dbname=x", pass);
    char **files = moat_sandbox_dsn_files(dsn);
    CHECK(1, files && files[0] && !files[1]);
    bool enforced = false;
    CHECK(2, moat_sandbox_confine(d->rw, (const char *const *)files,
                                  &enforced) == MOAT_OK &&
                 enforced);
    CHECK(3, can_read(pass));
    CHECK(4, open_fails_eacces(pass, O_WRONLY));
    CHECK(5, open_fails_eacces(config, O_RDONLY));
    return 0;
}

static void test_dsn_files_readable(void **state)
{
    skip_without_landlock();
    assert_int_equal(run_child(dsn_child, *state), 0);
}

static void test_dsn_files(void **state)
{
    MOAT_UNUSED(state);
    assert_null(moat_sandbox_dsn_files(NULL));
    assert_null(moat_sandbox_dsn_files("host=127.0.0.1 port=5433 dbname=x"));
    char **f = moat_sandbox_dsn_files(
        "host=127.0.0.1 passfile=/v/secrets/a.pgpass dbname = x "
        "sslrootcert = '/v/my certs/ca\\'s.crt' sslmode=verify-full "
        "sslkey=/k\\ ey");
    assert_non_null(f);
    assert_string_equal(f[0], "/v/secrets/a.pgpass");
    assert_string_equal(f[1], "/v/my certs/ca's.crt");
    assert_string_equal(f[2], "/k ey");
    assert_null(f[3]);
    for (size_t i = 0; f[i]; i++)
        free(f[i]);
    free(f);
    f = moat_sandbox_dsn_files(
        "postgresql://u@h:5/db?sslmode=verify-ca&sslrootcert=/ca.crt&x=1");
    assert_non_null(f);
    assert_string_equal(f[0], "/ca.crt");
    assert_null(f[1]);
    free(f[0]);
    free(f);
    /* An unterminated quote: what came before it. */
    f = moat_sandbox_dsn_files("passfile=/p sslcert='/never");
    assert_string_equal(f[0], "/p");
    assert_null(f[1]);
    free(f[0]);
    free(f);
}

static void test_abi(void **state)
{
    MOAT_UNUSED(state);
    int abi = moat_sandbox_abi();
    assert_true(abi >= 0);
    print_message("landlock ABI %d\n", abi);
}

int main(void)
{
    moat_log_init("test_sandbox", MOAT_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abi),
        cmocka_unit_test(test_dsn_files),
        cmocka_unit_test_setup_teardown(test_dsn_files_readable, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_confined_to_own_dir, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_writable_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_rw_dir_is_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refuses_with_threads, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
