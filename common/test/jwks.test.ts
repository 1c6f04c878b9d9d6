import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { createTokenVerifier, generateSigningKey, loadOrCreateKeySet, signToken, type LocalKeySet } from '../src/index.js';

let server: Server;
let keys: LocalKeySet;
let fetches = 0;
let url: string;
const dir = mkdtemp(join(tmpdir(), 'fw-jwks-')).then((d) => join(d, 'keys'));

beforeAll(async () => {
  keys = await loadOrCreateKeySet(await dir);
  server = createServer((_req, res) => {
    fetches++;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: keys.publicJwks }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

describe('verifying against a JWKS URL', () => {
  it('caches the key set, and refetches when a token names a new kid after a rotation', async () => {
    const verifier = createTokenVerifier({ jwksUrl: url, jwksCacheMs: 60_000, jwksCooldownMs: 0 });
    const before = await signToken(keys.signer, { sub: 'dev-1', typ: 'device', ttlSeconds: 60 });
    expect((await verifier.verify(before)).sub).toBe('dev-1');
    expect((await verifier.verify(before)).sub).toBe('dev-1');
    expect(fetches).toBe(1);

    await new Promise((r) => setTimeout(r, 5));
    await generateSigningKey(await dir);
    keys = await loadOrCreateKeySet(await dir);
    const after = await signToken(keys.signer, { sub: 'dev-2', typ: 'device', ttlSeconds: 60 });
    expect((await verifier.verify(after)).sub).toBe('dev-2');
    expect(fetches).toBe(2);
    expect((await verifier.verify(before)).sub).toBe('dev-1'); // the previous key overlaps
  });

  it('refuses a token whose kid is not in the set with AUTH_TOKEN_INVALID', async () => {
    const verifier = createTokenVerifier({ jwksUrl: url, jwksCooldownMs: 0 });
    const stranger = await loadOrCreateKeySet(join(await mkdtemp(join(tmpdir(), 'fw-jwks-x-')), 'keys'));
    const token = await signToken(stranger.signer, { sub: 'dev-3', typ: 'device', ttlSeconds: 60 });
    await expect(verifier.verify(token)).rejects.toMatchObject({ code: 'AUTH_TOKEN_INVALID', connack: 5 });
  });
});
