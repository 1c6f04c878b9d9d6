/**
 * Firmware images over the real API: signed uploads (multipart, streamed, checked against
 * the manifest and the trusted keys), refusals that leave nothing on disk, downloads with
 * ETag/Range/If-Range, and who may download what (devices: only images they were offered).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestSigner, otaPublicKeyText, signManifest, type SignedManifest } from '@fleetwire/common';
import { loadDeviceServiceConfig } from '../src/config.js';
import { recordOffer } from '../src/firmware/offers.js';
import { startFleet, type Fleet } from './helpers.js';

const MAX = 64 * 1024;
const fleetKey = generateKeyPairSync('ed25519');
const strangerKey = generateKeyPairSync('ed25519');
/** Trusted too: OTA_PUBLIC_KEYS is a list. */
const secondKey = generateKeyPairSync('ed25519');

let f: Fleet;
let admin: string;

function manifestFor(image: Buffer, version: string, extra: Record<string, unknown> = {}, key = fleetKey.privateKey): SignedManifest {
  const sha256 = createHash('sha256').update(image).digest('hex');
  return signManifest({ version, size: image.length, sha256, url: `/v1/firmware/${sha256}`, chip: 'esp32', ...extra }, key);
}

interface Reply { status: number; headers: Headers; body: Record<string, unknown> & { error?: { code: string; message: string } } }

async function upload(parts: [string, string | Buffer][], token = admin): Promise<Reply> {
  const form = new FormData();
  for (const [name, value] of parts) {
    if (typeof value === 'string') form.append(name, value);
    else form.append(name, new Blob([value], { type: 'application/octet-stream' }), 'app.bin');
  }
  const res = await fetch(`${f.url}/v1/firmware`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: form });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) as Reply['body'] : {} };
}

const firmwareDir = () => join(f.dataDir, 'firmware');
/** Everything under the firmware folder, pending uploads included. */
async function filesOnDisk(): Promise<string[]> {
  const top = (await readdir(firmwareDir())).filter((n) => n !== '.incoming');
  const incoming = (await readdir(join(firmwareDir(), '.incoming'))).map((n) => `.incoming/${n}`);
  return [...top, ...incoming].sort();
}

async function download(sha: string, token: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; bytes: Buffer }> {
  const res = await fetch(`${f.url}/v1/firmware/${sha}`, { headers: { authorization: `Bearer ${token}`, ...headers } });
  return { status: res.status, headers: res.headers, bytes: Buffer.from(await res.arrayBuffer()) };
}

const image = randomBytes(40_000);
const good = manifestFor(image, '1.2.0', { min_version: '1.0.0' });

beforeAll(async () => {
  f = await startFleet({ OTA_PUBLIC_KEYS: `${otaPublicKeyText(secondKey.publicKey)}, ${otaPublicKeyText(fleetKey.publicKey)}`, OTA_MAX_IMAGE_BYTES: String(MAX) });
  admin = await f.tokenFor('admin');
});

afterAll(async () => {
  await f?.close();
});

