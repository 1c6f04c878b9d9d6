/**
 * A consumer of one ingress queue: a BullMQ Worker with the prefix, queue name
 * and retention from contracts/queues.json that checks every job against the
 * contract before a handler sees it, gives the handler a logger carrying the
 * job's cid and device_id, handles jobs one by one or in batches, counts what
 * happens in fleetwire_queue_* metrics, and drains on shutdown.
 *
 * Retries: a job carries its attempts and backoff from its producer (the
 * broker sets them from the same contract). A handler error fails the attempt
 * and BullMQ retries it; a job that breaks the contract fails at once.
 */
import { Worker, type Job } from 'bullmq';
import type { Registry } from 'prom-client';
import { queues } from './contracts.js';
import { assertIngressQueue, checkIngressBatch, checkIngressJob, InvalidJobError, isIngressBatch, type IngressEnvelope } from './ingress-envelope.js';
import type { Logger } from './logger.js';
import { collectBatches, type BatchFailures } from './queue-batch.js';
import { queueJobOutcomes, queueMetrics, type QueueJobOutcome } from './queue-metrics.js';
import type { Redis } from './redis.js';

/** One job as a handler sees it. */
export interface QueueJob {
  readonly envelope: IngressEnvelope;
  /** Child logger whose lines carry queue, job_id, attempt, cid and device_id. */
  readonly log: Logger;
  /** The BullMQ job's id (shared by the messages of a batch job). */
  readonly id: string;
  /** The message's place in its batch job (contracts/queues.json `batch`); absent for a job of one envelope. */
  readonly index?: number;
  /** 1 on the first try. */
  readonly attempt: number;
  /**
   * Aborted when a drain times out. A handler that can stop early should, and
   * throw: the attempt fails and BullMQ retries the job per its attempts.
   */
  readonly signal: AbortSignal;
}

export type JobHandler = (job: QueueJob) => Promise<void>;


/**
 * Receives the jobs that are ready now (at most `concurrency`), e.g. to write
 * them to Redis in one round trip. Throwing fails every job of the batch;
 * returning a map fails only the jobs in it.
 */
export type BatchJobHandler = (jobs: readonly QueueJob[]) => Promise<void | BatchFailures<QueueJob>>;

interface CommonOptions {
  /** A queue name from contracts/queues.json; anything else throws here. */
  queue: string;
  /** Created with `maxRetriesPerRequest: null` and no keyPrefix (BullMQ refuses otherwise). Not closed by the consumer. */
  connection: Redis;
  log: Logger;
  metricsRegistry: Registry;
  /**
   * Messages in progress at once; in batch mode also the largest batch. Default 1. On a queue whose
   * jobs carry batches (contracts/queues.json `batch`), the worker takes as many jobs at once as
   * hold about this many messages (at least one).
   */
  concurrency?: number;
  /** How long drain() waits for running jobs. Default 10 s. */
  drainTimeoutMs?: number;
}

export type QueueConsumerOptions = CommonOptions & (
  | { handle: JobHandler; handleBatch?: never }
  | { handleBatch: BatchJobHandler; handle?: never }
);

export interface DrainResult {
  /** Jobs still running when the timeout ran out; their locks lapse and BullMQ hands them to another consumer. */
  readonly unfinished: number;
}

export interface QueueConsumer {
  readonly queue: string;
  /** Connects and starts taking jobs; resolves once the worker is connected. */
  start(): Promise<void>;
  /** True between start() and drain(). For readiness checks. */
  isRunning(): boolean;
  /** Takes no new jobs, waits up to drainTimeoutMs for running ones, then closes the worker. */
  drain(): Promise<DrainResult>;
}

const DEFAULT_DRAIN_TIMEOUT_MS = 10_000;

