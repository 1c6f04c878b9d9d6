/**
 * Users in Redis: one hash per user, an email index (by digest, so emails do
 * not appear in key names), a creation-ordered index and the set of accounts
 * still on legacy hashes.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { redisKeys, type UserRole } from '@fleetwire/common';
import { digest } from './secrets.js';
import { isLegacyHash } from './passwords.js';
import { authScripts } from './redis-scripts.js';

export interface User {
  id: string;
  email: string;
  role: UserRole;
  created_at: number;
  updated_at: number;
  password_changed_at: number;
  created_by: string;
}

export interface UserWithHash extends User { password_hash: string }

export function normalizeEmail(email: string): string {
  return email.trim().toLowerCase();
}

export function emailDigest(email: string): string {
  return digest(normalizeEmail(email));
}

/** What a login needs, read in one step: the user (role included), its hash, and its token generation. */
export interface LoginRecord { user: UserWithHash; tokenGen: number }

export class UserStore {
  private readonly scripts: UserScripts;

  constructor(private readonly redis: Redis) {
    this.scripts = authScripts<UserScripts>(redis);
  }

  /** Creates the user with an already computed hash; null when the email is taken. */
  async create(input: { email: string; role: UserRole; passwordHash: string; createdBy: string }): Promise<User | null> {
    const now = Date.now();
    const user: UserWithHash = {
      id: randomUUID(), email: normalizeEmail(input.email), role: input.role, created_at: now, updated_at: now,
      password_changed_at: now, created_by: input.createdBy, password_hash: input.passwordHash,
    };
    const fields = Object.entries(user).flatMap(([k, v]) => [k, String(v)]);
    const created = await this.scripts.createUser(
      redisKeys.userByEmail(emailDigest(user.email)), redisKeys.user(user.id), redisKeys.users, redisKeys.legacyUsers, redisKeys.adminUsers,
      user.id, now, isLegacyHash(input.passwordHash) ? '1' : '0', user.role, ...fields,
    );
    return created === 1 ? publicUser(user) : null;
  }

  async byEmail(email: string): Promise<UserWithHash | null> {
    return (await this.loginRecord(email))?.user ?? null;
  }

  async loginRecord(email: string): Promise<LoginRecord | null> {
    const [gen = '0', ...flat] = await this.scripts.loginRecord(
      redisKeys.userByEmail(emailDigest(email)), redisKeys.user(''), redisKeys.userTokenGen(''),
    );
    const h: Record<string, string> = {};
    for (let i = 0; i < flat.length; i += 2) h[flat[i]!] = flat[i + 1]!;
    const user = toUser(h);
    return user ? { user, tokenGen: Number(gen) } : null;
  }

  async byId(id: string): Promise<User | null> {
    const u = await this.byIdWithHash(id);
    return u ? publicUser(u) : null;
  }

  async byIdWithHash(id: string): Promise<UserWithHash | null> {
    return toUser(await this.redis.hgetall(redisKeys.user(id)));
  }

  /**
   * Replaces the hash. `changed` = the password itself changed (not just re-hashed): then every
   * access token and refresh session of the user ends in the same step. False when the user is gone.
   */
  async setPasswordHash(id: string, hash: string, changed: boolean): Promise<boolean> {
    const done = await this.scripts.setPassword(
      redisKeys.user(id), redisKeys.legacyUsers, redisKeys.userTokenGen(id),
      id, hash, Date.now(), changed ? '1' : '0', isLegacyHash(hash) ? '1' : '0',
    );
    return done === 1;
  }

  /** 'missing' | 'last-admin' | 'unchanged' | 'changed' (the user's tokens are then revoked) */
  async setRole(id: string, role: UserRole): Promise<string> {
    return this.scripts.setUserRole(redisKeys.user(id), redisKeys.adminUsers, redisKeys.userTokenGen(id), id, role, Date.now());
  }

  /** 'missing' | 'last-admin' | 'ok'. The user's tokens are revoked; the revocation is kept `tokenLifetimeMs`. */
  async delete(user: User, tokenLifetimeMs: number): Promise<string> {
    return this.scripts.deleteUser(
      redisKeys.user(user.id), redisKeys.userByEmail(emailDigest(user.email)), redisKeys.users, redisKeys.legacyUsers, redisKeys.adminUsers,
      redisKeys.userTokenGen(user.id), user.id, tokenLifetimeMs,
    );
  }

  async list(offset: number, limit: number): Promise<{ users: User[]; total: number }> {
    const [ids, total] = await Promise.all([
      this.redis.zrange(redisKeys.users, offset, offset + limit - 1),
      this.redis.zcard(redisKeys.users),
    ]);
    const users = await Promise.all(ids.map((id) => this.byId(id)));
    return { users: users.filter((u): u is User => u !== null), total };
  }

  count(): Promise<number> {
    return this.redis.zcard(redisKeys.users);
  }

  legacyCount(): Promise<number> {
    return this.redis.scard(redisKeys.legacyUsers);
  }
}

function toUser(h: Record<string, string>): UserWithHash | null {
  if (!h.id) return null;
  return {
    id: h.id, email: h.email!, role: h.role as UserRole, password_hash: h.password_hash!, created_by: h.created_by ?? '',
    created_at: Number(h.created_at), updated_at: Number(h.updated_at), password_changed_at: Number(h.password_changed_at),
  };
}

function publicUser(u: UserWithHash): User {
  const { password_hash: _omit, ...rest } = u;
  return rest;
}

interface UserScripts {
  /** lua/create-user.lua */
  createUser(...args: (string | number)[]): Promise<number>;
  /** lua/set-user-role.lua */
  setUserRole(...args: (string | number)[]): Promise<string>;
  /** lua/delete-user.lua */
  deleteUser(...args: (string | number)[]): Promise<string>;
  /** lua/set-password.lua */
  setPassword(...args: (string | number)[]): Promise<number>;
  /** lua/login-record.lua */
  loginRecord(...args: string[]): Promise<string[]>;
}
