/*
 * social_events.c - posts' and profiles' events as the social index
 * applies them.
 *
 * The contracts (type names, schema versions, upcasters) are
 * contracts/posts.h and contracts/profiles.h; the apply functions here see
 * the current schema only, and an unknown version is refused (parked as a
 * dead letter until search is rebuilt with the newer contract).
 *
 * Handlers are deterministic (replay runs them again on a scratch copy and
 * compares): everything they store comes from the event, except the
 * applied time, which the comparison ignores. That is why a profile is
 * indexed by its handle only: the event carries no display name or bio
 * (they are sealed in profiles' database), and fetching them from profiles'
 * API here would index whatever the API says at replay time.
 */
#include "moat/common.h"

#include <stdlib.h>
#include <string.h>

#include "contracts/posts.h"
#include "contracts/profiles.h"
#include "moat/buf.h"
#include "search.h"
#include "social_store.h"

/* Caps well above the producers' own (posts keeps 10 mentions of at most
 * 30 characters, profiles 30-character handles): anything larger is a
 * broken event. */
#define TEXT_MAX     (64u << 10)
#define MENTIONS_MAX 64
#define NAME_MAX     64
#define DOC_MAX      (128u << 10)

const char *const soc_posts_event_types[] = {POSTS_POST_CREATED,
                                             POSTS_POST_DELETED, NULL};
const char *const soc_profiles_event_types[] = {PROFILES_PROFILE_UPDATED, NULL};

/* data[key] when it is an id as moat services make them; else NULL. */
static const char *get_id(json_t *data, const char *key)
{
    const char *s = json_string_value(json_object_get(data, key));
    return s && srch_id_valid(s, strlen(s)) ? s : NULL;
}

/* The event's time in ms since the epoch; 0 when it is not RFC 3339. */
static int64_t event_time_ms(const struct moat_event *ev)
{
    int64_t ms;
    return moat_time_parse_rfc3339(ev->time, &ms) == MOAT_OK ? ms : 0;
}

/* data[key], an integer >= min, into *out. */
static bool get_int(json_t *data, const char *key, int64_t min, int64_t *out)
{
    json_t *v = json_object_get(data, key);
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return false;
    *out = json_integer_value(v);
    return true;
}

/* The mention names, space-separated; false when mentions is not an
 * array of at most MENTIONS_MAX names. */
static bool mentions_text(json_t *mentions, struct moat_buf *out)
{
    if (!mentions || json_is_null(mentions))
        return true;
    if (!json_is_array(mentions) || json_array_size(mentions) > MENTIONS_MAX)
        return false;
    size_t i;
    json_t *m;
    json_array_foreach(mentions, i, m)
    {
        if (!json_is_string(m) || json_string_length(m) == 0 ||
            json_string_length(m) > NAME_MAX)
            return false;
        if (out->len)
            moat_buf_addch(out, ' ');
        moat_buf_add(out, json_string_value(m), json_string_length(m));
    }
    return true;
}

/* The post as a hit shows it: the event's fields in the shape of posts'
 * GET /v1/posts/{id} (as timelines renders it). Caller frees. */
static char *render_post(json_t *data)
{
    static const char *const keys[] = {"post_id",    "author_id", "text",
                                       "mentions",   "urls",      "media_urls",
                                       "created_at", NULL};
    json_t *doc = json_object();
    for (size_t i = 0; keys[i]; i++) {
        json_t *v = json_object_get(data, keys[i]);
        if (v) /* named as posts' API names it: the post's own is "id" */
            json_object_set(doc, i == 0 ? "id" : keys[i], v);
    }
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return s;
}

/* ---- posts ---- */

static int apply_post_created(struct moat_db *db, const struct moat_event *ev,
                              json_t *data, const char **why)
{
    struct soc_post p = {.seq = ev->seq, .event_time_ms = event_time_ms(ev)};
    json_t *text = json_object_get(data, "text");
    p.id = get_id(data, "post_id");
    p.author_id = get_id(data, "author_id");
    if (!p.id || !p.author_id) {
        *why = "data.post_id or data.author_id is not an id";
        return MOAT_EINVAL;
    }
    if (!json_is_string(text) || json_string_length(text) > TEXT_MAX) {
        *why = "data.text is not a string of at most 64 KiB";
        return MOAT_EINVAL;
    }
    if (!get_int(data, "created_at", 0, &p.created_at)) {
        *why = "data.created_at is not a time in s since the epoch";
        return MOAT_EINVAL;
    }
    p.text = json_string_value(text);
    struct moat_buf mentions = MOAT_BUF_INIT;
    char *doc = NULL;
    int rc = MOAT_EINVAL;
    if (!mentions_text(json_object_get(data, "mentions"), &mentions)) {
        *why = "data.mentions is not an array of names";
        goto cleanup;
    }
    doc = render_post(data);
    if (!doc || strlen(doc) > DOC_MAX) {
        *why = "the post is larger than the index keeps";
        goto cleanup;
    }
    p.mentions = moat_buf_str(&mentions);
    p.doc = doc;
    rc = soc_store_post_add(db, &p);
cleanup:
    free(doc);
    moat_buf_release(&mentions);
    return rc;
}

int soc_apply_posts(struct moat_db *db, const struct moat_event *ev, void *arg,
                    const char **why)
{
    MOAT_UNUSED(arg);
    json_t *data = NULL;
    int rc = posts_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc == MOAT_OK && strcmp(ev->type, POSTS_POST_CREATED) == 0) {
        rc = apply_post_created(db, ev, data, why);
    } else if (rc == MOAT_OK) {
        const char *id = get_id(data, "post_id");
        if (id) {
            rc = soc_store_post_delete(db, id, ev->seq);
        } else {
            *why = "data.post_id is not an id";
            rc = MOAT_EINVAL;
        }
    }
    json_decref(data);
#ifdef MOAT_TEST_HOOKS
    /* In the handler's transaction: counted once per committed effect. */
    if (rc == MOAT_OK)
        rc = srch_store_count_application(db, ev->source, ev->seq);
#endif
    return rc;
}

/* ---- profiles ---- */

int soc_apply_profiles(struct moat_db *db, const struct moat_event *ev,
                       void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    json_t *data = NULL;
    int rc =
        profiles_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc != MOAT_OK)
        return rc;
    struct soc_profile p = {.seq = ev->seq, .event_time_ms = event_time_ms(ev)};
    json_t *handle = json_object_get(data, "handle");
    p.user_id = get_id(data, "user_id");
    rc = MOAT_EINVAL;
    if (!p.user_id) {
        *why = "data.user_id is not an id";
    } else if (!get_int(data, "version", 1, &p.version) ||
               !get_int(data, "updated_at", 0, &p.updated_at)) {
        *why = "data.version or data.updated_at is not a positive integer";
    } else if (handle && !json_is_null(handle) &&
               (!json_is_string(handle) || json_string_length(handle) == 0 ||
                json_string_length(handle) > NAME_MAX)) {
        *why = "data.handle is neither null nor a name";
    } else {
        p.handle = json_string_value(handle); /* NULL when null or absent */
        rc = soc_store_profile_put(db, &p);
    }
    json_decref(data);
#ifdef MOAT_TEST_HOOKS
    if (rc == MOAT_OK)
        rc = srch_store_count_application(db, ev->source, ev->seq);
#endif
    return rc;
}
