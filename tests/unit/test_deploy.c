/*
 * test_deploy.c - the deployment file parser of the moat CLI: what it
 * accepts, what it resolves, and that every rejection names its field.
 *
 * The parser lives in cli/ and is part of the moat executable, not of
 * libmoat, and tests/CMakeLists.txt links unit tests against libmoat only.
 * Including the source keeps the CLI's build untouched and still tests the
 * very code `moat up` runs.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../cli/deploy.c"

#define BASE "/srv/shop"

/*
 * JSON in C strings is unreadable with escaped quotes: tests write single
 * quotes and this turns them into double quotes (no test needs a literal
 * single quote). Caller frees.
 */
static char *dq(const char *s)
{
    char *out = moat_xstrdup(s);
    for (char *p = out; *p; p++)
        if (*p == '\'')
            *p = '"';
    return out;
}

static struct deploy *parse_ok(const char *json)
{
    char *text = dq(json);
    struct deploy *d = NULL;
    char *err = NULL;
    int rc = deploy_parse(text, strlen(text), "moat.json", BASE, &d, &err);
    if (rc != MOAT_OK)
        fail_msg("unexpected errors:\n%s", err);
    assert_non_null(d);
    assert_null(err);
    free(text);
    return d;
}

/* Parse expecting failure; returns the error text (caller frees). */
static char *parse_err(const char *json)
{
    char *text = dq(json);
    struct deploy *d = NULL;
    char *err = NULL;
    int rc = deploy_parse(text, strlen(text), "moat.json", BASE, &d, &err);
    assert_int_equal(rc, MOAT_EINVAL);
    assert_null(d);
    assert_non_null(err);
    free(text);
    return err;
}

/* Assert that parsing json fails with a message containing want. */
static void expect_error(const char *json, const char *want)
{
    char *err = parse_err(json);
    if (!strstr(err, want))
        fail_msg("expected an error containing\n  %s\ngot\n  %s", want, err);
    free(err);
}

#define SVC(extra)                                                             \
    "{'name':'catalog','listen':'127.0.0.1:8081','engine':'sqlite',"           \
    "'db':'catalog.db'" extra "}"
#define GW(routes)                                                             \
    "{'name':'gateway','listen':'127.0.0.1:8080','engine':'none',"             \
    "'routes':" routes "}"
#define DEPLOY(services) "{'name':'local','services':[" services "]}"

static const char example[] =
    "{'name':'local','var_dir':'var','services':["
    "{'name':'catalog','listen':'127.0.0.1:8081','engine':'sqlite',"
    "'db':'catalog.db','env':{'MOAT_LOG_LEVEL':'debug'}},"
    "{'name':'gateway','listen':'127.0.0.1:8080','engine':'none','routes':["
    "{'prefix':'/api/v1/products','service':'catalog','path':'/v1/products'}"
    "]}]}";

/* "transport": the HTTP feed by default; JetStream with the nats-server
 * moat up runs (its defaults, its data directory and config argument), or
 * a broker given by URL. */
static void test_transport(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(DEPLOY(SVC("")));
    assert_int_equal(d->transport, DEPLOY_TRANSPORT_HTTP);
    assert_null(d->broker);
    assert_null(d->nats_url);
    deploy_free(d);

    d = parse_ok(
        "{'name':'local','transport':'jetstream','services':[" SVC("") "]}");
    assert_int_equal(d->transport, DEPLOY_TRANSPORT_JETSTREAM);
    assert_string_equal(d->nats_url, "nats://127.0.0.1:4222");
    assert_non_null(d->broker);
    assert_string_equal(d->broker->name, "nats");
    assert_int_equal(d->broker->port, 8222);
    assert_string_equal(d->broker->data_dir, BASE "/var/nats");
    assert_string_equal(d->broker->binary, DEPLOY_NATS_SERVER);
    assert_string_equal(d->broker->args[1], BASE "/var/nats/nats.conf");
    assert_string_equal(d->broker->ready_path, "/healthz");
    assert_int_equal(d->nats_max_memory_mb, 64);
    assert_int_equal(d->nats_max_file_mb, 1024);
    assert_null(deploy_find(d, "nats")); /* not one of the services */
    deploy_free(d);

    d = parse_ok(
        "{'name':'local','transport':'jetstream','jetstream':{"
        "'listen':'127.0.0.1:5222','monitor':'127.0.0.1:9222',"
        "'max_memory_mb':8,'max_file_mb':100},'services':[" SVC("") "]}");
    assert_string_equal(d->nats_url, "nats://127.0.0.1:5222");
    assert_int_equal(d->broker->port, 9222);
    assert_int_equal(d->nats_max_memory_mb, 8);
    assert_int_equal(d->nats_max_file_mb, 100);
    deploy_free(d);

    d = parse_ok("{'name':'local','transport':'jetstream','jetstream':{"
                 "'url':'nats://10.0.0.5:4222'},'services':[" SVC("") "]}");
    assert_string_equal(d->nats_url, "nats://10.0.0.5:4222");
    assert_null(d->broker);
    deploy_free(d);

    expect_error(
        "{'name':'local','transport':'kafka','services':[" SVC("") "]}",
        "transport: must be \"http\" or \"jetstream\"");
    expect_error("{'name':'local','jetstream':{},'services':[" SVC("") "]}",
                 "jetstream: only with");
    expect_error("{'name':'local','transport':'jetstream','jetstream':{"
                 "'url':'http://x'},'services':[" SVC("") "]}",
                 "must be a nats:// URL");
    expect_error("{'name':'local','transport':'jetstream','jetstream':{"
                 "'max_file_mb':0},'services':[" SVC("") "]}",
                 "max_file_mb: must be a whole number");
    expect_error("{'name':'local','transport':'jetstream','jetstream':{"
                 "'port':1},'services':[" SVC("") "]}",
                 "unknown field");
}

