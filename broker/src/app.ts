/**
 * buildBroker(config, deps): constructs the broker (Aedes + ws + HTTP API)
 * without listening and without reading the environment. As a service
 * (service.ts) it adds its routes to the host's app and start() runs once the
 * host listens; alone (tests) it owns its app and listen() does both.
 */
import { Aedes } from 'aedes';
import type { Server as TcpServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import {
  createHttpApp, createLogger, createMetricsRegistry, createRedis, healthRoutes, redisKeys, requireRole, trustedProxyList,
  type Logger, type Redis, type Registry, type TokenVerifier,
} from '@fleetwire/common';
import type { BrokerConfig } from './config.js';
import { watchClients } from './client-events.js';
import { watchCommandDeliveries } from './command-delivery.js';
import { publishToDevice } from './cloud-to-device.js';
import { clusterEngines } from './cluster.js';
import { ConnectGate } from './connect-gate.js';
import { Connections } from './connections.js';
import { ControlChannel } from './control.js';
import { createUpgradeHandler } from './handshake.js';
import { installHooks } from './hooks/index.js';
import { IngressRouter } from './ingress.js';
import { startMaintenance } from './maintenance.js';
import { markRedeliveries } from './redelivery.js';
import { createBrokerMetrics } from './metrics.js';
import { guardEmitterRecursion } from './emitter-guard.js';
import { ConnectionRegistry } from './registry.js';
import { connectionRoutes } from './routes/connections.js';
import { listenTcp } from './tcp-listener.js';

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

export async function buildBroker(config: BrokerConfig, deps: BrokerDeps): Promise<Broker> {
  const nodeId = config.nodeId || `${hostname()}-${randomBytes(3).toString('hex')}`;
  const log = (deps.log ?? createLogger({ level: config.logLevel, name: 'broker' })).child({ node: nodeId });
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const redis = deps.redis ?? createRedis(config.redisUrl, { name: `broker:${nodeId}` });
  const sub = createRedis(config.redisUrl, { name: `broker-sub:${nodeId}` });
  const queueRedis = createRedis(config.redisUrl, { name: `broker-queues:${nodeId}`, maxRetriesPerRequest: null });
  const ownRedis = deps.redis ? [sub, queueRedis] : [redis, sub, queueRedis];
  for (const r of ownRedis) r.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'));

  const cluster = config.cluster === 'redis'
    ? clusterEngines(config.redisUrl, nodeId, (err) => log.warn({ err: err.message }, 'redis connection error (cluster)'))
    : null;
  const aedes = new Aedes({
    id: nodeId,
    connectTimeout: config.connectTimeoutMs,
    maxTopicLevels: config.maxTopicLevels,
    drainTimeout: config.drainTimeoutMs,
    ...(cluster ? { mq: cluster.mq, persistence: cluster.persistence } : {}),
  });
  guardEmitterRecursion(aedes.mq);

  let draining = false;
  const isDraining = (): boolean => draining;
  const registry = new ConnectionRegistry(redis, nodeId);
  const metrics = createBrokerMetrics(metricsRegistry, () => connections.countsByKind());
  const connections: Connections = new Connections(aedes, registry, metrics, log, {
    tokenNoticeS: config.tokenNoticeS, maxConnectionsPerIp: config.maxConnectionsPerIp,
  });
  const gate = new ConnectGate(redis, config);
  const ingress = new IngressRouter(queueRedis, nodeId, { timeoutMs: config.mlTimeoutMs, maxTimeoutMs: config.mlMaxTimeoutMs, quotaPerMin: config.mlQuotaPerMin });
  const control = new ControlChannel(redis, connections, registry, nodeId, log);
  installHooks({
    aedes, redis, verifier: deps.verifier, gate, connections, ingress, metrics, log, nodeId,
    limits: { keepaliveMinS: config.keepaliveMinS, keepaliveMaxS: config.keepaliveMaxS, limitServices: config.limitServices },
  });
  watchClients({ aedes, connections, metrics, log, nodeId });
  watchCommandDeliveries(aedes, redis, log);
  await aedes.listen();
  markRedeliveries(aedes); // the persistence exists once listen() has set it up
  await control.listen(sub);

  const onUpgrade = createUpgradeHandler({
    aedes, gate, connections, metrics, log, isDraining,
    proxies: trustedProxyList(config.trustedProxies), hasProxies: config.trustedProxies.length > 0,
    onFloodKick: (state) => {
      if (config.floodPenaltyS === 0 || !state.client?.id) return;
      redis.set(redisKeys.floodPenalty(state.client.id), '1', 'EX', config.floodPenaltyS)
        .catch((err: unknown) => log.warn({ err }, 'recording a flood penalty failed'));
    },
    limits: {
      perS: config.publishPerS, burst: config.publishBurst, perMin: config.publishPerMin,
      bytesPerS: config.publishBytesPerS, bytesPerMin: config.publishBytesPerMin,
      wsMaxPayloadBytes: config.wsMaxPayloadBytes, maxPacketBytes: config.maxPacketBytes, abuseDropsBeforeKick: config.abuseDropsBeforeKick,
    },
  });

  const ownsHttp = !deps.http;
  const http = deps.http ?? await createHttpApp({ log, tls: deps.tls ?? null, version: deps.version ?? '0.0.0', trustedProxies: config.trustedProxies, limits: config, metricsRegistry });
  http.server.on('upgrade', onUpgrade);
  const kick = control.kick.bind(control);
  connectionRoutes(http, { registry, operator: requireRole(deps.verifier, redis, ['admin', 'operator']), kick });
  const readiness = { accepting: async () => !draining };
  if (ownsHttp) healthRoutes(http, { registry: metricsRegistry, readiness: { redis: async () => (await redis.ping()) === 'PONG', ...readiness } });

  let tcpServer: TcpServer | null = null;
  let stopMaintenance = (): void => undefined;

  async function listen(): Promise<ListenInfo> {
    if (!ownsHttp) throw new Error('this broker shares the host\'s app; the host listens');
    await http.listen({ port: config.port, host: config.host });
    return start((http.server.address() as AddressInfo).port);
  }

  async function start(port: number): Promise<ListenInfo> {
    let tcpPort: number | null = null;
    if (config.tcpPort > 0) ({ server: tcpServer, port: tcpPort } = await listenTcp(aedes, connections, { port: config.tcpPort, host: config.tcpHost }, isDraining));
    stopMaintenance = startMaintenance({ config, connections, registry, log });
    log.info({ port, tcp_port: tcpPort, cluster: config.cluster }, 'broker listening');
    return { port, tcpPort };
  }

  let closed = false;
  async function close(): Promise<void> {
    if (closed) return;
    closed = true;
    stopMaintenance();
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

  const sendToDevice = (deviceId: string, topicClass: string, payload: unknown): Promise<void> => publishToDevice(aedes, deviceId, topicClass, payload);
  return { nodeId, aedes, http, connections, registry, ingress, readiness, listen, start, sendToDevice, kick, drain, close };
}
