/**
 * The silence check: raises an alert once for a device that stopped sending heartbeats.
 *
 * The heartbeat part keeps `silenceDue` (a sorted set: device id → last_seen +
 * threshold_ms) up to date on every heartbeat. Every SILENCE_CHECK_MS this part reads the
 * ids whose time has passed, in batches, and hands each batch to one Lua call
 * (lua/silence-raise.lua) that re-checks, mutes or raises each id atomically. A tick costs
 * only the due devices: no timer per device, no scan of the fleet. Raising removes the id
 * from the index in the same step, so with several device-service nodes checking at once,
 * or after a restart, a silence is raised once; the heartbeat that ends it clears it.
 *
 * What a crash loses: the raise is recorded in Redis before the sink hears of it, so a
 * process that dies between the two leaves the alert active (GET /v1/alerts?state=active,
 * the silent index) without its topic message, log entry or webhook POST.
 */
import { Counter, Histogram, redisKeys, type Logger, type Redis, type Registry } from '@fleetwire/common';
import type { AlertChange, AlertSink } from './alert-change.js';
import type { DeviceServiceContext, Part } from './context.js';
import { deviceScripts } from './redis-scripts.js';

/** Due ids handed to one Lua call: large enough to keep round trips few, small enough not to stall Redis. */
export const SILENCE_CHECK_BATCH = 500;
/** A tick stops after this many batches and leaves the rest to the next tick. */
const MAX_BATCHES_PER_TICK = 200;
/**
 * A muted device is put back at the end of its mute, but rechecked at least this often:
 * PATCH can end a maintenance early and an OTA success ends its window, and neither
 * touches the index.
 */
export const MUTE_RECHECK_MS = 60_000;

type RaiseResult = [raised: [string, number, number][], muted: number, dropped: number, moved: number];

interface SilenceScripts {
  silenceRaise(numKeys: number, ...keysAndArgs: Array<string | number>): Promise<RaiseResult>;
}

/** What became of a due id in one check. */
export type SilenceOutcome = 'raised' | 'muted' | 'dropped' | 'moved';

interface SilenceMetrics {
  tick: Histogram;
  checked: Counter<'outcome'>;
}

const metricsByRegistry = new WeakMap<Registry, SilenceMetrics>();

function silenceMetrics(registry: Registry): SilenceMetrics {
  let m = metricsByRegistry.get(registry);
  if (!m) {
    m = {
      tick: new Histogram({
        name: 'fleetwire_device_silence_check_seconds', help: 'time one silence check took (every due device, all batches)',
        buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [registry],
      }),
      checked: new Counter({
        name: 'fleetwire_device_silence_checked_total',
        help: 'due devices the silence check looked at, by outcome: raised; muted (maintenance or OTA window, rescheduled); ' +
          'dropped (unknown, revoked, no state, already raised); moved (a heartbeat or another checker came first)',
        labelNames: ['outcome'], registers: [registry],
      }),
    };
    for (const outcome of ['raised', 'muted', 'dropped', 'moved'] as const) m.checked.inc({ outcome }, 0);
    metricsByRegistry.set(registry, m);
  }
  return m;
}

export interface SilenceCheckerOptions {
  redis: Redis;
  log: Logger;
  metricsRegistry: Registry;
  alerts: AlertSink;
  /** @defaultValue SILENCE_CHECK_BATCH */
  batch?: number;
  /** @defaultValue MUTE_RECHECK_MS */
  muteRecheckMs?: number;
}

export interface SilenceChecker {
  /** One check at `now` (unix ms): raises every device due by then and hands the changes to the sink. */
  tick(now?: number): Promise<AlertChange[]>;
}

export function createSilenceChecker(o: SilenceCheckerOptions): SilenceChecker {
  const scripts = deviceScripts<SilenceScripts>(o.redis);
  const metrics = silenceMetrics(o.metricsRegistry);
  const batch = o.batch ?? SILENCE_CHECK_BATCH;
  const muteRecheckMs = o.muteRecheckMs ?? MUTE_RECHECK_MS;

  async function checkBatch(ids: string[], now: number): Promise<AlertChange[]> {
    const keys: string[] = [redisKeys.silenceDue, redisKeys.deviceIndexSilent, redisKeys.alertsActive];
    for (const id of ids) keys.push(redisKeys.device(id), redisKeys.deviceState(id));
    const [raised, muted, dropped, moved] = await scripts.silenceRaise(keys.length, ...keys, now, muteRecheckMs, ...ids);
    metrics.checked.inc({ outcome: 'raised' }, raised.length);
    metrics.checked.inc({ outcome: 'muted' }, muted);
    metrics.checked.inc({ outcome: 'dropped' }, dropped);
    metrics.checked.inc({ outcome: 'moved' }, moved);
    return raised.map(([device_id, last_seen, threshold_ms]) => ({ device_id, kind: 'silence', state: 'raised', at: now, last_seen, threshold_ms }));
  }

  return {
    async tick(now = Date.now()) {
      const end = metrics.tick.startTimer();
      const changes: AlertChange[] = [];
      try {
        for (let round = 0; round < MAX_BATCHES_PER_TICK; round++) {
          const ids = await o.redis.zrangebyscore(redisKeys.silenceDue, '-inf', now, 'LIMIT', 0, batch);
          if (ids.length > 0) changes.push(...await checkBatch(ids, now));
          // Every id of a batch leaves the range (raised, dropped, rescheduled past now, or moved by a
          // heartbeat), so a full batch means more may be due.
          if (ids.length < batch) break;
        }
      } finally {
        end();
        // Raised in Redis is raised: tell the sink even when a later batch failed.
        if (changes.length > 0) {
          o.alerts.emit(changes);
          o.log.info({ raised: changes.length, devices: changes.slice(0, 20).map((c) => c.device_id) }, 'silence alerts raised');
        }
      }
      return changes;
    },
  };
}

/** The checker on a timer: one tick every SILENCE_CHECK_MS, never two at once on this node. */
export function silencePart(ctx: DeviceServiceContext, deps: { alerts: AlertSink }): Part {
  const log = ctx.log.child({ part: 'silence' });
  const checker = createSilenceChecker({ redis: ctx.redis, log, metricsRegistry: ctx.metricsRegistry, alerts: deps.alerts });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> = Promise.resolve();
  let stopped = false;

  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = checker.tick()
        .catch((err: unknown) => log.error({ err }, 'silence check failed; retrying at the next tick'))
        .finally(schedule);
    }, ctx.config.silenceCheckMs);
  };

  return {
    async start() {
      schedule();
    },
    async drain() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
