/*
 * cli/secrets.h - the secrets `moat up` generates for a deployment.
 *
 * <var_dir>/secrets.json (mode 0600, written atomically) holds
 *   {"version": 1,
 *    "service_keys": {"catalog": "<base64 of 32 random bytes>", ...},
 *    "shared": {"MOAT_JWT_SECRET": "<base64>", ...}}
 * Each service key is that service's identity (MOAT_SERVICE_KEY); moat up
 * hands it to the service itself and to the services it accepts calls from
 * (MOAT_PEER_KEYS), and nobody else. A shared secret is generated once per
 * name and given to every service that lists the name in "secrets" (e.g.
 * the end-user JWT secret, to users and the gateway). Values persist, so
 * restarts keep tokens and identities valid; delete the file to rotate all.
 *
 * Ownership: cli_secrets_load hands the store to the caller (free with
 * cli_secrets_free); returned strings belong to the store.
 */
#ifndef MOAT_CLI_SECRETS_H
#define MOAT_CLI_SECRETS_H

#include <stdbool.h>

struct cli_secrets;

/* Load or create the store in var_dir; refuses a group/other-readable file. */
int cli_secrets_load(struct cli_secrets **out, const char *var_dir);
void cli_secrets_free(struct cli_secrets *s);
/* The key of service name, generated on first use. */
const char *cli_secret_service_key(struct cli_secrets *s, const char *name);
/* The shared secret called name, generated on first use. */
const char *cli_secret_shared(struct cli_secrets *s, const char *name);
/* The shared secret called name, or NULL when none was generated yet (for
 * readers such as the auditor, which must not invent one). */
const char *cli_secret_shared_find(const struct cli_secrets *s,
                                   const char *name);
/* True when something was generated since loading (not yet saved). */
bool cli_secrets_dirty(const struct cli_secrets *s);
/* Write the store if anything was generated. */
int cli_secrets_save(struct cli_secrets *s);

#endif /* MOAT_CLI_SECRETS_H */
