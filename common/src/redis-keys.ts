/**
 * Redis key layout shared by the services. One place, so the auth service
 * that writes a device record and the broker that reads it agree.
 */
export const redisKeys = {
  device: (id: string) => `fleetwire:device:${id}`,
  revokedJti: (jti: string) => `fleetwire:revoked-jti:${jti}`,
  /** Pub/sub channel: every broker node listens and drops matching connections. */
  revocations: 'fleetwire:revocations',
  /** Pub/sub channel for node-to-node control (kick). */
  brokerControl: 'fleetwire:broker-control',
  connection: (clientId: string) => `fleetwire:conn:${clientId}`,
  connectionIndex: 'fleetwire:conns',
  connectionIndexByKind: (kind: string) => `fleetwire:conns:${kind}`,
  nodeConnections: (nodeId: string) => `fleetwire:node-conns:${nodeId}`,
  nodeAlive: (nodeId: string) => `fleetwire:node-alive:${nodeId}`,
  /** Set of node ids that have registered connections, for sweeping dead nodes. */
  nodes: 'fleetwire:nodes',
  presenceSeq: (deviceId: string) => `fleetwire:presence-seq:${deviceId}`,
  connectAttempts: (ip: string) => `fleetwire:rl:connect:${ip}`,
  authFailures: (ip: string) => `fleetwire:rl:authfail:${ip}`,
  ipBan: (ip: string) => `fleetwire:rl:ban:${ip}`,
  floodPenalty: (clientId: string) => `fleetwire:rl:penalty:${clientId}`,
} as const;
