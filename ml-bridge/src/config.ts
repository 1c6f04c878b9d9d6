/** ML bridge settings: one spec, units in the names, validated and frozen at start-up. */
import { baseSpec, serverSpec, serverConfigProblems, configInvalid, defaults, int, mlSetting, str, loadConfig, type ConfigOf } from '@fleetwire/common';

export const mlBridgeSpec = {
  ...baseSpec,
  ...serverSpec,
  brokerUrl: str('ML_BROKER_URL', '', 'MQTT-over-WebSocket URL of a broker node the bridge publishes results through; empty = this process\'s own /mqtt (when the broker runs in it)'),
  // the request's life (contracts/ml.json; the broker reads the same settings to admit requests)
  timeoutMs: mlSetting('ML_TIMEOUT_MS'),
  maxTimeoutMs: mlSetting('ML_MAX_TIMEOUT_MS'),
  deadlineCheckMs: int('ML_DEADLINE_CHECK_MS', 20, 'how often requests past their deadline are looked for and answered timeout', { min: 5, max: 1000 }),
  // workers
  workers: int('ML_WORKERS', 1, 'Python worker processes this bridge starts and supervises; 0 = none (workers run elsewhere and are seen through their Redis heartbeats)', { min: 0, max: 64 }),
  workerCommand: str('ML_WORKER_COMMAND', '', 'the worker executable; empty = .venv/bin/fleetwire-ml-worker of this checkout (made by make venv)'),
  modelsDir: str('ML_MODELS_DIR', '', 'models/<name>/<version>/ directory the supervised workers load; empty = python-worker/models of this checkout'),
  workerConcurrency: int('ML_WORKER_CONCURRENCY', 32, 'jobs each supervised worker takes at once (they are inferred in micro-batches)', { min: 1, max: 1000 }),
  heartbeatMs: mlSetting('ML_WORKER_HEARTBEAT_MS'),
  lockMs: mlSetting('ML_WORKER_LOCK_MS'),
  maxInputRows: mlSetting('ML_MAX_INPUT_ROWS'),
  workerMissedHeartbeats: int('ML_WORKER_MISSED_HEARTBEATS', 5, 'a worker whose heartbeat is this many intervals old is not alive; a supervised one is restarted', { min: 2, max: 1000 }),
};

export type MlBridgeConfig = ConfigOf<typeof mlBridgeSpec>;

export function loadMlBridgeConfig(env: NodeJS.ProcessEnv = process.env): MlBridgeConfig {
  const config = loadConfig(mlBridgeSpec, env);
  const problems = serverConfigProblems(config);
  if (config.timeoutMs > config.maxTimeoutMs) problems.push(`ML_TIMEOUT_MS (${config.timeoutMs}) must not exceed ML_MAX_TIMEOUT_MS (${config.maxTimeoutMs})`);
  if (problems.length) throw configInvalid(problems);
  return config;
}

export function mlBridgeDefaults(overrides: Partial<MlBridgeConfig> = {}): MlBridgeConfig {
  return defaults(mlBridgeSpec, overrides);
}
