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

enum proc_status {
    PS_PENDING,  /* not started yet */
    PS_STARTING, /* running, /readyz not yet 200 */
    PS_READY,    /* running, /readyz answered 200 since the last spawn */
    PS_BACKOFF,  /* exited unexpectedly; restart at restart_at */
    PS_STOPPING, /* SIGTERM sent */
    PS_STOPPED,  /* exited after we asked, or never started */
    PS_FAILED,   /* exited or never ready during the initial start */
};

static const char *const proc_status_names[] = {
    "pending", "starting", "ready", "backoff", "stopping", "stopped", "failed",
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
    const struct deploy_service *svc; /* borrowed from sup.d */
    char *program;                    /* absolute path; owned */
    char *log_path;                   /* owned */
    char *ready_url;                  /* owned */
    char *routes_env;     /* MOAT_GATEWAY_ROUTES value or NULL; owned */
    const char *nats_url; /* MOAT_NATS_URL or NULL; borrowed from sup.d */
    char **auth_env;      /* "NAME=value" keys and secrets, NULL-ended; owned */
    pid_t pid;            /* 0 when not running */
    enum proc_status status;
    unsigned restarts;    /* spawns after the first */
    int64_t started_wall; /* wall ms of the last spawn, 0 = never */
    uint64_t started_ms;  /* monotonic ms of the last spawn */
    uint64_t ready_ms;    /* monotonic ms it became ready, 0 = not yet */
    uint64_t next_probe;  /* monotonic ms of the next /readyz probe */
    uint64_t restart_at;  /* monotonic ms, in PS_BACKOFF */
    uint64_t backoff_ms;  /* delay of the next restart */
    bool warned_slow;     /* "not ready after 10 s" logged */
    char last_probe[48];  /* "HTTP 503", "connection refused" */
    char last_exit[48];   /* "exit status 1", "killed by signal 9" */
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
        free(url);
    }
    json_t *root = json_pack(
        "{s:i, s:s, s:s, s:i, s:s, s:o, s:o, s:I, s:o}", "version",
        CLI_STATE_VERSION, "deployment", s->d->name, "file", s->file_abs, "pid",
        (int)getpid(), "status", sup_status_names[s->status], "started_at",
        time_or_null(s->started_wall), "updated_at",
        time_or_null(moat_wall_ms()), "stop_timeout_ms",
        (json_int_t)(STOP_TIMEOUT_MS + KILL_WAIT_MS) * (s->d->max_level + 1),
        "services", services);
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    if (!text) {
        say(s, "moat: cannot encode the state file");
        return;
    }

    /* Readers see the old file or the new one, never half of one. */
    int fd = open(s->state_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen(text);
    bool ok = fd >= 0 && write(fd, text, len) == (ssize_t)len &&
              write(fd, "\n", 1) == 1;
    if (fd >= 0 && close(fd) < 0)
        ok = false;
    if (ok && rename(s->state_tmp, s->state_path) < 0)
        ok = false;
    if (!ok)
        say(s, "moat: cannot write %s: %s", s->state_path, strerror(errno));
    free(text);
    s->dirty = false;
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
            cli_error("%s: cannot execute %s: %s%s", p->svc->name, p->program,
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

/* ---- processes ---- */

static bool env_overridden(const char *entry, const struct deploy_service *svc)
{
    static const char *const ours[] = {"MOAT_SERVICE_NAME", "MOAT_LISTEN",
                                       "MOAT_DATA_DIR", "MOAT_GATEWAY_ROUTES"};
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
static char **child_env(const struct proc *p)
{
    const struct deploy_service *svc = p->svc;
    size_t n = 0;
    while (environ[n])
        n++;
    size_t nauth = 0;
    while (p->auth_env && p->auth_env[nauth])
        nauth++;
    char **env = moat_xcalloc(n + svc->nenv + nauth + 6, sizeof(*env));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!env_overridden(environ[i], svc))
            env[k++] = moat_xstrdup(environ[i]);
    env[k++] = moat_xasprintf("MOAT_SERVICE_NAME=%s", svc->name);
    env[k++] =
        moat_xasprintf("MOAT_LISTEN=%s:%u", svc->host, (unsigned)svc->port);
    env[k++] = moat_xasprintf("MOAT_DATA_DIR=%s", svc->data_dir);
    if (p->routes_env)
        env[k++] = moat_xasprintf("MOAT_GATEWAY_ROUTES=%s", p->routes_env);
    if (p->nats_url)
        env[k++] = moat_xasprintf("MOAT_NATS_URL=%s", p->nats_url);
    for (size_t i = 0; i < nauth; i++)
        env[k++] = moat_xstrdup(p->auth_env[i]);
    /* Values with secret references come expanded in auth_env. */
    for (size_t i = 0; i < svc->nenv; i++)
        if (!deploy_has_secret_refs(svc->env[i].value))
            env[k++] =
                moat_xasprintf("%s=%s", svc->env[i].name, svc->env[i].value);
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
    if (cli_secrets_load(&sec, s->d->var_dir) != MOAT_OK)
        return MOAT_EIO;
    for (size_t i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        const struct deploy_service *svc = p->svc;
        char **env = moat_xcalloc(svc->nsecrets + svc->nenv + 4, sizeof(*env));
        size_t k = 0;
        env[k++] = moat_xasprintf("MOAT_SERVICE_KEY=%s",
                                  cli_secret_service_key(sec, svc->name));
        /* Each caller's pair key towards this service, never the caller's
         * own key (moat_auth_pair_key): a compromised service cannot speak
         * as its callers to anyone else. The last round is the operator
         * (the moat CLI on this machine, reading secrets.json), which may
         * call every service's admin routes. */
        struct moat_buf peers = MOAT_BUF_INIT;
        for (size_t j = 0; j <= s->nprocs; j++) {
            const char *caller =
                j < s->nprocs ? s->procs[j].svc->name : CLI_OPERATOR;
            if (j < s->nprocs &&
                (s->procs[j].svc == svc || !deploy_calls(s->procs[j].svc, svc)))
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
        for (size_t j = 0; j < svc->nsecrets; j++)
            env[k++] = moat_xasprintf("%s=%s", svc->secrets[j],
                                      cli_secret_shared(sec, svc->secrets[j]));
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
    int rc = cli_secrets_save(sec);
    cli_secrets_free(sec);
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
        say(s, "%s: cannot open log %s: %s", p->svc->name, p->log_path,
            strerror(errno));
        goto cleanup;
    }
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
        say(s, "%s: cannot open /dev/null: %s", p->svc->name, strerror(errno));
        goto cleanup;
    }
    env = child_env(p);
    fflush(stdout); /* or the child would inherit buffered output */
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        say(s, "%s: fork failed: %s", p->svc->name, strerror(errno));
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
    say(s, "%s: started pid %d (%s, listen %s)", p->svc->name, (int)pid,
        p->program, p->svc->listen);
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
    p->pid = 0;
    s->dirty = true;

    if (p->status == PS_STOPPING || s->status == SUP_STOPPING) {
        p->status = PS_STOPPED;
        say(s, "%s: stopped (%s)", p->svc->name, p->last_exit);
        return;
    }
    /* Only a service that dies before it was ever ready fails the start;
     * one that was ready (an earlier level) crashed and is restarted like
     * at any other time. */
    if (s->status == SUP_STARTING && p->status != PS_READY && !p->ready_ms) {
        p->status = PS_FAILED;
        say(s, "%s: exited during start (%s)", p->svc->name, p->last_exit);
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
        p->svc->name, p->last_exit, (double)(now - p->started_ms) / 1000.0,
        (unsigned long long)delay);
}

static void reap(struct sup *s)
{
    int wstatus;
    pid_t pid;
    while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
        struct proc *p = find_pid(s, pid);
        if (p)
            on_exit_status(s, p, wstatus);
    }
}

/* Sleep until a signal arrives or timeout_ms passes, then reap. */
static void wait_events(struct sup *s, uint64_t timeout_ms)
{
    if (timeout_ms > LOOP_MAX_WAIT_MS)
        timeout_ms = LOOP_MAX_WAIT_MS;
    struct timespec ts = {.tv_sec = (time_t)(timeout_ms / 1000),
                          .tv_nsec = (long)(timeout_ms % 1000) * 1000000L};
    int sig = sigtimedwait(&s->sigs, NULL, &ts);
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
        s->stop_signals++;
        say(s, "moat: received %s", strsignal(sig));
    }
    /* A SIGCHLD may stand for several exits, and one may have come
     * between two waits: always reap everything. */
    reap(s);
}

