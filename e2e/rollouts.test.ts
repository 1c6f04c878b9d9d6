/**
 * OTA rollouts end to end: `fleetwire up` over TLS with a trusted OTA key, simulated devices
 * (fleetwire-sim, --keys-file) that verify, download from the server with their own token,
 * reboot and confirm or roll back. A staged rollout over 20 devices (10% → 50% → 100%)
 * whose waves advance after their hold until all succeed; then a rollout whose first wave
 * runs on devices that cannot boot the new version (--fail-boot-version): they roll back,
 * the failure threshold aborts it, and its later wave is never offered.
 */
import { spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import https from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signManifest, type SignedManifest } from '@fleetwire/common';
import { CLI, startSim, startStack, until, type Sim, type Stack } from './stack.js';

interface View {
  id: string; state: string; abort_reason: string | null;
  waves: { percent: number; devices: number; started_at: number | null }[];
  counts: Record<string, number>; counts_by_wave: Record<string, number>[];
}

const fleetKey = generateKeyPairSync('ed25519');
const rawPublicKey = (key: KeyObject): Buffer => Buffer.from(key.export({ format: 'jwk' }).x!, 'base64url');
const DEVICES = Array.from({ length: 20 }, (_, i) => `ro-sim-${String(i + 1).padStart(2, '0')}`);
const FAILING = ['ro-bad-1', 'ro-bad-2', 'ro-bad-3', 'ro-bad-4'];
let stack: Stack;
let admin: string;
const sims: Sim[] = [];

function image(seed: number, size = 64_000): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** Signs and uploads (POST /v1/firmware, multipart) an image; its sha256. */
async function upload(version: string, img: Buffer): Promise<string> {
  const sha256 = createHash('sha256').update(img).digest('hex');
  const manifest: SignedManifest = signManifest({ version, size: img.length, sha256, url: `/v1/firmware/${sha256}`, chip: 'esp32' }, fleetKey.privateKey);
  const form = new FormData();
  form.append('manifest', JSON.stringify(manifest));
  form.append('image', new Blob([img], { type: 'application/octet-stream' }), 'fw.bin');
  const encoded = new Response(form);
  const body = Buffer.from(await encoded.arrayBuffer());
  const status = await new Promise<number>((resolve, reject) => {
    const req = https.request(`${stack.url}/v1/firmware`, {
      method: 'POST', ca: stack.ca,
      headers: { authorization: `Bearer ${admin}`, 'content-type': encoded.headers.get('content-type')!, 'content-length': body.length },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
  expect(status).toBe(201);
  return sha256;
}

/** Registers the devices with their chip, and runs them in one simulator process. */
async function fleet(ids: string[], file: string, extra: string[]): Promise<void> {
  const keys: string[] = [];
  for (const id of ids) {
    keys.push(`${id} ${await stack.registerDevice(id)}`);
    expect((await stack.api('PATCH', `/v1/devices/${id}`, { capabilities: ['chip:esp32'] }, admin)).status).toBe(200);
  }
  const keysFile = join(stack.dataDir, file);
  await writeFile(keysFile, `${keys.join('\n')}\n`, { mode: 0o600 });
  const sim = startSim(stack, [
    '--keys-file', keysFile, '--heartbeat-s', '5', '--telemetry-s', '0', '--fw-version', '1.0.0', '--chip', 'esp32',
    '--ota-public-key', rawPublicKey(fleetKey.publicKey).toString('hex'), ...extra,
  ]);
  sims.push(sim);
  await sim.waitFor(new RegExp(`stats devices=${ids.length} connected=${ids.length} `), 30_000);
  // The running version each reports is what compatibility is checked against.
  await until(() => Promise.all(ids.map((id) => stack.redis.hget(`fleetwire:dstate:${id}`, 'fw'))), (fws) => fws.every((fw) => fw === '1.0.0'));
}

/** `fleetwire rollouts watch ID`, not on a terminal (a line per change), to its exit. */
function watch(id: string): Promise<{ code: number | null; stdout: string }> {
  const child = spawn(process.execPath, [CLI, 'rollouts', 'watch', id], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, FLEETWIRE_URL: stack.url, FLEETWIRE_TOKEN: admin, NODE_EXTRA_CA_CERTS: stack.caFile },
  });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stdout += d.toString(); });
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout })));
}

