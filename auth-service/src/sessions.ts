/**
 * Refresh tokens: opaque, stored as digests, rotated on every use. Tokens of
 * one login form a session (a family). Presenting a token that was already
 * rotated means it was copied, so the whole session is revoked.
 *
 * A session remembers the user's token generation at its login; a password change
 * sets a floor (`sessions_from_gen` on the user) below which sessions are void. A
 * rotation reads the user's role and current generation in the same step, so the
 * access token signed with them cannot carry a role that was already replaced.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { redisKeys, type UserRole } from '@fleetwire/common';
import { authScripts } from './redis-scripts.js';
import { digest, newSecret } from './secrets.js';

export const REFRESH_PREFIX = 'fwr_';

export type RotateResult =
  | { kind: 'ok'; token: string; sessionId: string; userId: string; role: UserRole; tokenGen: number }
  | { kind: 'reused'; sessionId: string; userId: string }
  | { kind: 'invalid' };

export class SessionStore {
  private readonly scripts: SessionScripts;

  constructor(private readonly redis: Redis, private readonly ttlMs: number) {
    this.scripts = authScripts<SessionScripts>(redis);
  }

  /** A new session id; the caller may sign its access token while start() writes. */
  newId(): string {
    return randomUUID();
  }

  /** Starts a session for a fresh login at the user's token generation `tokenGen`; returns its first refresh token. */
  async start(userId: string, sessionId: string, tokenGen: number): Promise<string> {
    const token = newSecret(REFRESH_PREFIX);
    await this.redis.multi()
      .hset(redisKeys.sessionPrefix + sessionId, { user_id: userId, created_at: String(Date.now()), gen: String(tokenGen) })
      .pexpire(redisKeys.sessionPrefix + sessionId, this.ttlMs)
      .hset(redisKeys.refreshToken(digest(token)), { sid: sessionId, user_id: userId, used: '0' })
      .pexpire(redisKeys.refreshToken(digest(token)), this.ttlMs)
      .sadd(redisKeys.userSessions(userId), sessionId)
      .pexpire(redisKeys.userSessions(userId), this.ttlMs)
      .exec();
    return token;
  }

  async rotate(presented: string): Promise<RotateResult> {
    if (!presented.startsWith(REFRESH_PREFIX) || presented.length > 200) return { kind: 'invalid' };
    const next = newSecret(REFRESH_PREFIX);
    const [kind, sessionId, userId, role, gen] = await this.scripts.rotateRefresh(
      redisKeys.refreshToken(digest(presented)), redisKeys.refreshToken(digest(next)), redisKeys.sessionPrefix, this.ttlMs,
      redisKeys.user(''), redisKeys.userTokenGen(''),
    );
    if (kind === 'ok') return { kind, token: next, sessionId: sessionId!, userId: userId!, role: role as UserRole, tokenGen: Number(gen) };
    if (kind === 'reused') return { kind, sessionId: sessionId!, userId: userId! };
    return { kind: 'invalid' };
  }

  async end(sessionId: string): Promise<void> {
    await this.redis.del(redisKeys.sessionPrefix + sessionId);
  }

  /** Deletes every session of a user (after a password change or reset, which already voided them; or a deletion). */
  async endAll(userId: string): Promise<number> {
    const ids = await this.redis.smembers(redisKeys.userSessions(userId));
    if (ids.length === 0) return 0;
    const ended = await this.redis.del(...ids.map((id) => redisKeys.sessionPrefix + id));
    await this.redis.del(redisKeys.userSessions(userId));
    return ended;
  }
}

interface SessionScripts {
  /** lua/rotate-refresh.lua */
  rotateRefresh(...args: (string | number)[]): Promise<[string, string?, string?, string?, string?]>;
}
