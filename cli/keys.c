/*
 * keys.c - `moat keys status|rotate|retire SERVICE`: a service's encryption
 * keys, through its own admin API (never its files; moat/keys.h). Rotation
 * adds a data key and the service re-seals its rows in the background
 * while it keeps serving; --wait follows it until every row is under the
 * new key. Retirement then drops the older keys from the service's key
 * file (refused while any row still needs one).
 */
#include "moat/common.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define KEYS_TIMEOUT_MS  10000
#define KEYS_POLL_MS     200
#define KEYS_MAX_WAIT_MS (10 * 60 * 1000)

/* GET /v1/admin/keys; prints it; *rotating says whether re-sealing goes on. */
static int show(const struct deploy *d, const struct deploy_service *svc,
                bool *rotating, bool print)
{
    long status = 0;
    char *body = NULL;
    int ret = CLI_EXIT_FAIL;
    if (cli_operator_call(d, svc, "GET", "/v1/admin/keys", NULL,
                          KEYS_TIMEOUT_MS, &status, &body) != MOAT_OK)
        goto out;
    json_t *j = json_loads(body, 0, NULL);
    if (status != 200 || !j) {
        cli_error("%s answered %ld: %s", svc->name, status, body);
        json_decref(j);
        goto out;
    }
    *rotating = json_is_true(json_object_get(j, "rotating"));
    if (print) {
        char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        puts(text);
        free(text);
    }
    json_decref(j);
    ret = CLI_EXIT_OK;
out:
    free(body);
    return ret;
}

int cli_cmd_keys(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"wait", no_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    bool wait = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:w", opts, NULL)) != -1) {
        if (c == 'f')
            file = optarg;
        else if (c == 'w')
            wait = true;
        else
            return cli_option_error("keys", c, argv);
    }
    if (argc - optind != 2 || (strcmp(argv[optind], "status") != 0 &&
                               strcmp(argv[optind], "rotate") != 0 &&
                               strcmp(argv[optind], "retire") != 0))
        return cli_usage_error("keys", "use: moat keys status|rotate|retire "
                                       "SERVICE [--wait] [--file FILE]");
    bool rotate = strcmp(argv[optind], "rotate") == 0;
    bool retire = strcmp(argv[optind], "retire") == 0;
    const char *name = argv[optind + 1];

    int ret = CLI_EXIT_FAIL;
    char *body = NULL;
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        goto out;
    const struct deploy_service *svc = deploy_find(d, name);
    if (!svc) {
        ret = cli_usage_error("keys", "no service '%s' in deployment \"%s\"",
                              name, d->name);
        goto out;
    }
    bool rotating = false;
    if (retire) {
        long status = 0;
        if (cli_operator_call(d, svc, "POST", "/v1/admin/keys/retire", NULL,
                              KEYS_TIMEOUT_MS, &status, &body) != MOAT_OK)
            goto out;
        if (status != 200) {
            cli_error("%s refused to retire its old keys (%ld): %s", name,
                      status, body);
            goto out;
        }
        printf("moat: %s retired its old data keys: %s\n", name, body);
        ret = CLI_EXIT_OK;
        goto out;
    }
    if (rotate) {
        long status = 0;
        if (cli_operator_call(d, svc, "POST", "/v1/admin/keys/rotate", NULL,
                              KEYS_TIMEOUT_MS, &status, &body) != MOAT_OK)
            goto out;
        if (status < 200 || status > 299) {
            cli_error("%s refused the rotation (%ld): %s", name, status, body);
            goto out;
        }
        printf("moat: %s rotated to a new data key; re-sealing rows in the "
               "background\n",
               name);
    }
    if (!wait || !rotate) {
        ret = show(d, svc, &rotating, true);
        goto out;
    }
    struct timespec pause = {0, KEYS_POLL_MS * 1000000L};
    for (long waited = 0; waited < KEYS_MAX_WAIT_MS; waited += KEYS_POLL_MS) {
        if (show(d, svc, &rotating, false) != CLI_EXIT_OK)
            goto out;
        if (!rotating)
            break;
        nanosleep(&pause, NULL);
    }
    ret = show(d, svc, &rotating, true);
    if (ret == CLI_EXIT_OK && rotating) {
        cli_error("%s is still re-sealing after %d s", name,
                  KEYS_MAX_WAIT_MS / 1000);
        ret = CLI_EXIT_FAIL;
    }
out:
    free(body);
    deploy_free(d);
    return ret;
}
