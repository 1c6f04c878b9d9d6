/**
 * The alert webhook: every alert change POSTed as JSON to ALERT_WEBHOOK_URL.
 *
 * Changes wait in a bounded in-memory queue and are sent one at a time, in order, so a
 * receiver sees a device's `raised` before its `cleared`. A failing or slow receiver
 * never holds up heartbeats or the silence check: enqueue() returns at once, and when
 * the queue is full the oldest change is dropped (and counted). A POST that times out,
 * cannot connect, or is answered 408, 429 or 5xx is retried after ALERT_WEBHOOK_BACKOFF_MS,
 * doubling each time, ALERT_WEBHOOK_ATTEMPTS tries in all; any other answer but 2xx means
 * the receiver refuses this body, and it is dropped at once.
 *
 * Request: `POST <url>`, `Content-Type: application/json`, the body is the change as on
 * `fleet/alerts/{id}` (contracts/schemas/alert.schema.json), plus
 *   - `X-Fleetwire-Delivery: <uuid>`: the same on every retry of one change, so a receiver
 *     can drop a duplicate (a POST that timed out may still have arrived);
 *   - `X-Fleetwire-Signature: sha256=<hex>` when ALERT_WEBHOOK_SECRET is set: the
 *     HMAC-SHA256 of the raw body bytes with the secret. Receivers recompute it over the
 *     body as received and compare in constant time; `at` in the body lets them refuse
 *     old replays.
 *
 * What a crash loses: the queue lives in this process only. Changes still waiting (and
 * the one being sent) when the process dies are never POSTed; they are still in the alert
 * log (GET /v1/alerts?state=all) and retained on the topic. A clean shutdown gives the
 * change in flight a moment, then logs how many were left unsent.
 */
import { createHmac, randomUUID } from 'node:crypto';
import { Counter, Gauge, type Logger, type Registry } from '@fleetwire/common';
import type { AlertChange } from './alert-change.js';

export type WebhookOutcome = 'delivered' | 'retried' | 'dropped';

export interface AlertWebhookOptions {
  url: string;
  /** Empty: bodies are not signed. */
  secret: string;
  /** Tries per change, the first included. */
  attempts: number;
  /** Wait before the first retry; doubles each retry. */
  backoffMs: number;
  /** One POST is abandoned after this long. */
  timeoutMs: number;
  /** Changes waiting at most; one more drops the oldest. */
  queueMax: number;
  log: Logger;
  metricsRegistry: Registry;
}

interface Pending {
  change: AlertChange;
  body: string;
  delivery: string;
}

interface WebhookMetrics {
  outcomes: Counter<'outcome'>;
  queued: Gauge;
}

const metricsByRegistry = new WeakMap<Registry, WebhookMetrics>();

function webhookMetrics(registry: Registry): WebhookMetrics {
  let m = metricsByRegistry.get(registry);
  if (!m) {
    m = {
      outcomes: new Counter({
        name: 'fleetwire_device_alert_webhook_total',
        help: 'alert webhook POSTs: delivered (2xx), retried (a failed try that will be tried again), dropped (out of tries, refused, or pushed out of a full queue)',
        labelNames: ['outcome'], registers: [registry],
      }),
      queued: new Gauge({ name: 'fleetwire_device_alert_webhook_queued', help: 'alert changes waiting for the webhook on this node', registers: [registry] }),
    };
    for (const outcome of ['delivered', 'retried', 'dropped'] as const) m.outcomes.inc({ outcome }, 0);
    metricsByRegistry.set(registry, m);
  }
  return m;
}

