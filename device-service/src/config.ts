/** Device service settings: one spec, units in the names, validated and frozen at start-up. */
import { bool, auditSpec, baseSpec, serverSpec, serverConfigProblems, configInvalid, defaults, int, str, url, loadConfig, otaPublicKey, type ConfigOf } from '@fleetwire/common';

export const deviceServiceSpec = {
  ...baseSpec,
  ...serverSpec,
  brokerUrl: str('DEVICE_BROKER_URL', '', 'MQTT-over-WebSocket URL of a broker node the service publishes commands and alerts through; empty = this process\'s own /mqtt (when the broker runs in it)'),
  // heartbeats and state
  heartbeatBatch: int('HEARTBEAT_BATCH', 1000, 'heartbeats in progress at once and written to Redis in one round trip at most; the broker puts up to 500 in a job, so the default takes two jobs at once', { min: 1, max: 5000 }),
  fleetHealthCacheMs: int('FLEET_HEALTH_CACHE_MS', 2000, 'GET /v1/fleet/health and the fleet gauges reuse a reading of Redis this long, so a scrape storm does not hammer it', { min: 0, max: 60_000 }),
  // silence
  silenceDefaultIntervalS: int('SILENCE_DEFAULT_INTERVAL_S', 60, 'heartbeat interval assumed until a device has SILENCE_MIN_HISTORY intervals of history', { min: 1 }),
  silenceMinHistory: int('SILENCE_MIN_HISTORY', 10, 'intervals a device must have shown before its own history sets its threshold', { min: 1, max: 1000 }),
  silenceMultiplierPct: int('SILENCE_MULTIPLIER_PCT', 300, 'threshold = this % of the smoothed interval, plus 4 smoothed deviations', { min: 100, max: 10_000 }),
  silenceFloorS: int('SILENCE_FLOOR_S', 3, 'no device is flagged sooner than this after its last heartbeat', { min: 1 }),
  silenceCeilingS: int('SILENCE_CEILING_S', 86_400, 'every device is flagged at the latest this long after its last heartbeat', { min: 1 }),
  silenceCheckMs: int('SILENCE_CHECK_MS', 1000, 'how often the time-ordered index is read for devices past their threshold', { min: 50, max: 60_000 }),
  otaRebootWindowS: int('OTA_REBOOT_WINDOW_S', 300, 'silence alerts are muted this long after a device reports an OTA install or reboot', { min: 0 }),
  alertWebhookUrl: str('ALERT_WEBHOOK_URL', '', 'POST every alert change here as JSON; empty = off'),
  alertWebhookAttempts: int('ALERT_WEBHOOK_ATTEMPTS', 6, 'tries per alert before it is dropped (counted)', { min: 1, max: 50 }),
  alertWebhookBackoffMs: int('ALERT_WEBHOOK_BACKOFF_MS', 1000, 'wait before the first retry, doubling each retry', { min: 10 }),
  alertWebhookSecret: str('ALERT_WEBHOOK_SECRET', '', 'when set (16 characters or more), every webhook body is signed: header X-Fleetwire-Signature: sha256=<hex HMAC-SHA256 of the raw body with this secret>; never logged or shown'),
  alertWebhookTimeoutMs: int('ALERT_WEBHOOK_TIMEOUT_MS', 5000, 'one webhook POST is abandoned (and retried) after this long', { min: 100, max: 120_000 }),
  alertWebhookQueueMax: int('ALERT_WEBHOOK_QUEUE_MAX', 10_000, 'alert changes waiting for the webhook, in memory; when full the oldest is dropped (counted)', { min: 1, max: 1_000_000 }),
  alertLogMaxLen: int('ALERT_LOG_MAX_LEN', 100_000, 'newest alert changes kept in the alert log (GET /v1/alerts?state=all), about', { min: 100 }),
  // telemetry
  telemetryMaxLen: int('TELEMETRY_MAX_LEN', 10_000, 'newest telemetry messages kept per device (about: Redis trims whole stream nodes, stream-node-max-entries = 100 by default, at a time)', { min: 1 }),
  telemetryMaxAgeS: int('TELEMETRY_MAX_AGE_S', 604_800, 'telemetry older than this (by the broker\'s receive time) is trimmed or not stored; a device\'s telemetry is gone this long after its last message', { min: 60 }),
  telemetryBatch: int('TELEMETRY_BATCH', 500, 'telemetry messages in progress at once and written to Redis in one round trip at most; the broker puts up to 500 in a job', { min: 1, max: 2000 }),
  // commands
  commandDefaultTimeoutMs: int('COMMAND_DEFAULT_TIMEOUT_MS', 10_000, 'how long POST /v1/devices/{id}/commands waits for the result when timeout_ms is not given', { min: 100 }),
  commandMaxTimeoutMs: int('COMMAND_MAX_TIMEOUT_MS', 120_000, 'largest timeout_ms accepted', { min: 100, max: 3_600_000 }),
  commandMaxArgsBytes: int('COMMAND_MAX_ARGS_BYTES', 4096, 'largest args object accepted, as JSON', { min: 2, max: 65_536 }),
  commandAllow: str('COMMAND_ALLOW', '', 'per-type command allow-list, e.g. "sensor=ping,reboot;gateway=*"; types not listed (and empty) allow any name'),
  commandQueuedTtlS: int('COMMAND_QUEUED_TTL_S', 86_400, 'longest a command sent with queue_if_offline waits for its device', { min: 1 }),
  commandRecordTtlS: int('COMMAND_RECORD_TTL_S', 604_800, 'how long a command and its result stay readable at GET /v1/commands/{cid}', { min: 60 }),
  fleetCommandMaxRate: int('FLEET_COMMAND_MAX_RATE_PER_S', 200, 'largest rate_per_s a fleet command may ask for', { min: 1 }),
  commandResultsConcurrency: int('COMMAND_RESULTS_CONCURRENCY', 16, 'cmd-results jobs this node handles at once; 0 = none: a node that only serves the API, whose waiting requests hear of results through Redis pub/sub from the nodes that consume them', { min: 0, max: 1000 }),
  // firmware images (OTA)
  otaPublicKeys: str('OTA_PUBLIC_KEYS', '', 'comma-separated trusted OTA signing keys: raw 32-byte Ed25519 public keys in base64url, as `fleetwire firmware keygen` prints them; POST /v1/firmware accepts only manifests signed by one of them; empty = uploads refused'),
  otaDevSigning: bool('OTA_DEV_SIGNING', false, 'development only (refused when NODE_ENV=production): POST /v1/firmware/dev-sign signs manifests with a key the server keeps at <FLEETWIRE_DATA_DIR>/ota-dev-signing.pem (made on first start) and trusts besides OTA_PUBLIC_KEYS'),
  otaMaxImageBytes: int('OTA_MAX_IMAGE_BYTES', 16 * 1024 * 1024, 'largest firmware image POST /v1/firmware accepts (bytes); larger uploads are refused (413) without being stored', { min: 1 }),
  // audit (the stream the auth service writes too; the same setting trims it)
  ...auditSpec,
};

