/**
 * The cluster-wide connection registry in Redis, and device presence.
 * Each entry carries the connection's unique conn_id: removal is a
 * compare-and-delete, so a late disconnect of a replaced connection never
 * removes the newer entry nor marks a reconnected device offline.
 */
import { redisKeys, type Redis } from '@fleetwire/common';
import type { ConnState } from './conn-state.js';

const REGISTER = `
-- KEYS: conn hash, index zset, per-kind index zset, node set, nodes set, presence seq
-- ARGV: client id, connected at, node id, is device, then the hash's field/value pairs
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[3])
if ARGV[4] == '1' then return redis.call('INCR', KEYS[6]) end
return -1`;

const UNREGISTER = `
-- KEYS: conn hash, index zset, node set, presence seq, per-kind index zset; ARGV: client id, conn id, is device
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'conn_id') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if ARGV[3] == '1' then return redis.call('INCR', KEYS[4]) end
return -1`;

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

type RegistryRedis = Redis & {
  fwRegister(...args: string[]): Promise<number>;
  fwUnregister(conn: string, index: string, nodeSet: string, seq: string, kindIndex: string, clientId: string, connId: string, isDevice: string): Promise<number>;
};

export class ConnectionRegistry {
  private readonly redis: RegistryRedis;

  constructor(redis: Redis, readonly nodeId: string) {
    redis.defineCommand('fwRegister', { numberOfKeys: 6, lua: REGISTER });
    redis.defineCommand('fwUnregister', { numberOfKeys: 5, lua: UNREGISTER });
    this.redis = redis as RegistryRedis;
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
    const seq = await this.redis.fwRegister(
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
    const seq = await this.redis.fwUnregister(
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
        const seq = await this.redis.fwUnregister(
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
