import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import mqttPacket from 'mqtt-packet';
import { Queue } from 'bullmq';
import { createRedis, queues } from '@fleetwire/common';
import { closeOf, connackCode, connect, queuedEnvelopes, REDIS_URL, rawConnect, rawMqtt, sleep, startBroker, telemetry, telemetryOfSize, waitFor, type TestBroker } from './helpers.js';

let t: TestBroker;
// Every test here drives the limits of one address (127.0.0.1: connect attempts, bans,
// flood penalties), so each starts with an empty Redis. The server is this file's alone
// (scripts/vitest/redis-per-file.ts), so emptying it touches no other file.
beforeEach(async () => {
  const r = createRedis(REDIS_URL, { name: 'test-empty' });
  await r.flushdb();
  r.disconnect();
});
afterEach(async () => t?.close());

/** Opens a raw WebSocket; resolves with the HTTP status of a refused upgrade or 101. */
function upgradeStatus(url: string, token = 'x'): Promise<{ status: number; retryAfter?: string; code?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, ['mqtt', `auth.${token}`]);
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, retryAfter: res.headers['retry-after'] as string, code: JSON.parse(body).error.code }));
    });
    ws.on('open', () => { ws.close(); resolve({ status: 101 }); });
    ws.on('error', () => undefined);
  });
}

describe('connection limits', () => {
  it('answers 429 with Retry-After once an address exceeds its connection attempts per window', async () => {
    t = await startBroker({ connectAttemptsPerIp: 3, connectWindowS: 30 });
    for (let i = 0; i < 3; i++) expect((await upgradeStatus(t.url)).status).toBe(101);
    const refused = await upgradeStatus(t.url);
    expect(refused.status).toBe(429);
    expect(refused.code).toBe('BROKER_RATE_LIMITED');
    expect(Number(refused.retryAfter)).toBeGreaterThan(0);
  });

  it('limits concurrent connections per address', async () => {
    t = await startBroker({ maxConnectionsPerIp: 2 });
    const a = new WebSocket(t.url, ['mqtt']);
    const b = new WebSocket(t.url, ['mqtt']);
    await Promise.all([a, b].map((w) => new Promise((r) => w.once('open', r))));
    const refused = await upgradeStatus(t.url);
    expect(refused).toMatchObject({ status: 429, code: 'BROKER_TOO_MANY_CONNECTIONS' });
    a.close();
    await sleep(100);
    expect((await upgradeStatus(t.url)).status).toBe(101);
    b.close();
  });

  it('bans an address after repeated failed authentications, and the ban answers 429', async () => {
    t = await startBroker({ authFailuresBeforeBan: 3, banS: 60 });
    for (let i = 0; i < 3; i++) expect(await connackCode(t.url, 'garbage', 'dev-x')).toBe(4);
    const banned = await upgradeStatus(t.url);
    expect(banned).toMatchObject({ status: 429, code: 'BROKER_IP_BANNED' });
    expect(Number(banned.retryAfter)).toBeGreaterThan(50);
  });

  it('a second connection for the same device replaces the first instead of being refused', async () => {
    t = await startBroker();
    const token = await t.registerDevice('dev-dup');
    const first = await connect(t.url, token, 'dev-dup');
    const closed = closeOf(first);
    const second = await connect(t.url, token, 'dev-dup');
    expect((await closed).code).toBe(4007);
    expect(second.connected).toBe(true);
    await second.endAsync();
  });
});

