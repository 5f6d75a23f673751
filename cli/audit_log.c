/*
 * audit_log.c - `moat audit-log verify`: check a service's audit log and
 * its head file the way a third party would, reading the files only. The
 * service need not run, and nothing is written, so an operator can run it
 * on a live system, on a backup or on a copy taken off the machine.
 */
#include "moat/common.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/audit.h"

#include "audit_log.h"
#include "cli.h"

#define CMD "audit-log"

/* Verify the log at path; name is what the messages call it, hint what
 * to add when there is no log. */
static int verify(const char *path, const char *name, const char *hint)
{
    struct moat_audit_report r;
    char rel[PATH_MAX];
    int rc = moat_audit_verify(path, &r);
    if (rc == MOAT_OK) {
        printf("%s: %llu record%s, intact\n", name,
               (unsigned long long)r.records, r.records == 1 ? "" : "s");
        return CLI_EXIT_OK;
    }
    if (rc == MOAT_ECONFLICT) {
        printf("%s: TAMPERED at line %llu: %s\n", name,
               (unsigned long long)r.bad_line, r.problem);
        return CLI_EXIT_FAIL;
    }
    if (rc == MOAT_ENOTFOUND)
        cli_error("no audit log at %s%s",
                  cli_display_path(path, rel, sizeof(rel)), hint);
    else
        cli_error("%s", r.problem[0] ? r.problem : moat_strerror(rc));
    return CLI_EXIT_FAIL;
}

static int cmd_verify(const char *service, const char *file, const char *path)
{
    int ret = CLI_EXIT_FAIL;
    char *log = NULL, *name = NULL;
    struct deploy *d = NULL;
    char rel[PATH_MAX];
    if (path) {
        name = moat_xasprintf("audit log %s",
                              cli_display_path(path, rel, sizeof(rel)));
        ret = verify(path, name, "");
        goto cleanup;
    }
    d = cli_load_deploy(file);
    if (!d)
        goto cleanup;
    const struct deploy_service *s = deploy_find(d, service);
    if (!s) {
        fprintf(stderr,
                "error: no service '%s' in deployment \"%s\"; services:",
                service, d->name);
        for (size_t i = 0; i < d->nservices; i++)
            fprintf(stderr, " %s", d->services[i].name);
        fputc('\n', stderr);
        ret = CLI_EXIT_USAGE;
        goto cleanup;
    }
    log = moat_xasprintf("%s/" MOAT_AUDIT_FILE, s->data_dir);
    name = moat_xasprintf("audit log of %s", service);
    ret = verify(log, name, " (the service has not written one yet)");

cleanup:
    free(name);
    free(log);
    deploy_free(d);
    return ret;
}

int cli_cmd_audit_log(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"path", required_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL, *path = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        if (c == 'f')
            file = optarg;
        else if (c == 'p')
            path = optarg;
        else
            return cli_option_error(CMD, c, argv);
    }
    if (optind >= argc)
        return cli_usage_error(CMD, "which subcommand? (moat audit-log "
                                    "verify SERVICE)");
    const char *sub = argv[optind++];
    if (strcmp(sub, "verify") != 0)
        return cli_usage_error(CMD, "unknown subcommand '%s' for 'moat %s'",
                               sub, CMD);
    const char *service = optind < argc ? argv[optind++] : NULL;
    if (optind < argc)
        return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (path && (service || file))
        return cli_usage_error(CMD, "--path names the log itself; give "
                                    "either SERVICE or --path");
    if (!path && !service)
        return cli_usage_error(CMD, "which service? (moat audit-log verify "
                                    "SERVICE, or --path LOG)");
    if (path && !path[0])
        return cli_usage_error(CMD, "--path needs a file name");
    return cmd_verify(service, file, path);
}
