/* entities.c - mentions and URLs in a post's text (see entities.h). */
#include "entities.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9');
}

static bool is_name_char(unsigned char c)
{
    return is_alnum(c) || c == '_';
}

/* An RFC 3986 character (unreserved, reserved or "%"). */
static bool is_url_char(unsigned char c)
{
    return is_alnum(c) || (c != '\0' && strchr("-._~:/?#[]@!$&'()*+,;=%", c));
}

static size_t count_char(const char *s, size_t n, char c)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == c;
    return k;
}

/* Length of the URL starting at text[i], 0 when none starts there. */
static size_t url_at(const char *text, size_t i)
{
    const char *s = text + i;
    size_t n;
    if (i > 0 && is_name_char((unsigned char)text[i - 1]))
        return 0;
    if (strncasecmp(s, "https://", 8) == 0)
        n = 8;
    else if (strncasecmp(s, "http://", 7) == 0)
        n = 7;
    else
        return 0;
    if (!is_alnum((unsigned char)s[n]))
        return 0; /* no host */
    while (is_url_char((unsigned char)s[n]))
        n++;
    /* Sentence punctuation after a link is not part of it; nor is the
     * ")" closing a parenthesis the link was written in. The host's first
     * character is alphanumeric, so this stops there at the latest. */
    for (;;) {
        char c = s[n - 1];
        if (strchr(".,;:!?'", c))
            n--;
        else if (c == ')' && count_char(s, n, '(') < count_char(s, n, ')'))
            n--;
        else
            return n;
    }
}

/* Length of the name of the mention whose "@" is text[i], 0 when none. */
static size_t mention_at(const char *text, size_t i)
{
    if (i > 0) {
        unsigned char before = (unsigned char)text[i - 1];
        if (is_name_char(before) || strchr("@.+-/", before))
            return 0; /* part of an email address, a path or a word */
    }
    size_t n = 0;
    while (is_name_char((unsigned char)text[i + 1 + n]))
        n++;
    if (n < 1 || n > PST_MENTION_NAME_MAX || text[i + 1 + n] == '@')
        return 0;
    return n;
}

static void add_mention(struct pst_entities *e, const char *text, size_t off,
                        size_t len)
{
    for (size_t k = 0; k < e->nmentions; k++)
        if (e->mentions[k].len == len &&
            strncasecmp(text + e->mentions[k].off, text + off, len) == 0)
            return;
    if (e->nmentions < PST_MENTIONS_MAX)
        e->mentions[e->nmentions++] = (struct pst_span){off, len};
}

static void add_url(struct pst_entities *e, const char *text, size_t off,
                    size_t len)
{
    for (size_t k = 0; k < e->nurls; k++)
        if (e->urls[k].len == len &&
            memcmp(text + e->urls[k].off, text + off, len) == 0)
            return;
    if (e->nurls < PST_URLS_MAX)
        e->urls[e->nurls++] = (struct pst_span){off, len};
}

void pst_entities_parse(const char *text, struct pst_entities *out)
{
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    while (text[i]) {
        size_t n = url_at(text, i);
        if (n > 0) {
            add_url(out, text, i, n);
            i += n; /* an "@" inside a link is not a mention */
            continue;
        }
        if (text[i] == '@' && (n = mention_at(text, i)) > 0) {
            add_mention(out, text, i + 1, n);
            i += 1 + n;
            continue;
        }
        i++;
    }
}
