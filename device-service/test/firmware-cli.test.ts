/**
 * `fleetwire firmware keygen → sign → upload` as an operator runs them (the built CLI,
 * spawned; `make build` first), against a running fleet that trusts the generated key.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestSigner, otaPublicKey, type SignedManifest } from '@fleetwire/common';
import { REDIS_URL, startFleet, type Fleet } from './helpers.js';

const CLI = fileURLToPath(new URL('../../cli/dist/main.js', import.meta.url));

let dir: string;
let f: Fleet | undefined;

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'firmware', ...args], { env: { PATH: process.env.PATH, REDIS_URL, LOG_LEVEL: 'warn', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fw-cli-'));
});

afterAll(async () => {
  await f?.close();
});

describe('fleetwire firmware', () => {
  it('keygen → sign → upload: the server trusting the printed key stores the image, and serves the same bytes', async () => {
    const keyFile = join(dir, 'ota.key');
    const keygen = await cli(['keygen', '--out', keyFile]);
    expect(keygen.code).toBe(0);
    const publicKey = keygen.stdout.trim();
    expect(publicKey).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
    expect(await readFile(keyFile, 'utf8')).toContain('BEGIN PRIVATE KEY');

    // Never overwrites a key.
    const again = await cli(['keygen', '--out', keyFile]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain('not overwriting');

    const imageFile = join(dir, 'app.bin');
    const image = randomBytes(50_000);
    await writeFile(imageFile, image);
    const signed = await cli(['sign', '--key', keyFile, '--image', imageFile, '--version', '1.4.0', '--chip', 'esp32', '--min-version', '1.2.0']);
    expect(signed.stderr).toBe('');
    expect(signed.code).toBe(0);
    const manifest = JSON.parse(signed.stdout) as SignedManifest;
    const sha256 = createHash('sha256').update(image).digest('hex');
    expect(manifest).toEqual({
      version: '1.4.0', size: image.length, sha256, url: `/v1/firmware/${sha256}`, chip: 'esp32', min_version: '1.2.0', sig: expect.stringMatching(/^[A-Za-z0-9+/]{86}==$/),
    });
    expect(manifestSigner(manifest, [otaPublicKey(publicKey)])).toBe(0);
    const manifestFile = join(dir, 'manifest.json');
    await writeFile(manifestFile, signed.stdout);

    f = await startFleet({ OTA_PUBLIC_KEYS: publicKey });
    const admin = await f.tokenFor('admin');
    const env = { FLEETWIRE_URL: f.url, FLEETWIRE_TOKEN: admin };
    const uploaded = await cli(['upload', '--manifest', manifestFile, '--image', imageFile], env);
    expect(uploaded.stderr).toBe('');
    expect(uploaded.code).toBe(0);
    expect(uploaded.stdout).toBe(`stored ${sha256} (version 1.4.0)\n`);
    const repeated = await cli(['upload', '--manifest', manifestFile, '--image', imageFile], env);
    expect(repeated.stdout).toBe(`already stored ${sha256} (version 1.4.0)\n`);

    const res = await fetch(`${f.url}/v1/firmware/${sha256}`, { headers: { authorization: `Bearer ${admin}` } });
    expect(Buffer.from(await res.arrayBuffer()).equals(image)).toBe(true);

    // An image changed after signing is refused, with the server's reason.
    const tamperedFile = join(dir, 'tampered.bin');
    const tampered = Buffer.from(image);
    tampered[0] = tampered[0]! ^ 0xff;
    await writeFile(tamperedFile, tampered);
    const refused = await cli(['upload', '--manifest', manifestFile, '--image', tamperedFile], env);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('FIRMWARE_IMAGE_MISMATCH');

    // A viewer's token is refused.
    const viewer = await cli(['upload', '--manifest', manifestFile, '--image', imageFile], { ...env, FLEETWIRE_TOKEN: await f.tokenFor('viewer') });
    expect(viewer.code).not.toBe(0);
    expect(viewer.stderr).toContain('AUTH_FORBIDDEN');
  });

  it('sign takes --url for an absolute image address', async () => {
    const keyFile = join(dir, 'other.key');
    expect((await cli(['keygen', '--out', keyFile])).code).toBe(0);
    const imageFile = join(dir, 'small.bin');
    await writeFile(imageFile, randomBytes(100));
    const signed = await cli(['sign', '--key', keyFile, '--image', imageFile, '--version', '2.0.0', '--url', 'https://fw.example.com/app.bin']);
    expect(signed.code).toBe(0);
    const manifest = JSON.parse(signed.stdout) as SignedManifest;
    expect(manifest.url).toBe('https://fw.example.com/app.bin');
    expect(manifest.chip).toBeUndefined();
    const missing = await cli(['sign', '--key', keyFile, '--image', imageFile]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('--version is required');
  });

  it('sign refuses an image over --max-size (the target partition) and signs one that fits', async () => {
    const keyFile = join(dir, 'max.key');
    expect((await cli(['keygen', '--out', keyFile])).code).toBe(0);
    const imageFile = join(dir, 'hundred.bin');
    await writeFile(imageFile, randomBytes(100));
    const over = await cli(['sign', '--key', keyFile, '--image', imageFile, '--version', '3.0.0', '--max-size', '99']);
    expect(over.code).not.toBe(0);
    expect(over.stderr).toContain('is 100 bytes, over --max-size 99: not signed');
    expect(over.stdout).toBe('');
    const fits = await cli(['sign', '--key', keyFile, '--image', imageFile, '--version', '3.0.0', '--max-size', '100']);
    expect(fits.code).toBe(0);
    expect((JSON.parse(fits.stdout) as SignedManifest).size).toBe(100);
    const bad = await cli(['sign', '--key', keyFile, '--image', imageFile, '--version', '3.0.0', '--max-size', 'big']);
    expect(bad.stderr).toContain('--max-size takes a whole number of bytes, not "big"');
  });
});
