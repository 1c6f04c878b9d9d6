import { describe, expect, it } from 'vitest';
import { mkdtemp, readdir, stat, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger, createTokenVerifier, generateSigningKey, loadOrCreateKeySet, signToken, tokenFromSubprotocols } from '../src/index.js';

describe('logger redaction', () => {
  it('never writes tokens, passwords or API keys', () => {
    const lines: string[] = [];
    const log = createLogger({ destination: new Writable({ write(c, _e, cb) { lines.push(String(c)); cb(); } }) });
    log.info({ token: 'tok-SECRET', password: 'pw-SECRET', user: { api_key: 'fwk_SECRET' }, req: { headers: { 'sec-websocket-protocol': 'mqtt, auth.SECRET' } } }, 'hello');
    log.info({ body: { password: 'SECRET', new_password: 'SECRET' }, credentials: { refresh_token: 'SECRET' }, headers: { authorization: 'Bearer SECRET' } }, 'again');
    expect(lines.join('')).not.toContain('SECRET');
    expect(lines.join('')).toContain('[redacted]');
  });
});

describe('local signing keys', () => {
  it('creates one Ed25519 key with mode 0600 and reuses it', async () => {
    const dir = join(await mkdtemp(join(tmpdir(), 'fw-keys-')), 'keys');
    const first = await loadOrCreateKeySet(dir);
    const second = await loadOrCreateKeySet(dir);
    expect(second.signer.kid).toBe(first.signer.kid);
    const [file] = await readdir(dir);
    expect((await stat(join(dir, file!))).mode & 0o777).toBe(0o600);
    expect(first.publicJwks[0]).not.toHaveProperty('d');
  });

  it('refuses a key file that others can read, saying how to fix it', async () => {
    const dir = join(await mkdtemp(join(tmpdir(), 'fw-keys-')), 'keys');
    await loadOrCreateKeySet(dir);
    const [file] = await readdir(dir);
    await chmod(join(dir, file!), 0o644);
    await expect(loadOrCreateKeySet(dir)).rejects.toThrow(/chmod 600/);
  });

  it('after a rotation the newest key signs and tokens from the previous key still verify', async () => {
    const dir = join(await mkdtemp(join(tmpdir(), 'fw-keys-')), 'keys');
    const old = await loadOrCreateKeySet(dir);
    const oldToken = await signToken(old.signer, { sub: 'dev-1', typ: 'device', ttlSeconds: 60 });
    await new Promise((r) => setTimeout(r, 5));
    await generateSigningKey(dir);
    const rotated = await loadOrCreateKeySet(dir);
    expect(rotated.signer.kid).not.toBe(old.signer.kid);
    const verifier = createTokenVerifier({ keys: rotated.publicJwks });
    expect((await verifier.verify(oldToken)).sub).toBe('dev-1');
    const newToken = await signToken(rotated.signer, { sub: 'dev-2', typ: 'device', ttlSeconds: 60 });
    expect((await verifier.verify(newToken)).sub).toBe('dev-2');
  });
});

describe('revocation claims', () => {
  it('accepts a whole-number gen and a session id, and refuses any other shape (revocation compares them)', async () => {
    const { signer, publicJwks } = await loadOrCreateKeySet(join(await mkdtemp(join(tmpdir(), 'fw-keys-')), 'keys'));
    const verifier = createTokenVerifier({ keys: publicJwks });
    const user = (extra: Record<string, string | number | boolean>) => signToken(signer, { sub: 'u-1', typ: 'user', role: 'viewer', ttlSeconds: 60, extra });
    expect(await verifier.verify(await user({ gen: 3, sid: 's-1' }))).toMatchObject({ gen: 3, sid: 's-1' });
    const shapes: Record<string, string | number | boolean>[] = [{ gen: -1 }, { gen: 1.5 }, { gen: '2' }, { gen: true }, { sid: '' }, { sid: 7 }];
    for (const bad of shapes) {
      await expect(verifier.verify(await user(bad)), JSON.stringify(bad)).rejects.toMatchObject({ code: 'AUTH_TOKEN_INVALID' });
    }
  });
});

describe('subprotocol token extraction', () => {
  it('finds auth.<jwt> wherever it is offered, and nothing else', () => {
    expect(tokenFromSubprotocols('mqtt, auth.a.b.c')).toBe('a.b.c');
    expect(tokenFromSubprotocols('auth.x.y.z,mqtt')).toBe('x.y.z');
    expect(tokenFromSubprotocols('mqtt')).toBeNull();
    expect(tokenFromSubprotocols(undefined)).toBeNull();
  });
});

describe('verified-token cache', () => {
  /** A new key in its own folder and a verifier that trusts it. */
  async function freshVerifier() {
    const { signer, publicJwks } = await loadOrCreateKeySet(join(await mkdtemp(join(tmpdir(), 'fw-keys-')), 'keys'));
    return { signer, verifier: createTokenVerifier({ keys: publicJwks }) };
  }

  it('answers a repeated token from the cache but still refuses it once it has expired', async () => {
    const { signer, verifier } = await freshVerifier();
    const token = await signToken(signer, { sub: 'dev-c', typ: 'device', ttlSeconds: 1 });
    expect((await verifier.verify(token)).sub).toBe('dev-c');
    expect((await verifier.verify(token)).sub).toBe('dev-c');
    // exp is 1 s away; the 5 s clock tolerance applies as for a fresh verification.
    await new Promise((r) => setTimeout(r, 6200));
    await expect(verifier.verify(token)).rejects.toMatchObject({ code: 'AUTH_TOKEN_EXPIRED' });
  }, 10_000);

  it('forgets everything when the trusted keys change, so a removed key stops verifying at once', async () => {
    const { signer, verifier } = await freshVerifier();
    const token = await signToken(signer, { sub: 'dev-k', typ: 'device', ttlSeconds: 60 });
    await verifier.verify(token);
    const other = await loadOrCreateKeySet(join(await mkdtemp(join(tmpdir(), 'fw-keys-')), 'keys'));
    verifier.setKeys(other.publicJwks); // a different key set altogether
    await expect(verifier.verify(token)).rejects.toMatchObject({ code: 'AUTH_TOKEN_INVALID' });
  });

  it('does not accept a token that differs from a cached one by a byte', async () => {
    const { signer, verifier } = await freshVerifier();
    const token = await signToken(signer, { sub: 'dev-t', typ: 'device', ttlSeconds: 60 });
    await verifier.verify(token);
    const [h, p, s] = token.split('.');
    const tampered = `${h}.${p}.${s!.slice(0, -2)}${s!.endsWith('AA') ? 'BB' : 'AA'}`;
    await expect(verifier.verify(tampered)).rejects.toMatchObject({ code: 'AUTH_TOKEN_INVALID' });
  });
});
