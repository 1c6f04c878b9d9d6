/**
 * OTA status from devices (queue `ota-events`, contracts/schemas/ota-status.schema.json):
 * the device's state hash records the rollout, its state and when it was reported
 * (ota_rollout, ota_state, ota_at), and the OTA reboot window that mutes silence alerts.
 *
 * A device that installs an update goes quiet while it verifies the image and reboots
 * into it; that silence is expected, not an outage. "verifying", "rebooting" and
 * "pending-verify" open (or extend) the window: ota_window_until = reported at +
 * OTA_REBOOT_WINDOW_S. "success", "failed" and "rolled-back" end it; the other states
 * leave it as it is. The silence check reads ota_window_until (lua/silence-raise.lua).
 * Each status is also handed to the rollout engine (rollouts.ts), which moves the device's
 * state in its rollout.
 */
import { Counter, LogThrottle, createQueueConsumer, redisKeys, type QueueJob, type Registry } from '@fleetwire/common';
import type { DeviceServiceContext, Part } from './context.js';
import { deviceScripts } from './redis-scripts.js';

const OPENS_WINDOW: ReadonlySet<string> = new Set(['verifying', 'rebooting', 'pending-verify']);
const ENDS_WINDOW: ReadonlySet<string> = new Set(['success', 'failed', 'rolled-back']);

type OtaOutcome = 'applied' | 'stale' | 'unknown';

interface OtaScripts {
  otaStatus(record: string, state: string, at: number, rollout: string, otaState: string, window: string): Promise<OtaOutcome>;
}

interface OtaStatus { rollout: string; state: string; progress: number; error?: string }

const countersByRegistry = new WeakMap<Registry, Counter<'outcome'>>();

function otaCounter(registry: Registry): Counter<'outcome'> {
  let c = countersByRegistry.get(registry);
  if (!c) {
    c = new Counter({
      name: 'fleetwire_device_ota_events_total',
      help: 'OTA status reports consumed: applied; stale (older than the one recorded); unknown_device (not registered or revoked: dropped)',
      labelNames: ['outcome'], registers: [registry],
    });
    for (const outcome of ['applied', 'stale', 'unknown_device'] as const) c.inc({ outcome }, 0);
    countersByRegistry.set(registry, c);
  }
  return c;
}

/** The window field for a reported state: a unix ms, 'end', or '' (leave it). */
export function otaWindowFor(state: string, reportedAt: number, windowS: number): string {
  if (OPENS_WINDOW.has(state)) return String(reportedAt + windowS * 1000);
  if (ENDS_WINDOW.has(state)) return 'end';
  return '';
}

/** The rollout engine's side of an OTA status (rollouts.ts); absent, statuses are only recorded. */
export interface OtaEventSink {
  onOtaEvent(deviceId: string, rollout: string, state: string, at: number, error?: string): Promise<unknown>;
}

export function otaEventsPart(ctx: DeviceServiceContext, deps: { rollouts?: OtaEventSink } = {}): Part {
  const log = ctx.log.child({ part: 'ota-events' });
  const scripts = deviceScripts<OtaScripts>(ctx.redis);
  const outcomes = otaCounter(ctx.metricsRegistry);
  const unknownLog = new LogThrottle(10_000);

  async function handle(job: QueueJob): Promise<void> {
    const { device_id: id, received_at: at } = job.envelope;
    const status = job.envelope.payload as unknown as OtaStatus;
    const window = otaWindowFor(status.state, at, ctx.config.otaRebootWindowS);
    const outcome = await scripts.otaStatus(redisKeys.device(id), redisKeys.deviceState(id), at, status.rollout, status.state, window);
    if (outcome === 'unknown') {
      outcomes.inc({ outcome: 'unknown_device' });
      const suppressed = unknownLog.take('unknown');
      if (suppressed !== null) job.log.warn({ suppressed }, 'OTA status of an unknown or revoked device dropped');
      return;
    }
    outcomes.inc({ outcome });
    // Also when stale here: the rollout's own script drops repeats, and a status the state
    // hash holds as older may still be new to its rollout.
    await deps.rollouts?.onOtaEvent(id, status.rollout, status.state, at, status.error);
    job.log.info({ rollout: status.rollout, ota_state: status.state, progress: status.progress, error: status.error, outcome }, 'OTA status');
  }

  const consumer = createQueueConsumer({
    queue: 'ota-events', connection: ctx.queueConnection, log, metricsRegistry: ctx.metricsRegistry, concurrency: 8, handle,
  });

  return {
    readiness: { ota_events_consumer: async () => consumer.isRunning() },
    start: () => consumer.start(),
    async drain() {
      await consumer.drain();
    },
  };
}
