/**
 * Cluster-wide connection gates in Redis: failed-auth bans and connection
 * attempts per IP per window, each one atomic Lua call so a gate costs one
 * round trip per upgrade.
 */
import { redisKeys, type Redis } from '@fleetwire/common';
import { brokerScripts } from './redis-scripts.js';

export type GateVerdict = { ok: true } | { ok: false; why: 'banned' | 'too-many-attempts'; retryAfterS: number };

export interface GateLimits {
  connectAttemptsPerIp: number;
  connectWindowS: number;
  authFailuresBeforeBan: number;
  banS: number;
}

interface GateScripts {
  /** lua/gate.lua */
  gate(ban: string, attempts: string, windowMs: number, limit: number): Promise<[number, number]>;
  /** lua/auth-failure.lua */
  authFailure(counter: string, ban: string, banMs: number, threshold: number): Promise<number>;
}

export class ConnectGate {
  private readonly scripts: GateScripts;

  constructor(redis: Redis, private readonly limits: GateLimits) {
    this.scripts = brokerScripts<GateScripts>(redis);
  }

  async check(ip: string): Promise<GateVerdict> {
    const l = this.limits;
    const [kind, ttlMs] = await this.scripts.gate(redisKeys.ipBan(ip), redisKeys.connectAttempts(ip), l.connectWindowS * 1000, l.connectAttemptsPerIp);
    if (kind === 0) return { ok: true };
    return { ok: false, why: kind === 1 ? 'banned' : 'too-many-attempts', retryAfterS: Math.max(1, Math.ceil(ttlMs / 1000)) };
  }

  /** Records a failed authentication; true when this one started a ban. */
  async authFailed(ip: string): Promise<boolean> {
    const l = this.limits;
    return (await this.scripts.authFailure(redisKeys.authFailures(ip), redisKeys.ipBan(ip), l.banS * 1000, l.authFailuresBeforeBan)) === 1;
  }
}