describe('uploads', () => {
  it('stores a signed image content-addressed, answers 201 with its sha256 and manifest, and lists it', async () => {
    const res = await upload([['manifest', JSON.stringify(good)], ['image', image]]);
    expect(res.status).toBe(201);
    expect(res.body).toEqual({ sha256: good.sha256, manifest: good });
    expect(await filesOnDisk()).toEqual([good.sha256, `${good.sha256}.json`]);

    const operator = await f.tokenFor('operator');
    const list = await f.api('GET', '/v1/firmware', { token: operator });
    expect(list.status).toBe(200);
    expect(list.body.images).toEqual([{ sha256: good.sha256, size: image.length, manifest: good, uploaded_at: expect.any(Number) }]);

    const audit = await f.api('GET', `/v1/audit?type=firmware.uploaded&subject=firmware:${good.sha256}`, { token: admin });
    expect((audit.body.records as unknown[]).length).toBe(1);
  });

  it('answers 200 with the stored manifest when the same image is uploaded again, and 409 for the same image with another manifest', async () => {
    const again = await upload([['manifest', JSON.stringify(good)], ['image', image]]);
    expect(again.status).toBe(200);
    expect(again.body).toEqual({ sha256: good.sha256, manifest: good });
    const other = await upload([['manifest', JSON.stringify(manifestFor(image, '9.9.9'))], ['image', image]]);
    expect(other.status).toBe(409);
    expect(other.body.error?.code).toBe('FIRMWARE_CONFLICT');
    expect(await filesOnDisk()).toEqual([good.sha256, `${good.sha256}.json`]);
  });

  it('takes the manifest as a file part too (curl -F manifest=@manifest.json), signed by any trusted key', async () => {
    const img = randomBytes(1000);
    const m = manifestFor(img, '1.3.0', {}, secondKey.privateKey);
    const res = await upload([['manifest', Buffer.from(JSON.stringify(m))], ['image', img]]);
    expect(res.status).toBe(201);
    expect(res.body.sha256).toBe(m.sha256);
  });

  describe('refusals leave nothing on disk', () => {
    const other = randomBytes(30_000);
    const cases: [string, () => [string, string | Buffer][], number, string][] = [
      ['a tampered image (one byte changed)', () => {
        const bad = Buffer.from(other);
        bad[100] = bad[100]! ^ 1;
        return [['manifest', JSON.stringify(manifestFor(other, '2.0.0'))], ['image', bad]];
      }, 422, 'FIRMWARE_IMAGE_MISMATCH'],
      ['an image longer than its manifest says', () => {
        const m = manifestFor(other, '2.0.0');
        return [['manifest', JSON.stringify(m)], ['image', Buffer.concat([other, Buffer.from('x')])]];
      }, 422, 'FIRMWARE_IMAGE_MISMATCH'],
      ['a truncated image', () => [['manifest', JSON.stringify(manifestFor(other, '2.0.0'))], ['image', other.subarray(0, 20_000)]], 422, 'FIRMWARE_IMAGE_MISMATCH'],
      ['a tampered manifest (version changed after signing)', () => [['manifest', JSON.stringify({ ...manifestFor(other, '2.0.0'), version: '2.0.1' })], ['image', other]], 422, 'FIRMWARE_SIGNATURE_INVALID'],
      ['a manifest signed by an unknown key', () => [['manifest', JSON.stringify(manifestFor(other, '2.0.0', {}, strangerKey.privateKey))], ['image', other]], 422, 'FIRMWARE_SIGNATURE_INVALID'],
      ['a manifest without sig', () => {
        const { sig: _sig, ...unsigned } = manifestFor(other, '2.0.0');
        return [['manifest', JSON.stringify(unsigned)], ['image', other]];
      }, 400, 'FIRMWARE_UPLOAD_MALFORMED'],
      ['a manifest that is not JSON', () => [['manifest', '{"version":'], ['image', other]], 400, 'FIRMWARE_UPLOAD_MALFORMED'],
      ['an image over OTA_MAX_IMAGE_BYTES (declared in the signed manifest)', () => {
        const big = randomBytes(MAX + 1);
        return [['manifest', JSON.stringify(manifestFor(big, '3.0.0'))], ['image', big]];
      }, 413, 'FIRMWARE_TOO_LARGE'],
      ['a request body far over OTA_MAX_IMAGE_BYTES (refused by its Content-Length)', () => {
        const big = randomBytes(4 * MAX);
        return [['manifest', JSON.stringify(manifestFor(other, '3.0.0'))], ['image', big]];
      }, 413, 'FIRMWARE_TOO_LARGE'],
      ['the image part before the manifest part', () => [['image', other], ['manifest', JSON.stringify(manifestFor(other, '2.0.0'))]], 400, 'FIRMWARE_UPLOAD_MALFORMED'],
      ['no image part', () => [['manifest', JSON.stringify(manifestFor(other, '2.0.0'))]], 400, 'FIRMWARE_UPLOAD_MALFORMED'],
      ['no manifest part', () => [['image', other]], 400, 'FIRMWARE_UPLOAD_MALFORMED'],
      ['a third part', () => [['manifest', JSON.stringify(manifestFor(other, '2.0.0'))], ['image', other], ['extra', 'x']], 400, 'FIRMWARE_UPLOAD_MALFORMED'],
    ];
    it.each(cases)('%s', async (_name, parts, status, code) => {
      const before = await filesOnDisk();
      const res = await upload(parts());
      expect(res.status).toBe(status);
      expect(res.body.error?.code).toBe(code);
      expect(res.body.error?.message).toBeTruthy();
      expect(await filesOnDisk()).toEqual(before);
    });

    it('a JSON body instead of multipart', async () => {
      const res = await f.api('POST', '/v1/firmware', { token: admin, body: { manifest: good } });
      expect(res.status).toBe(400);
      expect(res.body.error?.code).toBe('FIRMWARE_UPLOAD_MALFORMED');
    });
  });

  it('is for admins only: operators and viewers get 403, no token 401', async () => {
    for (const role of ['viewer', 'operator'] as const) {
      const res = await upload([['manifest', JSON.stringify(good)], ['image', image]], await f.tokenFor(role));
      expect(res.status).toBe(403);
      expect(res.body.error?.code).toBe('AUTH_FORBIDDEN');
    }
    const anonymous = await fetch(`${f.url}/v1/firmware`, { method: 'POST', body: new FormData() });
    expect(anonymous.status).toBe(401);
    const viewerList = await f.api('GET', '/v1/firmware', { token: await f.tokenFor('viewer') });
    expect(viewerList.status).toBe(403);
  });
});

