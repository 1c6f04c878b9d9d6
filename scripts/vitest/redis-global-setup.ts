/**
 * vitest globalSetup: a run folder for the test files' private Redis servers (see
 * redis-per-file.ts), and at the end a sweep that stops any server a test file left behind
 * (a worker that crashed or was killed never ran the file's afterAll), so nothing is left
 * running after `make test`.
 */
import { mkdtemp, readdir, readFile, readlink, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    redisRunDir: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // The real path: the sweep below compares it with where each server runs.
  const runDir = await realpath(await mkdtemp(join(tmpdir(), 'fw-vitest-redis-')));
  project.provide('redisRunDir', runDir);
  return async () => {
    for (const name of await readdir(runDir)) {
      // A server that stopped normally has removed its pid file. One left behind may be stale
      // and its pid reused, so only a process working in that server's folder (Redis runs in
      // its --dir) is killed; where /proc does not exist, nothing is.
      const dir = join(runDir, name);
      const pid = Number(await readFile(join(dir, 'redis.pid'), 'utf8').catch(() => ''));
      const cwd = pid > 0 ? await readlink(`/proc/${pid}/cwd`).catch(() => '') : '';
      if (cwd === dir) process.kill(pid, 'SIGKILL');
    }
    await rm(runDir, { recursive: true, force: true });
  };
}
