/**
 * A device's inference request, end to end: a WebSocket device client with a real device
 * token publishes on devices/{id}/ml/infer, the broker admits and queues it, a real Python
 * worker (supervised by the bridge) runs the real ONNX model, and the bridge answers on
 * devices/{id}/ml/result with the request's cid.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { createRedis, queues, schemaValidator } from '@fleetwire/common';
import { anomalyRequest, REDIS_URL, startMlFleet, type MlDevice, type MlFleet } from './helpers.js';

let f: MlFleet;
let dev: MlDevice;
const validResult = schemaValidator('ml-result.schema.json');

beforeAll(async () => {
  f = await startMlFleet();
  await f.workersAlive(1);
  dev = await f.connectDevice('ml-rt');
}, 30_000);
afterAll(async () => {
  await f?.close();
});

describe('an ML round trip from a WebSocket device', () => {
  it('answers a JSON request with its cid, ok, the model output and the default (highest) version', async () => {
    const req = anomalyRequest({ input: [[21.5, 45, 0.02, 1.2], [95, 5, 3.5, 12]] });
    const answer = await dev.ask(req);
    expect(validResult(answer)).toBe(true);
    expect(answer).toMatchObject({ cid: req.cid, ok: true, model_version: '2' });
    expect(answer.error).toBeUndefined();
    // One value per input row for each of the model's outputs: a normal reading, then a wildly abnormal one.
    const output = answer.output as { score: number[]; anomaly: boolean[] };
    expect(output.score).toHaveLength(2);
    expect(output.anomaly).toEqual([false, true]);
    expect(output.score[1]).toBeGreaterThan(output.score[0]!);
    expect(dev.answersFor(req.cid)).toHaveLength(1);
  });

  it('answers a msgpack request the same way', async () => {
    const req = anomalyRequest();
    const answer = await dev.ask(req, { msgpack: true });
    expect(answer).toMatchObject({ cid: req.cid, ok: true, model_version: '2' });
    expect(answer.output).toBeDefined();
  });

  it('answers a request pinned to version 1 with version 1', async () => {
    const req = anomalyRequest({ version: '1' });
    expect(await dev.ask(req)).toMatchObject({ cid: req.cid, ok: true, model_version: '1' });
  });

  it('gives the same output for the same input (a real model, not a stand-in)', async () => {
    const input = [[21.5, 45, 0.02, 1.2], [95, 5, 3.5, 12]];
    const a = await dev.ask(anomalyRequest({ input }));
    const b = await dev.ask(anomalyRequest({ input }), { msgpack: true });
    expect(b.output).toEqual(a.output);
  });

  it('counts the answers by model and outcome and measures their latency and compute time', async () => {
    expect(await f.metric('fleetwire_ml_requests_total', 'model="anomaly",outcome="ok"')).toBeGreaterThanOrEqual(5);
    expect(await f.metric('fleetwire_ml_latency_seconds_count', 'model="anomaly"')).toBeGreaterThanOrEqual(5);
    expect(await f.metric('fleetwire_ml_compute_seconds_count', 'model="anomaly"')).toBeGreaterThanOrEqual(5);
    expect(await f.metric('fleetwire_ml_workers_alive')).toBe(1);
    expect(await f.metric('fleetwire_ml_queue_depth', 'state="waiting"')).toBe(0);
  });

  it('logs the answer with the cid and device id', async () => {
    const req = anomalyRequest();
    await dev.ask(req);
    const lines = f.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.cid === req.cid);
    expect(lines.find((l) => l.msg === 'published')).toMatchObject({ device_id: 'ml-rt', outcome: 'ok' });
  });

  it('leaves no request pending and the finished job in the queue\'s completed set', async () => {
    const req = anomalyRequest();
    await dev.ask(req);
    expect(await f.redis.hget(`fleetwire:ml:req:ml-rt.${req.cid}`, 'state')).toBe('answered');
    expect(await f.redis.zscore('fleetwire:ml:deadlines', `ml-rt.${req.cid}`)).toBeNull();
    const conn = createRedis(REDIS_URL, { name: 'rt-queue', maxRetriesPerRequest: null });
    const queue = new Queue('ml-infer', { connection: conn, prefix: queues.prefix });
    expect(await queue.getJobState(`ml-rt.${req.cid}`)).toBe('completed');
    await queue.close();
    conn.disconnect();
  });
});
