/**
 * The HTTP side of a test fleet (device-service/test/helpers.ts, ml-bridge/test/helpers.ts):
 * JSON requests, user tokens by role (the bootstrap admin, or a new user of that role), device
 * registration with its token, and reading one metric from a registry.
 */
import { randomBytes } from 'node:crypto';
import type { Redis, Registry, RunningServices } from '@fleetwire/common';

export const ADMIN = { email: 'admin@example.com', password: 'admin-passphrase-for-tests' };

export interface Answer { status: number; headers: Headers; body: Record<string, unknown> & { error?: { code: string; message: string } } }

export type Role = 'admin' | 'operator' | 'viewer';

export interface FleetClient {
  /** `body` is sent as JSON; a string is sent as it is (to test malformed bodies). */
  api(method: string, path: string, opts?: { token?: string; body?: unknown }): Promise<Answer>;
  /** An access token for a user of `role` (admin: the bootstrap admin). */
  tokenFor(role: Role): Promise<string>;
  /** Registers a device (POST /v1/devices) and exchanges its key for a device token. */
  registerDevice(id: string, meta?: { type?: string; location?: string; tags?: string[] }): Promise<{ apiKey: string; token: string }>;
}

/** What every in-process test fleet offers (the services running, their URLs, the client above). */
export interface TestFleet extends FleetClient {
  running: RunningServices;
  /** http://127.0.0.1:<port> */
  url: string;
  /** ws://127.0.0.1:<port>/mqtt */
  mqttUrl: string;
  /** FLEETWIRE_DATA_DIR: the key ring a second process must share to sign and verify the same tokens. */
  dataDir: string;
  /** A connection of the test's own. */
  redis: Redis;
  metrics: Registry;
  logs: string[];
  /** The metric's value in /metrics, 0 when absent. */
  metric(name: string, labels?: string): Promise<number>;
  close(): Promise<void>;
}

/** A client of the fleet at `url` (http://127.0.0.1:<port>); `users` supplies tokens when that process runs no auth service. */
export function fleetClient(url: string, users?: Pick<FleetClient, 'tokenFor'>): FleetClient {
  async function api(method: string, path: string, o: { token?: string; body?: unknown } = {}): Promise<Answer> {
    const headers: Record<string, string> = {};
    if (o.token) headers.authorization = `Bearer ${o.token}`;
    if (o.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(url + path, { method, headers, body: o.body === undefined ? undefined : typeof o.body === 'string' ? o.body : JSON.stringify(o.body) });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) as Answer['body'] : {} };
  }

  let adminToken: string | undefined;
  let made = 0;
  async function tokenFor(role: Role): Promise<string> {
    if (users) return users.tokenFor(role);
    const login = async (email: string, password: string) => (await api('POST', '/v1/auth/login', { body: { email, password } })).body.access_token as string;
    adminToken ??= await login(ADMIN.email, ADMIN.password);
    if (role === 'admin') return adminToken;
    // Unique per fleet too: two fleets may share one Redis (a restart).
    const email = `${role}-${made++}-${randomBytes(3).toString('hex')}@example.com`;
    const created = await api('POST', '/v1/users', { token: adminToken, body: { email, password: 'a-long-enough-passphrase', role } });
    if (created.status !== 201) throw new Error(`creating a ${role}: ${JSON.stringify(created.body)}`);
    return login(email, 'a-long-enough-passphrase');
  }

  async function registerDevice(id: string, meta: { type?: string; location?: string; tags?: string[] } = {}) {
    const reg = await api('POST', '/v1/devices', { token: await tokenFor('admin'), body: { id, type: 'sensor', ...meta } });
    if (reg.status !== 201) throw new Error(`registering ${id}: ${JSON.stringify(reg.body)}`);
    const apiKey = reg.body.api_key as string;
    const tok = await api('POST', '/v1/devices/token', { body: { api_key: apiKey } });
    return { apiKey, token: tok.body.token as string };
  }

  return { api, tokenFor, registerDevice };
}

/** The value of metric `name` (with exactly `labels`, e.g. `queue="x"`) in `registry`; 0 when absent. */
export async function metricValue(registry: Registry, name: string, labels = ''): Promise<number> {
  const text = await registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line ? Number(line.split(' ').pop()) : 0;
}
