/*
 * test_profiles_store.c - services/profiles/store.c against a real SQLite
 * file and a real keyring in a temporary directory (no service process):
 * fields round-trip and are sealed at rest, a ciphertext moved to another
 * row refuses to open, the default profile is idempotent and never
 * overwrites an edited one, a taken handle is a conflict, If-Match
 * versions are enforced, and a PUT that changes nothing writes nothing.
 * Each test runs again as <name>_pg with the store on PostgreSQL (skipped
 * without it: tests/pg_fixture.h).
 */
#include "moat/common.h"

#include <event2/event.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "moat/crypto.h"
#include "moat/keys.h"
#include "moat/metrics.h"
#include "pg_fixture.h"
#include "profile.h"
#include "store.h"

struct fixture {
    char dir[64];
    struct event_base *base;
    struct moat_metrics *metrics;
    struct moat_keyring *kr;
    struct pro_store *s;
};

static int setup_with(void **state, bool pg)
{
    if (pg && !h_pg_available()) {
        *state = NULL; /* the test skips */
        return 0;
    }
    struct fixture *f = moat_xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-profiles-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->base = event_base_new();
    f->metrics = moat_metrics_new();
    unsetenv("MOAT_TEST_PROFILES_KEYRING");
    char *keys = moat_xasprintf("%s/keys", f->dir);
    assert_int_equal(
        moat_keyring_load(&f->kr, "MOAT_TEST_PROFILES_KEYRING", keys), MOAT_OK);
    free(keys);
    const struct moat_outbox_options oo = {0};
    assert_int_equal(pro_store_open(&f->s, f->base, f->dir,
                                    pg ? h_pg_dsn("test_profiles_store") : NULL,
                                    f->kr, &oo, f->metrics),
                     MOAT_OK);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, false);
}

