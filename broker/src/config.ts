/** Broker settings: one spec, units in the names, validated and frozen at start-up. */
import { mlSetting, baseSpec, serverSpec, serverConfigProblems, configInvalid, bool, int, oneOf, str, loadConfig, defaults, type ConfigOf } from '@fleetwire/common';

export const brokerSpec = {
  ...baseSpec,
  ...serverSpec,
  nodeId: str('BROKER_NODE_ID', '', 'this node\'s id in the cluster; empty = random'),
  cluster: oneOf('BROKER_CLUSTER', 'none', ['none', 'redis'] as const, 'redis shares sessions, retained and fan-out between nodes'),
  jwksUrl: str('JWKS_URL', '', 'verify tokens against this JWKS instead of the local key folder'),
  jwksCacheMs: int('JWKS_CACHE_MS', 600_000, 'how long a fetched JWKS stays fresh', { min: 1000 }),
  tcpPort: int('BROKER_TCP_PORT', 0, 'loopback MQTT/TCP listener for services (username "service", JWT as password); 0 = off', { min: 0, max: 65535 }),
  tcpHost: str('BROKER_TCP_HOST', '127.0.0.1', 'address of the service TCP listener'),
  // input limits
  wsMaxPayloadBytes: int('BROKER_WS_MAX_PAYLOAD_BYTES', 262_144, 'largest WebSocket message accepted', { min: 1024 }),
  maxPacketBytes: int('BROKER_MAX_PACKET_BYTES', 262_144, 'largest MQTT packet accepted', { min: 1024 }),
  connectTimeoutMs: int('BROKER_CONNECT_TIMEOUT_MS', 5000, 'a socket that sends no CONNECT in this time is closed', { min: 100 }),
  maxTopicLevels: int('BROKER_MAX_TOPIC_LEVELS', 8, 'deepest topic accepted', { min: 3, max: 100 }),
  keepaliveMinS: int('BROKER_KEEPALIVE_MIN_S', 5, 'shortest MQTT keepalive accepted', { min: 1 }),
  keepaliveMaxS: int('BROKER_KEEPALIVE_MAX_S', 1200, 'longest MQTT keepalive accepted (0 = none is refused)', { min: 1, max: 65535 }),
  drainTimeoutMs: int('BROKER_DRAIN_TIMEOUT_MS', 30_000, 'a subscriber that does not drain its socket in this time is dropped', { min: 1000 }),
  // rate limits
  maxConnectionsPerIp: int('BROKER_MAX_CONNECTIONS_PER_IP', 1000, 'concurrent connections per remote IP on one node', { min: 1 }),
  connectAttemptsPerIp: int('BROKER_CONNECT_ATTEMPTS_PER_IP', 120, 'connection attempts per IP per window, cluster-wide', { min: 1 }),
  connectWindowS: int('BROKER_CONNECT_WINDOW_S', 60, 'window for BROKER_CONNECT_ATTEMPTS_PER_IP', { min: 1 }),
  authFailuresBeforeBan: int('BROKER_AUTH_FAILURES_BEFORE_BAN', 20, 'failed authentications per IP in BROKER_BAN_S before a ban', { min: 1 }),
  banS: int('BROKER_BAN_S', 300, 'how long an IP stays banned after too many failed authentications', { min: 1 }),
  publishPerS: int('BROKER_PUBLISH_PER_S', 50, 'sustained publishes per client per second (1 s window)', { min: 1 }),
  publishBurst: int('BROKER_PUBLISH_BURST', 200, 'publishes a client may send at once before the per-second limit applies', { min: 1 }),
  publishPerMin: int('BROKER_PUBLISH_PER_MIN', 1200, 'publishes per client per minute (60 s window)', { min: 1 }),
  publishBytesPerS: int('BROKER_PUBLISH_BYTES_PER_S', 131_072, 'sustained publish bytes per client per second', { min: 1024 }),
  publishBytesPerMin: int('BROKER_PUBLISH_BYTES_PER_MIN', 4_194_304, 'publish bytes per client per minute', { min: 1024 }),
  abuseDropsBeforeKick: int('BROKER_ABUSE_DROPS_BEFORE_KICK', 500, 'dropped publishes within 10 s after which the client is disconnected', { min: 1 }),
  floodPenaltyS: int('BROKER_FLOOD_PENALTY_S', 30, 'a client disconnected for flooding is refused (CONNACK 3) this long; 0 = off', { min: 0 }),
  limitServices: bool('BROKER_LIMIT_SERVICES', false, 'apply the per-client publish limits to service tokens too'),
  // ML admission (contracts/ml.json): the same settings the ml-bridge reads
  mlTimeoutMs: mlSetting('ML_TIMEOUT_MS'),
  mlMaxTimeoutMs: mlSetting('ML_MAX_TIMEOUT_MS'),
  mlQuotaPerMin: mlSetting('ML_QUOTA_PER_MIN'),
  // lifetimes
  tokenNoticeS: int('BROKER_TOKEN_NOTICE_S', 60, 'send a token-expiring notice this long before exp', { min: 0 }),
  shutdownSpreadMs: int('BROKER_SHUTDOWN_SPREAD_MS', 5000, 'on SIGTERM, client closes are spread randomly over this time', { min: 0 }),
  shutdownTimeoutMs: int('BROKER_SHUTDOWN_TIMEOUT_MS', 15_000, 'on SIGTERM the process exits after at most this long', { min: 1000 }),
  registryFlushMs: int('BROKER_REGISTRY_FLUSH_MS', 5000, 'how often last-activity times are written to the registry', { min: 100 }),
  nodeTtlS: int('BROKER_NODE_TTL_S', 15, 'a node whose liveness key is older is considered dead and its registry entries are swept', { min: 3 }),
};

export type BrokerConfig = ConfigOf<typeof brokerSpec>;

export function loadBrokerConfig(env: NodeJS.ProcessEnv = process.env): BrokerConfig {
  return checkBrokerConfig(loadConfig(brokerSpec, env));
}

/** Settings that are valid alone but not together; throws one CONFIG_INVALID naming each. */
export function checkBrokerConfig(config: BrokerConfig): BrokerConfig {
  const problems = serverConfigProblems(config);
  // The socket cap counts WebSocket connections too: at or below the broker's own limit,
  // a device at that limit would see a reset instead of the broker's 429, and HTTP none at all.
  if (config.httpMaxSocketsPerIp <= config.maxConnectionsPerIp) {
    problems.push(`HTTP_MAX_SOCKETS_PER_IP (${config.httpMaxSocketsPerIp}) must be larger than BROKER_MAX_CONNECTIONS_PER_IP `
      + `(${config.maxConnectionsPerIp}): it counts WebSocket and HTTP sockets together; raise it to at least ${config.maxConnectionsPerIp + 100}`);
  }
  if (problems.length) throw configInvalid(problems);
  return config;
}

export function brokerDefaults(overrides: Partial<BrokerConfig> = {}): BrokerConfig {
  return checkBrokerConfig(defaults(brokerSpec, overrides));
}
