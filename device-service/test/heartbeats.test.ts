import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import Fastify from 'fastify';
import { Queue } from 'bullmq';
import {
  createLogger, createMetricsRegistry, createRedis, queues, redisKeys, saveDevice, type IngressEnvelope, type Redis,
} from '@fleetwire/common';
import { heartbeat, REDIS_URL, sleep, startFleet, waitFor, type Answer, type Fleet } from './helpers.js';
import type { AlertChange } from '../src/alert-change.js';
import { BrokerLink } from '@fleetwire/common';
import { deviceServiceDefaults } from '../src/config.js';
import type { DeviceState } from '../src/device-state.js';
import { heartbeatsPart } from '../src/heartbeats.js';

// Five learned intervals instead of ten, so the 1 s device learns its rhythm within this file's time budget.
const MIN_HISTORY = 5;
let f: Fleet;
let admin: string;
let queueConn: Redis;
let queue: Queue;

beforeAll(async () => {
  f = await startFleet({ SILENCE_MIN_HISTORY: String(MIN_HISTORY) });
  admin = await f.tokenFor('admin');
  queueConn = createRedis(REDIS_URL, { name: 'test-heartbeat-jobs', maxRetriesPerRequest: null });
  queue = new Queue('heartbeats', { connection: queueConn, prefix: queues.prefix });
}, 20_000);
afterAll(async () => {
  await queue?.close();
  queueConn?.disconnect();
  await f?.close();
});

const state = (id: string): Promise<Answer> => f.api('GET', `/v1/devices/${id}/state`, { token: admin });
/** The state of `id` once `ok` holds for it. */
const stateWhen = async (id: string, ok: (s: DeviceState) => boolean): Promise<DeviceState> =>
  (await waitFor(() => state(id), (a) => ok(a.body as unknown as DeviceState))).body as unknown as DeviceState;
const heartbeats = (outcome: string): Promise<number> => f.metric('fleetwire_device_heartbeats_total', `outcome="${outcome}"`);

interface Beat { seq: number; uptime_s: number; rssi?: number; heap_free?: number; fw?: string }

/** A heartbeat job exactly as the broker queues one (broker/src/ingress.ts), received at `receivedAt`. */
async function enqueue(q: Queue, deviceId: string, receivedAt: number, beat: Beat): Promise<string> {
  const spec = queues.queues.heartbeats!;
  const envelope: IngressEnvelope = {
    cid: `test-${Math.random().toString(36).slice(2)}`, device_id: deviceId, topic_class: 'heartbeat', received_at: receivedAt, node: 'test',
    payload: { rssi: -60, heap_free: 150_000, fw: '1.0.0', ...beat },
  };
  const job = await q.add('heartbeat', envelope, { attempts: spec.attempts, backoff: { type: 'exponential', delay: spec.backoff_ms } });
  return job.id!;
}

/** Queues beats at the given receive times one by one, each once the previous is applied (seq shows it), as a device's would arrive. */
async function beatAt(deviceId: string, times: number[], fields: Partial<Beat> = {}): Promise<DeviceState> {
  let last: DeviceState | undefined;
  for (const [i, at] of times.entries()) {
    await enqueue(queue, deviceId, at, { seq: i + 1, uptime_s: 1000 + Math.round((at - times[0]!) / 1000), ...fields });
    last = await stateWhen(deviceId, (s) => s.seq === i + 1);
  }
  return last!;
}

