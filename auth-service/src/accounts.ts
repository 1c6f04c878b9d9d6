/**
 * People's accounts: login, refresh, logout, password change and reset, user
 * creation and unlock. Every login limit is checked before a password is
 * hashed, and unknown accounts cost and answer exactly what wrong passwords do.
 */
import type { Redis } from 'ioredis';
import {
  FleetwireError, jwtContract, publishRevocation, redisKeys, revokeSession, revokeToken, signToken,
  type AuditLog, type FleetwireClaims, type KeyRing, type Logger, type UserRole,
} from '@fleetwire/common';
import type { AuthConfig } from './config.js';
import type { Entry, GateResult, Limits, Window } from './limits.js';
import type { AuthMetrics } from './metrics.js';
import type { PasswordHasher } from './passwords.js';
import type { PasswordPolicy } from './password-policy.js';
import type { MessageSender } from './senders.js';
import { digest, newSecret } from './secrets.js';
import type { SessionStore } from './sessions.js';
import { emailDigest, normalizeEmail, type User, type UserStore } from './users.js';

export const RESET_PREFIX = 'fwp_';
/** Reset messages per address per hour; more are silently dropped (the answer stays 202). */
const RESETS_PER_ACCOUNT_PER_HOUR = 3;
/** Addresses remembered per account as its owner's (the most recent ones), exempt from its per-account window. */
const KNOWN_ADDRESSES_PER_ACCOUNT = 20;

/** The 429 a closed gate answers: locked account, or a full window. */
function refusal(gate: Extract<GateResult, { ok: false }>): FleetwireError {
  return new FleetwireError(gate.locked ? 'AUTH_ACCOUNT_LOCKED' : 'AUTH_RATE_LIMITED', undefined, { retryAfterS: gate.retryAfterMs / 1000 });
}

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type: 'Bearer';
  expires_in: number;
}

export interface AccountsDeps {
  config: AuthConfig;
  redis: Redis;
  keys: KeyRing;
  hasher: PasswordHasher;
  policy: PasswordPolicy;
  users: UserStore;
  sessions: SessionStore;
  limits: Limits;
  audit: AuditLog;
  sender: MessageSender;
  metrics: AuthMetrics;
  log: Logger;
}

export class Accounts {
  /** Reset requests finish after the 202 (so timing says nothing); tracked for shutdown and tests. */
  private readonly background = new Set<Promise<void>>();

  constructor(private readonly d: AccountsDeps) {}

  async login(email: string, password: string, ip: string): Promise<TokenPair> {
    const { config, limits, users, hasher, metrics, audit } = this.d;
    const ed = emailDigest(email);
    // A refused attempt costs this one script call: no lookup, no hash.
    const gate = await limits.gate(this.lockOf(ed, ip), [this.perIp(redisKeys.loginPerIp(ip)), this.perAccount(ed, ip)]);
    if (!gate.ok) {
      metrics.logins.inc({ outcome: gate.locked ? 'locked' : 'rate_limited' });
      throw refusal(gate);
    }

    const timer = metrics.loginSeconds.startTimer();
    // The user and its token generation in one step: the session and token are signed at the
    // generation of the password checked here, so a change while we hash voids them.
    const found = await users.loginRecord(email);
    const user = found?.user ?? null;
    let outcome = { ok: false, rehash: false };
    if (user) outcome = await hasher.verify(user.password_hash, password);
    else await hasher.dummyVerify(password);

    if (!user || !outcome.ok) {
      const locked = await this.countFailure(ed, ip);
      timer();
      metrics.logins.inc({ outcome: 'failed' });
      await audit.record({ type: 'login.failed', actor: 'anonymous', subject: user ? `user:${user.id}` : `email:${normalizeEmail(email)}`, ip });
      if (locked) {
        metrics.lockouts.inc();
        await audit.record({ type: 'account.locked', actor: 'system', subject: user ? `user:${user.id}` : `email:${normalizeEmail(email)}`, ip, detail: { lock_s: config.lockoutS, scope: 'address' } });
      }
      throw new FleetwireError('AUTH_LOGIN_FAILED');
    }

    // Independent writes, sent together.
    const [pair] = await Promise.all([
      this.startSession(user, found!.tokenGen),
      limits.succeed(this.failuresOf(ed, ip), {
        key: redisKeys.loginKnownAddresses(ed), keepMs: config.loginKnownAddressS * 1000, keepMax: KNOWN_ADDRESSES_PER_ACCOUNT,
      }),
      audit.record({ type: 'login.succeeded', actor: `user:${user.id}`, subject: `user:${user.id}`, ip }),
      outcome.rehash ? this.rehash(user.id, user.password_hash, password) : undefined,
    ]);
    timer();
    metrics.logins.inc({ outcome: 'success' });
    return pair;
  }

