/**
 * Local Ed25519 signing keys under <dataDir>/keys, one private JWK per file
 * (mode 0600). The newest key signs; every key stays in the public set, so
 * tokens signed before a rotation remain valid until they expire.
 */
import { generateKeyPair, exportJWK, importJWK, calculateJwkThumbprint, type JWK, type CryptoKey } from 'jose';
import { mkdir, readdir, readFile, writeFile, chmod, stat } from 'node:fs/promises';
import { join } from 'node:path';

export interface SigningKey {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly createdAt: number;
}

export interface LocalKeySet {
  readonly signer: SigningKey;
  /** Public JWKs (kid, alg, use set), newest first. */
  readonly publicJwks: readonly JWK[];
}

interface StoredKey extends JWK { created_at: number }

const SUFFIX = '.private.jwk';

export async function generateSigningKey(keysDir: string): Promise<SigningKey> {
  await mkdir(keysDir, { recursive: true, mode: 0o700 });
  const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint({ kty: jwk.kty!, crv: jwk.crv!, x: jwk.x! });
  const createdAt = Date.now();
  const stored: StoredKey = { ...jwk, kid, alg: 'EdDSA', use: 'sig', created_at: createdAt };
  const file = join(keysDir, `${kid}${SUFFIX}`);
  await writeFile(file, JSON.stringify(stored), { mode: 0o600, flag: 'wx' });
  await chmod(file, 0o600);
  return { kid, privateKey: (await importJWK(stored, 'EdDSA')) as CryptoKey, createdAt };
}

/** Loads every key in keysDir, generating the first one when there is none. */
export async function loadOrCreateKeySet(keysDir: string): Promise<LocalKeySet> {
  let stored = await readStoredKeys(keysDir);
  if (stored.length === 0) {
    await generateSigningKey(keysDir);
    stored = await readStoredKeys(keysDir);
  }
  stored.sort((a, b) => b.created_at - a.created_at);
  const newest = stored[0]!;
  const signer: SigningKey = {
    kid: newest.kid!,
    privateKey: (await importJWK(newest, 'EdDSA')) as CryptoKey,
    createdAt: newest.created_at,
  };
  const publicJwks = stored.map(({ kty, crv, x, kid }) => ({ kty, crv, x, kid, alg: 'EdDSA', use: 'sig' }) as JWK);
  return { signer, publicJwks };
}

async function readStoredKeys(keysDir: string): Promise<StoredKey[]> {
  let names: string[];
  try {
    names = await readdir(keysDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const keys: StoredKey[] = [];
  for (const name of names.filter((n) => n.endsWith(SUFFIX))) {
    const file = join(keysDir, name);
    const mode = (await stat(file)).mode & 0o777;
    if (mode & 0o077) {
      throw new Error(`${file} is readable by other users (mode ${mode.toString(8)}): run chmod 600 ${file}`);
    }
    const jwk = JSON.parse(await readFile(file, 'utf8')) as StoredKey;
    if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || !jwk.d || !jwk.kid) {
      throw new Error(`${file} is not an Ed25519 private JWK with a kid`);
    }
    keys.push(jwk);
  }
  return keys;
}
