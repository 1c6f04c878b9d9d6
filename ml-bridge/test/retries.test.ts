/**
 * How the bridge reads BullMQ's event stream when a job fails: an attempt that BullMQ
 * retries is not an answer (the stream says `delayed`, not `failed`), only the last
 * failure is, as `internal`; a result that breaks ml-job-result.schema.json is answered
 * `internal` too. The consumer here is a Node BullMQ worker standing in for a Python
 * worker that crashes on a request (ML_WORKERS=0): both run the same Lua scripts, so the
 * events are the ones a Python worker produces.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { createRedis, queues, type IngressEnvelope } from '@fleetwire/common';
import { anomalyRequest, REDIS_URL, sleep, startMlFleet, type MlDevice, type MlFleet } from './helpers.js';

let f: MlFleet;
let dev: MlDevice;
let worker: Worker;
const conn = createRedis(REDIS_URL, { name: 'retries-worker', maxRetriesPerRequest: null });
/** What the stand-in worker does with each attempt of a job, by cid. */
const behaviour = new Map<string, (job: Job<IngressEnvelope>) => unknown>();

beforeAll(async () => {
  f = await startMlFleet({ ML_WORKERS: '0' });
  dev = await f.connectDevice('ml-retry');
  worker = new Worker<IngressEnvelope>('ml-infer', async (job) => behaviour.get(job.data.cid)!(job), { connection: conn, prefix: queues.prefix });
  await worker.waitUntilReady();
}, 30_000);
afterAll(async () => {
  await worker?.close();
  conn.disconnect();
  await f?.close();
});

const result = (job: Job<IngressEnvelope>) => ({
  cid: job.data.cid, device_id: job.data.device_id, ok: true, output: { score: [0.1], anomaly: [false] }, model: 'anomaly', model_version: '2', worker: 'stand-in',
});

describe('failed attempts and broken results', () => {
  it('an attempt that fails and is retried is not answered; the retry\'s result is', async () => {
    const req = anomalyRequest({ deadline_ms: 10_000 });
    behaviour.set(req.cid, (job) => {
      if (job.attemptsMade === 0) throw new Error('worker crashed on this request');
      return result(job);
    });
    const sent = Date.now();
    const answer = await dev.ask(req, { timeoutMs: 8000 });
    expect(answer).toMatchObject({ cid: req.cid, ok: true, model_version: '2' });
    // The retry came after BullMQ's backoff (1 s): nothing was answered in between.
    expect(Date.now() - sent).toBeGreaterThanOrEqual(900);
    await sleep(200);
    expect(dev.answersFor(req.cid)).toHaveLength(1);
  });

  it('a job that fails every attempt is answered internal once, after the last', async () => {
    const req = anomalyRequest({ deadline_ms: 10_000 });
    let attempts = 0;
    behaviour.set(req.cid, () => {
      attempts++;
      throw new Error('worker crashed on this request');
    });
    const answer = await dev.ask(req, { timeoutMs: 8000 });
    expect(answer).toMatchObject({ cid: req.cid, ok: false, error: { code: 'internal' } });
    expect(attempts).toBe(2);
    // The worker's own words stay in the logs, not in the device's answer.
    expect(answer.error!.message).not.toContain('crashed');
    expect(f.logs.some((l) => l.includes('worker crashed on this request') && l.includes('answering internal'))).toBe(true);
    await sleep(200);
    expect(dev.answersFor(req.cid)).toHaveLength(1);
    expect(await f.metric('fleetwire_ml_requests_total', 'model="anomaly",outcome="internal"')).toBe(1);
  });

  it('a refusal ("<code>: <message>", not retried) is answered at once with that code and message', async () => {
    const req = anomalyRequest();
    behaviour.set(req.cid, () => {
      throw new UnrecoverableError('input_invalid: input[0] has 3 values; expected 4');
    });
    const sent = Date.now();
    const answer = await dev.ask(req);
    expect(answer).toMatchObject({ cid: req.cid, ok: false, error: { code: 'input_invalid', message: 'input[0] has 3 values; expected 4' } });
    expect(Date.now() - sent).toBeLessThan(900);
  });

  it('a completed job whose result breaks the contract is answered internal', async () => {
    const req = anomalyRequest();
    behaviour.set(req.cid, () => ({ score: 0.5 }));
    const answer = await dev.ask(req);
    expect(answer).toMatchObject({ cid: req.cid, ok: false, error: { code: 'internal' } });
    expect(f.logs.some((l) => l.includes('does not match ml-job-result.schema.json'))).toBe(true);
  });
});