/** 408 and 429 ask for a later try; 5xx may pass. Any other non-2xx refuses this body for good. */
function worthRetrying(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

export class AlertWebhook {
  private readonly queue: Pending[] = [];
  private readonly metrics: WebhookMetrics;
  /** Aborts the POST or backoff in progress on close. */
  private readonly closing = new AbortController();
  private pump: Promise<void> | null = null;
  private closed = false;

  constructor(private readonly o: AlertWebhookOptions) {
    this.metrics = webhookMetrics(o.metricsRegistry);
  }

  /** Queues the changes and returns at once. */
  enqueue(changes: readonly AlertChange[]): void {
    if (this.closed) return;
    for (const change of changes) {
      if (this.queue.length >= this.o.queueMax) {
        const oldest = this.queue.shift()!;
        this.metrics.outcomes.inc({ outcome: 'dropped' });
        this.o.log.warn({ device_id: oldest.change.device_id, state: oldest.change.state, queue_max: this.o.queueMax }, 'alert webhook queue full: oldest change dropped');
      }
      this.queue.push({ change, body: JSON.stringify(change), delivery: randomUUID() });
    }
    this.metrics.queued.set(this.queue.length);
    this.pump ??= this.run().finally(() => { this.pump = null; });
  }

  /** Stops: the POST in flight gets up to `graceMs`, what still waits is counted as dropped and logged. */
  async close(graceMs = 2000): Promise<void> {
    this.closed = true;
    const unsent = this.queue.splice(0);
    this.metrics.queued.set(0);
    if (unsent.length > 0) {
      this.metrics.outcomes.inc({ outcome: 'dropped' }, unsent.length);
      this.o.log.warn({ unsent: unsent.length }, 'alert webhook closed with changes unsent (they stay in the alert log)');
    }
    const pump = this.pump;
    if (pump) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([pump, new Promise((r) => { timer = setTimeout(r, graceMs); })]);
      clearTimeout(timer);
    }
    this.closing.abort();
    await pump;
  }

  private async run(): Promise<void> {
    for (let next = this.queue.shift(); next; next = this.queue.shift()) {
      this.metrics.queued.set(this.queue.length);
      await this.deliver(next);
    }
  }

  private async deliver(p: Pending): Promise<void> {
    const log = this.o.log.child({ device_id: p.change.device_id, state: p.change.state, delivery: p.delivery });
    for (let attempt = 1; ; attempt++) {
      const failure = await this.post(p);
      if (failure === null) {
        this.metrics.outcomes.inc({ outcome: 'delivered' });
        if (attempt > 1) log.info({ attempt }, 'alert webhook delivered after retries');
        return;
      }
      if (this.closing.signal.aborted) {
        this.metrics.outcomes.inc({ outcome: 'dropped' });
        log.warn({ attempt }, 'alert webhook closed during a delivery: change dropped');
        return;
      }
      if (!failure.retry || attempt >= this.o.attempts) {
        this.metrics.outcomes.inc({ outcome: 'dropped' });
        log.error({ attempt, reason: failure.reason }, failure.retry ? 'alert webhook failed on its last try: change dropped' : 'alert webhook refused the change: dropped');
        return;
      }
      this.metrics.outcomes.inc({ outcome: 'retried' });
      const waitMs = this.o.backoffMs * 2 ** (attempt - 1);
      log.warn({ attempt, reason: failure.reason, retry_in_ms: waitMs }, 'alert webhook failed; retrying');
      if (!(await this.wait(waitMs))) {
        this.metrics.outcomes.inc({ outcome: 'dropped' });
        log.warn({ attempt }, 'alert webhook closed while waiting to retry: change dropped');
        return;
      }
    }
  }

  /** null when delivered; otherwise why not, and whether another try may help. */
  private async post(p: Pending): Promise<{ reason: string; retry: boolean } | null> {
    const headers: Record<string, string> = {
      'content-type': 'application/json', 'user-agent': 'fleetwire-alerts', 'x-fleetwire-delivery': p.delivery,
    };
    if (this.o.secret) headers['x-fleetwire-signature'] = `sha256=${createHmac('sha256', this.o.secret).update(p.body).digest('hex')}`;
    try {
      const res = await fetch(this.o.url, {
        method: 'POST', headers, body: p.body, redirect: 'manual',
        signal: AbortSignal.any([AbortSignal.timeout(this.o.timeoutMs), this.closing.signal]),
      });
      // The answer's body is not used; reading it frees the connection for the next POST.
      await res.arrayBuffer().catch(() => undefined);
      if (res.status >= 200 && res.status < 300) return null;
      return { reason: `HTTP ${res.status}`, retry: worthRetrying(res.status) };
    } catch (err) {
      const e = err as Error & { cause?: { code?: string } };
      const reason = e.name === 'TimeoutError' ? `no answer in ${this.o.timeoutMs} ms` : (e.cause?.code ?? e.message);
      return { reason, retry: true };
    }
  }

  /** false when closed while waiting. */
  private wait(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const signal = this.closing.signal;
      if (signal.aborted) return resolve(false);
      const onAbort = (): void => { clearTimeout(timer); resolve(false); };
      const timer = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(true); }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}
