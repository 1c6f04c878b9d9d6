/**
 * OTA rollouts (POST /v1/rollouts …) on a real fleet, with mqtt.js devices that answer
 * offers with OTA statuses as the firmware does: validation, roles, 404 and 409;
 * compatibility skips; waves with hold; pause and resume; the failure threshold aborting a
 * rollout before its later waves; an offline device offered on reconnect; confirm windows
 * (timed_out, rolled_back); repeated statuses counted once; a rollout carried on by another
 * node when the node stepping it stops. The simulator runs the
 * staged case end to end in e2e/.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, payloadValidator, redisKeys, signManifest, signToken, startServices, type SignedManifest } from '@fleetwire/common';
import { diskFirmwareStore } from '../src/firmware/storage.js';
import { wasOffered } from '../src/firmware/offers.js';
import type { RolloutView } from '../src/rollouts.js';
import { service as devices } from '../src/service.js';
import { REDIS_URL, connect, heartbeat, nextMessage, sleep, startFleet, waitFor, type Fleet } from './helpers.js';

const stateOf = (id: string, field: string): Promise<string | null> => f.redis.hget(`fleetwire:dstate:${id}`, field);

type Behaviour = 'succeed' | 'fail' | 'roll-back' | 'silent' | 'twice';
interface Dev { id: string; token: string; client: MqttClient | null; offers: { rollout: string; manifest: SignedManifest }[]; behaviour: Behaviour; seq: number }

const key = generateKeyPairSync('ed25519');
let f: Fleet;
let admin: string;
let operator: string;
let viewer: string;
const devs: Dev[] = [];

async function storeImage(version: string, extra: Record<string, unknown> = {}): Promise<string> {
  const img = Buffer.from(`image ${version} ${JSON.stringify(extra)}`);
  const sha256 = createHash('sha256').update(img).digest('hex');
  const manifest = signManifest({ version, size: img.length, sha256, url: `/v1/firmware/${sha256}`, chip: 'esp32', ...extra }, key.privateKey);
  const pending = await diskFirmwareStore(join(f.dataDir, 'firmware')).begin();
  await new Promise<void>((resolve, reject) => pending.stream.end(img, () => resolve()).on('error', reject));
  await pending.commit(sha256, manifest);
  return sha256;
}

async function online(d: Dev): Promise<void> {
  d.client = await connect(f.mqttUrl, d.token, d.id, { clean: false });
  d.client.on('message', (topic, payload) => {
    if (topic !== `devices/${d.id}/ota`) return;
    const offer = JSON.parse(payload.toString()) as Dev['offers'][number];
    d.offers.push(offer);
    void answer(d, offer);
  });
  await d.client.subscribeAsync(`devices/${d.id}/ota`, { qos: 1 });
  await waitFor(() => stateOf(d.id, 'online'), (v) => v === '1');
}

async function beat(d: Dev, fw: string): Promise<void> {
  await d.client!.publishAsync(`devices/${d.id}/heartbeat`, heartbeat(++d.seq, { fw }), { qos: 1 });
}

async function status(d: Dev, rollout: string, state: string, error?: string): Promise<void> {
  await d.client!.publishAsync(`devices/${d.id}/ota/status`, JSON.stringify({ rollout, state, progress: 0, ...(error ? { error } : {}) }), { qos: 1 });
}

async function answer(d: Dev, offer: Dev['offers'][number]): Promise<void> {
  if (d.behaviour === 'silent') return;
  const steps = d.behaviour === 'fail' ? ['offered', 'downloading', 'failed']
    : d.behaviour === 'roll-back' ? ['offered', 'downloading', 'verifying', 'rebooting', 'rolled-back']
      : ['offered', 'downloading', 'verifying', 'rebooting', 'success'];
  for (const s of steps) {
    await status(d, offer.rollout, s, s === 'failed' ? 'HTTP 500' : undefined);
    if (d.behaviour === 'twice') await status(d, offer.rollout, s); // at-least-once: a repeat
  }
  if (steps.at(-1) === 'success') await beat(d, offer.manifest.version);
}

/** A registered device with a chip capability, reporting `fw`; connected unless `offline`. */
async function device(id: string, o: { fw?: string; capabilities?: string[]; type?: string; behaviour?: Behaviour; offline?: boolean } = {}): Promise<Dev> {
  const meta = { type: o.type ?? 'rollout-sensor', capabilities: o.capabilities ?? ['chip:esp32'] };
  const { token } = await f.registerDevice(id, meta);
  const d: Dev = { id, token, client: null, offers: [], behaviour: o.behaviour ?? 'succeed', seq: 0 };
  devs.push(d);
  await online(d);
  if (o.fw !== null) {
    await beat(d, o.fw ?? '1.0.0');
    await waitFor(() => stateOf(id, 'fw'), (v) => v === (o.fw ?? '1.0.0'));
  }
  if (o.offline) {
    await d.client!.endAsync();
    d.client = null;
    await waitFor(() => stateOf(id, 'online'), (v) => v === '0');
  }
  return d;
}

