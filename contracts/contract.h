/*
 * contracts/contract.h - what every event contract module shares.
 *
 * An event contract is what a producer promises its consumers about the
 * events on its feed (moat/events.h): the type names, the current data
 * schema version of each type, and the upcasters that turn any older
 * version's data into the current shape. It lives in ONE place per
 * producer, contracts/<producer>.h and .c, built into the static library
 * moat_contracts. The producer appends its events with these names and
 * versions; each consumer subscribes with the same names and calls the
 * same upcaster before applying the current shape only. No consumer keeps
 * a copy of another service's schema history.
 *
 * Ownership: contracts/<producer>.* belongs to the producing service's
 * owners; a consumer's owners review changes to it. A contract module is
 * not storage code: it holds names, numbers and pure functions on event
 * data JSON, never a table, a query, a connection or a file. Linking it
 * from another service therefore does not break Database per Service: a
 * consumer still reads nothing but the producer's feed.
 *
 * Upcasting (contract_upcast): the data of version v is stepped to v + 1,
 * v + 2, ... up to the type's current version, each step one branch of the
 * type's step function. A version below 1 or above the current one is
 * MOAT_EUNSUPPORTED: the consumer is older than its producer (or the event
 * is broken), so the event is retried, parked as a dead letter, and
 * redriven once the consumer is rebuilt with the newer contract.
 *
 * Adding a new schema version of a type: bump its current version in the
 * producer's header, add the step from the previous version to the new
 * one in the producer's .c, extend tests/unit/test_contracts.c, then
 * update the consumers' apply code to the new shape (they upgrade before
 * the producer starts to emit it; see docs/events.md). Adding a new type:
 * one name, one version, one table row.
 *
 * Memory: upcasters borrow data and return a new reference in *out that
 * the caller releases with json_decref. No state, no allocation kept: safe
 * on any thread.
 */
#ifndef MOAT_CONTRACTS_CONTRACT_H
#define MOAT_CONTRACTS_CONTRACT_H

#include <jansson.h>
#include <stddef.h>

/*
 * One step of a type's schema history: data of schema version from_version
 * (borrowed) -> a new reference to the data of version from_version + 1,
 * or NULL when from_version is not one the type ever had.
 */
typedef json_t *(*contract_step_fn)(int from_version, json_t *data);

/* One event type of a producer's contract. */
struct contract_event {
    const char *type;      /* e.g. "ProductCreated" */
    int schema;            /* current data schema version, >= 1 */
    contract_step_fn step; /* NULL while the type has had one schema */
};

/*
 * The current-shape data of an event of type with data schema version
 * version, by the contract events[0..n). Returns MOAT_OK with a new
 * reference in *out; MOAT_EINVAL when data is not a JSON object;
 * MOAT_EUNSUPPORTED for a version the contract does not know (newer than
 * the current one, or below 1); MOAT_ENOTFOUND when type is not one of
 * events. On failure *out is NULL and *why says what failed (static text).
 */
int contract_upcast(const struct contract_event *events, size_t n,
                    const char *type, int version, json_t *data, json_t **out,
                    const char **why);

/* The current schema version of type in events[0..n), or 0 when it is not
 * one of them. */
int contract_schema(const struct contract_event *events, size_t n,
                    const char *type);

#endif
