/** The fleetwire command as an operator runs it: the built CLI in a child process, real Redis. */
import { spawn } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
const REDIS_URL = process.env.REDIS_URL!;
const CLI = fileURLToPath(new URL('../dist/main.js', import.meta.url));
let dataDir: string;

interface Run { code: number | null; stdout: string; stderr: string }

function run(args: string[], opts: { stdin?: string; env?: Record<string, string> } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { PATH: process.env.PATH, REDIS_URL, FLEETWIRE_DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...opts.env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.stdin ?? '');
  });
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'fw-cli-'));
});

describe('fleetwire users', () => {
  it('create --password-stdin makes an admin; a weak password is refused with the reason', async () => {
    const ok = await run(['users', 'create', '--email', 'root@example.com', '--role', 'admin', '--password-stdin'], { stdin: 'cli-admin-passphrase\n' });
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ email: 'root@example.com', role: 'admin' });
    const weak = await run(['users', 'create', '--email', 'weak@example.com', '--role', 'viewer', '--password-stdin'], { stdin: 'password\n' });
    expect(weak.code).toBe(1);
    expect(weak.stderr).toContain('at least 12 characters');
  });

  it('import reports bad lines and imports nothing; a good file imports and re-running skips', async () => {
    const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
    const bad = join(dataDir, 'bad.jsonl');
    await writeFile(bad, `${JSON.stringify({ email: 'a@example.com', password_hash: sha('x') })}\n{oops\n`);
    const r1 = await run(['users', 'import', bad]);
    expect(r1.code).toBe(1);
    expect(r1.stderr).toContain(`${bad}:2: not valid JSON`);
    expect(r1.stderr).toContain('nothing imported');

    const good = join(dataDir, 'good.jsonl');
    await writeFile(good, [
      JSON.stringify({ email: 'legacy1@example.com', password_hash: sha('legacy-one-password') }),
      JSON.stringify({ email: 'legacy2@example.com', password_hash: `sha256$s4lt$${sha('s4ltlegacy-two-password')}`, role: 'operator' }),
    ].join('\n'));
    const r2 = await run(['users', 'import', good]);
    expect(r2.stdout).toContain('imported 2, already present (left unchanged) 0');
    expect((await run(['users', 'import', good])).stdout).toContain('imported 0, already present (left unchanged) 2');

    const spec = JSON.parse((await run(['spec'])).stdout) as { 'auth-service': { accounts: { legacy_password_hashes: number } } };
    expect(spec['auth-service'].accounts.legacy_password_hashes).toBe(2);
  });
});

describe('fleetwire devices register', () => {
  it('prints the id and the API key once', async () => {
    const r = await run(['devices', 'register', '--type', 'esp32-s3', '--id', 'cli-device-1', '--name', 'bench']);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { id: string; api_key: string };
    expect(out.id).toBe('cli-device-1');
    expect(out.api_key).toMatch(/^fwk_cli-device-1_/);
    expect(r.stderr).toContain('not shown again');
  });
});

describe('fleetwire spec', () => {
  it('shows parameters and never the admin password', async () => {
    const r = await run(['spec'], { env: { FLEETWIRE_ADMIN_EMAIL: 'boot@example.com', FLEETWIRE_ADMIN_PASSWORD: 'bootstrap-secret-value' } });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain('bootstrap-secret-value');
    expect(JSON.parse(r.stdout)).toMatchObject({ 'auth-service': { argon2id: { memory_kib: 4096 }, first_admin_from_env: true }, broker: { features: { cluster: 'none' } } });
  });
});

describe('fleetwire auth-service and up', () => {
  it('production refuses development argon2 parameters at start', async () => {
    const r = await run(['auth-service'], { env: { NODE_ENV: 'production', ARGON2_PROFILE: 'development' } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('ARGON2_ALLOW_WEAK');
  });

  it('up serves the broker and the auth service on one port and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [CLI, 'up'], {
      env: { PATH: process.env.PATH, REDIS_URL, FLEETWIRE_DATA_DIR: dataDir, LOG_LEVEL: 'warn', PORT: '0', HOST: '127.0.0.1' },
    });
    let stderr = '';
    const port = await new Promise<number>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /listening on port (\d+)/.exec(stderr);
        if (m) resolve(Number(m[1]));
      });
      child.on('exit', () => reject(new Error(stderr)));
    });
    const base = `http://127.0.0.1:${port}`;
    const login = await fetch(`${base}/v1/auth/login`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: 'root@example.com', password: 'cli-admin-passphrase' }),
    });
    expect(login.status).toBe(200);
    expect(((await (await fetch(`${base}/.well-known/jwks.json`)).json()) as { keys: unknown[] }).keys.length).toBeGreaterThan(0);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
