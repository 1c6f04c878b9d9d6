/** The broker as a Fleetwire service: `fleetwire broker` alone, or one of `fleetwire up`. */
import { createTokenVerifier, type ServiceDefinition } from '@fleetwire/common';
import { buildBroker } from './app.js';
import { loadBrokerConfig, type BrokerConfig } from './config.js';
import { MQTT_PATH } from './handshake.js';
import { brokerSpecReport } from './spec.js';

export const service: ServiceDefinition<BrokerConfig> = {
  name: 'broker',
  summary: 'the MQTT-over-WebSocket broker at /mqtt, the connection registry and kicks',
  loadConfig: loadBrokerConfig,
  spec: async (config) => brokerSpecReport(config),
  async build(config, deps) {
    // Local keys (re-read every 30 s to pick up rotations), or the auth service's JWKS when the broker runs apart.
    const verifier = config.jwksUrl
      ? createTokenVerifier({ jwksUrl: config.jwksUrl, jwksCacheMs: config.jwksCacheMs })
      : (await deps.keyRing()).verifier;
    const broker = await buildBroker(config, {
      verifier, log: deps.log, metricsRegistry: deps.metricsRegistry, http: deps.http, redis: deps.redis, version: deps.version,
    });
    return {
      readiness: broker.readiness,
      async start(port) {
        const { tcpPort } = await broker.start(port);
        return [
          `MQTT over WebSocket: ${config.tlsCertFile ? 'wss' : 'ws'}://localhost:${port}${MQTT_PATH}  (subprotocols: mqtt, auth.<jwt>)`,
          ...(tcpPort ? [`Service MQTT/TCP:    ${config.tcpHost}:${tcpPort}  (username "service", JWT as password)`] : []),
        ];
      },
      async drain() {
        const { leftOpen } = await broker.drain();
        deps.log.info({ left_open: leftOpen }, 'broker drained');
      },
      close: () => broker.close(),
      shutdownTimeoutMs: config.shutdownTimeoutMs,
    };
  },
};
