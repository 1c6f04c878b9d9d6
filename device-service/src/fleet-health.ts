/**
 * Fleet health: counts of the whole fleet, for GET /v1/fleet/health and the fleet gauges.
 *
 * The cost does not grow with the number of devices: every number is the size of an index
 * (ZCARD/ZCOUNT), per firmware version and per type one ZCARD each (less its revoked
 * devices), and the lag
 * percentiles come from the per-minute bucket counts the heartbeat script keeps
 * (redisKeys.heartbeatLag), which every device-service node adds to: they are fleet-wide.
 * Two round trips in all. A reading is reused for FLEET_HEALTH_CACHE_MS, and concurrent
 * readers share one, so a scrape storm or a busy dashboard does not hammer Redis.
 */
import { Gauge, LogThrottle, redisKeys, type Redis } from '@fleetwire/common';
import type { DeviceServiceContext, Part } from './context.js';
import { fleetHealthRoutes, type FleetHealthReport } from './routes/fleet-health.js';

/** The lag window: the current minute and the 4 before it. */
const LAG_WINDOW_MINUTES = 5;
/** Gauges label at most this many firmware versions and types (the largest); the rest are summed under "other". */
export const MAX_LABELLED_VALUES = 20;

export class FleetHealth {
  private cached: FleetHealthReport | null = null;
  private reading: Promise<FleetHealthReport> | null = null;

  constructor(private readonly redis: Redis, private readonly cacheMs: number) {}

  /** The newest reading, from Redis when the cached one is older than cacheMs. */
  async read(): Promise<FleetHealthReport> {
    if (this.cached && Date.now() - this.cached.at < this.cacheMs) return this.cached;
    this.reading ??= readFleetHealth(this.redis).then(
      (report) => { this.cached = report; this.reading = null; return report; },
      (err: unknown) => { this.reading = null; throw err; },
    );
    return this.reading;
  }
}

export async function readFleetHealth(redis: Redis, now = Date.now()): Promise<FleetHealthReport> {
  const minute = Math.floor(now / 60_000);
  const lagKeys = Array.from({ length: LAG_WINDOW_MINUTES }, (_, i) => redisKeys.heartbeatLag(String(minute - i)));
  // Everything in one tick: auto-pipelining sends it as one round trip.
  const [registered, revoked, online, silent, inMaintenance, reboots, fwValues, typeValues, ...lagCounts] = await Promise.all([
    redis.zcard(redisKeys.devices),
    redis.zcard(redisKeys.deviceIndexRevoked),
    redis.zcard(redisKeys.deviceIndexOnline),
    redis.zcard(redisKeys.deviceIndexSilent),
    redis.zcount(redisKeys.deviceMaintenance, `(${now}`, '+inf'),
    redis.zcount(redisKeys.reboots, now - 3600_000, '+inf'),
    redis.smembers(redisKeys.deviceIndexValues('fw')),
    redis.smembers(redisKeys.deviceIndexValues('type')),
    ...lagKeys.map((k) => redis.hgetall(k)),
  ]) as [number, number, number, number, number, number, string[], string[], ...Record<string, string>[]];
  const devices = Math.max(0, registered - revoked);
  const [byFirmware, byType] = await Promise.all([
    countsOf(redis, 'fw', fwValues),
    countsOf(redis, 'type', typeValues),
  ]);
  return {
    devices, revoked, online, offline: Math.max(0, devices - online), silent, in_maintenance: inMaintenance,
    by_firmware: byFirmware, by_type: byType, reboots_last_hour: reboots,
    heartbeat_lag_ms: { ...lagPercentiles(lagCounts), window_s: LAG_WINDOW_MINUTES * 60 },
    at: now,
  };
}

/**
 * Devices per value, revoked ones left out (they stay in the type index for the listing, and in
 * the firmware index they last reported): ZINTERCARD costs in proportion to the revoked set.
 */
async function countsOf(redis: Redis, kind: 'fw' | 'type', values: string[]): Promise<Record<string, number>> {
  const sorted = [...values].sort();
  const sizes = await Promise.all(sorted.map(async (v) => {
    const key = redisKeys.deviceIndex(kind, v);
    const [all, revoked] = await Promise.all([redis.zcard(key), redis.zintercard(2, key, redisKeys.deviceIndexRevoked)]);
    return all - revoked;
  }));
  const out: Record<string, number> = {};
  sorted.forEach((v, i) => { if (sizes[i]! > 0) out[v] = sizes[i]!; });
  return out;
}

/**
 * p50/p90/p99 of merged bucket counts (field = bucket b holding lags in [2^(b/4) − 1,
 * 2^((b+1)/4) − 1) ms, see lua/apply-heartbeats.lua); each is its bucket's upper edge.
 */
