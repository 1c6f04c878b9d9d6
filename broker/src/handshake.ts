/**
 * The WebSocket upgrade on /mqtt: gates first (path, subprotocol, draining,
 * per-IP limits, bans), then ws picks the `mqtt` subprotocol so the token
 * offered beside it is never echoed. Query strings are ignored: a token in a
 * URL would end up in proxy logs.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { BlockList } from 'node:net';
import type { Aedes } from 'aedes';
import { errorCatalogue, jwtContract, type Logger } from '@fleetwire/common';
import { clientIp } from './client-ip.js';
import { newConnState, setCloseIntent, type ConnState } from './conn-state.js';
import type { ConnectGate } from './connect-gate.js';
import type { Connections } from './connections.js';
import type { BrokerMetrics } from './metrics.js';
import { GuardError, MqttIngressGuard, type GuardEvents } from './mqtt-guard.js';
import { PublishLimiter, type PublishLimits } from './publish-limiter.js';
import { WebSocketDuplex, type DuplexHooks } from './ws-stream.js';
import { handleConnection } from './aedes-tuning.js';
import { classifyClientError, closeFrameFor } from './client-errors.js';

export interface HandshakeDeps {
  aedes: Aedes;
  gate: ConnectGate;
  connections: Connections;
  metrics: BrokerMetrics;
  log: Logger;
  proxies: BlockList;
  hasProxies: boolean;
  isDraining: () => boolean;
  /** After a flood disconnect: e.g. keep the client out for a while. */
  onFloodKick: (state: ConnState) => void;
  limits: PublishLimits & { wsMaxPayloadBytes: number; maxPacketBytes: number; abuseDropsBeforeKick: number };
}

export const MQTT_PATH = '/mqtt';

/** A module-level listener holds no closure context, so it cannot keep an upgrade request alive. */
function destroySelf(this: Duplex): void {
  this.destroy();
}

function reject(socket: Duplex, status: number, code: string, extraHeaders: Record<string, string> = {}): void {
  const body = JSON.stringify({ error: { code, message: errorCatalogue[code]?.message ?? code } });
  const reason = { 400: 'Bad Request', 404: 'Not Found', 429: 'Too Many Requests', 503: 'Service Unavailable' }[status] ?? 'Error';
  const headers = Object.entries({ 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)), Connection: 'close', ...extraHeaders })
    .map(([k, v]) => `${k}: ${v}\r\n`).join('');
  socket.end(`HTTP/1.1 ${status} ${reason}\r\n${headers}\r\n${body}`);
}

export function createUpgradeHandler(d: HandshakeDeps): (req: IncomingMessage, socket: Duplex, head: Buffer) => void {
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: d.limits.wsMaxPayloadBytes,
    perMessageDeflate: false,
    clientTracking: false,
    // Choose `mqtt`, never the `auth.<jwt>` entry: without this ws echoes the first offer.
    handleProtocols: (offered) => (offered.has(jwtContract.subprotocol) ? jwtContract.subprotocol : false),
  });

  // Drops per connection within a sliding 10 s window; past the threshold the client is disconnected.
  const abuseWindowMs = 10_000;
  const drops = new WeakMap<ConnState, { since: number; n: number }>();
  // One object for every connection: per-connection closures would cost memory at 100k idle sockets.
  const guardEvents: GuardEvents<WebSocketDuplex> = {
    onDrop(stream, limit, bytes) {
      d.metrics.rateLimitDrops.inc({ limit });
      if (!stream.fw) return;
      stream.throttle(stream.guard.limiter?.msUntilAllowed(bytes) ?? 0);
      abuse(stream.fw);
    },
    onHold(stream, limit, bytes) {
      d.metrics.rateLimitHeld.inc({ limit });
      stream.throttle(stream.guard.limiter?.msUntilAllowed(bytes) ?? 0);
    },
  };
  const duplexHooks: DuplexHooks = {
    violation: (stream, err) => violation(stream.fw!, err),
    closed: (stream) => d.connections.closed(stream.fw!),
    // Aedes destroys the stream with the error before it reports it: choose the close frame now.
    errored: (stream, err) => {
      if (stream.closeIntent) return; // a deliberate close came first
      const frame = closeFrameFor(classifyClientError(err));
      if (frame) setCloseIntent(stream.fw!, frame.reason, frame.text);
    },
  };

  return function onUpgrade(req, socket, head) {
    socket.on('error', destroySelf);
    const path = (req.url ?? '').split('?', 1)[0];
    if (path !== MQTT_PATH) return reject(socket, 404, 'NOT_FOUND');
    if (d.isDraining()) return reject(socket, 503, 'BROKER_DRAINING', { 'Retry-After': '5' });
    const offered = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
    if (!offered.includes(jwtContract.subprotocol)) return reject(socket, 400, 'BROKER_SUBPROTOCOL_REQUIRED');
    const ip = clientIp(req, d.proxies, d.hasProxies);
    if (!d.connections.admit(ip)) {
      d.metrics.rateLimitDrops.inc({ limit: 'ip_connections' });
      return reject(socket, 429, 'BROKER_TOO_MANY_CONNECTIONS', { 'Retry-After': '10' });
    }
    d.gate.check(ip).then(
      (verdict) => {
        if (!verdict.ok) {
          d.metrics.rateLimitDrops.inc({ limit: verdict.why === 'banned' ? 'ip_banned' : 'connect_attempts' });
          const code = verdict.why === 'banned' ? 'BROKER_IP_BANNED' : 'BROKER_RATE_LIMITED';
          return reject(socket, 429, code, { 'Retry-After': String(verdict.retryAfterS) });
        }
        if (socket.destroyed) return;
        wss.handleUpgrade(req, socket, head, (ws) => accept(ws, req.headers['sec-websocket-protocol'], ip));
      },
      (err: unknown) => {
        d.log.error({ err }, 'connection gate unavailable');
        reject(socket, 503, 'INTERNAL_ERROR', { 'Retry-After': '5' });
      },
    );
  };

  /**
   * Takes the offered subprotocols, not the request: nothing of the upgrade
   * request (headers, the token, the read buffer) stays reachable afterwards,
   * except the header Aedes' authenticate hook reads from client.req once.
   */
  function accept(ws: WebSocket, offeredProtocols: string | undefined, ip: string): void {
    const guard = new MqttIngressGuard<WebSocketDuplex>(new PublishLimiter(d.limits), d.limits.maxPacketBytes, guardEvents);
    const stream = new WebSocketDuplex(ws, guard, duplexHooks);
    const state = newConnState('ws', ip, stream);
    d.connections.opened(state);
    const slimRequest = { headers: { 'sec-websocket-protocol': offeredProtocols } } as unknown as IncomingMessage;
    handleConnection(d.aedes, stream, slimRequest);
  }

  function abuse(state: ConnState): void {
    if (state.closing) return;
    const now = Date.now();
    let w = drops.get(state);
    if (!w || now - w.since > abuseWindowMs) drops.set(state, (w = { since: now, n: 0 }));
    if (++w.n >= d.limits.abuseDropsBeforeKick) {
      d.log.warn({ client_id: state.client?.id, ip: state.ip, dropped: w.n }, 'sustained publish flood: disconnecting');
      d.connections.disconnect(state, 'rate-limited');
      d.onFloodKick(state);
    }
  }

  function violation(state: ConnState, err: GuardError): void {
    d.metrics.malformed.inc({ kind: err.violation });
    d.log.warn({ client_id: state.client?.id, ip: state.ip }, `closing connection: ${err.message}`);
    d.connections.disconnect(state, err.violation, err.message);
  }
}
