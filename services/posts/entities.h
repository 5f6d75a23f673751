/*
 * entities.h - the mentions and links inside a post's text: a pure parser
 * (no allocation, no I/O) that returns spans into the caller's text, so the
 * unit test can include entities.c on its own.
 *
 * Mentions: "@name" with name = [A-Za-z0-9_]{1,30}, where the "@" starts
 * the text or follows a character that is not a letter, digit or one of
 * "_@.+-/" (so "bob@example.com" and "a.b@c" are not mentions), and the
 * name is not followed by another name character (a 31-character name is
 * no mention, not a truncated one) nor by "@" (an email address such as
 * "@bob@example.com"). Duplicates (ASCII case-insensitive) keep the first
 * spelling.
 *
 * URLs: "http://" or "https://" (scheme in any case) starting the text or
 * after a character that is not a letter, digit or "_", followed by a host
 * that starts with a letter or digit, then RFC 3986 characters up to the
 * first other one (space, non-ASCII, "<", ">", "\"", ...). Trailing
 * sentence punctuation (.,;:!?') is not part of the URL, nor is a final ")"
 * without its "(". Mentions inside a URL are not mentions. Duplicates
 * (exact) are kept once.
 *
 * At most PST_MENTIONS_MAX mentions and PST_URLS_MAX URLs are kept, in the
 * order of the text; the rest are ignored (not an error).
 */
#ifndef PST_ENTITIES_H
#define PST_ENTITIES_H

#include <stddef.h>

#define PST_MENTION_NAME_MAX 30
#define PST_MENTIONS_MAX     10
#define PST_URLS_MAX         10

/* A piece of the text: text[off .. off + len). */
struct pst_span {
    size_t off, len;
};

struct pst_entities {
    struct pst_span mentions[PST_MENTIONS_MAX]; /* the names, without "@" */
    size_t nmentions;
    struct pst_span urls[PST_URLS_MAX];
    size_t nurls;
};

/* Parse text (NUL-terminated, borrowed) into *out (overwritten). */
void pst_entities_parse(const char *text, struct pst_entities *out);

#endif /* PST_ENTITIES_H */
