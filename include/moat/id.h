/*
 * moat/id.h - sortable unique ids for aggregates: a short type prefix and
 * 26 Crockford base32 characters holding a 48-bit millisecond timestamp and
 * 80 random bits ("prod_01M7ZRQ8CT7XRA5DVFHQHPKC8A"). Ids sort by creation
 * time (keyset pagination, clustered primary keys); within one process
 * they are strictly increasing even inside one millisecond. Thread-safe.
 */
#ifndef MOAT_ID_H
#define MOAT_ID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOAT_ID_CHARS 26 /* after the prefix */

/* Write prefix + id into out (cap >= strlen(prefix) + 27); truncates
 * rather than overflow when cap is short (a programming error). */
void moat_id_new(const char *prefix, char *out, size_t cap);
/*
 * The same id every time for the same time_ms and seed: the time part from
 * time_ms, the other 80 bits a hash of seed. For ids that must come out
 * equal when the same input is applied again (payments derives the id of a
 * saga's payment from the AuthorizePayment event, so that a payments
 * restored from a backup, re-applying orders' commands, asks the provider
 * with the same idempotency keys: docs/recovery.md).
 */
void moat_id_derive(const char *prefix, int64_t time_ms, const void *seed,
                    size_t seed_len, char *out, size_t cap);
/* A reference to something another moat service named, checked loosely:
 * 1 to max characters of [A-Za-z0-9_-] (every moat id, and the ids tests
 * make up). False for NULL. */
bool moat_ref_valid(const char *s, size_t max);
/* True when s is prefix followed by a well-formed 26-character id. */
bool moat_id_valid(const char *s, const char *prefix);

#endif /* MOAT_ID_H */
