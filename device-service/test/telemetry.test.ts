/**
 * Telemetry: devices publish through the real broker, the real queue carries it to the
 * device service, Redis keeps it; read back through GET /v1/devices/{id}/telemetry. The
 * firmware simulator publishes in its real format once.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedis, queues, redisKeys } from '@fleetwire/common';
import { TelemetryStore } from '../src/telemetry.js';
import { REDIS_URL, startFleet, waitFor, type Answer, type Fleet } from './helpers.js';

const MAX_LEN = 20;
const MAX_AGE_S = 60;
const SIM = fileURLToPath(new URL('../../firmware-esp32/target/debug/fleetwire-sim', import.meta.url));

let f: Fleet;
let queue: Queue;
let viewer: string;

beforeAll(async () => {
  // Redis trims a stream in whole nodes; small nodes make the length cap visible with a few dozen messages.
  const setup = createRedis(REDIS_URL, { name: 'telemetry-test-setup' });
  await setup.config('SET', 'stream-node-max-entries', '10');
  setup.disconnect();
  f = await startFleet({ TELEMETRY_MAX_LEN: String(MAX_LEN), TELEMETRY_MAX_AGE_S: String(MAX_AGE_S) });
  queue = new Queue('telemetry', { connection: createRedis(REDIS_URL, { name: 'telemetry-test-queue', maxRetriesPerRequest: null }), prefix: queues.prefix });
  viewer = await f.tokenFor('viewer');
});
afterAll(async () => {
  await queue?.close();
  await f?.close();
});

interface Item { id: string; at: number; received_at: number; readings: Array<{ name: string; value: number; unit: string }> }
interface Page { device_id: string; latest: Record<string, { value: number; unit: string; at: number; received_at: number }>; items: Item[]; next_cursor: string | null }

const readings = (value: number) => [{ name: 'temperature', value, unit: 'Cel' }, { name: 'humidity', value: value + 0.5, unit: '%RH' }];

async function publish(device: MqttClient, id: string, value: number, at = Date.now()): Promise<void> {
  await device.publishAsync(`devices/${id}/telemetry`, JSON.stringify({ at, readings: readings(value) }), { qos: 1 });
}

async function read(id: string, query = ''): Promise<Answer & { body: Answer['body'] & Partial<Page> }> {
  return f.api('GET', `/v1/devices/${id}/telemetry${query ? `?${query}` : ''}`, { token: viewer }) as Promise<Answer & { body: Answer['body'] & Partial<Page> }>;
}

/** Waits until a stored message of `id` has temperature `value`; returns the page. */
async function stored(id: string, value: number, query = ''): Promise<Page> {
  const res = await waitFor(() => read(id, query), (r) => r.status === 200 && r.body.items!.some((i) => i.readings[0]?.value === value));
  return res.body as unknown as Page;
}

const temperatures = (items: Item[]) => items.map((i) => i.readings[0]!.value);
/** The ms of an item's stream position, which since and until bound. */
const positionMs = (item: Item) => Number(item.id.split('-')[0]);

/** Orders stream ids as Redis does. */
function compareIds(a: string, b: string): number {
  const [am, as] = a.split('-').map(BigInt) as [bigint, bigint];
  const [bm, bs] = b.split('-').map(BigInt) as [bigint, bigint];
  return am === bm ? Number(as - bs) : Number(am - bm);
}

/** A contract-valid job as the broker would enqueue it. */
function envelope(deviceId: string, value: number, receivedAt = Date.now()) {
  return { cid: randomUUID(), device_id: deviceId, topic_class: 'telemetry', payload: { at: receivedAt - 5, readings: readings(value) }, received_at: receivedAt, node: 'test-node' };
}

