/*
 * main.c - the moat command: dispatch to up, down, status, logs, help.
 *
 * The CLI links libmoat only, never a service's code: it knows services by
 * their deployment entry, their process and their HTTP endpoints, exactly
 * as an operator does.
 */
#include "moat/common.h"

#include <curl/curl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "audit_log.h"
#include "backup.h"
#include "cli.h"
#include "drill.h"
#include "events.h"

static const char usage[] =
    "usage: moat <command> [options]\n"
    "\n"
    "commands:\n"
    "  up [-f FILE]              start every service of the deployment in\n"
    "                            dependency order and supervise them in the\n"
    "                            foreground (Ctrl-C stops them all)\n"
    "  down [-f FILE]            stop the supervisor running the deployment\n"
    "  status [-f FILE] [--json] per service: pid, port, health, database,\n"
    "                            restarts; exit 0 only if all are ready\n"
    "  logs SERVICE [-f] [-n N] [--file FILE]\n"
    "                            print the last N lines (default 50) of a\n"
    "                            service's log, -f to follow; SERVICE 'moat'\n"
    "                            is the supervisor's own log\n"
    "  audit-log verify SERVICE [--file FILE]\n"
    "                            check that a service's audit log is intact\n"
    "                            (hash chain and head; reads files only)\n"
    "  audit-log verify --path LOG\n"
    "                            the same for an audit log file anywhere\n"
    "  keys status|rotate|retire SERVICE [--wait] [--file FILE]\n"
    "                            a service's encryption keys; rotate adds a\n"
    "                            data key and re-seals rows while it serves;\n"
    "                            retire then drops the older keys\n"
    "  events status [--file FILE] [--json]\n"
    "                            per consuming service and source: cursor,\n"
    "                            head, lag, state, dead letters\n"
    "  events dead-letters SERVICE [--source S] [--subject X] [--limit N]\n"
    "                            the events a service parked, with errors\n"
    "  events redrive SERVICE [--source S] [--subject X]\n"
    "                            apply parked events again, in order\n"
    "  events replay SERVICE [--verify] [--timeout SECONDS]\n"
    "                            rebuild a service's view from sequence 0;\n"
    "                            --verify rebuilds a scratch copy and\n"
    "                            compares (exit 1 if they differ)\n"
    "  audit [--file FILE] [--json] [--grace S]\n"
    "                            check the order saga across services (API\n"
    "                            only): payments, reservations, stock,\n"
    "                            notifications, ledgers; exit 1 on a\n"
    "                            violation, 2 if a service is unreachable\n"
    "  reconcile [--file FILE] [--json] [--repair]\n"
    "                            after a service was restored from a backup:\n"
    "                            find where services disagree about orders\n"
    "                            (API only) and repair what is safe\n"
    "  chaos [--file FILE] [--setup] [--duration S] [--rate R] [--seed N]\n"
    "        [--kill-interval-ms MS] [--include-provider]\n"
    "        [--include-infra] [--settle S]\n"
    "                            place orders through the gateway while\n"
    "                            killing and pausing services, settle, audit\n"
    "  bench [--file FILE] [--mode closed|open] [--concurrency N]\n"
    "        [--rate R] [--duration S] [--json]\n"
    "                            order throughput and latency percentiles\n"
    "                            through the gateway, per-service RSS and CPU\n"
    "  social seed [--file FILE] [--users N] [--edges N]\n"
    "        [--posts-per-user N] [--seed N] [--parallel N]\n"
    "                            build a synthetic social graph (default the\n"
    "                            size of socfb-Reed98) through the gateway:\n"
    "                            users, profiles, connections, follows, posts\n"
    "  social bench [--file FILE] [--mode closed|open] [--concurrency N]\n"
    "        [--rate R] [--duration S] [--users N] [--seed N] [--json]\n"
    "        [--mix H,U,C]\n"
    "                            DeathStarBench's mix (60 %% home timeline,\n"
    "                            30 %% user timeline, 10 %% compose; --mix\n"
    "                            sets the percentages) and graph\n"
    "                            query latency, per-service RSS and CPU\n"
    "  social msgbench [--file FILE] [--rate R] [--duration S]\n"
    "        [--conversations N] [--members N] [--wait S] [--seed N] [--json]\n"
    "                            messages sent/s and delivery latency to\n"
    "                            members waiting in long polls, analytics'\n"
    "                            lag, per-service RSS and CPU\n"
    "  report NAME [--from D] [--to D] [--csv|--json] [--limit N]\n"
    "        [--by quantity|revenue] [--file FILE]\n"
    "                            a reporting service report: revenue-per-day,\n"
    "                            top-products, cancellation-reasons,\n"
    "                            stock-turnover, saga-durations (D is\n"
    "                            YYYY-MM-DD)\n"
    "  new service NAME [--deploy FILE] [--root DIR]\n"
    "                            generate services/NAME on the service\n"
    "                            skeleton (store, outbox, consumer stub,\n"
    "                            tests, docs/NAME.md) and add it to FILE\n"
    "                            (default moat.json) on the next port\n"
    "  certs [--force]           the deployment CA and a TLS certificate per\n"
    "                            service and the operator, under\n"
    "                            <var_dir>/certs (moat up makes them when\n"
    "                            the file says \"tls\": true)\n"
    "  backup SERVICE|--all [--file FILE]\n"
    "                            an online backup of each service's own store\n"
    "                            into <var_dir>/backups/SERVICE/ (retention\n"
    "                            and cadence: \"backup\" in the deployment)\n"
    "  backup list [SERVICE] [--file FILE]\n"
    "                            the backups kept, newest first\n"
    "  backup verify BACKUP [--file FILE]\n"
    "                            check a backup read-only: checksums,\n"
    "                            integrity, schema, outbox head, cursors\n"
    "  restore SERVICE --from BACKUP [--timeout S] [--file FILE]\n"
    "                            stop SERVICE, put the backup in place, start\n"
    "                            it with a new feed epoch\n"
    "  help                      show this help\n"
    "\n"
    "FILE is the deployment file: -f/--file, else $MOAT_DEPLOY, else\n"
    "./moat.json. Exit status: 0 success, 1 failure, 2 usage error.\n"
    "See docs/operations.md for the file format and the files moat writes.\n";

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "usage: see 'moat help' (moat %s)\n", cmd);
    else
        fputs("usage: see 'moat help'\n", stderr);
    return CLI_EXIT_USAGE;
}