export function lagPercentiles(minutes: readonly Record<string, string>[]): { p50: number | null; p90: number | null; p99: number | null; samples: number } {
  const counts = new Map<number, number>();
  for (const m of minutes) for (const [b, n] of Object.entries(m)) counts.set(Number(b), (counts.get(Number(b)) ?? 0) + Number(n));
  const buckets = [...counts.entries()].sort((x, y) => x[0] - y[0]);
  const samples = buckets.reduce((sum, [, n]) => sum + n, 0);
  const at = (q: number): number | null => {
    if (samples === 0) return null;
    const rank = Math.ceil(q * samples);
    let seen = 0;
    for (const [b, n] of buckets) {
      seen += n;
      if (seen >= rank) return Math.ceil(2 ** ((b + 1) / 4) - 1);
    }
    return null;
  };
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), samples };
}

/** The largest `max` entries by count, the rest summed as "other" (label values stay few whatever devices report). */
function largest(counts: Record<string, number>, max: number): Array<[string, number]> {
  const sorted = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  if (sorted.length <= max) return sorted;
  const other = sorted.slice(max).reduce((sum, [, n]) => sum + n, 0);
  return [...sorted.slice(0, max), ['other', other]];
}

export function fleetHealthPart(ctx: DeviceServiceContext): Part {
  const health = new FleetHealth(ctx.redis, ctx.config.fleetHealthCacheMs);
  const log = ctx.log.child({ part: 'fleet-health' });
  const throttle = new LogThrottle(60_000);
  // A failed reading leaves the gauges as they were: a throw would fail the whole /metrics
  // scrape, hiding every other metric just when Redis trouble makes them interesting.
  const latest = async (): Promise<FleetHealthReport | null> => {
    try {
      return await health.read();
    } catch (err) {
      const suppressed = throttle.take('read');
      if (suppressed !== null) log.warn({ err, suppressed }, 'reading fleet health for the gauges failed; they keep their previous values');
      return null;
    }
  };
  const registers = [ctx.metricsRegistry];
  // Computed on scrape from one (cached) reading: every gauge's collect asks for the same one.
  new Gauge({
    name: 'fleetwire_device_fleet_devices', registers, labelNames: ['state'],
    help: 'devices by state: registered (all), online, offline, silent (an active silence alert), maintenance; the states overlap',
    async collect() {
      const h = await latest();
      if (!h) return;
      this.set({ state: 'registered' }, h.devices);
      this.set({ state: 'online' }, h.online);
      this.set({ state: 'offline' }, h.offline);
      this.set({ state: 'silent' }, h.silent);
      this.set({ state: 'maintenance' }, h.in_maintenance);
    },
  });
  new Gauge({
    name: 'fleetwire_device_fleet_firmware_devices', registers, labelNames: ['fw'],
    help: `devices by firmware version (the ${MAX_LABELLED_VALUES} largest; the rest as fw="other")`,
    async collect() {
      const h = await latest();
      if (!h) return;
      this.reset();
      for (const [fw, n] of largest(h.by_firmware, MAX_LABELLED_VALUES)) this.set({ fw }, n);
    },
  });
  new Gauge({
    name: 'fleetwire_device_fleet_type_devices', registers, labelNames: ['type'],
    help: `devices by type (the ${MAX_LABELLED_VALUES} largest; the rest as type="other")`,
    async collect() {
      const h = await latest();
      if (!h) return;
      this.reset();
      for (const [type, n] of largest(h.by_type, MAX_LABELLED_VALUES)) this.set({ type }, n);
    },
  });
  new Gauge({
    name: 'fleetwire_device_reboots_last_hour', registers, help: 'device reboots detected that happened in the last hour, fleet-wide',
    async collect() {
      const h = await latest();
      if (h) this.set(h.reboots_last_hour);
    },
  });
  new Gauge({
    name: 'fleetwire_device_fleet_heartbeat_lag_seconds', registers, labelNames: ['quantile'],
    help: 'fleet-wide heartbeat lag (received → state written) over the last 5 minutes, by quantile; absent without samples',
    async collect() {
      const h = await latest();
      if (!h) return;
      const lag = h.heartbeat_lag_ms;
      this.reset();
      for (const [quantile, v] of [['0.5', lag.p50], ['0.9', lag.p90], ['0.99', lag.p99]] as const) {
        if (v !== null) this.set({ quantile }, v / 1000);
      }
    },
  });
  fleetHealthRoutes(ctx.http, { reader: ctx.guards.reader, read: () => health.read() });
  return {};
}
