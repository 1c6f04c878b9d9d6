/**
 * buildAuthService(config, deps): users, sessions, devices, keys and audit on
 * a Fastify app. Constructs without listening and without reading the
 * environment. As a service (service.ts) it adds its routes to the host's app
 * and shares its key ring and Redis, so everything is served on one port.
 */
import { join, resolve } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import {
  AuditLog, createHttpApp, createLogger, createMetricsRegistry, createRedis, gitCommit, healthRoutes, openKeyRing, requireRole,
  type KeyRing, type Logger, type Redis, type Registry,
} from '@fleetwire/common';
import { Accounts } from './accounts.js';
import { argon2Params, type AuthConfig } from './config.js';
import { DeviceRegistry } from './devices.js';
import { Limits } from './limits.js';
import { createAuthMetrics } from './metrics.js';
import { PasswordHasher } from './passwords.js';
import { PasswordPolicy } from './password-policy.js';
import { OutboxSender, WebhookSender, type MessageSender } from './senders.js';
import { SessionStore } from './sessions.js';
import { accountCounts, authSpecReport, AUTH_SERVICE } from './spec.js';
import { UserStore } from './users.js';
import { adminRoutes } from './routes/admin.js';
import { authRoutes } from './routes/auth.js';
import { deviceRoutes } from './routes/devices.js';
import { userRoutes } from './routes/users.js';

export interface AuthServiceDeps {
  log?: Logger;
  metricsRegistry?: Registry;
  /** Add the routes to this app (one port in `fleetwire up`) instead of creating one. */
  http?: FastifyInstance;
  /** Signing keys shared with an in-process broker; by default <dataDir>/keys. */
  keys?: KeyRing;
  /** Where reset messages go; by default from RESET_SENDER. */
  sender?: MessageSender;
  tls?: { key: Buffer; cert: Buffer } | null;
  version?: string;
  /** A shared connection for plain commands; by default the service opens its own. */
  redis?: Redis;
  /** What GET /v1/spec answers: the host's spec of every service in the process; by default this service's alone. */
  spec?: () => Promise<Record<string, unknown>>;
}

export interface AuthService {
  readonly http: FastifyInstance;
  readonly accounts: Accounts;
  readonly users: UserStore;
  readonly devices: DeviceRegistry;
  readonly audit: AuditLog;
  readonly keys: KeyRing;
  readonly sender: MessageSender;
  spec(): Promise<Record<string, unknown>>;
  /** Listens when the service owns its app; returns the port. */
  listen(): Promise<number>;
  close(): Promise<void>;
}

export async function buildAuthService(config: AuthConfig, deps: AuthServiceDeps = {}): Promise<AuthService> {
  const log = (deps.log ?? createLogger({ level: config.logLevel, name: 'auth' })).child({ service: 'auth' });
  const version = deps.version ?? '0.0.0';
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const redis = deps.redis ?? createRedis(config.redisUrl, { name: 'auth' });
  if (!deps.redis) redis.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'));
  const keys = deps.keys ?? await openKeyRing(join(resolve(config.dataDir), 'keys'), { retireAfterMs: config.keyRetireAfterS * 1000, log });

  const hasher = new PasswordHasher(argon2Params(config));
  await hasher.warm();
  const users = new UserStore(redis);
  const devices = new DeviceRegistry(redis);
  const limits = new Limits(redis);
  const audit = new AuditLog(redis, log, config.auditMaxRecords);
  const sender = deps.sender ?? (config.resetSender === 'webhook'
    ? new WebhookSender(config.resetWebhookUrl)
    : new OutboxSender(join(resolve(config.dataDir), 'outbox.jsonl'), log));
  const metrics = createAuthMetrics(metricsRegistry, () => users.legacyCount());
  const accounts = new Accounts({
    config, redis, keys, hasher, users, limits, audit, sender, metrics, log,
    policy: new PasswordPolicy(config.passwordMinLength, config.passwordMaxLength),
    sessions: new SessionStore(redis, config.refreshTokenTtlS * 1000),
  });

  // Records from before the listing indexes are indexed once, in the background: start-up does
  // not wait, and until it is done a filtered listing may miss such devices.
  const stopIndexing = new AbortController();
  const indexing = devices.ensureIndexes(stopIndexing.signal).then(
    (n) => { if (n !== null) log.info({ devices: n }, 'indexed existing device records for the listing filters'); },
    (err: Error) => log.warn({ err: err.message }, 'indexing existing device records failed; it is tried again at the next start'),
  );

  const admin = await accounts.bootstrapAdmin();
  if (admin) log.info({ user_id: admin.id, email: admin.email }, 'created the first admin from FLEETWIRE_ADMIN_EMAIL');

  const spec = deps.spec ?? (async (): Promise<Record<string, unknown>> => {
    const counts = await accountCounts(redis).catch(() => null);
    return { version, commit: gitCommit(), [AUTH_SERVICE]: authSpecReport(config, counts) };
  });

  const ownsHttp = !deps.http;
  const http = deps.http ?? await createHttpApp({ log, tls: deps.tls ?? null, version, trustedProxies: config.trustedProxies, limits: config, metricsRegistry });
  const guard = (roles: Parameters<typeof requireRole>[2], services = true) => requireRole(keys.verifier, redis, roles, { services });
  authRoutes(http, { accounts, users, requireUser: guard(['admin', 'operator', 'viewer'], false) });
  userRoutes(http, { accounts, users, admin: guard(['admin'], false) });
  deviceRoutes(http, {
    config, devices, keys, limits, audit, metrics,
    operator: guard(['admin', 'operator']), reader: guard(['admin', 'operator', 'viewer']),
  });
  adminRoutes(http, { config, keys, audit, admin: guard(['admin'], false), spec });
  if (ownsHttp) {
    healthRoutes(http, { registry: metricsRegistry, readiness: { redis: async () => (await redis.ping()) === 'PONG' } });
  }

  async function listen(): Promise<number> {
    if (!ownsHttp) throw new Error('this auth service shares another app; listen on that one');
    await http.listen({ port: config.port, host: config.host });
    const port = (http.server.address() as AddressInfo).port;
    log.info({ port, argon2: hasher.params }, 'auth service listening');
    return port;
  }

  async function close(): Promise<void> {
    stopIndexing.abort();
    await indexing;
    await accounts.settled();
    if (ownsHttp) await http.close();
    if (!deps.keys) keys.close();
    if (!deps.redis) await redis.quit().catch(() => redis.disconnect());
  }

  return { http, accounts, users, devices, audit, keys, sender, spec, listen, close };
}
