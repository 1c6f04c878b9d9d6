/**
 * The alert webhook against a local HTTP server standing in for the receiver: retries with
 * backoff until delivered, a verifiable signature, a dead receiver that does not hold up
 * alerts on the topic, a full queue that drops the oldest, and a refusal that is not retried.
 *
 * The heartbeat part is the real writer of last_seen, threshold_ms and the silence-due
 * index; lastHeartbeat() writes what its contract says a heartbeat writes.
 */
import { createHmac } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { createLogger, createMetricsRegistry, redisKeys, signToken, type Redis } from '@fleetwire/common';
import type { AlertChange } from '../src/alert-change.js';
import { loadDeviceServiceConfig } from '../src/config.js';
import { AlertWebhook } from '../src/webhook.js';
import { connect, startFleet, waitFor, type Fleet } from './helpers.js';

const SECRET = 'a-webhook-secret-for-tests';

interface Received { headers: IncomingMessage['headers']; body: string; at: number }

/** A webhook receiver: records every POST and answers with `respond` (which may never answer). */
async function receiver(): Promise<{ server: Server; url: string; received: Received[]; respond: (req: Received, res: ServerResponse) => void; setRespond(fn: (req: Received, res: ServerResponse) => void): void }> {
  const received: Received[] = [];
  const r = {
    received,
    respond: (_req: Received, res: ServerResponse) => { res.writeHead(204).end(); },
    setRespond(fn: (req: Received, res: ServerResponse) => void) { r.respond = fn; },
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const got = { headers: req.headers, body: Buffer.concat(chunks).toString(), at: Date.now() };
      received.push(got);
      r.respond(got, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(r, { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/fleetwire` });
}

function change(id: string, at = Date.now()): AlertChange {
  return { device_id: id, kind: 'silence', state: 'raised', at, last_seen: at - 5000, threshold_ms: 3000 };
}

async function lastHeartbeat(redis: Redis, id: string, at: number, thresholdMs: number): Promise<void> {
  await redis.multi()
    .hset(redisKeys.deviceState(id), { last_seen: String(at), threshold_ms: String(thresholdMs) })
    .zadd(redisKeys.silenceDue, at + thresholdMs, id)
    .exec();
}

describe('alert webhook from the device service', () => {
  let hook: Awaited<ReturnType<typeof receiver>>;
  let fleet: Fleet;
  let watcher: MqttClient;
  const onTopic: Array<{ change: AlertChange; at: number }> = [];

  beforeAll(async () => {
    hook = await receiver();
    fleet = await startFleet({
      SILENCE_CHECK_MS: '100', ALERT_WEBHOOK_URL: hook.url, ALERT_WEBHOOK_SECRET: SECRET,
      ALERT_WEBHOOK_BACKOFF_MS: '100', ALERT_WEBHOOK_ATTEMPTS: '4', ALERT_WEBHOOK_TIMEOUT_MS: '1500',
    });
    const keys = await fleet.running.deps.keyRing();
    watcher = await connect(fleet.mqttUrl, await signToken(keys.signer, { sub: 'watcher', typ: 'service', ttlSeconds: 600 }), 'service:watcher:1');
    watcher.on('message', (_t, p) => onTopic.push({ change: JSON.parse(p.toString()) as AlertChange, at: Date.now() }));
    await watcher.subscribeAsync('fleet/alerts/+', { qos: 1 });
  });

  afterAll(async () => {
    await watcher?.endAsync();
    await fleet?.close();
    hook?.server.closeAllConnections();
    hook?.server.close();
  });

  it('retries a failing receiver with doubling backoff until it takes the change, signed and with one delivery id', async () => {
    let failures = 2;
    hook.setRespond((_req, res) => { res.writeHead(failures-- > 0 ? 503 : 200).end(); });
    await fleet.registerDevice('hooked-1');
    await lastHeartbeat(fleet.redis, 'hooked-1', Date.now() - 4000, 3000);

    await waitFor(() => hook.received.length, (n) => n === 3, 5000);
    const [first, second, third] = hook.received as [Received, Received, Received];
    // Backoff 100 ms, then 200 ms.
    expect(second.at - first.at).toBeGreaterThanOrEqual(90);
    expect(third.at - second.at).toBeGreaterThanOrEqual(190);
    expect(new Set(hook.received.map((r) => r.headers['x-fleetwire-delivery'])).size).toBe(1);

    // The receiver checks the signature over the body it got, as documented in webhook.ts.
    expect(third.headers['content-type']).toBe('application/json');
    const expected = `sha256=${createHmac('sha256', SECRET).update(third.body).digest('hex')}`;
    expect(third.headers['x-fleetwire-signature']).toBe(expected);
    const body = JSON.parse(third.body) as AlertChange;
    expect(body).toMatchObject({ device_id: 'hooked-1', kind: 'silence', state: 'raised', threshold_ms: 3000 });
    // The same change as on the topic.
    expect(onTopic.find((m) => m.change.device_id === 'hooked-1')?.change).toEqual(body);

    expect(await fleet.metric('fleetwire_device_alert_webhook_total', 'outcome="retried"')).toBe(2);
    expect(await fleet.metric('fleetwire_device_alert_webhook_total', 'outcome="delivered"')).toBe(1);
  });

  it('does not delay alerts on the topic while the receiver hangs', async () => {
    const hanging: ServerResponse[] = [];
    hook.setRespond((_req, res) => { hanging.push(res); });
    await fleet.registerDevice('hooked-2');
    await fleet.registerDevice('hooked-3');
    const seenBefore = hook.received.length;
    await lastHeartbeat(fleet.redis, 'hooked-2', Date.now() - 4000, 3000);
    await waitFor(() => hook.received.length, (n) => n > seenBefore);
    await lastHeartbeat(fleet.redis, 'hooked-3', Date.now() - 4000, 3000);

    // hooked-3 is raised and published while the webhook still waits on hooked-2's POST.
    const published = await waitFor(() => onTopic.find((m) => m.change.device_id === 'hooked-3'), (m) => m !== undefined, 3000);
    expect(published!.at - published!.change.at).toBeLessThan(1000);
    expect(hanging.length).toBe(1);
    expect(hook.received.some((r) => r.body.includes('"hooked-3"'))).toBe(false);

    // Once the receiver answers again, both are delivered, in order.
    hook.setRespond((_req, res) => { res.writeHead(200).end(); });
    for (const res of hanging) res.writeHead(500).end();
    await waitFor(() => hook.received.filter((r) => r.body.includes('"hooked-3"')).length, (n) => n === 1, 5000);
    const order = hook.received.slice(seenBefore).map((r) => (JSON.parse(r.body) as AlertChange).device_id);
    expect(order.lastIndexOf('hooked-2')).toBeLessThan(order.indexOf('hooked-3'));
  });
});

describe('alert webhook queue', () => {
  const log = createLogger({ level: 'silent', name: 'webhook-test' });
  let hook: Awaited<ReturnType<typeof receiver>>;
  beforeAll(async () => { hook = await receiver(); });
  afterAll(() => { hook.server.closeAllConnections(); hook.server.close(); });

  const webhook = (over: Partial<ConstructorParameters<typeof AlertWebhook>[0]> = {}) => {
    const metricsRegistry = createMetricsRegistry({ defaultMetrics: false });
    const w = new AlertWebhook({ url: hook.url, secret: '', attempts: 3, backoffMs: 10, timeoutMs: 1000, queueMax: 100, log, metricsRegistry, ...over });
    const count = async (outcome: string) => (await metricsRegistry.getSingleMetric('fleetwire_device_alert_webhook_total')!.get()).values
      .find((v) => v.labels.outcome === outcome)?.value ?? 0;
    return { w, count };
  };

  it('drops the oldest waiting change when the queue is full, and counts it', async () => {
    hook.received.length = 0;
    hook.setRespond((_req, res) => { res.writeHead(200).end(); });
    const { w, count } = webhook({ queueMax: 2 });
    w.enqueue(['q-1', 'q-2', 'q-3', 'q-4'].map((id) => change(id)));
    await waitFor(() => count('delivered'), (n) => n === 2);
    expect(hook.received.map((r) => (JSON.parse(r.body) as AlertChange).device_id)).toEqual(['q-3', 'q-4']);
    expect(await count('dropped')).toBe(2);
    expect(hook.received[0]!.headers['x-fleetwire-signature']).toBeUndefined();
    await w.close();
  });

  it('drops a change the receiver refuses (4xx) without retrying it, and delivers the next', async () => {
    hook.received.length = 0;
    hook.setRespond((req, res) => { res.writeHead(req.body.includes('"bad-1"') ? 422 : 200).end(); });
    const { w, count } = webhook();
    w.enqueue([change('bad-1'), change('good-1')]);
    await waitFor(() => count('delivered'), (n) => n === 1);
    expect(hook.received.map((r) => (JSON.parse(r.body) as AlertChange).device_id)).toEqual(['bad-1', 'good-1']);
    expect(await count('dropped')).toBe(1);
    expect(await count('retried')).toBe(0);
    await w.close();
  });

  it('gives up after the last try when the receiver cannot be reached', async () => {
    const { w, count } = webhook({ url: 'http://127.0.0.1:1/unreachable', attempts: 3 });
    w.enqueue([change('lost-1')]);
    await waitFor(() => count('dropped'), (n) => n === 1);
    expect(await count('retried')).toBe(2);
    await w.close();
  });

  it('refuses a short ALERT_WEBHOOK_SECRET at start-up without printing it', () => {
    let message = '';
    try {
      loadDeviceServiceConfig({ ALERT_WEBHOOK_URL: 'http://127.0.0.1:9/x', ALERT_WEBHOOK_SECRET: 'shortsecret' });
    } catch (err) {
      message = (err as Error).message + JSON.stringify(err);
    }
    expect(message).toMatch(/ALERT_WEBHOOK_SECRET must be at least 16 characters/);
    expect(message).not.toContain('shortsecret');
  });
});
