import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisKeys, signToken } from '@fleetwire/common';
import { startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
let op: string;
let viewer: string;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000, deviceTokenPerIp: 5 });
  op = await t.tokenFor('operator');
  viewer = await t.tokenFor('viewer');
});
afterAll(async () => t.close());

const register = async (body: Record<string, unknown> = { type: 'esp32-c3' }) => t.api('POST', '/v1/devices', { token: op, body });
const exchange = (apiKey: string, ip = '10.1.1.1') => t.api('POST', '/v1/devices/token', { body: { api_key: apiKey }, headers: { 'x-forwarded-for': ip } });

describe('device registration', () => {
  it('returns an id and a self-identifying fwk_ key once; only a digest is stored', async () => {
    const res = await register({ type: 'esp32-s3', name: 'Greenhouse 1', location: 'north wall', capabilities: ['temp', 'humidity'] });
    expect(res.status).toBe(201);
    const id = res.body.id as string;
    const key = res.body.api_key as string;
    expect(id).toMatch(/^dev-[a-z2-7]{12}$/);
    expect(key.startsWith(`fwk_${id}_`)).toBe(true);
    expect(key.length).toBeGreaterThanOrEqual(4 + id.length + 1 + 43);
    expect(res.body).toMatchObject({ type: 'esp32-s3', name: 'Greenhouse 1', status: 'active', capabilities: ['temp', 'humidity'] });

    const got = await t.api('GET', `/v1/devices/${id}`, { token: viewer });
    expect(got.status).toBe(200);
    expect(got.body.api_key).toBeUndefined();
    const stored = await t.redis.hgetall(redisKeys.device(id));
    expect(JSON.stringify(stored)).not.toContain(key.slice(-43));
    const { records } = await t.auth.audit.query({ type: 'device.registered', subject: `device:${id}`, limit: 1 });
    expect(records).toHaveLength(1);
  });

  it('takes a caller-chosen id and refuses it twice (409)', async () => {
    expect((await register({ id: 'serial-0042', type: 'esp32' })).status).toBe(201);
    const again = await register({ id: 'serial-0042', type: 'esp32' });
    expect(again.status).toBe(409);
    expect(again.body.error?.code).toBe('DEVICE_EXISTS');
  });

  it.each([
    ['no type', {}],
    ['an id with upper case', { id: 'Serial-1', type: 'esp32' }],
    ['capabilities holding an object', { type: 'esp32', capabilities: [{ a: 1 }] }],
    ['a 300-character name', { type: 'esp32', name: 'n'.repeat(300) }],
  ])('refuses %s with 400 VALIDATION_FAILED and registers nothing', async (_name, body) => {
    const before = await t.redis.zcard(redisKeys.devices);
    const res = await register(body);
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
    expect(await t.redis.zcard(redisKeys.devices)).toBe(before);
  });
});

describe('device management', () => {
  it('lists with filters and pages', async () => {
    for (let i = 0; i < 3; i++) await register({ type: 'lister', name: `l${i}` });
    const page1 = await t.api('GET', '/v1/devices?type=lister&limit=2', { token: viewer });
    expect((page1.body.devices as unknown[]).length).toBe(2);
    const page2 = await t.api('GET', `/v1/devices?type=lister&limit=2&cursor=${page1.body.next_cursor as string}`, { token: viewer });
    expect((page2.body.devices as { name: string }[]).map((d) => d.name)).toEqual(['l2']);
    expect(page2.body.next_cursor).toBeNull();
  });

  it('updates metadata (PATCH) without touching the key', async () => {
    const { id, api_key: key } = (await register()).body as { id: string; api_key: string };
    const res = await t.api('PATCH', `/v1/devices/${id}`, { token: op, body: { name: 'renamed', location: 'shed' } });
    expect(res.body).toMatchObject({ name: 'renamed', location: 'shed', type: 'esp32-c3' });
    expect((await exchange(key)).status).toBe(200);
    expect((await t.api('PATCH', `/v1/devices/${id}`, { token: op, body: {} })).status).toBe(400);
    expect((await t.api('PATCH', '/v1/devices/no-such-device', { token: op, body: { name: 'x' } })).status).toBe(404);
  });

  it('rotating the key stops the old key at once', async () => {
    const { id, api_key: oldKey } = (await register()).body as { id: string; api_key: string };
    const res = await t.api('POST', `/v1/devices/${id}/keys`, { token: op });
    const newKey = res.body.api_key as string;
    expect(newKey).not.toBe(oldKey);
    expect((await exchange(oldKey)).body.error?.code).toBe('AUTH_API_KEY_INVALID');
    expect((await exchange(newKey)).status).toBe(200);
  });

  it('revoking stops the key; a revoked device cannot be updated or get a new key', async () => {
    const { id, api_key: key } = (await register()).body as { id: string; api_key: string };
    const res = await t.api('DELETE', `/v1/devices/${id}`, { token: op });
    expect(res.body).toMatchObject({ id, status: 'revoked' });
    expect(res.body.revoked_at).toBeGreaterThan(0);
    const ex = await exchange(key);
    expect(ex.status).toBe(401);
    expect(['AUTH_API_KEY_INVALID', 'AUTH_DEVICE_REVOKED']).toContain(ex.body.error?.code);
    expect((await t.api('POST', `/v1/devices/${id}/keys`, { token: op })).body.error?.code).toBe('DEVICE_REVOKED');
    expect((await t.api('DELETE', '/v1/devices/no-such-device', { token: op })).status).toBe(404);
  });
});