describe('downloads', () => {
  it('serves the whole image with a strong ETag (its sha256), immutable caching and Accept-Ranges', async () => {
    const res = await download(good.sha256, admin);
    expect(res.status).toBe(200);
    expect(res.bytes.equals(image)).toBe(true);
    expect(res.headers.get('etag')).toBe(`"${good.sha256}"`);
    expect(res.headers.get('cache-control')).toContain('immutable');
    expect(res.headers.get('accept-ranges')).toBe('bytes');
    expect(res.headers.get('content-length')).toBe(String(image.length));
    expect((await download(good.sha256, admin, { 'if-none-match': `"${good.sha256}"` })).status).toBe(304);
  });

  it('answers a Range with 206 and Content-Range; resuming from an offset completes the exact bytes', async () => {
    const first = await download(good.sha256, admin, { range: 'bytes=0-9999' });
    expect(first.status).toBe(206);
    expect(first.headers.get('content-range')).toBe(`bytes 0-9999/${image.length}`);
    expect(first.bytes.equals(image.subarray(0, 10_000))).toBe(true);
    const rest = await download(good.sha256, admin, { range: `bytes=${first.bytes.length}-`, 'if-range': `"${good.sha256}"` });
    expect(rest.status).toBe(206);
    expect(rest.headers.get('content-range')).toBe(`bytes 10000-${image.length - 1}/${image.length}`);
    expect(Buffer.concat([first.bytes, rest.bytes]).equals(image)).toBe(true);
    const suffix = await download(good.sha256, admin, { range: 'bytes=-100' });
    expect(suffix.status).toBe(206);
    expect(suffix.bytes.equals(image.subarray(image.length - 100))).toBe(true);
  });

  it('answers 416 with Content-Range bytes */size to a range past the end', async () => {
    const res = await download(good.sha256, admin, { range: `bytes=${image.length}-` });
    expect(res.status).toBe(416);
    expect(res.headers.get('content-range')).toBe(`bytes */${image.length}`);
    expect(JSON.parse(res.bytes.toString()).error.code).toBe('FIRMWARE_RANGE_NOT_SATISFIABLE');
  });

  it('sends the whole image (200) when If-Range names another ETag', async () => {
    const res = await download(good.sha256, admin, { range: 'bytes=100-', 'if-range': `"${'0'.repeat(64)}"` });
    expect(res.status).toBe(200);
    expect(res.bytes.equals(image)).toBe(true);
  });

  it('answers 404 for an unknown image and 400 for a malformed sha256', async () => {
    expect((await download('a'.repeat(64), admin)).status).toBe(404);
    expect((await download('not-a-sha', admin)).status).toBe(400);
  });

  it('lets a device download only an image it was offered (403 before recordOffer, 200 after); viewers never', async () => {
    const { token } = await f.registerDevice('fw-dev-1');
    const refused = await download(good.sha256, token);
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.bytes.toString()).error.code).toBe('AUTH_FORBIDDEN');

    await recordOffer(f.redis, 'fw-dev-1', good.sha256, 600);
    const ttl = await f.redis.ttl('fleetwire:ota-offered:fw-dev-1');
    expect(ttl).toBeGreaterThan(590);
    const allowed = await download(good.sha256, token, { range: 'bytes=5-' });
    expect(allowed.status).toBe(206);
    expect(allowed.bytes.equals(image.subarray(5))).toBe(true);

    // Another device's offer is not this one's.
    const { token: other } = await f.registerDevice('fw-dev-2');
    expect((await download(good.sha256, other)).status).toBe(403);
    expect((await download(good.sha256, await f.tokenFor('viewer'))).status).toBe(403);
    expect((await download(good.sha256, await f.tokenFor('operator'))).status).toBe(200);
    const service = (await f.api('POST', '/v1/service-tokens', { token: admin, body: { name: 'mirror', ttl_s: 600 } })).body.token as string;
    expect((await download(good.sha256, service)).status).toBe(200);
    // A service may download and list, never upload (admins only).
    expect((await f.api('GET', '/v1/firmware', { token: service })).status).toBe(200);
    expect((await upload([['manifest', JSON.stringify(good)], ['image', image]], service)).status).toBe(403);
  });

  it('refuses a deleted device even for an offered image', async () => {
    const { token } = await f.registerDevice('fw-dev-3');
    await recordOffer(f.redis, 'fw-dev-3', good.sha256, 600);
    expect((await download(good.sha256, token)).status).toBe(200);
    const deleted = await f.api('DELETE', '/v1/devices/fw-dev-3', { token: admin });
    expect(deleted.status).toBeLessThan(300);
    expect((await download(good.sha256, token)).status).toBe(401);
  });
});

