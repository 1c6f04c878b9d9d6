import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateKeySet, rotateSigningKey } from '@fleetwire/common';
import { argon2Params, loadAuthConfig } from '../src/index.js';
import { ADMIN, startAuth, type TestAuth } from './helpers.js';

describe('argon2id profiles', () => {
  it('development by default, OWASP parameters in production', () => {
    expect(argon2Params(loadAuthConfig({}))).toEqual({ memoryKib: 4096, timeCost: 1, parallelism: 1 });
    expect(argon2Params(loadAuthConfig({ NODE_ENV: 'production' }))).toEqual({ memoryKib: 19_456, timeCost: 2, parallelism: 1 });
    expect(argon2Params(loadAuthConfig({ ARGON2_MEMORY_KIB: '65536' }))).toMatchObject({ memoryKib: 65_536 });
  });

  it('production refuses to start with development parameters unless explicitly overridden', () => {
    expect(() => loadAuthConfig({ NODE_ENV: 'production', ARGON2_PROFILE: 'development' })).toThrow(/ARGON2_ALLOW_WEAK/);
    expect(() => loadAuthConfig({ NODE_ENV: 'production', ARGON2_MEMORY_KIB: '8192' })).toThrow(/below m=19456/);
    expect(argon2Params(loadAuthConfig({ NODE_ENV: 'production', ARGON2_PROFILE: 'development', ARGON2_ALLOW_WEAK: 'true' })).memoryKib).toBe(4096);
  });

  it('names every bad setting', () => {
    expect(() => loadAuthConfig({ PASSWORD_MIN_LENGTH: '8', LOCKOUT_S: 'soon' })).toThrow(/PASSWORD_MIN_LENGTH="8"[\s\S]*LOCKOUT_S="soon"/);
    expect(() => loadAuthConfig({ DEVICE_TOKEN_TTL_S: '200000', RESET_SENDER: 'webhook' }))
      .toThrow(/DEVICE_TOKEN_TTL_S=200000 outlives KEY_RETIRE_AFTER_S[\s\S]*RESET_WEBHOOK_URL/);
    expect(() => loadAuthConfig({ FLEETWIRE_ADMIN_EMAIL: 'a@b.c' })).toThrow(/together/);
    expect(() => loadAuthConfig({ HTTP_HEADERS_TIMEOUT_MS: '40000' })).toThrow(/HTTP_HEADERS_TIMEOUT_MS \(40000\) must not exceed HTTP_REQUEST_TIMEOUT_MS/);
  });
});

describe('signing keys on disk', () => {
  it('publishes a replaced key until its successor has signed for KEY_RETIRE_AFTER_S, then deletes it on the next rotation', async () => {
    const dir = join(await mkdtemp(join(tmpdir(), 'fw-keys-')), 'keys');
    const first = (await loadOrCreateKeySet(dir)).signer.kid;
    const second = await rotateSigningKey(dir, { activateInMs: 0, retireAfterMs: 1000 });
    let set = await loadOrCreateKeySet(dir, { retireAfterMs: 1000 });
    expect(set.signer.kid).toBe(second);
    expect(set.publicJwks.map((k) => k.kid)).toEqual([second, first]);
    set = await loadOrCreateKeySet(dir, { retireAfterMs: 1000, now: Date.now() + 1500 });
    expect(set.publicJwks.map((k) => k.kid)).toEqual([second]);
    expect(set.retired).toEqual([first]);
    await new Promise((r) => setTimeout(r, 1100));
    const third = await rotateSigningKey(dir, { activateInMs: 60_000, retireAfterMs: 1000 });
    expect((await readdir(dir)).sort()).toEqual([`${second}.private.jwk`, `${third}.private.jwk`].sort());
    set = await loadOrCreateKeySet(dir, { retireAfterMs: 1000 });
    expect(set.signer.kid).toBe(second); // the new key waits for its activation time
  });
});

describe('spec and audit over HTTP', () => {
  let t: TestAuth;
  beforeAll(async () => {
    t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 });
  });
  afterAll(async () => t.close());

  it('GET /v1/spec reports parameters, lifetimes, limits and counts, and never a secret', async () => {
    const admin = await t.tokenFor('admin');
    const res = await t.api('GET', '/v1/spec', { token: admin });
    expect(res.body).toMatchObject({
      version: expect.any(String), commit: expect.any(String),
      'auth-service': {
        argon2id: { memory_kib: 4096, time_cost: 1, parallelism: 1, below_owasp_minimum: true },
        token_lifetimes_s: { access: 900, device: 86_400 },
        accounts: { users: 1, legacy_password_hashes: 0 },
      },
    });
    expect(JSON.stringify(res.body)).not.toContain(ADMIN.password);
  });

  it('GET /v1/audit filters by type, actor and subject, and pages newest first', async () => {
    for (let i = 0; i < 3; i++) await t.login('nobody@example.com', `guess-${i}-xxxxxxxx`);
    const admin = await t.tokenFor('admin');
    const failed = await t.api('GET', '/v1/audit?type=login.failed&limit=2', { token: admin });
    const records = failed.body.records as { id: string; type: string; subject: string; ip: string }[];
    expect(records).toHaveLength(2);
    expect(records.every((r) => r.type === 'login.failed' && r.subject === 'email:nobody@example.com' && r.ip === '127.0.0.1')).toBe(true);
    expect(records[0]!.id > records[1]!.id).toBe(true);
    const rest = await t.api('GET', `/v1/audit?type=login.failed&before=${failed.body.next as string}`, { token: admin });
    expect((rest.body.records as unknown[]).length).toBe(1);
    const me = (await t.auth.users.byEmail(ADMIN.email))!.id;
    const mine = await t.api('GET', `/v1/audit?actor=user:${me}&type=login.succeeded`, { token: admin });
    expect((mine.body.records as unknown[]).length).toBeGreaterThan(0);
    expect((await t.api('GET', '/v1/audit?type=no.such.type', { token: admin })).status).toBe(400);
  });

  it('serves the service\'s health, readiness and metrics when it runs alone', async () => {
    expect((await t.api('GET', '/readyz')).body).toMatchObject({ status: 'ready' });
    const res = await fetch(`${t.url}/metrics`);
    expect(await res.text()).toContain('fleetwire_auth_logins_total');
  });
});