  async refresh(presented: string, ip: string): Promise<TokenPair> {
    const { sessions, metrics, audit } = this.d;
    const res = await sessions.rotate(presented);
    metrics.refreshes.inc({ outcome: res.kind });
    if (res.kind === 'reused') {
      // The session's refresh tokens died in the rotation script; its access tokens end here, and so do its MQTT connections.
      await revokeSession(this.d.redis, res.sessionId, this.tokenLifetimeS());
      await audit.record({ type: 'refresh.reused', actor: 'anonymous', subject: `user:${res.userId}`, ip, outcome: 'session-revoked', detail: { session: res.sessionId } });
      throw new FleetwireError('AUTH_REFRESH_REUSED');
    }
    if (res.kind === 'invalid') throw new FleetwireError('AUTH_REFRESH_INVALID');
    const access = await this.accessToken({ id: res.userId, role: res.role }, res.sessionId, res.tokenGen);
    return { access_token: access, refresh_token: res.token, token_type: 'Bearer', expires_in: this.d.config.accessTokenTtlS };
  }

  /** Ends the caller's session: its refresh token and every access token it issued (MQTT connections close). */
  async logout(claims: FleetwireClaims, ip: string): Promise<void> {
    if (claims.sid) {
      await this.d.sessions.end(claims.sid);
      await revokeSession(this.d.redis, claims.sid, this.tokenLifetimeS());
    } else {
      await revokeToken(this.d.redis, claims.jti, claims.exp); // a token minted outside any session (development CLI)
    }
    await this.d.audit.record({ type: 'session.ended', actor: `user:${claims.sub}`, subject: `user:${claims.sub}`, ip });
  }

  async changePassword(userId: string, current: string, next: string, ip: string): Promise<void> {
    const { limits, users, hasher, policy, audit } = this.d;
    const user = await users.byIdWithHash(userId);
    if (!user) throw new FleetwireError('NOT_FOUND', 'This user no longer exists.');
    const ed = emailDigest(user.email);
    // Guessing the current password here is limited like guessing it at login.
    const gate = await limits.gate(this.lockOf(ed, ip), [this.perAccount(ed, ip)]);
    if (!gate.ok) throw refusal(gate);
    if (!(await hasher.verify(user.password_hash, current)).ok) {
      await this.countFailure(ed, ip);
      throw new FleetwireError('AUTH_PASSWORD_WRONG');
    }
    policy.check(next, user.email);
    await users.setPasswordHash(user.id, await hasher.hash(next), true);
    const ended = await this.endTokens(user.id);
    await audit.record({ type: 'password.changed', actor: `user:${user.id}`, subject: `user:${user.id}`, ip, detail: { sessions_ended: ended } });
  }

  /** Answers at once; whether a message is sent happens afterwards, the same way for every address. */
  async requestReset(email: string, ip: string): Promise<void> {
    const { limits } = this.d;
    const gate = await limits.gate(null, [this.perIp(redisKeys.resetPerIp(ip))]);
    if (!gate.ok) throw refusal(gate);
    const task = this.sendReset(email, ip).catch((err: unknown) => this.d.log.error({ err }, 'password reset request failed'));
    this.background.add(task);
    void task.finally(() => this.background.delete(task));
  }

