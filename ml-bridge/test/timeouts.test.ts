/**
 * Deadlines: a device always gets exactly one answer by its deadline, `timeout` when no
 * result came in time, and a result that comes later is dropped and counted. With the
 * only worker stalled (SIGSTOP) the waiting job is answered timeout and removed; with a
 * job still computing past its deadline the worker's late result is dropped.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { createRedis, queues } from '@fleetwire/common';
import { anomalyRequest, makeModelsDir, REDIS_URL, sleep, slowRequest, startMlFleet, waitFor, type MlDevice, type MlFleet } from './helpers.js';

const CHECK_MS = 20;
let f: MlFleet;
let dev: MlDevice;
const conn = createRedis(REDIS_URL, { name: 'timeouts-queue', maxRetriesPerRequest: null });
const queue = new Queue('ml-infer', { connection: conn, prefix: queues.prefix });

beforeAll(async () => {
  f = await startMlFleet({ ML_MODELS_DIR: await makeModelsDir({ slow: true }), ML_DEADLINE_CHECK_MS: String(CHECK_MS) });
  await f.workersAlive(1);
  dev = await f.connectDevice('ml-late');
}, 30_000);
afterAll(async () => {
  await queue.close();
  conn.disconnect();
  await f?.close();
});

describe('ML deadlines', () => {
  it('a stalled worker: timeout at the deadline, the waiting job removed, and no second answer once it resumes', async () => {
    const pid = (await f.health()).workers[0]!.pid!;
    process.kill(pid, 'SIGSTOP');
    let resumed = false;
    try {
      const req = anomalyRequest({ deadline_ms: 300 });
      const sent = Date.now();
      const answer = await dev.ask(req, { timeoutMs: 3000 });
      const tookMs = Date.now() - sent;
      expect(answer).toEqual({ cid: req.cid, ok: false, error: { code: 'timeout', message: expect.any(String) }, model_version: '' });
      expect(tookMs).toBeGreaterThanOrEqual(290);
      expect(tookMs).toBeLessThan(300 + CHECK_MS + 600);
      expect(await queue.getJob(`ml-late.${req.cid}`)).toBeUndefined();

      process.kill(pid, 'SIGCONT');
      resumed = true;
      // The resumed worker serves the next request; the timed-out one never gets a second answer.
      expect((await dev.ask(anomalyRequest())).ok).toBe(true);
      await sleep(300);
      expect(dev.answersFor(req.cid)).toHaveLength(1);
      expect(await f.metric('fleetwire_ml_timeouts_total')).toBe(1);
      expect(await f.metric('fleetwire_ml_requests_total', 'model="anomaly",outcome="timeout"')).toBe(1);
      expect(f.logs.some((l) => l.includes('"timed out"') && l.includes(req.cid) && l.includes('"device_id":"ml-late"'))).toBe(true);
    } finally {
      if (!resumed) process.kill(pid, 'SIGCONT');
    }
  });

  it('a job computing past its deadline: timeout at the deadline, the worker\'s result dropped as late and counted', async () => {
    const late = await f.metric('fleetwire_ml_late_results_total');
    const req = slowRequest(1200, { deadline_ms: 400 });
    const sent = Date.now();
    const answer = await dev.ask(req, { timeoutMs: 3000 });
    expect(answer).toMatchObject({ cid: req.cid, ok: false, error: { code: 'timeout' } });
    expect(Date.now() - sent).toBeLessThan(400 + CHECK_MS + 600);
    // The job was active (locked by the worker) and could not be removed: it finishes, and its result is dropped.
    await waitFor(() => f.metric('fleetwire_ml_late_results_total'), (n) => n === late + 1, 5000);
    expect(await queue.getJobState(`ml-late.${req.cid}`)).toBe('completed');
    await sleep(200);
    expect(dev.answersFor(req.cid)).toHaveLength(1);
    expect(f.logs.some((l) => l.includes('"late result dropped"') && l.includes(`"job_id":"ml-late.${req.cid}"`))).toBe(true);
  });

  it('a request whose deadline is generous gets the slow model\'s real result', async () => {
    const req = slowRequest(300, { deadline_ms: 5000 });
    expect(await dev.ask(req, { timeoutMs: 6000 })).toMatchObject({ cid: req.cid, ok: true, model_version: '1' });
  });
});
