/**
 * The whole device path in the `fleetwire up` layout (auth routes on the broker's
 * app, one key ring), and key rotation seen by a broker that trusts the JWKS URL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenVerifier, signToken } from '@fleetwire/common';
import { buildBroker, brokerDefaults } from '@fleetwire/broker';
import { closeOf, connackCode, connect } from '../../broker/test/helpers.js';
import { flushRedis, REDIS_URL, startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
let op: string;
beforeAll(async () => {
  await flushRedis();
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
