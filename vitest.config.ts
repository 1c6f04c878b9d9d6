import { defineConfig } from 'vitest/config';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

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
    // Test files share one Redis and the cluster-wide registry keys, so files run one at a time.
    fileParallelism: false,
    testTimeout: 20_000,
    hookTimeout: 20_000,
    reporters: ['default', 'json'],
    outputFile: { json: '.test-results/vitest.json' },
  },
});
