/*
 * moat/audit.h - a service's append-only, hash-chained audit log.
 *
 * Files, both mode 0600 in the service's data directory:
 *
 *   audit.log   one JSON object per line, one line per record:
 *     {"action":"user.login","actor":"usr_..","detail":{..},"hash":"..",
 *      "outcome":"ok","prev":"..","seq":N,"subject":"usr_..",
 *      "trace_id":"..","ts":"2026-11-21T19:03:30.123Z"}
 *   audit.head  "<seq> <hash>\n": seq as 20 zero-padded decimal digits, a
 *               space, the hash of record seq, a newline (86 bytes). Empty
 *               (or absent, for an empty log) means no record yet.
 *
 * Fields: seq counts from 1 with no gaps; ts is RFC 3339 UTC with
 * milliseconds; action ("user.login"), actor, subject and outcome ("ok",
 * "denied", ...) are what the caller passed (actor and subject "" when
 * NULL); trace_id is the request's W3C trace id, "" outside a request;
 * detail is present only when the caller gave one; prev is the hash of
 * record seq-1, 64 zeros for record 1; hash is defined below.
 *
 * Records carry no secrets and no plaintext personal data: actors and
 * subjects are ids.
 *
 * The hash. The canonical form of a JSON value is its compact
 * serialisation: no whitespace; object members sorted by key, bytewise
 * (UTF-8 code point order), at every depth; strings escape '"' and '\' with
 * a backslash, \b \t \n \f \r by those short forms, the other control
 * characters U+0000..U+001F and U+007F as \u00xx with lowercase hex, and
 * nothing else (not '/', not non-ASCII, which stays UTF-8); integers in
 * plain decimal. This is exactly what `jq -cS` prints (checked with jq
 * 1.6 by tests/unit/test_audit.c). Records hold no real numbers, only
 * integers within +-(2^53 - 1), which every JSON tool reads exactly
 * (I-JSON, RFC 7493), only valid UTF-8 and no NUL byte in a key; an append
 * whose detail breaks these rules is refused. Then
 *
 *   hash = lowercase hex SHA-256 of the canonical form of the record
 *          without its "hash" member (so over "prev" too),
 *
 * and the line on disk is the canonical form of the whole record plus
 * '\n'. Editing a record breaks its hash; deleting or reordering records
 * breaks the seq order and the prev links; cutting records off the end
 * disagrees with audit.head. A third party re-verifies with standard tools;
 * each command prints nothing when all is well:
 *
 *   # every record's hash
 *   jq -cS 'del(.hash)' audit.log | while IFS= read -r r; do
 *       printf '%s' "$r" | sha256sum | cut -c1-64; done |
 *       diff - <(jq -r .hash audit.log)
 *   # the chain: seq 1, 2, 3... and each prev = the hash before it
 *   jq -rs '. as $r | range(length) | select($r[.].seq != . + 1 or
 *       $r[.].prev != (if . == 0 then "0" * 64 else $r[. - 1].hash end)) |
 *       "record \(. + 1): bad seq or prev"' audit.log
 *   # the head (after a crash it may name the record before the last)
 *   diff <(jq -rs 'last | "\(.seq) \(.hash)"' audit.log) \
 *        <(awk '{ print $1 + 0, $2 }' audit.head)
 *
 * A hash chain has no secret: whoever can write both files can rewrite
 * them consistently. It proves that the log was not edited, shortened or
 * reordered behind the back of whoever holds a copy of audit.head (or of
 * any later record), which is what an operator compares against backups
 * and what the process's own confinement (Landlock, file mode) protects.
 *
 * Crashes. An append is one write(2) of the whole line (O_APPEND), then one
 * pwrite(2) of the fixed-width head at offset 0, with no rename. So a
 * killed process leaves no trace of the record, or the record with the
 * head one record behind; both open and verify accept a head exactly one
 * record behind the log, the last record's prev being the head's hash. A
 * head ahead of the log, or further behind, is tampering. A write that
 * fails half way (disk full) is cut off again with ftruncate(2).
 *
 * Records are not fdatasync'ed. The log is tamper evidence, not the
 * record of what happened: that is the service's database, which its
 * engine syncs; a sync per audit line would add a disk flush to every
 * audited request. The price: after a power loss (or, in principle, a
 * SIGKILL landing inside a write that spans two pages) the files may hold
 * a torn last line or a head ahead of the log. The service then refuses
 * to start until an operator has looked (moat audit-log verify) and, if it
 * is only that, cut the torn line off with truncate(1).
 *
 * Threads: one struct moat_audit per log, used from one thread (a
 * service's loop thread). An exclusive flock() on audit.log keeps a second
 * process (or a second handle) from extending the same chain.
 */
