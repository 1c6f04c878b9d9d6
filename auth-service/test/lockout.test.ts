/**
 * Lockout at the default limits (10 failures lock; 10 attempts per account per minute):
 * consecutive failures lock an account for the address they came from only, and the
 * per-account window does not apply to addresses the owner recently logged in from, so a
 * stranger cannot lock the owner out. An admin unlock lets the user in at once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
let admin: string;
beforeAll(async () => {
  t = await startAuth();
  expect(t.config).toMatchObject({ lockoutFailures: 10, loginPerAccount: 10, loginPerIp: 30 });
  admin = await t.tokenFor('admin');
});
afterAll(async () => t.close());

let n = 0;
async function owner(): Promise<{ id: string; email: string; password: string }> {
  const email = `owner-${n++}@example.com`;
  const password = 'owners-long-passphrase';
  const user = await t.auth.accounts.createUser({ email, password, role: 'operator' }, 'test');
  return { id: user.id, email, password };
}

describe('lockout', () => {
  it('after an admin unlocks an account, its user logs in at once (no 429)', async () => {
    const u = await owner();
    const laptop = '10.30.0.1';
    for (let i = 0; i < 10; i++) expect((await t.login(u.email, 'a-wrong-password', laptop)).status).toBe(401);
    const locked = await t.login(u.email, u.password, laptop);
    expect(locked.body.error?.code).toBe('AUTH_ACCOUNT_LOCKED');
    expect((await t.api('GET', `/v1/users/${u.id}`, { token: admin })).body.locked_for_s).toBeGreaterThan(0);

    expect((await t.api('POST', `/v1/users/${u.id}/unlock`, { token: admin })).body).toEqual({ was_locked: true });
    expect((await t.login(u.email, u.password, laptop)).status).toBe(200);
    expect((await t.api('GET', `/v1/users/${u.id}`, { token: admin })).body.locked_for_s).toBe(0);
  });

  it('ten wrong passwords from ten other addresses do not lock the owner out of their usual address', async () => {
    const u = await owner();
    const home = '10.31.0.1';
    expect((await t.login(u.email, u.password, home)).status).toBe(200);
    for (let i = 0; i < 10; i++) expect([401, 429]).toContain((await t.login(u.email, 'a-wrong-password', `10.32.0.${i + 1}`)).status);
    const res = await t.login(u.email, u.password, home);
    expect(res.status).toBe(200);
  });

  it('the attacking address stays limited, and so does any address the owner has not logged in from', async () => {
    const u = await owner();
    const home = '10.33.0.1';
    const attacker = '10.34.0.1';
    expect((await t.login(u.email, u.password, home)).status).toBe(200);
    // The owner's login took one of the 10 attempts a minute; the attacker gets the other 9.
    for (let i = 0; i < 9; i++) expect((await t.login(u.email, 'a-wrong-password', attacker)).status).toBe(401);
    // Its next attempt is refused before any hashing, even with the right password.
    const fromAttacker = await t.login(u.email, u.password, attacker);
    expect(fromAttacker.status).toBe(429);
    expect(fromAttacker.body.error?.code).toBe('AUTH_RATE_LIMITED');
    // A new address shares the per-account window the attacker filled.
    const stranger = await t.login(u.email, u.password, '10.35.0.1');
    expect(stranger.status).toBe(429);
    // The owner, from where they logged in before, is not limited by it.
    expect((await t.login(u.email, u.password, home)).status).toBe(200);
  });
});
