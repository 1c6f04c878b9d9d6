/**
 * The queue consumer against a real Redis, real BullMQ and the real producer:
 * jobs are enqueued by a real broker, either published by a device over MQTT or
 * handed to the broker's own IngressRouter, so the envelopes are exactly what
 * production consumers will read. The queues use the production prefix; each
 * test starts with them obliterated (no flushdb), so it depends on no other
 * test's leftovers.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { Queue, type Job } from 'bullmq';
import {
  createLogger, createMetricsRegistry, createQueueConsumer, createRedis,
  queues, readContract,
  type IngressEnvelope, type QueueConsumer, type QueueConsumerOptions, type QueueJob, type Redis, type Registry,
} from '@fleetwire/common';
import { connect, sleep, startBroker, waitFor, type TestBroker } from '../../broker/test/helpers.js';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
const REDIS_URL = process.env.REDIS_URL!;
const heartbeat = readContract<Record<string, unknown>>('fixtures/valid/heartbeat.json');
const badHeartbeat = readContract<Record<string, unknown>>('fixtures/invalid/heartbeat.json');
const cmdResult = readContract<Record<string, unknown>>('fixtures/valid/cmd-result.json');
const otaStatus = readContract<Record<string, unknown>>('fixtures/valid/ota-status.json');
const mlInfer = readContract<Record<string, unknown>>('fixtures/valid/ml-infer.json');

let t: TestBroker;
/** The connection the consumers share, as a service would pass it. */
let connection: Redis;
const inspect = new Map<string, Queue>();
const queue = (name: string): Queue => inspect.get(name)!;

beforeAll(async () => {
  t = await startBroker();
  connection = createRedis(REDIS_URL, { name: 'test-queue-consumer-jobs', maxRetriesPerRequest: null });
  for (const name of Object.keys(queues.queues)) inspect.set(name, new Queue(name, { connection, prefix: queues.prefix }));
});

afterAll(async () => {
  await Promise.all([...inspect.values()].map(async (q) => { await q.obliterate({ force: true }); await q.close(); }));
  await t.close();
  connection.disconnect();
});

const started: QueueConsumer[] = [];

beforeEach(async () => {
  for (const q of inspect.values()) await q.obliterate({ force: true });
});

afterEach(async () => {
  await Promise.all(started.splice(0).map((c) => c.drain()));
});

interface TestConsumer {
  consumer: QueueConsumer;
  registry: Registry;
  /** The consumer's log lines, parsed. */
  logs: Array<Record<string, unknown>>;
}

/** A consumer with its own metrics registry and captured logs; started unless told otherwise. */
async function consumer(opts: Omit<QueueConsumerOptions, 'connection' | 'log' | 'metricsRegistry'>, start = true): Promise<TestConsumer> {
  const logs: Array<Record<string, unknown>> = [];
  const destination = new Writable({ write(chunk, _e, cb) { logs.push(JSON.parse(String(chunk))); cb(); } });
  const registry = createMetricsRegistry({ defaultMetrics: false });
  const c = createQueueConsumer({ ...opts, connection, log: createLogger({ level: 'debug', destination }), metricsRegistry: registry } as QueueConsumerOptions);
  started.push(c);
  if (start) await c.start();
  return { consumer: c, registry, logs };
}

/** Enqueues through the broker's own ingress, as it does for every device message. */
const enqueue = (queueName: string, deviceId: string, topicClass: string, payload: Record<string, unknown>): Promise<string> =>
  t.broker.ingress.route(queueName, deviceId, topicClass, payload);

const stateOf = async (queueName: string, jobId: string): Promise<string> => (await queue(queueName).getJobState(jobId)) as string;

/** The metric's lines in the Prometheus text format, as /metrics shows them. */
async function metricLines(registry: Registry, name: string): Promise<string[]> {
  return (await registry.getSingleMetricAsString(name)).split('\n');
}

