/**
 * vitest setupFile: every test file gets a Redis server of its own, started before the file
 * is imported and stopped after its last afterAll; REDIS_URL points at it.
 *
 * Why a whole server and not a key prefix or a database per file: files run in parallel,
 * and a database index scopes keys but not pub/sub channels. The broker publishes
 * revocations and kicks on fixed channels, and in cluster mode MQTT fan-out and `$SYS`
 * takeovers go through Redis pub/sub too, so two files on one server could kick or take
 * over each other's `dev-1`. A key prefix would also have to leave BullMQ's fixed
 * `fleetwire` prefix alone. A private server isolates keys, channels, per-address counters
 * and BullMQ with no code in the product knowing about tests, and starts in about 30 ms.
 * Nothing needs flushing: every file starts empty.
 *
 * Helpers read process.env.REDIS_URL, and processes the tests spawn (`fleetwire up`,
 * broker processes) are given it, so they talk to this file's server too.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, inject } from 'vitest';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once the server accepts connections; rejects if it exits first (say the port was taken since we chose it). */
function ready(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (!out.includes('Ready to accept connections')) return;
      child.stdout!.off('data', onData);
      child.stdout!.resume(); // keep draining its log so the server never blocks on a full pipe
      child.off('exit', onExit);
      resolve();
    };
    const onExit = (code: number | null): void => reject(new Error(`redis-server exited (${code}):\n${out}`));
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
    child.once('error', (err) => reject(new Error(`redis-server could not start (${err.message}): install it with 'apt-get install redis-server' (make test does)`)));
  });
}

async function startRedis(): Promise<{ url: string; child: ChildProcess }> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const dir = join(inject('redisRunDir'), String(port));
    await mkdir(dir, { recursive: true });
    // No persistence: the server lives as long as one test file. The pid file lets the
    // global teardown stop it if this file never gets to.
    const child = spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--pidfile', join(dir, 'redis.pid'),
      '--save', '', '--appendonly', 'no', '--logfile', '',
    ], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await ready(child);
      return { url: `redis://127.0.0.1:${port}`, child };
    } catch (err) {
      lastError = err;
      child.kill('SIGKILL');
    }
  }
  throw lastError;
}

const redis = await startRedis();
process.env.REDIS_URL = redis.url;

afterAll(async () => {
  if (redis.child.exitCode !== null) return;
  const exited = new Promise((r) => redis.child.once('exit', r));
  redis.child.kill('SIGTERM');
  await exited;
});
