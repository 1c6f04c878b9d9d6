// Child processes pinned to a core for the single-target benches (auth, simulator):
// every one is killed and the scratch folder removed when the bench exits.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './util.mjs';

export function pinnedProcesses(name) {
  const dataDir = mkdtempSync(join(tmpdir(), `fw-bench-${name}-`));
  const procs = [];
  process.on('exit', () => { for (const p of procs) p.kill('SIGKILL'); rmSync(dataDir, { recursive: true, force: true }); });

  /** Runs `cmd` on core `cpu`; stderr is piped when asked, otherwise inherited or ignored. */
  function pinned(cpu, cmd, args, env = {}, stderr = 'ignore') {
    const child = spawn('taskset', ['-c', String(cpu), cmd, ...args], { stdio: ['ignore', 'ignore', stderr], env: { ...process.env, ...env } });
    procs.push(child);
    return child;
  }

  /** A throwaway redis-server (no persistence) on core `cpu`; resolves to its URL. */
  async function redis(cpu) {
    const port = await freePort();
    pinned(cpu, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dataDir]);
    await waitForPort(port, 10_000);
    return `redis://127.0.0.1:${port}`;
  }

  return { dataDir, pinned, redis };
}
