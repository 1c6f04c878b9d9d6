/**
 * The WebSocket upgrade on /mqtt. Cheap refusals first (path, draining, the
 * subprotocol list, concurrent connections per IP), then ws's own request checks,
 * and only then the cluster-wide attempt gate in Redis, from ws's verifyClient: a
 * request refused for its form never uses up its address's connect attempts. ws
 * picks `mqtt`, so the token offered beside it is never echoed. Every refusal is one
 * JSON error body, one metric increment and (throttled) one log line. Query strings
 * are ignored: a token in a URL would end up in proxy logs.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type VerifyClientCallbackAsync, type WebSocket } from 'ws';
import type { BlockList } from 'node:net';
import type { Aedes } from 'aedes';
import { errorCatalogue, jwtContract, LogThrottle, type ErrorCode, type Logger } from '@fleetwire/common';
import { clientIp } from './client-ip.js';
import { newConnState, setCloseIntent, type ConnState, type ConnStream } from './conn-state.js';
import type { ConnectGate } from './connect-gate.js';
import type { Connections } from './connections.js';
import type { BrokerMetrics } from './metrics.js';
import { GuardError, MqttIngressGuard, type GuardEvents } from './mqtt-guard.js';
import { PublishLimiter, type PublishLimits } from './publish-limiter.js';
import { readOffer } from './subprotocols.js';
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

const REASONS: Record<number, string> = { 400: 'Bad Request', 404: 'Not Found', 429: 'Too Many Requests', 503: 'Service Unavailable' };

/** Answers a refused upgrade with `{"error": {code, message}}` and closes the socket. */
function writeRefusal(socket: Duplex, status: number, code: string, message: string, extraHeaders: Record<string, string>): void {
  const body = JSON.stringify({ error: { code, message } });
  const headers = Object.entries({ 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)), Connection: 'close', ...extraHeaders })
    .map(([k, v]) => `${k}: ${v}\r\n`).join('');
  socket.end(`HTTP/1.1 ${status} ${REASONS[status] ?? 'Error'}\r\n${headers}\r\n${body}`);
}

export function createUpgradeHandler(d: HandshakeDeps): (req: IncomingMessage, socket: Duplex, head: Buffer) => void {
  // Refusals are client-driven: at most one log line per code and second, the rest counted into it.
  const refusalLog = new LogThrottle(1000);
  function refuse(socket: Duplex, ip: string, status: number, code: ErrorCode, extraHeaders: Record<string, string> = {}, detail?: string): void {
    d.metrics.handshakeRefusals.inc({ code });
    const suppressed = refusalLog.take(code);
    // Never the request's headers: the subprotocol list holds the token.
    if (suppressed !== null) d.log.info({ ip, status, code, ...(detail ? { detail } : {}), suppressed }, 'WebSocket upgrade refused');
    const message = errorCatalogue[code].message;
    writeRefusal(socket, status, code, detail ? `${message} ${detail}.` : message, extraHeaders);
  }

  /** Runs after ws's own checks of the request, so only well-formed upgrades spend an attempt. */
  const gateAttempt: VerifyClientCallbackAsync = ({ req }, done) => {
    const socket = req.socket;
    const ip = clientIp(req, d.proxies, d.hasProxies);
    d.gate.check(ip).then(
      (verdict) => {
        if (!verdict.ok) {
          d.metrics.rateLimitDrops.inc({ limit: verdict.why === 'banned' ? 'ip_banned' : 'connect_attempts' });
          const code = verdict.why === 'banned' ? 'BROKER_IP_BANNED' : 'BROKER_RATE_LIMITED';
          return refuse(socket, ip, 429, code, { 'Retry-After': String(verdict.retryAfterS) });
        }
        if (!socket.destroyed) done(true);
      },
      (err: unknown) => {
        d.log.error({ err }, 'connection gate unavailable');
        refuse(socket, ip, 503, 'INTERNAL_ERROR', { 'Retry-After': '5' });
      },
    );
  };

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: d.limits.wsMaxPayloadBytes,
    perMessageDeflate: false,
    clientTracking: false,
    verifyClient: gateAttempt,
    // Choose `mqtt`, never the `auth.<jwt>` entry: without this ws echoes the first offer.
    handleProtocols: (offered) => (offered.has(jwtContract.subprotocol) ? jwtContract.subprotocol : false),
  });
  // With a listener, ws leaves its refusals (bad key, version, method, …) to us instead of
  // answering a bare text/html 400 that nobody logs. RFC 6455 §4.4: name the version spoken.
  wss.on('wsClientError', (err: Error, socket: Duplex, req: IncomingMessage) => {
    refuse(socket, clientIp(req, d.proxies, d.hasProxies), 400, 'BROKER_HANDSHAKE_INVALID', { 'Sec-WebSocket-Version': '13' }, err.message);
  });

  // Drops per connection within a sliding 10 s window; past the threshold the client is disconnected.
  const abuseWindowMs = 10_000;
  const drops = new WeakMap<ConnState, { since: number; n: number }>();
  // One object for every connection: per-connection closures would cost memory at 100k idle sockets.
  const guardEvents: GuardEvents<ConnStream> = {
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
  const duplexHooks: DuplexHooks<ConnState> = {
    violation: (stream, err) => violation(stream.fw!, err),
    closed: (stream) => d.connections.closed(stream.fw!),
    // Aedes destroys the stream with the error before it reports it: choose the close frame now.
    errored: (stream, err) => {
      if (stream.closeIntent) return; // a deliberate close came first
      const frame = closeFrameFor(classifyClientError(err, stream.fw!.client));
      if (frame) setCloseIntent(stream.fw!, frame.reason, frame.text);
    },
  };

  return function onUpgrade(req, socket, head) {
    socket.on('error', destroySelf);
    const ip = clientIp(req, d.proxies, d.hasProxies);
    const path = (req.url ?? '').split('?', 1)[0];
    if (path !== MQTT_PATH) return refuse(socket, ip, 404, 'NOT_FOUND');
    if (d.isDraining()) return refuse(socket, ip, 503, 'BROKER_DRAINING', { 'Retry-After': '5' });
    const offer = readOffer(req.headers['sec-websocket-protocol']);
    if (!offer.ok) return refuse(socket, ip, 400, offer.code);
    req.headers['sec-websocket-protocol'] = offer.header; // each entry once, as ws requires
    if (!d.connections.admit(ip)) {
      d.metrics.rateLimitDrops.inc({ limit: 'ip_connections' });
      return refuse(socket, ip, 429, 'BROKER_TOO_MANY_CONNECTIONS', { 'Retry-After': '10' });
    }
    wss.handleUpgrade(req, socket, head, (ws) => accept(ws, offer.header, ip));
  };

  /**
   * Takes the offered subprotocols, not the request: nothing of the upgrade
   * request (headers, the token, the read buffer) stays reachable afterwards,
   * except the header Aedes' authenticate hook reads from client.req once.
   */
  function accept(ws: WebSocket, offeredProtocols: string, ip: string): void {
    const guard = new MqttIngressGuard<ConnStream>(new PublishLimiter(d.limits), d.limits.maxPacketBytes, guardEvents);
    const stream = new WebSocketDuplex(ws, guard, duplexHooks);
    const state = newConnState('ws', ip, stream);
    d.connections.opened(state);
    const slimRequest = { headers: { 'sec-websocket-protocol': offeredProtocols } } as unknown as IncomingMessage;
    state.client = handleConnection(d.aedes, stream, slimRequest);
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
