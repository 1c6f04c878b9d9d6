/**
 * Redis key layout shared by the services. One place, so the auth service
 * that writes a device record and the broker that reads it agree.
 */
export const redisKeys = {
  device: (id: string) => `fleetwire:device:${id}`,
  revokedJti: (jti: string) => `fleetwire:revoked-jti:${jti}`,
  /** Unix seconds: a user's tokens issued before this are revoked (role change, deletion). */
  userTokensBefore: (userId: string) => `fleetwire:user-tokens-before:${userId}`,
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
  // Auth service. Emails and secrets appear in key names only as digests.
  /** Sorted set of device ids by registration time. */
  devices: 'fleetwire:devices',
  user: (id: string) => `fleetwire:user:${id}`,
  userByEmail: (emailDigest: string) => `fleetwire:user-email:${emailDigest}`,
  /** Sorted set of user ids by creation time. */
  users: 'fleetwire:users',
  /** Ids of users with the admin role (so the last one cannot be removed). */
  adminUsers: 'fleetwire:users-admin',
  /** Ids of users whose password hash is still a legacy (pre-argon2id) one. */
  legacyUsers: 'fleetwire:users-legacy',
  refreshToken: (tokenDigest: string) => `fleetwire:refresh:${tokenDigest}`,
  /** Prefix of session (refresh-token family) keys; Lua scripts append the session id. */
  sessionPrefix: 'fleetwire:session:',
  userSessions: (userId: string) => `fleetwire:user-sessions:${userId}`,
  resetToken: (tokenDigest: string) => `fleetwire:pwreset:${tokenDigest}`,
  loginPerIp: (ip: string) => `fleetwire:rl:login-ip:${ip}`,
  loginPerAccount: (emailDigest: string) => `fleetwire:rl:login-acct:${emailDigest}`,
  loginFailures: (emailDigest: string) => `fleetwire:login-failures:${emailDigest}`,
  loginLock: (emailDigest: string) => `fleetwire:login-lock:${emailDigest}`,
  resetPerIp: (ip: string) => `fleetwire:rl:reset-ip:${ip}`,
  resetPerAccount: (emailDigest: string) => `fleetwire:rl:reset-acct:${emailDigest}`,
  deviceTokenFailures: (ip: string) => `fleetwire:rl:devtoken-fail:${ip}`,
  /** Capped stream of audit records. */
  audit: 'fleetwire:audit',
} as const;
