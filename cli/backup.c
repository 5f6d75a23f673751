/*
 * backup.c - `moat backup` and `moat restore` (see backup.h and
 * docs/operations.md). The CLI never opens a service's database: the
 * service copies its own store (POST /v1/admin/backup); the CLI moves the
 * copy out of the data directory, keeps the retention, verifies copies
 * read-only, and puts a copy back while the service is stopped.
 */
#include "moat/common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moat/backup.h"
#include "moat/buf.h"

#include "backup.h"
#include "cli.h"

#define BACKUP_CALL_TIMEOUT_MS 120000
#define RESTORE_TIMEOUT_MS     60000
#define RESTORE_POLL_MS        50

char *cli_backup_root(const struct deploy *d, const char *service)
{
    return moat_xasprintf("%s/backups/%s", d->var_dir, service);
}

/* mkdir -p, 0700. */
static int mkdirs(const char *path)
{
    char *p = moat_xstrdup(path);
    int rc = MOAT_OK;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            rc = MOAT_EIO;
            break;
        }
        *s = saved;
        if (!saved)
            break;
    }
    free(p);
    return rc;
}

/* Copy the file from to `to` (created 0600, synced). */
static int copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return MOAT_EIO;
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = out < 0 ? MOAT_EIO : MOAT_OK;
    char buf[65536];
    ssize_t n;
    while (rc == MOAT_OK && (n = read(in, buf, sizeof(buf))) != 0) {
        if (n < 0 || write(out, buf, (size_t)n) != n)
            rc = MOAT_EIO;
    }
    if (out >= 0 && (fsync(out) != 0 || close(out) != 0))
        rc = MOAT_EIO;
    close(in);
    return rc;
}

/* rm -r of a directory of plain files. */
static void remove_backup_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                char *p = moat_xasprintf("%s/%s", dir, e->d_name);
                unlink(p);
                free(p);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Move dir from to `to`: rename, else copy each file and remove. */
static int move_dir(const char *from, const char *to)
{
    if (rename(from, to) == 0)
        return MOAT_OK;
    if (errno != EXDEV || mkdir(to, 0700) != 0)
        return MOAT_EIO;
    DIR *d = opendir(from);
    int rc = d ? MOAT_OK : MOAT_EIO;
    struct dirent *e;
    while (rc == MOAT_OK && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *a = moat_xasprintf("%s/%s", from, e->d_name);
        char *b = moat_xasprintf("%s/%s", to, e->d_name);
        rc = copy_file(a, b);
        free(a);
        free(b);
    }
    if (d)
        closedir(d);
    if (rc == MOAT_OK)
        remove_backup_dir(from);
    return rc;
}

/* The ids of service's backups in root, oldest first (names sort by
 * time). Caller frees with json_decref. */
static json_t *list_ids(const char *root, const char *service)
{
    json_t *ids = json_array();
    struct dirent **names = NULL;
    int n = scandir(root, &names, NULL, alphasort);
    size_t plen = strlen(service);
    for (int i = 0; i < n; i++) {
        const char *id = names[i]->d_name;
        if (strncmp(id, service, plen) == 0 && id[plen] == '-' &&
            moat_backup_id_valid(id))
            json_array_append_new(ids, json_string(id));
        free(names[i]);
    }
    free(names);
    return ids;
}

/* Keep the newest `keep` backups of svc, and always just_taken. */
static void apply_retention(const char *root, const struct deploy_service *svc,
                            const char *just_taken)
{
    json_t *ids = list_ids(root, svc->name);
    unsigned keep =
        svc->backup_keep ? svc->backup_keep : DEPLOY_BACKUP_KEEP_DEFAULT;
    size_t i = 0;
    while (json_array_size(ids) > keep && i < json_array_size(ids)) {
        const char *id = json_string_value(json_array_get(ids, i));
        if (strcmp(id, just_taken) == 0) {
            i++;
            continue;
        }
        char *dir = moat_xasprintf("%s/%s", root, id);
        remove_backup_dir(dir);
        free(dir);
        json_array_remove(ids, i);
    }
    json_decref(ids);
}

/* The detail of a problem+json body, or the body itself. */
static void print_problem(const char *what, long status, const char *body)
{
    json_t *j = json_loads(body ? body : "", 0, NULL);
    const char *detail = json_string_value(json_object_get(j, "detail"));
    cli_error("%s: HTTP %ld: %s", what, status,
              detail ? detail : (body && *body ? body : "(no body)"));
    json_decref(j);
}

