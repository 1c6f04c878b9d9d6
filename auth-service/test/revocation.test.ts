/**
 * Ending a user's tokens, in the `fleetwire up` layout (auth routes on the broker's app):
 * after a password change or reset, a reused refresh token, a logout, a role change or a
 * deletion, the affected access tokens stop working at once over HTTP (/v1/auth/me) and at
 * MQTT CONNECT, and live MQTT connections holding them close with 4003, even when the
 * token was signed in the same wall-clock second as the change. Tokens issued afterwards work.
 */
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeOf, connackCode, connect } from '../../broker/test/helpers.js';
import { sleep, startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
let admin: string;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000, lockoutFailures: 1000 }, { withBroker: true });
  admin = await t.tokenFor('admin');
});
afterAll(async () => t.close());

const wsUrl = (): string => `${t.url.replace('http', 'ws')}/mqtt`;

/**
 * Waits for the start of a wall-clock second, so that a token signed now and a change made
 * a few milliseconds later fall in the same second (which a one-second revocation time missed).
 */
async function startOfSecond(): Promise<void> {
  await sleep(1000 - (Date.now() % 1000) + 5);
}

let n = 0;
async function newUser(role: 'operator' | 'viewer' = 'operator'): Promise<{ id: string; email: string; password: string }> {
  const email = `rev-${n++}@example.com`;
  const password = 'revocation-long-passphrase';
  const res = await t.api('POST', '/v1/users', { token: admin, body: { email, password, role } });
  return { id: res.body.id as string, email, password };
}

interface Online { access: string; refresh: string; clientId: string; mqtt: MqttClient; closed: Promise<{ code: number }> }

/** A login plus an MQTT connection made with its access token (a dashboard, say). */
async function online(u: { id: string; email: string; password: string }): Promise<Online> {
  const s = (await t.login(u.email, u.password)).body as { access_token: string; refresh_token: string };
  const clientId = `user:${u.id}:${n++}`;
  const mqtt = await connect(wsUrl(), s.access_token, clientId);
  return { access: s.access_token, refresh: s.refresh_token, clientId, mqtt, closed: closeOf(mqtt) };
}

async function expectCutOff(access: string, clientId: string, closed?: Promise<{ code: number }>): Promise<void> {
  const me = await t.api('GET', '/v1/auth/me', { token: access });
  expect(me.status).toBe(401);
  expect(me.body.error?.code).toBe('AUTH_TOKEN_REVOKED');
  expect(await connackCode(wsUrl(), access, clientId)).toBe(5);
  if (closed) {
    const within = await Promise.race([closed, sleep(1000).then(() => ({ code: -1 }))]);
    expect(within.code).toBe(4003);
  }
}

async function expectWorks(access: string, clientId: string): Promise<void> {
  expect((await t.api('GET', '/v1/auth/me', { token: access })).status).toBe(200);
  const c = await connect(wsUrl(), access, clientId);
  expect(c.connected).toBe(true);
  await c.endAsync();
}

describe('a password change', () => {
  it('ends every access token of the user at once, over HTTP and MQTT, and closes their MQTT connections', async () => {
    const u = await newUser();
    const here = await online(u);
    const elsewhere = await online(u);
    const res = await t.api('POST', '/v1/auth/password', { token: here.access, body: { current_password: u.password, new_password: 'changed-long-passphrase' } });
    expect(res.status).toBe(204);
    await expectCutOff(here.access, here.clientId, here.closed);
    await expectCutOff(elsewhere.access, elsewhere.clientId, elsewhere.closed);

    const again = (await t.login(u.email, 'changed-long-passphrase')).body.access_token as string;
    await expectWorks(again, `user:${u.id}:after`);
  });
});

describe('a password reset', () => {
  it('ends every access token of the user at once and closes their MQTT connections', async () => {
    const u = await newUser();
    const s = await online(u);
    await t.api('POST', '/v1/auth/password-reset/request', { body: { email: u.email } });
    const token = /fwp_[A-Za-z0-9_-]+/.exec((await t.outbox()).filter((m) => m.to === u.email).pop()!.text)![0];
    expect((await t.api('POST', '/v1/auth/password-reset/confirm', { body: { token, new_password: 'reset-long-passphrase' } })).status).toBe(204);
    await expectCutOff(s.access, s.clientId, s.closed);

    const again = (await t.login(u.email, 'reset-long-passphrase')).body.access_token as string;
    await expectWorks(again, `user:${u.id}:after`);
  });
});

describe('a reused refresh token', () => {
  it('ends every access token of its session, and only of its session', async () => {
    const u = await newUser();
    const stolen = await online(u);
    const other = await online(u);
    const rotated = (await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: stolen.refresh } })).body.access_token as string;
    const rotatedClient = `user:${u.id}:rotated`;
    const rotatedMqtt = await connect(wsUrl(), rotated, rotatedClient);
    const rotatedClosed = closeOf(rotatedMqtt);

    const reuse = await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: stolen.refresh } });
    expect(reuse.body.error?.code).toBe('AUTH_REFRESH_REUSED');
    await expectCutOff(stolen.access, stolen.clientId, stolen.closed);
    await expectCutOff(rotated, rotatedClient, rotatedClosed);

    // The user's other session is untouched, its MQTT connection included.
    expect(other.mqtt.connected).toBe(true);
    await expectWorks(other.access, `user:${u.id}:other`);
    await other.mqtt.endAsync();
  });
});

describe('logout', () => {
  it('ends every access token of the session, the ones from earlier refreshes too', async () => {
    const u = await newUser();
    const s = await online(u);
    const later = (await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh } })).body.access_token as string;
    expect((await t.api('POST', '/v1/auth/logout', { token: later })).status).toBe(204);
    await expectCutOff(later, `user:${u.id}:later`);
    await expectCutOff(s.access, s.clientId, s.closed);
  });
});

describe('a role change', () => {
  it('revokes a token signed in the same second, and the refreshed token carries the new role', async () => {
    const u = await newUser('operator');
    await startOfSecond();
    const s = await online(u);
    expect((await t.api('PATCH', `/v1/users/${u.id}`, { token: admin, body: { role: 'viewer' } })).body).toMatchObject({ role: 'viewer' });
    await expectCutOff(s.access, s.clientId, s.closed);
    expect((await t.api('POST', '/v1/devices', { token: s.access, body: { type: 'esp32' } })).status).toBe(401);

    const fresh = (await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh } })).body.access_token as string;
    await expectWorks(fresh, `user:${u.id}:fresh`);
    expect((await t.api('POST', '/v1/devices', { token: fresh, body: { type: 'esp32' } })).status).toBe(403);
  });

  it('a refresh racing a demotion never yields a token that still has the old rights', async () => {
    for (let i = 0; i < 5; i++) {
      const u = await newUser('operator');
      const s = (await t.login(u.email, u.password)).body as { refresh_token: string };
      const [refreshed] = await Promise.all([
        t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh_token } }),
        t.api('PATCH', `/v1/users/${u.id}`, { token: admin, body: { role: 'viewer' } }),
      ]);
      const res = await t.api('POST', '/v1/devices', { token: refreshed.body.access_token as string, body: { type: 'esp32' } });
      expect([401, 403]).toContain(res.status);
    }
  });
});

describe('deleting a user', () => {
  it('revokes a token signed in the same second and closes the MQTT connection', async () => {
    const u = await newUser();
    await startOfSecond();
    const s = await online(u);
    expect((await t.api('DELETE', `/v1/users/${u.id}`, { token: admin })).status).toBe(204);
    await expectCutOff(s.access, s.clientId, s.closed);
    expect((await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh } })).status).toBe(401);
  });
});
