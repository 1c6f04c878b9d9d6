/** authorizeForward: counts each delivery by topic class; forwards every packet unchanged. */
import type { Aedes, PublishPacket } from 'aedes';
import { parseDeviceTopic } from '@fleetwire/common';
import type { BrokerMetrics } from '../metrics.js';

export interface ForwardDeps {
  metrics: BrokerMetrics;
}

export function forwardHook(d: ForwardDeps): Aedes['authorizeForward'] {
  const { metrics } = d;
  return (_client, packet) => {
    const p = packet as PublishPacket & { fwClass?: string };
    // The same packet object is forwarded to every subscriber: classify it once.
    p.fwClass ??= parseDeviceTopic(p.topic)?.entry.class ?? 'other';
    metrics.out(p.fwClass, p.payload.length);
    return packet;
  };
}