describe('API key → device token', () => {
  it('answers a device token for the device, valid for 24 h', async () => {
    const { id, api_key: key } = (await register()).body as { id: string; api_key: string };
    const res = await exchange(key);
    expect(res.body).toMatchObject({ device_id: id, expires_in: 86_400 });
    const claims = await t.auth.keys.verifier.verify(res.body.token as string);
    expect(claims).toMatchObject({ sub: id, typ: 'device' });
    expect(claims.exp - claims.iat).toBe(86_400);
  });

  it('refuses wrong, truncated and foreign keys with 401, then every exchange from that IP with 429 after 5 failures, even a right key', async () => {
    const { api_key: key } = (await register()).body as { api_key: string };
    const ip = '10.7.7.7';
    // The last character changed (to one it is not: 'A' when it ends in 'A' would be the right key).
    const wrongLast = `${key.slice(0, -1)}${key.endsWith('A') ? 'B' : 'A'}`;
    const bad = [wrongLast, key.slice(0, 20), 'fwk_nope', 'sk_live_123'];
    for (const k of bad) expect((await exchange(k, ip)).body.error?.code).toBe('AUTH_API_KEY_INVALID');
    expect((await exchange('fwk_other-device_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', ip)).status).toBe(401);
    const limited = await exchange('fwk_x', ip);
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toBe('60');
    // A right key from that address is refused too: an address over its limit learns nothing more,
    // not even which of its guesses was right.
    const right = await exchange(key, ip);
    expect(right.status).toBe(429);
    expect(right.body.token).toBeUndefined();
    expect(right.headers.get('retry-after')).toBe('60');
    // Other addresses are not affected.
    expect((await exchange(key, '10.7.7.8')).status).toBe(200);
  });

  it('refuses a body without api_key with 400', async () => {
    expect((await t.api('POST', '/v1/devices/token', { body: { key: 'x' } })).status).toBe(400);
  });
});

describe('service tokens', () => {
  it('an admin mints one; it can manage devices but not users', async () => {
    const admin = await t.tokenFor('admin');
    const res = await t.api('POST', '/v1/service-tokens', { token: admin, body: { name: 'device-service', ttl_s: 3600 } });
    expect(res.body.expires_in).toBe(3600);
    const svc = res.body.token as string;
    expect(await t.auth.keys.verifier.verify(svc)).toMatchObject({ typ: 'service', sub: 'device-service' });
    expect((await t.api('POST', '/v1/devices', { token: svc, body: { type: 'esp32' } })).status).toBe(201);
    expect((await t.api('GET', '/v1/users', { token: svc })).status).toBe(403);
    expect((await t.api('POST', '/v1/service-tokens', { token: admin, body: { name: 'x', ttl_s: 10 ** 7 } })).status).toBe(400);
  });
});

describe('RBAC on every route', () => {
  type Caller = 'none' | 'device' | 'viewer' | 'operator' | 'service' | 'admin';
  const routes: [string, string, Caller[]][] = [
    ['POST', '/v1/auth/logout', ['viewer', 'operator', 'admin']],
    ['GET', '/v1/auth/me', ['viewer', 'operator', 'admin']],
    ['POST', '/v1/auth/password', ['viewer', 'operator', 'admin']],
    ['POST', '/v1/users', ['admin']],
    ['GET', '/v1/users', ['admin']],
    ['GET', '/v1/users/no-such-user', ['admin']],
    ['POST', '/v1/users/no-such-user/unlock', ['admin']],
    ['PATCH', '/v1/users/no-such-user', ['admin']],
    ['DELETE', '/v1/users/no-such-user', ['admin']],
    ['POST', '/v1/keys/rotate', ['admin']],
    ['POST', '/v1/service-tokens', ['admin']],
    ['GET', '/v1/audit', ['admin']],
    ['GET', '/v1/spec', ['admin']],
    ['POST', '/v1/devices', ['operator', 'service', 'admin']],
    ['GET', '/v1/devices', ['viewer', 'operator', 'service', 'admin']],
    ['GET', '/v1/devices/no-such-device', ['viewer', 'operator', 'service', 'admin']],
    ['PATCH', '/v1/devices/no-such-device', ['operator', 'service', 'admin']],
    ['DELETE', '/v1/devices/no-such-device', ['operator', 'service', 'admin']],
    ['POST', '/v1/devices/no-such-device/keys', ['operator', 'service', 'admin']],
  ];

  it('anonymous → 401, roles not listed → 403, listed roles pass the guard', async () => {
    const tokens: Record<Caller, string | undefined> = {
      none: undefined,
      device: await signToken(t.auth.keys.signer, { sub: 'some-device', typ: 'device', ttlSeconds: 600 }),
      viewer: await t.tokenFor('viewer'),
      operator: await t.tokenFor('operator'),
      service: await signToken(t.auth.keys.signer, { sub: 'svc', typ: 'service', ttlSeconds: 600 }),
      admin: await t.tokenFor('admin'),
    };
    const problems: string[] = [];
    for (const [method, path, allowed] of routes) {
      for (const caller of Object.keys(tokens) as Caller[]) {
        // Bodies are left out on purpose: an allowed caller gets past the guard to a 400 or 404, never a side effect.
        const body = method === 'GET' || method === 'DELETE' ? undefined : (path === '/v1/auth/logout' || path === '/v1/keys/rotate' ? undefined : {});
        if ((path === '/v1/auth/logout' || path === '/v1/keys/rotate') && allowed.includes(caller)) continue; // real side effects; covered elsewhere
        const res = await t.api(method, path, { token: tokens[caller], body });
        const expected = caller === 'none' ? [401] : allowed.includes(caller) ? 'pass' : [403];
        const ok = expected === 'pass' ? ![401, 403].includes(res.status) : expected.includes(res.status);
        if (!ok) problems.push(`${method} ${path} as ${caller}: ${res.status} ${res.body.error?.code ?? ''}`);
      }
    }
    expect(problems).toEqual([]);
  });
});