describe('telemetry from a device', () => {
  it('is stored and read back newest first with the latest value per reading; a viewer may read it', async () => {
    const id = 'tele-basic';
    const device = await f.connectDevice(id);
    try {
      const at = Date.now() - 1000;
      let page: Page | undefined;
      for (let v = 1; v <= 3; v++) {
        await publish(device, id, v, at + v);
        page = await stored(id, v);
      }
      page = page!;
      expect(page.device_id).toBe(id);
      expect(temperatures(page.items)).toEqual([3, 2, 1]);
      expect(page.items[0]).toEqual({
        id: `${page.items[0]!.received_at}-${page.items[0]!.id.split('-')[1]}`, at: at + 3, received_at: expect.any(Number),
        readings: [{ name: 'temperature', value: 3, unit: 'Cel' }, { name: 'humidity', value: 3.5, unit: '%RH' }],
      });
      expect(page.items[0]!.received_at).toBeGreaterThanOrEqual(page.items[1]!.received_at);
      expect(page.latest).toEqual({
        temperature: { value: 3, unit: 'Cel', at: at + 3, received_at: page.items[0]!.received_at },
        humidity: { value: 3.5, unit: '%RH', at: at + 3, received_at: page.items[0]!.received_at },
      });
      expect(page.next_cursor).toBeNull();
      expect(await f.metric('fleetwire_device_telemetry_total', 'outcome="stored"')).toBeGreaterThanOrEqual(3);
    } finally {
      await device.endAsync();
    }
  });

  it('pages with limit and cursor in both orders, and bounds received_at with since and until', async () => {
    const id = 'tele-pages';
    const device = await f.connectDevice(id);
    try {
      for (let v = 0; v < 12; v++) await publish(device, id, v);
      // In stream order, newest first: received_at order but for messages the consumer took in swapped order.
      const all = (await waitFor(() => read(id, 'limit=1000'), (r) => r.body.items?.length === 12)).body.items!;
      expect(temperatures(all).sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
      expect(all.map((i) => i.id)).toEqual(all.map((i) => i.id).sort((x, y) => compareIds(y, x)));

      // Newest first, five at a time, until next_cursor is null.
      const seen: number[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const res = await read(id, `limit=5${cursor ? `&cursor=${cursor}` : ''}`);
        seen.push(...temperatures(res.body.items!));
        cursor = res.body.next_cursor!;
        pages++;
      } while (cursor);
      expect(seen).toEqual(temperatures(all));
      expect(pages).toBe(3);

      // Oldest first.
      const oldest = [...all].reverse();
      const first = await read(id, 'order=asc&limit=5');
      expect(first.body.items).toEqual(oldest.slice(0, 5));
      const second = await read(id, `order=asc&limit=5&cursor=${first.body.next_cursor}`);
      expect(second.body.items).toEqual(oldest.slice(5, 10));

      // since/until are inclusive bounds on the position's ms (received_at), also together with a cursor.
      const since = positionMs(all[8]!);
      const until = positionMs(all[3]!);
      const inRange = all.filter((i) => positionMs(i) >= since && positionMs(i) <= until);
      expect(inRange.length).toBeGreaterThanOrEqual(6);
      const bounded = await read(id, `since=${since}&until=${until}&limit=1000`);
      expect(temperatures(bounded.body.items!)).toEqual(temperatures(inRange));
      const head = await read(id, `since=${since}&until=${until}&limit=2`);
      const rest = await read(id, `since=${since}&until=${until}&limit=1000&cursor=${head.body.next_cursor}`);
      expect([...temperatures(head.body.items!), ...temperatures(rest.body.items!)]).toEqual(temperatures(inRange));
      expect((await read(id, `since=${positionMs(all[0]!) + 1}`)).body.items).toEqual([]);
      const ascBounded = await read(id, `order=asc&since=${since}&until=${until}&limit=1000`);
      expect(ascBounded.body.items).toEqual([...inRange].reverse());
    } finally {
      await device.endAsync();
    }
  });

  it('keeps about TELEMETRY_MAX_LEN messages per device, the newest', async () => {
    const id = 'tele-capped';
    const device = await f.connectDevice(id);
    try {
      const storedBefore = await f.metric('fleetwire_device_telemetry_total', 'outcome="stored"');
      for (let v = 0; v < 45; v++) await publish(device, id, v);
      await waitFor(() => f.metric('fleetwire_device_telemetry_total', 'outcome="stored"'), (n) => n === storedBefore + 45);
      const page = (await read(id, 'limit=1000')).body as unknown as Page;
      // Trimmed in whole stream nodes (10 entries here): never below the cap, less than a node above it.
      expect(page.items.length).toBeGreaterThanOrEqual(MAX_LEN);
      expect(page.items.length).toBeLessThan(MAX_LEN + 10);
      expect(await f.redis.xlen(redisKeys.telemetry(id))).toBe(page.items.length);
      // The oldest went, the newest stayed (the middle depends on where the nodes were cut).
      const kept = temperatures(page.items);
      for (let v = 0; v < 10; v++) expect(kept).not.toContain(v);
      for (let v = 35; v < 45; v++) expect(kept).toContain(v);
    } finally {
      await device.endAsync();
    }
  });

  it('a payload that fails the schema is refused at the broker and counted, nothing is stored, and later good ones are', async () => {
    const id = 'tele-refused';
    const device = await f.connectDevice(id);
    const refusedBefore = await f.metric('fleetwire_broker_ingress_rejected_total', 'topic_class="telemetry"');
    try {
      const topic = `devices/${id}/telemetry`;
      // The firmware's old flat format, a reading name with capitals, and no readings at all.
      await device.publishAsync(topic, JSON.stringify({ temperature_c: 21.5, at: Date.now() }), { qos: 1 });
      await device.publishAsync(topic, JSON.stringify({ at: Date.now(), readings: [{ name: 'Temp', value: 1, unit: 'Cel' }] }), { qos: 1 });
      await device.publishAsync(topic, JSON.stringify({ at: Date.now(), readings: [] }), { qos: 1 });
      await publish(device, id, 7);
      const page = await stored(id, 7);
      expect(temperatures(page.items)).toEqual([7]);
      expect(await f.metric('fleetwire_broker_ingress_rejected_total', 'topic_class="telemetry"')).toBe(refusedBefore + 3);
    } finally {
      await device.endAsync();
    }
  });
});

describe('telemetry jobs in the queue', () => {
  it('a job that breaks the contract is counted as invalid and the consumer keeps going', async () => {
    const id = 'tele-contract';
    await f.registerDevice(id);
    const invalidBefore = await f.metric('fleetwire_queue_jobs_total', 'queue="telemetry",outcome="invalid"');
    const good = envelope(id, 1);
    await queue.add('telemetry', { ...good, cid: randomUUID(), payload: { at: 1, readings: [{ name: 'x', value: 'warm', unit: '' }] } });
    await queue.add('telemetry', { ...good, cid: randomUUID(), topic_class: 'heartbeat' });
    await queue.add('telemetry', { device_id: id, payload: good.payload });
    await queue.add('telemetry', good);
    const page = await stored(id, 1);
    expect(page.items).toHaveLength(1);
    await waitFor(() => f.metric('fleetwire_queue_jobs_total', 'queue="telemetry",outcome="invalid"'), (n) => n === invalidBefore + 3);
  });

  it('a job run again after it was stored is not stored twice; one that arrives behind a newer one is kept, after it', async () => {
    const id = 'tele-retry';
    await f.registerDevice(id);
    const duplicatesBefore = await f.metric('fleetwire_device_telemetry_total', 'outcome="duplicate"');
    const now = Date.now();
    const first = envelope(id, 1, now);
    await queue.add('telemetry', first);
    await stored(id, 1);
    // What BullMQ hands over when an attempt failed after Redis had stored the message: the same envelope.
    await queue.add('telemetry', first);
    await waitFor(() => f.metric('fleetwire_device_telemetry_total', 'outcome="duplicate"'), (n) => n === duplicatesBefore + 1);
    // Received 5 s earlier than the newest, by another broker node's clock.
    await queue.add('telemetry', envelope(id, 2, now - 5000));
    const page = await stored(id, 2);
    // After the newer one in the stream (its position takes the newer one's ms), with its own received_at.
    expect(page.items.map((i) => [i.readings[0]!.value, i.received_at, positionMs(i)])).toEqual([[2, now - 5000, now], [1, now, now]]);
    // The latest value of a name stays the newest by received_at.
    expect(page.latest.temperature).toMatchObject({ value: 1, received_at: now });
  });

  it('drops jobs of unknown and revoked devices, counts them, and logs at most a line a minute', async () => {
    const revoked = 'tele-revoked';
    await f.registerDevice(revoked);
    expect((await f.api('DELETE', `/v1/devices/${revoked}`, { token: await f.tokenFor('operator') })).status).toBe(200);
    const before = await f.metric('fleetwire_device_telemetry_total', 'outcome="unknown_device"');
    await queue.add('telemetry', envelope('tele-never-registered', 1));
    await queue.add('telemetry', envelope(revoked, 1));
    await waitFor(() => f.metric('fleetwire_device_telemetry_total', 'outcome="unknown_device"'), (n) => n === before + 2);
    expect(await f.redis.exists(redisKeys.telemetry('tele-never-registered'), redisKeys.telemetry(revoked))).toBe(0);
    expect(f.logs.filter((l) => l.includes('telemetry of an unknown or revoked device dropped'))).toHaveLength(1);
    // A revoked device's record remains, so its (empty) telemetry is readable; an unknown one is 404.
    expect((await read(revoked)).body).toMatchObject({ items: [], latest: {} });
  });

  it('does not store a message already older than TELEMETRY_MAX_AGE_S', async () => {
    const id = 'tele-expired';
    await f.registerDevice(id);
    const before = await f.metric('fleetwire_device_telemetry_total', 'outcome="expired"');
    await queue.add('telemetry', envelope(id, 1, Date.now() - (MAX_AGE_S + 60) * 1000));
    await waitFor(() => f.metric('fleetwire_device_telemetry_total', 'outcome="expired"'), (n) => n === before + 1);
    expect(await f.redis.exists(redisKeys.telemetry(id))).toBe(0);
  });
});

describe('the telemetry store', () => {
  it('trims messages once they are older than TELEMETRY_MAX_AGE_S, and expires a quiet device\'s keys', async () => {
    const id = 'tele-aged';
    await f.registerDevice(id);
    const store = new TelemetryStore(f.redis, { telemetryMaxLen: 1000, telemetryMaxAgeS: MAX_AGE_S });
    const t0 = Date.now();
    // Ten messages fill one stream node (stream-node-max-entries 10 in this file); Redis trims whole nodes.
    const old = Array.from({ length: 10 }, (_, k) => envelope(id, k, t0 + k));
    expect(await store.write(old, t0 + 10)).toEqual(Array(10).fill('stored'));
    expect(await store.write([envelope(id, 10, t0 + 30_000)], t0 + 30_000)).toEqual(['stored']);
    expect(await f.redis.xlen(redisKeys.telemetry(id))).toBe(11);
    // A minute later by the broker's clock the first ten are past the cutoff.
    expect(await store.write([envelope(id, 11, t0 + 61_000)], t0 + 61_000)).toEqual(['stored']);
    const page = (await read(id)).body as unknown as Page;
    expect(temperatures(page.items)).toEqual([11, 10]);
    const ttl = await f.redis.pttl(redisKeys.telemetry(id));
    expect(ttl).toBeGreaterThan(MAX_AGE_S * 1000 - 5000);
    expect(await f.redis.pttl(redisKeys.telemetryLatest(id))).toBeGreaterThan(MAX_AGE_S * 1000 - 5000);
  });

  it('keeps the latest value of at most 64 reading names, dropping the least recently reported', async () => {
    const id = 'tele-names';
    await f.registerDevice(id);
    const store = new TelemetryStore(f.redis, { telemetryMaxLen: 1000, telemetryMaxAgeS: MAX_AGE_S });
    const t0 = Date.now();
    const message = (names: string[], receivedAt: number) => ({
      ...envelope(id, 0, receivedAt), payload: { at: receivedAt, readings: names.map((name) => ({ name, value: 1, unit: '' })) },
    });
    const batch = (from: number) => Array.from({ length: 32 }, (_, k) => `n${from + k}`);
    await store.write([message(batch(0), t0), message(batch(32), t0 + 1), message(['n0'], t0 + 2)], t0 + 2);
    expect(await f.redis.hlen(redisKeys.telemetryLatest(id))).toBe(64);
    await store.write([message(['fresh'], t0 + 3)], t0 + 3);
    const names = new Set(await f.redis.hkeys(redisKeys.telemetryLatest(id)));
    expect(names.size).toBe(64);
    // Gone: one of n1…n31, last reported in the oldest message (n0 was reported again since).
    expect(batch(0).filter((n) => !names.has(n))).toEqual([expect.stringMatching(/^n([1-9]|[12][0-9]|3[01])$/)]);
    expect([...batch(32), 'n0', 'fresh'].every((n) => names.has(n))).toBe(true);
  });
});

describe('GET /v1/devices/{id}/telemetry refusals', () => {
  it('401 without a token, 404 for an unknown device', async () => {
    expect((await f.api('GET', '/v1/devices/tele-basic/telemetry')).status).toBe(401);
    const unknown = await read('tele-no-such-device');
    expect(unknown.status).toBe(404);
    expect(unknown.body.error!.code).toBe('NOT_FOUND');
  });

  it('400 naming the field for bad since, until, limit, cursor and order', async () => {
    await f.registerDevice('tele-refusals');
    const cases: Array<[string, string]> = [
      ['since=10&until=9', 'since'],
      ['since=1.5', 'since'],
      ['until=soon', 'until'],
      ['since=-1', 'since'],
      ['limit=0', 'limit'],
      ['limit=1001', 'limit'],
      ['limit=ten', 'limit'],
      ['cursor=abc', 'cursor'],
      ['cursor=1-99999999999999999999', 'cursor'],
      ['cursor=99999999999999999-0', 'cursor'],
      ['order=sideways', 'order'],
    ];
    for (const [query, field] of cases) {
      const res = await read('tele-refusals', query);
      expect(res.status, query).toBe(400);
      expect(res.body.error!.code, query).toBe('VALIDATION_FAILED');
      expect(res.body.error!.message, query).toContain(field);
    }
    const badId = await read('NOT_AN_ID');
    expect(badId.status).toBe(400);
    expect(badId.body.error!.message).toContain('id');
    // A cursor before every position: an empty page, not an error.
    expect((await read('tele-refusals', 'cursor=0-0')).body).toMatchObject({ items: [], next_cursor: null });
  });
});

describe('the firmware simulator', () => {
  it('publishes its readings with names and units every --telemetry-s, and they are stored', async () => {
    if (!existsSync(SIM)) throw new Error(`${SIM} is missing: cargo build --manifest-path firmware-esp32/Cargo.toml -p fleetwire-sim`);
    const id = 'tele-sim-1';
    const { apiKey } = await f.registerDevice(id);
    const sim = spawn(SIM, ['--url', f.url.replace('http', 'ws'), '--device-id', id, '--telemetry-s', '1', '--heartbeat-s', '30', '--stats-s', '60', '--log', 'warn'], {
      env: { PATH: process.env.PATH, FLEETWIRE_API_KEY: apiKey }, stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    sim.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    const exited = new Promise<number | null>((resolve) => sim.once('exit', resolve));
    try {
      const res = await waitFor(() => read(id), (r) => (r.body.items?.length ?? 0) >= 2, 10_000)
        .catch((err: Error) => { throw new Error(`${err.message}\nsimulator stderr:\n${stderr}`); });
      const page = res.body as unknown as Page;
      for (const item of page.items) {
        expect(item.readings).toEqual([
          { name: 'temperature', value: expect.any(Number), unit: 'Cel' },
          { name: 'humidity', value: expect.any(Number), unit: '%RH' },
        ]);
        expect(Math.abs(item.at - item.received_at)).toBeLessThan(5000);
      }
      expect(Object.keys(page.latest).sort()).toEqual(['humidity', 'temperature']);
    } finally {
      sim.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  });
});