/* "redis": the redis-server moat up runs (defaults, data directory,
 * configuration argument, reserved name), or a server given by URL. */
static void test_redis(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(DEPLOY(SVC("")));
    assert_null(d->redis);
    assert_null(d->redis_url);
    assert_int_equal(deploy_nbuiltin(d), 0);
    deploy_free(d);

    d = parse_ok("{'name':'local','redis':{},'services':[" SVC("") "]}");
    assert_string_equal(d->redis_url, "redis://127.0.0.1:6380");
    assert_non_null(d->redis);
    assert_string_equal(d->redis->name, "redis");
    assert_int_equal(d->redis->port, 6380);
    assert_string_equal(d->redis->data_dir, BASE "/var/redis");
    assert_string_equal(d->redis->binary, DEPLOY_REDIS_SERVER);
    assert_string_equal(d->redis->args[0], BASE "/var/redis/redis.conf");
    assert_int_equal(d->redis_max_memory_mb, 64);
    assert_null(deploy_find(d, "redis")); /* not one of the services */
    assert_ptr_equal(deploy_builtin(d, 0), d->redis);
    assert_null(deploy_builtin(d, 1));
    char *url = deploy_base_url(d->redis);
    assert_string_equal(url, "redis://127.0.0.1:6380");
    free(url);
    deploy_free(d);

    /* With the broker too: the broker first. */
    d = parse_ok(
        "{'name':'local','transport':'jetstream','redis':{"
        "'listen':'127.0.0.1:7000','max_memory_mb':8},'services':[" SVC(
            "") "]}");
    assert_int_equal(deploy_nbuiltin(d), 2);
    assert_ptr_equal(deploy_builtin(d, 0), d->broker);
    assert_ptr_equal(deploy_builtin(d, 1), d->redis);
    assert_string_equal(d->redis_url, "redis://127.0.0.1:7000");
    assert_int_equal(d->redis_max_memory_mb, 8);
    deploy_free(d);

    d = parse_ok("{'name':'local','redis':{'url':'redis://10.0.0.5:6379'},"
                 "'services':[" SVC("") "]}");
    assert_string_equal(d->redis_url, "redis://10.0.0.5:6379");
    assert_null(d->redis);
    deploy_free(d);

    expect_error(
        "{'name':'local','redis':{'url':'http://x'},'services':[" SVC("") "]}",
        "must be a redis:// URL");
    expect_error("{'name':'local','redis':{'url':'redis://x:1','listen':"
                 "'127.0.0.1:1'},'services':[" SVC("") "]}",
                 "takes no");
    expect_error(
        "{'name':'local','redis':{'listen':'nowhere'},'services':[" SVC(
            "") "]}",
        "redis.listen: must be HOST:PORT");
    expect_error(
        "{'name':'local','redis':{'max_memory_mb':0},'services':[" SVC("") "]}",
        "max_memory_mb: must be a whole number");
    expect_error("{'name':'local','redis':{'port':1},'services':[" SVC("") "]}",
                 "unknown field");
    expect_error("{'name':'local','redis':{'listen':'127.0.0.1:8081'},"
                 "'services':[" SVC("") "]}",
                 "redis.listen: is catalog's address too");
    expect_error("{'name':'local','redis':[],'services':[" SVC("") "]}",
                 "redis: must be an object");
    expect_error("{'name':'local','redis':{},'services':["
                 "{'name':'redis','listen':'127.0.0.1:8081','engine':'none'}]}",
                 "reserved");
}

static void test_postgres(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(
        "{'name':'local','postgres':{'listen':'127.0.0.1:5433'},'services':["
        "{'name':'a','listen':'127.0.0.1:9001','engine':'postgres'},"
        "{'name':'b','listen':'127.0.0.1:9002','engine':'postgres',"
        "'dsn':'host=db.example port=5432 dbname=b'}]}");
    assert_non_null(d->pg);
    assert_true(d->pg->pg_cluster);
    assert_string_equal(d->pg->name, "postgres");
    assert_int_equal(d->pg->port, 5433);
    assert_int_equal(d->pg->level, -1);
    assert_int_equal(d->min_level, -1);
    assert_string_equal(d->pg->data_dir, BASE "/var/postgres");
    assert_string_equal(d->pg->args[1], BASE "/var/postgres/data");
    assert_int_equal(d->pg_shared_buffers_mb, 32);
    assert_int_equal(d->services[0].engine, DEPLOY_ENGINE_POSTGRES);
    assert_null(d->services[0].db);
    assert_null(d->services[0].dsn);
    assert_string_equal(d->services[1].dsn,
                        "host=db.example port=5432 dbname=b");
    assert_int_equal(deploy_nprocs(d), 3);
    assert_ptr_equal(deploy_proc(d, 2), d->pg);
    assert_null(deploy_find(d, "postgres"));
    deploy_free(d);

    /* A dsn alone needs no cluster. */
    d = parse_ok("{'name':'local','services':[{'name':'a','listen':"
                 "'127.0.0.1:9001','engine':'postgres','dsn':'dbname=a'}]}");
    assert_null(d->pg);
    assert_int_equal(d->min_level, 0);
    deploy_free(d);

    expect_error("{'name':'local','services':[{'name':'a','listen':"
                 "'127.0.0.1:9001','engine':'postgres'}]}",
                 "needs either a \"dsn\"");
    expect_error("{'name':'local','postgres':{'listen':'10.0.0.1:5433'},"
                 "'services':[" SVC("") "]}",
                 "must be a loopback address");
    expect_error("{'name':'local','postgres':{'listen':'127.0.0.1:8081'},"
                 "'services':[" SVC("") "]}",
                 "conflicts with");
    expect_error("{'name':'local','transport':'jetstream','postgres':{"
                 "'listen':'127.0.0.1:4222'},'services':[" SVC("") "]}",
                 "conflicts with the broker");
    expect_error("{'name':'local','postgres':{'listen':'127.0.0.1:5433'},"
                 "'services':[{'name':'postgres','listen':'127.0.0.1:9001',"
                 "'engine':'none'}]}",
                 "\"postgres\" is reserved");
    expect_error("{'name':'local','services':[{'name':'a','listen':"
                 "'127.0.0.1:9001','engine':'sqlite','db':'a.db','dsn':'x'}]}",
                 "dsn: only with engine");
    expect_error("{'name':'local','services':[{'name':'a','listen':"
                 "'127.0.0.1:9001','engine':'postgres','dsn':'x','db':'a'}]}",
                 "db: not allowed with engine \"postgres\"");
    expect_error("{'name':'local','services':[{'name':'a','listen':"
                 "'127.0.0.1:9001','engine':'sqlite','db':'a.db','env':{"
                 "'MOAT_DB_DSN':'x'}}]}",
                 "is set by the supervisor");
}

