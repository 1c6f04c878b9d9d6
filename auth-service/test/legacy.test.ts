import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importLegacyUsers } from '../src/index.js';
import { metricValue, startAuth, type TestAuth } from './helpers.js';

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

let t: TestAuth;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 });
});
afterAll(async () => t.close());

const storedHash = async (email: string): Promise<string> => (await t.auth.users.byEmail(email))!.password_hash;
const legacyCount = async (): Promise<number> => {
  const admin = await t.tokenFor('admin');
  return ((await t.api('GET', '/v1/spec', { token: admin })).body['auth-service'] as { accounts: { legacy_password_hashes: number } }).accounts.legacy_password_hashes;
};

describe('legacy import', () => {
  it('imports nothing when any line is bad, and names every bad line', async () => {
    const file = [
      JSON.stringify({ email: 'ok@example.com', password_hash: sha('old-password-1') }),
      '{not json',
      JSON.stringify({ email: 'bad-hash@example.com', password_hash: 'md5$abc' }),
      JSON.stringify({ email: 'no-at-sign', password_hash: sha('x') }),
      JSON.stringify({ email: 'role@example.com', password_hash: sha('x'), role: 'root' }),
      JSON.stringify({ email: 'OK@example.com', password_hash: sha('x') }),
    ].join('\n');
    const report = await importLegacyUsers(file, t.auth.users, t.auth.audit, 'test');
    expect(report.imported).toBe(0);
    expect(report.errors.map((e) => e.line)).toEqual([2, 3, 4, 5, 6]);
    expect(report.errors[5 - 2]!.message).toContain('role must be one of');
    expect(await t.auth.users.byEmail('ok@example.com')).toBeNull();
  });

  it('imports bare and salted SHA-256 accounts, skips existing emails, and counts them as legacy', async () => {
    const file = [
      JSON.stringify({ email: 'bare@example.com', password_hash: sha('bare-old-password'), role: 'operator' }),
      JSON.stringify({ email: 'salted@example.com', password_hash: `sha256$pepper9$${sha('pepper9salted-old-password')}` }),
      JSON.stringify({ email: 'admin@example.com', password_hash: sha('whatever') }),
      '',
    ].join('\n');
    const report = await importLegacyUsers(file, t.auth.users, t.auth.audit, 'test');
    expect(report).toEqual({ imported: 2, skipped_existing: 1, errors: [] });
    expect((await t.auth.users.byEmail('bare@example.com'))!.role).toBe('operator');
    expect((await t.auth.users.byEmail('salted@example.com'))!.role).toBe('viewer');
    expect(await legacyCount()).toBe(2);
    expect(await metricValue(t.metrics, 'fleetwire_auth_legacy_password_accounts')).toBe(2);
  });

  it('a legacy hash verifies at login and is replaced by argon2id on the first success; no reset needed', async () => {
    expect((await t.login('bare@example.com', 'wrong-old-password')).status).toBe(401);
    expect(await storedHash('bare@example.com')).toBe(sha('bare-old-password'));

    expect((await t.login('bare@example.com', 'bare-old-password')).status).toBe(200);
    expect(await storedHash('bare@example.com')).toMatch(/^\$argon2id\$/);
    expect((await t.login('salted@example.com', 'salted-old-password')).status).toBe(200);
    expect(await storedHash('salted@example.com')).toMatch(/^\$argon2id\$/);

    expect(await legacyCount()).toBe(0);
    expect(await metricValue(t.metrics, 'fleetwire_auth_legacy_password_accounts')).toBe(0);
    // The same password still works against the new hash.
    expect((await t.login('bare@example.com', 'bare-old-password')).status).toBe(200);
    const { records } = await t.auth.audit.query({ type: 'password.rehashed', limit: 5 });
    expect(records.map((r) => r.detail?.from)).toContain('legacy-sha256');
  });
});

describe('argon2id parameter upgrade', () => {
  it('re-hashes at the new parameters when a user logs in after they were raised', async () => {
    await t.auth.accounts.createUser({ email: 'upgrade@example.com', password: 'upgrade-long-passphrase', role: 'viewer' }, 'test');
    expect(await storedHash('upgrade@example.com')).toContain('m=4096,p=1,t=1');

    const stronger = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000, argon2MemoryKib: 8192, argon2TimeCost: 2 }, { dataDir: t.dataDir });
    try {
      expect((await stronger.login('upgrade@example.com', 'upgrade-long-passphrase')).status).toBe(200);
      expect(await storedHash('upgrade@example.com')).toContain('m=8192,p=1,t=2');
      const { records } = await stronger.auth.audit.query({ type: 'password.rehashed', subject: `user:${(await t.auth.users.byEmail('upgrade@example.com'))!.id}`, limit: 1 });
      expect(records[0]?.detail).toMatchObject({ from: 'argon2id-older-parameters', to: 'argon2id m=8192,t=2,p=1' });
    } finally {
      await stronger.close();
    }
  });
});
