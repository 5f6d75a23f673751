/*
 * up.c - `moat up`: start every service of a deployment and supervise it.
 *
 * The supervisor is one thread and one loop: SIGCHLD, SIGINT, SIGTERM and
 * SIGHUP are blocked and taken synchronously with sigtimedwait(), whose
 * timeout is the nearest timer (a restart due after backoff, a readiness
 * probe). No signal handler runs, so no state is touched asynchronously.
 *
 * Lifecycle of a service (struct proc):
 *   pending -> starting (spawned, polling /readyz) -> ready
 *   ready/starting -- exits unexpectedly --> backoff -- delay --> starting
 *   any -- supervisor stops --> stopping -> stopped
 * During the initial start, a service that exits before it was ever ready,
 * or is not ready in time, is not retried: that is a configuration or code
 * error, so everything is stopped and the service's last log lines are
 * shown. A service of an earlier level that was ready and then dies while
 * a later level starts is restarted as at any other time.
 *
 * Order: services start by level (deploy.h: a gateway starts after every
 * service it routes to), each level once the previous one is ready. They
 * stop in reverse: gateways first, so no request is routed to a backend
 * that has already gone.
 *
 * Each service runs in its own process group so that Ctrl-C in the terminal
 * reaches only the supervisor, which then stops services in order; and with
 * PR_SET_PDEATHSIG so that a supervisor killed by SIGKILL does not leave
 * orphans holding the ports.
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "moat/auth.h"
#include "moat/buf.h"

#include "cli.h"
#include "pgcluster.h"
#include "secrets.h"

extern char **environ;

#define READY_TIMEOUT_MS   10000 /* per service, at start and restart */
#define READY_POLL_MS      25    /* /readyz poll interval while starting */
#define READY_SLOW_POLL_MS 1000  /* ... once READY_TIMEOUT_MS has passed */
#define BACKOFF_MIN_MS     100   /* first restart delay */
#define BACKOFF_MAX_MS     5000  /* the delay doubles up to this */
#define BACKOFF_RESET_MS   10000 /* ready this long: next delay is min */
#define STOP_TIMEOUT_MS    10000 /* per level, SIGTERM until SIGKILL */
#define KILL_WAIT_MS       2000  /* after SIGKILL, before giving up */
#define LOOP_MAX_WAIT_MS   1000  /* upper bound of one sigtimedwait */
#define FAIL_LOG_LINES     20    /* log lines shown for a failed start */
#define OPERATOR_COPY_MS   1000  /* refresh of an operator service's copy */
#define UP_OPERATOR_KEY    "MOAT_OPERATOR_KEY"
#define UP_REDIS_PASSWORD  "MOAT_REDIS_PASSWORD" /* in secrets.json */

enum proc_status {
    PS_PENDING,  /* not started yet */
    PS_STARTING, /* running, /readyz not yet 200 */
    PS_READY,    /* running, /readyz answered 200 since the last spawn */
    PS_BACKOFF,  /* exited unexpectedly; restart at restart_at */
    PS_STOPPING, /* SIGTERM sent */
    PS_STOPPED,  /* exited after we asked, or never started */
    PS_FAILED,   /* exited or never ready during the initial start */
    PS_HELD,     /* stopped on request (<var>/hold/<name>), not restarted */
};

static const char *const proc_status_names[] = {
    "pending",  "starting", "ready",  "backoff",
    "stopping", "stopped",  "failed", "held",
};

enum sup_status {
    SUP_STARTING,
    SUP_RUNNING,
    SUP_STOPPING,
    SUP_STOPPED,
    SUP_FAILED,
};

static const char *const sup_status_names[] = {
    "starting", "running", "stopping", "stopped", "failed",
};

struct proc {
    const struct deploy_service *svc; /* &view */
    /* The service as this instance sees it: a shallow copy of the
     * deployment's (members borrowed from sup.d) with listen, host and
     * port of the instance. */
    struct deploy_service view;
    size_t instance; /* 0-based index in the service's instances */
    char label[DEPLOY_NAME_MAX + 8]; /* "catalog", or "catalog#2" */
    char *program;                   /* absolute path; owned */
    char *log_path;                  /* owned */
    char *ready_url;                 /* owned */
    char *routes_env;     /* MOAT_GATEWAY_ROUTES value or NULL; owned */
    const char *nats_url; /* MOAT_NATS_URL or NULL; borrowed from sup.d */
    char *db_dsn;         /* MOAT_DB_DSN (engine postgres) or NULL; owned */
    uid_t run_uid;        /* run as this user (the cluster, as root), or 0 */
    gid_t run_gid;
    char **auth_env; /* "NAME=value" keys and secrets, NULL-ended; owned */
    pid_t pid;       /* 0 when not running */
    enum proc_status status;
    unsigned restarts;     /* spawns after the first */
    int64_t started_wall;  /* wall ms of the last spawn, 0 = never */
    uint64_t started_ms;   /* monotonic ms of the last spawn */
    uint64_t ready_ms;     /* monotonic ms it became ready, 0 = not yet */
    uint64_t next_probe;   /* monotonic ms of the next /readyz probe */
    uint64_t restart_at;   /* monotonic ms, in PS_BACKOFF */
    uint64_t backoff_ms;   /* delay of the next restart */
    bool warned_slow;      /* "not ready after 10 s" logged */
    char last_probe[48];   /* "HTTP 503", "connection refused" */
    char last_exit[48];    /* "exit status 1", "killed by signal 9" */
    char *hold_path;       /* <var>/hold/<name>: present = hold it; owned */
    bool holding;          /* stopping because of the hold */
    uint64_t hold_kill_at; /* monotonic ms: SIGKILL if still running */
    uint64_t next_backup;  /* monotonic ms of the next backup, 0 = none */
    pid_t backup_pid;      /* a `moat backup` child running, 0 = none */
};

struct sup {
    struct deploy *d; /* owned */
    char *file_abs;   /* absolute path of the deployment file; owned */
    struct proc *procs;
    size_t nprocs;
    enum sup_status status;
    int64_t started_wall;
    char *state_path;
    char *state_tmp;
    int lock_fd;
    int log_fd;            /* <var>/log/moat.log, -1 if it could not open */
    sigset_t sigs;         /* the signals we take with sigtimedwait */
    unsigned stop_signals; /* SIGINT/SIGTERM/SIGHUP received */
    bool dirty;            /* state file out of date */
    uint64_t copies_ms;    /* monotonic ms of the last write_state */
    pid_t audit_pid;       /* a `moat audit` an operator service asked for */
    char *audit_out;       /* its report: <data_dir>/audit.json; owned */
};

/* One line to stdout and moat.log: "<time> <message>". */
static void say(struct sup *s, const char *fmt, ...) MOAT_PRINTF(2, 3);

static void say(struct sup *s, const char *fmt, ...)
{
    char ts[25];
    moat_time_rfc3339(moat_wall_ms(), ts);
    struct moat_buf line = MOAT_BUF_INIT;
    moat_buf_printf(&line, "%s ", ts);
    va_list ap;
    va_start(ap, fmt);
    moat_buf_vprintf(&line, fmt, ap);
    va_end(ap);
    moat_buf_addch(&line, '\n');
    fputs(moat_buf_str(&line), stdout);
    fflush(stdout);
    if (s->log_fd >= 0 && write(s->log_fd, line.data, line.len) < 0) {
        /* The terminal copy is what matters; a full disk is not fatal. */
    }
    moat_buf_release(&line);
}

static void describe_exit(int wstatus, char *out, size_t len)
{
    if (WIFEXITED(wstatus))
        snprintf(out, len, "exit status %d", WEXITSTATUS(wstatus));
    else if (WIFSIGNALED(wstatus))
        snprintf(out, len, "killed by signal %d (%s)", WTERMSIG(wstatus),
                 strsignal(WTERMSIG(wstatus)));
    else
        snprintf(out, len, "wait status %d", wstatus);
}

/* ---- the state file ---- */

static json_t *time_or_null(int64_t wall_ms)
{
    if (!wall_ms)
        return json_null();
    char ts[25];
    moat_time_rfc3339(wall_ms, ts);
    return json_string(ts);
}

