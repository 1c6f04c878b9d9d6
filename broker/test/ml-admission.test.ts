import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { claimMlAnswer, createRedis, mlKeys, queues, schemaValidator } from '@fleetwire/common';
import { connect, nextMessage, REDIS_URL, sleep, startBroker, type TestBroker } from './helpers.js';

// ML admission happens where a request enters the queue: quota, deadline, the record the bridge answers from.
let t: TestBroker;
const conn = createRedis(REDIS_URL, { name: 'test-queues', maxRetriesPerRequest: null });
const mlQueue = new Queue('ml-infer', { connection: conn, prefix: queues.prefix });
beforeAll(async () => {
  t = await startBroker({ mlTimeoutMs: 1500, mlMaxTimeoutMs: 5000, mlQuotaPerMin: 3 });
});
afterAll(async () => {
  await mlQueue.close();
  await t.close();
  conn.disconnect();
});

const request = (cid: string, extra: Record<string, unknown> = {}) => JSON.stringify({ cid, model: 'anomaly', input: [[1, 2, 3, 4]], ...extra });

describe('ML request admission in the broker', () => {
  it('stamps the deadline at enqueue: ML_TIMEOUT_MS by default, the request\'s deadline_ms up to ML_MAX_TIMEOUT_MS', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-dl'), 'dev-dl');
    await dev.publishAsync('devices/dev-dl/ml/infer', request('d-1'), { qos: 1 });
    await dev.publishAsync('devices/dev-dl/ml/infer', request('d-2', { deadline_ms: 300 }), { qos: 1 });
    await dev.publishAsync('devices/dev-dl/ml/infer', request('d-3', { deadline_ms: 60_000 }), { qos: 1 });
    for (const [cid, ms] of [['d-1', 1500], ['d-2', 300], ['d-3', 5000]] as const) {
      const job = await mlQueue.getJob(`dev-dl.${cid}`);
      expect(schemaValidator('ingress-envelope.schema.json')(job!.data)).toBe(true);
      expect(job!.data.deadline_at - job!.data.received_at).toBe(ms);
      expect(await conn.zscore(mlKeys.deadlines, `dev-dl.${cid}`)).toBe(String(job!.data.deadline_at));
      expect(await conn.hgetall(mlKeys.request(`dev-dl.${cid}`))).toMatchObject({ device_id: 'dev-dl', cid, model: 'anomaly', state: 'pending' });
    }
    await dev.endAsync();
  });

  it('answers requests over the device\'s per-minute quota with rate_limited, without queueing them', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-quota'), 'dev-quota');
    await dev.subscribeAsync('devices/dev-quota/ml/result', { qos: 1 });
    for (const cid of ['q-1', 'q-2', 'q-3']) await dev.publishAsync('devices/dev-quota/ml/infer', request(cid), { qos: 1 });
    const answer = nextMessage(dev, 'devices/dev-quota/ml/result');
    await dev.publishAsync('devices/dev-quota/ml/infer', request('q-4'), { qos: 1 });
    expect(JSON.parse((await answer).toString())).toMatchObject({ cid: 'q-4', ok: false, error: { code: 'rate_limited' } });
    expect(await mlQueue.getJob('dev-quota.q-4')).toBeUndefined();
    expect(await mlQueue.getJob('dev-quota.q-3')).toBeTruthy();
    expect(dev.connected).toBe(true);
    // another device has its own quota
    const other = await connect(t.url, await t.registerDevice('dev-quota2'), 'dev-quota2');
    await other.publishAsync('devices/dev-quota2/ml/infer', request('q-1'), { qos: 1 });
    expect(await mlQueue.getJob('dev-quota2.q-1')).toBeTruthy();
    await Promise.all([dev.endAsync(), other.endAsync()]);
  });

  it('does not queue or count again a retransmission of a request already answered', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-retx'), 'dev-retx');
    await dev.publishAsync('devices/dev-retx/ml/infer', request('r-1'), { qos: 1 });
    expect(await claimMlAnswer(conn, 'dev-retx.r-1', 'ok')).toMatchObject({ deviceId: 'dev-retx', cid: 'r-1' });
    await mlQueue.remove('dev-retx.r-1');
    await dev.publishAsync('devices/dev-retx/ml/infer', request('r-1'), { qos: 1 });
    await sleep(50);
    expect(await mlQueue.getJob('dev-retx.r-1')).toBeUndefined();
    expect(await claimMlAnswer(conn, 'dev-retx.r-1', 'timeout')).toBeNull(); // still answered once
    await dev.endAsync();
  });
});
