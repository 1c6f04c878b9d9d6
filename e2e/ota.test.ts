/**
 * The device side of OTA, end to end: a signed offer published by a service reaches a
 * simulated device, which downloads the image over HTTPS from a test server (resuming
 * with Range after a cut), verifies it, "reboots" into it and reports on ota/status;
 * tampered images and manifests are rejected, and a boot failure is rolled back.
 */
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { signManifest } from '@fleetwire/common';
import { startDevice, startStack, until, type Sim, type Stack } from './stack.js';

interface OtaStatus { rollout: string; state: string; progress: number; error?: string }

const fleetKey = generateKeyPairSync('ed25519');
const strangerKey = generateKeyPairSync('ed25519');
const publicKeyHex = Buffer.from(fleetKey.publicKey.export({ format: 'jwk' }).x!, 'base64url').toString('hex');

function offer(rollout: string, version: string, image: Buffer, url: string, key: KeyObject = fleetKey.privateKey): string {
  const manifest = { version, size: image.length, sha256: createHash('sha256').update(image).digest('hex'), url, chip: 'esp32' };
  return JSON.stringify({ rollout, manifest: signManifest(manifest, key) });
}

let stack: Stack;
let server: https.Server;
let imageBase: string;
const images = new Map<string, Buffer>();
const requests: { path: string; range?: string }[] = [];
/** Paths whose first response is cut after half the bytes. */
const cutOnce = new Set<string>();
/** Every ota/status the device published, as a service subscribed to it sees them. */
const statuses: OtaStatus[] = [];
let sim: Sim;
let service: MqttClient;
let admin: string;

