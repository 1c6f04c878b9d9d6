/** Supervised child processes: real `node` children, killed and hung for real. */
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, createMetricsRegistry, startServices, supervisedPart, Supervisor, type SupervisorOptions } from '../src/index.js';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
const REDIS_URL = process.env.REDIS_URL!;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A child running `code`; log records land in `logs`. */
function supervise(code: string, o: Partial<SupervisorOptions> = {}): { s: Supervisor; logs: Record<string, unknown>[] } {
  const logs: Record<string, unknown>[] = [];
  const destination = new Writable({ write(chunk, _e, cb) { logs.push(JSON.parse(String(chunk)) as Record<string, unknown>); cb(); } });
  const s = new Supervisor({
    name: 'child', command: process.execPath, args: ['-e', code], log: createLogger({ level: 'debug', name: 'sup-test', destination }),
    backoff: { initialMs: 50, maxMs: 200 }, stopTimeoutMs: 2000, ...o,
  });
  return { s, logs };
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(20);
  }
}

const alive = (pid: number): boolean => {
  try { process.kill(pid, 0); return true; } catch { return false; }
};

describe('a supervised process', () => {
  it('is restarted when it exits, with a delay that doubles up to the cap, and the restarts are counted', async () => {
    const metricsRegistry = createMetricsRegistry({ defaultMetrics: false });
    const { s, logs } = supervise('process.exit(3)', { metricsRegistry });
    s.start();
    await until(() => s.restarts.exited >= 4);
    await s.stop();
    const delays = logs.filter((l) => l.msg === 'supervised process exited; restarting').map((l) => l.restart_in_ms);
    expect(delays.slice(0, 4)).toEqual([50, 100, 200, 200]);
    expect(logs.find((l) => l.code === 3)).toBeDefined();
    expect(await metricsRegistry.metrics()).toMatch(/fleetwire_supervised_restarts_total\{process="child",reason="exited"\} [4-9]/);
  });

  it('is replaced when it stops passing its health check', async () => {
    let healthy = true;
    const { s } = supervise('setInterval(() => {}, 1000)', { health: async () => healthy, startupGraceMs: 20, healthIntervalMs: 20, unhealthyAfter: 3 });
    s.start();
    const first = s.pid!;
    await sleep(150);
    expect(s.pid).toBe(first);
    expect(s.healthy).toBe(true);
    healthy = false;
    await until(() => s.restarts.unhealthy === 1 && s.pid !== null && s.pid !== first);
    expect(alive(first)).toBe(false);
    healthy = true;
    await s.stop();
  });

  it('stops on drain: SIGTERM lets it finish its work, and it is not restarted', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fw-sup-'));
    const marker = join(dir, 'finished');
    const { s } = supervise(`process.on('SIGTERM', () => setTimeout(() => { require('fs').writeFileSync(${JSON.stringify(marker)}, 'done'); process.exit(0); }, 200)); setInterval(() => {}, 1000)`);
    s.start();
    await sleep(300);
    const pid = s.pid!;
    await s.stop();
    expect(await readFile(marker, 'utf8')).toBe('done');
    expect(alive(pid)).toBe(false);
    await sleep(300);
    expect(s.pid).toBeNull();
    expect(s.restarts).toEqual({ exited: 0, unhealthy: 0 });
  });

  it('is killed when it ignores SIGTERM past the stop timeout', async () => {
    const { s } = supervise(`process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)`, { stopTimeoutMs: 300 });
    s.start();
    await sleep(300);
    const pid = s.pid!;
    const t0 = Date.now();
    await s.stop();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(alive(pid)).toBe(false);
  });

  it('fits the service contract: started by the host, in /readyz, stopped on drain', async () => {
    const { s } = supervise('setInterval(() => {}, 1000)');
    const running = await startServices([{
      name: 'worker', summary: 'a child process',
      loadConfig: () => ({}), spec: async () => ({}),
      build: async () => supervisedPart(s, 2000),
    }], { REDIS_URL, PORT: '0', HOST: '127.0.0.1', FLEETWIRE_DATA_DIR: await mkdtemp(join(tmpdir(), 'fw-sup-')) }, {
      version: 'test', log: createLogger({ level: 'silent', name: 'sup-host' }),
    });
    const pid = s.pid!;
    expect(alive(pid)).toBe(true);
    const ready = await (await fetch(`http://127.0.0.1:${running.port}/readyz`)).json();
    expect(ready).toEqual({ status: 'ready', checks: { redis: true, 'worker.alive': true } });
    process.kill(pid, 'SIGKILL');
    await until(() => s.pid !== null && s.pid !== pid);
    await running.stop();
    expect(s.pid).toBeNull();
  });
});