const create = (body: Record<string, unknown>, token = operator) => f.api('POST', '/v1/rollouts', { token, body });
const view = async (id: string): Promise<RolloutView> => (await f.api('GET', `/v1/rollouts/${id}`, { token: viewer })).body as unknown as RolloutView;
const until = async (id: string, ok: (v: RolloutView) => boolean, ms = 15_000): Promise<RolloutView> => {
  let v = await view(id);
  const end = Date.now() + ms;
  while (!ok(v)) {
    if (Date.now() > end) throw new Error(`rollout never got there: ${JSON.stringify(v)}`);
    await sleep(100);
    v = await view(id);
  }
  return v;
};

beforeAll(async () => {
  f = await startFleet();
  admin = await f.tokenFor('admin');
  operator = await f.tokenFor('operator');
  viewer = await f.tokenFor('viewer');
}, 30_000);
afterAll(async () => {
  await Promise.all(devs.map((d) => d.client?.endAsync()));
  await f?.close();
});

describe('POST /v1/rollouts: refusals', () => {
  it('refuses a viewer (403), names the field of a bad request (400), 404 for an unknown image or rollout', async () => {
    const sha = await storeImage('2.0.0');
    await device('rv-ok-1');
    const base = { firmware: sha, selector: { ids: ['rv-ok-1'] } };
    expect((await create(base, viewer)).status).toBe(403);
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ ...base, selector: { ids: ['rv-ok-1'], type: 'x' } }, /selector/],
      [{ ...base, selector: {} }, /selector/],
      [{ ...base, waves: [{ percent: 50, hold_s: 0 }, { percent: 40, hold_s: 0 }] }, /waves\[1\]\.percent/],
      [{ ...base, waves: [{ percent: 50, hold_s: 0 }] }, /waves\[0\]\.percent/],
      [{ ...base, failure_threshold: { ratio: 2, min_sample: 1 } }, /ratio/],
      [{ ...base, rate_per_min: 0 }, /rate_per_min/],
      [{ ...base, colour: 'red' }, /colour/],
      [{ ...base, firmware: 'abc' }, /firmware/],
      [{ ...base, selector: { ids: ['rv-nobody'] } }, /selector\.ids/],
      [{ ...base, selector: { type: 'no-such-type' } }, /selector\.type/],
    ];
    for (const [body, field] of bad) {
      const r = await create(body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error!.message).toMatch(field);
    }
    const missing = await create({ ...base, firmware: 'f'.repeat(64) });
    expect(missing.status).toBe(404);
    expect((await f.api('GET', '/v1/rollouts/00000000-0000-4000-8000-000000000000', { token: viewer })).status).toBe(404);
    expect((await f.api('POST', '/v1/rollouts/00000000-0000-4000-8000-000000000000/pause', { token: operator })).status).toBe(404);
  });
});

