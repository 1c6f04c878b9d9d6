/**
 * `fleetwire firmware keygen|sign|upload`: OTA signing keys and manifests, offline (the
 * private key never needs to be on the server), and uploads to a running server over its
 * HTTP API (FLEETWIRE_URL, FLEETWIRE_TOKEN).
 */
import { createHash, createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { createReadStream, openAsBlob } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { otaPublicKeyText, signManifest, type ServiceCommand, type UnsignedManifest } from '@fleetwire/common';

const KEYGEN_USAGE = `fleetwire firmware keygen --out FILE
                                  make an OTA signing key pair: the private key goes to FILE (PKCS#8 PEM, mode 0600,
                                  never overwritten); prints the public key (raw 32 bytes, base64url) for OTA_PUBLIC_KEYS`;
const SIGN_USAGE = `fleetwire firmware sign --key KEY --image app.bin --version V [--chip C] [--min-version V] [--max-size N] [--url U]
                                  print the signed manifest of an image (JSON); --url defaults to /v1/firmware/<sha256>,
                                  relative, so the signature does not pin a host name. --min-version is for the server's
                                  rollout checks (the firmware ignores it; the signature covers it)`;
const UPLOAD_USAGE = `fleetwire firmware upload --manifest M --image I
                                  upload a signed image to the running server (POST /v1/firmware). FLEETWIRE_URL
                                  (default http://127.0.0.1:8080), FLEETWIRE_TOKEN (an admin access token)`;

const keygen: ServiceCommand = {
  name: 'firmware keygen',
  usage: KEYGEN_USAGE,
  async run(argv) {
    const { values } = parseArgs({ args: argv, options: { out: { type: 'string' } } });
    if (!values.out) throw new Error(`--out is required\nusage: ${KEYGEN_USAGE}`);
    const { privateKey } = generateKeyPairSync('ed25519');
    try {
      await writeFile(values.out, privateKey.export({ format: 'pem', type: 'pkcs8' }), { flag: 'wx', mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`${values.out} exists; not overwriting a key (pick another --out)`);
      throw err;
    }
    process.stdout.write(`${otaPublicKeyText(privateKey)}\n`);
    process.stderr.write(`private key written to ${values.out} (keep it off the server); add the public key above to OTA_PUBLIC_KEYS\n`);
    return 0;
  },
};

async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

const sign: ServiceCommand = {
  name: 'firmware sign',
  usage: SIGN_USAGE,
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        key: { type: 'string' }, image: { type: 'string' }, version: { type: 'string' }, chip: { type: 'string' }, 'min-version': { type: 'string' },
        'max-size': { type: 'string' }, url: { type: 'string' },
      },
    });
    for (const flag of ['key', 'image', 'version'] as const) {
      if (!values[flag]) throw new Error(`--${flag} is required\nusage: ${SIGN_USAGE}`);
    }
    const key = createPrivateKey(await readFile(values.key!));
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${values.key} is not an Ed25519 private key`);
    const size = (await stat(values.image!)).size;
    if (size === 0) throw new Error(`${values.image} is empty`);
    // The signer's guard: an image that would not fit the target's OTA partition is not signed at all.
    if (values['max-size'] !== undefined) {
      const max = Number(values['max-size']);
      if (!Number.isInteger(max) || max < 1) throw new Error(`--max-size takes a whole number of bytes, not "${values['max-size']}"\nusage: ${SIGN_USAGE}`);
      if (size > max) throw new Error(`${values.image} is ${size} bytes, over --max-size ${max}: not signed`);
    }
    const sha256 = await sha256Of(values.image!);
    const manifest: UnsignedManifest = {
      version: values.version!, size, sha256, url: values.url ?? `/v1/firmware/${sha256}`,
      ...(values.chip !== undefined ? { chip: values.chip } : {}),
      ...(values['min-version'] !== undefined ? { min_version: values['min-version'] } : {}),
    };
    process.stdout.write(`${JSON.stringify(signManifest(manifest, key))}\n`);
    return 0;
  },
};

const upload: ServiceCommand = {
  name: 'firmware upload',
  usage: UPLOAD_USAGE,
  async run(argv, env) {
    const { values } = parseArgs({ args: argv, options: { manifest: { type: 'string' }, image: { type: 'string' } } });
    if (!values.manifest || !values.image) throw new Error(`--manifest and --image are required\nusage: ${UPLOAD_USAGE}`);
    const token = env.FLEETWIRE_TOKEN;
    if (!token) throw new Error('set FLEETWIRE_TOKEN to an admin access token (POST /v1/auth/login)');
    const base = env.FLEETWIRE_URL || 'http://127.0.0.1:8080';
    const form = new FormData();
    form.append('manifest', (await readFile(values.manifest, 'utf8')).trim());
    // A Blob backed by the file: streamed, not read into memory.
    form.append('image', await openAsBlob(values.image, { type: 'application/octet-stream' }), basename(values.image));
    let res: Response;
    try {
      res = await fetch(new URL('/v1/firmware', base), { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: form });
    } catch (err) {
      const cause = (err as { cause?: unknown }).cause;
      throw new Error(`cannot reach ${base} (${cause instanceof Error ? cause.message : (err as Error).message}); is the server running, and FLEETWIRE_URL right?`);
    }
    const text = await res.text();
    let body: { sha256?: string; manifest?: { version?: string }; error?: { code: string; message: string } } = {};
    try {
      body = text ? JSON.parse(text) as typeof body : {};
    } catch { /* not JSON: reported by status below */ }
    if (!res.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
    process.stdout.write(`${res.status === 201 ? 'stored' : 'already stored'} ${body.sha256} (version ${body.manifest?.version})\n`);
    return 0;
  },
};

export const firmwareCommands: readonly ServiceCommand[] = [keygen, sign, upload];
