/**
 * Response headers a browser or proxy acts on: answers holding tokens and keys are never
 * stored, content types are not sniffed, nothing leaks a Referer, /docs runs under a strict
 * Content-Security-Policy, and HSTS is sent when (and only when) the port serves TLS.
 */
import { execFileSync } from 'node:child_process';
import { get } from 'node:https';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '@fleetwire/common';
import { authDefaults, buildAuthService } from '../src/index.js';
import { ADMIN, REDIS_URL, startAuth, type Answer, type TestAuth } from './helpers.js';

let t: TestAuth;
let op: string;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 });
  op = await t.tokenFor('operator');
});
afterAll(async () => t.close());

function expectApiHeaders(res: Answer): void {
  expect(res.headers.get('cache-control')).toBe('no-store');
  expect(res.headers.get('x-content-type-options')).toBe('nosniff');
  expect(res.headers.get('referrer-policy')).toBe('no-referrer');
  expect(res.headers.get('content-security-policy')).toBe("default-src 'none'; frame-ancestors 'none'");
  expect(res.headers.get('strict-transport-security')).toBeNull(); // plain HTTP: HSTS would be ignored, and is not sent
}

describe('security headers', () => {
  it('a login answer (a token pair) is not stored by browsers or proxies', async () => {
    const res = await t.login(ADMIN.email, ADMIN.password);
    expect(res.status).toBe(200);
    expectApiHeaders(res);
    const failed = await t.login(ADMIN.email, 'not-the-admin-password');
    expect(failed.status).toBe(401);
    expectApiHeaders(failed);
  });

  it('a device-token answer and a new API key are not stored either', async () => {
    const reg = await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32' } });
    expect(reg.status).toBe(201);
    expectApiHeaders(reg);
    const ex = await t.api('POST', '/v1/devices/token', { body: { api_key: reg.body.api_key } });
    expect(ex.status).toBe(200);
    expectApiHeaders(ex);
  });

  it('the JWKS keeps its short public caching', async () => {
    const res = await t.api('GET', '/.well-known/jwks.json');
    expect(res.headers.get('cache-control')).toBe('public, max-age=60');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
  });

  it('/docs renders under a strict Content-Security-Policy and its assets load', async () => {
    const page = await fetch(`${t.url}/docs/`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('swagger-ui-bundle.js');
    expect(html).not.toMatch(/<script>(?!\s*<\/script>)/); // no inline script the policy would block
    const csp = page.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("script-src 'self';");
    expect(csp).toContain("object-src 'none'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(csp).not.toContain('unsafe-eval');
    expect(page.headers.get('x-content-type-options')).toBe('nosniff');
    for (const asset of ['swagger-ui-bundle.js', 'swagger-ui-standalone-preset.js', 'swagger-initializer.js', 'swagger-ui.css', 'index.css']) {
      const res = await fetch(`${t.url}/docs/static/${asset}`);
      expect(res.status, asset).toBe(200);
      expect(res.headers.get('content-security-policy'), asset).toBe(csp);
      // Read to the end: a half-read answer keeps its socket busy, and closing the server waits for it.
      await res.arrayBuffer();
    }
    const spec = await fetch(`${t.url}/docs/json`);
    expect((await spec.json() as { openapi: string }).openapi).toMatch(/^3\./);
  });
});

describe('HSTS', () => {
  it('is sent on every answer when the port serves TLS', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fw-hsts-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    const ca = await readFile(join(dir, 'cert.pem'));
    const config = authDefaults({ redisUrl: REDIS_URL, port: 0, host: '127.0.0.1', dataDir: dir });
    const tls = await buildAuthService(config, { log: createLogger({ level: 'silent' }), tls: { key: await readFile(join(dir, 'key.pem')), cert: ca } });
    try {
      const port = await tls.listen();
      const headersOf = (path: string): Promise<{ status: number; headers: Record<string, unknown> }> => new Promise((resolve, reject) => {
        get({ host: 'localhost', port, path, ca }, (res) => {
          res.resume();
          resolve({ status: res.statusCode!, headers: res.headers });
        }).once('error', reject);
      });
      for (const path of ['/healthz', '/v1/auth/me', '/docs/', '/no-such-route']) {
        const res = await headersOf(path);
        expect(res.headers['strict-transport-security'], path).toBe('max-age=31536000; includeSubDomains');
      }
      expect((await headersOf('/v1/auth/me')).headers['cache-control']).toBe('no-store');
    } finally {
      await tls.close();
    }
  });
});
