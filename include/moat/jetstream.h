/*
 * moat/jetstream.h - NATS JetStream as the event transport (optional; the
 * HTTP feed of moat/events.h stays the default).
 *
 * A service started with MOAT_NATS_URL set (moat up sets it for every
 * service of a deployment with "transport": "jetstream") calls
 * moat_jetstream_enable() once, before its init. From then on, in that
 * process:
 *
 * RELAY. Every outbox (moat_outbox_new / _new_kv) gets a relay that
 * publishes its events, in outbox order, to the stream MOAT_<producer>
 * on subject moat.ev.<producer>.<type>, with header Nats-Msg-Id = the
 * event id (the broker drops a duplicate within its window), Moat-Seq =
 * the outbox sequence and Moat-Head = the outbox's head when the batch was
 * read. The body is the CloudEvent the HTTP feed serves. Each publish
 * waits for the broker's ack before the next (per-aggregate order is the
 * outbox order). What the broker last acknowledged is recorded in the
 * producer's own database (SQLite: table moat_relay, LMDB: key
 * "relay_acked" of "outbox_meta"), so a restarted relay resumes there.
 * The broker is a cache of the outbox: each relay round first checks that
 * the stream exists; when it does not (JetStream's storage was wiped), it
 * creates the stream and republishes the outbox from its oldest retained
 * event. The outbox stays the truth and the HTTP feed stays registered.
 *
 * SOURCE. Every subscription (moat_consumer_subscribe) reads through a
 * durable pull consumer <service>_<producer>_<n> on the producer's stream
 * (explicit acks), wrapping the HTTP feed source it was given. Effects and
 * cursor still commit in one local transaction (lib/consumer.c); a
 * message is acked only once the consumer asks for the events after it
 * (its cursor has committed past it), so a crash redelivers, and the
 * cursor skips what was applied. The durable serves the live loop's long
 * polls (wait_ms > 0) only. Pulls that it cannot serve in order - a
 * verification (wait 0), a replay reading from an older position, a gap
 * (the broker lacks the next event: republish after a wipe still on its
 * way, or the outbox's retention), or a broker that is down or has no
 * stream yet (then for 2 s before asking it again) - are answered by the
 * HTTP feed, the outbox itself: the broker going away costs latency, not
 * events.
 *
 * Threads: libnats calls block, so they run on worker threads (moat/
 * work.h), one for each relay and each source; the loop thread only
 * reads the outbox, writes the acked position and applies events. The
 * connection is made on the first worker call, after the process is
 * confined (Landlock requires a single-threaded process).
 *
 * libnats 3.4.1 (Debian 12) has memory-safety bugs fixed only later; this
 * code keeps off their paths: every fetch asks for exactly one message
 * (a shrinking batch overflows the heap in _fetch; a fixed batch of 100
 * still did under ASan once late messages of a timed-out fetch queued up),
 * no asynchronous callback of any kind is installed (no message handlers,
 * no async publish, no connection event callbacks: nothing can run on a
 * destroyed subscription), subscriptions are destroyed before the
 * connection, and the connection only ever goes to the deployment's own
 * loopback nats-server (its INFO line is what natsSock_ReadLine parses).
 */
#ifndef MOAT_JETSTREAM_H
#define MOAT_JETSTREAM_H

/*
 * Route this process's outboxes and consumers through JetStream at url
 * ("nats://127.0.0.1:4222"; copied). service names the durable consumers.
 * Call before creating outboxes and consumers. MOAT_EINVAL for a URL that
 * is not nats:// or an empty service name.
 */
int moat_jetstream_enable(const char *url, const char *service);
/* After every outbox and consumer is freed: closes the connection and
 * libnats. Safe to call when not enabled. */
void moat_jetstream_disable(void);

#endif /* MOAT_JETSTREAM_H */