  private async sendReset(email: string, ip: string): Promise<void> {
    const { config, redis, users, limits, sender, audit } = this.d;
    const address = normalizeEmail(email);
    const subjectOf = (u: { id: string } | null): string => (u ? `user:${u.id}` : `email:${address}`);
    const user = await users.byEmail(address);
    const perAccount: Window = { key: redisKeys.resetPerAccount(emailDigest(address)), limit: RESETS_PER_ACCOUNT_PER_HOUR, windowMs: 3_600_000 };
    if (!(await limits.gate(null, [perAccount])).ok) {
      await audit.record({ type: 'password.reset-requested', actor: 'anonymous', subject: subjectOf(user), ip, outcome: 'throttled' });
      return;
    }
    if (!user) {
      await audit.record({ type: 'password.reset-requested', actor: 'anonymous', subject: subjectOf(user), ip, outcome: 'unknown-account' });
      return;
    }
    const token = newSecret(RESET_PREFIX);
    // The issue time travels with the token: a password change after it voids the link.
    await redis.set(redisKeys.resetToken(digest(token)), `${user.id} ${Date.now()}`, 'EX', config.resetTokenTtlS);
    const link = new URL(`/reset-password?token=${encodeURIComponent(token)}`, config.publicUrl).toString();
    let outcome = 'sent';
    try {
      await sender.send({
        kind: 'password-reset', to: user.email, subject: 'Reset your Fleetwire password', link,
        text: `Someone asked to reset the password of your Fleetwire account ${user.email}.\n\n` +
          `To choose a new password, open ${link}\nor send this token to POST /v1/auth/password-reset/confirm: ${token}\n\n` +
          `The link works once and expires in ${Math.round(config.resetTokenTtlS / 60)} minutes. If it was not you, ignore this message.`,
      });
    } catch (err) {
      outcome = 'send-failed';
      this.d.log.error({ err, sender: sender.name }, 'sending a password-reset message failed');
    }
    await audit.record({ type: 'password.reset-requested', actor: 'anonymous', subject: subjectOf(user), ip, outcome });
  }

  async confirmReset(token: string, next: string, ip: string): Promise<void> {
    const { redis, users, hasher, policy, limits, audit } = this.d;
    const gate = await limits.gate(null, [this.perIp(redisKeys.resetPerIp(ip))]);
    if (!gate.ok) throw refusal(gate);
    if (!token.startsWith(RESET_PREFIX) || token.length > 200) throw new FleetwireError('AUTH_RESET_INVALID');
    const key = redisKeys.resetToken(digest(token));
    const stored = (await redis.get(key)) ?? '';
    const [userId = '', issuedAt = '0'] = stored.split(' ');
    const user = await users.byId(userId);
    // Links issued before the password last changed (another link, or a change) are void.
    if (!user || Number(issuedAt) < user.password_changed_at) throw new FleetwireError('AUTH_RESET_INVALID');
    // The policy is checked before the token is used up, so a refused password does not cost the link.
    policy.check(next, user.email);
    const hash = await hasher.hash(next);
    if ((await redis.getdel(key)) !== stored) throw new FleetwireError('AUTH_RESET_INVALID');
    await users.setPasswordHash(user.id, hash, true);
    await this.clearFailures(user.email);
    const ended = await this.endTokens(user.id);
    await audit.record({ type: 'password.reset-completed', actor: `user:${user.id}`, subject: `user:${user.id}`, ip, detail: { sessions_ended: ended } });
  }

  async createUser(input: { email: string; password: string; role: UserRole }, actor: string, ip?: string): Promise<User> {
    this.d.policy.check(input.password, input.email);
    const user = await this.d.users.create({ email: input.email, role: input.role, passwordHash: await this.d.hasher.hash(input.password), createdBy: actor });
    if (!user) throw new FleetwireError('AUTH_USER_EXISTS');
    await this.d.audit.record({ type: 'user.created', actor, subject: `user:${user.id}`, ...(ip ? { ip } : {}), detail: { role: user.role } });
    return user;
  }

