/*
 * test_saga.c's scenarios with the events on NATS JetStream: the same
 * services, started from a variant of moat.json with "transport":
 * "jetstream" (written here, so it cannot drift from moat.json); the
 * harness runs the nats-server (h_deployment_start) and every service
 * relays its outbox to its stream and reads its sources through durable
 * pull consumers (moat/jetstream.h).
 */
#include "moat/common.h"

#include "harness.h"

static const char *jetstream_variant(const char *tmp);
#define SAGA_DEPLOYMENT(tmp) jetstream_variant(tmp)

#include "test_saga.c"

static const char *jetstream_variant(const char *tmp)
{
    json_t *d = json_load_file(MOAT_SOURCE_DIR "/moat.json", 0, NULL);
    assert_non_null(d);
    json_object_set_new(d, "transport", json_string("jetstream"));
    const char *path = h_fmt("%s/moat-jetstream.json", tmp);
    assert_int_equal(json_dump_file(d, path, JSON_INDENT(2)), 0);
    json_decref(d);
    return path;
}
