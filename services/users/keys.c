/*
 * keys.c - /v1/admin/keys for users: libmoat's rotation, re-sealing and
 * retirement (moat/keys.h) over users' store.
 */
#include "moat/common.h"

#include <stdio.h>
#include <string.h>

#include "moat/keys.h"
#include "users.h"

_Static_assert(USR_ID_LEN + 1 <= MOAT_KEYS_CURSOR_MAX,
               "a user id fits the re-sealing cursor");

static int rekey_batch(void *arg, uint32_t active, char *after, size_t batch,
                       size_t *resealed, size_t *failed, bool *finished)
{
    struct usr_service *usr = arg;
    char cursor[USR_ID_LEN + 1];
    snprintf(cursor, sizeof(cursor), "%s", after);
    int rc = usr_store_rekey_batch(usr->store, active, cursor, batch, resealed,
                                   failed, finished);
    if (rc == MOAT_OK)
        snprintf(after, MOAT_KEYS_CURSOR_MAX, "%s", cursor);
    return rc;
}

static int rows_by_key(void *arg, json_t **out)
{
    struct usr_service *usr = arg;
    return usr_store_rows_by_key(usr->store, out);
}

int usr_keys_routes_register(struct usr_service *usr)
{
    const struct moat_keys_store store = {rekey_batch, rows_by_key, usr};
    const struct moat_keys_options opts = {
        .env_name = "MOAT_USERS_KEYRING",
        .audit = usr->audit,
        .batch = usr->cfg.rekey_batch,
        .pause_ms = usr->cfg.rekey_pause_ms,
    };
    return moat_keys_new(&usr->keys, usr->svc, usr->kr, &store, &opts);
}
