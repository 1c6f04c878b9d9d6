/**
 * Workers the bridge does not supervise (ML_WORKERS=0, workers on other machines) are seen
 * through their Redis heartbeats alone, and readiness follows them; a worker executable
 * that does not exist is reported once, clearly, without a restart loop.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { anomalyRequest, MODELS_DIR, REDIS_URL, sleep, startMlFleet, waitFor, WORKER_COMMAND, type MlFleet } from './helpers.js';

const fleets: MlFleet[] = [];
const children: ChildProcess[] = [];
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const f of fleets) await f.close();
});

describe('standalone workers', () => {
  it('with ML_WORKERS=0 the bridge is not ready until a worker elsewhere writes heartbeats; it shows it unsupervised and it serves', async () => {
    const f = await startMlFleet({ ML_WORKERS: '0' });
    fleets.push(f);
    const notReady = await f.api('GET', '/readyz');
    expect(notReady.status).toBe(503);
    expect(notReady.body.checks).toMatchObject({ 'ml-bridge.workers': false, 'ml-bridge.broker_link': true });
    expect((await f.health()).workers).toEqual([]);

    // A worker started by hand, as on another machine: only Redis in common.
    const child = spawn(WORKER_COMMAND, [], {
      env: { ...process.env, REDIS_URL, ML_WORKER_ID: 'edge-box-1', ML_MODELS_DIR: MODELS_DIR, LOG_LEVEL: 'warn' }, stdio: 'ignore',
    });
    children.push(child);
    const h = await f.workersAlive(1);
    expect(h.workers).toHaveLength(1);
    expect(h.workers[0]).toMatchObject({ id: 'edge-box-1', status: 'alive', supervised: false, pid: child.pid, restarts: 0 });
    expect((await f.api('GET', '/readyz')).status).toBe(200);
    const dev = await f.connectDevice('ml-standalone');
    expect(await dev.ask(anomalyRequest())).toMatchObject({ ok: true, model_version: '2' });

    // SIGTERM: it finishes, says goodbye (removes its heartbeat) and exits 0.
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const after = await waitFor(() => f.health(), (b) => b.alive === 0, 5000);
    expect(after.workers.filter((w) => w.status === 'alive')).toEqual([]);
    expect((await f.api('GET', '/readyz')).status).toBe(503);
  });

  it('a missing worker executable is one clear error naming ML_WORKER_COMMAND, not a restart loop', async () => {
    const f = await startMlFleet({ ML_WORKER_COMMAND: '/nonexistent/fleetwire-ml-worker' });
    fleets.push(f);
    await sleep(1000);
    const errors = f.logs.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => l.level >= 50 && l.msg.includes('ML_WORKER_COMMAND'));
    expect(errors).toHaveLength(1);
    expect(errors[0]!.msg).toContain('/nonexistent/fleetwire-ml-worker');
    expect(f.logs.some((l) => l.includes('supervised process'))).toBe(false);
    const ready = await f.api('GET', '/readyz');
    expect(ready.status).toBe(503);
    expect(ready.body.checks).toMatchObject({ 'ml-bridge.workers': false });
    expect((await f.health()).workers).toEqual([]);
  });
});