export type DeviceServiceConfig = ConfigOf<typeof deviceServiceSpec>;

/** `COMMAND_ALLOW` as device type → allowed command names (absent type = any name). */
export function parseCommandAllow(text: string): Map<string, ReadonlySet<string> | '*'> {
  const out = new Map<string, ReadonlySet<string> | '*'>();
  for (const part of text.split(';').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    const type = part.slice(0, eq).trim();
    const names = part.slice(eq + 1).split(',').map((n) => n.trim()).filter(Boolean);
    if (eq <= 0 || names.length === 0) throw new Error(`"${part}" is not type=name,name or type=*`);
    out.set(type, names.includes('*') ? '*' : new Set(names));
  }
  return out;
}

/** Whether COMMAND_ALLOW lets devices of `type` run `name`. */
export function isCommandAllowed(allow: ReadonlyMap<string, ReadonlySet<string> | '*'>, type: string, name: string): boolean {
  const names = allow.get(type);
  return names === undefined || names === '*' || names.has(name);
}

function checkDeviceServiceConfig(config: DeviceServiceConfig): DeviceServiceConfig {
  const problems = serverConfigProblems(config);
  for (const [name, value] of [['DEVICE_BROKER_URL', config.brokerUrl], ['ALERT_WEBHOOK_URL', config.alertWebhookUrl]] as const) {
    if (!value) continue;
    const schemes = name === 'DEVICE_BROKER_URL' ? ['ws:', 'wss:'] : ['http:', 'https:'];
    try {
      url(name, '', '', schemes).parse(value);
    } catch {
      problems.push(`${name} must be a ${schemes.map((s) => s.slice(0, -1)).join(' or ')} URL`);
    }
  }
  // The secret itself is never put in a message.
  if (config.alertWebhookSecret && config.alertWebhookSecret.length < 16) problems.push('ALERT_WEBHOOK_SECRET must be at least 16 characters (a random string, e.g. openssl rand -hex 32)');
  if (config.silenceFloorS > config.silenceCeilingS) problems.push(`SILENCE_FLOOR_S (${config.silenceFloorS}) must not exceed SILENCE_CEILING_S (${config.silenceCeilingS})`);
  if (config.commandDefaultTimeoutMs > config.commandMaxTimeoutMs) problems.push(`COMMAND_DEFAULT_TIMEOUT_MS (${config.commandDefaultTimeoutMs}) must not exceed COMMAND_MAX_TIMEOUT_MS (${config.commandMaxTimeoutMs})`);
  for (const key of config.otaPublicKeys.split(',').map((k) => k.trim()).filter(Boolean)) {
    try {
      otaPublicKey(key);
    } catch (err) {
      problems.push(`OTA_PUBLIC_KEYS: "${key}": ${(err as Error).message}`);
    }
  }
  if (config.otaDevSigning && config.nodeEnv === 'production') {
    problems.push('OTA_DEV_SIGNING signs firmware with a key on the server and is refused when NODE_ENV=production: sign offline with `fleetwire firmware sign` and trust its key in OTA_PUBLIC_KEYS');
  }
  try {
    parseCommandAllow(config.commandAllow);
  } catch (err) {
    problems.push(`COMMAND_ALLOW: ${(err as Error).message}`);
  }
  if (problems.length) throw configInvalid(problems);
  return config;
}

export function loadDeviceServiceConfig(env: NodeJS.ProcessEnv = process.env): DeviceServiceConfig {
  return checkDeviceServiceConfig(loadConfig(deviceServiceSpec, env));
}

export function deviceServiceDefaults(overrides: Partial<DeviceServiceConfig> = {}): DeviceServiceConfig {
  return checkDeviceServiceConfig(defaults(deviceServiceSpec, overrides));
}