/* Write text and a newline to tmp, then rename it to path: readers see
 * the old file or the new one, never half of one. */
static bool replace_file(const char *tmp, const char *path, const char *text)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen(text);
    bool ok = fd >= 0 && write(fd, text, len) == (ssize_t)len &&
              write(fd, "\n", 1) == 1;
    if (fd >= 0 && close(fd) < 0)
        ok = false;
    return ok && rename(tmp, path) == 0;
}

/* A service that lists MOAT_OPERATOR_KEY in "secrets" acts as the
 * operator (the console, docs/console.md). */
static bool is_operator_service(const struct deploy_service *svc)
{
    for (size_t i = 0; i < svc->nsecrets; i++)
        if (strcmp(svc->secrets[i], UP_OPERATOR_KEY) == 0)
            return true;
    return false;
}

static uint64_t proc_rss_bytes(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    long pages = 0, rss = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

/*
 * An operator service is confined to its data directory, so the
 * supervisor hands it the state there (<data_dir>/moat.state), with what
 * only the supervisor may look at: each database's size on disk and each
 * process's resident memory. Rewritten on every change and every second.
 */
static void write_operator_copies(struct sup *s, json_t *root)
{
    bool any = false;
    for (size_t i = 0; i < s->nprocs; i++)
        any = any || is_operator_service(s->procs[i].svc);
    if (!any)
        return;
    json_t *services = json_object_get(root, "services");
    for (size_t i = 0; i < s->nprocs; i++) {
        const struct proc *p = &s->procs[i];
        json_t *o = json_array_get(services, i);
        json_object_set_new(
            o, "db_bytes",
            json_integer(
                (json_int_t)(p->svc->db ? cli_db_size(p->svc->db) : 0)));
        json_object_set_new(
            o, "rss_bytes",
            json_integer(
                (json_int_t)(p->pid > 0 ? proc_rss_bytes(p->pid) : 0)));
    }
    char *text = json_dumps(root, JSON_COMPACT);
    for (size_t i = 0; text && i < s->nprocs; i++) {
        const struct deploy_service *svc = s->procs[i].svc;
        if (!is_operator_service(svc))
            continue;
        char *path = moat_xasprintf("%s/moat.state", svc->data_dir);
        char *tmp = moat_xasprintf("%s.tmp", path);
        if (!replace_file(tmp, path, text))
            say(s, "moat: cannot write %s: %s", path, strerror(errno));
        free(path);
        free(tmp);
    }
    free(text);
}

static void write_state(struct sup *s)
{
    json_t *services = json_array();
    for (size_t i = 0; i < s->nprocs; i++) {
        const struct proc *p = &s->procs[i];
        const struct deploy_service *svc = p->svc;
        char *url = deploy_base_url(svc);
        json_array_append_new(
            services,
            json_pack("{s:s, s:o, s:s, s:s, s:s, s:s, s:o, s:s, s:i, s:o, "
                      "s:s, s:o}",
                      "name", svc->name, "pid",
                      p->pid ? json_integer(p->pid) : json_null(), "listen",
                      svc->listen, "url", url, "data_dir", svc->data_dir,
                      "engine", deploy_engine_name(svc->engine), "db",
                      svc->db ? json_string(svc->db) : json_null(), "log",
                      p->log_path, "restarts", (int)p->restarts, "started_at",
                      time_or_null(p->started_wall), "status",
                      proc_status_names[p->status], "last_exit",
                      p->last_exit[0] ? json_string(p->last_exit)
                                      : json_null()));
        /* The cluster's own connection strings name no password; a "dsn"
         * of the file's might. */
        if (p->db_dsn && !svc->dsn)
            json_object_set_new(json_array_get(services, i), "dsn",
                                json_string(p->db_dsn));
        if (svc->ninstances > 1) {
            json_t *o = json_array_get(services, json_array_size(services) - 1);
            json_object_set_new(o, "instance",
                                json_integer((int)p->instance + 1));
            json_object_set_new(o, "label", json_string(p->label));
        }
        free(url);
    }
    json_t *root = json_pack(
        "{s:i, s:s, s:s, s:i, s:s, s:o, s:o, s:I, s:o}", "version",
        CLI_STATE_VERSION, "deployment", s->d->name, "file", s->file_abs, "pid",
        (int)getpid(), "status", sup_status_names[s->status], "started_at",
        time_or_null(s->started_wall), "updated_at",
        time_or_null(moat_wall_ms()), "stop_timeout_ms",
        (json_int_t)(STOP_TIMEOUT_MS + KILL_WAIT_MS) *
            (s->d->max_level - s->d->min_level + 1),
        "services", services);
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    if (!text) {
        json_decref(root);
        say(s, "moat: cannot encode the state file");
        return;
    }
    if (!replace_file(s->state_tmp, s->state_path, text))
        say(s, "moat: cannot write %s: %s", s->state_path, strerror(errno));
    free(text);
    write_operator_copies(s, root);
    json_decref(root);
    s->dirty = false;
    s->copies_ms = moat_mono_ms();
}

/* ---- preparing the ground ---- */

/* mkdir -p with mode 0700 for every directory created. */
static int make_dirs(const char *path)
{
    char *p = moat_xstrdup(path);
    int rc = MOAT_OK;
    for (char *slash = p + 1;; slash++) {
        if (*slash != '/' && *slash != '\0')
            continue;
        char saved = *slash;
        *slash = '\0';
        if (mkdir(p, 0700) < 0 && errno != EEXIST) {
            rc = MOAT_EIO;
            break;
        }
        *slash = saved;
        if (saved == '\0')
            break;
    }
    struct stat st;
    if (rc == MOAT_OK && (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)))
        rc = MOAT_EIO;
    free(p);
    return rc;
}

/* A data directory is private to its service (docs/design.md invariant 1). */
static int prepare_data_dir(struct sup *s, const struct deploy_service *svc)
{
    if (make_dirs(svc->data_dir) != MOAT_OK) {
        cli_error("%s: cannot create data directory %s: %s", svc->name,
                  svc->data_dir, strerror(errno));
        return MOAT_EIO;
    }
    struct stat st;
    if (stat(svc->data_dir, &st) == 0 && (st.st_mode & 077)) {
        if (chmod(svc->data_dir, 0700) < 0) {
            cli_error("%s: data directory %s is mode %03o and cannot be "
                      "made private: %s",
                      svc->name, svc->data_dir, st.st_mode & 0777,
                      strerror(errno));
            return MOAT_EIO;
        }
        say(s, "%s: data directory %s was mode %03o, now 0700", svc->name,
            svc->data_dir, st.st_mode & 0777);
    }
    return MOAT_OK;
}

/*
 * Try to bind the service's address ourselves: "port in use" is then a
 * clear message before anything starts, instead of a service that dies
 * with the reason somewhere in its log.
 */
static int check_port_free(const struct deploy_service *svc)
{
    struct addrinfo hints = {.ai_family = AF_INET,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)svc->port);
    int gai = getaddrinfo(svc->host, port, &hints, &ai);
    if (gai != 0) {
        cli_error("%s: cannot resolve listen host '%s': %s", svc->name,
                  svc->host, gai_strerror(gai));
        return MOAT_EINVAL;
    }
    int rc = MOAT_OK;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno == EADDRINUSE)
            cli_error("%s: %s is already in use (is another moat or the "
                      "service itself still running?)",
                      svc->name, svc->listen);
        else
            cli_error("%s: cannot listen on %s: %s", svc->name, svc->listen,
                      strerror(errno));
        rc = MOAT_EIO;
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return rc;
}

/* Check everything that can be checked before the first process starts. */
static int preflight(struct sup *s)
{
    int rc = MOAT_OK;
    for (size_t i = 0; i < s->nprocs; i++) {
        const struct proc *p = &s->procs[i];
        if (access(p->program, X_OK) < 0) {
            cli_error("%s: cannot execute %s: %s%s", p->label, p->program,
                      strerror(errno),
                      errno == ENOENT ? " (is it built? set \"binary\" in "
                                        "the deployment file to use another "
                                        "program)"
                                      : "");
            rc = MOAT_EINVAL;
        }
        if (prepare_data_dir(s, p->svc) != MOAT_OK)
            rc = MOAT_EIO;
        if (check_port_free(p->svc) != MOAT_OK)
            rc = MOAT_EIO;
    }
    return rc;
}

