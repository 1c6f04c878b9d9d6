/** Test harness: a real auth service on a real port, real Redis, real argon2, real keys. */
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger, createMetricsRegistry, createRedis, openKeyRing, type KeyRing, type Redis, type Registry } from '@fleetwire/common';
import { buildBroker, brokerDefaults, type Broker } from '@fleetwire/broker';
import { authDefaults, buildAuthService, OutboxSender, type AuthConfig, type AuthService } from '../src/index.js';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
export const REDIS_URL = process.env.REDIS_URL!;
export const ADMIN = { email: 'admin@example.com', password: 'admin-passphrase-for-tests' };

export interface Answer { status: number; headers: Headers; body: Record<string, unknown> & { error?: { code: string; message: string } } }

export interface TestAuth {
  auth: AuthService;
  url: string;
  config: AuthConfig;
  redis: Redis;
  metrics: Registry;
  logs: string[];
  outboxFile: string;
  dataDir: string;
  broker?: Broker;
  keys?: KeyRing;
  api(method: string, path: string, opts?: { token?: string; body?: unknown; headers?: Record<string, string> }): Promise<Answer>;
  login(email: string, password: string, ip?: string): Promise<Answer>;
  /** An access token for a new user of `role` (admin: the bootstrap admin). */
  tokenFor(role: 'admin' | 'operator' | 'viewer'): Promise<string>;
  outbox(): Promise<{ to: string; link: string; text: string }[]>;
  close(): Promise<void>;
}

/**
 * `withBroker`: the `fleetwire up` layout, the auth routes on the broker's app
 * and one key ring for both; otherwise the auth service alone.
 */
export async function startAuth(overrides: Partial<AuthConfig> = {}, opts: { withBroker?: boolean; dataDir?: string } = {}): Promise<TestAuth> {
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), 'fw-auth-'));
  const logs: string[] = [];
  const destination = new Writable({ write(chunk, _e, cb) { logs.push(String(chunk)); cb(); } });
  const log = createLogger({ level: 'debug', name: 'auth-test', destination });
  const config = authDefaults({
    redisUrl: REDIS_URL, port: 0, host: '127.0.0.1', dataDir, trustedProxies: ['127.0.0.1'],
    adminEmail: ADMIN.email, adminPassword: ADMIN.password, ...overrides,
  });
  const outboxFile = join(dataDir, 'outbox.jsonl');
  const metrics = createMetricsRegistry({ defaultMetrics: false });
  let broker: Broker | undefined;
  let keys: KeyRing | undefined;
  let auth: AuthService;
  let port: number;
  if (opts.withBroker) {
    keys = await openKeyRing(join(dataDir, 'keys'), { retireAfterMs: config.keyRetireAfterS * 1000 });
    broker = await buildBroker(brokerDefaults({ redisUrl: REDIS_URL, port: 0, host: '127.0.0.1', dataDir }), { verifier: keys.verifier, log, metricsRegistry: metrics });
    auth = await buildAuthService(config, { http: broker.http, keys, log, metricsRegistry: metrics, sender: new OutboxSender(outboxFile, log) });
    ({ port } = await broker.listen());
  } else {
    auth = await buildAuthService(config, { log, metricsRegistry: metrics, sender: new OutboxSender(outboxFile, log) });
    port = await auth.listen();
  }
  const url = `http://127.0.0.1:${port}`;
  const redis = createRedis(REDIS_URL, { name: 'auth-test' });

  async function api(method: string, path: string, o: { token?: string; body?: unknown; headers?: Record<string, string> } = {}): Promise<Answer> {
    const headers: Record<string, string> = { ...o.headers };
    if (o.token) headers.authorization = `Bearer ${o.token}`;
    if (o.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(url + path, { method, headers, body: o.body === undefined ? undefined : typeof o.body === 'string' ? o.body : JSON.stringify(o.body) });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) as Answer['body'] : {} };
  }
  const login = (email: string, password: string, ip?: string): Promise<Answer> =>
    api('POST', '/v1/auth/login', { body: { email, password }, ...(ip ? { headers: { 'x-forwarded-for': ip } } : {}) });

  let n = 0;
  return {
    auth, url, config, redis, metrics, logs, outboxFile, dataDir, broker, keys, api, login,
    async tokenFor(role) {
      if (role === 'admin') return (await login(ADMIN.email, ADMIN.password, '10.9.9.9')).body.access_token as string;
      const email = `${role}-${n++}-${Date.now()}@example.com`;
      await auth.accounts.createUser({ email, password: 'a-long-enough-passphrase', role }, 'test');
      return (await login(email, 'a-long-enough-passphrase', '10.9.9.9')).body.access_token as string;
    },
    async outbox() {
      await auth.accounts.settled();
      const text = await readFile(outboxFile, 'utf8').catch(() => '');
      return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { to: string; link: string; text: string });
    },
    async close() {
      if (broker) {
        await auth.close();
        await broker.close();
        keys!.close();
      } else {
        await auth.close();
      }
      redis.disconnect();
    },
  };
}

/** The value of a counter or histogram sample in the registry's text output. */
export async function metricValue(registry: Registry, name: string, labels = ''): Promise<number> {
  const text = await registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
