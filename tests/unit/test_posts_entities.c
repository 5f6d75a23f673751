/*
 * Unit tests for services/posts/entities.c: mentions and URLs parsed out of
 * a post's text. The parser is pure and the unit tests link libmoat only,
 * so the file is compiled into this test.
 */
#include "moat/common.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../services/posts/entities.c"

/* The spans of kind joined by ',' (rotating buffers). */
static const char *joined(const char *text, const struct pst_span *s, size_t n)
{
    static char bufs[4][2048];
    static int next;
    char *out = bufs[next++ % 4];
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, sizeof(bufs[0]) - len, "%s%.*s",
                                i ? "," : "", (int)s[i].len, text + s[i].off);
    return out;
}

static const char *mentions(const char *text)
{
    struct pst_entities e;
    pst_entities_parse(text, &e);
    return joined(text, e.mentions, e.nmentions);
}

static const char *urls(const char *text)
{
    struct pst_entities e;
    pst_entities_parse(text, &e);
    return joined(text, e.urls, e.nurls);
}

static void test_mentions_basic(void **state)
{
    MOAT_UNUSED(state);
    assert_string_equal(mentions(""), "");
    assert_string_equal(mentions("no mentions here"), "");
    assert_string_equal(mentions("@alice"), "alice");
    assert_string_equal(mentions("hi @alice and @Bob_2!"), "alice,Bob_2");
    assert_string_equal(mentions("(@alice), @bob. @carol? @dan:"),
                        "alice,bob,carol,dan");
    assert_string_equal(mentions("\"@alice\" '@bob'"), "alice,bob");
    assert_string_equal(mentions("line\n@alice\t@bob"), "alice,bob");
    assert_string_equal(mentions("@bob's post"), "bob");
    assert_string_equal(mentions("é@alice"), "alice"); /* non-ASCII before */
    assert_string_equal(mentions("@alice_é"), "alice_");
}

static void test_mentions_not(void **state)
{
    MOAT_UNUSED(state);
    /* Email addresses and look-alikes. */
    assert_string_equal(mentions("mail bob@example.com"), "");
    assert_string_equal(mentions("a.b@example.com x+y@z.org a-b@c.de"), "");
    assert_string_equal(mentions("@bob@example.com"), "");
    assert_string_equal(mentions("see /path/@alice"), "");
    /* A bare or doubled "@" and names with other characters. */
    assert_string_equal(mentions("@ alone, @@alice, @-x, @!"), "");
    /* 30 characters is a name, 31 is nothing (not a truncated name). */
    assert_string_equal(mentions("@abcdefghijklmnopqrstuvwxyz0123"),
                        "abcdefghijklmnopqrstuvwxyz0123");
    assert_string_equal(mentions("@abcdefghijklmnopqrstuvwxyz01234"), "");
    assert_string_equal(mentions("@abcdefghijklmnopqrstuvwxyz_1234 @ok"), "ok");
}

static void test_mentions_duplicates_and_cap(void **state)
{
    MOAT_UNUSED(state);
    assert_string_equal(mentions("@alice @bob @Alice @ALICE @bob"),
                        "alice,bob");
    char text[512] = "";
    size_t len = 0;
    for (int i = 0; i < PST_MENTIONS_MAX + 5; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "@u%d ", i);
    struct pst_entities e;
    pst_entities_parse(text, &e);
    assert_int_equal(e.nmentions, PST_MENTIONS_MAX);
    assert_string_equal(joined(text, e.mentions, 2), "u0,u1");
    assert_string_equal(joined(text, &e.mentions[PST_MENTIONS_MAX - 1], 1),
                        "u9");
}

static void test_urls(void **state)
{
    MOAT_UNUSED(state);
    assert_string_equal(urls("see https://example.com"), "https://example.com");
    assert_string_equal(urls("HTTP://Example.com/A?b=1&c=%20#frag x"),
                        "HTTP://Example.com/A?b=1&c=%20#frag");
    /* Trailing punctuation is the sentence's. */
    assert_string_equal(urls("go to http://a.io/x. Then https://b.io/y, ok?"),
                        "http://a.io/x,https://b.io/y");
    assert_string_equal(urls("(see https://a.io/x)"), "https://a.io/x");
    assert_string_equal(urls("https://en.wikipedia.org/wiki/C_(language)"),
                        "https://en.wikipedia.org/wiki/C_(language)");
    assert_string_equal(urls("'https://a.io/it's'!"), "https://a.io/it's");
    assert_string_equal(urls("<https://a.io/x>"), "https://a.io/x");
    assert_string_equal(urls("\"https://a.io\""), "https://a.io");
    assert_string_equal(urls("https://a.io/ünï"), "https://a.io/");
    /* Not URLs. */
    assert_string_equal(urls("ftp://a.io mailto:x@y.z http:// https://"), "");
    assert_string_equal(urls("https://.io http://-x xhttps://a.io"), "");
    assert_string_equal(urls("https:/a.io http:a.io www.a.io"), "");
    /* Duplicates are kept once; the cap holds. */
    assert_string_equal(urls("http://a.io http://b.io http://a.io"),
                        "http://a.io,http://b.io");
    char text[512] = "";
    size_t len = 0;
    for (int i = 0; i < PST_URLS_MAX + 3; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len,
                                "http://h%d.io ", i);
    struct pst_entities e;
    pst_entities_parse(text, &e);
    assert_int_equal(e.nurls, PST_URLS_MAX);
}

static void test_mentions_in_urls(void **state)
{
    MOAT_UNUSED(state);
    const char *t = "by @alice: https://social.example/@bob?x=@carol @dan";
    assert_string_equal(mentions(t), "alice,dan");
    assert_string_equal(urls(t), "https://social.example/@bob?x=@carol");
    /* After a link's trailing punctuation and a space, a mention counts;
     * glued to the link it is part of it ("," and "@" are URL characters). */
    assert_string_equal(mentions("https://a.io, @erin"), "erin");
    assert_string_equal(urls("https://a.io, @erin"), "https://a.io");
    assert_string_equal(mentions("https://a.io,@erin"), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mentions_basic),
        cmocka_unit_test(test_mentions_not),
        cmocka_unit_test(test_mentions_duplicates_and_cap),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_mentions_in_urls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
