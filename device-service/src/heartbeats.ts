/**
 * The heartbeat consumer: every heartbeat the broker queued becomes the device's state
 * (device-state.ts lists the fields) and its place in the indexes others read: last-seen,
 * firmware, and the silence checker's time-ordered index (silenceDue: when the device
 * counts as silent). Also GET /v1/devices/{id}/state, which shows that state.
 *
 * Throughput: a batch of jobs (up to HEARTBEAT_BATCH) is written in one Lua call, one
 * round trip (lua/apply-heartbeats.lua, where the rules are):
 * - at-least-once: a job whose received_at is not newer than the stored last_seen (a retry,
 *   a duplicate, out of order) changes nothing and teaches nothing; nor does one with the
 *   stored seq and uptime_s (the device sent it again, e.g. QoS 1 after a reconnect, and the
 *   broker queued it anew with a later received_at);
 * - a reboot is uptime going backwards: boot_count, last_reboot_at, and an entry in the
 *   reboots index (kept REBOOTS_KEPT_MS) for fleet health;
 * - the interval is learned as TCP learns its round-trip time (RFC 6298: smoothed mean with
 *   alpha 1/8, smoothed deviation with 1/4), never from a gap longer than the threshold in
 *   force, and sets the silence threshold;
 * - a heartbeat of a device with an active silence alert clears it (the alert sink is told);
 * - unknown and revoked devices' jobs write nothing and complete (retrying cannot help).
 *
 * Lag (received_at → state written) is measured with the Redis clock at the write and kept
 * twice: in this process's histogram fleetwire_device_heartbeat_lag_seconds, and fleet-wide
 * in per-minute bucket counts in Redis (redisKeys.heartbeatLag) that fleet health reads.
 */
import {
  Counter, createQueueConsumer, Histogram, LogThrottle, redisKeys, type IngressEnvelope, type QueueJob, type Registry,
} from '@fleetwire/common';
import type { AlertChange, AlertSink } from './alert-change.js';
import type { DeviceServiceContext, Part } from './context.js';
import { deviceScripts } from './redis-scripts.js';
import { stateRoutes } from './routes/state.js';

/** Reboots older than this leave the reboots index (fleet health counts the last hour). */
export const REBOOTS_KEPT_MS = 2 * 3600_000;
/** A minute's lag counts are kept this long: the 5-minute window and some slack. */
export const LAG_KEY_TTL_S = 600;

const OUTCOME = ['unknown_device', 'stale', 'applied', 'applied'] as const;
const REBOOT = 3;

export type HeartbeatOutcome = (typeof OUTCOME)[number];

interface HeartbeatScripts {
  /** lua/apply-heartbeats.lua: returns [now ms, code per heartbeat, [index, previous last_seen, threshold] per cleared silence]. */
  applyHeartbeats(...args: Array<string | number>): Promise<[number, number[], number[]]>;
}

interface HeartbeatMetrics {
  heartbeats: Counter<'outcome'>;
  lag: Histogram;
  reboots: Counter;
}

function heartbeatMetrics(registry: Registry): HeartbeatMetrics {
  const heartbeats = new Counter({
    name: 'fleetwire_device_heartbeats_total', help: 'heartbeats taken from the queue, by what became of them',
    labelNames: ['outcome'], registers: [registry],
  });
  for (const outcome of new Set(OUTCOME)) heartbeats.inc({ outcome }, 0);
  return {
    heartbeats,
    lag: new Histogram({
      name: 'fleetwire_device_heartbeat_lag_seconds', help: 'time from the broker receiving a heartbeat to the device state written in Redis (Redis clock)',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers: [registry],
    }),
    reboots: new Counter({ name: 'fleetwire_device_reboots_total', help: 'device reboots detected (uptime went backwards)', registers: [registry] }),
  };
}

/** What the heartbeat part needs from the rest of the service. */
export interface HeartbeatDeps {
  /** Told when a heartbeat ends a silence alert. */
  alerts: AlertSink;
}

export function heartbeatsPart(ctx: DeviceServiceContext, deps: HeartbeatDeps): Part {
  const { config } = ctx;
  const log = ctx.log.child({ part: 'heartbeats' });
  const metrics = heartbeatMetrics(ctx.metricsRegistry);
  const scripts = deviceScripts<HeartbeatScripts>(ctx.redis);
  const unknownLog = new LogThrottle(10_000);
  // Key prefixes: the script builds per-device keys from them (redis-keys.ts stays the one layout).
  const prefixes = [redisKeys.device(''), redisKeys.deviceState(''), redisKeys.deviceIndex('fw', ''), redisKeys.heartbeatLag('')];
  const settings = [
    config.silenceMultiplierPct, config.silenceFloorS * 1000, config.silenceCeilingS * 1000, config.silenceMinHistory,
    config.silenceDefaultIntervalS * 1000, REBOOTS_KEPT_MS, LAG_KEY_TTL_S,
  ];

  async function applyBatch(jobs: readonly QueueJob[]): Promise<void> {
    const args: Array<string | number> = [
      redisKeys.silenceDue, redisKeys.deviceIndexLastSeen, redisKeys.reboots, redisKeys.deviceIndexSilent,
      redisKeys.alertsActive, redisKeys.deviceIndexValues('fw'), ...prefixes, ...settings,
    ];
    for (const { envelope: e } of jobs) {
      const p = e.payload as { fw: string; rssi: number; heap_free: number; uptime_s: number; seq: number };
      args.push(e.device_id, e.received_at, p.fw, p.rssi, p.heap_free, p.uptime_s, p.seq);
    }
    const [writtenAt, codes, cleared] = await scripts.applyHeartbeats(...args);

    jobs.forEach((job, i) => {
      const code = codes[i]!;
      metrics.heartbeats.inc({ outcome: OUTCOME[code] });
      if (code >= 2) metrics.lag.observe(Math.max(0, writtenAt - job.envelope.received_at) / 1000);
      if (code === REBOOT) metrics.reboots.inc();
      if (code === 0) logUnknown(job.envelope);
    });
    if (cleared.length > 0) deps.alerts.emit(clearedAlerts(jobs, cleared));
  }

  function logUnknown(e: IngressEnvelope): void {
    const suppressed = unknownLog.take('unknown_device');
    if (suppressed === null) return;
    log.warn({ device_id: e.device_id, cid: e.cid, suppressed }, 'heartbeat of an unknown or revoked device dropped');
  }

  const consumer = createQueueConsumer({
    queue: 'heartbeats', connection: ctx.queueConnection, log, metricsRegistry: ctx.metricsRegistry,
    concurrency: config.heartbeatBatch, handleBatch: applyBatch,
  });
  stateRoutes(ctx.http, { redis: ctx.redis, reader: ctx.guards.reader });

  return {
    readiness: { heartbeats_consumer: async () => consumer.isRunning() },
    start: () => consumer.start(),
    async drain() {
      await consumer.drain();
    },
  };
}

/** The silence alerts the script cleared, as alert changes (triples: 1-based job index, previous last_seen, threshold). */
function clearedAlerts(jobs: readonly QueueJob[], cleared: readonly number[]): AlertChange[] {
  const changes: AlertChange[] = [];
  for (let k = 0; k < cleared.length; k += 3) {
    const e = jobs[cleared[k]! - 1]!.envelope;
    const lastSeen = cleared[k + 1]!;
    changes.push({
      device_id: e.device_id, kind: 'silence', state: 'cleared', at: e.received_at,
      last_seen: lastSeen, threshold_ms: cleared[k + 2]!, silent_for_ms: e.received_at - lastSeen,
    });
  }
  return changes;
}
