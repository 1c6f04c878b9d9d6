/**
 * The broker node holding the device and the bridge that sees the result are different
 * processes: two broker nodes in cluster mode (BROKER_CLUSTER=redis) share fan-out through
 * Redis. Node A (this process, with the auth service) holds the device; node B is a broker
 * process; the bridge runs in a process of its own, linked to node B (ML_BROKER_URL). The
 * answer reaches the device exactly once. A second bridge linked to node A sees every
 * result too, and still each request is answered once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnBroker, stop, type BrokerProcess } from '../../broker/test/processes.js';
import { anomalyRequest, auth, broker, mlBridge, sleep, startMlFleet, waitFor, type MlFleet } from './helpers.js';

let a: MlFleet;
let b: BrokerProcess;
let bridge: MlFleet;

beforeAll(async () => {
  a = await startMlFleet({ BROKER_CLUSTER: 'redis', BROKER_NODE_ID: 'node-a' }, { services: [broker, auth] });
  b = await spawnBroker({
    BROKER_CLUSTER: 'redis', BROKER_NODE_ID: 'node-b', JWKS_URL: `${a.url}/.well-known/jwks.json`,
    FLEETWIRE_DATA_DIR: await mkdtemp(join(tmpdir(), 'fw-ml-node-b-')),
  });
  // The bridge alone (`fleetwire ml-bridge`): it signs its link token with node A's keys, which node B trusts through A's JWKS.
  bridge = await startMlFleet({ ML_BROKER_URL: b.url }, { services: [mlBridge], dataDir: a.dataDir, users: a });
  await bridge.workersAlive(1);
}, 30_000);
afterAll(async () => {
  await bridge?.close();
  if (b) await stop(b);
  await a?.close();
});

describe('device and bridge on different broker nodes', () => {
  it('the bridge refuses to start alone without ML_BROKER_URL', async () => {
    await expect(startMlFleet({}, { services: [mlBridge], dataDir: a.dataDir, users: a })).rejects.toThrow(/ML_BROKER_URL/);
  });

  it('is linked to node B and ready', async () => {
    const ready = await bridge.api('GET', '/readyz');
    expect(ready.body.checks).toMatchObject({ 'ml-bridge.broker_link': true, 'ml-bridge.workers': true });
    expect(b.output.some((l) => l.includes('service:ml-bridge:'))).toBe(true);
  });

  it('answers a device on node A through node B, exactly once', async () => {
    const dev = await a.connectDevice('ml-cluster');
    const req = anomalyRequest();
    expect(await dev.ask(req)).toMatchObject({ cid: req.cid, ok: true, model_version: '2' });
    const bad = anomalyRequest({ model: 'no-such-model' });
    expect(await dev.ask(bad)).toMatchObject({ cid: bad.cid, ok: false, error: { code: 'model_unknown' } });
    await sleep(300);
    expect(dev.results).toHaveLength(2);
  });

  it('with a second bridge (linked to node A) seeing the same results, each request is still answered once', async () => {
    const second = await startMlFleet({ ML_WORKERS: '0', ML_BROKER_URL: a.mqttUrl }, { services: [mlBridge], dataDir: a.dataDir, users: a });
    try {
      await waitFor(() => second.api('GET', '/readyz'), (r) => r.status === 200, 5000);
      const okBefore = await bridge.metric('fleetwire_ml_requests_total', 'model="anomaly",outcome="ok"');
      const dev = await a.connectDevice('ml-cluster-2');
      const reqs = Array.from({ length: 20 }, () => anomalyRequest());
      await Promise.all(reqs.map((r) => dev.send(r)));
      const answers = await Promise.all(reqs.map((r) => dev.answerFor(r.cid, 5000)));
      expect(answers.every((x) => x.ok)).toBe(true);
      await sleep(300);
      expect(dev.results).toHaveLength(20);
      // Losing a claim to the other bridge is not a late result.
      expect(await second.metric('fleetwire_ml_late_results_total') + await bridge.metric('fleetwire_ml_late_results_total')).toBe(0);
      // Between them the two bridges answered each request once.
      const byFirst = await bridge.metric('fleetwire_ml_requests_total', 'model="anomaly",outcome="ok"') - okBefore;
      const bySecond = await second.metric('fleetwire_ml_requests_total', 'model="anomaly",outcome="ok"');
      expect(byFirst + bySecond).toBe(20);
    } finally {
      await second.close();
    }
  });
});
