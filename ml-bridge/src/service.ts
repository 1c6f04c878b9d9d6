/** The ML bridge as a Fleetwire service: `fleetwire ml-bridge` alone, or one of `fleetwire up`. */
import type { ServiceDefinition } from '@fleetwire/common';
import { loadMlBridgeConfig, type MlBridgeConfig } from './config.js';

export const service: ServiceDefinition<MlBridgeConfig> = {
  name: 'ml-bridge',
  summary: 'ML inference: answers each device request once (result, error or timeout), supervises the Python workers',
  loadConfig: loadMlBridgeConfig,
  spec: async (config) => ({ workers: config.workers, timeout_ms: config.timeoutMs, max_timeout_ms: config.maxTimeoutMs }),
  async build() {
    throw new Error('ml-bridge: being built (issue 12)');
  },
};
