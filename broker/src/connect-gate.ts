/**
 * Cluster-wide connection gates in Redis: failed-auth bans and connection
 * attempts per IP per window, each one atomic Lua call so a gate costs one
 * round trip per upgrade.
 */
import { redisKeys, type Redis } from '@fleetwire/common';

const GATE = `
local ban = redis.call('PTTL', KEYS[1])
if ban > 0 then return {1, ban} end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
if n > tonumber(ARGV[2]) then return {2, redis.call('PTTL', KEYS[2])} end
return {0, 0}`;

const AUTH_FAILURE = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0`;

export type GateVerdict = { ok: true } | { ok: false; why: 'banned' | 'too-many-attempts'; retryAfterS: number };

export interface GateLimits {
  connectAttemptsPerIp: number;
  connectWindowS: number;
  authFailuresBeforeBan: number;
  banS: number;
}

type GateRedis = Redis & {
  fwGate(ban: string, attempts: string, windowMs: number, limit: number): Promise<[number, number]>;
  fwAuthFailure(counter: string, ban: string, banMs: number, threshold: number): Promise<number>;
};

export class ConnectGate {
  private readonly redis: GateRedis;

  constructor(redis: Redis, private readonly limits: GateLimits) {
    redis.defineCommand('fwGate', { numberOfKeys: 2, lua: GATE });
    redis.defineCommand('fwAuthFailure', { numberOfKeys: 2, lua: AUTH_FAILURE });
    this.redis = redis as GateRedis;
  }

  async check(ip: string): Promise<GateVerdict> {
    const l = this.limits;
    const [kind, ttlMs] = await this.redis.fwGate(redisKeys.ipBan(ip), redisKeys.connectAttempts(ip), l.connectWindowS * 1000, l.connectAttemptsPerIp);
    if (kind === 0) return { ok: true };
    return { ok: false, why: kind === 1 ? 'banned' : 'too-many-attempts', retryAfterS: Math.max(1, Math.ceil(ttlMs / 1000)) };
  }

  /** Records a failed authentication; true when this one started a ban. */
  async authFailed(ip: string): Promise<boolean> {
    const l = this.limits;
    return (await this.redis.fwAuthFailure(redisKeys.authFailures(ip), redisKeys.ipBan(ip), l.banS * 1000, l.authFailuresBeforeBan)) === 1;
  }
}