/*
 * The configuration of the nats-server moat up runs (deploy.h): JetStream
 * on, its store under the broker's data directory, the memory and file
 * limits of the deployment file, loopback (or the given) addresses.
 */
static int write_nats_conf(struct sup *s)
{
    const struct deploy *d = s->d;
    if (!d->broker)
        return MOAT_OK;
    const struct deploy_service *b = d->broker;
    char *path = moat_xasprintf("%s/nats.conf", b->data_dir);
    FILE *f = fopen(path, "we");
    if (!f) {
        cli_error("nats: cannot write %s: %s", path, strerror(errno));
        free(path);
        return MOAT_EIO;
    }
    fprintf(f,
            "# written by moat up from %s; edits are overwritten\n"
            "server_name: moat_%s\n"
            "listen: \"%s:%u\"\n"
            "http: \"%s:%u\"\n"
            "max_payload: 4MB\n"
            "jetstream {\n"
            "  store_dir: \"%s/jetstream\"\n"
            "  max_memory_store: %uMB\n"
            "  max_file_store: %uMB\n"
            "}\n",
            s->file_abs, d->name, d->nats_host, (unsigned)d->nats_port, b->host,
            (unsigned)b->port, b->data_dir, d->nats_max_memory_mb,
            d->nats_max_file_mb);
    int rc = fclose(f) == 0 ? MOAT_OK : MOAT_EIO;
    if (rc != MOAT_OK)
        cli_error("nats: cannot write %s: %s", path, strerror(errno));
    free(path);
    return rc;
}

/*
 * The redis-server moat up runs (deploy.h): a cache, so no persistence;
 * loopback; a memory bound with volatile-lru (every entry has a TTL, the
 * gateways' feed cursors have none and are never evicted); protected mode
 * and a password generated once into secrets.json, which the gateways read
 * from <var_dir>/secrets/redis.password. Both files are mode 0600.
 */
static int write_secret_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return MOAT_EIO;
    size_t len = strlen(text);
    bool ok = fchmod(fd, 0600) == 0 && write(fd, text, len) == (ssize_t)len;
    return close(fd) == 0 && ok ? MOAT_OK : MOAT_EIO;
}

static int write_redis_conf(struct sup *s)
{
    const struct deploy *d = s->d;
    const struct deploy_service *b = d->redis;
    if (!b)
        return MOAT_OK;
    struct cli_secrets *sec = NULL;
    if (cli_secrets_load(&sec, d->var_dir) != MOAT_OK)
        return MOAT_EIO;
    const char *pw = cli_secret_shared(sec, UP_REDIS_PASSWORD);
    char *dir = moat_xasprintf("%s/secrets", d->var_dir);
    char *pwfile = moat_xasprintf("%s/redis.password", dir);
    char *conf = moat_xasprintf("%s/redis.conf", b->data_dir);
    char *text = moat_xasprintf(
        "# written by moat up from %s; edits are overwritten\n"
        "bind %s\nport %u\nprotected-mode yes\nrequirepass \"%s\"\n"
        "save \"\"\nappendonly no\n"
        "maxmemory %umb\nmaxmemory-policy volatile-lru\n"
        "dir \"%s\"\ndaemonize no\nlogfile \"\"\n",
        s->file_abs, b->host, (unsigned)b->port, pw, d->redis_max_memory_mb,
        b->data_dir);
    int rc = cli_secrets_save(sec);
    if (rc == MOAT_OK && (mkdir(dir, 0700) == 0 || errno == EEXIST))
        rc = write_secret_file(pwfile, pw);
    else
        rc = MOAT_EIO;
    if (rc == MOAT_OK)
        rc = write_secret_file(conf, text);
    if (rc != MOAT_OK)
        cli_error("redis: cannot write %s or %s: %s", conf, pwfile,
                  strerror(errno));
    sodium_memzero(text, strlen(text));
    free(text);
    free(conf);
    free(pwfile);
    free(dir);
    cli_secrets_free(sec);
    return rc;
}

/* MOAT_REDIS_* for a gateway (a service with routes) of a deployment with
 * "redis"; appended to env at k. Returns how many (at most 3). */
static size_t redis_env(const struct sup *s, const struct proc *p, char **env)
{
    const struct deploy *d = s->d;
    if (!d->redis_url || !p->svc->nroutes)
        return 0;
    size_t k = 0;
    env[k++] = moat_xasprintf("MOAT_REDIS_URL=%s", d->redis_url);
    env[k++] = moat_xasprintf("MOAT_GATEWAY_CACHE_PREFIX=moat:%s:c1", d->name);
    if (d->redis)
        env[k++] = moat_xasprintf(
            "MOAT_REDIS_PASSWORD_FILE=%s/secrets/redis.password", d->var_dir);
    return k;
}

/*
 * The private PostgreSQL cluster (pgcluster.h): initdb on the first run,
 * its configuration on every run, and the user it runs as.
 */
static int prepare_postgres(struct sup *s)
{
    if (!s->d->pg)
        return MOAT_OK;
    uid_t uid = 0;
    gid_t gid = 0;
    int rc = cli_pg_prepare(s->d, &uid, &gid);
    for (size_t i = 0; i < s->nprocs; i++) {
        if (s->procs[i].svc->pg_cluster) {
            s->procs[i].run_uid = uid;
            s->procs[i].run_gid = gid;
        }
    }
    return rc;
}

/* ---- processes ---- */

static bool env_overridden(const char *entry, const struct deploy_service *svc)
{
    static const char *const ours[] = {
        "MOAT_SERVICE_NAME",   "MOAT_LISTEN",   "MOAT_DATA_DIR",
        "MOAT_GATEWAY_ROUTES", "MOAT_TLS_CERT", "MOAT_TLS_KEY",
        "MOAT_TLS_CA",         "MOAT_DB_DSN",   "MOAT_INSTANCES",
        "MOAT_INSTANCE_URLS"};
    size_t n = strcspn(entry, "=");
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ours); i++)
        if (strlen(ours[i]) == n && strncmp(entry, ours[i], n) == 0)
            return true;
    for (size_t i = 0; i < svc->nenv; i++)
        if (strlen(svc->env[i].name) == n &&
            strncmp(entry, svc->env[i].name, n) == 0)
            return true;
    return false;
}

/* The child's environment: ours, minus what the deployment sets, plus the
 * deployment's. Caller frees each string and the array. */
static char **child_env(const struct sup *s, const struct proc *p)
{
    const struct deploy_service *svc = p->svc;
    size_t n = 0;
    while (environ[n])
        n++;
    size_t nauth = 0;
    while (p->auth_env && p->auth_env[nauth])
        nauth++;
    char **env = moat_xcalloc(n + svc->nenv + nauth + 12, sizeof(*env));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!env_overridden(environ[i], svc))
            env[k++] = moat_xstrdup(environ[i]);
    env[k++] = moat_xasprintf("MOAT_SERVICE_NAME=%s", svc->name);
    env[k++] =
        moat_xasprintf("MOAT_LISTEN=%s:%u", svc->host, (unsigned)svc->port);
    env[k++] = moat_xasprintf("MOAT_DATA_DIR=%s", svc->data_dir);
    if (svc->ninstances > 1) /* the feed then watches the shared outbox */
        env[k++] = moat_xasprintf("MOAT_INSTANCES=%zu", svc->ninstances);
    char *map = deploy_instance_map(s->d);
    if (map)
        env[k++] = moat_xasprintf("MOAT_INSTANCE_URLS=%s", map);
    free(map);
    if (p->routes_env)
        env[k++] = moat_xasprintf("MOAT_GATEWAY_ROUTES=%s", p->routes_env);
    if (p->nats_url)
        env[k++] = moat_xasprintf("MOAT_NATS_URL=%s", p->nats_url);
    k += redis_env(s, p, env + k);
    if (p->db_dsn)
        env[k++] = moat_xasprintf("MOAT_DB_DSN=%s", p->db_dsn);
    for (size_t i = 0; i < nauth; i++)
        env[k++] = moat_xstrdup(p->auth_env[i]);
    /* Values with secret references come expanded in auth_env. With TLS,
     * URLs of the deployment's services read https://. */
    for (size_t i = 0; i < svc->nenv; i++) {
        if (deploy_has_secret_refs(svc->env[i].value))
            continue;
        char *moved = deploy_moved_urls(s->d, svc->env[i].value);
        char *v =
            s->d->tls ? deploy_tls_urls(s->d, moved) : moat_xstrdup(moved);
        env[k++] = moat_xasprintf("%s=%s", svc->env[i].name, v);
        free(moved);
        free(v);
    }
    env[k] = NULL;
    return env;
}

