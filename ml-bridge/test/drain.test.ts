/**
 * Drain (SIGTERM of `fleetwire ml-bridge`): the bridge stops its workers with SIGTERM, each
 * finishes the job it is computing, and the bridge still answers it before it stops. The
 * bridge runs alone here, linked to a broker in another host, as in a multi-process layout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { createRedis, mlKeys, queues } from '@fleetwire/common';
import { auth, broker, makeModelsDir, mlBridge, REDIS_URL, slowRequest, startMlFleet, waitFor, type MlFleet } from './helpers.js';

let a: MlFleet;
let bridge: MlFleet;
const conn = createRedis(REDIS_URL, { name: 'drain-queue', maxRetriesPerRequest: null });
const queue = new Queue('ml-infer', { connection: conn, prefix: queues.prefix });

beforeAll(async () => {
  a = await startMlFleet({}, { services: [broker, auth] });
  bridge = await startMlFleet({ ML_BROKER_URL: a.mqttUrl, ML_MODELS_DIR: await makeModelsDir({ slow: true }) }, { services: [mlBridge], dataDir: a.dataDir, users: a });
  await bridge.workersAlive(1);
}, 30_000);
afterAll(async () => {
  await queue.close();
  conn.disconnect();
  await bridge?.close();
  await a?.close();
});

describe('draining the bridge', () => {
  it('lets the worker finish its running job, answers it, then stops the worker and removes its heartbeat', async () => {
    const dev = await a.connectDevice('ml-drain');
    const w = (await bridge.health()).workers[0]!;
    const req = slowRequest(700, { deadline_ms: 10_000 });
    await dev.send(req);
    await waitFor(() => queue.getJobState(`ml-drain.${req.cid}`), (s) => s === 'active', 3000);

    const stopped = bridge.running.stop();
    const answer = await dev.answerFor(req.cid, 8000);
    expect(answer).toMatchObject({ cid: req.cid, ok: true, model_version: '1' });
    await stopped;
    expect(() => process.kill(w.pid!, 0)).toThrow();
    expect(await a.redis.exists(mlKeys.worker(w.id))).toBe(0);
    expect(await a.redis.zscore(mlKeys.workers, w.id)).toBeNull();
    expect(bridge.logs.some((l) => l.includes('supervised process stopped') && l.includes('"code":0'))).toBe(true);
    expect(dev.answersFor(req.cid)).toHaveLength(1);
  }, 20_000);
});
