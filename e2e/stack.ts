/**
 * End-to-end harness: the real stack (`fleetwire up` in a child process, WSS with a
 * private CA from scripts/private-ca.sh, real Redis) and real simulated devices
 * (the firmware-esp32 `fleetwire-sim` binary running the firmware's core).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import WebSocket from 'ws';
import { createRedis, type Redis } from '@fleetwire/common';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
export const REDIS_URL = process.env.REDIS_URL!;
const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const CLI = join(ROOT, 'cli/dist/main.js');
export const SIM = join(ROOT, 'firmware-esp32/target/debug/fleetwire-sim');
const ADMIN = { email: 'e2e-admin@example.com', password: 'e2e-admin-passphrase' };

export interface Answer { status: number; body: Record<string, unknown> & { error?: { code: string } } }

export interface Stack {
  url: string;
  wsUrl: string;
  caFile: string;
  ca: Buffer;
  dataDir: string;
  redis: Redis;
  api(method: string, path: string, body?: unknown, token?: string): Promise<Answer>;
  admin(): Promise<string>;
  /** Registers a device and returns its API key. */
  registerDevice(id: string): Promise<string>;
  /** A service connected over WSS, for publishing commands and offers. */
  serviceClient(): Promise<MqttClient>;
  /** SIGTERM (drain), then start again on the same port. */
  restart(downMs: number): Promise<void>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export async function startStack(extraEnv: Record<string, string> = {}): Promise<Stack> {
  const dataDir = await mkdtemp(join(tmpdir(), 'fw-e2e-'));
  const pki = join(dataDir, 'pki');
  execFileSync('bash', [join(ROOT, 'scripts/private-ca.sh'), pki, 'localhost', '127.0.0.1'], { stdio: 'ignore' });
  const caFile = join(pki, 'ca.pem');
  const ca = await readFile(caFile);
  const port = await freePort();
  const env = {
    PATH: process.env.PATH, REDIS_URL, FLEETWIRE_DATA_DIR: dataDir, PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn',
    TLS_CERT_FILE: join(pki, 'server-cert.pem'), TLS_KEY_FILE: join(pki, 'server-key.pem'),
    FLEETWIRE_ADMIN_EMAIL: ADMIN.email, FLEETWIRE_ADMIN_PASSWORD: ADMIN.password,
    LOGIN_PER_IP: '1000', BROKER_SHUTDOWN_SPREAD_MS: '200', BROKER_SHUTDOWN_TIMEOUT_MS: '3000',
    ...extraEnv,
  };
  let child: ChildProcess;
  const start = async (): Promise<void> => {
    child = spawn(process.execPath, [CLI, 'up'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('listening on port')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`fleetwire up exited (${code}): ${stderr}`)));
    });
  };
  await start();

  const agent = new https.Agent({ ca, keepAlive: true });
  const url = `https://localhost:${port}`;
  const api = (method: string, path: string, body?: unknown, token?: string): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = https.request(`${url}${path}`, {
        method, agent,
        headers: { ...(data ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
      }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) as Answer['body'] : {} }));
      });
      req.on('error', reject);
      req.end(data);
    });
  // One login per stack: the per-account login limit (10 a minute) applies to tests too.
  let adminToken: string | undefined;
  const admin = async (): Promise<string> => {
    if (adminToken) return adminToken;
    const res = await api('POST', '/v1/auth/login', ADMIN);
    if (res.status !== 200) throw new Error(`admin login: ${JSON.stringify(res.body)}`);
    return (adminToken = res.body.access_token as string);
  };
  const redis = createRedis(REDIS_URL, { name: 'e2e' });
  const wsUrl = `wss://localhost:${port}/mqtt`;

  return {
    url, wsUrl, caFile, ca, dataDir, redis, api, admin,
    async registerDevice(id) {
      const res = await api('POST', '/v1/devices', { id, type: 'esp32-sim' }, await admin());
      if (res.status !== 201) throw new Error(`registering ${id}: ${JSON.stringify(res.body)}`);
      return res.body.api_key as string;
    },
    async serviceClient() {
      const { token } = (await api('POST', '/v1/service-tokens', { name: 'e2e-service', ttl_s: 3600 }, await admin())).body as { token: string };
      return mqtt.connectAsync(wsUrl, {
        clientId: `service:e2e-service:${Date.now()}`, protocolVersion: 4, reconnectPeriod: 0,
        createWebsocket: (u: string) => new WebSocket(u, ['mqtt', `auth.${token}`], { ca }),
      });
    },
    async restart(downMs) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
      await new Promise((r) => setTimeout(r, downMs));
      await start();
    },
    async stop() {
      agent.destroy();
      redis.disconnect();
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}

export interface Sim {
  child: ChildProcess;
  lines: string[];
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

/** One simulated device (or several with --keys-file) against the stack. */
export function startSim(stack: Stack, args: string[], env: Record<string, string> = {}): Sim {
  if (!existsSync(SIM)) throw new Error(`${SIM} is missing: cargo build --manifest-path firmware-esp32/Cargo.toml -p fleetwire-sim (make test does)`);
  const child = spawn(SIM, ['--url', stack.url.replace('https', 'wss'), '--ca', stack.caFile, '--no-webpki-roots', '--stats-s', '1', ...args], {
    env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  let partial = '';
  child.stderr!.on('data', (d: Buffer) => {
    partial += d.toString();
    const parts = partial.split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters) w();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child, lines, exited,
    waitFor(pattern, timeoutMs = 15_000) {
      return new Promise((resolve, reject) => {
        let from = 0;
        const check = (): void => {
          for (; from < lines.length; from++) {
            const m = pattern.exec(lines[from]!);
            if (m) { done(); return resolve(m); }
          }
        };
        const timer = setTimeout(() => { done(); reject(new Error(`no line matching ${pattern} in ${timeoutMs} ms; last lines:\n${lines.slice(-15).join('\n')}`)); }, timeoutMs);
        const done = (): void => { clearTimeout(timer); waiters.delete(check); };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Registers a device and runs it until its connection is stable (CONNACK + acknowledged heartbeat). */
export async function startDevice(stack: Stack, id: string, args: string[] = []): Promise<Sim & { apiKey: string }> {
  const apiKey = await stack.registerDevice(id);
  const sim = startSim(stack, ['--device-id', id, '--telemetry-s', '0', ...args], { FLEETWIRE_API_KEY: apiKey });
  try {
    await sim.waitFor(new RegExp(`device=${id} event=stable`));
  } catch (err) {
    await sim.stop();
    throw err;
  }
  return Object.assign(sim, { apiKey });
}

export async function until<T>(fn: () => T | Promise<T>, ok: (v: T) => boolean, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`condition not met in ${timeoutMs} ms: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