#ifndef MOAT_AUDIT_H
#define MOAT_AUDIT_H

#include <jansson.h>
#include <stdint.h>

#define MOAT_AUDIT_FILE      "audit.log"  /* in the service's data dir */
#define MOAT_AUDIT_HEAD_FILE "audit.head" /* its head, next to it */
#define MOAT_AUDIT_LINE_MAX  65536        /* bytes of a record line, '\n' too */
#define MOAT_AUDIT_DEPTH_MAX 32           /* nesting of detail */
#define MOAT_AUDIT_HASH_HEX  64

struct moat_audit;
struct moat_req;

/*
 * The head file of the log at path: a final ".log" replaced by ".head"
 * (audit.log -> audit.head), else path + ".head". Caller frees.
 */
char *moat_audit_head_path(const char *path);

/*
 * Open the log at path (creating it and its head file with mode 0600)
 * and resume its chain from the last record. Costs O(1), not O(log size):
 * only the last record is checked, against its own hash and audit.head;
 * moat_audit_verify() checks the whole chain.
 *
 * Returns MOAT_OK and *out (caller closes with moat_audit_close()), or
 *   MOAT_ECONFLICT  the last record does not verify, is torn or disagrees
 *                   with audit.head: extending a tampered chain would
 *                   launder it (the reason is logged with moat_log)
 *   MOAT_EBUSY      another handle or process has the log open
 *   MOAT_EINVAL     the log or its head is a symlink or not a regular
 *                   file
 *   MOAT_EIO        any other system error
 */
int moat_audit_open(struct moat_audit **out, const char *path);
/* Close the files and free a; NULL is fine. */
void moat_audit_close(struct moat_audit *a);

/*
 * Append one record. action and outcome are non-empty; actor and subject
 * may be NULL (stored as ""). detail is borrowed and may be NULL; when
 * given it is an object within the rules above (no reals, integers within
 * +-(2^53 - 1), valid UTF-8), nested at most MOAT_AUDIT_DEPTH_MAX deep
 * (detail itself is one level). The trace id
 * comes from the calling thread's log context (moat_log_trace()).
 *
 * Returns MOAT_OK when the record is in the log, or
 *   MOAT_EINVAL  bad arguments or detail (nothing written)
 *   MOAT_ETOOBIG the line would exceed MOAT_AUDIT_LINE_MAX (nothing written)
 *   MOAT_EIO     the write failed: nothing was added (a partial line is cut
 *                off again), or the record was added but audit.head could
 *                not be updated. In the second case, or when a partial line
 *                could not be removed, the handle refuses every later
 *                append with MOAT_EIO, so the files stay in a state that
 *                verifies; reopen to continue.
 * Not durable on return (see "Crashes" above).
 */
int moat_audit_append(struct moat_audit *a, const char *action,
                      const char *actor, const char *subject,
                      const char *outcome, json_t *detail);

/*
 * Append one audit record for request r (NULL: the service itself acted,
 * actor "system"), the actor being the end user's id, else the calling
 * service's name. A failure is logged, not returned: the database is the
 * record, the log its tamper evidence (above). a NULL is a no-op.
 */
void moat_audit_req(struct moat_audit *a, struct moat_req *r,
                    const char *action, const char *subject,
                    const char *outcome, json_t *detail);

struct moat_audit_report {
    uint64_t records;  /* records that verified, before any problem */
    uint64_t bad_line; /* 1-based line of the first problem; 0 if none.
                        * For a problem with audit.head, the line after the
                        * last record (where cut-off records would be). */
    char problem[256]; /* what is wrong there, e.g. "record 7: hash
                        * mismatch (edited)"; "" when intact */
};

/*
 * Verify the whole log at path and its head file, streaming it line by
 * line: each line at most MOAT_AUDIT_LINE_MAX bytes, valid
 * JSON with exactly the fields above, hash recomputing, seq = previous + 1
 * starting at 1, prev = previous hash, and audit.head equal to the last
 * record (or to the one before it). Reads only; the service need not run.
 *
 * Returns MOAT_OK when intact (r->records counts them), MOAT_ECONFLICT
 * with r->bad_line and r->problem at the first problem, MOAT_ENOTFOUND
 * when path does not exist (and no non-empty head file says it should),
 * MOAT_EIO when a file cannot be read (with r->problem saying why). A missing
 * audit.head is a problem unless the log is empty.
 */
int moat_audit_verify(const char *path, struct moat_audit_report *r);

#endif /* MOAT_AUDIT_H */
