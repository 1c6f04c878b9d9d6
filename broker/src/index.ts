/** @fleetwire/broker public API. */
export { buildBroker, type Broker, type BrokerDeps, type ListenInfo } from './app.js';
export { brokerSpec, loadBrokerConfig, brokerDefaults, type BrokerConfig } from './config.js';
export { service as brokerService } from './service.js';
export { MQTT_PATH } from './handshake.js';
export { brokerSpecReport } from './spec.js';
export { IngressRouter } from './ingress.js';
