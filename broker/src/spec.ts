/** The broker's part of `fleetwire spec` and GET /v1/spec: features and limits in force, never secrets. */
import type { BrokerConfig } from './config.js';

/**
 * Every broker setting, marked `limit` (printed under `limits`) or `private` (never
 * printed: addresses, paths, URLs that may carry credentials, identities). Only `limit`
 * settings are printed, and a new setting fails to compile until it is marked here, so a
 * secret cannot reach the spec by default.
 */
const visibility = {
  nodeEnv: 'private', logLevel: 'private', redisUrl: 'private', dataDir: 'private', host: 'private', tlsCertFile: 'private',
  tlsKeyFile: 'private', trustedProxies: 'private', publicUrl: 'private', nodeId: 'private', jwksUrl: 'private', tcpHost: 'private',
  cluster: 'private', // reported under features
  port: 'limit', tcpPort: 'limit', keyRetireAfterS: 'limit', jwksCacheMs: 'limit',
  httpHeadersTimeoutMs: 'limit', httpRequestTimeoutMs: 'limit', httpKeepAliveTimeoutMs: 'limit', httpConnectionsCheckIntervalMs: 'limit',
  httpMaxSocketsPerIp: 'limit', wsMaxPayloadBytes: 'limit', maxPacketBytes: 'limit', connectTimeoutMs: 'limit', maxTopicLevels: 'limit',
  keepaliveMinS: 'limit', keepaliveMaxS: 'limit', drainTimeoutMs: 'limit', maxConnectionsPerIp: 'limit', connectAttemptsPerIp: 'limit',
  connectWindowS: 'limit', authFailuresBeforeBan: 'limit', banS: 'limit', publishPerS: 'limit', publishBurst: 'limit',
  publishPerMin: 'limit', publishBytesPerS: 'limit', publishBytesPerMin: 'limit', abuseDropsBeforeKick: 'limit', floodPenaltyS: 'limit',
  limitServices: 'limit', tokenNoticeS: 'limit', shutdownSpreadMs: 'limit', shutdownTimeoutMs: 'limit', registryFlushMs: 'limit', nodeTtlS: 'limit',
  mlTimeoutMs: 'limit', mlMaxTimeoutMs: 'limit', mlQuotaPerMin: 'limit',
} as const satisfies Record<keyof BrokerConfig, 'limit' | 'private'>;

const reportedLimits = (Object.keys(visibility) as (keyof BrokerConfig)[]).filter((k) => visibility[k] === 'limit');

export function brokerSpecReport(config: BrokerConfig): Record<string, unknown> {
  return {
    features: {
      tls: Boolean(config.tlsCertFile),
      cluster: config.cluster,
      service_tcp_listener: config.tcpPort > 0,
      token_source: config.jwksUrl ? 'jwks' : 'local-keys',
    },
    limits: Object.fromEntries(reportedLimits.map((k) => [k, config[k]])),
  };
}