/*
 * Identities and secrets for every service (see cli/secrets.h): its own key,
 * the keys of exactly the services that call it, the public allow-list of
 * a gateway, and the shared secrets it lists. Least privilege: nobody gets
 * a key it does not need.
 */
static const char *shared_secret(void *arg, const char *name)
{
    return cli_secret_shared(arg, name);
}

static int make_auth_env(struct sup *s)
{
    struct cli_secrets *sec = NULL;
    /* Supervisors of several hosts may share var_dir (and so
     * secrets.json): one at a time reads, completes and writes it, and
     * each completes it for every service of every host. */
    char *lock = moat_xasprintf("%s/secrets.lock", s->d->var_dir);
    int lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(lock);
    if (lock_fd >= 0 && flock(lock_fd, LOCK_EX) < 0) {
        close(lock_fd);
        lock_fd = -1;
    }
    int rc = cli_secrets_load(&sec, s->d->var_dir);
    if (rc != MOAT_OK) {
        if (lock_fd >= 0)
            close(lock_fd);
        return MOAT_EIO;
    }
    for (size_t i = 0; s->d->selected_host && i < s->d->nservices; i++) {
        const struct deploy_service *svc = &s->d->services[i];
        cli_secret_service_key(sec, svc->name);
        for (size_t j = 0; j < svc->nsecrets; j++)
            if (strcmp(svc->secrets[j], UP_OPERATOR_KEY) != 0)
                cli_secret_shared(sec, svc->secrets[j]);
    }
    for (size_t i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        const struct deploy_service *svc = p->svc;
        if (svc->pg_cluster)
            continue; /* not a service: no identity, no secrets */
        char **env = moat_xcalloc(svc->nsecrets + svc->nenv + 7, sizeof(*env));
        size_t k = 0;
        if (s->d->tls) {
            /* Its own key and certificate, and the CA: nothing else of
             * <var_dir>/certs. An operator service (the console) signs its
             * calls as the operator, and a service accepts a token only
             * over a certificate of the same name: it gets the operator's
             * certificate instead of one of its own (docs/security.md). */
            const char *ident =
                is_operator_service(svc) ? CLI_OPERATOR : svc->name;
            char *cert = cli_cert_path(s->d, ident, "crt");
            char *key = cli_cert_path(s->d, ident, "key");
            char *ca = cli_cert_path(s->d, "ca", "crt");
            env[k++] = moat_xasprintf("MOAT_TLS_CERT=%s", cert);
            env[k++] = moat_xasprintf("MOAT_TLS_KEY=%s", key);
            env[k++] = moat_xasprintf("MOAT_TLS_CA=%s", ca);
            free(cert);
            free(key);
            free(ca);
        }
        env[k++] = moat_xasprintf("MOAT_SERVICE_KEY=%s",
                                  cli_secret_service_key(sec, svc->name));
        /* Each caller's pair key towards this service, never the caller's
         * own key (moat_auth_pair_key): a compromised service cannot speak
         * as its callers to anyone else. The last round is the operator
         * (the moat CLI on this machine, reading secrets.json), which may
         * call every service's admin routes. */
        struct moat_buf peers = MOAT_BUF_INIT;
        /* Callers on every host, not only the services run here. */
        const struct deploy *d = s->d;
        for (size_t j = 0; j <= d->nservices; j++) {
            const char *caller =
                j < d->nservices ? d->services[j].name : CLI_OPERATOR;
            if (j < d->nservices && (strcmp(caller, svc->name) == 0 ||
                                     !deploy_calls(&d->services[j], svc)))
                continue;
            char *pair = NULL;
            if (moat_auth_pair_key(cli_secret_service_key(sec, caller),
                                   svc->name, &pair) != MOAT_OK)
                moat_die("cannot derive a pair key for %s", caller);
            moat_buf_printf(&peers, "%s%s:%s", peers.len ? "," : "", caller,
                            pair);
            sodium_memzero(pair, strlen(pair));
            free(pair);
        }
        env[k++] = moat_xasprintf("MOAT_PEER_KEYS=%s", moat_buf_str(&peers));
        sodium_memzero(peers.data, peers.len);
        moat_buf_release(&peers);
        char *pub = deploy_gateway_public(svc);
        if (pub)
            env[k++] = moat_xasprintf("MOAT_GATEWAY_PUBLIC=%s", pub);
        free(pub);
        /* MOAT_OPERATOR_KEY is not shared but the operator's own key:
         * the service then speaks as the operator (the console). */
        for (size_t j = 0; j < svc->nsecrets; j++)
            env[k++] =
                moat_xasprintf("%s=%s", svc->secrets[j],
                               strcmp(svc->secrets[j], UP_OPERATOR_KEY) == 0
                                   ? cli_secret_service_key(sec, CLI_OPERATOR)
                                   : cli_secret_shared(sec, svc->secrets[j]));
        /* "${secret:NAME}" in env values: the same generated secret under
         * another variable, e.g. the provider's list of merchant keys. */
        for (size_t j = 0; j < svc->nenv; j++) {
            if (!deploy_has_secret_refs(svc->env[j].value))
                continue;
            char *v =
                deploy_expand_secrets(svc->env[j].value, shared_secret, sec);
            env[k++] = moat_xasprintf("%s=%s", svc->env[j].name, v);
            sodium_memzero(v, strlen(v));
            free(v);
        }
        p->auth_env = env;
    }
    rc = cli_secrets_save(sec);
    cli_secrets_free(sec);
    if (lock_fd >= 0)
        close(lock_fd);
    return rc;
}

static void free_env(char **env)
{
    for (size_t i = 0; env[i]; i++)
        free(env[i]);
    free(env);
}

/*
 * Between fork and exec only async-signal-safe calls: everything the child
 * needs (environment, argv, descriptors) is prepared before fork.
 */
static MOAT_NORETURN void child_fail(int fd, const char *msg, int code)
{
    /* fd is the service's log: say there why nothing else follows. */
    if (write(fd, msg, strlen(msg)) < 0) {
        /* nowhere else to report it */
    }
    _exit(code);
}

