/**
 * Gathers the envelopes of a batched queue (contracts/queues.json `batch`: heartbeats,
 * telemetry) into one job of up to `max_messages`, waiting at most `max_wait_ms` for
 * company. Why: a BullMQ job costs a few Redis scripts and their bookkeeping on both
 * sides no matter how small it is, and at thousands of heartbeats a second that cost,
 * not the heartbeat, was the broker's, the consumer's and Redis' work
 * (bench/heartbeats.mjs). One job per batch spreads it over hundreds of messages.
 *
 * Each add() resolves when the job holding its envelope is in Redis, so a QoS 1 publish
 * is still acknowledged only once the queue holds it; the price is up to max_wait_ms of
 * added latency when traffic is light.
 */
import type { Queue, JobsOptions } from 'bullmq';
import type { IngressEnvelope, QueueBatchSpec } from '@fleetwire/common';

interface Waiter { resolve: () => void; reject: (err: unknown) => void }

export class IngressBatcher {
  private envelopes: IngressEnvelope[] = [];
  private waiters: Waiter[] = [];
  private timer: NodeJS.Timeout | null = null;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly queue: Queue, private readonly spec: QueueBatchSpec, private readonly jobOptions: JobsOptions) {}

  add(envelope: IngressEnvelope): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.envelopes.push(envelope);
      this.waiters.push({ resolve, reject });
      if (this.envelopes.length >= this.spec.max_messages) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.spec.max_wait_ms);
    });
  }

  /** Sends what is gathered now and waits for every job this batcher sent. */
  async close(): Promise<void> {
    this.flush();
    await Promise.all(this.inFlight);
  }

  private flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.envelopes.length === 0) return;
    const batch = this.envelopes;
    const waiters = this.waiters;
    this.envelopes = [];
    this.waiters = [];
    const sent = this.queue.add(batch[0]!.topic_class, { batch }, this.jobOptions).then(
      () => { for (const w of waiters) w.resolve(); },
      (err: unknown) => { for (const w of waiters) w.reject(err); },
    );
    this.inFlight.add(sent);
    void sent.finally(() => this.inFlight.delete(sent));
  }
}