beforeAll(async () => {
  stack = await startStack();
  const pki = join(stack.dataDir, 'pki');
  server = https.createServer({ cert: await readFile(join(pki, 'server-cert.pem')), key: await readFile(join(pki, 'server-key.pem')) }, (req, res) => {
    const path = req.url ?? '';
    requests.push({ path, ...(req.headers.range ? { range: req.headers.range } : {}) });
    const body = images.get(path);
    if (!body) return void res.writeHead(404).end();
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const from = m ? Number(m[1]) : 0;
    const part = body.subarray(from);
    res.writeHead(m ? 206 : 200, {
      'content-length': part.length, 'accept-ranges': 'bytes',
      ...(m ? { 'content-range': `bytes ${from}-${body.length - 1}/${body.length}` } : {}),
    });
    if (cutOnce.delete(path)) {
      res.write(part.subarray(0, Math.floor(part.length / 2)));
      setTimeout(() => res.destroy(), 50); // the connection drops mid-image
      return;
    }
    res.end(part);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  imageBase = `https://localhost:${(server.address() as AddressInfo).port}`;

  sim = await startDevice(stack, 'ota-dev-1', ['--heartbeat-s', '5', '--fw-version', '1.0.0', '--chip', 'esp32',
    '--ota-public-key', publicKeyHex, '--fail-boot-version', '1.3.0']);
  service = await stack.serviceClient();
  await service.subscribeAsync('devices/ota-dev-1/ota/status', { qos: 1 });
  service.on('message', (_topic, payload) => statuses.push(JSON.parse(payload.toString()) as OtaStatus));
  admin = await stack.admin();
}, 60_000);

afterAll(async () => {
  await service?.endAsync();
  await sim?.stop();
  server?.close();
  await stack?.stop();
});

const statesOf = (rollout: string): string[] => statuses.filter((s) => s.rollout === rollout).map((s) => s.state);
const finalState = (rollout: string, states: string[], timeoutMs = 30_000): Promise<string[]> =>
  until(() => statesOf(rollout), (s) => s.some((x) => states.includes(x)), timeoutMs);
/** The firmware version in the device's state, as its heartbeats set it (device service: GET /v1/devices/{id}/state). */
const latestFw = async (): Promise<unknown> => (await stack.api('GET', '/v1/devices/ota-dev-1/state', undefined, admin)).body.fw;
const publishOffer = (payload: string): Promise<unknown> => service.publishAsync('devices/ota-dev-1/ota', payload, { qos: 1 });

function image(seed: number, size = 300_000): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe('OTA on the device side, against the real stack', () => {
  it('rejects an image whose bytes do not match the signed SHA-256, and keeps running the old version', async () => {
    const good = image(1);
    images.set('/fw-1.1.0-corrupt.bin', Buffer.concat([good.subarray(0, 1000), Buffer.from('tampered'), good.subarray(1008)]));
    await publishOffer(offer('r-corrupt', '1.1.0', good, `${imageBase}/fw-1.1.0-corrupt.bin`));
    const states = await finalState('r-corrupt', ['failed', 'success']);
    expect(states.at(-1)).toBe('failed');
    expect(states).toContain('downloading');
    expect(states).not.toContain('rebooting');
    await until(latestFw, (fw) => fw === '1.0.0');
  });

  it('refuses a manifest signed with another key, and one whose fields were changed after signing', async () => {
    const img = image(2);
    images.set('/fw-1.1.0.bin', img);
    await publishOffer(offer('r-stranger', '1.1.0', img, `${imageBase}/fw-1.1.0.bin`, strangerKey.privateKey));
    const tampered = JSON.parse(offer('r-tampered', '1.1.0', img, `${imageBase}/fw-1.1.0.bin`)) as { manifest: { url: string } };
    tampered.manifest.url = `${imageBase}/evil.bin`;
    await publishOffer(JSON.stringify(tampered));
    for (const rollout of ['r-stranger', 'r-tampered']) {
      const states = await finalState(rollout, ['refused', 'success', 'failed']);
      expect(states).toEqual(['refused']);
    }
    expect(requests.some((r) => r.path === '/evil.bin')).toBe(false);
  });

  it('installs a good image after a cut download (Range resume), reboots into it and reports success', async () => {
    const img = image(3);
    images.set('/fw-1.2.0.bin', img);
    cutOnce.add('/fw-1.2.0.bin');
    await publishOffer(offer('r-good', '1.2.0', img, `${imageBase}/fw-1.2.0.bin`));
    const states = await finalState('r-good', ['success', 'failed', 'rolled-back'], 60_000);
    expect(states.at(-1)).toBe('success');
    expect(states).toEqual(expect.arrayContaining(['offered', 'downloading', 'verifying', 'rebooting', 'success']));
    const ranges = requests.filter((r) => r.path === '/fw-1.2.0.bin');
    expect(ranges.length).toBeGreaterThanOrEqual(2);
    expect(ranges.at(-1)!.range).toMatch(/^bytes=\d+-$/);
    await until(latestFw, (fw) => fw === '1.2.0');
  }, 90_000);

  it('refuses a downgrade', async () => {
    const img = image(4);
    images.set('/fw-1.1.5.bin', img);
    await publishOffer(offer('r-downgrade', '1.1.5', img, `${imageBase}/fw-1.1.5.bin`));
    expect(await finalState('r-downgrade', ['refused', 'success'])).toEqual(['refused']);
  });

  it('reports rolled-back when the new image fails to boot, and runs the previous version again', async () => {
    const img = image(5);
    images.set('/fw-1.3.0.bin', img);
    await publishOffer(offer('r-bad-boot', '1.3.0', img, `${imageBase}/fw-1.3.0.bin`));
    const states = await finalState('r-bad-boot', ['rolled-back', 'success', 'failed'], 60_000);
    expect(states.at(-1)).toBe('rolled-back');
    expect(states).toContain('rebooting');
    const last = statuses.filter((s) => s.rollout === 'r-bad-boot').at(-1)!;
    expect(last.error).toContain('1.3.0');
    await until(latestFw, (fw) => fw === '1.2.0', 30_000);
  }, 90_000);
});