static MOAT_NORETURN void exec_child(const struct proc *p, int log_fd,
                                     int null_fd, char **env, pid_t parent)
{
    setpgid(0, 0);
    /* First, as a change of user clears the parent-death signal. */
    if (p->run_uid && (setgroups(0, NULL) < 0 || setgid(p->run_gid) < 0 ||
                       setuid(p->run_uid) < 0))
        child_fail(log_fd, "moat: cannot switch to the server's user\n", 126);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
        child_fail(log_fd, "moat: supervisor gone before exec\n", 126);
    /* Blocked signals and ignored dispositions survive exec. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(SIGPIPE, &dfl, NULL);
    if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
        dup2(log_fd, STDERR_FILENO) < 0)
        child_fail(log_fd, "moat: cannot redirect stdio\n", 126);
    if (chdir(p->svc->data_dir) < 0)
        child_fail(STDERR_FILENO, "moat: cannot enter the data directory\n",
                   126);
    char *argv[4] = {p->program, NULL};
    for (size_t i = 0; p->svc->args && p->svc->args[i] && i < 2; i++)
        argv[i + 1] = p->svc->args[i];
    execve(p->program, argv, env);
    child_fail(STDERR_FILENO, "moat: execve of the service program failed\n",
               127);
}

static int spawn(struct sup *s, struct proc *p)
{
    int rc = MOAT_EIO;
    char **env = NULL;
    int null_fd = -1;
    int log_fd =
        open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        say(s, "%s: cannot open log %s: %s", p->label, p->log_path,
            strerror(errno));
        goto cleanup;
    }
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
        say(s, "%s: cannot open /dev/null: %s", p->label, strerror(errno));
        goto cleanup;
    }
    env = child_env(s, p);
    fflush(stdout); /* or the child would inherit buffered output */
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        say(s, "%s: fork failed: %s", p->label, strerror(errno));
        goto cleanup;
    }
    if (pid == 0)
        exec_child(p, log_fd, null_fd, env, parent);
    /* Also here, so that kill(-pid) works even before the child ran. */
    setpgid(pid, pid);

    p->pid = pid;
    p->status = PS_STARTING;
    p->started_wall = moat_wall_ms();
    p->started_ms = moat_mono_ms();
    p->ready_ms = 0;
    p->next_probe = p->started_ms;
    p->warned_slow = false;
    p->last_probe[0] = '\0';
    s->dirty = true;
    say(s, "%s: started pid %d (%s, listen %s)", p->label, (int)pid, p->program,
        p->svc->listen);
    rc = MOAT_OK;

cleanup:
    if (env)
        free_env(env);
    if (log_fd >= 0)
        close(log_fd);
    if (null_fd >= 0)
        close(null_fd);
    return rc;
}

static void signal_proc(struct proc *p, int sig)
{
    if (p->pid <= 0)
        return;
    /* The postmaster tells its own processes what to do; SIGINT to them
     * would mean something else (cancel a query, request a checkpoint). */
    if (p->svc->pg_cluster && sig != SIGKILL) {
        kill(p->pid, sig);
        return;
    }
    /* The whole group: a service's own helpers go with it. */
    if (kill(-p->pid, sig) < 0 && errno == ESRCH)
        kill(p->pid, sig);
}

static struct proc *find_pid(struct sup *s, pid_t pid)
{
    for (size_t i = 0; i < s->nprocs; i++)
        if (s->procs[i].pid == pid)
            return &s->procs[i];
    return NULL;
}

static void on_exit_status(struct sup *s, struct proc *p, int wstatus)
{
    uint64_t now = moat_mono_ms();
    describe_exit(wstatus, p->last_exit, sizeof(p->last_exit));
    /* A postmaster that died leaves its backends behind for a moment,
     * holding the shared memory its successor needs: they go with it. */
    if (p->svc->pg_cluster)
        kill(-p->pid, SIGKILL);
    p->pid = 0;
    s->dirty = true;

    if (p->holding && s->status == SUP_RUNNING) {
        p->holding = false;
        p->status = PS_HELD;
        say(s, "%s: held (%s); not restarted until %s is removed", p->label,
            p->last_exit, p->hold_path);
        return;
    }

    if (p->status == PS_STOPPING || s->status == SUP_STOPPING) {
        p->status = PS_STOPPED;
        say(s, "%s: stopped (%s)", p->label, p->last_exit);
        return;
    }
    /* Only a service that dies before it was ever ready fails the start;
     * one that was ready (an earlier level) crashed and is restarted like
     * at any other time. */
    if (s->status == SUP_STARTING && p->status != PS_READY && !p->ready_ms) {
        p->status = PS_FAILED;
        say(s, "%s: exited during start (%s)", p->label, p->last_exit);
        return;
    }
    /* A service that stayed healthy for a while starts over at the
     * shortest delay; one that keeps failing backs off to the longest. */
    if (p->ready_ms && now - p->ready_ms >= BACKOFF_RESET_MS)
        p->backoff_ms = BACKOFF_MIN_MS;
    uint64_t delay = p->backoff_ms;
    p->backoff_ms = delay * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : delay * 2;
    p->status = PS_BACKOFF;
    p->restart_at = now + delay;
    say(s, "%s: exited unexpectedly (%s) after %.1f s; restarting in %llu ms",
        p->label, p->last_exit, (double)(now - p->started_ms) / 1000.0,
        (unsigned long long)delay);
}

/* The audit finished: its report (written to .tmp) replaces the last. */
static void audit_done(struct sup *s)
{
    char *tmp = moat_xasprintf("%s.tmp", s->audit_out);
    if (rename(tmp, s->audit_out) < 0)
        say(s, "moat: cannot write %s: %s", s->audit_out, strerror(errno));
    free(tmp);
    free(s->audit_out);
    s->audit_out = NULL;
    s->audit_pid = 0;
}

static void on_backup_exit(struct sup *s, pid_t pid, int wstatus);

static void reap(struct sup *s)
{
    int wstatus;
    pid_t pid;
    while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
        struct proc *p = find_pid(s, pid);
        if (p)
            on_exit_status(s, p, wstatus);
        else if (pid == s->audit_pid)
            audit_done(s);
        else
            on_backup_exit(s, pid, wstatus);
    }
}

/*
 * An operator service asks for an audit by creating
 * <data_dir>/audit.request; the supervisor runs `moat audit --json` on the
 * deployment (the auditor needs the operator's view of every service and
 * the provider's merchant key, which only the supervisor's machine has)
 * and leaves the report in <data_dir>/audit.json. One at a time.
 */
static void check_audit_request(struct sup *s)
{
    for (size_t i = 0; i < s->nprocs && !s->audit_pid; i++) {
        const struct deploy_service *svc = s->procs[i].svc;
        if (!is_operator_service(svc))
            continue;
        char *req = moat_xasprintf("%s/audit.request", svc->data_dir);
        bool asked = unlink(req) == 0;
        free(req);
        if (!asked)
            continue;
        char *out = moat_xasprintf("%s/audit.json", svc->data_dir);
        char *tmp = moat_xasprintf("%s.tmp", out);
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        pid_t pid = n > 0 && fd >= 0 ? fork() : -1;
        if (pid == 0) {
            self[n] = '\0';
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            if (dup2(fd, STDOUT_FILENO) < 0)
                _exit(126);
            char a0[] = "audit", a1[] = "-f", a3[] = "--json";
            char *argv[] = {self, a0, a1, s->file_abs, a3, NULL};
            execv(self, argv);
            _exit(127);
        }
        if (fd >= 0)
            close(fd);
        free(tmp);
        if (pid > 0) {
            say(s, "%s: asked for an audit; running moat audit (pid %d)",
                svc->name, (int)pid);
            s->audit_pid = pid;
            s->audit_out = out;
        } else {
            say(s, "moat: cannot start the audit %s asked for", svc->name);
            free(out);
        }
    }
}

/* Sleep until a signal arrives or timeout_ms passes, then reap. */
static void wait_events(struct sup *s, uint64_t timeout_ms)
{
    if (timeout_ms > LOOP_MAX_WAIT_MS)
        timeout_ms = LOOP_MAX_WAIT_MS;
    struct timespec ts = {.tv_sec = (time_t)(timeout_ms / 1000),
                          .tv_nsec = (long)(timeout_ms % 1000) * 1000000L};
    /* SIGUSR1 only wakes us: a hold was placed or lifted. */
    int sig = sigtimedwait(&s->sigs, NULL, &ts);
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
        s->stop_signals++;
        say(s, "moat: received %s", strsignal(sig));
    }
    /* A SIGCHLD may stand for several exits, and one may have come
     * between two waits: always reap everything. */
    reap(s);
}

