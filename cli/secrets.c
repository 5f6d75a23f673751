/* secrets.c - generated keys and shared secrets of a deployment. */
#include "moat/common.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "secrets.h"

#define SECRET_BYTES 32

struct cli_secrets {
    char *path;
    char *tmp;
    json_t *root; /* {"version", "service_keys", "shared"} */
    bool dirty;
};

int cli_secrets_load(struct cli_secrets **out, const char *var_dir)
{
    struct cli_secrets *s = moat_xcalloc(1, sizeof(*s));
    s->path = moat_xasprintf("%s/secrets.json", var_dir);
    s->tmp = moat_xasprintf("%s/secrets.json.tmp", var_dir);
    struct stat st;
    if (stat(s->path, &st) == 0) {
        if (st.st_mode & 077) {
            cli_error("%s is readable by others (mode %o): chmod 600 it",
                      s->path, (unsigned)(st.st_mode & 0777));
            goto fail;
        }
        json_error_t err;
        s->root = json_load_file(s->path, JSON_REJECT_DUPLICATES, &err);
        if (!s->root ||
            !json_is_object(json_object_get(s->root, "service_keys")) ||
            !json_is_object(json_object_get(s->root, "shared"))) {
            cli_error("%s is not a moat secrets file: %s", s->path,
                      s->root ? "missing sections" : err.text);
            goto fail;
        }
    } else if (errno == ENOENT) {
        s->root = json_pack("{s:i, s:{}, s:{}}", "version", 1, "service_keys",
                            "shared");
        s->dirty = true;
    } else {
        cli_error("cannot read %s: %s", s->path, strerror(errno));
        goto fail;
    }
    *out = s;
    return MOAT_OK;
fail:
    cli_secrets_free(s);
    return MOAT_EIO;
}

void cli_secrets_free(struct cli_secrets *s)
{
    if (!s)
        return;
    json_decref(s->root);
    free(s->path);
    free(s->tmp);
    free(s);
}

static const char *get_or_make(struct cli_secrets *s, const char *section,
                               const char *name)
{
    json_t *sec = json_object_get(s->root, section);
    const char *v = json_string_value(json_object_get(sec, name));
    if (v)
        return v;
    unsigned char raw[SECRET_BYTES];
    char b64[sodium_base64_ENCODED_LEN(SECRET_BYTES,
                                       sodium_base64_VARIANT_ORIGINAL)];
    moat_random_bytes(raw, sizeof(raw));
    sodium_bin2base64(b64, sizeof(b64), raw, sizeof(raw),
                      sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(raw, sizeof(raw));
    json_object_set_new(sec, name, json_string(b64));
    sodium_memzero(b64, sizeof(b64));
    s->dirty = true;
    return json_string_value(json_object_get(sec, name));
}

const char *cli_secret_service_key(struct cli_secrets *s, const char *name)
{
    return get_or_make(s, "service_keys", name);
}

const char *cli_secret_shared(struct cli_secrets *s, const char *name)
{
    return get_or_make(s, "shared", name);
}

const char *cli_secret_shared_find(const struct cli_secrets *s,
                                   const char *name)
{
    return json_string_value(
        json_object_get(json_object_get(s->root, "shared"), name));
}

bool cli_secrets_dirty(const struct cli_secrets *s)
{
    return s->dirty;
}

int cli_secrets_save(struct cli_secrets *s)
{
    if (!s->dirty)
        return MOAT_OK;
    char *text = json_dumps(s->root, JSON_INDENT(2) | JSON_SORT_KEYS);
    int rc = MOAT_EIO;
    int fd = open(s->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                  0600);
    if (fd < 0)
        goto out;
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len || write(fd, "\n", 1) != 1 ||
        fsync(fd) != 0) {
        close(fd);
        unlink(s->tmp);
        goto out;
    }
    close(fd);
    if (rename(s->tmp, s->path) != 0) {
        unlink(s->tmp);
        goto out;
    }
    s->dirty = false;
    rc = MOAT_OK;
out:
    if (rc != MOAT_OK)
        cli_error("cannot write %s: %s", s->path, strerror(errno));
    if (text) {
        sodium_memzero(text, strlen(text));
        free(text);
    }
    return rc;
}
