/**
 * buildBroker(config, deps): constructs the broker (Aedes + ws + HTTP API)
 * without listening and without reading the environment. As a service
 * (service.ts) it adds its routes to the host's app and start() runs once the
 * host listens; alone (tests) it owns its app and listen() does both.
 */
import { Aedes, type Client } from 'aedes';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import {
  createHttpApp, createLogger, createMetricsRegistry, createRedis, healthRoutes, normalizeIp, parseRevocation, redisKeys, requireRole, topicFor, topics,
  trustedProxyList,
  type Logger, type Redis, type Registry, type TokenVerifier,
} from '@fleetwire/common';
import type { BrokerConfig } from './config.js';
import { newConnState, setCloseIntent, stateOf, type DisconnectReason } from './conn-state.js';
import { clusterEngines } from './cluster.js';
import { ConnectGate } from './connect-gate.js';
import { Connections } from './connections.js';
import { createUpgradeHandler } from './handshake.js';
import { installHooks } from './hooks/index.js';
import { handleConnection } from './aedes-tuning.js';
import { classifyClientError } from './client-errors.js';
import { IngressRouter } from './ingress.js';
import { markRedeliveries } from './redelivery.js';
import { createBrokerMetrics } from './metrics.js';
import { ConnectionRegistry } from './registry.js';
import { connectionRoutes } from './routes/connections.js';

export interface BrokerDeps {
  verifier: TokenVerifier;
  log?: Logger;
  metricsRegistry?: Registry;
  tls?: { key: Buffer; cert: Buffer } | null;
  version?: string;
  /** Add the routes and the /mqtt upgrade to this app (the host's, one port) instead of creating one. */
  http?: FastifyInstance;
  /** A shared connection for plain commands; by default the broker opens its own. */
  redis?: Redis;
}

export interface ListenInfo {
  port: number;
  tcpPort: number | null;
}

export interface Broker {
  readonly nodeId: string;
  readonly aedes: Aedes;
  readonly http: FastifyInstance;
  readonly connections: Connections;
  readonly registry: ConnectionRegistry;
  readonly ingress: IngressRouter;
  /** Checks for /readyz beyond Redis: not draining. */
  readonly readiness: Record<string, () => Promise<boolean>>;
  /** Only when the broker owns its app: listens on config.port, then start(). */
  listen(): Promise<ListenInfo>;
  /** Once the app listens on `port`: the service TCP listener and the timers. */
  start(port: number): Promise<ListenInfo>;
  /** Publishes a cloud-to-device message; delivered on whichever node holds the device (cluster mode). */
  sendToDevice(deviceId: string, topicClass: string, payload: unknown): Promise<void>;
  /** Kicks a connection wherever it is; resolves to the node holding it, or null when it is not connected. */
  kick(clientId: string, reason: string | undefined, actor: string): Promise<string | null>;
  /** Graceful stop: refuse new connections, close existing ones with jitter, then shut down. */
  drain(): Promise<{ leftOpen: number }>;
  close(): Promise<void>;
}

interface ControlMessage { op: 'kick'; client_id: string; reason?: string; actor: string }

const cloudToDevice = new Set(topics.filter((t) => t.direction === 'cloud-to-device').map((t) => t.class));

