/*
 * password.c - Argon2id work off the event loop (see users.h). A hash
 * costs ~70 ms and 64 MiB: on the loop it would stall every other request,
 * so it runs on the work pool and the result comes back to the loop.
 */
#include "moat/common.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "moat/log.h"
#include "users.h"

struct usr_pw_job *usr_pw_job_new(struct usr_service *usr, struct moat_req *req,
                                  usr_pw_done_fn done)
{
    struct usr_pw_job *job = moat_xcalloc(1, sizeof(*job));
    job->usr = usr;
    job->req = req;
    job->done = done;
    job->hash_rc = MOAT_EINVAL;
    return job;
}

static void wipe_strings(json_t *j)
{
    const char *key;
    size_t i;
    json_t *v;
    if (json_is_string(j))
        sodium_memzero((char *)json_string_value(j), json_string_length(j));
    else if (json_is_object(j))
        json_object_foreach(j, key, v) wipe_strings(v);
    else if (json_is_array(j))
        json_array_foreach(j, i, v) wipe_strings(v);
}

void usr_json_release_secret(json_t *doc)
{
    if (!doc)
        return;
    if (doc->refcount == 1)
        wipe_strings(doc);
    json_decref(doc);
}

static void job_free(struct usr_pw_job *job)
{
    moat_free_secret(job->verify_password);
    moat_free_secret(job->new_password);
    if (job->ctx_free)
        job->ctx_free(job->ctx);
    free(job);
}

/* Worker thread: touches nothing but the job. */
static void job_work(void *arg)
{
    struct usr_pw_job *job = arg;
    bool may_hash = true;
    if (job->verify_password) {
        job->verified = job->verify_hash[0] &&
                        moat_password_verify(job->verify_hash,
                                             job->verify_password) == MOAT_OK;
        may_hash = job->verified;
    }
    if (job->new_password && may_hash)
        job->hash_rc = moat_password_hash(job->new_password, job->new_hash);
    /* The plaintexts are not needed any more: wipe them now rather than
     * when the loop gets round to the continuation. */
    moat_free_secret(job->verify_password);
    moat_free_secret(job->new_password);
    job->verify_password = job->new_password = NULL;
}

/* Loop thread: continue the request in its own log context, so the reply
 * and the audit records carry its trace id. */
static void job_done(void *arg, bool cancelled)
{
    struct usr_pw_job *job = arg;
    const struct moat_trace *saved = moat_log_trace();
    moat_log_set_trace(moat_req_trace(job->req));
    job->done(job, cancelled);
    moat_log_set_trace(saved);
    job_free(job);
}

bool usr_pw_busy(const struct usr_service *usr)
{
    /* A bounded queue: beyond it a client waits longer than it would to
     * retry, and each queued job holds a connection. */
    return moat_work_pending(usr->pool) >= (unsigned)usr->cfg.hash_queue_max;
}

int usr_pw_submit(struct usr_pw_job *job)
{
    struct usr_service *usr = job->usr;
    if (usr_pw_busy(usr)) {
        job_free(job);
        return MOAT_EBUSY;
    }
    int rc = moat_work_submit(usr->pool, job_work, job_done, job);
    if (rc != MOAT_OK) {
        moat_log(MOAT_LOG_WARN, "password work queue refused a job", "{s:s}",
                 "error", moat_strerror(rc));
        job_free(job);
        return MOAT_EBUSY;
    }
    return MOAT_OK;
}
