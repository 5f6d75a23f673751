/*
 * events.c - posts' and connections' events -> the home timelines view.
 *
 * Each handler checks the event's data (an event that does not fit is
 * refused with a reason and parked by the consumer, never half applied),
 * then calls one store.c write. All writes are idempotent, so a redelivered
 * event changes nothing, and deterministic, so replay --verify rebuilds the
 * same view.
 */
#include "moat/common.h"

#include "moat/id.h"

#include <string.h>

#include "contracts/connections.h"
#include "contracts/posts.h"
#include "timelines.h"

/* Largest post document kept (the posts service caps the text at less). */
#define DOC_MAX 16384

const char *const tl_posts_event_types[] = {POSTS_POST_CREATED,
                                            POSTS_POST_DELETED, NULL};
const char *const tl_connections_event_types[] = {CONNECTIONS_FOLLOWED,
                                                  CONNECTIONS_UNFOLLOWED, NULL};

/* Ids as moat services make them: 1..64 of [A-Za-z0-9_-]. */
static const char *get_id(json_t *data, const char *key)
{
    const char *s = json_string_value(json_object_get(data, key));
    return moat_ref_valid(s, TL_KEY_MAX) ? s : NULL;
}

/* The post as the timeline shows it: the event's fields a reader needs,
 * in the shape of posts' GET /v1/posts/{id}. */
static char *render_post(json_t *data)
{
    static const char *const keys[] = {"post_id",    "author_id", "text",
                                       "mentions",   "urls",      "media_urls",
                                       "created_at", NULL};
    json_t *doc = json_object();
    for (size_t i = 0; keys[i]; i++) {
        json_t *v = json_object_get(data, keys[i]);
        /* Named as posts' API names it: the post's own id is "id". */
        if (v)
            json_object_set(doc, i == 0 ? "id" : keys[i], v);
    }
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return s;
}

static int apply_post_created(struct moat_db *db, const struct moat_event *ev,
                              json_t *data, struct tl_service *s,
                              const char **why)
{
    struct tl_post p = {.seq = ev->seq};
    p.post_id = get_id(data, "post_id");
    p.author_id = get_id(data, "author_id");
    if (!p.post_id || !p.author_id) {
        *why = "data.post_id or data.author_id is not an id";
        return MOAT_EINVAL;
    }
    if (!json_is_string(json_object_get(data, "text"))) {
        *why = "data.text is not a string";
        return MOAT_EINVAL;
    }
    char *doc = render_post(data);
    if (!doc || strlen(doc) > DOC_MAX) {
        free(doc);
        *why = "the post is larger than the timeline keeps";
        return MOAT_EINVAL;
    }
    p.doc = doc;
    int rc = tl_store_post_add(db, &p, s->fanout_max);
    free(doc);
    return rc;
}

static int apply_post_deleted(struct moat_db *db, json_t *data,
                              const char **why)
{
    const char *post_id = get_id(data, "post_id");
    if (!post_id) {
        *why = "data.post_id is not an id";
        return MOAT_EINVAL;
    }
    return tl_store_post_delete(db, post_id);
}

int tl_apply_posts(struct moat_db *db, const struct moat_event *ev, void *arg,
                   const char **why)
{
    json_t *data = NULL;
    int rc = posts_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc != MOAT_OK)
        return rc;
    if (strcmp(ev->type, POSTS_POST_CREATED) == 0)
        rc = apply_post_created(db, ev, data, arg, why);
    else
        rc = apply_post_deleted(db, data, why);
    json_decref(data);
    return rc;
}

int tl_apply_connections(struct moat_db *db, const struct moat_event *ev,
                         void *arg, const char **why)
{
    MOAT_UNUSED(arg);
    json_t *data = NULL;
    int rc =
        connections_upcast(ev->type, ev->schema_version, ev->data, &data, why);
    if (rc != MOAT_OK)
        return rc;
    bool follow = strcmp(ev->type, CONNECTIONS_FOLLOWED) == 0;
    const char *follower = get_id(data, "follower_id");
    const char *followee = get_id(data, "followee_id");
    if (!follower || !followee) {
        *why = "data.follower_id or data.followee_id is not an id";
        rc = MOAT_EINVAL;
    } else if (strcmp(follower, followee) == 0) {
        rc = MOAT_OK; /* one's own posts are always there */
    } else {
        rc = follow ? tl_store_follow(db, follower, followee)
                    : tl_store_unfollow(db, follower, followee);
    }
    json_decref(data);
    return rc;
}