/* Probe /readyz of a starting service (the cluster: a connection). */
static void probe(struct sup *s, struct proc *p)
{
    long status = 0;
    int rc = MOAT_OK;
    const char *pg_state = NULL;
    if (p->svc->pg_cluster) {
        enum cli_pg_health h = cli_pg_ping(s->d);
        status = h == CLI_PG_READY ? 200 : 0;
        pg_state = h == CLI_PG_STARTING ? "starting up" : "no connection";
    } else {
        rc = cli_probe(p->ready_url, CLI_PROBE_TIMEOUT_MS, &status);
    }
    uint64_t now = moat_mono_ms(); /* after the probe, which takes time */
    if (rc == MOAT_OK && status == 200) {
        p->status = PS_READY;
        p->ready_ms = now;
        s->dirty = true;
        say(s, "%s: ready after %llu ms", p->label,
            (unsigned long long)(now - p->started_ms));
        return;
    }
    if (pg_state)
        snprintf(p->last_probe, sizeof(p->last_probe), "%s", pg_state);
    else if (rc == MOAT_OK)
        snprintf(p->last_probe, sizeof(p->last_probe), "HTTP %ld", status);
    else
        snprintf(p->last_probe, sizeof(p->last_probe), "%s",
                 rc == MOAT_ETIMEDOUT ? "timed out" : "no connection");
    bool slow = now - p->started_ms >= READY_TIMEOUT_MS;
    if (slow && !p->warned_slow && s->status == SUP_RUNNING) {
        p->warned_slow = true;
        say(s, "%s: not ready %d s after restart (last /readyz: %s); see %s",
            p->label, READY_TIMEOUT_MS / 1000, p->last_probe, p->log_path);
    }
    p->next_probe = now + (slow ? READY_SLOW_POLL_MS : READY_POLL_MS);
}

/*
 * Holds (moat restore): while <var>/hold/<name> exists the service is
 * stopped and not restarted; once it is gone the service starts again.
 */
static void run_hold(struct sup *s, struct proc *p, uint64_t now)
{
    bool held = access(p->hold_path, F_OK) == 0;
    if (held && !p->holding && p->status != PS_HELD) {
        if (p->pid > 0) {
            say(s, "%s: hold requested, stopping pid %d (SIGTERM)", p->label,
                (int)p->pid);
            p->holding = true;
            p->status = PS_STOPPING;
            p->hold_kill_at = now + STOP_TIMEOUT_MS;
            signal_proc(p, SIGTERM);
        } else {
            p->status = PS_HELD;
            say(s, "%s: held", p->label);
        }
        s->dirty = true;
    } else if (p->holding && p->pid > 0 && now >= p->hold_kill_at) {
        say(s, "%s: still running, killing pid %d (SIGKILL)", p->label,
            (int)p->pid);
        signal_proc(p, SIGKILL);
        p->hold_kill_at = now + KILL_WAIT_MS;
    } else if (!held && p->status == PS_HELD) {
        say(s, "%s: hold lifted", p->label);
        p->backoff_ms = BACKOFF_MIN_MS;
        p->restarts++;
        if (spawn(s, p) != MOAT_OK) {
            p->status = PS_BACKOFF;
            p->restart_at = now + p->backoff_ms;
        }
    }
}

/* The cadence of "backup": {"every"}: a `moat backup NAME` child of ours
 * when due (the first one `every` after the service was first ready). */
static void run_backup(struct sup *s, struct proc *p, uint64_t now)
{
    uint64_t every = (uint64_t)p->svc->backup_every_ms;
    if (!every || p->instance > 0) /* one backup of the shared database */
        return;
    if (!p->next_backup) {
        if (p->status == PS_READY)
            p->next_backup = now + every;
        return;
    }
    if (now < p->next_backup || p->backup_pid || p->status != PS_READY)
        return;
    p->next_backup = now + every;
    char a0[] = "moat", a1[] = "backup", a3[] = "--file";
    char *argv[] = {a0, a1, p->svc->name, a3, s->file_abs, NULL};
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        say(s, "%s: cannot start a backup: %s", p->svc->name, strerror(errno));
        return;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (s->log_fd >= 0) {
            dup2(s->log_fd, STDOUT_FILENO);
            dup2(s->log_fd, STDERR_FILENO);
        }
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    p->backup_pid = pid;
    say(s, "%s: backup started (pid %d)", p->svc->name, (int)pid);
}

static void on_backup_exit(struct sup *s, pid_t pid, int wstatus)
{
    for (size_t i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        if (p->backup_pid != pid)
            continue;
        p->backup_pid = 0;
        char how[48];
        describe_exit(wstatus, how, sizeof(how));
        say(s, "%s: backup %s (%s)", p->svc->name,
            WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0 ? "done" : "FAILED",
            how);
    }
}

/*
 * Run due timers (restarts, probes) and return the time until the next
 * one. Called after every wake-up.
 */
static uint64_t run_timers(struct sup *s)
{
    uint64_t now = moat_mono_ms();
    uint64_t next = now + LOOP_MAX_WAIT_MS;
    for (size_t i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        if (s->status == SUP_RUNNING) {
            run_hold(s, p, now);
            run_backup(s, p, now);
            if (p->next_backup && p->next_backup < next)
                next = p->next_backup;
        }
        if (p->status == PS_BACKOFF && now >= p->restart_at) {
            p->restarts++;
            if (spawn(s, p) != MOAT_OK) {
                /* Try again later rather than giving up on the service. */
                p->restart_at = now + p->backoff_ms;
                p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS
                                    ? BACKOFF_MAX_MS
                                    : p->backoff_ms * 2;
            }
        }
        if (p->status == PS_STARTING && now >= p->next_probe) {
            probe(s, p);
            now = moat_mono_ms();
        }
        if (p->status == PS_BACKOFF && p->restart_at < next)
            next = p->restart_at;
        if (p->status == PS_STARTING && p->next_probe < next)
            next = p->next_probe;
    }
    check_audit_request(s);
    /* Operator copies carry sizes and memory: refreshed every second. */
    if (s->dirty || now - s->copies_ms >= OPERATOR_COPY_MS)
        write_state(s);
    return next > now ? next - now : 0;
}

/* ---- start, supervise, stop ---- */

static void show_failure(const struct proc *p)
{
    char rel[4096];
    if (p->status == PS_FAILED)
        cli_error("%s exited during start (%s)", p->label, p->last_exit);
    else
        cli_error("%s did not become ready within %d s (last /readyz: %s)",
                  p->label, READY_TIMEOUT_MS / 1000,
                  p->last_probe[0] ? p->last_probe : "not probed");
    fprintf(stderr, "last lines of %s:\n",
            cli_display_path(p->log_path, rel, sizeof(rel)));
    cli_print_tail(stderr, p->log_path, FAIL_LOG_LINES, "  | ");
}

/*
 * Start one level and wait until all of its services are ready. Returns
 * MOAT_OK, MOAT_ECANCELLED when a stop signal came, or MOAT_EIO after
 * reporting the service that failed.
 */
static int start_level(struct sup *s, int level)
{
    uint64_t deadline = moat_mono_ms() + READY_TIMEOUT_MS;
    for (;;) {
        /* The first instance of a service first (it migrates the shared
         * database), the others once it is ready. */
        for (size_t i = 0; i < s->nprocs; i++) {
            struct proc *p = &s->procs[i];
            if (p->svc->level != level || p->status != PS_PENDING ||
                (p->instance > 0 &&
                 s->procs[i - p->instance].status != PS_READY))
                continue;
            if (spawn(s, p) != MOAT_OK) {
                p->status = PS_FAILED;
                return MOAT_EIO;
            }
            if (p->instance > 0)
                deadline = moat_mono_ms() + READY_TIMEOUT_MS;
        }
        uint64_t wait = run_timers(s);
        bool all_ready = true;
        for (size_t i = 0; i < s->nprocs; i++) {
            struct proc *p = &s->procs[i];
            /* Any level: a restarted service of an earlier level that
             * dies again before it is ready fails the start too. */
            if (p->status == PS_FAILED) {
                show_failure(p);
                return MOAT_EIO;
            }
            if (p->svc->level == level && p->status != PS_READY)
                all_ready = false;
        }
        if (all_ready)
            return MOAT_OK;
        if (s->stop_signals)
            return MOAT_ECANCELLED;
        uint64_t now = moat_mono_ms();
        if (now >= deadline) {
            for (size_t i = 0; i < s->nprocs; i++) {
                struct proc *p = &s->procs[i];
                if (p->svc->level == level && p->status != PS_READY) {
                    show_failure(p);
                    break;
                }
            }
            return MOAT_EIO;
        }
        wait_events(s, wait < deadline - now ? wait : deadline - now);
    }
}

