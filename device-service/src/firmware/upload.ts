/**
 * Receiving one firmware upload: `multipart/form-data` with a `manifest` part (the signed
 * manifest JSON, a field or a file) and then an `image` part. The manifest is checked
 * (schema, size limit, signature by a trusted key) before any image byte is stored; the
 * image is streamed to a pending file while its SHA-256 is computed, and is committed
 * only when its hash and size equal the manifest's. Whatever is refused is deleted.
 */
import { createHash, type KeyObject } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import busboy from 'busboy';
import {
  canonicalJson, describeValidationError, FleetwireError, manifestSigner, schemaValidator, type SignedManifest,
} from '@fleetwire/common';
import type { FirmwareStore, PendingUpload } from './storage.js';

/** Largest manifest part accepted. */
export const MAX_MANIFEST_BYTES = 64 * 1024;
/** Room for the multipart framing and the manifest around the image in a request's Content-Length. */
const ENVELOPE_BYTES = MAX_MANIFEST_BYTES + 16 * 1024;

const offerValidator = schemaValidator('ota-offer.schema.json');

export interface UploadResult {
  sha256: string;
  manifest: SignedManifest;
  created: boolean;
}

export interface UploadLimits {
  maxImageBytes: number;
  keys: readonly KeyObject[];
}

const malformed = (message: string) => new FleetwireError('FIRMWARE_UPLOAD_MALFORMED', message);

/** The manifest part's text, checked: schema, declared size within the limit, signature by a trusted key. */
export function checkManifest(text: string, limits: UploadLimits): SignedManifest {
  let manifest: unknown;
  try {
    manifest = JSON.parse(text);
  } catch {
    throw malformed('the manifest part is not JSON');
  }
  if (!offerValidator({ rollout: 'upload', manifest })) {
    throw malformed(`the manifest does not match ota-offer.schema.json: ${describeValidationError(offerValidator).replace('/manifest', '') || 'invalid'}`);
  }
  const m = manifest as SignedManifest;
  try {
    canonicalJson(m);
  } catch (err) {
    throw malformed(`the manifest cannot be signed canonically: ${(err as Error).message}`);
  }
  if (m.size > limits.maxImageBytes) {
    throw new FleetwireError('FIRMWARE_TOO_LARGE', `the manifest declares ${m.size} bytes; OTA_MAX_IMAGE_BYTES is ${limits.maxImageBytes}`);
  }
  if (manifestSigner(m, limits.keys) < 0) {
    throw new FleetwireError('FIRMWARE_SIGNATURE_INVALID', 'the manifest\'s sig does not verify with any key in OTA_PUBLIC_KEYS: the manifest was changed after signing, or signed with a key this server does not trust');
  }
  return m;
}

/**
 * Reads the request body (never buffered beyond the manifest) and stores the image.
 * On refusal the pending file is gone before this rejects; the rest of the body is left
 * unread for the caller to dump or cut.
 */