static int setup_pg(void **state)
{
    return setup_with(state, true);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (!f)
        return 0;
    pro_store_close(f->s);
    moat_keyring_free(f->kr);
    moat_metrics_free(f->metrics);
    event_base_free(f->base);
    char *cmd = moat_xasprintf("rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* A profile for user with display name and handle (either may be NULL). */
static struct pro_profile make(const char *user, const char *name,
                               const char *handle)
{
    struct pro_profile p = {0};
    snprintf(p.user_id, sizeof(p.user_id), "%s", user);
    p.fields[PRO_F_DISPLAY_NAME] = name ? moat_xstrdup(name) : NULL;
    p.fields[PRO_F_HANDLE] = handle ? moat_xstrdup(handle) : NULL;
    return p;
}

static int put(struct fixture *f, struct pro_profile *in, int64_t expect,
               bool *changed)
{
    struct pro_profile out = {0};
    int rc = pro_store_put(f->s, in, expect, 1000, &out, changed);
    pro_profile_release(&out);
    pro_profile_release(in);
    return rc;
}

/* The text of one column of user's row, straight from the database
 * (caller frees), or NULL. */
static char *raw_column(struct fixture *f, const char *column, const char *user)
{
    char *sql =
        moat_xasprintf("SELECT %s FROM profiles WHERE user_id = ?1", column);
    struct moat_stmt *st = moat_db_prepare(pro_store_db(f->s), column, sql);
    assert_non_null(st);
    moat_stmt_bind_text(st, 1, user);
    char *out = NULL;
    if (moat_stmt_step(st) == SQLITE_ROW && moat_stmt_text(st, 0))
        out = moat_xstrdup(moat_stmt_text(st, 0));
    moat_stmt_reset(st);
    free(sql);
    return out;
}

static int64_t outbox_rows(struct fixture *f)
{
    struct moat_stmt *st = moat_db_prepare(pro_store_db(f->s), "outbox_rows",
                                           "SELECT count(*) FROM moat_outbox");
    assert_non_null(st);
    assert_int_equal(moat_stmt_step(st), SQLITE_ROW);
    int64_t n = moat_stmt_int64(st, 0);
    moat_stmt_reset(st);
    return n;
}

static void test_round_trip_sealed(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    struct pro_profile p = make("usr_a", "Ada Lovelace", "ada");
    p.fields[PRO_F_BIO] = moat_xstrdup("Engines.\nNotes.");
    p.fields[PRO_F_LOCATION] = moat_xstrdup("London");
    p.fields[PRO_F_AVATAR_URL] = moat_xstrdup("https://img.example/a.png");
    bool changed = false;
    assert_int_equal(put(f, &p, PRO_ANY_VERSION, &changed), MOAT_OK);
    assert_true(changed);

    struct pro_profile got = {0};
    assert_int_equal(pro_store_get(f->s, "usr_a", &got), MOAT_OK);
    assert_string_equal(got.fields[PRO_F_DISPLAY_NAME], "Ada Lovelace");
    assert_string_equal(got.fields[PRO_F_BIO], "Engines.\nNotes.");
    assert_string_equal(got.fields[PRO_F_LOCATION], "London");
    assert_string_equal(got.fields[PRO_F_HANDLE], "ada");
    assert_int_equal(got.version, 1);
    assert_int_equal(got.key_id, moat_keyring_active(f->kr));
    pro_profile_release(&got);
    assert_int_equal(pro_store_get_by_handle(f->s, "ada", &got), MOAT_OK);
    assert_string_equal(got.user_id, "usr_a");
    pro_profile_release(&got);

    /* Sealed columns hold "s1." text, never the plaintext. */
    const char *sealed[] = {"name_enc", "bio_enc", "location_enc"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(sealed); i++) {
        char *v = raw_column(f, sealed[i], "usr_a");
        assert_non_null(v);
        assert_memory_equal(v, "s1.", 3);
        assert_null(strstr(v, "Ada"));
        assert_null(strstr(v, "London"));
        free(v);
    }
    assert_int_equal(outbox_rows(f), 1);
}

static void test_moved_ciphertext_refused(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    struct pro_profile a = make("usr_a", "Alice", NULL);
    struct pro_profile b = make("usr_b", "Bob", NULL);
    assert_int_equal(put(f, &a, PRO_ANY_VERSION, NULL), MOAT_OK);
    assert_int_equal(put(f, &b, PRO_ANY_VERSION, NULL), MOAT_OK);
    /* Alice's sealed name pasted into Bob's row: it must not open there. */
    char *alice = raw_column(f, "name_enc", "usr_a");
    struct moat_stmt *st = moat_db_prepare(
        pro_store_db(f->s), "paste",
        "UPDATE profiles SET name_enc = ?1 WHERE user_id = 'usr_b'");
    assert_non_null(st);
    moat_stmt_bind_text(st, 1, alice);
    assert_int_equal(moat_stmt_step(st), SQLITE_DONE);
    moat_stmt_reset(st);
    free(alice);
    struct pro_profile got = {0};
    assert_int_equal(pro_store_get(f->s, "usr_b", &got), PRO_EINTEGRITY);
    assert_null(got.fields[PRO_F_DISPLAY_NAME]);
    assert_int_equal(pro_store_get(f->s, "usr_a", &got), MOAT_OK);
    pro_profile_release(&got);
}

static void test_default_profile_idempotent(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    struct moat_db *db = pro_store_db(f->s);
    assert_int_equal(pro_store_ensure(db, "usr_c", 1, 5000), MOAT_OK);
    assert_int_equal(pro_store_ensure(db, "usr_c", 1, 9000), MOAT_OK);
    struct pro_profile got = {0};
    assert_int_equal(pro_store_get(f->s, "usr_c", &got), MOAT_OK);
    assert_int_equal(got.version, 1);
    assert_int_equal(got.created_ms, 5000);
    for (int i = 0; i < PRO_NFIELDS; i++)
        assert_null(got.fields[i]);
    pro_profile_release(&got);
    assert_int_equal(outbox_rows(f), 0); /* no event for a default */

    /* Edited first, registered later: the edit stays. */
    struct pro_profile d = make("usr_d", "Early Bird", NULL);
    assert_int_equal(put(f, &d, 0, NULL), MOAT_OK);
    assert_int_equal(pro_store_ensure(db, "usr_d", 1, 5000), MOAT_OK);
    assert_int_equal(pro_store_get(f->s, "usr_d", &got), MOAT_OK);
    assert_string_equal(got.fields[PRO_F_DISPLAY_NAME], "Early Bird");
    pro_profile_release(&got);
}

static void test_conflicts_and_preconditions(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    struct pro_profile a = make("usr_a", NULL, "same");
    struct pro_profile b = make("usr_b", NULL, "same");
    assert_int_equal(put(f, &a, PRO_ANY_VERSION, NULL), MOAT_OK);
    assert_int_equal(put(f, &b, PRO_ANY_VERSION, NULL), MOAT_ECONFLICT);
    struct pro_profile got = {0};
    assert_int_equal(pro_store_get(f->s, "usr_b", &got), MOAT_ENOTFOUND);

    /* Versions: a missing profile is 0, then 1, 2... */
    struct pro_profile c = make("usr_c", "C", NULL);
    assert_int_equal(put(f, &c, 3, NULL), MOAT_EPRECOND);
    c = make("usr_c", "C", NULL);
    assert_int_equal(put(f, &c, 0, NULL), MOAT_OK);
    c = make("usr_c", "C2", NULL);
    assert_int_equal(put(f, &c, 0, NULL), MOAT_EPRECOND);
    c = make("usr_c", "C2", NULL);
    assert_int_equal(put(f, &c, 1, NULL), MOAT_OK);
    int64_t events = outbox_rows(f);

    /* The same content again: no write, no event, same version. */
    bool changed = true;
    c = make("usr_c", "C2", NULL);
    assert_int_equal(put(f, &c, 2, &changed), MOAT_OK);
    assert_false(changed);
    assert_int_equal(outbox_rows(f), events);
    assert_int_equal(pro_store_get(f->s, "usr_c", &got), MOAT_OK);
    assert_int_equal(got.version, 2);
    pro_profile_release(&got);
}

/* After a key rotation, batches re-seal every row under the new key (the
 * cursor walks user ids in order) and the rows still open. */
static void test_rekey_batches(void **state)
{
    struct fixture *f = *state;
    if (!f)
        skip(); /* PostgreSQL not installed */
    const char *users[] = {"usr_a", "usr_b", "usr_c", "usr_d", "usr_e"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(users); i++) {
        struct pro_profile p = make(users[i], users[i], NULL);
        p.fields[PRO_F_BIO] = moat_xstrdup("bio");
        assert_int_equal(put(f, &p, PRO_ANY_VERSION, NULL), MOAT_OK);
    }
    uint32_t old = moat_keyring_active(f->kr), fresh;
    assert_int_equal(moat_keyring_rotate(f->kr, &fresh), MOAT_OK);
    assert_int_not_equal(fresh, old);

    char after[MOAT_KEYS_CURSOR_MAX] = "";
    size_t total = 0, resealed, failed, batches = 0;
    bool finished = false;
    while (!finished) {
        assert_int_equal(pro_store_rekey_batch(f->s, fresh, after, 2, &resealed,
                                               &failed, &finished),
                         MOAT_OK);
        assert_int_equal(failed, 0);
        total += resealed;
        assert_true(++batches <= 4);
    }
    assert_int_equal(total, MOAT_ARRAY_LEN(users));
    assert_string_equal(after, "usr_e");

    json_t *rows = NULL;
    assert_int_equal(pro_store_rows_by_key(f->s, &rows), MOAT_OK);
    char key[16];
    snprintf(key, sizeof(key), "%u", fresh);
    assert_int_equal(json_object_size(rows), 1);
    assert_int_equal(json_integer_value(json_object_get(rows, key)),
                     MOAT_ARRAY_LEN(users));
    json_decref(rows);
    struct pro_profile got = {0};
    assert_int_equal(pro_store_get(f->s, "usr_c", &got), MOAT_OK);
    assert_string_equal(got.fields[PRO_F_DISPLAY_NAME], "usr_c");
    assert_int_equal(got.key_id, fresh);
    pro_profile_release(&got);
}

static void test_parse_rules(void **state)
{
    MOAT_UNUSED(state);
    struct pro_profile p = {0};
    json_t *ok = json_pack("{s:s, s:s, s:n}", "handle", "Mixed_Case1",
                           "avatar_url", "HTTPS://x.example/a", "bio");
    assert_null(pro_profile_parse(ok, &p));
    assert_string_equal(p.fields[PRO_F_HANDLE], "mixed_case1");
    assert_null(p.fields[PRO_F_BIO]);
    pro_profile_release(&p);
    json_decref(ok);

    json_t *bad =
        json_pack("{s:s, s:s, s:s, s:s}", "handle", "ab", "avatar_url",
                  "ftp://x", "display_name", "", "version", "9");
    json_t *problem = pro_profile_parse(bad, &p);
    assert_non_null(problem);
    assert_int_equal(json_array_size(json_object_get(problem, "errors")), 4);
    for (int i = 0; i < PRO_NFIELDS; i++)
        assert_null(p.fields[i]);
    json_decref(problem);
    json_decref(bad);
    assert_false(pro_user_id_valid(""));
    assert_false(pro_user_id_valid("usr/x"));
    assert_true(pro_user_id_valid("usr_01ABC-x"));
}

int main(void)
{
    /* Each store test on SQLite, then as <name>_pg on PostgreSQL. */
#define BOTH(fn)                                                               \
    cmocka_unit_test_setup_teardown(fn, setup, teardown),                      \
    {                                                                          \
#fn "_pg", fn, setup_pg, teardown, NULL                                \
    }
    const struct CMUnitTest tests[] = {
        BOTH(test_round_trip_sealed),
        BOTH(test_moved_ciphertext_refused),
        BOTH(test_default_profile_idempotent),
        BOTH(test_conflicts_and_preconditions),
        BOTH(test_rekey_batches),
        cmocka_unit_test(test_parse_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
