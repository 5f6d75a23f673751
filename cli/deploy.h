/*
 * cli/deploy.h - the deployment file that `moat up` runs: which services,
 * where they listen, where their data lives, how the gateway routes.
 *
 *   {"name": "local", "var_dir": "var", "services": [
 *     {"name": "catalog", "listen": "127.0.0.1:8081", "engine": "sqlite",
 *      "db": "catalog.db", "env": {"MOAT_LOG_LEVEL": "debug"}},
 *     {"name": "gateway", "listen": "127.0.0.1:8080", "engine": "none",
 *      "routes": [{"prefix": "/api/v1/products", "service": "catalog",
 *                  "path": "/v1/products"}]}]}
 *
 * Parsing is strict: duplicate keys, unknown fields and wrong types are
 * errors, each message naming the field as a path ("services[1].listen").
 * Every error found is reported, one per line, so a user fixes a file in one
 * pass rather than one complaint at a time.
 *
 * Paths: var_dir and data_dir resolve against the directory of the
 * deployment file; db resolves against the service's data_dir and must stay
 * inside it (a service is confined to its data directory, so a database
 * elsewhere could not be opened). All resolved paths are absolute and
 * lexically normalised (no ".", "..", "//").
 *
 * Ownership: deploy_parse() and deploy_load() hand a struct deploy to the
 * caller, who frees it (and everything it points to) with deploy_free().
 * Error texts are allocated; the caller frees them with free().
 */
#ifndef MOAT_CLI_DEPLOY_H
#define MOAT_CLI_DEPLOY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DEPLOY_MAX_SERVICES        64
#define DEPLOY_MAX_ROUTES          64
#define DEPLOY_MAX_ENV             128
#define DEPLOY_NAME_MAX            32  /* [a-z][a-z0-9-]{0,31} */
#define DEPLOY_HOST_MAX            64  /* listen host, NUL included */
#define DEPLOY_URLPATH_MAX         256 /* route prefix and upstream path */
#define DEPLOY_MAX_ERRORS          20 /* further errors are counted, not listed */
#define DEPLOY_DSN_MAX             1024       /* a service's "dsn" */
#define DEPLOY_FILE_MAX            (1u << 20) /* a deployment file is small */
#define DEPLOY_BACKUP_KEEP_DEFAULT 7          /* backups kept per service */
#define DEPLOY_BACKUP_KEEP_MAX     1000
#define DEPLOY_MAX_INSTANCES       16 /* "listen" addresses of one service */

/* The storage engine a service uses; it decides how `moat status` sizes the
 * database (a SQLite file plus -wal/-shm, an LMDB directory...). */
enum deploy_engine {
    DEPLOY_ENGINE_NONE,
    DEPLOY_ENGINE_SQLITE,
    DEPLOY_ENGINE_LMDB,
    /* PostgreSQL: a database of its own on the deployment's private
     * cluster ("postgres" block) or on the server its "dsn" names; the
     * service gets MOAT_DB_DSN (docs/operations.md "PostgreSQL per
     * service"). No "db" file. */
    DEPLOY_ENGINE_POSTGRES,
};

struct deploy_route {
    char *prefix;  /* public path prefix at the gateway, "/api/v1/products" */
    char *service; /* name of the upstream service */
    char *path;    /* path prefix on the upstream, "/v1/products" */
    unsigned public_methods; /* DEPLOY_METHOD_* allowed without a token */
};

/* Methods a route may list in "public" (no end-user token needed). */
enum deploy_method {
    DEPLOY_METHOD_GET = 1 << 0,
    DEPLOY_METHOD_POST = 1 << 1,
    DEPLOY_METHOD_PUT = 1 << 2,
    DEPLOY_METHOD_PATCH = 1 << 3,
    DEPLOY_METHOD_DELETE = 1 << 4,
};

struct deploy_env {
    char *name;  /* environment variable name */
    char *value; /* its value */
};

/*
 * One instance of a service: "listen" may be an array of addresses, one
 * process per address (docs/operations.md "Several instances"), all with
 * the service's name, keys, data directory and database.
 */
