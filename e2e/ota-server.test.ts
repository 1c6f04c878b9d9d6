/**
 * OTA from the fleet's own firmware store, end to end: an image uploaded with
 * POST /v1/firmware and offered with the relative url `/v1/firmware/<sha256>` is
 * downloaded by the simulated device from the server it is connected to, with its own
 * device token, and installed; a device offered an image that was not recorded as
 * offered to it gets 403 and reports the update failed, keeping its version.
 */
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { signManifest, type SignedManifest } from '@fleetwire/common';
// The rollout engine records each offer this way before publishing it.
import { recordOffer } from '../device-service/src/firmware/offers.js';
import { startDevice, startStack, until, type Sim, type Stack } from './stack.js';

interface OtaStatus { rollout: string; state: string; progress: number; error?: string }

const fleetKey = generateKeyPairSync('ed25519');
const rawPublicKey = (key: KeyObject): Buffer => Buffer.from(key.export({ format: 'jwk' }).x!, 'base64url');

let stack: Stack;
let service: MqttClient;
let admin: string;
const sims: Sim[] = [];
/** Every ota/status the devices published, by device. */
const statuses = new Map<string, OtaStatus[]>();

function image(seed: number, size = 200_000): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 17 + seed) & 0xff;
  return b;
}

function manifestFor(version: string, img: Buffer): SignedManifest {
  const sha256 = createHash('sha256').update(img).digest('hex');
  return signManifest({ version, size: img.length, sha256, url: `/v1/firmware/${sha256}`, chip: 'esp32' }, fleetKey.privateKey);
}

/** POST /v1/firmware as the admin: multipart (FormData, serialised by Response) over the stack's private CA. */
async function upload(manifest: SignedManifest, img: Buffer): Promise<{ status: number; body: { sha256?: string } }> {
  const form = new FormData();
  form.append('manifest', JSON.stringify(manifest));
  form.append('image', new Blob([img], { type: 'application/octet-stream' }), 'fw.bin');
  const encoded = new Response(form);
  const body = Buffer.from(await encoded.arrayBuffer());
  return new Promise((resolve, reject) => {
    const req = https.request(`${stack.url}/v1/firmware`, {
      method: 'POST', ca: stack.ca,
      headers: { authorization: `Bearer ${admin}`, 'content-type': encoded.headers.get('content-type')!, 'content-length': body.length },
    }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) as { sha256?: string } : {} }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const publishOffer = (device: string, rollout: string, manifest: SignedManifest): Promise<unknown> =>
  service.publishAsync(`devices/${device}/ota`, JSON.stringify({ rollout, manifest }), { qos: 1 });
const statesOf = (device: string, rollout: string): OtaStatus[] => (statuses.get(device) ?? []).filter((s) => s.rollout === rollout);
const finalStatus = async (device: string, rollout: string): Promise<OtaStatus> =>
  (await until(() => statesOf(device, rollout), (s) => s.some((x) => ['success', 'failed', 'refused', 'rolled-back'].includes(x.state)), 25_000)).at(-1)!;
const fwOf = async (device: string): Promise<unknown> => (await stack.api('GET', `/v1/devices/${device}/state`, undefined, admin)).body.fw;

beforeAll(async () => {
  stack = await startStack({ OTA_PUBLIC_KEYS: rawPublicKey(fleetKey.publicKey).toString('base64url') });
  admin = await stack.admin();
  service = await stack.serviceClient();
  await service.subscribeAsync('devices/+/ota/status', { qos: 1 });
  service.on('message', (topic, payload) => {
    const device = topic.split('/')[1]!;
    statuses.set(device, [...(statuses.get(device) ?? []), JSON.parse(payload.toString()) as OtaStatus]);
  });
  const args = ['--heartbeat-s', '5', '--fw-version', '1.0.0', '--chip', 'esp32', '--ota-public-key', rawPublicKey(fleetKey.publicKey).toString('hex')];
  sims.push(...await Promise.all([startDevice(stack, 'fws-dev-1', args), startDevice(stack, 'fws-dev-2', args)]));
}, 40_000);

afterAll(async () => {
  await service?.endAsync();
  await Promise.all(sims.map((s) => s.stop()));
  await stack?.stop();
});

describe('OTA from the server\'s firmware store (relative manifest url, device token)', () => {
  it('installs an uploaded image offered to the device, fetched from its own server with its token', async () => {
    const img = image(1);
    const manifest = manifestFor('1.1.0', img);
    const stored = await upload(manifest, img);
    expect(stored.status).toBe(201);
    expect(stored.body.sha256).toBe(manifest.sha256);

    await recordOffer(stack.redis, 'fws-dev-1', manifest.sha256, 600);
    await publishOffer('fws-dev-1', 'r-store', manifest);
    const last = await finalStatus('fws-dev-1', 'r-store');
    expect(last, JSON.stringify(statesOf('fws-dev-1', 'r-store'))).toMatchObject({ state: 'success' });
    expect(statesOf('fws-dev-1', 'r-store').map((s) => s.state)).toEqual(expect.arrayContaining(['offered', 'downloading', 'verifying', 'rebooting', 'success']));
    await until(() => fwOf('fws-dev-1'), (fw) => fw === '1.1.0');
  }, 30_000);

  it('refuses (403) an image not recorded as offered to the device: the update fails and the device keeps its version', async () => {
    const img = image(2);
    const manifest = manifestFor('1.2.0', img);
    expect((await upload(manifest, img)).status).toBe(201);
    // Recorded for the other device only: fws-dev-2 may not download it.
    await recordOffer(stack.redis, 'fws-dev-1', manifest.sha256, 600);
    await publishOffer('fws-dev-2', 'r-not-offered', manifest);
    const last = await finalStatus('fws-dev-2', 'r-not-offered');
    expect(last.state).toBe('failed');
    expect(last.error).toMatch(/HTTP 403/);
    expect(statesOf('fws-dev-2', 'r-not-offered').filter((s) => s.state === 'failed')).toHaveLength(1);
    await until(() => fwOf('fws-dev-2'), (fw) => fw === '1.0.0');
  }, 30_000);
});
