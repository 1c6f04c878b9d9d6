import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisKeys } from '@fleetwire/common';
import { digest } from '../src/secrets.js';
import { startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 });
});
afterAll(async () => t.close());

let n = 0;
async function newUser(password = 'first-long-passphrase'): Promise<{ email: string; password: string }> {
  const email = `pw-${n++}@example.com`;
  await t.auth.accounts.createUser({ email, password, role: 'viewer' }, 'test');
  return { email, password };
}
const resetToken = (text: string): string => /fwp_[A-Za-z0-9_-]+/.exec(text)![0];

describe('password policy', () => {
  it.each([
    ['shorter than 12 characters', 'short-pw', 'at least 12 characters'],
    ['longer than 128 characters', 'x'.repeat(129), 'at most 128 characters'],
    ['on the common-password list', 'qwertyuiop123', 'commonly used'],
    ['on the list in other letter case', 'QwertyUiop123', 'commonly used'],
  ])('refuses a password %s with 400 AUTH_PASSWORD_POLICY', async (_name, password, reason) => {
    const admin = await t.tokenFor('admin');
    const res = await t.api('POST', '/v1/users', { token: admin, body: { email: `policy-${n++}@example.com`, password, role: 'viewer' } });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('AUTH_PASSWORD_POLICY');
    expect(res.body.error?.message).toContain(reason);
    expect(res.body.error?.message).not.toContain(password);
  });

  it('refuses the email address as password', async () => {
    const admin = await t.tokenFor('admin');
    const res = await t.api('POST', '/v1/users', { token: admin, body: { email: 'longlocalpart@example.com', password: 'longlocalpart@example.com', role: 'viewer' } });
    expect(res.body.error?.code).toBe('AUTH_PASSWORD_POLICY');
  });

  it('refuses a second user with the same email (409), in any letter case', async () => {
    const admin = await t.tokenFor('admin');
    const body = { email: 'twice@example.com', password: 'twice-long-passphrase', role: 'viewer' };
    expect((await t.api('POST', '/v1/users', { token: admin, body })).status).toBe(201);
    const again = await t.api('POST', '/v1/users', { token: admin, body: { ...body, email: 'TWICE@example.com' } });
    expect(again.status).toBe(409);
    expect(again.body.error?.code).toBe('AUTH_USER_EXISTS');
  });
});

describe('password change', () => {
  it('needs the current password and ends every refresh session', async () => {
    const u = await newUser();
    const s = (await t.login(u.email, u.password)).body;
    const wrong = await t.api('POST', '/v1/auth/password', { token: s.access_token as string, body: { current_password: 'not-the-password', new_password: 'second-long-passphrase' } });
    expect(wrong.status).toBe(403);
    expect(wrong.body.error?.code).toBe('AUTH_PASSWORD_WRONG');

    const weak = await t.api('POST', '/v1/auth/password', { token: s.access_token as string, body: { current_password: u.password, new_password: 'password1234' } });
    expect(weak.body.error?.code).toBe('AUTH_PASSWORD_POLICY');

    const ok = await t.api('POST', '/v1/auth/password', { token: s.access_token as string, body: { current_password: u.password, new_password: 'second-long-passphrase' } });
    expect(ok.status).toBe(204);
    expect((await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh_token } })).body.error?.code).toBe('AUTH_REFRESH_INVALID');
    expect((await t.login(u.email, u.password)).status).toBe(401);
    expect((await t.login(u.email, 'second-long-passphrase')).status).toBe(200);
    const { records } = await t.auth.audit.query({ type: 'password.changed', limit: 1 });
    expect(records[0]?.detail).toMatchObject({ sessions_ended: 1 });
  });
});

