/**
 * Where silence alert changes go: the one AlertSink of the device service. The silence
 * check emits `raised`, the heartbeat part `cleared`. Each change is
 *   - published retained at QoS 1 on `fleet/alerts/{id}` through the broker link, so a
 *     service that subscribes later still learns every device's current alert state;
 *   - appended to the alert log (a capped stream, GET /v1/alerts?state=all);
 *   - counted (fleetwire_device_alerts_total{state}; fleetwire_device_alerts_active is read
 *     from Redis on scrape, so it is fleet-wide whichever node raised);
 *   - POSTed to the webhook when one is configured (webhook.ts).
 * emit() returns at once and never throws: its callers are the heartbeat consumer and the
 * silence check. Publishes of one device go out in the order emitted (a chain per device),
 * different devices' in parallel up to a cap.
 */
import { Counter, Gauge, payloadValidator, redisKeys, topicFor, type Logger, type Registry } from '@fleetwire/common';
import type { AlertChange, AlertSink } from './alert-change.js';
import type { DeviceServiceContext, Part } from './context.js';
import { alertRoutes } from './routes/alerts.js';
import { AlertWebhook } from './webhook.js';

/** Publishes waiting for the broker's PUBACK at once, at most: MQTT has 65,535 packet ids per connection. */
const MAX_PUBLISHES_IN_FLIGHT = 1000;
/** How long close() waits for publishes and log writes still under way. */
const CLOSE_WAIT_MS = 5000;

const isAlert = payloadValidator('alert');

interface AlertMetrics {
  changes: Counter<'state'>;
  publishFailures: Counter;
  active: Gauge;
}

const metricsByRegistry = new WeakMap<Registry, AlertMetrics>();

function alertMetrics(registry: Registry, readActive: () => Promise<number>): AlertMetrics {
  let m = metricsByRegistry.get(registry);
  if (!m) {
    m = {
      changes: new Counter({ name: 'fleetwire_device_alerts_total', help: 'silence alert changes emitted on this node, by state (raised, cleared)', labelNames: ['state'], registers: [registry] }),
      publishFailures: new Counter({ name: 'fleetwire_device_alert_publish_failures_total', help: 'alert changes that could not be published on fleet/alerts/{id} (still in the alert log)', registers: [registry] }),
      active: new Gauge({
        name: 'fleetwire_device_alerts_active', help: 'devices with an active silence alert, fleet-wide (read from Redis on scrape)', registers: [registry],
        async collect() {
          // A failed read leaves the last value: a scrape should not fail for one gauge.
          try { this.set(await readActive()); } catch { /* see above */ }
        },
      }),
    };
    for (const state of ['raised', 'cleared'] as const) m.changes.inc({ state }, 0);
    metricsByRegistry.set(registry, m);
  }
  return m;
}

/** The alerts part: the sink the other parts emit to, plus GET /v1/alerts. */
export interface AlertsPart extends Part, AlertSink {}

export function alertsPart(ctx: DeviceServiceContext): AlertsPart {
  const log = ctx.log.child({ part: 'alerts' });
  const metrics = alertMetrics(ctx.metricsRegistry, () => ctx.redis.zcard(redisKeys.alertsActive));
  const c = ctx.config;
  const webhook = c.alertWebhookUrl
    ? new AlertWebhook({
      url: c.alertWebhookUrl, secret: c.alertWebhookSecret, attempts: c.alertWebhookAttempts, backoffMs: c.alertWebhookBackoffMs,
      timeoutMs: c.alertWebhookTimeoutMs, queueMax: c.alertWebhookQueueMax, log: log.child({ to: 'webhook' }), metricsRegistry: ctx.metricsRegistry,
    })
    : null;
  const publisher = new OrderedPublisher(log, (change) => ctx.link.publish(topicFor('alert', change.device_id), change, { qos: 1, retain: true }), metrics.publishFailures);
  const logWrites = new Set<Promise<unknown>>();

  alertRoutes(ctx.http, { redis: ctx.redis, reader: ctx.guards.reader });

  return {
    emit(changes) {
      try {
        const valid = changes.filter((change) => {
          if (isAlert(change)) return true;
          log.error({ change }, 'an alert change breaks alert.schema.json; not sent (a bug in its emitter)');
          return false;
        });
        for (const change of valid) {
          metrics.changes.inc({ state: change.state });
          log.debug({ device_id: change.device_id, state: change.state, last_seen: change.last_seen, threshold_ms: change.threshold_ms }, `silence alert ${change.state}`);
          publisher.publish(change);
          const write = ctx.redis.xadd(redisKeys.alertLog, 'MAXLEN', '~', c.alertLogMaxLen, '*', ...logFields(change))
            .catch((err: unknown) => log.error({ err, device_id: change.device_id, state: change.state }, 'writing the alert log failed'))
            .finally(() => logWrites.delete(write));
          logWrites.add(write);
        }
        webhook?.enqueue(valid);
      } catch (err) {
        log.error({ err }, 'emitting alert changes failed');
      }
    },
    async close() {
      await Promise.race([Promise.all([publisher.idle(), ...logWrites]), new Promise((r) => setTimeout(r, CLOSE_WAIT_MS).unref())]);
      await webhook?.close();
    },
  };
}

/** The alert log entry's fields: the change's own, optional ones only when present. */
function logFields(change: AlertChange): string[] {
  const fields = ['device_id', change.device_id, 'kind', change.kind, 'state', change.state, 'at', String(change.at),
    'last_seen', String(change.last_seen), 'threshold_ms', String(change.threshold_ms)];
  if (change.silent_for_ms !== undefined) fields.push('silent_for_ms', String(change.silent_for_ms));
  return fields;
}

/**
 * Publishes one device's changes strictly in order (the retained message must end as the
 * latest change) and different devices' concurrently, at most MAX_PUBLISHES_IN_FLIGHT.
 */
class OrderedPublisher {
  private readonly tails = new Map<string, Promise<void>>();
  private inFlight = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(
    private readonly log: Logger,
    private readonly send: (change: AlertChange) => Promise<void>,
    private readonly failures: Counter,
  ) {}

  publish(change: AlertChange): void {
    const id = change.device_id;
    const next = (this.tails.get(id) ?? Promise.resolve()).then(() => this.sendWithSlot(change));
    this.tails.set(id, next);
    void next.finally(() => { if (this.tails.get(id) === next) this.tails.delete(id); });
  }

  /** Resolves when every publish emitted so far has settled. */
  async idle(): Promise<void> {
    while (this.tails.size > 0) await Promise.all(this.tails.values());
  }

  private async sendWithSlot(change: AlertChange): Promise<void> {
    // A finished publish hands its slot straight to the next waiter, so the cap holds.
    if (this.inFlight < MAX_PUBLISHES_IN_FLIGHT) this.inFlight++;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      await this.send(change);
    } catch (err) {
      this.failures.inc();
      this.log.error({ err, device_id: change.device_id, state: change.state }, 'publishing an alert change failed');
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.inFlight--;
    }
  }
}
