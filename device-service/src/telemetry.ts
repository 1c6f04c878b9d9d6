/**
 * Telemetry: the `telemetry` queue into one capped Redis stream per device plus its latest
 * value per reading, and GET /v1/devices/{id}/telemetry.
 *
 * Layout (common/src/redis-keys.ts):
 * - redisKeys.telemetry(id): a stream. Entry id `<received_at>-<n>`: the broker's receive
 *   time, so the stream is in time order (but see Ordering) and since/until are id ranges. Fields, kept short
 *   because there are many entries: c = the envelope's cid, a = the device's `at`,
 *   r = readings as JSON `[[name, value, unit], …]`, and t = received_at only for a message
 *   that arrived behind a newer one (see below). Trimmed to about TELEMETRY_MAX_LEN entries
 *   and TELEMETRY_MAX_AGE_S, and expiring that long after the device's last message.
 * - redisKeys.telemetryLatest(id): a hash, reading name → JSON {value, unit, at, received_at},
 *   each name keeping its newest reading by received_at (at most LATEST_MAX_NAMES names).
 *
 * Ordering: a stream only appends. A message whose received_at is older than the stream's
 * newest entry is appended after it rather than dropped, and keeps its received_at in `t`.
 * That happens often enough: BullMQ hands a worker the jobs it fetched concurrently in the
 * order the fetches finish, so two quick messages of one device can meet in different
 * batches in swapped order; also another broker node's clock, a retry after backoff, two
 * device-service nodes racing. Within a batch a device's messages are written in
 * received_at order.
 *
 * Duplicates (at-least-once): BullMQ runs a job again when an attempt failed after Redis
 * had stored it (a timeout, a lapsed lock). A retried job carries the same envelope, so
 * its cid identifies it. A message is never stored before its received_at, so the script
 * looks for its cid only among the entries from received_at on: none in the usual case
 * (received_at is newer than everything, one XREVRANGE of one entry), a few for a retry.
 * Cheaper than a per-device set of seen cids, which would cost memory per message and
 * need its own trimming. The scan is capped (DEDUPE_SCAN); a retry that comes after more
 * than that many newer messages of the same device would be stored twice.
 */
import {
  createQueueConsumer, LogThrottle, redisKeys, Counter,
  type IngressEnvelope, type QueueJob, type Redis, type Registry,
} from '@fleetwire/common';
import type { DeviceServiceConfig } from './config.js';
import type { DeviceServiceContext, Part } from './context.js';
import { deviceScripts } from './redis-scripts.js';
import {
  telemetryRoutes,
  type LatestReading, type Reading, type TelemetryItem, type TelemetryPage, type TelemetryQuery,
} from './routes/telemetry.js';

/** What became of one telemetry message. */
export type TelemetryOutcome = 'stored' | 'duplicate' | 'unknown_device' | 'expired';
const OUTCOMES: readonly TelemetryOutcome[] = ['stored', 'duplicate', 'unknown_device', 'expired'];

/** Two messages' worth of reading names (the schema allows 32 a message). */
const LATEST_MAX_NAMES = 64;
/** Entries from a message's received_at on that are searched for its cid. */
const DEDUPE_SCAN = 1000;
/** At most one log line a minute per kind of dropped message: a fleet of revoked devices must not flood the log. */
const DROP_LOG_INTERVAL_MS = 60_000;

interface TelemetryPayload { readonly at: number; readonly readings: readonly Reading[] }

interface TelemetryScripts {
  /** lua/telemetry-store.lua */
  telemetryStore(numKeys: number, ...keysThenArgs: Array<string | number>): Promise<TelemetryOutcome[]>;
}

export function telemetryPart(ctx: DeviceServiceContext): Part {
  const store = new TelemetryStore(ctx.redis, ctx.config);
  const log = ctx.log.child({ part: 'telemetry' });
  const counted = telemetryMetrics(ctx.metricsRegistry);
  const dropLog = new LogThrottle(DROP_LOG_INTERVAL_MS);

  const logDrop = (job: QueueJob, outcome: TelemetryOutcome): void => {
    const suppressed = dropLog.take(outcome);
    if (suppressed === null) return;
    const why = outcome === 'unknown_device'
      ? 'telemetry of an unknown or revoked device dropped'
      : 'telemetry older than TELEMETRY_MAX_AGE_S on arrival dropped';
    job.log.warn({ received_at: job.envelope.received_at, suppressed }, why);
  };

  const consumer = createQueueConsumer({
    queue: 'telemetry', connection: ctx.queueConnection, log, metricsRegistry: ctx.metricsRegistry,
    concurrency: ctx.config.telemetryBatch,
    handleBatch: async (jobs) => {
      const outcomes = await store.write(jobs.map((j) => j.envelope));
      outcomes.forEach((outcome, i) => {
        counted.inc({ outcome });
        if (outcome === 'unknown_device' || outcome === 'expired') logDrop(jobs[i]!, outcome);
        else if (outcome === 'duplicate') jobs[i]!.log.info('telemetry already stored by an earlier attempt; not stored again');
      });
    },
  });

  telemetryRoutes(ctx.http, { reader: ctx.guards.reader, read: (id, query) => store.read(id, query) });

  return {
    readiness: { telemetry_consumer: async () => consumer.isRunning() },
    start: () => consumer.start(),
    drain: async () => { await consumer.drain(); },
  };
}