struct deploy_instance {
    char *listen;               /* "host:port" as written; owned */
    char host[DEPLOY_HOST_MAX]; /* parsed */
    uint16_t port;
    /* After deploy_select_host: the host as written (host is then the
     * deployment host's address); "" before. */
    char written[DEPLOY_HOST_MAX];
};

/*
 * Hosts (docs/operations.md "Hosts"): "hosts": {"a": {"address":
 * "10.77.0.1"}, ...} names the machines of a deployment, and a service's
 * "host": "a" puts it on one. Only once a host is selected
 * (deploy_select_host: `moat up --host a`, or $MOAT_HOST for every
 * command) do services listen on, and get reached at, their host's
 * address; until then the file's listen addresses apply, all local.
 */
#define DEPLOY_MAX_HOSTS 16
struct deploy_host {
    char *name;                    /* owned */
    char address[DEPLOY_HOST_MAX]; /* IPv4 address */
};

struct deploy_service {
    char *name;                 /* [a-z][a-z0-9-]{0,31} */
    char *listen;               /* "host:port" as written */
    char host[DEPLOY_HOST_MAX]; /* parsed host of listen */
    uint16_t port;              /* parsed port of listen, 1..65535 */
    /* Its instances in "listen" order (1 for a plain string); inst[0] is
     * listen, host and port above. Owned; NULL only for the broker. */
    struct deploy_instance *inst;
    size_t ninstances;
    char *host_name; /* "host": a name in d->hosts; NULL = none; owned */
    enum deploy_engine engine;
    char *db;       /* absolute path of its database; NULL for engine none */
    char *data_dir; /* absolute path */
    char *binary;   /* the "binary" field as written; NULL = moat-<name> */
    struct deploy_env *env; /* extra environment, in file order */
    size_t nenv;
    struct deploy_route *routes; /* non-empty only for a gateway */
    size_t nroutes;
    char **calls; /* services it calls besides its routes' targets */
    size_t ncalls;
    char **secrets; /* env names of shared secrets moat generates */
    size_t nsecrets;
    int level; /* start order: 0 = no routes; else 1 + max(level of targets) */
    bool tls;  /* serves HTTPS (the deployment's "tls") */
    /* "backup": {"every", "keep"}: moat up backs the service up every
     * backup_every_ms (0 = never by itself); backup_keep are kept. */
    int64_t backup_every_ms;
    unsigned backup_keep;
    /* Only for the broker moat up runs (struct deploy.broker): its program
     * arguments (NULL-ended, owned) and health path ("/healthz" of
     * nats-server's monitoring port); NULL: none and "/readyz". */
    char **args;
    const char *ready_path;
    /* The scheme clients use ("redis" for the cache moat up runs, whose
     * health moat probes with PING); NULL: http or https. Static. */
    const char *scheme;
    /* engine postgres: the "dsn" as written (a libpq connection string to
     * a server of the user's own), or NULL for the private cluster. */
    char *dsn;
    bool pg_cluster; /* the entry of the private cluster (deploy.pg) */
};

/*
 * The event transport: "transport": "http" (the default: each producer
 * serves its feed) or "jetstream" (moat/jetstream.h), with
 *   "jetstream": {"url": "nats://HOST:PORT"}       a broker run elsewhere
 *   "jetstream": {"listen": "127.0.0.1:4222", "monitor": "127.0.0.1:8222",
 *                 "max_memory_mb": 64, "max_file_mb": 1024}
 * (the second form, all optional, values shown are the defaults): moat up
 * runs nats-server from DEPLOY_NATS_SERVER with JetStream on, its store
 * under <var_dir>/nats/jetstream, those limits, listening on listen, its
 * health (/healthz) on monitor.
 */
#define DEPLOY_NATS_SERVER "/usr/sbin/nats-server"
enum deploy_transport { DEPLOY_TRANSPORT_HTTP, DEPLOY_TRANSPORT_JETSTREAM };

