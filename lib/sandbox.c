/*
 * sandbox.c - Landlock self-confinement (see moat/sandbox.h).
 *
 * glibc has no Landlock wrappers, so the three system calls are made
 * directly. Every access right is handled only if the running kernel's ABI
 * knows it: asking for an unknown right makes landlock_create_ruleset()
 * fail, and the sandbox must work on every kernel since 5.13.
 */
#include "moat/common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <limits.h>
#include <linux/landlock.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "moat/log.h"
#include "moat/sandbox.h"

/* Older kernel headers lack the later rights and system call numbers; the
 * values are fixed by the kernel ABI (the syscalls are the same on every
 * architecture). */
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif

/* Filesystem rights of ABI 1; later ABIs add one right each (see below). */
#define ACCESS_FS_ABI1                                                         \
    (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |              \
     LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR |              \
     LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE |          \
     LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR |              \
     LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_MAKE_SOCK |              \
     LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK |            \
     LANDLOCK_ACCESS_FS_MAKE_SYM)

/* The only rights a rule on a non-directory may carry; the kernel refuses
 * directory rights (READ_DIR, MAKE_*, REMOVE_*, REFER) on a file. */
#define ACCESS_FILE                                                            \
    (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |              \
     LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_TRUNCATE |              \
     LANDLOCK_ACCESS_FS_IOCTL_DEV)

#define ACCESS_RO (LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR)
#define ACCESS_RX (ACCESS_RO | LANDLOCK_ACCESS_FS_EXECUTE)

struct system_path {
    const char *path;
    uint64_t access;
};

/*
 * What a service needs outside its data directory: shared libraries and
 * helpers, /etc for TLS roots, resolv.conf, hosts, nsswitch and localtime,
 * the random device, /proc for /proc/self/{stat,status,fd} (Landlock keeps
 * ptrace-style access to other processes out of reach anyway), and the CPU
 * topology that allocators and thread pools read. Writing to /dev/null is
 * harmless and some libraries open it O_RDWR.
 */
static const struct system_path system_paths[] = {
    {"/usr", ACCESS_RX},
    {"/lib", ACCESS_RX},
    {"/lib64", ACCESS_RX},
    {"/bin", ACCESS_RX},
    {"/etc", ACCESS_RO},
    {"/dev/urandom", LANDLOCK_ACCESS_FS_READ_FILE},
    {"/dev/null", LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_WRITE_FILE},
    {"/proc", ACCESS_RO},
    {"/sys/devices/system/cpu", ACCESS_RO},
};

static long ll_create_ruleset(const struct landlock_ruleset_attr *attr,
                              size_t size, uint32_t flags)
{
    return syscall(SYS_landlock_create_ruleset, attr, size, flags);
}

static long ll_add_rule(int ruleset_fd, enum landlock_rule_type type,
                        const void *attr, uint32_t flags)
{
    return syscall(SYS_landlock_add_rule, ruleset_fd, type, attr, flags);
}

static long ll_restrict_self(int ruleset_fd, uint32_t flags)
{
    return syscall(SYS_landlock_restrict_self, ruleset_fd, flags);
}

int moat_sandbox_abi(void)
{
    long abi = ll_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return abi < 0 ? 0 : (int)abi;
}

/* Every filesystem right the running ABI knows. Network rights (ABI 4)
 * and scopes (ABI 6) are not filesystem rights and are left alone. */
static uint64_t fs_rights_for_abi(int abi)
{
    uint64_t rights = ACCESS_FS_ABI1;
    if (abi >= 2)
        rights |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3)
        rights |= LANDLOCK_ACCESS_FS_TRUNCATE;
    if (abi >= 5)
        rights |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
    return rights;
}

/*
 * Allow access (limited to what the ruleset handles) beneath path. A path
 * that does not exist is skipped when optional; any other failure is an
 * error, since carrying on would grant less, or more, than was asked.
 */
static int allow_path(int ruleset_fd, uint64_t handled, const char *path,
                      uint64_t access, bool optional)
{
    struct landlock_path_beneath_attr rule = {0};
    struct stat st;
    int rc = MOAT_OK;

    /* O_PATH follows symlinks (/lib -> usr/lib), which is what we want:
     * the rule then covers the real directory. */
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        if (optional && (errno == ENOENT || errno == ENOTDIR))
            return MOAT_OK;
        moat_log(MOAT_LOG_ERROR, "sandbox cannot open path", "{s:s, s:s}",
                 "path", path, "error", strerror(errno));
        return errno == ENOENT ? MOAT_ENOTFOUND : MOAT_EIO;
    }
    if (fstat(fd, &st) != 0) {
        moat_log(MOAT_LOG_ERROR, "sandbox cannot stat path", "{s:s, s:s}",
                 "path", path, "error", strerror(errno));
        rc = MOAT_EIO;
        goto out;
    }
    rule.parent_fd = fd;
    rule.allowed_access = access & handled;
    if (!S_ISDIR(st.st_mode))
        rule.allowed_access &= ACCESS_FILE;
    if (rule.allowed_access == 0)
        goto out;
    if (ll_add_rule(ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) != 0) {
        moat_log(MOAT_LOG_ERROR, "sandbox cannot add rule", "{s:s, s:s}",
                 "path", path, "error", strerror(errno));
        rc = MOAT_EIO;
    }
out:
    close(fd);
    return rc;
}

/*
 * Landlock restricts the calling thread and what it creates afterwards,
 * not threads already running: those would stay unconfined. Returns the
 * number of threads of the process, or 0 when /proc cannot tell.
 */
static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n;
}

/*
 * Drop every capability, for good (bounding set, ambient, then effective,
 * permitted and inheritable). A service needs none; a confined process
 * that keeps them (a service run as root) could still read other
 * processes' memory and environment (CAP_SYS_PTRACE), secrets included,
 * or bypass file permissions. Without CAP_SETPCAP (not root) the bounding
 * set cannot be changed, but then there is nothing in it to fear.
 */