static void test_example_parses(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(example);
    assert_string_equal(d->name, "local");
    assert_string_equal(d->dir, BASE);
    assert_string_equal(d->var_dir, BASE "/var");
    assert_int_equal(d->nservices, 2);

    const struct deploy_service *c = deploy_find(d, "catalog");
    assert_non_null(c);
    assert_string_equal(c->host, "127.0.0.1");
    assert_int_equal(c->port, 8081);
    assert_int_equal(c->engine, DEPLOY_ENGINE_SQLITE);
    assert_string_equal(c->data_dir, BASE "/var/catalog");
    assert_string_equal(c->db, BASE "/var/catalog/catalog.db");
    assert_null(c->binary);
    assert_int_equal(c->nenv, 1);
    assert_string_equal(c->env[0].name, "MOAT_LOG_LEVEL");
    assert_string_equal(c->env[0].value, "debug");
    assert_int_equal(c->level, 0);

    const struct deploy_service *g = deploy_find(d, "gateway");
    assert_non_null(g);
    assert_int_equal(g->engine, DEPLOY_ENGINE_NONE);
    assert_null(g->db);
    assert_string_equal(g->data_dir, BASE "/var/gateway");
    assert_int_equal(g->nroutes, 1);
    assert_int_equal(g->level, 1);
    assert_int_equal(d->max_level, 1);
    assert_null(deploy_find(d, "orders"));
    deploy_free(d);
}

static void test_gateway_routes_env(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(DEPLOY(
        "{'name':'catalog','listen':'0.0.0.0:8081','engine':'sqlite',"
        "'db':'c.db'},"
        "{'name':'orders','listen':'localhost:8083','engine':'sqlite',"
        "'db':'o.db'}," GW(
            "[{'prefix':'/api/v1/products','service':'catalog',"
            "'path':'/v1/products'},"
            "{'prefix':'/api/v1/orders','service':'orders','path':'/v1/orders'}"
            "]")));
    const struct deploy_service *g = deploy_find(d, "gateway");
    char *routes = deploy_gateway_routes(d, g);
    /* A wildcard listen address is reached on loopback. */
    assert_string_equal(
        routes, "/api/v1/products=catalog@http://127.0.0.1:8081/v1/products,"
                "/api/v1/orders=orders@http://localhost:8083/v1/orders");
    free(routes);
    routes = deploy_gateway_routes(d, deploy_find(d, "catalog"));
    assert_string_equal(routes, "");
    free(routes);
    char *url = deploy_base_url(deploy_find(d, "catalog"));
    assert_string_equal(url, "http://127.0.0.1:8081");
    free(url);
    deploy_free(d);
}

/* "tls": true makes every URL moat derives https://, and rewrites the
 * file's own addresses in env values (only those). */
static void test_tls_urls(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(
        "{'name':'x','tls':true,'services':["
        "{'name':'catalog','listen':'127.0.0.1:8081','engine':'sqlite',"
        "'db':'c.db'}," GW("[{'prefix':'/api/v1/products','service':"
                           "'catalog','path':'/v1/products'}]") "]}");
    assert_true(d->tls);
    assert_true(deploy_find(d, "catalog")->tls);
    char *url = deploy_base_url(deploy_find(d, "catalog"));
    assert_string_equal(url, "https://127.0.0.1:8081");
    free(url);
    char *routes = deploy_gateway_routes(d, deploy_find(d, "gateway"));
    assert_string_equal(routes,
                        "/api/v1/products=catalog@https://127.0.0.1:8081/"
                        "v1/products");
    free(routes);
    char *v = deploy_tls_urls(d, "a=http://127.0.0.1:8081/x,"
                                 "b=http://127.0.0.1:80811,"
                                 "c=http://example.com:8081");
    assert_string_equal(v, "a=https://127.0.0.1:8081/x,"
                           "b=http://127.0.0.1:80811,"
                           "c=http://example.com:8081");
    free(v);
    deploy_free(d);
    char *err = parse_err("{'name':'x','tls':'yes','services':["
                          "{'name':'catalog','listen':'127.0.0.1:1',"
                          "'engine':'none'}]}");
    assert_non_null(strstr(err, "tls: must be true or false"));
    free(err);
}

