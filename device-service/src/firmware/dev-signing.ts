/**
 * Development-only signing on the server (OTA_DEV_SIGNING; the config refuses it with
 * NODE_ENV=production). Production manifests are signed offline (`fleetwire firmware sign`)
 * and the server only holds public keys; on a laptop that is one step too many, so the
 * server keeps a key of its own at <FLEETWIRE_DATA_DIR>/ota-dev-signing.pem (made on first
 * start, mode 0600), trusts its public key, and signs manifests at POST /v1/firmware/dev-sign.
 * Devices must be given that public key (printed in the log at start) like any other.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const DEV_KEY_FILE = 'ota-dev-signing.pem';

/** The development signing key under `dataDir`, made if missing. */
export async function devSigningKey(dataDir: string): Promise<{ privateKey: KeyObject; publicKey: KeyObject }> {
  const file = join(dataDir, DEV_KEY_FILE);
  let pem: string;
  try {
    pem = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    pem = generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    // wx: never replace a key another process made meanwhile.
    await writeFile(file, pem, { mode: 0o600, flag: 'wx' }).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
      pem = await readFile(file, 'utf8');
    });
  }
  const privateKey = createPrivateKey(pem);
  return { privateKey, publicKey: createPublicKey(privateKey) };
}
