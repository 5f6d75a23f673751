/*
 * cli/pgcluster.h - the private PostgreSQL 15 cluster `moat up` runs when
 * the deployment file has a top-level "postgres" block (deploy.h), and the
 * connection string each service with "engine": "postgres" gets.
 *
 * Files (all absolute, under the deployment's var_dir):
 *   postgres/data/          PGDATA (initdb: UTF8, scram-sha-256), with
 *                           postgresql.conf and pg_hba.conf rewritten on
 *                           every `moat up`, and server.crt/server.key (a
 *                           copy of certs/postgres.*) when "tls" is true
 *   postgres/run/           the Unix socket (only the superuser uses it)
 *   secrets/postgres.pgpass the superuser "moat"'s password (libpq
 *                           passfile format, 0600)
 *   secrets/<svc>.pgpass    role moat_<svc>'s password (0600)
 *   log/postgres.log        the server's log
 * Run as root, initdb and postgres run as the "postgres" system user, who
 * then owns postgres/ (var_dir gets o+x so that user can reach it).
 *
 * Each service S with engine postgres and no "dsn" gets database and role
 * moat_S ('-' in S becomes '_'): the role owns the database and its public
 * schema, CONNECT and TEMP on the database are revoked from PUBLIC, and
 * pg_hba.conf lets that role reach only that database, over TLS when the
 * deployment has it. Its MOAT_DB_DSN is
 *   host=H port=P dbname=moat_S user=moat_S passfile=<var>/secrets/S.pgpass
 *   sslmode=verify-full sslrootcert=<var>/certs/ca.crt connect_timeout=5
 * (sslmode=disable and no sslrootcert without "tls"); a service with a
 * "dsn" gets that string as it is. No password is in the environment.
 *
 * Ownership: returned strings are allocated; the caller frees them.
 */
#ifndef MOAT_CLI_PGCLUSTER_H
#define MOAT_CLI_PGCLUSTER_H

#include <stdbool.h>
#include <sys/types.h>

#include "deploy.h"

#define CLI_PG_SUPERUSER "moat"

/* "moat_<name>" with '-' as '_': the role and database of a service. */
char *cli_pg_ident(const char *service);
/* "<var_dir>/secrets/<who>.pgpass" (who: a service, or "postgres" for the
 * superuser's). */
char *cli_pg_passfile(const struct deploy *d, const char *who);
/* MOAT_DB_DSN of svc, or NULL when its engine is not postgres. */
char *cli_pg_dsn(const struct deploy *d, const struct deploy_service *svc);

/*
 * Before the cluster starts (d->pg set): directories, passwords, initdb
 * when PGDATA is new, postgresql.conf, pg_hba.conf, the TLS pair. Sets
 * *uid and *gid to the user postgres must run as (0 when not run as
 * root). Prints what fails; MOAT_OK or an error code.
 */
int cli_pg_prepare(const struct deploy *d, uid_t *uid, gid_t *gid);

/* Once the cluster accepts connections: roles, databases, privileges, as
 * the superuser over the Unix socket. Idempotent. Prints what fails. */
int cli_pg_provision(const struct deploy *d);

/*
 * Whether the cluster accepts connections (PQping, no password sent): over
 * its Unix socket when this process may enter the socket's directory (the
 * supervisor, root), which leaves no trace in the server's log; else on
 * its TCP address, where pg_hba.conf logs the refused probe.
 */
enum cli_pg_health { CLI_PG_DOWN, CLI_PG_STARTING, CLI_PG_READY };
enum cli_pg_health cli_pg_ping(const struct deploy *d);

#endif /* MOAT_CLI_PGCLUSTER_H */
