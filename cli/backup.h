/*
 * cli/backup.h - `moat backup` and `moat restore` (docs/operations.md,
 * "Backups, verify, restore and feed epochs"), and the C entry points
 * other commands use (moat reconcile, the recovery drill, moat up's
 * backup cadence).
 *
 * Backups live in <var_dir>/backups/<service>/<id>/ (manifest.json and the
 * store's copy). Every function prints what went wrong to stderr and
 * returns a MOAT_* code; strings they return belong to the caller.
 */
#ifndef MOAT_CLI_BACKUP_H
#define MOAT_CLI_BACKUP_H

#include <stdbool.h>

#include "deploy.h"

int cli_cmd_backup(int argc, char **argv);
int cli_cmd_restore(int argc, char **argv);

/* <var_dir>/backups/<service>; caller frees. */
char *cli_backup_root(const struct deploy *d, const char *service);

/*
 * Back up svc now (it must be running and have a store): asks the service
 * for the copy, moves it under cli_backup_root and applies the retention
 * of svc ("backup.keep", default 7). *dir (may be NULL) gets the backup's
 * directory. MOAT_OK, MOAT_EINVAL (no store), MOAT_ENOTFOUND (the program
 * has no backup route: the payment provider stand-in), MOAT_EIO.
 */
int cli_backup_take(const struct deploy *d, const struct deploy_service *svc,
                    char **dir);

/*
 * The directory of a backup given as a path (anything with a '/') or as
 * an id of svc's backups. NULL (printed) when it does not exist.
 */
char *cli_backup_resolve(const struct deploy *d,
                         const struct deploy_service *svc, const char *backup);

/* moat backup verify: MOAT_OK when intact; problems printed unless quiet. */
int cli_backup_verify(const char *dir, bool quiet);

/*
 * Restore svc from the backup directory dir: verify it, hold the service
 * (the running supervisor stops it and does not restart it), replace its
 * store, write a new feed epoch (base = the backup's outbox head), release
 * the hold and wait until it is ready (up to timeout_ms). Without a
 * supervisor only the files are replaced (svc must not be answering).
 * MOAT_OK, MOAT_EINVAL (bad backup, wrong service), MOAT_ETIMEDOUT,
 * MOAT_EIO.
 */
int cli_restore(const struct deploy *d, const struct deploy_service *svc,
                const char *dir, long timeout_ms);

#endif /* MOAT_CLI_BACKUP_H */