describe('compatibility', () => {
  it('skips, with the reason, devices of an unknown or other chip, below min_version, on a newer version or already on it; offers the rest once', async () => {
    const sha = await storeImage('1.5.0', { min_version: '1.0.0' });
    await device('cp-good', { type: 'compat' });
    await device('cp-twice', { type: 'compat', behaviour: 'twice' });
    await device('cp-nochip', { type: 'compat', capabilities: [] });
    await device('cp-s3', { type: 'compat', capabilities: ['chip:esp32-s3'] });
    await device('cp-old', { type: 'compat', fw: '0.9.0' });
    await device('cp-newer', { type: 'compat', fw: '2.0.0' });
    await device('cp-same', { type: 'compat', fw: '1.5.0' });
    const r = await create({ firmware: sha, selector: { type: 'compat' }, rate_per_min: 6000, confirm_window_s: 30 });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const id = r.body.id as string;
    expect(r.body).toMatchObject({ firmware: { sha256: sha, version: '1.5.0', chip: 'esp32' }, actor: expect.stringMatching(/^user:/) });
    const skipped = (await f.api('GET', `/v1/rollouts/${id}/devices?state=skipped`, { token: viewer })).body.items as { device_id: string; reason: string }[];
    const why = Object.fromEntries(skipped.map((s) => [s.device_id, s.reason]));
    expect(why).toEqual({
      'cp-nochip': expect.stringMatching(/chip unknown/), 'cp-s3': expect.stringMatching(/esp32-s3/),
      'cp-old': expect.stringMatching(/at least 1\.0\.0/), 'cp-newer': expect.stringMatching(/downgrade/), 'cp-same': expect.stringMatching(/already runs/),
    });
    const done = await until(id, (v) => v.state === 'completed');
    // cp-twice reported every state twice: still one device.
    expect(done.counts).toMatchObject({ skipped: 5, succeeded: 2, offered: 0, pending: 0 });
    expect(done.counts_by_wave[0]).toMatchObject({ skipped: 5, succeeded: 2 });
    for (const id2 of ['cp-nochip', 'cp-s3', 'cp-old', 'cp-newer', 'cp-same']) {
      expect(devs.find((d) => d.id === id2)!.offers).toHaveLength(0);
      expect(await wasOffered(f.redis, id2, sha)).toBe(false);
    }
    expect(devs.find((d) => d.id === 'cp-good')!.offers).toHaveLength(1);
    expect(await wasOffered(f.redis, 'cp-good', sha)).toBe(true);
    const audit = await f.api('GET', `/v1/audit?type=rollout.created&subject=rollout:${id}`, { token: admin });
    expect(audit.body.records).toHaveLength(1);
    expect(await f.metric('fleetwire_device_rollouts_total', 'outcome="completed"')).toBeGreaterThanOrEqual(1);
    expect((await f.api('POST', `/v1/rollouts/${id}/resume`, { token: operator })).status).toBe(409);
    const listed = await f.api('GET', '/v1/rollouts?limit=50', { token: viewer });
    expect((listed.body.items as { id: string }[]).some((x) => x.id === id)).toBe(true);
  }, 30_000);
});

describe('compatibility: OTA partition size', () => {
  it('skips a device whose ota_partition_bytes is smaller than the image (both sizes in the reason) or unreadable; offers one big enough and one that never declared it', async () => {
    const sha = await storeImage('1.6.0');
    const size = Buffer.byteLength('image 1.6.0 {}'); // what storeImage signs as the manifest's size
    await device('pt-small', { type: 'partition', capabilities: ['chip:esp32', `ota_partition_bytes:${size - 1}`] });
    await device('pt-junk', { type: 'partition', capabilities: ['chip:esp32', 'ota_partition_bytes:1.5MB'] });
    await device('pt-exact', { type: 'partition', capabilities: ['chip:esp32', `ota_partition_bytes:${size}`] });
    await device('pt-big', { type: 'partition', capabilities: ['chip:esp32', 'ota_partition_bytes:1572864'] });
    await device('pt-unknown', { type: 'partition', capabilities: ['chip:esp32'] });
    const r = await create({ firmware: sha, selector: { type: 'partition' }, rate_per_min: 6000 });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const id = r.body.id as string;
    const skipped = (await f.api('GET', `/v1/rollouts/${id}/devices?state=skipped`, { token: viewer })).body.items as { device_id: string; reason: string }[];
    expect(Object.fromEntries(skipped.map((s) => [s.device_id, s.reason]))).toEqual({
      'pt-small': `image of ${size} bytes does not fit the ${size - 1}-byte OTA partition`,
      'pt-junk': expect.stringMatching(/ota_partition_bytes:1\.5MB is not a size in bytes/),
    });
    const done = await until(id, (v) => v.state === 'completed');
    expect(done.counts).toMatchObject({ skipped: 2, succeeded: 3 });
    for (const [dev, offers] of [['pt-small', 0], ['pt-junk', 0], ['pt-exact', 1], ['pt-big', 1], ['pt-unknown', 1]] as const) {
      expect(devs.find((d) => d.id === dev)!.offers, dev).toHaveLength(offers);
      expect(await wasOffered(f.redis, dev, sha), dev).toBe(offers === 1);
    }
  }, 30_000);
});