static bool level_running(struct sup *s, int level)
{
    for (size_t i = 0; i < s->nprocs; i++)
        if (s->procs[i].svc->level == level && s->procs[i].pid > 0)
            return true;
    return false;
}

/*
 * Stop every service, gateways first: SIGTERM a level, wait up to
 * STOP_TIMEOUT_MS for it (each service drains its requests within that),
 * SIGKILL what is left, then the next level. A further stop signal
 * (a second Ctrl-C) skips the wait.
 */
static void stop_all(struct sup *s)
{
    s->status = SUP_STOPPING;
    unsigned signals_before = s->stop_signals;
    for (int level = s->d->max_level; level >= s->d->min_level; level--) {
        for (size_t i = 0; i < s->nprocs; i++) {
            struct proc *p = &s->procs[i];
            if (p->svc->level != level)
                continue;
            if (p->pid > 0) {
                /* PostgreSQL: SIGINT is the fast shutdown (SIGTERM would
                 * wait for every client to leave). */
                int sig = p->svc->pg_cluster ? SIGINT : SIGTERM;
                p->status = PS_STOPPING;
                say(s, "%s: stopping pid %d (%s)", p->label, (int)p->pid,
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
                signal_proc(p, sig);
            } else if (p->status != PS_FAILED) {
                p->status = PS_STOPPED;
            }
        }
        write_state(s);
        uint64_t term_deadline = moat_mono_ms() + STOP_TIMEOUT_MS;
        uint64_t kill_deadline = 0;
        while (level_running(s, level)) {
            uint64_t now = moat_mono_ms();
            if (!kill_deadline &&
                (now >= term_deadline || s->stop_signals > signals_before)) {
                for (size_t i = 0; i < s->nprocs; i++) {
                    struct proc *p = &s->procs[i];
                    if (p->svc->level == level && p->pid > 0) {
                        say(s, "%s: still running, killing pid %d (SIGKILL)",
                            p->label, (int)p->pid);
                        signal_proc(p, SIGKILL);
                    }
                }
                kill_deadline = now + KILL_WAIT_MS;
            }
            if (kill_deadline && now >= kill_deadline) {
                say(s, "moat: giving up waiting for level %d to exit", level);
                break;
            }
            uint64_t until = kill_deadline ? kill_deadline : term_deadline;
            wait_events(s, until > now ? until - now : 0);
        }
        if (s->dirty)
            write_state(s);
    }
}

static void print_summary(struct sup *s)
{
    const struct deploy *d = s->d;
    char rel[4096];
    printf("\nmoat: deployment \"%s\" is up (%zu services; state in %s)\n\n",
           d->name, d->nservices,
           cli_display_path(s->state_path, rel, sizeof(rel)));
    printf("  %-16s %-8s %-28s %-8s %s\n", "SERVICE", "PID", "URL", "ENGINE",
           "DATA");
    for (size_t i = 0; i < s->nprocs; i++) {
        const struct proc *p = &s->procs[i];
        char *url = deploy_base_url(p->svc);
        const char *data = p->svc->db ? p->svc->db : p->svc->data_dir;
        printf("  %-16s %-8d %-28s %-8s %s\n", p->label, (int)p->pid, url,
               deploy_engine_name(p->svc->engine),
               cli_display_path(data, rel, sizeof(rel)));
        free(url);
    }

    /* An example request through the first gateway, if there is one. */
    const struct deploy_service *gw = NULL;
    const struct deploy_route *products = NULL;
    for (size_t i = 0; i < d->nservices && !products; i++) {
        const struct deploy_service *svc = &d->services[i];
        for (size_t r = 0; r < svc->nroutes && !products; r++) {
            if (!gw)
                gw = svc;
            const char *pre = svc->routes[r].prefix;
            size_t n = strlen(pre);
            if (n >= 9 && strcmp(pre + n - 9, "/products") == 0) {
                gw = svc;
                products = &svc->routes[r];
            }
        }
    }
    for (size_t i = 0; i < s->nprocs; i++) {
        const struct deploy_service *svc = s->procs[i].svc;
        if (!is_operator_service(svc))
            continue;
        char *url = deploy_base_url(svc);
        char *sec = moat_xasprintf("%s/secrets.json", d->var_dir);
        printf("\nconsole: %s/  (password: MOAT_CONSOLE_PASSWORD in %s)\n", url,
               cli_display_path(sec, rel, sizeof(rel)));
        free(sec);
        free(url);
    }
    printf("\ntry:\n");
    /* With TLS, curl trusts the deployment CA (the gateway asks no client
     * certificate). */
    char *ca = cli_cert_path(d, "ca", "crt");
    char *cs = d->tls ? moat_xasprintf("curl -s --cacert %s https://",
                                       cli_display_path(ca, rel, sizeof(rel)))
                      : moat_xstrdup("curl -s ");
    free(ca);
    if (products) {
        const char *host = deploy_connect_host(gw);
        unsigned port = (unsigned)gw->port;
        printf("  %s%s:%u%s\n", cs, host, port, products->prefix);
        /* Writes need a signed-in admin: show the login when the deployment
         * has one (users with a generated admin password). */
        const char *secrets = NULL;
        for (size_t i = 0; i < d->nservices; i++)
            for (size_t k = 0; k < d->services[i].nsecrets; k++)
                if (strcmp(d->services[i].secrets[k],
                           "MOAT_USERS_ADMIN_PASSWORD") == 0)
                    secrets = "var";
        if (secrets) {
            char *sec = moat_xasprintf("%s/secrets.json", d->var_dir);
            printf("  # writes need a token; the admin (admin@moat.local) "
                   "password is in %s\n",
                   cli_display_path(sec, rel, sizeof(rel)));
            printf("  PW=$(sed -n 's/.*\"MOAT_USERS_ADMIN_PASSWORD\": "
                   "\"\\(.*\\)\".*/\\1/p' %s)\n",
                   rel);
            free(sec);
            printf("  TOKEN=$(%s%s:%u/api/v1/auth/login -X POST -H "
                   "'content-type: application/json' \\\n"
                   "      -d \"{\\\"email\\\":\\\"admin@moat.local\\\","
                   "\\\"password\\\":\\\"$PW\\\"}\" | sed -n "
                   "'s/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/p')\n",
                   cs, host, port);
        }
        printf("  %s%s:%u%s -X POST -H \"authorization: Bearer $TOKEN\" "
               "-H 'content-type: application/json' \\\n"
               "       -d '{\"sku\":\"MUG-1\",\"name\":\"Mug\",\"price\":"
               "{\"amount\":1250,\"currency\":\"EUR\"}}'\n",
               cs, host, port, products->prefix);
    } else if (gw) {
        printf("  %s%s:%u%s\n", cs, deploy_connect_host(gw), (unsigned)gw->port,
               gw->routes[0].prefix);
    } else {
        printf("  %s%s:%u/readyz\n", cs, deploy_connect_host(&d->services[0]),
               (unsigned)d->services[0].port);
    }
    free(cs);
    printf("  moat status        moat logs %s -f        moat down (or "
           "Ctrl-C here)\n\n",
           d->services[0].name);
    fflush(stdout);
}

static void supervise(struct sup *s)
{
    while (!s->stop_signals) {
        uint64_t wait = run_timers(s);
        wait_events(s, wait);
    }
}

/* Take the var dir's lock, or explain who holds it. */
static int take_lock(struct sup *s)
{
    char *path = cli_lock_path(s->d);
    int rc = MOAT_OK;
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0) {
        cli_error("cannot open lock file %s: %s", path, strerror(errno));
        rc = MOAT_EIO;
    } else if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) {
            json_t *st = json_load_file(s->state_path, 0, NULL);
            json_int_t pid = json_integer_value(json_object_get(st, "pid"));
            cli_error("a supervisor is already running for %s%s%lld%s; stop "
                      "it with 'moat down' or use another var_dir",
                      s->d->var_dir, pid ? " (pid " : "", (long long)pid,
                      pid ? ")" : "");
            json_decref(st);
            rc = MOAT_EBUSY;
        } else {
            cli_error("cannot lock %s: %s", path, strerror(errno));
            rc = MOAT_EIO;
        }
    }
    free(path);
    return rc;
}

