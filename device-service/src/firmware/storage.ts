/**
 * Firmware images, content-addressed: `<dir>/<sha256>` holds the image and
 * `<dir>/<sha256>.json` its signed manifest. Uploads are written under `<dir>/.incoming/`
 * and renamed into place only once accepted, so a refused or broken upload leaves nothing
 * behind. The interface is small so that an S3-compatible store can stand in later.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { SignedManifest } from '@fleetwire/common';

export interface StoredImage {
  sha256: string;
  size: number;
  manifest: SignedManifest;
  /** When it was stored (unix ms). */
  uploaded_at: number;
}

/** An upload in progress: write the image to `stream`, then commit or abort. */
export interface PendingUpload {
  readonly stream: Writable;
  /** Stores the written bytes as `sha256` with `manifest`; 'exists' (nothing changed) when that image is already stored. */
  commit(sha256: string, manifest: SignedManifest): Promise<'created' | 'exists'>;
  /** Drops the written bytes; safe to call more than once and after commit. */
  abort(): Promise<void>;
}

export interface FirmwareStore {
  begin(): Promise<PendingUpload>;
  stat(sha256: string): Promise<StoredImage | null>;
  /** The image's bytes from `start` to `end` inclusive (the whole image without a range). */
  read(sha256: string, range?: { start: number; end: number }): Readable;
  list(): Promise<StoredImage[]>;
  delete(sha256: string): Promise<boolean>;
}

const SHA256 = /^[0-9a-f]{64}$/;

export function diskFirmwareStore(dir: string): FirmwareStore {
  const incoming = join(dir, '.incoming');
  const ready = mkdir(incoming, { recursive: true });
  const imagePath = (sha: string) => {
    if (!SHA256.test(sha)) throw new Error(`not a sha256: ${sha}`);
    return join(dir, sha);
  };

  async function stored(sha: string): Promise<StoredImage | null> {
    try {
      const [info, text] = await Promise.all([stat(imagePath(sha)), readFile(`${imagePath(sha)}.json`, 'utf8')]);
      return { sha256: sha, size: info.size, manifest: JSON.parse(text) as SignedManifest, uploaded_at: Math.round(info.mtimeMs) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  return {
    async begin() {
      await ready;
      const tmp = join(incoming, randomBytes(12).toString('hex'));
      const stream = createWriteStream(tmp, { flags: 'wx', mode: 0o644 });
      const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
      let done = false;
      const abort = async () => {
        if (!stream.destroyed) stream.destroy();
        await closed;
        await rm(tmp, { force: true });
        await rm(`${tmp}.json`, { force: true });
      };
      return {
        stream,
        async commit(sha256, manifest) {
          if (done) throw new Error('upload already committed');
          done = true;
          await closed;
          const target = imagePath(sha256);
          if (await stored(sha256)) {
            await abort();
            return 'exists';
          }
          try {
            await writeFile(`${tmp}.json`, JSON.stringify(manifest), { flag: 'wx' });
            // The image first: an image without its manifest is not listed or served, and is replaced by the next upload.
            await rename(tmp, target);
            await rename(`${tmp}.json`, `${target}.json`);
          } catch (err) {
            await abort();
            throw err;
          }
          return 'created';
        },
        abort,
      };
    },
    stat: (sha256) => (SHA256.test(sha256) ? stored(sha256) : Promise.resolve(null)),
    read: (sha256, range) => createReadStream(imagePath(sha256), range ? { start: range.start, end: range.end } : {}),
    async list() {
      await ready;
      const names = (await readdir(dir)).filter((n) => n.endsWith('.json') && SHA256.test(n.slice(0, -5)));
      const images = (await Promise.all(names.map((n) => stored(n.slice(0, -5))))).filter((i): i is StoredImage => i !== null);
      return images.sort((a, b) => b.uploaded_at - a.uploaded_at || a.sha256.localeCompare(b.sha256));
    },
    async delete(sha256) {
      if (!SHA256.test(sha256)) return false;
      const had = (await stored(sha256)) !== null;
      await rm(`${imagePath(sha256)}.json`, { force: true });
      await rm(imagePath(sha256), { force: true });
      return had;
    },
  };
}
