/**
 * Opaque secrets (API keys, refresh and reset tokens): 256 random bits, a
 * prefix that says what they are, stored only as a SHA-256 digest. A digest
 * is enough for secrets this long; a slow hash is for low-entropy passwords.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

export function newSecret(prefix: string): string {
  return `${prefix}${randomBytes(32).toString('base64url')}`;
}

export function digest(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('base64url');
}

/** Constant-time comparison of two strings of any length (their digests are compared). */
export function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}
