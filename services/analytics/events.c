/*
 * events.c - every source's events -> the engagement counts.
 *
 *   source       event               actor          counts as
 *   messaging    MessageSent         sender_id      messages_sent
 *   comments     CommentPosted       author_id      comments
 *   posts        PostCreated         author_id      posts
 *   connections  Followed            follower_id    follows
 *   connections  Unfollowed          follower_id    (activity only)
 *   connections  ConnectionAccepted  recipient_id   (activity only)
 *   users        UserRegistered      id             registrations
 *
 * Every action also makes its actor active in its buckets. Counts are of
 * actions when they happened: a later deletion (a post, a message) does
 * not rewrite them. The time is the event's own (ev->time_ms); an event
 * without a parsable time is refused with a reason and parked by the
 * consumer, never half applied.
 */
#include "moat/common.h"

#include "moat/id.h"

#include <string.h>

#include "analytics.h"
#include "contracts/connections.h"
#include "contracts/comments.h"
#include "contracts/messaging.h"
#include "contracts/posts.h"
#include "contracts/users.h"
#include "moat/log.h"

struct rule {
    const char *source, *type;
    const char *actor; /* the data member naming the acting user */
    enum an_metric metric;
};

static const struct rule rules[] = {
    {"messaging", MESSAGING_MESSAGE_SENT, "sender_id", AN_MESSAGES_SENT},
    {"comments", COMMENTS_COMMENT_POSTED, "author_id", AN_COMMENTS},
    {"posts", POSTS_POST_CREATED, "author_id", AN_POSTS},
    {"connections", CONNECTIONS_FOLLOWED, "follower_id", AN_FOLLOWS},
    {"connections", CONNECTIONS_UNFOLLOWED, "follower_id", AN_NONE},
    {"connections", CONNECTIONS_CONNECTION_ACCEPTED, "recipient_id", AN_NONE},
    {"users", USERS_USER_REGISTERED, "id", AN_REGISTRATIONS},
};

static const char *const messaging_types[] = {MESSAGING_MESSAGE_SENT, NULL};
static const char *const comments_types[] = {COMMENTS_COMMENT_POSTED, NULL};
static const char *const posts_types[] = {POSTS_POST_CREATED, NULL};
static const char *const connections_types[] = {
    CONNECTIONS_FOLLOWED, CONNECTIONS_UNFOLLOWED,
    CONNECTIONS_CONNECTION_ACCEPTED, NULL};
static const char *const users_types[] = {USERS_USER_REGISTERED, NULL};

const char *const *an_event_types(const char *source)
{
    static const struct {
        const char *source;
        const char *const *types;
    } all[] = {{"messaging", messaging_types},
               {"comments", comments_types},
               {"posts", posts_types},
               {"connections", connections_types},
               {"users", users_types}};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(all); i++)
        if (strcmp(all[i].source, source) == 0)
            return all[i].types;
    return NULL;
}

/* Ids as moat services make them: 1..64 of [A-Za-z0-9_-]. */
static const char *get_id(json_t *data, const char *key)
{
    const char *s = json_string_value(json_object_get(data, key));
    return moat_ref_valid(s, AN_KEY_MAX) ? s : NULL;
}

/* The data in the current schema, by the producer's contract. */
static int upcast(const struct moat_event *ev, json_t **data, const char **why)
{
    if (strcmp(ev->source, "messaging") == 0)
        return messaging_upcast(ev->type, ev->schema_version, ev->data, data,
                                why);
    if (strcmp(ev->source, "posts") == 0)
        return posts_upcast(ev->type, ev->schema_version, ev->data, data, why);
    if (strcmp(ev->source, "connections") == 0)
        return connections_upcast(ev->type, ev->schema_version, ev->data, data,
                                  why);
    if (strcmp(ev->source, "users") == 0)
        return users_upcast(ev->type, ev->schema_version, ev->data, data, why);
    return comments_upcast(ev->type, ev->schema_version, ev->data, data, why);
}

int an_apply(struct moat_db *db, const struct moat_event *ev, void *arg,
             const char **why)
{
    struct an_service *s = arg;
    const struct rule *r = NULL;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(rules) && !r; i++)
        if (strcmp(rules[i].source, ev->source) == 0 &&
            strcmp(rules[i].type, ev->type) == 0)
            r = &rules[i];
    if (!r)
        return MOAT_OK; /* not subscribed: cannot happen */
    if (ev->time_ms <= 0) {
        *why = "the event's time is not RFC 3339 UTC";
        return MOAT_EINVAL;
    }
    json_t *data = NULL;
    int rc = upcast(ev, &data, why);
    if (rc != MOAT_OK)
        return rc;
    const char *user = get_id(data, r->actor);
    if (!user) {
        *why = "the acting user's id is missing or not an id";
        rc = MOAT_EINVAL;
    } else {
        rc = an_store_count(db, user, ev->time_ms / 1000, r->metric);
    }
    json_decref(data);
    /* Live applies only (a verification's scratch database is another
     * db): how long after the event's commit it is counted. */
    if (rc == MOAT_OK && s && db == s->db && s->f_apply_lag) {
        int64_t lag = moat_wall_ms() - ev->time_ms;
        const char *labels[] = {ev->source};
        moat_metric_observe(moat_metric_series(s->f_apply_lag, labels),
                            lag > 0 ? (double)lag / 1000.0 : 0.0);
    }
    return rc;
}
