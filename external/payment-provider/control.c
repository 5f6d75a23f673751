/*
 * control.c - /_control: read and change the provider's behaviour while
 * it runs (latency, declines, outages, the seed), so a test or a chaos
 * drill can break the processor in the middle of a saga.
 *
 * It takes the control key (MOAT_PAYPROVIDER_CONTROL_KEY), never a
 * merchant's: whoever can cause an outage is not a merchant. Without the
 * variable the endpoint answers 403. It needs no Idempotency-Key: a POST
 * here sets values, so repeating it changes nothing.
 */
#include "moat/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "moat/problem.h"
#include "ledger.h"
#include "payprovider.h"

/* Jitter draws from its own stream, derived from the seed, so a run's
 * declines are the same whatever the latency settings. */
#define JITTER_SEED_SALT 0x6A09E667F3BCC909ull

static const char *const control_keys[] = {
    "latency_ms", "latency_jitter_ms", "decline_rate",
    "outage",     "outage_status",     "seed",
    NULL,
};

void pp_knobs_apply(struct pp_service *pp, const struct pp_knobs *k,
                    bool reseed)
{
    pp->knobs = *k;
    if (reseed) {
        pp_rng_seed(&pp->decline_rng, k->seed);
        pp_rng_seed(&pp->jitter_rng, k->seed ^ JITTER_SEED_SALT);
    }
    moat_metric_set(pp->m_outage, k->outage ? 1 : 0);
    /* Requests parked by a "timeout" outage get their 503 once that
     * outage is over, rather than hang on to their slot for a minute. */
    if (!k->outage || k->outage_mode != PP_OUTAGE_TIMEOUT)
        pp_api_end_outage_holds(pp);
}

json_t *pp_knobs_json(const struct pp_knobs *k)
{
    json_t *status =
        k->outage_mode == PP_OUTAGE_TIMEOUT
            ? json_string("timeout")
            : json_integer(k->outage_mode == PP_OUTAGE_500 ? 500 : 503);
    return json_pack("{s:I, s:I, s:f, s:b, s:o, s:I}", "latency_ms",
                     (json_int_t)k->latency_ms, "latency_jitter_ms",
                     (json_int_t)k->latency_jitter_ms, "decline_rate",
                     k->decline_rate, "outage", k->outage, "outage_status",
                     status, "seed", (json_int_t)k->seed);
}

/* true for the control key; otherwise it has replied 403 or 401. */
static bool control_auth(struct moat_req *r, struct pp_service *pp)
{
    if (!pp->cfg.control_enabled) {
        moat_req_reply_problem(r, 403,
                               "the control endpoint is disabled: start "
                               "the provider with "
                               "MOAT_PAYPROVIDER_CONTROL_KEY to enable it");
        return false;
    }
    const char *secret = pp_bearer(moat_req_header(r, "Authorization"));
    if (secret && pp_config_control_ok(&pp->cfg, secret))
        return true;
    moat_log(MOAT_LOG_WARN, "control authentication failed", "{s:s}", "peer",
             moat_req_peer(r));
    moat_req_set_header(r, "WWW-Authenticate",
                        "Bearer realm=\"moat-payprovider-control\"");
    moat_req_reply_problem(r, 401,
                           "the control key is required: Authorization: "
                           "Bearer <MOAT_PAYPROVIDER_CONTROL_KEY>");
    return false;
}

static void handle_get(struct moat_req *r, void *arg)
{
    struct pp_service *pp = arg;
    if (control_auth(r, pp))
        moat_req_reply_json(r, 200, pp_knobs_json(&pp->knobs));
}