describe('waves, pause and resume', () => {
  it('advances a wave only after its hold; pause stops offers, resume goes on; 409 on a transition not allowed', async () => {
    const sha = await storeImage('3.0.0');
    for (let i = 0; i < 10; i++) await device(`wv-${i}`, { type: 'waves' });
    const r = await create({ firmware: sha, selector: { type: 'waves' }, waves: [{ percent: 20, hold_s: 1 }, { percent: 100, hold_s: 0 }], rate_per_min: 6000 });
    expect(r.status).toBe(201);
    const id = r.body.id as string;
    expect((r.body.waves as { devices: number }[]).map((w) => w.devices)).toEqual([2, 8]);
    const first = await until(id, (v) => v.counts_by_wave[0]!.succeeded === 2);
    const paused = await f.api('POST', `/v1/rollouts/${id}/pause`, { token: operator });
    expect(paused.status).toBe(200);
    expect(paused.body.state).toBe('paused');
    expect((await f.api('POST', `/v1/rollouts/${id}/pause`, { token: operator })).status).toBe(409);
    expect((await f.api('POST', `/v1/rollouts/${id}/resume`, { token: viewer })).status).toBe(403);
    await sleep(1800);
    const still = await view(id);
    expect(still.counts_by_wave[1]!.offered + still.counts_by_wave[1]!.succeeded + still.counts_by_wave[1]!.downloading).toBe(0);
    expect(devs.filter((d) => d.id.startsWith('wv-')).reduce((n, d) => n + d.offers.length, 0)).toBe(2);
    expect((await f.api('POST', `/v1/rollouts/${id}/resume`, { token: operator })).body.state).toBe('running');
    const done = await until(id, (v) => v.state === 'completed');
    expect(done.counts.succeeded).toBe(10);
    expect(done.waves[1]!.started_at! - done.waves[0]!.started_at!).toBeGreaterThanOrEqual(1000);
    expect(first.waves[0]!.started_at).not.toBeNull();
    expect((await f.api('POST', `/v1/rollouts/${id}/cancel`, { token: operator })).status).toBe(409);
  }, 30_000);
});

describe('failure threshold', () => {
  it('aborts when failures cross the ratio after min_sample: later waves are never offered, rolled-back counted', async () => {
    const sha = await storeImage('4.0.0');
    const behaviours: Behaviour[] = ['roll-back', 'fail', 'succeed', 'succeed', 'succeed', 'succeed'];
    for (const [i, b] of behaviours.entries()) await device(`ab-${i}`, { type: 'abort', behaviour: b });
    const before = await f.metric('fleetwire_device_rollouts_total', 'outcome="aborted"');
    const r = await create({
      firmware: sha, selector: { type: 'abort' }, waves: [{ percent: 50, hold_s: 0 }, { percent: 100, hold_s: 0 }],
      rate_per_min: 6000, failure_threshold: { ratio: 0.5, min_sample: 3 },
    });
    const id = r.body.id as string;
    const v = await until(id, (x) => x.state === 'aborted');
    expect(v.abort_reason).toMatch(/failure ratio/);
    expect(v.counts).toMatchObject({ rolled_back: 1, failed: 1, succeeded: 1, pending: 3 });
    expect(v.counts_by_wave[1]).toMatchObject({ pending: 3, offered: 0, succeeded: 0 });
    expect(v.waves[1]!.started_at).toBeNull();
    for (const d of devs.filter((x) => ['ab-3', 'ab-4', 'ab-5'].includes(x.id))) expect(d.offers).toHaveLength(0);
    expect(await f.metric('fleetwire_device_rollouts_total', 'outcome="aborted"')).toBe(before + 1);
    const audit = await f.api('GET', `/v1/audit?type=rollout.aborted&subject=rollout:${id}`, { token: admin });
    expect(audit.body.records).toHaveLength(1);
    const rolled = (await f.api('GET', `/v1/rollouts/${id}/devices?state=rolled_back`, { token: viewer })).body.items as { device_id: string }[];
    expect(rolled.map((x) => x.device_id)).toEqual(['ab-0']);
    // The abort is published, retained: a service that subscribes afterwards still hears it.
    const keys = await f.running.deps.keyRing();
    const watcher = await connect(f.mqttUrl, await signToken(keys.signer, { sub: 'rollout-watcher', typ: 'service', ttlSeconds: 600 }), 'service:rollout-watcher:1');
    const heard = nextMessage(watcher, `fleet/rollouts/${id}`);
    await watcher.subscribeAsync('fleet/rollouts/+', { qos: 1 });
    const change = JSON.parse((await heard).toString()) as Record<string, unknown>;
    expect(payloadValidator('rollout')(change)).toBe(true);
    expect(change).toMatchObject({ rollout: id, state: 'aborted', actor: 'system', reason: v.abort_reason });
    await watcher.endAsync();
  }, 30_000);
});