/* Probe /readyz of a starting service. */
static void probe(struct sup *s, struct proc *p)
{
    long status = 0;
    int rc = cli_probe(p->ready_url, CLI_PROBE_TIMEOUT_MS, &status);
    uint64_t now = moat_mono_ms(); /* after the probe, which takes time */
    if (rc == MOAT_OK && status == 200) {
        p->status = PS_READY;
        p->ready_ms = now;
        s->dirty = true;
        say(s, "%s: ready after %llu ms", p->svc->name,
            (unsigned long long)(now - p->started_ms));
        return;
    }
    if (rc == MOAT_OK)
        snprintf(p->last_probe, sizeof(p->last_probe), "HTTP %ld", status);
    else
        snprintf(p->last_probe, sizeof(p->last_probe), "%s",
                 rc == MOAT_ETIMEDOUT ? "timed out" : "no connection");
    bool slow = now - p->started_ms >= READY_TIMEOUT_MS;
    if (slow && !p->warned_slow && s->status == SUP_RUNNING) {
        p->warned_slow = true;
        say(s, "%s: not ready %d s after restart (last /readyz: %s); see %s",
            p->svc->name, READY_TIMEOUT_MS / 1000, p->last_probe, p->log_path);
    }
    p->next_probe = now + (slow ? READY_SLOW_POLL_MS : READY_POLL_MS);
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
    if (s->dirty)
        write_state(s);
    return next > now ? next - now : 0;
}

