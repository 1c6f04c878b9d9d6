/**
 * OTA manifests, signed offline: the one Node implementation of the rule in
 * firmware-esp32/core/src/ota.rs, for the server, the CLI and the tests. `sig` is the
 * standard padded base64 of an Ed25519 signature over the canonical JSON of the manifest
 * without `sig`: keys sorted recursively (by UTF-16 code unit, which equals byte order for
 * the ASCII keys manifests have), no whitespace, integers only.
 */
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';

/** The signed members of a manifest (`ota-offer.schema.json`); unknown members are signed too. */
export interface UnsignedManifest {
  version: string;
  size: number;
  sha256: string;
  url: string;
  chip?: string;
  /** Server-side compatibility hint (rollouts): the firmware ignores it, the signature covers it. */
  min_version?: string;
  [member: string]: unknown;
}

export interface SignedManifest extends UnsignedManifest { sig: string }

/** Canonical JSON as the firmware checks it; throws on a non-integer number (no single spelling across languages). */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new Error(`manifest numbers must be integers, not ${v}`);
  return JSON.stringify(v);
}

/** The bytes the signature covers: the manifest without `sig`. */
export function manifestSignedBytes(manifest: Record<string, unknown>): Buffer {
  const { sig: _sig, ...rest } = manifest;
  return Buffer.from(canonicalJson(rest));
}

export function signManifest(manifest: UnsignedManifest, privateKey: KeyObject): SignedManifest {
  const { sig: _drop, ...rest } = manifest as UnsignedManifest & { sig?: unknown };
  const sig = sign(null, manifestSignedBytes(rest), privateKey).toString('base64');
  return { ...rest, sig } as SignedManifest;
}

/** An Ed25519 public key from its raw 32 bytes in base64url (what `fleetwire firmware keygen` prints). */
export function otaPublicKey(base64url: string): KeyObject {
  const raw = base64url.trim();
  if (!/^[A-Za-z0-9_-]{43}$/.test(raw) || Buffer.from(raw, 'base64url').length !== 32) {
    throw new Error('an OTA public key is the raw 32-byte Ed25519 key in base64url (43 characters, as `fleetwire firmware keygen` prints)');
  }
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw }, format: 'jwk' });
}

/** The raw public key of an Ed25519 key (private or public) in base64url. */
export function otaPublicKeyText(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const x = pub.export({ format: 'jwk' }).x;
  if (!x || pub.asymmetricKeyType !== 'ed25519') throw new Error('not an Ed25519 key');
  return x;
}

/** Index in `keys` of the key that signed `manifest`, -1 when none did (or `sig` is not standard base64 of 64 bytes). */
export function manifestSigner(manifest: Record<string, unknown>, keys: readonly KeyObject[]): number {
  const sig = manifest.sig;
  if (typeof sig !== 'string' || !/^[A-Za-z0-9+/]{86}==$/.test(sig)) return -1;
  let bytes: Buffer;
  try {
    bytes = manifestSignedBytes(manifest);
  } catch {
    return -1;
  }
  const signature = Buffer.from(sig, 'base64');
  return keys.findIndex((k) => verify(null, bytes, k, signature));
}
