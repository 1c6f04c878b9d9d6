import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { redisKeys } from '@fleetwire/common';
import { heartbeat, startFleet, waitFor, type Answer, type Fleet } from './helpers.js';

let f: Fleet;
let viewer: string;

beforeAll(async () => {
  f = await startFleet({ FLEET_HEALTH_CACHE_MS: '1000' });
  viewer = await f.tokenFor('viewer');
}, 20_000);
afterAll(async () => { await f?.close(); });

const health = (): Promise<Answer> => f.api('GET', '/v1/fleet/health', { token: viewer });
type Report = {
  devices: number; revoked: number; online: number; offline: number; silent: number; in_maintenance: number;
  by_firmware: Record<string, number>; by_type: Record<string, number>; reboots_last_hour: number;
  heartbeat_lag_ms: { p50: number | null; p90: number | null; p99: number | null; samples: number; window_s: number }; at: number;
};
const report = async (): Promise<Report> => (await health()).body as unknown as Report;
const until = (ok: (r: Report) => boolean): Promise<Report> => waitFor(report, ok);

/** Registers a device through the API (the auth service puts it in its type index). */
async function register(id: string, type: string): Promise<string> {
  return (await f.registerDevice(id, { type })).token;
}

async function beat(dev: MqttClient, id: string, seq: number, fields: { uptime_s?: number; fw?: string }): Promise<void> {
  await dev.publishAsync(`devices/${id}/heartbeat`, heartbeat(seq, fields), { qos: 1 });
  await waitFor(() => f.api('GET', `/v1/devices/${id}/state`, { token: viewer }), (s) => s.body.seq === seq);
}

