/*
 * logs.c - `moat logs SERVICE [-f] [-n N]`: the end of a service's log,
 * optionally followed as it grows (like tail -F: a truncated or replaced
 * file is picked up from its start).
 */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define LOGS_DEFAULT_LINES 50
#define LOGS_MAX_LINES     10000000
#define FOLLOW_POLL_MS     200
#define COPY_CHUNK         65536

/* Copy fd from *off to its current end onto stdout. */
static int copy_from(int fd, off_t *off)
{
    char buf[COPY_CHUNK];
    ssize_t got;
    while ((got = pread(fd, buf, sizeof(buf), *off)) > 0) {
        if (fwrite(buf, 1, (size_t)got, stdout) != (size_t)got)
            return MOAT_EIO; /* e.g. the reader of a pipe went away */
        *off += got;
    }
    if (fflush(stdout) != 0)
        return MOAT_EIO;
    return got < 0 ? MOAT_EIO : MOAT_OK;
}

static int follow(const char *path, int fd, off_t off)
{
    struct timespec poll = {.tv_sec = 0, .tv_nsec = FOLLOW_POLL_MS * 1000000L};
    struct stat cur;
    if (fstat(fd, &cur) < 0)
        return MOAT_EIO;
    for (;;) {
        if (copy_from(fd, &off) != MOAT_OK)
            break;
        nanosleep(&poll, NULL);
        struct stat now;
        if (fstat(fd, &now) == 0 && now.st_size < off) {
            fprintf(stderr,
                    "moat: %s was truncated; following from its "
                    "start\n",
                    path);
            off = 0;
        }
        /* A new file at the path (the old one removed or rotated): finish
         * the old one, then switch. */
        struct stat named;
        if (stat(path, &named) == 0 &&
            (named.st_ino != cur.st_ino || named.st_dev != cur.st_dev)) {
            int nfd = open(path, O_RDONLY | O_CLOEXEC);
            if (nfd >= 0) {
                copy_from(fd, &off);
                close(fd);
                fd = nfd;
                off = 0;
                fstat(fd, &cur);
            }
        }
    }
    close(fd);
    return MOAT_OK;
}

int cli_cmd_logs(int argc, char **argv)
{
    static const struct option opts[] = {
        {"follow", no_argument, NULL, 'f'},
        {"lines", required_argument, NULL, 'n'},
        {"file", required_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL, *service = NULL;
    bool follow_mode = false;
    int64_t lines = LOGS_DEFAULT_LINES;
    int c;
    opterr = 0;
    /* -f follows here, as with tail; the deployment file is --file. */
    while ((c = getopt_long(argc, argv, ":fn:", opts, NULL)) != -1) {
        if (c == 'f') {
            follow_mode = true;
        } else if (c == 'n') {
            if (moat_parse_i64(optarg, 0, LOGS_MAX_LINES, &lines) != MOAT_OK)
                return cli_usage_error("logs",
                                       "-n needs a number of lines in "
                                       "0..%d, got '%s'",
                                       LOGS_MAX_LINES, optarg);
        } else if (c == 'F') {
            file = optarg;
        } else {
            return cli_option_error("logs", c, argv);
        }
    }
    if (optind >= argc)
        return cli_usage_error("logs", "which service? (moat logs SERVICE)");
    service = argv[optind];
    if (optind + 1 < argc)
        return cli_usage_error("logs", "unexpected argument '%s'",
                               argv[optind + 1]);

    int ret = CLI_EXIT_FAIL;
    char *path = NULL;
    int fd = -1;
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        goto cleanup;
    if (strcmp(service, "moat") != 0 && !deploy_find(d, service)) {
        fprintf(stderr,
                "error: no service '%s' in deployment \"%s\"; "
                "services:",
                service, d->name);
        for (size_t i = 0; i < d->nservices; i++)
            fprintf(stderr, " %s", d->services[i].name);
        fputs(" (and 'moat' for the supervisor)\n", stderr);
        ret = CLI_EXIT_USAGE;
        goto cleanup;
    }
    path = cli_log_path(d, service);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        char rel[4096];
        cli_error("cannot open %s: %s%s",
                  cli_display_path(path, rel, sizeof(rel)), strerror(errno),
                  errno == ENOENT ? " (has it been started with 'moat up'?)"
                                  : "");
        goto cleanup;
    }
    off_t off = cli_tail_offset(fd, (unsigned)lines);
    if (follow_mode) {
        follow(path, fd, off); /* returns when stdout goes away */
        fd = -1;
    } else if (copy_from(fd, &off) != MOAT_OK) {
        goto cleanup;
    }
    ret = CLI_EXIT_OK;

cleanup:
    if (fd >= 0)
        close(fd);
    free(path);
    deploy_free(d);
    return ret;
}
