/*
 * certs.c - `moat certs`: the deployment CA and a certificate per service
 * (moat/tls.h), under <var_dir>/certs:
 *
 *   ca.crt, ca.key          the deployment CA (P-256, 10 years)
 *   NAME.crt, NAME.key      one per service of the deployment file
 *   operator.crt/.key       the moat CLI's client certificate
 *   postgres.crt/.key       the private PostgreSQL cluster's, when the
 *                           deployment has a "postgres" block
 *
 * Every file is 0600 in a 0700 directory. Existing files are kept (a
 * missing one is issued by the CA on disk); --force makes a new CA and
 * new certificates for everything. `moat up` runs the same when the
 * deployment has "tls": true and hands each service only its own key and
 * certificate plus ca.crt.
 */
#include "moat/common.h"

#include <errno.h>
#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moat/tls.h"

#include "cli.h"

char *cli_cert_path(const struct deploy *d, const char *name, const char *ext)
{
    return moat_xasprintf("%s/certs/%s.%s", d->var_dir, name, ext);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *buf = moat_xcalloc(1, 65537);
    size_t n = fread(buf, 1, 65536, f);
    fclose(f);
    if (n == 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void free_key(char *key)
{
    if (key)
        sodium_memzero(key, strlen(key));
    free(key);
}

/* Write cert and key of name; MOAT_OK or MOAT_EIO (printed). */
static int save_pair(const struct deploy *d, const char *name, const char *cert,
                     const char *key)
{
    char *cp = cli_cert_path(d, name, "crt");
    char *kp = cli_cert_path(d, name, "key");
    int rc = moat_tls_write_pem(kp, key);
    if (rc == MOAT_OK)
        rc = moat_tls_write_pem(cp, cert);
    if (rc != MOAT_OK)
        cli_error("cannot write %s: %s", rc == MOAT_OK ? cp : kp,
                  strerror(errno));
    free(cp);
    free(kp);
    return rc;
}

static bool have(const struct deploy *d, const char *name)
{
    char *cp = cli_cert_path(d, name, "crt");
    char *kp = cli_cert_path(d, name, "key");
    bool ok = access(cp, R_OK) == 0 && access(kp, R_OK) == 0;
    free(cp);
    free(kp);
    return ok;
}

int cli_certs_ensure(const struct deploy *d, bool force, bool verbose)
{
    char *dir = moat_xasprintf("%s/certs", d->var_dir);
    if ((mkdir(d->var_dir, 0700) != 0 && errno != EEXIST) ||
        (mkdir(dir, 0700) != 0 && errno != EEXIST) || chmod(dir, 0700) != 0) {
        cli_error("cannot create %s: %s", dir, strerror(errno));
        free(dir);
        return MOAT_EIO;
    }
    free(dir);
    int rc = MOAT_OK;
    char *ca_cert = NULL, *ca_key = NULL;
    if (force || !have(d, "ca")) {
        force = true; /* a new CA: every certificate must be new too */
        rc = moat_tls_make_ca(d->name, MOAT_TLS_CA_DAYS, &ca_cert, &ca_key);
        if (rc == MOAT_OK)
            rc = save_pair(d, "ca", ca_cert, ca_key);
        if (rc == MOAT_OK && verbose)
            printf("moat: new deployment CA in %s/certs/ca.crt\n", d->var_dir);
    } else {
        char *cp = cli_cert_path(d, "ca", "crt");
        char *kp = cli_cert_path(d, "ca", "key");
        ca_cert = slurp(cp);
        ca_key = slurp(kp);
        if (!ca_cert || !ca_key) {
            cli_error("cannot read the deployment CA (%s, %s)", cp, kp);
            rc = MOAT_EIO;
        }
        free(cp);
        free(kp);
    }
    /* The services, the operator, and the PostgreSQL cluster moat up runs
     * (its server certificate). */
    for (size_t i = 0; rc == MOAT_OK && i <= d->nservices + 1; i++) {
        const char *name = i < d->nservices    ? d->services[i].name
                           : i == d->nservices ? CLI_OPERATOR
                           : d->pg             ? d->pg->name
                                               : NULL;
        if (!name || (!force && have(d, name)))
            continue;
        char *cert = NULL, *key = NULL;
        rc = moat_tls_make_cert(ca_cert, ca_key, name, -300, MOAT_TLS_CERT_DAYS,
                                &cert, &key);
        if (rc == MOAT_OK)
            rc = save_pair(d, name, cert, key);
        else
            cli_error("cannot issue a certificate for %s", name);
        if (rc == MOAT_OK && verbose)
            printf("moat: certificate for %s\n", name);
        free(cert);
        free_key(key);
    }
    free(ca_cert);
    free_key(ca_key);
    return rc;
}

int cli_tls_operator(const struct deploy *d)
{
    if (!d->tls)
        return MOAT_OK;
    char *cp = cli_cert_path(d, CLI_OPERATOR, "crt");
    char *kp = cli_cert_path(d, CLI_OPERATOR, "key");
    char *ca = cli_cert_path(d, "ca", "crt");
    int rc = MOAT_ENOTFOUND;
    if (access(cp, R_OK) == 0)
        rc = moat_tls_load(cp, kp, ca);
    free(cp);
    free(kp);
    free(ca);
    return rc;
}

int cli_cmd_certs(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"force", no_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    bool force = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:", opts, NULL)) != -1) {
        if (c == 'f')
            file = optarg;
        else if (c == 'F')
            force = true;
        else
            return cli_option_error("certs", c, argv);
    }
    if (optind < argc)
        return cli_usage_error("certs", "unexpected argument '%s'",
                               argv[optind]);
    struct deploy *d = cli_load_deploy(file);
    if (!d)
        return CLI_EXIT_FAIL;
    int rc = cli_certs_ensure(d, force, true);
    if (rc == MOAT_OK)
        printf("moat: certificates of deployment \"%s\" are in %s/certs%s\n",
               d->name, d->var_dir,
               d->tls ? "" : " (the deployment has no \"tls\": true yet)");
    deploy_free(d);
    return rc == MOAT_OK ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
