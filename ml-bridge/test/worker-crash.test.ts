/**
 * A worker killed (kill -9) in the middle of a job: the supervisor restarts it, and the
 * job's lock lapses (ML_WORKER_LOCK_MS), so BullMQ's stalled-job check hands it to a worker
 * again. Within a long deadline the retry answers it; with a short one the device gets
 * `timeout`. Never silence, never two answers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { createRedis, queues } from '@fleetwire/common';
import { makeModelsDir, REDIS_URL, sleep, slowRequest, startMlFleet, waitFor, type MlDevice, type MlFleet } from './helpers.js';

let f: MlFleet;
let dev: MlDevice;
const conn = createRedis(REDIS_URL, { name: 'crash-queue', maxRetriesPerRequest: null });
const queue = new Queue('ml-infer', { connection: conn, prefix: queues.prefix });

beforeAll(async () => {
  f = await startMlFleet({ ML_MODELS_DIR: await makeModelsDir({ slow: true }), ML_WORKER_LOCK_MS: '1000' });
  await f.workersAlive(1);
  dev = await f.connectDevice('ml-crash');
}, 30_000);
afterAll(async () => {
  await queue.close();
  conn.disconnect();
  await f?.close();
});

/** Sends `req`, waits until a worker holds it, and kills that worker; resolves with the killed pid. */
async function killMidJob(req: Record<string, unknown> & { cid: string }): Promise<number> {
  const pid = (await f.workersAlive(1)).workers[0]!.pid!;
  await dev.send(req);
  await waitFor(() => queue.getJobState(`ml-crash.${req.cid}`), (s) => s === 'active', 3000);
  await sleep(100); // inside the compute, not just taken
  process.kill(pid, 'SIGKILL');
  return pid;
}

describe('a worker killed mid-job', () => {
  it('with a long deadline: restarted, the job retried, the device answered ok once', async () => {
    const req = slowRequest(800, { deadline_ms: 15_000 });
    const killed = await killMidJob(req);
    const answer = await dev.answerFor(req.cid, 14_000);
    expect(answer).toMatchObject({ cid: req.cid, ok: true, model_version: '1' });
    const h = await f.health();
    expect(h.workers[0]!.pid).not.toBe(killed);
    expect(h.workers[0]!.restarts).toBe(1);
    await sleep(300);
    expect(dev.answersFor(req.cid)).toHaveLength(1);
  }, 20_000);

  it('with a short deadline: the device gets timeout at the deadline, and the retried job\'s result is dropped', async () => {
    const late = await f.metric('fleetwire_ml_late_results_total');
    const req = slowRequest(800, { deadline_ms: 600 });
    const sent = Date.now();
    await killMidJob(req);
    const answer = await dev.answerFor(req.cid, 3000);
    expect(answer).toMatchObject({ cid: req.cid, ok: false, error: { code: 'timeout' } });
    expect(Date.now() - sent).toBeLessThan(1500);
    // The retried job is past its deadline: the worker completes it as timeout without compute, and that result is late.
    await waitFor(() => queue.getJobState(`ml-crash.${req.cid}`), (s) => s === 'completed', 15_000);
    await waitFor(() => f.metric('fleetwire_ml_late_results_total'), (n) => n === late + 1, 3000);
    const job = await queue.getJob(`ml-crash.${req.cid}`);
    expect(job!.returnvalue).toMatchObject({ ok: false, error: { code: 'timeout' } });
    await sleep(200);
    expect(dev.answersFor(req.cid)).toHaveLength(1);
    expect((await f.health()).workers[0]!.restarts).toBe(2);
    expect(await f.metric('fleetwire_supervised_restarts_total', 'process="ml-worker-0",reason="exited"')).toBe(2);
  }, 20_000);
});