export async function buildBroker(config: BrokerConfig, deps: BrokerDeps): Promise<Broker> {
  const nodeId = config.nodeId || `${hostname()}-${randomBytes(3).toString('hex')}`;
  const log = (deps.log ?? createLogger({ level: config.logLevel, name: 'broker' })).child({ node: nodeId });
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const redis = deps.redis ?? createRedis(config.redisUrl, { name: `broker:${nodeId}` });
  const sub = createRedis(config.redisUrl, { name: `broker-sub:${nodeId}` });
  const queueRedis = createRedis(config.redisUrl, { name: `broker-queues:${nodeId}`, maxRetriesPerRequest: null });
  const ownRedis = deps.redis ? [sub, queueRedis] : [redis, sub, queueRedis];
  for (const r of ownRedis) r.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'));

  const cluster = config.cluster === 'redis' ? clusterEngines(config.redisUrl, nodeId) : null;
  const aedes = new Aedes({
    id: nodeId,
    connectTimeout: config.connectTimeoutMs,
    maxTopicLevels: config.maxTopicLevels,
    drainTimeout: config.drainTimeoutMs,
    ...(cluster ? { mq: cluster.mq, persistence: cluster.persistence } : {}),
  });

  let draining = false;
  const registry = new ConnectionRegistry(redis, nodeId);
  const metrics = createBrokerMetrics(metricsRegistry, () => connections.countsByKind());
  const connections: Connections = new Connections(aedes, registry, metrics, log, {
    tokenNoticeS: config.tokenNoticeS, maxConnectionsPerIp: config.maxConnectionsPerIp,
  });
  const gate = new ConnectGate(redis, config);
  const ingress = new IngressRouter(queueRedis, nodeId);
  const limits = {
    perS: config.publishPerS, burst: config.publishBurst, perMin: config.publishPerMin,
    bytesPerS: config.publishBytesPerS, bytesPerMin: config.publishBytesPerMin,
  };
  installHooks({
    aedes, redis, verifier: deps.verifier, gate, connections, ingress, metrics, log, nodeId,
    limits: { keepaliveMinS: config.keepaliveMinS, keepaliveMaxS: config.keepaliveMaxS, limitServices: config.limitServices },
  });

  // Registered before aedes.listen() so it runs before Aedes' own handler closes the
  // local client: a client taken over by a connection on another node learns why.
  aedes.mq.on('$SYS/+/new/clients', (packet, done) => {
    const serverId = packet.topic.split('/')[1];
    const state = serverId !== nodeId ? connections.byClientId.get(packet.payload.toString()) : undefined;
    if (state) {
      state.closeReason = 'taken-over';
      setCloseIntent(state, 'taken-over');
    }
    done();
  });
  aedes.on('clientReady', (client: Client) => void connections.ready(client));
  aedes.on('clientDisconnect', (client: Client) => void connections.gone(client));
  aedes.on('clientError', (client: Client, err: Error) => noteClientError(client, err));
  aedes.on('connectionError', (client: Client, err: Error) => {
    const reason = noteClientError(client, err);
    metrics.disconnects.inc({ reason });
  });
  (aedes as unknown as NodeJS.EventEmitter).on('error', (err: unknown) => log.error({ err }, 'broker error'));
  await aedes.listen();
  markRedeliveries(aedes); // the persistence exists once listen() has set it up

  /** Records why Aedes ended a connection with an error; a deliberate close that came first keeps its own reason. */
  function noteClientError(client: Client, err: Error): DisconnectReason {
    const state = stateOf(client);
    if (state?.closeReason) return state.closeReason;
    const verdict = classifyClientError(err, client);
    const fields = { client_id: client.id, ip: state?.ip, err: err.message };
    if (verdict.malformed) {
      metrics.malformed.inc({ kind: verdict.malformed });
      log.warn(fields, `closing connection: ${verdict.text}`);
    } else if (verdict.reason === 'client-error') {
      log.warn(fields, 'connection ended by an unexpected error');
    } else {
      log.info(fields, `connection ended: ${verdict.reason}`);
    }
    if (state) state.closeReason = verdict.reason;
    return verdict.reason;
  }

  // Revocations and kicks reach every node; the node holding the connection acts.
  await sub.subscribe(redisKeys.revocations, redisKeys.brokerControl);
  sub.on('message', (channel: string, message: string) => {
    if (channel === redisKeys.revocations) {
      const ev = parseRevocation(message);
      if (ev) connections.revoke(ev);
      return;
    }
    try {
      const msg = JSON.parse(message) as ControlMessage;
      if (msg.op === 'kick') connections.kickLocal(msg.client_id, msg.reason, msg.actor);
    } catch (err) {
      log.warn({ err }, 'ignoring an unreadable control message');
    }
  });

  const proxies = trustedProxyList(config.trustedProxies);
  const onUpgrade = createUpgradeHandler({
    aedes, gate, connections, metrics, log, proxies, hasProxies: config.trustedProxies.length > 0,
    isDraining: () => draining,
    onFloodKick: (state) => {
      if (config.floodPenaltyS === 0 || !state.client?.id) return;
      redis.set(redisKeys.floodPenalty(state.client.id), '1', 'EX', config.floodPenaltyS)
        .catch((err: unknown) => log.warn({ err }, 'recording a flood penalty failed'));
    },
    limits: { ...limits, wsMaxPayloadBytes: config.wsMaxPayloadBytes, maxPacketBytes: config.maxPacketBytes, abuseDropsBeforeKick: config.abuseDropsBeforeKick },
  });

  const ownsHttp = !deps.http;
  const http = deps.http ?? await createHttpApp({ log, tls: deps.tls ?? null, version: deps.version ?? '0.0.0', trustedProxies: config.trustedProxies, limits: config, metricsRegistry });
  http.server.on('upgrade', onUpgrade);
  const operator = requireRole(deps.verifier, redis, ['admin', 'operator']);
  connectionRoutes(http, { registry, operator, kick });
  const readiness = { accepting: async () => !draining };
  if (ownsHttp) healthRoutes(http, { registry: metricsRegistry, readiness: { redis: async () => (await redis.ping()) === 'PONG', ...readiness } });

  let tcpServer: TcpServer | null = null;
  const timers: NodeJS.Timeout[] = [];

  function startTimers(): void {
    timers.push(setInterval(() => connections.tick(), 250));
    timers.push(setInterval(() => {
      registry.flushActivity(connections.byClientId).catch((err: unknown) => log.warn({ err }, 'registry activity flush failed'));
    }, config.registryFlushMs));
    const heartbeat = (): void => {
      registry.heartbeatNode(config.nodeTtlS).catch((err: unknown) => log.warn({ err }, 'node heartbeat failed'));
    };
    heartbeat();
    timers.push(setInterval(heartbeat, Math.max(1000, (config.nodeTtlS * 1000) / 3)));
    const sweep = (): void => {
      registry.sweepDeadNodes().then(
        (offline) => {
          for (const o of offline) connections.publishPresence(o.deviceId, { online: false, seq: o.seq, node: o.node, at: Date.now(), reason: 'node-lost' });
          if (offline.length) log.warn({ count: offline.length }, 'swept connections of a dead node');
        },
        (err: unknown) => log.warn({ err }, 'dead-node sweep failed'),
      );
    };
    sweep();
    timers.push(setInterval(sweep, config.nodeTtlS * 1000));
    for (const t of timers) t.unref();
  }

  async function listen(): Promise<ListenInfo> {
    if (!ownsHttp) throw new Error('this broker shares the host\'s app; the host listens');
    await http.listen({ port: config.port, host: config.host });
    return start((http.server.address() as AddressInfo).port);
  }

  async function start(port: number): Promise<ListenInfo> {
    let tcpPort: number | null = null;
    if (config.tcpPort > 0) {
      tcpServer = createTcpServer((socket) => acceptTcp(socket));
      await new Promise<void>((resolve, reject) => {
        tcpServer!.once('error', reject);
        tcpServer!.listen(config.tcpPort, config.tcpHost, () => resolve());
      });
      tcpPort = (tcpServer.address() as AddressInfo).port;
    }
    startTimers();
    log.info({ port, tcp_port: tcpPort, cluster: config.cluster }, 'broker listening');
    return { port, tcpPort };
  }

  /** Services on the loopback TCP listener authenticate with username "service" and a JWT password. */
  function acceptTcp(socket: Socket): void {
    if (draining) return void socket.destroy();
    const state = newConnState('tcp', normalizeIp(socket.remoteAddress), socket);
    connections.opened(state);
    socket.once('close', () => connections.closed(state));
    state.client = handleConnection(aedes, socket);
  }

  async function sendToDevice(deviceId: string, topicClass: string, payload: unknown): Promise<void> {
    if (!cloudToDevice.has(topicClass)) throw new Error(`${topicClass} is not a cloud-to-device topic class`);
    const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload));
    await new Promise<void>((resolve, reject) => {
      aedes.publish({ cmd: 'publish', topic: topicFor(topicClass, deviceId), payload: body, qos: 1, retain: false, dup: false },
        (err) => (err ? reject(err) : resolve()));
    });
  }

  async function kick(clientId: string, reason: string | undefined, actor: string): Promise<string | null> {
    if (connections.kickLocal(clientId, reason, actor)) return nodeId;
    const rec = await registry.get(clientId);
    if (!rec) return null;
    const msg: ControlMessage = { op: 'kick', client_id: clientId, actor, ...(reason ? { reason } : {}) };
    await redis.publish(redisKeys.brokerControl, JSON.stringify(msg));
    return rec.node;
  }

  let closed = false;
  async function close(): Promise<void> {
    if (closed) return;
    closed = true;
    for (const t of timers) clearInterval(t);
    http.server.off('upgrade', onUpgrade);
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    for (const s of connections.live) s.stream.destroy();
    await Promise.all([
      ownsHttp ? http.close() : undefined,
      tcpServer ? new Promise<void>((resolve) => tcpServer!.close(() => resolve())) : undefined,
      ingress.close(),
    ]);
    await registry.forgetNode().catch(() => undefined);
    await Promise.all([...ownRedis.map((r) => r.quit().catch(() => r.disconnect())), cluster?.close()]);
  }

  async function drain(): Promise<{ leftOpen: number }> {
    draining = true;
    log.info({ connections: connections.live.size }, 'draining: refusing new connections, closing existing ones');
    tcpServer?.close();
    const leftOpen = await connections.drainAll(config.shutdownSpreadMs, Math.max(0, config.shutdownTimeoutMs - 2000));
    // Let the last registry and presence writes land before the connections go.
    await new Promise((r) => setTimeout(r, 200));
    await close();
    return { leftOpen };
  }

  return { nodeId, aedes, http, connections, registry, ingress, readiness, listen, start, sendToDevice, kick, drain, close };
}