struct deploy {
    char *name;    /* deployment name, for display */
    char *file;    /* the deployment file as given (for messages) */
    char *dir;     /* absolute directory of the deployment file */
    char *var_dir; /* absolute; holds moat.state, moat.lock, log/ */
    struct deploy_service *services; /* in file order */
    size_t nservices;
    int max_level; /* highest level among services */
    /* "tls": true - every service serves HTTPS with mutual TLS, from the
     * certificates of `moat certs` under <var_dir>/certs (docs/security.md
     * "TLS on every hop"). Default false. */
    bool tls;
    enum deploy_transport transport;
    char *nats_url; /* jetstream: what services get as MOAT_NATS_URL */
    /* jetstream without a "url": the nats-server moat up runs, as a
     * service of level 0 named "nats" that is not in services (engine
     * none; listen is its monitoring address). Owned; NULL otherwise. */
    struct deploy_service *broker;
    struct deploy_host *hosts; /* "hosts", in file order; owned */
    size_t nhosts;
    /* deploy_select_host: the host whose share this process runs (moat
     * up) or sees the deployment from; NULL = none (all local). Its state
     * and lock are in state_dir, <var_dir>/hosts/<name> (NULL: var_dir).
     * Both owned. */
    char *selected_host;
    char *state_dir;
    char nats_host[DEPLOY_HOST_MAX]; /* its client address */
    uint16_t nats_port;
    unsigned nats_max_memory_mb, nats_max_file_mb;
    /* "redis" (see below): what gateways get as MOAT_REDIS_URL (NULL: no
     * read cache), and the redis-server moat up runs, as a service of
     * level 0 named "redis" not in services (NULL for a "url"). Owned. */
    char *redis_url;
    struct deploy_service *redis;
    unsigned redis_max_memory_mb;
    /*
     * "postgres": {"listen": "127.0.0.1:5433", "max_connections": 50,
     *              "shared_buffers_mb": 32}
     * (listen required, on a loopback address; the others optional, the
     * defaults shown): moat up runs a private PostgreSQL 15 cluster under
     * <var_dir>/postgres as the entry pg, named "postgres", of level
     * min_level (-1: before every service, stopped after them all). The
     * entry's listen is the cluster's address; binary DEPLOY_PG_BINDIR
     * "/postgres". Owned; NULL without the block.
     */
    struct deploy_service *pg;
    unsigned pg_max_connections, pg_shared_buffers_mb;
    int min_level; /* lowest level: -1 with pg, else 0 */
};

#define DEPLOY_PG_BINDIR "/usr/lib/postgresql/15/bin"

/*
 * The gateways' read cache (docs/operations.md "Redis"):
 *   "redis": {"url": "redis://[:PASSWORD@]HOST:PORT"}  a server run elsewhere
 *   "redis": {"listen": "127.0.0.1:6380", "max_memory_mb": 64}
 * (the second form, both optional, values shown are the defaults; 6380, as
 * Debian's own redis-server service takes 6379): moat up
 * runs DEPLOY_REDIS_SERVER under <var_dir>/redis from a configuration it
 * writes there (loopback, no persistence, maxmemory with volatile-lru,
 * protected mode, a password generated into secrets.json and written to
 * <var_dir>/secrets/redis.password, mode 0600, which gateways read).
 */
#define DEPLOY_REDIS_SERVER "/usr/bin/redis-server"

/*
 * The processes moat up runs besides the file's services (the PostgreSQL
 * cluster, the broker, Redis), k from 0; NULL past the last. Borrowed
 * from d.
 */
const struct deploy_service *deploy_builtin(const struct deploy *d, size_t k);
/* How many there are. */
size_t deploy_nbuiltin(const struct deploy *d);

/*
 * Parse and validate deployment JSON. file names the source in messages;
 * base_dir (absolute) is where relative paths resolve. On success returns
 * MOAT_OK and *out (caller frees with deploy_free). On failure returns
 * MOAT_EINVAL and *err, one "file: field: problem" per line (caller frees).
 */
int deploy_parse(const char *json, size_t len, const char *file,
                 const char *base_dir, struct deploy **out, char **err);

/*
 * Read and parse the deployment file at path (relative to the current
 * directory). Same results as deploy_parse; a file that cannot be read is
 * MOAT_EIO with *err set.
 */
int deploy_load(const char *path, struct deploy **out, char **err);

void deploy_free(struct deploy *d);

