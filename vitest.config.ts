import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

const src = (p: string): string => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  resolve: {
    alias: {
      '@fleetwire/common': src('./common/src/index.ts'),
      '@fleetwire/broker': src('./broker/src/index.ts'),
      '@fleetwire/auth-service': src('./auth-service/src/index.ts'),
    },
  },
  test: {
    include: ['common/test/**/*.test.ts', 'broker/test/**/*.test.ts', 'auth-service/test/**/*.test.ts', 'cli/test/**/*.test.ts', 'e2e/**/*.test.ts'],
    // Test files share one Redis and the cluster-wide registry keys, so files run one at a time.
    fileParallelism: false,
    testTimeout: 20_000,
    hookTimeout: 20_000,
    reporters: ['default', 'json'],
    outputFile: { json: '.test-results/vitest.json' },
  },
});
