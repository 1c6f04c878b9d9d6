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

/** KEYS: email index, user hash, users index, legacy set, admin set. ARGV: id, created_at, legacy flag, role, field/value pairs. */
const CREATE_LUA = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[1])
if ARGV[3] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
if ARGV[4] == 'admin' then redis.call('SADD', KEYS[5], ARGV[1]) end
return 1
`;

/**
 * KEYS: user hash, admin set, token generation. ARGV: id, new role, updated_at. Refuses to
 * demote the last admin, atomically, so two admins demoting each other cannot leave none.
 * A new role raises the token generation in the same step: every token signed with the
 * old role is revoked, and none can be signed with it afterwards (role and generation are
 * read together when signing).
 */
const SET_ROLE_LUA = `
local role = redis.call('HGET', KEYS[1], 'role')
if not role then return 'missing' end
if role == ARGV[2] then return 'unchanged' end
if role == 'admin' and redis.call('SCARD', KEYS[2]) <= 1 then return 'last-admin' end
redis.call('HSET', KEYS[1], 'role', ARGV[2], 'updated_at', ARGV[3])
if ARGV[2] == 'admin' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SREM', KEYS[2], ARGV[1]) end
redis.call('INCR', KEYS[3])
return 'changed'
`;

/**
 * KEYS: user hash, email index, users index, legacy set, admin set, token generation.
 * ARGV: id, how long the raised generation must outlive the user (ms: the longest token lifetime).
 */
const DELETE_LUA = `
local role = redis.call('HGET', KEYS[1], 'role')
if not role then return 'missing' end
if role == 'admin' and redis.call('SCARD', KEYS[5]) <= 1 then return 'last-admin' end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('INCR', KEYS[6])
redis.call('PEXPIRE', KEYS[6], tonumber(ARGV[2]))
return 'ok'
`;

/**
 * KEYS: user hash, legacy set, token generation. ARGV: id, hash, updated_at, changed (1/0), legacy (1/0).
 * A changed password raises the token generation and makes it the floor for sessions: the
 * user's access tokens and refresh sessions end in the same step as the old password, even
 * a session a login starts after having checked the old password. A re-hash of the same
 * password changes neither. Returns 0 when the user no longer exists (nothing written).
 */
const SET_PASSWORD_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[2], 'updated_at', ARGV[3])
if ARGV[4] == '1' then
  local gen = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[1], 'password_changed_at', ARGV[3], 'sessions_from_gen', gen)
end
if ARGV[5] == '1' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
`;

/** KEYS: email index. ARGV: user key prefix, token generation key prefix. The generation, then the user's fields. */
const LOGIN_RECORD_LUA = `
local id = redis.call('GET', KEYS[1])
if not id then return {} end
local fields = redis.call('HGETALL', ARGV[1] .. id)
table.insert(fields, 1, redis.call('GET', ARGV[2] .. id) or '0')
return fields
`;

/** What a login needs, read in one step: the user (role included), its hash, and its token generation. */
export interface LoginRecord { user: UserWithHash; tokenGen: number }

export class UserStore {
  constructor(private readonly redis: Redis) {
    redis.defineCommand('fwCreateUser', { numberOfKeys: 5, lua: CREATE_LUA });
    redis.defineCommand('fwSetUserRole', { numberOfKeys: 3, lua: SET_ROLE_LUA });
    redis.defineCommand('fwDeleteUser', { numberOfKeys: 6, lua: DELETE_LUA });
    redis.defineCommand('fwSetPassword', { numberOfKeys: 3, lua: SET_PASSWORD_LUA });
    redis.defineCommand('fwLoginRecord', { numberOfKeys: 1, lua: LOGIN_RECORD_LUA });
  }

  /** Creates the user with an already computed hash; null when the email is taken. */
  async create(input: { email: string; role: UserRole; passwordHash: string; createdBy: string }): Promise<User | null> {
    const now = Date.now();
    const user: UserWithHash = {
      id: randomUUID(), email: normalizeEmail(input.email), role: input.role, created_at: now, updated_at: now,
      password_changed_at: now, created_by: input.createdBy, password_hash: input.passwordHash,
    };
    const fields = Object.entries(user).flatMap(([k, v]) => [k, String(v)]);
    const created = await (this.redis as unknown as UserCommands).fwCreateUser(
      redisKeys.userByEmail(emailDigest(user.email)), redisKeys.user(user.id), redisKeys.users, redisKeys.legacyUsers, redisKeys.adminUsers,
      user.id, now, isLegacyHash(input.passwordHash) ? '1' : '0', user.role, ...fields,
    );
    return created === 1 ? publicUser(user) : null;
  }

  async byEmail(email: string): Promise<UserWithHash | null> {
    return (await this.loginRecord(email))?.user ?? null;
  }

  async loginRecord(email: string): Promise<LoginRecord | null> {
    const [gen = '0', ...flat] = await (this.redis as unknown as UserCommands).fwLoginRecord(
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
    const done = await (this.redis as unknown as UserCommands).fwSetPassword(
      redisKeys.user(id), redisKeys.legacyUsers, redisKeys.userTokenGen(id),
      id, hash, Date.now(), changed ? '1' : '0', isLegacyHash(hash) ? '1' : '0',
    );
    return done === 1;
  }

  /** 'missing' | 'last-admin' | 'unchanged' | 'changed' (the user's tokens are then revoked) */
  async setRole(id: string, role: UserRole): Promise<string> {
    return (this.redis as unknown as UserCommands).fwSetUserRole(redisKeys.user(id), redisKeys.adminUsers, redisKeys.userTokenGen(id), id, role, Date.now());
  }

  /** 'missing' | 'last-admin' | 'ok'. The user's tokens are revoked; the revocation is kept `tokenLifetimeMs`. */
  async delete(user: User, tokenLifetimeMs: number): Promise<string> {
    return (this.redis as unknown as UserCommands).fwDeleteUser(
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

interface UserCommands {
  fwCreateUser(...args: (string | number)[]): Promise<number>;
  fwSetUserRole(...args: (string | number)[]): Promise<string>;
  fwDeleteUser(...args: (string | number)[]): Promise<string>;
  fwSetPassword(...args: (string | number)[]): Promise<number>;
  fwLoginRecord(...args: string[]): Promise<string[]>;
}