/*
 * Every process moat up runs: the services in file order, then the
 * built-in ones above. i < deploy_nprocs.
 * Borrowed from d.
 */
size_t deploy_nprocs(const struct deploy *d);
const struct deploy_service *deploy_proc(const struct deploy *d, size_t i);

/*
 * Select host name: every service with a "host" moves to that host's
 * address (its listen port kept), so URLs derived from d name the hosts'
 * addresses; d->selected_host and d->state_dir are set. MOAT_EINVAL with
 * *err (caller frees) when d has no such host.
 */
int deploy_select_host(struct deploy *d, const char *name, char **err);
/*
 * value with every "://HOST:PORT" naming a service as written in the file
 * moved to where deploy_select_host put it (env values such as
 * MOAT_ORDERS_CATALOG_URL). Caller frees.
 */
char *deploy_moved_urls(const struct deploy *d, const char *value);

/* The service called name, or NULL. Borrowed from d. */
const struct deploy_service *deploy_find(const struct deploy *d,
                                         const char *name);

/*
 * The host a client uses to reach s: its listen host, except that a
 * wildcard listen address (0.0.0.0) is reached on loopback. Borrowed.
 */
const char *deploy_connect_host(const struct deploy_service *s);

/* "http://HOST:PORT" of s for clients ("https://" when s->tls); caller
 * frees. The first instance's. */
char *deploy_base_url(const struct deploy_service *s);
/*
 * MOAT_INSTANCE_URLS for every service: "URL|URL|...[,URL|URL|...]", the
 * origins of the instances of each service with several, the first one
 * being the address its callers' URL variables name (moat/config.h
 * moat_instance_urls). NULL when no service has several. Caller frees.
 */
char *deploy_instance_map(const struct deploy *d);
/*
 * value with every "http://HOST:PORT" that names a TLS service of d read
 * "https://" (the URLs of env values such as MOAT_ORDERS_URL). Caller
 * frees.
 */
char *deploy_tls_urls(const struct deploy *d, const char *value);

/*
 * MOAT_GATEWAY_ROUTES for s: "PREFIX=SERVICE@http://HOST:PORT/PATH,..." in
 * route order, each route's service resolved to its connect address; a
 * service with several instances is "URL|URL|..." (one per instance).
 * Caller frees. Returns "" (allocated) for a service without routes.
 */
/*
 * MOAT_GATEWAY_PUBLIC for a gateway: "METHOD PREFIX" entries of its routes'
 * public methods, comma-separated; NULL when none. Caller frees.
 */
char *deploy_gateway_public(const struct deploy_service *s);
/* True when caller calls callee: a route to it or an entry in "calls". */
bool deploy_calls(const struct deploy_service *caller,
                  const struct deploy_service *callee);
char *deploy_gateway_routes(const struct deploy *d,
                            const struct deploy_service *s);

/*
 * An env value may reference a shared secret (see "secrets") as
 * "${secret:MOAT_NAME}": moat up substitutes the secret's value when it
 * starts the service, so one generated secret can reach two services under
 * different variables and formats (payments' MOAT_PAYMENTS_PROVIDER_KEY is
 * the provider's "moat-shop:<key>" in MOAT_PAYPROVIDER_API_KEYS). The file
 * never holds the value itself. Any other "${" is an error.
 */
#define DEPLOY_SECRET_REF "${secret:"
bool deploy_has_secret_refs(const char *value);
/* value with every reference replaced by lookup(arg, NAME) (nothing when
 * it returns NULL). Caller frees. */
char *deploy_expand_secrets(const char *value,
                            const char *(*lookup)(void *arg, const char *name),
                            void *arg);

/* Engine name as written in the file ("sqlite", "lmdb", "postgres",
 * "none"). */
const char *deploy_engine_name(enum deploy_engine e);

/*
 * Join rel onto base (ignored when rel is absolute) and normalise
 * lexically: collapse "//" and ".", resolve ".." (never above "/"), drop a
 * trailing "/". base must be absolute. Caller frees.
 */
char *deploy_path_join(const char *base, const char *rel);

#endif /* MOAT_CLI_DEPLOY_H */
