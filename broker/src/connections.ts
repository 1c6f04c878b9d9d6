/**
 * Local bookkeeping for live connections: indexes for kick and revocation,
 * per-IP counts, the token-expiry wheel, graceful disconnects with a sys
 * notice and a WebSocket close code, and the registry/presence side effects
 * of connect and disconnect.
 */
import type { Aedes, Client } from 'aedes';
import {
  closeCodes, topicFor, type CloseReason, type Logger, type RevocationEvent,
} from '@fleetwire/common';
import type { ConnState, DisconnectReason } from './conn-state.js';
import { setCloseIntent, stateOf, kindOf } from './conn-state.js';
import type { ConnectionRegistry, Presence } from './registry.js';
import type { BrokerMetrics } from './metrics.js';

export interface ConnectionsOptions {
  tokenNoticeS: number;
  maxConnectionsPerIp: number;
}

export class Connections {
  /** Every open socket, authenticated or not. */
  readonly live = new Set<ConnState>();
  /** Authenticated clients on this node, by MQTT client id (set at authenticate, before CONNACK). */
  readonly byClientId = new Map<string, ConnState>();
  /**
   * Users and services by `${typ}:${sub}` → a connection, or a Set when there are several.
   * Devices need no entry: their client id is their sub, so byClientId finds them.
   */
  private readonly bySubject = new Map<string, ConnState | Set<ConnState>>();
  private readonly perIp = new Map<string, number>();
  private readonly expiry = new Map<number, Set<ConnState>>();
  private lastTickS = Math.floor(Date.now() / 1000);

  constructor(
    private readonly aedes: Aedes,
    private readonly registry: ConnectionRegistry,
    private readonly metrics: BrokerMetrics,
    private readonly log: Logger,
    private readonly opts: ConnectionsOptions,
  ) {}

  /** False when the IP already holds the maximum number of sockets on this node. */
  admit(ip: string): boolean {
    return (this.perIp.get(ip) ?? 0) < this.opts.maxConnectionsPerIp;
  }

  opened(state: ConnState): void {
    this.live.add(state);
    this.perIp.set(state.ip, (this.perIp.get(state.ip) ?? 0) + 1);
  }

  /** The socket is gone (always called, whether or not Aedes registered the client): drop every local index entry. */
  closed(state: ConnState): void {
    if (!this.live.delete(state)) return;
    const n = (this.perIp.get(state.ip) ?? 1) - 1;
    if (n <= 0) this.perIp.delete(state.ip);
    else this.perIp.set(state.ip, n);
    this.unschedule(state);
    this.unindex(state);
  }

  private unindex(state: ConnState): void {
    const claims = state.claims;
    if (!claims || !state.client) return;
    if (this.byClientId.get(state.client.id) === state) this.byClientId.delete(state.client.id);
    if (claims.typ === 'device') return;
    const key = `${claims.typ}:${claims.sub}`;
    const held = this.bySubject.get(key);
    if (held === state) this.bySubject.delete(key);
    else if (held instanceof Set) {
      held.delete(state);
      if (held.size === 1) this.bySubject.set(key, held.values().next().value!);
    }
  }

  countsByKind(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const s of this.live) {
      const k = kindOf(s);
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    return counts;
  }

  /**
   * After a successful authenticate: index the connection at once (a revocation
   * or kick arriving before CONNACK must find it) and schedule its token's end.
   */
  authenticated(client: Client, state: ConnState): void {
    if (!this.live.has(state)) return; // the socket closed while its token was being checked
    const claims = state.claims!;
    this.byClientId.set(client.id, state);
    if (claims.typ !== 'device') {
      const key = `${claims.typ}:${claims.sub}`;
      const held = this.bySubject.get(key);
      if (held === undefined) this.bySubject.set(key, state);
      else if (held instanceof Set) held.add(state);
      else if (held !== state) this.bySubject.set(key, new Set([held, state]));
    }
    const nowS = Date.now() / 1000;
    if (claims.exp <= nowS) return; // accepted within the clock tolerance: ready() closes it right after CONNACK
    const notice = claims.exp - this.opts.tokenNoticeS;
    this.schedule(state, this.opts.tokenNoticeS > 0 && notice > nowS ? notice : claims.exp);
  }

  async ready(client: Client): Promise<void> {
    const state = stateOf(client);
    if (!state?.claims) return;
    this.metrics.connects.inc({ kind: state.claims.typ });
    // Logged before the registry write, so it precedes every later line about this connection.
    this.log.info({ client_id: client.id, kind: state.claims.typ, ip: state.ip, transport: state.transport }, 'client connected');
    if (state.claims.exp <= Date.now() / 1000) return this.disconnect(state, 'token-expired');
    try {
      const seq = await this.registry.register(client.id, state);
      state.registered = true;
      if (seq !== null) this.publishPresence(state.claims.sub, { online: true, seq, node: this.registry.nodeId, at: Date.now() });
    } catch (err) {
      this.log.error({ err, client_id: client.id }, 'connection registry write failed');
    }
  }

  async gone(client: Client): Promise<void> {
    const state = stateOf(client);
    if (!state?.claims) return;
    const reason: DisconnectReason = state.closeReason ?? ((client as unknown as { _disconnected: boolean })._disconnected ? 'client-disconnect' : 'socket-closed');
    this.metrics.disconnects.inc({ reason });
    this.unschedule(state);
    this.unindex(state);
    this.log.info({ client_id: client.id, kind: state.claims.typ, reason }, 'client disconnected');
    try {
      const seq = await this.registry.unregister(client.id, state);
      if (seq !== null) this.publishPresence(state.claims.sub, { online: false, seq, node: this.registry.nodeId, at: Date.now(), reason });
    } catch (err) {
      this.log.error({ err, client_id: client.id }, 'connection registry cleanup failed');
    }
  }