/* Read the members of body into k; errors into v. */
static void parse_knobs(struct moat_validation *v, json_t *body,
                        struct pp_knobs *k, bool *reseed)
{
    int64_t n;
    bool b;
    moat_v_known_keys(v, body, "", control_keys);
    if (moat_v_int(v, body, "", "latency_ms", false, 0, PP_LATENCY_MAX_MS, &n))
        k->latency_ms = (unsigned)n;
    if (moat_v_int(v, body, "", "latency_jitter_ms", false, 0,
                   PP_LATENCY_MAX_MS, &n))
        k->latency_jitter_ms = (unsigned)n;
    json_t *rate = json_object_get(body, "decline_rate");
    if (rate) {
        double d = json_number_value(rate);
        if (!json_is_number(rate) || d < 0.0 || d > 1.0)
            moat_validation_add(v, "/decline_rate",
                                "must be a number from 0 to 1");
        else
            k->decline_rate = d;
    }
    if (moat_v_bool(v, body, "", "outage", false, &b))
        k->outage = b;
    json_t *st = json_object_get(body, "outage_status");
    if (st) {
        const char *s = json_string_value(st);
        json_int_t code = json_is_integer(st) ? json_integer_value(st) : 0;
        if (code == 503)
            k->outage_mode = PP_OUTAGE_503;
        else if (code == 500)
            k->outage_mode = PP_OUTAGE_500;
        else if (s && strcmp(s, "timeout") == 0)
            k->outage_mode = PP_OUTAGE_TIMEOUT;
        else
            moat_validation_add(v, "/outage_status",
                                "must be 503, 500 or \"timeout\"");
    }
    if (moat_v_int(v, body, "", "seed", false, 0, INT64_MAX, &n)) {
        k->seed = (uint64_t)n;
        *reseed = true;
    }
}

static void handle_post(struct moat_req *r, void *arg)
{
    struct pp_service *pp = arg;
    struct moat_validation v;
    json_t *body = NULL;
    struct pp_knobs k = pp->knobs;
    bool reseed = false;

    moat_validation_init(&v);
    if (!control_auth(r, pp) || moat_req_json(r, &body) < 0)
        goto cleanup; /* replied */
    if (!json_is_object(body))
        moat_validation_add(&v, "", "must be a JSON object, not %s",
                            moat_json_type_name(body));
    else
        parse_knobs(&v, body, &k, &reseed);
    if (!moat_validation_ok(&v)) {
        /* All or nothing: a half-applied change would be a third state
         * nobody asked for. */
        moat_req_reply_problem_json(
            r, moat_validation_problem(&v, "the control request has "
                                           "invalid fields"));
        goto cleanup;
    }
    pp_knobs_apply(pp, &k, reseed);
    json_t *now = pp_knobs_json(&pp->knobs);
    moat_log(MOAT_LOG_WARN, "provider behaviour changed", "{s:O}", "knobs",
             now);
    moat_req_reply_json(r, 200, now);

cleanup:
    json_decref(body);
    moat_validation_release(&v);
}

#ifdef MOAT_TEST_HOOKS
/* Test builds only: POST /_test/ledger/repeat-last writes the newest ledger
 * entry twice (tests/integration/test_audit.c proves the audit notices). */
static void handle_test_repeat_last(struct moat_req *r, void *arg)
{
    struct pp_service *pp = arg;
    if (!control_auth(r, pp))
        return;
    int rc = pp_ledger_test_repeat_last(pp->ledger);
    if (rc == MOAT_OK) {
        moat_log(MOAT_LOG_WARN, "test hook: a ledger entry written twice",
                 NULL);
        moat_req_reply_json(r, 200, json_pack("{s:i}", "changed", 1));
    } else {
        moat_req_reply_problem(r, rc == MOAT_ENOTFOUND ? 404 : 500, "%s",
                               moat_strerror(rc));
    }
}
#endif

int pp_control_register(struct pp_service *pp)
{
    int rc = moat_http_route(pp->http, MOAT_GET, "/_control", handle_get, pp);
    if (rc == MOAT_OK)
        rc = moat_http_route(pp->http, MOAT_POST, "/_control", handle_post, pp);
#ifdef MOAT_TEST_HOOKS
    if (rc == MOAT_OK)
        rc = moat_http_route(pp->http, MOAT_POST, "/_test/ledger/repeat-last",
                             handle_test_repeat_last, pp);
#endif
    return rc;
}
