/**
 * Sliding-window limits and account lockout in Redis, shared by every auth
 * node. Each check is one script call, made before any password is hashed,
 * so a flood of guesses costs a Redis round trip each, not an argon2 hash.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';

export interface Window { key: string; limit: number; windowMs: number }

export type GateResult =
  | { ok: true }
  | { ok: false; blockedBy: number; retryAfterMs: number; locked: boolean };

/**
 * KEYS: one lock key, then one sorted set per window. ARGV: a unique member,
 * then limit and window (ms) per window. A lock or any full window refuses
 * and records nothing; otherwise the attempt is recorded in every window.
 * Returns {0} or {index of the refusing window (0 = lock), retry-after ms}.
 */
const GATE_LUA = `
local lockTtl = redis.call('PTTL', KEYS[1])
if lockTtl > 0 then return {0, lockTtl} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #KEYS do
  local limit = tonumber(ARGV[i * 2 - 2])
  local window = tonumber(ARGV[i * 2 - 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    return {i - 1, tonumber(oldest[2]) + window - now}
  end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[i * 2 - 1]))
end
return {-1, 0}
`;

/** KEYS: failures counter, lock. ARGV: threshold, lock ms. Returns 1 when this failure locked the account. */
const FAIL_LUA = `
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[2]))
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`;

/** Stands in for the lock of a gate without one: never written, so PTTL answers "no key". */
const NO_LOCK_KEY = 'fleetwire:rl:no-lock';

export class Limits {
  constructor(private readonly redis: Redis) {
    redis.defineCommand('fwGate', { lua: GATE_LUA });
    redis.defineCommand('fwFail', { lua: FAIL_LUA });
  }

  /** Checks the lock (if any) and the windows, and records the attempt when allowed. */
  async gate(lockKey: string | null, windows: readonly Window[]): Promise<GateResult> {
    const member = randomUUID(); // unique across processes and hosts, so no two attempts collapse into one
    const args = windows.flatMap((w) => [w.limit, w.windowMs]);
    const keys = [lockKey ?? NO_LOCK_KEY, ...windows.map((w) => w.key)];
    const [index, retryAfterMs] = await (this.redis as unknown as GateCommands)
      .fwGate(keys.length, ...keys, member, ...args);
    if (index < 0) return { ok: true };
    return { ok: false, blockedBy: index, retryAfterMs, locked: index === 0 && lockKey !== null };
  }

  /** Counts a consecutive failure; returns true when it locked the account. */
  async fail(failuresKey: string, lockKey: string, threshold: number, lockMs: number): Promise<boolean> {
    return (await (this.redis as unknown as GateCommands).fwFail(2, failuresKey, lockKey, threshold, lockMs)) === 1;
  }

  async succeed(failuresKey: string): Promise<void> {
    await this.redis.del(failuresKey);
  }

  async unlock(failuresKey: string, lockKey: string): Promise<boolean> {
    const [, locked] = await Promise.all([this.redis.del(failuresKey), this.redis.del(lockKey)]);
    return locked === 1;
  }

  /** Milliseconds left on a lock, 0 when not locked. */
  async lockRemainingMs(lockKey: string): Promise<number> {
    return Math.max(0, await this.redis.pttl(lockKey));
  }

  /** Events in a window now, without recording one (checked before an attempt whose failure is then recorded). */
  async count(w: Window): Promise<number> {
    return this.redis.zcount(w.key, `(${Date.now() - w.windowMs}`, '+inf');
  }

  /** Adds one event to a window without checking it (a failure, recorded once it happened). */
  async record(w: Window): Promise<number> {
    const now = Date.now();
    const res = await this.redis.multi()
      .zremrangebyscore(w.key, '-inf', now - w.windowMs)
      .zadd(w.key, now, randomUUID())
      .pexpire(w.key, w.windowMs)
      .zcard(w.key)
      .exec();
    return Number(res?.[3]?.[1] ?? 0);
  }

}

interface GateCommands {
  fwGate(numKeys: number, ...args: (string | number)[]): Promise<[number, number]>;
  fwFail(numKeys: number, ...args: (string | number)[]): Promise<number>;
}