const view = async (id: string): Promise<View> => (await stack.api('GET', `/v1/rollouts/${id}`, undefined, admin)).body as unknown as View;

beforeAll(async () => {
  stack = await startStack({ OTA_PUBLIC_KEYS: rawPublicKey(fleetKey.publicKey).toString('base64url') });
  admin = await stack.admin();
  await fleet(DEVICES, 'ok-keys.txt', []);
  await fleet(FAILING, 'bad-keys.txt', ['--fail-boot-version', '2.0.0']);
}, 60_000);
afterAll(async () => {
  await Promise.all(sims.map((s) => s.stop()));
  await stack?.stop();
});

describe('rollouts with simulated devices', () => {
  it('stages 10% → 50% → 100% over 20 devices: each wave starts after the previous one\'s hold, all succeed', async () => {
    const sha = await upload('1.1.0', image(1));
    const created = await stack.api('POST', '/v1/rollouts', {
      firmware: sha, selector: { ids: DEVICES }, rate_per_min: 1200, confirm_window_s: 60,
      waves: [{ percent: 10, hold_s: 1 }, { percent: 50, hold_s: 1 }, { percent: 100, hold_s: 0 }],
    }, admin);
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    expect((created.body.waves as View['waves']).map((w) => w.devices)).toEqual([2, 8, 10]);
    // An operator watches it from the shell: the CLI against the real API, until it ends.
    const watched = watch(id);
    const done = await until(() => view(id), (v) => v.state === 'completed' || v.state === 'aborted', 40_000);
    const { code, stdout } = await watched;
    expect(code, stdout).toBe(0);
    expect(stdout).toMatch(/^completed wave 3\/3 \(100%\) succeeded 20 failed 0 /m);
    expect(done.state, JSON.stringify(done)).toBe('completed');
    expect(done.counts).toMatchObject({ succeeded: 20, failed: 0, rolled_back: 0, timed_out: 0, pending: 0 });
    expect(done.counts_by_wave.map((c) => c.succeeded)).toEqual([2, 8, 10]);
    const starts = done.waves.map((w) => w.started_at!);
    expect(starts[1]! - starts[0]!).toBeGreaterThanOrEqual(1000);
    expect(starts[2]! - starts[1]!).toBeGreaterThanOrEqual(1000);
    await until(() => Promise.all(DEVICES.map((d) => stack.redis.hget(`fleetwire:dstate:${d}`, 'fw'))), (fws) => fws.every((fw) => fw === '1.1.0'));
  }, 50_000);

  it('aborts when the first wave\'s devices roll back: rolled_back counted, the later wave never offered', async () => {
    const sha = await upload('2.0.0', image(2));
    const targets = [...FAILING, ...DEVICES.slice(0, 4)]; // sorted: the failing ones make the first wave
    const created = await stack.api('POST', '/v1/rollouts', {
      firmware: sha, selector: { ids: targets }, rate_per_min: 1200, confirm_window_s: 60,
      waves: [{ percent: 50, hold_s: 0 }, { percent: 100, hold_s: 0 }], failure_threshold: { ratio: 0.5, min_sample: 3 },
    }, admin);
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    const v = await until(() => view(id), (x) => x.state !== 'running', 40_000);
    expect(v.state, JSON.stringify(v)).toBe('aborted');
    expect(v.abort_reason).toMatch(/failure ratio/);
    expect(v.counts_by_wave[0]!.rolled_back).toBeGreaterThanOrEqual(3);
    expect(v.counts_by_wave[1]).toMatchObject({ pending: 4, offered: 0, downloading: 0, succeeded: 0 });
    expect(v.waves[1]!.started_at).toBeNull();
    for (const d of DEVICES.slice(0, 4)) expect(await stack.redis.hget(`fleetwire:dstate:${d}`, 'fw')).toBe('1.1.0');
    for (const d of FAILING) expect(await stack.redis.hget(`fleetwire:dstate:${d}`, 'fw')).toBe('1.0.0');
  }, 50_000);
});
