/**
 * Sliding-window limits and lockout in Redis, shared by every auth node. Each check is
 * one script call, made before any password is hashed, so a flood of guesses costs a
 * Redis round trip each, not an argon2 hash.
 *
 * A lock holds one member (a client address) of a hash of locked-until times, so it
 * locks an account for one address only and an unlock of the whole account is one DEL.
 * A window may exempt a member of a sorted set of recent ones (the addresses an account
 * recently logged in from), so strangers filling it do not shut out its owner.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';

export interface Window {
  key: string;
  limit: number;
  windowMs: number;
  /** The window neither applies to nor counts `member` while it is in the sorted set `key` with a score (unix ms) within `withinMs`. */
  exempt?: { key: string; member: string; withinMs: number };
}

/** One member's entry in a hash: its lock (locked-until, unix ms) or its consecutive failure count. */
export interface Entry { key: string; member: string }

export type GateResult =
  | { ok: true }
  | { ok: false; blockedBy: number; retryAfterMs: number; locked: boolean };

/**
 * KEYS: the lock hash, then per window its sorted set and its exemption set.
 * ARGV: the lock's member, a unique attempt id, then per window: limit, window ms,
 * exempt member, exemption age ms. A lock in force or any full window that applies
 * refuses and records nothing; otherwise the attempt is recorded in every window that
 * applies. Returns {0} or {index of the refusing window (0 = lock), retry-after ms}.
 */
const GATE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lockedUntil = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if lockedUntil and lockedUntil > now then return {0, lockedUntil - now} end
local n = (#KEYS - 1) / 2
local applies = {}
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local seen = tonumber(redis.call('ZSCORE', KEYS[i * 2 + 1], ARGV[a + 2]))
  applies[i] = not (seen and seen > now - tonumber(ARGV[a + 3]))
  if applies[i] then
    local limit, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i * 2], '-inf', now - window)
    if redis.call('ZCARD', KEYS[i * 2]) >= limit then
      local oldest = redis.call('ZRANGE', KEYS[i * 2], 0, 0, 'WITHSCORES')
      return {i, tonumber(oldest[2]) + window - now}
    end
  end
end
for i = 1, n do
  if applies[i] then
    redis.call('ZADD', KEYS[i * 2], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i * 2], tonumber(ARGV[3 + (i - 1) * 4 + 1]))
  end
end
return {-1, 0}
`;

/**
 * KEYS: failures hash, lock hash. ARGV: member, threshold, lock ms. Returns 1 when this
 * failure locked the member. Failure counts expire lock ms after the last failure of any member.
 */
const FAIL_LUA = `
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
if n < tonumber(ARGV[2]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3])) end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
`;

/**
 * KEYS: failures hash, recent-members set. ARGV: member, keep ms, keep at most. Clears the
 * member's failures and records it as recent (newest `keep at most`, none older than keep ms).
 */
const SUCCEED_LUA = `
redis.call('HDEL', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
`;

/** Stands in for a lock or an exemption set a gate does not have: never written, so never found. */
const NO_KEY = 'fleetwire:rl:none';

export class Limits {
  constructor(private readonly redis: Redis) {
    redis.defineCommand('fwGate', { lua: GATE_LUA });
    redis.defineCommand('fwFail', { numberOfKeys: 2, lua: FAIL_LUA });
    redis.defineCommand('fwSucceed', { numberOfKeys: 2, lua: SUCCEED_LUA });
  }

  /** Checks the lock (if any) and the windows, and records the attempt when allowed. */
  async gate(lock: Entry | null, windows: readonly Window[]): Promise<GateResult> {
    const attempt = randomUUID(); // unique across processes and hosts, so no two attempts collapse into one
    const keys = [lock?.key ?? NO_KEY, ...windows.flatMap((w) => [w.key, w.exempt?.key ?? NO_KEY])];
    const args = windows.flatMap((w) => [w.limit, w.windowMs, w.exempt?.member ?? '', w.exempt?.withinMs ?? 0]);
    const [index, retryAfterMs] = await (this.redis as unknown as LimitCommands)
      .fwGate(keys.length, ...keys, lock?.member ?? '', attempt, ...args);
    if (index < 0) return { ok: true };
    return { ok: false, blockedBy: index, retryAfterMs, locked: index === 0 && lock !== null };
  }

  /** Counts a consecutive failure of `failures.member`; true when it locked that member (`lock` has the same member). */
  async fail(failures: Entry, lockKey: string, threshold: number, lockMs: number): Promise<boolean> {
    return (await (this.redis as unknown as LimitCommands).fwFail(failures.key, lockKey, failures.member, threshold, lockMs)) === 1;
  }

  /** Clears the member's failures and remembers it as recent in `recent` (at most `keepMax` members, for `keepMs`). */
  async succeed(failures: Entry, recent: { key: string; keepMs: number; keepMax: number }): Promise<void> {
    await (this.redis as unknown as LimitCommands).fwSucceed(failures.key, recent.key, failures.member, recent.keepMs, recent.keepMax);
  }

  /** Deletes locks, failure counts and windows; true when a lock in `lockKey` was still in force. */
  async unlock(lockKey: string, others: readonly string[]): Promise<boolean> {
    const res = await this.redis.multi().hvals(lockKey).del(lockKey, ...others).exec();
    const until = (res?.[0]?.[1] as string[] | undefined) ?? [];
    return until.some((u) => Number(u) > Date.now());
  }

  /** Milliseconds left on the longest lock in force in a lock hash, 0 when none. */
  async lockRemainingMs(lockKey: string): Promise<number> {
    const until = await this.redis.hvals(lockKey);
    return Math.max(0, ...until.map((u) => Number(u) - Date.now()));
  }

  /** Events in a window now, without recording one (checked before an attempt whose failure is then recorded). */
  async count(w: Window): Promise<number> {
    return this.redis.zcount(w.key, `(${Date.now() - w.windowMs}`, '+inf');
  }

  /** Adds one event to a window without checking it (a failure, recorded once it happened). */
  async record(w: Window): Promise<void> {
    const now = Date.now();
    await this.redis.multi()
      .zremrangebyscore(w.key, '-inf', now - w.windowMs)
      .zadd(w.key, now, randomUUID())
      .pexpire(w.key, w.windowMs)
      .exec();
  }
}

interface LimitCommands {
  fwGate(numKeys: number, ...args: (string | number)[]): Promise<[number, number]>;
  fwFail(...args: (string | number)[]): Promise<number>;
  fwSucceed(...args: (string | number)[]): Promise<number>;
}
