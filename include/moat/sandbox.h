/*
 * moat/sandbox.h - a service confines itself to its own data directory.
 *
 * With Landlock (Linux >= 5.13) the process, after opening its data
 * directory and database, restricts its own filesystem access: full access
 * beneath its data directory, read-only (and execute) access to the system
 * paths it needs to run (libraries, /etc for TLS roots and name
 * resolution, /dev/urandom, /dev/null, /proc, /sys/devices/system/cpu),
 * nothing else. Only filesystem access is restricted here. The restriction
 * is inherited by threads and children and cannot be lifted.
 */
#ifndef MOAT_SANDBOX_H
#define MOAT_SANDBOX_H

#include <stdbool.h>

/* Landlock ABI version of the running kernel, or 0 if unavailable. */
int moat_sandbox_abi(void);

/*
 * Confine the process. Call it before starting any thread: Landlock
 * restricts the calling thread and what it creates afterwards, so with
 * other threads running this refuses with MOAT_EINVAL. rw_dir may be NULL
 * (no writable directory at all) and must exist otherwise; ro_extra is a
 * NULL-terminated list of further read-only paths (may be NULL). System
 * and ro_extra paths that do not exist are skipped. Sets *enforced to
 * whether a restriction was applied: false with MOAT_OK means the kernel
 * has no Landlock (the caller logs a warning and runs on). Any other
 * failure returns a negative code and the process must not continue
 * unconfined. Calling it again adds a further, never wider, layer.
 */
int moat_sandbox_confine(const char *rw_dir, const char *const *ro_extra,
                         bool *enforced);

/*
 * The files a libpq connection string names (passfile, sslrootcert,
 * sslcert, sslkey, sslcrl), in keyword/value form or as the query of a
 * postgresql:// URI: libpq reads them at every (re)connection, long after
 * the service confined itself, so they belong in ro_extra. Returns a
 * NULL-terminated array (caller frees each string and the array), or NULL
 * when dsn is NULL or names none. At most 8 paths of PATH_MAX each; a
 * malformed string yields what was read before the fault.
 */
char **moat_sandbox_dsn_files(const char *dsn);

#endif /* MOAT_SANDBOX_H */
