/*
 * consumer_lease.c - a consumer in several instances of a service
 * (docs/operations.md "Several instances"), all sharing its database.
 *
 * Applying an event twice is prevented by the database: a batch's
 * transaction (BEGIN IMMEDIATE, so the instances' transactions run one
 * after another) first reads the committed cursor, and whatever another
 * instance applied up to it is skipped (consumer_shared_cursor). Doing the
 * work twice is prevented by a lease: only the instance holding
 * <database>.lease-<source> (flock, released by the kernel when its
 * holder dies) pulls from that source; the others try again every
 * CONSUMER_LEASE_RETRY_MS and, once they get it, start from the committed
 * cursor. MOAT_CONSUMER_LEASE=0 turns the lease off (every instance pulls;
 * the cursor check alone keeps each event applied once).
 *
 * Only with MOAT_INSTANCES > 1 (set by moat up); a single instance takes
 * none of this.
 */
#include "moat/common.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "consumer_internal.h"
#include "moat/log.h"

bool consumer_shared(void)
{
    const char *n = getenv("MOAT_INSTANCES");
    return n && atoi(n) > 1;
}

static bool lease_wanted(const struct sub *s)
{
    const char *v = getenv("MOAT_CONSUMER_LEASE");
    return s->c->shared && !(v && strcmp(v, "0") == 0);
}

/* The committed cursor now, or the one in memory when it cannot be read. */
static int64_t stored_cursor(struct sub *s)
{
    int64_t cur = s->cursor;
    if (s->c->ops->cursor_read(s->c, s->src->name, &cur) != MOAT_OK)
        return s->cursor;
    return cur;
}

bool consumer_lease_hold(struct sub *s)
{
    if (!lease_wanted(s) || s->lease_fd > 0)
        return true;
    char *path =
        moat_xasprintf("%s.lease-%s", s->c->ops->where(s->c), s->src->name);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (fd < 0)
        return true; /* no lease to be had: the cursor check still holds */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return false;
    }
    s->lease_fd = fd;
    int64_t cur = stored_cursor(s);
    if (cur > s->cursor)
        s->cursor = cur;
    moat_log(MOAT_LOG_INFO,
             "consumer lease taken: this instance follows the "
             "source",
             "{s:s, s:I}", "source", s->src->name, "cursor",
             (json_int_t)s->cursor);
    return true;
}

void consumer_lease_release(struct sub *s)
{
    if (s->lease_fd > 0)
        close(s->lease_fd);
    s->lease_fd = 0;
}

int64_t consumer_shared_cursor(struct sub *s, int64_t to)
{
    if (!s->c->shared)
        return to;
    int64_t cur = stored_cursor(s);
    if (cur <= to)
        return to;
    if (cur > s->cursor)
        s->cursor = cur;
    return cur;
}
