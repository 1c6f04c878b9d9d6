/**
 * Password hashing: argon2id at the configured parameters, plus verification
 * of hashes imported from the previous system (SHA-256, bare or salted), which
 * are replaced by argon2id on the first successful login.
 */
import argon2 from 'argon2';
import { createHash } from 'node:crypto';
import type { Argon2Params } from './config.js';
import { safeEqual } from './secrets.js';

/** `<64 hex>` = sha256(password); `sha256$<salt>$<64 hex>` = sha256(salt + password). */
const LEGACY_BARE = /^[0-9a-fA-F]{64}$/;
const LEGACY_SALTED = /^sha256\$([^$]{1,256})\$([0-9a-fA-F]{64})$/;

export function isLegacyHash(stored: string): boolean {
  return LEGACY_BARE.test(stored) || LEGACY_SALTED.test(stored);
}

export interface VerifyOutcome {
  ok: boolean;
  /** The password was right and its hash should be replaced (legacy or older parameters). */
  rehash: boolean;
}

export class PasswordHasher {
  private readonly options: argon2.HashOptions;
  private dummy: Promise<string> | null = null;

  constructor(readonly params: Argon2Params) {
    this.options = { type: argon2.argon2id, memoryCost: params.memoryKib, timeCost: params.timeCost, parallelism: params.parallelism };
  }

  hash(password: string): Promise<string> {
    return argon2.hash(password, this.options);
  }

  async verify(stored: string, password: string): Promise<VerifyOutcome> {
    if (stored.startsWith('$argon2')) {
      const ok = await argon2.verify(stored, password).catch(() => false);
      if (!ok) await this.padToCurrentCost(stored, password);
      return { ok, rehash: ok && argon2.needsRehash(stored, this.options) };
    }
    const ok = verifyLegacy(stored, password);
    // A legacy check is nearly free; pay an argon2 verification anyway so that
    // timing does not tell which accounts are still on legacy hashes.
    if (!ok) await this.dummyVerify(password);
    return { ok, rehash: ok };
  }

  /**
   * After a failed check against a hash made with cheaper parameters than the current ones
   * (say, before a switch to the production profile), spends the work the check fell short
   * of, so a wrong password costs what an unknown email costs (dummyVerify, at the current
   * parameters) whatever hash the account still holds: Django's harden_runtime. The padding
   * is an argon2id hash at the current passes and lanes with memory = missing work ÷ passes,
   * so it never needs more memory than a current hash. A hash with dearer parameters (the
   * profile was lowered) cannot be made cheaper: such an account answers a wrong password
   * more slowly than an unknown email until its next successful login re-hashes it.
   */
  private async padToCurrentCost(stored: string, password: string): Promise<void> {
    const storedParams = argon2Work(stored);
    if (!storedParams) return;
    const missing = workOf(this.params) - workOf(storedParams);
    if (missing <= 0) return;
    const { timeCost, parallelism } = this.params;
    // argon2 needs at least 8 KiB per lane.
    const memoryCost = Math.max(8 * parallelism, Math.round(missing / timeCost));
    await argon2.hash(password, { type: argon2.argon2id, memoryCost, timeCost, parallelism, raw: true });
  }

  /** As costly as a real verification, for unknown accounts (no user enumeration by timing). */
  async dummyVerify(password: string): Promise<void> {
    this.dummy ??= this.hash('fleetwire-dummy-password-not-used-by-anyone');
    await argon2.verify(await this.dummy, password).catch(() => false);
  }

  /** Precomputes the dummy hash so the first unknown-account login costs what the others do. */
  async warm(): Promise<void> {
    await this.dummyVerify('');
  }
}

/** Argon2 work: memory (KiB, one block each) × passes; lanes only divide the same work. */
function workOf(p: { memoryKib: number; timeCost: number }): number {
  return p.memoryKib * p.timeCost;
}

/** The memory and passes in a PHC string such as `$argon2id$v=19$m=4096,p=1,t=1$…`, or null. */
function argon2Work(stored: string): { memoryKib: number; timeCost: number } | null {
  const m = /[$,]m=(\d+)/.exec(stored);
  const t = /[$,]t=(\d+)/.exec(stored);
  return m && t ? { memoryKib: Number(m[1]), timeCost: Number(t[1]) } : null;
}

function verifyLegacy(stored: string, password: string): boolean {
  if (LEGACY_BARE.test(stored)) return safeEqual(sha256Hex(password), stored.toLowerCase());
  const m = LEGACY_SALTED.exec(stored);
  if (m) return safeEqual(sha256Hex(m[1]! + password), m[2]!.toLowerCase());
  return false;
}

function sha256Hex(s: string): string {
  return createHash('sha256').update(s, 'utf8').digest('hex');
}
