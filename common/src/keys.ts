/**
 * Local Ed25519 signing keys under <dataDir>/keys, one private JWK per file
 * (mode 0600). Rotation overlaps on both sides:
 * - a new key is published before it signs (`activate_at`), so verifiers that
 *   reload keys or refetch the JWKS know it before the first token arrives;
 * - an old key stays published until `retireAfterMs` after its successor began
 *   signing, so tokens it signed remain valid until they expire.
 */
import { generateKeyPair, exportJWK, importJWK, calculateJwkThumbprint, type JWK, type CryptoKey } from 'jose';
import { mkdir, readdir, readFile, writeFile, chmod, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { createTokenVerifier, type SigningKey, type TokenVerifier } from './jwt.js';
import type { Logger } from './logger.js';

export interface LocalKeySet {
  readonly signer: SigningKey;
  /** Public JWKs (kid, alg, use set) of every key not retired, newest first. */
  readonly publicJwks: readonly JWK[];
  /** Kids of keys past their overlap: no longer published, safe to delete. */
  readonly retired: readonly string[];
}

export interface KeySetOptions {
  /** How long a replaced key stays published after its successor starts signing. @defaultValue forever */
  retireAfterMs?: number;
  now?: number;
}

interface StoredKey extends JWK { created_at: number; activate_at?: number }

const SUFFIX = '.private.jwk';

export async function generateSigningKey(keysDir: string, opts: { activateAt?: number } = {}): Promise<SigningKey> {
  await mkdir(keysDir, { recursive: true, mode: 0o700 });
  const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint({ kty: jwk.kty!, crv: jwk.crv!, x: jwk.x! });
  const createdAt = Date.now();
  const stored: StoredKey = { ...jwk, kid, alg: 'EdDSA', use: 'sig', created_at: createdAt, activate_at: opts.activateAt ?? createdAt };
  const file = join(keysDir, `${kid}${SUFFIX}`);
  await writeFile(file, JSON.stringify(stored), { mode: 0o600, flag: 'wx' });
  await chmod(file, 0o600);
  return { kid, privateKey: (await importJWK(stored, 'EdDSA')) as CryptoKey, createdAt };
}

/** Loads every key in keysDir, generating the first one when there is none. */
export async function loadOrCreateKeySet(keysDir: string, opts: KeySetOptions = {}): Promise<LocalKeySet> {
  let stored = await readStoredKeys(keysDir);
  if (stored.length === 0) {
    await generateSigningKey(keysDir);
    stored = await readStoredKeys(keysDir);
  }
  const now = opts.now ?? Date.now();
  const activeAt = (k: StoredKey): number => k.activate_at ?? k.created_at;
  stored.sort((a, b) => b.created_at - a.created_at);
  // The newest key that has begun signing; a key still waiting is only published.
  const signing = stored.find((k) => activeAt(k) <= now) ?? stored[stored.length - 1]!;
  const signer: SigningKey = {
    kid: signing.kid!,
    privateKey: (await importJWK(signing, 'EdDSA')) as CryptoKey,
    createdAt: signing.created_at,
  };
  const retireAfterMs = opts.retireAfterMs ?? Number.POSITIVE_INFINITY;
  const retired: string[] = [];
  const published: StoredKey[] = [];
  for (const [i, k] of stored.entries()) {
    const successor = i > 0 ? stored[i - 1]! : null;
    const older = k.created_at < signing.created_at;
    if (older && successor && activeAt(successor) + retireAfterMs <= now) retired.push(k.kid!);
    else published.push(k);
  }
  const publicJwks = published.map(({ kty, crv, x, kid }) => ({ kty, crv, x, kid, alg: 'EdDSA', use: 'sig' }) as JWK);
  return { signer, publicJwks, retired };
}

/**
 * Adds a key that starts signing after `activateInMs` and deletes retired keys.
 * Returns the new key's kid.
 */
export async function rotateSigningKey(keysDir: string, opts: { activateInMs: number; retireAfterMs?: number }): Promise<string> {
  const key = await generateSigningKey(keysDir, { activateAt: Date.now() + opts.activateInMs });
  const { retired } = await loadOrCreateKeySet(keysDir, { retireAfterMs: opts.retireAfterMs });
  await Promise.all(retired.map((kid) => unlink(join(keysDir, `${kid}${SUFFIX}`)).catch(() => undefined)));
  return key.kid;
}

export interface KeyRing {
  /** The key that signs now. */
  readonly signer: SigningKey;
  /** The published set, as served at /.well-known/jwks.json. */
  readonly publicJwks: readonly JWK[];
  /** Trusts exactly the published set; updated on every change. */
  readonly verifier: TokenVerifier;
  /** Re-reads the folder now (another process may have rotated). */
  reload(): Promise<void>;
  rotate(activateInMs: number): Promise<string>;
  close(): void;
}

/**
 * The key folder as a live object: re-read every `reloadMs`, so a rotation by
 * another process (the CLI, another node on the same volume) and a pending key
 * reaching its activation time are picked up without a restart.
 */
export async function openKeyRing(keysDir: string, opts: { retireAfterMs?: number; reloadMs?: number; log?: Logger } = {}): Promise<KeyRing> {
  let set = await loadOrCreateKeySet(keysDir, { retireAfterMs: opts.retireAfterMs });
  const fingerprint = (s: LocalKeySet): string => `${s.signer.kid}|${s.publicJwks.map((k) => k.kid).join(',')}`;
  const verifier = createTokenVerifier({ keys: set.publicJwks });

  async function reload(): Promise<void> {
    const next = await loadOrCreateKeySet(keysDir, { retireAfterMs: opts.retireAfterMs });
    if (fingerprint(next) === fingerprint(set)) return;
    set = next;
    // setKeys also empties the verified-token cache, so only when the set really changed.
    verifier.setKeys(next.publicJwks);
    opts.log?.info({ signing_kid: next.signer.kid, kids: next.publicJwks.map((k) => k.kid) }, 'signing keys changed');
  }

  const timer = setInterval(() => {
    reload().catch((err: unknown) => opts.log?.error({ err }, 'reloading signing keys failed; keeping the previous set'));
  }, opts.reloadMs ?? 30_000);
  timer.unref();

  return {
    get signer() { return set.signer; },
    get publicJwks() { return set.publicJwks; },
    verifier,
    reload,
    async rotate(activateInMs) {
      const kid = await rotateSigningKey(keysDir, { activateInMs, retireAfterMs: opts.retireAfterMs });
      await reload();
      return kid;
    },
    close: () => clearInterval(timer),
  };
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
