/** @fleetwire/ml-bridge public API. */
export { mlBridgeSpec, loadMlBridgeConfig, mlBridgeDefaults, type MlBridgeConfig } from './config.js';
export { service as mlBridgeService } from './service.js';
