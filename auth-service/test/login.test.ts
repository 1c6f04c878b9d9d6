import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN, metricValue, sleep, startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 5, loginIpWindowS: 60, loginPerAccount: 4, loginAccountWindowS: 60, lockoutFailures: 3, lockoutS: 2 });
  await t.auth.accounts.createUser({ email: 'carol@example.com', password: 'carols-long-passphrase', role: 'operator' }, 'test');
});
afterAll(async () => t.close());
// Each test starts with empty windows, no locks and no known addresses.
afterEach(async () => {
  const keys = await t.redis.keys('fleetwire:*l*-*');
  const limitKeys = keys.filter((k) => /:rl:|login-failures|login-lock|login-known/.test(k));
  if (limitKeys.length) await t.redis.del(...limitKeys);
});

let ipSeq = 0;
const freshIp = (): string => `10.0.${Math.floor(ipSeq / 250)}.${(ipSeq++ % 250) + 1}`;
const hashedLogins = (): Promise<number> => metricValue(t.metrics, 'fleetwire_auth_login_seconds_count');

describe('login', () => {
  it('answers a token pair for the right password', async () => {
    const res = await t.login('carol@example.com', 'carols-long-passphrase', freshIp());
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ token_type: 'Bearer', expires_in: 900 });
    expect(res.body.refresh_token).toMatch(/^fwr_/);
    const me = await t.api('GET', '/v1/auth/me', { token: res.body.access_token as string });
    expect(me.body).toMatchObject({ email: 'carol@example.com', role: 'operator' });
    expect(JSON.stringify(me.body)).not.toContain('argon2');
  });

  it('treats the email case-insensitively', async () => {
    expect((await t.login('Carol@Example.COM', 'carols-long-passphrase', freshIp())).status).toBe(200);
  });

  it('gives an unknown account exactly the answer a wrong password gets', async () => {
    const wrong = await t.login('carol@example.com', 'not-carols-passphrase', freshIp());
    const unknown = await t.login('nobody@example.com', 'not-carols-passphrase', freshIp());
    expect(wrong.status).toBe(401);
    expect(unknown.status).toBe(401);
    expect(unknown.body).toEqual(wrong.body);
    expect(wrong.body.error?.code).toBe('AUTH_LOGIN_FAILED');
  });
});

describe('login rate limits (checked before any hashing)', () => {
  it('refuses the 6th attempt from one IP within the window with 429 and Retry-After, without hashing', async () => {
    const ip = freshIp();
    for (let i = 0; i < 5; i++) {
      // Different accounts, so only the per-IP window fills.
      expect((await t.login(`guess${i}@example.com`, 'whatever-password', ip)).status).toBe(401);
    }
    const before = await hashedLogins();
    const res = await t.login('carol@example.com', 'carols-long-passphrase', ip);
    expect(res.status).toBe(429);
    expect(res.body.error?.code).toBe('AUTH_RATE_LIMITED');
    const retry = Number(res.headers.get('retry-after'));
    expect(retry).toBeGreaterThanOrEqual(1);
    expect(retry).toBeLessThanOrEqual(60);
    expect(await hashedLogins()).toBe(before);
    // Another address is not affected.
    expect((await t.login('carol@example.com', 'carols-long-passphrase', freshIp())).status).toBe(200);
  });

  it('refuses the 5th attempt on one account from many IPs with 429', async () => {
    // Right password each time: the per-account window counts attempts, not only failures.
    for (let i = 0; i < 4; i++) expect((await t.login('carol@example.com', 'carols-long-passphrase', freshIp())).status).toBe(200);
    const res = await t.login('carol@example.com', 'carols-long-passphrase', freshIp());
    expect(res.status).toBe(429);
    expect(res.body.error?.code).toBe('AUTH_RATE_LIMITED');
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Other accounts are not affected.
    expect((await t.login(ADMIN.email, ADMIN.password, freshIp())).status).toBe(200);
  });

  it('limits unknown accounts the same way, so the limit does not reveal which accounts exist', async () => {
    for (let i = 0; i < 4; i++) await t.login('ghost@example.com', 'whatever-password', freshIp());
    const res = await t.login('ghost@example.com', 'whatever-password', freshIp());
    expect(res.status).toBe(429);
  });
});