describe('OTA_PUBLIC_KEYS', () => {
  it('refuses to start with a key that is not a raw 32-byte Ed25519 key in base64url', () => {
    expect(() => loadDeviceServiceConfig({ OTA_PUBLIC_KEYS: `${otaPublicKeyText(fleetKey.publicKey)},not-a-key` })).toThrow(/OTA_PUBLIC_KEYS: "not-a-key"/);
    expect(loadDeviceServiceConfig({ OTA_PUBLIC_KEYS: otaPublicKeyText(fleetKey.publicKey) }).otaPublicKeys).toBe(otaPublicKeyText(fleetKey.publicKey));
  });
});

describe('without trusted keys', () => {
  it('refuses every upload with FIRMWARE_UPLOADS_DISABLED', async () => {
    const bare = await startFleet({});
    try {
      const token = await bare.tokenFor('admin');
      const form = new FormData();
      form.append('manifest', JSON.stringify(good));
      form.append('image', new Blob([image]), 'app.bin');
      const res = await fetch(`${bare.url}/v1/firmware`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: form });
      expect(res.status).toBe(503);
      expect(((await res.json()) as { error: { code: string; message: string } }).error.message).toContain('OTA_PUBLIC_KEYS');
    } finally {
      await bare.close();
    }
  });
});

describe('OTA_DEV_SIGNING (development only)', () => {
  it('signs a manifest with the server\'s own key, which then uploads and verifies like an offline-signed one', async () => {
    const dev = await startFleet({ OTA_DEV_SIGNING: 'true' });
    try {
      const token = await dev.tokenFor('admin');
      const sha256 = createHash('sha256').update(image).digest('hex');
      const signed = await dev.api('POST', '/v1/firmware/dev-sign', { token, body: { version: '9.0.0', size: image.length, sha256, chip: 'esp32' } });
      expect(signed.status).toBe(200);
      const manifest = signed.body.manifest as SignedManifest;
      expect(manifest).toMatchObject({ version: '9.0.0', sha256, url: `/v1/firmware/${sha256}` });
      // The key stays on the server, readable by its owner only, and its public key verifies the manifest.
      const keyFile = join(dev.dataDir, 'ota-dev-signing.pem');
      expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
      const publicKey = createPublicKey(createPrivateKey(await readFile(keyFile, 'utf8')));
      expect(manifestSigner(manifest, [publicKey])).toBe(0);

      const form = new FormData();
      form.append('manifest', JSON.stringify(manifest));
      form.append('image', new Blob([image]), 'app.bin');
      const res = await fetch(`${dev.url}/v1/firmware`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: form });
      expect(res.status).toBe(201);
      // Only admins sign; a bad body names its field.
      expect((await dev.api('POST', '/v1/firmware/dev-sign', { token: await dev.tokenFor('operator'), body: { version: '9.0.1', size: 1, sha256 } })).status).toBe(403);
      const bad = await dev.api('POST', '/v1/firmware/dev-sign', { token, body: { version: '9.0.1', size: 0, sha256 } });
      expect(bad.status).toBe(400);
      expect(bad.body.error!.message).toMatch(/size/);
    } finally {
      await dev.close();
    }
  });

  it('is not there without OTA_DEV_SIGNING, and refused with NODE_ENV=production', async () => {
    expect((await f.api('POST', '/v1/firmware/dev-sign', { token: admin, body: { version: '1', size: 1, sha256: 'a'.repeat(64) } })).status).toBe(404);
    expect(() => loadDeviceServiceConfig({ OTA_DEV_SIGNING: 'true', NODE_ENV: 'production' })).toThrow(/OTA_DEV_SIGNING signs firmware with a key on the server and is refused when NODE_ENV=production/);
  });
});
