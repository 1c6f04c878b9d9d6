/** The broker's part of `fleetwire spec` and GET /v1/spec: features and limits in force, never secrets. */
import type { BrokerConfig } from './config.js';

export function brokerSpecReport(config: BrokerConfig): Record<string, unknown> {
  return {
    features: {
      tls: Boolean(config.tlsCertFile),
      cluster: config.cluster,
      service_tcp_listener: config.tcpPort > 0,
      token_source: config.jwksUrl ? 'jwks' : 'local-keys',
    },
    limits: Object.fromEntries(Object.entries(config).filter(([k]) => !/url|file|dir|host|nodeId|nodeEnv|logLevel|trustedProxies/i.test(k))),
  };
}
