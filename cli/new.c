/*
 * new.c - `moat new service NAME`: a new service on the service skeleton.
 *
 * Writes, from the templates in cli/templates/ (embedded at build time,
 * new.h), services/NAME/ (main.c, handlers.c, store.c with migrations and
 * an outbox, events.c with a consumer stub, NAME.h, store.h,
 * CMakeLists.txt), tests/unit/test_NAME.c, tests/integration/test_NAME.c
 * and docs/NAME.md, and adds NAME to the deployment file on the next free
 * port. services/CMakeLists.txt and tests/CMakeLists.txt pick up the new
 * folder and tests by glob: the next cmake run builds them.
 *
 * In the templates, @name@ is NAME, @NAME@ its upper case and @port@ the
 * port. Nothing is written unless every check passes: NAME is valid, no
 * file to write exists, NAME is not in the deployment file, and the new
 * deployment file still validates.
 */
#include "moat/common.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "moat/buf.h"
#include "new.h"

#define NAME_MIN     2
#define NAME_MAX_LEN 24
#define PORT_FIRST   8090 /* for a deployment with no service yet */

extern char **environ;

/* NULL when name is acceptable, else why not (static). */
static const char *name_problem(const char *name)
{
    size_t len = strlen(name);
    if (len < NAME_MIN || len > NAME_MAX_LEN)
        return "must be 2 to 24 characters long";
    if (name[0] < 'a' || name[0] > 'z')
        return "must start with a lowercase letter (a-z)";
    for (size_t i = 1; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') ||
              (name[i] >= '0' && name[i] <= '9')))
            return "may contain only lowercase letters and digits "
                   "([a-z][a-z0-9]{1,23})";
    if (strcmp(name, "moat") == 0 || strcmp(name, "operator") == 0)
        return "is reserved (the supervisor and the CLI use it)";
    return NULL;
}

/* text with @name@, @NAME@ and @port@ replaced, appended to out. */
static void expand(struct moat_buf *out, const char *text, const char *name,
                   const char *upper, const char *port)
{
    static const char *const keys[] = {"@name@", "@NAME@", "@port@"};
    const char *values[] = {name, upper, port};
    while (*text) {
        bool hit = false;
        for (size_t k = 0; k < MOAT_ARRAY_LEN(keys) && !hit; k++) {
            size_t n = strlen(keys[k]);
            if (strncmp(text, keys[k], n) == 0) {
                moat_buf_addstr(out, values[k]);
                text += n;
                hit = true;
            }
        }
        if (!hit)
            moat_buf_addch(out, *text++);
    }
}

/* The output path of template t under root (caller frees). */
static char *output_path(const struct cli_template *t, const char *root,
                         const char *name, const char *upper, const char *port)
{
    struct moat_buf b = MOAT_BUF_INIT;
    moat_buf_addstr(&b, root);
    moat_buf_addstr(&b, "/");
    expand(&b, t->path, name, upper, port);
    size_t len;
    char *p = moat_buf_detach(&b, &len);
    p[len - 3] = '\0'; /* without ".in" */
    return p;
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* mkdir -p of path's parent directories. */
static int make_parents(const char *path)
{
    char *p = moat_xstrdup(path);
    int rc = MOAT_OK;
    for (char *s = p + 1; *s && rc == MOAT_OK; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            rc = MOAT_EIO;
        *s = '/';
    }
    free(p);
    return rc;
}

/* Write len bytes to a new file (never over an existing one). */
static int write_new(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return MOAT_EIO;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return MOAT_EIO;
        }
        p += n;
        len -= (size_t)n;
    }
    return close(fd) == 0 ? MOAT_OK : MOAT_EIO;
}

/* The port after the highest one of the deployment's services. */
static int next_port(json_t *services)
{
    int max = PORT_FIRST - 1;
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        const char *listen = json_string_value(json_object_get(svc, "listen"));
        const char *colon = listen ? strrchr(listen, ':') : NULL;
        int port = colon ? atoi(colon + 1) : 0;
        if (port > max)
            max = port;
    }
    return max + 1 <= 65535 ? max + 1 : -1;
}

/*
 * The deployment file with NAME appended, as text (caller frees), or NULL
 * after printing why. *port gets the new service's port.
 */
static char *deploy_with(const char *file, const char *name, int *port)
{
    json_error_t jerr;
    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    char *text = NULL;
    if (!root) {
        cli_error("%s: %s (line %d)", file, jerr.text, jerr.line);
        return NULL;
    }
    json_t *services = json_object_get(root, "services");
    if (!json_is_array(services)) {
        cli_error("%s: \"services\" must be an array", file);
        goto out;
    }
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        const char *n = json_string_value(json_object_get(svc, "name"));
        if (n && strcmp(n, name) == 0) {
            cli_error("%s already has a service named '%s'", file, name);
            goto out;
        }
    }
    *port = next_port(services);
    if (*port < 0) {
        cli_error("%s: no free port after the highest one", file);
        goto out;
    }
    char listen[32], db[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", *port);
    snprintf(db, sizeof(db), "%s.db", name);
    json_array_append_new(services,
                          json_pack("{s:s, s:s, s:s, s:s, s:{}}", "name", name,
                                    "listen", listen, "engine", "sqlite", "db",
                                    db, "env"));
    char *dump = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    text = moat_xasprintf("%s\n", dump);
    free(dump);

    /* The result must still be a valid deployment. */
    char *dir = moat_xstrdup(file);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    char *abs = realpath(slash ? dir : ".", NULL);
    struct deploy *d = NULL;
    char *err = NULL;
    if (!abs ||
        deploy_parse(text, strlen(text), file, abs, &d, &err) != MOAT_OK) {
        cli_error("the deployment would not validate:\n%s",
                  err ? err : "cannot resolve its directory");
        free(text);
        text = NULL;
    }
    deploy_free(d);
    free(err);
    free(abs);
    free(dir);
out:
    json_decref(root);
    return text;
}

