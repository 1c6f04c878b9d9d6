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
import { authScripts } from './redis-scripts.js';

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

/** Stands in for a lock or an exemption set a gate does not have: never written, so never found. */
const NO_KEY = 'fleetwire:rl:none';

export class Limits {
  private readonly scripts: LimitScripts;

  constructor(private readonly redis: Redis) {
    this.scripts = authScripts<LimitScripts>(redis);
  }

  /** Checks the lock (if any) and the windows, and records the attempt when allowed. */
  async gate(lock: Entry | null, windows: readonly Window[]): Promise<GateResult> {
    const attempt = randomUUID(); // unique across processes and hosts, so no two attempts collapse into one
    const keys = [lock?.key ?? NO_KEY, ...windows.flatMap((w) => [w.key, w.exempt?.key ?? NO_KEY])];
    const args = windows.flatMap((w) => [w.limit, w.windowMs, w.exempt?.member ?? '', w.exempt?.withinMs ?? 0]);
    const [index, retryAfterMs] = await this.scripts
      .gate(keys.length, ...keys, lock?.member ?? '', attempt, ...args);
    if (index < 0) return { ok: true };
    return { ok: false, blockedBy: index, retryAfterMs, locked: index === 0 && lock !== null };
  }

  /** Counts a consecutive failure of `failures.member`; true when it locked that member (`lock` has the same member). */
  async fail(failures: Entry, lockKey: string, threshold: number, lockMs: number): Promise<boolean> {
    return (await this.scripts.fail(failures.key, lockKey, failures.member, threshold, lockMs)) === 1;
  }

  /** Clears the member's failures and remembers it as recent in `recent` (at most `keepMax` members, for `keepMs`). */
  async succeed(failures: Entry, recent: { key: string; keepMs: number; keepMax: number }): Promise<void> {
    await this.scripts.succeed(failures.key, recent.key, failures.member, recent.keepMs, recent.keepMax);
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

interface LimitScripts {
  /** lua/gate.lua: the key count comes first. */
  gate(numKeys: number, ...args: (string | number)[]): Promise<[number, number]>;
  /** lua/fail.lua */
  fail(...args: (string | number)[]): Promise<number>;
  /** lua/succeed.lua */
  succeed(...args: (string | number)[]): Promise<number>;
}