function telemetryMetrics(registry: Registry): Counter<'outcome'> {
  const counter = new Counter({
    name: 'fleetwire_device_telemetry_total',
    help: 'telemetry messages taken from the queue, by what became of them (schema refusals are counted by the broker and the queue consumer)',
    labelNames: ['outcome'],
    registers: [registry],
  });
  // Every outcome shows from the start, so dashboards and alerts see the series before the first event.
  for (const outcome of OUTCOMES) counter.inc({ outcome }, 0);
  return counter;
}

/** The device's streams and latest values in Redis. */
export class TelemetryStore {
  private readonly scripts: TelemetryScripts;

  constructor(private readonly redis: Redis, private readonly config: Pick<DeviceServiceConfig, 'telemetryMaxLen' | 'telemetryMaxAgeS'>) {
    this.scripts = deviceScripts<TelemetryScripts>(redis);
  }

  /**
   * Stores schema-checked telemetry envelopes in one round trip; returns each one's outcome,
   * in the order given. Within the batch a device's messages are written in received_at order.
   */
  async write(envelopes: readonly IngressEnvelope[], now = Date.now()): Promise<TelemetryOutcome[]> {
    const order = envelopes.map((_, i) => i).sort((x, y) => envelopes[x]!.received_at - envelopes[y]!.received_at);
    const maxAgeMs = this.config.telemetryMaxAgeS * 1000;
    const keys: string[] = [];
    const args: Array<string | number> = [this.config.telemetryMaxLen, maxAgeMs, now - maxAgeMs, LATEST_MAX_NAMES, DEDUPE_SCAN];
    for (const i of order) {
      const { device_id: id, cid, received_at: receivedAt } = envelopes[i]!;
      const { at, readings } = envelopes[i]!.payload as unknown as TelemetryPayload;
      keys.push(redisKeys.device(id), redisKeys.telemetry(id), redisKeys.telemetryLatest(id));
      args.push(receivedAt, cid, at, JSON.stringify(readings.map((r) => [r.name, r.value, r.unit])), readings.length);
      for (const r of readings) {
        const latest: LatestReading = { value: r.value, unit: r.unit, at, received_at: receivedAt };
        args.push(r.name, JSON.stringify(latest));
      }
    }
    const sorted = await this.scripts.telemetryStore(keys.length, ...keys, ...args);
    const outcomes = new Array<TelemetryOutcome>(envelopes.length);
    order.forEach((i, k) => { outcomes[i] = sorted[k]!; });
    return outcomes;
  }

  /** One page of a device's telemetry and its latest readings; null for a device that is not registered. */
  async read(deviceId: string, q: TelemetryQuery): Promise<TelemetryPage | null> {
    const stream = redisKeys.telemetry(deviceId);
    const range = streamRange(q);
    const pipeline = this.redis.pipeline().hget(redisKeys.device(deviceId), 'status').hgetall(redisKeys.telemetryLatest(deviceId));
    if (range) {
      // One more than asked for: whether there is a next page.
      if (q.order === 'desc') pipeline.xrevrange(stream, range.high, range.low, 'COUNT', q.limit + 1);
      else pipeline.xrange(stream, range.low, range.high, 'COUNT', q.limit + 1);
    }
    const results = (await pipeline.exec())!;
    for (const [err] of results) if (err) throw err;
    const [status, latestFields, entries] = results.map(([, value]) => value) as
      [string | null, Record<string, string>, Array<[string, string[]]> | undefined];
    if (status === null) return null;

    const page = (entries ?? []).slice(0, q.limit);
    const latest: Record<string, LatestReading> = {};
    for (const [name, json] of Object.entries(latestFields)) latest[name] = JSON.parse(json) as LatestReading;
    return {
      device_id: deviceId,
      latest,
      items: page.map(([id, fields]) => itemOf(id, fields)),
      next_cursor: (entries?.length ?? 0) > q.limit ? page[page.length - 1]![0] : null,
    };
  }
}

/** The XRANGE bounds of a query; null when nothing can match (a descending page after the very first position). */
function streamRange(q: TelemetryQuery): { low: string; high: string } | null {
  let low = q.since === undefined ? '-' : String(q.since);
  let high = q.until === undefined ? '+' : String(q.until);
  const c = q.cursor;
  if (c && q.order === 'asc' && (q.since === undefined || c.ms >= q.since)) low = `(${c.id}`;
  if (c && q.order === 'desc') {
    // Nothing comes before 0-0, and Redis refuses "(0-0" as an end.
    if (c.id === '0-0') return null;
    if (q.until === undefined || c.ms <= q.until) high = `(${c.id}`;
  }
  return { low, high };
}

function itemOf(id: string, flat: readonly string[]): TelemetryItem {
  const f: Record<string, string> = {};
  for (let i = 0; i < flat.length; i += 2) f[flat[i]!] = flat[i + 1]!;
  const readings = (JSON.parse(f.r ?? '[]') as Array<[string, number, string]>).map(([name, value, unit]) => ({ name, value, unit }));
  return { id, at: Number(f.a), received_at: Number(f.t ?? id.slice(0, id.indexOf('-'))), readings };
}
