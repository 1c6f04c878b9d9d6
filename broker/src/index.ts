/** @fleetwire/broker public API. */
export { buildBroker, type Broker, type BrokerDeps, type ListenInfo } from './app.js';
export { brokerSpec, loadBrokerConfig, brokerDefaults, type BrokerConfig } from './config.js';
export { createVerifierFromConfig, runBroker } from './main.js';
export { MQTT_PATH } from './handshake.js';
export { brokerSpecReport } from './spec.js';
