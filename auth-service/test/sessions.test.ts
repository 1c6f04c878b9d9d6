import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN, startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 });
});
afterAll(async () => t.close());

const login = async () => (await t.login(ADMIN.email, ADMIN.password)).body as { access_token: string; refresh_token: string };
const refresh = (token: string) => t.api('POST', '/v1/auth/refresh', { body: { refresh_token: token } });

describe('refresh tokens', () => {
  it('rotate on every use: each answer has a new pair and the new access token works', async () => {
    const first = await login();
    const res = await refresh(first.refresh_token);
    expect(res.status).toBe(200);
    expect(res.body.refresh_token).not.toBe(first.refresh_token);
    expect((await t.api('GET', '/v1/auth/me', { token: res.body.access_token as string })).status).toBe(200);
    expect((await refresh(res.body.refresh_token as string)).status).toBe(200);
  });

  it('reuse of a rotated token revokes the whole family, including its newest token', async () => {
    const first = await login();
    const second = (await refresh(first.refresh_token)).body.refresh_token as string;
    const reuse = await refresh(first.refresh_token);
    expect(reuse.status).toBe(401);
    expect(reuse.body.error?.code).toBe('AUTH_REFRESH_REUSED');
    const afterwards = await refresh(second);
    expect(afterwards.status).toBe(401);
    expect(afterwards.body.error?.code).toBe('AUTH_REFRESH_INVALID');
    const { records } = await t.auth.audit.query({ type: 'refresh.reused', limit: 1 });
    expect(records[0]).toMatchObject({ outcome: 'session-revoked' });
    expect(JSON.stringify(records)).not.toContain(first.refresh_token);
  });

  it('other sessions of the same user survive a reuse in one family', async () => {
    const a = await login();
    const b = await login();
    await refresh(a.refresh_token);
    await refresh(a.refresh_token); // reuse: family a revoked
    expect((await refresh(b.refresh_token)).status).toBe(200);
  });

  it('only one of two concurrent uses of a token wins', async () => {
    const { refresh_token: token } = await login();
    const answers = await Promise.all([refresh(token), refresh(token)]);
    expect(answers.map((a) => a.status).sort()).toEqual([200, 401]);
  });

  it('refuses unknown and malformed tokens', async () => {
    expect((await refresh('fwr_not-a-real-token')).body.error?.code).toBe('AUTH_REFRESH_INVALID');
    expect((await refresh('something-else')).body.error?.code).toBe('AUTH_REFRESH_INVALID');
    const res = await t.api('POST', '/v1/auth/refresh', { body: {} });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
  });
});

describe('logout', () => {
  it('ends the session and revokes the access token used', async () => {
    const s = await login();
    const res = await t.api('POST', '/v1/auth/logout', { token: s.access_token });
    expect(res.status).toBe(204);
    expect((await refresh(s.refresh_token)).body.error?.code).toBe('AUTH_REFRESH_INVALID');
    const me = await t.api('GET', '/v1/auth/me', { token: s.access_token });
    expect(me.status).toBe(401);
    expect(me.body.error?.code).toBe('AUTH_TOKEN_REVOKED');
  });

  it('needs a user token', async () => {
    expect((await t.api('POST', '/v1/auth/logout')).status).toBe(401);
  });
});
