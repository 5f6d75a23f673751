/*
 * rules.h - messaging's input rules, pure functions without I/O (unit
 * tested in tests/unit/test_messaging_rules.c): message texts, user ids,
 * and the member set of a new conversation.
 */
#ifndef MSG_RULES_H
#define MSG_RULES_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The problem with a message text of len bytes (valid UTF-8, as decoded
 * JSON strings are), or NULL when it is acceptable: 1 to max bytes, no
 * control characters but tab and line breaks, not only white space.
 * The message is static storage.
 */
const char *msg_text_problem(const char *s, size_t len, size_t max);

/* A user id as principals carry them: 1..63 of [A-Za-z0-9_-]. */
bool msg_user_id_valid(const char *s);

/*
 * The members of a new conversation: creator first, then ids[0..n) in
 * order without repeats (the creator included). out (capacity n + 1)
 * gets borrowed pointers; returns how many.
 */
size_t msg_member_set(const char *creator, const char *const *ids, size_t n,
                      const char **out);

#endif /* MSG_RULES_H */