int cli_option_error(const char *cmd, int c, char **argv)
{
    /* getopt leaves the offending element at optind - 1. */
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':')
        return cli_usage_error(cmd, "option '%s' needs a value", arg);
    if (optopt && strncmp(arg, "--", 2) != 0)
        return cli_usage_error(cmd, "unknown option '-%c' for 'moat %s'",
                               optopt, cmd);
    return cli_usage_error(cmd, "unknown option '%s' for 'moat %s'", arg, cmd);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 ||
        strcmp(cmd, "-h") == 0) {
        fputs(usage, stdout);
        return CLI_EXIT_OK;
    }

    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } commands[] = {
        {"up", cli_cmd_up},
        {"down", cli_cmd_down},
        {"status", cli_cmd_status},
        {"logs", cli_cmd_logs},
        {"audit-log", cli_cmd_audit_log},
        {"keys", cli_cmd_keys},
        {"events", cli_cmd_events},
        {"audit", cli_cmd_audit},
        {"reconcile", cli_cmd_reconcile},
        {"chaos", cli_cmd_chaos},
        {"bench", cli_cmd_bench},
        {"social", cli_cmd_social},
        {"report", cli_cmd_report},
        {"new", cli_cmd_new},
        {"certs", cli_cmd_certs},
        {"backup", cli_cmd_backup},
        {"restore", cli_cmd_restore},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(commands); i++) {
        if (strcmp(cmd, commands[i].name) != 0)
            continue;
        /* "moat up --help" is help, not an unknown option. */
        for (int a = 2; a < argc; a++) {
            if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) {
                fputs(usage, stdout);
                return CLI_EXIT_OK;
            }
        }
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            cli_error("cannot initialise libcurl");
            return CLI_EXIT_FAIL;
        }
        int rc = commands[i].fn(argc - 1, argv + 1);
        curl_global_cleanup();
        return rc;
    }
    if (cmd[0] == '-')
        return cli_usage_error(NULL,
                               "unknown option '%s'; a command comes "
                               "first",
                               cmd);
    return cli_usage_error(NULL, "unknown command '%s'", cmd);
}