int cli_backup_take(const struct deploy *d, const struct deploy_service *svc,
                    char **dir)
{
    if (dir)
        *dir = NULL;
    if (svc->engine == DEPLOY_ENGINE_NONE) {
        cli_error("%s has no store to back up", svc->name);
        return MOAT_EINVAL;
    }
    /* Names sort by time: YYYYMMDDTHHMMSS.mmmZ. */
    int64_t ms = moat_wall_ms();
    time_t now = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&now, &tm);
    char sec[16], ts[24];
    strftime(sec, sizeof(sec), "%Y%m%dT%H%M%S", &tm);
    snprintf(ts, sizeof(ts), "%s.%03dZ", sec, (int)(ms % 1000));
    unsigned char r[2];
    moat_random_bytes(r, sizeof(r));
    char hex[5];
    moat_hex(hex, r, sizeof(r));
    char *id = moat_xasprintf("%s-%s-%s", svc->name, ts, hex);
    char *path = moat_xasprintf("/v1/admin/backup?id=%s", id);
    long status = 0;
    char *body = NULL;
    char *root = cli_backup_root(d, svc->name);
    char *staging =
        moat_xasprintf("%s/%s/%s", svc->data_dir, MOAT_BACKUP_STAGING, id);
    char *target = moat_xasprintf("%s/%s", root, id);
    int rc = cli_operator_call(d, svc, "POST", path, NULL,
                               BACKUP_CALL_TIMEOUT_MS, &status, &body);
    if (rc != MOAT_OK)
        goto out;
    if (status == 404) {
        /* No such route: a program outside moat's skeleton. */
        fprintf(stderr, "%s: does not back itself up (no /v1/admin/backup)\n",
                svc->name);
        rc = MOAT_ENOTFOUND;
        goto out;
    }
    if (status != 201) {
        char *what = moat_xasprintf("backup of %s", svc->name);
        print_problem(what, status, body);
        free(what);
        rc = MOAT_EIO;
        goto out;
    }
    if (mkdirs(root) != MOAT_OK || move_dir(staging, target) != MOAT_OK) {
        cli_error("cannot move %s to %s: %s", staging, target, strerror(errno));
        rc = MOAT_EIO;
        goto out;
    }
    apply_retention(root, svc, id);
    if (dir)
        *dir = moat_xstrdup(target);
out:
    free(body);
    free(path);
    free(id);
    free(root);
    free(staging);
    free(target);
    return rc;
}

char *cli_backup_resolve(const struct deploy *d,
                         const struct deploy_service *svc, const char *backup)
{
    char *dir;
    if (strchr(backup, '/')) {
        char cwd[4096];
        dir = backup[0] == '/' || !getcwd(cwd, sizeof(cwd))
                  ? moat_xstrdup(backup)
                  : deploy_path_join(cwd, backup);
    } else if (svc && moat_backup_id_valid(backup)) {
        char *root = cli_backup_root(d, svc->name);
        dir = moat_xasprintf("%s/%s", root, backup);
        free(root);
    } else {
        cli_error("backup '%s' is neither a directory nor an id of %s's "
                  "backups",
                  backup, svc ? svc->name : "a service");
        return NULL;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        cli_error("no backup at %s", dir);
        free(dir);
        return NULL;
    }
    return dir;
}

int cli_backup_verify(const char *dir, bool quiet)
{
    json_t *problems = json_array();
    json_t *m = NULL;
    int rc = moat_backup_verify(dir, problems, &m);
    if (!quiet) {
        size_t i;
        json_t *p;
        json_array_foreach(problems, i, p)
            fprintf(stderr, "  %s\n", json_string_value(p));
        if (rc == MOAT_OK) {
            json_t *ob = json_object_get(m, "outbox");
            printf("ok: %s (%s, %s, schema %lld, %zu file(s), outbox head "
                   "%s%lld, %zu cursor(s))\n",
                   dir, json_string_value(json_object_get(m, "service")),
                   json_string_value(json_object_get(m, "engine")),
                   (long long)json_integer_value(
                       json_object_get(m, "schema_version")),
                   json_array_size(json_object_get(m, "files")),
                   json_is_object(ob) ? "" : "none ",
                   (long long)json_integer_value(json_object_get(ob, "head")),
                   json_object_size(json_object_get(m, "cursors")));
        } else {
            cli_error("backup %s is damaged (%zu problem(s))", dir,
                      json_array_size(problems));
        }
    }
    json_decref(m);
    json_decref(problems);
    return rc;
}

