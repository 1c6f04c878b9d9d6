/**
 * Adding a service is a folder plus its line in the root package.json `workspaces`: a
 * minimal service in a scratch checkout is found, runs next to the real broker and auth
 * service in one process on one port, and shows up in /readyz, the spec (GET /v1/spec),
 * the usage text and the drain.
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, repoRoot, startServices, type AnyService, type RunningServices } from '@fleetwire/common';
import { authService } from '@fleetwire/auth-service';
import { brokerService } from '@fleetwire/broker';
import { discoverServices, usage } from '../src/services.js';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
const REDIS_URL = process.env.REDIS_URL!;
const ADMIN = { email: 'contract-admin@example.com', password: 'contract-admin-passphrase' };

/** The whole of a new service: what a developer writes in its folder. */
const HELLO_SERVICE = `
export const events = [];
export const service = {
  name: 'hello',
  summary: 'greets whoever asks',
  loadConfig: (env) => ({ greeting: env.HELLO_GREETING ?? 'hello' }),
  spec: async (config) => ({ greeting: config.greeting }),
  async build(config, deps) {
    deps.http.get('/v1/hello', async () => ({ greeting: config.greeting }));
    return {
      readiness: { warm: async () => true },
      start: async (port) => [\`Hello:               http://localhost:\${port}/v1/hello\`],
      drain: async () => { events.push('drained'); },
      close: async () => { events.push('closed'); },
    };
  },
  commands: [{ name: 'hello-say', usage: 'fleetwire hello-say NAME       print a greeting', run: async () => 0 }],
};
`;

let scratch: string;
let hello: AnyService;
let helloEvents: string[];
let running: RunningServices;
let base: string;

beforeAll(async () => {
  // The first admin is created only into an empty user store: this file's Redis starts empty.
  scratch = await mkdtemp(join(tmpdir(), 'fw-contract-'));
  await mkdir(join(scratch, 'hello-service'));
  await writeFile(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', workspaces: ['common', 'hello-service'] }));
  await mkdir(join(scratch, 'common'));
  await writeFile(join(scratch, 'common', 'package.json'), JSON.stringify({ name: '@fleetwire/common' }));
  await writeFile(join(scratch, 'hello-service', 'package.json'), JSON.stringify({ name: 'hello-service', fleetwire: { service: 'service.mjs' } }));
  await writeFile(join(scratch, 'hello-service', 'service.mjs'), HELLO_SERVICE);
  const found = await discoverServices(scratch);
  hello = found[0]!;
  helloEvents = (await import(join(scratch, 'hello-service', 'service.mjs')) as { events: string[] }).events;

  const dataDir = await mkdtemp(join(tmpdir(), 'fw-contract-data-'));
  running = await startServices([brokerService, authService, hello], {
    REDIS_URL, FLEETWIRE_DATA_DIR: dataDir, PORT: '0', HOST: '127.0.0.1', HELLO_GREETING: 'ahoy',
    FLEETWIRE_ADMIN_EMAIL: ADMIN.email, FLEETWIRE_ADMIN_PASSWORD: ADMIN.password,
  }, { version: '9.9.9-test', log: createLogger({ level: 'silent', name: 'contract-test' }) });
  base = `http://127.0.0.1:${running.port}`;
});
afterAll(async () => running?.stop());

describe('a new service', () => {
  it('is found from its folder and its workspaces line, and only then', async () => {
    expect((await discoverServices(scratch)).map((s) => s.name)).toEqual(['hello']);
    await writeFile(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', workspaces: ['common'] }));
    expect(await discoverServices(scratch)).toEqual([]);
    await writeFile(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', workspaces: ['common', 'hello-service'] }));
  });

  it('serves its routes on the one port, next to the broker and the auth service', async () => {
    expect(await (await fetch(`${base}/v1/hello`)).json()).toEqual({ greeting: 'ahoy' });
    expect((await fetch(`${base}/.well-known/jwks.json`)).status).toBe(200);
    expect(running.banner).toContain(`Hello:               http://localhost:${running.port}/v1/hello`);
  });

  it('is in /readyz under its own name', async () => {
    const res = await fetch(`${base}/readyz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ready', checks: { redis: true, 'broker.accepting': true, 'hello.warm': true } });
  });

  it('has its section in the spec (GET /v1/spec)', async () => {
    const login = await fetch(`${base}/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ADMIN) });
    const { access_token: token } = await login.json() as { access_token: string };
    const spec = await (await fetch(`${base}/v1/spec`, { headers: { authorization: `Bearer ${token}` } })).json() as Record<string, unknown>;
    expect(spec).toMatchObject({ version: '9.9.9-test', hello: { greeting: 'ahoy' }, broker: { features: { cluster: 'none' } }, 'auth-service': { first_admin_from_env: true } });
  });

  it('is in the usage text, with the commands it adds', () => {
    const text = usage('9.9.9', [brokerService, authService, hello]);
    expect(text).toContain('fleetwire up                      run every service in one process on one port (PORT, default 8080): broker, auth-service, hello');
    expect(text).toMatch(/fleetwire hello\s+this service alone: greets whoever asks/);
    expect(text).toContain('fleetwire hello-say NAME');
  });

  it('is drained and closed with the rest', async () => {
    await running.stop();
    expect(helloEvents).toEqual(['drained', 'closed']);
    await expect(fetch(`${base}/readyz`)).rejects.toThrow();
  });
});

describe('this checkout', () => {
  it('holds the broker, the auth service, the device service and the ML bridge, in workspaces order', async () => {
    expect((await discoverServices(repoRoot)).map((s) => s.name)).toEqual(['broker', 'auth-service', 'device-service', 'ml-bridge']);
  });
});