  /** Creates the first admin from FLEETWIRE_ADMIN_EMAIL/PASSWORD when there is no user yet. */
  async bootstrapAdmin(): Promise<User | null> {
    const { config, users } = this.d;
    if (!config.adminEmail || (await users.count()) > 0) return null;
    try {
      return await this.createUser({ email: config.adminEmail, password: config.adminPassword, role: 'admin' }, 'system');
    } catch (err) {
      if (err instanceof FleetwireError && err.code === 'AUTH_USER_EXISTS') return null; // another node won the race
      if (err instanceof FleetwireError && err.code === 'AUTH_PASSWORD_POLICY') {
        throw new FleetwireError('CONFIG_INVALID', `FLEETWIRE_ADMIN_PASSWORD: ${err.message}`);
      }
      throw err;
    }
  }

  /** A new role applies at once: the user's older tokens are revoked; the next refresh carries the new role. */
  async changeRole(userId: string, role: UserRole, actor: string, ip?: string): Promise<User> {
    const before = await this.d.users.byId(userId);
    if (!before) throw new FleetwireError('NOT_FOUND', `No user ${userId}.`);
    const res = await this.d.users.setRole(userId, role);
    if (res === 'missing') throw new FleetwireError('NOT_FOUND', `No user ${userId}.`);
    if (res === 'last-admin') throw new FleetwireError('AUTH_LAST_ADMIN');
    // setRole revoked the tokens (a new generation); the brokers close the live connections.
    if (res === 'changed') await publishRevocation(this.d.redis, { kind: 'user', id: userId });
    await this.d.audit.record({ type: 'user.role-changed', actor, subject: `user:${userId}`, ...(ip ? { ip } : {}), detail: { from: before.role, to: role } });
    return (await this.d.users.byId(userId))!;
  }

  /** Removes the account, ends its sessions, and revokes its tokens (the broker disconnects it). */
  async deleteUser(userId: string, actor: string, ip?: string): Promise<void> {
    const user = await this.d.users.byId(userId);
    if (!user) throw new FleetwireError('NOT_FOUND', `No user ${userId}.`);
    const res = await this.d.users.delete(user, this.tokenLifetimeS() * 1000);
    if (res === 'missing') throw new FleetwireError('NOT_FOUND', `No user ${userId}.`);
    if (res === 'last-admin') throw new FleetwireError('AUTH_LAST_ADMIN');
    const ended = await this.endTokens(userId);
    await this.d.audit.record({ type: 'user.deleted', actor, subject: `user:${userId}`, ...(ip ? { ip } : {}), detail: { email: user.email, role: user.role, sessions_ended: ended } });
  }

  /**
   * After the user's token generation was raised (password change or reset, deletion): the
   * already void sessions are deleted and the brokers close the user's live connections.
   * Returns how many sessions were deleted.
   */
  private async endTokens(userId: string): Promise<number> {
    const ended = await this.d.sessions.endAll(userId);
    await publishRevocation(this.d.redis, { kind: 'user', id: userId });
    return ended;
  }

  /** How long a user's access token can live: how long a revocation must be remembered. */
  private tokenLifetimeS(): number {
    return this.d.config.accessTokenTtlS + jwtContract.clock_tolerance_s;
  }

  async unlock(userId: string, actor: string, ip?: string): Promise<{ was_locked: boolean }> {
    const user = await this.d.users.byId(userId);
    if (!user) throw new FleetwireError('NOT_FOUND', `No user ${userId}.`);
    const wasLocked = await this.clearFailures(user.email);
    await this.d.audit.record({ type: 'account.unlocked', actor, subject: `user:${user.id}`, ...(ip ? { ip } : {}), detail: { was_locked: wasLocked } });
    return { was_locked: wasLocked };
  }