  publishPresence(deviceId: string, presence: Presence): void {
    this.aedes.publish(
      { cmd: 'publish', topic: topicFor('presence', deviceId), payload: Buffer.from(JSON.stringify(presence)), qos: 1, retain: true, dup: false },
      (err) => { if (err) this.log.error({ err, device_id: deviceId }, 'presence publish failed'); },
    );
  }

  /**
   * Ends a connection on purpose: a sys notice to a device first, then a
   * WebSocket close frame with the reason's application code.
   */
  disconnect(state: ConnState, reason: CloseReason & DisconnectReason, detail?: string): void {
    if (state.closing) return; // one notice, one close frame, one metric, however often asked
    state.closing = true;
    state.closeReason = reason;
    this.metrics.kicks.inc({ reason });
    // Set now: whatever ends the socket from here on (even a parser error) sends this close frame.
    setCloseIntent(state, reason, detail);
    const { code } = closeCodes[reason]!;
    const text = detail ?? closeCodes[reason]!.reason;
    const finish = (): void => {
      if (state.client) state.client.close();
      else state.stream.destroy();
    };
    if (!this.sendSys(state, { type: 'disconnect', reason: text, close_code: code }, finish)) finish();
  }

  /** Kicks a client held by this node; false when it is not here. */
  kickLocal(clientId: string, reasonText: string | undefined, actor: string): boolean {
    const state = this.byClientId.get(clientId);
    if (!state) return false;
    this.log.info({ client_id: clientId, actor, reason: reasonText ?? 'kicked' }, 'kicking connection');
    this.disconnect(state, 'kicked', reasonText);
    return true;
  }

  revoke(ev: RevocationEvent): number {
    let targets: ConnState[];
    if (ev.kind === 'token' || ev.kind === 'session') {
      // Token and session revocations are rare: a scan beats an index kept for every connection.
      const matches = ev.kind === 'token' ? (s: ConnState) => s.claims?.jti === ev.id : (s: ConnState) => s.claims?.sid === ev.id;
      targets = [...this.live].filter(matches);
    } else if (ev.kind === 'device') {
      const s = this.byClientId.get(ev.id);
      targets = s?.claims?.typ === 'device' ? [s] : [];
    } else {
      const held = this.bySubject.get(`${ev.kind}:${ev.id}`);
      targets = held === undefined ? [] : held instanceof Set ? [...held] : [held];
    }
    for (const s of targets) this.disconnect(s, 'revoked');
    if (targets.length) this.log.info({ kind: ev.kind, id: ev.id, count: targets.length }, 'revocation applied');
    return targets.length;
  }

  private schedule(state: ConnState, atS: number): void {
    this.unschedule(state);
    // A time the wheel has already passed goes into the next bucket it visits, never into one it will not.
    const bucket = Math.max(Math.ceil(atS), this.lastTickS);
    let set = this.expiry.get(bucket);
    if (!set) this.expiry.set(bucket, (set = new Set()));
    set.add(state);
    state.expiryAt = bucket;
  }

  private unschedule(state: ConnState): void {
    if (state.expiryAt === null) return;
    const set = this.expiry.get(state.expiryAt);
    set?.delete(state);
    if (set?.size === 0) this.expiry.delete(state.expiryAt);
    state.expiryAt = null;
  }

  /** Runs the expiry wheel up to now: sends token-expiring notices, closes expired connections. */
  tick(nowMs = Date.now()): void {
    const nowS = Math.floor(nowMs / 1000);
    for (let s = this.lastTickS; s <= nowS; s++) {
      const due = this.expiry.get(s);
      if (!due) continue;
      this.expiry.delete(s);
      for (const state of due) {
        state.expiryAt = null;
        const claims = state.claims;
        if (!claims || !this.live.has(state)) continue;
        if (s < claims.exp && !state.expiryNoticeSent) {
          state.expiryNoticeSent = true;
          this.notifyExpiring(state);
          this.schedule(state, claims.exp);
        } else {
          this.disconnect(state, 'token-expired');
        }
      }
    }
    this.lastTickS = nowS + 1;
  }

  private notifyExpiring(state: ConnState): void {
    const notice = { type: 'token-expiring', reason: 'token expires soon: reconnect with a fresh token', expires_at: state.claims!.exp };
    this.sendSys(state, notice, () => {});
  }

  /**
   * A sys notice to a connected device, at QoS 0 and to this connection only
   * (a queued copy would be stale on the next session). False when there is no
   * device to tell; `done` then is not called.
   */
  private sendSys(state: ConnState, notice: Record<string, unknown>, done: () => void): boolean {
    const client = state.client;
    if (!client || state.claims?.typ !== 'device' || !client.connected) return false;
    client.publish({ cmd: 'publish', topic: topicFor('sys', state.claims.sub), payload: Buffer.from(JSON.stringify(notice)), qos: 0, retain: false, dup: false }, done);
    return true;
  }

  /** Closes every connection with a server-shutdown notice, spread over spreadMs; resolves when all are gone or timeoutMs passed. */
  async drainAll(spreadMs: number, timeoutMs: number): Promise<number> {
    const states = [...this.live];
    for (const s of states) {
      setTimeout(() => this.disconnect(s, 'server-shutdown'), Math.random() * spreadMs).unref();
    }
    const deadline = Date.now() + timeoutMs;
    while (this.live.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    return this.live.size;
  }
}