describe('GET /v1/fleet/health', () => {
  it('counts the fleet after real heartbeats: online, offline, silent, maintenance, firmware, type, reboots, lag', async () => {
    const devices: Record<string, MqttClient> = {};
    for (const [id, type] of [['fh-a', 'sensor'], ['fh-b', 'sensor'], ['fh-c', 'gateway']] as const) {
      devices[id] = await f.connectDevice(id, { token: await register(id, type) });
    }
    await register('fh-d', 'sensor'); // registered, never connected

    await beat(devices['fh-a']!, 'fh-a', 1, { fw: '1.0.0', uptime_s: 100 });
    await beat(devices['fh-b']!, 'fh-b', 1, { fw: '1.0.0', uptime_s: 100 });
    await beat(devices['fh-c']!, 'fh-c', 1, { fw: '2.0.0', uptime_s: 500 });
    await beat(devices['fh-c']!, 'fh-c', 2, { fw: '2.0.0', uptime_s: 2 }); // rebooted
    await devices['fh-b']!.endAsync();

    // What the auth service (maintenance_until) and the silence checker (an active alert) write;
    // their parts own these indexes, so they are set here as those parts set them.
    const now = Date.now();
    await f.redis.multi()
      .zadd(redisKeys.deviceMaintenance, now + 3600_000, 'fh-d', now - 1000, 'fh-c') // fh-c's window is over
      .zadd(redisKeys.deviceIndexSilent, Number(await f.redis.zscore(redisKeys.devices, 'fh-b')), 'fh-b')
      .exec();

    const r = await until((x) => x.online === 2 && x.silent === 1 && x.heartbeat_lag_ms.samples === 4);
    expect(r).toMatchObject({
      devices: 4, online: 2, offline: 2, silent: 1, in_maintenance: 1,
      by_firmware: { '1.0.0': 2, '2.0.0': 1 }, by_type: { sensor: 3, gateway: 1 }, reboots_last_hour: 1,
    });
    const lag = r.heartbeat_lag_ms;
    expect(lag.window_s).toBe(300);
    expect(lag.p50).not.toBeNull();
    expect(lag.p50!).toBeLessThanOrEqual(lag.p90!);
    expect(lag.p90!).toBeLessThanOrEqual(lag.p99!);
    expect(lag.p99!).toBeLessThan(5000);
    expect(r.at).toBeLessThanOrEqual(Date.now());

    // The same numbers as gauges, without device ids.
    const gauge = (name: string, labels = ''): Promise<number> => f.metric(name, labels);
    expect(await gauge('fleetwire_device_fleet_devices', 'state="registered"')).toBe(4);
    expect(await gauge('fleetwire_device_fleet_devices', 'state="online"')).toBe(2);
    expect(await gauge('fleetwire_device_fleet_devices', 'state="offline"')).toBe(2);
    expect(await gauge('fleetwire_device_fleet_devices', 'state="silent"')).toBe(1);
    expect(await gauge('fleetwire_device_fleet_devices', 'state="maintenance"')).toBe(1);
    expect(await gauge('fleetwire_device_fleet_firmware_devices', 'fw="1.0.0"')).toBe(2);
    expect(await gauge('fleetwire_device_fleet_type_devices', 'type="gateway"')).toBe(1);
    expect(await gauge('fleetwire_device_reboots_last_hour')).toBe(1);
    expect(await gauge('fleetwire_device_fleet_heartbeat_lag_seconds', 'quantile="0.99"')).toBe(lag.p99! / 1000);
    expect(await f.metrics.metrics()).not.toMatch(/fh-[abcd]/);

    // Firmware updates move devices between versions; a version nobody runs any more is gone.
    await beat(devices['fh-a']!, 'fh-a', 2, { fw: '1.1.0', uptime_s: 110 });
    await beat(devices['fh-c']!, 'fh-c', 3, { fw: '1.1.0', uptime_s: 12 });
    const updated = await until((x) => x.by_firmware['1.1.0'] === 2);
    expect(updated.by_firmware).toEqual({ '1.0.0': 1, '1.1.0': 2 });
    expect(await f.redis.sismember(redisKeys.deviceIndexValues('fw'), '2.0.0')).toBe(0);
    await waitFor(() => gauge('fleetwire_device_fleet_firmware_devices', 'fw="1.1.0"'), (n) => n === 2);
    expect(await f.metrics.metrics()).not.toContain('fw="2.0.0"');
    await Promise.all([devices['fh-a']!.endAsync(), devices['fh-c']!.endAsync()]);
  });

  it('takes in the lag other device-service nodes measured: percentiles are fleet-wide', async () => {
    const before = await report();
    // Another node's 1000 heartbeats at about 2 s of lag, in this minute's bucket counts (bucket 43: 1.9–2.0 s).
    await f.redis.hincrby(redisKeys.heartbeatLag(String(Math.floor(Date.now() / 60_000))), '43', 1000);
    const r = await until((x) => x.heartbeat_lag_ms.samples === before.heartbeat_lag_ms.samples + 1000);
    // Reported as the bucket's upper edge: 2^(44/4) − 1 ms.
    expect(r.heartbeat_lag_ms.p50).toBe(2047);
    expect(r.heartbeat_lag_ms.p99).toBe(2047);
  });

  it('serves readers within FLEET_HEALTH_CACHE_MS from one reading of Redis', async () => {
    // A fresh reading (at most 100 ms old) leaves 900 ms of the 1 s cache for the requests below.
    const fresh = await waitFor(report, (r) => Date.now() - r.at < 100);
    const answers = await Promise.all(Array.from({ length: 5 }, () => report()));
    expect(answers.map((a) => a.at)).toEqual(Array(5).fill(fresh.at));
  });

  it('refuses a caller without a token', async () => {
    const res = await f.api('GET', '/v1/fleet/health');
    expect(res.status).toBe(401);
    expect(res.body.error?.code).toBe('AUTH_TOKEN_MISSING');
  });
  it('leaves a revoked device out of every count but revoked, and drops its silence alert', async () => {
    const before = await report();
    const dev = await f.connectDevice('fh-gone', { token: await register('fh-gone', 'kiosk') });
    await beat(dev, 'fh-gone', 1, { fw: '9.9.9' });
    // A silence alert, as the silence checker raises it.
    await f.redis.multi()
      .zadd(redisKeys.deviceIndexSilent, Number(await f.redis.zscore(redisKeys.devices, 'fh-gone')), 'fh-gone')
      .zadd(redisKeys.alertsActive, Date.now(), 'fh-gone')
      .exec();
    await until((r) => r.by_type.kiosk === 1 && r.by_firmware['9.9.9'] === 1 && r.silent === before.silent + 1);

    expect((await f.api('DELETE', '/v1/devices/fh-gone', { token: await f.tokenFor('admin') })).status).toBe(200);
    const after = await until((r) => r.revoked === before.revoked + 1 && r.online === before.online);
    expect(after).toMatchObject({ devices: before.devices, silent: before.silent, by_type: before.by_type, by_firmware: before.by_firmware });
    expect(await f.redis.zscore(redisKeys.alertsActive, 'fh-gone')).toBeNull();
    expect(await f.redis.zscore(redisKeys.silenceDue, 'fh-gone')).toBeNull();
    await dev.endAsync().catch(() => undefined);
  });
});