export function receiveUpload(raw: IncomingMessage, store: FirmwareStore, limits: UploadLimits): Promise<UploadResult> {
  const type = raw.headers['content-type'] ?? '';
  if (!/^multipart\/form-data\s*;/i.test(type)) return Promise.reject(malformed('send multipart/form-data (a manifest part, then an image part)'));
  const declared = Number(raw.headers['content-length']);
  if (Number.isFinite(declared) && declared > limits.maxImageBytes + ENVELOPE_BYTES) {
    return Promise.reject(new FleetwireError('FIRMWARE_TOO_LARGE', `the request is ${declared} bytes; OTA_MAX_IMAGE_BYTES is ${limits.maxImageBytes}`));
  }
  let bb: busboy.Busboy;
  try {
    bb = busboy({
      headers: raw.headers,
      limits: { fields: 1, files: 2, parts: 3 /* 'partsLimit' fires on reaching it: at a third part */, fieldSize: MAX_MANIFEST_BYTES, fileSize: limits.maxImageBytes, headerPairs: 20 },
    });
  } catch (err) {
    return Promise.reject(malformed(`not a readable multipart body: ${(err as Error).message}`));
  }

  return new Promise<UploadResult>((resolve, reject) => {
    let settled = false;
    /** The manifest part's text: at once for a field, once its part has ended for a file. */
    let manifestText: Promise<string> | null = null;
    let pending: PendingUpload | null = null;
    let image: Promise<{ sha256: string; manifest: SignedManifest }> | null = null;
    let imageStream: NodeJS.ReadableStream & { destroy(): void } | null = null;

    const fail = (err: unknown) => {
      if (settled) return;
      settled = true;
      raw.unpipe(bb);
      bb.removeAllListeners();
      bb.on('error', () => {});
      // Ends the image's pipeline (it would wait for bytes that no longer come), then deletes what it wrote.
      imageStream?.destroy();
      const cleanup = (image ?? Promise.resolve()).catch(() => undefined).then(() => pending?.abort());
      void cleanup.then(() => reject(err), () => reject(err));
    };

    bb.on('field', (name, value, info) => {
      if (name !== 'manifest') return fail(malformed(`unexpected part "${name}": send a manifest part, then an image part`));
      if (info.valueTruncated) return fail(malformed(`the manifest part is larger than ${MAX_MANIFEST_BYTES} bytes`));
      manifestText = Promise.resolve(value);
    });

    bb.on('file', (name, stream, info) => {
      if (settled) return void stream.resume();
      if (name === 'manifest' && manifestText === null) {
        // `curl -F manifest=@manifest.json` sends the manifest as a file.
        const chunks: Buffer[] = [];
        let bytes = 0;
        manifestText = new Promise((done, refuse) => {
          stream.on('data', (c: Buffer) => {
            bytes += c.length;
            if (bytes > MAX_MANIFEST_BYTES) return refuse(malformed(`the manifest part is larger than ${MAX_MANIFEST_BYTES} bytes`));
            chunks.push(c);
          });
          stream.on('end', () => done(Buffer.concat(chunks).toString('utf8')));
          stream.on('error', refuse);
        });
        manifestText.catch(fail);
        return;
      }
      if (name !== 'image') {
        stream.resume();
        return fail(malformed(`unexpected part "${name}" (${info.filename ?? 'no file name'}): send a manifest part, then an image part`));
      }
      if (manifestText === null) {
        stream.resume();
        return fail(malformed('the manifest part must come before the image part'));
      }
      const text = manifestText;
      imageStream = stream;
      image = (async () => {
        const manifest = checkManifest(await text, limits);
        const expected = manifest.size;
        pending = await store.begin();
        if (settled) throw new Error('refused while starting');
        const hash = createHash('sha256');
        let bytes = 0;
        const meter = new Transform({
          transform(chunk: Buffer, _enc, cb) {
            bytes += chunk.length;
            if (bytes > expected) return cb(new FleetwireError('FIRMWARE_IMAGE_MISMATCH', `the image is larger than the manifest's size (${expected} bytes)`));
            hash.update(chunk);
            cb(null, chunk);
          },
        });
        stream.once('limit', () => meter.destroy(new FleetwireError('FIRMWARE_TOO_LARGE', `the image is larger than OTA_MAX_IMAGE_BYTES (${limits.maxImageBytes})`)));
        await pipeline(stream, meter, pending.stream);
        if (bytes !== expected) throw new FleetwireError('FIRMWARE_IMAGE_MISMATCH', `the image is ${bytes} bytes; the manifest says ${expected}`);
        const sha256 = hash.digest('hex');
        if (sha256 !== manifest.sha256) throw new FleetwireError('FIRMWARE_IMAGE_MISMATCH', `the image's SHA-256 is ${sha256}; the manifest says ${manifest.sha256}`);
        return { sha256, manifest };
      })();
      image.catch(fail);
    });

    bb.on('partsLimit', () => fail(malformed('only two parts are taken: manifest, then image')));
    bb.on('filesLimit', () => fail(malformed('only two parts are taken: manifest, then image')));
    bb.on('fieldsLimit', () => fail(malformed('only two parts are taken: manifest, then image')));
    bb.on('error', (err: Error) => fail(malformed(`the multipart body is malformed or was cut: ${err.message}`)));
    bb.on('close', () => {
      if (settled) return;
      if (manifestText === null) return fail(malformed('the manifest part is missing'));
      if (!image) return fail(malformed('the image part is missing'));
      void image.then(async ({ sha256, manifest }) => {
        if (settled) return;
        const outcome = await pending!.commit(sha256, manifest);
        settled = true;
        resolve({ sha256, manifest, created: outcome === 'created' });
      }).catch(fail);
    });
    raw.on('aborted', () => fail(malformed('the upload was cut')));
    raw.pipe(bb);
  });
}
