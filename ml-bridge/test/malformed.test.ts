/**
 * Every kind of bad request gets its error on devices/{id}/ml/result with its cid, and
 * nothing else breaks: the device stays connected, the worker keeps serving, and a
 * refused request is not retried. The broker answers what it refuses at the door
 * (request_invalid, rate_limited); the worker fails the rest with their code and the
 * bridge answers them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { createRedis, queues } from '@fleetwire/common';
import { anomalyRequest, REDIS_URL, sleep, startMlFleet, type MlDevice, type MlFleet } from './helpers.js';

let f: MlFleet;
let dev: MlDevice;
const conn = createRedis(REDIS_URL, { name: 'malformed-queue', maxRetriesPerRequest: null });
const queue = new Queue('ml-infer', { connection: conn, prefix: queues.prefix });
const QUOTA = 40;

beforeAll(async () => {
  f = await startMlFleet({ ML_MAX_INPUT_ROWS: '8', ML_QUOTA_PER_MIN: String(QUOTA) });
  await f.workersAlive(1);
  dev = await f.connectDevice('ml-bad');
}, 30_000);
afterAll(async () => {
  await queue.close();
  conn.disconnect();
  await f?.close();
});

async function expectError(req: Record<string, unknown> & { cid: string }, code: string, opts: { msgpack?: boolean } = {}) {
  const answer = await dev.ask(req, opts);
  expect(answer).toMatchObject({ cid: req.cid, ok: false, error: { code } });
  expect(answer.error!.message.length).toBeGreaterThan(0);
  expect(answer.output).toBeUndefined();
  return answer;
}

describe('malformed ML requests', () => {
  it('a payload that is neither JSON nor msgpack reaches nobody and cannot be answered (it has no readable cid); the device stays connected', async () => {
    await dev.send(Buffer.from([0xc1, 0xff, 0x00, 0x7b]));
    await dev.send('{"cid": "trunc-1", "model": "anom');
    await sleep(300);
    expect(dev.results).toHaveLength(0);
    expect(dev.client.connected).toBe(true);
    expect((await dev.ask(anomalyRequest())).ok).toBe(true);
  });

  it('schema-invalid requests are answered request_invalid by the broker and never queued', async () => {
    const noModel = { cid: 'inv-no-model', input: [[1, 2, 3, 4]] };
    const badDeadline = anomalyRequest({ cid: 'inv-deadline', deadline_ms: 0 });
    const numericModel = { cid: 'inv-model-type', model: 7, input: [[1, 2, 3, 4]] };
    for (const req of [noModel, badDeadline, numericModel]) {
      expect(await dev.ask(req)).toMatchObject({ cid: req.cid, ok: false, error: { code: 'request_invalid' } });
      expect(await queue.getJob(`ml-bad.${req.cid}`)).toBeUndefined();
    }
  });

  it('an unknown model is answered model_unknown', async () => {
    const answer = await expectError(anomalyRequest({ model: 'no-such-model' }), 'model_unknown');
    expect(answer.model_version).toBe('');
  });

  it('an unknown version is answered version_unknown', async () => {
    await expectError(anomalyRequest({ version: '9' }), 'version_unknown');
  });

  it('bad input is answered input_invalid: wrong width, strings, ragged rows, empty, not a list', async () => {
    await expectError(anomalyRequest({ input: [[1, 2, 3]] }), 'input_invalid');
    await expectError(anomalyRequest({ input: [['hot', 45, 0.02, 1.2]] }), 'input_invalid');
    await expectError(anomalyRequest({ input: [[1, 2, 3, 4], [1, 2]] }), 'input_invalid');
    await expectError(anomalyRequest({ input: [] }), 'input_invalid');
    await expectError(anomalyRequest({ input: 'readings' }), 'input_invalid');
  });

  it('a NaN (msgpack can carry one, JSON cannot) is refused by the broker as request_invalid: it cannot become a JSON job', async () => {
    await expectError(anomalyRequest({ input: [[Number.NaN, 45, 0.02, 1.2]] }), 'request_invalid', { msgpack: true });
  });

  it('more rows than ML_MAX_INPUT_ROWS is answered input_too_large; the limit itself passes', async () => {
    const row = [21.5, 45, 0.02, 1.2];
    await expectError(anomalyRequest({ input: Array.from({ length: 9 }, () => row) }), 'input_too_large');
    expect((await dev.ask(anomalyRequest({ input: Array.from({ length: 8 }, () => row) }))).ok).toBe(true);
  });

  it('a refused job is failed once (not retried), counted by its code, and the worker keeps serving', async () => {
    const req = anomalyRequest({ model: 'nope' });
    await expectError(req, 'model_unknown');
    const job = await queue.getJob(`ml-bad.${req.cid}`);
    expect(job!.attemptsMade).toBe(1);
    expect(await queue.getJobState(`ml-bad.${req.cid}`)).toBe('failed');
    expect(await f.metric('fleetwire_ml_requests_total', 'model="nope",outcome="model_unknown"')).toBe(1);
    expect(await f.metric('fleetwire_ml_requests_total', 'model="anomaly",outcome="input_invalid"')).toBe(5);
    expect((await dev.ask(anomalyRequest())).ok).toBe(true);
    const h = await f.health();
    expect(h.workers[0]).toMatchObject({ status: 'alive', restarts: 0 });
  });

  it('requests over the device\'s quota are answered rate_limited; every one gets exactly one answer', async () => {
    const quotaDev = await f.connectDevice('ml-quota');
    const reqs = Array.from({ length: QUOTA + 2 }, () => anomalyRequest());
    await Promise.all(reqs.map((r) => quotaDev.send(r)));
    const answers = await Promise.all(reqs.map((r) => quotaDev.answerFor(r.cid, 10_000)));
    const codes = answers.map((a) => (a.ok ? 'ok' : a.error!.code));
    expect(codes.filter((c) => c === 'ok')).toHaveLength(QUOTA);
    expect(codes.filter((c) => c === 'rate_limited')).toHaveLength(2);
    await sleep(200);
    expect(quotaDev.results).toHaveLength(QUOTA + 2);
  });
});
