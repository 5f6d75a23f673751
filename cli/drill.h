/*
 * cli/drill.h - what `moat audit`, `moat chaos` and `moat bench` share:
 * operator tokens that renew themselves, the saga's services found in the
 * deployment, and the audit itself (chaos ends with one).
 *
 * Everything here talks to services over HTTP only, as the operator (the
 * CLI's identity, cli.h CLI_OPERATOR) or, for the payment provider, as the
 * merchant payments is: never a database file.
 *
 * Ownership: cli_optokens_new() hands the cache to the caller (free with
 * cli_optokens_free()); the header lines it returns belong to it and stay
 * valid until the next call for the same audience.
 */
#ifndef MOAT_CLI_DRILL_H
#define MOAT_CLI_DRILL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/types.h>

#include "deploy.h"

/* Operator service tokens live MOAT_SERVICE_TOKEN_TTL_S (60 s); the cache
 * mints a new one when the old one is this old. */
#define CLI_OPTOKEN_RENEW_S 30

struct cli_optokens;

struct cli_optokens *cli_optokens_new(const struct deploy *d);
void cli_optokens_free(struct cli_optokens *t);
/* "Moat-Service-Token: ..." for calls to audience, or NULL after printing
 * why (no operator key: the deployment never ran). */
const char *cli_optokens_get(struct cli_optokens *t, const char *audience);

/*
 * The payment provider payments uses, as the auditor needs it: its base
 * URL (payments' MOAT_PAYMENTS_PROVIDER_URL) and payments' merchant key
 * (MOAT_PAYMENTS_PROVIDER_KEY, a generated shared secret). Returns false
 * when the deployment has no such provider or the key was never generated.
 * Caller frees both strings (the key with sodium_memzero first).
 */
bool cli_provider_of(const struct deploy *d, char **url, char **key);

/* The deployment's service that listens where url points, or NULL. */
const struct deploy_service *cli_service_at(const struct deploy *d,
                                            const char *url);

/*
 * The supervisor's state file (cli.h) when a supervisor runs deployment d;
 * NULL after saying so otherwise. Caller json_decref()s.
 */
json_t *cli_running_state(const struct deploy *d);
/* The pid of service name in state (0 when not running); *status (may be
 * NULL) gets its supervisor status ("ready"...), borrowed from state. */
pid_t cli_state_pid(json_t *state, const char *name, const char **status);

struct cli_audit_opts {
    bool json;          /* machine output on stdout */
    bool quiet;         /* only violations and the summary line */
    unsigned grace_s;   /* confirming/compensating older than this: stuck */
    unsigned slack_s;   /* reserving/authorizing this far past deadline_at */
    unsigned parallel;  /* concurrent requests */
    unsigned max_print; /* violations printed in text mode, 0 = all */
};

#define CLI_AUDIT_GRACE_S   60
#define CLI_AUDIT_SLACK_S   5
#define CLI_AUDIT_PARALLEL  32
#define CLI_AUDIT_MAX_PRINT 200

/* Exit codes of an audit. */
#define CLI_AUDIT_CLEAN       0
#define CLI_AUDIT_VIOLATIONS  1
#define CLI_AUDIT_UNREACHABLE 2

/* Run the audit of d and print its report; returns a CLI_AUDIT_* code. */
int cli_audit_run(const struct deploy *d, const struct cli_audit_opts *o);

/*
 * What the auditor reads, for other commands that check the shop (moat
 * reconcile): every order (orders' list documents), inventory's
 * reservations (order id -> reservation), notifications (order id ->
 * array) and payments' payments of every final order (order id -> array;
 * absent without a payments service), read with the auditor's paging and
 * retries. reservations_listed is false when inventory has no reservation
 * list. Returns false after
 * printing why when something could not be read; *v is set either way
 * (release it with cli_shop_view_release).
 */
struct cli_shop_view {
    json_t *orders, *reservations, *notes, *payments;
    bool reservations_listed;
};
bool cli_shop_gather(const struct deploy *d, unsigned parallel,
                     struct cli_shop_view *v);
void cli_shop_view_release(struct cli_shop_view *v);

/* moat reconcile (reconcile.c). */
int cli_cmd_reconcile(int argc, char **argv);

#endif /* MOAT_CLI_DRILL_H */
