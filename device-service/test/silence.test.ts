/**
 * Silence alerts: raised once for a device that stopped, muted in maintenance and during
 * an OTA reboot window (and raised when the mute ends if the device is still silent),
 * raised once with two checkers racing, cleared on recovery.
 *
 * The heartbeat part (heartbeats.ts) is the real writer of a device's last_seen,
 * threshold_ms and its place in the silence-due index; where a test needs a device that
 * went quiet at a chosen time, lastHeartbeat() below writes exactly those fields. The
 * recovery test at the end drives real heartbeats through the broker.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import {
  createLogger, createMetricsRegistry, createRedis, redisKeys, payloadValidator, saveDevice, signToken, type Redis,
} from '@fleetwire/common';
import type { AlertChange } from '../src/alert-change.js';
import { createSilenceChecker } from '../src/silence.js';
import { connect, heartbeat, REDIS_URL, sleep, startFleet, waitFor, type Fleet } from './helpers.js';

const isAlert = payloadValidator('alert');

/** What a heartbeat at `at` writes for the silence check (the heartbeat part's documented writes). */
async function lastHeartbeat(redis: Redis, id: string, at: number, thresholdMs: number): Promise<void> {
  await redis.multi()
    .hset(redisKeys.deviceState(id), { last_seen: String(at), threshold_ms: String(thresholdMs) })
    .zadd(redisKeys.silenceDue, at + thresholdMs, id)
    .exec();
}

describe('two silence checkers at once', () => {
  let redis: Redis;
  beforeAll(() => { redis = createRedis(REDIS_URL, { name: 'silence-race' }); });
  afterAll(() => redis.disconnect());

  it('raise every silent device exactly once between them, and drop unknown and revoked devices without an alert', async () => {
    const ids = Array.from({ length: 300 }, (_, i) => `race-${String(i).padStart(3, '0')}`);
    await Promise.all(ids.map((id) => saveDevice(redis, id)));
    await saveDevice(redis, 'race-revoked', { status: 'revoked' });
    const longAgo = Date.now() - 60_000;
    for (const id of [...ids, 'race-revoked', 'race-never-registered']) await lastHeartbeat(redis, id, longAgo, 5000);

    // Two nodes: their own connections, registries and sinks, small batches so their calls interleave.
    const log = createLogger({ level: 'silent', name: 'race' });
    const emitted: AlertChange[][] = [[], []];
    const connections = [createRedis(REDIS_URL, { name: 'node-a' }), createRedis(REDIS_URL, { name: 'node-b' })];
    const registries = [createMetricsRegistry({ defaultMetrics: false }), createMetricsRegistry({ defaultMetrics: false })];
    const checkers = connections.map((c, n) => createSilenceChecker({
      redis: c, log, metricsRegistry: registries[n]!, batch: 25,
      alerts: { emit: (changes) => emitted[n]!.push(...changes) },
    }));
    const now = Date.now();
    await Promise.all([...checkers.map((c) => c.tick(now)), ...checkers.map((c) => c.tick(now))]);
    // A later tick, as after a restart, finds nothing more to raise.
    expect(await checkers[0]!.tick(Date.now())).toEqual([]);
    for (const c of connections) c.disconnect();

    const raised = [...emitted[0]!, ...emitted[1]!];
    expect(raised.map((c) => c.device_id).sort()).toEqual(ids);
    // They did race: both read the same first batch, and the loser found it taken.
    const moved = async (r: (typeof registries)[number]) => (await r.getSingleMetric('fleetwire_device_silence_checked_total')!.get()).values
      .filter((v) => v.labels.outcome === 'moved').reduce((sum, v) => sum + v.value, 0);
    expect((await moved(registries[0]!)) + (await moved(registries[1]!))).toBeGreaterThan(0);
    for (const change of raised) {
      expect(isAlert(change), JSON.stringify(change)).toBe(true);
      expect(change).toMatchObject({ state: 'raised', kind: 'silence', last_seen: longAgo, threshold_ms: 5000 });
    }
    expect(await redis.zcard(redisKeys.alertsActive)).toBe(300);
    expect(await redis.zcard(redisKeys.deviceIndexSilent)).toBe(300);
    expect(await redis.zcard(redisKeys.silenceDue)).toBe(0);
    expect(await redis.hget(redisKeys.deviceState('race-revoked'), 'silent_since')).toBeNull();
  });
});