describe('presence and confirm windows', () => {
  it('offers a device that was offline when its wave started once it connects', async () => {
    const sha = await storeImage('5.0.0');
    await device('off-on', { type: 'offline' });
    const late = await device('off-late', { type: 'offline', offline: true });
    const r = await create({ firmware: sha, selector: { type: 'offline' }, rate_per_min: 6000 });
    const id = r.body.id as string;
    await until(id, (v) => v.counts.succeeded === 1);
    await sleep(800);
    expect((await view(id)).counts).toMatchObject({ pending: 1, succeeded: 1 });
    expect(late.offers).toHaveLength(0);
    await online(late);
    const done = await until(id, (v) => v.state === 'completed');
    expect(done.counts.succeeded).toBe(2);
    expect(late.offers).toHaveLength(1);
  }, 30_000);

  it('counts a device that never reports as timed_out, and one back on its old version as rolled_back, after confirm_window_s', async () => {
    const sha = await storeImage('6.0.0');
    await device('cw-silent', { type: 'confirm', behaviour: 'silent' });
    const back = await device('cw-back', { type: 'confirm', behaviour: 'silent' });
    const r = await create({ firmware: sha, selector: { type: 'confirm' }, rate_per_min: 6000, confirm_window_s: 2, failure_threshold: { ratio: 1, min_sample: 1 } });
    const id = r.body.id as string;
    await until(id, (v) => v.counts.offered === 2);
    await beat(back, '1.0.0');
    const done = await until(id, (v) => v.state === 'completed');
    expect(done.counts).toMatchObject({ timed_out: 1, rolled_back: 1, offered: 0 });
    const items = (await f.api('GET', `/v1/rollouts/${id}/devices`, { token: viewer })).body.items as { device_id: string; state: string }[];
    expect(Object.fromEntries(items.map((x) => [x.device_id, x.state]))).toEqual({ 'cw-back': 'rolled_back', 'cw-silent': 'timed_out' });
    expect(await f.metric('fleetwire_device_rollout_devices', 'state="succeeded"')).toBeGreaterThanOrEqual(0);
  }, 30_000);
});

describe('a rollout whose stepping node stops', () => {
  it('is carried on by another device-service node on the same Redis: the rest are offered, each device once', async () => {
    const sha = await storeImage('7.0.0');
    const ids = ['ls-0', 'ls-1', 'ls-2', 'ls-3', 'ls-4', 'ls-5'];
    for (const id of ids) await device(id, { type: 'lease' });
    const node2 = await startServices([devices], {
      REDIS_URL, PORT: '0', HOST: '127.0.0.1', FLEETWIRE_DATA_DIR: f.dataDir, DEVICE_BROKER_URL: f.mqttUrl,
    }, { version: 'test', log: createLogger({ level: 'silent', name: 'node-2' }) });
    let stopped = false;
    try {
      // Created on node 2, which holds the lease from creation: the fleet's own node does not step it.
      const res = await fetch(`http://127.0.0.1:${node2.port}/v1/rollouts`, {
        method: 'POST', headers: { authorization: `Bearer ${operator}`, 'content-type': 'application/json' },
        body: JSON.stringify({ firmware: sha, selector: { type: 'lease' }, rate_per_min: 60 }), // one offer a second
      });
      expect(res.status).toBe(201);
      const { id } = await res.json() as { id: string };
      const node2Id = await f.redis.hget(redisKeys.rollout(id), 'sender');
      expect(node2Id).toBeTruthy();
      await until(id, (v) => v.counts.succeeded >= 2);
      expect(await f.redis.hget(redisKeys.rollout(id), 'sender')).toBe(node2Id);
      await node2.stop(); // drains: node 2 stops stepping and gives the lease back
      stopped = true;
      const midway = await view(id);
      expect(midway.state).toBe('running');
      expect(midway.counts.pending).toBeGreaterThan(0);

      // Given back at once, not left to run out (LEASE_MS 10 s): the rest (≤ 4 at one a second) go well before.
      const done = await until(id, (v) => v.state === 'completed', 9000);
      expect(done.counts).toMatchObject({ succeeded: 6, pending: 0, offered: 0 });
      expect(await f.redis.hget(redisKeys.rollout(id), 'sender')).not.toBe(node2Id); // the fleet's node took it
      for (const d of devs.filter((x) => ids.includes(x.id))) expect(d.offers, d.id).toHaveLength(1);
    } finally {
      if (!stopped) await node2.stop();
    }
  }, 40_000);
});
