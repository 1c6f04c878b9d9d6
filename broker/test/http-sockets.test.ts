/**
 * Sockets on the one HTTP + WebSocket port: slow or silent clients are closed by the
 * HTTP timeouts, one address cannot hold more than HTTP_MAX_SOCKETS_PER_IP sockets,
 * and upgraded MQTT connections are touched by neither.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBrokerConfig } from '@fleetwire/broker';
import { connect, sleep, startBroker, type TestBroker } from './helpers.js';

const timeouts = { httpHeadersTimeoutMs: 500, httpRequestTimeoutMs: 1000, httpKeepAliveTimeoutMs: 500, httpConnectionsCheckIntervalMs: 100 };

/** A raw TCP socket to the server; `closedAt` resolves with the ms from connect to close. */
interface Probe { socket: net.Socket; closedAt: Promise<number>; received: () => string }
const opened: net.Socket[] = [];
afterEach(() => {
  for (const s of opened.splice(0)) s.destroy();
});

async function probe(port: number, send?: string): Promise<Probe> {
  const socket = net.connect(port, '127.0.0.1');
  opened.push(socket);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const started = Date.now();
  let received = '';
  socket.on('data', (d: Buffer) => (received += d.toString('latin1'))); // also keeps the socket flowing, so 'close' is seen
  socket.on('error', () => undefined);
  const closedAt = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - started)));
  if (send) socket.write(send);
  return { socket, closedAt, received: () => received };
}

const within = <T>(p: Promise<T>, ms: number): Promise<T | 'still open'> =>
  Promise.race([p, sleep(ms).then(() => 'still open' as const)]);

describe('slow and silent HTTP clients', () => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startBroker(timeouts);
  });
  afterAll(async () => t.close());

  it('closes sockets that sent part of a request line and then nothing, within the headers timeout', async () => {
    const probes = await Promise.all(Array.from({ length: 20 }, () => probe(t.port, 'GET /mq')));
    // headers timeout + checking interval + scheduling slack
    const closed = await Promise.all(probes.map((p) => within(p.closedAt, 1500)));
    expect(closed.filter((c) => c === 'still open')).toHaveLength(0);
    for (const ms of closed) expect(ms).toBeGreaterThanOrEqual(400);
    expect(probes[0]!.received()).toMatch(/^HTTP\/1\.1 408 /);
  });

  it('closes a socket that connects and sends nothing, within the headers timeout', async () => {
    const p = await probe(t.port);
    expect(await within(p.closedAt, 1500)).not.toBe('still open');
  });

  it('closes a request whose body never finishes, within the request timeout', async () => {
    const p = await probe(t.port, 'POST /v1/nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a":');
    // Headers completed, so only the request timeout (1000 ms) applies.
    const ms = await within(p.closedAt, 2500);
    expect(ms).not.toBe('still open');
    expect(ms).toBeGreaterThanOrEqual(900);
  });

  it('closes an idle keep-alive socket after the keep-alive timeout', async () => {
    const p = await probe(t.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    // Node keeps the socket about 1 s longer than keepAliveTimeout (a buffer against races with the client).
    expect(await within(p.closedAt, timeouts.httpKeepAliveTimeoutMs + 2000)).not.toBe('still open');
    expect(p.received()).toMatch(/^HTTP\/1\.1 200 /);
  });

  it('keeps an idle MQTT-over-WebSocket connection open past every HTTP timeout', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-idle'), 'dev-idle', { keepalive: 60 });
    let closed = false;
    dev.on('close', () => (closed = true));
    await sleep(timeouts.httpRequestTimeoutMs + timeouts.httpHeadersTimeoutMs + timeouts.httpKeepAliveTimeoutMs + 500);
    expect(closed).toBe(false);
    const beat = { seq: 1, uptime_s: 3, rssi: -50, heap_free: 100_000, fw: '1.0.0' };
    await dev.publishAsync('devices/dev-idle/heartbeat', JSON.stringify(beat), { qos: 1 }); // PUBACK after the idle time
    await dev.endAsync();
  });
});