static void test_paths_resolve(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(
        "{'name':'x','var_dir':'../run/./x/','services':["
        "{'name':'catalog','listen':'127.0.0.1:1','engine':'sqlite',"
        "'db':'sub/../c.db','data_dir':'data//catalog'},"
        "{'name':'inventory','listen':'127.0.0.1:2','engine':'lmdb',"
        "'db':'/abs/inv/stock','data_dir':'/abs/inv','binary':'inventory'}]}");
    assert_string_equal(d->var_dir, "/srv/run/x");
    assert_string_equal(d->services[0].data_dir, BASE "/data/catalog");
    assert_string_equal(d->services[0].db, BASE "/data/catalog/c.db");
    assert_string_equal(d->services[1].data_dir, "/abs/inv");
    assert_string_equal(d->services[1].db, "/abs/inv/stock");
    assert_int_equal(d->services[1].engine, DEPLOY_ENGINE_LMDB);
    assert_string_equal(d->services[1].binary, "inventory");
    assert_int_equal(d->max_level, 0);
    deploy_free(d);
}

static void test_path_join(void **state)
{
    MOAT_UNUSED(state);
    static const struct {
        const char *base, *rel, *want;
    } cases[] = {
        {"/a/b", "c", "/a/b/c"},
        {"/a/b", "./c/", "/a/b/c"},
        {"/a/b", "../c", "/a/c"},
        {"/a/b", "../../../c", "/c"},
        {"/a/b", "/x//y/./z", "/x/y/z"},
        {"/a", "..", "/"},
        {"/", ".", "/"},
        {"/a/b", "c/..", "/a/b"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        char *got = deploy_path_join(cases[i].base, cases[i].rel);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("join(%s, %s) = %s, want %s", cases[i].base, cases[i].rel,
                     got, cases[i].want);
        free(got);
    }
}

static void test_json_errors(void **state)
{
    MOAT_UNUSED(state);
    expect_error("{'name':'a',", "moat.json:1:");
    expect_error("{'name':'a','name':'b','services':[]}", "duplicate");
    expect_error(DEPLOY(SVC(",'env':{'A':'1','A':'2'}")), "duplicate");
    expect_error("[]", "the top level must be an object");
}

/* Who gets which key: the public allow-list, calls and secrets. */
static void test_auth_fields(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(DEPLOY(
        "{'name':'catalog','listen':'127.0.0.1:8081','engine':'sqlite',"
        "'db':'c.db'},"
        "{'name':'users','listen':'127.0.0.1:8082','engine':'sqlite',"
        "'db':'u.db','secrets':['MOAT_JWT_SECRET'],'calls':['catalog']},"
        "{'name':'gateway','listen':'127.0.0.1:8080','engine':'none',"
        "'secrets':['MOAT_JWT_SECRET'],'routes':["
        "{'prefix':'/api/v1/products','service':'catalog',"
        "'path':'/v1/products','public':['GET']},"
        "{'prefix':'/api/v1/auth','service':'users','path':'/v1/auth',"
        "'public':['POST','GET']},"
        "{'prefix':'/api/v1/users','service':'users','path':'/v1/users'}]}"));
    const struct deploy_service *g = deploy_find(d, "gateway");
    const struct deploy_service *u = deploy_find(d, "users");
    const struct deploy_service *c = deploy_find(d, "catalog");
    char *pub = deploy_gateway_public(g);
    assert_string_equal(pub, "GET /api/v1/products,GET /api/v1/auth,"
                             "POST /api/v1/auth");
    free(pub);
    assert_null(deploy_gateway_public(c));
    assert_true(deploy_calls(g, c));
    assert_true(deploy_calls(g, u));
    assert_true(deploy_calls(u, c));
    assert_false(deploy_calls(c, u));
    assert_false(deploy_calls(c, g));
    assert_int_equal(u->nsecrets, 1);
    assert_string_equal(u->secrets[0], "MOAT_JWT_SECRET");
    deploy_free(d);

    expect_error(DEPLOY(SVC(",'calls':['nobody']")),
                 "services[0].calls: \"nobody\" is not another service");
    expect_error(DEPLOY(SVC(",'secrets':['MOAT_SERVICE_KEY']")),
                 "services[0].secrets: entry 0 is not a valid secret name");
    expect_error(DEPLOY(SVC(",'secrets':['HOME']")),
                 "services[0].secrets: entry 0 is not a valid secret name");
    expect_error(DEPLOY(SVC("") "," GW("[{'prefix':'/a','service':'catalog',"
                                       "'path':'/b','public':['TRACE']}]")),
                 "services[1].routes[0].public: entry 0 must be one of");
}

static void test_unknown_fields(void **state)
{
    MOAT_UNUSED(state);
    expect_error("{'name':'a','servces':[],'services':[" SVC("") "]}",
                 "moat.json: servces: unknown field");
    expect_error(DEPLOY(SVC(",'rotes':[]")),
                 "moat.json: services[0].rotes: unknown field (expected one "
                 "of: name, listen, engine, db, data_dir, binary, env, "
                 "routes, calls, secrets, backup, dsn, host)");
    expect_error(DEPLOY(SVC("") "," GW("[{'prefix':'/a','service':'catalog',"
                                       "'path':'/b','timeout':1}]")),
                 "services[1].routes[0].timeout: unknown field");
}

static void test_required_and_types(void **state)
{
    MOAT_UNUSED(state);
    expect_error("{'services':[" SVC("") "]}", "name: missing (required)");
    expect_error("{'name':'a'}", "services: missing (required)");
    expect_error("{'name':'a','services':[]}", "services: must be a non-empty");
    expect_error("{'name':'a','services':{}}", "services: must be a non-empty");
    expect_error(DEPLOY("{'name':'catalog','engine':'none'}"),
                 "services[0].listen: missing (required)");
    expect_error(DEPLOY("{'name':'c','listen':8081,'engine':'none'}"),
                 "services[0].listen: must be a string");
    expect_error(DEPLOY("{'name':'c','listen':'127.0.0.1:1'}"),
                 "services[0].engine: missing (required)");
    expect_error(DEPLOY("{'name':'','listen':'127.0.0.1:1','engine':'none'}"),
                 "services[0].name: must not be empty");
    expect_error(DEPLOY("{'name':'c\\u0000d','listen':'127.0.0.1:1',"
                        "'engine':'none'}"),
                 "moat.json:1:"); /* jansson refuses \u0000 outright */
    expect_error(DEPLOY("7"), "services[0]: must be an object");
    expect_error("{'name':'a','var_dir':3,'services':[" SVC("") "]}",
                 "var_dir: must be a string");
}

static void test_names(void **state)
{
    MOAT_UNUSED(state);
    static const char *const bad[] = {
        "Catalog",  "1catalog",
        "-x",       "cat_alog",
        "cat alog", "abcdefghijklmnopqrstuvwxyz0123456", /* 33 characters */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        char *json = moat_xasprintf(
            DEPLOY("{'name':'%s','listen':'127.0.0.1:1','engine':'none'}"),
            bad[i]);
        expect_error(json, "services[0].name: must match [a-z][a-z0-9-]");
        free(json);
    }
    struct deploy *d = parse_ok(DEPLOY(
        "{'name':'abcdefghijklmnopqrstuvwxyz012345','listen':'127.0.0.1:1',"
        "'engine':'none'},"
        "{'name':'a-1','listen':'127.0.0.1:2','engine':'none'}"));
    deploy_free(d);
    expect_error(DEPLOY("{'name':'moat','listen':'127.0.0.1:1',"
                        "'engine':'none'}"),
                 "services[0].name: \"moat\" is reserved");
    expect_error(DEPLOY(SVC("") "," SVC("")),
                 "services[1].name: \"catalog\" is already used by "
                 "services[0]");
    expect_error("{'name':'Local','services':[" SVC("") "]}",
                 "moat.json: name: must match");
}

static void test_listen(void **state)
{
    MOAT_UNUSED(state);
    static const char *const bad[] = {
        "8081",  "127.0.0.1:0",     "127.0.0.1:",
        ":8081", "127.0.0.1:65536", "127.0.0.1:http",
        "a b:1"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++) {
        char *json = moat_xasprintf(
            DEPLOY("{'name':'c','listen':'%s','engine':'none'}"), bad[i]);
        expect_error(json, "services[0].listen: must be HOST:PORT");
        free(json);
    }
    static const char *const clash[][2] = {
        {"127.0.0.1:80", "127.0.0.1:80"},
        {"0.0.0.0:80", "127.0.0.1:80"},
        {"127.0.0.1:80", "0.0.0.0:80"},
        {"localhost:80", "127.0.0.1:80"},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(clash); i++) {
        char *json =
            moat_xasprintf(DEPLOY("{'name':'a','listen':'%s','engine':'none'},"
                                  "{'name':'b','listen':'%s','engine':'none'}"),
                           clash[i][0], clash[i][1]);
        expect_error(json, "services[1].listen: ");
        free(json);
    }
    /* Same port on two distinct addresses is fine. */
    struct deploy *d = parse_ok(
        DEPLOY("{'name':'a','listen':'127.0.0.1:80','engine':'none'},"
               "{'name':'b','listen':'127.0.0.2:80','engine':'none'}"));
    deploy_free(d);
}

/* "listen" as an array: one instance per address (docs/operations.md
 * "Several instances"). */
static void test_instances(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(DEPLOY(
        "{'name':'catalog','listen':['127.0.0.1:8081','127.0.0.1:8091'],"
        "'engine':'sqlite','db':'c.db'},"
        "{'name':'search','listen':'127.0.0.1:8084','engine':'sqlite',"
        "'db':'s.db','env':{'MOAT_SEARCH_CATALOG_URL':"
        "'http://127.0.0.1:8081'}}," GW("[{'prefix':'/api/v1/products',"
                                        "'service':'catalog','path':'/v1/"
                                        "products'}]")));
    const struct deploy_service *c = deploy_find(d, "catalog");
    assert_int_equal(c->ninstances, 2);
    assert_string_equal(c->listen, "127.0.0.1:8081");
    assert_int_equal(c->port, 8081);
    assert_int_equal(c->inst[1].port, 8091);
    assert_int_equal(deploy_find(d, "search")->ninstances, 1);
    char *routes = deploy_gateway_routes(d, deploy_find(d, "gateway"));
    assert_string_equal(routes,
                        "/api/v1/products=catalog@http://127.0.0.1:8081/v1/"
                        "products|http://127.0.0.1:8091/v1/products");
    free(routes);
    char *map = deploy_instance_map(d);
    assert_string_equal(map, "http://127.0.0.1:8081|http://127.0.0.1:8091");
    free(map);
    deploy_free(d);

    d = parse_ok(DEPLOY(SVC("")));
    assert_null(deploy_instance_map(d));
    deploy_free(d);

    expect_error(DEPLOY("{'name':'a','listen':['127.0.0.1:80','127.0.0.1:80'],"
                        "'engine':'none'}"),
                 "services[0].listen: two instances share an address");
    expect_error(DEPLOY("{'name':'a','listen':[],'engine':'none'}"),
                 "services[0].listen: must be HOST:PORT or an array of 1 to");
    expect_error(DEPLOY("{'name':'a','listen':['127.0.0.1:80',7],"
                        "'engine':'none'}"),
                 "services[0].listen: must be HOST:PORT");
    expect_error(DEPLOY("{'name':'a','listen':['127.0.0.1:80'],"
                        "'engine':'none'},"
                        "{'name':'b','listen':['127.0.0.1:81','127.0.0.1:80'],"
                        "'engine':'none'}"),
                 "services[1].listen: ");
    expect_error(DEPLOY("{'name':'i','listen':['127.0.0.1:80','127.0.0.1:81'],"
                        "'engine':'lmdb','db':'i.lmdb'}"),
                 "several instances need a database");
    expect_error(DEPLOY("{'name':'a','listen':'127.0.0.1:80','engine':'none',"
                        "'env':{'MOAT_INSTANCES':'2'}}"),
                 "is set by the supervisor");
}

/* "hosts" and "host": placed only once a host is selected. */
static void test_hosts(void **state)
{
    MOAT_UNUSED(state);
    static const char file[] =
        "{'name':'h','hosts':{'a':{'address':'10.77.0.1'},"
        "'b':{'address':'10.77.0.2'}},'services':["
        "{'name':'catalog','host':'a','listen':['127.0.0.1:8081',"
        "'127.0.0.1:8091'],'engine':'sqlite','db':'c.db'},"
        "{'name':'orders','host':'b','listen':'127.0.0.1:8086','engine':"
        "'sqlite','db':'o.db','env':{'MOAT_ORDERS_CATALOG_URL':"
        "'http://127.0.0.1:8081','X':'http://127.0.0.1:80812'}},"
        "{'name':'gateway','host':'b','listen':'0.0.0.0:8080','engine':"
        "'none','routes':[{'prefix':'/api/v1/products','service':"
        "'catalog','path':'/v1/products'}]}]}";
    struct deploy *d = parse_ok(file);
    assert_int_equal(d->nhosts, 2);
    assert_string_equal(deploy_find(d, "catalog")->host, "127.0.0.1");
    assert_null(d->selected_host);
    char *err = NULL;
    assert_int_equal(deploy_select_host(d, "c", &err), MOAT_EINVAL);
    assert_non_null(strstr(err, "no host \"c\""));
    free(err);
    assert_int_equal(deploy_select_host(d, "b", &err), MOAT_OK);
    assert_string_equal(d->selected_host, "b");
    assert_string_equal(d->state_dir, BASE "/var/hosts/b");
    const struct deploy_service *c = deploy_find(d, "catalog");
    assert_string_equal(c->listen, "10.77.0.1:8081");
    assert_string_equal(c->inst[1].listen, "10.77.0.1:8091");
    assert_string_equal(deploy_find(d, "gateway")->host, "10.77.0.2");
    char *routes = deploy_gateway_routes(d, deploy_find(d, "gateway"));
    assert_string_equal(routes, "/api/v1/products=catalog@http://10.77.0.1:"
                                "8081/v1/products|http://10.77.0.1:8091/v1/"
                                "products");
    free(routes);
    char *v = deploy_moved_urls(d, "http://127.0.0.1:8091/x,"
                                   "http://127.0.0.1:80812,"
                                   "http://127.0.0.1:8086");
    assert_string_equal(v, "http://10.77.0.1:8091/x,http://127.0.0.1:80812,"
                           "http://10.77.0.2:8086");
    free(v);
    deploy_free(d);

    expect_error("{'name':'h','hosts':{'a':{'address':'10.0.0.1'}},"
                 "'services':[" SVC("") "]}",
                 "services[0].host: missing");
    expect_error(DEPLOY(SVC(",'host':'x'")),
                 "services[0].host: no host named \"x\"");
    expect_error("{'name':'h','hosts':{'a':{'address':'db.local'}},"
                 "'services':[" SVC(",'host':'a'") "]}",
                 "hosts.a.address: must be an IPv4 address");
    expect_error("{'name':'h','tls':true,'hosts':{'a':{'address':"
                 "'10.0.0.1'}},'services':[" SVC(",'host':'a'") "]}",
                 "hosts: not with \"tls\": true");
}

static void test_engine_and_db(void **state)
{
    MOAT_UNUSED(state);
    expect_error(DEPLOY("{'name':'c','listen':'127.0.0.1:1','engine':'mysql'}"),
                 "services[0].engine: must be \"sqlite\", \"lmdb\", "
                 "\"postgres\" or \"none\", got \"mysql\"");
    expect_error(DEPLOY("{'name':'c','listen':'127.0.0.1:1',"
                        "'engine':'sqlite'}"),
                 "services[0].db: missing (required)");
    expect_error(DEPLOY("{'name':'c','listen':'127.0.0.1:1','engine':'none',"
                        "'db':'x.db'}"),
                 "services[0].db: not allowed with engine \"none\"");
    static const char *const escaping[] = {"../x.db", "/etc/passwd", ".",
                                           "a/../../catalog2/x.db"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(escaping); i++) {
        char *json =
            moat_xasprintf(DEPLOY("{'name':'catalog','listen':'127.0.0.1:1',"
                                  "'engine':'sqlite','db':'%s'}"),
                           escaping[i]);
        expect_error(json, "services[0].db: must be inside the service's "
                           "data directory");
        free(json);
    }
}

/* "backup": {"every", "keep"}: moat up's cadence and the retention. */
static void test_backup_cadence(void **state)
{
    MOAT_UNUSED(state);
    struct deploy *d = parse_ok(DEPLOY(SVC("")));
    assert_int_equal(d->services[0].backup_every_ms, 0);
    assert_int_equal(d->services[0].backup_keep, DEPLOY_BACKUP_KEEP_DEFAULT);
    deploy_free(d);
    d = parse_ok(DEPLOY(SVC(",'backup':{'every':'1h','keep':24}")));
    assert_int_equal(d->services[0].backup_every_ms, 3600000);
    assert_int_equal(d->services[0].backup_keep, 24);
    deploy_free(d);
    d = parse_ok(DEPLOY(SVC(",'backup':{'every':'90s'}")));
    assert_int_equal(d->services[0].backup_every_ms, 90000);
    deploy_free(d);
    expect_error(DEPLOY(SVC(",'backup':{'every':'5s'}")),
                 "services[0].backup.every: must be a number and s, m, h or "
                 "d, at least 10s");
    expect_error(DEPLOY(SVC(",'backup':{'every':'1w'}")),
                 "services[0].backup.every");
    expect_error(DEPLOY(SVC(",'backup':{'keep':0}")),
                 "services[0].backup.keep: must be an integer in 1..1000");
    expect_error(DEPLOY(SVC(",'backup':{'often':true}")),
                 "services[0].backup.often: unknown field");
    expect_error(DEPLOY(SVC(",'backup':'daily'")),
                 "services[0].backup: must be an object");
    expect_error(DEPLOY("{'name':'gateway','listen':'127.0.0.1:1',"
                        "'engine':'none','backup':{'every':'1h'}}"),
                 "services[0].backup: not allowed with engine \"none\"");
}

static void test_data_dirs(void **state)
{
    MOAT_UNUSED(state);
    expect_error(
        DEPLOY(SVC(
            ",'data_dir':'shared'") ","
                                    "{'name':'orders','listen':'127.0.0.1:2',"
                                    "'engine':'sqlite','db':'o.db','data_dir':'"
                                    "shared'}"),
        "services[1].data_dir: " BASE "/shared overlaps the data "
        "directory of services[0]");
    expect_error(
        DEPLOY(SVC(
            ",'data_dir':'var/catalog'") ","
                                         "{'name':'orders','listen':'127.0.0.1:"
                                         "2',"
                                         "'engine':'sqlite','db':'o.db',"
                                         "'data_dir':'var/catalog/orders'}"),
        "services[1].data_dir: ");
    expect_error(DEPLOY(SVC(",'data_dir':'.'")),
                 "overlaps the supervisor's var_dir");
    expect_error(DEPLOY(SVC(",'data_dir':'var/log'")),
                 "overlaps the supervisor's var_dir");
}

static void test_env(void **state)
{
    MOAT_UNUSED(state);
    expect_error(DEPLOY(SVC(",'env':[]")),
                 "services[0].env: must be an object");
    expect_error(DEPLOY(SVC(",'env':{'PORT':8080}")),
                 "services[0].env.PORT: must be a string");
    expect_error(DEPLOY(SVC(",'env':{'1X':'a'}")),
                 "services[0].env.1X: not a valid environment variable name");
    expect_error(DEPLOY(SVC(",'env':{'A=B':'a'}")),
                 "not a valid environment variable name");
    expect_error(DEPLOY(SVC(",'env':{'MOAT_LISTEN':'0.0.0.0:1'}")),
                 "services[0].env.MOAT_LISTEN: is set by the supervisor");
    expect_error(DEPLOY(SVC(",'env':{'MOAT_DATA_DIR':'/tmp'}")),
                 "services[0].env.MOAT_DATA_DIR: is set by the supervisor");
}

static void test_routes(void **state)
{
    MOAT_UNUSED(state);
    expect_error(DEPLOY(SVC("") "," GW("[]")),
                 "services[1].routes: must be a non-empty array");
    expect_error(DEPLOY(SVC("") "," GW("[{'prefix':'/a','service':'orders',"
                                       "'path':'/v1'}]")),
                 "services[1].routes[0].service: no service named "
                 "\"orders\"");
    expect_error(DEPLOY(SVC("") "," GW("[{'prefix':'/a','service':'gateway',"
                                       "'path':'/v1'}]")),
                 "services[1].routes[0].service: a service cannot route to "
                 "itself");
    expect_error(DEPLOY(SVC("") "," GW("[{'prefix':'/a','service':'catalog'}"
                                       "]")),
                 "services[1].routes[0].path: missing (required)");
    static const char *const bad_prefix[] = {"api",   "/a,b", "/a=b", "/a/",
                                             "/a//b", "/a b", "/a?x"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad_prefix); i++) {
        char *json = moat_xasprintf(
            DEPLOY(SVC("") "," GW("[{'prefix':'%s','service':'catalog',"
                                  "'path':'/v1'}]")),
            bad_prefix[i]);
        expect_error(json, "services[1].routes[0].prefix: ");
        free(json);
    }
    expect_error(DEPLOY(SVC("") "," GW("[{'prefix':'/a','service':'catalog',"
                                       "'path':'v1'}]")),
                 "services[1].routes[0].path: must start with '/'");
    expect_error(DEPLOY(SVC("") "," GW("[{'prefix':'/a','service':'catalog',"
                                       "'path':'/v1'},{'prefix':'/a',"
                                       "'service':'catalog','path':'/v2'}]")),
                 "services[1].routes[1].prefix: \"/a\" is already used by "
                 "services[1].routes[0]");
}

