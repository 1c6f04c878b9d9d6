/**
 * GET /internal/ml/health, readiness and the reload route, with a real supervised worker:
 * what an operator sees before and after the worker is killed, and who may look.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signToken } from '@fleetwire/common';
import { anomalyRequest, startMlFleet, waitFor, type HealthWorker, type MlFleet } from './helpers.js';

let f: MlFleet;

// A secret of the bridge's process that its workers must not inherit.
const SECRET_NAME = 'FLEETWIRE_TEST_WEBHOOK_SECRET';

beforeAll(async () => {
  process.env[SECRET_NAME] = 'not-for-workers';
  f = await startMlFleet();
  await f.workersAlive(1);
}, 30_000);
afterAll(async () => {
  await f?.close();
  delete process.env[SECRET_NAME];
});

const serviceToken = async (): Promise<string> => signToken((await f.running.deps.keyRing()).signer, { sub: 'ops-bot', typ: 'service', ttlSeconds: 300 });

describe('GET /internal/ml/health', () => {
  it('shows the supervised worker alive with its pid, host, uptime, models and versions, jobs and heartbeat', async () => {
    const dev = await f.connectDevice('ml-health');
    for (let i = 0; i < 3; i++) expect((await dev.ask(anomalyRequest())).ok).toBe(true);
    const h = await waitFor(() => f.health(), (b) => b.workers[0]!.jobs_done >= 3, 5000);
    expect(h.alive).toBe(1);
    expect(h.workers).toHaveLength(1);
    const w = h.workers[0]!;
    expect(w).toMatchObject({ status: 'alive', supervised: true, restarts: 0, jobs_failed: 0, models: { anomaly: { default: '2', versions: ['1', '2'] } } });
    expect(w.id).toMatch(/-w0$/);
    expect(w.pid).toBeGreaterThan(0);
    expect(() => process.kill(w.pid!, 0)).not.toThrow();
    expect(typeof w.host).toBe('string');
    expect(w.uptime_s).toBeGreaterThanOrEqual(0);
    expect(Date.now() - w.last_heartbeat_at!).toBeLessThan(3000);
    expect(Date.now() - w.last_job_at!).toBeLessThan(10_000);
    expect(h.queue).toEqual({ waiting: 0, active: 0, delayed: 0, failed: 0 });
  });

  it('starts the worker with its settings and the system basics only, not the bridge\'s other environment', async () => {
    const { pid } = (await f.health()).workers[0]!;
    const env = new Map(readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    expect(env.has(SECRET_NAME)).toBe(false);
    expect(env.get('PATH')).toBe(process.env.PATH);
    expect(env.get('REDIS_URL')).toBe(process.env.REDIS_URL);
    expect(env.get('ML_WORKER_ID')).toMatch(/-w0$/);
    expect(env.get('ML_WORKER_PARENT_PID')).toBe(String(process.pid)); // it stops by itself when this process is gone
  });

  it('answers 401 without a token, 403 to a viewer, 200 to an operator and to a service token', async () => {
    expect((await f.api('GET', '/internal/ml/health')).status).toBe(401);
    const viewer = await f.api('GET', '/internal/ml/health', { token: await f.tokenFor('viewer') });
    expect(viewer.status).toBe(403);
    expect(viewer.body.error!.code).toBe('AUTH_FORBIDDEN');
    expect((await f.api('GET', '/internal/ml/health', { token: await f.tokenFor('operator') })).status).toBe(200);
    expect((await f.api('GET', '/internal/ml/health', { token: await serviceToken() })).status).toBe(200);
  });

  it('reports readiness: a live worker and the broker link', async () => {
    const ready = await f.api('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body.checks).toMatchObject({ 'ml-bridge.workers': true, 'ml-bridge.broker_link': true });
  });

  it('after kill -9 the worker is missing, then restarted (new pid, restart counted) and alive again, and serves', async () => {
    const before = (await f.health()).workers[0]!;
    process.kill(before.pid!, 'SIGKILL');
    const gone = await waitFor(() => f.health(), (h) => h.workers[0]!.status === 'missing', 5000);
    expect(gone.alive).toBe(0);
    const back = await waitFor(() => f.health(), (h) => h.workers[0]!.status === 'alive' && h.workers[0]!.pid !== before.pid, 15_000);
    const w: HealthWorker = back.workers[0]!;
    expect(w.id).toBe(before.id); // the same slot, the same worker id
    expect(w.restarts).toBe(1);
    expect(w.uptime_s).toBeLessThan(before.uptime_s! + 15);
    expect(await f.metric('fleetwire_supervised_restarts_total', 'process="ml-worker-0",reason="exited"')).toBe(1);
    expect(await f.metric('fleetwire_ml_workers_alive')).toBe(1);
    const dev = await f.connectDevice('ml-health-after');
    expect((await dev.ask(anomalyRequest())).ok).toBe(true);
    expect(f.logs.some((l) => l.includes('supervised process exited; restarting') && l.includes('ml-worker-0'))).toBe(true);
  });
});

describe('POST /internal/ml/models/{name}/reload', () => {
  it('publishes the reload to the workers: 202 with how many got it; admins and services only; the name is checked', async () => {
    const admin = await f.tokenFor('admin');
    const ok = await f.api('POST', '/internal/ml/models/anomaly/reload', { token: admin });
    expect(ok.status).toBe(202);
    expect(ok.body).toEqual({ model: 'anomaly', workers_notified: 1 });
    expect((await f.api('POST', '/internal/ml/models/anomaly/reload', { token: await serviceToken() })).status).toBe(202);
    expect((await f.api('POST', '/internal/ml/models/anomaly/reload')).status).toBe(401);
    expect((await f.api('POST', '/internal/ml/models/anomaly/reload', { token: await f.tokenFor('operator') })).status).toBe(403);
    const bad = await f.api('POST', '/internal/ml/models/Not%20A%20Name/reload', { token: admin });
    expect(bad.status).toBe(400);
    expect(bad.body.error!.code).toBe('VALIDATION_FAILED');
  });
});
