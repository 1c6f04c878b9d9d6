/** ML_WORKERS=2: two supervised workers compete for the one ml-infer queue and both do jobs. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { anomalyRequest, makeModelsDir, slowRequest, startMlFleet, waitFor, type MlFleet } from './helpers.js';

let f: MlFleet;

beforeAll(async () => {
  // One job at a time each, so a burst cannot all land on whichever worker asked first.
  f = await startMlFleet({ ML_WORKERS: '2', ML_WORKER_CONCURRENCY: '1', ML_MODELS_DIR: await makeModelsDir({ slow: true }) });
  await f.workersAlive(2);
}, 30_000);
afterAll(async () => {
  await f?.close();
});

describe('two workers sharing the queue', () => {
  it('both are supervised and alive, each with its own id and process', async () => {
    const h = await f.health();
    expect(h.alive).toBe(2);
    expect(h.workers.map((w) => w.id.slice(-3)).sort()).toEqual(['-w0', '-w1']);
    expect(h.workers.every((w) => w.supervised && w.status === 'alive' && w.restarts === 0)).toBe(true);
    expect(new Set(h.workers.map((w) => w.pid)).size).toBe(2);
  });

  it('both do jobs, and every request gets its one answer', async () => {
    const dev = await f.connectDevice('ml-two');
    const reqs = [...Array.from({ length: 6 }, () => slowRequest(100, { deadline_ms: 10_000 })), ...Array.from({ length: 20 }, () => anomalyRequest())];
    await Promise.all(reqs.map((r) => dev.send(r)));
    const answers = await Promise.all(reqs.map((r) => dev.answerFor(r.cid, 10_000)));
    expect(answers.every((a) => a.ok)).toBe(true);
    expect(dev.results).toHaveLength(reqs.length);
    const h = await waitFor(() => f.health(), (b) => b.workers.reduce((n, w) => n + w.jobs_done, 0) >= reqs.length, 5000);
    for (const w of h.workers) expect(w.jobs_done).toBeGreaterThan(0);
  });
});