static int drop_capabilities(void)
{
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL &&
            errno != EPERM)
            return MOAT_EIO;
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) != 0) {
        moat_log(MOAT_LOG_ERROR, "cannot drop capabilities", "{s:s}", "error",
                 strerror(errno));
        return MOAT_EIO;
    }
    return MOAT_OK;
}

int moat_sandbox_confine(const char *rw_dir, const char *const *ro_extra,
                         bool *enforced)
{
    struct landlock_ruleset_attr attr = {0};
    int ruleset_fd = -1;
    int rc = MOAT_OK;

    *enforced = false;
    long abi = ll_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 0) {
        /* ENOSYS: kernel built without Landlock; EOPNOTSUPP: built in
         * but disabled at boot. The caller decides whether to run on. */
        if (errno == ENOSYS || errno == EOPNOTSUPP)
            return drop_capabilities();
        moat_log(MOAT_LOG_ERROR, "landlock version query failed", "{s:s}",
                 "error", strerror(errno));
        return MOAT_EIO;
    }

    int threads = count_threads();
    if (threads > 1) {
        moat_log(MOAT_LOG_ERROR,
                 "sandbox must be set up before starting threads", "{s:i}",
                 "threads", threads);
        return MOAT_EINVAL;
    }

    uint64_t handled = fs_rights_for_abi((int)abi);
    attr.handled_access_fs = handled;
    ruleset_fd = (int)ll_create_ruleset(&attr, sizeof(attr), 0);
    if (ruleset_fd < 0) {
        if (errno == ENOSYS || errno == EOPNOTSUPP)
            return drop_capabilities();
        moat_log(MOAT_LOG_ERROR, "landlock ruleset creation failed",
                 "{s:s, s:i}", "error", strerror(errno), "abi", (int)abi);
        return MOAT_EIO;
    }

    if (rw_dir && (rc = allow_path(ruleset_fd, handled, rw_dir, handled,
                                   false)) != MOAT_OK)
        goto out;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(system_paths); i++) {
        rc = allow_path(ruleset_fd, handled, system_paths[i].path,
                        system_paths[i].access, true);
        if (rc != MOAT_OK)
            goto out;
    }
    for (size_t i = 0; ro_extra && ro_extra[i]; i++) {
        rc = allow_path(ruleset_fd, handled, ro_extra[i], ACCESS_RO, true);
        if (rc != MOAT_OK)
            goto out;
    }

    /* Required to restrict oneself without CAP_SYS_ADMIN; it also keeps
     * set-uid programs from gaining privileges in a confined process. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        moat_log(MOAT_LOG_ERROR, "cannot set no_new_privs", "{s:s}", "error",
                 strerror(errno));
        rc = MOAT_EIO;
        goto out;
    }
    if (ll_restrict_self(ruleset_fd, 0) != 0) {
        moat_log(MOAT_LOG_ERROR, "landlock restrict_self failed", "{s:s}",
                 "error", strerror(errno));
        rc = MOAT_EIO;
        goto out;
    }
    rc = drop_capabilities();
    if (rc != MOAT_OK)
        goto out;
    *enforced = true;
    moat_log(MOAT_LOG_INFO, "sandbox enforced", "{s:i, s:s}", "landlock_abi",
             (int)abi, "rw_dir", rw_dir ? rw_dir : "");
out:
    close(ruleset_fd);
    return rc;
}

static bool dsn_file_key(const char *key, size_t n)
{
    static const char *const keys[] = {"passfile", "sslrootcert", "sslcert",
                                       "sslkey", "sslcrl"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(keys); i++)
        if (strlen(keys[i]) == n && strncmp(key, keys[i], n) == 0)
            return true;
    return false;
}

#define DSN_MAX_FILES 8

char **moat_sandbox_dsn_files(const char *dsn)
{
    if (!dsn)
        return NULL;
    char **out = moat_xcalloc(DSN_MAX_FILES + 1, sizeof(*out));
    size_t nout = 0;
    bool uri = strncmp(dsn, "postgresql://", 13) == 0 ||
               strncmp(dsn, "postgres://", 11) == 0;
    const char *p = uri ? strchr(dsn, '?') : dsn;
    char val[PATH_MAX];
    while (p && *p && nout < DSN_MAX_FILES) {
        if (uri) {
            /* ?key=value&key=value (percent-escapes are not decoded). */
            p++;
            const char *key = p;
            size_t n = strcspn(p, "=&");
            p += n;
            if (*p != '=')
                continue;
            size_t vn = strcspn(++p, "&");
            if (dsn_file_key(key, n) && vn > 0 && vn < sizeof(val))
                out[nout++] = moat_xstrndup(p, vn);
            p += vn;
            continue;
        }
        /* key = value, the value bare or in single quotes, with
         * backslash escapes in either. */
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        const char *key = p;
        size_t n = strcspn(p, " \t\n\r=");
        p += n;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=')
            break;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        bool quoted = *p == '\'';
        p += quoted;
        size_t vn = 0;
        bool ok = true;
        while (*p && (quoted ? *p != '\'' : !strchr(" \t\n\r", *p))) {
            if (*p == '\\' && p[1])
                p++;
            if (vn + 1 >= sizeof(val))
                ok = false;
            else
                val[vn++] = *p;
            p++;
        }
        if (quoted && *p != '\'')
            break;
        p += quoted;
        val[vn] = '\0';
        if (ok && vn > 0 && dsn_file_key(key, n))
            out[nout++] = moat_xstrdup(val);
    }
    if (nout == 0) {
        free(out);
        return NULL;
    }
    return out;
}
