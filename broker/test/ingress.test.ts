import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { pack } from 'msgpackr';
import { createRedis, queues, schemaValidator } from '@fleetwire/common';
import { connect, nextMessage, queuedEnvelopes, REDIS_URL, sleep, startBroker, waitFor, type TestBroker } from './helpers.js';

let t: TestBroker;
const conn = createRedis(REDIS_URL, { name: 'test-queues', maxRetriesPerRequest: null });
const queue = (name: string) => new Queue(name, { connection: conn, prefix: queues.prefix });
beforeAll(async () => {
  t = await startBroker();
});
afterAll(async () => {
  await t.close();
  conn.disconnect();
});

const heartbeat = { seq: 1, uptime_s: 60, rssi: -55, heap_free: 120_000, fw: '1.0.0' };

describe('ingress routing to BullMQ', () => {
  it('routes a heartbeat to the heartbeats queue as an envelope with device id, class and cid, in a batch job', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-hb'), 'dev-hb');
    dev.publish('devices/dev-hb/heartbeat', JSON.stringify(heartbeat), { qos: 0 });
    const q = queue('heartbeats');
    const [job] = await waitFor(() => q.getJobs(['waiting']), (jobs) => jobs.length === 1);
    expect(job!.name).toBe('heartbeat');
    expect(schemaValidator('ingress-batch.schema.json')(job!.data)).toBe(true); // the contract consumers read
    const [envelope] = job!.data.batch;
    expect(envelope).toMatchObject({ device_id: 'dev-hb', topic_class: 'heartbeat', payload: heartbeat, node: t.broker.nodeId });
    expect(typeof envelope.cid).toBe('string');
    expect(schemaValidator('ingress-envelope.schema.json')(envelope)).toBe(true);
    expect(job!.opts.attempts).toBe(queues.queues.heartbeats!.attempts);
    expect(job!.opts.backoff).toEqual({ type: 'exponential', delay: queues.queues.heartbeats!.backoff_ms });
    await dev.endAsync();
  });

  it('acknowledges a QoS 1 command result only after it is queued, and queues a retransmission once', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-res'), 'dev-res');
    const result = { cid: 'cmd-42', ok: true, result: { pong: true } };
    await dev.publishAsync('devices/dev-res/cmd/result', JSON.stringify(result), { qos: 1 });
    const q = queue('cmd-results');
    expect(await q.getJob('dev-res.cmd-42')).toBeTruthy();
    await dev.publishAsync('devices/dev-res/cmd/result', JSON.stringify(result), { qos: 1, dup: true });
    expect(await q.getJobCounts('waiting')).toEqual({ waiting: 1 });
    await dev.endAsync();
  });

  it('withholds the PUBACK of a QoS 1 message while Redis cannot take the job, and acknowledges once it is queued', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-pause'), 'dev-pause');
    const admin = createRedis(REDIS_URL, { name: 'test-pause' });
    await admin.call('CLIENT', 'PAUSE', '1200', 'WRITE');
    const started = Date.now();
    await dev.publishAsync('devices/dev-pause/cmd/result', JSON.stringify({ cid: 'p-1', ok: true, result: 1 }), { qos: 1 });
    expect(Date.now() - started).toBeGreaterThan(900);
    expect(await queue('cmd-results').getJob('dev-pause.p-1')).toBeTruthy();
    admin.disconnect();
    await dev.endAsync();
  });

  it('routes OTA status and msgpack-encoded ML requests', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-ml'), 'dev-ml');
    await dev.publishAsync('devices/dev-ml/ota/status', JSON.stringify({ rollout: 'r-1', state: 'downloading', progress: 10 }), { qos: 1 });
    await dev.publishAsync('devices/dev-ml/ml/infer', pack({ cid: 'm-1', model: 'anomaly', input: [1, 2, 3] }), { qos: 1 });
    expect((await queue('ota-events').getJobs(['waiting']))[0]!.data.payload.state).toBe('downloading');
    const ml = await queue('ml-infer').getJob('dev-ml.m-1');
    expect(ml!.data.payload).toEqual({ cid: 'm-1', model: 'anomaly', input: [1, 2, 3] });
    await dev.endAsync();
  });

  it('refuses a heartbeat that breaks its schema: nothing queued, nothing forwarded, a metric counts it, the device stays connected', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-bad'), 'dev-bad');
    const svc = await connect(t.url, await t.mint({ sub: 'watch', typ: 'service' }), 'service:watch:1');
    await svc.subscribeAsync('devices/dev-bad/#');
    const seen: string[] = [];
    svc.on('message', (topic) => seen.push(topic));
    dev.publish('devices/dev-bad/heartbeat', JSON.stringify({ seq: -1, fw: '' }), { qos: 0 });
    dev.publish('devices/dev-bad/heartbeat', 'not json at all', { qos: 0 });
    await sleep(300);
    expect((await queuedEnvelopes(queue('heartbeats'))).filter((e) => e.device_id === 'dev-bad')).toEqual([]);
    expect(seen).toEqual([]);
    expect(dev.connected).toBe(true);
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_ingress_rejected_total\{topic_class="heartbeat"\} 2/);
    expect(t.logs.join('')).toMatch(/heartbeat payload rejected: .*must/);
    expect(t.logs.join('')).toContain('heartbeat payload is not valid JSON');
    await Promise.all([dev.endAsync(), svc.endAsync()]);
  });

  it('answers an invalid ML request with an error result the device can correlate', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-mlbad'), 'dev-mlbad');
    await dev.subscribeAsync('devices/dev-mlbad/ml/result', { qos: 1 });
    const answer = nextMessage(dev, 'devices/dev-mlbad/ml/result');
    await dev.publishAsync('devices/dev-mlbad/ml/infer', JSON.stringify({ cid: 'm-bad', input: [1] }), { qos: 1 });
    const body = JSON.parse((await answer).toString());
    expect(body).toMatchObject({ cid: 'm-bad', ok: false, error: { code: 'request_invalid' } });
    expect(body.error.message).toMatch(/must have required property 'model'/);
    await dev.endAsync();
  });

  // Both pass the schema (ML input is free-form) but cannot become a queue job (JSON).
  const unqueueable: Array<[string, () => Buffer]> = [
    ['a msgpack integer beyond 2^53', () => pack({ cid: 'm-big', model: 'anomaly', input: [2n ** 63n] })],
    ['JSON nested 60,000 deep', () => Buffer.from(`{"cid":"m-deep","model":"anomaly","input":${'['.repeat(60_000)}${']'.repeat(60_000)}}`)],
  ];
  for (const [what, payload] of unqueueable) {
    it(`refuses an ML request holding ${what} as invalid input: acknowledged, answered with an error, the device stays connected`, async () => {
      const dev = await connect(t.url, await t.registerDevice('dev-unq'), 'dev-unq');
      await dev.subscribeAsync('devices/dev-unq/ml/result', { qos: 1 });
      const answer = nextMessage(dev, 'devices/dev-unq/ml/result');
      await dev.publishAsync('devices/dev-unq/ml/infer', payload(), { qos: 1 });
      const body = JSON.parse((await answer).toString());
      expect(body).toMatchObject({ ok: false, error: { code: 'request_invalid' } });
      expect(body.error.message).toMatch(/JSON|nest/);
      await sleep(100);
      expect(dev.connected).toBe(true);
      expect(await queue('ml-infer').getJobCounts('waiting')).toMatchObject({ waiting: 1 }); // only the good one from before
      const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
      expect(metrics).not.toMatch(/fleetwire_broker_queue_routing_errors_total\{queue="ml-infer"\} [1-9]/);
      await dev.endAsync();
    });
  }

  it('counts messages and bytes in and out by topic class', async () => {
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_messages_in_total\{topic_class="heartbeat"\} \d+/);
    expect(metrics).toMatch(/fleetwire_broker_bytes_in_total\{topic_class="cmd-result"\} \d+/);
    expect(metrics).toMatch(/fleetwire_broker_messages_out_total\{topic_class="ml-result"\} \d+/);
  });
});