/* ---- start, supervise, stop ---- */

static void show_failure(const struct proc *p)
{
    char rel[4096];
    if (p->status == PS_FAILED)
        cli_error("%s exited during start (%s)", p->svc->name, p->last_exit);
    else
        cli_error("%s did not become ready within %d s (last /readyz: %s)",
                  p->svc->name, READY_TIMEOUT_MS / 1000,
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
    for (size_t i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        if (p->svc->level == level && spawn(s, p) != MOAT_OK) {
            p->status = PS_FAILED;
            return MOAT_EIO;
        }
    }
    uint64_t deadline = moat_mono_ms() + READY_TIMEOUT_MS;
    for (;;) {
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
    for (int level = s->d->max_level; level >= 0; level--) {
        for (size_t i = 0; i < s->nprocs; i++) {
            struct proc *p = &s->procs[i];
            if (p->svc->level != level)
                continue;
            if (p->pid > 0) {
                p->status = PS_STOPPING;
                say(s, "%s: stopping pid %d (SIGTERM)", p->svc->name,
                    (int)p->pid);
                signal_proc(p, SIGTERM);
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
                            p->svc->name, (int)p->pid);
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
    printf("  %-16s %-8s %-24s %-7s %s\n", "SERVICE", "PID", "URL", "ENGINE",
           "DATA");
    for (size_t i = 0; i < s->nprocs; i++) {
        const struct proc *p = &s->procs[i];
        char *url = deploy_base_url(p->svc);
        const char *data = p->svc->db ? p->svc->db : p->svc->data_dir;
        printf("  %-16s %-8d %-24s %-7s %s\n", p->svc->name, (int)p->pid, url,
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
    printf("\ntry:\n");
    if (products) {
        const char *host = deploy_connect_host(gw);
        unsigned port = (unsigned)gw->port;
        printf("  curl -s %s:%u%s\n", host, port, products->prefix);
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
            printf("  TOKEN=$(curl -s -X POST %s:%u/api/v1/auth/login -H "
                   "'content-type: application/json' \\\n"
                   "      -d \"{\\\"email\\\":\\\"admin@moat.local\\\","
                   "\\\"password\\\":\\\"$PW\\\"}\" | sed -n "
                   "'s/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/p')\n",
                   host, port);
        }
        printf("  curl -s -X POST %s:%u%s -H \"authorization: Bearer $TOKEN\" "
               "-H 'content-type: application/json' \\\n"
               "       -d '{\"sku\":\"MUG-1\",\"name\":\"Mug\",\"price\":"
               "{\"amount\":1250,\"currency\":\"EUR\"}}'\n",
               host, port, products->prefix);
    } else if (gw) {
        printf("  curl -s %s:%u%s\n", deploy_connect_host(gw),
               (unsigned)gw->port, gw->routes[0].prefix);
    } else {
        printf("  curl -s %s:%u/readyz\n", deploy_connect_host(&d->services[0]),
               (unsigned)d->services[0].port);
    }
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
    for (size_t i = 0; i < s->nprocs; i++) {
        free(s->procs[i].program);
        free(s->procs[i].log_path);
        free(s->procs[i].ready_url);
        free(s->procs[i].routes_env);
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

int cli_cmd_up(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        if (c == 'f')
            file = optarg;
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

    /* The broker, when moat up runs one, is the last process. */
    s.nprocs = s.d->nservices + (s.d->broker ? 1 : 0);
    s.procs = moat_xcalloc(s.nprocs, sizeof(*s.procs));
    for (size_t i = 0; i < s.nprocs; i++) {
        struct proc *p = &s.procs[i];
        p->svc = i < s.d->nservices ? &s.d->services[i] : s.d->broker;
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
    }
    if (make_auth_env(&s) != MOAT_OK)
        goto cleanup;

    /* Block before the first fork so no SIGCHLD or Ctrl-C is missed. */
    sigemptyset(&s.sigs);
    sigaddset(&s.sigs, SIGCHLD);
    sigaddset(&s.sigs, SIGINT);
    sigaddset(&s.sigs, SIGTERM);
    sigaddset(&s.sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &s.sigs, NULL);
    signal(SIGPIPE, SIG_IGN); /* a closed stdout must not kill us */
    setvbuf(stdout, NULL, _IOLBF, 0);

    s.started_wall = moat_wall_ms();
    s.status = SUP_STARTING;
    if (preflight(&s) != MOAT_OK || write_nats_conf(&s) != MOAT_OK) {
        s.status = SUP_FAILED;
        write_state(&s);
        goto cleanup;
    }
    write_state(&s);
    char rel[4096];
    say(&s, "moat: starting deployment \"%s\" from %s (pid %d)", s.d->name,
        cli_display_path(s.file_abs, rel, sizeof(rel)), (int)getpid());

    int rc = MOAT_OK;
    for (int level = 0; level <= s.d->max_level && rc == MOAT_OK; level++)
        rc = start_level(&s, level);
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
