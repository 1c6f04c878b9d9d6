/**
 * The whole device path in the `fleetwire up` layout (auth routes on the broker's
 * app, one key ring), and key rotation seen by a broker that trusts the JWKS URL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenVerifier, signToken } from '@fleetwire/common';
import { buildBroker, brokerDefaults } from '@fleetwire/broker';
import { closeOf, connackCode, connect } from '../../broker/test/helpers.js';
import { REDIS_URL, startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
let op: string;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 }, { withBroker: true });
  op = await t.tokenFor('operator');
});
afterAll(async () => t.close());

const wsUrl = (): string => `${t.url.replace('http', 'ws')}/mqtt`;

describe('register → API key → device token → WebSocket connect → revoke → disconnected', () => {
  it('runs end to end on one port', async () => {
    const reg = await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32-s3', name: 'e2e' } });
    const { id, api_key: key } = reg.body as { id: string; api_key: string };
    const ex = await t.api('POST', '/v1/devices/token', { body: { api_key: key } });
    expect(ex.status).toBe(200);

    const device = await connect(wsUrl(), ex.body.token as string, id);
    expect(device.connected).toBe(true);
    const conns = await t.api('GET', `/v1/connections/${id}`, { token: op });
    expect(conns.body).toMatchObject({ client_id: id, kind: 'device' });

    const closed = closeOf(device);
    const revokedAt = Date.now();
    expect((await t.api('DELETE', `/v1/devices/${id}`, { token: op })).status).toBe(200);
    const { code } = await closed;
    expect(code).toBe(4003);
    expect(Date.now() - revokedAt).toBeLessThan(1000);

    // The same token no longer connects, and the key no longer exchanges.
    expect(await connackCode(wsUrl(), ex.body.token as string, id)).toBe(5);
    expect((await t.api('POST', '/v1/devices/token', { body: { api_key: key } })).status).toBe(401);
    const types = (await t.auth.audit.query({ subject: `device:${id}`, limit: 10 })).records.map((r) => r.type);
    expect(types).toEqual(['device.revoked', 'device.registered']);
  });

  it('a device with a wrong key never gets a token, and a token for another id is refused by the broker', async () => {
    const a = (await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32' } })).body as { id: string; api_key: string };
    const b = (await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32' } })).body as { id: string };
    expect((await t.api('POST', '/v1/devices/token', { body: { api_key: `${a.api_key}0` } })).status).toBe(401);
    const token = (await t.api('POST', '/v1/devices/token', { body: { api_key: a.api_key } })).body.token as string;
    expect(await connackCode(wsUrl(), token, b.id)).toBe(5);
  });
});

describe('rotating a leaked device key', () => {
  it('with revoke_tokens the device is cut off and its old tokens refused, even one minted in the same second; the new key works', async () => {
    const { id, api_key: oldKey } = (await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32' } })).body as { id: string; api_key: string };
    // At the start of a second, so the token and the rotation share it (a one-second revocation time missed that).
    await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
    const oldToken = (await t.api('POST', '/v1/devices/token', { body: { api_key: oldKey } })).body.token as string;
    const device = await connect(wsUrl(), oldToken, id);
    const closed = closeOf(device);

    const rotatedAt = Date.now();
    const res = await t.api('POST', `/v1/devices/${id}/keys?revoke_tokens=true`, { token: op });
    expect(res.status).toBe(200);
    expect((await closed).code).toBe(4003);
    expect(Date.now() - rotatedAt).toBeLessThan(1000);
    expect(await connackCode(wsUrl(), oldToken, id)).toBe(5);

    const newToken = (await t.api('POST', '/v1/devices/token', { body: { api_key: res.body.api_key } })).body.token as string;
    const again = await connect(wsUrl(), newToken, id);
    expect(again.connected).toBe(true);
    await again.endAsync();
    const { records } = await t.auth.audit.query({ type: 'device.key-rotated', subject: `device:${id}`, limit: 1 });
    expect(records[0]?.detail).toEqual({ tokens_revoked: true });
  });

  it('without it, tokens already issued keep working until they expire', async () => {
    const { id, api_key: oldKey } = (await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32' } })).body as { id: string; api_key: string };
    const oldToken = (await t.api('POST', '/v1/devices/token', { body: { api_key: oldKey } })).body.token as string;
    await t.api('POST', `/v1/devices/${id}/keys`, { token: op });
    const c = await connect(wsUrl(), oldToken, id);
    expect(c.connected).toBe(true);
    await c.endAsync();
  });
});

describe('signing-key rotation with overlap', () => {
  it('tokens of the old and the new key are both accepted by a broker that reads the JWKS', async () => {
    const admin = await t.tokenFor('admin');
    const { id, api_key: key } = (await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32' } })).body as { id: string; api_key: string };
    const oldToken = (await t.api('POST', '/v1/devices/token', { body: { api_key: key } })).body.token as string;
    const oldKid = t.auth.keys.signer.kid;

    // A second broker in the deployment, trusting only the JWKS URL.
    const remote = await buildBroker(brokerDefaults({ redisUrl: REDIS_URL, port: 0, host: '127.0.0.1', dataDir: t.dataDir }), {
      verifier: createTokenVerifier({ jwksUrl: `${t.url}/.well-known/jwks.json`, jwksCooldownMs: 0 }),
    });
    const { port } = await remote.listen();
    const remoteUrl = `ws://127.0.0.1:${port}/mqtt`;
    try {
      const before = await connect(remoteUrl, oldToken, id);
      await before.endAsync();

      const rot = await t.api('POST', '/v1/keys/rotate', { token: admin, body: { activate_in_s: 0 } });
      expect(rot.status).toBe(200);
      expect(rot.body.kid).not.toBe(oldKid);
      expect(t.auth.keys.signer.kid).toBe(rot.body.kid);
      const jwks = (await t.api('GET', '/.well-known/jwks.json')).body.keys as { kid: string }[];
      expect(jwks.map((k) => k.kid)).toEqual([rot.body.kid, oldKid]);

      const newToken = (await t.api('POST', '/v1/devices/token', { body: { api_key: key } })).body.token as string;
      expect(JSON.parse(Buffer.from(newToken.split('.')[0]!, 'base64url').toString()).kid).toBe(rot.body.kid);
      for (const [url, token] of [[remoteUrl, oldToken], [remoteUrl, newToken], [wsUrl(), oldToken], [wsUrl(), newToken]] as const) {
        const c = await connect(url, token, id);
        expect(c.connected).toBe(true);
        await c.endAsync();
      }
      const { records } = await t.auth.audit.query({ type: 'signing-key.rotated', limit: 1 });
      expect(records[0]?.subject).toBe(`key:${rot.body.kid as string}`);
    } finally {
      await remote.close();
    }
  });

  it('a rotated-in key is published before it signs (default activation delay)', async () => {
    const admin = await t.tokenFor('admin');
    const signing = t.auth.keys.signer.kid;
    const rot = await t.api('POST', '/v1/keys/rotate', { token: admin, body: {} });
    expect(t.auth.keys.signer.kid).toBe(signing);
    const jwks = (await t.api('GET', '/.well-known/jwks.json')).body.keys as { kid: string }[];
    expect(jwks.map((k) => k.kid)).toContain(rot.body.kid);
    expect(rot.body.signs_from).toBeGreaterThan(Date.now() + 50_000);
  });

  it('a token signed with a key the deployment never published is refused', async () => {
    const { generateSigningKey } = await import('@fleetwire/common');
    const { mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const stranger = await generateSigningKey(await mkdtemp(`${tmpdir()}/fw-stranger-`));
    const token = await signToken(stranger, { sub: 'whoever', typ: 'device', ttlSeconds: 600 });
    expect(await connackCode(wsUrl(), token, 'whoever')).toBe(5);
  });
});

describe('user management', () => {
  const login = async (email: string, password: string) => (await t.login(email, password)).body as { access_token: string; refresh_token: string };

  it('a role change applies at once: old tokens are refused, the next refresh carries the new role', async () => {
    const admin = await t.tokenFor('admin');
    const created = await t.api('POST', '/v1/users', { token: admin, body: { email: 'mover@example.com', password: 'mover-long-passphrase', role: 'operator' } });
    const s = await login('mover@example.com', 'mover-long-passphrase');
    expect((await t.api('POST', '/v1/devices', { token: s.access_token, body: { type: 'esp32' } })).status).toBe(201);

    const res = await t.api('PATCH', `/v1/users/${created.body.id as string}`, { token: admin, body: { role: 'viewer' } });
    expect(res.body).toMatchObject({ role: 'viewer' });
    const old = await t.api('GET', '/v1/auth/me', { token: s.access_token });
    expect(old.body.error?.code).toBe('AUTH_TOKEN_REVOKED');
    const fresh = (await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh_token } })).body.access_token as string;
    expect((await t.api('GET', '/v1/devices', { token: fresh })).status).toBe(200);
    expect((await t.api('POST', '/v1/devices', { token: fresh, body: { type: 'esp32' } })).status).toBe(403);
    const { records } = await t.auth.audit.query({ type: 'user.role-changed', limit: 1 });
    expect(records[0]?.detail).toEqual({ from: 'operator', to: 'viewer' });
  });

  it('deleting a user ends their sessions, refuses their tokens and closes their MQTT connection', async () => {
    const admin = await t.tokenFor('admin');
    const created = await t.api('POST', '/v1/users', { token: admin, body: { email: 'leaver@example.com', password: 'leaver-long-passphrase', role: 'operator' } });
    const id = created.body.id as string;
    const s = await login('leaver@example.com', 'leaver-long-passphrase');
    const mqttUser = await connect(wsUrl(), s.access_token, `user:${id}:dashboard`);
    const closed = closeOf(mqttUser);

    expect((await t.api('DELETE', `/v1/users/${id}`, { token: admin })).status).toBe(204);
    expect((await closed).code).toBe(4003);
    expect((await t.api('GET', '/v1/auth/me', { token: s.access_token })).status).toBe(401);
    expect(await connackCode(wsUrl(), s.access_token, `user:${id}:dashboard`)).toBe(5);
    expect((await t.api('POST', '/v1/auth/refresh', { body: { refresh_token: s.refresh_token } })).status).toBe(401);
    expect((await t.login('leaver@example.com', 'leaver-long-passphrase')).status).toBe(401);
    expect((await t.api('GET', `/v1/users/${id}`, { token: admin })).status).toBe(404);
    const { records } = await t.auth.audit.query({ type: 'user.deleted', subject: `user:${id}`, limit: 1 });
    expect(records[0]?.detail).toMatchObject({ email: 'leaver@example.com', sessions_ended: 1 });
  });

  it('the last admin can be neither deleted nor demoted', async () => {
    const admin = await t.tokenFor('admin');
    const me = (await t.api('GET', '/v1/auth/me', { token: admin })).body.id as string;
    for (const [method, body] of [['DELETE', undefined], ['PATCH', { role: 'operator' }]] as const) {
      const res = await t.api(method, `/v1/users/${me}`, { token: admin, body });
      expect(res.status).toBe(409);
      expect(res.body.error?.code).toBe('AUTH_LAST_ADMIN');
    }
    const second = await t.api('POST', '/v1/users', { token: admin, body: { email: 'second-admin@example.com', password: 'second-admin-passphrase', role: 'admin' } });
    expect((await t.api('PATCH', `/v1/users/${second.body.id as string}`, { token: admin, body: { role: 'operator' } })).status).toBe(200);
    expect((await t.api('PATCH', `/v1/users/${me}`, { token: admin, body: { role: 'superuser' } })).status).toBe(400);
  });
});
