/** The ML bridge as a Fleetwire service: `fleetwire ml-bridge` alone, or one of `fleetwire up`. */
import type { ServiceDefinition } from '@fleetwire/common';
import { buildMlBridge } from './app.js';
import { loadMlBridgeConfig, type MlBridgeConfig } from './config.js';
import { modelsDir, workerCommand } from './workers.js';

export const service: ServiceDefinition<MlBridgeConfig> = {
  name: 'ml-bridge',
  summary: 'ML inference: answers each device request once (result, error or timeout), supervises the Python workers',
  loadConfig: loadMlBridgeConfig,
  spec: async (config) => ({
    broker_url: config.brokerUrl || 'this process\'s /mqtt',
    timeout_ms: config.timeoutMs,
    max_timeout_ms: config.maxTimeoutMs,
    deadline_check_ms: config.deadlineCheckMs,
    workers: config.workers,
    worker_command: workerCommand(config),
    models_dir: modelsDir(config),
    worker_concurrency: config.workerConcurrency,
    heartbeat_ms: config.heartbeatMs,
    lock_ms: config.lockMs,
    max_input_rows: config.maxInputRows,
    worker_missed_heartbeats: config.workerMissedHeartbeats,
  }),
  async build(config, deps) {
    const bridge = await buildMlBridge(config, deps);
    return {
      readiness: bridge.readiness,
      start: (port) => bridge.start(port),
      drain: () => bridge.drain(),
      close: () => bridge.close(),
      shutdownTimeoutMs: bridge.shutdownTimeoutMs,
    };
  },
};