describe('account lockout (per account and address)', () => {
  it('locks the address after 3 consecutive failures from it, even for the right password, then unlocks on its own', async () => {
    const ip = freshIp();
    for (let i = 0; i < 3; i++) expect((await t.login('carol@example.com', 'wrong-password-here', ip)).status).toBe(401);
    const before = await hashedLogins();
    const locked = await t.login('carol@example.com', 'carols-long-passphrase', ip);
    expect(locked.status).toBe(429);
    expect(locked.body.error?.code).toBe('AUTH_ACCOUNT_LOCKED');
    expect(Number(locked.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(await hashedLogins()).toBe(before);
    const { records } = await t.auth.audit.query({ type: 'account.locked', limit: 5 });
    expect(records[0]?.subject).toMatch(/^user:/);

    await sleep(2100); // LOCKOUT_S=2
    expect((await t.login('carol@example.com', 'carols-long-passphrase', ip)).status).toBe(200);
  });

  it('a lock holds only the address the failures came from', async () => {
    const home = freshIp();
    const attacker = freshIp();
    expect((await t.login('carol@example.com', 'carols-long-passphrase', home)).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await t.login('carol@example.com', 'wrong-password-here', attacker)).status).toBe(401);
    expect((await t.login('carol@example.com', 'carols-long-passphrase', attacker)).body.error?.code).toBe('AUTH_ACCOUNT_LOCKED');
    expect((await t.login('carol@example.com', 'carols-long-passphrase', home)).status).toBe(200);
    // Other addresses are not locked, but share the per-account window (4 a minute: the home login and 3 failures).
    expect((await t.login('carol@example.com', 'carols-long-passphrase', freshIp())).body.error?.code).toBe('AUTH_RATE_LIMITED');
  });

  it('a success resets the failure count', async () => {
    const ip = freshIp();
    for (let i = 0; i < 2; i++) await t.login('carol@example.com', 'wrong-password-here', ip);
    expect((await t.login('carol@example.com', 'carols-long-passphrase', ip)).status).toBe(200);
    await t.redis.del(...await t.redis.keys('fleetwire:rl:login-*')); // the attempt windows move on
    for (let i = 0; i < 2; i++) await t.login('carol@example.com', 'wrong-password-here', ip);
    expect((await t.login('carol@example.com', 'carols-long-passphrase', ip)).status).toBe(200);
  });

  it('an admin can unlock at once; the unlock is audited', async () => {
    const admin = await t.tokenFor('admin');
    const ip = freshIp();
    for (let i = 0; i < 3; i++) await t.login('carol@example.com', 'wrong-password-here', ip);
    expect((await t.login('carol@example.com', 'carols-long-passphrase', ip)).status).toBe(429);
    const carol = (await t.auth.users.byEmail('carol@example.com'))!;
    expect((await t.api('GET', `/v1/users/${carol.id}`, { token: admin })).body.locked_for_s).toBeGreaterThan(0);
    const res = await t.api('POST', `/v1/users/${carol.id}/unlock`, { token: admin });
    expect(res.body).toEqual({ was_locked: true });
    expect((await t.login('carol@example.com', 'carols-long-passphrase', ip)).status).toBe(200);
    const { records } = await t.auth.audit.query({ type: 'account.unlocked', limit: 1 });
    expect(records[0]).toMatchObject({ subject: `user:${carol.id}`, detail: { was_locked: true } });
  });

  it('unknown accounts lock like real ones', async () => {
    const ip = freshIp();
    for (let i = 0; i < 3; i++) expect((await t.login('ghost2@example.com', 'wrong-password-here', ip)).status).toBe(401);
    expect((await t.login('ghost2@example.com', 'wrong-password-here', ip)).body.error?.code).toBe('AUTH_ACCOUNT_LOCKED');
  });
});

describe('malformed login requests', () => {
  it.each([
    ['no body fields', {}],
    ['an object as email', { email: { $ne: '' }, password: 'whatever-password' }],
    ['a 2000-character password', { email: 'carol@example.com', password: 'x'.repeat(2000) }],
  ])('%s → 400 VALIDATION_FAILED', async (_name, body) => {
    const res = await t.api('POST', '/v1/auth/login', { body });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
  });

  it('broken JSON → 400 VALIDATION_FAILED', async () => {
    const res = await t.api('POST', '/v1/auth/login', { body: '{"email": ' });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
  });
});

describe('timing does not tell unknown accounts from wrong passwords', () => {
  it('at production argon2id parameters both cost a hash (medians within 2×)', async () => {
    const prod = await startAuth({ argon2Profile: 'production', loginPerIp: 1000, loginPerAccount: 1000, lockoutFailures: 1000 }, { dataDir: t.dataDir });
    try {
      // A legacy account too: its check is nearly free, so it must be padded with a hash like the others.
      const { importLegacyUsers } = await import('../src/index.js');
      const { createHash } = await import('node:crypto');
      await importLegacyUsers(JSON.stringify({ email: 'legacy-timing@example.com', password_hash: createHash('sha256').update('x').digest('hex') }), prod.auth.users, prod.auth.audit, 'test');
      const time = async (email: string): Promise<number> => {
        const start = performance.now();
        expect((await prod.login(email, 'definitely-wrong-password')).status).toBe(401);
        return performance.now() - start;
      };
      const median = (xs: number[]): number => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      const known: number[] = [];
      const unknown: number[] = [];
      const legacy: number[] = [];
      for (let i = 0; i < 7; i++) {
        known.push(await time('carol@example.com'));
        unknown.push(await time(`stranger${i}@example.com`));
        legacy.push(await time('legacy-timing@example.com'));
      }
      // Without the dummy hash an unknown account answers in well under a millisecond, against about 20 ms.
      expect(median(unknown)).toBeGreaterThan(median(known) / 2);
      expect(median(legacy)).toBeGreaterThan(median(known) / 2);
    } finally {
      await prod.close();
    }
  });

  it('after a switch to production parameters, an account still holding an older hash fails as slowly as an unknown email (medians within a factor of 1.5; unpadded they differ about 4x)', async () => {
    // Created at the development profile (m=4096, t=1); the service then moves to m=19456, t=2.
    await t.auth.accounts.createUser({ email: 'old-params@example.com', password: 'old-params-passphrase', role: 'viewer' }, 'test');
    expect((await t.auth.users.byEmail('old-params@example.com'))!.password_hash).toContain('m=4096,p=1,t=1');
    const prod = await startAuth({ argon2Profile: 'production', loginPerIp: 1000, loginPerAccount: 1000, lockoutFailures: 1000 }, { dataDir: t.dataDir });
    try {
      const time = async (email: string): Promise<number> => {
        const start = performance.now();
        expect((await prod.login(email, 'definitely-wrong-password')).status).toBe(401);
        return performance.now() - start;
      };
      const median = (xs: number[]): number => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      const old: number[] = [];
      const unknown: number[] = [];
      for (let i = 0; i < 11; i++) {
        old.push(await time('old-params@example.com'));
        unknown.push(await time(`stranger-p${i}@example.com`));
      }
      const [o, u] = [median(old), median(unknown)];
      const figures = `medians: older hash ${o.toFixed(1)} ms, unknown email ${u.toFixed(1)} ms`;
      // Wide enough for a shared 2-core machine; without the padding the ratio is 0.23-0.28.
      expect(o / u, figures).toBeGreaterThan(1 / 1.5);
      expect(o / u, figures).toBeLessThan(1.5);
    } finally {
      await prod.close();
    }
  });
});