describe('queue consumer', () => {
  it('hands a heartbeat a device publishes over MQTT to the handler, with cid and device_id on its log lines', async () => {
    const token = await t.registerDevice('dev-q-hb');
    let seen!: (job: QueueJob) => void;
    const handled = new Promise<QueueJob>((r) => { seen = r; });
    const { logs } = await consumer({
      queue: 'heartbeats',
      handle: async (job) => {
        job.log.info({ seq: job.envelope.payload.seq }, 'heartbeat stored');
        seen(job);
      },
    });

    const device = await connect(t.url, token, 'dev-q-hb');
    await device.publishAsync('devices/dev-q-hb/heartbeat', JSON.stringify(heartbeat), { qos: 1 });
    const job = await handled;
    await device.endAsync();

    expect(job.envelope).toMatchObject({ device_id: 'dev-q-hb', topic_class: 'heartbeat', payload: heartbeat, node: t.broker.nodeId });
    expect(job.attempt).toBe(1);
    const line = logs.find((l) => l.msg === 'heartbeat stored');
    expect(line).toMatchObject({ cid: job.envelope.cid, device_id: 'dev-q-hb', queue: 'heartbeats', job_id: job.id, seq: heartbeat.seq });
    expect(typeof line!.cid).toBe('string');
    await waitFor(() => stateOf('heartbeats', job.id), (s) => s === 'completed');
  });

  it('fails a job that breaks the contract at once, with the reason as failedReason, and goes on to the next job', async () => {
    const handled: IngressEnvelope[] = [];
    const { consumer: c, registry, logs } = await consumer({ queue: 'heartbeats', handle: async (job) => { handled.push(job.envelope); } });
    // Not the broker: a producer that skipped the checks (an old node, a script). Attempts as the broker sets them.
    const envelope = { cid: 'c-bad', device_id: 'dev-q-bad', topic_class: 'heartbeat', received_at: Date.now(), node: 'script' };
    const opts = { attempts: queues.queues.heartbeats!.attempts };
    const badPayload = await queue('heartbeats').add('heartbeat', { ...envelope, payload: badHeartbeat }, opts);
    const noDevice = await queue('heartbeats').add('heartbeat', { ...envelope, device_id: undefined, payload: heartbeat }, opts);
    const wrongQueue = await queue('heartbeats').add('ml-infer', { ...envelope, topic_class: 'ml-infer', payload: { model: 'm', input: [1] } }, opts);
    await enqueue('heartbeats', 'dev-q-good', 'heartbeat', heartbeat);

    await waitFor(() => handled.length, (n) => n === 1);
    expect(handled[0]!.device_id).toBe('dev-q-good');
    const reasons: Record<string, RegExp> = {
      [badPayload.id!]: /^invalid heartbeat payload: \(root\) must have required property 'heap_free'$/,
      [noDevice.id!]: /^invalid ingress envelope: \(root\) must have required property 'device_id'$/,
      [wrongQueue.id!]: /^topic class "ml-infer" belongs on queue ml-infer, not heartbeats/,
    };
    for (const [id, reason] of Object.entries(reasons)) {
      const job = (await queue('heartbeats').getJob(id)) as Job;
      expect(await job.getState()).toBe('failed');
      expect(job.failedReason).toMatch(reason);
      expect(job.attemptsMade).toBe(1); // not retried, although the job allows 3 attempts
    }
    expect(c.isRunning()).toBe(true);
    expect(logs.find((l) => l.msg === 'invalid job failed without retry' && l.cid === 'c-bad')).toMatchObject({ device_id: 'dev-q-bad', level: 40 });
    expect(await metricLines(registry, 'fleetwire_queue_jobs_total')).toContain('fleetwire_queue_jobs_total{queue="heartbeats",outcome="invalid"} 3');
  });

  it('retries a job whose handler throws as many times as the contract says, then fails it with the handler\'s message', async () => {
    const attempts: number[] = [];
    const { registry, logs } = await consumer({
      queue: 'ml-infer',
      handle: async (job) => {
        attempts.push(job.attempt);
        throw new Error('device store unavailable');
      },
    });
    await enqueue('ml-infer', 'dev-q-retry', 'ml-infer', mlInfer);
    const contractAttempts = queues.queues['ml-infer']!.attempts;

    const [job] = await waitFor(() => queue('ml-infer').getJobs(['failed']), (jobs) => jobs.length === 1, 15_000);
    expect(attempts).toEqual(Array.from({ length: contractAttempts }, (_, i) => i + 1));
    expect(job!.failedReason).toBe('device store unavailable');
    expect(job!.attemptsMade).toBe(contractAttempts);
    const counts = await metricLines(registry, 'fleetwire_queue_jobs_total');
    expect(counts).toContain(`fleetwire_queue_jobs_total{queue="ml-infer",outcome="retried"} ${contractAttempts - 1}`);
    expect(counts).toContain('fleetwire_queue_jobs_total{queue="ml-infer",outcome="failed"} 1');
    expect(logs.filter((l) => l.msg === 'job attempt failed; BullMQ will retry it')).toHaveLength(contractAttempts - 1);
    expect(logs.find((l) => l.msg === 'job failed on its last attempt')).toMatchObject({ device_id: 'dev-q-retry', reason: 'device store unavailable' });
  });

  it('runs as many jobs at once as its concurrency', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    let allIn!: () => void;
    const together = new Promise<void>((r) => { allIn = r; });
    await consumer({
      queue: 'cmd-results',
      concurrency: 3,
      handle: async () => {
        inFlight += 1;
        maxInFlight = Math.max(maxInFlight, inFlight);
        if (inFlight === 3) allIn();
        // Each job holds its slot until all three are in, so one at a time would time out here.
        await Promise.race([together, sleep(3000)]);
        inFlight -= 1;
      },
    });
    for (const cid of ['p-1', 'p-2', 'p-3']) await enqueue('cmd-results', 'dev-q-par', 'cmd-result', { ...cmdResult, cid });

    await waitFor(() => queue('cmd-results').getJobCounts('completed'), (c) => c.completed === 3);
    expect(maxInFlight).toBe(3);
  });

  it('in batch mode hands the jobs that are ready in one call, and a lone job at once', async () => {
    const batches: string[][] = [];
    let lone!: (at: number) => void;
    const loneHandled = new Promise<number>((r) => { lone = r; });
    const { consumer: c, registry } = await consumer({
      queue: 'ota-events',
      concurrency: 8,
      handleBatch: async (jobs) => {
        batches.push(jobs.map((j) => j.envelope.device_id));
        if (jobs[0]!.envelope.device_id === 'dev-q-lone') lone(Date.now());
      },
    }, false);
    // Five messages wait in the queue before the consumer starts.
    for (const n of [1, 2, 3, 4, 5]) await enqueue('ota-events', `dev-q-b${n}`, 'ota-status', otaStatus);
    await c.start();
    await waitFor(() => batches.length, (n) => n === 1);
    expect(batches[0]).toEqual(['dev-q-b1', 'dev-q-b2', 'dev-q-b3', 'dev-q-b4', 'dev-q-b5']);

    const sent = Date.now();
    await enqueue('ota-events', 'dev-q-lone', 'ota-status', otaStatus);
    const latency = (await loneHandled) - sent;
    expect(batches[1]).toEqual(['dev-q-lone']);
    expect(latency).toBeLessThan(250); // no batching window: a few Redis round trips
    await waitFor(() => queue('ota-events').getJobCounts('completed'), (n) => n.completed === 6);
    const sizes = await metricLines(registry, 'fleetwire_queue_batch_size');
    expect(sizes).toContain('fleetwire_queue_batch_size_count{queue="ota-events"} 2');
    expect(sizes).toContain('fleetwire_queue_batch_size_sum{queue="ota-events"} 6');
  });

  it('in batch mode retries only the jobs a batch handler reports as failed', async () => {
    const calls: Array<Array<[string, number]>> = [];
    const { consumer: c } = await consumer({
      queue: 'ota-events',
      concurrency: 4,
      handleBatch: async (jobs) => {
        calls.push(jobs.map((j) => [j.envelope.device_id, j.attempt]));
        const flaky = jobs.find((j) => j.envelope.device_id === 'dev-q-flaky' && j.attempt === 1);
        return flaky ? new Map([[flaky, new Error('write refused')]]) : undefined;
      },
    }, false);
    await enqueue('ota-events', 'dev-q-fine', 'ota-status', otaStatus);
    await enqueue('ota-events', 'dev-q-flaky', 'ota-status', otaStatus);
    await c.start();

    await waitFor(() => queue('ota-events').getJobCounts('completed'), (n) => n.completed === 2, 5000);
    expect(calls).toEqual([[['dev-q-fine', 1], ['dev-q-flaky', 1]], [['dev-q-flaky', 2]]]);
  });

  it('drains: the running job finishes, no new job is taken, and the consumer stops', async () => {
    const handled: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    let began!: () => void;
    const running = new Promise<void>((r) => { began = r; });
    const { consumer: c } = await consumer({
      queue: 'ota-events',
      concurrency: 2, // a free slot, so "no new job" is the drain's doing
      handle: async (job) => {
        handled.push(job.envelope.device_id);
        began();
        await gate;
      },
    });
    await enqueue('ota-events', 'dev-q-first', 'ota-status', otaStatus);
    await running;

    const drained = c.drain();
    expect(c.isRunning()).toBe(false);
    await enqueue('ota-events', 'dev-q-late', 'ota-status', otaStatus);
    await sleep(200);
    release();
    expect(await drained).toEqual({ unfinished: 0 });

    expect(handled).toEqual(['dev-q-first']);
    const counts = await queue('ota-events').getJobCounts('completed', 'waiting', 'active');
    expect(counts).toEqual({ completed: 1, waiting: 1, active: 0 });
  });

  it('gives up a drain after its timeout, aborts the running job\'s signal, and the job goes back for a retry', async () => {
    const { consumer: c, logs } = await consumer({
      queue: 'ota-events',
      drainTimeoutMs: 300,
      handle: async (job) => {
        await new Promise((resolve) => job.signal.addEventListener('abort', resolve));
        throw new Error('stopped by drain');
      },
    });
    await enqueue('ota-events', 'dev-q-stuck', 'ota-status', otaStatus);
    await waitFor(() => queue('ota-events').getJobCounts('active'), (n) => n.active === 1);

    const before = Date.now();
    expect(await c.drain()).toEqual({ unfinished: 1 });
    expect(Date.now() - before).toBeGreaterThanOrEqual(290);
    expect(logs.find((l) => l.msg === 'drain timed out with jobs still running')).toMatchObject({ timeout_ms: 300 });
    const [job] = await waitFor(() => queue('ota-events').getJobs(['delayed', 'wait']), (jobs) => jobs.length === 1);
    expect(job!.failedReason).toBe('stopped by drain');
    expect(job!.attemptsMade).toBe(1);
  });

  it('counts completed jobs and shows how long messages waited between the broker and the handler', async () => {
    const { consumer: c, registry } = await consumer({ queue: 'cmd-results', handle: async () => undefined }, false);
    await enqueue('cmd-results', 'dev-q-lag', 'cmd-result', { ...cmdResult, cid: 'lag-1' });
    await enqueue('cmd-results', 'dev-q-lag', 'cmd-result', { ...cmdResult, cid: 'lag-2' });
    await sleep(400); // the messages wait in the queue: that is the lag
    await c.start();
    await waitFor(() => queue('cmd-results').getJobCounts('completed'), (n) => n.completed === 2);

    const counts = await metricLines(registry, 'fleetwire_queue_jobs_total');
    expect(counts).toContain('fleetwire_queue_jobs_total{queue="cmd-results",outcome="completed"} 2');
    expect(counts).toContain('fleetwire_queue_jobs_total{queue="cmd-results",outcome="failed"} 0');
    const lag = await metricLines(registry, 'fleetwire_queue_lag_seconds');
    expect(lag).toContain('fleetwire_queue_lag_seconds_count{queue="cmd-results"} 2');
    const lagSum = Number(lag.find((l) => l.startsWith('fleetwire_queue_lag_seconds_sum{queue="cmd-results"}'))!.split(' ')[1]);
    expect(lagSum).toBeGreaterThanOrEqual(0.8);
    expect(lagSum).toBeLessThan(5);
    expect(lag).toContain('fleetwire_queue_lag_seconds_bucket{le="0.25",queue="cmd-results"} 0');
    expect(await metricLines(registry, 'fleetwire_queue_job_duration_seconds')).toContain('fleetwire_queue_job_duration_seconds_count{queue="cmd-results"} 2');
  });

  describe('on a queue whose jobs carry batches (contracts/queues.json batch: heartbeats, telemetry)', () => {
    const spec = queues.queues.heartbeats!.batch!;

    it('gets the heartbeats of several devices published together in one job, and hands them to one handler call', async () => {
      const calls: string[][] = [];
      const { consumer: c } = await consumer({ queue: 'heartbeats', concurrency: 1000, handleBatch: async (jobs) => { calls.push(jobs.map((j) => j.envelope.device_id)); } }, false);
      const devices = await Promise.all(['dev-qb-1', 'dev-qb-2', 'dev-qb-3'].map(async (id) => connect(t.url, await t.registerDevice(id), id)));
      // QoS 1: each PUBACK comes only once the job holding the heartbeat is in Redis.
      await Promise.all(devices.map((d, i) => d.publishAsync(`devices/dev-qb-${i + 1}/heartbeat`, JSON.stringify(heartbeat), { qos: 1 })));
      const jobs = await queue('heartbeats').getJobs(['wait']);
      expect(jobs).toHaveLength(1);
      expect((jobs[0]!.data as { batch: IngressEnvelope[] }).batch.map((e) => e.device_id).sort()).toEqual(['dev-qb-1', 'dev-qb-2', 'dev-qb-3']);

      await c.start();
      await waitFor(() => calls.length, (n) => n === 1);
      expect(calls[0]!.sort()).toEqual(['dev-qb-1', 'dev-qb-2', 'dev-qb-3']);
      await Promise.all(devices.map((d) => d.endAsync()));
    });

    it('never puts more than max_messages in one job', async () => {
      await Promise.all(Array.from({ length: spec.max_messages + 20 }, (_, i) => enqueue('heartbeats', `dev-qm-${i}`, 'heartbeat', heartbeat)));
      const sizes = (await queue('heartbeats').getJobs(['wait'])).map((j) => (j.data as { batch: unknown[] }).batch.length);
      expect(sizes.sort((a, b) => b - a)).toEqual([spec.max_messages, 20]);
    });

    it('drops the envelopes of a batch that break the contract, counts them, and handles the others', async () => {
      const handled: string[] = [];
      const { registry, logs } = await consumer({ queue: 'heartbeats', concurrency: 1000, handleBatch: async (jobs) => { handled.push(...jobs.map((j) => j.envelope.device_id)); } });
      const good = (id: string) => ({ cid: `c-${id}`, device_id: id, topic_class: 'heartbeat', payload: heartbeat, received_at: Date.now(), node: 'script' });
      const job = await queue('heartbeats').add('heartbeat', { batch: [good('dev-qi-1'), { ...good('dev-qi-2'), payload: badHeartbeat }, good('dev-qi-3')] });

      await waitFor(() => stateOf('heartbeats', job.id!), (st) => st === 'completed');
      expect(handled).toEqual(['dev-qi-1', 'dev-qi-3']);
      expect(await metricLines(registry, 'fleetwire_queue_invalid_messages_total')).toContain('fleetwire_queue_invalid_messages_total{queue="heartbeats"} 1');
      expect(logs.find((l) => l.msg === 'dropped messages of a batch job that break the contract')).toMatchObject({
        job_id: job.id, invalid_count: 1, invalid: [{ index: 1, reason: expect.stringMatching(/^invalid heartbeat payload/) }],
      });
    });

    it('retries the whole batch job when one of its messages fails, and fails a job that is not a batch at all', async () => {
      const calls: Array<Array<[string, number, number | undefined]>> = [];
      const { registry } = await consumer({
        queue: 'heartbeats', concurrency: 1000,
        handleBatch: async (jobs) => {
          calls.push(jobs.map((j) => [j.envelope.device_id, j.attempt, j.index]));
          const flaky = jobs.find((j) => j.envelope.device_id === 'dev-qr-2' && j.attempt === 1);
          return flaky ? new Map([[flaky, new Error('write refused')]]) : undefined;
        },
      });
      const env = (id: string) => ({ cid: `c-${id}`, device_id: id, topic_class: 'heartbeat', payload: heartbeat, received_at: Date.now(), node: 'script' });
      const job = await queue('heartbeats').add('heartbeat', { batch: [env('dev-qr-1'), env('dev-qr-2')] }, { attempts: 3, backoff: { type: 'fixed', delay: 10 } });
      await waitFor(() => stateOf('heartbeats', job.id!), (st) => st === 'completed');
      expect(calls).toEqual([[['dev-qr-1', 1, 0], ['dev-qr-2', 1, 1]], [['dev-qr-1', 2, 0], ['dev-qr-2', 2, 1]]]);

      const notBatch = await queue('heartbeats').add('heartbeat', { batch: 'everything' });
      await waitFor(() => stateOf('heartbeats', notBatch.id!), (st) => st === 'failed');
      expect((await queue('heartbeats').getJob(notBatch.id!))!.failedReason).toMatch(/^invalid ingress batch/);
      expect(await metricLines(registry, 'fleetwire_queue_jobs_total')).toContain('fleetwire_queue_jobs_total{queue="heartbeats",outcome="invalid"} 1');
    });

    it('refuses a batch job on a queue that takes single envelopes', async () => {
      await consumer({ queue: 'cmd-results', handle: async () => undefined });
      const job = await queue('cmd-results').add('cmd-result', { batch: [{}] });
      await waitFor(() => stateOf('cmd-results', job.id!), (st) => st === 'failed');
      expect((await queue('cmd-results').getJob(job.id!))!.failedReason).toBe('queue cmd-results takes single envelopes, not batches (common/contracts/queues.json)');
    });
  });

  it('accepts only queue names from the contract, and says which ones exist', () => {
    const registry = createMetricsRegistry({ defaultMetrics: false });
    const base = { connection, log: createLogger({ level: 'silent' }), metricsRegistry: registry, handle: async () => undefined };
    expect(() => createQueueConsumer({ ...base, queue: 'telemetryy' }))
      .toThrow('unknown queue "telemetryy": the queues in common/contracts/queues.json are heartbeats, telemetry, cmd-results, ota-events, ml-infer');
    expect(() => createQueueConsumer({ ...base, queue: 'heartbeats', concurrency: 0 })).toThrow(/concurrency/);
  });
});
