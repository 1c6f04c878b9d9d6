/**
 * Device identity status and token revocation. The auth service writes; the HTTP guard
 * and the broker's CONNECT read through one rule (tokenState); brokers listen on the
 * revocation channel so that live connections holding a revoked token close within a
 * second on whichever node holds them.
 *
 * A token is revoked when its jti is, when its session is (logout, a reused refresh
 * token), or when its `gen` claim is below its subject's current token generation: a
 * counter the auth service raises in the same atomic step as the change that ends the
 * tokens (password change or reset, role change, deletion; a device key rotation with
 * revoke_tokens). A counter, unlike a revocation time, has no granularity to slip
 * through, and reading it together with the role when signing closes the race of a
 * refresh that read the old role just before the change.
 */
import type { Redis } from 'ioredis';
import { redisKeys } from './redis-keys.js';
import { defineScripts } from './redis-scripts.js';
import type { FleetwireClaims } from './contracts.js';

export type DeviceStatus = 'active' | 'revoked';

export interface RevocationEvent {
  readonly kind: 'device' | 'user' | 'token' | 'session';
  /** device id, user id, jti or session id */
  readonly id: string;
}

const KINDS: readonly string[] = ['device', 'user', 'token', 'session'];

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

/** Revokes every access token of a session, for `ttlS`: the longest one of them could still live. */
export async function revokeSession(redis: Redis, sessionId: string, ttlS: number): Promise<void> {
  await redis.set(redisKeys.revokedSession(sessionId), '1', 'EX', Math.max(1, Math.ceil(ttlS)));
  await publishRevocation(redis, { kind: 'session', id: sessionId });
}

export type RevocableClaims = Pick<FleetwireClaims, 'jti' | 'typ' | 'sub' | 'sid' | 'gen'>;

export interface TokenState {
  revoked: boolean;
  /** A device token's device record status; null for a missing or unreadable record, or another kind of token. */
  deviceStatus: DeviceStatus | null;
  /** Whether `penaltyKey` exists; false when none was given. */
  penalized: boolean;
}

/** Keys that never exist stand in for those that do not apply, so the script keeps one shape. */
const NONE = '-';

// src/lua/ from src/ (tests) and dist/ (built) alike: both sit at the same depth, and the image keeps src/.
const scriptsDir = new URL('../src/lua/', import.meta.url);

interface CommonScripts {
  /** lua/token-state.lua */
  tokenState(revokedJti: string, revokedSession: string, genHolder: string, reportKey: string, typ: string, gen: string): Promise<[number, string, number]>;
}

/**
 * The one revocation rule, for the HTTP guard and the broker's CONNECT alike, in one
 * round trip and one command; the broker also asks about a client's flood penalty.
 */
export async function tokenState(redis: Redis, claims: RevocableClaims, opts: { penaltyKey?: string } = {}): Promise<TokenState> {
  const scripts = defineScripts<CommonScripts>(redis, 'common', scriptsDir);
  const holder = claims.typ === 'device' ? redisKeys.device(claims.sub) : redisKeys.userTokenGen(claims.typ === 'user' ? claims.sub : NONE);
  const [revoked, status, penalized] = await scripts.tokenState(
    redisKeys.revokedJti(claims.jti), redisKeys.revokedSession(claims.sid ?? NONE), holder, opts.penaltyKey ?? redisKeys.floodPenalty(NONE),
    claims.typ, String(claims.gen ?? 0),
  );
  const deviceStatus = claims.typ === 'device' && (status === 'active' || status === 'revoked') ? status : null;
  return { revoked: revoked === 1, deviceStatus, penalized: penalized === 1 };
}

export async function isTokenRevoked(redis: Redis, claims: RevocableClaims): Promise<boolean> {
  return (await tokenState(redis, claims)).revoked;
}

export async function publishRevocation(redis: Redis, event: RevocationEvent): Promise<void> {
  await redis.publish(redisKeys.revocations, JSON.stringify(event));
}

export function parseRevocation(message: string): RevocationEvent | null {
  try {
    const v = JSON.parse(message) as Partial<RevocationEvent>;
    if (typeof v.kind === 'string' && KINDS.includes(v.kind) && typeof v.id === 'string') return { kind: v.kind, id: v.id };
  } catch { /* not ours */ }
  return null;
}
