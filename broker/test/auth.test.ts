import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignJWT, generateKeyPair, exportJWK } from 'jose';
import { randomUUID } from 'node:crypto';
import { revokeDevice, revokeToken } from '@fleetwire/common';
import { connackCode, connect, rawConnect, rawMqtt, startBroker, type TestBroker } from './helpers.js';

let t: TestBroker;
beforeAll(async () => {
  // A high ban threshold: this file fails authentication on purpose many times from one address.
  t = await startBroker({ authFailuresBeforeBan: 1000, connectAttemptsPerIp: 1000 });
});
afterAll(async () => t.close());

const now = () => Math.floor(Date.now() / 1000);

async function forge(claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  const base = { iss: 'fleetwire', aud: 'fleetwire', typ: 'device', iat: now(), exp: now() + 600, jti: randomUUID(), ...claims };
  return new SignJWT(base).setProtectedHeader({ alg: 'EdDSA', kid: t.signer.kid, ...header }).sign(t.signer.privateKey);
}

describe('device authentication with the token in Sec-WebSocket-Protocol', () => {
  it('accepts a registered device whose client id equals its token sub', async () => {
    const token = await t.registerDevice('dev-good');
    const c = await connect(t.url, token, 'dev-good');
    expect(c.connected).toBe(true);
    await c.endAsync();
  });

  it('answers CONNACK 4 when no token is offered', async () => {
    expect(await connackCode(t.url, null, 'dev-none')).toBe(4);
  });

  it('answers CONNACK 4 for a garbage token', async () => {
    expect(await connackCode(t.url, 'not-a-jwt', 'dev-garbage')).toBe(4);
  });

  it('answers CONNACK 5 for a token signed by another key', async () => {
    await t.registerDevice('dev-otherkey');
    const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const token = await new SignJWT({ typ: 'device' }).setProtectedHeader({ alg: 'EdDSA', kid: t.signer.kid })
      .setIssuer('fleetwire').setAudience('fleetwire').setSubject('dev-otherkey').setIssuedAt().setExpirationTime('10m').setJti(randomUUID())
      .sign(privateKey);
    expect(await connackCode(t.url, token, 'dev-otherkey')).toBe(5);
  });

  it('answers CONNACK 5 for an expired token', async () => {
    await t.registerDevice('dev-expired');
    expect(await connackCode(t.url, await forge({ sub: 'dev-expired', iat: now() - 600, exp: now() - 60 }), 'dev-expired')).toBe(5);
  });

  it('closes with 4002 right after CONNACK a token that expired within the clock tolerance', async () => {
    await t.registerDevice('dev-justexpired');
    const c = await rawMqtt(t.url, await forge({ sub: 'dev-justexpired', iat: now() - 600, exp: now() - 2 }));
    const started = Date.now();
    expect((await rawConnect(c, 'dev-justexpired')).returnCode).toBe(0); // accepted: 2 s late is within the tolerance
    expect(await c.closed).toEqual({ code: 4002, reason: 'token expired' });
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('answers CONNACK 5 for a token that is not yet valid', async () => {
    await t.registerDevice('dev-nbf');
    expect(await connackCode(t.url, await forge({ sub: 'dev-nbf', nbf: now() + 300 }), 'dev-nbf')).toBe(5);
  });

  it('answers CONNACK 5 for a token meant for another audience', async () => {
    await t.registerDevice('dev-aud');
    expect(await connackCode(t.url, await forge({ sub: 'dev-aud', aud: 'someone-else' }), 'dev-aud')).toBe(5);
  });

  it('refuses alg "none"', async () => {
    await t.registerDevice('dev-none-alg');
    const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const token = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ iss: 'fleetwire', aud: 'fleetwire', sub: 'dev-none-alg', typ: 'device', iat: now(), exp: now() + 600, jti: 'x' })}.`;
    expect(await connackCode(t.url, token, 'dev-none-alg')).toBe(5);
  });

  it('refuses an HS256 token whose secret is the public key (algorithm confusion)', async () => {
    await t.registerDevice('dev-hs256');
    const { publicKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
    const secret = new TextEncoder().encode(JSON.stringify(await exportJWK(publicKey)));
    const token = await new SignJWT({ typ: 'device' }).setProtectedHeader({ alg: 'HS256', kid: t.signer.kid })
      .setIssuer('fleetwire').setAudience('fleetwire').setSubject('dev-hs256').setIssuedAt().setExpirationTime('10m').setJti('j').sign(secret);
    expect(await connackCode(t.url, token, 'dev-hs256')).toBe(5);
  });

  it('answers CONNACK 5 when the client id differs from the token sub', async () => {
    const token = await t.registerDevice('dev-real');
    expect(await connackCode(t.url, token, 'dev-impostor')).toBe(5);
  });

  it('answers CONNACK 5 for a revoked device', async () => {
    const token = await t.registerDevice('dev-revoked');
    await revokeDevice(t.redis, 'dev-revoked');
    expect(await connackCode(t.url, token, 'dev-revoked')).toBe(5);
  });

  it('answers CONNACK 5 for a device that was never registered', async () => {
    expect(await connackCode(t.url, await t.mint({ sub: 'dev-unknown' }), 'dev-unknown')).toBe(5);
  });

  it('answers CONNACK 5 for a revoked token', async () => {
    await t.registerDevice('dev-jti');
    const token = await forge({ sub: 'dev-jti', jti: 'revoked-jti-1' });
    await revokeToken(t.redis, 'revoked-jti-1', now() + 600);
    expect(await connackCode(t.url, token, 'dev-jti')).toBe(5);
  });

  it('does not let a user token use a bare (device-like) client id', async () => {
    const token = await t.mint({ sub: 'alice', typ: 'user', role: 'operator' });
    expect(await connackCode(t.url, token, 'dev-good')).toBe(5);
    const ok = await connect(t.url, token, 'user:alice:1');
    await ok.endAsync();
  });

  it('does not let a service whose name is a prefix of another\'s take over that service\'s session', async () => {
    const real = await connect(t.url, await t.mint({ sub: 'pb-engine', typ: 'service' }), 'service:pb-engine:1');
    const short = await t.mint({ sub: 'pb', typ: 'service' });
    expect(await connackCode(t.url, short, 'service:pb-engine:1')).toBe(5);
    expect(await connackCode(t.url, short, 'service:pbx')).toBe(5);
    expect(real.connected).toBe(true);
    // Its own ids: exactly typ:sub, or typ:sub: followed by anything.
    for (const id of ['service:pb', 'service:pb:worker-2']) await (await connect(t.url, short, id)).endAsync();
    await real.endAsync();
  });

  it('counts refused authentications by reason and never logs a token', async () => {
    const token = await forge({ sub: 'dev-log', aud: 'wrong' });
    await connackCode(t.url, token, 'dev-log');
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_auth_failures_total\{reason="AUTH_TOKEN_INVALID"\} \d+/);
    expect(metrics).toMatch(/fleetwire_broker_auth_failures_total\{reason="AUTH_TOKEN_MISSING"\} \d+/);
    const all = t.logs.join('');
    expect(all).toContain('authentication refused');
    expect(all).not.toContain(token);
    expect(all).not.toContain(token.split('.')[2]);
  });
});
