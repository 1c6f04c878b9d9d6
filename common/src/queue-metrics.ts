/**
 * Metrics of the queue consumers. Several consumers (one per queue) share a
 * process registry, and prom-client refuses a second metric of the same name,
 * so the metrics are made once per registry and labelled by queue.
 */
import { Counter, Histogram, type Registry } from 'prom-client';

/** What became of one attempt at a job. */
export type QueueJobOutcome =
  | 'completed'
  /** The handler failed and BullMQ will try again after the backoff. */
  | 'retried'
  /** The handler failed on the last attempt the job has. */
  | 'failed'
  /** The job broke its contract and was failed without a retry. */
  | 'invalid'
  /** The job's lock lapsed (its consumer died or blocked the event loop); BullMQ requeued or failed it. */
  | 'stalled';

export const queueJobOutcomes: readonly QueueJobOutcome[] = ['completed', 'retried', 'failed', 'invalid', 'stalled'];

export interface QueueMetrics {
  readonly jobs: Counter<'queue' | 'outcome'>;
  readonly duration: Histogram<'queue'>;
  readonly lag: Histogram<'queue'>;
  readonly batchSize: Histogram<'queue'>;
  /** Envelopes of batch jobs dropped for breaking the contract (the rest of their job is handled). */
  readonly invalidMessages: Counter<'queue'>;
}

const byRegistry = new WeakMap<Registry, QueueMetrics>();

export function queueMetrics(registry: Registry): QueueMetrics {
  let metrics = byRegistry.get(registry);
  if (!metrics) {
    metrics = {
      jobs: new Counter({
        name: 'fleetwire_queue_jobs_total',
        help: 'queue job attempts by how they ended',
        labelNames: ['queue', 'outcome'],
        registers: [registry],
      }),
      duration: new Histogram({
        name: 'fleetwire_queue_job_duration_seconds',
        help: 'time a handler spent on a job (in batch mode, the time of the batch it was in)',
        labelNames: ['queue'],
        buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
        registers: [registry],
      }),
      lag: new Histogram({
        name: 'fleetwire_queue_lag_seconds',
        help: 'time from the broker receiving a message to a handler starting on it (includes retry backoff)',
        labelNames: ['queue'],
        buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
        registers: [registry],
      }),
      batchSize: new Histogram({
        name: 'fleetwire_queue_batch_size',
        help: 'messages per call of a batch handler',
        labelNames: ['queue'],
        buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
        registers: [registry],
      }),
      invalidMessages: new Counter({
        name: 'fleetwire_queue_invalid_messages_total',
        help: 'messages in batch jobs that broke the contract and were dropped while the rest of the job was handled',
        labelNames: ['queue'],
        registers: [registry],
      }),
    };
    byRegistry.set(registry, metrics);
  }
  return metrics;
}
