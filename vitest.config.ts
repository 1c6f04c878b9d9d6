import { defineConfig } from 'vitest/config';
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { E2eFirstSequencer } from './scripts/vitest/e2e-first-sequencer.js';

const root = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const readJson = (file: string): { name: string; workspaces?: string[] } => JSON.parse(readFileSync(root(file), 'utf8'));

// Every workspace in package.json: tests run from the TypeScript sources, so each package
// name resolves to its src/index.ts, and each workspace's test/ folder is included.
const workspaces = readJson('./package.json').workspaces ?? [];
const alias = Object.fromEntries(workspaces
  .filter((dir) => existsSync(root(`./${dir}/src/index.ts`)))
  .map((dir) => [readJson(`./${dir}/package.json`).name, root(`./${dir}/src/index.ts`)]));

export default defineConfig({
  resolve: { alias },
  test: {
    include: [...workspaces.map((dir) => `${dir}/test/**/*.test.ts`), 'e2e/**/*.test.ts'],
    // Each test file gets a Redis server of its own (scripts/vitest/redis-per-file.ts says why
    // a server and not a database or key prefix), so files run in parallel.
    globalSetup: ['scripts/vitest/redis-global-setup.ts'],
    setupFiles: ['scripts/vitest/redis-per-file.ts'],
    // The files mostly wait on sockets, timers and child processes, so two per core. On this
    // 2-core machine the whole vitest run took 172 s one file at a time, about 78 s with 2
    // workers, 55 s with 3 and 45 s with 4 (where the longest file, e2e/device, sets the pace).
    maxWorkers: availableParallelism() * 2,
    sequence: { sequencer: E2eFirstSequencer },
    testTimeout: 20_000,
    hookTimeout: 20_000,
    reporters: ['default', 'json'],
    outputFile: { json: '.test-results/vitest.json' },
  },
});