describe('publish limits', () => {
  it('drops publishes beyond the burst, counts them, and keeps the client connected', async () => {
    t = await startBroker({ publishBurst: 5, publishPerS: 1, abuseDropsBeforeKick: 1000 });
    const dev = await connect(t.url, await t.registerDevice('dev-burst'), 'dev-burst');
    const svc = await connect(t.url, await t.mint({ sub: 'obs', typ: 'service' }), 'service:obs:1');
    await svc.subscribeAsync('devices/dev-burst/telemetry');
    let received = 0;
    svc.on('message', () => received++);
    for (let i = 0; i < 20; i++) dev.publish('devices/dev-burst/telemetry', telemetry(i), { qos: 0 });
    await sleep(500);
    expect(received).toBeGreaterThanOrEqual(5);
    expect(received).toBeLessThan(10);
    expect(dev.connected).toBe(true);
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_rate_limit_drops_total\{limit="publish_messages"\} [1-9]/);
    // Force: a throttled client's DISCONNECT waits behind its queued publishes.
    await Promise.all([dev.endAsync(true), svc.endAsync()]);
  });

  it('limits bytes as well as messages', async () => {
    t = await startBroker({ publishBytesPerS: 2048, publishBytesPerMin: 1_000_000 });
    const dev = await connect(t.url, await t.registerDevice('dev-bytes'), 'dev-bytes');
    const svc = await connect(t.url, await t.mint({ sub: 'obs', typ: 'service' }), 'service:obs:2');
    await svc.subscribeAsync('devices/dev-bytes/telemetry');
    let received = 0;
    svc.on('message', () => received++);
    const big = telemetryOfSize(900);
    for (let i = 0; i < 5; i++) dev.publish('devices/dev-bytes/telemetry', big, { qos: 0 });
    await sleep(400);
    // Two fit in 2 KiB; the next is dropped and the client is not read until the budget refills.
    expect(received).toBeGreaterThanOrEqual(2);
    expect(received).toBeLessThan(5);
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_rate_limit_drops_total\{limit="publish_bytes"\} [1-9]/);
    await Promise.all([dev.endAsync(true), svc.endAsync()]);
  });

  it('disconnects a client that keeps flooding once, with close code 4004, and keeps it out for the penalty time', async () => {
    t = await startBroker({ publishBurst: 5, publishPerS: 1, abuseDropsBeforeKick: 50, floodPenaltyS: 30, authFailuresBeforeBan: 3 });
    const token = await t.registerDevice('dev-flood');
    const dev = await connect(t.url, token, 'dev-flood');
    await dev.subscribeAsync('devices/dev-flood/sys');
    const notices: string[] = [];
    dev.on('message', (_topic, payload) => notices.push(payload.toString()));
    const closed = closeOf(dev);
    for (let i = 0; i < 2000; i++) dev.publish('devices/dev-flood/telemetry', '{"f":1}', { qos: 0 });
    expect((await closed).code).toBe(4004);
    await sleep(200);
    // One notice and one kick, however many publishes were dropped after the threshold.
    expect(notices).toHaveLength(1);
    expect(JSON.parse(notices[0]!)).toMatchObject({ type: 'disconnect', close_code: 4004 });
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_kicks_total\{reason="rate-limited"\} 1\n/);
    expect(t.logs.join('').match(/sustained publish flood/g)).toHaveLength(1);
    for (let i = 0; i < 5; i++) expect(await connackCode(t.url, token, 'dev-flood')).toBe(3);
    // Penalty refusals are not failed authentications: the address is not banned for the others behind it.
    const neighbour = await connect(t.url, await t.registerDevice('dev-neighbour'), 'dev-neighbour');
    await neighbour.endAsync();
  });
});

describe('flood penalty', () => {
  it('keeps out a client kicked for flooding while its authentication was still running', async () => {
    t = await startBroker({ publishBurst: 5, publishPerS: 1, abuseDropsBeforeKick: 20, floodPenaltyS: 30 }, { verifyDelayMs: 500 });
    const token = await t.registerDevice('dev-early');
    const c = await rawMqtt(t.url, token);
    c.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'dev-early', keepalive: 30 });
    await sleep(50); // the CONNECT is being authenticated; the flood follows without waiting for CONNACK
    for (let i = 0; i < 100; i++) c.send({ cmd: 'publish', topic: 'devices/dev-early/telemetry', qos: 0, retain: false, dup: false, payload: '{"f":1}' });
    expect((await c.closed).code).toBe(4004);
    expect(await connackCode(t.url, token, 'dev-early')).toBe(3);
  });
});

describe('QoS 1 over the limits', () => {
  const acked = (c: { packets: { cmd: string; messageId?: number }[] }): Set<number> =>
    new Set(c.packets.filter((p) => p.cmd === 'puback').map((p) => p.messageId!));

  it('holds QoS 1 publishes over the rate limit until they fit, then acknowledges and queues every one', async () => {
    t = await startBroker({ publishBurst: 5, publishPerS: 20, abuseDropsBeforeKick: 50 });
    const c = await rawMqtt(t.url, await t.registerDevice('dev-q1'));
    expect((await rawConnect(c, 'dev-q1')).returnCode).toBe(0);
    const n = 60;
    for (let id = 1; id <= n; id++) {
      c.send({ cmd: 'publish', topic: 'devices/dev-q1/heartbeat', qos: 1, messageId: id, retain: false, dup: false, payload: JSON.stringify({ seq: id, uptime_s: id, rssi: -50, heap_free: 1000, fw: '1.0.0' }) });
    }
    // 5 at once, then 20/s: about 3 s for the rest.
    await waitFor(() => acked(c).size, (k) => k === n, 10_000);
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    const queue = new Queue('heartbeats', { connection: t.redis, prefix: queues.prefix });
    expect(await queuedEnvelopes(queue, ['waiting', 'prioritized', 'delayed'])).toHaveLength(n);
    await queue.close();
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_rate_limit_held_total\{limit="publish_messages"\} [1-9]/);
    expect(metrics).not.toMatch(/fleetwire_broker_rate_limit_drops_total\{limit="publish_messages"\} [1-9]/);
    c.ws.close();
  });

  it('lets a QoS 1 publish larger than the per-second byte budget through once the budget is full, and acknowledges it', async () => {
    t = await startBroker({ publishBytesPerS: 2048, publishBytesPerMin: 1_000_000, maxPacketBytes: 16_384 });
    const c = await rawMqtt(t.url, await t.registerDevice('dev-bigq1'));
    await rawConnect(c, 'dev-bigq1');
    const blob = JSON.stringify({ blob: 'x'.repeat(5000) });
    for (let id = 1; id <= 2; id++) c.send({ cmd: 'publish', topic: 'devices/dev-bigq1/telemetry', qos: 1, messageId: id, retain: false, dup: false, payload: blob });
    // The first fits a full budget; the second waits until the budget has refilled (about 2.5 s at 2 KiB/s).
    await waitFor(() => acked(c).size, (k) => k === 2, 8000);
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    c.ws.close();
  });

  it('still drops QoS 0 publishes over the limit (they carry no delivery promise)', async () => {
    t = await startBroker({ publishBurst: 3, publishPerS: 1, abuseDropsBeforeKick: 1000 });
    const c = await rawMqtt(t.url, await t.registerDevice('dev-q0'));
    await rawConnect(c, 'dev-q0');
    for (let i = 0; i < 10; i++) c.send({ cmd: 'publish', topic: 'devices/dev-q0/telemetry', qos: 0, retain: false, dup: false, payload: '{"i":1}' });
    c.send({ cmd: 'pingreq' });
    await c.next((p) => p.cmd === 'pingresp');
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    const dropped = Number(/fleetwire_broker_rate_limit_drops_total\{limit="publish_messages"\} (\d+)/.exec(metrics)?.[1]);
    expect(dropped).toBeGreaterThanOrEqual(5); // 10 offered, a burst of 3, at most a refill or two in between
    expect(dropped).toBeLessThanOrEqual(7);
    c.ws.close();
  });
});

