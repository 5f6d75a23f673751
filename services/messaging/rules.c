/* rules.c - messaging's input rules (see rules.h). */
#include "moat/common.h"

#include "moat/id.h"

#include "moat/problem.h"

#include <string.h>

#include "rules.h"

#define USER_ID_MAX 63

const char *msg_text_problem(const char *s, size_t len, size_t max)
{
    if (len < 1 || len > max)
        return "has the wrong length (see docs/messaging.md for the cap)";
    return moat_text_problem(s, len);
}

bool msg_user_id_valid(const char *s)
{
    return moat_ref_valid(s, USER_ID_MAX);
}

size_t msg_member_set(const char *creator, const char *const *ids, size_t n,
                      const char **out)
{
    size_t count = 0;
    out[count++] = creator;
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < count && !seen; j++)
            seen = strcmp(out[j], ids[i]) == 0;
        if (!seen)
            out[count++] = ids[i];
    }
    return count;
}