describe('silence alerts in the device service', () => {
  let fleet: Fleet;
  let watcher: MqttClient;
  /** Every fleet/alerts/{id} message the watching service client received, in order. */
  const seen: Array<{ topic: string; change: AlertChange; retain: boolean }> = [];
  const seenFor = (id: string) => seen.filter((m) => m.topic === `fleet/alerts/${id}`);
  let viewer: string;

  beforeAll(async () => {
    fleet = await startFleet({
      SILENCE_CHECK_MS: '100', OTA_REBOOT_WINDOW_S: '3',
      // A device on the default interval (1 s) is silent 2 s after its last heartbeat.
      SILENCE_DEFAULT_INTERVAL_S: '1', SILENCE_MULTIPLIER_PCT: '200', SILENCE_FLOOR_S: '1', SILENCE_MIN_HISTORY: '1000',
    });
    const keys = await fleet.running.deps.keyRing();
    const token = await signToken(keys.signer, { sub: 'alert-watcher', typ: 'service', ttlSeconds: 600 });
    watcher = await connect(fleet.mqttUrl, token, 'service:alert-watcher:1');
    watcher.on('message', (topic, payload, packet) => seen.push({ topic, change: JSON.parse(payload.toString()) as AlertChange, retain: packet.retain }));
    await watcher.subscribeAsync('fleet/alerts/+', { qos: 1 });
    viewer = await fleet.tokenFor('viewer');
  });

  afterAll(async () => {
    await watcher?.endAsync();
    await fleet?.close();
  });

  /** Silence checks this node has run (each tick observes the histogram once). */
  const ticks = () => fleet.metric('fleetwire_device_silence_check_seconds_count');

  it('raises a silence once: one retained message on fleet/alerts/{id}, one active alert, one log entry', async () => {
    await fleet.registerDevice('quiet-1');
    const lastSeen = Date.now() - 2500;
    await lastHeartbeat(fleet.redis, 'quiet-1', lastSeen, 2000);

    await waitFor(() => seenFor('quiet-1').length, (n) => n > 0);
    const raisedAt = seenFor('quiet-1')[0]!.change.at;
    expect(seenFor('quiet-1')[0]!.change).toEqual({ device_id: 'quiet-1', kind: 'silence', state: 'raised', at: raisedAt, last_seen: lastSeen, threshold_ms: 2000 });
    expect(isAlert(seenFor('quiet-1')[0]!.change)).toBe(true);

    // Several more checks change nothing.
    const before = await ticks();
    await waitFor(ticks, (n) => n >= before + 5);
    expect(seenFor('quiet-1')).toHaveLength(1);

    const active = await fleet.api('GET', '/v1/alerts', { token: viewer });
    expect(active.status).toBe(200);
    expect(active.body.items).toContainEqual({ device_id: 'quiet-1', raised_at: raisedAt, last_seen: lastSeen, threshold_ms: 2000, silent_for_ms: expect.any(Number) });
    const log = await fleet.api('GET', '/v1/alerts?state=all', { token: viewer });
    expect((log.body.items as Array<{ device_id: string }>).filter((c) => c.device_id === 'quiet-1')).toHaveLength(1);
    const state = await fleet.redis.hgetall(redisKeys.deviceState('quiet-1'));
    expect(state).toMatchObject({ silent_since: String(raisedAt), alert_threshold_ms: '2000' });
    expect(await fleet.metric('fleetwire_device_alerts_total', 'state="raised"')).toBeGreaterThanOrEqual(1);
    expect(await fleet.metric('fleetwire_device_alerts_active')).toBeGreaterThanOrEqual(1);

    // A service that subscribes later is told at once: the change is retained.
    const keys = await fleet.running.deps.keyRing();
    const late = await connect(fleet.mqttUrl, await signToken(keys.signer, { sub: 'late-watcher', typ: 'service', ttlSeconds: 600 }), 'service:late-watcher:1');
    const retained = new Promise<{ body: string; retain: boolean }>((resolve) => late.on('message', (_t, p, packet) => resolve({ body: p.toString(), retain: packet.retain })));
    await late.subscribeAsync('fleet/alerts/quiet-1', { qos: 1 });
    const got = await retained;
    expect(got.retain).toBe(true);
    expect(JSON.parse(got.body)).toMatchObject({ device_id: 'quiet-1', state: 'raised', at: raisedAt });
    await late.endAsync();
  });

  it('mutes a device in maintenance and raises it when the maintenance ends, if it is still silent', async () => {
    await fleet.registerDevice('maint-1');
    // PATCH /v1/devices/{id} {maintenance_until} writes this field of the device record (the auth service's part).
    const maintenanceUntil = Date.now() + 1500;
    await fleet.redis.hset(redisKeys.device('maint-1'), 'maintenance_until', String(maintenanceUntil));
    await lastHeartbeat(fleet.redis, 'maint-1', Date.now() - 3000, 2000);

    // Muted: put back in the index at the end of the maintenance, no alert.
    await waitFor(() => fleet.redis.zscore(redisKeys.silenceDue, 'maint-1'), (s) => Number(s) === maintenanceUntil);
    expect(seenFor('maint-1')).toEqual([]);
    expect(await fleet.redis.zscore(redisKeys.alertsActive, 'maint-1')).toBeNull();

    await waitFor(() => seenFor('maint-1').length, (n) => n === 1, 5000);
    expect(seenFor('maint-1')[0]!.change.state).toBe('raised');
    expect(seenFor('maint-1')[0]!.change.at).toBeGreaterThanOrEqual(maintenanceUntil);
  });

  it('mutes a device during an OTA reboot window opened by its own ota/status, and raises it after the window if still silent', async () => {
    const device = await fleet.connectDevice('ota-1');
    const status = (state: string) => JSON.stringify({ rollout: 'r-1', state, progress: 100 });

    // The device reports its reboot through the broker → queue ota-events → the OTA part.
    await device.publishAsync('devices/ota-1/ota/status', status('rebooting'), { qos: 1 });
    const opened = await waitFor(() => fleet.redis.hgetall(redisKeys.deviceState('ota-1')), (s) => s.ota_window_until !== undefined);
    expect(opened).toMatchObject({ ota_rollout: 'r-1', ota_state: 'rebooting' });
    const windowEnd = Number(opened.ota_window_until);
    expect(windowEnd - Number(opened.ota_at)).toBe(3000);
    // What an operator sees of it.
    const state = await fleet.api('GET', '/v1/devices/ota-1/state', { token: await fleet.tokenFor('viewer') });
    expect(state.body.ota).toEqual({ rollout: 'r-1', state: 'rebooting', at: Number(opened.ota_at), reboot_window_until: windowEnd });
    await device.endAsync();

    // Its last heartbeat was before the reboot; it is due now, but muted until the window ends.
    await lastHeartbeat(fleet.redis, 'ota-1', Date.now() - 3000, 2000);
    await waitFor(() => fleet.redis.zscore(redisKeys.silenceDue, 'ota-1'), (s) => Number(s) === windowEnd);
    expect(seenFor('ota-1')).toEqual([]);

    // The device never came back: raised once the window is over.
    await waitFor(() => seenFor('ota-1').length, (n) => n === 1, 5000);
    expect(seenFor('ota-1')[0]!.change.at).toBeGreaterThanOrEqual(windowEnd);
    expect(await fleet.metric('fleetwire_device_ota_events_total', 'outcome="applied"')).toBeGreaterThanOrEqual(1);
  });

  it('ends the OTA window on success, and drops the OTA status of a revoked device', async () => {
    const device = await fleet.connectDevice('ota-2');
    await device.publishAsync('devices/ota-2/ota/status', JSON.stringify({ rollout: 'r-2', state: 'verifying', progress: 100 }), { qos: 1 });
    await waitFor(() => fleet.redis.hget(redisKeys.deviceState('ota-2'), 'ota_window_until'), (w) => w !== null);
    await device.publishAsync('devices/ota-2/ota/status', JSON.stringify({ rollout: 'r-2', state: 'success', progress: 100 }), { qos: 1 });
    const ended = await waitFor(() => fleet.redis.hgetall(redisKeys.deviceState('ota-2')), (s) => s.ota_state === 'success');
    expect(ended.ota_window_until).toBeUndefined();

    // Revoked after it published: its queued status is dropped and counted, nothing recorded.
    const before = await fleet.metric('fleetwire_device_ota_events_total', 'outcome="unknown_device"');
    await fleet.redis.hset(redisKeys.device('ota-2'), 'status', 'revoked');
    await device.publishAsync('devices/ota-2/ota/status', JSON.stringify({ rollout: 'r-3', state: 'rebooting', progress: 100 }), { qos: 1 }).catch(() => undefined);
    await waitFor(() => fleet.metric('fleetwire_device_ota_events_total', 'outcome="unknown_device"'), (n) => n === before + 1);
    expect(await fleet.redis.hget(redisKeys.deviceState('ota-2'), 'ota_rollout')).toBe('r-2');
    await device.endAsync();
  });

  it('raises once for a 1 s heartbeat device that stops, and clears on recovery with how long it was silent', async () => {
    const device = await fleet.connectDevice('beat-1');
    for (let seq = 1; seq <= 3; seq++) {
      await device.publishAsync('devices/beat-1/heartbeat', heartbeat(seq), { qos: 1 });
      await sleep(1000);
    }
    // Stopped: silent 2 s after the last heartbeat (default interval 1 s × 200 %).
    await waitFor(() => seenFor('beat-1').length, (n) => n === 1, 6000);
    const raised = seenFor('beat-1')[0]!.change;
    expect(raised).toMatchObject({ state: 'raised', threshold_ms: 2000 });
    expect(raised.at - raised.last_seen).toBeGreaterThanOrEqual(2000);

    await device.publishAsync('devices/beat-1/heartbeat', heartbeat(4), { qos: 1 });
    await waitFor(() => seenFor('beat-1').length, (n) => n === 2, 5000);
    const cleared = seenFor('beat-1')[1]!.change;
    expect(cleared).toMatchObject({ state: 'cleared', last_seen: raised.last_seen, threshold_ms: 2000 });
    expect(cleared.silent_for_ms).toBeGreaterThanOrEqual(raised.at - raised.last_seen);
    expect(isAlert(cleared)).toBe(true);
    const active = await fleet.api('GET', '/v1/alerts', { token: viewer });
    expect((active.body.items as Array<{ device_id: string }>).map((a) => a.device_id)).not.toContain('beat-1');
    const log = await fleet.api('GET', '/v1/alerts?state=all', { token: viewer });
    expect((log.body.items as Array<{ device_id: string; state: string }>).filter((c) => c.device_id === 'beat-1').map((c) => c.state)).toEqual(['cleared', 'raised']);
    await device.endAsync();
  });
});
