/**
 * The cluster's control channel: revocations and kicks are published to every node over
 * Redis pub/sub, and the node holding the connection acts.
 */
import { parseRevocation, redisKeys, type Logger, type Redis } from '@fleetwire/common';
import type { Connections } from './connections.js';
import type { ConnectionRegistry } from './registry.js';

interface ControlMessage { op: 'kick'; client_id: string; reason?: string; actor: string }

export class ControlChannel {
  constructor(
    private readonly redis: Redis,
    private readonly connections: Connections,
    private readonly registry: ConnectionRegistry,
    private readonly nodeId: string,
    private readonly log: Logger,
  ) {}

  /** Listens on `sub`, a connection in subscriber mode from now on. */
  async listen(sub: Redis): Promise<void> {
    await sub.subscribe(redisKeys.revocations, redisKeys.brokerControl);
    sub.on('message', (channel: string, message: string) => {
      if (channel === redisKeys.revocations) {
        const ev = parseRevocation(message);
        if (ev) this.connections.revoke(ev);
        return;
      }
      try {
        const msg = JSON.parse(message) as ControlMessage;
        if (msg.op === 'kick') this.connections.kickLocal(msg.client_id, msg.reason, msg.actor);
      } catch (err) {
        this.log.warn({ err }, 'ignoring an unreadable control message');
      }
    });
  }

  /** Kicks a connection wherever it is; resolves to the node holding it, or null when it is not connected. */
  async kick(clientId: string, reason: string | undefined, actor: string): Promise<string | null> {
    if (this.connections.kickLocal(clientId, reason, actor)) return this.nodeId;
    const rec = await this.registry.get(clientId);
    if (!rec) return null;
    const msg: ControlMessage = { op: 'kick', client_id: clientId, actor, ...(reason ? { reason } : {}) };
    await this.redis.publish(redisKeys.brokerControl, JSON.stringify(msg));
    return rec.node;
  }
}