describe('backpressure', () => {
  it('stops reading a client over its limit, so a flooder costs no CPU while others are served', async () => {
    t = await startBroker({ publishBurst: 10, publishPerS: 5, abuseDropsBeforeKick: 1_000_000 });
    const victim = await connect(t.url, await t.registerDevice('dev-calm'), 'dev-calm');
    const svc = await connect(t.url, await t.mint({ sub: 'obs', typ: 'service' }), 'service:obs:3');
    await svc.subscribeAsync('devices/+/telemetry');
    const latencies: number[] = [];
    svc.on('message', (topic, payload) => {
      if (topic === 'devices/dev-calm/telemetry') latencies.push(Date.now() - (JSON.parse(payload.toString()) as { at: number }).at);
    });
    // The flooder runs in a process of its own, as a real one would: flooding from this
    // process (next to the broker) would spend this process's CPU on the flooder's side, and
    // the latencies below would measure the test rather than the broker.
    const flooder = spawn(process.execPath, [fileURLToPath(new URL('flooder.mjs', import.meta.url)), t.url, await t.registerDevice('dev-flooder'), 'dev-flooder'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    flooder.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const flooderExited = new Promise((r) => flooder.once('exit', r));
    await waitFor(() => out, (o) => o.includes('ready'));
    for (let i = 0; i < 10; i++) {
      victim.publish('devices/dev-calm/telemetry', telemetry(i), { qos: 0 });
      await sleep(100);
    }
    flooder.kill('SIGTERM');
    await flooderExited;
    const offered = Number(out.split('\n')[1]);
    expect(latencies.length).toBe(10);
    expect(Math.max(...latencies)).toBeLessThan(100);
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    const drops = Number(/fleetwire_broker_rate_limit_drops_total\{limit="publish_messages"\} (\d+)/.exec(metrics)?.[1]);
    // Reading stopped, so most of what the flooder sent never reached the broker at all.
    expect(drops).toBeGreaterThan(0);
    expect(drops).toBeLessThan(offered / 2);
    await Promise.all([victim.endAsync(), svc.endAsync()]);
  });
});

describe('input limits', () => {
  it('closes a connection that sends an MQTT packet over the size limit, with code 4005', async () => {
    t = await startBroker({ maxPacketBytes: 4096 });
    const dev = await connect(t.url, await t.registerDevice('dev-big'), 'dev-big');
    const closed = closeOf(dev);
    dev.publish('devices/dev-big/telemetry', JSON.stringify({ blob: 'x'.repeat(8000) }), { qos: 0 });
    const { code, reason } = await closed;
    expect(code).toBe(4005);
    expect(reason).toMatch(/exceeds the 4096-byte limit/);
  });

  it('refuses keepalive outside the configured bounds with a readable close reason', async () => {
    t = await startBroker({ keepaliveMaxS: 600 });
    const token = await t.registerDevice('dev-ka');
    const ws = new WebSocket(t.url, ['mqtt', `auth.${token}`]);
    await new Promise((r) => ws.once('open', r));
    const closed = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
    ws.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'dev-ka', keepalive: 0 }));
    expect(await closed).toEqual({ code: 4006, reason: 'keepalive must be between 5 and 600 s, got 0' });
  });

  it('closes a socket that never sends CONNECT', async () => {
    t = await startBroker({ connectTimeoutMs: 300 });
    const ws = new WebSocket(t.url, ['mqtt']);
    await new Promise((r) => ws.once('open', r));
    const start = Date.now();
    await new Promise((r) => ws.once('close', r));
    expect(Date.now() - start).toBeLessThan(2000);
  });
});