static void test_levels_and_cycles(void **state)
{
    MOAT_UNUSED(state);
    /* An edge gateway in front of an internal one in front of catalog. */
    struct deploy *d = parse_ok(DEPLOY(
        "{'name':'edge','listen':'127.0.0.1:1','engine':'none','routes':"
        "[{'prefix':'/api','service':'inner','path':'/'}]},"
        "{'name':'inner','listen':'127.0.0.1:2','engine':'none','routes':"
        "[{'prefix':'/api','service':'catalog','path':'/v1'}]}," SVC("")));
    assert_int_equal(deploy_find(d, "catalog")->level, 0);
    assert_int_equal(deploy_find(d, "inner")->level, 1);
    assert_int_equal(deploy_find(d, "edge")->level, 2);
    assert_int_equal(d->max_level, 2);
    deploy_free(d);

    expect_error(
        DEPLOY("{'name':'a','listen':'127.0.0.1:1','engine':'none','routes':"
               "[{'prefix':'/b','service':'b','path':'/'}]},"
               "{'name':'b','listen':'127.0.0.1:2','engine':'none','routes':"
               "[{'prefix':'/a','service':'a','path':'/'}]}"),
        "lead back to it through other services (a cycle)");
}

static void test_all_errors_reported(void **state)
{
    MOAT_UNUSED(state);
    char *err = parse_err(
        DEPLOY("{'name':'Bad','listen':'x','engine':'none','extra':1}"));
    assert_non_null(strstr(err, "services[0].name:"));
    assert_non_null(strstr(err, "services[0].listen:"));
    assert_non_null(strstr(err, "services[0].extra:"));
    /* One line per error, no trailing newline. */
    assert_int_not_equal(err[strlen(err) - 1], '\n');
    free(err);

    /* Many errors: the first DEPLOY_MAX_ERRORS, then a count. */
    struct moat_buf json = MOAT_BUF_INIT;
    moat_buf_addstr(&json, "{'name':'a','services':[");
    for (int i = 0; i < 30; i++)
        moat_buf_printf(&json, "%s{'name':'s%d','engine':'none'}", i ? "," : "",
                        i);
    moat_buf_addstr(&json, "]}");
    err = parse_err(moat_buf_str(&json));
    assert_non_null(strstr(err, "... and 10 more errors"));
    free(err);
    moat_buf_release(&json);
}

