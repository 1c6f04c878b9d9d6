/**
 * A command's "delivered" state: when a device acknowledges (PUBACK) the QoS 1 PUBLISH of
 * one of its commands (`devices/{id}/cmd`), the command the device service recorded under
 * that cid gets its delivered_at and moves from sent to delivered. Aedes emits `ack` on the
 * node that holds the device, with the stored packet, so this works on every node of a
 * cluster.
 *
 * Cost: one string check for every other acknowledged packet; a JSON parse and one
 * Redis script only for commands.
 */
import type { Aedes, Client } from 'aedes';
import { redisKeys, type Logger, type Redis } from '@fleetwire/common';
import { brokerScripts } from './redis-scripts.js';

interface DeliveryScripts {
  /** lua/command-delivered.lua: 1 when the command moved sent → delivered (0: no such command, or it was past sent). */
  commandDelivered(command: string, now: number, batchPrefix: string): Promise<number>;
}

interface AckedPacket { cmd?: string; topic?: string; payload?: Buffer | Uint8Array | string }

export function watchCommandDeliveries(aedes: Aedes, redis: Redis, log: Logger): void {
  const scripts = brokerScripts<DeliveryScripts>(redis);
  const batchPrefix = redisKeys.commandBatch('');
  aedes.on('ack', (packet: AckedPacket | undefined, client: Client | null) => {
    const topic = packet?.topic;
    if (packet?.cmd !== 'publish' || !topic || !topic.endsWith('/cmd') || !topic.startsWith('devices/')) return;
    // Only the device's own acknowledgement: a service that watches devices/+/cmd also sends PUBACKs.
    if (!client || client.id !== topic.slice('devices/'.length, -'/cmd'.length)) return;
    const cid = cidOf(packet.payload);
    if (!cid) return; // not one of ours (a command published straight to the topic may be anything)
    scripts.commandDelivered(redisKeys.command(cid), Date.now(), batchPrefix)
      .catch((err: unknown) => log.warn({ err, cid, device_id: client.id }, 'marking a command delivered failed'));
  });
}

function cidOf(payload: AckedPacket['payload']): string | null {
  if (payload === undefined) return null;
  try {
    const text = typeof payload === 'string' ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8');
    const cid = (JSON.parse(text) as { cid?: unknown }).cid;
    return typeof cid === 'string' && cid.length > 0 && cid.length <= 128 ? cid : null;
  } catch {
    return null;
  }
}
