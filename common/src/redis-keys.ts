/**
 * Redis key layout shared by the services. One place, so the auth service
 * that writes a device record and the broker that reads it agree.
 */
export const redisKeys = {
  /** A device's record: status, API key digest, token_gen (see revocation.ts), metadata. */
  device: (id: string) => `fleetwire:device:${id}`,
  revokedJti: (jti: string) => `fleetwire:revoked-jti:${jti}`,
  /** Exists while the access tokens of an ended session could still be alive (logout, reused refresh token). */
  revokedSession: (sessionId: string) => `fleetwire:revoked-sid:${sessionId}`,
  /**
   * A user's token generation (absent = 0): tokens signed at a lower one are revoked. Its own
   * key, not a field of the user, so that it outlives a deleted user as long as their tokens could.
   */
  userTokenGen: (userId: string) => `fleetwire:user-token-gen:${userId}`,
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
  /** Set of the firmware sha256s a device was offered (it may download only those); expires OTA offers' TTL after the newest. */
  otaOffered: (deviceId: string) => `fleetwire:ota-offered:${deviceId}`,
  // Auth service. Emails and secrets appear in key names only as digests.
  /**
   * Sorted set of device ids by registration time (unix ms, the record's created_at). Unique per
   * device: one registering within the same ms as the newest gets the next ms.
   */
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
  /** Hash: client address → consecutive failed logins to this account from it. */
  loginFailures: (emailDigest: string) => `fleetwire:login-failures-by-address:${emailDigest}`,
  /** Hash: client address → unix ms until which it may not log in to this account. */
  loginLocks: (emailDigest: string) => `fleetwire:login-locks-by-address:${emailDigest}`,
  /** Sorted set: addresses this account logged in from, by last success (unix ms); exempt from its per-account window. */
  loginKnownAddresses: (emailDigest: string) => `fleetwire:login-known-addresses:${emailDigest}`,
  resetPerIp: (ip: string) => `fleetwire:rl:reset-ip:${ip}`,
  resetPerAccount: (emailDigest: string) => `fleetwire:rl:reset-acct:${emailDigest}`,
  deviceTokenFailures: (ip: string) => `fleetwire:rl:devtoken-fail:${ip}`,
  /** Capped stream of audit records. */
  audit: 'fleetwire:audit',
  // Device service (written by it; the device listing in the auth service reads the indexes).
  /** Hash: a device's state from heartbeats and presence (last_seen, fw, rssi, …, learned interval). */
  deviceState: (id: string) => `fleetwire:dstate:${id}`,
  /**
   * Listing indexes: sorted sets of device ids scored by registration time (the score in
   * `devices`), so every filter pages with the same (score, id) cursor. `kind` is one of
   * type, tag, location (auth service) or fw (device service); see deviceIndexOnline etc.
   */
  deviceIndex: (kind: 'type' | 'tag' | 'location' | 'fw', value: string) => `fleetwire:devidx:${kind}:${value}`,
  /** Set of the values an index kind has now (for fleet health's per-firmware and per-type counts). */
  deviceIndexValues: (kind: 'type' | 'tag' | 'location' | 'fw') => `fleetwire:devidx-values:${kind}`,
  /**
   * Sorted set: device id → maintenance_until (unix ms), written with the device record (PATCH /v1/devices/{id}).
   * It mirrors the record's field, past times included: "in maintenance now" is ZCOUNT (now, +inf).
   * Revoking a device ends its maintenance.
   */
  deviceMaintenance: 'fleetwire:devidx:maintenance',
  /**
   * Sorted set of revoked device ids, scored by registration time like the other listing indexes,
   * written with the device record when it is revoked. Revoked devices stay in `devices` and in
   * their type, tag and location indexes (the listing shows them, `status` filters them):
   * `status=revoked` pages this set, `status=active` means "not in it".
   */
  deviceIndexRevoked: 'fleetwire:devidx:revoked',
  /**
   * String: the version of the listing index layout every device record has been indexed
   * for. Absent on a Redis written before the indexes existed: the auth service then
   * backfills them at start and sets it (auth-service/src/devices.ts).
   */
  deviceIndexVersion: 'fleetwire:devidx-version',
  deviceIndexOnline: 'fleetwire:devidx:online',
  deviceIndexSilent: 'fleetwire:devidx:silent',
  /** Sorted set: device id → last_seen (unix ms). */
  deviceIndexLastSeen: 'fleetwire:devidx:last-seen',
  /** Sorted set: device id → when it counts as silent (unix ms): the time-ordered index the silence check reads. */
  silenceDue: 'fleetwire:silence-due',
  /** Sorted set: device id → unix ms its active silence alert was raised. */
  alertsActive: 'fleetwire:alerts:active',
  /** Capped stream of alert changes, newest kept. */
  alertLog: 'fleetwire:alerts:log',
  /** Sorted set of `<device id>:<unix ms>` reboots by time, trimmed to the last hour or so. */
  reboots: 'fleetwire:reboots',
  /**
   * Hash: heartbeat lag (received_at → state written) counts of one minute (`minute` = unix ms /
   * 60000, rounded down), fleet-wide: field = log-spaced bucket number b, 4 per doubling, holding
   * lags in [2^(b/4) − 1, 2^((b+1)/4) − 1) ms. Expires after about 10 minutes.
   */
  heartbeatLag: (minute: string) => `fleetwire:hb-lag:${minute}`,
  /** Capped stream of a device's telemetry; the latest readings are in telemetryLatest. */
  telemetry: (id: string) => `fleetwire:telemetry:${id}`,
  telemetryLatest: (id: string) => `fleetwire:telemetry-latest:${id}`,
  /** Hash: one command's state, result and timings; expires some time after it ends. */
  command: (cid: string) => `fleetwire:cmd:${cid}`,
  /** Pub/sub channel: a command reached a final state (any node may be waiting for it). */
  commandResults: 'fleetwire:cmd-results',
  /** Sorted set: cid → expires_at (unix ms) of commands still waiting for a result (sent or delivered); the expiry sweep reads it. */
  commandsPending: 'fleetwire:cmds-pending',
  /** Hash: a fleet command batch (selector, counts per state). */
  commandBatch: (id: string) => `fleetwire:cmd-batch:${id}`,
  /** List: the device ids of a batch in sending order (index i gets cid `<batch>:<i>`). */
  commandBatchTargets: (id: string) => `fleetwire:cmd-batch-targets:${id}`,
  /** Sorted set: batch id → unix ms its sending node's lease ends; a batch leaves it once every command is sent. */
  commandBatchesSending: 'fleetwire:cmd-batches-sending',
  /**
   * Hash: an OTA rollout (request, state, waves, `c:<state>` and `w<wave>:<state>` device
   * counts, `sender` = the node ticking it). Moved by lua/rollout-state.lua (state, compare
   * and set) and lua/rollout-device.lua (one device's state and the counts, in one step).
   */
  rollout: (id: string) => `fleetwire:rollout:${id}`,
  /** Hash: device id → `state|wave|at|reason` of a rollout's targets. */
  rolloutDevices: (id: string) => `fleetwire:rollout-devices:${id}`,
  /** List: a rollout's target ids in wave order (stable: sorted by id at creation). */
  rolloutTargets: (id: string) => `fleetwire:rollout-targets:${id}`,
  /** Set: devices of a started wave still waiting for their offer (offline ones wait for presence). */
  rolloutPending: (id: string) => `fleetwire:rollout-pending:${id}`,
  /** Sorted set: offered device → unix ms its confirm window ends (then rolled_back or timed_out). */
  rolloutDeadlines: (id: string) => `fleetwire:rollout-deadlines:${id}`,
  /** Sorted set of every rollout id by creation time (unix ms), for the listing. */
  rollouts: 'fleetwire:rollouts',
  /** Sorted set: running or paused rollout → unix ms its ticking node's lease ends (lua/batch-claim.lua). */
  rolloutsActive: 'fleetwire:rollouts-active',
} as const;
