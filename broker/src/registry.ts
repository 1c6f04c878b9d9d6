/**
 * The cluster-wide connection registry in Redis, and device presence.
 * Each entry carries the connection's unique conn_id: removal is a
 * compare-and-delete, so a late disconnect of a replaced connection never
 * removes the newer entry nor marks a reconnected device offline.
 */
import { redisKeys, type Redis } from '@fleetwire/common';
import type { ConnState } from './conn-state.js';
import { brokerScripts } from './redis-scripts.js';

export interface ConnectionRecord {
  client_id: string;
  kind: string;
  subject: string;
  device_id?: string;
  user_id?: string;
  role?: string;
  node: string;
  ip: string;
  transport: string;
  connected_at: string;
  last_activity: string;
}

export interface Presence {
  online: boolean;
  seq: number;
  node: string;
  at: number;
  reason?: string;
}

interface RegistryScripts {
  /** lua/register-connection.lua */
  registerConnection(...args: string[]): Promise<number>;
  /** lua/unregister-connection.lua */
  unregisterConnection(conn: string, index: string, nodeSet: string, seq: string, kindIndex: string, clientId: string, connId: string, isDevice: string): Promise<number>;
}

export class ConnectionRegistry {
  private readonly scripts: RegistryScripts;

  constructor(private readonly redis: Redis, readonly nodeId: string) {
    this.scripts = brokerScripts<RegistryScripts>(redis);
  }

  /** Writes the entry; for a device returns the presence sequence number of its "online" event. */
  async register(clientId: string, state: ConnState): Promise<number | null> {
    const claims = state.claims!;
    const now = Date.now();
    const record: ConnectionRecord & { conn_id: string } = {
      client_id: clientId,
      kind: claims.typ,
      subject: claims.sub,
      ...(claims.typ === 'device' ? { device_id: claims.sub } : {}),
      ...(claims.typ === 'user' ? { user_id: claims.sub, role: claims.role ?? '' } : {}),
      node: this.nodeId,
      ip: state.ip,
      transport: state.transport,
      connected_at: String(state.connectedAt),
      last_activity: String(now),
      conn_id: state.connId,
    };
    const isDevice = claims.typ === 'device';
    const seq = await this.scripts.registerConnection(
      redisKeys.connection(clientId), redisKeys.connectionIndex, redisKeys.connectionIndexByKind(claims.typ),
      redisKeys.nodeConnections(this.nodeId), redisKeys.nodes, redisKeys.presenceSeq(claims.sub),
      clientId, String(state.connectedAt), this.nodeId, isDevice ? '1' : '0',
      ...Object.entries(record).flat(),
    );
    return isDevice ? seq : null;
  }

  /** Removes the entry if it is still this connection's; for a device returns the offline presence seq, else null. */
  async unregister(clientId: string, state: ConnState): Promise<number | null> {
    const isDevice = state.claims?.typ === 'device';
    const seq = await this.scripts.unregisterConnection(
      redisKeys.connection(clientId), redisKeys.connectionIndex, redisKeys.nodeConnections(this.nodeId),
      redisKeys.presenceSeq(state.claims?.sub ?? clientId), redisKeys.connectionIndexByKind(state.claims?.typ ?? 'none'),
      clientId, state.connId, isDevice ? '1' : '0',
    );
    return seq > 0 ? seq : null;
  }

  /** Writes last-activity times that changed since the previous flush, in one pipeline. */
  async flushActivity(states: Iterable<[string, ConnState]>): Promise<number> {
    const pipe = this.redis.pipeline();
    let n = 0;
    for (const [clientId, s] of states) {
      if (s.registered && s.lastActivity > s.flushedActivity) {
        pipe.hset(redisKeys.connection(clientId), 'last_activity', String(s.lastActivity));
        s.flushedActivity = s.lastActivity;
        n++;
      }
    }
    if (n > 0) await pipe.exec();
    return n;
  }

  async get(clientId: string): Promise<ConnectionRecord | null> {
    const h = await this.redis.hgetall(redisKeys.connection(clientId));
    if (!h.client_id) return null;
    delete h.conn_id;
    return h as unknown as ConnectionRecord;
  }

  async list(opts: { offset: number; limit: number; kind?: string }): Promise<{ total: number; items: ConnectionRecord[] }> {
    const index = opts.kind ? redisKeys.connectionIndexByKind(opts.kind) : redisKeys.connectionIndex;
    const total = await this.redis.zcard(index);
    const ids = await this.redis.zrevrange(index, opts.offset, opts.offset + opts.limit - 1);
    const pipe = this.redis.pipeline();
    for (const id of ids) pipe.hgetall(redisKeys.connection(id));
    const rows = (await pipe.exec()) ?? [];
    const items: ConnectionRecord[] = [];
    for (const [, h] of rows) {
      const rec = h as Record<string, string>;
      if (!rec.client_id) continue;
      delete rec.conn_id;
      items.push(rec as unknown as ConnectionRecord);
    }
    return { total, items };
  }

  async heartbeatNode(ttlS: number): Promise<void> {
    await this.redis.set(redisKeys.nodeAlive(this.nodeId), String(Date.now()), 'EX', ttlS);
  }

  /**
   * Removes entries left by nodes that died without cleaning up. Returns the
   * device ids that went offline with their presence seq, for the caller to publish.
   */
  async sweepDeadNodes(): Promise<Array<{ deviceId: string; seq: number; node: string }>> {
    const offline: Array<{ deviceId: string; seq: number; node: string }> = [];
    for (const node of await this.redis.smembers(redisKeys.nodes)) {
      if (node === this.nodeId || (await this.redis.exists(redisKeys.nodeAlive(node)))) continue;
      for (const clientId of await this.redis.smembers(redisKeys.nodeConnections(node))) {
        const h = await this.redis.hgetall(redisKeys.connection(clientId));
        if (h.node !== node || !h.conn_id) continue;
        const seq = await this.scripts.unregisterConnection(
          redisKeys.connection(clientId), redisKeys.connectionIndex, redisKeys.nodeConnections(node),
          redisKeys.presenceSeq(h.subject ?? clientId), redisKeys.connectionIndexByKind(h.kind ?? 'none'),
          clientId, h.conn_id, h.kind === 'device' ? '1' : '0',
        );
        if (seq > 0 && h.device_id) offline.push({ deviceId: h.device_id, seq, node });
      }
      await this.redis.multi().del(redisKeys.nodeConnections(node)).srem(redisKeys.nodes, node).exec();
    }
    return offline;
  }

  /** On a clean shutdown: forget this node. */
  async forgetNode(): Promise<void> {
    await this.redis.multi().del(redisKeys.nodeAlive(this.nodeId)).srem(redisKeys.nodes, this.nodeId).exec();
  }
}
