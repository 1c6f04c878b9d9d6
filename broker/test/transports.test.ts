import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import WebSocket from 'ws';
import { createLogger, createTokenVerifier, loadOrCreateKeySet, saveDevice, signToken, createRedis } from '@fleetwire/common';
import { buildBroker, brokerDefaults, type Broker } from '@fleetwire/broker';
import { nextMessage, REDIS_URL } from './helpers.js';

let broker: Broker;
let port: number;
let tcpPort: number;
let ca: Buffer;
let mint: (sub: string, typ: 'device' | 'service' | 'user') => Promise<string>;
const redis = createRedis(REDIS_URL, { name: 'test-transports' });

beforeAll(async () => {
  const dir = await mkdtemp(join(tmpdir(), 'fw-tls-'));
  // A self-signed certificate for localhost, as a private deployment would have.
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  ca = await readFile(join(dir, 'cert.pem'));
  const { signer, publicJwks } = await loadOrCreateKeySet(join(dir, 'keys'));
  mint = (sub, typ) => signToken(signer, { sub, typ, ttlSeconds: 600, ...(typ === 'user' ? { role: 'admin' as const } : {}) });
  broker = await buildBroker(
    brokerDefaults({ redisUrl: REDIS_URL, port: 0, host: '127.0.0.1', dataDir: dir }),
    { verifier: createTokenVerifier({ keys: publicJwks }), log: createLogger({ level: 'silent' }), tls: { key: await readFile(join(dir, 'key.pem')), cert: ca } },
  );
  ({ port } = await broker.listen());
}, 30_000);
afterAll(async () => {
  await broker.close();
  redis.disconnect();
});

describe('WSS and the service TCP listener', () => {
  it('serves MQTT over TLS WebSocket with the token in the subprotocol', async () => {
    await saveDevice(redis, 'dev-tls');
    const token = await mint('dev-tls', 'device');
    const client = await mqtt.connectAsync(`wss://localhost:${port}/mqtt`, {
      clientId: 'dev-tls', protocolVersion: 4, reconnectPeriod: 0,
      createWebsocket: (url: string) => new WebSocket(url, ['mqtt', `auth.${token}`], { ca }),
    });
    expect(client.connected).toBe(true);
    const health = await new Promise<number>((resolve) => {
      // fetch has no per-request CA option; use https directly.
      import('node:https').then(({ get }) => get({ host: 'localhost', port, path: '/healthz', ca }, (res) => resolve(res.statusCode!)));
    });
    expect(health).toBe(200);
    await client.endAsync();
  });

  it('refuses a client that does not trust the server certificate', async () => {
    const ws = new WebSocket(`wss://localhost:${port}/mqtt`, ['mqtt']);
    const err = await new Promise<Error>((resolve) => ws.once('error', resolve));
    expect(err.message).toMatch(/self[- ]signed|unable to verify/i);
  });
});

describe('service TCP listener on loopback', () => {
  let tcp: Broker;
  beforeAll(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fw-tcp-'));
    const { signer, publicJwks } = await loadOrCreateKeySet(join(dir, 'keys'));
    mint = (sub, typ) => signToken(signer, { sub, typ, ttlSeconds: 600, ...(typ === 'user' ? { role: 'admin' as const } : {}) });
    tcp = await buildBroker(
      brokerDefaults({ redisUrl: REDIS_URL, port: 0, host: '127.0.0.1', tcpPort: 18_830 + Math.floor(Math.random() * 1000), dataDir: dir }),
      { verifier: createTokenVerifier({ keys: publicJwks }), log: createLogger({ level: 'silent' }) },
    );
    ({ port, tcpPort } = (await tcp.listen()) as { port: number; tcpPort: number });
  });
  afterAll(async () => tcp.close());

  it('accepts a service with username "service" and its JWT as password, and it reaches devices on WebSocket', async () => {
    await saveDevice(redis, 'dev-tcp');
    const deviceToken = await mint('dev-tcp', 'device');
    const dev = await mqtt.connectAsync(`ws://127.0.0.1:${port}/mqtt`, {
      clientId: 'dev-tcp', protocolVersion: 4, reconnectPeriod: 0,
      createWebsocket: (url: string) => new WebSocket(url, ['mqtt', `auth.${deviceToken}`]),
    });
    await dev.subscribeAsync('devices/dev-tcp/cmd', { qos: 1 });
    const svc = await mqtt.connectAsync(`mqtt://127.0.0.1:${tcpPort}`, {
      clientId: 'service:rules:1', username: 'service', password: await mint('rules', 'service'), protocolVersion: 4, reconnectPeriod: 0,
    });
    const got = nextMessage(dev, 'devices/dev-tcp/cmd');
    await svc.publishAsync('devices/dev-tcp/cmd', JSON.stringify({ cid: 't', name: 'ping', args: {}, expires_at: Date.now() + 1000 }), { qos: 1 });
    expect(JSON.parse((await got).toString()).cid).toBe('t');
    await Promise.all([dev.endAsync(), svc.endAsync()]);
  });

  it('refuses device and user tokens on the TCP listener', async () => {
    await saveDevice(redis, 'dev-tcp2');
    for (const [clientId, token] of [['dev-tcp2', await mint('dev-tcp2', 'device')], ['user:u:1', await mint('u', 'user')]] as const) {
      const code = await mqtt.connectAsync(`mqtt://127.0.0.1:${tcpPort}`, { clientId, username: 'service', password: token, protocolVersion: 4, reconnectPeriod: 0 })
        .then(async (c) => { await c.endAsync(); return 0; }, (err: { code?: number }) => err.code);
      expect(code).toBe(5);
    }
  });
});