/* clang-format -i the generated C files, when clang-format is installed. */
static void format_sources(char **paths, size_t n)
{
    const char **argv = moat_xcalloc(n + 3, sizeof(*argv));
    size_t argc = 0;
    argv[argc++] = "clang-format";
    argv[argc++] = "-i";
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(paths[i]);
        if (len > 2 && (strcmp(paths[i] + len - 2, ".c") == 0 ||
                        strcmp(paths[i] + len - 2, ".h") == 0))
            argv[argc++] = paths[i];
    }
    pid_t pid;
    int status = 0;
    if (posix_spawnp(&pid, "clang-format", NULL, NULL, (char **)argv,
                     environ) != 0)
        printf("note: clang-format not found; the sources are as the "
               "templates wrote them\n");
    else if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
             WEXITSTATUS(status) != 0)
        printf("note: clang-format failed on the generated sources\n");
    free(argv);
}

static const char new_usage[] =
    "usage: moat new service NAME [--deploy FILE] [--root DIR]\n"
    "  NAME          [a-z][a-z0-9]{1,23}, not an existing service\n"
    "  --deploy FILE the deployment file to add NAME to (default\n"
    "                DIR/moat.json)\n"
    "  --root DIR    the moat source tree (default .)\n";

int cli_cmd_new(int argc, char **argv)
{
    static const struct option opts[] = {
        {"deploy", required_argument, NULL, 'd'},
        {"root", required_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    const char *root = ".", *deploy_file = NULL;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (c == 'd')
            deploy_file = optarg;
        else if (c == 'r')
            root = optarg;
        else
            return cli_option_error("new", c, argv);
    }
    if (argc - optind != 2 || strcmp(argv[optind], "service") != 0) {
        fputs(new_usage, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[optind + 1];
    const char *why = name_problem(name);
    if (why)
        return cli_usage_error("new", "service name '%s' %s", name, why);

    char *services_dir = moat_xasprintf("%s/services", root);
    char *deploy_default = moat_xasprintf("%s/moat.json", root);
    char *deploy_text = NULL;
    char **paths = moat_xcalloc(cli_ntemplates, sizeof(*paths));
    size_t written = 0;
    int rc = CLI_EXIT_FAIL, port = 0;
    char upper[NAME_MAX_LEN + 1], port_text[8];
    for (size_t i = 0; name[i]; i++)
        upper[i] = (char)toupper((unsigned char)name[i]);
    upper[strlen(name)] = '\0';

    if (!exists(services_dir)) {
        cli_error("%s has no services/ folder: run this at the top of the "
                  "moat source tree, or pass --root",
                  root);
        goto out;
    }
    if (!deploy_file)
        deploy_file = deploy_default;
    deploy_text = deploy_with(deploy_file, name, &port);
    if (!deploy_text)
        goto out;
    snprintf(port_text, sizeof(port_text), "%d", port);

    for (size_t i = 0; i < cli_ntemplates; i++) {
        paths[i] = output_path(&cli_templates[i], root, name, upper, port_text);
        if (exists(paths[i])) {
            cli_error("%s already exists: is there a service or test named "
                      "'%s'?",
                      paths[i], name);
            goto out;
        }
    }
    for (; written < cli_ntemplates; written++) {
        struct moat_buf b = MOAT_BUF_INIT;
        expand(&b, (const char *)cli_templates[written].text, name, upper,
               port_text);
        int wrc = make_parents(paths[written]);
        if (wrc == MOAT_OK)
            wrc = write_new(paths[written], moat_buf_str(&b), b.len);
        moat_buf_release(&b);
        if (wrc != MOAT_OK) {
            cli_error("cannot write %s: %s", paths[written], strerror(errno));
            goto out;
        }
    }
    char *tmp = moat_xasprintf("%s.tmp", deploy_file);
    unlink(tmp);
    bool saved = write_new(tmp, deploy_text, strlen(deploy_text)) == MOAT_OK &&
                 rename(tmp, deploy_file) == 0;
    if (!saved) {
        cli_error("cannot write %s: %s", deploy_file, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    if (!saved)
        goto out;
    format_sources(paths, cli_ntemplates);

    printf("created service '%s' on port %d:\n", name, port);
    for (size_t i = 0; i < cli_ntemplates; i++)
        printf("  %s\n", paths[i]);
    printf("added '%s' to %s\n"
           "services/CMakeLists.txt and tests/CMakeLists.txt pick the new "
           "folder and tests up by glob:\nre-run cmake, build, then "
           "ctest -R '(unit|integration)/test_%s$'\n",
           name, deploy_file, name);
    rc = CLI_EXIT_OK;

out:
    if (rc != CLI_EXIT_OK) {
        /* Leave nothing half made. */
        for (size_t i = 0; i < written; i++)
            unlink(paths[i]);
        if (written > 0) {
            char *dir = moat_xasprintf("%s/%s", services_dir, name);
            rmdir(dir);
            free(dir);
        }
    }
    for (size_t i = 0; i < cli_ntemplates; i++)
        free(paths[i]);
    free(paths);
    free(deploy_text);
    free(deploy_default);
    free(services_dir);
    return rc;
}