static void test_too_many_services(void **state)
{
    MOAT_UNUSED(state);
    struct moat_buf json = MOAT_BUF_INIT;
    moat_buf_addstr(&json, "{'name':'a','services':[");
    for (int i = 0; i <= DEPLOY_MAX_SERVICES; i++)
        moat_buf_printf(&json,
                        "%s{'name':'s%d','listen':'127.0.0.1:%d',"
                        "'engine':'none'}",
                        i ? "," : "", i, 1000 + i);
    moat_buf_addstr(&json, "]}");
    expect_error(moat_buf_str(&json), "services: too many services");
    moat_buf_release(&json);
}

static void test_load_shipped_file(void **state)
{
    MOAT_UNUSED(state);
    /* The repository's own moat.json, found from this file's path. */
    const char *src = __FILE__;
    const char *tail = strstr(src, "tests/unit/test_deploy.c");
    if (!tail)
        skip();
    char *path = moat_xasprintf("%.*smoat.json", (int)(tail - src), src);
    struct deploy *d = NULL;
    char *err = NULL;
    if (deploy_load(path, &d, &err) != MOAT_OK)
        fail_msg("%s", err);
    assert_true(d->nservices >= 3);
    assert_non_null(deploy_find(d, "catalog"));
    assert_int_equal(deploy_find(d, "catalog")->port, 8081);
    assert_non_null(deploy_find(d, "users"));
    assert_int_equal(deploy_find(d, "users")->port, 8082);
    assert_non_null(deploy_find(d, "gateway"));
    assert_int_equal(deploy_find(d, "gateway")->port, 8080);
    deploy_free(d);
    free(path);

    assert_int_equal(deploy_load("/nonexistent/moat.json", &d, &err), MOAT_EIO);
    assert_null(d);
    assert_non_null(strstr(err, "cannot open deployment file "
                                "'/nonexistent/moat.json'"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_parses),
        cmocka_unit_test(test_gateway_routes_env),
        cmocka_unit_test(test_paths_resolve),
        cmocka_unit_test(test_path_join),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_auth_fields),
        cmocka_unit_test(test_required_and_types),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_listen),
        cmocka_unit_test(test_instances),
        cmocka_unit_test(test_hosts),
        cmocka_unit_test(test_engine_and_db),
        cmocka_unit_test(test_data_dirs),
        cmocka_unit_test(test_backup_cadence),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_levels_and_cycles),
        cmocka_unit_test(test_all_errors_reported),
        cmocka_unit_test(test_too_many_services),
        cmocka_unit_test(test_load_shipped_file),
        cmocka_unit_test(test_tls_urls),
        cmocka_unit_test(test_transport),
        cmocka_unit_test(test_redis),
        cmocka_unit_test(test_postgres),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