/* ---- restore ---- */

static char *hold_path(const struct deploy *d, const char *service)
{
    return moat_xasprintf("%s/hold/%s", d->var_dir, service);
}

/* The supervisor's pid from moat.state, 0 when unknown. */
static pid_t supervisor_pid(const struct deploy *d)
{
    char *path = cli_state_path(d);
    json_t *st = json_load_file(path, 0, NULL);
    free(path);
    pid_t pid = (pid_t)json_integer_value(json_object_get(st, "pid"));
    json_decref(st);
    return pid;
}

/* The service's status in moat.state ("" when unknown) into out. */
static void state_status(const struct deploy *d, const char *service, char *out,
                         size_t len)
{
    out[0] = '\0';
    char *path = cli_state_path(d);
    json_t *st = json_load_file(path, 0, NULL);
    free(path);
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "services"), i, s)
    {
        if (strcmp(json_string_value(json_object_get(s, "name")) ?: "",
                   service) == 0)
            snprintf(out, len, "%s",
                     json_string_value(json_object_get(s, "status")) ?: "");
    }
    json_decref(st);
}

/* Wake the supervisor and wait until the service's status is want. */
static int wait_status(const struct deploy *d, const char *service,
                       const char *want, long timeout_ms)
{
    pid_t pid = supervisor_pid(d);
    if (pid > 0)
        kill(pid, SIGUSR1);
    uint64_t deadline = moat_mono_ms() + (uint64_t)timeout_ms;
    char st[32] = "";
    while (moat_mono_ms() < deadline) {
        state_status(d, service, st, sizeof(st));
        if (strcmp(st, want) == 0)
            return MOAT_OK;
        struct timespec ts = {0, RESTORE_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    cli_error("%s: still '%s' after %ld ms (waiting for '%s')", service, st,
              timeout_ms, want);
    return MOAT_ETIMEDOUT;
}

/* Put the backup's store in place of svc's (the service is stopped). */
static int replace_store(const struct deploy_service *svc, const char *dir,
                         json_t *m)
{
    const char *engine = json_string_value(json_object_get(m, "engine"));
    const char *rel = json_string_value(json_object_get(m, "store"));
    const char *file = json_string_value(json_object_get(
        json_array_get(json_object_get(m, "files"), 0), "name"));
    char *target = deploy_path_join(svc->data_dir, rel);
    if (strcmp(target, svc->data_dir) == 0 ||
        strncmp(target, svc->data_dir, strlen(svc->data_dir)) != 0) {
        cli_error("the manifest's store '%s' is not inside %s", rel,
                  svc->data_dir);
        free(target);
        return MOAT_EINVAL;
    }
    char *from = moat_xasprintf("%s/%s", dir, file);
    int rc = MOAT_EIO;
    if (strcmp(engine, "sqlite") == 0) {
        /* The old WAL must not be replayed onto the restored file. */
        char *wal = moat_xasprintf("%s-wal", target);
        char *shm = moat_xasprintf("%s-shm", target);
        char *tmp = moat_xasprintf("%s.restore", target);
        if ((unlink(wal) == 0 || errno == ENOENT) &&
            (unlink(shm) == 0 || errno == ENOENT) &&
            copy_file(from, tmp) == MOAT_OK && rename(tmp, target) == 0)
            rc = MOAT_OK;
        else
            unlink(tmp);
        free(wal);
        free(shm);
        free(tmp);
    } else {
        char *data = moat_xasprintf("%s/data.mdb", target);
        char *lock = moat_xasprintf("%s/lock.mdb", target);
        char *tmp = moat_xasprintf("%s/data.mdb.restore", target);
        if (mkdirs(target) == MOAT_OK && copy_file(from, tmp) == MOAT_OK &&
            rename(tmp, data) == 0 && (unlink(lock) == 0 || errno == ENOENT))
            rc = MOAT_OK;
        else
            unlink(tmp);
        free(data);
        free(lock);
        free(tmp);
    }
    if (rc != MOAT_OK)
        cli_error("cannot put %s in place of %s: %s", from, target,
                  strerror(errno));
    free(from);
    free(target);
    return rc;
}

int cli_restore(const struct deploy *d, const struct deploy_service *svc,
                const char *dir, long timeout_ms)
{
    json_t *m = NULL;
    json_t *problems = json_array();
    int rc = moat_backup_verify(dir, problems, &m);
    if (rc != MOAT_OK) {
        cli_backup_verify(dir, false);
        cli_error("refusing to restore %s from a damaged backup", svc->name);
        rc = MOAT_EINVAL;
        goto out;
    }
    const char *service = json_string_value(json_object_get(m, "service"));
    const char *engine = json_string_value(json_object_get(m, "engine"));
    if (strcmp(service, svc->name) != 0 ||
        strcmp(engine, deploy_engine_name(svc->engine)) != 0) {
        cli_error("%s is a backup of %s (%s), not of %s (%s)", dir, service,
                  engine, svc->name, deploy_engine_name(svc->engine));
        rc = MOAT_EINVAL;
        goto out;
    }
    char *lock = cli_lock_path(d);
    bool supervised = cli_supervisor_running(lock);
    free(lock);
    char *hold = hold_path(d, svc->name);
    if (supervised) {
        char *holddir = moat_xasprintf("%s/hold", d->var_dir);
        int fd = -1;
        if (mkdirs(holddir) == MOAT_OK)
            fd = open(hold, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        free(holddir);
        if (fd < 0) {
            cli_error("cannot create %s: %s", hold, strerror(errno));
            rc = MOAT_EIO;
            free(hold);
            goto out;
        }
        close(fd);
        printf("%s: holding (the supervisor stops it)\n", svc->name);
        rc = wait_status(d, svc->name, "held", timeout_ms);
    } else {
        char *url = deploy_base_url(svc);
        char *health = moat_xasprintf("%s/healthz", url);
        long status = 0;
        if (cli_probe(health, CLI_PROBE_TIMEOUT_MS, &status) == MOAT_OK) {
            cli_error("%s answers at %s but no supervisor runs it: stop it "
                      "first",
                      svc->name, url);
            rc = MOAT_EINVAL;
        }
        free(url);
        free(health);
    }
    if (rc == MOAT_OK)
        rc = replace_store(svc, dir, m);
    if (rc == MOAT_OK) {
        json_t *head = json_object_get(json_object_get(m, "outbox"), "head");
        char epoch[48];
        rc = moat_epoch_new(svc->data_dir, json_integer_value(head),
                            json_string_value(json_object_get(m, "id")), epoch,
                            sizeof(epoch));
        if (rc == MOAT_OK)
            printf("%s: restored from %s (outbox head %lld, new feed epoch "
                   "%s)\n",
                   svc->name, dir, (long long)json_integer_value(head), epoch);
        else
            cli_error("cannot write the new feed epoch of %s", svc->name);
    }
    if (supervised) {
        /* Release the hold even after a failure: the service runs again
         * on whatever store it has. */
        unlink(hold);
        int wrc = wait_status(d, svc->name, "ready", timeout_ms);
        if (rc == MOAT_OK)
            rc = wrc;
        if (wrc == MOAT_OK)
            printf("%s: ready\n", svc->name);
    }
    free(hold);
out:
    json_decref(m);
    json_decref(problems);
    return rc;
}

/* ---- commands ---- */

static int backup_list(const struct deploy *d, const char *only)
{
    for (size_t i = 0; i < d->nservices; i++) {
        const struct deploy_service *svc = &d->services[i];
        if (svc->engine == DEPLOY_ENGINE_NONE ||
            (only && strcmp(only, svc->name) != 0))
            continue;
        char *root = cli_backup_root(d, svc->name);
        json_t *ids = list_ids(root, svc->name);
        for (size_t k = json_array_size(ids); k-- > 0;) {
            char *dir = moat_xasprintf(
                "%s/%s", root, json_string_value(json_array_get(ids, k)));
            char *mpath = moat_xasprintf("%s/%s", dir, MOAT_BACKUP_MANIFEST);
            json_t *m = json_load_file(mpath, 0, NULL);
            printf("%-14s %-24s %s\n", svc->name,
                   json_string_value(json_object_get(m, "created_at")) ?: "?",
                   dir);
            json_decref(m);
            free(mpath);
            free(dir);
        }
        json_decref(ids);
        free(root);
    }
    return CLI_EXIT_OK;
}

int cli_cmd_backup(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"all", no_argument, NULL, 'a'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    bool all = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        if (c == 'f')
            file = optarg;
        else if (c == 'a')
            all = true;
        else
            return cli_option_error("backup", c, argv);
    }
    int npos = argc - optind;
    const char *first = npos > 0 ? argv[optind] : NULL;
    if (first && strcmp(first, "verify") == 0) {
        if (npos != 2)
            return cli_usage_error("backup", "verify needs one BACKUP");
        const char *b = argv[optind + 1];
        char *dir = NULL;
        if (strchr(b, '/')) {
            dir = cli_backup_resolve(NULL, NULL, b);
        } else {
            /* An id: its service is the part before the time. */
            struct deploy *d = cli_load_deploy(file);
            if (!d)
                return CLI_EXIT_FAIL;
            const struct deploy_service *owner = NULL;
            for (size_t i = 0; i < d->nservices && !owner; i++) {
                size_t n = strlen(d->services[i].name);
                if (strncmp(b, d->services[i].name, n) == 0 && b[n] == '-')
                    owner = &d->services[i];
            }
            dir = cli_backup_resolve(d, owner, b);
            deploy_free(d);
        }
        if (!dir)
            return CLI_EXIT_FAIL;
        int rc = cli_backup_verify(dir, false);
        free(dir);
        return rc == MOAT_OK ? CLI_EXIT_OK : CLI_EXIT_FAIL;
    }
    bool list = first && strcmp(first, "list") == 0;
    if (list ? npos > 2 : (all ? npos != 0 : npos != 1))
        return cli_usage_error("backup", "give one SERVICE or --all");
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    int ret = CLI_EXIT_OK;
    if (list) {
        ret = backup_list(d, npos == 2 ? argv[optind + 1] : NULL);
        goto out;
    }
    if (!all && !deploy_find(d, first)) {
        ret =
            cli_usage_error("backup", "no service '%s' in %s", first, d->file);
        goto out;
    }
    for (size_t i = 0; i < d->nservices; i++) {
        const struct deploy_service *svc = &d->services[i];
        if (all ? svc->engine == DEPLOY_ENGINE_NONE
                : strcmp(svc->name, first) != 0)
            continue;
        char *dir = NULL;
        int rc = cli_backup_take(d, svc, &dir);
        if (rc == MOAT_OK) {
            char rel[4096];
            printf("%s: %s\n", svc->name,
                   cli_display_path(dir, rel, sizeof(rel)));
        } else if (!(all && rc == MOAT_ENOTFOUND)) {
            ret = CLI_EXIT_FAIL; /* --all skips what has no backup route */
        }
        free(dir);
    }
out:
    deploy_free(d);
    return ret;
}

int cli_cmd_restore(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"from", required_argument, NULL, 'F'},
        {"timeout", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL, *from = NULL;
    long timeout_ms = RESTORE_TIMEOUT_MS;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        if (c == 'f') {
            file = optarg;
        } else if (c == 'F') {
            from = optarg;
        } else if (c == 't') {
            int64_t s;
            if (moat_parse_i64(optarg, 1, 3600, &s) != MOAT_OK)
                return cli_usage_error("restore",
                                       "--timeout must be 1..3600 seconds");
            timeout_ms = (long)s * 1000;
        } else {
            return cli_option_error("restore", c, argv);
        }
    }
    if (argc - optind != 1 || !from)
        return cli_usage_error("restore", "usage: moat restore SERVICE "
                                          "--from BACKUP");
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    int ret = CLI_EXIT_FAIL;
    const struct deploy_service *svc = deploy_find(d, argv[optind]);
    if (!svc) {
        ret = cli_usage_error("restore", "no service '%s' in %s", argv[optind],
                              d->file);
        goto out;
    }
    char *dir = cli_backup_resolve(d, svc, from);
    if (dir && cli_restore(d, svc, dir, timeout_ms) == MOAT_OK)
        ret = CLI_EXIT_OK;
    free(dir);
out:
    deploy_free(d);
    return ret;
}