  /** The longest lock in force on any address for this account, in seconds (0: none). */
  async lockRemainingS(user: User): Promise<number> {
    return Math.ceil((await this.d.limits.lockRemainingMs(redisKeys.loginLocks(emailDigest(user.email)))) / 1000);
  }

  /** A sliding window of LOGIN_PER_IP attempts per client address (logins; reset requests and confirmations). */
  private perIp(key: string): Window {
    return { key, limit: this.d.config.loginPerIp, windowMs: this.d.config.loginIpWindowS * 1000 };
  }

  /**
   * A sliding window of LOGIN_PER_ACCOUNT password attempts per email (logins, password
   * changes) from addresses other than those the account logged in from within
   * LOGIN_KNOWN_ADDRESS_S: it bounds guessing from many addresses, and strangers who fill
   * it do not shut out the owner's usual addresses.
   */
  private perAccount(ed: string, ip: string): Window {
    const { config } = this.d;
    return {
      key: redisKeys.loginPerAccount(ed), limit: config.loginPerAccount, windowMs: config.loginAccountWindowS * 1000,
      exempt: { key: redisKeys.loginKnownAddresses(ed), member: ip, withinMs: config.loginKnownAddressS * 1000 },
    };
  }

  /** The lock of one account for one address: failures elsewhere never lock the owner out. */
  private lockOf(ed: string, ip: string): Entry {
    return { key: redisKeys.loginLocks(ed), member: ip };
  }

  private failuresOf(ed: string, ip: string): Entry {
    return { key: redisKeys.loginFailures(ed), member: ip };
  }

  /** One more consecutive wrong password for this email from this address; true when it locked the address out of the account. */
  private countFailure(ed: string, ip: string): Promise<boolean> {
    const { config, limits } = this.d;
    return limits.fail(this.failuresOf(ed, ip), redisKeys.loginLocks(ed), config.lockoutFailures, config.lockoutS * 1000);
  }

  /**
   * Lifts every address's lock on the account and forgets the failure counts and the
   * per-account window, so its user can log in at once; true when a lock was in force.
   */
  private clearFailures(email: string): Promise<boolean> {
    const ed = emailDigest(email);
    return this.d.limits.unlock(redisKeys.loginLocks(ed), [redisKeys.loginFailures(ed), redisKeys.loginPerAccount(ed)]);
  }

  /** Waits for reset requests still being handled. */
  async settled(): Promise<void> {
    await Promise.all([...this.background]);
  }

  private async startSession(user: User, tokenGen: number): Promise<TokenPair> {
    const sessionId = this.d.sessions.newId();
    const [refreshToken, accessToken] = await Promise.all([this.d.sessions.start(user.id, sessionId, tokenGen), this.accessToken(user, sessionId, tokenGen)]);
    return { access_token: accessToken, refresh_token: refreshToken, token_type: 'Bearer', expires_in: this.d.config.accessTokenTtlS };
  }

  /** `role` and `tokenGen` must have been read in one step, so a token never pairs an old role with a new generation. */
  private accessToken(user: Pick<User, 'id' | 'role'>, sessionId: string, tokenGen: number): Promise<string> {
    return signToken(this.d.keys.signer, {
      sub: user.id, typ: 'user', role: user.role, ttlSeconds: this.d.config.accessTokenTtlS, extra: { sid: sessionId, gen: tokenGen },
    });
  }

  private async rehash(userId: string, oldHash: string, password: string): Promise<void> {
    await this.d.users.setPasswordHash(userId, await this.d.hasher.hash(password), false);
    const p = this.d.hasher.params;
    await this.d.audit.record({
      type: 'password.rehashed', actor: 'system', subject: `user:${userId}`,
      detail: { from: oldHash.startsWith('$argon2') ? 'argon2id-older-parameters' : 'legacy-sha256', to: `argon2id m=${p.memoryKib},t=${p.timeCost},p=${p.parallelism}` },
    });
  }
}