export function createQueueConsumer(opts: QueueConsumerOptions): QueueConsumer {
  assertIngressQueue(opts.queue);
  const queue = opts.queue;
  const spec = queues.queues[queue]!;
  const concurrency = opts.concurrency ?? 1;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`concurrency must be a whole number ≥ 1, got ${concurrency}`);
  if (!opts.handle === !opts.handleBatch) throw new Error('give exactly one of handle and handleBatch');
  const drainTimeoutMs = opts.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
  const log = opts.log.child({ queue });
  const metrics = queueMetrics(opts.metricsRegistry);
  // Every outcome shows as 0 from the start, so dashboards and alerts see the series before the first event.
  for (const outcome of queueJobOutcomes) metrics.jobs.inc({ queue, outcome }, 0);
  const count = (outcome: QueueJobOutcome): void => metrics.jobs.inc({ queue, outcome });

  // Batch jobs hold up to max_messages messages each: take as many jobs at once as hold about `concurrency` messages.
  const perJob = spec.batch?.max_messages ?? 1;
  const workerConcurrency = Math.max(1, Math.round(concurrency / perJob));
  const handleOne: JobHandler = opts.handle
    ?? collectBatches(opts.handleBatch!, workerConcurrency * perJob, (size) => metrics.batchSize.observe({ queue }, size));
  const running = new Set<string>();

  /**
   * The messages of a job: its envelope, or the valid envelopes of its batch with their place
   * in it (the others are counted and logged, and the rest of the job goes on).
   */
  const messagesOf = (job: Job): { index?: number; envelope: IngressEnvelope }[] => {
    if (!isIngressBatch(job.data)) return [{ envelope: checkIngressJob(queue, job.data) }];
    const { valid, invalid } = checkIngressBatch(queue, job.data);
    if (invalid.length > 0) {
      metrics.invalidMessages.inc({ queue }, invalid.length);
      log.warn({ job_id: job.id, invalid: invalid.slice(0, 5), invalid_count: invalid.length }, 'dropped messages of a batch job that break the contract');
    }
    return valid;
  };

  // The third parameter makes BullMQ pass an AbortSignal (it checks the processor's arity).
  const processor = async (job: Job, _token: string | undefined, signal?: AbortSignal): Promise<void> => {
    const messages = messagesOf(job);
    const started = Date.now();
    const attempt = job.attemptsMade + 1;
    const jobSignal = signal ?? new AbortController().signal;
    const queueJobs = messages.map(({ index, envelope }): QueueJob => {
      metrics.lag.observe({ queue }, Math.max(0, started - envelope.received_at) / 1000);
      return {
        envelope, id: job.id!, index, attempt, signal: jobSignal,
        log: log.child({ job_id: job.id, index, attempt, cid: envelope.cid, device_id: envelope.device_id }),
      };
    });
    running.add(job.id!);
    try {
      // A batch job succeeds when all its messages did; otherwise BullMQ retries all of it (handlers are idempotent).
      await Promise.all(queueJobs.map(handleOne));
    } finally {
      running.delete(job.id!);
      metrics.duration.observe({ queue }, (Date.now() - started) / 1000);
    }
  };

  let worker: Worker | null = null;
  let draining: Promise<DrainResult> | null = null;

  const createWorker = (): Worker => {
    const w = new Worker(queue, processor, {
      connection: opts.connection,
      prefix: queues.prefix,
      concurrency: workerConcurrency,
      autorun: false,
      // The producer sets these per job from the same contract; the worker applies them to jobs added without.
      removeOnComplete: { count: spec.remove_on_complete },
      removeOnFail: { count: spec.remove_on_fail },
    });
    w.on('completed', () => count('completed'));
    w.on('failed', (job, err) => onFailed(job, err));
    w.on('stalled', (jobId) => {
      count('stalled');
      log.warn({ job_id: jobId }, 'job stalled: its lock lapsed, BullMQ moved it back to the queue or failed it');
    });
    // Without a listener an 'error' event would throw and end the process; connection errors are retried by BullMQ.
    w.on('error', (err) => log.error({ err }, 'queue worker error'));
    return w;
  };

  const onFailed = (job: Job | undefined, err: Error): void => {
    const data = (job?.data ?? {}) as Partial<IngressEnvelope>;
    const context = {
      job_id: job?.id,
      messages: isIngressBatch(job?.data) ? job.data.batch.length : undefined,
      attempts_made: job?.attemptsMade,
      cid: typeof data.cid === 'string' ? data.cid : undefined,
      device_id: typeof data.device_id === 'string' ? data.device_id : undefined,
      reason: err.message,
    };
    if (err instanceof InvalidJobError) {
      count('invalid');
      log.warn(context, 'invalid job failed without retry');
    } else if (job && job.finishedOn === undefined) {
      // BullMQ sets finishedOn only when the job leaves for good; a retried job goes back to wait or delayed.
      count('retried');
      log.warn({ ...context, retry_in_ms: job.delay || 0 }, 'job attempt failed; BullMQ will retry it');
    } else {
      count('failed');
      log.error(context, 'job failed on its last attempt');
    }
  };

  return {
    queue,

    async start() {
      if (worker || draining) throw new Error(`the consumer of ${queue} was already ${draining ? 'drained' : 'started'}`);
      worker = createWorker();
      const w = worker;
      // run() resolves when the worker closes; its errors are also emitted as 'error'.
      w.run().catch((err: unknown) => log.error({ err }, 'queue worker stopped'));
      await w.waitUntilReady();
      log.info({ concurrency, jobs_at_once: workerConcurrency, batch: Boolean(opts.handleBatch) }, 'queue consumer started');
    },

    isRunning() {
      return worker !== null && draining === null && worker.isRunning();
    },

    drain() {
      draining ??= (async () => {
        if (!worker) return { unfinished: 0 };
        const w = worker;
        // close() stops fetching at once and resolves when the running jobs have settled.
        const closed = w.close().then(() => true, (err: unknown) => {
          log.error({ err }, 'queue worker close failed');
          return true;
        });
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), drainTimeoutMs); });
        const finished = await Promise.race([closed, timedOut]);
        clearTimeout(timer);
        if (finished) {
          log.info('queue consumer drained');
          return { unfinished: 0 };
        }
        const unfinished = [...running];
        // Handlers that listen to their signal stop now; the others keep their jobs until the process ends,
        // then the locks lapse and the stalled check of another consumer hands the jobs on.
        w.cancelAllJobs('drain timed out');
        log.warn({ unfinished, timeout_ms: drainTimeoutMs }, 'drain timed out with jobs still running');
        return { unfinished: unfinished.length };
      })();
      return draining;
    },
  };
}