describe('password reset through the outbox', () => {
  it('answers 202 with the same body for known and unknown addresses; only the known one gets mail', async () => {
    const u = await newUser();
    const before = (await t.outbox()).length;
    const known = await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } });
    const unknown = await t.api('POST', '/v1/auth/password-reset/request', { body: { email: 'nobody-here@example.com' } });
    expect(known.status).toBe(202);
    expect(unknown.status).toBe(202);
    expect(unknown.body).toEqual(known.body);
    const mail = (await t.outbox()).slice(before);
    expect(mail.map((m) => m.to)).toEqual([u.email]);
    expect(mail[0]!.link).toMatch(/^http:\/\/localhost:8080\/reset-password\?token=fwp_/);
  });

  it('sets a new password once, ends sessions, and the link cannot be reused', async () => {
    const u = await newUser();
    const s = (await t.login(u.email, u.password)).body;
    await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } });
    const token = resetToken((await t.outbox()).filter((m) => m.to === u.email).pop()!.text);

    // A refused password does not use the link up.
    const weak = await t.api('POST', '/v1/auth/password-reset/confirm', { body: { token, new_password: 'short' } });
    expect(weak.body.error?.code).toBe('AUTH_PASSWORD_POLICY');

    const ok = await t.api('POST', '/v1/auth/password-reset/confirm', { body: { token, new_password: 'reset-long-passphrase' } });
    expect(ok.status).toBe(204);
    expect((await t.login(u.email, 'reset-long-passphrase')).status).toBe(200);
    expect((await t.login(u.email, u.password)).status).toBe(401);
    expect((await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh_token } })).status).toBe(401);

    const again = await t.api('POST', '/v1/auth/password-reset/confirm', { body: { token, new_password: 'another-long-passphrase' } });
    expect(again.status).toBe(400);
    expect(again.body.error?.code).toBe('AUTH_RESET_INVALID');
    const types = (await t.auth.audit.query({ subject: `user:${(await t.auth.users.byEmail(u.email))!.id}`, limit: 20 })).records.map((r) => r.type);
    expect(types).toEqual(expect.arrayContaining(['password.reset-requested', 'password.reset-completed']));
  });

  it('a password change voids every link issued before it', async () => {
    const u = await newUser();
    await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } });
    await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } });
    const [first, second] = (await t.outbox()).filter((m) => m.to === u.email).map((m) => resetToken(m.text));
    expect((await t.api('POST', '/v1/auth/password-reset/confirm', { body: { token: first, new_password: 'reset-long-passphrase' } })).status).toBe(204);
    const res = await t.api('POST', '/v1/auth/password-reset/confirm', { body: { token: second, new_password: 'other-long-passphrase' } });
    expect(res.body.error?.code).toBe('AUTH_RESET_INVALID');
    expect((await t.login(u.email, 'reset-long-passphrase')).status).toBe(200);
  });

  it('refuses an expired link', async () => {
    const u = await newUser();
    await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } });
    const token = resetToken((await t.outbox()).filter((m) => m.to === u.email).pop()!.text);
    await t.redis.pexpire(redisKeys.resetToken(digest(token)), 1);
    await new Promise((r) => setTimeout(r, 20));
    const res = await t.api('POST', '/v1/auth/password-reset/confirm', { body: { token, new_password: 'reset-long-passphrase' } });
    expect(res.body.error?.code).toBe('AUTH_RESET_INVALID');
  });

  it('sends at most 3 messages per address per hour, still answering 202', async () => {
    const u = await newUser();
    for (let i = 0; i < 5; i++) expect((await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } })).status).toBe(202);
    expect((await t.outbox()).filter((m) => m.to === u.email)).toHaveLength(3);
  });

  it('refuses a malformed email with 400', async () => {
    const res = await t.api('POST', '/v1/auth/password-reset/request', { body: { email: 'not an email' } });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
  });
});

describe('secrets stay out of logs, errors and audit records', () => {
  it('no password, refresh token, reset token or API key appears in any log line', async () => {
    const u = await newUser('logged-nowhere-passphrase');
    const s = (await t.login(u.email, 'logged-nowhere-passphrase')).body;
    await t.login(u.email, 'wrong-but-secret-guess');
    await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh_token } });
    await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } });
    const token = resetToken((await t.outbox()).filter((m) => m.to === u.email).pop()!.text);
    const op = await t.tokenFor('operator');
    const key = (await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32' } })).body.api_key as string;
    await t.api('POST', '/v1/devices/token', { body: { api_key: key } });
    await t.api('POST', '/v1/devices/token', { body: { api_key: `${key}x` } });
    const logs = t.logs.join('');
    const audit = JSON.stringify(await t.auth.audit.query({ limit: 1000 }));
    for (const secret of ['logged-nowhere-passphrase', 'wrong-but-secret-guess', s.refresh_token as string, token, key, key.slice(-43)]) {
      expect(logs).not.toContain(secret);
      expect(audit).not.toContain(secret);
    }
    expect(logs).toContain('message written to the outbox');
  });
});