static void sup_release(struct sup *s)
{
    if (s->audit_pid > 0) {
        kill(s->audit_pid, SIGTERM);
        waitpid(s->audit_pid, NULL, 0);
    }
    free(s->audit_out);
    for (size_t i = 0; i < s->nprocs; i++) {
        free(s->procs[i].program);
        free(s->procs[i].log_path);
        free(s->procs[i].ready_url);
        free(s->procs[i].routes_env);
        free(s->procs[i].db_dsn);
        free(s->procs[i].hold_path);
        for (char **e = s->procs[i].auth_env; e && *e; e++) {
            sodium_memzero(*e, strlen(*e));
            free(*e);
        }
        free(s->procs[i].auth_env);
    }
    free(s->procs);
    free(s->file_abs);
    free(s->state_path);
    free(s->state_tmp);
    if (s->log_fd >= 0)
        close(s->log_fd);
    /* Closing the descriptor releases the lock. */
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    deploy_free(s->d);
}

/* With a host selected (--host), only that host's services run here. */
static bool runs_here(const struct deploy *d, const struct deploy_service *svc)
{
    return !d->selected_host ||
           (svc->host_name && strcmp(svc->host_name, d->selected_host) == 0);
}

int cli_cmd_up(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"host", required_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        if (c == 'f')
            file = optarg;
        else if (c == 'H') /* cli_load_deploy selects it; children too */
            setenv("MOAT_HOST", optarg, 1);
        else
            return cli_option_error("up", c, argv);
    }
    if (optind < argc)
        return cli_usage_error("up", "unexpected argument '%s'", argv[optind]);

    struct sup s = {.lock_fd = -1, .log_fd = -1};
    int ret = CLI_EXIT_FAIL;
    s.d = cli_load_deploy(file);
    if (!s.d)
        goto cleanup;
    /* d->dir is the file's directory, so its base name completes it. */
    const char *base_name = strrchr(s.d->file, '/');
    s.file_abs =
        deploy_path_join(s.d->dir, base_name ? base_name + 1 : s.d->file);
    s.state_path = cli_state_path(s.d);
    s.state_tmp = moat_xasprintf("%s.tmp", s.state_path);

    char *logdir = moat_xasprintf("%s/log", s.d->var_dir);
    int mk = make_dirs(logdir);
    if (mk == MOAT_OK && s.d->state_dir)
        mk = make_dirs(s.d->state_dir);
    if (mk != MOAT_OK)
        cli_error("cannot create %s: %s", logdir, strerror(errno));
    free(logdir);
    if (mk != MOAT_OK || take_lock(&s) != MOAT_OK)
        goto cleanup;
    char *moat_log = cli_log_path(s.d, "moat");
    s.log_fd = open(moat_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (s.log_fd < 0)
        cli_error("cannot open %s: %s (continuing without it)", moat_log,
                  strerror(errno));
    free(moat_log);

    /* One process per instance of each service that runs here, then the
     * cluster, the broker and Redis when moat up runs them. */
    size_t nbuiltin = deploy_nbuiltin(s.d);
    s.nprocs = nbuiltin;
    for (size_t i = 0; i < s.d->nservices; i++)
        if (runs_here(s.d, &s.d->services[i]))
            s.nprocs += s.d->services[i].ninstances;
    if (s.d->selected_host && s.nprocs == nbuiltin) {
        cli_error("no service of %s runs on host \"%s\"", s.d->file,
                  s.d->selected_host);
        goto cleanup;
    }
    s.procs = moat_xcalloc(s.nprocs, sizeof(*s.procs));
    for (size_t i = 0, si = 0, inst = 0, bi = 0; i < s.nprocs; i++) {
        struct proc *p = &s.procs[i];
        while (si < s.d->nservices && !runs_here(s.d, &s.d->services[si]))
            si++;
        bool builtin = si >= s.d->nservices;
        const struct deploy_service *svc =
            builtin ? deploy_builtin(s.d, bi++) : &s.d->services[si];
        p->view = *svc;
        p->svc = &p->view;
        p->instance = inst;
        if (svc->ninstances > 1) {
            p->view.listen = svc->inst[inst].listen;
            memcpy(p->view.host, svc->inst[inst].host, sizeof(p->view.host));
            p->view.port = svc->inst[inst].port;
            snprintf(p->label, sizeof(p->label), "%s#%zu", svc->name, inst + 1);
        } else {
            snprintf(p->label, sizeof(p->label), "%s", svc->name);
        }
        if (!builtin && ++inst >= svc->ninstances) {
            si++;
            inst = 0;
        }
        p->db_dsn = cli_pg_dsn(s.d, p->svc);
        p->program = cli_service_program(p->svc);
        p->log_path = cli_log_path(s.d, p->svc->name);
        p->nats_url = s.d->nats_url;
        char *base = deploy_base_url(p->svc);
        p->ready_url = moat_xasprintf(
            "%s%s", base, p->svc->ready_path ? p->svc->ready_path : "/readyz");
        free(base);
        if (p->svc->nroutes)
            p->routes_env = deploy_gateway_routes(s.d, p->svc);
        p->backoff_ms = BACKOFF_MIN_MS;
        p->hold_path = moat_xasprintf("%s/hold/%s", s.d->var_dir, p->svc->name);
        unlink(p->hold_path); /* left by a restore that was interrupted */
    }
    if (s.d->tls && (cli_certs_ensure(s.d, false, false) != MOAT_OK ||
                     cli_tls_operator(s.d) != MOAT_OK))
        goto cleanup;
    if (make_auth_env(&s) != MOAT_OK)
        goto cleanup;

    /* Block before the first fork so no SIGCHLD or Ctrl-C is missed. */
    sigemptyset(&s.sigs);
    sigaddset(&s.sigs, SIGCHLD);
    sigaddset(&s.sigs, SIGINT);
    sigaddset(&s.sigs, SIGTERM);
    sigaddset(&s.sigs, SIGHUP);
    sigaddset(&s.sigs, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s.sigs, NULL);
    signal(SIGPIPE, SIG_IGN); /* a closed stdout must not kill us */
    setvbuf(stdout, NULL, _IOLBF, 0);

    s.started_wall = moat_wall_ms();
    s.status = SUP_STARTING;
    if (preflight(&s) != MOAT_OK || write_nats_conf(&s) != MOAT_OK ||
        write_redis_conf(&s) != MOAT_OK || prepare_postgres(&s) != MOAT_OK) {
        s.status = SUP_FAILED;
        write_state(&s);
        goto cleanup;
    }
    write_state(&s);
    char rel[4096];
    say(&s, "moat: starting deployment \"%s\" from %s (pid %d)", s.d->name,
        cli_display_path(s.file_abs, rel, sizeof(rel)), (int)getpid());

    int rc = MOAT_OK;
    for (int level = s.d->min_level; level <= s.d->max_level && rc == MOAT_OK;
         level++) {
        rc = start_level(&s, level);
        /* The cluster (level -1) is up: roles and databases before the
         * services that use them. */
        if (rc == MOAT_OK && level == -1 && s.d->pg &&
            cli_pg_provision(s.d) != MOAT_OK)
            rc = MOAT_EIO;
        if (rc == MOAT_OK && level == -1 && s.d->pg)
            say(&s, "postgres: roles and databases provisioned");
    }
    if (rc == MOAT_OK) {
        s.status = SUP_RUNNING;
        write_state(&s);
        say(&s, "moat: all %zu services ready", s.nprocs);
        print_summary(&s);
        supervise(&s);
    }
    say(&s, "moat: stopping all services");
    stop_all(&s);
    s.status = rc == MOAT_EIO ? SUP_FAILED : SUP_STOPPED;
    write_state(&s);
    say(&s, "moat: %s",
        rc == MOAT_EIO ? "start failed; everything stopped" : "stopped");
    ret = rc == MOAT_EIO ? CLI_EXIT_FAIL : CLI_EXIT_OK;

cleanup:
    sup_release(&s);
    return ret;
}
