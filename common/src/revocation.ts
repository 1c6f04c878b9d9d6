/**
 * Device identity status and revocation. The auth service writes, brokers
 * read at CONNECT and listen on the revocation channel so that a revoked
 * device or token is disconnected within a second on whichever node holds it.
 */
import type { Redis } from 'ioredis';
import { redisKeys } from './redis-keys.js';

export type DeviceStatus = 'active' | 'revoked';

export interface RevocationEvent {
  readonly kind: 'device' | 'user' | 'token';
  /** device id, user id or jti */
  readonly id: string;
}

/** Creates or updates the identity record the broker checks at CONNECT. */
export async function saveDevice(redis: Redis, deviceId: string, fields: Record<string, string> = {}): Promise<void> {
  const now = Date.now();
  await redis.multi()
    .hset(redisKeys.device(deviceId), { status: 'active', created_at: String(now), ...fields })
    .zadd(redisKeys.devices, 'NX', now, deviceId)
    .exec();
}

export async function revokeDevice(redis: Redis, deviceId: string): Promise<void> {
  await redis.hset(redisKeys.device(deviceId), { status: 'revoked', revoked_at: String(Date.now()) });
  await publishRevocation(redis, { kind: 'device', id: deviceId });
}

/** Revokes one token until it would have expired anyway. */
export async function revokeToken(redis: Redis, jti: string, expUnixSeconds: number): Promise<void> {
  const ttl = Math.max(1, expUnixSeconds - Math.floor(Date.now() / 1000));
  await redis.set(redisKeys.revokedJti(jti), '1', 'EX', ttl);
  await publishRevocation(redis, { kind: 'token', id: jti });
}

/**
 * Revokes every token of a user issued until now (role change, deletion), for
 * `ttlS` seconds: the longest such a token could still live. Tokens issued
 * afterwards (a refresh with the new role) are not affected.
 */
export async function revokeUserTokens(redis: Redis, userId: string, ttlS: number): Promise<void> {
  await redis.set(redisKeys.userTokensBefore(userId), String(Math.floor(Date.now() / 1000)), 'EX', Math.max(1, ttlS));
  await publishRevocation(redis, { kind: 'user', id: userId });
}

/** Whether this token was revoked, by its jti or, for a user, by a revocation of all their older tokens. */
export async function isTokenRevoked(redis: Redis, claims: { jti: string; typ: string; sub: string; iat: number }): Promise<boolean> {
  const [jti, before] = await redis.mget(redisKeys.revokedJti(claims.jti), claims.typ === 'user' ? redisKeys.userTokensBefore(claims.sub) : redisKeys.userTokensBefore('-'));
  return jti !== null || issuedBefore(claims.iat, before ?? null);
}

/** `before` is the stored revocation time (unix seconds) or null. */
export function issuedBefore(iat: number, before: string | null): boolean {
  return before !== null && iat < Number(before);
}

export async function publishRevocation(redis: Redis, event: RevocationEvent): Promise<void> {
  await redis.publish(redisKeys.revocations, JSON.stringify(event));
}

export function parseRevocation(message: string): RevocationEvent | null {
  try {
    const v = JSON.parse(message) as Partial<RevocationEvent>;
    if ((v.kind === 'device' || v.kind === 'user' || v.kind === 'token') && typeof v.id === 'string') {
      return { kind: v.kind, id: v.id };
    }
  } catch { /* not ours */ }
  return null;
}