describe('heartbeats into device state', () => {
  it('heartbeats through the broker move last_seen and the state, and place the device in the indexes', async () => {
    const dev = await f.connectDevice('hb-move');
    const before = Date.now();
    await dev.publishAsync('devices/hb-move/heartbeat', heartbeat(1, { uptime_s: 10, rssi: -55, heap_free: 120_000, fw: '1.2.0' }), { qos: 1 });
    const first = await stateWhen('hb-move', (s) => s.seq === 1);
    expect(first).toMatchObject({
      device_id: 'hb-move', fw: '1.2.0', rssi: -55, heap_free: 120_000, uptime_s: 10, boot_count: 0, last_reboot_at: null,
      interval: { last_ms: null, mean_ms: null, deviation_ms: null, n: 0 },
      // No history yet: 300 % of the default 60 s interval.
      silence_threshold_ms: 180_000, silent: false, silent_since: null,
    });
    const firstSeen = first.last_seen!;
    expect(firstSeen).toBeGreaterThanOrEqual(before);
    expect(firstSeen).toBeLessThanOrEqual(Date.now());

    await dev.publishAsync('devices/hb-move/heartbeat', heartbeat(2, { uptime_s: 15, rssi: -70, heap_free: 110_000, fw: '1.2.0' }), { qos: 1 });
    const second = await stateWhen('hb-move', (s) => s.seq === 2 && s.online);
    expect(second).toMatchObject({ rssi: -70, heap_free: 110_000, uptime_s: 15 });
    const secondSeen = second.last_seen!;
    expect(secondSeen).toBeGreaterThan(firstSeen);
    expect(second.interval).toMatchObject({ last_ms: secondSeen - firstSeen, n: 1 });

    // The indexes the listing and the silence checker read.
    expect(Number(await f.redis.zscore(redisKeys.deviceIndexLastSeen, 'hb-move'))).toBe(secondSeen);
    expect(Number(await f.redis.zscore(redisKeys.silenceDue, 'hb-move'))).toBe(secondSeen + second.silence_threshold_ms!);
    const registeredAt = Number(await f.redis.zscore(redisKeys.devices, 'hb-move'));
    expect(Number(await f.redis.zscore(redisKeys.deviceIndex('fw', '1.2.0'), 'hb-move'))).toBe(registeredAt);
    expect(await f.redis.sismember(redisKeys.deviceIndexValues('fw'), '1.2.0')).toBe(1);

    // State outlives the connection.
    await dev.endAsync();
    const after = await stateWhen('hb-move', (s) => !s.online);
    expect(after).toMatchObject({ last_seen: secondSeen, seq: 2, fw: '1.2.0' });
  });

  it('detects a reboot when uptime goes backwards', async () => {
    const rebootsBefore = await f.metric('fleetwire_device_reboots_total');
    const dev = await f.connectDevice('hb-reboot');
    await dev.publishAsync('devices/hb-reboot/heartbeat', heartbeat(41, { uptime_s: 5000 }), { qos: 1 });
    await stateWhen('hb-reboot', (s) => s.seq === 41);
    await dev.publishAsync('devices/hb-reboot/heartbeat', heartbeat(1, { uptime_s: 3 }), { qos: 1 });
    const s = await stateWhen('hb-reboot', (a) => a.seq === 1);
    expect(s.boot_count).toBe(1);
    // When it booted, by its uptime: 3 s before the heartbeat arrived.
    expect(s.last_reboot_at).toBe(s.last_seen! - 3000);
    expect(await f.redis.zscore(redisKeys.reboots, `hb-reboot:${s.last_reboot_at}`)).toBe(String(s.last_reboot_at));
    expect(await f.metric('fleetwire_device_reboots_total')).toBe(rebootsBefore + 1);

    // Uptime moving on again is no reboot.
    await dev.publishAsync('devices/hb-reboot/heartbeat', heartbeat(2, { uptime_s: 8 }), { qos: 1 });
    expect((await stateWhen('hb-reboot', (a) => a.seq === 2)).boot_count).toBe(1);
    await dev.endAsync();
  });

  it('learns a 1 s device\'s rhythm through the broker: its silence threshold drops to a few seconds', async () => {
    const dev = await f.connectDevice('hb-fast');
    // The device's own rhythm: one heartbeat a second (a sleep here is the device's clock, not a wait for a result).
    for (let seq = 1; seq <= MIN_HISTORY + 2; seq++) {
      if (seq > 1) await sleep(1000);
      await dev.publishAsync('devices/hb-fast/heartbeat', heartbeat(seq, { uptime_s: 100 + seq }), { qos: 1 });
    }
    const s = await stateWhen('hb-fast', (a) => a.seq === MIN_HISTORY + 2);
    const { n, mean_ms: mean, deviation_ms: deviation } = s.interval;
    expect(n).toBe(MIN_HISTORY + 1);
    expect(mean).toBeGreaterThan(900);
    expect(mean).toBeLessThan(1200);
    // 300 % of the mean plus 4 deviations, but never under the 3 s floor.
    const threshold = s.silence_threshold_ms!;
    expect(threshold).toBe(Math.max(3000, 3 * mean! + 4 * deviation!));
    expect(threshold).toBeLessThan(5000);
    await dev.endAsync();
  });

  it('learns a 30 s device\'s rhythm (jobs queued as the broker would, received 30 s apart), and a 10 min device\'s', async () => {
    // Waiting 30 s per heartbeat would not fit in a test: these jobs go straight into the real
    // heartbeats queue, carrying the receive times the broker would have stamped.
    await f.registerDevice('hb-30s');
    const t0 = Date.now() - (MIN_HISTORY + 1) * 30_000;
    const slow = await beatAt('hb-30s', Array.from({ length: MIN_HISTORY + 2 }, (_, i) => t0 + i * 30_000));
    expect(slow.interval).toMatchObject({ last_ms: 30_000, mean_ms: 30_000, n: MIN_HISTORY + 1 });
    // The deviation starts at half the first gap and shrinks by a quarter with every regular gap.
    expect(slow.interval.deviation_ms).toBe(Math.round(15_000 * 0.75 ** MIN_HISTORY));
    expect(slow.silence_threshold_ms).toBeGreaterThan(90_000);
    expect(slow.silence_threshold_ms).toBeLessThan(110_000);
    expect(Number(await f.redis.zscore(redisKeys.silenceDue, 'hb-30s'))).toBe(slow.last_seen! + slow.silence_threshold_ms!);

    // Slower than the default interval (a gap over the 180 s default threshold): warming up, it still learns its own.
    await f.registerDevice('hb-10min');
    const t1 = Date.now() - (MIN_HISTORY + 1) * 600_000;
    const sleepy = await beatAt('hb-10min', Array.from({ length: MIN_HISTORY + 2 }, (_, i) => t1 + i * 600_000));
    expect(sleepy.interval).toMatchObject({ mean_ms: 600_000, n: MIN_HISTORY + 1 });
    // Not flagged at 11 minutes: its threshold is over half an hour.
    expect(sleepy.silence_threshold_ms).toBeGreaterThan(30 * 60_000);
  });

  it('does not learn from a silence, but learns a new rhythm the device keeps', async () => {
    await f.registerDevice('hb-slows');
    const regular = Array.from({ length: MIN_HISTORY + 2 }, (_, i) => i * 30_000);
    // Then gaps of 5 minutes, longer than its learned threshold (about 100 s), for good.
    const slower = Array.from({ length: 2 * MIN_HISTORY - 1 }, (_, i) => regular.at(-1)! + (i + 1) * 300_000);
    const t0 = Date.now() - slower.at(-1)!;
    const learned = await beatAt('hb-slows', regular.map((t) => t0 + t));
    expect(learned.interval).toMatchObject({ mean_ms: 30_000, n: MIN_HISTORY + 1 });

    let s = learned;
    for (const [i, t] of slower.entries()) {
      await enqueue(queue, 'hb-slows', t0 + t, { seq: regular.length + i + 1, uptime_s: 2000 + i });
      s = await stateWhen('hb-slows', (a) => a.seq === regular.length + i + 1);
      if (i < MIN_HISTORY - 1) {
        // A gap over the threshold was a silence, not the device's rhythm: nothing learned.
        expect(s.interval).toMatchObject({ last_ms: 300_000, mean_ms: 30_000, n: MIN_HISTORY + 1 });
        expect(s.silence_threshold_ms).toBe(learned.silence_threshold_ms);
      } else if (i === MIN_HISTORY - 1) {
        // As many long gaps in a row as warming up takes: the rhythm changed; learning starts again from this gap.
        expect(s.interval).toMatchObject({ mean_ms: 300_000, n: 1 });
        expect(s.silence_threshold_ms).toBe(180_000);
      }
    }
    expect(s.interval).toMatchObject({ mean_ms: 300_000, n: MIN_HISTORY });
    expect(s.silence_threshold_ms).toBeGreaterThan(900_000);
  });

  it('a duplicate, an older heartbeat and a resent one change nothing', async () => {
    await f.registerDevice('hb-dup');
    const t = Date.now() - 10_000;
    const applied = await beatAt('hb-dup', [t, t + 5000], { fw: '3.0.0' });
    const stale = await heartbeats('stale');
    // A retry of the newest job (same received_at), one from before it, and the newest heartbeat
    // sent again by the device (same seq and uptime) that the broker stamped anew.
    await enqueue(queue, 'hb-dup', t + 5000, { seq: 2, uptime_s: 1005, rssi: -99 });
    await enqueue(queue, 'hb-dup', t + 1000, { seq: 9, uptime_s: 1001, fw: '0.0.1' });
    await enqueue(queue, 'hb-dup', t + 9000, { seq: 2, uptime_s: 1005, fw: '3.0.0' });
    await waitFor(() => heartbeats('stale'), (n) => n === stale + 3);
    expect((await state('hb-dup')).body).toEqual(applied);
    expect(await f.redis.exists(redisKeys.deviceIndex('fw', '0.0.1'))).toBe(0);
    expect(await f.redis.sismember(redisKeys.deviceIndexValues('fw'), '0.0.1')).toBe(0);
  });

  it('drops the heartbeats of unknown and revoked devices, counted and logged, without retrying them', async () => {
    const unknown = await heartbeats('unknown_device');
    await f.registerDevice('hb-revoked');
    expect((await f.api('DELETE', '/v1/devices/hb-revoked', { token: admin })).status).toBe(200);
    // The broker refuses these devices' connections, so their jobs can only come from the queue (a job queued before a revocation, say).
    const ghost = await enqueue(queue, 'hb-ghost', Date.now(), { seq: 1, uptime_s: 1 });
    const revoked = await enqueue(queue, 'hb-revoked', Date.now(), { seq: 1, uptime_s: 1 });
    await waitFor(() => heartbeats('unknown_device'), (n) => n === unknown + 2);
    for (const id of ['hb-ghost', 'hb-revoked']) {
      expect(await f.redis.exists(redisKeys.deviceState(id))).toBe(0);
      expect(await f.redis.zscore(redisKeys.silenceDue, id)).toBeNull();
    }
    expect(await waitFor(() => queue.getJobState(ghost), (st) => st === 'completed')).toBe('completed');
    expect(await queue.getJobState(revoked)).toBe('completed');
    expect(f.logs.some((l) => l.includes('heartbeat of an unknown or revoked device dropped'))).toBe(true);
  });

  it('a heartbeat ends an active silence alert', async () => {
    await f.registerDevice('hb-quiet');
    const t = Date.now() - 400_000;
    await beatAt('hb-quiet', [t]);
    await raiseSilence(f.redis, 'hb-quiet', t + 180_000, 180_000);
    expect((await state('hb-quiet')).body).toMatchObject({ silent: true, silent_since: t + 180_000 });

    await enqueue(queue, 'hb-quiet', t + 400_000, { seq: 2, uptime_s: 1400 });
    const s = await stateWhen('hb-quiet', (a) => a.seq === 2);
    expect(s).toMatchObject({ silent: false, silent_since: null, last_seen: t + 400_000 });
    expect(await f.redis.hexists(redisKeys.deviceState('hb-quiet'), 'alert_threshold_ms')).toBe(0);
    expect(await f.redis.zscore(redisKeys.deviceIndexSilent, 'hb-quiet')).toBeNull();
    expect(await f.redis.zscore(redisKeys.alertsActive, 'hb-quiet')).toBeNull();
  });
});