describe('sockets per address', () => {
  it('closes at once a socket beyond HTTP_MAX_SOCKETS_PER_IP from one address, and counts it', async () => {
    const t = await startBroker({ httpMaxSocketsPerIp: 5, maxConnectionsPerIp: 4 });
    try {
      const held = await Promise.all(Array.from({ length: 5 }, () => probe(t.port)));
      const extra = await probe(t.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      expect(await within(extra.closedAt, 300)).not.toBe('still open');
      expect(extra.received()).toBe(''); // no HTTP answer: the socket is refused before any parsing
      for (const p of held) expect(p.socket.destroyed).toBe(false);

      // A freed slot is usable again.
      held[0]!.socket.destroy();
      await held[0]!.closedAt;
      await sleep(50);
      const next = await probe(t.port);
      expect(await within(next.closedAt, 300)).toBe('still open');

      for (const p of [...held, next]) p.socket.destroy();
      await sleep(50);
      const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
      expect(metrics).toMatch(/^fleetwire_http_sockets_refused_total\{reason="per_ip"\} 1$/m);
    } finally {
      await t.close();
    }
  });

  it('does not cap the sockets of a trusted proxy, which carries every client behind it', async () => {
    const t = await startBroker({ httpMaxSocketsPerIp: 5, maxConnectionsPerIp: 4, trustedProxies: ['127.0.0.1'] });
    try {
      const probes = await Promise.all(Array.from({ length: 8 }, () => probe(t.port)));
      const closed = await Promise.all(probes.map((p) => within(p.closedAt, 300)));
      expect(closed.every((c) => c === 'still open')).toBe(true);
      for (const p of probes) p.socket.destroy();
    } finally {
      await t.close();
    }
  });
});

describe('over TLS', () => {
  let t: TestBroker;
  let ca: Buffer;
  beforeAll(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fw-tls-sockets-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    ca = await readFile(join(dir, 'cert.pem'));
    t = await startBroker({ ...timeouts, httpMaxSocketsPerIp: 3, maxConnectionsPerIp: 2 }, { tls: { key: await readFile(join(dir, 'key.pem')), cert: ca } });
  });
  afterAll(async () => t.close());

  const get = (): Promise<number> => new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: t.port, path: '/healthz', ca, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    }).on('error', reject);
  });

  it('closes a socket that never starts its TLS handshake, within the headers timeout', async () => {
    const p = await probe(t.port);
    expect(await within(p.closedAt, 1500)).not.toBe('still open');
  });

  it('frees a slot when a TLS connection ends, and refuses the socket beyond the cap', async () => {
    for (let i = 0; i < 6; i++) expect(await get()).toBe(200); // six in a row with a cap of three: each freed its slot
    const held = await Promise.all(Array.from({ length: 3 }, () => probe(t.port)));
    const extra = await probe(t.port);
    expect(await within(extra.closedAt, 300)).not.toBe('still open');
    for (const p of held) p.socket.destroy();
  });
});

describe('socket settings', () => {
  it('refuses to start when the socket cap leaves no room above the broker\'s connection limit, or timeouts contradict each other', () => {
    expect(loadBrokerConfig({}).httpMaxSocketsPerIp).toBeGreaterThan(loadBrokerConfig({}).maxConnectionsPerIp);
    expect(() => loadBrokerConfig({ HTTP_MAX_SOCKETS_PER_IP: '1000' })).toThrow(/HTTP_MAX_SOCKETS_PER_IP \(1000\) must be larger than BROKER_MAX_CONNECTIONS_PER_IP \(1000\)/);
    expect(() => loadBrokerConfig({ HTTP_HEADERS_TIMEOUT_MS: '40000' })).toThrow(/HTTP_HEADERS_TIMEOUT_MS \(40000\) must not exceed HTTP_REQUEST_TIMEOUT_MS \(30000\)/);
    expect(loadBrokerConfig({ HTTP_MAX_SOCKETS_PER_IP: '5000', BROKER_MAX_CONNECTIONS_PER_IP: '4000' }).httpMaxSocketsPerIp).toBe(5000);
  });
});
