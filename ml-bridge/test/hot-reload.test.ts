/**
 * Hot reload under load: while requests flow, a version 3 directory appears and
 * POST /internal/ml/models/anomaly/reload makes the workers switch to it. No request fails
 * or goes unanswered, and the answers after the switch come from version 3.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cp, readFile, rename, writeFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { anomalyRequest, makeModelsDir, sleep, startMlFleet, waitFor, type MlFleet, type MlResult } from './helpers.js';

let f: MlFleet;
let models: string;
const scanBefore = process.env.ML_MODEL_SCAN_MS;

beforeAll(async () => {
  // The workers would find the new directory by themselves within ML_MODEL_SCAN_MS; make that
  // a minute, so what switches them here is the reload request.
  process.env.ML_MODEL_SCAN_MS = '60000';
  models = await makeModelsDir();
  f = await startMlFleet({ ML_MODELS_DIR: models, ML_QUOTA_PER_MIN: '100000', ML_WORKERS: '2' });
  await f.workersAlive(2);
}, 30_000);
afterAll(async () => {
  if (scanBefore === undefined) delete process.env.ML_MODEL_SCAN_MS;
  else process.env.ML_MODEL_SCAN_MS = scanBefore;
  await f?.close();
});

/** Copies version 2 to version 3 as an operator would: beside the models, then one rename into place. */
async function addVersion3(): Promise<void> {
  const staging = join(await mkdtemp(join(tmpdir(), 'fw-v3-')), '3');
  await cp(join(models, 'anomaly', '2'), staging, { recursive: true });
  const manifest = JSON.parse(await readFile(join(staging, 'manifest.json'), 'utf8')) as { version: string };
  manifest.version = '3';
  await writeFile(join(staging, 'manifest.json'), JSON.stringify(manifest, null, 2));
  await rename(staging, join(models, 'anomaly', '3'));
}

describe('hot reload under load', () => {
  it('switches to version 3 with no failed or missing answer', async () => {
    const dev = await f.connectDevice('ml-reload');
    const sent: { cid: string; at: number }[] = [];
    let flowing = true;
    const flow = (async () => {
      while (flowing) {
        const reqs = [anomalyRequest({ deadline_ms: 10_000 }), anomalyRequest({ deadline_ms: 10_000 })];
        for (const r of reqs) sent.push({ cid: r.cid, at: Date.now() });
        await Promise.all(reqs.map((r) => dev.send(r)));
        await sleep(5);
      }
    })();

    await sleep(500);
    await addVersion3();
    await sleep(200);
    // Before the reload the workers have not looked: still version 2.
    expect((await f.health()).workers.every((w) => w.models.anomaly!.default === '2')).toBe(true);
    const reload = await f.api('POST', '/internal/ml/models/anomaly/reload', { token: await f.tokenFor('admin') });
    expect(reload.status).toBe(202);
    expect(reload.body.workers_notified).toBe(2);
    const reloadedAt = Date.now();
    await waitFor(() => f.health(), (h) => h.workers.every((w) => w.models.anomaly?.default === '3'), 5000);
    await sleep(700);
    flowing = false;
    await flow;

    const answers: MlResult[] = await Promise.all(sent.map((s) => dev.answerFor(s.cid, 10_000)));
    expect(sent.length).toBeGreaterThan(80);
    expect(answers.filter((a) => !a.ok)).toEqual([]);
    expect(dev.results).toHaveLength(sent.length);
    const versions = answers.map((a) => a.model_version);
    expect(versions[0]).toBe('2');
    // Sent a good while after the reload was acknowledged: version 3, every one.
    const afterSwitch = answers.filter((_, i) => sent[i]!.at > reloadedAt + 300);
    expect(afterSwitch.length).toBeGreaterThan(20);
    expect(afterSwitch.every((a) => a.model_version === '3')).toBe(true);
    expect((await f.health()).queue.failed).toBe(0);
    const h = await f.health();
    for (const w of h.workers) expect(w.models.anomaly).toEqual({ default: '3', versions: ['1', '2', '3'] });
  }, 25_000);
});
