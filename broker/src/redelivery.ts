/**
 * [MQTT-3.3.1-1] "The DUP flag MUST be set to 1 by the Client or Server when
 * it attempts to re-deliver a PUBLISH Packet." Aedes resends a persistent
 * session's stored messages unchanged, DUP=0 (moscajs/aedes#601), and strict
 * clients drop the connection on a QoS 2 redelivery without it.
 *
 * Aedes gives a stored message its packet id (persistence.outgoingUpdate) just
 * before writing it, so a stored QoS 1/2 PUBLISH that already has one was sent
 * before: it goes out again with DUP=1. Messages queued while the client was
 * away have no id yet and go out with DUP=0. This works through the public
 * persistence interface, for the memory and the Redis persistence alike.
 * (aedes-persistence-redis keeps one stored copy per message for every
 * subscriber, so a message another subscriber already received can come with
 * DUP=1 on its first delivery; the spec allows that: DUP=1 says "might be a
 * re-delivery" [MQTT-3.3.1.1].)
 */
import type { Aedes } from 'aedes';

interface StoredPacket { cmd: string; qos?: number; messageId?: number; dup?: boolean }
type OutgoingStream = (client: unknown) => AsyncIterable<StoredPacket>;

export function markRedeliveries(aedes: Aedes): void {
  const persistence = aedes.persistence as { outgoingStream: OutgoingStream };
  const outgoingStream = persistence.outgoingStream.bind(persistence);
  persistence.outgoingStream = (client) => withDup(outgoingStream(client));
}

async function* withDup(stored: AsyncIterable<StoredPacket>): AsyncIterable<StoredPacket> {
  for await (const packet of stored) {
    yield packet.cmd === 'publish' && (packet.qos ?? 0) > 0 && packet.messageId ? { ...packet, dup: true } : packet;
  }
}