/** What the silence checker writes when it raises an alert (its part owns this; here it is set by hand). */
async function raiseSilence(redis: Redis, id: string, since: number, thresholdMs: number): Promise<void> {
  const registeredAt = Number(await redis.zscore(redisKeys.devices, id));
  await redis.multi()
    .hset(redisKeys.deviceState(id), { silent_since: String(since), alert_threshold_ms: String(thresholdMs) })
    .zadd(redisKeys.deviceIndexSilent, registeredAt, id)
    .zadd(redisKeys.alertsActive, since, id)
    .exec();
}

describe('the alert sink', () => {
  it('is told when a heartbeat ends a silence, with how long the device was silent', async () => {
    // A heartbeat part of its own with a recording sink (the fleet's is the alerts part's), on
    // database 1 of this file's Redis, so the fleet's consumer does not compete for its jobs.
    const url = `${REDIS_URL}/1`;
    const redis = createRedis(url, { name: 'test-sink' });
    const queueConnection = createRedis(url, { name: 'test-sink-queues', maxRetriesPerRequest: null });
    const log = createLogger({ level: 'warn', destination: new Writable({ write(_c, _e, cb) { cb(); } }) });
    const http = Fastify();
    const changes: AlertChange[] = [];
    const part = heartbeatsPart({
      config: deviceServiceDefaults({ redisUrl: url }), log, metricsRegistry: createMetricsRegistry({ defaultMetrics: false }),
      redis, queueConnection, subscriber: redis, http,
      link: new BrokerLink({ url: () => 'ws://unused', signer: () => { throw new Error('not used'); }, clientId: 'service:device-service:test', log }),
      guards: { reader: async () => undefined, operator: async () => undefined, admin: async () => undefined },
    }, { alerts: { emit: (c) => changes.push(...c) } });
    const q = new Queue('heartbeats', { connection: queueConnection, prefix: queues.prefix });
    try {
      await part.start!();
      await saveDevice(redis, 'hb-sink');
      const t = Date.now() - 400_000;
      await enqueue(q, 'hb-sink', t, { seq: 1, uptime_s: 10 });
      await waitFor(() => redis.hget(redisKeys.deviceState('hb-sink'), 'seq'), (v) => v === '1');
      await raiseSilence(redis, 'hb-sink', t + 180_000, 180_000);
      await enqueue(q, 'hb-sink', t + 400_000, { seq: 2, uptime_s: 410 });
      await waitFor(() => changes.length, (n) => n > 0);
      expect(changes).toEqual([{
        device_id: 'hb-sink', kind: 'silence', state: 'cleared', at: t + 400_000, last_seen: t, threshold_ms: 180_000, silent_for_ms: 400_000,
      }]);
      // Once: a retry of that job finds the alert gone (and the job stale).
      const retry = await enqueue(q, 'hb-sink', t + 400_000, { seq: 2, uptime_s: 410 });
      await waitFor(() => q.getJobState(retry), (st) => st === 'completed');
      expect(changes).toHaveLength(1);
    } finally {
      await part.drain!();
      await q.close();
      await http.close();
      redis.disconnect();
      queueConnection.disconnect();
    }
  });
});

describe('GET /v1/devices/{id}/state', () => {
  it('answers a registered device that never sent a heartbeat with last_seen null', async () => {
    await f.registerDevice('hb-new');
    const res = await state('hb-new');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      device_id: 'hb-new', online: false, last_seen: null, fw: null, boot_count: 0, silence_threshold_ms: null,
      silent: false, presence: null, maintenance_until: null, in_maintenance: false,
    });
  });

  it('refuses a caller without a token (401) and answers 404 for a device that is not registered', async () => {
    const anonymous = await f.api('GET', '/v1/devices/hb-move/state');
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.error?.code).toBe('AUTH_TOKEN_MISSING');
    const missing = await f.api('GET', '/v1/devices/no-such-device/state', { token: await f.tokenFor('viewer') });
    expect(missing.status).toBe(404);
    expect(missing.body.error).toEqual({ code: 'NOT_FOUND', message: 'No device no-such-device.' });
  });
});
